//! Escaping of outside text — bucket keys, paths, file names, what other crates' errors say —
//! before it reaches a log line, `/status` or an error message. The one helper for it:
//! [`esc`] for text etlfs holds, [`esc_display`] for anything that renders itself (an
//! `object_store` error quotes the raw key it refused).
//!
//! Why: a key or a file name is chosen by whoever writes the bucket or the directory. Raw, a
//! carriage return or a newline in it forges a whole log line (`...\r2026-... INFO etlfs::cli::mount:
//! mounted`), an ESC sequence reaches the operator's terminal. Escaped, every byte stays
//! visible and no line can be forged.
//!
//! The escapes, chosen so that an escaped text reads back unambiguously:
//! - `\\`, `\t`, `\n`, `\r` for backslash, tab, LF, CR;
//! - `\xNN` for the other C0 controls (ESC is `\x1b`), DEL, and each byte that is not UTF-8;
//! - `\u{NN}` for the C1 controls (U+0080–U+009F: U+009B is an 8-bit CSI, U+0085 a line
//!   break), the line and paragraph separators U+2028/U+2029, and the bidirectional controls
//!   (they reorder what a terminal shows, so a name could pass for another);
//! - everything else as it is, so an ordinary name, accented or not, reads as itself.
//!
//! Escape where the outside text enters a message, once: an error type escapes the paths and
//! keys it prints, so logging that error as `error = %e` needs nothing more (escaping it
//! again would double its backslashes).

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;

/// Outside text that is escaped when displayed; see the module documentation.
#[derive(Clone, PartialEq, Eq)]
pub struct Escaped<'a>(Cow<'a, [u8]>);

/// `text` (a `str`, `String`, `Path`, `PathBuf`, `OsStr`...), escaped when displayed.
pub fn esc<T: AsRef<OsStr> + ?Sized>(text: &T) -> Escaped<'_> {
    Escaped(Cow::Borrowed(text.as_ref().as_bytes()))
}

/// The text `value` renders (a foreign error, say), escaped when displayed.
pub fn esc_display(value: impl fmt::Display) -> Escaped<'static> {
    Escaped(Cow::Owned(value.to_string().into_bytes()))
}

/// An error and its causes (`anyhow::Error::chain()`), as `{:#}` shows them, but each cause
/// once and none raw. etlfs' errors show their cause in their own message, escaped, so a
/// cause whose text is already shown is left out (`{:#}` would repeat it, raw: `object_store`'s
/// error quotes a refused key); a cause that is not shown (an `io::Error` below an `anyhow`
/// context) is escaped, as another crate wrote it.
pub fn esc_chain<'a>(
    mut chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let Some(top) = chain.next() else {
        return String::new();
    };
    let mut out = top.to_string();
    for cause in chain {
        let raw = cause.to_string();
        let escaped = esc(&raw).to_string();
        if !out.contains(&raw) && !out.contains(&escaped) {
            out.push_str(": ");
            out.push_str(&escaped);
        }
    }
    out
}

/// Whether `c` is shown as an escape rather than as itself.
fn is_hostile(c: char) -> bool {
    c == '\\'
        // C0, DEL and C1.
        || c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}'
                | '\u{061c}'
                | '\u{200e}' | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

