//! Wiring for `etlfs mount`: check the inputs, open the directory, mount, serve, shut down.
//!
//! Order matters and is the point of this module:
//! 1. Validate everything that can be validated without side effects, so that a bad
//!    invocation fails with a clear message and exit code 2 before anything is mounted.
//! 2. Open the served directory (and create the state directory) *before* mounting: once the
//!    mount covers the directory, its path leads back into etlfs.
//! 3. Mount and run the FUSE session on its own threads; the main thread waits for SIGTERM or
//!    SIGINT, or for the session to end because someone ran `umount`.
//! 4. On a signal, unmount. If the mount is busy (an application still has a file open or its
//!    cwd inside), detach it lazily: it disappears from the namespace at once, and etlfs keeps
//!    serving the open files until the last one is closed, rather than leaving a dead mount.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;

use anyhow::Context;
use fuser::{Config, MountOption, SessionACL};
use tracing::{info, warn};

use crate::cli::args::MountArgs;
use crate::cli::{DEFAULT_STATE_DIR, UsageError, check_dir, open_bucket};
use crate::core::{Core, CoreOptions};
use crate::engine::fetch::Fetcher;
use crate::engine::index::Index;
use crate::engine::mirror::{Mirror, MirrorOptions};
use crate::engine::recover::{apply_intents, apply_journaled_intents, prepare_local_tree};
use crate::escape::esc;
use crate::fs::fuse::{EtlFs, FuseOptions};
use crate::fs::mountopts::{Atime, MountOptions};
use crate::fs::overlay::{Overlay, Policy};
use crate::os::local::LocalDir;
use crate::os::state::StateDir;
use crate::os::sys;
use crate::store::bucket::Bucket;

fn check_fuse_device() -> Result<(), UsageError> {
    let dev = Path::new("/dev/fuse");
    let meta = std::fs::metadata(dev).map_err(|e| UsageError::NoFuseDevice(e.to_string()))?;
    if !meta.file_type().is_char_device() {
        return Err(UsageError::NoFuseDevice("not a character device".into()));
    }
    match sys::access(c"/dev/fuse", libc::R_OK | libc::W_OK) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
            return Err(UsageError::NoPermission(format!(
                "cannot open /dev/fuse: {e}"
            )));
        }
        Err(e) => return Err(UsageError::NoFuseDevice(e.to_string())),
    }
    if sys::geteuid() != 0
        && which::which("fusermount3").is_err()
        && which::which("fusermount").is_err()
    {
        return Err(UsageError::NoPermission(
            "not running as root and no fusermount3 helper is installed".into(),
        ));
    }
    Ok(())
}

/// Validated paths for a mount.
#[derive(Debug)]
struct Plan {
    mountpoint: PathBuf,
    local: PathBuf,
    state_dir: PathBuf,
    /// The state directory relative to `local`, when it lives inside it (and must be hidden).
    hidden: Option<PathBuf>,
}

/// A FUSE mount whose daemon died (SIGKILL, OOM) answers every access with `ENOTCONN` and
/// would stop a restarted etlfs at its first `stat`. Detach it: what it covered is the
/// directory we are about to serve again.
fn clear_dead_mount(path: &Path) {
    let Ok(abs) = std::path::absolute(path) else {
        return;
    };
    // Only an etlfs mount (our FSName), and only if it does not answer: a directory listing
    // needs the daemon (a stat may be served from the kernel's attribute cache).
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let ours = info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-");
        f.get(4) == Some(&abs.to_string_lossy().as_ref())
            && sep.is_some_and(|s| f.get(s + 2).is_some_and(|src| src.starts_with("etlfs:")))
    });
    let dead = ours
        && matches!(std::fs::read_dir(&abs), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN));
    if !dead {
        return;
    }
    warn!(mountpoint = %esc(&abs), "detaching a dead etlfs mount left by a crashed daemon");
    if let Ok(c) = CString::new(abs.as_os_str().as_bytes()) {
        if let Err(e) = sys::umount(&c, true) {
            warn!(error = %e, "could not detach the dead mount");
        }
    }
}

fn plan(args: &MountArgs) -> Result<Plan, UsageError> {
    clear_dead_mount(&args.mountpoint);
    let mountpoint = check_dir("mount point", &args.mountpoint)?;
    let local = match &args.local {
        Some(l) => check_dir("local directory", l)?,
        None => mountpoint.clone(),
    };
    let state_dir = match &args.state_dir {
        Some(s) if s.is_absolute() => s.clone(),
        Some(s) => std::env::current_dir()
            .map_err(|source| UsageError::Inaccessible {
                what: "working directory",
                path: ".".into(),
                source,
            })?
            .join(s),
        None => local.join(DEFAULT_STATE_DIR),
    };
    std::fs::create_dir_all(&state_dir).map_err(|source| UsageError::Inaccessible {
        what: "state directory",
        path: state_dir.clone(),
        source,
    })?;
    let state_dir = check_dir("state directory", &state_dir)?;
    if state_dir == local {
        return Err(UsageError::StateIsRoot { state: state_dir });
    }
    let hidden = state_dir.strip_prefix(&local).ok().map(Path::to_path_buf);
    Ok(Plan {
        mountpoint,
        local,
        state_dir,
        hidden,
    })
}

