"""
Plot the loss curves of training runs from their out_dir/metrics.jsonl: one run per curve, or several
seeds of a run as their mean with a shaded min-max band.

$ python plot_metrics.py out-tinystories-cpu out-gpt-tinystories-cpu --labels MicroRWKV GPT --x tokens
$ python plot_metrics.py "out/rwkv/seed*" "out/gpt/seed*" --labels RWKV GPT --x tokens   # mean of the seeds
$ python plot_metrics.py out-tinystories-cpu out-gpt-tinystories-cpu --out assets/loss_curves.png

Each positional argument is one group (one colour, one label): an out_dir, a metrics.jsonl file, a
directory whose subdirectories are out_dirs (e.g. out/rwkv holding seed0/, seed1/), or a quoted glob
pattern of any of those. A group of one run is drawn as before: a thin line for the per-step training loss
(an exponential moving average, --smooth per step) and markers joined by a thick line for the evaluated val
loss (dashed: evaluated train loss). A group of several runs draws the mean of its runs at the points
all of them logged (same x: the eval points are at equal tokens across seeds of one config), with the
min-max range across runs shaded. The x axis is the optimizer step (--x iter), the number of training
tokens (--x tokens) or the wall-clock time in seconds (--x time; a group's runs are then aligned by step and
placed at their mean time, and eval points are not drawn).

The image goes to --out (default out/loss_curves.png), written to a temp file and renamed; assets/ is only
written when --out names it.
"""

import argparse
import glob
import os
import sys

from metrics import save_figure, steps_and_evals, unwritable

METRICS = "metrics.jsonl"


def read_metrics(path):
    """(step rows, eval rows) of a metrics.jsonl file or of the out_dir holding one."""
    return steps_and_evals(path)


def expand_group(pattern):
    """The runs (out_dirs or metrics.jsonl files) one positional argument names, sorted; [] if none."""
    runs = []
    for path in sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]:
        if os.path.isfile(path) or os.path.isfile(os.path.join(path, METRICS)):
            runs.append(path)
        elif os.path.isdir(path):  # a directory of runs, e.g. out/rwkv/{seed0,seed1}
            runs += sorted(d for d in glob.glob(os.path.join(glob.escape(path), "*"))
                           if os.path.isfile(os.path.join(d, METRICS)))
    return runs


def smooth(xs, values, alpha):
    """Bias-corrected exponential moving average with factor `alpha` per step: rows logged every
    k steps are averaged with alpha ** k, so the curve does not depend on log_interval."""
    out, avg, weight, prev = [], 0.0, 0.0, None
    for x, v in zip(xs, values):
        a = alpha ** max(1, x - prev) if prev is not None else alpha
        avg, weight, prev = a * avg + (1 - a) * v, a * weight + (1 - a), x
        out.append(avg / weight if weight > 0 else v)
    return out


def aggregate(curves):
    """curves: one {key: (x, y)} per run. At the keys every run has: (xs, mean, min, max) of y, x averaged
    (equal across runs unless x is time), sorted by key; and how many keys some run lacked."""
    common = set(curves[0])
    for c in curves[1:]:
        common &= set(c)
    dropped = len(set().union(*curves) - common)
    keys = sorted(common)
    n = len(curves)
    xs = [sum(c[k][0] for c in curves) / n for k in keys]
    ys = [[c[k][1] for c in curves] for k in keys]
    return xs, [sum(v) / n for v in ys], [min(v) for v in ys], [max(v) for v in ys], dropped


