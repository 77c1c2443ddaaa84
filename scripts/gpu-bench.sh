#!/usr/bin/env bash
# One-call GPU check: `lth-worker bench` on CUDA beside PyTorch on the same GPU in the same call
# (../shared/bench/torch_small_baseline.py: ResNet-20 / LeNet-300-100 b128 eager, eager+fused,
# eager+graph; ../shared/bench/torch_baseline.py: ResNet-18 b512 eager), then one table of ratios.
# Builds nothing: it takes a prebuilt (stripped release) binary, so a GPU node needs no Rust
# toolchain — only Python with torch 2.11 (its lib folder serves libtorch to the binary).
#
#   scripts/gpu-bench.sh [--bin PATH] [--python PY] [--bench-dir DIR] [--steps N] [--out FILE]
#                        [--cpu-dry-run]
#
#   --bin        lth-worker binary (default: ./lth-worker beside this script's folder, else
#                target/release/lth-worker). Build elsewhere: cargo build --release -p lth-worker
#   --python     Python with torch 2.11 (default python3)
#   --bench-dir  folder holding torch_small_baseline.py and torch_baseline.py
#                (default ../shared/bench, then /work/shared/bench)
#   --cpu-dry-run  exercise the script on a machine without a GPU: lth on CPU with tiny step counts
#                and batch sizes, the PyTorch GPU scripts skipped (their presence is still checked);
#                the table is printed with the lth side only. Not a measurement.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bin=
python=python3
bench_dir=
steps=50
out=/tmp/gpu-bench.jsonl
dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --bench-dir) bench_dir=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --cpu-dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "gpu-bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$bin" ]; then
  for c in "$root/lth-worker" "$root/target/release/lth-worker"; do if [ -x "$c" ]; then bin=$c; break; fi; done
fi
if [ -z "$bin" ] || [ ! -x "$bin" ]; then echo "gpu-bench.sh: no lth-worker binary; pass --bin (build one elsewhere: cargo build --release -p lth-worker)" >&2; exit 1; fi
if [ -z "$bench_dir" ]; then
  for c in "$root/../shared/bench" /work/shared/bench; do if [ -f "$c/torch_small_baseline.py" ]; then bench_dir=$c; break; fi; done
fi
if [ -z "$bench_dir" ] || [ ! -f "$bench_dir/torch_small_baseline.py" ] || [ ! -f "$bench_dir/torch_baseline.py" ]; then
  echo "gpu-bench.sh: torch_small_baseline.py / torch_baseline.py not found; pass --bench-dir" >&2; exit 1
fi
torch_lib=$("$python" -c 'import torch, os; print(os.path.dirname(torch.__file__) + "/lib")' 2>/dev/null) \
  || { echo "gpu-bench.sh: $python has no torch; install torch==2.11.0 or pass --python" >&2; exit 1; }
# The binary links libtorch_cpu & co.; on a node without the build machine's libtorch folder the
# wheel's lib folder serves them (same libtorch 2.11), and holds libtorch_cuda.so for --device cuda.
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONWARNINGS=ignore::UserWarning

if [ "$dry" = 1 ]; then
  dev=(--device cpu); r18b=2; smallb=8; st=2; warm=1
else
  dev=(--device cuda --torch-lib-dir "$torch_lib"); r18b=512; smallb=128; st=$steps; warm=8
fi
: > "$out"
echo "# $(date -u +%FT%TZ) lth: $bin; torch: $("$python" -c 'import torch; print(torch.__version__)'); dry run: $dry"
if [ "$dry" = 0 ]; then
  "$python" -c 'import torch; print("# GPU:", torch.cuda.get_device_name())' || true
fi
lth() { "$bin" bench "${dev[@]}" --json "$@" | sed 's/^{/{"impl":"lth",/' >> "$out"; }
lth --models resnet18 --batches "$r18b" --precisions bf16,fp16 --warmup "$warm" --steps "$st"
lth --models resnet20,lenet300100 --batches "$smallb" --precisions fp32 --warmup "$warm" --steps "$st"
lth --models resnet20,lenet300100 --batches "$smallb" --precisions fp32 --warmup "$warm" --steps "$st" --step per-tensor
if [ "$dry" = 0 ]; then
  "$python" "$bench_dir/torch_small_baseline.py" --steps "$((steps * 6))" >> "$out" || echo '{"impl":"pytorch-small","error":"torch_small_baseline.py failed"}' >> "$out"
  "$python" "$bench_dir/torch_baseline.py" >> "$out" || echo '{"impl":"pytorch-eager","error":"torch_baseline.py failed (torchvision installed?)"}' >> "$out"
fi

python3 - "$out" "$dry" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
dry = sys.argv[2] == "1"
for r in rows:
    if "error" in r:
        print("# error:", r)
lth = [r for r in rows if r.get("impl") == "lth"]
torch = [r for r in rows if str(r.get("impl", "")).startswith("pytorch") and "img_per_s" in r]
def best(pred):
    c = [r["img_per_s"] for r in torch if pred(r)]
    return max(c) if c else None
print(f"{'model':<12} {'batch':>5} {'prec':>5} {'step':>10} {'lth img/s':>11} | {'PyTorch (same GPU)':<34} {'img/s':>9} {'ratio':>6}")
for r in lth:
    m, b, p, s = r["model"], r["batch"], r["precision"], r.get("step", "?")
    if m == "resnet18":
        refs = [("eager cifar, autocast " + p + ", best of CL on/off",
                 best(lambda t: t.get("variant") == "cifar" and t.get("bs") == b and t.get("autocast") == {"bf16": "bfloat16", "fp16": "float16"}.get(p, p)))]
    else:
        refs = [(mode, best(lambda t, mode=mode: t.get("model") == m and t.get("bs") == b and t["impl"] == "pytorch-" + mode))
                for mode in ["eager", "eager+fused", "eager+graph"]]
    for i, (name, v) in enumerate(refs):
        head = f"{m:<12} {b:>5} {p:>5} {s:>10} {r['step_images_per_second']:>11.0f}" if i == 0 else " " * 48
        ratio = f"{r['step_images_per_second'] / v:.2f}" if v else "-"
        print(f"{head} | {name:<34} {v if v else ('skipped' if dry else 'n/a'):>9} {ratio:>6}")
EOF
