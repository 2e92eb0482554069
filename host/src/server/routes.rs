//! The routes, and the handlers of the open ones (health, metrics).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

use super::auth::{Unauthorized, bearer};
use super::problem::{Problem, panic_response, problems};
use super::state::AppState;
use super::{attempts, dashboard, events, overview, runs, uploads};

/// The content type of the classic Prometheus text format.
const METRICS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of the OpenMetrics text format.
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every route: `(method, path)`, as the OpenAPI document must list them.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("PUT", "/v1/components"),
    ("GET", "/v1/workflows"),
    ("PUT", "/v1/workflows/{name}"),
    ("GET", "/v1/workflows/{name}"),
    ("POST", "/v1/workflows/{name}/runs"),
    ("GET", "/v1/runs"),
    ("GET", "/v1/runs/{id}"),
    ("POST", "/v1/runs/{id}/cancel"),
    ("GET", "/v1/runs/{id}/events"),
    ("GET", "/v1/runs/{id}/report"),
    ("GET", "/v1/runs/{id}/attempts"),
    ("GET", "/v1/runs/{id}/log"),
    ("GET", "/v1/hosts"),
    ("GET", "/v1/overview"),
    ("GET", "/v1/workflows/{name}/report"),
];

/// The dashboard's routes: pages and assets for browsers, not API (so
/// not in the OpenAPI document).
pub const UI_ROUTES: &[(&str, &str)] = &[
    ("GET", "/ui"),
    ("GET", "/ui/"),
    ("GET", "/ui/runs"),
    ("GET", "/ui/runs/{id}"),
    ("GET", "/ui/workflows"),
    ("GET", "/ui/workflows/{name}"),
    ("GET", "/ui/host"),
    ("GET", "/ui/login"),
    ("POST", "/ui/login"),
    ("POST", "/ui/logout"),
    ("GET", "/ui/session"),
    ("GET", "/ui/assets/{file}"),
];

/// Every route, with problem errors, the body limit, the body timeout and
/// panics caught.
pub fn router(state: Arc<AppState>) -> Router {
    let settings = &state.settings;
    let max_body = usize::try_from(settings.max_body.as_u64()).unwrap_or(usize::MAX);
    let open = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            metrics_token,
        ));
    let api = Router::new()
        .route("/v1/components", put(uploads::put_component))
        .route("/v1/workflows", get(uploads::list_workflows))
        .route(
            "/v1/workflows/{name}",
            put(uploads::put_workflow).get(uploads::get_workflow),
        )
        .route("/v1/workflows/{name}/runs", post(runs::submit))
        .route("/v1/runs", get(runs::list))
        .route("/v1/runs/{id}", get(runs::show))
        .route("/v1/runs/{id}/cancel", post(runs::cancel))
        .route("/v1/runs/{id}/events", get(events::events))
        .route("/v1/runs/{id}/report", get(runs::report))
        .route("/v1/runs/{id}/attempts", get(attempts::attempts))
        .route("/v1/runs/{id}/log", get(attempts::log))
        .route("/v1/hosts", get(runs::hosts))
        .route("/v1/overview", get(overview::overview))
        .route("/v1/workflows/{name}/report", get(overview::workflow_report));
    let ui = Router::new()
        .route("/ui", get(dashboard::root))
        .route("/ui/", get(dashboard::page))
        .route("/ui/runs", get(dashboard::page))
        .route("/ui/runs/{id}", get(dashboard::page))
        .route("/ui/workflows", get(dashboard::page))
        .route("/ui/workflows/{name}", get(dashboard::page))
        .route("/ui/host", get(dashboard::page))
        .route("/ui/login", get(dashboard::login_page).post(dashboard::login))
        .route("/ui/logout", post(dashboard::logout))
        .route("/ui/session", get(dashboard::whoami))
        .route("/ui/assets/{file}", get(dashboard::asset));
    let routes = open
        .merge(api)
        .merge(ui)
        .route("/openapi.json", get(super::openapi::document))
        .fallback(unknown)
        .with_state(Arc::clone(&state))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(RequestBodyTimeoutLayer::new(settings.request_timeout));
    protect(routes, Arc::clone(&state.panics))
}

