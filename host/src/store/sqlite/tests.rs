use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::store::{AttemptEnd, AttemptLimits, now_millis};

fn workflow() -> Arc<WorkflowRecord> {
    let bytes: Arc<[u8]> = vec![7u8; 100_000].into();
    Arc::new(WorkflowRecord {
        digest: "wf1".into(),
        name: "docs".into(),
        path: "docs.yaml".into(),
        source: "name: docs".into(),
        components: vec![
            ComponentRecord {
                digest: "c1".into(),
                name: "split.wasm".into(),
                bytes: bytes.clone(),
            },
            ComponentRecord {
                digest: "c1".into(),
                name: "split.wasm".into(),
                bytes,
            },
        ],
    })
}

fn accepted(run: RunId) -> Event {
    Event::RunAccepted {
        run,
        workflow: "wf1".into(),
        name: "docs".into(),
        owner: "a:1".into(),
        lease_until: now_millis() + 30_000,
        input: br#"{"text":"a b"}"#.to_vec(),
        at: now_millis(),
    }
}

fn ended(
    run: RunId,
    step: &str,
    item: Option<u32>,
    attempt: u32,
    status: AttemptStatus,
    last: bool,
) -> Event {
    Event::AttemptEnded(Box::new(AttemptEnd {
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
        outcome: if status == AttemptStatus::Completed {
            "completed"
        } else {
            "retryable"
        },
        message: None,
        timeout_level: None,
        output: (status == AttemptStatus::Completed).then(|| b"42".to_vec()),
        log: Some("hello".into()),
        usage: AttemptUsage {
            duration: Duration::from_millis(3),
            queue_wait: Duration::from_millis(1),
            fuel: 1000,
            peak_memory: 65536,
            peak_scratch: 4096,
        },
        started_us: now_millis() * 1000 - 3000,
        at: now_millis(),
    }))
}

fn started(run: RunId, step: &str, item: Option<u32>, attempt: u32) -> Event {
    Event::AttemptStarted {
        run,
        step: step.into(),
        item,
        attempt,
        at: now_millis(),
    }
}

fn run_ended(run: RunId, status: RunState, error: Option<&str>) -> Event {
    Event::RunEnded {
        run,
        status,
        output: None,
        error: error.map(Into::into),
        started: None,
        at: now_millis(),
    }
}

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("s.db"), Durability::Strict).unwrap()
}

/// The ids of every run the store lists, newest first.
fn run_ids(store: &mut SqliteStore) -> Vec<RunId> {
    store
        .runs(&RunFilter::default())
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect()
}

#[test]
fn an_incomplete_run_comes_back_with_its_code_completed_units_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    store
        .write(&[
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
            Event::StateWritten {
                run: 1,
                key: "n".into(),
                value: "1".into(),
            },
            Event::StateWritten {
                run: 1,
                key: "n".into(),
                value: "2".into(),
            },
            Event::RunEnded {
                run: 2,
                status: RunState::Succeeded,
                output: Some(b"1".to_vec()),
                error: None,
                started: None,
                at: now_millis(),
            },
        ])
        .unwrap();
    assert_eq!(store.next_run_id().unwrap(), 3);
    drop(store);

    let mut store = open(&dir);
    let runs = store.claim_incomplete("b:2", now_millis() + 1000).unwrap();
    assert_eq!(runs.len(), 1, "the finished run is not claimed");
    let run = &runs[0];
    assert_eq!(run.id, 1);
    let wf = run.workflow.as_ref().unwrap();
    assert_eq!(wf.components.len(), 2);
    assert_eq!(wf.components[1].bytes.len(), 100_000);
    assert_eq!(run.input, br#"{"text":"a b"}"#);
    let mut done: Vec<_> = run
        .done
        .iter()
        .map(|a| (a.step.as_str(), a.item, a.attempt))
        .collect();
    done.sort();
    assert_eq!(done, [("a", None, 2), ("b", Some(0), 1)]);
    assert_eq!(run.done[0].output.as_deref(), Some(&b"42"[..]));
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

#[test]
fn a_workflow_and_its_components_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    for run in 1..=3 {
        store
            .write(&[Event::WorkflowDefined(workflow()), accepted(run)])
            .unwrap();
    }
    let count: i64 = store
        .conn
        .query_row("SELECT count(*) FROM components", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 1);
}

