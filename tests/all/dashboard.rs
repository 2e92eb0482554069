//! The dashboard at `/ui/`: its sessions and CSRF checks over real HTTP,
//! and its pages in a real headless Chromium (`tests/browser/`, driven by
//! playwright-core from npm; `scripts/setup` installs Debian's chromium).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use stepbox::config::TokenDigest;

use super::serve::{Answer, QUICK, Served, greet, sleepy};

fn tenants() -> String {
    format!(
        "{QUICK}[[tenants]]\nname = \"acme\"\ntokens = [\"{}\"]\n[[tenants]]\nname = \"zeta\"\ntokens = [\"{}\"]\n",
        TokenDigest::of("acme-token"),
        TokenDigest::of("zeta-token"),
    )
}

/// The session cookie an answer sets (`stepbox_session=VALUE`), and the
/// whole `Set-Cookie` line.
fn session_cookie(answer: &Answer) -> (String, String) {
    let line = answer
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no Set-Cookie: {answer:?}"))
        .to_owned();
    let pair = line.split(';').next().unwrap().trim().to_owned();
    (pair, line)
}

fn signed_in(served: &Served, token: &str) -> (String, String) {
    let answer = served.get(&format!("/ui/login?token={token}"), None);
    assert_eq!(answer.status, 303, "{answer:?}");
    assert_eq!(answer.header("location"), Some("/ui/"));
    let (cookie, _) = session_cookie(&answer);
    let session = served
        .request("GET", "/ui/session", &[("cookie", &cookie)], b"")
        .json();
    (cookie, session["csrf"].as_str().unwrap().to_owned())
}

#[test]
fn sign_in_takes_a_tenants_token_and_sets_an_http_only_strict_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &tenants());
    let refused = served.get("/ui/login?token=not-a-token", None);
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(refused.header("set-cookie").is_none());
    assert!(
        refused.json()["detail"]
            .as_str()
            .unwrap()
            .contains("not a tenant's token")
    );
    let unsigned = served.get("/ui/runs", None);
    assert_eq!(
        (unsigned.status, unsigned.header("location")),
        (303, Some("/ui/login"))
    );
    assert_eq!(served.get("/ui/login", None).status, 200, "the form");

    let answer = served.get("/ui/login?token=acme-token", None);
    let (cookie, line) = session_cookie(&answer);
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(line.contains(attribute), "{line}");
    }
    assert!(
        !line.contains("acme-token"),
        "the cookie is not the token: {line}"
    );
    assert_eq!(answer.header("referrer-policy"), Some("no-referrer"));
    let page = served.request("GET", "/ui/runs/7", &[("cookie", &cookie)], b"");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("/ui/assets/app.js"));
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );
    let session = served
        .request("GET", "/ui/session", &[("cookie", &cookie)], b"")
        .json();
    assert_eq!(session["tenant"], "acme");
    assert_eq!(session["csrf"].as_str().unwrap().len(), 64);

    // The form posts the token; from another site it is refused.
    let form = |origin: &str| {
        served.request(
            "POST",
            "/ui/login",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("origin", origin),
            ],
            b"token=zeta-token",
        )
    };
    let own = served.url();
    assert_eq!(form(&own).status, 303);
    assert_eq!(form("http://evil.example").status, 403);
    let bad = served.request(
        "POST",
        "/ui/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        b"token=nope",
    );
    assert_eq!(bad.status, 401);
    // Guessing is slowed down: refusals beyond a few a second are 429.
    let guesses: Vec<u16> = (0..20)
        .map(|i| served.get(&format!("/ui/login?token=guess{i}"), None).status)
        .collect();
    assert!(guesses.contains(&429), "{guesses:?}");
    assert!(guesses.iter().all(|s| matches!(s, 401 | 429)), "{guesses:?}");
    assert_eq!(
        served.get("/ui/login?token=acme-token", None).status,
        303,
        "a good token still signs in"
    );
    assert_eq!(served.get("/ui/assets/nope.js", None).status, 404);
    // Every route the dashboard lists is served.
    for &(method, route) in stepbox::server::UI_ROUTES {
        let path = route
            .replace("{id}", "1")
            .replace("{name}", "x")
            .replace("{file}", "app.js");
        let own = served.url();
        let headers = [("cookie", cookie.as_str()), ("origin", own.as_str())];
        let answer = served.request(method, &path, &headers, b"");
        let unrouted = answer.status == 404 || answer.status == 405;
        assert!(!unrouted, "{method} {path}: {answer:?}");
    }
    let css = served.get("/ui/assets/app.css", None);
    assert_eq!(css.status, 200);
    let tag = css.header("etag").unwrap().to_owned();
    let again = served.request("GET", "/ui/assets/app.css", &[("if-none-match", &tag)], b"");
    assert_eq!(again.status, 304);
}

