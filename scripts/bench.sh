#!/usr/bin/env bash
# Benchmark: native disk vs etlfs (passthrough and daemon mode), side by side, in one run.
#
#   sudo scripts/bench.sh            # needs root and /dev/fuse; about a minute at the defaults
#
# Every workload is run by the compiled driver examples/fsbench.rs (it prints the seconds of the
# timed part) against three directories on the same filesystem:
#   native       a plain directory
#   passthrough  a directory with `etlfs mount DIR` over it (default mode, FUSE passthrough)
#   daemon       a directory with `etlfs mount --no-passthrough DIR` over it
# The modes are interleaved within each repetition, so drift (page cache, host noise) hits them
# alike; the table shows the MEDIAN of BENCH_REPEAT repetitions, after BENCH_WARMUP unreported
# ones. Ratios are etlfs/native: throughput ratios for MiB/s rows, time ratios for ms rows.
# PASS/MISS is judged for the passthrough column against the target.
#
# Environment:
#   BENCH_DIR       base directory for the work trees and logs   (default /tmp/etlfs-bench)
#   BENCH_REPEAT    reported repetitions per workload            (default 3)
#   BENCH_WARMUP    unreported warm-up repetitions               (default 1)
#   BENCH_SEQ_MIB   size of the sequential file in MiB           (default 256)
#   BENCH_SMALL_N   number of 4 KiB files for create/stat        (default 5000)
#   BENCH_KC_N      files in the Kubecost pattern                (default 300)
#   BENCH_KC_CYCLES cycles of the Kubecost pattern               (default 3)
#   BENCH_COLD      1 = also measure cold reads (drop_caches)    (default 1)
#   BENCH_SECTIONS  sections to run, space separated             (default "local")
#   BENCH_ETLFS_ARGS extra `etlfs mount` arguments for both etlfs modes
#                   (default "--upload-delay 1h --drain-timeout 0s": see below; set it to ""
#                   to measure with bucket uploads running in the background)
#   BENCH_STAT_COLD how to make the metadata cache cold before "stat, first pass":
#                   "drop" (echo 2 > drop_caches, default) or "remount" (remount etlfs; note
#                   that a restarted etlfs at once uploads what it had not uploaded yet)
#   BENCH_NO_BUILD  1 = use the existing release binaries
#   BENCH_KEEP      1 = keep the work trees afterwards (logs and samples are always kept)
#
# Notes on method:
# - Nothing is fsync'ed; writes are timed up to and including close(2). `sync` runs before each
#   timed run (outside the timing) so that writeback from earlier runs does not land in it.
# - The sequential file is deleted before each write (outside the timing), so the page cache
#   pages freed by the previous run are reused: on a VM, first-touch of never-used guest memory
#   costs several times more than the copy itself and would otherwise dominate.
# - Small files are never deleted during the run: ext4 without a journal (like the root of
#   some VMs) skips inodes deleted in the last 60-300 s when allocating, which makes creates
#   after mass deletes several times slower. The cleanup at the end deletes all work files, so
#   leave a few minutes between runs (or use a fresh BENCH_DIR filesystem) for stable numbers.
# - "stat, first pass": dentries and inodes are dropped (echo 2 > /proc/sys/vm/drop_caches)
#   right before it in every mode, so each stat through etlfs is a FUSE LOOKUP (as on a fresh
#   mount) and each native stat re-reads its inode from the buffer cache. With
#   BENCH_STAT_COLD=remount etlfs is remounted instead and the native dentry cache stays warm.
#   "stat, repeat" is the same stat loop again right after.
# - Bucket mirroring is kept out of the timings by default: with --upload-delay 1h nothing is
#   uploaded during the run (changes are still recorded in etlfs' journal, which is timed),
#   and --drain-timeout 0s lets it stop at once. Upload cost belongs in its own section.
# - No --config is passed and ETLFS_CONFIG is ignored, so etlfs uses its default FILESYSTEM
#   bucket beside each work tree (BENCH_DIR/.MODE.etlfs-bucket), removed afterwards.
#
# Adding a section: write `section_NAME` that fills ROWS/SAMPLES with `define_row` and `measure`
# (see section_local) and ends with `print_table`; then run with BENCH_SECTIONS="local NAME".

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
ETLFS=$TARGET_DIR/release/etlfs
FSBENCH=$TARGET_DIR/release/examples/fsbench

