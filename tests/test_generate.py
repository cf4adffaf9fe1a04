"""generate.py: recurrent decoding == full re-computation, seeds, streaming, the CLI end to end, bad input."""
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

shared = Path(__file__).resolve().parents[1].parent / "shared"
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(shared / "tiktoken_cache"))

import generate  # noqa: E402
import model as model_module  # noqa: E402
from model import GPTConfig, build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EOT = 50256
# block_size 16 and window 8, so that 120 tokens run far past both; GPT needs its positions for the whole run
TINY = dict(block_size=16, n_layer=2, n_head=2, n_embd=32, head_size=16, n_kv_head=1, window_size=8,
            num_experts=4, num_active_experts=2, expert_dim=32, chunk_len=8)
TINY_GPT = dict(TINY, model_type="gpt", block_size=128)
SPEED = re.compile(r"^\[prompt (\d+) tokens \| generated (\d+) tokens \| prefill [\d.]+ tok/s \([\d.]+ s, incl\. "
                   r"1st token\) \| decode \((recurrent|recompute)\) ([\d.]+ tok/s|n/a) \([\d.]+ s\) \| cpu (\w+)\]$")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny models on shared cores: two OpenMP threads wait on each other's neighbours, 1 thread is ~10x faster
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_model(**overrides):
    torch.manual_seed(0)
    model = build_model(GPTConfig(**{**TINY, **overrides}))
    # weights ~ N(0, 1) rather than the 0.02 init: at that init greedy decoding repeats a single token,
    # and a comparison of two constant sequences would prove nothing
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0)
    return model


def save(model, path):
    torch.save({"model": model.state_dict(), "model_args": asdict(model.config), "iter_num": 500,
                "best_val_loss": 9.0, "config": {}}, path)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    rwkv = tiny_model()
    save(rwkv, out / "ckpt.pt")
    save(rwkv, out / "ckpt-500.pt")
    save(tiny_model(**TINY_GPT), out / "gpt.pt")
    return out


def run(capsys, out_dir, *args):
    """generate.main in-process; returns (text lines, speed lines, stderr)."""
    generate.main([f"--out_dir={out_dir}", "--device=cpu", *args])
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    speed = [SPEED.match(ln) for ln in lines]
    return [ln for ln, m in zip(lines, speed) if not m], [m for m in speed if m], captured.err


def fails(capsys, out_dir, *args):
    """generate.main must exit 1 with one line on stderr; returns that line."""
    with pytest.raises(SystemExit) as e:
        generate.main([f"--out_dir={out_dir}", "--device=cpu", *args])
    err = capsys.readouterr().err
    assert e.value.code == 1 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err.strip()


@torch.no_grad()
def greedy_by_recomputation(model, prompt, n):
    """The reference: the whole context through the parallel forward for every new token."""
    idx = torch.tensor([prompt])
    for _ in range(n):
        logits, _ = model(idx)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx[0, len(prompt):].tolist()


def tokens(steps):
    return [int(t) for t in steps]


# ----------------------------------------------------------------------------------------------------
# decoding


@pytest.mark.parametrize("name", ["ckpt-500", "gpt"])
def test_recurrent_greedy_equals_recomputation(out_dir, name):
    """Greedy through prefill + one forward_with_state per token == greedy by full re-computation, for 120
    tokens: MicroRWKV to 7x its block_size (16) and 15x its SWA window (8), GPT within its block_size (128)."""
    model = generate.load_model(str(out_dir), name, "cpu")
    generate.mask_padding_ids(model, EOT + 1)
    prompt, n_new = [464, 1110, 11, 257, 1310], 120  # "The day, a little"
    expected = greedy_by_recomputation(model, prompt, n_new)
    assert len(set(expected)) > 20, "the reference sequence must not be trivial"
    idx = torch.tensor([prompt])
    assert tokens(model.generate_stream(idx, n_new, temperature=0)) == expected
    with torch.no_grad():
        assert tokens(generate.generate_recompute(model, idx, n_new, temperature=0)) == expected


def test_gpt_greedy_past_block_size_is_the_same_both_ways():
    """Past its learned positions GPT conditions on a window of the context: all of it up to block_size
    tokens, then the last block_size // 2 (growing again from there). Recurrent decoding (a KV cache,
    re-prefilled when full) and --recompute both follow that rule."""
    model = tiny_model(**dict(TINY_GPT, block_size=16)).eval()
    prompt, n_new = [464, 1110, 11, 257, 1310], 60
    idx, expected = torch.tensor([prompt]), []
    with torch.no_grad():  # the rule, written out: the window restarts at half a block when it overflows
        context = idx
        for _ in range(n_new):
            token = model(context)[0][:, -1].argmax(-1, keepdim=True)
            expected.append(int(token))
            context = torch.cat([context, token], dim=1)
            if context.shape[1] > 16:
                context = context[:, -8:]
        assert len(set(expected)) > 10, "the reference sequence must not be trivial"
        assert tokens(model.generate_stream(idx, n_new, temperature=0)) == expected
        assert tokens(generate.generate_recompute(model, idx, n_new, temperature=0)) == expected


