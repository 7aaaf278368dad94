#!/usr/bin/env bash
# File: tools/setup.sh
# Installs everything Genie builds and tests against on a fresh Debian 12 machine:
# Bazel 4.2.3, the C++ libraries (Debian -dev packages) and libtorch 2.11.0 (PyPI).
# Idempotent: when everything is present it checks and exits in a few seconds.
#   tools/setup.sh            install what is missing
#   tools/setup.sh --check    only report what is missing (exit 1 if anything is)
set -euo pipefail

CHECK_ONLY=0
[[ "${1:-}" == "--check" ]] && CHECK_ONLY=1

DEBIAN_PACKAGES=(
  bazel-bootstrap g++ pkg-config python3-pip
  libabsl-dev libeigen3-dev libgtest-dev libgmock-dev libbenchmark-dev
  libssl-dev libucx-dev ucx-utils libibverbs-dev librdmacm-dev libdpdk-dev
  iproute2
)
TORCH_VERSION="2.11.0"

log() { printf 'setup: %s\n' "$*"; }
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

PYTHON="${PYTHON:-python3}"
torch_version() {
  "$PYTHON" - <<'PY' 2>/dev/null || true
import importlib.util, os
spec = importlib.util.find_spec("torch")
if spec:
    root = os.path.dirname(spec.origin)
    ns = {}
    exec(open(os.path.join(root, "version.py")).read(), ns)
    print(ns.get("__version__", ""))
PY
}

have_torch="$(torch_version)"
need_torch=1
[[ "$have_torch" == "$TORCH_VERSION"* ]] && need_torch=0

if [[ $CHECK_ONLY -eq 1 ]]; then
  [[ ${#missing[@]} -gt 0 ]] && log "missing Debian packages: ${missing[*]}"
  [[ $need_torch -eq 1 ]] && log "missing torch==$TORCH_VERSION (found '${have_torch:-none}')"
  [[ ${#missing[@]} -eq 0 && $need_torch -eq 0 ]] && log "everything is installed"
  [[ ${#missing[@]} -eq 0 && $need_torch -eq 0 ]]
  exit $?
fi

if [[ ${#missing[@]} -gt 0 ]]; then
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  log "installed: ${missing[*]}"
else
  log "Debian packages: all ${#DEBIAN_PACKAGES[@]} present"
fi

if [[ $need_torch -eq 1 ]]; then
  log "installing torch==$TORCH_VERSION from PyPI (found '${have_torch:-none}'; the wheel and its CUDA libraries are ~3 GB)"
  PIP_FLAGS=(--quiet --disable-pip-version-check)
  # Debian's system python marks its site-packages as externally managed.
  if "$PYTHON" -c 'import sys; sys.exit(0 if sys.prefix == sys.base_prefix and sys.prefix.startswith("/usr") else 1)'; then
    PIP_FLAGS+=(--break-system-packages)
  fi
  "$PYTHON" -m pip install "${PIP_FLAGS[@]}" "torch==$TORCH_VERSION"
  log "installed torch $(torch_version)"
else
  log "torch $have_torch present"
fi

# Bazel 4.2.3 from Debian is installed as bazel-4 on some images; make `bazel` resolve.
if ! command -v bazel >/dev/null 2>&1 && command -v bazel-4 >/dev/null 2>&1; then
  $SUDO ln -sf "$(command -v bazel-4)" /usr/local/bin/bazel
  log "linked bazel -> bazel-4"
fi
log "done"
