//! Circuit breakers: stop sending work to a component that keeps failing.
//!
//! A [`CircuitBreaker`] is one component's state machine. It starts
//! [`Closed`](BreakerState::Closed) and counts failures; after too many it
//! opens and refuses work for a cooldown, failing fast instead of burning
//! instances on a component that is broken. When the cooldown ends it lets
//! exactly one probe run ([`HalfOpen`](BreakerState::HalfOpen)): success closes
//! it again, failure re-opens it for another cooldown.
//!
//! Which outcomes are failures is decided by [`Verdict::of`]: anything that says
//! the component misbehaved is a failure; invalid input is a *success* (the
//! component worked and rejected the caller's input); a cancelled run and a host
//! failure say nothing about the component and are ignored.
//!
//! [`Breakers`] keeps one breaker per component for a whole host.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::OutcomeKind;

use super::InvalidSetting;

/// When a breaker opens, and for how long.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use stepbox::policy::BreakerConfig;
///
/// let config = BreakerConfig { failure_ratio: Some(0.5), ..BreakerConfig::default() };
/// config.validate().unwrap();
/// assert_eq!(config.consecutive_failures, 5);
/// assert_eq!(config.window, 20);
/// assert_eq!(config.cooldown, Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Open after this many failures in a row (default 5).
    pub consecutive_failures: u32,
    /// Also open when at least this fraction of the last `window` results
    /// were failures, e.g. 0.5 (default `None`: only consecutive failures count).
    pub failure_ratio: Option<f64>,
    /// How many recent results the ratio is judged over (default 20). The
    /// ratio is only judged once that many results have been recorded.
    pub window: usize,
    /// How long an open breaker refuses work before letting a probe through (default 30s).
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    /// 5 consecutive failures, no ratio rule, a window of 20, a 30s cooldown.
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_ratio: None,
            window: 20,
            cooldown: Duration::from_secs(30),
        }
    }
}

impl BreakerConfig {
    /// Checks that the configuration makes sense, with a one-line reason when it does not.
    ///
    /// `consecutive_failures` and `window` must be at least 1, and
    /// `failure_ratio`, when set, must be in `(0, 1]`.
    ///
    /// # Errors
    ///
    /// An [`InvalidSetting`] naming the setting.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let too_small = |setting| InvalidSetting::TooSmall {
            setting,
            min: 1,
            note: "",
        };
        if self.consecutive_failures < 1 {
            return Err(too_small("consecutive-failures"));
        }
        if self.window < 1 {
            return Err(too_small("window"));
        }
        if let Some(ratio) = self.failure_ratio
            && !(ratio > 0.0 && ratio <= 1.0)
        {
            return Err(InvalidSetting::Ratio {
                setting: "failure-ratio",
                value: ratio,
            });
        }
        Ok(())
    }
}

/// What one run says about the health of the component that ran it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The component behaved: it completed, or it rejected invalid input.
    Success,
    /// The component misbehaved or could not finish.
    Failure,
    /// The run says nothing about the component (it was cancelled, or the host failed).
    Ignored,
}

impl Verdict {
    /// How a run that ended in `kind` counts for its component's breaker.
    ///
    /// - Success: `completed`, and `invalid-input` (bad input is the caller's
    ///   fault; the component worked when it rejected it).
    /// - Failure: the guest's own `retryable` and `failed` errors, `trap`,
    ///   `out-of-fuel`, `memory-limit`, `timeout`, `stack-overflow`,
    ///   `scratch-limit`, `handle-limit` and `output-too-large`.
    /// - Ignored: `cancelled` (stopped on purpose) and `host-failure` (the host
    ///   could not set the instance up; counting it would let one host problem
    ///   trip the breaker of every component).
    ///
    /// ```
    /// use stepbox::OutcomeKind;
    /// use stepbox::policy::Verdict;
    ///
    /// assert_eq!(Verdict::of(OutcomeKind::Trap), Verdict::Failure);
    /// assert_eq!(Verdict::of(OutcomeKind::InvalidInput), Verdict::Success);
    /// assert_eq!(Verdict::of(OutcomeKind::Cancelled), Verdict::Ignored);
    /// ```
    pub fn of(kind: OutcomeKind) -> Verdict {
        match kind {
            OutcomeKind::Completed | OutcomeKind::InvalidInput => Verdict::Success,
            OutcomeKind::Retryable
            | OutcomeKind::Failed
            | OutcomeKind::OutOfFuel
            | OutcomeKind::MemoryLimit
            | OutcomeKind::Timeout
            | OutcomeKind::OutputTooLarge
            | OutcomeKind::StackOverflow
            | OutcomeKind::ScratchLimit
            | OutcomeKind::HandleLimit
            | OutcomeKind::Trap => Verdict::Failure,
            // The component did not run, or the host is at fault: no verdict on the component.
            OutcomeKind::Cancelled
            | OutcomeKind::HostFailure
            | OutcomeKind::CircuitOpen
            | OutcomeKind::QuotaExceeded => Verdict::Ignored,
        }
    }
}

