"""benchmark_inference_time.py and benchmark_training.py on tiny models: outputs exist and parse, land under
out/ (or the path given) and never under assets/, the state / KV-cache bytes grow exactly as the
architectures say (constant for RWKV, linear for attention caches), the training table's statistics are
consistent, the memory floor counts the bytes the parameter shapes and states say. No assertions on how fast
anything is."""
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch

import benchmark_inference_time as bench
import benchmark_training
import checkpoint
from conftest import FULL_X051A
from model import GPTConfig, build_model

ROOT = Path(__file__).resolve().parents[1]

N_LAYER, N_EMBD, N_HEAD, VOCAB, TOKENS, PROMPT = 2, 64, 4, 512, 64, 8
TINY = ["--n_layer", str(N_LAYER), "--n_embd", str(N_EMBD), "--n_head", str(N_HEAD), "--vocab_size", str(VOCAB),
        "--max_new_tokens", str(TOKENS), "--prompt_len", str(PROMPT), "--quick", "--bandwidth_mb", "8"]
FLOAT32, BFLOAT16 = 4, 2
INFERENCE_MODELS = ["microrwkv", "rwkv", "rwkv7", "gpt", "gpt-nocache"]


def run(tmp_path, *args):
    out = tmp_path / "out"
    bench.main([*TINY, "--out_dir", str(out), "--plot", str(tmp_path / "bench.png"), *args])
    summary = json.loads((out / "summary.json").read_text())
    rows = {s["model"]: [json.loads(line) for line in (out / f"{s['model']}.jsonl").read_text().splitlines()]
            for s in summary["models"]}
    return out, summary, rows


