//! The command line's companions and supervisors, through the real binary: the bash completion
//! script loaded into a real bash and asked to complete; the man pages rendered by groff
//! without a warning; and the systemd readiness protocol (`NOTIFY_SOCKET`) received on a
//! socket the test binds, as systemd would: `READY=1` only once the mount answers, never while
//! the bucket cannot be reached, `STOPPING=1` at SIGTERM.

use std::ffi::OsStr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{self, Mounted, Opts, bucket};

// ---------------------------------------------------------------------------------------------
// Completions and man pages
// ---------------------------------------------------------------------------------------------

/// What a real bash, with etlfs' completion script loaded, offers for the words `line` (the
/// last one being completed).
fn bash_completes(script: &Path, line: &[&str]) -> Vec<String> {
    let words = line
        .iter()
        .map(|w| format!("'{w}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let program = format!(
        r#"set -e
source '{script}'
# The function `complete` registered for etlfs, called as bash calls it.
spec=$(complete -p etlfs)
fn=$(sed -E 's/.* -F ([^ ]+) .*/\1/' <<<"$spec")
COMP_WORDS=({words})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="${{COMP_WORDS[*]}}"
COMP_POINT=${{#COMP_LINE}}
"$fn" etlfs "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}"
"#,
        script = script.display()
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "bash failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completion_completes_commands_and_flags() {
    let run = common::run(["completions", "bash"]);
    run.assert_ok("etlfs completions bash");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("etlfs.bash");
    std::fs::write(&script, &run.stdout).unwrap();

    assert_eq!(bash_completes(&script, &["etlfs", "mo"]), ["mount"]);
    let mut upload = bash_completes(&script, &["etlfs", "mount", "--upload-"]);
    upload.sort();
    assert_eq!(
        upload,
        [
            "--upload-concurrency",
            "--upload-delay",
            "--upload-max-delay"
        ]
    );
    let shells = bash_completes(&script, &["etlfs", "completions", ""]);
    for shell in ["bash", "zsh", "fish"] {
        assert!(shells.iter().any(|s| s == shell), "{shells:?}");
    }
}

#[test]
fn zsh_and_fish_scripts_are_generated_for_etlfs() {
    let zsh = common::run(["completions", "zsh"]);
    zsh.assert_ok("etlfs completions zsh");
    assert!(zsh.stdout.starts_with("#compdef etlfs"), "{}", zsh.stdout);
    assert!(zsh.stdout.contains("--upload-delay"));
    let fish = common::run(["completions", "fish"]);
    fish.assert_ok("etlfs completions fish");
    assert!(fish.stdout.contains("complete -c etlfs"), "{}", fish.stdout);
    assert!(fish.stdout.contains("upload-delay"));
    let bad = common::run(["completions", "tcsh"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

/// `page` (roff) rendered by groff with every warning on: the text, and fails on any warning.
fn render(page: &[u8], what: &str) -> String {
    use std::io::Write;
    let mut groff = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-P", "-cbou"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("groff is installed (scripts/test.sh installs groff-base)");
    groff.stdin.take().unwrap().write_all(page).unwrap();
    let out = groff.wait_with_output().unwrap();
    assert!(out.status.success(), "{what}: groff failed");
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(warnings.is_empty(), "{what}: groff warns:\n{warnings}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn man_pages_render_without_warnings_and_name_every_command() {
    let page = common::run(["man"]);
    page.assert_ok("etlfs man");
    let text = render(page.stdout.as_bytes(), "etlfs.1");
    for cmd in [
        "mount",
        "status",
        "backup",
        "restore",
        "verify",
        "history",
        "completions",
        "man",
    ] {
        assert!(
            text.contains(&format!("etlfs-{cmd}(1)")),
            "etlfs(1) does not list `{cmd}`:\n{text}"
        );
    }

    let mount = common::run(["man", "mount"]);
    mount.assert_ok("etlfs man mount");
    let text = render(mount.stdout.as_bytes(), "etlfs-mount.1");
    for flag in ["--config", "--background", "--options", "MOUNTPOINT"] {
        assert!(text.contains(flag), "etlfs-mount(1) lacks {flag}:\n{text}");
    }

    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man1");
    common::run([OsStr::new("man"), OsStr::new("--dir"), pages.as_os_str()])
        .assert_ok("etlfs man --dir");
    let mut names: Vec<String> = std::fs::read_dir(&pages)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(names.contains(&"etlfs.1".to_string()), "{names:?}");
    assert!(names.contains(&"etlfs-mount.1".to_string()), "{names:?}");
    for name in &names {
        render(&std::fs::read(pages.join(name)).unwrap(), name);
    }

    let unknown = common::run(["man", "mnt"]);
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    assert!(unknown.stderr.contains("mnt"), "{}", unknown.stderr);
}

// ---------------------------------------------------------------------------------------------
// sd_notify
// ---------------------------------------------------------------------------------------------

/// The socket systemd would listen on, bound by the test, and what arrived so far.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    socket: UnixDatagram,
    /// Every line received, in order.
    lines: Vec<String>,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        NotifySocket {
            _dir: dir,
            path,
            socket,
            lines: Vec::new(),
        }
    }

    /// `NOTIFY_SOCKET` for the daemon.
    fn env(&self) -> (String, String) {
        ("NOTIFY_SOCKET".into(), self.path.display().to_string())
    }

    /// Receives until a line satisfies `want` (returns `true`) or `secs` pass.
    fn wait_for(&mut self, secs: u64, want: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let before = self.lines.len();
                self.lines.extend(msg.lines().map(str::to_owned));
                if self.lines[before..].iter().any(|l| want(l)) {
                    return true;
                }
            }
        }
        false
    }

    /// Everything that arrived and is still queued (after the sender is gone).
    fn drain(&mut self) {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.lines.extend(msg.lines().map(str::to_owned));
        }
    }

    fn position(&self, line: &str) -> Option<usize> {
        self.lines.iter().position(|l| l == line)
    }
}

/// statfs(2)'s type for a FUSE filesystem.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

#[allow(clippy::unnecessary_cast)] // `f_type`'s width differs between architectures
fn is_fuse(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|st| st.f_type as i64 == FUSE_SUPER_MAGIC)
}

#[test]
fn ready_once_the_mount_answers_and_stopping_at_sigterm() {
    let target = bucket::target("filesystem");
    let mut notify = NotifySocket::bind();
    let (opts, _cfg) = bucket::opts_on(
        &target,
        "100ms",
        Opts {
            env: vec![notify.env()],
            ..Opts::default()
        },
    );
    let mut m = Mounted::start_unmounted(opts);
    assert!(
        notify.wait_for(60, |l| l == "READY=1"),
        "no READY=1 ({:?}):\n{}",
        notify.lines,
        m.log()
    );
    // At READY the mount point already shows the FUSE filesystem, answering.
    assert!(is_fuse(&m.mnt), "READY=1 before the mount answers");
    assert!(common::is_mounted(&m.mnt));
    m.wait_mounted_for(Duration::from_secs(10));
    let ready = notify.position("READY=1").unwrap();
    let listing = notify
        .position("STATUS=starting: loading the bucket listing")
        .unwrap_or_else(|| panic!("{:?}", notify.lines));
    assert!(listing < ready, "{:?}", notify.lines);
    assert!(
        notify.lines[ready..]
            .iter()
            .any(|l| l.starts_with("STATUS=serving ") && l.ends_with("/m")),
        "{:?}",
        notify.lines
    );
    assert!(notify.position("STOPPING=1").is_none());

    let st = m.stop();
    assert!(st.success(), "{st}:\n{}", m.log());
    notify.drain();
    let stopping = notify
        .position("STOPPING=1")
        .unwrap_or_else(|| panic!("no STOPPING=1: {:?}", notify.lines));
    assert!(stopping > ready);
}

#[test]
fn no_ready_while_the_bucket_cannot_be_reached() {
    // An S3 endpoint nobody listens on, one attempt per request.
    let port = common::free_port();
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        cfg.path(),
        format!(
            "type: S3\nconfig:\n  bucket: nowhere\n  endpoint: 127.0.0.1:{port}\n  insecure: true\n  \
             access_key: k\n  secret_key: s\n  region: us-east-1\n  max_retries: 1\n"
        ),
    )
    .unwrap();
    let mut notify = NotifySocket::bind();
    let mut m = Mounted::start_unmounted(Opts {
        env: vec![notify.env()],
        ..Opts::on(cfg.path())
    });
    assert!(
        notify.wait_for(120, |l| l
            .starts_with("STATUS=starting: waiting for the bucket")),
        "no waiting status ({:?}):\n{}",
        notify.lines,
        m.log()
    );
    assert!(!common::is_mounted(&m.mnt));
    m.signal(rustix::process::Signal::TERM);
    let st = m
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("etlfs did not stop:\n{}", m.log()));
    assert!(st.success(), "{st}:\n{}", m.log());
    notify.drain();
    assert!(notify.position("READY=1").is_none(), "{:?}", notify.lines);
    assert!(
        notify.position("STOPPING=1").is_some(),
        "{:?}",
        notify.lines
    );
}
