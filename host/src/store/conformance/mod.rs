//! The suite every store must pass: the properties of [`StoreWriter`] and
//! [`StoreReader`] that the journal, recovery and the CLI rely on, written
//! against the traits only.
//!
//! Each property is a function that takes a fresh, empty store (a
//! [`StoreUnderTest`]) and panics, saying what broke, if the store breaks
//! it. [`store_conformance!`](crate::store_conformance) makes one `#[test]`
//! of each, so a new store is checked with one line:
//!
//! ```ignore
//! // tests/all/store_conformance.rs
//! stepbox::store_conformance!(|| MyStore::fresh());
//! ```
//!
//! # Panics
//!
//! Every property panics when the store under test breaks it, or when one
//! of its calls fails.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod listings;
pub use self::listings::{
    listings_filter_by_status_and_workflow_newest_first,
    tenants_and_pages_filter_listings_and_keys_find_runs, windows_bound_listings_and_counts_follow_filters,
};

use super::{
    AttemptRecord, AttemptStatus, Definition, Event, Refused, RunFilter, RunId, RunState, StoreReader,
    StoreWriter, now_millis,
};
use crate::outcome::OutcomeKind;
use crate::policy::TimeoutLevel;

/// A store under test: one database, empty when the property starts.
pub trait StoreUnderTest {
    /// Opens the database's writing side. Called again after the writer
    /// before it was dropped, it opens the same database again, as a host
    /// that restarts does.
    fn writer(&self) -> Box<dyn StoreWriter>;

    /// Opens the database's query side (after a writer was opened once).
    fn reader(&self) -> Box<dyn StoreReader>;

    /// A second writer on the same database, open beside the first, where
    /// the store allows several hosts on one database; `None` where it
    /// allows one writer at a time (a SQLite file).
    fn second_writer(&self) -> Option<Box<dyn StoreWriter>>;
}

/// Makes a `#[test]` of every property of [`conformance`](crate::store::conformance),
/// each on a store `$fresh()` returns (a fresh [`StoreUnderTest`]).
///
/// ```ignore
/// mod sqlite {
///     stepbox::store_conformance!(super::SqliteUnderTest::new);
/// }
/// ```
#[macro_export]
macro_rules! store_conformance {
    ($fresh:expr) => {
        $crate::store_conformance!(@each $fresh;
            every_event_kind_round_trips,
            recovery_returns_incomplete_runs_with_what_they_did,
            a_live_lease_of_another_owner_is_not_claimed_an_expired_one_is,
            writes_of_a_run_another_owner_claimed_are_refused,
            orphans_are_claimed_from_dead_hosts_only_and_once,
            hosts_are_listed_with_the_runs_they_own,
            queued_runs_are_no_ones_until_a_host_claims_them,
            id_blocks_never_overlap_and_released_tails_are_reused,
            listings_filter_by_status_and_workflow_newest_first,
            tenants_and_pages_filter_listings_and_keys_find_runs,
            counts_and_statuses_follow_the_events,
            many_events_of_a_kind_in_one_batch_each_land,
            a_failed_batch_leaves_nothing,
            collecting_removes_payloads_and_keeps_the_audit,
            concurrent_readers_see_only_whole_batches,
            windows_bound_listings_and_counts_follow_filters,
        );
    };
    (@each $fresh:expr; $($property:ident),* $(,)?) => {
        $(
            #[test]
            fn $property() {
                let store = ($fresh)();
                $crate::store::conformance::$property(&store);
            }
        )*
    };
}

mod fixtures;

pub(crate) use fixtures::{
    accepted, accepted_for, accepted_until, attempt_end, ended, queued, run_ended, started, state, workflow,
};
use fixtures::{claim, ids, status, write};

