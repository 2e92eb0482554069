use rusqlite::Connection;

use super::*;
use crate::store::conformance::{accepted, ended, run_ended, workflow};
use crate::store::{AttemptStatus, RunFilter, RunState, StoreReader};

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("s.db"), Durability::Strict).unwrap()
}

fn reader(dir: &tempfile::TempDir) -> SqliteReader {
    SqliteReader::open(&dir.path().join("s.db")).unwrap()
}

/// Writes `events` as the tests' one owner.
fn write(store: &mut SqliteStore, events: &[Event]) -> Result<WriteReport, StoreError> {
    store.write("a", events)
}

/// The ids of every run the store lists, newest first.
fn run_ids(dir: &tempfile::TempDir) -> Vec<RunId> {
    reader(dir)
        .runs(&RunFilter::default())
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect()
}

#[test]
fn a_workflow_and_its_components_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    for run in 1..=3 {
        write(&mut store, &[Event::WorkflowDefined(workflow()), accepted(run)]).unwrap();
    }
    let count: i64 = store
        .conn
        .query_row("SELECT count(*) FROM components", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 1);
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
    SqliteReader::open(&dir.path().join("s.db")).unwrap();
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
    write(&mut store, &[Event::WorkflowDefined(workflow()), accepted(1)]).unwrap();
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
    let store = SqliteReader::open(&path).unwrap();
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
    write(&mut store, &[Event::WorkflowDefined(workflow()), accepted(1)]).unwrap();
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
    let err = write(&mut store, &[accepted(2), big]).unwrap_err();
    assert!(matches!(err, StoreError::Full { .. }), "{err}");
    assert_eq!(run_ids(&dir), [1], "the failed batch left nothing");
    store.check_integrity().unwrap();
}

#[test]
fn a_journal_indexed_by_status_is_reindexed_and_keeps_its_incomplete_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    write(
        &mut store,
        &[
            Event::WorkflowDefined(workflow()),
            accepted(1),
            accepted(2),
            run_ended(2, RunState::Succeeded, None),
        ],
    )
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
    assert_eq!(indexes, ["runs_key", "runs_unfinished"]);
    let runs = store.claim_incomplete("b", now_millis() + 1000).unwrap();
    assert_eq!(runs.iter().map(|r| r.id).collect::<Vec<_>>(), [1]);
    store.check_integrity().unwrap();
}

#[test]
fn a_journal_from_before_the_scratch_quota_is_read_and_then_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    {
        let mut store = open(&dir);
        write(
            &mut store,
            &[
                Event::WorkflowDefined(workflow()),
                accepted(1),
                ended(1, "split", None, 1, AttemptStatus::Completed, true),
            ],
        )
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

    let old = SqliteReader::open(&path).unwrap();
    let attempt = &old.history(1).unwrap().unwrap().attempts[0];
    assert_eq!(
        (attempt.usage.fuel_consumed, attempt.usage.peak_scratch),
        (1000, 0)
    );
    drop(old);

    let mut store = SqliteStore::open(&path, Durability::Strict).unwrap();
    let mut timed_out = ended(1, "count", None, 1, AttemptStatus::Failed, true);
    if let Event::AttemptEnded(end) = &mut timed_out {
        end.timeout_level = Some(crate::policy::TimeoutLevel::Workflow);
    }
    write(&mut store, &[timed_out]).unwrap();
    let history = reader(&dir).history(1).unwrap().unwrap();
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
    let err = SqliteReader::open(&path).unwrap_err();
    assert!(err.to_string().contains("no journal here yet"), "{err}");
}

#[test]
fn collecting_gives_the_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let mut events = vec![Event::WorkflowDefined(workflow())];
    for run in 1..=50 {
        events.push(accepted(run));
        events.push(Event::RunEnded {
            run,
            status: RunState::Succeeded,
            output: Some(vec![b'y'; 30_000]),
            error: None,
            started: None,
            at: now_millis() - 10_000,
        });
    }
    write(&mut store, &events).unwrap();
    let stats = store.collect(now_millis() - 5_000).unwrap();
    assert_eq!(stats.runs, 50);
    assert!(stats.bytes_freed > 1_000_000, "{stats:?}");
    store.check_integrity().unwrap();
}

#[test]
fn reopening_ends_every_lease_and_closes_a_gap_in_the_ids() {
    // The lock proves the process before is gone: its leases are stale and
    // the block of ids it held is free.
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let ids = store.allocate_run_ids(64).unwrap();
    assert_eq!(ids.start, 1);
    write(
        &mut store,
        &[Event::WorkflowDefined(workflow()), accepted(1), accepted(2)],
    )
    .unwrap();
    drop(store);

    let mut store = open(&dir);
    let claimed: Vec<RunId> = store
        .claim_incomplete("b", now_millis() + 1000)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(claimed, [1, 2], "a's live leases ended with its process");
    assert_eq!(store.allocate_run_ids(1).unwrap(), 3..4, "no gap after a crash");
}

#[test]
fn a_journal_from_before_the_id_counter_counts_on_from_its_last_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    write(
        &mut store,
        &[Event::WorkflowDefined(workflow()), accepted(1), accepted(7)],
    )
    .unwrap();
    store.conn.execute_batch("DROP TABLE run_ids").unwrap();
    drop(store);

    let mut store = open(&dir);
    assert_eq!(store.allocate_run_ids(2).unwrap(), 8..10);
    // An older build, which knows no counter, may add runs past it.
    write(&mut store, &[accepted(20)]).unwrap();
    assert_eq!(store.allocate_run_ids(1).unwrap(), 21..22);
}

#[test]
fn an_outcome_kind_from_a_newer_stepbox_reads_as_none_with_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    write(
        &mut store,
        &[
            Event::WorkflowDefined(workflow()),
            accepted(1),
            ended(1, "split", None, 1, AttemptStatus::Failed, true),
        ],
    )
    .unwrap();
    store
        .conn
        .execute_batch("UPDATE attempts SET outcome = 'quantum-decoherence', message = 'it decohered'")
        .unwrap();
    let attempt = &reader(&dir).history(1).unwrap().unwrap().attempts[0];
    assert_eq!(attempt.outcome, None);
    assert_eq!(attempt.message.as_deref(), Some("it decohered"));
    let recovered = store.claim_incomplete("a", now_millis() + 1000).unwrap();
    assert_eq!(recovered[0].done[0].outcome, None);
}
