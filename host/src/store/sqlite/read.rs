//! The queries: through the pooled read-only connections of a
//! [`SqliteReader`], and through the writer's own connection when it
//! claims runs for recovery.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params_from_iter};

use super::lock::sql_error;
use super::schema::{ADDED_ATTEMPT_COLUMNS, ADDED_RUN_COLUMNS, INCOMPLETE, check_format, missing_columns};
use crate::OutcomeKind;
use crate::store::{
    AttemptLimits, AttemptRecord, AttemptStatus, Definition, HostSummary, Millis, RunFilter, RunHistory,
    RunId, RunState, RunSummary, StoreError, StoreReader, WorkflowRecord, WorkflowUnavailable,
};

/// A run's status as the journal reports it. A fresh run's start is not
/// written (it would cost every run a write of its own): an accepted run
/// with attempts is running.
macro_rules! status_sql {
    () => {
        "CASE WHEN status = 'accepted' AND EXISTS (SELECT 1 FROM attempts a WHERE a.run = runs.id)
              THEN 'running' ELSE status END"
    };
}

/// How many idle read-only connections a [`SqliteReader`] keeps. More
/// concurrent queries open more connections (WAL lets them all read at
/// once); beyond this many, the extra ones are closed when done, so a burst
/// of readers leaves no file handles behind.
const IDLE_CONNECTIONS: usize = 4;

/// The query side of a journal in a SQLite file: [`StoreReader`] through
/// `&self`, from any number of threads at once, while a host writes.
///
/// Each query takes a read-only connection from a small pool: in WAL mode
/// readers never wait for the writer or for each other, and each query
/// reads one snapshot, so it sees every batch committed before it began,
/// each whole or not at all.
///
/// ```no_run
/// use stepbox::store::{RunFilter, SqliteReader, StoreReader};
///
/// let reader = SqliteReader::open(".stepbox/stepbox.db".as_ref())?;
/// for run in reader.runs(&RunFilter::default())? {
///     println!("{} {} {}", run.id, run.workflow, run.status);
/// }
/// # Ok::<(), stepbox::store::StoreError>(())
/// ```
pub struct SqliteReader {
    path: PathBuf,
    /// The attempt columns queries read: a file opened before a writer
    /// added [`ADDED_ATTEMPT_COLUMNS`] reads their defaults instead.
    attempt_columns: String,
    /// Whether the file's runs have tenants and keys (a file no writer
    /// has opened since they were added has neither).
    run_columns: RunColumns,
    idle: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteReader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What a reader says of a file with no journal in it.
fn no_journal(path: &Path) -> StoreError {
    StoreError::Other {
        path: path.to_owned(),
        detail: "no journal here yet (no run has been recorded); check --db".into(),
    }
}

impl SqliteReader {
    /// Opens the journal at `path` to read, while a host may be writing it.
    ///
    /// # Errors
    ///
    /// [`StoreError::Other`] if there is no journal there (no file, or one
    /// a writer has not laid out yet), [`StoreError::Corrupt`] if it is not
    /// a stepbox journal, [`StoreError::NewerFormat`], or
    /// [`StoreError::ReadOnly`] if it cannot be read.
    pub fn open(path: &Path) -> Result<SqliteReader, StoreError> {
        if !path.exists() {
            return Err(no_journal(path));
        }
        let conn = connect(path)?;
        if check_format(&conn, path)? == 0 {
            // A writer made the file and has not laid out the journal yet
            // (or died before it could): nothing was recorded.
            return Err(no_journal(path));
        }
        let attempt_columns =
            attempt_columns(&missing_columns(&conn, path, "attempts", ADDED_ATTEMPT_COLUMNS)?);
        let run_columns = match missing_columns(&conn, path, "runs", ADDED_RUN_COLUMNS)?.is_empty() {
            true => RunColumns::CURRENT,
            false => RunColumns::NONE,
        };
        Ok(SqliteReader {
            path: path.to_owned(),
            attempt_columns,
            run_columns,
            idle: Mutex::new(vec![conn]),
        })
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
    pub fn check_integrity(&self) -> Result<(), StoreError> {
        self.with(|q| q.check_integrity())
    }

    /// Runs `query` on an idle connection (a new one if none is idle), and
    /// keeps the connection for the next query if the pool has room.
    fn with<T>(&self, query: impl FnOnce(&Queries<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => connect(&self.path)?,
        };
        let result = query(&Queries {
            conn: &conn,
            path: &self.path,
            attempt_columns: &self.attempt_columns,
            run_columns: self.run_columns,
        });
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < IDLE_CONNECTIONS {
            idle.push(conn);
        }
        result
    }
}

/// A read-only connection to `path`.
fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sql_error(path, e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| sql_error(path, e))?;
    Ok(conn)
}

impl StoreReader for SqliteReader {
    fn runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        self.with(|q| q.runs(filter))
    }

