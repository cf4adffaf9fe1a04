"""
Inference latency and memory per generated token against context length: RWKV vs transformer, one run.

RWKV's claim: the cost of one more token is constant (a fixed-size state), so total time is linear in the
context length and memory stays flat; a transformer with a KV cache pays attention over the whole cache
(latency and memory grow linearly, total time quadratically), and one without a cache recomputes the
whole context for every token. This script measures our own models side by side:

    microrwkv     the MicroRWKV layer of --config or --ckpt; without them, the full x051a layer (TimeMix,
                  ChannelMix, SWA, GQA, MoE)
    rwkv          TimeMix + ChannelMix only (use_swa = use_gqa = use_moe = False)
    rwkv7         the same with RWKV-7 blocks (rwkv_version="x070", chunk_len=16; if model.py has them)
    gpt           the GPT baseline, decoding with its KV cache
    gpt-nocache   the same GPT, re-running the whole context for every token (like nanoGPT's generate)

Each model gets the same width and depth and random weights (timing does not depend on them), a random
prompt of --prompt_len tokens is prefilled, then --max_new_tokens tokens are decoded greedily one at a time.
Per token it records the latency (ms, CUDA-synchronised on GPU), the cumulative time, the bytes of the
state / KV cache (logical and allocated, see the notes), and the process RSS (CPU) or CUDA max allocated
memory (GPU).

The memory floor: decoding one token must read every weight it uses and the state / cache it attends to, so
no implementation can be faster than (those bytes) / (memory bandwidth). At start-up the script measures the
bandwidth (the median of 5 copies of a --bandwidth_mb tensor, bytes read + written; or take --bandwidth GB/s),
and per model prints the floor and the measured median ms/token as a multiple of it ("x floor", first and last
10% of positions). Bytes read per token = the parameters (each once: a tied embedding / LM head once, read whole
by the head; an embedding only a lookup reads, e.g. GPT's positions, one row; of a TinyMoE only the
num_active_experts experts a token goes to) + the state / cache passed into the step (logical bytes).

Outputs, all under --out_dir (default out/benchmark) unless --plot names another path: <model>.jsonl (one
row per token), summary.txt and summary.json (the table printed at the end), and a three-panel figure
(--plot, default <out_dir>/benchmark.png): per-token latency, cumulative time, memory. Each file is written
to a temp file and renamed; nothing under assets/ is touched unless a path there is given explicitly
(e.g. --out_dir assets/benchmark --plot assets/benchmark.png).

    python benchmark_inference_time.py --quick                   # small sizes, ~2 minutes on 2 CPU cores
    python benchmark_inference_time.py --max_new_tokens=4096 --time_budget=300     # 6 x 512, float32, CPU
    python benchmark_inference_time.py --device=cuda --max_new_tokens=16384        # 16K tokens on a GPU
    python benchmark_inference_time.py --models=rwkv --batch_size=8 --repeats=3     # 8 sequences per step, 3 runs
    python benchmark_inference_time.py --config=config/train_tinystories.py        # sizes of a config file
    python benchmark_inference_time.py --ckpt=out/ckpt.pt                         # sizes of a checkpoint
    python benchmark_inference_time.py --hf_model=path/to/dir_with_config.json     # + a Hugging Face model

Notes:
- --time_budget bounds every model: a model stops after the token that takes its decode time past the
  budget (gpt-nocache is O(T^2) and would take hours at 4096 tokens on a CPU). Where a model stopped is
  in the summary ("stopped": "time_budget") and its JSONL simply ends there.
- GPT's learned position embedding limits it to block_size tokens, so GPT is built with a block_size
  that fits every position of the run (>= prompt_len + max_new_tokens), whatever the config says.
- Memory: "state_bytes" ("state MiB (logical)") is numel * element_size of every tensor in the state /
  cache: what the architecture must keep. "state_alloc_bytes" ("state MiB (allocated)") is what those
  tensors actually pin: the nbytes of the distinct storages behind them (deduplicated by data pointer).
  It is larger when a state tensor is a view into a bigger buffer: the in-place KV cache
  (model.append_to_cache) keeps up to twice its logical size, the SWA cache is a slice of a padded buffer,
  and a state that is a view of the prefill's activations keeps the whole prompt's. RSS is the whole
  process's: memory freed by an earlier model is reused by the next, so its growth is only a hint.
- --config / --ckpt give the architecture (every GPTConfig field but model_type, block_size and dropout);
  explicit --n_layer / --n_embd / --n_head / --vocab_size win over them. Checkpoint weights are not loaded.
- --hf_model builds AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(NAME)) with random
  weights (a local directory with a config.json needs no download) and decodes with its cache / state.
  Its size is its own config's, and its position limit is raised to fit the run, like GPT's.
- On CPU the default is --threads=1: decode-time ops are tiny, and with several threads on a shared
  machine one descheduled worker stalls every op (we saw 5x slower tokens with 2 threads under load).
"""

