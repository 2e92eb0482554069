//! Writing: batches of events fenced by their runs' owners, leases and
//! claims, run ids, and retention.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use postgres::types::ToSql;
use postgres::{Client, GenericClient, Row, Statement, Transaction};

use super::read;
use crate::store::{
    AttemptEnd, Event, GcStats, Millis, RecoveredRun, Refused, RunId, WorkflowRecord, WriteReport, now_millis,
};

/// Whether a run's owner holds it now: the owner has a heartbeat row whose
/// lease has not ended at `$now` (a run-level condition on `runs`, the
/// instant in the parameter named by `now`).
fn owner_live(now: &str) -> String {
    format!("EXISTS (SELECT 1 FROM hosts h WHERE h.owner = runs.owner AND h.lease_until >= {now})")
}

/// Registers `owner`'s heartbeat, its lease ending at `until`, in a
/// transaction of its own: committed before the owner claims anything, so
/// that a claimant racing it sees the lease of every run it takes.
fn heartbeat(client: &mut Client, owner: &str, until: Millis, now: Millis) -> Res<()> {
    client.execute(
        "INSERT INTO hosts (owner, heartbeat_at, lease_until) VALUES ($1, $2, $3)
         ON CONFLICT (owner) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, lease_until = excluded.lease_until",
        &[&owner, &now, &until],
    )?;
    Ok(())
}

type Res<T> = Result<T, postgres::Error>;

type Params<'a> = [&'a (dyn ToSql + Sync)];

/// Statements prepared on a writer's connection, by their text: each is
/// parsed and planned once per connection rather than at every use (which
/// costs a round trip and a parse each time, on every batch and every
/// idle claim). A connection made again starts with none.
#[derive(Default)]
pub(super) struct Prepared(HashMap<String, Statement>);

