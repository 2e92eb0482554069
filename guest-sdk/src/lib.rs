//! Write [stepbox] workflow steps as plain Rust functions.
//!
//! A step is a function from a deserializable input to a serializable output.
//! [`step!`] exports it as a WebAssembly component for the `stepbox:step`
//! world: the SDK parses the JSON input (a parse failure becomes
//! [`StepError::InvalidInput`] carrying serde's message), calls the function,
//! and serializes what it returns. The host imports are wrapped as plain
//! functions: [`log`] (and its shorthands [`info`], [`warn`], ...),
//! [`remaining`], [`call`] (run a child step), [`state`] (the workflow
//! run's shared state), [`secret`] (a value granted to this step) and
//! [`http`] (outbound requests, where granted).
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use stepbox_guest::StepError;
//!
//! #[derive(Deserialize)]
//! struct Greeting {
//!     name: String,
//! }
//!
//! #[derive(Serialize)]
//! struct Reply {
//!     message: String,
//! }
//!
//! fn greet(input: Greeting) -> Result<Reply, StepError> {
//!     if input.name.is_empty() {
//!         return Err(StepError::invalid_input("`name` must not be empty"));
//!     }
//!     Ok(Reply { message: format!("Hello, {}!", input.name) })
//! }
//!
//! stepbox_guest::step!(greet);
//! # fn main() {}
//! ```
//!
//! Build the crate as a `cdylib` for `wasm32-wasip2` and the result is a
//! component `stepbox step` runs:
//!
//! ```text
//! cargo build --release --target wasm32-wasip2
//! stepbox step target/wasm32-wasip2/release/greet.wasm --input '{"name":"world"}'
//! ```
//!
//! Inside a step, `std` works as on any WASI 0.2 target, within the sandbox:
//! `/tmp` is a private, empty directory that disappears when the run ends;
//! stdout and stderr go to the step's log; there are no environment variables
//! and no network but the HTTP destinations the step is granted ([`http`]).
//!
//! [stepbox]: https://github.com/stepbox/stepbox

pub mod http;

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

// Lets the generated bindings name this crate by its public path, which is
// what they must use once expanded inside a user's crate.
extern crate self as stepbox_guest;

/// What [`step!`] expands to needs; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    /// Bindings for the `stepbox:step` world.
    pub mod bindings {
        wit_bindgen::generate!({
            path: "../wit",
            world: "step",
            pub_export_macro: true,
            export_macro_name: "__export_step",
            default_bindings_module: "stepbox_guest::__private::bindings",
            runtime_path: "stepbox_guest::__private::wit_bindgen::rt",
        });
    }

    pub use super::run_json;
}

use __private::bindings;
use bindings::stepbox::step::host;

/// Why a step did not produce output.
///
/// The kind tells the host what to do next: an invalid input is never
/// retried, a retryable error may be, a failure is final.
///
/// ```
/// use stepbox_guest::StepError;
///
/// let err = StepError::retryable("the upstream service is busy");
/// assert!(err.is_retryable());
/// assert_eq!(err.to_string(), "retryable: the upstream service is busy");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    /// The input was malformed or not acceptable; running again will not help.
    InvalidInput(String),
    /// A transient failure; running again may succeed.
    Retryable(String),
    /// The step failed for good.
    Failed(String),
}

impl StepError {
    /// An error for input the step cannot accept.
    ///
    /// ```
    /// let err = stepbox_guest::StepError::invalid_input("`top` must be positive");
    /// assert_eq!(err.message(), "`top` must be positive");
    /// ```
    pub fn invalid_input(message: impl Into<String>) -> StepError {
        StepError::InvalidInput(message.into())
    }

    /// An error that running again may cure.
    ///
    /// ```
    /// let err = stepbox_guest::StepError::retryable("try later");
    /// assert!(err.is_retryable());
    /// ```
    pub fn retryable(message: impl Into<String>) -> StepError {
        StepError::Retryable(message.into())
    }

    /// A final failure.
    ///
    /// ```
    /// let err = stepbox_guest::StepError::failed("checksum mismatch");
    /// assert!(!err.is_retryable());
    /// ```
    pub fn failed(message: impl Into<String>) -> StepError {
        StepError::Failed(message.into())
    }

