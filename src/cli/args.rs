//! The command line's arguments as the commands take them: declared once, with their help,
//! and flattened into the `etlfs` command by `main.rs`. What a flag means beyond its help
//! text is the command's business; what is derived from several flags (the lease, the fetch
//! timeout) is computed here, once.

use std::path::PathBuf;

use crate::escape::esc;

/// Everything `etlfs mount` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct MountArgs {
    /// Serve this directory at MOUNTPOINT instead of the directory MOUNTPOINT itself.
    #[arg(long, value_name = "DIR")]
    pub local: Option<PathBuf>,
    /// Where etlfs keeps its state; default `.etlfs/` inside the served directory (it is
    /// invisible through the mount).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Never use FUSE passthrough; serve every read and write through etlfs.
    #[arg(long)]
    pub no_passthrough: bool,
    /// FUSE session threads.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub threads: usize,
    /// Serve extended attributes of the local files (get/set/list/remove). They are NOT
    /// mirrored to the bucket, so a restore loses them; without this flag they are
    /// refused (EOPNOTSUPP), which also spares the kernel one request per write.
    #[arg(long)]
    pub xattrs: bool,
    /// Thanos-style object-store.yaml describing the bucket (S3, GCS, AZURE, FILESYSTEM).
    /// Without it, a FILESYSTEM bucket beside the served directory is used.
    #[arg(long, env = "ETLFS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Key prefix, joined after the file's own top-level `prefix` (e.g. `etl`).
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// Quiet time after the last close before a file is uploaded; new activity restarts it.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub upload_delay: std::time::Duration,
    /// A changed file is uploaded at least this often however often it changes (each
    /// upload a closed or fsynced state), so a file rewritten without pause still reaches
    /// the bucket.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub upload_max_delay: std::time::Duration,
    /// Uploads in flight at once.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub upload_concurrency: usize,
    /// On SIGTERM, how long to keep uploading pending changes before exiting.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub drain_timeout: std::time::Duration,
    /// Do not download the files that are only in the bucket in the background after
    /// mounting (by default a new node copies them all, application opens first); they are
    /// then downloaded when opened.
    #[arg(long)]
    pub no_prefetch: bool,
    /// The default; kept so that older command lines still work.
    #[arg(long, hide = true, conflicts_with = "no_prefetch")]
    pub prefetch: bool,
    /// Downloads from the bucket at once (opens, readahead and prefetch share them).
    #[arg(long, default_value_t = crate::engine::fetch::DEFAULT_CONCURRENCY, value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u16).range(1..=1024), usize::from), value_name = "N")]
    pub fetch_concurrency: usize,
    /// An application waiting for a download gets EIO once the bucket has delivered
    /// nothing for this long; `0` waits as long as it takes (like a hard NFS mount).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub fetch_timeout: std::time::Duration,
    /// Bound local file bytes (e.g. `20GiB`, `500MB`, or plain bytes): least recently used
    /// files that are already in the bucket are evicted and fetched again when opened.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_local_bytes: Option<u64>,
    /// Address of the status server: /metrics (Prometheus), /status (JSON), /healthz,
    /// /readyz. Port 0 picks a free port (the startup log names it).
    #[arg(long, env = "ETLFS_LISTEN", default_value = crate::ops::status::DEFAULT_LISTEN, value_name = "ADDR")]
    pub listen: String,
    /// /status says `degraded` once bucket operations have failed, with no success in
    /// between, for this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub degraded_after: std::time::Duration,
    /// Take the prefix's lease even from a live holder (another etlfs, which then stops
    /// writing the bucket) or from a lease object this etlfs cannot read.
    #[arg(long, conflicts_with = "no_lease")]
    pub takeover: bool,
    /// Do not take the lease: nothing then stops a second etlfs from writing the same prefix
    /// (for buckets without conditional writes).
    #[arg(long)]
    pub no_lease: bool,
    /// How often the lease is renewed; another node may take it over after three periods
    /// without a renewal.
    #[arg(long, default_value = "10s", value_parser = parse_period, value_name = "DURATION")]
    pub lease_period: std::time::Duration,
    /// Mount options, comma-separated, repeatable (`-o ro,noatime -o nodev`): ro, nosuid
    /// and nodev (the default) or suid and dev, noexec, sync, dirsync, noatime, nodiratime,
    /// allow_other (the default) or allow_root or noallow_other, ...; what fstab passes for
    /// mount(8) (defaults, nofail, x-*, ...) is ignored.
    #[arg(short = 'o', long = "options", value_name = "OPT[,OPT...]")]
    pub options: Vec<String>,
    /// Return once the mount is ready (mounted, bucket listing loaded), leaving etlfs serving
    /// it in the background, as `mount(8)` expects of a mount helper. Errors before that are
    /// printed here and set the exit code.
    #[arg(long)]
    pub background: bool,
    /// Append the log to FILE instead of writing it to stderr (with --background, once the
    /// mount is ready).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// The source the mount table shows (default `etlfs:DIR`, DIR the served directory); the
    /// mount helper sets it to the fstab line's source, so that `mount -a` sees it mounted.
    #[arg(long, value_name = "NAME")]
    pub fsname: Option<String>,
    #[command(flatten)]
    pub history: HistoryArgs,
    #[command(flatten)]
    pub as_of: AsOfMountArgs,
    /// The directory to mount over.
    pub mountpoint: PathBuf,
}

