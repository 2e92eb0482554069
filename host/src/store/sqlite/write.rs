//! Writing: batches of events fenced by their runs' owners, leases and
//! claims, run ids, and retention.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use rusqlite::{Transaction, params};

use super::SqliteStore;
use super::lock::sql_error;
use super::schema::{FastHash, INCOMPLETE};
use crate::store::{
    AttemptEnd, Event, GcStats, Millis, RecoveredRun, Refused, RunId, RunState, StoreError, WorkflowRecord,
    WorkflowUnavailable, WriteReport,
};

/// Run ids looked up per query when a batch is fenced: one statement for
/// many runs, its last id repeated to fill the list (a repeat changes
/// nothing in an `IN`).
const FENCE_IDS: usize = 64;

/// The query of [`fence`]: which of [`FENCE_IDS`] runs `?1` owns.
static OWNED_SQL: LazyLock<String> = LazyLock::new(|| {
    let marks: Vec<String> = (0..FENCE_IDS).map(|k| format!("?{}", k + 2)).collect();
    format!(
        "SELECT id FROM runs WHERE owner = ?1 AND id IN ({})",
        marks.join(", ")
    )
});

/// The runs of `events` that `owner` may not write, with how many of the
/// batch's events each has: those it does not own (another host claimed
/// them after its lease ended, or they are not in the file). Runs the
/// batch accepts, and those `known` holds, are the writer's.
fn fence(
    tx: &Transaction<'_>,
    owner: &str,
    events: &[Event],
    known: &HashSet<RunId, FastHash>,
) -> rusqlite::Result<Vec<Refused>> {
    let mut accepted: HashSet<RunId, FastHash> = HashSet::default();
    let mut touched: HashMap<RunId, usize, FastHash> = HashMap::default();
    for event in events {
        match event {
            Event::RunAccepted {
                run, queued: false, ..
            } => {
                accepted.insert(*run);
            }
            Event::RunAccepted { queued: true, .. } => {}
            other => {
                if let Some(run) = other.run() {
                    *touched.entry(run).or_default() += 1;
                }
            }
        }
    }
    touched.retain(|run, _| !accepted.contains(run) && !known.contains(run));
    if touched.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<RunId> = touched.keys().copied().collect();
    let mut owned: HashSet<RunId, FastHash> = HashSet::default();
    let mut query = tx.prepare_cached(&OWNED_SQL)?;
    for chunk in ids.chunks(FENCE_IDS) {
        query.raw_bind_parameter(1, owner)?;
        for k in 0..FENCE_IDS {
            query.raw_bind_parameter(k + 2, chunk[k.min(chunk.len() - 1)] as i64)?;
        }
        let mut rows = query.raw_query();
        while let Some(row) = rows.next()? {
            owned.insert(row.get::<_, i64>(0)? as RunId);
        }
    }
    let mut refused: Vec<Refused> = touched
        .into_iter()
        .filter(|(run, _)| !owned.contains(run))
        .map(|(run, events)| Refused { run, events })
        .collect();
    refused.sort_unstable_by_key(|r| r.run);
    Ok(refused)
}

/// A claimed run's id, workflow digest and input.
type Claimed = (i64, String, Option<Vec<u8>>, Option<String>);

impl SqliteStore {
    /// Keeps [`SqliteStore::owned`] up to date after `owner` committed
    /// `events`: the runs it accepted are its own until they end.
    pub(super) fn note_owned(&mut self, owner: &str, events: &[Event], report: &WriteReport) {
        if self.owned.0 != owner {
            self.owned = (owner.to_owned(), HashSet::default());
        }
        let owned = &mut self.owned.1;
        for event in events {
            match event {
                Event::RunAccepted {
                    run, queued: false, ..
                } => {
                    owned.insert(*run);
                }
                Event::RunEnded { run, status, .. } if !status.is_incomplete() => {
                    owned.remove(run);
                }
                _ => {}
            }
        }
        for refused in &report.refused {
            owned.remove(&refused.run);
        }
    }

