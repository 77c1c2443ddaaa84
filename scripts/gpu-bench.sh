#!/usr/bin/env bash
# One-call GPU check: `lth-worker bench` on CUDA beside PyTorch on the same GPU in the same call
# (../shared/bench/torch_small_baseline.py: ResNet-20 / LeNet-300-100 b128 eager, eager+fused,
# eager+graph; ../shared/bench/torch_baseline.py: ResNet-18 b512 eager), then one table of ratios:
# lth ResNet-18 b512 bf16/fp16 channels-last with the CUDA graph off and on; ResNet-20 and LeNet
# b128 solo (graph off/on, fused and per-tensor) and bundles of 5 and 15 (tickets/s = images/s
# summed over the members). Then one real `run-local` chain on the GPU (ResNet-20, bf16,
# channels-last, CUDA graph, on generated CIFAR-format files), killed with -9 after its first
# checkpoint and run again: it must resume, finish, and leave every pruned weight exactly zero.
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
lth --models resnet18 --batches "$r18b" --precisions bf16,fp16 --warmup "$warm" --steps "$st" --graph off,on
lth --models resnet20,lenet300100 --batches "$smallb" --precisions fp32 --warmup "$warm" --steps "$st" --graph off,on
lth --models resnet20,lenet300100 --batches "$smallb" --precisions fp32 --warmup "$warm" --steps "$st" --step per-tensor --graph off
for k in 5 15; do
  lth --models resnet20,lenet300100 --batches "$smallb" --precisions fp32 --warmup "$warm" --steps "$st" --graph on --bundle "$k"
done
if [ "$dry" = 0 ]; then
  "$python" "$bench_dir/torch_small_baseline.py" --steps "$((steps * 6))" >> "$out" || echo '{"impl":"pytorch-small","error":"torch_small_baseline.py failed"}' >> "$out"
  "$python" "$bench_dir/torch_baseline.py" >> "$out" || echo '{"impl":"pytorch-eager","error":"torch_baseline.py failed (torchvision installed?)"}' >> "$out"
fi

# The end-to-end chain: data in CIFAR-10's binary format (random pixels: this checks the path,
# not accuracy), a short ResNet-20 recipe, kill -9 after the first checkpoint, then a rerun.
e2e=$(mktemp -d)
"$python" - "$e2e/data" <<'PY'
import os, random, sys
d = sys.argv[1]; os.makedirs(d, exist_ok=True); rnd = random.Random(0)
def batch(path, n):
    with open(path, "wb") as f:
        for _ in range(n):
            f.write(bytes([rnd.randrange(10)]) + rnd.randbytes(3072))
for i in range(1, 6):
    batch(f"{d}/data_batch_{i}.bin", 512)
