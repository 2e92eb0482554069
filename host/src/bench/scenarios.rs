//! The standard scenarios, each one repetition at a time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::loopback;
use super::serve::{self, Served};
use super::{Better, Measurement};
use crate::config::JournalSettings;
use crate::host::open_journal;
use crate::policy::Quotas;
use crate::sandbox::{HttpGrant, HttpPolicy};
use crate::scheduler::{PreparedWorkflow, RunStatus, Scheduler, SchedulerConfig};
use crate::store::{AttemptEnd, AttemptLimits, AttemptStatus, Durability, Event, now_millis};
use crate::workflow::Workflow;
use crate::{RunOptions, Sandbox};

/// What the suite runs with.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    /// A trivial step component (the `hello` example).
    pub trivial: PathBuf,
    /// The `fib` example.
    pub fib: PathBuf,
    /// The `fetch` example (an outbound HTTP call).
    pub fetch: PathBuf,
    /// Smaller sizes, for a quick check (and tests).
    pub quick: bool,
    /// Where journals and generated files go.
    pub scratch: PathBuf,
    /// The journal `workflows-strict` writes: a PostgreSQL URL (one host
    /// on it, against the default); `None`, a fresh SQLite file in
    /// `scratch` each repetition.
    pub journal: Option<PathBuf>,
    /// Extra time slept in each repetition of a scenario: makes a
    /// regression on purpose, to check that comparisons catch it.
    pub inject_delay: HashMap<String, Duration>,
}

/// A standard scenario.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Its name.
    pub name: &'static str,
    /// What it measures.
    pub description: &'static str,
    /// The unit of its figure.
    pub unit: &'static str,
    /// Which way is good.
    pub better: Better,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "step-overhead",
        description: "a trivial step end to end, one after another",
        unit: "µs/step",
        better: Better::Lower,
    },
    Scenario {
        name: "workflows-memory",
        description: "3-step workflows submitted at once, no journal",
        unit: "workflows/s",
        better: Better::Higher,
    },
    Scenario {
        name: "workflows-strict",
        description: "3-step workflows submitted at once, strict journal",
        unit: "workflows/s",
        better: Better::Higher,
    },
    Scenario {
        name: "concurrent-10k",
        description: "10,000 1-step workflows at once",
        unit: "s",
        better: Better::Lower,
    },
    Scenario {
        name: "fan-out-10k",
        description: "one for_each of 10,000 trivial items",
        unit: "s",
        better: Better::Lower,
    },
    Scenario {
        name: "plan-10k",
        description: "load, validate and plan a 10,000-step DAG (JSON)",
        unit: "ms",
        better: Better::Lower,
    },
    Scenario {
        name: "fib-chain",
        description: "40 sequential fib(10) steps (Windmill's comparison)",
        unit: "ms",
        better: Better::Lower,
    },
    Scenario {
        name: "fib-fan",
        description: "10 parallel fib(33) steps (Windmill's comparison)",
        unit: "s",
        better: Better::Lower,
    },
    Scenario {
        name: "serve-3step",
        description: "3-step workflows over HTTP, 64 keep-alive clients each waiting for its run's end, strict journal",
        unit: "workflows/s",
        better: Better::Higher,
    },
    Scenario {
        name: "serve-3step-p50",
        description: "the same from one client: the median request, from submission to the run's end",
        unit: "ms",
        better: Better::Lower,
    },
    Scenario {
        name: "serve-batch",
        description: "3-step workflows over HTTP, 100 a request, 64 clients each waiting, strict journal",
        unit: "workflows/s",
        better: Better::Higher,
    },
    Scenario {
        name: "http-call",
        description: "one outbound HTTP call from a step to a loopback server, granted, a connection each",
        unit: "µs/call",
        better: Better::Lower,
    },
    Scenario {
        name: "http-call-native",
        description: "the same call from a plain Rust (hyper) client, for comparison",
        unit: "µs/call",
        better: Better::Lower,
    },
    Scenario {
        name: "journal-append",
        description: "attempt events appended and committed, batched",
        unit: "events/s",
        better: Better::Higher,
    },
];

/// Every standard scenario, in the order the suite runs them.
pub fn scenarios() -> &'static [Scenario] {
    SCENARIOS
}

