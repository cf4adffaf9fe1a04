"""
Operator counts of TimeMix's forward + backward (torch.profiler), per sequence length, for both RWKV versions:
a Python loop over chunks shows up as a count that grows with T.

    python tools/count_ops.py                                  # T = 256 and 1024 -> out/count_ops.txt
    python tools/count_ops.py --seq_lens 256 1024 4096 --out out/count_ops.txt

Counted: every aten:: operator call the profiler records (nested calls included, e.g. aten::matmul and the
aten::bmm it runs) while one TimeMix (x051a) or TimeMix7 (x070) layer runs forward from a zero state and
backward from (y.sum() + S.sum()), in float32 on the CPU, batch 1, n_embd 384, head_size 64, default chunk_len.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import GPTConfig, TimeMix, TimeMix7  # noqa: E402


def count_ops(block, x):
    """The number of aten operator calls in block's forward + backward on x."""
    x = x.detach().requires_grad_()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        y, (_, S), _ = block(x, None, x if isinstance(block, TimeMix7) and block.layer_id > 0 else None)
        (y.sum() + S.sum()).backward()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq_lens", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--n_embd", type=int, default=384)
    parser.add_argument("--out", default="out/count_ops.txt")
    args = parser.parse_args()
    torch.manual_seed(0)
    lines = [f"$ python {' '.join(sys.argv)}", "version  layer  chunk_len  " + "  ".join(f"T={T:<6}" for T in args.seq_lens)
             + f"  ratio T={args.seq_lens[-1]}/T={args.seq_lens[0]}"]
    for version, cls in (("x051a", TimeMix), ("x070", TimeMix7)):
        config = GPTConfig(n_layer=2, n_embd=args.n_embd, head_size=64, rwkv_version=version)
        block = cls(config, layer_id=1)
        counts = [count_ops(block, torch.randn(1, T, args.n_embd)) for T in args.seq_lens]
        lines.append(f"{version:<8} {1:<6} {config.chunk_len:<10} " + "  ".join(f"{c:<8}" for c in counts)
                     + f"  {counts[-1] / counts[0]:.3f}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, out)


if __name__ == "__main__":
    main()
