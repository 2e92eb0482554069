//! The accounting behind a step's scratch quota and handle cap: what its
//! `/tmp` holds, and which of its handles hold host file descriptors.
//!
//! Pure bookkeeping, no I/O: [`scratch_fs`](super::scratch_fs) asks before
//! every operation that could grow the directory and reports what happened
//! after it. Files are known by inode, because names come and go (rename,
//! hard links) while the space stays with the inode until its last name is
//! gone and its last handle is closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::outcome::{Outcome, ScratchResource};

/// The most directory listings a step may hold open at once. A listing is
/// read whole when it is opened (up to the step's entry quota, each name up
/// to 255 bytes), so each open one holds up to a few MiB of host memory.
pub(crate) const MAX_DIRECTORY_STREAMS: u32 = 16;

/// Why an operation on a step's `/tmp` or handles was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exceeded {
    /// The bytes the step keeps in `/tmp` would pass `limit`.
    Bytes { limit: u64, requested: u64 },
    /// The names in `/tmp` would pass `limit`.
    Entries { limit: u64, requested: u64 },
    /// The step already holds `limit` handles (or directory listings).
    Handles { limit: u64 },
    /// The host's descriptors for all steps, `limit` of them, are in use.
    HostHandles { limit: u64 },
}

impl Exceeded {
    /// The outcome of an attempt that hit this and did not complete.
    pub(crate) fn outcome(self) -> Outcome {
        match self {
            Exceeded::Bytes { limit, requested } => Outcome::ScratchLimit {
                resource: ScratchResource::Bytes,
                limit,
                requested,
            },
            Exceeded::Entries { limit, requested } => Outcome::ScratchLimit {
                resource: ScratchResource::Entries,
                limit,
                requested,
            },
            Exceeded::Handles { limit } => Outcome::HandleLimit {
                limit,
                host_wide: false,
            },
            Exceeded::HostHandles { limit } => Outcome::HandleLimit {
                limit,
                host_wide: true,
            },
        }
    }
}

/// The file descriptors a whole sandbox lets its steps hold, shared by all
/// its instances, so that steps together can never take the descriptors the
/// host needs for its journal, its sockets and new instances.
#[derive(Debug)]
pub(crate) struct FdBudget {
    in_use: AtomicU64,
    limit: u64,
}

impl FdBudget {
    pub(crate) fn new(limit: u64) -> FdBudget {
        FdBudget {
            in_use: AtomicU64::new(0),
            limit,
        }
    }

    fn take(&self) -> Result<(), Exceeded> {
        let before = self.in_use.fetch_add(1, Ordering::Relaxed);
        if before >= self.limit {
            self.in_use.fetch_sub(1, Ordering::Relaxed);
            return Err(Exceeded::HostHandles { limit: self.limit });
        }
        Ok(())
    }

    fn give_back(&self, n: u64) {
        self.in_use.fetch_sub(n, Ordering::Relaxed);
    }

    /// The most descriptors steps may hold together.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Descriptors held by steps right now.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> u64 {
        self.in_use.load(Ordering::Relaxed)
    }
}

/// What the meter knows of one file in `/tmp`.
#[derive(Debug, Default)]
struct Inode {
    /// Bytes charged for it: the largest size it was allowed to reach since
    /// it last shrank. Never below its real size, so a write is never
    /// under-charged.
    charged: u64,
    /// Handles (descriptors, streams) of this instance that keep it open.
    open: u32,
    /// Its last name was removed: its space is freed once `open` is 0.
    unlinked: bool,
}

/// One instance's scratch and handle accounting, shared between the
/// filesystem layer and the file streams it hands out.
#[derive(Debug, Clone)]
pub(crate) struct Meter(Arc<Mutex<State>>);

#[derive(Debug)]
struct State {
    bytes_limit: u64,
    entries_limit: u64,
    bytes: u64,
    peak_bytes: u64,
    entries: u64,
    inodes: HashMap<u64, Inode>,
    /// Descriptors of the host this instance holds through the budget.
    fds: u64,
    directory_streams: u32,
    budget: Arc<FdBudget>,
    /// The first refusal, which names the attempt's outcome if it fails.
    exceeded: Option<Exceeded>,
}

