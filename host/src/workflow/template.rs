//! Templates: JSON values with `${EXPR}` references, compiled once at load time.
//!
//! See the [module documentation](super) for the syntax.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use serde_json::Value;

use super::node::{self, Node};
use super::{Location, WorkflowErrorKind};

/// A compiled template: a JSON value whose strings may hold `${EXPR}` references.
///
/// Built when a workflow is loaded (or with [`Template::from_json`]); evaluating
/// it walks the compiled form, so no text is parsed at run time. Parts that hold
/// no reference are kept as ready JSON values.
///
/// # Examples
///
/// ```
/// use std::collections::HashMap;
/// use serde_json::json;
/// use stepbox::workflow::{Scope, Template};
///
/// let template = Template::from_json(&json!({"n": "${steps.count.words}", "msg": "hi ${input.name}"}), false)?;
/// assert_eq!(template.references().collect::<Vec<_>>(), ["count"]);
///
/// let outputs = HashMap::from([("count".to_owned(), json!({"words": 3}))]);
/// let steps = |id: &str| outputs.get(id);
/// let input = json!({"name": "Ada"});
/// let value = template.eval(&Scope::new(&input, &steps))?;
/// assert_eq!(value, json!({"n": 3, "msg": "hi Ada"}));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    root: Part,
    uses_item: bool,
}

/// What a template is evaluated against.
///
/// `steps` maps a step id to that step's output (for a `for_each` step, the
/// list of its item outputs); a closure keeps the caller free to store
/// outputs however it likes, such as in a vector indexed by step.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    /// The workflow's input.
    pub input: &'a Value,
    /// The output of a finished step, by id.
    pub steps: &'a dyn Fn(&str) -> Option<&'a Value>,
    /// The current item, while evaluating the input of one `for_each` item.
    pub item: Option<&'a Value>,
    /// The current item's position, while evaluating the input of one `for_each` item.
    pub index: Option<usize>,
}

