//! `stepbox run`, `validate` and `plan`: workflows from files.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytesize::ByteSize;
use stepbox::limits::{parse_duration, parse_size};
use stepbox::scheduler::{RunStatus, SchedulerConfig, SubmitError};
use stepbox::workflow::Workflow;

use super::journal::{finish, print_report, report_code, worst};
use super::step::{describe_source, read_input};
use super::{CliError, GlobalArgs, exit};

/// `stepbox validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateCommand {
    /// Workflow files (YAML or JSON)
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// `stepbox plan`.
#[derive(Debug, clap::Args)]
pub struct PlanCommand {
    /// The workflow file (YAML or JSON)
    file: PathBuf,
}

/// `stepbox run`.
#[derive(Debug, clap::Args)]
#[command(after_help = super::exit::TABLE)]
pub struct RunCommand {
    /// Workflow files (YAML or JSON); several run at once
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The workflow input JSON: inline, @FILE to read a file, or - to read stdin
    #[arg(long, short, default_value = "{}", value_name = "JSON|@FILE|-")]
    input: String,
    /// Print each run's full report (steps, attempts, outcomes, usage) as JSON
    #[arg(long)]
    json: bool,
    /// Run each file this many times
    #[arg(long, default_value_t = 1, value_name = "N")]
    repeat: usize,
    /// Keep at most this many runs submitted at once [default: all]
    #[arg(long, value_name = "M")]
    parallel: Option<usize>,
    #[command(flatten)]
    quotas: QuotaArgs,
}

/// The host's quotas, each a flag.
#[derive(Debug, clap::Args)]
struct QuotaArgs {
    /// Workflows running at once [default: 256]
    #[arg(long, value_name = "N")]
    max_workflows: Option<usize>,
    /// Workflows waiting for admission; beyond it submissions are refused [default: 10000]
    #[arg(long, value_name = "N")]
    max_queued: Option<usize>,
    /// Step instances running at once [default: 64]
    #[arg(long, value_name = "N")]
    max_instances: Option<usize>,
    /// Total memory limits of running instances, such as 4GiB [default: 4GiB]
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    memory_budget: Option<ByteSize>,
    /// Steps per workflow [default: 10000]
    #[arg(long, value_name = "N")]
    max_steps: Option<usize>,
    /// Items of one for_each [default: 10000]
    #[arg(long, value_name = "N")]
    max_fan_out: Option<usize>,
    /// Bytes of state per run [default: 1MiB]
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    max_state: Option<ByteSize>,
    /// Host-wide limit on a run, from submission: the outermost timeout
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    global_timeout: Option<Duration>,
}

impl QuotaArgs {
    /// Whether any flag was given.
    fn any(&self) -> bool {
        self.max_workflows.is_some()
            || self.max_queued.is_some()
            || self.max_instances.is_some()
            || self.memory_budget.is_some()
            || self.max_steps.is_some()
            || self.max_fan_out.is_some()
            || self.max_state.is_some()
            || self.global_timeout.is_some()
    }

    /// `base` (from the configuration file) with every flag given applied over it.
    fn config(&self, base: SchedulerConfig) -> SchedulerConfig {
        let mut quotas = base.quotas;
        let set = |slot: &mut usize, value: Option<usize>| {
            if let Some(v) = value {
                *slot = v;
            }
        };
        set(&mut quotas.max_workflows, self.max_workflows);
        set(&mut quotas.max_queued, self.max_queued);
        set(&mut quotas.max_instances, self.max_instances);
        set(&mut quotas.max_steps_per_workflow, self.max_steps);
        set(&mut quotas.max_fan_out, self.max_fan_out);
        set(
            &mut quotas.max_state_bytes,
            self.max_state.map(|s| s.as_u64() as usize),
        );
        if let Some(budget) = self.memory_budget {
            quotas.memory_budget = budget;
        }
        SchedulerConfig {
            quotas,
            global_timeout: self.global_timeout.or(base.global_timeout),
            // The user running the CLI owns its environment.
            secrets_from_env: true,
            ..base
        }
    }
}

