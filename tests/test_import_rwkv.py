"""import_rwkv.py: an official RWKV-7 .pth (random weights of the official shapes, an untied head, LoRA ranks
that are not our default rule) imports as a MicroRWKV that gives the `rwkv` runtime's logits, in sequence and
token by token, and its greedy text through generate.py; import(export(model)) is the model; fine-tuning from
the file lowers the loss; the World tokenizer equals the runtime package's; bad files are one-line errors."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import benchmark_rwkv_runtime
import export_rwkv
import generate
import import_rwkv
from checkpoint import load_checkpoint, model_from_checkpoint
from conftest import SHARED
from model import GPTConfig, MicroRWKV
from test_export_rwkv import compare_with_runtime, perturb, rel_err, runtime, tokens
from tokenizer import WorldTokenizer, canonical

ROOT = Path(__file__).resolve().parents[1]
L, C, N = 2, 64, 32
RANKS = (24, 16, 8, 40)  # decay, ICL rate, value residual, gate: none is lora_dim's 32
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning")


@pytest.fixture(autouse=True)
def rwkv_env(monkeypatch):
    monkeypatch.setenv("RWKV_JIT_ON", "0")
    monkeypatch.setenv("RWKV_CUDA_ON", "0")


def official_weights(V=300, n_layer=L, layer0_v=True):
    """An official RWKV-7 state dict, random at a real scale, with an untied head (see the benchmark)."""
    return benchmark_rwkv_runtime.official_weights(n_layer, C, N, V, RANKS, seed=0, layer0_v=layer0_v)


def write_official(path, dtype=torch.float32, **kw):
    torch.save({k: v.to(dtype) for k, v in official_weights(**kw).items()}, path)
    return path


def do_import(pth, out_dir, *extra, tokenizer="gpt2"):
    """import_rwkv.py; a vocabulary other than World's 65,536 needs its tokenizer named (None: inferred)."""
    import_rwkv.main(["--input", str(pth), "--out_dir", str(out_dir), *extra, *(["--tokenizer", tokenizer] * bool(tokenizer))])
    return model_from_checkpoint(load_checkpoint(os.path.join(out_dir, "ckpt.pt")))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_imported_model_gives_the_runtimes_logits(tmp_path, dtype):
    pth = write_official(tmp_path / "model.pth", dtype)
    model = do_import(pth, tmp_path / "imported").eval()
    cfg = model.config
    assert (cfg.n_layer, cfg.n_embd, cfg.head_size, cfg.vocab_size) == (L, C, N, 300)
    assert import_rwkv.lora_ranks(cfg) == RANKS
    assert cfg.rwkv_version == "x070" and not cfg.tie_head and cfg.tokenizer == "gpt2"
    assert not torch.equal(model.lm_head.weight, model.wte.weight)
    rt = runtime(v7=True).RWKV(model=str(pth.with_suffix("")), strategy="cpu fp32")  # converts to fp32 as we do
    compare_with_runtime(model, rt, tokens(300))


def test_official_file_without_layer0_value_lora(tmp_path):
    """Files may leave out layer 0's v0/v1/v2 (the runtime ignores them; export_rwkv.py does not write them)."""
    pth = write_official(tmp_path / "model.pth", layer0_v=False)
    model = do_import(pth, tmp_path / "imported").eval()
    assert import_rwkv.lora_ranks(model.config) == RANKS
    compare_with_runtime(model, runtime(v7=True).RWKV(model=str(pth.with_suffix("")), strategy="cpu fp32"), tokens(300))


def test_generate_greedy_text_is_the_runtimes(tmp_path, capsys):
    """A World-vocabulary file: generate.py reads the checkpoint's tokenizer (rwkv_world) and its greedy
    text is the runtime's greedy tokens, decoded."""
    pth = write_official(tmp_path / "world.pth", V=65536)
    do_import(pth, tmp_path / "imported", tokenizer=None)
    assert load_checkpoint(str(tmp_path / "imported" / "ckpt.pt"))["model_args"]["tokenizer"] == "rwkv_world"
    prompt, n_new = "Once upon a time, Lily", 24
    capsys.readouterr()
    generate.main(["--out_dir", str(tmp_path / "imported"), "--prompt", prompt, "--temperature", "0",
                   "--max_num_tokens", str(n_new), "--device", "cpu"])
    text = capsys.readouterr().out.rsplit("\n[prompt ", 1)[0]

    world = WorldTokenizer()
    rt = runtime(v7=True).RWKV(model=str(pth.with_suffix("")), strategy="cpu fp32")
    ids = world.encode(prompt)
    logits, state = rt.forward(ids, None)
    new = []
    for _ in range(n_new):
        new.append(int(logits.argmax()))
        logits, state = rt.forward([new[-1]], state)
    assert len(set(new)) > 3  # not a degenerate repetition
    assert text == prompt + world.decode(new)


