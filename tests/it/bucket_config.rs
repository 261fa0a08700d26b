//! The bucket configuration against the real servers: Kubecost's documented object-store.yaml
//! examples (tests/fixtures/kubecost, with the endpoint and credentials swapped for the test
//! servers') back up and restore; S3 `put_user_metadata` headers (a canned ACL, the storage
//! class) reach the objects moto stores, through PUT, multipart and server-side copy, while
//! reads, listings and deletes keep working; an Azure container missing at start is created
//! (`storage_create_container`, Thanos' default); `$(NAME)` is taken from the environment.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{self, Mounted, Opts, bucket, free_port, mirror_idle, servers};
use bucket::{data, poll};

/// A fixture of tests/fixtures/kubecost, as Kubecost documents it.
fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kubecost")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `text` with each `(from, to)` replaced; every `from` must be there.
fn swap(text: &str, pairs: &[(&str, &str)]) -> String {
    pairs.iter().fold(text.to_owned(), |t, (from, to)| {
        assert!(t.contains(from), "{from:?} not in:\n{t}");
        t.replace(from, to)
    })
}

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

/// A directory shaped like Kubecost's ETL store, with a file big enough for a multipart upload
/// when `big` (above the 16 MiB single PUT).
fn etl_dir(big: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("bingen/allocations/1d");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("1704110400-1704196800"), data(1, 20_000)).unwrap();
    fs::write(dir.path().join("small"), b"small file").unwrap();
    if big {
        fs::write(dir.path().join("big"), data(2, 17 << 20)).unwrap();
    }
    dir
}

/// `etlfs backup` of `dir`, then `etlfs restore` into an empty directory and `etlfs verify` of
/// both: every file comes back byte for byte.
fn backup_restore_verify(cfg: &Path, dir: &Path, what: &str) {
    let cfg = cfg.to_str().unwrap();
    common::run(["backup", "--config", cfg, dir.to_str().unwrap()]).assert_ok(what);
    let back = tempfile::tempdir().unwrap();
    common::run(["restore", "--config", cfg, back.path().to_str().unwrap()]).assert_ok(what);
    for rel in ["small", "bingen/allocations/1d/1704110400-1704196800"] {
        assert_eq!(
            fs::read(back.path().join(rel)).unwrap(),
            fs::read(dir.join(rel)).unwrap(),
            "{what}: {rel}"
        );
    }
    common::run(["verify", "--config", cfg, dir.to_str().unwrap()]).assert_ok(what);
    common::run(["verify", "--config", cfg, back.path().to_str().unwrap()]).assert_ok(what);
}

/// Kubecost's S3 example (with `"X-Amz-Acl": "bucket-owner-full-control"`), its Storj example
/// (S3-compatible, with `http_config`, `trace` and `part_size`), its Azure and its GCS
/// examples: only the bucket, endpoint and credentials swapped for the test servers'.
#[test]
fn kubecost_documented_examples_back_up_and_restore() {
    let dir = etl_dir(false);
    let s3 = servers::s3();
    let (bucket, endpoint) = (
        format!("\"{}\"", s3.bucket),
        format!("\"{}\"", s3.host_port()),
    );
    for (name, host, who) in [
        ("s3.yaml", "\"s3.amazonaws.com\"", "AWS"),
        ("storj.yaml", "\"gateway.storjshare.io\"", "STORJ"),
    ] {
        let (access, secret) = (format!("<{who}_ACCESS_KEY>"), format!("<{who}_SECRET_KEY>"));
        let yaml = swap(
            &fixture(name),
            &[
                ("\"my-bucket\"", &bucket),
                (host, &endpoint),
                ("insecure: false", "insecure: true"),
                (&access, servers::S3_KEY),
                (&secret, servers::S3_KEY),
            ],
        );
        backup_restore_verify(write_config(&yaml).path(), dir.path(), name);
    }

    // A container that does not exist yet: the example leaves storage_create_container unset,
    // which creates it, as Thanos does.
    let mut azure = servers::azure();
    azure.bucket = format!("{}-new", azure.bucket);
    let key = std::env::var("ETLFS_TEST_AZURE_KEY").unwrap();
    let yaml = swap(
        &fixture("azure.yaml"),
        &[
            ("\"<STORAGE_ACCOUNT>\"", "devstoreaccount1"),
            ("\"<STORAGE_ACCOUNT_KEY>\"", &key),
            ("\"my-bucket\"", &azure.bucket),
            (
                "endpoint: \"\"",
                &format!("endpoint: \"{}\"", azure.endpoint),
            ),
        ],
    );
    backup_restore_verify(write_config(&yaml).path(), dir.path(), "azure.yaml");

    let gcs = servers::gcs();
    let text = fixture("gcs.yaml");
    let (start, end) = (
        text.find("  service_account: |-\n").unwrap(),
        text.find("prefix:").unwrap(),
    );
    let yaml = swap(
        &format!(
            "{}  service_account: '{}'\n{}",
            &text[..start],
            gcs.gcs_service_account(),
            &text[end..]
        ),
        &[("\"my-bucket\"", &gcs.bucket)],
    );
    backup_restore_verify(write_config(&yaml).path(), dir.path(), "gcs.yaml");
}

