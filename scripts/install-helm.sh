#!/usr/bin/env bash
# helm 3 into .tools/bin (implemented by the Helm chart work).
set -euo pipefail
