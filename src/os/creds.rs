//! Whose request a FUSE request is, and acting as that caller on the directory underneath.
//!
//! When etlfs can act as any caller (root with `CAP_SETUID` and `CAP_SETGID`, in the initial
//! PID namespace: [`can_act_as_callers`]), it mounts without `default_permissions`. The kernel
//! then checks almost nothing itself, and the filesystem underneath decides every request, ACLs
//! included: each system call made *for* the caller runs under the caller's credentials
//! ([`as_caller`]), switched on the serving thread for that call alone and restored right after
//! ([`CredsGuard`]). Everything etlfs does for itself in between (its bookkeeping lookups,
//! downloads, the mirror, the journal) stays etlfs' own.
//!
//! # Where the credentials come from
//!
//! A request carries the caller's filesystem uid and gid and its thread id. The supplementary
//! groups are only in `/proc/<tid>/status`, whose read costs about as much as a FUSE round trip
//! on a small VM, so they are kept per thread id for [`GROUPS_FRESH`]; the capabilities are
//! read at every request (`capget`, cheap). A request whose caller cannot be known — no thread
//! id (it comes from outside etlfs' PID namespace, or from the kernel itself), a thread already
//! gone, or ids that differ from the thread's own (the kernel overrode them, as overlayfs does)
//! — is refused with `EACCES` ([`CallerError`]): its permissions cannot be checked, and a
//! guess could grant what the filesystem would refuse.
//!
//! # What is switched
//!
//! Filesystem uid and gid (`setfsuid`/`setfsgid`), the supplementary groups (the per-thread
//! system call: glibc's `setgroups()` changes every thread of the process), and the
//! capabilities the filesystem consults: the *filesystem* ones (`CAP_DAC_OVERRIDE`,
//! `CAP_FOWNER`, ...; leaving uid 0 drops them, the kernel's rule) and `CAP_SYS_RESOURCE`
//! (reserved blocks, quotas) are the caller's own. etlfs' other capabilities stay, except for
//! the extended attributes that depend on them (`trusted.*`, `security.*`), which get the
//! caller's exact set ([`as_caller_exactly`]). The
//! thread's umask becomes the caller's for a creating request, so that a default ACL of the
//! directory, not the umask, shapes the new file's mode where the directory has one.
//!
//! When etlfs cannot act as its callers it keeps `default_permissions` (the kernel checks),
//! and only gives new files the caller's owner ([`as_creator`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Gid, Pid};
use rustix::thread::{CapabilitySet, CapabilitySets};

use crate::os::sys;

/// The identity a FUSE request gives for its caller: enough to give a new file its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
}

/// The full credentials of the process a request is made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Arc<[u32]>,
    /// Effective capabilities.
    pub caps: CapabilitySet,
    /// The caller's umask, for a creating request whose mode the kernel left unmasked.
    pub umask: Option<u32>,
}

/// How long the groups read from `/proc/<tid>/status` are used for further requests of the
/// same thread. One read costs ~28 µs here (a FUSE round trip is ~25 µs), so reading it for
/// each request would cost more than `default_permissions` did; a create is two requests.
/// The cost of keeping them: a thread that changes its groups (which takes `CAP_SETGID`)
/// while keeping its uid and gid is judged by its old groups for at most this long. A change
/// of uid or gid, or of capabilities, is seen at once (they are checked at every request).
pub const GROUPS_FRESH: Duration = Duration::from_millis(100);

/// Why the caller of a request could not be known; the request is refused with `EACCES`.
#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    #[error(
        "a request without a process id (from outside etlfs' PID namespace, or from the \
         kernel): its caller's groups cannot be known, so it is refused"
    )]
    NoPid,
    #[error("cannot read the credentials of thread {tid}: {source}")]
    Unreadable {
        tid: u32,
        #[source]
        source: io::Error,
    },
    #[error(
        "thread {tid} runs as {have_uid}:{have_gid}, but its request came as {uid}:{gid} \
         (credentials overridden in the kernel, e.g. by overlayfs); refused"
    )]
    Overridden {
        tid: u32,
        uid: u32,
        gid: u32,
        have_uid: u32,
        have_gid: u32,
    },
}

