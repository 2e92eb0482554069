//! `stepbox serve`: the HTTP API, driven over real sockets against real
//! server processes (so that signals and restarts are the real thing).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stepbox::config::TokenDigest;

/// A `stepbox serve` process on a loopback port of its own, with its own
/// journal and data directory under `dir`.
pub(crate) struct Served {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl Served {
    pub(crate) fn start(dir: &Path, config: &str) -> Served {
        Served::start_logging(dir, config, None)
    }

    /// As `start`, with RUST_LOG set to `log`.
    fn start_logging(dir: &Path, config: &str, log: Option<&str>) -> Served {
        let db = dir.join("stepbox.db");
        Served::start_on(dir, config, log, db.to_str().unwrap())
    }

    /// As `start_logging`, journaling in `db` (a file or a postgres:// URL).
    pub(crate) fn start_on(dir: &Path, config: &str, log: Option<&str>, db: &str) -> Served {
        std::fs::write(dir.join("stepbox.toml"), config).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_stepbox"));
        match log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        let mut child = command
            .arg("--config")
            .arg(dir.join("stepbox.toml"))
            .arg("--db")
            .arg(db)
            .arg("--cache-dir")
            .arg(super::cache_dir())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let addr = first
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| {
                let mut err = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("not a listening line: {first:?}; stderr: {err}")
            })
            .to_owned();
        Served {
            child,
            addr,
            dir: dir.to_owned(),
        }
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills it (SIGKILL) and waits for it to be gone.
    pub(crate) fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::mem::forget(self);
    }

    /// Its process id: a host's owner name in the journal starts with
    /// its host name and this.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit code.
    pub(crate) fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child.
        unsafe { libc_kill(pid, 15) };
        let code = self.child.wait().unwrap().code();
        std::mem::forget(self);
        code
    }

    /// The `host:port` it listens on.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    pub(crate) fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        request(&self.addr, method, path, headers, body)
    }

    pub(crate) fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        self.request("GET", path, &headers, b"")
    }

    pub(crate) fn send(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Answer {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        if path.starts_with("/v1/workflows/") && method == "PUT" {
            headers.push(("content-type", "application/yaml"));
        } else if method == "POST" {
            headers.push(("content-type", "application/json"));
        }
        self.request(method, path, &headers, body)
    }

    /// Uploads `guest` and returns its digest.
    pub(crate) fn upload(&self, guest: &str, token: Option<&str>) -> String {
        let bytes = std::fs::read(stepbox_tests::guest(guest)).unwrap();
        let answer = self.send("PUT", "/v1/components", token, &bytes);
        assert!(matches!(answer.status, 200 | 201), "{answer:?}");
        answer.json()["digest"].as_str().unwrap().to_owned()
    }

    /// Uploads the hostile guest as workflow `sleepy` (one step sleeping
    /// `ms`), submits a run and waits until its step runs; returns its id.
    fn running_sleeper(&self, ms: u64) -> u64 {
        let digest = self.upload("hostile", None);
        self.send(
            "PUT",
            "/v1/workflows/sleepy",
            None,
            sleepy(&digest, ms).as_bytes(),
        );
        let id = self.send("POST", "/v1/workflows/sleepy/runs", None, b"{}").json()["id"]
            .as_u64()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.get(&format!("/v1/runs/{id}"), None).json()["live"] != "running" {
            assert!(Instant::now() < deadline, "run {id} never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        id
    }

    /// Polls run `id` until it has ended; returns its history.
    pub(crate) fn until_ended(&self, id: u64, token: Option<&str>) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let run = self.get(&format!("/v1/runs/{id}"), token).json();
            if ["succeeded", "failed", "cancelled"].contains(&run["status"].as_str().unwrap_or("")) {
                return run;
            }
            assert!(Instant::now() < deadline, "run {id} never ended: {run}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

/// An HTTP answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a connection of its own (`Connection: close`),
/// read to its end, chunked bodies decoded.
pub(crate) fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|| panic!("{method} {path}: no answer from {addr}"))
}

/// As [`request`], or `None` when nothing answers (the connection is
/// refused, or closed before an HTTP head came back).
pub(crate) fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Answer> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("host: {addr}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    // A server may answer (413, say) before it read the whole body.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    raw.windows(4).any(|w| w == b"\r\n\r\n").then(|| parse(&raw))
}

fn parse(raw: &[u8]) -> Answer {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..line_end]).trim(), 16).unwrap_or(0);
        rest = &rest[line_end + 2..];
        if size == 0 || rest.len() < size {
            out.extend_from_slice(&rest[..size.min(rest.len())]);
            break;
        }
        out.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
    out
}

