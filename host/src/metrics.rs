//! Metrics in the Prometheus text format: what the host did (step runs,
//! durations, queue waits, fuel, memory, retries, workflows, rejections, the
//! journal's commits) and what it holds now (queue depth, instances in use,
//! breaker states).
//!
//! A [`Scheduler`](crate::scheduler::Scheduler) feeds its [`Metrics`] as work
//! ends; [`Scheduler::metrics_text`](crate::scheduler::Scheduler::metrics_text)
//! refreshes the gauges and encodes. `stepbox metrics` builds the same
//! metrics from a journal instead.
//!
//! ```
//! use std::time::Duration;
//! use stepbox::Usage;
//! use stepbox::metrics::{AttemptSample, Metrics};
//!
//! let metrics = Metrics::new();
//! let usage = Usage {
//!     wall_time: Duration::from_millis(2),
//!     fuel_consumed: 1_000,
//!     peak_memory: 1 << 20,
//!     ..Usage::default()
//! };
//! metrics.observe_attempt(&AttemptSample {
//!     component: "hello.wasm",
//!     outcome: "completed",
//!     usage: &usage,
//!     timeout_level: None,
//! });
//! let text = metrics.encode();
//! assert!(text.contains(r#"stepbox_step_runs_total{component="hello.wasm",outcome="completed"} 1"#));
//! ```

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::outcome::Usage;
use crate::policy::TimeoutLevel;
use crate::store::{AttemptStatus, Millis, StoreError, StoreReader};

type Labels = Vec<(&'static str, String)>;

/// Every metric the host keeps. Cheap to update from many threads.
pub struct Metrics {
    registry: Registry,
    step_runs: Family<Labels, Counter>,
    step_duration: Family<Labels, Histogram>,
    queue_wait: Family<Labels, Histogram>,
    fuel: Family<Labels, Counter>,
    peak_memory: Family<Labels, Histogram>,
    peak_scratch: Family<Labels, Histogram>,
    retries: Family<Labels, Counter>,
    timeouts: Family<Labels, Counter>,
    breaker_state: Family<Labels, Gauge>,
    workflows: Family<Labels, Counter>,
    rejections: Counter,
    queue_depth: Gauge,
    workflows_running: Gauge,
    instances_in_use: Gauge,
    memory_reserved: Gauge,
    commit_seconds: Histogram,
    commit_events: Histogram,
    fenced_events: Counter,
    components: RwLock<HashMap<String, Arc<ComponentSeries>>>,
}

/// One component's series, resolved once.
struct ComponentSeries {
    duration: Histogram,
    queue_wait: Histogram,
    fuel: Counter,
    peak_memory: Histogram,
    peak_scratch: Histogram,
    retries: Counter,
    outcomes: RwLock<HashMap<String, Counter>>,
}

impl ComponentSeries {
    fn outcome(&self, outcome: &str, family: &Family<Labels, Counter>, component: &str) -> Counter {
        if let Some(c) = self
            .outcomes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(outcome)
        {
            return c.clone();
        }
        let labels = vec![
            ("component", component.to_owned()),
            ("outcome", outcome.to_owned()),
        ];
        let counter = family.get_or_create(&labels).clone();
        self.outcomes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(outcome.to_owned())
            .or_insert(counter)
            .clone()
    }
}

/// One ended attempt, as the metrics see it.
#[derive(Debug, Clone, Copy)]
pub struct AttemptSample<'a> {
    /// The component's name.
    pub component: &'a str,
    /// The outcome kind, such as `completed` or `timeout`.
    pub outcome: &'a str,
    /// What it used.
    pub usage: &'a Usage,
    /// For a timeout, the level of the timeout hierarchy that fired.
    pub timeout_level: Option<TimeoutLevel>,
}

/// What the gauges show: a snapshot of the host.
#[derive(Debug, Clone, Default)]
pub struct HostGauges {
    /// Workflows waiting for admission.
    pub queued: u64,
    /// Workflows running.
    pub running: u64,
    /// Step instances running.
    pub instances: u64,
    /// Memory reserved by running instances (their limits), in bytes.
    pub memory: u64,
    /// Per component, its breaker's state: `closed`, `half-open` or `open`.
    pub breakers: Vec<(String, String)>,
}

