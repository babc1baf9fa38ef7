"""Shared test setup.

Tiny models on a 2-core machine: intra-op threading only adds synchronisation overhead and makes
timings jittery (model.md §6.13), so every test runs torch single-threaded.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the operator-only environment has no torch
    pass
