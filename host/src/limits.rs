//! Per-step resource limits: what one step instance may consume.
//!
//! [`Limits`] holds a concrete value for every limit; [`LimitOverrides`] holds
//! the ones a caller wants to change. Layers (host defaults, later workflow
//! and step settings, then a run's own flags) are applied in order with
//! [`Limits::with`], so the last layer that names a limit wins.

use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// Default fuel budget: about ten seconds of pure compute on this class of machine.
///
/// Fuel is the deterministic bound on guest work (roughly one unit per wasm
/// instruction); the wall-clock timeout is the backstop for time spent in host calls.
pub const DEFAULT_FUEL: u64 = 10_000_000_000;

/// Default linear memory a step may grow to: enough for real text or JSON work,
/// small enough that a thousand concurrent steps fit on a small machine.
pub const DEFAULT_MEMORY: ByteSize = ByteSize::mib(64);

/// Default wall-clock timeout of one step, measured from the moment it starts running.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Default cap on a step's output: outputs travel through the journal and to
/// dependent steps, so they are kept modest.
pub const DEFAULT_OUTPUT: ByteSize = ByteSize::mib(16);

/// Default cap on a step's captured log (log records, stdout and stderr together).
/// Past it records are dropped and counted, so a log flood cannot exhaust the host.
pub const DEFAULT_LOG: ByteSize = ByteSize::mib(1);

/// Default wasm stack: deep enough for ordinary recursion, small enough that
/// unbounded recursion ends quickly in a stack-overflow outcome.
pub const DEFAULT_STACK: ByteSize = ByteSize::kib(512);

/// Default bytes a step may keep in its `/tmp`: the same as [`DEFAULT_MEMORY`],
/// since the scratch directory usually lives on a memory file system and its
/// files then take RAM like linear memory does.
pub const DEFAULT_SCRATCH: ByteSize = ByteSize::mib(64);

/// Default number of names (files, directories, links) a step may create in
/// its `/tmp`: each costs the kernel an inode and a directory entry, whatever
/// its size.
pub const DEFAULT_SCRATCH_ENTRIES: u64 = 10_000;

/// Default number of resources a step may hold at once: open files and
/// directories, streams, pollables and every other WASI handle. Each may hold
/// a host file descriptor or host memory, so the cap keeps one step from
/// taking the host's; a few hundred is far more than a step needs.
pub const DEFAULT_HANDLES: u32 = 512;

/// The limits one step instance runs under.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use stepbox::{LimitOverrides, Limits};
///
/// let limits = Limits::default().with(&LimitOverrides {
///     timeout: Some(Duration::from_secs(2)),
///     ..LimitOverrides::default()
/// });
/// assert_eq!(limits.timeout, Duration::from_secs(2));
/// assert_eq!(limits.fuel, stepbox::limits::DEFAULT_FUEL);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Fuel units the step may consume (about one per wasm instruction).
    pub fuel: u64,
    /// Largest total linear memory the step may grow to.
    pub memory: ByteSize,
    /// Wall-clock time the step may run, from the moment it starts.
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// Largest output the step may return.
    pub output: ByteSize,
    /// Largest captured log (log records, stdout and stderr together).
    pub log: ByteSize,
    /// The wasm stack. wasmtime fixes the stack per engine, so each distinct
    /// size a sandbox runs with costs it an engine (see
    /// [`Sandbox::run`](crate::Sandbox::run)); most hosts use one.
    pub stack: ByteSize,
    /// Bytes the step may keep in its `/tmp` (file contents and symlink
    /// targets, counted by their logical size).
    #[serde(default = "default_scratch")]
    pub scratch: ByteSize,
    /// Names (files, directories, links) the step may have in its `/tmp`.
    #[serde(default = "default_scratch_entries")]
    pub scratch_entries: u64,
    /// Resources (open files, streams, pollables…) the step may hold at once.
    #[serde(default = "default_handles")]
    pub handles: u32,
}

// Journals written before these limits existed recorded none: they ran with
// today's defaults' intent, unmetered, so reading them back gives the defaults.
fn default_scratch() -> ByteSize {
    DEFAULT_SCRATCH
}

