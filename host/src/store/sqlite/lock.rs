//! The one-writer lock file, and what SQLite's and the system's failures
//! become: a [`StoreError`] that names the file and what to do.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

use crate::store::StoreError;

/// Takes the lock file beside `db` for this process, or says who holds it.
pub(super) fn take_lock(db: &Path) -> Result<File, StoreError> {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_error(db, &e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(StoreError::Locked {
                path: db.to_owned(),
                holder: (!holder.is_empty()).then(|| holder.to_owned()),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_error(db, &e)),
    }
    // Who holds it, for the message another process prints.
    let _ = file.set_len(0);
    let _ = write!(file, "pid {}", std::process::id());
    Ok(file)
}

pub(super) fn io_error(path: &Path, e: &std::io::Error) -> StoreError {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => StoreError::ReadOnly {
            path: path.to_owned(),
            detail: e.to_string(),
        },
        ErrorKind::StorageFull => StoreError::Full {
            path: path.to_owned(),
        },
        _ => StoreError::Other {
            path: path.to_owned(),
            detail: e.to_string(),
        },
    }
}

pub(super) fn sql_error(path: &Path, e: rusqlite::Error) -> StoreError {
    let path = path.to_owned();
    // Messages may quote multi-line SQL: keep them on one line.
    let detail = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
    let rusqlite::Error::SqliteFailure(failure, _) = &e else {
        return StoreError::Other { path, detail };
    };
    match failure.code {
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => StoreError::Locked { path, holder: None },
        ErrorCode::ReadOnly | ErrorCode::PermissionDenied => StoreError::ReadOnly { path, detail },
        ErrorCode::DiskFull => StoreError::Full { path },
        ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => StoreError::Corrupt { path, detail },
        _ => StoreError::Other { path, detail },
    }
}
