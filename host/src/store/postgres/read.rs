//! Queries: listings, histories, definitions, attempts, counts, keys;
//! and what recovery reads of a claimed run.

use std::sync::Arc;
use std::time::Duration;

use postgres::types::ToSql;
use postgres::{Client, GenericClient, IsolationLevel, Row};

use crate::outcome::{OutcomeKind, Usage};
use crate::policy::TimeoutLevel;
use crate::store::{
    AttemptLimits, AttemptRecord, AttemptStatus, Definition, HostSummary, Millis, RunFilter, RunHistory,
    RunId, RunState, RunSummary, WorkflowRecord, WorkflowUnavailable,
};

type Res<T> = Result<T, postgres::Error>;

/// A run's status as listed: a fresh run reads as running once an attempt
/// started (its start is not written; the attempt shows it).
const STATUS: &str =
    "CASE WHEN status = 'accepted' AND EXISTS (SELECT 1 FROM attempts a WHERE a.run = runs.id)
     THEN 'running' ELSE status END";

/// A run's summary columns, in the order [`summary`] reads them.
fn summary_columns() -> String {
    format!(
        "id, name, workflow, {STATUS}, accepted_at,
         coalesce(started_at, (SELECT min(a.started_at) FROM attempts a WHERE a.run = runs.id)),
         finished_at, error, collected, tenant"
    )
}

fn summary(r: &Row) -> RunSummary {
    let status: String = r.get(3);
    RunSummary {
        id: r.get::<_, i64>(0) as RunId,
        workflow: r.get(1),
        workflow_digest: r.get(2),
        status: status.parse().unwrap_or(RunState::Running),
        accepted_at: r.get(4),
        started_at: r.get(5),
        finished_at: r.get(6),
        error: r.get(7),
        collected: r.get(8),
        tenant: r.get(9),
    }
}

const ATTEMPT_COLUMNS: &str = "step, item, attempt, status, last, outcome, message, started_at, finished_at,
     duration_us, queue_wait_us, fuel, peak_memory, output, log,
     component, fuel_limit, memory_limit, time_limit_us, started_us, peak_scratch, scratch_limit,
     timeout_level, octet_length(output)";

fn attempt_record(r: &Row) -> AttemptRecord {
    let status: String = r.get(3);
    let item: i64 = r.get(1);
    let u = |i: usize| r.get::<_, i64>(i).max(0) as u64;
    // The journal keeps an attempt's whole duration, wait included.
    let total = Duration::from_micros(u(9));
    let queue_wait = Duration::from_micros(u(10));
    AttemptRecord {
        step: r.get(0),
        item: u32::try_from(item).ok(),
        attempt: u32::try_from(r.get::<_, i64>(2)).unwrap_or(u32::MAX),
        status: status.parse().unwrap_or(AttemptStatus::Started),
        last: r.get(4),
        // A kind a newer stepbox wrote reads as none; the message says what happened.
        outcome: r.get::<_, Option<&str>>(5).and_then(OutcomeKind::from_name),
        message: r.get(6),
        timeout_level: r.get::<_, Option<&str>>(22).and_then(TimeoutLevel::from_name),
        started_at: r.get(7),
        started_us: match r.get::<_, i64>(19) {
            0 => r.get::<_, i64>(7) * 1000,
            us => us,
        },
        finished_at: r.get(8),
        usage: Usage {
            queue_wait,
            wall_time: total.saturating_sub(queue_wait),
            fuel_consumed: u(11),
            peak_memory: u(12),
            peak_scratch: u(20),
            output_bytes: r.get::<_, Option<i32>>(23).unwrap_or(0).max(0) as u64,
        },
        output: r.get(13),
        log: r.get(14),
        component: r.get(15),
        limits: AttemptLimits {
            fuel: u(16),
            memory: u(17),
            time: Duration::from_micros(u(18)),
            scratch: u(21),
        },
    }
}

/// SQL arguments, numbered `$1`, `$2`... in the order they are added.
#[derive(Default)]
struct Args(Vec<Box<dyn ToSql + Sync>>);

impl Args {
    /// Appends `clause` to `sql` with its `?` numbered, for `value`.
    fn add(&mut self, sql: &mut String, clause: &str, value: Box<dyn ToSql + Sync>) {
        self.0.push(value);
        sql.push_str(&clause.replace('?', &format!("${}", self.0.len())));
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.0.iter().map(|a| &**a).collect()
    }
}

