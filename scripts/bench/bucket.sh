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
    print_table "Bucket upload: etlfs vs rclone mount --vfs-cache-mode full, $S3_LABEL on 127.0.0.1" \
        rclone etlfs
}

