//! Whether a start may be offline: a node stopped cleanly with every file of the bucket local
//! needs nothing from the bucket to serve, so it mounts at once when the bucket does not
//! answer. Recorded at a clean stop, checked at the next start.

use std::path::Path;

use tracing::{info, warn};

use crate::engine::index::Index;
use crate::os::local::LocalDir;
use crate::os::state::StateDir;

/// Whether the local directory needs nothing from the bucket to be served whole: the last stop
/// was clean and found every file of the bucket local (nothing bucket-only), and at least as
/// many regular files are here now as it counted. Anything else — a new node, an empty or
/// partly lost directory, a lost state directory, a crash since, bucket-only files known —
/// may be missing files, and an application that found an incomplete directory might rebuild
/// its data over good backups: that start waits for the listing.
pub(super) fn local_is_complete(state: &StateDir, local: &LocalDir, hidden: Option<&Path>) -> bool {
    let Some(counted) = state.complete_files() else {
        return false;
    };
    let Ok(here) = count_files(local, hidden) else {
        return false;
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
pub(super) fn record_completeness(
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
    match count_files(local, hidden) {
        Ok(files) => {
            if let Err(e) = state.set_complete(files) {
                warn!(error = %e, "could not record that the local directory is complete");
            }
        }
        Err(e) => warn!(error = %e, "cannot scan the local directory"),
    }
}

/// The regular files of the local directory, counted as the walk goes (a list of 100,000 of
/// them would be a start's memory peak, right before the index loads).
fn count_files(local: &LocalDir, hidden: Option<&Path>) -> std::io::Result<u64> {
    let mut files = 0;
    local.walk_each(Path::new(""), hidden, |_, st| {
        files += u64::from(st.is_file())
    })?;
    Ok(files)
}
