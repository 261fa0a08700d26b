# shellcheck shell=bash
# Section "local" of scripts/bench.sh (sourced by it): native disk vs etlfs over the same
# filesystem (and rclone mount on the S3 server, BENCH_LOCAL_RCLONE).

section_local() {
    local modes=(native passthrough daemon mirroring) order m d rep k
    local small="${SMALL_N} x $((SMALL_SIZE / 1024)) KiB"
    ROWS=()
    SAMPLES=()
    MODE_LABEL[mirroring]="etlfs, uploading"
    if [[ ${BENCH_LOCAL_RCLONE:-1} == 1 ]]; then
        s3_up
        make_bucket bench-local-rclone
        MODE_DIR[rclone]=$BENCH_DIR/rclone
        mkdir -p "${MODE_DIR[rclone]}" "$S3_DIR/local-rclone.cache"
        MODE_LABEL[rclone]="rclone mount"
        modes+=(rclone)
    fi
    define_row seqwrite "seq write ${SEQ_MIB} MiB (MiB/s)" tput ">=0.90" "$SEQ_MIB"
    define_row seqread_warm "seq read ${SEQ_MIB} MiB, warm (MiB/s)" tput ">=0.95" "$SEQ_MIB"
    [[ $COLD == 1 ]] && define_row seqread_cold "seq read ${SEQ_MIB} MiB, cold (MiB/s)" tput ">=0.95" "$SEQ_MIB"
    define_row create "create+write+close $small (ms)" time "<=3"
    define_row stat_first "stat $SMALL_N files, first pass (ms)" time "<=4"
    define_row stat_repeat "stat $SMALL_N files, repeat (ms)" time "<=1.3"
    define_row kubecost "Kubecost ${KC_CYCLES} x ${KC_N} x $((KC_SIZE / 1024)) KiB (ms)" time "<=1.5"

    for m in "${modes[@]}"; do mount_mode "$m"; done
    log "etlfs pids: passthrough ${MODE_PID[passthrough]}, daemon ${MODE_PID[daemon]}${MODE_PID[rclone]:+, rclone ${MODE_PID[rclone]}}"

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
    if [[ -n ${MODE_DIR[rclone]:-} ]]; then
        TABLE_REF=rclone
        print_table "native disk vs etlfs vs rclone mount --vfs-cache-mode full ($S3_LABEL)" native passthrough daemon mirroring
        TABLE_REF=
    else
        print_table "native disk vs etlfs" native passthrough daemon mirroring
    fi
}