pub(crate) const QUICK: &str = "[journal]\nshutdown_grace = \"0s\"\n";

pub(crate) fn greet(digest: &str) -> String {
    format!("name: greet\nsteps:\n  - id: hello\n    component: {digest}\n")
}

pub(crate) fn sleepy(digest: &str, ms: u64) -> String {
    format!(
        "name: sleepy\nsteps:\n  - id: nap\n    component: {digest}\n    input: {{mode: sleep, ms: {ms}}}\n    timeout: 60s\n"
    )
}

#[test]
fn an_uploaded_workflow_runs_over_http_and_its_history_and_report_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), QUICK);
    let health = served.get("/healthz", None);
    assert_eq!(
        (health.status, health.json()["status"].as_str()),
        (200, Some("ok"))
    );
    assert_eq!(served.get("/readyz", None).status, 200);

    let digest = served.upload("hello", None);
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "{digest}");
    let again = served.send(
        "PUT",
        "/v1/components",
        None,
        &std::fs::read(stepbox_tests::guest("hello")).unwrap(),
    );
    assert_eq!(again.status, 200, "the same bytes again are no new component");
    let put = served.send("PUT", "/v1/workflows/greet", None, greet(&digest).as_bytes());
    assert_eq!(put.status, 201, "{put:?}");
    let listed = served.get("/v1/workflows", None).json();
    assert_eq!(listed["workflows"][0]["name"], "greet");
    let shown = served.get("/v1/workflows/greet", None).json();
    assert_eq!(shown["steps"][0]["component"], digest.as_str());

    let ran = served.send(
        "POST",
        "/v1/workflows/greet/runs?wait=30s",
        None,
        br#"{"name":"http"}"#,
    );
    assert_eq!(ran.status, 200, "{ran:?}");
    let ran = ran.json();
    assert_eq!(
        (ran["status"].as_str(), &ran["output"]),
        (Some("succeeded"), &json!({"message": "Hello, http!"}))
    );
    let id = ran["id"].as_u64().unwrap();

    let accepted = served.send("POST", "/v1/workflows/greet/runs", None, br#"{"name":"later"}"#);
    assert_eq!(accepted.status, 201, "{accepted:?}");
    let later = accepted.json()["id"].as_u64().unwrap();
    assert_eq!(
        accepted.header("location"),
        Some(format!("/v1/runs/{later}").as_str())
    );
    let history = served.until_ended(later, None);
    assert_eq!(history["input"], json!({"name": "later"}));
    assert_eq!(history["output"], json!({"message": "Hello, later!"}));
    let attempt = &history["attempts"][0];
    assert_eq!(
        (attempt["step"].as_str(), attempt["outcome"].as_str()),
        (Some("hello"), Some("completed"))
    );
    assert!(
        attempt["usage"]["fuel_consumed"].as_u64().unwrap() > 0,
        "{attempt}"
    );

    let many = served.send(
        "POST",
        "/v1/workflows/greet/runs",
        None,
        br#"{"inputs":[{"name":"a"},{"name":"b"},{"name":"c"}]}"#,
    );
    assert_eq!(many.status, 201, "{many:?}");
    let ids: Vec<u64> = many.json()["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    for &run in &ids {
        served.until_ended(run, None);
    }

    let page = served.get("/v1/runs?limit=2", None).json();
    let first: Vec<u64> = page["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(first, [ids[2], ids[1]], "newest first");
    let cursor = page["next_cursor"].as_str().unwrap();
    let next = served
        .get(&format!("/v1/runs?limit=10&cursor={cursor}"), None)
        .json();
    let rest: Vec<u64> = next["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(rest, [ids[0], later, id]);
    assert!(next["next_cursor"].is_null());
    let failed = served.get("/v1/runs?status=failed", None).json();
    assert_eq!(failed["runs"].as_array().unwrap().len(), 0);

    let report = served.get(&format!("/v1/runs/{id}/report"), None).json();
    assert_eq!(report["run"].as_u64(), Some(id));
    let svg = served.request(
        "GET",
        &format!("/v1/runs/{id}/report"),
        &[("accept", "image/svg+xml")],
        b"",
    );
    assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    assert!(svg.text().starts_with("<svg"), "{}", svg.text());

    let events = served.get(&format!("/v1/runs/{id}/events"), None);
    let text = events.text();
    let kinds: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(kinds, ["status", "attempt", "end"], "{text}");

    let missing = served.get("/v1/runs/999999", None);
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("content-type"), Some("application/problem+json"));
    let nowhere = served.get("/nowhere", None);
    assert_eq!(
        (nowhere.status, nowhere.json()["status"].as_u64()),
        (404, Some(404))
    );
    let no_workflow = served.send("POST", "/v1/workflows/nope/runs", None, b"{}");
    assert_eq!(no_workflow.status, 404, "{no_workflow:?}");
    let not_json = served.send("POST", "/v1/workflows/greet/runs", None, b"{\"name\":\n  oops}");
    assert_eq!(not_json.status, 400);
    assert_eq!(not_json.json()["line"], 2, "{not_json:?}");
}

#[test]
fn the_openapi_document_lists_every_route_the_server_answers() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), QUICK);
    let doc = served.get("/openapi.json", None).json();
    assert_eq!(doc["openapi"], "3.1.0");
    for &(method, path) in stepbox::server::ROUTES {
        assert!(
            doc["paths"][path][method.to_ascii_lowercase()].is_object(),
            "{method} {path} is not documented"
        );
        let concrete = path.replace("{name}", "x").replace("{id}", "1");
        let answer = served.request(method, &concrete, &[], b"");
        let routed = !(answer.status == 404 && answer.text().contains("no route"));
        assert!(
            routed && answer.status != 405,
            "{method} {path} is documented but not served: {answer:?}"
        );
    }
}

