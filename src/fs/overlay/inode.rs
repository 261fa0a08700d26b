//! The inode table: which files the kernel currently knows, and what we know about each.
//!
//! Invariants:
//! - A node exists exactly while the kernel holds lookup references to it (`lookups > 0`),
//!   except the root, which lives as long as the mount. `lookup` adds one, `forget` removes
//!   `n`; at zero the node and its `O_PATH` descriptor are dropped.
//! - Node ids are stable for the life of the node and are also reported as `st_ino`. For a
//!   local file on the served directory's device the id *is* its inode number there, so
//!   `readdir`'s `d_ino` and `stat`'s `st_ino` agree without a lookup. This cannot collide:
//!   while we hold a node's `O_PATH` descriptor, the underlying inode cannot be freed, so its
//!   number cannot be reused by another file. Files on other devices (a bind mount inside the
//!   directory) get synthetic ids above [`SYNTHETIC_BASE`], and so do bucket-only files (derived
//!   from their path, see [`InodeTable::insert_remote`]).
//! - `parent` and `name` are the node's last known place in the tree (kept up to date on
//!   rename and unlink): its *primary* name, the one last looked up, which parking reopens.
//!   A file with several hard links also keeps, in `links`, every other name of it that the
//!   kernel used through this mount (looked up, created by `link`, renamed to); each name is
//!   an object of its own, so the mirror is told about all of them. Unlinking one name leaves
//!   the others: the primary name passes to another known one. Names the kernel never used
//!   (links made before the mount) are not here; the mirror finds those itself.
//! - Descriptors are bounded: past the budget ([`InodeTable::set_fd_budget`]), the oldest
//!   idle files (not directories, not open, still named) are *parked*: their descriptor is
//!   closed and opened again by name when next needed, checked to be the same inode. A `find` over 100,000 files
//!   then works under a 20,000-descriptor limit. A parked inode is not pinned, so before a
//!   name of it is removed the overlay opens it again (see `Overlay::child_id`): an inode
//!   whose number the kernel still knows is never freed for another file to reuse.

use std::collections::{HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::Ino;
use crate::os::local::Stat;

/// The FUSE root node id.
pub const ROOT: Ino = 1;

/// Ids at and above this value are handed out by us rather than taken from `st_ino`.
pub const SYNTHETIC_BASE: Ino = 1 << 62;

/// What the kernel knows as one inode.
#[derive(Debug)]
pub struct Node {
    /// `O_PATH` descriptor of the local inode: survives renames of it and of its parents.
    /// `None` while the file is only in the bucket, or parked.
    pub fd: Option<Arc<OwnedFd>>,
    /// A local file whose descriptor was closed to stay within the budget.
    pub parked: bool,
    pub is_dir: bool,
    pub parent: Ino,
    /// Empty once the last known name was unlinked. Boxed: 8 bytes less than an `OsString`
    /// in each of 100,000 nodes.
    pub name: Box<OsStr>,
    /// The other names of a file with several hard links, as `(parent, name)`; empty for
    /// nearly every node (no allocation then).
    pub links: Links,
    pub lookups: u64,
    /// Open handles of any kind; a file with open handles is never evicted.
    pub openers: u32,
    /// Open handles by which the file is being executed: while there is one, an `O_TRUNC`
    /// open is refused with `ETXTBSY` (see `Overlay::open`).
    pub executors: u32,
    /// For a directory: whether every user may search it, once known (see
    /// `Overlay::open_to_all`), and a count of its changes, so that an answer worked out
    /// while the directory changed is not kept. Kept as two fields rather than a [`Search`]
    /// so that they share the node's padding: a node is 64 bytes.
    everyone: Option<bool>,
    search_changes: u32,
}

/// Another name of a node: `(parent, name)`.
pub type Link = (Ino, Box<OsStr>);

/// The other names of a node (see [`Node::links`]): a null pointer for the nodes without
/// any, nearly all of them, so that each of 100,000 nodes spends 8 bytes on them, not a
/// `Vec`'s 24 (the table's size is what a `find` over 100,000 files costs).
// A thin pointer is the point: a boxed slice would take 16 bytes, a `Vec` 24.
#[allow(clippy::box_collection)]
#[derive(Debug, Default)]
pub struct Links(Option<Box<Vec<Link>>>);

impl Links {
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|v| v.is_empty())
    }

    pub fn clear(&mut self) {
        self.0 = None;
    }

    pub fn push(&mut self, link: Link) {
        self.0.get_or_insert_default().push(link);
    }

    pub fn pop(&mut self) -> Option<Link> {
        let link = self.0.as_mut()?.pop();
        if self.is_empty() {
            self.0 = None;
        }
        link
    }

    pub fn retain(&mut self, keep: impl FnMut(&Link) -> bool) {
        if let Some(v) = &mut self.0 {
            v.retain(keep);
        }
        if self.is_empty() {
            self.0 = None;
        }
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Link> {
        self.0.as_deref().map_or(&[][..], Vec::as_slice).iter()
    }

    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, Link> {
        self.0
            .as_deref_mut()
            .map_or(&mut [][..], Vec::as_mut_slice)
            .iter_mut()
    }
}

