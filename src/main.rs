//! The `etlfs` command line: argument parsing, logging and exit codes.
//!
//! Exit codes: 0 clean, 1 error, 2 bad usage or configuration.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use etlfs::cli::UsageError;
use etlfs::cli::mount::{self, MountArgs};
use etlfs::cli::oneshot;
use etlfs::escape::{esc, esc_chain};

#[derive(Debug, Parser)]
#[command(
    name = "etlfs",
    version,
    about = "Make a directory durable: a FUSE overlay that mirrors it to object storage"
)]
struct Cli {
    /// Log format: human-readable lines, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true, env = "ETLFS_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

// Parsed once at start: the size of the biggest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Mount over MOUNTPOINT (or serve --local DIR there) and run in the foreground until
    /// SIGTERM/SIGINT or `umount`.
    Mount {
        /// Serve this directory at MOUNTPOINT instead of the directory MOUNTPOINT itself.
        #[arg(long, value_name = "DIR")]
        local: Option<PathBuf>,
        /// Where etlfs keeps its state; default `.etlfs/` inside the served directory (it is
        /// invisible through the mount).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Never use FUSE passthrough; serve every read and write through etlfs.
        #[arg(long)]
        no_passthrough: bool,
        /// FUSE session threads.
        #[arg(long, default_value_t = 4, value_name = "N")]
        threads: usize,
        /// Serve extended attributes of the local files (get/set/list/remove). They are NOT
        /// mirrored to the bucket, so a restore loses them; without this flag they are
        /// refused (EOPNOTSUPP), which also spares the kernel one request per write.
        #[arg(long)]
        xattrs: bool,
        /// Thanos-style object-store.yaml describing the bucket (S3, GCS, AZURE, FILESYSTEM).
        /// Without it, a FILESYSTEM bucket beside the served directory is used.
        #[arg(long, env = "ETLFS_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Key prefix, joined after the file's own top-level `prefix` (e.g. `etl`).
        #[arg(long, value_name = "P")]
        prefix: Option<String>,
        /// Quiet time after the last close before a file is uploaded; new activity restarts it.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, value_name = "DURATION")]
        upload_delay: std::time::Duration,
        /// A changed file is uploaded at least this often however often it changes (each
        /// upload a closed or fsynced state), so a file rewritten without pause still reaches
        /// the bucket.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
        upload_max_delay: std::time::Duration,
        /// Uploads in flight at once.
        #[arg(long, default_value_t = 8, value_name = "N")]
        upload_concurrency: usize,
        /// On SIGTERM, how long to keep uploading pending changes before exiting.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
        drain_timeout: std::time::Duration,
        /// Do not download the files that are only in the bucket in the background after
        /// mounting (by default a new node copies them all, application opens first); they are
        /// then downloaded when opened.
        #[arg(long)]
        no_prefetch: bool,
        /// The default; kept so that older command lines still work.
        #[arg(long, hide = true, conflicts_with = "no_prefetch")]
        prefetch: bool,
        /// Downloads from the bucket at once (opens, readahead and prefetch share them).
        #[arg(long, default_value_t = etlfs::engine::fetch::DEFAULT_CONCURRENCY, value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u16).range(1..=1024), usize::from), value_name = "N")]
        fetch_concurrency: usize,
        /// An application waiting for a download gets EIO once the bucket has delivered
        /// nothing for this long; `0` waits as long as it takes (like a hard NFS mount).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, value_name = "DURATION")]
        fetch_timeout: std::time::Duration,
        /// Bound local file bytes (e.g. `20GiB`, `500MB`, or plain bytes): least recently used
        /// files that are already in the bucket are evicted and fetched again when opened.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_local_bytes: Option<u64>,
        /// Address of the status server: /metrics (Prometheus), /status (JSON), /healthz,
        /// /readyz. Port 0 picks a free port (the startup log names it).
        #[arg(long, env = "ETLFS_LISTEN", default_value = etlfs::ops::status::DEFAULT_LISTEN, value_name = "ADDR")]
        listen: String,
        /// /status says `degraded` once bucket operations have failed, with no success in
        /// between, for this long.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
        degraded_after: std::time::Duration,
        /// Take the prefix's lease even from a live holder (another etlfs, which then stops
        /// writing the bucket) or from a lease object this etlfs cannot read.
        #[arg(long, conflicts_with = "no_lease")]
        takeover: bool,
        /// Do not take the lease: nothing then stops a second etlfs from writing the same prefix
        /// (for buckets without conditional writes).
        #[arg(long)]
        no_lease: bool,
        /// How often the lease is renewed; another node may take it over after three periods
        /// without a renewal.
        #[arg(long, default_value = "10s", value_parser = parse_period, value_name = "DURATION")]
        lease_period: std::time::Duration,
        /// Mount options, comma-separated, repeatable (`-o ro,noatime -o nodev`): ro, nosuid
        /// and nodev (the default) or suid and dev, noexec, sync, dirsync, noatime, nodiratime,
        /// ...; what fstab passes for mount(8) (defaults, nofail, x-*, ...) is ignored.
        #[arg(short = 'o', long = "options", value_name = "OPT[,OPT...]")]
        options: Vec<String>,
        #[command(flatten)]
        history: HistoryArgs,
        #[command(flatten)]
        as_of: AsOfMountArgs,
        /// The directory to mount over.
        mountpoint: PathBuf,
    },
    /// Print a running mount's status; exit 0 only when it is ready (usable as a probe).
    Status {
        /// Address of the mount's status server (its `mount --listen`).
        #[arg(long, env = "ETLFS_LISTEN", default_value = etlfs::ops::status::DEFAULT_LISTEN, value_name = "ADDR")]
        listen: String,
    },
    /// One shot, no mount: upload every file of DIR that the bucket lacks or holds stale.
    Backup {
        /// Upload without taking the prefix's lease, even while a mount holds it (the two may
        /// then overwrite each other's uploads).
        #[arg(long)]
        ignore_lease: bool,
        #[command(flatten)]
        history: HistoryArgs,
        #[command(flatten)]
        target: OneshotArgs,
    },
    /// One shot, no mount: download every file DIR lacks; a local file that is not older than
    /// the bucket's is kept unless --force.
    Restore {
        /// Also replace local files that are newer than the bucket's (when they differ from it).
        #[arg(long)]
        force: bool,
        /// Rebuild DIR as the bucket held it at TIME (RFC 3339, or a duration ago: `3h`), from
        /// the versions history kept; files that differ are replaced whatever their mtime.
        #[arg(long, value_name = "TIME", value_parser = etlfs::engine::as_of::parse_as_of)]
        as_of: Option<std::time::SystemTime>,
        #[command(flatten)]
        target: OneshotArgs,
    },
    /// One shot, no mount: compare DIR and the bucket by checksum, print every difference on
    /// stdout, exit 1 if there is any.
    Verify {
        /// Compare with the bucket as it was at TIME (RFC 3339, or a duration ago: `3h`).
        #[arg(long, value_name = "TIME", value_parser = etlfs::engine::as_of::parse_as_of)]
        as_of: Option<std::time::SystemTime>,
        #[command(flatten)]
        target: OneshotArgs,
    },
    /// Print the points in time a restore can rebuild from the versions history kept, or with
    /// PATH the kept versions of that file, those replaced by an empty file first.
    History {
        /// Thanos-style object-store.yaml describing the bucket (S3, GCS, AZURE, FILESYSTEM).
        #[arg(long, env = "ETLFS_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Key prefix, joined after the file's own top-level `prefix` (e.g. `etl`).
        #[arg(long, value_name = "P")]
        prefix: Option<String>,
        /// The served directory: only needed without --config, to find the FILESYSTEM bucket
        /// `mount` uses by default beside it.
        #[arg(long, value_name = "DIR", required_unless_present = "config")]
        dir: Option<PathBuf>,
        /// A file, relative to the served directory.
        path: Option<PathBuf>,
    },
}