/// Found by the `http_request` fuzz target: a path quoting control
/// characters back gave a detail of two lines.
#[test]
fn a_problem_quoting_a_clients_control_characters_stays_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), QUICK);
    for path in [
        "/v1/runs/%00wait=5%0Ds",
        "/v1/runs/%0D%0A7/report",
        "/v1/workflows/a%0Ab",
    ] {
        let answer = served.get(path, None);
        let problem = answer.json();
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            answer.status == 404 && !detail.contains(['\n', '\r', '\0']),
            "{path}: {answer:?}"
        );
    }
}

#[test]
fn bad_uploads_are_problems_that_say_what_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), QUICK);
    let not_wasm = served.send("PUT", "/v1/components", None, b"not wasm at all");
    assert_eq!(not_wasm.status, 400);
    assert!(
        not_wasm.json()["detail"]
            .as_str()
            .unwrap()
            .contains("not a WebAssembly file"),
        "{not_wasm:?}"
    );
    let not_step = served.send(
        "PUT",
        "/v1/components",
        None,
        &std::fs::read(stepbox_tests::guest("not-a-step")).unwrap(),
    );
    assert_eq!(not_step.status, 400, "{not_step:?}");

    let typo = served.send(
        "PUT",
        "/v1/workflows/greet",
        None,
        b"name: greet\nsteps:\n  - id: a\n    componnet: x\n",
    );
    assert_eq!(typo.status, 400);
    let problem = typo.json();
    assert_eq!(
        (problem["line"].as_u64(), problem["column"].as_u64()),
        (Some(4), Some(5)),
        "{problem}"
    );
    let unknown = "sha256:".to_owned() + &"ab".repeat(32);
    let missing = served.send("PUT", "/v1/workflows/greet", None, greet(&unknown).as_bytes());
    assert_eq!(missing.status, 400);
    let problem = missing.json();
    assert!(
        problem["detail"].as_str().unwrap().contains("was not uploaded"),
        "{problem}"
    );
    assert_eq!(problem["line"].as_u64(), Some(4), "{problem}");
    let path = served.send(
        "PUT",
        "/v1/workflows/greet",
        None,
        greet("../../etc/passwd").as_bytes(),
    );
    assert_eq!(path.status, 400, "a path is not a digest: {path:?}");
    let digest = served.upload("hello", None);
    let renamed = served.send("PUT", "/v1/workflows/other", None, greet(&digest).as_bytes());
    assert_eq!(renamed.status, 400);
    assert!(renamed.json()["detail"].as_str().unwrap().contains("must match"));
    let traversal = served.send("PUT", "/v1/workflows/..", None, greet(&digest).as_bytes());
    assert!(matches!(traversal.status, 400 | 404), "{traversal:?}");
    assert!(!dir.path().join("etc").exists());
}

