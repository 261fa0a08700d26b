//! The object-storage servers of the tests: moto (S3), Azurite (Azure Blob) and fake-gcs-server
//! (GCS, behind scripts/servers/gcs_adapter.py), started by scripts/servers.sh (which
//! scripts/test.sh sources).
//!
//! [`s3`], [`azure`] and [`gcs`] each create a fresh, uniquely named bucket (container) on the
//! shared endpoint; the `*_isolated` variants also give the test an endpoint of its own, so that
//! [`Server::stop`] / [`Server::start`] make an outage for that test only. An outage of the
//! shared endpoint hits every test that runs at the time. Outages never lose data: after
//! [`Server::start`], every bucket and object is still there ([`RESTART_KEEPS_STATE`]).
//!
//! A missing environment variable is a panic, never a skip: run the tests through
//! scripts/test.sh.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::{ClientOptions, RetryConfig};

/// After `stop` + `start` every bucket and object is still there (the storage servers never
/// stop; only the front process in front of them does).
pub const RESTART_KEEPS_STATE: bool = true;

/// Access and secret key for moto (which accepts any).
pub const S3_KEY: &str = "test";
pub const S3_REGION: &str = "us-east-1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    S3,
    Azure,
    Gcs,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::S3, Kind::Azure, Kind::Gcs];

    /// `s3`, `azure` or `gcs`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::S3 => "s3",
            Kind::Azure => "azure",
            Kind::Gcs => "gcs",
        }
    }

    fn var(self, what: &str) -> String {
        env(&format!("ETLFS_TEST_{}_{what}", self.name().to_uppercase()))
    }
}

/// A bucket (an Azure container) of its own on one of the test servers.
#[derive(Debug)]
pub struct Server {
    pub kind: Kind,
    /// The bucket (container) name.
    pub bucket: String,
    /// What object_store talks to: `http://127.0.0.1:PORT` (Azure: `.../devstoreaccount1`).
    pub endpoint: String,
    /// The port of this test's own front (`*_isolated`), `None` on the shared endpoint.
    private_port: Option<u16>,
}

/// A new bucket on the S3 server (moto).
pub fn s3() -> Server {
    Server::new(Kind::S3, false)
}

/// A new container on the Azure server (Azurite).
pub fn azure() -> Server {
    Server::new(Kind::Azure, false)
}

/// A new bucket on the GCS server (fake-gcs-server behind the adapter).
pub fn gcs() -> Server {
    Server::new(Kind::Gcs, false)
}

/// A new bucket, reached through a front of this test's own: `stop`/`start` are an outage for
/// this test only. The front is removed on drop.
pub fn s3_isolated() -> Server {
    Server::new(Kind::S3, true)
}

pub fn azure_isolated() -> Server {
    Server::new(Kind::Azure, true)
}

pub fn gcs_isolated() -> Server {
    Server::new(Kind::Gcs, true)
}

/// One new bucket on each server.
pub fn all() -> Vec<Server> {
    Kind::ALL.iter().map(|&k| Server::new(k, false)).collect()
}

impl Server {
    pub fn new(kind: Kind, isolated: bool) -> Server {
        let bucket = unique_name();
        create_bucket(kind, &bucket);
        let shared = match kind {
            Kind::Azure => env("ETLFS_TEST_AZURE_ENDPOINT"),
            _ => kind.var("ENDPOINT"),
        };
        let mut server = Server {
            kind,
            bucket,
            endpoint: shared.clone(),
            private_port: None,
        };
        if isolated {
            let out = server.ctl(&["new"]);
            let port: u16 = out
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{} ctl new printed {out:?}", kind.name()));
            server.private_port = Some(port);
            server.endpoint = replace_port(&shared, port);
        }
        server
    }

    /// `127.0.0.1:PORT`, as Thanos' S3 `endpoint` wants it.
    pub fn host_port(&self) -> &str {
        let rest = self
            .endpoint
            .strip_prefix("http://")
            .expect("http endpoint");
        rest.split('/').next().unwrap()
    }

    /// A Thanos `object-store.yaml` for this bucket, in the form etlfs reads.
    pub fn yaml(&self) -> String {
        self.yaml_with_prefix("")
    }