def test_import_of_export_is_the_same_model(tmp_path):
    """Our untied-head x070 model with non-default LoRA ranks -> export_rwkv.py -> import_rwkv.py: the same
    tensors (but layer 0's unused value LoRA, which the export leaves out), the same config, the same logits."""
    config = GPTConfig(model_type="microrwkv", rwkv_version="x070", n_layer=3, n_embd=C, head_size=N, n_head=2,
                       vocab_size=512, bias=True, use_swa=False, use_gqa=False, use_moe=False,
                       **dict(zip(import_rwkv.LORA_FIELDS, RANKS)),
                       tie_head=False, block_size=64)
    model = perturb(MicroRWKV(config)).eval()
    assert not torch.equal(model.lm_head.weight, model.wte.weight)
    torch.save({"model": model.state_dict(), "model_args": dataclasses.asdict(config)}, tmp_path / "ckpt.pt")
    export_rwkv.main(["--out_dir", str(tmp_path), "--output", str(tmp_path / "m.pth")])
    back = do_import(tmp_path / "m.pth", tmp_path / "back", "--block_size", "64").eval()
    assert back.config == config
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        if not k.startswith("blocks.0.tmix.v"):
            assert torch.equal(ours[k], theirs[k]), k
    idx = torch.tensor([tokens(512)])
    assert torch.equal(model(idx, idx)[0], back(idx, idx)[0])

    # a tied model stays tied
    tied = perturb(MicroRWKV(dataclasses.replace(config, tie_head=True))).eval()
    torch.save({"model": tied.state_dict(), "model_args": dataclasses.asdict(tied.config)}, tmp_path / "ckpt.pt")
    export_rwkv.main(["--out_dir", str(tmp_path), "--output", str(tmp_path / "m.pth"), "--force"])
    back = do_import(tmp_path / "m.pth", tmp_path / "back", "--block_size", "64", "--force")
    assert back.config.tie_head and back.lm_head.weight is back.wte.weight


def test_old_checkpoints_keep_a_tied_head():
    assert GPTConfig().tie_head and GPTConfig().tokenizer == "gpt2"
    assert import_rwkv.lora_ranks(GPTConfig()) == (0, 0, 0, 0)
    model = MicroRWKV(GPTConfig(n_layer=1, n_embd=32, head_size=8, vocab_size=97, use_swa=False, use_gqa=False,
                                use_moe=False, rwkv_version="x070"))
    assert model.lm_head.weight is model.wte.weight
    assert model.blocks[0].tmix.w1.shape == (32, 32)  # lora_dim's rule


def test_world_tokenizer_equals_the_runtime_package(tmp_path):
    """Token for token on the shared TinyStories samples (the validation sample whole, 1 MB of the train one)."""
    import rwkv.rwkv_tokenizer
    ours = WorldTokenizer()
    ref = rwkv.rwkv_tokenizer.TRIE_TOKENIZER(import_rwkv_vocab())
    data = SHARED / "data" / "tinystories"
    for text in ((data / "valid_sample.txt").read_text(encoding="utf-8"),
                 (data / "train_sample_lower.txt").read_text(encoding="utf-8")[:1_000_000],
                 "héllo wörld 你好 🙂 \x00\n\n<|endoftext|>"):
        ids = ours.encode_ordinary(text)
        assert ids == ref.encode(text)
        assert ours.decode(ids) == text
    assert ours.encode("a<|endoftext|>b", allowed_special={"<|endoftext|>"}) == [ref.encode("a")[0], 0, ref.encode("b")[0]]
    assert canonical("r50k_base") == canonical("gpt2") == "gpt2" and canonical("neox") is None


