//! Outbound HTTP by grant, and secrets: a step reaches only what it is
//! granted (checked again on every redirect, and by address when a name
//! resolves to a private one), within its deadline and byte caps, and the
//! secrets it reads appear nowhere it leaves behind. Every server here is a
//! real one on loopback.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use serde_json::{Value, json};
use stepbox::outcome::{GuestErrorKind, LogSource};
use stepbox::sandbox::{HttpPolicy, Secrets};
use stepbox::{Outcome, RunOptions, RunReport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{TestSandbox, output};

/// A loopback HTTP/1.1 server that answers one request per connection:
/// `/json`, `/echo-auth` (the Authorization header back), `/redirect?URL`,
/// `/slow` (answers after 10 s), `/huge` (8 MiB, no length announced) and
/// `/huge-announced` (the same with a Content-Length).
struct Server {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl Server {
    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&requests);
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let auth = head
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("authorization: ")
                                .or_else(|| l.strip_prefix("Authorization: "))
                        })
                        .unwrap_or("")
                        .to_owned();
                    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                    let reply = |status: &str, extra: &str, body: &[u8]| {
                        let mut r = format!(
                            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(body);
                        r
                    };
                    let response = match path {
                        "/json" => reply("200 OK", "content-type: application/json\r\n", br#"{"ok":true}"#),
                        "/echo-auth" => reply("200 OK", "", auth.as_bytes()),
                        "/redirect" => reply("302 Found", &format!("location: {query}\r\n"), b""),
                        "/slow" => {
                            tokio::time::sleep(Duration::from_secs(10)).await;
                            reply("200 OK", "", b"late")
                        }
                        "/huge" => {
                            let _ = socket
                                .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
                                .await;
                            let chunk = vec![b'x'; 64 << 10];
                            for _ in 0..128 {
                                if socket.write_all(&chunk).await.is_err() {
                                    return;
                                }
                            }
                            return;
                        }
                        "/huge-announced" => reply("200 OK", "", &vec![b'x'; 8 << 20]),
                        _ => reply("404 Not Found", "", b"no"),
                    };
                    let _ = socket.write_all(&response).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Server { addr, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn grant(&self) -> String {
        self.addr.to_string()
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn policy(grants: &[String]) -> Arc<HttpPolicy> {
    Arc::new(HttpPolicy::allowing(grants.iter().map(|g| g.parse().unwrap())))
}

async fn fetch(input: Value, options: RunOptions) -> RunReport {
    let sb = TestSandbox::new();
    let step = sb.load("fetch");
    let input = serde_json::to_vec(&input).unwrap();
    sb.sandbox.run(&step, &input, options).await
}

fn host_records(report: &RunReport) -> Vec<&str> {
    report
        .log
        .records
        .iter()
        .filter(|r| r.source == LogSource::Host)
        .map(|r| r.message.as_str())
        .collect()
}

/// A guest error of kind `failed` whose message contains `needle`.
fn assert_failed_with(report: &RunReport, needle: &str) {
    match &report.outcome {
        Outcome::GuestError {
            error: GuestErrorKind::Failed,
            message,
        } => assert!(message.contains(needle), "`{needle}` not in: {message}"),
        other => panic!(
            "expected a failed guest error, got {other} (log: {:?})",
            report.log.records
        ),
    }
}

#[tokio::test]
async fn a_granted_call_succeeds() {
    let server = Server::start().await;
    let report = fetch(
        json!({"url": server.url("/json")}),
        RunOptions::default().http(policy(&[server.grant()])),
    )
    .await;
    assert_eq!(output(&report), json!({"status": 200, "body": {"ok": true}}));
    assert_eq!(server.requests(), 1);
    assert!(host_records(&report).is_empty(), "{:?}", report.log.records);
}

#[tokio::test]
async fn an_ungranted_call_is_denied_with_an_error_and_a_log_record_and_never_sent() {
    let server = Server::start().await;
    for options in [
        RunOptions::default(),
        RunOptions::default().http(policy(&["127.0.0.1:1".into()])),
    ] {
        let report = fetch(json!({"url": server.url("/json")}), options).await;
        assert_failed_with(&report, "request denied by the host");
        let records = host_records(&report);
        assert_eq!(records.len(), 1, "{records:?}");
        assert!(
            records[0].contains(&format!("request to {} denied: not granted", server.grant())),
            "{records:?}"
        );
    }
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn a_redirect_is_checked_against_the_grant_again() {
    let first = Server::start().await;
    let second = Server::start().await;
    let input = json!({"url": first.url(&format!("/redirect?{}", second.url("/json")))});

    let report = fetch(
        input.clone(),
        RunOptions::default().http(policy(&[first.grant()])),
    )
    .await;
    assert_failed_with(&report, "request denied by the host");
    assert!(
        host_records(&report)
            .iter()
            .any(|r| r.contains(&format!("request to {} denied: not granted", second.grant()))),
        "{:?}",
        report.log.records
    );
    assert_eq!((first.requests(), second.requests()), (1, 0));

    let report = fetch(
        input,
        RunOptions::default().http(policy(&[first.grant(), second.grant()])),
    )
    .await;
    assert_eq!(output(&report)["body"], json!({"ok": true}));
    assert_eq!(second.requests(), 1);
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_unless_its_address_is_granted() {
    let server = Server::start().await;
    let by_name = format!("localhost:{}", server.addr.port());
    let input = json!({"url": format!("http://{by_name}/json")});

    let report = fetch(
        input.clone(),
        RunOptions::default().http(policy(std::slice::from_ref(&by_name))),
    )
    .await;
    assert_failed_with(&report, "request denied by the host");
    let records = host_records(&report);
    assert!(
        records
            .iter()
            .any(|r| r.contains("which is not a public address")),
        "{records:?}"
    );
    assert_eq!(server.requests(), 0);

    let report = fetch(
        input,
        RunOptions::default().http(policy(&[by_name, server.grant()])),
    )
    .await;
    assert_eq!(output(&report)["status"], 200);
}

#[tokio::test]
async fn a_slow_server_runs_into_the_steps_timeout() {
    let server = Server::start().await;
    let started = Instant::now();
    let report = fetch(
        json!({"url": server.url("/slow")}),
        RunOptions::default()
            .http(policy(&[server.grant()]))
            .limits(super::timeout(Duration::from_millis(500))),
    )
    .await;
    assert!(
        matches!(report.outcome, Outcome::Timeout { .. }),
        "expected a timeout, got {}",
        report.outcome
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_huge_response_is_capped_whether_announced_or_streamed() {
    let server = Server::start().await;
    let capped = Arc::new(HttpPolicy {
        max_response_body: ByteSize::mib(1),
        ..(*policy(&[server.grant()])).clone()
    });
    for path in ["/huge", "/huge-announced"] {
        let report = fetch(
            json!({"url": server.url(path)}),
            RunOptions::default().http(Arc::clone(&capped)),
        )
        .await;
        assert_failed_with(&report, "body too large");
        assert!(
            host_records(&report)
                .iter()
                .any(|r| r.contains("over the 1048576-byte limit")),
            "{path}: {:?}",
            report.log.records
        );
        assert!(report.usage.peak_memory < 8 << 20, "{path}: {:?}", report.usage);
    }
}

#[tokio::test]
async fn a_request_body_over_the_cap_is_refused_before_it_is_sent() {
    let server = Server::start().await;
    let capped = Arc::new(HttpPolicy {
        max_request_body: ByteSize::kib(1),
        ..(*policy(&[server.grant()])).clone()
    });
    let report = fetch(
        json!({"url": server.url("/json"), "method": "POST", "body": "x".repeat(4096)}),
        RunOptions::default().http(capped),
    )
    .await;
    assert_failed_with(&report, "body too large");
    assert!(
        host_records(&report)
            .iter()
            .any(|r| r.contains("request body of 4098 bytes is over the 1024-byte limit")),
        "{:?}",
        report.log.records
    );
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn an_attempt_sends_at_most_its_quota_of_requests() {
    let server = Server::start().await;
    let limited = Arc::new(HttpPolicy {
        max_requests: 3,
        ..(*policy(&[server.grant()])).clone()
    });
    let report = fetch(
        json!({"url": server.url("/json"), "repeat": 5}),
        RunOptions::default().http(limited),
    )
    .await;
    assert_failed_with(&report, "request denied by the host");
    assert!(
        host_records(&report)
            .iter()
            .any(|r| r.contains("already sent 3 requests")),
        "{:?}",
        report.log.records
    );
    assert_eq!(server.requests(), 3);
}

#[tokio::test]
async fn a_secret_is_readable_by_its_step_and_redacted_from_all_it_leaves() {
    let server = Server::start().await;
    let secret = "tok-3f9a1c77e2";
    let report = fetch(
        json!({"url": server.url("/echo-auth"), "bearer": "API_TOKEN"}),
        RunOptions::default()
            .http(policy(&[server.grant()]))
            .secrets(Secrets::new([("API_TOKEN", secret)])),
    )
    .await;
    // The server saw the real token; the step's output echoes it, redacted.
    assert_eq!(output(&report)["body"], json!("Bearer [redacted]"));
    let everything = serde_json::to_string(&report).unwrap();
    assert!(!everything.contains(secret), "{everything}");

    let report = fetch(
        json!({"url": server.url("/echo-auth"), "bearer": "API_TOKEN"}),
        RunOptions::default().http(policy(&[server.grant()])),
    )
    .await;
    assert_failed_with(&report, "secret `API_TOKEN` is not granted");
}

/// Keeps what a step writes to its state and sends to its children.
#[derive(Default)]
struct Recorder {
    written: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl stepbox::sandbox::StepHost for Recorder {
    async fn call(&self, call: stepbox::sandbox::ChildCall) -> stepbox::sandbox::ChildResult {
        self.written
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&call.input).into_owned());
        stepbox::sandbox::ChildResult::error(GuestErrorKind::Failed, "no children here".into())
    }
    fn state_get(&self, _key: &str) -> Option<String> {
        None
    }
    fn state_set(&self, key: &str, value: String) -> Result<(), String> {
        self.written.lock().unwrap().push(format!("{key}={value}"));
        Ok(())
    }
    fn state_add(&self, _key: &str, _delta: i64) -> Result<i64, String> {
        Ok(0)
    }
}

#[tokio::test]
async fn a_secret_is_redacted_from_stdout_log_state_child_calls_and_errors() {
    let secret = "leak-me-0x5eed";
    let sb = TestSandbox::new();
    let step = sb.load("hostile");
    let recorder = Arc::new(Recorder::default());
    let input = serde_json::to_vec(&json!({"mode": "leak", "name": "TOKEN"})).unwrap();
    let report = sb
        .sandbox
        .run(
            &step,
            &input,
            RunOptions::default()
                .secrets(Secrets::new([("TOKEN", secret)]))
                .host(Arc::clone(&recorder) as Arc<dyn stepbox::sandbox::StepHost>),
        )
        .await;
    assert_failed_with(&report, "error: [redacted]");
    let log: Vec<&str> = report.log.records.iter().map(|r| r.message.as_str()).collect();
    assert!(
        log.contains(&"stdout: [redacted]") && log.contains(&"log: [redacted]"),
        "{log:?}"
    );
    let written = recorder.written.lock().unwrap().clone();
    assert_eq!(written, [r#"leak="[redacted]""#, r#"{"leak":"[redacted]"}"#]);
    assert!(!serde_json::to_string(&report).unwrap().contains(secret));
}

fn stepbox(dir: &std::path::Path, args: &[&str], secret: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stepbox"));
    command
        .current_dir(dir)
        .args(args)
        .arg("--cache-dir")
        .arg(super::cache_dir())
        .arg("--db")
        .arg(dir.join("stepbox.db"))
        .env_remove("RUST_LOG")
        .env_remove("API_TOKEN");
    if let Some(secret) = secret {
        command.env("API_TOKEN", secret);
    }
    command.output().unwrap()
}

/// Every file under `dir`, read whole (the journal and its write-ahead log).
fn bytes_under(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let path = e.ok()?.path();
            path.is_file()
                .then(|| (path.display().to_string(), std::fs::read(&path).unwrap()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_used_in_a_workflow_appears_nowhere_in_the_journal_output_or_logs() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = "s3cr3t-8d1e0b5a";
    let workflow = dir.path().join("call.yaml");
    std::fs::write(
        &workflow,
        format!(
            "name: call\nsteps:\n  - id: call\n    component: {fetch}\n    allow_http: [\"{grant}\"]\n    secrets: [API_TOKEN]\n    input: {{url: \"{url}\", bearer: API_TOKEN}}\n",
            fetch = stepbox_tests::guest("fetch").display(),
            grant = server.grant(),
            url = server.url("/echo-auth"),
        ),
    )
    .unwrap();
    let dir_path = dir.path().to_owned();
    let workflow_arg = workflow.display().to_string();
    let run = tokio::task::spawn_blocking(move || {
        let run = stepbox(&dir_path, &["run", &workflow_arg, "--json"], Some(secret));
        let show = stepbox(&dir_path, &["show", "1", "--json"], None);
        let report = stepbox(&dir_path, &["report", "1", "--json"], None);
        (run, show, report)
    })
    .await
    .unwrap();
    let (run, show, report) = run;
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(server.requests(), 1);
    let printed = String::from_utf8_lossy(&run.stdout);
    assert!(printed.contains("Bearer [redacted]"), "{printed}");
    for out in [&run, &show, &report] {
        for stream in [&out.stdout, &out.stderr] {
            assert!(!String::from_utf8_lossy(stream).contains(secret));
        }
    }
    for (file, bytes) in bytes_under(dir.path()) {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret is in {file}"
        );
    }
}

#[test]
fn a_workflow_naming_a_secret_the_host_lacks_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let workflow = dir.path().join("call.yaml");
    std::fs::write(
        &workflow,
        format!(
            "name: call\nsteps:\n  - id: call\n    component: {}\n    secrets: [API_TOKEN]\n",
            stepbox_tests::guest("fetch").display()
        ),
    )
    .unwrap();
    let out = stepbox(dir.path(), &["run", &workflow.display().to_string()], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("step `call` needs secret `API_TOKEN`"), "{err}");
}

#[test]
fn a_workflow_granting_beyond_the_hosts_ceiling_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("stepbox.toml"),
        "[http]\nallow = [\"127.0.0.1:9\"]\n",
    )
    .unwrap();
    let workflow = dir.path().join("call.yaml");
    let yaml = |grant: &str| {
        format!(
            "name: call\nsteps:\n  - id: call\n    component: {}\n    allow_http: [\"{grant}\"]\n    input: {{url: \"http://{grant}/\"}}\n",
            stepbox_tests::guest("fetch").display()
        )
    };
    std::fs::write(&workflow, yaml("169.254.169.254:80")).unwrap();
    let out = stepbox(dir.path(), &["run", &workflow.display().to_string()], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("step `call` grants `169.254.169.254:80`, which this host does not allow"),
        "{err}"
    );
    // Within the ceiling it runs (and fails only to connect: nothing listens on port 9).
    std::fs::write(&workflow, yaml("127.0.0.1:9")).unwrap();
    let out = stepbox(
        dir.path(),
        &["run", &workflow.display().to_string(), "--json"],
        None,
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(!printed.contains("does not allow"), "{printed}");
    assert!(printed.contains("request failed"), "{printed}");
}

#[test]
fn the_step_command_grants_http_and_secrets_by_flag() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(Server::start());
    let fetch = stepbox_tests::guest("fetch").display().to_string();
    let input = json!({"url": server.url("/echo-auth"), "bearer": "API_TOKEN"}).to_string();
    let out = stepbox(
        dir.path(),
        &[
            "step",
            &fetch,
            "--input",
            &input,
            "--allow-http",
            &server.grant(),
            "--secret",
            "API_TOKEN",
        ],
        Some("flag-secret-77"),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["body"], "Bearer [redacted]");

    let out = stepbox(
        dir.path(),
        &["step", &fetch, "--allow-http", "no-port.example"],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("HOST:PORT"), "{err}");
}
