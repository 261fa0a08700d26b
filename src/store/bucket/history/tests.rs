//! Unit tests of history: thinning, the tripwire, garbage collection, version names, on an
//! in-memory store (the same paths against real servers are in tests/it/history.rs).

use super::*;
use bytes::Bytes;
use std::sync::Arc;

fn meta(mode: u32) -> FileMeta {
    FileMeta {
        mtime_ns: 1_700_000_000_000_000_001,
        mode,
        sha256: "00".repeat(32),
        owner: None,
    }
}

fn bucket(user_metadata: bool, interval: Duration) -> Bucket {
    Bucket::new(
        Arc::new(object_store::memory::InMemory::new()),
        "etl",
        user_metadata,
        vec![],
    )
    .with_history(Settings {
        interval,
        ..Settings::default()
    })
}

#[test]
fn version_names_round_trip_and_strangers_are_not_versions() {
    let (f, u) = (from_ms(1_700_000_000_000), from_ms(1_700_000_360_123));
    let n = version_name(f, u, Kind::ReplacedByEmpty);
    assert_eq!(n, "1700000000000-1700000360123.e");
    assert_eq!(parse_version_name(&n), Some((f, u, Kind::ReplacedByEmpty)));
    for bad in ["1-2.x", "1-2", "-2.r", "a-2.r", "1-.d", "12.r", "notes.txt"] {
        assert_eq!(parse_version_name(bad), None, "{bad}");
    }
}

#[tokio::test]
async fn replacements_are_thinned_but_empty_ones_and_deletions_are_always_kept() {
    for user_metadata in [true, false] {
        let b = bucket(user_metadata, Duration::from_secs(3600));
        let p = Path::new("d/f");
        b.put_bytes(p, Bytes::from_static(b"v1"), &meta(0o600))
            .await
            .unwrap();
        assert!(b.kept_versions(None).await.unwrap().is_empty(), "new file");
        b.put_bytes(p, Bytes::from_static(b"v2!"), &meta(0o644))
            .await
            .unwrap();
        b.put_bytes(p, Bytes::from_static(b"v3"), &meta(0o644))
            .await
            .unwrap();
        let v = b.kept_versions(Some(p)).await.unwrap();
        assert_eq!(v.len(), 1, "thinned to one per interval: {v:?}");
        assert_eq!((v[0].kind, v[0].size), (Kind::Replaced, 2));
        assert_eq!(
            b.kept_meta(&v[0]).await.unwrap(),
            Some(meta(0o600)),
            "kept with its metadata"
        );
        b.put_bytes(p, Bytes::new(), &meta(0o644)).await.unwrap();
        b.put_bytes(p, Bytes::new(), &meta(0o644)).await.unwrap();
        b.delete(p).await.unwrap();
        let mut v = b.kept_versions(Some(p)).await.unwrap();
        v.sort_by_key(|v| v.kind);
        let kinds: Vec<_> = v.iter().map(|v| (v.kind, v.size)).collect();
        assert_eq!(
            kinds,
            [
                (Kind::ReplacedByEmpty, 2),
                (Kind::Replaced, 2),
                (Kind::Deleted, 0)
            ]
        );
        let body = b.get_stream_source(&v[0].source()).await.unwrap();
        let got: Vec<Bytes> = body.try_collect().await.unwrap();
        assert_eq!(got.concat(), b"v3");
        let s = b.history_stats();
        assert_eq!(s.versions_kept.load(Ordering::Relaxed), 3);
        assert_eq!(s.empty_replacements.load(Ordering::Relaxed), 1);
        assert!(b.list(None).await.unwrap().is_empty(), "not user files");
    }
}

#[tokio::test]
async fn a_multipart_upload_keeps_what_it_replaces_before_it_completes() {
    let b = bucket(true, Duration::ZERO);
    let p = Path::new("big");
    b.put_bytes(p, Bytes::from("small"), &meta(0o600))
        .await
        .unwrap();
    let mut up = b.start_upload(p, &meta(0o644)).await.unwrap();
    up.write(&vec![1u8; crate::store::bucket::PART_SIZE + 3])
        .await
        .unwrap();
    assert!(b.kept_versions(None).await.unwrap().is_empty(), "not yet");
    up.finish(&b).await.unwrap();
    let v = b.kept_versions(Some(p)).await.unwrap();
    assert_eq!((v.len(), v[0].size, v[0].kind), (1, 5, Kind::Replaced));
    assert_eq!(b.kept_meta(&v[0]).await.unwrap(), Some(meta(0o600)));
}

