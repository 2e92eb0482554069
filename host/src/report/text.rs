//! Runs and histories as plain text: what `stepbox runs` and `stepbox
//! show` print, locally or from a server (which renders the same text for
//! `Accept: text/plain`, so both print alike).

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytesize::ByteSize;

use crate::store::{HostSummary, Millis, RunHistory, RunSummary};

/// A journal time as RFC 3339, to the millisecond.
///
/// ```
/// assert_eq!(stepbox::report::text::timestamp(1_000), "1970-01-01T00:00:01.000Z");
/// ```
pub fn timestamp(ms: Millis) -> String {
    let at: SystemTime = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

/// The table `stepbox runs` prints: a header line, then a line per run.
pub fn runs_table(runs: &[RunSummary]) -> String {
    let mut out = format!(
        "{:>8}  {:<11}  {:<24}  {:<24}  {:>10}  ERROR\n",
        "RUN", "STATUS", "WORKFLOW", "ACCEPTED", "TOOK"
    );
    for run in runs {
        let took = match (run.started_at, run.finished_at) {
            (Some(s), Some(f)) => format!("{}ms", f - s),
            _ => "-".into(),
        };
        // Writing into a String cannot fail.
        let _ = writeln!(
            out,
            "{:>8}  {:<11}  {:<24}  {:<24}  {:>10}  {}",
            run.id,
            run.status.as_str(),
            run.workflow,
            timestamp(run.accepted_at),
            took,
            run.error.as_deref().unwrap_or("")
        );
    }
    out
}

/// What `stepbox show` prints of a run: its summary, every attempt, its state.
pub fn history_text(history: &RunHistory) -> String {
    let r = &history.summary;
    let text = |b: &Option<Vec<u8>>| match b {
        Some(b) => String::from_utf8_lossy(b).into_owned(),
        None if r.collected => "(removed by retention)".into(),
        None => "-".into(),
    };
    let mut out = String::new();
    let lines = [
        format!("run {} of `{}` ({})", r.id, r.workflow, r.workflow_digest),
        format!("status:   {}", r.status),
        format!("accepted: {}", timestamp(r.accepted_at)),
        format!("started:  {}", r.started_at.map_or("-".into(), timestamp)),
        format!("finished: {}", r.finished_at.map_or("-".into(), timestamp)),
        format!("input:    {}", text(&history.input)),
        format!("output:   {}", text(&history.output)),
    ];
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    if let Some(error) = &r.error {
        let _ = writeln!(out, "error:    {error}");
    }
    let _ = writeln!(
        out,
        "\n{:<20} {:>5} {:>3}  {:<11} {:<15} {:>10} {:>9} {:>12} {:>10} {:>21}  STARTED",
        "STEP", "ITEM", "#", "STATUS", "OUTCOME", "DURATION", "QUEUED", "FUEL", "PEAK MEM", "PEAK TMP/LIMIT"
    );
    for a in &history.attempts {
        let _ = writeln!(
            out,
            "{:<20} {:>5} {:>3}  {:<11} {:<15} {:>10} {:>9} {:>12} {:>10} {:>21}  {}",
            a.step,
            a.item.map_or("-".into(), |i| i.to_string()),
            a.attempt,
            a.status.as_str(),
            a.outcome.map_or("-", |k| k.as_str()),
            format!("{:.2}ms", a.usage.total().as_secs_f64() * 1e3),
            format!("{:.2}ms", a.usage.queue_wait.as_secs_f64() * 1e3),
            a.usage.fuel_consumed,
            ByteSize(a.usage.peak_memory).display().iec().to_string(),
            match a.limits.scratch {
                // Journals from before the scratch quota recorded none.
                0 => "-".to_owned(),
                limit => format!(
                    "{}/{}",
                    ByteSize(a.usage.peak_scratch).display().iec(),
                    ByteSize(limit).display().iec()
                ),
            },
            timestamp(a.started_at)
        );
        if let Some(message) = &a.message {
            let _ = writeln!(out, "{:<20} {message}", "");
        }
    }
    if !history.state.is_empty() {
        let _ = writeln!(out, "\nstate:");
        for (key, value) in &history.state {
            let _ = writeln!(out, "  {key} = {value}");
        }
    }
    out
}

/// The table `stepbox hosts` prints.
pub fn hosts_table(hosts: &[HostSummary]) -> String {
    let mut out = format!(
        "{:<40}  {:>6}  {:<24}  LEASE UNTIL\n",
        "HOST", "RUNS", "HEARTBEAT"
    );
    for host in hosts {
        let _ = writeln!(
            out,
            "{:<40}  {:>6}  {:<24}  {}",
            host.owner,
            host.runs,
            host.heartbeat_at.map_or("-".into(), timestamp),
            host.lease_until.map_or("-".into(), timestamp)
        );
    }
    out
}
