"""ablate.py end to end on a tiny model: 2 variants x 2 seeds, 2 at a time, on a synthetic corpus; then the
same command again (everything is skipped), a reference row, and the one-line errors of bad input."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import ablate  # noqa: E402  (importing it runs nothing)

# tiny runs: 2 steps of 2 x 16 tokens, one 32-wide layer, an evaluation of 1 batch after every step
TINY = ["--max_iters=2", "--n_layer=1", "--n_embd=32", "--head_size=16", "--n_head=2", "--block_size=16",
        "--batch_size=2", "--eval_iters=1", "--eval_interval=1", "--log_interval=1", "--warmup_iters=1"]


def run_ablate(*args, timeout=120):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "ablate.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=timeout)


def table_rows(md):
    """First cells of the markdown table's body rows."""
    lines = [l for l in md.splitlines() if l.startswith("| ") and not l.startswith("| ---")]
    return [l.split("|")[1].strip() for l in lines[1:]]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ablate")
    data = tmp / "data"
    prep = subprocess.run([sys.executable, str(ROOT / "prepare_tinystories.py"), "--synthetic", "200", "--out_dir",
                           str(data), "--num_proc", "1"], capture_output=True, text=True, cwd=ROOT)
    assert prep.returncode == 0, prep.stderr
    out = tmp / "out"
    args = ["--variants", "rwkv,gpt", "--seeds", "11,12", "--out_dir", out, "--device", "cpu", "--parallel", "2",
            f"--data_dir={data}", *TINY]
    first = run_ablate(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    return tmp, out, args, first


def test_sweep_table_and_runs(sweep):
    tmp, out, _, first = sweep
    assert "4 to run, 0 already complete" in first.stdout
    assert "ran 4, skipped 0, failed 0" in first.stdout
    assert "2 at a time, 1 thread(s) each on cpu" in first.stdout
    md = (out / "ablate_table.md").read_text()
    assert table_rows(md) == ["rwkv", "gpt"]
    assert (out / "ablate_val_curves.png").stat().st_size > 0
    res = json.loads((out / "ablate_runs.json").read_text())
    rows = {r["name"]: r for r in res["rows"]}
    assert set(rows) == {"rwkv", "gpt"}
    for name, row in rows.items():
        runs = row["runs"]
        assert [r["seed"] for r in runs] == [11, 12]
        vals = [r["final_val"] for r in runs]
        assert all(5 < v < 12 for v in vals)
        assert vals[0] != vals[1], f"{name}: both seeds gave {vals[0]}"  # the seeds really differ
        assert row["summary"]["n"] == 2 and row["tokens"] == 2 * 2 * 16
        assert row["params"] > 0 and row["summary"]["tok_s"] > 0
        assert [c[0] for c in runs[0]["curve"]] == [0, 1, 2]  # iter 0, every step, the end
        run_dir = out / name / "seed11"
        assert (run_dir / "train.log").exists() and not list(run_dir.glob("ckpt*.pt"))  # checkpoints removed
        assert "--seed=11" in json.loads((run_dir / "ablate_run.json").read_text())["args"]
    assert rows["gpt"]["summary"]["mean"] != rows["rwkv"]["summary"]["mean"]


def test_second_invocation_skips_everything(sweep):
    tmp, out, args, _ = sweep
    metrics = sorted(out.glob("*/seed*/metrics.jsonl"))
    assert len(metrics) == 4
    before = {p: p.stat().st_mtime_ns for p in metrics}
    ref = tmp / "ref.json"
    ref.write_text(json.dumps({"how": "made elsewhere", "params": 1234567, "runs": [
        {"seed": 11, "final_val": 9.5, "tok_s": 100.0, "curve": [[0, 0, 0.0, 10.9, 10.9], [2, 64, 0.4, 9.6, 9.5]]},
        {"seed": 12, "final_val": 9.7, "tok_s": 110.0, "curve": [[0, 0, 0.0, 10.9, 10.9], [2, 64, 0.5, 9.8, 9.7]]}]}))
    assets = tmp / "assets"
    again = run_ablate(*args, "--reference", f"nano={ref}", "--wall_clock", "0.2", "--assets", assets)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 to run, 4 already complete (skipped)" in again.stdout
    assert "ran 0, skipped 4, failed 0" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in metrics} == before  # no run was touched
    md = (assets / "ablate_table.md").read_text()
    assert table_rows(md) == ["rwkv", "gpt", "nano"]
    nano = [l for l in md.splitlines() if l.startswith("| nano ")][0]
    assert "9.6000 ± 0.1414" in nano and "1.23M" in nano and "made elsewhere" in nano
    assert "val @ 0.2 train s" in md
    assert {p.name for p in assets.iterdir()} == {*ablate.OUTPUTS, ablate.PAGE}
    # the study page: the author's text kept, ablate.py's section (the command and the table) replaced
    page = assets / ablate.PAGE
    assert page.read_text().startswith(ablate.PAGE_BEGIN) and f"```bash\npython ablate.py --variants" in page.read_text()
    page.write_text("# My study\n\n" + page.read_text().replace("9.6000", "0.0000") + "\nMy notes.\n")
    ablate.write_page_section(str(page), "python ablate.py --again", md)
    text = page.read_text()
    assert text.startswith("# My study\n\n" + ablate.PAGE_BEGIN) and text.endswith(ablate.PAGE_END + "\n\nMy notes.\n")
    assert "--again" in text and "9.6000 ± 0.1414" in text and "0.0000" not in text and text.count(ablate.PAGE_BEGIN) == 1


