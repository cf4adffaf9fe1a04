"""
Ablations on one fixed recipe (config/ablate_recipe.py): every variant x seed is one train.py run, and the
runs are summarised in one table and one plot.

$ python ablate.py --list                                   # the variants and what each tests
$ python ablate.py --variants rwkv,gpt,rwkv-head32 --seeds 1337,1338,1339 --out_dir out/ablate --device cpu --parallel 2
$ python ablate.py --variants full,rwkv-deep,rwkv-wide --wall_clock 600          # + val loss at 600 training seconds
$ python ablate.py --variants rwkv,gpt --report_only --reference nanoRWKV=out/ref/nanorwkv.json --assets assets

Each run is `python train.py config/ablate_recipe.py --out_dir=OUT/<variant>/seed<k> --seed=<k> <overrides>`, a
subprocess with its log in OUT/<variant>/seed<k>/train.log; at most --parallel run at once, each with
--num_threads=cores//parallel on a CPU. A run whose metrics.jsonl already holds the final evaluation (and
that was started with the same arguments and the same resolved config, defaults included) is skipped, so an
interrupted sweep continues where it stopped; an unfinished run starts again from scratch (so its timings
stay those of one uninterrupted process).
Extra `--key=value` arguments go to every run after the variant's own overrides (e.g. --max_iters=20).

Outputs, in --out_dir: ablate_table.md (the markdown table), ablate_runs.json (every run's numbers and val
curve) and ablate_val_curves.png (val loss against tokens and against training seconds, mean over seeds,
shaded min-max); --assets DIR copies the three there and writes the command and its table into DIR/README.md,
the study page, between two marker lines (nothing else writes outside --out_dir).

Numbers: "val CE" is the final evaluation's val cross-entropy (nats/token, the same 40 batches of held-out
stories for every run of a seed); all rows of the recipe see the same number of tokens. "train s" is the time
spent in training steps (evaluation and checkpointing left out: the time of the log intervals that hold an
evaluation is replaced by the run's median step time); "wall s" is the run's elapsed time to its last step,
evaluations included. "val @ S s" (--wall_clock S) interpolates each run's val curve linearly at S training
seconds (a run that finished sooner counts with its final loss); mid-run points are not annealed to
min_lr, so this favours no one but is not the same as a run scheduled for S seconds. Timings depend on what
else runs at the same time: compare them only within one sweep (same --parallel, same machine).

--include PATH takes finished runs from a saved ablate_runs.json (e.g. one in assets/ whose run directories
are gone): each one fills its variant x seed unless --out_dir holds that run finished, so it is neither run
nor rerun. The variant must have the same overrides there, the same recipe and the same resolved config
(keys that change no computation, NOT_COMPARED, aside); the table's note names the file, its extra
overrides, and how many runs came from it.

--reference NAME=PATH adds a row made elsewhere (tools/run_reference.py writes them): a JSON object with "how"
(a string), "params" (and optionally "params_nonemb", "tokens") and "runs": a list of {"seed", "final_val",
"tok_s"} with optional "final_train", "train_s", "wall_s" and "curve" ([[iter, tokens, train_s, eval_train,
eval_val], ...]).
"""

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time

from metrics import save_figure, steps_and_evals, write_atomic

ROOT = os.path.dirname(os.path.abspath(__file__))

# name -> train.py overrides on top of config/ablate_recipe.py (the comment is the table's "what it tests")
VARIANTS = {
    "rwkv": {},  # the recipe file unchanged (config/ablate_recipe.py: pure RWKV x051a, head 64, ChannelMix 3.5x, GPT-2 init, ln0 at gain 0.02, no wpe)
    "gpt": {"model_type": "gpt"},  # nanoGPT's transformer on the same recipe (learned positions, 4x GELU MLP)
    "rwkv-head32": {"head_size": 32},  # RWKV head size 32 (8 heads) instead of 64 (4 heads)
    "rwkv-init-rwkv": {"init_scheme": "rwkv"},  # RWKV's per-parameter initialisation instead of GPT-2's normal(0.02)
    "rwkv-init-gpt2": {"init_scheme": "gpt2"},  # GPT-2's normal(0.02) with scaled residual projections (for recipes on model.py's default init)
    "rwkv-cmix3": {"cmix_mult": 3.0},  # ChannelMix 3x wide (nanoRWKV's) instead of 3.5x
    "rwkv-wd-time": {"weight_decay_time": True},  # weight decay on time_faaaa too (the only time_* matrix; nanoRWKV decays none)
    "rwkv-no-ln-emb": {"ln_emb": False},  # no LayerNorm on the embedding (RWKV's ln0 off; nanoRWKV has none)
    "rwkv-ln-emb-1": {"ln_emb_init": 1.0},  # ln0's gain starting at 1 (LayerNorm's usual init) instead of 0.02
    "rwkv-wpe": {"learned_pos": True},  # learned absolute positions added to the embedding (nanoRWKV has them)
    "rwkv-as-nanorwkv": {"cmix_mult": 3.0, "ln_emb": False, "learned_pos": True},  # nanoRWKV's choices all at once
    "full": {"use_swa": True, "use_gqa": True, "use_moe": True},  # the full MicroRWKV layer (SWA 128, GQA 4q/2kv, top-2 of 4 experts)
    "full-no-swa": {"use_gqa": True, "use_moe": True},  # the full layer without sliding-window attention
    "full-no-gqa": {"use_swa": True, "use_moe": True},  # the full layer without grouped-query attention
    "full-no-attn": {"use_moe": True},  # the full layer without SWA and GQA: TimeMix + MoE ChannelMix
    "full-no-moe": {"use_swa": True, "use_gqa": True},  # the full layer without the mixture of experts
    "rwkv-deep": {"n_layer": 11},  # pure RWKV with the full layer's parameters, deeper: 11 layers (22.3M vs 22.3M)
    "rwkv-wide": {"n_embd": 320, "n_head": 5},  # pure RWKV with the full layer's parameters, wider: 320 (21.4M; 64-multiples)
    "rwkv-wide-nonemb": {"n_embd": 448, "n_head": 7},  # pure RWKV, wider to the full layer's non-embedding parameters (10.5M vs 9.5M)
    "pure": {"use_swa": False, "use_gqa": False, "use_moe": False},  # TimeMix + ChannelMix only (for recipes with the full layer)
    "pure7": {"use_swa": False, "use_gqa": False, "use_moe": False, "rwkv_version": "x070", "chunk_len": 16},  # the same with RWKV-7 blocks
    "rwkv7": {"rwkv_version": "x070", "chunk_len": 16},  # RWKV-7 (x070) TimeMix and ChannelMix instead of x051a's
    "rwkv7-ln-emb-1": {"rwkv_version": "x070", "chunk_len": 16, "ln_emb_init": 1.0},  # the same with ln0's gain starting at 1
    "full7": {"rwkv_version": "x070", "chunk_len": 16, "use_swa": True, "use_gqa": True, "use_moe": True},  # the full layer with RWKV-7 blocks
    "rwkv7-gqa4": {"rwkv_version": "x070", "chunk_len": 16, "layers": "RRRG"},  # RWKV-7 with GQA (4q/2kv) in the last of 4 layers only: one global attention layer in four
    "rwkv7-gqa2": {"rwkv_version": "x070", "chunk_len": 16, "layers": "RGRG"},  # RWKV-7 with GQA in every second layer
}

