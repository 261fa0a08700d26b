//! The bucket listing a mount serves: waited for before the mount (an application that found
//! an empty directory might rebuild its data over good backups), read at a point in time, or —
//! after an offline start — loaded in the background and merged into the index being served.
//!
//! Its own file because the late merge is the subtle part of an offline start: what happened
//! since the start must be applied to the listing before it joins the served index.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;

use tracing::{info, warn};

use super::lease::is_missing;
use super::{Event, MountArgs, stopped_while_waiting};
use crate::cli::settle_missing_bucket;
use crate::engine::fetch::Fetcher;
use crate::engine::index::Index;
use crate::engine::mirror::Mirror;
use crate::engine::recover::{apply_intents, prepare_local_tree};
use crate::os::local::LocalDir;
use crate::store::bucket::Bucket;

/// The index the mount starts with: the bucket at `--as-of`, an empty one awaiting the
/// background listing of an `offline` start, or else the listing, waited for. `None` if a
/// signal asked us to stop first.
pub(super) fn first_index(
    args: &MountArgs,
    rt: &tokio::runtime::Runtime,
    bucket: &Bucket,
    signals: &mpsc::Receiver<Event>,
    offline: bool,
    status: &crate::ops::status::Status,
) -> anyhow::Result<Option<Index>> {
    Ok(match args.as_of() {
        Some(t) => Some(
            match rt.block_on(crate::engine::as_of::index_at(bucket, t)) {
                Ok(index) => index,
                // Nothing to create for a point in time: a configuration error.
                Err(e) if is_missing(Some(&e)) => {
                    return Err(crate::cli::UsageError::NoBucket {
                        target: bucket.target().to_owned(),
                        reply: e.server_reply().unwrap_or_else(|| e.to_string()),
                        hint: String::new(),
                    }
                    .into());
                }
                Err(e) => return Err(anyhow::Error::from(e).context("reading the point in time")),
            },
        ),
        None if offline => {
            info!(
                "the local directory was complete at the last clean stop: mounting at once; \
                 the bucket listing loads in the background"
            );
            status.set_listing(crate::ops::status::LISTING_BACKGROUND);
            Some(Index::awaiting_listing())
        }
        None => load_index(rt, bucket, signals)?,
    })
}

/// Loads the bucket index, retrying with backoff while the bucket is unreachable. `None` if a
/// signal asked us to stop first.
fn load_index(
    rt: &tokio::runtime::Runtime,
    bucket: &Bucket,
    signals: &mpsc::Receiver<Event>,
) -> anyhow::Result<Option<Index>> {
    let mut wait = std::time::Duration::from_millis(500);
    let mut created = false;
    loop {
        match rt.block_on(Index::load(bucket)) {
            Ok(index) => {
                bucket.health().success();
                return Ok(Some(index));
            }
            // Created, then listed again at once; or a configuration error.
            Err(e) if !created && is_missing(Some(&e)) => {
                rt.block_on(settle_missing_bucket(bucket, &e))?;
                created = true;
                continue;
            }
            Err(e) if e.is_outage() && !e.is_unlistable_key() => {
                bucket.failed(&e);
                // A refusal was said once, as an error, by `failed`: no warning at each retry.
                if e.refusal().is_none() {
                    warn!(error = %e, retry_in = ?wait, "cannot list the bucket yet; the mount waits for it");
                }
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
        super::notify::status(
            "starting: waiting for the bucket, which cannot be listed yet (see the log)",
        );
        if stopped_while_waiting(signals, wait) {
            return Ok(None);
        }
        wait = (wait * 2).min(std::time::Duration::from_secs(30));
    }
}

/// What an offline start's background listing needs.
pub(super) struct LateListing {
    pub(super) index: Arc<Index>,
    pub(super) mirror: Arc<Mirror>,
    pub(super) fetcher: Arc<Fetcher>,
    pub(super) local: LocalDir,
    pub(super) hidden: Option<PathBuf>,
    pub(super) status: Arc<crate::ops::status::Status>,
    pub(super) prefetch: bool,
}

/// Loads the listing of an offline start, retrying while the bucket is unreachable, and adds
/// what is only in the bucket to the index the mount serves. What happened since the start is
/// applied first — removals and renames the mirror has carried out already (the listing may
/// have been taken before) and those still pending — and a file made local meanwhile wins.
pub(super) async fn load_index_later(l: LateListing) {
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
                if is_missing(Some(&e)) && bucket.create_missing().await.unwrap_or(false) {
                    info!(bucket = %crate::escape::esc(bucket.target()), "created the container (storage_create_container)");
                }
                bucket.failed(&e);
                // Said once in a while, not at every retry; a refusal once, by `failed`.
                let now_and_then =
                    wait >= std::time::Duration::from_secs(30) || wait.as_millis() == 500;
                if now_and_then && e.refusal().is_none() {
                    warn!(error = %e, retry_in = ?wait, "cannot list the bucket yet (started offline: serving the local files)");
                }
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(30));
    };
    let merged = tokio::task::spawn_blocking(move || {
        // None is asked whether it ran: those that never ran were cancelled at the start, and
        // any journaled since is this process's own, run or about to.
        apply_intents(&loaded, &l.mirror.take_intents_since_recording(), &l.local);
        // (Its entries for local files go with it: `absorb` takes bucket-only files only.)
        prepare_local_tree(&l.local, &loaded, l.hidden.as_deref(), false, |_| false);
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