enum Event {
    Signal(i32),
    SessionEnded(std::io::Result<()>),
}

/// Runs `etlfs mount` until a signal or an external unmount. Returns `Err` with a
/// [`UsageError`] inside for invocation problems (exit code 2).
pub fn mount(args: MountArgs) -> anyhow::Result<()> {
    sys::tune_allocator();
    let as_of = args.as_of();
    let mut options = MountOptions::parse(&args.options).map_err(UsageError::from)?;
    // A point in time is served read-only.
    options.read_only |= as_of.is_some();
    let plan = plan(&args)?;
    check_fuse_device()?;
    // Bound now, served once the runtime exists: an address in use fails before any mount.
    let listener = crate::ops::status::bind(&args.listen).map_err(UsageError::from)?;

    // The kernel's ceiling for RLIMIT_NOFILE; 1 Mi (its default) if unreadable.
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    let fd_limit = match sys::raise_nofile_limit(nr_open) {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, "could not raise the open file limit");
            1024
        }
    };
    let fd_budget = fd_budget(fd_limit)?;
    info!(
        limit = fd_limit,
        budget = fd_budget,
        "open file limit; descriptors held for known files"
    );

    let bucket = open_bucket(args.config.as_deref(), args.prefix.as_deref(), &plan.local)?
        .with_history(args.history());
    let requests = Arc::clone(bucket.requests());
    let bucket_fence = Arc::clone(bucket.fence());
    if as_of.is_some() {
        as_of_checks(&plan.local, &bucket)?;
    }

    // Signal handlers go in first: a SIGTERM while the bucket listing loads must stop us, and
    // one that arrives right after the mount must unmount it, not kill us and leave a dead
    // mount behind.
    let (tx, rx) = mpsc::channel();
    let session_tx = tx.clone();
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT])
        .context("installing signal handlers")?;
    let handle = signals.handle();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(Event::Signal(sig)).is_err() {
                    break;
                }
            }
        })
        .context("starting the signal thread")?;

    let open_local = || {
        LocalDir::open(&plan.local).map_err(|source| UsageError::Inaccessible {
            what: "local directory",
            path: plan.local.clone(),
            source,
        })
    };
    // All opened before the mount covers the directory (the core opens its own).
    let local = open_local()?;
    let walk_local = open_local()?;
    let late_local = open_local()?;
    let late_local_stop = open_local()?;
    let state =
        Arc::new(
            StateDir::open(&plan.state_dir).map_err(|source| UsageError::Inaccessible {
                what: "state directory",
                path: plan.state_dir.clone(),
                source,
            })?,
        );
    if state.dev() != local.root_stat().dev {
        return Err(UsageError::StateOnOtherFilesystem {
            state: plan.state_dir.clone(),
        }
        .into());
    }
    state.clean_temps();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("etlfs-io")
        .enable_all()
        .build()
        .context("starting the I/O runtime")?;
    // Probes answer `starting` while the bucket listing loads, which can take long.
    let status = crate::ops::status::Status::new(
        // Shown by /status, and printed by `etlfs status`.
        esc(&plan.mountpoint).to_string(),
        args.degraded_after,
        Arc::clone(bucket.health()),
        Arc::clone(bucket.fence()),
    );
    crate::ops::status::serve(listener, Arc::clone(&status), rt.handle())
        .map_err(UsageError::from)?;

    // A node stopped cleanly with every file of the bucket local needs nothing from the
    // bucket to serve: if the bucket does not answer at once, it mounts anyway, and lists the
    // bucket (and takes the lease) in the background. See `local_is_complete`. (A bucket
    // that answers is listed before the mount, as at any start.)
    let eligible = as_of.is_none()
        && args.max_local_bytes.is_none()
        && local_is_complete(&state, &local, plan.hidden.as_deref());
    let mut offline = false;
    // Whatever happens now, the next start decides afresh: only a clean stop says it again.
    state.clear_complete();
    // The lease the mount holds, once it has it (an offline start takes it later).
    let lease_slot: LeaseSlot = Arc::new(std::sync::Mutex::new(None));
    let mut late_lease = None;

    // One writer per prefix: the lease first, so that a second mount is refused before it
    // shows anything or writes anything.
    let lease = match &args.lease() {
        // It writes nothing: no lease to take (whose renewal would lift the fence).
        _ if as_of.is_some() => None,
        None => {
            warn!("--no-lease: nothing stops a second etlfs from writing this prefix too");
            None
        }
        Some(l) => {
            let holder = crate::engine::lease::Holder {
                writer: state
                    .writer_id()
                    .map_err(|source| UsageError::Inaccessible {
                        what: "state directory",
                        path: plan.state_dir.clone(),
                        source,
                    })?,
                serving: plan.mountpoint.display().to_string(),
                period: l.period,
            };
            // Offline: one quick try (a live holder is refused as usual), else later.
            let quick = if eligible {
                let mut acquire = crate::engine::lease::Acquire::new(holder.clone(), l.takeover);
                let probe =
                    async { tokio::time::timeout(OFFLINE_PROBE, acquire.attempt(&bucket)).await };
                match rt.block_on(probe) {
                    Ok(Ok(Some(lease))) => Some(Some(lease)),
                    Ok(Err(e)) if e.is_usage() => {
                        return Err(UsageError::Lease(Box::new(e)).into());
                    }
                    // Held: watched until it is renewed or expires, as at any start.
                    Ok(Ok(None)) => None,
                    Ok(Err(_)) | Err(_) => Some(None),
                }
            } else {
                None
            };
            match quick {
                Some(Some(lease)) => Some(lease),
                Some(None) => {
                    offline = true;
                    bucket.fence().raise(
                        "started offline: uploads wait until the bucket answers and the lease \
                         is taken"
                            .into(),
                    );
                    late_lease = Some(rt.spawn(take_lease_later(
                        bucket.clone(),
                        holder,
                        l.takeover,
                        Arc::clone(&lease_slot),
                    )));
                    None
                }
                None => {
                    let Some(lease) = take_lease(&rt, &bucket, holder, l.takeover, &rx)? else {
                        return Ok(());
                    };
                    Some(lease)
                }
            }
        }
    };
    if eligible && args.lease().is_none() {
        // No lease to try: one small read tells whether the bucket answers.
        let probe = async {
            tokio::time::timeout(
                OFFLINE_PROBE,
                bucket.get_reserved(crate::engine::lease::LEASE),
            )
            .await
        };
        offline = !matches!(rt.block_on(probe), Ok(Ok(_)));
    }
    if let Some(lease) = lease {
        let lease = Arc::new(lease);
        let keeper = rt.spawn(Arc::clone(&lease).keep());
        *lease_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((lease, keeper));
    }
    // After the lease: garbage collection deletes, so it is a writer too (and fenced like one).
    if as_of.is_none() {
        rt.spawn(crate::store::bucket::history::gc_loop(bucket.clone()));
    }
    status.watch_history(Arc::clone(bucket.history_stats()));

    // The mount is only useful once it can show what the bucket holds: an application that
    // found an empty directory might rebuild its data and overwrite good backups. So wait for
    // the listing, retrying, until it loads or we are told to stop.
    let loaded = match as_of {
        Some(t) => Some(
            rt.block_on(crate::engine::as_of::index_at(&bucket, t))
                .context("reading the point in time")?,
        ),
        None if offline => {
            info!(
                "the local directory was complete at the last clean stop: mounting at once; \
                 the bucket listing loads in the background"
            );
            status.set_listing(crate::ops::status::LISTING_BACKGROUND);
            Some(Index::awaiting_listing())
        }
        None => load_index(&rt, &bucket, &rx)?,
    };
    let Some(index) = loaded else {
        return Ok(());
    };
    if let Some(max) = args.max_local_bytes {
        info!(
            max_local_bytes = max,
            "local disk bounded: clean files are evicted to the bucket"
        );
    }
    let Core {
        index,
        mirror,
        fetcher,
        overlay,
        local_bytes,
    } = Core::open(
        bucket,
        &plan.local,
        Arc::clone(&state),
        &plan.state_dir,
        index,
        CoreOptions {
            hidden: plan.hidden.clone(),
            mirror: MirrorOptions {
                upload_delay: args.upload_delay,
                upload_max_delay: args.upload_max_delay,
                concurrency: args.upload_concurrency.max(1),
                nothing_local: false,
            },
            fetch_concurrency: args.fetch_concurrency,
            policy: Policy {
                read_only: options.read_only,
                noatime_files: options.atime == Atime::Never,
                noatime_dirs: options.dirs_noatime(),
            },
            fd_budget: Some(fd_budget),
            max_local_bytes: args.max_local_bytes,
        },
        rt.handle(),
    )?;
    if args.max_local_bytes.is_none() {
        // With --max-local-bytes the overlay keeps a live count; otherwise a periodic walk.
        rt.spawn(count_local_bytes(
            walk_local,
            plan.hidden.clone(),
            Arc::clone(&local_bytes),
        ));
    }
    if !offline {
        info!(
            bucket_only_files = index.len(),
            refused_keys = index.refused(),
            "bucket listing loaded"
        );
    }
    // A new node, or a lost volume: copy everything back in the background. Not for a point
    // in time, which is for looking at, not for running on.
    if args.prefetch() && as_of.is_none() && !index.is_empty() {
        rt.spawn(Arc::clone(&fetcher).prefetch());
    }
    if offline {
        mirror.record_done_intents();
        rt.spawn(load_index_later(LateListing {
            index: Arc::clone(&index),
            mirror: Arc::clone(&mirror),
            fetcher: Arc::clone(&fetcher),
            state: Arc::clone(&state),
            local: late_local,
            hidden: plan.hidden.clone(),
            status: Arc::clone(&status),
            prefetch: args.prefetch(),
        }));
    }
    let fs = EtlFs::new(
        Arc::clone(&overlay),
        FuseOptions {
            passthrough: args.passthrough(),
            xattrs: args.xattrs,
            fetch_timeout: args.fetch_timeout(),
        },
    );
    status.attach(crate::ops::status::Sources {
        mirror: Arc::clone(&mirror),
        fetcher: Arc::clone(&fetcher),
        index: Arc::clone(&index),
        evictions: overlay.evictions(),
        passthrough: fs.passthrough_flag(),
        local_bytes,
        requests,
        parked: fs.parked_counter(),
    });

    let mut config = Config::default();
    config.mount_options = fuser_options(&plan.local, &options);
    config.acl = SessionACL::All;
    config.n_threads = Some(args.threads.max(1));
    config.clone_fd = true;

    let session = fuser::Session::new(fs, &plan.mountpoint, &config).map_err(|e| {
        if e.raw_os_error() == Some(libc::EPERM) || e.kind() == std::io::ErrorKind::PermissionDenied
        {
            anyhow::Error::from(UsageError::NoPermission(format!(
                "mounting {}: {e}",
                esc(&plan.mountpoint)
            )))
        } else {
            anyhow::Error::from(e).context(format!("mounting {}", esc(&plan.mountpoint)))
        }
    })?;
    info!(
        mountpoint = %esc(&plan.mountpoint),
        local = %esc(&plan.local),
        state_dir = %esc(&plan.state_dir),
        threads = args.threads,
        read_only = options.read_only,
        atime = ?options.atime,
        "mounted"
    );
    status.set_ready();

    let session_thread = thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let res = session.run();
            let _ = session_tx.send(Event::SessionEnded(res));
        })
        .context("starting the FUSE session")?;

    let stopping = match rx.recv() {
        Ok(Event::Signal(sig)) => {
            info!(
                signal = sig,
                "shutting down: unmounting and uploading what is pending"
            );
            Stop::Signal
        }
        Ok(Event::SessionEnded(res)) => {
            info!("unmounted from outside");
            Stop::Ended(res)
        }
        Err(_) => Stop::Ended(Ok(())),
    };
    status.set_draining();
    // An offline start that has not got the lease by now will not get it.
    if let Some(late) = late_lease.take() {
        late.abort();
    }
    let lease = lease_slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    // Nothing can be uploaded once the lease is lost (another node writes the prefix), or
    // while writes are fenced for another reason (an offline start that never got the lease);
    // a point in time uploads nothing at all.
    let may_upload = as_of.is_none()
        && !lease.as_ref().is_some_and(|(l, _)| l.lost())
        && bucket_fence.reason().is_none();
    let deadline = std::time::Instant::now() + args.drain_timeout;
    let ended = match stopping {
        Stop::Ended(res) => Some(res),
        Stop::Signal => {
            // The drain starts now, while the kernel lets go of the mount: a session that
            // outlives the unmount (files still open, copies of the mount in other mount
            // namespaces) must not eat the drain's time.
            let mountpoint = plan.mountpoint.clone();
            let _ = thread::Builder::new()
                .name("unmount".into())
                .spawn(move || unmount(&mountpoint));
            let early = may_upload.then(|| {
                let mirror = Arc::clone(&mirror);
                let timeout = args.drain_timeout;
                rt.spawn(async move { mirror.drain(timeout).await })
            });
            let ended = wait_session(&rx, &overlay, deadline + SESSION_GRACE);
            if let Some(early) = early {
                let _ = rt.block_on(early);
            }
            ended
        }
    };
    if ended.is_some() {
        let _ = session_thread.join();
    }
    // The session is over (or abandoned: no file is open through it), so every file is
    // closed; handles the kernel never released (the RELEASE of a close during a lazy detach
    // can be dropped with the connection) are released now, so that the drain uploads what
    // was written through them.
    let orphaned = overlay.release_all();
    if orphaned > 0 {
        info!(
            handles = orphaned,
            "released the handles the kernel closed without telling us"
        );
    }
    handle.close();
    // Upload what is still pending within what is left of the deadline. What is left after it
    // stays in the journal and is found by the reconcile at the next start.
    let pending = crate::engine::mirror::Stats::get(&mirror.stats().pending);
    if as_of.is_some() {
        // The files fetched from a point in time look new to the mirror; none may be uploaded.
        info!("a point-in-time mount uploads nothing");
    } else if !may_upload || lease.as_ref().is_some_and(|(l, _)| l.lost()) {
        // Another node writes the prefix now (or we never got the lease); ours stay in the
        // journal and the upload records.
        if lease.as_ref().is_some_and(|(l, _)| l.lost()) {
            warn!(
                pending,
                "the lease was lost: nothing is uploaded; the changes stay on the local disk"
            );
        } else {
            warn!(
                pending,
                reason = bucket_fence.reason().unwrap_or_default(),
                "writes to the bucket are stopped: nothing is uploaded; the changes stay on the local disk"
            );
        }
    } else {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        info!(pending, left = ?left, "draining pending uploads");
        if rt.block_on(mirror.drain(left)) {
            info!("all changes are in the bucket");
        } else {
            warn!(
                pending = crate::engine::mirror::Stats::get(&mirror.stats().pending),
                "drain timed out; the rest is uploaded at the next start"
            );
        }
    }
    // The next start may mount at once if every file of the bucket is local now.
    // (Never for a point in time, whose directory must not be mounted normally, nor with
    // --max-local-bytes, which makes files bucket-only by design.)
    if as_of.is_none() && args.max_local_bytes.is_none() {
        record_completeness(
            &state,
            &late_local_stop,
            plan.hidden.as_deref(),
            &index,
            &status,
        );
    }
    if let Some((lease, keeper)) = lease {
        // No renewal may run while the lease is let go.
        keeper.abort();
        let _ = rt.block_on(keeper);
        rt.block_on(lease.release());
    }
    match ended {
        // After an unmount (above all a lazy one), the kernel may end the connection by
        // aborting it rather than closing it; the session is over either way.
        Some(Err(e)) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
            info!("the kernel closed the FUSE connection")
        }
        Some(other) => other.context("FUSE session failed")?,
        // Exiting closes our end of the connection: the kernel aborts it, and a copy of the
        // mount elsewhere answers ENOTCONN from then on.
        None => info!("leaving the FUSE session that outlived the unmount; exiting ends it"),
    }
    info!(open_handles = overlay.open_handles(), "stopped cleanly");
    // A download stalled in a blocking read (a FILESYSTEM bucket on a hung disk) must not keep
    // the process from exiting.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// The kernel's mount options for `-o` `options`. Always: the source shown in the mount