#[test]
fn a_tenant_needs_its_token_and_never_sees_another_tenants_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{QUICK}[[tenants]]\nname = \"acme\"\ntokens = [\"{}\"]\n[[tenants]]\nname = \"zeta\"\ntokens = [\"{}\"]\n",
        TokenDigest::of("acme-token"),
        TokenDigest::of("zeta-token"),
    );
    let served = Served::start(dir.path(), &config);
    let (acme, zeta) = (Some("acme-token"), Some("zeta-token"));
    let anonymous = served.get("/v1/runs", None);
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    assert_eq!(served.get("/v1/runs", Some("wrong")).status, 401);
    assert_eq!(served.get("/healthz", None).status, 200, "health stays open");
    assert_eq!(served.get("/metrics", None).status, 200, "metrics stay open");

    let digest = served.upload("hello", acme);
    assert_eq!(
        served
            .send("PUT", "/v1/workflows/greet", acme, greet(&digest).as_bytes())
            .status,
        201
    );
    let theirs = served.send("PUT", "/v1/workflows/greet", zeta, greet(&digest).as_bytes());
    assert_eq!(theirs.status, 400, "acme's component is not zeta's: {theirs:?}");
    let id = served
        .send(
            "POST",
            "/v1/workflows/greet/runs?wait=30s",
            acme,
            br#"{"name":"a"}"#,
        )
        .json()["id"]
        .as_u64()
        .unwrap();
    assert_eq!(served.get(&format!("/v1/runs/{id}"), acme).status, 200);
    for path in [
        format!("/v1/runs/{id}"),
        format!("/v1/runs/{id}/report"),
        format!("/v1/runs/{id}/events"),
    ] {
        assert_eq!(served.get(&path, zeta).status, 404, "{path}");
    }
    assert_eq!(
        served
            .send("POST", &format!("/v1/runs/{id}/cancel"), zeta, b"")
            .status,
        404
    );
    assert_eq!(
        served.get("/v1/runs", zeta).json()["runs"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        served.get("/v1/runs", acme).json()["runs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        served.get("/v1/workflows", zeta).json()["workflows"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        served
            .send("POST", "/v1/workflows/greet/runs", zeta, b"{}")
            .status,
        404
    );

    assert_eq!(served.terminate(), Some(0));
}

#[test]
fn an_idempotency_key_answers_with_the_same_run_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), QUICK);
    let digest = served.upload("hello", None);
    served.send("PUT", "/v1/workflows/greet", None, greet(&digest).as_bytes());
    let submit = |served: &Served| {
        served.request(
            "POST",
            "/v1/workflows/greet/runs",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "order-17"),
            ],
            br#"{"name":"once"}"#,
        )
    };
    let first = submit(&served);
    assert_eq!(first.status, 201);
    let id = first.json()["id"].as_u64().unwrap();
    let second = submit(&served);
    assert_eq!((second.status, second.json()["id"].as_u64()), (200, Some(id)));
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    served.until_ended(id, None);
    assert_eq!(served.terminate(), Some(0));

    let served = Served::start(dir.path(), QUICK);
    let third = submit(&served);
    assert_eq!(
        (third.status, third.json()["id"].as_u64()),
        (200, Some(id)),
        "{third:?}"
    );
    assert_eq!(
        served.get("/v1/runs", None).json()["runs"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "never a second run"
    );
    let other = served.request(
        "POST",
        "/v1/workflows/greet/runs",
        &[
            ("content-type", "application/json"),
            ("idempotency-key", "order-18"),
        ],
        br#"{"name":"twice"}"#,
    );
    assert_eq!(other.status, 201);
    assert_ne!(other.json()["id"].as_u64(), Some(id));
    // Waiting on a replay of a run that ended before this server started
    // answers how it ended, read from the journal.
    let waited = served.request(
        "POST",
        "/v1/workflows/greet/runs?wait=10s",
        &[
            ("content-type", "application/json"),
            ("idempotency-key", "order-17"),
        ],
        br#"{"name":"once"}"#,
    );
    let view = waited.json();
    assert_eq!(
        (waited.status, view["id"].as_u64(), view["status"].as_str()),
        (200, Some(id), Some("succeeded")),
        "{view}"
    );
    assert_eq!(view["output"], json!({"message": "Hello, once!"}));
}

