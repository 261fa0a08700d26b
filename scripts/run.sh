#!/usr/bin/env bash
# Build etlfs and mount it over a directory, in the foreground (Ctrl-C unmounts).
#
#   scripts/run.sh DIR                 # mount in place over DIR
#   scripts/run.sh --local SRC DIR     # serve SRC at DIR
#
# Needs root (or CAP_SYS_ADMIN) and /dev/fuse. Everything else is built from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
exec ./target/release/etlfs mount "$@"
