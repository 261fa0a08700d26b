//! The application's requests win the CPU and the disk: the daemon's background threads (the
//! I/O runtime that uploads, downloads and serves the status page) run at a lower CPU and I/O
//! priority than the FUSE threads that answer the application. Read back from the kernel
//! (`/proc/PID/task/*/stat`, `ionice`) of a real mount that has uploaded a file.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{self, Mounted, Opts};

/// (thread name, nice, scheduling policy) of every thread of `pid`.
fn threads(pid: u32) -> Vec<(u32, String, i64, u32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid: u32 = entry
            .unwrap()
            .file_name()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) else {
            continue; // the thread ended
        };
        // The name is in parentheses and may hold spaces: the fields follow the last ')'.
        let (head, rest) = stat.rsplit_once(')').unwrap();
        let name = head.split_once('(').unwrap().1.to_string();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Fields 19 (nice) and 41 (policy) of proc_pid_stat(5); `rest` starts at field 3.
        let nice: i64 = fields[19 - 3].parse().unwrap();
        let policy: u32 = fields[41 - 3].parse().unwrap();
        out.push((tid, name, nice, policy));
    }
    out
}

fn ionice(tid: u32) -> String {
    let out = Command::new("ionice")
        .arg("-p")
        .arg(tid.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ionice: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn background_threads_yield_to_the_fuse_threads() {
    let port = common::free_port();
    let mut m = Mounted::with(Opts::default().listen(port));
    // An upload, so that the runtime has done real work (and started its blocking threads).
    std::fs::write(m.path("a"), b"some bytes").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !common::mirror_idle(port) {
        assert!(Instant::now() < deadline, "the upload did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }

    let all = threads(m.pid());
    let (background, foreground): (Vec<_>, Vec<_>) =
        all.iter().partition(|(_, name, _, _)| name == "etlfs-io");
    assert!(!background.is_empty(), "no runtime threads among {all:?}");
    assert!(!foreground.is_empty(), "no other threads among {all:?}");
    for (tid, name, nice, policy) in &background {
        assert_eq!(
            (*nice, *policy),
            (5, 3),
            "{name} {tid}: nice and policy (3 = SCHED_BATCH)"
        );
        assert_eq!(ionice(*tid), "best-effort: prio 7", "{name} {tid}");
    }
    // The main thread and the FUSE session threads keep the process's priority.
    for (tid, name, nice, policy) in &foreground {
        assert_eq!(
            (*nice, *policy),
            (0, 0),
            "{name} {tid}: nice and policy (0 = SCHED_OTHER)"
        );
        assert_ne!(ionice(*tid), "best-effort: prio 7", "{name} {tid}");
    }
    m.stop();
}
