//! A real Prometheus server (Debian's `prometheus`, installed by
//! scripts/setup) scraping a live `stepbox serve`: what a monitoring system
//! reads back is what the host counted.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::serve::{QUICK, Served, greet, request};

/// A Prometheus server on a loopback port of its own, its data under a
/// directory of the test's.
struct Prometheus {
    child: Child,
    addr: String,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (host:port) every 500 ms.
    fn scraping(dir: &Path, target: &str) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\n\
                 scrape_configs:\n  - job_name: stepbox\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        // Prometheus takes a fixed port: one the kernel just handed out and
        // that nothing holds any more.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus is installed by scripts/setup");
        Prometheus { child, addr }
    }

    /// The result vector of the instant query `query`, or `None` while
    /// Prometheus is not answering yet.
    fn query(&self, query: &str) -> Option<Vec<Value>> {
        let path = format!("/api/v1/query?query={query}");
        std::net::TcpStream::connect(&self.addr).ok()?;
        let answer = request(&self.addr, "GET", &path, &[], b"");
        if answer.status != 200 {
            return None;
        }
        let body = answer.json();
        assert_eq!(body["status"], "success", "{body}");
        body["data"]["result"].as_array().cloned()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the sample in `result` whose labels include `labels`.
fn sample(result: &[Value], labels: &[(&str, &str)]) -> Option<f64> {
    result
        .iter()
        .find(|s| labels.iter().all(|(k, v)| s["metric"][k] == *v))
        .and_then(|s| s["value"][1].as_str())
        .and_then(|v| v.parse().ok())
}

#[test]
fn a_real_prometheus_scrapes_the_server_and_reads_back_its_workflows() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), QUICK);
    let digest = served.upload("hello", None);
    served.send("PUT", "/v1/workflows/greet", None, greet(&digest).as_bytes());
    for _ in 0..3 {
        let answer = served.send(
            "POST",
            "/v1/workflows/greet/runs?wait=30s",
            None,
            br#"{"name":"prometheus"}"#,
        );
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.json()["status"], "succeeded", "{answer:?}");
    }
    let prometheus = Prometheus::scraping(dir.path(), served.addr());

    let deadline = Instant::now() + Duration::from_secs(60);
    let (up, workflows) = loop {
        let up = prometheus.query("up").unwrap_or_default();
        let workflows = prometheus.query("stepbox_workflows_total").unwrap_or_default();
        if sample(&workflows, &[("status", "succeeded")]).is_some() {
            break (up, workflows);
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never stored stepbox_workflows_total; up: {up:?}; its log:\n{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        sample(&up, &[("job", "stepbox")]),
        Some(1.0),
        "the scrape succeeded: {up:?}"
    );
    assert_eq!(
        sample(&workflows, &[("status", "succeeded"), ("job", "stepbox")]),
        Some(3.0),
        "{workflows:?}"
    );
    // Every family came through typed: a histogram's buckets are there,
    // which an untyped scrape would not have made queryable by `le`.
    let buckets = prometheus
        .query("stepbox_step_duration_seconds_bucket")
        .unwrap_or_default();
    assert!(
        sample(&buckets, &[("le", "+Inf")]).is_some_and(|n| n >= 3.0),
        "{buckets:?}"
    );
}