def test_a_changed_default_makes_a_run_stale(sweep, tmp_path):
    """A finished run made under another resolved config (e.g. a model default changed since) is not reused."""
    import shutil
    _, out, args, _ = sweep
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    spec_path = copy / "rwkv" / "seed11" / "ablate_run.json"
    spec = json.loads(spec_path.read_text())
    assert spec["config"]["ln_emb_init"] == 0.02  # the resolved config is saved, defaults included
    spec["config"]["ln_emb_init"] = 1.0  # as if the run predates today's default
    spec_path.write_text(json.dumps(spec))
    (copy / "gpt" / "seed12" / "ablate_run.json").unlink()  # finished, but nothing says with which settings
    args = [copy if a == out else a for a in args]
    again = run_ablate(*args, "--report_only")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 complete, 2 not (2 made with other settings: left out)" in again.stdout
    # a spec that cannot show it is current does not match: no config (made before configs were saved), or a
    # config without a key added since (its default may have changed what the run computes)
    fresh = json.loads((out / "rwkv" / "seed11" / "ablate_run.json").read_text())
    assert ablate.same_settings(fresh, fresh["args"], fresh["config"])
    assert not ablate.same_settings({k: v for k, v in fresh.items() if k != "config"}, fresh["args"], fresh["config"])
    older = {k: v for k, v in fresh["config"].items() if k != "ln_emb_init"}
    assert not ablate.same_settings({**fresh, "config": older}, fresh["args"], fresh["config"])
    assert ablate.same_settings(fresh, fresh["args"], {**fresh["config"], "eval_interval": 7})  # changes no run


