//! A whole host in one value: the store, retention, recovery, the journal,
//! the scheduler, the live runs, metrics and graceful shutdown, assembled
//! from the configuration. The CLI and the HTTP server are front ends on
//! it; an embedder starts one with one call.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use stepbox::config::HostConfig;
//! use stepbox::host::Host;
//! use stepbox::workflow::Workflow;
//! use stepbox::Sandbox;
//!
//! let host = Host::start(Sandbox::builder().build()?, HostConfig::default()).await?;
//! host.resume_incomplete()?;
//! let workflow = host.scheduler().prepare(Workflow::from_file("docs.yaml".as_ref())?)?;
//! let run = host.submit(&workflow, serde_json::json!({"text": "a b a"}))?;
//! let report = run.wait().await;
//! println!("run {}: {:?}", report.run_id, report.status);
//! host.close().await?;
//! # Ok(()) }
//! ```
//!
//! This is the only module that names a concrete store: everything else
//! reaches one through the store's traits.

mod live;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;

use self::live::Registry;
pub use self::live::{LiveRun, LiveStatus};
use crate::config::{HostConfig, JournalSettings};
use crate::sandbox::Sandbox;
use crate::scheduler::{PreparedWorkflow, Scheduler, SchedulerError, Submission, SubmitError};
use crate::store::{
    Durability, GcStats, Journal, JournalConfig, Millis, PostgresReader, PostgresStore, RecoveredRun, RunId,
    SqliteReader, SqliteStore, StoreError, StoreReader, StoreWriter, now_millis, redact,
};

/// Why a host could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The store could not be opened, read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The scheduler's configuration is out of range.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// The metrics file could not be written.
    #[error("cannot write metrics to {}: {source}", path.display())]
    MetricsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Where a host's runs are kept: the `db` of `[journal]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite database file, for one host.
    Sqlite(PathBuf),
    /// A PostgreSQL URL, for several hosts sharing work.
    Postgres(String),
}

impl StoreLocation {
    /// A location as a user writes it: a `postgres://` (or `postgresql://`)
    /// URL, else a file path.
    ///
    /// ```
    /// use stepbox::host::StoreLocation;
    ///
    /// assert!(matches!(StoreLocation::parse("postgres://db/stepbox".as_ref()), StoreLocation::Postgres(_)));
    /// assert!(matches!(StoreLocation::parse(".stepbox/stepbox.db".as_ref()), StoreLocation::Sqlite(_)));
    /// ```
    pub fn parse(db: &Path) -> StoreLocation {
        match db.to_str() {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                StoreLocation::Postgres(url.to_owned())
            }
            _ => StoreLocation::Sqlite(db.to_owned()),
        }
    }

    /// The location as messages name it: a URL's password masked.
    pub fn display(&self) -> String {
        match self {
            StoreLocation::Sqlite(path) => path.display().to_string(),
            StoreLocation::Postgres(url) => redact(url),
        }
    }
}

/// A store's writing side, opened at `location`.
fn open_writer(location: &StoreLocation, durability: Durability) -> Result<Box<dyn StoreWriter>, StoreError> {
    Ok(match location {
        StoreLocation::Sqlite(path) => Box::new(SqliteStore::open(path, durability)?),
        StoreLocation::Postgres(url) => Box::new(PostgresStore::open(url, durability)?),
    })
}

/// Opens the store at `settings.db` for reading only: for listings,
/// histories, reports and metrics, beside a host that may be writing.
///
/// # Errors
///
/// A [`HostError`] when the store cannot be opened.
pub fn open_reader(settings: &JournalSettings) -> Result<Arc<dyn StoreReader>, HostError> {
    Ok(match StoreLocation::parse(&settings.db) {
        StoreLocation::Sqlite(path) => Arc::new(SqliteReader::open(&path)?),
        StoreLocation::Postgres(url) => Arc::new(PostgresReader::open(&url, settings.pool)?),
    })
}

/// Removes the payloads of runs finished before `age` ago, keeping their
/// audit records (`stepbox gc`).
///
/// # Errors
///
/// A [`HostError`] when the store cannot be opened or written.
pub fn collect(settings: &JournalSettings, age: Duration) -> Result<GcStats, HostError> {
    let mut store = open_writer(&StoreLocation::parse(&settings.db), settings.durability)?;
    Ok(store.collect(cutoff(age))?)
}

