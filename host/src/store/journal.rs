//! The journal's one writer: group commit on a thread of its own.
//!
//! Appending is pushing onto a buffer under a short lock and taking a
//! [`Ticket`]; the writer thread swaps the whole buffer out, writes it in one
//! transaction and publishes the ticket it reached. A run that must not go on
//! before its events are durable awaits its ticket; while one commit's fsync
//! runs, the next batch fills up, so throughput grows with the number of
//! runs instead of falling to one fsync per step. Waiters queue by ticket,
//! and a commit wakes only those it satisfies: with thousands of runs
//! waiting, waking them all on every commit costs more than the SQL.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{DEFAULT_LEASE, Durability, Event, RecoveredRun, RunId, StoreError, StoreWriter, now_millis};

/// Under strict durability, how long the writer looks for more events
/// before it commits, while they keep coming...
const LINGER_LOOK: Duration = Duration::from_millis(1);
/// ...at most this long in all (and [`LINGER_PER_COMMIT`] times as long as
/// the last commit took)...
const MAX_LINGER: Duration = Duration::from_millis(10);
/// ...unless it already has this many...
///
/// A commit's cost is mostly per page it rewrites, and the pages a batch
/// dirties grow far slower than its events: under load, batches of a few
/// thousand events cost the writer about a fifth less per workflow than
/// batches of 500. The price is latency under load only: a commit waits up to
/// 10 ms while events keep coming, and a lone run commits at once.
const LINGER_ENOUGH: usize = 8192;
/// ...and only when the last batch had this many: a sign of load.
const LINGER_LOAD: usize = 16;
/// A linger pays for itself when commits are costly: the batch it gathers
/// spreads one commit's cost over more runs. When commits are quick, as
/// when few runs are in flight (the default quota admits 256), every run
/// soon waits on this very commit and a long linger only idles the
/// workers: 256 runs at once went from half of in-memory throughput to two
/// thirds with this bound. With 5,000 at once, batches shrank from about
/// 1,600 events to about 650 and throughput stayed within the noise (a
/// median of 23 % under in-memory over nine paired runs, against 22 %).
const LINGER_PER_COMMIT: u32 = 2;

/// The first block of run ids a journal asks its store for...
const FIRST_ID_BLOCK: u64 = 64;
/// ...and the largest, each block twice the one before: a host that
/// accepts runs by the thousand asks rarely (each ask is a commit of its
/// own, and holds up the writer), while one that accepts a few holds few
/// ids it may not use (a crash can leave them unused).
const MAX_ID_BLOCK: u64 = 8192;

/// How a [`Journal`] writes.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// [`Durability::Strict`] or [`Durability::Batched`]; a journal under
    /// [`Durability::Memory`] is not started at all.
    pub durability: Durability,
    /// Under [`Durability::Batched`], the longest a completion waits to be
    /// written (the most a crash can lose).
    pub batch_window: Duration,
    /// How long this host's claim on its runs lasts without renewal; it is
    /// renewed every third of it.
    pub lease: Duration,
    /// This host's name in the runs it owns: unique per process start, so
    /// that a restarted host (same host name, same pid in a new container)
    /// is never taken for the one before, whose runs it must claim.
    pub owner: String,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            durability: Durability::Strict,
            batch_window: Duration::from_millis(10),
            lease: DEFAULT_LEASE,
            owner: default_owner(),
        }
    }
}

/// A name for this host process: host name, pid, and a random part, since
/// a container restarted under the same host name often gets the same pid.
fn default_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    format!("{host}:{}:{:08x}", std::process::id(), fastrand::u32(..))
}

/// Told of every commit: for metrics.
pub trait CommitObserver: Send + Sync {
    /// A batch of `events` was committed in `took`.
    fn committed(&self, events: usize, took: Duration);

    /// A commit refused `events` events: their runs are no longer this
    /// host's (see [`Journal::lost`]).
    fn fenced(&self, events: usize) {
        let _ = events;
    }
}

/// A position in the journal: events appended up to it are durable once
/// [`Journal::durable`] returns for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Ticket(u64);

/// What the journal has done, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JournalStats {
    /// Transactions committed.
    pub commits: u64,
    /// Events written.
    pub events: u64,
    /// Events in the largest batch.
    pub largest_batch: u64,
    /// Time spent writing and committing, in total.
    pub commit_time: Duration,
    /// Events the store refused: their runs had been claimed by another
    /// host (after this one's lease ended) or released.
    pub fenced_events: u64,
}