/// Which kind of request: `access(2)` checks with the caller's *real* ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Any request but ACCESS.
    Plain,
    /// FUSE ACCESS: from `access(2)` (real ids, the kernel's override) or `chdir` (the usual ones).
    Access,
}

/// The ids of a thread as `/proc/<tid>/status` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProcIds {
    ruid: u32,
    rgid: u32,
    fsuid: u32,
    fsgid: u32,
    groups: Arc<[u32]>,
}

/// Reads the `Uid:`, `Gid:` and `Groups:` lines of a `/proc/<tid>/status` text.
fn parse_status(text: &str) -> Option<ProcIds> {
    let (mut uids, mut gids, mut groups) = (None, None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let ids =
            || -> Option<Vec<u32>> { value.split_whitespace().map(|v| v.parse().ok()).collect() };
        match key {
            "Uid" => uids = ids(),
            "Gid" => gids = ids(),
            "Groups" => groups = ids(),
            _ => {}
        }
    }
    // real, effective, saved, filesystem
    let (uids, gids) = (uids?, gids?);
    if uids.len() != 4 || gids.len() != 4 {
        return None;
    }
    Some(ProcIds {
        ruid: uids[0],
        rgid: gids[0],
        fsuid: uids[3],
        fsgid: gids[3],
        groups: groups?.into(),
    })
}

/// Threads' ids read lately, with when.
static SEEN: LazyLock<Mutex<HashMap<u32, (Instant, ProcIds)>>> = LazyLock::new(Default::default);

/// Past this many threads, entries older than [`GROUPS_FRESH`] are dropped.
const SEEN_MAX: usize = 256;

fn read_ids(tid: u32) -> Result<ProcIds, CallerError> {
    let unreadable = |source| CallerError::Unreadable { tid, source };
    let text = std::fs::read_to_string(format!("/proc/{tid}/status")).map_err(unreadable)?;
    parse_status(&text).ok_or_else(|| {
        unreadable(io::Error::new(
            io::ErrorKind::InvalidData,
            "no Uid, Gid and Groups lines",
        ))
    })
}

impl Caller {
    /// The caller of a request made by thread `tid` (in etlfs' PID namespace) as `uid`:`gid`.
    /// `umask`: the caller's, for a creating request the kernel sent unmasked.
    pub fn of_request(
        tid: u32,
        uid: u32,
        gid: u32,
        check: Check,
        umask: Option<u32>,
    ) -> Result<Caller, CallerError> {
        if tid == 0 {
            return Err(CallerError::NoPid);
        }
        let matches = |ids: &ProcIds| {
            (ids.fsuid, ids.fsgid) == (uid, gid)
                || (check == Check::Access && (ids.ruid, ids.rgid) == (uid, gid))
        };
        let now = Instant::now();
        let known = {
            let seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
            seen.get(&tid)
                .filter(|(at, ids)| now.duration_since(*at) < GROUPS_FRESH && matches(ids))
                .map(|(_, ids)| ids.clone())
        };
        let ids = match known {
            Some(ids) => ids,
            None => {
                let ids = read_ids(tid)?;
                let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
                if seen.len() >= SEEN_MAX {
                    seen.retain(|_, (at, _)| now.duration_since(*at) < GROUPS_FRESH);
                }
                seen.insert(tid, (now, ids.clone()));
                ids
            }
        };
        let caps = rustix::thread::capabilities(Pid::from_raw(tid as i32)).map_err(|e| {
            CallerError::Unreadable {
                tid,
                source: e.into(),
            }
        })?;
        let caps = if (ids.fsuid, ids.fsgid) == (uid, gid) {
            caps.effective
        } else if check == Check::Access && (ids.ruid, ids.rgid) == (uid, gid) {
            // access(2) checks with the real ids, and with all permitted capabilities for a
            // real root, none otherwise (the kernel's `access_override_creds`).
            if ids.ruid == 0 {
                caps.permitted
            } else {
                CapabilitySet::empty()
            }
        } else {
            return Err(CallerError::Overridden {
                tid,
                uid,
                gid,
                have_uid: ids.fsuid,
                have_gid: ids.fsgid,
            });
        };
        Ok(Caller {
            uid,
            gid,
            groups: ids.groups,
            caps,
            umask,
        })
    }

    /// Whether the caller is in group `gid` (its own or a supplementary one).
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    fn has(&self, cap: CapabilitySet) -> bool {
        self.caps.contains(cap)
    }
}

