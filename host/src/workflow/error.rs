//! Positioned errors for workflow files.

use std::fmt;
use std::path::PathBuf;

/// A position in a workflow file: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    /// Line, starting at 1 (0 when the error has no position, such as a read error).
    pub line: usize,
    /// Column, starting at 1.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A workflow file could not be loaded, or one of its components failed its check.
///
/// Displays as one line, `FILE:LINE:COL: message`, which editors and terminals
/// turn into a link. Errors with no position (a file that cannot be read)
/// display as `FILE: message`.
#[derive(Debug, thiserror::Error)]
pub struct WorkflowError {
    /// The workflow file, as it was given.
    pub file: PathBuf,
    /// Line of the offending text, starting at 1 (0 when there is none).
    pub line: usize,
    /// Column of the offending text, starting at 1 (0 when there is none).
    pub column: usize,
    /// What is wrong. (Not a `source`: the message above already says it,
    /// and error reporters would print it twice.)
    pub kind: WorkflowErrorKind,
}

impl WorkflowError {
    /// The error's position as a [`Location`].
    pub fn location(&self) -> Location {
        Location {
            line: self.line,
            column: self.column,
        }
    }
}

impl fmt::Display for WorkflowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.kind)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.kind
            )
        }
    }
}

/// What is wrong with a workflow file. Every message is one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowErrorKind {
    /// The file could not be read.
    #[error("cannot read the workflow file: {0}")]
    Read(#[source] std::io::Error),
    /// The file is not valid YAML (or JSON).
    #[error("invalid YAML: {0}")]
    Syntax(String),
    /// A value has the wrong type.
    #[error("`{field}` must be {expected}, found {found}")]
    WrongType {
        /// The field (or `workflow` for the document itself).
        field: String,
        /// What it must be.
        expected: &'static str,
        /// What it was.
        found: &'static str,
    },
    /// A mapping has a field this format does not know.
    #[error("unknown field `{field}` in {context} (expected one of: {expected})")]
    UnknownField {
        /// The unknown field.
        field: String,
        /// Where it was: `the workflow`, `step `x``, `defaults`, …
        context: String,
        /// The fields allowed there, comma-separated.
        expected: String,
    },
    /// A mapping names the same field twice.
    #[error("field `{field}` is given twice in {context}")]
    DuplicateField {
        /// The repeated field.
        field: String,
        /// Where it was.
        context: String,
    },
    /// A required field is missing.
    #[error("missing field `{field}` in {context}")]
    MissingField {
        /// The missing field.
        field: &'static str,
        /// Where it is missing.
        context: String,
    },
    /// A step id has characters other than `A-Z a-z 0-9 _ -`, or is empty.
    #[error("invalid step id `{0}`: use only letters, digits, `_` and `-`")]
    BadId(String),
    /// Two steps have the same id.
    #[error("duplicate step id `{id}` (first defined at {first})")]
    DuplicateId {
        /// The repeated id.
        id: String,
        /// Where the first step with this id is.
        first: Location,
    },
    /// A step needs a step that does not exist.
    #[error("step `{step}` needs `{need}`, which is not a step of this workflow")]
    UnknownNeed {
        /// The step.
        step: String,
        /// The unknown need.
        need: String,
    },
    /// Steps need each other in a cycle. The path starts and ends at the same
    /// step; each step needs the next one.
    #[error("dependency cycle: {} (each step needs the next)", .path.join(" -> "))]
    Cycle {
        /// The steps of the cycle, first step repeated at the end.
        path: Vec<String>,
    },
    /// An expression refers to a step that does not exist.
    #[error("`steps.{id}` refers to no step of this workflow")]
    UnknownStepInExpression {
        /// The unknown step id.
        id: String,
    },
    /// A step's template uses a step that is not among its (transitive) needs.
    #[error("step `{step}` uses `steps.{used}` but does not need it (add it to `needs`)")]
    NotNeeded {
        /// The step whose template it is.
        step: String,
        /// The step it uses.
        used: String,
    },
    /// A template or expression is malformed.
    #[error("bad expression: {0}")]
    BadExpression(String),
    /// `item` or `index` is used outside the input template of a `for_each` step.
    #[error("`{0}` is only available in the `input` of a step with `for_each`")]
    ItemOutsideForEach(String),
    /// A size could not be parsed.
    #[error("bad size for `{field}`: {message}")]
    BadSize {
        /// The field.
        field: String,
        /// Why.
        message: String,
    },
    /// A duration could not be parsed.
    #[error("bad duration for `{field}`: {message}")]
    BadDuration {
        /// The field.
        field: String,
        /// Why.
        message: String,
    },
    /// A retry policy is invalid.
    #[error("bad retry policy: {0}")]
    BadRetry(String),
    /// A value is of the right type but out of range.
    #[error("bad value for `{field}`: {message}")]
    BadValue {
        /// The field.
        field: String,
        /// Why.
        message: String,
    },
    /// `max_parallel` is set on a step without `for_each`.
    #[error("step `{0}` sets `max_parallel` but has no `for_each`")]
    MaxParallelWithoutForEach(String),
    /// The workflow has no steps.
    #[error("the workflow has no steps")]
    EmptyWorkflow,
    /// A step's component failed its check (see `Workflow::check_components`).
    #[error("{0}")]
    Component(String),
}
