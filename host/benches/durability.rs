//! What durability costs: 3-step workflows of trivial steps in memory, with
//! a `batched` journal and with a `strict` one, side by side in one run
//! (rounds interleave the modes, so machine noise hits them alike); and raw
//! journal appends.
//!
//! Run with `cargo bench -p stepbox --bench durability`. The journal lives
//! in a temporary directory on the same disk as `/tmp`. For A/B comparisons
//! of two builds, `STEPBOX_BENCH_MODES=memory,strict`,
//! `STEPBOX_BENCH_ROUNDS=16` and `STEPBOX_BENCH_LATENCY=20` give a shorter
//! run with more rounds; the CPU figure's percentage, paired per round like
//! throughput, drifts less with the machine than throughput does.
//! `STEPBOX_BENCH_MAX_WORKFLOWS` sets how many runs are in flight at once:
//! 10,000 (all of a burst) unless told; the default quota is 256.

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

/// Rounds of every mode, one after the other (`STEPBOX_BENCH_ROUNDS`).
const ROUNDS: usize = 10;

/// Runs one at a time per mode and round, for latency (`STEPBOX_BENCH_LATENCY`).
const LATENCY_RUNS: usize = 200;

/// A count from the environment, for longer or shorter A/B runs.
fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Mode {
    name: &'static str,
    scheduler: Scheduler,
    wf: Arc<PreparedWorkflow>,
    latencies: Vec<f64>,
    rates: Vec<f64>,
    /// Process CPU time per workflow in the throughput bursts, in µs.
    cpu: Vec<f64>,
    /// The journal writer thread's CPU time per workflow in the bursts, in µs.
    writer_cpu: Vec<f64>,
    /// Journal commits and events during the throughput bursts.
    burst_commits: u64,
    burst_events: u64,
}

/// CPU time this process has used (user and system), from `/proc/self/stat`
/// in clock ticks of 10 ms: coarse, but the bursts last half a second.
fn cpu_time() -> Duration {
    ticks_of(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// CPU time the journal writer threads have used, summed over this
/// process's threads named `stepbox-journal`.
fn writer_cpu_time() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "stepbox-journal")
        })
        .map(|t| ticks_of(&std::fs::read_to_string(t.path().join("stat")).unwrap_or_default()))
        .sum()
}

/// User and system time from a `stat` line of `/proc`.
fn ticks_of(stat: &str) -> Duration {
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
            max_workflows: knob("STEPBOX_BENCH_MAX_WORKFLOWS", 10_000),
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
        writer_cpu: Vec::new(),
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
        let rounds = knob("STEPBOX_BENCH_ROUNDS", ROUNDS).max(1);
        let latency_runs = knob("STEPBOX_BENCH_LATENCY", LATENCY_RUNS).max(1);
        for round in 0..rounds {
            // Every other round backwards, so no mode always follows another.
            let mut order: Vec<usize> = (0..modes.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for &k in &order {
                let m = &mut modes[k];
                for _ in 0..latency_runs {
                    let t = burst(m, 1).await.as_secs_f64() * 1e3;
                    m.latencies.push(t);
                }
                let cpu = cpu_time();
                let writer = writer_cpu_time();
                let before = m.scheduler.journal().map(|j| j.stats()).unwrap_or_default();
                let wall = burst(m, 5_000).await;
                m.rates.push(5_000.0 / wall.as_secs_f64());
                m.cpu.push((cpu_time() - cpu).as_secs_f64() * 1e6 / 5_000.0);
                m.writer_cpu.push((writer_cpu_time() - writer).as_secs_f64() * 1e6 / 5_000.0);
                let after = m.scheduler.journal().map(|j| j.stats()).unwrap_or_default();
                m.burst_commits += after.commits - before.commits;
                m.burst_events += after.events - before.events;
            }
        }
        // Each round's throughput against the first mode's in the same
        // round: the machine's speed drifts by tens of percent over
        // minutes, and a round's modes run within a second or two.
        let baseline = modes[0].rates.clone();
        let baseline_cpu = modes[0].cpu.clone();
        if !only.is_empty() {
            println!("(modes: {only}; percentages are against the first)");
        }
        println!(
            "3-step workflows of trivial steps ({rounds} rounds; latency: {} one at a time; throughput: 5,000 at once; vs memory: the median of the rounds' ratios)",
            rounds * latency_runs
        );
        for m in &mut modes {
            let p50 = quantile(&mut m.latencies, 0.5);
            let p99 = quantile(&mut m.latencies, 0.99);
            // Paired before `quantile` sorts the rates.
            let mut paired: Vec<f64> = m.rates.iter().zip(&baseline).map(|(r, b)| (r / b - 1.0) * 100.0).collect();
            let mut paired_cpu: Vec<f64> =
                m.cpu.iter().zip(&baseline_cpu).map(|(c, b)| (c / b - 1.0) * 100.0).collect();
            let cpu_vs = quantile(&mut paired_cpu, 0.5);
            let rate = quantile(&mut m.rates, 0.5);
            let (lo, hi) = (quantile(&mut m.rates, 0.0), quantile(&mut m.rates, 1.0));
            let vs = quantile(&mut paired, 0.5);
            let (vs_lo, vs_hi) = (quantile(&mut paired, 0.0), quantile(&mut paired, 1.0));
            let cpu = quantile(&mut m.cpu, 0.5);
            let writer = quantile(&mut m.writer_cpu, 0.5);
            println!(
                "  {:<8} p50 {p50:.3} ms, p99 {p99:.3} ms; {rate:.0} workflows/s (range {lo:.0}-{hi:.0}), {vs:+.0}% vs memory (rounds {vs_lo:+.0}% to {vs_hi:+.0}%); CPU {cpu:.0} µs per workflow ({cpu_vs:+.0}%; {writer:.0} in the journal writer)",
                m.name,
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
