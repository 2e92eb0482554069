//! Scratch space: a sandbox's root directory, and in it the private
//! temporary directory of each step instance.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// The number of this process's next scratch root.
static NEXT_ROOT: AtomicU32 = AtomicU32::new(0);

/// The directory holding all of a sandbox's instance directories, removed
/// when the sandbox is dropped.
///
/// A host killed with SIGKILL cannot remove its root, so each root holds a
/// lock on its `.lock` file for as long as the sandbox lives, and a sandbox
/// starting in the same parent removes the roots whose lock it can take.
/// A lock, not a pid: hosts in other pid namespaces may share the parent,
/// and pids are reused.
#[derive(Debug)]
pub(crate) struct ScratchRoot {
    path: PathBuf,
    /// Held for the root's life: the proof that its host is alive.
    _lock: File,
    /// Instance directories no guest ever opened, still empty: the next
    /// instances take these before making new ones.
    clean: Mutex<Vec<ScratchDir>>,
}

/// The most unused clean directories a root keeps (each an inode, and on
/// tmpfs a little memory): more than the instances a host runs at once.
const MAX_CLEAN: usize = 4096;

impl ScratchRoot {
    /// Creates a fresh root `<parent>/stepbox-PID-N`, first removing the
    /// abandoned roots of killed hosts. The root appears under its name
    /// already locked: it is made under a hidden staging name, locked, then
    /// renamed, so no other host ever sees it unlocked.
    ///
    /// # Errors
    ///
    /// The directory that could not be made, and why.
    pub(crate) fn create(parent: &Path) -> Result<ScratchRoot, (PathBuf, io::Error)> {
        let at = |path: &Path| {
            let path = path.to_owned();
            move |e| (path, e)
        };
        std::fs::create_dir_all(parent).map_err(at(parent))?;
        remove_abandoned_roots(parent);
        loop {
            let name = format!(
                "stepbox-{}-{}",
                std::process::id(),
                NEXT_ROOT.fetch_add(1, Ordering::Relaxed)
            );
            let path = parent.join(&name);
            let staging = parent.join(format!(".{name}-{:016x}", fastrand::u64(..)));
            std::fs::create_dir(&staging).map_err(at(&staging))?;
            let lock = File::create(staging.join(".lock"))
                .and_then(|file| file.try_lock().map(|()| file).map_err(io::Error::from))
                .map_err(at(&staging))?;
            // A name taken by a live host (a pid from another namespace, or
            // reused) is skipped; one left by a dead host is freed.
            let renamed = std::fs::rename(&staging, &path).or_else(|_| {
                if remove_if_abandoned(&path) {
                    std::fs::rename(&staging, &path)
                } else {
                    Err(io::ErrorKind::AlreadyExists.into())
                }
            });
            match renamed {
                Ok(()) => {
                    return Ok(ScratchRoot {
                        path,
                        _lock: lock,
                        clean: Mutex::new(Vec::new()),
                    });
                }
                Err(_) if path.exists() => {
                    let _ = std::fs::remove_dir_all(&staging);
                }
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&staging);
                    return Err((path, e));
                }
            }
        }
    }

    /// The root directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// An empty directory for one instance: one that an earlier instance
    /// left unopened, else a new one.
    ///
    /// Making and removing a directory per step was an eighth of a trivial
    /// workflow's CPU time under load (`perf` of `serve-3step`), and most
    /// steps never open their `/tmp`.
    ///
    /// # Errors
    ///
    /// Why a new directory could not be made.
    pub(crate) fn dir(&self) -> io::Result<ScratchDir> {
        let reused = self.clean.lock().unwrap_or_else(PoisonError::into_inner).pop();
        match reused {
            Some(dir) => Ok(dir),
            None => ScratchDir::create(&self.path),
        }
    }

    /// Takes back `dir` from an instance whose guest never asked for its
    /// preopened directories: it holds nothing and nobody looked at it, so
    /// the next instance may have it as new. Call this only once the
    /// instance's store, which holds a descriptor of it, is gone.
    pub(crate) fn unopened(&self, dir: ScratchDir) {
        let mut clean = self.clean.lock().unwrap_or_else(PoisonError::into_inner);
        if clean.len() < MAX_CLEAN {
            clean.push(dir);
        }
    }
}

