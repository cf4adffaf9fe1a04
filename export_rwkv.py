"""
Export a pure-RWKV MicroRWKV checkpoint to the official RWKV .pth format, the one the official runtime
(the `rwkv` pip package, as ChatRWKV uses it) loads.

$ python export_rwkv.py --out_dir out --model_name ckpt --output microrwkv.pth
$ python -c "from rwkv.model import RWKV; RWKV(model='microrwkv', strategy='cpu fp32')"

TimeMix "x051a" (the default) is written as RWKV-5.2; rwkv_version="x070" as RWKV-7, which the runtime
loads with RWKV_V7_ON=1 set before `import rwkv.model`. Only a pure RWKV model fits the format:
use_swa=use_gqa=use_moe=False, no learned positions, a LayerNorm on the embedding, no (non-zero) Linear
biases; anything else is refused with a one-line error naming it. The file holds no tokenizer: feed
the runtime the ids of the model's tokenizer (model_args' tokenizer: GPT-2's BPE, or RWKV World for a model
imported with import_rwkv.py). An untied head (tie_head=False) is written as it is; import_rwkv.py reads
the file back.

The output is written to a temporary file and renamed into place; an existing --output is only
replaced with --force. --dtype bf16/fp16 halves the file (the runtime converts on load).
"""

import argparse
import os
import sys
import tempfile

import torch

from checkpoint import CheckpointError, load_checkpoint, one_line

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
UNSUPPORTED = [  # what the official format cannot hold: (model_args field, its bad value, a state_dict sign, name)
    ("use_swa", True, lambda k: ".swa." in k, "sliding-window attention (use_swa=True)"),
    ("use_gqa", True, lambda k: ".gqa." in k, "grouped-query attention (use_gqa=True)"),
    ("use_moe", True, lambda k: ".moe." in k, "mixture of experts (use_moe=True)"),
    ("learned_pos", True, lambda k: k.startswith("wpe."), "a learned position embedding (learned_pos=True)"),
    ("ln_emb", False, None, "an embedding without LayerNorm (ln_emb=False; the runtime always applies ln0)"),
]
# RWKV-7 time-mix parameters, copied as they are (RWKV-LM's names and shapes); v0/v1/v2 are unused in layer 0
X070_ATT = ["x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "w1", "w2", "a0", "a1", "a2", "v0", "v1", "v2",
            "g1", "g2", "k_k", "k_a"]


class ExportError(Exception):
    pass


def die(msg):
    """A one-line error and exit code 1: bad input is the user's to fix, not a traceback to read."""
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def read_checkpoint(path):
    """(state_dict, model_args) of a train.py checkpoint (checkpoint.py's loader and its one-line errors)."""
    try:
        ckpt = load_checkpoint(path, mmap=True)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    # checkpoints of a torch.compile'd model, written by other tools, prefix every key
    return {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}, ckpt["model_args"]


def check_exportable(sd, args):
    """Refuse what the official format cannot hold, naming it; returns the rwkv_version."""
    if args.get("model_type", "microrwkv") != "microrwkv":
        raise ExportError(f"the official RWKV format cannot hold model_type={args.get('model_type')!r}: "
                          f"only a MicroRWKV (model_type='microrwkv') exports")
    found = [desc for field, bad, sign, desc in UNSUPPORTED
             if args.get(field) == bad or (sign is not None and any(sign(k) for k in sd))]
    if found:
        raise ExportError(f"the official RWKV format cannot hold {', '.join(found)}: only a pure RWKV "
                          f"MicroRWKV exports (use_swa=use_gqa=use_moe=False, learned_pos=False)")
    version = args.get("rwkv_version") or "x051a"  # checkpoints from before the field are x051a
    if version not in ("x051a", "x070"):
        raise ExportError(f"unknown rwkv_version {version!r}; expected 'x051a' or 'x070'")
    return version