#[test]
fn the_api_takes_the_session_cookie_but_a_state_change_needs_its_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &tenants());
    let digest = served.upload("hostile", Some("acme-token"));
    let put = served.send(
        "PUT",
        "/v1/workflows/sleepy",
        Some("acme-token"),
        sleepy(&digest, 60_000).as_bytes(),
    );
    assert_eq!(put.status, 201, "{put:?}");
    let (cookie, csrf) = signed_in(&served, "acme-token");
    let with = |method: &str, path: &str, extra: &[(&str, &str)]| {
        let mut headers = vec![("cookie", cookie.as_str()), ("content-type", "application/json")];
        headers.extend_from_slice(extra);
        served.request(method, path, &headers, b"{}")
    };
    assert_eq!(
        with("GET", "/v1/runs", &[]).status,
        200,
        "reads need no CSRF token"
    );
    let forged = with("POST", "/v1/workflows/sleepy/runs", &[]);
    assert_eq!(forged.status, 403, "{forged:?}");
    assert!(forged.json()["detail"].as_str().unwrap().contains("X-CSRF-Token"));
    assert_eq!(
        with("POST", "/v1/workflows/sleepy/runs", &[("x-csrf-token", "0000")]).status,
        403
    );
    let submitted = with("POST", "/v1/workflows/sleepy/runs", &[("x-csrf-token", &csrf)]);
    assert_eq!(submitted.status, 201, "{submitted:?}");
    let id = submitted.json()["id"].as_u64().unwrap();
    let cross = with(
        "POST",
        &format!("/v1/runs/{id}/cancel"),
        &[("x-csrf-token", &csrf), ("origin", "http://evil.example")],
    );
    assert_eq!(cross.status, 403, "another site's page, even with the token");
    let cancel = format!("/v1/runs/{id}/cancel");
    let own = served.url();
    let cancelled = with("POST", &cancel, &[("x-csrf-token", &csrf), ("origin", &own)]);
    assert!(matches!(cancelled.status, 202 | 409), "{cancelled:?}");

    // Tenant zeta's session sees none of acme's runs.
    let (zeta, _) = signed_in(&served, "zeta-token");
    let hidden = served.request("GET", &format!("/v1/runs/{id}"), &[("cookie", &zeta)], b"");
    assert_eq!(hidden.status, 404);
    let listed = served
        .request("GET", "/v1/runs", &[("cookie", &zeta)], b"")
        .json();
    assert_eq!(listed["runs"], Value::Array(vec![]));

    // Signing out needs the token too, then the cookie is worthless.
    assert_eq!(with("POST", "/ui/logout", &[]).status, 403);
    let out = with("POST", "/ui/logout", &[("x-csrf-token", &csrf)]);
    assert_eq!(out.status, 204);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(with("GET", "/v1/runs", &[]).status, 401);
    assert_eq!(with("GET", "/ui/session", &[]).status, 401);
}

#[test]
fn an_open_server_needs_no_sign_in_but_answers_only_loopback_names() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), QUICK);
    let page = served.get("/ui/", None);
    assert_eq!(page.status, 200);
    let (cookie, _) = session_cookie(&page);
    let session = served
        .request("GET", "/ui/session", &[("cookie", &cookie)], b"")
        .json();
    assert_eq!(session["open"], true);
    assert_eq!(served.get("/ui/login", None).header("location"), Some("/ui/"));
    // A page of another site that made its name resolve here (DNS
    // rebinding) reads nothing.
    for path in ["/ui/", "/v1/runs", "/ui/session"] {
        let rebound = served.request("GET", path, &[("host", "evil.example:7700")], b"");
        assert_eq!(rebound.status, 403, "{path}: {rebound:?}");
    }
    let forged = served.request(
        "POST",
        "/v1/workflows/x/runs",
        &[("origin", "http://evil.example"), ("content-type", "text/plain")],
        b"{}",
    );
    assert_eq!(forged.status, 403, "a cross-site form post to the open API");
    let overview = served.get("/v1/overview", None).json();
    assert_eq!(overview["total"], 0);
    assert_eq!(overview["host"]["store"], "sqlite");
}