/// Whether a run that ended in `kind` counts as a failure of its component
/// (see [`Verdict::of`] for the full rule).
pub fn counts_as_failure(kind: OutcomeKind) -> bool {
    Verdict::of(kind) == Verdict::Failure
}

/// The state of a breaker, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Work runs normally; failures are counted.
    Closed,
    /// Work is refused until `until`.
    Open {
        /// When the cooldown ends and a probe may run.
        until: Instant,
    },
    /// The cooldown is over: one probe at a time may run (it may already be
    /// running), and everything else is refused until it reports.
    HalfOpen,
}

impl BreakerState {
    /// The kebab-case name used in reports: `closed`, `open` or `half-open`.
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// Leave to run once, from [`CircuitBreaker::try_acquire`].
///
/// Hand it back with [`CircuitBreaker::record`] (or
/// [`record_kind`](CircuitBreaker::record_kind)) when the run ends, or with
/// [`CircuitBreaker::release`] if it never ran or its result says nothing. A
/// permit remembers the breaker and the state it was issued in: results of
/// permits issued before the breaker last changed state are ignored, so a slow
/// run from before a breaker opened cannot close it again.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a permit must be handed back with record or release"]
pub struct Permit {
    breaker: u64,
    generation: u64,
    probe: bool,
}

impl Permit {
    /// Whether this is the single probe of a half-open breaker.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// Why [`CircuitBreaker::try_acquire`] refused to let a run start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejected {
    /// The breaker is open until this instant.
    OpenUntil(Instant),
    /// The breaker is half-open and its probe has not reported yet.
    ProbeInFlight,
}

/// A circuit breaker for one component.
///
/// Time is passed in, never read, so the state machine is deterministic.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use stepbox::policy::{BreakerConfig, BreakerState, CircuitBreaker, Rejected};
///
/// let config = BreakerConfig { consecutive_failures: 2, cooldown: Duration::from_secs(10), ..Default::default() };
/// let mut breaker = CircuitBreaker::new(config);
/// let t0 = Instant::now();
///
/// for _ in 0..2 {
///     let permit = breaker.try_acquire(t0).unwrap();
///     breaker.record(permit, false, t0);
/// }
/// let until = t0 + Duration::from_secs(10);
/// assert_eq!(breaker.state(t0), BreakerState::Open { until });
/// assert_eq!(breaker.try_acquire(t0).unwrap_err(), Rejected::OpenUntil(until));
///
/// // After the cooldown exactly one probe runs; its success closes the breaker.
/// let probe = breaker.try_acquire(until).unwrap();
/// assert!(probe.is_probe());
/// assert_eq!(breaker.try_acquire(until).unwrap_err(), Rejected::ProbeInFlight);
/// breaker.record(probe, true, until);
/// assert_eq!(breaker.state(until), BreakerState::Closed);
/// ```
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    id: u64,
    /// Bumped on every state change; permits from older generations are ignored.
    generation: u64,
    state: State,
    consecutive: u32,
    /// The last `config.window` results while closed, `true` for a failure.
    window: VecDeque<bool>,
    window_failures: usize,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// `probe_since` is when the probe in flight was handed out, if one is.
    HalfOpen {
        probe_since: Option<Instant>,
    },
}

