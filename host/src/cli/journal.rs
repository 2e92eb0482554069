//! The journal from the command line: opening it for a host (recovery,
//! retention, graceful shutdown) and `resume`, `runs`, `show` and `gc`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytesize::ByteSize;
use stepbox::config::JournalSettings;
use stepbox::limits::parse_duration;
use stepbox::scheduler::{RunHandle, RunStatus, Scheduler, SchedulerConfig, WorkflowReport};
use stepbox::store::{
    Durability, Journal, JournalConfig, Millis, RecoveredRun, RunFilter, RunState, SqliteReader, SqliteStore,
    StoreError, StoreReader, StoreWriter, now_millis,
};

use super::{CliError, GlobalArgs, exit};

/// A journal failure ends the command with [`exit::JOURNAL`].
pub fn journal_error(error: StoreError) -> CliError {
    CliError {
        code: exit::JOURNAL,
        error: error.into(),
    }
}

/// A host that executes: its scheduler, and the runs the journal gave back.
pub struct Host {
    pub scheduler: Scheduler,
    pub recovered: Vec<RecoveredRun>,
    pub settings: JournalSettings,
    metrics_file: Option<PathBuf>,
}

/// Writes `bytes` to `path` through a temporary file, so a reader never sees half of it.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
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

    /// Opens the journal (applying retention), claims its incomplete runs,
    /// and builds a scheduler that records into it. `extra_queued` runs
    /// beyond the recovered ones will be submitted.
    pub async fn host(&self, mut config: SchedulerConfig, extra_queued: usize) -> Result<Host, CliError> {
        let settings = self.journal_settings()?;
        let sandbox = self.sandbox()?;
        if settings.durability == Durability::Memory {
            config.quotas.max_queued = config.quotas.max_queued.max(extra_queued);
            let scheduler = Scheduler::new(sandbox, config).map_err(CliError::from)?;
            let mut host = Host {
                scheduler,
                recovered: Vec::new(),
                settings,
                metrics_file: None,
            };
            host.write_metrics(self.metrics_file.clone());
            return Ok(host);
        }
        let (db, durability, retention) = (settings.db.clone(), settings.durability, settings.retention);
        let store = tokio::task::spawn_blocking(move || -> Result<SqliteStore, StoreError> {
            let mut store = SqliteStore::open(&db, durability)?;
            if let Some(age) = retention {
                let stats = store.collect(cutoff(age))?;
                if stats.runs > 0 {
                    tracing::info!(runs = stats.runs, freed = stats.bytes_freed, "retention");
                }
            }
            Ok(store)
        })
        .await
        .map_err(CliError::host)?
        .map_err(journal_error)?;
        let journal_config = JournalConfig {
            durability,
            batch_window: settings.batch_window,
            ..JournalConfig::default()
        };
        let (journal, recovered) = Journal::start(Box::new(store), journal_config).map_err(journal_error)?;
        config.quotas.max_queued = config.quotas.max_queued.max(extra_queued + recovered.len());
        let scheduler = Scheduler::with_journal(sandbox, config, journal).map_err(CliError::from)?;
        if !recovered.is_empty() {
            eprintln!(
                "resuming {} incomplete run{} from {}",
                recovered.len(),
                if recovered.len() == 1 { "" } else { "s" },
                settings.db.display()
            );
        }
        let mut host = Host {
            scheduler,
            recovered,
            settings,
            metrics_file: None,
        };
        host.write_metrics(self.metrics_file.clone());
        Ok(host)
    }
}

impl Host {
    /// Resumes every recovered run.
    pub fn resume_all(&mut self) -> Result<Vec<RunHandle>, CliError> {
        std::mem::take(&mut self.recovered)
            .into_iter()
            .map(|run| self.scheduler.resume(run).map_err(CliError::host))
            .collect()
    }