impl<'a> Scope<'a> {
    /// A scope with the workflow input and step outputs, and no current item.
    pub fn new(input: &'a Value, steps: &'a dyn Fn(&str) -> Option<&'a Value>) -> Scope<'a> {
        Scope {
            input,
            steps,
            item: None,
            index: None,
        }
    }

    /// This scope with a current `for_each` item and its index.
    #[must_use]
    pub fn with_item(self, item: &'a Value, index: usize) -> Scope<'a> {
        Scope {
            item: Some(item),
            index: Some(index),
            ..self
        }
    }
}

impl fmt::Debug for Scope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope")
            .field("input", self.input)
            .field("item", &self.item)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// A template could not be evaluated: a referenced path does not exist, or a
/// value the scope should provide is missing. Displays as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(String);

impl EvalError {
    /// Creates an error with this message (one line).
    pub fn new(message: impl Into<String>) -> EvalError {
        EvalError(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    /// A value with no reference inside.
    Literal(Value),
    /// A string that is exactly one reference: replaced by the value itself.
    Ref(Expr),
    /// A string mixing text and references: always a string.
    Text(Vec<Piece>),
    Array(Vec<Part>),
    Object(Vec<(String, Part)>),
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Ref(Expr),
}

/// A compiled `EXPR`: a root and a path into it. Names (the step id, keys)
/// are ranges of `text`, so an expression is two allocations however long.
#[derive(Debug, Clone, PartialEq)]
struct Expr {
    /// The expression as written (trimmed), for messages.
    text: Box<str>,
    root: Root,
    /// The length of the root (`input`, `steps.ID`, …) in `text`.
    root_len: usize,
    /// Each segment with the length of `text` up to and including it.
    path: Vec<(Seg, usize)>,
}

/// `steps.` before a step id in an expression.
const STEPS_DOT: &str = "steps.";

#[derive(Debug, Clone, PartialEq)]
enum Root {
    Input,
    /// `steps.ID`: the id is `text[STEPS_DOT.len()..root_len]`.
    Step,
    Item,
    Index,
}

/// A segment of a path. A key is the text between the previous segment's
/// end (or the root's) plus its `.`, and this segment's end.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    /// `.name`: an object key.
    Key,
    /// `.3`: an array index, or an object key made of digits.
    KeyOrIndex(usize),
    /// `[3]`: an array index.
    Index(usize),
}

impl Expr {
    /// The step id of a `steps.ID` expression.
    fn step(&self) -> Option<&str> {
        (self.root == Root::Step).then(|| &self.text[STEPS_DOT.len()..self.root_len])
    }
}

/// Where a template is compiled, for validation while compiling.
pub(crate) struct Context<'c, 'de> {
    /// The field the template is in, for messages.
    pub(crate) field: &'c str,
    /// Whether `item` and `index` may be used.
    pub(crate) allow_item: bool,
    /// Every `steps.ID` reference met, with the position of its string.
    /// Ids borrow from the document when its string does.
    pub(crate) refs: &'c mut Vec<(Cow<'de, str>, Location)>,
}

type CompileError = (Location, WorkflowErrorKind);

impl Template {
    /// Compiles a JSON value into a template. `allow_item` says whether `item`
    /// and `index` may be used (only in the input of a `for_each` step).
    ///
    /// # Errors
    ///
    /// The message of the first malformed expression, or of `item`/`index`
    /// used where they are not allowed.
    pub fn from_json(value: &Value, allow_item: bool) -> Result<Template, EvalError> {
        let node = json_to_node(value);
        let mut refs = Vec::new();
        let mut cx = Context {
            field: "template",
            allow_item,
            refs: &mut refs,
        };
        Template::compile(&node, &mut cx).map_err(|(_, kind)| EvalError(kind.to_string()))
    }

    /// Compiles a YAML node, recording references in `cx`.
    pub(crate) fn compile<'de>(
        node: &Node<'de>,
        cx: &mut Context<'_, 'de>,
    ) -> Result<Template, CompileError> {
        let mut uses_item = false;
        let root = compile_node(node, cx, &mut uses_item)?;
        Ok(Template { root, uses_item })
    }

    /// The ids of the steps this template references, each once, in order of first use.
    pub fn references(&self) -> impl Iterator<Item = &str> {
        let mut ids = Vec::new();
        self.root.references(&mut ids);
        ids.into_iter()
    }

    /// Whether the template uses `item` or `index`.
    pub fn uses_item(&self) -> bool {
        self.uses_item
    }

    /// Whether the template holds no reference at all (it always evaluates to the same value).
    pub fn is_constant(&self) -> bool {
        matches!(self.root, Part::Literal(_))
    }

    /// Evaluates the template in `scope`.
    ///
    /// # Errors
    ///
    /// An [`EvalError`] naming the path when a referenced path does not exist
    /// (a missing path is an error, never `null`), or when the scope lacks a
    /// step output or the current item.
    pub fn eval(&self, scope: &Scope<'_>) -> Result<Value, EvalError> {
        self.root.eval(scope)
    }
}

fn compile_node<'de>(
    node: &Node<'de>,
    cx: &mut Context<'_, 'de>,
    uses_item: &mut bool,
) -> Result<Part, CompileError> {
    Ok(match &node.value {
        node::Value::Str(text) => {
            let document = match text {
                Cow::Borrowed(text) => Some(*text),
                Cow::Owned(_) => None,
            };
            compile_str(text, document, node.loc, cx, uses_item)?
        }
        node::Value::Seq(items) => {
            let parts = items
                .iter()
                .map(|item| compile_node(item, cx, uses_item))
                .collect::<Result<Vec<_>, _>>()?;
            if parts.iter().all(|p| matches!(p, Part::Literal(_))) {
                Part::Literal(Value::Array(parts.into_iter().map(into_literal).collect()))
            } else {
                Part::Array(parts)
            }
        }
        node::Value::Map(entries) => {
            let mut parts = Vec::with_capacity(entries.len());
            for (key, value) in entries {
                parts.push((key.name.to_string(), compile_node(value, cx, uses_item)?));
            }
            if parts.iter().all(|(_, p)| matches!(p, Part::Literal(_))) {
                Part::Literal(Value::Object(
                    parts.into_iter().map(|(k, p)| (k, into_literal(p))).collect(),
                ))
            } else {
                Part::Object(parts)
            }
        }
        node::Value::Null => Part::Literal(Value::Null),
        node::Value::Bool(b) => Part::Literal(Value::Bool(*b)),
        node::Value::Int(i) => Part::Literal(Value::from(*i)),
        node::Value::UInt(u) => Part::Literal(Value::from(*u)),
        node::Value::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => Part::Literal(Value::Number(n)),
            None => {
                return Err((
                    node.loc,
                    WorkflowErrorKind::BadValue {
                        field: cx.field.to_owned(),
                        message: format!("{f} cannot be represented in JSON"),
                    },
                ));
            }
        },
    })
}