class Source:
    """The checkpoint's tensors, taken one by one, so that anything left over is caught."""

    def __init__(self, sd):
        self.sd = {k: v.detach().float() for k, v in sd.items() if torch.is_tensor(v)}

    def take(self, name):
        if name not in self.sd:
            raise ExportError(f"the checkpoint has no '{name}': not a pure-RWKV MicroRWKV of this rwkv_version")
        return self.sd.pop(name)

    def norm(self, prefix):
        """A norm's weight and bias (zeros when it was built with bias=False)."""
        weight = self.take(prefix + ".weight")
        bias = self.sd.pop(prefix + ".bias", None)
        return weight, torch.zeros_like(weight) if bias is None else bias

    def linear(self, prefix):
        """A Linear's weight; the format has no Linear biases, so only all-zero ones may be dropped."""
        bias = self.sd.pop(prefix + ".bias", None)
        if bias is not None and bias.any():
            raise ExportError(f"the official RWKV format cannot hold Linear biases (bias=True: {prefix}.bias)")
        return self.take(prefix + ".weight")

    def finish(self, fmt):
        tied = self.sd.pop("lm_head.weight", None)  # tied to wte: head.weight is written from it
        if self.sd:
            names = ", ".join(sorted(self.sd)[:3]) + (", ..." if len(self.sd) > 3 else "")
            raise ExportError(f"the {fmt} format has no place for {names}")
        return tied


def embedding_and_norms(src, n_layer):
    """What both layouts share: the embedding, ln0 (our ln_in) and each block's ln1/ln2 (ln_tmix/ln_cmix)."""
    w = {"emb.weight": src.take("wte.weight")}
    w["blocks.0.ln0.weight"], w["blocks.0.ln0.bias"] = src.norm("ln_in")
    for i in range(n_layer):
        o = f"blocks.{i}."
        w[o + "ln1.weight"], w[o + "ln1.bias"] = src.norm(o + "ln_tmix")
        w[o + "ln2.weight"], w[o + "ln2.bias"] = src.norm(o + "ln_cmix")
    return w


def convert_x051a(src, n_layer, n_head, head_size):
    """MicroRWKV x051a -> RWKV-5.2. The runtime detects 5.2 from the key order (an 'ln_x' key, then a 2-D
    att.time_decay) and the head count from time_decay's shape, so ln_x and gate come first in each block."""
    w = embedding_and_norms(src, n_layer)
    for i in range(n_layer):
        o, att, ffn = f"blocks.{i}.", f"blocks.{i}.tmix.", f"blocks.{i}.cmix."  # official o..., ours
        w[o + "att.ln_x.weight"], w[o + "att.ln_x.bias"] = src.norm(att + "ln_x")
        for name in ("gate", "receptance", "key", "value", "output"):
            w[o + f"att.{name}.weight"] = src.linear(att + name)
        # ours: lerp(x, x_prev, maa) = x + maa (x_prev - x); official: x mix + x_prev (1 - mix)
        for c in "kvrg":
            w[o + f"att.time_mix_{c}"] = (1.0 - src.take(att + f"time_maa_{c}")).view(1, 1, -1)
        decay = src.take(att + "time_decay")  # one decay per head: the format has one per channel
        w[o + "att.time_decay"] = decay.view(n_head, 1).expand(n_head, head_size)
        w[o + "att.time_faaaa"] = src.take(att + "time_faaaa").view(n_head, head_size)
        for c in "kr":
            w[o + f"ffn.time_mix_{c}"] = (1.0 - src.take(ffn + f"time_maa_{c}")).view(1, 1, -1)
        for name in ("key", "receptance", "value"):
            w[o + f"ffn.{name}.weight"] = src.linear(ffn + name)
    return w


