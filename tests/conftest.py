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


# -- the real vLLM judge (tests/vllm_judge.py) ---------------------------------------------------
import pytest


@pytest.fixture(scope="session")
def vllm_judge(tmp_path_factory):
    """One `vllm serve` of the tiny random judge for the whole session, started with the
    operator's judge arguments; stopped at the end. Skips where vLLM is not installed, unless
    STABLE_LAYERS_REQUIRE_VLLM=1 (CI), where that is a failure."""
    import vllm_judge as vj

    why = vj.available()
    if why is not None:
        if os.environ.get("STABLE_LAYERS_REQUIRE_VLLM") == "1":
            pytest.fail(f"STABLE_LAYERS_REQUIRE_VLLM=1 but {why}")
        pytest.skip(why)
    server = vj.VLLMServer(log=tmp_path_factory.mktemp("vllm") / "serve.log").start()
    try:
        yield server
    finally:
        server.stop()
