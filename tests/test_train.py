"""train.py end to end, offline: tiny models for a few dozen steps on the first 300 stories of the shared sample.

Every run is a subprocess (`python train.py --key=value ...`), as a user would start it; a few runs go
through a small driver that patches torch.save / torch.load / the model first, to simulate a crash
during a save or a diverging loss.
"""
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from configurator import apply_config

from conftest import ROOT, SAMPLE

# a tiny MicroRWKV with every sub-layer (TimeMix, ChannelMix, SWA, GQA, top-1-of-2 MoE), CPU float32
TINY = ["--n_layer=1", "--n_embd=32", "--n_head=2", "--n_kv_head=1", "--head_size=16", "--block_size=32",
        "--window_size=16", "--chunk_len=16", "--num_experts=2", "--num_active_experts=1", "--expert_dim=32",
        "--batch_size=4", "--learning_rate=1e-2", "--min_lr=1e-3", "--warmup_iters=2", "--eval_iters=2",
        "--log_interval=1", "--num_threads=1", "--device=cpu", "--dtype=float32", "--compile=False", "--seed=7", "--beta2=0.99",
        "--rwkv_version=x051a", "--use_swa=True", "--use_gqa=True", "--use_moe=True"]  # every block
LOG_LINE = re.compile(r"^iter (\d+): loss [\d.]+, aux [\d.]+, lr [\d.e+-]+, time [\d.]+ ms, tok/s [\d,]+, "
                      r"[\d.]+ TFLOP/s(?:, mfu [\d.]+%)?$", re.M)

# patches applied before train.py runs (selected by environment variables), then train.py as __main__
DRIVER = textwrap.dedent("""
    import os, runpy, signal, sys
    import torch
    kill_at = int(os.environ.get("KILL_AT_SAVE", "0"))
    if kill_at:
        real_save, saves = torch.save, [0]
        def dying_save(obj, f, *args, **kwargs):
            saves[0] += 1
            if saves[0] == kill_at:  # write part of the file, then die as a crash would
                f.write(b"PK\\x03\\x04 half a checkpoint")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *args, **kwargs)
        torch.save = dying_save
    if os.environ.get("SPY_LOAD"):
        real_load = torch.load
        def spy_load(*args, **kwargs):
            print("torch.load weights_only=%r" % (kwargs.get("weights_only"),), flush=True)
            return real_load(*args, **kwargs)
        torch.load = spy_load
    nan_at = int(os.environ.get("NAN_AT_STEP", "0"))
    if nan_at:
        import model
        real_build = model.build_model
        def build_model(config):
            m = real_build(config)
            forward, calls = m.forward, [0]
            def nan_forward(idx, targets=None, return_aux_loss=False):
                out = forward(idx, targets, return_aux_loss)
                if m.training and targets is not None:
                    calls[0] += 1
                    if calls[0] >= nan_at:
                        out = (out[0], out[1] * float("nan"), *out[2:])
                return out
            m.forward = nan_forward
            return m
        model.build_model = build_model
    sys.argv = ["train.py", *sys.argv[1:]]
    runpy.run_path("train.py", run_name="__main__")
""")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    # CI must run these: a missing ../shared is a failure, not a skip
    assert SAMPLE.exists(), f"the shared TinyStories sample is missing: {SAMPLE} (see ../shared/README.md)"
    out = tmp_path_factory.mktemp("data") / "tinystories_300"
    subprocess.run([sys.executable, "prepare_tinystories.py", "--source", str(SAMPLE), "--num_stories", "300",
                    "--out_dir", str(out), "--num_proc", "1"], cwd=ROOT, check=True, capture_output=True, timeout=300)
    return out


