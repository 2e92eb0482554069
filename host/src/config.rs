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
//! db = ".stepbox/stepbox.db"  # or postgres://user:password@host/database
//! durability = "strict"     # strict, batched or memory
//! batch_window = "10ms"     # batched: the most a crash can lose
//! retention = "30d"         # finished runs' payloads are removed after this
//! shutdown_grace = "30s"    # on SIGINT/SIGTERM, time for running steps to finish
//! pool = 8                  # PostgreSQL: connections a host's readers hold at most
//! lease = "5s"              # a crashed host's runs are taken over after this (SQLite: 30s)
//!
//! [server]                  # `stepbox serve`
//! listen = "127.0.0.1:7700"
//! data = ".stepbox/server"  # uploaded components and workflows
//! max_connections = 1024
//! max_body = "64MiB"        # larger requests get 413
//! request_timeout = "30s"   # to send a request's headers and body
//! max_wait = "5m"           # the longest `?wait=` a request may ask
//! metrics_token = "sha256:…" # optional: /metrics and health need this bearer token
//!
//! [[tenants]]               # none: the API is open, for one implicit tenant
//! name = "acme"
//! tokens = ["sha256:…"]     # SHA-256 of each bearer token; `stepbox token new`
//! max_running = 64          # its runs executing at once (on each host)
//! max_queued = 1000         # its runs accepted and waiting
//! submissions_per_second = 100
//!
//! [http]
//! allow = ["api.example.com:443"]  # what a workflow may grant its steps at most (`allow_http`);
//!                           # unset: anything. Set it when others write the workflows.
//!
//! [secrets]                 # values a step reads if its workflow names them (`secrets:`)
//! API_TOKEN = "…"
//! DB_PASSWORD = { env = "PGPASSWORD" }   # read from the host's environment at start
//! ```
//!
//! `stepbox serve` gives steps only the secrets listed here: a workflow
//! submitted over the API cannot name an environment variable and read it.
//! `stepbox run` and `stepbox step`, run by the user who owns the
//! environment, also read a secret missing here from the variable of its name.
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
use crate::sandbox::{HttpGrant, Secrets};
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
    /// How `stepbox serve` serves.
    pub server: ServerSettings,
    /// Who may use the server's API, and how much.
    pub tenants: Vec<TenantSettings>,
}

/// The `[server]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// The address to listen on.
    pub listen: std::net::SocketAddr,
    /// Where uploaded components and workflows are kept; `None`: `server`
    /// beside the journal's database.
    pub data: Option<PathBuf>,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// The largest request body; larger ones get 413.
    pub max_body: ByteSize,
    /// How long a client has to send a request (headers and body).
    pub request_timeout: Duration,
    /// The longest `?wait=` a submission may ask for.
    pub max_wait: Duration,
    /// When set, `/metrics`, `/healthz` and `/readyz` need this bearer token.
    pub metrics_token: Option<TokenDigest>,
}

impl Default for ServerSettings {
    /// Loopback port 7700, 1,024 connections, 64 MiB bodies, 30 s to send
    /// a request, waits of up to 5 minutes.
    fn default() -> Self {
        ServerSettings {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 7700)),
            data: None,
            max_connections: 1024,
            max_body: ByteSize::mib(64),
            request_timeout: Duration::from_secs(30),
            max_wait: Duration::from_secs(300),
            metrics_token: None,
        }
    }
}

/// One `[[tenants]]` entry: a name, the tokens that act for it, and its quotas.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantSettings {
    /// Its name: letters, digits, `-` and `_`.
    pub name: String,
    /// The SHA-256 digests of its bearer tokens.
    pub tokens: Vec<TokenDigest>,
    /// Its runs executing at once, at most.
    pub max_running: Option<usize>,
    /// Its runs accepted and not yet executing, at most.
    pub max_queued: Option<usize>,
    /// Submissions (runs) per second it may make, on average.
    pub submissions_per_second: Option<f64>,
}

