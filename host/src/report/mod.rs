//! Where a run's time and resources went, from its journal history: the
//! critical path with each step's share of the wall time, queue wait versus
//! execution, retried and failed steps, steps that came near a limit (with
//! a plain recommendation), a timeline picture ([`svg`]), and, over many
//! runs, per-component statistics.
//!
//! ```
//! use stepbox::report::RunAnalysis;
//! # fn demo(history: &stepbox::store::RunHistory) {
//! let analysis = RunAnalysis::new(history, None);
//! print!("{}", analysis.text());
//! # }
//! ```

pub mod svg;
pub mod text;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Serialize;

use crate::OutcomeKind;
use crate::policy::TimeoutLevel;
use crate::store::{AttemptRecord, AttemptStatus, Definition, RunHistory};
use crate::workflow::Workflow;

/// The share of a limit from which a step counts as near it.
pub const NEAR_LIMIT: f64 = 0.8;

/// One attempt on the run's timeline, relative to the run's start.
#[derive(Debug, Clone, Serialize)]
pub struct Bar {
    /// The attempt's number.
    pub attempt: u32,
    /// When it started.
    #[serde(serialize_with = "crate::limits::serialize_millis")]
    pub start: Duration,
    /// Of which waiting for an instance slot, from `start`.
    #[serde(serialize_with = "crate::limits::serialize_millis")]
    pub queue_wait: Duration,
    /// When it ended.
    #[serde(serialize_with = "crate::limits::serialize_millis")]
    pub end: Duration,
    /// Its outcome kind (`started` if it never ended).
    pub outcome: String,
}

/// One unit of work's lane: a step, or an item of a `for_each` step.
#[derive(Debug, Clone, Serialize)]
pub struct Lane {
    /// The step's id.
    pub step: String,
    /// The item, for a `for_each` step.
    pub item: Option<u32>,
    /// Its attempts, in order.
    pub bars: Vec<Bar>,
    /// Whether its step is on the critical path.
    pub critical: bool,
}

/// One step over all its units and attempts.
#[derive(Debug, Clone, Serialize)]
pub struct StepTiming {
    /// The step's id.
    pub step: String,
    /// The component it ran.
    pub component: String,
    /// From the run's start to its first attempt's start.
    #[serde(serialize_with = "crate::limits::serialize_millis")]
    pub start: Duration,
    /// From the run's start to its last attempt's end.
    #[serde(serialize_with = "crate::limits::serialize_millis")]
    pub end: Duration,
    /// Time its attempts waited for instance slots.
    #[serde(serialize_with = "crate::limits::serialize_millis")]
    pub queue_wait: Duration,
    /// Time its attempts ran.
    #[serde(serialize_with = "crate::limits::serialize_millis")]
    pub execution: Duration,
    /// Units (1, or the items of a `for_each`).
    pub units: usize,
    /// Attempts in all.
    pub attempts: u32,
    /// Whether an attempt was retried.
    pub retried: bool,
    /// Whether it failed in the end.
    pub failed: bool,
    /// `end - start` as a share of the run's wall time.
    pub share: f64,
    /// Whether it is on the critical path.
    pub critical: bool,
}

/// What a report points out.
#[derive(Debug, Clone, Serialize)]
pub struct Insight {
    /// The step.
    pub step: String,
    /// The item, for a `for_each` step.
    pub item: Option<u32>,
    /// `fuel`, `memory`, `time`, `retried`, `failed` or `bottleneck`.
    pub kind: &'static str,
    /// The share of the limit used (or of the wall time, for a bottleneck).
    pub share: f64,
    /// What happened and what to do, in one sentence.
    pub message: String,
}

/// A run's timeline and what stands out in it.
#[derive(Debug, Clone, Serialize)]
pub struct RunAnalysis {
    /// The run's id.
    pub run: u64,
    /// Its workflow.
    pub workflow: String,
    /// Its status.
    pub status: String,
    /// From its first attempt's start to its last one's end.
    #[serde(serialize_with = "crate::limits::serialize_millis")]
    pub wall: Duration,
    /// From acceptance to the first attempt.
    #[serde(serialize_with = "crate::limits::serialize_millis")]
    pub admission_wait: Duration,
    /// Per step that ran, in the order they started.
    pub steps: Vec<StepTiming>,
    /// The steps of the critical path, first to last.
    pub critical_path: Vec<String>,
    /// Per unit of work, in the order they started: the timeline.
    pub lanes: Vec<Lane>,
    /// What stands out, the most important first.
    pub insights: Vec<Insight>,
}

