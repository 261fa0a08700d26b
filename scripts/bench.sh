#!/usr/bin/env bash
# Benchmark: etlfs against the native disk, `rclone mount` and `rclone copy`, side by side, in
# one run.
#
#   sudo scripts/bench.sh            # needs root and /dev/fuse; about 10 minutes at the defaults
#   sudo BENCH_SECTIONS=scale scripts/bench.sh   # 100,000 objects: about 10 minutes more
#
# Sections (BENCH_SECTIONS, default "local bucket restore oneshot"), each printing one table:
#   local    native disk vs etlfs in passthrough and daemon mode (below), and the same workloads
#            through `rclone mount --vfs-cache-mode full` on the S3 server (BENCH_LOCAL_RCLONE)
#   bucket   time from the last close of a Kubecost write pass (BENCH_KC_N x 64 KiB) to all
#            its files being in an S3 bucket: etlfs (--upload-delay BENCH_UPLOAD_DELAY) vs
#            `rclone mount --vfs-cache-mode full --vfs-write-back BENCH_UPLOAD_DELAY`
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
#   BENCH_RCLONE_COPY_ARGS  oneshot, restore: extra `rclone copy` arguments
#                   (default "--transfers 16 --checkers 16": see below; "" = rclone's defaults)
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
# Notes on the S3 server (BENCH_S3):
# - Throughput is measured against s3s-fs, not moto: moto (in-memory, one Python process) is
#   itself the bottleneck (`rclone copy` of 10,000 x 64 KiB: 48 s into moto, ~10 s into
#   s3s-fs), so it would measure itself; it stays the server of the correctness tests. With
#   BENCH_S3=moto the script runs moto itself (ETLFS_TEST_S3_SERVER), not the outage front the
#   tests use (one more Python hop that neither system needs).
# - s3s-fs stores each object as a file under BENCH_DIR/s3/s3s-data/BUCKET (a bucket is made
#   with mkdir) and checks request signatures: etlfs, rclone and fsbench all sign with the
#   keys the script starts it with.
# - Stock s3s-fs walks and stats the whole bucket for every 1000-key page of ListObjectsV2,
#   so listing N objects costs O(N^2): 10,000 objects list in ~1.3 s, 100,000 in ~190 s, and
#   anything that lists 100,000 objects (every `etlfs mount` start) would measure that.
#   BENCH_S3=s3s-fs therefore builds s3s-fs with scripts/s3s-fs-list-cache.patch, which keeps
#   the sorted result of one walk while no directory of the bucket changes (100,000 objects:
#   ~4-5 s for the first listing, ~0.15 s for the next), with or without a delimiter (etlfs
#   lists directory by directory, delimiter "/"). Its answers are the stock server's;
#   BENCH_S3=s3s-fs-stock measures the published crate.
# - rclone and s3s-fs: (1) `--fast-list` must not be used: rclone's recursive listing sends
#   `delimiter=` (empty), which s3s-fs answers with an empty listing, so `rclone copy
#   --fast-list s3:BUCKET DIR` silently copies nothing. Its normal per-directory listing
#   (delimiter "/") works. (2) With its default 4 transfers a download of 10,000 x 64 KiB
#   took 45-47 s against ~13-14 s with 16 (8: 24 s, 32: 14 s; uploads 11-16 s either way):
#   each s3s-fs GET has a high latency that only parallelism hides. This, not the listing,
#   is what made rclone's download from s3s-fs look slow (133 s) in earlier notes. Hence
#   "oneshot" gives rclone copy --transfers 16 --checkers 16: the same 16 transfers in
#   flight as etlfs backup/restore (BENCH_RCLONE_COPY_ARGS="" measures rclone's defaults).
#
# Notes on the "bucket" section:
# - Each system writes to its own bucket through its own mount. The absolute seconds say as
#   much about the server as about the client; the ratio is the comparison.
# - Both systems keep their defaults except the upload delay (and --drain-timeout 5s for
#   etlfs, so that Ctrl-C stops quickly): etlfs uploads 8 files at once
#   (--upload-concurrency), rclone 4 (--transfers).
# - One mount per system for the whole section; each round writes a new subdirectory kc.ROUND
#   with `fsbench kcupload`, which lists the bucket (ListObjectsV2 under that prefix) every
#   100 ms from the last close until all files are there with their full size. The time is
#   measured to the end of the listing that showed them all, so it is at most ~0.1 s + one
#   listing late. Goal: at most BENCH_UPLOAD_DELAY + 2 s, and below rclone.
#
# Notes on the "restore" section:
# - A real bucket costs 10-50 ms per request, which a server on 127.0.0.1 does not: without
#   it a restore measures the client's CPU, not how well it hides the round trips. So every
#   measured request goes through `fsbench delayproxy` (started after the S3 server, stopped
#   by the cleanup), which holds the first chunk of each request and each new connection for
#   BENCH_LATENCY_MS; answers and request bodies pass at loopback speed (no bandwidth limit).
#   etlfs' object-store.yaml and rclone's endpoint both name the proxy.
# - Setup (not measured): BENCH_RESTORE_N files made by `fsbench fill` (each its own content)
#   and one file of BENCH_TTFB_SIZE random bytes, each put into a bucket of its own by
#   `etlfs backup` straight to the server. Both systems restore the same bucket.
# - Each round, in a rotating order, restores into a new empty directory (no etlfs state):
#   `rclone copy BENCH_RCLONE_COPY_ARGS`; `etlfs restore` (16 downloads at once); `etlfs
#   mount` at its defaults (32 downloads at once, prefetch on; --drain-timeout 5s) timed from
#   starting the process to the /status poll (every ~20 ms) that shows restore.files_left 0
#   and restore.prefetch "done"; and the same mount with `fsbench check` started as soon as
#   the directory is mounted, reading f00000.. in name order, each whole (the prefetch goes
#   newest first, the reverse order), timed from starting the process to the reader's end.
#   rclone's time is the reference of all three. (The prefetch alone uses at most 7/8 of the
#   workers, an eighth is kept for opens: so the mount with a reader can finish first.) Each
#   directory is checked afterwards with `fsbench check` (after unmounting: every file must
#   be local). The wall times of `rclone copy` and `etlfs restore` include their start and
#   exit.
# - Then the first byte: a fresh `etlfs mount --no-prefetch` over an empty directory, and the
#   seconds of open + read(1 byte) of the big file (etlfs downloads and verifies the whole
#   object before it serves a byte: this row shows what that costs), beside the whole of
#   `rclone cat --count 1 --discard` (process start, a HEAD, a listing, a ranged GET).
#
# Notes on the "oneshot" section:
# - The files (`fsbench fill`: each with its own content) are made once; each round, in a
#   rotating order, every system backs them up into a new bucket of its own (cp -a: into a
#   directory), then restores that bucket into a new empty directory. Times are wall seconds
#   of the whole command (process start, bucket listing, transfers, exit). After each step
#   the result is checked outside the timing (`fsbench s3check`: the bucket holds exactly the
#   N objects with their sizes; `fsbench check`: every restored file has its exact bytes).
# - The source files and the server's files are in the page cache (`sync` before each step,
#   no cache drop): the numbers are the clients' and the server's CPU and round trips, not
#   the disk's. `etlfs restore` fsyncs every file and its directory before renaming it into
#   place (its durability guarantee); rclone and cp do not.
# - Buckets and directories stay until the end of the section (see the ext4 note above):
#   about 4 GB per round at the defaults.
#
# Notes on the "scale" section:
# - Setup (not timed as a target): BENCH_SCALE_N files made with `fsbench fill`, uploaded by
#   `etlfs backup` (its time is shown), then a first `etlfs mount` over that directory, left
#   running until it has reconciled and nothing is pending, so that the restarts below find
#   etlfs' state as a node that ran before would.
# - Each round: (1) "the server alone": `fsbench s3check` lists the bucket as etlfs does
#   (ListObjectsV2, 1000 keys a page, no delimiter): the floor of a mount start. (2) New node:
#   `etlfs mount` over a new empty directory; MOUNTED and READY are the seconds from starting
#   the process until /proc/self/mountinfo shows the mount and until GET /readyz answers 200
#   (each polled every ~10-20 ms, taken right after the check that first succeeded). Then
#   `find DIR -type f -printf '%s\n'` stats every file through the mount (all bucket-only:
#   nothing is downloaded: this mount runs with --no-prefetch), and VmRSS/VmHWM of the etlfs
#   process are read from /proc/PID/status. (3) New node with prefetch: `etlfs mount` at its
#   defaults over another new empty directory, its /status polled every ~20 ms until
#   restore.files_left is 0 and restore.prefetch "done" (at most 30 min), its VmRSS sampled
#   every 0.5 s meanwhile: the peak of those samples and the seconds from starting the
#   process; the files are checked afterwards. (4) Restart: the same as (2) over the
#   directory holding all the files, with etlfs' state from the previous mount.
# Adding a section: write `section_NAME` that fills ROWS/SAMPLES with `define_row` and `measure`
# (see section_local) and ends with `print_table` (or `print_abs_table` for absolute targets, as
# section_scale); then run with BENCH_SECTIONS="local NAME".

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
declare -A MODE_ARGS=([passthrough]="" [daemon]="--no-passthrough")
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

# ---------------------------------------------------------------------------------------------
# Setup, mounting and cleanup

build() {
    if [[ ${BENCH_NO_BUILD:-0} == 1 ]]; then
        log "BENCH_NO_BUILD=1: using existing binaries"
    else
        log "building etlfs and examples/fsbench (release)"
        (cd "$ROOT" && cargo build --release --quiet --bin etlfs --example fsbench)
    fi
    [[ -x $ETLFS ]] || die "$ETLFS not found"
    [[ -x $FSBENCH ]] || die "$FSBENCH not found"
}

