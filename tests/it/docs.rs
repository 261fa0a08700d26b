//! The documentation keeps up with the command line: every flag `etlfs` accepts is described
//! in doc/CONFIGURATION.md.

use std::process::Command;

fn flags_of(args: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_etlfs"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut flags: Vec<String> = text
        .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.split('=').next().unwrap().to_string())
        .filter(|w| w != "--help" && w != "--version")
        .collect();
    flags.sort();
    flags.dedup();
    flags
}

#[test]
fn every_mount_flag_is_documented() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/doc/CONFIGURATION.md"))
        .unwrap();
    let flags = flags_of(&["mount"]);
    assert!(flags.len() >= 12, "expected the mount flags, got {flags:?}");
    let missing: Vec<&String> = flags
        .iter()
        .filter(|f| !doc.contains(&format!("`{f}")))
        .collect();
    assert!(
        missing.is_empty(),
        "flags missing from doc/CONFIGURATION.md: {missing:?}"
    );
}

/// The section of doc/CONFIGURATION.md whose `## Command line` heading names `etlfs CMD`.
fn command_section(doc: &str, cmd: &str) -> String {
    let name = format!("`etlfs {cmd}`");
    let start = doc
        .match_indices("\n## Command line")
        .map(|(i, _)| i + 1)
        .find(|&i| doc[i..].lines().next().unwrap().contains(&name))
        .unwrap_or_else(|| panic!("no `## Command line` section for {name}"));
    let end = doc[start + 3..]
        .find("\n## ")
        .map_or(doc.len(), |e| start + 3 + e);
    doc[start..end].to_string()
}

#[test]
fn every_oneshot_flag_is_documented_in_its_section() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/doc/CONFIGURATION.md"))
        .unwrap();
    for cmd in ["backup", "restore", "verify", "history"] {
        let section = command_section(&doc, cmd);
        let flags = flags_of(&[cmd]);
        assert!(
            flags.contains(&"--config".to_string()) && flags.contains(&"--prefix".to_string()),
            "expected the {cmd} flags, got {flags:?}"
        );
        let missing: Vec<&String> = flags
            .iter()
            .filter(|f| !section.contains(&format!("`{f}")))
            .collect();
        assert!(
            missing.is_empty(),
            "{cmd} flags missing from its section of doc/CONFIGURATION.md: {missing:?}"
        );
        assert!(
            section.contains(&format!("etlfs {cmd} ")),
            "the synopsis of {cmd} is missing"
        );
    }
    assert!(flags_of(&["restore"]).contains(&"--force".to_string()));
}

#[test]
fn completions_and_man_are_documented_with_their_flags() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/doc/CONFIGURATION.md"))
        .unwrap();
    for cmd in ["completions", "man"] {
        let section = command_section(&doc, cmd);
        assert!(
            section.contains(&format!("etlfs {cmd} ")),
            "the synopsis of {cmd} is missing"
        );
        // `--log-format` is every command's, described with `mount`.
        for flag in flags_of(&[cmd]).into_iter().filter(|f| f != "--log-format") {
            assert!(
                section.contains(&format!("`{flag}")) || section.contains(&format!(" {flag} ")),
                "{cmd}: {flag} missing from its section of doc/CONFIGURATION.md"
            );
        }
    }
}
