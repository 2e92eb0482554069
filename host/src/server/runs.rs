//! Runs: submitting, listing, reading, cancelling, reporting.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{Caller, Tenant};
use super::catalog::CatalogError;
use super::problem::Problem;
use super::state::AppState;
use crate::host::{Accepted, LiveRun};
use crate::scheduler::{Submission, SubmitError, WorkflowReport};
use crate::store::{Durability, RunFilter, RunHistory, RunId, RunState, RunSummary, StoreError};

/// The longest idempotency key accepted.
const MAX_KEY: usize = 255;
/// Runs listed per page unless `limit` says otherwise, and the most it may say.
const PAGE: usize = 50;
const MAX_PAGE: usize = 1000;

/// `?wait=` on a submission.
#[derive(Debug, Deserialize)]
pub struct SubmitQuery {
    wait: Option<String>,
}

/// Whether the request's `Accept` names `media` (plain text, SVG...).
pub fn accepts(headers: &HeaderMap, media: &str) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept
                .split(',')
                .any(|m| m.split(';').next().unwrap_or("").trim() == media)
        })
}

/// Plain text, as the CLI prints it.
fn plain(text: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

/// Runs a blocking store or catalog call off the async threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f).await.map_err(|_| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the server failed on this request",
        )
    })
}

/// A store failure, as a 503: the store is what is unavailable.
pub fn store_problem(e: &StoreError) -> Problem {
    tracing::warn!("store: {e}");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the journal cannot be read: {e}"),
    )
}