/// ` WHERE ...` for what `filter` asks of a run's workflow, tenant and
/// time of acceptance (its status, page and limit are the caller's).
fn filter_sql(filter: &RunFilter) -> (String, Args) {
    let mut sql = String::from(" WHERE TRUE");
    let mut args = Args::default();
    if let Some(name) = &filter.workflow {
        args.add(&mut sql, " AND name = ?", Box::new(name.clone()));
    }
    if let Some(tenant) = &filter.tenant {
        args.add(&mut sql, " AND tenant = ?", Box::new(tenant.clone()));
    }
    if let Some(since) = filter.since {
        args.add(&mut sql, " AND accepted_at >= ?", Box::new(since));
    }
    if let Some(until) = filter.until {
        args.add(&mut sql, " AND accepted_at < ?", Box::new(until));
    }
    (sql, args)
}

pub(super) fn runs(client: &mut Client, filter: &RunFilter) -> Res<Vec<RunSummary>> {
    let (clause, mut args) = filter_sql(filter);
    let mut sql = format!("SELECT {} FROM runs{clause}", summary_columns());
    if !filter.status.is_empty() {
        let states: Vec<String> = filter.status.iter().map(|s| s.as_str().to_owned()).collect();
        args.add(&mut sql, &format!(" AND ({STATUS}) = ANY(?)"), Box::new(states));
    }
    if let Some(before) = filter.before {
        args.add(&mut sql, " AND id < ?", Box::new(before as i64));
    }
    sql.push_str(" ORDER BY id DESC");
    if let Some(limit) = filter.limit {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    Ok(client.query(&sql, &args.params())?.iter().map(summary).collect())
}

pub(super) fn history(client: &mut Client, id: RunId) -> Res<Option<RunHistory>> {
    // Its run, attempts and state from one snapshot, though writers
    // commit between the queries.
    let mut snapshot = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let row = snapshot.query_opt(
        &format!(
            "SELECT {}, input, output FROM runs WHERE id = $1",
            summary_columns()
        ),
        &[&(id as i64)],
    )?;
    let Some(row) = row else {
        return Ok(None);
    };
    let history = RunHistory {
        summary: summary(&row),
        input: row.get(10),
        output: row.get(11),
        attempts: attempts_of(&mut snapshot, id, "")?,
        state: state_of(&mut snapshot, id)?,
    };
    snapshot.commit()?;
    Ok(Some(history))
}

pub(super) fn definition(client: &mut impl GenericClient, digest: &str) -> Res<Option<Definition>> {
    Ok(client
        .query_opt(
            "SELECT name, path, source FROM workflows WHERE digest = $1",
            &[&digest],
        )?
        .map(|r| Definition {
            name: r.get(0),
            path: r.get(1),
            source: r.get(2),
        }))
}

/// The attempts' key, to page by.
pub(super) type AttemptKey = (i64, String, i64, i64);

/// Up to `limit` attempts that ended at or after `since`, after `after` in
/// key order, without their output and log: a page of a scan, so that a
/// long journal is never read into memory at once.
pub(super) fn scan_page(
    client: &mut Client,
    since: Millis,
    after: Option<&AttemptKey>,
    limit: i64,
) -> Res<Vec<(AttemptKey, AttemptRecord)>> {
    let columns = ATTEMPT_COLUMNS.replace("output, log", "NULL::bytea, NULL::text");
    let (run, step, item, attempt) = after
        .cloned()
        .unwrap_or((i64::MIN, String::new(), i64::MIN, i64::MIN));
    let sql = format!(
        "SELECT {columns}, run FROM attempts WHERE finished_at >= $1
         AND (run, step, item, attempt) > ($2, $3, $4, $5)
         ORDER BY run, step, item, attempt LIMIT $6"
    );
    let rows = client.query(&sql, &[&since, &run, &step, &item, &attempt, &limit])?;
    Ok(rows
        .iter()
        .map(|r| {
            let key = (r.get(24), r.get(0), r.get(1), r.get(2));
            (key, attempt_record(r))
        })
        .collect())
}

pub(super) fn count_runs(client: &mut Client) -> Res<Vec<(RunState, u64)>> {
    count_matching(client, &RunFilter::default())
}

pub(super) fn count_matching(client: &mut Client, filter: &RunFilter) -> Res<Vec<(RunState, u64)>> {
    let (sql, args) = filter_sql(filter);
    let params = args.params();
    let rows = client.query(
        &format!("SELECT {STATUS} AS s, count(*) FROM runs{sql} GROUP BY s"),
        &params,
    )?;
    Ok(rows
        .iter()
        .map(|r| {
            let status: String = r.get(0);
            (
                status.parse().unwrap_or(RunState::Running),
                r.get::<_, i64>(1) as u64,
            )
        })
        .collect())
}

/// Hosts with a live heartbeat, and owners of incomplete runs (with the
/// lease they last renewed, if they ever did), by owner.
pub(super) fn hosts(client: &mut Client, now: Millis) -> Res<Vec<HostSummary>> {
    let rows = client.query(
        "SELECT coalesce(h.owner, r.owner), h.heartbeat_at, h.lease_until, coalesce(r.runs, 0)
         FROM hosts h
         FULL JOIN (SELECT owner, count(*) AS runs FROM runs
                    WHERE finished_at IS NULL AND owner IS NOT NULL GROUP BY owner) r ON r.owner = h.owner
         WHERE h.lease_until >= $1 OR r.runs > 0
         ORDER BY coalesce(h.owner, r.owner) COLLATE \"C\"",
        &[&now],
    )?;
    Ok(rows
        .iter()
        .map(|r| HostSummary {
            owner: r.get(0),
            heartbeat_at: r.get(1),
            lease_until: r.get(2),
            runs: r.get::<_, i64>(3) as u64,
        })
        .collect())
}

pub(super) fn run_by_key(client: &mut Client, tenant: Option<&str>, key: &str) -> Res<Option<RunId>> {
    Ok(client
        .query_opt(
            "SELECT id FROM runs WHERE submission_key = $1 AND tenant IS NOT DISTINCT FROM $2 ORDER BY id LIMIT 1",
            &[&key, &tenant],
        )?
        .map(|r| r.get::<_, i64>(0) as RunId))
}

pub(super) fn unfinished_runs_of(client: &mut Client, tenant: &str) -> Res<u64> {
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM runs WHERE finished_at IS NULL AND tenant = $1",
            &[&tenant],
        )?
        .get(0);
    Ok(n.max(0) as u64)
}