def test_include_takes_runs_from_an_earlier_sweep(sweep, tmp_path):
    """Runs saved in an ablate_runs.json fill their slots: nothing is run again."""
    _, out, args, _ = sweep
    earlier = json.loads((out / "ablate_runs.json").read_text())
    saved = tmp_path / "earlier.json"
    saved.write_text(json.dumps(earlier))
    fresh = tmp_path / "fresh"
    args = [fresh if a == out else a for a in args]
    res = run_ablate(*args, "--include", saved)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 runs taken from --include" in res.stdout and "0 to run" in res.stdout
    assert not list(fresh.glob("*/seed*"))  # no run directory: nothing ran
    rows = {r["name"]: r for r in json.loads((fresh / "ablate_runs.json").read_text())["rows"]}
    for row in (r for r in earlier["rows"] if "reference" not in r):  # a reference row is not a run of ours
        assert [r["final_val"] for r in rows[row["name"]]["runs"]] == [r["final_val"] for r in row["runs"]]
        assert all(r["included_from"] for r in rows[row["name"]]["runs"])
    assert "4 run(s) read from" in (fresh / "ablate_table.md").read_text()

    earlier["rows"][0]["overrides"] = {"head_size": 8}  # the variant has changed since
    saved.write_text(json.dumps(earlier))
    res = run_ablate(*args, "--include", saved)
    assert res.returncode != 0 and "made with other overrides (--head_size=8)" in res.stderr.strip().splitlines()[-1]
    earlier["rows"][0]["overrides"] = {}
    earlier["rows"][0]["config"]["learning_rate"] = 0.5  # a default changed since
    saved.write_text(json.dumps(earlier))
    with pytest.raises(ablate.AblateError, match="made with another config: learning_rate=0.5 there"):
        ablate.main([*map(str, args), "--include", str(saved)])
    del earlier["rows"][0]["config"]  # saved by an older ablate.py
    saved.write_text(json.dumps(earlier))
    with pytest.raises(ablate.AblateError, match="has no saved config"):
        ablate.main([*map(str, args), "--include", str(saved)])
    earlier["recipe"] = "config/other.py"
    saved.write_text(json.dumps(earlier))
    res = run_ablate(*args, "--include", saved)
    assert res.returncode != 0 and "made with recipe 'config/other.py'" in res.stderr


def test_val_loss_by_position_adds_up_to_the_final_val_loss(sweep):
    """--pos_buckets evaluates the final checkpoint on train.py's own val batches: the bucket means weighted by
    their widths are train.py's final val cross-entropy (another batch draw or a wrong position range is not),
    and the checkpoint is deleted after it was measured."""
    tmp, _, _, _ = sweep
    out = tmp / "pos"
    res = run_ablate("--variants", "rwkv", "--seeds", "11", "--out_dir", out, "--pos_buckets", "4,10,99",
                     f"--data_dir={tmp / 'data'}", *TINY, "--eval_iters=3")
    assert res.returncode == 0, res.stdout + res.stderr
    run_dir = out / "rwkv" / "seed11"
    pos = json.loads((run_dir / "pos_loss.json").read_text())
    assert pos["edges"] == [0, 4, 10, 16]  # 99 lies beyond block_size 16
    widths = [b - a for a, b in zip(pos["edges"], pos["edges"][1:])]
    final = json.loads((out / "ablate_runs.json").read_text())["rows"][0]["runs"][0]["final_val"]
    assert sum(w * v for w, v in zip(widths, pos["val_ce"])) / 16 == pytest.approx(final, abs=1e-5)
    assert len(set(pos["val_ce"])) == 3
    assert not list(run_dir.glob("ckpt*.pt"))
    assert "val CE at positions 0-4 / 4-10 / 10-16" in (out / "ablate_table.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--variants", "rwkv,nope"], "unknown variant 'nope'"),
    (["--variants", "rwkv", "--seeds", "1,x"], "--seeds must be comma-separated integers"),
    (["--variants", "rwkv", "--seeds", "1,1"], "--seeds must be distinct"),
    (["--variants", "rwkv", "--reference", "nano=/no/such/file.json"], "no such file"),
    (["--variants", "rwkv", "--reference", "just-a-path.json"], "expects NAME=PATH"),
    (["--variants", "rwkv", "--include", "/no/such/runs.json"], "no such file"),
    (["--variants", "rwkv", "--recipe", "/no/such/recipe.py"], "recipe not found"),
    (["--variants", "rwkv", "--seed=3"], "set per run by ablate.py"),
    (["--variants", "rwkv", "stray"], "unexpected argument 'stray'"),
    (["--variants", "rwkv", "--pos_buckets", "128,x"], "--pos_buckets must be comma-separated positions"),
    ([], "--variants is required"),
])
def test_bad_input_is_one_line(args, message):
    res = run_ablate(*args)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert res.stdout == ""


