#!/usr/bin/env bash
# Installs the static checks' tools from package registries only, cached outside the checkout,
# and prints the folder that holds them. Idempotent and fast once cached (a stamp per input).
#
#   venv/                 check-jsonschema, kubernetes-validate, hadolint, PyYAML (PyPI, requirements.txt)
#   pykustomize-0.1.4/    libpykustomize.so: the real Kustomize (sigs.k8s.io/kustomize/api v0.21.3)
#                         compiled as a C library, from the PyPI wheel `pykustomize` (sha256 pinned).
#                         The wheel says Python >= 3.14, so it is unpacked, not installed:
#                         deploy/check/kustomize.py calls the library through ctypes.
#   ShellCheck:           Debian's package (apt-get), when not already on PATH.
#
# Environment: LTH_DEPLOY_TOOLS (default ~/.cache/lth/deploy-tools).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="${LTH_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/lth/deploy-tools}"
mkdir -p "$tools"
py="$(command -v python3)" || { echo "deploy/check: python3 is required" >&2; exit 1; }

want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1) $("$py" -c 'import sys; print(sys.version.split()[0])')"
if [[ "$(cat "$tools/venv/.lth-stamp" 2>/dev/null)" != "$want" ]]; then
  echo "deploy/check: installing the check tools into $tools/venv (PyPI)" >&2
  rm -rf "$tools/venv"
  "$py" -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  echo "$want" > "$tools/venv/.lth-stamp"
fi

PYKUSTOMIZE_VERSION=0.1.4
PYKUSTOMIZE_SHA256=f8da6be12fb35b56158d2f9043a67d39c1ce84eae9c8f344c7ed934709192467
pk="$tools/pykustomize-$PYKUSTOMIZE_VERSION"
if [[ ! -f "$pk/libpykustomize.so" ]]; then
  if [[ "$(uname -m)" != x86_64 ]]; then
    echo "deploy/check: the pykustomize wheel carries an x86_64 library only; on $(uname -m), put kubectl (>= 1.27) on PATH instead" >&2
  else
    echo "deploy/check: fetching pykustomize $PYKUSTOMIZE_VERSION (Kustomize as a library, PyPI)" >&2
    dl="$(mktemp -d)"
    "$tools/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --python-version 3.14 -d "$dl" "pykustomize==$PYKUSTOMIZE_VERSION"
    whl="$(ls "$dl"/pykustomize-*.whl)"
    got="$(sha256sum "$whl" | cut -d' ' -f1)"
    if [[ "$got" != "$PYKUSTOMIZE_SHA256" ]]; then
      echo "deploy/check: $whl has sha256 $got, expected $PYKUSTOMIZE_SHA256; refusing it" >&2
      rm -rf "$dl"; exit 1
    fi
    mkdir -p "$pk.tmp"
    "$tools/venv/bin/python" - "$whl" "$pk.tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    data = z.read("pykustomize/_lib/linux-amd64/libpykustomize.so")
with open(sys.argv[2] + "/libpykustomize.so", "wb") as f:
    f.write(data)
PY
    rm -rf "$pk" "$dl"; mv "$pk.tmp" "$pk"
  fi
fi

if ! command -v shellcheck >/dev/null; then
  echo "deploy/check: installing shellcheck (Debian package)" >&2
  if [[ $(id -u) -eq 0 ]]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck; } >&2
  else
    { sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck; } >&2
  fi
fi
echo "$tools"
