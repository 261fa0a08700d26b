//! The `-o` mount options of `etlfs mount`: the comma-separated words `mount(8)` and fstab
//! pass, parsed into [`MountOptions`], what this mount then does. Mapping them onto the
//! kernel's mount flags is the mount command's business ([`crate::cli::mount`]); honouring
//! them in the served files is the overlay's ([`crate::fs::overlay::Policy`]).
//!
//! Three kinds of word:
//! - kept: `ro`/`rw`, `suid`/`nosuid`, `dev`/`nodev`, `exec`/`noexec`, `sync`/`async`,
//!   `dirsync`, `atime`/`noatime`/`relatime`/`strictatime`, `diratime`/`nodiratime`, and who
//!   may use the mount: `allow_other`/`allow_root`/`noallow_other`. Of a pair (or the three)
//!   the last one said wins, as with `mount(8)`;
//! - ignored: words that only tell `mount(8)` or the boot what to do (`defaults`, `auto`,
//!   `noauto`, `user`, `nouser`, `users`, `_netdev`, `nofail`, `x-*`, `comment=*`); `mount(8)`
//!   hands them to a helper along with the rest, so refusing them would break fstab lines.
//!   `default_permissions` too: etlfs always asks the kernel to check modes;
//! - anything else is refused, naming the word: a misspelt `noatine` would otherwise be
//!   silently dropped.

/// A `-o` word etlfs does not know.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown mount option `{}` (see doc/CONFIGURATION.md for the options etlfs knows)",
    crate::escape::esc(.0)
)]
pub struct UnknownOption(pub String);

/// When reads update the access time of what they read.
///
/// The kernel leaves a FUSE file's access time to the filesystem, and etlfs shows the local
/// file's: it moves when the file underneath is read for the application, under the policy of
/// the disk's own mount. So `relatime` and `strictatime` both mean "as the disk underneath
/// does it" (which is `relatime` unless that disk is mounted otherwise); only `noatime` can be
/// honoured by etlfs itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Atime {
    /// `relatime` (the default) or `atime`.
    Relative,
    /// `strictatime`.
    Strict,
    /// `noatime`: reads etlfs makes for the application never update it.
    Never,
}

/// Who may use the mount (FUSE lets only the user who mounted it in, unless told otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `allow_other` (the default): every user, as on the directory underneath. Kubecost's
    /// cost-model writes the directory as its own non-root uid, while etlfs mounts as root
    /// (a privileged sidecar); without it the kernel would refuse the application every access.
    Everyone,
    /// `allow_root`: root and the user who mounted it (etlfs mounts as root, so: root only).
    RootAndOwner,
    /// `noallow_other`: only the user who mounted it.
    Owner,
}

/// What the `-o` options ask of a mount. The default is what `etlfs mount` does without any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// `ro`: the kernel refuses every change with EROFS, and etlfs refuses them too.
    pub read_only: bool,
    /// `suid`: set-user-id and set-group-id bits take effect (default `nosuid`).
    pub suid: bool,
    /// `dev`: device nodes can be opened as devices (default `nodev`).
    pub dev: bool,
    /// `exec` (default) or `noexec`.
    pub exec: bool,
    /// `sync`: every write is synchronous (default `async`).
    pub sync: bool,
    /// `dirsync`: directory changes are synchronous.
    pub dirsync: bool,
    pub atime: Atime,
    /// `nodiratime`: listing a directory never updates its access time (implied by `noatime`).
    pub nodiratime: bool,
    /// `allow_other` (default), `allow_root` or `noallow_other`.
    pub access: Access,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            read_only: false,
            // The bucket is not trusted: nothing restored from it may grant privilege, and a
            // set-uid file or a device node planted through another path must not either.
            suid: false,
            dev: false,
            exec: true,
            sync: false,
            dirsync: false,
            atime: Atime::Relative,
            nodiratime: false,
            access: Access::Everyone,
        }
    }
}

