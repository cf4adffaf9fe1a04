"""generate.py: recurrent decoding == full re-computation, seeds, streaming, the CLI end to end, bad input;
bfloat16 weights, batched sampling (the same samples as one at a time), saved / loaded prompt states."""
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch

import checkpoint  # noqa: E402
import generate  # noqa: E402
import model as model_module  # noqa: E402
from model import GPTConfig, build_model  # noqa: E402

from conftest import FULL_X051A, ROOT  # noqa: E402
EOT = 50256
# block_size 16 and window 8, so that 120 tokens run far past both; GPT needs its positions for the whole run
TINY = dict(block_size=16, n_layer=2, n_head=2, n_embd=32, head_size=16, n_kv_head=1, window_size=8,
            num_experts=4, num_active_experts=2, expert_dim=32, chunk_len=8, **FULL_X051A)
TINY_GPT = dict(TINY, model_type="gpt", block_size=128)
# groups: prompt tokens, generated tokens ("3, 6, 10" for a batch), mode, decode speed, dtype
SPEED = re.compile(r"^\[prompt (\d+) tokens \| generated ([\d, ]+) tokens(?: in a batch of \d+)? \| prefill "
                   r"(?:[\d.]+ tok/s \([\d.]+ s, incl\. 1st token\)|from saved state \([\d.]+ s, 1st token\)) \| "
                   r"decode \((recurrent|recompute)\) ([\d.]+ tok/s|n/a|[\d.]+ tok/s per sample, [\d.]+ tok/s total) "
                   r"\([\d.]+ s\) \| cpu (\w+)\]$")
SEPARATOR = "\n" + "-" * 80 + "\n"


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
    save(tiny_model(rwkv_version="x070", use_swa=False, use_gqa=False, use_moe=False), out / "rwkv7.pt")
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
                 "--stop_at_eot", "--recompute", "--batch", "--save_state", "--load_state", "--int8"):
        assert flag + " " in help_text or flag + "\n" in help_text, flag


# ----------------------------------------------------------------------------------------------------
# bad input: one line, exit code 1, no traceback


def test_missing_checkpoint_lists_what_exists(out_dir, capsys, tmp_path):
    assert fails(capsys, out_dir, "--model_name=ckpt-9") == \
        f"error: no checkpoint 'ckpt-9' in {out_dir}; found: ckpt, ckpt-500, gpt, rwkv7"
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
    ("--batch --stream", "--batch prints its samples when they are all done"),
    ("--load_state=x.state --prompt=Hi", "--load_state continues the prompt saved in its file"),
    ("--load_state=x.state --prompt=", "--load_state continues the prompt saved in its file"),
    ("--load_state=x.state --prompt_file=p.txt", "--load_state continues the prompt saved in its file"),
    ("--load_state=x.state --save_state=y.state", "give --save_state or --load_state, not both"),
    ("--save_state=y.state --recompute", "--recompute keeps no state"),
    ("--int8 --recompute", "--int8 is a CPU decoding path"),
    ("--int8", "--int8: int8 decoding needs a pure RWKV-7 model"),
])
def test_bad_values(out_dir, capsys, arg, needle):
    assert needle in fails(capsys, out_dir, *arg.split())


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


# ----------------------------------------------------------------------------------------------------
# bfloat16 weights


def relative_error(logits, reference):
    """max |logits - reference| over max |reference|, on the tokens both can produce (not the -inf padding)."""
    finite = torch.isfinite(reference)
    return float((logits.float() - reference)[finite].abs().max() / reference[finite].abs().max())


