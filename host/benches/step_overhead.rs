//! The cost of running a trivial step end to end through the public API:
//! instantiate, run, collect usage, clean up (the component is loaded once),
//! sequentially and from 2 concurrent tasks; and the cost of loading a
//! component that is already cached, in memory and on disk.
//!
//! Run with `cargo bench -p stepbox --bench step_overhead`.

// criterion's macros generate undocumented public functions.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use stepbox::{OutcomeKind, RunOptions, Sandbox, StepComponent};

/// The allocator the `stepbox` binary uses, so the figures are the CLI's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const INPUT: &[u8] = br#"{"hello":"world"}"#;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn step_overhead(c: &mut Criterion) {
    let path = stepbox_tests::guest("trivial");
    let sandbox = Sandbox::builder().build().unwrap();
    let step = sandbox.load_file(&path).unwrap();
    let rt = runtime();

    let mut group = c.benchmark_group("trivial step");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    // The steps run inside runtime tasks, as in an embedding service (not
    // in `block_on` from a foreign thread, which adds a cross-thread wake-up
    // to every timer and I/O event). The time per element is wall time over
    // all steps, so with 2 tasks criterion's elements/s is the combined
    // throughput.
    for tasks in [1, 2] {
        let name = if tasks == 1 {
            "sequential".to_owned()
        } else {
            format!("{tasks} concurrent tasks")
        };
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (sandbox, step) = (sandbox.clone(), step.clone());
                async move { run_split(&sandbox, &step, iters, tasks).await }
            });
        });
    }
    group.finish();
}

/// Runs `iters` steps split over `tasks` tasks, each running its share one
/// after another, and returns the wall time.
async fn run_split(sandbox: &Sandbox, step: &StepComponent, iters: u64, tasks: u64) -> Duration {
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (sandbox, step) = (sandbox.clone(), step.clone());
            let n = iters / tasks + u64::from(t < iters % tasks);
            tokio::spawn(async move {
                for _ in 0..n {
                    let report = sandbox.run(&step, INPUT, RunOptions::default()).await;
                    assert_eq!(report.outcome.kind(), OutcomeKind::Completed);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    start.elapsed()
}

fn load_cached(c: &mut Criterion) {
    let path = stepbox_tests::guest("trivial");
    let bytes = std::fs::read(&path).unwrap();
    let cache = tempfile::tempdir().unwrap();

    let mut group = c.benchmark_group("load cached component");
    let warm = Sandbox::builder().build().unwrap();
    warm.load_bytes("trivial", &bytes).unwrap();
    group.bench_function("memory cache (file read + hash + lookup)", |b| {
        b.iter(|| warm.load_file(&path).unwrap());
    });

    // No memory cache: every load reads the precompiled artifact from disk,
    // checks it, deserializes it and pre-instantiates it.
    let cold = Sandbox::builder()
        .cache_dir(cache.path())
        .memory_cache_entries(0)
        .build()
        .unwrap();
    cold.load_bytes("trivial", &bytes).unwrap();
    group.bench_function("disk cache (deserialize + pre-instantiate)", |b| {
        b.iter(|| cold.load_file(&path).unwrap());
    });
    group.sample_size(10);
    group.bench_function("no cache (compile)", |b| {
        let nocache = Sandbox::builder().memory_cache_entries(0).build().unwrap();
        b.iter(|| nocache.load_bytes("trivial", &bytes).unwrap());
    });
    group.finish();
}

/// Criterion reports the mean time of batches of steps; this times 20,000
/// single steps one by one in one task and prints the percentiles of the
/// per-step latency, which is what "median per step" means.
fn latency_percentiles(_: &mut Criterion) {
    let path = stepbox_tests::guest("trivial");
    let sandbox = Sandbox::builder().build().unwrap();
    let step = sandbox.load_file(&path).unwrap();
    let rt = runtime();
    let mut micros: Vec<f64> = rt.block_on(async move {
        tokio::spawn(async move {
            let mut micros = Vec::with_capacity(20_000);
            for i in 0..22_000 {
                let started = Instant::now();
                let report = sandbox.run(&step, INPUT, RunOptions::default()).await;
                let elapsed = started.elapsed();
                assert_eq!(report.outcome.kind(), OutcomeKind::Completed);
                if i >= 2_000 {
                    micros.push(elapsed.as_secs_f64() * 1e6);
                }
            }
            micros
        })
        .await
        .unwrap()
    });
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() as f64 - 1.0) * q) as usize];
    println!(
        "trivial step, one task, per-step latency over {} runs: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs",
        micros.len(),
        at(0.5),
        at(0.9),
        at(0.99)
    );
}

criterion_group!(benches, latency_percentiles, step_overhead, load_cached);
criterion_main!(benches);
