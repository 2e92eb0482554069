//! `stepbox bench`: the standard scenarios, a table, baselines and regressions.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use stepbox::bench::{Comparison, Results, SuiteConfig, Verdict, machine, run_scenario, scenarios};
use stepbox::limits::parse_duration;

use super::{CliError, GlobalArgs, exit};

/// `stepbox bench`.
#[derive(Debug, clap::Args)]
pub struct BenchCommand {
    /// Only these scenarios (comma-separated) [default: all]
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    scenarios: Vec<String>,
    /// Repetitions of each scenario
    #[arg(long, default_value_t = 5, value_name = "N")]
    repeat: usize,
    /// Smaller sizes: a quick check, not figures to publish
    #[arg(long)]
    quick: bool,
    /// Where the `hello.wasm`, `fib.wasm` and `fetch.wasm` example steps are
    #[arg(long, default_value = "target/wasm32-wasip2/release", value_name = "DIR")]
    components: PathBuf,
    /// Save the results as baseline NAME
    #[arg(long, value_name = "NAME")]
    save_baseline: Option<String>,
    /// Compare with baseline NAME; exit 5 if a scenario got slower
    #[arg(long, value_name = "NAME")]
    baseline: Option<String>,
    /// Where baselines live
    #[arg(long, default_value = ".stepbox/baselines", value_name = "DIR")]
    baseline_dir: PathBuf,
    /// Also write the results to FILE (JSON)
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Use results saved earlier (by --output or --save-baseline) instead of measuring
    #[arg(long, value_name = "FILE", conflicts_with_all = ["scenarios", "quick", "save_baseline"])]
    from: Option<PathBuf>,
    /// Print the results (and comparisons) as JSON
    #[arg(long)]
    json: bool,
    /// Sleep this long in each repetition of a scenario, such as step-overhead=50ms: a regression made on purpose
    #[arg(long, value_name = "NAME=DURATION", hide = true)]
    inject_delay: Vec<String>,
}

impl BenchCommand {
    pub async fn run(self, global: &GlobalArgs) -> Result<u8, CliError> {
        let results = match &self.from {
            Some(file) => Results::load(file).map_err(anyhow::Error::msg)?,
            None => self.measure(global).await?,
        };
        let baseline_file = |name: &str| self.baseline_dir.join(format!("{name}.json"));
        let comparisons = match &self.baseline {
            Some(name) => {
                let baseline = Results::load(&baseline_file(name)).map_err(anyhow::Error::msg)?;
                if baseline.quick != results.quick {
                    eprintln!("warning: comparing quick and full-size results; the sizes differ");
                }
                Some(results.compare(&baseline))
            }
            None => None,
        };
        if self.json {
            let doc = serde_json::json!({"results": results, "comparisons": comparisons});
            println!("{doc}");
        } else {
            print!("{}", table(&results, comparisons.as_deref()));
        }
        if let Some(name) = &self.save_baseline {
            let file = baseline_file(name);
            results.save(&file).map_err(anyhow::Error::msg)?;
            eprintln!("saved baseline `{name}` to {}", file.display());
        }
        if let Some(file) = &self.output {
            results.save(file).map_err(anyhow::Error::msg)?;
        }
        let slower: Vec<&str> = comparisons
            .iter()
            .flatten()
            .filter(|c| c.verdict == Verdict::Slower)
            .map(|c| c.name.as_str())
            .collect();
        if slower.is_empty() {
            Ok(exit::SUCCESS)
        } else {
            eprintln!("error: slower than the baseline: {}", slower.join(", "));
            Ok(exit::REGRESSION)
        }
    }