impl RunAnalysis {
    /// Analyses `history`. With the run's `definition`, the critical path
    /// follows the workflow's `needs`; without, it is left empty.
    pub fn new(history: &RunHistory, definition: Option<&Definition>) -> RunAnalysis {
        let attempts = &history.attempts;
        let origin = attempts.iter().map(|a| a.started_us).min().unwrap_or(0);
        let at = |us: i64| Duration::from_micros(u64::try_from(us - origin).unwrap_or(0));
        let end_of = |a: &AttemptRecord| at(a.started_us) + a.usage.total();
        let wall = attempts.iter().map(end_of).max().unwrap_or_default();

        let mut lanes: Vec<Lane> = Vec::new();
        let mut lane_of: HashMap<(&str, Option<u32>), usize> = HashMap::new();
        let mut steps: Vec<StepTiming> = Vec::new();
        let mut step_of: HashMap<&str, usize> = HashMap::new();
        let mut sorted: Vec<&AttemptRecord> = attempts.iter().collect();
        sorted.sort_by_key(|a| (a.started_us, a.attempt));
        for a in &sorted {
            let lane = *lane_of.entry((&a.step, a.item)).or_insert_with(|| {
                lanes.push(Lane {
                    step: a.step.clone(),
                    item: a.item,
                    bars: Vec::new(),
                    critical: false,
                });
                lanes.len() - 1
            });
            lanes[lane].bars.push(Bar {
                attempt: a.attempt,
                start: at(a.started_us),
                queue_wait: a.usage.queue_wait,
                end: end_of(a),
                outcome: a
                    .outcome
                    .map_or(a.status.as_str(), OutcomeKind::as_str)
                    .to_owned(),
            });
            let i = *step_of.entry(&a.step).or_insert_with(|| {
                steps.push(StepTiming {
                    step: a.step.clone(),
                    component: a.component.clone().unwrap_or_default(),
                    start: at(a.started_us),
                    end: Duration::ZERO,
                    queue_wait: Duration::ZERO,
                    execution: Duration::ZERO,
                    units: 0,
                    attempts: 0,
                    retried: false,
                    failed: false,
                    share: 0.0,
                    critical: false,
                });
                steps.len() - 1
            });
            let s = &mut steps[i];
            s.end = s.end.max(end_of(a));
            s.queue_wait += a.usage.queue_wait;
            s.execution += a.usage.wall_time;
            s.attempts += 1;
            s.retried |= a.attempt > 1;
            if s.component.is_empty() {
                s.component = a.component.clone().unwrap_or_default();
            }
        }
        // Each unit's last attempt, found in one pass: a search per lane
        // would be quadratic, seconds for a 10,000-item fan-out.
        let mut last_of: HashMap<(&str, Option<u32>), &AttemptRecord> = HashMap::new();
        for a in &sorted {
            let slot = last_of.entry((&a.step, a.item)).or_insert(a);
            if a.attempt > slot.attempt {
                *slot = a;
            }
        }
        for lane in &lanes {
            let step = &mut steps[step_of[lane.step.as_str()]];
            step.units += 1;
            let last = last_of.get(&(lane.step.as_str(), lane.item));
            step.failed |= last.is_some_and(|a| a.status == AttemptStatus::Failed);
        }
        for s in &mut steps {
            s.share = ratio(s.end.saturating_sub(s.start), wall);
        }

        let critical_path = definition.map_or_else(Vec::new, |d| critical_path(d, &steps));
        for s in &mut steps {
            s.critical = critical_path.contains(&s.step);
        }
        for lane in &mut lanes {
            lane.critical = critical_path.contains(&lane.step);
        }
        let insights = insights(&sorted, &steps, &critical_path);
        let admission_wait = history
            .summary
            .started_at
            .or(history.attempts.iter().map(|a| a.started_at).min())
            .map_or(Duration::ZERO, |s| {
                Duration::from_millis(u64::try_from(s - history.summary.accepted_at).unwrap_or(0))
            });
        RunAnalysis {
            run: history.summary.id,
            workflow: history.summary.workflow.clone(),
            status: history.summary.status.as_str().to_owned(),
            wall,
            admission_wait,
            steps,
            critical_path,
            lanes,
            insights,
        }
    }

    /// The report as text, for a terminal.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "run {} of `{}`: {}, {} wall time (started {} after it was accepted)",
            self.run,
            self.workflow,
            self.status,
            ms(self.wall),
            ms(self.admission_wait)
        );
        if !self.critical_path.is_empty() {
            let _ = writeln!(out, "\ncritical path: {}", self.critical_path.join(" -> "));
        }
        let _ = writeln!(
            out,
            "\n{:<24} {:<20} {:>6} {:>9} {:>11} {:>11} {:>7}  NOTES",
            "STEP", "COMPONENT", "UNITS", "ATTEMPTS", "QUEUED", "EXECUTING", "SHARE"
        );
        for s in &self.steps {
            let mut notes = Vec::new();
            if s.critical {
                notes.push("critical path");
            }
            if s.retried {
                notes.push("retried");
            }
            if s.failed {
                notes.push("failed");
            }
            let _ = writeln!(
                out,
                "{:<24} {:<20} {:>6} {:>9} {:>11} {:>11} {:>6.1}%  {}",
                s.step,
                s.component,
                s.units,
                s.attempts,
                ms(s.queue_wait),
                ms(s.execution),
                s.share * 100.0,
                notes.join(", ")
            );
        }
        if self.insights.is_empty() {
            let _ = writeln!(
                out,
                "\nnothing stands out: no step came near a limit, none was retried"
            );
        } else {
            let _ = writeln!(out, "\ninsights:");
            for i in &self.insights {
                let _ = writeln!(out, "  - {}", i.message);
            }
        }
        out
    }
}