/// Every error answer becomes a problem, and a panic a 500 counted in `panics`.
fn protect(routes: Router, panics: Arc<AtomicU64>) -> Router {
    routes
        .layer(axum::middleware::map_response(problems))
        .layer(CatchPanicLayer::custom(move |panic| {
            panics.fetch_add(1, Ordering::Relaxed);
            panic_response(panic)
        }))
}

/// Health and metrics are open unless `metrics_token` is set.
async fn metrics_token(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(digest) = &state.settings.metrics_token
        && !bearer(request.headers()).is_some_and(|token| digest.matches(token))
    {
        return Unauthorized("this endpoint needs the metrics bearer token").into_response();
    }
    next.run(request).await
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Ready while it accepts work: the server listens only after recovery.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.host.is_stopping() {
        return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    axum::Json(serde_json::json!({"status": "ready"})).into_response()
}

/// The classic text format unless `Accept` asks for OpenMetrics.
async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let mut text = state.host.metrics_openmetrics();
    let body = text.strip_suffix("# EOF\n").map(str::len).unwrap_or(text.len());
    text.truncate(body);
    for (name, help, value) in [
        (
            "stepbox_http_handler_panics",
            "Requests whose handler panicked, answered 500.",
            state.panics.load(Ordering::Relaxed),
        ),
        (
            "stepbox_http_throttled",
            "Submissions refused with 429 (a tenant's rate or quota, or the host full).",
            state.throttled.load(Ordering::Relaxed),
        ),
    ] {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name}_total {value}\n"
        ));
    }
    if let Some(pool) = state.reader.pool() {
        for (name, help, value) in [
            (
                "stepbox_db_pool_connections",
                "Database connections the readers' pool holds open.",
                pool.connections,
            ),
            ("stepbox_db_pool_idle_connections", "Of them, idle.", pool.idle),
            (
                "stepbox_db_pool_max_connections",
                "The most the readers' pool opens.",
                pool.max,
            ),
        ] {
            text.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            ));
        }
    }
    text.push_str("# EOF\n");
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    match openmetrics {
        true => ([(header::CONTENT_TYPE, OPENMETRICS_TEXT)], text).into_response(),
        false => (
            [(header::CONTENT_TYPE, METRICS_TEXT)],
            crate::metrics::to_classic(&text),
        )
            .into_response(),
    }
}

async fn unknown(uri: Uri) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, format!("no route for {}", uri.path()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn answer(
        app: Router,
        method: &str,
        path: &str,
    ) -> (StatusCode, serde_json::Value, Option<String>) {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let kind = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap(), kind)
    }

    async fn boom() -> &'static str {
        panic!("a handler's bug")
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_counted_500_problem_and_the_server_goes_on() {
        let panics = Arc::new(AtomicU64::new(0));
        let app = protect(
            Router::new()
                .route("/boom", get(boom))
                .route("/fine", get(|| async { "ok" })),
            Arc::clone(&panics),
        );
        let (status, problem, kind) = answer(app.clone(), "GET", "/boom").await;
        assert_eq!(
            (status, problem["status"].as_u64()),
            (StatusCode::INTERNAL_SERVER_ERROR, Some(500))
        );
        assert_eq!(kind.as_deref(), Some(super::super::problem::PROBLEM_JSON));
        assert!(
            !problem["detail"].as_str().unwrap().contains("a handler's bug"),
            "internals leak: {problem}"
        );
        assert_eq!(panics.load(Ordering::Relaxed), 1);
        let (status, problem, _) = answer(app, "POST", "/fine").await;
        assert_eq!(
            (status, problem["status"].as_u64()),
            (StatusCode::METHOD_NOT_ALLOWED, Some(405))
        );
    }
}
