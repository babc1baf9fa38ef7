#!/usr/bin/env bash
# The whole test suite on a fresh machine: environment, system tools, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install-test-tools.sh
export PATH="$PWD/.tools/bin:$PWD/.venv/bin:$PATH"
# the vLLM judge tests are part of the suite: a missing vLLM install fails them instead of skipping
export STABLE_LAYERS_REQUIRE_VLLM=1
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
