"""
Training throughput: tokens/s of a full training step (forward + backward + AdamW) for RWKV-only models,
full MicroRWKV layers and the GPT baseline, at the same n_layer / n_embd / vocab, measured in one run so
the ratios compare like with like.

    python benchmark_training.py                        # float32, CPU, T = 256 and 1024 -> out/benchmark_training.{txt,json}
    python benchmark_training.py --n_layer=4 --n_embd=256 --seq_lens 128 --tokens_per_step=1024 --steps=3
    python benchmark_training.py --models rwkv,rwkv7,microrwkv-top2,gpt --out out/bench/train.txt

Models (--models, comma-separated):
    rwkv            TimeMix + ChannelMix only (use_swa = use_gqa = use_moe = False), TimeMix x051a
    microrwkv       the full MicroRWKV layer (TimeMix, ChannelMix, SWA, GQA, MoE with all 4 experts active)
    microrwkv-top2  the full layer with top-2 of 4 experts (expert_dim 768) and window_size 256
    rwkv7           like rwkv, with rwkv_version='x070' (RWKV-7 TimeMix)        } need GPTConfig.rwkv_version
    rwkv7-gqa4      rwkv7 with GQA in every 4th layer (use_gqa=True, attn_every=4)
    microrwkv7      like microrwkv, with rwkv_version='x070'                     }
    microrwkv7-top2 like microrwkv-top2, with rwkv_version='x070'               }
    gpt             nanoGPT's transformer

Per sequence length T (batch = --tokens_per_step // T), every model is built; the models take turns for --warmup
untimed steps, then for --repeats timed runs of --steps steps each (run 1 of every model, then run 2,
...), in this one process, so a change of machine load mid-benchmark falls on all models alike. --compile
times torch.compile(model) instead (the first warm-up step compiles; its seconds are in the JSON as
first_step_s). Reported: tokens/s as the median of the runs with
their min and max, the ratio of medians to GPT's at the same T (same run, same machine load), and the
achieved GFLOP/s = model.flops_per_token(T) * tokens/s / 1e9 (matmul FLOPs of forward + backward, as
model.py counts them; '-' for a model without flops_per_token).

Second table, the per-sub-layer breakdown: one more run of --steps steps of the eager model with timing hooks
on every sub-layer (forward pre/post hooks and full backward pre/post hooks), timed separately from the throughput
runs because the hooks add overhead. Each sub-layer's pre-norm LayerNorm counts with it. Parts:
embedding (token/position embedding, ln0, dropout; in backward the embedding gradient, timed from the last
hook to the end of backward), TimeMix, ChannelMix, SWA, GQA, MoE (MicroRWKV), attention and MLP (GPT),
head+loss (final LayerNorm, LM head, cross-entropy; in backward from backward's start to the first hook),
optimizer (AdamW step + zero_grad), and other: the rest of the hooked step (residual adds, autograd and
hook bookkeeping). Each part is in ms per step and % of the hooked step. The timing is wall-clock between
hooks: exact on CPU (ops run synchronously), and on CUDA only because every hook synchronises the device
(which itself slows the hooked step); treat it as approximate. Backward hooks time a module from the
moment its output gradients are ready to the moment its input gradients are; autograd runs a residual
network's sub-layers one after another, so the intervals do not overlap.

The printed text (command, tables) is also written to --out (default out/benchmark_training.txt) and the
numbers as JSON to --out_json (default: --out with .json), each through a temp file and a rename.
"""

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import shlex
import statistics
import sys
import time

import torch
from tqdm import tqdm

from metrics import unwritable, write_atomic
from model import GPTConfig, build_model