def group_curves(runs, args):
    """(train, val, eval-train) aggregates of one group; each is None when no run has such rows."""
    xkey = {"iter": "iter", "tokens": "tokens", "time": "elapsed_s"}[args.x]
    align = "iter" if args.x == "time" else xkey  # seeds log time differently: align them by step
    train, val, etrain = [], [], []
    for run in runs:
        steps, evals = read_metrics(run)
        if steps:
            ys = smooth([r["iter"] for r in steps], [r["train_loss"] for r in steps], args.smooth)
            train.append({r.get(align, r["iter"]): (r.get(xkey, r["iter"]), y) for r, y in zip(steps, ys)})
        if evals and args.x != "time":
            val.append({r.get(align, r["iter"]): (r.get(xkey, r["iter"]), r["eval_val"]) for r in evals})
            etrain.append({r.get(align, r["iter"]): (r.get(xkey, r["iter"]), r["eval_train"]) for r in evals})
    out = []
    for curves in (train, val, etrain):
        if curves and len(curves) != len(runs):
            raise ValueError(f"only {len(curves)} of the group's {len(runs)} runs have these rows")
        out.append(aggregate(curves) if curves else None)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="one group per argument: an out_dir, its metrics.jsonl, a directory "
                        "of out_dirs or a quoted glob pattern (several runs: their mean and min-max band)")
    parser.add_argument("--labels", nargs="+", help="one label per group (default: the argument itself)")
    parser.add_argument("--out", default="out/loss_curves.png", help="image to write (default: %(default)s)")
    parser.add_argument("--x", choices=["iter", "tokens", "time"], default="iter", help="x axis (default: iter)")
    parser.add_argument("--smooth", type=float, default=0.9, help="EMA factor per step for the train loss (default: 0.9)")
    parser.add_argument("--title", default="TinyStories", help="plot title")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.runs):
        parser.error(f"{len(args.labels)} labels for {len(args.runs)} groups")
    if not 0.0 <= args.smooth < 1.0:
        parser.error("--smooth must be in [0, 1)")
    if why := unwritable(args.out):
        parser.error(f"--out {args.out}: {why}; give a writable path (default: out/loss_curves.png)")

    groups = []
    for i, pattern in enumerate(args.runs):
        runs = expand_group(pattern)
        if not runs:
            print(f"error: {pattern}: no {METRICS} there (not a run, a directory of runs or a matching glob)",
                  file=sys.stderr)
            return 1
        label = args.labels[i] if args.labels else (
            pattern if glob.has_magic(pattern) else os.path.basename(os.path.normpath(pattern)))
        try:
            curves = group_curves(runs, args)
        except OSError as e:
            print(f"error: cannot read metrics of {e.filename or pattern}: {e.strerror}", file=sys.stderr)
            return 1
        except (KeyError, ValueError) as e:
            print(f"error: {pattern}: {e}", file=sys.stderr)
            return 1
        if not any(curves):
            print(f"error: {pattern}: no step or evaluation rows in its {METRICS} (a run that has not logged yet); "
                  f"give runs that have", file=sys.stderr)
            return 1
        groups.append((label, runs, curves))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (label, runs, (train, val, etrain)) in enumerate(groups):
        color, n = f"C{i}", len(runs)
        name = label if n == 1 else f"{label} (mean of {n})"
        if train:
            xs, mean, lo, hi, _ = train
            ax.plot(xs, mean, color=color, alpha=0.5, linewidth=1, label=f"{name} train (EMA {args.smooth:g} per step)")
            if n > 1:
                ax.fill_between(xs, lo, hi, color=color, alpha=0.12, linewidth=0)
        if val:
            xs, mean, lo, hi, _ = val
            ax.plot(xs, mean, "o-", color=color, linewidth=2, label=f"{name} val")
            if n > 1:
                ax.fill_between(xs, lo, hi, color=color, alpha=0.25, linewidth=0, label=f"{label} val min-max")
            xs, mean, lo, hi, _ = etrain
            ax.plot(xs, mean, "x--", color=color, linewidth=1, label=f"{name} train (eval)")
        dropped = [f"{d} {what}" for what, agg in (("step rows", train), ("eval rows", val))
                   if agg and (d := agg[4])]
        last = (val or train)
        if last and last[0]:
            kind, value = ("val", "val") if val else ("train", "train (EMA)")
            spread = f" (min {last[2][-1]:.4f}, max {last[3][-1]:.4f})" if n > 1 else ""
            print(f"{label}: {n} run{'s' * (n > 1)}; last {value} loss {last[1][-1]:.4f}{spread} at x={last[0][-1]:g}"
                  + (f"; left out {', '.join(dropped)} not logged by every run" if dropped else ""))
        else:
            print(f"{label}: {n} run{'s' * (n > 1)}; no rows to plot")
    ax.set_xlabel({"iter": "step", "tokens": "training tokens", "time": "seconds"}[args.x])
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, args.out)
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
