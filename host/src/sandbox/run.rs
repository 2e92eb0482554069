//! Running one step instance and turning every way it can end into an [`Outcome`].

use std::collections::HashMap;
use std::future::pending;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wasmtime::component::{ResourceTable, ResourceTableError};
use wasmtime::{Store, Trap, UpdateDeadline, WasmBacktrace};
use wasmtime_wasi::{FsPerms, WasiCtx};

use super::bindings::StepError;
use super::capture::LogCapture;
use super::instance::{InstanceState, MemoryLimitExceeded, MemoryLimiter, WorkId};
use super::meter::{Exceeded, Meter};
use super::outbound::{HttpPolicy, Outbound};
use super::scratch::ScratchDir;
use super::secrets::Secrets;
use super::step_host::{Imports, StepHost};
use super::{Sandbox, StepComponent};
use crate::limits::{LimitOverrides, Limits};
use crate::outcome::{
    GuestErrorKind, LogSource, MAX_GUEST_MESSAGE, Outcome, OutcomeKind, RunReport, StepLog, Usage,
};

/// How one run differs from the sandbox's defaults.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use stepbox::{LimitOverrides, RunOptions};
/// use tokio_util::sync::CancellationToken;
///
/// let cancel = CancellationToken::new();
/// let options = RunOptions::default()
///     .limits(LimitOverrides { fuel: Some(5_000_000), ..Default::default() })
///     .deadline(Instant::now() + Duration::from_secs(10))
///     .cancel_token(cancel.clone());
/// // Later, from anywhere: `cancel.cancel()` stops the run promptly.
/// # drop(options);
/// ```
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Limits that replace the sandbox's defaults for this run.
    pub limits: LimitOverrides,
    /// An absolute deadline set from above (a workflow or a global limit).
    /// The step stops at the earlier of it and its own timeout; time spent
    /// waiting for an instance slot counts against it.
    pub deadline: Option<Instant>,
    /// Cancels the run when triggered, whether it is waiting or running.
    pub cancel: Option<CancellationToken>,
    /// Serves the step's child calls and state operations; without one,
    /// calls fail and state is private to the run.
    pub host: Option<Arc<dyn StepHost>>,
    /// What the guest's `idempotency-key` returns: a key naming the unit of
    /// work across retries and restarts. Without one, a key unique to this
    /// run.
    pub idempotency_key: Option<Arc<str>>,
    /// What the guest's `attempt` returns; 0 (unset) reads as 1.
    pub attempt: u32,
    /// Where the step may send HTTP requests, and how many and how large;
    /// without one, every request is denied.
    pub http: Option<Arc<HttpPolicy>>,
    /// The secrets the step may read; their values are redacted from its
    /// output, error, log, state writes and child calls.
    pub secrets: Secrets,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("limits", &self.limits)
            .field("deadline", &self.deadline)
            .field("cancel", &self.cancel)
            .field("host", &self.host.as_ref().map(|_| "dyn StepHost"))
            .field("idempotency_key", &self.idempotency_key)
            .field("attempt", &self.attempt)
            .field("http", &self.http)
            .field("secrets", &self.secrets)
            .finish()
    }
}

impl RunOptions {
    /// Sets [`RunOptions::limits`].
    pub fn limits(mut self, limits: LimitOverrides) -> Self {
        self.limits = limits;
        self
    }