    /// On the first SIGINT or SIGTERM, shuts the scheduler down gracefully
    /// (nothing new starts; running steps get the grace period); on the
    /// second, exits at once. Either way the journal stays consistent: a
    /// transaction is written whole or not at all.
    pub fn handle_signals(&self) -> Arc<std::sync::atomic::AtomicBool> {
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (scheduler, grace, flag) = (
            self.scheduler.clone(),
            self.settings.shutdown_grace,
            Arc::clone(&stopping),
        );
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) =
                (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
            else {
                return;
            };
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            eprintln!(
                "stopping: running steps get up to {} to finish; signal again to exit at once",
                humantime::format_duration(grace)
            );
            let shutdown = scheduler.clone();
            tokio::spawn(async move { shutdown.shutdown(grace).await });
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            eprintln!("exiting at once; interrupted runs resume on the next start");
            std::process::exit(130);
        });
        stopping
    }

    /// With `--metrics-file`, rewrites the file every second while the host
    /// works (and once more on [`Host::close`]).
    pub fn write_metrics(&mut self, file: Option<PathBuf>) {
        let Some(file) = file else { return };
        let scheduler = self.scheduler.clone();
        let path = file.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Err(e) = write_atomically(&path, scheduler.metrics_text().as_bytes()) {
                    tracing::warn!(file = %path.display(), "cannot write metrics: {e}");
                }
            }
        });
        self.metrics_file = Some(file);
    }

    /// Flushes and closes the journal. Fails with the journal's error if it
    /// stopped.
    pub async fn close(self) -> Result<(), CliError> {
        if let Some(file) = &self.metrics_file {
            write_atomically(file, self.scheduler.metrics_text().as_bytes())
                .with_context(|| format!("cannot write metrics to {}", file.display()))
                .map_err(CliError::host)?;
        }
        let Some(journal) = self.scheduler.journal().cloned() else {
            return Ok(());
        };
        if let Some(e) = self.scheduler.journal_error() {
            return Err(journal_error(e.clone()));
        }
        journal.flush().await.map_err(journal_error)?;
        tokio::task::spawn_blocking(move || journal.close())
            .await
            .map_err(CliError::host)?
            .map_err(journal_error)?;
        Ok(())
    }
}

/// The instant `age` ago, in journal time.
fn cutoff(age: Duration) -> Millis {
    now_millis().saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
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
        let config = global.host_config()?.scheduler;
        let mut host = global.host(config, 0).await?;
        if host.settings.durability == Durability::Memory {
            return Err(anyhow::anyhow!("there is nothing to resume under `memory` durability").into());
        }
        if host.recovered.is_empty() {
            eprintln!("no incomplete runs in {}", host.settings.db.display());
            host.close().await?;
            return Ok(exit::SUCCESS);
        }
        let handles = host.resume_all()?;
        let stopping = host.handle_signals();
        let mut code = exit::SUCCESS;
        for handle in handles {
            let report = handle.wait().await;
            print_report(&report, self.json)?;
            code = worst(code, report_code(&report));
        }
        finish(host, stopping, code).await
    }
}

