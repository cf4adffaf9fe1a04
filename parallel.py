"""
Data-parallel training (DDP) for train.py: the process group set up from torchrun's environment, and the collectives a training run
needs. Without torchrun every function is the single-process identity, so train.py reads the same either way.
"""

import os
import sys

import torch
import torch.distributed as dist


def setup(device, backend=""):
    """(rank, local_rank, world_size, device) of this process. Under torchrun (RANK is set) this joins the
    process group ('nccl' for CUDA devices, 'gloo' otherwise) and moves a CUDA process to its own GPU."""
    if int(os.environ.get("RANK", -1)) == -1:
        return 0, 0, 1, device
    dist.init_process_group(backend=backend or ("nccl" if device.startswith("cuda") else "gloo"))
    rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    return rank, local_rank, world_size, device


def active():
    return dist.is_available() and dist.is_initialized()


def global_mean(value, device):
    """The mean of a per-process float over all processes."""
    if not active():
        return value
    t = torch.tensor(value, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def any_process(flag):
    """True if `flag` (a bool) is true in any process: every process stops together."""
    if not active():
        return flag
    t = torch.tensor(float(flag))
    dist.all_reduce(t)
    return t.item() > 0


def gather_rows(state):
    """A per-process tensor (an RNG state) as a (world_size, n) tensor with one row per process."""
    if not active():
        return state.unsqueeze(0)
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return torch.stack(states)


def barrier():
    if active():
        dist.barrier()


def teardown(exit_code=0):
    """Leave the process group and, under torchrun, end the process with exit_code (without torchrun: return).
    Rank 0 may still be writing checkpoints, and a rank that tears gloo down while its peers are connected aborts
    the whole job ("terminate called without an active exception"): wait first. Then exit at once, skipping
    Python's shutdown: once a model was wrapped in DistributedDataParallel, destroy_process_group() no longer
    ends the gloo process group's threads (without DDP it does), so they still run while the interpreter shuts
    down, and a process that shuts down with them running can abort with the same message after its work is
    done (rarely; more often on a busy machine)."""
    if active():
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