#[test]
fn a_waited_submission_answers_how_its_run_ended_however_quick_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), QUICK);
    let digest = served.upload("hello", None);
    served.send("PUT", "/v1/workflows/greet", None, greet(&digest).as_bytes());
    // A trivial run can end before the request looks it up (most often
    // under concurrent load): the answer must still be its end, never
    // "accepted" with a 200.
    let addr = served.addr.clone();
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let answer = request(
                        &addr,
                        "POST",
                        "/v1/workflows/greet/runs?wait=30s",
                        &[("content-type", "application/json")],
                        format!(r#"{{"name":"quick {c}.{i}"}}"#).as_bytes(),
                    );
                    let view = answer.json();
                    assert_eq!(
                        (answer.status, view["status"].as_str()),
                        (200, Some("succeeded")),
                        "submission {c}.{i}: {view}"
                    );
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
}

#[test]
fn a_tenant_over_its_quota_hears_429_and_every_accepted_run_ends() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{QUICK}[[tenants]]\nname = \"acme\"\ntokens = [\"{}\"]\nmax_running = 1\nmax_queued = 1\n",
        TokenDigest::of("t")
    );
    let served = Served::start(dir.path(), &config);
    let t = Some("t");
    let digest = served.upload("hostile", t);
    served.send("PUT", "/v1/workflows/sleepy", t, sleepy(&digest, 400).as_bytes());
    let answers: Vec<Answer> = (0..4)
        .map(|_| served.send("POST", "/v1/workflows/sleepy/runs", t, b"{}"))
        .collect();
    let accepted: Vec<u64> = answers
        .iter()
        .filter(|a| a.status == 201)
        .map(|a| a.json()["id"].as_u64().unwrap())
        .collect();
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert_eq!((accepted.len(), refused.len()), (2, 2), "{answers:?}");
    assert!(
        refused
            .iter()
            .all(|a| a.header("retry-after").is_some_and(|s| s.parse::<u64>().is_ok()))
    );
    // One runs at a time: the second starts after the first ended.
    let (a, b) = (
        served.until_ended(accepted[0], t),
        served.until_ended(accepted[1], t),
    );
    assert_eq!(
        (a["status"].as_str(), b["status"].as_str()),
        (Some("succeeded"), Some("succeeded"))
    );
    let (first_end, second_start) = (
        a["finished_at"].as_i64().unwrap(),
        b["started_at"].as_i64().unwrap(),
    );
    assert!(second_start >= first_end, "ran together: {a} {b}");
    assert_eq!(
        served.send("POST", "/v1/workflows/sleepy/runs", t, b"{}").status,
        201,
        "room again"
    );
    let metrics = served.get("/metrics", None).text();
    assert!(metrics.contains("stepbox_http_throttled_total 2"), "{metrics}");
}

