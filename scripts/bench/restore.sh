# shellcheck shell=bash
# Section "restore" of scripts/bench.sh (sourced by it): a new node's restore at a real
# bucket's latency, through the delay proxy.
#
# Notes on the "restore" section:
# - A real bucket costs 10-50 ms per request, which a server on 127.0.0.1 does not: without
#   it a restore measures the client's CPU, not how well it hides the round trips. So every
#   measured request goes through `fsbench delayproxy` (started after the S3 server, stopped
#   by the cleanup), which holds the first chunk of each request and each new connection for
#   BENCH_LATENCY_MS; answers and request bodies pass at loopback speed (no bandwidth limit).
#   etlfs' object-store.yaml and rclone's endpoint both name the proxy.
# - Setup (not measured): BENCH_RESTORE_N files made by `fsbench fill` (each its own content)
#   and one file of BENCH_TTFB_SIZE random bytes, each put into a bucket of its own by
#   `etlfs backup` straight to the server. Both systems restore the same bucket.
# - Each round, in a rotating order, restores into a new empty directory (no etlfs state):
#   `rclone copy BENCH_RCLONE_COPY_ARGS`; `etlfs restore` (16 downloads at once); `etlfs
#   mount` at its defaults (32 downloads at once, prefetch on; --drain-timeout 5s) timed from
#   starting the process to the /status poll (every ~20 ms) that shows restore.files_left 0
#   and restore.prefetch "done"; and the same mount with `fsbench check` started as soon as
#   the directory is mounted, reading f00000.. in name order, each whole (the prefetch goes
#   newest first, the reverse order), timed from starting the process to the reader's end.
#   rclone's time is the reference of all three. (The prefetch alone uses at most 7/8 of the
#   workers, an eighth is kept for opens: so the mount with a reader can finish first.) Each
#   directory is checked afterwards with `fsbench check` (after unmounting: every file must
#   be local). The wall times of `rclone copy` and `etlfs restore` include their start and
#   exit.
# - Then the first byte: a fresh `etlfs mount --no-prefetch` over an empty directory, and the
#   seconds of open + read(1 byte) of the big file (etlfs downloads and verifies the whole
#   object before it serves a byte: this row shows what that costs), beside the whole of
#   `rclone cat --count 1 --discard` (process start, a HEAD, a listing, a ranged GET).

# restore_mount MODE DIR CONFIG [ARGS...]: `etlfs mount` at its defaults (but --drain-timeout
# 5s, so that a Ctrl-C stops it quickly) over DIR, its status server on STATUS_PORT; returns
# once DIR is mounted. MOUNT_T0 is the time right before the process started.
STATUS_PORT=
MOUNT_T0=
restore_mount() {
    local m=$1 d=$2 cfg=$3
    shift 3
    STATUS_PORT=$(free_port) || die "no free port on 127.0.0.1"
    MOUNT_T0=$EPOCHREALTIME
    start_mount "$m" "$d" "$LOG_DIR/$m.log" \
        "$ETLFS" mount --config "$cfg" --listen "127.0.0.1:$STATUS_PORT" --drain-timeout 5s "$@" "$d"
}

# wait_restored MODE PORT DEADLINE_S: polls the /status of MODE's etlfs (on PORT) every ~20 ms
# until restore.files_left is 0 and restore.prefetch is "done" (before the prefetch starts,
# files_left can be 0 too), and samples the daemon's VmRSS every 0.5 s meanwhile. Sets
# RESTORED_SECS (from MOUNT_T0 to the poll that saw it) and PEAK_RSS_MIB.
RESTORED_SECS=
PEAK_RSS_MIB=
wait_restored() {
    local m=$1 port=$2 deadline=$((SECONDS + $3)) json left state now next_rss=0 rss
    local re_left='"files_left": *([0-9]+)' re_state='"prefetch": *"([a-z]+)"'
    RESTORED_SECS="" PEAK_RSS_MIB=0
    while ((SECONDS < deadline)); do
        now=${EPOCHREALTIME/./} # microseconds
        if ((now >= next_rss)); then
            rss=$(vm_mib "${MODE_PID[$m]}" VmRSS) || die "$m: etlfs exited during the restore (log: ${MODE_LOG[$m]})"
            PEAK_RSS_MIB=$(awk -v a="$PEAK_RSS_MIB" -v b="$rss" 'BEGIN { print (b > a) ? b : a }')
            next_rss=$((now + 500000))
        fi
        json=$(curl -s --max-time 5 "http://127.0.0.1:$port/status") || json=
        now=$EPOCHREALTIME
        left="" state=""
        [[ ! $json =~ $re_left ]] || left=${BASH_REMATCH[1]}
        [[ ! $json =~ $re_state ]] || state=${BASH_REMATCH[1]}
        if [[ $left == 0 && $state == "done" ]]; then
            RESTORED_SECS=$(awk -v a="$MOUNT_T0" -v b="$now" 'BEGIN { printf "%.6f", b - a }')
            return 0
        fi
        # Done with files left: some downloads failed, and nothing would try them again.
        [[ $state != "done" && $state != bounded ]] ||
            die "$m: prefetch $state with $left files still only in the bucket (log: ${MODE_LOG[$m]})"
        sleep 0.02
    done
    die "$m: files still only in the bucket after $3 s (last /status: files_left=$left prefetch=$state; log: ${MODE_LOG[$m]})"
}

