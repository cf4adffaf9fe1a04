"""
Sample text from a trained MicroRWKV (or GPT baseline) checkpoint, decoding in RNN mode.

$ python generate.py --prompt="One day" --max_num_tokens=50 --model_name=ckpt-500
$ python generate.py --prompt_file=story.txt --temperature=0 --stream --stop_at_eot
$ python generate.py --num_samples=3 --seed=7 --out_dir=out-tinystories

The model's configuration comes from the checkpoint (out_dir/<model_name>.pt, written by train.py).
The prompt is prefilled once in parallel, then every new token costs one recurrent step
(model.generate_stream): constant time per token for MicroRWKV's RWKV/SWA blocks, at any position,
and past block_size. GPT checkpoints work too, within their learned positions: a longer prompt is cropped
to its last block_size tokens, and a full KV cache is re-prefilled with the last block_size // 2 tokens
(GPT.context_window).

After each sample, one line reports the token counts and the speed, measured on the model calls only
(sampling included, printing excluded):
    prefill = the prompt's forward pass and the first sampled token
    decode  = every token after the first
--recompute decodes by re-running the whole context for every new token instead, to compare speeds;
it conditions on the same context (for GPT: the same window), so greedy (--temperature=0) decoding gives
the same tokens both ways.
An empty prompt starts from <|endoftext|>, the token between TinyStories stories.
"""

import argparse
import codecs
import functools
import math
import sys
import time
from contextlib import nullcontext

import torch

from checkpoint import CheckpointError, checkpoint_path, load_checkpoint, model_from_checkpoint, one_line
from model import sample


def parse_args(argv):
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out_dir", default="out", help="directory of the checkpoints (train.py's out_dir)")
    p.add_argument("--model_name", default="ckpt", help="checkpoint in out_dir, without .pt: ckpt, ckpt-500, ...")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="", help="text to continue; empty: start from <|endoftext|>")
    prompt.add_argument("--prompt_file", help="read the prompt from this UTF-8 file (one trailing newline dropped)")
    p.add_argument("--max_num_tokens", type=int, default=200, help="new tokens per sample")
    p.add_argument("--num_samples", type=int, default=1, help="samples, one after the other, separated by dashes")
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy; < 1 sharper, > 1 more random")
    p.add_argument("--top_k", type=int, default=200, help="sample from the k most likely tokens; 0: no limit")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling: the smallest set of tokens with "
                                                              "this much probability, in (0, 1]; 1: no limit")
    p.add_argument("--seed", type=int, default=1337, help="same seed, same output")
    p.add_argument("--device", default=default_device, help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="autocast dtype of the forward passes (float16: not on CPU); "
                        "default: bfloat16 on GPUs that support it, else float32")
    p.add_argument("--stream", action="store_true", help="print each token as soon as it is sampled")
    p.add_argument("--stop_at_eot", action="store_true", help="end a sample at <|endoftext|> (not printed)")
    p.add_argument("--recompute", action="store_true",
                   help="decode by re-running the whole context for every token (slow: for speed "
                        "comparisons) instead of one recurrent step per token")
    return p.parse_args(argv)


def die(msg):
    """A one-line error and exit code 1: bad input is the user's to fix, not a traceback to read."""
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def load_model(out_dir, model_name, device):
    """Build the model that out_dir/<model_name>.pt describes and load its weights; die() on bad input."""
    path = checkpoint_path(out_dir, model_name)
    try:
        model = model_from_checkpoint(load_checkpoint(path, device, mmap=True), path)
    except CheckpointError as e:
        die(e)
    return model.to(device).eval()


def get_tokenizer():
    import tiktoken
    try:
        return tiktoken.get_encoding("r50k_base")  # GPT-2's BPE, as prepare_tinystories.py uses
    except Exception as e:
        die(f"cannot load the GPT-2 tokenizer r50k_base ({type(e).__name__}); offline, set TIKTOKEN_CACHE_DIR "
            f"to a folder with its files (e.g. ../shared/tiktoken_cache)")


def mask_padding_ids(model, n_vocab):
    """vocab_size is padded (50304 > 50257) for speed: never sample a padding id, it decodes to nothing."""
    if model.config.vocab_size > n_vocab:
        padding = torch.arange(n_vocab, model.config.vocab_size, device=model.lm_head.weight.device)
        model.lm_head.register_forward_hook(lambda module, args, logits: logits.index_fill(-1, padding, -math.inf))


