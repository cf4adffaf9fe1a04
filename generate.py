"""
Sample text from a trained MicroRWKV (or GPT baseline) checkpoint, decoding in RNN mode.

$ python generate.py --prompt="One day" --max_num_tokens=50 --model_name=ckpt-500
$ python generate.py --prompt_file=story.txt --temperature=0 --stream --stop_at_eot
$ python generate.py --num_samples=3 --seed=7 --out_dir=out-tinystories
$ python generate.py --num_samples=8 --batch --stop_at_eot          # 8 samples decoded together, one batch
$ python generate.py --prompt_file=long.txt --save_state=long.state  # prefill once ...
$ python generate.py --load_state=long.state --num_samples=3         # ... continue it later, prompt not re-read

The model's configuration comes from the checkpoint (out_dir/<model_name>.pt, written by train.py or
import_rwkv.py), and so does its tokenizer: GPT-2's BPE, or RWKV World (official RWKV-7 models, where
<|endoftext|> is id 0).
The prompt is prefilled once in parallel, then every new token costs one recurrent step:
constant time per token for MicroRWKV's RWKV/SWA blocks, at any position, and past block_size.
Pure RWKV-7 models take that step through decode.py (the same math in far fewer calls).
GPT checkpoints work too, within their learned positions: a longer prompt is cropped to its last
block_size tokens, and a full KV cache is re-prefilled with the last block_size // 2 tokens
(GPT.context_window).

Samples and seeds: sample i draws from its own random generator, seeded from (--seed, i) (sample 0 from
--seed itself), so sample i is the same whether it is decoded alone, after others, or in a batch:
`--num_samples=3` and `--num_samples=3 --batch` print the same texts, and sample 0 is the text of
`--num_samples=1`. --batch decodes all samples together as one batch (B = --num_samples, the prompt
prefilled once) and prints them at the end; with --stop_at_eot each sample ends at its own <|endoftext|>,
and decoding goes on until every sample has ended (or --max_num_tokens).

Dtypes: --dtype=bfloat16 (CPU or GPU) and float16 (GPU only) store the weights in that dtype (half the
bytes to read per token) instead of autocasting float32 weights at every call. Kept in float32: TimeMix's
GroupNorm and its decay / bonus vectors (tiny, and read in float32 anyway), and the recurrent state's
matrix S, which TimeMix computes in float32 whatever the weights are.

Prompt caching: --save_state=FILE writes the model state after the prompt (before the first sampled
token) with that position's logits, the checkpoint's model_args and a fingerprint of its weights, and the
prompt's text and tokens. --load_state=FILE continues from it without reading the prompt again (so no
--prompt / --prompt_file), from the same checkpoint only. The file is a torch.save'd dict, written to a
temp file and renamed, read with torch.load(weights_only=True):
    format "microrwkv-generate-state", version 1, model_args, weights (float64 sum of every parameter),
    checkpoint (its path), dtype, prompt (text), prompt_tokens (LongTensor), n_prompt_tokens,
    logits (1, vocab_size) float32, state (one entry per layer: TimeMixState / KVCache / LayerState as
    {"type": name, "fields": {...}} dicts, tensors as contiguous CPU copies of their logical part)

After each sample (each batch with --batch), one line reports the token counts and the speed, measured
on the model calls only (sampling included, printing excluded):
    prefill = the prompt's forward pass and the first sampled token (a loaded state: the first token)
    decode  = every token after the first; with --batch per sample and in total (tokens kept / s)
--recompute decodes by re-running the whole context for every new token instead, to compare speeds;
it conditions on the same context (for GPT: the same window), so greedy (--temperature=0) decoding gives
the same tokens both ways.
An empty prompt starts from <|endoftext|>, the token between TinyStories stories.
"""

import argparse
import codecs
import hashlib
import math
import sys
import time
from dataclasses import asdict, fields

import torch

import tokenizer
from checkpoint import INIT_ONLY_FIELDS, CheckpointError, cast_weights, checkpoint_path, load_checkpoint, \
    model_from_checkpoint, one_line, save_checkpoint
