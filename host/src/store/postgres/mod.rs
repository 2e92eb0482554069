//! The PostgreSQL store: the same [`StoreWriter`] and [`StoreReader`] as
//! SQLite's, for several hosts sharing one database.
//!
//! Each writer holds one connection of its own (its journal's writer
//! thread is the only user); a reader holds a bounded pool of connections
//! (r2d2), shared by every task that queries. Several writers may write
//! one database at once: ids come from one counter row, and a write is
//! fenced by the owner of each run it touches, read `FOR UPDATE` in the
//! writing transaction, so a claim cannot come between the check and the
//! write.
//!
//! Leases are per host, not per run: each host has one row in `hosts`,
//! its heartbeat, and a run is held while its owner's row is live. A
//! renewal writes that one row whatever the host runs (a lease column on
//! every run made each renewal rewrite every running run's row). Owners
//! are unique per process start, so an owner name is a host and its
//! epoch at once: a host paused past its lease whose runs were claimed
//! meanwhile finds them under another owner, and its writes for them are
//! refused by the same row lock that orders the claim.
//!
//! Statements are explicit SQL; the layout is embedded and laid out by the
//! first writer (see `schema`). The URL's password never appears in an
//! error: the database is named by its URL with the password masked.
//!
//! ```no_run
//! use stepbox::store::{Durability, PostgresStore, StoreWriter};
//! let mut store = PostgresStore::open("postgres://stepbox@db/stepbox", Durability::Strict)?;
//! let ids = store.allocate_run_ids(10)?;
//! # Ok::<(), stepbox::store::StoreError>(())
//! ```

mod read;
mod schema;
mod uploads;
mod write;

use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use r2d2_postgres::PostgresConnectionManager;

use super::{
    AttemptRecord, Definition, Durability, Event, GcStats, HostSummary, Millis, PoolState, RecoveredRun,
    RunFilter, RunHistory, RunId, RunState, RunSummary, StoreError, StoreReader, StoreWriter, StoredWorkflow,
    UploadStore, WriteReport, now_millis,
};

/// Connections a reader's pool holds at most, by default.
pub const DEFAULT_POOL: u32 = 8;

/// The channel a writer notifies when it queues runs for any host, and
/// that hosts listen on to claim them at once.
pub(super) const WORK_CHANNEL: &str = "stepbox_work";

/// How long a query waits for a pooled connection before it fails.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// `url` with its password masked: how errors name the database.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Runs `f` where a blocking client may block (the `postgres` client
/// refuses to inside an async runtime), so that a store's methods may be
/// called from anywhere, as SQLite's can: as is outside any runtime (the
/// journal's writer thread); through `block_in_place` in a multi-thread
/// runtime, which leaves the runtime for `f` without a thread of its own
/// (on a blocking-pool thread, such as a server's query, it costs
/// nothing); on a thread of its own only in a current-thread runtime,
/// where `block_in_place` cannot be used.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Err(_) => f(),
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|scope| match scope.spawn(f).join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
    }
}

/// A database error as a store error naming `location`.
fn pg_error(location: &str, e: &postgres::Error) -> StoreError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    StoreError::Other {
        path: PathBuf::from(location),
        detail,
    }
}

fn config(url: &str, location: &str) -> Result<postgres::Config, StoreError> {
    url.parse::<postgres::Config>().map_err(|e| StoreError::Other {
        path: PathBuf::from(location),
        detail: format!("not a PostgreSQL URL: {e}"),
    })
}

/// The writing side on PostgreSQL: one connection.
pub struct PostgresStore {
    /// Always `Some` but in `drop`.
    client: Option<Client>,
    location: String,
    /// Workflow records read by claims, by digest.
    workflows: write::Workflows,
    /// Statements prepared on `client`.
    statements: write::Prepared,
    /// How to connect again after the connection is lost.
    config: postgres::Config,
    durability: Durability,
}

/// How long a writer that lost its connection keeps trying to make it
/// again (a database server restarting, failing over) before the
/// operation fails...
const RECONNECT_FOR: Duration = Duration::from_secs(30);
/// ...trying this often.
const RECONNECT_EVERY: Duration = Duration::from_millis(200);

/// Whether `e` says the connection is gone (closed, the server shutting
/// down or restarting, a connection exception), rather than that the
/// statement failed.
fn connection_lost(e: &postgres::Error, client: &Client) -> bool {
    use std::error::Error as _;
    client.is_closed()
        || e.is_closed()
        || e.source().is_some_and(|s| s.is::<std::io::Error>())
        || e.code()
            .is_some_and(|c| c.code().starts_with("57P") || c.code().starts_with("08"))
}

