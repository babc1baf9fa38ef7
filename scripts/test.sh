#!/usr/bin/env bash
# The whole test suite on a fresh machine: environment, system tools, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install-test-tools.sh
export PATH="$PWD/.tools/bin:$PWD/.venv/bin:$PATH"
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