fn seconds() -> Histogram {
    // 50 µs to about 100 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 22))
}

fn bytes() -> Histogram {
    // 64 KiB to 4 GiB.
    Histogram::new(exponential_buckets(65_536.0, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("stepbox");
        let m = Metrics {
            step_runs: Family::default(),
            step_duration: Family::new_with_constructor(seconds),
            queue_wait: Family::new_with_constructor(seconds),
            fuel: Family::default(),
            peak_memory: Family::new_with_constructor(bytes),
            peak_scratch: Family::new_with_constructor(bytes),
            retries: Family::default(),
            timeouts: Family::default(),
            breaker_state: Family::default(),
            workflows: Family::default(),
            rejections: Counter::default(),
            queue_depth: Gauge::default(),
            workflows_running: Gauge::default(),
            instances_in_use: Gauge::default(),
            memory_reserved: Gauge::default(),
            commit_seconds: seconds(),
            commit_events: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            fenced_events: Counter::default(),
            components: RwLock::new(HashMap::new()),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "step_runs",
            "Step attempts ended, by component and outcome kind",
            m.step_runs.clone(),
        );
        r.register(
            "step_duration_seconds",
            "Step attempt duration, including the wait for a slot",
            m.step_duration.clone(),
        );
        r.register(
            "step_queue_wait_seconds",
            "Time step attempts waited for an instance slot",
            m.queue_wait.clone(),
        );
        r.register("step_fuel", "Fuel consumed by step attempts", m.fuel.clone());
        r.register(
            "step_peak_memory_bytes",
            "Peak linear memory of step attempts",
            m.peak_memory.clone(),
        );
        r.register(
            "step_peak_scratch_bytes",
            "Peak bytes step attempts kept in their /tmp",
            m.peak_scratch.clone(),
        );
        r.register(
            "step_retries",
            "Step attempts retried after failing",
            m.retries.clone(),
        );
        r.register(
            "step_timeouts",
            "Step attempts that timed out, by component and the level of the timeout hierarchy that fired",
            m.timeouts.clone(),
        );
        r.register(
            "breaker_state",
            "Circuit breaker state by component: 0 closed, 1 half-open, 2 open",
            m.breaker_state.clone(),
        );
        r.register("workflows", "Workflow runs ended, by status", m.workflows.clone());
        r.register(
            "admission_rejections",
            "Runs refused at submission (queue full)",
            m.rejections.clone(),
        );
        r.register(
            "admission_queue_depth",
            "Workflow runs waiting for admission",
            m.queue_depth.clone(),
        );
        r.register(
            "workflows_running",
            "Workflow runs admitted and not ended",
            m.workflows_running.clone(),
        );
        r.register(
            "instances_in_use",
            "Step instances running",
            m.instances_in_use.clone(),
        );
        r.register(
            "memory_reserved_bytes",
            "Memory limits of the running instances (with their scratch quotas when /tmp is in memory), reserved from the budget",
            m.memory_reserved.clone(),
        );
        r.register(
            "journal_commit_seconds",
            "Time to write and commit one journal batch",
            m.commit_seconds.clone(),
        );
        r.register(
            "journal_batch_events",
            "Events per journal commit",
            m.commit_events.clone(),
        );
        r.register(
            "journal_fenced_events",
            "Journal events refused because another host had claimed their run after this host's lease ended",
            m.fenced_events.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts an ended step attempt.
    pub fn observe_attempt(&self, a: &AttemptSample<'_>) {
        let c = self.component(a.component);
        c.outcome(a.outcome, &self.step_runs, a.component).inc();
        let u = a.usage;
        c.duration.observe(u.total().as_secs_f64());
        c.queue_wait.observe(u.queue_wait.as_secs_f64());
        c.fuel.inc_by(u.fuel_consumed);
        c.peak_memory.observe(u.peak_memory as f64);
        c.peak_scratch.observe(u.peak_scratch as f64);
        if let Some(level) = a.timeout_level {
            let labels = vec![
                ("component", a.component.to_owned()),
                ("level", level.as_str().to_owned()),
            ];
            self.timeouts.get_or_create(&labels).inc();
        }
    }

    /// Counts a retry of `component`'s step.
    pub fn observe_retry(&self, component: &str) {
        self.component(component).retries.inc();
    }

    /// The handles of `name`'s series, made on first use. Every step
    /// attempt comes through here: the steady state is one read lock and
    /// no allocation.
    fn component(&self, name: &str) -> Arc<ComponentSeries> {
        let read = self.components.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = read.get(name) {
            return Arc::clone(c);
        }
        drop(read);
        let labels = vec![("component", name.to_owned())];
        let series = Arc::new(ComponentSeries {
            duration: self.step_duration.get_or_create(&labels).clone(),
            queue_wait: self.queue_wait.get_or_create(&labels).clone(),
            fuel: self.fuel.get_or_create(&labels).clone(),
            peak_memory: self.peak_memory.get_or_create(&labels).clone(),
            peak_scratch: self.peak_scratch.get_or_create(&labels).clone(),
            retries: self.retries.get_or_create(&labels).clone(),
            outcomes: RwLock::new(HashMap::new()),
        });
        let mut write = self.components.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(write.entry(name.to_owned()).or_insert(series))
    }

    /// Counts a workflow run that ended with `status`.
    pub fn observe_workflow(&self, status: &str) {
        self.workflows
            .get_or_create(&vec![("status", status.to_owned())])
            .inc();
    }

    /// Counts `n` workflow runs with `status`.
    pub fn add_workflows(&self, status: &str, n: u64) {
        self.workflows
            .get_or_create(&vec![("status", status.to_owned())])
            .inc_by(n);
    }

    /// The metrics a journal tells of: every attempt that ended at or after
    /// `since` (by component and outcome, with durations, queue waits, fuel,
    /// memory and retries), and its runs by status.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the journal cannot be read.
    pub fn from_store(store: &dyn StoreReader, since: Millis) -> Result<Metrics, StoreError> {
        let metrics = Metrics::new();
        store.scan_attempts(since, &mut |a| {
            let (Some(component), Some(outcome)) = (&a.component, a.outcome) else {
                return;
            };
            metrics.observe_attempt(&AttemptSample {
                component,
                outcome: outcome.as_str(),
                usage: &a.usage,
                timeout_level: a.timeout_level,
            });
            if a.status == AttemptStatus::Failed && !a.last {
                metrics.observe_retry(component);
            }
        })?;
        for (status, n) in store.count_runs()? {
            metrics.add_workflows(status.as_str(), n);
        }
        Ok(metrics)
    }

    /// Counts a run refused at submission.
    pub fn observe_rejection(&self) {
        self.rejections.inc();
    }

    /// Records a journal commit of `events` events that took `took`.
    pub fn observe_commit(&self, events: usize, took: Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
        self.commit_events.observe(events as f64);
    }

    /// Sets the gauges to `now`.
    pub fn set_gauges(&self, now: &HostGauges) {
        let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.queue_depth.set(int(now.queued));
        self.workflows_running.set(int(now.running));
        self.instances_in_use.set(int(now.instances));
        self.memory_reserved.set(int(now.memory));
        for (component, state) in &now.breakers {
            let value = match state.as_str() {
                "open" => 2,
                "half-open" => 1,
                _ => 0,
            };
            self.breaker_state
                .get_or_create(&vec![("component", component.clone())])
                .set(value);
        }
    }

    /// Everything, in the classic Prometheus text format (version 0.0.4):
    /// what scrapers, `promtool check metrics` and node_exporter's textfile
    /// collector read.
    pub fn encode(&self) -> String {
        classic(&self.encode_openmetrics())
    }

    /// Everything, in the OpenMetrics text format (ending in `# EOF`).
    pub fn encode_openmetrics(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// OpenMetrics text as the classic format reads it. The two differ where
/// it matters to a checker: an OpenMetrics counter family `x` has samples
/// `x_total`, while classic text names the family after its samples (else
/// they read as untyped series without help); classic text has no `# UNIT`
/// and no `# EOF`. Histograms and gauges read the same in both.
/// OpenMetrics text in the classic Prometheus text format: counter
/// families named after their `_total` samples, no units, no `# EOF`.
///
/// ```
/// let open = "# HELP x_runs Runs.\n# TYPE x_runs counter\nx_runs_total 3\n# EOF\n";
/// let classic = stepbox::metrics::to_classic(open);
/// assert_eq!(classic, "# HELP x_runs_total Runs.\n# TYPE x_runs_total counter\nx_runs_total 3\n");
/// ```
pub fn to_classic(openmetrics: &str) -> String {
    classic(openmetrics)
}

fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) { "_total" } else { "" };
                text.push_str(format!("{prefix}{name}{suffix} {tail}").trim_end_matches(' '));
            }
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

impl crate::store::CommitObserver for Metrics {
    fn committed(&self, events: usize, took: Duration) {
        self.observe_commit(events, took);
    }

    fn fenced(&self, events: usize) {
        self.fenced_events.inc_by(events as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USAGE: Usage = Usage {
        queue_wait: Duration::from_micros(100),
        wall_time: Duration::from_micros(2900),
        fuel_consumed: 500,
        peak_memory: 1 << 20,
        peak_scratch: 4096,
        output_bytes: 0,
    };

    fn sample(outcome: &str) -> AttemptSample<'_> {
        AttemptSample {
            component: "c.wasm",
            outcome,
            usage: &USAGE,
            timeout_level: None,
        }
    }

    #[test]
    fn counters_and_histograms_follow_what_is_observed() {
        let m = Metrics::new();
        m.observe_attempt(&sample("completed"));
        m.observe_attempt(&sample("completed"));
        m.observe_attempt(&sample("timeout"));
        m.observe_retry("c.wasm");
        m.observe_workflow("succeeded");
        m.observe_commit(12, Duration::from_micros(300));
        m.set_gauges(&HostGauges {
            queued: 4,
            running: 2,
            instances: 3,
            memory: 1024,
            breakers: vec![("c.wasm".into(), "open".into())],
        });
        let text = m.encode();
        for line in [
            r#"stepbox_step_runs_total{component="c.wasm",outcome="completed"} 2"#,
            r#"stepbox_step_runs_total{component="c.wasm",outcome="timeout"} 1"#,
            r#"stepbox_step_duration_seconds_count{component="c.wasm"} 3"#,
            r#"stepbox_step_fuel_total{component="c.wasm"} 1500"#,
            r#"stepbox_step_retries_total{component="c.wasm"} 1"#,
            r#"stepbox_workflows_total{status="succeeded"} 1"#,
            r#"stepbox_breaker_state{component="c.wasm"} 2"#,
            "stepbox_admission_queue_depth 4",
            "stepbox_instances_in_use 3",
            "stepbox_journal_batch_events_count 1",
        ] {
            assert!(text.contains(line), "`{line}` missing from:\n{text}");
        }
    }

    #[test]
    fn refused_journal_events_are_counted_with_help_and_type() {
        use crate::store::CommitObserver;
        let m = Metrics::new();
        m.fenced(3);
        m.fenced(2);
        let text = m.encode();
        for line in [
            "# HELP stepbox_journal_fenced_events_total Journal events refused",
            "# TYPE stepbox_journal_fenced_events_total counter",
            "stepbox_journal_fenced_events_total 5",
        ] {
            assert!(text.contains(line), "`{line}` missing from:\n{text}");
        }
    }

    #[test]
    fn classic_text_names_counter_families_after_their_samples_and_has_no_eof() {
        let m = Metrics::new();
        m.observe_retry("c.wasm");
        let classic = m.encode();
        assert!(
            classic.contains("# TYPE stepbox_step_retries_total counter"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP stepbox_step_retries_total "),
            "{classic}"
        );
        assert!(classic.contains(r#"stepbox_step_retries_total{component="c.wasm"} 1"#));
        assert!(
            !classic.contains("# EOF") && !classic.contains("# UNIT"),
            "{classic}"
        );
        // Histograms keep their family name in both formats.
        assert!(
            classic.contains("# TYPE stepbox_step_duration_seconds histogram"),
            "{classic}"
        );
        let open = m.encode_openmetrics();
        assert!(open.contains("# TYPE stepbox_step_retries counter") && open.ends_with("# EOF\n"));
    }
}
