#!/usr/bin/env bash
# The CPU training step, lth against PyTorch, side by side: `lth-worker bench` and
# ../shared/bench/torch_cpu_baseline.py (PyTorch manual / torch.optim.SGD default / foreach / fused)
# run interleaved, round after round, on LeNet-300-100 b128 and ResNet-20 b32 at 1 and 2 threads.
# Prints per (model, threads, PyTorch variant) the min / median / max over rounds of
# lth img/s ÷ PyTorch img/s (each ratio from one round: the two runs back to back), and the
# same against PyTorch's best variant of that round. Raw JSON lines go to --out.
#
#   scripts/cpu-bench.sh [--rounds 5] [--threads 1,2] [--bin target/release/lth-worker]
#                        [--python /work/venv-torch/bin/python] [--baseline PATH]
#                        [--lth-step fused|per-tensor] [--out /tmp/cpu-bench.jsonl] [--quick]
#
# Needs a release build (`cargo build --release -p lth-worker`) and a Python with torch 2.11
# (`python3 -m venv V && V/bin/pip install torch==2.11.0`). --quick: 1 round, few steps (a smoke
# test of the script itself, not a measurement).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
rounds=5
threads=1,2
bin=$root/target/release/lth-worker
python=${LTH_TORCH_PYTHON:-/work/venv-torch/bin/python}
baseline=
step=fused
out=/tmp/cpu-bench.jsonl
lenet_steps=300
resnet_steps=12
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --baseline) baseline=$2; shift 2 ;;
    --lth-step) step=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --quick) rounds=1; lenet_steps=20; resnet_steps=2; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "cpu-bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$baseline" ]; then
  for c in "$root/../shared/bench/torch_cpu_baseline.py" /work/shared/bench/torch_cpu_baseline.py; do
    [ -f "$c" ] && { baseline=$c; break; }
  done
fi
[ -x "$bin" ] || { echo "cpu-bench.sh: no lth-worker at $bin; build it: cargo build --release -p lth-worker (or pass --bin)" >&2; exit 1; }
if [ -z "$baseline" ] || [ ! -f "$baseline" ]; then echo "cpu-bench.sh: torch_cpu_baseline.py not found; pass --baseline PATH" >&2; exit 1; fi
"$python" -c 'import torch' 2>/dev/null || { echo "cpu-bench.sh: $python has no torch; python3 -m venv V && V/bin/pip install torch==2.11.0, then --python V/bin/python" >&2; exit 1; }

export PYTHONWARNINGS=ignore::UserWarning  # torch warns that numpy is absent; irrelevant here
: > "$out"
echo "# lth: $bin (--step $step); PyTorch: $("$python" -c 'import torch; print(torch.__version__)') ($baseline)"
echo "# $(nproc) CPUs; load average at start: $(cut -d' ' -f1-3 /proc/loadavg); $rounds rounds"
IFS=, read -r -a tlist <<< "$threads"
for r in $(seq 1 "$rounds"); do
  for t in "${tlist[@]}"; do
    for cfg in "lenet300100 128 $lenet_steps" "resnet20 32 $resnet_steps"; do
      read -r model batch steps <<< "$cfg"
      warm=$(( steps / 10 > 2 ? steps / 10 : 2 ))
      "$bin" --threads "$t" bench --models "$model" --batches "$batch" --warmup "$warm" --steps "$steps" --step "$step" --json \
        | sed "s/^{/{\"round\":$r,\"impl\":\"lth\",/" >> "$out"
      "$python" "$baseline" "$t" "$steps" "$model" "$batch" | sed "s/^{/{\"round\":$r,/" >> "$out"
    done
  done
  echo "# round $r done, load average $(cut -d' ' -f1-3 /proc/loadavg)"
done
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$out" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
bad = [r for r in rows if "error" in r]
for r in bad:
    print("# error:", r)
lth, torch = {}, {}
for r in rows:
    if "error" in r:
        continue
    if r["impl"] == "lth":
        lth[(r["model"], r["threads"], r["round"])] = (r["step_images_per_second"], r.get("step", "?"))
    else:
        torch.setdefault((r["model"], r["threads"], r["round"]), {})[r["impl"].replace("pytorch-cpu-", "")] = r["img_per_s"]
variants = ["manual", "optim", "foreach", "fused", "best"]
print(f"{'model':<12} {'thr':>3} {'lth img/s (min/med/max)':>26} | " + " | ".join(f"{'÷ ' + v:>20}" for v in variants))
for model in ["lenet300100", "resnet20"]:
    for t in sorted({k[1] for k in lth}):
        rs = sorted(k[2] for k in lth if k[0] == model and k[1] == t and (model, t, k[2]) in torch)
        if not rs:
            continue
        ips = [lth[(model, t, r)][0] for r in rs]
        cells = []
        for v in variants:
            ratios = []
            for r in rs:
                tv = torch[(model, t, r)]
                base = max(tv.values()) if v == "best" else tv.get(v)
                if base:
                    ratios.append(lth[(model, t, r)][0] / base)
            cells.append(f"{min(ratios):.2f}/{statistics.median(ratios):.2f}/{max(ratios):.2f}" if ratios else "-")
        lt = f"{min(ips):.0f}/{statistics.median(ips):.0f}/{max(ips):.0f}"
        print(f"{model:<12} {t:>3} {lt:>26} | " + " | ".join(f"{c:>20}" for c in cells))
print("# PyTorch img/s (min/median/max over rounds):")
for model in ["lenet300100", "resnet20"]:
    for t in sorted({k[1] for k in torch}):
        per = {}
        for (m, tt, r), tv in torch.items():
            if m == model and tt == t:
                for v, x in tv.items():
                    per.setdefault(v, []).append(x)
        if per:
            print(f"#   {model} {t} thr: " + ", ".join(f"{v} {min(x):.0f}/{statistics.median(x):.0f}/{max(x):.0f}" for v, x in per.items()))
EOF
