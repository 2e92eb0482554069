//! How a step run ended, what it used, and what it logged.
//!
//! Every way a run can end is a variant of [`Outcome`]; nothing is reported as a
//! bare trap string. [`OutcomeKind`] is the flat, copyable name of a variant, for
//! exit codes, metrics and retry policies.

use std::fmt;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// The full result of one step run: its outcome, its usage and its captured log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    /// How the run ended.
    pub outcome: Outcome,
    /// What the run consumed.
    pub usage: Usage,
    /// What the guest logged, wrote to stdout and wrote to stderr, capped.
    pub log: StepLog,
}

/// How a step run ended.
///
/// # Examples
///
/// ```
/// use stepbox::{Outcome, OutcomeKind};
///
/// let outcome = Outcome::OutOfFuel { limit: 1_000 };
/// assert_eq!(outcome.kind(), OutcomeKind::OutOfFuel);
/// assert_eq!(outcome.to_string(), "out of fuel: the step used its whole budget of 1000 fuel");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Outcome {
    /// The step returned output.
    Completed {
        /// The output bytes (a JSON document by convention).
        #[serde(with = "bytes_as_json_or_text")]
        output: Vec<u8>,
    },
    /// The step returned one of its own errors.
    GuestError {
        /// Which kind of error the guest reported.
        error: GuestErrorKind,
        /// The guest's message (truncated to [`MAX_GUEST_MESSAGE`] bytes).
        message: String,
    },
    /// The step used its whole fuel budget.
    OutOfFuel {
        /// The fuel budget it ran under.
        limit: u64,
    },
    /// The step tried to grow its linear memory past its limit.
    MemoryLimit {
        /// The memory limit it ran under, in bytes.
        limit: u64,
        /// The total memory the refused growth asked for, in bytes.
        requested: u64,
    },
    /// The step was still running at its deadline.
    Timeout {
        /// The time it was allowed (the earlier of its timeout and any deadline given).
        #[serde(with = "millis")]
        limit: Duration,
        /// How long it had run when it was stopped.
        #[serde(with = "millis")]
        elapsed: Duration,
    },
    /// The step tried to keep more in its `/tmp` than its scratch quota
    /// allows. The guest saw the write fail as a full disk would make it fail
    /// (`insufficient-space`, ENOSPC) and did not complete.
    ScratchLimit {
        /// Which part of the quota: bytes or entries.
        resource: ScratchResource,
        /// The quota it ran under (bytes, or entries).
        limit: u64,
        /// What the refused operation would have brought its use to.
        requested: u64,
    },
    /// The step tried to hold more handles (open files and directories,
    /// streams, pollables…) than it may. The guest saw the open fail
    /// (`insufficient-memory`, like ENOMEM) or trapped, and did not complete.
    HandleLimit {
        /// The most handles it may hold at once (or, when `host_wide`, the
        /// descriptors the whole host grants its steps).
        limit: u64,
        /// The host's descriptor budget for all steps was used up, not this
        /// step's own cap: the host is overloaded, not the step at fault.
        host_wide: bool,
    },
    /// The step returned more output than its limit allows.
    OutputTooLarge {
        /// The output limit, in bytes.
        limit: u64,
        /// The size of the output it returned, in bytes.
        size: u64,
    },
    /// The step exhausted its wasm stack (for example by unbounded recursion).
    StackOverflow {
        /// The host's wasm stack limit, in bytes.
        limit: u64,
    },
    /// The step trapped: a guest panic, an `unreachable`, a bad memory access…
    Trap {
        /// What trapped, including the guest's panic message when it printed one.
        message: String,
        /// The wasm backtrace, when one was captured.
        backtrace: Option<String>,
    },
    /// The run was cancelled before it finished.
    Cancelled {
        /// How long it had run (or waited) when it was cancelled.
        #[serde(with = "millis")]
        elapsed: Duration,
    },
    /// The host could not set the instance up (for example its temporary
    /// directory could not be created, or instantiation failed for a reason
    /// that is not a limit).
    HostFailure {
        /// What went wrong.
        message: String,
    },
    /// The step was not run: its component's circuit breaker is open after
    /// repeated failures.
    CircuitOpen {
        /// The component, by name.
        component: String,
        /// How long until the breaker lets a probe through.
        #[serde(with = "millis")]
        retry_after: Duration,
    },
    /// The step was not run: it would exceed one of the host's quotas.
    QuotaExceeded {
        /// Which quota, and by how much.
        message: String,
    },
}

