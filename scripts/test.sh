#!/usr/bin/env bash
# The whole test suite: fetches libtorch (PyPI wheel) if missing, makes sure PostgreSQL answers,
# then runs every crate's tests with cargo-nextest, then the checks of deploy/ (deploy/check/run.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/fetch-libtorch.sh

# Contract and integration tests use a real PostgreSQL; each test creates its own database in it.
export LTH_TEST_DATABASE_URL="${LTH_TEST_DATABASE_URL:-postgres://root@127.0.0.1:5432/postgres}"
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
  fi
fi

# The dashboard's browser test (worker/tests/dashboard_browser.rs) drives headless Chromium through
# chromedriver, both from Debian's packages.
if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
  if command -v apt-get >/dev/null && [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "test.sh: the dashboard browser test needs chromium and chromedriver: apt-get install -y chromium chromium-driver (as root)" >&2
  fi
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
cargo nextest run --workspace --no-fail-fast "$@"

# deploy/: manifests, images and scripts checked statically, and their commands run (13-22 s; the first run installs the tools from PyPI and Debian, ~15 s more).
bash deploy/check/run.sh
