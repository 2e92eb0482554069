//! The `host` interface a step imports, and [`StepHost`]: what the embedder
//! (the workflow scheduler) supplies for the imports that reach outside the
//! instance, child calls and shared state.
//!
//! These imports are linked by hand rather than through the generated
//! `Host` trait because `call` needs the caller's store: the child's fuel
//! comes out of the caller's remaining budget.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::StoreContextMut;
use wasmtime::component::Linker;

use super::bindings::stepbox::step::host::LogLevel as WitLogLevel;
use super::bindings::stepbox::step::types::StepError as WitStepError;
use super::instance::InstanceState;
use crate::outcome::{GuestErrorKind, LogLevel};

/// What a running step may ask of the platform around it: run a child step,
/// read and update the shared state of its workflow run.
///
/// The sandbox knows nothing of workflows; a scheduler implements this and
/// passes one per run in [`RunOptions::host`](crate::RunOptions::host).
/// Without one, `call` fails and the state lives and dies with the run.
///
/// # Examples
///
/// ```
/// use std::sync::Mutex;
/// use stepbox::outcome::GuestErrorKind;
/// use stepbox::sandbox::{ChildCall, ChildResult, StepHost};
///
/// /// A host with a counter and no children.
/// struct Counter(Mutex<i64>);
///
/// #[async_trait::async_trait]
/// impl StepHost for Counter {
///     async fn call(&self, call: ChildCall) -> ChildResult {
///         ChildResult::error(GuestErrorKind::Failed, format!("no step `{}` here", call.step))
///     }
///     fn state_get(&self, _key: &str) -> Option<String> {
///         Some(self.0.lock().unwrap().to_string())
///     }
///     fn state_set(&self, _key: &str, _value: String) -> Result<(), String> {
///         Err("read-only".into())
///     }
///     fn state_add(&self, _key: &str, delta: i64) -> Result<i64, String> {
///         let mut n = self.0.lock().unwrap();
///         *n += delta;
///         Ok(*n)
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait StepHost: Send + Sync {
    /// Runs the child step `call.step` on `call.input`, within the caller's
    /// remaining fuel and deadline.
    async fn call(&self, call: ChildCall) -> ChildResult;

    /// The value of `key` (JSON text), if set.
    fn state_get(&self, key: &str) -> Option<String>;

    /// Sets `key` to `value` (JSON text); an error message goes back to the guest.
    fn state_set(&self, key: &str, value: String) -> Result<(), String>;

    /// Adds `delta` to the integer at `key` atomically, returning the new value.
    fn state_add(&self, key: &str, delta: i64) -> Result<i64, String>;
}

/// A step's request to run a child step.
#[derive(Debug, Clone)]
pub struct ChildCall {
    /// The id of the step to run.
    pub step: String,
    /// Its input.
    pub input: Vec<u8>,
    /// The caller's remaining fuel: the child may use at most this.
    pub fuel: u64,
    /// The caller's effective deadline: the child must end by then.
    pub deadline: Instant,
}

/// How a child call ended, as the calling step sees it.
#[derive(Debug, Clone)]
pub struct ChildResult {
    /// The child's output, or the error the caller gets.
    pub output: Result<Vec<u8>, (GuestErrorKind, String)>,
    /// Fuel the child consumed, taken from the caller's budget.
    pub fuel_consumed: u64,
}

impl ChildResult {
    /// A call that failed before any child ran.
    ///
    /// ```
    /// let r = stepbox::sandbox::ChildResult::error(stepbox::outcome::GuestErrorKind::Failed, "no such step".into());
    /// assert_eq!(r.fuel_consumed, 0);
    /// ```
    pub fn error(kind: GuestErrorKind, message: String) -> ChildResult {
        ChildResult {
            output: Err((kind, message)),
            fuel_consumed: 0,
        }
    }
}

/// Where an instance's host imports go.
pub(crate) enum Imports {
    /// Inside a workflow: the scheduler's host.
    Host(Arc<dyn StepHost>),
    /// A step run on its own: state private to the run, no children.
    Alone(HashMap<String, String>),
}

impl Imports {
    fn state_get(&self, key: &str) -> Option<String> {
        match self {
            Imports::Host(host) => host.state_get(key),
            Imports::Alone(map) => map.get(key).cloned(),
        }
    }

    fn state_set(&mut self, key: String, value: String) -> Result<(), String> {
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&value) {
            return Err(format!("state `{key}`: the value is not JSON: {e}"));
        }
        match self {
            Imports::Host(host) => host.state_set(&key, value),
            Imports::Alone(map) => {
                map.insert(key, value);
                Ok(())
            }
        }
    }

    fn state_add(&mut self, key: String, delta: i64) -> Result<i64, String> {
        match self {
            Imports::Host(host) => host.state_add(&key, delta),
            Imports::Alone(map) => {
                let sum = add_to_json_integer(map.get(&key).map(String::as_str), &key, delta)?;
                map.insert(key, sum.to_string());
                Ok(sum)
            }
        }
    }
}