/// Whether this process can act as any caller, so that the filesystem underneath can check
/// every request: it is root with `CAP_SETUID` and `CAP_SETGID` (to switch ids and groups),
/// and in the initial PID namespace, where every process has a thread id etlfs can look up.
/// In a container's own PID namespace, the applications of other containers (a Kubernetes
/// sidecar's neighbours) and of the host would all come without one.
pub fn can_act_as_callers() -> bool {
    /// The inode number of the initial PID namespace (`PROC_PID_INIT_INO`, kernel ABI).
    const INITIAL_PID_NS: u64 = 0xEFFF_FFFC;
    sys::geteuid() == 0
        && rustix::thread::capabilities(None).is_ok_and(|c| {
            c.effective
                .contains(CapabilitySet::SETUID | CapabilitySet::SETGID)
        })
        && std::fs::metadata("/proc/self/ns/pid").is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.ino() == INITIAL_PID_NS
        })
}

thread_local! {
    /// The caller of the request this thread serves now (see [`with_caller`]).
    static CURRENT: RefCell<Option<Arc<Caller>>> = const { RefCell::new(None) };
    static UMASK_PRIVATE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (one overlay request) for `caller`: the system calls made for the caller inside
/// it ([`as_caller`]) run as the caller. `None`: as etlfs (the kernel checked, or an internal
/// step). Nests: the previous caller is back afterwards.
pub fn with_caller<T>(caller: Option<Arc<Caller>>, f: impl FnOnce() -> T) -> T {
    struct Reset(Option<Arc<Caller>>);
    impl Drop for Reset {
        fn drop(&mut self) {
            CURRENT.with(|c| *c.borrow_mut() = self.0.take());
        }
    }
    let previous = CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), caller));
    let _reset = Reset(previous);
    f()
}

/// The caller this thread serves now, if etlfs checks its permissions.
pub fn current() -> Option<Arc<Caller>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Runs `f` as etlfs: for a step of a request that is etlfs' own business (making a
/// bucket-only file local, say), even if it uses calls that otherwise run as the caller.
pub fn as_daemon<T>(f: impl FnOnce() -> T) -> T {
    with_caller(None, f)
}

/// Runs `op` — a system call the caller asked for — under the current caller's credentials,
/// restored as soon as it returns. Without a current caller it runs as etlfs.
pub fn as_caller<T>(op: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    match current() {
        Some(caller) => {
            let _guard = CredsGuard::switch(&caller, false)?;
            op()
        }
        None => op(),
    }
}

/// Like [`as_caller`], with the caller's exact capabilities, not only the filesystem ones:
/// for the extended attributes that need `CAP_SYS_ADMIN` (`trusted.*`, `security.*`).
pub fn as_caller_exactly<T>(op: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    match current() {
        Some(caller) => {
            let _guard = CredsGuard::switch(&caller, true)?;
            op()
        }
        None => op(),
    }
}

/// The filesystem capabilities (the kernel's `CAP_FS_SET`): dropped when the fsuid leaves 0.
const FS_CAPS: CapabilitySet = CapabilitySet::CHOWN
    .union(CapabilitySet::MKNOD)
    .union(CapabilitySet::DAC_OVERRIDE)
    .union(CapabilitySet::DAC_READ_SEARCH)
    .union(CapabilitySet::FOWNER)
    .union(CapabilitySet::FSETID)
    .union(CapabilitySet::MAC_OVERRIDE);

/// The capabilities a caller gets as its own for every call: the filesystem ones, and
/// `CAP_SYS_RESOURCE`, which lets a write use root's reserved blocks and pass disk quotas.
const CALLER_CAPS: CapabilitySet = FS_CAPS.union(CapabilitySet::SYS_RESOURCE);

fn gids(groups: &[u32]) -> Vec<Gid> {
    groups.iter().map(|&g| Gid::from_raw(g)).collect()
}

/// This thread's own capabilities.
fn own_caps() -> io::Result<CapabilitySets> {
    Ok(rustix::thread::capabilities(None)?)
}

fn set_own_caps(sets: CapabilitySets) -> io::Result<()> {
    Ok(rustix::thread::set_capabilities(None, sets)?)
}