batch(f"{d}/test_batch.bin", 512)
PY
if [ "$dry" = 1 ]; then e2e_prec=fp32; e2e_len=2ep; e2e_b=128; else e2e_prec=bf16; e2e_len=6ep; e2e_b=128; fi
cat > "$e2e/sweep.toml" <<TOML
name = "gpu-bench-e2e"
model = "resnet20"
metrics = ["magnitude"]
rates = [0.5]
seeds = [0]
levels = 1
[dataset]
name = "cifar10"
path = "$e2e/data"
[recipe]
length = "$e2e_len"
batch_size = $e2e_b
lr = 0.05
rewind = "20it"
precision = "$e2e_prec"
channels_last = true
cuda_graph = true
checkpoint_every = "1ep"
TOML
e2e_status=ok
run_chain() { LTH_VERBOSE=1 "$bin" run-local "$e2e/sweep.toml" "${dev[@]}" --out "$e2e/out" >> "$e2e/log" 2>&1; }
# exec: the background pid is lth-worker itself, so kill -9 hits the training process.
( LTH_VERBOSE=1 exec "$bin" run-local "$e2e/sweep.toml" "${dev[@]}" --out "$e2e/out" >> "$e2e/log" 2>&1 ) & chain_pid=$!
for _ in $(seq 1 600); do
  if ls "$e2e"/out/*/checkpoint.safetensors >/dev/null 2>&1 || ! kill -0 "$chain_pid" 2>/dev/null; then break; fi
  sleep 0.2
done
if kill -0 "$chain_pid" 2>/dev/null; then
  kill -9 "$chain_pid"; wait "$chain_pid" 2>/dev/null || true
  echo "# e2e: killed -9 after the first checkpoint; running again" >> "$e2e/log"
else
  wait "$chain_pid" || true
  echo "# e2e: the chain ended before a checkpoint could be killed (no resume tested)" >> "$e2e/log"; e2e_status="no-kill"
fi
run_chain || e2e_status="failed"
"$python" - "$e2e/out" "$e2e_status" "$e2e/log" >> "$out" <<'PY'
import glob, json, os, struct, sys
out, status, log = sys.argv[1:]
def tensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]; head = json.loads(f.read(n)); base = 8 + n
        data = f.read()
    return {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in head.items() if k != "__metadata__"}
bad, checked = [], 0
for w in sorted(glob.glob(f"{out}/**/weights.safetensors", recursive=True)):
    t = tensors(w)
    for k, (dt, shape, raw) in t.items():
        if not k.startswith("mask."):
            continue
        wdt, _, wraw = t[k[5:]]
        size = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1, "BOOL": 1}
        ms, ws = size[dt], size[wdt]
        # A pruned weight is w × 0, which is -0.0 for a negative w: zero is every bit clear
        # but the sign bit (little-endian: the sign is the top bit of the last byte).
        def is_zero(b):
            return not any(b[:-1]) and (b[-1] & 0x7F) == 0
        for i in range(len(raw) // ms):
            if not any(raw[i * ms:(i + 1) * ms]) and not is_zero(wraw[i * ws:(i + 1) * ws]):
                bad.append(k); break
        checked += 1
text = open(log).read()
print(json.dumps(dict(impl="lth-e2e", status=status, masks_checked=checked, masks_not_zero=bad,
                      resumed="resum" in text.lower(), graph_fallback="CUDA graph not used" in text,
                      cuda_loaded="falling back to CPU" not in text, chain=os.path.exists(f"{out}/chain.json"))))
PY
tail -5 "$e2e/log" | sed 's/^/# e2e log: /'

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
print(f"{'model':<12} {'batch':>5} {'prec':>5} {'step':>16} {'lth img/s':>11} | {'PyTorch (same GPU)':<34} {'img/s':>9} {'ratio':>6}")
def rows_of(r):
    # One solo row per bench line, plus its bundle (tickets/s: images/s summed over the members).
    s = r.get("step", "?") + ("+graph" if r.get("graph") else "")
    if not r.get("bundle"):
        yield r, s, r["step_images_per_second"]
    else:
        b = r["bundle"]
        yield r, f"bundle{b['members']}" + ("+graph" if b.get("graph") else ""), b["images_per_second"]
for r0 in lth:
  for r, s, v_lth in rows_of(r0):
    m, b, p = r["model"], r["batch"], r["precision"]
    if m == "resnet18":
        refs = [("eager cifar, autocast " + p + ", best of CL on/off",
                 best(lambda t: t.get("variant") == "cifar" and t.get("bs") == b and t.get("autocast") == {"bf16": "bfloat16", "fp16": "float16"}.get(p, p)))]
    else:
        refs = [(mode, best(lambda t, mode=mode: t.get("model") == m and t.get("bs") == b and t["impl"] == "pytorch-" + mode))
                for mode in ["eager", "eager+fused", "eager+graph"]]
    for i, (name, v) in enumerate(refs):
        head = f"{m:<12} {b:>5} {p:>5} {s:>16} {v_lth:>11.0f}" if i == 0 else " " * 54
        ratio = f"{v_lth / v:.2f}" if v else "-"
        print(f"{head} | {name:<34} {v if v else ('skipped' if dry else 'n/a'):>9} {ratio:>6}")
for r in rows:
    if r.get("impl") == "lth-e2e":
        print("e2e run-local chain:", json.dumps(r))
EOF
