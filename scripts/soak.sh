#!/usr/bin/env bash
# The etlfs soak: a real mount on a real S3 server (moto, scripts/servers.sh) under Kubecost's
# write pattern plus renames and deletes, while etlfs is SIGKILLed and restarted at random
# moments and the S3 server is stopped and started. Run it as root (it mounts FUSE):
#
#     scripts/soak.sh                 # the long soak: SOAK_SECONDS (default 600 s) of chaos
#     scripts/soak.sh --short         # the CI soak: 140 s of chaos, about 3 minutes in all
#     SOAK_SEED=123456 scripts/soak.sh --short    # replay the choices of an earlier run
#
# What one run does (the driver is examples/soak.rs; its header has the details):
# - etlfs serves a directory (`etlfs mount --local`) on a fresh bucket, through a private
#   front of the S3 server (`$ETLFS_TEST_S3_CTL new`), with --upload-delay 200ms;
# - a workload thread, as an unprivileged user, runs through the mount Kubecost's write
#   (open O_RDWR|O_CREAT 0600, flock LOCK_EX, ftruncate 0, one write, flock LOCK_UN, close)
#   over a bingen/{allocations,assets}/{1h,1d,1w,10m}/START-END tree, plus temp file +
#   rename over, renames of files and directories (also over existing files and empty
#   directories), RENAME_EXCHANGE, unlinks, mkdirs and rmdirs of emptied directories, and
#   reads and listings checked against its model of what every path must hold. Every file's
#   content carries its own header (generation, path, checksum) and a random padding of 0 to
#   1 MiB, so a torn, mixed or empty object is recognised by its bytes alone. Some writes keep
#   the file open and empty for 0.3-0.8 s (etlfs must not upload that state);
# - the chaos: SIGKILL of etlfs at random moments and at chosen points inside an operation
#   (after ftruncate, after the write, before a temp file's rename, during a rename, unlink,
#   rmdir or mkdir); clean SIGTERM restarts, after each of which (when the drain finished) the
#   bucket must equal the local directory; each run of etlfs picks passthrough or daemon mode
#   at random; and outages of the S3 front (stop/start, and pause/resume: a hanging server);
# - an operation that fails under a crash (ENOTCONN) is settled once the mount is back: the
#   whole tree, walked through the mount, must be the state before it, the state after it, or
#   (for a write) the file cut short by the crash; anything else fails the soak, and so does
#   any error while etlfs was up;
# - a sampler reads every new object version from the bucket once a second (through the S3
#   server itself, not the front the outages stop): each must be a complete version the
#   workload wrote, with etlfs_sha256 equal to its body — never torn, never empty — except
#   the state a crash left in the application's own file;
# - at the end: the front up, SIGTERM (drain), then local directory == model, bucket == local
#   directory byte for byte (nothing missing, nothing extra: no deleted file came back, a
#   marker exactly for each directory), and a new node (etlfs over an empty directory on the
#   same bucket) reads back every file equal to the model.
# It prints a summary (operations, crashes survived, faults injected, objects sampled, data
# lost) and exits 0 only if everything held; every failure is listed with the seed.
#
# Settings (environment):
#   SOAK_SECONDS   seconds of chaos (default 600; 140 with --short)
#   SOAK_SEED      the seed of every random choice (default: random; always printed)
#   SOAK_RATE      workload operations per second (default 40)
#   SOAK_MODE      passthrough | daemon | mixed (default: mixed, chosen per etlfs run)
#   SOAK_WORKDIR   where the directories and logs go (default: a new /tmp/etlfs-soak.XXXXXX);
#                  it holds etlfs-NNN.log for every run, etlfs-new-node.log, events.log (each
#                  kill, restart, outage and settled operation, with times) and driver.log
#   SOAK_KEEP=1    keep the data directories after a passing run (always kept on failure)
#   SOAK_ETLFS_LOG RUST_LOG for etlfs (default info)
#   ETLFS_BIN, SOAK_DRIVER   the etlfs binary and the driver to use (default: built here
#                  with `cargo build --release --bin etlfs --example soak`)
# Servers: with ETLFS_TEST_SERVERS_DIR set (scripts/test.sh runs the tests inside servers it
# started), the running servers are used; otherwise this script starts its own and stops
# them at the end. Everything listens on 127.0.0.1; every mount is unmounted and every process
# stopped at the end, also on failure or Ctrl-C.

set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

log() { printf '==> soak: %s\n' "$*" >&2; }
die() {
    printf 'error: soak: %s\n' "$*" >&2
    exit 2
}

short=false
extra=()
while (($#)); do
    case $1 in
    --short) short=true ;;
    --seconds)
        SOAK_SECONDS=${2:?--seconds needs a value}
        shift
        ;;
    --seed)
        SOAK_SEED=${2:?--seed needs a value}
        shift
        ;;
    -h | --help)
        sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    --*)
        # Anything else goes to the driver (e.g. --rate 80, --kill-every 3,8).
        extra+=("$1" "${2:?$1 needs a value}")
        shift
        ;;
    *) die "unexpected argument $1 (see --help)" ;;
    esac
    shift
done

[[ $(id -u) == 0 ]] || die "run it as root: it mounts FUSE file systems"
[[ -c /dev/fuse ]] || die "/dev/fuse is missing"

if $short; then
    seconds=${SOAK_SECONDS:-140}
    chaos=(--kill-every "4,11" --term-every "20,40" --outage-every "7,16" --outage-len "1,6")
