//! Positioned errors for workflow files.

use std::borrow::Cow;
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

/// What is wrong with a workflow file. Every message is one line: the
/// file's text it quotes (a field name, an id, an expression) is written
/// with its control characters escaped, a newline as `\n`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowErrorKind {
    /// The file could not be read.
    #[error("cannot read the workflow file: {0}")]
    Read(#[source] std::io::Error),
    /// The file is not valid YAML (or JSON).
    #[error("invalid YAML: {}", one_line(.0))]
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
    #[error("unknown field `{}` in {} (expected one of: {expected})", one_line(.field), one_line(.context))]
    UnknownField {
        /// The unknown field.
        field: String,
        /// Where it was: `the workflow`, `step `x``, `defaults`, …
        context: String,
        /// The fields allowed there, comma-separated.
        expected: String,
    },
    /// A mapping names the same field twice.
    #[error("field `{}` is given twice in {}", one_line(.field), one_line(.context))]
    DuplicateField {
        /// The repeated field.
        field: String,
        /// Where it was.
        context: String,
    },
    /// A required field is missing.
    #[error("missing field `{field}` in {}", one_line(.context))]
    MissingField {
        /// The missing field.
        field: &'static str,
        /// Where it is missing.
        context: String,
    },
    /// A step id has characters other than `A-Z a-z 0-9 _ -`, or is empty.
    #[error("invalid step id `{}`: use only letters, digits, `_` and `-`", one_line(.0))]
    BadId(String),
    /// Two steps have the same id.
    #[error("duplicate step id `{}` (first defined at {first})", one_line(.id))]
    DuplicateId {
        /// The repeated id.
        id: String,
        /// Where the first step with this id is.
        first: Location,
    },
    /// A step needs a step that does not exist.
    #[error("step `{}` needs `{}`, which is not a step of this workflow", one_line(.step), one_line(.need))]
    UnknownNeed {
        /// The step.
        step: String,
        /// The unknown need.
        need: String,
    },
    /// Steps need each other in a cycle. The path starts and ends at the same
    /// step; each step needs the next one.
    #[error("dependency cycle: {} (each step needs the next)", one_line(&.path.join(" -> ")))]
    Cycle {
        /// The steps of the cycle, first step repeated at the end.
        path: Vec<String>,
    },
    /// An expression refers to a step that does not exist.
    #[error("`steps.{}` refers to no step of this workflow", one_line(.id))]
    UnknownStepInExpression {
        /// The unknown step id.
        id: String,
    },
    /// A step's template uses a step that is not among its (transitive) needs.
    #[error("step `{}` uses `steps.{}` but does not need it (add it to `needs`)", one_line(.step), one_line(.used))]
    NotNeeded {
        /// The step whose template it is.
        step: String,
        /// The step it uses.
        used: String,
    },
    /// A template or expression is malformed.
    #[error("bad expression: {}", one_line(.0))]
    BadExpression(String),
    /// `item` or `index` is used outside the input template of a `for_each` step.
    #[error("`{}` is only available in the `input` of a step with `for_each`", one_line(.0))]
    ItemOutsideForEach(String),
    /// A size could not be parsed.
    #[error("bad size for `{}`: {}", one_line(.field), one_line(.message))]
    BadSize {
        /// The field.
        field: String,
        /// Why.
        message: String,
    },
    /// A duration could not be parsed.
    #[error("bad duration for `{}`: {}", one_line(.field), one_line(.message))]
    BadDuration {
        /// The field.
        field: String,
        /// Why.
        message: String,
    },
    /// A retry policy is invalid.
    #[error("bad retry policy: {}", one_line(.0))]
    BadRetry(String),
    /// A value is of the right type but out of range.
    #[error("bad value for `{}`: {}", one_line(.field), one_line(.message))]
    BadValue {
        /// The field.
        field: String,
        /// Why.
        message: String,
    },
    /// `max_parallel` is set on a step without `for_each`.
    #[error("step `{}` sets `max_parallel` but has no `for_each`", one_line(.0))]
    MaxParallelWithoutForEach(String),
    /// The workflow has no steps.
    #[error("the workflow has no steps")]
    EmptyWorkflow,
    /// A step's component failed its check (see `Workflow::check_components`).
    #[error("{}", one_line(.0))]
    Component(String),
}

/// `text` with its control characters escaped (a newline as `\n`), so that
/// a message quoting a file's text stays one line, and a terminal shows it
/// as written rather than obeying it.
fn one_line(text: &str) -> Cow<'_, str> {
    if !text.contains(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::workflow::Workflow;

    #[test]
    fn messages_quoting_the_file_stay_one_line_whatever_it_holds() {
        let step = |extra: &str| format!("name: w\nsteps:\n  - id: a\n    component: a.wasm\n{extra}");
        let files = [
            step("    \"com\\npo\\rnent\": x\n"),
            "name: w\nsteps:\n  - id: \"a\\nb\"\n    component: a.wasm\n".to_owned(),
            step("    needs: \"b\\n\\u001b[31mc\"\n"),
            step("    input: \"${in\\nput}\"\n"),
            step("    input: \"${input\\n\"\n"),
            step("    memory: \"lots\\nof\"\n"),
            step("    timeout: \"a\\nwhile\"\n"),
            step("    retry: {retry_on: [\"time\\nout\"]}\n"),
            step("    retry: {\"max\\tattempts\": 2}\n"),
        ];
        for text in files {
            let err = Workflow::from_str(&text, Path::new("w.yaml")).expect_err(&text);
            let line = err.to_string();
            assert!(!line.contains(char::is_control), "{line:?}");
            assert!(
                line.contains("\\n") || line.contains("\\t"),
                "{line:?} does not show the escape"
            );
            assert!(!err.kind.to_string().contains(char::is_control));
        }
        assert_eq!(one_line("plain `text`"), "plain `text`");
        assert_eq!(one_line("a\r\nb\u{1b}"), "a\\r\\nb\\u{1b}");
    }
}
