//! The timeout hierarchy: which deadline a step actually runs under, and why.
//!
//! A step can be bounded by a host-wide deadline, its workflow's deadline, the
//! deadline of the step that called it, and its own timeout. It runs under the
//! earliest; the [`TimeoutLevel`] of that deadline says in the report which
//! limit stopped it.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Which limit a [`Deadline`] comes from.
///
/// ```
/// use stepbox::policy::TimeoutLevel;
///
/// assert_eq!(TimeoutLevel::Parent.to_string(), "parent");
/// assert_eq!(serde_json::to_string(&TimeoutLevel::Workflow).unwrap(), r#""workflow""#);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeoutLevel {
    /// The host-wide deadline (for example a shutdown deadline).
    Global,
    /// The whole workflow's timeout.
    Workflow,
    /// The step's own timeout.
    Step,
    /// Inherited from the step that called this one.
    Parent,
}

impl TimeoutLevel {
    /// The kebab-case name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutLevel::Global => "global",
            TimeoutLevel::Workflow => "workflow",
            TimeoutLevel::Step => "step",
            TimeoutLevel::Parent => "parent",
        }
    }

    /// The level named `name` (as [`TimeoutLevel::as_str`] writes it).
    ///
    /// ```
    /// use stepbox::policy::TimeoutLevel;
    /// assert_eq!(TimeoutLevel::from_name("workflow"), Some(TimeoutLevel::Workflow));
    /// assert_eq!(TimeoutLevel::from_name("lunch"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<TimeoutLevel> {
        [
            TimeoutLevel::Global,
            TimeoutLevel::Workflow,
            TimeoutLevel::Step,
            TimeoutLevel::Parent,
        ]
        .into_iter()
        .find(|l| l.as_str() == name)
    }

    /// How broad the level is: ties between equal deadlines go to the broadest.
    fn breadth(self) -> u8 {
        match self {
            TimeoutLevel::Global => 3,
            TimeoutLevel::Workflow => 2,
            TimeoutLevel::Parent => 1,
            TimeoutLevel::Step => 0,
        }
    }
}

impl fmt::Display for TimeoutLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An instant by which work must finish, and the level that set it.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use stepbox::policy::{Deadline, TimeoutLevel, step_deadline};
///
/// let now = Instant::now();
/// let workflow = Deadline { at: now + Duration::from_secs(5), level: TimeoutLevel::Workflow };
///
/// // The step's own 30s timeout is later than the workflow's deadline: the workflow wins.
/// let deadline = step_deadline(now, None, Some(workflow), None, Some(Duration::from_secs(30))).unwrap();
/// assert_eq!(deadline, workflow);
/// assert_eq!(deadline.remaining(now), Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Deadline {
    /// When the time is up.
    pub at: Instant,
    /// Which limit this is.
    pub level: TimeoutLevel,
}

impl Deadline {
    /// Time left as of `now`, zero once the deadline has passed.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.at.saturating_duration_since(now)
    }

    /// Whether the deadline has passed as of `now` (it has at `at` exactly).
    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.at
    }
}

/// The earliest of the given deadlines, ignoring `None` entries; `None` if there are none.
///
/// Equal deadlines resolve to the outermost level (global, then workflow,
/// then parent, then step), so a report names the broadest cause.
///
/// ```
/// use std::time::Instant;
/// use stepbox::policy::{Deadline, TimeoutLevel, effective};
///
/// let at = Instant::now();
/// let step = Deadline { at, level: TimeoutLevel::Step };
/// let workflow = Deadline { at, level: TimeoutLevel::Workflow };
/// assert_eq!(effective([Some(step), None, Some(workflow)]), Some(workflow));
/// assert_eq!(effective([None, None]), None);
/// ```
pub fn effective(candidates: impl IntoIterator<Item = Option<Deadline>>) -> Option<Deadline> {
    candidates.into_iter().flatten().fold(None, |best, d| match best {
        Some(b)
            if (b.at, std::cmp::Reverse(b.level.breadth()))
                <= (d.at, std::cmp::Reverse(d.level.breadth())) =>
        {
            Some(b)
        }
        _ => Some(d),
    })
}

