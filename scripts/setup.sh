#!/usr/bin/env bash
# Create .venv with the worker + dev dependencies (idempotent; a fresh machine needs only python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.stable-layers-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # The CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  # deepspeed is an sdist: build it without CUDA ops (they are JIT-compiled on first use).
  DS_BUILD_OPS=0 .venv/bin/python -m pip install -q -e ".[worker,dev]"
  touch "$stamp"
fi