impl MountArgs {
    /// FUSE passthrough, unless `--no-passthrough`.
    pub fn passthrough(&self) -> bool {
        !self.no_passthrough
    }

    /// Background download of every bucket-only file after mounting, unless `--no-prefetch`.
    pub fn prefetch(&self) -> bool {
        !self.no_prefetch
    }

    /// How long a request waiting for a download waits for a bucket that delivers nothing;
    /// `None` (`--fetch-timeout 0`): as long as it takes.
    pub fn fetch_timeout(&self) -> Option<std::time::Duration> {
        (!self.fetch_timeout.is_zero()).then_some(self.fetch_timeout)
    }

    /// The lease that makes this mount the one writer of its prefix (`None`: `--no-lease`).
    pub fn lease(&self) -> Option<LeaseArgs> {
        (!self.no_lease).then_some(LeaseArgs {
            takeover: self.takeover,
            period: self.lease_period,
        })
    }

    /// How versions that uploads and deletes would destroy are kept.
    pub fn history(&self) -> crate::store::bucket::history::Settings {
        self.history.clone().into()
    }

    /// The point in time served read-only, if any.
    pub fn as_of(&self) -> Option<std::time::SystemTime> {
        self.as_of.as_of
    }
}

/// How a writer takes and keeps the lease (see [`crate::engine::lease`]).
#[derive(Debug, Clone)]
pub struct LeaseArgs {
    /// Take the lease even from a live holder (which then stops writing) or an unreadable
    /// lease object.
    pub takeover: bool,
    /// How often the lease is renewed; it expires after three periods without a renewal.
    pub period: std::time::Duration,
}

/// A read-only mount of a point in time.
#[derive(Debug, Clone, clap::Args)]
pub struct AsOfMountArgs {
    /// Serve the directory as the bucket held it at TIME (RFC 3339, or a duration ago: `3h`),
    /// fetching each file on first open from the versions history kept. Needs --read-only and
    /// an empty directory; writes nothing to the bucket.
    #[arg(long, value_name = "TIME", value_parser = crate::engine::as_of::parse_as_of, requires = "read_only")]
    pub as_of: Option<std::time::SystemTime>,
    /// Mount read-only (only with --as-of for now).
    #[arg(long, requires = "as_of")]
    pub read_only: bool,
}

