#!/usr/bin/env bash
# Build etlfs and mount it over a directory, in the foreground (Ctrl-C unmounts).
#
#   scripts/run.sh DIR                 # mount in place over DIR
#   scripts/run.sh --local SRC DIR     # serve SRC at DIR
#
# Run it as yourself: it builds with your Rust toolchain (a first build takes several minutes;
# cargo shows its progress), then mounts as root, which mounting needs — at once in a root
# shell (a container often has no sudo), through sudo otherwise. Needs /dev/fuse.
set -euo pipefail

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
command -v cargo >/dev/null ||
    die "cargo not found: install Rust with rustup (https://rustup.rs), and run this script as \
yourself rather than with sudo (it asks for sudo itself to mount)"
printf '==> building etlfs (release; a first build takes several minutes)\n' >&2
cargo build --release --manifest-path "$repo/Cargo.toml"
bin=${CARGO_TARGET_DIR:-$repo/target}/release/etlfs

if [[ $(id -u) == 0 ]]; then
    exec "$bin" mount "$@"
fi
command -v sudo >/dev/null ||
    die "mounting needs root (or CAP_SYS_ADMIN) and sudo is not installed: run this as root"
printf '==> mounting needs root: running etlfs with sudo\n' >&2
exec sudo "$bin" mount "$@"