/// A 429 that says when to try again.
fn too_many(detail: impl Into<String>, after: Duration) -> Response {
    let secs = after.as_secs_f64().ceil().max(1.0) as u64;
    let mut response = Problem::new(StatusCode::TOO_MANY_REQUESTS, detail).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// What a submission's body asks for: one input, or many.
fn inputs(body: &[u8]) -> Result<(Vec<Value>, bool), Problem> {
    let value: Value = match body.iter().all(u8::is_ascii_whitespace) {
        true => Value::Object(Default::default()),
        false => serde_json::from_slice(body).map_err(|e| {
            Problem::new(StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}"))
                .at(e.line(), e.column())
        })?,
    };
    match value {
        Value::Object(mut map) if map.len() == 1 && map.get("inputs").is_some_and(Value::is_array) => {
            let Some(Value::Array(many)) = map.remove("inputs") else {
                unreachable!("checked to be an array")
            };
            if many.is_empty() {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    "`inputs` is empty: nothing to run",
                ));
            }
            Ok((many, true))
        }
        one => Ok((vec![one], false)),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                format!("`Idempotency-Key` must be 1 to {MAX_KEY} visible ASCII characters"),
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// The key a batch's `i`th run is recorded with.
fn batch_key(key: &str, i: usize, batch: bool) -> String {
    match batch {
        false => key.to_owned(),
        true => format!("{key}#{i}"),
    }
}

/// `POST /v1/workflows/{name}/runs`.
pub async fn submit(
    State(state): State<Arc<AppState>>,
    Caller(tenant): Caller,
    Path(name): Path<String>,
    Query(query): Query<SubmitQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    if state.host.is_stopping() {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        ));
    }
    let (inputs, batch) = inputs(&body)?;
    let wait = query
        .wait
        .as_deref()
        .map(crate::limits::parse_duration)
        .transpose()
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, format!("`wait`: {e}")))?;
    if let Some(wait) = wait
        && wait > state.settings.max_wait
    {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!(
                "`wait` may be at most {} (the server's `max_wait`)",
                humantime::format_duration(state.settings.max_wait)
            ),
        ));
    }
    let key = idempotency_key(&headers)?;
    let _held = match &key {
        Some(key) => Some(state.keys.hold(&tenant.name, key).await),
        None => None,
    };
    if let Some(key) = &key
        && let Some(ids) = replayed(&state, &tenant, key, inputs.len(), batch).await?
    {
        let handles = ids.iter().map(|_| None).collect();
        let runs = ids.into_iter().map(|id| accepted_view(id, &name)).collect();
        let mut response = answer(&state, runs, handles, batch, wait, StatusCode::OK).await;
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        return Ok(response);
    }
    let workflow = match state.catalog.cached(&tenant.name, &name) {
        Some(workflow) => workflow,
        // Read and prepared (components compiled) once after a start.
        None => {
            let (state, tenant, name) = (Arc::clone(&state), Arc::clone(&tenant.name), name.clone());
            blocking(move || state.catalog.workflow(state.host.scheduler(), &tenant, &name)).await?
        }
        .map_err(|e| match e {
            CatalogError::NoWorkflow(_) => Problem::new(StatusCode::NOT_FOUND, e.to_string()),
            CatalogError::Store(_) => Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            other => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        })?,
    };
    if let Err(after) = tenant.take_rate(inputs.len()) {
        return Ok(throttle(
            &state,
            "submissions come faster than the tenant's rate",
            after,
        ));
    }
    let full = || {
        throttle(
            &state,
            format!(
                "tenant `{}` has as many runs accepted and unfinished as its quota allows ({})",
                tenant.name,
                tenant.max_live.unwrap_or(usize::MAX)
            ),
            Duration::from_secs(1),
        )
    };
    let Some(mut shares) = tenant.reserve(inputs.len()) else {
        return Ok(full());
    };
    // Where hosts share the store, the tenant's runs on the others and
    // those queued for any count too. (Submissions to several hosts at
    // the very same moment may each see the others' not yet written.)
    if let Some(max) = tenant.max_live
        && state.host.shares_store()
    {
        let (reader, name) = (Arc::clone(&state.reader), Arc::clone(&tenant.name));
        let unfinished = blocking(move || reader.unfinished_runs_of(&name))
            .await?
            .map_err(|e| Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        if usize::try_from(unfinished)
            .unwrap_or(usize::MAX)
            .saturating_add(inputs.len())
            > max
        {
            return Ok(full());
        }
    }
    // A strict journal makes a waited run's ending durable before it is
    // answered, and its acceptance with it: such a run need not wait for
    // a commit of its acceptance alone (see `Submission::waited`).
    let defer = wait.is_some() && state.host.settings().durability == Durability::Strict;
    let submissions: Vec<Submission> = inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| Submission {
            tenant: tenant.recorded(),
            key: key.as_deref().map(|k| batch_key(k, i, batch).into()),
            gate: tenant.gate.clone(),
            waited: defer,
            ..Submission::from((Arc::clone(&workflow), input))
        })
        .collect();
    let runs = match state.host.accept_all(submissions).await {
        Ok(runs) => runs,
        Err(SubmitError::ShuttingDown) => {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            ));
        }
        Err(SubmitError::Quota(e)) => {
            return Ok(throttle(
                &state,
                format!("the host is full: {e}"),
                Duration::from_secs(1),
            ));
        }
        Err(e) => return Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    };
    for run in &runs {
        let share = shares.split_one();
        // A run queued for any host holds no share of this one's: the host
        // that claims it admits it against its own slots.
        if let Accepted::Here(run) = run {
            let run = run.clone();
            tokio::spawn(async move {
                run.wait().await;
                drop(share);
            });
        }
    }
    // Answer only once the acceptance is in the journal: what was answered
    // is never lost, whatever happens next. A deferred acceptance is made
    // durable by the run's end, or by `answer` when the wait runs out.
    if !defer && let Err(problem) = recorded(&state).await {
        return Err(problem);
    }
    let views = runs.iter().map(|run| accepted_view(run.id(), &name)).collect();
    let handles = runs
        .iter()
        .map(|run| match run {
            Accepted::Here(run) => Some(run.clone()),
            Accepted::Queued(_) => None,
        })
        .collect();
    let mut response = answer(&state, views, handles, batch, wait, StatusCode::CREATED).await;
    if !batch && response.status() == StatusCode::CREATED {
        let location = format!("/v1/runs/{}", runs[0].id());
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
    }
    Ok(response)
}

fn throttle(state: &AppState, detail: impl Into<String>, after: Duration) -> Response {
    state.throttled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    too_many(detail, after)
}

/// The runs an earlier submission with `key` made, if there was one.
async fn replayed(
    state: &Arc<AppState>,
    tenant: &Arc<Tenant>,
    key: &str,
    n: usize,
    batch: bool,
) -> Result<Option<Vec<RunId>>, Problem> {
    let (reader, recorded, key) = (Arc::clone(&state.reader), tenant.recorded(), key.to_owned());
    let found = blocking(move || {
        let mut ids = Vec::new();
        for i in 0..n.max(1) {
            match reader.run_by_key(recorded.as_deref(), &batch_key(&key, i, batch))? {
                Some(id) => ids.push(id),
                None => break,
            }
        }
        Ok::<_, StoreError>(ids)
    })
    .await?
    .map_err(|e| store_problem(&e))?;
    Ok((!found.is_empty()).then_some(found))
}

