//! The mount helper: what lets `mount -t fuse.etlfs SRC MNT -o OPTS`, and a line of type
//! `fuse.etlfs` in `/etc/fstab` (systemd's mount units run the same `mount(8)`), mount etlfs.
//!
//! For a type `fuse.etlfs`, `mount(8)` runs `/sbin/mount.fuse.etlfs SRC MNT [-sfnv] [-o OPTS]`
//! (only from /sbin, never from `$PATH`); that name is a link to the etlfs binary, which sees it
//! in `argv[0]` and turns the helper's arguments into the `etlfs mount` command line they mean:
//!
//! - SRC is the bucket's object-store.yaml (`--config`), and the source the mount table shows
//!   (`--fsname`), so that `mount -a` finds an fstab line already mounted;
//! - each `-o` word that is a mount option ([`MountOptions`]) stays one; every other word
//!   `name[=value]` is the `etlfs mount` flag `--name[=value]` (`_` or `-` alike):
//!   `prefix=etl,upload_delay=2s,no_prefetch`. Anything else is refused, naming the word (`-s`,
//!   sloppy, ignores it instead, as `mount(8)` documents);
//! - `--background`: `mount(8)` waits for its helper, so the command returns once the mount is
//!   ready and etlfs goes on serving it ([`crate::cli::mount`]);
//! - `-f` (fake) checks the whole command line and mounts nothing; `-n` and `-v` change
//!   nothing; `-N` (another mount namespace) is refused.
//!
//! Without the link, `mount(8)` falls back to fuse3's `mount.fuse`, which runs `etlfs SRC MNT -o
//! OPTS` and adds `suid,dev` to the options on its own; that form is refused with the way to
//! install the helper, rather than mounting with privileges nobody asked for.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::Parser;

use crate::escape::esc;
use crate::fs::mountopts::{MountOptions, UnknownOption};

/// The name `mount(8)` runs the helper by for the type `fuse.etlfs`.
pub const HELPER_NAME: &str = "mount.fuse.etlfs";

/// `etlfs mount` flags an `-o` word may not name: the source gives the config, the helper
/// always runs in the background, and `-o` is `-o`.
const NOT_FROM_OPTIONS: &[&str] = &["config", "background", "options", "help", "version"];

/// The helper's own arguments, as `mount(8)` passes them (see its EXTERNAL HELPERS section).
#[derive(Debug, Parser)]
#[command(
    name = HELPER_NAME,
    about = "The mount(8) helper of etlfs: mount -t fuse.etlfs OBJECT-STORE.YAML MOUNTPOINT -o OPTS",
    disable_version_flag = true
)]
struct HelperArgs {
    /// The bucket's object-store.yaml.
    source: PathBuf,
    /// The directory to mount over.
    mountpoint: PathBuf,
    /// Mount options and `etlfs mount` flags (`name=value`), comma-separated.
    #[arg(short = 'o', value_name = "OPTS")]
    options: Vec<String>,
    /// Sloppy: ignore what is not understood.
    #[arg(short = 's')]
    sloppy: bool,
    /// Fake: check everything, mount nothing.
    #[arg(short = 'f')]
    fake: bool,
    /// No mtab to write (there is none to write anyway).
    #[arg(short = 'n')]
    no_mtab: bool,
    /// Verbose (the log says what happens anyway).
    #[arg(short = 'v')]
    verbose: bool,
    /// Mount in another mount namespace: not supported.
    #[arg(short = 'N', value_name = "NS")]
    namespace: Option<String>,
    /// The type (`fuse.etlfs`), passed when run through the generic `mount.fuse`.
    #[arg(short = 't', value_name = "TYPE")]
    fstype: Option<String>,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    /// Run this `etlfs` command line (the one given, or the helper's translation).
    Run(Vec<OsString>),
    /// `-f`: everything checked, nothing to do.
    Fake,
}

/// A helper command line that cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The helper's own arguments are wrong (clap prints these itself).
    #[error(transparent)]
    Args(clap::Error),
    #[error(transparent)]
    Unknown(#[from] UnknownOption),
    #[error("mount option `{}`: `--{}` needs a value ({}=VALUE)", esc(.0), esc(&.0.replace('_', "-")), esc(.0))]
    NeedsValue(String),
    #[error("mount option `{}`: `--{}` takes no value", esc(.0), esc(.1))]
    TakesNoValue(String, String),
    #[error("mount option `{}`: the object-store.yaml is the mount's source (the first field of an fstab line)", esc(.0))]
    ConfigIsSource(String),
    #[error("mount option `{}`: not settable from mount options", esc(.0))]
    NotAnOption(String),
    #[error("{}: the source must be a UTF-8 path to the object-store.yaml", esc(.0))]
    SourceNotUtf8(PathBuf),
    #[error("-N {}: etlfs cannot mount in another mount namespace", esc(.0))]
    Namespace(String),
    #[error(
        "`etlfs {} ...` is how fuse3's mount.fuse runs a filesystem of type fuse.etlfs, adding suid and dev; \
         etlfs has a mount helper of its own: install it with `ln -s {} /sbin/{HELPER_NAME}` \
         (see doc/CONFIGURATION.md, \"mount(8) and /etc/fstab\")",
        esc(.src),
        esc(.exe)
    )]
    ThroughFuse3 { src: PathBuf, exe: PathBuf },
}