/// Guest messages longer than this are truncated: a message is for people and
/// logs, and must not be a way around the output limit.
pub const MAX_GUEST_MESSAGE: usize = 64 * 1024;

/// The part of a step's scratch quota that was exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScratchResource {
    /// Bytes of file contents (and symlink targets).
    Bytes,
    /// Names: files, directories and links.
    Entries,
}

/// The kind of error a guest reported, mirroring the WIT `step-error` variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestErrorKind {
    /// The input was not acceptable; running again will not help.
    InvalidInput,
    /// A transient failure; running again may succeed.
    Retryable,
    /// A final failure.
    Failed,
}

impl GuestErrorKind {
    /// The kebab-case name used in the WIT world and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestErrorKind::InvalidInput => "invalid-input",
            GuestErrorKind::Retryable => "retryable",
            GuestErrorKind::Failed => "failed",
        }
    }
}

/// The name of an [`Outcome`] variant (with the guest error kind spelled out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutcomeKind {
    /// [`Outcome::Completed`].
    Completed,
    /// [`Outcome::GuestError`] with [`GuestErrorKind::InvalidInput`].
    InvalidInput,
    /// [`Outcome::GuestError`] with [`GuestErrorKind::Retryable`].
    Retryable,
    /// [`Outcome::GuestError`] with [`GuestErrorKind::Failed`].
    Failed,
    /// [`Outcome::OutOfFuel`].
    OutOfFuel,
    /// [`Outcome::MemoryLimit`].
    MemoryLimit,
    /// [`Outcome::Timeout`].
    Timeout,
    /// [`Outcome::OutputTooLarge`].
    OutputTooLarge,
    /// [`Outcome::StackOverflow`].
    StackOverflow,
    /// [`Outcome::ScratchLimit`].
    ScratchLimit,
    /// [`Outcome::HandleLimit`].
    HandleLimit,
    /// [`Outcome::Trap`].
    Trap,
    /// [`Outcome::Cancelled`].
    Cancelled,
    /// [`Outcome::HostFailure`].
    HostFailure,
    /// [`Outcome::CircuitOpen`].
    CircuitOpen,
    /// [`Outcome::QuotaExceeded`].
    QuotaExceeded,
}

impl OutcomeKind {
    /// Every kind, in declaration order.
    ///
    /// ```
    /// assert!(stepbox::OutcomeKind::ALL.contains(&stepbox::OutcomeKind::Timeout));
    /// ```
    pub const ALL: [OutcomeKind; 16] = [
        OutcomeKind::Completed,
        OutcomeKind::InvalidInput,
        OutcomeKind::Retryable,
        OutcomeKind::Failed,
        OutcomeKind::OutOfFuel,
        OutcomeKind::MemoryLimit,
        OutcomeKind::Timeout,
        OutcomeKind::OutputTooLarge,
        OutcomeKind::StackOverflow,
        OutcomeKind::ScratchLimit,
        OutcomeKind::HandleLimit,
        OutcomeKind::Trap,
        OutcomeKind::Cancelled,
        OutcomeKind::HostFailure,
        OutcomeKind::CircuitOpen,
        OutcomeKind::QuotaExceeded,
    ];