/// This thread under a caller's credentials, until dropped: then etlfs' own are back. Each
/// part is switched only where it differs (a root caller with etlfs' groups costs nothing).
pub struct CredsGuard {
    fsuid: u32,
    fsgid: u32,
    /// The thread's groups, if they were changed.
    groups: Option<Vec<Gid>>,
    /// The thread's capabilities, and whether they were changed.
    caps: CapabilitySets,
    caps_set: bool,
    /// The thread's umask, if it was changed.
    umask: Option<libc::mode_t>,
}

impl CredsGuard {
    /// Switches this thread to `caller`; `exact_caps`: all its capabilities, not only the
    /// filesystem ones. Fails (having changed nothing) if the switch does not take.
    pub fn switch(caller: &Caller, exact_caps: bool) -> io::Result<CredsGuard> {
        let mut guard = CredsGuard {
            // An invalid id changes nothing and returns the current one.
            fsuid: sys::set_fsuid(u32::MAX),
            fsgid: sys::set_fsgid(u32::MAX),
            groups: None,
            caps: own_caps()?,
            caps_set: false,
            umask: None,
        };
        // (getgroups reads the calling thread's own)
        let own_groups = rustix::process::getgroups()?;
        let wanted = gids(&caller.groups);
        if own_groups != wanted {
            // Per thread: glibc's setgroups() would change every thread of etlfs.
            rustix::thread::set_thread_groups(&wanted)?;
            guard.groups = Some(own_groups);
        }
        if caller.gid != guard.fsgid {
            sys::set_fsgid(caller.gid);
        }
        if caller.uid != guard.fsuid {
            sys::set_fsuid(caller.uid);
        }
        if (sys::set_fsuid(u32::MAX), sys::set_fsgid(u32::MAX)) != (caller.uid, caller.gid) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        // What the fsuid switch left, and what the caller is to have.
        let own = guard.caps.effective;
        let now = if caller.uid == 0 { own } else { own & !FS_CAPS };
        let wanted = if exact_caps {
            own & caller.caps
        } else {
            (now & !CALLER_CAPS) | (own & caller.caps & CALLER_CAPS)
        };
        if wanted != now {
            set_own_caps(CapabilitySets {
                effective: wanted,
                ..guard.caps
            })?;
            guard.caps_set = true;
        }
        if let Some(mask) = caller.umask {
            private_umask()?;
            guard.umask = Some(sys::set_umask(mask));
        }
        Ok(guard)
    }
}

impl Drop for CredsGuard {
    fn drop(&mut self) {
        if let Some(mask) = self.umask {
            sys::set_umask(mask);
        }
        // Capabilities first: restoring the groups needs CAP_SETGID back.
        let mut back = !self.caps_set || set_own_caps(self.caps).is_ok();
        sys::set_fsuid(self.fsuid);
        sys::set_fsgid(self.fsgid);
        if let Some(groups) = &self.groups {
            back &= rustix::thread::set_thread_groups(groups).is_ok();
        }
        // Going back to fsuid 0 raises the filesystem capabilities from the permitted set,
        // which may be more than the thread had.
        back &= match own_caps() {
            Ok(c) if c == self.caps => true,
            Ok(_) => set_own_caps(self.caps).is_ok(),
            Err(_) => false,
        };
        back &= (sys::set_fsuid(u32::MAX), sys::set_fsgid(u32::MAX)) == (self.fsuid, self.fsgid);
        if !back {
            // A serving thread left with a caller's credentials would serve the next request
            // with them; nothing can be trusted after that.
            tracing::error!(
                "could not restore etlfs' own credentials on a serving thread; aborting"
            );
            std::process::abort();
        }
    }
}

/// Gives this thread a filesystem context of its own (umask, cwd), once, with umask 0: the
/// kernel has already applied the caller's umask to the modes a request carries, unless it
/// sent them unmasked (then the caller's is set for the call, see [`CredsGuard`]).
pub fn private_umask() -> io::Result<()> {
    if !UMASK_PRIVATE.get() {
        sys::private_zero_umask()?;
        UMASK_PRIVATE.set(true);
    }
    Ok(())
}