BENCH_DIR=${BENCH_DIR:-/tmp/etlfs-bench}
REPEAT=${BENCH_REPEAT:-3}
WARMUP=${BENCH_WARMUP:-1}
SEQ_MIB=${BENCH_SEQ_MIB:-256}
SMALL_N=${BENCH_SMALL_N:-5000}
SMALL_SIZE=4096
KC_N=${BENCH_KC_N:-300}
KC_SIZE=65536
KC_CYCLES=${BENCH_KC_CYCLES:-3}
COLD=${BENCH_COLD:-1}
if [[ -v BENCH_ETLFS_ARGS ]]; then ETLFS_EXTRA=$BENCH_ETLFS_ARGS; else ETLFS_EXTRA="--upload-delay 1h --drain-timeout 0s"; fi
STAT_COLD=${BENCH_STAT_COLD:-drop}
unset ETLFS_CONFIG # never mirror benchmark junk to a bucket configured in the environment
SECTIONS=${BENCH_SECTIONS:-local}

# etlfs modes: name -> extra `etlfs mount` arguments. "native" is the plain-directory baseline.
declare -A MODE_ARGS=([passthrough]="" [daemon]="--no-passthrough")
declare -A MODE_DIR=()   # mode -> its directory (the mount point for etlfs modes)
declare -A MODE_PID=()   # mode -> pid of its running etlfs
declare -A SAMPLES=()    # "row|mode" -> space-separated seconds
declare -A ROW_LABEL=() ROW_KIND=() ROW_MIB=() ROW_TARGET=()
ROWS=()
LOG_DIR=
SAMPLES_FILE=

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Setup, mounting and cleanup

build() {
    if [[ ${BENCH_NO_BUILD:-0} == 1 ]]; then
        log "BENCH_NO_BUILD=1: using existing binaries"
    else
        log "building etlfs and examples/fsbench (release)"
        (cd "$ROOT" && cargo build --release --quiet --bin etlfs --example fsbench)
    fi
    [[ -x $ETLFS ]] || die "$ETLFS not found"
    [[ -x $FSBENCH ]] || die "$FSBENCH not found"
}

preflight() {
    [[ $(id -u) == 0 ]] || die "run as root (etlfs mount and drop_caches need it)"
    [[ -c /dev/fuse ]] || die "/dev/fuse is missing"
    local v
    for v in REPEAT WARMUP SEQ_MIB SMALL_N KC_N KC_CYCLES; do
        [[ ${!v} =~ ^[0-9]+$ ]] || die "BENCH_$v must be a non-negative integer, not '${!v}'"
    done
    ((REPEAT >= 1 && SEQ_MIB >= 1 && SMALL_N >= 1 && KC_N >= 1)) || die "sizes and BENCH_REPEAT must be >= 1"
    [[ -w /proc/sys/vm/drop_caches ]] || die "cannot write /proc/sys/vm/drop_caches"
    [[ $STAT_COLD == drop || $STAT_COLD == remount ]] || die "BENCH_STAT_COLD must be drop or remount"
}

# Whether a FUSE filesystem is mounted exactly at $1 (per /proc/self/mountinfo).
is_fuse_mounted() {
    awk -v p="$1" '$5 == p { for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i+1) ~ /^fuse/) f = 1; break } }
                   END { exit !f }' /proc/self/mountinfo
}

# Where etlfs keeps its default FILESYSTEM bucket for mode $1: beside the served directory.
bucket_dir() { printf '%s/.%s.etlfs-bucket' "$BENCH_DIR" "$1"; }

