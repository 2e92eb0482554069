//! `GET /v1/runs/{id}/events`: a run's journal as Server-Sent Events.
//!
//! Read from the journal, not from the live run, so that every client
//! sees the same thing whenever it comes: a late one gets the history so
//! far, then what happens next as it is recorded, then the end. Events:
//!
//! - `status` (`{"id", "status"}`) first, and whenever the run's status changes;
//! - `attempt` (one attempt, as `GET /v1/runs/{id}` lists it) for every
//!   attempt that started or ended;
//! - `end` (the run's summary) last; then the stream closes.
//!
//! With `?history=table`, the attempts recorded when the client connects
//! come as one `table` event instead (the compact table of
//! `GET /v1/runs/{id}?attempts=table`), and only what changes after as
//! `attempt` events: a browser following a 10,000-item run would
//! otherwise dispatch 10,000 events at once.
//!
//! Each event's id counts up from 1, so a client can tell it missed none.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::problem::Problem;
use super::runs::{attempt_view, blocking, history_of, store_problem};
use super::state::AppState;
use crate::store::{AttemptStatus, RunHistory, RunId, RunState};

/// How often the journal is read for news while a run is live: what a
/// client waits at most, beyond the journal's own commit delay.
const POLL: Duration = Duration::from_millis(100);

/// `?history=` on the events: `events` (the default) or `table`.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    history: Option<String>,
}

/// `GET /v1/runs/{id}/events`.
pub async fn events(
    State(state): State<Arc<AppState>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
) -> Result<Response, Problem> {
    let table = match query.history.as_deref() {
        None | Some("events") => false,
        Some("table") => true,
        Some(other) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!("`history` is `events` or `table`, not `{other}`"),
            ));
        }
    };
    let history = history_of(&state, &tenant, &id).await?;
    let stream = follow(state, history, table);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

/// What a follower has told its client so far.
struct Follower {
    state: Arc<AppState>,
    run: RunId,
    /// Each attempt's last status sent, by (step, item, attempt).
    sent: HashMap<(String, Option<u32>, u32), AttemptStatus>,
    status: Option<RunState>,
    next_id: u64,
    /// The next history to tell, once read.
    pending: Option<RunHistory>,
    /// Whether the attempts so far go as one `table` event.
    table: bool,
    done: bool,
}

fn follow(
    state: Arc<AppState>,
    first: RunHistory,
    table: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let follower = Follower {
        run: first.summary.id,
        state,
        sent: HashMap::new(),
        status: None,
        next_id: 1,
        pending: Some(first),
        table,
        done: false,
    };
    stream::unfold(follower, |mut f| async move {
        if f.done {
            return None;
        }
        loop {
            let history = match f.pending.take() {
                Some(history) => history,
                None => {
                    tokio::time::sleep(POLL).await;
                    match f.read().await {
                        Ok(Some(history)) => history,
                        Ok(None) => {
                            f.done = true;
                            let gone = f.event("end", json!({"id": f.run, "error": "the run is gone"}));
                            return Some((stream::iter(vec![Ok(gone)]), f));
                        }
                        Err(problem) => {
                            f.done = true;
                            let failed = f.event("error", json!({"detail": problem.detail}));
                            return Some((stream::iter(vec![Ok(failed)]), f));
                        }
                    }
                }
            };
            let events = f.news(&history);
            if !events.is_empty() {
                return Some((stream::iter(events.into_iter().map(Ok).collect::<Vec<_>>()), f));
            }
        }
    })
    .flatten()
}

impl Follower {
    async fn read(&self) -> Result<Option<RunHistory>, Problem> {
        let (reader, run) = (Arc::clone(&self.state.reader), self.run);
        blocking(move || reader.history(run))
            .await?
            .map_err(|e| store_problem(&e))
    }

    fn event(&mut self, kind: &str, data: Value) -> Event {
        let event = Event::default()
            .event(kind)
            .id(self.next_id.to_string())
            .data(data.to_string());
        self.next_id += 1;
        event
    }

    /// What `history` tells that was not told yet.
    fn news(&mut self, history: &RunHistory) -> Vec<Event> {
        let mut events = Vec::new();
        let status = history.summary.status;
        if self.status != Some(status) {
            self.status = Some(status);
            events.push(self.event("status", json!({"id": self.run, "status": status})));
        }
        if self.table {
            self.table = false;
            for attempt in &history.attempts {
                let key = (attempt.step.clone(), attempt.item, attempt.attempt);
                self.sent.insert(key, attempt.status);
            }
            let table = super::attempts::attempt_table(&history.attempts);
            let event = Event::default()
                .event("table")
                .id(self.next_id.to_string())
                .data(table);
            self.next_id += 1;
            events.push(event);
        }
        for attempt in &history.attempts {
            let key = (attempt.step.clone(), attempt.item, attempt.attempt);
            if self.sent.get(&key) != Some(&attempt.status) {
                self.sent.insert(key, attempt.status);
                events.push(self.event("attempt", attempt_view(attempt)));
            }
        }
        if !status.is_incomplete() {
            let summary = &history.summary;
            let end = json!({
                "id": summary.id,
                "status": summary.status,
                "error": summary.error,
                "finished_at": summary.finished_at,
            });
            events.push(self.event("end", end));
            self.done = true;
        }
        events
    }
}