impl Meter {
    pub(crate) fn new(bytes_limit: u64, entries_limit: u64, budget: Arc<FdBudget>) -> Meter {
        Meter(Arc::new(Mutex::new(State {
            bytes_limit,
            entries_limit,
            bytes: 0,
            peak_bytes: 0,
            entries: 0,
            inodes: HashMap::new(),
            fds: 0,
            directory_streams: 0,
            budget,
            exceeded: None,
        })))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most bytes `/tmp` held at any time.
    pub(crate) fn peak_bytes(&self) -> u64 {
        self.state().peak_bytes
    }

    /// The first refusal, if any.
    pub(crate) fn exceeded(&self) -> Option<Exceeded> {
        self.state().exceeded
    }

    /// Records a refusal that happened outside the meter (a full handle table).
    pub(crate) fn refused(&self, why: Exceeded) -> Exceeded {
        self.state().refuse(why)
    }

    /// Allows `file` to reach `end` bytes, charging what it grows by.
    pub(crate) fn grow(&self, file: u64, end: u64) -> Result<(), Exceeded> {
        let mut s = self.state();
        let charged = s.inodes.get(&file).map_or(0, |i| i.charged);
        if end <= charged {
            return Ok(());
        }
        s.charge(end - charged)?;
        s.inodes.entry(file).or_default().charged = end;
        Ok(())
    }

    /// Allows `len` more bytes at the end of `file` (an append stream's write).
    pub(crate) fn append(&self, file: u64, len: u64) -> Result<(), Exceeded> {
        let mut s = self.state();
        s.charge(len)?;
        let inode = s.inodes.entry(file).or_default();
        inode.charged = inode.charged.saturating_add(len);
        Ok(())
    }

    /// Asks whether `more` bytes would still fit, without charging them.
    pub(crate) fn check_bytes(&self, more: u64) -> Result<(), Exceeded> {
        self.state().fits(more).map(drop)
    }

    /// Whether `/tmp` holds as many names as it may.
    pub(crate) fn entries_full(&self) -> bool {
        let s = self.state();
        s.entries >= s.entries_limit
    }

    /// Sets `file`'s size to `size` (a truncation refunds, an extension charges).
    pub(crate) fn resize(&self, file: u64, size: u64) -> Result<(), Exceeded> {
        let mut s = self.state();
        let charged = s.inodes.get(&file).map_or(0, |i| i.charged);
        if size > charged {
            s.charge(size - charged)?;
        } else {
            s.bytes -= charged - size;
        }
        s.inodes.entry(file).or_default().charged = size;
        Ok(())
    }

    /// Asks for one more name in `/tmp` (before creating it).
    pub(crate) fn check_entry(&self) -> Result<(), Exceeded> {
        let mut s = self.state();
        if s.entries >= s.entries_limit {
            let why = Exceeded::Entries {
                limit: s.entries_limit,
                requested: s.entries + 1,
            };
            return Err(s.refuse(why));
        }
        Ok(())
    }

    /// A name was created. `file` and `size` describe what it names, when it
    /// takes space of its own (a symlink's target).
    pub(crate) fn entry_added(&self, takes: Option<(u64, u64)>) -> Result<(), Exceeded> {
        let mut s = self.state();
        s.entries += 1;
        if let Some((file, size)) = takes {
            s.charge(size)?;
            s.inodes.entry(file).or_default().charged = size;
        }
        Ok(())
    }

    /// A name was removed. `file` is the inode it named, if known, and
    /// `last` whether it was that inode's last name.
    pub(crate) fn entry_removed(&self, file: Option<u64>, last: bool) {
        let mut s = self.state();
        s.entries = s.entries.saturating_sub(1);
        if let Some(file) = file
            && last
            && let Some(inode) = s.inodes.get_mut(&file)
        {
            inode.unlinked = true;
            if inode.open == 0 {
                s.free(file);
            }
        }
    }

    /// Asks for a host descriptor for a new handle of this instance.
    pub(crate) fn take_fd(&self) -> Result<(), Exceeded> {
        let mut s = self.state();
        if let Err(why) = s.budget.take() {
            return Err(s.refuse(why));
        }
        s.fds += 1;
        Ok(())
    }

    /// Gives back a descriptor taken with [`Meter::take_fd`].
    pub(crate) fn give_back_fd(&self) {
        let mut s = self.state();
        if s.fds > 0 {
            s.fds -= 1;
            s.budget.give_back(1);
        }
    }

    /// Asks to open one more directory listing.
    pub(crate) fn take_directory_stream(&self) -> Result<(), Exceeded> {
        let mut s = self.state();
        if s.directory_streams >= MAX_DIRECTORY_STREAMS {
            let why = Exceeded::Handles {
                limit: u64::from(MAX_DIRECTORY_STREAMS),
            };
            return Err(s.refuse(why));
        }
        s.directory_streams += 1;
        Ok(())
    }

    /// A directory listing was closed.
    pub(crate) fn give_back_directory_stream(&self) {
        let mut s = self.state();
        s.directory_streams = s.directory_streams.saturating_sub(1);
    }

    /// A handle to `file` was opened; `size` is the file's size, which is
    /// charged if the meter did not know the file (it cannot be bigger than
    /// what was charged for it otherwise). True if the file was new to the
    /// meter.
    pub(crate) fn opened(&self, file: u64, size: u64) -> bool {
        let mut s = self.state();
        let new = !s.inodes.contains_key(&file);
        if new && size > 0 {
            s.bytes += size;
            s.peak_bytes = s.peak_bytes.max(s.bytes);
        }
        let inode = s.inodes.entry(file).or_default();
        inode.charged = inode.charged.max(size);
        inode.open += 1;
        new
    }

    /// A handle to `file` was closed.
    pub(crate) fn closed(&self, file: u64) {
        let mut s = self.state();
        if let Some(inode) = s.inodes.get_mut(&file) {
            inode.open = inode.open.saturating_sub(1);
            if inode.open == 0 && inode.unlinked {
                s.free(file);
            }
        }
    }
}

impl State {
    fn refuse(&mut self, why: Exceeded) -> Exceeded {
        self.exceeded.get_or_insert(why);
        why
    }

