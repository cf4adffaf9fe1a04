"""
Import an official RWKV-7 model (a BlinkDL .pth file, the layout the `rwkv` runtime runs and export_rwkv.py
writes) as a MicroRWKV checkpoint, to evaluate, sample from and fine-tune with this codebase.

$ python import_rwkv.py --input rwkv7-g1-0.1b-20250307-ctx4096.pth --out_dir out-rwkv7-0b1
$ python generate.py --out_dir out-rwkv7-0b1 --prompt "Once upon a time" --temperature 0
$ python train.py config/eval_rwkv7_0b1.py                  # val loss on a World-tokenized dataset
$ python train.py config/train_tinystories_cpu.py --dataset=tinystories_local_world \\
      --init_from=rwkv:rwkv7-g1-0.1b-20250307-ctx4096.pth   # fine-tune (or --init_from=out-rwkv7-0b1)
$ python export_rwkv.py --out_dir out --output finetuned.pth  # and back to the official format

--input is a local file or a Hugging Face hub file given as owner/repo/filename (e.g.
BlinkDL/rwkv7-g1/rwkv7-g1-0.1b-20250307-ctx4096.pth), downloaded once into the hub cache; offline, that cache
or a copy of the file in the current directory is read. DIR/ckpt.pt is a pure x070 MicroRWKV checkpoint (use_swa=use_gqa=use_moe=False, LayerNorm
biases, the official untied head: tie_head=False) whose configuration comes from the tensor shapes:
layers, width, head size, vocabulary and the four LoRA ranks. It records its tokenizer (tokenizer=
'rwkv_world' for the 65,536-token vocabulary of the official models; --tokenizer for another). Tensors in
float16 or bfloat16 are converted to float32 (exactly). Another RWKV version, a damaged file, a missing,
misshapen or unexpected tensor: a one-line error naming it, and nothing written.
"""

import argparse
import dataclasses
import math
import os
import re

import torch

from checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, one_line
from export_rwkv import X070_ATT, die, save_atomic
from model import GPTConfig, MicroRWKV

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# how the other RWKV generations show themselves in a .pth: a tensor name (suffix) of theirs
OTHER_VERSIONS = (("att.time_maa_x", "RWKV-6"), ("att.time_faaaa", "RWKV-5"), ("att.time_first", "RWKV-4"))
WORLD_VOCAB = 65536
LORA_FIELDS = ("lora_w", "lora_a", "lora_v", "lora_g")  # GPTConfig's ranks of the w1/a1/v1/g1 LoRAs


class RWKVImportError(ValueError):
    """A file that is not a usable RWKV-7 model; the message is one line."""


# ----------------------------------------------------------------------------------------------------
# finding and reading the file


def resolve(spec):
    """A local path, or the hub cache's path of owner/repo/filename (downloaded if the hub is reachable)."""
    if os.path.isfile(spec):
        return spec
    parts = spec.split("/")
    if len(parts) < 3 or os.path.exists(os.path.dirname(spec)) or not spec.endswith(".pth"):
        raise RWKVImportError(f"no file {spec} (a local .pth, or a hub file as owner/repo/filename.pth)")
    from data import hub_reachable
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise RWKVImportError(f"{spec} is not a local file and huggingface_hub is not installed to download it "
                              "(pip install huggingface_hub)") from None
    repo, filename, offline = "/".join(parts[:2]), "/".join(parts[2:]), not hub_reachable()
    if offline and os.path.isfile(os.path.basename(filename)):  # a copy of the file in the current directory
        return os.path.basename(filename)
    try:
        return hf_hub_download(repo_id=repo, filename=filename, local_files_only=offline)
    except Exception as e:  # huggingface_hub raises its own types for a missing repo, file or network
        why = ("the hub is unreachable, and the file is neither in the hub cache nor in the current directory"
               if offline else one_line(e))
        raise RWKVImportError(f"cannot get {filename} from {repo}: {why}; download it and give its path") from None