/// Distinguishes breakers so a permit is only honoured by the breaker that issued it.
static NEXT_BREAKER_ID: AtomicU64 = AtomicU64::new(0);

impl CircuitBreaker {
    /// A closed breaker with this configuration.
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker {
            window: VecDeque::with_capacity(config.window.min(1024)),
            config,
            id: NEXT_BREAKER_ID.fetch_add(1, Ordering::Relaxed),
            generation: 0,
            state: State::Closed,
            consecutive: 0,
            window_failures: 0,
        }
    }

    /// The configuration this breaker runs under.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// Asks whether a run may start now.
    ///
    /// Closed: always. Open: refused with the end of the cooldown, until `now`
    /// reaches it; then the first caller gets the probe permit and the breaker
    /// is half-open. Half-open: refused while the probe is in flight.
    ///
    /// A probe that has not reported within one `cooldown` is presumed lost
    /// (its task died without handing the permit back) and the next caller gets
    /// a fresh probe, so a lost permit cannot wedge the breaker half-open forever.
    pub fn try_acquire(&mut self, now: Instant) -> Result<Permit, Rejected> {
        match self.state {
            State::Closed => Ok(self.permit(false)),
            State::Open { until } if now < until => Err(Rejected::OpenUntil(until)),
            State::HalfOpen {
                probe_since: Some(since),
            } if now < add_saturating(since, self.config.cooldown) => Err(Rejected::ProbeInFlight),
            State::Open { .. } | State::HalfOpen { .. } => {
                self.transition(State::HalfOpen {
                    probe_since: Some(now),
                });
                Ok(self.permit(true))
            }
        }
    }

    /// Reports how a permitted run went: `success` is whether the component
    /// behaved (use [`record_kind`](Self::record_kind) to decide from an outcome).
    ///
    /// A probe's success closes the breaker and clears its counters; a probe's
    /// failure re-opens it for another cooldown from `now`. While closed,
    /// failures count toward both thresholds and may open it. Permits issued
    /// by another breaker or before the last state change are ignored.
    pub fn record(&mut self, permit: Permit, success: bool, now: Instant) {
        if !self.is_current(&permit) {
            return;
        }
        match self.state {
            State::HalfOpen { .. } if permit.probe => {
                if success {
                    self.transition(State::Closed);
                } else {
                    self.open(now);
                }
            }
            State::Closed if !permit.probe => {
                if success {
                    self.consecutive = 0;
                } else {
                    self.consecutive = self.consecutive.saturating_add(1);
                }
                self.push_result(!success);
                if self.should_open() {
                    self.open(now);
                }
            }
            // A current permit always matches its state; nothing else to do.
            _ => {}
        }
    }

    /// Reports a permitted run by its outcome kind, using [`Verdict::of`]:
    /// ignored kinds [`release`](Self::release) the permit.
    pub fn record_kind(&mut self, permit: Permit, kind: OutcomeKind, now: Instant) {
        match Verdict::of(kind) {
            Verdict::Success => self.record(permit, true, now),
            Verdict::Failure => self.record(permit, false, now),
            Verdict::Ignored => self.release(permit),
        }
    }

    /// Hands back a permit whose run never happened or says nothing about the
    /// component (for example it was cancelled). A released probe lets the
    /// next caller probe instead; a released ordinary permit changes nothing.
    pub fn release(&mut self, permit: Permit) {
        if self.is_current(&permit) && permit.probe {
            // Same generation: the next probe is still part of this half-open spell.
            self.state = State::HalfOpen { probe_since: None };
        }
    }

    /// The state as of `now`. An open breaker whose cooldown has ended reports
    /// [`BreakerState::HalfOpen`]: the next caller would get the probe.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { until } if now < until => BreakerState::Open { until },
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn permit(&self, probe: bool) -> Permit {
        Permit {
            breaker: self.id,
            generation: self.generation,
            probe,
        }
    }

    fn is_current(&self, permit: &Permit) -> bool {
        permit.breaker == self.id && permit.generation == self.generation
    }

    fn transition(&mut self, state: State) {
        self.state = state;
        self.generation = self.generation.wrapping_add(1);
        self.consecutive = 0;
        self.window.clear();
        self.window_failures = 0;
    }

    fn open(&mut self, now: Instant) {
        let until = add_saturating(now, self.config.cooldown);
        self.transition(State::Open { until });
    }

    fn push_result(&mut self, failure: bool) {
        let size = self.config.window.max(1);
        while self.window.len() >= size {
            if self.window.pop_front() == Some(true) {
                self.window_failures -= 1;
            }
        }
        self.window.push_back(failure);
        if failure {
            self.window_failures += 1;
        }
    }

    fn should_open(&self) -> bool {
        if self.consecutive >= self.config.consecutive_failures {
            return true;
        }
        match self.config.failure_ratio {
            Some(ratio) if self.window.len() >= self.config.window.max(1) => {
                self.window_failures as f64 >= ratio * self.window.len() as f64
            }
            _ => false,
        }
    }
}

