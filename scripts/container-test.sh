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
# The steps, in scripts/container-test/: images.sh (1 and 2), lib.sh (the helpers of 3),
# first.sh (the first container: the checks through `podman stop`) and fresh.sh (the fresh
# containers); this file holds the reporting, the cleanup and the S3 server.
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

# shellcheck source=scripts/container-test/images.sh
source "$ROOT/scripts/container-test/images.sh"

# ---------------------------------------------------------------------------------------------
# Object storage (moto on 127.0.0.1) and the run
# ---------------------------------------------------------------------------------------------

# shellcheck source=scripts/servers.sh
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

# shellcheck source=scripts/container-test/lib.sh
source "$ROOT/scripts/container-test/lib.sh"
# shellcheck source=scripts/container-test/first.sh
source "$ROOT/scripts/container-test/first.sh"
# shellcheck source=scripts/container-test/fresh.sh
source "$ROOT/scripts/container-test/fresh.sh"
