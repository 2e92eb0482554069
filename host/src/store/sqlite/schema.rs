//! The file's layout: the tables, the format version, and the migrations
//! that bring an older file up to date in place.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::lock::sql_error;
use crate::store::{Durability, StoreError};

/// The newest journal format this build reads and writes.
pub(super) const FORMAT: i64 = 1;
/// Marks the file as a stepbox journal ("STBX").
pub(super) const APPLICATION_ID: i64 = 0x5354_4258;

/// The tables of a new journal.
///
/// `attempts` keeps its rows in insertion order and finds them by key
/// through `attempts_key`. Clustered by key, a run's second step would be
/// inserted between rows already written (its first step's, and the next
/// runs'), splitting full pages on nearly every commit; appended, rows fill
/// pages in turn, and only the small index entries go between others.
/// (Journals made before keep their clustered table: the statements work
/// on both.)
pub(super) const SCHEMA: &str = "
CREATE TABLE workflows (
    digest TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    source TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE components (
    digest TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    bytes BLOB NOT NULL
);
CREATE TABLE workflow_components (
    workflow TEXT NOT NULL,
    position INTEGER NOT NULL,
    component TEXT NOT NULL,
    PRIMARY KEY (workflow, position)
) WITHOUT ROWID;
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    workflow TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    input BLOB,
    output BLOB,
    error TEXT,
    accepted_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    owner TEXT,
    lease_until INTEGER,
    collected INTEGER NOT NULL DEFAULT 0,
    tenant TEXT,
    submission_key TEXT
);
CREATE INDEX runs_unfinished ON runs (id) WHERE finished_at IS NULL;
CREATE TABLE attempts (
    run INTEGER NOT NULL,
    step TEXT NOT NULL,
    item INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    status TEXT NOT NULL,
    last INTEGER NOT NULL DEFAULT 0,
    outcome TEXT,
    message TEXT,
    started_at INTEGER NOT NULL,
    finished_at INTEGER,
    duration_us INTEGER NOT NULL DEFAULT 0,
    queue_wait_us INTEGER NOT NULL DEFAULT 0,
    fuel INTEGER NOT NULL DEFAULT 0,
    peak_memory INTEGER NOT NULL DEFAULT 0,
    output BLOB,
    log TEXT,
    component TEXT,
    fuel_limit INTEGER NOT NULL DEFAULT 0,
    memory_limit INTEGER NOT NULL DEFAULT 0,
    time_limit_us INTEGER NOT NULL DEFAULT 0,
    started_us INTEGER NOT NULL DEFAULT 0,
    peak_scratch INTEGER NOT NULL DEFAULT 0,
    scratch_limit INTEGER NOT NULL DEFAULT 0,
    timeout_level TEXT
);
CREATE UNIQUE INDEX attempts_key ON attempts (run, step, item, attempt);
CREATE TABLE state (
    run INTEGER NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (run, key)
) WITHOUT ROWID;
";

/// Which runs are incomplete (accepted, running or interrupted): only a
/// final status sets `finished_at`. A test of a column, not a list of
/// statuses, because SQLite evaluates a partial index's `IN` list through a
/// temporary table on every insert and update of a run.
pub(super) const INCOMPLETE: &str = "finished_at IS NULL";

/// For the batch's own bookkeeping: its keys come from this host's events.
pub(super) type FastHash = foldhash::fast::RandomState;

/// Files written before `runs_unfinished` index incomplete runs by status.
pub(super) const MIGRATE_INCOMPLETE_INDEX: &str = "
DROP INDEX IF EXISTS runs_incomplete;
CREATE INDEX IF NOT EXISTS runs_unfinished ON runs (id) WHERE finished_at IS NULL;
";

/// The run id counter: the next id a block of ids starts at. Files from
/// before it get it in place, counting on from their last run; the format
/// stays the same, since an older build ignores the table (and
/// allocation counts past whatever runs such a build adds).
pub(super) const RUN_IDS: &str = "
CREATE TABLE IF NOT EXISTS run_ids (
    only INTEGER PRIMARY KEY CHECK (only = 1),
    next INTEGER NOT NULL
);
INSERT OR IGNORE INTO run_ids (only, next) SELECT 1, coalesce(max(id), 0) + 1 FROM runs;
";

/// What opening the file for writing may assume: the lock proves that no
/// other process writes it, so no lease in it is held by a live host, and
/// no block of ids beyond the last run is in use. Every lease ends now (so
/// a restarted host resumes its runs at once), and the counter goes back
/// to just after the last run (so a crash leaves no gap in the ids).
pub(super) const TAKE_OVER: &str = "
UPDATE runs SET lease_until = NULL WHERE finished_at IS NULL AND lease_until IS NOT NULL;
UPDATE run_ids SET next = (SELECT coalesce(max(id), 0) + 1 FROM runs);
";