/// Opens the store at `settings.db` for writing, applies retention, claims
/// the incomplete runs no live host holds, and starts a journal on it at
/// `settings.durability` (which must not be `memory`). Returns the journal
/// and the runs to resume.
///
/// # Errors
///
/// A [`HostError`] when the store cannot be opened, read or written.
pub async fn open_journal(settings: &JournalSettings) -> Result<(Journal, Vec<RecoveredRun>), HostError> {
    let location = StoreLocation::parse(&settings.db);
    let (durability, retention) = (settings.durability, settings.retention);
    let lease = settings.lease.unwrap_or(match location {
        StoreLocation::Postgres(_) => SHARED_LEASE,
        StoreLocation::Sqlite(_) => crate::store::DEFAULT_LEASE,
    });
    let config = JournalConfig {
        durability,
        batch_window: settings.batch_window,
        lease,
        ..JournalConfig::default()
    };
    // Every store call blocks (a PostgreSQL client's must not run on an
    // async thread at all): opening, retention and the first claim run here.
    tokio::task::spawn_blocking(move || -> Result<(Journal, Vec<RecoveredRun>), StoreError> {
        let mut store = open_writer(&location, durability)?;
        if let Some(age) = retention {
            let stats = store.collect(cutoff(age))?;
            if stats.runs > 0 {
                tracing::info!(runs = stats.runs, freed = stats.bytes_freed, "retention");
            }
        }
        Journal::start(store, config)
    })
    .await
    .map_err(|e| StoreError::Other {
        path: settings.db.clone(),
        detail: format!("opening the store stopped: {e}"),
    })?
    .map_err(HostError::from)
}

/// The lease of a host on a store it shares (PostgreSQL): another host
/// takes a crashed host's runs over within 1.2 times it.
pub const SHARED_LEASE: Duration = Duration::from_secs(5);

/// How often a host whose claims fill its slots looks for a free slot to
/// claim more: a look at its own counters, not a query.
const BACKLOG_POLL: Duration = Duration::from_millis(5);

/// The instant `age` ago, in journal time.
pub fn cutoff(age: Duration) -> Millis {
    now_millis().saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
}

/// A running host: a scheduler recording into the configured store, with
/// the runs it took over from the store and a registry of its live runs.
pub struct Host {
    scheduler: Scheduler,
    settings: JournalSettings,
    /// Incomplete runs claimed from the store, until resumed.
    recovered: Mutex<Vec<RecoveredRun>>,
    live: Registry,
    metrics_file: Mutex<Option<PathBuf>>,
    /// Set by [`Host::shutdown`].
    stopping: AtomicBool,
    /// Runs it executes at once (`max_workflows`): what it takes over
    /// from other hosts is in proportion to what is free of it.
    slots: usize,
    /// Wakes [`Host::share_work`]: work may be waiting in the store.
    work: Arc<tokio::sync::Notify>,
    /// Each tenant's running quota on this host, for the runs it claims.
    tenant_gates: std::sync::OnceLock<TenantGates>,
}

/// A tenant's running quota on a host, by tenant name: what a server with
/// tenants gives [`Host::gate_tenants`].
pub type TenantGates = Box<dyn Fn(&str) -> Option<Arc<tokio::sync::Semaphore>> + Send + Sync>;

/// Where a run submitted to a host went (see [`Host::accept_all`]).
#[derive(Debug, Clone)]
pub enum Accepted {
    /// This host runs it.
    Here(LiveRun),
    /// It is queued in the store, for whichever host sharing it has a free
    /// slot first (this one included).
    Queued(RunId),
}

impl Accepted {
    /// The run's id.
    pub fn id(&self) -> RunId {
        match self {
            Accepted::Here(run) => run.id(),
            Accepted::Queued(id) => *id,
        }
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("db", &self.settings.db)
            .field("durability", &self.settings.durability)
            .finish_non_exhaustive()
    }
}

impl Host {
    /// Starts a host running steps in `sandbox` under `config`: opens the
    /// store (unless `[journal] durability` is `memory`), applies retention,
    /// claims the incomplete runs (resume them with
    /// [`Host::resume_incomplete`]) and starts the journal and the scheduler.
    ///
    /// # Errors
    ///
    /// A [`HostError`] when the store cannot be opened or the scheduler's
    /// configuration is out of range.
    pub async fn start(sandbox: Sandbox, config: HostConfig) -> Result<Host, HostError> {
        Host::start_with_queue(sandbox, config, 0).await
    }

