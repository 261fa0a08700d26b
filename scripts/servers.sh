# shellcheck shell=bash
# Local object-storage servers for the etlfs tests: moto (S3), Azurite (Azure Blob) and
# fake-gcs-server (GCS, behind scripts/servers/gcs_adapter.py). Everything listens on 127.0.0.1
# only.
#
# Usage (a library: SOURCE it, do not run it):
#
#     source scripts/servers.sh
#     servers_install             # idempotent; installs into $ETLFS_TEST_CACHE
#     trap servers_stop EXIT      # safe to call twice, and when nothing was started
#     servers_start               # starts all servers, waits for them, exports ETLFS_TEST_*
#     cargo test ...
#
# servers_start exports, for the tests (tests/it/common/servers.rs reads them):
#     ETLFS_TEST_S3_ENDPOINT         http://127.0.0.1:PORT (path-style; any access key works)
#     ETLFS_TEST_AZURE_ENDPOINT      http://127.0.0.1:PORT/devstoreaccount1
#     ETLFS_TEST_AZURE_ACCOUNT       devstoreaccount1
#     ETLFS_TEST_AZURE_KEY           the well-known (public) Azurite development key
#     ETLFS_TEST_GCS_ENDPOINT        http://127.0.0.1:PORT: the gcs_base_url for object_store
#                                    (the adapter; reads and writes both work through it)
#     ETLFS_TEST_{S3,AZURE,GCS}_SERVER  the storage server itself, bypassing the front (see
#                                    below): for creating buckets while a front is stopped
#     ETLFS_TEST_AZURE_MKCONTAINER   executable: `$ETLFS_TEST_AZURE_MKCONTAINER NAME` creates a
#                                    container (SharedKey-signed PUT ?restype=container)
#     ETLFS_TEST_{S3,AZURE,GCS}_CTL  executable: outages, see below
#     ETLFS_TEST_RESTART_KEEPS_STATE 1: after an outage every bucket and object is still there
#     ETLFS_TEST_SERVERS_DIR         the run directory (data, pids, ports, bin/ links)
#     ETLFS_TEST_SERVERS_LOGDIR      one log file per process
#     ETLFS_TEST_SERVERS_PIDS        the PIDs started by servers_start (space-separated)
#     ETLFS_TEST_SERVERS_PIDFILE     the PIDs of every process running now, one per line
#                                    (fronts restarted by a ctl script included)
#
# Outages. Each endpoint is a front process in front of the storage server: a small TCP
# forwarder ("gate") for moto and Azurite, the GCS adapter for fake-gcs-server. The storage
# servers themselves never stop, so no state is lost (moto is in-memory and cannot persist:
# killing it would lose every bucket). Shell: servers_{stop,start,pause,resume,status}_one NAME
# [PORT]; tests: `$ETLFS_TEST_S3_CTL stop|start|pause|resume|status [PORT]` (NAME is s3, azure
# or gcs; same for _AZURE_CTL and _GCS_CTL):
#     stop    kills the front: the port refuses connections, open ones are reset.
#     start   starts the front again on the SAME port (or resumes a paused one) and waits until
#             it answers. Nothing needs to be re-created.
#     pause / resume   SIGSTOP / SIGCONT: connections are accepted but hang.
#     new     (`CTL new`, servers_new_front NAME) starts a private front on a fresh port and
#             prints the port: an outage of it hits only the test that uses it, while an
#             outage of the shared endpoint hits every test running at the time.
#     remove PORT      stops a private front for good.
#
# moto quirk: its WSGI server drops request headers whose name contains "_", so stock
# moto_server silently loses user metadata such as x-amz-meta-etlfs_sha256 (real S3 keeps it).
# moto runs here through a small launcher (scripts/servers/moto_server.py) that carries those
# names through; tests/it/servers.rs checks the metadata round trip on every server.
#
# Settings (environment): ETLFS_TEST_CACHE (default ~/.cache/etlfs-test), ETLFS_TEST_PYTHON
# (the python3 used to make the venv), TMPDIR (where the run directory goes),
# ETLFS_TEST_KEEP_SERVERS_DIR=1 (servers_stop keeps the run directory and its logs).
#
# The parts, in scripts/servers/: install.sh (servers_install), processes.sh (spawning and
# watching processes), fronts.sh (backends, fronts and the outage functions), the Python
# programs they run (gate.py, moto_server.py, gcs_adapter.py and its gcs_*.py modules,
# ports.py, azure_mkcontainer.py) and the executables linked into RUN_DIR/bin for the tests
# (ctl, azure-mkcontainer).

