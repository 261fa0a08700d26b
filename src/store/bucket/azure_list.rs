//! Azure's List Blobs and Create Container, sent and read by etlfs itself.
//!
//! The listing is the one way past a blob whose name
//! `object_store` cannot represent. object_store rejects the whole page holding such a name,
//! Azure's continuation markers are opaque, and its `startFrom` is not honoured everywhere
//! (Azurite ignores it), so a listing cannot restart after the name. Read raw, every name of
//! the page is seen; [`crate::store::bucket`] keeps those that can be keys and leaves out the rest.
//!
//! The container's creation is what Thanos' `storage_create_container` (true unless set false)
//! does at start, and object_store has no call for it.
//!
//! Each request is signed by object_store's own authorizer with the store's own credentials
//! (shared key, SAS, or a bearer token of any of its credential chains), and sent through an
//! object_store HTTP client with the store's client options: nothing here knows a secret or a
//! TLS setting, and no signature is computed here.

use chrono::{DateTime, Utc};
use object_store::azure::{AzureAuthorizer, MicrosoftAzure};
use object_store::client::{ClientOptions, HttpClient, HttpConnector, ReqwestConnector};
use serde::Deserialize;

/// One container, listed raw.
#[derive(Debug)]
pub struct AzureLister {
    store: MicrosoftAzure,
    account: String,
    /// `<account URL>/<container>`.
    container_url: String,
    client: HttpClient,
}

/// One page of a raw listing: names exactly as the service sent them.
#[derive(Debug, Default)]
pub struct RawPage {
    pub blobs: Vec<RawBlob>,
    /// Directory parts, each ending in `/` (with a delimiter).
    pub prefixes: Vec<String>,
    /// The marker of the next page, if any.
    pub next: Option<String>,
}

#[derive(Debug)]
pub struct RawBlob {
    pub name: String,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
    pub e_tag: Option<String>,
}

fn err(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> object_store::Error {
    object_store::Error::Generic {
        store: "MicrosoftAzure",
        source: source.into(),
    }
}

impl AzureLister {
    pub fn new(
        store: MicrosoftAzure,
        account: &str,
        container_url: String,
        options: &ClientOptions,
    ) -> object_store::Result<AzureLister> {
        Ok(AzureLister {
            store,
            account: account.to_owned(),
            container_url,
            client: ReqwestConnector::default().connect(options)?,
        })
    }

    /// Creates the container (Create Container: `PUT ?restype=container`). A container that
    /// exists already (409, created by someone else meanwhile) is no error.
    pub async fn create_container(&self) -> object_store::Result<()> {
        let mut url = url::Url::parse(&self.container_url).map_err(err)?;
        url.query_pairs_mut().append_pair("restype", "container");
        let mut request = http::Request::builder()
            .method(http::Method::PUT)
            .uri(url.as_str())
            .header(http::header::CONTENT_LENGTH, "0")
            .body(object_store::client::HttpRequestBody::empty())
            .map_err(err)?;
        let credential = self.store.credentials().get_credential().await?;
        AzureAuthorizer::new(&credential, &self.account).try_authorize(&mut request)?;
        let response = self.client.execute(request).await.map_err(err)?;
        let status = response.status();
        if status.is_success() || status == http::StatusCode::CONFLICT {
            return Ok(());
        }
        let body = response.into_body().bytes().await.map_err(err)?;
        Err(err(super::reply::status_text(status, &body)))
    }

    /// One page below `prefix` (a raw key prefix, `/`-terminated), one level with `delimiter`.
    pub async fn page(
        &self,
        prefix: Option<&str>,
        delimiter: bool,
        marker: Option<&str>,
    ) -> object_store::Result<RawPage> {
        let mut url = url::Url::parse(&self.container_url).map_err(err)?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("restype", "container")
                .append_pair("comp", "list");
            if let Some(p) = prefix {
                q.append_pair("prefix", p);
            }
            if delimiter {
                q.append_pair("delimiter", "/");
            }
            if let Some(m) = marker {
                q.append_pair("marker", m);
            }
        }
        let mut request = http::Request::builder()
            .method(http::Method::GET)
            .uri(url.as_str())
            .body(object_store::client::HttpRequestBody::empty())
            .map_err(err)?;
        let credential = self.store.credentials().get_credential().await?;
        AzureAuthorizer::new(&credential, &self.account).try_authorize(&mut request)?;
        let response = self.client.execute(request).await.map_err(err)?;
        let status = response.status();
        let body = response.into_body().bytes().await.map_err(err)?;
        if !status.is_success() {
            return Err(err(super::reply::status_text(status, &body)));
        }
        parse(&body)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EnumerationResults {
    #[serde(default)]
    next_marker: Option<String>,
    #[serde(default)]
    blobs: Blobs,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Blobs {
    #[serde(default)]
    blob: Vec<Blob>,
    #[serde(default)]
    blob_prefix: Vec<Prefix>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Blob {
    name: String,
    properties: Properties,
}

#[derive(Deserialize)]
struct Properties {
    #[serde(rename = "Last-Modified")]
    last_modified: String,
    #[serde(rename = "Content-Length")]
    content_length: u64,
    #[serde(rename = "Etag", default)]
    e_tag: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Prefix {
    name: String,
}

fn parse(body: &[u8]) -> object_store::Result<RawPage> {
    let text = std::str::from_utf8(body).map_err(err)?;
    let r: EnumerationResults = quick_xml::de::from_str(text).map_err(err)?;
    let blobs = r
        .blobs
        .blob
        .into_iter()
        .map(|b| {
            let last_modified = DateTime::parse_from_rfc2822(&b.properties.last_modified)
                .map_err(err)?
                .with_timezone(&Utc);
            Ok(RawBlob {
                name: b.name,
                size: b.properties.content_length,
                last_modified,
                e_tag: b.properties.e_tag,
            })
        })
        .collect::<object_store::Result<Vec<_>>>()?;
    Ok(RawPage {
        blobs,
        prefixes: r.blobs.blob_prefix.into_iter().map(|p| p.name).collect(),
        next: r.next_marker.filter(|m| !m.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_with_interleaved_blobs_and_prefixes_reads_back() {
        let xml = br#"<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="http://x/" ContainerName="c">
  <Prefix>etl/</Prefix><Delimiter>/</Delimiter>
  <Blobs>
    <BlobPrefix><Name>etl//</Name></BlobPrefix>
    <Blob><Name>etl/a&#x9;b</Name><Properties><Last-Modified>Mon, 07 Dec 2026 10:00:00 GMT</Last-Modified><Etag>0x8D</Etag><Content-Length>7</Content-Length></Properties></Blob>
    <BlobPrefix><Name>etl/x/</Name></BlobPrefix>
    <Blob><Name>etl/zz</Name><Properties><Last-Modified>Mon, 07 Dec 2026 10:00:01 GMT</Last-Modified><Content-Length>2</Content-Length></Properties></Blob>
  </Blobs>
  <NextMarker>m2</NextMarker>
</EnumerationResults>"#;
        let p = parse(xml).unwrap();
        let names: Vec<&str> = p.blobs.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["etl/a\tb", "etl/zz"]);
        assert_eq!(p.blobs[0].size, 7);
        assert_eq!(p.blobs[0].e_tag.as_deref(), Some("0x8D"));
        assert_eq!(p.prefixes, ["etl//", "etl/x/"]);
        assert_eq!(p.next.as_deref(), Some("m2"));
    }
}
