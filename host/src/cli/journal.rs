//! The journal from the command line: opening it for a host (recovery,
//! retention, graceful shutdown) and `resume`, `runs`, `show` and `gc`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytesize::ByteSize;
use stepbox::config::{HostConfig, JournalSettings};
use stepbox::host::{Host, HostError, cutoff, open_reader};
use stepbox::limits::parse_duration;
use stepbox::scheduler::{RunStatus, SchedulerConfig, WorkflowReport};
use stepbox::store::{Durability, RunFilter, RunState, StoreError};

use super::{CliError, GlobalArgs, exit};

/// A journal failure ends the command with [`exit::JOURNAL`].
pub fn journal_error(error: StoreError) -> CliError {
    CliError {
        code: exit::JOURNAL,
        error: error.into(),
    }
}

/// A host failure ends the command with the code its cause calls for.
pub fn host_error(error: HostError) -> CliError {
    match error {
        HostError::Store(e) => journal_error(e),
        other => CliError::host(other),
    }
}

impl GlobalArgs {
    /// `[journal]` from the configuration, with `--db` and `--durability` over it.
    pub fn journal_settings(&self) -> Result<JournalSettings, CliError> {
        let mut settings = self.host_config()?.journal;
        if let Some(db) = &self.db {
            settings.db = db.clone();
        }
        if let Some(durability) = self.durability {
            settings.durability = durability;
        }
        Ok(settings)
    }

    /// Starts a host on the configuration, with `scheduler` for its
    /// scheduler's settings and room for `extra_queued` runs submitted at
    /// once; with `--metrics-file`, it keeps its metrics there.
    pub async fn host(&self, scheduler: SchedulerConfig, extra_queued: usize) -> Result<Arc<Host>, CliError> {
        let config = HostConfig {
            scheduler,
            journal: self.journal_settings()?,
            ..self.host_config()?
        };
        let host = Host::start_with_queue(self.sandbox()?, config, extra_queued)
            .await
            .map_err(host_error)?;
        let incomplete = host.incomplete();
        if incomplete > 0 {
            eprintln!(
                "resuming {incomplete} incomplete run{} from {}",
                if incomplete == 1 { "" } else { "s" },
                host.settings().db.display()
            );
        }
        if let Some(file) = &self.metrics_file {
            host.write_metrics_to(file.clone());
        }
        let host = Arc::new(host);
        host.shutdown_on_signals();
        Ok(host)
    }
}

/// `stepbox resume`.
#[derive(Debug, clap::Args)]
pub struct ResumeCommand {
    /// Print each run's full report as JSON
    #[arg(long)]
    json: bool,
}

impl ResumeCommand {
    pub async fn run(self, global: &GlobalArgs) -> Result<u8, CliError> {
        let config = SchedulerConfig {
            // As for `run`: the user resuming owns the environment.
            secrets_from_env: true,
            ..global.host_config()?.scheduler
        };
        let host = global.host(config, 0).await?;
        if host.settings().durability == Durability::Memory {
            return Err(anyhow::anyhow!("there is nothing to resume under `memory` durability").into());
        }
        if host.incomplete() == 0 {
            eprintln!("no incomplete runs in {}", host.settings().db.display());
            host.close().await.map_err(host_error)?;
            return Ok(exit::SUCCESS);
        }
        let runs = host.resume_incomplete().map_err(CliError::host)?;
        let mut code = exit::SUCCESS;
        for run in runs {
            let report = run.wait().await;
            print_report(&report, self.json)?;
            code = worst(code, report_code(&report));
        }
        finish(&host, code).await
    }
}

/// Closes the host and picks the exit code: 0 after a graceful shutdown
/// (interrupted runs are safe in the journal), the journal's failure if it
/// failed, else `code`.
pub async fn finish(host: &Host, code: u8) -> Result<u8, CliError> {
    host.close().await.map_err(host_error)?;
    if host.is_stopping() {
        eprintln!("stopped; interrupted runs resume on the next start");
        return Ok(exit::SUCCESS);
    }
    Ok(code)
}

/// The first non-zero code wins.
pub fn worst(so_far: u8, next: u8) -> u8 {
    if so_far == exit::SUCCESS { next } else { so_far }
}

/// A run's exit code.
pub fn report_code(report: &WorkflowReport) -> u8 {
    match report.status {
        RunStatus::Succeeded => exit::SUCCESS,
        RunStatus::Cancelled => exit::for_outcome(stepbox::OutcomeKind::Cancelled),
        RunStatus::Interrupted => exit::HOST_FAILURE,
        RunStatus::Failed => report.failed_kind.map_or(exit::HOST_FAILURE, exit::for_outcome),
    }
}