def import_rwkv_vocab():
    from tokenizer import world_vocab_path
    return world_vocab_path()


def run(args, cwd=ROOT, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RWKV_JIT_ON": "0"}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_fine_tuning_from_the_file_lowers_the_loss(tmp_path):
    """train.py --init_from=rwkv:FILE.pth on a World-tokenized TinyStories sample: the val loss falls; the
    result exports back to the official format; a dataset of another tokenizer is refused."""
    stories = (SHARED / "data" / "tinystories" / "valid_sample.txt").read_text(encoding="utf-8")[:60_000]
    (tmp_path / "stories.txt").write_text(stories, encoding="utf-8")
    p = run(["prepare_tinystories.py", "--source", str(tmp_path / "stories.txt"), "--tokenizer", "rwkv_world",
             "--out_dir", str(tmp_path / "data"), "--num_proc", "1"])
    assert p.returncode == 0, p.stderr
    assert canonical(__import__("json").loads((tmp_path / "data" / "meta.json").read_text())["tokenizer"]) == "rwkv_world"
    pth = write_official(tmp_path / "model.pth", V=65536)
    common = [f"--data_dir={tmp_path / 'data'}", "--block_size=32", "--batch_size=4", "--eval_iters=4",
              "--learning_rate=3e-3", "--warmup_iters=0", "--decay_lr=False", "--dtype=float32", "--device=cpu",
              "--log_interval=5", "--ckpt_interval=0"]
    p = run(["train.py", f"--init_from=rwkv:{pth}", f"--out_dir={tmp_path / 'out'}", "--max_iters=30",
             "--eval_interval=30", *common])
    assert p.returncode == 0, p.stderr
    vals = [float(line.rsplit("val loss ", 1)[1]) for line in p.stdout.splitlines() if "val loss" in line]
    assert len(vals) == 2 and vals[1] < vals[0] - 0.5, p.stdout
    ckpt = load_checkpoint(str(tmp_path / "out" / "ckpt.pt"))
    assert ckpt["model_args"]["tokenizer"] == "rwkv_world" and not ckpt["model_args"]["tie_head"]
    export_rwkv.main(["--out_dir", str(tmp_path / "out"), "--output", str(tmp_path / "tuned.pth")])
    w = torch.load(tmp_path / "tuned.pth", weights_only=True)
    assert not torch.equal(w["head.weight"], w["emb.weight"])

    # an imported checkpoint has no optimizer state: resuming it is refused, naming the way to fine-tune it
    assert import_rwkv.main(["--input", str(pth), "--out_dir", str(tmp_path / "imported"), "--block_size", "32"]) in (None, 0)
    p = run(["train.py", "--init_from=resume", f"--out_dir={tmp_path / 'imported'}", "--max_iters=1", *common])
    assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("error: ") and f"--init_from={tmp_path / 'imported'}" in p.stderr

    # the same model on GPT-2 token ids: refused, naming both tokenizers
    p = run(["prepare_tinystories.py", "--source", str(tmp_path / "stories.txt"), "--out_dir",
             str(tmp_path / "gpt2"), "--num_proc", "1"])
    assert p.returncode == 0, p.stderr
    p = run(["train.py", f"--init_from={tmp_path / 'out'}", f"--out_dir={tmp_path / 'out2'}", "--max_iters=1",
             *common, f"--data_dir={tmp_path / 'gpt2'}"])
    assert p.returncode == 1 and p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, p.stderr
    assert "rwkv_world" in p.stderr and "gpt2" in p.stderr


def refused(capsys, pth, out_dir, named, tokenizer=("--tokenizer", "gpt2")):
    with pytest.raises(SystemExit) as e:
        import_rwkv.main(["--input", str(pth), "--out_dir", str(out_dir), *tokenizer])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("error: ") and err.count("\n") == 1 and named in err, err
    assert not os.path.exists(out_dir) or os.listdir(out_dir) == []


def test_bad_files_are_one_line_errors(tmp_path, capsys):
    out = tmp_path / "out"
    refused(capsys, tmp_path / "missing.pth", out, "no file")
    (tmp_path / "junk.pth").write_bytes(b"not a model")
    refused(capsys, tmp_path / "junk.pth", out, "damaged or not a PyTorch .pth")
    good = write_official(tmp_path / "good.pth")
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[:20_000])
    refused(capsys, tmp_path / "cut.pth", out, "damaged")

    def variant(name, change):
        w = official_weights()
        change(w)
        torch.save(w, tmp_path / name)
        return tmp_path / name

    refused(capsys, variant("v5.pth", lambda w: [w.pop("blocks.0.att.r_k"), w.update({"blocks.0.att.time_faaaa": torch.zeros(2, 32)})]),
            out, "an RWKV-5 model")
    refused(capsys, variant("v6.pth", lambda w: [w.pop("blocks.0.att.r_k"), w.update({"blocks.0.att.time_maa_x": torch.zeros(1, 1, C)})]),
            out, "an RWKV-6 model")
    refused(capsys, variant("nohead.pth", lambda w: w.pop("head.weight")), out, "no 'head.weight'")
    refused(capsys, variant("nolora.pth", lambda w: w.pop("blocks.1.att.g2")), out, "no 'blocks.1.att.g2'")
    refused(capsys, variant("shape.pth", lambda w: w.update({"blocks.1.att.key.weight": torch.zeros(C, C + 1)})),
            out, "blocks.1.att.key.weight has shape (64, 65), expected (64, 64)")
    refused(capsys, variant("extra.pth", lambda w: w.update({"blocks.0.ffn.s_emb.weight": torch.zeros(4, 4)})),
            out, "has tensors a plain RWKV-7 does not: blocks.0.ffn.s_emb.weight")
    refused(capsys, variant("int8.pth", lambda w: w.update({"blocks.0.att.key.weight": torch.zeros(C, C, dtype=torch.int8)})),
            out, "blocks.0.att.key.weight is torch.int8")
    refused(capsys, variant("nan.pth", lambda w: w["blocks.1.att.w0"].view(-1)[3].fill_(float("nan"))), out,
            "blocks.1.att.w0 holds non-finite values")
    torch.save({"weights": 1}, tmp_path / "dict.pth")
    refused(capsys, tmp_path / "dict.pth", out, "flat dict of tensors")

    p = run(["import_rwkv.py", "--input", str(tmp_path / "v5.pth"), "--out_dir", str(out)])
    assert p.returncode == 1 and p.stdout == "" and "Traceback" not in p.stderr and p.stderr.count("\n") == 1
    refused(capsys, good, tmp_path / "out300", "a vocabulary of 300 tokens is neither", ())
    import_rwkv.main(["--input", str(good), "--out_dir", str(out), "--tokenizer", "gpt2"])
    first = (out / "ckpt.pt").read_bytes()
    refused_again = pytest.raises(SystemExit)
    with refused_again:
        import_rwkv.main(["--input", str(good), "--out_dir", str(out), "--tokenizer", "gpt2"])
    assert "exists; pass --force" in capsys.readouterr().err and (out / "ckpt.pt").read_bytes() == first