@pytest.mark.parametrize("name", ["ckpt", "gpt", "x070"])
def test_bfloat16_weights(models_dir, name):
    """--dtype=bfloat16 stores the weights in bf16 (but the float32 vectors cast_weights names), TimeMix's state S
    stays float32, and the logits of the prompt and the next two tokens (teacher-forced with float32's greedy
    tokens) are within 5% of float32's largest logit (measured: at most 2.8%, on weights of gain 1)."""
    model = generate.load_model(str(models_dir), name, "cpu")
    half = checkpoint.cast_weights(generate.load_model(str(models_dir), name, "cpu"), torch.bfloat16)
    for m in (model, half):
        generate.mask_padding_ids(m, EOT + 1)
    assert half.lm_head.weight is half.wte.weight  # still tied: read once
    kept = set()
    for n, p in half.named_parameters():
        if n.endswith(checkpoint.FLOAT32_PARAMS):
            assert p.dtype == torch.float32, n
            kept.add(n)
        else:
            assert p.dtype == torch.bfloat16, n
    assert (name == "gpt") == (not kept)  # GPT has none of RWKV's vectors
    prompt = torch.tensor([[464, 1110, 11, 257, 1310]])
    with torch.no_grad():
        (ref, ref_state), (got, state) = generate.prefill(model, prompt), generate.prefill(half, prompt)
        errors = [relative_error(got, ref)]
        for _ in range(2):
            token = ref.argmax(-1, keepdim=True)
            ref, ref_state = model.forward_with_state(token, ref_state)
            got, state = half.forward_with_state(token, state)
            ref, got = ref[:, -1], got[:, -1]
            errors.append(relative_error(got, ref))
    assert got.dtype == torch.bfloat16 and max(errors) < 0.05, errors
    if name != "gpt":
        assert all(s.tmix.S.dtype == torch.float32 and s.tmix.x_prev.dtype == torch.bfloat16 for s in state)
    # greedy text: the same first token; where the texts part is printed (N(0, 1) weights and 50k ids: near ties)
    steps = [list(map(int, m.generate_stream(prompt, 30, temperature=0))) for m in (model, half)]
    diverge = next((i for i, (a, b) in enumerate(zip(*steps)) if a != b), len(steps[0]))
    print(f"{name}: bf16 greedy equals float32's for the first {diverge} of 30 tokens; logits error {errors}")
    if diverge < len(steps[0]):  # the same context up to here: bf16 may only pick what float32 nearly ties
        with torch.no_grad():
            logits = model(torch.cat([prompt, torch.tensor([steps[0][:diverge]], dtype=torch.long)], dim=1))[0][0, -1]
        gap = (logits[steps[0][diverge]] - logits[steps[1][diverge]]).item()
        assert 0 <= gap < 2 * 0.05 * logits.abs().max().item(), (diverge, gap)  # each logit off by < 5%


def test_bfloat16_cli(out_dir, capsys):
    """The CLI runs in bf16 weights and its greedy text starts like float32's."""
    args = ["--prompt=One day", "--max_num_tokens=20", "--temperature=0"]
    text32 = run(capsys, out_dir, *args)[0][0]
    text16, speed, _ = run(capsys, out_dir, *args, "--dtype=bfloat16")
    assert speed[0].group(5) == "bfloat16" and text16[0].startswith("One day")
    enc = generate.get_tokenizer()
    first = enc.decode(enc.encode(text32)[2:3])
    assert text16[0].startswith("One day" + first) and len(first) > 0


def test_int8_cli(out_dir, capsys):
    """--int8 decodes through int8 matrices (one kernel call per matrix per token) and starts like float32."""
    args = ["--model_name=rwkv7", "--prompt=One day", "--max_num_tokens=20", "--temperature=0", "--num_samples=2"]
    with torch.profiler.profile() as prof:  # the kernel runs inside TorchScript: count it where it runs
        text8 = samples(run(capsys, out_dir, *args, "--int8")[0])
    calls = sum(e.count for e in prof.key_averages() if e.key == "quantized::linear_dynamic")
    assert calls == 2 * 19 * (2 * 6 + 1)  # samples x decoded tokens x (2 layers of 6 matrices + the head)
    text32 = samples(run(capsys, out_dir, *args)[0])
    enc = generate.get_tokenizer()
    head = enc.decode(enc.encode(text32[0])[:5])  # the prompt's 2 tokens and 3 decoded ones
    assert text8[0] == text8[1] and text8[0].startswith(head) and len(head) > len("One day")


# ----------------------------------------------------------------------------------------------------
# batched sampling


def samples(text):
    return "\n".join(text).split(SEPARATOR)


