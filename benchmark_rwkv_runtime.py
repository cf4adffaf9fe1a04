"""
An imported RWKV-7 model against the official runtime (the `rwkv` package, strategy 'cpu fp32') on the same
.pth file: logit equality, greedy tokens, and decoding speed, in one process.

$ OMP_NUM_THREADS=2 python benchmark_rwkv_runtime.py                      # the 0.1B shape, random weights
$ python benchmark_rwkv_runtime.py --input rwkv7-g1-0.1b-20250307-ctx4096.pth   # a real file

Without --input it writes a file of the official 0.1B shape (12 x 768, head size 64, vocabulary 65,536, LoRA
ranks 64/64/32/128) with random weights at a real scale (built as the runtime expects it, the head untied
from the embedding), imports it with import_rwkv.py and loads the same file into the runtime. Then:
  equality: the max relative logit error (max |ours - runtime| / max |runtime|) over --seq_len random tokens,
            in sequence mode and token by token; and --greedy greedy tokens after a World-tokenized prompt,
            ours through generate.py's decoding (prefill, then token_stream) against the runtime's loop
  speed:    decode tokens/s, batch 1, float32, --threads threads: the runtime, our generate.py path (decode.py's
            step), and our fastest path (--best_dtype: int8 is generate.py --int8, the float32 model decoded through
            int8 copies of its matrices and 8-bit copies of their inputs; bfloat16 is generate.py --dtype bfloat16,
            the same model with bfloat16 weights, its state and decays in float32; float32 is the generate.py path
            again), taking turns in each of --repeats rounds so that machine load hits all alike; median, min
            and max, and the ratio of medians to the runtime.
Outputs: out_dir/benchmark_rwkv_runtime.json (every raw figure) and the printed report.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

import generate
import import_rwkv
from checkpoint import cast_weights
from decode import decoder_for
from model import MicroRWKV
from tokenizer import get_tokenizer


def official_weights(n_layer=12, n_embd=768, head_size=64, vocab=65536, ranks=(64, 64, 32, 128), seed=0,
                     layer0_v=True):
    """An RWKV-7 state dict as BlinkDL's trainer saves it (names, shapes, key order), random at a real scale:
    decays spread from fast to slow, token-shift mixes in [0, 1], unit-gain matrices, a head that is not the
    embedding. layer0_v=False leaves out layer 0's unused value LoRA, as export_rwkv.py does."""
    C, N = n_embd, head_size
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)
    u = lambda *shape: torch.rand(*shape, generator=g)
    w = {"emb.weight": r(vocab, C), "blocks.0.ln0.weight": 1 + 0.1 * r(C), "blocks.0.ln0.bias": 0.1 * r(C)}
    for i in range(n_layer):
        b, a, f = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."
        w.update({b + "ln1.weight": 1 + 0.1 * r(C), b + "ln1.bias": 0.1 * r(C),
                  b + "ln2.weight": 1 + 0.1 * r(C), b + "ln2.bias": 0.1 * r(C)})
        w.update({a + n: u(1, 1, C) for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")})
        w[a + "w0"] = (torch.linspace(-6, 3, C)[torch.randperm(C, generator=g)] + 0.1 * r(C)).view(1, 1, C)
        for n, D in zip("wavg", ranks):
            if n == "v" and i == 0 and not layer0_v:
                continue
            if n in "av":
                w[a + n + "0"] = 0.3 * r(1, 1, C)
            w.update({a + n + "1": r(C, D) / C ** 0.5, a + n + "2": r(D, C) / D ** 0.5})
        w.update({a + "k_k": 0.7 + 0.3 * r(1, 1, C), a + "k_a": 1 + 0.3 * r(1, 1, C), a + "r_k": 0.3 * r(C // N, N)})
        w.update({a + n + ".weight": r(C, C) / C ** 0.5 for n in ("receptance", "key", "value", "output")})
        w.update({a + "ln_x.weight": 1 + 0.1 * r(C), a + "ln_x.bias": 0.1 * r(C), f + "x_k": u(1, 1, C),
                  f + "key.weight": r(4 * C, C) / C ** 0.5, f + "value.weight": r(C, 4 * C) / (4 * C) ** 0.5})
    w.update({"ln_out.weight": 1 + 0.1 * r(C), "ln_out.bias": 0.1 * r(C), "head.weight": r(vocab, C) / C ** 0.5})
    return w


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def load_runtime(path):
    os.environ.update(RWKV_V7_ON="1", RWKV_CUDA_ON="0")  # read when rwkv.model is imported: RWKV-7, on the CPU
    from rwkv.model import RWKV
    return RWKV(model=path.removesuffix(".pth"), strategy="cpu fp32")


@torch.no_grad()
def equality(model, rt, vocab, seq_len):
    """Max relative logit errors, sequence mode and token by token."""
    tokens = torch.randint(0, vocab, (seq_len,), generator=torch.Generator().manual_seed(1)).tolist()
    ours = model.forward_with_state(torch.tensor([tokens]))[0][0]
    seq, _ = rt.forward(tokens, None, full_output=True)
    state, steps = None, []
    for tok in tokens:
        logits, state = rt.forward([tok], state)
        steps.append(logits)
    return {"sequence": rel_err(ours, seq), "token_by_token": rel_err(ours, torch.stack(steps))}


def runtime_greedy(rt, prompt_ids, n):
    """n greedy tokens from the runtime, and the time of the decode steps (after the first token)."""
    logits, state = rt.forward(prompt_ids, None)
    out, margins = [], []
    t0 = None
    for i in range(n):
        top = torch.topk(logits.float(), 2).values
        margins.append((top[0] - top[1]).item())
        out.append(int(logits.argmax()))
        if i == 0:
            t0 = time.perf_counter()
        if i + 1 < n:
            logits, state = rt.forward([out[-1]], state)
    return out, time.perf_counter() - t0, min(margins)


@torch.no_grad()
def ours_greedy(model, prompt_ids, n, decoder=None):
    """n greedy tokens through generate.py's decoding (prefill, token_stream), and the decode steps' time."""
    idx = torch.tensor([prompt_ids])
    steps = generate.token_stream(model, idx, generate.prefill(model, idx), n, lambda lg: lg.argmax(-1, keepdim=True),
                                  decoder=decoder)
    out = [int(next(steps))]
    t0 = time.perf_counter()
    out += [int(t) for t in steps]
    return out, time.perf_counter() - t0


def summary(rates):
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "runs": rates}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    p.add_argument("--input", help="an official RWKV-7 .pth (default: random weights of the 0.1B shape)")
    p.add_argument("--out_dir", default="out/rwkv_runtime", help="for the JSON report")
    p.add_argument("--random_pth", default="out/rwkv_runtime/random_rwkv7_0b1.pth",
                   help="where the random 0.1B-shape file is written (and reused) without --input")
    p.add_argument("--shape", type=int, nargs=8, default=[12, 768, 64, 65536, 64, 64, 32, 128],
                   metavar=("LAYERS", "WIDTH", "HEAD", "VOCAB", "R_DECAY", "R_ICL", "R_VALUE", "R_GATE"),
                   help="shape of the random file (default: the official 0.1B's)")
    p.add_argument("--write_random", action="store_true", help="only write the random file --random_pth, and exit")
    p.add_argument("--seq_len", type=int, default=64, help="tokens of the logit comparison")
    p.add_argument("--greedy", type=int, default=200, help="greedy tokens compared (and timed, untimed first one)")
    p.add_argument("--prompt", default="Once upon a time, there was a little girl named Lily.")
    p.add_argument("--decode", type=int, default=64, help="tokens decoded per timed run")
    p.add_argument("--repeats", type=int, default=3, help="rounds of the speed comparison")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--best_dtype", choices=["float32", "bfloat16", "int8"], default="int8",
                   help="weights of 'our fastest path' (float32: the generate.py model itself; int8: generate.py "
                        "--int8)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out_dir, exist_ok=True)
    path = args.input
    if path is None:
        path = args.random_pth
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            L, C, N, V, *ranks = args.shape
            torch.save(official_weights(L, C, N, V, tuple(ranks)), path + ".tmp")
            os.replace(path + ".tmp", path)
        if args.write_random:
            print(f"{path}: random RWKV-7 weights of shape {args.shape} (an existing file is kept)")
            return
    sd, config, _ = import_rwkv.import_pth(path)
    model = MicroRWKV(config)
    model.load_state_dict(sd)
    model.eval()
    del sd
    rt = load_runtime(path)
    report = {"file": path, "config": {**{k: getattr(config, k) for k in ("n_layer", "n_embd", "head_size", "vocab_size",
                                                                           "tie_head", "tokenizer")},
                                       "lora_ranks": import_rwkv.lora_ranks(config)},
              "threads": args.threads, "torch": torch.__version__}
    print(f"model: {config.n_layer} x {config.n_embd}, head size {config.head_size}, vocab {config.vocab_size}, "
          f"LoRA ranks {import_rwkv.lora_ranks(config)}; {args.threads} threads, float32")

    report["rel_err"] = equality(model, rt, config.vocab_size, args.seq_len)
    print(f"logits, {args.seq_len} tokens: max relative error sequence {report['rel_err']['sequence']:.2e}, "
          f"token by token {report['rel_err']['token_by_token']:.2e}")
    prompt_ids = get_tokenizer(config.tokenizer).encode(args.prompt)
    theirs, _, margin = runtime_greedy(rt, prompt_ids, args.greedy)
    ours, _ = ours_greedy(model, prompt_ids, args.greedy)
    same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(ours))
    report["greedy"] = {"n": args.greedy, "identical_prefix": same, "runtime": theirs, "ours": ours,
                        "distinct_tokens": len(set(theirs)), "min_top2_margin": margin}
    print(f"greedy: {same} of {args.greedy} tokens identical ({len(set(theirs))} distinct tokens; smallest top-1 "
          f"vs top-2 logit margin {margin:.3g})")

    best, best_decoder = model, None
    if args.best_dtype == "int8":
        best_decoder = decoder_for(model, int8=True)
    elif args.best_dtype != "float32":
        best = cast_weights(MicroRWKV(config).eval(), getattr(torch, args.best_dtype))
        best.load_state_dict(model.state_dict())
    if args.best_dtype != "float32":  # how far its greedy tokens follow the runtime's (reported, not required)
        best_tokens, _ = ours_greedy(best, prompt_ids, args.greedy, best_decoder)
        report["greedy"]["best_identical_prefix"] = next(
            (i for i, (a, b) in enumerate(zip(best_tokens, theirs)) if a != b), len(best_tokens))
        print(f"greedy, {args.best_dtype} weights: {report['greedy']['best_identical_prefix']} of {args.greedy} "
              f"tokens identical to the runtime's float32 ones")
    rates = {"runtime": [], "generate.py": [], "best": []}
    n = args.decode + 1
    for rep in range(args.repeats):  # taking turns: a busy moment slows one round of all three, not one of them
        for name in rates:
            if name == "runtime":
                _, dt, _ = runtime_greedy(rt, prompt_ids, n)
            else:
                _, dt = ours_greedy(model, prompt_ids, n) if name == "generate.py" else \
                    ours_greedy(best, prompt_ids, n, best_decoder)
            rates[name].append(args.decode / dt)
        print(f"round {rep + 1}: " + ", ".join(f"{k} {v[-1]:.1f} tok/s" for k, v in rates.items()))
    report["decode_tok_s"] = {k: summary(v) for k, v in rates.items()}
    report["best_dtype"] = args.best_dtype
    med = {k: v["median"] for k, v in report["decode_tok_s"].items()}
    report["ratio_vs_runtime"] = {k: med[k] / med["runtime"] for k in ("generate.py", "best")}
    for k, v in report["decode_tok_s"].items():
        print(f"decode {k}: median {v['median']:.2f} tok/s (min {v['min']:.2f}, max {v['max']:.2f}, "
              f"{args.repeats} runs of {args.decode} tokens)")
    print(f"ratio of medians to the runtime: generate.py {report['ratio_vs_runtime']['generate.py']:.2f}x, "
          f"best ({args.best_dtype}) {report['ratio_vs_runtime']['best']:.2f}x")
    out = os.path.join(args.out_dir, "benchmark_rwkv_runtime.json")
    report = {"command": " ".join(["python benchmark_rwkv_runtime.py", *sys.argv[1:]]), **report}
    with open(out + ".tmp", "w") as f:
        json.dump(report, f, indent=1)
    os.replace(out + ".tmp", out)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