#[test]
fn collecting_removes_payloads_keeps_the_audit_record_and_frees_space() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let mut events = vec![Event::WorkflowDefined(workflow())];
    for run in 1..=50 {
        events.push(accepted(run));
        events.push(Event::RunStarted {
            run,
            at: now_millis(),
        });
        let mut end = ended(run, "a", None, 1, AttemptStatus::Completed, true);
        if let Event::AttemptEnded(a) = &mut end {
            a.output = Some(vec![b'x'; 20_000]);
        }
        events.push(end);
        events.push(Event::StateWritten {
            run,
            key: "k".into(),
            value: "1".into(),
        });
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
    store.write(&events).unwrap();

    let stats = store.collect(now_millis() - 5_000).unwrap();
    assert_eq!(stats.runs, 50);
    assert!(stats.bytes_freed > 1_000_000, "{stats:?}");
    let history = store.history(7).unwrap().unwrap();
    assert!(history.summary.collected);
    assert_eq!(history.summary.status, RunState::Succeeded);
    assert!(history.summary.finished_at.is_some());
    assert_eq!((history.input, history.output), (None, None));
    assert!(history.state.is_empty());
    let attempt = &history.attempts[0];
    assert_eq!((attempt.output.as_ref(), attempt.log.as_ref()), (None, None));
    assert_eq!(attempt.outcome.as_deref(), Some("completed"));
    assert_eq!((attempt.usage.fuel, attempt.usage.peak_memory), (1000, 65536));
    assert_eq!(
        (attempt.usage.peak_scratch, attempt.limits.scratch),
        (4096, 1 << 20)
    );
    assert_eq!(attempt.usage.duration, Duration::from_millis(3));
    // The incomplete run keeps everything, its component included.
    let open_run = store.claim_incomplete("x", 0).unwrap();
    assert_eq!(open_run.len(), 1);
    assert!(open_run[0].workflow.is_ok());
    assert_eq!(
        store.collect(now_millis()).unwrap().runs,
        0,
        "collecting twice does nothing"
    );
}

#[test]
fn a_second_writer_is_refused_naming_the_file_and_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(&dir);
    let err = SqliteStore::open(&dir.path().join("s.db"), Durability::Strict).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("s.db") && message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
    // Readers are welcome.
    SqliteStore::open_read_only(&dir.path().join("s.db")).unwrap();
}

#[test]
fn a_file_that_is_not_a_journal_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    let err = SqliteStore::open(&garbage, Durability::Strict).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("garbage.db"), "{err}");

    let other = dir.path().join("other.db");
    Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let err = SqliteStore::open(&other, Durability::Strict).unwrap_err();
    assert!(err.to_string().contains("not a stepbox journal"), "{err}");
}

#[test]
fn an_integrity_failure_is_reported_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mut store = open(&dir);
    store
        .write(&[Event::WorkflowDefined(workflow()), accepted(1)])
        .unwrap();
    let root: i64 = store
        .conn
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = 'runs'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(store);
    // The header of the `runs` table's page claims a fragmented byte that is not there.
    let mut bytes = std::fs::read(&path).unwrap();
    let page_size = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    let at = (root as usize - 1) * page_size + 7;
    bytes[at] = bytes[at].wrapping_add(1);
    std::fs::write(&path, bytes).unwrap();
    let mut store = SqliteStore::open_read_only(&path).unwrap();
    let err = store.check_integrity().unwrap_err();
    let line = err.to_string();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{line}");
    assert!(line.contains("*** in database main *** "), "{line}");
    assert!(!line.contains('\n'), "{line:?}");
}

#[test]
fn a_journal_from_a_newer_stepbox_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&dir));
    Connection::open(dir.path().join("s.db"))
        .unwrap()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    let err = SqliteStore::open(&dir.path().join("s.db"), Durability::Strict).unwrap_err();
    assert!(matches!(err, StoreError::NewerFormat { found: 99, .. }), "{err}");
    assert!(err.to_string().contains("upgrade stepbox"), "{err}");
}

#[test]
fn an_unwritable_place_is_refused_as_read_only() {
    // /sys refuses new files even to root.
    let err = SqliteStore::open(Path::new("/sys/stepbox-test/s.db"), Durability::Strict).unwrap_err();
    assert!(matches!(err, StoreError::ReadOnly { .. }), "{err}");
}

#[test]
fn a_full_disk_fails_the_write_and_keeps_what_was_committed() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    store
        .write(&[Event::WorkflowDefined(workflow()), accepted(1)])
        .unwrap();
    let pages: i64 = store
        .conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    store.set_max_pages(pages as u64 + 2).unwrap();
    let big = Event::StateWritten {
        run: 1,
        key: "k".into(),
        value: "x".repeat(100_000),
    };
    let err = store.write(&[accepted(2), big]).unwrap_err();
    assert!(matches!(err, StoreError::Full { .. }), "{err}");
    assert_eq!(run_ids(&mut store), [1], "the failed batch left nothing");
    store.check_integrity().unwrap();
}

