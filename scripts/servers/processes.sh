# shellcheck shell=bash
# shellcheck disable=SC2154 # _servers_lib_dir: set by scripts/servers.sh, which sources this
# Process plumbing of the test servers (sourced by scripts/servers.sh): free ports, starting a
# process in a session of its own with its PID recorded, waiting until it answers, and telling
# our processes from later ones that reuse a PID.

# _servers_free_ports N: N distinct free TCP ports on 127.0.0.1, one per line (ports.py says
# where they are taken from, and why).
_servers_free_ports() {
    "$(_servers_cache)/venv/bin/python" "$_servers_lib_dir/servers/ports.py" free "$1"
}

# _servers_port_free PORT: whether nothing listens on 127.0.0.1:PORT and it can be bound.
_servers_port_free() {
    "$(_servers_cache)/venv/bin/python" "$_servers_lib_dir/servers/ports.py" check "$1"
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

