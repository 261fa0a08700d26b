# shellcheck shell=bash
# Section "scale" of scripts/bench.sh (sourced by it): mount start and memory with
# BENCH_SCALE_N objects in the bucket.
#
# Notes on the "scale" section:
# - Setup (not timed as a target): BENCH_SCALE_N files made with `fsbench fill`, uploaded by
#   `etlfs backup` (its time is shown), then a first `etlfs mount` over that directory, left
#   running until it has reconciled and nothing is pending, so that the restarts below find
#   etlfs' state as a node that ran before would.
# - Each round: (1) "the server alone": `fsbench s3check` lists the bucket as etlfs does
#   (ListObjectsV2, 1000 keys a page, no delimiter): the floor of a mount start. (2) New node:
#   `etlfs mount` over a new empty directory; MOUNTED and READY are the seconds from starting
#   the process until /proc/self/mountinfo shows the mount and until GET /readyz answers 200
#   (each polled every ~10-20 ms, taken right after the check that first succeeded). Then
#   `find DIR -type f -printf '%s\n'` stats every file through the mount (all bucket-only:
#   nothing is downloaded: this mount runs with --no-prefetch), and VmRSS/VmHWM of the etlfs
#   process are read from /proc/PID/status. (3) New node with prefetch: `etlfs mount` at its
#   defaults over another new empty directory, its /status polled every ~20 ms until
#   restore.files_left is 0 and restore.prefetch "done" (at most 30 min), its VmRSS sampled
#   every 0.5 s meanwhile: the peak of those samples and the seconds from starting the
#   process; the files are checked afterwards. (4) Restart: the same as (2) over the
#   directory holding all the files, with etlfs' state from the previous mount.


READY_SECS=
MOUNTED_SECS=

# scale_mount MODE DIR CONFIG [ARGS...]: starts `etlfs mount` over DIR on a free status port
# (SCALE_PORT) and sets MOUNTED_SECS and READY_SECS: the seconds from starting the process
# (MOUNT_T0) until DIR is mounted and until GET /readyz answers 200 (polled every ~10-20 ms).
SCALE_PORT=
scale_mount() {
    local m=$1 d=$2 cfg=$3 t0 now code deadline
    shift 3
    [[ -z ${MODE_PID[$m]:-} ]] || die "$m is already mounted"
    SCALE_PORT=$(free_port) || die "no free port on 127.0.0.1"
    MODE_DIR[$m]=$d
    MODE_LOG[$m]=$LOG_DIR/$m.log
    READY_SECS="" MOUNTED_SECS=""
    deadline=$((SECONDS + 900))
    defer_signals
    t0=$EPOCHREALTIME
    MOUNT_T0=$t0
    "$ETLFS" mount --config "$cfg" --listen "127.0.0.1:$SCALE_PORT" "$@" "$d" </dev/null >>"${MODE_LOG[$m]}" 2>&1 &
    MODE_PID[$m]=$!
    undefer_signals
    # Each time is taken right after the check that first succeeded (at most one check late).
    while ((SECONDS < deadline)); do
        if [[ -z $MOUNTED_SECS ]] && is_fuse_mounted "$d"; then
            now=$EPOCHREALTIME
            MOUNTED_SECS=$(awk -v a="$t0" -v b="$now" 'BEGIN { printf "%.6f", b - a }')
        fi
        if [[ -z $READY_SECS ]]; then
            code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$SCALE_PORT/readyz") || true
            now=$EPOCHREALTIME
            [[ $code != 200 ]] || READY_SECS=$(awk -v a="$t0" -v b="$now" 'BEGIN { printf "%.6f", b - a }')
        fi
        [[ -z $READY_SECS || -z $MOUNTED_SECS ]] || return 0
        if ! kill -0 "${MODE_PID[$m]}" 2>/dev/null; then
            wait "${MODE_PID[$m]}" 2>/dev/null || true
            unset 'MODE_PID[$m]'
            tail -n 20 "${MODE_LOG[$m]}" >&2 || true
            die "$m: etlfs exited before it was ready (log: ${MODE_LOG[$m]})"
        fi
        sleep 0.01
    done
    die "$m: etlfs not ready within 900 s (log: ${MODE_LOG[$m]})"
}

