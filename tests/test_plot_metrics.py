"""plot_metrics.py on synthetic metrics.jsonl files: the default output is under out/ (never assets/), a
group of several seeds is drawn as its mean with a min-max band, and bad input is a one-line error."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import plot_metrics

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def write_run(path, seed, iters=(0, 10, 20, 30), tokens_per_iter=100):
    """A run logging train_loss every step and evals every 10 steps; losses shifted by the seed."""
    path.mkdir(parents=True)
    rows = []
    for i in range(iters[-1] + 1):
        if i in iters:
            rows.append({"iter": i, "eval_train": 5.0 - 0.05 * i + seed, "eval_val": 5.5 - 0.05 * i + seed,
                         "tokens": i * tokens_per_iter})
        if i > 0:
            rows.append({"iter": i, "train_loss": 5.0 - 0.04 * i + seed, "tokens": i * tokens_per_iter,
                         "elapsed_s": 0.1 * i * (1 + seed)})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"iter": 31, "trai\n')
    return path


@pytest.fixture
def capture(monkeypatch):
    """The figure main() saves, kept for inspection (it is still written)."""
    figures = []
    save = plot_metrics.save_figure

    def keep(fig, path, **kw):
        figures.append(fig)
        save(fig, path, **kw)
    monkeypatch.setattr(plot_metrics, "save_figure", keep)
    return figures


def test_default_output_is_under_out_not_assets(tmp_path, monkeypatch):
    run = write_run(tmp_path / "runs" / "a", seed=0)
    monkeypatch.chdir(tmp_path)
    assert plot_metrics.main([str(run)]) == 0
    png = tmp_path / "out" / "loss_curves.png"
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000
    assert not (tmp_path / "assets").exists()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name != "loss_curves.png"]  # no temp file left


def test_explicit_out_path(tmp_path):
    run = write_run(tmp_path / "a", seed=0)
    png = tmp_path / "assets" / "loss.png"
    assert plot_metrics.main([str(run / "metrics.jsonl"), "--out", str(png), "--x", "tokens"]) == 0
    assert png.read_bytes()[:8] == PNG


def test_multi_seed_group_plots_its_mean(tmp_path, capture, capsys):
    for seed in range(3):
        write_run(tmp_path / "rwkv" / f"seed{seed}", seed=seed * 0.1)
    write_run(tmp_path / "gpt" / "seed0", seed=1.0)
    png = tmp_path / "loss.png"
    # a glob and a directory of runs: two groups
    assert plot_metrics.main([str(tmp_path / "rwkv" / "seed*"), str(tmp_path / "gpt"), "--labels", "RWKV", "GPT",
                              "--x", "tokens", "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert "RWKV: 3 runs; last val loss" in out and "GPT: 1 run;" in out
    assert png.read_bytes()[:8] == PNG
    ax = capture[0].axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    val = lines["RWKV (mean of 3) val"]
    assert list(val.get_xdata()) == [0, 1000, 2000, 3000]  # the eval points, at equal tokens
    expected = [5.5 - 0.05 * i + 0.1 for i in (0, 10, 20, 30)]  # mean of seeds +0, +0.1, +0.2
    assert list(val.get_ydata()) == pytest.approx(expected)
    assert list(lines["RWKV (mean of 3) train (eval)"].get_ydata()) == pytest.approx([y - 0.5 for y in expected])
    assert list(lines["GPT val"].get_ydata()) == pytest.approx([5.5 - 0.05 * i + 1.0 for i in (0, 10, 20, 30)])
    # the min-max band around the mean: seeds +0 and +0.2
    band = [c for c in ax.collections if c.get_label() == "RWKV val min-max"]
    assert len(band) == 1
    ys = band[0].get_paths()[0].vertices[:, 1]
    assert min(ys) == pytest.approx(5.5 - 1.5) and max(ys) == pytest.approx(5.5 + 0.2)


def test_group_aligns_on_points_every_run_logged(tmp_path):
    a = write_run(tmp_path / "a", seed=0.0)
    b = write_run(tmp_path / "b", seed=1.0, iters=(0, 10, 20))  # stopped early
    args = plot_metrics.argparse.Namespace(x="iter", smooth=0.0)
    train, val, etrain = plot_metrics.group_curves([str(a), str(b)], args)
    xs, mean, lo, hi, dropped = val
    assert xs == [0, 10, 20] and dropped == 1
    assert mean == pytest.approx([6.0, 5.5, 5.0]) and lo == pytest.approx([5.5, 5.0, 4.5])
    assert hi == pytest.approx([6.5, 6.0, 5.5])
    assert train[0] == list(range(1, 21)) and train[4] == 10  # smooth=0: the raw train loss, mean of both
    assert train[1][0] == pytest.approx(5.0 - 0.04 + 0.5)
    # --x time: aligned by step, placed at the runs' mean elapsed time, no eval points
    train, val, _ = plot_metrics.group_curves([str(a), str(b)], plot_metrics.argparse.Namespace(x="time", smooth=0.9))
    assert val is None and train[0][0] == pytest.approx(0.1 * 1.5)


@pytest.mark.parametrize("args, message", [
    (["{tmp}/nothing*"], "no metrics.jsonl there"),
    (["{tmp}/missing_dir"], "no metrics.jsonl there"),
])
def test_bad_input_is_one_line_error(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "plot_metrics.py", *[a.format(tmp=tmp_path) for a in args],
                           "--out", str(tmp_path / "x.png")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.png").exists()


def test_labels_must_match_groups(tmp_path):
    run = write_run(tmp_path / "a", seed=0)
    with pytest.raises(SystemExit) as e:
        plot_metrics.main([str(run), "--labels", "A", "B", "--out", str(tmp_path / "x.png")])
    assert e.value.code == 2


def test_run_without_rows_is_an_error_not_an_empty_plot(tmp_path, capsys):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "metrics.jsonl").write_text("")
    assert plot_metrics.main([str(tmp_path / "e"), "--out", str(tmp_path / "e.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'e'}: no step or evaluation rows") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "e.png").exists()


def test_unwritable_out_fails_before_reading_the_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(plot_metrics, "group_curves", lambda *a: pytest.fail("read the runs first"))
    with pytest.raises(SystemExit) as e:
        plot_metrics.main([str(write_run(tmp_path / "a", seed=0)), "--out", "/proc/m.png"])
    assert e.value.code == 2 and "error: --out /proc/m.png: cannot write in /proc" in capsys.readouterr().err
