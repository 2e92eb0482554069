//! Several `stepbox serve` processes on one PostgreSQL database: runs
//! submitted to one host are shared by all in proportion to their room,
//! a killed host's runs move within its lease and a second, a stopped
//! host's at once, and nothing is lost or run twice.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::serve::Served;
use super::store_conformance::postgres::TestDatabase;

/// Three trivial steps, one after another.
fn three(digest: &str) -> String {
    format!(
        "name: three\nsteps:\n  - id: one\n    component: {digest}\n  \
         - id: two\n    component: {digest}\n    needs: [one]\n    input: {{from: one}}\n  \
         - id: three\n    component: {digest}\n    needs: [two]\n    input: {{from: two}}\n"
    )
}

/// Three steps of `ms` milliseconds each, one after another.
fn slow(digest: &str, ms: u64) -> String {
    format!(
        "name: slow\nsteps:\n  - id: one\n    component: {digest}\n    input: {{mode: sleep, ms: {ms}}}\n  \
         - id: two\n    component: {digest}\n    needs: [one]\n    input: {{mode: sleep, ms: {ms}}}\n  \
         - id: three\n    component: {digest}\n    needs: [two]\n    input: {{mode: sleep, ms: {ms}}}\n"
    )
}

/// `n` hosts on `db`, each with its own directory and `extra` configuration.
fn hosts(db: &str, n: usize, extra: &str) -> Vec<(Served, tempfile::TempDir)> {
    (0..n)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let config = format!(
                "[journal]\nshutdown_grace = \"0s\"\n{extra}\n[server]\ndata = \"{}\"\n",
                dir.path().join("uploads").display()
            );
            (Served::start_on(dir.path(), &config, None, db), dir)
        })
        .collect()
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
    postgres::Client::connect(db.url(), postgres::NoTls).unwrap()
}

/// Waits until `n` runs have finished; panics after `limit`.
fn until_finished(db: &TestDatabase, n: i64, limit: Duration) {
    let mut c = client(db);
    let deadline = Instant::now() + limit;
    loop {
        let done: i64 = c
            .query_one("SELECT count(*) FROM runs WHERE finished_at IS NOT NULL", &[])
            .unwrap()
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
    let mut c = client(db);
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
    let digest = a.upload("trivial", None);
    assert_eq!(
        a.send("PUT", "/v1/workflows/three", None, three(&digest).as_bytes())
            .status,
        201
    );
    const RUNS: usize = 900;
    let started = Instant::now();
    let ids = submit(a, "three", RUNS);
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
    // A run another host executed is waited for on the host it was
    // submitted to, from the journal.
    let answer = a.send("POST", "/v1/workflows/three/runs?wait=30s", None, b"{\"x\":1}");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["status"], "succeeded", "{answer:?}");
    let _: Value = answer.json();
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

/// Three hosts under load from `slow` runs submitted to the first; once
/// the second has completed steps of runs it holds, `stop` stops it.
/// Returns how long after the stop its last run was claimed by another.
fn stop_one_of_three_under_load(stop: impl FnOnce(Served)) -> Duration {
    let db = TestDatabase::new();
    let mut hosts = hosts(db.url(), 3, "[quotas]\nmax_workflows = 16\n");
    let digest = hosts[0].0.upload("hostile", None);
    let a = &hosts[0].0;
    assert_eq!(
        a.send("PUT", "/v1/workflows/slow", None, slow(&digest, 100).as_bytes())
            .status,
        201
    );
    const RUNS: usize = 600;
    submit(a, "slow", RUNS);
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
