//! From positioned YAML nodes to a validated [`Workflow`].

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bytesize::ByteSize;

use super::node::{self, Key, Node, Value};
use super::plan::{self, Ordered};
use super::template::{Context, Template};
use super::{ForEach, Location, RetryPolicy, StepDef, Workflow, WorkflowError, WorkflowErrorKind};
use crate::OutcomeKind;
use crate::limits::{LimitOverrides, parse_duration, parse_size};

type Res<T> = Result<T, (Location, WorkflowErrorKind)>;

const WORKFLOW_FIELDS: &[&str; 6] = &["name", "description", "timeout", "defaults", "output", "steps"];
const DEFAULTS_FIELDS: &[&str; 4] = &["fuel", "memory", "timeout", "retry"];
const STEP_FIELDS: &[&str; 11] = &[
    "id",
    "component",
    "needs",
    "input",
    "for_each",
    "max_parallel",
    "fuel",
    "memory",
    "timeout",
    "retry",
    "continue_on_error",
];
const RETRY_FIELDS: &[&str; 6] = &["max_attempts", "backoff", "max_backoff", "multiplier", "jitter", "retry_on"];

pub(crate) fn load(text: &str, source: &Path) -> Result<Workflow, WorkflowError> {
    let at = |(loc, kind): (Location, WorkflowErrorKind)| WorkflowError {
        file: source.to_owned(),
        line: loc.line,
        column: loc.column,
        kind,
    };
    let root = node::parse(text).map_err(|(loc, message)| at((loc, WorkflowErrorKind::Syntax(message))))?;
    build(&root, source).map_err(at)
}

/// A step as read, before the graph is checked.
struct RawStep {
    def: StepDef,
    /// Each need with where it is written.
    needs: Vec<(String, Location)>,
    /// Every `steps.ID` used in the step's templates, with where.
    refs: Vec<(Box<str>, Location)>,
}