def test_all_models_outputs_and_state_bytes(tmp_path):
    out, summary, rows = run(tmp_path)
    names = INFERENCE_MODELS
    assert [s["model"] for s in summary["models"]] == names
    assert summary["arch"]["n_layer"] == N_LAYER and summary["arch"]["n_embd"] == N_EMBD
    for name in names:
        assert len(rows[name]) == TOKENS
        for i, r in enumerate(rows[name]):
            assert {"model", "i", "pos", "latency_ms", "cum_s", "state_bytes", "state_alloc_bytes",
                    "rss_bytes"} <= r.keys()
            assert r["model"] == name and r["i"] == i and r["pos"] == PROMPT + i + 1
            assert r["latency_ms"] > 0 and r["rss_bytes"] > 0
            assert r["state_alloc_bytes"] >= r["state_bytes"]  # what the state pins >= what it must hold
        cum = [r["cum_s"] for r in rows[name]]
        assert cum == sorted(cum)
    png = (tmp_path / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    # pure RWKV: per layer, TimeMix's (x_prev, H x N x N float32 state) and ChannelMix's x_prev; never grows
    head_size = 64
    rwkv = N_LAYER * (2 * N_EMBD + (N_EMBD // head_size) * head_size * head_size) * FLOAT32
    assert all(r["state_bytes"] == rwkv for r in rows["rwkv"])
    # RWKV-7 keeps the same state: x_prev twice, one N x N matrix per head
    assert all(r["state_bytes"] == rwkv for r in rows["rwkv7"])
    # GPT: K and V of every past token in every layer, exactly
    gpt_per_token = 2 * N_LAYER * N_EMBD * FLOAT32
    assert all(r["state_bytes"] == gpt_per_token * r["pos"] for r in rows["gpt"])
    assert all(r["state_bytes"] == 0 for r in rows["gpt-nocache"])  # keeps nothing between tokens
    assert all(r["state_alloc_bytes"] == 0 for r in rows["gpt-nocache"])
    # the in-place KV cache keeps spare room: at most twice what it holds (plus the 16-slot minimum)
    assert all(r["state_alloc_bytes"] <= 2 * r["state_bytes"] + 16 * gpt_per_token for r in rows["gpt"])
    # full MicroRWKV: RWKV + a fixed SWA window + a GQA cache growing n_head / n_kv_head times slower than GPT's
    n_kv_head, window = 2, 256
    gqa_per_token = 2 * N_LAYER * n_kv_head * (N_EMBD // N_HEAD) * FLOAT32
    swa = 2 * N_LAYER * (window - 1) * N_EMBD * FLOAT32
    assert all(r["state_bytes"] == rwkv + swa + gqa_per_token * r["pos"] for r in rows["microrwkv"])

    by_model = {s["model"]: s for s in summary["models"]}
    assert by_model["rwkv"]["state_first_MiB"] == by_model["rwkv"]["state_last_MiB"]
    assert by_model["gpt"]["state_last_MiB"] > by_model["gpt"]["state_first_MiB"]
    assert by_model["gpt"]["state_alloc_last_MiB"] >= by_model["gpt"]["state_last_MiB"]
    for s in summary["models"]:
        assert s["tokens"] == TOKENS and s["stopped"] == "-"
        assert s["ratio"] == pytest.approx(s["last10_ms"] / s["first10_ms"]) and s["tokens_per_s"] > 0
    # the printed table: a header and one row per model, in the same order, beside the exact command
    text = (out / "summary.txt").read_text().splitlines()
    assert text[0].startswith("python benchmark_inference_time.py --n_layer 2")
    table = text[2:]
    assert table[0].split()[:3] == ["model", "params", "tokens"]
    assert "state MiB (logical)" in table[0] and "state MiB (allocated)" in table[0]
    assert [line.split()[0] for line in table[1:]] == names
    assert int(table[2].split()[2]) == TOKENS


def test_batch_and_repeats(tmp_path):
    """--batch_size 3: three sequences per step, so RWKV's state and GPT's cache are 3x batch 1's and tok/s
    counts all three; --repeats 2: two decode runs, tok/s is the median one's (whose rows are written)."""
    B = 3
    _, summary, rows = run(tmp_path, "--models", "rwkv,gpt", "--batch_size", str(B), "--repeats", "2")
    assert summary["batch_size"] == B and summary["repeats"] == 2
    head_size = 64
    rwkv = N_LAYER * (2 * N_EMBD + (N_EMBD // head_size) * head_size * head_size) * FLOAT32
    assert all(r["state_bytes"] == B * rwkv for r in rows["rwkv"])
    assert all(r["state_bytes"] == B * 2 * N_LAYER * N_EMBD * FLOAT32 * r["pos"] for r in rows["gpt"])
    for s in summary["models"]:
        assert s["batch"] == B and len(s["repeat_tokens_per_s"]) == 2
        assert s["tokens_per_s"] == pytest.approx(B * TOKENS / rows[s["model"]][-1]["cum_s"], rel=1e-12)
        assert s["tokens_per_s"] == sorted(s["repeat_tokens_per_s"])[1]  # the median of two: the larger


def tiny_gpt_param_bytes(V, C, L, block_size, bytes_per):
    """GPT's weights read per token, by hand: wte (V x C, read whole by the tied head), one row of wpe, per layer
    two LayerNorm weights (C), q, k, v, o (C x C) and the MLP (C x 4C twice), and ln_f (no biases)."""
    return (V * C + C + L * (2 * C + 4 * C * C + 8 * C * C) + C) * bytes_per


def test_param_bytes_read_by_hand():
    V, C, L, H = 300, 32, 2, 2
    gpt = build_model(GPTConfig(model_type="gpt", vocab_size=V, n_embd=C, n_layer=L, n_head=H, block_size=64))
    assert bench.param_bytes_read(gpt) == tiny_gpt_param_bytes(V, C, L, 64, FLOAT32)
    # MicroRWKV with a top-2-of-4 MoE: every parameter (the tied wte / lm_head once) but 2 of the 4 experts
    config = GPTConfig(vocab_size=V, n_embd=C, n_layer=L, n_head=H, head_size=16, n_kv_head=1, window_size=8,
                       num_experts=4, num_active_experts=2, expert_dim=24, bias=True, **FULL_X051A)
    model = build_model(config)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}  # named_parameters: tied once
    assert "lm_head.weight" not in shapes and shapes["wte.weight"] == (V, C)
    expert = 2 * C * 24 + 24 + C  # c_fc and c_proj, weights and biases
    everything = sum(math.prod(shape) for shape in shapes.values())
    assert sum(math.prod(s) for n, s in shapes.items() if ".experts." in n) == L * 4 * expert
    assert bench.param_bytes_read(model) == (everything - L * 2 * expert) * FLOAT32
    # bf16 weights: half the bytes, but the float32 vectors checkpoint.cast_weights keeps (GroupNorm, decays)
    checkpoint.cast_weights(model, torch.bfloat16)
    kept = sum(math.prod(s) for n, s in shapes.items() if n.endswith(checkpoint.FLOAT32_PARAMS))
    assert 0 < kept < everything / 50
    assert bench.param_bytes_read(model) == (everything - L * 2 * expert - kept) * BFLOAT16 + kept * FLOAT32


def test_memory_floor_and_bfloat16_state(tmp_path, capsys):
    """--bandwidth 10 GB/s: every row's floor is (weights read + the state passed in) / 10 GB/s; bf16 weights
    halve the weights and x_prev / KV caches, but TimeMix's S stays float32."""
    models = ["rwkv", "rwkv7", "gpt"]
    _, summary, rows = run(tmp_path, "--models", ",".join(models), "--bandwidth", "10", "--dtype", "bfloat16")
    assert "memory bandwidth: 10.00 GB/s (given by --bandwidth)" in capsys.readouterr().out
    assert summary["bandwidth_GBps"] == 10.0 and summary["dtype"] == "bfloat16"
    by_model = {s["model"]: s for s in summary["models"]}
    head_size, L, C = 64, N_LAYER, N_EMBD
    rwkv_state = L * (2 * C * BFLOAT16 + (C // head_size) * head_size * head_size * FLOAT32)
    gpt_per_token = 2 * L * C * BFLOAT16
    assert by_model["gpt"]["param_bytes_read"] == tiny_gpt_param_bytes(VOCAB, C, L, None, BFLOAT16)
    for name in models:
        param_bytes = by_model[name]["param_bytes_read"]
        for r in rows[name]:
            # the state read at position pos holds pos - 1 tokens (the step appends the pos-th)
            expected = gpt_per_token * (r["pos"] - 1) if name == "gpt" else rwkv_state
            assert r["state_read_bytes"] == expected
            assert r["floor_ms"] == pytest.approx((param_bytes + expected) / 10e9 * 1e3, rel=1e-12)
        k = TOKENS // 10
        s = by_model[name]
        assert s["floor_first_ms"] == sorted(r["floor_ms"] for r in rows[name][:k])[k // 2]
        assert s["floor_last_ms"] == sorted(r["floor_ms"] for r in rows[name][-k:])[k // 2]
        assert s["x_floor_first"] == pytest.approx(s["first10_ms"] / s["floor_first_ms"])
        assert s["x_floor_last"] == pytest.approx(s["last10_ms"] / s["floor_last_ms"])
    assert by_model["gpt"]["floor_last_ms"] > by_model["gpt"]["floor_first_ms"]  # the cache grows
    assert by_model["rwkv"]["floor_last_ms"] == by_model["rwkv"]["floor_first_ms"]
    table = (tmp_path / "out" / "summary.txt").read_text().splitlines()[2:]
    assert "floor ms first->last" in table[0] and "x floor first->last" in table[0]
    assert float(table[1].split()[-6]) == pytest.approx(by_model["rwkv"]["floor_first_ms"], abs=1e-4)


def test_measured_bandwidth_is_reported(tmp_path, capsys):
    assert bench.measure_bandwidth(torch.device("cpu"), mb=4) > 0
    _, summary, rows = run(tmp_path, "--models", "rwkv", "--max_new_tokens", "4")
    assert "memory bandwidth: " in capsys.readouterr().out
    assert summary["bandwidth_GBps"] > 0 and "copy of 8 MiB" in summary["bandwidth_source"]
    assert all(r["floor_ms"] > 0 for r in rows["rwkv"])


def test_config_file_microrwkv_without_gqa_is_constant(tmp_path):
    # a train.py config: non-model keys are ignored, it may exec a sibling through __file__ (as
    # config/train_gpt_tinystories_cpu.py does), and --n_embd / --n_layer on the command line win over it
    (tmp_path / "base.py").write_text("batch_size = 8\nuse_gqa = False\nwindow_size = 16\nn_embd = 128\n")
    config = tmp_path / "cfg.py"
    config.write_text("import os\nexec(open(os.path.join(os.path.dirname(__file__), 'base.py')).read())\n"
                      "n_layer = 1\n")
    _, summary, rows = run(tmp_path, "--models", "microrwkv", "--config", str(config))
    assert summary["arch"]["use_gqa"] is False and summary["arch"]["window_size"] == 16
    assert summary["arch"]["n_layer"] == N_LAYER and summary["arch"]["n_embd"] == N_EMBD  # flags win
    sizes = {r["state_bytes"] for r in rows["microrwkv"]}
    assert len(sizes) == 1 and sizes.pop() > 0


def test_ckpt_architecture_and_time_budget(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": {}, "model_args": {"n_layer": 1, "n_embd": 64, "n_head": 2, "vocab_size": 300,
                                            "block_size": 32, "model_type": "gpt", "head_size": 32}}, ckpt)
    out = tmp_path / "out"
    bench.main(["--quick", "--models", "rwkv,gpt-nocache", "--ckpt", str(ckpt), "--max_new_tokens", "40",
                "--prompt_len", "4", "--time_budget", "1e-9", "--out_dir", str(out), "--plot", str(tmp_path / "b.png")])
    summary = json.loads((out / "summary.json").read_text())
    arch = summary["arch"]
    assert (arch["n_layer"], arch["n_embd"], arch["n_head"], arch["vocab_size"], arch["head_size"]) == (1, 64, 2, 300, 32)
    assert "model_type" not in arch and "block_size" not in arch  # set per model by the benchmark
    for s in summary["models"]:  # the budget stops every model after its first token, and says so
        assert s["tokens"] == 1 and s["stopped"] == "time_budget"


def test_hf_model_from_local_config(tmp_path):
    import transformers  # a requirement: missing, it is a failure, not a skip
    hf_dir = tmp_path / "tiny-gpt2"
    # n_positions below the run's length: the benchmark raises it (random weights anyway)
    transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32).save_pretrained(hf_dir)
    _, summary, rows = run(tmp_path, "--models", "", "--hf_model", str(hf_dir))
    assert [s["model"] for s in summary["models"]] == ["hf"] and summary["hf_model"] == str(hf_dir)
    assert len(rows["hf"]) == TOKENS
    per_token = 2 * 1 * 32 * FLOAT32  # GPT-2's past keys and values, 1 layer, width 32
    assert all(r["state_bytes"] == per_token * r["pos"] for r in rows["hf"])


def test_hf_model_without_transformers(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(SystemExit, match="needs the transformers package"):
        run(tmp_path, "--models", "", "--hf_model", str(tmp_path))


@pytest.mark.parametrize("args", [["--models", "rwkv,mamba"], ["--models", ""], ["--max_new_tokens", "0"],
                                  ["--bandwidth", "0"]])
def test_bad_arguments(tmp_path, args):
    with pytest.raises(SystemExit):
        run(tmp_path, *args)


@pytest.mark.parametrize("flag, path, message", [("--out_dir", "f", "is a file, not a directory"),
                                                 ("--plot", "/proc/b.png", "cannot write in /proc")])
def test_unwritable_output_fails_before_the_benchmark(tmp_path, capsys, monkeypatch, flag, path, message):
    (tmp_path / "f").write_text("a file")
    monkeypatch.setattr(bench, "measure_bandwidth", lambda *a: pytest.fail("the benchmark started"))
    with pytest.raises(SystemExit) as e:
        run(tmp_path, flag, str(tmp_path / path) if path == "f" else path)
    assert e.value.code != 0 and f"error: {flag} " in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def assets_snapshot():
    return {p.name: p.stat().st_mtime_ns for p in (ROOT / "assets").iterdir()}


def test_inference_default_paths_are_under_out(tmp_path, monkeypatch):
    before = assets_snapshot()
    monkeypatch.chdir(tmp_path)
    bench.main([*TINY, "--models", "rwkv", "--max_new_tokens", "4"])
    out = tmp_path / "out" / "benchmark"
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"rwkv.jsonl", "summary.txt", "summary.json"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]  # temp files renamed away
    umask = os.umask(0)
    os.umask(umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == dict.fromkeys(  # not mkstemp's 0600
        ["benchmark.png", "rwkv.jsonl", "summary.txt", "summary.json"], 0o666 & ~umask)
    assert not (tmp_path / "assets").exists() and assets_snapshot() == before


def decoded_state(overrides, steps=5, prompt=12):
    """The state of a tiny model after prefilling a prompt and decoding `steps` tokens one at a time."""
    layout = {k: bench.DEFAULTS[k] for k in ("rwkv_version", "use_swa", "use_gqa", "use_moe")}  # the benchmark's
    config = GPTConfig(**{**layout, **overrides}, n_layer=2, n_embd=64, n_head=4, vocab_size=256, block_size=64,
                       window_size=8)
    model = build_model(config).eval()
    with torch.no_grad():
        logits, state = model.forward_with_state(torch.randint(0, 256, (1, prompt)))
        prefill = bench.state_memory(state)
        for _ in range(steps):
            logits, state = model.forward_with_state(logits[:, -1:].argmax(-1), state)
    return prefill, bench.state_memory(state)


@pytest.mark.parametrize("name", ["gpt", "microrwkv"])
def test_attention_state_allocated_at_least_logical(name):
    (pre_logical, pre_alloc), (logical, allocated) = decoded_state(bench.MODELS[name])
    assert pre_alloc >= pre_logical > 0
    assert allocated >= logical > pre_logical  # KV caches grew; their buffers keep spare room


def test_pure_rwkv_state_owns_exactly_its_memory():
    # holds once every state tensor is its own tensor, not a view of the prefill's (B, T, C) activations
    (pre_logical, pre_alloc), (logical, allocated) = decoded_state(bench.MODELS["rwkv"])
    assert pre_alloc == pre_logical > 0
    assert allocated == logical == pre_logical


def test_state_alloc_bytes_dedupes_shared_storage():
    buffer = torch.zeros(10, 4)
    state = [(buffer[:2], buffer[5:]), {"x": buffer}, torch.ones(3), 7]
    assert bench.state_bytes(state) == (8 + 20 + 40 + 3) * 4
    assert bench.state_alloc_bytes(state) == (40 + 3) * 4


# ----------------------------------------------------------------------------------------------------
# benchmark_training.py

TRAIN_MODELS = list(benchmark_training.MODELS)
TRAIN_TINY = ["--n_layer", "1", "--n_embd", "64", "--n_head", "2", "--vocab_size", "256", "--seq_lens", "32",
              "--tokens_per_step", "64", "--steps", "1", "--warmup", "1", "--repeats", "3", "--threads", "1"]


def test_training_benchmark_tables(tmp_path, monkeypatch, capsys):
    before = assets_snapshot()
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench" / "train.txt"
    assert benchmark_training.main([*TRAIN_TINY, "--models", ",".join(TRAIN_MODELS), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    text = out.read_text()
    assert text in printed and text.startswith("python benchmark_training.py --n_layer 1")
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["command"] == text.splitlines()[0] and data["repeats"] == 3
    # nothing else written: not under the working directory's out/ or assets/, nor the repository's assets/
    assert sorted(p.name for p in out.parent.iterdir()) == ["train.json", "train.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"] and assets_snapshot() == before

    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["T", "model"])
    rows = {}
    for line in lines[head + 1:]:
        if not line.strip():
            break
        T, model, params, batch, median, lo, hi, ratio, gflops, step_ms = line.split()
        rows[model] = (int(T), float(median), float(lo), float(hi), ratio, gflops)
    assert list(rows) == TRAIN_MODELS  # one row per model, in the order asked
    has_flops = hasattr(build_model(GPTConfig(model_type="gpt", n_layer=1, n_embd=64, n_head=2)), "flops_per_token")
    for model, (T, median, lo, hi, ratio, gflops) in rows.items():
        assert T == 32 and 0 < lo <= median <= hi
        assert re.fullmatch(r"\d+\.\d\dx", ratio)
        assert float(gflops) > 0 if has_flops else gflops == "-"  # '-' until model.py has flops_per_token
    assert rows["gpt"][4] == "1.00x"

    results = {r["model"]: r for r in data["results"]}
    for model, r in results.items():
        tps = r["tokens_per_s"]
        assert len(tps["runs"]) == 3 and tps["min"] <= tps["median"] <= tps["max"]
        assert f"{tps['median']:.0f}" == f"{rows[model][1]:.0f}"
        b = r["breakdown"]
        parts = b["parts"]
        assert "head+loss" in parts and "optimizer" in parts and "other" in parts
        assert sum(p["pct"] for p in parts.values()) == pytest.approx(100.0)
        named = sum(p["ms"] for name, p in parts.items() if name != "other")
        assert all(p["ms"] >= 0 for name, p in parts.items() if name != "other")
        assert named <= b["step_ms"] * 1.001  # the measured parts fit inside the step
        for p in parts.values():
            if p["fwd_ms"] is not None:
                assert p["ms"] == pytest.approx(p["fwd_ms"] + p["bwd_ms"])
    expected = {"gpt": {"embedding", "attention", "MLP"}, "rwkv": {"embedding", "TimeMix", "ChannelMix"},
                "microrwkv": {"embedding", "TimeMix", "ChannelMix", "SWA", "GQA", "MoE"}}
    for model, names in expected.items():
        assert names <= set(results[model]["breakdown"]["parts"])
    assert not {"TimeMix", "SWA", "GQA", "MoE"} & set(results["gpt"]["breakdown"]["parts"])
    # the printed breakdown: one row per part and a 'step' row per model, percentages summing to ~100
    breakdown = lines[next(i for i, line in enumerate(lines[head + 1:], head + 1) if "part" in line.split()) + 1:]
    pct = {}
    for line in breakdown:
        fields = line.split()
        if fields[2] != "step":
            pct[fields[1]] = pct.get(fields[1], 0.0) + float(fields[-1].rstrip("%"))
    assert set(pct) == set(TRAIN_MODELS) and all(v == pytest.approx(100.0, abs=0.5) for v in pct.values())


def test_training_benchmark_json_path_and_top2(tmp_path):
    out, js = tmp_path / "t.txt", tmp_path / "sub" / "numbers.json"
    benchmark_training.main([*TRAIN_TINY, "--models", "microrwkv-top2", "--out", str(out), "--out_json", str(js),
                             "--repeats", "1"])
    assert out.exists() and json.loads(js.read_text())["results"][0]["model"] == "microrwkv-top2"
    model = build_model(GPTConfig(**benchmark_training.MODELS["microrwkv-top2"], n_layer=1, n_embd=64, n_head=2))
    moe = model.blocks[0].moe
    assert (moe.num_experts, moe.num_active) == (4, 2) and model.blocks[0].swa.window_size == 256


def test_training_benchmark_models_take_turns(tmp_path, monkeypatch):
    """The timed runs interleave: run 1 of every model at a length, then run 2, ..., then the next length."""
    order = []
    timed_run = benchmark_training.Run.timed_run
    monkeypatch.setattr(benchmark_training.Run, "timed_run",
                        lambda self, *a: (order.append((self.seq_len, self.name)), timed_run(self, *a)))
    benchmark_training.main([*TRAIN_TINY, "--models", "rwkv,gpt", "--seq_lens", "16", "32", "--repeats", "2",
                             "--out", str(tmp_path / "t.txt")])
    assert order == [(T, name) for T in (16, 32) for _ in range(2) for name in ("rwkv", "gpt")]


@pytest.mark.parametrize("args, message", [
    (["--compile", "--warmup", "0"], "--compile needs --warmup >= 1"),
    (["--models", "rwkv,mamba"], "choose one or more of"),
    (["--models", ""], "choose one or more of"),
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--n_embd", "48"], "bad model config"),
    (["--seq_lens", "16", "--tokens_per_step", "8"], "--tokens_per_step 8 is less than --seq_lens 16"),
    (["--out", "/proc/t.txt"], "--out /proc/t.txt: cannot write in /proc"),
])
def test_training_benchmark_bad_arguments(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        benchmark_training.main([*TRAIN_TINY, "--out", str(tmp_path / "t.txt"), *args])
    assert e.value.code != 0 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())

