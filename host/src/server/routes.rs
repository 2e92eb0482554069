//! The routes and their handlers.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;

use super::problem::{Problem, panic_response, problems};
use crate::host::Host;

/// The content type of the classic Prometheus text format.
const METRICS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every route, with problem errors and panics caught.
pub fn router(host: Arc<Host>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(unknown)
        .with_state(host)
        .layer(axum::middleware::map_response(problems))
        .layer(CatchPanicLayer::custom(panic_response))
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Ready while it accepts work: the server listens only after recovery.
async fn readyz(State(host): State<Arc<Host>>) -> Response {
    if host.is_stopping() {
        return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    axum::Json(serde_json::json!({"status": "ready"})).into_response()
}

async fn metrics(State(host): State<Arc<Host>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, METRICS_TEXT)], host.metrics_text())
}

async fn unknown(uri: Uri) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, format!("no route for {}", uri.path()))
}