/// Prints a run's output (or its whole report) on stdout, and why it did
/// not succeed on stderr.
pub fn print_report(report: &WorkflowReport, json: bool) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    if json {
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
    Ok(())
}

/// `stepbox runs`.
#[derive(Debug, clap::Args)]
pub struct RunsCommand {
    /// Only runs with this status (accepted, running, interrupted, succeeded, failed, cancelled); repeatable
    #[arg(long, value_name = "STATUS")]
    status: Vec<RunState>,
    /// Only runs of this workflow (by name)
    #[arg(long, value_name = "NAME")]
    workflow: Option<String>,
    /// At most this many, newest first
    #[arg(long, default_value_t = 50, value_name = "N")]
    limit: usize,
    /// One JSON object per line
    #[arg(long)]
    json: bool,
}

impl RunsCommand {
    pub async fn run(self, global: &GlobalArgs) -> Result<u8, CliError> {
        if let Some(remote) = global.remote()? {
            let status: Vec<String> = self.status.iter().map(|s| s.as_str().to_owned()).collect();
            return remote
                .runs(&status, self.workflow.as_deref(), self.limit, self.json)
                .await;
        }
        let settings = global.journal_settings()?;
        let store = open_reader(&settings).map_err(host_error)?;
        let runs = store
            .runs(&RunFilter {
                status: self.status,
                workflow: self.workflow,
                limit: Some(self.limit),
                ..RunFilter::default()
            })
            .map_err(journal_error)?;
        let mut out = std::io::stdout().lock();
        if self.json {
            for run in &runs {
                serde_json::to_writer(&mut out, run).map_err(CliError::host)?;
                writeln!(out).map_err(CliError::host)?;
            }
            return Ok(exit::SUCCESS);
        }
        write!(out, "{}", stepbox::report::text::runs_table(&runs)).map_err(CliError::host)?;
        Ok(exit::SUCCESS)
    }
}

/// `stepbox show`.
#[derive(Debug, clap::Args)]
pub struct ShowCommand {
    /// The run's id
    run: u64,
    /// The whole history as one JSON object
    #[arg(long)]
    json: bool,
}

impl ShowCommand {
    pub async fn run(self, global: &GlobalArgs) -> Result<u8, CliError> {
        if let Some(remote) = global.remote()? {
            return remote.show(self.run, self.json).await;
        }
        let settings = global.journal_settings()?;
        let store = open_reader(&settings).map_err(host_error)?;
        let history = store
            .history(self.run)
            .map_err(journal_error)?
            .with_context(|| format!("no run {} in {}", self.run, settings.db.display()))?;
        let mut out = std::io::stdout().lock();
        if self.json {
            serde_json::to_writer(&mut out, &history).map_err(CliError::host)?;
            writeln!(out).map_err(CliError::host)?;
            return Ok(exit::SUCCESS);
        }
        write!(out, "{}", stepbox::report::text::history_text(&history)).map_err(CliError::host)?;
        Ok(exit::SUCCESS)
    }
}

/// `stepbox gc`.
#[derive(Debug, clap::Args)]
pub struct GcCommand {
    /// Remove the payloads of runs finished longer ago than this, such as 7d [default: the configured retention]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    older_than: Option<Duration>,
}

impl GcCommand {
    pub fn run(self, global: &GlobalArgs) -> Result<u8, CliError> {
        let settings = global.journal_settings()?;
        let age = self.older_than.or(settings.retention).context(
            "say how old finished runs must be: --older-than DURATION, or `retention` under [journal] in stepbox.toml",
        )?;
        let stats = stepbox::host::collect(&settings, age).map_err(host_error)?;
        println!(
            "removed the payloads of {} finished run{} (their audit records stay); freed {}",
            stats.runs,
            if stats.runs == 1 { "" } else { "s" },
            ByteSize(stats.bytes_freed).display().iec()
        );
        Ok(exit::SUCCESS)
    }
}

/// `stepbox report`.
#[derive(Debug, clap::Args)]
pub struct ReportCommand {
    /// The run to report on
    #[arg(required_unless_present = "workflow", conflicts_with = "workflow")]
    run: Option<u64>,
    /// Report over the last runs of this workflow instead (per component)
    #[arg(long, value_name = "NAME")]
    workflow: Option<String>,
    /// How many of its runs
    #[arg(long, default_value_t = 100, value_name = "N", requires = "workflow")]
    last: usize,
    /// Also draw the run's timeline as an SVG picture in FILE
    #[arg(long, value_name = "FILE", conflicts_with = "workflow")]
    svg: Option<PathBuf>,
    /// The analysis as JSON
    #[arg(long)]
    json: bool,
}