/// Closes the host and picks the exit code: 0 after a graceful shutdown
/// (interrupted runs are safe in the journal), the journal's failure if it
/// failed, else `code`.
pub async fn finish(
    host: Host,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    code: u8,
) -> Result<u8, CliError> {
    host.close().await?;
    if stopping.load(std::sync::atomic::Ordering::SeqCst) {
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
    pub fn run(self, global: &GlobalArgs) -> Result<u8, CliError> {
        let settings = global.journal_settings()?;
        let store = SqliteReader::open(&settings.db).map_err(journal_error)?;
        let runs = store
            .runs(&RunFilter {
                status: self.status,
                workflow: self.workflow,
                limit: Some(self.limit),
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
        writeln!(
            out,
            "{:>8}  {:<11}  {:<24}  {:<24}  {:>10}  ERROR",
            "RUN", "STATUS", "WORKFLOW", "ACCEPTED", "TOOK"
        )
        .map_err(CliError::host)?;
        for run in &runs {
            let took = match (run.started_at, run.finished_at) {
                (Some(s), Some(f)) => format!("{}ms", f - s),
                _ => "-".into(),
            };
            writeln!(
                out,
                "{:>8}  {:<11}  {:<24}  {:<24}  {:>10}  {}",
                run.id,
                run.status.as_str(),
                run.workflow,
                timestamp(run.accepted_at),
                took,
                run.error.as_deref().unwrap_or("")
            )
            .map_err(CliError::host)?;
        }
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
    pub fn run(self, global: &GlobalArgs) -> Result<u8, CliError> {
        let settings = global.journal_settings()?;
        let store = SqliteReader::open(&settings.db).map_err(journal_error)?;
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
        let r = &history.summary;
        let text = |b: &Option<Vec<u8>>| match b {
            Some(b) => String::from_utf8_lossy(b).into_owned(),
            None if r.collected => "(removed by retention)".into(),
            None => "-".into(),
        };
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
            writeln!(out, "{line}").map_err(CliError::host)?;
        }
        if let Some(error) = &r.error {
            writeln!(out, "error:    {error}").map_err(CliError::host)?;
        }
        writeln!(
            out,
            "\n{:<20} {:>5} {:>3}  {:<11} {:<15} {:>10} {:>9} {:>12} {:>10} {:>21}  STARTED",
            "STEP",
            "ITEM",
            "#",
            "STATUS",
            "OUTCOME",
            "DURATION",
            "QUEUED",
            "FUEL",
            "PEAK MEM",
            "PEAK TMP/LIMIT"
        )
        .map_err(CliError::host)?;
        for a in &history.attempts {
            writeln!(
                out,
                "{:<20} {:>5} {:>3}  {:<11} {:<15} {:>10} {:>9} {:>12} {:>10} {:>21}  {}",
                a.step,
                a.item.map_or("-".into(), |i| i.to_string()),
                a.attempt,
                a.status.as_str(),
                a.outcome.map_or("-", |k| k.as_str()),
                format!("{:.2}ms", a.usage.duration.as_secs_f64() * 1e3),
                format!("{:.2}ms", a.usage.queue_wait.as_secs_f64() * 1e3),
                a.usage.fuel,
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
            )
            .map_err(CliError::host)?;
            if let Some(message) = &a.message {
                writeln!(out, "{:<20} {message}", "").map_err(CliError::host)?;
            }
        }
        if !history.state.is_empty() {
            writeln!(out, "\nstate:").map_err(CliError::host)?;
            for (key, value) in &history.state {
                writeln!(out, "  {key} = {value}").map_err(CliError::host)?;
            }
        }
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
        let mut store = SqliteStore::open(&settings.db, settings.durability).map_err(journal_error)?;
        let stats = store.collect(cutoff(age)).map_err(journal_error)?;
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
    pub fn run(self, global: &GlobalArgs) -> Result<u8, CliError> {
        let settings = global.journal_settings()?;
        let store = SqliteReader::open(&settings.db).map_err(journal_error)?;
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

/// `stepbox metrics`.
#[derive(Debug, clap::Args)]
pub struct MetricsCommand {
    /// Only attempts that ended within this long, such as 1h [default: all]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    since: Option<Duration>,
}

impl MetricsCommand {
    pub fn run(self, global: &GlobalArgs) -> Result<u8, CliError> {
        let settings = global.journal_settings()?;
        let store = SqliteReader::open(&settings.db).map_err(journal_error)?;
        let since = self.since.map_or(0, cutoff);
        let metrics = stepbox::metrics::Metrics::from_store(&store, since).map_err(journal_error)?;
        print!("{}", metrics.encode());
        Ok(exit::SUCCESS)
    }
}

fn timestamp(ms: Millis) -> String {
    let at: SystemTime = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}