/// `at + d`, or the latest instant this platform can represent near it.
fn add_saturating(at: Instant, d: Duration) -> Instant {
    let mut d = d;
    loop {
        if let Some(later) = at.checked_add(d) {
            return later;
        }
        d /= 2;
    }
}

/// One [`CircuitBreaker`] per component, shared by every task of a host.
///
/// The map is behind a read-write lock taken only long enough to find (or,
/// the first time, insert) a component's breaker; each breaker has its own
/// mutex, so work on one component never waits for another's lock.
///
/// # Examples
///
/// ```
/// use std::time::Instant;
/// use stepbox::OutcomeKind;
/// use stepbox::policy::{BreakerConfig, BreakerState, Breakers};
///
/// let breakers: Breakers<String> = Breakers::new(BreakerConfig { consecutive_failures: 1, ..Default::default() });
/// let now = Instant::now();
/// let key = "resize".to_owned();
///
/// let permit = breakers.acquire(&key, now).unwrap();
/// breakers.record(&key, permit, OutcomeKind::Trap, now);
/// assert!(breakers.acquire(&key, now).is_err());
/// assert!(matches!(breakers.snapshot(now)[..], [(ref k, BreakerState::Open { .. })] if k == "resize"));
/// ```
#[derive(Debug)]
pub struct Breakers<K> {
    config: BreakerConfig,
    map: RwLock<HashMap<K, Arc<Mutex<CircuitBreaker>>>>,
}

impl<K: Eq + Hash + Clone> Default for Breakers<K> {
    /// No breakers yet; each is created with [`BreakerConfig::default`].
    fn default() -> Self {
        Breakers::new(BreakerConfig::default())
    }
}

impl<K: Eq + Hash + Clone> Breakers<K> {
    /// No breakers yet; each component's is created with `config` the first time it is asked for.
    pub fn new(config: BreakerConfig) -> Self {
        Breakers {
            config,
            map: RwLock::new(HashMap::new()),
        }
    }

    /// Asks whether a run of component `key` may start now (see [`CircuitBreaker::try_acquire`]).
    pub fn acquire(&self, key: &K, now: Instant) -> Result<Permit, Rejected> {
        let breaker = self.entry(key);
        lock(&breaker).try_acquire(now)
    }

    /// Reports how a permitted run of component `key` ended (see
    /// [`CircuitBreaker::record_kind`]); cancelled runs and host failures
    /// release the permit without counting.
    pub fn record(&self, key: &K, permit: Permit, kind: OutcomeKind, now: Instant) {
        if let Some(breaker) = self.get(key) {
            lock(&breaker).record_kind(permit, kind, now);
        }
    }

    /// Hands back a permit for component `key` whose run never happened (see [`CircuitBreaker::release`]).
    pub fn release(&self, key: &K, permit: Permit) {
        if let Some(breaker) = self.get(key) {
            lock(&breaker).release(permit);
        }
    }

    /// The state of component `key` as of `now` (closed if it was never asked about).
    pub fn state(&self, key: &K, now: Instant) -> BreakerState {
        self.get(key)
            .map_or(BreakerState::Closed, |b| lock(&b).state(now))
    }