from decode import decoder_for
from model import GPTConfig, KVCache, LayerState, TimeMixState, sample

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STATE_FORMAT = "microrwkv-generate-state"
STATE_TYPES = {t.__name__: t for t in (TimeMixState, KVCache, LayerState)}


def parse_args(argv):
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out_dir", default="out", help="directory of the checkpoints (train.py's out_dir)")
    p.add_argument("--model_name", default="ckpt", help="checkpoint in out_dir, without .pt: ckpt, ckpt-500, ...")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default=argparse.SUPPRESS,
                        help="text to continue (default: empty, i.e. start from <|endoftext|>)")
    prompt.add_argument("--prompt_file", help="read the prompt from this UTF-8 file (one trailing newline dropped)")
    p.add_argument("--max_num_tokens", type=int, default=200, help="new tokens per sample")
    p.add_argument("--num_samples", type=int, default=1, help="samples, one after the other (or one batch with "
                                                               "--batch), separated by dashes")
    p.add_argument("--batch", action="store_true", help="decode the --num_samples samples together in one batch; "
                                                         "the same texts as without it")
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy; < 1 sharper, > 1 more random")
    p.add_argument("--top_k", type=int, default=200, help="sample from the k most likely tokens; 0: no limit")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling: the smallest set of tokens with "
                                                              "this much probability, in (0, 1]; 1: no limit")
    p.add_argument("--seed", type=int, default=1337, help="same seed, same output; sample i uses seed (seed, i)")
    p.add_argument("--device", default=default_device, help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=list(DTYPES),
                   help="dtype of the weights (float16: not on CPU); default: bfloat16 on GPUs that support it, "
                        "else float32")
    p.add_argument("--int8", action="store_true",
                   help="pure RWKV-7 on CPU: decode with int8 copies of the matrices and 8-bit copies of their inputs "
                        "(one scale per row of each; the prompt is prefilled by the model as it is): a quarter of "
                        "float32's bytes per token, logits within a few percent of float32's")
    p.add_argument("--stream", action="store_true", help="print each token as soon as it is sampled")
    p.add_argument("--stop_at_eot", action="store_true", help="end a sample at <|endoftext|> (not printed)")
    p.add_argument("--recompute", action="store_true",
                   help="decode by re-running the whole context for every token (slow: for speed "
                        "comparisons) instead of one recurrent step per token")
    p.add_argument("--save_state", metavar="FILE", help="also write the model state after the prompt (with its "
                                                         "last logits) to FILE, for --load_state")
    p.add_argument("--load_state", metavar="FILE", help="continue the prompt saved in FILE by --save_state, without "
                                                         "reading it again (no --prompt / --prompt_file; the same "
                                                         "checkpoint)")
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


def get_tokenizer(name="gpt2"):
    """The tokenizer the checkpoint records (GPTConfig.tokenizer: GPT-2's BPE, or RWKV World for official models)."""
    try:
        return tokenizer.get_tokenizer(name)
    except tokenizer.TokenizerError as e:
        die(e)


def mask_padding_ids(model, n_vocab):
    """vocab_size is padded (50304 > 50257) for speed: never sample a padding id, it decodes to nothing."""
    if model.config.vocab_size > n_vocab:
        padding = torch.arange(n_vocab, model.config.vocab_size, device=model.lm_head.weight.device)
        model.lm_head.register_forward_hook(lambda module, args, logits: logits.index_fill(-1, padding, -math.inf))


# ----------------------------------------------------------------------------------------------------
# Sampling: one generator per sample, so that sample i does not depend on how many are drawn, or how


def sample_generator(seed, i, device):
    """Sample i's generator: seeded with `seed` for sample 0 (the one-sample output of earlier versions),
    else with a hash of (seed, i), so that no two (seed, i) share a stream."""
    if i > 0:
        seed = int.from_bytes(hashlib.sha256(f"{seed},{i}".encode()).digest()[:8], "little") >> 1
    return torch.Generator(device=device).manual_seed(seed)