impl Prepared {
    fn statement(&mut self, c: &mut impl GenericClient, sql: &str) -> Res<Statement> {
        if let Some(statement) = self.0.get(sql) {
            return Ok(statement.clone());
        }
        let statement = c.prepare(sql)?;
        self.0.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn execute(&mut self, c: &mut impl GenericClient, sql: &str, params: &Params<'_>) -> Res<u64> {
        let statement = self.statement(c, sql)?;
        c.execute(&statement, params)
    }

    fn query(&mut self, c: &mut impl GenericClient, sql: &str, params: &Params<'_>) -> Res<Vec<Row>> {
        let statement = self.statement(c, sql)?;
        c.query(&statement, params)
    }
}

/// Which of the runs `events` touch (but do not accept) `owner` does not
/// own, with how many of the batch's events each has. The owned rows stay
/// locked (`FOR UPDATE`) until the transaction ends, so no claim comes
/// between this check and the writes.
///
/// The runs the batch accepts (but queues) are the writer's, unless
/// `with_accepted` is false: then they are checked like the rest (they
/// are in already).
fn fence(
    tx: &mut Transaction<'_>,
    st: &mut Prepared,
    owner: &str,
    events: &[Event],
    with_accepted: bool,
) -> Res<Vec<Refused>> {
    let mut accepted: HashSet<RunId> = HashSet::new();
    let mut touched: HashMap<RunId, usize> = HashMap::new();
    for event in events {
        match event {
            Event::RunAccepted {
                run, queued: false, ..
            } if with_accepted => {
                accepted.insert(*run);
            }
            Event::RunAccepted { .. } => {}
            other => {
                if let Some(run) = other.run() {
                    *touched.entry(run).or_default() += 1;
                }
            }
        }
    }
    touched.retain(|run, _| !accepted.contains(run));
    if touched.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = touched.keys().map(|&id| id as i64).collect();
    let owned: HashSet<RunId> = st
        .query(
            tx,
            "SELECT id FROM runs WHERE owner = $1 AND id = ANY($2) ORDER BY id FOR UPDATE",
            &[&owner, &ids],
        )?
        .iter()
        .map(|r| r.get::<_, i64>(0) as RunId)
        .collect();
    let mut refused: Vec<Refused> = touched
        .into_iter()
        .filter(|(run, _)| !owned.contains(run))
        .map(|(run, events)| Refused { run, events })
        .collect();
    refused.sort_unstable_by_key(|r| r.run);
    Ok(refused)
}

/// Writes `events` as `owner` in one transaction, but for those of runs
/// `owner` does not own. Each kind of event is written in one statement
/// for the whole batch (a round trip each, not one per event): the
/// tables they touch are independent, so the order across kinds does not
/// matter, and within a kind the batch's order is kept where it could.
///
/// `again`: the batch is written a second time, after the connection was
/// lost before its first commit was known to be in. Then its acceptances
/// are inserted first, but for those already in, and every run it touches
/// is fenced, those it accepts included: each statement after that does
/// what it did the first time (inserts of attempt starts do nothing twice,
/// attempt ends, state and run updates overwrite with the same values), so
/// the batch is in once however often it is written.
pub(super) fn write(
    client: &mut Client,
    st: &mut Prepared,
    owner: &str,
    events: &[Event],
    again: bool,
) -> Res<WriteReport> {
    let mut tx = client.transaction()?;
    if again {
        let all: Vec<&Event> = events.iter().collect();
        accept(&mut tx, st, owner, &all, true)?;
    }
    let refused = fence(&mut tx, st, owner, events, !again)?;
    let refused_runs: HashSet<RunId> = refused.iter().map(|r| r.run).collect();
    let events: Vec<&Event> = events
        .iter()
        .filter(|e| e.run().is_none_or(|run| !refused_runs.contains(&run)))
        .collect();
    for event in &events {
        if let Event::WorkflowDefined(w) = event {
            define(&mut tx, w)?;
        }
    }
    if !again {
        accept(&mut tx, st, owner, &events, false)?;
    }
    start_attempts(&mut tx, st, &events)?;
    start_and_end_runs(&mut tx, st, &events)?;
    write_state(&mut tx, st, &events)?;
    let ends: Vec<&AttemptEnd> = events
        .iter()
        .filter_map(|e| match e {
            Event::AttemptEnded(end) => Some(&**end),
            _ => None,
        })
        .collect();
    end_attempts(&mut tx, st, &ends)?;
    tx.commit()?;
    Ok(WriteReport { refused })
}

/// The batch's attempt starts, but those its ends overwrite anyway: under
/// load most attempts start and end within one batch.
fn start_attempts(tx: &mut Transaction<'_>, st: &mut Prepared, events: &[&Event]) -> Res<()> {
    let ended: HashSet<(RunId, &str, Option<u32>, u32)> = events
        .iter()
        .filter_map(|e| match e {
            Event::AttemptEnded(a) => Some((a.run, &*a.step, a.item, a.attempt)),
            _ => None,
        })
        .collect();
    let (mut runs, mut steps, mut items, mut attempts, mut ats) = (vec![], vec![], vec![], vec![], vec![]);
    for event in events {
        if let Event::AttemptStarted {
            run,
            step,
            item,
            attempt,
            at,
        } = event
            && !ended.contains(&(*run, &**step, *item, *attempt))
        {
            runs.push(*run as i64);
            steps.push(&**step);
            items.push(item_key(*item));
            attempts.push(i64::from(*attempt));
            ats.push(*at);
        }
    }
    if runs.is_empty() {
        return Ok(());
    }
    st.execute(
        tx,
        "INSERT INTO attempts (run, step, item, attempt, status, started_at)
         SELECT r, s, i, a, 'started', t FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
             AS u(r, s, i, a, t)
         ON CONFLICT DO NOTHING",
        &[&runs, &steps, &items, &attempts, &ats],
    )?;
    Ok(())
}

/// The batch's run starts (resumptions) and ends. When a run starts or
/// ends more than once in the batch, or starts after it ended (ended
/// interrupted, then resumed), they are written one by one, in order; else
/// each kind in one statement, the starts first. A resumed run that starts
/// and ends within one batch (its steps need not wait for commits) is the
/// common case under load, so it takes the fast path.
fn start_and_end_runs(tx: &mut Transaction<'_>, st: &mut Prepared, events: &[&Event]) -> Res<()> {
    let (mut started, mut ended) = (HashSet::new(), HashSet::new());
    let in_order = events.iter().all(|e| match e {
        Event::RunStarted { run, .. } => !ended.contains(run) && started.insert(*run),
        Event::RunEnded { run, .. } => ended.insert(*run),
        _ => true,
    });
    if !in_order {
        for event in events {
            match event {
                Event::RunStarted { run, at } => start_runs(tx, st, &[*run as i64], &[*at])?,
                Event::RunEnded { .. } => end_runs(tx, st, &[event])?,
                _ => {}
            }
        }
        return Ok(());
    }
    let (mut ids, mut ats) = (vec![], vec![]);
    for event in events {
        if let Event::RunStarted { run, at } = event {
            ids.push(*run as i64);
            ats.push(*at);
        }
    }
    start_runs(tx, st, &ids, &ats)?;
    let ends: Vec<&Event> = events
        .iter()
        .copied()
        .filter(|e| matches!(e, Event::RunEnded { .. }))
        .collect();
    end_runs(tx, st, &ends)
}

fn start_runs(tx: &mut Transaction<'_>, st: &mut Prepared, ids: &[i64], ats: &[i64]) -> Res<()> {
    if ids.is_empty() {
        return Ok(());
    }
    st.execute(
        tx,
        "UPDATE runs SET status = 'running', started_at = coalesce(runs.started_at, u.at)
         FROM UNNEST($1::bigint[], $2::bigint[]) AS u(id, at) WHERE runs.id = u.id",
        &[&ids, &ats],
    )?;
    Ok(())
}

/// `ends`: [`Event::RunEnded`]s, each of another run.
fn end_runs(tx: &mut Transaction<'_>, st: &mut Prepared, ends: &[&Event]) -> Res<()> {
    let (mut ids, mut statuses, mut outputs, mut errors, mut finished, mut started) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for event in ends {
        if let Event::RunEnded {
            run,
            status,
            output,
            error,
            started: start,
            at,
        } = event
        {
            ids.push(*run as i64);
            statuses.push(status.as_str());
            outputs.push(output.as_deref());
            errors.push(error.as_deref());
            finished.push((!status.is_incomplete()).then_some(*at));
            started.push(*start);
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    st.execute(
        tx,
        "UPDATE runs SET status = u.status, output = u.output, error = u.error, finished_at = u.finished,
             started_at = coalesce(runs.started_at, u.started)
         FROM UNNEST($1::bigint[], $2::text[], $3::bytea[], $4::text[], $5::bigint[], $6::bigint[])
             AS u(id, status, output, error, finished, started)
         WHERE runs.id = u.id",
        &[&ids, &statuses, &outputs, &errors, &finished, &started],
    )?;
    Ok(())
}

/// The batch's state writes, in one statement: the last value written to
/// a key in the batch is the one kept.
fn write_state(tx: &mut Transaction<'_>, st: &mut Prepared, events: &[&Event]) -> Res<()> {
    let mut last: HashMap<(RunId, &str), &str> = HashMap::new();
    let mut order = Vec::new();
    for event in events {
        if let Event::StateWritten { run, key, value } = event
            && last.insert((*run, key.as_str()), value.as_str()).is_none()
        {
            order.push((*run, key.as_str()));
        }
    }
    if order.is_empty() {
        return Ok(());
    }
    let runs: Vec<i64> = order.iter().map(|(run, _)| *run as i64).collect();
    let keys: Vec<&str> = order.iter().map(|(_, key)| *key).collect();
    let values: Vec<&str> = order.iter().map(|k| last[k]).collect();
    st.execute(
        tx,
        "INSERT INTO state (run, key, value) SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[])
         ON CONFLICT (run, key) DO UPDATE SET value = excluded.value",
        &[&runs, &keys, &values],
    )?;
    Ok(())
}

/// A workflow's definition and components, once each.
fn define(tx: &mut Transaction<'_>, w: &WorkflowRecord) -> Res<()> {
    for (position, c) in w.components.iter().enumerate() {
        tx.execute(
            "INSERT INTO components (digest, name, bytes) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&c.digest, &c.name, &&c.bytes[..]],
        )?;
        tx.execute(
            "INSERT INTO workflow_components (workflow, position, component) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&w.digest, &(position as i64), &c.digest],
        )?;
    }
    tx.execute(
        "INSERT INTO workflows (digest, name, path, source) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        &[&w.digest, &w.name, &w.path, &w.source],
    )?;
    Ok(())
}

/// The batch's accepted runs, in one statement: a batch accepting
/// thousands of runs is one round trip. A run id already in the database
/// fails the batch (ids are never reused), unless `again`: then it is
/// left as it is (the batch is written a second time).
fn accept(
    tx: &mut Transaction<'_>,
    st: &mut Prepared,
    owner: &str,
    events: &[&Event],
    again: bool,
) -> Res<()> {
    let mut ids = Vec::new();
    let mut workflows = Vec::new();
    let mut names = Vec::new();
    let mut inputs: Vec<&[u8]> = Vec::new();
    let mut ats = Vec::new();
    let mut leases = Vec::new();
    let mut tenants: Vec<Option<&str>> = Vec::new();
    let mut keys: Vec<Option<&str>> = Vec::new();
    let mut owners: Vec<Option<&str>> = Vec::new();
    for event in events {
        if let Event::RunAccepted {
            run,
            workflow,
            name,
            lease_until,
            queued,
            input,
            at,
            tenant,
            key,
        } = event
        {
            ids.push(*run as i64);
            workflows.push(&**workflow);
            names.push(&**name);
            inputs.push(input);
            ats.push(*at);
            leases.push(*lease_until);
            tenants.push(tenant.as_deref());
            keys.push(key.as_deref());
            owners.push((!queued).then_some(owner));
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    // The lease is the owner's: a host that accepts before its first
    // heartbeat (a journal registers on start; a bare store may not)
    // gets its row here, with the batch's lease.
    let lease = leases.iter().copied().max().unwrap_or(0);
    st.execute(
        tx,
        "INSERT INTO hosts (owner, heartbeat_at, lease_until) VALUES ($1, $2, $3) ON CONFLICT (owner) DO NOTHING",
        &[&owner, &now_millis(), &lease],
    )?;
    let insert =
        "INSERT INTO runs (id, workflow, name, input, accepted_at, tenant, submission_key, owner, status)
         SELECT *, 'accepted' FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bytea[], $5::bigint[],
                                          $6::text[], $7::text[], $8::text[])";
    let params: [&(dyn postgres::types::ToSql + Sync); 8] =
        [&ids, &workflows, &names, &inputs, &ats, &tenants, &keys, &owners];
    match again {
        false => st.execute(tx, insert, &params)?,
        true => st.execute(tx, &format!("{insert} ON CONFLICT (id) DO NOTHING"), &params)?,
    };
    if owners.iter().any(Option::is_none) {
        // Delivered at commit to every host listening: work for whoever
        // has a free slot.
        st.execute(tx, "SELECT pg_notify($1, '')", &[&super::WORK_CHANNEL])?;
    }
    Ok(())
}

/// The batch's attempt ends, in one statement: each overwrites its start
/// (or an end written before, by a run resumed twice).
fn end_attempts(tx: &mut Transaction<'_>, st: &mut Prepared, ends: &[&AttemptEnd]) -> Res<()> {
    if ends.is_empty() {
        return Ok(());
    }
    let col = |f: &dyn Fn(&AttemptEnd) -> i64| ends.iter().map(|a| f(a)).collect::<Vec<i64>>();
    let runs = col(&|a| a.run as i64);
    let steps: Vec<&str> = ends.iter().map(|a| &*a.step).collect();
    let items = col(&|a| item_key(a.item));
    let attempts = col(&|a| i64::from(a.attempt));
    let statuses: Vec<&str> = ends.iter().map(|a| a.status.as_str()).collect();
    let lasts: Vec<bool> = ends.iter().map(|a| a.last).collect();
    let outcomes: Vec<&str> = ends.iter().map(|a| a.outcome.as_str()).collect();
    let messages: Vec<Option<&str>> = ends.iter().map(|a| a.message.as_deref()).collect();
    let started = col(&|a| a.started_us / 1000);
    let finished = col(&|a| a.at);
    let durations = col(&|a| micros(a.usage.total()));
    let waits = col(&|a| micros(a.usage.queue_wait));
    let fuel = col(&|a| a.usage.fuel_consumed as i64);
    let memory = col(&|a| a.usage.peak_memory as i64);
    let outputs: Vec<Option<&[u8]>> = ends.iter().map(|a| a.output.as_deref()).collect();
    let logs: Vec<Option<&str>> = ends.iter().map(|a| a.log.as_deref()).collect();
    let components: Vec<&str> = ends.iter().map(|a| &*a.component).collect();
    let fuel_limits = col(&|a| a.limits.fuel as i64);
    let memory_limits = col(&|a| a.limits.memory as i64);
    let time_limits = col(&|a| micros(a.limits.time));
    let started_us = col(&|a| a.started_us);
    let scratch = col(&|a| a.usage.peak_scratch as i64);
    let scratch_limits = col(&|a| a.limits.scratch as i64);
    let levels: Vec<Option<&str>> = ends.iter().map(|a| a.timeout_level.map(|l| l.as_str())).collect();
    st.execute(
        tx,
        "INSERT INTO attempts (run, step, item, attempt, status, last, outcome, message,
             started_at, finished_at, duration_us, queue_wait_us, fuel, peak_memory, output, log,
             component, fuel_limit, memory_limit, time_limit_us, started_us, peak_scratch,
             scratch_limit, timeout_level)
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::bool[],
             $7::text[], $8::text[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[],
             $14::bigint[], $15::bytea[], $16::text[], $17::text[], $18::bigint[], $19::bigint[],
             $20::bigint[], $21::bigint[], $22::bigint[], $23::bigint[], $24::text[])
         ON CONFLICT (run, step, item, attempt) DO UPDATE SET
             status = excluded.status, last = excluded.last, outcome = excluded.outcome,
             message = excluded.message, started_at = excluded.started_at,
             finished_at = excluded.finished_at, duration_us = excluded.duration_us,
             queue_wait_us = excluded.queue_wait_us, fuel = excluded.fuel,
             peak_memory = excluded.peak_memory, output = excluded.output, log = excluded.log,
             component = excluded.component, fuel_limit = excluded.fuel_limit,
             memory_limit = excluded.memory_limit, time_limit_us = excluded.time_limit_us,
             started_us = excluded.started_us, peak_scratch = excluded.peak_scratch,
             scratch_limit = excluded.scratch_limit, timeout_level = excluded.timeout_level",
        &[
            &runs,
            &steps,
            &items,
            &attempts,
            &statuses,
            &lasts,
            &outcomes,
            &messages,
            &started,
            &finished,
            &durations,
            &waits,
            &fuel,
            &memory,
            &outputs,
            &logs,
            &components,
            &fuel_limits,
            &memory_limits,
            &time_limits,
            &started_us,
            &scratch,
            &scratch_limits,
            &levels,
        ],
    )?;
    Ok(())
}

/// Takes, for `owner` until `until`, every incomplete run no live host
/// holds, and reads what resuming each one it now holds needs.
pub(super) fn claim(
    client: &mut Client,
    owner: &str,
    until: Millis,
    now: Millis,
    workflows: &mut Workflows,
) -> Res<Vec<RecoveredRun>> {
    heartbeat(client, owner, until, now)?;
    // Rows of hosts gone for a day go, as a host starts.
    client.execute("DELETE FROM hosts WHERE lease_until < $1", &[&(now - 86_400_000)])?;
    let mut tx = client.transaction()?;
    // Under READ COMMITTED a row another claimant just took is re-checked
    // after its commit: its owner's lease, committed before its claim,
    // keeps it out of this one.
    tx.execute(
        &format!(
            "UPDATE runs SET owner = $1 WHERE finished_at IS NULL
             AND (owner IS NULL OR owner = $1 OR NOT {})",
            owner_live("$2")
        ),
        &[&owner, &now],
    )?;
    let claimed = tx.query(
        "SELECT id FROM runs WHERE finished_at IS NULL AND owner = $1 ORDER BY id",
        &[&owner],
    )?;
    let ids: Vec<i64> = claimed.iter().map(|r| r.get(0)).collect();
    let runs = recover(&mut tx, &ids, workflows)?;
    tx.commit()?;
    Ok(runs)
}

/// One claim of orphans: a token its rows are marked with, so that when its
/// connection is lost before its commit is known, running it again finds
/// the runs it took if it did commit, rather than taking others and leaving
/// those with a claimant that does not know it holds them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Claim {
    /// At most how many runs it takes.
    pub(super) limit: usize,
    /// Marks the rows it takes.
    pub(super) token: i64,
    /// Whether this is a second run of the claim.
    pub(super) again: bool,
}

/// Takes for `owner` at most `limit` incomplete runs of other owners whose
/// lease ended (or that were released or queued for any host): `owner`'s
/// own lease, its heartbeat, covers them at once, skipping rows another claimant
/// has locked, and reads what resuming them needs.
pub(super) fn claim_orphans(
    client: &mut Client,
    st: &mut Prepared,
    owner: &str,
    until: Millis,
    now: Millis,
    claim: Claim,
    workflows: &mut Workflows,
) -> Res<Vec<RecoveredRun>> {
    let limit = claim.limit;
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut tx = client.transaction()?;
    let ids_of = |rows: Vec<Row>| -> Vec<i64> { rows.iter().map(|r| r.get(0)).collect() };
    let mut ids = Vec::new();
    if claim.again {
        // Its first run may have committed: then these are its runs.
        ids = ids_of(st.query(
            &mut tx,
            "SELECT id FROM runs WHERE owner = $1 AND finished_at IS NULL AND claim = $2",
            &[&owner, &claim.token],
        )?);
    }
    if ids.is_empty() {
        ids = ids_of(st.query(
            &mut tx,
            &format!(
                "UPDATE runs SET owner = $1, claim = $4 WHERE id IN (
                     SELECT id FROM runs WHERE finished_at IS NULL AND owner IS DISTINCT FROM $1
                     AND (owner IS NULL OR NOT {})
                     ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
                 RETURNING id",
                owner_live("$2")
            ),
            &[
                &owner,
                &now,
                &i64::try_from(limit).unwrap_or(i64::MAX),
                &claim.token,
            ],
        )?);
    }
    ids.sort_unstable();
    if !ids.is_empty() {
        // Holding them is being alive: the heartbeat says so (an idle
        // claim that takes nothing writes nothing).
        st.execute(
            &mut tx,
            "INSERT INTO hosts (owner, heartbeat_at, lease_until) VALUES ($1, $2, $3)
             ON CONFLICT (owner) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                 lease_until = greatest(hosts.lease_until, excluded.lease_until)",
            &[&owner, &now, &until],
        )?;
    }
    let runs = recover(&mut tx, &ids, workflows)?;
    tx.commit()?;
    Ok(runs)
}

/// Workflow records by digest, kept by a writer across claims: a digest
/// names one definition and its components forever, and reading the
/// components (their bytes) again for every batch of claimed runs would
/// cost more than the claim.
pub(super) type Workflows = HashMap<String, Arc<WorkflowRecord>>;

/// What resuming each of runs `ids` needs, read in the claiming
/// transaction. Runs with no attempt and no state yet (queued runs,
/// mostly) have nothing to read but their row.
fn recover(tx: &mut Transaction<'_>, ids: &[i64], workflows: &mut Workflows) -> Res<Vec<RecoveredRun>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = tx.query(
        "SELECT id, workflow, input, tenant FROM runs WHERE id = ANY($1) ORDER BY id",
        &[&ids],
    )?;
    let begun: HashSet<i64> = tx
        .query(
            "SELECT run FROM attempts WHERE run = ANY($1) UNION SELECT run FROM state WHERE run = ANY($1)",
            &[&ids],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut runs = Vec::with_capacity(rows.len());
    for row in rows {
        let id = row.get::<_, i64>(0);
        let digest: String = row.get(1);
        let workflow = match workflows.get(&digest) {
            Some(w) => Ok(Arc::clone(w)),
            None => {
                let w = read::workflow_record(tx, &digest)?;
                if let Ok(w) = &w {
                    workflows.insert(digest, Arc::clone(w));
                }
                w
            }
        };
        let (done, attempts, state) = match begun.contains(&id) {
            true => (
                read::attempts_of(tx, id as RunId, "AND last AND status IN ('completed', 'failed')")?,
                read::unit_attempts(tx, id as RunId)?,
                read::state_of(tx, id as RunId)?,
            ),
            false => Default::default(),
        };
        runs.push(RecoveredRun {
            id: id as RunId,
            workflow,
            input: row
                .get::<_, Option<Vec<u8>>>(2)
                .unwrap_or_else(|| b"null".to_vec()),
            tenant: row.get(3),
            done,
            attempts,
            state,
        });
    }
    Ok(runs)
}

/// Renews `owner`'s heartbeat: one row, whatever it runs (the lease of
/// each of its runs is this row's), and returns how many incomplete runs
/// it holds (read from an index, nothing written).
pub(super) fn renew(
    client: &mut Client,
    st: &mut Prepared,
    owner: &str,
    until: Millis,
    now: Millis,
) -> Res<u64> {
    // One statement, one round trip: the heartbeat and the count.
    let held: i64 = st.query(
        client,
        "WITH beat AS (
                 INSERT INTO hosts (owner, heartbeat_at, lease_until) VALUES ($1, $2, $3)
                 ON CONFLICT (owner) DO UPDATE
                     SET heartbeat_at = excluded.heartbeat_at, lease_until = excluded.lease_until
                 RETURNING 1)
             SELECT count(*) FROM runs WHERE owner = $1 AND finished_at IS NULL",
        &[&owner, &now, &until],
    )?[0]
        .get(0);
    Ok(held as u64)
}

/// Gives up `owner`'s incomplete runs and its heartbeat: it is stopping.
pub(super) fn release(client: &mut Client, owner: &str) -> Res<u64> {
    let mut tx = client.transaction()?;
    let released = tx.execute(
        "UPDATE runs SET owner = NULL WHERE owner = $1 AND finished_at IS NULL",
        &[&owner],
    )?;
    tx.execute("DELETE FROM hosts WHERE owner = $1", &[&owner])?;
    if released > 0 {
        tx.execute("SELECT pg_notify($1, '')", &[&super::WORK_CHANNEL])?;
    }
    tx.commit()?;
    Ok(released)
}

/// The next `count` ids, past every run in the database whoever wrote it.
pub(super) fn allocate(client: &mut Client, count: u64) -> Res<Range<RunId>> {
    let count = i64::try_from(count).unwrap_or(i64::MAX);
    let end: i64 = client
        .query_one(
            "UPDATE run_ids SET next = greatest(next, (SELECT coalesce(max(id), 0) + 1 FROM runs)) + $1
             WHERE only_row = 1 RETURNING next",
            &[&count],
        )?
        .get(0);
    Ok((end - count) as RunId..end as RunId)
}

/// Gives `unused` back if it is the end of the last block handed out.
pub(super) fn give_back(client: &mut Client, unused: Range<RunId>) -> Res<bool> {
    if unused.is_empty() {
        return Ok(false);
    }
    let n = client.execute(
        "UPDATE run_ids SET next = $1 WHERE only_row = 1 AND next = $2",
        &[&(unused.start as i64), &(unused.end as i64)],
    )?;
    Ok(n == 1)
}

/// Removes the payloads of runs finished before `before`, keeping their
/// audit record; components no uncollected run uses go too.
pub(super) fn collect(client: &mut Client, before: Millis) -> Res<GcStats> {
    let size = |c: &mut Client| -> Res<i64> {
        Ok(c.query_one("SELECT pg_database_size(current_database())", &[])?
            .get(0))
    };
    let size_before = size(client)?;
    let mut tx = client.transaction()?;
    let ids: Vec<i64> = tx
        .query(
            "UPDATE runs SET input = NULL, output = NULL, collected = TRUE
             WHERE NOT collected AND finished_at IS NOT NULL AND finished_at < $1 RETURNING id",
            &[&before],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.execute(
        "UPDATE attempts SET output = NULL, log = NULL WHERE run = ANY($1)",
        &[&ids],
    )?;
    tx.execute("DELETE FROM state WHERE run = ANY($1)", &[&ids])?;
    tx.execute(
        "DELETE FROM components WHERE digest NOT IN (
             SELECT wc.component FROM workflow_components wc
             JOIN runs r ON r.workflow = wc.workflow WHERE NOT r.collected)",
        &[],
    )?;
    tx.commit()?;
    // The space goes back to the tables (for new rows), not to the disk:
    // a plain VACUUM marks it free without locking writers out.
    client.batch_execute("VACUUM runs, attempts, state, components")?;
    let size_after = size(client)?;
    Ok(GcStats {
        runs: ids.len() as u64,
        bytes_freed: size_before.saturating_sub(size_after).max(0) as u64,
    })
}

fn item_key(item: Option<u32>) -> i64 {
    item.map_or(-1, i64::from)
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
