//! Whether to retry a step attempt, and how long to wait first.

use std::time::Duration;

use super::InvalidSetting;
use crate::OutcomeKind;

/// When and how a step's failed attempts are retried.
///
/// Attempts are numbered from 1. With the default policy a step runs once and
/// is never retried; a workflow raises `max_attempts` to opt in.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use stepbox::OutcomeKind;
/// use stepbox::policy::RetryPolicy;
///
/// let policy = RetryPolicy {
///     max_attempts: 4,
///     jitter: false,
///     ..RetryPolicy::default()
/// };
/// policy.validate().unwrap();
/// assert!(policy.should_retry(1, OutcomeKind::Retryable));
/// assert!(!policy.should_retry(1, OutcomeKind::Failed)); // not in `retry_on`
/// assert!(!policy.should_retry(4, OutcomeKind::Retryable)); // attempts used up
///
/// // 100ms, then doubling: the wait before attempts 2, 3 and 4.
/// assert_eq!(policy.delay(1, 0.0), Duration::from_millis(100));
/// assert_eq!(policy.delay(2, 0.0), Duration::from_millis(200));
/// assert_eq!(policy.delay(3, 0.0), Duration::from_millis(400));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included (1 means no retries).
    pub max_attempts: u32,
    /// The delay before the second attempt.
    pub backoff: Duration,
    /// No delay is longer than this.
    pub max_backoff: Duration,
    /// Each delay is the previous one times this (at least 1.0).
    pub multiplier: f64,
    /// Whether delays are "full jitter": a uniformly random fraction of the computed delay.
    pub jitter: bool,
    /// The outcome kinds worth another attempt.
    pub retry_on: Vec<OutcomeKind>,
}

impl Default for RetryPolicy {
    /// One attempt (no retries), 100ms backoff doubling up to 10s, with jitter,
    /// retrying only guest errors the guest itself called retryable.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: true,
            retry_on: vec![OutcomeKind::Retryable],
        }
    }
}

/// Kinds no policy may retry: a completed step is done, invalid input will be
/// invalid again, and a cancelled run was stopped on purpose.
const NEVER_RETRIED: [OutcomeKind; 3] = [
    OutcomeKind::Completed,
    OutcomeKind::InvalidInput,
    OutcomeKind::Cancelled,
];

impl RetryPolicy {
    /// Whether attempt `attempt` (1-based) that ended in `kind` should be retried.
    ///
    /// Never for [`OutcomeKind::Completed`], [`OutcomeKind::InvalidInput`] or
    /// [`OutcomeKind::Cancelled`], whatever `retry_on` says; otherwise when
    /// `kind` is in `retry_on` and `attempt < max_attempts`.
    pub fn should_retry(&self, attempt: u32, kind: OutcomeKind) -> bool {
        !NEVER_RETRIED.contains(&kind) && self.retry_on.contains(&kind) && attempt < self.max_attempts
    }

    /// The delay before attempt `attempt + 1`.
    ///
    /// That is `min(max_backoff, backoff * multiplier^(attempt - 1))` (attempt 0
    /// is treated as 1). With `jitter` the delay is multiplied by `unit_random`,
    /// a number in `[0, 1)` the caller draws, so this stays deterministic; values
    /// outside `[0, 1]` are clamped and NaN counts as 0. Without `jitter`,
    /// `unit_random` is ignored.
    ///
    /// Never panics or overflows: huge attempts and multipliers saturate at
    /// `max_backoff`, and an invalid multiplier (NaN, negative) yields
    /// `max_backoff` or zero rather than a panic.
    pub fn delay(&self, attempt: u32, unit_random: f64) -> Duration {
        let exponent = attempt.saturating_sub(1);
        let cap = self.max_backoff;
        let base = if exponent == 0 {
            self.backoff.min(cap)
        } else {
            scale(self.backoff, self.multiplier.powf(f64::from(exponent)), cap)
        };
        if !self.jitter {
            return base;
        }
        let r = if unit_random.is_nan() {
            0.0
        } else {
            unit_random.clamp(0.0, 1.0)
        };
        scale(base, r, base)
    }

