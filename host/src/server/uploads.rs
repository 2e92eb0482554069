//! Components and workflows: uploading and reading them back.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::Caller;
use super::catalog::{CatalogError, Uploaded, valid_name};
use super::problem::Problem;
use super::runs::blocking;
use super::state::AppState;

fn catalog_problem(e: CatalogError) -> Problem {
    match e {
        CatalogError::NotComponent(message) => Problem::new(StatusCode::BAD_REQUEST, message),
        CatalogError::Invalid { message, location } => {
            let problem = Problem::new(StatusCode::BAD_REQUEST, message);
            match location {
                Some(at) => problem.at(at.line, at.column),
                None => problem,
            }
        }
        CatalogError::NoWorkflow(_) => Problem::new(StatusCode::NOT_FOUND, e.to_string()),
        CatalogError::Io(_) | CatalogError::Damaged(_) => {
            tracing::warn!("{e}");
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        CatalogError::Store(_) => {
            tracing::warn!("{e}");
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

/// `PUT /v1/components`: the body is the component's bytes.
pub async fn put_component(
    State(state): State<Arc<AppState>>,
    Caller(tenant): Caller,
    body: Bytes,
) -> Result<Response, Problem> {
    let (digest, new) = {
        let (state, tenant) = (Arc::clone(&state), Arc::clone(&tenant.name));
        blocking(move || {
            state
                .catalog
                .put_component(state.host.scheduler(), &tenant, &body)
        })
        .await?
    }
    .map_err(catalog_problem)?;
    let status = match new {
        true => StatusCode::CREATED,
        false => StatusCode::OK,
    };
    Ok((status, Json(json!({"digest": digest}))).into_response())
}

fn workflow_name(name: &str) -> Result<(), Problem> {
    match valid_name(name) {
        true => Ok(()),
        false => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!("`{name}` cannot name a workflow: use 1 to 128 letters, digits, `-`, `_` and `.`"),
        )),
    }
}

/// `PUT /v1/workflows/{name}`: YAML, or JSON by `Content-Type`.
pub async fn put_workflow(
    State(state): State<Arc<AppState>>,
    Caller(tenant): Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    workflow_name(&name)?;
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    let json = match media.as_str() {
        "application/json" => true,
        // The last is what curl sends with `--data-binary` unless told.
        ""
        | "application/yaml"
        | "application/x-yaml"
        | "text/yaml"
        | "text/x-yaml"
        | "text/plain"
        | "application/x-www-form-urlencoded" => false,
        other => {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("a workflow is YAML (application/yaml) or JSON (application/json), not {other}"),
            ));
        }
    };
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "the workflow is not UTF-8 text"))?;
    let uploaded = Uploaded { text, json };
    let (prepared, new) = {
        let (state, tenant, name) = (Arc::clone(&state), Arc::clone(&tenant.name), name.clone());
        blocking(move || {
            state
                .catalog
                .put_workflow(state.host.scheduler(), &tenant, &name, &uploaded)
        })
        .await?
    }
    .map_err(catalog_problem)?;
    let status = match new {
        true => StatusCode::CREATED,
        false => StatusCode::OK,
    };
    let steps = prepared.workflow().steps.len();
    Ok((status, Json(json!({"name": name, "steps": steps}))).into_response())
}

/// `GET /v1/workflows`.
pub async fn list_workflows(
    State(state): State<Arc<AppState>>,
    Caller(tenant): Caller,
) -> Result<Response, Problem> {
    let names = {
        let (state, tenant) = (Arc::clone(&state), Arc::clone(&tenant.name));
        blocking(move || state.catalog.workflow_names(&tenant)).await?
    }
    .map_err(catalog_problem)?;
    let workflows: Vec<_> = names
        .iter()
        .map(|n| json!({"name": n, "url": format!("/v1/workflows/{n}")}))
        .collect();
    Ok(Json(json!({"workflows": workflows})).into_response())
}

/// `GET /v1/workflows/{name}`: its steps and the text as uploaded.
pub async fn get_workflow(
    State(state): State<Arc<AppState>>,
    Caller(tenant): Caller,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    let prepared = {
        let (state, tenant, name) = (Arc::clone(&state), Arc::clone(&tenant.name), name.clone());
        blocking(move || state.catalog.workflow(state.host.scheduler(), &tenant, &name)).await?
    }
    .map_err(catalog_problem)?;
    let workflow = prepared.workflow();
    let steps: Vec<_> = workflow
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let component = step
                .component
                .file_stem()
                .and_then(|s| s.to_str())
                .map(|hex| format!("sha256:{hex}"));
            json!({
                "id": &*step.id,
                "component": component,
                "needs": workflow.needs(i).collect::<Vec<_>>(),
                "for_each": step.for_each.is_some(),
            })
        })
        .collect();
    Ok(Json(json!({
        "name": workflow.name,
        "description": workflow.description,
        "steps": steps,
        "source": workflow.text(),
    }))
    .into_response())
}