else
    seconds=${SOAK_SECONDS:-600}
    chaos=(--kill-every "5,16" --term-every "25,60" --outage-every "8,20" --outage-len "1,8")
fi
seed=${SOAK_SEED:-$((($(od -An -N4 -tu4 /dev/urandom) % 900000000) + 100000000))}

# ---------------------------------------------------------------------------------------------
# Binaries
# ---------------------------------------------------------------------------------------------
if [[ -z ${ETLFS_BIN:-} || -z ${SOAK_DRIVER:-} ]]; then
    export CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
    [[ :$PATH: == *":$CARGO_HOME/bin:"* ]] || PATH=$CARGO_HOME/bin:$PATH
    log "building etlfs and the soak driver (release)"
    cargo build --release --locked --bin etlfs --example soak >&2
    target=${CARGO_TARGET_DIR:-$repo/target}
    ETLFS_BIN=${ETLFS_BIN:-$target/release/etlfs}
    SOAK_DRIVER=${SOAK_DRIVER:-$target/release/examples/soak}
fi
[[ -x $ETLFS_BIN ]] || die "ETLFS_BIN=$ETLFS_BIN is not an executable"
[[ -x $SOAK_DRIVER ]] || die "SOAK_DRIVER=$SOAK_DRIVER is not an executable"
ETLFS_BIN=$(realpath "$ETLFS_BIN")

# ---------------------------------------------------------------------------------------------
# Cleanup: whatever happens, no process and no mount stays behind
# ---------------------------------------------------------------------------------------------
own_servers=false
front_port=
driver_pid=
work=
passed=false

# shellcheck disable=SC2317 # called by the EXIT trap
is_mounted() { awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local pid i m
    set +e
    if [[ -n $driver_pid ]] && kill -0 "$driver_pid" 2>/dev/null; then
        kill -TERM "$driver_pid" 2>/dev/null
        wait "$driver_pid" 2>/dev/null
    fi
    # The etlfs run the driver had going, if the driver could not stop it itself: by its PID,
    # and only if that PID still is our etlfs binary.
    if [[ -n $work && -f $work/etlfs.pid ]]; then
        pid=$(<"$work/etlfs.pid")
        if [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$ETLFS_BIN" ]]; then
            kill -TERM "$pid" 2>/dev/null
            for ((i = 0; i < 100; i++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$pid" 2>/dev/null
        fi
    fi
    if [[ -n $work ]]; then
        for m in "$work/mnt" "$work/mnt2"; do
            is_mounted "$m" && umount -l "$m"
        done
    fi
    if [[ -n $front_port && -n ${ETLFS_TEST_S3_CTL:-} ]]; then
        "$ETLFS_TEST_S3_CTL" remove "$front_port" >/dev/null 2>&1
    fi
    if $own_servers; then
        servers_stop >/dev/null 2>&1
    fi
    if [[ -n $work ]]; then
        if $passed && [[ -z ${SOAK_KEEP:-} ]]; then
            # The mount points are empty directories once unmounted: rmdir, never rm -r.
            rm -rf "${work:?}/local" "${work:?}/local2"
            rmdir "$work/mnt" "$work/mnt2" 2>/dev/null
            log "logs kept in $work"
        else
            log "directories and logs kept in $work"
        fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Servers, bucket, private front
# ---------------------------------------------------------------------------------------------
if [[ -n ${ETLFS_TEST_SERVERS_DIR:-} && -d ${ETLFS_TEST_SERVERS_DIR} && -n ${ETLFS_TEST_S3_CTL:-} ]]; then
    log "using the running test servers ($ETLFS_TEST_SERVERS_DIR)"
else
    # shellcheck source=scripts/servers.sh
    source scripts/servers.sh
    servers_install
    own_servers=true
    servers_start
fi

work=${SOAK_WORKDIR:-$(mktemp -d /tmp/etlfs-soak.XXXXXX)}
mkdir -p "$work"
chmod 0755 "$work"
mkdir -p "$work/mnt" "$work/local" "$work/mnt2" "$work/local2"

bucket="soak-$seed-$$"
curl -fsS -X PUT "$ETLFS_TEST_S3_SERVER/$bucket" >/dev/null || die "could not create the bucket $bucket"
front_port=$("$ETLFS_TEST_S3_CTL" new) || die "could not start a private S3 front"
cat >"$work/object-store.yaml" <<EOF
type: S3
config:
  bucket: "$bucket"
  endpoint: "127.0.0.1:$front_port"
  insecure: true
  access_key: "test"
  secret_key: "test"
  region: "us-east-1"
  bucket_lookup_type: path
EOF

log "seed $seed, $seconds s of chaos; bucket $bucket behind front 127.0.0.1:$front_port; work directory $work"
"$SOAK_DRIVER" \
    --etlfs "$ETLFS_BIN" \
    --mnt "$work/mnt" --local "$work/local" --mnt2 "$work/mnt2" --local2 "$work/local2" \
    --work "$work" --config "$work/object-store.yaml" --prefix soak \
    --s3 "$ETLFS_TEST_S3_SERVER" --bucket "$bucket" \
    --ctl "$ETLFS_TEST_S3_CTL" --front-port "$front_port" \
    --seconds "$seconds" --seed "$seed" \
    --rate "${SOAK_RATE:-40}" --mode "${SOAK_MODE:-mixed}" \
    "${chaos[@]}" "${extra[@]}" \
    > >(tee "$work/driver.log") 2>&1 &
driver_pid=$!
rc=0
wait "$driver_pid" || rc=$?
driver_pid=
if ((rc == 0)); then
    passed=true
fi
exit "$rc"