fn accepted_view(id: RunId, workflow: &str) -> Value {
    json!({"id": id, "workflow": workflow, "status": "accepted", "url": format!("/v1/runs/{id}")})
}

/// The answer to a submission: the runs as accepted, or, with `wait`, as
/// they ended (202 when the wait ran out first). `handles` are the runs'
/// own where this request submitted them.
async fn answer(
    state: &Arc<AppState>,
    mut views: Vec<Value>,
    handles: Vec<Option<LiveRun>>,
    batch: bool,
    wait: Option<Duration>,
    status: StatusCode,
) -> Response {
    let mut status = status;
    if let Some(wait) = wait {
        let ids: Vec<RunId> = views.iter().filter_map(|v| v["id"].as_u64()).collect();
        let ended = tokio::time::timeout(wait, ended_all(state, &ids, handles)).await;
        match ended {
            Ok(Ok(ends)) => {
                for (view, end) in views.iter_mut().zip(ends) {
                    *view = match end {
                        Ended::Here(report) => ended_view(&report, view),
                        Ended::Before(history) => stored_view(&history, view),
                    };
                }
                status = StatusCode::OK;
            }
            Ok(Err(problem)) => return problem.into_response(),
            Err(_) => {
                if let Err(problem) = recorded(state).await {
                    return problem.into_response();
                }
                status = StatusCode::ACCEPTED;
            }
        }
    }
    let body = match batch {
        true => json!({"runs": views}),
        false => views.pop().unwrap_or(Value::Null),
    };
    (status, Json(body)).into_response()
}

/// Waits until everything appended to the journal is durable.
async fn recorded(state: &AppState) -> Result<(), Problem> {
    match state.host.scheduler().journal() {
        Some(journal) => journal.flush().await.map_err(|e| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the runs could not be recorded: {e}"),
            )
        }),
        None => Ok(()),
    }
}

/// How a waited-for run ended.
enum Ended {
    /// This host ran it: its report.
    Here(Arc<WorkflowReport>),
    /// It was not live here (it ended before, or another host runs it):
    /// its history once it ended, read from the journal.
    Before(Box<RunHistory>),
}

/// How often a run that is not live here is looked up in the journal
/// while a request waits for its end.
const ENDED_POLL: Duration = Duration::from_millis(50);

/// Waits for every run in `ids` to end, by its handle where the request
/// has one (a quick run may be over before it could be found by id),
/// else by its id among this host's live runs, else in the journal.
async fn ended_all(
    state: &Arc<AppState>,
    ids: &[RunId],
    handles: Vec<Option<LiveRun>>,
) -> Result<Vec<Ended>, Problem> {
    let mut ends = Vec::with_capacity(ids.len());
    for (&id, handle) in ids.iter().zip(handles) {
        if let Some(run) = handle.or_else(|| state.host.live(id)) {
            ends.push(Ended::Here(run.wait().await));
            continue;
        }
        loop {
            let reader = Arc::clone(&state.reader);
            let history = blocking(move || reader.history(id))
                .await?
                .map_err(|e| store_problem(&e))?;
            match history {
                Some(history) if !history.summary.status.is_incomplete() => {
                    ends.push(Ended::Before(Box::new(history)));
                    break;
                }
                _ => tokio::time::sleep(ENDED_POLL).await,
            }
        }
    }
    Ok(ends)
}

/// The view of a run that ended before it was waited for, from its history.
fn stored_view(history: &RunHistory, accepted: &Value) -> Value {
    let mut view = accepted.clone();
    view["status"] = json!(history.summary.status);
    view["output"] = history
        .output
        .as_deref()
        .and_then(|bytes| serde_json::from_slice(bytes).ok())
        .unwrap_or(Value::Null);
    view["error"] = json!(history.summary.error);
    view
}

fn ended_view(report: &WorkflowReport, accepted: &Value) -> Value {
    let mut view = accepted.clone();
    view["status"] = json!(report.status);
    view["output"] = report.output.clone().unwrap_or(Value::Null);
    view["error"] = json!(report.error);
    view["failed_kind"] = json!(report.failed_kind);
    view
}