fn build(root: &Node, source: &Path) -> Res<Workflow> {
    let dir = source.parent().unwrap_or_else(|| Path::new(""));
    let [name, description, timeout, defaults, output, steps] =
        fields(root, "workflow", "the workflow", WORKFLOW_FIELDS)?;
    let name = string(required(name, root, "name", "the workflow")?, "name")?.to_owned();
    let description = description.map(|n| string(n, "description").map(str::to_owned)).transpose()?;
    let timeout = timeout.map(|n| duration(n, "timeout")).transpose()?;

    let mut default_limits = LimitOverrides::default();
    let mut default_retry = RetryPolicy::default();
    if let Some(defaults) = defaults {
        let [fuel, memory, timeout, retry] = fields(defaults, "defaults", "`defaults`", DEFAULTS_FIELDS)?;
        default_limits = limits(fuel, memory, timeout, "defaults.")?;
        if let Some(retry) = retry {
            default_retry = retry_policy(retry)?;
        }
    }

    let mut output_refs = Vec::new();
    let output = output
        .map(|n| {
            Template::compile(
                n,
                &mut Context {
                    field: "output",
                    allow_item: false,
                    refs: &mut output_refs,
                },
            )
        })
        .transpose()?;

    let steps_node = required(steps, root, "steps", "the workflow")?;
    let Value::Seq(step_nodes) = &steps_node.value else {
        return Err(wrong_type(steps_node, "steps", "a list of steps"));
    };
    if step_nodes.is_empty() {
        return Err((steps_node.loc, WorkflowErrorKind::EmptyWorkflow));
    }
    let mut raw = Vec::with_capacity(step_nodes.len());
    for (n, step) in step_nodes.iter().enumerate() {
        raw.push(read_step(step, n, dir, &default_limits, &default_retry)?);
    }

    // Ids are unique.
    let mut index: HashMap<String, usize> = HashMap::with_capacity(raw.len());
    for (i, step) in raw.iter().enumerate() {
        if let Some(&first) = index.get(&step.def.id) {
            return Err((
                step.def.location,
                WorkflowErrorKind::DuplicateId {
                    id: step.def.id.clone(),
                    first: raw[first].def.location,
                },
            ));
        }
        index.insert(step.def.id.clone(), i);
    }

    // Needs name steps.
    let mut needs_idx: Vec<Vec<usize>> = Vec::with_capacity(raw.len());
    let mut need_locs: Vec<Vec<Location>> = Vec::with_capacity(raw.len());
    for step in &mut raw {
        let mut list = Vec::with_capacity(step.needs.len());
        let mut locs = Vec::with_capacity(step.needs.len());
        let mut names = Vec::with_capacity(step.needs.len());
        for (need, loc) in &step.needs {
            let Some(&j) = index.get(need) else {
                return Err((
                    *loc,
                    WorkflowErrorKind::UnknownNeed {
                        step: step.def.id.clone(),
                        need: need.clone(),
                    },
                ));
            };
            if !list.contains(&j) {
                list.push(j);
                locs.push(*loc);
                names.push(need.clone());
            }
        }
        step.def.needs = names;
        needs_idx.push(list);
        need_locs.push(locs);
    }

    // Templates name steps.
    for step in &raw {
        for (id, loc) in &step.refs {
            if !index.contains_key(&**id) {
                return Err((*loc, WorkflowErrorKind::UnknownStepInExpression { id: id.to_string() }));
            }
        }
    }
    for (id, loc) in &output_refs {
        if !index.contains_key(&**id) {
            return Err((*loc, WorkflowErrorKind::UnknownStepInExpression { id: id.to_string() }));
        }
    }

    // The graph is acyclic.
    let weights: Vec<u64> = raw
        .iter()
        .map(|s| {
            s.def
                .limits
                .timeout
                .map_or(1, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1))
        })
        .collect();
    let plan = match plan::order(needs_idx, &weights) {
        Ordered::Plan(plan) => plan,
        Ordered::Cycle(cycle) => {
            let first = cycle[0];
            let second = cycle.get(1).copied().unwrap_or(first);
            let k = raw[first].def.needs.iter().position(|n| index[n] == second).unwrap_or(0);
            let loc = need_locs[first].get(k).copied().unwrap_or(raw[first].def.location);
            let mut path: Vec<String> = cycle.iter().map(|&i| raw[i].def.id.clone()).collect();
            path.push(raw[first].def.id.clone());
            return Err((loc, WorkflowErrorKind::Cycle { path }));
        }
    };

    // Templates only use steps that are needed, directly or transitively.
    let mut level = vec![0usize; raw.len()];
    for (n, steps) in plan.levels.iter().enumerate() {
        for &s in steps {
            level[s] = n;
        }
    }
    let mut reach = Reach::new(raw.len());
    for (i, step) in raw.iter().enumerate() {
        for (id, loc) in &step.refs {
            let j = index[&**id];
            if !reach.needs(i, j, &plan.needs, &level) {
                return Err((
                    *loc,
                    WorkflowErrorKind::NotNeeded {
                        step: step.def.id.clone(),
                        used: id.to_string(),
                    },
                ));
            }
        }
    }

    let sinks = (0..raw.len()).filter(|&i| plan.dependents[i].is_empty()).collect();
    Ok(Workflow {
        name,
        description,
        timeout,
        output,
        steps: raw.into_iter().map(|s| s.def).collect(),
        source: source.to_owned(),
        index,
        plan,
        sinks,
    })
}

/// Answers "does step `i` need step `j`, maybe through others?" without
/// building the transitive closure: direct needs first, then a walk up the
/// needs that skips steps too shallow to lead to `j`.
struct Reach {
    stamp: Vec<u32>,
    epoch: u32,
    stack: Vec<usize>,
}

impl Reach {
    fn new(n: usize) -> Reach {
        Reach {
            stamp: vec![0; n],
            epoch: 0,
            stack: Vec::new(),
        }
    }

