//! The private temporary directory of one step instance.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh directory that is removed when this guard is dropped.
///
/// Removal happens in `Drop`, so it runs whatever ends the instance: success,
/// trap, timeout, cancellation (the run future is dropped) or a panic in the
/// host (unwinding drops it).
#[derive(Debug)]
pub(crate) struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `<root>/s<k>/i<n>` with a name no other live instance uses.
    ///
    /// Consecutive instances go to different shard directories: creating
    /// and removing entries locks the parent directory, and with one parent
    /// for all, threads starting steps at once queue on that lock.
    pub(crate) fn create(root: &Path) -> io::Result<ScratchDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        const SHARDS: u64 = 16;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let shard = root.join(format!("s{}", n % SHARDS));
        let path = shard.join(format!("i{n}"));
        match std::fs::create_dir(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The shard's first instance (another may create it at once).
                match std::fs::create_dir(&shard) {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                    _ => {}
                }
                std::fs::create_dir(&path)?;
            }
            other => other?,
        }
        Ok(ScratchDir { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Most steps leave their directory empty: one rmdir is enough, and
        // much cheaper than walking it. `remove_dir_all` does not follow
        // symlinks, so a link the guest made to somewhere else is removed,
        // not its target.
        if std::fs::remove_dir(&self.path).is_ok() {
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove a step's temporary directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_dir_and_its_contents_are_removed_on_drop() {
        let root = std::env::temp_dir().join(format!("stepbox-scratch-test-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let dir = ScratchDir::create(&root).unwrap();
        std::fs::create_dir(dir.path().join("nested")).unwrap();
        std::fs::write(dir.path().join("nested/file"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
        let path = dir.path().to_owned();
        drop(dir);
        assert!(!path.exists());
        assert!(Path::new("/etc").exists(), "the symlink target must survive");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn scratch_dirs_are_distinct() {
        let root = std::env::temp_dir().join(format!("stepbox-scratch-test2-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let a = ScratchDir::create(&root).unwrap();
        let b = ScratchDir::create(&root).unwrap();
        assert_ne!(a.path(), b.path());
        drop((a, b));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
