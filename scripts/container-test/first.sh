# shellcheck shell=bash
# shellcheck disable=SC2016 # the `sh -c` checks expand their own $1, $2 (passed after `_`)
# Checks (a) to (d) of scripts/container-test.sh (sourced by it): the first container, over a
# directory with a file in it, through to `podman stop`.

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
