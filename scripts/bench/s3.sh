# shellcheck shell=bash
# The S3 server of the sections "bucket", "restore", "oneshot" and "scale" of scripts/bench.sh
# (BENCH_S3; sourced by it), the delay proxy in front of it, buckets, and etlfs and rclone
# mounts on it.
#
# Notes on the S3 server (BENCH_S3):
# - Throughput is measured against s3s-fs, not moto: moto (in-memory, one Python process) is
#   itself the bottleneck (`rclone copy` of 10,000 x 64 KiB: 48 s into moto, ~10 s into
#   s3s-fs), so it would measure itself; it stays the server of the correctness tests. With
#   BENCH_S3=moto the script runs moto itself (ETLFS_TEST_S3_SERVER), not the outage front the
#   tests use (one more Python hop that neither system needs).
# - s3s-fs stores each object as a file under BENCH_DIR/s3/s3s-data/BUCKET (a bucket is made
#   with mkdir) and checks request signatures: etlfs, rclone and fsbench all sign with the
#   keys the script starts it with.
# - Stock s3s-fs walks and stats the whole bucket for every 1000-key page of ListObjectsV2,
#   so listing N objects costs O(N^2): 10,000 objects list in ~1.3 s, 100,000 in ~190 s, and
#   anything that lists 100,000 objects (every `etlfs mount` start) would measure that.
#   BENCH_S3=s3s-fs therefore builds s3s-fs with scripts/s3s-fs-list-cache.patch, which keeps
#   the sorted result of one walk while no directory of the bucket changes (100,000 objects:
#   ~4-5 s for the first listing, ~0.15 s for the next), with or without a delimiter (etlfs
#   lists directory by directory, delimiter "/"). Its answers are the stock server's;
#   BENCH_S3=s3s-fs-stock measures the published crate.
# - rclone and s3s-fs: (1) `--fast-list` must not be used: rclone's recursive listing sends
#   `delimiter=` (empty), which s3s-fs answers with an empty listing, so `rclone copy
#   --fast-list s3:BUCKET DIR` silently copies nothing. Its normal per-directory listing
#   (delimiter "/") works. (2) With its default 4 transfers a download of 10,000 x 64 KiB
#   took 45-47 s against ~13-14 s with 16 (8: 24 s, 32: 14 s; uploads 11-16 s either way):
#   each s3s-fs GET has a high latency that only parallelism hides. This, not the listing,
#   is what made rclone's download from s3s-fs look slow (133 s) in earlier notes. Hence
#   "oneshot" gives rclone copy --transfers 16 --checkers 16: the same 16 transfers in
#   flight as etlfs backup/restore (BENCH_RCLONE_COPY_ARGS="" measures rclone's defaults).

# A TCP port on 127.0.0.1 that nothing listens on, outside the kernel's ephemeral range (so
# that no outgoing connection takes it meanwhile).
free_port() {
    local lo=32768 hi=60999 base span p i
    read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    if ((lo > 12000)); then base=10000 span=$((lo - 10000)); else base=$((hi + 1)) span=$((65535 - hi)); fi
    for ((i = 0; i < 200; i++)); do
        p=$((base + (RANDOM * 32768 + RANDOM) % span))
        # A refused connect: nobody listens there.
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            printf '%s' "$p"
            return 0
        fi
    done
    return 1
}