#[test]
fn sigterm_refuses_nothing_accepted_and_the_next_start_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), QUICK);
    // Running, so that shutdown interrupts a step in flight.
    let id = served.running_sleeper(1500);
    assert_eq!(served.terminate(), Some(0));

    let served = Served::start(dir.path(), QUICK);
    let run = served.until_ended(id, None);
    assert_eq!(run["status"], "succeeded", "{run}");
    let attempts = run["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "interrupted once, then run again: {run}");
    assert_eq!(served.dir, dir.path());
}

#[test]
fn sigterm_under_load_loses_no_accepted_run() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), QUICK);
    let digest = served.upload("hello", None);
    served.send("PUT", "/v1/workflows/greet", None, greet(&digest).as_bytes());
    let addr = served.addr.clone();
    // Eight clients submit as fast as they are answered until the server
    // stops answering; each keeps the ids it was given a 201 for.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut accepted = Vec::new();
                let mut refused = 0;
                while let Some(answer) = try_request(
                    &addr,
                    "POST",
                    "/v1/workflows/greet/runs",
                    &[("content-type", "application/json")],
                    br#"{"name":"load"}"#,
                ) {
                    match answer.status {
                        201 => accepted.push(answer.json()["id"].as_u64().unwrap()),
                        503 => refused += 1,
                        other => panic!("a submission under load got {other}: {answer:?}"),
                    }
                }
                (accepted, refused)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(served.terminate(), Some(0));
    let mut accepted = Vec::new();
    for client in clients {
        accepted.extend(client.join().unwrap().0);
    }
    assert!(
        accepted.len() >= 8,
        "the load was real: {} accepted",
        accepted.len()
    );

    let served = Served::start(dir.path(), QUICK);
    for &id in &accepted {
        let run = served.until_ended(id, None);
        assert_eq!(run["status"], "succeeded", "accepted run {id}: {run}");
    }
    let listed = served.get("/v1/runs?limit=1000", None).json();
    let incomplete: Vec<&Value> = listed["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] != "succeeded")
        .collect();
    assert!(
        incomplete.is_empty() || {
            // Runs resumed by the restart may still be finishing.
            incomplete
                .iter()
                .all(|r| served.until_ended(r["id"].as_u64().unwrap(), None)["status"] == "succeeded")
        },
        "{incomplete:?}"
    );
}

#[test]
fn a_cancelled_run_ends_cancelled_and_a_body_over_the_limit_is_413() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &format!("{QUICK}[server]\nmax_body = \"2MiB\"\n"));
    let big = vec![b'x'; 3 << 20];
    let too_big = served.send("PUT", "/v1/components", None, &big);
    assert_eq!(too_big.status, 413, "{too_big:?}");
    let digest = served.upload("hostile", None);
    served.send(
        "PUT",
        "/v1/workflows/sleepy",
        None,
        sleepy(&digest, 20_000).as_bytes(),
    );
    let id = served
        .send("POST", "/v1/workflows/sleepy/runs", None, b"{}")
        .json()["id"]
        .as_u64()
        .unwrap();
    let cancel = served.send("POST", &format!("/v1/runs/{id}/cancel"), None, b"");
    assert_eq!(cancel.status, 202, "{cancel:?}");
    let run = served.until_ended(id, None);
    assert_eq!(run["status"], "cancelled");
    let again = served.send("POST", &format!("/v1/runs/{id}/cancel"), None, b"");
    assert_eq!(again.status, 409);
}

