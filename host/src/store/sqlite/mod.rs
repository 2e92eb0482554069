//! The journal in a SQLite file: one writing process at a time (a lock file
//! proves it), WAL mode so readers never wait, incremental vacuum so
//! retention gives space back.
//!
//! [`SqliteStore`] is the writing side and [`SqliteReader`] the query side;
//! the files split the work: the layout and its migrations (`schema`),
//! writing (`write`), reading (`read`), the lock and errors (`lock`).

mod lock;
mod read;
mod schema;
mod write;

use std::collections::HashSet;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use self::lock::{io_error, sql_error, take_lock};
pub use self::read::SqliteReader;
use self::read::{Queries, RunColumns, attempt_columns};
use super::{
    Durability, Event, GcStats, Millis, RecoveredRun, RunId, StoreError, StoreWriter, WriteReport, now_millis,
};

/// The writing side of a journal in a SQLite database file.
///
/// [`SqliteStore::open`] takes the file for one process (a lock file beside
/// it, released when the process exits however it exits): a second host on
/// the same file gets [`StoreError::Locked`]. Because the lock proves that
/// no other process writes the file, opening it ends every lease in it (a
/// restarted host resumes its runs at once) and closes any gap a crash left
/// in the run ids. [`SqliteReader::open`] reads while a host writes.
///
/// ```no_run
/// use stepbox::store::{Durability, SqliteStore, StoreWriter};
///
/// let mut store = SqliteStore::open(".stepbox/stepbox.db".as_ref(), Durability::Strict)?;
/// let ids = store.allocate_run_ids(16)?;
/// println!("runs {} to {} are ours", ids.start, ids.end - 1);
/// # Ok::<(), stepbox::store::StoreError>(())
/// ```
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// Held for the store's life: the proof that this process is the writer.
    _lock: File,
    /// Digests already in the file, so definitions are written once.
    known_workflows: HashSet<String>,
    known_components: HashSet<String>,
    /// Incomplete runs this connection knows `.0` owns, so that fencing
    /// looks up only the others. Exact because the lock makes this
    /// connection the file's only writer: owners change only through it
    /// (an acceptance adds a run; a claim or a release clears the set).
    owned: (String, HashSet<RunId, schema::FastHash>),
    /// The attempt columns recovery reads (the writer adds any missing).
    attempt_columns: String,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating it and its directory if need be) the journal at
    /// `path` for writing, fsyncing every commit under
    /// [`Durability::Strict`] and only at checkpoints under
    /// [`Durability::Batched`] (which stays safe if the process dies, not if
    /// the machine does).
    ///
    /// # Errors
    ///
    /// [`StoreError::Locked`] if another process has it open for writing,
    /// [`StoreError::ReadOnly`], [`StoreError::Corrupt`] (not a stepbox
    /// journal, or damaged), [`StoreError::NewerFormat`], or
    /// [`StoreError::Other`].
    pub fn open(path: &Path, durability: Durability) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io_error(path, &e))?;
        }
        let lock = take_lock(path)?;
        let mut conn = Connection::open(path).map_err(|e| sql_error(path, e))?;
        // Room for the hot statements and every size of multi-row insert.
        conn.set_prepared_statement_cache_capacity(64);
        schema::prepare(&mut conn, path, durability)?;
        Ok(SqliteStore {
            conn,
            path: path.to_owned(),
            _lock: lock,
            known_workflows: HashSet::new(),
            known_components: HashSet::new(),
            owned: (String::new(), HashSet::default()),
            attempt_columns: attempt_columns(&[]),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs SQLite's integrity check over the whole file.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] with what the check found.
    pub fn check_integrity(&mut self) -> Result<(), StoreError> {
        self.queries().check_integrity()
    }

    /// Caps the file at `pages` database pages: writes beyond it fail as if
    /// the disk were full. For testing what a full disk does.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the setting cannot be applied.
    pub fn set_max_pages(&mut self, pages: u64) -> Result<(), StoreError> {
        self.conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
            .map_err(|e| self.error(e))
    }

    fn error(&self, e: rusqlite::Error) -> StoreError {
        sql_error(&self.path, e)
    }

    fn queries(&self) -> Queries<'_> {
        Queries {
            conn: &self.conn,
            path: &self.path,
            attempt_columns: &self.attempt_columns,
            run_columns: RunColumns::CURRENT,
        }
    }
}

impl StoreWriter for SqliteStore {
    fn write(&mut self, owner: &str, events: &[Event]) -> Result<WriteReport, StoreError> {
        match self.write_events(owner, events) {
            Ok((workflows, components, report)) => {
                self.known_workflows.extend(workflows);
                self.known_components.extend(components);
                self.note_owned(owner, events, &report);
                Ok(report)
            }
            Err(e) => Err(self.error(e)),
        }
    }

    fn allocate_run_ids(&mut self, count: u64) -> Result<Range<RunId>, StoreError> {
        self.allocate(count).map_err(|e| self.error(e))
    }

    fn release_run_ids(&mut self, unused: Range<RunId>) -> Result<bool, StoreError> {
        self.give_back(unused).map_err(|e| self.error(e))
    }

    fn renew_leases(&mut self, owner: &str, until: Millis) -> Result<u64, StoreError> {
        self.renew(owner, until).map_err(|e| self.error(e))
    }

    fn claim_incomplete(&mut self, owner: &str, until: Millis) -> Result<Vec<RecoveredRun>, StoreError> {
        self.owned.1.clear();
        self.claim(owner, until, now_millis())
    }

    fn release_leases(&mut self, owner: &str) -> Result<u64, StoreError> {
        self.owned.1.clear();
        self.release(owner).map_err(|e| self.error(e))
    }

    fn collect(&mut self, before: Millis) -> Result<GcStats, StoreError> {
        self.collect_payloads(before)
    }
}

#[cfg(test)]
mod tests;