/// Group-committing writer of journal events. Clones share one writer.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
}

struct Shared {
    buffer: Mutex<Buffer>,
    wake: Condvar,
    /// How far the writer got, the failure that stopped it if one did, and
    /// who waits for more.
    progress: Mutex<Progress>,
    /// `progress.written`, readable without the lock: most waits under load
    /// are for tickets already written, and need not queue for it.
    written: AtomicU64,
    durability: Durability,
    owner: Arc<str>,
    lease: Duration,
    /// The store, shared by the writer thread (per batch) and id
    /// allocation (once a block is used up).
    store: Mutex<Box<dyn StoreWriter>>,
    /// The ids of the current block not yet handed out, and the size of
    /// the next block.
    ids: Mutex<(Range<RunId>, u64)>,
    /// Runs whose events the store refused: another host owns them now.
    lost: Mutex<HashSet<RunId>>,
    stats: Mutex<JournalStats>,
    thread: Mutex<Option<JoinHandle<()>>>,
    observer: std::sync::OnceLock<Arc<dyn CommitObserver>>,
}

/// How far the writer got. A ticket written before a failure stays
/// written: the failure only concerns what came after.
#[derive(Debug, Default)]
struct Progress {
    written: u64,
    failed: Option<StoreError>,
    /// Gone: the writer thread has ended, and nothing more will be written.
    ended: bool,
    /// Waiters, the lowest ticket first.
    waiting: BinaryHeap<Reverse<Waiter>>,
}

/// A task waiting for a ticket: woken once it is written, or once nothing
/// more will be. The task's own waker, not a channel: under strict
/// durability every run waits several times, and a channel per wait is an
/// allocation made on one thread and freed on another.
#[derive(Debug)]
struct Waiter {
    ticket: u64,
    waker: Waker,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.ticket == other.ticket
    }
}

impl Eq for Waiter {}

impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.ticket.cmp(&other.ticket)
    }
}

impl Progress {
    /// What a waiter for `ticket` hears now, if it need not wait.
    fn outcome(&self, ticket: u64) -> Option<Result<(), StoreError>> {
        if self.written >= ticket {
            return Some(Ok(()));
        }
        if let Some(e) = &self.failed {
            return Some(Err(StoreError::Stopped(Box::new(e.clone()))));
        }
        self.ended.then(|| {
            Err(StoreError::Other {
                path: "(journal)".into(),
                detail: "the journal was closed before these events were written".into(),
            })
        })
    }

    /// Moves to `ready` the wakers of the waiters whose tickets are
    /// written; all of them once the writer failed or ended (they then hear
    /// why). The caller wakes them after releasing the lock, so that waking
    /// (which may make a system call) holds up no one registering.
    fn take_ready(&mut self, ready: &mut Vec<Waker>) {
        let all = self.failed.is_some() || self.ended;
        while let Some(Reverse(first)) = self.waiting.peek() {
            if !all && first.ticket > self.written {
                break;
            }
            if let Some(Reverse(waiter)) = self.waiting.pop() {
                ready.push(waiter.waker);
            }
        }
    }
}

