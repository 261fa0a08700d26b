//! The `etlfs` command line: argument parsing, logging and exit codes. Called by the mount
//! helper's name (`mount.fuse.etlfs`), it takes `mount(8)`'s arguments instead
//! ([`etlfs::cli::helper`]).
//!
//! Exit codes: 0 clean, 1 error, 2 bad usage or configuration.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use etlfs::cli::UsageError;
use etlfs::cli::args::{HistoryArgs, MountArgs, OneshotArgs};
use etlfs::cli::helper::{HelperError, Invocation};
use etlfs::cli::mount;
use etlfs::cli::oneshot;
use etlfs::escape::esc_chain;

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
    /// Mount over MOUNTPOINT (or serve --local DIR there) and serve it until SIGTERM/SIGINT or
    /// `umount`, in the foreground unless --background.
    Mount(MountArgs),
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
    /// Print the shell completion script for SHELL (e.g. `etlfs completions bash >
    /// /usr/share/bash-completion/completions/etlfs`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page of etlfs, or of one COMMAND (`etlfs man mount`); with --dir, write
    /// every page into DIR.
    Man {
        /// A command, for its own page (`etlfs-COMMAND(1)`).
        command: Option<String>,
        /// Write etlfs.1 and every etlfs-COMMAND.1 into this directory.
        #[arg(long, value_name = "DIR", conflicts_with = "command")]
        dir: Option<PathBuf>,
    },
}

/// A one-shot command's outcome for the exit code: a bad directory or configuration stays the
/// [`UsageError`] that exit code 2 is read from.
fn oneshot_result(res: Result<(), oneshot::OneshotError>) -> anyhow::Result<()> {
    res.map_err(|e| match e {
        oneshot::OneshotError::Usage(u) => u.into(),
        e => e.into(),
    })
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

/// The command line to parse: as given, or the mount helper's, translated.
fn command_line() -> Result<Vec<std::ffi::OsString>, ExitCode> {
    match etlfs::cli::helper::invocation(std::env::args_os().collect(), &Cli::command()) {
        Ok(Invocation::Run(argv)) => Ok(argv),
        Ok(Invocation::Fake) => Err(ExitCode::SUCCESS),
        Err(HelperError::Args(e)) => e.exit(),
        Err(e) => {
            init_logging(LogFormat::Human);
            tracing::error!("{e}");
            Err(ExitCode::from(2))
        }
    }
}

fn main() -> ExitCode {
    let argv = match command_line() {
        Ok(argv) => argv,
        Err(code) => return code,
    };
    let cli = Cli::parse_from(argv);
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Mount(args) => mount::mount(args),
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
        Command::Completions { shell } => etlfs::cli::manual::completions(shell, Cli::command()),
        Command::Man { command, dir } => {
            etlfs::cli::manual::man(Cli::command(), command.as_deref(), dir.as_deref())
        }
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