/// One request to moto as the bucket's owner: (status, headers as `name: value` lines, body).
/// moto checks no signature, but needs an `Authorization` header to take a request for the
/// owner's (without one, it is anonymous, and a private object's ACL is not shown to it).
fn moto(method: &str, url: &str) -> (u16, String, String) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .unwrap();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let owner = format!(
        "AWS4-HMAC-SHA256 Credential={}/20260101/us-east-1/s3/aws4_request, \
         SignedHeaders=host, Signature=0",
        servers::S3_KEY
    );
    let r = client
        .request(method, url)
        .header("Authorization", owner)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("")))
        .collect();
    (status, headers, r.text().unwrap())
}

/// The object's ACL as moto holds it grants everyone (`AllUsers`) READ, and it is kept in the
/// storage class the configuration asked for.
fn assert_public_read_infrequent(server: &servers::Server, key: &str) {
    let url = format!("{}/{}/{key}", server.endpoint, server.bucket);
    let (status, _, acl) = moto("GET", &format!("{url}?acl"));
    assert_eq!(status, 200, "{key}: {acl}");
    let all_users = "<URI>http://acs.amazonaws.com/groups/global/AllUsers</URI></Grantee>\
                     <Permission>READ</Permission>";
    assert!(
        acl.contains(all_users),
        "{key}: no AllUsers READ grant in {acl}"
    );
    let (status, headers, _) = moto("HEAD", &url);
    assert_eq!(status, 200, "{key}");
    assert!(
        headers.contains("x-amz-storage-class: STANDARD_IA"),
        "{key}: {headers}"
    );
}

/// `put_user_metadata` with a canned ACL and a storage class: `etlfs backup` (a single PUT and
/// a multipart upload) and a mount's rename (a server-side copy) create objects that carry
/// both; a new node's mount lists, reads (HEAD, GET) and deletes through the same
/// configuration without a single failed request.
#[test]
fn s3_acl_and_storage_class_reach_every_object_written() {
    let server = servers::s3();
    let yaml = format!(
        "{}  put_user_metadata:\n    X-Amz-Acl: public-read\n    X-Amz-Storage-Class: \
         STANDARD_IA\n    x-amz-meta-team: etl\n",
        server.yaml()
    );
    let cfg = write_config(&yaml);
    let dir = etl_dir(true);
    common::run([
        "backup",
        "--config",
        cfg.path().to_str().unwrap(),
        dir.path().to_str().unwrap(),
    ])
    .assert_ok("backup");
    assert_public_read_infrequent(&server, "small");
    assert_public_read_infrequent(&server, "big");
    let (_, headers, _) = moto(
        "HEAD",
        &format!("{}/{}/small", server.endpoint, server.bucket),
    );
    assert!(headers.contains("x-amz-meta-team: etl"), "{headers}");

    // A new node: the listing, the reads of a lazy restore, a rename and a removal.
    let port = free_port();
    let mut m = Mounted::with(
        Opts::on(cfg.path())
            .upload_delay("100ms")
            .arg("--no-prefetch")
            .listen(port),
    );
    assert_eq!(fs::read(m.path("small")).unwrap(), b"small file");
    fs::rename(m.path("small"), m.path("moved")).unwrap();
    fs::remove_file(m.path("big")).unwrap();
    let store = server.store();
    let rt = bucket::rt();
    let keys = || -> Vec<String> {
        rt.block_on(async {
            use futures::TryStreamExt;
            use object_store::ObjectStore;
            let listed: Vec<_> = store.list(None).try_collect().await.unwrap();
            listed.into_iter().map(|o| o.location.to_string()).collect()
        })
    };
    assert!(
        poll(60, || {
            let k = keys();
            mirror_idle(port)
                && k.contains(&"moved".into())
                && !k.iter().any(|k| k == "small" || k == "big")
        }),
        "the rename and the removal reached the bucket: {:?}\n{}",
        keys(),
        m.log()
    );
    assert_public_read_infrequent(&server, "moved");
    let s = common::status(port);
    assert_eq!(s["bucket"]["failures"], 0, "{s}");
    assert!(s["bucket"]["refused"].is_null(), "{s}");
    assert!(m.stop().success(), "{}", m.log());
}

