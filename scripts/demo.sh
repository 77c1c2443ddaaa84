#!/usr/bin/env bash
# The main job on the embedded default: one coordinator on SQLite, one CPU worker, the paper's five
# importance metrics on the bundled digits (examples/digits-lenet.toml), progress, the results
# table and the plot — then everything shuts down cleanly.
#
#   bash scripts/demo.sh
#
# Builds the three binaries (release) first; libtorch comes from scripts/fetch-libtorch.sh. Every
# file of the run (SQLite database, artifacts, worker cache, logs, report) lands in
# lth-runs/demo-<time>/ (kept, git-ignored). Environment:
#   LTH_DEMO_SWEEP   sweep file                       (default examples/digits-lenet.toml)
#   LTH_DEMO_PORT    coordinator port                 (default: a free port)
#   LTH_DEMO_SLOTS   CPU job slots of the worker      (default 1)
#   LTH_DEMO_THREADS torch threads per job            (default: cores / slots)
#   LTH_DEMO_BIN     use already-built binaries from this folder (skips the release build)
#   LTH_DEMO_SHOTS   folder: PNG screenshots of the dashboard's pages at the end (headless chromium)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
sweep="${LTH_DEMO_SWEEP:-examples/digits-lenet.toml}"
slots="${LTH_DEMO_SLOTS:-1}"
if [[ ! -f "$sweep" ]]; then
  echo "demo: sweep file $sweep not found (run from a full checkout, or set LTH_DEMO_SWEEP)" >&2
  exit 1
fi

bash scripts/fetch-libtorch.sh
if [[ -n "${LTH_DEMO_BIN:-}" ]]; then
  bin="$(cd "$LTH_DEMO_BIN" && pwd)"
else
  echo "demo: building lth-coordinator, lth-worker and lthctl (release; the first build takes a while)" >&2
  cargo build --release --quiet -p lth-coordinator -p lth-worker -p lthctl
  bin="$root/target/release"
fi

run="$root/lth-runs/demo-$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$run"
if [[ -n "${LTH_DEMO_PORT:-}" ]]; then
  port="$LTH_DEMO_PORT"
else
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
fi
addr="127.0.0.1:$port"
export LTH_COORDINATOR="http://$addr"

coordinator_pid=""
worker_pid=""
# Stop the worker first (it hands back what it runs), then the coordinator; both on SIGTERM.
shutdown() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$worker_pid" ]] && kill -0 "$worker_pid" 2>/dev/null; then
    kill -TERM "$worker_pid" 2>/dev/null || true
    wait "$worker_pid" 2>/dev/null || true
  fi
  if [[ -n "$coordinator_pid" ]] && kill -0 "$coordinator_pid" 2>/dev/null; then
    kill -TERM "$coordinator_pid" 2>/dev/null || true
    wait "$coordinator_pid" 2>/dev/null || true
  fi
  if [[ $rc -ne 0 ]]; then
    echo "demo: failed (exit $rc); logs in $run:" >&2
    for f in "$run"/coordinator.log "$run"/worker.log; do
      [[ -f "$f" ]] && { echo "--- $f (last lines)" >&2; tail -n 20 "$f" >&2; }
    done
  fi
  exit $rc
}
trap shutdown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

started=$(date +%s)
"$bin/lth-coordinator" --listen "$addr" --http-listen 127.0.0.1:0 --db "sqlite://$run/lth.db" --artifacts "$run/artifacts" \
  >"$run/coordinator.log" 2>&1 &
coordinator_pid=$!
for _ in $(seq 1 300); do
  grep -q "listening on" "$run/coordinator.log" 2>/dev/null && break
  kill -0 "$coordinator_pid" 2>/dev/null || { echo "demo: lth-coordinator exited during start" >&2; exit 1; }
  sleep 0.1
done
grep -q "listening on" "$run/coordinator.log" || { echo "demo: lth-coordinator did not start within 30 s" >&2; exit 1; }
echo "demo: coordinator on $addr (SQLite $run/lth.db)"
http_addr="$(sed -n 's/^lth-coordinator http on \(.*\)$/\1/p' "$run/coordinator.log" | head -n1)"
[[ -n "$http_addr" ]] && echo "demo: dashboard on http://$http_addr/ (live progress, plots; open it in a browser)"

worker_args=(daemon --gpus none --cpu-slots "$slots" --worker-id demo-cpu --cache-dir "$run/worker-cache")
[[ -n "${LTH_DEMO_THREADS:-}" ]] && worker_args+=(--threads "$LTH_DEMO_THREADS")
"$bin/lth-worker" "${worker_args[@]}" >"$run/worker.log" 2>&1 &
worker_pid=$!
echo "demo: CPU worker started ($slots slot(s)); logs in $run"

submitted="$("$bin/lthctl" submit "$sweep" --token "demo-$(basename "$run")")"
echo "$submitted"
sweep_id="$(sed -n 's/^submitted sweep \([0-9][0-9]*\).*/\1/p' <<<"$submitted" | head -n1)"
[[ -n "$sweep_id" ]] || { echo "demo: could not read the sweep id from lthctl's answer" >&2; exit 1; }

"$bin/lthctl" watch "$sweep_id"
echo
"$bin/lthctl" results "$sweep_id"
echo
echo "demo: plots:"
"$bin/lthctl" report "$sweep_id" --out "$run/report" --format both
if [[ -n "${LTH_DEMO_SHOTS:-}" && -n "$http_addr" ]]; then
  mkdir -p "$LTH_DEMO_SHOTS"
  browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
  if [[ -z "$browser" ]]; then
    echo "demo: no screenshots: chromium is not installed (apt-get install -y chromium)" >&2
  else
    job_id="$(sqlite3 "$run/lth.db" "SELECT id FROM jobs WHERE sweep_id = $sweep_id AND kind = 'level' ORDER BY level DESC, id LIMIT 1" 2>/dev/null || true)"
    for page in "sweeps:/:1400,800" "sweep:/sweeps/$sweep_id:1400,3000" "job:/jobs/${job_id:-1}:1400,1300" "workers:/workers:1400,600"; do
      IFS=: read -r name path size <<<"$page"
      "$browser" --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size="$size" \
        --screenshot="$LTH_DEMO_SHOTS/$name.png" "http://$http_addr$path" >/dev/null 2>&1 || echo "demo: screenshot of $path failed" >&2
    done
    echo "demo: dashboard screenshots in $LTH_DEMO_SHOTS"
  fi
fi
echo
echo "demo: done in $(( $(date +%s) - started )) s (SQL: sqlite3 $run/lth.db 'SELECT * FROM accuracy_vs_sparsity')"