/// table, `default_permissions` (the kernel checks modes, as on the disk underneath), and
/// `nosuid`/`nodev` unless `suid`/`dev` were asked for. `strictatime` and `nodiratime` have
/// no fuser counterpart, and nothing to do in the kernel anyway (it leaves a FUSE file's
/// access time to the filesystem): the mount table shows the kernel's default, `relatime`.
fn fuser_options(local: &Path, options: &MountOptions) -> Vec<MountOption> {
    let mut out = vec![
        MountOption::FSName(format!("etlfs:{}", local.display())),
        MountOption::Subtype("etlfs".into()),
        MountOption::DefaultPermissions,
    ];
    let flags = [
        (options.read_only, MountOption::RO),
        (options.suid, MountOption::Suid),
        (!options.suid, MountOption::NoSuid),
        (options.dev, MountOption::Dev),
        (!options.dev, MountOption::NoDev),
        (!options.exec, MountOption::NoExec),
        (options.sync, MountOption::Sync),
        (options.dirsync, MountOption::DirSync),
        (options.atime == Atime::Never, MountOption::NoAtime),
    ];
    out.extend(flags.into_iter().filter(|(on, _)| *on).map(|(_, o)| o));
    out
}

/// A point-in-time mount fetches into the served directory, which must hold nothing that
/// would hide the point in time; and it never writes the bucket (the fence stops every write,
/// whatever the mirror attempts).
fn as_of_checks(local: &Path, bucket: &Bucket) -> Result<(), UsageError> {
    let inaccessible = |source| UsageError::Inaccessible {
        what: "local directory",
        path: local.to_owned(),
        source,
    };
    for e in std::fs::read_dir(local).map_err(inaccessible)? {
        if e.map_err(inaccessible)?.file_name() != DEFAULT_STATE_DIR {
            return Err(UsageError::AsOfNotEmpty(local.to_owned()));
        }
    }
    bucket
        .fence()
        .raise("a point-in-time mount (--as-of) is read-only and never writes the bucket".into());
    Ok(())
}

