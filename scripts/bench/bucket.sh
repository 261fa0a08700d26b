# shellcheck shell=bash
# Section "bucket" of scripts/bench.sh (sourced by it): from the last close of a Kubecost write
# pass to all its files being in the bucket, etlfs vs rclone mount.
#
# Notes on the "bucket" section:
# - Each system writes to its own bucket through its own mount. The absolute seconds say as
#   much about the server as about the client; the ratio is the comparison.
# - Both systems keep their defaults except the upload delay (and --drain-timeout 5s for
#   etlfs, so that Ctrl-C stops quickly): etlfs uploads 8 files at once
#   (--upload-concurrency), rclone 4 (--transfers).
# - One mount per system for the whole section; each round writes a new subdirectory kc.ROUND
#   with `fsbench kcupload`, which lists the bucket (ListObjectsV2 under that prefix) every
#   100 ms from the last close until all files are there with their full size. The time is
#   measured to the end of the listing that showed them all, so it is at most ~0.1 s + one
#   listing late. Goal: at most BENCH_UPLOAD_DELAY + 2 s, and below rclone.
# - CPU: the daemon's own CPU seconds (user + system, /proc/PID/stat) over each pass — the FUSE
#   requests of the writes and the uploads — per 1,000 files; then over one pass of a single
#   file of BENCH_CPU_MIB MiB (default 256), per GiB. Not judged: the figures say what the
#   mirror costs the machine it shares with the application.

# cpu_seconds PID: user + system CPU seconds the process has used so far (fields 14 and 15 of
# /proc/PID/stat, counted after the name, which may hold spaces).
cpu_seconds() {
    awk -v tck="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / tck }' "/proc/$1/stat"
}

# measure_cpu ROW MODE REP PID SCALE -- fsbench args...: runs fsbench once and records PID's CPU
# seconds over it, times SCALE.
measure_cpu() {
    local row=$1 m=$2 rep=$3 pid=$4 scale=$5 before
    shift 6
    before=$(cpu_seconds "$pid")
    "$FSBENCH" "$@" >/dev/null
    record "$row" "$m" "$rep" "$(awk -v a="$before" -v b="$(cpu_seconds "$pid")" -v s="$scale" 'BEGIN { print (b - a) * s }')"
}

section_bucket() {
    local modes=(rclone etlfs) order m rep k pid cpu
    local de=$S3_DIR/bucket-etlfs dr=$S3_DIR/bucket-rclone
    s3_up
    ROWS=()
    SAMPLES=()
    ROW_MAX=()
    MODE_LABEL=([rclone]="rclone mount" [etlfs]="etlfs")
    define_row upload "last close -> ${KC_N} x $((KC_SIZE / 1024)) KiB in bucket (s)" secs "<1"
    ROW_MAX[upload]=$((UPLOAD_DELAY + 2))
    define_row cpu_small "daemon CPU per 1,000 files of $((KC_SIZE / 1024)) KiB written and uploaded (s)" secs "-"
    define_row cpu_large "daemon CPU per GiB, one ${CPU_MIB} MiB file written and uploaded (s)" secs "-"
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
            pid=${MODE_PID[$m-bucket]}
            cpu=$(cpu_seconds "$pid")
            measure upload "$m" "$rep" -- kcupload "$S3_DIR/bucket-$m/kc.$rep" "$KC_N" "$KC_SIZE" \
                "$S3_EP" "bench-upload-$m" "kc.$rep" "$S3_TIMEOUT"
            record cpu_small "$m" "$rep" "$(awk -v a="$cpu" -v b="$(cpu_seconds "$pid")" -v n="$KC_N" \
                'BEGIN { print (b - a) * 1000 / n }')"
        done
        for m in "${order[@]}"; do
            sync
            measure_cpu cpu_large "$m" "$rep" "${MODE_PID[$m-bucket]}" "$(awk -v m="$CPU_MIB" 'BEGIN { print 1024 / m }')" \
                -- kcupload "$S3_DIR/bucket-$m/big.$rep" 1 $((CPU_MIB << 20)) \
                "$S3_EP" "bench-upload-$m" "big.$rep" "$S3_TIMEOUT"
        done
    done

    unmount_mode etlfs-bucket
    unmount_mode rclone-bucket
    print_table "Bucket upload: etlfs vs rclone mount --vfs-cache-mode full, $S3_LABEL on 127.0.0.1" \
        rclone etlfs
}

