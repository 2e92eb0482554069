//! The host configuration file, `stepbox.toml`: quotas, the global timeout,
//! circuit breakers, and the default limits of every step.
//!
//! Every key is optional; a missing one keeps its default. Unknown keys are
//! errors, so a typo does not silently leave a quota at its default.
//!
//! ```toml
//! [quotas]
//! max_workflows = 256       # running at once
//! max_queued = 10000        # waiting; beyond it submissions are refused
//! max_instances = 64        # step instances at once
//! memory_budget = "4GiB"    # sum of running instances' memory limits
//! max_steps = 10000         # per workflow
//! max_fan_out = 10000       # items of one for_each
//! max_state = "1MiB"        # state bytes per run
//!
//! [timeouts]
//! global = "10m"            # per run, from submission
//!
//! [breaker]
//! consecutive_failures = 5
//! failure_ratio = 0.5       # optional
//! window = 20
//! cooldown = "30s"
//!
//! [limits]                  # defaults of every step
//! fuel = 10000000000
//! memory = "64MiB"
//! timeout = "30s"
//! scratch = "64MiB"         # bytes in its /tmp
//! scratch_entries = 10000   # files, directories and links in its /tmp
//! handles = 512             # open files, streams, pollables at once
//!
//! [journal]
//! db = ".stepbox/stepbox.db"
//! durability = "strict"     # strict, batched or memory
//! batch_window = "10ms"     # batched: the most a crash can lose
//! retention = "30d"         # finished runs' payloads are removed after this
//! shutdown_grace = "30s"    # on SIGINT/SIGTERM, time for running steps to finish
//! ```
//!
//! ```
//! let config = stepbox::config::HostConfig::from_toml("[quotas]\nmax_workflows = 8\n").unwrap();
//! assert_eq!(config.scheduler.quotas.max_workflows, 8);
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::limits::{LimitOverrides, parse_duration, parse_size};
use crate::scheduler::SchedulerConfig;
use crate::store::Durability;

/// What `stepbox.toml` configures.
#[derive(Debug, Clone, Default)]
pub struct HostConfig {
    /// Quotas, the global timeout and breakers.
    pub scheduler: SchedulerConfig,
    /// Default limits of every step (a workflow's own settings override them).
    pub limits: LimitOverrides,
    /// Where and how runs are journaled.
    pub journal: JournalSettings,
}

/// The `[journal]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalSettings {
    /// The database file.
    pub db: PathBuf,
    /// What a completion's journaling promises.
    pub durability: Durability,
    /// Under `batched`, the most a crash can lose.
    pub batch_window: Duration,
    /// Finished runs' payloads are removed once they are this old; `None` keeps them.
    pub retention: Option<Duration>,
    /// On SIGINT/SIGTERM, how long running steps get to finish.
    pub shutdown_grace: Duration,
}