/// The command line to run for `argv`: as given, unless the program was called by the helper's
/// name (then translated, see the module doc). `cli` is the `etlfs` command, whose `mount`
/// flags the `-o` words may name.
pub fn invocation(argv: Vec<OsString>, cli: &clap::Command) -> Result<Invocation, HelperError> {
    let called = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == HELPER_NAME);
    if !called {
        // fuse3's mount.fuse runs `etlfs /etc/fstab/source /mountpoint -o ...`.
        if let Some(first) = argv.get(1).filter(|a| a.to_string_lossy().starts_with('/')) {
            if cli.find_subcommand(first).is_none() && argv.len() > 2 {
                return Err(HelperError::ThroughFuse3 {
                    src: first.into(),
                    exe: std::env::current_exe().unwrap_or_else(|_| "etlfs".into()),
                });
            }
        }
        return Ok(Invocation::Run(argv));
    }
    let args = HelperArgs::try_parse_from(argv).map_err(HelperError::Args)?;
    let argv = translate(&args, cli)?;
    if args.fake {
        // Everything `etlfs mount` checks before it touches anything.
        let matches = cli
            .clone()
            .try_get_matches_from(&argv)
            .map_err(HelperError::Args)?;
        let words: Vec<String> = matches
            .subcommand_matches("mount")
            .and_then(|m| m.get_many::<String>("options"))
            .map(|w| w.cloned().collect())
            .unwrap_or_default();
        MountOptions::parse(&words)?;
        return Ok(Invocation::Fake);
    }
    Ok(Invocation::Run(argv))
}

