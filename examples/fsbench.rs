//! Filesystem workload driver for `scripts/bench.sh`.
//!
//! Runs one workload against a directory and prints the elapsed wall time of the timed part,
//! in seconds, as a single number on stdout. Setup (making directories, building names, filling
//! buffers) and checks happen outside the timed part. Nothing is fsync'ed.
//!
//! ```text
//! fsbench seqwrite FILE SIZE_MIB [BLOCK_KIB]   create+truncate FILE, write SIZE_MIB in blocks, close
//! fsbench seqread  FILE [BLOCK_KIB]            open FILE, read it to the end in blocks, close
//! fsbench create   DIR N SIZE                  create+write SIZE bytes+close DIR/f00000..f{N-1}
//! fsbench stat     DIR N                       stat DIR/f00000..f{N-1}
//! fsbench firstbyte FILE                       open FILE and read 1 byte (time to first byte)
//! fsbench kubecost DIR N SIZE CYCLES           CYCLES passes over DIR/k00000..k{N-1}, each file:
//!                                              open(O_RDWR|O_CREAT, 0600), flock(LOCK_EX),
//!                                              ftruncate(0), lseek(0), one write of SIZE bytes,
//!                                              flock(LOCK_UN), close
//! fsbench readall  DIR N SIZE                  list DIR (exactly N entries), then read each file
//!                                              whole as Kubecost does: open, flock(LOCK_SH),
//!                                              read to the end, close; checks every byte
//! fsbench kcupload DIR N SIZE ENDPOINT BUCKET PREFIX TIMEOUT_S
//!                                              one Kubecost pass over DIR/k00000..k{N-1}, then
//!                                              lists the S3 bucket every 100 ms until all N keys
//!                                              PREFIX/k00000.. are there with SIZE bytes; prints
//!                                              the seconds from the last close to the listing
//!                                              that showed them all (an upper bound: the
//!                                              listing's own time is included)
//! fsbench fill     DIR N SIZE [SUBDIRS]        create N files of SIZE bytes, each with its own
//!                                              content (the pattern with the file's number in
//!                                              its first bytes): DIR/f00000.. or, with
//!                                              SUBDIRS > 0, DIR/d00/f00000.. (file i in
//!                                              directory i % SUBDIRS)
//! fsbench check    DIR N SIZE [SUBDIRS]        check that every file `fill` makes is there with
//!                                              its exact bytes, reading them one by one in
//!                                              name order, each whole (other entries are
//!                                              ignored)
//! fsbench s3check  ENDPOINT BUCKET PREFIX N SIZE
//!                                              list the bucket under PREFIX; fails unless it
//!                                              holds exactly N objects of SIZE bytes (etlfs'
//!                                              directory markers and .etlfs/ keys not counted)
//! fsbench delayproxy LISTEN_ADDR UPSTREAM_ADDR DELAY_MS
//!                                              a TCP proxy that adds DELAY_MS of latency to
//!                                              each HTTP request (see `delayproxy`); prints
//!                                              its port (LISTEN_ADDR may be 127.0.0.1:0) and
//!                                              runs until killed
//! ```
//!
//! `kcupload` and `s3check` list with a ListObjectsV2 request (`GET /BUCKET?list-type=2`, plain
//! HTTP/1.0 over TCP, path style); ENDPOINT is `http://HOST:PORT`. The request is signed
//! (AWS Signature V4, region `FSBENCH_S3_REGION`, default us-east-1) when
//! `FSBENCH_S3_ACCESS_KEY` and `FSBENCH_S3_SECRET_KEY` are set (s3s-fs requires it; moto does
//! not care), and sent unsigned otherwise.
//!
//! Build with `cargo build --release --example fsbench`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, flock};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

type Result<T> = std::result::Result<T, String>;

const USAGE: &str = "usage: fsbench seqwrite FILE SIZE_MIB [BLOCK_KIB]
       fsbench seqread FILE [BLOCK_KIB]
       fsbench firstbyte FILE
       fsbench create DIR N SIZE
       fsbench stat DIR N
       fsbench kubecost DIR N SIZE CYCLES
       fsbench readall DIR N SIZE
       fsbench kcupload DIR N SIZE ENDPOINT BUCKET PREFIX TIMEOUT_S
       fsbench fill DIR N SIZE [SUBDIRS]
       fsbench check DIR N SIZE [SUBDIRS]
       fsbench s3check ENDPOINT BUCKET PREFIX N SIZE
       fsbench delayproxy LISTEN_ADDR UPSTREAM_ADDR DELAY_MS";

