//! The fixtures every property writes: also for a store's own tests of
//! what is particular to it.

use std::sync::Arc;
use std::time::Duration;

use crate::outcome::{OutcomeKind, Usage};
use crate::store::{
    AttemptEnd, AttemptLimits, AttemptStatus, ComponentRecord, Event, Millis, RunFilter, RunId, RunState,
    StoreReader, StoreWriter, WorkflowRecord, now_millis,
};

/// The definition every property's runs use, with one component listed
/// for two steps.
pub(crate) fn workflow() -> Arc<WorkflowRecord> {
    let bytes: Arc<[u8]> = vec![7u8; 100_000].into();
    let component = ComponentRecord {
        digest: "c1".into(),
        name: "split.wasm".into(),
        bytes,
    };
    Arc::new(WorkflowRecord {
        digest: "wf1".into(),
        name: "docs".into(),
        path: "docs.yaml".into(),
        source: "name: docs".into(),
        components: vec![component.clone(), component],
    })
}

/// Run `run` accepted, its lease ending at `lease_until`.
pub(crate) fn accepted_until(run: RunId, lease_until: Millis) -> Event {
    accepted_for(run, lease_until, None, None)
}

/// Run `run` accepted for `tenant` with idempotency key `key`.
pub(crate) fn accepted_for(
    run: RunId,
    lease_until: Millis,
    tenant: Option<&str>,
    key: Option<&str>,
) -> Event {
    Event::RunAccepted {
        run,
        workflow: "wf1".into(),
        name: "docs".into(),
        lease_until,
        queued: false,
        input: br#"{"text":"a b"}"#.to_vec(),
        at: now_millis(),
        tenant: tenant.map(Into::into),
        key: key.map(Into::into),
    }
}

/// Run `run` accepted queued, for any host to claim.
pub(crate) fn queued(run: RunId) -> Event {
    let mut event = accepted(run);
    if let Event::RunAccepted { queued, .. } = &mut event {
        *queued = true;
    }
    event
}

/// Run `run` accepted, with a lease of a minute.
pub(crate) fn accepted(run: RunId) -> Event {
    accepted_until(run, now_millis() + 60_000)
}

pub(crate) fn attempt_end(
    run: RunId,
    step: &str,
    item: Option<u32>,
    attempt: u32,
    status: AttemptStatus,
    last: bool,
) -> AttemptEnd {
    let completed = status == AttemptStatus::Completed;
    AttemptEnd {
        run,
        step: step.into(),
        item,
        attempt,
        component: "split.wasm".into(),
        limits: AttemptLimits {
            fuel: 2000,
            memory: 1 << 20,
            time: Duration::from_secs(1),
            scratch: 1 << 20,
        },
        status,
        last,
        outcome: if completed {
            OutcomeKind::Completed
        } else {
            OutcomeKind::Retryable
        },
        message: (!completed).then(|| "retryable: try again".to_owned()),
        timeout_level: None,
        output: completed.then(|| b"42".to_vec()),
        log: Some("hello".into()),
        usage: Usage {
            queue_wait: Duration::from_millis(1),
            wall_time: Duration::from_millis(2),
            fuel_consumed: 1000,
            peak_memory: 65536,
            peak_scratch: 4096,
            output_bytes: if completed { 2 } else { 0 },
        },
        started_us: now_millis() * 1000 - 3000,
        at: now_millis(),
    }
}

pub(crate) fn ended(
    run: RunId,
    step: &str,
    item: Option<u32>,
    attempt: u32,
    status: AttemptStatus,
    last: bool,
) -> Event {
    Event::AttemptEnded(Box::new(attempt_end(run, step, item, attempt, status, last)))
}

pub(crate) fn started(run: RunId, step: &str, item: Option<u32>, attempt: u32) -> Event {
    Event::AttemptStarted {
        run,
        step: step.into(),
        item,
        attempt,
        at: now_millis(),
    }
}

pub(crate) fn state(run: RunId, key: &str, value: &str) -> Event {
    Event::StateWritten {
        run,
        key: key.into(),
        value: value.into(),
    }
}

pub(crate) fn run_ended(run: RunId, status: RunState, error: Option<&str>) -> Event {
    Event::RunEnded {
        run,
        status,
        output: None,
        error: error.map(Into::into),
        started: None,
        at: now_millis(),
    }
}

/// Writes `events` as `owner`, which must own every run they touch.
pub(super) fn write(writer: &mut dyn StoreWriter, owner: &str, events: &[Event]) {
    let report = writer.write(owner, events).expect("the batch is written");
    assert!(
        report.refused.is_empty(),
        "{owner} owns every run it writes: {report:?}"
    );
}

/// The ids of the runs `filter` lists, in its order.
pub(super) fn ids(reader: &dyn StoreReader, filter: &RunFilter) -> Vec<RunId> {
    reader.runs(filter).unwrap().iter().map(|r| r.id).collect()
}

/// The ids of what `owner` claims, sorted.
pub(super) fn claim(writer: &mut dyn StoreWriter, owner: &str) -> Vec<RunId> {
    let mut ids: Vec<RunId> = writer
        .claim_incomplete(owner, now_millis() + 60_000)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    ids.sort_unstable();
    ids
}

pub(super) fn status(status: RunState) -> RunFilter {
    RunFilter {
        status: vec![status],
        ..RunFilter::default()
    }
}
