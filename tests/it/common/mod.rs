//! The fixture every test module shares: [`Mounted`] runs the real `etlfs` binary over a
//! temporary directory and always unmounts, also when a test fails or panics; [`servers`] are
//! the object-storage servers on 127.0.0.1 and [`bucket`] what the tests do with a bucket on
//! them (or on a FILESYSTEM bucket); [`tools`] runs the outside programs some tests check
//! with (promtool, chromium, Debian's Python).

pub mod bucket;
pub mod servers;
pub mod tools;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const ETLFS: &str = env!("CARGO_BIN_EXE_etlfs");

/// A port nobody listens on right now (for an explicit `--listen`).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An answer of a status server.
#[derive(Debug)]
pub struct Reply {
    pub code: u16,
    /// The header lines, `name: value` each.
    pub head: String,
    pub body: String,
}

/// `GET path` on the status server at 127.0.0.1:port, or `None` if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<Reply> {
    http_get_accept(port, path, "*/*")
}

/// `GET path` with an `Accept` header, or `None` if nothing answers.
pub fn http_get_accept(port: u16, path: &str, accept: &str) -> Option<Reply> {
    let resp = http_client()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header(reqwest::header::ACCEPT, accept)
        .send()
        .ok()?;
    let code = resp.status().as_u16();
    let head = resp
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    let body = resp.text().ok()?;
    Some(Reply { code, head, body })
}

/// The client for the status servers: blocking, never through a proxy from the environment.
fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .expect("an HTTP client")
}

/// `/status` of the mount whose status server listens on `port`, parsed; panics unless it
/// answers 200 with JSON.
pub fn status(port: u16) -> serde_json::Value {
    let r = http_get(port, "/status").expect("the status server answers");
    assert_eq!(r.code, 200, "{}", r.body);
    serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("/status is not JSON ({e}): {}", r.body))
}

/// `/metrics` of the mount whose status server listens on `port`; panics if nothing answers.
pub fn metrics(port: u16) -> String {
    http_get(port, "/metrics")
        .expect("the status server answers")
        .body
}

/// Whether the mount whose status server listens on `port` is ready (`/readyz` answers 200).
pub fn ready(port: u16) -> bool {
    http_get(port, "/readyz").is_some_and(|r| r.code == 200)
}

/// Whether the mirror of the mount whose status server listens on `port` is idle: nothing
/// due or in flight and no journal intent left (`/status`'s `pending`). A change the daemon
/// has not been told of yet does not count: wait for its effect too.
pub fn mirror_idle(port: u16) -> bool {
    let Some(r) = http_get(port, "/status") else {
        return false;
    };
    let Ok(status) = serde_json::from_str::<serde_json::Value>(&r.body) else {
        return false;
    };
    status["pending"]["changes"] == 0 && status["pending"]["journal_intents"] == 0
}

/// The SHA-256 of `data` in hex, as etlfs' `etlfs_sha256` metadata holds it.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A fresh directory `name` in a temporary directory under /tmp, and what keeps it alive.
pub fn workdir(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir_in("/tmp").unwrap();
    let dir = tmp.path().join(name);
    fs::create_dir(&dir).unwrap();
    (tmp, dir)
}

/// What a one-shot `etlfs` command (backup, restore, verify, history) did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The summary log line (`backup finished ...`).
    pub fn summary(&self, op: &str) -> &str {
        let want = format!("{op} finished");
        self.stderr
            .lines()
            .find(|l| l.contains(&want))
            .unwrap_or_else(|| panic!("no summary line in:\n{}", self.stderr))
    }

    pub fn assert_ok(&self, what: &str) {
        assert_eq!(
            self.code, 0,
            "{what}: exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
    }
}

