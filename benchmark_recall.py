"""
Associative recall (MQAR, Zoology: arXiv 2312.04927): which layouts can look a fact up, and at what state size.

$ python benchmark_recall.py --models gpt,rwkv7,rwkv7-gqa4 --lrs 1e-3,3e-3 --seeds 1337 --out_dir out/recall
$ python benchmark_recall.py --report_only --out_dir out/recall        # the table and plot from the saved runs

A row of multi-query associative recall is `k1 v1 k2 v2 ... kP vP`, then the P keys again, each at a
power-law distributed slot after the pairs (most queries come soon, some far), each followed by its value;
every other token is noise from the value half of the vocabulary. At a query the model must predict the
value that followed that key earlier in the row: it has to store P key-value bindings and look one up, which
attention does by looking back and a recurrent model only if its state holds them all. Accuracy is over
query positions only (per position, as Zoology reports it).

Every model is trained from scratch with AdamW on freshly generated rows: each step draws one training
setting (seq_len, pairs), the shortest --short_weight times as often as each other one, and a batch of
--tokens_per_step tokens of it. The mix decides whether a model learns the task at all: with the shortest five
times as often, as Zoology's mix has it, GPT with a token shift learns it; drawn uniformly, it does not (see
assets/recall/README.md). Rows are generated on the fly, so nothing is seen twice. After training, each model is
tested on fixed rows of every test setting, including ones longer than training (rotary and RWKV models
extrapolate; GPT's learned positions end at block_size: its cells there are "n/a"), and accuracy is split by
key-query distance: within the SWA window or beyond it.

Each run (model x learning rate x seed) is one JSON file in OUT/runs/, so sweeps can run side by side (one
thread each) and resume; the report takes, per model, the learning rate with the best mean accuracy at the
main setting (as Zoology sweeps and picks the best rate per model) and writes OUT/recall_table.md,
OUT/recall_runs.json and OUT/recall_vs_state.png (accuracy against decoding-state bytes, Zoology's figure).
"""

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time

import torch
from tqdm import tqdm

from model import GPTConfig, build_model
from metrics import save_figure

# name -> GPTConfig overrides on top of the shared width/depth (layers: one letter a layer, R = RWKV only,
# S = + sliding-window attention, G = + global grouped-query attention, A = + both; see GPTConfig.layers)
LAYOUTS = {
    "gpt": dict(model_type="gpt"),  # nanoGPT's transformer: global attention in every layer, learned positions
    "gpt-rotary": dict(model_type="gpt", rotary=True),  # the same with rotary positions, as MicroRWKV's attention
    "gpt-shift": dict(model_type="gpt", token_shift=True),  # GPT with RWKV's token shift on each attention input
    "rwkv": dict(rwkv_version="x051a"),  # pure RWKV-5 (x051a)
    "rwkv-swa": dict(rwkv_version="x051a", layers="S"),  # RWKV-5 + SWA in every layer, no global attention
    "rwkv-gqa": dict(rwkv_version="x051a", layers="G"),  # RWKV-5 + GQA in every layer
    "rwkv-gqa2": dict(rwkv_version="x051a", layers="RG"),  # RWKV-5 + GQA in every 2nd layer
    "rwkv-gqa4": dict(rwkv_version="x051a", layers="RRRG"),  # RWKV-5 + GQA in the last of every 4 layers
    "rwkv-gqa4-first": dict(rwkv_version="x051a", layers="GRRR"),  # the same with GQA in the first of every 4
    "full": dict(rwkv_version="x051a", layers="A", use_moe=True),  # the full MicroRWKV layer (x051a)
    "rwkv7": dict(rwkv_version="x070"),  # pure RWKV-7 (x070)
    "rwkv7-swa": dict(rwkv_version="x070", layers="S"),  # RWKV-7 + SWA in every layer, no global attention
    "rwkv7-gqa": dict(rwkv_version="x070", layers="G"),  # RWKV-7 + GQA in every layer
    "rwkv7-gqa2": dict(rwkv_version="x070", layers="RG"),  # RWKV-7 + GQA in every 2nd layer
    "rwkv7-gqa4": dict(rwkv_version="x070", layers="RRRG"),  # RWKV-7 + GQA in the last of every 4 layers
    "rwkv7-swa-gqa4": dict(rwkv_version="x070", layers="SSSG"),  # RWKV-7 + SWA, GQA instead in every 4th layer
    "full7": dict(rwkv_version="x070", layers="A", use_moe=True),  # the full layer with RWKV-7 blocks
}
TRAIN_SETTINGS = [(64, 4), (128, 8), (256, 16), (256, 32), (512, 64)]  # (seq_len, key-value pairs), as Zoology's
TEST_SETTINGS = [(64, 4), (128, 8), (256, 16), (512, 32), (512, 64), (1024, 64), (2048, 64)]
MAIN = (512, 64)
LONG_STATE = 4096  # the state's size is also reported after this many tokens, against GPT's KV cache


