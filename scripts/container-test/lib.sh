# shellcheck shell=bash
# Helpers of the checks of scripts/container-test.sh (sourced by it, once the S3 server runs):
# shared mounts, running the image, and what is in the bucket and in a directory.

# shared_dir DIR: a shared mount at DIR, so that mounts made in a container's rshared bind of it
# propagate back to the host (the Kubernetes mountPropagation: Bidirectional pattern).
shared_dir() {
    mkdir -p "$1"
    mount --bind "$1" "$1" && SHARED_DIRS+=("$1") && mount --make-shared "$1"
}

# run_etlfs NAME DIR: start the image over DIR (bound at /data) and wait until it is ready.
run_etlfs() {
    local name=$1 dir=$2
    shift 2
    CONTAINERS+=("$name")
    podman run -d --name "$name" --privileged --network host \
        -v "$dir:/data:rshared" \
        -v "$WORK/object-store.yaml:/etc/etlfs/object-store.yaml:ro" \
        -e ETLFS_CONFIG=/etc/etlfs/object-store.yaml \
        -e ETLFS_LISTEN="127.0.0.1:$STATUS_PORT" \
        "$IMAGE" mount --prefix "$PREFIX" --upload-delay 200ms --drain-timeout 30s "$@" /data \
        >/dev/null 2>"$WORK/$name.run.err" || {
        cat "$WORK/$name.run.err" >&2
        return 1
    }
    # (Without systemd, podman only logs that it cannot schedule the HEALTHCHECK timer:
    # "podman healthcheck run" below runs it by hand.)
    for _ in $(seq 1 120); do
        podman exec "$name" etlfs status >/dev/null 2>&1 && return 0
        [[ $(podman inspect "$name" --format '{{.State.Running}}') == true ]] || break
        sleep 0.5
    done
    podman logs "$name" 2>&1 | tail -20 >&2
    return 1
}

# bucket_has KEY...: every key is in the bucket listing, waiting up to 30 s.
bucket_keys() {
    curl -fsS "$EP/$BUCKET?list-type=2&prefix=$PREFIX/&max-keys=1000" |
        grep -o '<Key>[^<]*</Key>' | sed 's/<Key>//; s/<\/Key>//' | sort
}
bucket_has() {
    local k missing
    for _ in $(seq 1 60); do
        missing=0
        for k in "$@"; do
            bucket_keys | grep -qxF "$PREFIX/$k" || missing=1
        done
        ((missing == 0)) && return 0
        sleep 0.5
    done
    echo "bucket keys now: $(bucket_keys | tr '\n' ' ')" >&2
    return 1
}
# tree DIR: "path sha256" of every file, sorted (state dir excluded).
tree() { (cd "$1" && find . -path ./.etlfs -prune -o -type f -print0 | sort -z |
    xargs -0r sha256sum); }

# raw_view DIR: a private bind of DIR at DIR-raw, which shows the local files under the mount
# from the host.
raw_view() {
    mkdir -p "$1-raw"
    mount --bind "$1" "$1-raw" && SHARED_DIRS+=("$1-raw") &&
        mount --make-private "$1-raw" || die "could not bind $1 privately"
}
# local_files DIR: the files under DIR's mount (its -raw view), sorted.
local_files() { (cd "$1-raw" && find . -path ./.etlfs -prune -o -type f -print | sort); }
