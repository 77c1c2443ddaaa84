#!/usr/bin/env bash
# The checks of deploy/, run by scripts/test.sh after the Rust tests (no container engine needed):
# static checks (Kustomize render + Kubernetes schemas, compose-spec schema, hadolint, shellcheck,
# manifest policy, flag drift against the binaries' --help, and the same checks failing on
# deliberately broken copies), the Grafana dashboard against the metric names in the code
# (grafana_check.py), then the process test (the compose worker service's and the Slurm script's
# commands finishing small sweeps against a real coordinator on Postgres).
#
#   bash deploy/check/run.sh            # uses target/debug/{lth-coordinator,lth-worker,lthctl}
#   LTH_BIN_DIR=target/release bash deploy/check/run.sh
#
# Tools come from PyPI and Debian into ~/.cache/lth/deploy-tools (deploy/check/tools.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
tools="$(bash deploy/check/tools.sh)"
bin="${LTH_BIN_DIR:-$root/target/debug}"
for b in lth-coordinator lth-worker lthctl; do
  if [[ ! -x "$bin/$b" ]]; then
    if [[ -n "${LTH_BIN_DIR:-}" ]]; then
      echo "deploy/check: $bin/$b is missing (LTH_BIN_DIR=$LTH_BIN_DIR)" >&2
      exit 1
    fi
    cargo build --quiet -p lth-coordinator -p lth-worker -p lthctl
    break
  fi
done
export LTH_DEPLOY_TOOLS="$tools"
export LTH_TEST_DATABASE_URL="${LTH_TEST_DATABASE_URL:-postgres://root@127.0.0.1:5432/postgres}"
status=0
"$tools/venv/bin/python" deploy/check/static_checks.py --bin-dir "$bin" || status=1
"$tools/venv/bin/python" deploy/check/grafana_check.py || status=1
"$tools/venv/bin/python" deploy/check/process_test.py --bin-dir "$bin" || status=1
exit "$status"
