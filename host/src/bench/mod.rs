//! The benchmark suite behind `stepbox bench`: standard scenarios, their
//! figures with median and spread, baselines saved as JSON, and a
//! comparison that tells faster, same and slower apart with a threshold
//! that grows with the measured noise.
//!
//! ```
//! use stepbox::bench::{Better, Measurement, Verdict, compare};
//!
//! let before = Measurement::new("plan-10k", "ms", Better::Lower, vec![10.0, 10.2, 9.9, 10.1, 10.0]);
//! let after = Measurement::new("plan-10k", "ms", Better::Lower, vec![15.0, 15.1, 14.9, 15.2, 15.0]);
//! assert_eq!(compare(&before, &after).verdict, Verdict::Slower);
//! ```

mod loopback;
mod scenarios;
mod serve;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use self::scenarios::{Scenario, SuiteConfig, append_bench_event, run_scenario, scenarios};

/// Which way is good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Better {
    /// Times: lower is better.
    Lower,
    /// Rates: higher is better.
    Higher,
}

/// One scenario's repeated figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// The scenario.
    pub name: String,
    /// What the figure counts, such as `ms` or `workflows/s`.
    pub unit: String,
    /// Which way is good.
    pub better: Better,
    /// One figure per repeat.
    pub samples: Vec<f64>,
}

impl Measurement {
    /// A measurement of `samples`.
    pub fn new(name: &str, unit: &str, better: Better, samples: Vec<f64>) -> Measurement {
        Measurement {
            name: name.to_owned(),
            unit: unit.to_owned(),
            better,
            samples,
        }
    }

    fn sorted(&self) -> Vec<f64> {
        let mut xs = self.samples.clone();
        xs.sort_by(f64::total_cmp);
        xs
    }

    /// The median sample.
    pub fn median(&self) -> f64 {
        quantile(&self.sorted(), 0.5)
    }

    /// The smallest and largest samples.
    pub fn range(&self) -> (f64, f64) {
        let xs = self.sorted();
        (
            xs.first().copied().unwrap_or(0.0),
            xs.last().copied().unwrap_or(0.0),
        )
    }

    /// The noise, relative to the median: the interquartile range over the
    /// median (half the range with fewer than four samples).
    pub fn noise(&self) -> f64 {
        let xs = self.sorted();
        let median = quantile(&xs, 0.5);
        if xs.is_empty() || median == 0.0 {
            return 0.0;
        }
        let spread = if xs.len() >= 4 {
            quantile(&xs, 0.75) - quantile(&xs, 0.25)
        } else {
            (xs[xs.len() - 1] - xs[0]) / 2.0
        };
        (spread / median).abs()
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = (sorted.len() - 1) as f64 * q;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Where a figure moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Better by more than the threshold.
    Faster,
    /// Within the threshold.
    Same,
    /// Worse by more than the threshold: a regression.
    Slower,
}

/// A scenario against its baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The scenario.
    pub name: String,
    /// The baseline's median.
    pub baseline: f64,
    /// The current median.
    pub current: f64,
    /// How much worse (positive) or better (negative) the current figure
    /// is, relative to the baseline.
    pub change: f64,
    /// The change that counts: the larger of [`MIN_THRESHOLD`] and three
    /// times the noisier of the two measurements.
    pub threshold: f64,
    /// The verdict.
    pub verdict: Verdict,
}

/// No change smaller than this counts, however quiet the machine.
pub const MIN_THRESHOLD: f64 = 0.05;

/// Compares `current` with `baseline`.
pub fn compare(baseline: &Measurement, current: &Measurement) -> Comparison {
    let (b, c) = (baseline.median(), current.median());
    let worse = match current.better {
        Better::Lower => c / b - 1.0,
        Better::Higher => b / c - 1.0,
    };
    let change = if worse.is_finite() { worse } else { 0.0 };
    let threshold = (3.0 * baseline.noise().max(current.noise())).max(MIN_THRESHOLD);
    let verdict = if change > threshold {
        Verdict::Slower
    } else if change < -threshold {
        Verdict::Faster
    } else {
        Verdict::Same
    };
    Comparison {
        name: current.name.clone(),
        baseline: b,
        current: c,
        change,
        threshold,
        verdict,
    }
}