/// A read-only mount of a point in time.
#[derive(Debug, Clone, clap::Args)]
struct AsOfMountArgs {
    /// Serve the directory as the bucket held it at TIME (RFC 3339, or a duration ago: `3h`),
    /// fetching each file on first open from the versions history kept. Needs --read-only and
    /// an empty directory; writes nothing to the bucket.
    #[arg(long, value_name = "TIME", value_parser = etlfs::engine::as_of::parse_as_of, requires = "read_only")]
    as_of: Option<std::time::SystemTime>,
    /// Mount read-only (only with --as-of for now).
    #[arg(long, requires = "as_of")]
    read_only: bool,
}

/// How the bucket keeps the versions it would otherwise overwrite or delete.
#[derive(Debug, Clone, clap::Args)]
struct HistoryArgs {
    /// Keep at most one old version per file per this long (a version replaced by an empty
    /// file, and a deleted one, are always kept). `0s` keeps every version.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, value_name = "DURATION")]
    history_interval: std::time::Duration,
    /// Delete kept versions this long after they were replaced; `0` keeps no history.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    history_retention: std::time::Duration,
    /// Corruption tripwire: this many files truncated to zero, shrunk to less than half, or
    /// deleted within --history-tripwire-window log a warning, raise a metric and /status flag,
    /// and keep every version whatever the interval; `0` turns it off.
    #[arg(long, default_value_t = etlfs::store::bucket::history::DEFAULT_TRIPWIRE_FILES, value_name = "N")]
    history_tripwire: usize,
    /// The tripwire's window; a trip lasts this long after the last such change.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    history_tripwire_window: std::time::Duration,
}