    /// Checks that the policy makes sense, with a one-line reason when it does not.
    ///
    /// `max_attempts` must be at least 1, `multiplier` finite and at least 1.0,
    /// and `retry_on` must not name `completed`, `invalid-input` or `cancelled`.
    ///
    /// ```
    /// use stepbox::OutcomeKind;
    /// use stepbox::policy::RetryPolicy;
    ///
    /// let policy = RetryPolicy { retry_on: vec![OutcomeKind::InvalidInput], ..RetryPolicy::default() };
    /// assert_eq!(
    ///     policy.validate().unwrap_err().to_string(),
    ///     "retry-on must not name invalid-input: it is never retried"
    /// );
    /// ```
    ///
    /// # Errors
    ///
    /// An [`InvalidSetting`] naming the setting.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.max_attempts < 1 {
            return Err(InvalidSetting::TooSmall {
                setting: "max-attempts",
                min: 1,
                note: " (1 means no retries)",
            });
        }
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(InvalidSetting::Factor {
                setting: "multiplier",
                value: self.multiplier,
            });
        }
        if let Some(&kind) = self.retry_on.iter().find(|kind| NEVER_RETRIED.contains(kind)) {
            return Err(InvalidSetting::NeverRetried(kind));
        }
        Ok(())
    }
}

