#!/usr/bin/env bash
# Benchmark: etlfs against the native disk, `rclone mount` and `rclone copy`, side by side, in
# one run.
#
#   sudo scripts/bench.sh            # needs root and /dev/fuse; about 10 minutes at the defaults
#   sudo BENCH_SECTIONS=scale scripts/bench.sh   # 100,000 objects: about 10 minutes more
#
# Sections (BENCH_SECTIONS, default "local bucket restore oneshot"), each printing one table:
#   local    native disk vs etlfs in passthrough and daemon mode (uploads held back: below), and
#            in passthrough mode with the mirror uploading to its FILESYSTEM bucket at the default
#            upload delay ("etlfs, uploading"), and the same workloads through `rclone mount
#            --vfs-cache-mode full` on the S3 server (BENCH_LOCAL_RCLONE)
#   bucket   time from the last close of a Kubecost write pass (BENCH_KC_N x 64 KiB) to all
#            its files being in an S3 bucket: etlfs (--upload-delay BENCH_UPLOAD_DELAY) vs
#            `rclone mount --vfs-cache-mode full --vfs-write-back BENCH_UPLOAD_DELAY`, and the CPU
#            seconds each daemon spends per 1,000 such files and per GiB of one large file
#   restore  a new node's restore of BENCH_RESTORE_N x BENCH_RESTORE_SIZE files at a real
#            bucket's latency (BENCH_LATENCY_MS per request, added by `fsbench delayproxy` in
#            front of the S3 server), each into an empty directory: `etlfs restore`, `etlfs
#            mount` until every file is local, and `etlfs mount` with a reader of every file,
#            against `rclone copy` (the reference; targets: <= 1.0x, <= 1.0x, <= 1.25x); and the
#            time to the first byte of a BENCH_TTFB_SIZE bucket-only file through a fresh
#            `etlfs mount --no-prefetch`, beside `rclone cat --count 1` (no target)
#   oneshot  `etlfs backup` of BENCH_ONESHOT_N x 64 KiB files into an empty bucket and
#            `etlfs restore` of them into an empty directory, vs `rclone copy` both ways (and
#            `cp -a` disk to disk for reference). Target: faster than rclone.
#   history  bucket requests per Kubecost rewrite with history off, at its defaults and keeping
#            every version (not in the default set)
#   scale    BENCH_SCALE_N objects in the bucket (written by `etlfs backup`): seconds from
#            starting `etlfs mount` until the directory is mounted and until /readyz answers
#            200 (target <= 5 s), and the daemon's VmRSS/VmHWM once every file has been stat'ed
#            through the mount (target <= 64 MiB); both for a new node (empty directory, every
#            file only in the bucket) and for a restart (all files local and mirrored). Also a
#            new node at the defaults, which prefetches every file: its peak VmRSS meanwhile
#            (target <= 64 MiB) and the seconds until all are local. Not in the default set
#            because of its length.
# The last four run against an S3 server on 127.0.0.1 chosen by BENCH_S3 (below), started by
# this script and stopped on exit (also on failure or Ctrl-C); rclone is the Debian package
# (installed if missing).
#
# Every workload is run by the compiled driver examples/fsbench.rs (it prints the seconds of the
# timed part). The "local" section uses three directories on the same filesystem:
#   native       a plain directory
#   passthrough  a directory with `etlfs mount DIR` over it (default mode, FUSE passthrough)
#   daemon       a directory with `etlfs mount --no-passthrough DIR` over it
# The modes are interleaved within each repetition, so drift (page cache, host noise) hits them
# alike; the table shows the MEDIAN of BENCH_REPEAT repetitions, after BENCH_WARMUP unreported
# ones. Ratios are etlfs/native: throughput ratios for MiB/s rows, time ratios for ms rows.
# PASS/MISS is judged for the passthrough column against the target.
#
# Environment:
#   BENCH_DIR       base directory for the work trees and logs   (default /tmp/etlfs-bench)
#   BENCH_REPEAT    reported repetitions per workload            (default 3)
#   BENCH_WARMUP    unreported warm-up repetitions               (default 1)
#   BENCH_SEQ_MIB   size of the sequential file in MiB           (default 256)
#   BENCH_SMALL_N   number of 4 KiB files for create/stat        (default 5000)
#   BENCH_KC_N      files in the Kubecost pattern (local, bucket) (default 300)
#   BENCH_KC_CYCLES cycles of the Kubecost pattern               (default 3)
#   BENCH_CPU_MIB   bucket: the large file whose upload CPU is measured (default 256)
#   BENCH_COLD      1 = also measure cold reads (drop_caches)    (default 1)
#   BENCH_LOCAL_RCLONE 1 = the local section also runs every workload through rclone mount
#                   (write-back held for an hour, like etlfs' uploads), shown as a ratio
#                   etlfs/rclone (default 1; 0 skips it and the S3 server for that section)
#   BENCH_SECTIONS  sections to run, space separated   (default "local bucket restore oneshot")
#   BENCH_S3        the S3 server of bucket/restore/oneshot/scale (default s3s-fs):
#                   s3s-fs        s3s-fs 0.14.1 built with scripts/s3s-fs-list-cache.patch
#                                 (built by this script on first use, ~5 min)
#                   s3s-fs-stock  s3s-fs 0.14.1 as published (cargo install on first use)
#                   moto          moto via scripts/servers.sh (the correctness tests' server)
#   BENCH_UPLOAD_DELAY  bucket: upload delay of both systems, whole seconds (default 1)
#   BENCH_S3_TIMEOUT    bucket: seconds to wait for the bucket to have all files; restore:
#                   for one restore (or one first byte) before giving up  (default 120)
#   BENCH_ONESHOT_N oneshot: number of 64 KiB files              (default 10000)
#   BENCH_RESTORE_N restore: number of files                     (default 2000)
#   BENCH_RESTORE_SIZE  restore: bytes per file                  (default 65536)
#   BENCH_TTFB_SIZE restore: bytes of the first-byte file        (default 1073741824, 1 GiB)
#   BENCH_LATENCY_MS    restore: delay of each request and each new connection through the
#                   delay proxy, in ms (a real bucket: 10-50)    (default 20)
#   BENCH_RCLONE_COPY_ARGS  oneshot, restore: extra `rclone copy` arguments (default
#                   "--transfers 16 --checkers 16": see scripts/bench/s3.sh; "" = rclone's
#                   defaults)
#   BENCH_SCALE_N   scale: number of objects                     (default 100000)
#   BENCH_SCALE_SIZE    scale: bytes per object                  (default 1024)
#   BENCH_SCALE_DIRS    scale: directories they are spread over (0 = all in one; default 10)
#   BENCH_ETLFS_ARGS extra `etlfs mount` arguments for both etlfs modes
#                   (default "--upload-delay 1h --drain-timeout 0s": see below; set it to ""
#                   to measure with bucket uploads running in the background)
#   BENCH_STAT_COLD how to make the metadata cache cold before "stat, first pass":
#                   "drop" (echo 2 > drop_caches, default) or "remount" (remount etlfs; note
#                   that a restarted etlfs at once uploads what it had not uploaded yet)
#   BENCH_NO_BUILD  1 = use the existing release binaries
#   BENCH_KEEP      1 = keep the work trees afterwards (logs and samples are always kept)
#
# Notes on method:
# - Nothing is fsync'ed; writes are timed up to and including close(2). `sync` runs before each
#   timed run (outside the timing) so that writeback from earlier runs does not land in it.
# - The sequential file is deleted before each write (outside the timing), so the page cache
#   pages freed by the previous run are reused: on a VM, first-touch of never-used guest memory
#   costs several times more than the copy itself and would otherwise dominate.
# - Small files are never deleted during the run: ext4 without a journal (like the root of
#   some VMs) skips inodes deleted in the last 60-300 s when allocating, which makes creates
#   after mass deletes several times slower. The cleanup at the end deletes all work files, so
#   leave a few minutes between runs (or use a fresh BENCH_DIR filesystem) for stable numbers.
# - "stat, first pass": dentries and inodes are dropped (echo 2 > /proc/sys/vm/drop_caches)
#   right before it in every mode, so each stat through etlfs is a FUSE LOOKUP (as on a fresh
#   mount) and each native stat re-reads its inode from the buffer cache. With
#   BENCH_STAT_COLD=remount etlfs is remounted instead and the native dentry cache stays warm.
#   "stat, repeat" is the same stat loop again right after.
# - Bucket mirroring is kept out of the timings by default: with --upload-delay 1h nothing is
#   uploaded during the run (changes are still recorded in etlfs' journal, which is timed),
#   and --drain-timeout 0s lets it stop at once. Upload cost belongs in its own section.
# - No --config is passed and ETLFS_CONFIG is ignored, so etlfs uses its default FILESYSTEM
#   bucket beside each work tree (BENCH_DIR/.MODE.etlfs-bucket), removed afterwards.
# - The binaries are copied to BENCH_DIR/bin before the first mount, so a rebuild in the same
#   target directory during the run (another checkout user) cannot change what is measured.
#
# The parts, in scripts/bench/: setup.sh (build, mounts, cleanup), report.sh (samples and
# tables), s3.sh (the S3 server, the delay proxy, buckets; its notes say why s3s-fs and how
# rclone is run against it) and one file per section, each starting with the notes on its
# method. Adding a section: write scripts/bench/NAME.sh with `section_NAME`, which fills
# ROWS/SAMPLES with `define_row` and `measure` (see section_local) and ends with `print_table`
# (or `print_abs_table` for absolute targets, as section_scale); source it below; then run
# with BENCH_SECTIONS="local NAME".

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
ETLFS=$TARGET_DIR/release/etlfs
FSBENCH=$TARGET_DIR/release/examples/fsbench