/// Waits for the FUSE session to end after the unmount. It may not: files still open through
/// the mount keep it, and so do copies of the mount in other mount namespaces (a container,
/// `unshare -m`, a service with a private /tmp), which no unmount here can reach. So this says
/// what keeps it every few seconds, and gives up at `give_up` once no file is open through it
/// (`None`: the session was abandoned; exiting ends it). An application with a file still open
/// is not cut off: it may still be writing, and the wait goes on until it closes.
fn wait_session(
    rx: &mpsc::Receiver<Event>,
    overlay: &Overlay,
    give_up: std::time::Instant,
) -> Option<std::io::Result<()>> {
    let mut next_note = std::time::Instant::now() + SESSION_NOTE_EVERY;
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(Event::SessionEnded(res)) => return Some(res),
            Ok(Event::Signal(sig)) => info!(signal = sig, "already stopping"),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Some(Ok(())),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let now = std::time::Instant::now();
        let open = overlay.open_handles();
        if now >= give_up && open == 0 {
            return None;
        }
        if now >= next_note {
            next_note = now + SESSION_NOTE_EVERY;
            warn!(
                open_files = open,
                "the FUSE session outlives the unmount: files are still open through it, or \
                 copies of the mount exist in other mount namespaces (containers, unshare); \
                 etlfs exits once the drain is over and no file is open"
            );
        }
    }
}

