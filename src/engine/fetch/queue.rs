//! The download queue: every download a mount makes waits here for one of a fixed number of
//! workers, in order of need.
//!
//! A real bucket answers each request in 10–50 ms, so downloads run many at once (the worker
//! count, `--fetch-concurrency`) or a restore crawls. Not all of them are equally urgent: an
//! application waiting in `open` goes before a file the application will probably read next
//! (readahead: the other files of a directory it reads), which goes before the background copy
//! of everything else (prefetch). The queue keeps them in that order — first come, first
//! served within a class — and a request for a path already queued joins it (single flight),
//! moving it up if the new request is more urgent.
//!
//! Background classes never take the last workers: a few (an eighth, at least one) are kept
//! for opens, so an application's open starts at once however long a prefetch runs.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::Notify;

use super::FetchError;

/// How urgent a download is; the smallest goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// An application waits for it (an open, a truncate, a rename).
    Open,
    /// A file of a directory an application is reading.
    Readahead,
    /// The background copy of every bucket-only file.
    Prefetch,
}

impl Priority {
    fn background(self) -> bool {
        self != Priority::Open
    }
}

/// A download's result, shared by everyone who waits for it.
pub type Outcome = Result<(), Arc<FetchError>>;

/// The result of a queued or running download: resolves when it is done, whether or not
/// anyone polls it (the download itself runs on a worker).
pub type Flight = Shared<BoxFuture<'static, Outcome>>;

#[derive(Debug)]
struct Job {
    /// `(priority, sequence)` while queued; `None` once a worker runs it.
    queued: Option<(Priority, u64)>,
    /// The priority it runs (or will run) at.
    priority: Priority,
    done: Option<futures::channel::oneshot::Sender<Outcome>>,
    flight: Flight,
}

#[derive(Debug, Default)]
struct Inner {
    order: BTreeSet<(Priority, u64, PathBuf)>,
    jobs: HashMap<PathBuf, Job>,
    next_seq: u64,
    background_running: usize,
}

/// How many downloads of each class wait or run, for `/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Depth {
    pub open: usize,
    pub readahead: usize,
    pub prefetch: usize,
    pub running: usize,
}

/// The queue shared by the requesters and the workers.
#[derive(Debug)]
pub struct Queue {
    inner: Mutex<Inner>,
    wake: Notify,
    background_limit: usize,
}

