//! The journal in a SQLite file: one writing process at a time (a lock file
//! proves it), WAL mode so readers never wait, incremental vacuum so
//! retention gives space back.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params, params_from_iter};

use super::{
    AttemptEnd, AttemptLimits, AttemptRecord, AttemptStatus, AttemptUsage, ComponentRecord, Durability,
    Event, GcStats, Millis, RecoveredRun, RunFilter, RunHistory, RunId, RunState, RunSummary, Store,
    StoreError, WorkflowRecord,
};

/// The newest journal format this build reads and writes.
const FORMAT: i64 = 1;
/// Marks the file as a stepbox journal ("STBX").
const APPLICATION_ID: i64 = 0x5354_4258;

/// The tables of a new journal.
///
/// `attempts` keeps its rows in insertion order and finds them by key
/// through `attempts_key`. Clustered by key, a run's second step would be
/// inserted between rows already written (its first step's, and the next
/// runs'), splitting full pages on nearly every commit; appended, rows fill
/// pages in turn, and only the small index entries go between others.
/// (Journals made before keep their clustered table: the statements work
/// on both.)
const SCHEMA: &str = "
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
    collected INTEGER NOT NULL DEFAULT 0
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
const INCOMPLETE: &str = "finished_at IS NULL";

/// For the batch's own bookkeeping: its keys come from this host's events.
type FastHash = foldhash::fast::RandomState;

/// Files written before `runs_unfinished` index incomplete runs by status.
const MIGRATE_INCOMPLETE_INDEX: &str = "
DROP INDEX IF EXISTS runs_incomplete;
CREATE INDEX IF NOT EXISTS runs_unfinished ON runs (id) WHERE finished_at IS NULL;
";

/// Attempt columns added since the format's first files, with their
/// declarations and what a reader of an older file reads instead. Files
/// without them get them in place; the format stays the same, since every
/// column has a default and older builds name the columns they write.
const ADDED_ATTEMPT_COLUMNS: &[(&str, &str, &str)] = &[
    ("peak_scratch", "INTEGER NOT NULL DEFAULT 0", "0"),
    ("scratch_limit", "INTEGER NOT NULL DEFAULT 0", "0"),
    ("timeout_level", "TEXT", "NULL"),
];