/// Runs a creating operation (`op` makes `name` in `dir`) so that the new entry is the
/// caller's: as the current caller if etlfs checks permissions ([`as_caller`]); otherwise
/// (the kernel checked, with `default_permissions`) under the request's filesystem ids, so
/// that ownership, set-gid inheritance and quotas come out as if the caller had done it. The
/// kernel then checked with all of the caller's groups, but only the primary gid is known
/// here: if the caller's access comes from a supplementary group the filesystem refuses with
/// `EACCES`, and the operation is repeated as etlfs and the new entry given to the caller.
pub fn as_creator<T>(
    creds: Creds,
    dir: BorrowedFd<'_>,
    name: &CStr,
    op: impl Fn() -> io::Result<T>,
) -> io::Result<T> {
    private_umask()?;
    if current().is_some() {
        return as_caller(op);
    }
    let first = {
        let (uid, gid) = (sys::set_fsuid(u32::MAX), sys::set_fsgid(u32::MAX));
        sys::set_fsgid(creds.gid);
        sys::set_fsuid(creds.uid);
        let res = op();
        sys::set_fsuid(uid);
        sys::set_fsgid(gid);
        res
    };
    match first {
        Err(e) if e.raw_os_error() == Some(libc::EACCES) && sys::geteuid() == 0 => {
            let out = op()?;
            let dir_st = sys::fstatat(dir, sys::EMPTY, libc::AT_EMPTY_PATH)?;
            let gid = if dir_st.st_mode & libc::S_ISGID != 0 {
                u32::MAX
            } else {
                creds.gid
            };
            sys::fchownat(dir, name, creds.uid, gid, libc::AT_SYMLINK_NOFOLLOW)?;
            Ok(out)
        }
        other => other,
    }
}