/// The deadline a step starting at `now` runs under: the earliest of the
/// global, workflow and parent deadlines and `now + step_timeout` (a step
/// timeout too large to add to `now` counts as none).
pub fn step_deadline(
    now: Instant,
    global: Option<Deadline>,
    workflow: Option<Deadline>,
    parent: Option<Deadline>,
    step_timeout: Option<Duration>,
) -> Option<Deadline> {
    let step = step_timeout.and_then(|t| now.checked_add(t)).map(|at| Deadline {
        at,
        level: TimeoutLevel::Step,
    });
    effective([global, workflow, parent, step])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(level: TimeoutLevel, at: Instant) -> Option<Deadline> {
        Some(Deadline { at, level })
    }

    #[test]
    fn earliest_deadline_wins() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let got = effective([
            at(TimeoutLevel::Global, t0 + 4 * s),
            at(TimeoutLevel::Workflow, t0 + 3 * s),
            at(TimeoutLevel::Step, t0 + s),
            at(TimeoutLevel::Parent, t0 + 2 * s),
        ]);
        assert_eq!(got, at(TimeoutLevel::Step, t0 + s));
    }

    #[test]
    fn ties_resolve_to_the_outermost_level_in_any_order() {
        use TimeoutLevel::*;
        let t0 = Instant::now();
        let orders = [
            [Step, Parent, Workflow, Global],
            [Global, Workflow, Parent, Step],
            [Parent, Global, Step, Workflow],
        ];
        for order in orders {
            assert_eq!(effective(order.map(|l| at(l, t0))), at(Global, t0), "{order:?}");
        }
        assert_eq!(effective([at(Step, t0), at(Parent, t0)]), at(Parent, t0));
        assert_eq!(effective([at(Parent, t0), at(Workflow, t0)]), at(Workflow, t0));
        assert_eq!(effective([at(Step, t0), at(Workflow, t0)]), at(Workflow, t0));
    }

    #[test]
    fn missing_deadlines_are_ignored() {
        let t0 = Instant::now();
        assert_eq!(
            effective([None, at(TimeoutLevel::Parent, t0), None]),
            at(TimeoutLevel::Parent, t0)
        );
        assert_eq!(effective(std::iter::empty()), None);
        assert_eq!(effective([None, None, None]), None);
    }

    #[test]
    fn step_timeout_applies_when_it_is_the_earliest() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let got = step_deadline(t0, at(TimeoutLevel::Global, t0 + 60 * s), None, None, Some(2 * s));
        assert_eq!(got, at(TimeoutLevel::Step, t0 + 2 * s));
    }

    #[test]
    fn parent_deadline_bounds_the_called_step() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let got = step_deadline(
            t0,
            None,
            at(TimeoutLevel::Workflow, t0 + 10 * s),
            at(TimeoutLevel::Parent, t0 + 3 * s),
            Some(5 * s),
        );
        assert_eq!(got, at(TimeoutLevel::Parent, t0 + 3 * s));
    }

    #[test]
    fn no_limits_means_no_deadline_and_huge_timeouts_do_not_panic() {
        let t0 = Instant::now();
        assert_eq!(step_deadline(t0, None, None, None, None), None);
        assert_eq!(step_deadline(t0, None, None, None, Some(Duration::MAX)), None);
        let workflow = at(TimeoutLevel::Workflow, t0);
        assert_eq!(
            step_deadline(t0, None, workflow, None, Some(Duration::MAX)),
            workflow
        );
    }

    #[test]
    fn remaining_saturates_at_zero_once_expired() {
        let t0 = Instant::now();
        let d = Deadline {
            at: t0 + Duration::from_secs(2),
            level: TimeoutLevel::Step,
        };
        assert_eq!(d.remaining(t0), Duration::from_secs(2));
        assert!(!d.is_expired(t0));
        assert_eq!(d.remaining(t0 + Duration::from_secs(3)), Duration::ZERO);
        assert!(d.is_expired(d.at));
    }

    #[test]
    fn level_names_are_kebab_case_in_display_and_serde() {
        for level in [
            TimeoutLevel::Global,
            TimeoutLevel::Workflow,
            TimeoutLevel::Step,
            TimeoutLevel::Parent,
        ] {
            let json = serde_json::to_string(&level).unwrap();
            assert_eq!(json, format!("\"{level}\""));
            assert_eq!(serde_json::from_str::<TimeoutLevel>(&json).unwrap(), level);
        }
    }
}