#[tokio::test]
async fn history_keys_that_name_no_path_are_ignored() {
    let b = bucket(true, Duration::ZERO);
    for k in [
        "etl/.etlfs/history/.etlfs/journal.jsonl/1-2.r",
        "etl/.etlfs/history/ok/1-2.d",
        "etl/.etlfs/history/ok/notes.txt",
    ] {
        b.store
            .put(&Key::from(k), object_store::PutPayload::new())
            .await
            .unwrap();
    }
    let v = b.kept_versions(None).await.unwrap();
    let rels: Vec<_> = v.iter().map(|v| v.rel.clone()).collect();
    assert_eq!(rels, [PathBuf::from("ok")]);
}

#[tokio::test]
async fn many_deletions_at_once_set_the_tripwire_off_and_stop_thinning() {
    let b = bucket(true, Duration::from_secs(3600));
    let stats = Arc::clone(b.history_stats());
    let victim = Path::new("victim");
    for body in ["1", "2", "3"] {
        b.put_bytes(victim, Bytes::from(body), &meta(0o644))
            .await
            .unwrap();
    }
    assert_eq!(b.kept_versions(Some(victim)).await.unwrap().len(), 1);
    for i in 0..DEFAULT_TRIPWIRE_FILES - 1 {
        let p = PathBuf::from(format!("d/{i}"));
        b.put_bytes(&p, Bytes::from("x"), &meta(0o644))
            .await
            .unwrap();
        b.delete(&p).await.unwrap();
    }
    assert!(
        stats.tripped_since().is_none(),
        "below the threshold: not yet"
    );
    b.put_bytes(Path::new("last"), Bytes::from("x"), &meta(0o644))
        .await
        .unwrap();
    b.delete(Path::new("last")).await.unwrap();
    assert!(stats.tripped_since().is_some());
    assert_eq!(stats.tripwire_trips.load(Ordering::Relaxed), 1);
    // Thinning is off now: this replacement within the interval is kept too.
    b.put_bytes(victim, Bytes::from("4"), &meta(0o644))
        .await
        .unwrap();
    assert_eq!(b.kept_versions(Some(victim)).await.unwrap().len(), 2);
}

/// A bucket whose tripwire goes off at `files` destructive changes within an hour.
fn tripwire_bucket(files: usize) -> Bucket {
    Bucket::new(
        Arc::new(object_store::memory::InMemory::new()),
        "etl",
        true,
        vec![],
    )
    .with_history(Settings {
        interval: Duration::from_secs(3600),
        tripwire_files: files,
        tripwire_window: Duration::from_secs(3600),
        ..Settings::default()
    })
}