impl Queue {
    /// A queue for `workers` workers, of which background downloads may occupy all but an
    /// eighth (at least one is kept for opens when there are two or more).
    pub fn new(workers: usize) -> Queue {
        let workers = workers.max(1);
        let reserved = (workers / 8).max(1).min(workers - 1);
        Queue {
            inner: Mutex::new(Inner::default()),
            wake: Notify::new(),
            background_limit: workers - reserved,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The flight of `path`: its queued or running download, moved up to `priority` if that is
    /// more urgent, or a new one queued at `priority`.
    pub fn request(&self, path: &Path, priority: Priority) -> Flight {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if let Some(job) = inner.jobs.get_mut(path) {
            if let Some((p, seq)) = job.queued {
                if priority < p {
                    inner.order.remove(&(p, seq, path.to_path_buf()));
                    let seq = inner.next_seq;
                    inner.next_seq += 1;
                    inner.order.insert((priority, seq, path.to_path_buf()));
                    job.queued = Some((priority, seq));
                    job.priority = priority;
                    self.wake.notify_one();
                }
            }
            return job.flight.clone();
        }
        let (tx, rx) = futures::channel::oneshot::channel();
        let gone = path.to_path_buf();
        let flight = rx
            .map(move |r| r.unwrap_or_else(|_| Err(Arc::new(FetchError::Abandoned(gone)))))
            .boxed()
            .shared();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.order.insert((priority, seq, path.to_path_buf()));
        inner.jobs.insert(
            path.to_path_buf(),
            Job {
                queued: Some((priority, seq)),
                priority,
                done: Some(tx),
                flight: flight.clone(),
            },
        );
        self.wake.notify_one();
        flight
    }

    /// Queues `path` at `priority` (or moves it up) without waiting for it: it is downloaded
    /// all the same.
    pub fn enqueue(&self, path: &Path, priority: Priority) {
        drop(self.request(path, priority));
    }

    /// Whether `path` is queued or being downloaded.
    pub fn contains(&self, path: &Path) -> bool {
        self.lock().jobs.contains_key(path)
    }

    /// Takes the most urgent job a worker may start now: an open always, a background job only
    /// while fewer than the background limit run.
    fn take(&self) -> Option<(PathBuf, Priority)> {
        let mut inner = self.lock();
        let first = inner.order.first()?.clone();
        if first.0.background() && inner.background_running >= self.background_limit {
            return None;
        }
        inner.order.pop_first();
        let (priority, _, path) = first;
        if priority.background() {
            inner.background_running += 1;
        }
        if let Some(job) = inner.jobs.get_mut(&path) {
            job.queued = None;
        }
        Some((path, priority))
    }

    /// Waits for the next job a worker may start.
    pub async fn next(&self) -> (PathBuf, Priority) {
        loop {
            // Registered before looking, so a request made in between is not missed.
            let notified = self.wake.notified();
            if let Some(job) = self.take() {
                // Others may be startable too (several requests, one wakeup).
                self.wake.notify_one();
                return job;
            }
            notified.await;
        }
    }

    /// Ends the job of `path` (taken at `priority`) and tells everyone who waits for it.
    pub fn finish(&self, path: &Path, priority: Priority, outcome: Outcome) {
        let job = {
            let mut inner = self.lock();
            if priority.background() {
                inner.background_running -= 1;
            }
            inner.jobs.remove(path)
        };
        if let Some(tx) = job.and_then(|mut j| j.done.take()) {
            let _ = tx.send(outcome);
        }
        // A background slot is free: a waiting background job may start.
        self.wake.notify_one();
    }

    /// How many jobs of each class wait, and how many run.
    pub fn depth(&self) -> Depth {
        let inner = self.lock();
        let mut d = Depth::default();
        for job in inner.jobs.values() {
            match (job.queued, job.priority) {
                (None, _) => d.running += 1,
                (Some(_), Priority::Open) => d.open += 1,
                (Some(_), Priority::Readahead) => d.readahead += 1,
                (Some(_), Priority::Prefetch) => d.prefetch += 1,
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn opens_go_first_then_readahead_then_prefetch_each_in_arrival_order() {
        let q = Queue::new(16);
        q.enqueue(&p("pre1"), Priority::Prefetch);
        q.enqueue(&p("ra1"), Priority::Readahead);
        q.enqueue(&p("pre2"), Priority::Prefetch);
        q.enqueue(&p("open1"), Priority::Open);
        q.enqueue(&p("ra2"), Priority::Readahead);
        q.enqueue(&p("open2"), Priority::Open);
        let order: Vec<_> = std::iter::from_fn(|| q.take().map(|(p, _)| p)).collect();
        assert_eq!(
            order,
            ["open1", "open2", "ra1", "ra2", "pre1", "pre2"].map(p)
        );
    }

    #[test]
    fn a_more_urgent_request_moves_a_queued_job_up_and_shares_its_flight() {
        let q = Queue::new(4);
        q.enqueue(&p("a"), Priority::Prefetch);
        q.enqueue(&p("b"), Priority::Prefetch);
        let f1 = q.request(&p("b"), Priority::Open);
        // A less urgent request does not move it back.
        q.enqueue(&p("b"), Priority::Prefetch);
        assert_eq!(q.depth().open, 1);
        let (first, prio) = q.take().unwrap();
        assert_eq!((first.as_path(), prio), (Path::new("b"), Priority::Open));
        let f2 = q.request(&p("b"), Priority::Open);
        q.finish(&first, prio, Ok(()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(rt.block_on(f1).is_ok());
        assert!(rt.block_on(f2).is_ok());
        assert!(!q.contains(&p("b")));
        assert!(q.contains(&p("a")));
    }

    #[test]
    fn background_jobs_leave_workers_for_opens() {
        let q = Queue::new(8); // one kept for opens
        for i in 0..10 {
            q.enqueue(&p(&format!("pre{i}")), Priority::Prefetch);
        }
        let started: Vec<_> = std::iter::from_fn(|| q.take()).collect();
        assert_eq!(started.len(), 7);
        q.enqueue(&p("open"), Priority::Open);
        assert_eq!(q.take().map(|(p, _)| p), Some(p("open")));
        assert_eq!(q.take(), None);
        let (done, prio) = &started[0];
        q.finish(done, *prio, Ok(()));
        assert_eq!(q.take().map(|(_, pr)| pr), Some(Priority::Prefetch));
        assert_eq!(
            q.depth(),
            Depth {
                open: 0,
                readahead: 0,
                prefetch: 2,
                running: 8
            }
        );
    }

    #[test]
    fn a_single_worker_runs_background_jobs_too() {
        let q = Queue::new(1);
        q.enqueue(&p("pre"), Priority::Prefetch);
        assert!(q.take().is_some());
    }

    #[test]
    fn a_dropped_job_is_an_error_for_its_waiters() {
        let q = Queue::new(1);
        let f = q.request(&p("x"), Priority::Open);
        drop(q);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(matches!(
            rt.block_on(f).unwrap_err().as_ref(),
            FetchError::Abandoned(_)
        ));
    }
}