/// A journal in a SQLite database file.
///
/// [`SqliteStore::open`] takes the file for one process (a lock file beside
/// it, released when the process exits however it exits): a second host on
/// the same file gets [`StoreError::Locked`]. Because the lock proves no
/// other host is alive, [`Store::claim_incomplete`] claims every incomplete
/// run whatever its lease says. [`SqliteStore::open_read_only`] reads while a
/// host writes.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// Held for the store's life: the proof that this process is the writer.
    _lock: Option<File>,
    /// Digests already in the file, so definitions are written once.
    known_workflows: HashSet<String>,
    known_components: HashSet<String>,
    /// The attempt columns queries read: a file opened read-only before a
    /// writer added [`ADDED_ATTEMPT_COLUMNS`] reads their defaults instead.
    attempt_columns: String,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating it and its directory if need be) the journal at
    /// `path` for writing, fsyncing every commit under
    /// [`Durability::Strict`] and only at checkpoints under
    /// [`Durability::Batched`] (which stays safe if the process dies, not if
    /// the machine does).
    ///
    /// # Errors
    ///
    /// [`StoreError::Locked`] if another process has it open for writing,
    /// [`StoreError::ReadOnly`], [`StoreError::Corrupt`] (not a stepbox
    /// journal, or damaged), [`StoreError::NewerFormat`], or
    /// [`StoreError::Other`].
    pub fn open(path: &Path, durability: Durability) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io_error(path, &e))?;
        }
        let lock = take_lock(path)?;
        let conn = Connection::open(path).map_err(|e| sql_error(path, e))?;
        // Room for the hot statements and every size of multi-row insert.
        conn.set_prepared_statement_cache_capacity(64);
        let mut store = SqliteStore {
            conn,
            path: path.to_owned(),
            _lock: Some(lock),
            known_workflows: HashSet::new(),
            known_components: HashSet::new(),
            attempt_columns: attempt_columns(&[]),
        };
        store.prepare(durability)?;
        Ok(store)
    }

    /// Opens the journal at `path` to read, while a host may be writing it.
    ///
    /// # Errors
    ///
    /// [`StoreError::Other`] if there is no journal there, or those of
    /// [`SqliteStore::open`] but `Locked`.
    pub fn open_read_only(path: &Path) -> Result<SqliteStore, StoreError> {
        if !path.exists() {
            return Err(StoreError::Other {
                path: path.to_owned(),
                detail: "no journal here yet (no run has been recorded); check --db".into(),
            });
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| sql_error(path, e))?;
        let mut store = SqliteStore {
            conn,
            path: path.to_owned(),
            _lock: None,
            known_workflows: HashSet::new(),
            known_components: HashSet::new(),
            attempt_columns: String::new(),
        };
        if store.check_format()? == 0 {
            // A writer made the file and has not laid out the journal yet
            // (or died before it could): nothing was recorded.
            return Err(StoreError::Other {
                path: path.to_owned(),
                detail: "no journal here yet (no run has been recorded); check --db".into(),
            });
        }
        store.attempt_columns = attempt_columns(&store.missing_attempt_columns()?);
        store
            .conn
            .busy_timeout(Duration::from_secs(5))
            .map_err(|e| sql_error(path, e))?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs SQLite's integrity check over the whole file.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] with what the check found.
    pub fn check_integrity(&mut self) -> Result<(), StoreError> {
        let found: Vec<String> = self
            .conn
            .prepare("PRAGMA integrity_check")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| self.error(e))?;
        if found == ["ok"] {
            Ok(())
        } else {
            // SQLite's findings span lines ("*** in database main ***\n..."):
            // the error is one line.
            let detail = found
                .iter()
                .map(|f| f.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join("; ");
            Err(StoreError::Corrupt {
                path: self.path.clone(),
                detail,
            })
        }
    }

    /// Caps the file at `pages` database pages: writes beyond it fail as if
    /// the disk were full. For testing what a full disk does.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the setting cannot be applied.
    pub fn set_max_pages(&mut self, pages: u64) -> Result<(), StoreError> {
        self.conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
            .map_err(|e| self.error(e))
    }

    fn error(&self, e: rusqlite::Error) -> StoreError {
        sql_error(&self.path, e)
    }

    /// Checks what the file is, creates the schema in a new one, and sets the
    /// connection up.
    fn prepare(&mut self, durability: Durability) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |e| sql_error(&path, e);
        let version = self.check_format()?;
        if version == 0 {
            // Only before the first table may auto_vacuum change.
            self.conn
                .execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")
                .map_err(err)?;
        }
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Other {
                path: self.path.clone(),
                detail: format!("cannot use write-ahead logging (journal mode stays {mode})"),
            });
        }
        let sync = match durability {
            Durability::Strict => "FULL",
            Durability::Batched | Durability::Memory => "NORMAL",
        };
        self.conn
            .execute_batch(&format!(
                "PRAGMA synchronous = {sync}; PRAGMA temp_store = MEMORY; PRAGMA cache_size = -8192;
                 PRAGMA wal_autocheckpoint = 8192; PRAGMA journal_size_limit = 67108864;"
            ))
            .map_err(err)?;
        self.conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        if version == 0 {
            let tx = self.conn.transaction().map_err(err)?;
            tx.execute_batch(SCHEMA).map_err(err)?;
            tx.execute_batch(&format!(
                "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {FORMAT};"
            ))
            .map_err(err)?;
            tx.commit().map_err(err)?;
        } else {
            let old_index: bool = self
                .conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'runs_incomplete'",
                    [],
                    |r| r.get(0),
                )
                .map_err(err)?;
            if old_index {
                // Same format: an older build reading the file still finds
                // every run, only without the index's help.
                let tx = self.conn.transaction().map_err(err)?;
                tx.execute_batch(MIGRATE_INCOMPLETE_INDEX).map_err(err)?;
                tx.commit().map_err(err)?;
            }
            let missing = self.missing_attempt_columns()?;
            if !missing.is_empty() {
                let tx = self.conn.transaction().map_err(err)?;
                for (name, declaration, _) in ADDED_ATTEMPT_COLUMNS {
                    if missing.contains(name) {
                        tx.execute_batch(&format!("ALTER TABLE attempts ADD COLUMN {name} {declaration};"))
                            .map_err(err)?;
                    }
                }
                tx.commit().map_err(err)?;
            }
        }
        Ok(())
    }

    /// Which of [`ADDED_ATTEMPT_COLUMNS`] the file's `attempts` lacks.
    fn missing_attempt_columns(&self) -> Result<Vec<&'static str>, StoreError> {
        let err = |e| sql_error(&self.path, e);
        let mut stmt = self
            .conn
            .prepare("SELECT name FROM pragma_table_info('attempts')")
            .map_err(err)?;
        let present = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<Result<HashSet<String>, _>>())
            .map_err(err)?;
        Ok(ADDED_ATTEMPT_COLUMNS
            .iter()
            .map(|(name, _, _)| *name)
            .filter(|name| !present.contains(*name))
            .collect())
    }

    /// The file's format version (0 for a new, empty file), or why it cannot be used.
    fn check_format(&self) -> Result<i64, StoreError> {
        let path = &self.path;
        let err = |e| sql_error(path, e);
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        let app: i64 = self
            .conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(err)?;
        let tables: i64 = self
            .conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(err)?;
        if version == 0 && app == 0 && tables == 0 {
            return Ok(0);
        }
        if app != APPLICATION_ID {
            return Err(StoreError::Corrupt {
                path: path.clone(),
                detail: "a SQLite database, but not a stepbox journal".into(),
            });
        }
        if version > FORMAT {
            return Err(StoreError::NewerFormat {
                path: path.clone(),
                found: version,
                known: FORMAT,
            });
        }
        Ok(version)
    }

    fn write_events(&mut self, events: &[Event]) -> rusqlite::Result<(Vec<String>, Vec<String>)> {
        let mut new_workflows = Vec::new();
        let mut new_components = Vec::new();
        // What ends within the batch need not be written as started first:
        // under load most attempts start and end within one commit.
        // (Only worth the hashing when the batch holds starts to skip.)
        let mut ended_attempts: HashSet<(RunId, &str, Option<u32>, u32), FastHash> = HashSet::default();
        let mut ended_runs: HashMap<RunId, Option<Millis>, FastHash> = HashMap::default();
        let has_starts = events
            .iter()
            .any(|e| matches!(e, Event::AttemptStarted { .. } | Event::RunStarted { .. }));
        for event in events.iter().filter(|_| has_starts) {
            match event {
                Event::AttemptEnded(a) => {
                    ended_attempts.insert((a.run, &*a.step, a.item, a.attempt));
                }
                Event::RunEnded { run, .. } => {
                    ended_runs.insert(*run, None);
                }
                _ => {}
            }
        }
        for event in events {
            if let Event::RunStarted { run, at } = event
                && let Some(started) = ended_runs.get_mut(run)
            {
                started.get_or_insert(*at);
            }
        }
        // The batch's writes say `OR FAIL`: a failing statement keeps the
        // rows it wrote before it failed, and dropping the transaction undoes
        // them with the rest of the batch. SQLite's default (`ABORT`) would
        // undo the statement itself, and to be able to, copies every
        // existing page the statement touches into a statement journal:
        // on each of a batch's thousands of statements.
        let tx = self.conn.transaction()?;
        // Runs are inserted first, many rows per statement: a batch that
        // accepts thousands of runs at once holds up all of them until it
        // is committed. Their other events, later in the batch, find them.
        let accepted: Vec<Accepted<'_>> = events.iter().filter_map(Accepted::of).collect();
        insert_rows(&tx, &ACCEPT_RUN_SQL, RUN_PARAMS, &accepted, bind_run)?;
        // The hot statements, looked up once per batch rather than per event.
        let mut start_run = tx.prepare_cached(
            "UPDATE OR FAIL runs SET status = 'running', started_at = coalesce(started_at, ?2) WHERE id = ?1",
        )?;
        let mut start_attempt = tx.prepare_cached(
            "INSERT OR IGNORE INTO attempts (run, step, item, attempt, status, started_at)
                         VALUES (?1, ?2, ?3, ?4, 'started', ?5)",
        )?;
        // Attempt ends are the bulk of a journal: they are written after the
        // other events, many rows per statement. Reordering within the
        // transaction is safe: they touch only `attempts`, where an end
        // overwrites a start row and a later start of a written end is
        // ignored, in either order.
        let mut ends: Vec<&AttemptEnd> = Vec::new();
        let mut write_state = tx.prepare_cached(
            "INSERT OR FAIL INTO state (run, key, value) VALUES (?1, ?2, ?3)
                         ON CONFLICT (run, key) DO UPDATE SET value = excluded.value",
        )?;
        let mut end_run = tx.prepare_cached(
            "UPDATE OR FAIL runs SET status = ?2, output = ?3, error = ?4, finished_at = ?5, owner = NULL,
                         started_at = coalesce(started_at, ?6)
                         WHERE id = ?1",
        )?;
        for event in events {
            match event {
                Event::WorkflowDefined(w) => {
                    if self.known_workflows.contains(&w.digest) || new_workflows.contains(&w.digest) {
                        continue;
                    }
                    for (position, c) in w.components.iter().enumerate() {
                        if !self.known_components.contains(&c.digest) && !new_components.contains(&c.digest) {
                            let exists = tx
                                .prepare_cached("SELECT 1 FROM components WHERE digest = ?1")?
                                .exists([&c.digest])?;
                            if !exists {
                                tx.prepare_cached(
                                    "INSERT INTO components (digest, name, bytes) VALUES (?1, ?2, ?3)",
                                )?
                                .execute(params![
                                    c.digest,
                                    c.name,
                                    &c.bytes[..]
                                ])?;
                            }
                            new_components.push(c.digest.clone());
                        }
                        tx.prepare_cached(
                            "INSERT OR IGNORE INTO workflow_components (workflow, position, component)
                             VALUES (?1, ?2, ?3)",
                        )?
                        .execute(params![w.digest, position as i64, c.digest])?;
                    }
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO workflows (digest, name, path, source) VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![w.digest, w.name, w.path, w.source])?;
                    new_workflows.push(w.digest.clone());
                }
                Event::RunAccepted { .. } => {}
                Event::RunStarted { run, .. } if ended_runs.contains_key(run) => {}
                Event::AttemptStarted {
                    run,
                    step,
                    item,
                    attempt,
                    ..
                } if ended_attempts.contains(&(*run, &**step, *item, *attempt)) => {}
                Event::RunStarted { run, at } => {
                    start_run.execute(params![*run as i64, at])?;
                }
                Event::AttemptStarted {
                    run,
                    step,
                    item,
                    attempt,
                    at,
                } => {
                    start_attempt.execute(params![*run as i64, &**step, item_key(*item), attempt, at])?;
                }
                Event::AttemptEnded(a) => ends.push(a),
                Event::StateWritten { run, key, value } => {
                    write_state.execute(params![*run as i64, key, value])?;
                }
                Event::RunEnded {
                    run,
                    status,
                    output,
                    error,
                    started,
                    at,
                } => {
                    let finished = (!status.is_incomplete()).then_some(*at);
                    // Restarted in this batch too, its start was not written.
                    let started = ended_runs.get(run).copied().flatten().or(*started);
                    end_run.execute(params![
                        *run as i64,
                        status.as_str(),
                        output,
                        error,
                        finished,
                        started
                    ])?;
                }
            }
        }
        drop((start_run, start_attempt, write_state, end_run));
        insert_rows(&tx, &END_ATTEMPT_SQL, ATTEMPT_END_PARAMS, &ends, bind_attempt_end)?;
        tx.commit()?;
        Ok((new_workflows, new_components))
    }

    fn workflow_record(&self, digest: &str) -> Result<Result<Arc<WorkflowRecord>, String>, StoreError> {
        let row = self
            .conn
            .prepare_cached("SELECT name, path, source FROM workflows WHERE digest = ?1")
            .and_then(|mut s| {
                s.query_row([digest], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .optional()
            })
            .map_err(|e| self.error(e))?;
        let Some((name, path, source)) = row else {
            return Ok(Err(format!(
                "its workflow definition ({digest}) is no longer in the journal"
            )));
        };
        let components: Vec<(String, Option<String>, Option<Vec<u8>>)> = self
            .conn
            .prepare_cached(
                "SELECT wc.component, c.name, c.bytes FROM workflow_components wc
                 LEFT JOIN components c ON c.digest = wc.component
                 WHERE wc.workflow = ?1 ORDER BY wc.position",
            )
            .and_then(|mut s| {
                s.query_map([digest], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .map_err(|e| self.error(e))?;
        let mut by_digest: HashMap<String, Arc<[u8]>> = HashMap::new();
        let mut records = Vec::with_capacity(components.len());
        for (digest, name, bytes) in components {
            let (Some(name), Some(bytes)) = (name, bytes) else {
                return Ok(Err(format!("component {digest} is no longer in the journal")));
            };
            let bytes = by_digest
                .entry(digest.clone())
                .or_insert_with(|| bytes.into())
                .clone();
            records.push(ComponentRecord { digest, name, bytes });
        }
        Ok(Ok(Arc::new(WorkflowRecord {
            digest: digest.to_owned(),
            name,
            path,
            source,
            components: records,
        })))
    }

    fn attempts_of(&self, run: RunId, filter: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM attempts WHERE run = ?1 {filter} ORDER BY started_at, step, item, attempt",
            self.attempt_columns
        );
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.query_map([run as i64], attempt_record)?.collect())
            .map_err(|e| self.error(e))
    }

    fn state_of(&self, run: RunId) -> Result<Vec<(String, String)>, StoreError> {
        self.conn
            .prepare_cached("SELECT key, value FROM state WHERE run = ?1 ORDER BY key")
            .and_then(|mut s| {
                s.query_map([run as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(|e| self.error(e))
    }

    fn file_bytes(&self) -> Result<u64, StoreError> {
        let pages: i64 = self
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(|e| self.error(e))?;
        let size: i64 = self
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| self.error(e))?;
        Ok((pages * size) as u64)
    }
}

const ATTEMPT_COLUMNS: &str = "step, item, attempt, status, last, outcome, message, started_at, finished_at,
     duration_us, queue_wait_us, fuel, peak_memory, output, log,
     component, fuel_limit, memory_limit, time_limit_us, started_us, peak_scratch, scratch_limit,
     timeout_level";

/// [`ATTEMPT_COLUMNS`], with what an older file reads instead of each
/// `missing` one.
fn attempt_columns(missing: &[&str]) -> String {
    ATTEMPT_COLUMNS
        .split(',')
        .map(str::trim)
        .map(|column| {
            match ADDED_ATTEMPT_COLUMNS
                .iter()
                .find(|(name, _, _)| *name == column && missing.contains(name))
            {
                Some((_, _, instead)) => instead,
                None => column,
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn attempt_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<AttemptRecord> {
    let status: String = r.get(3)?;
    let item: i64 = r.get(1)?;
    Ok(AttemptRecord {
        step: r.get(0)?,
        item: u32::try_from(item).ok(),
        attempt: r.get(2)?,
        status: status.parse().unwrap_or(AttemptStatus::Started),
        last: r.get(4)?,
        outcome: r.get(5)?,
        message: r.get(6)?,
        timeout_level: r
            .get::<_, Option<String>>(22)?
            .as_deref()
            .and_then(crate::policy::TimeoutLevel::from_name),
        started_at: r.get(7)?,
        started_us: match r.get::<_, i64>(19)? {
            0 => r.get::<_, i64>(7)? * 1000,
            us => us,
        },
        finished_at: r.get(8)?,
        usage: AttemptUsage {
            duration: Duration::from_micros(r.get::<_, i64>(9)? as u64),
            queue_wait: Duration::from_micros(r.get::<_, i64>(10)? as u64),
            fuel: r.get::<_, i64>(11)? as u64,
            peak_memory: r.get::<_, i64>(12)? as u64,
            peak_scratch: r.get::<_, i64>(20)? as u64,
        },
        output: r.get(13)?,
        log: r.get(14)?,
        component: r.get(15)?,
        limits: AttemptLimits {
            fuel: r.get::<_, i64>(16)? as u64,
            memory: r.get::<_, i64>(17)? as u64,
            time: Duration::from_micros(r.get::<_, i64>(18)? as u64),
            scratch: r.get::<_, i64>(21)? as u64,
        },
    })
}

/// A run's status as the journal reports it. A fresh run's start is not
/// written (it would cost every run a write of its own): an accepted run
/// with attempts is running.
macro_rules! status_sql {
    () => {
        "CASE WHEN status = 'accepted' AND EXISTS (SELECT 1 FROM attempts a WHERE a.run = runs.id)
              THEN 'running' ELSE status END"
    };
}

/// A run's summary, in the order [`summary`] reads it. A run still running
/// started when its first attempt did; its end records its start.
const SUMMARY_COLUMNS: &str = concat!(
    "id, name, workflow, ",
    status_sql!(),
    ", accepted_at,
     coalesce(started_at, (SELECT min(a.started_at) FROM attempts a WHERE a.run = runs.id)),
     finished_at, error, collected"
);

fn summary(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunSummary> {
    let status: String = r.get(3)?;
    Ok(RunSummary {
        id: r.get::<_, i64>(0)? as RunId,
        workflow: r.get(1)?,
        workflow_digest: r.get(2)?,
        status: status.parse().unwrap_or(RunState::Running),
        accepted_at: r.get(4)?,
        started_at: r.get(5)?,
        finished_at: r.get(6)?,
        error: r.get(7)?,
        collected: r.get(8)?,
    })
}

impl Store for SqliteStore {
    fn next_run_id(&mut self) -> Result<RunId, StoreError> {
        let max: Option<i64> = self
            .conn
            .query_row("SELECT max(id) FROM runs", [], |r| r.get(0))
            .map_err(|e| self.error(e))?;
        Ok(max.map_or(1, |m| m as RunId + 1))
    }

    fn write(&mut self, events: &[Event]) -> Result<(), StoreError> {
        match self.write_events(events) {
            Ok((workflows, components)) => {
                self.known_workflows.extend(workflows);
                self.known_components.extend(components);
                Ok(())
            }
            Err(e) => Err(self.error(e)),
        }
    }

    fn renew_leases(&mut self, owner: &str, until: Millis) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(&format!(
                "UPDATE runs SET lease_until = ?2 WHERE owner = ?1 AND {INCOMPLETE}"
            ))
            .and_then(|mut s| s.execute(params![owner, until]))
            .map(drop)
            .map_err(|e| self.error(e))
    }

    fn claim_incomplete(&mut self, owner: &str, until: Millis) -> Result<Vec<RecoveredRun>, StoreError> {
        // The lock file proves no other host writes this file, so every
        // lease in it is stale, whatever its time says.
        let claimed: Vec<(i64, String, Option<Vec<u8>>)> = {
            let tx = self.conn.transaction().map_err(|e| sql_error(&self.path, e))?;
            tx.execute(
                &format!("UPDATE runs SET owner = ?1, lease_until = ?2 WHERE {INCOMPLETE}"),
                params![owner, until],
            )
            .map_err(|e| sql_error(&self.path, e))?;
            let rows = tx
                .prepare(&format!(
                    "SELECT id, workflow, input FROM runs WHERE {INCOMPLETE} ORDER BY id"
                ))
                .and_then(|mut s| {
                    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(|e| sql_error(&self.path, e))?;
            tx.commit().map_err(|e| sql_error(&self.path, e))?;
            rows
        };
        let mut workflows: HashMap<String, Result<Arc<WorkflowRecord>, String>> = HashMap::new();
        let mut runs = Vec::with_capacity(claimed.len());
        for (id, digest, input) in claimed {
            let id = id as RunId;
            let workflow = match workflows.get(&digest) {
                Some(w) => w.clone(),
                None => {
                    let w = self.workflow_record(&digest)?;
                    workflows.insert(digest, w.clone());
                    w
                }
            };
            let attempts = self
                .conn
                .prepare_cached(
                    "SELECT step, item, max(attempt) FROM attempts WHERE run = ?1 GROUP BY step, item",
                )
                .and_then(|mut s| {
                    s.query_map([id as i64], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            u32::try_from(r.get::<_, i64>(1)?).ok(),
                            r.get(2)?,
                        ))
                    })?
                    .collect()
                })
                .map_err(|e| self.error(e))?;
            runs.push(RecoveredRun {
                id,
                workflow,
                input: input.unwrap_or_else(|| b"null".to_vec()),
                done: self.attempts_of(id, "AND last = 1 AND status IN ('completed', 'failed')")?,
                attempts,
                state: self.state_of(id)?,
            });
        }
        Ok(runs)
    }

    fn runs(&mut self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM runs WHERE 1 = 1");
        let mut args: Vec<String> = Vec::new();
        if !filter.status.is_empty() {
            let marks = vec!["?"; filter.status.len()].join(", ");
            sql.push_str(&format!(" AND ({}) IN ({marks})", status_sql!()));
            args.extend(filter.status.iter().map(|s| s.as_str().to_owned()));
        }
        if let Some(name) = &filter.workflow {
            sql.push_str(" AND name = ?");
            args.push(name.clone());
        }
        sql.push_str(" ORDER BY id DESC");
        if let Some(limit) = filter.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        self.conn
            .prepare(&sql)
            .and_then(|mut s| s.query_map(params_from_iter(args.iter()), summary)?.collect())
            .map_err(|e| self.error(e))
    }

    fn history(&mut self, id: RunId) -> Result<Option<RunHistory>, StoreError> {
        let row = self
            .conn
            .query_row(
                &format!("SELECT {SUMMARY_COLUMNS}, input, output FROM runs WHERE id = ?1"),
                [id as i64],
                |r| {
                    Ok((
                        summary(r)?,
                        r.get::<_, Option<Vec<u8>>>(9)?,
                        r.get::<_, Option<Vec<u8>>>(10)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.error(e))?;
        let Some((summary, input, output)) = row else {
            return Ok(None);
        };
        Ok(Some(RunHistory {
            summary,
            input,
            output,
            attempts: self.attempts_of(id, "")?,
            state: self.state_of(id)?,
        }))
    }

    fn definition(&mut self, digest: &str) -> Result<Option<super::Definition>, StoreError> {
        self.conn
            .query_row(
                "SELECT name, path, source FROM workflows WHERE digest = ?1",
                [digest],
                |r| {
                    Ok(super::Definition {
                        name: r.get(0)?,
                        path: r.get(1)?,
                        source: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.error(e))
    }

    fn scan_attempts(
        &mut self,
        since: Millis,
        visit: &mut dyn FnMut(&AttemptRecord),
    ) -> Result<(), StoreError> {
        let columns = self.attempt_columns.replace("output, log", "NULL, NULL");
        let sql = format!("SELECT {columns} FROM attempts WHERE finished_at >= ?1");
        let mut stmt = self.conn.prepare(&sql).map_err(|e| sql_error(&self.path, e))?;
        let rows = stmt
            .query_map([since], attempt_record)
            .map_err(|e| sql_error(&self.path, e))?;
        for row in rows {
            visit(&row.map_err(|e| sql_error(&self.path, e))?);
        }
        Ok(())
    }

    fn count_runs(&mut self) -> Result<Vec<(RunState, u64)>, StoreError> {
        self.conn
            .prepare(concat!(
                "SELECT ",
                status_sql!(),
                " AS s, count(*) FROM runs GROUP BY s"
            ))
            .and_then(|mut s| {
                s.query_map([], |r| {
                    let status: String = r.get(0)?;
                    Ok((
                        status.parse().unwrap_or(RunState::Running),
                        r.get::<_, i64>(1)? as u64,
                    ))
                })?
                .collect()
            })
            .map_err(|e| self.error(e))
    }

    fn collect(&mut self, before: Millis) -> Result<GcStats, StoreError> {
        let size_before = self.file_bytes()?;
        let path = self.path.clone();
        let err = |e| sql_error(&path, e);
        let tx = self.conn.transaction().map_err(err)?;
        tx.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS collecting (id INTEGER PRIMARY KEY); DELETE FROM collecting;",
        )
        .map_err(err)?;
        let runs = tx
            .execute(
                "INSERT INTO collecting (id) SELECT id FROM runs
                 WHERE collected = 0 AND finished_at IS NOT NULL AND finished_at < ?1",
                [before],
            )
            .map_err(err)?;
        tx.execute_batch(
            "UPDATE runs SET input = NULL, output = NULL, collected = 1 WHERE id IN (SELECT id FROM collecting);
             UPDATE attempts SET output = NULL, log = NULL WHERE run IN (SELECT id FROM collecting);
             DELETE FROM state WHERE run IN (SELECT id FROM collecting);
             DELETE FROM components WHERE digest NOT IN (
                 SELECT wc.component FROM workflow_components wc
                 JOIN runs r ON r.workflow = wc.workflow WHERE r.collected = 0);
             DELETE FROM collecting;",
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        self.known_components.clear();
        // Each step of the pragma frees one page: step it to the end.
        self.conn
            .prepare("PRAGMA incremental_vacuum")
            .and_then(|mut s| {
                s.query([])?
                    .mapped(|_| Ok(()))
                    .collect::<rusqlite::Result<Vec<()>>>()
            })
            .and_then(|_| {
                self.conn
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            })
            .map_err(|e| self.error(e))?;
        let size_after = self.file_bytes()?;
        Ok(GcStats {
            runs: runs as u64,
            bytes_freed: size_before.saturating_sub(size_after),
        })
    }
}

/// Rows in one multi-row insert: fewer statement runs per row, well under
/// SQLite's limit on parameters.
const ROWS_PER_INSERT: usize = 16;

/// `VALUES` of `rows` rows of `params` parameters each.
fn values(rows: usize, params: usize) -> String {
    let row = format!("({})", vec!["?"; params].join(", "));
    vec![row; rows].join(", ")
}

/// Parameters of one accepted run's row.
const RUN_PARAMS: usize = 8;

/// The inserts of 1 to [`ROWS_PER_INSERT`] accepted runs.
static ACCEPT_RUN_SQL: LazyLock<[String; ROWS_PER_INSERT]> = LazyLock::new(|| {
    std::array::from_fn(|k| {
        format!(
            "INSERT OR FAIL INTO runs (id, workflow, name, input, accepted_at, owner, lease_until, status)
             VALUES {}",
            values(k + 1, RUN_PARAMS)
        )
    })
});

/// An accepted run's row.
struct Accepted<'a> {
    run: RunId,
    workflow: &'a str,
    name: &'a str,
    owner: &'a str,
    lease_until: Millis,
    input: &'a [u8],
    at: Millis,
}

impl<'a> Accepted<'a> {
    /// The row `event` inserts, if it accepts a run.
    fn of(event: &'a Event) -> Option<Accepted<'a>> {
        match event {
            Event::RunAccepted {
                run,
                workflow,
                name,
                owner,
                lease_until,
                input,
                at,
            } => Some(Accepted {
                run: *run,
                workflow,
                name,
                owner,
                lease_until: *lease_until,
                input,
                at: *at,
            }),
            _ => None,
        }
    }
}

/// Binds an accepted run's row to the [`RUN_PARAMS`] parameters after `offset`.
fn bind_run(
    stmt: &mut rusqlite::CachedStatement<'_>,
    offset: usize,
    a: &Accepted<'_>,
) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(offset + 1, a.run as i64)?;
    stmt.raw_bind_parameter(offset + 2, a.workflow)?;
    stmt.raw_bind_parameter(offset + 3, a.name)?;
    stmt.raw_bind_parameter(offset + 4, a.input)?;
    stmt.raw_bind_parameter(offset + 5, a.at)?;
    stmt.raw_bind_parameter(offset + 6, a.owner)?;
    stmt.raw_bind_parameter(offset + 7, a.lease_until)?;
    stmt.raw_bind_parameter(offset + 8, RunState::Accepted.as_str())?;
    Ok(())
}

/// Parameters of one attempt-end row.
const ATTEMPT_END_PARAMS: usize = 24;

/// The upserts of 1 to [`ROWS_PER_INSERT`] attempt-end rows.
static END_ATTEMPT_SQL: LazyLock<[String; ROWS_PER_INSERT]> = LazyLock::new(|| {
    let sql = |rows: usize| {
        format!(
            "INSERT OR FAIL INTO attempts (run, step, item, attempt, status, last, outcome, message,
                 started_at, finished_at, duration_us, queue_wait_us, fuel, peak_memory, output, log,
                 component, fuel_limit, memory_limit, time_limit_us, started_us, peak_scratch,
                 scratch_limit, timeout_level)
             VALUES {}
             ON CONFLICT (run, step, item, attempt) DO UPDATE SET
                 status = excluded.status, last = excluded.last, outcome = excluded.outcome,
                 message = excluded.message, finished_at = excluded.finished_at,
                 duration_us = excluded.duration_us, queue_wait_us = excluded.queue_wait_us,
                 fuel = excluded.fuel, peak_memory = excluded.peak_memory,
                 output = excluded.output, log = excluded.log, component = excluded.component,
                 fuel_limit = excluded.fuel_limit, memory_limit = excluded.memory_limit,
                 time_limit_us = excluded.time_limit_us, started_us = excluded.started_us,
                 peak_scratch = excluded.peak_scratch, scratch_limit = excluded.scratch_limit,
                 timeout_level = excluded.timeout_level",
            values(rows, ATTEMPT_END_PARAMS)
        )
    };
    std::array::from_fn(|k| sql(k + 1))
});

/// Inserts `rows` with `sql[k]`, the statement of `k + 1` rows of `params`
/// parameters each, which `bind` binds from one row. Full chunks share one
/// statement (bindings are overwritten, never cleared); the rest goes in
/// one statement of its own size.
fn insert_rows<T>(
    tx: &rusqlite::Transaction<'_>,
    sql: &[String; ROWS_PER_INSERT],
    params: usize,
    rows: &[T],
    bind: fn(&mut rusqlite::CachedStatement<'_>, usize, &T) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let run = |insert: &mut rusqlite::CachedStatement<'_>, chunk: &[T]| {
        for (row, value) in chunk.iter().enumerate() {
            bind(insert, row * params, value)?;
        }
        insert.raw_execute().map(drop)
    };
    let mut chunks = rows.chunks_exact(ROWS_PER_INSERT);
    if chunks.len() > 0 {
        let mut insert = tx.prepare_cached(&sql[ROWS_PER_INSERT - 1])?;
        for chunk in &mut chunks {
            run(&mut insert, chunk)?;
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        run(&mut tx.prepare_cached(&sql[rest.len() - 1])?, rest)?;
    }
    Ok(())
}

/// Binds `a` to the [`ATTEMPT_END_PARAMS`] parameters after `offset`.
fn bind_attempt_end(
    stmt: &mut rusqlite::CachedStatement<'_>,
    offset: usize,
    a: &&AttemptEnd,
) -> rusqlite::Result<()> {
    let at = |k: usize| offset + k;
    stmt.raw_bind_parameter(at(1), a.run as i64)?;
    stmt.raw_bind_parameter(at(2), &*a.step)?;
    stmt.raw_bind_parameter(at(3), item_key(a.item))?;
    stmt.raw_bind_parameter(at(4), a.attempt)?;
    stmt.raw_bind_parameter(at(5), a.status.as_str())?;
    stmt.raw_bind_parameter(at(6), a.last)?;
    stmt.raw_bind_parameter(at(7), a.outcome)?;
    stmt.raw_bind_parameter(at(8), &a.message)?;
    stmt.raw_bind_parameter(at(9), a.started_us / 1000)?;
    stmt.raw_bind_parameter(at(10), a.at)?;
    stmt.raw_bind_parameter(at(11), micros(a.usage.duration))?;
    stmt.raw_bind_parameter(at(12), micros(a.usage.queue_wait))?;
    stmt.raw_bind_parameter(at(13), a.usage.fuel as i64)?;
    stmt.raw_bind_parameter(at(14), a.usage.peak_memory as i64)?;
    stmt.raw_bind_parameter(at(15), &a.output)?;
    stmt.raw_bind_parameter(at(16), &a.log)?;
    stmt.raw_bind_parameter(at(17), &*a.component)?;
    stmt.raw_bind_parameter(at(18), a.limits.fuel as i64)?;
    stmt.raw_bind_parameter(at(19), a.limits.memory as i64)?;
    stmt.raw_bind_parameter(at(20), micros(a.limits.time))?;
    stmt.raw_bind_parameter(at(21), a.started_us)?;
    stmt.raw_bind_parameter(at(22), a.usage.peak_scratch as i64)?;
    stmt.raw_bind_parameter(at(23), a.limits.scratch as i64)?;
    stmt.raw_bind_parameter(at(24), a.timeout_level.map(|l| l.as_str()))?;
    Ok(())
}

fn item_key(item: Option<u32>) -> i64 {
    item.map_or(-1, i64::from)
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Takes the lock file beside `db` for this process, or says who holds it.
fn take_lock(db: &Path) -> Result<File, StoreError> {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_error(db, &e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(StoreError::Locked {
                path: db.to_owned(),
                holder: (!holder.is_empty()).then(|| holder.to_owned()),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_error(db, &e)),
    }
    // Who holds it, for the message another process prints.
    let _ = file.set_len(0);
    let _ = write!(file, "pid {}", std::process::id());
    Ok(file)
}

fn io_error(path: &Path, e: &std::io::Error) -> StoreError {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => StoreError::ReadOnly {
            path: path.to_owned(),
            detail: e.to_string(),
        },
        ErrorKind::StorageFull => StoreError::Full {
            path: path.to_owned(),
        },
        _ => StoreError::Other {
            path: path.to_owned(),
            detail: e.to_string(),
        },
    }
}

fn sql_error(path: &Path, e: rusqlite::Error) -> StoreError {
    let path = path.to_owned();
    // Messages may quote multi-line SQL: keep them on one line.
    let detail = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
    let rusqlite::Error::SqliteFailure(failure, _) = &e else {
        return StoreError::Other { path, detail };
    };
    match failure.code {
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => StoreError::Locked { path, holder: None },
        ErrorCode::ReadOnly | ErrorCode::PermissionDenied => StoreError::ReadOnly { path, detail },
        ErrorCode::DiskFull => StoreError::Full { path },
        ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => StoreError::Corrupt { path, detail },
        _ => StoreError::Other { path, detail },
    }
}

#[cfg(test)]
mod tests;
