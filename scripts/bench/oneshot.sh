# shellcheck shell=bash
# Section "oneshot" of scripts/bench.sh (sourced by it): `etlfs backup` / `etlfs restore` vs
# `rclone copy` (and `cp -a`).
#
# Notes on the "oneshot" section:
# - The files (`fsbench fill`: each with its own content) are made once; each round, in a
#   rotating order, every system backs them up into a new bucket of its own (cp -a: into a
#   directory), then restores that bucket into a new empty directory. Times are wall seconds
#   of the whole command (process start, bucket listing, transfers, exit). After each step
#   the result is checked outside the timing (`fsbench s3check`: the bucket holds exactly the
#   N objects with their sizes; `fsbench check`: every restored file has its exact bytes).
# - The source files and the server's files are in the page cache (`sync` before each step,
#   no cache drop): the numbers are the clients' and the server's CPU and round trips, not
#   the disk's. `etlfs restore` fsyncs every file and its directory before renaming it into
#   place (its durability guarantee); rclone and cp do not.
# - Buckets and directories stay until the end of the section (see the ext4 note in scripts/bench.sh):
#   about 4 GB per round at the defaults.

# timed LOG COMMAND...: runs COMMAND with its output appended to LOG; prints its wall seconds.
timed() {
    local logf=$1 t0 t1
    shift
    t0=$EPOCHREALTIME
    "$@" </dev/null >>"$logf" 2>&1 || return 1
    t1=$EPOCHREALTIME
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }'
}

section_oneshot() {
    local modes=(native rclone etlfs) order m rep k round=0 src b d t what logf
    local n=$ONESHOT_N size=$ONESHOT_SIZE
    local made=() # buckets and directories to remove at the end
    what="$n x $((size / 1024)) KiB"
    logf=$LOG_DIR/oneshot.log
    s3_up
    ROWS=()
    SAMPLES=()
    ROW_MAX=()
    MODE_LABEL=([native]="cp -a" [rclone]="rclone copy" [etlfs]="etlfs")
    define_row backup "backup $what: directory -> empty bucket (s)" secs "<1"
    define_row restore "restore $what: bucket -> empty directory (s)" secs "<1"
    src=$S3_DIR/oneshot-src
    log "oneshot: creating $what in $src"
    "$FSBENCH" fill "$src" "$n" "$size" >/dev/null
    log "oneshot: rclone copy $RCLONE_COPY_ARGS; log in $logf"

    for ((rep = 1 - WARMUP; rep <= REPEAT; rep++)); do
        round=$((round + 1))
        k=$(((rep % 3 + 3) % 3))
        order=("${modes[@]:k}" "${modes[@]:0:k}")
        if ((rep < 1)); then log "oneshot: warm-up round"; else log "oneshot: round $rep/$REPEAT: ${order[*]}"; fi
        # Backups: each system into a bucket of its own (cp -a: into a directory).
        for m in "${order[@]}"; do
            b=bench-oneshot-$m-$round
            made+=("$m:$b")
            sync
            case $m in
            native)
                mkdir -p "$S3_DIR/$b"
                t=$(timed "$logf" cp -a "$src/." "$S3_DIR/$b/") || die "oneshot: cp -a failed (log: $logf)"
                "$FSBENCH" check "$S3_DIR/$b" "$n" "$size" >/dev/null
                ;;
            rclone)
                make_bucket "$b"
                # shellcheck disable=SC2086 # RCLONE_COPY_ARGS holds zero or more words
                t=$(timed "$logf" "${RCLONE_ENV[@]}" rclone copy $RCLONE_COPY_ARGS "$src" "s3:$b") ||
                    die "oneshot: rclone copy to the bucket failed (log: $logf)"
                ;;
            etlfs)
                make_bucket "$b"
                t=$(timed "$logf" "$ETLFS" backup --config "$(etlfs_config "$b")" "$src") ||
                    die "oneshot: etlfs backup failed (log: $logf)"
                ;;
            esac
            [[ $m == native ]] || "$FSBENCH" s3check "$S3_EP" "$b" "" "$n" "$size" >/dev/null
            record backup "$m" "$rep" "$t"
        done
        # Restores: each system from its own bucket into an empty directory.
        for m in "${order[@]}"; do
            b=bench-oneshot-$m-$round
            d=$S3_DIR/oneshot-restore-$m-$round
            mkdir -p "$d"
            sync
            case $m in
            native)
                t=$(timed "$logf" cp -a "$S3_DIR/$b/." "$d/") || die "oneshot: cp -a failed (log: $logf)"
                ;;
            rclone)
                # shellcheck disable=SC2086 # RCLONE_COPY_ARGS holds zero or more words
                t=$(timed "$logf" "${RCLONE_ENV[@]}" rclone copy $RCLONE_COPY_ARGS "s3:$b" "$d") ||
                    die "oneshot: rclone copy from the bucket failed (log: $logf)"
                ;;
            etlfs)
                t=$(timed "$logf" "$ETLFS" restore --config "$(etlfs_config "$b")" "$d") ||
                    die "oneshot: etlfs restore failed (log: $logf)"
                ;;
            esac
            "$FSBENCH" check "$d" "$n" "$size" >/dev/null
            record restore "$m" "$rep" "$t"
        done
    done

    # Removed only now: mass deletes slow down later creates on some ext4 setups (see scripts/bench.sh).
    for b in "${made[@]}"; do
        if [[ ${b%%:*} == native ]]; then rm -rf "${S3_DIR:?}/${b#*:}"; else drop_bucket "${b#*:}"; fi
    done
    rm -rf "$S3_DIR"/oneshot-*
    TABLE_REF=native
    print_table "One-shot backup and restore: etlfs vs rclone copy $RCLONE_COPY_ARGS, $S3_LABEL on 127.0.0.1 (cp -a: the same copy disk to disk)" \
        rclone etlfs
    TABLE_REF=
}