def test_batch_prints_the_samples_of_one_at_a_time(out_dir, capsys):
    """Sample i draws from its own generator, seeded from (seed, i): the same texts one after the other and in
    one batch, and sample 0 of three is the single sample of a one-sample run."""
    args = ["--prompt=Once upon a time", "--max_num_tokens=25", "--temperature=0.8", "--seed=3"]
    text, speed, _ = run(capsys, out_dir, *args, "--num_samples=3")
    batch_text, batch_speed, _ = run(capsys, out_dir, *args, "--num_samples=3", "--batch")
    assert batch_text == text and len(set(samples(text))) == 3
    assert len(speed) == 3 and len(batch_speed) == 1 and batch_speed[0].group(2) == "25, 25, 25"
    assert "tok/s per sample" in batch_speed[0].group(4) and "tok/s total" in batch_speed[0].group(4)
    one, _, _ = run(capsys, out_dir, *args, "--num_samples=1")
    assert one == samples(text)[0].split("\n")
    recompute, _, _ = run(capsys, out_dir, *args, "--num_samples=3", "--batch", "--recompute", "--model_name=gpt")
    assert recompute == run(capsys, out_dir, *args, "--num_samples=3", "--model_name=gpt")[0]
    # sample 0 draws from the seed itself: generate_stream with that generator gives the same text
    model = generate.load_model(str(out_dir), "ckpt", "cpu")
    enc = generate.get_tokenizer()
    generate.mask_padding_ids(model, enc.n_vocab)
    tokens0 = model.generate_stream(torch.tensor([enc.encode("Once upon a time")]), 25, 0.8, 200, 1.0,
                                    torch.Generator().manual_seed(3))
    assert samples(text)[0] == "Once upon a time" + enc.decode([int(t) for t in tokens0])