def test_hub_file_is_downloaded_or_read_locally(tmp_path, monkeypatch, capsys):
    """owner/repo/filename: hf_hub_download where the hub is reachable; offline, a copy in the current directory."""
    import huggingface_hub
    import data
    spec = "BlinkDL/rwkv7-g1/rwkv7-g1-0.1b-20250307-ctx4096.pth"
    local = write_official(tmp_path / "downloaded.pth")
    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda **kw: calls.append(kw) or str(local))
    monkeypatch.setattr(data, "hub_reachable", lambda: True)
    assert import_rwkv.resolve(spec) == str(local)
    assert calls == [{"repo_id": "BlinkDL/rwkv7-g1", "filename": "rwkv7-g1-0.1b-20250307-ctx4096.pth",
                      "local_files_only": False}]

    monkeypatch.setattr(data, "hub_reachable", lambda: False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rwkv7-g1-0.1b-20250307-ctx4096.pth").write_bytes(local.read_bytes())
    assert import_rwkv.resolve(spec) == "rwkv7-g1-0.1b-20250307-ctx4096.pth"
    (tmp_path / "rwkv7-g1-0.1b-20250307-ctx4096.pth").unlink()

    def offline(**kw):
        raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    refused(capsys, spec, tmp_path / "out", "the hub is unreachable, and the file is neither in the hub cache")
