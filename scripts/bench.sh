#!/usr/bin/env bash
# Benchmark: etlfs against the native disk and against `rclone mount`, side by side, in one run.
#
#   sudo scripts/bench.sh            # needs root and /dev/fuse; about 3 minutes at the defaults
#
# Sections (BENCH_SECTIONS, default "local bucket restore"), each printing one table:
#   local    native disk vs etlfs in passthrough and daemon mode (below)
#   bucket   time from the last close of a Kubecost write pass (BENCH_KC_N x 64 KiB) to all
#            its files being in an S3 bucket: etlfs (--upload-delay BENCH_UPLOAD_DELAY) vs
#            `rclone mount --vfs-cache-mode full --vfs-write-back BENCH_UPLOAD_DELAY`
#   restore  cold restore of BENCH_KC_N x 64 KiB files from the bucket through the mount, after
#            the local disk is lost: etlfs over an empty directory (state dir wiped too) vs a
#            fresh `rclone mount --vfs-cache-mode full` with an empty cache
# "bucket" and "restore" run against moto (S3) on 127.0.0.1, started by scripts/servers.sh
# (installed on first use) and stopped on exit; rclone is the Debian package (installed if
# missing).
#
# Every workload is run by the compiled driver examples/fsbench.rs (it prints the seconds of the
# timed part). The "local" section uses three directories on the same filesystem:
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
#   BENCH_SECTIONS  sections to run, space separated             (default "local bucket restore")
#   BENCH_UPLOAD_DELAY  bucket: upload delay of both systems, whole seconds (default 1)
#   BENCH_S3_TIMEOUT    bucket, restore: seconds to wait for the bucket to have all files
#                   before giving up                             (default 120)
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
# - The binaries are copied to BENCH_DIR/bin before the first mount, so a rebuild in the same
#   target directory during the run (another checkout user) cannot change what is measured.
#
# Notes on the "bucket" and "restore" sections:
# - The S3 server is moto itself (ETLFS_TEST_S3_SERVER), not the outage front the tests use:
#   the front is one more Python hop that neither system needs. moto is in-memory and single
#   Python process, so it is slower than real S3 per request: the absolute seconds say as much
#   about moto as about the client; the ratio is the comparison. Each system writes to and
#   restores from its own bucket, filled by itself through its own mount.
# - Both systems keep their defaults except the upload delay (and --drain-timeout 5s for
#   etlfs, so that Ctrl-C stops quickly): etlfs uploads 8 files at once
#   (--upload-concurrency), rclone 4 (--transfers).
# - "bucket": one mount per system for the whole section; each round writes a new
#   subdirectory kc.ROUND with `fsbench kcupload`, which lists the bucket (ListObjectsV2 under
#   that prefix) every 100 ms from the last close until all files are there with their full
#   size. The time is measured to the end of the listing that showed them all, so it is at
#   most ~0.1 s + one listing late. Goal: at most BENCH_UPLOAD_DELAY + 2 s, and below rclone.
# - "restore": both buckets are filled first (written through each system's mount, waited
#   for, unmounted). Then each round wipes the local directory (etlfs: the served directory
#   with its .etlfs state; rclone: the mount point and its --cache-dir), starts the mount
#   and reads all files with `fsbench readall` (readdir, then open + flock(LOCK_SH) + read
#   each file whole, as Kubecost's reader does, checking every byte). Two rows: from starting
#   the mount process to the last byte read (etlfs lists the bucket before it mounts, rclone
#   at the first readdir: this row counts both), and the read part alone, once mounted.
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
SECTIONS=${BENCH_SECTIONS:-local bucket restore}
UPLOAD_DELAY=${BENCH_UPLOAD_DELAY:-1}
S3_TIMEOUT=${BENCH_S3_TIMEOUT:-120}
# Servers of another run (scripts/test.sh in this shell, say) are not ours to reuse or stop.
unset ETLFS_TEST_SERVERS_DIR
# shellcheck source=scripts/servers.sh
source "$ROOT/scripts/servers.sh"