#[tokio::test]
async fn only_truncation_to_zero_and_shrinking_by_more_than_half_count_as_damage() {
    let b = tripwire_bucket(2);
    let stats = Arc::clone(b.history_stats());
    let put = |p: &'static str, body: &'static str| {
        let b = &b;
        async move {
            b.put_bytes(Path::new(p), Bytes::from(body), &meta(0o644))
                .await
                .unwrap()
        }
    };
    // Halving, growing, and empty over empty are not damage, however many (each first
    // replacement of a path is looked at, thinning or not).
    for p in ["a", "b", "c"] {
        put(p, "12345678").await;
        put(p, "1234").await;
    }
    put("g", "1").await;
    put("g", "123").await;
    put("z", "").await;
    put("z", "").await;
    assert_eq!(stats.tripwire_trips.load(Ordering::Relaxed), 0);
    // Shrinking to less than half is, once; truncation to zero is the second.
    put("s", "12345678").await;
    put("s", "123").await;
    assert!(stats.tripped_since().is_none());
    put("b", "").await;
    assert!(stats.tripped_since().is_some());
    assert_eq!(stats.tripwire_trips.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_zero_tripwire_never_goes_off() {
    let b = tripwire_bucket(0);
    for i in 0..5 {
        let p = PathBuf::from(format!("f{i}"));
        b.put_bytes(&p, Bytes::from("x"), &meta(0o644))
            .await
            .unwrap();
        b.delete(&p).await.unwrap();
    }
    let stats = b.history_stats();
    assert_eq!(stats.tripwire_trips.load(Ordering::Relaxed), 0);
    assert!(stats.tripped_since().is_none());
}

#[tokio::test]
async fn a_new_process_remembers_what_was_kept() {
    let store = Arc::new(object_store::memory::InMemory::new());
    let open = || {
        Bucket::new(store.clone(), "", true, vec![]).with_history(Settings {
            interval: Duration::from_secs(3600),
            ..Settings::default()
        })
    };
    let p = Path::new("f");
    let b = open();
    for body in ["1", "2"] {
        b.put_bytes(p, Bytes::from(body), &meta(0o644))
            .await
            .unwrap();
    }
    open()
        .put_bytes(p, Bytes::from("3"), &meta(0o644))
        .await
        .unwrap();
    assert_eq!(b.kept_versions(Some(p)).await.unwrap().len(), 1);
}

#[tokio::test]
async fn rename_and_copy_over_keep_both_sides() {
    let b = bucket(false, Duration::ZERO);
    b.put_bytes(Path::new("a"), Bytes::from("A"), &meta(0o644))
        .await
        .unwrap();
    b.put_bytes(Path::new("b"), Bytes::from("B"), &meta(0o644))
        .await
        .unwrap();
    b.copy(Path::new("a"), Path::new("b")).await.unwrap();
    b.delete(Path::new("a")).await.unwrap();
    let mut v = b.kept_versions(None).await.unwrap();
    v.sort_by(|x, y| x.rel.cmp(&y.rel));
    let got: Vec<_> = v.iter().map(|v| (v.rel.clone(), v.kind)).collect();
    assert_eq!(
        got,
        [
            (PathBuf::from("a"), Kind::Deleted),
            (PathBuf::from("b"), Kind::Replaced)
        ]
    );
}

#[tokio::test]
async fn gc_deletes_only_what_is_past_retention_and_its_sidecars() {
    let b = bucket(false, Duration::ZERO);
    let p = Path::new("x/y");
    for body in ["1", "2", "3"] {
        b.put_bytes(p, Bytes::from(body), &meta(0o644))
            .await
            .unwrap();
        // Versions are named by the millisecond.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let v = b.kept_versions(Some(p)).await.unwrap();
    assert_eq!(v.len(), 2);
    let newest = v.iter().map(|v| v.until).max().unwrap();
    let oldest = v.iter().map(|v| v.until).min().unwrap();
    // Now is such that only the oldest is past retention (when the two differ).
    let now = newest + DEFAULT_RETENTION;
    let gone = b.gc_history(now, GC_MAX_DELETES).await.unwrap();
    let left = b.kept_versions(Some(p)).await.unwrap();
    let want = v.iter().filter(|v| v.until >= newest).count();
    assert_eq!(left.len(), want);
    assert_eq!(gone as usize, 2 - want);
    assert!(left.iter().all(|v| v.until >= newest) || oldest == newest);
    // Far later: everything goes, sidecars too, bounded per run.
    let later = newest + DEFAULT_RETENTION * 2;
    assert_eq!(b.gc_history(later, 0).await.unwrap(), 0, "bounded");
    b.gc_history(later, GC_MAX_DELETES).await.unwrap();
    assert!(b.kept_versions(None).await.unwrap().is_empty());
    let sidecars: Vec<_> = b
        .store
        .list(Some(&Key::from("etl/.etlfs/meta/.etlfs")))
        .try_collect()
        .await
        .unwrap();
    assert!(sidecars.is_empty(), "{sidecars:?}");
}

#[tokio::test]
async fn a_fenced_bucket_keeps_nothing_and_writes_nothing() {
    let b = bucket(true, Duration::ZERO);
    let p = Path::new("f");
    b.put_bytes(p, Bytes::from("1"), &meta(0o644))
        .await
        .unwrap();
    b.fence().raise("test".into());
    assert!(matches!(
        b.put_bytes(p, Bytes::from("2"), &meta(0o644)).await,
        Err(BucketError::Fenced { .. })
    ));
    b.fence().lift();
    assert!(b.kept_versions(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn without_history_nothing_is_kept() {
    let b = Bucket::new(
        Arc::new(object_store::memory::InMemory::new()),
        "",
        true,
        vec![],
    )
    .with_history(Settings {
        interval: Duration::ZERO,
        retention: Duration::ZERO,
        ..Settings::default()
    });
    b.put_bytes(Path::new("f"), Bytes::from("1"), &meta(0o644))
        .await
        .unwrap();
    b.put_bytes(Path::new("f"), Bytes::new(), &meta(0o644))
        .await
        .unwrap();
    b.delete(Path::new("f")).await.unwrap();
    assert!(b.kept_versions(None).await.unwrap().is_empty());
}