fn default_scratch_entries() -> u64 {
    DEFAULT_SCRATCH_ENTRIES
}

fn default_handles() -> u32 {
    DEFAULT_HANDLES
}

impl Default for Limits {
    /// The documented defaults: [`DEFAULT_FUEL`], [`DEFAULT_MEMORY`],
    /// [`DEFAULT_TIMEOUT`], [`DEFAULT_OUTPUT`], [`DEFAULT_LOG`], [`DEFAULT_STACK`],
    /// [`DEFAULT_SCRATCH`], [`DEFAULT_SCRATCH_ENTRIES`] and [`DEFAULT_HANDLES`].
    fn default() -> Self {
        Limits {
            fuel: DEFAULT_FUEL,
            memory: DEFAULT_MEMORY,
            timeout: DEFAULT_TIMEOUT,
            output: DEFAULT_OUTPUT,
            log: DEFAULT_LOG,
            stack: DEFAULT_STACK,
            scratch: DEFAULT_SCRATCH,
            scratch_entries: DEFAULT_SCRATCH_ENTRIES,
            handles: DEFAULT_HANDLES,
        }
    }
}

impl Limits {
    /// Returns these limits with every limit that `overrides` names replaced.
    ///
    /// # Examples
    ///
    /// ```
    /// use bytesize::ByteSize;
    /// use stepbox::{LimitOverrides, Limits};
    ///
    /// let small = LimitOverrides { memory: Some(ByteSize::mib(8)), ..Default::default() };
    /// assert_eq!(Limits::default().with(&small).memory, ByteSize::mib(8));
    /// ```
    #[must_use]
    pub fn with(mut self, overrides: &LimitOverrides) -> Limits {
        let LimitOverrides {
            fuel,
            memory,
            timeout,
            output,
            log,
            stack,
            scratch,
            scratch_entries,
            handles,
        } = *overrides;
        self.fuel = fuel.unwrap_or(self.fuel);
        self.memory = memory.unwrap_or(self.memory);
        self.timeout = timeout.unwrap_or(self.timeout);
        self.output = output.unwrap_or(self.output);
        self.log = log.unwrap_or(self.log);
        self.stack = stack.unwrap_or(self.stack);
        self.scratch = scratch.unwrap_or(self.scratch);
        self.scratch_entries = scratch_entries.unwrap_or(self.scratch_entries);
        self.handles = handles.unwrap_or(self.handles);
        self
    }
}

/// The limits a caller wants to change; `None` keeps the layer below.
///
/// # Examples
///
/// ```
/// use stepbox::LimitOverrides;
///
/// let overrides = LimitOverrides { fuel: Some(1_000_000), ..LimitOverrides::default() };
/// assert!(overrides.memory.is_none());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitOverrides {
    /// Replaces [`Limits::fuel`].
    pub fuel: Option<u64>,
    /// Replaces [`Limits::memory`].
    pub memory: Option<ByteSize>,
    /// Replaces [`Limits::timeout`].
    #[serde(with = "humantime_serde_compat::option")]
    pub timeout: Option<Duration>,
    /// Replaces [`Limits::output`].
    pub output: Option<ByteSize>,
    /// Replaces [`Limits::log`].
    pub log: Option<ByteSize>,
    /// Replaces [`Limits::stack`].
    pub stack: Option<ByteSize>,
    /// Replaces [`Limits::scratch`].
    #[serde(default)]
    pub scratch: Option<ByteSize>,
    /// Replaces [`Limits::scratch_entries`].
    #[serde(default)]
    pub scratch_entries: Option<u64>,
    /// Replaces [`Limits::handles`].
    #[serde(default)]
    pub handles: Option<u32>,
}