impl ValidateCommand {
    pub fn run(self, global: &GlobalArgs) -> Result<u8, CliError> {
        let sandbox = global.sandbox()?;
        for file in &self.files {
            let workflow = Workflow::from_file(file)?;
            workflow
                .check_components(|step| sandbox.load_file(&step.component).map_err(|e| e.to_string()))?;
            println!("{}: ok ({} steps)", file.display(), workflow.steps.len());
        }
        Ok(exit::SUCCESS)
    }
}

impl PlanCommand {
    pub fn run(self) -> Result<u8, CliError> {
        let workflow = Workflow::from_file(&self.file)?;
        print!("{}", workflow.plan().describe(&workflow));
        Ok(exit::SUCCESS)
    }
}

impl RunCommand {
    pub async fn run(self, global: &GlobalArgs) -> Result<u8, CliError> {
        let input = read_input(&self.input)?;
        let input: serde_json::Value = serde_json::from_slice(&input)
            .with_context(|| format!("input is not valid JSON ({})", describe_source(&self.input)))?;
        if let Some(remote) = global.remote()? {
            if self.parallel.is_some() || self.quotas.any() {
                return Err(anyhow::anyhow!(
                    "--parallel and the quota flags apply to a local host; a server has its own configuration"
                )
                .into());
            }
            return remote.run(&self.files, &input, self.repeat, self.json).await;
        }
        let workflows: Vec<Workflow> = self
            .files
            .iter()
            .map(|f| Workflow::from_file(f))
            .collect::<Result<_, _>>()?;
        let mut config = self.quotas.config(global.host_config()?.scheduler);
        if let Some(parallel) = self.parallel {
            config.quotas.max_workflows = config.quotas.max_workflows.min(parallel.max(1));
        }
        let total = workflows.len() * self.repeat;
        // Every run of this command is submitted at once: let them all queue.
        let host = global.host(config, total).await?;
        let scheduler = host.scheduler().clone();
        let prepared = {
            let scheduler = scheduler.clone();
            tokio::task::spawn_blocking(move || {
                workflows
                    .into_iter()
                    .map(|w| scheduler.prepare(w))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(CliError::host)??
        };

        let started = Instant::now();
        let resumed = host.resume_incomplete().map_err(CliError::host)?;
        // All of them are recorded as accepted, in one commit, before any runs.
        let runs = (0..self.repeat).flat_map(|_| prepared.iter().map(|w| (Arc::clone(w), input.clone())));
        let handles = host.submit_all(runs).map_err(|e| CliError {
            code: match e {
                SubmitError::Quota(_) => exit::for_outcome(stepbox::OutcomeKind::QuotaExceeded),
                SubmitError::Journal(_) => exit::JOURNAL,
                SubmitError::ShuttingDown => exit::HOST_FAILURE,
            },
            error: e.into(),
        })?;
        let resumed = tokio::spawn(async move {
            for handle in resumed {
                let report = handle.wait().await;
                let why = report
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                eprintln!(
                    "resumed run {} of `{}`: {}{why}",
                    report.run_id,
                    report.workflow,
                    serde_json::to_value(report.status)
                        .unwrap_or_default()
                        .as_str()
                        .unwrap_or("?")
                );
            }
        });
        let progress = progress_bar(total);
        let mut code = exit::SUCCESS;
        let mut ok = 0;
        for handle in handles {
            // Reports are printed and dropped as they come: a long run keeps no history in memory.
            let report = handle.wait().await;
            print_report(&report, self.json)?;
            ok += usize::from(report.status == RunStatus::Succeeded);
            code = worst(code, report_code(&report));
            progress.inc(1);
        }
        progress.finish_and_clear();
        let elapsed = started.elapsed();
        let _ = resumed.await;
        if total > 1 {
            eprintln!(
                "{total} runs: {ok} succeeded, {} did not, in {:.3}s ({:.0} runs/s)",
                total - ok,
                elapsed.as_secs_f64(),
                total as f64 / elapsed.as_secs_f64()
            );
        }
        finish(&host, code).await
    }
}

/// A progress bar on stderr for many runs on a terminal; hidden otherwise.
fn progress_bar(total: usize) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if total < 2 || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} runs, {per_sec}, eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}
