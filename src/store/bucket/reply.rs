//! What a failed request tells: one line that says each cause once, with the server's error
//! body boiled down to its code and message, and whether the failure is about the bucket as a
//! whole — it does not exist, or it refuses our credentials — rather than about one object or a
//! network outage.
//!
//! Why here: `object_store` renders an error as a chain in which each layer quotes the one
//! below (`Generic S3 error: Error performing GET … - HTTP error: error sending request`), stops
//! short of the root cause (reqwest does not show its own source: `Connection refused` is two
//! layers further down), and pastes the server's whole XML body, newlines and request ids
//! included. A log line, `/status` and an exit message want none of that repeated and all of
//! the cause: so the chain is walked once here, each message kept only if it adds something,
//! and the body replaced by `HTTP 404 Not Found: NoSuchBucket: The specified bucket does not
//! exist`.
//!
//! `object_store` keeps the HTTP status and body in a type it does not export, so they are read
//! from its message (`Server returned non-2xx status code: <status>: <body>`), a format pinned
//! by the version in Cargo.lock and checked against the real servers by the integration tests.

use std::error::Error;

/// How `object_store` 0.14 introduces an error status and the body the server sent.
const STATUS_MARK: &str = "Server returned non-2xx status code: ";
/// How it introduces an error body sent with a 200 (S3's `InternalError` on a copy).
const BODY_MARK: &str = "Server returned error response: ";
/// The longest server message quoted.
const MESSAGE_MAX: usize = 200;

/// An error status and body in the words `object_store` uses, for requests etlfs sends itself
/// (Azure's raw listing, the container's creation): [`describe`] and [`refusal`] then read them
/// as they read `object_store`'s own.
pub fn status_text(status: http::StatusCode, body: &[u8]) -> String {
    format!("{STATUS_MARK}{status}: {}", String::from_utf8_lossy(body))
}

/// What a failure says about the bucket as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The bucket (Azure: the container) does not exist: a configuration error.
    NoBucket,
    /// The bucket refuses our credentials or our permissions (HTTP 401/403, a signature that
    /// does not match, an unknown or expired key).
    Denied,
}

/// Error codes (S3, GCS's XML API, Azure) that mean the bucket or container does not exist.
const NO_BUCKET: &[&str] = &["NoSuchBucket", "ContainerNotFound"];

/// Error codes that mean the credentials or permissions were refused. Most come with 403 (and
/// are caught by the status as well); S3's token errors come with 400.
const DENIED: &[&str] = &[
    // S3 (and GCS's XML API).
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AccountProblem",
    // Azure.
    "AuthenticationFailed",
    "AuthorizationFailure",
    "AuthorizationPermissionMismatch",
    "AuthorizationResourceTypeMismatch",
    "AuthorizationProtocolMismatch",
    "AuthorizationSourceIPMismatch",
    "InsufficientAccountPermissions",
    "AccountIsDisabled",
    "InvalidAuthenticationInfo",
    "NoAuthenticationInformation",
];

/// The server's answer to a failed request, as far as its message shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Reply {
    /// `403 Forbidden`; empty for an error body sent with a 200.
    status: String,
    /// `<Code>` of the XML error body.
    code: Option<String>,
    /// `<Message>` of the XML error body (its first line), or the body itself when it is not
    /// such a document; shortened.
    message: Option<String>,
}

impl Reply {
    /// `HTTP 404 Not Found: NoSuchBucket: The specified bucket does not exist`.
    fn summary(&self) -> String {
        let mut out = if self.status.is_empty() {
            "error response".to_owned()
        } else {
            format!("HTTP {}", self.status)
        };
        for part in [&self.code, &self.message].into_iter().flatten() {
            out.push_str(": ");
            out.push_str(part);
        }
        out
    }
}

/// `e` and its causes in one line, each cause once, the server's body boiled down (see the
/// module documentation). Not escaped: the caller escapes, once.
pub fn describe(e: &(dyn Error + 'static)) -> String {
    let (text, reply) = chain(e);
    match reply {
        Some((at, reply)) => format!("{}{}", &text[..at], reply.summary()),
        None => text,
    }
}

/// The server's answer in `e`, boiled down (`HTTP 404 Not Found: NoSuchBucket: The specified
/// bucket does not exist`), if the server answered.
pub fn server_reply(e: &(dyn Error + 'static)) -> Option<String> {
    chain(e).1.map(|(_, r)| r.summary())
}

/// What `e` says about the bucket as a whole, if anything.
pub fn refusal(e: &object_store::Error) -> Option<Refusal> {
    let code = chain(e).1.and_then(|(_, r)| r.code);
    if let Some(code) = code.as_deref() {
        if NO_BUCKET.contains(&code) {
            return Some(Refusal::NoBucket);
        }
        if DENIED.contains(&code) {
            return Some(Refusal::Denied);
        }
    }
    match e {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => Some(Refusal::Denied),
        _ => None,
    }
}

/// The chain's text with each cause once, and where in it the server's reply starts (with
/// the reply parsed).
fn chain(e: &(dyn Error + 'static)) -> (String, Option<(usize, Reply)>) {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        let said = cause.to_string();
        if !said.is_empty() && !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cur = cause.source();
    }
    let reply = reply_in(&text);
    (text, reply)
}

/// The server's reply in an error text: where it starts, and what it says.
fn reply_in(text: &str) -> Option<(usize, Reply)> {
    if let Some(at) = text.find(STATUS_MARK) {
        let rest = &text[at + STATUS_MARK.len()..];
        let (status, body) = rest.split_once(": ").unwrap_or((rest, ""));
        return Some((at, parse_body(status.trim(), body)));
    }
    let at = text.find(BODY_MARK)?;
    Some((at, parse_body("", &text[at + BODY_MARK.len()..])))
}

/// The XML error document of S3, GCS and Azure: `<Error><Code>…</Code><Message>…</Message>…`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorDoc {
    code: Option<String>,
    message: Option<String>,
}

fn parse_body(status: &str, body: &str) -> Reply {
    let body = body.trim();
    let doc = quick_xml::de::from_str::<ErrorDoc>(body).ok();
    let (code, message) = match doc {
        // Azure puts `RequestId:…` and `Time:…` on lines of their own after the message: the
        // first line is the message.
        Some(d) if d.code.is_some() || d.message.is_some() => (
            d.code,
            d.message
                .map(|m| m.trim().lines().next().unwrap_or_default().to_owned()),
        ),
        // Not an error document (an HTML page from a proxy, plain text): the body itself.
        _ => (None, Some(body.to_owned())),
    };
    Reply {
        status: status.to_owned(),
        code: code.map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()),
        message: message.map(|m| short(&m)).filter(|m| !m.is_empty()),
    }
}

