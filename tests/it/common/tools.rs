//! The outside programs that check what etlfs serves, run with a deadline: `promtool` (from
//! Debian's `prometheus`), headless `chromium`, and Debian's Python with the
//! `prometheus_client` parsers (`python3-prometheus-client`). scripts/test.sh installs all
//! three; a test that needs one fails, naming the package, when it is missing — it is never
//! skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a program did: its exit status and its output.
#[derive(Debug)]
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Panics, with the output, unless the program exited 0.
    pub fn assert_ok(&self, what: &str) -> &Ran {
        assert!(
            self.status.success(),
            "{what} failed ({}):\n{}\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// The program at `path`, or a panic naming the Debian package that brings it.
pub fn need(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.is_file(),
        "{path} is missing: install the Debian package {package} (scripts/test.sh does)"
    );
    p
}

pub fn promtool() -> PathBuf {
    need("/usr/bin/promtool", "prometheus")
}

pub fn chromium() -> PathBuf {
    need("/usr/bin/chromium", "chromium")
}

/// Debian's own Python (not one earlier on `PATH`), where `python3-prometheus-client` lives.
pub fn python() -> PathBuf {
    need("/usr/bin/python3", "python3-prometheus-client")
}

/// Runs `cmd` with `stdin` as its input, killing it after `secs` seconds (a panic then).
/// Output goes through files, so a chatty program cannot block on a full pipe.
pub fn run(mut cmd: Command, stdin: Option<&str>, secs: u64) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let (out, err, inp) = (
        dir.path().join("out"),
        dir.path().join("err"),
        dir.path().join("in"),
    );
    std::fs::write(&inp, stdin.unwrap_or("")).unwrap();
    let file = |p: &Path| std::fs::File::create(p).unwrap();
    let mut child = cmd
        .stdin(Stdio::from(std::fs::File::open(&inp).unwrap()))
        .stdout(file(&out))
        .stderr(file(&err))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still running after {secs} s:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ran {
        status,
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}

/// Headless chromium with a fresh profile, no network of its own (no updates, no sync, no
/// QUIC) and the given extra arguments, on `url`.
pub fn chromium_on(url: &str, args: &[String], secs: u64) -> Ran {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(url);
    run(cmd, None, secs)
}
