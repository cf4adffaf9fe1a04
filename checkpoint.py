"""
Checkpoints in one place: train.py writes and resumes them; generate.py, export_rwkv.py and the benchmarks read them.

A checkpoint is out_dir/<name>.pt, a torch.save'd dict with nanoGPT's keys:
    model        the state dict (keys as model.py names them)
    model_args   the GPTConfig fields, so the model can be rebuilt without its config file
    optimizer, iter_num, best_val_loss (cross-entropy), config
plus what an exact resume needs: rng_state (the batch sampler's generator state) and torch_rng_state
(dropout; cuda_rng_state on GPU), each a (world_size, n) uint8 tensor with one row per DDP process.
Files are written to a temp file, fsynced and renamed, so a crash mid-save leaves the previous one intact,
and read with weights_only=True (a checkpoint cannot run code).
"""

import os
import re

import torch

from model import GPTConfig, build_model


# GPTConfig fields that only choose the initial weights, each with the value it had when it was added: a checkpoint
# saved before a field existed was initialised that way, so it is rebuilt (and a resumed run records it) with that
# value, not with today's default ('rwkv' and 0.02 since).
INIT_ONLY_FIELDS = {"init_scheme": "gpt2", "ln_emb_init": 1.0}
# The same for the fields of the layout, whose defaults became pure RWKV-7: a checkpoint without rwkv_version
# predates RWKV-7 blocks, and the block switches were on before.
OLD_DEFAULTS = {**INIT_ONLY_FIELDS, "rwkv_version": "x051a", "use_swa": True, "use_gqa": True, "use_moe": True}


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not for this model.py (the message is one line)."""


def checkpoint_path(out_dir, name):
    """out_dir/<name>.pt; name may be given with or without .pt."""
    return os.path.join(out_dir, name.removesuffix(".pt") + ".pt")


def checkpoint_names(out_dir):
    """The checkpoint names (no .pt) in out_dir: ckpt, then ckpt-<iter> by iteration, then any other."""
    try:
        names = [f[:-3] for f in os.listdir(out_dir) if f.endswith(".pt")]
    except OSError:
        return []

    def order(name):
        numbered = re.fullmatch(r"ckpt-(\d+)", name)
        return name != "ckpt", int(numbered[1]) if numbered else float("inf"), name

    return sorted(names, key=order)


def one_line(e):
    """An exception as a short single line, for error messages."""
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:200] + '...' if len(msg) > 200 else msg}"


def load_checkpoint(path, device="cpu", mmap=False):
    """The checkpoint dict at path; CheckpointError if it is missing or not a MicroRWKV checkpoint.
    mmap=True reads only the tensors that are used (not the optimizer state, twice the model's size)."""
    if not os.path.isfile(path):
        out_dir, name = os.path.split(path)
        found = ", ".join(checkpoint_names(out_dir or ".")) or "none (train one with `python train.py`)"
        raise CheckpointError(f"no checkpoint '{name.removesuffix('.pt')}' in {out_dir}; found: {found}")
    if os.path.getsize(path) == 0:  # torch.load's own message for it is about mmap
        raise CheckpointError(f"{path} is empty (0 bytes), not a MicroRWKV checkpoint")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except Exception as e:  # torch.load raises many types for a file that is not a torch zip archive
        raise CheckpointError(f"{path} is not a MicroRWKV checkpoint ({one_line(e)})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) \
            or not isinstance(ckpt.get("model_args"), dict):
        raise CheckpointError(f"{path} is not a MicroRWKV checkpoint (no 'model' and 'model_args' entries)")
    return ckpt


def model_from_checkpoint(ckpt, path="checkpoint", **overrides):
    """The model that a checkpoint describes, with its weights (overrides: GPTConfig fields, e.g. dropout)."""
    try:
        model = build_model(GPTConfig(**{**OLD_DEFAULTS, **ckpt["model_args"], **overrides}))
        # checkpoints of a torch.compile'd model, written by other tools, prefix every key
        model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} does not match this model.py ({one_line(e)})") from None
    return model


def save_checkpoint(path, ckpt):
    """torch.save(ckpt) to path atomically: a temp file, fsynced, then renamed over the old one. An error or
    Ctrl-C mid-save removes the temp file (a kill cannot: the next save overwrites it)."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def rng_states(sampler, device):
    """This process's RNG states: the batch sampler's generator, torch's CPU RNG (dropout) and CUDA's."""
    states = {"rng_state": sampler.get_state(), "torch_rng_state": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        states["cuda_rng_state"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng_states(ckpt, sampler, device, world_size, rank):
    """Set this process's RNGs from its rows of the checkpoint's (world_size, n) states. Returns False (and
    changes nothing) if the checkpoint holds no sampler state for this number of processes."""
    rows = {}
    for key, state in ((k, ckpt.get(k)) for k in ("rng_state", "torch_rng_state", "cuda_rng_state")):
        if state is not None and state.dim() == 1 and world_size == 1:  # written by an older train.py
            state = state.unsqueeze(0)
        if state is not None and state.dim() == 2 and state.shape[0] == world_size:
            rows[key] = state[rank].cpu().clone()  # a tensor of its own: set_rng_state reads its storage
    if "rng_state" not in rows:
        return False
    sampler.set_state(rows["rng_state"])
    if "torch_rng_state" in rows:
        torch.set_rng_state(rows["torch_rng_state"])
    if "cuda_rng_state" in rows and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(rows["cuda_rng_state"], device)
    return True


# parameters kept in float32 when the weights are cast down: TimeMix's GroupNorm (F.group_norm on CPU refuses
# a float32 input with bf16 weights), x051a's decay / bonus and x070's per-channel decay, ICL-rate and
# value-residual bases and key / bonus scales, all read with .float() / .to(float32) by the model: vectors,
# no bandwidth to save, and rounding a decay to bf16 changes how long a head remembers
FLOAT32_PARAMS = ("ln_x.weight", "ln_x.bias", "time_decay", "time_faaaa",
                  ".w0", ".a0", ".v0", ".k_k", ".k_a", ".r_k")


def cast_weights(model, dtype):
    """The model with its weights stored in `dtype` (bf16 / fp16), but FLOAT32_PARAMS; ties stay tied."""
    model.to(dtype)
    for name, p in model.named_parameters():
        if name.endswith(FLOAT32_PARAMS):
            p.data = p.data.float()
    return model