fn num(args: &[String], i: usize, what: &str) -> Result<usize> {
    let s = args
        .get(i)
        .ok_or_else(|| format!("missing {what}\n{USAGE}"))?;
    s.parse().map_err(|_| format!("{what}: not a number: {s}"))
}

fn opt_num(args: &[String], i: usize, what: &str, default: usize) -> Result<usize> {
    if args.len() > i {
        num(args, i, what)
    } else {
        Ok(default)
    }
}

fn path(args: &[String], i: usize, what: &str) -> Result<PathBuf> {
    args.get(i)
        .map(PathBuf::from)
        .ok_or_else(|| format!("missing {what}\n{USAGE}"))
}

fn text<'a>(args: &'a [String], i: usize, what: &str) -> Result<&'a str> {
    args.get(i)
        .map(String::as_str)
        .ok_or_else(|| format!("missing {what}\n{USAGE}"))
}

fn ctx<T>(r: std::io::Result<T>, what: &str, p: &Path) -> Result<T> {
    r.map_err(|e| format!("{what} {}: {e}", p.display()))
}

/// A buffer of `len` bytes with a non-trivial pattern (no all-zero blocks).
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 12)) as u8 | 1)
        .collect()
}

fn names(dir: &Path, prefix: &str, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| dir.join(format!("{prefix}{i:05}")))
        .collect()
}

fn seqwrite(file: &Path, size_mib: usize, block_kib: usize) -> Result<f64> {
    if let Some(parent) = file.parent() {
        ctx(fs::create_dir_all(parent), "mkdir", parent)?;
    }
    let block = pattern(block_kib * 1024);
    let total = size_mib * 1024 * 1024;
    let start = Instant::now();
    let mut f = ctx(File::create(file), "create", file)?;
    let mut done = 0;
    while done < total {
        let n = block.len().min(total - done);
        ctx(f.write_all(&block[..n]), "write", file)?;
        done += n;
    }
    drop(f); // close is part of the timed work
    let secs = start.elapsed().as_secs_f64();
    let len = ctx(fs::metadata(file), "stat", file)?.len();
    if len != total as u64 {
        return Err(format!("{}: size {len}, expected {total}", file.display()));
    }
    Ok(secs)
}