    /// Sets [`RunOptions::deadline`].
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Sets [`RunOptions::cancel`].
    pub fn cancel_token(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Sets [`RunOptions::host`].
    pub fn host(mut self, host: Arc<dyn StepHost>) -> Self {
        self.host = Some(host);
        self
    }

    /// Sets [`RunOptions::http`].
    pub fn http(mut self, policy: Arc<HttpPolicy>) -> Self {
        self.http = Some(policy);
        self
    }

    /// Sets [`RunOptions::secrets`].
    pub fn secrets(mut self, secrets: Secrets) -> Self {
        self.secrets = secrets;
        self
    }

    /// Sets [`RunOptions::idempotency_key`] and [`RunOptions::attempt`].
    pub fn work(mut self, idempotency_key: Arc<str>, attempt: u32) -> Self {
        self.idempotency_key = Some(idempotency_key);
        self.attempt = attempt;
        self
    }
}

/// The error the epoch callback traps with once the deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("deadline reached")]
struct DeadlineReached;

enum Ended {
    Returned(wasmtime::Result<Result<Vec<u8>, StepError>>),
    Deadline,
    Cancelled,
}

impl Sandbox {
    /// Runs `step` once on `input` and reports how it ended.
    ///
    /// The run waits for an instance slot if all are busy, then gets a fresh
    /// instance with its own fuel, memory limit, deadline and temporary
    /// directory (preopened as `/tmp`, removed when the run ends however it
    /// ends, including when this future is dropped). Nothing the guest does
    /// makes this panic or return early: every ending is an [`Outcome`].
    ///
    /// A run whose [`Limits::stack`] differs from the sandbox's default runs
    /// on an engine built for that stack size, created (and the component
    /// prepared for it, from its compiled code) on first use; a sandbox keeps
    /// at most [`MAX_STACK_SIZES`](crate::sandbox::MAX_STACK_SIZES) sizes.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sandbox: stepbox::Sandbox, step: stepbox::StepComponent) {
    /// use stepbox::{Outcome, RunOptions};
    ///
    /// let report = sandbox.run(&step, br#"{"name":"world"}"#, RunOptions::default()).await;
    /// match report.outcome {
    ///     Outcome::Completed { output } => println!("{}", String::from_utf8_lossy(&output)),
    ///     other => eprintln!("step failed: {other}"),
    /// }
    /// # }
    /// ```
    pub async fn run(&self, step: &StepComponent, input: &[u8], options: RunOptions) -> RunReport {
        let inner = &*self.inner;
        let limits = inner.defaults.with(&options.limits);
        let queued = Instant::now();
        let tier;
        let (engine, pre) = if limits.stack == inner.defaults.stack {
            (&inner.engine, &step.inner.pre)
        } else {
            match self.stack_tier(step, limits.stack) {
                Ok(found) => {
                    tier = found;
                    (&tier.0, &tier.1)
                }
                Err(message) => return early(host_failure(&message), queued),
            }
        };
        let cancelled = async {
            match &options.cancel {
                Some(token) => token.cancelled().await,
                None => pending().await,
            }
        };
        tokio::pin!(cancelled);

        // While waiting for a slot only the deadline from above applies: the
        // step's own timeout starts when the step does.
        let permit = tokio::select! {
            biased;
            () = &mut cancelled => {
                return early(Outcome::Cancelled { elapsed: queued.elapsed() }, queued);
            }
            () = sleep_until(options.deadline) => {
                let limit = options.deadline.map_or(Duration::ZERO, |d| d.saturating_duration_since(queued));
                return early(Outcome::Timeout { limit, elapsed: queued.elapsed() }, queued);
            }
            permit = inner.permits.acquire() => match permit {
                Ok(permit) => permit,
                Err(_) => return early(host_failure("the sandbox is shutting down"), queued),
            },
        };

        let started = Instant::now();
        let own_deadline = started + limits.timeout;
        let deadline = options.deadline.map_or(own_deadline, |d| d.min(own_deadline));
        let log = LogCapture::new(usize::try_from(limits.log.as_u64()).unwrap_or(usize::MAX));
        let scratch = match inner.scratch.dir() {
            Ok(dir) => dir,
            Err(e) => {
                return early(
                    host_failure(&format!("cannot create the step's temporary directory: {e}")),
                    queued,
                );
            }
        };
        let wasi = match wasi_context(&scratch, &log) {
            Ok(wasi) => wasi,
            Err(e) => {
                return early(
                    host_failure(&format!("cannot preopen the step's temporary directory: {e:#}")),
                    queued,
                );
            }
        };
        let memory_limit = limits.memory.as_u64().min(inner.max_memory);
        let meter = Meter::new(
            limits.scratch.as_u64(),
            limits.scratch_entries,
            Arc::clone(&inner.fds),
        );
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.handles as usize);
        let mut store = Store::new(
            engine,
            InstanceState {
                wasi,
                table,
                limiter: MemoryLimiter::new(usize::try_from(memory_limit).unwrap_or(usize::MAX)),
                meter: meter.clone(),
                held: HashMap::new(),
                tmp_opened: false,
                log: log.clone(),
                deadline,
                imports: match options.host {
                    Some(host) => Imports::Host(host),
                    None => Imports::Alone(HashMap::new()),
                },
                work: WorkId {
                    key: options
                        .idempotency_key
                        .unwrap_or_else(|| format!("step-{:016x}", fastrand::u64(..)).into()),
                    attempt: options.attempt.max(1),
                },
                http: wasmtime_wasi_http::WasiHttpCtx::new(),
                outbound: Outbound::new(
                    options.http.unwrap_or_else(HttpPolicy::deny_all),
                    log.clone(),
                    deadline,
                ),
                secrets: options.secrets.clone(),
            },
        );
        store.limiter(|state| &mut state.limiter);
        store
            .set_fuel(limits.fuel)
            .expect("fuel metering is enabled in every sandbox engine");
        // Every tick the guest yields to the executor (so long computations
        // share the threads fairly) and the deadline is checked.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(DeadlineReached.into())
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });

        let ended = {
            let call = async {
                let instance = pre.instantiate_async(&mut store).await?;
                instance.call_run(&mut store, input).await
            };
            // The timer also covers a guest blocked in a host call (a WASI
            // sleep or poll), where epochs do not fire.
            tokio::select! {
                biased;
                result = call => Ended::Returned(result),
                () = tokio::time::sleep_until(deadline.into()) => Ended::Deadline,
                () = &mut cancelled => Ended::Cancelled,
            }
        };
        let elapsed = started.elapsed();
        let fuel_left = store.get_fuel().unwrap_or(0);
        let peak_memory = store.data().limiter.peak as u64;
        let tmp_opened = store.data().tmp_opened;
        // The store holds the preopened directory's descriptor: close it
        // before the directory goes, then give the slot back.
        drop(store);
        match tmp_opened {
            true => drop(scratch),
            false => inner.scratch.unopened(scratch),
        }
        drop(permit);

        let mut log = log.finish();
        let peak_scratch = meter.peak_bytes();
        let classify = Classify {
            exceeded: meter.exceeded(),
            limits: &limits,
            allowed: deadline.saturating_duration_since(started),
            elapsed,
            max_wasm_stack: limits.stack.as_u64(),
            log: &log,
        };
        let mut outcome = classify.ended(ended);
        if !options.secrets.is_empty() {
            redact(&options.secrets, &mut outcome, &mut log);
        }
        let output_bytes = outcome.output().map_or(0, |o| o.len() as u64);
        tracing::debug!(
            step = step.name(),
            outcome = %outcome.kind(),
            elapsed_us = elapsed.as_micros() as u64,
            "step run ended"
        );
        RunReport {
            outcome,
            usage: Usage {
                queue_wait: started - queued,
                wall_time: elapsed,
                fuel_consumed: limits.fuel.saturating_sub(fuel_left),
                peak_memory,
                peak_scratch,
                output_bytes,
            },
            log,
        }
    }
}

