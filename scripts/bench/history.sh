# shellcheck shell=bash
# Section "history" of scripts/bench.sh (sourced by it).
#
# history: what keeping versions costs in bucket requests per Kubecost rewrite. BENCH_KC_N
# files of 64 KiB are written once, then rewritten BENCH_KC_CYCLES times (each cycle waits
# until the mirror is idle), with history off (--history-retention 0), at its defaults (at most
# one version per file per hour) and keeping every version (--history-interval 0s). Printed per
# file and rewrite: every request etlfs sent (etlfs_bucket_requests_total), and versions kept.
section_history() {
    local setting d b port before after kept rewrites cyc
    local -a args
    s3_up
    rewrites=$((KC_N * KC_CYCLES))
    printf '\nHistory: bucket requests per file rewrite (%s x %s KiB, %s rewrites each), %s on 127.0.0.1\n' \
        "$KC_N" $((KC_SIZE / 1024)) "$KC_CYCLES" "$S3_LABEL"
    printf '%-44s %14s %14s\n' "history" "requests" "versions kept"
    for setting in off default every; do
        case $setting in
        off) args=(--history-retention 0) ;;
        default) args=() ;;
        every) args=(--history-interval 0s) ;;
        esac
        d=$S3_DIR/history-$setting b=bench-history-$setting port=$(free_port)
        make_bucket "$b"
        mkdir -p "$d"
        start_mount "history-$setting" "$d" "$LOG_DIR/history-$setting.log" \
            "$ETLFS" mount --config "$(etlfs_config "$b")" --listen "127.0.0.1:$port" \
            --upload-delay 1s --drain-timeout 5s "${args[@]}" "$d"
        "$FSBENCH" kubecost "$d" "$KC_N" "$KC_SIZE" 1 >/dev/null
        history_settle "$port" "$KC_N"
        before=$(history_requests "$port")
        for ((cyc = 1; cyc <= KC_CYCLES; cyc++)); do
            "$FSBENCH" kubecost "$d" "$KC_N" "$KC_SIZE" 1 >/dev/null
            history_settle "$port" $((KC_N * (cyc + 1)))
        done
        after=$(history_requests "$port")
        kept=$(history_metric "$port" etlfs_history_versions_kept_total)
        printf '%-44s %14s %14s\n' "$setting (${args[*]:-the defaults})" \
            "$(awk -v a="$after" -v b="$before" -v n="$rewrites" 'BEGIN { printf "%.2f", (a - b) / n }')" \
            "$(awk -v k="$kept" -v n="$rewrites" 'BEGIN { printf "%.2f", k / n }')"
        unmount_mode "history-$setting"
        drop_bucket "$b"
        rm -rf "$d"
    done
}

# history_metric PORT NAME: the value of an unlabelled sample on the mount's /metrics (0 if none).
history_metric() {
    curl -fsS "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n { print $2; found = 1 } END { if (!found) print 0 }'
}

# history_requests PORT: every request the mount has sent to the bucket so far.
history_requests() {
    curl -fsS "http://127.0.0.1:$1/metrics" |
        awk '$1 ~ /^etlfs_bucket_requests_total\{/ { n += $2 } END { print n + 0 }'
}

# history_settle PORT N: waits until the mount has made N uploads and nothing is pending.
history_settle() {
    local i
    for ((i = 0; i < S3_TIMEOUT * 10; i++)); do
        if awk -v u="$(history_metric "$1" etlfs_uploads_total)" -v p="$(history_metric "$1" etlfs_pending_changes)" \
            -v n="$2" 'BEGIN { exit !(u >= n && p == 0) }'; then
            return 0
        fi
        sleep 0.1
    done
    die "history: the mirror did not settle on $2 uploads within $S3_TIMEOUT s"
}
