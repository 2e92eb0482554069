//! A run's attempts for a reader that wants many of them fast (the
//! dashboard's run page of a 10,000-item fan-out): one compact table with
//! repeated strings listed once, then single attempts in full and the
//! run's log on demand.
//!
//! - `GET /v1/runs/{id}?attempts=table`: the run as usual, its attempts as
//!   an [`attempt_table`] (no outputs or logs);
//! - `GET /v1/runs/{id}/attempts?step=&item=&attempt=`: the attempts that
//!   match, in full;
//! - `GET /v1/runs/{id}/log`: every attempt's log, as text, in the order
//!   the attempts started.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::problem::Problem;
use super::runs::{attempt_view, history_of};
use super::state::AppState;
use crate::OutcomeKind;
use crate::store::AttemptRecord;

/// The most attempts `/attempts` answers with in one call, and the
/// default.
const MAX_ATTEMPTS: usize = 1000;
/// The most log text `/log` answers with: a reader wanting more reads
/// each attempt's.
const MAX_LOG: usize = 1 << 20;

/// The table's columns, in the order of each row's values.
pub const COLUMNS: &[&str] = &[
    "step",
    "item",
    "attempt",
    "status",
    "outcome",
    "started_at",
    "started_us",
    "queue_wait_us",
    "wall_time_us",
    "fuel_consumed",
    "peak_memory",
    "peak_scratch",
    "fuel_limit",
    "memory_limit",
    "time_limit_ms",
    "scratch_limit",
    "message",
    "last",
    "component",
    "timeout_level",
];

/// Strings listed once, referred to by index.
#[derive(Default)]
struct Interned<'a> {
    list: Vec<&'a str>,
    index: HashMap<&'a str, usize>,
}

impl<'a> Interned<'a> {
    fn of(&mut self, s: &'a str) -> usize {
        *self.index.entry(s).or_insert_with(|| {
            self.list.push(s);
            self.list.len() - 1
        })
    }

    fn json(&self) -> String {
        serde_json::to_string(&self.list).unwrap_or_else(|_| "[]".to_owned())
    }
}

/// `attempts` as one table: `columns` names each row's values; strings
/// (step, status, outcome, message, component, timeout level) are indexes
/// into `strings`, `null` where there is none. Written by hand rather than
/// through `serde_json::Value`: for 10,000 attempts that is several times
/// faster, which is what lets a big run's page load in time.
pub fn attempt_table(attempts: &[AttemptRecord]) -> String {
    let mut strings = Interned::default();
    let mut rows = String::with_capacity(attempts.len() * 120);
    let opt = |out: &mut String, v: Option<usize>| match v {
        Some(v) => {
            let _ = write!(out, "{v},");
        }
        None => out.push_str("null,"),
    };
    for (i, a) in attempts.iter().enumerate() {
        if i > 0 {
            rows.push(',');
        }
        rows.push('[');
        let step = strings.of(&a.step);
        let _ = write!(rows, "{step},");
        match a.item {
            Some(item) => {
                let _ = write!(rows, "{item},");
            }
            None => rows.push_str("null,"),
        }
        let status = strings.of(a.status.as_str());
        let outcome = a.outcome.map(|o| strings.of(OutcomeKind::as_str(o)));
        let _ = write!(rows, "{},{status},", a.attempt);
        opt(&mut rows, outcome);
        let u = &a.usage;
        let l = &a.limits;
        let _ = write!(
            rows,
            "{},{},{},{},{},{},{},{},{},{},{},",
            a.started_at,
            a.started_us,
            u.queue_wait.as_micros(),
            u.wall_time.as_micros(),
            u.fuel_consumed,
            u.peak_memory,
            u.peak_scratch,
            l.fuel,
            l.memory,
            l.time.as_secs_f64() * 1e3,
            l.scratch,
        );
        let message = a.message.as_deref().map(|m| strings.of(m));
        opt(&mut rows, message);
        let _ = write!(rows, "{},", a.last);
        let component = a.component.as_deref().map(|c| strings.of(c));
        opt(&mut rows, component);
        let level = a.timeout_level.map(|t| strings.of(t.as_str()));
        match level {
            Some(v) => {
                let _ = write!(rows, "{v}");
            }
            None => rows.push_str("null"),
        }
        rows.push(']');
    }
    let columns = serde_json::to_string(COLUMNS).unwrap_or_else(|_| "[]".to_owned());
    format!(
        "{{\"columns\":{columns},\"strings\":{},\"rows\":[{rows}]}}",
        strings.json()
    )
}

