//! Several `stepbox serve` processes on one PostgreSQL database: runs
//! submitted to one host are shared by all in proportion to their room,
//! a killed host's runs move within its lease and a second, a stopped
//! host's at once, and nothing is lost or run twice.

use std::time::{Duration, Instant};

use serde_json::json;

use super::serve::Served;
use super::store_conformance::postgres::TestDatabase;

/// Three steps of `ms` milliseconds each, one after another.
fn slow(digest: &str, ms: u64) -> String {
    format!(
        "name: slow\nsteps:\n  - id: one\n    component: {digest}\n    input: {{mode: sleep, ms: {ms}}}\n  \
         - id: two\n    component: {digest}\n    needs: [one]\n    input: {{mode: sleep, ms: {ms}}}\n  \
         - id: three\n    component: {digest}\n    needs: [two]\n    input: {{mode: sleep, ms: {ms}}}\n"
    )
}

/// A PostgreSQL cluster of its own, in a temporary directory, on a port of
/// its own: a test may restart it without disturbing the tests that share
/// the default one. Run as the `postgres` user (the tests run as root);
/// stopped at once when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn as_postgres(command: &str) {
    let out = std::process::Command::new("su")
        .args(["postgres", "-c", command])
        .output()
        .unwrap();
    assert!(out.status.success(), "{command}: {out:?}");
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let path = dir.path().display().to_string();
        let chown = std::process::Command::new("chown")
            .args(["-R", "postgres:", &path])
            .status()
            .unwrap();
        assert!(chown.success());
        as_postgres(&format!(
            "{PG_BIN}/initdb -D {path}/data -A trust -U postgres --no-sync >/dev/null"
        ));
        let cluster = Cluster { dir, port };
        cluster.ctl("start");
        let mut admin = connect(&cluster.url("postgres"));
        admin.batch_execute("CREATE DATABASE stepbox").unwrap();
        cluster
    }

    fn ctl(&self, action: &str) {
        let path = self.dir.path().display();
        as_postgres(&format!(
            "{PG_BIN}/pg_ctl -D {path}/data -l {path}/log -w -m fast \
             -o '-p {} -k {path} -c listen_addresses=127.0.0.1' {action} >/dev/null",
            self.port
        ));
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let path = self.dir.path().display();
        let _ = std::process::Command::new("su")
            .args([
                "postgres",
                "-c",
                &format!("{PG_BIN}/pg_ctl -D {path}/data -m immediate stop >/dev/null 2>&1"),
            ])
            .status();
    }
}

/// `n` hosts on `db`, each with its own directory and `extra` configuration.
fn hosts(db: &str, n: usize, extra: &str) -> Vec<(Served, tempfile::TempDir)> {
    (0..n).map(|_| host(db, extra)).collect()
}

/// Submits `n` runs of `workflow` to `host` in batches of 100; their ids.
fn submit(host: &Served, workflow: &str, n: usize) -> Vec<u64> {
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        let batch = (n - ids.len()).min(100);
        let inputs = json!({"inputs": (0..batch).map(|i| json!({"i": ids.len() + i})).collect::<Vec<_>>()});
        let answer = host.send(
            "POST",
            &format!("/v1/workflows/{workflow}/runs"),
            None,
            inputs.to_string().as_bytes(),
        );
        assert_eq!(answer.status, 201, "{answer:?}");
        ids.extend(
            answer.json()["runs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_u64().unwrap()),
        );
    }
    ids
}

fn client(db: &TestDatabase) -> postgres::Client {
    connect(db.url())
}

