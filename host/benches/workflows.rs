//! Workflow throughput and latency in memory (no journal yet) on trivial
//! steps; Windmill's comparison workloads (40 sequential `fib(10)`, 10
//! parallel `fib(33)`); the latency of a small workflow beside a 10,000-item
//! fan-out; and 10,000 concurrent small workflows with the peak RSS.
//!
//! Run with `cargo bench -p stepbox --bench workflows`. Prints one line per
//! scenario: the median of several repeats, and the spread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use stepbox::Sandbox;
use stepbox::policy::Quotas;
use stepbox::scheduler::{PreparedWorkflow, RunStatus, Scheduler, SchedulerConfig};
use stepbox::workflow::Workflow;

/// The allocator the `stepbox` binary uses, so the figures are the CLI's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const THREE_STEPS: &str = "name: three\nsteps:\n  - id: a\n    component: T\n  - id: b\n    component: T\n    needs: [a]\n  - id: c\n    component: T\n    needs: [b]\n";
const ONE_STEP: &str = "name: one\nsteps:\n  - id: a\n    component: T\n";

fn prepare(scheduler: &Scheduler, yaml: &str, dir: &std::path::Path) -> Arc<PreparedWorkflow> {
    let trivial = stepbox_tests::guest("trivial");
    let fib = stepbox_tests::guest("fib");
    let file = dir.join("wf.yaml");
    let yaml = yaml
        .replace("component: T", &format!("component: {}", trivial.display()))
        .replace("component: F", &format!("component: {}", fib.display()));
    std::fs::write(&file, yaml).unwrap();
    scheduler.prepare(Workflow::from_file(&file).unwrap()).unwrap()
}

/// Windmill's comparison: 40 sequential `fib(10)` steps.
fn fib_chain() -> String {
    let mut yaml = String::from("name: fib-chain\nsteps:\n");
    for i in 0..40 {
        yaml.push_str(&format!("  - id: s{i}\n    component: F\n    input: {{n: 10}}\n"));
        if i > 0 {
            yaml.push_str(&format!("    needs: [s{}]\n", i - 1));
        }
    }
    yaml
}

/// Windmill's comparison: 10 parallel `fib(33)` steps.
const FIB_FAN: &str = "name: fib-fan\nsteps:\n  - id: fib\n    component: F\n    for_each: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n    input: {n: 33}\n";

/// A 10,000-item fan-out of trivial steps.
const FAN_OUT: &str = "name: fan\nsteps:\n  - id: fan\n    component: T\n    for_each: ${input.items}\n";

/// Submits `n` runs at once and waits for all; returns wall time.
async fn burst(scheduler: &Scheduler, wf: &Arc<PreparedWorkflow>, n: usize) -> Duration {
    let started = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| scheduler.submit(wf, json!({"i": i})).unwrap())
        .collect();
    for handle in handles {
        let report = handle.wait().await;
        assert_eq!(report.status, RunStatus::Succeeded, "{:?}", report.error);
    }
    started.elapsed()
}

fn median(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    (xs[xs.len() / 2], xs[0], xs[xs.len() - 1])
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn main() {
    // `cargo bench` passes `--bench`; this harness takes no options.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let config = SchedulerConfig {
            quotas: Quotas {
                max_workflows: 10_000,
                max_queued: 100_000,
                ..Quotas::default()
            },
            ..SchedulerConfig::default()
        };
        let scheduler = Scheduler::new(Sandbox::builder().build().unwrap(), config).unwrap();
        let three = prepare(&scheduler, THREE_STEPS, dir.path());
        let one = prepare(&scheduler, ONE_STEP, dir.path());
        burst(&scheduler, &three, 200).await; // warm up

        let mut latencies = Vec::new();
        for _ in 0..2_000 {
            latencies.push(burst(&scheduler, &three, 1).await.as_secs_f64() * 1e3);
        }
        let (p50, min, max) = median(latencies.clone());
        latencies.sort_by(f64::total_cmp);
        let p99 = latencies[latencies.len() * 99 / 100];
        println!("3-step workflow latency, one at a time: p50 {p50:.3} ms, p99 {p99:.3} ms (min {min:.3}, max {max:.3})");

        let mut rates = Vec::new();
        for _ in 0..7 {
            let wall = burst(&scheduler, &three, 5_000).await;
            rates.push(5_000.0 / wall.as_secs_f64());
        }
        let (rate, lo, hi) = median(rates);
        println!("3-step workflows, 5,000 submitted at once: {rate:.0} workflows/s (range {lo:.0}-{hi:.0})");

        let chain = prepare(&scheduler, &fib_chain(), dir.path());
        let fan = prepare(&scheduler, FIB_FAN, dir.path());
        let mut times = Vec::new();
        for _ in 0..5 {
            times.push(burst(&scheduler, &chain, 1).await.as_secs_f64());
        }
        let (t, lo, hi) = median(times);
        println!("40 sequential fib(10) steps: {:.1} ms (5 runs: {:.1}-{:.1})", t * 1e3, lo * 1e3, hi * 1e3);
        let mut times = Vec::new();
        for _ in 0..3 {
            times.push(burst(&scheduler, &fan, 1).await.as_secs_f64());
        }
        let (t, lo, hi) = median(times);
        println!("10 parallel fib(33) steps: {t:.2} s (3 runs: {lo:.2}-{hi:.2})");

        // Fairness: a small workflow submitted while a 10,000-item fan-out runs.
        let big = prepare(&scheduler, FAN_OUT, dir.path());
        let items: Vec<u32> = (0..10_000).collect();
        let fan_out = scheduler.submit(&big, json!({"items": items})).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut latencies = Vec::new();
        for _ in 0..20 {
            latencies.push(burst(&scheduler, &three, 1).await.as_secs_f64() * 1e3);
        }
        let fan_report = fan_out.wait().await;
        assert_eq!(fan_report.status, RunStatus::Succeeded);
        let (p50, lo, hi) = median(latencies);
        println!(
            "3-step workflow while a 10,000-item fan-out runs ({:.2} s in all): p50 {p50:.2} ms (20 runs: {lo:.2}-{hi:.2})",
            fan_report.wall_time.as_secs_f64()
        );

        let rss_before = peak_rss_mib();
        let wall = burst(&scheduler, &one, 10_000).await;
        println!(
            "10,000 concurrent 1-step workflows: all succeeded in {:.2} s; peak RSS {:.0} MiB (before: {rss_before:.0} MiB)",
            wall.as_secs_f64(),
            peak_rss_mib()
        );
    });
}