import argparse
import gc
import json
import os
import shlex
import sys
import time

import torch
from tqdm import tqdm

from checkpoint import CheckpointError, cast_weights, load_checkpoint
from configurator import ConfigError, read_keys
from metrics import save_figure, unwritable, write_atomic
from model import GPTConfig, build_model

MODELS = {  # benchmark name -> GPTConfig overrides on top of the run's shared architecture
    "microrwkv": dict(model_type="microrwkv"),
    "rwkv": dict(model_type="microrwkv", use_swa=False, use_gqa=False, use_moe=False),
    "rwkv7": dict(model_type="microrwkv", use_swa=False, use_gqa=False, use_moe=False, rwkv_version="x070",
                  chunk_len=16),  # 16: x070's fastest chunk length
    "gpt": dict(model_type="gpt"),
    "gpt-nocache": dict(model_type="gpt"),
}
if "rwkv_version" not in GPTConfig.__dataclass_fields__:  # a model.py without RWKV-7
    del MODELS["rwkv7"]
# without --config or --ckpt: x051a, every block on (what the saved README run measured)
DEFAULTS = dict(n_layer=6, n_embd=512, n_head=8, max_new_tokens=4096, time_budget=600.0, rwkv_version="x051a",
                use_swa=True, use_gqa=True, use_moe=True)
QUICK = dict(n_layer=4, n_embd=256, n_head=4, max_new_tokens=1024, time_budget=25.0)
WARMUP_STEPS = 5  # decode steps run (untimed) on a throwaway state first: allocator, kernels, caches


# ----------------------------------------------------------------------------------------------------
# Memory


