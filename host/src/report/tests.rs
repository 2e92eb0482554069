use std::time::Duration;

use super::*;
use crate::outcome::Usage;
use crate::policy::TimeoutLevel;
use crate::store::{AttemptLimits, RunState, RunSummary};

fn attempt(step: &str, item: Option<u32>, n: u32, start_ms: i64, ms: u64, outcome: &str) -> AttemptRecord {
    AttemptRecord {
        step: step.into(),
        item,
        attempt: n,
        component: Some(format!("{step}.wasm")),
        limits: AttemptLimits {
            fuel: 1_000_000,
            memory: 10 << 20,
            time: Duration::from_secs(10),
            scratch: 64 << 20,
        },
        status: if outcome == "completed" {
            AttemptStatus::Completed
        } else {
            AttemptStatus::Failed
        },
        last: true,
        outcome: crate::OutcomeKind::from_name(outcome),
        message: None,
        timeout_level: None,
        started_at: start_ms,
        started_us: start_ms * 1000,
        finished_at: Some(start_ms + ms as i64),
        usage: Usage {
            queue_wait: Duration::from_millis(ms) / 10,
            wall_time: Duration::from_millis(ms) - Duration::from_millis(ms) / 10,
            fuel_consumed: 1000,
            peak_memory: 1 << 20,
            ..Usage::default()
        },
        output: None,
        log: None,
    }
}

fn history(attempts: Vec<AttemptRecord>) -> RunHistory {
    RunHistory {
        summary: RunSummary {
            id: 7,
            workflow: "w".into(),
            workflow_digest: "d".into(),
            status: RunState::Succeeded,
            accepted_at: 0,
            started_at: Some(0),
            finished_at: Some(1000),
            error: None,
            collected: false,
            tenant: None,
        },
        input: None,
        output: None,
        attempts,
        state: Vec::new(),
    }
}

fn definition(yaml: &str) -> Definition {
    Definition {
        name: "w".into(),
        path: "w.yaml".into(),
        source: yaml.into(),
    }
}

const DIAMOND: &str = "name: w\nsteps:\n  - id: a\n    component: a.wasm\n  - id: fast\n    component: f.wasm\n    needs: [a]\n  - id: slow\n    component: s.wasm\n    needs: [a]\n  - id: z\n    component: z.wasm\n    needs: [fast, slow]\n";

#[test]
fn the_critical_path_goes_through_the_slow_branch_and_names_the_bottleneck() {
    let h = history(vec![
        attempt("a", None, 1, 0, 10, "completed"),
        attempt("fast", None, 1, 10, 5, "completed"),
        attempt("slow", None, 1, 10, 300, "completed"),
        attempt("z", None, 1, 310, 10, "completed"),
    ]);
    let analysis = RunAnalysis::new(&h, Some(&definition(DIAMOND)));
    assert_eq!(analysis.critical_path, ["a", "slow", "z"]);
    assert_eq!(analysis.wall, Duration::from_millis(320));
    let bottleneck = &analysis.insights[0];
    assert_eq!(
        (bottleneck.kind, bottleneck.step.as_str()),
        ("bottleneck", "slow")
    );
    let slow = analysis.steps.iter().find(|s| s.step == "slow").unwrap();
    assert!((slow.share - 300.0 / 320.0).abs() < 1e-9);
    assert_eq!(slow.queue_wait, Duration::from_millis(30));
    assert_eq!(slow.execution, Duration::from_millis(270));
    assert!(analysis.text().contains("critical path: a -> slow -> z"));
}

#[test]
fn limits_used_past_eighty_percent_and_limits_hit_become_insights() {
    let mut near = attempt("near", None, 1, 0, 10, "completed");
    near.usage.peak_memory = 9 << 20; // 90 % of 10 MiB
    let mut hit = attempt("hit", None, 1, 0, 10, "out-of-fuel");
    hit.usage.fuel_consumed = 1_000_000;
    let calm = attempt("calm", None, 1, 0, 10, "completed");
    let analysis = RunAnalysis::new(&history(vec![near, hit, calm]), None);
    let kinds: Vec<(&str, &str)> = analysis
        .insights
        .iter()
        .map(|i| (i.step.as_str(), i.kind))
        .collect();
    assert!(kinds.contains(&("near", "memory")), "{kinds:?}");
    assert!(kinds.contains(&("hit", "fuel")), "{kinds:?}");
    assert!(kinds.contains(&("hit", "failed")), "{kinds:?}");
    assert!(!kinds.iter().any(|(s, _)| *s == "calm"), "{kinds:?}");
    let memory = analysis.insights.iter().find(|i| i.kind == "memory").unwrap();
    assert!(
        memory.message.contains("90%") && memory.message.contains("raise `memory`"),
        "{}",
        memory.message
    );
}