fn seqread(file: &Path, block_kib: usize) -> Result<f64> {
    let expect = ctx(fs::metadata(file), "stat", file)?.len();
    let mut buf = vec![0u8; block_kib * 1024];
    let start = Instant::now();
    let mut f = ctx(File::open(file), "open", file)?;
    let mut total = 0u64;
    loop {
        let n = ctx(f.read(&mut buf), "read", file)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    drop(f);
    let secs = start.elapsed().as_secs_f64();
    if total != expect {
        return Err(format!(
            "{}: read {total} bytes, expected {expect}",
            file.display()
        ));
    }
    Ok(secs)
}

/// Time to first byte: the open and a read of one byte (through etlfs, a bucket-only file is
/// downloaded and verified whole before that read returns). The close is not timed.
fn firstbyte(file: &Path) -> Result<f64> {
    let mut byte = [0u8; 1];
    let start = Instant::now();
    let mut f = ctx(File::open(file), "open", file)?;
    let n = ctx(f.read(&mut byte), "read", file)?;
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    if n != 1 {
        return Err(format!("{}: empty", file.display()));
    }
    Ok(secs)
}

fn create(dir: &Path, n: usize, size: usize) -> Result<f64> {
    ctx(fs::create_dir_all(dir), "mkdir", dir)?;
    let files = names(dir, "f", n);
    let data = pattern(size);
    let start = Instant::now();
    for p in &files {
        let mut f = ctx(
            OpenOptions::new().write(true).create_new(true).open(p),
            "create",
            p,
        )?;
        ctx(f.write_all(&data), "write", p)?;
        drop(f);
    }
    Ok(start.elapsed().as_secs_f64())
}

fn stat(dir: &Path, n: usize) -> Result<f64> {
    let files = names(dir, "f", n);
    let start = Instant::now();
    let mut bytes = 0u64;
    for p in &files {
        bytes += ctx(fs::metadata(p), "stat", p)?.len();
    }
    let secs = start.elapsed().as_secs_f64();
    std::hint::black_box(bytes);
    Ok(secs)
}

fn kubecost(dir: &Path, n: usize, size: usize, cycles: usize) -> Result<f64> {
    let (start, end) = kubecost_pass(dir, n, size, cycles)?;
    Ok((end - start).as_secs_f64())
}

/// The Kubecost write pattern, CYCLES passes over DIR/k00000..; returns the instants right
/// before the first open and right after the last close (the sizes are checked afterwards).
fn kubecost_pass(dir: &Path, n: usize, size: usize, cycles: usize) -> Result<(Instant, Instant)> {
    ctx(fs::create_dir_all(dir), "mkdir", dir)?;
    let files = names(dir, "k", n);
    let data = pattern(size);
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true).mode(0o600);
    let start = Instant::now();
    for _ in 0..cycles {
        for p in &files {
            let mut f = ctx(opts.open(p), "open", p)?;
            ctx(
                flock(&f, FlockOperation::LockExclusive).map_err(Into::into),
                "flock(LOCK_EX)",
                p,
            )?;
            ctx(f.set_len(0), "ftruncate", p)?;
            ctx(f.seek(SeekFrom::Start(0)), "lseek", p)?;
            // One write(2) of the whole buffer, as the application does.
            let w = ctx(f.write(&data), "write", p)?;
            if w != data.len() {
                return Err(format!(
                    "{}: short write {w} of {}",
                    p.display(),
                    data.len()
                ));
            }
            ctx(
                flock(&f, FlockOperation::Unlock).map_err(Into::into),
                "flock(LOCK_UN)",
                p,
            )?;
            drop(f);
        }
    }
    let end = Instant::now();
    for p in &files {
        let len = ctx(fs::metadata(p), "stat", p)?.len();
        if len != size as u64 {
            return Err(format!("{}: size {len}, expected {size}", p.display()));
        }
    }
    Ok((start, end))
}

/// The path of file `i` of `fill`/`check`.
fn fill_name(dir: &Path, i: usize, subdirs: usize) -> PathBuf {
    if subdirs == 0 {
        dir.join(format!("f{i:05}"))
    } else {
        dir.join(format!("d{:02}", i % subdirs))
            .join(format!("f{i:05}"))
    }
}

/// The content of file `i` of `fill`: the pattern, its first bytes replaced by `i`.
fn fill_content(base: &[u8], i: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(base);
    let tag = (i as u64).to_le_bytes();
    let k = tag.len().min(out.len());
    out[..k].copy_from_slice(&tag[..k]);
}

fn fill(dir: &Path, n: usize, size: usize, subdirs: usize) -> Result<f64> {
    ctx(fs::create_dir_all(dir), "mkdir", dir)?;
    for d in 0..subdirs {
        let p = dir.join(format!("d{d:02}"));
        ctx(fs::create_dir_all(&p), "mkdir", &p)?;
    }
    let base = pattern(size);
    let mut data = Vec::with_capacity(size);
    let start = Instant::now();
    for i in 0..n {
        let p = fill_name(dir, i, subdirs);
        fill_content(&base, i, &mut data);
        let mut f = ctx(
            OpenOptions::new().write(true).create_new(true).open(&p),
            "create",
            &p,
        )?;
        ctx(f.write_all(&data), "write", &p)?;
    }
    Ok(start.elapsed().as_secs_f64())
}