    fn needs(&mut self, i: usize, j: usize, needs: &[Vec<usize>], level: &[usize]) -> bool {
        if needs[i].contains(&j) {
            return true;
        }
        if level[i] <= level[j] {
            return false;
        }
        self.epoch += 1;
        self.stack.clear();
        self.stack.push(i);
        while let Some(s) = self.stack.pop() {
            for &need in &needs[s] {
                if need == j {
                    return true;
                }
                if level[need] > level[j] && self.stamp[need] != self.epoch {
                    self.stamp[need] = self.epoch;
                    self.stack.push(need);
                }
            }
        }
        false
    }
}

fn read_step(
    node: &Node,
    n: usize,
    dir: &Path,
    default_limits: &LimitOverrides,
    default_retry: &RetryPolicy,
) -> Res<RawStep> {
    let numbered = format!("step #{}", n + 1);
    let [
        id,
        component,
        needs,
        input,
        for_each,
        max_parallel,
        fuel,
        memory,
        timeout,
        retry,
        continue_on_error,
    ] = fields(node, "steps[]", &numbered, STEP_FIELDS)?;
    let id_node = required(id, node, "id", &numbered)?;
    let id = string(id_node, "id")?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err((id_node.loc, WorkflowErrorKind::BadId(id.to_owned())));
    }
    let context = format!("step `{id}`");
    let component_node = required(component, node, "component", &context)?;
    let component = string(component_node, "component")?;
    if component.is_empty() {
        return Err((
            component_node.loc,
            WorkflowErrorKind::BadValue {
                field: "component".into(),
                message: "must not be empty".into(),
            },
        ));
    }

    let needs = match needs {
        None => Vec::new(),
        Some(list) => strings(list, "needs")?,
    };

    let mut refs = Vec::new();
    let for_each_template = for_each
        .map(|n| {
            let template = Template::compile(
                n,
                &mut Context {
                    field: "for_each",
                    allow_item: false,
                    refs: &mut refs,
                },
            )?;
            if let (true, Value::Str(_) | Value::Map(_) | Value::Bool(_) | Value::Int(_) | Value::UInt(_)) =
                (template.is_constant(), &n.value)
            {
                return Err((
                    n.loc,
                    WorkflowErrorKind::BadExpression(
                        "`for_each` must be a list or an expression such as `${steps.ID.items}`".into(),
                    ),
                ));
            }
            Ok(template)
        })
        .transpose()?;
    let max_parallel = match (max_parallel, &for_each_template) {
        (None, _) => None,
        (Some(n), None) => return Err((n.loc, WorkflowErrorKind::MaxParallelWithoutForEach(id.to_owned()))),
        (Some(n), Some(_)) => {
            let value = uint(n, "max_parallel")?;
            match u32::try_from(value) {
                Ok(v) if v >= 1 => Some(v),
                _ => {
                    return Err((
                        n.loc,
                        WorkflowErrorKind::BadValue {
                            field: "max_parallel".into(),
                            message: format!("{value} is not between 1 and {}", u32::MAX),
                        },
                    ));
                }
            }
        }
    };
    let input = input
        .map(|n| {
            Template::compile(
                n,
                &mut Context {
                    field: "input",
                    allow_item: for_each_template.is_some(),
                    refs: &mut refs,
                },
            )
        })
        .transpose()?;

    let own = limits(fuel, memory, timeout, "")?;
    let limits = LimitOverrides {
        fuel: own.fuel.or(default_limits.fuel),
        memory: own.memory.or(default_limits.memory),
        timeout: own.timeout.or(default_limits.timeout),
        output: own.output.or(default_limits.output),
        log: own.log.or(default_limits.log),
    };
    let retry = match retry {
        Some(n) => retry_policy(n)?,
        None => default_retry.clone(),
    };
    let continue_on_error = continue_on_error
        .map(|n| boolean(n, "continue_on_error"))
        .transpose()?
        .unwrap_or(false);

    Ok(RawStep {
        def: StepDef {
            id: id.to_owned(),
            component: dir.join(component),
            needs: Vec::new(),
            input,
            for_each: for_each_template.map(|items| ForEach { items, max_parallel }),
            limits,
            retry,
            continue_on_error,
            location: id_node.loc,
            component_location: component_node.loc,
        },
        needs,
        refs,
    })
}