/// Takes every granted secret's value out of what the run leaves behind.
fn redact(secrets: &Secrets, outcome: &mut Outcome, log: &mut StepLog) {
    for record in &mut log.records {
        secrets.scrub(&mut record.message);
    }
    match outcome {
        Outcome::Completed { output } => {
            if let std::borrow::Cow::Owned(clean) = secrets.redact_bytes(output) {
                *output = clean;
            }
        }
        Outcome::GuestError { message, .. } | Outcome::HostFailure { message } => secrets.scrub(message),
        Outcome::Trap { message, backtrace } => {
            secrets.scrub(message);
            if let Some(backtrace) = backtrace {
                secrets.scrub(backtrace);
            }
        }
        _ => {}
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => pending().await,
    }
}

fn early(outcome: Outcome, queued: Instant) -> RunReport {
    RunReport {
        outcome,
        usage: Usage {
            queue_wait: queued.elapsed(),
            ..Usage::default()
        },
        log: StepLog::default(),
    }
}

fn host_failure(message: &str) -> Outcome {
    Outcome::HostFailure {
        message: message.to_owned(),
    }
}

/// A context that denies everything but a private `/tmp` and captured output.
fn wasi_context(scratch: &ScratchDir, log: &LogCapture) -> wasmtime::Result<WasiCtx> {
    let mut builder = WasiCtx::builder();
    builder
        .stdout(log.stream(LogSource::Stdout))
        .stderr(log.stream(LogSource::Stderr))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    builder.preopened_dir(scratch.path(), "/tmp", FsPerms::ReadWrite)?;
    Ok(builder.build())
}

/// What is needed to name how a run ended.
struct Classify<'a> {
    /// The first scratch or handle refusal the step met: it names the
    /// outcome of a run that then did not complete.
    exceeded: Option<Exceeded>,
    limits: &'a Limits,
    allowed: Duration,
    elapsed: Duration,
    max_wasm_stack: u64,
    log: &'a StepLog,
}