# bounded SECONDS COMMAND...: COMMAND, killed after SECONDS (status 124). --foreground keeps
# it in our process group, so that a Ctrl-C reaches it at once.
bounded() { timeout --foreground -k 5 "$@"; }

# restore_fill BUCKET TTFB_BUCKET: the files of the section, each put into its bucket once by
# `etlfs backup` straight to the server (not measured): RESTORE_N x RESTORE_SIZE made by
# `fsbench fill`, and one file "big" of TTFB_SIZE random bytes (random: nothing on the way
# could compress it).
restore_fill() {
    local b=$1 bt=$2 src=$S3_DIR/restore-src tsrc=$S3_DIR/restore-ttfb-src logf=$LOG_DIR/restore.log
    log "restore: creating $RESTORE_N x $RESTORE_SIZE B and one file of $TTFB_SIZE B; etlfs backup of both (log: $logf)"
    "$FSBENCH" fill "$src" "$RESTORE_N" "$RESTORE_SIZE" >/dev/null
    mkdir -p "$tsrc"
    head -c "$TTFB_SIZE" /dev/urandom >"$tsrc/big"
    make_bucket "$b"
    make_bucket "$bt"
    sync
    bounded 900 "$ETLFS" backup --config "$(etlfs_config "$b")" "$src" </dev/null >>"$logf" 2>&1 ||
        die "restore: etlfs backup failed (log: $logf)"
    bounded 900 "$ETLFS" backup --config "$(etlfs_config "$bt")" "$tsrc" </dev/null >>"$logf" 2>&1 ||
        die "restore: etlfs backup of the big file failed (log: $logf)"
    "$FSBENCH" s3check "$S3_EP" "$b" "" "$RESTORE_N" "$RESTORE_SIZE" >/dev/null
    "$FSBENCH" s3check "$S3_EP" "$bt" "" 1 "$TTFB_SIZE" >/dev/null
    rm -rf "$tsrc" # a GiB of disk, and nothing checks against it
}

# restore_one WAY DIR BUCKET REP: restores BUCKET into the empty DIR one way, through the delay
# proxy; records the wall seconds, then checks every file of DIR (outside the timing). rclone
# copy is the reference of the three etlfs rows, so its time is recorded for each.
restore_one() {
    local way=$1 d=$2 b=$3 rep=$4 t t1 row cfg logf=$LOG_DIR/restore.log
    cfg=$(etlfs_config "$b" "${DELAY_EP##*:}")
    case $way in
    rclone)
        # shellcheck disable=SC2086 # RCLONE_COPY_ARGS holds zero or more words
        t=$(timed "$logf" bounded "$S3_TIMEOUT" "${RCLONE_PROXY_ENV[@]}" rclone copy $RCLONE_COPY_ARGS "s3:$b" "$d") ||
            die "restore: rclone copy failed (log: $logf)"
        for row in copy mount mountread; do record "$row" rclone "$rep" "$t"; done
        ;;
    restore)
        t=$(timed "$logf" bounded "$S3_TIMEOUT" "$ETLFS" restore --config "$cfg" "$d") ||
            die "restore: etlfs restore failed (log: $logf)"
        record copy etlfs "$rep" "$t"
        ;;
    mount)
        restore_mount restore-mount "$d" "$cfg"
        wait_restored restore-mount "$STATUS_PORT" "$S3_TIMEOUT"
        unmount_mode restore-mount
        record mount etlfs "$rep" "$RESTORED_SECS"
        ;;
    mountread)
        # The reader starts once the directory is mounted, as an application waiting for it.
        restore_mount restore-mountread "$d" "$cfg"
        bounded "$S3_TIMEOUT" "$FSBENCH" check "$d" "$RESTORE_N" "$RESTORE_SIZE" >/dev/null ||
            die "restore: reading through the mount failed (log: ${MODE_LOG[restore-mountread]})"
        t1=$EPOCHREALTIME
        unmount_mode restore-mountread
        record mountread etlfs "$rep" "$(awk -v a="$MOUNT_T0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }')"
        ;;
    esac
    # The mounts too: every file must be local once they are gone.
    "$FSBENCH" check "$d" "$RESTORE_N" "$RESTORE_SIZE" >/dev/null || die "restore: $way left $d incomplete"
}