preflight() {
    [[ $(id -u) == 0 ]] || die "run as root (etlfs mount and drop_caches need it)"
    [[ -c /dev/fuse ]] || die "/dev/fuse is missing"
    local v
    for v in REPEAT WARMUP SEQ_MIB SMALL_N KC_N KC_CYCLES UPLOAD_DELAY S3_TIMEOUT ONESHOT_N SCALE_N \
        SCALE_SIZE SCALE_DIRS RESTORE_N RESTORE_SIZE TTFB_SIZE LATENCY_MS; do
        [[ ${!v} =~ ^[0-9]+$ ]] || die "BENCH_$v must be a non-negative integer, not '${!v}'"
    done
    ((REPEAT >= 1 && SEQ_MIB >= 1 && SMALL_N >= 1 && KC_N >= 1 && ONESHOT_N >= 1 && SCALE_N >= 1 &&
        RESTORE_N >= 1 && TTFB_SIZE >= 1)) || die "sizes and BENCH_REPEAT must be >= 1"
    ((SCALE_DIRS <= 100)) || die "BENCH_SCALE_DIRS must be at most 100"
    [[ $S3_KIND == s3s-fs || $S3_KIND == s3s-fs-stock || $S3_KIND == moto ]] ||
        die "BENCH_S3 must be s3s-fs, s3s-fs-stock or moto, not '$S3_KIND'"
    [[ -w /proc/sys/vm/drop_caches ]] || die "cannot write /proc/sys/vm/drop_caches"
    [[ $STAT_COLD == drop || $STAT_COLD == remount ]] || die "BENCH_STAT_COLD must be drop or remount"
    local s
    for s in $SECTIONS; do
        declare -F "section_$s" >/dev/null || die "unknown section: $s"
    done
    if [[ " $SECTIONS " =~ \ (bucket|restore|oneshot|scale)\  || ( " $SECTIONS " == *" local "* && ${BENCH_LOCAL_RCLONE:-1} == 1 ) ]]; then
        command -v curl >/dev/null || servers_apt_install_or_die curl
        command -v rclone >/dev/null || servers_apt_install_or_die rclone
        command -v fusermount >/dev/null || command -v fusermount3 >/dev/null ||
            servers_apt_install_or_die fuse3 # rclone mounts with fusermount
        if [[ $S3_KIND == s3s-fs ]]; then
            command -v patch >/dev/null || servers_apt_install_or_die patch
        fi
    fi
}

servers_apt_install_or_die() {
    log "$1 is missing: installing it"
    _servers_apt_install "$1" || die "could not install $1"
}

# Whether a FUSE filesystem is mounted exactly at $1 (per /proc/self/mountinfo).
is_fuse_mounted() {
    awk -v p="$1" '$5 == p { for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i+1) ~ /^fuse/) f = 1; break } }
                   END { exit !f }' /proc/self/mountinfo
}

# The FUSE mount points at or below directory $1, one per line.
fuse_mounts_under() {
    awk -v p="$1" '$5 == p || index($5, p "/") == 1 {
                       for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i+1) ~ /^fuse/) print $5; break } }' \
        /proc/self/mountinfo
}

# Where etlfs keeps its default FILESYSTEM bucket for mode $1: beside the served directory.
bucket_dir() { printf '%s/.%s.etlfs-bucket' "$BENCH_DIR" "$1"; }

# Prepares an empty work directory per mode under BENCH_DIR.
prepare_dirs() {
    mkdir -p "$BENCH_DIR"
    BENCH_DIR=$(cd "$BENCH_DIR" && pwd -P)
    LOG_DIR=$BENCH_DIR/logs
    SAMPLES_FILE=$BENCH_DIR/samples.tsv
    local m d
    for m in native "${!MODE_ARGS[@]}"; do
        d=$BENCH_DIR/$m
        MODE_DIR[$m]=$d
        # Leftovers of an interrupted run: detach a stale mount, then start afresh.
        while is_fuse_mounted "$d"; do umount -l "$d"; done
        rm -rf "$d" "$(bucket_dir "$m")"
        mkdir -p "$d"
    done
    S3_DIR=$BENCH_DIR/s3
    local mp
    while read -r mp; do umount -l "$mp" || true; done < <(fuse_mounts_under "$S3_DIR")
    rm -rf "$S3_DIR"
    rm -rf "$LOG_DIR"
    mkdir -p "$LOG_DIR"
    printf 'row\tmode\trep\tseconds\n' >"$SAMPLES_FILE"
    # A private copy of the binaries: a rebuild in the shared target directory during the run
    # must not change what is measured.
    mkdir -p "$BENCH_DIR/bin"
    cp "$ETLFS" "$BENCH_DIR/bin/etlfs.new" && mv "$BENCH_DIR/bin/etlfs.new" "$BENCH_DIR/bin/etlfs"
    cp "$FSBENCH" "$BENCH_DIR/bin/fsbench.new" && mv "$BENCH_DIR/bin/fsbench.new" "$BENCH_DIR/bin/fsbench"
    ETLFS=$BENCH_DIR/bin/etlfs
    FSBENCH=$BENCH_DIR/bin/fsbench
    log "work trees under $BENCH_DIR ($(findmnt -n -o FSTYPE,SOURCE -T "$BENCH_DIR" | tr -s " ")); logs in $LOG_DIR"
}

mount_mode() {
    local m=$1
    [[ $m == native ]] && return 0
    if [[ $m == rclone ]]; then
        # The local section's rclone: uploads held back like etlfs' (--upload-delay 1h).
        mount_rclone rclone "${MODE_DIR[rclone]}" bench-local-rclone "$S3_DIR/local-rclone.cache" 3600
        return 0
    fi
    # shellcheck disable=SC2086 # MODE_ARGS and ETLFS_EXTRA hold zero or more words
    start_mount "$m" "${MODE_DIR[$m]}" "$LOG_DIR/etlfs-$m.log" \
        "$ETLFS" mount --listen 127.0.0.1:0 ${MODE_ARGS[$m]} $ETLFS_EXTRA "${MODE_DIR[$m]}"
}

# start_mount MODE DIR LOG COMMAND...: runs COMMAND (a FUSE daemon in the foreground: etlfs, or
# rclone mount) in the background, its output appended to LOG, and waits until DIR is mounted.
start_mount() {
    local m=$1 d=$2 logf=$3 i
    shift 3
    [[ -z ${MODE_PID[$m]:-} ]] || die "$m is already mounted"
    MODE_DIR[$m]=$d
    MODE_LOG[$m]=$logf
    defer_signals # a Ctrl-C between the start and the next line would leave the daemon unknown
    "$@" </dev/null >>"$logf" 2>&1 &
    MODE_PID[$m]=$!
    undefer_signals
    for ((i = 0; i < 3000; i++)); do
        is_fuse_mounted "$d" && return 0
        if ! kill -0 "${MODE_PID[$m]}" 2>/dev/null; then
            wait "${MODE_PID[$m]}" 2>/dev/null || true
            unset 'MODE_PID[$m]'
            tail -n 20 "$logf" >&2 || true
            die "$m: $1 exited before mounting $d (log: $logf)"
        fi
        sleep 0.01
    done
    die "$m: $1 did not mount $d within 30 s (log: $logf)"
}

