"""Shared pytest set-up: deterministic, single-threaded torch and a float64 helper.

Kept minimal and generic on purpose; every test directory shares it.
"""

from __future__ import annotations

import pytest
import torch

# The test machine's cores are shared; one intra-op thread also makes timings and reductions repeatable.
torch.set_num_threads(1)


@pytest.fixture
def f64():
    """Run the test with float64 as torch's default dtype (restored afterwards); yields ``torch.float64``."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield torch.float64
    finally:
        torch.set_default_dtype(old)


@pytest.fixture
def gen():
    """A fresh CPU ``torch.Generator`` seeded with 0 (tests that need several streams seed their own)."""
    return torch.Generator().manual_seed(0)