def make_mqar(num_examples, seq_len, num_kv_pairs, vocab_size, seed, power_a=0.01):
    """MQAR rows: (inputs, targets), LongTensors (num_examples, seq_len).

    Keys come from the lower half of the vocabulary (unique within a row), values and noise from the upper
    half. The first 2 * num_kv_pairs tokens are k, v, k, v, ...; the rest is (seq_len - 2P) // 2 two-token
    slots, of which P are chosen, with probability proportional to slot^(power_a - 1) (slot = 1, 2, ...: near
    slots much likelier), to hold `key value` for every key once; the others hold noise. targets[i, t] is the
    value that followed inputs[i, t]'s earlier occurrence where inputs[i, t] is a query, and -1 elsewhere."""
    P, half = num_kv_pairs, vocab_size // 2
    slots = (seq_len - 2 * P) // 2
    if P < 1 or half < P or slots < P:
        raise ValueError(f"MQAR needs 1 <= pairs <= vocab_size/2 and seq_len >= 4 * pairs: got seq_len={seq_len}, "
                         f"num_kv_pairs={P}, vocab_size={vocab_size}")
    gen = torch.Generator().manual_seed(seed)
    n = num_examples
    keys = torch.rand(n, half, generator=gen).argsort(dim=1)[:, :P]  # P distinct keys per row
    values = half + torch.randint(0, vocab_size - half, (n, P), generator=gen)
    inputs = half + torch.randint(0, vocab_size - half, (n, seq_len), generator=gen)  # noise everywhere first
    inputs[:, 0:2 * P:2], inputs[:, 1:2 * P:2] = keys, values
    weight = torch.arange(1, slots + 1, dtype=torch.float64) ** (power_a - 1)
    slot = torch.multinomial(weight.expand(n, slots), P, replacement=False, generator=gen)  # key j's query slot
    query_pos = 2 * P + 2 * slot
    inputs.scatter_(1, query_pos, keys)
    inputs.scatter_(1, query_pos + 1, values)
    targets = torch.full_like(inputs, -1)
    targets.scatter_(1, query_pos, values)
    return inputs, targets


def key_distances(inputs, targets):
    """For every supervised position (row-major, as targets[targets >= 0]): query position - key position."""
    rows, cols = torch.nonzero(targets >= 0, as_tuple=True)
    first = (inputs[rows] == inputs[rows, cols].unsqueeze(1)).int().argmax(dim=1)  # the key's first occurrence
    return cols - first