fn into_literal(part: Part) -> Value {
    match part {
        Part::Literal(value) => value,
        _ => unreachable!("checked by the caller"),
    }
}

/// Compiles one string; `document` is the same text when it borrows from
/// the workflow file, so step ids can borrow from it too.
fn compile_str<'de>(
    text: &str,
    document: Option<&'de str>,
    loc: Location,
    cx: &mut Context<'_, 'de>,
    uses_item: &mut bool,
) -> Result<Part, CompileError> {
    if !text.contains('$') {
        return Ok(Part::Literal(Value::String(text.to_owned())));
    }
    let bad = |message: String| (loc, WorkflowErrorKind::BadExpression(message));
    // Records what the expression at `raw` (the text between `${` and `}`,
    // starting at byte `at` of `text`) references, and checks `item`.
    let mut record = |raw: &str, at: usize| -> Result<Expr, CompileError> {
        let expr = parse_expr(raw.trim()).map_err(bad)?;
        match &expr.root {
            Root::Step => {
                // The id, borrowed from the document when the string is.
                let start = at + (raw.len() - raw.trim_start().len()) + STEPS_DOT.len();
                let id = start..start + expr.step().map_or(0, str::len);
                let id = match document {
                    Some(text) => Cow::Borrowed(&text[id]),
                    None => Cow::Owned(text[id].to_owned()),
                };
                cx.refs.push((id, loc));
            }
            Root::Item | Root::Index => {
                if !cx.allow_item {
                    return Err((loc, WorkflowErrorKind::ItemOutsideForEach(expr.text.to_string())));
                }
                *uses_item = true;
            }
            Root::Input => {}
        }
        Ok(expr)
    };
    // The common case, a string that is one reference, without the general
    // scan's list of pieces.
    let trimmed = text.trim_start();
    let lead = text.len() - trimmed.len();
    if let Some(raw) = trimmed
        .trim_end()
        .strip_prefix("${")
        .and_then(|t| t.strip_suffix('}'))
        && !raw.contains(['$', '}'])
    {
        return record(raw, lead + 2).map(Part::Ref);
    }
    let bytes = text.as_bytes();
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut run = 0; // start of the literal run not yet copied
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            Some(b'$') => {
                literal.push_str(&text[run..=i]);
                i += 2;
                run = i;
            }
            Some(b'{') => {
                let Some(len) = text[i + 2..].find('}') else {
                    return Err(bad(format!("unterminated `${{` in `{text}`")));
                };
                let end = i + 2 + len;
                literal.push_str(&text[run..i]);
                if !literal.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut literal)));
                }
                let expr = record(&text[i + 2..end], i + 2)?;
                pieces.push(Piece::Ref(expr));
                i = end + 1;
                run = i;
            }
            _ => i += 1,
        }
    }
    literal.push_str(&text[run..]);
    if !literal.is_empty() {
        pieces.push(Piece::Text(literal));
    }
    let refs = pieces.iter().filter(|p| matches!(p, Piece::Ref(_))).count();
    let blank = |p: &Piece| matches!(p, Piece::Text(t) if t.trim().is_empty());
    Ok(match refs {
        0 => match pieces.pop() {
            Some(Piece::Text(t)) => Part::Literal(Value::String(t)),
            _ => Part::Literal(Value::String(String::new())),
        },
        1 if pieces.iter().all(|p| matches!(p, Piece::Ref(_)) || blank(p)) => {
            let Some(Piece::Ref(expr)) = pieces.into_iter().find(|p| matches!(p, Piece::Ref(_))) else {
                unreachable!("one reference was counted")
            };
            Part::Ref(expr)
        }
        _ => Part::Text(pieces),
    })
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Parses `root(.key|.N|[N])*`.
fn parse_expr(text: &str) -> Result<Expr, String> {
    let bytes = text.as_bytes();
    let name_end = |from: usize| from + bytes[from..].iter().take_while(|&&b| is_name_byte(b)).count();
    if text.is_empty() {
        return Err("empty `${}`".to_owned());
    }
    let mut i = name_end(0);
    let root = match &text[..i] {
        "input" => Root::Input,
        "item" => Root::Item,
        "index" => Root::Index,
        "steps" => {
            if bytes.get(i) != Some(&b'.') {
                return Err(format!("`${{{text}}}`: expected `steps.ID`"));
            }
            let end = name_end(i + 1);
            if end == i + 1 {
                return Err(format!("`${{{text}}}`: expected a step id after `steps.`"));
            }
            i = end;
            Root::Step
        }
        other => {
            return Err(format!(
                "`${{{text}}}`: unknown name `{other}` (expected `input`, `steps.ID`, `item` or `index`)"
            ));
        }
    };
    let root_len = i;
    let mut path = Vec::new();
    while i < bytes.len() {
        match bytes[i] {
            b'.' => {
                let end = name_end(i + 1);
                if end == i + 1 {
                    return Err(format!("`${{{text}}}`: expected a key or index after `.`"));
                }
                let key = &text[i + 1..end];
                let seg = match key.parse::<usize>() {
                    Ok(n) if key.bytes().all(|b| b.is_ascii_digit()) => Seg::KeyOrIndex(n),
                    _ => Seg::Key,
                };
                path.push((seg, end));
                i = end;
            }
            b'[' => {
                let digits = bytes[i + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
                let close = i + 1 + digits;
                if digits == 0 || bytes.get(close) != Some(&b']') {
                    return Err(format!(
                        "`${{{text}}}`: expected `[N]` with N a non-negative integer"
                    ));
                }
                let n = text[i + 1..close]
                    .parse::<usize>()
                    .map_err(|_| format!("`${{{text}}}`: index too large"))?;
                path.push((Seg::Index(n), close + 1));
                i = close + 1;
            }
            _ => {
                let c = text[i..].chars().next().unwrap_or(' ');
                return Err(format!("`${{{text}}}`: unexpected `{c}`"));
            }
        }
    }
    if root == Root::Index && !path.is_empty() {
        return Err(format!("`${{{text}}}`: `index` is a number and has no keys"));
    }
    Ok(Expr {
        text: text.into(),
        root,
        root_len,
        path,
    })
}

impl Part {
    /// Adds the step ids this part references to `ids`, each once, in order.
    fn references<'t>(&'t self, ids: &mut Vec<&'t str>) {
        let mut add = |expr: &'t Expr| {
            if let Some(id) = expr.step()
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        };
        match self {
            Part::Literal(_) => {}
            Part::Ref(expr) => add(expr),
            Part::Text(pieces) => pieces.iter().for_each(|p| {
                if let Piece::Ref(expr) = p {
                    add(expr);
                }
            }),
            Part::Array(items) => items.iter().for_each(|item| item.references(ids)),
            Part::Object(entries) => entries.iter().for_each(|(_, part)| part.references(ids)),
        }
    }

    fn eval(&self, scope: &Scope<'_>) -> Result<Value, EvalError> {
        match self {
            Part::Literal(value) => Ok(value.clone()),
            Part::Ref(expr) => expr.resolve(scope).map(Cow::into_owned),
            Part::Text(pieces) => {
                let mut out = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(text) => out.push_str(text),
                        Piece::Ref(expr) => match &*expr.resolve(scope)? {
                            Value::String(s) => out.push_str(s),
                            other => {
                                // Writing to a String cannot fail.
                                let _ = write!(out, "{other}");
                            }
                        },
                    }
                }
                Ok(Value::String(out))
            }
            Part::Array(items) => items
                .iter()
                .map(|item| item.eval(scope))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Part::Object(entries) => {
                let mut map = serde_json::Map::new();
                for (key, part) in entries {
                    map.insert(key.clone(), part.eval(scope)?);
                }
                Ok(Value::Object(map))
            }
        }
    }
}