#[test]
fn metrics_over_http_pass_promtool_in_both_formats_and_can_need_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{QUICK}[server]\nmetrics_token = \"{}\"\n",
        TokenDigest::of("scrape")
    );
    let served = Served::start(dir.path(), &config);
    assert_eq!(served.get("/metrics", None).status, 401);
    assert_eq!(served.get("/healthz", None).status, 401);
    let digest = served.upload("hello", None);
    served.send("PUT", "/v1/workflows/greet", None, greet(&digest).as_bytes());
    served.send("POST", "/v1/workflows/greet/runs?wait=30s", None, b"{}");
    let classic = served.get("/metrics", Some("scrape"));
    assert_eq!(
        classic.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = classic.text();
    assert!(
        text.contains("stepbox_http_handler_panics_total 0") && !text.contains("# EOF"),
        "{text}"
    );
    super::observability::promtool_accepts(&text);
    let open = served.request(
        "GET",
        "/metrics",
        &[
            ("authorization", "Bearer scrape"),
            ("accept", "application/openmetrics-text; version=1.0.0"),
        ],
        b"",
    );
    assert!(
        open.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    // promtool reads only the classic format; OpenMetrics names counter
    // families without `_total` and ends with `# EOF`.
    let open = open.text();
    assert!(
        open.ends_with("# EOF\n") && open.contains("# TYPE stepbox_http_handler_panics counter\n"),
        "{open}"
    );
}

#[test]
fn while_shutting_down_submissions_hear_503_and_the_running_step_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), "[journal]\nshutdown_grace = \"20s\"\n");
    let id = served.running_sleeper(1500);
    // SAFETY: kill(2) on our own child.
    unsafe { libc_kill(served.child.id() as i32, 15) };
    let deadline = Instant::now() + Duration::from_secs(30);
    // A submission that raced the signal may still be accepted (201):
    // then it must be kept, not dropped.
    let mut raced = 0;
    let refused = loop {
        let answer = served.send("POST", "/v1/workflows/sleepy/runs", None, b"{}");
        if answer.status != 201 {
            break answer;
        }
        raced += 1;
        assert!(Instant::now() < deadline, "never stopped accepting");
    };
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(served.get("/readyz", None).status, 503);
    let mut served = served;
    assert_eq!(served.child.wait().unwrap().code(), Some(0));
    let reader = stepbox::store::SqliteReader::open(&dir.path().join("stepbox.db")).unwrap();
    use stepbox::store::StoreReader;
    let runs = reader.runs(&Default::default()).unwrap();
    assert_eq!(
        runs.len(),
        1 + raced,
        "every accepted run is in the journal: {runs:?}"
    );
    let first = runs.iter().find(|r| r.id == id).unwrap();
    assert_eq!(
        first.status,
        stepbox::store::RunState::Succeeded,
        "the running step finished: {first:?}"
    );
    assert!(
        runs.iter()
            .all(|r| r.status == stepbox::store::RunState::Succeeded || r.status.is_incomplete()),
        "a raced run is kept for the next start: {runs:?}"
    );
}

/// `stepbox ARGS` as a client of `served`, with `token` in STEPBOX_TOKEN.
fn client(served: &Served, token: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stepbox"));
    command
        .args(args)
        .env("STEPBOX_SERVER", format!("http://{}", served.addr))
        .env_remove("STEPBOX_TOKEN")
        .env_remove("RUST_LOG");
    if let Some(token) = token {
        command.env("STEPBOX_TOKEN", token);
    }
    command.output().unwrap()
}