/// `current + delta` where `current` is JSON text of an integer (absent is 0).
///
/// Shared by every [`StepHost`] that keeps state as JSON text, so they agree
/// on what `state-add` accepts.
///
/// ```
/// assert_eq!(stepbox::sandbox::add_to_json_integer(Some("40"), "n", 2), Ok(42));
/// assert_eq!(stepbox::sandbox::add_to_json_integer(None, "n", 2), Ok(2));
/// assert!(stepbox::sandbox::add_to_json_integer(Some("\"x\""), "n", 2).is_err());
/// ```
pub fn add_to_json_integer(current: Option<&str>, key: &str, delta: i64) -> Result<i64, String> {
    let current = match current {
        None => 0,
        Some(text) => text
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("state `{key}` is not an integer: {text}"))?,
    };
    current
        .checked_add(delta)
        .ok_or_else(|| format!("state `{key}`: {current} + {delta} overflows"))
}

/// Links the `host` interface into `linker`.
pub(super) fn add_to_linker(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
    let mut host = linker.instance("stepbox:step/host@0.1.0")?;
    host.func_wrap(
        "log",
        |mut store: StoreContextMut<'_, InstanceState>, (level, message): (WitLogLevel, String)| {
            let level = match level {
                WitLogLevel::Trace => LogLevel::Trace,
                WitLogLevel::Debug => LogLevel::Debug,
                WitLogLevel::Info => LogLevel::Info,
                WitLogLevel::Warn => LogLevel::Warn,
                WitLogLevel::Error => LogLevel::Error,
            };
            store.data_mut().log.log(level, &message);
            Ok(())
        },
    )?;
    host.func_wrap(
        "remaining-ms",
        |store: StoreContextMut<'_, InstanceState>, (): ()| {
            let left = store.data().deadline.saturating_duration_since(Instant::now());
            Ok((u64::try_from(left.as_millis()).unwrap_or(u64::MAX),))
        },
    )?;
    host.func_wrap(
        "idempotency-key",
        |store: StoreContextMut<'_, InstanceState>, (): ()| Ok((store.data().work.key.to_string(),)),
    )?;
    host.func_wrap("attempt", |store: StoreContextMut<'_, InstanceState>, (): ()| {
        Ok((store.data().work.attempt,))
    })?;
    host.func_wrap(
        "secret",
        |store: StoreContextMut<'_, InstanceState>, (name,): (String,)| {
            Ok((store.data().secrets.get(&name).map(str::to_owned),))
        },
    )?;
    host.func_wrap(
        "state-get",
        |store: StoreContextMut<'_, InstanceState>, (key,): (String,)| {
            Ok((store.data().imports.state_get(&key),))
        },
    )?;
    host.func_wrap(
        "state-set",
        |mut store: StoreContextMut<'_, InstanceState>, (mut key, mut value): (String, String)| {
            // State is journaled: no secret goes into it.
            let state = store.data_mut();
            state.secrets.scrub(&mut key);
            state.secrets.scrub(&mut value);
            Ok((state.imports.state_set(key, value),))
        },
    )?;
    host.func_wrap(
        "state-add",
        |mut store: StoreContextMut<'_, InstanceState>, (key, delta): (String, i64)| {
            Ok((store.data_mut().imports.state_add(key, delta),))
        },
    )?;
    host.func_wrap_async(
        "call",
        |mut store: StoreContextMut<'_, InstanceState>, (step, input): (String, Vec<u8>)| {
            Box::new(async move {
                let host = match &store.data().imports {
                    Imports::Host(host) => Arc::clone(host),
                    Imports::Alone(_) => {
                        let message = format!("cannot call `{step}`: this step is not running in a workflow");
                        return Ok((Err(WitStepError::Failed(message)),));
                    }
                };
                let fuel = store.get_fuel()?;
                let deadline = store.data().deadline;
                // A child's input is journaled with its attempt.
                let input = if let std::borrow::Cow::Owned(clean) = store.data().secrets.redact_bytes(&input)
                {
                    clean
                } else {
                    input
                };
                let result = host
                    .call(ChildCall {
                        step,
                        input,
                        fuel,
                        deadline,
                    })
                    .await;
                store.set_fuel(fuel.saturating_sub(result.fuel_consumed))?;
                Ok((result.output.map_err(|(kind, message)| match kind {
                    GuestErrorKind::InvalidInput => WitStepError::InvalidInput(message),
                    GuestErrorKind::Retryable => WitStepError::Retryable(message),
                    GuestErrorKind::Failed => WitStepError::Failed(message),
                }),))
            })
        },
    )?;
    Ok(())
}