def read_pth(path):
    """The {name: tensor} dict of an official .pth; RWKVImportError if it is not one."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch.load raises many types for a truncated or foreign file
        raise RWKVImportError(f"{path} is damaged or not a PyTorch .pth file ({one_line(e)})") from None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise RWKVImportError(f"{path} is not an RWKV model: an official .pth is a flat dict of tensors")
    return sd


def check_rwkv7(sd, path):
    """Refuse what is not RWKV-7, naming the version when it is another RWKV."""
    if "blocks.0.att.r_k" in sd and "emb.weight" in sd:
        return
    for suffix, version in OTHER_VERSIONS:
        if any(k.endswith(suffix) for k in sd):
            raise RWKVImportError(f"{path} is an {version} model (it has {suffix}); import_rwkv.py reads RWKV-7 "
                                  "(x070) files only")
    missing = "emb.weight" if "emb.weight" not in sd else "blocks.0.att.r_k"
    raise RWKVImportError(f"{path} is not an RWKV-7 model: it has no '{missing}'")


# ----------------------------------------------------------------------------------------------------
# the configuration, from the shapes


def shape_of(sd, name, path):
    if name not in sd:
        raise RWKVImportError(f"{path} has no '{name}': not a complete RWKV-7 model")
    return tuple(sd[name].shape)


def infer_config(sd, path, tokenizer=None, block_size=4096, dropout=0.0):
    """The GPTConfig of a pure x070 MicroRWKV with the file's shapes (after check_rwkv7)."""
    V, C = shape_of(sd, "emb.weight", path)
    H, N = shape_of(sd, "blocks.0.att.r_k", path)
    layers = {int(m[1]) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    n_layer = max(layers) + 1
    if H * N != C:
        raise RWKVImportError(f"{path}: blocks.0.att.r_k is {H} x {N} but the embedding is {C} wide")
    v_layer = "blocks.1" if n_layer > 1 else "blocks.0"  # layer 0's v0/v1/v2 are unused, and often left out
    ranks = []
    for prefix in "wavg":
        name = f"{v_layer if prefix == 'v' else 'blocks.0'}.att.{prefix}1"
        if prefix == "v" and name not in sd:  # a one-layer model without layer 0's value LoRA: any rank
            ranks.append(32)
            continue
        rows, D = shape_of(sd, name, path)
        if rows != C:
            raise RWKVImportError(f"{path}: {name} has shape {(rows, D)}, expected ({C}, rank)")
        ranks.append(D)
    hidden = shape_of(sd, "blocks.0.ffn.key.weight", path)[0]
    if hidden != 4 * C:
        raise RWKVImportError(f"{path}: blocks.0.ffn.key.weight is {hidden} wide; MicroRWKV's ChannelMix7 is "
                              f"4 x n_embd = {4 * C}")
    if tokenizer is None:
        if V == WORLD_VOCAB:
            tokenizer = "rwkv_world"
        elif 50257 <= V < WORLD_VOCAB:
            tokenizer = "gpt2"  # a model trained here (vocab_size 50257 padded to 50304), exported
        else:
            raise RWKVImportError(f"{path}: a vocabulary of {V} tokens is neither RWKV World's ({WORLD_VOCAB}) nor "
                                  "GPT-2's; pass --tokenizer")
    head = sd.get("head.weight")
    tied = head is not None and torch.equal(head, sd["emb.weight"])  # written from a tied model: keep it tied
    try:
        return GPTConfig(model_type="microrwkv", rwkv_version="x070", n_layer=n_layer, n_embd=C, head_size=N,
                         n_head=H, vocab_size=V, bias=True, ln_emb=True, use_swa=False, use_gqa=False,
                         use_moe=False, **dict(zip(LORA_FIELDS, ranks)), tie_head=tied, tokenizer=tokenizer,
                         block_size=block_size, dropout=dropout)
    except ValueError as e:
        raise RWKVImportError(f"{path}: {e}") from None


# ----------------------------------------------------------------------------------------------------
# the tensors: official name -> ours (the inverse of export_rwkv.convert_x070)


def name_map(n_layer):
    """{our name: official name}, every tensor of a pure x070 MicroRWKV (but its tied head)."""
    m = {"wte.weight": "emb.weight", "ln_in.weight": "blocks.0.ln0.weight", "ln_in.bias": "blocks.0.ln0.bias",
         "ln_f.weight": "ln_out.weight", "ln_f.bias": "ln_out.bias", "lm_head.weight": "head.weight"}
    for i in range(n_layer):
        o, ours = f"blocks.{i}.", f"blocks.{i}."
        for p in ("weight", "bias"):
            m[f"{ours}ln_tmix.{p}"], m[f"{ours}ln_cmix.{p}"] = f"{o}ln1.{p}", f"{o}ln2.{p}"
            m[f"{ours}tmix.ln_x.{p}"] = f"{o}att.ln_x.{p}"
        for name in X070_ATT + ["r_k"]:
            m[f"{ours}tmix.{name}"] = f"{o}att.{name}"
        for name in ("receptance", "key", "value", "output"):
            m[f"{ours}tmix.{name}.weight"] = f"{o}att.{name}.weight"
        m[f"{ours}cmix.x_k"] = f"{o}ffn.x_k"
        for name in ("key", "value"):
            m[f"{ours}cmix.{name}.weight"] = f"{o}ffn.{name}.weight"
    return m


def convert(sd, config, path):
    """Our float32 state dict from the official one, every tensor checked against the shape our model gives it."""
    with torch.device("meta"):  # shapes only, no memory and no init
        template = MicroRWKV(config).state_dict()
    left, out = dict(sd), {}
    for ours, official in name_map(config.n_layer).items():
        want = tuple(template[ours].shape)
        if official not in left:
            if official.startswith("blocks.0.att.v"):  # unused in layer 0: files may leave them out
                out[ours] = torch.zeros(want)
                continue
            if ours == "lm_head.weight" and config.tie_head:
                continue
            raise RWKVImportError(f"{path} has no '{official}': not a complete RWKV-7 model")
        t = left.pop(official)
        if t.dtype not in FLOAT_DTYPES:
            raise RWKVImportError(f"{path}: {official} is {t.dtype}; only float32/float16/bfloat16 files import "
                                  "(not quantized ones)")
        # vectors may come as (C,) or (1, 1, C); matrices must match exactly (a transposed one would not show)
        if tuple(t.shape) != want and not (t.dim() != 2 and len(want) != 2 and t.numel() == math.prod(want)):
            raise RWKVImportError(f"{path}: {official} has shape {tuple(t.shape)}, expected {want} for an RWKV-7 of "
                                  f"{config.n_layer} layers x {config.n_embd} (head size {config.head_size}, "
                                  f"vocab {config.vocab_size})")
        t = t.float().reshape(want).contiguous()
        if not torch.isfinite(t).all():
            raise RWKVImportError(f"{path}: {official} holds non-finite values (a damaged file?)")
        out[ours] = t
    if config.tie_head:
        out["lm_head.weight"] = out["wte.weight"]
    if left:
        names = ", ".join(sorted(left)[:3]) + (", ..." if len(left) > 3 else "")
        raise RWKVImportError(f"{path} has tensors a plain RWKV-7 does not: {names}")
    return out


def lora_ranks(config):
    """(decay, in-context learning rate, value residual, gate) LoRA ranks of an x070 config."""
    return tuple(getattr(config, f) for f in LORA_FIELDS)


def import_pth(spec, tokenizer=None, block_size=4096, dropout=0.0):
    """(state dict, GPTConfig, local path) of the official RWKV-7 file `spec` (see resolve)."""
    path = resolve(spec)
    sd = read_pth(path)
    check_rwkv7(sd, path)
    config = infer_config(sd, path, tokenizer, block_size, dropout)
    return convert(sd, config, path), config, path


def load_for_training(init_from, block_size, dropout=0.0):
    """train.py's init_from='rwkv:FILE' (an official file, imported in memory) or an imported checkpoint's
    directory: (model, model_args), the weights only, with block_size set to the training context (an RNN,
    the model runs at any length). RWKVImportError / CheckpointError with a one-line message."""
    if init_from.startswith("rwkv:"):
        sd, config, _ = import_pth(init_from[len("rwkv:"):], block_size=block_size, dropout=dropout)
        model = MicroRWKV(config)
        model.load_state_dict(sd)
    else:
        path = os.path.join(init_from, "ckpt.pt")
        model = model_from_checkpoint(load_checkpoint(path), path, dropout=dropout, block_size=block_size)
    return model, dataclasses.asdict(model.config)


def is_rwkv_init(init_from):
    """True for train.py's init_from values that load_for_training reads."""
    return init_from.startswith("rwkv:") or os.path.isfile(os.path.join(init_from, "ckpt.pt"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    p.add_argument("--input", required=True, help="the official RWKV-7 .pth: a local file or owner/repo/filename")
    p.add_argument("--out_dir", required=True, help="folder for ckpt.pt (created if needed)")
    p.add_argument("--tokenizer", choices=["gpt2", "rwkv_world"],
                   help="the token ids the model reads (default: rwkv_world for a 65,536-token vocabulary)")
    p.add_argument("--block_size", type=int, default=4096, help="training context recorded in the config "
                                                                   "(the official models: 4096)")
    p.add_argument("--force", action="store_true", help="overwrite an existing out_dir/ckpt.pt")
    args = p.parse_args(argv)
    out = os.path.join(args.out_dir, "ckpt.pt")
    try:
        if os.path.exists(out) and not args.force:  # fail before the (slow) read
            raise RWKVImportError(f"{out} exists; pass --force to overwrite it")
        sd, config, path = import_pth(args.input, args.tokenizer, args.block_size)
        ckpt = {"model": sd, "model_args": dataclasses.asdict(config), "iter_num": 0, "best_val_loss": 1e9,
                "config": {"init_from": f"rwkv:{args.input}"}}
        save_atomic(ckpt, out, args.force)
    except (RWKVImportError, CheckpointError) as e:
        die(str(e))
    except OSError as e:
        die(f"cannot write {out} ({one_line(e)})")
    n_params = sum(v.numel() for k, v in sd.items() if k != "lm_head.weight" or not config.tie_head)
    print(f"wrote {out}: RWKV-7 (x070), {config.n_layer} layers, n_embd {config.n_embd}, head_size "
          f"{config.head_size}, vocab {config.vocab_size}, LoRA ranks {lora_ranks(config)}, "
          f"{'tied' if config.tie_head else 'untied'} head, tokenizer {config.tokenizer}, "
          f"{n_params / 1e6:.2f}M parameters")


if __name__ == "__main__":
    main()