/// Attempt columns added since the format's first files, with their
/// declarations and what a reader of an older file reads instead. Files
/// without them get them in place; the format stays the same, since every
/// column has a default and older builds name the columns they write.
pub(super) const ADDED_ATTEMPT_COLUMNS: &[(&str, &str, &str)] = &[
    ("peak_scratch", "INTEGER NOT NULL DEFAULT 0", "0"),
    ("scratch_limit", "INTEGER NOT NULL DEFAULT 0", "0"),
    ("timeout_level", "TEXT", "NULL"),
];

/// Run columns added since the format's first files, as
/// [`ADDED_ATTEMPT_COLUMNS`] are for attempts.
pub(super) const ADDED_RUN_COLUMNS: &[(&str, &str, &str)] =
    &[("tenant", "TEXT", "NULL"), ("submission_key", "TEXT", "NULL")];

/// Finds a tenant's run by its idempotency key. Not unique: the one
/// writer checks for a key before it accepts a run with it, and a unique
/// violation would fail the whole batch, other runs' events with it.
pub(super) const RUNS_BY_KEY: &str = "
CREATE INDEX IF NOT EXISTS runs_key ON runs (tenant, submission_key) WHERE submission_key IS NOT NULL;
";

/// Checks what the file is, creates the schema in a new one, and sets the
/// connection up.
pub(super) fn prepare(conn: &mut Connection, path: &Path, durability: Durability) -> Result<(), StoreError> {
    let err = |e| sql_error(path, e);
    let version = check_format(conn, path)?;
    if version == 0 {
        // Only before the first table may auto_vacuum change.
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")
            .map_err(err)?;
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Other {
            path: path.to_owned(),
            detail: format!("cannot use write-ahead logging (journal mode stays {mode})"),
        });
    }
    let sync = match durability {
        Durability::Strict => "FULL",
        Durability::Batched | Durability::Memory => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {sync}; PRAGMA temp_store = MEMORY; PRAGMA cache_size = -8192;
             PRAGMA wal_autocheckpoint = 8192; PRAGMA journal_size_limit = 67108864;"
    ))
    .map_err(err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
    if version == 0 {
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(SCHEMA).map_err(err)?;
        tx.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {FORMAT};"
        ))
        .map_err(err)?;
        tx.commit().map_err(err)?;
    } else {
        let old_index: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'runs_incomplete'",
                [],
                |r| r.get(0),
            )
            .map_err(err)?;
        if old_index {
            // Same format: an older build reading the file still finds
            // every run, only without the index's help.
            let tx = conn.transaction().map_err(err)?;
            tx.execute_batch(MIGRATE_INCOMPLETE_INDEX).map_err(err)?;
            tx.commit().map_err(err)?;
        }
        for (table, added) in [("attempts", ADDED_ATTEMPT_COLUMNS), ("runs", ADDED_RUN_COLUMNS)] {
            let missing = missing_columns(conn, path, table, added)?;
            if !missing.is_empty() {
                let tx = conn.transaction().map_err(err)?;
                for (name, declaration, _) in added {
                    if missing.contains(name) {
                        tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {name} {declaration};"))
                            .map_err(err)?;
                    }
                }
                tx.commit().map_err(err)?;
            }
        }
    }
    let tx = conn.transaction().map_err(err)?;
    tx.execute_batch(RUNS_BY_KEY).map_err(err)?;
    tx.execute_batch(RUN_IDS).map_err(err)?;
    tx.execute_batch(TAKE_OVER).map_err(err)?;
    tx.commit().map_err(err)?;
    Ok(())
}

/// Which of `added` (a table's added columns) the file's `table` lacks.
pub(super) fn missing_columns(
    conn: &Connection,
    path: &Path,
    table: &str,
    added: &[(&'static str, &str, &str)],
) -> Result<Vec<&'static str>, StoreError> {
    let err = |e| sql_error(path, e);
    let mut stmt = conn
        .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
        .map_err(err)?;
    let present = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect::<Result<HashSet<String>, _>>())
        .map_err(err)?;
    Ok(added
        .iter()
        .map(|(name, _, _)| *name)
        .filter(|name| !present.contains(*name))
        .collect())
}

/// The file's format version (0 for a new, empty file), or why it cannot be used.
pub(super) fn check_format(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    let err = |e| sql_error(path, e);
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    let app: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(err)?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(err)?;
    if version == 0 && app == 0 && tables == 0 {
        return Ok(0);
    }
    if app != APPLICATION_ID {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: "a SQLite database, but not a stepbox journal".into(),
        });
    }
    if version > FORMAT {
        return Err(StoreError::NewerFormat {
            path: path.to_owned(),
            found: version,
            known: FORMAT,
        });
    }
    Ok(version)
}
