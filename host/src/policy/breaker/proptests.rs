//! The breaker against a plain model of its documented state machine, over
//! random sequences of acquisitions, results, releases and waits.

use proptest::prelude::*;

use super::*;

/// What a test does next, `wait` milliseconds after the last thing.
#[derive(Debug, Clone)]
enum Op {
    Acquire {
        wait: u64,
    },
    /// Reports the result of a held permit (chosen by index).
    Record {
        permit: prop::sample::Index,
        success: bool,
        wait: u64,
    },
    /// Hands a held permit back unused.
    Release {
        permit: prop::sample::Index,
        wait: u64,
    },
    /// A permit another breaker issued, reported here.
    Foreign {
        success: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let wait = prop_oneof![Just(0u64), 0..40u64, 0..400u64];
    prop_oneof![
        3 => wait.clone().prop_map(|wait| Op::Acquire { wait }),
        3 => (any::<prop::sample::Index>(), any::<bool>(), wait.clone())
            .prop_map(|(permit, success, wait)| Op::Record { permit, success, wait }),
        1 => (any::<prop::sample::Index>(), wait).prop_map(|(permit, wait)| Op::Release { permit, wait }),
        1 => any::<bool>().prop_map(|success| Op::Foreign { success }),
    ]
}

fn config() -> impl Strategy<Value = BreakerConfig> {
    (
        1..5u32,
        prop_oneof![Just(None), (0.05..=1.0f64).prop_map(Some)],
        1..6usize,
        0..100u64,
    )
        .prop_map(
            |(consecutive_failures, failure_ratio, window, cooldown)| BreakerConfig {
                consecutive_failures,
                failure_ratio,
                window,
                cooldown: Duration::from_millis(cooldown),
            },
        )
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ModelState {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_since: Option<Instant> },
}

/// The breaker as its documentation describes it, written plainly.
struct Model {
    config: BreakerConfig,
    state: ModelState,
    /// Counts state changes: a permit from before the last one is stale.
    era: u64,
    failures_in_a_row: u32,
    /// Results since the breaker last closed, `true` for a failure.
    results: Vec<bool>,
    /// When the breaker last opened.
    opened_at: Option<Instant>,
}

/// A held permit: the breaker's and what the model expects of it.
struct Held {
    permit: Permit,
    era: u64,
    probe: bool,
}

impl Model {
    fn change(&mut self, state: ModelState) {
        self.state = state;
        self.era += 1;
        self.failures_in_a_row = 0;
        self.results.clear();
    }

    fn acquire(&mut self, now: Instant) -> Result<bool, Rejected> {
        match self.state {
            ModelState::Closed => Ok(false),
            ModelState::Open { until } if now < until => Err(Rejected::OpenUntil(until)),
            ModelState::HalfOpen {
                probe_since: Some(since),
            } if now < add_saturating(since, self.config.cooldown) => Err(Rejected::ProbeInFlight),
            _ => {
                self.change(ModelState::HalfOpen {
                    probe_since: Some(now),
                });
                Ok(true)
            }
        }
    }

    fn record(&mut self, era: u64, probe: bool, success: bool, now: Instant) {
        if era != self.era {
            return;
        }
        match (self.state, probe) {
            (ModelState::HalfOpen { .. }, true) if success => self.change(ModelState::Closed),
            (ModelState::HalfOpen { .. }, true) => self.open(now),
            (ModelState::Closed, false) => {
                self.failures_in_a_row = if success { 0 } else { self.failures_in_a_row + 1 };
                self.results.push(!success);
                let window = &self.results[self.results.len().saturating_sub(self.config.window)..];
                let failures = window.iter().filter(|&&f| f).count();
                let ratio_trips = self.config.failure_ratio.is_some_and(|ratio| {
                    window.len() == self.config.window && failures as f64 >= ratio * window.len() as f64
                });
                if self.failures_in_a_row >= self.config.consecutive_failures || ratio_trips {
                    self.open(now);
                }
            }
            _ => {}
        }
    }