    /// The kebab-case name used in reports and on the command line.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(stepbox::OutcomeKind::OutOfFuel.as_str(), "out-of-fuel");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Completed => "completed",
            OutcomeKind::InvalidInput => "invalid-input",
            OutcomeKind::Retryable => "retryable",
            OutcomeKind::Failed => "failed",
            OutcomeKind::OutOfFuel => "out-of-fuel",
            OutcomeKind::MemoryLimit => "memory-limit",
            OutcomeKind::Timeout => "timeout",
            OutcomeKind::OutputTooLarge => "output-too-large",
            OutcomeKind::StackOverflow => "stack-overflow",
            OutcomeKind::ScratchLimit => "scratch-limit",
            OutcomeKind::HandleLimit => "handle-limit",
            OutcomeKind::Trap => "trap",
            OutcomeKind::Cancelled => "cancelled",
            OutcomeKind::HostFailure => "host-failure",
            OutcomeKind::CircuitOpen => "circuit-open",
            OutcomeKind::QuotaExceeded => "quota-exceeded",
        }
    }
}

impl OutcomeKind {
    /// The kind named `name` (as [`OutcomeKind::as_str`] writes it).
    ///
    /// ```
    /// use stepbox::OutcomeKind;
    /// assert_eq!(OutcomeKind::from_name("out-of-fuel"), Some(OutcomeKind::OutOfFuel));
    /// assert_eq!(OutcomeKind::from_name("nope"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<OutcomeKind> {
        OutcomeKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Outcome {
    /// The name of this outcome.
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Completed { .. } => OutcomeKind::Completed,
            Outcome::GuestError { error, .. } => match error {
                GuestErrorKind::InvalidInput => OutcomeKind::InvalidInput,
                GuestErrorKind::Retryable => OutcomeKind::Retryable,
                GuestErrorKind::Failed => OutcomeKind::Failed,
            },
            Outcome::OutOfFuel { .. } => OutcomeKind::OutOfFuel,
            Outcome::MemoryLimit { .. } => OutcomeKind::MemoryLimit,
            Outcome::Timeout { .. } => OutcomeKind::Timeout,
            Outcome::OutputTooLarge { .. } => OutcomeKind::OutputTooLarge,
            Outcome::StackOverflow { .. } => OutcomeKind::StackOverflow,
            Outcome::ScratchLimit { .. } => OutcomeKind::ScratchLimit,
            Outcome::HandleLimit { .. } => OutcomeKind::HandleLimit,
            Outcome::Trap { .. } => OutcomeKind::Trap,
            Outcome::Cancelled { .. } => OutcomeKind::Cancelled,
            Outcome::HostFailure { .. } => OutcomeKind::HostFailure,
            Outcome::CircuitOpen { .. } => OutcomeKind::CircuitOpen,
            Outcome::QuotaExceeded { .. } => OutcomeKind::QuotaExceeded,
        }
    }

    /// The output, if the step completed.
    pub fn output(&self) -> Option<&[u8]> {
        match self {
            Outcome::Completed { output } => Some(output),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    /// One line naming the kind and, where there is one, the limit that was hit.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Completed { output } => {
                write!(f, "completed with {} bytes of output", output.len())
            }
            Outcome::GuestError { error, message } => write!(f, "{error}: {message}", error = error.as_str()),
            Outcome::OutOfFuel { limit } => {
                write!(f, "out of fuel: the step used its whole budget of {limit} fuel")
            }
            Outcome::MemoryLimit { limit, requested } => write!(
                f,
                "memory limit: the step asked for {} of linear memory, over its limit of {}",
                ByteSize(*requested).display().iec(),
                ByteSize(*limit).display().iec()
            ),
            Outcome::Timeout { limit, elapsed } => write!(
                f,
                "timeout: the step was stopped after {} (its limit was {})",
                humantime::format_duration(round_ms(*elapsed)),
                humantime::format_duration(round_ms(*limit))
            ),
            Outcome::OutputTooLarge { limit, size } => write!(
                f,
                "output too large: {} returned, the limit is {}",
                ByteSize(*size).display().iec(),
                ByteSize(*limit).display().iec()
            ),
            Outcome::StackOverflow { limit } => write!(
                f,
                "stack overflow: the step exhausted its {} wasm stack",
                ByteSize(*limit).display().iec()
            ),
            Outcome::ScratchLimit {
                resource: ScratchResource::Bytes,
                limit,
                requested,
            } => write!(
                f,
                "scratch limit: the step asked for {} in /tmp, over its limit of {}",
                ByteSize(*requested).display().iec(),
                ByteSize(*limit).display().iec()
            ),
            Outcome::ScratchLimit {
                resource: ScratchResource::Entries,
                limit,
                requested,
            } => write!(
                f,
                "scratch limit: the step asked for {requested} files, directories and links in /tmp, over its limit of {limit}"
            ),
            Outcome::HandleLimit {
                limit,
                host_wide: false,
            } => write!(
                f,
                "handle limit: the step tried to hold more than {limit} open files, streams and other handles"
            ),
            Outcome::HandleLimit {
                limit,
                host_wide: true,
            } => write!(
                f,
                "handle limit: the {limit} file descriptors this host grants its steps are all in use (raise the open-file limit or run fewer instances)"
            ),
            Outcome::Trap { message, .. } => write!(f, "trap: {message}"),
            Outcome::Cancelled { elapsed } => write!(
                f,
                "cancelled after {}",
                humantime::format_duration(round_ms(*elapsed))
            ),
            Outcome::HostFailure { message } => write!(f, "host failure: {message}"),
            Outcome::CircuitOpen {
                component,
                retry_after,
            } => write!(
                f,
                "circuit open: `{component}` failed repeatedly; next probe in {}",
                humantime::format_duration(round_ms(*retry_after))
            ),
            Outcome::QuotaExceeded { message } => write!(f, "{message}"),
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX))
}

