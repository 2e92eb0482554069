//! Workflow files: YAML (or JSON) → validated [`Workflow`] → [`Plan`].
//!
//! A workflow is a set of steps, each a component run in a sandbox, wired
//! together by `needs` and by templates that pass one step's output into
//! another's input. This module only reads, checks and orders workflows; it
//! runs nothing.
//!
//! # File format
//!
//! ```yaml
//! name: docs                 # required
//! description: Split, count and merge.
//! timeout: 5m                # whole-workflow timeout
//! defaults:                  # for every step that does not say otherwise
//!   fuel: 1000000
//!   memory: 64MiB
//!   timeout: 5s
//!   retry: {max_attempts: 3}
//! output: ${steps.merge}     # default: see "Workflow output" below
//! steps:
//!   - id: split              # required: letters, digits, `_` and `-`; unique
//!     component: ../target/split.wasm   # required; relative to this file's directory
//!     input: {text: "${input.text}"}    # quoted: inside `{...}` a `{` ends a plain scalar
//!   - id: count
//!     component: count.wasm
//!     needs: split           # one id, or a list
//!     for_each: ${steps.split.chunks}
//!     max_parallel: 4        # only with for_each
//!     input:
//!       text: ${item}        # block style needs no quotes
//!       n: ${index}
//!     retry:
//!       max_attempts: 3      # total attempts, first included; at least 1
//!       backoff: 100ms       # first delay (default 100ms)
//!       max_backoff: 10s     # (default 10s)
//!       multiplier: 2.0      # (default 2.0; at least 1)
//!       jitter: true         # (default true; the scheduler applies full jitter)
//!       retry_on: [retryable, timeout]   # outcome kinds (default [retryable])
//!   - id: merge
//!     component: merge.wasm
//!     needs: [count]
//!     continue_on_error: false
//!   - id: notify
//!     component: notify.wasm
//!     needs: [merge]
//!     allow_http: ["api.example.com:443"]   # HOST:PORT it may call; nothing else
//!     secrets: [API_TOKEN]   # values only this step can read (`secret` import)
//! ```
//!
//! JSON files have the same structure and are read by the same parser (JSON
//! is YAML 1.2), so their errors carry positions too. Unknown fields anywhere
//! are errors naming the field. `fuel`, `memory` and `timeout` may be set per
//! step and under `defaults`; the step's own value wins, key by key. A step's
//! `retry` replaces the default policy whole.
//!
//! A step sends HTTP requests (`wasi:http`) only to the `HOST:PORT`s in its
//! `allow_http`; a granted name that resolves to a loopback or private
//! address is refused unless that address is granted too. `secrets` names
//! values the host holds (its `[secrets]` configuration; for the local CLI
//! also its environment) that only this step may read; a workflow naming
//! one the host lacks is not accepted.
//!
//! # Templates
//!
//! A template (`input`, `for_each`, `output`) is any JSON value. Inside its
//! strings, `${EXPR}` is a reference:
//!
//! * a string that is exactly one `${EXPR}` (whitespace around it allowed) is
//!   replaced by the referenced value, whatever its type;
//! * otherwise each `${EXPR}` is replaced by the value as text: strings as they
//!   are, anything else as compact JSON (`"n=${input.n}"` → `"n=3"`);
//! * `$$` is a literal `$` (`"$${input}"` stays `"${input}"`); a `$` not
//!   followed by `{` or `$` is literal too;
//! * mapping keys are literal text.
//!
//! `EXPR` is a root followed by any number of `.KEY` (object key, made of
//! `A-Z a-z 0-9 _ -`), `.N` (array index, or a key made of digits when the
//! value is an object) or `[N]` (array index):
//!
//! | root | value |
//! | --- | --- |
//! | `input` | the workflow's input |
//! | `steps.ID` | step `ID`'s output; for a `for_each` step, the list of its item outputs in order |
//! | `item` | the current item, only in the `input` of a step with `for_each` |
//! | `index` | the current item's position (a number), same restriction |
//!
//! A step may only use `steps.ID` for a step among its needs, directly or
//! transitively (`b` needs `a`, `c` needs `b`: `c` may use `steps.a`); anything
//! else is rejected at load time, so a step never reads an output that may
//! not exist yet. The workflow `output` may use any step. A path missing at
//! evaluation time is an [`EvalError`] naming it, never `null`.
//!
//! In YAML, `${...}` needs no quotes in block style (`input: ${steps.a}`), but
//! inside a flow collection (`{...}` or `[...]`) the braces end a plain
//! scalar, so write `{text: "${input.text}"}`.
//!
//! # Defaults
//!
//! A step without `input` gets, in order: the current item if it has
//! `for_each`; the workflow input if it has no needs; its need's output if it
//! has exactly one; else an object `{need_id: output, ...}` (see
//! [`Workflow::input_source`]). A workflow without `output` returns its single
//! sink step's output (a step no one needs), or with several sinks an object
//! keyed by sink id (see [`Workflow::eval_output`]).
//!
//! # Examples
//!
//! ```
//! use std::path::Path;
//! use stepbox::workflow::Workflow;
//!
//! let yaml = "
//! name: demo
//! steps:
//!   - id: a
//!     component: a.wasm
//!   - id: b
//!     component: b.wasm
//!     needs: a
//!     input: {value: \"${steps.a.value}\"}
//! ";
//! let workflow = Workflow::from_str(yaml, Path::new("flows/demo.yaml"))?;
//! assert_eq!(&*workflow.step("b").unwrap().component, Path::new("flows/b.wasm"));
//! let plan = workflow.plan();
//! assert_eq!(plan.describe(&workflow), "level 0: a\nlevel 1: b\ncritical path: a -> b\n");
//! # Ok::<(), stepbox::workflow::WorkflowError>(())
//! ```