/// Runs `etlfs ARGS...` to its end, logging at `info` (`object_store` at `warn`), with no
/// `ETLFS_CONFIG` from the environment.
pub fn run<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(args: I) -> Run {
    let out = Command::new(ETLFS)
        .args(args)
        .env("RUST_LOG", "info,object_store=warn")
        .env_remove("ETLFS_CONFIG")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Whether a FUSE mount is at `path` (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.to_string_lossy();
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-");
        f.len() > 4
            && f[4] == want
            && sep.is_some_and(|s| f.get(s + 1).is_some_and(|t| t.starts_with("fuse")))
    })
}

/// A running `etlfs mount`.
pub struct Mounted {
    _tmp: tempfile::TempDir,
    /// Where the filesystem is mounted.
    pub mnt: PathBuf,
    /// The directory underneath (the same path as `mnt` for an in-place mount).
    pub local: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    args: Vec<std::ffi::OsString>,
    filter: String,
    env: Vec<(String, String)>,
}

/// How to mount.
#[derive(Default, Clone)]
pub struct Opts {
    /// Serve a separate directory with `--local` instead of mounting in place.
    pub separate_local: bool,
    /// Extra command line arguments.
    pub args: Vec<String>,
    /// Files to create before mounting: (relative path, contents).
    pub files: Vec<(String, Vec<u8>)>,
    /// `RUST_LOG` for the daemon (default: `ETLFS_TEST_LOG` or `info`).
    pub log_filter: Option<String>,
    /// Extra environment variables for the daemon.
    pub env: Vec<(String, String)>,
}

/// The argument lists tests spell out again and again, one call a flag, in the order of the
/// calls: `Opts::on(cfg.path()).upload_delay("100ms").listen(port).arg("--no-prefetch")` is
/// `--config CFG --upload-delay 100ms --listen 127.0.0.1:PORT --no-prefetch`. Every method
/// works on `Opts::default()` too (a mount without a config file, or one that
/// [`bucket::mount_on`] gives its config); what no method covers (`files`, `env`) is set with
/// `Opts { .., ..Opts::on(..) }`.
impl Opts {
    /// A mount on the bucket the object-store config file `cfg` describes: `--config cfg`.
    pub fn on(cfg: &Path) -> Opts {
        Opts::default()
            .arg("--config")
            .arg(cfg.display().to_string())
    }

    /// `--upload-delay delay`.
    pub fn upload_delay(self, delay: &str) -> Opts {
        self.arg("--upload-delay").arg(delay)
    }

    /// `--listen 127.0.0.1:port`: the status server on a port the test knows (see
    /// [`free_port`]).
    pub fn listen(self, port: u16) -> Opts {
        self.arg("--listen").arg(format!("127.0.0.1:{port}"))
    }

    /// `--local dir`: serves a directory the test prepared (not with
    /// [`Opts::separate_local`], which gives one of the fixture's own).
    pub fn local(self, dir: &Path) -> Opts {
        self.arg("--local").arg(dir.display().to_string())
    }

    /// One more argument, after those so far.
    pub fn arg(mut self, arg: impl Into<String>) -> Opts {
        self.args.push(arg.into());
        self
    }

    /// More arguments, after those so far.
    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Opts {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Serve a separate directory of the fixture's (`--local`) instead of mounting in place.
    pub fn separate_local(mut self) -> Opts {
        self.separate_local = true;
        self
    }

    /// `RUST_LOG` for the daemon.
    pub fn log_filter(mut self, filter: &str) -> Opts {
        self.log_filter = Some(filter.into());
        self
    }
}

impl Mounted {
    /// Mounts in place over a fresh temporary directory.
    pub fn new() -> Mounted {
        Mounted::with(Opts::default())
    }

    pub fn with(opts: Opts) -> Mounted {
        let mut m = Mounted::start(opts);
        m.wait_mounted();
        m
    }