SERVERS_MOTO_VERSION=5.2.1
SERVERS_FAKE_GCS_WRAPPER_VERSION=0.1.1
SERVERS_AZURITE_VERSION=3.35.0 # 3.36+ needs node >= 21; Debian 12 has node 18
SERVERS_AZURE_ACCOUNT=devstoreaccount1
# The well-known Azurite/Azure Storage Emulator development key (public, not a secret).
SERVERS_AZURE_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
SERVERS_NAMES=(s3 azure gcs)

_servers_lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

_servers_log() { printf '==> servers: %s\n' "$*" >&2; }
_servers_err() { printf 'error: servers: %s\n' "$*" >&2; }

_servers_cache() { printf '%s' "${ETLFS_TEST_CACHE:-$HOME/.cache/etlfs-test}"; }

# shellcheck source=scripts/servers/install.sh
source "$_servers_lib_dir/servers/install.sh"
# shellcheck source=scripts/servers/processes.sh
source "$_servers_lib_dir/servers/processes.sh"
# shellcheck source=scripts/servers/fronts.sh
source "$_servers_lib_dir/servers/fronts.sh"

# _servers_link_helpers DIR CACHE: the executables the tests run, RUN_DIR/bin/{s3,azure,gcs}-ctl
# and RUN_DIR/bin/azure-mkcontainer: links to scripts/servers/ctl and azure-mkcontainer, which
# read the run directory they are linked from (and the cache directory recorded in it).
_servers_link_helpers() {
    local dir=$1 cache=$2 name
    mkdir -p "$dir/bin"
    printf '%s' "$cache" >"$dir/cache-dir"
    ln -s "$_servers_lib_dir/servers/azure-mkcontainer" "$dir/bin/azure-mkcontainer"
    for name in s3 azure gcs; do
        ln -s "$_servers_lib_dir/servers/ctl" "$dir/bin/$name-ctl"
    done
}