    /// Writes `events` in one transaction as `owner`, but for the events
    /// of runs `owner` does not own, and returns the digests of the
    /// workflows and components it added, and what it refused.
    pub(super) fn write_events(
        &mut self,
        owner: &str,
        events: &[Event],
    ) -> rusqlite::Result<(Vec<String>, Vec<String>, WriteReport)> {
        // The batch's writes say `OR FAIL`: a failing statement keeps the
        // rows it wrote before it failed, and dropping the transaction undoes
        // them with the rest of the batch. SQLite's default (`ABORT`) would
        // undo the statement itself, and to be able to, copies every
        // existing page the statement touches into a statement journal:
        // on each of a batch's thousands of statements.
        let tx = self.conn.transaction()?;
        // Fenced in the transaction that writes: no claim comes between.
        let known = &self.owned;
        let known = if known.0 == owner {
            &known.1
        } else {
            &HashSet::default()
        };
        let refused = fence(&tx, owner, events, known)?;
        let refused_runs: HashSet<RunId, FastHash> = refused.iter().map(|r| r.run).collect();
        // Under load nearly every batch is all the writer's own: then
        // nothing is looked up per event.
        let events: Vec<&Event> = if refused_runs.is_empty() {
            events.iter().collect()
        } else {
            events
                .iter()
                .filter(|e| e.run().is_none_or(|run| !refused_runs.contains(&run)))
                .collect()
        };
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
        for &event in events.iter().filter(|_| has_starts) {
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
        for &event in &events {
            if let Event::RunStarted { run, at } = event
                && let Some(started) = ended_runs.get_mut(run)
            {
                started.get_or_insert(*at);
            }
        }
        // Runs are inserted first, many rows per statement: a batch that
        // accepts thousands of runs at once holds up all of them until it
        // is committed. Their other events, later in the batch, find them.
        let accepted: Vec<Accepted<'_>> = events.iter().filter_map(|e| Accepted::of(e, owner)).collect();
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
            "UPDATE OR FAIL runs SET status = ?2, output = ?3, error = ?4, finished_at = ?5,
                         started_at = coalesce(started_at, ?6)
                         WHERE id = ?1",
        )?;
        for &event in &events {
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
        Ok((new_workflows, new_components, WriteReport { refused }))
    }

    /// Extends the leases of the incomplete runs `owner` still owns.
    pub(super) fn renew(&mut self, owner: &str, until: Millis) -> rusqlite::Result<u64> {
        self.conn
            .prepare_cached(&format!(
                "UPDATE runs SET lease_until = ?2 WHERE owner = ?1 AND {INCOMPLETE}"
            ))
            .and_then(|mut s| s.execute(params![owner, until]))
            .map(|n| n as u64)
    }

    /// Gives up `owner`'s incomplete runs: anyone may claim them now.
    pub(super) fn release(&mut self, owner: &str) -> rusqlite::Result<u64> {
        self.conn
            .execute(
                &format!(
                    "UPDATE runs SET owner = NULL, lease_until = NULL WHERE owner = ?1 AND {INCOMPLETE}"
                ),
                [owner],
            )
            .map(|n| n as u64)
    }

    /// Takes, for `owner` until `until`, every incomplete run that no one
    /// holds, whose lease ended before `now`, or that `owner` holds already,
    /// and returns the ids, workflow digests and inputs of all it now holds.
    fn take_incomplete(&mut self, owner: &str, until: Millis, now: Millis) -> rusqlite::Result<Vec<Claimed>> {
        let tx = self.conn.transaction()?;
        tx.execute(
            &format!(
                "UPDATE runs SET owner = ?1, lease_until = ?2 WHERE {INCOMPLETE}
                 AND (owner IS NULL OR owner = ?1 OR lease_until IS NULL OR lease_until < ?3)"
            ),
            params![owner, until, now],
        )?;
        let rows = tx
            .prepare(&format!(
                "SELECT id, workflow, input, tenant FROM runs WHERE {INCOMPLETE} AND owner = ?1 ORDER BY id"
            ))?
            .query_map([owner], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        tx.commit()?;
        Ok(rows)
    }

    /// Claims runs as [`take_incomplete`](Self::take_incomplete) does, and
    /// reads what resuming each one needs.
    pub(super) fn claim(
        &mut self,
        owner: &str,
        until: Millis,
        now: Millis,
    ) -> Result<Vec<RecoveredRun>, StoreError> {
        let claimed = self
            .take_incomplete(owner, until, now)
            .map_err(|e| self.error(e))?;
        let q = self.queries();
        type Code = Result<Arc<WorkflowRecord>, WorkflowUnavailable>;
        let mut workflows: HashMap<String, Code> = HashMap::new();
        let mut runs = Vec::with_capacity(claimed.len());
        for (id, digest, input, tenant) in claimed {
            let id = id as RunId;
            let workflow = match workflows.get(&digest) {
                Some(w) => w.clone(),
                None => {
                    let w = q.workflow_record(&digest)?;
                    workflows.insert(digest, w.clone());
                    w
                }
            };
            runs.push(RecoveredRun {
                id,
                workflow,
                input: input.unwrap_or_else(|| b"null".to_vec()),
                tenant,
                done: q.attempts_of(id, "AND last = 1 AND status IN ('completed', 'failed')")?,
                attempts: q.unit_attempts(id)?,
                state: q.state_of(id)?,
            });
        }
        Ok(runs)
    }

    /// The next `count` ids, past every run in the file whoever wrote it
    /// (an older build counts from the last run and knows no counter).
    pub(super) fn allocate(&mut self, count: u64) -> rusqlite::Result<Range<RunId>> {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        let end: i64 = self.conn.query_row(
            "UPDATE run_ids SET next = max(next, (SELECT coalesce(max(id), 0) + 1 FROM runs)) + ?1
             RETURNING next",
            [count],
            |r| r.get(0),
        )?;
        Ok((end - count) as RunId..end as RunId)
    }

    /// Gives `unused` back if it is the end of the last block handed out.
    pub(super) fn give_back(&mut self, unused: Range<RunId>) -> rusqlite::Result<bool> {
        if unused.is_empty() {
            return Ok(false);
        }
        self.conn
            .execute(
                "UPDATE run_ids SET next = ?1 WHERE next = ?2",
                [unused.start as i64, unused.end as i64],
            )
            .map(|n| n == 1)
    }

    /// Removes the payloads of runs finished before `before`, keeping
    /// their audit record, and gives the space back.
    pub(super) fn collect_payloads(&mut self, before: Millis) -> Result<GcStats, StoreError> {
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

/// Rows in one multi-row insert: fewer statement runs per row, well under
/// SQLite's limit on parameters.
const ROWS_PER_INSERT: usize = 16;

/// `VALUES` of `rows` rows of `params` parameters each.
fn values(rows: usize, params: usize) -> String {
    let row = format!("({})", vec!["?"; params].join(", "));
    vec![row; rows].join(", ")
}

/// Parameters of one accepted run's row.
const RUN_PARAMS: usize = 10;

/// The inserts of 1 to [`ROWS_PER_INSERT`] accepted runs.
static ACCEPT_RUN_SQL: LazyLock<[String; ROWS_PER_INSERT]> = LazyLock::new(|| {
    std::array::from_fn(|k| {
        format!(
            "INSERT OR FAIL INTO runs (id, workflow, name, input, accepted_at, owner, lease_until, status, tenant, submission_key)
             VALUES {}",
            values(k + 1, RUN_PARAMS)
        )
    })
});

/// An accepted run's row, owned by the writer that accepts it.
struct Accepted<'a> {
    run: RunId,
    workflow: &'a str,
    name: &'a str,
    /// `None` for a run accepted queued, for any host.
    owner: Option<&'a str>,
    lease_until: Millis,
    input: &'a [u8],
    at: Millis,
    tenant: Option<&'a str>,
    key: Option<&'a str>,
}

impl<'a> Accepted<'a> {
    /// The row `event` inserts for `owner`, if it accepts a run.
    fn of(event: &'a Event, owner: &'a str) -> Option<Accepted<'a>> {
        match event {
            Event::RunAccepted {
                run,
                workflow,
                name,
                lease_until,
                queued,
                input,
                at,
                tenant,
                key,
            } => Some(Accepted {
                run: *run,
                workflow,
                name,
                owner: (!queued).then_some(owner),
                lease_until: *lease_until,
                input,
                at: *at,
                tenant: tenant.as_deref(),
                key: key.as_deref(),
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
    stmt.raw_bind_parameter(offset + 9, a.tenant)?;
    stmt.raw_bind_parameter(offset + 10, a.key)?;
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
    stmt.raw_bind_parameter(at(7), a.outcome.as_str())?;
    stmt.raw_bind_parameter(at(8), &a.message)?;
    stmt.raw_bind_parameter(at(9), a.started_us / 1000)?;
    stmt.raw_bind_parameter(at(10), a.at)?;
    stmt.raw_bind_parameter(at(11), micros(a.usage.total()))?;
    stmt.raw_bind_parameter(at(12), micros(a.usage.queue_wait))?;
    stmt.raw_bind_parameter(at(13), a.usage.fuel_consumed as i64)?;
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