/// What is known about who may search a directory.
#[derive(Debug, Default, Clone, Copy)]
pub struct Search {
    pub everyone: Option<bool>,
    /// Wraps: only compared for equality across one check, which takes microseconds.
    pub changes: u32,
}

impl Node {
    fn is_primary(&self, parent: Ino, name: &OsStr) -> bool {
        self.parent == parent && *self.name == *name
    }

    /// A lookup found this node as `name` in `parent`, the file having `nlink` links: that
    /// becomes its primary name. The previous one stays known as another link while the file
    /// has several; with one link (or for a directory), the name just moved.
    fn named(&mut self, parent: Ino, name: &OsStr, nlink: u64) {
        let several = nlink > 1 && !self.is_dir;
        if !several {
            self.links.clear();
        }
        if self.is_primary(parent, name) {
            return;
        }
        let old = (self.parent, std::mem::replace(&mut self.name, name.into()));
        self.parent = parent;
        if several {
            self.links.retain(|(p, n)| !(*p == parent && **n == *name));
            if !old.1.is_empty() {
                self.links.push(old);
            }
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    nodes: HashMap<Ino, Node>,
    /// `(dev, ino)` → id for files not on the served directory's device, and for files
    /// fetched from the bucket while the kernel knew them by a synthetic id.
    foreign: HashMap<(u64, u64), Ino>,
    next_synthetic: Ino,
    /// Nodes holding a descriptor (the root excluded).
    open_fds: usize,
    /// Nodes in the order they got their descriptor: where parking looks first.
    fd_order: VecDeque<Ino>,
}

/// Where a node's local inode is.
#[derive(Debug, Clone)]
pub enum Slot {
    Fd(Arc<OwnedFd>),
    /// Only in the bucket.
    Remote,
    /// Local, descriptor closed: open `name` in `parent` again.
    Parked {
        parent: Ino,
        name: OsString,
    },
}

/// The table itself; all methods take `&self` and lock internally.
#[derive(Debug)]
pub struct InodeTable {
    root_dev: u64,
    root_ino: u64,
    /// Descriptors held for nodes before the oldest idle ones are parked.
    fd_budget: usize,
    inner: RwLock<Table>,
}

impl InodeTable {
    pub fn new(root_fd: OwnedFd, root: &Stat) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                fd: Some(Arc::new(root_fd)),
                parked: false,
                is_dir: true,
                parent: ROOT,
                name: Box::default(),
                links: Links::default(),
                lookups: 1,
                openers: 0,
                executors: 0,
                everyone: None,
                search_changes: 0,
            },
        );
        InodeTable {
            root_dev: root.dev,
            root_ino: root.ino,
            fd_budget: usize::MAX,
            inner: RwLock::new(Table {
                nodes,
                foreign: HashMap::new(),
                next_synthetic: SYNTHETIC_BASE,
                open_fds: 0,
                fd_order: VecDeque::new(),
            }),
        }
    }

    /// The id a local inode has (or would have) in this table, without taking a reference.
    /// `None` for a foreign inode that was never looked up.
    pub fn id_of(&self, dev: u64, ino: u64) -> Option<Ino> {
        if let Some(&id) = self.read().foreign.get(&(dev, ino)) {
            return Some(id);
        }
        Self::native_id(self.root_dev, self.root_ino, dev, ino)
    }

    fn native_id(root_dev: u64, root_ino: u64, dev: u64, ino: u64) -> Option<Ino> {
        if dev != root_dev {
            None
        } else if ino == root_ino {
            Some(ROOT)
        } else if ino > ROOT && ino < SYNTHETIC_BASE {
            Some(ino)
        } else {
            None
        }
    }

    /// Records a lookup of `name` in `parent` that found the local inode `st` through `fd`.
    /// Returns the node id; an already known inode keeps its descriptor and gains a reference.
    pub fn insert_lookup(&self, parent: Ino, name: &OsStr, fd: OwnedFd, st: &Stat) -> Ino {
        let mut t = self.write();
        let id = match t.foreign.get(&(st.dev, st.ino)) {
            Some(&id) => id,
            None => match Self::native_id(self.root_dev, self.root_ino, st.dev, st.ino) {
                Some(id) => id,
                None => {
                    let id = t.next_synthetic;
                    t.next_synthetic += 1;
                    t.foreign.insert((st.dev, st.ino), id);
                    id
                }
            },
        };
        match t.nodes.get_mut(&id) {
            Some(node) => {
                node.lookups += 1;
                if id != ROOT {
                    node.named(parent, name, st.nlink);
                }
                if node.parked {
                    // The lookup just opened it: keep that descriptor.
                    node.fd = Some(Arc::new(fd));
                    node.parked = false;
                    self.gained_fd(&mut t, id);
                }
            }
            None => {
                t.nodes.insert(
                    id,
                    Node {
                        fd: Some(Arc::new(fd)),
                        parked: false,
                        is_dir: st.is_dir(),
                        parent,
                        name: name.into(),
                        links: Links::default(),
                        lookups: 1,
                        openers: 0,
                        executors: 0,
                        everyone: None,
                        search_changes: 0,
                    },
                );
                self.gained_fd(&mut t, id);
            }
        }
        id
    }

    /// Counts a node's new descriptor and parks the oldest idle ones if over budget.
    fn gained_fd(&self, t: &mut Table, id: Ino) {
        t.open_fds += 1;
        t.fd_order.push_back(id);
        if t.fd_order.len() > 2 * t.open_fds + 1024 {
            // Forgotten nodes leave their entries behind; drop them now and then.
            let nodes = &t.nodes;
            t.fd_order
                .retain(|i| nodes.get(i).is_some_and(|n| n.fd.is_some()));
        }
        if t.open_fds <= self.fd_budget {
            return;
        }
        // Park down to 7/8 of the budget at once, so the scan is paid once per many lookups.
        let target = self.fd_budget - self.fd_budget / 8;
        let mut left = t.fd_order.len();
        while t.open_fds > target && left > 0 {
            left -= 1;
            let Some(cand) = t.fd_order.pop_front() else {
                break;
            };
            let Some(n) = t.nodes.get_mut(&cand) else {
                continue; // forgotten meanwhile
            };
            if n.fd.is_none() {
                continue; // parked or evicted meanwhile (a later entry may exist)
            }
            if cand == ROOT || n.is_dir || n.openers > 0 || n.name.is_empty() {
                // Directories anchor every reopen, open files need theirs, and an unlinked
                // file has no name to be opened by: these stay, at the back of the line.
                t.fd_order.push_back(cand);
                continue;
            }
            n.fd = None;
            n.parked = true;
            t.open_fds -= 1;
        }
    }

    /// Where a node's inode is, and whether it is a directory; `None` if unknown.
    pub fn slot(&self, id: Ino) -> Option<(Slot, bool)> {
        let t = self.read();
        let n = t.nodes.get(&id)?;
        let slot = match (&n.fd, n.parked) {
            (Some(fd), _) => Slot::Fd(Arc::clone(fd)),
            (None, false) => Slot::Remote,
            (None, true) => Slot::Parked {
                parent: n.parent,
                name: n.name.clone().into(),
            },
        };
        Some((slot, n.is_dir))
    }

    /// Gives a parked node the descriptor just opened for it (the caller checked it is the
    /// same inode). Returns the node's descriptor: this one, or one another thread stored
    /// first; `None` if the node is gone or no longer parked without a descriptor.
    pub fn unpark(&self, id: Ino, fd: OwnedFd) -> Option<Arc<OwnedFd>> {
        let mut t = self.write();
        let n = t.nodes.get_mut(&id)?;
        if let Some(have) = &n.fd {
            return Some(Arc::clone(have));
        }
        if !n.parked {
            return None;
        }
        let fd = Arc::new(fd);
        n.fd = Some(Arc::clone(&fd));
        n.parked = false;
        self.gained_fd(&mut t, id);
        Some(fd)
    }

    /// Sets the descriptor budget (before the table is shared).
    pub fn set_fd_budget(&mut self, budget: usize) {
        self.fd_budget = budget.max(1);
    }

    /// Nodes holding a descriptor (the root excluded).
    pub fn open_fds(&self) -> usize {
        self.read().open_fds
    }

    /// Records a lookup that found `name` in `parent` only in the bucket. The id is derived from
    /// the path (so `readdir` can report the same number without a lookup) and lives in the
    /// synthetic range; on the rare collision the next free id is taken.
    pub fn insert_remote(&self, parent: Ino, name: &OsStr, path: &Path) -> Ino {
        let mut t = self.write();
        let mut id = remote_id(path);
        loop {
            match t.nodes.get_mut(&id) {
                Some(n)
                    if n.fd.is_none() && !n.parked && n.parent == parent && *n.name == *name =>
                {
                    n.lookups += 1;
                    return id;
                }
                Some(_) => id = SYNTHETIC_BASE + (id - SYNTHETIC_BASE + 1) % (1 << 61),
                None => break,
            }
        }
        t.nodes.insert(
            id,
            Node {
                fd: None,
                parked: false,
                is_dir: false,
                parent,
                name: name.into(),
                links: Links::default(),
                lookups: 1,
                openers: 0,
                executors: 0,
                everyone: None,
                search_changes: 0,
            },
        );
        id
    }

    /// The node of a bucket-only entry, if the kernel knows it.
    pub fn find_remote(&self, parent: Ino, name: &OsStr, path: &Path) -> Option<Ino> {
        let t = self.read();
        let mut id = remote_id(path);
        loop {
            let n = t.nodes.get(&id)?;
            if n.parent == parent && *n.name == *name {
                return Some(id);
            }
            id = SYNTHETIC_BASE + (id - SYNTHETIC_BASE + 1) % (1 << 61);
        }
    }

    /// A bucket-only node's file is local now: give the node its descriptor, and make the
    /// local inode map to this id while the node lives.
    pub fn attach(&self, id: Ino, fd: OwnedFd, st: &Stat) -> Option<Arc<OwnedFd>> {
        let mut t = self.write();
        let node = t.nodes.get_mut(&id)?;
        if let Some(fd) = &node.fd {
            return Some(Arc::clone(fd));
        }
        let fd = Arc::new(fd);
        node.fd = Some(Arc::clone(&fd));
        node.parked = false;
        t.foreign.insert((st.dev, st.ino), id);
        self.gained_fd(&mut t, id);
        Some(fd)
    }

    /// Before a local file is evicted to the bucket: the node of that inode (if the kernel knows
    /// it) forgets its descriptor and becomes bucket-only, unless the file is open. Returns
    /// whether the eviction may go ahead.
    pub fn detach_if_idle(&self, dev: u64, ino: u64) -> bool {
        let mut t = self.write();
        let id = match t.foreign.get(&(dev, ino)) {
            Some(&id) => Some(id),
            None => Self::native_id(self.root_dev, self.root_ino, dev, ino),
        };
        let Some(id) = id else { return true };
        match t.nodes.get_mut(&id) {
            Some(n) if n.openers > 0 || n.is_dir => false,
            Some(n) => {
                let had_fd = n.fd.take().is_some();
                n.parked = false;
                if had_fd {
                    t.open_fds -= 1;
                }
                t.foreign.remove(&(dev, ino));
                true
            }
            None => true,
        }
    }

    /// Forgets the descriptor of a node whose local file was evicted behind its back (found
    /// unlinked at open): it is bucket-only again.
    pub fn make_remote(&self, id: Ino) {
        let mut t = self.write();
        if let Some(n) = t.nodes.get_mut(&id) {
            let had_fd = n.fd.take().is_some();
            n.parked = false;
            if had_fd {
                t.open_fds -= 1;
            }
        }
    }

    /// Whether a node is a directory, and what is known about who may search it; `None` if
    /// the node is unknown.
    pub fn search(&self, id: Ino) -> Option<(bool, Search)> {
        self.read().nodes.get(&id).map(|n| {
            let search = Search {
                everyone: n.everyone,
                changes: n.search_changes,
            };
            (n.is_dir, search)
        })
    }

    /// Keeps `everyone` as the answer for a directory, unless it changed since `seen`.
    pub fn searched(&self, id: Ino, seen: Search, everyone: bool) {
        if let Some(n) = self.write().nodes.get_mut(&id) {
            if n.search_changes == seen.changes {
                n.everyone = Some(everyone);
            }
        }
    }

    /// A directory's mode, owner or ACL changed: who may search it is to be found out again.
    pub fn search_changed(&self, id: Ino) {
        if let Some(n) = self.write().nodes.get_mut(&id) {
            n.everyone = None;
            n.search_changes = n.search_changes.wrapping_add(1);
        }
    }

    /// The names in directory `dir` of the nodes the kernel knows (every name of a file with
    /// several links): the names it may have cached.
    pub fn names_in(&self, dir: Ino) -> Vec<OsString> {
        let t = self.read();
        let mut out = Vec::new();
        for n in t.nodes.values() {
            if n.parent == dir && !n.name.is_empty() {
                out.push(n.name.clone().into());
            }
            out.extend(
                n.links
                    .iter()
                    .filter(|(p, _)| *p == dir)
                    .map(|(_, n)| n.clone().into()),
            );
        }
        out
    }

    /// Drops `n` lookup references; removes the node when none remain.
    pub fn forget(&self, id: Ino, n: u64) {
        if id == ROOT {
            return;
        }
        let mut t = self.write();
        let gone = match t.nodes.get_mut(&id) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0
            }
            None => false,
        };
        if gone {
            if let Some(Node { fd: Some(_), .. }) = t.nodes.remove(&id) {
                t.open_fds -= 1;
            }
            if id >= SYNTHETIC_BASE {
                t.foreign.retain(|_, v| *v != id);
            }
        }
    }

    /// Runs `f` on a node under the write lock.
    pub fn with_node<R>(&self, id: Ino, f: impl FnOnce(&mut Node) -> R) -> Option<R> {
        self.write().nodes.get_mut(&id).map(f)
    }

    /// Moves the name `old_name` in `old_parent` of a node to a new place in the tree after a
    /// successful rename.
    pub fn renamed(
        &self,
        id: Ino,
        (old_parent, old_name): (Ino, &OsStr),
        (new_parent, new_name): (Ino, &OsStr),
    ) {
        let mut t = self.write();
        let Some(node) = t.nodes.get_mut(&id) else {
            return;
        };
        let old = |(p, n): &Link| *p == old_parent && **n == *old_name;
        let new: Link = (new_parent, new_name.into());
        // A name the rename replaced is gone (a name of this very file included).
        node.links
            .retain(|(p, n)| !(*p == new_parent && **n == *new_name));
        if let Some(link) = node.links.iter_mut().find(|l| old(l)) {
            *link = new;
        } else if node.is_primary(old_parent, old_name) || node.links.is_empty() {
            (node.parent, node.name) = new;
        } else {
            // A name of it the kernel never showed us (it always does, but a name we do not
            // know is still a name).
            node.links.push(new);
        }
    }

    /// Forgets a removed name of a node. Its primary name passes to another known link, if it
    /// has one; otherwise the node has no name any more.
    pub fn unlinked(&self, id: Ino, parent: Ino, name: &OsStr) {
        if let Some(node) = self.write().nodes.get_mut(&id) {
            if node.is_primary(parent, name) {
                (node.parent, node.name) =
                    node.links.pop().unwrap_or((node.parent, Box::default()));
            } else {
                node.links.retain(|(p, n)| !(*p == parent && **n == *name));
            }
        }
    }

    /// The node's path (its primary name) relative to the served directory, or `None` if it
    /// (or a parent) has no name any more.
    pub fn path(&self, id: Ino) -> Option<PathBuf> {
        let t = self.read();
        if id == ROOT {
            return Some(PathBuf::new());
        }
        let node = t.nodes.get(&id)?;
        Self::path_in(&t, node.parent, &node.name)
    }

    /// Every path of the node the kernel knows, the primary one first: one for anything but a
    /// file with several hard links.
    pub fn paths(&self, id: Ino) -> Vec<PathBuf> {
        let t = self.read();
        if id == ROOT {
            return vec![PathBuf::new()];
        }
        let Some(node) = t.nodes.get(&id) else {
            return Vec::new();
        };
        std::iter::once((node.parent, &node.name))
            .chain(node.links.iter().map(|(p, n)| (*p, n)))
            .filter_map(|(p, n)| Self::path_in(&t, p, n))
            .collect()
    }

    /// The path of `name` in the directory node `parent`, if both still have a place.
    fn path_in(t: &Table, mut parent: Ino, name: &OsStr) -> Option<PathBuf> {
        if name.is_empty() {
            return None;
        }
        let mut parts = vec![name];
        while parent != ROOT {
            let node = t.nodes.get(&parent)?;
            if node.name.is_empty() {
                return None;
            }
            parts.push(&node.name);
            parent = node.parent;
        }
        Some(parts.iter().rev().collect())
    }

    /// Number of nodes the kernel currently knows (root included).
    pub fn len(&self) -> usize {
        self.read().nodes.len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        // A panic while holding the lock leaves plain data behind, still consistent enough to
        // keep serving; poisoning would turn one bug into a dead mount.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A stable id for a bucket-only path (SipHash with fixed keys, in the synthetic range).
fn remote_id(path: &Path) -> Ino {
    use std::hash::{Hash, Hasher};
    #[allow(deprecated)] // SipHasher with fixed keys: stable across runs, which is the point
    let mut h = std::hash::SipHasher::new();
    path.hash(&mut h);
    SYNTHETIC_BASE + h.finish() % (1 << 61)
}

/// The id `readdir` reports for a bucket-only entry (the one a lookup will give it).
pub fn remote_dir_entry_id(path: &Path) -> Ino {
    remote_id(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Box<OsStr> {
        OsStr::new(s).into()
    }

    /// The table's nodes are what a `find` over 100,000 files spends its memory on.
    #[test]
    fn a_node_stays_small() {
        assert!(
            std::mem::size_of::<Node>() <= 64,
            "{}",
            std::mem::size_of::<Node>()
        );
    }

    /// Links allocate only while there are some, and give back what was pushed.
    #[test]
    fn links_hold_nothing_when_empty() {
        let mut l = Links::default();
        assert!(l.is_empty() && l.iter().next().is_none() && l.pop().is_none());
        l.push((2, name("a")));
        l.push((3, name("b")));
        for (p, _) in l.iter_mut() {
            *p += 10;
        }
        l.retain(|(p, _)| *p == 12);
        assert_eq!(l.iter().collect::<Vec<_>>(), [&(12, name("a"))]);
        assert_eq!(l.pop(), Some((12, name("a"))));
        assert!(l.is_empty() && l.0.is_none());
        l.push((4, name("c")));
        l.retain(|_| false);
        assert!(l.0.is_none());
        l.push((5, name("d")));
        l.clear();
        assert!(l.is_empty());
    }
}