pub(super) fn config() -> SchedulerConfig {
    SchedulerConfig {
        quotas: Quotas {
            max_workflows: 20_000,
            max_queued: 100_000,
            max_fan_out: 10_000,
            ..Quotas::default()
        },
        ..SchedulerConfig::default()
    }
}

fn workflow(
    scheduler: &Scheduler,
    dir: &Path,
    name: &str,
    yaml: &str,
) -> Result<Arc<PreparedWorkflow>, String> {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).map_err(|e| e.to_string())?;
    let wf = Workflow::from_file(&file).map_err(|e| e.to_string())?;
    scheduler.prepare(wf).map_err(|e| e.to_string())
}

async fn burst(
    scheduler: &Scheduler,
    wf: &Arc<PreparedWorkflow>,
    n: usize,
    input: serde_json::Value,
) -> Result<(), String> {
    let handles = scheduler
        .submit_all((0..n).map(|_| (Arc::clone(wf), input.clone())))
        .map_err(|e| e.to_string())?;
    for handle in handles {
        let report = handle.wait().await;
        if report.status != RunStatus::Succeeded {
            return Err(format!("a run did not succeed: {:?}", report.error));
        }
    }
    Ok(())
}

fn chain(component: &Path, steps: usize, input: &str) -> String {
    let mut yaml = String::from("name: chain\nsteps:\n");
    for i in 0..steps {
        yaml.push_str(&format!(
            "  - id: s{i}\n    component: {}\n    input: {input}\n",
            component.display()
        ));
        if i > 0 {
            yaml.push_str(&format!("    needs: [s{}]\n", i - 1));
        }
    }
    yaml
}

/// A 10,000-step DAG as JSON: each step needs up to three earlier ones.
fn big_dag(component: &Path, steps: usize) -> String {
    let list: Vec<serde_json::Value> = (0..steps)
        .map(|i| {
            let needs: Vec<String> = [i / 2, i / 3, i.saturating_sub(1)]
                .into_iter()
                .filter(|&j| j < i)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .map(|j| format!("s{j}"))
                .collect();
            json!({"id": format!("s{i}"), "component": component, "needs": needs})
        })
        .collect();
    json!({"name": "big", "steps": list}).to_string()
}

/// Event `i` of the raw journal-append benchmarks: the completed attempt of
/// item `i % 8` of a step of run `i / 8`, with a small output, as a
/// fan-out writes them. `step` names the step and its component.
///
/// ```
/// let step: std::sync::Arc<str> = "step".into();
/// let event = stepbox::bench::append_bench_event(9, &step);
/// assert!(matches!(event, stepbox::store::Event::AttemptEnded(a) if a.run == 1 && a.item == Some(1)));
/// ```
pub fn append_bench_event(i: u64, step: &Arc<str>) -> Event {
    Event::AttemptEnded(Box::new(AttemptEnd {
        run: i / 8,
        step: Arc::clone(step),
        item: Some((i % 8) as u32),
        attempt: 1,
        component: Arc::clone(step),
        limits: AttemptLimits::default(),
        status: AttemptStatus::Completed,
        last: true,
        outcome: crate::OutcomeKind::Completed,
        message: None,
        timeout_level: None,
        output: Some(b"{}".to_vec()),
        log: None,
        usage: crate::outcome::Usage::default(),
        started_us: 0,
        at: now_millis(),
    }))
}