RECIPE = os.path.join(ROOT, "config", "ablate_recipe.py")
PAGE = "README.md"  # the study page in --assets DIR: ablate.py owns the part between these two lines
PAGE_BEGIN, PAGE_END = "<!-- ablate.py: begin (the command and its table, rewritten by ablate.py --assets) -->", \
    "<!-- ablate.py: end -->"
OUTPUTS = ("ablate_table.md", "ablate_runs.json", "ablate_val_curves.png")
RUN_SPEC = "ablate_run.json"  # in each run directory: the arguments it was started with, and its timing
POS_LOSS = "pos_loss.json"  # in each run directory, with --pos_buckets: the final model's val CE by position


class AblateError(Exception):
    """Bad input: reported as one line and a non-zero exit."""


def variant_docs():
    """The one-line comments of VARIANTS, read from this file."""
    docs = {}
    try:
        with open(os.path.abspath(__file__), encoding="utf-8") as f:
            for line in f:
                m = re.match(r'\s+"([^"]+)": \{.*\},\s+#\s*(.*)$', line)
                if m and m.group(1) in VARIANTS:
                    docs[m.group(1)] = m.group(2).strip()
    except OSError:
        pass
    return docs


# ----------------------------------------------------------------------------------------------------
# configuration


def train_defaults():
    """train.py's config keys and defaults: the dict train.py hands to format_help for `--help`, caught
    in-process (train.py stops there); `python train.py --help` in a subprocess if that does not work."""
    import runpy
    sys.path.insert(0, ROOT)
    train_py = os.path.join(ROOT, "train.py")

    class Caught(Exception):
        pass

    def grab(config, *args, **kwargs):
        raise Caught(dict(config))

    try:
        import configurator
        real, argv = configurator.format_help, sys.argv
        configurator.format_help, sys.argv = grab, [train_py, "--help"]
        try:
            runpy.run_path(train_py, run_name="__ablate_help__")
        finally:
            configurator.format_help, sys.argv = real, argv
    except Caught as c:
        return c.args[0]
    except BaseException:  # noqa: B036 (a SystemExit too): fall back to the subprocess
        pass
    import ast
    out = subprocess.run([sys.executable, train_py, "--help"], capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise AblateError(f"train.py --help failed: {last}")
    defaults = {}
    for line in out.stdout.splitlines():
        m = re.match(r"^  (\w+)\s+= (.*)  \((\w+)\)$", line)
        if m:
            defaults[m.group(1)] = ast.literal_eval(m.group(2))
    if "max_iters" not in defaults:
        raise AblateError("could not read train.py's config keys from train.py --help")
    return defaults


def override_args(overrides):
    return [f"--{k}={v}" for k, v in overrides.items()]


def resolve_config(defaults, recipe, args):
    """The effective train.py config of `recipe` + `args` (--key=value), checked as train.py checks it."""
    sys.path.insert(0, ROOT)
    from configurator import ConfigError, apply_config
    try:
        return apply_config([recipe, *args], defaults)
    except ConfigError as e:
        raise AblateError(str(e)) from None


def count_params(cfg):
    """(parameters as get_num_params counts them, the same without the token embedding), or (None, None)."""
    try:
        import dataclasses
        import torch
        sys.path.insert(0, ROOT)
        from model import GPTConfig, build_model
        fields = {f.name for f in dataclasses.fields(GPTConfig)}
        config = GPTConfig(**{k: v for k, v in cfg.items() if k in fields})
        try:
            with torch.device("meta"):  # no memory, no initialisation cost
                model = build_model(config)
        except Exception:
            model = build_model(config)
        n = model.get_num_params()
        return n, n - cfg["vocab_size"] * cfg["n_embd"]
    except Exception as e:  # a model that does not build fails in train.py too, with its own message
        print(f"note: cannot count the parameters ({type(e).__name__}: {e})", file=sys.stderr)
        return None, None


# ----------------------------------------------------------------------------------------------------
# reading runs


def read_metrics(path):
    """(step rows, eval rows) of a metrics.jsonl; a missing file has none."""
    return steps_and_evals(path) if os.path.exists(path) else ([], [])


def last_iter(path):
    steps, evals = read_metrics(path)
    return max([r["iter"] for r in steps + evals], default=0)


def is_complete(run_dir, max_iters):
    _, evals = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    return any(r["iter"] == max_iters for r in evals)


def training_seconds(steps, evals):
    """[(iter, seconds spent in training steps up to it)], evaluations and checkpoints left out.

    Step rows carry elapsed_s (wall clock since the loop started). A log interval (a, b] whose time includes
    an evaluation (one at iter e with a <= e < b) is replaced by its step count x the median time per step of
    the clean intervals (or its logged dt_ms when there are none)."""
    if steps and all("train_s" in r for r in steps):
        return [(0, 0.0)] + [(r["iter"], float(r["train_s"])) for r in steps]
    eval_iters = [r["iter"] for r in evals]
    intervals, prev_iter, prev_el = [], 0, 0.0
    for r in steps:
        a, b, el = prev_iter, r["iter"], float(r.get("elapsed_s", 0.0))
        if b <= a:
            continue
        dirty = any(a <= e < b for e in eval_iters)
        intervals.append((b, b - a, el - prev_el, dirty, r.get("dt_ms")))
        prev_iter, prev_el = b, el
    clean = [d / n for _, n, d, dirty, _ in intervals if not dirty]
    per_step = statistics.median(clean) if clean else None
    t, out = 0.0, [(0, 0.0)]
    for b, n, d, dirty, dt_ms in intervals:
        if not dirty:
            t += d
        elif per_step is not None:
            t += n * per_step
        else:
            t += n * (dt_ms / 1000 if dt_ms else d / n)
        out.append((b, t))
    return out


def interp(xs, ys, x):
    """Linear interpolation of (xs, ys) at x, held constant outside [xs[0], xs[-1]]."""
    if not xs:
        return None
    if x <= xs[0]:
        return ys[0]
    for i in range(1, len(xs)):
        if x <= xs[i]:
            x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def summarize_run(run_dir, seed, max_iters):
    """One finished run's numbers and val curve, or None if it has no final evaluation."""
    steps, evals = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    final = [r for r in evals if r["iter"] == max_iters]
    if not final:
        return None
    final = final[-1]
    times = training_seconds(steps, evals)
    t_iters, t_secs = [i for i, _ in times], [s for _, s in times]
    curve = [[r["iter"], r.get("tokens"), interp(t_iters, t_secs, r["iter"]), r["eval_train"], r["eval_val"]]
             for r in sorted(evals, key=lambda r: r["iter"])]
    run = {
        "seed": seed,
        "final_val": final["eval_val"],
        "final_train": final["eval_train"],
        "tokens": final.get("tokens"),
        "tok_s": statistics.median(r["tok_s"] for r in steps) if steps else None,
        "train_s": t_secs[-1] if steps else None,
        "wall_s": float(steps[-1]["elapsed_s"]) if steps and "elapsed_s" in steps[-1] else None,
        "curve": curve,
    }
    try:
        with open(os.path.join(run_dir, POS_LOSS)) as f:
            run["val_by_pos"] = json.load(f)
    except (OSError, json.JSONDecodeError):
        pass
    try:
        with open(os.path.join(run_dir, RUN_SPEC)) as f:
            spec = json.load(f)
        run.update({k: spec[k] for k in ("process_s", "threads", "parallel", "device") if k in spec})
    except (OSError, json.JSONDecodeError):
        pass
    return run


def bucket_bounds(edges, T):
    """The bucket boundaries of --pos_buckets at context T: 0, the edges inside (0, T), T."""
    return [0, *[e for e in edges if 0 < e < T], T]


def position_losses(run_dir, cfg, seed, edges, threads=0):
    """Val cross-entropy of a run's final checkpoint by position in the context, averaged over the buckets
    [0, e1), [e1, e2), ..., [ek, block_size): on the val batches of train.py's evaluation (the same generator
    seed, so the bucket means weighted by width give its final val loss). Written to the run's POS_LOSS."""
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, ROOT)
    from checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
    from data import get_batch, load_tokens
    if threads:
        torch.set_num_threads(threads)
    T, B = cfg["block_size"], cfg["batch_size"]
    try:
        model = model_from_checkpoint(load_checkpoint(os.path.join(run_dir, f"ckpt-{cfg['max_iters']}.pt"))).eval()
    except CheckpointError:
        return None
    _, val, _ = load_tokens(cfg.get("data_dir") or os.path.join("data", cfg["dataset"]), cfg["vocab_size"])
    gen = torch.Generator().manual_seed(seed + 7_919 * 2)  # train.py's val generator
    total = torch.zeros(T, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(cfg["eval_iters"]):
            x, y = get_batch(val, T, B, gen, "cpu")
            logits = model(x, y)[0]  # with targets: the logits of every position
            total += F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none").double().sum(0)
    per_pos = total / (cfg["eval_iters"] * B)
    bounds = bucket_bounds(edges, T)
    out = {"edges": bounds, "val_ce": [per_pos[a:b].mean().item() for a, b in zip(bounds, bounds[1:])]}
    write_atomic(os.path.join(run_dir, POS_LOSS), json.dumps(out))
    return out


def read_json(what, path):
    """The JSON in `path`; a missing or unreadable file is an AblateError naming `what` (the flag given)."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise AblateError(f"{what}: no such file") from None
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8 text
        raise AblateError(f"{what}: cannot read it as JSON ({type(e).__name__}: {e})") from None


def load_reference(name, path):
    ref = read_json(f"--reference {name}={path}", path)
    if not isinstance(ref, dict) or not isinstance(ref.get("runs"), list) or not ref["runs"]:
        raise AblateError(f"--reference {name}={path}: expected a JSON object with a non-empty 'runs' list")
    for r in ref["runs"]:
        if not isinstance(r, dict) or not isinstance(r.get("final_val"), (int, float)):
            raise AblateError(f"--reference {name}={path}: every run needs a numeric 'final_val'")
    if not isinstance(ref.get("how", ""), str):
        raise AblateError(f"--reference {name}={path}: 'how' must be a string")
    return ref


def load_included(path, recipe):
    """{variant: (overrides, {seed: run}, resolved config or None)} of a saved ablate_runs.json,
    each run marked with it."""
    old = read_json(f"--include {path}", path)
    if not isinstance(old, dict) or not isinstance(old.get("rows"), list):
        raise AblateError(f"--include {path}: expected an ablate_runs.json (a JSON object with 'rows')")
    if old.get("recipe") != recipe:
        raise AblateError(f"--include {path}: made with recipe {old.get('recipe')!r}, not {recipe!r}")
    found = {}
    for row in old["rows"]:
        if isinstance(row, dict) and "reference" not in row and isinstance(row.get("runs"), list):
            runs = {r["seed"]: {**r, "included_from": os.path.relpath(path, ROOT)} for r in row["runs"]}
            found[row["name"]] = (row.get("overrides"), runs, row.get("config"))
    return {"path": os.path.relpath(path, ROOT), "extra": old.get("extra_overrides", []), "rows": found}


# ----------------------------------------------------------------------------------------------------
# summary, table, plot


def summarize(entry, wall_clock):
    runs = entry["runs"]
    vals = [r["final_val"] for r in runs]
    s = {"n": len(vals), "mean": statistics.fmean(vals) if vals else None,
         "std": statistics.stdev(vals) if len(vals) > 1 else 0.0 if vals else None,
         "min": min(vals, default=None), "max": max(vals, default=None)}
    med = [r["tok_s"] for r in runs if r.get("tok_s") is not None]
    s["tok_s"] = statistics.median(med) if med else None
    for key in ("train_s", "wall_s"):
        xs = [r[key] for r in runs if r.get(key) is not None]
        s[key] = statistics.fmean(xs) if xs else None
    by_pos = [r["val_by_pos"] for r in runs if r.get("val_by_pos")]
    if by_pos and all(p["edges"] == by_pos[0]["edges"] for p in by_pos):
        s["val_by_pos"] = {"edges": by_pos[0]["edges"], "n": len(by_pos),
                           "val_ce": [statistics.fmean(p["val_ce"][i] for p in by_pos) for i in range(len(by_pos[0]["val_ce"]))]}
    if wall_clock is not None:
        at = []
        for r in runs:
            curve = [c for c in r.get("curve") or [] if c[2] is not None]
            if curve:
                at.append(interp([c[2] for c in curve], [c[4] for c in curve], wall_clock))
        s["val_at_wall_clock"] = statistics.fmean(at) if at else None
        s["val_at_wall_clock_n"] = len(at)
    return s


def fmt_num(x, spec):
    return "—" if x is None else format(x, spec)


def fmt_secs(x):
    return "—" if x is None else f"{x:.0f}" if x >= 100 else f"{x:.1f}"


def fmt_params(n):
    return "—" if n is None else f"{n / 1e6:.2f}M"


def make_table(rows, baseline, wall_clock, note):
    base = next((r["summary"]["mean"] for r in rows if r["name"] == baseline), None)
    head = ["variant", "what it tests", "params", "non-emb", "tokens", "val CE (mean ± std)", "min – max",
            f"Δ vs {baseline}" if base is not None else "Δ", "seeds", "tok/s (median)", "train s", "wall s"]
    if wall_clock is not None:
        head.append(f"val @ {wall_clock:g} train s")
    edges = next((r["summary"]["val_by_pos"]["edges"] for r in rows if r["summary"].get("val_by_pos")), None)
    if edges:
        head.append("val CE at positions " + " / ".join(f"{a}-{b}" for a, b in zip(edges, edges[1:])))
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        s = r["summary"]
        delta = "—" if base is None or s["mean"] is None else ("—" if r["name"] == baseline else f"{s['mean'] - base:+.4f}")
        cells = [r["name"], r["what"].replace("|", "/"), fmt_params(r.get("params")), fmt_params(r.get("params_nonemb")),
                 "—" if not r.get("tokens") else f"{r['tokens']:,}",
                 "—" if s["mean"] is None else f"{s['mean']:.4f}" + (f" ± {s['std']:.4f}" if s["n"] > 1 else " (1 seed)"),
                 "—" if s["min"] is None else f"{s['min']:.4f} – {s['max']:.4f}", delta, str(s["n"]),
                 fmt_num(s["tok_s"], ",.0f"), fmt_secs(s["train_s"]), fmt_secs(s["wall_s"])]
        if wall_clock is not None:
            cells.append(fmt_num(s.get("val_at_wall_clock"), ".4f"))
        if edges:
            p = s.get("val_by_pos")
            cells.append(" / ".join(f"{v:.4f}" for v in p["val_ce"]) if p and p["edges"] == edges else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + note + "\n"


def mean_curve(runs, xcol):
    """Per eval iter present in every run: (x mean, val mean, val min, val max)."""
    curves = [{c[0]: c for c in r.get("curve") or []} for r in runs]
    curves = [c for c in curves if c]
    if not curves:
        return []
    common = sorted(set.intersection(*(set(c) for c in curves)))
    out = []
    for it in common:
        xs = [c[it][xcol] for c in curves]
        if any(x is None for x in xs):
            continue
        vals = [c[it][4] for c in curves]
        out.append((statistics.fmean(xs), statistics.fmean(vals), min(vals), max(vals)))
    return out


def make_plot(rows, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, xcol, xlabel in ((axes[0], 1, "training tokens"), (axes[1], 2, "training seconds (evaluation excluded)")):
        for i, r in enumerate(rows):
            pts = mean_curve(r["runs"], xcol)
            if not pts:
                continue
            xs, ys, lo, hi = zip(*pts)
            style = "--" if r.get("reference") else "-"
            ax.plot(xs, ys, style, marker="o", markersize=3, color=f"C{i % 10}",
                    label=f"{r['name']} ({r['summary']['n']} seed{'s' if r['summary']['n'] > 1 else ''})")
            if len(r["runs"]) > 1:
                ax.fill_between(xs, lo, hi, color=f"C{i % 10}", alpha=0.2)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val cross-entropy (nats/token)")
    fig.suptitle(title)
    axes[0].set_title("at equal tokens")
    axes[1].set_title("at equal training time")
    # the first evaluation (random init, ~10.8) would squash everything else: start the y axis below it
    later = [p for r in rows for p in mean_curve(r["runs"], 1)[1:]]
    if later:
        lo, hi = min(p[2] for p in later), max(p[3] for p in later)
        axes[0].set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------
# running


def cpu_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# train.py keys that change nothing a run computes (logging, checkpoints, threads): evaluation draws its own
# batches, so runs that differ only in these train step for step alike
NOT_COMPARED = ("out_dir", "eval_interval", "log_interval", "always_save_checkpoint", "ckpt_interval", "resume_ckpt",
                "dry_run", "wandb_log", "wandb_project", "wandb_run_name", "wandb_mode", "num_threads",
                "peak_flops_per_s", "backend")


def config_differences(old, cfg):
    """The keys, outside NOT_COMPARED, whose values differ between a saved resolved config and this one; a key
    only one of them has differs too (a key added since may have changed what the default computes)."""
    missing = object()
    return sorted(k for k in set(old) | set(cfg)
                  if k not in NOT_COMPARED and old.get(k, missing) != cfg.get(k, missing))


def same_settings(spec, spec_args, cfg):
    """Whether a finished run's spec matches this sweep's run: the same arguments, and the same resolved
    config (so a changed default in model.py or train.py reruns it too). A spec without a config cannot show
    that: it does not match."""
    return isinstance(spec.get("config"), dict) and spec.get("args") == spec_args \
        and not config_differences(spec["config"], cfg)


def write_page_section(path, command, table):
    """Put the command and its table into the study page at path, between PAGE_BEGIN and PAGE_END (the rest
    of the page is the author's); a page without them gets the section at its end. Atomic."""
    section = f"{PAGE_BEGIN}\n```bash\n{command}\n```\n\n{table}{PAGE_END}"
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    if PAGE_BEGIN in text and PAGE_END in text:
        head, rest = text.split(PAGE_BEGIN, 1)
        text = head + section + rest.split(PAGE_END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + section + "\n"
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


class Sweep:
    """Runs the pending train.py processes, at most `parallel` at once, with a tqdm bar over steps."""

    def __init__(self, jobs, parallel, keep_ckpt, pos_buckets=()):
        self.jobs, self.parallel, self.keep_ckpt, self.pos_buckets = jobs, parallel, keep_ckpt, pos_buckets
        self.failed = []

    def start(self, job):
        os.makedirs(job["run_dir"], exist_ok=True)
        spec_path = os.path.join(job["run_dir"], RUN_SPEC)
        for stale in (spec_path, os.path.join(job["run_dir"], "metrics.jsonl")):
            if os.path.exists(stale):
                os.remove(stale)  # a spec marks a finished run only; the metrics start afresh
        job["log"] = open(os.path.join(job["run_dir"], "train.log"), "w")
        env = dict(os.environ)
        if job["threads"]:
            env["OMP_NUM_THREADS"] = str(job["threads"])
        job["t0"] = time.time()
        job["proc"] = subprocess.Popen(job["cmd"], stdout=job["log"], stderr=subprocess.STDOUT, env=env)

    def finish(self, job):
        job["log"].close()
        rc = job["proc"].returncode
        name = f"{job['variant']}/seed{job['seed']}"
        if rc != 0 or not is_complete(job["run_dir"], job["max_iters"]):
            tail = ""
            try:
                with open(os.path.join(job["run_dir"], "train.log")) as f:
                    lines = [l.strip() for l in f if l.strip()]
                tail = lines[-1] if lines else ""
            except OSError:
                pass
            self.failed.append(name)
            return f"error: {name} failed (exit {rc}): {tail[:200]}  [log: {os.path.join(job['run_dir'], 'train.log')}]"
        spec = {"args": job["spec_args"], "config": job["config"], "process_s": time.time() - job["t0"], "threads": job["threads"],
                "parallel": self.parallel, "device": job["device"], "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        with open(os.path.join(job["run_dir"], RUN_SPEC), "w") as f:
            json.dump(spec, f, indent=1)
        if self.pos_buckets:
            position_losses(job["run_dir"], job["config"], job["seed"], self.pos_buckets, job["threads"])
        if not self.keep_ckpt:
            for fn in os.listdir(job["run_dir"]):
                if re.fullmatch(r"ckpt(-\d+)?\.pt(\.tmp)?", fn):
                    os.remove(os.path.join(job["run_dir"], fn))
        return None

    def run(self):
        from tqdm import tqdm
        pending, running = list(self.jobs), []
        bar = tqdm(total=sum(j["max_iters"] for j in self.jobs), unit="step", desc="ablate", dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 30)
        progress, shown = {}, None
        try:
            while pending or running:
                while pending and len(running) < self.parallel:
                    job = pending.pop(0)
                    self.start(job)
                    running.append(job)
                time.sleep(0.25)
                for job in list(running):
                    key = id(job)
                    done = job["proc"].poll() is not None
                    it = job["max_iters"] if done else min(last_iter(os.path.join(job["run_dir"], "metrics.jsonl")),
                                                           job["max_iters"])
                    if it > progress.get(key, 0):
                        bar.update(it - progress.get(key, 0))
                        progress[key] = it
                    if done:
                        running.remove(job)
                        msg = self.finish(job)
                        if msg:
                            bar.write(msg, file=sys.stderr)
                names = ", ".join(f"{j['variant']}/seed{j['seed']}" for j in running)
                if names != shown:
                    bar.set_postfix_str(names[:80], refresh=False)
                    shown = names
        except KeyboardInterrupt:
            for job in running:  # only the processes this sweep started
                job["proc"].terminate()
            for job in running:
                try:
                    job["proc"].wait(timeout=10)
                except subprocess.TimeoutExpired:
                    job["proc"].kill()
                job["log"].close()
            bar.close()
            raise
        bar.close()


# ----------------------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Run variants x seeds of config/ablate_recipe.py and tabulate them. Extra --key=value "
                    "arguments go to every train.py run.", allow_abbrev=False)
    p.add_argument("--variants", help="comma-separated names from --list, or 'all'")
    p.add_argument("--seeds", default="1337,1338,1339", help="comma-separated seeds (default: %(default)s)")
    p.add_argument("--out_dir", default="out/ablate", help="runs and outputs go here (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="train.py device (default: %(default)s)")
    p.add_argument("--parallel", type=int, default=1, help="runs at once (default: 1)")
    p.add_argument("--threads", type=int, default=0, help="threads per run on CPU (default: cores // parallel)")
    p.add_argument("--recipe", default=RECIPE, help="the train.py config file (default: config/ablate_recipe.py)")
    p.add_argument("--wall_clock", type=float, default=None, metavar="S",
                   help="also report each variant's val loss interpolated at S training seconds")
    p.add_argument("--reference", action="append", default=[], metavar="NAME=PATH",
                   help="add a row from a JSON made elsewhere (e.g. tools/run_reference.py); repeatable")
    p.add_argument("--include", action="append", default=[], metavar="PATH",
                   help="take finished runs from a saved ablate_runs.json; repeatable")
    p.add_argument("--baseline", default=None, help="the row the Δ column compares with (default: the first variant)")
    p.add_argument("--assets", default=None, metavar="DIR", help="also copy the table, JSON and plot into DIR")
    p.add_argument("--report_only", action="store_true", help="run nothing: tabulate the finished runs")
    p.add_argument("--keep_ckpt", action="store_true", help="keep each run's checkpoints (default: delete them)")
    p.add_argument("--pos_buckets", default="", metavar="E1,E2,...",
                   help="also report the final model's val CE by position in the context, in the buckets these "
                        "positions bound (e.g. 128,512 at block_size 1024: 0-128, 128-512, 512-1024)")
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    p.add_argument("--title", default=None, help="plot title (default: the dataset and the number of steps)")
    args, extra = p.parse_known_args(argv)
    return p, args, extra


def main(argv=None):
    parser, args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    docs = variant_docs()
    if args.list:
        width = max(len(n) for n in VARIANTS)
        for name, ov in VARIANTS.items():
            print(f"{name:<{width}}  {' '.join(override_args(ov)) or '(the recipe)'}\n{'':<{width}}  {docs.get(name, '')}")
        return 0

    # ---- check the input before anything slow
    if not args.variants:
        raise AblateError("--variants is required (see --list)")
    names = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise AblateError(f"unknown variant {', '.join(map(repr, unknown)) or '(none given)'}; known: {', '.join(VARIANTS)}")
    names = list(dict.fromkeys(names))
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise AblateError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise AblateError(f"--seeds must be distinct integers, got {args.seeds!r}")
    if args.parallel < 1 or args.threads < 0:
        raise AblateError("--parallel must be >= 1 and --threads >= 0")
    try:
        pos_buckets = sorted({int(e) for e in args.pos_buckets.split(",") if e.strip()})
    except ValueError:
        raise AblateError(f"--pos_buckets must be comma-separated positions, got {args.pos_buckets!r}") from None
    if any(e <= 0 for e in pos_buckets):
        raise AblateError(f"--pos_buckets must be positive positions, got {args.pos_buckets!r}")
    if not os.path.isfile(args.recipe):
        raise AblateError(f"recipe not found: {args.recipe}")
    for a in extra:
        if not re.match(r"^--\w+=", a):
            raise AblateError(f"unexpected argument {a!r}: extra arguments must be train.py --key=value overrides")
        if a.split("=")[0] in ("--seed", "--out_dir", "--device", "--init_from"):
            raise AblateError(f"{a.split('=')[0]} is set per run by ablate.py (use --seeds / --out_dir / --device)")
    refs = []
    for spec in args.reference:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise AblateError(f"--reference expects NAME=PATH, got {spec!r}")
        refs.append((name, path, load_reference(name, path)))
    included = [load_included(path, os.path.relpath(args.recipe, ROOT)) for path in args.include]
    baseline = args.baseline or names[0]
    if baseline not in names and baseline not in [r[0] for r in refs]:
        raise AblateError(f"--baseline {baseline!r} is not one of the rows")

    # ---- resolve every run's config (checks every override as train.py will)
    defaults = train_defaults()
    out_dir = os.path.abspath(args.out_dir)
    threads = 0
    if args.device == "cpu":
        threads = args.threads or max(1, cpu_cores() // args.parallel)
    variants, jobs, skipped, reruns, stale, from_earlier = {}, [], 0, 0, set(), {}
    for name in names:
        run_args = override_args(VARIANTS[name]) + extra
        try:
            cfg = resolve_config(defaults, args.recipe, run_args + [f"--device={args.device}"])
        except AblateError as e:
            raise AblateError(f"variant {name}: {e}") from None
        params, params_nonemb = count_params(cfg)
        what = docs.get(name, "")
        if not VARIANTS[name] and os.path.abspath(args.recipe) != RECIPE:  # the comment describes RECIPE
            what = f"the recipe file unchanged ({os.path.relpath(args.recipe, ROOT)})"
        variants[name] = {"how": " ".join(override_args(VARIANTS[name])) or "(the recipe)", "what": what,
                          "overrides": VARIANTS[name], "params": params, "params_nonemb": params_nonemb,
                          "config": cfg, "tokens": cfg["max_iters"] * cfg["batch_size"] * cfg["block_size"] * cfg["gradient_accumulation_steps"],
                          "max_iters": cfg["max_iters"], "dataset": os.path.basename(os.path.normpath(cfg["data_dir"]))
                          if cfg.get("data_dir") else cfg["dataset"], "runs": []}
        for inc in included:
            if name not in inc["rows"]:
                continue
            old_overrides, _, old_cfg = inc["rows"][name]
            if old_overrides != VARIANTS[name]:
                raise AblateError(f"--include {inc['path']}: its {name} was made with other overrides "
                                  f"({' '.join(override_args(old_overrides or {})) or 'none'})")
            if not isinstance(old_cfg, dict):
                raise AblateError(f"--include {inc['path']}: its {name} has no saved config, so nothing shows it was "
                                  "made with this one; run it here")
            diff = config_differences(old_cfg, cfg)
            if diff:
                raise AblateError(f"--include {inc['path']}: its {name} was made with another config: "
                                  + ", ".join(f"{k}={old_cfg.get(k)!r} there, {cfg.get(k)!r} here" for k in diff[:3]))
        for seed in seeds:
            run_dir = os.path.join(out_dir, name, f"seed{seed}")
            spec_args = [os.path.relpath(args.recipe, ROOT), *run_args, f"--device={args.device}", f"--seed={seed}"]
            cmd = [sys.executable, os.path.join(ROOT, "train.py"), args.recipe, *run_args, f"--out_dir={run_dir}",
                   f"--seed={seed}", f"--device={args.device}"]
            if threads and not any(a.startswith("--num_threads=") for a in extra):
                cmd.append(f"--num_threads={threads}")
            old_spec = None
            try:
                with open(os.path.join(run_dir, RUN_SPEC)) as f:
                    old_spec = json.load(f)
            except (OSError, json.JSONDecodeError):
                pass
            complete = is_complete(run_dir, cfg["max_iters"])
            if complete and old_spec is not None and same_settings(old_spec, spec_args, cfg):
                skipped += 1
                continue
            earlier = [inc["rows"][name][1][seed] for inc in included
                       if name in inc["rows"] and seed in inc["rows"][name][1]]
            if earlier:
                from_earlier[(name, seed)] = earlier[0]
                continue
            if complete or old_spec is not None:  # finished with other settings, or with none recorded
                reruns += 1
                stale.add(run_dir)
            jobs.append({"variant": name, "seed": seed, "run_dir": run_dir, "cmd": cmd, "spec_args": spec_args, "config": cfg,
                         "max_iters": cfg["max_iters"], "threads": threads, "device": args.device})

    total = len(names) * len(seeds)
    failed = []
    if from_earlier:
        print(f"ablate: {len(from_earlier)} runs taken from --include (not run here)")
    if args.report_only:
        print(f"ablate: {total} runs ({len(names)} variants x {len(seeds)} seeds): report only, "
              f"{skipped} complete, {len(jobs)} not" + (f" ({len(stale)} made with other settings: left out)"
                                                        if stale else ""))
    else:
        print(f"ablate: {total} runs ({len(names)} variants x {len(seeds)} seeds): {len(jobs)} to run, "
              f"{skipped} already complete (skipped)" + (f", {reruns} with other settings (rerun)" if reruns else "")
              + (f"; {args.parallel} at a time" + (f", {threads} thread(s) each" if threads else "") + f" on {args.device}"
                 if jobs else ""), flush=True)
        if jobs:
            jobs.sort(key=lambda job: seeds.index(job["seed"]))  # seed by seed: a cut-short sweep has every variant once
            sweep = Sweep(jobs, args.parallel, args.keep_ckpt, pos_buckets)
            try:
                sweep.run()
            except KeyboardInterrupt:
                print("interrupted: run the same command again to continue", file=sys.stderr)
                return 130
            failed = sweep.failed
        print(f"ablate: ran {len(jobs) - len(failed)}, skipped {skipped}, failed {len(failed)}", flush=True)

    # ---- gather, tabulate, plot
    rows = []
    for name in names:
        v = variants[name]
        for seed in seeds:
            run_dir = os.path.join(out_dir, name, f"seed{seed}")
            if (name, seed) in from_earlier:
                v["runs"].append(from_earlier[(name, seed)])
                continue
            if args.report_only and run_dir in stale:
                continue
            run = summarize_run(run_dir, seed, v["max_iters"])
            if run is not None and pos_buckets and (run.get("val_by_pos") or {}).get("edges") != \
                    bucket_bounds(pos_buckets, v["config"]["block_size"]):
                measured = position_losses(run_dir, v["config"], seed, pos_buckets, threads)
                if measured:
                    run["val_by_pos"] = measured
            if run is not None:
                v["runs"].append(run)
        v["summary"] = summarize(v, args.wall_clock)
        rows.append({"name": name, **v})
    for name, path, ref in refs:
        entry = {"name": name, "what": ref.get("how", ""), "how": ref.get("how", ""), "reference": os.path.abspath(path),
                 "params": ref.get("params"), "params_nonemb": ref.get("params_nonemb"), "tokens": ref.get("tokens"),
                 "runs": ref["runs"]}
        entry["summary"] = summarize(entry, args.wall_clock)
        rows.append(entry)
    if args.report_only and not any(variants[n]["runs"] for n in names):
        raise AblateError(f"--report_only: no finished run of {', '.join(names)} (seeds {args.seeds}) in {out_dir}; "
                          f"run the sweep first (the same command without --report_only), or give --include")
    os.makedirs(out_dir, exist_ok=True)
    par = sorted({(r.get("parallel"), r.get("threads"), r.get("device")) for v in variants.values() for r in v["runs"]
                  if r.get("parallel") is not None}, key=str)
    earlier_notes = []
    for inc in included:
        n = sum(r["included_from"] == inc["path"] for r in from_earlier.values())
        if n:
            earlier_notes.append(f"{n} run(s) read from {inc['path']} (--include)"
                                 + (f" (made with {' '.join(inc['extra']) or 'no extra overrides'})"
                                    if inc["extra"] != extra else "")
                                 + ": timings compare only between runs made side by side. ")
    note = (f"Recipe: {os.path.relpath(args.recipe, ROOT)}" + (f" + {' '.join(extra)}" if extra else "")
            + f"; seeds {', '.join(map(str, seeds))}. val CE: final evaluation, nats/token on held-out stories; "
            "std over seeds. train s: time in training steps (evaluation excluded); wall s: elapsed to the last step. "
            + ("Runs ran " + "; ".join(f"{p} at a time with {t or 'default'} thread(s) each on {d}" for p, t, d in par) + ". "
               if par else "")
            + (f"val @ {args.wall_clock:g} train s: val curve interpolated at that training time (final loss if the "
               "run finished sooner). " if args.wall_clock is not None else "")
            + "".join(earlier_notes) + "Reference rows: their 'how'.")
    table = make_table(rows, baseline, args.wall_clock, note)
    paths = [os.path.join(out_dir, f) for f in OUTPUTS]
    with open(paths[0], "w") as f:
        f.write(table)
    with open(paths[1], "w") as f:
        json.dump({"recipe": os.path.relpath(args.recipe, ROOT), "extra_overrides": extra, "seeds": seeds,
                   "device": args.device, "wall_clock": args.wall_clock, "baseline": baseline,
                   "rows": rows}, f, indent=1)
    try:
        first = variants[names[0]]
        title = args.title or f"{first['dataset']}, {first['max_iters']} steps"
        make_plot([r for r in rows if r["runs"]], paths[2], title)
    except Exception as e:  # the table matters more than the picture
        print(f"note: no plot ({type(e).__name__}: {e})", file=sys.stderr)
        paths = paths[:2]
    print(table)
    print("wrote " + ", ".join(os.path.relpath(p) for p in paths))
    if args.assets:
        os.makedirs(args.assets, exist_ok=True)
        for p in paths:
            shutil.copy(p, os.path.join(args.assets, os.path.basename(p)))
        command = " ".join(["python ablate.py", *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))])
        write_page_section(os.path.join(args.assets, PAGE), command, table)
        print(f"copied them into {args.assets}, and the command and table into {os.path.join(args.assets, PAGE)}")
    missing = [n for n in names if len(variants[n]["runs"]) < len(seeds)]
    if missing and not failed:
        print(f"note: unfinished runs in {', '.join(missing)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AblateError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