/// How the bucket keeps the versions it would otherwise overwrite or delete.
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryArgs {
    /// Keep at most one old version per file per this long (a version replaced by an empty
    /// file, and a deleted one, are always kept). `0s` keeps every version.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub history_interval: std::time::Duration,
    /// Delete kept versions this long after they were replaced; `0` keeps no history.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub history_retention: std::time::Duration,
    /// Corruption tripwire: this many files truncated to zero, shrunk to less than half, or
    /// deleted within --history-tripwire-window log a warning, raise a metric and /status flag,
    /// and keep every version whatever the interval; `0` turns it off.
    #[arg(long, default_value_t = crate::store::bucket::history::DEFAULT_TRIPWIRE_FILES, value_name = "N")]
    pub history_tripwire: usize,
    /// The tripwire's window; a trip lasts this long after the last such change.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub history_tripwire_window: std::time::Duration,
}

impl From<HistoryArgs> for crate::store::bucket::history::Settings {
    fn from(a: HistoryArgs) -> Self {
        crate::store::bucket::history::Settings {
            interval: a.history_interval,
            retention: a.history_retention,
            tripwire_files: a.history_tripwire,
            tripwire_window: a.history_tripwire_window,
        }
    }
}

/// What `backup`, `restore` and `verify` share: the bucket, named as for `mount`, and DIR.
#[derive(Debug, clap::Args)]
pub struct OneshotArgs {
    /// Thanos-style object-store.yaml describing the bucket (S3, GCS, AZURE, FILESYSTEM).
    /// Without it, the FILESYSTEM bucket `mount` uses by default, beside DIR.
    #[arg(long, env = "ETLFS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Key prefix, joined after the file's own top-level `prefix` (e.g. `etl`).
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// The directory (what `mount` serves); its `.etlfs/` state directory is not data.
    pub dir: PathBuf,
}

impl From<OneshotArgs> for crate::cli::oneshot::Target {
    fn from(a: OneshotArgs) -> Self {
        crate::cli::oneshot::Target {
            dir: a.dir,
            config: a.config,
            prefix: a.prefix,
        }
    }
}

/// Parses `1234`, `500KB`, `20MiB`, `1.5GiB`, `2T`: decimal kB/MB/GB/TB, binary KiB/MiB/...,
/// any case, the `B` optional.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    // parse-size wants a digit before the point; `.5GiB` has always been accepted here.
    let text = match text.strip_prefix('.') {
        Some(fraction) => format!("0.{fraction}"),
        None => text.to_string(),
    };
    match parse_size::parse_size(&text) {
        Ok(bytes) => Ok(bytes),
        // Beyond 16 EiB a bound bounds nothing; it has always been taken as the largest one.
        Err(parse_size::Error::PosOverflow) => Ok(u64::MAX),
        Err(_) => Err(format!(
            "{} is not a size: a number with an optional unit, e.g. 500MiB, 20GB or 1.5T",
            esc(s)
        )),
    }
}

/// A lease period: whole seconds, at least one (the lease records it in seconds).
fn parse_period(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d < std::time::Duration::from_secs(1) || d.subsec_nanos() != 0 {
        return Err(format!(
            "{s:?}: the lease period is whole seconds, at least 1s"
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_in_every_unit_and_case() {
        for (text, want) in [
            ("1234", 1234),
            ("0", 0),
            (" 20GiB ", 20 << 30),
            ("500MB", 500_000_000),
            ("500mb", 500_000_000),
            ("500 MiB", 500 << 20),
            ("1.5GiB", 3 << 29),
            (".5k", 500),
            ("2T", 2_000_000_000_000),
            ("2ti", 2 << 40),
            ("1kb", 1000),
            ("1KiB", 1024),
            ("7b", 7),
            ("99999999999999999999TB", u64::MAX),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn errors_name_the_input() {
        for bad in ["", "MB", "20XB", "-5GB", "1.2.3G", "twenty"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains("is not a size"), "{bad:?}: {e}");
            assert!(e.contains(bad), "{bad:?}: {e}");
        }
    }
}