# servers_start: starts every server on free 127.0.0.1 ports, waits until each answers, and
# exports the ETLFS_TEST_* variables listed at the top. On failure, stops what it started.
servers_start() {
    local cache dir ports name i
    cache=$(_servers_cache)
    [[ -x $cache/venv/bin/moto_server && -x $cache/node/node_modules/.bin/azurite-blob ]] || {
        _servers_err "the servers are not installed in $cache: call servers_install first"
        return 1
    }
    if [[ -n ${ETLFS_TEST_SERVERS_DIR:-} && -f ${ETLFS_TEST_SERVERS_DIR}/pids.all ]]; then
        _servers_err "servers are already running ($ETLFS_TEST_SERVERS_DIR): call servers_stop first"
        return 1
    fi
    dir=$(mktemp -d "${TMPDIR:-/tmp}/etlfs-servers.XXXXXX") || return 1
    mkdir -p "$dir/logs" "$dir/pids" "$dir/ports" "$dir/data"
    : >"$dir/pids.all"
    export ETLFS_TEST_SERVERS_DIR=$dir ETLFS_TEST_SERVERS_LOGDIR=$dir/logs
    export ETLFS_TEST_SERVERS_PIDFILE=$dir/pids.all

    mapfile -t ports < <(_servers_free_ports 6)
    ((${#ports[@]} == 6)) || {
        _servers_err "could not find free ports on 127.0.0.1"
        servers_stop
        return 1
    }
    i=0
    for name in s3 azure gcs moto azurite fake-gcs; do
        printf '%s' "${ports[i]}" >"$dir/ports/$name"
        i=$((i + 1))
    done
    _servers_link_helpers "$dir" "$cache"

    local t0=$SECONDS
    for name in s3 azure gcs; do
        if ! _servers_start_backend "$name" ||
            ! _servers_start_front "$name" "$(_servers_port "$name")" "$name-front"; then
            _servers_err "could not start the $name server (logs: $dir/logs)"
            servers_stop
            return 1
        fi
    done

    export ETLFS_TEST_S3_ENDPOINT="http://127.0.0.1:${ports[0]}"
    export ETLFS_TEST_AZURE_ENDPOINT="http://127.0.0.1:${ports[1]}/$SERVERS_AZURE_ACCOUNT"
    export ETLFS_TEST_AZURE_ACCOUNT=$SERVERS_AZURE_ACCOUNT
    export ETLFS_TEST_AZURE_KEY=$SERVERS_AZURE_KEY
    export ETLFS_TEST_AZURE_MKCONTAINER=$dir/bin/azure-mkcontainer
    export ETLFS_TEST_GCS_ENDPOINT="http://127.0.0.1:${ports[2]}"
    export ETLFS_TEST_S3_SERVER="http://127.0.0.1:${ports[3]}"
    export ETLFS_TEST_AZURE_SERVER="http://127.0.0.1:${ports[4]}/$SERVERS_AZURE_ACCOUNT"
    export ETLFS_TEST_GCS_SERVER="http://127.0.0.1:${ports[5]}"
    export ETLFS_TEST_S3_CTL=$dir/bin/s3-ctl
    export ETLFS_TEST_AZURE_CTL=$dir/bin/azure-ctl
    export ETLFS_TEST_GCS_CTL=$dir/bin/gcs-ctl
    export ETLFS_TEST_RESTART_KEEPS_STATE=1
    ETLFS_TEST_SERVERS_PIDS=$(tr '\n' ' ' <"$dir/pids.all")
    export ETLFS_TEST_SERVERS_PIDS=${ETLFS_TEST_SERVERS_PIDS% }
    _servers_log "S3 $ETLFS_TEST_S3_ENDPOINT, Azure $ETLFS_TEST_AZURE_ENDPOINT, GCS $ETLFS_TEST_GCS_ENDPOINT (up in $((SECONDS - t0))s; logs in $dir/logs)"
}

# servers_stop: stops every process servers_start (and the ctl scripts) started, and removes
# the run directory unless ETLFS_TEST_KEEP_SERVERS_DIR is set. Silent; safe to call twice and
# when nothing was started.
servers_stop() {
    local dir=${ETLFS_TEST_SERVERS_DIR:-} pid
    if [[ -n $dir && -f $dir/pids.all ]]; then
        # Every PID ever recorded (fronts restarted by a ctl script included); a PID whose
        # process is gone is skipped. Fronts first, so nobody sees a half-stopped backend.
        local ours=()
        while read -r pid; do
            _servers_ours "$pid" || continue
            ours+=("$pid")
            kill -CONT "$pid" 2>/dev/null || true
            kill "$pid" 2>/dev/null || true
        done < <(tac "$dir/pids.all")
        for pid in "${ours[@]}"; do
            _servers_kill "$pid" || true
        done
        if [[ -z ${ETLFS_TEST_KEEP_SERVERS_DIR:-} ]]; then
            rm -rf "$dir"
        fi
    fi
    unset ETLFS_TEST_SERVERS_DIR ETLFS_TEST_SERVERS_LOGDIR ETLFS_TEST_SERVERS_PIDFILE \
        ETLFS_TEST_SERVERS_PIDS ETLFS_TEST_S3_ENDPOINT ETLFS_TEST_AZURE_ENDPOINT \
        ETLFS_TEST_AZURE_ACCOUNT ETLFS_TEST_AZURE_KEY ETLFS_TEST_AZURE_MKCONTAINER \
        ETLFS_TEST_GCS_ENDPOINT ETLFS_TEST_S3_SERVER ETLFS_TEST_AZURE_SERVER \
        ETLFS_TEST_GCS_SERVER ETLFS_TEST_S3_CTL ETLFS_TEST_AZURE_CTL \
        ETLFS_TEST_GCS_CTL ETLFS_TEST_RESTART_KEEPS_STATE
    return 0
}
