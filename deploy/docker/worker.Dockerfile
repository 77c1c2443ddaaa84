# syntax=docker/dockerfile:1.7
# lth-worker, the GPU job daemon. Build from the repository root:
#
#   docker buildx build -f deploy/docker/worker.Dockerfile -t lth-worker:0.1.0 .                  # CUDA 13 (default)
#   docker buildx build -f deploy/docker/worker.Dockerfile --target worker-cpu -t lth-worker:0.1.0-cpu .
#
# libtorch is taken once: the PyPI torch 2.11.0 wheel (CUDA 13.0 build) and the CUDA 13 libraries
# it pins (deploy/docker/torch-cu130.txt) are unpacked into /opt/lth/torch, the worker is compiled
# against that same folder (LIBTORCH), and the runtime image keeps only its shared libraries at the
# same path, so the binary's build-time rpath finds libtorch_cpu.so there and the daemon's jobs
# dlopen libtorch_cuda.so from it (LTH_TORCH_LIB_DIR). No Python, no second torch.
#
# The NVIDIA driver of the node must support CUDA 13.0: driver >= 580 (see deploy/README.md).
# Tags are pinned; digests could not be resolved where this file was written: pin
# `image@sha256:...` in your registry mirror. The torch wheels exist for x86_64 and aarch64 (sbsa),
# so `--platform linux/amd64,linux/arm64` works; only x86_64 has been exercised.

ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04
ARG CPU_IMAGE=debian:12.12-slim

# --- torch: the wheel and its CUDA libraries, unpacked (pip is only a download-and-unzip tool here)
FROM ${PYTHON_IMAGE} AS torch
COPY deploy/docker/torch-cu130.txt /tmp/torch-cu130.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps --target /opt/lth/torch -r /tmp/torch-cu130.txt \
 && rm -rf /opt/lth/torch/bin /opt/lth/torch/*.dist-info
# What each image keeps: shared libraries and torch/version.py (the worker reports the version).
# The CPU image keeps the CPU subset (as scripts/fetch-libtorch.sh does) plus the two CUDA runtime
# libraries libtorch_cpu.so links against even on CPU.
RUN set -eu; \
    mkdir -p /opt/lth/run/torch /opt/lth/cpu/torch/lib /opt/lth/cpu/nvidia/cu13/lib; \
    cp -a /opt/lth/torch/torch/lib /opt/lth/torch/torch/version.py /opt/lth/run/torch/; \
    for d in /opt/lth/torch/nvidia/*/; do \
      n="$(basename "$d")"; mkdir -p "/opt/lth/run/nvidia/$n"; cp -a "$d/lib" "/opt/lth/run/nvidia/$n/"; \
    done; \
    rm -f /opt/lth/run/torch/lib/libtorch_python.so /opt/lth/run/nvidia/*/lib/*.a; \
    cp -a /opt/lth/torch/torch/version.py /opt/lth/cpu/torch/; \
    for f in libtorch_cpu.so libtorch.so libc10.so libshm.so libtorch_global_deps.so; do \
      cp -a "/opt/lth/torch/torch/lib/$f" /opt/lth/cpu/torch/lib/; \
    done; \
    cp -a /opt/lth/torch/torch/lib/libgomp* /opt/lth/cpu/torch/lib/; \
    cp -a /opt/lth/torch/nvidia/cu13/lib/libcudart.so.13 /opt/lth/torch/nvidia/cu13/lib/libcupti.so.13 /opt/lth/cpu/nvidia/cu13/lib/

# --- build: lth-worker against the unpacked wheel; cargo's registry and target dir are cache mounts
FROM ${RUST_IMAGE} AS build
COPY --from=torch /opt/lth/torch /opt/lth/torch
ENV LIBTORCH=/opt/lth/torch/torch \
    LIBTORCH_BYPASS_VERSION_CHECK=1
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,id=lth-worker-target \
    RUSTFLAGS="-C link-arg=-Wl,-rpath-link,/opt/lth/torch/nvidia/cu13/lib" \
    cargo build --release --locked -p lth-worker \
 && install -D -m 0755 target/release/lth-worker /out/lth-worker

# --- worker (default): NVIDIA's CUDA 13.0 base image (driver compatibility check, compat libs)
FROM ${CUDA_IMAGE} AS worker
# compute: CUDA; utility: nvidia-smi, which the daemon asks for the node's GPUs.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_VISIBLE_DEVICES=all \
    CUDA_DEVICE_ORDER=PCI_BUS_ID \
    LTH_TORCH_LIB_DIR=/opt/lth/torch/torch/lib \
    LTH_CACHE_DIR=/var/cache/lth \
    LTH_LOG_FORMAT=json
RUN groupadd --system --gid 10001 lth \
 && useradd --system --uid 10001 --gid lth --home-dir /var/cache/lth --shell /usr/sbin/nologin lth \
 && install -d -o lth -g lth -m 0750 /var/cache/lth \
 && install -d -m 0755 /data
COPY --from=torch /opt/lth/run /opt/lth/torch
COPY --from=build /out/lth-worker /usr/local/bin/lth-worker
USER 10001:10001
WORKDIR /var/cache/lth
VOLUME ["/var/cache/lth"]
# The daemon has no listening port to probe; Kubernetes and compose watch the process itself
# (a daemon that cannot reach the coordinator keeps retrying and logs why).
ENTRYPOINT ["lth-worker", "daemon"]
CMD ["--gpus", "all"]

# --- worker-cpu: the CPU subset on Debian slim, for CPU-only nodes and the compose CPU profile
FROM ${CPU_IMAGE} AS worker-cpu
ENV LTH_CACHE_DIR=/var/cache/lth \
    LTH_LOG_FORMAT=json
RUN groupadd --system --gid 10001 lth \
 && useradd --system --uid 10001 --gid lth --home-dir /var/cache/lth --shell /usr/sbin/nologin lth \
 && install -d -o lth -g lth -m 0750 /var/cache/lth \
 && install -d -m 0755 /data
COPY --from=torch /opt/lth/cpu /opt/lth/torch
COPY --from=build /out/lth-worker /usr/local/bin/lth-worker
USER 10001:10001
WORKDIR /var/cache/lth
VOLUME ["/var/cache/lth"]
ENTRYPOINT ["lth-worker", "daemon"]
CMD ["--gpus", "none"]

# The last stage is the default target.
FROM worker
