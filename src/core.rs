//! The core's one assembly: index, mirror, fetcher and overlay, built and connected in the
//! order a start needs, with the start-up recovery run on the way.
//!
//! `etlfs mount` serves the result through FUSE; the reference model and the engine's tests
//! drive the same result without the kernel. Anything that starts the core goes through
//! [`Core::open`], so what a start does — the last run's tombstones journaled again, the
//! journal's pending intents applied to the listing, the bucket's directories made locally,
//! local files dropped from the index, the mirror replaying the journal, the fetcher and the
//! overlay wired to both — exists once.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::engine::events::ChangeSink;
use crate::engine::fetch::Fetcher;
use crate::engine::index::Index;
use crate::engine::mirror::{Mirror, MirrorOptions, Takeover};
use crate::engine::recover::{LocalTree, apply_pending_intents, prepare_local_tree};
use crate::escape::esc;
use crate::fs::overlay::{Overlay, Policy, Remote};
use crate::os::local::LocalDir;
use crate::os::state::StateDir;
use crate::store::bucket::Bucket;

/// How the core is to behave; everything else it needs is an argument of [`Core::open`].
#[derive(Debug, Clone)]
pub struct CoreOptions {
    /// The state directory's path relative to the served directory, when it is inside it:
    /// hidden from the application, never mirrored.
    pub hidden: Option<PathBuf>,
    /// Upload timing and concurrency. Whether nothing was local at start is decided here
    /// (`nothing_local` as given is ignored).
    pub mirror: MirrorOptions,
    /// Downloads at once.
    pub fetch_concurrency: usize,
    /// What the `-o` mount options ask of the overlay.
    pub policy: Policy,
    /// Descriptors the overlay may hold for known files (`None`: its default).
    pub fd_budget: Option<usize>,
    /// Bound on local file bytes (`--max-local-bytes`); clean files are evicted beyond it.
    pub max_local_bytes: Option<u64>,
}

/// The assembled core.
pub struct Core {
    pub index: Arc<Index>,
    pub mirror: Arc<Mirror>,
    pub fetcher: Arc<Fetcher>,
    pub overlay: Arc<Overlay>,
    /// Bytes of the local regular files: kept by the overlay with `--max-local-bytes`, else
    /// as counted when the core was opened (for whoever counts them from then on).
    pub local_bytes: Arc<AtomicU64>,
}

/// Why the core could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("opening the local directory {}: {source}", esc(.path))]
    Local { path: PathBuf, source: io::Error },
    #[error("cancelling intents in the journal in {}: {source}", esc(.state))]
    Intents { state: PathBuf, source: io::Error },
    #[error("opening the journal in {}: {source}", esc(.state))]
    Journal { state: PathBuf, source: io::Error },
    #[error("setting up the overlay: {0}")]
    Overlay(#[source] io::Error),
}

impl Core {
    /// Opens the core over the directory at `local` (opened here, once per part that reads it:
    /// call this before anything is mounted over it), with the state directory `state` (at
    /// `state_path`, for messages), and `index`, the bucket as loaded (or awaiting its listing:
    /// an offline start, which then skips what needs the listing).
    pub fn open(
        bucket: Bucket,
        local: &Path,
        state: Arc<StateDir>,
        state_path: &Path,
        index: Index,
        options: CoreOptions,
        rt: &tokio::runtime::Handle,
    ) -> Result<Core, CoreError> {
        let open_local = || {
            LocalDir::open(local).map_err(|source| CoreError::Local {
                path: local.to_path_buf(),
                source,
            })
        };
        let (overlay_local, mirror_local, fetch_local) =
            (open_local()?, open_local()?, open_local()?);
        let hidden = options.hidden.as_deref();
        let index = Arc::new(index);
        // The last run's tombstones become journaled removals, applied to the listing below
        // as any other pending one.
        match crate::engine::tombstones::replay_in(&state) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                removals = n,
                "removing again what the last run removed shortly after its start (requests of a killed etlfs may have landed since)"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot replay the tombstones of the last run"),
        }
        apply_pending_intents(&index, &state, &overlay_local).map_err(|source| {
            CoreError::Intents {
                state: state_path.to_path_buf(),
                source,
            }
        })?;
        // Which upload records know their object version already: the index entries of
        // those files, found local, are dropped at once, so that the index is emptied before
        // the records are loaded (with 100,000 files, both tables full is a start's peak).
        let takeover = Takeover::scan(Arc::clone(&state));
        let LocalTree {
            files: local_files,
            bytes,
            only_bucket_dirs,
        } = prepare_local_tree(
            &overlay_local,
            &index,
            hidden,
            options.max_local_bytes.is_some(),
            |path| takeover.described(path),
        );
        index.shrink();
        // What the load and the walk left (listing pages, the manifest's bytes, the emptied
        // table) goes back to the kernel before the records come in.
        crate::os::sys::trim_heap();
        let local_bytes = Arc::new(AtomicU64::new(bytes));

        let mirror = Mirror::start(
            bucket.clone(),
            mirror_local,
            takeover,
            options.hidden.clone(),
            MirrorOptions {
                // The start-up reconcile also gives the bucket's unmarked directories their
                // marker (the local directory made for each is new to the mirror).
                nothing_local: only_bucket_dirs
                    && !index.awaiting()
                    && index.report().unmarked_dirs == 0,
                ..options.mirror
            },
            Some(Arc::clone(&index)),
            rt,
        )
        .map_err(|source| CoreError::Journal {
            state: state_path.to_path_buf(),
            source,
        })?;
        let sink: Arc<dyn ChangeSink> = Arc::clone(&mirror) as Arc<dyn ChangeSink>;
        let fetcher = Fetcher::new(
            bucket,
            fetch_local,
            state,
            Arc::clone(&index),
            Arc::clone(&sink),
            options.fetch_concurrency,
            rt,
        );
        let mut overlay = Overlay::new(overlay_local, hidden, sink)
            .map_err(CoreError::Overlay)?
            .with_policy(options.policy)
            .with_remote(Remote {
                index: Arc::clone(&index),
                fetcher: Arc::clone(&fetcher),
                rt: rt.clone(),
            });
        if let Some(budget) = options.fd_budget {
            overlay = overlay.with_fd_budget(budget);
        }
        if let Some(max) = options.max_local_bytes {
            overlay = overlay.with_cache(max, local_files, Arc::clone(&local_bytes));
        }
        Ok(Core {
            index,
            mirror,
            fetcher,
            overlay: Arc::new(overlay),
            local_bytes,
        })
    }
}