/// `etlfs mount --background --config SRC --fsname SRC [FLAGS] [-o MOUNT-OPTIONS] -- MNT`.
fn translate(args: &HelperArgs, cli: &clap::Command) -> Result<Vec<OsString>, HelperError> {
    if let Some(ns) = &args.namespace {
        return Err(HelperError::Namespace(ns.clone()));
    }
    let source = args
        .source
        .to_str()
        .ok_or_else(|| HelperError::SourceNotUtf8(args.source.clone()))?;
    let mount = cli
        .find_subcommand("mount")
        .expect("etlfs has a mount command");
    let mut flags: Vec<OsString> = Vec::new();
    let mut mount_words = Vec::new();
    let mut fsname = false;
    for word in args.options.iter().flat_map(|o| o.split(',')) {
        let word = word.trim();
        if word.is_empty() {
            continue;
        }
        if MountOptions::parse(&[word]).is_ok() {
            mount_words.push(word);
            continue;
        }
        let (name, value) = match word.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (word, None),
        };
        let long = name.replace('_', "-");
        if long == "config" {
            return Err(HelperError::ConfigIsSource(word.into()));
        }
        // The flags of `etlfs mount`, and the global ones (`--log-format`).
        let arg = mount
            .get_arguments()
            .chain(cli.get_arguments())
            .find(|a| a.get_long() == Some(long.as_str()));
        let Some(arg) = arg else {
            if args.sloppy {
                continue;
            }
            return Err(UnknownOption(word.into()).into());
        };
        if NOT_FROM_OPTIONS.contains(&long.as_str()) {
            return Err(HelperError::NotAnOption(word.into()));
        }
        fsname |= long == "fsname";
        match (arg.get_action().takes_values(), value) {
            (true, Some(v)) => flags.push(format!("--{long}={v}").into()),
            (true, None) => return Err(HelperError::NeedsValue(name.into())),
            (false, None) => flags.push(format!("--{long}").into()),
            (false, Some(_)) => return Err(HelperError::TakesNoValue(word.into(), long)),
        }
    }
    let mut argv: Vec<OsString> = vec![
        "etlfs".into(),
        "mount".into(),
        "--background".into(),
        format!("--config={source}").into(),
    ];
    if !fsname {
        argv.push(format!("--fsname={source}").into());
    }
    argv.extend(flags);
    if !mount_words.is_empty() {
        argv.push(format!("--options={}", mount_words.join(",")).into());
    }
    argv.push("--".into());
    argv.push(args.mountpoint.clone().into());
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the `etlfs` command: `mount` with a value flag, a boolean flag, the
    /// flags the helper sets itself, and a global flag.
    fn cli() -> clap::Command {
        let mount = clap::Command::new("mount")
            .arg(clap::Arg::new("config").long("config"))
            .arg(clap::Arg::new("fsname").long("fsname"))
            .arg(
                clap::Arg::new("background")
                    .long("background")
                    .action(clap::ArgAction::SetTrue),
            )
            .arg(clap::Arg::new("upload_delay").long("upload-delay"))
            .arg(
                clap::Arg::new("no_prefetch")
                    .long("no-prefetch")
                    .action(clap::ArgAction::SetTrue),
            )
            .arg(
                clap::Arg::new("options")
                    .short('o')
                    .long("options")
                    .action(clap::ArgAction::Append),
            )
            .arg(clap::Arg::new("mountpoint").required(true));
        clap::Command::new("etlfs")
            .arg(clap::Arg::new("log_format").long("log-format").global(true))
            .subcommand(mount)
    }

    fn run(args: &[&str]) -> Result<Invocation, HelperError> {
        let mut argv = vec![OsString::from("/sbin/mount.fuse.etlfs")];
        argv.extend(args.iter().map(OsString::from));
        invocation(argv, &cli())
    }

    fn argv(inv: Invocation) -> Vec<String> {
        match inv {
            Invocation::Run(a) => a.into_iter().map(|a| a.into_string().unwrap()).collect(),
            Invocation::Fake => panic!("fake"),
        }
    }

    #[test]
    fn mount_words_stay_options_and_other_words_become_flags() {
        let got = argv(
            run(&[
                "/etc/etlfs/os.yaml",
                "/mnt/x",
                "-o",
                "rw,nosuid,upload_delay=2s,no-prefetch,_netdev,allow_other,log_format=json",
            ])
            .unwrap(),
        );
        assert_eq!(
            got,
            [
                "etlfs",
                "mount",
                "--background",
                "--config=/etc/etlfs/os.yaml",
                "--fsname=/etc/etlfs/os.yaml",
                "--upload-delay=2s",
                "--no-prefetch",
                "--log-format=json",
                "--options=rw,nosuid,_netdev,allow_other",
                "--",
                "/mnt/x",
            ]
        );
        // What mount(8) adds is accepted; a given fsname wins.
        let got = argv(
            run(&[
                "/c.yaml",
                "/m",
                "-n",
                "-v",
                "-o",
                "fsname=etl",
                "-t",
                "fuse.etlfs",
            ])
            .unwrap(),
        );
        assert!(got.contains(&"--fsname=etl".to_string()), "{got:?}");
        assert!(!got.iter().any(|a| a.starts_with("--fsname=/")), "{got:?}");
    }

    #[test]
    fn a_word_that_is_neither_is_refused_by_name_unless_sloppy() {
        let e = run(&["/c.yaml", "/m", "-o", "rw,upload_dealy=2s"]).unwrap_err();
        assert!(
            matches!(&e, HelperError::Unknown(u) if u.0 == "upload_dealy=2s"),
            "{e}"
        );
        assert!(e.to_string().contains("`upload_dealy=2s`"), "{e}");
        let got = argv(run(&["-s", "/c.yaml", "/m", "-o", "rw,bogus"]).unwrap());
        assert!(!got.iter().any(|a| a.contains("bogus")), "{got:?}");
    }

    #[test]
    fn values_must_match_the_flag() {
        let e = run(&["/c.yaml", "/m", "-o", "upload_delay"]).unwrap_err();
        assert!(matches!(e, HelperError::NeedsValue(_)), "{e}");
        assert!(e.to_string().contains("upload_delay=VALUE"), "{e}");
        let e = run(&["/c.yaml", "/m", "-o", "no_prefetch=1"]).unwrap_err();
        assert!(matches!(e, HelperError::TakesNoValue(..)), "{e}");
        for word in ["config=/x.yaml", "background", "options=ro"] {
            let e = run(&["/c.yaml", "/m", "-o", word]).unwrap_err();
            assert!(
                matches!(
                    e,
                    HelperError::ConfigIsSource(_) | HelperError::NotAnOption(_)
                ),
                "{word}: {e}"
            );
            assert!(e.to_string().contains(word), "{e}");
        }
        let e = run(&["/c.yaml", "/m", "-N", "/proc/1/ns/mnt"]).unwrap_err();
        assert!(matches!(e, HelperError::Namespace(_)), "{e}");
    }

    #[test]
    fn fake_checks_everything_and_mounts_nothing() {
        assert!(matches!(
            run(&["-f", "/c.yaml", "/m", "-o", "ro,upload_delay=2s"]).unwrap(),
            Invocation::Fake
        ));
        assert!(run(&["-f", "/c.yaml", "/m", "-o", "x-bogus=1,bogus"]).is_err());
    }

    #[test]
    fn other_names_run_as_given_and_the_fuse3_form_is_refused_with_the_way_out() {
        let plain: Vec<OsString> = ["etlfs", "mount", "/m"].map(OsString::from).into();
        assert!(
            matches!(invocation(plain.clone(), &cli()).unwrap(), Invocation::Run(a) if a == plain)
        );
        let fuse3: Vec<OsString> = ["etlfs", "/etc/etlfs/os.yaml", "/m", "-o", "rw,dev,suid"]
            .map(OsString::from)
            .into();
        let e = invocation(fuse3, &cli()).unwrap_err();
        assert!(matches!(e, HelperError::ThroughFuse3 { .. }), "{e}");
        assert!(e.to_string().contains("/sbin/mount.fuse.etlfs"), "{e}");
    }
}