# Prepares an empty work directory per mode under BENCH_DIR.
prepare_dirs() {
    mkdir -p "$BENCH_DIR"
    BENCH_DIR=$(cd "$BENCH_DIR" && pwd -P)
    LOG_DIR=$BENCH_DIR/logs
    SAMPLES_FILE=$BENCH_DIR/samples.tsv
    local m d
    for m in native "${!MODE_ARGS[@]}"; do
        d=$BENCH_DIR/$m
        MODE_DIR[$m]=$d
        # Leftovers of an interrupted run: detach a stale mount, then start afresh.
        while is_fuse_mounted "$d"; do umount -l "$d"; done
        rm -rf "$d" "$(bucket_dir "$m")"
        mkdir -p "$d"
    done
    rm -rf "$LOG_DIR"
    mkdir -p "$LOG_DIR"
    printf 'row\tmode\trep\tseconds\n' >"$SAMPLES_FILE"
    log "work trees under $BENCH_DIR ($(findmnt -n -o FSTYPE,SOURCE -T "$BENCH_DIR" | tr -s " ")); logs in $LOG_DIR"
}

mount_mode() {
    local m=$1 d=${MODE_DIR[$1]}
    [[ $m == native ]] && return 0
    [[ -z ${MODE_PID[$m]:-} ]] || die "$m is already mounted"
    # shellcheck disable=SC2086 # MODE_ARGS and ETLFS_EXTRA hold zero or more words
    "$ETLFS" mount ${MODE_ARGS[$m]} $ETLFS_EXTRA "$d" </dev/null >>"$LOG_DIR/etlfs-$m.log" 2>&1 &
    MODE_PID[$m]=$!
    local i
    for ((i = 0; i < 200; i++)); do
        is_fuse_mounted "$d" && return 0
        if ! kill -0 "${MODE_PID[$m]}" 2>/dev/null; then
            unset 'MODE_PID[$m]'
            tail -n 20 "$LOG_DIR/etlfs-$m.log" >&2 || true
            die "etlfs ($m) exited before mounting $d"
        fi
        sleep 0.05
    done
    die "etlfs ($m) did not mount $d within 10 s"
}