# Stops the daemon of mode $1 with SIGTERM (etlfs and rclone unmount and exit); detaches the
# mount lazily and kills the process if that does not work.
unmount_mode() {
    local m=$1 d=${MODE_DIR[$1]:-} pid=${MODE_PID[$1]:-} i rc=0
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    # etlfs drains pending bucket uploads on SIGTERM (--drain-timeout, 30 s by default).
    for ((i = 0; i < 1200; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$m (pid $pid) still running 60 s after SIGTERM: detaching and killing it"
        umount -l "$d" 2>/dev/null || true
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || rc=$?
    # rclone answers SIGTERM by unmounting and exiting with 143: that is its clean stop.
    [[ $rc == 0 || ($rc == 143 && $m == rclone*) ]] ||
        log "$m exited with status $rc (see ${MODE_LOG[$m]:-$LOG_DIR})"
    if is_fuse_mounted "$d"; then
        log "$d still mounted after $m exited: umount -l"
        umount -l "$d" 2>/dev/null || true
    fi
    unset 'MODE_PID[$m]'
}

remount_mode() {
    [[ $1 == native ]] && return 0
    unmount_mode "$1"
    mount_mode "$1"
}

# Between defer_signals and undefer_signals, SIGINT and SIGTERM only take effect at the end,
# so that nothing started in between is left out of the cleanup. (Children still get them.)
PENDING_EXIT=
defer_signals() {
    trap 'PENDING_EXIT=130' INT
    trap 'PENDING_EXIT=143' TERM
}
undefer_signals() {
    trap 'exit 130' INT
    trap 'exit 143' TERM
    [[ -z $PENDING_EXIT ]] || exit "$PENDING_EXIT"
}

cleanup() {
    local rc=$? m
    trap - EXIT INT TERM
    # A second Ctrl-C must not cut the cleanup short (the mounts and servers would stay).
    trap '' INT
    ((rc == 0)) || log "stopping (status $rc): unmounting and cleaning up"
    for m in "${!MODE_PID[@]}"; do unmount_mode "$m"; done
    # After the mounts: a draining etlfs still needs its bucket (and the way to it).
    stop_delayproxy
    stop_s3s
    if [[ -n ${ETLFS_TEST_SERVERS_DIR:-} ]]; then
        log "stopping the S3 server"
        servers_stop 2>/dev/null # (silences a harmless race message of servers.sh)
    fi
    if [[ ${BENCH_KEEP:-0} != 1 && -n $LOG_DIR ]]; then
        for m in "${!MODE_DIR[@]}"; do
            [[ ${MODE_DIR[$m]} == "$S3_DIR"/* ]] && continue
            is_fuse_mounted "${MODE_DIR[$m]}" || rm -rf "${MODE_DIR[$m]}" "$(bucket_dir "$m")"
        done
        # Never rm -rf through a mount that is still there (it would delete in its bucket).
        [[ -z $S3_DIR || -n $(fuse_mounts_under "$S3_DIR") ]] || rm -rf "$S3_DIR"
        rm -rf "${BENCH_DIR:?}/bin"
    fi
    exit "$rc"
}

# ---------------------------------------------------------------------------------------------
# Measuring and reporting

# define_row ID LABEL KIND TARGET [MIB]
#   KIND: "tput" (reported in MiB/s, MIB = data size; higher is better), "time" (reported in ms;
#   lower is better) or "secs" (reported in s; lower is better). TARGET: ">=0.95", "<=3" or
#   "<1", compared with the ratio etlfs/baseline, or "-" for none. ROW_MAX[ID]=S adds a limit
#   in seconds on the etlfs median itself.
define_row() {
    ROWS+=("$1")
    ROW_LABEL[$1]=$2
    ROW_KIND[$1]=$3
    ROW_TARGET[$1]=$4
    ROW_MIB[$1]=${5:-0}
}

# measure ROW MODE REP -- fsbench args...   Runs fsbench once; keeps the sample when REP >= 1.
measure() {
    local row=$1 m=$2 rep=$3 t
    shift 4
    t=$("$FSBENCH" "$@")
    record "$row" "$m" "$rep" "$t"
}

# record ROW MODE REP SECONDS: keeps a sample when REP >= 1.
record() {
    if (($3 >= 1)); then
        SAMPLES["$1|$2"]+="$4 "
        printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$SAMPLES_FILE"
    fi
}

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

median() {
    tr ' ' '\n' <<<"$1" | awk 'NF' | sort -g |
        awk '{ a[NR] = $1 } END { if (NR == 0) exit 1; if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# value ROW SECONDS -> the displayed number (MiB/s, ms or s)
value() {
    case ${ROW_KIND[$1]} in
    tput) awk -v s="$2" -v mib="${ROW_MIB[$1]}" 'BEGIN { printf "%.0f", mib / s }' ;;
    secs) awk -v s="$2" 'BEGIN { printf "%.2f", s }' ;;
    mib) awk -v s="$2" 'BEGIN { printf "%.1f", s }' ;;
    *) awk -v s="$2" 'BEGIN { printf "%.1f", s * 1000 }' ;;
    esac
}

# ratio ROW NATIVE_SECONDS ETLFS_SECONDS -> etlfs/native (throughput or time, by the row kind)
ratio() {
    if [[ ${ROW_KIND[$1]} == tput ]]; then
        awk -v n="$2" -v e="$3" 'BEGIN { printf "%.2f", n / e }'
    else
        awk -v n="$2" -v e="$3" 'BEGIN { printf "%.2f", e / n }'
    fi
}

verdict() { # verdict RATIO TARGET -> PASS or MISS   (TARGET: >=X, <=X, >X or <X)
    awk -v r="$1" -v t="$2" 'BEGIN { match(t, /^[<>]=?/); op = substr(t, 1, RLENGTH)
        v = substr(t, RLENGTH + 1) + 0
        ok = (op == ">=") ? (r >= v) : (op == "<=") ? (r <= v) : (op == ">") ? (r > v) : (r < v)
        print ok ? "PASS" : "MISS" }'
}

# Pads tab-separated lines (the first is the header) into an aligned Markdown table.
format_table() {
    awk -F'\t' '
        { n = NR; cols = (NF > cols) ? NF : cols
          for (i = 1; i <= NF; i++) { c[NR, i] = $i; l = length($i); if (l > w[i]) w[i] = l } }
        END {
            for (r = 1; r <= n; r++) {
                line = "|"
                for (i = 1; i <= cols; i++)
                    line = line sprintf((i == 1 ? " %-*s |" : " %*s |"), w[i], c[r, i])
                print line
                if (r == 1) {
                    line = "|"
                    for (i = 1; i <= cols; i++) {
                        d = ""; for (k = 0; k < w[i]; k++) d = d "-"
                        line = line (i == 1 ? " " d " |" : " " d ":|")
                    }
                    print line
                }
            }
        }'
}

# print_table TITLE BASELINE MODE...: one line per defined row; the verdict is for the first MODE.
# With TABLE_REF set to another mode (e.g. native), that mode's figure and the first MODE's
# ratio to it are shown too (not judged).
print_table() {
    local title=$1 base=$2 row m med bmed r verdict line target units ref=${TABLE_REF:-}
    shift 2
    if [[ $base == native ]]; then units="MiB/s or ms; ratio = etlfs/native"; else units="s; ratio = etlfs/$base, lower is better"; fi
    printf '\n%s (median of %s runs; %s)\n\n' "$title" "$REPEAT" "$units"
    {
        line="workload\t${MODE_LABEL[$base]:-$base}"
        for m in "$@"; do line+="\t${MODE_LABEL[$m]:-etlfs-$m}\tratio"; done
        [[ -z $ref ]] || line+="\t${MODE_LABEL[$ref]:-$ref}\tetlfs/$ref"
        printf '%b\ttarget\t%s\n' "$line" "${MODE_LABEL[$1]:-$1}"
        for row in "${ROWS[@]}"; do
            [[ -n ${SAMPLES["$row|$base"]:-} ]] || continue
            bmed=$(median "${SAMPLES["$row|$base"]}")
            line="${ROW_LABEL[$row]}\t$(value "$row" "$bmed")"
            verdict=
            for m in "$@"; do
                med=$(median "${SAMPLES["$row|$m"]}")
                r=$(ratio "$row" "$bmed" "$med")
                line+="\t$(value "$row" "$med")\t${r}x"
                if [[ -z $verdict ]]; then
                    verdict=$(verdict "$r" "${ROW_TARGET[$row]}")
                    if [[ -n ${ROW_MAX[$row]:-} && $verdict == PASS ]]; then
                        verdict=$(verdict "$med" "<=${ROW_MAX[$row]}")
                    fi
                fi
            done
            if [[ -n $ref ]]; then
                if [[ -n ${SAMPLES["$row|$ref"]:-} ]]; then
                    bmed=$(median "${SAMPLES["$row|$ref"]}")
                    med=$(median "${SAMPLES["$row|$1"]}")
                    line+="\t$(value "$row" "$bmed")\t$(ratio "$row" "$bmed" "$med")x"
                else
                    line+="\t-\t-"
                fi
            fi
            target=$(sed -E 's/^([<>]=?)/\1 /' <<<"${ROW_TARGET[$row]}")x
            [[ -z ${ROW_MAX[$row]:-} ]] || target="<= ${ROW_MAX[$row]} s, $target"
            [[ ${ROW_TARGET[$row]} != - ]] || target=- verdict=-
            printf '%b\t%s\t%s\n' "$line" "$target" "$verdict"
        done
    } | format_table
    printf '\n'
}

# print_abs_table TITLE MODE: one line per defined row with MODE's median, minimum and maximum,
# judged against ROW_TARGET as an absolute limit (e.g. "<=5"; "-" for none).
print_abs_table() {
    local title=$1 m=$2 row samples med lo hi target verdict unit
    printf '\n%s (median of %s runs, and the range)\n\n' "$title" "$REPEAT"
    {
        printf 'workload\t%s\tmin\tmax\ttarget\t%s\n' "${MODE_LABEL[$m]:-$m}" "${MODE_LABEL[$m]:-$m}"
        for row in "${ROWS[@]}"; do
            samples=${SAMPLES["$row|$m"]:-}
            [[ -n $samples ]] || continue
            med=$(median "$samples")
            lo=$(tr ' ' '\n' <<<"$samples" | awk 'NF' | sort -g | head -n 1)
            hi=$(tr ' ' '\n' <<<"$samples" | awk 'NF' | sort -g | tail -n 1)
            if [[ ${ROW_KIND[$row]} == mib ]]; then unit=MiB; else unit=s; fi
            if [[ ${ROW_TARGET[$row]} == - ]]; then
                target=- verdict=-
            else
                target="$(sed -E 's/^([<>]=?)/\1 /' <<<"${ROW_TARGET[$row]}") $unit"
                verdict=$(verdict "$med" "${ROW_TARGET[$row]}")
            fi
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "${ROW_LABEL[$row]}" "$(value "$row" "$med")" \
                "$(value "$row" "$lo")" "$(value "$row" "$hi")" "$target" "$verdict"
        done
    } | format_table
    printf '\n'
}

# ---------------------------------------------------------------------------------------------
# Section "local": native disk vs etlfs over the same filesystem

section_local() {
    local modes=(native passthrough daemon) order m d rep k
    local small="${SMALL_N} x $((SMALL_SIZE / 1024)) KiB"
    ROWS=()
    SAMPLES=()
    if [[ ${BENCH_LOCAL_RCLONE:-1} == 1 ]]; then
        s3_up
        make_bucket bench-local-rclone
        MODE_DIR[rclone]=$BENCH_DIR/rclone
        mkdir -p "${MODE_DIR[rclone]}" "$S3_DIR/local-rclone.cache"
        MODE_LABEL[rclone]="rclone mount"
        modes+=(rclone)
    fi
    define_row seqwrite "seq write ${SEQ_MIB} MiB (MiB/s)" tput ">=0.90" "$SEQ_MIB"
    define_row seqread_warm "seq read ${SEQ_MIB} MiB, warm (MiB/s)" tput ">=0.95" "$SEQ_MIB"
    [[ $COLD == 1 ]] && define_row seqread_cold "seq read ${SEQ_MIB} MiB, cold (MiB/s)" tput ">=0.95" "$SEQ_MIB"
    define_row create "create+write+close $small (ms)" time "<=3"
    define_row stat_first "stat $SMALL_N files, first pass (ms)" time "<=4"
    define_row stat_repeat "stat $SMALL_N files, repeat (ms)" time "<=1.3"
    define_row kubecost "Kubecost ${KC_CYCLES} x ${KC_N} x $((KC_SIZE / 1024)) KiB (ms)" time "<=1.5"

    for m in "${modes[@]}"; do mount_mode "$m"; done
    log "etlfs pids: passthrough ${MODE_PID[passthrough]}, daemon ${MODE_PID[daemon]}${MODE_PID[rclone]:+, rclone ${MODE_PID[rclone]}}"

    for ((rep = 1 - WARMUP; rep <= REPEAT; rep++)); do
        # Rotate the order each round, so no mode always runs first (after a cache drop, say).
        k=$(((rep % ${#modes[@]} + ${#modes[@]}) % ${#modes[@]}))
        order=("${modes[@]:k}" "${modes[@]:0:k}")
        if ((rep < 1)); then log "warm-up round"; else log "round $rep/$REPEAT: ${order[*]}"; fi
        for m in "${order[@]}"; do
            d=${MODE_DIR[$m]}
            rm -f "$d/seq.bin"
            sync
            measure seqwrite "$m" "$rep" -- seqwrite "$d/seq.bin" "$SEQ_MIB"
        done
        for m in "${order[@]}"; do
            d=${MODE_DIR[$m]}
            "$FSBENCH" seqread "$d/seq.bin" >/dev/null # prime the page cache
            measure seqread_warm "$m" "$rep" -- seqread "$d/seq.bin"
        done
        if [[ $COLD == 1 ]]; then
            drop_caches # the big drop (all earlier files) here, not in the first mode's turn
            for m in "${order[@]}"; do
                drop_caches
                measure seqread_cold "$m" "$rep" -- seqread "${MODE_DIR[$m]}/seq.bin"
            done
        fi
        for m in "${order[@]}"; do
            sync
            measure create "$m" "$rep" -- create "${MODE_DIR[$m]}/small.$rep" "$SMALL_N" "$SMALL_SIZE"
        done
        for m in "${order[@]}"; do
            sync
            if [[ $STAT_COLD == remount ]]; then remount_mode "$m"; else echo 2 >/proc/sys/vm/drop_caches; fi
            measure stat_first "$m" "$rep" -- stat "${MODE_DIR[$m]}/small.$rep" "$SMALL_N"
            measure stat_repeat "$m" "$rep" -- stat "${MODE_DIR[$m]}/small.$rep" "$SMALL_N"
        done
        for m in "${order[@]}"; do
            sync
            measure kubecost "$m" "$rep" -- kubecost "${MODE_DIR[$m]}/kc.$rep" "$KC_N" "$KC_SIZE" "$KC_CYCLES"
        done
    done

    for m in "${modes[@]}"; do unmount_mode "$m"; done
    if [[ -n ${MODE_DIR[rclone]:-} ]]; then
        TABLE_REF=rclone
        print_table "native disk vs etlfs vs rclone mount --vfs-cache-mode full ($S3_LABEL)" native passthrough daemon
        TABLE_REF=
    else
        print_table "native disk vs etlfs" native passthrough daemon
    fi
}

# ---------------------------------------------------------------------------------------------
# The S3 server of the sections "bucket", "restore", "oneshot" and "scale" (BENCH_S3)

# A TCP port on 127.0.0.1 that nothing listens on, outside the kernel's ephemeral range (so
# that no outgoing connection takes it meanwhile).
free_port() {
    local lo=32768 hi=60999 base span p i
    read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    if ((lo > 12000)); then base=10000 span=$((lo - 10000)); else base=$((hi + 1)) span=$((65535 - hi)); fi
    for ((i = 0; i < 200; i++)); do
        p=$((base + (RANDOM * 32768 + RANDOM) % span))
        # A refused connect: nobody listens there.
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            printf '%s' "$p"
            return 0
        fi
    done
    return 1
}

# Installs s3s-fs S3S_VERSION where the tests keep their servers (ETLFS_TEST_CACHE, default
# ~/.cache/etlfs-test) unless it is there, and sets S3S_BIN. BENCH_S3=s3s-fs-stock: the
# published crate as it is (in s3s-fs/). BENCH_S3=s3s-fs: the same crate with
# scripts/s3s-fs-list-cache.patch applied (in s3s-fs-bench/), rebuilt when the patch changes.
s3s_install() {
    local cache root want crate work rc=0
    cache=$(_servers_cache)
    if [[ $S3_KIND == s3s-fs-stock ]]; then
        root=$cache/s3s-fs
        S3S_BIN=$root/bin/s3s-fs
        [[ -x $S3S_BIN && $("$S3S_BIN" --version 2>/dev/null) == "s3s-fs $S3S_VERSION" ]] && return 0
        log "installing s3s-fs $S3S_VERSION into $root (cargo install: several minutes; log: $LOG_DIR/s3s-fs-build.log)"
        cargo install s3s-fs --version "$S3S_VERSION" --locked --features binary --root "$root" \
            --force >"$LOG_DIR/s3s-fs-build.log" 2>&1 || {
            tail -n 20 "$LOG_DIR/s3s-fs-build.log" >&2
            die "cargo install s3s-fs $S3S_VERSION failed"
        }
        return 0
    fi
    root=$cache/s3s-fs-bench
    S3S_BIN=$root/bin/s3s-fs
    want="s3s-fs $S3S_VERSION + $(sha256sum <"$ROOT/scripts/s3s-fs-list-cache.patch" | cut -c1-16)"
    if [[ -x $S3S_BIN && -f $root/installed && $(<"$root/installed") == "$want" ]]; then
        return 0
    fi
    log "building s3s-fs $S3S_VERSION with scripts/s3s-fs-list-cache.patch into $root (cargo: several minutes; log: $LOG_DIR/s3s-fs-build.log)"
    work=$(mktemp -d "${TMPDIR:-/tmp}/etlfs-s3s-build.XXXXXX")
    # The published source: a throwaway package that depends on the crate makes cargo fetch it.
    mkdir -p "$work/fetch/src"
    printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\ns3s-fs = "=%s"\n' \
        "$S3S_VERSION" >"$work/fetch/Cargo.toml"
    : >"$work/fetch/src/lib.rs"
    (cd "$work/fetch" && cargo fetch) >"$LOG_DIR/s3s-fs-build.log" 2>&1 || rc=$?
    crate=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -name "s3s-fs-$S3S_VERSION.crate" 2>/dev/null | head -n 1)
    if ((rc != 0)) || [[ -z $crate ]]; then
        rm -rf "$work"
        tail -n 20 "$LOG_DIR/s3s-fs-build.log" >&2
        die "could not fetch the s3s-fs $S3S_VERSION crate"
    fi
    {
        tar -xzf "$crate" -C "$work" &&
            patch -p1 -d "$work/s3s-fs-$S3S_VERSION" <"$ROOT/scripts/s3s-fs-list-cache.patch" &&
            cargo install --path "$work/s3s-fs-$S3S_VERSION" --locked --features binary \
                --root "$root" --force
    } >>"$LOG_DIR/s3s-fs-build.log" 2>&1 || rc=$?
    rm -rf "$work"
    if ((rc != 0)); then
        tail -n 20 "$LOG_DIR/s3s-fs-build.log" >&2
        die "building the patched s3s-fs failed"
    fi
    printf '%s' "$want" >"$root/installed"
}

# Starts s3s-fs on a free port of 127.0.0.1 over S3_DATA and waits until it answers.
s3s_up() {
    local port try i
    s3s_install
    S3_AK=etlfs-bench S3_SK=etlfs-bench-secret
    S3_DATA=$S3_DIR/s3s-data
    mkdir -p "$S3_DATA"
    for try in 1 2 3; do
        port=$(free_port) || die "no free port on 127.0.0.1"
        defer_signals # a Ctrl-C between the start and the next line would leave it running
        "$S3S_BIN" --host 127.0.0.1 --port "$port" --access-key "$S3_AK" --secret-key "$S3_SK" \
            "$S3_DATA" </dev/null >>"$LOG_DIR/s3s-fs.log" 2>&1 &
        S3_PID=$!
        undefer_signals
        for ((i = 0; i < 300; i++)); do
            # Any HTTP answer (403 without a signature) means it is up.
            if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/" && kill -0 "$S3_PID" 2>/dev/null; then
                S3_EP=http://127.0.0.1:$port
                return 0
            fi
            kill -0 "$S3_PID" 2>/dev/null || break
            sleep 0.05
        done
        log "s3s-fs did not come up on port $port (try $try; log: $LOG_DIR/s3s-fs.log)"
        stop_s3s
    done
    die "could not start s3s-fs (log: $LOG_DIR/s3s-fs.log)"
}

# stop_process PID: SIGTERM, SIGKILL if it still runs 5 s later; reaps it.
stop_process() {
    local i
    kill -TERM "$1" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

stop_s3s() {
    [[ -n $S3_PID ]] || return 0
    stop_process "$S3_PID"
    S3_PID=
}

# Starts the S3 server once per run (cleanup stops it): s3s-fs ourselves, moto through
# scripts/servers.sh (installed on first use).
s3_up() {
    [[ -z $S3_EP ]] || return 0
    mkdir -p "$S3_DIR"
    if [[ $S3_KIND == moto ]]; then
        log "starting the S3 test server (scripts/servers.sh; installs it on first use)"
        servers_install
        # servers_start records each server's PID a moment after starting it: a Ctrl-C in
        # between would leave that server running, so it takes effect after servers_start returns.
        local rc=0
        defer_signals
        servers_start || rc=$?
        undefer_signals
        ((rc == 0)) || die "could not start the S3 test server"
        S3_EP=$ETLFS_TEST_S3_SERVER
        S3_LABEL="moto $SERVERS_MOTO_VERSION"
    else
        s3s_up
        S3_LABEL="s3s-fs $S3S_VERSION"
        [[ $S3_KIND == s3s-fs ]] && S3_LABEL+=" (list cache patch)"
    fi
    [[ $S3_EP =~ ^http://127\.0\.0\.1:[0-9]+$ ]] || die "unexpected S3 endpoint '$S3_EP'"
    log "S3 ($S3_LABEL) at $S3_EP"
    # fsbench signs its bucket listings with these (kcupload, s3check).
    export FSBENCH_S3_ACCESS_KEY=$S3_AK FSBENCH_S3_SECRET_KEY=$S3_SK
    : >"$S3_DIR/rclone.conf" # empty: rclone's remote "s3" comes from the environment only
    # rclone 1.60's S3 backend fails when AWS_CA_BUNDLE is set (test-servers.md): unset it.
    RCLONE_ENV=(env -u AWS_CA_BUNDLE RCLONE_CONFIG="$S3_DIR/rclone.conf"
        RCLONE_CONFIG_S3_TYPE=s3 RCLONE_CONFIG_S3_PROVIDER=Other
        RCLONE_CONFIG_S3_ENDPOINT="$S3_EP" RCLONE_CONFIG_S3_REGION=us-east-1
        RCLONE_CONFIG_S3_ACCESS_KEY_ID="$S3_AK" RCLONE_CONFIG_S3_SECRET_ACCESS_KEY="$S3_SK"
        RCLONE_CONFIG_S3_FORCE_PATH_STYLE=true)
}

# Starts `fsbench delayproxy` in front of the S3 server once per run (cleanup stops it): every
# request through DELAY_EP takes BENCH_LATENCY_MS more, as at a real bucket, and so does every
# new connection. RCLONE_PROXY_ENV points rclone at it; `etlfs_config BUCKET PORT` etlfs.
delay_up() {
    local portf=$S3_DIR/delayproxy.port port="" i t
    [[ -z $DELAY_EP ]] || return 0
    s3_up
    : >"$portf"
    defer_signals # a Ctrl-C between the start and the next line would leave it running
    "$FSBENCH" delayproxy 127.0.0.1:0 "${S3_EP#http://}" "$LATENCY_MS" </dev/null >"$portf" 2>>"$LOG_DIR/delayproxy.log" &
    DELAY_PID=$!
    undefer_signals
    # It prints its port once it listens (a whole line: read fails until the newline is there).
    for ((i = 0; i < 500; i++)); do
        read -r port <"$portf" && [[ $port =~ ^[0-9]+$ ]] && break
        kill -0 "$DELAY_PID" 2>/dev/null || die "the delay proxy exited (log: $LOG_DIR/delayproxy.log)"
        port=""
        sleep 0.02
    done
    [[ -n $port ]] || die "the delay proxy printed no port within 10 s (log: $LOG_DIR/delayproxy.log)"
    DELAY_EP=http://127.0.0.1:$port
    # env takes the last of two assignments to one name.
    RCLONE_PROXY_ENV=("${RCLONE_ENV[@]}" RCLONE_CONFIG_S3_ENDPOINT="$DELAY_EP")
    # A first request on a new connection: two delays (the connection's and the request's).
    t=$(curl -s -o /dev/null -w '%{time_total}' --max-time 10 "$DELAY_EP/") || die "no answer through the delay proxy at $DELAY_EP"
    log "delay proxy at $DELAY_EP (+$LATENCY_MS ms per request and per connection): a first request took $t s"
}

stop_delayproxy() {
    [[ -n $DELAY_PID ]] || return 0
    stop_process "$DELAY_PID"
    DELAY_PID=
}

make_bucket() {
    if [[ $S3_KIND == moto ]]; then
        curl -fsS -o /dev/null -X PUT "$S3_EP/$1" || die "could not create bucket $1 at $S3_EP"
    else
        mkdir "$S3_DATA/$1" || die "could not create bucket $1 in $S3_DATA"
    fi
}

# drop_bucket NAME: removes bucket NAME and all its objects.
drop_bucket() {
    if [[ $S3_KIND == moto ]]; then
        "${RCLONE_ENV[@]}" rclone purge "s3:$1" >/dev/null 2>&1 || true
    else
        rm -rf "${S3_DATA:?}/$1"
        # s3s-fs keeps each object's metadata beside the buckets, named after both in base64url.
        find "$S3_DATA" -maxdepth 1 -name ".bucket-$(printf '%s' "$1" | base64 -w0 | tr '+/' '-_' | tr -d '=').*" -delete
    fi
}

# etlfs_config BUCKET [PORT] -> the path of an object-store.yaml for BUCKET on the test server,
# or at 127.0.0.1:PORT (the delay proxy's)
etlfs_config() {
    local f=$S3_DIR/$1${2:+.via-$2}.yaml
    cat >"$f" <<EOF
type: S3
config:
  bucket: $1
  endpoint: 127.0.0.1:${2:-${S3_EP##*:}}
  insecure: true
  access_key: $S3_AK
  secret_key: $S3_SK
  region: us-east-1
  bucket_lookup_type: path
EOF
    printf '%s' "$f"
}

# mount_etlfs_s3 MODE DIR BUCKET [ARGS...]: etlfs over DIR, mirrored to BUCKET.
mount_etlfs_s3() {
    local m=$1 d=$2 cfg
    cfg=$(etlfs_config "$3")
    shift 3
    start_mount "$m" "$d" "$LOG_DIR/$m.log" \
        "$ETLFS" mount --config "$cfg" --listen 127.0.0.1:0 --drain-timeout 5s "$@" "$d"
}

# mount_rclone MODE DIR BUCKET CACHE_DIR: rclone mount --vfs-cache-mode full of BUCKET at DIR.
mount_rclone() {
    start_mount "$1" "$2" "$LOG_DIR/$1.log" \
        "${RCLONE_ENV[@]}" rclone mount "s3:$3" "$2" --vfs-cache-mode full \
        --vfs-write-back "${5:-$UPLOAD_DELAY}s" --cache-dir "$4"
}

section_bucket() {
    local modes=(rclone etlfs) order m rep k
    local de=$S3_DIR/bucket-etlfs dr=$S3_DIR/bucket-rclone
    s3_up
    ROWS=()
    SAMPLES=()
    ROW_MAX=()
    MODE_LABEL=([rclone]="rclone mount" [etlfs]="etlfs")
    define_row upload "last close -> ${KC_N} x $((KC_SIZE / 1024)) KiB in bucket (s)" secs "<1"
    ROW_MAX[upload]=$((UPLOAD_DELAY + 2))
    make_bucket bench-upload-etlfs
    make_bucket bench-upload-rclone
    mkdir -p "$de" "$dr" "$dr.cache"
    mount_etlfs_s3 etlfs-bucket "$de" bench-upload-etlfs --upload-delay "${UPLOAD_DELAY}s"
    mount_rclone rclone-bucket "$dr" bench-upload-rclone "$dr.cache"
    log "bucket: etlfs pid ${MODE_PID[etlfs-bucket]}, rclone pid ${MODE_PID[rclone-bucket]}; upload delay ${UPLOAD_DELAY}s"

    for ((rep = 1 - WARMUP; rep <= REPEAT; rep++)); do
        k=$(((rep % 2 + 2) % 2))
        order=("${modes[@]:k}" "${modes[@]:0:k}")
        if ((rep < 1)); then log "bucket: warm-up round"; else log "bucket: round $rep/$REPEAT: ${order[*]}"; fi
        for m in "${order[@]}"; do
            sync
            measure upload "$m" "$rep" -- kcupload "$S3_DIR/bucket-$m/kc.$rep" "$KC_N" "$KC_SIZE" \
                "$S3_EP" "bench-upload-$m" "kc.$rep" "$S3_TIMEOUT"
        done
    done

    unmount_mode etlfs-bucket
    unmount_mode rclone-bucket
    print_table "Bucket upload: etlfs vs rclone mount --vfs-cache-mode full, $S3_LABEL on 127.0.0.1" \
        rclone etlfs
}

# ---------------------------------------------------------------------------------------------
# Section "restore": a new node's restore at a real bucket's latency, through the delay proxy

# restore_mount MODE DIR CONFIG [ARGS...]: `etlfs mount` at its defaults (but --drain-timeout
# 5s, so that a Ctrl-C stops it quickly) over DIR, its status server on STATUS_PORT; returns
# once DIR is mounted. MOUNT_T0 is the time right before the process started.
STATUS_PORT=
MOUNT_T0=
restore_mount() {
    local m=$1 d=$2 cfg=$3
    shift 3
    STATUS_PORT=$(free_port) || die "no free port on 127.0.0.1"
    MOUNT_T0=$EPOCHREALTIME
    start_mount "$m" "$d" "$LOG_DIR/$m.log" \
        "$ETLFS" mount --config "$cfg" --listen "127.0.0.1:$STATUS_PORT" --drain-timeout 5s "$@" "$d"
}

# wait_restored MODE PORT DEADLINE_S: polls the /status of MODE's etlfs (on PORT) every ~20 ms
# until restore.files_left is 0 and restore.prefetch is "done" (before the prefetch starts,
# files_left can be 0 too), and samples the daemon's VmRSS every 0.5 s meanwhile. Sets
# RESTORED_SECS (from MOUNT_T0 to the poll that saw it) and PEAK_RSS_MIB.
RESTORED_SECS=
PEAK_RSS_MIB=
wait_restored() {
    local m=$1 port=$2 deadline=$((SECONDS + $3)) json left state now next_rss=0 rss
    local re_left='"files_left": *([0-9]+)' re_state='"prefetch": *"([a-z]+)"'
    RESTORED_SECS="" PEAK_RSS_MIB=0
    while ((SECONDS < deadline)); do
        now=${EPOCHREALTIME/./} # microseconds
        if ((now >= next_rss)); then
            rss=$(vm_mib "${MODE_PID[$m]}" VmRSS) || die "$m: etlfs exited during the restore (log: ${MODE_LOG[$m]})"
            PEAK_RSS_MIB=$(awk -v a="$PEAK_RSS_MIB" -v b="$rss" 'BEGIN { print (b > a) ? b : a }')
            next_rss=$((now + 500000))
        fi
        json=$(curl -s --max-time 5 "http://127.0.0.1:$port/status") || json=
        now=$EPOCHREALTIME
        left="" state=""
        [[ ! $json =~ $re_left ]] || left=${BASH_REMATCH[1]}
        [[ ! $json =~ $re_state ]] || state=${BASH_REMATCH[1]}
        if [[ $left == 0 && $state == "done" ]]; then
            RESTORED_SECS=$(awk -v a="$MOUNT_T0" -v b="$now" 'BEGIN { printf "%.6f", b - a }')
            return 0
        fi
        # Done with files left: some downloads failed, and nothing would try them again.
        [[ $state != "done" && $state != bounded ]] ||
            die "$m: prefetch $state with $left files still only in the bucket (log: ${MODE_LOG[$m]})"
        sleep 0.02
    done
    die "$m: files still only in the bucket after $3 s (last /status: files_left=$left prefetch=$state; log: ${MODE_LOG[$m]})"
}

# bounded SECONDS COMMAND...: COMMAND, killed after SECONDS (status 124). --foreground keeps
# it in our process group, so that a Ctrl-C reaches it at once.
bounded() { timeout --foreground -k 5 "$@"; }

# restore_fill BUCKET TTFB_BUCKET: the files of the section, each put into its bucket once by
# `etlfs backup` straight to the server (not measured): RESTORE_N x RESTORE_SIZE made by
# `fsbench fill`, and one file "big" of TTFB_SIZE random bytes (random: nothing on the way
# could compress it).
restore_fill() {
    local b=$1 bt=$2 src=$S3_DIR/restore-src tsrc=$S3_DIR/restore-ttfb-src logf=$LOG_DIR/restore.log
    log "restore: creating $RESTORE_N x $RESTORE_SIZE B and one file of $TTFB_SIZE B; etlfs backup of both (log: $logf)"
    "$FSBENCH" fill "$src" "$RESTORE_N" "$RESTORE_SIZE" >/dev/null
    mkdir -p "$tsrc"
    head -c "$TTFB_SIZE" /dev/urandom >"$tsrc/big"
    make_bucket "$b"
    make_bucket "$bt"
    sync
    bounded 900 "$ETLFS" backup --config "$(etlfs_config "$b")" "$src" </dev/null >>"$logf" 2>&1 ||
        die "restore: etlfs backup failed (log: $logf)"
    bounded 900 "$ETLFS" backup --config "$(etlfs_config "$bt")" "$tsrc" </dev/null >>"$logf" 2>&1 ||
        die "restore: etlfs backup of the big file failed (log: $logf)"
    "$FSBENCH" s3check "$S3_EP" "$b" "" "$RESTORE_N" "$RESTORE_SIZE" >/dev/null
    "$FSBENCH" s3check "$S3_EP" "$bt" "" 1 "$TTFB_SIZE" >/dev/null
    rm -rf "$tsrc" # a GiB of disk, and nothing checks against it
}

# restore_one WAY DIR BUCKET REP: restores BUCKET into the empty DIR one way, through the delay
# proxy; records the wall seconds, then checks every file of DIR (outside the timing). rclone
# copy is the reference of the three etlfs rows, so its time is recorded for each.
restore_one() {
    local way=$1 d=$2 b=$3 rep=$4 t t1 row cfg logf=$LOG_DIR/restore.log
    cfg=$(etlfs_config "$b" "${DELAY_EP##*:}")
    case $way in
    rclone)
        # shellcheck disable=SC2086 # RCLONE_COPY_ARGS holds zero or more words
        t=$(timed "$logf" bounded "$S3_TIMEOUT" "${RCLONE_PROXY_ENV[@]}" rclone copy $RCLONE_COPY_ARGS "s3:$b" "$d") ||
            die "restore: rclone copy failed (log: $logf)"
        for row in copy mount mountread; do record "$row" rclone "$rep" "$t"; done
        ;;
    restore)
        t=$(timed "$logf" bounded "$S3_TIMEOUT" "$ETLFS" restore --config "$cfg" "$d") ||
            die "restore: etlfs restore failed (log: $logf)"
        record copy etlfs "$rep" "$t"
        ;;
    mount)
        restore_mount restore-mount "$d" "$cfg"
        wait_restored restore-mount "$STATUS_PORT" "$S3_TIMEOUT"
        unmount_mode restore-mount
        record mount etlfs "$rep" "$RESTORED_SECS"
        ;;
    mountread)
        # The reader starts once the directory is mounted, as an application waiting for it.
        restore_mount restore-mountread "$d" "$cfg"
        bounded "$S3_TIMEOUT" "$FSBENCH" check "$d" "$RESTORE_N" "$RESTORE_SIZE" >/dev/null ||
            die "restore: reading through the mount failed (log: ${MODE_LOG[restore-mountread]})"
        t1=$EPOCHREALTIME
        unmount_mode restore-mountread
        record mountread etlfs "$rep" "$(awk -v a="$MOUNT_T0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }')"
        ;;
    esac
    # The mounts too: every file must be local once they are gone.
    "$FSBENCH" check "$d" "$RESTORE_N" "$RESTORE_SIZE" >/dev/null || die "restore: $way left $d incomplete"
}

# restore_backup REP ROUND: `etlfs backup` and `rclone copy` of the restore section's source
# directory, each into an empty bucket of its own through the delay proxy, in an order that
# alternates per round; checks each bucket (outside the timing).
restore_backup() {
    local rep=$1 round=$2 m t b src=$S3_DIR/restore-src logf=$LOG_DIR/restore.log order=(rclone etlfs)
    ((rep % 2 == 0)) || order=(etlfs rclone)
    for m in "${order[@]}"; do
        b=bench-restore-bk-$m-$round
        make_bucket "$b"
        sync
        if [[ $m == rclone ]]; then
            # shellcheck disable=SC2086 # RCLONE_COPY_ARGS holds zero or more words
            t=$(timed "$logf" bounded "$S3_TIMEOUT" "${RCLONE_PROXY_ENV[@]}" rclone copy $RCLONE_COPY_ARGS "$src" "s3:$b") ||
                die "restore: rclone copy to the bucket failed (log: $logf)"
        else
            t=$(timed "$logf" bounded "$S3_TIMEOUT" "$ETLFS" backup --config "$(etlfs_config "$b" "${DELAY_EP##*:}")" "$src") ||
                die "restore: etlfs backup failed (log: $logf)"
        fi
        "$FSBENCH" s3check "$S3_EP" "$b" "" "$RESTORE_N" "$RESTORE_SIZE" >/dev/null
        record backup "$m" "$rep" "$t"
        drop_bucket "$b"
    done
}

# restore_ttfb BUCKET REP: the time to the first byte of BUCKET's file "big" through a fresh
# `etlfs mount --no-prefetch` over an empty directory (the open and a 1-byte read), and by
# `rclone cat --count 1` (the whole command), in an order that alternates per round.
restore_ttfb() {
    local b=$1 rep=$2 m t d=$S3_DIR/restore-ttfb logf=$LOG_DIR/restore.log order=(rclone etlfs)
    ((rep % 2 == 0)) || order=(etlfs rclone)
    for m in "${order[@]}"; do
        sync
        if [[ $m == rclone ]]; then
            t=$(timed "$logf" bounded "$S3_TIMEOUT" "${RCLONE_PROXY_ENV[@]}" rclone cat --count 1 --discard "s3:$b/big") ||
                die "restore: rclone cat failed (log: $logf)"
        else
            rm -rf "$d"
            mkdir -p "$d"
            restore_mount restore-ttfb "$d" "$(etlfs_config "$b" "${DELAY_EP##*:}")" --no-prefetch
            t=$(bounded "$S3_TIMEOUT" "$FSBENCH" firstbyte "$d/big") ||
                die "restore: first byte through the mount failed (log: ${MODE_LOG[restore-ttfb]})"
            unmount_mode restore-ttfb
            rm -rf "$d" # a GiB per round
        fi
        record ttfb "$m" "$rep" "$t"
    done
}

section_restore() {
    local ways=(rclone restore mount mountread) order way rep k round=0 d what
    local b=bench-restore bt=bench-restore-ttfb
    what="$RESTORE_N x $((RESTORE_SIZE / 1024)) KiB"
    s3_up
    delay_up
    ROWS=()
    SAMPLES=()
    ROW_MAX=()
    MODE_LABEL=([rclone]="rclone (reference)" [etlfs]="etlfs")
    define_row copy "restore $what into an empty directory: etlfs restore vs rclone copy (s)" secs "<=1.0"
    define_row mount "the same by etlfs mount: start -> all local (/status) vs rclone copy (s)" secs "<=1.0"
    define_row mountread "the same + reading each file in name order: start -> last read vs rclone copy (s)" secs "<=1.25"
    define_row backup "back up the same $what into an empty bucket: etlfs backup vs rclone copy (s)" secs "<=1.0"
    define_row ttfb "first byte of a $((TTFB_SIZE / 1048576)) MiB bucket-only file: etlfs mount --no-prefetch, open + read 1 B vs rclone cat --count 1 (s)" secs "-"
    restore_fill "$b" "$bt"
    log "restore: rclone copy $RCLONE_COPY_ARGS; etlfs mount at its defaults (--fetch-concurrency 32, prefetch on); through $DELAY_EP (+$LATENCY_MS ms)"

    for ((rep = 1 - WARMUP; rep <= REPEAT; rep++)); do
        round=$((round + 1))
        k=$(((rep % 4 + 4) % 4))
        order=("${ways[@]:k}" "${ways[@]:0:k}")
        if ((rep < 1)); then log "restore: warm-up round"; else log "restore: round $rep/$REPEAT: ${order[*]} ttfb"; fi
        for way in "${order[@]}"; do
            # A new node: an empty directory (and no etlfs state).
            d=$S3_DIR/restore-$way-$round
            mkdir -p "$d"
            sync
            restore_one "$way" "$d" "$b" "$rep"
        done
        restore_backup "$rep" "$round"
        restore_ttfb "$bt" "$rep"
    done

    # Removed only now: mass deletes slow down later creates on some ext4 setups (see above).
    drop_bucket "$b"
    drop_bucket "$bt"
    rm -rf "$S3_DIR"/restore-*
    print_table "Restore at a real bucket's latency: etlfs vs rclone, $S3_LABEL on 127.0.0.1 behind fsbench delayproxy (+$LATENCY_MS ms per request and per connection)" \
        rclone etlfs
}

# ---------------------------------------------------------------------------------------------
# Section "oneshot": `etlfs backup` / `etlfs restore` vs `rclone copy` (and `cp -a`)

# timed LOG COMMAND...: runs COMMAND with its output appended to LOG; prints its wall seconds.
timed() {
    local logf=$1 t0 t1
    shift
    t0=$EPOCHREALTIME
    "$@" </dev/null >>"$logf" 2>&1 || return 1
    t1=$EPOCHREALTIME
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }'
}

section_oneshot() {
    local modes=(native rclone etlfs) order m rep k round=0 src b d t what logf
    local n=$ONESHOT_N size=$ONESHOT_SIZE
    local made=() # buckets and directories to remove at the end
    what="$n x $((size / 1024)) KiB"
    logf=$LOG_DIR/oneshot.log
    s3_up
    ROWS=()
    SAMPLES=()
    ROW_MAX=()
    MODE_LABEL=([native]="cp -a" [rclone]="rclone copy" [etlfs]="etlfs")
    define_row backup "backup $what: directory -> empty bucket (s)" secs "<1"
    define_row restore "restore $what: bucket -> empty directory (s)" secs "<1"
    src=$S3_DIR/oneshot-src
    log "oneshot: creating $what in $src"
    "$FSBENCH" fill "$src" "$n" "$size" >/dev/null
    log "oneshot: rclone copy $RCLONE_COPY_ARGS; log in $logf"

    for ((rep = 1 - WARMUP; rep <= REPEAT; rep++)); do
        round=$((round + 1))
        k=$(((rep % 3 + 3) % 3))
        order=("${modes[@]:k}" "${modes[@]:0:k}")
        if ((rep < 1)); then log "oneshot: warm-up round"; else log "oneshot: round $rep/$REPEAT: ${order[*]}"; fi
        # Backups: each system into a bucket of its own (cp -a: into a directory).
        for m in "${order[@]}"; do
            b=bench-oneshot-$m-$round
            made+=("$m:$b")
            sync
            case $m in
            native)
                mkdir -p "$S3_DIR/$b"
                t=$(timed "$logf" cp -a "$src/." "$S3_DIR/$b/") || die "oneshot: cp -a failed (log: $logf)"
                "$FSBENCH" check "$S3_DIR/$b" "$n" "$size" >/dev/null
                ;;
            rclone)
                make_bucket "$b"
                # shellcheck disable=SC2086 # RCLONE_COPY_ARGS holds zero or more words
                t=$(timed "$logf" "${RCLONE_ENV[@]}" rclone copy $RCLONE_COPY_ARGS "$src" "s3:$b") ||
                    die "oneshot: rclone copy to the bucket failed (log: $logf)"
                ;;
            etlfs)
                make_bucket "$b"
                t=$(timed "$logf" "$ETLFS" backup --config "$(etlfs_config "$b")" "$src") ||
                    die "oneshot: etlfs backup failed (log: $logf)"
                ;;
            esac
            [[ $m == native ]] || "$FSBENCH" s3check "$S3_EP" "$b" "" "$n" "$size" >/dev/null
            record backup "$m" "$rep" "$t"
        done
        # Restores: each system from its own bucket into an empty directory.
        for m in "${order[@]}"; do
            b=bench-oneshot-$m-$round
            d=$S3_DIR/oneshot-restore-$m-$round
            mkdir -p "$d"
            sync
            case $m in
            native)
                t=$(timed "$logf" cp -a "$S3_DIR/$b/." "$d/") || die "oneshot: cp -a failed (log: $logf)"
                ;;
            rclone)
                # shellcheck disable=SC2086 # RCLONE_COPY_ARGS holds zero or more words
                t=$(timed "$logf" "${RCLONE_ENV[@]}" rclone copy $RCLONE_COPY_ARGS "s3:$b" "$d") ||
                    die "oneshot: rclone copy from the bucket failed (log: $logf)"
                ;;
            etlfs)
                t=$(timed "$logf" "$ETLFS" restore --config "$(etlfs_config "$b")" "$d") ||
                    die "oneshot: etlfs restore failed (log: $logf)"
                ;;
            esac
            "$FSBENCH" check "$d" "$n" "$size" >/dev/null
            record restore "$m" "$rep" "$t"
        done
    done

    # Removed only now: mass deletes slow down later creates on some ext4 setups (see above).
    for b in "${made[@]}"; do
        if [[ ${b%%:*} == native ]]; then rm -rf "${S3_DIR:?}/${b#*:}"; else drop_bucket "${b#*:}"; fi
    done
    rm -rf "$S3_DIR"/oneshot-*
    TABLE_REF=native
    print_table "One-shot backup and restore: etlfs vs rclone copy $RCLONE_COPY_ARGS, $S3_LABEL on 127.0.0.1 (cp -a: the same copy disk to disk)" \
        rclone etlfs
    TABLE_REF=
}

# ---------------------------------------------------------------------------------------------
# Section "scale": mount start and memory with BENCH_SCALE_N objects in the bucket

READY_SECS=
MOUNTED_SECS=

# scale_mount MODE DIR CONFIG [ARGS...]: starts `etlfs mount` over DIR on a free status port
# (SCALE_PORT) and sets MOUNTED_SECS and READY_SECS: the seconds from starting the process
# (MOUNT_T0) until DIR is mounted and until GET /readyz answers 200 (polled every ~10-20 ms).
SCALE_PORT=
scale_mount() {
    local m=$1 d=$2 cfg=$3 t0 now code deadline
    shift 3
    [[ -z ${MODE_PID[$m]:-} ]] || die "$m is already mounted"
    SCALE_PORT=$(free_port) || die "no free port on 127.0.0.1"
    MODE_DIR[$m]=$d
    MODE_LOG[$m]=$LOG_DIR/$m.log
    READY_SECS="" MOUNTED_SECS=""
    deadline=$((SECONDS + 900))
    defer_signals
    t0=$EPOCHREALTIME
    MOUNT_T0=$t0
    "$ETLFS" mount --config "$cfg" --listen "127.0.0.1:$SCALE_PORT" "$@" "$d" </dev/null >>"${MODE_LOG[$m]}" 2>&1 &
    MODE_PID[$m]=$!
    undefer_signals
    # Each time is taken right after the check that first succeeded (at most one check late).
    while ((SECONDS < deadline)); do
        if [[ -z $MOUNTED_SECS ]] && is_fuse_mounted "$d"; then
            now=$EPOCHREALTIME
            MOUNTED_SECS=$(awk -v a="$t0" -v b="$now" 'BEGIN { printf "%.6f", b - a }')
        fi
        if [[ -z $READY_SECS ]]; then
            code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$SCALE_PORT/readyz") || true
            now=$EPOCHREALTIME
            [[ $code != 200 ]] || READY_SECS=$(awk -v a="$t0" -v b="$now" 'BEGIN { printf "%.6f", b - a }')
        fi
        [[ -z $READY_SECS || -z $MOUNTED_SECS ]] || return 0
        if ! kill -0 "${MODE_PID[$m]}" 2>/dev/null; then
            wait "${MODE_PID[$m]}" 2>/dev/null || true
            unset 'MODE_PID[$m]'
            tail -n 20 "${MODE_LOG[$m]}" >&2 || true
            die "$m: etlfs exited before it was ready (log: ${MODE_LOG[$m]})"
        fi
        sleep 0.01
    done
    die "$m: etlfs not ready within 900 s (log: ${MODE_LOG[$m]})"
}

# vm_mib PID FIELD: VmRSS or VmHWM of PID in MiB.
vm_mib() {
    awk -v f="$2:" '$1 == f { printf "%.1f", $2 / 1024; found = 1 } END { exit !found }' "/proc/$1/status"
}

# scale_stat_all MODE REP PREFIX: stats every entry through the mount of MODE (find -printf
# %s) and records the time and the daemon's VmRSS and VmHWM as PREFIX_stat, _rss and _hwm.
scale_stat_all() {
    local m=$1 rep=$2 p=$3 t0 t1 files
    t0=$EPOCHREALTIME
    files=$(find "${MODE_DIR[$m]}" -type f -printf '%s\n' | wc -l)
    t1=$EPOCHREALTIME
    ((files == SCALE_N)) || die "$m: find saw $files files through the mount, not $SCALE_N"
    record "${p}_stat" etlfs "$rep" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }')"
    record "${p}_rss" etlfs "$rep" "$(vm_mib "${MODE_PID[$m]}" VmRSS)"
    record "${p}_hwm" etlfs "$rep" "$(vm_mib "${MODE_PID[$m]}" VmHWM)"
}

# The number after "NAME": in etlfs' /status JSON (0 when absent).
status_number() {
    curl -s --max-time 5 "http://127.0.0.1:$SCALE_PORT/status" |
        grep -o "\"$1\": *[0-9]*" | head -n 1 | grep -o '[0-9]*$' || echo 0
}

# scale_prefetch REP CONFIG: a new node at etlfs' defaults (prefetch on) over a new empty
# directory, until every file is local; records the seconds and the peak of the daemon's
# VmRSS sampled meanwhile, then checks the files (outside the timing).
scale_prefetch() {
    local rep=$1 cfg=$2 d=$S3_DIR/scale-prefetch
    rm -rf "$d"
    mkdir -p "$d"
    sync
    scale_mount scale-prefetch "$d" "$cfg" --drain-timeout 5s
    wait_restored scale-prefetch "$SCALE_PORT" 1800
    record prefetch_rss etlfs "$rep" "$PEAK_RSS_MIB"
    record prefetch_secs etlfs "$rep" "$RESTORED_SECS"
    unmount_mode scale-prefetch
    "$FSBENCH" check "$d" "$SCALE_N" "$SCALE_SIZE" "$SCALE_DIRS" >/dev/null || die "scale: the prefetch left $d incomplete"
}

section_scale() {
    local n=$SCALE_N size=$SCALE_SIZE ndirs=$SCALE_DIRS src d cfg rep t b=bench-scale what where
    local logf=$LOG_DIR/scale.log
    s3_up
    ROWS=()
    SAMPLES=()
    ROW_MAX=()
    MODE_LABEL=([etlfs]="etlfs")
    if ((ndirs > 0)); then where="in $ndirs directories"; else where="in one directory"; fi
    what="$n files of $size B $where"
    define_row backup "etlfs backup of the $n files into an empty bucket, once (s)" secs "-"
    define_row list "the server alone: list the $n objects (ListObjectsV2, 1000 a page) (s)" secs "-"
    define_row cold_mounted "new node (empty directory): start -> mounted (s)" secs "<=5"
    define_row cold_ready "new node (empty directory): start -> /readyz 200 (s)" secs "<=5"
    define_row cold_stat "new node: stat all $n files through the mount (s)" secs "-"
    define_row cold_rss "new node: RSS after that (MiB)" mib "<=64"
    define_row cold_hwm "new node: peak RSS, VmHWM (MiB)" mib "<=64"
    define_row prefetch_rss "new node with prefetch: peak RSS until all local, sampled every 0.5 s (MiB)" mib "<=64"
    define_row prefetch_secs "new node with prefetch: start -> all $n files local (/status) (s)" secs "-"
    define_row warm_mounted "restart over the $n local files: start -> mounted (s)" secs "<=5"
    define_row warm_ready "restart over the $n local files: start -> /readyz 200 (s)" secs "<=5"
    define_row warm_stat "restart: stat all $n files through the mount (s)" secs "-"
    define_row warm_rss "restart: RSS after that (MiB)" mib "<=64"
    define_row warm_hwm "restart: peak RSS, VmHWM (MiB)" mib "<=64"

    src=$S3_DIR/scale-src
    log "scale: creating $what in $src"
    "$FSBENCH" fill "$src" "$n" "$size" "$ndirs" >/dev/null
    make_bucket "$b"
    cfg=$(etlfs_config "$b")
    sync
    log "scale: etlfs backup of the $n files (log: $logf)"
    t=$(timed "$logf" "$ETLFS" backup --config "$cfg" "$src") || die "scale: etlfs backup failed (log: $logf)"
    record backup etlfs 1 "$t"
    # The first mount over the directory records etlfs' state (it is not measured): wait until
    # it has reconciled and nothing is pending, then stop it. Having no state, it uploads every
    # file again; with history on, each upload first keeps the bucket's (identical) object as a
    # version: HEAD, LIST, COPY, then the PUT, and s3s-fs walks the whole bucket for a LIST
    # after any write (20,000 files: ~5 a second on a busy 2-CPU VM). History off: one PUT each.
    log "scale: first mount over the $n files (not measured; records etlfs' state)"
    scale_mount scale-warm "$src" "$cfg" --drain-timeout 600s --history-retention 0
    # (/status "pending" does not count what the first reconcile queues: wait for its uploads.)
    local queued settled=0 deadline=$((SECONDS + 900))
    while ((SECONDS < deadline)); do
        queued=$(grep -o 'reconciled the directory.*to_upload=[0-9]*' "${MODE_LOG[scale-warm]}" |
            grep -o '[0-9]*$' | head -n 1) || true
        if [[ -n $queued ]] && (($(status_number "done") >= queued && $(status_number changes) == 0)); then
            settled=1
            break
        fi
        sleep 0.1
    done
    ((settled)) || log "scale: warning: the first mount had not uploaded what it queued after 900 s"
    unmount_mode scale-warm

    for ((rep = 1 - WARMUP; rep <= REPEAT; rep++)); do
        if ((rep < 1)); then log "scale: warm-up round"; else log "scale: round $rep/$REPEAT"; fi
        t=$("$FSBENCH" s3check "$S3_EP" "$b" "" "$n" "$size")
        record list etlfs "$rep" "$t"
        # A new node: an empty directory (no state), every file only in the bucket.
        d=$S3_DIR/scale-cold
        rm -rf "$d"
        mkdir -p "$d"
        sync
        # (--no-prefetch: these rows are the start and the metadata, the next ones the copy.)
        scale_mount scale-cold "$d" "$cfg" --drain-timeout 5s --no-prefetch
        record cold_mounted etlfs "$rep" "$MOUNTED_SECS"
        record cold_ready etlfs "$rep" "$READY_SECS"
        scale_stat_all scale-cold "$rep" cold
        unmount_mode scale-cold
        scale_prefetch "$rep" "$cfg"
        # A restart: the same files local and in the bucket, etlfs' state from the last run.
        sync
        scale_mount scale-warm "$src" "$cfg" --drain-timeout 5s
        record warm_mounted etlfs "$rep" "$MOUNTED_SECS"
        record warm_ready etlfs "$rep" "$READY_SECS"
        scale_stat_all scale-warm "$rep" warm
        unmount_mode scale-warm
    done

    drop_bucket "$b"
    rm -rf "$S3_DIR"/scale-*
    print_abs_table "Scale: $what, $S3_LABEL on 127.0.0.1" etlfs
}

# history: what keeping versions costs in bucket requests per Kubecost rewrite. BENCH_KC_N
# files of 64 KiB are written once, then rewritten BENCH_KC_CYCLES times (each cycle waits
# until the mirror is idle), with history off (--history-retention 0), at its defaults (at most
# one version per file per hour) and keeping every version (--history-interval 0s). Printed per
# file and rewrite: every request etlfs sent (etlfs_bucket_requests_total), and versions kept.
section_history() {
    local setting d b port before after kept rewrites cyc
    local -a args
    s3_up
    rewrites=$((KC_N * KC_CYCLES))
    printf '\nHistory: bucket requests per file rewrite (%s x %s KiB, %s rewrites each), %s on 127.0.0.1\n' \
        "$KC_N" $((KC_SIZE / 1024)) "$KC_CYCLES" "$S3_LABEL"
    printf '%-44s %14s %14s\n' "history" "requests" "versions kept"
    for setting in off default every; do
        case $setting in
        off) args=(--history-retention 0) ;;
        default) args=() ;;
        every) args=(--history-interval 0s) ;;
        esac
        d=$S3_DIR/history-$setting b=bench-history-$setting port=$(free_port)
        make_bucket "$b"
        mkdir -p "$d"
        start_mount "history-$setting" "$d" "$LOG_DIR/history-$setting.log" \
            "$ETLFS" mount --config "$(etlfs_config "$b")" --listen "127.0.0.1:$port" \
            --upload-delay 1s --drain-timeout 5s "${args[@]}" "$d"
        "$FSBENCH" kubecost "$d" "$KC_N" "$KC_SIZE" 1 >/dev/null
        history_settle "$port" "$KC_N"
        before=$(history_requests "$port")
        for ((cyc = 1; cyc <= KC_CYCLES; cyc++)); do
            "$FSBENCH" kubecost "$d" "$KC_N" "$KC_SIZE" 1 >/dev/null
            history_settle "$port" $((KC_N * (cyc + 1)))
        done
        after=$(history_requests "$port")
        kept=$(history_metric "$port" etlfs_history_versions_kept_total)
        printf '%-44s %14s %14s\n' "$setting (${args[*]:-the defaults})" \
            "$(awk -v a="$after" -v b="$before" -v n="$rewrites" 'BEGIN { printf "%.2f", (a - b) / n }')" \
            "$(awk -v k="$kept" -v n="$rewrites" 'BEGIN { printf "%.2f", k / n }')"
        unmount_mode "history-$setting"
        drop_bucket "$b"
        rm -rf "$d"
    done
}

# history_metric PORT NAME: the value of an unlabelled sample on the mount's /metrics (0 if none).
history_metric() {
    curl -fsS "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n { print $2; found = 1 } END { if (!found) print 0 }'
}

# history_requests PORT: every request the mount has sent to the bucket so far.
history_requests() {
    curl -fsS "http://127.0.0.1:$1/metrics" |
        awk '$1 ~ /^etlfs_bucket_requests_total\{/ { n += $2 } END { print n + 0 }'
}

# history_settle PORT N: waits until the mount has made N uploads and nothing is pending.
history_settle() {
    local i
    for ((i = 0; i < S3_TIMEOUT * 10; i++)); do
        if awk -v u="$(history_metric "$1" etlfs_uploads_total)" -v p="$(history_metric "$1" etlfs_pending_changes)" \
            -v n="$2" 'BEGIN { exit !(u >= n && p == 0) }'; then
            return 0
        fi
        sleep 0.1
    done
    die "history: the mirror did not settle on $2 uploads within $S3_TIMEOUT s"
}

# ---------------------------------------------------------------------------------------------

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