/// How often [`wait_session`] says what keeps the session.
const SESSION_NOTE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// How long after the drain deadline a session that outlives the unmount is still waited for.
const SESSION_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// What ended the serving.
enum Stop {
    Signal,
    Ended(std::io::Result<()>),
}

/// Unmounts; a busy mount is detached lazily instead of failing.
fn unmount(mountpoint: &Path) {
    let Ok(path) = CString::new(mountpoint.as_os_str().as_bytes()) else {
        return;
    };
    match sys::umount(&path, false) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            warn!(
                mountpoint = %esc(mountpoint),
                "mount is busy; detaching it lazily: it is gone from the namespace now and \
                 etlfs serves the files still open until they are closed"
            );
            if let Err(e) = sys::umount(&path, true) {
                warn!(error = %e, "lazy unmount failed");
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // Not mounted any more (someone unmounted it first): the session ends by itself.
        }
        Err(e) => warn!(error = %e, "unmount failed"),
    }
}

/// Waits `d` before a retry at start; `true` if a signal (or the end of the signal thread)
/// asked us to stop meanwhile.
fn stopped_while_waiting(signals: &mpsc::Receiver<Event>, d: std::time::Duration) -> bool {
    match signals.recv_timeout(d) {
        Ok(Event::Signal(sig)) => {
            info!(signal = sig, "stopping before the mount");
            true
        }
        Ok(Event::SessionEnded(_)) | Err(mpsc::RecvTimeoutError::Timeout) => false,
        Err(mpsc::RecvTimeoutError::Disconnected) => true,
    }
}