def state_tensors(obj, seen=None):
    """Every tensor in a nested state (lists, tuples, dicts, Hugging Face cache objects), each object once."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from state_tensors(o, seen)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from state_tensors(o, seen)
    elif type(obj).__module__.startswith("transformers.") and hasattr(obj, "__dict__"):
        yield from state_tensors(vars(obj), seen)  # e.g. DynamicCache.layers[i].keys / .values


def state_bytes(obj):
    """Logical bytes of a state: numel * element_size of all its tensors (ints etc. count 0)."""
    return sum(t.numel() * t.element_size() for t in state_tensors(obj))


def state_alloc_bytes(obj):
    """Allocated bytes of a state: nbytes of the distinct storages behind its tensors (deduplicated by data
    pointer), i.e. the memory the state keeps alive, spare room and the rest of any buffer it views included."""
    storages = {}
    for t in state_tensors(obj):
        storage = t.untyped_storage()
        storages[(storage.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


def state_memory(obj):
    """(logical bytes, allocated bytes) of a state."""
    return state_bytes(obj), state_alloc_bytes(obj)


def param_bytes_read(model):
    """Bytes of the weights that decoding one token (batch 1) reads: every parameter once (model.parameters()
    counts a tied embedding / LM head once, and the head reads all of it), except an embedding table that only a
    lookup reads (not tied to a Linear: GPT's positions), one row, and a TinyMoE's experts, of which a token
    reads num_active_experts of num_experts."""
    read = {}  # id(parameter) -> the fraction of it read
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    for m in model.modules():
        if isinstance(m, torch.nn.Embedding) and id(m.weight) not in linear_weights:
            read[id(m.weight)] = 1 / m.weight.shape[0]
        if hasattr(m, "experts") and hasattr(m, "num_active"):  # model.TinyMoE
            for p in m.experts.parameters():
                read[id(p)] = m.num_active / m.num_experts
    return round(sum(p.numel() * p.element_size() * read.get(id(p), 1.0) for p in model.parameters()))


def median(xs):
    return sorted(xs)[len(xs) // 2]


def measure_bandwidth(device, mb=256, repeats=5):
    """Memory bandwidth (bytes/s): the median time to copy_ an `mb` MiB float32 tensor, bytes read + written."""
    src = torch.ones(mb * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # untimed: pages faulted in, kernels loaded
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * src.nbytes / median(times)


def rss_bytes():
    """Resident set size of this process now (Linux); elsewhere the peak RSS, the best `resource` offers."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


# ----------------------------------------------------------------------------------------------------
# Models: each is a step(idx, state) -> (last logits (B, vocab), state) over the whole sequence idx so far


def ours(name, arch, block_size, device, dtype, seed):
    torch.manual_seed(seed)  # the same initial weights for gpt and gpt-nocache
    config = GPTConfig(**{**arch, **MODELS[name], "block_size": block_size, "dropout": 0.0})
    model = build_model(config).to(device=device).eval()
    if dtype != torch.float32:  # bf16 / fp16 weights, as generate.py --dtype stores them (S stays float32)
        cast_weights(model, dtype)
    if name == "gpt-nocache":
        def step(idx, state):
            logits, _ = model(idx)  # the whole context again, logits of the last position only
            return logits[:, -1], None
    else:
        def step(idx, state):
            logits, state = model.forward_with_state(idx if state is None else idx[:, -1:], state)
            return logits[:, -1], state
    return model, step, model.get_num_params()


def hugging_face(name_or_path, n_positions, device, dtype, seed):
    try:
        import transformers
    except ImportError:
        sys.exit("error: --hf_model needs the transformers package (pip install transformers)")
    cfg = transformers.AutoConfig.from_pretrained(name_or_path)
    limit = getattr(cfg, "max_position_embeddings", None)
    if isinstance(limit, int) and limit < n_positions:
        print(f"hf: max_position_embeddings {limit} -> {n_positions} to fit the run (random weights anyway)")
        cfg.max_position_embeddings = n_positions
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg).to(device=device, dtype=dtype).eval()
    cache_arg = []  # found at prefill: the output field that carries the cache, passed back under that name

    def step(idx, state):
        if state is None:
            out = model(input_ids=idx, use_cache=True)
            names = [k for k in ("cache", "past_key_values", "state") if out.get(k) is not None]
            if not names:
                sys.exit(f"error: {type(model).__name__} returned no cache/past_key_values/state with use_cache=True")
            cache_arg[:] = names[:1]
        else:
            out = model(input_ids=idx[:, -1:], use_cache=True, **{cache_arg[0]: state})
        return out.logits[:, -1], out[cache_arg[0]]
    return model, step, sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------