fn limits(fuel: Option<&Node>, memory: Option<&Node>, timeout: Option<&Node>, prefix: &str) -> Res<LimitOverrides> {
    Ok(LimitOverrides {
        fuel: fuel.map(|n| uint(n, &format!("{prefix}fuel"))).transpose()?,
        memory: memory.map(|n| size(n, &format!("{prefix}memory"))).transpose()?,
        timeout: timeout.map(|n| duration(n, &format!("{prefix}timeout"))).transpose()?,
        ..LimitOverrides::default()
    })
}

fn retry_policy(node: &Node) -> Res<RetryPolicy> {
    let [max_attempts, backoff, max_backoff, multiplier, jitter, retry_on] =
        fields(node, "retry", "`retry`", RETRY_FIELDS)?;
    let mut policy = RetryPolicy::default();
    let bad = |n: &Node, message: String| (n.loc, WorkflowErrorKind::BadRetry(message));
    if let Some(n) = max_attempts {
        let value = uint(n, "max_attempts")?;
        policy.max_attempts = match u32::try_from(value) {
            Ok(0) => {
                return Err(bad(
                    n,
                    "`max_attempts` must be at least 1 (it counts the first attempt)".into(),
                ));
            }
            Ok(v) => v,
            Err(_) => return Err(bad(n, format!("`max_attempts` {value} is too large"))),
        };
    }
    if let Some(n) = backoff {
        policy.backoff = duration(n, "backoff")?;
    }
    if let Some(n) = max_backoff {
        policy.max_backoff = duration(n, "max_backoff")?;
    }
    if policy.backoff > policy.max_backoff {
        let n = backoff.or(max_backoff).unwrap_or(node);
        return Err(bad(n, "`backoff` is longer than `max_backoff`".into()));
    }
    if let Some(n) = multiplier {
        let value = match n.value {
            Value::Float(f) => f,
            Value::Int(i) => i as f64,
            Value::UInt(u) => u as f64,
            _ => return Err(wrong_type(n, "multiplier", "a number")),
        };
        if !value.is_finite() || value < 1.0 {
            return Err(bad(n, format!("`multiplier` must be a number of at least 1, found {value}")));
        }
        policy.multiplier = value;
    }
    if let Some(n) = jitter {
        policy.jitter = boolean(n, "jitter")?;
    }
    if let Some(n) = retry_on {
        let items: Vec<&Node> = match &n.value {
            Value::Seq(items) => items.iter().collect(),
            Value::Str(_) => vec![n],
            _ => return Err(wrong_type(n, "retry_on", "a list of outcome kinds")),
        };
        policy.retry_on.clear();
        for item in items {
            let name = string(item, "retry_on")?;
            let Some(kind) = OutcomeKind::ALL.into_iter().find(|k| k.as_str() == name) else {
                let known: Vec<&str> = OutcomeKind::ALL
                    .iter()
                    .filter(|k| !matches!(k, OutcomeKind::Completed | OutcomeKind::InvalidInput))
                    .map(|k| k.as_str())
                    .collect();
                return Err(bad(
                    item,
                    format!("unknown outcome `{name}` in `retry_on` (expected one of: {})", known.join(", ")),
                ));
            };
            match kind {
                OutcomeKind::InvalidInput => {
                    return Err(bad(
                        item,
                        "`invalid-input` cannot be retried: the same input fails the same way".into(),
                    ));
                }
                OutcomeKind::Completed => {
                    return Err(bad(item, "`completed` is not a failure and cannot be retried".into()));
                }
                _ => {}
            }
            if !policy.retry_on.contains(&kind) {
                policy.retry_on.push(kind);
            }
        }
    }
    Ok(policy)
}