def test_cli_greedy_text_is_the_reference_text(out_dir, capsys):
    """The CLI's recurrent and --recompute runs print exactly the text of the reference tokens."""
    enc = generate.get_tokenizer()
    model = generate.load_model(str(out_dir), "ckpt", "cpu")
    generate.mask_padding_ids(model, enc.n_vocab)
    expected = "One day" + enc.decode(greedy_by_recomputation(model, enc.encode("One day"), 60))
    for mode in ([], ["--recompute"]):
        text, speed, _ = run(capsys, out_dir, "--prompt=One day", "--max_num_tokens=60", "--temperature=0", *mode)
        assert "\n".join(text) == expected
        assert speed[0].group(1, 2, 3) == ("2", "60", "recompute" if mode else "recurrent")


def test_mask_padding_ids():
    """No logits for the padding ids past the tokenizer's 50257."""
    model = tiny_model()
    idx = torch.tensor([[1, 2, 3]])
    expected = model.forward_with_state(idx)[0]
    generate.mask_padding_ids(model, EOT + 1)
    logits, _ = model.forward_with_state(idx)
    assert torch.allclose(logits[..., :EOT + 1], expected[..., :EOT + 1], atol=1e-4)
    assert torch.isinf(logits[..., EOT + 1:]).all()


# ----------------------------------------------------------------------------------------------------
# the CLI: seeds, streaming, samples, prompts


def test_same_seed_same_output_and_stream_prints_the_same(out_dir, capsys):
    args = ["--prompt=Once upon a time", "--max_num_tokens=30", "--num_samples=2", "--temperature=1.0",
            "--top_k=100", "--top_p=0.9"]
    text, speed, _ = run(capsys, out_dir, *args, "--seed=7")
    assert run(capsys, out_dir, *args, "--seed=7")[0] == text
    assert run(capsys, out_dir, *args, "--seed=7", "--stream")[0] == text
    assert run(capsys, out_dir, *args, "--seed=8")[0] != text
    assert len(speed) == 2 and text.count("-" * 80) == 1
    first, second = "\n".join(text).split("\n" + "-" * 80 + "\n")
    assert first.startswith("Once upon a time") and second.startswith("Once upon a time") and first != second


def test_stop_at_eot(out_dir, capsys, monkeypatch):
    """A sample ends at <|endoftext|>, which is not printed; without the flag generation goes on."""
    real = model_module.sample
    calls = []

    def eot_every_fourth_token(logits, *args, **kwargs):
        token = real(logits, *args, **kwargs)
        calls.append(token)
        return token.fill_(EOT) if len(calls) % 4 == 0 else token

    monkeypatch.setattr(model_module, "sample", eot_every_fourth_token)  # model.generate_stream's
    monkeypatch.setattr(generate, "sample", eot_every_fourth_token)  # generate_recompute's
    for mode in ([], ["--recompute"], ["--stream"]):
        calls.clear()
        text, speed, _ = run(capsys, out_dir, "--prompt=One day", "--max_num_tokens=10", "--stop_at_eot", *mode)
        assert "<|endoftext|>" not in "\n".join(text) and speed[0].group(2) == "4"
    calls.clear()
    text, speed, _ = run(capsys, out_dir, "--prompt=One day", "--max_num_tokens=10")
    assert "<|endoftext|>" in "\n".join(text) and speed[0].group(2) == "10"


def test_empty_prompt_starts_from_endoftext(out_dir, capsys):
    args = ["--max_num_tokens=20", "--temperature=0"]
    text, speed, _ = run(capsys, out_dir, "--prompt=", *args)
    assert speed[0].group(1) == "1"
    eot_text, _, _ = run(capsys, out_dir, "--prompt=<|endoftext|>", *args)
    assert "<|endoftext|>" + "\n".join(text) == "\n".join(eot_text)


def test_long_prompts(out_dir, capsys, tmp_path):
    """Past block_size: MicroRWKV takes the whole prompt; GPT keeps the last block_size tokens, warns,
    and generates past its block_size by re-prefilling."""
    content = "Once upon a time there was a little dog named Max. " * 20 + "\n"
    story = tmp_path / "story.txt"
    story.write_text(content)
    enc = generate.get_tokenizer()
    n = len(enc.encode(content[:-1]))
    assert n > 128 and len(enc.encode(content)) != n
    text, speed, err = run(capsys, out_dir, f"--prompt_file={story}", "--max_num_tokens=5")
    assert speed[0].group(1) == str(n) and err == ""  # the file's last newline is dropped
    text, speed, err = run(capsys, out_dir, f"--prompt_file={story}", "--max_num_tokens=200", "--model_name=gpt")
    assert speed[0].group(1, 2) == ("128", "200")
    assert err.startswith(f"warning: the prompt has {n} tokens") and len(err.splitlines()) == 1