/// `d * factor`, at most `cap` and at least zero, computed in nanoseconds (exact
/// in f64 up to about 104 days, far beyond any sane backoff). NaN gives `cap`.
fn scale(d: Duration, factor: f64, cap: Duration) -> Duration {
    let nanos = d.as_nanos() as f64 * factor;
    if nanos.is_nan() || nanos >= cap.as_nanos() as f64 {
        cap
    } else if nanos <= 0.0 {
        Duration::ZERO
    } else if nanos < u64::MAX as f64 {
        Duration::from_nanos(nanos.round() as u64).min(cap)
    } else {
        Duration::try_from_secs_f64(nanos / 1e9).unwrap_or(cap).min(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            jitter: false,
            retry_on: OutcomeKind::ALL.to_vec(),
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn default_runs_once_and_never_retries() {
        let policy = RetryPolicy::default();
        policy.validate().unwrap();
        for kind in OutcomeKind::ALL {
            assert!(!policy.should_retry(1, kind), "{kind}");
        }
    }

    #[test]
    fn completed_invalid_input_and_cancelled_are_never_retried_even_if_listed() {
        let policy = policy(10);
        for kind in NEVER_RETRIED {
            assert!(!policy.should_retry(1, kind), "{kind}");
        }
        for kind in OutcomeKind::ALL
            .into_iter()
            .filter(|k| !NEVER_RETRIED.contains(k))
        {
            assert!(policy.should_retry(1, kind), "{kind}");
        }
    }

    #[test]
    fn only_listed_kinds_are_retried() {
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        assert!(policy.should_retry(1, OutcomeKind::Retryable));
        assert!(!policy.should_retry(1, OutcomeKind::Trap));
        assert!(!policy.should_retry(1, OutcomeKind::Timeout));
    }

    #[test]
    fn attempts_stop_at_max_attempts() {
        let policy = policy(3);
        assert!(policy.should_retry(1, OutcomeKind::Trap));
        assert!(policy.should_retry(2, OutcomeKind::Trap));
        assert!(!policy.should_retry(3, OutcomeKind::Trap));
        assert!(!policy.should_retry(u32::MAX, OutcomeKind::Trap));
    }

    #[test]
    fn delay_grows_geometrically_then_caps_at_max_backoff() {
        let policy = policy(100);
        let delays: Vec<_> = (1..=9).map(|a| policy.delay(a, 0.0).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        assert_eq!(policy.delay(0, 0.0), Duration::from_millis(100));
    }

    #[test]
    fn backoff_above_max_backoff_is_capped_from_the_first_retry() {
        let policy = RetryPolicy {
            backoff: Duration::from_secs(60),
            ..policy(5)
        };
        assert_eq!(policy.delay(1, 0.0), Duration::from_secs(10));
    }

    #[test]
    fn delay_saturates_for_huge_attempts_and_multipliers() {
        for multiplier in [2.0, 1e300, f64::MAX, f64::INFINITY, f64::NAN] {
            let policy = RetryPolicy {
                multiplier,
                ..policy(5)
            };
            for attempt in [64, 1_000, u32::MAX] {
                assert_eq!(
                    policy.delay(attempt, 0.0),
                    Duration::from_secs(10),
                    "{multiplier} {attempt}"
                );
            }
        }
        for multiplier in [1e300, f64::MAX, f64::INFINITY] {
            let policy = RetryPolicy {
                multiplier,
                ..policy(5)
            };
            assert_eq!(policy.delay(2, 0.0), Duration::from_secs(10), "{multiplier}");
        }
        let unbounded = RetryPolicy {
            max_backoff: Duration::MAX,
            ..policy(5)
        };
        assert_eq!(unbounded.delay(u32::MAX, 0.0), Duration::MAX);
    }

    #[test]
    fn invalid_multipliers_do_not_panic() {
        for multiplier in [0.0, 0.5, -3.0, f64::NEG_INFINITY] {
            let policy = RetryPolicy {
                multiplier,
                ..policy(5)
            };
            for attempt in [1, 2, 3, u32::MAX] {
                assert!(policy.delay(attempt, 0.5) <= Duration::from_secs(10));
            }
        }
    }

    #[test]
    fn full_jitter_scales_the_delay_by_the_callers_random_number() {
        let policy = RetryPolicy {
            jitter: true,
            ..policy(5)
        };
        assert_eq!(policy.delay(2, 0.0), Duration::ZERO);
        assert_eq!(policy.delay(2, 0.25), Duration::from_millis(50));
        assert!(policy.delay(2, 0.999_999) < Duration::from_millis(200));
        assert_eq!(policy.delay(2, 7.0), Duration::from_millis(200));
        assert_eq!(policy.delay(2, -1.0), Duration::ZERO);
        assert_eq!(policy.delay(2, f64::NAN), Duration::ZERO);
        assert_eq!(policy.delay(u32::MAX, 0.5), Duration::from_secs(5));
    }

    #[test]
    fn without_jitter_the_random_number_is_ignored() {
        let policy = policy(5);
        assert_eq!(policy.delay(2, 0.1), policy.delay(2, 0.9));
    }

    #[test]
    fn validate_rejects_nonsense_in_one_line() {
        let bad = [
            RetryPolicy {
                max_attempts: 0,
                ..RetryPolicy::default()
            },
            RetryPolicy {
                multiplier: 0.5,
                ..RetryPolicy::default()
            },
            RetryPolicy {
                multiplier: f64::NAN,
                ..RetryPolicy::default()
            },
            RetryPolicy {
                multiplier: f64::INFINITY,
                ..RetryPolicy::default()
            },
            RetryPolicy {
                retry_on: vec![OutcomeKind::Retryable, OutcomeKind::Completed],
                ..RetryPolicy::default()
            },
            RetryPolicy {
                retry_on: vec![OutcomeKind::Cancelled],
                ..RetryPolicy::default()
            },
        ];
        for policy in bad {
            let error = policy.validate().unwrap_err().to_string();
            assert!(!error.contains('\n') && !error.is_empty(), "{error}");
        }
        let good = RetryPolicy {
            retry_on: vec![OutcomeKind::Trap, OutcomeKind::Timeout, OutcomeKind::HostFailure],
            multiplier: 1.0,
            ..RetryPolicy::default()
        };
        good.validate().unwrap();
    }

    mod proptests {
        use proptest::prelude::*;

        use super::*;

        /// Any policy, sensible or not: durations up to about three years,
        /// multipliers from below 1 to infinity and NaN.
        fn any_policy() -> impl Strategy<Value = RetryPolicy> {
            let duration = prop_oneof![
                (0..2_000u64).prop_map(Duration::from_millis),
                (0..100_000_000u64).prop_map(Duration::from_secs),
                Just(Duration::ZERO),
                Just(Duration::MAX),
            ];
            let multiplier = prop_oneof![
                1.0..10.0f64,
                Just(1.0),
                any::<f64>(),
                Just(f64::INFINITY),
                Just(f64::NAN),
            ];
            (1..10u32, duration.clone(), duration, multiplier, any::<bool>()).prop_map(
                |(max_attempts, backoff, max_backoff, multiplier, jitter)| RetryPolicy {
                    max_attempts,
                    backoff,
                    max_backoff,
                    multiplier,
                    jitter,
                    retry_on: vec![OutcomeKind::Retryable],
                },
            )
        }

        /// Mostly the first few attempts, where the edge cases are.
        fn attempt() -> impl Strategy<Value = u32> {
            prop_oneof![0..12u32, 0..100u32, any::<u32>()]
        }

        fn unit_random() -> impl Strategy<Value = f64> {
            prop_oneof![0.0..1.0f64, any::<f64>()]
        }

        proptest! {
            #[test]
            fn no_delay_is_longer_than_max_backoff(policy in any_policy(), attempt in attempt(), r in unit_random()) {
                prop_assert!(policy.delay(attempt, r) <= policy.max_backoff);
            }

            #[test]
            fn without_jitter_delays_start_at_backoff_and_never_shrink(
                policy in any_policy().prop_filter("a valid multiplier", |p| p.validate().is_ok()),
                attempt in 0..200u32,
            ) {
                let policy = RetryPolicy { jitter: false, ..policy };
                let first = policy.backoff.min(policy.max_backoff);
                let delay = policy.delay(attempt, 0.5);
                prop_assert!(delay >= first, "{:?} < {:?}", delay, first);
                prop_assert!(policy.delay(attempt + 1, 0.5) >= delay);
                // And follow `min(max_backoff, backoff * multiplier^(attempt - 1))`.
                let exact = policy.backoff.as_secs_f64() * policy.multiplier.powi(attempt.max(1) as i32 - 1);
                let expected = exact.min(policy.max_backoff.as_secs_f64());
                let got = delay.as_secs_f64();
                prop_assert!((got - expected).abs() <= expected * 1e-9 + 1e-9, "{} against {}", got, expected);
            }

            #[test]
            fn jitter_takes_the_callers_fraction_of_the_delay(
                policy in any_policy(),
                attempt in attempt(),
                r in 0.0..=1.0f64,
            ) {
                let full = RetryPolicy { jitter: false, ..policy.clone() }.delay(attempt, r);
                let jittered = RetryPolicy { jitter: true, ..policy }.delay(attempt, r);
                prop_assert!(jittered <= full);
                let expected = full.as_secs_f64() * r;
                let got = jittered.as_secs_f64();
                prop_assert!((got - expected).abs() <= expected * 1e-9 + 1e-9, "{} against {}", got, expected);
            }

            #[test]
            fn a_kind_is_retried_only_if_listed_retryable_and_attempts_are_left(
                policy in any_policy(),
                listed in proptest::sample::subsequence(OutcomeKind::ALL.to_vec(), 0..OutcomeKind::ALL.len()),
                attempt in attempt(),
                kind in proptest::sample::select(OutcomeKind::ALL.to_vec()),
            ) {
                let policy = RetryPolicy { retry_on: listed.clone(), ..policy };
                let expected = listed.contains(&kind) && !NEVER_RETRIED.contains(&kind) && attempt < policy.max_attempts;
                prop_assert_eq!(policy.should_retry(attempt, kind), expected);
            }
        }
    }
}