/// What one run consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Time spent waiting for an instance slot before the step started.
    #[serde(with = "micros")]
    pub queue_wait: Duration,
    /// Wall time from the start of instantiation to the end of the run.
    #[serde(with = "micros")]
    pub wall_time: Duration,
    /// Fuel consumed.
    pub fuel_consumed: u64,
    /// The largest linear memory the instance held at any time, in bytes.
    pub peak_memory: u64,
    /// The most bytes the instance kept in its `/tmp` at any time.
    #[serde(default)]
    pub peak_scratch: u64,
    /// Size of the returned output, in bytes (0 when there was none).
    pub output_bytes: u64,
}

impl Usage {
    /// From start to end: the wait for a slot and the run.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stepbox::Usage;
    ///
    /// let usage = Usage { queue_wait: Duration::from_millis(2), wall_time: Duration::from_millis(5), ..Usage::default() };
    /// assert_eq!(usage.total(), Duration::from_millis(7));
    /// ```
    pub fn total(&self) -> Duration {
        self.queue_wait + self.wall_time
    }

    /// Adds `other`'s usage to this one, as several attempts at one unit of
    /// work add up: waits, time, fuel and output bytes are summed, peaks
    /// are the highest.
    pub fn add(&mut self, other: &Usage) {
        self.queue_wait += other.queue_wait;
        self.wall_time += other.wall_time;
        self.fuel_consumed = self.fuel_consumed.saturating_add(other.fuel_consumed);
        self.peak_memory = self.peak_memory.max(other.peak_memory);
        self.peak_scratch = self.peak_scratch.max(other.peak_scratch);
        self.output_bytes = self.output_bytes.saturating_add(other.output_bytes);
    }
}

/// The captured log of one run: host log records, stdout and stderr lines.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepLog {
    /// The records kept, in the order they were written.
    pub records: Vec<LogRecord>,
    /// Bytes dropped because the log limit was reached.
    pub dropped_bytes: u64,
}