    /// Every component's breaker state as of `now`, for reports, in no particular order.
    pub fn snapshot(&self, now: Instant) -> Vec<(K, BreakerState)> {
        let entries: Vec<_> = read(&self.map)
            .iter()
            .map(|(k, b)| (k.clone(), b.clone()))
            .collect();
        // The map lock is released before any breaker is locked.
        entries
            .into_iter()
            .map(|(k, b)| (k, lock(&b).state(now)))
            .collect()
    }

    fn get(&self, key: &K) -> Option<Arc<Mutex<CircuitBreaker>>> {
        read(&self.map).get(key).cloned()
    }

    fn entry(&self, key: &K) -> Arc<Mutex<CircuitBreaker>> {
        if let Some(breaker) = self.get(key) {
            return breaker;
        }
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        map.entry(key.clone())
            .or_insert_with(|| Arc::new(Mutex::new(CircuitBreaker::new(self.config.clone()))))
            .clone()
    }
}

// Breaker methods do not panic, so a poisoned lock still holds a consistent breaker.
fn lock(breaker: &Mutex<CircuitBreaker>) -> std::sync::MutexGuard<'_, CircuitBreaker> {
    breaker.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(30);

    fn breaker(consecutive_failures: u32, failure_ratio: Option<f64>, window: usize) -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            consecutive_failures,
            failure_ratio,
            window,
            cooldown: COOLDOWN,
        })
    }

    fn run(b: &mut CircuitBreaker, success: bool, now: Instant) {
        let permit = b.try_acquire(now).expect("should be permitted");
        b.record(permit, success, now);
    }

    /// Opens `b` (with a 1-failure threshold) at `t0` and returns when its cooldown ends.
    fn opened(b: &mut CircuitBreaker, t0: Instant) -> Instant {
        while b.state(t0) == BreakerState::Closed {
            run(b, false, t0);
        }
        t0 + COOLDOWN
    }

    #[test]
    fn opens_after_n_consecutive_failures() {
        let mut b = breaker(3, None, 20);
        let t0 = Instant::now();
        run(&mut b, false, t0);
        run(&mut b, false, t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
        run(&mut b, false, t0);
        assert_eq!(b.state(t0), BreakerState::Open { until: t0 + COOLDOWN });
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let mut b = breaker(3, None, 20);
        let t0 = Instant::now();
        for _ in 0..10 {
            run(&mut b, false, t0);
            run(&mut b, false, t0);
            run(&mut b, true, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
    }

    #[test]
    fn ratio_opens_once_the_window_is_full() {
        let mut b = breaker(100, Some(0.5), 4);
        let t0 = Instant::now();
        // Failure, success, failure: 2 of 3, but the window is not full yet.
        run(&mut b, false, t0);
        run(&mut b, true, t0);
        run(&mut b, false, t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
        // 2 of 4 = 0.5: opens.
        run(&mut b, true, t0);
        assert!(matches!(b.state(t0), BreakerState::Open { .. }));
    }

    #[test]
    fn ratio_is_judged_over_the_last_window_results_only() {
        let mut b = breaker(100, Some(0.5), 4);
        let t0 = Instant::now();
        for success in [false, true, true, true, true, true, false] {
            run(&mut b, success, t0);
        }
        // Last 4: true, true, true, false = 0.25.
        assert_eq!(b.state(t0), BreakerState::Closed);
        run(&mut b, false, t0); // true, true, false, false = 0.5
        assert!(matches!(b.state(t0), BreakerState::Open { .. }));
    }

    #[test]
    fn fails_fast_while_open() {
        let mut b = breaker(1, None, 20);
        let t0 = Instant::now();
        let until = opened(&mut b, t0);
        for now in [t0, t0 + Duration::from_secs(29), until - Duration::from_nanos(1)] {
            assert_eq!(b.try_acquire(now), Err(Rejected::OpenUntil(until)));
        }
    }

    #[test]
    fn exactly_one_probe_after_cooldown() {
        let mut b = breaker(1, None, 20);
        let t0 = Instant::now();
        let until = opened(&mut b, t0);
        assert_eq!(b.state(until), BreakerState::HalfOpen);
        let probe = b.try_acquire(until).unwrap();
        assert!(probe.is_probe());
        for _ in 0..3 {
            assert_eq!(
                b.try_acquire(until + Duration::from_secs(1)),
                Err(Rejected::ProbeInFlight)
            );
        }
        assert_eq!(b.state(until), BreakerState::HalfOpen);
        b.record(probe, true, until);
    }

    #[test]
    fn probe_success_closes_and_resets_counters() {
        let mut b = breaker(2, None, 20);
        let t0 = Instant::now();
        let until = opened(&mut b, t0);
        let probe = b.try_acquire(until).unwrap();
        b.record(probe, true, until);
        assert_eq!(b.state(until), BreakerState::Closed);
        // Counters start over: one failure is not enough to reopen.
        run(&mut b, false, until);
        assert_eq!(b.state(until), BreakerState::Closed);
        let permit = b.try_acquire(until).unwrap();
        assert!(!permit.is_probe());
        b.record(permit, true, until);
    }

    #[test]
    fn probe_failure_reopens_for_another_cooldown() {
        let mut b = breaker(1, None, 20);
        let t0 = Instant::now();
        let until = opened(&mut b, t0);
        let later = until + Duration::from_secs(5);
        let probe = b.try_acquire(until).unwrap();
        b.record(probe, false, later);
        let reopened = later + COOLDOWN;
        assert_eq!(b.state(later), BreakerState::Open { until: reopened });
        assert_eq!(b.try_acquire(later), Err(Rejected::OpenUntil(reopened)));
        assert!(b.try_acquire(reopened).unwrap().is_probe());
    }

    #[test]
    fn cancelled_probe_releases_the_half_open_breaker() {
        let mut b = breaker(1, None, 20);
        let t0 = Instant::now();
        let until = opened(&mut b, t0);
        let probe = b.try_acquire(until).unwrap();
        b.record_kind(probe, OutcomeKind::Cancelled, until);
        assert_eq!(b.state(until), BreakerState::HalfOpen);
        let probe = b.try_acquire(until).expect("the next caller probes instead");
        assert!(probe.is_probe());
        b.record_kind(probe, OutcomeKind::Completed, until);
        assert_eq!(b.state(until), BreakerState::Closed);
    }

    #[test]
    fn a_lost_probe_is_replaced_after_a_cooldown() {
        let mut b = breaker(1, None, 20);
        let t0 = Instant::now();
        let until = opened(&mut b, t0);
        let lost = b.try_acquire(until).unwrap();
        assert_eq!(
            b.try_acquire(until + COOLDOWN - Duration::from_nanos(1)),
            Err(Rejected::ProbeInFlight)
        );
        let fresh = b.try_acquire(until + COOLDOWN).unwrap();
        assert!(fresh.is_probe());
        // The lost probe's late report no longer counts.
        b.record(lost, true, until + COOLDOWN);
        assert_eq!(b.state(until + COOLDOWN), BreakerState::HalfOpen);
        b.record(fresh, false, until + COOLDOWN);
        assert!(matches!(b.state(until + COOLDOWN), BreakerState::Open { .. }));
    }

    #[test]
    fn stale_permits_from_before_opening_are_ignored() {
        let mut b = breaker(1, None, 20);
        let t0 = Instant::now();
        let slow = b.try_acquire(t0).unwrap();
        let until = opened(&mut b, t0);
        let probe = b.try_acquire(until).unwrap();
        // A slow success from the closed era must not close the breaker instead of the probe.
        b.record(slow, true, until);
        assert_eq!(b.state(until), BreakerState::HalfOpen);
        b.record(probe, false, until);
        assert!(matches!(b.state(until), BreakerState::Open { .. }));
    }

    #[test]
    fn permits_are_only_honoured_by_the_breaker_that_issued_them() {
        let mut a = breaker(1, None, 20);
        let mut b = breaker(1, None, 20);
        let t0 = Instant::now();
        let from_a = a.try_acquire(t0).unwrap();
        b.record(from_a, false, t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
    }

    #[test]
    fn invalid_input_is_not_a_failure_and_cancelled_is_ignored() {
        let mut b = breaker(2, None, 20);
        let t0 = Instant::now();
        run(&mut b, false, t0);
        let permit = b.try_acquire(t0).unwrap();
        b.record_kind(permit, OutcomeKind::Cancelled, t0);
        let permit = b.try_acquire(t0).unwrap();
        b.record_kind(permit, OutcomeKind::HostFailure, t0);
        assert_eq!(b.consecutive, 1, "ignored kinds neither count nor reset");
        let permit = b.try_acquire(t0).unwrap();
        b.record_kind(permit, OutcomeKind::InvalidInput, t0);
        assert_eq!(b.consecutive, 0, "invalid input is the caller's fault");
    }

    #[test]
    fn every_outcome_kind_has_the_documented_verdict() {
        for kind in OutcomeKind::ALL {
            let expected = match kind {
                OutcomeKind::Completed | OutcomeKind::InvalidInput => Verdict::Success,
                // The component did not run, or the host is at fault: no verdict on the component.
                OutcomeKind::Cancelled
                | OutcomeKind::HostFailure
                | OutcomeKind::CircuitOpen
                | OutcomeKind::QuotaExceeded => Verdict::Ignored,
                _ => Verdict::Failure,
            };
            assert_eq!(Verdict::of(kind), expected, "{kind}");
            assert_eq!(counts_as_failure(kind), expected == Verdict::Failure, "{kind}");
        }
    }

    #[test]
    fn huge_cooldown_does_not_panic() {
        let mut b = CircuitBreaker::new(BreakerConfig {
            consecutive_failures: 1,
            cooldown: Duration::MAX,
            ..BreakerConfig::default()
        });
        let t0 = Instant::now();
        run(&mut b, false, t0);
        assert!(matches!(b.try_acquire(t0), Err(Rejected::OpenUntil(_))));
    }

    #[test]
    fn config_validate_rejects_nonsense_in_one_line() {
        BreakerConfig::default().validate().unwrap();
        for config in [
            BreakerConfig {
                consecutive_failures: 0,
                ..Default::default()
            },
            BreakerConfig {
                window: 0,
                ..Default::default()
            },
            BreakerConfig {
                failure_ratio: Some(0.0),
                ..Default::default()
            },
            BreakerConfig {
                failure_ratio: Some(1.5),
                ..Default::default()
            },
            BreakerConfig {
                failure_ratio: Some(f64::NAN),
                ..Default::default()
            },
        ] {
            let error = config.validate().unwrap_err().to_string();
            assert!(!error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn registry_keeps_one_breaker_per_component() {
        let breakers: Breakers<String> = Breakers::new(BreakerConfig {
            consecutive_failures: 1,
            ..Default::default()
        });
        let t0 = Instant::now();
        let (bad, good) = ("bad".to_owned(), "good".to_owned());
        let permit = breakers.acquire(&bad, t0).unwrap();
        breakers.record(&bad, permit, OutcomeKind::OutOfFuel, t0);
        assert!(breakers.acquire(&bad, t0).is_err());
        let permit = breakers.acquire(&good, t0).unwrap();
        breakers.record(&good, permit, OutcomeKind::Completed, t0);
        assert_eq!(breakers.state(&"never".to_owned(), t0), BreakerState::Closed);
        let mut snapshot = breakers.snapshot(t0);
        snapshot.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            snapshot,
            [
                (
                    bad,
                    BreakerState::Open {
                        until: t0 + Duration::from_secs(30)
                    }
                ),
                (good, BreakerState::Closed)
            ]
        );
    }

    #[test]
    fn registry_lock_on_one_component_does_not_block_another() {
        let breakers: Arc<Breakers<&'static str>> = Arc::new(Breakers::default());
        let t0 = Instant::now();
        let held = breakers.entry(&"a");
        let _guard = held.lock().unwrap();
        // With "a" locked, another thread can still use "b" (and create "c").
        let other = Arc::clone(&breakers);
        std::thread::spawn(move || {
            for key in ["b", "c"] {
                let permit = other.acquire(&key, t0).unwrap();
                other.record(&key, permit, OutcomeKind::Completed, t0);
            }
        })
        .join()
        .unwrap();
        assert_eq!(breakers.map.read().unwrap().len(), 3);
    }
}

#[cfg(test)]
mod proptests;
