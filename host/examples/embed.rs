//! Embedding stepbox: what a platform that runs untrusted steps does.
//!
//! Builds one sandbox for the process, loads a component once, then runs it
//! many times concurrently with per-run limits, cancels a runaway run, and
//! reads each typed outcome and its usage.
//!
//! ```text
//! cargo run -p stepbox --example embed                 # builds and uses the `hello` example step
//! cargo run -p stepbox --example embed -- step.wasm '{"name":"you"}'
//! ```

use std::time::Duration;

use bytesize::ByteSize;
use stepbox::{CancellationToken, LimitOverrides, Outcome, RunOptions, Sandbox};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    // Without a path, build the `hello` example the way the tests do.
    let component = match args.next() {
        Some(path) => path.into(),
        None => stepbox_tests::guest("hello"),
    };
    let input = args.next().unwrap_or_else(|| r#"{"name":"embedder"}"#.to_owned());

    // One sandbox per process: it owns the engine, the instance pool and the caches.
    let sandbox = Sandbox::builder()
        .max_instances(64)
        .cache_dir(std::env::temp_dir().join("stepbox-embed-cache"))
        .build()?;

    // Compile (or fetch from the disk cache) and pre-instantiate once.
    let step = sandbox.load_file(&component)?;
    println!("loaded {} ({})", step.name(), step.digest());

    // Per-run limits override the sandbox's defaults.
    let limits = LimitOverrides {
        fuel: Some(50_000_000),
        memory: Some(ByteSize::mib(16)),
        timeout: Some(Duration::from_secs(2)),
        ..LimitOverrides::default()
    };

    // Many runs at once: each gets a fresh instance and its own /tmp. A
    // `Sandbox` and a `StepComponent` are cheap handles, shared across tasks.
    let runs: Vec<_> = (0..8)
        .map(|_| {
            let (sandbox, step, input) = (sandbox.clone(), step.clone(), input.clone());
            let options = RunOptions::default().limits(limits);
            tokio::spawn(async move { sandbox.run(&step, input.as_bytes(), options).await })
        })
        .collect();
    for (i, run) in runs.into_iter().enumerate() {
        let report = run.await?;
        match &report.outcome {
            Outcome::Completed { output } => println!(
                "run {i}: {} (fuel {}, peak memory {}, {:?})",
                String::from_utf8_lossy(output),
                report.usage.fuel_consumed,
                ByteSize::b(report.usage.peak_memory),
                report.usage.wall_time,
            ),
            failed => println!("run {i}: {failed}"),
        }
    }

    // A run can be cancelled from outside; it stops promptly and cleans up.
    let cancel = CancellationToken::new();
    let options = RunOptions::default().limits(limits).cancel_token(cancel.clone());
    cancel.cancel();
    let report = sandbox.run(&step, input.as_bytes(), options).await;
    println!(
        "cancelled run: {} (kind `{}`)",
        report.outcome,
        report.outcome.kind()
    );
    Ok(())
}