def model_config(name, args, block_size):
    layout = dict(LAYOUTS[name])
    letters = layout.pop("layers", "")  # one repeating group of layers
    layers = letters * (args.n_layer // len(letters)) if letters else ""
    if len(layers) != (args.n_layer if letters else 0):
        raise ValueError(f"layout {name} ({letters}) needs n_layer to be a multiple of {len(letters)}")
    # chunk_len sets the speed, not the function: at 512 tokens on a CPU, 64 trains x070 1.4x faster than 32
    base = dict(block_size=block_size, vocab_size=args.vocab_size, n_layer=args.n_layer, n_embd=args.d_model,
                n_head=args.d_model // args.head_size, head_size=args.head_size, window_size=args.window_size,
                n_kv_head=1, use_swa=False, use_gqa=False, use_moe=False, num_experts=4, num_active_experts=2,
                expert_dim=2 * args.d_model, chunk_len=64, bias=False, dropout=0.0)
    base.update(layout, layers=layers)
    return GPTConfig(**base)


def state_bytes(state):
    """Bytes of a decoding state: numel * element_size of every tensor in it (nested named tuples, lists)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    return sum(state_bytes(s) for s in state) if isinstance(state, (list, tuple)) else 0


@torch.no_grad()
def state_bytes_after(config, T):
    """Bytes of the decoding state after T tokens of a model built like `config` (a saved GPTConfig dict), with
    fresh weights: its size depends on the layout only. GPT gets learned positions for T tokens here."""
    model = build_model(GPTConfig(**{**config, "block_size": max(config["block_size"], T)})).eval()
    return state_bytes(model.forward_with_state(torch.zeros(1, T, dtype=torch.long))[1])


def lr_at(step, steps, lr):
    warmup = max(1, steps // 10)
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))


@torch.no_grad()
def evaluate(model, setting, args, max_len):
    """Accuracy on the test rows of one setting: all queries, and those within / beyond the SWA window."""
    seq_len, pairs = setting
    if seq_len > max_len:
        return None
    inputs, targets = make_mqar(args.test_examples, seq_len, pairs, args.vocab_size, seed=10**6 + seq_len + pairs)
    hits = []
    for i in range(0, len(inputs), args.eval_batch):
        logits, _ = model(inputs[i:i + args.eval_batch], targets[i:i + args.eval_batch])
        t = targets[i:i + args.eval_batch]
        hits.append(logits.argmax(-1)[t >= 0] == t[t >= 0])
    hits = torch.cat(hits).float()
    far = key_distances(inputs, targets) >= args.window_size  # beyond the window: SWA cannot see the key
    return dict(acc=hits.mean().item(), acc_near=hits[~far].mean().item() if (~far).any() else None,
                acc_far=hits[far].mean().item() if far.any() else None, far_share=far.float().mean().item())


def train_one(name, lr, seed, args):
    torch.manual_seed(seed)
    block_size = max(MAIN[0], *(s for s, _ in TRAIN_SETTINGS))
    model = build_model(model_config(name, args, block_size))
    opt = model.configure_optimizers(args.weight_decay, lr, (0.9, 0.98), "cpu")
    gen = torch.Generator().manual_seed(seed)
    settings = TRAIN_SETTINGS[:1] * args.short_weight + TRAIN_SETTINGS[1:]  # each step draws one of these
    losses, t0 = [], time.time()
    bar = tqdm(range(args.steps), desc=f"{name} lr={lr:g} seed={seed}", leave=False, file=sys.stderr)
    for step in bar:
        seq_len, pairs = settings[torch.randint(len(settings), (1,), generator=gen).item()]
        x, y = make_mqar(max(1, args.tokens_per_step // seq_len), seq_len, pairs, args.vocab_size,
                         seed=int(torch.randint(2**62, (1,), generator=gen)))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, lr) * group.get("lr_scale", 1.0)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 100 == 99:
            bar.set_postfix(loss=f"{statistics.mean(losses[-100:]):.3f}")  # MQAR's sudden drop shows here
    train_s = time.time() - t0
    model.eval()
    # a model with learned positions cannot read past them; rotary and RWKV models can
    learned_positions = model.config.model_type == "gpt" and not model.config.rotary
    max_len = block_size if learned_positions else max(s for s, _ in TEST_SETTINGS)
    results = {f"{s}x{p}": evaluate(model, (s, p), args, max_len) for s, p in TEST_SETTINGS}
    with torch.no_grad():
        _, state = model.forward_with_state(torch.zeros(1, MAIN[0], dtype=torch.long))
    return dict(model=name, lr=lr, seed=seed, steps=args.steps, tokens_per_step=args.tokens_per_step,
                short_weight=args.short_weight,
                params=model.get_num_params(non_embedding=False), state_bytes=state_bytes(state),
                config=vars(model.config), train_s=train_s, final_train_loss=statistics.mean(losses[-50:]),
                loss_curve=[statistics.mean(losses[i:i + 100]) for i in range(0, len(losses), 100)],  # per 100 steps
                results=results)


def atomic_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def run_path(out_dir, name, lr, seed, args):
    mix = f"_short{args.short_weight}" if args.short_weight != 1 else ""
    return os.path.join(out_dir, "runs", f"{name}_d{args.d_model}_l{args.n_layer}_w{args.window_size}_{args.steps}x{args.tokens_per_step}_lr{lr:g}_s{seed}{mix}.json")


def load_runs(out_dir, args):
    """The finished runs in OUT/runs made with args' training budget and model size (one table, one budget)."""
    runs_dir = os.path.join(out_dir, "runs")
    if not os.path.isdir(runs_dir):
        return []
    runs = []
    for name in sorted(os.listdir(runs_dir)):
        if name.endswith(".json"):
            with open(os.path.join(runs_dir, name)) as f:
                runs.append(json.load(f))
    same = lambda r: (r["steps"], r["tokens_per_step"], r.get("short_weight", 1), r["config"]["n_embd"],
                      r["config"]["n_layer"]) == (args.steps, args.tokens_per_step, args.short_weight, args.d_model,
                                                  args.n_layer)
    return [r for r in runs if same(r)]


def summarize(runs):
    """Per model: the learning rate with the best mean accuracy at MAIN, and its runs' mean accuracies."""
    main = f"{MAIN[0]}x{MAIN[1]}"
    by_model = {}
    for r in runs:
        by_model.setdefault(r["model"], {}).setdefault(r["lr"], []).append(r)
    rows = []
    for name in [m for m in LAYOUTS if m in by_model]:
        lr, chosen = max(by_model[name].items(), key=lambda kv: statistics.mean(r["results"][main]["acc"] for r in kv[1]))
        cells = {}
        for key in chosen[0]["results"]:
            vals = [r["results"][key] for r in chosen]
            cells[key] = None if vals[0] is None else {
                k: statistics.mean(v[k] for v in vals) if vals[0][k] is not None else None for k in vals[0]}
        rows.append(dict(model=name, lr=lr, seeds=sorted(r["seed"] for r in chosen), params=chosen[0]["params"],
                         state_bytes=chosen[0]["state_bytes"],
                         state_bytes_long=state_bytes_after(chosen[0]["config"], LONG_STATE), train_s=statistics.median(r["train_s"] for r in chosen),
                         lrs_tried=sorted(by_model[name]), cells=cells,
                         main_per_seed=[r["results"][main]["acc"] for r in sorted(chosen, key=lambda r: r["seed"])]))
    return rows


def layout_letters(name):
    """The per-layer letters of a layout, as one repeating group (GPT: global attention everywhere)."""
    return LAYOUTS[name].get("layers", "G" if LAYOUTS[name].get("model_type") == "gpt" else "R")


def format_table(rows):
    keys = [f"{s}x{p}" for s, p in TEST_SETTINGS]
    main = f"{MAIN[0]}x{MAIN[1]}"
    head = (f"| model | layers | params | state KiB at {MAIN[0]} | state KiB at {LONG_STATE} | best lr (of) | seeds | "
            + " | ".join(f"{k.replace('x', ' / ')}" for k in keys) + f" | {main.replace('x', ' / ')}: near / far |")
    lines = [head, "|" + " --- |" * (8 + len(keys))]
    for r in rows:
        c = r["cells"]
        acc = [("n/a" if c[k] is None else f"{c[k]['acc']:.3f}") for k in keys]
        near, far = c[main]["acc_near"], c[main]["acc_far"]
        layers = layout_letters(r["model"])
        lines.append(f"| {r['model']} | {layers} | {r['params'] / 1e6:.2f}M | {r['state_bytes'] / 1024:.1f} | "
                     f"{r['state_bytes_long'] / 1024:,.0f} | "
                     f"{r['lr']:g} ({', '.join(f'{x:g}' for x in r['lrs_tried'])}) | {len(r['seeds'])} | "
                     + " | ".join(acc) + f" | {near:.3f} / {far:.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    main = f"{MAIN[0]}x{MAIN[1]}"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r["state_bytes"] / 1024, r["cells"][main]["acc"], s=40)
        ax.annotate(r["model"], (r["state_bytes"] / 1024, r["cells"][main]["acc"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(f"decoding state after {MAIN[0]} tokens (KiB, log scale)")
    ax.set_ylabel(f"MQAR accuracy, {MAIN[0]} tokens, {MAIN[1]} pairs")
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    plt.close(fig)


def report(args, command=""):
    out_dir, assets = args.out_dir, args.assets
    runs = load_runs(out_dir, args)
    if not runs:
        raise SystemExit(f"error: no finished runs of {args.steps} steps x {args.tokens_per_step} tokens, "
                         f"--short_weight {args.short_weight}, d_model "
                         f"{args.d_model}, {args.n_layer} layers in {os.path.join(out_dir, 'runs')}: run some models first")
    rows = summarize(runs)
    table = format_table(rows)
    with open(os.path.join(out_dir, "recall_table.md.tmp"), "w") as f:
        f.write(table)
    os.replace(os.path.join(out_dir, "recall_table.md.tmp"), os.path.join(out_dir, "recall_table.md"))
    run_commands = sorted({r["command"] for r in runs if r.get("command")})
    atomic_json(os.path.join(out_dir, "recall_runs.json"), dict(command=command, run_commands=run_commands,
                                                                summary=rows, runs=runs))
    plot(rows, os.path.join(out_dir, "recall_vs_state.png"))
    if assets:  # the study page's raw outputs (its tables are regenerated from recall_runs.json by tools/tables.py)
        os.makedirs(assets, exist_ok=True)
        for name in ("recall_table.md", "recall_runs.json", "recall_vs_state.png"):
            shutil.copyfile(os.path.join(out_dir, name), os.path.join(assets, name))
    print(table)


def parse_list(text, kind):
    return [kind(x) for x in text.split(",") if x]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="layouts:\n" + "\n".join(f"  {k:15s} {v}" for k, v in LAYOUTS.items()))
    p.add_argument("--models", default="gpt,rwkv,rwkv7,rwkv7-swa,rwkv7-gqa4", help="comma-separated layouts (below)")
    p.add_argument("--d_model", type=int, default=128)
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--head_size", type=int, default=64, help="RWKV and attention head size")
    p.add_argument("--window_size", type=int, default=64, help="SWA window (keys further back are out of its reach)")
    p.add_argument("--vocab_size", type=int, default=128, help="keys from the lower half, values and noise the upper")
    p.add_argument("--lrs", default="1e-3,3e-3", help="learning rates to sweep; the report takes each model's best")
    p.add_argument("--seeds", default="1337")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--tokens_per_step", type=int, default=2048)
    p.add_argument("--short_weight", type=int, default=1,
                   help="draw the shortest training setting this many times as often as each other one (1: uniform; "
                        "Zoology's multi-setting configs give it five times the rows of each other setting)")
    p.add_argument("--weight_decay", type=float, default=0.1)
    p.add_argument("--test_examples", type=int, default=256, help="test rows per setting")
    p.add_argument("--eval_batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out_dir", default="out/recall")
    p.add_argument("--report_only", action="store_true", help="only write the table and plot from OUT/runs")
    p.add_argument("--assets", default=None, help="also copy the table, the JSON and the plot into this folder")
    args = p.parse_args(argv)
    command = " ".join(["python benchmark_recall.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        models, lrs, seeds = parse_list(args.models, str), parse_list(args.lrs, float), parse_list(args.seeds, int)
    except ValueError as e:
        raise SystemExit(f"error: --lrs and --seeds take comma-separated numbers ({e})")
    if args.short_weight < 1:
        raise SystemExit(f"error: --short_weight {args.short_weight} must be at least 1")
    unknown = [m for m in models if m not in LAYOUTS]
    if unknown:
        raise SystemExit(f"error: unknown --models {','.join(unknown)}; choose from {','.join(LAYOUTS)}")
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise SystemExit(f"error: --out_dir {args.out_dir} is a file; give a directory")
    os.makedirs(os.path.join(args.out_dir, "runs"), exist_ok=True)
    if args.assets and os.path.exists(args.assets) and not os.path.isdir(args.assets):
        raise SystemExit(f"error: --assets {args.assets} is a file; give a directory")
    if args.report_only:
        return report(args, command)
    try:
        for name in models:
            model_config(name, args, 512)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    torch.set_num_threads(args.threads)
    jobs = [(m, lr, s) for s in seeds for m in models for lr in lrs]
    for name, lr, seed in tqdm(jobs, desc="runs", file=sys.stderr):
        path = run_path(args.out_dir, name, lr, seed, args)
        if os.path.exists(path):  # a finished run: reuse it only if it was made with this task and model
            with open(path) as f:
                saved = json.load(f)["config"]
            wanted = vars(model_config(name, args, saved["block_size"]))
            # fields added since take their defaults; the chunk length changes the speed, not the model
            differ = [k for k in saved if k in wanted and saved[k] != wanted[k] and k != "chunk_len"]
            if differ:
                raise SystemExit(f"error: {path} was made with other settings ({', '.join(differ)}); "
                                 f"use another --out_dir")
            continue
        run = dict(train_one(name, lr, seed, args), command=command)
        atomic_json(path, run)
        main_acc = run["results"][f"{MAIN[0]}x{MAIN[1]}"]["acc"]
        tqdm.write(f"{name} lr={lr:g} seed={seed}: acc {main_acc:.3f} at {MAIN[0]}/{MAIN[1]}, "
                   f"{run['train_s']:.0f} s", file=sys.stderr)
    report(args, command)


if __name__ == "__main__":
    main()