def sample_rows(logits, temperature, top_k, top_p, generators):
    """One token per row of logits (B, vocab), row i drawn with generators[i]: (B, 1)."""
    return torch.cat([sample(logits[i:i + 1], temperature, top_k, top_p, g) for i, g in enumerate(generators)])


def generate_recompute(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Decoding by re-computation, for comparison: one forward pass over the whole context for every new
    token. GPT sees the window of the context its recurrent decoding sees (GPT.context_window), so greedy
    text is the same both ways. generator: one, or a list with one per row. Yields each new token (B, 1)."""
    context = model.crop_prompt(idx)
    for _ in range(max_new_tokens):
        logits, _ = model(context)
        idx_next = sample_rows(logits[:, -1, :], temperature, top_k, top_p, generator) \
            if isinstance(generator, list) else sample(logits[:, -1, :], temperature, top_k, top_p, generator)
        yield idx_next
        context = torch.cat((context, idx_next), dim=1)
        if hasattr(model, "context_window"):
            context = model.context_window(context)


# ----------------------------------------------------------------------------------------------------
# Recurrent decoding from a prefilled state


@torch.no_grad()
def prefill(model, idx):
    """The logits of idx's last position (B, vocab) and the state after idx (B, T)."""
    logits, state, _ = model._forward(model.crop_prompt(idx), None, all_logits=False)  # last position only
    return logits[:, -1], state


def repeat_rows(obj, n):
    """A state (or logits) of batch size 1 as n rows: fresh tensors, so the caller's state is never written."""
    if isinstance(obj, torch.Tensor):
        return obj.repeat(n, *[1] * (obj.dim() - 1))
    if isinstance(obj, tuple):  # the NamedTuples of model.py
        return type(obj)(*(repeat_rows(o, n) for o in obj))
    if isinstance(obj, list):
        return [repeat_rows(o, n) for o in obj]
    return obj  # None, int


@torch.no_grad()
def token_stream(model, idx, start, max_new_tokens, pick, batch=1, decoder=None):
    """model.generate_stream from a prefilled start = (logits (1, vocab), state) after the prompt idx (1, T),
    for `batch` rows at once, each row's token chosen by pick(logits (batch, vocab)) -> (batch, 1). Each step is
    decoder.next_state, by default decoder_for(model)'s: for pure RWKV-7, decode.py's step (the same function
    with fewer calls), else the model's own."""
    logits, state = repeat_rows(start[0], batch), repeat_rows(start[1], batch)
    history = [idx.expand(batch, -1)]  # the context in pieces (GPT re-prefills from it when its cache is full)
    decoder = decoder or decoder_for(model)
    for i in range(max_new_tokens):
        idx_next = pick(logits)
        yield idx_next
        if i + 1 < max_new_tokens:
            history.append(idx_next)
            logits, state = decoder.next_state(history, state)
            logits = logits[:, -1]


# ----------------------------------------------------------------------------------------------------
# State files (--save_state / --load_state)


def plain(obj):
    """A state as torch.load(weights_only=True) reads it back: NamedTuples as {"type", "fields"} dicts, tensors
    as contiguous CPU copies (a KV cache is a view of a buffer with spare room: only its logical part)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True).contiguous()
    if isinstance(obj, tuple):
        return {"type": type(obj).__name__, "fields": {k: plain(v) for k, v in obj._asdict().items()}}
    if isinstance(obj, list):
        return [plain(o) for o in obj]
    return obj


def unplain(obj, ref, device, where="state"):
    """plain()'s output back as the NamedTuples of model.py, checked against ref (a state of the running model:
    the same structure, dtypes and shapes, but a KV cache's length); ValueError names the first difference."""
    if isinstance(ref, torch.Tensor):
        if not isinstance(obj, torch.Tensor):
            raise ValueError(f"{where} is {type(obj).__name__}, not a tensor")
        free = 2 if where.endswith((".k", ".v")) else None  # a KV cache's length (SWA: fixed; GQA, GPT: grows)
        if obj.dim() != ref.dim() or any(a != b for d, (a, b) in enumerate(zip(obj.shape, ref.shape)) if d != free):
            raise ValueError(f"{where} has shape {tuple(obj.shape)}, the model's {tuple(ref.shape)}")
        return obj.to(device=device, dtype=ref.dtype)  # a state saved in another --dtype: S stays float32
    if isinstance(ref, tuple):
        name = type(ref).__name__
        if not isinstance(obj, dict) or obj.get("type") != name or not isinstance(obj.get("fields"), dict) \
                or set(obj["fields"]) != set(ref._fields):
            raise ValueError(f"{where} is not a {name}")
        return type(ref)(*(unplain(obj["fields"][f], r, device, f"{where}.{f}") for f, r in zip(ref._fields, ref)))
    if isinstance(ref, list):
        if not isinstance(obj, list) or len(obj) != len(ref):
            raise ValueError(f"{where} has {len(obj) if isinstance(obj, list) else 'no'} layers, the model {len(ref)}")
        return [unplain(o, r, device, f"{where}[{i}]") for i, (o, r) in enumerate(zip(obj, ref))]
    if type(obj) is not type(ref):
        raise ValueError(f"{where} is {type(obj).__name__}, not {type(ref).__name__}")
    return obj


def weights_fingerprint(model):
    """The float64 sum of every parameter: tells checkpoints of one architecture apart (taken before any cast)."""
    return torch.stack([p.detach().sum(dtype=torch.float64) for p in model.parameters()]).cpu()


def save_state(path, model, weights, checkpoint, dtype, prompt, prompt_ids, logits, state):
    """torch.save the state after the prompt to path, atomically (a temp file beside it, then renamed)."""
    data = {"format": STATE_FORMAT, "version": 1, "model_args": asdict(model.config), "weights": weights,
            "checkpoint": checkpoint, "dtype": dtype, "prompt": prompt, "n_prompt_tokens": len(prompt_ids),
            "prompt_tokens": torch.tensor(prompt_ids, dtype=torch.long), "logits": logits.detach().float().cpu(),
            "state": plain(state)}
    try:
        save_checkpoint(path, data)  # atomic: a temp file, fsynced, renamed; removed on failure
    except OSError as e:
        die(f"cannot write --save_state {path} ({one_line(e)})")


def read_state(path):
    """The dict in a --save_state file; die() if it cannot be read or is not one."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        die(f"cannot read --load_state {path} ({one_line(e)})")
    except Exception as e:  # torch.load raises many types for a file that is not a torch zip archive
        die(f"{path} is not a generate.py state file ({one_line(e)})")
    if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
        die(f"{path} is not a generate.py state file (no format '{STATE_FORMAT}' entry)")
    return saved


def check_positions(state, n_tokens):
    """ValueError unless every layer has seen the same 1..n_tokens tokens (GPT: its window of them), its caches
    agree with it, and each growing cache (GPT's, GQA's) holds one key per token seen."""
    pos = state[0].pos
    for i, layer in enumerate(state):
        if not 1 <= layer.pos <= n_tokens or layer.pos != pos:
            raise ValueError(f"state[{i}].pos is {layer.pos}, not the {pos} of layer 0 within 1..{n_tokens} prompt tokens")
        caches = [layer] if isinstance(layer, KVCache) else [c for c in (layer.swa, layer.gqa) if c is not None]
        growing = [layer] if isinstance(layer, KVCache) else [c for c in (layer.gqa,) if c is not None]
        if any(c.pos != pos for c in caches):
            raise ValueError(f"state[{i}] has a cache whose pos is not its layer's {pos}")
        if any(c.k.shape[2] != c.pos for c in growing):
            raise ValueError(f"state[{i}] has a cache whose number of keys is not its pos {pos}")


def resume(saved, path, model, weights, device):
    """(prompt text, prompt ids, (logits, state)) from a read_state() dict, for this model only; die() else."""
    here, there = asdict(model.config), saved.get("model_args")
    if not isinstance(there, dict):
        die(f"{path} is not a generate.py state file (no model_args)")
    names = [f.name for f in fields(GPTConfig)] + sorted(set(here) | set(there) - {f.name for f in fields(GPTConfig)})
    for name in (n for n in names if n not in INIT_ONLY_FIELDS and n != "dropout"):  # those change no logits
        if here.get(name) != there.get(name):
            die(f"{path} was saved from another model: {name}={there.get(name)!r} there, {here.get(name)!r} in "
                f"this checkpoint")
    w = saved.get("weights")
    if not isinstance(w, torch.Tensor) or w.shape != weights.shape \
            or not torch.allclose(w.double(), weights, rtol=1e-9, atol=1e-6):
        die(f"{path} was saved from other weights (checkpoint {saved.get('checkpoint')}); save the prompt again "
            f"with this one")
    try:
        prompt, ids, logits = saved["prompt"], saved["prompt_tokens"], saved["logits"]
        if not isinstance(prompt, str) or not isinstance(ids, torch.Tensor) or ids.dim() != 1 or len(ids) < 1 \
                or len(ids) != saved["n_prompt_tokens"]:
            raise ValueError("bad prompt entries")
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (1, model.config.vocab_size):
            raise ValueError(f"logits are not (1, {model.config.vocab_size})")
        if ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < model.config.vocab_size:
            raise ValueError(f"prompt_tokens has token ids outside [0, {model.config.vocab_size})")
        ref = prefill(model, torch.zeros(1, 1, dtype=torch.long, device=device))[1]  # a state of this model
        state = unplain(saved["state"], ref, device)
        check_positions(state, len(ids))
    except (KeyError, TypeError, ValueError) as e:
        die(f"{path} is not a usable state file ({one_line(e)})")
    return prompt, ids.tolist(), (logits.to(device), state)


# ----------------------------------------------------------------------------------------------------


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_args(args):
    """die() on values or combinations of flags that cannot work."""
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
    if args.batch and args.stream:
        die("--batch prints its samples when they are all done: drop --stream (or --batch)")
    if args.load_state and (hasattr(args, "prompt") or args.prompt_file is not None):
        die("--load_state continues the prompt saved in its file: drop --prompt / --prompt_file")
    if args.load_state and args.save_state:
        die("give --save_state or --load_state, not both")
    if args.recompute and (args.load_state or args.save_state):
        die("--recompute keeps no state to save or load (it re-reads the whole context for every token)")
    if args.int8 and (args.recompute or args.device != "cpu"):
        die("--int8 is a CPU decoding path: drop --recompute, use --device=cpu")


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    check_args(args)
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
    saved = read_state(args.load_state) if args.load_state else None
    prompt = getattr(args, "prompt", "")
    if args.prompt_file is not None:
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                prompt = f.read()
        except (OSError, UnicodeDecodeError) as e:
            die(f"cannot read --prompt_file {args.prompt_file} ({one_line(e)})")
        prompt = prompt[:-1] if prompt.endswith("\n") else prompt  # the newline editors add at the end

    model = load_model(args.out_dir, args.model_name, device)
    enc = get_tokenizer(model.config.tokenizer)
    eot = enc.eot_token
    weights = weights_fingerprint(model) if saved or args.save_state else None
    if dtype != "float32":
        cast_weights(model, DTYPES[dtype])
    mask_padding_ids(model, enc.n_vocab)
    cfg = model.config
    start = None  # (logits, state) after the prompt, when it comes from --load_state
    if saved:
        prompt, prompt_ids, start = resume(saved, args.load_state, model, weights, device)
    else:
        # the prompt may contain <|endoftext|>, the story separator of the training data
        prompt_ids = enc.encode(prompt, allowed_special={"<|endoftext|>"}) or [eot]
        if cfg.model_type == "gpt" and not cfg.rotary and len(prompt_ids) > cfg.block_size:
            print(f"warning: the prompt has {len(prompt_ids)} tokens; GPT's positions end at block_size="
                  f"{cfg.block_size}, so it sees only the last {cfg.block_size}", file=sys.stderr)
            prompt_ids = prompt_ids[-cfg.block_size:]
    if any(i >= cfg.vocab_size for i in prompt_ids):
        die(f"the prompt has tokens outside the model's vocab_size={cfg.vocab_size}")
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    try:
        decoder = decoder_for(model, args.int8)  # made once for every sample: int8 copies take a while
    except ValueError as e:
        die(f"--int8: {e}")

    top_k = args.top_k or None
    mode = "recompute" if args.recompute else "recurrent"
    # one run per sample, or one run for the whole batch; sample i always draws from its own generator
    runs = [list(range(args.num_samples))] if args.batch else [[i] for i in range(args.num_samples)]
    for run in runs:
        generators = [sample_generator(args.seed, i, device) for i in run]
        B, stream = len(run), args.stream
        utf8 = [codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in run]  # a character can span tokens
        pieces = [[prompt] for _ in run]
        counts, done = [0] * B, [False] * B
        if run[0] > 0:
            print("-" * 80)
        if stream:
            print(prompt, end="", flush=True)
        t0 = time.perf_counter()
        if args.recompute:
            steps = generate_recompute(model, idx.expand(B, -1), args.max_num_tokens, args.temperature, top_k,
                                       args.top_p, generators)
        else:
            run_start = start or prefill(model, idx)  # unbatched: every sample prefills again, as before
            sync(device)
            t_prompt = time.perf_counter() - t0
            if args.save_state and run[0] == 0:  # after the first prefill, untimed
                save_state(args.save_state, model, weights, checkpoint_path(args.out_dir, args.model_name), dtype,
                           prompt, prompt_ids, *run_start)
            pick = lambda logits: sample_rows(logits, args.temperature, top_k, args.top_p, generators)
            steps = token_stream(model, idx, run_start, args.max_num_tokens, pick, B, decoder)
        times = []  # times[0]: prefill + 1st token; then one entry per token
        with torch.no_grad():
            for n_new in range(1, args.max_num_tokens + 1):
                t0 = time.perf_counter()
                tokens = next(steps)[:, 0].tolist()  # .tolist(): waits for the device, so the time is honest
                times.append(time.perf_counter() - t0)
                for r, token in enumerate(tokens):
                    if done[r]:
                        continue
                    counts[r] = n_new
                    if args.stop_at_eot and token == eot:
                        done[r] = True
                        continue
                    pieces[r].append(utf8[r].decode(enc.decode_single_token_bytes(token)))
                    if stream:
                        print(pieces[r][-1], end="", flush=True)
                if all(done):
                    break
        if not args.recompute:
            times[0] += t_prompt
        for r in range(B):
            pieces[r].append(utf8[r].decode(b"", final=True))
            print(("-" * 80 + "\n") * (r > 0) + (pieces[r][-1] if stream else "".join(pieces[r])))
        print(speed_line(times, counts, len(prompt_ids), mode, args.batch, saved is not None, device, dtype))


def speed_line(times, counts, n_prompt, mode, batch, loaded, device, dtype):
    """[prompt | generated | prefill | decode | device dtype]; with --batch, decode per sample and in total."""
    t_prefill, t_decode, n_steps = times[0], sum(times[1:]), len(times)
    if loaded:
        prefill_part = f"prefill from saved state ({t_prefill:.3f} s, 1st token)"
    else:
        prefill_part = f"prefill {n_prompt / t_prefill:.1f} tok/s ({t_prefill:.3f} s, incl. 1st token)"
    if not batch:
        decode_speed = f"{(n_steps - 1) / t_decode:.1f} tok/s" if n_steps > 1 else "n/a"
        generated = f"generated {counts[0]} tokens"
    else:
        kept = sum(c - 1 for c in counts)  # tokens after each sample's first, up to its own end
        decode_speed = (f"{(n_steps - 1) / t_decode:.1f} tok/s per sample, {kept / t_decode:.1f} tok/s total"
                        if n_steps > 1 else "n/a")
        generated = f"generated {', '.join(map(str, counts))} tokens in a batch of {len(counts)}"
    return (f"[prompt {n_prompt} tokens | {generated} | {prefill_part} | decode ({mode}) {decode_speed} "
            f"({t_decode:.3f} s) | {device} {dtype}]")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C in the middle of a long sample
        print("", file=sys.stderr)
        sys.exit(130)