#[test]
fn a_timeout_insight_advises_the_setting_of_the_level_that_fired() {
    let advice = |level: Option<TimeoutLevel>| {
        let mut hit = attempt("nap", None, 1, 0, 1000, "timeout");
        hit.timeout_level = level;
        let analysis = RunAnalysis::new(&history(vec![hit]), None);
        let time = analysis.insights.iter().find(|i| i.kind == "time").unwrap();
        time.message.clone()
    };
    assert!(advice(Some(TimeoutLevel::Step)).contains("raise `timeout` for this step"));
    assert!(advice(None).contains("raise `timeout` for this step"));
    let workflow = advice(Some(TimeoutLevel::Workflow));
    assert!(workflow.contains("raise the workflow's `timeout`"), "{workflow}");
    assert!(advice(Some(TimeoutLevel::Global)).contains("`[timeouts]`"));
    assert!(advice(Some(TimeoutLevel::Parent)).contains("the calling step's `timeout`"));
}

#[test]
fn retried_steps_are_pointed_out() {
    let mut first = attempt("flaky", None, 1, 0, 5, "retryable");
    first.last = false;
    let analysis = RunAnalysis::new(
        &history(vec![first, attempt("flaky", None, 2, 6, 5, "completed")]),
        None,
    );
    assert!(analysis.steps[0].retried && !analysis.steps[0].failed);
    assert_eq!(analysis.lanes[0].bars.len(), 2);
    assert!(analysis.insights.iter().any(|i| i.kind == "retried"));
}

#[test]
fn the_timeline_has_a_lane_per_unit_and_a_bar_per_attempt_at_10_and_1000_units() {
    for items in [10u32, 1000] {
        let mut attempts = vec![attempt("split", None, 1, 0, 5, "completed")];
        for i in 0..items {
            attempts.push(attempt(
                "count",
                Some(i),
                1,
                5 + i64::from(i % 50),
                3,
                "completed",
            ));
        }
        attempts.push(attempt("merge", None, 1, 60, 4, "failed"));
        let yaml = "name: w\nsteps:\n  - id: split\n    component: s.wasm\n  - id: count\n    component: c.wasm\n    needs: [split]\n    for_each: ${steps.split}\n  - id: merge\n    component: m.wasm\n    needs: [count]\n";
        let analysis = RunAnalysis::new(&history(attempts), Some(&definition(yaml)));
        let svg = svg::render(&analysis);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        let lanes = items as usize + 2;
        assert_eq!(svg.matches(r#"<g class="lane""#).count(), lanes);
        assert_eq!(svg.matches(r#"class="exec""#).count(), lanes, "a bar per attempt");
        assert_eq!(
            svg.matches(r#"class="queue""#).count(),
            lanes,
            "queue waits drawn apart"
        );
        assert_eq!(
            svg.matches(r##"fill="#e53935""##).count(),
            2,
            "the failed bar, and the legend"
        );
        assert_eq!(
            svg.matches(r#"class="critical""#).count(),
            lanes,
            "every step is critical here"
        );
        let labels = svg.matches(r#"class="label""#).count();
        assert!(labels >= lanes.min(100) / 3, "{labels} labels for {lanes} lanes");
        let height: f64 = svg
            .split("height=\"")
            .nth(1)
            .and_then(|h| h.split('"').next())
            .unwrap()
            .parse()
            .unwrap();
        assert!(height <= 4200.0, "{height}");
        // Tags balance: every opened group and rect is closed.
        assert_eq!(svg.matches("<g ").count(), svg.matches("</g>").count());
        assert_eq!(svg.matches("<title>").count(), svg.matches("</title>").count());
    }
}

#[test]
fn component_statistics_put_the_slowest_first() {
    let mut attempts = Vec::new();
    for i in 0..100 {
        attempts.push(attempt("quick", None, 1, i, 1 + (i as u64 % 3), "completed"));
        attempts.push(attempt(
            "slow",
            None,
            1,
            i,
            50 + i as u64,
            if i % 10 == 0 { "failed" } else { "completed" },
        ));
    }
    let stats = component_stats(&attempts);
    assert_eq!(stats[0].component, "slow.wasm");
    assert!((stats[0].error_rate - 0.1).abs() < 1e-9);
    assert_eq!(stats[0].p50, Duration::from_millis(100));
    assert_eq!(stats[1].p99, Duration::from_millis(3));
    assert!(component_table(&stats, 100).contains("slow.wasm"));
}
