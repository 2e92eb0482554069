//! What the dashboard shows beside single runs: a tenant's run counts
//! with the host's health (`GET /v1/overview`), and a workflow's
//! statistics over its recent runs (`GET /v1/workflows/{name}/report`,
//! what `stepbox report --workflow` prints).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::problem::Problem;
use super::runs::{blocking, instant, store_problem, summary_view};
use super::state::AppState;
use crate::store::{AttemptRecord, AttemptStatus, RunFilter, RunState, StoreError, now_millis};

/// The window throughput is measured over: long enough to smooth bursts,
/// short enough that the scan of its attempts stays cheap.
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(10);
/// How long a throughput figure is reused: every open dashboard polls.
const THROUGHPUT_TTL: Duration = Duration::from_secs(1);
/// Runs a workflow report looks at unless `last` says otherwise, and the
/// most it may say: each is read whole.
const LAST: usize = 50;
const MAX_LAST: usize = 500;
/// Attempts a workflow report reads at most: a few 10,000-item runs are
/// plenty for percentiles.
const MAX_ATTEMPTS: usize = 200_000;

/// `?workflow=&since=&until=` on an overview.
#[derive(Debug, Deserialize)]
pub struct OverviewQuery {
    workflow: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// `GET /v1/overview`: the tenant's runs by status (within the filters),
/// and the host's throughput, queue, instances and breakers (the
/// service's, as `/v1/hosts` is).
pub async fn overview(
    State(state): State<Arc<AppState>>,
    Caller(tenant): Caller,
    Query(query): Query<OverviewQuery>,
) -> Result<Response, Problem> {
    let filter = RunFilter {
        workflow: query.workflow.filter(|w| !w.is_empty()),
        tenant: tenant.recorded().map(|t| t.to_string()),
        since: instant("since", query.since.as_deref())?,
        until: instant("until", query.until.as_deref())?,
        ..RunFilter::default()
    };
    let reader = Arc::clone(&state.reader);
    let counts = blocking(move || reader.count_matching(&filter))
        .await?
        .map_err(|e| store_problem(&e))?;
    let mut by_status = serde_json::Map::new();
    for status in RunState::ALL {
        let n = counts
            .iter()
            .filter(|(s, _)| s == status)
            .map(|(_, n)| n)
            .sum::<u64>();
        by_status.insert(status.as_str().to_owned(), json!(n));
    }
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let scheduler = state.host.scheduler();
    let stats = scheduler.stats();
    let breakers: Vec<Value> = scheduler
        .breakers()
        .into_iter()
        .map(|(component, state)| json!({"component": component, "state": state.as_str()}))
        .collect();
    let throughput = throughput(&state).await?;
    let store = match crate::host::StoreLocation::parse(&state.host.settings().db) {
        crate::host::StoreLocation::Sqlite(_) => "sqlite",
        crate::host::StoreLocation::Postgres(_) => "postgres",
    };
    Ok(Json(json!({
        "tenant": &*tenant.name,
        "open": tenant.open,
        "counts": by_status,
        "total": total,
        "host": {
            "stopping": state.host.is_stopping(),
            "running_runs": stats.running_workflows,
            "queued_runs": stats.queued_workflows,
            "instances_in_use": stats.instances_in_use,
            "memory_in_use": stats.memory_in_use.as_u64(),
            "breakers": breakers,
            "throughput": throughput,
            "store": store,
        },
    }))
    .into_response())
}

/// Attempts ended per second over the last [`THROUGHPUT_WINDOW`], and how
/// many of them did not complete.
async fn throughput(state: &Arc<AppState>) -> Result<Value, Problem> {
    {
        let cached = state
            .throughput
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, value)) = &*cached
            && at.elapsed() < THROUGHPUT_TTL
        {
            return Ok(value.clone());
        }
    }
    let reader = Arc::clone(&state.reader);
    let window = i64::try_from(THROUGHPUT_WINDOW.as_millis()).unwrap_or(i64::MAX);
    let (ended, failed) = blocking(move || {
        let (mut ended, mut failed) = (0u64, 0u64);
        reader.scan_attempts(now_millis() - window, &mut |a: &AttemptRecord| {
            ended += 1;
            failed += u64::from(a.status != AttemptStatus::Completed);
        })?;
        Ok::<_, StoreError>((ended, failed))
    })
    .await?
    .map_err(|e| store_problem(&e))?;
    let value = json!({
        "window_seconds": THROUGHPUT_WINDOW.as_secs(),
        "attempts": ended,
        "failed": failed,
        "attempts_per_second": ended as f64 / THROUGHPUT_WINDOW.as_secs_f64(),
    });
    *state
        .throughput
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Instant::now(), value.clone()));
    Ok(value)
}