/// Takes the lease, retrying with backoff while the bucket is unreachable. `None` if a signal
/// asked us to stop first; a live holder, an unreadable lease or a bucket without conditional
/// writes is a [`UsageError`] (exit code 2).
fn take_lease(
    rt: &tokio::runtime::Runtime,
    bucket: &Bucket,
    holder: crate::engine::lease::Holder,
    takeover: bool,
    signals: &mpsc::Receiver<Event>,
) -> anyhow::Result<Option<crate::engine::lease::Lease>> {
    let mut acquire = crate::engine::lease::Acquire::new(holder, takeover);
    let mut wait = std::time::Duration::from_millis(500);
    loop {
        let next = match rt.block_on(acquire.attempt(bucket)) {
            Ok(Some(lease)) => return Ok(Some(lease)),
            Ok(None) => acquire.watch_interval(),
            Err(e) if e.is_usage() => return Err(UsageError::Lease(Box::new(e)).into()),
            Err(e) => {
                if e.is_outage() {
                    bucket.health().failure();
                }
                warn!(error = %e, retry_in = ?wait, "cannot take the lease yet; the mount waits for the bucket");
                let w = wait;
                wait = (wait * 2).min(std::time::Duration::from_secs(30));
                w
            }
        };
        if stopped_while_waiting(signals, next) {
            return Ok(None);
        }
    }
}