    /// The same, with a top-level `prefix:`.
    pub fn yaml_with_prefix(&self, prefix: &str) -> String {
        // A JSON string is a valid YAML double-quoted scalar.
        let q = |s: &str| serde_json::to_string(s).unwrap();
        let config = match self.kind {
            Kind::S3 => format!(
                "type: S3\nconfig:\n  bucket: {}\n  endpoint: {}\n  insecure: true\n  \
                 access_key: {}\n  secret_key: {}\n  region: {}\n  bucket_lookup_type: path\n",
                q(&self.bucket),
                q(self.host_port()),
                q(S3_KEY),
                q(S3_KEY),
                q(S3_REGION),
            ),
            // Thanos reaches Azurite only through a connection string (its `endpoint` is a DNS
            // suffix behind https://ACCOUNT.); `storage_account` is required all the same.
            Kind::Azure => format!(
                "type: AZURE\nconfig:\n  storage_account: {}\n  \
                 storage_connection_string: {}\n  container: {}\n",
                q(&azure_account()),
                q(&self.azure_connection_string()),
                q(&self.bucket),
            ),
            Kind::Gcs => format!(
                "type: GCS\nconfig:\n  bucket: {}\n  service_account: {}\n",
                q(&self.bucket),
                q(&self.gcs_service_account()),
            ),
        };
        if prefix.is_empty() {
            config
        } else {
            format!("{config}prefix: {}\n", q(prefix))
        }
    }

    /// `DefaultEndpointsProtocol=http;AccountName=..;AccountKey=..;BlobEndpoint=..;`
    pub fn azure_connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={};AccountKey={};BlobEndpoint={};",
            azure_account(),
            env("ETLFS_TEST_AZURE_KEY"),
            self.endpoint
        )
    }

    /// The service-account JSON that points object_store at the GCS adapter without OAuth.
    pub fn gcs_service_account(&self) -> String {
        serde_json::json!({
            "gcs_base_url": self.endpoint,
            "disable_oauth": true,
            "client_email": "",
            "private_key": "",
            "private_key_id": "",
        })
        .to_string()
    }

    /// A store on this bucket, built directly with object_store's builders (for asserting on
    /// the bucket's contents), with object_store's default retries.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store_with_retry(RetryConfig::default())
    }

    /// The same with other retries, e.g. `RetryConfig { max_retries: 0, ..Default::default() }`
    /// to see an outage at once.
    pub fn store_with_retry(&self, retry: RetryConfig) -> Arc<dyn ObjectStore> {
        let built: object_store::Result<Arc<dyn ObjectStore>> = match self.kind {
            Kind::S3 => AmazonS3Builder::new()
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_virtual_hosted_style_request(false)
                .with_region(S3_REGION)
                .with_bucket_name(&self.bucket)
                .with_access_key_id(S3_KEY)
                .with_secret_access_key(S3_KEY)
                .with_retry(retry)
                .build()
                .map(|s| Arc::new(s) as _),
            Kind::Azure => MicrosoftAzureBuilder::new()
                .with_endpoint(self.endpoint.clone())
                .with_allow_http(true)
                .with_account(azure_account())
                .with_access_key(env("ETLFS_TEST_AZURE_KEY"))
                .with_container_name(&self.bucket)
                .with_retry(retry)
                .build()
                .map(|s| Arc::new(s) as _),
            // Credentials are always set: without them object_store would ask the cloud
            // metadata address, which is outside loopback.
            Kind::Gcs => GoogleCloudStorageBuilder::new()
                .with_bucket_name(&self.bucket)
                .with_service_account_key(self.gcs_service_account())
                .with_client_options(ClientOptions::new().with_allow_http(true))
                .with_retry(retry)
                .build()
                .map(|s| Arc::new(s) as _),
        };
        built.unwrap_or_else(|e| panic!("building the {} store: {e}", self.kind.name()))
    }

    /// An outage: connections to this server's endpoint are refused until [`Server::start`].
    /// On a shared endpoint every test running at the time sees it.
    pub fn stop(&self) {
        self.ctl_port("stop");
    }

    /// Ends an outage (also a pause): the endpoint answers again, on the same port, with
    /// every bucket and object still there.
    pub fn start(&self) {
        self.ctl_port("start");
    }

    /// A hanging server: connections are accepted but never answered, until
    /// [`Server::resume`] (or [`Server::start`]).
    pub fn pause(&self) {
        self.ctl_port("pause");
    }

    pub fn resume(&self) {
        self.ctl_port("resume");
    }

    /// `running`, `paused` or `stopped`.
    pub fn status(&self) -> String {
        self.ctl_port("status").trim().to_owned()
    }

    fn ctl_port(&self, cmd: &str) -> String {
        match self.private_port {
            Some(p) => self.ctl(&[cmd, &p.to_string()]),
            None => self.ctl(&[cmd]),
        }
    }

    fn ctl(&self, args: &[&str]) -> String {
        let ctl = self.kind.var("CTL");
        let out = Command::new(&ctl)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {ctl}: {e}"));
        assert!(
            out.status.success(),
            "{ctl} {}: {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(port) = self.private_port {
            // Best effort: servers_stop removes whatever is left at the end of the run.
            let _ = Command::new(self.kind.var("CTL"))
                .args(["remove", &port.to_string()])
                .output();
        }
    }
}