    /// The human-readable message, without the kind.
    ///
    /// ```
    /// let err = stepbox_guest::StepError::failed("disk full");
    /// assert_eq!(err.message(), "disk full");
    /// ```
    pub fn message(&self) -> &str {
        match self {
            StepError::InvalidInput(m) | StepError::Retryable(m) | StepError::Failed(m) => m,
        }
    }

    /// The kind as the host and the CLI name it: `invalid-input`,
    /// `retryable` or `failed`.
    ///
    /// ```
    /// let err = stepbox_guest::StepError::invalid_input("no");
    /// assert_eq!(err.kind(), "invalid-input");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            StepError::InvalidInput(_) => "invalid-input",
            StepError::Retryable(_) => "retryable",
            StepError::Failed(_) => "failed",
        }
    }

    /// Whether the host may run the step again to cure this error.
    ///
    /// ```
    /// assert!(stepbox_guest::StepError::retryable("busy").is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        matches!(self, StepError::Retryable(_))
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl std::error::Error for StepError {}

impl From<StepError> for bindings::StepError {
    fn from(err: StepError) -> Self {
        match err {
            StepError::InvalidInput(m) => bindings::StepError::InvalidInput(m),
            StepError::Retryable(m) => bindings::StepError::Retryable(m),
            StepError::Failed(m) => bindings::StepError::Failed(m),
        }
    }
}

/// Severity of a log record, from the most verbose to the most severe.
///
/// ```
/// assert!(stepbox_guest::Level::Warn > stepbox_guest::Level::Info);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Fine-grained tracing.
    Trace,
    /// Diagnostics for the step's author.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected that the step recovered from.
    Warn,
    /// A failure.
    Error,
}

impl From<Level> for host::LogLevel {
    fn from(level: Level) -> Self {
        match level {
            Level::Trace => host::LogLevel::Trace,
            Level::Debug => host::LogLevel::Debug,
            Level::Info => host::LogLevel::Info,
            Level::Warn => host::LogLevel::Warn,
            Level::Error => host::LogLevel::Error,
        }
    }
}

/// Appends a record to this step's log.
///
/// The host caps each step's log; records past the cap are dropped and
/// counted, so logging never fails a step.
///
/// ```no_run
/// stepbox_guest::log(stepbox_guest::Level::Debug, "parsed 42 records");
/// ```
pub fn log(level: Level, message: impl AsRef<str>) {
    host::log(level.into(), message.as_ref());
}

/// Logs at [`Level::Trace`].
///
/// ```no_run
/// stepbox_guest::trace("entering the inner loop");
/// ```
pub fn trace(message: impl AsRef<str>) {
    log(Level::Trace, message);
}

/// Logs at [`Level::Debug`].
///
/// ```no_run
/// stepbox_guest::debug(format!("{} items", 3));
/// ```
pub fn debug(message: impl AsRef<str>) {
    log(Level::Debug, message);
}

/// Logs at [`Level::Info`].
///
/// ```no_run
/// stepbox_guest::info("done");
/// ```
pub fn info(message: impl AsRef<str>) {
    log(Level::Info, message);
}

/// Logs at [`Level::Warn`].
///
/// ```no_run
/// stepbox_guest::warn("input had trailing garbage; ignored it");
/// ```
pub fn warn(message: impl AsRef<str>) {
    log(Level::Warn, message);
}

/// Logs at [`Level::Error`].
///
/// ```no_run
/// stepbox_guest::error("could not parse record 7");
/// ```
pub fn error(message: impl AsRef<str>) {
    log(Level::Error, message);
}

/// Time left before this step's effective deadline (the earliest of its own
/// timeout and any deadline imposed from above).
///
/// A step that can stop early, returning partial work, should check this
/// rather than the wall clock.
///
/// ```no_run
/// use std::time::Duration;
///
/// let mut done = 0;
/// while done < 1_000 && stepbox_guest::remaining() > Duration::from_millis(50) {
///     done += 1; // one unit of work
/// }
/// ```
pub fn remaining() -> Duration {
    Duration::from_millis(host::remaining_ms())
}