def test_binary_include_is_one_line(tmp_path):
    (tmp_path / "g").write_bytes(bytes(range(256)))
    res = run_ablate("--variants", "rwkv", "--seeds", "1", "--include", tmp_path / "g", "--report_only")
    assert res.returncode != 0 and re.match(rf"^error: --include {tmp_path / 'g'}: cannot read it as JSON "
                                            r"\(UnicodeDecodeError: .*\)$", res.stderr.strip()), res.stderr


def test_report_only_without_runs_is_an_error_not_an_empty_table(tmp_path):
    res = run_ablate("--variants", "rwkv", "--seeds", "1", "--out_dir", tmp_path / "a", "--report_only")
    assert res.returncode != 0 and res.stderr.strip() == (
        f"error: --report_only: no finished run of rwkv (seeds 1) in {tmp_path / 'a'}; run the sweep first "
        "(the same command without --report_only), or give --include")
    assert not (tmp_path / "a").exists()


def test_bad_reference_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"how": "x", "runs": [{"seed": 1}]}))
    res = run_ablate("--variants", "rwkv", "--reference", f"r={bad}")
    assert res.returncode != 0 and re.match(r"^error: .*numeric 'final_val'$", res.stderr.strip())


def test_unfinished_run_is_not_complete(tmp_path):
    """An interrupted run (no final evaluation yet) is run again; a finished one is skipped."""
    rows = [{"iter": 0, "eval_train": 10.9, "eval_val": 10.9, "tokens": 0},
            {"iter": 10, "train_loss": 9.0, "aux_loss": 0.0, "tok_s": 100.0, "dt_ms": 10.0, "tokens": 100, "elapsed_s": 2.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"iter": 20, "tra')
    assert not ablate.is_complete(tmp_path, 20)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write("\n" + json.dumps({"iter": 20, "eval_train": 8.0, "eval_val": 8.5, "tokens": 200}) + "\n")
    assert ablate.is_complete(tmp_path, 20)


def test_training_seconds_leave_out_evaluations():
    # steps of 1 s; the evaluations at iters 0 and 20 add 5 s each to the intervals that hold them
    steps = [{"iter": i, "train_loss": 1.0, "tok_s": 1.0, "dt_ms": 1000.0, "elapsed_s": e}
             for i, e in ((10, 15.0), (20, 25.0), (30, 40.0), (40, 50.0))]
    evals = [{"iter": 0, "eval_val": 1.0, "eval_train": 1.0}, {"iter": 20, "eval_val": 1.0, "eval_train": 1.0}]
    assert ablate.training_seconds(steps, evals) == [(0, 0.0), (10, 10.0), (20, 20.0), (30, 30.0), (40, 40.0)]
    assert ablate.interp([0.0, 10.0, 20.0], [3.0, 2.0, 1.0], 15.0) == 1.5
    assert ablate.interp([0.0, 10.0], [3.0, 2.0], 99.0) == 2.0  # finished sooner: its final loss


def test_variants_are_train_overrides():
    """Every variant has a comment, and its overrides resolve on the recipe as train.py's configurator reads
    them (known keys, values of the default's type) to exactly those values; a misspelled key is refused."""
    docs = ablate.variant_docs()
    defaults = ablate.train_defaults()
    for name, overrides in ablate.VARIANTS.items():
        assert docs.get(name), f"{name} has no one-line comment"
        cfg = ablate.resolve_config(defaults, ablate.RECIPE, ablate.override_args(overrides))
        assert {k: cfg[k] for k in overrides} == overrides, name
    with pytest.raises(ablate.AblateError, match="cmix_mul"):
        ablate.resolve_config(defaults, ablate.RECIPE, ablate.override_args({"cmix_mul": 3.0}))
