//! Where S3 requests go: the URL, the signing region, and path-style or virtual-hosted.
//!
//! Thanos' S3 `endpoint` is `host[:port]` with `insecure` choosing the scheme. `object_store`
//! wants a full URL and *panics at the first request* when the scheme is missing, so the URL is
//! always built here (`http` when `insecure`, else `https`), parsed with [`url::Url`], and
//! `allow_http` follows the scheme. The path-style or virtual-hosted choice (minio's `auto`
//! rule) is made here too, because with a custom endpoint `object_store` expects the bucket
//! already inside a virtual-hosted URL.

use tracing::{debug, warn};
use url::Url;

use crate::escape::esc;
use crate::store::config::ConfigError;
use crate::store::config::error::Ctx;
use crate::store::config::schema::nonempty;

/// `bucket_lookup_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lookup {
    Auto,
    VirtualHosted,
    Path,
}

/// What an AWS S3 host name tells us.
struct AwsHost {
    /// `None` for the global `s3.amazonaws.com`.
    region: Option<String>,
    suffix: &'static str,
}

/// Recognizes the AWS hosts minio's `GetRegionFromURL` knows: `s3.amazonaws.com`,
/// `s3.<r>.amazonaws.com`, `s3-<r>.amazonaws.com`, `s3.dualstack.<r>...`, `s3-fips.<r>...`,
/// and the `.amazonaws.com.cn` forms.
fn aws_host(host: &str) -> Option<AwsHost> {
    let (rest, suffix) = if let Some(rest) = host.strip_suffix(".amazonaws.com") {
        (rest, "amazonaws.com")
    } else if let Some(rest) = host.strip_suffix(".amazonaws.com.cn") {
        (rest, "amazonaws.com.cn")
    } else {
        return None;
    };
    let region_like = |r: &str| r.contains('-') && r.ends_with(|c: char| c.is_ascii_digit());
    let labels: Vec<&str> = rest.split('.').collect();
    let region = match labels.as_slice() {
        ["s3"] => None,
        ["s3-external-1"] => Some("us-east-1"),
        ["s3" | "s3-fips", region] | ["s3" | "s3-fips", "dualstack", region]
            if region_like(region) =>
        {
            Some(*region)
        }
        [label] if label.starts_with("s3-") && region_like(&label[3..]) => Some(&label[3..]),
        _ => return None,
    };
    Some(AwsHost {
        region: region.map(str::to_string),
        suffix,
    })
}