def train(out_dir, data_dir, *args, driver=None, env=None, check=True):
    cmd = [sys.executable, "-c", DRIVER] if driver else [sys.executable, "train.py"]
    cmd += [*TINY, f"--data_dir={data_dir}", f"--out_dir={out_dir}", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def metrics(out_dir):
    rows = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = {r["iter"]: r["train_loss"] for r in rows if "train_loss" in r}
    evals = {r["iter"]: r["eval_val"] for r in rows if "eval_val" in r}
    return rows, steps, evals


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("model_type", ["microrwkv", "gpt"])
def test_tiny_model_learns(model_type, data_dir, tmp_path):
    out = tmp_path / "out"
    proc = train(out, data_dir, f"--model_type={model_type}", "--max_iters=40", "--lr_decay_iters=40",
                 "--eval_interval=20", "--ckpt_interval=20")
    assert [int(i) for i in LOG_LINE.findall(proc.stdout)] == list(range(1, 41))
    _, steps, evals = metrics(out)
    assert sorted(steps) == list(range(1, 41)) and sorted(evals) == [0, 20, 40]
    ln_vocab = math.log(50304)
    assert abs(evals[0] - ln_vocab) < 0.5  # starts near uniform
    assert evals[40] < ln_vocab - 3.5, evals  # and learns well below it
    assert sum(steps[i] for i in range(36, 41)) / 5 < ln_vocab - 3.5, steps

    assert sorted(p.name for p in out.glob("*.pt")) == ["ckpt-20.pt", "ckpt-40.pt", "ckpt.pt"]
    ckpt = load(out / "ckpt.pt")  # loadable with weights_only=True
    for key in ("model", "optimizer", "model_args", "iter_num", "best_val_loss", "config", "rng_state"):
        assert key in ckpt, key
    assert ckpt["iter_num"] == 40 and ckpt["best_val_loss"] == pytest.approx(evals[40])
    from model import GPTConfig, build_model
    assert set(ckpt["model_args"]) == {f.name for f in dataclasses.fields(GPTConfig)}
    assert ckpt["model_args"]["model_type"] == model_type and ckpt["config"]["max_iters"] == 40
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
    model = build_model(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])  # a sampler can rebuild the model from the checkpoint alone
    assert isinstance(ckpt["rng_state"], torch.Tensor) and ckpt["rng_state"].dtype == torch.uint8


@pytest.fixture(scope="module")
def resumed(data_dir, tmp_path_factory):
    """An uninterrupted 12-step run, and the same run stopped after 6 steps and resumed from ckpt-6."""
    base = tmp_path_factory.mktemp("resume")
    common = ["--lr_decay_iters=12", "--eval_interval=4", "--ckpt_interval=6"]
    train(base / "full", data_dir, "--max_iters=12", *common)
    train(base / "split", data_dir, "--max_iters=6", *common)
    (base / "split" / "ckpt.pt").unlink()  # resume must really come from ckpt-6
    train(base / "split", data_dir, "--max_iters=12", "--init_from=resume", "--resume_ckpt=ckpt-6", *common)
    return base / "full", base / "split"


def test_resume_reproduces_the_uninterrupted_run(resumed):
    full, split = resumed
    _, full_steps, full_evals = metrics(full)
    rows, split_steps, split_evals = metrics(split)
    assert sorted(split_steps) == list(range(1, 13))  # appended, no duplicates
    for i in range(1, 13):
        assert split_steps[i] == pytest.approx(full_steps[i], abs=1e-5), (i, split_steps[i], full_steps[i])
    for i in (8, 12):
        assert split_evals[i] == pytest.approx(full_evals[i], abs=1e-5)
    a, b = load(full / "ckpt-12.pt"), load(split / "ckpt-12.pt")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-5, rtol=0)
    assert torch.equal(a["rng_state"], b["rng_state"])


def test_eval_only_evaluates_and_exits(resumed, data_dir):
    full, _ = resumed
    before = {p.name: p.stat().st_mtime_ns for p in full.iterdir()}
    proc = train(full, data_dir, "--init_from=resume", "--eval_only=True", "--max_iters=12")
    m = re.search(r"step 12: train loss ([\d.]+), val loss ([\d.]+)", proc.stdout)
    assert m, proc.stdout
    assert float(m.group(2)) == pytest.approx(metrics(full)[2][12], abs=1e-4)  # the same eval batches
    assert not LOG_LINE.search(proc.stdout)  # no training step
    assert {p.name: p.stat().st_mtime_ns for p in full.iterdir()} == before  # nothing written


