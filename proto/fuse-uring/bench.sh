#!/usr/bin/env bash
# Measures the FUSE-over-io_uring prototype (doc/BENCHMARKS.md, "FUSE over io_uring"): the
# same passthrough server over /dev/fuse read/write ("classic") and over io_uring ("uring"),
# each with kernel passthrough of file I/O (etlfs' default mode, "-pt") and without it, and
# native ext4 in the same run. Workloads (examples/fsbench.rs): create+write+close of
# 5,000 x 4 KiB, and the Kubecost cycle 300 x 64 KiB x 3. Each measurement gets a fresh
# mount (so the server's request counts are per workload); the order of the modes rotates
# each round; the first round is a warm-up. Prints medians, and writes every sample and the
# request counts under $URING_BENCH_DIR.
#
# Run as root on Linux >= 6.14 from the repository root, after
#   cargo build --release --example fsbench
#   cargo build --release --manifest-path proto/fuse-uring/Cargo.toml
# (both with the same CARGO_TARGET_DIR as this script sees). Sets
# /sys/module/fuse/parameters/enable_uring to Y for the run and restores it afterwards.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
PROTO=$TARGET/release/fuse-uring-proto
FSBENCH=$TARGET/release/examples/fsbench
WORK=${URING_BENCH_DIR:-/tmp/fuse-uring-bench}
ROUNDS=${URING_BENCH_ROUNDS:-7}
MODES=(${URING_BENCH_MODES:-native classic-pt uring-pt classic uring})
SMALL_N=5000 SMALL_SIZE=4096 KC_N=300 KC_SIZE=65536 KC_CYCLES=3
PARAM=/sys/module/fuse/parameters/enable_uring

for b in "$PROTO" "$FSBENCH"; do
    [[ -x $b ]] || { echo "missing $b (see the build steps at the top of $0)" >&2; exit 1; }
done
[[ -w $PARAM ]] || { echo "$PARAM not writable: needs root and a kernel with FUSE over io_uring" >&2; exit 1; }

OLD_PARAM=$(cat "$PARAM")
SERVER_PID=
MNT=$WORK/mnt
cleanup() {
    if mountpoint -q "$MNT"; then umount "$MNT" || umount -l "$MNT"; fi
    [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null || true
    echo "$OLD_PARAM" >"$PARAM"
}
trap cleanup EXIT
echo Y >"$PARAM"

rm -rf "$WORK"
mkdir -p "$WORK/back" "$MNT" "$WORK/native" "$WORK/counts"
: >"$WORK/samples.tsv"

# Polls a condition every 10 ms, up to 10 s.
wait_for() {
    local i
    for ((i = 0; i < 1000; i++)); do
        if "$@"; then return 0; fi
        sleep 0.01
    done
    echo "timed out waiting for: $*" >&2
    return 1
}
# The server has exited (a zombie until `wait`, which kill -0 would still see).
server_gone() {
    local st
    st=$(cat "/proc/$SERVER_PID/stat" 2>/dev/null) || return 0
    [[ ${st##*) } == Z* ]]
}

# mount_mode MODE LOG: starts the server of MODE (not native) on $MNT.
# MODE is TRANSPORT[-pt][-nopin]: -pt kernel passthrough of file I/O, -nopin io_uring queue
# threads not pinned to their CPUs.
mount_mode() {
    local mode=$1 log=$2 transport=${1%%-*} args=()
    [[ $mode == *-pt* ]] && args+=(--passthrough)
    [[ $mode == *-nopin* ]] && args+=(--no-pin)
    "$PROTO" "$transport" "$WORK/back" "$MNT" "${args[@]}" >"$log" 2>"$log.err" &
    SERVER_PID=$!
    wait_for mountpoint -q "$MNT"
}

unmount_mode() {
    umount "$MNT"
    wait_for server_gone
    wait "$SERVER_PID" || { echo "server failed:" >&2; cat "$2.err" >&2; return 1; }
    SERVER_PID=
    grep -q "refused" "$2.err" && { cat "$2.err" >&2; return 1; }
    return 0
}

# measure MODE WORKLOAD ROUND
measure() {
    local mode=$1 wl=$2 round=$3 dir secs log=$WORK/counts/$1.$2
    if [[ $mode == native ]]; then
        dir=$WORK/native/$wl.$round
    else
        mount_mode "$mode" "$log"
        dir=$MNT/$mode.$wl.$round
    fi
    sync
    case $wl in
        create) secs=$("$FSBENCH" create "$dir" "$SMALL_N" "$SMALL_SIZE") ;;
        kubecost) secs=$("$FSBENCH" kubecost "$dir" "$KC_N" "$KC_SIZE" "$KC_CYCLES") ;;
    esac
    [[ $mode != native ]] && unmount_mode "$mode" "$log"
    ((round >= 1)) && printf '%s\t%s\t%s\t%s\n' "$mode" "$wl" "$round" "$secs" >>"$WORK/samples.tsv"
    awk -v m="$mode" -v w="$wl" -v s="$secs" 'BEGIN { printf "  %-11s %-9s %.1f ms\n", m, w, s * 1000 }'
}

for ((round = 0; round <= ROUNDS; round++)); do
    k=$((round % ${#MODES[@]}))
    order=("${MODES[@]:k}" "${MODES[@]:0:k}")
    if ((round == 0)); then echo "warm-up round"; else echo "round $round/$ROUNDS: ${order[*]}"; fi
    for wl in create kubecost; do
        for m in "${order[@]}"; do measure "$m" "$wl" "$round"; done
    done
    rm -rf "$WORK/back/"* "$WORK/native/"*
done

python3 - "$WORK" "$SMALL_N" "$KC_N" "$KC_CYCLES" "${MODES[@]}" <<'EOF'
import statistics, sys
work, small_n, kc_n, kc_cycles, modes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
s = {}
for line in open(f"{work}/samples.tsv"):
    m, wl, _, secs = line.split()
    s.setdefault((m, wl), []).append(float(secs) * 1000)
print(f"\nmedian ms of {len(s[(modes[0], 'create')])} runs [min-max]; x native; round trips per file op")
ops = {"create": small_n, "kubecost": kc_n * kc_cycles}
for wl in ("create", "kubecost"):
    nat = statistics.median(s[("native", wl)]) if ("native", wl) in s else None
    for m in modes:
        v = s[(m, wl)]
        med = statistics.median(v)
        rel = f"{med / nat:.2f}x" if nat else ""
        trips = ""
        if m != "native":
            counts = {}
            for line in open(f"{work}/counts/{m}.{wl}"):
                op, c = line.split()
                counts[op] = int(c)
            ring = counts.pop("via_io_uring", 0)
            total = sum(counts.values())
            trips = f"{total / ops[wl]:.2f}/op ({ring} of {total} via io_uring): " + " ".join(
                f"{op}={c}" for op, c in sorted(counts.items(), key=lambda x: -x[1]))
        print(f"{wl:9} {m:11} {med:8.1f} [{min(v):.1f}-{max(v):.1f}] {rel:>6}  {trips}")
EOF