RWKV_ONLY = dict(model_type="microrwkv", use_swa=False, use_gqa=False, use_moe=False)
FULL = dict(model_type="microrwkv", use_swa=True, use_gqa=True, use_moe=True)  # every block in every layer
MODELS = {  # name -> GPTConfig overrides
    "rwkv": dict(RWKV_ONLY, rwkv_version="x051a"),
    "microrwkv": dict(FULL, rwkv_version="x051a"),
    "microrwkv-top2": dict(FULL, rwkv_version="x051a", num_experts=4, num_active_experts=2, window_size=256, expert_dim=768),
    "rwkv7": dict(RWKV_ONLY, rwkv_version="x070"),  # chunk_len 64: x070's fastest with the scan over chunks
    "rwkv7-gqa4": dict(RWKV_ONLY, rwkv_version="x070", use_gqa=True, attn_every=4),  # GQA in every 4th layer
    "microrwkv7": dict(FULL, rwkv_version="x070"),
    "microrwkv7-top2": dict(FULL, rwkv_version="x070", num_experts=4,
                            num_active_experts=2, window_size=256, expert_dim=768),
    "gpt": dict(model_type="gpt"),
}
PARTS = ["embedding", "TimeMix", "ChannelMix", "SWA", "GQA", "MoE", "attention", "MLP", "head+loss", "optimizer",
         "other"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------
# Sub-layer timing hooks


def sub_layer_parts(model):
    """{module: part} for the modules whose time is attributed to a part; they do not nest."""
    parts = {}
    for name in ("wte", "wpe", "ln_in", "drop"):
        if isinstance(getattr(model, name, None), torch.nn.Module):
            parts[getattr(model, name)] = "embedding"
    for name in ("ln_f", "lm_head"):
        if isinstance(getattr(model, name, None), torch.nn.Module):
            parts[getattr(model, name)] = "head+loss"
    is_gpt = model.config.model_type == "gpt"

    def part_of(name, module):
        kind = type(module).__name__
        if "TimeMix" in kind:
            return "TimeMix"
        if "ChannelMix" in kind:
            return "ChannelMix"
        if "MoE" in kind:
            return "MoE"
        if "Attention" in kind:
            return "attention" if is_gpt else ("SWA" if getattr(module, "window_size", None) else "GQA")
        if name == "mlp":
            return "MLP"
        return name  # not a known sub-layer: reported under its attribute name

    for block in model.blocks:
        children = dict(block.named_children())
        for name, module in children.items():
            if name.startswith("ln_"):
                target = {"ln_1": "attn", "ln_2": "mlp"}.get(name, name[3:])  # a pre-norm counts with its sub-layer
                if target in children:
                    parts[module] = part_of(target, children[target])
            else:
                parts[module] = part_of(name, module)
    return parts


class SubLayerTimer:
    """Forward and backward wall-clock seconds per part over the steps it has timed (see the module docstring)."""

    def __init__(self, model, device):
        self.device, self.handles = device, []
        self.fwd, self.bwd = {}, {}
        self.starts, self.first_event, self.last_event = {}, None, None
        for module, part in sub_layer_parts(model).items():
            self.handles += [module.register_forward_pre_hook(self._start),
                             module.register_forward_hook(self._stop(part, "fwd"))]
            if not isinstance(module, torch.nn.Embedding):  # its input (token ids) has no gradient: no backward
                self.handles += [module.register_full_backward_pre_hook(self._start),  # hooks; see step()
                                 module.register_full_backward_hook(self._stop(part, "bwd"))]

    def now(self):
        sync(self.device)  # on CUDA the kernels queued so far belong to what ran before this moment
        return time.perf_counter()

    def _event(self):
        t = self.now()
        self.first_event = t if self.first_event is None else self.first_event
        self.last_event = t
        return t

    def _start(self, module, *_):
        self.starts[module] = self._event()

    def _stop(self, part, phase):
        def hook(module, *_):
            self.add(getattr(self, phase), part, self._event() - self.starts.pop(module))
        return hook

    @staticmethod
    def add(table, part, seconds):
        table[part] = table.get(part, 0.0) + seconds

    def step(self, model, optimizer, x, y):
        """One hooked training step; also times what lies outside the hooked modules but belongs to a part:
        the loss after the LM head (and its backward, before the first backward hook), the embedding's
        backward (after the last backward hook) and AdamW. Returns (step seconds, {part: (fwd s, bwd s)})."""
        self.fwd, self.bwd = {}, {}
        self.first_event = self.last_event = None
        t0 = self.now()
        with AUTOCAST[0]:
            _, loss = model(x, y)
        t1 = self.now()
        self.add(self.fwd, "head+loss", t1 - (self.last_event or t1))
        self.first_event = self.last_event = None
        loss.backward()
        t2 = self.now()
        self.add(self.bwd, "head+loss", (self.first_event or t1) - t1)
        self.add(self.bwd, "embedding", t2 - (self.last_event or t2))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t3 = self.now()
        parts = {p: (self.fwd.get(p), self.bwd.get(p)) for p in dict.fromkeys([*self.fwd, *self.bwd])}
        parts["optimizer"] = (None, None, t3 - t2)
        return t3 - t0, parts

    def remove(self):
        for h in self.handles:
            h.remove()


AUTOCAST = [contextlib.nullcontext()]  # --dtype bfloat16: torch.autocast around every forward


def training_step(model, optimizer, x, y):
    with AUTOCAST[0]:
        _, loss = model(x, y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------------------------------
# One model at one sequence length


class Run:
    """One model at one sequence length: its optimizer, a fixed random batch, and the function a step calls (the
    model, or torch.compile of it)."""

    def __init__(self, name, model, batch_size, seq_len, args, device):
        self.name, self.model, self.batch_size, self.seq_len = name, model, batch_size, seq_len
        self.step_fn = torch.compile(model) if args.compile else model
        self.optimizer = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), device.type)
        gen = torch.Generator().manual_seed(0)
        data = torch.randint(0, model.config.vocab_size, (batch_size, seq_len + 1), generator=gen).to(device)
        self.x, self.y = data[:, :-1], data[:, 1:]
        self.runs, self.first_step_s = [], None

    def warm_up_step(self, device):
        t0 = time.perf_counter()
        training_step(self.step_fn, self.optimizer, self.x, self.y)  # with --compile the first one compiles
        sync(device)
        self.first_step_s = self.first_step_s or time.perf_counter() - t0

    def timed_run(self, steps, device):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            training_step(self.step_fn, self.optimizer, self.x, self.y)
        sync(device)
        self.runs.append(self.batch_size * self.seq_len * steps / (time.perf_counter() - t0))

    def hooked_steps(self, steps, device):
        """Steps of the eager model with the sub-layer hooks (hooks do not fire inside a compiled graph)."""
        timer = SubLayerTimer(self.model, device)
        try:
            return [timer.step(self.model, self.optimizer, self.x, self.y) for _ in range(steps)]
        finally:
            timer.remove()