    /// As [`Host::start`], with room in the admission queue for `extra`
    /// runs to be submitted at once (beyond the configured `max_queued`):
    /// for a command that submits all its work up front.
    ///
    /// # Errors
    ///
    /// As [`Host::start`].
    pub async fn start_with_queue(
        sandbox: Sandbox,
        config: HostConfig,
        extra: usize,
    ) -> Result<Host, HostError> {
        let HostConfig {
            scheduler: mut scheduler_config,
            journal: settings,
            ..
        } = config;
        let slots = scheduler_config.quotas.max_workflows;
        if settings.durability == Durability::Memory {
            scheduler_config.quotas.max_queued = scheduler_config.quotas.max_queued.max(extra);
            let scheduler = Scheduler::new(sandbox, scheduler_config)?;
            return Ok(Host::assemble(scheduler, settings, Vec::new(), slots));
        }
        let (journal, recovered) = open_journal(&settings).await?;
        let quotas = &mut scheduler_config.quotas;
        quotas.max_queued = quotas.max_queued.max(extra + recovered.len());
        let scheduler = Scheduler::with_journal(sandbox, scheduler_config, journal)?;
        Ok(Host::assemble(scheduler, settings, recovered, slots))
    }

    fn assemble(
        scheduler: Scheduler,
        settings: JournalSettings,
        recovered: Vec<RecoveredRun>,
        slots: usize,
    ) -> Host {
        Host {
            scheduler,
            settings,
            recovered: Mutex::new(recovered),
            live: Registry::default(),
            metrics_file: Mutex::new(None),
            stopping: AtomicBool::new(false),
            slots,
            work: Arc::default(),
            tenant_gates: std::sync::OnceLock::new(),
        }
    }

    /// Makes the runs this host claims from a shared store (runs queued by
    /// any host, and those of hosts that died) wait for their tenant's
    /// running quota here, as the runs submitted here do. Set once, by the
    /// server that knows the tenants; later calls are ignored.
    pub fn gate_tenants(&self, gates: TenantGates) {
        let _ = self.tenant_gates.set(gates);
    }

    /// The scheduler: to prepare workflows, and for its stats and breakers.
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// The `[journal]` settings it runs under.
    pub fn settings(&self) -> &JournalSettings {
        &self.settings
    }

    /// How many incomplete runs it claimed from the store and has not resumed yet.
    pub fn incomplete(&self) -> usize {
        lock(&self.recovered).len()
    }

    /// Resumes every run claimed from the store on start, and returns them.
    ///
    /// # Errors
    ///
    /// A [`SubmitError`] when the host is shutting down; the runs not
    /// resumed stay incomplete in the store for the next start.
    pub fn resume_incomplete(&self) -> Result<Vec<LiveRun>, SubmitError> {
        let runs = std::mem::take(&mut *lock(&self.recovered));
        runs.into_iter()
            .map(|run| Ok(self.live.track(self.scheduler.resume(run)?)))
            .collect()
    }

    /// Whether its store is shared with other hosts (PostgreSQL): then
    /// runs may execute, and wait, on any of them.
    pub fn shares_store(&self) -> bool {
        self.scheduler.journal().is_some()
            && matches!(
                StoreLocation::parse(&self.settings.db),
                StoreLocation::Postgres(_)
            )
    }

    /// How many more runs it would execute at once now: `max_workflows`
    /// less its runs running and queued.
    fn free_slots(&self) -> usize {
        let stats = self.scheduler.stats();
        self.slots
            .saturating_sub(stats.running_workflows + stats.queued_workflows)
    }