impl StepLog {
    /// Sends the records through `tracing` under the `guest` target, so
    /// `RUST_LOG` filters them like any other log and they carry the spans
    /// (run, step) of the caller. `step` names the step in each record.
    pub fn emit(&self, step: &str) {
        for record in &self.records {
            let message = record.message.as_str();
            match record.source {
                LogSource::Log(LogLevel::Trace) => tracing::trace!(target: "guest", step, "{message}"),
                LogSource::Log(LogLevel::Debug) => tracing::debug!(target: "guest", step, "{message}"),
                LogSource::Log(LogLevel::Info) | LogSource::Stdout => {
                    tracing::info!(target: "guest", step, "{message}")
                }
                LogSource::Log(LogLevel::Warn) | LogSource::Stderr | LogSource::Host => {
                    tracing::warn!(target: "guest", step, "{message}")
                }
                LogSource::Log(LogLevel::Error) => tracing::error!(target: "guest", step, "{message}"),
            }
        }
        if self.dropped_bytes > 0 {
            tracing::warn!(target: "guest", step, dropped_bytes = self.dropped_bytes, "log limit reached; the rest of the log was dropped");
        }
    }
}

/// One line of a step's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Where it came from.
    pub source: LogSource,
    /// The text (lossily decoded when the guest wrote invalid UTF-8).
    pub message: String,
}

/// Where a [`LogRecord`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogSource {
    /// The `log` host import, at this level.
    Log(LogLevel),
    /// A line the guest wrote to stdout.
    Stdout,
    /// A line the guest wrote to stderr.
    Stderr,
    /// A record the host wrote about the step, such as a refused request.
    Host,
}

/// Severity of a guest log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogLevel {
    /// Very verbose diagnostics.
    Trace,
    /// Diagnostics.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected that the step handled.
    Warn,
    /// Something failed.
    Error,
}

/// Outputs are JSON by convention: reports show them as JSON when they are,
/// and as text otherwise, rather than as arrays of numbers.
mod bytes_as_json_or_text {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(value) => value.serialize(s),
            Err(_) => s.serialize_str(&String::from_utf8_lossy(bytes)),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Ok(match value {
            serde_json::Value::String(text) => text.into_bytes(),
            other => serde_json::to_vec(&other).map_err(serde::de::Error::custom)?,
        })
    }
}

macro_rules! duration_as {
    ($name:ident, $as:ident, $from:ident) => {
        mod $name {
            use std::time::Duration;

            use serde::{Deserialize, Deserializer, Serializer};

            pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_u64(d.$as().try_into().unwrap_or(u64::MAX))
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
                Ok(Duration::$from(u64::deserialize(d)?))
            }
        }
    };
}
duration_as!(millis, as_millis, from_millis);
duration_as!(micros, as_micros, from_micros);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_outcome_names_its_kind_and_limit_in_one_line() {
        let cases = [
            Outcome::OutOfFuel { limit: 5 },
            Outcome::MemoryLimit {
                limit: 1 << 20,
                requested: 2 << 20,
            },
            Outcome::Timeout {
                limit: Duration::from_millis(100),
                elapsed: Duration::from_millis(101),
            },
            Outcome::OutputTooLarge { limit: 10, size: 20 },
            Outcome::StackOverflow { limit: 512 * 1024 },
            Outcome::ScratchLimit {
                resource: ScratchResource::Bytes,
                limit: 1 << 20,
                requested: 3 << 20,
            },
            Outcome::ScratchLimit {
                resource: ScratchResource::Entries,
                limit: 10,
                requested: 11,
            },
            Outcome::HandleLimit {
                limit: 512,
                host_wide: false,
            },
            Outcome::HandleLimit {
                limit: 512,
                host_wide: true,
            },
        ];
        for outcome in cases {
            let line = outcome.to_string();
            assert!(!line.contains('\n'), "{line}");
            let kind = outcome.kind().as_str().replace('-', " ");
            assert!(line.starts_with(&kind), "{line} should start with {kind}");
        }
        let memory = Outcome::MemoryLimit {
            limit: 1 << 20,
            requested: 2 << 20,
        };
        assert!(memory.to_string().contains("1.0 MiB"), "{memory}");
    }

    #[test]
    fn completed_output_serializes_as_json() {
        let report = Outcome::Completed {
            output: br#"{"a":1}"#.to_vec(),
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["kind"], "completed");
        assert_eq!(json["output"]["a"], 1);
        let back: Outcome = serde_json::from_value(json).unwrap();
        assert_eq!(back.output(), Some(&br#"{"a":1}"#[..]));
    }
}