#[derive(Default)]
struct Buffer {
    events: Vec<Event>,
    /// Events appended since the start: the latest ticket.
    appended: u64,
    /// Write now, even inside a batch window.
    flush: bool,
    closed: bool,
    failed: bool,
    /// The writer sleeps on the condition variable: appenders must wake it.
    /// Waking only then spares every append a futex syscall.
    idle: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the buffer consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("durability", &self.shared.durability)
            .field("owner", &self.shared.owner)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Claims `store`'s incomplete runs for this host, then starts the writer.
    /// Returns the journal and the runs to resume.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot be read or written, or
    /// [`StoreError::Other`] if `config` asks for [`Durability::Memory`].
    pub fn start(
        mut store: Box<dyn StoreWriter>,
        config: JournalConfig,
    ) -> Result<(Journal, Vec<RecoveredRun>), StoreError> {
        if config.durability == Durability::Memory {
            return Err(StoreError::Other {
                path: "(memory)".into(),
                detail: "a journal under `memory` durability writes nothing; run without one".into(),
            });
        }
        let lease_ms = i64::try_from(config.lease.as_millis()).unwrap_or(i64::MAX);
        let recovered = store.claim_incomplete(&config.owner, now_millis().saturating_add(lease_ms))?;
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer::default()),
            wake: Condvar::new(),
            progress: Mutex::new(Progress::default()),
            written: AtomicU64::new(0),
            durability: config.durability,
            owner: config.owner.into(),
            lease: config.lease,
            store: Mutex::new(store),
            ids: Mutex::new((0..0, FIRST_ID_BLOCK)),
            lost: Mutex::new(HashSet::new()),
            stats: Mutex::new(JournalStats::default()),
            thread: Mutex::new(None),
            observer: std::sync::OnceLock::new(),
        });
        let writer = Arc::clone(&shared);
        let window = config.batch_window;
        let thread = std::thread::Builder::new()
            .name("stepbox-journal".into())
            .spawn(move || writer.run(window))
            .map_err(|e| StoreError::Other {
                path: "(journal)".into(),
                detail: format!("cannot start the journal's writer thread: {e}"),
            })?;
        *lock(&shared.thread) = Some(thread);
        Ok((Journal { shared }, recovered))
    }

    /// The durability level it writes at.
    pub fn durability(&self) -> Durability {
        self.shared.durability
    }

    /// This host's name in the runs it owns.
    pub fn owner(&self) -> &Arc<str> {
        &self.shared.owner
    }

    /// The lease a newly accepted run gets, as an instant in journal time.
    pub fn lease_until(&self) -> super::Millis {
        let lease = i64::try_from(self.shared.lease.as_millis()).unwrap_or(i64::MAX);
        now_millis().saturating_add(lease)
    }

    /// How long this host's claims last without renewal.
    pub fn lease(&self) -> Duration {
        self.shared.lease
    }

    /// Claims, for this host, at most `limit` runs of hosts that died or
    /// stopped (see [`StoreWriter::claim_orphans`]), to resume. Blocks on
    /// the store: call it off the async threads.
    ///
    /// # Errors
    ///
    /// The store's [`StoreError`]; nothing is claimed then.
    pub fn claim_orphans(&self, limit: usize) -> Result<Vec<RecoveredRun>, StoreError> {
        let until = self.lease_until();
        lock(&self.shared.store).claim_orphans(&self.shared.owner, until, limit)
    }

    /// A new run id, never handed out before by this store (to this host
    /// or any other sharing it). Ids come from the store in blocks; the
    /// first call after a block is used up asks it for another.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the store cannot hand out a block.
    pub fn next_run_id(&self) -> Result<RunId, StoreError> {
        let mut ids = lock(&self.shared.ids);
        if ids.0.is_empty() {
            let block = ids.1;
            ids.0 = lock(&self.shared.store).allocate_run_ids(block)?;
            ids.1 = (block * 2).min(MAX_ID_BLOCK);
        }
        let id = ids.0.start;
        ids.0.start += 1;
        Ok(id)
    }

    /// Whether the store refused events of `run` because another host
    /// owns it now (claimed after this host's lease ended): this host must
    /// stop working on it, since nothing more it does for it is recorded.
    pub fn lost(&self, run: RunId) -> bool {
        lock(&self.shared.lost).contains(&run)
    }

    /// Appends one event; it is written with the next batch.
    pub fn append(&self, event: Event) -> Ticket {
        let mut buffer = lock(&self.shared.buffer);
        if !buffer.failed {
            buffer.events.push(event);
        }
        buffer.appended += 1;
        let ticket = Ticket(buffer.appended);
        self.shared.wake_writer(buffer);
        ticket
    }

    /// Appends events in order, in one batch.
    pub fn append_all(&self, events: impl IntoIterator<Item = Event>) -> Ticket {
        let mut buffer = lock(&self.shared.buffer);
        let before = buffer.events.len();
        if buffer.failed {
            buffer.appended += events.into_iter().count() as u64;
        } else {
            buffer.events.extend(events);
            buffer.appended += (buffer.events.len() - before) as u64;
        }
        let ticket = Ticket(buffer.appended);
        self.shared.wake_writer(buffer);
        ticket
    }

    /// Waits until what the durability level promises about `ticket` holds:
    /// written under [`Durability::Strict`]; at once under
    /// [`Durability::Batched`] (the window bounds the loss). Events the
    /// store refused (see [`Journal::lost`]) count as written: the batch
    /// they were in was.
    ///
    /// # Errors
    ///
    /// The [`StoreError`] that stopped the writer.
    pub async fn durable(&self, ticket: Ticket) -> Result<(), StoreError> {
        match self.shared.durability {
            Durability::Strict | Durability::Memory => self.written(ticket).await,
            Durability::Batched => self.status(),
        }
    }

    /// Waits until the events up to `ticket` are written, whatever the level.
    ///
    /// # Errors
    ///
    /// The [`StoreError`] that stopped the writer.
    pub async fn written(&self, ticket: Ticket) -> Result<(), StoreError> {
        // The waker registered, if any: its entry stays queued until the
        // ticket is written or the writer stops, and either ends the wait.
        let mut queued: Option<Waker> = None;
        std::future::poll_fn(|cx| {
            // A ticket written stays written, whatever fails later.
            if self.shared.written.load(Ordering::Acquire) >= ticket.0 {
                return Poll::Ready(Ok(()));
            }
            // The writer publishes under this lock before it wakes anyone:
            // checked and queued under it, no wake-up is missed.
            let mut progress = lock(&self.shared.progress);
            if let Some(outcome) = progress.outcome(ticket.0) {
                return Poll::Ready(outcome);
            }
            // Polled again before its ticket came (by a `select!`, say): one
            // entry per task is enough, unless it moved to another.
            if !queued.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                let waker = cx.waker().clone();
                queued = Some(waker.clone());
                progress.waiting.push(Reverse(Waiter {
                    ticket: ticket.0,
                    waker,
                }));
            }
            Poll::Pending
        })
        .await
    }

    /// Writes everything appended so far, now, and waits for it.
    ///
    /// # Errors
    ///
    /// The [`StoreError`] that stopped the writer.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let ticket = Ticket(lock(&self.shared.buffer).appended);
        self.commit(ticket).await
    }

    /// Writes the events up to `ticket` now, cutting a batch window short,
    /// and waits for them: for what must be durable at every level (a run's
    /// acceptance).
    ///
    /// # Errors
    ///
    /// The [`StoreError`] that stopped the writer.
    pub async fn commit(&self, ticket: Ticket) -> Result<(), StoreError> {
        // Already written: flagging a flush would only cut the next batch short.
        if self.shared.written.load(Ordering::Acquire) >= ticket.0 {
            return Ok(());
        }
        {
            let mut buffer = lock(&self.shared.buffer);
            buffer.flush = true;
            self.shared.wake_writer(buffer);
        }
        self.written(ticket).await
    }

    /// Whether the writer is still working.
    ///
    /// # Errors
    ///
    /// The [`StoreError`] that stopped it.
    pub fn status(&self) -> Result<(), StoreError> {
        match &lock(&self.shared.progress).failed {
            None => Ok(()),
            Some(e) => Err(StoreError::Stopped(Box::new(e.clone()))),
        }
    }

    /// Tells `observer` of every commit from now on. A journal has one
    /// observer; later ones are ignored.
    pub fn observe(&self, observer: Arc<dyn CommitObserver>) {
        let _ = self.shared.observer.set(observer);
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> JournalStats {
        *lock(&self.shared.stats)
    }

    /// Writes what is left and stops the writer, blocking until it has;
    /// then gives back to the store the run ids it did not hand out and the
    /// leases of the runs left incomplete (so that the next host takes them
    /// over at once). Other clones can still append, but nothing more is
    /// written.
    ///
    /// # Errors
    ///
    /// The [`StoreError`] that stopped the writer, if one did.
    pub fn close(&self) -> Result<(), StoreError> {
        let mut buffer = lock(&self.shared.buffer);
        buffer.closed = true;
        self.shared.wake_writer(buffer);
        if let Some(thread) = lock(&self.shared.thread).take() {
            let _ = thread.join();
            if self.status().is_ok() {
                self.shared.hand_back();
            }
        }
        self.status()
    }
}