BENCH_DIR=${BENCH_DIR:-/tmp/etlfs-bench}
REPEAT=${BENCH_REPEAT:-3}
WARMUP=${BENCH_WARMUP:-1}
SEQ_MIB=${BENCH_SEQ_MIB:-256}
SMALL_N=${BENCH_SMALL_N:-5000}
SMALL_SIZE=4096
KC_N=${BENCH_KC_N:-300}
KC_SIZE=65536
KC_CYCLES=${BENCH_KC_CYCLES:-3}
CPU_MIB=${BENCH_CPU_MIB:-256}
COLD=${BENCH_COLD:-1}
if [[ -v BENCH_ETLFS_ARGS ]]; then ETLFS_EXTRA=$BENCH_ETLFS_ARGS; else ETLFS_EXTRA="--upload-delay 1h --drain-timeout 0s"; fi
STAT_COLD=${BENCH_STAT_COLD:-drop}
unset ETLFS_CONFIG # never mirror benchmark junk to a bucket configured in the environment
SECTIONS=${BENCH_SECTIONS:-local bucket restore oneshot}
UPLOAD_DELAY=${BENCH_UPLOAD_DELAY:-1}
S3_TIMEOUT=${BENCH_S3_TIMEOUT:-120}
S3_KIND=${BENCH_S3:-s3s-fs}
ONESHOT_N=${BENCH_ONESHOT_N:-10000}
ONESHOT_SIZE=65536
if [[ -v BENCH_RCLONE_COPY_ARGS ]]; then RCLONE_COPY_ARGS=$BENCH_RCLONE_COPY_ARGS; else RCLONE_COPY_ARGS="--transfers 16 --checkers 16"; fi
SCALE_N=${BENCH_SCALE_N:-100000}
SCALE_SIZE=${BENCH_SCALE_SIZE:-1024}
SCALE_DIRS=${BENCH_SCALE_DIRS:-10}
RESTORE_N=${BENCH_RESTORE_N:-2000}
RESTORE_SIZE=${BENCH_RESTORE_SIZE:-65536}
TTFB_SIZE=${BENCH_TTFB_SIZE:-1073741824}
LATENCY_MS=${BENCH_LATENCY_MS:-20}
S3S_VERSION=0.14.1
# Servers of another run (scripts/test.sh in this shell, say) are not ours to reuse or stop.
unset ETLFS_TEST_SERVERS_DIR
# shellcheck source=scripts/servers.sh
source "$ROOT/scripts/servers.sh"

