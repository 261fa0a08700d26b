//! Bucket helpers for the tests that talk to object storage: which bucket a test uses
//! ([`target`], and [`on_every_backend!`](crate::on_every_backend) for one test per backend),
//! polling its contents, Kubecost's I/O pattern.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use rustix::fs::FlockOperation;

use super::servers;

/// Where the bucket is, for one test.
pub enum Target {
    Cloud(servers::Server),
    Filesystem(tempfile::TempDir),
}

impl Target {
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        match self {
            Target::Cloud(s) => s.store(),
            Target::Filesystem(d) => {
                Arc::new(object_store::local::LocalFileSystem::new_with_prefix(d.path()).unwrap())
            }
        }
    }

    pub fn yaml(&self) -> String {
        match self {
            Target::Cloud(s) => s.yaml(),
            Target::Filesystem(d) => format!(
                "type: FILESYSTEM\nconfig:\n  directory: {}\n",
                d.path().display()
            ),
        }
    }

    pub fn server(&self) -> &servers::Server {
        match self {
            Target::Cloud(s) => s,
            Target::Filesystem(_) => panic!("not a server"),
        }
    }
}

/// `crate::on_every_backend!(test_a, test_b)`: one `#[test]` per backend (modules `s3`,
/// `azure`, `gcs`, `filesystem`) for each function `fn test_a(kind: &str)` of the test file.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod s3 { $( #[test] fn $name() { super::$name("s3") } )* }
        mod azure { $( #[test] fn $name() { super::$name("azure") } )* }
        mod gcs { $( #[test] fn $name() { super::$name("gcs") } )* }
        mod filesystem { $( #[test] fn $name() { super::$name("filesystem") } )* }
    };
}

pub fn target(kind: &str) -> Target {
    match kind {
        "s3" => Target::Cloud(servers::s3()),
        "azure" => Target::Cloud(servers::azure()),
        "gcs" => Target::Cloud(servers::gcs()),
        "filesystem" => Target::Filesystem(tempfile::tempdir().unwrap()),
        other => panic!("unknown target {other}"),
    }
}

/// The object-store.yaml of `t` in a temporary file (keep it alive while the mount runs).
pub fn config_file(t: &Target) -> tempfile::NamedTempFile {
    let mut cfg = tempfile::NamedTempFile::new().unwrap();
    cfg.write_all(t.yaml().as_bytes()).unwrap();
    cfg
}

/// Mounts etlfs on the bucket of `t` with `--config` and `--upload-delay delay`, plus `opts`
/// (its `args` come after those). Returns the mount and its config file.
pub fn mount_on(
    t: &Target,
    delay: &str,
    opts: crate::common::Opts,
) -> (crate::common::Mounted, tempfile::NamedTempFile) {
    let (opts, cfg) = opts_on(t, delay, opts);
    (crate::common::Mounted::with(opts), cfg)
}

/// `opts` with `--config` (of `t`, in the returned file) and `--upload-delay delay` before its
/// own arguments.
pub fn opts_on(
    t: &Target,
    delay: &str,
    mut opts: crate::common::Opts,
) -> (crate::common::Opts, tempfile::NamedTempFile) {
    let cfg = config_file(t);
    opts.args = crate::common::Opts::on(cfg.path())
        .upload_delay(delay)
        .args(opts.args)
        .args;
    (opts, cfg)
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every object's key → bytes (markers included, etlfs' reserved objects excluded).
pub fn snapshot(
    rt: &tokio::runtime::Runtime,
    store: &dyn ObjectStore,
    prefix: Option<&str>,
) -> BTreeMap<String, Vec<u8>> {
    rt.block_on(async {
        let p = prefix.map(|p| Key::parse(p).unwrap());
        let metas: Vec<_> = store.list(p.as_ref()).try_collect().await.unwrap();
        let mut out = BTreeMap::new();
        for m in metas {
            let k = m.location.to_string();
            if k.starts_with(".etlfs/") || k.contains("/.etlfs/") {
                continue;
            }
            let Ok(got) = store.get(&m.location).await else {
                continue;
            };
            let Ok(body) = got.bytes().await else {
                continue;
            };
            out.insert(k, body.to_vec());
        }
        out
    })
}

/// Polls the bucket until `want` holds or the deadline passes; returns the last snapshot.
pub fn wait_for(
    rt: &tokio::runtime::Runtime,
    store: &dyn ObjectStore,
    prefix: Option<&str>,
    secs: u64,
    want: impl Fn(&BTreeMap<String, Vec<u8>>) -> bool,
) -> BTreeMap<String, Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let snap = snapshot(rt, store, prefix);
        if want(&snap) || Instant::now() > deadline {
            return snap;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kubecost's write: open(O_RDWR|O_CREAT, 0600), flock(LOCK_EX), ftruncate(0), write, unlock,
/// close.
pub fn kubecost_write(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    rustix::fs::flock(&f, FlockOperation::LockExclusive)?;
    f.set_len(0)?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(data)?;
    rustix::fs::flock(&f, FlockOperation::Unlock)?;
    Ok(())
}

/// Kubecost's read: open(O_RDONLY), flock(LOCK_SH), read the whole file, unlock, close.
pub fn kubecost_read(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = OpenOptions::new().read(true).open(path)?;
    rustix::fs::flock(&f, FlockOperation::LockShared)?;
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    rustix::fs::flock(&f, FlockOperation::Unlock)?;
    Ok(out)
}

/// Polls `cond` every 50 ms for up to `secs`.
pub fn poll(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Deterministic, incompressible test bytes.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Removes everything inside `dir` (the directory itself stays: it is what we mount over).
pub fn wipe(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            fs::remove_dir_all(e.path()).unwrap();
        } else {
            fs::remove_file(e.path()).unwrap();
        }
    }
    assert_eq!(fs::read_dir(dir).unwrap().count(), 0, "{dir:?} not wiped");
}
