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
//!
//! The steps with rules of their own have files of their own: taking the lease
//! ([`lease`]), the bucket listing, waited for or late ([`listing`]), whether a start may be
//! offline ([`offline`]), the stop with its drain ([`shutdown`]), telling a supervisor how it
//! goes ([`notify`]) and returning once ready with `--background` ([`background`]).

mod background;
mod lease;
mod listing;
mod notify;
mod offline;
mod shutdown;

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

use self::background::{LogFile, Role, Started};
use self::lease::LeaseStart;
use self::listing::LateListing;
use self::shutdown::Serving;
use crate::cli::args::MountArgs;
use crate::cli::{DEFAULT_STATE_DIR, UsageError, check_dir, open_bucket};
use crate::core::{Core, CoreOptions};
use crate::engine::mirror::MirrorOptions;
use crate::escape::{esc, esc_chain};
use crate::fs::fuse::{EtlFs, FuseOptions};
use crate::fs::mountopts::{Access, Atime, MountOptions};
use crate::fs::overlay::Policy;
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

/// What already covers the mount point, if it is an etlfs mount of the same source (`--fsname`,
/// or by default any `etlfs:` one). One whose daemon died (SIGKILL, OOM) answers every access
/// with `ENOTCONN` and would stop a restarted etlfs at its first `stat`: it is detached, since
/// what it covered is the directory we are about to serve again. A live one is refused: etlfs
/// would serve its own mount (as `mount -T FSTAB MNT` run twice would ask).
fn clear_dead_mount(path: &Path, fsname: Option<&str>) -> Result<(), UsageError> {
    let Ok(abs) = std::path::absolute(path) else {
        return Ok(());
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let target = mountinfo_escape(&abs.to_string_lossy());
    let ours = info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-");
        let source = sep.and_then(|s| f.get(s + 2)).copied().unwrap_or_default();
        f.get(4) == Some(&target.as_str())
            && sep.is_some_and(|s| f.get(s + 1).is_some_and(|t| t.starts_with("fuse")))
            && match fsname {
                Some(name) => source == mountinfo_escape(name),
                None => source.starts_with("etlfs:"),
            }
    });
    if !ours {
        return Ok(());
    }
    // A directory listing needs the daemon (a stat may be served from the kernel's attribute
    // cache).
    match std::fs::read_dir(&abs) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {}
        _ => {
            return Err(UsageError::Inaccessible {
                what: "mount point",
                path: abs,
                source: std::io::Error::new(
                    std::io::ErrorKind::ResourceBusy,
                    "already mounted: an etlfs mount serves it",
                ),
            });
        }
    }
    warn!(mountpoint = %esc(&abs), "detaching a dead etlfs mount left by a crashed daemon");
    if let Ok(c) = CString::new(abs.as_os_str().as_bytes()) {
        if let Err(e) = sys::umount(&c, true) {
            warn!(error = %e, "could not detach the dead mount");
        }
    }
    Ok(())
}