    /// Starts etlfs as [`Mounted::with`] does, for a start that must be refused: waits (up
    /// to 60 s) for it to exit and returns its exit status and log. Panics if it mounts
    /// instead (the fixture unmounts it again).
    pub fn refused(opts: Opts) -> (ExitStatus, String) {
        let mut m = Mounted::start(opts);
        let st = m.wait_exit(Duration::from_secs(60));
        let log = m.log();
        assert!(!is_mounted(&m.mnt), "it mounted:\n{log}");
        let st = st.unwrap_or_else(|| panic!("still running after 60 s:\n{log}"));
        (st, log)
    }

    /// Starts etlfs without waiting for the mount (see [`Mounted::wait_mounted_for`]).
    pub fn start_unmounted(opts: Opts) -> Mounted {
        Mounted::start(opts)
    }

    /// Spawns the daemon without waiting for the mount.
    fn start(opts: Opts) -> Mounted {
        let tmp = tempfile::Builder::new()
            .prefix("etlfs")
            .tempdir_in("/tmp")
            .unwrap();
        let mnt = tmp.path().join("m");
        fs::create_dir(&mnt).unwrap();
        let local = if opts.separate_local {
            let l = tmp.path().join("l");
            fs::create_dir(&l).unwrap();
            l
        } else {
            mnt.clone()
        };
        for (rel, data) in &opts.files {
            let p = local.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, data).unwrap();
        }
        let log = tmp.path().join("etlfs.log");
        let mut args: Vec<std::ffi::OsString> = vec!["mount".into()];
        if opts.separate_local {
            args.push("--local".into());
            args.push(local.clone().into());
        }
        args.extend(opts.args.iter().map(Into::into));
        args.push(mnt.clone().into());
        let filter = opts
            .log_filter
            .clone()
            .or_else(|| std::env::var("ETLFS_TEST_LOG").ok())
            .unwrap_or_else(|| "info".into());
        let mut m = Mounted {
            _tmp: tmp,
            mnt,
            local,
            child: None,
            log,
            args,
            filter,
            env: opts.env.clone(),
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(ETLFS)
            .args(&self.args)
            .env("RUST_LOG", &self.filter)
            // Tests run in parallel: each status server takes a free port (an explicit
            // `--listen` in the arguments wins over this).
            .env("ETLFS_LISTEN", "127.0.0.1:0")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etlfs");
        self.child = Some(child);
    }

    /// Starts the daemon again with the same arguments over the same directories, after it
    /// died (a crash test). A dead mount left behind is etlfs' own business to clear.
    pub fn respawn(&mut self) {
        self.respawn_unmounted();
        self.wait_mounted();
    }

    /// Starts the daemon again like [`Mounted::respawn`], without waiting for the mount: for a
    /// daemon that is to wait before it mounts (for a bucket it cannot list).
    pub fn respawn_unmounted(&mut self) {
        let child = self.child.as_mut().unwrap();
        assert!(
            child.try_wait().unwrap().is_some(),
            "respawn needs the old daemon gone"
        );
        // A dead mount may still cover the directory: etlfs must clear it itself.
        self.spawn();
    }

    fn wait_mounted(&mut self) {
        self.wait_mounted_for(Duration::from_secs(20));
    }

    /// Waits up to `timeout` for the mount to be up and answering; panics if it is not.
    pub fn wait_mounted_for(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        // Mounted and answering: a dead mount from a killed daemon is in mountinfo too, but
        // every access to it fails with ENOTCONN.
        // (A listing, not a stat: the kernel can answer a stat of a dead mount's root from its
        // attribute cache, but a listing needs the daemon.)
        while !(is_mounted(&self.mnt) && fs::read_dir(&self.mnt).is_ok()) {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("etlfs exited before mounting ({st}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "etlfs did not mount in time:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Path of `rel` through the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// Waits up to `timeout` for the daemon to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait for a clean exit; returns the exit status. The temporary
    /// directories stay until the fixture is dropped, so tests can inspect them.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        let st = self
            .wait_exit(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("etlfs did not stop:\n{}", self.log()));
        assert!(!is_mounted(&self.mnt), "still mounted after etlfs exited");
        st
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_none() {
            let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}
