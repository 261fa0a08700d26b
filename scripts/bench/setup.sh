# shellcheck shell=bash
# Setup, mounting and cleanup of scripts/bench.sh (sourced by it): build and preflight, the work
# directory of each mode, starting and stopping etlfs and rclone mounts, and the cleanup that
# runs on every exit.

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
    for v in REPEAT WARMUP SEQ_MIB SMALL_N KC_N KC_CYCLES UPLOAD_DELAY S3_TIMEOUT ONESHOT_N SCALE_N \
        SCALE_SIZE SCALE_DIRS RESTORE_N RESTORE_SIZE TTFB_SIZE LATENCY_MS; do
        [[ ${!v} =~ ^[0-9]+$ ]] || die "BENCH_$v must be a non-negative integer, not '${!v}'"
    done
    ((REPEAT >= 1 && SEQ_MIB >= 1 && SMALL_N >= 1 && KC_N >= 1 && ONESHOT_N >= 1 && SCALE_N >= 1 &&
        RESTORE_N >= 1 && TTFB_SIZE >= 1)) || die "sizes and BENCH_REPEAT must be >= 1"
    ((SCALE_DIRS <= 100)) || die "BENCH_SCALE_DIRS must be at most 100"
    [[ $S3_KIND == s3s-fs || $S3_KIND == s3s-fs-stock || $S3_KIND == moto ]] ||
        die "BENCH_S3 must be s3s-fs, s3s-fs-stock or moto, not '$S3_KIND'"
    [[ -w /proc/sys/vm/drop_caches ]] || die "cannot write /proc/sys/vm/drop_caches"
    [[ $STAT_COLD == drop || $STAT_COLD == remount ]] || die "BENCH_STAT_COLD must be drop or remount"
    local s
    for s in $SECTIONS; do
        declare -F "section_$s" >/dev/null || die "unknown section: $s"
    done
    if [[ " $SECTIONS " =~ \ (bucket|restore|oneshot|scale)\  || ( " $SECTIONS " == *" local "* && ${BENCH_LOCAL_RCLONE:-1} == 1 ) ]]; then
        command -v curl >/dev/null || servers_apt_install_or_die curl
        command -v rclone >/dev/null || servers_apt_install_or_die rclone
        command -v fusermount >/dev/null || command -v fusermount3 >/dev/null ||
            servers_apt_install_or_die fuse3 # rclone mounts with fusermount
        if [[ $S3_KIND == s3s-fs ]]; then
            command -v patch >/dev/null || servers_apt_install_or_die patch
        fi
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
    if [[ $m == rclone ]]; then
        # The local section's rclone: uploads held back like etlfs' (--upload-delay 1h).
        mount_rclone rclone "${MODE_DIR[rclone]}" bench-local-rclone "$S3_DIR/local-rclone.cache" 3600
        return 0
    fi
    local extra=$ETLFS_EXTRA
    [[ $m != mirroring ]] || extra="--drain-timeout 0s"
    # shellcheck disable=SC2086 # MODE_ARGS and extra hold zero or more words
    start_mount "$m" "${MODE_DIR[$m]}" "$LOG_DIR/etlfs-$m.log" \
        "$ETLFS" mount --listen 127.0.0.1:0 ${MODE_ARGS[$m]} $extra "${MODE_DIR[$m]}"
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
    [[ $rc == 0 || ($rc == 143 && $m == rclone*) ]] ||
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
    # After the mounts: a draining etlfs still needs its bucket (and the way to it).
    stop_delayproxy
    stop_s3s
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