#[test]
fn the_dashboards_api_counts_reports_and_reads_big_runs_a_piece_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &tenants());
    let acme = Some("acme-token");
    let digest = served.upload("hello", acme);
    served.send("PUT", "/v1/workflows/greet", acme, greet(&digest).as_bytes());
    let fan = format!(
        "name: fan\nsteps:\n  - id: each\n    component: {digest}\n    for_each: ${{input}}\n    input: {{name: x}}\n"
    );
    served.send("PUT", "/v1/workflows/fan", acme, fan.as_bytes());
    for _ in 0..2 {
        let run = served.send(
            "POST",
            "/v1/workflows/greet/runs?wait=30s",
            acme,
            b"{\"name\": \"a\"}",
        );
        assert_eq!(run.status, 200, "{run:?}");
    }
    let items: Vec<u32> = (0..300).collect();
    let big = served.send(
        "POST",
        "/v1/workflows/fan/runs?wait=60s",
        acme,
        serde_json::to_string(&items).unwrap().as_bytes(),
    );
    assert_eq!(big.status, 200, "{big:?}");
    let big = big.json()["id"].as_u64().unwrap();

    let overview = served.get("/v1/overview", acme).json();
    assert_eq!(
        (
            overview["total"].as_u64(),
            overview["counts"]["succeeded"].as_u64()
        ),
        (Some(3), Some(3))
    );
    assert!(overview["host"]["throughput"]["attempts"].as_u64().unwrap() >= 302);
    let only = served.get("/v1/overview?workflow=greet&since=1h", acme).json();
    assert_eq!(only["total"], 2);
    assert_eq!(served.get("/v1/overview", Some("zeta-token")).json()["total"], 0);
    let recent = served.get("/v1/runs?since=1h&until=0", acme).json();
    assert_eq!(
        recent["runs"],
        Value::Array(vec![]),
        "accepted before the epoch: none"
    );
    for bad in ["/v1/runs?since=yesterday", "/v1/overview?until=soon"] {
        let answer = served.get(bad, acme);
        assert_eq!(answer.status, 400, "{bad}: {answer:?}");
        assert!(answer.json()["detail"].as_str().unwrap().contains("duration ago"));
    }

    let report = served.get("/v1/workflows/fan/report", acme).json();
    assert_eq!(
        (report["runs"].as_u64(), report["error_rate"].as_f64()),
        (Some(1), Some(0.0))
    );
    assert_eq!(report["steps"][0]["component"], "each");
    assert_eq!(report["steps"][0]["attempts"], 300);
    assert!(report["steps"][0]["p99"].as_f64().unwrap() >= report["steps"][0]["p50"].as_f64().unwrap());
    assert_eq!(report["recent"][0]["id"], big);
    assert_eq!(
        served.get("/v1/workflows/fan/report", Some("zeta-token")).status,
        404
    );
    assert_eq!(served.get("/v1/workflows/fan/report?last=0", acme).status, 400);

    let table = served.get(&format!("/v1/runs/{big}?attempts=table"), acme).json();
    assert_eq!(table["attempts"], Value::Null);
    let columns: Vec<&str> = table["attempt_table"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let rows = table["attempt_table"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 300);
    let step = columns.iter().position(|c| *c == "step").unwrap();
    let strings = &table["attempt_table"]["strings"];
    assert_eq!(strings[rows[0][step].as_u64().unwrap() as usize], "each");
    let none = served.get(&format!("/v1/runs/{big}?attempts=none"), acme).json();
    assert_eq!(
        (none["attempts"].clone(), none.get("attempt_table")),
        (Value::Null, None)
    );
    assert_eq!(
        served.get(&format!("/v1/runs/{big}?attempts=some"), acme).status,
        400
    );
    let one = served
        .get(&format!("/v1/runs/{big}/attempts?step=each&item=7"), acme)
        .json();
    assert_eq!(one["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(one["attempts"][0]["item"], 7);
    assert!(one["attempts"][0]["output"].is_object(), "in full: {one}");
    assert_eq!(
        served
            .get(&format!("/v1/runs/{big}/attempts?item=seven"), acme)
            .status,
        400
    );
    assert_eq!(served.get(&format!("/v1/runs/{big}/log"), acme).status, 200);
    assert_eq!(
        served
            .get(&format!("/v1/runs/{big}/log"), Some("zeta-token"))
            .status,
        404
    );
    // The history of a run's events as one table.
    let stream = served
        .get(&format!("/v1/runs/{big}/events?history=table"), acme)
        .text();
    let kinds: Vec<&str> = stream.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(
        kinds,
        ["status", "table", "end"],
        "{}",
        &stream[..stream.len().min(500)]
    );
    let table_line = stream
        .lines()
        .skip_while(|l| *l != "event: table")
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap();
    let table: Value = serde_json::from_str(table_line).unwrap();
    assert_eq!(table["rows"].as_array().unwrap().len(), 300);
    assert_eq!(
        served
            .get(&format!("/v1/runs/{big}/events?history=some"), acme)
            .status,
        400
    );
    let lanes = served
        .get(&format!("/v1/runs/{big}/report?lanes=none"), acme)
        .json();
    assert_eq!(lanes["lanes"], Value::Array(vec![]));
    assert_eq!(lanes["critical_path"][0], "each");
}

/// The lines `stepbox serve` prints before it serves: the first is the
/// address, unchanged; the second the dashboard's sign-in link.
fn printed_lines(dir: &Path, config: &str, token: Option<&str>) -> (String, String) {
    std::fs::write(dir.join("stepbox.toml"), config).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_stepbox"));
    match token {
        Some(token) => command.env("STEPBOX_TOKEN", token),
        None => command.env_remove("STEPBOX_TOKEN"),
    };
    let mut child = command
        .env_remove("STEPBOX_SERVER")
        .arg("--config")
        .arg(dir.join("stepbox.toml"))
        .arg("--db")
        .arg(dir.join("stepbox.db"))
        .arg("--cache-dir")
        .arg(super::cache_dir())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut first, mut second) = (String::new(), String::new());
    out.read_line(&mut first).unwrap();
    out.read_line(&mut second).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    (first.trim().to_owned(), second.trim().to_owned())
}

#[test]
fn serve_prints_the_sign_in_link_after_the_listening_line() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = printed_lines(dir.path(), &tenants(), Some("acme-token"));
    let addr = first.strip_prefix("listening on http://").expect(&first);
    assert_eq!(
        second,
        format!("dashboard: http://{addr}/ui/login?token=acme-token")
    );
    let (_, second) = printed_lines(dir.path(), &tenants(), Some("not-a-tenants"));
    assert!(
        second.ends_with("/ui/login (sign in with a tenant's token, or open /ui/login?token=TOKEN)"),
        "{second}"
    );
    assert!(
        !second.contains("not-a-tenants"),
        "an unknown token is not printed"
    );
    let open = tempfile::tempdir().unwrap();
    let (first, second) = printed_lines(open.path(), QUICK, None);
    let addr = first.strip_prefix("listening on http://").expect(&first);
    assert_eq!(second, format!("dashboard: http://{addr}/ui/"));
}

