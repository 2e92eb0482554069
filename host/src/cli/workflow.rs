//! `stepbox run`, `validate` and `plan`: workflows from files.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytesize::ByteSize;
use stepbox::limits::{parse_duration, parse_size};
use stepbox::scheduler::{RunStatus, Scheduler, SchedulerConfig, WorkflowReport};
use stepbox::workflow::Workflow;

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
        config.quotas.max_queued = config.quotas.max_queued.max(total);
        let scheduler = Scheduler::new(global.sandbox()?, config).map_err(CliError::from)?;
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
        let mut handles = Vec::with_capacity(total);
        for _ in 0..self.repeat {
            for workflow in &prepared {
                handles.push(scheduler.submit(workflow, input.clone()).map_err(|e| CliError {
                    code: exit::for_outcome(stepbox::OutcomeKind::QuotaExceeded),
                    error: e.into(),
                })?);
            }
        }
        let cancels: Vec<_> = handles.iter().map(|h| h.cancel_token()).collect();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                cancels.iter().for_each(|c| c.cancel());
            }
        });
        let progress = progress_bar(total);
        let mut reports = Vec::with_capacity(total);
        for handle in handles {
            reports.push(handle.wait().await);
            progress.inc(1);
        }
        progress.finish_and_clear();
        let elapsed = started.elapsed();
        self.print(&reports)?;
        if total > 1 {
            let ok = reports
                .iter()
                .filter(|r| r.status == RunStatus::Succeeded)
                .count();
            eprintln!(
                "{total} runs: {ok} succeeded, {} did not, in {:.3}s ({:.0} runs/s)",
                total - ok,
                elapsed.as_secs_f64(),
                total as f64 / elapsed.as_secs_f64()
            );
        }
        Ok(reports
            .iter()
            .map(exit_code)
            .find(|&c| c != exit::SUCCESS)
            .unwrap_or(exit::SUCCESS))
    }

    fn print(&self, reports: &[WorkflowReport]) -> Result<(), CliError> {
        let mut out = std::io::stdout().lock();
        use std::io::Write;
        for report in reports {
            if self.json {
                serde_json::to_writer(&mut out, report).map_err(CliError::host)?;
                writeln!(out).map_err(CliError::host)?;
            } else if let Some(output) = &report.output {
                serde_json::to_writer(&mut out, output).map_err(CliError::host)?;
                writeln!(out).map_err(CliError::host)?;
            }
            if report.status != RunStatus::Succeeded {
                let why = report.error.as_deref().unwrap_or("no reason given");
                eprintln!("error: run {} of `{}`: {why}", report.run_id, report.workflow);
            }
        }
        Ok(())
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

fn exit_code(report: &WorkflowReport) -> u8 {
    match report.status {
        RunStatus::Succeeded => exit::SUCCESS,
        RunStatus::Cancelled => exit::for_outcome(stepbox::OutcomeKind::Cancelled),
        RunStatus::Failed => report.failed_kind.map_or(exit::HOST_FAILURE, exit::for_outcome),
    }
}