/// An Azure container missing at start is created when `storage_create_container` is unset
/// or true — by a mount, which then mirrors into it, and by a one-shot command; `false` keeps
/// it from being created (see bucket_errors.rs).
#[test]
fn azure_creates_a_missing_container_unless_told_not_to() {
    let mut server = servers::azure();
    server.bucket = format!("{}-mount", server.bucket);
    let cfg = write_config(&server.yaml());
    let mut m = Mounted::with(Opts::on(cfg.path()).upload_delay("100ms"));
    fs::write(m.path("f"), b"into the new container").unwrap();
    let store = server.store();
    let rt = bucket::rt();
    assert!(
        poll(60, || {
            use object_store::ObjectStoreExt;
            rt.block_on(store.head(&"f".into())).is_ok()
        }),
        "the file reached the new container:\n{}",
        m.log()
    );
    assert!(m.log().contains("created the container"), "{}", m.log());
    assert!(m.stop().success());

    server.bucket = format!("{}-backup", server.bucket);
    let yaml = server.yaml().replacen(
        "config:\n",
        "config:\n  storage_create_container: true\n",
        1,
    );
    let dir = etl_dir(false);
    backup_restore_verify(
        write_config(&yaml).path(),
        dir.path(),
        "storage_create_container: true",
    );
}

/// `$(NAME)` in the file is the environment variable's value, as Thanos has it: a backup works
/// with the bucket's name and the secret key taken from the environment, and a variable that
/// is not set is a configuration error that names it.
#[test]
fn dollar_paren_variables_come_from_the_environment() {
    let server = servers::s3();
    let yaml = server
        .yaml()
        .replace(&server.bucket, "$(ETLFS_IT_BUCKET)")
        .replace(
            &format!("secret_key: \"{}\"", servers::S3_KEY),
            "secret_key: \"$(ETLFS_IT_SECRET)\"",
        );
    assert!(yaml.contains("$(ETLFS_IT_SECRET)"), "{yaml}");
    let cfg = write_config(&yaml);
    let dir = etl_dir(false);
    let run = |vars: &[(&str, &str)]| {
        let out = Command::new(common::ETLFS)
            .args(["backup", "--config"])
            .arg(cfg.path())
            .arg(dir.path())
            .env("RUST_LOG", "info,object_store=warn")
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, log) = run(&[
        ("ETLFS_IT_BUCKET", &server.bucket),
        ("ETLFS_IT_SECRET", servers::S3_KEY),
    ]);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains(&format!("`{}`", server.bucket)), "{log}");
    let listed = bucket::snapshot(&bucket::rt(), &*server.store(), None);
    assert!(listed.contains_key("small"), "{listed:?}");

    let (code, log) = run(&[("ETLFS_IT_SECRET", servers::S3_KEY)]);
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("found reference to unset environment variable \"ETLFS_IT_BUCKET\""),
        "{log}"
    );
}