impl MountOptions {
    /// Parses every `-o` argument (each comma-separated), in order.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<MountOptions, UnknownOption> {
        let mut o = MountOptions::default();
        for word in args.iter().flat_map(|a| a.as_ref().split(',')) {
            let word = word.trim();
            match word {
                "ro" => o.read_only = true,
                "rw" => o.read_only = false,
                "suid" => o.suid = true,
                "nosuid" => o.suid = false,
                "dev" => o.dev = true,
                "nodev" => o.dev = false,
                "exec" => o.exec = true,
                "noexec" => o.exec = false,
                "sync" => o.sync = true,
                "async" => o.sync = false,
                "dirsync" => o.dirsync = true,
                "noatime" => o.atime = Atime::Never,
                "atime" | "relatime" => o.atime = Atime::Relative,
                "strictatime" => o.atime = Atime::Strict,
                "nodiratime" => o.nodiratime = true,
                "diratime" => o.nodiratime = false,
                "allow_other" => o.access = Access::Everyone,
                "allow_root" => o.access = Access::RootAndOwner,
                "noallow_other" => o.access = Access::Owner,
                // For mount(8) and the boot, not for the filesystem.
                ""
                | "defaults"
                | "auto"
                | "noauto"
                | "user"
                | "nouser"
                | "users"
                | "_netdev"
                | "nofail"
                | "default_permissions" => {}
                w if w.starts_with("x-") || w.starts_with("comment=") => {}
                w => return Err(UnknownOption(w.to_owned())),
            }
        }
        Ok(o)
    }

    /// Whether etlfs' reads for the application must leave the access time of directories
    /// alone.
    pub fn dirs_noatime(&self) -> bool {
        self.atime == Atime::Never || self.nodiratime
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_option_is_the_default_mount() {
        let o = MountOptions::parse::<&str>(&[]).unwrap();
        assert_eq!(o, MountOptions::default());
        assert!(!o.suid && !o.dev && o.exec && !o.read_only);
        assert_eq!(o.access, Access::Everyone);
    }

    #[test]
    fn who_may_use_the_mount_and_the_last_word_wins() {
        let access = |w: &str| MountOptions::parse(&[w]).unwrap().access;
        assert_eq!(access("allow_root"), Access::RootAndOwner);
        assert_eq!(access("noallow_other"), Access::Owner);
        assert_eq!(access("noallow_other,allow_other"), Access::Everyone);
        assert_eq!(
            access("allow_other,default_permissions,allow_root"),
            Access::RootAndOwner
        );
    }

    #[test]
    fn repeated_and_comma_separated_and_the_last_of_a_pair_wins() {
        let o = MountOptions::parse(&["ro,noatime", "nodev", "suid,exec"]).unwrap();
        assert!(o.read_only && o.suid && !o.dev && o.exec);
        assert_eq!(o.atime, Atime::Never);
        assert!(o.dirs_noatime());
        let o = MountOptions::parse(&["ro,noatime,rw,relatime,noexec,sync,dirsync"]).unwrap();
        assert!(!o.read_only && !o.exec && o.sync && o.dirsync);
        assert_eq!(o.atime, Atime::Relative);
        assert!(!o.dirs_noatime());
        let o = MountOptions::parse(&["nodiratime,strictatime", "dev"]).unwrap();
        assert!(o.nodiratime && o.dev && o.dirs_noatime());
        assert_eq!(o.atime, Atime::Strict);
    }

    #[test]
    fn what_fstab_passes_for_mount8_is_ignored() {
        let o = MountOptions::parse(&[
            "defaults,rw,auto,noauto,user,nouser,users,_netdev,nofail,x-systemd.automount",
            "x-systemd.requires=network-online.target,comment=keep,,",
        ])
        .unwrap();
        assert_eq!(o, MountOptions::default());
    }

    #[test]
    fn an_unknown_option_is_refused_by_name() {
        let e = MountOptions::parse(&["ro,noatine"]).unwrap_err();
        assert_eq!(e.0, "noatine");
        assert!(e.to_string().contains("`noatine`"), "{e}");
        // A value on a word that takes none is not that word.
        assert_eq!(MountOptions::parse(&["ro=1"]).unwrap_err().0, "ro=1");
        // Shown escaped: the word comes from the command line.
        let e = MountOptions::parse(&["a\u{1b}[2Jb"]).unwrap_err();
        assert!(e.to_string().contains("a\\x1b[2Jb"), "{e}");
    }
}