    fn history(&self, id: RunId) -> Result<Option<RunHistory>, StoreError> {
        self.with(|q| q.history(id))
    }

    fn definition(&self, digest: &str) -> Result<Option<Definition>, StoreError> {
        self.with(|q| q.definition(digest))
    }

    fn scan_attempts(&self, since: Millis, visit: &mut dyn FnMut(&AttemptRecord)) -> Result<(), StoreError> {
        self.with(|q| q.scan_attempts(since, visit))
    }

    fn count_runs(&self) -> Result<Vec<(RunState, u64)>, StoreError> {
        self.count_matching(&RunFilter::default())
    }

    fn count_matching(&self, filter: &RunFilter) -> Result<Vec<(RunState, u64)>, StoreError> {
        self.with(|q| q.count_matching(filter))
    }

    fn run_by_key(&self, tenant: Option<&str>, key: &str) -> Result<Option<RunId>, StoreError> {
        self.with(|q| q.run_by_key(tenant, key))
    }

    fn unfinished_runs_of(&self, tenant: &str) -> Result<u64, StoreError> {
        self.with(|q| q.unfinished_runs_of(tenant))
    }

    fn hosts(&self) -> Result<Vec<HostSummary>, StoreError> {
        self.with(|q| q.hosts())
    }
}

/// The queries over one connection: a reader's, or the writer's own.
pub(super) struct Queries<'a> {
    pub(super) conn: &'a Connection,
    pub(super) path: &'a Path,
    pub(super) attempt_columns: &'a str,
    pub(super) run_columns: RunColumns,
}

/// The expressions that read a run's tenant and idempotency key: the
/// columns, or `NULL` in a file from before them.
#[derive(Debug, Clone, Copy)]
pub(super) struct RunColumns {
    tenant: &'static str,
    key: &'static str,
}

impl RunColumns {
    /// A file with every run column.
    pub(super) const CURRENT: RunColumns = RunColumns {
        tenant: "tenant",
        key: "submission_key",
    };
    /// A file from before tenants and keys.
    const NONE: RunColumns = RunColumns {
        tenant: "NULL",
        key: "NULL",
    };
}