# Installs s3s-fs S3S_VERSION where the tests keep their servers (ETLFS_TEST_CACHE, default
# ~/.cache/etlfs-test) unless it is there, and sets S3S_BIN. BENCH_S3=s3s-fs-stock: the
# published crate as it is (in s3s-fs/). BENCH_S3=s3s-fs: the same crate with
# scripts/s3s-fs-list-cache.patch applied (in s3s-fs-bench/), rebuilt when the patch changes.
s3s_install() {
    local cache root want crate work rc=0
    cache=$(_servers_cache)
    if [[ $S3_KIND == s3s-fs-stock ]]; then
        root=$cache/s3s-fs
        S3S_BIN=$root/bin/s3s-fs
        [[ -x $S3S_BIN && $("$S3S_BIN" --version 2>/dev/null) == "s3s-fs $S3S_VERSION" ]] && return 0
        log "installing s3s-fs $S3S_VERSION into $root (cargo install: several minutes; log: $LOG_DIR/s3s-fs-build.log)"
        cargo install s3s-fs --version "$S3S_VERSION" --locked --features binary --root "$root" \
            --force >"$LOG_DIR/s3s-fs-build.log" 2>&1 || {
            tail -n 20 "$LOG_DIR/s3s-fs-build.log" >&2
            die "cargo install s3s-fs $S3S_VERSION failed"
        }
        return 0
    fi
    root=$cache/s3s-fs-bench
    S3S_BIN=$root/bin/s3s-fs
    want="s3s-fs $S3S_VERSION + $(sha256sum <"$ROOT/scripts/s3s-fs-list-cache.patch" | cut -c1-16)"
    if [[ -x $S3S_BIN && -f $root/installed && $(<"$root/installed") == "$want" ]]; then
        return 0
    fi
    log "building s3s-fs $S3S_VERSION with scripts/s3s-fs-list-cache.patch into $root (cargo: several minutes; log: $LOG_DIR/s3s-fs-build.log)"
    work=$(mktemp -d "${TMPDIR:-/tmp}/etlfs-s3s-build.XXXXXX")
    # The published source: a throwaway package that depends on the crate makes cargo fetch it.
    mkdir -p "$work/fetch/src"
    printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\ns3s-fs = "=%s"\n' \
        "$S3S_VERSION" >"$work/fetch/Cargo.toml"
    : >"$work/fetch/src/lib.rs"
    (cd "$work/fetch" && cargo fetch) >"$LOG_DIR/s3s-fs-build.log" 2>&1 || rc=$?
    crate=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -name "s3s-fs-$S3S_VERSION.crate" 2>/dev/null | head -n 1)
    if ((rc != 0)) || [[ -z $crate ]]; then
        rm -rf "$work"
        tail -n 20 "$LOG_DIR/s3s-fs-build.log" >&2
        die "could not fetch the s3s-fs $S3S_VERSION crate"
    fi
    {
        tar -xzf "$crate" -C "$work" &&
            patch -p1 -d "$work/s3s-fs-$S3S_VERSION" <"$ROOT/scripts/s3s-fs-list-cache.patch" &&
            cargo install --path "$work/s3s-fs-$S3S_VERSION" --locked --features binary \
                --root "$root" --force
    } >>"$LOG_DIR/s3s-fs-build.log" 2>&1 || rc=$?
    rm -rf "$work"
    if ((rc != 0)); then
        tail -n 20 "$LOG_DIR/s3s-fs-build.log" >&2
        die "building the patched s3s-fs failed"
    fi
    printf '%s' "$want" >"$root/installed"
}

# Starts s3s-fs on a free port of 127.0.0.1 over S3_DATA and waits until it answers.
s3s_up() {
    local port try i
    s3s_install
    S3_AK=etlfs-bench S3_SK=etlfs-bench-secret
    S3_DATA=$S3_DIR/s3s-data
    mkdir -p "$S3_DATA"
    for try in 1 2 3; do
        port=$(free_port) || die "no free port on 127.0.0.1"
        defer_signals # a Ctrl-C between the start and the next line would leave it running
        "$S3S_BIN" --host 127.0.0.1 --port "$port" --access-key "$S3_AK" --secret-key "$S3_SK" \
            "$S3_DATA" </dev/null >>"$LOG_DIR/s3s-fs.log" 2>&1 &
        S3_PID=$!
        undefer_signals
        for ((i = 0; i < 300; i++)); do
            # Any HTTP answer (403 without a signature) means it is up.
            if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/" && kill -0 "$S3_PID" 2>/dev/null; then
                S3_EP=http://127.0.0.1:$port
                return 0
            fi
            kill -0 "$S3_PID" 2>/dev/null || break
            sleep 0.05
        done
        log "s3s-fs did not come up on port $port (try $try; log: $LOG_DIR/s3s-fs.log)"
        stop_s3s
    done
    die "could not start s3s-fs (log: $LOG_DIR/s3s-fs.log)"
}

