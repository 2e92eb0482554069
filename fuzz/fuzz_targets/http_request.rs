//! The HTTP API's request surface: any body, path parameter, query string
//! and header a client sends to any route gets an answer that is not a
//! server failure, and every error answer is an RFC 9457 problem with a
//! one-line detail.
//!
//! The requests go through the real router (`Server::router`) of a real
//! host in-process: a SQLite journal in a temporary directory, the `hello`
//! guest uploaded as workflow `greet` so that submissions run for real.
//! Input layout: byte 0 picks the route, byte 1 the headers; the rest up
//! to the first newline is the path parameter (or query, or idempotency
//! key), what follows it is the body.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use stepbox::config::HostConfig;
use stepbox::server::{Server, ServerOptions};
use stepbox::{Host, Sandbox};
use tower::ServiceExt;

struct World {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

/// The `hello` guest, as `scripts/fuzz` builds it.
fn hello() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/guest/hello.wasm")
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        // On tmpfs where there is one: each accepted submission waits for
        // its commit, and an fsync to a disk would make that the fuzzer's
        // pace.
        let dir = match std::path::Path::new("/dev/shm").is_dir() {
            true => tempfile::tempdir_in("/dev/shm").unwrap(),
            false => tempfile::tempdir().unwrap(),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let config = format!(
            "[journal]\ndb = \"{db}\"\ndurability = \"strict\"\nshutdown_grace = \"0s\"\n\
             [server]\nlisten = \"127.0.0.1:0\"\ndata = \"{data}\"\nmax_body = \"1MiB\"\nmax_wait = \"2ms\"\n",
            db = dir.path().join("stepbox.db").display(),
            data = dir.path().join("server").display(),
        );
        let config = HostConfig::from_toml(&config).unwrap();
        let options = ServerOptions {
            settings: config.server.clone(),
            tenants: config.tenants.clone(),
        };
        let router = runtime.block_on(async {
            let sandbox = Sandbox::builder()
                .scratch_dir(dir.path())
                .cache_dir(dir.path().join("cache"))
                .build()
                .unwrap();
            let host = Arc::new(Host::start(sandbox, config).await.unwrap());
            let server = Server::bind(host, options).await.unwrap();
            server.router()
        });
        let world = World {
            runtime,
            router,
            _dir: dir,
        };
        let bytes = std::fs::read(hello())
            .unwrap_or_else(|e| panic!("{}: {e} (scripts/fuzz builds it)", hello().display()));
        let uploaded = send(&world, Method::PUT, "/v1/components", &[], bytes);
        assert_eq!(uploaded.0, StatusCode::CREATED, "{}", uploaded.2);
        let digest = serde_json::from_str::<serde_json::Value>(&uploaded.2).unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_owned();
        let workflow = format!("name: greet\nsteps:\n  - id: hello\n    component: {digest}\n");
        let put = send(
            &world,
            Method::PUT,
            "/v1/workflows/greet",
            &[(header::CONTENT_TYPE.as_str(), "application/yaml")],
            workflow.into_bytes(),
        );
        assert!(put.0.is_success(), "{}", put.2);
        world
    })
}

/// Sends one request; returns its status, content type and body.
fn send(
    world: &World,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, String, String) {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Body::from(body)).unwrap();
    world.runtime.block_on(async {
        let response = world.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let kind = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), 64 << 20)
            .await
            .unwrap();
        (status, kind, String::from_utf8_lossy(&body).into_owned())
    })
}

/// `bytes` as one path segment or query, percent-encoded where a URI needs it.
fn encode(bytes: &[u8], query: bool) -> String {
    let mut out = String::new();
    for &b in bytes {
        let keep = b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (query && b"=&,:".contains(&b));
        match keep {
            true => out.push(b as char),
            false => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let world = world();
    let [route, flags, rest @ ..] = data else {
        return;
    };
    let (param, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], rest[at + 1..].to_vec()),
        None => (rest, Vec::new()),
    };
    let segment = encode(param, false);
    let content_type = match flags & 3 {
        0 => "application/json",
        1 => "application/yaml",
        2 => "text/plain",
        _ => "application/x-whatever",
    };
    let accept = match (flags >> 2) & 3 {
        0 => "application/json",
        1 => "image/svg+xml",
        2 => "text/plain",
        _ => "*/*",
    };
    let key = String::from_utf8_lossy(param).into_owned();
    let mut headers = vec![("content-type", content_type), ("accept", accept)];
    let (method, uri) = match route % 10 {
        0 => (Method::PUT, "/v1/components".to_owned()),
        1 => (Method::PUT, "/v1/workflows/fuzzed".to_owned()),
        2 => {
            if flags & 16 != 0 && header::HeaderValue::from_str(&key).is_ok() {
                headers.push(("idempotency-key", key.as_str()));
            }
            (Method::POST, "/v1/workflows/greet/runs".to_owned())
        }
        3 => (Method::GET, format!("/v1/runs?{}", encode(param, true))),
        4 => (Method::GET, format!("/v1/runs/{segment}")),
        5 => (Method::POST, format!("/v1/runs/{segment}/cancel")),
        6 => (Method::GET, format!("/v1/runs/{segment}/report")),
        7 => (Method::GET, format!("/v1/workflows/{segment}")),
        8 => (
            Method::POST,
            format!("/v1/workflows/greet/runs?{}", encode(param, true)),
        ),
        _ => {
            let methods = [
                Method::GET,
                Method::PUT,
                Method::POST,
                Method::DELETE,
                Method::PATCH,
            ];
            let path: String = param
                .iter()
                .map(|&b| {
                    if b == b'/' {
                        "/".to_owned()
                    } else {
                        encode(&[b], false)
                    }
                })
                .collect();
            (
                methods[usize::from(flags >> 5) % methods.len()].clone(),
                format!("/{path}"),
            )
        }
    };
    let (status, kind, text) = send(world, method, &uri, &headers, body);
    assert!(
        status != StatusCode::INTERNAL_SERVER_ERROR,
        "{uri}: the server failed: {text}"
    );
    if status.is_client_error() || status.is_server_error() {
        assert!(
            kind.starts_with("application/problem+json"),
            "{uri}: {status} is not a problem ({kind}): {text}"
        );
        let problem: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{uri}: a problem that is not JSON ({e}): {text}"));
        assert_eq!(problem["status"], status.as_u16(), "{uri}: {text}");
        if let Some(detail) = problem["detail"].as_str() {
            stepbox_fuzz::assert_one_line(detail);
        }
    } else if kind.starts_with("application/json") {
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap_or_else(|e| panic!("{uri}: an answer that is not JSON ({e}): {text}"));
    }
});
