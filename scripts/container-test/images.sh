# shellcheck shell=bash
# Tools and images of scripts/container-test.sh (sourced by it, after WORK is made): installs
# podman & co when missing, makes the two base images when they are absent (they cannot be
# pulled here), builds the etlfs image from the Dockerfile and checks its configuration.

need=()
for tool in podman buildah runc debootstrap curl; do
    command -v "$tool" >/dev/null || need+=("$tool")
done
if ((${#need[@]})); then
    log "installing ${need[*]}"
    apt-get update -qq >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${need[@]}" >/dev/null || die "apt-get install ${need[*]} failed"
fi

if [[ -n ${ETLFS_CT_REBUILD_BASE:-} ]]; then
    podman rmi -f "$BASE_IMAGE" >/dev/null 2>&1 || true
fi
if ! podman image exists "$BASE_IMAGE"; then
    log "building $BASE_IMAGE with debootstrap (about a minute)"
    rootfs=$WORK/rootfs
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian \
        >"$WORK/debootstrap.log" 2>&1 || die "debootstrap failed (log: $WORK/debootstrap.log)"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/var/log/* "$rootfs"/debootstrap
    tar -C "$rootfs" -c . | podman import -q - "$BASE_IMAGE" >/dev/null ||
        die "podman import failed"
    rm -rf "$rootfs"
fi

SYSROOT=$(rustc --print sysroot) || die "no rustc on the host (the build image copies its toolchain)"
RUST_VERSION=$(rustc --version | awk '{ split($2, v, "."); print v[1] "." v[2] }')
BUILD_IMAGE=localhost/etlfs-rust-build:$RUST_VERSION
if [[ -n ${ETLFS_CT_REBUILD_BASE:-} ]]; then
    podman rmi -f "$BUILD_IMAGE" >/dev/null 2>&1 || true
fi
if ! podman image exists "$BUILD_IMAGE"; then
    log "building $BUILD_IMAGE from $BASE_IMAGE and the host toolchain $SYSROOT"
    ctr=$(buildah from --pull-never "$BASE_IMAGE") || die "buildah from $BASE_IMAGE failed"
    # Extra CA certificates of the host (e.g. a TLS-intercepting egress proxy): cargo needs them.
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        buildah copy -q "$ctr" /usr/local/share/ca-certificates/ /usr/local/share/ca-certificates/ \
            >/dev/null
    fi
    buildah run --network host "$ctr" -- sh -c '
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends gcc libc6-dev make cmake ca-certificates >/dev/null &&
        update-ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/*' \
        >"$WORK/build-image.log" 2>&1 || {
        buildah rm "$ctr" >/dev/null 2>&1
        die "making $BUILD_IMAGE failed (log: $WORK/build-image.log)"
    }
    # The toolchain without its documentation (share/): cargo and rustc are the real binaries.
    for sub in bin lib libexec; do
        [[ -d $SYSROOT/$sub ]] || continue
        buildah copy -q "$ctr" "$SYSROOT/$sub" "/usr/local/rust/$sub" >/dev/null ||
            die "copying the toolchain failed"
    done
    buildah config \
        --env PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env CARGO_HOME=/usr/local/cargo --env RUST_VERSION="$RUST_VERSION" "$ctr"
    buildah commit -q --rm "$ctr" "$BUILD_IMAGE" >/dev/null || die "buildah commit failed"
fi

log "building $IMAGE (podman build)"
t=$SECONDS
podman build --format docker --network host --pull=never \
    --build-arg RUST_BUILD_IMAGE="$BUILD_IMAGE" --build-arg RUNTIME_IMAGE="$BASE_IMAGE" \
    -t "$IMAGE" . >"$WORK/podman-build.log" 2>&1 || {
    tail -30 "$WORK/podman-build.log" >&2
    die "podman build failed"
}
pass "image builds (podman build, $((SECONDS - t)) s)"

cfg=$(podman image inspect "$IMAGE" --format \
    '{{json .Config.Entrypoint}} {{json .Config.Cmd}} {{.Config.StopSignal}} {{json .Config.Healthcheck.Test}}')
check "image config: $cfg" \
    test "$cfg" = '["etlfs"] ["mount","/data"] SIGTERM ["CMD","etlfs","status"]'
