#!/usr/bin/env bash
# Containerized test of the etlfs image (as root, on Debian; installs what it needs).
#
#   1. Makes the base images locally when they are absent (they cannot be pulled here):
#      docker.io/library/debian:bookworm-slim (debootstrap) and localhost/etlfs-rust-build:X.Y
#      (that image plus gcc and the host's own Rust toolchain). Both are reused when present.
#   2. Builds the Dockerfile (multi-stage; cargo registry and target dir in build cache mounts).
#   3. Runs the image privileged, with host networking, against moto (scripts/servers.sh) and
#      checks, from outside the container: the mount works inside; the host sees it through an
#      rshared bind (Kubernetes Bidirectional); files reach the bucket; `podman stop` drains and
#      unmounts cleanly; a fresh container over an empty directory restores files as they are
#      read (--no-prefetch), and another at the defaults brings every file back by itself.
#
# Prints PASS/FAIL per check and ends with "N passed, M failed"; exits non-zero on any failure.
# Settings: ETLFS_IMAGE (default localhost/etlfs:test), ETLFS_CT_REBUILD_BASE=1 (remake the
# base images), ETLFS_CT_KEEP=1 (keep the temp dir), CONTAINERS_CONF (default: scripts/containers.conf).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
T0=$SECONDS
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/scripts/containers.conf}
BASE_IMAGE=docker.io/library/debian:bookworm-slim
IMAGE=${ETLFS_IMAGE:-localhost/etlfs:test}
BUCKET=etlfs-ct
PREFIX=ct
PASSED=0 FAILED=0
CONTAINERS=()
SHARED_DIRS=()
WORK=

log() { printf '==> [%3ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    printf 'FAIL setup: %s\n' "$*"
    FAILED=$((FAILED + 1))
    exit 1
}
pass() {
    printf 'PASS %s\n' "$*"
    PASSED=$((PASSED + 1))
}
fail() {
    printf 'FAIL %s\n' "$*"
    FAILED=$((FAILED + 1))
}
# check NAME CMD...: PASS if CMD succeeds.
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}

# ---------------------------------------------------------------------------------------------
# Cleanup (on any exit)
# ---------------------------------------------------------------------------------------------

# fuse_mounted DIR: DIR (or a mount below it) has a FUSE mount in this mount namespace.
fuse_mounted() {
    awk -v d="$1" '{
        for (i = 7; $i != "-"; i++) {}
        if (($5 == d || index($5, d "/") == 1) && $(i + 1) ~ /^fuse/) found = 1
    } END { exit !found }' /proc/self/mountinfo
}
not_fuse_mounted() { ! fuse_mounted "$1"; }
mounted_at() { awk -v d="$1" '$5 == d { f = 1 } END { exit !f }' /proc/self/mountinfo; }

cleanup() {
    local rc=$? c d
    trap - EXIT INT TERM
    for c in "${CONTAINERS[@]}"; do
        podman rm -f -t 5 "$c" >/dev/null 2>&1 || true
    done
    for d in "${SHARED_DIRS[@]}"; do
        # A killed etlfs leaves a dead FUSE mount; then our shared bind itself.
        for _ in 1 2 3 4 5; do
            mounted_at "$d" || break
            umount "$d" 2>/dev/null || umount -l "$d" 2>/dev/null || true
        done
    done
    if declare -F servers_stop >/dev/null; then servers_stop >/dev/null 2>&1 || true; fi
    if [[ -n $WORK && -d $WORK && -z ${ETLFS_CT_KEEP:-} ]]; then
        if grep -q " $WORK" /proc/self/mountinfo; then
            printf 'warning: mounts left under %s; not removing it\n' "$WORK" >&2
        else
            rm -rf "$WORK"
        fi
    fi
    if ((FAILED == 0 && rc != 0)); then
        printf 'FAIL harness exited with status %d\n' "$rc"
        FAILED=1
    fi
    log "total time $((SECONDS - T0)) s"
    printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
    ((FAILED == 0 && rc == 0)) && exit 0
    exit 1
}
trap cleanup EXIT
trap 'exit 130' INT TERM
[[ $(id -u) == 0 ]] || die "run as root (FUSE mounts, podman, mount --make-shared)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/etlfs-ct.XXXXXX")

