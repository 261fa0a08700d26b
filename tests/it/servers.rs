//! Smoke tests of the test servers themselves (scripts/servers.sh): every operation etlfs
//! needs works on each of them through object_store, and outages keep the data.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::servers;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, GetOptions, ObjectStore, ObjectStoreExt, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, RetryConfig, WriteMultipart,
};
use servers::{Kind, Server};

const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const BIG: usize = 8 * 1024 * 1024 + 12_345;

fn key(s: &str) -> Path {
    Path::parse(s).unwrap()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn with_sha(extra: &[(&str, &str)]) -> Attributes {
    let mut attrs = Attributes::new();
    attrs.insert(
        Attribute::Metadata("etlfs_sha256".into()),
        AttributeValue::from(SHA),
    );
    for (k, v) in extra {
        attrs.insert(
            Attribute::Metadata(k.to_string().into()),
            AttributeValue::from(v.to_string()),
        );
    }
    attrs
}

async fn metadata(store: &dyn ObjectStore, k: &Path) -> BTreeMap<String, String> {
    let opts = GetOptions {
        head: true,
        ..Default::default()
    };
    let res = store.get_opts(k, opts).await.unwrap();
    res.attributes
        .iter()
        .filter_map(|(a, v)| match a {
            Attribute::Metadata(name) => Some((name.to_string(), v.as_ref().to_owned())),
            _ => None,
        })
        .collect()
}

async fn listing(store: &dyn ObjectStore, prefix: Option<&Path>) -> BTreeMap<String, u64> {
    let metas: Vec<_> = store.list(prefix).try_collect().await.unwrap();
    metas
        .into_iter()
        .map(|m| (m.location.to_string(), m.size))
        .collect()
}

/// put (small and multipart), get, range get, head, list, copy, delete, create-only put and
/// user metadata, all through object_store.
async fn round_trip(server: Server) {
    let name = server.kind.name();
    let store = server.store();
    let store = store.as_ref();

    // Small put, get, range, head.
    let small = key("dir/small.txt");
    store
        .put(&small, PutPayload::from_static(b"hello world"))
        .await
        .unwrap();
    let got = store.get(&small).await.unwrap().bytes().await.unwrap();
    assert_eq!(got, Bytes::from_static(b"hello world"), "{name}");
    assert_eq!(
        store.get_range(&small, 6..11).await.unwrap(),
        "world",
        "{name}"
    );
    let head = store.head(&small).await.unwrap();
    assert_eq!(head.size, 11, "{name}");
    assert!(head.e_tag.is_some(), "{name}: no ETag");

    // A key with characters that need escaping in URLs.
    let odd = key("dir/sub dir/a+b=c&d(1)~é.bin");
    store
        .put(&odd, PutPayload::from_static(b"odd"))
        .await
        .unwrap();
    assert_eq!(store.head(&odd).await.unwrap().size, 3, "{name}");

    // User metadata on a single put.
    let with_meta = key("dir/meta.txt");
    let opts = PutOptions {
        attributes: with_sha(&[("etlfs_mode", "644")]),
        ..Default::default()
    };
    store
        .put_opts(&with_meta, PutPayload::from_static(b"m"), opts)
        .await
        .unwrap();
    let meta = metadata(store, &with_meta).await;
    assert_eq!(
        meta.get("etlfs_sha256").map(String::as_str),
        Some(SHA),
        "{name}: {meta:?}"
    );
    assert_eq!(
        meta.get("etlfs_mode").map(String::as_str),
        Some("644"),
        "{name}"
    );

    // An 8 MiB multipart upload (two parts), with metadata.
    let big = key("dir/big.bin");
    let data = pattern(BIG);
    let opts = PutMultipartOptions {
        attributes: with_sha(&[]),
        ..Default::default()
    };
    let upload = store.put_multipart_opts(&big, opts).await.unwrap();
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 5 * 1024 * 1024);
    for chunk in data.chunks(1024 * 1024) {
        writer.write(chunk);
    }
    writer.finish().await.unwrap();
    let got = store.get(&big).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.len(), BIG, "{name}");
    assert!(got == data, "{name}: multipart content differs");
    assert_eq!(
        metadata(store, &big)
            .await
            .get("etlfs_sha256")
            .map(String::as_str),
        Some(SHA),
        "{name}: multipart metadata"
    );
    // Plain put_multipart too.
    let mut up = store.put_multipart(&key("dir/big2.bin")).await.unwrap();
    up.put_part(PutPayload::from(vec![1u8; 5 * 1024 * 1024]))
        .await
        .unwrap();
    up.put_part(PutPayload::from(vec![2u8; 10])).await.unwrap();
    up.complete().await.unwrap();
    assert_eq!(
        store.head(&key("dir/big2.bin")).await.unwrap().size,
        5 * 1024 * 1024 + 10,
        "{name}"
    );
    // An aborted upload leaves nothing.
    let mut up = store.put_multipart(&key("dir/aborted")).await.unwrap();
    up.put_part(PutPayload::from_static(b"x")).await.unwrap();
    up.abort().await.unwrap();

    // List (recursive and with a delimiter).
    let all = listing(store, None).await;
    let want: BTreeMap<String, u64> = [
        ("dir/big.bin".to_string(), BIG as u64),
        ("dir/big2.bin".into(), 5 * 1024 * 1024 + 10),
        ("dir/meta.txt".into(), 1),
        ("dir/small.txt".into(), 11),
        (odd.to_string(), 3),
    ]
    .into_iter()
    .collect();
    assert_eq!(all, want, "{name}");
    assert_eq!(listing(store, Some(&key("dir/sub dir"))).await.len(), 1);
    let top = store.list_with_delimiter(None).await.unwrap();
    assert_eq!(top.common_prefixes, vec![key("dir")], "{name}");
    assert!(top.objects.is_empty(), "{name}");
    let dir = store.list_with_delimiter(Some(&key("dir"))).await.unwrap();
    assert_eq!(dir.common_prefixes, vec![key("dir/sub dir")], "{name}");
    assert_eq!(dir.objects.len(), 4, "{name}");

    // Copy keeps body and metadata.
    let copied = key("copy/meta.txt");
    store.copy(&with_meta, &copied).await.unwrap();
    assert_eq!(
        store.get(&copied).await.unwrap().bytes().await.unwrap(),
        "m",
        "{name}"
    );
    assert_eq!(
        metadata(store, &copied)
            .await
            .get("etlfs_sha256")
            .map(String::as_str),
        Some(SHA),
        "{name}: copied metadata"
    );
    if server.kind != Kind::S3 {
        // (S3 needs an extra builder setting for this.)
        let err = store.copy_if_not_exists(&small, &copied).await.unwrap_err();
        assert!(
            matches!(err, object_store::Error::AlreadyExists { .. }),
            "{name}: {err}"
        );
    }

    // Create-only put.
    let opts = || PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let once = key("once");
    store
        .put_opts(&once, PutPayload::from_static(b"1"), opts())
        .await
        .unwrap();
    let err = store
        .put_opts(&once, PutPayload::from_static(b"2"), opts())
        .await
        .unwrap_err();
    assert!(
        matches!(err, object_store::Error::AlreadyExists { .. }),
        "{name}: {err}"
    );

    // Delete.
    store.delete(&copied).await.unwrap();
    let err = store.head(&copied).await.unwrap_err();
    assert!(
        matches!(err, object_store::Error::NotFound { .. }),
        "{name}: {err}"
    );
    let err = store.get(&key("never/there")).await.unwrap_err();
    assert!(
        matches!(err, object_store::Error::NotFound { .. }),
        "{name}: {err}"
    );
}

