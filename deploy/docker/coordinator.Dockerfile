# syntax=docker/dockerfile:1.7
# lth-coordinator and lthctl. The control plane links no libtorch, so this image is small.
# Build from the repository root:
#
#   docker buildx build -f deploy/docker/coordinator.Dockerfile -t lth-coordinator:0.1.0 .
#
# Tags are pinned; digests could not be resolved where this file was written: pin
# `image@sha256:...` in your registry mirror. Pure Rust: builds for linux/amd64 and linux/arm64.

ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=debian:12.12-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# cargo's registry and the target folder are BuildKit cache mounts: a rebuild after a source
# change recompiles the changed crates only. The binaries leave the cached target dir by `install`.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,id=lth-coordinator-target \
    cargo build --release --locked -p lth-coordinator -p lthctl \
 && install -D -m 0755 target/release/lth-coordinator /out/lth-coordinator \
 && install -D -m 0755 target/release/lthctl /out/lthctl

FROM ${RUNTIME_IMAGE} AS coordinator
# CA certificates (S3 and Postgres over TLS) from the build stage: no package manager run here.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN groupadd --system --gid 10001 lth \
 && useradd --system --uid 10001 --gid lth --home-dir /var/lib/lth --shell /usr/sbin/nologin lth \
 && install -d -o lth -g lth -m 0750 /var/lib/lth
COPY --from=build /out/lth-coordinator /out/lthctl /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/lth
# Defaults for a container: SQLite and local artifacts under /var/lib/lth (mount a volume there);
# a cluster sets LTH_DB=postgres://... and LTH_ARTIFACTS=s3://... instead. The listen address is
# the container's, reachable only through the ports you publish. Without tokens the coordinator
# refuses a non-loopback listen: give LTH_AUTH_TOKENS / LTH_AUTH_FILE, or LTH_INSECURE=true.
ENV LTH_LISTEN=0.0.0.0:50051 \
    LTH_DB=sqlite:///var/lib/lth/lth.db \
    LTH_ARTIFACTS=/var/lib/lth/artifacts \
    LTH_LOG_FORMAT=json \
    LTH_HTTP_LISTEN=0.0.0.0:50052
EXPOSE 50051 50052
VOLUME ["/var/lib/lth"]
# Health: the coordinator's own gRPC health service, which says SERVING only while the database
# answers (`lth-coordinator healthcheck` exits 0 on SERVING; the health service needs no token).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["lth-coordinator", "healthcheck", "--coordinator", "http://127.0.0.1:50051"]
ENTRYPOINT ["lth-coordinator"]
