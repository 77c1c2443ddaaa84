#!/usr/bin/env bash
# Fetch libtorch 2.11.0 from the PyPI `torch` wheel (pytorch.org is not reachable from every machine)
# into third_party/libtorch, which .cargo/config.toml points tch at.
#
# What lands there: torch/include and the CPU subset of torch/lib, plus libcudart.so.13 and
# libcupti.so.13 (libtorch_cpu.so links against them even on CPU) from NVIDIA's PyPI wheels.
# libtorch_cuda*.so is left out on purpose: the worker dlopen()s it at start from a GPU node's own
# torch install (see worker/src/device.rs), so one binary serves CPU and GPU nodes.
#
# Idempotent: does nothing when the folder already holds the right version.
set -euo pipefail

TORCH_VERSION=2.11.0
CUDART_VERSION=13.0.96
CUPTI_VERSION=13.0.85

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${LTH_LIBTORCH_DIR:-$root/third_party/libtorch}"
stamp="$dest/.lth-libtorch-version"
want="torch=$TORCH_VERSION cudart=$CUDART_VERSION cupti=$CUPTI_VERSION"

CRT_VERSION=13.0.88
cuda_inc="$dest/cuda-include"

# The CUDA runtime's headers (cuda_runtime_api.h, crt/host_config.h: the runtime and crt wheels,
# ~4 MB) for the worker's CUDA-graph shim (worker/shim/lth_cuda_graph.cpp), which includes
# ATen/cuda/CUDAGraph.h. A separate, idempotent step so that a checkout whose libtorch is already
# in place only gains this folder.
fetch_cuda_headers() {
  [[ -f "$cuda_inc/crt/host_config.h" && -f "$cuda_inc/cuda_runtime_api.h" ]] && return 0
  local cache="${LTH_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lth/wheels}"
  local py
  py="$(command -v python3 || command -v python)" || { echo "fetch-libtorch: python3 with pip is required" >&2; exit 1; }
  mkdir -p "$cache"
  "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$cache" "nvidia-cuda-runtime==$CUDART_VERSION" "nvidia-cuda-crt==$CRT_VERSION"
  local tmp
  tmp="$(mktemp -d)"
  "$py" - "$cache" "$tmp" "$CUDART_VERSION" "$CRT_VERSION" <<'PY'
import glob, os, sys, zipfile
cache, out, rv, crt = sys.argv[1:]
for pat in (f"nvidia_cuda_runtime-{rv}-*.whl", f"nvidia_cuda_crt-{crt}-*.whl"):
    hits = sorted(glob.glob(os.path.join(cache, pat)))
    if not hits:
        sys.exit(f"fetch-libtorch: no wheel matching {pat} in {cache}")
    with zipfile.ZipFile(hits[-1]) as z:
        for info in z.infolist():
            n = info.filename
            i = n.find("/include/")
            if i < 0 or n.endswith("/"):
                continue
            target = os.path.join(out, n[i + len("/include/"):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                dst.write(src.read())
PY
  rm -rf "$cuda_inc"
  mv "$tmp" "$cuda_inc"
  echo "fetch-libtorch: CUDA runtime headers ready in $cuda_inc" >&2
}

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  fetch_cuda_headers
  exit 0
fi

# Wheels are cached outside the checkout so fresh clones (CI) reuse the 530 MB download.
cache="${LTH_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lth/wheels}"
mkdir -p "$cache"
py="$(command -v python3 || command -v python)" || { echo "fetch-libtorch: python3 with pip is required" >&2; exit 1; }

plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_25_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
echo "fetch-libtorch: downloading torch==$TORCH_VERSION (~530 MB) and the CUDA runtime wheels from PyPI into $cache" >&2
"$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 "${plat[@]}" \
  -d "$cache" "torch==$TORCH_VERSION" "nvidia-cuda-runtime==$CUDART_VERSION" "nvidia-cuda-cupti==$CUPTI_VERSION"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$py" - "$cache" "$tmp" "$TORCH_VERSION" "$CUDART_VERSION" "$CUPTI_VERSION" <<'PY'
import glob, os, re, sys, zipfile
cache, out, tv, rv, cv = sys.argv[1:]
os.makedirs(f"{out}/lib", exist_ok=True)
keep_lib = re.compile(r"^torch/lib/(libtorch_cpu|libtorch|libc10|libgomp[^/]*|libshm|libtorch_global_deps)\.so[^/]*$")
def one(pattern):
    hits = sorted(glob.glob(os.path.join(cache, pattern)))
    if not hits:
        sys.exit(f"fetch-libtorch: no wheel matching {pattern} in {cache}")
    return hits[-1]
with zipfile.ZipFile(one(f"torch-{tv}-*.whl")) as z:
    for info in z.infolist():
        n = info.filename
        if n.startswith("torch/include/"):
            z.extract(info, out)
        elif keep_lib.match(n):
            target = f"{out}/lib/{os.path.basename(n)}"
            with z.open(info) as src, open(target, "wb") as dst:
                dst.write(src.read())
    os.rename(f"{out}/torch/include", f"{out}/include")
for pat, lib in ((f"nvidia_cuda_runtime-{rv}-*.whl", "libcudart.so.13"), (f"nvidia_cuda_cupti-{cv}-*.whl", "libcupti.so.13")):
    with zipfile.ZipFile(one(pat)) as z:
        names = [n for n in z.namelist() if n.endswith("/" + lib)]
        if not names:
            sys.exit(f"fetch-libtorch: {lib} not found in {pat}")
        with z.open(names[0]) as src, open(f"{out}/lib/{lib}", "wb") as dst:
            dst.write(src.read())
with open(f"{out}/build-version", "w") as f:
    f.write(tv + "\n")
PY
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$tmp" "$dest"
trap - EXIT
echo "$want" > "$stamp"
fetch_cuda_headers
echo "fetch-libtorch: libtorch $TORCH_VERSION (CPU subset) ready in $dest" >&2