#[tokio::test]
async fn s3_round_trip() {
    round_trip(servers::s3()).await;
}

#[tokio::test]
async fn azure_round_trip() {
    round_trip(servers::azure()).await;
}

#[tokio::test]
async fn gcs_round_trip() {
    round_trip(servers::gcs()).await;
}

/// GCS lists in pages of 1000 (the adapter does what fake-gcs-server does not).
#[tokio::test]
async fn gcs_lists_past_one_page() {
    let server = servers::gcs();
    let store = server.store();
    futures::stream::iter(0..1005)
        .map(|i| {
            let store = store.clone();
            async move {
                store
                    .put(&key(&format!("p/{i:04}")), PutPayload::from_static(b"x"))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let all = listing(store.as_ref(), None).await;
    assert_eq!(all.len(), 1005);
    let from: Vec<_> = store
        .list_with_offset(None, &key("p/1000"))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(from.len(), 4);
}

/// Stops and starts one server (through a front of this test's own): requests fail while it
/// is down, and every object is still there afterwards.
async fn outage(server: Server) {
    let name = server.kind.name();
    let store = server.store();
    let no_retry = server.store_with_retry(RetryConfig {
        max_retries: 0,
        ..Default::default()
    });
    let k = key("kept.txt");
    store
        .put(&k, PutPayload::from_static(b"still here"))
        .await
        .unwrap();
    // A multipart upload that spans the outage.
    let mut up = store.put_multipart(&key("spanning.bin")).await.unwrap();
    up.put_part(PutPayload::from(vec![7u8; 5 * 1024 * 1024]))
        .await
        .unwrap();

    assert_eq!(server.status(), "running");
    server.stop();
    assert_eq!(server.status(), "stopped");
    let err = no_retry.head(&k).await.unwrap_err();
    assert!(
        !matches!(err, object_store::Error::NotFound { .. }),
        "{name}: {err}"
    );
    // Another test's endpoint is not affected.
    let other = Server::new(server.kind, false);
    other
        .store()
        .put(&k, PutPayload::from_static(b"x"))
        .await
        .unwrap();

    server.start();
    assert_eq!(server.status(), "running");
    if servers::RESTART_KEEPS_STATE {
        let got = no_retry.get(&k).await.unwrap().bytes().await.unwrap();
        assert_eq!(got, "still here", "{name}");
    }
    up.put_part(PutPayload::from_static(b"end")).await.unwrap();
    up.complete().await.unwrap();
    assert_eq!(
        store.head(&key("spanning.bin")).await.unwrap().size,
        5 * 1024 * 1024 + 3,
        "{name}"
    );
}

#[tokio::test]
async fn s3_outage_keeps_state() {
    outage(servers::s3_isolated()).await;
}

#[tokio::test]
async fn azure_outage_keeps_state() {
    outage(servers::azure_isolated()).await;
}

#[tokio::test]
async fn gcs_outage_keeps_state() {
    outage(servers::gcs_isolated()).await;
}

/// A paused server accepts connections but does not answer.
#[test]
fn paused_server_hangs() {
    let server = servers::s3_isolated();
    server.pause();
    assert_eq!(server.status(), "paused");
    // Connected, and no answer: a timeout, not a refused connection.
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(500))
        .no_proxy()
        .build()
        .unwrap();
    let err = client
        .get(format!("http://{}/", server.host_port()))
        .send()
        .unwrap_err();
    assert!(err.is_timeout() && !err.is_connect(), "{err:?}");
    server.resume();
    assert_eq!(server.status(), "running");
}

/// The object-store.yaml of each server names its bucket and endpoint.
#[test]
fn yaml_describes_each_server() {
    for server in servers::all() {
        let yaml = server.yaml_with_prefix("etl/x");
        assert!(yaml.contains(&server.bucket), "{yaml}");
        assert!(yaml.ends_with("prefix: \"etl/x\"\n"), "{yaml}");
        match server.kind {
            Kind::S3 => {
                assert!(yaml.starts_with("type: S3\n"), "{yaml}");
                assert!(
                    yaml.contains(&format!("endpoint: \"{}\"", server.host_port())),
                    "{yaml}"
                );
                assert!(!yaml.contains("http://"), "{yaml}");
            }
            Kind::Azure => {
                assert!(yaml.starts_with("type: AZURE\n"), "{yaml}");
                assert!(
                    yaml.contains(&format!("BlobEndpoint={};", server.endpoint)),
                    "{yaml}"
                );
            }
            Kind::Gcs => {
                assert!(yaml.starts_with("type: GCS\n"), "{yaml}");
                let sa: serde_json::Value =
                    serde_json::from_str(&server.gcs_service_account()).unwrap();
                assert_eq!(sa["gcs_base_url"], server.endpoint.as_str());
                assert_eq!(sa["disable_oauth"], true);
            }
        }
    }
}