# stop_process PID: SIGTERM, SIGKILL if it still runs 5 s later; reaps it.
stop_process() {
    local i
    kill -TERM "$1" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

stop_s3s() {
    [[ -n $S3_PID ]] || return 0
    stop_process "$S3_PID"
    S3_PID=
}

# Starts the S3 server once per run (cleanup stops it): s3s-fs ourselves, moto through
# scripts/servers.sh (installed on first use).
s3_up() {
    [[ -z $S3_EP ]] || return 0
    mkdir -p "$S3_DIR"
    if [[ $S3_KIND == moto ]]; then
        log "starting the S3 test server (scripts/servers.sh; installs it on first use)"
        servers_install
        # servers_start records each server's PID a moment after starting it: a Ctrl-C in
        # between would leave that server running, so it takes effect after servers_start returns.
        local rc=0
        defer_signals
        servers_start || rc=$?
        undefer_signals
        ((rc == 0)) || die "could not start the S3 test server"
        S3_EP=$ETLFS_TEST_S3_SERVER
        S3_LABEL="moto $SERVERS_MOTO_VERSION"
    else
        s3s_up
        S3_LABEL="s3s-fs $S3S_VERSION"
        [[ $S3_KIND == s3s-fs ]] && S3_LABEL+=" (list cache patch)"
    fi
    [[ $S3_EP =~ ^http://127\.0\.0\.1:[0-9]+$ ]] || die "unexpected S3 endpoint '$S3_EP'"
    log "S3 ($S3_LABEL) at $S3_EP"
    # fsbench signs its bucket listings with these (kcupload, s3check).
    export FSBENCH_S3_ACCESS_KEY=$S3_AK FSBENCH_S3_SECRET_KEY=$S3_SK
    : >"$S3_DIR/rclone.conf" # empty: rclone's remote "s3" comes from the environment only
    # rclone 1.60's S3 backend fails when AWS_CA_BUNDLE is set (test-servers.md): unset it.
    RCLONE_ENV=(env -u AWS_CA_BUNDLE RCLONE_CONFIG="$S3_DIR/rclone.conf"
        RCLONE_CONFIG_S3_TYPE=s3 RCLONE_CONFIG_S3_PROVIDER=Other
        RCLONE_CONFIG_S3_ENDPOINT="$S3_EP" RCLONE_CONFIG_S3_REGION=us-east-1
        RCLONE_CONFIG_S3_ACCESS_KEY_ID="$S3_AK" RCLONE_CONFIG_S3_SECRET_ACCESS_KEY="$S3_SK"
        RCLONE_CONFIG_S3_FORCE_PATH_STYLE=true)
}

# Starts `fsbench delayproxy` in front of the S3 server once per run (cleanup stops it): every
# request through DELAY_EP takes BENCH_LATENCY_MS more, as at a real bucket, and so does every
# new connection. RCLONE_PROXY_ENV points rclone at it; `etlfs_config BUCKET PORT` etlfs.
delay_up() {
    local portf=$S3_DIR/delayproxy.port port="" i t
    [[ -z $DELAY_EP ]] || return 0
    s3_up
    : >"$portf"
    defer_signals # a Ctrl-C between the start and the next line would leave it running
    "$FSBENCH" delayproxy 127.0.0.1:0 "${S3_EP#http://}" "$LATENCY_MS" </dev/null >"$portf" 2>>"$LOG_DIR/delayproxy.log" &
    DELAY_PID=$!
    undefer_signals
    # It prints its port once it listens (a whole line: read fails until the newline is there).
    for ((i = 0; i < 500; i++)); do
        read -r port <"$portf" && [[ $port =~ ^[0-9]+$ ]] && break
        kill -0 "$DELAY_PID" 2>/dev/null || die "the delay proxy exited (log: $LOG_DIR/delayproxy.log)"
        port=""
        sleep 0.02
    done
    [[ -n $port ]] || die "the delay proxy printed no port within 10 s (log: $LOG_DIR/delayproxy.log)"
    DELAY_EP=http://127.0.0.1:$port
    # env takes the last of two assignments to one name.
    RCLONE_PROXY_ENV=("${RCLONE_ENV[@]}" RCLONE_CONFIG_S3_ENDPOINT="$DELAY_EP")
    # A first request on a new connection: two delays (the connection's and the request's).
    t=$(curl -s -o /dev/null -w '%{time_total}' --max-time 10 "$DELAY_EP/") || die "no answer through the delay proxy at $DELAY_EP"
    log "delay proxy at $DELAY_EP (+$LATENCY_MS ms per request and per connection): a first request took $t s"
}

stop_delayproxy() {
    [[ -n $DELAY_PID ]] || return 0
    stop_process "$DELAY_PID"
    DELAY_PID=
}

make_bucket() {
    if [[ $S3_KIND == moto ]]; then
        curl -fsS -o /dev/null -X PUT "$S3_EP/$1" || die "could not create bucket $1 at $S3_EP"
    else
        mkdir "$S3_DATA/$1" || die "could not create bucket $1 in $S3_DATA"
    fi
}

# drop_bucket NAME: removes bucket NAME and all its objects.
drop_bucket() {
    if [[ $S3_KIND == moto ]]; then
        "${RCLONE_ENV[@]}" rclone purge "s3:$1" >/dev/null 2>&1 || true
    else
        rm -rf "${S3_DATA:?}/$1"
        # s3s-fs keeps each object's metadata beside the buckets, named after both in base64url.
        find "$S3_DATA" -maxdepth 1 -name ".bucket-$(printf '%s' "$1" | base64 -w0 | tr '+/' '-_' | tr -d '=').*" -delete
    fi
}

# etlfs_config BUCKET [PORT] -> the path of an object-store.yaml for BUCKET on the test server,
# or at 127.0.0.1:PORT (the delay proxy's)
etlfs_config() {
    local f=$S3_DIR/$1${2:+.via-$2}.yaml
    cat >"$f" <<EOF
type: S3
config:
  bucket: $1
  endpoint: 127.0.0.1:${2:-${S3_EP##*:}}
  insecure: true
  access_key: $S3_AK
  secret_key: $S3_SK
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
        "$ETLFS" mount --config "$cfg" --listen 127.0.0.1:0 --drain-timeout 5s "$@" "$d"
}

# mount_rclone MODE DIR BUCKET CACHE_DIR: rclone mount --vfs-cache-mode full of BUCKET at DIR.
mount_rclone() {
    start_mount "$1" "$2" "$LOG_DIR/$1.log" \
        "${RCLONE_ENV[@]}" rclone mount "s3:$3" "$2" --vfs-cache-mode full \
        --vfs-write-back "${5:-$UPLOAD_DELAY}s" --cache-dir "$4"
}