    async fn measure(&self, global: &GlobalArgs) -> Result<Results, CliError> {
        let chosen: Vec<_> = scenarios()
            .iter()
            .filter(|s| self.scenarios.is_empty() || self.scenarios.iter().any(|n| n == s.name))
            .collect();
        if let Some(unknown) = self
            .scenarios
            .iter()
            .find(|n| !scenarios().iter().any(|s| s.name == n.as_str()))
        {
            let known: Vec<&str> = scenarios().iter().map(|s| s.name).collect();
            return Err(anyhow::anyhow!("unknown scenario `{unknown}` (known: {})", known.join(", ")).into());
        }
        let mut inject_delay = HashMap::new();
        for spec in &self.inject_delay {
            let (name, delay) = spec
                .split_once('=')
                .with_context(|| format!("--inject-delay `{spec}`: expected NAME=DURATION"))?;
            let delay = parse_duration(delay).map_err(|e| anyhow::anyhow!("--inject-delay `{spec}`: {e}"))?;
            inject_delay.insert(name.to_owned(), delay);
        }
        let (trivial, fib, fetch) = (
            self.components.join("hello.wasm"),
            self.components.join("fib.wasm"),
            self.components.join("fetch.wasm"),
        );
        for c in [&trivial, &fib, &fetch] {
            if !c.is_file() {
                return Err(anyhow::anyhow!(
                    "{} is missing: build the example steps (cargo build --release --target wasm32-wasip2 -p hello -p fib -p fetch) or give --components",
                    c.display()
                )
                .into());
            }
        }
        // Workflow files in the scratch directory name them: absolute paths.
        let absolute = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
        let (trivial, fib, fetch) = (absolute(trivial), absolute(fib), absolute(fetch));
        let scratch = tempfile::tempdir().context("cannot create a scratch directory")?;
        let suite = SuiteConfig {
            trivial,
            fib,
            fetch,
            quick: self.quick,
            scratch: scratch.path().to_owned(),
            journal: global.db.clone().filter(|db| {
                matches!(
                    stepbox::host::StoreLocation::parse(db),
                    stepbox::host::StoreLocation::Postgres(_)
                )
            }),
            inject_delay,
        };
        let sandbox = global.sandbox()?;
        let repeat = self.repeat.max(1);
        let progress = progress((chosen.len() * repeat) as u64);
        let mut measured = Vec::new();
        for scenario in chosen {
            progress.set_message(scenario.name);
            let mut m = scenario.measurement();
            for _ in 0..repeat {
                let figure = run_scenario(scenario, &suite, &sandbox)
                    .await
                    .map_err(|e| anyhow::anyhow!("scenario `{}`: {e}", scenario.name))?;
                m.samples.push(figure);
                progress.inc(1);
            }
            measured.push(m);
        }
        progress.finish_and_clear();
        Ok(Results {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            taken: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            machine: machine(),
            quick: self.quick,
            scenarios: measured,
        })
    }
}

fn progress(total: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn figure(x: f64) -> String {
    if x >= 1000.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

fn table(results: &Results, comparisons: Option<&[Comparison]>) -> String {
    let mut out = format!(
        "{} on {}{}\n{:<18} {:>12} {:>23} {:>7}  {:<12}",
        results.taken,
        results.machine,
        if results.quick { " (quick sizes)" } else { "" },
        "SCENARIO",
        "MEDIAN",
        "RANGE",
        "NOISE",
        "UNIT"
    );
    if comparisons.is_some() {
        let _ = write!(
            out,
            " {:>12} {:>8} {:>9}  VERDICT",
            "BASELINE", "CHANGE", "THRESHOLD"
        );
    }
    out.push('\n');
    for m in &results.scenarios {
        let (lo, hi) = m.range();
        let _ = write!(
            out,
            "{:<18} {:>12} {:>23} {:>6.1}%  {:<12}",
            m.name,
            figure(m.median()),
            format!("{}-{}", figure(lo), figure(hi)),
            m.noise() * 100.0,
            m.unit
        );
        if let Some(c) = comparisons.and_then(|cs| cs.iter().find(|c| c.name == m.name)) {
            let verdict = match c.verdict {
                Verdict::Faster => "faster",
                Verdict::Same => "same",
                Verdict::Slower => "SLOWER",
            };
            let _ = write!(
                out,
                " {:>12} {:>+7.1}% {:>8.1}%  {verdict}",
                figure(c.baseline),
                -c.change * 100.0,
                c.threshold * 100.0
            );
        }
        out.push('\n');
    }
    out
}