impl Shared {
    /// Gives back the unused ids and the leases, once the writer has ended.
    /// Best effort: if either fails, the ids stay unused and the leases
    /// end on their own.
    fn hand_back(&self) {
        // Taken so that no id handed out later can come from it.
        let unused = std::mem::replace(&mut lock(&self.ids).0, 0..0);
        let mut store = lock(&self.store);
        if let Err(e) = store.release_run_ids(unused) {
            tracing::warn!(error = %e, "cannot give back unused run ids");
        }
        if let Err(e) = store.release_leases(&self.owner) {
            tracing::warn!(error = %e, "cannot release the leases of incomplete runs");
        }
    }

    fn wake_writer(&self, mut buffer: MutexGuard<'_, Buffer>) {
        if buffer.idle {
            buffer.idle = false;
            drop(buffer);
            self.wake.notify_one();
        }
    }

    /// Waits on the condition variable as the idle writer, for at most `timeout`.
    fn sleep<'a>(&self, mut buffer: MutexGuard<'a, Buffer>, timeout: Duration) -> MutexGuard<'a, Buffer> {
        buffer.idle = true;
        let mut buffer = self
            .wake
            .wait_timeout(buffer, timeout)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        buffer.idle = false;
        buffer
    }

    /// The writer thread: waits for events, writes each batch in one
    /// transaction, publishes how far it got; renews leases while idle.
    /// Once it ends, waiters still waiting hear that nothing more is written.
    fn run(&self, window: Duration) {
        self.write_until_closed(window);
        let mut ready = Vec::new();
        let mut progress = lock(&self.progress);
        progress.ended = true;
        progress.take_ready(&mut ready);
        drop(progress);
        ready.into_iter().for_each(Waker::wake);
    }

    fn write_until_closed(&self, window: Duration) {
        let renew_every = (self.lease / 3).max(Duration::from_millis(10));
        let mut last_renewal = Instant::now();
        let mut last_commit = Instant::now();
        let mut last_batch = 0;
        let mut last_took = Duration::ZERO;
        let mut batch = Vec::new();
        let mut ready = Vec::new();
        loop {
            let mut buffer = lock(&self.buffer);
            loop {
                if buffer.closed && buffer.events.is_empty() {
                    return;
                }
                let due = last_renewal.elapsed() >= renew_every;
                if due || !buffer.events.is_empty() {
                    break;
                }
                buffer = self.sleep(buffer, renew_every.saturating_sub(last_renewal.elapsed()));
            }
            match self.durability {
                Durability::Batched => {
                    // Let the window fill; a flush or close cuts it short.
                    let until = last_commit + window;
                    while !buffer.flush && !buffer.closed {
                        let left = until.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        buffer = self.sleep(buffer, left);
                    }
                }
                Durability::Strict | Durability::Memory if last_batch >= LINGER_LOAD => {
                    // Under load, linger while events keep arriving, so that
                    // one fsync covers many runs. (A lone run, whose batches
                    // are small, is committed at once.)
                    let until = Instant::now() + linger_cap(last_took);
                    let mut seen = buffer.events.len();
                    while seen < LINGER_ENOUGH && !buffer.flush && !buffer.closed && Instant::now() < until {
                        drop(buffer);
                        std::thread::sleep(LINGER_LOOK);
                        buffer = lock(&self.buffer);
                        if buffer.events.len() == seen {
                            break;
                        }
                        seen = buffer.events.len();
                    }
                }
                Durability::Strict | Durability::Memory => {}
            }
            std::mem::swap(&mut batch, &mut buffer.events);
            last_batch = batch.len();
            buffer.flush = false;
            let ticket = buffer.appended;
            drop(buffer);

            let result = if batch.is_empty() {
                Ok(())
            } else {
                let started = Instant::now();
                let result = lock(&self.store).write(&self.owner, &batch);
                let mut stats = lock(&self.stats);
                stats.commits += 1;
                stats.events += batch.len() as u64;
                stats.largest_batch = stats.largest_batch.max(batch.len() as u64);
                let took = started.elapsed();
                last_took = took;
                stats.commit_time += took;
                drop(stats);
                if let Some(observer) = self.observer.get() {
                    observer.committed(batch.len(), took);
                }
                last_commit = Instant::now();
                result.map(|report| self.note_refused(&report))
            };
            let result = result.and_then(|()| {
                if last_renewal.elapsed() < renew_every {
                    return Ok(());
                }
                last_renewal = Instant::now();
                let lease = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
                lock(&self.store)
                    .renew_leases(&self.owner, now_millis().saturating_add(lease))
                    .map(drop)
            });
            batch.clear();
            match result {
                Ok(()) => {
                    let mut progress = lock(&self.progress);
                    progress.written = ticket;
                    self.written.store(ticket, Ordering::Release);
                    progress.take_ready(&mut ready);
                    drop(progress);
                    ready.drain(..).for_each(Waker::wake);
                }
                Err(e) => {
                    tracing::error!(error = %e, "the journal stopped");
                    let mut buffer = lock(&self.buffer);
                    buffer.failed = true;
                    buffer.events.clear();
                    drop(buffer);
                    let mut progress = lock(&self.progress);
                    progress.failed = Some(e);
                    progress.take_ready(&mut ready);
                    drop(progress);
                    ready.drain(..).for_each(Waker::wake);
                    return;
                }
            }
        }
    }
}