# The timed loop


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def run(name, step, prompt, max_new_tokens, time_budget, device, param_bytes=0, bandwidth=None):
    """Prefill `prompt`, then decode up to max_new_tokens tokens one at a time: one row per token. With a
    bandwidth (bytes/s), each row also has its memory floor: (param_bytes + the state read) / bandwidth."""
    # warm-up on a throwaway state, so the first timed tokens do not pay for first-call costs
    logits, state = step(prompt, None)
    idx = prompt
    for _ in range(WARMUP_STEPS):
        idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
        logits, state = step(idx, state)
    del logits, state
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    sync(device)
    t0 = time.perf_counter()
    logits, state = step(prompt, None)
    sync(device)
    prefill_ms = (time.perf_counter() - t0) * 1e3
    idx, next_token, rows, cum_s, stopped = prompt, logits.argmax(-1, keepdim=True), [], 0.0, None
    for i in tqdm(range(max_new_tokens), desc=f"{name:>12}", unit="tok", mininterval=1.0):
        idx = torch.cat([idx, next_token], dim=1)  # the context so far, ending with the token to process now
        state_read = state_bytes(state)  # what the step reads (and extends); untimed
        sync(device)
        t0 = time.perf_counter()
        logits, state = step(idx, state)
        next_token = logits.argmax(-1, keepdim=True)  # greedy; choosing the next token is part of its latency
        sync(device)
        dt = time.perf_counter() - t0
        cum_s += dt
        logical, allocated = state_memory(state)
        row = {"model": name, "i": i, "pos": idx.shape[1], "latency_ms": dt * 1e3, "cum_s": cum_s,
               "state_bytes": logical, "state_alloc_bytes": allocated, "rss_bytes": rss_bytes(),
               "state_read_bytes": state_read}
        if bandwidth:
            row["floor_ms"] = (param_bytes + state_read) / bandwidth * 1e3
        if device.type == "cuda":
            row["cuda_max_allocated"] = torch.cuda.max_memory_allocated(device)
        rows.append(row)
        if time_budget > 0 and cum_s >= time_budget and i + 1 < max_new_tokens:
            stopped = "time_budget"
            break
    return rows, prefill_ms, stopped


# ----------------------------------------------------------------------------------------------------
# Summary and figure