# etlfs modes: name -> extra `etlfs mount` arguments. "native" is the plain-directory baseline.
declare -A MODE_ARGS=([passthrough]="" [daemon]="--no-passthrough")
declare -A MODE_DIR=()   # mode -> its directory (the mount point for etlfs modes)
declare -A MODE_PID=()   # mode -> pid of its running etlfs (or rclone)
declare -A MODE_LOG=()   # mode -> the log file of its etlfs (or rclone)
declare -A MODE_LABEL=() # mode -> its column header (default etlfs-MODE)
declare -A SAMPLES=()    # "row|mode" -> space-separated seconds
declare -A ROW_LABEL=() ROW_KIND=() ROW_MIB=() ROW_TARGET=() ROW_MAX=()
ROWS=()
LOG_DIR=
SAMPLES_FILE=
S3_DIR=     # BENCH_DIR/s3: work trees, configs and rclone caches of "bucket" and "restore"
S3_EP=      # http://127.0.0.1:PORT of moto, once started

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
    for v in REPEAT WARMUP SEQ_MIB SMALL_N KC_N KC_CYCLES UPLOAD_DELAY S3_TIMEOUT; do
        [[ ${!v} =~ ^[0-9]+$ ]] || die "BENCH_$v must be a non-negative integer, not '${!v}'"
    done
    ((REPEAT >= 1 && SEQ_MIB >= 1 && SMALL_N >= 1 && KC_N >= 1)) || die "sizes and BENCH_REPEAT must be >= 1"
    [[ -w /proc/sys/vm/drop_caches ]] || die "cannot write /proc/sys/vm/drop_caches"
    [[ $STAT_COLD == drop || $STAT_COLD == remount ]] || die "BENCH_STAT_COLD must be drop or remount"
    local s
    for s in $SECTIONS; do
        declare -F "section_$s" >/dev/null || die "unknown section: $s"
    done
    if [[ " $SECTIONS " =~ \ (bucket|restore)\  ]]; then
        command -v curl >/dev/null || servers_apt_install_or_die curl
        command -v rclone >/dev/null || servers_apt_install_or_die rclone
        command -v fusermount >/dev/null || command -v fusermount3 >/dev/null ||
            servers_apt_install_or_die fuse3 # rclone mounts with fusermount
    fi
}

servers_apt_install_or_die() {
    log "$1 is missing: installing it"
    _servers_apt_install "$1" || die "could not install $1"
}

# Whether a FUSE filesystem is mounted exactly at $1 (per /proc/self/mountinfo).
is_fuse_mounted() {
    awk -v p="$1" '$5 == p { for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i+1) ~ /^fuse/) f = 1; break } }
                   END { exit !f }' /proc/self/mountinfo
}

# The FUSE mount points at or below directory $1, one per line.
fuse_mounts_under() {
    awk -v p="$1" '$5 == p || index($5, p "/") == 1 {
                       for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i+1) ~ /^fuse/) print $5; break } }' \
        /proc/self/mountinfo
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
    S3_DIR=$BENCH_DIR/s3
    local mp
    while read -r mp; do umount -l "$mp" || true; done < <(fuse_mounts_under "$S3_DIR")
    rm -rf "$S3_DIR"
    rm -rf "$LOG_DIR"
    mkdir -p "$LOG_DIR"
    printf 'row\tmode\trep\tseconds\n' >"$SAMPLES_FILE"
    # A private copy of the binaries: a rebuild in the shared target directory during the run
    # must not change what is measured.
    mkdir -p "$BENCH_DIR/bin"
    cp "$ETLFS" "$BENCH_DIR/bin/etlfs.new" && mv "$BENCH_DIR/bin/etlfs.new" "$BENCH_DIR/bin/etlfs"
    cp "$FSBENCH" "$BENCH_DIR/bin/fsbench.new" && mv "$BENCH_DIR/bin/fsbench.new" "$BENCH_DIR/bin/fsbench"
    ETLFS=$BENCH_DIR/bin/etlfs
    FSBENCH=$BENCH_DIR/bin/fsbench
    log "work trees under $BENCH_DIR ($(findmnt -n -o FSTYPE,SOURCE -T "$BENCH_DIR" | tr -s " ")); logs in $LOG_DIR"
}

