//! The registry of a host's live runs: id → where it is, its report once
//! it ends, and its cancellation. A run leaves the registry when it ends;
//! its history stays in the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::scheduler::{RunHandle, WorkflowReport};
use crate::store::RunId;

/// Where a live run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LiveStatus {
    /// Waiting for admission.
    Queued,
    /// Admitted: its steps run.
    Running,
    /// Ended; its report is ready.
    Ended,
}

/// A run of this host, for whoever submitted it or looks it up: wait for
/// its report, see where it is, cancel it. Clones share the run.
#[derive(Debug, Clone)]
pub struct LiveRun {
    id: RunId,
    cancel: CancellationToken,
    admitted: Arc<AtomicBool>,
    report: watch::Receiver<Option<Arc<WorkflowReport>>>,
}

impl LiveRun {
    /// The run's id in the store.
    pub fn id(&self) -> RunId {
        self.id
    }

    /// Where it is now.
    pub fn status(&self) -> LiveStatus {
        if self.report.borrow().is_some() {
            LiveStatus::Ended
        } else if self.admitted.load(Ordering::Acquire) {
            LiveStatus::Running
        } else {
            LiveStatus::Queued
        }
    }

    /// Cancels it: queued, it never starts; running, its steps stop
    /// promptly. A cancelled run is final.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Waits for it to end and returns its report.
    pub async fn wait(mut self) -> Arc<WorkflowReport> {
        loop {
            if let Some(report) = self.report.borrow_and_update().clone() {
                return report;
            }
            if self.report.changed().await.is_err() {
                // The sender is gone without a report only if the run's
                // task died, which `RunHandle::wait` turns into a panic.
                unreachable!("run {} ended without a report", self.id);
            }
        }
    }
}

/// How many locks the registry spreads its runs over: every submission
/// and every ending takes one, and runs must not queue behind one lock.
const SHARDS: usize = 16;

type Shard = Mutex<HashMap<RunId, LiveRun>>;

/// The live runs of a host, by id, in shards by id.
#[derive(Debug, Default)]
pub(super) struct Registry {
    shards: Arc<[Shard; SHARDS]>,
}

fn shard(shards: &[Shard; SHARDS], id: RunId) -> &Shard {
    &shards[(id % SHARDS as u64) as usize]
}

impl Registry {
    /// Registers `handle`'s run until it ends.
    pub(super) fn track(&self, handle: RunHandle) -> LiveRun {
        let (sender, report) = watch::channel(None);
        let run = LiveRun {
            id: handle.id(),
            cancel: handle.cancel_token(),
            admitted: handle.admitted_flag(),
            report,
        };
        lock(shard(&self.shards, run.id)).insert(run.id, run.clone());
        let shards = Arc::clone(&self.shards);
        let id = run.id;
        tokio::spawn(async move {
            let report = Arc::new(handle.wait().await);
            lock(shard(&shards, id)).remove(&id);
            let _ = sender.send(Some(report));
        });
        run
    }

    pub(super) fn get(&self, id: RunId) -> Option<LiveRun> {
        lock(shard(&self.shards, id)).get(&id).cloned()
    }

    pub(super) fn list(&self) -> Vec<(RunId, LiveStatus)> {
        let mut runs: Vec<_> = self
            .shards
            .iter()
            .flat_map(|s| lock(s).values().map(|r| (r.id, r.status())).collect::<Vec<_>>())
            .collect();
        runs.sort_unstable_by_key(|(id, _)| *id);
        runs
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the map consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
