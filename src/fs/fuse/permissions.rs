//! The FUSE side of etlfs' own permission checks (why and how: [`crate::os::creds`]).
//!
//! - [`checks_permissions`] decides whether etlfs mounts without `default_permissions`.
//! - Each request that the filesystem underneath must check runs its overlay call for its
//!   caller ([`Core::caller`], then [`creds::with_caller`] in the callback).
//! - The kernel walks through a cached name without asking anyone, so names are cached only in
//!   directories everyone may search ([`Core::entry_ttl`]). When a directory stops being one
//!   (a chmod, an ACL), or an entry moves into one that is not (a rename), the names the kernel
//!   may hold there are made to expire ([`Core::expire`]), so the next walk asks again, as its
//!   caller. That runs on a thread of its own, after the reply: the kernel takes the
//!   directory's lock to drop a name, and the request being answered still holds it. For that
//!   moment after the change returns, a name cached before it still works for everyone.

use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fuser::{INodeNo, Request};

use super::{Core, TTL};
use crate::fs::overlay::{Ino, OverlayError};
use crate::os::creds::{self, Caller, Check};

/// Whether etlfs checks permissions itself, mounting without `default_permissions`: when it can
/// act as every caller ([`creds::can_act_as_callers`]). Otherwise the kernel checks.
pub fn checks_permissions() -> bool {
    creds::can_act_as_callers()
}

/// Names in a directory whose cached entries the kernel is to drop.
#[derive(Debug)]
pub(super) struct Expire {
    dir: Ino,
    names: Vec<OsString>,
}

impl Core {
    /// The caller `req` is made for, if etlfs checks permissions (`None`: the kernel did).
    /// `umask`: the caller's, for a creating request (applied by the filesystem underneath,
    /// where the kernel left the mode unmasked). An unknown caller is refused (`EACCES`).
    pub(super) fn caller(
        &self,
        req: &Request,
        check: Check,
        umask: Option<u32>,
    ) -> Result<Option<Arc<Caller>>, OverlayError> {
        if !self.checks {
            return Ok(None);
        }
        let umask = umask.filter(|_| self.dont_mask.load(Ordering::Relaxed));
        match Caller::of_request(req.pid(), req.uid(), req.gid(), check, umask) {
            Ok(c) => Ok(Some(Arc::new(c))),
            Err(e) => {
                if !self.refused_unknown.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "refused a request whose caller is unknown \
                        (said once; the rest at debug level)");
                }
                Err(OverlayError::Caller(e))
            }
        }
    }

    /// The mode of a creating request as etlfs passes it on: as sent if the kernel left the
    /// umask to etlfs (the caller's [`Caller::umask`] then applies), otherwise masked already.
    pub(super) fn unmasked(&self) -> bool {
        self.checks && self.dont_mask.load(Ordering::Relaxed)
    }

    /// How long the kernel may cache a name in directory `dir`: [`TTL`], or nothing where
    /// etlfs checks permissions and not everyone may search `dir` (then each walk through it
    /// asks etlfs, as its caller).
    pub(super) fn entry_ttl(&self, dir: Ino) -> Duration {
        if !self.checks || self.overlay.open_to_all(dir) == Some(true) {
            TTL
        } else {
            Duration::ZERO
        }
    }

    /// Whether everyone may search directory `ino` before a change (`None`: not a directory,
    /// or etlfs does not check), for [`Core::narrowed`] after it.
    pub(super) fn open_before(&self, ino: Ino) -> Option<bool> {
        if self.checks {
            self.overlay.open_to_all(ino)
        } else {
            None
        }
    }

    /// After a change of directory `ino` that everyone could search `before`: if not any
    /// more, the names the kernel may have cached in it expire.
    pub(super) fn narrowed(&self, ino: Ino, before: Option<bool>) {
        if before == Some(true) && self.overlay.open_to_all(ino) == Some(false) {
            self.expire(ino, self.overlay.names_in(ino));
        }
    }

    /// After an entry moved to `name` in `dir` (a rename): the kernel keeps the validity it
    /// had where it was, which must not outlive the move into a directory not everyone may
    /// search.
    pub(super) fn moved_in(&self, dir: Ino, name: &OsStr) {
        if self.checks && self.overlay.open_to_all(dir) != Some(true) {
            self.expire(dir, vec![name.to_owned()]);
        }
    }

    /// Has the kernel drop its cached entries of `names` in `dir` (on the expiring thread).
    fn expire(&self, dir: Ino, names: Vec<OsString>) {
        if names.is_empty() {
            return;
        }
        let Some(notifier) = self.notifier.get().cloned() else {
            return;
        };
        let mut expirer = self.expirer.lock().unwrap_or_else(|e| e.into_inner());
        if expirer.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<Expire>();
            let started = std::thread::Builder::new()
                .name("fuse-expire".into())
                .spawn(move || {
                    for e in rx {
                        for name in &e.names {
                            // Gone already is as good (fuser passes ENOENT as success).
                            if let Err(err) = notifier.inval_entry(INodeNo(e.dir), name) {
                                tracing::debug!(dir = e.dir, error = %err, "could not expire a cached name");
                            }
                        }
                    }
                });
            match started {
                Ok(_) => *expirer = Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the thread that expires cached names");
                    return;
                }
            }
        }
        if let Some(tx) = expirer.as_ref() {
            let _ = tx.send(Expire { dir, names });
        }
    }
}
