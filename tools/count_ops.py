"""
Operator counts of TimeMix's forward + backward (torch.profiler), per sequence length, for both RWKV versions:
a Python loop over chunks shows up as a count that grows with T.

    python tools/count_ops.py                                  # T = 256 and 1024 -> out/count_ops.txt
    python tools/count_ops.py --seq_lens 256 1024 4096 --out out/count_ops.txt

Counted: the aten:: operator calls the profiler records, top-level (what the Python code and autograd
dispatch) and all (nested calls included, e.g. aten::matmul and the aten::bmm it runs), while one TimeMix
(x051a) or TimeMix7 (x070) layer (layer 1 of 2) runs forward from a zero state and backward from
(y.sum() + S.sum()), in float32 on the CPU, batch 1, n_embd 384, head_size 64, the default chunk_len.
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
    """(top-level, all) aten operator calls in block's forward + backward on x. Top-level: the operators the
    Python code and autograd dispatch (one GPU kernel launch or more each), not the ones they call inside
    (the CPU bmm kernel, for one, splits a batch of strided matrices into a select and a copy per matrix)."""
    x = x.detach().requires_grad_()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        y, (_, S), _ = block(x, None, x if isinstance(block, TimeMix7) and block.layer_id > 0 else None)
        (y.sum() + S.sum()).backward()
    events = [e for e in prof.events() if e.name.startswith("aten::")]

    def nested(e):
        parent = e.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return True
            parent = parent.cpu_parent
        return False

    return sum(not nested(e) for e in events), len(events)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq_lens", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--n_embd", type=int, default=384)
    parser.add_argument("--out", default="out/count_ops.txt")
    args = parser.parse_args()
    torch.manual_seed(0)
    header = "  ".join(f"T={T:<6}" for T in args.seq_lens) + "  ratios to T=" + str(args.seq_lens[0])
    lines = [f"$ python {' '.join(sys.argv)}", f"version  chunk_len  operators   {header}"]
    for version, cls in (("x051a", TimeMix), ("x070", TimeMix7)):
        config = GPTConfig(n_layer=2, n_embd=args.n_embd, head_size=64, rwkv_version=version)
        block = cls(config, layer_id=1)
        counts = [count_ops(block, torch.randn(1, T, args.n_embd)) for T in args.seq_lens]
        for i, kind in enumerate(("top-level", "all")):
            lines.append(f"{version:<8} {config.chunk_len:<10} {kind:<10}  " + "  ".join(f"{c[i]:<8}" for c in counts)
                         + "  " + " ".join(f"{c[i] / counts[0][i]:.3f}" for c in counts[1:]))
    text = "\n".join(lines) + "\n"
    print(text, end="")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, out)


if __name__ == "__main__":
    main()