def convert_x070(src, n_layer, n_head, head_size):
    """MicroRWKV x070 (RWKV-LM's RWKV-7 parameter names and shapes) -> RWKV-7: renames only; the runtime
    reads n_head, head_size from att.r_k (H, N) and transposes the Linear weights itself."""
    w = embedding_and_norms(src, n_layer)
    for i in range(n_layer):
        o, att, ffn = f"blocks.{i}.", f"blocks.{i}.tmix.", f"blocks.{i}.cmix."  # official o..., ours
        for name in X070_ATT:
            if i == 0 and name in ("v0", "v1", "v2"):  # layer 0's value is v_first itself: no residual mix
                src.sd.pop(att + name, None)
                continue
            w[o + "att." + name] = src.take(att + name)
        w[o + "att.r_k"] = src.take(att + "r_k").reshape(n_head, head_size)
        for name in ("receptance", "key", "value", "output"):
            w[o + f"att.{name}.weight"] = src.linear(att + name)
        w[o + "att.ln_x.weight"], w[o + "att.ln_x.bias"] = src.norm(att + "ln_x")
        w[o + "ffn.x_k"] = src.take(ffn + "x_k")
        for name in ("key", "value"):
            w[o + f"ffn.{name}.weight"] = src.linear(ffn + name)
    return w


def convert(sd, args, dtype=torch.float32):
    """Our state_dict + model_args -> (official state_dict, format name)."""
    version = check_exportable(sd, args)
    try:
        n_layer, n_embd, head_size = int(args["n_layer"]), int(args["n_embd"]), int(args["head_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise ExportError(f"model_args lacks a valid n_layer / n_embd / head_size ({one_line(e)})")
    if head_size < 2 or n_embd % head_size:  # a (H, 1) time_decay would read as RWKV-5.1
        raise ExportError(f"head_size={head_size} does not fit the format (n_embd={n_embd})")
    src = Source(sd)
    fmt = "RWKV-5.2" if version == "x051a" else "RWKV-7"
    try:
        w = (convert_x051a if version == "x051a" else convert_x070)(src, n_layer, n_embd // head_size, head_size)
        w["ln_out.weight"], w["ln_out.bias"] = src.norm("ln_f")
        tied = src.finish(fmt)
    except RuntimeError as e:  # a view/reshape of a tensor with an unexpected shape
        raise ExportError(f"the checkpoint's tensors do not have MicroRWKV {version} shapes ({one_line(e)})")
    w["head.weight"] = w["emb.weight"] if tied is None else tied
    # clone: compact, contiguous storage for every tensor (head.weight is a copy of emb.weight, not a view)
    return {k: v.to(dtype).contiguous().clone() for k, v in w.items()}, fmt


def save_atomic(obj, path, force):
    """torch.save to a temporary file beside path, then rename: a crash never leaves a partial file."""
    if os.path.exists(path) and not force:
        raise ExportError(f"{path} exists; pass --force to overwrite it")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    p.add_argument("--out_dir", default="out", help="folder of the train.py checkpoint")
    p.add_argument("--model_name", default="ckpt", help="checkpoint name: out_dir/<model_name>.pt")
    p.add_argument("--output", required=True, help="the official .pth to write (must end in .pth)")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="tensor type in the .pth")
    p.add_argument("--force", action="store_true", help="overwrite an existing --output")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if not args.output.endswith(".pth"):  # the runtime appends .pth to the name it is given
            raise ExportError(f"--output {args.output!r} must end in .pth")
        if os.path.exists(args.output) and not args.force:  # fail before the (slow) load
            raise ExportError(f"{args.output} exists; pass --force to overwrite it")
        name = args.model_name.removesuffix(".pt")
        sd, model_args = read_checkpoint(os.path.join(args.out_dir, name + ".pt"))
        w, fmt = convert(sd, model_args, DTYPES[args.dtype])
        save_atomic(w, args.output, args.force)
    except ExportError as e:
        die(str(e))
    except OSError as e:
        die(f"cannot write {args.output} ({one_line(e)})")
    n_params = sum(v.numel() for k, v in w.items() if k != "head.weight")
    vocab, n_embd = w["emb.weight"].shape
    print(f"wrote {args.output}: {fmt}, {model_args['n_layer']} layers, n_embd {n_embd}, "
          f"head_size {model_args['head_size']}, vocab {vocab}, {n_params / 1e6:.2f}M parameters ({args.dtype})")
    env = "RWKV_V7_ON=1, " if fmt == "RWKV-7" else ""
    print(f"load it with {env}rwkv.model.RWKV(model={args.output.removesuffix('.pth')!r}, strategy='cpu fp32')")


if __name__ == "__main__":
    main()
