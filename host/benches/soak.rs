//! Memory over time: 1,000,000 trivial steps (3-step workflows, 5,000 at a
//! time) through a strict journal, sampling the resident set after every
//! burst. Finished runs must leave memory as they finish: RSS stays flat
//! after warm-up (the first 10 % of the steps).
//!
//! Run with `cargo bench -p stepbox --bench soak`; `STEPBOX_SOAK_STEPS`
//! changes the number of steps.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use stepbox::Sandbox;
use stepbox::policy::Quotas;
use stepbox::scheduler::{RunStatus, Scheduler, SchedulerConfig};
use stepbox::store::{Durability, Journal, JournalConfig, SqliteStore};
use stepbox::workflow::Workflow;

/// The allocator the `stepbox` binary uses, so the figures are the CLI's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const THREE_STEPS: &str = "name: three\nsteps:\n  - id: a\n    component: T\n  - id: b\n    component: T\n    needs: [a]\n  - id: c\n    component: T\n    needs: [b]\n";
const BURST: usize = 5_000;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn main() {
    let steps: usize = std::env::var("STEPBOX_SOAK_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let workflows = steps.div_ceil(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir =
        tempfile::tempdir_in(std::env::var_os("STEPBOX_BENCH_DIR").unwrap_or_else(|| "/tmp".into())).unwrap();
    let db = dir.path().join("soak.db");
    rt.block_on(async {
        let store = SqliteStore::open(&db, Durability::Strict).unwrap();
        let (journal, _) = Journal::start(Box::new(store), JournalConfig::default()).unwrap();
        let config = SchedulerConfig {
            quotas: Quotas {
                max_workflows: 10_000,
                max_queued: 100_000,
                ..Quotas::default()
            },
            ..SchedulerConfig::default()
        };
        let scheduler = Scheduler::with_journal(Sandbox::builder().build().unwrap(), config, journal).unwrap();
        let file = dir.path().join("three.yaml");
        let trivial = stepbox_tests::guest("trivial");
        std::fs::write(
            &file,
            THREE_STEPS.replace("component: T", &format!("component: {}", trivial.display())),
        )
        .unwrap();
        let wf = scheduler.prepare(Workflow::from_file(&file).unwrap()).unwrap();

        let started = Instant::now();
        let mut done = 0;
        let mut samples: Vec<(usize, f64)> = Vec::new();
        while done < workflows {
            let n = BURST.min(workflows - done);
            let handles = scheduler
                .submit_all((0..n).map(|i| (Arc::clone(&wf), json!({"i": done + i}))))
                .unwrap();
            for handle in handles {
                let report = handle.wait().await;
                assert_eq!(report.status, RunStatus::Succeeded, "{:?}", report.error);
            }
            done += n;
            samples.push((done * 3, rss_mib()));
        }
        let elapsed = started.elapsed();
        let warm = samples
            .iter()
            .find(|(s, _)| *s >= steps / 10)
            .map_or(samples[0].1, |(_, rss)| *rss);
        let after: Vec<f64> = samples.iter().filter(|(s, _)| *s > steps / 10).map(|(_, r)| *r).collect();
        let peak = after.iter().copied().fold(warm, f64::max);
        let last = samples.last().map_or(f64::NAN, |(_, r)| *r);
        let trajectory: Vec<String> = (1..=10)
            .filter_map(|tenth| samples.iter().find(|(s, _)| *s >= steps * tenth / 10))
            .map(|(s, rss)| format!("{}k:{rss:.0}", s / 1000))
            .collect();
        println!("RSS (MiB) by steps done: {}", trajectory.join(" "));
        let db_mib = std::fs::metadata(&db).map_or(0.0, |m| m.len() as f64 / 1048576.0);
        println!(
            "soak: {} steps ({workflows} 3-step workflows, strict journal) in {:.1} s ({:.0} steps/s)",
            workflows * 3,
            elapsed.as_secs_f64(),
            (workflows * 3) as f64 / elapsed.as_secs_f64()
        );
        println!(
            "RSS after warm-up {warm:.1} MiB, peak after it {peak:.1} MiB, at the end {last:.1} MiB: growth {:+.1}% (peak {:+.1}%); journal {db_mib:.0} MiB",
            (last / warm - 1.0) * 100.0,
            (peak / warm - 1.0) * 100.0
        );
        let journal = scheduler.journal().unwrap().clone();
        tokio::task::spawn_blocking(move || journal.close()).await.unwrap().unwrap();
    });
}