mod error;
mod json;
mod load;
mod node;
mod plan;
mod template;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

pub use error::{Location, WorkflowError, WorkflowErrorKind};
pub use load::is_secret_name;
pub use plan::Plan;
pub use template::{EvalError, Scope, Template};

use crate::limits::LimitOverrides;
use crate::sandbox::HttpPolicy;

/// A validated workflow definition.
///
/// Fields are public for reading. [`Workflow::step`], [`Workflow::plan`] and
/// the default input and output rules use indices computed at load time, so
/// changing `steps` afterwards is not supported.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// The workflow's name.
    pub name: String,
    /// What it does.
    pub description: Option<String>,
    /// How long the whole workflow may run.
    pub timeout: Option<Duration>,
    /// The template of the workflow's output; `None` for the default (see [`Workflow::eval_output`]).
    pub output: Option<Template>,
    /// The steps, in file order.
    pub steps: Vec<StepDef>,
    /// The file it was read from (as given), used for messages and relative paths.
    pub source: PathBuf,
    /// The text it was parsed from: what a journal records, so a run
    /// resumes with the definition it started with.
    text: Arc<String>,
    /// Step id → index. foldhash (seeded per process) rather than SipHash:
    /// loading a workflow looks up every id and every need here.
    index: HashMap<Arc<str>, usize, foldhash::fast::RandomState>,
    plan: Plan,
    sinks: Vec<usize>,
}

/// One step of a workflow.
#[derive(Debug, Clone)]
pub struct StepDef {
    /// Unique id: letters, digits, `_` and `-`. Shared, because every
    /// event and report of the step names it.
    pub id: Arc<str>,
    /// The component file, resolved against the workflow file's directory.
    /// Steps that name the same file share one path.
    pub component: Arc<Path>,
    /// The input template; `None` for the default (see [`Workflow::input_source`]).
    pub input: Option<Template>,
    /// Run once per item of a list instead of once.
    pub for_each: Option<ForEach>,
    /// The step's limits over the workflow defaults (the step's own values win).
    pub limits: LimitOverrides,
    /// The step's retry policy, else the workflow default, else
    /// [`RetryPolicy::default`]. Steps that inherit one share it.
    pub retry: Arc<RetryPolicy>,
    /// Whether the workflow goes on when this step fails (its dependents then do not run).
    pub continue_on_error: bool,
    /// Where the step may send HTTP requests (`allow_http`); `None` denies
    /// every request.
    pub http: Option<Arc<HttpPolicy>>,
    /// The secrets the step may read (`secrets`), by name; the host
    /// supplies their values.
    pub secrets: Arc<[Arc<str>]>,
    /// Where the step's `id` is written.
    pub location: Location,
    /// Where the step's `component` is written.
    pub component_location: Location,
}