# vm_mib PID FIELD: VmRSS or VmHWM of PID in MiB.
vm_mib() {
    awk -v f="$2:" '$1 == f { printf "%.1f", $2 / 1024; found = 1 } END { exit !found }' "/proc/$1/status"
}

# scale_stat_all MODE REP PREFIX: stats every entry through the mount of MODE (find -printf
# %s) and records the time and the daemon's VmRSS and VmHWM as PREFIX_stat, _rss and _hwm.
scale_stat_all() {
    local m=$1 rep=$2 p=$3 t0 t1 files
    t0=$EPOCHREALTIME
    files=$(find "${MODE_DIR[$m]}" -type f -printf '%s\n' | wc -l)
    t1=$EPOCHREALTIME
    ((files == SCALE_N)) || die "$m: find saw $files files through the mount, not $SCALE_N"
    record "${p}_stat" etlfs "$rep" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }')"
    record "${p}_rss" etlfs "$rep" "$(vm_mib "${MODE_PID[$m]}" VmRSS)"
    record "${p}_hwm" etlfs "$rep" "$(vm_mib "${MODE_PID[$m]}" VmHWM)"
}

# The number after "NAME": in etlfs' /status JSON (0 when absent).
status_number() {
    curl -s --max-time 5 "http://127.0.0.1:$SCALE_PORT/status" |
        grep -o "\"$1\": *[0-9]*" | head -n 1 | grep -o '[0-9]*$' || echo 0
}

# scale_prefetch REP CONFIG: a new node at etlfs' defaults (prefetch on) over a new empty
# directory, until every file is local; records the seconds and the peak of the daemon's
# VmRSS sampled meanwhile, then checks the files (outside the timing).
scale_prefetch() {
    local rep=$1 cfg=$2 d=$S3_DIR/scale-prefetch
    rm -rf "$d"
    mkdir -p "$d"
    sync
    scale_mount scale-prefetch "$d" "$cfg" --drain-timeout 5s
    wait_restored scale-prefetch "$SCALE_PORT" 1800
    record prefetch_rss etlfs "$rep" "$PEAK_RSS_MIB"
    record prefetch_secs etlfs "$rep" "$RESTORED_SECS"
    unmount_mode scale-prefetch
    "$FSBENCH" check "$d" "$SCALE_N" "$SCALE_SIZE" "$SCALE_DIRS" >/dev/null || die "scale: the prefetch left $d incomplete"
}

