#!/usr/bin/env bash
# The main job on the embedded default: a Flow-GRPO fine-tune of the pretrained tiny model, then
# base vs fine-tuned on held-out designs (runs/demo/eval/step-NNNNNN/report.html); prints the
# changes with their bootstrap intervals. About 8 minutes on a shared 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/stable-layers demo --out "${1:-runs/demo}"