def generate_recompute(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Decoding by re-computation, for comparison: one forward pass over the whole context for every new
    token. GPT sees the window of the context its recurrent decoding sees (GPT.context_window), so greedy
    text is the same both ways. Yields each new token (B, 1)."""
    context = model.crop_prompt(idx)
    for _ in range(max_new_tokens):
        logits, _ = model(context)
        idx_next = sample(logits[:, -1, :], temperature, top_k, top_p, generator)
        yield idx_next
        context = torch.cat((context, idx_next), dim=1)
        if hasattr(model, "context_window"):
            context = model.context_window(context)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.max_num_tokens < 1:
        die(f"--max_num_tokens must be >= 1, got {args.max_num_tokens}")
    if args.num_samples < 1:
        die(f"--num_samples must be >= 1, got {args.num_samples}")
    if args.temperature < 0:
        die(f"--temperature must be >= 0 (0: greedy), got {args.temperature}")
    if not 0 < args.top_p <= 1:
        die(f"--top_p must be in (0, 1], got {args.top_p}")
    if args.top_k < 0:
        die(f"--top_k must be >= 0 (0: no limit), got {args.top_k}")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        die(f"bad --device {args.device!r} ({one_line(e)})")
    if device.type == "cuda" and not torch.cuda.is_available():
        die(f"--device={args.device} but CUDA is not available; use --device=cpu")
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    dtype = args.dtype or ("bfloat16" if cuda_bf16 else "float32")
    if dtype == "float16" and device.type == "cpu":
        die("--dtype=float16 needs a GPU; use float32 or bfloat16 on CPU")
    ptdtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    ctx = nullcontext() if ptdtype is None else torch.autocast(device_type=device.type, dtype=ptdtype)
    if args.prompt_file is not None:
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                prompt = f.read()
        except (OSError, UnicodeDecodeError) as e:
            die(f"cannot read --prompt_file {args.prompt_file} ({one_line(e)})")
        prompt = prompt[:-1] if prompt.endswith("\n") else prompt  # the newline editors add at the end
    else:
        prompt = args.prompt

    enc = get_tokenizer()
    eot = enc.eot_token
    model = load_model(args.out_dir, args.model_name, device)
    mask_padding_ids(model, enc.n_vocab)
    cfg = model.config
    # the prompt may contain <|endoftext|>, the story separator of the training data
    prompt_ids = enc.encode(prompt, allowed_special={"<|endoftext|>"}) or [eot]
    if cfg.model_type == "gpt" and len(prompt_ids) > cfg.block_size:
        print(f"warning: the prompt has {len(prompt_ids)} tokens; GPT's positions end at block_size="
              f"{cfg.block_size}, so it sees only the last {cfg.block_size}", file=sys.stderr)
        prompt_ids = prompt_ids[-cfg.block_size:]
    if any(i >= cfg.vocab_size for i in prompt_ids):
        die(f"the prompt has tokens outside the model's vocab_size={cfg.vocab_size}")
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)

    # one generator seeded once: sample i of a run is the same for the same seed
    generator = torch.Generator(device=device).manual_seed(args.seed)
    decode = functools.partial(generate_recompute, model) if args.recompute else model.generate_stream
    top_k = args.top_k or None
    mode = "recompute" if args.recompute else "recurrent"
    for s in range(args.num_samples):
        if s > 0:
            print("-" * 80)
        # bytes -> text incrementally: a character can span several BPE tokens
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pieces = [prompt]
        if args.stream:
            print(prompt, end="", flush=True)
        steps = decode(idx, args.max_num_tokens, args.temperature, top_k, args.top_p, generator)
        times = []  # times[0]: prefill + 1st token; then one entry per token
        with torch.no_grad(), ctx:
            for n_new in range(1, args.max_num_tokens + 1):
                t0 = time.perf_counter()
                token = int(next(steps)[0, 0])  # int(): waits for the device, so the time is honest
                times.append(time.perf_counter() - t0)
                if args.stop_at_eot and token == eot:
                    break
                pieces.append(utf8.decode(enc.decode_single_token_bytes(token)))
                if args.stream:
                    print(pieces[-1], end="", flush=True)
        pieces.append(utf8.decode(b"", final=True))
        print(pieces[-1] if args.stream else "".join(pieces))
        t_prefill, t_decode = times[0], sum(times[1:])
        decode_speed = f"{(n_new - 1) / t_decode:.1f} tok/s" if n_new > 1 else "n/a"
        print(f"[prompt {len(prompt_ids)} tokens | generated {n_new} tokens | "
              f"prefill {len(prompt_ids) / t_prefill:.1f} tok/s ({t_prefill:.3f} s, incl. 1st token) | "
              f"decode ({mode}) {decode_speed} ({t_decode:.3f} s) | {device} {dtype}]")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C in the middle of a long sample
        print("", file=sys.stderr)
        sys.exit(130)