/// The session settings a writer's connection needs.
fn set_session(client: &mut Client, durability: Durability) -> Result<(), postgres::Error> {
    let sync = match durability {
        Durability::Strict => "on",
        Durability::Batched | Durability::Memory => "off",
    };
    client.batch_execute(&format!("SET synchronous_commit = {sync}"))
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Closing a connection blocks too.
        if let Some(client) = self.client.take() {
            off_runtime(move || drop(client));
        }
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` for writing, laying out its
    /// tables if it has none. Under [`Durability::Batched`] a commit does
    /// not wait for the server's disk (`synchronous_commit = off`): a
    /// crash of the database server, not of the host, may lose the last
    /// commits.
    ///
    /// # Errors
    ///
    /// [`StoreError::Other`] naming the URL (password masked) when the
    /// server cannot be reached or refuses, [`StoreError::NewerFormat`].
    pub fn open(url: &str, durability: Durability) -> Result<PostgresStore, StoreError> {
        off_runtime(|| PostgresStore::connect(url, durability))
    }

    fn connect(url: &str, durability: Durability) -> Result<PostgresStore, StoreError> {
        let location = redact(url);
        let config = config(url, &location)?;
        let mut client = config.connect(NoTls).map_err(|e| StoreError::Other {
            path: PathBuf::from(&location),
            detail: format!("cannot connect: {e}"),
        })?;
        let found = schema::migrate(&mut client).map_err(|e| pg_error(&location, &e))?;
        if found > schema::FORMAT {
            return Err(StoreError::NewerFormat {
                path: PathBuf::from(&location),
                found,
                known: schema::FORMAT,
            });
        }
        set_session(&mut client, durability).map_err(|e| pg_error(&location, &e))?;
        Ok(PostgresStore {
            client: Some(client),
            location,
            workflows: write::Workflows::new(),
            statements: write::Prepared::default(),
            config,
            durability,
        })
    }

    /// Runs `f` on the connection (and the workflows read before), off
    /// any async runtime. When the connection is lost, it connects again
    /// (for up to [`RECONNECT_FOR`]) and runs `f` again, telling it so (its
    /// `bool`): its first run may or may not have committed, and every
    /// writer operation does what it did once however often it runs.
    fn with<T: Send>(
        &mut self,
        f: impl Fn(&mut Client, &mut write::Workflows, &mut write::Prepared, bool) -> Result<T, postgres::Error>
        + Send
        + Sync,
    ) -> Result<T, StoreError> {
        let PostgresStore {
            client,
            location,
            workflows,
            statements,
            config,
            durability,
        } = self;
        let location = &*location;
        off_runtime(move || {
            let mut again = false;
            let mut deadline = None;
            loop {
                let c = client.as_mut().expect("a store's client is there until it drops");
                let e = match f(c, workflows, statements, again) {
                    Ok(value) => return Ok(value),
                    Err(e) if connection_lost(&e, c) => e,
                    Err(e) => return Err(pg_error(location, &e)),
                };
                let until = *deadline.get_or_insert_with(|| Instant::now() + RECONNECT_FOR);
                let why = pg_error(location, &e);
                tracing::warn!("lost the database connection ({why}); connecting again");
                loop {
                    if Instant::now() >= until {
                        return Err(pg_error(location, &e));
                    }
                    std::thread::sleep(RECONNECT_EVERY);
                    let Ok(mut fresh) = config.connect(NoTls) else {
                        continue;
                    };
                    if set_session(&mut fresh, *durability).is_ok() {
                        // The old one goes quietly: it is closed already.
                        *client = Some(fresh);
                        *statements = write::Prepared::default();
                        break;
                    }
                }
                again = true;
            }
        })
    }
}

impl StoreWriter for PostgresStore {
    fn write(&mut self, owner: &str, events: &[Event]) -> Result<WriteReport, StoreError> {
        self.with(|c, _, st, again| write::write(c, st, owner, events, again))
    }

    fn allocate_run_ids(&mut self, count: u64) -> Result<Range<RunId>, StoreError> {
        // Run again, it may skip a block: ids are never reused, gaps are fine.
        self.with(|c, _, _, _| write::allocate(c, count))
    }

    fn release_run_ids(&mut self, unused: Range<RunId>) -> Result<bool, StoreError> {
        self.with(|c, _, _, _| write::give_back(c, unused.clone()))
    }

    fn renew_leases(&mut self, owner: &str, until: Millis) -> Result<u64, StoreError> {
        self.with(|c, _, st, _| write::renew(c, st, owner, until, now_millis()))
    }

    fn claim_incomplete(&mut self, owner: &str, until: Millis) -> Result<Vec<RecoveredRun>, StoreError> {
        // Run again, it takes what it took and returns all the owner holds.
        self.with(|c, w, _, _| write::claim(c, owner, until, now_millis(), w))
    }

    fn claim_orphans(
        &mut self,
        owner: &str,
        until: Millis,
        limit: usize,
    ) -> Result<Vec<RecoveredRun>, StoreError> {
        let token = fastrand::i64(..);
        self.with(|c, w, st, again| {
            let claim = write::Claim { limit, token, again };
            write::claim_orphans(c, st, owner, until, now_millis(), claim, w)
        })
    }

    fn release_leases(&mut self, owner: &str) -> Result<u64, StoreError> {
        self.with(|c, _, _, _| write::release(c, owner))
    }

    fn collect(&mut self, before: Millis) -> Result<GcStats, StoreError> {
        self.with(|c, _, _, _| write::collect(c, before))
    }
}

/// Calls `wake` whenever a host queues runs or releases its own (a
/// `NOTIFY` on the work channel), from a thread of its own holding one
/// connection of its own (not a pooled one: it waits on it for good), and
/// once each time it (re)connects, since notifications sent while it was
/// away are lost. Waiting costs the database nothing: no query runs until
/// a notification comes. The connection is made again, every second,
/// after it fails; the thread ends, within a second, once `wanted`
/// returns false.
///
/// # Errors
///
/// [`StoreError::Other`] when `url` is not a PostgreSQL URL or the thread
/// cannot start.
pub fn listen_for_work(
    url: &str,
    wanted: impl Fn() -> bool + Send + 'static,
    wake: impl Fn() + Send + 'static,
) -> Result<(), StoreError> {
    // How often the thread looks whether it is still wanted.
    const LOOK: Duration = Duration::from_secs(1);
    use postgres::fallible_iterator::FallibleIterator;
    let location = redact(url);
    let config = config(url, &location)?;
    let listen = move || {
        while wanted() {
            let mut client = match config.connect(NoTls) {
                Ok(client) => client,
                Err(e) => {
                    tracing::debug!(db = %location, "cannot listen for work: {e}");
                    std::thread::sleep(LOOK);
                    continue;
                }
            };
            if let Err(e) = client.batch_execute(&format!("LISTEN {WORK_CHANNEL}")) {
                tracing::debug!(db = %location, "cannot listen for work: {e}");
                std::thread::sleep(LOOK);
                continue;
            }
            wake();
            while wanted() {
                let heard = client.notifications().timeout_iter(LOOK).next();
                match heard {
                    Ok(Some(_)) => {
                        // One wake for those that came together.
                        let _ = client.notifications().iter().count();
                        wake();
                    }
                    Ok(None) if client.is_closed() => break,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(db = %location, "stopped listening for work: {e}");
                        break;
                    }
                }
            }
        }
    };
    std::thread::Builder::new()
        .name("stepbox-listen".into())
        .spawn(listen)
        .map(drop)
        .map_err(|e| StoreError::Other {
            path: PathBuf::from(redact(url)),
            detail: format!("cannot start listening for work: {e}"),
        })
}

/// The query side on PostgreSQL: a bounded pool of connections, shared.
///
/// Each query reads one snapshot, as [`StoreReader`] promises, but for
/// [`StoreReader::scan_attempts`]: it reads in pages of 10,000 attempts,
/// each page one snapshot, so that a long journal is never held in memory.
pub struct PostgresReader {
    /// Always `Some` but in `drop`.
    pool: Option<r2d2::Pool<PostgresConnectionManager<NoTls>>>,
    location: String,
}

impl Drop for PostgresReader {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            off_runtime(move || drop(pool));
        }
    }
}

impl std::fmt::Debug for PostgresReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresReader")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl PostgresReader {
    /// A reader of the database at `url`, with at most `pool` connections
    /// (a query that finds them all busy waits up to 5 s, then fails).
    ///
    /// # Errors
    ///
    /// [`StoreError::Other`] when the server cannot be reached, or has no
    /// stepbox tables yet; [`StoreError::NewerFormat`].
    pub fn open(url: &str, pool: u32) -> Result<PostgresReader, StoreError> {
        off_runtime(|| PostgresReader::connect(url, pool))
    }

    fn connect(url: &str, pool: u32) -> Result<PostgresReader, StoreError> {
        let location = redact(url);
        let config = config(url, &location)?;
        // One connection first: an unreachable server is one clear error
        // at once, not a pool retrying for its timeout.
        let mut first = config.connect(NoTls).map_err(|e| StoreError::Other {
            path: PathBuf::from(&location),
            detail: format!("cannot connect: {e}"),
        })?;
        let found = schema::version(&mut first).map_err(|e| pg_error(&location, &e))?;
        drop(first);
        if found == 0 {
            return Err(StoreError::Other {
                path: PathBuf::from(&location),
                detail: "no journal here yet (no host has written to this database); check --db".into(),
            });
        }
        if found > schema::FORMAT {
            return Err(StoreError::NewerFormat {
                path: PathBuf::from(&location),
                found,
                known: schema::FORMAT,
            });
        }
        let pool = r2d2::Pool::builder()
            .max_size(pool.max(1))
            .min_idle(Some(0))
            .connection_timeout(POOL_WAIT)
            // Failures reach the query that waited, as its error; the
            // pool does not log them besides.
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(PostgresConnectionManager::new(config, NoTls));
        Ok(PostgresReader {
            pool: Some(pool),
            location,
        })
    }

    fn connections(&self) -> &r2d2::Pool<PostgresConnectionManager<NoTls>> {
        self.pool
            .as_ref()
            .expect("a reader's pool is there until it drops")
    }

    fn with<T: Send>(
        &self,
        query: impl FnOnce(&mut Client) -> Result<T, postgres::Error> + Send,
    ) -> Result<T, StoreError> {
        off_runtime(|| {
            let mut client = self.connections().get().map_err(|e| StoreError::Other {
                path: PathBuf::from(&self.location),
                detail: format!("no database connection free within {POOL_WAIT:?}: {e}"),
            })?;
            query(&mut client).map_err(|e| pg_error(&self.location, &e))
        })
    }
}

impl StoreReader for PostgresReader {
    fn runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        self.with(|c| read::runs(c, filter))
    }

    fn history(&self, id: RunId) -> Result<Option<RunHistory>, StoreError> {
        self.with(|c| read::history(c, id))
    }

    fn definition(&self, digest: &str) -> Result<Option<Definition>, StoreError> {
        self.with(|c| read::definition(c, digest))
    }

    fn scan_attempts(&self, since: Millis, visit: &mut dyn FnMut(&AttemptRecord)) -> Result<(), StoreError> {
        const PAGE: i64 = 10_000;
        let mut after = None;
        loop {
            let page = self.with(|c| read::scan_page(c, since, after.as_ref(), PAGE))?;
            let full = page.len() as i64 == PAGE;
            for (_, attempt) in &page {
                visit(attempt);
            }
            match page.into_iter().last() {
                Some((key, _)) if full => after = Some(key),
                _ => return Ok(()),
            }
        }
    }

    fn count_runs(&self) -> Result<Vec<(RunState, u64)>, StoreError> {
        self.with(read::count_runs)
    }

    fn count_matching(&self, filter: &RunFilter) -> Result<Vec<(RunState, u64)>, StoreError> {
        self.with(|c| read::count_matching(c, filter))
    }

    fn run_by_key(&self, tenant: Option<&str>, key: &str) -> Result<Option<RunId>, StoreError> {
        self.with(|c| read::run_by_key(c, tenant, key))
    }

    fn unfinished_runs_of(&self, tenant: &str) -> Result<u64, StoreError> {
        self.with(|c| read::unfinished_runs_of(c, tenant))
    }

    fn hosts(&self) -> Result<Vec<HostSummary>, StoreError> {
        self.with(|c| read::hosts(c, now_millis()))
    }

    fn uploads(&self) -> Option<&dyn UploadStore> {
        Some(self)
    }

    fn pool(&self) -> Option<PoolState> {
        let pool = self.connections();
        let state = pool.state();
        Some(PoolState {
            connections: state.connections,
            idle: state.idle_connections,
            max: pool.max_size(),
        })
    }
}

impl UploadStore for PostgresReader {
    fn put_component(&self, tenant: &str, digest: &str, bytes: &[u8]) -> Result<bool, StoreError> {
        self.with(|c| uploads::put_component(c, tenant, digest, bytes))
    }

    fn component(&self, tenant: &str, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|c| uploads::component(c, tenant, digest))
    }

    fn put_workflow(&self, tenant: &str, name: &str, text: &str, json: bool) -> Result<i64, StoreError> {
        self.with(|c| uploads::put_workflow(c, tenant, name, text, json))
    }

    fn workflow(&self, tenant: &str, name: &str) -> Result<Option<StoredWorkflow>, StoreError> {
        self.with(|c| uploads::workflow(c, tenant, name))
    }

    fn workflow_version(&self, tenant: &str, name: &str) -> Result<Option<i64>, StoreError> {
        self.with(|c| uploads::workflow_version(c, tenant, name))
    }

    fn workflow_names(&self, tenant: &str) -> Result<Vec<String>, StoreError> {
        self.with(|c| uploads::workflow_names(c, tenant))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_loses_its_password_in_messages() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
        let err = PostgresStore::open("postgres://u:pw@127.0.0.1:1/none", Durability::Strict).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("postgres://u:***@127.0.0.1:1/none") && !text.contains("pw"),
            "{text}"
        );
    }
}
