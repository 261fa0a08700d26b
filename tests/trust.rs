//! The trust boundary, through real mounts against real object-storage servers on 127.0.0.1:
//! nothing in the bucket grants privilege on the node (the mount is `nosuid,nodev`, restored
//! files never carry set-uid, set-gid or sticky bits, and never root's ownership unless the
//! directory they land in is root's), and one writer per prefix (the lease).
//!
//! The servers are started by scripts/test.sh; each test gets a bucket of its own.

#[path = "common/bucket.rs"]
mod bucket;
mod common;
#[path = "common/servers.rs"]
mod servers;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use bucket::{rt, target};
use common::Opts;
use object_store::path::Path as Key;
use object_store::{Attribute, Attributes, PutOptions, PutPayload};
use sha2::{Digest, Sha256};

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
        ("etlfs_sha256", hex::encode(Sha256::digest(body))),
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
    let opts = Opts {
        separate_local: true,
        ..Opts::default()
    };
    let (mut m, _cfg) = bucket::mount_on(&t, "100ms", opts);
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