impl Expr {
    fn resolve<'s>(&self, scope: &Scope<'s>) -> Result<Cow<'s, Value>, EvalError> {
        let mut current: &'s Value = match &self.root {
            Root::Input => scope.input,
            Root::Step => {
                let id = &self.text[STEPS_DOT.len()..self.root_len];
                (scope.steps)(id).ok_or_else(|| {
                    EvalError(format!("`steps.{id}` has no output (the step has not finished)"))
                })?
            }
            Root::Item => scope.item.ok_or_else(|| {
                EvalError("`item` is not available: no `for_each` item is being run".into())
            })?,
            Root::Index => {
                return scope.index.map(|i| Cow::Owned(Value::from(i))).ok_or_else(|| {
                    EvalError("`index` is not available: no `for_each` item is being run".into())
                });
            }
        };
        let mut prefix_len = self.root_len;
        for (seg, end) in &self.path {
            // `.` then the key, up to the segment's end.
            let key = || &self.text[prefix_len + 1..*end];
            let next = match (seg, current) {
                (Seg::Key | Seg::KeyOrIndex(_), Value::Object(map)) => map.get(key()),
                (Seg::Index(n) | Seg::KeyOrIndex(n), Value::Array(items)) => items.get(*n),
                _ => None,
            };
            current = next.ok_or_else(|| {
                let parent = &self.text[..prefix_len];
                let what = match current {
                    Value::Object(_) => "an object without that key".to_owned(),
                    Value::Array(items) => format!("a list of {} items", items.len()),
                    other => describe(other).to_owned(),
                };
                EvalError(format!(
                    "`{}` does not exist: `{parent}` is {what}",
                    &self.text[..*end]
                ))
            })?;
            prefix_len = *end;
        }
        Ok(Cow::Borrowed(current))
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Converts JSON into the positioned tree the compiler reads (positions unknown).
fn json_to_node(value: &Value) -> Node<'_> {
    let loc = Location::default();
    let value = match value {
        Value::Null => node::Value::Null,
        Value::Bool(b) => node::Value::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => node::Value::UInt(u),
            (None, Some(i)) => node::Value::Int(i),
            _ => node::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => node::Value::Str(s.as_str().into()),
        Value::Array(items) => node::Value::Seq(items.iter().map(json_to_node).collect()),
        Value::Object(map) => node::Value::Map(
            map.iter()
                .map(|(k, v)| {
                    (
                        node::Key {
                            name: k.as_str().into(),
                            loc,
                        },
                        json_to_node(v),
                    )
                })
                .collect(),
        ),
    };
    Node { loc, value }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    fn eval_with(
        template: &Value,
        input: &Value,
        outputs: &HashMap<String, Value>,
    ) -> Result<Value, EvalError> {
        let steps = |id: &str| outputs.get(id);
        Template::from_json(template, true)?.eval(&Scope::new(input, &steps))
    }

    fn outputs() -> HashMap<String, Value> {
        HashMap::from([
            (
                "split".to_owned(),
                json!({"chunks": ["a", "b"], "count": 2, "0": "zero"}),
            ),
            ("nums".to_owned(), json!([10, 20, 30])),
        ])
    }

    #[test]
    fn whole_value_reference_keeps_the_json_type() {
        let out = outputs();
        let input = json!({"n": 5});
        assert_eq!(
            eval_with(&json!("${steps.split.chunks}"), &input, &out).unwrap(),
            json!(["a", "b"])
        );
        assert_eq!(
            eval_with(&json!("  ${ input.n }\n"), &input, &out).unwrap(),
            json!(5)
        );
        assert_eq!(
            eval_with(&json!("${steps.split}"), &input, &out).unwrap(),
            out["split"]
        );
        // Only a string that is one reference and nothing else keeps the type.
        assert_eq!(
            eval_with(&json!("${input.n}}"), &input, &out).unwrap(),
            json!("5}")
        );
        assert_eq!(
            eval_with(&json!("${input.n}$$"), &input, &out).unwrap(),
            json!("5$")
        );
        assert!(Template::from_json(&json!("${input.n$}"), false).is_err());
    }

    #[test]
    fn a_reference_records_exactly_the_id_of_its_step() {
        let template = Template::from_json(
            &json!(["  ${ steps.split.chunks }", "${steps.a}-${steps.b}"]),
            false,
        )
        .unwrap();
        assert_eq!(template.references().collect::<Vec<_>>(), ["split", "a", "b"]);
        let mut refs = Vec::new();
        let node = Node {
            loc: Location::default(),
            value: node::Value::Str(" ${ steps.split.n }".into()),
        };
        let mut cx = Context {
            field: "input",
            allow_item: false,
            refs: &mut refs,
        };
        Template::compile(&node, &mut cx).unwrap();
        assert_eq!(refs, [(Cow::Borrowed("split"), Location::default())]);
    }

    #[test]
    fn interpolation_renders_strings_bare_and_other_values_as_compact_json() {
        let out = outputs();
        let input = json!({"name": "Ada", "tags": [1, 2]});
        let value = eval_with(
            &json!("hi ${input.name}: ${input.tags} (${steps.split.count})"),
            &input,
            &out,
        )
        .unwrap();
        assert_eq!(value, json!("hi Ada: [1,2] (2)"));
    }

    #[test]
    fn double_dollar_is_a_literal_dollar() {
        let out = outputs();
        let input = json!({"p": 3});
        assert_eq!(
            eval_with(&json!("costs $$5"), &input, &out).unwrap(),
            json!("costs $5")
        );
        assert_eq!(
            eval_with(&json!("$${input.p}"), &input, &out).unwrap(),
            json!("${input.p}")
        );
        assert_eq!(
            eval_with(&json!("$$${input.p}"), &input, &out).unwrap(),
            json!("$3")
        );
        assert_eq!(eval_with(&json!("a $ b"), &input, &out).unwrap(), json!("a $ b"));
    }

    #[test]
    fn paths_walk_keys_dotted_indices_and_bracket_indices() {
        let out = outputs();
        let input = json!({"a": {"b-c": [{"d_e": 1}]}});
        assert_eq!(
            eval_with(&json!("${input.a.b-c[0].d_e}"), &input, &out).unwrap(),
            json!(1)
        );
        assert_eq!(
            eval_with(&json!("${input.a.b-c.0.d_e}"), &input, &out).unwrap(),
            json!(1)
        );
        assert_eq!(
            eval_with(&json!("${steps.nums[2]}"), &input, &out).unwrap(),
            json!(30)
        );
        // `.0` on an object is the key "0".
        assert_eq!(
            eval_with(&json!("${steps.split.0}"), &input, &out).unwrap(),
            json!("zero")
        );
    }

    #[test]
    fn nested_templates_evaluate_every_part() {
        let out = outputs();
        let input = json!({"x": true});
        let template = json!({"list": ["${input.x}", 1, {"k": "${steps.nums.1}"}], "lit": {"a": null}});
        assert_eq!(
            eval_with(&template, &input, &out).unwrap(),
            json!({"list": [true, 1, {"k": 20}], "lit": {"a": null}})
        );
    }

    #[test]
    fn missing_path_is_an_error_naming_the_path_not_null() {
        let out = outputs();
        let input = json!({"a": {"b": 1}});
        let err = eval_with(&json!("${input.a.c}"), &input, &out).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`input.a.c` does not exist: `input.a` is an object without that key"
        );
        let err = eval_with(&json!("x ${steps.nums[3]}"), &input, &out).unwrap_err();
        assert!(
            err.to_string().contains("`steps.nums[3]` does not exist"),
            "{err}"
        );
        assert!(err.to_string().contains("a list of 3 items"), "{err}");
        let err = eval_with(&json!("${input.a.b.c}"), &input, &out).unwrap_err();
        assert!(err.to_string().contains("`input.a.b` is a number"), "{err}");
        let err = eval_with(&json!("${steps.other}"), &input, &out).unwrap_err();
        assert!(err.to_string().contains("`steps.other` has no output"), "{err}");
    }

    #[test]
    fn item_and_index_come_from_the_scope() {
        let template = Template::from_json(
            &json!({"text": "${item.t}", "i": "${index}", "s": "#${index}"}),
            true,
        )
        .unwrap();
        assert!(template.uses_item());
        let input = json!(null);
        let steps = |_: &str| None;
        let item = json!({"t": "chunk"});
        let scope = Scope::new(&input, &steps).with_item(&item, 4);
        assert_eq!(
            template.eval(&scope).unwrap(),
            json!({"text": "chunk", "i": 4, "s": "#4"})
        );
        let err = template.eval(&Scope::new(&input, &steps)).unwrap_err();
        assert!(err.to_string().contains("is not available"), "{err}");
    }

    #[test]
    fn item_is_rejected_when_not_allowed() {
        let err = Template::from_json(&json!("${item}"), false).unwrap_err();
        assert!(err.to_string().contains("`item` is only available"), "{err}");
    }

    #[test]
    fn malformed_expressions_are_rejected_at_compile_time() {
        for bad in [
            "${}",
            "${steps}",
            "${steps.}",
            "${foo}",
            "${input.}",
            "${input[x]}",
            "${input",
            "${index.a}",
            "${input..a}",
        ] {
            let err = Template::from_json(&json!(bad), true).unwrap_err();
            assert!(err.to_string().starts_with("bad expression"), "{bad}: {err}");
        }
    }

    #[test]
    fn references_list_each_step_once_in_order() {
        let template =
            Template::from_json(&json!(["${steps.b}", "${steps.a.x} ${steps.b.y}"]), false).unwrap();
        assert_eq!(template.references().collect::<Vec<_>>(), ["b", "a"]);
        assert!(!template.is_constant());
        assert!(
            Template::from_json(&json!({"a": [1, "$$x"]}), false)
                .unwrap()
                .is_constant()
        );
    }
}