/// `?status=&workflow=&since=&until=&cursor=&limit=` on a listing.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    workflow: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

/// An instant in a query: milliseconds since the Unix epoch, or a
/// duration (`90s`, `1h`, `7d`) meaning that long ago.
///
/// # Errors
///
/// A 400 problem naming `field` when it is neither.
pub fn instant(field: &str, value: Option<&str>) -> Result<Option<crate::store::Millis>, Problem> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Ok(ms) = value.parse::<i64>() {
        return Ok(Some(ms));
    }
    let ago = crate::limits::parse_duration(value).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("`{field}` is milliseconds since the epoch or a duration ago such as `1h`: {e}"),
        )
    })?;
    let ago = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
    Ok(Some(crate::store::now_millis().saturating_sub(ago)))
}

/// `GET /v1/runs`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Caller(tenant): Caller,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let bad = |detail: String| Problem::new(StatusCode::BAD_REQUEST, detail);
    let status = query
        .status
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<RunState>().map_err(|e| bad(format!("`status`: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let before = query
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<RunId>()
                .map_err(|_| bad(format!("`cursor`: `{c}` is not a cursor this server gave")))
        })
        .transpose()?;
    let limit = query
        .limit
        .as_deref()
        .map(|l| {
            l.parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| bad(format!("`limit` must be a number from 1 to {MAX_PAGE}")))
        })
        .transpose()?
        .unwrap_or(PAGE);
    let filter = RunFilter {
        status,
        workflow: query.workflow.filter(|w| !w.is_empty()),
        tenant: tenant.recorded().map(|t| t.to_string()),
        since: instant("since", query.since.as_deref())?,
        until: instant("until", query.until.as_deref())?,
        before,
        limit: Some(limit),
    };
    let reader = Arc::clone(&state.reader);
    let runs = blocking(move || reader.runs(&filter))
        .await?
        .map_err(|e| store_problem(&e))?;
    if accepts(&headers, "text/plain") {
        return Ok(plain(crate::report::text::runs_table(&runs)));
    }
    let next = (runs.len() == limit)
        .then(|| runs.last().map(|r| r.id.to_string()))
        .flatten();
    let runs: Vec<Value> = runs.iter().map(summary_view).collect();
    Ok(Json(json!({"runs": runs, "next_cursor": next})).into_response())
}

/// A run's summary as JSON.
pub fn summary_view(run: &RunSummary) -> Value {
    json!({
        "id": run.id,
        "workflow": run.workflow,
        "status": run.status,
        "accepted_at": run.accepted_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "error": run.error,
        "collected": run.collected,
    })
}

/// Run `id`'s history, if `tenant` may see it: another tenant's run is
/// not found, as if it did not exist.
pub async fn history_of(state: &Arc<AppState>, tenant: &Tenant, id: &str) -> Result<RunHistory, Problem> {
    let not_found = || Problem::new(StatusCode::NOT_FOUND, format!("no run {id}"));
    let id: RunId = id.parse().map_err(|_| not_found())?;
    let reader = Arc::clone(&state.reader);
    let history = blocking(move || reader.history(id))
        .await?
        .map_err(|e| store_problem(&e))?
        .filter(|h| tenant.owns(h.summary.tenant.as_deref()))
        .ok_or_else(not_found)?;
    Ok(history)
}

/// Bytes a run recorded, as JSON when they are, else as text.
fn payload(bytes: Option<&[u8]>) -> Value {
    match bytes {
        None => Value::Null,
        Some(b) => serde_json::from_slice(b)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned())),
    }
}

/// `?attempts=` on a run: `full` (the default), `table` or `none`; with
/// `table` or `none`, `payloads=full` keeps a large input or output whole.
#[derive(Debug, Deserialize)]
pub struct ShowQuery {
    attempts: Option<String>,
    payloads: Option<String>,
}

/// With `attempts=table`, inputs and outputs larger than this are cut to
/// [`PREVIEW`] bytes of text (and their size given): a 10,000-item run's
/// output is megabytes nobody reads at once.
const INLINE_PAYLOAD: usize = 64 * 1024;
const PREVIEW: usize = 4 * 1024;

