"""checkpoint.py: a checkpoint saved before a GPTConfig field existed (or when its default differed) is rebuilt,
and so recorded by a resumed run, with the value its weights were made with, not today's default."""
from dataclasses import asdict

import torch

import checkpoint
from conftest import tiny_config
from model import build_model


def test_old_checkpoint_records_the_init_it_was_made_with(tmp_path):
    model = build_model(tiny_config())
    args = asdict(model.config)
    assert (args["init_scheme"], args["ln_emb_init"]) == ("rwkv", 0.02)  # today's defaults
    old = {k: v for k, v in args.items() if k not in ("init_scheme", "ln_emb_init")}  # saved before they existed
    path = str(tmp_path / "ckpt.pt")
    checkpoint.save_checkpoint(path, {"model": model.state_dict(), "model_args": old})
    loaded = checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(path), path)
    assert (loaded.config.init_scheme, loaded.config.ln_emb_init) == ("gpt2", 1.0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    # a checkpoint that has the fields keeps its own values
    checkpoint.save_checkpoint(path, {"model": model.state_dict(), "model_args": args})
    loaded = checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(path), path)
    assert (loaded.config.init_scheme, loaded.config.ln_emb_init) == ("rwkv", 0.02)


def test_checkpoint_from_before_rwkv7_loads_as_x051a(tmp_path):
    """model_args from before rwkv_version existed: an x051a model, which today's default (x070) cannot load."""
    model = build_model(tiny_config())  # x051a, every block
    old = {k: v for k, v in asdict(model.config).items() if k != "rwkv_version"}
    path = str(tmp_path / "ckpt.pt")
    checkpoint.save_checkpoint(path, {"model": model.state_dict(), "model_args": old})
    loaded = checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(path), path)
    assert loaded.config.rwkv_version == "x051a"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