/// Whether `caller` may access a file of `mode` owned by `uid`:`gid`, without an ACL, for
/// `mask` (`R_OK`, `W_OK`, `X_OK`): the kernel's rule for a regular file (owner, group or
/// other bits, then `CAP_DAC_OVERRIDE` and `CAP_DAC_READ_SEARCH`). For files that are only in
/// the bucket: the download gives them exactly this mode and owner, and no ACL, so the answer
/// is the one the filesystem gives once the file is local.
pub fn permits(caller: &Caller, mode: u32, uid: u32, gid: u32, mask: i32) -> bool {
    let mask = (mask & (libc::R_OK | libc::W_OK | libc::X_OK)) as u32;
    let bits = if caller.uid == uid {
        mode >> 6
    } else if caller.in_group(gid) {
        mode >> 3
    } else {
        mode
    } & 7;
    if mask & !bits == 0 {
        return true;
    }
    let exec = libc::X_OK as u32;
    if caller.has(CapabilitySet::DAC_OVERRIDE) && (mask & exec == 0 || mode & 0o111 != 0) {
        return true;
    }
    caller.has(CapabilitySet::DAC_READ_SEARCH) && mask == libc::R_OK as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32, gid: u32, groups: &[u32], caps: CapabilitySet) -> Caller {
        Caller {
            uid,
            gid,
            groups: groups.into(),
            caps,
            umask: None,
        }
    }

    #[test]
    fn status_lines_give_real_and_filesystem_ids_and_groups() {
        let text = "Name:\tsh\nUid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t200\n\
                    Groups:\t4 24 27 \nCapEff:\t0000000000000000\n";
        let ids = parse_status(text).unwrap();
        assert_eq!(
            (ids.ruid, ids.fsuid, ids.rgid, ids.fsgid),
            (1000, 0, 100, 200)
        );
        assert_eq!(*ids.groups, [4, 24, 27]);
        let none = parse_status("Uid:\t5\t5\t5\t5\nGid:\t6\t6\t6\t6\nGroups:\t\n").unwrap();
        assert!(none.groups.is_empty());
        assert!(parse_status("Uid:\t5\t5\t5\t5\nGid:\t6\t6\t6\t6\n").is_none());
        assert!(parse_status("Uid:\t5\nGid:\t6\t6\t6\t6\nGroups:\t\n").is_none());
    }

    #[test]
    fn own_thread_is_known_and_others_are_refused() {
        let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        let (uid, gid) = (sys::set_fsuid(u32::MAX), sys::set_fsgid(u32::MAX));
        let me = Caller::of_request(tid, uid, gid, Check::Plain, Some(0o22)).unwrap();
        assert_eq!((me.uid, me.gid, me.umask), (uid, gid, Some(0o22)));
        let own: Vec<u32> = rustix::process::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        assert_eq!(*me.groups, *own);
        assert!(matches!(
            Caller::of_request(0, uid, gid, Check::Plain, None),
            Err(CallerError::NoPid)
        ));
        // Thread ids above the kernel's maximum never exist.
        assert!(matches!(
            Caller::of_request(u32::MAX - 1, uid, gid, Check::Plain, None),
            Err(CallerError::Unreadable { .. })
        ));
        assert!(matches!(
            Caller::of_request(tid, uid + 1, gid, Check::Plain, None),
            Err(CallerError::Overridden { .. })
        ));
    }

    #[test]
    fn a_switch_is_this_threads_alone_and_undone() {
        let groups = || -> Vec<u32> {
            rustix::process::getgroups()
                .unwrap()
                .into_iter()
                .map(|g| g.as_raw())
                .collect()
        };
        let ids = || (sys::set_fsuid(u32::MAX), sys::set_fsgid(u32::MAX));
        let (mine, my_ids, my_caps) = (groups(), ids(), own_caps().unwrap());
        let caller = Caller {
            uid: 4321,
            gid: 8765,
            groups: vec![4242, 4343].into(),
            caps: CapabilitySet::empty(),
            umask: Some(0o27),
        };
        let (switched_tx, switched_rx) = std::sync::mpsc::channel();
        let (checked_tx, checked_rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            let ids = || (sys::set_fsuid(u32::MAX), sys::set_fsgid(u32::MAX));
            let guard = CredsGuard::switch(&caller, false).unwrap();
            let caps = own_caps().unwrap().effective;
            switched_tx.send((ids(), groups(), caps)).unwrap();
            checked_rx.recv().unwrap();
            drop(guard);
            (ids(), groups(), own_caps().unwrap())
        });
        let (their_ids, their_groups, their_caps) = switched_rx.recv().unwrap();
        assert_eq!(their_ids, (4321, 8765));
        assert_eq!(their_groups, [4242, 4343]);
        assert!(!their_caps.intersects(CALLER_CAPS), "{their_caps:?}");
        // Meanwhile this thread is untouched.
        assert_eq!(
            (groups(), ids(), own_caps().unwrap()),
            (mine.clone(), my_ids, my_caps)
        );
        checked_tx.send(()).unwrap();
        let (ids_after, groups_after, caps_after) = other.join().unwrap();
        assert_eq!(
            (ids_after, groups_after, caps_after),
            (my_ids, mine, my_caps)
        );
    }

    #[test]
    fn permission_bits_follow_the_owner_group_other_rule() {
        let (r, w, x) = (libc::R_OK, libc::W_OK, libc::X_OK);
        let owner = caller(10, 20, &[], CapabilitySet::empty());
        let member = caller(11, 21, &[20], CapabilitySet::empty());
        let other = caller(12, 22, &[23], CapabilitySet::empty());
        // 0o640: owner rw, group r, nobody else.
        assert!(permits(&owner, 0o640, 10, 20, r | w));
        assert!(!permits(&owner, 0o640, 10, 20, x));
        assert!(permits(&member, 0o640, 10, 20, r));
        assert!(!permits(&member, 0o640, 10, 20, w));
        assert!(!permits(&other, 0o640, 10, 20, r));
        // The first class that matches decides, even if a later one would allow more.
        assert!(!permits(&owner, 0o077, 10, 20, r));
        assert!(!permits(&member, 0o707, 10, 20, r));
        assert!(permits(&other, 0o007, 10, 20, r | w | x));
        // Capabilities: DAC_OVERRIDE reads and writes anything, executes only what someone may.
        let root = caller(0, 0, &[], CapabilitySet::DAC_OVERRIDE);
        assert!(permits(&root, 0o000, 10, 20, r | w));
        assert!(!permits(&root, 0o600, 10, 20, x));
        assert!(permits(&root, 0o601, 10, 20, x));
        let reader = caller(13, 23, &[], CapabilitySet::DAC_READ_SEARCH);
        assert!(permits(&reader, 0o000, 10, 20, r));
        assert!(!permits(&reader, 0o000, 10, 20, r | w));
        // F_OK (no bits) is always allowed here: the file exists.
        assert!(permits(&other, 0o000, 10, 20, libc::F_OK));
    }
}
