//! The trust boundary, through real mounts against real object-storage servers on 127.0.0.1:
//! nothing in the bucket grants privilege on the node (the mount is `nosuid,nodev`, restored
//! files never carry set-uid, set-gid or sticky bits, and never root's ownership unless the
//! directory they land in is root's), and one writer per prefix (the lease).
//!
//! The servers are started by scripts/test.sh; each test gets a bucket of its own.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use crate::common::{self, bucket};
use bucket::{rt, target};
use common::Opts;
use object_store::path::Path as Key;
use object_store::{Attribute, Attributes, ObjectStoreExt, PutOptions, PutPayload};

/// Puts `body` at `key` with etlfs metadata as another writer of the bucket could.
fn put_with_meta(
    t: &bucket::Target,
    key: &str,
    body: &[u8],
    mode: &str,
    owner: Option<(u32, u32)>,
) {
    let mut meta = vec![
        ("etlfs_mtime", "1700000000000000000".to_string()),
        ("etlfs_mode", mode.to_string()),
        ("etlfs_sha256", common::sha256_hex(body)),
    ];
    if let Some((uid, gid)) = owner {
        meta.push(("etlfs_uid", uid.to_string()));
        meta.push(("etlfs_gid", gid.to_string()));
    }
    let mut attributes = Attributes::new();
    for (k, v) in meta {
        attributes.insert(Attribute::Metadata(k.into()), v.into());
    }
    let opts = PutOptions {
        attributes,
        ..Default::default()
    };
    rt().block_on(t.store().put_opts(
        &Key::parse(key).unwrap(),
        PutPayload::from(body.to_vec()),
        opts,
    ))
    .unwrap();
}

/// The options field of the mount at `path` in /proc/self/mounts.
fn mount_options(path: &std::path::Path) -> String {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[1] == path.to_str().unwrap())
        .map(|f| f[3].to_owned())
        .unwrap_or_else(|| panic!("{path:?} is not in /proc/self/mounts"))
}