mount_mode() {
    local m=$1
    [[ $m == native ]] && return 0
    # shellcheck disable=SC2086 # MODE_ARGS and ETLFS_EXTRA hold zero or more words
    start_mount "$m" "${MODE_DIR[$m]}" "$LOG_DIR/etlfs-$m.log" \
        "$ETLFS" mount ${MODE_ARGS[$m]} $ETLFS_EXTRA "${MODE_DIR[$m]}"
}

# start_mount MODE DIR LOG COMMAND...: runs COMMAND (a FUSE daemon in the foreground: etlfs, or
# rclone mount) in the background, its output appended to LOG, and waits until DIR is mounted.
start_mount() {
    local m=$1 d=$2 logf=$3 i
    shift 3
    [[ -z ${MODE_PID[$m]:-} ]] || die "$m is already mounted"
    MODE_DIR[$m]=$d
    MODE_LOG[$m]=$logf
    defer_signals # a Ctrl-C between the start and the next line would leave the daemon unknown
    "$@" </dev/null >>"$logf" 2>&1 &
    MODE_PID[$m]=$!
    undefer_signals
    for ((i = 0; i < 3000; i++)); do
        is_fuse_mounted "$d" && return 0
        if ! kill -0 "${MODE_PID[$m]}" 2>/dev/null; then
            wait "${MODE_PID[$m]}" 2>/dev/null || true
            unset 'MODE_PID[$m]'
            tail -n 20 "$logf" >&2 || true
            die "$m: $1 exited before mounting $d (log: $logf)"
        fi
        sleep 0.01
    done
    die "$m: $1 did not mount $d within 30 s (log: $logf)"
}

# Stops the daemon of mode $1 with SIGTERM (etlfs and rclone unmount and exit); detaches the
# mount lazily and kills the process if that does not work.
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
        log "$m (pid $pid) still running 60 s after SIGTERM: detaching and killing it"
        umount -l "$d" 2>/dev/null || true
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || rc=$?
    # rclone answers SIGTERM by unmounting and exiting with 143: that is its clean stop.
    [[ $rc == 0 || ($rc == 143 && $m == rclone-*) ]] ||
        log "$m exited with status $rc (see ${MODE_LOG[$m]:-$LOG_DIR})"
    if is_fuse_mounted "$d"; then
        log "$d still mounted after $m exited: umount -l"
        umount -l "$d" 2>/dev/null || true
    fi
    unset 'MODE_PID[$m]'
}

remount_mode() {
    [[ $1 == native ]] && return 0
    unmount_mode "$1"
    mount_mode "$1"
}

# Between defer_signals and undefer_signals, SIGINT and SIGTERM only take effect at the end,
# so that nothing started in between is left out of the cleanup. (Children still get them.)
PENDING_EXIT=
defer_signals() {
    trap 'PENDING_EXIT=130' INT
    trap 'PENDING_EXIT=143' TERM
}
undefer_signals() {
    trap 'exit 130' INT
    trap 'exit 143' TERM
    [[ -z $PENDING_EXIT ]] || exit "$PENDING_EXIT"
}