/// Whitespace runs (newlines included) become one space; at most [`MESSAGE_MAX`] characters.
fn short(message: &str) -> String {
    let words: Vec<&str> = message.split_whitespace().collect();
    let one = words.join(" ");
    match one.char_indices().nth(MESSAGE_MAX) {
        Some((cut, _)) => format!("{}…", &one[..cut]),
        None => one,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose message quotes its source, as object_store's layers do.
    #[derive(Debug)]
    struct Layer(String, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn Error + 'static))
        }
    }

    fn layers(texts: &[&str]) -> Layer {
        texts
            .iter()
            .rev()
            .fold(None, |below, t| {
                Some(Box::new(Layer((*t).to_owned(), below)))
            })
            .map(|b| *b)
            .unwrap()
    }

    #[test]
    fn each_cause_is_said_once_down_to_the_root() {
        let e = layers(&[
            "Generic S3 error: Error performing GET http://h/b/k in 1ms - HTTP error: error \
             sending request",
            "Error performing GET http://h/b/k in 1ms - HTTP error: error sending request",
            "HTTP error: error sending request",
            "error sending request",
            "client error (Connect)",
            "tcp connect error: Connection refused (os error 111)",
            "Connection refused (os error 111)",
        ]);
        let text = describe(&e);
        assert_eq!(text.matches("Connection refused").count(), 1, "{text}");
        assert_eq!(text.matches("error sending request").count(), 1, "{text}");
        assert!(
            text.ends_with(
                "client error (Connect): tcp connect error: Connection refused (os error 111)"
            ),
            "{text}"
        );
    }

    #[test]
    fn an_xml_error_body_becomes_its_code_and_message() {
        let s3 = layers(&[
            "Error performing GET http://h/nob?list-type=2 in 8ms - Server returned non-2xx \
             status code: 404 Not Found: <?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Error>\
             <Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message>\
             <BucketName>nob</BucketName><RequestId>X</RequestId></Error>",
        ]);
        assert_eq!(
            describe(&s3),
            "Error performing GET http://h/nob?list-type=2 in 8ms - HTTP 404 Not Found: \
             NoSuchBucket: The specified bucket does not exist"
        );
        let azure = layers(&[
            "Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\" \
             encoding=\"UTF-8\" standalone=\"yes\"?>\n<Error>\n  <Code>AuthorizationFailure\
             </Code>\n  <Message>Server failed to authenticate the request &amp; more.\n\
             RequestId:79e4\nTime:2026-12-07T15:52:27.080Z</Message>\n</Error>",
        ]);
        assert_eq!(
            describe(&azure),
            "HTTP 403 Forbidden: AuthorizationFailure: Server failed to authenticate the \
             request & more."
        );
        let html = layers(&[&format!(
            "Server returned non-2xx status code: 502 Bad Gateway: <html>\n<body>{}</body></html>",
            "x".repeat(500)
        )]);
        let text = describe(&html);
        assert!(
            text.starts_with("HTTP 502 Bad Gateway: <html> <body>x"),
            "{text}"
        );
        assert!(text.chars().count() < 250, "{text}");
        let empty = layers(&["Server returned non-2xx status code: 404 Not Found: "]);
        assert_eq!(describe(&empty), "HTTP 404 Not Found");
    }

    #[test]
    fn missing_buckets_and_denials_are_told_apart() {
        let generic = |text: &str| object_store::Error::Generic {
            store: "S3",
            source: Box::new(layers(&[text])),
        };
        let body = |status: &str, code: &str| {
            format!(
                "Server returned non-2xx status code: {status}: <Error><Code>{code}</Code>\
                 <Message>m</Message></Error>"
            )
        };
        for (status, code, want) in [
            ("404 Not Found", "NoSuchBucket", Some(Refusal::NoBucket)),
            (
                "404 Not Found",
                "ContainerNotFound",
                Some(Refusal::NoBucket),
            ),
            ("404 Not Found", "NoSuchKey", None),
            (
                "403 Forbidden",
                "SignatureDoesNotMatch",
                Some(Refusal::Denied),
            ),
            ("400 Bad Request", "ExpiredToken", Some(Refusal::Denied)),
            (
                "403 Forbidden",
                "AuthorizationPermissionMismatch",
                Some(Refusal::Denied),
            ),
            ("503 Service Unavailable", "SlowDown", None),
        ] {
            assert_eq!(refusal(&generic(&body(status, code))), want, "{code}");
        }
        let denied = object_store::Error::PermissionDenied {
            path: "k".into(),
            source: Box::new(layers(&[
                "Server returned non-2xx status code: 403 Forbidden: ",
            ])),
        };
        assert_eq!(refusal(&denied), Some(Refusal::Denied));
        assert_eq!(refusal(&generic("HTTP error: error sending request")), None);
    }
}
