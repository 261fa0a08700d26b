# syntax=docker/dockerfile:1
# etlfs container image. Build (scripts/container-test.sh does all of this, and makes the base
# images locally when they cannot be pulled):
#
#     podman build --format docker -t localhost/etlfs:latest .
#
# Run (FUSE needs /dev/fuse and CAP_SYS_ADMIN; for the host or other containers to see the
# mount, bind the directory with rshared propagation, i.e. Kubernetes Bidirectional):
#
#     podman run --privileged -v /var/configs:/var/configs:rshared \
#         -v ./object-store.yaml:/etc/etlfs/object-store.yaml:ro \
#         -e ETLFS_CONFIG=/etc/etlfs/object-store.yaml \
#         localhost/etlfs:latest mount --prefix etl /var/configs/db/etl

# Any image with a Rust toolchain (cargo on PATH), a C compiler and CA certificates,
# e.g. docker.io/library/rust:1.95-bookworm. The harness builds this one from the host's toolchain.
ARG RUST_BUILD_IMAGE=localhost/etlfs-rust-build:1.95
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${RUST_BUILD_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The status page's HTML template, compiled into the binary.
COPY templates ./templates
# The registry and target caches survive between builds (a source change rebuilds incrementally);
# the binary is copied out of the cache mount so that the next stage can use it.
RUN --mount=type=cache,id=etlfs-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=etlfs-cargo-target,target=/src/target \
    cargo build --release --locked \
    && install -m 0755 target/release/etlfs /usr/local/bin/etlfs

FROM ${RUNTIME_IMAGE}
# ca-certificates: TLS to S3, GCS and Azure endpoints. No fuse3: etlfs runs as root and mounts
# with the mount(2) system call, without fusermount.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log \
    && mkdir -p /data /etc/etlfs
COPY --from=build /usr/local/bin/etlfs /usr/local/bin/etlfs
# etlfs is PID 1: on SIGTERM it unmounts, drains pending uploads (--drain-timeout) and exits 0.
STOPSIGNAL SIGTERM
# Exits 0 only when the mount is ready (status server on 127.0.0.1:9500, or $ETLFS_LISTEN).
HEALTHCHECK --interval=10s --timeout=5s --start-period=15m CMD ["etlfs", "status"]
ENTRYPOINT ["etlfs"]
CMD ["mount", "/data"]
