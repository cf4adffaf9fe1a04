"""
Training metrics: the out_dir/metrics.jsonl rows train.py writes and plot_metrics.py / ablate.py read, and
the peak FLOP/s that model FLOPs utilisation (MFU) is measured against.

Rows (one JSON object per line; every loss is cross-entropy in nats per token):
    per logged step   iter, train_loss, aux_loss (MoE load balancing, unweighted), lr, dt_ms, tok_s,
                      tflops (achieved), mfu (only against a known peak), tokens, elapsed_s
    per evaluation    iter, eval_train, eval_val, tokens
"""

import json
import os

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


def restart_metrics(path, keep_until_iter=None):
    """Rewrite metrics.jsonl atomically for a new run (empty) or a resumed one (the rows up to its
    checkpoint's iteration), and open it for appending."""
    rows = []
    if keep_until_iter is not None and os.path.exists(path):
        rows = [r for r in read_metrics(path) if r.get("iter", 0) <= keep_until_iter]
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(path + ".tmp", path)
    return open(path, "a")