# ---------------------------------------------------------------------------------------------
# Tools and images
# ---------------------------------------------------------------------------------------------

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

# ---------------------------------------------------------------------------------------------
# Object storage (moto on 127.0.0.1) and the run
# ---------------------------------------------------------------------------------------------

# shellcheck source=servers.sh
source "$ROOT/scripts/servers.sh"
log "starting the object-storage servers"
servers_install >/dev/null || die "servers_install failed"
servers_start >/dev/null || die "servers_start failed"
EP=$ETLFS_TEST_S3_ENDPOINT
curl -fsS -X PUT "$EP/$BUCKET" >/dev/null || die "could not create bucket $BUCKET at $EP"

cat >"$WORK/object-store.yaml" <<EOF
type: S3
config:
  bucket: $BUCKET
  endpoint: ${EP#http://}
  insecure: true
  access_key: test
  secret_key: test
  region: us-east-1
  bucket_lookup_type: path
EOF

# A free port on 127.0.0.1 for the status server (host networking shares the host's ports).
STATUS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# shared_dir DIR: a shared mount at DIR, so that mounts made in a container's rshared bind of it
# propagate back to the host (the Kubernetes mountPropagation: Bidirectional pattern).
shared_dir() {
    mkdir -p "$1"
    mount --bind "$1" "$1" && SHARED_DIRS+=("$1") && mount --make-shared "$1"
}

# run_etlfs NAME DIR: start the image over DIR (bound at /data) and wait until it is ready.
run_etlfs() {
    local name=$1 dir=$2
    shift 2
    CONTAINERS+=("$name")
    podman run -d --name "$name" --privileged --network host \
        -v "$dir:/data:rshared" \
        -v "$WORK/object-store.yaml:/etc/etlfs/object-store.yaml:ro" \
        -e ETLFS_CONFIG=/etc/etlfs/object-store.yaml \
        -e ETLFS_LISTEN="127.0.0.1:$STATUS_PORT" \
        "$IMAGE" mount --prefix "$PREFIX" --upload-delay 200ms --drain-timeout 30s "$@" /data \
        >/dev/null 2>"$WORK/$name.run.err" || {
        cat "$WORK/$name.run.err" >&2
        return 1
    }
    # (Without systemd, podman only logs that it cannot schedule the HEALTHCHECK timer:
    # "podman healthcheck run" below runs it by hand.)
    for _ in $(seq 1 120); do
        podman exec "$name" etlfs status >/dev/null 2>&1 && return 0
        [[ $(podman inspect "$name" --format '{{.State.Running}}') == true ]] || break
        sleep 0.5
    done
    podman logs "$name" 2>&1 | tail -20 >&2
    return 1
}

# bucket_has KEY...: every key is in the bucket listing, waiting up to 30 s.
bucket_keys() {
    curl -fsS "$EP/$BUCKET?list-type=2&prefix=$PREFIX/&max-keys=1000" |
        grep -o '<Key>[^<]*</Key>' | sed 's/<Key>//; s/<\/Key>//' | sort
}
bucket_has() {
    local k missing
    for _ in $(seq 1 60); do
        missing=0
        for k in "$@"; do
            bucket_keys | grep -qxF "$PREFIX/$k" || missing=1
        done
        ((missing == 0)) && return 0
        sleep 0.5
    done
    echo "bucket keys now: $(bucket_keys | tr '\n' ' ')" >&2
    return 1
}
# tree DIR: "path sha256" of every file, sorted (state dir excluded).
tree() { (cd "$1" && find . -path ./.etlfs -prune -o -type f -print0 | sort -z |
    xargs -0r sha256sum); }

# --- first container -------------------------------------------------------------------------
D1=$WORK/vol1
shared_dir "$D1" || die "could not make $D1 a shared mount"
mkdir -p "$D1/bingen/allocations/1d"
echo "written before etlfs was first mounted" >"$D1/pre-existing.txt"

log "starting container etlfs-ct-1"
t=$SECONDS
if run_etlfs etlfs-ct-1 "$D1"; then
    pass "container starts and reports ready (etlfs status, $((SECONDS - t)) s)"
else
    fail "container starts and reports ready"
    podman logs etlfs-ct-1 >"$WORK/ct1.log" 2>&1
    die "etlfs did not start (see above)"
fi

check "HEALTHCHECK (podman healthcheck run) is healthy" \
    sh -c 'podman healthcheck run etlfs-ct-1 >/dev/null 2>&1'

# (a) the mount works inside the container
check "(a) inside: /data is a FUSE mount and a file written there reads back" sh -c '
    podman exec etlfs-ct-1 sh -c "grep -q \" /data fuse\" /proc/self/mounts &&
        echo inside-container >/data/inside.txt && cat /data/inside.txt" |
        grep -qx inside-container'

# (b) the host sees the mount through the rshared bind
check "(b) host: $D1 is the FUSE mount (propagated through rshared)" fuse_mounted "$D1"
check "(b) host: a file written on the host reads back through the mount, and the container sees it" sh -c '
    head -c 1048576 /dev/urandom >"$1/bingen/allocations/1d/1704110400-1704196800" &&
    echo from-host >"$1/host.txt" && [ "$(cat "$1/host.txt")" = from-host ] &&
    [ "$(podman exec etlfs-ct-1 cat /data/host.txt)" = from-host ] &&
    [ "$(podman exec etlfs-ct-1 sha256sum /data/bingen/allocations/1d/1704110400-1704196800 | cut -d" " -f1)" = \
      "$(sha256sum "$1/bingen/allocations/1d/1704110400-1704196800" | cut -d" " -f1)" ]' _ "$D1"
check "(b) host: the container's file is visible on the host" \
    sh -c '[ "$(cat "$1/inside.txt")" = inside-container ]' _ "$D1"
check "(b) host: the state dir .etlfs is hidden through the mount" \
    sh -c '! [ -e "$1/.etlfs" ]' _ "$D1"

# (c) files reach the bucket
check "(c) bucket: every file (incl. the pre-existing one) is uploaded" \
    bucket_has pre-existing.txt inside.txt host.txt bingen/allocations/1d/1704110400-1704196800
check "(c) bucket: object bytes equal the file" sh -c '
    [ "$(curl -fsS --aws-sigv4 aws:amz:us-east-1:s3 --user test:test "$1/$2/$3/bingen/allocations/1d/1704110400-1704196800" | sha256sum)" = \
      "$(sha256sum <"$4/bingen/allocations/1d/1704110400-1704196800")" ]' \
    _ "$EP" "$BUCKET" "$PREFIX" "$D1"
tree "$D1" >"$WORK/tree1"

# Written just before stop: the drain has to upload it.
echo "written just before podman stop" >"$D1/last.txt"

# (d) podman stop: SIGTERM, drain, unmount, exit 0
log "podman stop etlfs-ct-1"
t=$SECONDS
podman stop -t 60 etlfs-ct-1 >/dev/null 2>&1
stop_secs=$((SECONDS - t))
code=$(podman inspect etlfs-ct-1 --format '{{.State.ExitCode}}')
podman logs etlfs-ct-1 >"$WORK/ct1.log" 2>&1
check "(d) podman stop (SIGTERM): exit code 0 (got $code, ${stop_secs} s)" test "$code" = 0
check "(d) no FUSE mount left on the host at $D1 (/proc/self/mountinfo)" not_fuse_mounted "$D1"
check "(d) the file written just before stop was drained to the bucket" bucket_has last.txt
tree "$D1" >"$WORK/tree1"
check "(d) the local files are intact under the unmounted directory" \
    sh -c '[ "$(wc -l <"$1")" -ge 5 ] && grep -q last.txt "$1"' _ "$WORK/tree1"

# raw_view DIR: a private bind of DIR at DIR-raw, which shows the local files under the mount
# from the host.
raw_view() {
    mkdir -p "$1-raw"
    mount --bind "$1" "$1-raw" && SHARED_DIRS+=("$1-raw") &&
        mount --make-private "$1-raw" || die "could not bind $1 privately"
}
# local_files DIR: the files under DIR's mount (its -raw view), sorted.
local_files() { (cd "$1-raw" && find . -path ./.etlfs -prune -o -type f -print | sort); }

# (e) a fresh container over an empty volume, prefetch off, restores on demand
D2=$WORK/vol2
shared_dir "$D2" || die "could not make $D2 a shared mount"
raw_view "$D2"
log "starting container etlfs-ct-2 over an empty directory (--no-prefetch)"
if run_etlfs etlfs-ct-2 "$D2" --no-prefetch; then
    pass "(e) fresh container over an empty directory starts and reports ready"
    check "(e) the file list is complete at once (names from the bucket)" sh -c '
        [ "$(cd "$1" && find . -type f | sort)" = "$(cut -d" " -f3 "$2" | sort)" ]' _ "$D2" "$WORK/tree1"
    check "(e) lazy: nothing downloaded before a read" sh -c '[ -z "$1" ]' _ "$(local_files "$D2")"
    # The read brings its file; the rest of its directory may follow (readahead), the files
    # of other directories do not.
    check "(e) lazy: reading one file fetches it, and nothing of other directories" sh -c '
        [ "$(cat "$1/pre-existing.txt")" = "written before etlfs was first mounted" ] &&
        files=$(cd "$2" && find . -path ./.etlfs -prune -o -type f -print) &&
        printf "%s\n" "$files" | grep -qx "./pre-existing.txt" &&
        ! printf "%s\n" "$files" | grep -q "^\./.*/"' \
        _ "$D2" "$WORK/vol2-raw"
    tree "$D2" >"$WORK/tree2"
    check "(e) file list and contents read back through the host are identical" \
        cmp -s "$WORK/tree1" "$WORK/tree2"
    podman stop -t 60 etlfs-ct-2 >/dev/null 2>&1
    code=$(podman inspect etlfs-ct-2 --format '{{.State.ExitCode}}')
    podman logs etlfs-ct-2 >"$WORK/ct2.log" 2>&1
    check "(e) second container: podman stop exits 0 (got $code) and leaves no mount" \
        sh -c '[ "$1" = 0 ]' _ "$code"
    check "(e) second container: no FUSE mount left at $D2" not_fuse_mounted "$D2"
    tree "$D2" >"$WORK/tree3"
    check "(e) after stop, the restored files are ordinary local files, identical" \
        cmp -s "$WORK/tree1" "$WORK/tree3"
else
    fail "(e) fresh container over an empty directory starts and reports ready"
fi

# (f) at the defaults, a fresh container brings every file back by itself, nothing read
D3=$WORK/vol3
shared_dir "$D3" || die "could not make $D3 a shared mount"
raw_view "$D3"
all_local() { [ "$(local_files "$D3")" = "$(cut -d" " -f3 "$WORK/tree1" | sort)" ]; }
log "starting container etlfs-ct-3 over an empty directory (defaults: prefetch)"
if run_etlfs etlfs-ct-3 "$D3"; then
    pass "(f) fresh container at the defaults starts and reports ready"
    for _ in $(seq 1 120); do
        all_local && break
        sleep 0.5
    done
    check "(f) prefetch: every file is local within 60 s, none read" all_local
    podman stop -t 60 etlfs-ct-3 >/dev/null 2>&1
    code=$(podman inspect etlfs-ct-3 --format '{{.State.ExitCode}}')
    podman logs etlfs-ct-3 >"$WORK/ct3.log" 2>&1
    check "(f) third container: podman stop exits 0 (got $code)" sh -c '[ "$1" = 0 ]' _ "$code"
    tree "$D3" >"$WORK/tree4"
    check "(f) the prefetched files are identical" cmp -s "$WORK/tree1" "$WORK/tree4"
else
    fail "(f) fresh container at the defaults starts and reports ready"
fi