impl LimitOverrides {
    /// These overrides, with each limit they leave unset taken from `below`.
    ///
    /// # Examples
    ///
    /// ```
    /// use stepbox::LimitOverrides;
    ///
    /// let step = LimitOverrides { fuel: Some(1), ..Default::default() };
    /// let defaults = LimitOverrides { fuel: Some(2), handles: Some(64), ..Default::default() };
    /// let merged = step.or(&defaults);
    /// assert_eq!((merged.fuel, merged.handles), (Some(1), Some(64)));
    /// ```
    #[must_use]
    pub fn or(&self, below: &LimitOverrides) -> LimitOverrides {
        LimitOverrides {
            fuel: self.fuel.or(below.fuel),
            memory: self.memory.or(below.memory),
            timeout: self.timeout.or(below.timeout),
            output: self.output.or(below.output),
            log: self.log.or(below.log),
            stack: self.stack.or(below.stack),
            scratch: self.scratch.or(below.scratch),
            scratch_entries: self.scratch_entries.or(below.scratch_entries),
            handles: self.handles.or(below.handles),
        }
    }
}

/// Parses a human duration such as `500ms`, `2s` or `1m 30s`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// assert_eq!(stepbox::limits::parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
/// assert!(stepbox::limits::parse_duration("soon").is_err());
/// ```
///
/// # Errors
///
/// A [`LimitParseError`] naming the text when it is not a duration.
pub fn parse_duration(text: &str) -> Result<Duration, LimitParseError> {
    humantime::parse_duration(text.trim()).map_err(|e| LimitParseError {
        text: text.to_owned(),
        expected: "a duration such as 500ms, 2s or 1m",
        reason: e.to_string(),
    })
}

/// Parses a human size such as `64MiB`, `512 KiB` or `1GB`.
///
/// # Examples
///
/// ```
/// use bytesize::ByteSize;
///
/// assert_eq!(stepbox::limits::parse_size("64MiB").unwrap(), ByteSize::mib(64));
/// assert!(stepbox::limits::parse_size("lots").is_err());
/// ```
///
/// # Errors
///
/// A [`LimitParseError`] naming the text when it is not a size.
pub fn parse_size(text: &str) -> Result<ByteSize, LimitParseError> {
    text.trim().parse::<ByteSize>().map_err(|reason| LimitParseError {
        text: text.to_owned(),
        expected: "a size such as 64MiB, 512KiB or 1GB",
        reason,
    })
}

/// A limit given as text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value `{text}`: expected {expected} ({reason})")]
pub struct LimitParseError {
    /// The text that was given.
    pub text: String,
    /// What was expected instead.
    pub expected: &'static str,
    /// The parser's reason.
    pub reason: String,
}

/// Durations in configuration and reports read like `30s`, not `{secs, nanos}`.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| super::super::parse_duration(&text).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

/// Serializes a duration as fractional milliseconds: how reports, the
/// journal's history and the CLI's JSON show times.
pub(crate) fn serialize_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_only_what_they_name() {
        let base = Limits::default();
        let merged = base.with(&LimitOverrides {
            fuel: Some(7),
            log: Some(ByteSize::kib(1)),
            ..LimitOverrides::default()
        });
        assert_eq!(merged.fuel, 7);
        assert_eq!(merged.log, ByteSize::kib(1));
        assert_eq!(merged.memory, base.memory);
        assert_eq!(merged.timeout, base.timeout);
        assert_eq!(merged.output, base.output);
    }

    #[test]
    fn later_layers_win() {
        let workflow = LimitOverrides {
            timeout: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        let run = LimitOverrides {
            timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        let limits = Limits::default().with(&workflow).with(&run);
        assert_eq!(limits.timeout, Duration::from_secs(1));
    }

    #[test]
    fn human_sizes_and_durations_parse() {
        assert_eq!(parse_size("64MiB").unwrap(), ByteSize::mib(64));
        assert_eq!(parse_size(" 1 GiB ").unwrap(), ByteSize::gib(1));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        let err = parse_size("64 parsecs").unwrap_err();
        assert!(err.to_string().contains("64 parsecs"), "{err}");
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn limits_round_trip_through_json_with_readable_durations() {
        let json = serde_json::to_value(Limits::default()).unwrap();
        assert_eq!(json["timeout"], "30s");
        let back: Limits = serde_json::from_value(json).unwrap();
        assert_eq!(back, Limits::default());
    }
}