# restore_backup REP ROUND: `etlfs backup` and `rclone copy` of the restore section's source
# directory, each into an empty bucket of its own through the delay proxy, in an order that
# alternates per round; checks each bucket (outside the timing).
restore_backup() {
    local rep=$1 round=$2 m t b src=$S3_DIR/restore-src logf=$LOG_DIR/restore.log order=(rclone etlfs)
    ((rep % 2 == 0)) || order=(etlfs rclone)
    for m in "${order[@]}"; do
        b=bench-restore-bk-$m-$round
        make_bucket "$b"
        sync
        if [[ $m == rclone ]]; then
            # shellcheck disable=SC2086 # RCLONE_COPY_ARGS holds zero or more words
            t=$(timed "$logf" bounded "$S3_TIMEOUT" "${RCLONE_PROXY_ENV[@]}" rclone copy $RCLONE_COPY_ARGS "$src" "s3:$b") ||
                die "restore: rclone copy to the bucket failed (log: $logf)"
        else
            t=$(timed "$logf" bounded "$S3_TIMEOUT" "$ETLFS" backup --config "$(etlfs_config "$b" "${DELAY_EP##*:}")" "$src") ||
                die "restore: etlfs backup failed (log: $logf)"
        fi
        "$FSBENCH" s3check "$S3_EP" "$b" "" "$RESTORE_N" "$RESTORE_SIZE" >/dev/null
        record backup "$m" "$rep" "$t"
        drop_bucket "$b"
    done
}

# restore_ttfb BUCKET REP: the time to the first byte of BUCKET's file "big" through a fresh
# `etlfs mount --no-prefetch` over an empty directory (the open and a 1-byte read), and by
# `rclone cat --count 1` (the whole command), in an order that alternates per round.
restore_ttfb() {
    local b=$1 rep=$2 m t d=$S3_DIR/restore-ttfb logf=$LOG_DIR/restore.log order=(rclone etlfs)
    ((rep % 2 == 0)) || order=(etlfs rclone)
    for m in "${order[@]}"; do
        sync
        if [[ $m == rclone ]]; then
            t=$(timed "$logf" bounded "$S3_TIMEOUT" "${RCLONE_PROXY_ENV[@]}" rclone cat --count 1 --discard "s3:$b/big") ||
                die "restore: rclone cat failed (log: $logf)"
        else
            rm -rf "$d"
            mkdir -p "$d"
            restore_mount restore-ttfb "$d" "$(etlfs_config "$b" "${DELAY_EP##*:}")" --no-prefetch
            t=$(bounded "$S3_TIMEOUT" "$FSBENCH" firstbyte "$d/big") ||
                die "restore: first byte through the mount failed (log: ${MODE_LOG[restore-ttfb]})"
            unmount_mode restore-ttfb
            rm -rf "$d" # a GiB per round
        fi
        record ttfb "$m" "$rep" "$t"
    done
}

section_restore() {
    local ways=(rclone restore mount mountread) order way rep k round=0 d what
    local b=bench-restore bt=bench-restore-ttfb
    what="$RESTORE_N x $((RESTORE_SIZE / 1024)) KiB"
    s3_up
    delay_up
    ROWS=()
    SAMPLES=()
    ROW_MAX=()
    MODE_LABEL=([rclone]="rclone (reference)" [etlfs]="etlfs")
    define_row copy "restore $what into an empty directory: etlfs restore vs rclone copy (s)" secs "<=1.0"
    define_row mount "the same by etlfs mount: start -> all local (/status) vs rclone copy (s)" secs "<=1.0"
    define_row mountread "the same + reading each file in name order: start -> last read vs rclone copy (s)" secs "<=1.25"
    define_row backup "back up the same $what into an empty bucket: etlfs backup vs rclone copy (s)" secs "<=1.0"
    define_row ttfb "first byte of a $((TTFB_SIZE / 1048576)) MiB bucket-only file: etlfs mount --no-prefetch, open + read 1 B vs rclone cat --count 1 (s)" secs "-"
    restore_fill "$b" "$bt"
    log "restore: rclone copy $RCLONE_COPY_ARGS; etlfs mount at its defaults (--fetch-concurrency 32, prefetch on); through $DELAY_EP (+$LATENCY_MS ms)"

    for ((rep = 1 - WARMUP; rep <= REPEAT; rep++)); do
        round=$((round + 1))
        k=$(((rep % 4 + 4) % 4))
        order=("${ways[@]:k}" "${ways[@]:0:k}")
        if ((rep < 1)); then log "restore: warm-up round"; else log "restore: round $rep/$REPEAT: ${order[*]} ttfb"; fi
        for way in "${order[@]}"; do
            # A new node: an empty directory (and no etlfs state).
            d=$S3_DIR/restore-$way-$round
            mkdir -p "$d"
            sync
            restore_one "$way" "$d" "$b" "$rep"
        done
        restore_backup "$rep" "$round"
        restore_ttfb "$bt" "$rep"
    done

    # Removed only now: mass deletes slow down later creates on some ext4 setups (see scripts/bench.sh).
    drop_bucket "$b"
    drop_bucket "$bt"
    rm -rf "$S3_DIR"/restore-*
    print_table "Restore at a real bucket's latency: etlfs vs rclone, $S3_LABEL on 127.0.0.1 behind fsbench delayproxy (+$LATENCY_MS ms per request and per connection)" \
        rclone etlfs
}