impl Drop for ScratchRoot {
    fn drop(&mut self) {
        self.clean
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes the roots (and staging directories) in `parent` whose host is
/// gone. Failures are left for the next sandbox to try.
fn remove_abandoned_roots(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let ours = name
            .to_str()
            .is_some_and(|n| n.starts_with("stepbox-") || n.starts_with(".stepbox-"));
        if ours {
            remove_if_abandoned(&entry.path());
        }
    }
}

/// Removes `root` if no live host holds its lock; true if it is gone. A
/// directory without a lock file is left alone: it is not known to be a
/// root of this build's making.
fn remove_if_abandoned(root: &Path) -> bool {
    let Ok(file) = File::open(root.join(".lock")) else {
        return false;
    };
    file.try_lock().is_ok() && std::fs::remove_dir_all(root).is_ok()
}

/// Whether `dir` is on a memory file system (tmpfs or ramfs), whose files
/// take RAM.
pub(crate) fn is_memory_backed(dir: &Path) -> bool {
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    rustix::fs::statfs(dir).is_ok_and(|fs| {
        let kind = fs.f_type as u64;
        kind == TMPFS_MAGIC || kind == RAMFS_MAGIC
    })
}

/// A fresh directory that is removed when this guard is dropped.
///
/// Removal happens in `Drop`, so it runs whatever ends the instance: success,
/// trap, timeout, cancellation (the run future is dropped) or a panic in the
/// host (unwinding drops it).
#[derive(Debug)]
pub(crate) struct ScratchDir {
    path: PathBuf,
    /// The `n` of its name, free again once the directory is removed.
    index: u64,
}

/// Numbers of removed instance directories, whose names are used again.
///
/// A fresh name for every instance would leave one negative dentry per
/// instance ever run in the kernel's directory cache: a host that runs
/// millions of steps grows that cache's hash chains, and every later
/// `mkdir` walks them. Reusing the names of removed directories bounds
/// the names by the most instances alive at once.
static FREE: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// The next number never used for an instance directory.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A free number, else a new one.
fn take_index() -> u64 {
    let reused = FREE.lock().unwrap_or_else(PoisonError::into_inner).pop();
    reused.unwrap_or_else(|| NEXT.fetch_add(1, Ordering::Relaxed))
}

impl ScratchDir {
    /// Creates `<root>/s<k>/i<n>` with a name no other live instance uses.
    ///
    /// Consecutive instances go to different shard directories: creating
    /// and removing entries locks the parent directory, and with one parent
    /// for all, threads starting steps at once queue on that lock.
    pub(crate) fn create(root: &Path) -> io::Result<ScratchDir> {
        const SHARDS: u64 = 16;
        loop {
            let n = take_index();
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
                // Left by a removal that failed: the number stays out of use.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                other => other?,
            }
            return Ok(ScratchDir { path, index: n });
        }
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
        let removed = std::fs::remove_dir(&self.path).is_ok()
            || match std::fs::remove_dir_all(&self.path) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => true,
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "could not remove a step's temporary directory");
                    false
                }
            };
        // A directory left behind keeps its name out of use.
        if removed {
            FREE.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(self.index);
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
    fn names_of_removed_dirs_are_reused_so_names_stay_few() {
        let root = std::env::temp_dir().join(format!("stepbox-scratch-test3-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let mut names = std::collections::HashSet::new();
        for _ in 0..1_000 {
            let dir = ScratchDir::create(&root).unwrap();
            names.insert(dir.path().to_owned());
        }
        // Other tests of this process may hold a few numbers at a time.
        assert!(
            names.len() < 100,
            "{} names for 1,000 instances, one at a time",
            names.len()
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_unopened_dir_is_handed_out_again_and_an_opened_one_never() {
        let parent = tempfile::tempdir().unwrap();
        let root = ScratchRoot::create(parent.path()).unwrap();
        let first = root.dir().unwrap();
        let unopened = first.path().to_owned();
        root.unopened(first);
        assert!(unopened.is_dir(), "a clean directory is kept, not removed");
        let again = root.dir().unwrap();
        assert_eq!(again.path(), unopened);
        // Used: dropped, not given back, so it goes with what it holds.
        std::fs::write(again.path().join("left"), b"x").unwrap();
        drop(again);
        assert!(!unopened.exists());
        let fresh = root.dir().unwrap();
        assert!(std::fs::read_dir(fresh.path()).unwrap().next().is_none());
        let kept = fresh.path().to_owned();
        root.unopened(fresh);
        let path = root.path().to_owned();
        drop(root);
        assert!(
            !kept.exists() && !path.exists(),
            "the root goes with its clean directories"
        );
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

    #[test]
    fn roots_of_killed_hosts_are_removed_and_live_or_unknown_ones_kept() {
        let parent = tempfile::tempdir().unwrap();
        let live = ScratchRoot::create(parent.path()).unwrap();
        // A killed host's root: its lock file, with nobody holding it.
        let dead = parent.path().join("stepbox-77-0");
        std::fs::create_dir_all(dead.join("s1/i9")).unwrap();
        File::create(dead.join(".lock")).unwrap();
        // Not known to be a root: no lock file.
        let unknown = parent.path().join("stepbox-notes");
        std::fs::create_dir(&unknown).unwrap();

        let other = ScratchRoot::create(parent.path()).unwrap();
        assert!(!dead.exists(), "a killed host's files stay behind");
        assert!(live.path().is_dir() && unknown.is_dir() && other.path().is_dir());
        assert_ne!(live.path(), other.path());
        let path = other.path().to_owned();
        drop(other);
        assert!(!path.exists());
    }

    #[test]
    fn a_root_name_held_by_a_live_host_is_skipped_and_a_dead_ones_reused() {
        let parent = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        // The names this process takes next may be held by a live host
        // with the same pid in another pid namespace, or left by a dead
        // one: block the next few both ways.
        let mut live_locks = Vec::new();
        let mut dead = Vec::new();
        let next = NEXT_ROOT.load(Ordering::Relaxed);
        for n in next..next + 8 {
            let root = parent.path().join(format!("stepbox-{pid}-{n}"));
            std::fs::create_dir_all(root.join("s0/i1")).unwrap();
            let lock = File::create(root.join(".lock")).unwrap();
            if n % 2 == 0 {
                lock.try_lock().unwrap();
                live_locks.push((root, lock));
            } else {
                dead.push(root);
            }
        }
        let root = ScratchRoot::create(parent.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(root.path()).unwrap().count(),
            1,
            "only its own lock file"
        );
        for (path, _) in &live_locks {
            assert!(
                path.join("s0/i1").is_dir(),
                "a live root was touched: {}",
                path.display()
            );
        }
        for path in &dead {
            assert!(
                path == root.path() || !path.exists(),
                "a dead root stayed: {}",
                path.display()
            );
        }
    }
}