    /// Keeps taking work from the store, when it is shared (PostgreSQL):
    /// runs queued for any host, and the runs of hosts that died or
    /// stopped. It claims as many as it has free slots, oldest first, so
    /// that hosts share work in proportion to their room; while what it
    /// claims fills its slots, it claims again as slots free up. Between
    /// claims it waits to be woken: by [`Host::wake_for_work`], by the
    /// database when any host queues runs or releases its own (`LISTEN`
    /// on one connection of its own, see
    /// [`listen_for_work`](crate::store::listen_for_work)), and at most a
    /// fifth of a lease and at least every second (so that a dead host's
    /// runs move within a lease and a second): an idle host costs the
    /// database one claim a second and a heartbeat every third of a lease.
    /// Until [`Host::shutdown`]. A store one host owns alone has
    /// no such runs.
    pub fn share_work(self: &Arc<Self>) {
        let Some(journal) = self.scheduler.journal().cloned() else {
            return;
        };
        if !self.shares_store() {
            return;
        }
        if let StoreLocation::Postgres(url) = StoreLocation::parse(&self.settings.db) {
            let (wanted, woken) = (Arc::downgrade(self), Arc::downgrade(self));
            let listening = crate::store::listen_for_work(
                &url,
                move || wanted.upgrade().is_some_and(|host| !host.is_stopping()),
                move || {
                    if let Some(host) = woken.upgrade() {
                        host.wake_for_work();
                    }
                },
            );
            if let Err(e) = listening {
                tracing::warn!("hosts' new work is found by polling only: {e}");
            }
        }
        let every = (journal.lease() / 5).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let host = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = host.work.notified() => {}
                }
                // Claim while claims fill every free slot: more is waiting.
                let mut backlog = true;
                while backlog {
                    if host.is_stopping() {
                        return;
                    }
                    let free = host.free_slots();
                    if free == 0 {
                        tokio::time::sleep(BACKLOG_POLL).await;
                        continue;
                    }
                    let claiming = journal.clone();
                    let claimed = tokio::task::spawn_blocking(move || claiming.claim_orphans(free)).await;
                    let runs = match claimed {
                        Ok(Ok(runs)) => runs,
                        Ok(Err(e)) => {
                            tracing::warn!("cannot claim work from the store: {e}");
                            break;
                        }
                        Err(_) => break,
                    };
                    backlog = runs.len() == free;
                    for run in runs {
                        let id = run.id;
                        let gate = match (&run.tenant, host.tenant_gates.get()) {
                            (Some(tenant), Some(gates)) => gates(tenant),
                            _ => None,
                        };
                        match host.scheduler.resume_gated(run, gate) {
                            Ok(handle) => {
                                tracing::debug!(run = id, "claimed a run from the store");
                                host.live.track(handle);
                            }
                            // Shutting down: it stays claimed and is released
                            // with the rest as this host stops.
                            Err(e) => tracing::warn!(run = id, "cannot resume a claimed run: {e}"),
                        }
                    }
                }
            }
        });
    }

    /// Wakes [`Host::share_work`] to claim now: the store may hold work
    /// for it (another host queued runs, say).
    pub fn wake_for_work(&self) {
        self.work.notify_one();
    }

    /// Accepts runs, executing here those it has free slots for and, on a
    /// store shared with other hosts, queuing the rest in the store for
    /// whichever host has room first (it claims from there too, as its
    /// slots free up). On a store of its own, all run here (see
    /// [`Host::submit_all`]). The runs it keeps are accepted in one commit
    /// and those it queues in another, durable when this returns.
    ///
    /// # Errors
    ///
    /// As [`Scheduler::submit_all`] and [`Scheduler::queue_all`]; when the
    /// first part fails, nothing is accepted.
    pub async fn accept_all(&self, runs: Vec<Submission>) -> Result<Vec<Accepted>, SubmitError> {
        let mut runs = runs;
        let queued = match self.shares_store() {
            true => runs.split_off(self.free_slots().min(runs.len())),
            false => Vec::new(),
        };
        let mut accepted: Vec<Accepted> = self.submit_all(runs)?.into_iter().map(Accepted::Here).collect();
        if !queued.is_empty() {
            let ids = self.scheduler.queue_all(queued).await?;
            accepted.extend(ids.into_iter().map(Accepted::Queued));
        }
        Ok(accepted)
    }

    /// Submits a run of `workflow` on `input` (see [`Scheduler::submit`]).
    ///
    /// # Errors
    ///
    /// As [`Scheduler::submit`].
    pub fn submit(&self, workflow: &Arc<PreparedWorkflow>, input: Value) -> Result<LiveRun, SubmitError> {
        let mut runs = self.submit_all([(Arc::clone(workflow), input)])?;
        Ok(runs.remove(0))
    }

    /// Submits several runs, all or none, recorded as accepted in one
    /// commit (see [`Scheduler::submit_all`]).
    ///
    /// # Errors
    ///
    /// As [`Scheduler::submit_all`].
    pub fn submit_all(
        &self,
        runs: impl IntoIterator<Item = impl Into<Submission>>,
    ) -> Result<Vec<LiveRun>, SubmitError> {
        let handles = self.scheduler.submit_all(runs)?;
        Ok(handles.into_iter().map(|h| self.live.track(h)).collect())
    }

    /// A live run (queued or running) of this host, by id.
    pub fn live(&self, id: RunId) -> Option<LiveRun> {
        self.live.get(id)
    }

    /// Every live run of this host and where it is, by id.
    pub fn live_runs(&self) -> Vec<(RunId, LiveStatus)> {
        self.live.list()
    }

    /// Cancels live run `id`; false when this host has no such live run.
    pub fn cancel(&self, id: RunId) -> bool {
        self.live.get(id).map(|run| run.cancel()).is_some()
    }

    /// The metrics in the Prometheus text format, as they are now.
    pub fn metrics_text(&self) -> String {
        self.scheduler.metrics_text()
    }

    /// The metrics in the OpenMetrics text format, as they are now.
    pub fn metrics_openmetrics(&self) -> String {
        self.scheduler.metrics_openmetrics()
    }

    /// Keeps the metrics in `file` (Prometheus text format), rewritten
    /// every second while the host works and once more when it closes; a
    /// reader never sees half a file.
    pub fn write_metrics_to(&self, file: PathBuf) {
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
        *lock(&self.metrics_file) = Some(file);
    }

    /// Whether [`Host::shutdown`] has begun (by a signal, say).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Shuts down gracefully: accepts nothing new, gives the running steps
    /// `grace` (the configured `shutdown_grace` when `None`) to finish,
    /// interrupts the rest (they resume on the next start) and flushes the
    /// journal. Call [`Host::close`] after it.
    ///
    /// # Errors
    ///
    /// The journal's failure, if it failed.
    pub async fn shutdown(&self, grace: Option<Duration>) -> Result<(), HostError> {
        self.stopping.store(true, Ordering::SeqCst);
        let grace = grace.unwrap_or(self.settings.shutdown_grace);
        Ok(self.scheduler.shutdown(grace).await?)
    }

    /// On the first SIGINT or SIGTERM, shuts down gracefully (see
    /// [`Host::shutdown`]); on the second, exits the process at once with
    /// code 130. Either way the store stays consistent: a transaction is
    /// written whole or not at all, and interrupted runs resume on the next
    /// start.
    pub fn shutdown_on_signals(self: &Arc<Self>) {
        let host = Arc::clone(self);
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) =
                (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
            else {
                return;
            };
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            eprintln!(
                "stopping: running steps get up to {} to finish; signal again to exit at once",
                humantime::format_duration(host.settings.shutdown_grace)
            );
            let stopping = Arc::clone(&host);
            tokio::spawn(async move { stopping.shutdown(None).await });
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            eprintln!("exiting at once; interrupted runs resume on the next start");
            std::process::exit(130);
        });
    }

    /// Writes the metrics file a last time, flushes and closes the journal.
    ///
    /// # Errors
    ///
    /// The journal's failure if it stopped, or the metrics file's.
    pub async fn close(&self) -> Result<(), HostError> {
        if let Some(path) = lock(&self.metrics_file).clone() {
            write_atomically(&path, self.scheduler.metrics_text().as_bytes())
                .map_err(|source| HostError::MetricsFile { path, source })?;
        }
        let Some(journal) = self.scheduler.journal().cloned() else {
            return Ok(());
        };
        if let Some(e) = self.scheduler.journal_error() {
            return Err(e.clone().into());
        }
        journal.flush().await?;
        tokio::task::spawn_blocking(move || journal.close())
            .await
            .map_err(|e| StoreError::Other {
                path: self.settings.db.clone(),
                detail: format!("closing the journal stopped: {e}"),
            })??;
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves its data consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes `bytes` to `path` through a temporary file, so a reader never sees half of it.
/// Writers of one path at once each write a temporary file of their own.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_location_is_named_without_its_password() {
        let location = StoreLocation::parse("postgresql://u:pw@h/db".as_ref());
        assert_eq!(location.display(), "postgresql://u:***@h/db");
    }
}