/// A suite's results, as `--save-baseline` writes them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// The stepbox version that measured them.
    pub version: String,
    /// When (RFC 3339).
    pub taken: String,
    /// On what.
    pub machine: String,
    /// Whether the scenarios ran at their quick sizes.
    pub quick: bool,
    /// The figures.
    pub scenarios: Vec<Measurement>,
}

impl Results {
    /// Reads results saved as JSON.
    ///
    /// # Errors
    ///
    /// A message naming the file when it cannot be read or is not results.
    pub fn load(path: &Path) -> Result<Results, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| format!("{} is not saved benchmark results: {e}", path.display()))
    }

    /// Writes them as JSON, creating the directory.
    ///
    /// # Errors
    ///
    /// A message naming the file when it cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// Each scenario present in both, against `baseline`.
    pub fn compare(&self, baseline: &Results) -> Vec<Comparison> {
        self.scenarios
            .iter()
            .filter_map(|c| {
                let b = baseline.scenarios.iter().find(|b| b.name == c.name)?;
                Some(compare(b, c))
            })
            .collect()
    }
}

/// This machine, in a few words: CPUs, memory, OS.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or_else(
            || "? memory".into(),
            |kib| format!("{:.0} GiB", kib as f64 / 1048576.0),
        );
    format!(
        "{cpus} CPUs, {memory}, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(samples: &[f64]) -> Measurement {
        Measurement::new("s", "ms", Better::Lower, samples.to_vec())
    }

    #[test]
    fn an_artificially_slowed_scenario_is_a_regression() {
        let base = m(&[100.0, 102.0, 98.0, 101.0, 99.0]);
        let slowed = m(&[150.0, 153.0, 147.0, 151.0, 149.0]);
        let c = compare(&base, &slowed);
        assert_eq!(c.verdict, Verdict::Slower);
        assert!((c.change - 0.5).abs() < 1e-9);
    }

    #[test]
    fn an_unchanged_scenario_within_its_noise_is_the_same() {
        // 10 % apart, but each measurement is noisy (about 8 % IQR).
        let base = m(&[100.0, 92.0, 108.0, 95.0, 104.0]);
        let again = m(&[110.0, 101.0, 118.0, 104.0, 113.0]);
        let c = compare(&base, &again);
        assert_eq!(c.verdict, Verdict::Same, "{c:?}");
        assert!(c.threshold > 0.1);
    }

    #[test]
    fn quiet_measurements_still_need_five_percent() {
        let c = compare(&m(&[100.0; 5]), &m(&[104.0; 5]));
        assert_eq!((c.verdict, c.threshold), (Verdict::Same, MIN_THRESHOLD));
    }

    #[test]
    fn for_rates_higher_is_better() {
        let rate = |xs: &[f64]| Measurement::new("r", "workflows/s", Better::Higher, xs.to_vec());
        let c = compare(&rate(&[1000.0; 5]), &rate(&[700.0; 5]));
        assert_eq!(c.verdict, Verdict::Slower);
        let c = compare(&rate(&[1000.0; 5]), &rate(&[1500.0; 5]));
        assert_eq!(c.verdict, Verdict::Faster);
    }

    #[test]
    fn results_round_trip_through_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b/base.json");
        let results = Results {
            version: "0".into(),
            taken: "now".into(),
            machine: machine(),
            quick: true,
            scenarios: vec![m(&[1.0, 2.0])],
        };
        results.save(&path).unwrap();
        let back = Results::load(&path).unwrap();
        assert_eq!(back.scenarios, results.scenarios);
        assert!(
            Results::load(&dir.path().join("nope.json"))
                .unwrap_err()
                .contains("nope.json")
        );
    }
}