/// Sleeps for an injected delay, if there is one. Not even a zero sleep
/// otherwise: the timer wakes a sleeper on its next tick, a millisecond
/// away, which added a millisecond to figures of a few.
async fn injected(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

/// Runs one repetition of `scenario` and returns its figure.
///
/// # Errors
///
/// A message when the scenario cannot run (a component missing, a run
/// failing).
pub async fn run_scenario(
    scenario: &Scenario,
    suite: &SuiteConfig,
    sandbox: &Sandbox,
) -> Result<f64, String> {
    let q = |full: usize, quick: usize| if suite.quick { quick } else { full };
    let delay = suite.inject_delay.get(scenario.name).copied().unwrap_or_default();
    let dir = &suite.scratch;
    let (hello, fib) = (&suite.trivial, &suite.fib);
    let started = Instant::now();
    let figure = match scenario.name {
        "step-overhead" => {
            let step = sandbox.load_file(hello).map_err(|e| e.to_string())?;
            let n = q(2_000, 200);
            let t = Instant::now();
            for _ in 0..n {
                let report = sandbox
                    .run(&step, br#"{"name":"bench"}"#, RunOptions::default())
                    .await;
                if report.outcome.output().is_none() {
                    return Err(format!("the trivial step did not complete: {}", report.outcome));
                }
            }
            injected(delay).await;
            (t.elapsed().as_secs_f64() * 1e6) / n as f64
        }
        "workflows-memory" | "workflows-strict" => {
            let scheduler = if scenario.name == "workflows-strict" {
                let db = suite
                    .journal
                    .clone()
                    .unwrap_or_else(|| dir.join(format!("bench-{}.db", fastrand::u64(..))));
                let (journal, _) = open_journal(&JournalSettings {
                    db,
                    durability: Durability::Strict,
                    ..JournalSettings::default()
                })
                .await
                .map_err(|e| e.to_string())?;
                Scheduler::with_journal(sandbox.clone(), config(), journal).map_err(|e| e.to_string())?
            } else {
                Scheduler::new(sandbox.clone(), config()).map_err(|e| e.to_string())?
            };
            let wf = workflow(&scheduler, dir, "three", &chain(hello, 3, "{name: bench}"))?;
            burst(&scheduler, &wf, 100, json!({})).await?; // warm up
            let n = q(3_000, 300);
            let t = Instant::now();
            burst(&scheduler, &wf, n, json!({})).await?;
            injected(delay).await;
            let rate = n as f64 / t.elapsed().as_secs_f64();
            if let Some(journal) = scheduler.journal().cloned() {
                tokio::task::spawn_blocking(move || journal.close())
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
            }
            rate
        }
        "concurrent-10k" => {
            let scheduler = Scheduler::new(sandbox.clone(), config()).map_err(|e| e.to_string())?;
            let wf = workflow(&scheduler, dir, "one", &chain(hello, 1, "{name: bench}"))?;
            let t = Instant::now();
            burst(&scheduler, &wf, q(10_000, 1_000), json!({})).await?;
            injected(delay).await;
            t.elapsed().as_secs_f64()
        }
        "fan-out-10k" => {
            let scheduler = Scheduler::new(sandbox.clone(), config()).map_err(|e| e.to_string())?;
            let yaml = format!(
                "name: fan\nsteps:\n  - id: fan\n    component: {}\n    for_each: ${{input.items}}\n    input: {{name: bench}}\n",
                hello.display()
            );
            let wf = workflow(&scheduler, dir, "fan", &yaml)?;
            let items: Vec<usize> = (0..q(10_000, 1_000)).collect();
            let t = Instant::now();
            burst(&scheduler, &wf, 1, json!({ "items": items })).await?;
            injected(delay).await;
            t.elapsed().as_secs_f64()
        }
        "plan-10k" => {
            let file = dir.join("big.json");
            std::fs::write(&file, big_dag(hello, q(10_000, 1_000))).map_err(|e| e.to_string())?;
            let t = Instant::now();
            let wf = Workflow::from_file(&file).map_err(|e| e.to_string())?;
            std::hint::black_box(wf.plan());
            injected(delay).await;
            t.elapsed().as_secs_f64() * 1e3
        }
        "fib-chain" => {
            let scheduler = Scheduler::new(sandbox.clone(), config()).map_err(|e| e.to_string())?;
            let wf = workflow(&scheduler, dir, "fib-chain", &chain(fib, 40, "{n: 10}"))?;
            let t = Instant::now();
            burst(&scheduler, &wf, 1, json!({})).await?;
            injected(delay).await;
            t.elapsed().as_secs_f64() * 1e3
        }
        "fib-fan" => {
            let scheduler = Scheduler::new(sandbox.clone(), config()).map_err(|e| e.to_string())?;
            let n = if suite.quick { 25 } else { 33 };
            let yaml = format!(
                "name: fib-fan\nsteps:\n  - id: fib\n    component: {}\n    for_each: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n    input: {{n: {n}}}\n",
                fib.display()
            );
            let wf = workflow(&scheduler, dir, "fib-fan", &yaml)?;
            let t = Instant::now();
            burst(&scheduler, &wf, 1, json!({})).await?;
            injected(delay).await;
            t.elapsed().as_secs_f64()
        }
        "serve-3step" | "serve-3step-p50" | "serve-batch" => {
            let served = Served::start(sandbox, dir, hello).await?;
            let (clients, per_request, n) = match scenario.name {
                "serve-batch" => (serve::CLIENTS, serve::BATCH, q(25_600, 2_560)),
                "serve-3step-p50" => (1, 1, q(1_000, 100)),
                _ => (serve::CLIENTS, 1, q(6_400, 640)),
            };
            let warm = serve::CLIENTS * per_request;
            served.closed_loop(serve::CLIENTS, warm, per_request).await?;
            let (took, latencies) = served.closed_loop(clients, n, per_request).await?;
            injected(delay).await;
            served.stop().await?;
            match scenario.name {
                "serve-3step-p50" => serve::quantile(&latencies, 0.5).as_secs_f64() * 1e3,
                _ => n as f64 / took.as_secs_f64(),
            }
        }
        "http-call" | "http-call-native" => {
            let server = loopback::Loopback::start().await?;
            let n = q(500, 50);
            let took = if scenario.name == "http-call-native" {
                loopback::native_calls(server.addr, 20).await?; // warm up
                loopback::native_calls(server.addr, n).await?
            } else {
                let step = sandbox.load_file(&suite.fetch).map_err(|e| e.to_string())?;
                let policy = Arc::new(HttpPolicy {
                    max_requests: u32::MAX,
                    ..HttpPolicy::allowing([HttpGrant::from_str(&server.addr.to_string())?])
                });
                let step = &step;
                let call = |n: usize| {
                    let input = json!({"url": format!("http://{}/json", server.addr), "repeat": n});
                    let options = RunOptions::default().http(Arc::clone(&policy));
                    async move {
                        let input = serde_json::to_vec(&input).map_err(|e| e.to_string())?;
                        let t = Instant::now();
                        let report = sandbox.run(step, &input, options).await;
                        match report.outcome.output() {
                            Some(_) => Ok(t.elapsed()),
                            None => Err(format!("the fetch step did not complete: {}", report.outcome)),
                        }
                    }
                };
                call(20).await?; // warm up
                // One call's cost, without the step's own: the difference
                // between a step making n + 1 calls and one making 1.
                let one = call(1).await?;
                call(n + 1).await?.saturating_sub(one)
            };
            injected(delay).await;
            took.as_secs_f64() * 1e6 / n as f64
        }
        "journal-append" => {
            let db = dir.join(format!("append-{}.db", fastrand::u64(..)));
            let (journal, _) = open_journal(&JournalSettings {
                db: db.clone(),
                durability: Durability::Batched,
                ..JournalSettings::default()
            })
            .await
            .map_err(|e| e.to_string())?;
            let step: Arc<str> = "step".into();
            let n = q(500_000, 20_000) as u64;
            // The store refuses events of runs that are not the journal's
            // own (fencing): the runs are accepted first, untimed.
            let lease_until = journal.lease_until();
            journal.append_all((0..n.div_ceil(8)).map(|run| Event::RunAccepted {
                run,
                workflow: Arc::clone(&step),
                name: Arc::clone(&step),
                lease_until,
                queued: false,
                input: b"{}".to_vec(),
                at: now_millis(),
                tenant: None,
                key: None,
            }));
            journal.flush().await.map_err(|e| e.to_string())?;
            let t = Instant::now();
            for i in 0..n {
                journal.append(append_bench_event(i, &step));
            }
            journal.flush().await.map_err(|e| e.to_string())?;
            injected(delay).await;
            let rate = n as f64 / t.elapsed().as_secs_f64();
            tokio::task::spawn_blocking(move || journal.close())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let _ = std::fs::remove_file(&db);
            rate
        }
        other => return Err(format!("unknown scenario `{other}`")),
    };
    tracing::debug!(scenario = scenario.name, figure, took = ?started.elapsed(), "repetition");
    Ok(figure)
}

impl Scenario {
    /// An empty measurement of this scenario, to push samples into.
    pub fn measurement(&self) -> Measurement {
        Measurement::new(self.name, self.unit, self.better, Vec::new())
    }
}