/// A connection to `url`, waiting out a server that is restarting.
fn connect(url: &str) -> postgres::Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match postgres::Client::connect(url, postgres::NoTls) {
            Ok(client) => return client,
            Err(e) => assert!(Instant::now() < deadline, "no database at {url}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The first row `sql` returns on `url`, asked again on a new connection
/// while the server restarts.
fn one(c: &mut postgres::Client, url: &str, sql: &str) -> postgres::Row {
    loop {
        match c.query_one(sql, &[]) {
            Ok(row) => return row,
            Err(_) => *c = connect(url),
        }
    }
}

/// Waits until `n` runs have finished; panics after `limit`.
fn until_finished(db: &TestDatabase, n: i64, limit: Duration) {
    until_finished_at(db.url(), n, limit);
}

/// As `until_finished`, on the database at `url`.
fn until_finished_at(url: &str, n: i64, limit: Duration) {
    let mut c = connect(url);
    let deadline = Instant::now() + limit;
    loop {
        let done: i64 = one(
            &mut c,
            url,
            "SELECT count(*) FROM runs WHERE finished_at IS NOT NULL",
        )
        .get(0);
        if done >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{done} of {n} runs finished");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every run succeeded once: each of its steps completed exactly once
/// (no completed step ran again), and every accepted run ended.
fn each_ended_once(db: &TestDatabase, runs: i64, steps: i64) {
    each_ended_once_at(db.url(), runs, steps);
}

/// As `each_ended_once`, on the database at `url`.
fn each_ended_once_at(url: &str, runs: i64, steps: i64) {
    let mut c = connect(url);
    let row = c
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE status = 'succeeded' AND finished_at IS NOT NULL) FROM runs",
            &[],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (runs, runs),
        "every accepted run is there and succeeded"
    );
    let twice: Vec<(i64, String, i64)> = c
        .query(
            "SELECT run, step, count(*) FROM attempts WHERE status = 'completed'
             GROUP BY run, step HAVING count(*) <> 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(twice.is_empty(), "steps completed more than once: {twice:?}");
    let completed: i64 = c
        .query_one("SELECT count(*) FROM attempts WHERE status = 'completed'", &[])
        .unwrap()
        .get(0);
    assert_eq!(completed, runs * steps, "every step of every run completed");
}

/// The finished runs each host (by pid) executed.
fn executed_by(db: &TestDatabase, hosts: &[&Served]) -> Vec<i64> {
    let mut c = client(db);
    hosts
        .iter()
        .map(|h| {
            c.query_one(
                "SELECT count(*) FROM runs WHERE finished_at IS NOT NULL AND split_part(owner, ':', 2) = $1",
                &[&h.pid().to_string()],
            )
            .unwrap()
            .get(0)
        })
        .collect()
}

#[test]
fn runs_submitted_to_one_of_three_hosts_are_shared_evenly() {
    let db = TestDatabase::new();
    let hosts = hosts(db.url(), 3, "[quotas]\nmax_workflows = 8\n");
    let a = &hosts[0].0;
    // Steps that wait rather than compute: each host's share is then
    // bounded by its slots, not by how the test machine's cores are
    // shared with the other tests running at once.
    define_slow(a, 20);
    const RUNS: usize = 900;
    let started = Instant::now();
    let ids = submit(a, "slow", RUNS);
    assert_eq!(ids.len(), RUNS);
    until_finished(&db, RUNS as i64, Duration::from_secs(240));
    let took = started.elapsed();
    each_ended_once(&db, RUNS as i64, 3);
    let shares = executed_by(&db, &[a, &hosts[1].0, &hosts[2].0]);
    eprintln!("{RUNS} runs submitted to one host, executed {shares:?} by the three, in {took:?}");
    assert_eq!(shares.iter().sum::<i64>(), RUNS as i64, "{shares:?}");
    for share in &shares {
        let fraction = *share as f64 / RUNS as f64;
        assert!(
            (0.2333..=0.4333).contains(&fraction),
            "each host executes 33 % ± 10 %: {shares:?}"
        );
    }
    // Runs other hosts execute are waited for on the host they were
    // submitted to, from the journal.
    let inputs = json!({"inputs": vec![json!({}); 30]});
    let answer = a.send(
        "POST",
        "/v1/workflows/slow/runs?wait=30s",
        None,
        inputs.to_string().as_bytes(),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    let runs = answer.json()["runs"].as_array().unwrap().clone();
    assert!(runs.iter().all(|r| r["status"] == "succeeded"), "{runs:?}");
    let ids: Vec<i64> = runs.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    let elsewhere: i64 = client(&db)
        .query_one(
            "SELECT count(*) FROM runs WHERE id = ANY($1) AND split_part(owner, ':', 2) <> $2",
            &[&ids, &a.pid().to_string()],
        )
        .unwrap()
        .get(0);
    assert!(elsewhere > 0, "all 30 ran on the host they were sent to");
    // Its events too, from the journal.
    let remote: i64 = client(&db)
        .query_one(
            "SELECT min(id) FROM runs WHERE split_part(owner, ':', 2) <> $1",
            &[&a.pid().to_string()],
        )
        .unwrap()
        .get(0);
    let events = a.get(&format!("/v1/runs/{remote}/events"), None).text();
    assert!(
        events.contains("event: end") && events.contains("succeeded"),
        "{events}"
    );
}

/// Runs (by host pid) incomplete and still owned by that host.
fn held_by(c: &mut postgres::Client, pid: u32) -> i64 {
    c.query_one(
        "SELECT count(*) FROM runs WHERE finished_at IS NULL AND split_part(owner, ':', 2) = $1",
        &[&pid.to_string()],
    )
    .unwrap()
    .get(0)
}

/// Defines workflow `slow` (steps of `ms`) on `host`.
fn define_slow(host: &Served, ms: u64) {
    let digest = host.upload("hostile", None);
    let answer = host.send("PUT", "/v1/workflows/slow", None, slow(&digest, ms).as_bytes());
    assert!(matches!(answer.status, 200 | 201), "{answer:?}");
}

/// Three hosts on `db` (16 slots each), `runs` runs of `slow` (steps of
/// `ms`) submitted to the first.
fn loaded(db: &str, ms: u64, runs: usize) -> Vec<(Served, tempfile::TempDir)> {
    let hosts = hosts(db, 3, "[quotas]\nmax_workflows = 16\n");
    define_slow(&hosts[0].0, ms);
    submit(&hosts[0].0, "slow", runs);
    hosts
}

/// Three hosts under load from `slow` runs submitted to the first; once
/// the second has completed steps of runs it holds, `stop` stops it.
/// Returns how long after the stop its last run was claimed by another.
fn stop_one_of_three_under_load(stop: impl FnOnce(Served)) -> Duration {
    let db = TestDatabase::new();
    const RUNS: usize = 600;
    let mut hosts = loaded(db.url(), 100, RUNS);
    let b = hosts.remove(1).0;
    let pid = b.pid();
    let mut c = client(&db);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done: i64 = c
            .query_one(
                "SELECT count(*) FROM attempts a JOIN runs r ON r.id = a.run
                 WHERE a.status = 'completed' AND r.finished_at IS NULL AND split_part(r.owner, ':', 2) = $1",
                &[&pid.to_string()],
            )
            .unwrap()
            .get(0);
        if done > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never completed a step of a run it holds"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let held = held_by(&mut c, pid);
    assert!(held > 0);
    let stopped = Instant::now();
    stop(b);
    while held_by(&mut c, pid) > 0 {
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "B's runs were never claimed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let moved = stopped.elapsed();
    eprintln!("the {held} runs B held were all claimed {moved:?} after it was stopped");
    until_finished(&db, RUNS as i64, Duration::from_secs(240));
    each_ended_once(&db, RUNS as i64, 3);
    let unclaimed: i64 = c
        .query_one("SELECT count(*) FROM runs WHERE owner IS NULL", &[])
        .unwrap()
        .get(0);
    assert_eq!(unclaimed, 0, "every run was executed by a host");
    moved
}

#[test]
fn a_host_killed_under_load_has_its_runs_claimed_within_its_lease_and_a_second() {
    // The default lease is 5 s; claims look every second.
    let moved = stop_one_of_three_under_load(Served::kill);
    assert!(
        moved < Duration::from_millis(6_500),
        "claimed {moved:?} after the kill"
    );
}

#[test]
fn a_host_stopped_under_load_hands_its_runs_over_at_once() {
    let moved = stop_one_of_three_under_load(|b| assert_eq!(b.terminate(), Some(0)));
    assert!(moved < Duration::from_secs(2), "claimed {moved:?} after SIGTERM");
}

#[test]
fn idle_hosts_cost_the_database_a_few_transactions_a_second_each() {
    let db = TestDatabase::new();
    let hosts = hosts(db.url(), 3, "");
    let name = db.url().rsplit('/').next().unwrap().to_owned();
    let mut admin =
        postgres::Client::connect(&super::store_conformance::postgres::admin_url(), postgres::NoTls).unwrap();
    let mut committed = || -> i64 {
        admin
            .query_one(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
                &[&name],
            )
            .unwrap()
            .get(0)
    };
    // Past the start, then 10 s of idling.
    std::thread::sleep(Duration::from_secs(3));
    let before = committed();
    std::thread::sleep(Duration::from_secs(10));
    let per_host = (committed() - before) as f64 / 10.0 / hosts.len() as f64;
    eprintln!("an idle host commits {per_host:.2} transactions a second");
    assert!(
        per_host <= 4.0,
        "{per_host:.2} transactions a second per idle host"
    );
}

#[test]
fn hosts_ride_out_postgres_restarting_under_load_losing_and_doubling_nothing() {
    let cluster = Cluster::start();
    let url = cluster.url("stepbox");
    const RUNS: usize = 600;
    let hosts = loaded(&url, 50, RUNS);
    until_finished_at(&url, 60, Duration::from_secs(60));
    let restarted = Instant::now();
    cluster.ctl("restart");
    eprintln!("PostgreSQL restarted in {:?}", restarted.elapsed());
    until_finished_at(&url, RUNS as i64, Duration::from_secs(240));
    each_ended_once_at(&url, RUNS as i64, 3);
    // Every host's journal is still writing: each accepts and runs more.
    for (host, _) in &hosts {
        define_slow(host, 50);
        submit(host, "slow", 10);
    }
    until_finished_at(&url, RUNS as i64 + 30, Duration::from_secs(60));
    each_ended_once_at(&url, RUNS as i64 + 30, 3);
}

/// `greet` with `greeting` in its input: which version a host ran shows in
/// the output.
fn greet(digest: &str, greeting: &str) -> String {
    format!("name: greet\nsteps:\n  - id: one\n    component: {digest}\n    input: {{name: {greeting}}}\n")
}

/// Submits one `greet` run to `host` as `token`, waits for it; its message.
fn greeted(host: &Served, token: &str) -> String {
    let answer = host.send("POST", "/v1/workflows/greet/runs?wait=30s", Some(token), b"{}");
    assert_eq!(answer.status, 200, "{answer:?}");
    let run = answer.json();
    assert_eq!(run["status"], "succeeded", "{run}");
    run["output"]["message"].as_str().unwrap().to_owned()
}

#[test]
fn a_workflow_uploaded_to_one_host_runs_when_submitted_to_another_and_stays_its_tenants() {
    use stepbox::config::TokenDigest;
    let db = TestDatabase::new();
    let tenants = format!(
        "[[tenants]]\nname = \"acme\"\ntokens = [\"{}\"]\n[[tenants]]\nname = \"zeta\"\ntokens = [\"{}\"]\n",
        TokenDigest::of("acme-token"),
        TokenDigest::of("zeta-token"),
    );
    // Each host has a data directory of its own, as on machines of their own.
    let hosts = hosts(db.url(), 2, &tenants);
    let (a, b) = (&hosts[0].0, &hosts[1].0);
    let digest = a.upload("hello", Some("acme-token"));
    let put = a.send(
        "PUT",
        "/v1/workflows/greet",
        Some("acme-token"),
        greet(&digest, "one").as_bytes(),
    );
    assert_eq!(put.status, 201, "{put:?}");

    assert_eq!(greeted(b, "acme-token"), "Hello, one!");
    let listed = b.get("/v1/workflows", Some("acme-token")).json();
    assert_eq!(listed["workflows"][0]["name"], "greet", "{listed}");
    let text = b.get("/v1/workflows/greet", Some("acme-token")).json();
    assert!(text.to_string().contains("name: one"), "{text}");
    // Uploading the same component to the other host is not new.
    assert_eq!(
        b.send(
            "PUT",
            "/v1/components",
            Some("acme-token"),
            &std::fs::read(stepbox_tests::guest("hello")).unwrap()
        )
        .status,
        200
    );

    // Another tenant sees none of it, on either host.
    for host in [a, b] {
        let other = host.send("POST", "/v1/workflows/greet/runs", Some("zeta-token"), b"{}");
        assert_eq!(other.status, 404, "{other:?}");
        assert_eq!(
            host.get("/v1/workflows", Some("zeta-token")).json()["workflows"],
            json!([])
        );
        let borrowed = host.send(
            "PUT",
            "/v1/workflows/greet",
            Some("zeta-token"),
            greet(&digest, "z").as_bytes(),
        );
        assert_eq!(borrowed.status, 400, "another tenant's component: {borrowed:?}");
    }

    // Replaced through B, A runs the new one within a second.
    let put = b.send(
        "PUT",
        "/v1/workflows/greet",
        Some("acme-token"),
        greet(&digest, "two").as_bytes(),
    );
    assert_eq!(put.status, 200, "{put:?}");
    assert_eq!(greeted(b, "acme-token"), "Hello, two!");
    std::thread::sleep(stepbox::server::CATALOG_FRESH + Duration::from_millis(100));
    assert_eq!(greeted(a, "acme-token"), "Hello, two!");
}

#[test]
fn a_workflow_only_on_one_hosts_disk_from_before_hosts_shared_uploads_is_shared_on_first_use() {
    use stepbox::config::TokenDigest;
    let db = TestDatabase::new();
    let tenants = format!(
        "[[tenants]]\nname = \"acme\"\ntokens = [\"{}\"]\n",
        TokenDigest::of("t")
    );
    let hosts = hosts(db.url(), 2, &tenants);
    let ((a, a_dir), (b, _)) = (&hosts[0], &hosts[1]);
    // What a host of the version before kept of an upload: files alone.
    let bytes = std::fs::read(stepbox_tests::guest("hello")).unwrap();
    let hex: String = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let tenant = a_dir.path().join("uploads").join("acme");
    std::fs::create_dir_all(tenant.join("components")).unwrap();
    std::fs::create_dir_all(tenant.join("workflows")).unwrap();
    std::fs::write(tenant.join(format!("components/{hex}.wasm")), &bytes).unwrap();
    std::fs::write(
        tenant.join("workflows/greet.yaml"),
        greet(&format!("sha256:{hex}"), "old"),
    )
    .unwrap();

    assert_eq!(
        b.send("POST", "/v1/workflows/greet/runs", Some("t"), b"{}")
            .status,
        404
    );
    assert_eq!(greeted(a, "t"), "Hello, old!");
    assert_eq!(greeted(b, "t"), "Hello, old!");
}

/// A host on `db` with `extra` configuration, in a directory of its own.
fn host(db: &str, extra: &str) -> (Served, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[journal]\nshutdown_grace = \"0s\"\n{extra}\n[server]\ndata = \"{}\"\n",
        dir.path().join("uploads").display()
    );
    (Served::start_on(dir.path(), &config, None, db), dir)
}

#[test]
fn a_tenants_quotas_hold_for_the_runs_it_has_on_every_host_and_in_the_queue() {
    use stepbox::config::TokenDigest;
    let db = TestDatabase::new();
    let tenant = format!(
        "[[tenants]]\nname = \"acme\"\ntokens = [\"{}\"]\nmax_running = 1\nmax_queued = 3\n",
        TokenDigest::of("t")
    );
    // A keeps one run and queues the rest in the database; B has room for
    // all of them, but only one of the tenant's runs at a time.
    let (a, _a_dir) = host(db.url(), &format!("[quotas]\nmax_workflows = 1\n{tenant}"));
    let (b, _b_dir) = host(db.url(), &format!("[quotas]\nmax_workflows = 8\n{tenant}"));
    let digest = a.upload("hostile", Some("t"));
    let sleepy = format!(
        "name: sleepy\nsteps:\n  - id: one\n    component: {digest}\n    input: {{mode: sleep, ms: 300}}\n"
    );
    assert_eq!(
        a.send("PUT", "/v1/workflows/sleepy", Some("t"), sleepy.as_bytes())
            .status,
        201
    );
    let inputs = json!({"inputs": vec![json!({}); 4]});
    let answer = a.send(
        "POST",
        "/v1/workflows/sleepy/runs",
        Some("t"),
        inputs.to_string().as_bytes(),
    );
    assert_eq!(answer.status, 201, "{answer:?}");

    // Four live runs, wherever they are, are the tenant's quota: B refuses
    // a fifth though it has none of them yet.
    let fifth = b.send("POST", "/v1/workflows/sleepy/runs", Some("t"), b"{}");
    assert_eq!(fifth.status, 429, "{fifth:?}");
    assert!(fifth.header("retry-after").is_some());

    until_finished(&db, 4, Duration::from_secs(30));
    each_ended_once(&db, 4, 1);
    // No host ran two of the tenant's runs at once, those it claimed included.
    let mut c = client(&db);
    let rows = c
        .query(
            "SELECT r.owner, min(a.started_us), max(a.started_us + a.duration_us)
             FROM runs r JOIN attempts a ON a.run = r.id GROUP BY r.id, r.owner ORDER BY r.owner, 2",
            &[],
        )
        .unwrap();
    let spans: Vec<(String, i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    let on_b = spans
        .iter()
        .filter(|s| s.0.split(':').nth(1) == Some(&b.pid().to_string()))
        .count();
    assert!(on_b >= 2, "B claimed from the queue: {spans:?}");
    for pair in spans.windows(2) {
        if pair[0].0 == pair[1].0 {
            assert!(
                pair[0].2 <= pair[1].1,
                "one host ran two of the tenant's runs at once: {spans:?}"
            );
        }
    }
    // With its runs done, the tenant may submit again, to either host.
    assert_eq!(
        b.send("POST", "/v1/workflows/sleepy/runs", Some("t"), b"{}")
            .status,
        201
    );
}