/// The critical path: from the step that ended last, back through the need
/// that ended last each time.
fn critical_path(definition: &Definition, steps: &[StepTiming]) -> Vec<String> {
    let Ok(workflow) = Workflow::from_str(&definition.source, definition.path.as_ref()) else {
        return Vec::new();
    };
    let ends: HashMap<&str, Duration> = steps.iter().map(|s| (s.step.as_str(), s.end)).collect();
    let plan = workflow.plan();
    let mut current = steps.iter().max_by_key(|s| s.end).map(|s| s.step.clone());
    let mut path = Vec::new();
    while let Some(step) = current.take() {
        let Some(i) = workflow.step_index(&step) else {
            break;
        };
        current = plan
            .needs(i)
            .iter()
            .map(|&j| &*workflow.steps[j].id)
            .filter_map(|id| Some((id, *ends.get(id)?)))
            .max_by_key(|(_, end)| *end)
            .map(|(id, _)| id.to_owned());
        path.push(step);
    }
    path.reverse();
    path
}

fn insights(attempts: &[&AttemptRecord], steps: &[StepTiming], critical: &[String]) -> Vec<Insight> {
    let mut found = Vec::new();
    // The heaviest step on the critical path, when it dominates.
    if let Some(s) = steps
        .iter()
        .filter(|s| critical.contains(&s.step))
        .max_by(|a, b| a.share.total_cmp(&b.share))
        .filter(|s| s.share >= 0.5 && critical.len() > 1)
    {
        found.push(Insight {
            step: s.step.clone(),
            item: None,
            kind: "bottleneck",
            share: s.share,
            message: format!(
                "`{}` took {:.0}% of the run's wall time on the critical path: it is the bottleneck; \
                 speed it up, split it, or run its work as a for_each",
                s.step,
                s.share * 100.0
            ),
        });
    }
    // The last attempt of each unit, against its limits: the most used first.
    let mut last: BTreeMap<(&str, Option<u32>), &AttemptRecord> = BTreeMap::new();
    for a in attempts {
        let slot = last.entry((&a.step, a.item)).or_insert(a);
        if a.attempt > slot.attempt {
            *slot = a;
        }
    }
    let mut near = Vec::new();
    for a in last.values() {
        let unit = match a.item {
            Some(i) => format!("`{}` (item {i})", a.step),
            None => format!("`{}`", a.step),
        };
        let hit = a.outcome.map(OutcomeKind::as_str);
        // What is measured, the setting that limits it, use, limit, and
        // whether the attempt ended on it. Time is limited by whichever
        // level of the timeout hierarchy came first.
        let time_setting = match a.timeout_level {
            Some(TimeoutLevel::Workflow) => "the workflow's `timeout`",
            Some(TimeoutLevel::Global) => "`global` in the `[timeouts]` of stepbox.toml",
            Some(TimeoutLevel::Parent) => "the calling step's `timeout`",
            Some(TimeoutLevel::Step) | None => "`timeout` for this step",
        };
        let checks = [
            (
                "fuel",
                "`fuel` for this step",
                a.usage.fuel_consumed as f64,
                a.limits.fuel as f64,
                hit == Some("out-of-fuel"),
            ),
            (
                "memory",
                "`memory` for this step",
                a.usage.peak_memory as f64,
                a.limits.memory as f64,
                hit == Some("memory-limit"),
            ),
            (
                "time",
                time_setting,
                a.usage.total().as_secs_f64(),
                a.limits.time.as_secs_f64(),
                hit == Some("timeout"),
            ),
            (
                "scratch",
                "`scratch` for this step",
                a.usage.peak_scratch as f64,
                a.limits.scratch as f64,
                hit == Some("scratch-limit"),
            ),
        ];
        for (kind, field, used, limit, exceeded) in checks {
            if limit <= 0.0 {
                continue;
            }
            let share = used / limit;
            if !exceeded && share < NEAR_LIMIT {
                continue;
            }
            let (used_text, limit_text) = match kind {
                "memory" | "scratch" => (iec(used), iec(limit)),
                "time" => (
                    ms(Duration::from_secs_f64(used)),
                    ms(Duration::from_secs_f64(limit)),
                ),
                _ => (format!("{used:.0}"), format!("{limit:.0}")),
            };
            let message = if exceeded {
                format!(
                    "{unit} hit its {kind} limit ({limit_text}): raise {field} if the work is legitimate, \
                     or look at the step"
                )
            } else {
                format!(
                    "{unit} used {:.0}% of its {kind} limit ({used_text} of {limit_text}): raise {field} \
                     before it fails, or look at why it needs so much",
                    share * 100.0
                )
            };
            near.push(Insight {
                step: a.step.clone(),
                item: a.item,
                kind,
                share: if exceeded { share.max(1.0) } else { share },
                message,
            });
        }
    }
    near.sort_by(|a, b| b.share.total_cmp(&a.share));
    found.extend(near);
    for s in steps {
        if s.failed {
            found.push(Insight {
                step: s.step.clone(),
                item: None,
                kind: "failed",
                share: 0.0,
                message: format!(
                    "`{}` failed: see `stepbox show` for each attempt's outcome",
                    s.step
                ),
            });
        } else if s.retried {
            found.push(Insight {
                step: s.step.clone(),
                item: None,
                kind: "retried",
                share: 0.0,
                message: format!(
                    "`{}` needed {} attempts for {} unit(s): a flaky dependency, or a limit too tight",
                    s.step, s.attempts, s.units
                ),
            });
        }
    }
    found
}