# etlfs modes: name -> extra `etlfs mount` arguments. "native" is the plain-directory baseline.
# "mirroring" is passthrough with the mirror uploading as it does for users (the default upload
# delay), where the others hold uploads back (BENCH_ETLFS_ARGS).
declare -A MODE_ARGS=([passthrough]="" [daemon]="--no-passthrough" [mirroring]="")
declare -A MODE_DIR=()   # mode -> its directory (the mount point for etlfs modes)
declare -A MODE_PID=()   # mode -> pid of its running etlfs (or rclone)
declare -A MODE_LOG=()   # mode -> the log file of its etlfs (or rclone)
declare -A MODE_LABEL=() # mode -> its column header (default etlfs-MODE)
declare -A SAMPLES=()    # "row|mode" -> space-separated seconds
declare -A ROW_LABEL=() ROW_KIND=() ROW_MIB=() ROW_TARGET=() ROW_MAX=()
ROWS=()
LOG_DIR=
TABLE_REF= # print_table: a second reference mode (see there)
SAMPLES_FILE=
S3_DIR=     # BENCH_DIR/s3: work trees, configs, rclone caches and s3s-fs data of the S3 sections
S3_EP=      # http://127.0.0.1:PORT of the S3 server, once started
S3_PID=     # pid of our s3s-fs (moto is started and stopped by scripts/servers.sh)
S3_DATA=    # s3s-fs: its root directory (a bucket is a subdirectory)
S3_LABEL=   # the S3 server, for table titles
S3_AK="test" # the S3 keys of the server (s3s-fs checks signatures; moto takes any)
S3_SK="test"
RCLONE_ENV=() # env ... : the environment that makes rclone's remote "s3" the test server
DELAY_EP=     # http://127.0.0.1:PORT of the delay proxy in front of it, once started
DELAY_PID=    # pid of the delay proxy
RCLONE_PROXY_ENV=() # RCLONE_ENV with the delay proxy as the endpoint

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=scripts/bench/setup.sh
source "$ROOT/scripts/bench/setup.sh"
# shellcheck source=scripts/bench/report.sh
source "$ROOT/scripts/bench/report.sh"
# shellcheck source=scripts/bench/s3.sh
source "$ROOT/scripts/bench/s3.sh"
# shellcheck source=scripts/bench/local.sh
source "$ROOT/scripts/bench/local.sh"
# shellcheck source=scripts/bench/bucket.sh
source "$ROOT/scripts/bench/bucket.sh"
# shellcheck source=scripts/bench/restore.sh
source "$ROOT/scripts/bench/restore.sh"
# shellcheck source=scripts/bench/oneshot.sh
source "$ROOT/scripts/bench/oneshot.sh"
# shellcheck source=scripts/bench/scale.sh
source "$ROOT/scripts/bench/scale.sh"
# shellcheck source=scripts/bench/history.sh
source "$ROOT/scripts/bench/history.sh"

main() {
    local s start=$SECONDS
    preflight
    build
    trap cleanup EXIT
    undefer_signals # installs the INT and TERM traps
    prepare_dirs
    log "kernel $(uname -r), $(nproc) CPUs; repeat $REPEAT, warm-up $WARMUP; stat cold by $STAT_COLD"
    log "etlfs mount [--no-passthrough] $ETLFS_EXTRA DIR"
    local load
    read -r load _ </proc/loadavg
    if awk -v l="$load" -v n="$(nproc)" 'BEGIN { exit !(l > n / 4) }'; then
        log "warning: load average is $load: other work on this machine will make the numbers noisy"
    fi
    for s in $SECTIONS; do
        declare -F "section_$s" >/dev/null || die "unknown section: $s"
        "section_$s"
    done
    log "done in $((SECONDS - start)) s; raw samples in $SAMPLES_FILE"
}

main "$@"
