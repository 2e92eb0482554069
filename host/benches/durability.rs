//! What durability costs: 3-step workflows of trivial steps in memory, with
//! a `batched` journal and with a `strict` one, side by side in one run
//! (rounds interleave the modes, so machine noise hits them alike); and raw
//! journal appends.
//!
//! Run with `cargo bench -p stepbox --bench durability`. The journal lives
//! in a temporary directory on the same disk as `/tmp`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use stepbox::Sandbox;
use stepbox::bench::append_bench_event;
use stepbox::policy::Quotas;
use stepbox::scheduler::{PreparedWorkflow, RunStatus, Scheduler, SchedulerConfig};
use stepbox::store::{Durability, Journal, JournalConfig, SqliteStore};
use stepbox::workflow::Workflow;

/// The allocator the `stepbox` binary uses, so the figures are the CLI's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const THREE_STEPS: &str = "name: three\nsteps:\n  - id: a\n    component: T\n  - id: b\n    component: T\n    needs: [a]\n  - id: c\n    component: T\n    needs: [b]\n";

struct Mode {
    name: &'static str,
    scheduler: Scheduler,
    wf: Arc<PreparedWorkflow>,
    latencies: Vec<f64>,
    rates: Vec<f64>,
    /// Process CPU time per workflow in the throughput bursts, in µs.
    cpu: Vec<f64>,
    /// Journal commits and events during the throughput bursts.
    burst_commits: u64,
    burst_events: u64,
}

/// CPU time this process has used (user and system), from `/proc/self/stat`
/// in clock ticks of 10 ms: coarse, but the bursts last half a second.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after it.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn config() -> SchedulerConfig {
    SchedulerConfig {
        quotas: Quotas {
            max_workflows: 10_000,
            max_queued: 100_000,
            ..Quotas::default()
        },
        ..SchedulerConfig::default()
    }
}

fn mode(name: &'static str, sandbox: &Sandbox, durability: Durability, dir: &std::path::Path) -> Mode {
    let scheduler = match durability {
        Durability::Memory => Scheduler::new(sandbox.clone(), config()).unwrap(),
        level => {
            let store = SqliteStore::open(&dir.join(format!("{name}.db")), level).unwrap();
            let journal_config = JournalConfig {
                durability: level,
                ..JournalConfig::default()
            };
            let (journal, _) = Journal::start(Box::new(store), journal_config).unwrap();
            Scheduler::with_journal(sandbox.clone(), config(), journal).unwrap()
        }
    };
    let file = dir.join("three.yaml");
    let yaml = THREE_STEPS.replace(
        "component: T",
        &format!("component: {}", stepbox_tests::guest("trivial").display()),
    );
    std::fs::write(&file, yaml).unwrap();
    let wf = scheduler.prepare(Workflow::from_file(&file).unwrap()).unwrap();
    Mode {
        name,
        scheduler,
        wf,
        latencies: Vec::new(),
        rates: Vec::new(),
        cpu: Vec::new(),
        burst_commits: 0,
        burst_events: 0,
    }
}

/// Submits `n` runs at once (accepted in one commit) and waits for all.
async fn burst(mode: &Mode, n: usize) -> Duration {
    let started = Instant::now();
    let runs = (0..n).map(|i| (Arc::clone(&mode.wf), json!({"i": i})));
    let handles = mode.scheduler.submit_all(runs).unwrap();
    for handle in handles {
        let report = handle.wait().await;
        assert_eq!(report.status, RunStatus::Succeeded, "{:?}", report.error);
    }
    started.elapsed()
}

