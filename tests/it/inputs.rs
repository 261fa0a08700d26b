//! Hostile inputs, generated (proptest): the key ↔ path mapping and the object-store.yaml
//! parser. Properties, over thousands of cases per run (`PROPTEST_CASES` raises it):
//! - every path `key` accepts comes back unchanged from `rel_of` as a file (never as a
//!   directory marker, never as another path), and lies under the prefix; `key` refuses only
//!   what no key can hold (non-UTF-8, ASCII control characters, `.`/`..`, over 1024 bytes) and
//!   etlfs' reserved names;
//! - `rel_of` of any key at all never yields a path that could leave the served directory
//!   (absolute, `..`, `.`, empty segments), never a reserved one, and never panics;
//! - the parser never panics on any text, and its errors never contain the value of a secret
//!   field, whatever else is broken around it.
//!
//! Shrunk failures found here are pinned as plain tests at the end.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use etlfs::store::bucket::{Bucket, DIR_MARKER, RESERVED};
use object_store::memory::InMemory;
use object_store::path::Path as Key;
use proptest::prelude::*;

fn bucket(prefix: &str) -> Bucket {
    Bucket::new(Arc::new(InMemory::new()), prefix, true, Vec::new())
}

/// One path segment: ordinary names, and the awkward ones — dots, the reserved names, the
/// marker name, percent signs, spaces, newlines, control characters, non-ASCII, long names.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9_.-]{1,12}",
        1 => Just(".".to_owned()),
        1 => Just("..".to_owned()),
        1 => Just(RESERVED.to_owned()),
        1 => Just(DIR_MARKER.to_owned()),
        1 => Just(format!("x{DIR_MARKER}")),
        1 => "[%#?* \\\\]{1,4}",
        1 => "[a-z]{0,3}[\n\r\t\u{7f}][a-z]{0,3}",
        1 => "\\PC{1,8}",
        1 => "[a-z]{200,300}",
    ]
}

fn rel_path() -> impl Strategy<Value = PathBuf> {
    prop::collection::vec(segment(), 1..6).prop_map(|segs| segs.iter().collect())
}

fn prefix() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("etl".to_owned()),
        Just("/a//b/".to_owned()),
        "[a-z]{1,5}(/[a-z]{1,5}){0,2}",
    ]
}