impl From<HistoryArgs> for etlfs::store::bucket::history::Settings {
    fn from(a: HistoryArgs) -> Self {
        etlfs::store::bucket::history::Settings {
            interval: a.history_interval,
            retention: a.history_retention,
            tripwire_files: a.history_tripwire,
            tripwire_window: a.history_tripwire_window,
        }
    }
}

/// What `backup`, `restore` and `verify` share: the bucket, named as for `mount`, and DIR.
#[derive(Debug, clap::Args)]
struct OneshotArgs {
    /// Thanos-style object-store.yaml describing the bucket (S3, GCS, AZURE, FILESYSTEM).
    /// Without it, the FILESYSTEM bucket `mount` uses by default, beside DIR.
    #[arg(long, env = "ETLFS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Key prefix, joined after the file's own top-level `prefix` (e.g. `etl`).
    #[arg(long, value_name = "P")]
    prefix: Option<String>,
    /// The directory (what `mount` serves); its `.etlfs/` state directory is not data.
    dir: PathBuf,
}

impl From<OneshotArgs> for oneshot::Target {
    fn from(a: OneshotArgs) -> Self {
        oneshot::Target {
            dir: a.dir,
            config: a.config,
            prefix: a.prefix,
        }
    }
}

/// A one-shot command's outcome for the exit code: a bad directory or configuration stays the
/// [`UsageError`] that exit code 2 is read from.
fn oneshot_result(res: Result<(), oneshot::OneshotError>) -> anyhow::Result<()> {
    res.map_err(|e| match e {
        oneshot::OneshotError::Usage(u) => u.into(),
        e => e.into(),
    })
}

/// Parses `1234`, `500KB`, `20MiB`, `1.5GiB`, `2T`: decimal kB/MB/GB/TB, binary KiB/MiB/...,
/// any case, the `B` optional.
fn parse_size(s: &str) -> Result<u64, String> {
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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // fuser logs an expected double-unmount attempt as a warning at every clean shutdown;
        // object_store logs every internal retry at info, which floods the log in an outage.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,fuser=error,object_store=warn")
        });
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = match format {
        LogFormat::Human => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    // The same filter for both: /status shows exactly the warnings the log holds.
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(etlfs::ops::status::recent::layer())
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Mount {
            local,
            state_dir,
            no_passthrough,
            threads,
            xattrs,
            config,
            prefix,
            upload_delay,
            upload_max_delay,
            upload_concurrency,
            drain_timeout,
            no_prefetch,
            prefetch: _,
            fetch_concurrency,
            fetch_timeout,
            max_local_bytes,
            listen,
            degraded_after,
            takeover,
            no_lease,
            lease_period,
            options,
            history,
            as_of,
            mountpoint,
        } => mount::mount(MountArgs {
            mountpoint,
            local,
            state_dir,
            passthrough: !no_passthrough,
            threads,
            xattrs,
            config,
            prefix,
            upload_delay,
            upload_max_delay,
            upload_concurrency,
            drain_timeout,
            prefetch: !no_prefetch,
            fetch_concurrency,
            fetch_timeout: (!fetch_timeout.is_zero()).then_some(fetch_timeout),
            max_local_bytes,
            listen,
            degraded_after,
            lease: (!no_lease).then_some(mount::LeaseArgs {
                takeover,
                period: lease_period,
            }),
            options,
            history: history.into(),
            as_of: as_of.as_of,
        }),
        Command::Status { listen } => etlfs::cli::status::run(&listen).map_err(Into::into),
        Command::Backup {
            ignore_lease,
            history,
            target,
        } => oneshot_result(oneshot::backup(
            &target.into(),
            ignore_lease,
            history.into(),
        )),
        Command::Restore {
            force,
            as_of,
            target,
        } => oneshot_result(oneshot::restore(&target.into(), force, as_of)),
        Command::Verify { as_of, target } => oneshot_result(oneshot::verify(&target.into(), as_of)),
        Command::History {
            config,
            prefix,
            dir,
            path,
        } => oneshot_result(oneshot::history(
            config.as_deref(),
            prefix.as_deref(),
            dir.as_deref().unwrap_or(std::path::Path::new(".")),
            path.as_deref(),
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", esc_chain(e.chain()));
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
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
