//! A run's timeline as an SVG picture (a Gantt chart): a lane per step or
//! `for_each` item, a bar per attempt coloured by outcome with its queue
//! wait drawn apart (pale, before the bar), the critical path marked, a time
//! axis and a legend. Lanes shrink to fit, so 10 steps and 1,000 items both
//! stay readable; every bar carries a tooltip with its details.

use std::fmt::Write as _;
use std::time::Duration;

use super::RunAnalysis;

const WIDTH: f64 = 1200.0;
const LABELS: f64 = 220.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 56.0;
const BOTTOM: f64 = 70.0;

/// Colours of the outcome kinds, and the legend's order.
const COLOURS: &[(&str, &str)] = &[
    ("completed", "#43a047"),
    ("retryable", "#fdd835"),
    ("failed", "#e53935"),
    ("invalid-input", "#c62828"),
    ("timeout", "#fb8c00"),
    ("out-of-fuel", "#8e24aa"),
    ("memory-limit", "#6d4c41"),
    ("trap", "#d81b60"),
    ("cancelled", "#9e9e9e"),
];

fn colour(outcome: &str) -> &'static str {
    COLOURS
        .iter()
        .find(|(k, _)| *k == outcome)
        .map_or("#757575", |(_, c)| c)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A tick step of 1, 2 or 5 times a power of ten, giving about 8 ticks.
fn tick(span: f64) -> f64 {
    let raw = (span / 8.0).max(1e-9);
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|t| *t >= raw)
        .unwrap_or(10.0 * power)
}

fn label_time(seconds: f64) -> String {
    if seconds >= 1.0 {
        format!("{seconds:.2}s")
    } else {
        format!("{:.2}ms", seconds * 1e3)
    }
}

/// The timeline of `analysis` as an SVG document.
pub fn render(analysis: &RunAnalysis) -> String {
    let lanes = &analysis.lanes;
    let n = lanes.len().max(1);
    // Lanes of 4 to 20 pixels, in a chart at most about 1,600 pixels high.
    let lane = (1600.0 / n as f64).clamp(4.0, 20.0);
    let height = TOP + lane * n as f64 + BOTTOM;
    let plot = WIDTH - LABELS - RIGHT;
    let span = analysis.wall.as_secs_f64().max(1e-6);
    let x = |d: Duration| LABELS + d.as_secs_f64() / span * plot;
    // Every lane is labelled when they are tall enough; else every k-th.
    let every = if lane >= 10.0 {
        1
    } else {
        (10.0 / lane).ceil() as usize
    };
    let font = (lane - 2.0).clamp(7.0, 12.0);

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        svg,
        r#"<title>run {} of {}</title><rect width="100%" height="100%" fill="white"/>"#,
        analysis.run,
        escape(&analysis.workflow)
    );
    let _ = write!(
        svg,
        r#"<text class="heading" x="10" y="20" font-size="15" font-weight="bold">run {} of `{}`: {}, {} wall time</text>"#,
        analysis.run,
        escape(&analysis.workflow),
        escape(&analysis.status),
        label_time(span)
    );
    if !analysis.critical_path.is_empty() {
        let _ = write!(
            svg,
            r##"<text x="10" y="38" fill="#1a237e">critical path (★): {}</text>"##,
            escape(&analysis.critical_path.join(" → "))
        );
    }

    // Time axis, with grid lines.
    let step = tick(span);
    let axis_y = TOP + lane * n as f64;
    let mut t = 0.0;
    while t <= span * 1.0001 {
        let px = LABELS + t / span * plot;
        let _ = write!(
            svg,
            r##"<line class="grid" x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{axis_y:.1}" stroke="#eeeeee"/><text class="tick" x="{px:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
            axis_y + 16.0,
            label_time(t)
        );
        t += step;
    }

    for (i, l) in lanes.iter().enumerate() {
        let y = TOP + lane * i as f64;
        let name = match l.item {
            Some(item) => format!("{}[{item}]", l.step),
            None => l.step.clone(),
        };
        let _ = write!(svg, r#"<g class="lane" data-step="{}">"#, escape(&name));
        if l.critical {
            let _ = write!(
                svg,
                r##"<rect class="critical" x="{LABELS}" y="{y:.1}" width="{plot:.1}" height="{lane:.1}" fill="#e8eaf6"/>"##
            );
        }
        if i % every == 0 {
            let star = if l.critical { "★ " } else { "" };
            let _ = write!(
                svg,
                r#"<text class="label" x="{:.1}" y="{:.1}" text-anchor="end" font-size="{font:.0}">{star}{}</text>"#,
                LABELS - 6.0,
                y + lane * 0.5 + font * 0.35,
                escape(&name)
            );
        }
        let (bar_y, bar_h) = (y + lane * 0.15, (lane * 0.7).max(2.0));
        for b in &l.bars {
            let start = x(b.start);
            let ready = x(b.start + b.queue_wait).max(start);
            let end = x(b.end).max(ready + 1.0);
            let tip = format!(
                "{name} attempt {}: {}, started at {}, queued {}, ran {}",
                b.attempt,
                b.outcome,
                label_time(b.start.as_secs_f64()),
                label_time(b.queue_wait.as_secs_f64()),
                label_time(b.end.saturating_sub(b.start + b.queue_wait).as_secs_f64())
            );
            if ready > start {
                let _ = write!(
                    svg,
                    r##"<rect class="queue" x="{start:.1}" y="{bar_y:.1}" width="{:.1}" height="{bar_h:.1}" fill="#cfd8dc"><title>{}</title></rect>"##,
                    ready - start,
                    escape(&tip)
                );
            }
            let stroke = if l.critical {
                r##" stroke="#1a237e" stroke-width="1""##
            } else {
                ""
            };
            let _ = write!(
                svg,
                r#"<rect class="exec" data-outcome="{}" x="{ready:.1}" y="{bar_y:.1}" width="{:.1}" height="{bar_h:.1}" fill="{}"{stroke}><title>{}</title></rect>"#,
                escape(&b.outcome),
                end - ready,
                colour(&b.outcome),
                escape(&tip)
            );
        }
        svg.push_str("</g>");
    }

    // Legend.
    let legend_y = axis_y + 40.0;
    let mut lx = LABELS;
    let _ = write!(
        svg,
        r##"<g class="legend"><rect x="{lx:.1}" y="{:.1}" width="14" height="10" fill="#cfd8dc"/><text x="{:.1}" y="{legend_y:.1}">queued</text>"##,
        legend_y - 9.0,
        lx + 18.0
    );
    lx += 80.0;
    for (kind, c) in COLOURS {
        let _ = write!(
            svg,
            r#"<rect x="{lx:.1}" y="{:.1}" width="14" height="10" fill="{c}"/><text x="{:.1}" y="{legend_y:.1}">{kind}</text>"#,
            legend_y - 9.0,
            lx + 18.0
        );
        lx += 18.0 + 8.0 * kind.len() as f64 + 16.0;
    }
    svg.push_str("</g></svg>\n");
    svg
}
