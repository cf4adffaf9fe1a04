"""
Plot the loss curves of one or more training runs from their out_dir/metrics.jsonl.

$ python plot_metrics.py out-tinystories-cpu out-gpt-tinystories-cpu --labels MicroRWKV GPT \
      --out assets/loss_curves.png

Each run gets one colour: a thin line for the per-step training loss (an exponential moving average, --smooth per step),
and markers joined by a thick line for the evaluated val loss (dashed: evaluated train loss).
The x axis is the optimizer step (--x iter), the number of training tokens (--x tokens) or the
wall-clock time in seconds (--x time).
"""

import argparse
import json
import os
import sys


def read_metrics(path):
    """(step rows, eval rows) of a metrics.jsonl file or of the out_dir holding one."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    steps, evals = [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash
            if "train_loss" in row:
                steps.append(row)
            if "eval_val" in row:
                evals.append(row)
    return steps, evals


def smooth(xs, values, alpha):
    """Bias-corrected exponential moving average with factor `alpha` per step: rows logged every
    k steps are averaged with alpha ** k, so the curve does not depend on log_interval."""
    out, avg, weight, prev = [], 0.0, 0.0, None
    for x, v in zip(xs, values):
        a = alpha ** max(1, x - prev) if prev is not None else alpha
        avg, weight, prev = a * avg + (1 - a) * v, a * weight + (1 - a), x
        out.append(avg / weight if weight > 0 else v)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description="Plot training/validation loss curves from metrics.jsonl files.")
    parser.add_argument("runs", nargs="+", help="out_dir of a run (or its metrics.jsonl)")
    parser.add_argument("--labels", nargs="+", help="one label per run (default: the out_dir names)")
    parser.add_argument("--out", default="assets/loss_curves.png", help="image to write (default: %(default)s)")
    parser.add_argument("--x", choices=["iter", "tokens", "time"], default="iter", help="x axis (default: iter)")
    parser.add_argument("--smooth", type=float, default=0.9, help="EMA factor per step for the train loss (default: 0.9)")
    parser.add_argument("--title", default="TinyStories", help="plot title")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.runs):
        parser.error(f"{len(args.labels)} labels for {len(args.runs)} runs")
    if not 0.0 <= args.smooth < 1.0:
        parser.error("--smooth must be in [0, 1)")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xkey = {"iter": "iter", "tokens": "tokens", "time": "elapsed_s"}[args.x]
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, run in enumerate(args.runs):
        label = args.labels[i] if args.labels else os.path.basename(os.path.normpath(run))
        try:
            steps, evals = read_metrics(run)
        except OSError as e:
            print(f"error: cannot read metrics of {run}: {e.strerror}", file=sys.stderr)
            return 1
        color = f"C{i}"
        if steps:
            xs = [r.get(xkey, r["iter"]) for r in steps]
            ys = smooth([r["iter"] for r in steps], [r["train_loss"] for r in steps], args.smooth)
            ax.plot(xs, ys, color=color, alpha=0.5,
                    linewidth=1, label=f"{label} train (EMA {args.smooth:g} per step)")
        if evals and args.x != "time":
            xs = [r.get(xkey, r["iter"]) for r in evals]
            ax.plot(xs, [r["eval_val"] for r in evals], "o-", color=color, linewidth=2, label=f"{label} val")
            ax.plot(xs, [r["eval_train"] for r in evals], "x--", color=color, linewidth=1, label=f"{label} train (eval)")
        if steps or evals:
            last = (evals or steps)[-1]
            print(f"{label}: {len(steps)} step rows, {len(evals)} evals; last "
                  + (f"val loss {last['eval_val']:.4f} at iter {last['iter']}" if evals
                     else f"train loss {last['train_loss']:.4f} at iter {last['iter']}"))
    ax.set_xlabel({"iter": "step", "tokens": "training tokens", "time": "seconds"}[args.x])
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out_dir = os.path.dirname(args.out)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