impl Queries<'_> {
    fn error(&self, e: rusqlite::Error) -> StoreError {
        sql_error(self.path, e)
    }

    /// Runs SQLite's integrity check over the whole file.
    pub(super) fn check_integrity(&self) -> Result<(), StoreError> {
        let found: Vec<String> = self
            .conn
            .prepare("PRAGMA integrity_check")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| self.error(e))?;
        if found == ["ok"] {
            return Ok(());
        }
        // SQLite's findings span lines ("*** in database main ***\n..."):
        // the error is one line.
        let detail = found
            .iter()
            .map(|f| f.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("; ");
        Err(StoreError::Corrupt {
            path: self.path.to_owned(),
            detail,
        })
    }

    /// The `WHERE` clause of `filter` (without its status, cursor and
    /// limit) and its arguments.
    fn filter_sql(&self, filter: &RunFilter) -> (String, Vec<rusqlite::types::Value>) {
        let tenant = self.run_columns.tenant;
        let mut sql = String::from(" WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(name) = &filter.workflow {
            sql.push_str(" AND name = ?");
            args.push(name.clone().into());
        }
        if let Some(t) = &filter.tenant {
            // `NULL = ?` is never true: a file from before tenants has no
            // tenant's runs.
            sql.push_str(&format!(" AND {tenant} = ?"));
            args.push(t.clone().into());
        }
        if let Some(since) = filter.since {
            sql.push_str(" AND accepted_at >= ?");
            args.push(since.into());
        }
        if let Some(until) = filter.until {
            sql.push_str(" AND accepted_at < ?");
            args.push(until.into());
        }
        (sql, args)
    }

    fn runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        let tenant = self.run_columns.tenant;
        let (clause, mut args) = self.filter_sql(filter);
        let mut sql = format!("SELECT {SUMMARY_COLUMNS}, {tenant} FROM runs{clause}");
        if !filter.status.is_empty() {
            let marks = vec!["?"; filter.status.len()].join(", ");
            sql.push_str(&format!(" AND ({}) IN ({marks})", status_sql!()));
            args.extend(filter.status.iter().map(|s| s.as_str().to_owned().into()));
        }
        if let Some(before) = filter.before {
            sql.push_str(" AND id < ?");
            args.push((before as i64).into());
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

    /// The owners of incomplete runs: a file keeps no heartbeats (its one
    /// writer holds its lock).
    pub(super) fn hosts(&self) -> Result<Vec<HostSummary>, StoreError> {
        self.conn
            .prepare(&format!(
                "SELECT owner, max(lease_until), count(*) FROM runs WHERE {INCOMPLETE} AND owner IS NOT NULL
                 GROUP BY owner ORDER BY owner"
            ))
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok(HostSummary {
                        owner: r.get(0)?,
                        heartbeat_at: None,
                        lease_until: r.get(1)?,
                        runs: r.get::<_, i64>(2)? as u64,
                    })
                })?
                .collect()
            })
            .map_err(|e| self.error(e))
    }

    pub(super) fn run_by_key(&self, tenant: Option<&str>, key: &str) -> Result<Option<RunId>, StoreError> {
        let RunColumns { tenant: t, key: k } = self.run_columns;
        self.conn
            .query_row(
                &format!("SELECT id FROM runs WHERE {k} = ?1 AND {t} IS ?2 ORDER BY id LIMIT 1"),
                rusqlite::params![key, tenant],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|id| id.map(|id| id as RunId))
            .map_err(|e| self.error(e))
    }

    pub(super) fn unfinished_runs_of(&self, tenant: &str) -> Result<u64, StoreError> {
        let t = self.run_columns.tenant;
        self.conn
            .query_row(
                &format!("SELECT count(*) FROM runs WHERE finished_at IS NULL AND {t} = ?1"),
                [tenant],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(|e| self.error(e))
    }

    fn history(&self, id: RunId) -> Result<Option<RunHistory>, StoreError> {
        // Its run, attempts and state from one snapshot, though a writer
        // commits between the queries.
        let snapshot = self.conn.unchecked_transaction().map_err(|e| self.error(e))?;
        let row = snapshot
            .query_row(
                &format!(
                    "SELECT {SUMMARY_COLUMNS}, {}, input, output FROM runs WHERE id = ?1",
                    self.run_columns.tenant
                ),
                [id as i64],
                |r| {
                    Ok((
                        summary(r)?,
                        r.get::<_, Option<Vec<u8>>>(10)?,
                        r.get::<_, Option<Vec<u8>>>(11)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.error(e))?;
        let Some((summary, input, output)) = row else {
            return Ok(None);
        };
        let history = RunHistory {
            summary,
            input,
            output,
            attempts: self.attempts_of(id, "")?,
            state: self.state_of(id)?,
        };
        snapshot.commit().map_err(|e| self.error(e))?;
        Ok(Some(history))
    }

    fn definition(&self, digest: &str) -> Result<Option<Definition>, StoreError> {
        self.conn
            .query_row(
                "SELECT name, path, source FROM workflows WHERE digest = ?1",
                [digest],
                |r| {
                    Ok(Definition {
                        name: r.get(0)?,
                        path: r.get(1)?,
                        source: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.error(e))
    }

    fn scan_attempts(&self, since: Millis, visit: &mut dyn FnMut(&AttemptRecord)) -> Result<(), StoreError> {
        let columns = self.attempt_columns.replace("output, log", "NULL, NULL");
        let sql = format!("SELECT {columns} FROM attempts WHERE finished_at >= ?1");
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.error(e))?;
        let rows = stmt
            .query_map([since], attempt_record)
            .map_err(|e| self.error(e))?;
        for row in rows {
            visit(&row.map_err(|e| self.error(e))?);
        }
        Ok(())
    }

    pub(super) fn count_matching(&self, filter: &RunFilter) -> Result<Vec<(RunState, u64)>, StoreError> {
        let (clause, args) = self.filter_sql(filter);
        let sql = format!(
            concat!("SELECT ", status_sql!(), " AS s, count(*) FROM runs{} GROUP BY s"),
            clause
        );
        self.conn
            .prepare(&sql)
            .and_then(|mut s| {
                s.query_map(params_from_iter(args.iter()), |r| {
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

    /// The definition and components of the workflow `digest`, or which of
    /// them is gone.
    pub(super) fn workflow_record(
        &self,
        digest: &str,
    ) -> Result<Result<Arc<WorkflowRecord>, WorkflowUnavailable>, StoreError> {
        let Some(definition) = self.definition(digest)? else {
            return Ok(Err(WorkflowUnavailable::DefinitionGone {
                digest: digest.to_owned(),
            }));
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
        Ok(WorkflowRecord::assemble(digest, definition, components))
    }

    /// Run `run`'s attempts matching `filter` (SQL after `WHERE run = ?1`).
    pub(super) fn attempts_of(&self, run: RunId, filter: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM attempts WHERE run = ?1 {filter} ORDER BY started_at, step, item, attempt",
            self.attempt_columns
        );
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.query_map([run as i64], attempt_record)?.collect())
            .map_err(|e| self.error(e))
    }

    /// Run `run`'s highest attempt number per unit (step, item).
    pub(super) fn unit_attempts(&self, run: RunId) -> Result<Vec<(String, Option<u32>, u32)>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT step, item, max(attempt) FROM attempts WHERE run = ?1 GROUP BY step, item",
            )
            .and_then(|mut s| {
                s.query_map([run as i64], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        u32::try_from(r.get::<_, i64>(1)?).ok(),
                        r.get(2)?,
                    ))
                })?
                .collect()
            })
            .map_err(|e| self.error(e))
    }

    /// Run `run`'s state, by key.
    pub(super) fn state_of(&self, run: RunId) -> Result<Vec<(String, String)>, StoreError> {
        self.conn
            .prepare_cached("SELECT key, value FROM state WHERE run = ?1 ORDER BY key")
            .and_then(|mut s| {
                s.query_map([run as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(|e| self.error(e))
    }
}

const ATTEMPT_COLUMNS: &str = "step, item, attempt, status, last, outcome, message, started_at, finished_at,
     duration_us, queue_wait_us, fuel, peak_memory, output, log,
     component, fuel_limit, memory_limit, time_limit_us, started_us, peak_scratch, scratch_limit,
     timeout_level, length(output)";

/// [`ATTEMPT_COLUMNS`], with what an older file reads instead of each
/// `missing` one.
pub(super) fn attempt_columns(missing: &[&str]) -> String {
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
        // A kind a newer stepbox wrote reads as none; the message says what happened.
        outcome: r
            .get_ref(5)?
            .as_str_or_null()
            .ok()
            .flatten()
            .and_then(OutcomeKind::from_name),
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
        usage: {
            // The journal keeps an attempt's whole duration, wait included.
            let total = Duration::from_micros(r.get::<_, i64>(9)? as u64);
            let queue_wait = Duration::from_micros(r.get::<_, i64>(10)? as u64);
            crate::outcome::Usage {
                queue_wait,
                wall_time: total.saturating_sub(queue_wait),
                fuel_consumed: r.get::<_, i64>(11)? as u64,
                peak_memory: r.get::<_, i64>(12)? as u64,
                peak_scratch: r.get::<_, i64>(20)? as u64,
                output_bytes: r.get::<_, Option<i64>>(23)?.unwrap_or(0) as u64,
            }
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
        tenant: r.get(9)?,
    })
}
