//! `--max-local-bytes`: the local directory as an LRU cache of the bucket (FILESYSTEM bucket,
//! real mounts).

use std::fs;
use std::time::{Duration, Instant};

use crate::common;
use common::{Mounted, Opts};

fn local_file_bytes(dir: &std::path::Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn clean_files_are_evicted_and_come_back_on_open() {
    let mut m = Mounted::with(
        Opts::default()
            .separate_local()
            // Nothing is uploaded until the test fsyncs it: the files stay dirty as long as the
            // test needs them to, however slowly it runs.
            .upload_delay("1h")
            .args(["--max-local-bytes", "250KB"])
            .log_filter("info,etlfs::fs::overlay=debug,etlfs::engine::fetch=debug"),
    );
    let data: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 100_000]).collect();
    for (i, d) in data.iter().enumerate() {
        fs::write(m.path(&format!("f{i}")), d).unwrap();
    }
    // Dirty files are never evicted: all six stay until they are in the bucket.
    for i in 0..6 {
        let _ = fs::read(m.path(&format!("f{i}"))).unwrap();
    }
    assert_eq!(local_file_bytes(&m.local), 600_000);
    // An fsync uploads at once. Once uploaded, the next use makes room: back under the bound.
    for i in 0..6 {
        fs::File::open(m.path(&format!("f{i}")))
            .unwrap()
            .sync_all()
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while local_file_bytes(&m.local) > 250_000 {
        assert!(
            Instant::now() < deadline,
            "nothing was evicted:\n{}",
            m.log()
        );
        let _ = fs::read(m.path("f5")).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(m.log().contains("evicted to the bucket"));
    // Every file still lists with its size and reads back, fetched again when needed.
    for (i, d) in data.iter().enumerate() {
        assert_eq!(
            fs::metadata(m.path(&format!("f{i}"))).unwrap().len(),
            100_000
        );
        assert_eq!(&fs::read(m.path(&format!("f{i}"))).unwrap(), d, "f{i}");
    }
    assert!(m.log().contains("fetched from the bucket"));
    assert!(
        local_file_bytes(&m.local) <= 300_000,
        "{}",
        local_file_bytes(&m.local)
    );
    // An open file is never evicted underneath its reader.
    let held = fs::File::open(m.path("f0")).unwrap();
    for i in 1..6 {
        let _ = fs::read(m.path(&format!("f{i}"))).unwrap();
    }
    assert!(m.local.join("f0").exists(), "an open file was evicted");
    drop(held);
    assert!(m.stop().success());
}