/// `text` as /proc/self/mountinfo writes it: space, tab, newline and backslash as octal escapes.
fn mountinfo_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn plan(args: &MountArgs) -> Result<Plan, UsageError> {
    clear_dead_mount(&args.mountpoint, args.fsname.as_deref())?;
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

/// Runs `etlfs mount` until a signal or an external unmount (with `--background`: until the
/// mount is ready, see [`background`]). Returns `Err` with a [`UsageError`] inside for
/// invocation problems (exit code 2).
pub fn mount(args: MountArgs) -> anyhow::Result<()> {
    sys::tune_allocator();
    let as_of = args.as_of();
    let mut options = MountOptions::parse(&args.options).map_err(UsageError::from)?;
    // A point in time is served read-only.
    options.read_only |= as_of.is_some();
    let log_file = args.log_file.as_deref().map(LogFile::open).transpose()?;
    let role = Role::of(args.background);
    match role {
        Role::Waiter => return wait_for_daemon(),
        Role::Daemon => background::detach_session()?,
        Role::Foreground => {
            if let Some(log) = &log_file {
                log.take_over_output()?;
            }
        }
    }
    let plan = plan(&args)?;
    check_fuse_device()?;
    // Bound now, served once the runtime exists: an address in use fails before any mount.
    let listener = crate::ops::status::bind(&args.listen).map_err(UsageError::from)?;
    let fd_budget = raise_fd_limit()?;

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
    let signal_handle = watch_signals(tx)?;

    let dirs = OpenDirs::open(&plan)?;
    let state = Arc::clone(&dirs.state);
    // Everything on this runtime is background work to the application, whose requests
    // the FUSE threads answer: uploads, the manifest, listings, the status page, and
    // downloads (bound by the network, not the CPU). Its threads (workers and blocking pool)
    // run at a lower CPU and I/O priority, so that on a small machine the application wins.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("etlfs-io")
        .on_thread_start(lower_priority)
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
        requests,
    );
    crate::ops::status::serve(listener, Arc::clone(&status), rt.handle())
        .map_err(UsageError::from)?;

    // A node stopped cleanly with every file of the bucket local needs nothing from the
    // bucket to serve: if the bucket does not answer at once, it mounts anyway, and lists the
    // bucket (and takes the lease) in the background. See `offline::local_is_complete`. (A
    // bucket that answers is listed before the mount, as at any start.)
    let eligible = as_of.is_none()
        && args.max_local_bytes.is_none()
        && offline::local_is_complete(&state, &dirs.local, plan.hidden.as_deref());
    // Whatever happens now, the next start decides afresh: only a clean stop says it again.
    state.clear_complete();
    // One writer per prefix: the lease first, so that a second mount is refused before it
    // shows anything or writes anything.
    if args.lease().is_some() && as_of.is_none() {
        notify::status("starting: taking the prefix's lease");
    }
    let Some(LeaseStart {
        offline,
        late: late_lease,
        slot: lease_slot,
    }) = lease::start(&args, &plan, &rt, &bucket, &state, &rx, eligible)?
    else {
        return Ok(());
    };
    // After the lease: garbage collection deletes, so it is a writer too (and fenced like one).
    if as_of.is_none() {
        rt.spawn(crate::store::bucket::history::gc_loop(bucket.clone()));
    }
    status.watch_history(Arc::clone(bucket.history_stats()));

    // The mount is only useful once it can show what the bucket holds: an application that
    // found an empty directory might rebuild its data and overwrite good backups. So wait for
    // the listing, retrying, until it loads or we are told to stop.
    notify::status("starting: loading the bucket listing");
    let Some(index) = listing::first_index(&args, &rt, &bucket, &rx, offline, &status)? else {
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
        core_options(&args, &plan, &options, fd_budget),
        rt.handle(),
    )?;
    if args.max_local_bytes.is_none() {
        // With --max-local-bytes the overlay keeps a live count; otherwise a periodic walk.
        rt.spawn(count_local_bytes(
            dirs.walk,
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
        rt.spawn(listing::load_index_later(LateListing {
            index: Arc::clone(&index),
            mirror: Arc::clone(&mirror),
            fetcher: Arc::clone(&fetcher),
            local: dirs.late,
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
        max_local_bytes: args.max_local_bytes,
        parked: fs.parked_counter(),
    });

    let notifier = fs.notifier_slot();
    let session = new_session(fs, &args, &plan, &options)?;
    let _ = notifier.set(session.notifier());
    let session = thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let res = session.run();
            let _ = session_tx.send(Event::SessionEnded(res));
        })
        .context("starting the FUSE session")?;
    // Ready once the kernel's requests are answered, not when the mount merely exists.
    if answers(&plan.mountpoint) {
        status.set_ready();
        notify::ready(&plan.mountpoint);
        if role == Role::Daemon {
            // Serving goes on either way: a failed redirect must not leave a dead mount.
            if let Err(e) = background::detach_output(log_file.as_ref()) {
                warn!(error = %esc_chain(e.chain()), "could not let go of the starting command's output");
            }
        }
    }

    shutdown::serve_until_stopped(
        &args,
        &plan,
        Serving {
            rt,
            signals: rx,
            signal_handle,
            session,
            status,
            late_lease,
            lease_slot,
            bucket_fence,
            mirror,
            overlay,
            index,
            state,
            local: dirs.late_stop,
        },
    )
}

/// `--background`: starts the daemon and returns once it is ready; exits with its exit code
/// if it stops before that (it has said why).
fn wait_for_daemon() -> anyhow::Result<()> {
    match background::start_daemon()? {
        Started::Ready => Ok(()),
        Started::Exited(st) => match st.code() {
            Some(0) => anyhow::bail!("etlfs stopped before the mount was ready"),
            Some(code) => std::process::exit(code),
            None => anyhow::bail!("etlfs was killed before the mount was ready ({st})"),
        },
    }
}

/// Whether the mount at `mountpoint` answers: a `statfs` goes through the FUSE session once
/// the kernel's `INIT` is answered. (If the session failed instead, the kernel answers with
/// an error, or the directory underneath shows: nothing waits forever.)
fn answers(mountpoint: &Path) -> bool {
    match sys::answers_as_fuse(mountpoint) {
        Ok(true) => true,
        Ok(false) => {
            warn!(mountpoint = %esc(mountpoint), "the mount point does not show the mount");
            false
        }
        Err(e) => {
            warn!(mountpoint = %esc(mountpoint), error = %e, "the mount does not answer");
            false
        }
    }
}

/// Raises the open file limit as far as the kernel allows, and returns how many descriptors
/// the inode table may hold (see [`fd_budget`]).
fn raise_fd_limit() -> Result<usize, UsageError> {
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
    Ok(fd_budget)
}

/// Sends SIGTERM and SIGINT to `tx` from a thread of their own; the handle closes it.
fn watch_signals(tx: mpsc::Sender<Event>) -> anyhow::Result<signal_hook::iterator::Handle> {
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
    Ok(handle)
}

/// The directories a mount works in, all opened before the mount covers the served directory
/// (then its path leads back into etlfs; the core opens its own).
struct OpenDirs {
    /// The served directory.
    local: LocalDir,
    /// For the periodic count of the local bytes.
    walk: LocalDir,
    /// For an offline start's background listing.
    late: LocalDir,
    /// For the completeness count at the stop.
    late_stop: LocalDir,
    state: Arc<StateDir>,
}

impl OpenDirs {
    fn open(plan: &Plan) -> Result<OpenDirs, UsageError> {
        let open_local = || {
            LocalDir::open(&plan.local).map_err(|source| UsageError::Inaccessible {
                what: "local directory",
                path: plan.local.clone(),
                source,
            })
        };
        let local = open_local()?;
        let walk = open_local()?;
        let late = open_local()?;
        let late_stop = open_local()?;
        let state = Arc::new(StateDir::open(&plan.state_dir).map_err(|source| {
            UsageError::Inaccessible {
                what: "state directory",
                path: plan.state_dir.clone(),
                source,
            }
        })?);
        if state.dev() != local.root_stat().dev {
            return Err(UsageError::StateOnOtherFilesystem {
                state: plan.state_dir.clone(),
            });
        }
        state.clean_temps();
        Ok(OpenDirs {
            local,
            walk,
            late,
            late_stop,
            state,
        })
    }
}

/// What the command line asks of the core.
fn core_options(
    args: &MountArgs,
    plan: &Plan,
    options: &MountOptions,
    fd_budget: usize,
) -> CoreOptions {
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
    }
}

/// Mounts `fs` on the mount point (a permission problem is a [`UsageError`]).
fn new_session(
    fs: EtlFs,
    args: &MountArgs,
    plan: &Plan,
    options: &MountOptions,
) -> anyhow::Result<fuser::Session<EtlFs>> {
    let mut config = Config::default();
    config.mount_options = fuser_options(args.fsname.as_deref(), &plan.local, options);
    config.acl = match options.access {
        Access::Everyone => SessionACL::All,
        Access::RootAndOwner => SessionACL::RootAndOwner,
        Access::Owner => SessionACL::Owner,
    };
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
        access = ?options.access,
        "mounted"
    );
    Ok(session)
}