/// Runs `MOUNT/rel -u` (a copy of `id`) as nobody: the effective uid it prints.
fn euid_as_nobody(path: &std::path::Path) -> String {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(path)
        .arg("-u")
        .output()
        .expect("setpriv (util-linux)");
    assert!(
        out.status.success(),
        "{path:?} as nobody: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A bucket object with `etlfs_mode: 4755` and root as owner, and its set-gid and sticky
/// cousins, restore without those bits and with the served directory's owner in place of
/// root's; a non-root owner is kept. The mount is `nosuid,nodev`, so even a set-uid root file
/// made locally through it runs with the caller's uid.
#[test]
fn bucket_metadata_grants_no_privilege() {
    let t = target("s3");
    let (mut m, _cfg) = bucket::mount_on(&t, "100ms", Opts::default().separate_local());
    let opts = mount_options(&m.mnt);
    assert!(
        opts.split(',').any(|o| o == "nosuid") && opts.split(',').any(|o| o == "nodev"),
        "mount options: {opts}"
    );
    assert!(m.stop().success(), "{}", m.log());

    // The directory underneath belongs to an ordinary user; nobody may reach the mount.
    std::os::unix::fs::chown(&m.local, Some(1234), Some(5678)).unwrap();
    fs::set_permissions(m.mnt.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&m.local, fs::Permissions::from_mode(0o755)).unwrap();
    let id = fs::read("/usr/bin/id").unwrap();
    put_with_meta(&t, "bin/tool", &id, "4755", Some((0, 0)));
    put_with_meta(&t, "bin/nometa-owner", &id, "4755", None);
    put_with_meta(&t, "bin/sgid", b"x", "2775", Some((0, 0)));
    put_with_meta(&t, "bin/sticky", b"y", "1777", Some((4321, 0)));
    put_with_meta(&t, "bin/user", b"z", "640", Some((4321, 8765)));
    m.respawn();

    let want = [
        ("bin/tool", 0o755, (1234, 5678)),
        ("bin/nometa-owner", 0o755, (1234, 5678)),
        ("bin/sgid", 0o775, (1234, 5678)),
        ("bin/sticky", 0o777, (4321, 5678)),
        ("bin/user", 0o640, (4321, 8765)),
    ];
    // As listed (bucket-only), then as placed underneath after the download.
    for (rel, mode, owner) in want {
        let md = fs::metadata(m.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}\n{}", m.log()));
        assert_eq!(md.mode() & 0o7777, mode, "mode of {rel} as listed");
        assert_eq!((md.uid(), md.gid()), owner, "owner of {rel} as listed");
    }
    for (rel, mode, owner) in want {
        fs::read(m.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}\n{}", m.log()));
        let md = fs::metadata(m.local.join(rel)).unwrap();
        assert_eq!(md.mode() & 0o7777, mode, "mode of {rel} restored");
        assert_eq!((md.uid(), md.gid()), owner, "owner of {rel} restored");
    }
    assert_eq!(euid_as_nobody(&m.path("bin/tool")), "65534");

    // A set-uid root program made through the mount (as root may) grants nothing either.
    fs::write(m.path("bin/local-suid"), &id).unwrap();
    std::os::unix::fs::chown(m.path("bin/local-suid"), Some(0), Some(0)).unwrap();
    fs::set_permissions(m.path("bin/local-suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    assert_eq!(
        fs::metadata(m.path("bin/local-suid")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(euid_as_nobody(&m.path("bin/local-suid")), "65534");
    assert!(m.stop().success(), "{}", m.log());
}

// ---------------------------------------------------------------------------------------------
// One writer per prefix: the lease
// ---------------------------------------------------------------------------------------------

crate::on_every_backend!(
    a_second_writer_is_refused_and_a_takeover_fences_the_first,
    a_killed_holder_is_taken_over_once_its_lease_expires,
);

const PREFIX: &str = "etl";

/// Options for a mount of `PREFIX` with a status server on a port of its own, plus `extra`.
fn lease_opts(port: u16, extra: &[&str]) -> Opts {
    Opts::default()
        .args(["--prefix", PREFIX, "--drain-timeout", "3s"])
        .listen(port)
        .args(extra.iter().copied())
}

/// The lease object as JSON, if there is one.
fn lease_of(t: &bucket::Target) -> Option<serde_json::Value> {
    let key = Key::parse(format!("{PREFIX}/.etlfs/lease")).unwrap();
    let got = rt().block_on(async {
        match t.store().get(&key).await {
            Ok(r) => Some(r.bytes().await.unwrap()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("reading the lease: {e}"),
        }
    })?;
    Some(serde_json::from_slice(&got).expect("the lease is JSON"))
}

/// A mounts and uploads; B over another directory is refused (exit 2, naming A); B with
/// `--takeover` mounts, and A — at its next renewal — stops writing the bucket for good: its
/// later upload and removal never reach it (while B's do), /status says `degraded` with the
/// reason, and a SIGTERM exits cleanly without draining. B lets the lease go at its stop.
fn a_second_writer_is_refused_and_a_takeover_fences_the_first(kind: &str) {
    let t = target(kind);
    let store = t.store();
    let rt = rt();
    let (port_a, port_b) = (common::free_port(), common::free_port());
    let (mut a, _ca) = bucket::mount_on(&t, "100ms", lease_opts(port_a, &[]));
    bucket::kubecost_write(&a.path("one"), b"from a").unwrap();
    let key = |rel: &str| format!("{PREFIX}/{rel}");
    let snap = bucket::wait_for(&rt, &*store, Some(PREFIX), 60, |s| {
        s.get(&key("one")).map(Vec::as_slice) == Some(b"from a")
    });
    assert!(snap.contains_key(&key("one")), "{}", a.log());
    let lease = lease_of(&t).expect("A holds the lease");
    assert_eq!(lease["pid"], a.pid(), "{lease}");

    let (opts, _cb) = bucket::opts_on(&t, "100ms", lease_opts(port_b, &[]));
    let (st, log) = common::Mounted::refused(opts);
    assert_eq!(st.code(), Some(2), "{log}");
    assert!(
        log.contains(&format!("pid {}", a.pid())) && log.contains("--takeover"),
        "the refusal names the holder and the way out: {log}"
    );

    let (mut b, _cb) = bucket::mount_on(&t, "100ms", lease_opts(port_b, &["--takeover"]));
    assert_eq!(lease_of(&t).unwrap()["pid"], b.pid());
    assert!(
        bucket::poll(60, || a.log().contains("lease lost")),
        "A never noticed:\n{}",
        a.log()
    );
    let st = common::status(port_a);
    assert_eq!(st["state"], "degraded", "{st}");
    assert!(
        st["bucket"]["writes_stopped"]
            .as_str()
            .is_some_and(|r| r.contains("lease lost")),
        "{st}"
    );

    // A's mirror tries its upload and then its removal, and each is refused (and counted).
    let refused = |what: &str| {
        bucket::poll(60, || {
            common::status(port_a)[what]["failed"].as_u64() >= Some(1)
        })
    };
    bucket::kubecost_write(&a.path("after"), b"from a, fenced").unwrap();
    assert!(
        refused("uploads"),
        "{}\n{}",
        common::status(port_a),
        a.log()
    );
    fs::remove_file(a.path("one")).unwrap();
    assert!(
        refused("deletes"),
        "{}\n{}",
        common::status(port_a),
        a.log()
    );
    // B's upload goes through.
    bucket::kubecost_write(&b.path("from-b"), b"from b").unwrap();
    let snap = bucket::wait_for(&rt, &*store, Some(PREFIX), 60, |s| {
        s.contains_key(&key("from-b"))
    });
    assert!(snap.contains_key(&key("from-b")), "{}", b.log());
    let st = a.stop();
    assert!(st.success(), "{st}\n{}", a.log());
    assert!(
        a.log().contains("the lease was lost: nothing is uploaded"),
        "{}",
        a.log()
    );

    let snap = bucket::snapshot(&rt, &*store, Some(PREFIX));
    assert_eq!(
        snap.get(&key("one")).map(Vec::as_slice),
        Some(&b"from a"[..]),
        "a fenced node deleted"
    );
    assert!(!snap.contains_key(&key("after")), "a fenced node uploaded");
    assert!(b.stop().success(), "{}", b.log());
    assert!(lease_of(&t).is_none(), "B did not let go of the lease");
}

/// A holder killed with SIGKILL keeps its lease until it expires (three periods without a
/// renewal): its own restart over the same state directory takes it back at once, another
/// node only once it has expired.
fn a_killed_holder_is_taken_over_once_its_lease_expires(kind: &str) {
    let t = target(kind);
    let (mut a, _ca) = bucket::mount_on(
        &t,
        "100ms",
        lease_opts(common::free_port(), &["--lease-period", "1s"]),
    );
    a.signal(rustix::process::Signal::KILL);
    assert!(a.wait_exit(std::time::Duration::from_secs(30)).is_some());
    // Its own restart: the same writer id, no wait.
    a.respawn();
    // (respawn can return while the dead mount still answers from the kernel's caches)
    assert!(
        bucket::poll(60, || a.log().matches("mounted mountpoint").count() == 2),
        "{}",
        a.log()
    );
    assert!(
        a.log()
            .contains("taking back this state directory's own lease"),
        "{}",
        a.log()
    );
    a.signal(rustix::process::Signal::KILL);
    assert!(a.wait_exit(std::time::Duration::from_secs(30)).is_some());

    // Another node: only after the lease has expired by the lease's own record.
    let lease = lease_of(&t).expect("a killed holder leaves its lease");
    let renewed = humantime::parse_rfc3339(lease["renewed"].as_str().unwrap()).unwrap();
    let expires =
        renewed + std::time::Duration::from_secs(3 * lease["period_seconds"].as_u64().unwrap());
    while std::time::SystemTime::now() <= expires + std::time::Duration::from_millis(100) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (mut b, _cb) = bucket::mount_on(&t, "100ms", lease_opts(common::free_port(), &[]));
    assert!(
        b.log().contains("taking over an expired lease"),
        "{}",
        b.log()
    );
    assert_eq!(lease_of(&t).unwrap()["pid"], b.pid());
    assert!(b.stop().success(), "{}", b.log());
}

/// A live holder that is not a mount (a lease written by hand here, renewed just now and for an
/// hour) refuses a mount; an object at the lease's key that is not a lease refuses it too and is
/// left alone; `--takeover` replaces either. A backup is refused while a mount holds the lease
/// (and `--ignore-lease` lets it through). Outside text in the lease (the holder's host) is
/// escaped in the message.
#[test]
fn a_lease_this_mount_cannot_take_refuses_the_start() {
    let t = target("filesystem");
    let key = Key::parse(format!("{PREFIX}/.etlfs/lease")).unwrap();
    let put = |body: &[u8]| {
        rt().block_on(t.store().put(&key, PutPayload::from(body.to_vec())))
            .unwrap();
    };
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let live = serde_json::json!({
        "format": "etlfs-lease/1", "writer": "0123", "host": "other\x1b[31m\r\nnode",
        "pid": 4242, "serving": "/x", "started": now, "renewed": now, "period_seconds": 3600,
    });
    put(live.to_string().as_bytes());
    // That holder is alive: it renews its lease (every 300 ms here) until the refusal.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let renewer = {
        let (stop, store, key, mut live) = (stop.clone(), t.store(), key.clone(), live.clone());
        std::thread::spawn(move || {
            let rt = rt();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(300));
                live["renewed"] = humantime::format_rfc3339_millis(std::time::SystemTime::now())
                    .to_string()
                    .into();
                rt.block_on(store.put(&key, PutPayload::from(live.to_string().into_bytes())))
                    .unwrap();
            }
        })
    };
    let (opts, _c) = bucket::opts_on(&t, "100ms", lease_opts(common::free_port(), &[]));
    let (st, log) = common::Mounted::refused(opts.clone());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    renewer.join().unwrap();
    assert_eq!(st.code(), Some(2), "{log}");
    assert!(log.contains("pid 4242"), "{log}");
    assert!(
        !log.contains('\x1b') && !log.contains("\r\n"),
        "raw outside text in the log: {log:?}"
    );

    put(b"not a lease");
    let (st, log) = common::Mounted::refused(opts);
    assert_eq!(st.code(), Some(2), "{log}");
    assert!(log.contains("not an etlfs lease"), "{log}");
    let still = rt().block_on(async { t.store().get(&key).await.unwrap().bytes().await.unwrap() });
    assert_eq!(
        &still[..],
        b"not a lease",
        "an unreadable lease was overwritten"
    );

    let (mut m, _c) = bucket::mount_on(
        &t,
        "100ms",
        lease_opts(common::free_port(), &["--takeover"]),
    );
    assert_eq!(lease_of(&t).unwrap()["pid"], m.pid());

    // A backup of another directory into the same prefix, while the mount holds the lease.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"backup").unwrap();
    let cfg = bucket::config_file(&t);
    let backup = |extra: &[&str]| {
        Command::new(common::ETLFS)
            .args(["backup", "--prefix", PREFIX, "--config"])
            .arg(cfg.path())
            .args(extra)
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let out = backup(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("pid {}", m.pid())), "{err}");
    let out = backup(&["--ignore-lease"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(m.stop().success(), "{}", m.log());
    // With no holder, a backup takes the lease for its run and lets it go.
    let out = backup(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lease_of(&t).is_none());
}