#[test]
fn a_statement_failing_partway_leaves_nothing_of_its_batch() {
    // The batch's statements fail without undoing their own earlier rows
    // (`OR FAIL`): the transaction around them must undo the whole batch.
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    store
        .write(&[Event::WorkflowDefined(workflow()), accepted(10)])
        .unwrap();
    // One statement inserts runs 1 to 9, then fails on run 10's row.
    let batch: Vec<Event> = (1..=12).map(accepted).collect();
    assert!(store.write(&batch).is_err());
    assert_eq!(run_ids(&mut store), [10], "the failed batch left nothing");
    store.check_integrity().unwrap();
}

#[test]
fn listing_filters_by_status_and_workflow() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    store
        .write(&[
            Event::WorkflowDefined(workflow()),
            accepted(1),
            accepted(2),
            run_ended(1, RunState::Failed, Some("boom")),
        ])
        .unwrap();
    let failed = store
        .runs(&RunFilter {
            status: vec![RunState::Failed],
            ..RunFilter::default()
        })
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].error.as_deref(), Some("boom"));
    let all = store
        .runs(&RunFilter {
            workflow: Some("docs".into()),
            limit: Some(1),
            ..RunFilter::default()
        })
        .unwrap();
    assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), [2], "newest first");
    assert!(
        store
            .runs(&RunFilter {
                workflow: Some("nope".into()),
                ..RunFilter::default()
            })
            .unwrap()
            .is_empty()
    );
}

#[test]
fn attempt_ends_written_many_rows_per_statement_each_land_in_their_own_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    // Item 3 started in an earlier commit: its end must overwrite that row.
    store
        .write(&[
            Event::WorkflowDefined(workflow()),
            accepted(1),
            started(1, "fan", Some(3), 1),
        ])
        .unwrap();
    // Two full multi-row statements and a remainder, with other events
    // between the ends, and one item that failed before it succeeded.
    let mut batch = Vec::new();
    for item in 0..37u32 {
        batch.push(ended(1, "fan", Some(item), 1, AttemptStatus::Completed, true));
        if item % 10 == 0 {
            batch.push(Event::StateWritten {
                run: 1,
                key: format!("k{item}"),
                value: item.to_string(),
            });
        }
    }
    batch.push(ended(1, "fan", Some(40), 1, AttemptStatus::Failed, false));
    batch.push(ended(1, "fan", Some(40), 2, AttemptStatus::Completed, true));
    store.write(&batch).unwrap();

    let history = store.history(1).unwrap().unwrap();
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
    let started = history.attempts.iter().find(|a| a.item == Some(3)).unwrap();
    assert_eq!(
        started.usage.fuel, 1000,
        "the end did not overwrite the start row"
    );
    assert_eq!(started.limits.fuel, 2000);
    assert_eq!(history.state.len(), 4);
}

#[test]
fn runs_accepted_many_rows_per_statement_take_the_later_events_of_their_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    // Two full multi-row statements and a remainder; each run's (re)start
    // and end come after its acceptance in the same batch.
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
    store.write(&batch).unwrap();

    let runs = store.runs(&RunFilter::default()).unwrap();
    assert_eq!(runs.len(), 37);
    for r in &runs {
        let expected = match r.id {
            id if id % 2 == 0 => RunState::Failed,
            id if id % 3 == 0 => RunState::Running,
            _ => RunState::Accepted,
        };
        assert_eq!(r.status, expected, "run {}", r.id);
        assert_eq!(r.workflow, "docs");
        // A run started and ended in one batch keeps its start time.
        assert_eq!(r.started_at.is_some(), r.id % 3 == 0, "run {}", r.id);
    }
    let history = store.history(37).unwrap().unwrap();
    assert_eq!(history.input.as_deref(), Some(&br#"{"text":"a b"}"#[..]));
    // Runs 1, 3, 5... did not end: they come back for recovery, each once.
    let mut incomplete: Vec<RunId> = store
        .claim_incomplete("b:2", now_millis() + 1000)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    incomplete.sort_unstable();
    assert_eq!(incomplete, (1..=37).step_by(2).collect::<Vec<_>>());
}

#[test]
fn a_fresh_run_is_running_once_an_attempt_started_and_its_end_records_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    store
        .write(&[Event::WorkflowDefined(workflow()), accepted(1), accepted(2)])
        .unwrap();
    let step_started = now_millis() - 500;
    store
        .write(&[Event::AttemptStarted {
            run: 1,
            step: "split".into(),
            item: None,
            attempt: 1,
            at: step_started,
        }])
        .unwrap();
    let by_status = |store: &mut SqliteStore, status: RunState| -> Vec<RunId> {
        let filter = RunFilter {
            status: vec![status],
            ..RunFilter::default()
        };
        store.runs(&filter).unwrap().iter().map(|r| r.id).collect()
    };
    assert_eq!(by_status(&mut store, RunState::Running), [1]);
    assert_eq!(by_status(&mut store, RunState::Accepted), [2]);
    let mut counts = store.count_runs().unwrap();
    counts.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(counts, [(RunState::Accepted, 1), (RunState::Running, 1)]);
    let running = store.history(1).unwrap().unwrap().summary;
    assert_eq!(running.status, RunState::Running);
    assert_eq!(
        running.started_at,
        Some(step_started),
        "its first attempt's start"
    );
    assert_eq!(store.history(2).unwrap().unwrap().summary.started_at, None);

    let admitted = now_millis() - 600;
    store
        .write(&[Event::RunEnded {
            run: 1,
            status: RunState::Succeeded,
            output: Some(b"1".to_vec()),
            error: None,
            started: Some(admitted),
            at: now_millis(),
        }])
        .unwrap();
    let done = store.history(1).unwrap().unwrap().summary;
    assert_eq!(done.status, RunState::Succeeded);
    assert_eq!(done.started_at, Some(admitted));
    assert_eq!(by_status(&mut store, RunState::Running), Vec::<RunId>::new());
}