def summarize(name, rows, params, prefill_ms, stopped, param_bytes=None, batch=1, repeat_tok_s=None):
    """first/last 10% of positions: median latency (robust to a busy machine's spikes), their ratio, and
    the same medians of the memory floor, with the latency as a multiple of it. tokens/s counts every
    sequence of the batch; repeat_tok_s: the tokens/s of each repeat of the run (rows are the median one's)."""
    k = max(1, len(rows) // 10)
    tok_s = batch * len(rows) / rows[-1]["cum_s"]
    first = median([r["latency_ms"] for r in rows[:k]])
    last = median([r["latency_ms"] for r in rows[-k:]])
    mem_key = "cuda_max_allocated" if "cuda_max_allocated" in rows[0] else "rss_bytes"
    floor = {}
    if "floor_ms" in rows[0]:
        floor_first, floor_last = median([r["floor_ms"] for r in rows[:k]]), median([r["floor_ms"] for r in rows[-k:]])
        floor = {"param_bytes_read": param_bytes, "floor_first_ms": floor_first, "floor_last_ms": floor_last,
                 "x_floor_first": first / floor_first, "x_floor_last": last / floor_last}
    return {
        "model": name, "params": params, "tokens": len(rows), "first_pos": rows[0]["pos"],
        "last_pos": rows[-1]["pos"], "prefill_ms": prefill_ms, "first10_ms": first, "last10_ms": last,
        "ratio": last / first, "state_first_MiB": rows[0]["state_bytes"] / 2**20,
        "state_last_MiB": rows[-1]["state_bytes"] / 2**20,
        "state_alloc_first_MiB": rows[0]["state_alloc_bytes"] / 2**20,
        "state_alloc_last_MiB": rows[-1]["state_alloc_bytes"] / 2**20, "mem": mem_key,
        "mem_growth_MiB": (rows[-1][mem_key] - rows[0][mem_key]) / 2**20,
        "batch": batch, "tokens_per_s": tok_s, "repeat_tokens_per_s": repeat_tok_s or [tok_s],
        "stopped": stopped or "-", **floor,
    }


def format_table(summaries):
    header = (f"{'model':>12} {'params':>8} {'tokens':>6} {'first10%ms':>10} {'last10%ms':>10} {'ratio':>6} "
              f"{'state MiB (logical) first->last':>31} {'state MiB (allocated) first->last':>33} {'mem+MiB':>8} "
              f"{'tok/s':>8} {'(min-max)':>13} {'stopped':>11} {'floor ms first->last':>20} {'x floor first->last':>19}")
    lines = [header]
    for s in summaries:
        lines.append(
            f"{s['model']:>12} {s['params'] / 1e6:>7.1f}M {s['tokens']:>6} {s['first10_ms']:>10.2f} "
            f"{s['last10_ms']:>10.2f} {s['ratio']:>6.2f} "
            f"{s['state_first_MiB']:>19.3f} -> {s['state_last_MiB']:>8.3f} "
            f"{s['state_alloc_first_MiB']:>21.3f} -> {s['state_alloc_last_MiB']:>8.3f} {s['mem_growth_MiB']:>8.1f} "
            f"{s['tokens_per_s']:>8.1f} {min(s['repeat_tokens_per_s']):>6.1f}-{max(s['repeat_tokens_per_s']):<6.1f} "
            f"{s['stopped']:>11}"
            + (f" {s['floor_first_ms']:>8.4f} -> {s['floor_last_ms']:>8.4f} {s['x_floor_first']:>7.1f} -> "
               f"{s['x_floor_last']:>7.1f}" if "floor_first_ms" in s else ""))
    return "\n".join(lines)


def plot(all_rows, path, title, on_cuda):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax_lat, ax_cum, ax_mem) = plt.subplots(1, 3, figsize=(17, 5))
    for i, (name, rows) in enumerate(all_rows.items()):
        color = f"C{i}"
        pos = np.array([r["pos"] for r in rows])
        lat = np.array([r["latency_ms"] for r in rows])
        # raw latencies are noisy on a shared CPU: draw them faintly, and a running median on top
        w = max(1, len(lat) // 50)
        smooth = np.array([np.median(lat[max(0, j - w):j + w + 1]) for j in range(len(lat))])
        ax_lat.plot(pos, lat, color=color, alpha=0.25, linewidth=0.5)
        ax_lat.plot(pos, smooth, color=color, linewidth=2, label=name)
        ax_cum.plot(pos, [r["cum_s"] for r in rows], color=color, linewidth=2, label=name)
        ax_mem.plot(pos, [r["state_bytes"] / 2**20 for r in rows], color=color, linewidth=2,
                    label=f"{name} state (logical)")
        ax_mem.plot(pos, [r["state_alloc_bytes"] / 2**20 for r in rows], color=color, linewidth=1.2,
                    linestyle=":", label=f"{name} state (allocated)")
        mem_key = "cuda_max_allocated" if on_cuda else "rss_bytes"
        ax_mem.plot(pos, [(r[mem_key] - rows[0][mem_key]) / 2**20 for r in rows], color=color,
                    linewidth=0.8, linestyle="--", alpha=0.6)
    ax_lat.set(title="latency of one token", xlabel="token position", ylabel="ms")
    ax_cum.set(title="cumulative decode time", xlabel="token position", ylabel="s")
    process = "CUDA max allocated" if on_cuda else "process RSS"
    ax_mem.set(xlabel="token position", ylabel="MiB")
    ax_mem.set_title(f"memory: state logical (solid) and allocated (dotted),\n{process} growth (dashed)", fontsize=10)
    ax_lat.set_ylim(bottom=0)
    for ax in (ax_lat, ax_cum, ax_mem):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------


def architecture(args, parser):
    """The shared GPTConfig fields: defaults < --quick < --config / --ckpt < explicit flags."""
    arch = {"vocab_size": GPTConfig.vocab_size, **DEFAULTS, **(QUICK if args.quick else {})}
    arch = {k: v for k, v in arch.items() if k in GPTConfig.__dataclass_fields__}
    fields = set(GPTConfig.__dataclass_fields__) - {"model_type", "block_size", "dropout"}
    if args.config:
        # as train.py reads it: GPTConfig defaults, then the file (which may exec a sibling via __file__)
        try:
            values = read_keys(args.config, {f: getattr(GPTConfig, f) for f in GPTConfig.__dataclass_fields__})
        except ConfigError as e:
            parser.error(f"--config: {e}")
        arch.update({k: v for k, v in values.items() if k in fields})
    if args.ckpt:
        try:
            model_args = load_checkpoint(args.ckpt, mmap=True)["model_args"]
        except CheckpointError as e:
            parser.error(f"--ckpt: {e}")
        arch.update({k: v for k, v in model_args.items() if k in fields})
    arch.update({k: getattr(args, k) for k in ("n_layer", "n_embd", "n_head", "vocab_size")
                 if getattr(args, k) is not None})
    return arch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated, from " + ",".join(MODELS) + " (may be empty with --hf_model)")
    parser.add_argument("--n_layer", type=int, help=f"default {DEFAULTS['n_layer']} ({QUICK['n_layer']} with --quick)")
    parser.add_argument("--n_embd", type=int, help=f"default {DEFAULTS['n_embd']} ({QUICK['n_embd']} with --quick)")
    parser.add_argument("--n_head", type=int, help=f"attention heads, default {DEFAULTS['n_head']} "
                        f"({QUICK['n_head']} with --quick); RWKV heads are n_embd // head_size")
    parser.add_argument("--vocab_size", type=int, help=f"default {GPTConfig.vocab_size}")
    parser.add_argument("--max_new_tokens", type=int, help=f"tokens decoded per model, default "
                        f"{DEFAULTS['max_new_tokens']} ({QUICK['max_new_tokens']} with --quick)")
    parser.add_argument("--prompt_len", type=int, default=16, help="random prompt tokens prefilled first")
    parser.add_argument("--batch_size", type=int, default=1, help="sequences decoded together (tok/s counts all)")
    parser.add_argument("--repeats", type=int, default=1, help="decode runs per model: tok/s is their median "
                        "(min-max), the rows and figure are the median run's")
    parser.add_argument("--time_budget", type=float, help="seconds of decoding per model before it stops, 0: none; "
                        f"default {DEFAULTS['time_budget']:g} ({QUICK['time_budget']:g} with --quick)")
    parser.add_argument("--quick", action="store_true", help="small model, fewer tokens, short budget")
    parser.add_argument("--config", help="a config/*.py file: the architecture from its GPTConfig keys")
    parser.add_argument("--ckpt", help="a train.py checkpoint: the architecture from its model_args")
    parser.add_argument("--hf_model", help="also time a Hugging Face model (name or local dir) with random weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: see the notes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bandwidth_mb", type=int, default=256, help="MiB copied to measure the memory bandwidth")
    parser.add_argument("--bandwidth", type=float, help="memory bandwidth in GB/s for the floor, instead of measuring it")
    parser.add_argument("--out_dir", default="out/benchmark", help="JSONL per model, summary.txt, summary.json")
    parser.add_argument("--plot", help="the figure to write (default: <out_dir>/benchmark.png)")
    args = parser.parse_args(argv)

    names = [n for n in args.models.split(",") if n]
    if unknown := [n for n in names if n not in MODELS]:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    if not names and not args.hf_model:
        parser.error("no models to run")
    if args.config and args.ckpt:
        parser.error("give --config or --ckpt, not both")
    defaults = {**DEFAULTS, **(QUICK if args.quick else {})}
    max_new_tokens = args.max_new_tokens if args.max_new_tokens is not None else defaults["max_new_tokens"]
    time_budget = args.time_budget if args.time_budget is not None else defaults["time_budget"]
    if min(max_new_tokens, args.prompt_len, args.batch_size, args.repeats) < 1:
        parser.error("--max_new_tokens, --prompt_len, --batch_size and --repeats must be >= 1")
    if args.bandwidth_mb < 1 or (args.bandwidth is not None and args.bandwidth <= 0):
        parser.error("--bandwidth_mb and --bandwidth must be > 0")
    for flag, path, directory in (("--out_dir", args.out_dir, True), ("--plot", args.plot, False)):
        if path and (why := unwritable(path, directory)):
            parser.error(f"{flag} {path}: {why}; give a writable {'directory' if directory else 'path'}")
    arch = architecture(args, parser)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    # every position the timed run and its warm-up reach must fit GPT's learned position embedding
    n_positions = args.prompt_len + max_new_tokens + WARMUP_STEPS
    prompt = torch.randint(0, arch["vocab_size"], (args.batch_size, args.prompt_len),
                           generator=torch.Generator().manual_seed(args.seed)).to(device)

    os.makedirs(args.out_dir, exist_ok=True)
    plot_path = args.plot or os.path.join(args.out_dir, "benchmark.png")
    print(f"n_layer={arch['n_layer']} n_embd={arch['n_embd']} n_head={arch['n_head']} vocab={arch['vocab_size']} "
          f"{args.dtype} {device} threads={args.threads} batch={args.batch_size} prompt={args.prompt_len} "
          f"max_new_tokens={max_new_tokens} repeats={args.repeats} "
          f"time_budget={time_budget:g}s")
    if args.bandwidth:
        bandwidth, how = args.bandwidth * 1e9, "given by --bandwidth"
    else:
        bandwidth = measure_bandwidth(device, args.bandwidth_mb)
        how = f"copy of {args.bandwidth_mb} MiB, median of 5, bytes read + written"
    print(f"memory bandwidth: {bandwidth / 1e9:.2f} GB/s ({how})")
    all_rows, summaries = {}, []
    for name in names + (["hf"] if args.hf_model else []):
        if name == "hf":
            model, step, params = hugging_face(args.hf_model, n_positions, device, dtype, args.seed)
            model_prompt = prompt % model.config.vocab_size  # its vocabulary may be smaller than ours
        else:
            model, step, params = ours(name, arch, n_positions, device, dtype, args.seed)
            model_prompt = prompt
        param_bytes = param_bytes_read(model)
        runs = [run(name, step, model_prompt, max_new_tokens, time_budget, device, param_bytes, bandwidth)
                for _ in range(args.repeats)]
        tok_s = [args.batch_size * len(r[0]) / r[0][-1]["cum_s"] for r in runs]
        rows, prefill_ms, stopped = runs[tok_s.index(median(tok_s))]
        write_atomic(os.path.join(args.out_dir, f"{name}.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
        all_rows[name] = rows
        summaries.append(summarize(name, rows, params, prefill_ms, stopped, param_bytes, args.batch_size, tok_s))
        del model, step, runs
        gc.collect()

    table = format_table(summaries)
    command = shlex.join(["python", "benchmark_inference_time.py", *(sys.argv[1:] if argv is None else argv)])
    text = (f"{command}\n{arch['n_layer']} layers x {arch['n_embd']} (n_head {arch['n_head']}), {args.dtype}, "
            f"{device}, threads={args.threads}, batch {args.batch_size}; tok/s = batch x tokens / decode time, the "
            f"median (min-max) of {args.repeats} run(s); latencies are medians over the first / last 10% of positions; "
            f"state logical = numel * element_size of the state's tensors, allocated = nbytes of the distinct "
            f"storages behind them; mem+ = growth of {'CUDA max allocated' if device.type == 'cuda' else 'process RSS'}; "
            f"floor = (parameter bytes read + state bytes read) / memory bandwidth {bandwidth / 1e9:.2f} GB/s ({how}), "
            f"x floor = latency / floor\n{table}\n")
    print("\n" + text, end="")
    write_atomic(os.path.join(args.out_dir, "summary.txt"), text)
    write_atomic(os.path.join(args.out_dir, "summary.json"), json.dumps(
        {"command": command, "device": str(device), "dtype": args.dtype, "threads": args.threads,
         "batch_size": args.batch_size, "repeats": args.repeats,
         "prompt_len": args.prompt_len, "max_new_tokens": max_new_tokens, "time_budget": time_budget,
         "hf_model": args.hf_model, "arch": arch, "bandwidth_GBps": bandwidth / 1e9, "bandwidth_source": how,
         "models": summaries}, indent=1))
    plot(all_rows, plot_path, f"MicroRWKV vs GPT decoding: {arch['n_layer']} x {arch['n_embd']}, {args.dtype}, "
         f"{device}, prompt {args.prompt_len}", device.type == "cuda")
    print(f"wrote {args.out_dir}/{{{','.join(all_rows)}}}.jsonl, summary.txt, summary.json and {plot_path}")


if __name__ == "__main__":
    main()