/// Per component, over many runs.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentStats {
    /// The component.
    pub component: String,
    /// Attempts ended.
    pub attempts: u64,
    /// Share of them that did not complete.
    pub error_rate: f64,
    /// Duration percentiles: 50th, 95th, 99th.
    #[serde(serialize_with = "crate::limits::serialize_millis")]
    pub p50: Duration,
    /// 95th percentile.
    #[serde(serialize_with = "crate::limits::serialize_millis")]
    pub p95: Duration,
    /// 99th percentile.
    #[serde(serialize_with = "crate::limits::serialize_millis")]
    pub p99: Duration,
    /// Mean fuel per attempt.
    pub mean_fuel: u64,
    /// The largest peak memory.
    pub max_memory: u64,
}

/// Per-component statistics over the attempts of many runs, slowest (by
/// 95th percentile) first.
pub fn component_stats<'a>(attempts: impl IntoIterator<Item = &'a AttemptRecord>) -> Vec<ComponentStats> {
    let mut by: BTreeMap<String, Vec<&AttemptRecord>> = BTreeMap::new();
    for a in attempts {
        if let Some(component) = &a.component {
            by.entry(component.clone()).or_default().push(a);
        }
    }
    let mut stats: Vec<ComponentStats> = by
        .into_iter()
        .map(|(component, list)| {
            let mut durations: Vec<Duration> = list.iter().map(|a| a.usage.total()).collect();
            durations.sort();
            let pick = |q: f64| durations[((durations.len() - 1) as f64 * q).round() as usize];
            let errors = list
                .iter()
                .filter(|a| a.status != AttemptStatus::Completed)
                .count();
            ComponentStats {
                attempts: list.len() as u64,
                error_rate: errors as f64 / list.len() as f64,
                p50: pick(0.5),
                p95: pick(0.95),
                p99: pick(0.99),
                mean_fuel: list.iter().map(|a| a.usage.fuel_consumed).sum::<u64>() / list.len() as u64,
                max_memory: list.iter().map(|a| a.usage.peak_memory).max().unwrap_or(0),
                component,
            }
        })
        .collect();
    stats.sort_by_key(|s| std::cmp::Reverse(s.p95));
    stats
}

/// [`component_stats`] as a table.
pub fn component_table(stats: &[ComponentStats], runs: usize) -> String {
    let mut out = format!(
        "over {runs} runs, slowest first:\n{:<24} {:>9} {:>7} {:>10} {:>10} {:>10} {:>12} {:>10}\n",
        "COMPONENT", "ATTEMPTS", "ERRORS", "P50", "P95", "P99", "MEAN FUEL", "MAX MEM"
    );
    for s in stats {
        let _ = writeln!(
            out,
            "{:<24} {:>9} {:>6.1}% {:>10} {:>10} {:>10} {:>12} {:>10}",
            s.component,
            s.attempts,
            s.error_rate * 100.0,
            ms(s.p50),
            ms(s.p95),
            ms(s.p99),
            s.mean_fuel,
            iec(s.max_memory as f64)
        );
    }
    out
}

fn ratio(part: Duration, whole: Duration) -> f64 {
    if whole.is_zero() {
        0.0
    } else {
        part.as_secs_f64() / whole.as_secs_f64()
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}ms", d.as_secs_f64() * 1e3)
}

fn iec(bytes: f64) -> String {
    ByteSize(bytes as u64).display().iec().to_string()
}

#[cfg(test)]
mod tests;
