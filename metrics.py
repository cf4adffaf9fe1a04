"""
Training metrics: the out_dir/metrics.jsonl rows train.py writes and plot_metrics.py / ablate.py read, the
peak FLOP/s that model FLOPs utilisation (MFU) is measured against, and the atomic figure writer the
plotting scripts share.

Rows (one JSON object per line; every loss is cross-entropy in nats per token):
    per logged step   iter, train_loss, aux_loss (MoE load balancing, unweighted), lr, dt_ms, tok_s,
                      tflops (achieved), mfu (only against a known peak), tokens, elapsed_s
    per evaluation    iter, eval_train, eval_val, tokens
"""

import json
import os
import tempfile

# Dense bf16/fp16 tensor-core peaks (FLOP/s) of common GPUs, from their vendors' data sheets. MFU is only
# reported against one of these (or the peak_flops config key): a number against the wrong peak misleads.
PEAK_FLOPS_16BIT = {
    "H200": 989e12, "H100 SXM": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 756e12,
    "A100": 312e12, "A10G": 70e12, "A10": 125e12, "L40S": 362e12, "L4": 121e12, "V100": 125e12,
    "RTX 4090": 165e12, "RTX 3090": 71e12, "T4": 65e12,
}


def peak_flops(device_name, dtype, configured=0.0):
    """The peak to measure MFU against: `configured` if > 0, else the table's entry for a GPU whose name
    contains a key (bf16/fp16 only: float32 runs on other units), else None (report no MFU)."""
    if configured > 0:
        return configured
    if dtype not in ("bfloat16", "float16"):
        return None
    for key in sorted(PEAK_FLOPS_16BIT, key=len, reverse=True):  # 'H100 SXM' before 'H100'
        if key in device_name:
            return PEAK_FLOPS_16BIT[key]
    return None


def read_metrics(path):
    """The rows of a metrics.jsonl file (or of the out_dir holding one); a line torn by a crash is skipped."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return rows


def steps_and_evals(path):
    """(step rows, evaluation rows) of a metrics.jsonl file or of the out_dir holding one."""
    rows = read_metrics(path)
    return [r for r in rows if "train_loss" in r], [r for r in rows if "eval_val" in r]


def save_figure(fig, path, dpi=120):
    """A matplotlib figure to path (its format from the extension) through a temp file in the same directory,
    renamed over it only when complete: an interrupted run never leaves half a picture."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    ext = os.path.splitext(path)[1] or ".png"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=ext)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, format=ext[1:])
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class MetricsLog:
    """out_dir/metrics.jsonl, rewritten atomically for a new run (empty) or a resumed one (the rows up to its
    checkpoint's iteration), then appended to row by row; each row also goes to a wandb run, if given one."""

    def __init__(self, path, keep_until_iter=None, wandb_run=None):
        rows = []
        if keep_until_iter is not None and os.path.exists(path):
            rows = [r for r in read_metrics(path) if r.get("iter", 0) <= keep_until_iter]
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(path + ".tmp", path)
        self.file, self.wandb_run = open(path, "a"), wandb_run

    def log(self, row):
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in row.items() if k != "iter"}, step=row["iter"])

    def close(self):
        self.file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