# Stops etlfs for mode $1 with SIGTERM (it unmounts and exits 0); detaches the mount lazily and
# kills the process if that does not work.
unmount_mode() {
    local m=$1 d=${MODE_DIR[$1]:-} pid=${MODE_PID[$1]:-} i rc=0
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    # etlfs drains pending bucket uploads on SIGTERM (--drain-timeout, 30 s by default).
    for ((i = 0; i < 1200; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "etlfs ($m, pid $pid) still running 60 s after SIGTERM: detaching and killing it"
        umount -l "$d" 2>/dev/null || true
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || rc=$?
    [[ $rc == 0 ]] || log "etlfs ($m) exited with status $rc (see $LOG_DIR/etlfs-$m.log)"
    if is_fuse_mounted "$d"; then
        log "$d still mounted after etlfs exited: umount -l"
        umount -l "$d" 2>/dev/null || true
    fi
    unset 'MODE_PID[$m]'
}

remount_mode() {
    [[ $1 == native ]] && return 0
    unmount_mode "$1"
    mount_mode "$1"
}

cleanup() {
    local rc=$? m
    trap - EXIT INT TERM
    ((rc == 0)) || log "stopping (status $rc): unmounting and cleaning up"
    for m in "${!MODE_PID[@]}"; do unmount_mode "$m"; done
    if [[ ${BENCH_KEEP:-0} != 1 && -n $LOG_DIR ]]; then
        for m in "${!MODE_DIR[@]}"; do
            is_fuse_mounted "${MODE_DIR[$m]}" || rm -rf "${MODE_DIR[$m]}" "$(bucket_dir "$m")"
        done
    fi
    exit "$rc"
}

# ---------------------------------------------------------------------------------------------
# Measuring and reporting

# define_row ID LABEL KIND TARGET [MIB]
#   KIND: "tput" (reported in MiB/s, MIB = data size; higher is better) or "time" (reported in ms;
#   lower is better). TARGET: ">=0.95" or "<=3", compared with the etlfs/native ratio.
define_row() {
    ROWS+=("$1")
    ROW_LABEL[$1]=$2
    ROW_KIND[$1]=$3
    ROW_TARGET[$1]=$4
    ROW_MIB[$1]=${5:-0}
}

# measure ROW MODE REP -- fsbench args...   Runs fsbench once; keeps the sample when REP >= 1.
measure() {
    local row=$1 m=$2 rep=$3 t
    shift 4
    t=$("$FSBENCH" "$@")
    if ((rep >= 1)); then
        SAMPLES["$row|$m"]+="$t "
        printf '%s\t%s\t%s\t%s\n' "$row" "$m" "$rep" "$t" >>"$SAMPLES_FILE"
    fi
}

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

median() {
    tr ' ' '\n' <<<"$1" | awk 'NF' | sort -g |
        awk '{ a[NR] = $1 } END { if (NR == 0) exit 1; if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# value ROW SECONDS -> the displayed number (MiB/s or ms)
value() {
    if [[ ${ROW_KIND[$1]} == tput ]]; then
        awk -v s="$2" -v mib="${ROW_MIB[$1]}" 'BEGIN { printf "%.0f", mib / s }'
    else
        awk -v s="$2" 'BEGIN { printf "%.1f", s * 1000 }'
    fi
}

# ratio ROW NATIVE_SECONDS ETLFS_SECONDS -> etlfs/native (throughput or time, by the row kind)
ratio() {
    if [[ ${ROW_KIND[$1]} == tput ]]; then
        awk -v n="$2" -v e="$3" 'BEGIN { printf "%.2f", n / e }'
    else
        awk -v n="$2" -v e="$3" 'BEGIN { printf "%.2f", e / n }'
    fi
}

verdict() { # verdict RATIO TARGET -> PASS or MISS
    awk -v r="$1" -v t="$2" 'BEGIN { op = substr(t, 1, 2); v = substr(t, 3) + 0
        ok = (op == ">=") ? (r >= v) : (r <= v); print ok ? "PASS" : "MISS" }'
}

# Pads tab-separated lines (the first is the header) into an aligned Markdown table.
format_table() {
    awk -F'\t' '
        { n = NR; cols = (NF > cols) ? NF : cols
          for (i = 1; i <= NF; i++) { c[NR, i] = $i; l = length($i); if (l > w[i]) w[i] = l } }
        END {
            for (r = 1; r <= n; r++) {
                line = "|"
                for (i = 1; i <= cols; i++)
                    line = line sprintf((i == 1 ? " %-*s |" : " %*s |"), w[i], c[r, i])
                print line
                if (r == 1) {
                    line = "|"
                    for (i = 1; i <= cols; i++) {
                        d = ""; for (k = 0; k < w[i]; k++) d = d "-"
                        line = line (i == 1 ? " " d " |" : " " d ":|")
                    }
                    print line
                }
            }
        }'
}

# print_table TITLE BASELINE MODE...: one line per defined row; the verdict is for the first MODE.
print_table() {
    local title=$1 base=$2 row m med bmed r verdict line target
    shift 2
    printf '\n%s (median of %s runs; MiB/s or ms; ratio = etlfs/native)\n\n' "$title" "$REPEAT"
    {
        line="workload\t$base"
        for m in "$@"; do line+="\tetlfs-$m\tratio"; done
        printf '%b\ttarget\t%s\n' "$line" "$1"
        for row in "${ROWS[@]}"; do
            [[ -n ${SAMPLES["$row|$base"]:-} ]] || continue
            bmed=$(median "${SAMPLES["$row|$base"]}")
            line="${ROW_LABEL[$row]}\t$(value "$row" "$bmed")"
            verdict=
            for m in "$@"; do
                med=$(median "${SAMPLES["$row|$m"]}")
                r=$(ratio "$row" "$bmed" "$med")
                line+="\t$(value "$row" "$med")\t${r}x"
                [[ -n $verdict ]] || verdict=$(verdict "$r" "${ROW_TARGET[$row]}")
            done
            target=${ROW_TARGET[$row]}
            target=${target/>=/>= }
            target=${target/<=/<= }
            printf '%b\t%sx\t%s\n' "$line" "$target" "$verdict"
        done
    } | format_table
    printf '\n'
}

# ---------------------------------------------------------------------------------------------
# Section "local": native disk vs etlfs over the same filesystem

section_local() {
    local modes=(native passthrough daemon) order m d rep k
    local small="${SMALL_N} x $((SMALL_SIZE / 1024)) KiB"
    ROWS=()
    SAMPLES=()
    define_row seqwrite "seq write ${SEQ_MIB} MiB (MiB/s)" tput ">=0.90" "$SEQ_MIB"
    define_row seqread_warm "seq read ${SEQ_MIB} MiB, warm (MiB/s)" tput ">=0.95" "$SEQ_MIB"
    [[ $COLD == 1 ]] && define_row seqread_cold "seq read ${SEQ_MIB} MiB, cold (MiB/s)" tput ">=0.95" "$SEQ_MIB"
    define_row create "create+write+close $small (ms)" time "<=3"
    define_row stat_first "stat $SMALL_N files, first pass (ms)" time "<=4"
    define_row stat_repeat "stat $SMALL_N files, repeat (ms)" time "<=1.3"
    define_row kubecost "Kubecost ${KC_CYCLES} x ${KC_N} x $((KC_SIZE / 1024)) KiB (ms)" time "<=1.5"

    for m in "${modes[@]}"; do mount_mode "$m"; done
    log "etlfs pids: passthrough ${MODE_PID[passthrough]}, daemon ${MODE_PID[daemon]}"

    for ((rep = 1 - WARMUP; rep <= REPEAT; rep++)); do
        # Rotate the order each round, so no mode always runs first (after a cache drop, say).
        k=$(((rep % ${#modes[@]} + ${#modes[@]}) % ${#modes[@]}))
        order=("${modes[@]:k}" "${modes[@]:0:k}")
        if ((rep < 1)); then log "warm-up round"; else log "round $rep/$REPEAT: ${order[*]}"; fi
        for m in "${order[@]}"; do
            d=${MODE_DIR[$m]}
            rm -f "$d/seq.bin"
            sync
            measure seqwrite "$m" "$rep" -- seqwrite "$d/seq.bin" "$SEQ_MIB"
        done
        for m in "${order[@]}"; do
            d=${MODE_DIR[$m]}
            "$FSBENCH" seqread "$d/seq.bin" >/dev/null # prime the page cache
            measure seqread_warm "$m" "$rep" -- seqread "$d/seq.bin"
        done
        if [[ $COLD == 1 ]]; then
            drop_caches # the big drop (all earlier files) here, not in the first mode's turn
            for m in "${order[@]}"; do
                drop_caches
                measure seqread_cold "$m" "$rep" -- seqread "${MODE_DIR[$m]}/seq.bin"
            done
        fi
        for m in "${order[@]}"; do
            sync
            measure create "$m" "$rep" -- create "${MODE_DIR[$m]}/small.$rep" "$SMALL_N" "$SMALL_SIZE"
        done
        for m in "${order[@]}"; do
            sync
            if [[ $STAT_COLD == remount ]]; then remount_mode "$m"; else echo 2 >/proc/sys/vm/drop_caches; fi
            measure stat_first "$m" "$rep" -- stat "${MODE_DIR[$m]}/small.$rep" "$SMALL_N"
            measure stat_repeat "$m" "$rep" -- stat "${MODE_DIR[$m]}/small.$rep" "$SMALL_N"
        done
        for m in "${order[@]}"; do
            sync
            measure kubecost "$m" "$rep" -- kubecost "${MODE_DIR[$m]}/kc.$rep" "$KC_N" "$KC_SIZE" "$KC_CYCLES"
        done
    done

    for m in "${modes[@]}"; do unmount_mode "$m"; done
    print_table "native disk vs etlfs" native passthrough daemon
}

# ---------------------------------------------------------------------------------------------

main() {
    local s start=$SECONDS
    preflight
    build
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    prepare_dirs
    log "kernel $(uname -r), $(nproc) CPUs; repeat $REPEAT, warm-up $WARMUP; stat cold by $STAT_COLD"
    log "etlfs mount [--no-passthrough] $ETLFS_EXTRA DIR"
    local load
    read -r load _ </proc/loadavg
    if awk -v l="$load" -v n="$(nproc)" 'BEGIN { exit !(l > n / 4) }'; then
        log "warning: load average is $load: other work on this machine will make the numbers noisy"
    fi
    for s in $SECTIONS; do
        declare -F "section_$s" >/dev/null || die "unknown section: $s"
        "section_$s"
    done
    log "done in $((SECONDS - start)) s; raw samples in $SAMPLES_FILE"
}

main "$@"