/// Fan-out of a step over a list.
#[derive(Debug, Clone, PartialEq)]
pub struct ForEach {
    /// The template that gives the list of items.
    pub items: Template,
    /// How many items may run at once; `None` for no limit beyond the host's.
    pub max_parallel: Option<u32>,
}

impl ForEach {
    /// Evaluates the item list.
    ///
    /// # Errors
    ///
    /// When the template fails, or does not give a list.
    pub fn eval_items(&self, scope: &Scope<'_>) -> Result<Vec<Value>, EvalError> {
        match self.items.eval(scope)? {
            Value::Array(items) => Ok(items),
            other => Err(EvalError::new(format!(
                "`for_each` must give a list, it gave {}",
                match other {
                    Value::Null => "null",
                    Value::Bool(_) => "a boolean",
                    Value::Number(_) => "a number",
                    Value::String(_) => "a string",
                    Value::Object(_) => "an object",
                    Value::Array(_) => "a list",
                }
            ))),
        }
    }
}

/// When and how often to run a failed step again (shared with the scheduler).
pub use crate::policy::RetryPolicy;

/// Where a step's input comes from (see [`Workflow::input_source`]).
#[derive(Debug, Clone, PartialEq)]
pub enum InputSource<'a> {
    /// The step's own `input` template.
    Template(&'a Template),
    /// The current `for_each` item.
    Item,
    /// The workflow's input (the step has no needs).
    WorkflowInput,
    /// The output of the step's only need.
    Need(&'a str),
    /// An object `{need_id: output, ...}` of the step's needs, in the order written.
    Needs(Vec<&'a str>),
}

impl Workflow {
    /// Reads, parses and validates a workflow file (`.yaml`, `.yml` or `.json`).
    ///
    /// # Errors
    ///
    /// A [`WorkflowError`] at the offending position.
    pub fn from_file(path: &Path) -> Result<Workflow, WorkflowError> {
        let text = std::fs::read_to_string(path).map_err(|e| WorkflowError {
            file: path.to_owned(),
            line: 0,
            column: 0,
            kind: WorkflowErrorKind::Read(e),
        })?;
        load::load(text.into(), path)
    }

    /// The text this workflow was parsed from.
    ///
    /// ```
    /// let text = "name: w\nsteps:\n  - id: a\n    component: a.wasm\n";
    /// let wf = stepbox::workflow::Workflow::from_str(text, "w.yaml".as_ref()).unwrap();
    /// assert_eq!(wf.text(), text);
    /// ```
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Parses and validates workflow text. `source` is the file it came from:
    /// components are resolved against its directory and errors name it.
    ///
    /// # Errors
    ///
    /// A [`WorkflowError`] at the offending position.
    #[allow(clippy::should_implement_trait)] // FromStr cannot take `source`.
    pub fn from_str(text: &str, source: &Path) -> Result<Workflow, WorkflowError> {
        load::load(text.into(), source)
    }

    /// The step with this id, in constant time.
    pub fn step(&self, id: &str) -> Option<&StepDef> {
        self.index.get(id).map(|&i| &self.steps[i])
    }

    /// The index in [`Workflow::steps`] of the step with this id.
    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// The execution plan. Validation guarantees the graph is acyclic.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The ids of the steps that step `step` waits for (deduplicated, in the
    /// order written).
    ///
    /// # Panics
    ///
    /// If `step` is not an index into [`Workflow::steps`].
    pub fn needs(&self, step: usize) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.plan.needs(step).iter().map(|&j| &*self.steps[j].id)
    }

    /// Where step `step`'s input comes from: its `input` template if it has
    /// one; else the current item if it has `for_each`; else the workflow
    /// input if it has no needs; else its need's output if it has one need;
    /// else an object keyed by need id.
    ///
    /// # Panics
    ///
    /// If `step` is not an index into [`Workflow::steps`].
    pub fn input_source(&self, step: usize) -> InputSource<'_> {
        let def = &self.steps[step];
        let mut needs = self.needs(step);
        match (&def.input, &def.for_each, needs.len()) {
            (Some(template), _, _) => InputSource::Template(template),
            (None, Some(_), _) => InputSource::Item,
            (None, None, 0) => InputSource::WorkflowInput,
            (None, None, 1) => InputSource::Need(needs.next().unwrap_or_default()),
            (None, None, _) => InputSource::Needs(needs.collect()),
        }
    }

    /// Evaluates step `step`'s input (for a `for_each` step, one item's
    /// input: give the item in `scope`), following [`Workflow::input_source`].
    ///
    /// # Errors
    ///
    /// When the template fails, or `scope` lacks a value the rule needs.
    ///
    /// # Panics
    ///
    /// If `step` is not an index into [`Workflow::steps`].
    pub fn eval_input(&self, step: usize, scope: &Scope<'_>) -> Result<Value, EvalError> {
        let output = |id: &str| {
            (scope.steps)(id).cloned().ok_or_else(|| {
                EvalError::new(format!("`steps.{id}` has no output (the step has not finished)"))
            })
        };
        match self.input_source(step) {
            InputSource::Template(template) => template.eval(scope),
            InputSource::Item => scope
                .item
                .cloned()
                .ok_or_else(|| EvalError::new("`item` is not available: no `for_each` item is being run")),
            InputSource::WorkflowInput => Ok(scope.input.clone()),
            InputSource::Need(id) => output(id),
            InputSource::Needs(ids) => ids
                .into_iter()
                .map(|id| Ok((id.to_owned(), output(id)?)))
                .collect::<Result<serde_json::Map<_, _>, _>>()
                .map(Value::Object),
        }
    }

    /// Indices of the sink steps (steps no other step needs), in file order.
    pub fn sinks(&self) -> &[usize] {
        &self.sinks
    }

    /// Evaluates the workflow's output: its `output` template if it has one;
    /// else the single sink's output; else an object keyed by sink id.
    ///
    /// # Errors
    ///
    /// When the template fails or a needed output is missing from `scope`.
    pub fn eval_output(&self, scope: &Scope<'_>) -> Result<Value, EvalError> {
        if let Some(template) = &self.output {
            return template.eval(scope);
        }
        let output = |i: usize| {
            let id = &*self.steps[i].id;
            (scope.steps)(id).cloned().ok_or_else(|| {
                EvalError::new(format!("`steps.{id}` has no output (the step has not finished)"))
            })
        };
        match self.sinks.as_slice() {
            [sink] => output(*sink),
            sinks => sinks
                .iter()
                .map(|&i| Ok((self.steps[i].id.to_string(), output(i)?)))
                .collect::<Result<serde_json::Map<_, _>, _>>()
                .map(Value::Object),
        }
    }

    /// Checks every step's component: that its file exists, then `check`
    /// (typically: load it into a sandbox). Returns what `check` returned, one
    /// per step in file order; a component used by several steps is checked
    /// once per step, so `check` should cache.
    ///
    /// # Errors
    ///
    /// The first failure, as [`WorkflowErrorKind::Component`] at the step's
    /// `component` position.
    pub fn check_components<T>(
        &self,
        mut check: impl FnMut(&StepDef) -> Result<T, String>,
    ) -> Result<Vec<T>, WorkflowError> {
        let fail = |step: &StepDef, message: String| WorkflowError {
            file: self.source.clone(),
            line: step.component_location.line,
            column: step.component_location.column,
            kind: WorkflowErrorKind::Component(message),
        };
        let mut checked = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            match std::fs::metadata(&step.component) {
                Err(_) => {
                    let message = format!("component `{}` does not exist", step.component.display());
                    return Err(fail(step, message));
                }
                Ok(meta) if !meta.is_file() => {
                    let message = format!("component `{}` is not a file", step.component.display());
                    return Err(fail(step, message));
                }
                Ok(_) => {}
            }
            checked.push(check(step).map_err(|message| fail(step, message))?);
        }
        Ok(checked)
    }
}