/// Splits a mapping into the `N` allowed fields, rejecting unknown and repeated ones.
fn fields<'n, const N: usize>(
    node: &'n Node,
    field: &str,
    context: &str,
    allowed: &[&str; N],
) -> Res<[Option<&'n Node>; N]> {
    let Value::Map(entries) = &node.value else {
        return Err(wrong_type(node, field, "a mapping"));
    };
    let mut found: [Option<&'n Node>; N] = [None; N];
    for (key, value) in entries {
        let Some(slot) = allowed.iter().position(|a| *a == key.name) else {
            return Err(unknown_field(key, context, allowed));
        };
        if found[slot].is_some() {
            return Err((
                key.loc,
                WorkflowErrorKind::DuplicateField {
                    field: key.name.clone(),
                    context: context.to_owned(),
                },
            ));
        }
        found[slot] = Some(value);
    }
    Ok(found)
}

fn unknown_field(key: &Key, context: &str, allowed: &[&str]) -> (Location, WorkflowErrorKind) {
    (
        key.loc,
        WorkflowErrorKind::UnknownField {
            field: key.name.clone(),
            context: context.to_owned(),
            expected: allowed.join(", "),
        },
    )
}

fn required<'n>(value: Option<&'n Node>, parent: &Node, field: &'static str, context: &str) -> Res<&'n Node> {
    value.ok_or_else(|| {
        (
            parent.loc,
            WorkflowErrorKind::MissingField {
                field,
                context: context.to_owned(),
            },
        )
    })
}

fn wrong_type(node: &Node, field: &str, expected: &'static str) -> (Location, WorkflowErrorKind) {
    (
        node.loc,
        WorkflowErrorKind::WrongType {
            field: field.to_owned(),
            expected,
            found: node.value.kind(),
        },
    )
}

fn string<'n>(node: &'n Node, field: &str) -> Res<&'n str> {
    match &node.value {
        Value::Str(s) => Ok(s),
        _ => Err(wrong_type(node, field, "a string")),
    }
}

/// One string or a list of strings, each with its position.
fn strings(node: &Node, field: &str) -> Res<Vec<(String, Location)>> {
    match &node.value {
        Value::Str(s) => Ok(vec![(s.clone(), node.loc)]),
        Value::Seq(items) => items
            .iter()
            .map(|item| match &item.value {
                Value::Str(s) => Ok((s.clone(), item.loc)),
                _ => Err(wrong_type(item, field, "a step id")),
            })
            .collect(),
        _ => Err(wrong_type(node, field, "a step id or a list of step ids")),
    }
}

fn uint(node: &Node, field: &str) -> Res<u64> {
    match node.value {
        Value::UInt(u) => Ok(u),
        Value::Int(i) if i >= 0 => Ok(i.unsigned_abs()),
        _ => Err(wrong_type(node, field, "a non-negative integer")),
    }
}

fn boolean(node: &Node, field: &str) -> Res<bool> {
    match node.value {
        Value::Bool(b) => Ok(b),
        _ => Err(wrong_type(node, field, "true or false")),
    }
}

fn duration(node: &Node, field: &str) -> Res<Duration> {
    let bad = |message: String| {
        (
            node.loc,
            WorkflowErrorKind::BadDuration {
                field: field.to_owned(),
                message,
            },
        )
    };
    match &node.value {
        Value::Str(text) => parse_duration(text).map_err(|e| bad(e.to_string())),
        other => Err(bad(format!("expected a duration such as 500ms, 2s or 1m, found {}", other.kind()))),
    }
}

fn size(node: &Node, field: &str) -> Res<ByteSize> {
    let bad = |message: String| {
        (
            node.loc,
            WorkflowErrorKind::BadSize {
                field: field.to_owned(),
                message,
            },
        )
    };
    match &node.value {
        Value::Str(text) => parse_size(text).map_err(|e| bad(e.to_string())),
        Value::UInt(bytes) => Ok(ByteSize(*bytes)),
        other => Err(bad(format!("expected a size such as 64MiB, found {}", other.kind()))),
    }
}
