"""Shared test set-up: offline tokenizer files live in ../shared, beside the repository (never copied in)."""
import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state, so model initialisations are reproducible."""
    torch.manual_seed(0)