impl Classify<'_> {
    fn ended(&self, ended: Ended) -> Outcome {
        let outcome = self.ending(ended);
        match (self.exceeded, outcome.kind()) {
            // A step that met a refusal and still completed handled it; a
            // cancelled one was stopped from outside.
            (None, _) | (_, OutcomeKind::Completed | OutcomeKind::Cancelled) => outcome,
            (Some(exceeded), _) => exceeded.outcome(),
        }
    }

    fn ending(&self, ended: Ended) -> Outcome {
        match ended {
            Ended::Deadline => self.timeout(),
            Ended::Cancelled => Outcome::Cancelled {
                elapsed: self.elapsed,
            },
            Ended::Returned(Ok(Ok(output))) => {
                let limit = self.limits.output.as_u64();
                if output.len() as u64 > limit {
                    Outcome::OutputTooLarge {
                        limit,
                        size: output.len() as u64,
                    }
                } else {
                    Outcome::Completed { output }
                }
            }
            Ended::Returned(Ok(Err(error))) => {
                let (error, message) = match error {
                    StepError::InvalidInput(m) => (GuestErrorKind::InvalidInput, m),
                    StepError::Retryable(m) => (GuestErrorKind::Retryable, m),
                    StepError::Failed(m) => (GuestErrorKind::Failed, m),
                };
                Outcome::GuestError {
                    error,
                    message: truncate(message, MAX_GUEST_MESSAGE),
                }
            }
            Ended::Returned(Err(error)) => self.error(&error),
        }
    }

    fn timeout(&self) -> Outcome {
        Outcome::Timeout {
            limit: self.allowed,
            elapsed: self.elapsed,
        }
    }

    fn error(&self, error: &wasmtime::Error) -> Outcome {
        if error.downcast_ref::<DeadlineReached>().is_some() {
            return self.timeout();
        }
        if let Some(hit) = error.downcast_ref::<MemoryLimitExceeded>() {
            return Outcome::MemoryLimit {
                limit: hit.limit as u64,
                requested: hit.requested as u64,
            };
        }
        if let Some(ResourceTableError::Full) = error.downcast_ref::<ResourceTableError>() {
            // A handle the filesystem layer could not refuse first (a
            // pollable, a stream): the table's cap trapped.
            return Outcome::HandleLimit {
                limit: u64::from(self.limits.handles),
                host_wide: false,
            };
        }
        let backtrace = error.downcast_ref::<WasmBacktrace>().map(|bt| bt.to_string());
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => Outcome::OutOfFuel {
                limit: self.limits.fuel,
            },
            Some(Trap::StackOverflow) => Outcome::StackOverflow {
                limit: self.max_wasm_stack,
            },
            Some(Trap::Interrupt) => self.timeout(),
            Some(trap) => {
                let mut message = trap.to_string();
                if *trap == Trap::UnreachableCodeReached
                    && let Some(panic) = guest_panic(self.log)
                {
                    message = format!("guest panicked: {panic}");
                }
                Outcome::Trap { message, backtrace }
            }
            None => Outcome::Trap {
                message: format!("{error:#}"),
                backtrace,
            },
        }
    }
}

/// A Rust guest that panics prints `thread '…' panicked at FILE:LINE:COL:`
/// and then the message to stderr before it aborts; recover both.
fn guest_panic(log: &StepLog) -> Option<String> {
    let stderr: Vec<&str> = log
        .records
        .iter()
        .filter(|r| r.source == LogSource::Stderr)
        .map(|r| r.message.as_str())
        .collect();
    let at = stderr.iter().rposition(|line| line.contains("panicked at "))?;
    let location = stderr[at].split("panicked at ").nth(1)?.trim_end_matches(':');
    let message = stderr.get(at + 1).copied().unwrap_or("").trim();
    Some(format!("{message} (at {location})"))
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::LogRecord;

    #[test]
    fn a_rust_panic_message_is_recovered_from_stderr() {
        let log = StepLog {
            records: vec![
                LogRecord {
                    source: LogSource::Stderr,
                    message: "thread '<unnamed>' panicked at src/lib.rs:7:5:".into(),
                },
                LogRecord {
                    source: LogSource::Stderr,
                    message: "boom".into(),
                },
            ],
            dropped_bytes: 0,
        };
        assert_eq!(guest_panic(&log).as_deref(), Some("boom (at src/lib.rs:7:5)"));
        assert_eq!(guest_panic(&StepLog::default()), None);
    }

    #[test]
    fn truncation_keeps_utf8_valid() {
        assert_eq!(truncate("aé".into(), 2), "a");
        assert_eq!(truncate("abc".into(), 5), "abc");
    }
}