def test_dtypes_on_cpu(out_dir, capsys):
    """float32 by default on CPU; bfloat16 runs under autocast (float16 is refused: see test_bad_values)."""
    assert run(capsys, out_dir, "--max_num_tokens=3")[1][0].group(5) == "float32"
    assert run(capsys, out_dir, "--max_num_tokens=3", "--dtype=bfloat16")[1][0].group(5) == "bfloat16"


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        generate.main(["--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--prompt", "--prompt_file", "--max_num_tokens", "--model_name", "--out_dir", "--temperature",
                 "--top_k", "--top_p", "--seed", "--num_samples", "--device", "--dtype", "--stream",
                 "--stop_at_eot", "--recompute"):
        assert flag + " " in help_text or flag + "\n" in help_text, flag


# ----------------------------------------------------------------------------------------------------
# bad input: one line, exit code 1, no traceback


def test_missing_checkpoint_lists_what_exists(out_dir, capsys, tmp_path):
    assert fails(capsys, out_dir, "--model_name=ckpt-9") == \
        f"error: no checkpoint 'ckpt-9' in {out_dir}; found: ckpt, ckpt-500, gpt"
    assert "found: none (train one with `python train.py`)" in fails(capsys, tmp_path / "nothing")
    run(capsys, out_dir, "--model_name=ckpt-500.pt", "--max_num_tokens=1")  # the extension is optional


def test_files_that_are_not_checkpoints(capsys, tmp_path):
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "dict.pt")
    torch.save({"model": {}, "model_args": {"n_layer": 2, "no_such_field": 1}}, tmp_path / "newer.pt")
    torch.save({"model": {"x": torch.zeros(1)}, "model_args": asdict(GPTConfig(**TINY))}, tmp_path / "weights.pt")
    for name in ("garbage", "dict"):
        assert fails(capsys, tmp_path, f"--model_name={name}").startswith(
            f"error: {tmp_path / name}.pt is not a MicroRWKV checkpoint (")
    for name in ("newer", "weights"):
        assert fails(capsys, tmp_path, f"--model_name={name}").startswith(
            f"error: {tmp_path / name}.pt does not match this model.py (")


@pytest.mark.parametrize("arg, needle", [
    ("--temperature=-0.5", "--temperature must be >= 0"),
    ("--top_p=0", "--top_p must be in (0, 1]"),
    ("--top_p=1.5", "--top_p must be in (0, 1]"),
    ("--top_k=-1", "--top_k must be >= 0"),
    ("--max_num_tokens=0", "--max_num_tokens must be >= 1"),
    ("--num_samples=0", "--num_samples must be >= 1"),
    ("--dtype=float16", "--dtype=float16 needs a GPU"),
    ("--prompt_file=/no/such/file.txt", "cannot read --prompt_file /no/such/file.txt"),
    ("--device=nonsense", "bad --device 'nonsense'"),
])
def test_bad_values(out_dir, capsys, arg, needle):
    assert needle in fails(capsys, out_dir, arg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(out_dir, capsys):
    assert "CUDA is not available" in fails(capsys, out_dir, "--device=cuda")


def test_missing_tokenizer(out_dir, capsys, monkeypatch):
    import tiktoken

    def offline(name):
        raise ValueError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    assert "TIKTOKEN_CACHE_DIR" in fails(capsys, out_dir)


# ----------------------------------------------------------------------------------------------------
# end to end: train.py writes a checkpoint, generate.py samples from it


def test_train_then_generate(tmp_path):
    enc = generate.get_tokenizer()
    data = tmp_path / "data"
    data.mkdir()
    story = "One day, a little girl named Lily found a needle in her room. She was happy.<|endoftext|>"
    ids = np.array(enc.encode(story * 20, allowed_special="all"), dtype=np.uint16)
    ids.tofile(data / "train.bin")
    ids[:100].tofile(data / "val.bin")
    (data / "meta.json").write_text(json.dumps({
        "tokenizer": "r50k_base", "vocab_size": 50257, "eot_token": EOT, "train_tokens": len(ids),
        "val_tokens": 100, "train_stories": 20, "val_stories": 1, "source": "test_generate.py"}))
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")  # see one_thread()
    model_args = [f"--{k}={v}" for k, v in TINY.items() if k != "block_size"] + ["--block_size=32"]
    train = subprocess.run(
        [sys.executable, "train.py", f"--data_dir={data}", f"--out_dir={out}", "--device=cpu", "--dtype=float32",
         *model_args, "--batch_size=2", "--max_iters=2", "--ckpt_interval=2", "--eval_interval=2",
         "--eval_iters=1", "--log_interval=1", "--warmup_iters=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stdout + train.stderr
    assert (out / "ckpt-2.pt").is_file()

    gen = subprocess.run(
        [sys.executable, "generate.py", f"--out_dir={out}", "--model_name=ckpt-2", "--prompt=One day",
         "--max_num_tokens=40", "--device=cpu", "--stream"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0 and gen.stderr == "", gen.stderr
    lines = gen.stdout.splitlines()
    assert lines[0].startswith("One day") and len(lines[0]) > len("One day")
    speed = SPEED.match(lines[-1])
    assert speed and speed.group(1, 2, 3) == ("2", "40", "recurrent"), lines[-1]