/// How long an offline start tries the bucket (for the lease) before it mounts without it.
const OFFLINE_PROBE: std::time::Duration = std::time::Duration::from_secs(1);

/// The lease of a mount once taken, and its renewal task.
type LeaseSlot = Arc<
    std::sync::Mutex<
        Option<(
            Arc<crate::engine::lease::Lease>,
            tokio::task::JoinHandle<()>,
        )>,
    >,
>;

/// Whether the local directory needs nothing from the bucket to be served whole: the last stop
/// was clean and found every file of the bucket local (nothing bucket-only), and at least as
/// many regular files are here now as it counted. Anything else — a new node, an empty or
/// partly lost directory, a lost state directory, a crash since, bucket-only files known —
/// may be missing files, and an application that found an incomplete directory might rebuild
/// its data over good backups: that start waits for the listing.
fn local_is_complete(state: &StateDir, local: &LocalDir, hidden: Option<&Path>) -> bool {
    let Some(counted) = state.complete_files() else {
        return false;
    };
    let here = match local.walk(hidden) {
        Ok(entries) => entries.iter().filter(|(_, st)| st.is_file()).count() as u64,
        Err(_) => return false,
    };
    if here < counted {
        info!(
            counted,
            here, "fewer files than at the last clean stop: waiting for the bucket listing"
        );
    }
    here >= counted
}

/// At a clean stop: records that the local directory is complete (see [`local_is_complete`])
/// when the listing loaded and nothing is bucket-only — or when it never loaded after an
/// offline start, which changes nothing about what the bucket holds.
fn record_completeness(
    state: &StateDir,
    local: &LocalDir,
    hidden: Option<&Path>,
    index: &Index,
    status: &crate::ops::status::Status,
) {
    let listed = status.listing() == crate::ops::status::LISTING_LOADED;
    let offline_unlisted = status.listing() == crate::ops::status::LISTING_BACKGROUND;
    if !(offline_unlisted || (listed && index.is_empty())) {
        return;
    }
    match local.walk(hidden) {
        Ok(entries) => {
            let files = entries.iter().filter(|(_, st)| st.is_file()).count() as u64;
            if let Err(e) = state.set_complete(files) {
                warn!(error = %e, "could not record that the local directory is complete");
            }
        }
        Err(e) => warn!(error = %e, "cannot scan the local directory"),
    }
}

/// Takes the lease of an offline start once the bucket answers, then lifts the fence that
/// held its writes. A live holder keeps it fenced (said on `/status`).
async fn take_lease_later(
    bucket: Bucket,
    holder: crate::engine::lease::Holder,
    takeover: bool,
    slot: LeaseSlot,
) {
    let mut acquire = crate::engine::lease::Acquire::new(holder, takeover);
    let mut wait = std::time::Duration::from_millis(500);
    loop {
        let next = match acquire.attempt(&bucket).await {
            Ok(Some(lease)) => {
                let lease = Arc::new(lease);
                let keeper = tokio::spawn(Arc::clone(&lease).keep());
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((lease, keeper));
                bucket.fence().lift();
                info!("the bucket answers: took the lease; uploads start");
                return;
            }
            Ok(None) => acquire.watch_interval(),
            Err(e) if e.is_usage() => {
                tracing::error!(error = %e, "another writer holds the lease: this node serves its local files and writes nothing to the bucket");
                bucket.fence().raise(format!(
                    "another writer holds the lease ({e}); restart with --takeover to take it"
                ));
                return;
            }
            Err(e) => {
                if e.is_outage() {
                    bucket.health().failure();
                }
                tracing::debug!(error = %e, retry_in = ?wait, "cannot take the lease yet");
                let w = wait;
                wait = (wait * 2).min(std::time::Duration::from_secs(30));
                w
            }
        };
        tokio::time::sleep(next).await;
    }
}

/// What an offline start's background listing needs.
struct LateListing {
    index: Arc<Index>,
    mirror: Arc<Mirror>,
    fetcher: Arc<Fetcher>,
    state: Arc<StateDir>,
    local: LocalDir,
    hidden: Option<PathBuf>,
    status: Arc<crate::ops::status::Status>,
    prefetch: bool,
}

