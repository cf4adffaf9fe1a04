"""Shared test set-up: paths, the offline tokenizer (its files live in ../shared, beside the repository, never
copied in), one thread per test process, a fixed seed, and the tiny model configs the model tests share."""
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SAMPLE = SHARED / "data" / "tinystories" / "train_sample_lower.txt"
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))
torch.set_num_threads(min(2, torch.get_num_threads()))

V = 97  # a small vocabulary keeps the model tests fast


# every block on, with x051a TimeMix: the layout the tests were written for (the default is pure RWKV-7)
FULL_X051A = dict(rwkv_version="x051a", use_swa=True, use_gqa=True, use_moe=True)


def tiny_config(**overrides):
    """All five blocks (x051a TimeMix), small: window 8 and chunk 16 so that T=45 crosses both (45 is no
    multiple of 16)."""
    from model import GPTConfig
    args = dict(block_size=64, vocab_size=V, n_layer=2, n_head=4, n_embd=32, head_size=8, chunk_len=16,
                window_size=8, n_kv_head=2, num_experts=4, num_active_experts=2, expert_dim=48, **FULL_X051A)
    args.update(overrides)
    return GPTConfig(**args)


def randomize(module, scale=1.0, seed=0):
    """Weights of non-trivial scale: the small init would hide leaks behind near-zero activations.

    Matrices get N(0, scale^2 / fan_in) added (unit gain: activations neither vanish nor explode), vectors
    (norms, biases, time_* parameters) N(0, (0.3 scale)^2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            std = scale / p.shape[-1] ** 0.5 if p.dim() >= 2 else 0.3 * scale
            p.add_(torch.randn(p.shape, generator=gen) * std)
    return module.eval()


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state, so model initialisations are reproducible."""
    torch.manual_seed(0)