/// Every kind of event comes back as written: a workflow's definition and
/// components, a run's acceptance, (re)start, state and end, and an
/// attempt's start and end with every field.
pub fn every_event_kind_round_trips(store: &dyn StoreUnderTest) {
    let mut writer = store.writer();
    let restarted = now_millis() - 700;
    let mut end = attempt_end(1, "b", Some(2), 3, AttemptStatus::Failed, true);
    end.outcome = OutcomeKind::Timeout;
    end.message = Some("timeout: the workflow's 1s timeout fired".into());
    end.timeout_level = Some(TimeoutLevel::Workflow);
    end.started_us = 1_700_000_000_123_456;
    let admitted = now_millis() - 900;
    write(
        &mut *writer,
        "a",
        &[
            Event::WorkflowDefined(workflow()),
            accepted(1),
            accepted(2),
            Event::RunStarted {
                run: 1,
                at: restarted,
            },
            started(1, "a", None, 1),
            Event::AttemptEnded(Box::new(end.clone())),
            state(1, "n", "\"x\""),
            Event::RunEnded {
                run: 2,
                status: RunState::Succeeded,
                output: Some(b"{\"ok\":1}".to_vec()),
                error: None,
                started: Some(admitted),
                at: now_millis(),
            },
        ],
    );
    let reader = store.reader();
    assert_eq!(
        reader.definition("wf1").unwrap(),
        Some(Definition {
            name: "docs".into(),
            path: "docs.yaml".into(),
            source: "name: docs".into(),
        })
    );
    assert_eq!(reader.definition("nope").unwrap(), None);

    let one = reader.history(1).unwrap().expect("run 1 is there");
    assert_eq!((one.summary.id, one.summary.workflow.as_str()), (1, "docs"));
    assert_eq!(one.summary.workflow_digest, "wf1");
    assert_eq!(one.summary.status, RunState::Running);
    assert_eq!(one.summary.started_at, Some(restarted));
    assert_eq!((one.summary.finished_at, one.summary.collected), (None, false));
    assert_eq!(one.input.as_deref(), Some(&br#"{"text":"a b"}"#[..]));
    assert_eq!(one.state, [("n".to_owned(), "\"x\"".to_owned())]);
    let first = one.attempts.iter().find(|a| a.step == "a").expect("a's attempt");
    assert_eq!(
        (first.status, first.attempt, first.item),
        (AttemptStatus::Started, 1, None)
    );
    assert_eq!((first.outcome, first.finished_at), (None, None));
    let second = one.attempts.iter().find(|a| a.step == "b").expect("b's attempt");
    let expected = AttemptRecord {
        step: "b".into(),
        item: Some(2),
        attempt: 3,
        component: Some("split.wasm".into()),
        limits: end.limits,
        status: AttemptStatus::Failed,
        last: true,
        outcome: Some(OutcomeKind::Timeout),
        message: end.message.clone(),
        timeout_level: Some(TimeoutLevel::Workflow),
        started_at: end.started_us / 1000,
        started_us: end.started_us,
        finished_at: Some(end.at),
        usage: end.usage,
        output: None,
        log: Some("hello".into()),
    };
    assert_eq!(second, &expected);

    let two = reader.history(2).unwrap().expect("run 2 is there");
    assert_eq!(two.summary.status, RunState::Succeeded);
    assert_eq!(two.summary.started_at, Some(admitted));
    assert!(two.summary.finished_at.is_some());
    assert_eq!(two.output.as_deref(), Some(&b"{\"ok\":1}"[..]));
    assert_eq!(reader.history(3).unwrap(), None);

    let recovered = writer.claim_incomplete("a", now_millis() + 60_000).unwrap();
    assert_eq!(recovered.len(), 1);
    let code = recovered[0].workflow.as_ref().expect("the code is kept");
    assert_eq!(**code, *workflow());
}

/// Recovery, after the writer is reopened: a claim returns every incomplete
/// run with its code, the last attempt of each unit that ended for good,
/// the highest attempt number per unit, and its state as last written; a
/// completed run is not returned.
pub fn recovery_returns_incomplete_runs_with_what_they_did(store: &dyn StoreUnderTest) {
    let mut writer = store.writer();
    write(
        &mut *writer,
        "a",
        &[
            Event::WorkflowDefined(workflow()),
            accepted(1),
            accepted(2),
            Event::RunStarted {
                run: 1,
                at: now_millis(),
            },
            started(1, "a", None, 1),
            ended(1, "a", None, 1, AttemptStatus::Failed, false),
            ended(1, "a", None, 2, AttemptStatus::Completed, true),
            ended(1, "b", Some(0), 1, AttemptStatus::Completed, true),
            started(1, "b", Some(1), 1),
            state(1, "n", "1"),
            state(1, "n", "2"),
            Event::RunEnded {
                run: 2,
                status: RunState::Succeeded,
                output: Some(b"1".to_vec()),
                error: None,
                started: None,
                at: now_millis(),
            },
        ],
    );
    // A host stopping gracefully hands its runs over.
    writer.release_leases("a").unwrap();
    drop(writer);

    let mut writer = store.writer();
    let runs = writer.claim_incomplete("b", now_millis() + 1000).unwrap();
    assert_eq!(runs.len(), 1, "the finished run is not claimed");
    let run = &runs[0];
    assert_eq!(run.id, 1);
    let code = run.workflow.as_ref().unwrap();
    assert_eq!(code.components.len(), 2);
    assert_eq!(code.components[1].bytes.len(), 100_000);
    assert_eq!(run.input, br#"{"text":"a b"}"#);
    let mut done: Vec<_> = run
        .done
        .iter()
        .map(|a| (a.step.as_str(), a.item, a.attempt))
        .collect();
    done.sort();
    assert_eq!(done, [("a", None, 2), ("b", Some(0), 1)]);
    let a = run.done.iter().find(|a| a.step == "a").unwrap();
    assert_eq!(a.output.as_deref(), Some(&b"42"[..]));
    assert_eq!(a.outcome, Some(OutcomeKind::Completed));
    let mut attempts = run.attempts.clone();
    attempts.sort();
    assert_eq!(
        attempts,
        [
            ("a".into(), None, 2),
            ("b".into(), Some(0), 1),
            ("b".into(), Some(1), 1)
        ]
    );
    assert_eq!(run.state, [("n".to_owned(), "2".to_owned())]);
}

/// A claim leaves alone a run under another owner's live lease, takes one
/// whose lease ended or that its owner released, and gives the claimant
/// back what it holds already. (A lease is its owner's: one owner's runs
/// share one, whether the store keeps it per host or per run.)
pub fn a_live_lease_of_another_owner_is_not_claimed_an_expired_one_is(store: &dyn StoreUnderTest) {
    let mut writer = store.writer();
    let now = now_millis();
    write(
        &mut *writer,
        "a",
        &[
            Event::WorkflowDefined(workflow()),
            accepted_until(1, now + 60_000),
        ],
    );
    write(
        &mut *writer,
        "x",
        &[
            accepted_until(2, now - 1_000),
            accepted_until(3, now - 1_000),
            run_ended(3, RunState::Failed, Some("boom")),
        ],
    );
    assert_eq!(claim(&mut *writer, "b"), [2], "only the expired lease");
    assert_eq!(
        claim(&mut *writer, "b"),
        [2],
        "the claimant's own come back to it"
    );
    assert_eq!(claim(&mut *writer, "c"), Vec::<RunId>::new(), "b's lease is live");
    assert_eq!(writer.release_leases("a").unwrap(), 1);
    assert_eq!(
        claim(&mut *writer, "b"),
        [1, 2],
        "a released run is claimed at once"
    );
}

/// Fencing: a host paused past its lease, whose runs another owner claimed
/// meanwhile, records nothing more for them: its writes are refused,
/// counted, and not applied, while the rest of its batch is (a run it
/// accepts in it); the new owner's apply. Renewing its lease when it wakes
/// gives it back none of them: renewal renews only the runs the writer
/// still owns.
pub fn writes_of_a_run_another_owner_claimed_are_refused(store: &dyn StoreUnderTest) {
    let mut writer = store.writer();
    let now = now_millis();
    write(
        &mut *writer,
        "a",
        &[
            Event::WorkflowDefined(workflow()),
            accepted_until(1, now + 60_000),
            accepted_until(2, now + 60_000),
        ],
    );
    // a pauses past its lease; b takes its runs over.
    assert_eq!(writer.renew_leases("a", now - 1).unwrap(), 2);
    assert_eq!(claim(&mut *writer, "b"), [1, 2]);
    assert_eq!(
        writer.renew_leases("a", now + 60_000).unwrap(),
        0,
        "a wakes: none of its runs are its own any more"
    );

    let report = writer
        .write(
            "a",
            &[
                state(1, "k", "a"),
                started(1, "s", None, 1),
                accepted_until(3, now + 60_000),
                state(3, "k", "a"),
                ended(1, "s", None, 1, AttemptStatus::Completed, true),
                run_ended(1, RunState::Failed, Some("late")),
                run_ended(2, RunState::Failed, Some("late")),
            ],
        )
        .unwrap();
    assert_eq!(
        report.refused,
        [Refused { run: 1, events: 4 }, Refused { run: 2, events: 1 }]
    );
    assert_eq!(report.refused_events(), 5);
    let reader = store.reader();
    let one = reader.history(1).unwrap().unwrap();
    assert!(one.state.is_empty() && one.attempts.is_empty(), "{one:?}");
    assert!(one.summary.status.is_incomplete(), "a's late end did not end it");
    assert!(reader.history(2).unwrap().unwrap().summary.status.is_incomplete());
    assert_eq!(
        reader.history(3).unwrap().unwrap().state,
        [("k".to_owned(), "a".to_owned())],
        "the rest of the batch is written"
    );

    write(&mut *writer, "b", &[state(1, "k", "b")]);
    assert_eq!(
        reader.history(1).unwrap().unwrap().state,
        [("k".to_owned(), "b".to_owned())]
    );

    let report = writer.write("a", &[state(99, "k", "a")]).unwrap();
    assert_eq!(
        report.refused,
        [Refused { run: 99, events: 1 }],
        "a run never accepted is no one's"
    );
    assert_eq!(reader.history(99).unwrap(), None);

    // b's lease ends; a's renewal must not extend it to b's runs.
    writer.claim_incomplete("b", now - 1).unwrap();
    assert_eq!(
        writer.renew_leases("a", now + 120_000).unwrap(),
        1,
        "a renews only run 3"
    );
    assert_eq!(claim(&mut *writer, "c"), [1, 2]);
    let report = writer.write("b", &[state(1, "k", "b2")]).unwrap();
    assert_eq!(report.refused_events(), 1, "b lost run 1 to c in turn");
}

/// Orphan claims take other owners' runs whose lease ended, at most the
/// limit, oldest first, never the claimant's own or a live lease; two
/// claimants never take the same run, and a claim that took some renews
/// the claimant's lease (it holds them from now on, and all it held). (A store one host owns alone has
/// no orphans: it claims none, and the rest is not checked.)
pub fn orphans_are_claimed_from_dead_hosts_only_and_once(store: &dyn StoreUnderTest) {
    let mut writer = store.writer();
    let now = now_millis();
    let mut events = vec![Event::WorkflowDefined(workflow())];
    events.extend((1..=4).map(|run| accepted_until(run, now - 1_000)));
    write(&mut *writer, "dead", &events);
    write(&mut *writer, "live", &[accepted_until(5, now + 60_000)]);
    write(&mut *writer, "me", &[accepted_until(6, now - 1_000)]);
    let mine = writer.claim_orphans("me", now + 60_000, 2).unwrap();
    if store.second_writer().is_none() {
        assert!(mine.is_empty(), "a store one host owns has no orphans: {mine:?}");
        return;
    }
    let ids = |runs: &[super::RecoveredRun]| runs.iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(&mine), [1, 2], "the oldest, at most the limit, never its own");
    assert_eq!(mine[0].input, br#"{"text":"a b"}"#);
    assert!(mine[0].workflow.is_ok());
    let mut other = store.second_writer().unwrap();
    let theirs = other.claim_orphans("other", now + 60_000, 10).unwrap();
    assert_eq!(
        ids(&theirs),
        [3, 4],
        "not me's fresh claims, not the live lease, not me's own: a claim renews the claimant's lease"
    );
    assert!(writer.claim_orphans("me", now + 60_000, 10).unwrap().is_empty());
    let report = writer.write("dead", &[state(1, "k", "late")]).unwrap();
    assert_eq!(report.refused_events(), 1, "the dead host's late write is fenced");
}

/// The hosts listed are the owners of incomplete runs, with how many each
/// owns; a host that renewed is listed with its lease, and one that
/// released its runs is not listed for them.
pub fn hosts_are_listed_with_the_runs_they_own(store: &dyn StoreUnderTest) {
    let mut writer = store.writer();
    let now = now_millis();
    write(
        &mut *writer,
        "a",
        &[
            Event::WorkflowDefined(workflow()),
            accepted(1),
            accepted(2),
            accepted(3),
        ],
    );
    write(&mut *writer, "a", &[run_ended(3, RunState::Succeeded, None)]);
    write(&mut *writer, "b", &[accepted(4)]);
    writer.renew_leases("b", now + 60_000).unwrap();
    let reader = store.reader();
    let hosts = reader.hosts().unwrap();
    let seen: Vec<(&str, u64)> = hosts.iter().map(|h| (h.owner.as_str(), h.runs)).collect();
    assert_eq!(seen, [("a", 2), ("b", 1)], "{hosts:?}");
    assert!(
        hosts[1].lease_until.is_some_and(|l| l >= now + 59_000),
        "{hosts:?}"
    );
    writer.release_leases("a").unwrap();
    let seen: Vec<String> = reader.hosts().unwrap().into_iter().map(|h| h.owner).collect();
    assert_eq!(seen, ["b"], "a released its runs");
}

/// A run accepted queued is no one's, the accepting writer's included:
/// its events are refused until a host claims it, and then are that
/// host's; it is claimed at once (no lease to wait for), and no host is
/// listed for it until then.
pub fn queued_runs_are_no_ones_until_a_host_claims_them(store: &dyn StoreUnderTest) {
    let mut writer = store.writer();
    write(
        &mut *writer,
        "a",
        &[Event::WorkflowDefined(workflow()), accepted(1), queued(2)],
    );
    let report = writer
        .write("a", &[state(1, "k", "a"), state(2, "k", "a")])
        .unwrap();
    assert_eq!(report.refused, [Refused { run: 2, events: 1 }]);
    let reader = store.reader();
    let hosts = reader.hosts().unwrap();
    let seen: Vec<(&str, u64)> = hosts.iter().map(|h| (h.owner.as_str(), h.runs)).collect();
    assert_eq!(seen, [("a", 1)], "{hosts:?}");
    assert_eq!(
        claim(&mut *writer, "b"),
        [2],
        "a's own run is under its live lease"
    );
    write(&mut *writer, "b", &[state(2, "k", "b")]);
    assert_eq!(
        reader.history(2).unwrap().unwrap().state,
        [("k".to_owned(), "b".to_owned())]
    );
    assert_eq!(
        reader.history(2).unwrap().unwrap().summary.status,
        RunState::Accepted
    );
}

/// Id blocks never overlap (between two writers too, where a store allows
/// two), lie past every run in the store, start at 1 in a fresh store, and
/// the released tail of the last block is handed out again.
pub fn id_blocks_never_overlap_and_released_tails_are_reused(store: &dyn StoreUnderTest) {
    let mut writer = store.writer();
    let first = writer.allocate_run_ids(10).unwrap();
    assert_eq!(first, 1..11, "a fresh store counts from 1");
    let second = writer.allocate_run_ids(5).unwrap();
    assert_eq!(second.end - second.start, 5);
    assert!(second.start >= first.end, "{first:?} and {second:?} overlap");
    assert!(writer.release_run_ids(second.start + 2..second.end).unwrap());
    let third = writer.allocate_run_ids(3).unwrap();
    assert_eq!(third.start, second.start + 2, "the released tail is reused");
    assert!(
        !writer.release_run_ids(first.start + 5..first.end).unwrap(),
        "a tail with blocks after it is not given back"
    );
    let fourth = writer.allocate_run_ids(1).unwrap();
    assert!(fourth.start >= third.end);
    assert!(writer.allocate_run_ids(0).unwrap().is_empty());

    // Ids of runs accepted some other way are not handed out again.
    write(
        &mut *writer,
        "a",
        &[Event::WorkflowDefined(workflow()), accepted(100)],
    );
    assert!(writer.allocate_run_ids(1).unwrap().start > 100);
    drop(writer);
    let mut writer = store.writer();
    assert!(
        writer.allocate_run_ids(1).unwrap().start > 100,
        "nor after a restart"
    );

    if let Some(mut other) = store.second_writer() {
        let mine = writer.allocate_run_ids(10).unwrap();
        let theirs = other.allocate_run_ids(10).unwrap();
        assert!(disjoint(&mine, &theirs), "{mine:?} and {theirs:?} overlap");
        assert!(
            !writer.release_run_ids(mine).unwrap(),
            "a block handed out after it keeps the tail from coming back"
        );
    }
}

fn disjoint(a: &Range<RunId>, b: &Range<RunId>) -> bool {
    a.end <= b.start || b.end <= a.start
}

/// A fresh run reads as running once an attempt started (its start is not
/// written, the attempt shows it), started when that attempt did; its end
/// records when it was admitted. Counts follow the same statuses.
pub fn counts_and_statuses_follow_the_events(store: &dyn StoreUnderTest) {
    let mut writer = store.writer();
    write(
        &mut *writer,
        "a",
        &[Event::WorkflowDefined(workflow()), accepted(1), accepted(2)],
    );
    let step_started = now_millis() - 500;
    write(
        &mut *writer,
        "a",
        &[Event::AttemptStarted {
            run: 1,
            step: "split".into(),
            item: None,
            attempt: 1,
            at: step_started,
        }],
    );
    let reader = store.reader();
    assert_eq!(ids(&*reader, &status(RunState::Running)), [1]);
    assert_eq!(ids(&*reader, &status(RunState::Accepted)), [2]);
    let mut counts = reader.count_runs().unwrap();
    counts.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(counts, [(RunState::Accepted, 1), (RunState::Running, 1)]);
    let running = reader.history(1).unwrap().unwrap().summary;
    assert_eq!(
        running.started_at,
        Some(step_started),
        "its first attempt's start"
    );
    assert_eq!(reader.history(2).unwrap().unwrap().summary.started_at, None);

    let admitted = now_millis() - 600;
    write(
        &mut *writer,
        "a",
        &[
            Event::RunEnded {
                run: 1,
                status: RunState::Succeeded,
                output: Some(b"1".to_vec()),
                error: None,
                started: Some(admitted),
                at: now_millis(),
            },
            run_ended(2, RunState::Interrupted, None),
        ],
    );
    let done = reader.history(1).unwrap().unwrap().summary;
    assert_eq!(
        (done.status, done.started_at),
        (RunState::Succeeded, Some(admitted))
    );
    assert!(ids(&*reader, &status(RunState::Running)).is_empty());
    let mut counts = reader.count_runs().unwrap();
    counts.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(counts, [(RunState::Interrupted, 1), (RunState::Succeeded, 1)]);
    assert_eq!(claim(&mut *writer, "a"), [2], "an interrupted run resumes");
}

/// Many events of one kind in one batch (runs accepted, attempts ended)
/// each land in their own row and take the later events of their batch;
/// an attempt's end overwrites its start from an earlier batch.
pub fn many_events_of_a_kind_in_one_batch_each_land(store: &dyn StoreUnderTest) {
    let mut writer = store.writer();
    let mut batch = vec![Event::WorkflowDefined(workflow())];
    for run in 1..=37 {
        batch.push(accepted(run));
        if run % 3 == 0 {
            batch.push(Event::RunStarted {
                run,
                at: now_millis(),
            });
        }
        if run % 2 == 0 {
            batch.push(run_ended(run, RunState::Failed, Some("boom")));
        }
    }
    batch.push(started(1, "fan", Some(3), 1));
    write(&mut *writer, "a", &batch);
    let reader = store.reader();
    let runs = reader.runs(&RunFilter::default()).unwrap();
    assert_eq!(runs.len(), 37);
    for r in &runs {
        let expected = match r.id {
            1 => RunState::Running,
            id if id % 2 == 0 => RunState::Failed,
            id if id % 3 == 0 => RunState::Running,
            _ => RunState::Accepted,
        };
        assert_eq!(r.status, expected, "run {}", r.id);
        // A run started and ended in one batch keeps its start time.
        if r.id != 1 {
            assert_eq!(r.started_at.is_some(), r.id % 3 == 0, "run {}", r.id);
        }
    }
    let mut incomplete = claim(&mut *writer, "a");
    incomplete.sort_unstable();
    assert_eq!(incomplete, (1..=37).step_by(2).collect::<Vec<_>>());
    // A resumed run whose start and end land in one batch is ended, with
    // its start time, beside one only started.
    let at = now_millis() - 5;
    write(
        &mut *writer,
        "a",
        &[
            Event::RunStarted { run: 31, at },
            Event::RunStarted { run: 35, at },
            run_ended(31, RunState::Succeeded, None),
        ],
    );
    let summary = |run| reader.history(run).unwrap().unwrap().summary;
    assert_eq!(
        (summary(31).status, summary(31).started_at),
        (RunState::Succeeded, Some(at))
    );
    assert_eq!(summary(35).status, RunState::Running);

    let mut batch = Vec::new();
    for item in 0..37u32 {
        batch.push(ended(1, "fan", Some(item), 1, AttemptStatus::Completed, true));
        if item % 10 == 0 {
            batch.push(state(1, &format!("k{item}"), &item.to_string()));
        }
    }
    batch.push(ended(1, "fan", Some(40), 1, AttemptStatus::Failed, false));
    batch.push(ended(1, "fan", Some(40), 2, AttemptStatus::Completed, true));
    write(&mut *writer, "a", &batch);
    let history = reader.history(1).unwrap().unwrap();
    let mut rows: Vec<_> = history
        .attempts
        .iter()
        .map(|a| (a.item.unwrap(), a.attempt, a.status, a.output.clone()))
        .collect();
    rows.sort_by_key(|r| (r.0, r.1));
    let mut expected: Vec<_> = (0..37u32)
        .map(|item| (item, 1, AttemptStatus::Completed, Some(b"42".to_vec())))
        .collect();
    expected.push((40, 1, AttemptStatus::Failed, None));
    expected.push((40, 2, AttemptStatus::Completed, Some(b"42".to_vec())));
    assert_eq!(rows, expected);
    let overwritten = history.attempts.iter().find(|a| a.item == Some(3)).unwrap();
    assert_eq!(
        (overwritten.usage.fuel_consumed, overwritten.limits.fuel),
        (1000, 2000)
    );
    assert_eq!(history.state.len(), 4);
}

/// A batch that fails (here: it accepts a run id already taken) leaves
/// nothing of itself, and what was committed before stays.
pub fn a_failed_batch_leaves_nothing(store: &dyn StoreUnderTest) {
    let mut writer = store.writer();
    write(
        &mut *writer,
        "a",
        &[Event::WorkflowDefined(workflow()), accepted(10)],
    );
    let mut batch: Vec<Event> = (1..=12).map(accepted).collect();
    batch.push(state(10, "k", "v"));
    assert!(writer.write("a", &batch).is_err(), "run 10 is accepted twice");
    let reader = store.reader();
    assert_eq!(
        ids(&*reader, &RunFilter::default()),
        [10],
        "the failed batch left nothing"
    );
    assert!(reader.history(10).unwrap().unwrap().state.is_empty());
}

/// Retention removes the payloads (input, output, state, logs) of runs
/// finished before the cutoff and keeps their audit: the runs and their
/// attempts are still listed, with every figure, marked collected. An
/// incomplete run keeps everything, its code included.
pub fn collecting_removes_payloads_and_keeps_the_audit(store: &dyn StoreUnderTest) {
    let mut writer = store.writer();
    let mut events = vec![Event::WorkflowDefined(workflow())];
    for run in 1..=50 {
        events.push(accepted(run));
        let mut end = attempt_end(run, "a", None, 1, AttemptStatus::Completed, true);
        end.output = Some(vec![b'x'; 20_000]);
        events.push(Event::AttemptEnded(Box::new(end)));
        events.push(state(run, "k", "1"));
        events.push(Event::RunEnded {
            run,
            status: RunState::Succeeded,
            output: Some(vec![b'y'; 10_000]),
            error: None,
            started: None,
            at: now_millis() - 10_000,
        });
    }
    events.push(accepted(51));
    events.push(state(51, "k", "kept"));
    write(&mut *writer, "a", &events);

    let stats = writer.collect(now_millis() - 5_000).unwrap();
    assert_eq!(stats.runs, 50);
    let reader = store.reader();
    assert_eq!(
        reader.runs(&RunFilter::default()).unwrap().len(),
        51,
        "every run is still listed"
    );
    let history = reader.history(7).unwrap().unwrap();
    assert!(history.summary.collected);
    assert_eq!(history.summary.status, RunState::Succeeded);
    assert!(history.summary.finished_at.is_some());
    assert_eq!((history.input, history.output), (None, None));
    assert!(history.state.is_empty());
    let attempt = &history.attempts[0];
    assert_eq!((attempt.output.as_ref(), attempt.log.as_ref()), (None, None));
    assert_eq!(attempt.outcome, Some(OutcomeKind::Completed));
    assert_eq!(
        (attempt.usage.fuel_consumed, attempt.usage.peak_memory),
        (1000, 65536)
    );
    assert_eq!(
        (attempt.usage.peak_scratch, attempt.limits.scratch),
        (4096, 1 << 20)
    );
    assert_eq!(attempt.usage.total(), Duration::from_millis(3));
    let mut scanned = 0;
    reader.scan_attempts(0, &mut |_| scanned += 1).unwrap();
    assert_eq!(scanned, 50, "collected attempts are still scanned");

    let open = writer.claim_incomplete("a", now_millis() + 60_000).unwrap();
    assert_eq!(open.len(), 1);
    assert!(open[0].workflow.is_ok(), "the incomplete run keeps its code");
    assert_eq!(open[0].state, [("k".to_owned(), "kept".to_owned())]);
    assert!(!reader.history(51).unwrap().unwrap().summary.collected);
    assert_eq!(
        writer.collect(now_millis()).unwrap().runs,
        0,
        "collecting twice does nothing"
    );
}

/// Several threads query through one shared reader while a writer commits
/// batches, and every read sees whole batches: each batch accepts and ends
/// [`PER_BATCH`] runs with an attempt each, so a reader never sees a run
/// accepted but not ended, nor a run without its attempt.
pub fn concurrent_readers_see_only_whole_batches(store: &dyn StoreUnderTest) {
    /// Runs per batch.
    const PER_BATCH: u64 = 5;
    const BATCHES: u64 = 40;
    let mut writer = store.writer();
    write(&mut *writer, "a", &[Event::WorkflowDefined(workflow())]);
    let reader: Arc<dyn StoreReader> = Arc::from(store.reader());
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (reader, done) = (Arc::clone(&reader), &done);
                scope.spawn(move || {
                    let mut reads = 0u64;
                    loop {
                        let finished = done.load(Ordering::Acquire);
                        let runs = reader.runs(&RunFilter::default()).unwrap();
                        assert_eq!(runs.len() as u64 % PER_BATCH, 0, "a part of a batch: {runs:?}");
                        assert!(runs.iter().all(|r| r.status == RunState::Succeeded), "{runs:?}");
                        let counted: u64 = reader.count_runs().unwrap().iter().map(|(_, n)| n).sum();
                        assert_eq!(counted % PER_BATCH, 0, "a part of a batch counted");
                        if let Some(newest) = runs.first() {
                            let history = reader.history(newest.id).unwrap().unwrap();
                            assert_eq!(history.attempts.len(), 1, "{history:?}");
                        }
                        reads += 1;
                        if finished {
                            return reads;
                        }
                    }
                })
            })
            .collect();
        for batch in 0..BATCHES {
            let mut events = Vec::new();
            for k in 0..PER_BATCH {
                let run = batch * PER_BATCH + k + 1;
                events.push(accepted(run));
                events.push(ended(run, "a", None, 1, AttemptStatus::Completed, true));
                events.push(Event::RunEnded {
                    run,
                    status: RunState::Succeeded,
                    output: Some(b"1".to_vec()),
                    error: None,
                    started: None,
                    at: now_millis(),
                });
            }
            write(&mut *writer, "a", &events);
        }
        done.store(true, Ordering::Release);
        for handle in readers {
            assert!(handle.join().expect("a reader panicked") > 0);
        }
    });
    assert_eq!(
        reader.runs(&RunFilter::default()).unwrap().len() as u64,
        PER_BATCH * BATCHES
    );
}