impl Default for JournalSettings {
    /// `.stepbox/stepbox.db`, strict, a 10 ms window, no retention, 30 s of grace.
    fn default() -> Self {
        JournalSettings {
            db: PathBuf::from(".stepbox/stepbox.db"),
            durability: Durability::Strict,
            batch_window: Duration::from_millis(10),
            retention: None,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid, or has a bad value.
    #[error("{}{message}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Invalid {
        /// The file, when there is one.
        path: Option<PathBuf>,
        /// What is wrong, with its line and column.
        message: String,
    },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    quotas: QuotaKeys,
    #[serde(default)]
    timeouts: TimeoutKeys,
    #[serde(default)]
    breaker: BreakerKeys,
    #[serde(default)]
    limits: LimitKeys,
    #[serde(default)]
    journal: JournalKeys,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct JournalKeys {
    db: Option<PathBuf>,
    durability: Option<String>,
    batch_window: Option<String>,
    retention: Option<String>,
    shutdown_grace: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct QuotaKeys {
    max_workflows: Option<usize>,
    max_queued: Option<usize>,
    max_instances: Option<usize>,
    memory_budget: Option<String>,
    max_steps: Option<usize>,
    max_fan_out: Option<usize>,
    max_state: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TimeoutKeys {
    global: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BreakerKeys {
    consecutive_failures: Option<u32>,
    failure_ratio: Option<f64>,
    window: Option<usize>,
    cooldown: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitKeys {
    fuel: Option<u64>,
    memory: Option<String>,
    timeout: Option<String>,
    scratch: Option<String>,
    scratch_entries: Option<u64>,
    handles: Option<u32>,
}

impl HostConfig {
    /// Reads a configuration file.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the file, and the line of a bad key or value.
    pub fn from_file(path: &Path) -> Result<HostConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        HostConfig::from_toml(&text).map_err(|e| match e {
            ConfigError::Invalid { message, .. } => ConfigError::Invalid {
                path: Some(path.to_owned()),
                message,
            },
            other => other,
        })
    }

    /// Parses configuration text.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] for bad TOML, unknown keys and bad values.
    pub fn from_toml(text: &str) -> Result<HostConfig, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { path: None, message };
        let file: File = toml::from_str(text).map_err(|e| invalid(one_line(&e)))?;
        let size = |key: &str, v: &Option<String>| -> Result<Option<ByteSize>, ConfigError> {
            v.as_deref()
                .map(parse_size)
                .transpose()
                .map_err(|e| invalid(format!("`{key}`: {e}")))
        };
        let duration = |key: &str, v: &Option<String>| -> Result<Option<Duration>, ConfigError> {
            v.as_deref()
                .map(parse_duration)
                .transpose()
                .map_err(|e| invalid(format!("`{key}`: {e}")))
        };
        let mut config = HostConfig::default();
        let q = &mut config.scheduler.quotas;
        let k = &file.quotas;
        q.max_workflows = k.max_workflows.unwrap_or(q.max_workflows);
        q.max_queued = k.max_queued.unwrap_or(q.max_queued);
        q.max_instances = k.max_instances.unwrap_or(q.max_instances);
        q.max_steps_per_workflow = k.max_steps.unwrap_or(q.max_steps_per_workflow);
        q.max_fan_out = k.max_fan_out.unwrap_or(q.max_fan_out);
        if let Some(budget) = size("quotas.memory_budget", &k.memory_budget)? {
            q.memory_budget = budget;
        }
        if let Some(state) = size("quotas.max_state", &k.max_state)? {
            q.max_state_bytes = usize::try_from(state.as_u64()).unwrap_or(usize::MAX);
        }
        q.validate().map_err(|e| invalid(e.to_string()))?;
        config.scheduler.global_timeout = duration("timeouts.global", &file.timeouts.global)?;
        let b = &mut config.scheduler.breaker;
        let k = &file.breaker;
        b.consecutive_failures = k.consecutive_failures.unwrap_or(b.consecutive_failures);
        b.failure_ratio = k.failure_ratio.or(b.failure_ratio);
        b.window = k.window.unwrap_or(b.window);
        if let Some(cooldown) = duration("breaker.cooldown", &k.cooldown)? {
            b.cooldown = cooldown;
        }
        b.validate().map_err(|e| invalid(e.to_string()))?;
        config.limits = LimitOverrides {
            fuel: file.limits.fuel,
            memory: size("limits.memory", &file.limits.memory)?,
            timeout: duration("limits.timeout", &file.limits.timeout)?,
            scratch: size("limits.scratch", &file.limits.scratch)?,
            scratch_entries: file.limits.scratch_entries,
            handles: file.limits.handles,
            ..LimitOverrides::default()
        };
        let j = &mut config.journal;
        let k = &file.journal;
        if let Some(db) = &k.db {
            j.db = db.clone();
        }
        if let Some(durability) = &k.durability {
            j.durability = durability
                .parse()
                .map_err(|e| invalid(format!("`journal.durability`: {e}")))?;
        }
        if let Some(window) = duration("journal.batch_window", &k.batch_window)? {
            j.batch_window = window;
        }
        j.retention = duration("journal.retention", &k.retention)?;
        if let Some(grace) = duration("journal.shutdown_grace", &k.shutdown_grace)? {
            j.shutdown_grace = grace;
        }
        Ok(config)
    }
}

/// toml's messages quote the offending line over several lines; keep the
/// position and the reason.
fn one_line(e: &toml::de::Error) -> String {
    let message = e.message().trim();
    match e.span() {
        Some(span) => format!("at byte {}: {message}", span.start),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_reaches_its_setting() {
        let config = HostConfig::from_toml(
            "[quotas]\nmax_workflows = 3\nmax_queued = 4\nmax_instances = 5\nmemory_budget = \"1GiB\"\nmax_steps = 6\nmax_fan_out = 7\nmax_state = \"2KiB\"\n[timeouts]\nglobal = \"1m\"\n[breaker]\nconsecutive_failures = 2\nfailure_ratio = 0.5\nwindow = 10\ncooldown = \"5s\"\n[limits]\nfuel = 9\nmemory = \"8MiB\"\ntimeout = \"2s\"\nscratch = \"3MiB\"\nscratch_entries = 11\nhandles = 12\n[journal]\ndb = \"j.db\"\ndurability = \"batched\"\nbatch_window = \"5ms\"\nretention = \"7d\"\nshutdown_grace = \"3s\"\n",
        )
        .unwrap();
        let q = &config.scheduler.quotas;
        assert_eq!((q.max_workflows, q.max_queued, q.max_instances), (3, 4, 5));
        assert_eq!(
            (q.max_steps_per_workflow, q.max_fan_out, q.max_state_bytes),
            (6, 7, 2048)
        );
        assert_eq!(q.memory_budget, ByteSize::gib(1));
        assert_eq!(config.scheduler.global_timeout, Some(Duration::from_secs(60)));
        assert_eq!(config.scheduler.breaker.cooldown, Duration::from_secs(5));
        assert_eq!(config.scheduler.breaker.failure_ratio, Some(0.5));
        assert_eq!(config.limits.memory, Some(ByteSize::mib(8)));
        assert_eq!(config.limits.timeout, Some(Duration::from_secs(2)));
        assert_eq!(config.limits.scratch, Some(ByteSize::mib(3)));
        assert_eq!(
            (config.limits.scratch_entries, config.limits.handles),
            (Some(11), Some(12))
        );
        let j = &config.journal;
        assert_eq!(
            (j.db.as_path(), j.durability),
            (Path::new("j.db"), Durability::Batched)
        );
        assert_eq!(j.batch_window, Duration::from_millis(5));
        assert_eq!(j.retention, Some(Duration::from_secs(7 * 86400)));
        assert_eq!(j.shutdown_grace, Duration::from_secs(3));
    }

    #[test]
    fn a_typo_is_an_error_not_a_silent_default() {
        let err = HostConfig::from_toml("[quotas]\nmax_workflow = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_workflow"), "{err}");
        let err = HostConfig::from_toml("[limits]\nmemory = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.memory"), "{err}");
    }
}