    fn release(&mut self, era: u64, probe: bool) {
        if era == self.era && probe {
            self.state = ModelState::HalfOpen { probe_since: None };
        }
    }

    fn open(&mut self, now: Instant) {
        self.change(ModelState::Open {
            until: now + self.config.cooldown,
        });
        self.opened_at = Some(now);
    }

    fn reported(&self, now: Instant) -> BreakerState {
        match self.state {
            ModelState::Closed => BreakerState::Closed,
            ModelState::Open { until } if now < until => BreakerState::Open { until },
            _ => BreakerState::HalfOpen,
        }
    }
}

proptest! {
    #[test]
    fn the_breaker_follows_its_model(config in config(), ops in proptest::collection::vec(op(), 1..80)) {
        let mut breaker = CircuitBreaker::new(config.clone());
        let mut other = CircuitBreaker::new(config.clone());
        let mut model = Model {
            config: config.clone(),
            state: ModelState::Closed,
            era: 0,
            failures_in_a_row: 0,
            results: Vec::new(),
            opened_at: None,
        };
        let mut held: Vec<Held> = Vec::new();
        let mut now = Instant::now();
        for op in ops {
            match op {
                Op::Acquire { wait } => {
                    now += Duration::from_millis(wait);
                    let was_open = matches!(model.state, ModelState::Open { .. });
                    let got = breaker.try_acquire(now);
                    let expected = model.acquire(now);
                    prop_assert_eq!(got.as_ref().map(Permit::is_probe), expected.as_ref().copied());
                    if let Ok(permit) = got {
                        if permit.is_probe() && was_open {
                            // Never half-open before a whole cooldown since it opened.
                            let opened = model.opened_at.expect("an open breaker opened");
                            prop_assert!(now >= opened + config.cooldown);
                        }
                        held.push(Held { probe: permit.is_probe(), permit, era: model.era });
                    }
                }
                Op::Record { permit, success, wait } => {
                    if held.is_empty() {
                        continue;
                    }
                    now += Duration::from_millis(wait);
                    let Held { permit, era, probe } = held.swap_remove(permit.index(held.len()));
                    let current = era == model.era;
                    breaker.record(permit, success, now);
                    model.record(era, probe, success, now);
                    if probe && current {
                        // A probe decides: closed, or open for a whole cooldown
                        // (over at once if the cooldown is zero).
                        let expected = if success {
                            BreakerState::Closed
                        } else if config.cooldown.is_zero() {
                            BreakerState::HalfOpen
                        } else {
                            BreakerState::Open { until: now + config.cooldown }
                        };
                        prop_assert_eq!(breaker.state(now), expected);
                    }
                }
                Op::Release { permit, wait } => {
                    if held.is_empty() {
                        continue;
                    }
                    now += Duration::from_millis(wait);
                    let Held { permit, era, probe } = held.swap_remove(permit.index(held.len()));
                    breaker.release(permit);
                    model.release(era, probe);
                }
                Op::Foreign { success } => {
                    if let Ok(permit) = other.try_acquire(now) {
                        breaker.record(permit, success, now);
                    }
                }
            }
            prop_assert_eq!(breaker.state(now), model.reported(now));
            prop_assert_eq!(breaker.consecutive, model.failures_in_a_row);
            let window = &model.results[model.results.len().saturating_sub(config.window)..];
            prop_assert_eq!(breaker.window.iter().copied().collect::<Vec<_>>(), window.to_vec());
            prop_assert_eq!(breaker.window_failures, window.iter().filter(|&&f| f).count());
            prop_assert!(breaker.window.len() <= config.window);
            if !matches!(model.state, ModelState::Closed) {
                prop_assert_eq!(breaker.consecutive, 0);
                prop_assert!(breaker.window.is_empty());
            }
        }
    }
}