#[test]
fn a_journal_indexed_by_status_is_reindexed_and_keeps_its_incomplete_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    store
        .write(&[
            Event::WorkflowDefined(workflow()),
            accepted(1),
            accepted(2),
            run_ended(2, RunState::Succeeded, None),
        ])
        .unwrap();
    // As the first builds wrote it.
    store
        .conn
        .execute_batch(
            "DROP INDEX runs_unfinished;
             CREATE INDEX runs_incomplete ON runs (id) WHERE status IN ('accepted', 'running', 'interrupted');",
        )
        .unwrap();
    drop(store);

    let mut store = open(&dir);
    let indexes: Vec<String> = store
        .conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'runs' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(indexes, ["runs_unfinished"]);
    let runs = store.claim_incomplete("b:2", now_millis() + 1000).unwrap();
    assert_eq!(runs.iter().map(|r| r.id).collect::<Vec<_>>(), [1]);
    store.check_integrity().unwrap();
}

#[test]
fn a_journal_from_before_the_scratch_quota_is_read_and_then_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    {
        let mut store = open(&dir);
        store
            .write(&[
                Event::WorkflowDefined(workflow()),
                accepted(1),
                ended(1, "split", None, 1, AttemptStatus::Completed, true),
            ])
            .unwrap();
    }
    // What a journal written before the scratch columns looks like.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "ALTER TABLE attempts DROP COLUMN peak_scratch; ALTER TABLE attempts DROP COLUMN scratch_limit;
         ALTER TABLE attempts DROP COLUMN timeout_level;",
    )
    .unwrap();
    drop(conn);

    let mut reader = SqliteStore::open_read_only(&path).unwrap();
    let attempt = &reader.history(1).unwrap().unwrap().attempts[0];
    assert_eq!((attempt.usage.fuel, attempt.usage.peak_scratch), (1000, 0));
    drop(reader);

    let mut store = SqliteStore::open(&path, Durability::Strict).unwrap();
    let mut timed_out = ended(1, "count", None, 1, AttemptStatus::Failed, true);
    if let Event::AttemptEnded(end) = &mut timed_out {
        end.timeout_level = Some(crate::policy::TimeoutLevel::Workflow);
    }
    store.write(&[timed_out]).unwrap();
    let history = store.history(1).unwrap().unwrap();
    let count = history.attempts.iter().find(|a| a.step == "count").unwrap();
    assert_eq!((count.usage.peak_scratch, count.limits.scratch), (4096, 1 << 20));
    assert_eq!(count.timeout_level, Some(crate::policy::TimeoutLevel::Workflow));
    let split = history.attempts.iter().find(|a| a.step == "split").unwrap();
    assert_eq!(split.timeout_level, None);
}

#[test]
fn an_empty_file_a_writer_has_not_laid_out_reads_as_no_journal_yet() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    std::fs::write(&path, b"").unwrap();
    let err = SqliteStore::open_read_only(&path).unwrap_err();
    assert!(err.to_string().contains("no journal here yet"), "{err}");
}