/// The definition and components of workflow `digest`, or which of them is gone.
pub(super) fn workflow_record(
    client: &mut impl GenericClient,
    digest: &str,
) -> Res<Result<Arc<WorkflowRecord>, WorkflowUnavailable>> {
    let Some(definition) = definition(client, digest)? else {
        return Ok(Err(WorkflowUnavailable::DefinitionGone {
            digest: digest.to_owned(),
        }));
    };
    let rows = client.query(
        "SELECT wc.component, c.name, c.bytes FROM workflow_components wc
         LEFT JOIN components c ON c.digest = wc.component
         WHERE wc.workflow = $1 ORDER BY wc.position",
        &[&digest],
    )?;
    Ok(WorkflowRecord::assemble(
        digest,
        definition,
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))),
    ))
}

/// Run `run`'s attempts matching `filter` (SQL after `WHERE run = $1`).
pub(super) fn attempts_of(
    client: &mut impl GenericClient,
    run: RunId,
    filter: &str,
) -> Res<Vec<AttemptRecord>> {
    let sql = format!(
        "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE run = $1 {filter} ORDER BY started_at, step COLLATE \"C\", item, attempt"
    );
    Ok(client
        .query(&sql, &[&(run as i64)])?
        .iter()
        .map(attempt_record)
        .collect())
}

/// Run `run`'s highest attempt number per unit (step, item).
pub(super) fn unit_attempts(
    client: &mut impl GenericClient,
    run: RunId,
) -> Res<Vec<(String, Option<u32>, u32)>> {
    let rows = client.query(
        "SELECT step, item, max(attempt) FROM attempts WHERE run = $1 GROUP BY step, item",
        &[&(run as i64)],
    )?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                u32::try_from(r.get::<_, i64>(1)).ok(),
                u32::try_from(r.get::<_, i64>(2)).unwrap_or(u32::MAX),
            )
        })
        .collect())
}

/// Run `run`'s state, by key.
pub(super) fn state_of(client: &mut impl GenericClient, run: RunId) -> Res<Vec<(String, String)>> {
    let rows = client.query(
        "SELECT key, value FROM state WHERE run = $1 ORDER BY key COLLATE \"C\"",
        &[&(run as i64)],
    )?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
