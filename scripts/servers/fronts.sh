# shellcheck shell=bash
# shellcheck disable=SC2154 # _servers_lib_dir: set by scripts/servers.sh, which sources this
# The processes behind each test endpoint and their outages (sourced by scripts/servers.sh,
# which documents the interface). Backends (moto, Azurite, fake-gcs-server) keep the state and
# never stop; fronts (gate.py, gcs_adapter.py) are what an outage test stops and starts.

_servers_start_backend() {
    local name=$1 dir cache port
    dir=$(_servers_dir) || return 1
    cache=$(_servers_cache)
    case $name in
    s3)
        port=$(_servers_port moto)
        _servers_spawn moto "$cache/venv/bin/python" "$_servers_lib_dir/servers/moto_server.py" \
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
        _servers_spawn "$front" "$cache/venv/bin/python" "$_servers_lib_dir/servers/gate.py" \
            "$port" "$(_servers_port moto)" || return 1
        _servers_wait "$front" "http://127.0.0.1:$port/"
        ;;
    azure)
        _servers_spawn "$front" "$cache/venv/bin/python" "$_servers_lib_dir/servers/gate.py" \
            "$port" "$(_servers_port azurite)" || return 1
        _servers_wait "$front" "http://127.0.0.1:$port/$SERVERS_AZURE_ACCOUNT?comp=list"
        ;;
    gcs)
        # Every adapter shares one state directory, so a multipart upload started through
        # one front can be finished through another (or after a restart).
        mkdir -p "$dir/data/gcs-adapter"
        _servers_spawn "$front" "$cache/venv/bin/python" \
            "$_servers_lib_dir/servers/gcs_adapter.py" \
            --port "$port" --upstream "http://127.0.0.1:$(_servers_port fake-gcs)" \
            --state-dir "$dir/data/gcs-adapter" || return 1
        _servers_wait "$front" "http://127.0.0.1:$port/storage/v1/b"
        ;;
    esac
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

