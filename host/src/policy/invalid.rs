//! Why a policy's settings were refused: one typed error for every
//! policy's `validate`, so a configuration file, a workflow file and an
//! embedder's code all hear the same one-line reason naming the setting.

use crate::outcome::OutcomeKind;

/// A policy setting out of range. Its message names the setting as a
/// configuration file spells it.
///
/// ```
/// use stepbox::policy::{InvalidSetting, Quotas};
///
/// let quotas = Quotas { max_workflows: 0, ..Quotas::default() };
/// let err = quotas.validate().unwrap_err();
/// assert_eq!(err, InvalidSetting::TooSmall { setting: "max-workflows", min: 1, note: "" });
/// assert_eq!(err.to_string(), "max-workflows must be at least 1");
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidSetting {
    /// A count below its minimum.
    #[error("{setting} must be at least {min}{note}")]
    TooSmall {
        /// The setting, as a configuration file names it.
        setting: &'static str,
        /// Its smallest allowed value.
        min: u64,
        /// What the minimum means, when that helps (starts with a space).
        note: &'static str,
    },
    /// A ratio outside `(0, 1]`.
    #[error("{setting} must be above 0 and at most 1, not {value}")]
    Ratio {
        /// The setting.
        setting: &'static str,
        /// The value given.
        value: f64,
    },
    /// A factor that is not a finite number of at least 1.
    #[error("{setting} must be a finite number of at least 1.0, not {value}")]
    Factor {
        /// The setting.
        setting: &'static str,
        /// The value given.
        value: f64,
    },
    /// A retry policy that names an outcome which is never retried.
    #[error("retry-on must not name {0}: it is never retried")]
    NeverRetried(OutcomeKind),
}