/// A moto of the test's own that checks credentials (moto's IAM emulation, which the shared
/// moto leaves off): one bucket is created, then every request is authenticated, and the keys
/// of [`Server::yaml`] are unknown to it — each request is refused, `403 InvalidAccessKeyId`.
/// Stopped on drop.
pub struct CheckingMoto {
    child: std::process::Child,
    pub bucket: String,
    pub port: u16,
}

/// Starts a [`CheckingMoto`] (moto from the servers' own installation) and waits until it
/// answers.
pub fn moto_checking_credentials() -> CheckingMoto {
    let dir = env("ETLFS_TEST_SERVERS_DIR");
    let cache = std::fs::read_to_string(format!("{dir}/cache-dir"))
        .unwrap_or_else(|e| panic!("{dir}/cache-dir: {e}"));
    let port = crate::common::free_port();
    let child = Command::new(format!("{}/venv/bin/moto_server", cache.trim()))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        // The first request (the bucket's creation below) goes unchecked, every later one is.
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting moto_server");
    let mut moto = CheckingMoto {
        child,
        bucket: unique_name(),
        port,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            moto.child.try_wait().unwrap().is_none(),
            "moto_server exited at start"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "moto_server did not listen in 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = http(
        "PUT",
        &format!("http://127.0.0.1:{port}/{}", moto.bucket),
        &[],
        b"",
    );
    assert_eq!(status, 200, "creating the bucket: {body}");
    moto
}

impl CheckingMoto {
    /// The same object-store.yaml as [`Server::yaml`] for S3, on this moto.
    pub fn yaml(&self) -> String {
        format!(
            "type: S3\nconfig:\n  bucket: {}\n  endpoint: 127.0.0.1:{}\n  insecure: true\n  \
             access_key: {S3_KEY}\n  secret_key: {S3_KEY}\n  region: {S3_REGION}\n  \
             bucket_lookup_type: path\n",
            self.bucket, self.port
        )
    }
}

impl Drop for CheckingMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: run the tests through scripts/test.sh, which starts the servers \
             (or source scripts/servers.sh and call servers_install and servers_start)"
        ),
    }
}

fn azure_account() -> String {
    env("ETLFS_TEST_AZURE_ACCOUNT")
}

/// A bucket name valid everywhere (3-63 of `[a-z0-9-]`, no `--`), unique across processes
/// and runs.
fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "etlfs-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000_000_000
    )
}

fn replace_port(url: &str, port: u16) -> String {
    let rest = url.strip_prefix("http://").expect("http endpoint");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    format!("http://{host}:{port}{path}")
}

/// Creates the bucket directly on the storage server (not through a front, which a test may
/// have stopped).
fn create_bucket(kind: Kind, name: &str) {
    match kind {
        Kind::S3 => {
            let url = format!("{}/{name}", kind.var("SERVER"));
            let (status, body) = http("PUT", &url, &[], b"");
            assert_eq!(status, 200, "creating S3 bucket {name}: {body}");
        }
        Kind::Azure => {
            let mk = env("ETLFS_TEST_AZURE_MKCONTAINER");
            let out = Command::new(&mk)
                .arg(name)
                .output()
                .unwrap_or_else(|e| panic!("running {mk}: {e}"));
            assert!(
                out.status.success(),
                "creating Azure container {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Kind::Gcs => {
            let url = format!("{}/storage/v1/b?project=test", kind.var("SERVER"));
            let body = serde_json::json!({ "name": name }).to_string();
            let (status, resp) = http(
                "POST",
                &url,
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            );
            assert_eq!(status, 200, "creating GCS bucket {name}: {resp}");
        }
    }
}

/// One request to a storage server: (status, body as text). Retried a few times if it gets no
/// answer at all (a server restarting). On a thread of its own: reqwest's blocking client must
/// not run on an async runtime's thread, and the `#[tokio::test]`s make buckets too.
fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    std::thread::scope(|s| {
        s.spawn(|| {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .no_proxy()
                .build()
                .expect("an HTTP client");
            let mut last_err = None;
            for attempt in 0..5 {
                if attempt > 0 {
                    std::thread::sleep(Duration::from_millis(200 * attempt));
                }
                let mut req = client.request(method.clone(), url).body(body.to_vec());
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                match req
                    .send()
                    .and_then(|r| Ok((r.status().as_u16(), r.text()?)))
                {
                    Ok(answer) => return answer,
                    Err(e) => last_err = Some(e),
                }
            }
            panic!("{method} {url}: {}", last_err.unwrap());
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}