/// Thanos' `host[:port]` plus `insecure` → a URL with a scheme. A scheme in the endpoint is
/// accepted (newer minio does too) when it agrees with an explicit `insecure`.
fn s3_endpoint_url(ctx: &Ctx, endpoint: &str, insecure: Option<bool>) -> Result<Url, ConfigError> {
    const KEY: &str = "config.endpoint";
    let text = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        let scheme = if insecure == Some(true) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{endpoint}")
    };
    // Credentials in the URL would be a secret we must not echo: check before quoting it.
    let url = Url::parse(&text).map_err(|e| {
        ctx.invalid(
            KEY,
            format!("must be `host[:port]` (e.g. `s3.amazonaws.com` or `minio:9000`): {e}"),
        )
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ctx.invalid(
            KEY,
            "must not carry credentials; use config.access_key and config.secret_key",
        ));
    }
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(ctx.invalid(
                KEY,
                format!("has scheme `{other}`; only http and https work"),
            ));
        }
    }
    let http = url.scheme() == "http";
    if let Some(insecure) = insecure {
        if insecure != http {
            return Err(ctx.invalid(
                KEY,
                format!(
                    "says {} but config.insecure is {insecure}; drop the scheme and let \
                     `insecure` choose it",
                    url.scheme()
                ),
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ctx.invalid(KEY, format!("`{endpoint}` has no host")));
    }
    if url.path() != "/" && !url.path().is_empty() {
        return Err(ctx.invalid(
            KEY,
            format!(
                "`{endpoint}` has a path; the endpoint is `host[:port]` only and the bucket \
                 goes in config.bucket"
            ),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ctx.invalid(KEY, format!("`{endpoint}` has a query or fragment")));
    }
    Ok(url)
}

/// `bucket_lookup_type`, `auto` when empty.
pub(super) fn lookup(ctx: &Ctx, value: Option<String>) -> Result<Lookup, ConfigError> {
    match nonempty(value).as_deref() {
        None | Some("auto") => Ok(Lookup::Auto),
        Some("virtual-hosted") => Ok(Lookup::VirtualHosted),
        Some("path") => Ok(Lookup::Path),
        Some(other) => Err(ctx.invalid(
            "config.bucket_lookup_type",
            format!("`{other}` is not one of auto, virtual-hosted, path"),
        )),
    }
}

/// Where requests go, decided from the file (and, for an AWS host naming no region, the
/// ambient `AWS_REGION`).
pub(super) struct Target {
    /// The URL object_store sends requests to, the bucket in the host when virtual-hosted.
    pub(super) endpoint_url: String,
    pub(super) region: String,
    pub(super) virtual_hosted: bool,
    pub(super) https: bool,
    /// The endpoint's host, lower-case: some S3 dialects need features turned off.
    pub(super) host: String,
}

pub(super) fn resolve(
    ctx: &Ctx,
    bucket: &str,
    endpoint: &str,
    insecure: Option<bool>,
    yaml_region: Option<String>,
    lookup: Lookup,
) -> Result<Target, ConfigError> {
    let url = s3_endpoint_url(ctx, endpoint, insecure)?;
    let https = url.scheme() == "https";
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    let aws = aws_host(&host);
    let region = region(ctx, aws.as_ref(), nonempty(yaml_region))?;
    let request_host = match &aws {
        // The global endpoint only serves us-east-1 buckets; go to the bucket's region.
        Some(AwsHost {
            region: None,
            suffix,
        }) => format!("s3.{region}.{suffix}"),
        _ => host.clone(),
    };
    let known_virtual_host =
        aws.is_some() || host == "storage.googleapis.com" || host.ends_with(".aliyuncs.com");
    let virtual_hosted = match lookup {
        Lookup::Path => false,
        Lookup::VirtualHosted => true,
        // minio's rule; a dotted bucket name breaks the *.s3 wildcard certificate.
        Lookup::Auto => known_virtual_host && !(https && bucket.contains('.')),
    };
    let authority = match url.port() {
        Some(port) => format!("{request_host}:{port}"),
        None => request_host,
    };
    let endpoint_url = if virtual_hosted {
        format!("{}://{bucket}.{authority}", url.scheme())
    } else {
        format!("{}://{authority}", url.scheme())
    };
    Url::parse(&endpoint_url).map_err(|e| {
        ctx.invalid(
            "config.bucket",
            format!("does not form a valid virtual-hosted URL ({e}); use bucket_lookup_type: path"),
        )
    })?;
    Ok(Target {
        endpoint_url,
        region,
        virtual_hosted,
        https,
        host,
    })
}

/// The signing region: the file's, else the one an AWS host names, else a default.
fn region(
    ctx: &Ctx,
    aws: Option<&AwsHost>,
    yaml_region: Option<String>,
) -> Result<String, ConfigError> {
    let Some(aws) = aws else {
        return Ok(yaml_region.unwrap_or_else(|| {
            debug!(
                file = %esc(ctx.file),
                key = "config.region",
                "region is empty; signing for us-east-1 (what S3-compatible servers expect)"
            );
            "us-east-1".to_string()
        }));
    };
    Ok(match (yaml_region, &aws.region) {
        (Some(yaml), Some(from_host)) if &yaml != from_host => {
            return Err(ctx.invalid(
                "config.region",
                format!("`{yaml}` differs from the region `{from_host}` in config.endpoint"),
            ));
        }
        (Some(yaml), _) => yaml,
        (None, Some(from_host)) => from_host.clone(),
        (None, None) => {
            let ambient = ctx
                .env
                .get("AWS_REGION")
                .or_else(|| ctx.env.get("AWS_DEFAULT_REGION"));
            // minio would ask GetBucketLocation; object_store cannot without a request.
            let region = ambient.unwrap_or("us-east-1").to_string();
            warn!(
                file = %esc(ctx.file),
                key = "config.region",
                region = %esc(&region),
                "region is empty and the endpoint names none; assuming it (set config.region \
                 if the bucket lives elsewhere: S3 answers 301 to the wrong region)"
            );
            region
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::config::parse_with_env;
    use crate::store::config::testkit::*;

    #[test]
    fn s3_endpoint_scheme_and_lookup() {
        let cfg = ok(&s3_bare("endpoint: minio:9000\ninsecure: true"));
        assert_eq!(cfg.endpoint.as_deref(), Some("http://minio:9000"));
        assert_eq!(s3_bucket_endpoint(&cfg), "http://minio:9000/etl");
        assert!(
            cfg.describe.contains("http://minio:9000"),
            "{}",
            cfg.describe
        );
        assert!(cfg.describe.contains("path-style"), "{}", cfg.describe);

        let cfg = ok(&s3_bare("endpoint: minio:9000\ninsecure: false"));
        assert_eq!(cfg.endpoint.as_deref(), Some("https://minio:9000"));
        assert_eq!(s3_bucket_endpoint(&cfg), "https://minio:9000/etl");
        let cfg = ok(&s3_bare("endpoint: minio:9000"));
        assert_eq!(cfg.endpoint.as_deref(), Some("https://minio:9000"));
        let cfg = ok(&s3_bare("endpoint: '[::1]:9000'\ninsecure: true"));
        assert_eq!(cfg.endpoint.as_deref(), Some("http://[::1]:9000"));

        // Virtual-hosted on a custom endpoint: the bucket moves into the host.
        let cfg = ok(&s3("bucket_lookup_type: virtual-hosted"));
        assert_eq!(cfg.endpoint.as_deref(), Some("http://etl.minio:9000"));
        assert_eq!(s3_bucket_endpoint(&cfg), "http://etl.minio:9000");

        // AWS: minio's auto rule picks virtual-hosted; the global host goes regional.
        let cfg = ok(&s3_bare("endpoint: s3.amazonaws.com\nregion: eu-west-1"));
        assert_eq!(
            cfg.endpoint.as_deref(),
            Some("https://etl.s3.eu-west-1.amazonaws.com")
        );
        assert!(
            cfg.describe.contains("region eu-west-1"),
            "{}",
            cfg.describe
        );
        let cfg = ok(&s3_bare("endpoint: s3.eu-central-1.amazonaws.com"));
        assert!(
            cfg.describe.contains("region eu-central-1"),
            "{}",
            cfg.describe
        );
        let cfg = ok(&s3_bare(
            "endpoint: s3.amazonaws.com\nregion: eu-west-1\nbucket_lookup_type: path",
        ));
        assert_eq!(
            cfg.endpoint.as_deref(),
            Some("https://s3.eu-west-1.amazonaws.com")
        );
        assert_eq!(
            s3_bucket_endpoint(&cfg),
            "https://s3.eu-west-1.amazonaws.com/etl"
        );
        // A dotted bucket breaks the wildcard certificate: path style.
        let cfg =
            ok("type: S3\nconfig:\n  bucket: my.etl\n  endpoint: s3.us-east-2.amazonaws.com\n");
        assert_eq!(
            cfg.endpoint.as_deref(),
            Some("https://s3.us-east-2.amazonaws.com")
        );
        // GCS's S3 interop is virtual-hosted under auto.
        let cfg = ok(&s3_bare("endpoint: storage.googleapis.com"));
        assert_eq!(
            cfg.endpoint.as_deref(),
            Some("https://etl.storage.googleapis.com")
        );

        // The global endpoint without a region takes the ambient region.
        let yaml = s3_bare("endpoint: s3.amazonaws.com");
        let cfg = parse_with_env(&yaml, FILE, &env(&[("AWS_REGION", "ap-south-1")])).unwrap();
        assert_eq!(
            cfg.endpoint.as_deref(),
            Some("https://etl.s3.ap-south-1.amazonaws.com")
        );
        let cfg = ok(&yaml);
        assert!(
            cfg.describe.contains("region us-east-1"),
            "{}",
            cfg.describe
        );
    }

    #[test]
    fn aws_host_names() {
        let region = |h: &str| aws_host(h).map(|a| a.region);
        assert_eq!(region("s3.amazonaws.com"), Some(None));
        assert_eq!(
            region("s3.eu-west-1.amazonaws.com"),
            Some(Some("eu-west-1".into()))
        );
        assert_eq!(
            region("s3-eu-west-1.amazonaws.com"),
            Some(Some("eu-west-1".into()))
        );
        assert_eq!(
            region("s3-external-1.amazonaws.com"),
            Some(Some("us-east-1".into()))
        );
        assert_eq!(
            region("s3.dualstack.us-west-2.amazonaws.com"),
            Some(Some("us-west-2".into()))
        );
        assert_eq!(
            region("s3-fips.us-gov-west-1.amazonaws.com"),
            Some(Some("us-gov-west-1".into()))
        );
        assert_eq!(
            region("s3.cn-north-1.amazonaws.com.cn"),
            Some(Some("cn-north-1".into()))
        );
        assert_eq!(region("minio.example.com").map(|_| ()), None);
        assert_eq!(
            region("bucket.vpce-1.s3.us-east-1.vpce.amazonaws.com").map(|_| ()),
            None
        );
    }
}
