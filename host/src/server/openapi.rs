//! `GET /openapi.json`: the API described as OpenAPI 3.1, built from the
//! route table (`routes::ROUTES`), so a route cannot be served and left out.

use serde_json::{Map, Value, json};

use super::routes::ROUTES;

/// What one operation takes and answers.
struct Operation {
    summary: &'static str,
    body: Option<(&'static str, Value)>,
    query: &'static [&'static str],
    answers: &'static [(&'static str, &'static str)],
    open: bool,
}

fn operation(method: &str, path: &str) -> Operation {
    let op = |summary, answers| Operation {
        summary,
        body: None,
        query: &[],
        answers,
        open: false,
    };
    match (method, path) {
        ("GET", "/healthz") => Operation {
            open: true,
            ..op("Liveness: the process serves", &[("200", "alive")])
        },
        ("GET", "/readyz") => Operation {
            open: true,
            ..op(
                "Readiness: recovered and accepting work",
                &[("200", "ready"), ("503", "shutting down")],
            )
        },
        ("GET", "/metrics") => Operation {
            open: true,
            ..op(
                "Prometheus metrics (classic text; OpenMetrics when Accept asks)",
                &[("200", "metrics")],
            )
        },
        ("GET", "/openapi.json") => Operation {
            open: true,
            ..op("This document", &[("200", "the OpenAPI document")])
        },
        ("PUT", "/v1/components") => Operation {
            body: Some(("application/wasm", json!({"type": "string", "format": "binary"}))),
            ..op(
                "Upload a step component; answers its digest",
                &[
                    ("201", "stored"),
                    ("200", "already stored"),
                    ("400", "not a step component"),
                    ("413", "too large"),
                ],
            )
        },
        ("GET", "/v1/workflows") => op("The tenant's workflows", &[("200", "the list")]),
        ("PUT", "/v1/workflows/{name}") => Operation {
            body: Some(("application/yaml", json!({"type": "string"}))),
            ..op(
                "Upload a workflow (YAML, or JSON by Content-Type); components by digest",
                &[
                    ("201", "created"),
                    ("200", "replaced"),
                    ("400", "invalid, with line and column"),
                ],
            )
        },
        ("GET", "/v1/workflows/{name}") => op(
            "A workflow: its steps and text",
            &[("200", "the workflow"), ("404", "no such workflow")],
        ),
        ("POST", "/v1/workflows/{name}/runs") => Operation {
            body: Some((
                "application/json",
                json!({"description": "the input, or {\"inputs\": [...]} for many runs"}),
            )),
            query: &["wait"],
            ..op(
                "Submit runs; Idempotency-Key returns the same runs for the same key",
                &[
                    ("201", "accepted (and recorded)"),
                    ("200", "ended within `wait`, or replayed by key"),
                    ("202", "accepted; still running when `wait` ran out"),
                    ("404", "no such workflow"),
                    ("429", "over a quota or rate; see Retry-After"),
                    ("503", "shutting down"),
                ],
            )
        },
        ("GET", "/v1/runs") => Operation {
            query: &["status", "workflow", "since", "until", "cursor", "limit"],
            ..op(
                "The tenant's runs, newest first, a page at a time",
                &[("200", "a page and the next cursor")],
            )
        },
        ("GET", "/v1/runs/{id}") => Operation {
            query: &["attempts"],
            ..op(
                "A run's history: attempts, outcomes, usage; `attempts=table` lists the attempts as one compact table, `none` leaves them out",
                &[("200", "the run"), ("404", "no such run for this tenant")],
            )
        },
        ("GET", "/v1/runs/{id}/attempts") => Operation {
            query: &["step", "item", "attempt", "limit"],
            ..op(
                "A run's attempts that match, in full (output and log)",
                &[("200", "the attempts"), ("404", "no such run")],
            )
        },
        ("GET", "/v1/runs/{id}/log") => op(
            "Every attempt's log as text, in the order they started (cut at 1 MiB)",
            &[("200", "text/plain"), ("404", "no such run")],
        ),
        ("POST", "/v1/runs/{id}/cancel") => op(
            "Cancel a run",
            &[
                ("202", "cancelling"),
                ("404", "no such run"),
                ("409", "already ended"),
            ],
        ),
        ("GET", "/v1/runs/{id}/events") => Operation {
            query: &["history"],
            ..op(
                "The run's journal as Server-Sent Events: history (`history=table`: as one table event), then live, then the end",
                &[("200", "text/event-stream")],
            )
        },
        ("GET", "/v1/runs/{id}/report") => Operation {
            query: &["lanes"],
            ..op(
                "The run's analysis (JSON; `lanes=none` leaves out the timeline's lanes), or its timeline with Accept: image/svg+xml",
                &[("200", "the report"), ("404", "no such run")],
            )
        },
        ("GET", "/v1/hosts") => op(
            "The hosts writing to the journal: heartbeats, leases, the runs each owns",
            &[("200", "the hosts")],
        ),
        ("GET", "/v1/overview") => Operation {
            query: &["workflow", "since", "until"],
            ..op(
                "The tenant's runs by status, and the host's throughput, queue, instances and breakers",
                &[("200", "the overview")],
            )
        },
        ("GET", "/v1/workflows/{name}/report") => Operation {
            query: &["last"],
            ..op(
                "A workflow over its last runs: per-component and per-step p50/p95/p99 and error rates",
                &[("200", "the report"), ("404", "no such workflow")],
            )
        },
        _ => op("", &[("200", "")]),
    }
}

/// The document.
pub fn build() -> Value {
    let mut paths = Map::new();
    for &(method, path) in ROUTES {
        let op = operation(method, path);
        let mut parameters: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        parameters.extend(op.query.iter().map(
            |name| json!({"name": name, "in": "query", "required": false, "schema": {"type": "string"}}),
        ));
        let responses: Map<String, Value> = op
            .answers
            .iter()
            .map(|(code, what)| (code.to_string(), json!({"description": what})))
            .collect();
        let mut operation = json!({
            "summary": op.summary,
            "parameters": parameters,
            "responses": responses,
        });
        if let Some((media, schema)) = op.body {
            operation["requestBody"] = json!({"required": true, "content": {media: {"schema": schema}}});
        }
        if op.open {
            operation["security"] = json!([]);
        }
        let entry = paths.entry(path.to_owned()).or_insert_with(|| json!({}));
        entry[method.to_ascii_lowercase()] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "stepbox", "version": env!("CARGO_PKG_VERSION")},
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "session": {
                "type": "apiKey", "in": "cookie", "name": "stepbox_session",
                "description": "the dashboard's session (sign in at /ui/login); state-changing requests also need its X-CSRF-Token",
            },
        }},
        "security": [{"bearer": []}, {"session": []}],
        "paths": paths,
    })
}

/// `GET /openapi.json`.
pub async fn document() -> axum::Json<Value> {
    axum::Json(build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described_with_its_answers() {
        let doc = build();
        for &(method, path) in ROUTES {
            let op = &doc["paths"][path][method.to_ascii_lowercase()];
            assert!(
                op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{method} {path}"
            );
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}"
            );
        }
    }
}