/// A key naming this unit of work (this step of this run, or this item of a
/// `for_each`), the same across retries, crashes and resumes.
///
/// The host runs a step at least once: a step that was running when its host
/// crashed runs again. Pass this key to whatever the step changes outside the
/// sandbox (as an idempotency key, a request id, a row's unique key) so that
/// running twice has the effect of running once.
///
/// ```no_run
/// let key = stepbox_guest::idempotency_key();
/// stepbox_guest::info(format!("charging once under {key}"));
/// ```
pub fn idempotency_key() -> String {
    host::idempotency_key()
}

/// Which attempt at this unit of work this is: 1 the first time, then
/// counting retries and runs cut short by a crash or a shutdown.
///
/// ```no_run
/// if stepbox_guest::attempt() > 1 {
///     stepbox_guest::warn("running again: checking what the last attempt did");
/// }
/// ```
pub fn attempt() -> u32 {
    host::attempt()
}

/// The value of secret `name`, if this step was granted it (`secrets:` in
/// its workflow step, or `stepbox step --secret NAME`); `None` otherwise.
///
/// The host redacts every granted secret from what the step leaves behind
/// (output, errors, log, state, child calls): echoing one yields
/// `[redacted]`, never the value.
///
/// ```no_run
/// let token = stepbox_guest::secret("API_TOKEN")
///     .ok_or_else(|| stepbox_guest::StepError::failed("no API_TOKEN granted"))?;
/// # Ok::<(), stepbox_guest::StepError>(())
/// ```
pub fn secret(name: &str) -> Option<String> {
    host::secret(name)
}

/// Runs another step of the same workflow, by its id, as a child of this
/// step, and returns its output.
///
/// The child gets the earlier of its own timeout and this step's remaining
/// time, and draws its fuel from this step's remaining budget. A child that
/// returns a guest error passes it through with its kind; any other ending
/// (out of fuel, timeout, trap...) comes back as [`StepError::Failed`]
/// naming it. Outside a workflow, every call fails.
///
/// ```no_run
/// use serde_json::{Value, json};
///
/// let counts: Value = stepbox_guest::call("wordcount", &json!({"text": "a b a"}))?;
/// # Ok::<(), stepbox_guest::StepError>(())
/// ```
pub fn call<I, O>(step: &str, input: &I) -> Result<O, StepError>
where
    I: Serialize + ?Sized,
    O: DeserializeOwned,
{
    let input = serde_json::to_vec(input)
        .map_err(|e| StepError::failed(format!("cannot serialize the input for `{step}`: {e}")))?;
    let output = host::call(step, &input).map_err(StepError::from)?;
    serde_json::from_slice(&output)
        .map_err(|e| StepError::failed(format!("unexpected output from `{step}`: {e}")))
}

impl From<bindings::StepError> for StepError {
    fn from(err: bindings::StepError) -> Self {
        match err {
            bindings::StepError::InvalidInput(m) => StepError::InvalidInput(m),
            bindings::StepError::Retryable(m) => StepError::Retryable(m),
            bindings::StepError::Failed(m) => StepError::Failed(m),
        }
    }
}

/// The workflow run's shared state: a map from keys to JSON values that all
/// steps of one run see, and no other run does.
///
/// Updates are atomic per call; use [`state::add`] for counters that
/// parallel steps update.
pub mod state {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use super::{StepError, host};

    /// The value at `key`, or `None` if it was never set.
    ///
    /// A value that does not deserialize as `T` is an error.
    ///
    /// ```no_run
    /// let seen: Option<Vec<String>> = stepbox_guest::state::get("seen")?;
    /// # Ok::<(), stepbox_guest::StepError>(())
    /// ```
    pub fn get<T: DeserializeOwned>(key: &str) -> Result<Option<T>, StepError> {
        host::state_get(key)
            .map(|text| {
                serde_json::from_str(&text)
                    .map_err(|e| StepError::failed(format!("state `{key}` has an unexpected value: {e}")))
            })
            .transpose()
    }