fn quantile(xs: &mut [f64], q: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() - 1) as f64 * q) as usize]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir =
        tempfile::tempdir_in(std::env::var_os("STEPBOX_BENCH_DIR").unwrap_or_else(|| "/tmp".into())).unwrap();
    rt.block_on(async {
        let sandbox = Sandbox::builder().build().unwrap();
        // STEPBOX_BENCH_MODES=strict (say) measures one mode alone, for profiling.
        let only = std::env::var("STEPBOX_BENCH_MODES").unwrap_or_default();
        let mut modes: Vec<Mode> = [
            ("memory", Durability::Memory),
            ("batched", Durability::Batched),
            ("strict", Durability::Strict),
        ]
        .into_iter()
        .filter(|(name, _)| only.is_empty() || only.split(',').any(|m| m == *name))
        .map(|(name, level)| mode(name, &sandbox, level, dir.path()))
        .collect();
        for m in &modes {
            burst(m, 500).await; // warm up
        }
        for _round in 0..5 {
            for m in &mut modes {
                for _ in 0..200 {
                    let t = burst(m, 1).await.as_secs_f64() * 1e3;
                    m.latencies.push(t);
                }
                let cpu = cpu_time();
                let before = m.scheduler.journal().map(|j| j.stats()).unwrap_or_default();
                let wall = burst(m, 5_000).await;
                m.rates.push(5_000.0 / wall.as_secs_f64());
                m.cpu.push((cpu_time() - cpu).as_secs_f64() * 1e6 / 5_000.0);
                let after = m.scheduler.journal().map(|j| j.stats()).unwrap_or_default();
                m.burst_commits += after.commits - before.commits;
                m.burst_events += after.events - before.events;
            }
        }
        let memory_rate = quantile(&mut modes[0].rates.clone(), 0.5);
        if !only.is_empty() {
            println!("(modes: {only}; percentages are against the first)");
        }
        println!("3-step workflows of trivial steps (5 rounds; latency: 1,000 one at a time; throughput: 5,000 at once)");
        for m in &mut modes {
            let p50 = quantile(&mut m.latencies, 0.5);
            let p99 = quantile(&mut m.latencies, 0.99);
            let rate = quantile(&mut m.rates, 0.5);
            let (lo, hi) = (quantile(&mut m.rates, 0.0), quantile(&mut m.rates, 1.0));
            let cpu = quantile(&mut m.cpu, 0.5);
            println!(
                "  {:<8} p50 {p50:.3} ms, p99 {p99:.3} ms; {rate:.0} workflows/s (range {lo:.0}-{hi:.0}), {:+.0}% vs memory; CPU {cpu:.0} µs per workflow",
                m.name,
                (rate / memory_rate - 1.0) * 100.0
            );
        }
        for m in &modes {
            if let Some(journal) = m.scheduler.journal() {
                let s = journal.stats();
                println!(
                    "  {:<8} journal: {} commits, {:.1} events per commit ({:.1} in the throughput bursts), largest {}, {:.3} ms per commit",
                    m.name,
                    s.commits,
                    s.events as f64 / s.commits.max(1) as f64,
                    m.burst_events as f64 / m.burst_commits.max(1) as f64,
                    s.largest_batch,
                    s.commit_time.as_secs_f64() * 1e3 / s.commits.max(1) as f64
                );
            }
        }

        if !only.is_empty() {
            return;
        }
        for durability in [Durability::Batched, Durability::Strict] {
            let store = SqliteStore::open(&dir.path().join(format!("raw-{}.db", durability.as_str())), durability).unwrap();
            let config = JournalConfig {
                durability,
                ..JournalConfig::default()
            };
            let (journal, _) = Journal::start(Box::new(store), config).unwrap();
            let step: Arc<str> = "step".into();
            const N: u64 = 1_000_000;
            let started = Instant::now();
            let mut last = None;
            for i in 0..N {
                last = Some(journal.append(append_bench_event(i, &step)));
            }
            journal.flush().await.unwrap();
            let _ = last;
            let elapsed = started.elapsed();
            let s = journal.stats();
            println!(
                "raw journal append ({}), 1,000,000 attempt events from one task: {:.0} events/s ({} commits, largest {})",
                durability.as_str(),
                N as f64 / elapsed.as_secs_f64(),
                s.commits,
                s.largest_batch
            );
            tokio::task::spawn_blocking(move || journal.close()).await.unwrap().unwrap();
        }
    });
}