def test_plot_metrics(resumed, tmp_path, monkeypatch):
    """The plot of a real run and its resumed twin draws the val losses train.py logged, at their token counts."""
    import plot_metrics
    full, split = resumed
    png = tmp_path / "assets" / "loss.png"
    figures = []
    save = plot_metrics.save_figure
    monkeypatch.setattr(plot_metrics, "save_figure", lambda fig, path, **kw: (figures.append(fig), save(fig, path, **kw)))
    assert plot_metrics.main([str(full), str(split), "--labels", "full", "resumed", "--out", str(png), "--x", "tokens"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    lines = {line.get_label(): line for line in figures[0].axes[0].get_lines()}
    for label, run in (("full", full), ("resumed", split)):
        rows, _, evals = metrics(run)
        tokens = {r["iter"]: r["tokens"] for r in rows if "eval_val" in r}
        assert list(lines[f"{label} val"].get_xdata()) == [tokens[i] for i in sorted(evals)]
        assert list(lines[f"{label} val"].get_ydata()) == pytest.approx([evals[i] for i in sorted(evals)])


def test_kill_during_save_keeps_previous_checkpoint(data_dir, tmp_path):
    out = tmp_path / "out"
    args = ["--max_iters=12", "--lr_decay_iters=12", "--eval_interval=100", "--ckpt_interval=4"]
    # saves: ckpt.pt and ckpt-4.pt at step 4, then the process dies while writing ckpt.pt at step 8
    proc = train(out, data_dir, *args, driver=True, env={"KILL_AT_SAVE": "3"}, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (out / "ckpt.pt.tmp").exists()  # the torn file
    assert load(out / "ckpt.pt")["iter_num"] == 4  # the previous checkpoint is intact
    assert not (out / "ckpt-8.pt").exists()
    # and the run resumes from it (loading with weights_only=True)
    proc = train(out, data_dir, *args, "--init_from=resume", driver=True, env={"SPY_LOAD": "1"})
    loads = re.findall(r"torch.load weights_only=(\w+)", proc.stdout)
    assert loads and set(loads) == {"True"}
    assert load(out / "ckpt.pt")["iter_num"] == 12 and not (out / "ckpt.pt.tmp").exists()
    assert sorted(metrics(out)[1]) == list(range(1, 13))


def test_interrupted_save_removes_its_temp_file(tmp_path, monkeypatch):
    """Ctrl-C (or an error) mid-save: the previous checkpoint stays, and no 40 MB ckpt.pt.tmp is left behind."""
    import checkpoint
    path = str(tmp_path / "ckpt.pt")
    checkpoint.save_checkpoint(path, {"iter_num": 1})

    def interrupted(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 part of a checkpoint")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(path, {"iter_num": 2})
    assert os.listdir(tmp_path) == ["ckpt.pt"] and load(path)["iter_num"] == 1


def test_non_finite_loss_stops_and_keeps_checkpoints(data_dir, tmp_path):
    out = tmp_path / "out"
    proc = train(out, data_dir, "--max_iters=12", "--eval_interval=100", "--ckpt_interval=3", driver=True,
                 env={"NAN_AT_STEP": "5"}, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"error: non-finite loss at iter 5; last good checkpoint: {out / 'ckpt-3.pt'}"
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.glob("*.pt*")) == ["ckpt-3.pt", "ckpt.pt"]
    ckpt = load(out / "ckpt.pt")
    assert ckpt["iter_num"] == 3 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert max(metrics(out)[1]) == 4  # step 5 was not logged as a train loss


def test_missing_data_is_a_one_line_error(tmp_path):
    proc = train(tmp_path / "out", tmp_path / "no_data", "--max_iters=2", check=False)
    assert proc.returncode != 0
    assert proc.stderr.startswith(f"error: no prepared dataset in {tmp_path / 'no_data'}")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # no empty out_dir left behind


def test_wandb_missing_is_a_clear_error(data_dir, tmp_path):
    hide = tmp_path / "hide"  # a wandb package that fails to import, first on the path
    (hide / "wandb").mkdir(parents=True)
    (hide / "wandb" / "__init__.py").write_text("raise ImportError('no wandb here')\n")
    proc = train(tmp_path / "out", data_dir, "--max_iters=2", "--wandb_log=True", check=False,
                 env={"PYTHONPATH": str(hide)})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: wandb_log=True but wandb is not installed (pip install wandb), or run with --wandb_log=False"


def torchrun(out, data_dir, *args, nproc=2):
    cmd = ["torchrun", "--standalone", f"--nproc_per_node={nproc}", "train.py", *TINY, f"--data_dir={data_dir}",
           f"--out_dir={out}", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


DDP_ARGS = ["--lr_decay_iters=6", "--eval_interval=3", "--ckpt_interval=3", "--gradient_accumulation_steps=2"]


def test_ddp_on_cpu_matches_one_process_on_the_same_global_batch(data_dir, tmp_path):
    """torchrun with two CPU processes (gloo), one micro-step each, against one process doing both
    micro-steps: the training batches depend only on the seed, so the logged training losses (means over
    the global batch) agree up to the order of floating-point sums. (Evaluation batches are batch_size
    windows per process, so the evaluated sets differ with the number of processes.)"""
    assert shutil.which("torchrun"), "torchrun is installed with torch"
    proc = torchrun(tmp_path / "ddp", data_dir, "--max_iters=6", *DDP_ARGS)
    assert "tokens per iteration will be: 256" in proc.stdout  # 2 ranks x 1 micro-step x 4 x 32
    assert len(LOG_LINE.findall(proc.stdout)) == 6  # only rank 0 logs
    ckpt = load(tmp_path / "ddp" / "ckpt-6.pt")
    assert ckpt["iter_num"] == 6 and ckpt["rng_state"].shape[0] == 2  # each rank's sampler state
    assert ckpt["torch_rng_state"].shape[0] == 2 and not torch.equal(*ckpt["torch_rng_state"])  # and dropout's
    assert not any(k.startswith("module.") for k in ckpt["model"])
    train(tmp_path / "one", data_dir, "--max_iters=6", *DDP_ARGS)
    _, ddp_steps, _ = metrics(tmp_path / "ddp")
    _, one_steps, _ = metrics(tmp_path / "one")
    assert sorted(ddp_steps) == sorted(one_steps) == list(range(1, 7))
    for i in range(1, 7):
        assert ddp_steps[i] == pytest.approx(one_steps[i], abs=1e-5), (i, ddp_steps, one_steps)


def test_ddp_resume_with_dropout_reproduces_the_uninterrupted_run(data_dir, tmp_path):
    """Each rank's dropout RNG is checkpointed and restored, not only rank 0's."""
    args = [*DDP_ARGS, "--dropout=0.2"]
    torchrun(tmp_path / "full", data_dir, "--max_iters=6", *args)
    torchrun(tmp_path / "split", data_dir, "--max_iters=3", *args)
    torchrun(tmp_path / "split", data_dir, "--max_iters=6", "--init_from=resume", "--resume_ckpt=ckpt-3", *args)
    _, full, _ = metrics(tmp_path / "full")
    _, split, _ = metrics(tmp_path / "split")
    assert sorted(split) == list(range(1, 7))
    for i in range(4, 7):
        assert split[i] == pytest.approx(full[i], abs=1e-5), (i, split, full)


def test_init_from_pretrained_gpt2_dir(data_dir, tmp_path):
    """init_from=<save_pretrained() directory>: a (tiny, random) GPT-2 is evaluated, fine-tuned with its
    position embedding cropped to block_size, and checkpointed so that model.py alone can rebuild it."""
    import transformers  # a requirement: missing, it is a failure, not a skip
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50257, n_positions=64)
    hf_dir = tmp_path / "gpt2-tiny"
    transformers.GPT2LMHeadModel(hf_config).save_pretrained(hf_dir)
    out = tmp_path / "out"
    proc = train(out, data_dir, f"--init_from={hf_dir}", "--model_type=gpt", "--max_iters=2", "--lr_decay_iters=2",
                 "--eval_interval=2", "--ckpt_interval=2")
    assert f"Initializing from pretrained weights: {hf_dir}" in proc.stdout
    evals = metrics(out)[2]
    assert abs(evals[0] - math.log(50257)) < 0.5  # the random GPT-2 starts near uniform
    ckpt = load(out / "ckpt-2.pt")
    args = ckpt["model_args"]
    assert (args["model_type"], args["n_layer"], args["n_embd"], args["vocab_size"], args["bias"]) == ("gpt", 1, 32, 50257, True)
    assert args["block_size"] == 32 and ckpt["model"]["wpe.weight"].shape == (32, 32)  # cropped from 64
    from model import GPTConfig, build_model
    build_model(GPTConfig(**args)).load_state_dict(ckpt["model"])


def test_reported_losses_are_cross_entropy_without_the_aux_loss(data_dir, tmp_path):
    """The same initial model under two aux-loss weights: the objective differs, the reported losses
    (step 1's training loss, the evaluation before any step) must not."""
    rows = {}
    for w in (0.0, 5.0):
        out = tmp_path / f"aux{w}"
        train(out, data_dir, "--max_iters=1", "--eval_interval=1", f"--aux_loss_weight={w}")
        rows[w] = metrics(out)[0]
    step = {w: next(r for r in rows[w] if "train_loss" in r) for w in rows}
    first_eval = {w: next(r for r in rows[w] if "eval_val" in r and r["iter"] == 0) for w in rows}
    assert step[5.0]["aux_loss"] > 0.9  # the aux loss is logged in its own column (1 = balanced)
    assert step[5.0]["train_loss"] == pytest.approx(step[0.0]["train_loss"], abs=1e-5)
    assert first_eval[5.0]["eval_val"] == pytest.approx(first_eval[0.0]["eval_val"], abs=1e-5)


@pytest.mark.parametrize("content, message", [(b"PK\x03\x04 not really a checkpoint", "is not a MicroRWKV checkpoint ("),
                                              (b"", "is empty (0 bytes), not a MicroRWKV checkpoint")])
def test_corrupt_checkpoint_on_resume_is_a_one_line_error(data_dir, tmp_path, content, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "ckpt.pt").write_bytes(content)
    proc = train(out, data_dir, "--max_iters=2", "--init_from=resume", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith(f"error: {out / 'ckpt.pt'} {message}")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_resume_with_another_optimizer_layout_is_a_one_line_error(resumed, data_dir):
    full, _ = resumed  # trained with weight_decay_time=False: time_faaaa sits in the no-decay group
    proc = train(full, data_dir, "--init_from=resume", "--max_iters=13", "--weight_decay_time=True", check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"error: {full / 'ckpt.pt'}: its optimizer state does not fit this run's parameter groups; resume with "
        "--weight_decay_time=False")


def test_resume_notes_a_model_type_given_but_ignored(data_dir, tmp_path):
    train(tmp_path, data_dir, "--model_type=gpt", "--max_iters=1", "--eval_interval=1")
    proc = train(tmp_path, data_dir, "--model_type=microrwkv", "--init_from=resume", "--max_iters=1")
    assert "note: model_type='microrwkv' ignored, the checkpoint has 'gpt'" in proc.stdout


@pytest.mark.parametrize("arg, message", [
    ("--grad_clip=-1", "grad_clip must be >= 0 (0: no clipping), got -1.0"),
    ("--learning_rate=-1", "learning_rate must be > 0, got -1.0"),
    ("--beta1=1.5", "beta1 must be in [0, 1), got 1.5"),
    ("--weight_decay=-0.1", "weight_decay must be >= 0, got -0.1"),
    ("--warmup_iters=-1", "warmup_iters must be >= 0, got -1"),
    ("--min_lr=0.1", "min_lr (0.1) must be <= learning_rate (0.01), e.g. --min_lr=0.001"),
    ("--device=gpu", "device='gpu' is not a torch device; use 'cpu', 'cuda'"),
    ("--device=cuda", "device='cuda' but CUDA is not available; use --device=cpu"),
])
def test_bad_optimizer_setting_or_device_is_a_one_line_error(arg, message, data_dir, tmp_path):
    if "cuda" in arg and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")  # CI's machines have none
    proc = train(tmp_path / "out", data_dir, "--max_iters=2", arg, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith(f"error: {message}"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_out_dir_that_is_a_file_is_a_one_line_error(data_dir, tmp_path):
    (tmp_path / "o").write_text("a file")
    proc = train(tmp_path / "o", data_dir, "--max_iters=2", check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"error: out_dir='{tmp_path / 'o'}': {tmp_path / 'o'} is a file, not a directory; choose another out_dir")


@pytest.mark.parametrize("args, needle", [
    (["--n_embd=100", "--head_size=64"], "head_size=64"),
    (["--n_head=4", "--n_kv_head=3"], "n_kv_head=3"),
    (["--num_active_experts=3"], "num_active_experts=3"),
    (["--window_size=0"], "window_size=0"),
])
def test_impossible_architecture_is_a_one_line_error(args, needle, tmp_path):
    proc = subprocess.run([sys.executable, "train.py", *TINY, *args, f"--out_dir={tmp_path / 'out'}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: bad model config:") and needle in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def wandb_history(run_file):
    """The history rows of an offline W&B run file: a LevelDB-style log (32 KiB blocks, 7-byte record headers
    after a 7-byte file header) of protobuf Records. wandb itself ships no reader for it."""
    import struct

    from wandb.proto import wandb_internal_pb2
    data, pos, piece, rows = run_file.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        piece += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(piece)
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
            piece = b""
    return rows


def test_wandb_offline_run_holds_the_logged_losses(data_dir, tmp_path):
    import wandb  # noqa: F401  (a test requirement: requirements.txt)
    out = tmp_path / "out"
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    train(out, data_dir, "--max_iters=3", "--eval_interval=3", "--wandb_log=True", "--wandb_mode=offline", env=env)
    _, steps, evals = metrics(out)
    run_files = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(run_files) == 1, list(tmp_path.rglob("*"))
    history = wandb_history(run_files[0])
    logged = {row["_step"]: row for row in history}
    assert {i: logged[i]["train_loss"] for i in (1, 2, 3)} == pytest.approx(steps)
    assert {i: logged[i]["eval_val"] for i in (0, 3)} == pytest.approx(evals)


def documented_train_commands():
    """Every `python train.py ...` / `torchrun ... train.py ...` line in the README, train.py's docstring
    and the config files' comments, as (where, argv after train.py, number of processes)."""
    import shlex
    found = []
    for path in [ROOT / "README.md", ROOT / "train.py", *sorted((ROOT / "config").glob("*.py"))]:
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            line = line.lstrip("#$ ").split("  #")[0].split("   (")[0]
            for command in re.split(r"\s*(?:&&|&|;)\s*", line):
                words = shlex.split(command) if re.match(r"(python3? |torchrun )", command) else []
                if "train.py" not in words:
                    continue
                nproc = nnodes = 1
                for w in words[:words.index("train.py")]:
                    nproc = int(w.split("=")[1]) if w.startswith("--nproc_per_node=") else nproc
                    nnodes = int(w.split("=")[1]) if w.startswith("--nnodes=") else nnodes
                args = [a for a in words[words.index("train.py") + 1:] if a != "..."]
                found.append((f"{path.name}:{lineno}", args, nproc * nnodes))
    return found


def test_every_documented_train_command_line_is_valid():
    commands = documented_train_commands()
    assert len(commands) >= 15 and any(n > 1 for _, _, n in commands)
    for where, args, world_size in commands:
        proc = subprocess.run([sys.executable, "train.py", *args, "--dry_run=True"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "WORLD_SIZE": str(world_size)})
        assert proc.returncode == 0 and "dry run: configuration valid" in proc.stdout, (where, args, proc.stderr)


def test_shipped_configs_are_valid():
    """Every config file in config/ only sets keys that train.py knows, with the right types."""
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    keys = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ")}
    for key in ("out_dir", "dataset", "batch_size", "block_size", "max_iters", "eval_interval", "eval_iters",
                "log_interval", "learning_rate", "warmup_iters", "lr_decay_iters", "min_lr", "weight_decay", "beta1",
                "beta2", "grad_clip", "gradient_accumulation_steps", "device", "dtype", "compile", "init_from",
                "eval_only", "always_save_checkpoint", "wandb_log", "model_type", "n_layer", "n_embd", "use_moe",
                "attn_every", "chunk_len", "data_dir", "resume_ckpt", "ckpt_interval", "seed"):
        assert key in keys, key
    import dataclasses

    from model import GPTConfig
    assert {f.name for f in dataclasses.fields(GPTConfig)} <= keys
    # the shipped config files, executed against train.py's defaults (parsed from --help)
    import ast
    defaults = {}
    for line in out.stdout.splitlines():
        if line.startswith("  ") and " = " in line:
            key, rest = line.strip().split(" = ", 1)
            defaults[key.strip()] = ast.literal_eval(rest.rsplit("  (", 1)[0])
    for cfg in sorted((ROOT / "config").glob("*.py")):
        apply_config([str(cfg)], defaults)


@pytest.mark.parametrize("args, needle", [
    (["--batch_sise=4"], "error: unknown config key 'batch_sise'"),
    (["--batch_size=four"], "error: --batch_size: batch_size expects int, got str 'four'"),
    (["config/does_not_exist.py"], "error: config file not found: config/does_not_exist.py"),
])
def test_train_rejects_bad_config_in_one_line(args, needle, tmp_path):
    out = subprocess.run([sys.executable, "train.py", *args, f"--out_dir={tmp_path / 'out'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert out.stderr.strip().startswith(needle), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert not (tmp_path / "out").exists()  # nothing was started