    /// The bytes in use with `more` on top, if that fits the quota.
    fn fits(&mut self, more: u64) -> Result<u64, Exceeded> {
        let requested = self.bytes.saturating_add(more);
        if requested > self.bytes_limit {
            let why = Exceeded::Bytes {
                limit: self.bytes_limit,
                requested,
            };
            return Err(self.refuse(why));
        }
        Ok(requested)
    }

    fn charge(&mut self, more: u64) -> Result<(), Exceeded> {
        self.bytes = self.fits(more)?;
        self.peak_bytes = self.peak_bytes.max(self.bytes);
        Ok(())
    }

    fn free(&mut self, file: u64) {
        if let Some(inode) = self.inodes.remove(&file) {
            self.bytes -= inode.charged;
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        // The instance is gone, and with it every handle it held.
        self.budget.give_back(self.fds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(bytes: u64, entries: u64) -> Meter {
        Meter::new(bytes, entries, Arc::new(FdBudget::new(100)))
    }

    #[test]
    fn writes_are_charged_by_how_far_they_extend_a_file() {
        let m = meter(100, 10);
        m.grow(1, 40).unwrap();
        m.grow(1, 30).unwrap(); // an overwrite inside the file costs nothing
        m.grow(2, 50).unwrap();
        assert_eq!(
            m.grow(1, 51),
            Err(Exceeded::Bytes {
                limit: 100,
                requested: 101
            })
        );
        assert_eq!(m.peak_bytes(), 90);
        assert!(matches!(m.exceeded(), Some(Exceeded::Bytes { .. })));
    }

    #[test]
    fn truncation_refunds_and_extension_charges() {
        let m = meter(100, 10);
        m.grow(1, 80).unwrap();
        m.resize(1, 10).unwrap();
        m.grow(2, 90).unwrap();
        assert!(m.resize(1, 11).is_err());
        assert_eq!(m.peak_bytes(), 100);
    }

    #[test]
    fn an_unlinked_file_keeps_its_space_while_a_handle_holds_it() {
        let m = meter(100, 10);
        m.opened(1, 0);
        m.grow(1, 70).unwrap();
        m.entry_removed(Some(1), true);
        assert!(
            m.grow(2, 40).is_err(),
            "the unlinked file still takes its 70 bytes"
        );
        m.closed(1);
        m.grow(2, 40).unwrap();
    }

    #[test]
    fn a_file_with_another_name_keeps_its_space() {
        let m = meter(100, 10);
        m.grow(1, 70).unwrap();
        m.entry_removed(Some(1), false);
        assert!(m.grow(2, 40).is_err());
        m.entry_removed(Some(1), true);
        m.grow(2, 40).unwrap();
    }

    #[test]
    fn entries_are_capped_and_freed_names_count_again() {
        let m = meter(100, 2);
        for _ in 0..2 {
            m.check_entry().unwrap();
            m.entry_added(None).unwrap();
        }
        assert_eq!(
            m.check_entry(),
            Err(Exceeded::Entries {
                limit: 2,
                requested: 3
            })
        );
        m.entry_removed(Some(9), true);
        m.check_entry().unwrap();
    }

    #[test]
    fn the_host_budget_is_shared_and_given_back_when_an_instance_ends() {
        let budget = Arc::new(FdBudget::new(3));
        let a = Meter::new(0, 0, Arc::clone(&budget));
        let b = Meter::new(0, 0, Arc::clone(&budget));
        a.take_fd().unwrap();
        a.take_fd().unwrap();
        b.take_fd().unwrap();
        assert_eq!(b.take_fd(), Err(Exceeded::HostHandles { limit: 3 }));
        b.give_back_fd();
        b.give_back_fd(); // more than it took: ignored
        assert_eq!(budget.in_use(), 2);
        drop(a);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn the_first_refusal_names_the_outcome() {
        let m = meter(10, 0);
        assert!(m.check_entry().is_err());
        assert!(m.grow(1, 11).is_err());
        assert!(matches!(m.exceeded(), Some(Exceeded::Entries { .. })));
        assert_eq!(
            m.exceeded().unwrap().outcome().kind(),
            crate::OutcomeKind::ScratchLimit
        );
    }
}
