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
