"""benchmark_inference_time.py on tiny models: outputs exist and parse, and the state / KV-cache bytes grow
exactly as the architectures say (constant for RWKV, linear for attention caches). No timing assertions."""
import json

import pytest
import torch

import benchmark_inference_time as bench

N_LAYER, N_EMBD, N_HEAD, VOCAB, TOKENS, PROMPT = 2, 64, 4, 512, 64, 8
TINY = ["--n_layer", str(N_LAYER), "--n_embd", str(N_EMBD), "--n_head", str(N_HEAD), "--vocab_size", str(VOCAB),
        "--max_new_tokens", str(TOKENS), "--prompt_len", str(PROMPT), "--quick"]
FLOAT32 = 4


def run(tmp_path, *args):
    out = tmp_path / "out"
    bench.main([*TINY, "--out_dir", str(out), "--plot", str(tmp_path / "bench.png"), *args])
    summary = json.loads((out / "summary.json").read_text())
    rows = {s["model"]: [json.loads(line) for line in (out / f"{s['model']}.jsonl").read_text().splitlines()]
            for s in summary["models"]}
    return out, summary, rows


def test_all_models_outputs_and_state_bytes(tmp_path):
    out, summary, rows = run(tmp_path)
    names = ["microrwkv", "rwkv", "gpt", "gpt-nocache"]
    assert [s["model"] for s in summary["models"]] == names
    assert summary["arch"]["n_layer"] == N_LAYER and summary["arch"]["n_embd"] == N_EMBD
    for name in names:
        assert len(rows[name]) == TOKENS
        for i, r in enumerate(rows[name]):
            assert {"model", "i", "pos", "latency_ms", "cum_s", "state_bytes", "rss_bytes"} <= r.keys()
            assert r["model"] == name and r["i"] == i and r["pos"] == PROMPT + i + 1
            assert r["latency_ms"] > 0 and r["rss_bytes"] > 0
        cum = [r["cum_s"] for r in rows[name]]
        assert cum == sorted(cum)
    png = (tmp_path / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    # pure RWKV: per layer, TimeMix's (x_prev, H x N x N float32 state) and ChannelMix's x_prev; never grows
    head_size = 64
    rwkv = N_LAYER * (2 * N_EMBD + (N_EMBD // head_size) * head_size * head_size) * FLOAT32
    assert all(r["state_bytes"] == rwkv for r in rows["rwkv"])
    # GPT: K and V of every past token in every layer, exactly
    gpt_per_token = 2 * N_LAYER * N_EMBD * FLOAT32
    assert all(r["state_bytes"] == gpt_per_token * r["pos"] for r in rows["gpt"])
    assert all(r["state_bytes"] == 0 for r in rows["gpt-nocache"])  # keeps nothing between tokens
    # full MicroRWKV: RWKV + a fixed SWA window + a GQA cache growing n_head / n_kv_head times slower than GPT's
    n_kv_head, window = 2, 256
    gqa_per_token = 2 * N_LAYER * n_kv_head * (N_EMBD // N_HEAD) * FLOAT32
    swa = 2 * N_LAYER * (window - 1) * N_EMBD * FLOAT32
    assert all(r["state_bytes"] == rwkv + swa + gqa_per_token * r["pos"] for r in rows["microrwkv"])

    by_model = {s["model"]: s for s in summary["models"]}
    assert by_model["rwkv"]["state_first_MiB"] == by_model["rwkv"]["state_last_MiB"]
    assert by_model["gpt"]["state_last_MiB"] > by_model["gpt"]["state_first_MiB"]
    for s in summary["models"]:
        assert s["tokens"] == TOKENS and s["stopped"] == "-"
        assert s["ratio"] == pytest.approx(s["last10_ms"] / s["first10_ms"]) and s["tokens_per_s"] > 0
    # the printed table: a header and one row per model, in the same order, beside the exact command
    text = (out / "summary.txt").read_text().splitlines()
    assert text[0].startswith("python benchmark_inference_time.py --n_layer 2")
    table = text[2:]
    assert table[0].split()[:3] == ["model", "params", "tokens"]
    assert [line.split()[0] for line in table[1:]] == names
    assert int(table[2].split()[2]) == TOKENS


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
    torch.save({"model_args": {"n_layer": 1, "n_embd": 64, "n_head": 2, "vocab_size": 300, "block_size": 32,
                               "model_type": "gpt", "head_size": 32}}, ckpt)
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
    transformers = pytest.importorskip("transformers")
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


@pytest.mark.parametrize("args", [["--models", "rwkv,mamba"], ["--models", ""], ["--max_new_tokens", "0"]])
def test_bad_arguments(tmp_path, args):
    with pytest.raises(SystemExit):
        run(tmp_path, *args)
