//! What a store answers with: listings, histories, the runs recovery
//! claims, and what retention did.

use std::sync::Arc;

use super::{AttemptLimits, AttemptStatus, Millis, RunId, RunState, WorkflowRecord};
use crate::outcome::{OutcomeKind, Usage};

/// One run, as `stepbox runs` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunSummary {
    /// The run's id.
    pub id: RunId,
    /// Its workflow's name.
    pub workflow: String,
    /// The digest of the definition and components it runs.
    pub workflow_digest: String,
    /// Where it is.
    pub status: RunState,
    /// When it was accepted.
    pub accepted_at: Millis,
    /// When it was first admitted, if it was.
    pub started_at: Option<Millis>,
    /// When it reached a final status.
    pub finished_at: Option<Millis>,
    /// Why it failed, in one line.
    pub error: Option<String>,
    /// Whether retention removed its payloads (input, output, state, logs).
    pub collected: bool,
    /// The tenant it was submitted for, on a server with tenants.
    pub tenant: Option<String>,
}

/// One attempt at one unit of work (a step, or an item of a `for_each`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AttemptRecord {
    /// The step's id.
    pub step: String,
    /// The item's index, for a `for_each` step.
    pub item: Option<u32>,
    /// The attempt's number, from 1, across restarts.
    pub attempt: u32,
    /// The component it ran, once ended.
    pub component: Option<String>,
    /// The limits it ran under, once ended.
    pub limits: AttemptLimits,
    /// How it ended, or [`AttemptStatus::Started`] if it never did.
    pub status: AttemptStatus,
    /// Whether this attempt's ending was the unit's last word (no retry followed).
    pub last: bool,
    /// The outcome kind, once ended. `None` also for a kind this build does
    /// not know (a newer stepbox wrote it): reading it must not fail, and
    /// [`AttemptRecord::message`] still says what happened.
    pub outcome: Option<OutcomeKind>,
    /// The outcome in one line, when it did not complete.
    pub message: Option<String>,
    /// Which level of the timeout hierarchy fired, for a timeout (none in
    /// journals from before levels were recorded).
    pub timeout_level: Option<crate::policy::TimeoutLevel>,
    /// When it started.
    pub started_at: Millis,
    /// When it started, in microseconds since the Unix epoch.
    pub started_us: i64,
    /// When it ended.
    pub finished_at: Option<Millis>,
    /// What it used.
    pub usage: Usage,
    /// Its output, unless collected.
    pub output: Option<Vec<u8>>,
    /// Its log, unless empty or collected.
    pub log: Option<String>,
}

/// A run's whole history, as `stepbox show` prints it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunHistory {
    /// The run.
    pub summary: RunSummary,
    /// Its input, unless collected.
    pub input: Option<Vec<u8>>,
    /// Its output, unless collected or not succeeded.
    pub output: Option<Vec<u8>>,
    /// Every attempt, in the order they started.
    pub attempts: Vec<AttemptRecord>,
    /// Its state at the end, unless collected.
    pub state: Vec<(String, String)>,
}

/// An incomplete run claimed for resumption.
#[derive(Debug, Clone)]
pub struct RecoveredRun {
    /// The run's id.
    pub id: RunId,
    /// The definition and components it started with, or why they are gone.
    pub workflow: Result<Arc<WorkflowRecord>, WorkflowUnavailable>,
    /// Its input.
    pub input: Vec<u8>,
    /// The tenant it was submitted for, on a server with tenants: the
    /// host that claims it admits it against that tenant's running quota.
    pub tenant: Option<String>,
    /// The last attempt of every unit of work that ended for good (completed,
    /// or failed with no retry to follow): these do not run again.
    pub done: Vec<AttemptRecord>,
    /// The highest attempt number recorded per unit (step id, item), so that
    /// attempt numbers go on counting.
    pub attempts: Vec<(String, Option<u32>, u32)>,
    /// Its state as last written.
    pub state: Vec<(String, String)>,
}

/// Why a recovered run cannot have the code it was accepted with: retention
/// or damage removed part of its record. The run is failed, saying so.
///
/// ```
/// use stepbox::store::WorkflowUnavailable;
/// let gone = WorkflowUnavailable::ComponentGone { digest: "ab12".into() };
/// assert_eq!(gone.to_string(), "component ab12 is no longer in the journal");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowUnavailable {
    /// The workflow's definition is not in the store.
    #[error("its workflow definition ({digest}) is no longer in the journal")]
    DefinitionGone {
        /// The digest the run refers to its workflow by.
        digest: String,
    },
    /// One of the workflow's components is not in the store.
    #[error("component {digest} is no longer in the journal")]
    ComponentGone {
        /// The component's digest.
        digest: String,
    },
}

/// A workflow's definition as a run recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    /// The workflow's name.
    pub name: String,
    /// The file it was read from.
    pub path: String,
    /// The file's text.
    pub source: String,
}

/// Which runs [`StoreReader::runs`](super::StoreReader::runs) lists.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only runs in these states; all when empty.
    pub status: Vec<RunState>,
    /// Only runs of this workflow (by name).
    pub workflow: Option<String>,
    /// Only runs of this tenant.
    pub tenant: Option<String>,
    /// Only runs accepted at or after this instant.
    pub since: Option<Millis>,
    /// Only runs accepted before this instant.
    pub until: Option<Millis>,
    /// Only runs with an id below this one: the next page after a page
    /// whose last (oldest) run this is.
    pub before: Option<RunId>,
    /// At most this many, newest first; all when `None`.
    pub limit: Option<usize>,
}

/// A host writing to the store, as `stepbox hosts` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostSummary {
    /// Its owner name (unique per process start).
    pub owner: String,
    /// When it last renewed its leases, where the store keeps heartbeats
    /// (PostgreSQL).
    pub heartbeat_at: Option<Millis>,
    /// Until when its claims last without another renewal.
    pub lease_until: Option<Millis>,
    /// The incomplete runs it owns.
    pub runs: u64,
}

/// What retention removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Runs whose payloads were removed.
    pub runs: u64,
    /// Bytes the database file shrank by.
    pub bytes_freed: u64,
}

impl WorkflowRecord {
    /// A workflow record from its `definition` and its components' rows
    /// (digest, then name and bytes unless the component is gone), in
    /// position order; components listed twice share their bytes.
    pub(crate) fn assemble(
        digest: &str,
        definition: Definition,
        components: impl IntoIterator<Item = (String, Option<String>, Option<Vec<u8>>)>,
    ) -> Result<Arc<WorkflowRecord>, WorkflowUnavailable> {
        let mut by_digest: std::collections::HashMap<String, Arc<[u8]>> = std::collections::HashMap::new();
        let mut records = Vec::new();
        for (digest, name, bytes) in components {
            let (Some(name), Some(bytes)) = (name, bytes) else {
                return Err(WorkflowUnavailable::ComponentGone { digest });
            };
            let bytes = by_digest
                .entry(digest.clone())
                .or_insert_with(|| bytes.into())
                .clone();
            records.push(super::ComponentRecord { digest, name, bytes });
        }
        Ok(Arc::new(WorkflowRecord {
            digest: digest.to_owned(),
            name: definition.name,
            path: definition.path,
            source: definition.source,
            components: records,
        }))
    }
}
