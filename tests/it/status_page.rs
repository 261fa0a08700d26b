//! The HTML status page at `/`, looked at in a real headless browser (Debian's chromium): it
//! shows the state, the bucket, the backlog, uploads, the restore and the recent warnings; it
//! loads nothing and runs nothing; and a hostile file name that reaches it (through a warning
//! that quotes the path) is shown as text, never as markup.

use std::fs::{self, File};

use crate::common::{self, Opts, bucket, tools};
use bucket::{kubecost_write, poll, target};

/// File names that are markup if a page forgets to escape them (a file name cannot hold `/`,
/// so no closing tag: an unescaped `<script>` would swallow the rest of the page instead).
const HOSTILE: [&str; 2] = [
    "<img src=x onerror=document.title='pwned'>",
    "<script>alert(1)",
];

/// The page, rendered by chromium: the DOM after load, serialized.
fn rendered_dom(port: u16) -> String {
    let ran = tools::chromium_on(
        &format!("http://127.0.0.1:{port}/"),
        &["--dump-dom".to_owned()],
        120,
    );
    ran.assert_ok("chromium --dump-dom");
    assert!(ran.stdout.contains("</html>"), "no page:\n{}", ran.stderr);
    ran.stdout
}

/// The text of the element with `id` in a serialized DOM, tags stripped (enough for the flat
/// elements the page gives an id).
fn text_of(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in\n{dom}"));
    let rest = &dom[start..];
    let body = &rest[rest.find('>').unwrap() + 1..];
    body[..body.find('<').unwrap()].trim().to_owned()
}

/// Writes each hostile name, lets it be uploaded, then empties it: etlfs keeps the previous
/// version and warns with the path, so the name reaches `/status`'s recent events and the
/// page. The page, rendered, shows the names as text and contains no markup of theirs.
#[test]
fn the_page_shows_the_status_and_hostile_names_as_text() {
    let t = target("filesystem");
    let port = common::free_port();
    let (m, _cfg) = bucket::mount_on(
        &t,
        "100ms",
        Opts::default()
            .listen(port)
            .args(["--max-local-bytes", "64MiB"]),
    );
    for name in HOSTILE {
        kubecost_write(&m.path(name), b"precious bytes").unwrap();
    }
    let uploads = || common::status(port)["uploads"]["done"].as_u64().unwrap();
    assert!(poll(30, || uploads() >= 2), "no uploads:\n{}", m.log());
    for name in HOSTILE {
        File::options()
            .write(true)
            .open(m.path(name))
            .unwrap()
            .set_len(0)
            .unwrap();
    }
    let warned = |name: &str| {
        common::status(port)["recent_events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains(name))
    };
    assert!(
        poll(30, || HOSTILE.iter().all(|n| warned(n))),
        "no warnings naming the files: {}\n{}",
        common::status(port),
        m.log()
    );

    // The answer itself: HTML, with a policy that forbids scripts and loads.
    let r = common::http_get_accept(port, "/", "text/html").unwrap();
    assert_eq!(r.code, 200);
    assert!(
        r.head.contains("content-type: text/html; charset=utf-8"),
        "{}",
        r.head
    );
    assert!(
        r.head
            .contains("content-security-policy: default-src 'none'"),
        "{}",
        r.head
    );
    assert!(
        r.body.contains("<meta http-equiv=\"refresh\""),
        "{}",
        r.body
    );

    let dom = rendered_dom(port);
    assert_eq!(text_of(&dom, "state"), "ready");
    assert!(
        dom.contains("<title>etlfs: ready"),
        "the title is the page's own: {dom}"
    );
    for section in ["bucket", "backlog", "uploads", "restore", "local", "events"] {
        assert!(
            dom.contains(&format!("id=\"{section}\"")),
            "#{section} missing: {dom}"
        );
    }
    for shown in [
        "Backlog",
        "nothing pending",
        "Restore",
        "Recent warnings and errors",
        "64.00 MiB (--max-local-bytes)",
        "a file was replaced by an empty one",
    ] {
        assert!(dom.contains(shown), "{shown:?} not on the page: {dom}");
    }
    // The page's own mount point, escaped or not, is there.
    let mnt = m.path("");
    let mnt = mnt.to_str().unwrap().trim_end_matches('/');
    assert_eq!(text_of(&dom, "mountpoint"), mnt);
    // The names are text: escaped in the serialized DOM, never elements.
    assert!(
        dom.contains("&lt;img src=x onerror=document.title='pwned'&gt;"),
        "{dom}"
    );
    assert!(dom.contains("&lt;script&gt;alert(1)"), "{dom}");
    assert!(
        !dom.contains("<img") && !dom.contains("<script"),
        "markup got in: {dom}"
    );

    // A picture of it, as a person sees it.
    let shot = tempfile::tempdir().unwrap();
    let png = shot.path().join("status.png");
    tools::chromium_on(
        &format!("http://127.0.0.1:{port}/"),
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,1000".to_owned(),
            "--hide-scrollbars".to_owned(),
        ],
        120,
    )
    .assert_ok("chromium --screenshot");
    let bytes = fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        bytes.len() > 20_000,
        "an empty picture? {} bytes",
        bytes.len()
    );
}

/// doc/METRICS.md shows the page with a picture that is there.
#[test]
fn the_metrics_doc_shows_a_picture_of_the_page() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let doc = fs::read_to_string(root.join("doc/METRICS.md")).unwrap();
    assert!(
        doc.contains("](status-page.png)"),
        "no picture in doc/METRICS.md"
    );
    let png = fs::read(root.join("doc/status-page.png")).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "doc/status-page.png is not a PNG"
    );
}