/// Whether a relative path could leave or misname something in the served directory.
fn is_safe(rel: &Path) -> bool {
    !rel.as_os_str().is_empty()
        && rel.components().all(|c| matches!(c, Component::Normal(_)))
        && !rel.as_os_str().as_encoded_bytes().contains(&b'\0')
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4_000, ..ProptestConfig::default() })]

    #[test]
    fn accepted_paths_round_trip(prefix in prefix(), rel in rel_path()) {
        let b = bucket(&prefix);
        if let Ok(key) = b.key(&rel) {
            prop_assert!(key.as_ref().len() <= 1024);
            let norm = prefix.split('/').filter(|s| !s.is_empty()).collect::<Vec<_>>().join("/");
            if !norm.is_empty() {
                prop_assert!(key.as_ref().starts_with(&format!("{norm}/")), "{key} outside {norm}");
            }
            prop_assert_eq!(b.rel_of(&key), Some((rel.clone(), false)), "key {}", key);
        }
    }

    #[test]
    fn refused_paths_are_the_unsafe_ones(rel in rel_path()) {
        let b = bucket("");
        let bad_segment = rel.components().any(|c| match c {
            // object_store keys cannot hold ASCII control characters (newlines included):
            // such names stay local and are reported, see doc/SEMANTICS.md.
            Component::Normal(s) => s.to_str().is_none_or(|s| s.chars().any(|c| c.is_ascii_control())),
            _ => true,
        });
        let reserved = rel.components().next()
            == Some(Component::Normal(std::ffi::OsStr::new(RESERVED)));
        let marker = rel.file_name() == Some(std::ffi::OsStr::new(DIR_MARKER));
        let long = rel.as_os_str().len() > 1024;
        if !(bad_segment || reserved || marker || long) {
            prop_assert!(b.key(&rel).is_ok(), "{rel:?} refused: {:?}", b.key(&rel));
        }
    }

    #[test]
    fn any_key_maps_to_a_safe_path_or_none(prefix in prefix(), raw in "\\PC{0,60}") {
        let b = bucket(&prefix);
        let key = Key::from(raw.as_str());
        if let Some((rel, _dir)) = b.rel_of(&key) {
            prop_assert!(is_safe(&rel), "{key} -> {rel:?}");
            prop_assert!(rel.components().next()
                != Some(Component::Normal(std::ffi::OsStr::new(RESERVED))), "{key} -> {rel:?}");
        }
        // Keys as listed (already percent-encoded parts) too.
        if let Ok(key) = Key::parse(&raw) {
            if let Some((rel, _)) = b.rel_of(&key) {
                prop_assert!(is_safe(&rel), "{key} -> {rel:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// object-store.yaml

const SECRET: &str = "s3cr3tV4lue-zz91";

/// Fragments of configs: right and wrong keys, values of every type, the secret in every
/// secret field and in wrong places of wrong type, YAML syntax debris.
fn line() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("type"),
        Just("config"),
        Just("prefix"),
        Just("bucket"),
        Just("endpoint"),
        Just("region"),
        Just("access_key"),
        Just("secret_key"),
        Just("session_token"),
        Just("insecure"),
        Just("storage_account"),
        Just("storage_account_key"),
        Just("storage_connection_string"),
        Just("container"),
        Just("service_account"),
        Just("sse_config"),
        Just("http_config"),
        Just("put_user_metadata"),
        Just("directory"),
        Just("bucket_lookup_type"),
        Just("max_retries"),
        Just("part_size"),
        Just("secrt_key"),
    ];
    let value = prop_oneof![
        Just(SECRET.to_owned()),
        Just(format!("\"{SECRET}\"")),
        Just(format!("[{SECRET}]")),
        Just(format!("{{ k: {SECRET} }}")),
        Just(format!("\"{SECRET}")),
        Just("S3".to_owned()),
        Just("GCS".to_owned()),
        Just("AZURE".to_owned()),
        Just("FILESYSTEM".to_owned()),
        Just("true".to_owned()),
        Just("12".to_owned()),
        Just("-1".to_owned()),
        Just("~".to_owned()),
        Just("".to_owned()),
        Just("127.0.0.1:9000".to_owned()),
        Just("http://".to_owned()),
        "\\PC{0,12}",
    ];
    let indent = prop_oneof![Just(""), Just("  "), Just("    "), Just("\t"), Just(" - ")];
    (indent, key, value).prop_map(|(i, k, v)| format!("{i}{k}: {v}"))
}

fn config_text() -> impl Strategy<Value = String> {
    prop::collection::vec(line(), 0..12).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn parser_never_panics_and_never_echoes_secrets(text in config_text()) {
        match etlfs::store::config::parse(&text, "fuzz.yaml") {
            Ok(_) => {}
            Err(e) => {
                let msg = format!("{e} / {e:?}");
                // Only a secret field's value is a secret: the same text under a plain key
                // (`bucket: s3cr3t...`) may be quoted back, as a bucket name would be.
                let only_in_secret_fields = text.lines().all(|l| {
                    !l.contains(SECRET)
                        || ["secret_key", "session_token", "storage_account_key",
                            "storage_connection_string", "service_account", "access_key"]
                            .iter()
                            .any(|k| l.trim_start_matches([' ', '\t', '-']).starts_with(k))
                });
                if only_in_secret_fields {
                    prop_assert!(!msg.contains(SECRET), "secret echoed: {msg}\n--- config:\n{text}");
                }
            }
        }
    }

    #[test]
    fn parser_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        let _ = etlfs::store::config::parse(&text, "fuzz.yaml");
    }
}

// ---------------------------------------------------------------------------------------------
// Shrunk failures, pinned

/// Found by `accepted_paths_round_trip`: a file named `.etlfs-dir` got a key that reads back
/// as the marker of its directory (so it was never restored as a file). Now refused.
#[test]
fn a_file_named_like_a_directory_marker_is_refused() {
    let b = bucket("");
    assert!(b.key(Path::new(DIR_MARKER)).is_err());
    assert!(b.key(&Path::new("a").join(DIR_MARKER)).is_err());
    // as a directory name it is harmless: its files and its own marker round trip
    let rel = Path::new("a").join(DIR_MARKER).join("f");
    let key = b.key(&rel).unwrap();
    assert_eq!(b.rel_of(&key), Some((rel, false)));
}

/// Found by `refused_paths_are_the_unsafe_ones`: object_store refuses ASCII control
/// characters in keys (DEL here); the refusal names the path, escaped.
#[test]
fn control_characters_are_refused_with_the_path_named() {
    let e = bucket("")
        .key(Path::new("a\u{7f}b"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("a\\x7fb") && !e.contains('\u{7f}'), "{e}");
}