    /// Sets `key` to `value`, replacing what was there.
    ///
    /// Fails when the run's state would exceed its quota.
    ///
    /// ```no_run
    /// stepbox_guest::state::set("phase", &"indexing")?;
    /// # Ok::<(), stepbox_guest::StepError>(())
    /// ```
    pub fn set<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<(), StepError> {
        let text = serde_json::to_string(value)
            .map_err(|e| StepError::failed(format!("cannot serialize state `{key}`: {e}")))?;
        host::state_set(key, &text).map_err(StepError::failed)
    }

    /// Adds `delta` to the integer at `key` (absent counts as 0) atomically,
    /// and returns the new value.
    ///
    /// ```no_run
    /// let total = stepbox_guest::state::add("processed", 1)?;
    /// # Ok::<(), stepbox_guest::StepError>(())
    /// ```
    pub fn add(key: &str, delta: i64) -> Result<i64, StepError> {
        host::state_add(key, delta).map_err(StepError::failed)
    }
}

/// Runs `step` on a JSON `input` and serializes its output: what [`step!`]
/// calls for every run. Public so that steps can be unit-tested natively
/// without a host.
///
/// Input that does not parse as `I` becomes [`StepError::InvalidInput`] with
/// serde's message; output that does not serialize becomes
/// [`StepError::Failed`].
///
/// ```
/// use stepbox_guest::{StepError, run_json};
///
/// fn double(n: u64) -> Result<u64, StepError> {
///     Ok(n * 2)
/// }
///
/// assert_eq!(run_json(b"21", double), Ok(b"42".to_vec()));
/// let err = run_json(b"\"x\"", double).unwrap_err();
/// assert!(err.message().contains("invalid type"), "{err}");
/// ```
pub fn run_json<I, O>(
    input: &[u8],
    step: impl FnOnce(I) -> Result<O, StepError>,
) -> Result<Vec<u8>, StepError>
where
    I: DeserializeOwned,
    O: Serialize,
{
    let input: I =
        serde_json::from_slice(input).map_err(|e| StepError::invalid_input(format!("invalid input: {e}")))?;
    let output = step(input)?;
    serde_json::to_vec(&output).map_err(|e| StepError::failed(format!("could not serialize the output: {e}")))
}

/// Exports a function as this component's step.
///
/// The function takes any `serde::Deserialize` type and returns
/// `Result<T, StepError>` for any `serde::Serialize` type `T`. Use it once
/// per crate, at the top level.
///
/// ```
/// use std::collections::BTreeMap;
/// use stepbox_guest::StepError;
///
/// fn histogram(words: Vec<String>) -> Result<BTreeMap<String, usize>, StepError> {
///     let mut counts = BTreeMap::new();
///     for w in words {
///         *counts.entry(w).or_default() += 1;
///     }
///     Ok(counts)
/// }
///
/// stepbox_guest::step!(histogram);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! step {
    ($step:path) => {
        const _: () = {
            struct StepboxStep;

            impl $crate::__private::bindings::Guest for StepboxStep {
                fn run(
                    input: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, $crate::__private::bindings::StepError>
                {
                    $crate::__private::run_json(&input, $step).map_err(::std::convert::Into::into)
                }
            }

            $crate::__private::bindings::__export_step!(StepboxStep);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct In {
        name: String,
    }

    fn greet(input: In) -> Result<String, StepError> {
        Ok(format!("Hello, {}!", input.name))
    }

    #[test]
    fn bad_json_is_invalid_input_with_serdes_message() {
        let err = run_json(br#"{"nom": 1}"#, greet).unwrap_err();
        assert_eq!(err.kind(), "invalid-input");
        assert!(err.message().contains("missing field `name`"), "{err}");
    }

    #[test]
    fn the_steps_own_error_passes_through_unchanged() {
        let err = run_json(b"null", |_: ()| -> Result<(), StepError> {
            Err(StepError::retryable("busy"))
        });
        assert_eq!(err, Err(StepError::retryable("busy")));
    }

    #[test]
    fn output_is_serialized_as_json() {
        assert_eq!(run_json(br#"{"name":"x"}"#, greet).unwrap(), br#""Hello, x!""#);
    }

    #[test]
    fn errors_convert_to_the_wit_variant_with_the_same_kind() {
        let wit: bindings::StepError = StepError::failed("f").into();
        assert!(matches!(wit, bindings::StepError::Failed(m) if m == "f"));
    }
}
