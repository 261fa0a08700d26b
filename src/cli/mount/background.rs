//! `etlfs mount --background`: return once the mount is ready and leave etlfs serving it, as
//! `mount(8)` expects of a mount helper (it waits for the helper to exit, and reports its exit
//! code).
//!
//! The command starts itself again as the daemon: the same program with the same arguments
//! (`argv[0]` included, so that the mount helper's name still counts), [`DAEMON_ENV`] set so
//! that this time `--background` means "be the daemon", and `NOTIFY_SOCKET` pointing at a
//! datagram socket in a private temporary directory. It then waits for the daemon's `READY=1`
//! there ([`super::notify`], the same message systemd gets) and exits 0, or for the daemon to
//! exit first, whose exit code it exits with (the daemon has said why). Forking once the
//! mount is ready is not an option: by then the process runs many threads, and a fork keeps
//! one. A SIGTERM or SIGINT to the waiting command stops the daemon too.
//!
//! The daemon leaves the session of whoever started it (`setsid`), so that closing that
//! terminal does not hang it up. Its stdin and stdout are `/dev/null`; its stderr is the
//! caller's until the mount is ready, so that a failed start says why where `mount` was run.
//! Then it lets go of it: a process that reads the output of `mount` to its end (a `$(...)`, a
//! configuration tool) would otherwise wait for the daemon to exit. From then on the log goes
//! to `--log-file`; without one it stays on the systemd journal if stderr is that
//! (`JOURNAL_STREAM`, as for an fstab mount at boot), and is dropped otherwise (`/status` and
//! `etlfs status` still show the last warnings and errors).

use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tracing::info;

use crate::escape::esc;
use crate::os::sys;

/// Set in the daemon's environment by the command that waits for it.
pub(super) const DAEMON_ENV: &str = "ETLFS_BACKGROUND_DAEMON";

/// What this process is for a `--background` mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Not `--background`: serve in the foreground.
    Foreground,
    /// Start the daemon and wait until it is ready.
    Waiter,
    /// The daemon a waiter started.
    Daemon,
}

impl Role {
    pub(super) fn of(background: bool) -> Role {
        match (background, std::env::var_os(DAEMON_ENV).is_some()) {
            (false, _) => Role::Foreground,
            (true, false) => Role::Waiter,
            (true, true) => Role::Daemon,
        }
    }
}

/// How the daemon's start ended, for the waiting command.
pub(super) enum Started {
    /// It sent `READY=1`: the mount answers.
    Ready,
    /// It exited (or was stopped by our signal) before that.
    Exited(ExitStatus),
}

/// Starts the daemon and waits until it is ready or gone.
pub(super) fn start_daemon() -> anyhow::Result<Started> {
    let dir = tempfile::Builder::new()
        .prefix("etlfs-ready.")
        .tempdir()
        .context("creating a directory for the readiness socket")?;
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path)
        .with_context(|| format!("binding the readiness socket {}", esc(&path)))?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGTERM, libc::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let mut argv = std::env::args_os();
    let arg0 = argv.next().unwrap_or_else(|| "etlfs".into());
    let exe = std::env::current_exe().context("finding the etlfs binary")?;
    let mut daemon = Command::new(exe)
        .arg0(arg0)
        .args(argv)
        .env(DAEMON_ENV, "1")
        .env("NOTIFY_SOCKET", &path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting the etlfs daemon")?;
    let mut buf = [0u8; 4096];
    loop {
        match socket.recv(&mut buf) {
            Ok(n)
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1") =>
            {
                return Ok(Started::Ready);
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e).context("reading the readiness socket"),
        }
        if let Some(st) = daemon.try_wait()? {
            return Ok(Started::Exited(st));
        }
        if stop.swap(false, Ordering::Relaxed) {
            info!("stopping the etlfs daemon before it is ready");
            let _ = sys::terminate(daemon.id());
            // It stops within its drain timeout: waited for like any stop.
            return Ok(Started::Exited(daemon.wait()?));
        }
    }
}

/// The daemon's first step: a session of its own.
pub(super) fn detach_session() -> anyhow::Result<()> {
    sys::setsid().context("leaving the caller's session")
}

/// The daemon's step once the mount is ready: let go of the caller's stderr (see the module
/// doc for where the log goes instead: `log` is `--log-file`, opened).
pub(super) fn detach_output(log: Option<&LogFile>) -> anyhow::Result<()> {
    let devnull;
    let target = match log {
        Some(log) => {
            info!(log_file = %esc(&log.path), "mounted in the background; the log goes on in the log file");
            log.file.as_fd()
        }
        None if stderr_is_journal() => {
            info!("mounted in the background; the log goes on in the journal");
            return Ok(());
        }
        None => {
            info!(
                "mounted in the background; the log stops here (pass --log-file, or -o log_file=FILE; \
                 `etlfs status` shows the last warnings and errors)"
            );
            devnull = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .context("opening /dev/null")?;
            devnull.as_fd()
        }
    };
    sys::redirect_output(target).context("redirecting the log")
}

/// `--log-file`, opened for appending before anything else happens (a path that cannot be
/// written fails the start at once).
pub(super) struct LogFile {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl LogFile {
    pub(super) fn open(path: &Path) -> Result<LogFile, crate::cli::UsageError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| crate::cli::UsageError::Inaccessible {
                what: "log file",
                path: path.to_owned(),
                source,
            })?;
        Ok(LogFile {
            path: path.to_owned(),
            file,
        })
    }

    /// In the foreground: the log goes to the file from now on.
    pub(super) fn take_over_output(&self) -> anyhow::Result<()> {
        sys::redirect_output(self.file.as_fd()).context("redirecting the log")
    }
}

/// Whether stderr is the systemd journal's stream: systemd names it in `JOURNAL_STREAM`
/// (`DEVICE:INODE`) for the processes it connects to the journal.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    match (
        dev.parse::<u64>(),
        ino.parse::<u64>(),
        sys::stderr_identity(),
    ) {
        (Ok(dev), Ok(ino), Ok(actual)) => actual == (dev, ino),
        _ => false,
    }
}