# ----------------------------------------------------------------------------------------------------
# Output


def throughput_table(results):
    lines = [f"{'T':>6} {'model':>15} {'params':>8} {'batch':>5} {'tok/s median':>12} {'min':>9} {'max':>9} "
             f"{'vs gpt':>7} {'GFLOP/s':>8} {'ms/step':>9}"]
    for r in results:
        tps = r["tokens_per_s"]
        ratio = "-" if r["vs_gpt"] is None else f"{r['vs_gpt']:.2f}x"
        gflops = "-" if r["gflops_per_s"] is None else f"{r['gflops_per_s']:.2f}"
        lines.append(f"{r['seq_len']:>6} {r['model']:>15} {r['params'] / 1e6:>7.2f}M {r['batch_size']:>5} "
                     f"{tps['median']:>12.0f} {tps['min']:>9.0f} {tps['max']:>9.0f} {ratio:>7} {gflops:>8} "
                     f"{r['step_ms']:>9.1f}")
    return "\n".join(lines)


def breakdown_table(results):
    lines = [f"{'T':>6} {'model':>15} {'part':>11} {'fwd ms':>9} {'bwd ms':>9} {'ms/step':>9} {'% step':>7}"]
    for r in results:
        b = r["breakdown"]
        for part, p in b["parts"].items():
            fwd, bwd = ("-" if v is None else f"{v:.2f}" for v in (p["fwd_ms"], p["bwd_ms"]))
            lines.append(f"{r['seq_len']:>6} {r['model']:>15} {part:>11} {fwd:>9} {bwd:>9} "
                         f"{p['ms']:>9.2f} {p['pct']:>6.1f}%")
        lines.append(f"{r['seq_len']:>6} {r['model']:>15} {'step':>11} {'':>9} {'':>9} {b['step_ms']:>9.2f} "
                     f"{100.0:>6.1f}%")
    return "\n".join(lines)