section_scale() {
    local n=$SCALE_N size=$SCALE_SIZE ndirs=$SCALE_DIRS src d cfg rep t b=bench-scale what where
    local logf=$LOG_DIR/scale.log
    s3_up
    ROWS=()
    SAMPLES=()
    ROW_MAX=()
    MODE_LABEL=([etlfs]="etlfs")
    if ((ndirs > 0)); then where="in $ndirs directories"; else where="in one directory"; fi
    what="$n files of $size B $where"
    define_row backup "etlfs backup of the $n files into an empty bucket, once (s)" secs "-"
    define_row list "the server alone: list the $n objects (ListObjectsV2, 1000 a page) (s)" secs "-"
    define_row cold_mounted "new node (empty directory): start -> mounted (s)" secs "<=5"
    define_row cold_ready "new node (empty directory): start -> /readyz 200 (s)" secs "<=5"
    define_row cold_stat "new node: stat all $n files through the mount (s)" secs "-"
    define_row cold_rss "new node: RSS after that (MiB)" mib "<=64"
    define_row cold_hwm "new node: peak RSS, VmHWM (MiB)" mib "<=64"
    define_row prefetch_rss "new node with prefetch: peak RSS until all local, sampled every 0.5 s (MiB)" mib "<=64"
    define_row prefetch_secs "new node with prefetch: start -> all $n files local (/status) (s)" secs "-"
    define_row warm_mounted "restart over the $n local files: start -> mounted (s)" secs "<=5"
    define_row warm_ready "restart over the $n local files: start -> /readyz 200 (s)" secs "<=5"
    define_row warm_stat "restart: stat all $n files through the mount (s)" secs "-"
    define_row warm_rss "restart: RSS after that (MiB)" mib "<=64"
    define_row warm_hwm "restart: peak RSS, VmHWM (MiB)" mib "<=64"

    src=$S3_DIR/scale-src
    log "scale: creating $what in $src"
    "$FSBENCH" fill "$src" "$n" "$size" "$ndirs" >/dev/null
    make_bucket "$b"
    cfg=$(etlfs_config "$b")
    sync
    log "scale: etlfs backup of the $n files (log: $logf)"
    t=$(timed "$logf" "$ETLFS" backup --config "$cfg" "$src") || die "scale: etlfs backup failed (log: $logf)"
    record backup etlfs 1 "$t"
    # The first mount over the directory records etlfs' state (it is not measured): wait until
    # it has reconciled and nothing is pending, then stop it. Having no state, it uploads every
    # file again; with history on, each upload first keeps the bucket's (identical) object as a
    # version: HEAD, LIST, COPY, then the PUT, and s3s-fs walks the whole bucket for a LIST
    # after any write (20,000 files: ~5 a second on a busy 2-CPU VM). History off: one PUT each.
    log "scale: first mount over the $n files (not measured; records etlfs' state)"
    scale_mount scale-warm "$src" "$cfg" --drain-timeout 600s --history-retention 0
    # (/status "pending" does not count what the first reconcile queues: wait for its uploads.)
    local queued settled=0 deadline=$((SECONDS + 900))
    while ((SECONDS < deadline)); do
        queued=$(grep -o 'reconciled the directory.*to_upload=[0-9]*' "${MODE_LOG[scale-warm]}" |
            grep -o '[0-9]*$' | head -n 1) || true
        if [[ -n $queued ]] && (($(status_number "done") >= queued && $(status_number changes) == 0)); then
            settled=1
            break
        fi
        sleep 0.1
    done
    ((settled)) || log "scale: warning: the first mount had not uploaded what it queued after 900 s"
    unmount_mode scale-warm

    for ((rep = 1 - WARMUP; rep <= REPEAT; rep++)); do
        if ((rep < 1)); then log "scale: warm-up round"; else log "scale: round $rep/$REPEAT"; fi
        t=$("$FSBENCH" s3check "$S3_EP" "$b" "" "$n" "$size")
        record list etlfs "$rep" "$t"
        # A new node: an empty directory (no state), every file only in the bucket.
        d=$S3_DIR/scale-cold
        rm -rf "$d"
        mkdir -p "$d"
        sync
        # (--no-prefetch: these rows are the start and the metadata, the next ones the copy.)
        scale_mount scale-cold "$d" "$cfg" --drain-timeout 5s --no-prefetch
        record cold_mounted etlfs "$rep" "$MOUNTED_SECS"
        record cold_ready etlfs "$rep" "$READY_SECS"
        scale_stat_all scale-cold "$rep" cold
        unmount_mode scale-cold
        scale_prefetch "$rep" "$cfg"
        # A restart: the same files local and in the bucket, etlfs' state from the last run.
        sync
        scale_mount scale-warm "$src" "$cfg" --drain-timeout 5s
        record warm_mounted etlfs "$rep" "$MOUNTED_SECS"
        record warm_ready etlfs "$rep" "$READY_SECS"
        scale_stat_all scale-warm "$rep" warm
        unmount_mode scale-warm
    done

    drop_bucket "$b"
    rm -rf "$S3_DIR"/scale-*
    print_abs_table "Scale: $what, $S3_LABEL on 127.0.0.1" etlfs
}
