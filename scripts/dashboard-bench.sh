#!/usr/bin/env bash
# The dashboard on a 10,000-job sweep: submits a 5 metrics x 4 rates x 50 seeds x 10 levels grid
# (10,050 jobs) to a coordinator without workers and times each page's fetch with curl (BENCHMARKS.md).
#
#   bash scripts/dashboard-bench.sh [DB_URL]    # default: a fresh SQLite file
#
#   LTH_BENCH_BIN   folder with lth-coordinator and lthctl (default target/release)
#   LTH_BENCH_RUNS  fetches per page (default 5)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${LTH_BENCH_BIN:-$root/target/release}"
runs="${LTH_BENCH_RUNS:-5}"
dir="$(mktemp -d)"
db="${1:-sqlite://$dir/lth.db}"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc="127.0.0.1:$(port)"
"$bin/lth-coordinator" --listen "$grpc" --http-listen 127.0.0.1:0 --db "$db" --artifacts "$dir/artifacts" >"$dir/coordinator.out" 2>"$dir/coordinator.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 300); do grep -q "http on" "$dir/coordinator.out" 2>/dev/null && break; sleep 0.1; done
http="$(sed -n 's/^lth-coordinator http on \(.*\)$/\1/p' "$dir/coordinator.out")"
cat >"$dir/big.toml" <<TOML
name = "dashboard-bench-10k"
model = "lenet300100"
dataset = { name = "digits" }
metrics = ["magnitude", "l1", "l2", "softmax", "min_max"]
rates = [0.1, 0.2, 0.3, 0.4]
seeds = [$(seq -s, 1 50)]
levels = 10
[recipe]
length = "1ep"
batch_size = 64
lr = 0.05
TOML
t0=$(date +%s.%N)
out="$(LTH_COORDINATOR="http://$grpc" "$bin/lthctl" submit "$dir/big.toml")"
echo "$out" | head -n1
echo "submit took $(echo "$(date +%s.%N) - $t0" | bc) s"
id="$(sed -n 's/^submitted sweep \([0-9][0-9]*\).*/\1/p' <<<"$out" | head -n1)"
printf '%-40s %8s %8s %8s %9s\n' page min_s median_s max_s bytes
for path in "/" "/sweeps/$id" "/sweeps/$id/fragment" "/sweeps/$id?jobs=blocked&jobs_page=150" "/jobs/5000" "/workers"; do
  times=()
  for _ in $(seq 1 "$runs"); do
    read -r code t size < <(curl -s -o /dev/null -w '%{http_code} %{time_total} %{size_download}\n' "http://$http$path")
    [[ "$code" == 200 ]] || { echo "GET $path answered $code" >&2; exit 1; }
    times+=("$t")
  done
  mapfile -t sorted < <(printf "%s\n" "${times[@]}" | sort -g)
  printf '%-40s %8s %8s %8s %9s\n' "$path" "${sorted[0]}" "${sorted[$(( runs / 2 ))]}" "${sorted[$(( runs - 1 ))]}" "$size"
done