/// `?last=` on a workflow report.
#[derive(Debug, Deserialize)]
pub struct ReportQuery {
    last: Option<String>,
}

/// `GET /v1/workflows/{name}/report`: per component and per step, the
/// 50th, 95th and 99th percentile durations and the error rate over the
/// workflow's last runs, the runs' own error rate, and those runs.
pub async fn workflow_report(
    State(state): State<Arc<AppState>>,
    Caller(tenant): Caller,
    Path(name): Path<String>,
    Query(query): Query<ReportQuery>,
) -> Result<Response, Problem> {
    let last = query
        .last
        .as_deref()
        .map(|l| {
            l.parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LAST).contains(n))
                .ok_or_else(|| {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        format!("`last` must be a number from 1 to {MAX_LAST}"),
                    )
                })
        })
        .transpose()?
        .unwrap_or(LAST);
    let filter = RunFilter {
        workflow: Some(name.clone()),
        tenant: tenant.recorded().map(|t| t.to_string()),
        limit: Some(last),
        ..RunFilter::default()
    };
    let (reader, catalog_state, tenant_name, wf) = (
        Arc::clone(&state.reader),
        Arc::clone(&state),
        Arc::clone(&tenant.name),
        name.clone(),
    );
    let read = blocking(move || {
        let uploaded = catalog_state
            .catalog
            .uploaded(&tenant_name, &wf)
            .map(|u| u.is_some())
            .unwrap_or(false);
        let runs = reader.runs(&filter)?;
        let mut attempts = Vec::new();
        for run in &runs {
            if attempts.len() >= MAX_ATTEMPTS {
                break;
            }
            if let Some(history) = reader.history(run.id)? {
                attempts.extend(history.attempts.into_iter().map(|mut a| {
                    // Outputs and logs are not needed for statistics.
                    a.output = None;
                    a.log = None;
                    a
                }));
            }
        }
        Ok::<_, StoreError>((uploaded, runs, attempts))
    })
    .await?
    .map_err(|e| store_problem(&e))?;
    let (uploaded, runs, attempts) = read;
    if !uploaded && runs.is_empty() {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no workflow `{name}`"),
        ));
    }
    let ended = attempts.iter().filter(|a| a.status != AttemptStatus::Started);
    let components = crate::report::component_stats(ended.clone());
    // The same statistics per step: the DAG's nodes.
    let by_step: Vec<AttemptRecord> = ended
        .map(|a| AttemptRecord {
            component: Some(a.step.clone()),
            ..a.clone()
        })
        .collect();
    let steps = crate::report::component_stats(&by_step);
    let finished: Vec<_> = runs.iter().filter(|r| !r.status.is_incomplete()).collect();
    let failed = finished.iter().filter(|r| r.status == RunState::Failed).count();
    let mut durations: Vec<i64> = finished
        .iter()
        .filter_map(|r| Some(r.finished_at? - r.started_at.unwrap_or(r.accepted_at)))
        .collect();
    durations.sort_unstable();
    let pick = |q: f64| {
        (!durations.is_empty()).then(|| durations[((durations.len() - 1) as f64 * q).round() as usize])
    };
    Ok(Json(json!({
        "workflow": name,
        "runs": runs.len(),
        "ended": finished.len(),
        "failed": failed,
        "error_rate": if finished.is_empty() { 0.0 } else { failed as f64 / finished.len() as f64 },
        "duration_ms": {"p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99)},
        "components": components,
        "steps": steps,
        "recent": runs.iter().map(summary_view).collect::<Vec<_>>(),
    }))
    .into_response())
}
