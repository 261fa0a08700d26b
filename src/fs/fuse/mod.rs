//! Links fuser's `Filesystem` callbacks to the overlay core in [`crate::fs::overlay`].
//!
//! This is the only module that sees fuser's `Request` and `Reply*` types. Each callback
//! ([`callbacks`]) unpacks the request, calls one `Overlay` method and turns the result into a
//! reply ([`reply`]); every error goes through `fail!`, which logs at the error's level and
//! replies with its errno. A request that needs a bucket-only file is parked until the
//! download lands, without holding a FUSE thread ([`park`]).
//!
//! Where etlfs checks permissions itself (no `default_permissions`, see
//! [`crate::os::creds`]), each request that the filesystem underneath must check runs its
//! overlay call for the request's caller ([`permissions`]), and names are cached by the kernel
//! only where everyone may search.
//!
//! It also owns the kernel-facing fast path ([`passthrough`]). With FUSE passthrough (Linux ≥
//! 6.9, real root), an opened local file is registered as the *backing file* of the FUSE file,
//! and the kernel then serves `read`, `write` and `mmap` straight from the disk underneath
//! without calling us. Attributes of an inode with a passthrough handle open for writing are
//! given to the kernel without a cache validity (see [`Core::attr_ttl`]); every other reply
//! keeps [`TTL`].

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::fs::overlay::Overlay;

/// How long the kernel may cache names and attributes. Every change to the served directory
/// goes through this mount (it hides the directory underneath), and the kernel updates its
/// caches on the operations it sends us, so a long validity is safe; it is what makes a
/// repeated `stat` as cheap as on the native disk. The one change the kernel does not see is
/// a write through a shared mapping of a passthrough file (see [`Core::attr_ttl`]).
const TTL: Duration = Duration::from_secs(60);

/// Logs a failed request at the error's level and replies with its errno.
macro_rules! fail {
    ($reply:expr, $op:literal, $err:expr) => {{
        let err: $crate::fs::overlay::OverlayError = $err;
        if err.is_expected() {
            tracing::debug!(op = $op, error = %err, "request failed");
        } else {
            tracing::warn!(op = $op, error = %err, "request failed");
        }
        $reply.error(fuser::Errno::from_i32(err.errno()))
    }};
}

mod callbacks;
mod park;
mod passthrough;
mod permissions;
mod reply;

pub use permissions::checks_permissions;

use passthrough::BackingCache;

/// Startup options for the FUSE layer.
#[derive(Debug, Clone, Copy)]
pub struct FuseOptions {
    /// Try kernel passthrough for local files.
    pub passthrough: bool,
    /// Serve extended attributes; without, every xattr request is answered ENOSYS.
    pub xattrs: bool,
    /// How long a request waiting for a download waits for a bucket that delivers nothing
    /// (`None`: as long as it takes).
    pub fetch_timeout: Option<Duration>,
}

/// The `fuser::Filesystem` over an [`Overlay`].
#[derive(Debug)]
pub struct EtlFs {
    core: Arc<Core>,
}

/// The state of the FUSE layer, shared with the tasks that answer parked requests.
#[derive(Debug)]
pub struct Core {
    overlay: Arc<Overlay>,
    /// Shared with `/metrics`, which shows whether passthrough is (still) on.
    passthrough: Arc<AtomicBool>,
    backing: Mutex<BackingCache>,
    /// Opens and releases of passthrough handles with write access so far, and how many are
    /// open now (see [`Core::attr_ttl`]).
    write_events: AtomicU64,
    writers_open: AtomicU64,
    xattrs: bool,
    /// Requests parked until a download lands (see [`park`]); shared with `/metrics`.
    parked: Arc<AtomicU64>,
    fetch_timeout: Option<Duration>,
    /// Whether etlfs checks permissions (mounted without `default_permissions`).
    checks: bool,
    /// Whether the kernel sends creating requests' modes without the umask (`FUSE_DONT_MASK`).
    dont_mask: AtomicBool,
    /// Whether a request with an unknown caller was refused yet (said once at `warn`).
    refused_unknown: AtomicBool,
    /// How to tell the kernel to drop names it cached, once the session exists.
    notifier: Arc<OnceLock<fuser::Notifier>>,
    /// The thread that does so (see [`permissions`]), started at its first use.
    expirer: Mutex<Option<std::sync::mpsc::Sender<permissions::Expire>>>,
}

impl std::ops::Deref for EtlFs {
    type Target = Arc<Core>;

    fn deref(&self) -> &Arc<Core> {
        &self.core
    }
}

impl EtlFs {
    pub fn new(overlay: Arc<Overlay>, opts: FuseOptions) -> Self {
        EtlFs {
            core: Arc::new(Core {
                overlay,
                passthrough: Arc::new(AtomicBool::new(opts.passthrough)),
                backing: Mutex::new(BackingCache::default()),
                write_events: AtomicU64::new(0),
                writers_open: AtomicU64::new(0),
                xattrs: opts.xattrs,
                parked: Arc::new(AtomicU64::new(0)),
                fetch_timeout: opts.fetch_timeout,
                checks: checks_permissions(),
                dont_mask: AtomicBool::new(false),
                refused_unknown: AtomicBool::new(false),
                notifier: Arc::new(OnceLock::new()),
                expirer: Mutex::new(None),
            }),
        }
    }

    /// Where the session's notifier goes once the session exists: etlfs uses it to make the
    /// kernel drop cached names that not everyone may use any more.
    pub fn notifier_slot(&self) -> Arc<OnceLock<fuser::Notifier>> {
        Arc::clone(&self.notifier)
    }

    /// Whether FUSE passthrough is on: the requested mode until the kernel's INIT, then the
    /// mode in use (it turns off for good if the kernel refuses a backing file).
    pub fn passthrough_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.passthrough)
    }

    /// How many requests wait for a download now.
    pub fn parked_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.parked)
    }
}