fn check(dir: &Path, n: usize, size: usize, subdirs: usize) -> Result<f64> {
    let base = pattern(size);
    let (mut want, mut buf) = (Vec::with_capacity(size), Vec::with_capacity(size + 1));
    let start = Instant::now();
    for i in 0..n {
        let p = fill_name(dir, i, subdirs);
        fill_content(&base, i, &mut want);
        buf.clear();
        ctx(
            File::open(&p).and_then(|mut f| f.read_to_end(&mut buf)),
            "read",
            &p,
        )?;
        if buf != want {
            return Err(format!(
                "{}: {} bytes that are not the {size} written",
                p.display(),
                buf.len()
            ));
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

fn readall(dir: &Path, n: usize, size: usize) -> Result<f64> {
    let expect = pattern(size);
    let mut buf = Vec::with_capacity(size + 1);
    let start = Instant::now();
    let mut files = Vec::with_capacity(n);
    for e in ctx(fs::read_dir(dir), "readdir", dir)? {
        files.push(ctx(e, "readdir", dir)?.path());
    }
    if files.len() != n {
        return Err(format!(
            "{}: {} entries, expected {n}",
            dir.display(),
            files.len()
        ));
    }
    files.sort();
    for p in &files {
        let mut f = ctx(File::open(p), "open", p)?;
        ctx(
            flock(&f, FlockOperation::LockShared).map_err(Into::into),
            "flock(LOCK_SH)",
            p,
        )?;
        buf.clear();
        ctx(f.read_to_end(&mut buf), "read", p)?;
        drop(f);
        if buf != expect {
            return Err(format!(
                "{}: {} bytes that are not the {size} written",
                p.display(),
                buf.len()
            ));
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

/// `GET PATH_AND_QUERY` on ENDPOINT (`http://host:port`) with HTTP/1.0 (so no chunked body);
/// the body of a 200 answer.
fn http_get(endpoint: &str, path_and_query: &str) -> Result<String> {
    let host = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| format!("ENDPOINT must be http://HOST:PORT, not {endpoint}"))?
        .trim_end_matches('/');
    let err = |e: std::io::Error| format!("GET {endpoint}{path_and_query}: {e}");
    let auth = sigv4_headers(host, path_and_query);
    let mut s = TcpStream::connect(host).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(err)?;
    write!(
        s,
        "GET {path_and_query} HTTP/1.0\r\nHost: {host}\r\n{auth}\r\n"
    )
    .map_err(err)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(err)?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {endpoint}{path_and_query}: no HTTP answer"))?;
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!(
            "GET {endpoint}{path_and_query}: {status}: {}",
            body.chars().take(300).collect::<String>()
        ));
    }
    Ok(body.to_string())
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 64;
    let mut k = if key.len() > BLOCK {
        Sha256::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(BLOCK, 0);
    let (mut inner, mut outer) = (Sha256::new(), Sha256::new());
    inner.update(k.iter().map(|b| b ^ 0x36).collect::<Vec<_>>());
    inner.update(msg);
    outer.update(k.iter().map(|b| b ^ 0x5c).collect::<Vec<_>>());
    outer.update(inner.finalize());
    outer.finalize().to_vec()
}

/// The extra request headers (each ending in CRLF) of an AWS Signature V4 for an empty-bodied
/// `GET path_and_query` to `host`, when FSBENCH_S3_ACCESS_KEY and FSBENCH_S3_SECRET_KEY are set;
/// empty otherwise. The query must already be percent-encoded as S3 wants it.
fn sigv4_headers(host: &str, path_and_query: &str) -> String {
    let (Ok(ak), Ok(sk)) = (
        std::env::var("FSBENCH_S3_ACCESS_KEY"),
        std::env::var("FSBENCH_S3_SECRET_KEY"),
    ) else {
        return String::new();
    };
    let region = std::env::var("FSBENCH_S3_REGION").unwrap_or_else(|_| "us-east-1".into());
    // 2026-11-26T08:21:28Z -> 20261126T082128Z
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let amz_date: String = now.chars().filter(|c| *c != '-' && *c != ':').collect();
    let day = &amz_date[..8];
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let mut params: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    params.sort();
    let canonical_query = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let empty_sha = hex::encode(Sha256::digest(b""));
    let signed = "host;x-amz-content-sha256;x-amz-date";
    let canonical = format!(
        "GET\n{path}\n{canonical_query}\nhost:{host}\nx-amz-content-sha256:{empty_sha}\nx-amz-date:{amz_date}\n\n{signed}\n{empty_sha}"
    );
    let scope = format!("{day}/{region}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac_sha256(format!("AWS4{sk}").as_bytes(), day.as_bytes());
    for part in [region.as_str(), "s3", "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac_sha256(&key, to_sign.as_bytes()));
    format!(
        "x-amz-content-sha256: {empty_sha}\r\nx-amz-date: {amz_date}\r\nAuthorization: AWS4-HMAC-SHA256 Credential={ak}/{scope}, SignedHeaders={signed}, Signature={signature}\r\n"
    )
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The text between `<tag>` and `</tag>` in each occurrence within `xml`.
fn xml_all<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(&rest[..j]);
        rest = &rest[j + close.len()..];
    }
    out
}

/// Every (key, size) under `prefix` in the bucket (ListObjectsV2, following continuations).
fn list_bucket(endpoint: &str, bucket: &str, prefix: &str) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut q = format!(
            "/{}?list-type=2&max-keys=1000&prefix={}",
            percent_encode(bucket),
            percent_encode(prefix)
        );
        if let Some(t) = &token {
            q.push_str(&format!("&continuation-token={}", percent_encode(t)));
        }
        let body = http_get(endpoint, &q)?;
        for c in xml_all(&body, "Contents") {
            let key = xml_all(c, "Key").first().copied().unwrap_or("");
            let size = xml_all(c, "Size").first().and_then(|s| s.parse().ok());
            out.push((key.replace("&amp;", "&"), size.unwrap_or(u64::MAX)));
        }
        let truncated = xml_all(&body, "IsTruncated").first() == Some(&"true");
        match xml_all(&body, "NextContinuationToken").first() {
            Some(t) if truncated => token = Some(t.replace("&amp;", "&")),
            _ => return Ok(out),
        }
    }
}

fn kcupload(
    dir: &Path,
    n: usize,
    size: usize,
    bucket: (&str, &str, &str),
    timeout: usize,
) -> Result<f64> {
    let (endpoint, name, prefix) = bucket;
    let prefix = prefix.trim_matches('/');
    let want: std::collections::HashSet<String> = (0..n)
        .map(|i| {
            if prefix.is_empty() {
                format!("k{i:05}")
            } else {
                format!("{prefix}/k{i:05}")
            }
        })
        .collect();
    let list_prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    let (_, last_close) = kubecost_pass(dir, n, size, 1)?;
    let deadline = last_close + Duration::from_secs(timeout as u64);
    loop {
        let have = list_bucket(endpoint, name, &list_prefix)?
            .into_iter()
            .filter(|(k, s)| *s == size as u64 && want.contains(k))
            .count();
        let now = Instant::now();
        if have == n {
            return Ok((now - last_close).as_secs_f64());
        }
        if now > deadline {
            return Err(format!(
                "only {have} of {n} files in {endpoint}/{name}/{list_prefix} {timeout} s after the last close"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn s3check(bucket: (&str, &str, &str), n: usize, size: usize) -> Result<f64> {
    let (endpoint, name, prefix) = bucket;
    let prefix = prefix.trim_matches('/');
    let list_prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    let start = Instant::now();
    let keys = list_bucket(endpoint, name, &list_prefix)?;
    let secs = start.elapsed().as_secs_f64();
    let data: Vec<_> = keys
        .iter()
        .filter(|(k, _)| {
            let rel = &k[list_prefix.len()..];
            !(rel.ends_with(".etlfs-dir") || rel.starts_with(".etlfs/"))
        })
        .collect();
    let right = data.iter().filter(|(_, s)| *s == size as u64).count();
    if data.len() != n || right != n {
        return Err(format!(
            "{endpoint}/{name}/{list_prefix}: {} objects, {right} of them {size} bytes; expected {n}",
            data.len()
        ));
    }
    Ok(secs)
}

/// A proxy in front of a local S3 server that gives each HTTP request the latency of a real
/// bucket, where every request costs a round trip (10-50 ms) that 127.0.0.1 does not have.
///
/// What it models: a round trip to connect (TCP's handshake; TLS would add one more, not
/// modeled), and a round trip per request, charged once by holding the first chunk of the
/// request for `delay` (a chunk that comes after the server has answered anything since the
/// client's last chunk, or the connection's first chunk); later chunks of the same request (a
/// PUT body) and every byte of the answer pass at once. What it does not: bandwidth (bytes
/// flow at loopback speed, so big objects come too fast), TCP slow start, loss, and pipelining
/// (a request sent before the answer to the previous one would go undelayed; HTTP/1.1 clients
/// such as etlfs' and rclone's do not pipeline).
fn delayproxy(listen: &str, upstream: &str, delay_ms: usize) -> Result<f64> {
    let delay = Duration::from_millis(delay_ms as u64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("bind {listen}: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("{listen}: {e}"))?
            .port();
        // The caller reads the port from our stdout: flush it now, we never exit by ourselves.
        println!("{port}");
        std::io::stdout()
            .flush()
            .map_err(|e| format!("stdout: {e}"))?;
        loop {
            match listener.accept().await {
                Ok((client, _)) => {
                    let upstream = upstream.to_string();
                    tokio::spawn(async move {
                        if let Err(e) = proxy_connection(client, &upstream, delay).await {
                            eprintln!("fsbench delayproxy: connection to {upstream}: {e}");
                        }
                    });
                }
                // Out of descriptors, say: the proxy must outlive it, as a network would.
                Err(e) => {
                    eprintln!("fsbench delayproxy: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    })
}

/// One client connection: the connection's round trip, then both directions at once until
/// each side has closed its half (or either fails).
async fn proxy_connection(
    client: tokio::net::TcpStream,
    upstream: &str,
    delay: Duration,
) -> std::io::Result<()> {
    tokio::time::sleep(delay).await;
    let server = tokio::net::TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    // Whether the server has sent anything since the client's last chunk: then the client's
    // next chunk starts a new request. True at first: the first chunk is a request's start.
    let answered = Arc::new(AtomicBool::new(true));
    tokio::try_join!(
        forward_requests(client_r, server_w, delay, answered.clone()),
        forward_answers(server_r, client_w, answered),
    )?;
    Ok(())
}

/// Client -> server: holds the first chunk of each request for `delay`.
async fn forward_requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay: Duration,
    answered: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        // What the client sends meanwhile waits in the socket: later chunks are not delayed
        // again, and the order is kept.
        if answered.swap(false, Ordering::AcqRel) {
            tokio::time::sleep(delay).await;
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Server -> client, undelayed; marks that an answer came before passing it on, so that the
/// client's next request (which can only follow it) is delayed.
async fn forward_answers(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    answered: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        answered.store(true, Ordering::Release);
        to.write_all(&buf[..n]).await?;
    }
}

fn run(args: &[String]) -> Result<f64> {
    match args.first().map(String::as_str) {
        Some("seqwrite") => seqwrite(
            &path(args, 1, "FILE")?,
            num(args, 2, "SIZE_MIB")?,
            opt_num(args, 3, "BLOCK_KIB", 1024)?,
        ),
        Some("seqread") => seqread(
            &path(args, 1, "FILE")?,
            opt_num(args, 2, "BLOCK_KIB", 1024)?,
        ),
        Some("firstbyte") => firstbyte(&path(args, 1, "FILE")?),
        Some("create") => create(
            &path(args, 1, "DIR")?,
            num(args, 2, "N")?,
            num(args, 3, "SIZE")?,
        ),
        Some("stat") => stat(&path(args, 1, "DIR")?, num(args, 2, "N")?),
        Some("kubecost") => kubecost(
            &path(args, 1, "DIR")?,
            num(args, 2, "N")?,
            num(args, 3, "SIZE")?,
            num(args, 4, "CYCLES")?,
        ),
        Some("readall") => readall(
            &path(args, 1, "DIR")?,
            num(args, 2, "N")?,
            num(args, 3, "SIZE")?,
        ),
        Some("kcupload") => kcupload(
            &path(args, 1, "DIR")?,
            num(args, 2, "N")?,
            num(args, 3, "SIZE")?,
            (
                text(args, 4, "ENDPOINT")?,
                text(args, 5, "BUCKET")?,
                text(args, 6, "PREFIX")?,
            ),
            num(args, 7, "TIMEOUT_S")?,
        ),
        Some("fill") => fill(
            &path(args, 1, "DIR")?,
            num(args, 2, "N")?,
            num(args, 3, "SIZE")?,
            opt_num(args, 4, "SUBDIRS", 0)?,
        ),
        Some("check") => check(
            &path(args, 1, "DIR")?,
            num(args, 2, "N")?,
            num(args, 3, "SIZE")?,
            opt_num(args, 4, "SUBDIRS", 0)?,
        ),
        Some("s3check") => s3check(
            (
                text(args, 1, "ENDPOINT")?,
                text(args, 2, "BUCKET")?,
                text(args, 3, "PREFIX")?,
            ),
            num(args, 4, "N")?,
            num(args, 5, "SIZE")?,
        ),
        Some("delayproxy") => delayproxy(
            text(args, 1, "LISTEN_ADDR")?,
            text(args, 2, "UPSTREAM_ADDR")?,
            num(args, 3, "DELAY_MS")?,
        ),
        _ => Err(USAGE.to_string()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(secs) => {
            println!("{secs:.6}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fsbench: {e}");
            ExitCode::FAILURE
        }
    }
}
