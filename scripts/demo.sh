#!/usr/bin/env bash
# The main job on the embedded default: a local Flow-GRPO run on the tiny model, then its
# evaluation report (runs/demo/report/report.html).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/stable-layers demo --out "${1:-runs/demo}"