/// `tests/browser`, its npm packages installed (`npm ci`) if they are not.
fn browser_project() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the host crate lives one level below the workspace root")
        .join("tests")
        .join("browser");
    if !dir.join("node_modules").join("playwright-core").is_dir() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm is needed for the browser tests (scripts/setup)");
        assert!(status.success(), "npm ci in tests/browser failed");
    }
    let chromium = std::env::var("STEPBOX_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "the browser tests need Debian's chromium at {chromium}: run scripts/setup (as root)"
    );
    dir
}

#[test]
fn the_dashboard_works_in_a_real_browser() {
    let browser = browser_project();
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &tenants());
    let token = Some("acme-token");
    let digest = served.upload("hostile", token);
    let workflows = [
        (
            "quick",
            format!(
                "name: quick\nsteps:\n  - id: nap\n    component: {digest}\n    input: {{mode: sleep, ms: 1500}}\n  \
                 - id: tally\n    component: {digest}\n    needs: [nap]\n    input: {{mode: count, key: visits, times: 2}}\n"
            ),
        ),
        ("sleepy", sleepy(&digest, 60_000)),
        (
            "fan",
            format!(
                "name: fan\nsteps:\n  - id: items\n    component: {digest}\n    for_each: ${{input}}\n    input: {{mode: echo, id: 1}}\n"
            ),
        ),
    ];
    for (name, text) in &workflows {
        let put = served.send("PUT", &format!("/v1/workflows/{name}"), token, text.as_bytes());
        assert_eq!(put.status, 201, "{put:?}");
    }
    let items: Vec<u32> = (0..10_000).collect();
    let big = served.send(
        "POST",
        "/v1/workflows/fan/runs?wait=5m",
        token,
        serde_json::to_string(&items).unwrap().as_bytes(),
    );
    assert_eq!(big.status, 200, "{big:?}");
    assert_eq!(big.json()["status"], "succeeded");
    let big = big.json()["id"].as_u64().unwrap().to_string();

    let started = std::time::Instant::now();
    let output = Command::new("node")
        .arg(browser.join("dashboard.mjs"))
        .args([served.url().as_str(), "acme-token", "zeta-token", &big])
        .current_dir(&browser)
        .output()
        .expect("node is needed for the browser tests (scripts/setup)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The figures the script measured, for whoever reads the test's output.
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.lines().last() == Some("ok"),
        "the browser scenarios failed after {:?}:\n{stdout}\n{stderr}",
        started.elapsed()
    );
    let interactive = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|f| f["figure"] == "big_run_interactive_ms")
        .and_then(|f| f["value"].as_u64())
        .expect("the script measured the big run's page");
    assert!(Duration::from_millis(interactive) < Duration::from_secs(1));
}