/// Loads the listing of an offline start, retrying while the bucket is unreachable, and adds
/// what is only in the bucket to the index the mount serves. What happened since the start is
/// applied first — removals and renames the mirror has carried out already (the listing may
/// have been taken before) and those still pending — and a file made local meanwhile wins.
async fn load_index_later(l: LateListing) {
    let bucket = l.fetcher.bucket().clone();
    let mut wait = std::time::Duration::from_millis(500);
    let loaded = loop {
        // Only what is carried out from now on can be missing from this listing (and an
        // exchange applied to a listing that shows it done already would swap back).
        l.mirror.record_done_intents();
        match Index::load(&bucket).await {
            Ok(index) => {
                bucket.health().success();
                break index;
            }
            Err(e) if e.is_unlistable_key() => tracing::error!(
                error = %e,
                retry_in = ?wait,
                "the bucket holds an object whose key cannot be listed (an empty, `.` or `..` \
                 path segment, or an ASCII control character); remove or rename that object. \
                 The local files are served; files only in the bucket appear once it lists"
            ),
            Err(e) => {
                if e.is_outage() {
                    bucket.health().failure();
                }
                // Said once in a while, not at every retry.
                if wait >= std::time::Duration::from_secs(30) || wait.as_millis() == 500 {
                    warn!(error = %e, retry_in = ?wait, "cannot list the bucket yet (started offline: serving the local files)");
                }
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(30));
    };
    let merged = tokio::task::spawn_blocking(move || {
        apply_intents(&loaded, &l.mirror.take_done_intents(), &l.local);
        apply_journaled_intents(&loaded, &l.state, &l.local);
        prepare_local_tree(&l.local, &loaded, l.hidden.as_deref());
        // No download lands and no bucket-only name is removed or renamed meanwhile.
        let added = {
            let _placing = l.fetcher.placing();
            l.index.absorb(loaded, |p| l.local.stat_beneath(p).is_ok())
        };
        l.status.set_listing(crate::ops::status::LISTING_LOADED);
        info!(
            bucket_only_files = added,
            "bucket listing loaded (started offline)"
        );
        (added, l.fetcher, l.prefetch)
    })
    .await;
    if let Ok((added, fetcher, true)) = merged {
        if added > 0 {
            fetcher.prefetch().await;
        }
    }
}

/// Loads the bucket index, retrying with backoff while the bucket is unreachable. `None` if a
/// signal asked us to stop first.
fn load_index(
    rt: &tokio::runtime::Runtime,
    bucket: &Bucket,
    signals: &mpsc::Receiver<Event>,
) -> anyhow::Result<Option<Index>> {
    let mut wait = std::time::Duration::from_millis(500);
    loop {
        match rt.block_on(Index::load(bucket)) {
            Ok(index) => {
                bucket.health().success();
                return Ok(Some(index));
            }
            Err(e) if e.is_outage() && !e.is_unlistable_key() => {
                bucket.health().failure();
                warn!(error = %e, retry_in = ?wait, "cannot list the bucket yet; the mount waits for it");
            }
            Err(e) if e.is_unlistable_key() => {
                tracing::error!(
                    error = %e,
                    retry_in = ?wait,
                    "the bucket holds an object whose key cannot be listed (an empty, `.` or `..` \
                     path segment, or an ASCII control character); remove or rename that object. \
                     The mount waits rather than show an incomplete directory"
                );
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?wait, "cannot list the bucket yet; the mount waits for it");
            }
        }
        if stopped_while_waiting(signals, wait) {
            return Ok(None);
        }
        wait = (wait * 2).min(std::time::Duration::from_secs(30));
    }
}

/// How often the local file bytes are counted when `--max-local-bytes` does not keep count.
const COUNT_LOCAL_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Keeps `total` at the bytes of the local regular files, by a walk every
/// [`COUNT_LOCAL_EVERY`] (off the FUSE threads; a walk of Kubecost's few hundred files is
/// cheap, and the figure is for dashboards, not decisions).
async fn count_local_bytes(
    local: LocalDir,
    hidden: Option<PathBuf>,
    total: Arc<std::sync::atomic::AtomicU64>,
) {
    let local = Arc::new(local);
    loop {
        tokio::time::sleep(COUNT_LOCAL_EVERY).await;
        let (local, hidden) = (Arc::clone(&local), hidden.clone());
        let walked = tokio::task::spawn_blocking(move || {
            let mut bytes = 0;
            local
                .walk_each(Path::new(""), hidden.as_deref(), |_, st| {
                    if st.is_file() {
                        bytes += st.size;
                    }
                })
                .map(|()| bytes)
        })
        .await;
        if let Ok(Ok(bytes)) = walked {
            total.store(bytes, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// How many descriptors the inode table may hold for files the kernel knows: half the open-file
/// limit, leaving the rest to open files, uploads, downloads and sockets. `ETLFS_FD_BUDGET`
/// sets it explicitly (at least 16).
fn fd_budget(limit: u64) -> Result<usize, UsageError> {
    const VAR: &str = "ETLFS_FD_BUDGET";
    match std::env::var(VAR) {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n >= 16 => Ok(n),
            _ => Err(UsageError::FdBudget(v)),
        },
        Err(_) => Ok(usize::try_from(limit / 2).unwrap_or(usize::MAX).max(16)),
    }
}