impl ReportCommand {
    pub async fn run(self, global: &GlobalArgs) -> Result<u8, CliError> {
        if let Some(remote) = global.remote()? {
            let id = self
                .run
                .context("with --server, report on one run: `report --workflow` reads a local journal")?;
            return remote.report(id, self.svg.as_deref(), self.json).await;
        }
        let settings = global.journal_settings()?;
        let store = open_reader(&settings).map_err(host_error)?;
        if let Some(name) = &self.workflow {
            let runs = store
                .runs(&RunFilter {
                    workflow: Some(name.clone()),
                    limit: Some(self.last),
                    ..RunFilter::default()
                })
                .map_err(journal_error)?;
            if runs.is_empty() {
                return Err(anyhow::anyhow!("no runs of `{name}` in {}", settings.db.display()).into());
            }
            let mut attempts = Vec::new();
            for run in &runs {
                if let Some(history) = store.history(run.id).map_err(journal_error)? {
                    attempts.extend(history.attempts);
                }
            }
            let stats = stepbox::report::component_stats(&attempts);
            if self.json {
                println!("{}", serde_json::to_string(&stats).map_err(CliError::host)?);
            } else {
                print!("{}", stepbox::report::component_table(&stats, runs.len()));
            }
            return Ok(exit::SUCCESS);
        }
        let id = self.run.context("say which run, or --workflow NAME")?;
        let history = store
            .history(id)
            .map_err(journal_error)?
            .with_context(|| format!("no run {id} in {}", settings.db.display()))?;
        let definition = store
            .definition(&history.summary.workflow_digest)
            .map_err(journal_error)?;
        let analysis = stepbox::report::RunAnalysis::new(&history, definition.as_ref());
        if let Some(file) = &self.svg {
            std::fs::write(file, stepbox::report::svg::render(&analysis))
                .with_context(|| format!("cannot write {}", file.display()))
                .map_err(CliError::host)?;
        }
        if self.json {
            println!("{}", serde_json::to_string(&analysis).map_err(CliError::host)?);
        } else {
            print!("{}", analysis.text());
        }
        Ok(exit::SUCCESS)
    }
}

/// `stepbox hosts`.
#[derive(Debug, clap::Args)]
pub struct HostsCommand {
    /// One JSON object per line
    #[arg(long)]
    json: bool,
}

impl HostsCommand {
    pub async fn run(self, global: &GlobalArgs) -> Result<u8, CliError> {
        if let Some(remote) = global.remote()? {
            return remote.hosts(self.json).await;
        }
        let settings = global.journal_settings()?;
        let store = open_reader(&settings).map_err(host_error)?;
        let hosts = store.hosts().map_err(journal_error)?;
        let mut out = std::io::stdout().lock();
        if self.json {
            for host in &hosts {
                serde_json::to_writer(&mut out, host).map_err(CliError::host)?;
                writeln!(out).map_err(CliError::host)?;
            }
        } else {
            write!(out, "{}", stepbox::report::text::hosts_table(&hosts)).map_err(CliError::host)?;
        }
        Ok(exit::SUCCESS)
    }
}

/// `stepbox cancel`.
#[derive(Debug, clap::Args)]
pub struct CancelCommand {
    /// The run's id
    run: u64,
}

impl CancelCommand {
    pub async fn run(self, global: &GlobalArgs) -> Result<u8, CliError> {
        match global.remote()? {
            Some(remote) => remote.cancel(self.run).await,
            // A local run belongs to the process running it: only that
            // process's Ctrl-C stops it.
            None => Err(anyhow::anyhow!(
                "cancel talks to a server: give --server URL (or STEPBOX_SERVER); a local `stepbox run` stops with Ctrl-C"
            )
            .into()),
        }
    }
}

/// `stepbox metrics`.
#[derive(Debug, clap::Args)]
pub struct MetricsCommand {
    /// Only attempts that ended within this long, such as 1h [default: all]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    since: Option<Duration>,
}

impl MetricsCommand {
    pub async fn run(self, global: &GlobalArgs) -> Result<u8, CliError> {
        if let Some(remote) = global.remote()? {
            if self.since.is_some() {
                return Err(
                    anyhow::anyhow!("--since reads a local journal; a server's metrics are live").into(),
                );
            }
            return remote.metrics().await;
        }
        let settings = global.journal_settings()?;
        let store = open_reader(&settings).map_err(host_error)?;
        let since = self.since.map_or(0, cutoff);
        let metrics = stepbox::metrics::Metrics::from_store(&*store, since).map_err(journal_error)?;
        print!("{}", metrics.encode());
        Ok(exit::SUCCESS)
    }
}