fn write_escape(f: &mut fmt::Formatter<'_>, c: char) -> fmt::Result {
    match c {
        '\\' => f.write_str("\\\\"),
        '\t' => f.write_str("\\t"),
        '\n' => f.write_str("\\n"),
        '\r' => f.write_str("\\r"),
        // Below 0x80 a `\xNN` names the byte itself; from 0x80 on it is kept for bytes that
        // are not UTF-8, so characters take `\u{..}`.
        c if c.is_ascii() => write!(f, "\\x{:02x}", c as u32),
        c => write!(f, "\\u{{{:x}}}", c as u32),
    }
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // std splits the bytes into runs of valid UTF-8, each followed by the invalid bytes.
        for chunk in self.0.utf8_chunks() {
            let text = chunk.valid();
            let mut clean = 0;
            for (i, c) in text.char_indices() {
                if is_hostile(c) {
                    f.write_str(&text[clean..i])?;
                    write_escape(f, c)?;
                    clean = i + c.len_utf8();
                }
            }
            f.write_str(&text[clean..])?;
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// The same as `Display`, so that `?field` in a log event is escaped alike.
impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn ordinary_names_read_as_themselves() {
        for s in [
            "plain",
            "with space %20 #frag ?q=1",
            "ünïcødé ✓ 日本",
            "e\u{301}",
            "\"quoted\" 'too'",
            "",
        ] {
            assert_eq!(esc(s).to_string(), s);
        }
    }

    #[test]
    fn controls_separators_and_backslash_are_escaped() {
        let cases = [
            ("a\rb", "a\\rb"),
            ("a\nb", "a\\nb"),
            ("a\tb", "a\\tb"),
            ("back\\slash", "back\\\\slash"),
            ("\x1b[31mred", "\\x1b[31mred"),
            ("nul\0", "nul\\x00"),
            ("del\x7f", "del\\x7f"),
            ("csi\u{9b}31m", "csi\\u{9b}31m"),
            ("nel\u{85}", "nel\\u{85}"),
            ("ls\u{2028}ps\u{2029}", "ls\\u{2028}ps\\u{2029}"),
            ("rlo\u{202e}gpj.exe", "rlo\\u{202e}gpj.exe"),
            ("\r\r", "\\r\\r"),
        ];
        for (raw, want) in cases {
            assert_eq!(esc(raw).to_string(), want, "{raw:?}");
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_are_shown_as_hex() {
        let p = Path::new(OsStr::from_bytes(b"a\xff\xc3(\xe9/\xc3\xa9"));
        assert_eq!(esc(p).to_string(), "a\\xff\\xc3(\\xe9/é");
        // A byte that is not UTF-8 and the C1 character of the same value read differently.
        assert_ne!(
            esc(OsStr::from_bytes(b"\x85")).to_string(),
            esc("\u{85}").to_string()
        );
    }

    #[test]
    fn no_escaped_text_holds_a_control_or_forges_a_line() {
        let every_byte: Vec<u8> = (0..=255u8).collect();
        let out = esc(OsStr::from_bytes(&every_byte)).to_string();
        assert!(!out.chars().any(char::is_control), "{out:?}");
        // Every char of U+0000..U+3000, in one text.
        let text: String = (0..0x3000u32).filter_map(char::from_u32).collect();
        let out = esc(&text).to_string();
        assert!(!out.chars().any(is_hostile_but_backslash), "{out:?}");
    }

    fn is_hostile_but_backslash(c: char) -> bool {
        c != '\\' && is_hostile(c)
    }

    #[derive(Debug, thiserror::Error)]
    enum Foreign {
        #[error("Error parsing Path \"{0}\"")]
        Parse(String),
    }

    #[derive(Debug, thiserror::Error)]
    enum Ours {
        #[error("list {}: {}", esc(.key), esc_display(.source))]
        Store { key: String, source: Foreign },
        #[error("opening {}", esc(.0))]
        Context(String, #[source] std::io::Error),
    }

    #[test]
    fn an_error_chain_shows_each_cause_once_and_escaped() {
        let e = Ours::Store {
            key: "a\rb".into(),
            source: Foreign::Parse("a\rb/c\r".into()),
        };
        let chain = std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        });
        assert_eq!(
            esc_chain(chain),
            "list a\\rb: Error parsing Path \"a\\rb/c\\r\""
        );
        let e = Ours::Context("x\ty".into(), std::io::Error::other("bad\nthing"));
        let chain = std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        });
        assert_eq!(esc_chain(chain), "opening x\\ty: bad\\nthing");
    }

    #[test]
    fn displayed_values_and_debug_are_escaped_alike() {
        let err = std::io::Error::other("Error parsing Path \"a\rb\"");
        assert_eq!(
            esc_display(&err).to_string(),
            "Error parsing Path \"a\\rb\""
        );
        assert_eq!(format!("{:?}", esc("a\nb")), "a\\nb");
    }
}