/// The kernel's mount options for `-o` `options`. Always: the source shown in the mount
/// table (`fsname`, else `etlfs:LOCAL`), and `nosuid`/`nodev` unless `suid`/`dev` were asked
/// for. `default_permissions` (the kernel checks modes) only where etlfs cannot act as its
/// callers, so that the filesystem underneath checks every request itself, ACLs included (see
/// `os/creds.rs`). `strictatime` and `nodiratime` have
/// no fuser counterpart, and nothing to do in the kernel anyway (it leaves a FUSE file's
/// access time to the filesystem): the mount table shows the kernel's default, `relatime`.
fn fuser_options(fsname: Option<&str>, local: &Path, options: &MountOptions) -> Vec<MountOption> {
    let fsname = fsname.map_or_else(|| format!("etlfs:{}", local.display()), str::to_owned);
    let mut out = vec![
        MountOption::FSName(fsname),
        MountOption::Subtype("etlfs".into()),
    ];
    if !crate::fs::fuse::checks_permissions() {
        out.push(MountOption::DefaultPermissions);
    }
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

/// Waits `d` before a retry at start; `true` if a signal (or the end of the signal thread)
/// asked us to stop meanwhile.
fn stopped_while_waiting(signals: &mpsc::Receiver<Event>, d: std::time::Duration) -> bool {
    match signals.recv_timeout(d) {
        Ok(Event::Signal(sig)) => {
            info!(signal = sig, "stopping before the mount");
            notify::stopping();
            true
        }
        Ok(Event::SessionEnded(_)) | Err(mpsc::RecvTimeoutError::Timeout) => false,
        Err(mpsc::RecvTimeoutError::Disconnected) => true,
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

/// Gives the calling runtime thread background priority ([`crate::os::sys::background_priority`]);
/// a refusal (a seccomp profile, say) is said once and costs nothing else.
fn lower_priority() {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if let Err(e) = crate::os::sys::background_priority() {
        WARNED.call_once(|| {
            warn!(error = %e, "cannot lower the priority of the background threads; they compete with the application's requests");
        });
    }
}
