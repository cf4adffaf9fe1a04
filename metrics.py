"""
Training metrics: the out_dir/metrics.jsonl rows train.py writes and plot_metrics.py / ablate.py read, the
peak FLOP/s that model FLOPs utilisation (MFU) is measured against, and the output helpers every script
shares: the check that an output path can be written (made before any work starts, so a long run never ends
on a failed write) and the atomic writers (a temp file renamed when complete).

Rows (one JSON object per line; every loss is cross-entropy in nats per token):
    per logged step   iter, train_loss, aux_loss (MoE load balancing, unweighted), lr, dt_ms, tok_s,
                      tflops (achieved), mfu (only against a known peak), tokens, elapsed_s
    per evaluation    iter, eval_train, eval_val, tokens
"""

import contextlib
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


def unwritable(path, directory=False):
    """Why `path` (a file to write; with directory=True, a directory to write files into) cannot be written,
    as one line, or None if it can. Checked before any work starts; leaves nothing behind: the folders that do
    not exist yet are made by the writer, so a temp file is tried in the nearest one that does."""
    path = os.path.abspath(path)
    if os.path.isdir(path) and not directory:
        return f"{path} is a directory"
    folder = path if directory else os.path.dirname(path)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        return f"{folder} is a file, not a directory"
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        return f"cannot write in {folder} ({e.strerror})"
    return None


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """A temp path beside `path`, renamed to it when the block completes (removed if it fails). The file
    gets a normal file's mode (mkstemp makes it private)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(path, text):
    """`text` to path through atomic_path."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def save_figure(fig, path, dpi=120):
    """A matplotlib figure to path (its format from the extension) through atomic_path: an interrupted run
    never leaves half a picture."""
    ext = os.path.splitext(path)[1] or ".png"
    with atomic_path(path, suffix=ext) as tmp:
        fig.savefig(tmp, dpi=dpi, format=ext[1:])


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
