"""
Training throughput: tokens/s of a full training step (forward + backward + AdamW) for a pure RWKV model
(TimeMix + ChannelMix), the full MicroRWKV layer and the GPT baseline, at the same n_layer / n_embd /
vocab, measured in one run so the ratios compare like with like.

    python benchmark_training.py                        # float32, CPU, T = 256 and 1024
    python benchmark_training.py --n_layer=4 --n_embd=256 --seq_lens 128 --tokens_per_step=1024 --steps=3
"""

import argparse
import time

import torch

from model import GPTConfig, build_model

MODELS = {  # name -> GPTConfig overrides
    "rwkv": dict(model_type="microrwkv", use_swa=False, use_gqa=False, use_moe=False),
    "microrwkv": dict(model_type="microrwkv"),
    "gpt": dict(model_type="gpt"),
}


def tokens_per_second(model, batch_size, seq_len, steps, warmup, vocab_size, device):
    optimizer = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), device.type)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab_size, (batch_size, seq_len + 1), generator=gen).to(device)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * seq_len * steps / (time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="rwkv,microrwkv,gpt", help="comma-separated, from " + ",".join(MODELS))
    parser.add_argument("--n_layer", type=int, default=6)
    parser.add_argument("--n_embd", type=int, default=384)
    parser.add_argument("--n_head", type=int, default=6, help="attention heads (RWKV heads are n_embd // 64)")
    parser.add_argument("--vocab_size", type=int, default=50304)
    parser.add_argument("--seq_lens", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--tokens_per_step", type=int, default=4096, help="batch_size = this // seq_len")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model and length")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = args.models.split(",")
    if unknown := set(names) - set(MODELS):
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from {list(MODELS)}")
    print(f"n_layer={args.n_layer} n_embd={args.n_embd} vocab={args.vocab_size} float32 {args.device} "
          f"threads={args.threads}, {args.tokens_per_step} tokens/step, {args.steps} timed steps")
    print(f"{'T':>6} {'model':>10} {'params':>9} {'tokens/s':>10} {'vs gpt':>7}")
    for seq_len in args.seq_lens:
        results = {}
        for name in names:
            torch.manual_seed(0)
            config = GPTConfig(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                               vocab_size=args.vocab_size, block_size=seq_len, **MODELS[name])
            model = build_model(config).to(device)
            results[name] = (model.get_num_params(), tokens_per_second(
                model, max(1, args.tokens_per_step // seq_len), seq_len, args.steps, args.warmup,
                args.vocab_size, device))
        for name, (n_params, tps) in results.items():
            ratio = f"{tps / results['gpt'][1]:.2f}x" if "gpt" in results else "-"
            print(f"{seq_len:>6} {name:>10} {n_params / 1e6:>8.1f}M {tps:>10.0f} {ratio:>7}")


if __name__ == "__main__":
    main()