/// `GET /v1/runs/{id}`.
pub async fn show(
    State(state): State<Arc<AppState>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
    Query(query): Query<ShowQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (table, none) = match query.attempts.as_deref() {
        None | Some("full") => (false, false),
        Some("table") => (true, false),
        Some("none") => (false, true),
        Some(other) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!("`attempts` is `full`, `table` or `none`, not `{other}`"),
            ));
        }
    };
    let history = history_of(&state, &tenant, &id).await?;
    if accepts(&headers, "text/plain") {
        return Ok(plain(crate::report::text::history_text(&history)));
    }
    let mut view = summary_view(&history.summary);
    let cut = (table || none) && query.payloads.as_deref() != Some("full");
    for (name, bytes) in [("input", &history.input), ("output", &history.output)] {
        match bytes.as_deref() {
            Some(b) if cut && b.len() > INLINE_PAYLOAD => {
                // Cut before a character's continuation bytes, not inside it.
                let mut end = PREVIEW;
                while end > 0 && b[end] & 0xC0 == 0x80 {
                    end -= 1;
                }
                view[name] = Value::String(String::from_utf8_lossy(&b[..end]).into_owned());
                view[format!("{name}_cut")] = json!(b.len());
            }
            other => view[name] = payload(other),
        }
    }
    view["attempts"] = match table || none {
        true => Value::Null,
        false => history.attempts.iter().map(attempt_view).collect(),
    };
    view["state"] = history
        .state
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect::<serde_json::Map<_, _>>()
        .into();
    view["live"] = json!(state.host.live(history.summary.id).map(|run| run.status()));
    if table {
        let mut body = view.to_string();
        body.pop();
        body.push_str(",\"attempt_table\":");
        body.push_str(&super::attempts::attempt_table(&history.attempts));
        body.push('}');
        return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
    }
    Ok(Json(view).into_response())
}

/// One attempt as JSON, its output as JSON.
pub fn attempt_view(attempt: &crate::store::AttemptRecord) -> Value {
    let mut view = serde_json::to_value(attempt).unwrap_or(Value::Null);
    view["output"] = payload(attempt.output.as_deref());
    view["log"] = payload(attempt.log.as_deref().map(str::as_bytes));
    view
}

/// `POST /v1/runs/{id}/cancel`.
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let history = history_of(&state, &tenant, &id).await?;
    let summary = &history.summary;
    if !summary.status.is_incomplete() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!("run {} has already ended ({})", summary.id, summary.status),
        ));
    }
    if !state.host.cancel(summary.id) {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!("run {} is not running on this host", summary.id),
        ));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": summary.id, "cancelling": true})),
    )
        .into_response())
}

/// `?lanes=none` on a report: without its timeline's lanes (one per unit:
/// 10,000 for a 10,000-item fan-out), for a reader that draws its own.
#[derive(Debug, Deserialize)]
pub struct ReportQuery {
    lanes: Option<String>,
}

/// `GET /v1/runs/{id}/report`: the analysis as JSON, or with `Accept:
/// image/svg+xml` its timeline.
pub async fn report(
    State(state): State<Arc<AppState>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
    Query(query): Query<ReportQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let lanes = match query.lanes.as_deref() {
        None | Some("all") => true,
        Some("none") => false,
        Some(other) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!("`lanes` is `all` or `none`, not `{other}`"),
            ));
        }
    };
    let history = history_of(&state, &tenant, &id).await?;
    let reader = Arc::clone(&state.reader);
    let digest = history.summary.workflow_digest.clone();
    let definition = blocking(move || reader.definition(&digest))
        .await?
        .map_err(|e| store_problem(&e))?;
    let mut analysis = crate::report::RunAnalysis::new(&history, definition.as_ref());
    if accepts(&headers, "image/svg+xml") {
        let svg = crate::report::svg::render(&analysis);
        return Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response());
    }
    if accepts(&headers, "text/plain") {
        return Ok(plain(analysis.text()));
    }
    if !lanes {
        analysis.lanes = Vec::new();
    }
    Ok(Json(analysis).into_response())
}

/// `GET /v1/hosts`: the hosts writing to the journal (any tenant may see
/// them: they are the service's, not a tenant's).
pub async fn hosts(
    State(state): State<Arc<AppState>>,
    Caller(_): Caller,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let reader = Arc::clone(&state.reader);
    let hosts = blocking(move || reader.hosts())
        .await?
        .map_err(|e| store_problem(&e))?;
    if accepts(&headers, "text/plain") {
        return Ok(plain(crate::report::text::hosts_table(&hosts)));
    }
    Ok(Json(json!({"hosts": hosts})).into_response())
}