/// The SHA-256 digest of a bearer token, as the configuration names it
/// (`sha256:` and 64 hex digits): the token itself is never stored.
///
/// ```
/// use stepbox::config::TokenDigest;
/// let digest = TokenDigest::of("s3cret");
/// assert_eq!(digest.to_string().parse::<TokenDigest>().unwrap(), digest);
/// assert!(digest.matches("s3cret") && !digest.matches("guess"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest of `token`.
    pub fn of(token: &str) -> TokenDigest {
        use sha2::Digest;
        TokenDigest(sha2::Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `token` has this digest, compared in constant time.
    pub fn matches(&self, token: &str) -> bool {
        let other = TokenDigest::of(token);
        self.0.iter().zip(other.0).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenDigest({self})")
    }
}

impl std::fmt::Display for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::str::FromStr for TokenDigest {
    type Err = String;

    fn from_str(s: &str) -> Result<TokenDigest, String> {
        // Not quoted: a token pasted here by mistake must not reach a log.
        let bad = || "not a token digest (`sha256:` and 64 hex digits; see `stepbox token new`)".to_owned();
        let hex = s.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(TokenDigest(bytes))
    }
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
    /// With PostgreSQL, the most connections a host's readers hold at once.
    pub pool: u32,
    /// How long a host's claim on its runs lasts without renewal (it renews
    /// every third of it): after a crash, how soon another host sharing the
    /// store takes its runs over. `None`: 5 s with PostgreSQL, 30 s with
    /// SQLite (whose lock already proves its one host alive).
    pub lease: Option<Duration>,
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
            pool: crate::store::DEFAULT_POOL,
            lease: None,
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
    #[serde(default)]
    server: ServerKeys,
    #[serde(default)]
    tenants: Vec<TenantKeys>,
    #[serde(default)]
    secrets: std::collections::BTreeMap<String, SecretKey>,
    #[serde(default)]
    http: HttpKeys,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HttpKeys {
    allow: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SecretKey {
    Value(String),
    Env { env: String },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ServerKeys {
    listen: Option<String>,
    data: Option<PathBuf>,
    max_connections: Option<usize>,
    max_body: Option<String>,
    request_timeout: Option<String>,
    max_wait: Option<String>,
    metrics_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantKeys {
    name: String,
    #[serde(default)]
    tokens: Vec<String>,
    max_running: Option<usize>,
    max_queued: Option<usize>,
    submissions_per_second: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct JournalKeys {
    db: Option<PathBuf>,
    durability: Option<String>,
    batch_window: Option<String>,
    retention: Option<String>,
    shutdown_grace: Option<String>,
    pool: Option<u32>,
    lease: Option<String>,
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
        if let Some(bad) = file
            .secrets
            .keys()
            .find(|name| !crate::workflow::is_secret_name(name))
        {
            return Err(invalid(format!(
                "`secrets.{bad}`: a secret's name is letters, digits and `_`, not starting with a digit"
            )));
        }
        let mut secrets = Vec::with_capacity(file.secrets.len());
        for (name, key) in file.secrets {
            let value = match key {
                SecretKey::Value(value) => value,
                SecretKey::Env { env } => std::env::var(&env).map_err(|_| {
                    invalid(format!(
                        "`secrets.{name}`: the environment variable `{env}` is not set"
                    ))
                })?,
            };
            secrets.push((name, value));
        }
        config.scheduler.secrets = Secrets::new(secrets);
        config.scheduler.http_ceiling = file
            .http
            .allow
            .map(|list| {
                list.iter()
                    .map(|g| {
                        g.parse::<HttpGrant>()
                            .map_err(|e| invalid(format!("`http.allow`: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
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
        j.lease = duration("journal.lease", &k.lease)?;
        if j.lease.is_some_and(|l| l < Duration::from_millis(100)) {
            return Err(invalid("`journal.lease` must be at least 100ms".into()));
        }
        match k.pool {
            Some(0) => return Err(invalid("`journal.pool` must be at least 1".into())),
            Some(pool) => j.pool = pool,
            None => {}
        }
        let srv = &mut config.server;
        let k = &file.server;
        if let Some(listen) = &k.listen {
            srv.listen = listen.parse().map_err(|_| {
                invalid(format!(
                    "`server.listen`: `{listen}` is not an address like 127.0.0.1:7700"
                ))
            })?;
        }
        srv.data = k.data.clone();
        srv.max_connections = k.max_connections.unwrap_or(srv.max_connections);
        if srv.max_connections == 0 {
            return Err(invalid("`server.max_connections` must be at least 1".into()));
        }
        if let Some(body) = size("server.max_body", &k.max_body)? {
            srv.max_body = body;
        }
        if let Some(timeout) = duration("server.request_timeout", &k.request_timeout)? {
            srv.request_timeout = timeout;
        }
        if let Some(wait) = duration("server.max_wait", &k.max_wait)? {
            srv.max_wait = wait;
        }
        srv.metrics_token = k
            .metrics_token
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| invalid(format!("`server.metrics_token`: {e}")))?;
        config.tenants = tenants(&file.tenants).map_err(invalid)?;
        Ok(config)
    }
}

/// Checks the `[[tenants]]` entries: names well formed and unique, and
/// no token shared by two tenants (it could act for only one).
fn tenants(keys: &[TenantKeys]) -> Result<Vec<TenantSettings>, String> {
    let mut seen_names = std::collections::HashSet::new();
    let mut seen_tokens = std::collections::HashMap::new();
    keys.iter()
        .map(|k| {
            let name = &k.name;
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(format!(
                    "`tenants.name`: `{name}` must be 1 to 64 letters, digits, `-` or `_`"
                ));
            }
            if !seen_names.insert(name.clone()) {
                return Err(format!("`tenants`: tenant `{name}` is configured twice"));
            }
            let tokens = k
                .tokens
                .iter()
                .map(|t| t.parse::<TokenDigest>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("tenant `{name}`: {e}"))?;
            for token in &tokens {
                if let Some(other) = seen_tokens.insert(token.clone(), name.clone()) {
                    return Err(format!("tenants `{other}` and `{name}` share a token"));
                }
            }
            if k.submissions_per_second
                .is_some_and(|r| !(r > 0.0 && r.is_finite()))
            {
                return Err(format!(
                    "tenant `{name}`: `submissions_per_second` must be above 0"
                ));
            }
            Ok(TenantSettings {
                name: name.clone(),
                tokens,
                max_running: k.max_running,
                max_queued: k.max_queued,
                submissions_per_second: k.submissions_per_second,
            })
        })
        .collect()
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
    fn tenants_and_the_server_section_are_read_and_checked() {
        let token = TokenDigest::of("t0k3n");
        let config = HostConfig::from_toml(&format!(
            "[server]\nlisten = \"0.0.0.0:0\"\nmax_body = \"1MiB\"\nmax_connections = 8\n\
             [[tenants]]\nname = \"acme\"\ntokens = [\"{token}\"]\nmax_running = 2\nsubmissions_per_second = 5.0\n"
        ))
        .unwrap();
        assert_eq!(config.server.listen.port(), 0);
        assert_eq!(
            (config.server.max_body, config.server.max_connections),
            (ByteSize::mib(1), 8)
        );
        let acme = &config.tenants[0];
        assert_eq!((acme.name.as_str(), acme.max_running), ("acme", Some(2)));
        assert!(acme.tokens[0].matches("t0k3n"));
        let twice = format!(
            "[[tenants]]\nname = \"a\"\ntokens = [\"{token}\"]\n[[tenants]]\nname = \"b\"\ntokens = [\"{token}\"]\n"
        );
        let err = HostConfig::from_toml(&twice).unwrap_err().to_string();
        assert!(err.contains("share a token"), "{err}");
        let err = HostConfig::from_toml("[[tenants]]\nname = \"a\"\ntokens = [\"hunter2\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a token digest"), "{err}");
        let err = HostConfig::from_toml("[[tenants]]\nname = \"a/b\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tenants.name"), "{err}");
    }

    #[test]
    fn secrets_are_read_from_values_or_named_environment_variables() {
        let config = HostConfig::from_toml("[secrets]\nA = \"alpha\"\nB = { env = \"PATH\" }\n").unwrap();
        let s = &config.scheduler.secrets;
        assert_eq!(s.get("A"), Some("alpha"));
        assert_eq!(s.get("B"), std::env::var("PATH").ok().as_deref());
        assert!(!config.scheduler.secrets_from_env);
        let err =
            HostConfig::from_toml("[secrets]\nC = { env = \"STEPBOX_SURELY_UNSET_VAR\" }\n").unwrap_err();
        assert!(
            err.to_string().contains("`STEPBOX_SURELY_UNSET_VAR` is not set"),
            "{err}"
        );
        let err = HostConfig::from_toml("[secrets]\n\"9x\" = \"v\"\n").unwrap_err();
        assert!(err.to_string().contains("`secrets.9x`"), "{err}");
    }

    #[test]
    fn the_http_ceiling_is_read_and_checked() {
        let config = HostConfig::from_toml("[http]\nallow = [\"api.example.com:443\"]\n").unwrap();
        let ceiling = config.scheduler.http_ceiling.unwrap();
        assert_eq!(ceiling, vec!["api.example.com:443".parse().unwrap()]);
        assert!(HostConfig::default().scheduler.http_ceiling.is_none());
        let err = HostConfig::from_toml("[http]\nallow = [\"nope\"]\n").unwrap_err();
        assert!(err.to_string().contains("`http.allow`"), "{err}");
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