/// `stepbox ARGS` on the server's journal, read locally.
fn local(served: &Served, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_stepbox"))
        .args(args)
        .arg("--db")
        .arg(served.dir.join("stepbox.db"))
        .env_remove("STEPBOX_SERVER")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn the_cli_with_a_server_runs_workflows_there_and_prints_what_it_prints_locally() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{QUICK}[[tenants]]\nname = \"acme\"\ntokens = [\"{}\"]\n",
        TokenDigest::of("cli-token")
    );
    let served = Served::start(dir.path(), &config);
    let file = dir.path().join("greet.yaml");
    let hello = stepbox_tests::guest("hello");
    std::fs::write(
        &file,
        format!(
            "name: greet\nsteps:\n  - id: hello\n    component: '{}'  # local\n",
            hello.display()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let denied = client(&served, None, &["runs"]);
    assert_eq!(denied.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("401"),
        "{denied:?}"
    );

    let token = Some("cli-token");
    let ran = client(&served, token, &["run", file, "--input", r#"{"name":"remote"}"#]);
    assert_eq!(ran.status.code(), Some(0), "{ran:?}");
    assert_eq!(
        String::from_utf8_lossy(&ran.stdout).trim(),
        r#"{"message":"Hello, remote!"}"#
    );
    let twice = client(
        &served,
        token,
        &["run", file, "--repeat", "2", "--input", r#"{"name":"again"}"#],
    );
    assert_eq!(
        String::from_utf8_lossy(&twice.stdout).lines().count(),
        2,
        "{twice:?}"
    );

    for args in [&["runs"][..], &["show", "1"], &["report", "1"]] {
        let remote = client(&served, token, args);
        assert_eq!(remote.status.code(), Some(0), "{args:?}: {remote:?}");
        let here = local(&served, args);
        assert_eq!(
            String::from_utf8_lossy(&remote.stdout),
            String::from_utf8_lossy(&here.stdout),
            "{args:?} prints alike"
        );
    }
    let metrics = client(&served, token, &["metrics"]);
    assert!(
        String::from_utf8_lossy(&metrics.stdout).contains("stepbox_step_runs_total"),
        "{metrics:?}"
    );
    let gone = client(&served, token, &["show", "99"]);
    assert_eq!(gone.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("no run 99"),
        "{gone:?}"
    );

    let digest = served.upload("hostile", token);
    served.send(
        "PUT",
        "/v1/workflows/sleepy",
        token,
        sleepy(&digest, 20_000).as_bytes(),
    );
    let id = served
        .send("POST", "/v1/workflows/sleepy/runs", token, b"{}")
        .json()["id"]
        .as_u64()
        .unwrap();
    let cancelled = client(&served, token, &["cancel", &id.to_string()]);
    assert_eq!(cancelled.status.code(), Some(0), "{cancelled:?}");
    assert_eq!(served.until_ended(id, token)["status"], "cancelled");
    let offline = local(&served, &["cancel", "1"]);
    assert_eq!(offline.status.code(), Some(2));
}

#[test]
fn a_client_too_slow_to_send_its_headers_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(
        dir.path(),
        &format!("{QUICK}[server]\nrequest_timeout = \"500ms\"\n"),
    );
    let mut stream = TcpStream::connect(&served.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "held open for {:?}",
        started.elapsed()
    );
    assert!(
        !String::from_utf8_lossy(&rest).contains("200 OK"),
        "answered an unfinished request"
    );
    assert_eq!(
        served.get("/healthz", None).status,
        200,
        "others are still served"
    );
}

#[test]
fn bearer_tokens_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "tok-4f1c9e0b-never-log-me";
    let config = format!(
        "{QUICK}[[tenants]]\nname = \"acme\"\ntokens = [\"{}\"]\n",
        TokenDigest::of(secret)
    );
    let served = Served::start_logging(dir.path(), &config, Some("trace"));
    let digest = served.upload("hello", Some(secret));
    served.send(
        "PUT",
        "/v1/workflows/greet",
        Some(secret),
        greet(&digest).as_bytes(),
    );
    served.send(
        "POST",
        "/v1/workflows/greet/runs?wait=30s",
        Some(secret),
        br#"{"name":"x"}"#,
    );
    served.get("/v1/runs", Some("tok-wrong-guess-also-secret"));
    let mut served = served;
    let mut stderr = served.child.stderr.take().unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc_kill(served.child.id() as i32, 15) };
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    assert!(!log.is_empty(), "trace logging wrote nothing");
    assert!(
        !log.contains(secret) && !log.contains("tok-wrong-guess"),
        "a token in the log"
    );
    let journal = std::fs::read(dir.path().join("stepbox.db")).unwrap();
    assert!(
        !journal.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "a token in the journal"
    );
}

#[test]
fn connections_beyond_the_cap_wait_until_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &format!("{QUICK}[server]\nmax_connections = 2\n"));
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(&served.addr).unwrap())
        .collect();
    // Let the server accept both (each now holds a slot, waiting for headers).
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(&served.addr).unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    third.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut first = [0u8; 1];
    let early = third.read(&mut first);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "served beyond the cap: {early:?}"
    );
    drop(held);
    third.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut answer = Vec::new();
    let _ = third.read_to_end(&mut answer);
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{answer:?}"
    );
}
