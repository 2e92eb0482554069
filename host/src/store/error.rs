//! Why the journal could not be opened, read or written: each case names
//! the file and says what to do.

use std::path::PathBuf;

/// A journal failure. Every message names the database file and what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the database.
    #[error(
        "{} is in use by another stepbox process{}; wait for it to finish, stop it, or use another --db",
        path.display(), holder.as_ref().map(|h| format!(" ({h})")).unwrap_or_default()
    )]
    Locked {
        /// The database.
        path: PathBuf,
        /// What the lock file says of its holder, such as its pid.
        holder: Option<String>,
    },
    /// The database or its directory cannot be written.
    #[error("cannot write {}: {detail}; make it writable, or use another --db", path.display())]
    ReadOnly {
        /// The database.
        path: PathBuf,
        /// What the system said.
        detail: String,
    },
    /// The disk is full.
    #[error(
        "cannot write {}: the disk is full; free space, then run `stepbox resume` (accepted runs are kept)",
        path.display()
    )]
    Full {
        /// The database.
        path: PathBuf,
    },
    /// The file is not a stepbox database, or it is damaged.
    #[error(
        "{} is not a usable stepbox database ({detail}); move it aside (and restore a backup) or use another --db",
        path.display()
    )]
    Corrupt {
        /// The database.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A newer stepbox wrote the database.
    #[error(
        "{} was written by a newer stepbox (journal format {found}; this one knows up to {known}); upgrade stepbox",
        path.display()
    )]
    NewerFormat {
        /// The database.
        path: PathBuf,
        /// The format version in the file.
        found: i64,
        /// The newest version this build knows.
        known: i64,
    },
    /// Any other failure to open, read or write the database.
    #[error("journal {}: {detail}", path.display())]
    Other {
        /// The database.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The journal stopped after an earlier failure; nothing more is written.
    #[error("the journal stopped after an earlier failure: {0}")]
    Stopped(Box<StoreError>),
}

impl StoreError {
    /// The database file the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            StoreError::Locked { path, .. }
            | StoreError::ReadOnly { path, .. }
            | StoreError::Full { path }
            | StoreError::Corrupt { path, .. }
            | StoreError::NewerFormat { path, .. }
            | StoreError::Other { path, .. } => path,
            StoreError::Stopped(inner) => inner.path(),
        }
    }
}