def breakdown(hooked):
    """The hooked step of median time (the lower middle one for an even count): {part: fwd / bwd / total ms
    and % of that step}, in PARTS order; other = the step's unattributed rest. Parts of one step, so they
    add up to it exactly."""
    ordered = sorted(hooked, key=lambda h: h[0])
    step_s, parts = ordered[(len(ordered) - 1) // 2]
    out = {}
    ms = lambda s: None if s is None else s * 1e3
    for name in sorted(parts, key=lambda p: PARTS.index(p) if p in PARTS else PARTS.index("other")):
        fwd, bwd, *total = parts[name]
        total = total[0] if total else (fwd or 0.0) + (bwd or 0.0)
        out[name] = {"fwd_ms": ms(fwd), "bwd_ms": ms(bwd), "ms": ms(total), "pct": 100 * total / step_s}
    other = step_s - sum(p["ms"] for p in out.values()) / 1e3
    out["other"] = {"fwd_ms": None, "bwd_ms": None, "ms": other * 1e3, "pct": 100 * other / step_s}
    return {"step_ms": step_s * 1e3, "hooked_steps": len(hooked), "hooked_step_ms_min": ordered[0][0] * 1e3,
            "hooked_step_ms_max": ordered[-1][0] * 1e3, "parts": out}


# ----------------------------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="rwkv,microrwkv,gpt", help="comma-separated, from " + ",".join(MODELS)
                        + " (default: %(default)s)")
    parser.add_argument("--n_layer", type=int, default=6)
    parser.add_argument("--n_embd", type=int, default=384)
    parser.add_argument("--n_head", type=int, default=6, help="attention heads (RWKV heads are n_embd // 64)")
    parser.add_argument("--vocab_size", type=int, default=50304)
    parser.add_argument("--seq_lens", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--tokens_per_step", type=int, default=4096, help="batch_size = this // seq_len")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per model and length: tokens/s is their "
                        "median, with min and max (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="bfloat16: autocast the forward passes (weights and optimizer stay float32)")
    parser.add_argument("--kernel", default="torch", choices=["torch", "fla"],
                        help="GPTConfig.kernel of the MicroRWKV models: fla = fla-core's kernels, CUDA only (default: %(default)s)")
    parser.add_argument("--compile", action="store_true", help="time torch.compile(model) (the warm-up's first step "
                        "compiles; the per-sub-layer breakdown stays eager)")
    parser.add_argument("--out", default="out/benchmark_training.txt", help="the printed text (default: %(default)s)")
    parser.add_argument("--out_json", help="the numbers as JSON (default: --out with .json)")
    args = parser.parse_args(argv)

    names = [n for n in args.models.split(",") if n]
    if not names or not set(names) <= set(MODELS):
        parser.error(f"--models {args.models!r}: choose one or more of {list(MODELS)}")
    for flag in ("steps", "repeats", "tokens_per_step", "threads", "n_layer", "n_embd", "n_head", "vocab_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1")
    if args.warmup < 0 or min(args.seq_lens) < 1:
        parser.error("--warmup must be >= 0 and --seq_lens >= 1")
    if args.compile and args.warmup < 1:
        parser.error("--compile needs --warmup >= 1 (the first step compiles)")
    if args.tokens_per_step < max(args.seq_lens):  # a step is at least one whole sequence: the table would not match
        parser.error(f"--tokens_per_step {args.tokens_per_step} is less than --seq_lens {max(args.seq_lens)}: give "
                     f"--tokens_per_step >= {max(args.seq_lens)}")
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    configs = {}
    for seq_len in args.seq_lens:
        for name in names:
            if missing := sorted(set(MODELS[name]) - fields):
                parser.error(f"model {name} needs GPTConfig field(s) {missing}, which this model.py does not have")
            try:
                configs[seq_len, name] = GPTConfig(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                                                   vocab_size=args.vocab_size, block_size=seq_len, kernel=args.kernel,
                                                   **MODELS[name])
            except (TypeError, ValueError) as e:
                parser.error(f"model {name} at T={seq_len}: {e}")
    try:
        device = torch.device(args.device)
        if args.dtype == "bfloat16":
            AUTOCAST[0] = torch.autocast(device.type, dtype=torch.bfloat16)
    except RuntimeError as e:
        parser.error(f"--device {args.device}: {e}")
    out_json = args.out_json or os.path.splitext(args.out)[0] + ".json"
    for flag, path in (("--out", args.out), ("--out_json", out_json)):
        if why := unwritable(path):  # before the benchmark, not after it
            parser.error(f"{flag} {path}: {why}; give a writable path (default: out/benchmark_training.txt)")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        results = run_all(configs, args, device)
    finally:
        torch.set_num_threads(threads)  # as it was, for a caller in the same process (the tests)

    command = shlex.join(["python", "benchmark_training.py", *(sys.argv[1:] if argv is None else argv)])
    header = (f"n_layer={args.n_layer} n_embd={args.n_embd} n_head={args.n_head} vocab={args.vocab_size} {args.dtype} "
              f"{device} threads={args.threads}{' torch.compile' if args.compile else ''}, {args.tokens_per_step} "
              f"tokens/step, {args.warmup} warm-up steps, "
              f"tokens/s = median (min, max) of {args.repeats} runs of {args.steps} timed steps each, the models "
              f"taking turns")
    text = (f"{command}\n{header}\n\n{throughput_table(results)}\n\n"
            f"forward + backward time per sub-layer type (with its pre-norm), ms and % of one step: the step of "
            f"median time of {args.steps} more steps run with timing hooks{' (eager, not compiled)' if args.compile else ''}"
            f" (the 'step' row; hooks add overhead"
            f"{' and synchronise CUDA: approximate' if device.type == 'cuda' else ''}); optimizer = AdamW step + "
            f"zero_grad, other = the rest (residual adds, autograd)\n{breakdown_table(results)}\n")
    print(text, end="")
    write_atomic(args.out, text)
    write_atomic(out_json, json.dumps({
        "command": command, "device": str(device), "dtype": args.dtype, "threads": args.threads,
        "n_layer": args.n_layer, "n_embd": args.n_embd, "n_head": args.n_head, "vocab_size": args.vocab_size,
        "tokens_per_step": args.tokens_per_step, "steps": args.steps, "repeats": args.repeats,
        "warmup": args.warmup, "compile": args.compile, "results": results}, indent=1))
    print(f"wrote {args.out} and {out_json}")
    return 0


def run_all(configs, args, device):
    """Every model at each T, then the ratios to GPT at the same T. The timed runs take turns (run 1 of every
    model, then run 2, ...), so a change in machine load during the benchmark falls on all models alike instead
    of on whichever model was running then."""
    results = []
    seq_lens = list(dict.fromkeys(T for T, _ in configs))
    progress = tqdm(total=len(configs) * (args.repeats + 2), desc="benchmark", unit="run", file=sys.stderr,
                    mininterval=1.0)
    for seq_len in seq_lens:
        batch_size = max(1, args.tokens_per_step // seq_len)
        runs = {}
        for (T, name), config in configs.items():
            if T == seq_len:
                torch.manual_seed(0)
                runs[name] = Run(name, build_model(config).to(device), batch_size, seq_len, args, device)
        # the warm-up takes turns too: with --compile one model's compile can make another recompile on its next
        # step, which then falls in the warm-up
        for step in range(args.warmup):
            for name, run in runs.items():
                progress.set_postfix_str(f"T={seq_len} {name} warm-up {step + 1}")
                run.warm_up_step(device)
        progress.update(len(runs))
        for repeat in range(args.repeats):
            for name, run in runs.items():
                progress.set_postfix_str(f"T={seq_len} {name} run {repeat + 1}")
                run.timed_run(args.steps, device)
                progress.update()
        for name, run in runs.items():
            progress.set_postfix_str(f"T={seq_len} {name} hooked")
            hooked = run.hooked_steps(args.steps, device)
            progress.update()
            flops = getattr(run.model, "flops_per_token", None)
            flops = flops(seq_len) if callable(flops) else None
            median = statistics.median(run.runs)
            results.append({
                "seq_len": seq_len, "model": name, "params": run.model.get_num_params(), "batch_size": batch_size,
                "tokens_per_s": {"median": median, "min": min(run.runs), "max": max(run.runs), "runs": run.runs},
                "step_ms": batch_size * seq_len / median * 1e3, "vs_gpt": None, "flops_per_token": flops,
                "gflops_per_s": None if flops is None else flops * median / 1e9,
                "first_step_s": run.first_step_s, "breakdown": breakdown(hooked),
            })
        del runs
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    progress.close()
    for r in results:
        gpt = [g for g in results if g["model"] == "gpt" and g["seq_len"] == r["seq_len"]]
        if gpt:
            r["vs_gpt"] = r["tokens_per_s"]["median"] / gpt[0]["tokens_per_s"]["median"]
    return results


if __name__ == "__main__":
    sys.exit(main())