impl Shared {
    /// Counts what a commit refused, and remembers its runs as lost.
    fn note_refused(&self, report: &super::WriteReport) {
        if !report.refused_any() {
            return;
        }
        let events = report.refused_events();
        tracing::warn!(
            events,
            runs = report.refused.len(),
            "the journal refused events of runs another host owns now"
        );
        lock(&self.stats).fenced_events += events as u64;
        lock(&self.lost).extend(report.refused.iter().map(|r| r.run));
        if let Some(observer) = self.observer.get() {
            observer.fenced(events);
        }
    }
}

/// How long a loaded writer may linger after a commit that took `last`:
/// at least one look, at most [`MAX_LINGER`].
fn linger_cap(last: Duration) -> Duration {
    (last * LINGER_PER_COMMIT).clamp(LINGER_LOOK, MAX_LINGER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RunFilter, RunState, SqliteReader, SqliteStore, StoreReader};

    fn accepted(journal: &Journal, run: RunId) -> Event {
        Event::RunAccepted {
            run,
            workflow: "w".into(),
            name: "w".into(),
            lease_until: journal.lease_until(),
            queued: false,
            input: b"{}".to_vec(),
            at: now_millis(),
            tenant: None,
            key: None,
        }
    }

    #[test]
    fn a_linger_is_bounded_by_what_commits_cost() {
        // Quick commits (few runs in flight) get a short linger...
        assert_eq!(linger_cap(Duration::from_micros(300)), LINGER_LOOK);
        assert_eq!(linger_cap(Duration::from_millis(2)), Duration::from_millis(4));
        // ...costly ones a longer one, never past the cap.
        assert_eq!(linger_cap(Duration::from_millis(50)), MAX_LINGER);
    }

    #[tokio::test]
    async fn strict_tickets_are_written_before_durable_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let store = SqliteStore::open(&path, Durability::Strict).unwrap();
        let (journal, recovered) = Journal::start(Box::new(store), JournalConfig::default()).unwrap();
        assert!(recovered.is_empty());
        let id = journal.next_run_id().unwrap();
        let ticket = journal.append(accepted(&journal, id));
        journal.durable(ticket).await.unwrap();
        // A reader sees it at once: it is committed.
        let reader = SqliteReader::open(&path).unwrap();
        let runs = reader.runs(&RunFilter::default()).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].status, RunState::Accepted);
        journal.close().unwrap();
    }

    #[tokio::test]
    async fn batched_writes_within_the_window_and_on_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let store = SqliteStore::open(&path, Durability::Batched).unwrap();
        let config = JournalConfig {
            durability: Durability::Batched,
            batch_window: Duration::from_secs(3600),
            ..JournalConfig::default()
        };
        let (journal, _) = Journal::start(Box::new(store), config).unwrap();
        for _ in 0..100 {
            let id = journal.next_run_id().unwrap();
            journal
                .durable(journal.append(accepted(&journal, id)))
                .await
                .unwrap();
        }
        journal.flush().await.unwrap();
        let reader = SqliteReader::open(&path).unwrap();
        assert_eq!(reader.runs(&RunFilter::default()).unwrap().len(), 100);
        assert!(journal.stats().commits <= 2, "{:?}", journal.stats());
        journal.close().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiters_on_many_tickets_each_return_once_theirs_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("j.db"), Durability::Strict).unwrap();
        let (journal, _) = Journal::start(Box::new(store), JournalConfig::default()).unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..500 {
            let journal = journal.clone();
            tasks.spawn(async move {
                let id = journal.next_run_id().unwrap();
                let ticket = journal.append(accepted(&journal, id));
                journal.durable(ticket).await.map(|()| id)
            });
        }
        let mut ids = Vec::new();
        while let Some(done) = tasks.join_next().await {
            ids.push(done.unwrap().unwrap());
        }
        let reader = SqliteReader::open(&dir.path().join("j.db")).unwrap();
        let written: Vec<RunId> = reader
            .runs(&RunFilter::default())
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        for id in ids {
            assert!(
                written.contains(&id),
                "run {id} was reported durable but is not in the file"
            );
        }
        journal.close().unwrap();
    }

    #[tokio::test]
    async fn a_waiter_for_events_appended_after_close_hears_so_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("j.db"), Durability::Strict).unwrap();
        let (journal, _) = Journal::start(Box::new(store), JournalConfig::default()).unwrap();
        let other = journal.clone();
        tokio::task::spawn_blocking(move || other.close())
            .await
            .unwrap()
            .unwrap();
        let ticket = journal.append(accepted(&journal, 1));
        let outcome = tokio::time::timeout(Duration::from_secs(10), journal.durable(ticket))
            .await
            .expect("the waiter must not hang");
        let err = outcome.unwrap_err();
        assert!(err.to_string().contains("closed"), "{err}");
    }

    #[tokio::test]
    async fn a_failed_write_stops_the_journal_and_every_waiter_hears_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mut store = SqliteStore::open(&path, Durability::Strict).unwrap();
        store.set_max_pages(40).unwrap();
        let (journal, _) = Journal::start(Box::new(store), JournalConfig::default()).unwrap();
        let mut outcome = Ok(());
        for _ in 0..1000 {
            let id = journal.next_run_id().unwrap();
            let mut event = accepted(&journal, id);
            if let Event::RunAccepted { input, .. } = &mut event {
                *input = vec![b' '; 4096];
            }
            outcome = journal.durable(journal.append(event)).await;
            if outcome.is_err() {
                break;
            }
        }
        let err = outcome.unwrap_err();
        assert!(
            matches!(&err, StoreError::Stopped(e) if matches!(**e, StoreError::Full { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("disk is full"), "{err}");
        assert!(
            journal
                .durable(journal.append(accepted(&journal, 0)))
                .await
                .is_err()
        );
        assert!(journal.close().is_err());
    }

    #[tokio::test]
    async fn ids_stay_consecutive_across_a_graceful_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        for expected in [[1, 2, 3], [4, 5, 6]] {
            let store = SqliteStore::open(&path, Durability::Strict).unwrap();
            let (journal, _) = Journal::start(Box::new(store), JournalConfig::default()).unwrap();
            let ids: Vec<RunId> = (0..3).map(|_| journal.next_run_id().unwrap()).collect();
            assert_eq!(ids, expected);
            for &id in &ids {
                journal.append(accepted(&journal, id));
            }
            journal.flush().await.unwrap();
            journal.close().unwrap();
        }
    }

    #[tokio::test]
    async fn events_of_a_run_the_journal_does_not_own_are_counted_and_the_run_is_lost() {
        #[derive(Default)]
        struct Fenced(std::sync::atomic::AtomicUsize);
        impl CommitObserver for Fenced {
            fn committed(&self, _: usize, _: Duration) {}
            fn fenced(&self, events: usize) {
                self.0.fetch_add(events, Ordering::Relaxed);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("j.db"), Durability::Strict).unwrap();
        let (journal, _) = Journal::start(Box::new(store), JournalConfig::default()).unwrap();
        let observer = Arc::new(Fenced::default());
        journal.observe(observer.clone());
        let mine = journal.next_run_id().unwrap();
        journal.append(accepted(&journal, mine));
        // Run 999 is no one's: as a run another host claimed, its events are refused.
        let state = |run| Event::StateWritten {
            run,
            key: "k".into(),
            value: "1".into(),
        };
        let ticket = journal.append_all([state(mine), state(999), state(999)]);
        journal.durable(ticket).await.unwrap();
        assert!(journal.lost(999) && !journal.lost(mine));
        assert_eq!(journal.stats().fenced_events, 2);
        assert_eq!(observer.0.load(Ordering::Relaxed), 2);
        let reader = SqliteReader::open(&dir.path().join("j.db")).unwrap();
        assert_eq!(reader.history(mine).unwrap().unwrap().state.len(), 1);
        journal.close().unwrap();
    }
}