cleanup() {
    local rc=$? m
    trap - EXIT INT TERM
    # A second Ctrl-C must not cut the cleanup short (the mounts and servers would stay).
    trap '' INT
    ((rc == 0)) || log "stopping (status $rc): unmounting and cleaning up"
    for m in "${!MODE_PID[@]}"; do unmount_mode "$m"; done
    # After the mounts: a draining etlfs still needs its bucket.
    if [[ -n ${ETLFS_TEST_SERVERS_DIR:-} ]]; then
        log "stopping the S3 server"
        servers_stop 2>/dev/null # (silences a harmless race message of servers.sh)
    fi
    if [[ ${BENCH_KEEP:-0} != 1 && -n $LOG_DIR ]]; then
        for m in "${!MODE_DIR[@]}"; do
            [[ ${MODE_DIR[$m]} == "$S3_DIR"/* ]] && continue
            is_fuse_mounted "${MODE_DIR[$m]}" || rm -rf "${MODE_DIR[$m]}" "$(bucket_dir "$m")"
        done
        # Never rm -rf through a mount that is still there (it would delete in its bucket).
        [[ -z $S3_DIR || -n $(fuse_mounts_under "$S3_DIR") ]] || rm -rf "$S3_DIR"
        rm -rf "${BENCH_DIR:?}/bin"
    fi
    exit "$rc"
}

# ---------------------------------------------------------------------------------------------
# Measuring and reporting

# define_row ID LABEL KIND TARGET [MIB]
#   KIND: "tput" (reported in MiB/s, MIB = data size; higher is better), "time" (reported in ms;
#   lower is better) or "secs" (reported in s; lower is better). TARGET: ">=0.95", "<=3" or
#   "<1", compared with the ratio etlfs/baseline. ROW_MAX[ID]=S adds a limit in seconds on the
#   etlfs median itself.
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
    record "$row" "$m" "$rep" "$t"
}

# record ROW MODE REP SECONDS: keeps a sample when REP >= 1.
record() {
    if (($3 >= 1)); then
        SAMPLES["$1|$2"]+="$4 "
        printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$SAMPLES_FILE"
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

# value ROW SECONDS -> the displayed number (MiB/s, ms or s)
value() {
    case ${ROW_KIND[$1]} in
    tput) awk -v s="$2" -v mib="${ROW_MIB[$1]}" 'BEGIN { printf "%.0f", mib / s }' ;;
    secs) awk -v s="$2" 'BEGIN { printf "%.2f", s }' ;;
    *) awk -v s="$2" 'BEGIN { printf "%.1f", s * 1000 }' ;;
    esac
}

# ratio ROW NATIVE_SECONDS ETLFS_SECONDS -> etlfs/native (throughput or time, by the row kind)
ratio() {
    if [[ ${ROW_KIND[$1]} == tput ]]; then
        awk -v n="$2" -v e="$3" 'BEGIN { printf "%.2f", n / e }'
    else
        awk -v n="$2" -v e="$3" 'BEGIN { printf "%.2f", e / n }'
    fi
}

verdict() { # verdict RATIO TARGET -> PASS or MISS   (TARGET: >=X, <=X, >X or <X)
    awk -v r="$1" -v t="$2" 'BEGIN { match(t, /^[<>]=?/); op = substr(t, 1, RLENGTH)
        v = substr(t, RLENGTH + 1) + 0
        ok = (op == ">=") ? (r >= v) : (op == "<=") ? (r <= v) : (op == ">") ? (r > v) : (r < v)
        print ok ? "PASS" : "MISS" }'
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
    local title=$1 base=$2 row m med bmed r verdict line target units
    shift 2
    if [[ $base == native ]]; then units="MiB/s or ms; ratio = etlfs/native"; else units="s; ratio = etlfs/$base, lower is better"; fi
    printf '\n%s (median of %s runs; %s)\n\n' "$title" "$REPEAT" "$units"
    {
        line="workload\t${MODE_LABEL[$base]:-$base}"
        for m in "$@"; do line+="\t${MODE_LABEL[$m]:-etlfs-$m}\tratio"; done
        printf '%b\ttarget\t%s\n' "$line" "${MODE_LABEL[$1]:-$1}"
        for row in "${ROWS[@]}"; do
            [[ -n ${SAMPLES["$row|$base"]:-} ]] || continue
            bmed=$(median "${SAMPLES["$row|$base"]}")
            line="${ROW_LABEL[$row]}\t$(value "$row" "$bmed")"
            verdict=
            for m in "$@"; do
                med=$(median "${SAMPLES["$row|$m"]}")
                r=$(ratio "$row" "$bmed" "$med")
                line+="\t$(value "$row" "$med")\t${r}x"
                if [[ -z $verdict ]]; then
                    verdict=$(verdict "$r" "${ROW_TARGET[$row]}")
                    if [[ -n ${ROW_MAX[$row]:-} && $verdict == PASS ]]; then
                        verdict=$(verdict "$med" "<=${ROW_MAX[$row]}")
                    fi
                fi
            done
            target=$(sed -E 's/^([<>]=?)/\1 /' <<<"${ROW_TARGET[$row]}")x
            [[ -z ${ROW_MAX[$row]:-} ]] || target="<= ${ROW_MAX[$row]} s, $target"
            printf '%b\t%s\t%s\n' "$line" "$target" "$verdict"
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
# Sections "bucket" and "restore": etlfs vs rclone mount over the same S3 server (moto)

# Starts the test servers once per run (scripts/servers.sh; cleanup stops them).
s3_up() {
    [[ -z $S3_EP ]] || return 0
    log "starting the S3 test server (scripts/servers.sh; installs it on first use)"
    servers_install
    # servers_start records each server's PID a moment after starting it: a Ctrl-C in between
    # would leave that server running, so it takes effect after servers_start returns.
    local rc=0
    defer_signals
    servers_start || rc=$?
    undefer_signals
    ((rc == 0)) || die "could not start the S3 test server"
    S3_EP=$ETLFS_TEST_S3_SERVER
    [[ $S3_EP =~ ^http://127\.0\.0\.1:[0-9]+$ ]] || die "unexpected S3 endpoint '$S3_EP'"
    mkdir -p "$S3_DIR"
    : >"$S3_DIR/rclone.conf" # empty: rclone's remote "s3" comes from the environment only
    log "S3 (moto) at $S3_EP"
}

make_bucket() {
    curl -fsS -o /dev/null -X PUT "$S3_EP/$1" || die "could not create bucket $1 at $S3_EP"
}

# etlfs_config BUCKET -> the path of an object-store.yaml for BUCKET on the test server
etlfs_config() {
    local f=$S3_DIR/$1.yaml
    cat >"$f" <<EOF
type: S3
config:
  bucket: $1
  endpoint: 127.0.0.1:${S3_EP##*:}
  insecure: true
  access_key: test
  secret_key: test
  region: us-east-1
  bucket_lookup_type: path
EOF
    printf '%s' "$f"
}

# mount_etlfs_s3 MODE DIR BUCKET [ARGS...]: etlfs over DIR, mirrored to BUCKET.
mount_etlfs_s3() {
    local m=$1 d=$2 cfg
    cfg=$(etlfs_config "$3")
    shift 3
    start_mount "$m" "$d" "$LOG_DIR/$m.log" \
        "$ETLFS" mount --config "$cfg" --drain-timeout 5s "$@" "$d"
}

# mount_rclone MODE DIR BUCKET CACHE_DIR: rclone mount --vfs-cache-mode full of BUCKET at DIR.
# rclone 1.60's S3 backend fails when AWS_CA_BUNDLE is set (test-servers.md): unset it.
mount_rclone() {
    start_mount "$1" "$2" "$LOG_DIR/$1.log" \
        env -u AWS_CA_BUNDLE RCLONE_CONFIG="$S3_DIR/rclone.conf" \
        RCLONE_CONFIG_S3_TYPE=s3 RCLONE_CONFIG_S3_PROVIDER=Other \
        RCLONE_CONFIG_S3_ENDPOINT="$S3_EP" RCLONE_CONFIG_S3_REGION=us-east-1 \
        RCLONE_CONFIG_S3_ACCESS_KEY_ID=test RCLONE_CONFIG_S3_SECRET_ACCESS_KEY=test \
        RCLONE_CONFIG_S3_FORCE_PATH_STYLE=true \
        rclone mount "s3:$3" "$2" --vfs-cache-mode full --vfs-write-back "${UPLOAD_DELAY}s" \
        --cache-dir "$4"
}

section_bucket() {
    local modes=(rclone etlfs) order m rep k
    local de=$S3_DIR/bucket-etlfs dr=$S3_DIR/bucket-rclone
    s3_up
    ROWS=()
    SAMPLES=()
    ROW_MAX=()
    MODE_LABEL=([rclone]="rclone mount" [etlfs]="etlfs")
    define_row upload "last close -> ${KC_N} x $((KC_SIZE / 1024)) KiB in bucket (s)" secs "<1"
    ROW_MAX[upload]=$((UPLOAD_DELAY + 2))
    make_bucket bench-upload-etlfs
    make_bucket bench-upload-rclone
    mkdir -p "$de" "$dr" "$dr.cache"
    mount_etlfs_s3 etlfs-bucket "$de" bench-upload-etlfs --upload-delay "${UPLOAD_DELAY}s"
    mount_rclone rclone-bucket "$dr" bench-upload-rclone "$dr.cache"
    log "bucket: etlfs pid ${MODE_PID[etlfs-bucket]}, rclone pid ${MODE_PID[rclone-bucket]}; upload delay ${UPLOAD_DELAY}s"

    for ((rep = 1 - WARMUP; rep <= REPEAT; rep++)); do
        k=$(((rep % 2 + 2) % 2))
        order=("${modes[@]:k}" "${modes[@]:0:k}")
        if ((rep < 1)); then log "bucket: warm-up round"; else log "bucket: round $rep/$REPEAT: ${order[*]}"; fi
        for m in "${order[@]}"; do
            sync
            measure upload "$m" "$rep" -- kcupload "$S3_DIR/bucket-$m/kc.$rep" "$KC_N" "$KC_SIZE" \
                "$S3_EP" "bench-upload-$m" "kc.$rep" "$S3_TIMEOUT"
        done
    done

    unmount_mode etlfs-bucket
    unmount_mode rclone-bucket
    print_table "Bucket upload: etlfs vs rclone mount --vfs-cache-mode full, moto S3 on 127.0.0.1" \
        rclone etlfs
}

section_restore() {
    local modes=(rclone etlfs) order m rep k d t0 t1 t
    s3_up
    ROWS=()
    SAMPLES=()
    ROW_MAX=()
    MODE_LABEL=([rclone]="rclone mount" [etlfs]="etlfs")
    define_row restore_total "restore ${KC_N} x $((KC_SIZE / 1024)) KiB: mount start -> all read (s)" secs "<1"
    define_row restore_read "restore ${KC_N} x $((KC_SIZE / 1024)) KiB: read all, mounted (s)" secs "<1"

    # Fill each system's bucket through its own mount, wait until everything is there, unmount.
    log "restore: filling the buckets"
    make_bucket bench-restore-etlfs
    make_bucket bench-restore-rclone
    d=$S3_DIR/restore-etlfs
    mkdir -p "$d"
    mount_etlfs_s3 etlfs-restore "$d" bench-restore-etlfs --upload-delay "${UPLOAD_DELAY}s"
    "$FSBENCH" kcupload "$d" "$KC_N" "$KC_SIZE" "$S3_EP" bench-restore-etlfs "" "$S3_TIMEOUT" >/dev/null
    unmount_mode etlfs-restore
    d=$S3_DIR/restore-rclone
    mkdir -p "$d" "$d.cache"
    mount_rclone rclone-restore "$d" bench-restore-rclone "$d.cache"
    "$FSBENCH" kcupload "$d" "$KC_N" "$KC_SIZE" "$S3_EP" bench-restore-rclone "" "$S3_TIMEOUT" >/dev/null
    unmount_mode rclone-restore

    for ((rep = 1 - WARMUP; rep <= REPEAT; rep++)); do
        k=$(((rep % 2 + 2) % 2))
        order=("${modes[@]:k}" "${modes[@]:0:k}")
        if ((rep < 1)); then log "restore: warm-up round"; else log "restore: round $rep/$REPEAT: ${order[*]}"; fi
        for m in "${order[@]}"; do
            # The local disk is lost: an empty directory (and for rclone an empty cache).
            d=$S3_DIR/restore-$m
            rm -rf "$d" "$d.cache"
            mkdir -p "$d"
            [[ $m == etlfs ]] || mkdir -p "$d.cache"
            sync
            t0=$EPOCHREALTIME
            if [[ $m == etlfs ]]; then
                mount_etlfs_s3 etlfs-restore "$d" bench-restore-etlfs
            else
                mount_rclone rclone-restore "$d" bench-restore-rclone "$d.cache"
            fi
            t=$("$FSBENCH" readall "$d" "$KC_N" "$KC_SIZE")
            t1=$EPOCHREALTIME
            unmount_mode "$m-restore"
            record restore_total "$m" "$rep" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }')"
            record restore_read "$m" "$rep" "$t"
        done
    done

    print_table "Cold restore through the mount: etlfs vs rclone mount --vfs-cache-mode full, moto S3 on 127.0.0.1" \
        rclone etlfs
}

# ---------------------------------------------------------------------------------------------

main() {
    local s start=$SECONDS
    preflight
    build
    trap cleanup EXIT
    undefer_signals # installs the INT and TERM traps
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
