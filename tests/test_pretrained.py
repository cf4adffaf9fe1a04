"""pretrained.py, GPT.from_pretrained and the eval configs, offline (prepare_openwebtext.py has its own file).

Pretrained checkpoints cannot be downloaded here: the models are small random ones built from transformers
configs and saved to a temporary directory, which is what a downloaded checkpoint looks like on disk.
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from configurator import apply_config
from model import GPT, GPTConfig
from pretrained import RWKV4, PretrainedError, check_tokenizer, is_pretrained_name, load_pretrained

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def transformers():
    import transformers  # a requirement (requirements.txt): missing, it is a failure, not a skip
    return transformers


@pytest.fixture(scope="module")
def gpt2_dir(transformers, tmp_path_factory):
    torch.manual_seed(0)
    # initializer_range 0.2, not GPT-2's 0.02: activations big enough that exact and tanh GELU differ by ~1e-3
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50257, n_positions=64,
                                     initializer_range=0.2)
    path = tmp_path_factory.mktemp("gpt2")
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def rwkv_dir(transformers, tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.RwkvConfig(vocab_size=50277, context_length=64, hidden_size=32, num_hidden_layers=2)
    hf = transformers.RwkvForCausalLM(config)
    # transformers' init is gentle (tiny embeddings, equal time_first); spread everything out, and make the keys
    # large (|k| up to ~60, e^k overflows float16 and nearly float32) so the max-subtracted WKV is put to work
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "time_decay" in name or "time_first" in name:
                p.copy_(torch.randn_like(p) * 2)
            elif "time_mix" in name:
                p.uniform_(0, 1)
            elif name.endswith("attention.key.weight"):
                p.normal_(0, 3)
            elif p.dim() == 2:
                p.normal_(0, 0.3)
    path = tmp_path_factory.mktemp("rwkv")
    hf.save_pretrained(path)
    return path


# -----------------------------------------------------------------------------
# GPT-2


def test_gpt2_logits_match_transformers(transformers, gpt2_dir):
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    model = GPT.from_pretrained(str(gpt2_dir)).eval()
    assert (model.config.vocab_size, model.config.block_size, model.config.bias) == (50257, 64, True)
    assert model.lm_head.weight is model.wte.weight
    idx = torch.randint(0, 50257, (2, 64))
    with torch.no_grad():
        expected = hf(idx).logits
        logits, loss = model(idx, idx)
    assert expected.abs().max() > 1.0  # not a trivially small comparison
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    assert model.get_num_params() == sum(p.numel() for p in hf.parameters()) - 64 * 32  # nanoGPT: without wpe


def test_load_pretrained_gpt2_model_args(gpt2_dir):
    model, model_args = load_pretrained(str(gpt2_dir), dropout=0.1)
    assert isinstance(model, GPT) and model_args["model_type"] == "gpt" and model_args["dropout"] == 0.1
    rebuilt = GPT(GPTConfig(**model_args))  # what train.py's resume does with a checkpoint's model_args
    rebuilt.load_state_dict(model.state_dict())


# -----------------------------------------------------------------------------
# RWKV-4


def test_rwkv4_eval_loss_matches_transformers(transformers, rwkv_dir):
    tokens = torch.randint(0, 50277, (2, 51))  # 50 positions: one full WKV chunk of 32 and a partial one
    hf = transformers.RwkvForCausalLM.from_pretrained(rwkv_dir).eval()
    with torch.no_grad():
        expected = hf(input_ids=tokens, labels=tokens)  # transformers shifts the labels itself
    model, model_args = load_pretrained(str(rwkv_dir))
    assert isinstance(model, RWKV4) and model_args["model_type"] == "rwkv4"
    assert (model.config.vocab_size, model.config.block_size) == (50277, 64)
    assert model.get_num_params() == sum(p.numel() for p in hf.parameters())
    model.eval()
    with torch.no_grad():  # as train.py's estimate_loss
        logits, loss = model(tokens[:, :-1], tokens[:, 1:])
    assert abs(loss.item() - expected.loss.item()) < 1e-5
    torch.testing.assert_close(logits, expected.logits[:, :-1], atol=1e-4, rtol=0)


def test_rwkv4_recurrent_matches_parallel(rwkv_dir):
    model, _ = load_pretrained(str(rwkv_dir))
    tokens = torch.randint(0, 50277, (2, 40))
    with torch.no_grad():
        parallel, _ = model.forward_with_state(tokens)
        logits, state = model.forward_with_state(tokens[:, :25])  # prefill, then one token at a time
        steps = [logits]
        for t in range(25, 40):
            logits, state = model.forward_with_state(tokens[:, t:t + 1], state)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), parallel, atol=1e-4, rtol=0)
    out = model.generate(tokens[:, :5], max_new_tokens=3, temperature=0)
    assert out.shape == (2, 8) and torch.equal(out[:, :5], tokens[:, :5])


# -----------------------------------------------------------------------------
# names, errors, tokenizer checks


def test_is_pretrained_name(tmp_path):
    for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "RWKV/rwkv-4-169m-pile", "RWKV/rwkv-4-14b-pile",
                 str(tmp_path)):
        assert is_pretrained_name(name), name
    for name in ("scratch", "resume", "gpt3", str(tmp_path / "missing")):
        assert not is_pretrained_name(name), name


def test_unavailable_model_is_a_one_line_error(transformers, tmp_path):
    # no such hub id: online the hub answers 404, offline only the cache is searched; one line either way
    with pytest.raises(PretrainedError) as e:
        load_pretrained("RWKV/rwkv-4-0m-no-such-model")
    assert "RWKV/rwkv-4-0m-no-such-model" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(PretrainedError, match="cannot load"):
        load_pretrained(str(tmp_path))  # an empty directory
    transformers.LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(PretrainedError, match="'llama' model; only GPT-2"):
        load_pretrained(str(tmp_path))


def test_missing_transformers_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` raise ImportError
    with pytest.raises(PretrainedError, match=r"^transformers is not installed: pip install transformers$"):
        load_pretrained("gpt2")


def test_check_tokenizer(gpt2_dir, rwkv_dir):
    gpt2, _ = load_pretrained(str(gpt2_dir))
    rwkv, _ = load_pretrained(str(rwkv_dir))
    gpt2_meta = {"tokenizer": "r50k_base", "vocab_size": 50257}
    neox_meta = {"tokenizer": "neox", "vocab_size": 50277}
    check_tokenizer(gpt2, gpt2_meta)
    check_tokenizer(rwkv, neox_meta)
    with pytest.raises(PretrainedError, match="prepare_openwebtext.py --tokenizer neox"):
        check_tokenizer(rwkv, gpt2_meta)
    with pytest.raises(PretrainedError, match="GPT-2 BPE"):
        check_tokenizer(gpt2, neox_meta)
    with pytest.raises(PretrainedError, match="more than the model's"):
        check_tokenizer(rwkv, {"tokenizer": "other", "vocab_size": 60000})


# -----------------------------------------------------------------------------
# eval configs


@pytest.fixture(scope="module")
def train_defaults():
    """train.py's config keys and defaults, as `train.py --help` lists them."""
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True)
    rows = re.findall(r"^  (\w+) += (.*)  \(\w+\)$", out.stdout, flags=re.M)
    assert len(rows) > 20
    return {k: ast.literal_eval(v) for k, v in rows}


EVAL_CONFIGS = {
    "eval_gpt2": "gpt2", "eval_gpt2_medium": "gpt2-medium", "eval_gpt2_large": "gpt2-large", "eval_gpt2_xl": "gpt2-xl",
    **{f"eval_rwkv4_{size}": f"RWKV/rwkv-4-{size}-pile" for size in ("169m", "430m", "1b5", "3b", "7b", "14b")},
}


@pytest.mark.parametrize("name", sorted(EVAL_CONFIGS))
def test_eval_config(name, train_defaults):
    # apply_config is what train.py runs: every key must be a train.py key, with the right type
    config = apply_config([str(ROOT / "config" / f"{name}.py")], train_defaults)
    assert config["init_from"] == EVAL_CONFIGS[name] and is_pretrained_name(config["init_from"])
    assert config["eval_only"] is True and config["block_size"] == 1024
    assert config["dataset"] == ("openwebtext_neox" if "rwkv4" in name else "openwebtext")