def test_batch_stop_at_eot_per_row(out_dir, capsys, monkeypatch):
    """Each row stops printing at its own <|endoftext|>; decoding goes on until every row has stopped."""
    real, calls = generate.sample, []
    eot_at = {(0, 2), (1, 5), (2, 7)}  # (row, step): rows 0, 1, 2 end with their 3rd, 6th and 8th token

    def fake(logits, *args, **kwargs):  # sample_rows draws row by row: call c is row c % 3 of step c // 3
        token = real(logits, *args, **kwargs)
        calls.append(token)
        return token.fill_(EOT) if ((len(calls) - 1) % 3, (len(calls) - 1) // 3) in eot_at else token

    monkeypatch.setattr(generate, "sample", fake)
    args = ["--prompt=One day", "--max_num_tokens=12", "--num_samples=3", "--batch", "--temperature=0.8"]
    full, _, _ = run(capsys, out_dir, *args)
    assert len(calls) == 3 * 12
    calls.clear()
    stopped, speed, _ = run(capsys, out_dir, *args, "--stop_at_eot")
    assert len(calls) == 3 * 8 and speed[0].group(2) == "3, 6, 8"
    assert samples(stopped) == [t.split("<|endoftext|>")[0] for t in samples(full)]
    assert "<|endoftext|>" not in "\n".join(stopped)


# ----------------------------------------------------------------------------------------------------
# prompt states: --save_state / --load_state


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    save(tiny_model(), out / "ckpt.pt")  # SWA + GQA + MoE
    other = tiny_model()
    with torch.no_grad():
        other.blocks[0].cmix.key.weight.add_(1e-3)
    save(other, out / "other.pt")  # the same model_args, other weights
    save(tiny_model(use_swa=False, use_gqa=False, use_moe=False), out / "rwkv.pt")
    save(tiny_model(**TINY_GPT), out / "gpt.pt")
    save(tiny_model(**dict(TINY_GPT, block_size=16)), out / "gpt16.pt")  # 40 tokens run past its positions
    save(tiny_model(rwkv_version="x070", chunk_len=16), out / "x070.pt")
    return out


@pytest.mark.parametrize("name", ["ckpt", "rwkv", "gpt", "gpt16", "x070"])
def test_load_state_continues_like_one_run(models_dir, capsys, tmp_path, name):
    """A run from a saved prompt state prints what one uninterrupted run prints: greedy, sampled, in a batch."""
    state = tmp_path / "prompt.state"
    prompt = ["--prompt=Once upon a time, a little dog", f"--model_name={name}"]
    for args in (["--temperature=0", "--max_num_tokens=40"],
                 ["--temperature=0.8", "--max_num_tokens=20", "--num_samples=2", "--seed=5"]):
        expected, _, _ = run(capsys, models_dir, *prompt, *args)
        saving, _, _ = run(capsys, models_dir, *prompt, *args, f"--save_state={state}")
        loaded, speed, _ = run(capsys, models_dir, f"--model_name={name}", *args, f"--load_state={state}")
        assert saving == expected and loaded == expected
        assert all("from saved state" in m.group(0) and m.group(1) == "8" for m in speed)
    assert run(capsys, models_dir, f"--model_name={name}", *args, f"--load_state={state}", "--batch")[0] == expected
    # greedy: the reference tokens of a full re-computation
    enc = generate.get_tokenizer()
    model = generate.load_model(str(models_dir), name, "cpu")
    generate.mask_padding_ids(model, enc.n_vocab)
    ids = enc.encode("Once upon a time, a little dog")
    if name != "gpt16":  # (past its block_size GPT conditions on a window: test_gpt_greedy_past_block_size...)
        greedy, _, _ = run(capsys, models_dir, f"--model_name={name}", f"--load_state={state}", "--temperature=0",
                           "--max_num_tokens=30")
        assert "\n".join(greedy) == enc.decode(ids + greedy_by_recomputation(model, ids, 30))
    # a state saved in float32 continues in bf16 weights (cast on load; S stays float32)
    assert run(capsys, models_dir, f"--model_name={name}", f"--load_state={state}", "--max_num_tokens=5",
               "--dtype=bfloat16")[1][0].group(5) == "bfloat16"


def test_state_file_contents(models_dir, capsys, tmp_path):
    """weights_only=True reads it; the KV caches are their logical slices only, not append_to_cache's buffers."""
    state = tmp_path / "s.state"
    run(capsys, models_dir, "--model_name=gpt", "--prompt=One day, a girl", "--max_num_tokens=3",
        f"--save_state={state}")
    saved = torch.load(state, weights_only=True)
    assert {"format", "version", "model_args", "weights", "checkpoint", "dtype", "prompt", "n_prompt_tokens",
            "prompt_tokens", "logits", "state"} <= saved.keys()
    assert saved["prompt"] == "One day, a girl" and saved["n_prompt_tokens"] == 5 == len(saved["prompt_tokens"])
    assert saved["model_args"]["block_size"] == 128 and saved["logits"].shape == (1, GPTConfig().vocab_size)
    assert len(saved["state"]) == TINY["n_layer"]
    layer = saved["state"][0]
    assert layer["type"] == "KVCache" and layer["fields"]["pos"] == 5
    k = layer["fields"]["k"]
    assert k.shape == (1, TINY["n_head"], 5, TINY["n_embd"] // TINY["n_head"])
    assert k.untyped_storage().nbytes() == k.numel() * k.element_size()
    assert not [p for p in tmp_path.iterdir() if p.name != "s.state"]  # the temp file was renamed
    # MicroRWKV: LayerStates with a TimeMixState; S in float32 also when the weights are bf16
    run(capsys, models_dir, "--prompt=One day, a girl", "--max_num_tokens=3", "--dtype=bfloat16", f"--save_state={state}")
    layer = torch.load(state, weights_only=True)["state"][1]
    assert layer["type"] == "LayerState" and layer["fields"]["tmix"]["type"] == "TimeMixState"
    assert layer["fields"]["tmix"]["fields"]["S"].dtype == torch.float32
    assert layer["fields"]["cmix"].dtype == torch.bfloat16 and layer["fields"]["pos"] == 5


def test_plain_keeps_only_the_logical_cache():
    """A KV cache after decoding is a view of a buffer with spare room: the file gets the logical part only."""
    cache = model_module.append_to_cache(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 1, 4))
    assert cache.untyped_storage().nbytes() >= 4 * cache.numel() * cache.element_size()  # 16 slots for 4
    plain = generate.plain([model_module.KVCache(cache, cache + 1, 4)])
    k = plain[0]["fields"]["k"]
    assert torch.equal(k, cache) and k.untyped_storage().nbytes() == k.numel() * k.element_size()
    empty = torch.zeros(1, 2, 1, 4)
    back = generate.unplain(plain, [model_module.KVCache(empty, empty, 1)], "cpu")
    assert type(back[0]) is model_module.KVCache and back[0].pos == 4
    assert torch.equal(back[0].k, cache) and torch.equal(back[0].v, cache + 1)


def test_bad_state_files(models_dir, capsys, tmp_path):
    state = tmp_path / "s.state"
    run(capsys, models_dir, "--prompt=One day", "--max_num_tokens=2", f"--save_state={state}")
    assert fails(capsys, models_dir, "--model_name=gpt", f"--load_state={state}") == \
        f"error: {state} was saved from another model: block_size=16 there, 128 in this checkpoint"
    assert fails(capsys, models_dir, "--model_name=rwkv", f"--load_state={state}") == \
        f"error: {state} was saved from another model: use_swa=True there, False in this checkpoint"
    assert fails(capsys, models_dir, "--model_name=other", f"--load_state={state}").startswith(
        f"error: {state} was saved from other weights (checkpoint {models_dir / 'ckpt.pt'})")
    (tmp_path / "garbage").write_bytes(b"not a state at all")
    assert fails(capsys, models_dir, f"--load_state={tmp_path / 'garbage'}").startswith(
        f"error: {tmp_path / 'garbage'} is not a generate.py state file (")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "dict")
    assert fails(capsys, models_dir, f"--load_state={tmp_path / 'dict'}") == \
        f"error: {tmp_path / 'dict'} is not a generate.py state file (no format 'microrwkv-generate-state' entry)"
    saved = torch.load(state, weights_only=True)
    for broken, needle in ((lambda d: d["state"].pop(), "state has 1 layers, the model 2"),
                           (lambda d: d["state"][0]["fields"]["tmix"]["fields"].pop("S"), "state[0].tmix is not a TimeMixState"),
                           (lambda d: d["state"][0]["fields"].__setitem__("cmix", torch.zeros(1, 7)),
                            "state[0].cmix has shape (1, 7), the model's (1, 32)"),
                           (lambda d: d.pop("logits"), "KeyError")):
        data = torch.load(state, weights_only=True)
        broken(data)
        torch.save(data, tmp_path / "broken")
        err = fails(capsys, models_dir, f"--load_state={tmp_path / 'broken'}")
        assert err.startswith(f"error: {tmp_path / 'broken'} is not a usable state file (") and needle in err, err
    assert saved["state"][0]["fields"]["swa"]["fields"]["k"].shape[2] == TINY["window_size"] - 1
    assert "cannot read --load_state" in fails(capsys, models_dir, f"--load_state={tmp_path / 'missing'}")
    assert "cannot write --save_state" in fails(capsys, models_dir, f"--save_state={tmp_path / 'no' / 'dir'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "dict", "garbage", "s.state"]  # no temp files


@pytest.mark.parametrize("name", ["ckpt", "gpt"])
def test_state_files_with_impossible_tokens_or_positions(models_dir, capsys, tmp_path, name):
    """Token ids outside the vocabulary and positions that disagree with the caches are one line, not a traceback."""
    state = tmp_path / "s.state"
    run(capsys, models_dir, f"--model_name={name}", "--prompt=One day, a girl", "--max_num_tokens=2",
        f"--save_state={state}")

    def gpt_pos(d, p):
        d["state"][0]["fields"]["pos"] = p

    def rwkv_pos(d, p):
        d["state"][0]["fields"]["pos"] = p
        for cache in ("swa", "gqa"):
            d["state"][0]["fields"][cache]["fields"]["pos"] = p

    set_pos = gpt_pos if name == "gpt" else rwkv_pos
    for broken, needle in ((lambda d: d["prompt_tokens"].__setitem__(0, -3), "token ids outside [0, "),
                           (lambda d: d["prompt_tokens"].__setitem__(0, 10 ** 6), "token ids outside [0, "),
                           (lambda d: set_pos(d, 40), "pos"),
                           (lambda d: set_pos(d, -1), "pos"),
                           (lambda d: d["state"][-1]["fields"].__setitem__("pos", 4), "pos")):
        data = torch.load(state, weights_only=True)
        broken(data)
        torch.save(data, tmp_path / "broken")
        err = fails(capsys, models_dir, f"--model_name={name}", f"--load_state={tmp_path / 'broken'}",
                    "--max_num_tokens=3")
        assert err.startswith(f"error: {tmp_path / 'broken'} is not a usable state file (") and needle in err, err


def test_state_file_check_ignores_fields_that_change_no_logits(models_dir, capsys, tmp_path):
    """A state loads into the checkpoint it came from whatever its init-only fields and dropout say (a checkpoint
    from before init_scheme existed is rebuilt with 'gpt2'); a field that changes the logits is refused."""
    state = tmp_path / "s.state"
    args = ["--temperature=0", "--max_num_tokens=5"]
    expected = run(capsys, models_dir, "--prompt=One day", *args, f"--save_state={state}")[0]
    data = torch.load(state, weights_only=True)
    data["model_args"].update(init_scheme="gpt2", ln_emb_init=1.0, dropout=0.1)
    torch.save(data, tmp_path / "old.state")
    assert run(capsys, models_dir, *args, f"--load_state={tmp_path / 'old.state'}")[0] == expected
    data["model_args"]["chunk_len"] = 4
    torch.save(data, tmp_path / "other.state")
    assert "chunk_len=4 there, 8 in this checkpoint" in fails(capsys, models_dir, f"--load_state={tmp_path / 'other.state'}")