/// `?step=&item=&attempt=&limit=` on `/attempts`.
#[derive(Debug, Deserialize)]
pub struct AttemptsQuery {
    step: Option<String>,
    item: Option<String>,
    attempt: Option<String>,
    limit: Option<String>,
}

fn number<T: std::str::FromStr>(field: &str, value: Option<&str>) -> Result<Option<T>, Problem> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse().map_err(|_| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!("`{field}` must be a whole number, not `{v}`"),
                )
            })
        })
        .transpose()
}

/// `GET /v1/runs/{id}/attempts`: the run's attempts that match, in full
/// (output and log included), in the order they started.
pub async fn attempts(
    State(state): State<Arc<AppState>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
    Query(query): Query<AttemptsQuery>,
) -> Result<Response, Problem> {
    let item: Option<u32> = number("item", query.item.as_deref())?;
    let attempt: Option<u32> = number("attempt", query.attempt.as_deref())?;
    let limit = number::<usize>("limit", query.limit.as_deref())?
        .unwrap_or(MAX_ATTEMPTS)
        .clamp(1, MAX_ATTEMPTS);
    let history = history_of(&state, &tenant, &id).await?;
    let found: Vec<Value> = history
        .attempts
        .iter()
        .filter(|a| query.step.as_deref().is_none_or(|s| s == a.step))
        .filter(|a| item.is_none_or(|i| a.item == Some(i)))
        .filter(|a| attempt.is_none_or(|n| a.attempt == n))
        .take(limit)
        .map(attempt_view)
        .collect();
    Ok(Json(json!({"attempts": found})).into_response())
}

/// `GET /v1/runs/{id}/log`: each attempt's log under a line naming it,
/// cut at 1 MiB.
pub async fn log(
    State(state): State<Arc<AppState>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let history = history_of(&state, &tenant, &id).await?;
    let mut text = String::new();
    let mut left_out = 0usize;
    for a in &history.attempts {
        let Some(log) = a.log.as_deref().filter(|l| !l.is_empty()) else {
            continue;
        };
        if text.len() + log.len() > MAX_LOG {
            left_out += 1;
            continue;
        }
        let unit = match a.item {
            Some(i) => format!("{} [{i}]", a.step),
            None => a.step.clone(),
        };
        let _ = writeln!(text, "── {unit} · attempt {}", a.attempt);
        text.push_str(log);
        if !log.ends_with('\n') {
            text.push('\n');
        }
    }
    if left_out > 0 {
        let _ = writeln!(
            text,
            "… the logs of {left_out} more attempts are left out: read them with GET /v1/runs/{id}/attempts"
        );
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AttemptLimits, AttemptStatus};

    #[test]
    fn the_table_lists_strings_once_and_parses_as_json() {
        let attempt = |item, message: Option<&str>| AttemptRecord {
            step: "work".into(),
            item: Some(item),
            attempt: 1,
            component: Some("c.wasm".into()),
            limits: AttemptLimits {
                fuel: 10,
                memory: 20,
                time: std::time::Duration::from_millis(1500),
                scratch: 0,
            },
            status: AttemptStatus::Failed,
            last: true,
            outcome: Some(OutcomeKind::Trap),
            message: message.map(str::to_owned),
            timeout_level: None,
            started_at: 5,
            started_us: 5000,
            finished_at: Some(6),
            usage: Default::default(),
            output: Some(b"big".to_vec()),
            log: Some("a \"log\"".into()),
        };
        let text = attempt_table(&[attempt(0, Some("boom \"x\"")), attempt(1, None)]);
        let table: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(table["columns"].as_array().unwrap().len(), COLUMNS.len());
        let rows = table["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.as_array().unwrap().len() == COLUMNS.len()));
        let strings = table["strings"].as_array().unwrap();
        let at = |row: &Value, col: &str| row[COLUMNS.iter().position(|c| *c == col).unwrap()].clone();
        assert_eq!(strings[at(&rows[0], "step").as_u64().unwrap() as usize], "work");
        assert_eq!(
            strings[at(&rows[0], "message").as_u64().unwrap() as usize],
            "boom \"x\""
        );
        assert_eq!(at(&rows[1], "message"), Value::Null);
        assert_eq!(at(&rows[1], "item"), 1);
        assert_eq!(at(&rows[0], "time_limit_ms"), 1500.0);
        assert_eq!(
            strings.len(),
            5,
            "work, failed, trap, the message, c.wasm: {strings:?}"
        );
        assert!(!text.contains("big"), "no outputs in the table");
    }
}
