//! From positioned YAML nodes to a validated [`Workflow`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;

use super::json;
use super::node::{self, Key, Node, Value};
use super::plan::{self, Lists, Ordered, Plan};
use super::template::{Context, Template};
use super::{ForEach, Location, RetryPolicy, StepDef, Workflow, WorkflowError, WorkflowErrorKind};
use crate::OutcomeKind;
use crate::limits::{LimitOverrides, parse_duration, parse_size};

type Res<T> = Result<T, (Location, WorkflowErrorKind)>;

pub(super) const WORKFLOW_FIELDS: &[&str; 6] =
    &["name", "description", "timeout", "defaults", "output", "steps"];
const DEFAULTS_FIELDS: &[&str; 7] = &[
    "fuel",
    "memory",
    "timeout",
    "scratch",
    "scratch_entries",
    "handles",
    "retry",
];
pub(super) const STEP_FIELDS: &[&str; 14] = &[
    "id",
    "component",
    "needs",
    "input",
    "for_each",
    "max_parallel",
    "fuel",
    "memory",
    "timeout",
    "scratch",
    "scratch_entries",
    "handles",
    "retry",
    "continue_on_error",
];
const RETRY_FIELDS: &[&str; 6] = &[
    "max_attempts",
    "backoff",
    "max_backoff",
    "multiplier",
    "jitter",
    "retry_on",
];

/// Loads the workflow in `text`, which it keeps (without a copy when it
/// owns it: a large workflow's text is megabytes).
pub(crate) fn load(text: Cow<'_, str>, source: &Path) -> Result<Workflow, WorkflowError> {
    let at = |(loc, kind): (Location, WorkflowErrorKind)| WorkflowError {
        file: source.to_owned(),
        line: loc.line,
        column: loc.column,
        kind,
    };
    // Large workflows are written by programs, as JSON: read those without
    // positions first (streamed straight into definitions, else as a tree),
    // and only when something is wrong parse again with positions, so the
    // error can say where.
    if text.trim_start().starts_with('{')
        && let Some(mut workflow) = json::load(&text, source)
            .or_else(|| node::parse_json_unpositioned(&text).and_then(|root| build(&root, source).ok()))
    {
        workflow.text = Arc::new(text.into_owned());
        return Ok(workflow);
    }
    let root = node::parse(&text).map_err(|(loc, message)| at((loc, WorkflowErrorKind::Syntax(message))))?;
    let mut workflow = build(&root, source).map_err(at)?;
    drop(root);
    workflow.text = Arc::new(text.into_owned());
    Ok(workflow)
}

/// "step #N" in messages about a step whose id is not known yet; written
/// only when there is an error to report.
struct StepNumber(usize);

impl fmt::Display for StepNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step #{}", self.0)
    }
}

/// "step `ID`" in messages about a step.
struct StepName<'a>(&'a str);

impl fmt::Display for StepName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step `{}`", self.0)
    }
}

/// What a step's definition names of other steps, before the graph is
/// checked: where its names are in the workflow's [`Names`].
struct Links {
    /// The step's needs.
    needs: Range<usize>,
    /// Every `steps.ID` used in the step's templates.
    refs: Range<usize>,
}

/// The step ids that all steps name, each with where it is written, end to
/// end: one list for the workflow rather than two per step. They borrow
/// from the document where they can, so they outlive its nodes.
struct Names<'de> {
    needs: Vec<(Cow<'de, str>, Location)>,
    refs: Vec<(Cow<'de, str>, Location)>,
}

fn build(root: &Node, source: &Path) -> Res<Workflow> {
    let [name, description, timeout, defaults, output, steps] =
        fields(root, "workflow", &"the workflow", WORKFLOW_FIELDS)?;
    let (header, defaults) = header([name, description, timeout, defaults, output], root.loc)?;
    let steps_node = required(steps, root.loc, "steps", &"the workflow")?;
    let Value::Seq(step_nodes) = &steps_node.value else {
        return Err(wrong_type(steps_node, "steps", "a list of steps"));
    };
    let mut steps = Steps::new(source, defaults, step_nodes.len());
    for step in step_nodes {
        let fields = fields(step, "steps[]", &StepNumber(steps.defs.len() + 1), STEP_FIELDS)?;
        steps.read(fields, step.loc)?;
    }
    finish(header, steps, steps_node.loc, source)
}

/// The workflow's own fields, checked: all but `defaults` and `steps`.
pub(super) struct Header<'de> {
    name: String,
    description: Option<String>,
    timeout: Option<Duration>,
    output: Option<Template>,
    /// Every `steps.ID` the output template uses, with where.
    output_refs: Vec<(Cow<'de, str>, Location)>,
}

/// What every step inherits from the workflow's `defaults`.
#[derive(Default, Clone)]
pub(super) struct Defaults {
    limits: LimitOverrides,
    retry: Arc<RetryPolicy>,
}

/// Checks the workflow's fields but its steps (`name`, `description`,
/// `timeout`, `defaults`, `output`, in that order); `at` is where the
/// workflow is written.
pub(super) fn header<'de>(fields: [Option<&Node<'de>>; 5], at: Location) -> Res<(Header<'de>, Defaults)> {
    let [name, description, timeout, defaults, output] = fields;
    let name = string(required(name, at, "name", &"the workflow")?, "name")?.to_owned();
    let description = description
        .map(|n| string(n, "description").map(str::to_owned))
        .transpose()?;
    let timeout = timeout.map(|n| duration(n, "timeout")).transpose()?;
    let defaults = self::defaults(defaults)?;
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
    let header = Header {
        name,
        description,
        timeout,
        output,
        output_refs,
    };
    Ok((header, defaults))
}

/// Reads the workflow's `defaults` mapping, if it has one.
pub(super) fn defaults(node: Option<&Node>) -> Res<Defaults> {
    let Some(node) = node else {
        return Ok(Defaults::default());
    };
    let [fuel, memory, timeout, scratch, scratch_entries, handles, retry] =
        fields(node, "defaults", &"`defaults`", DEFAULTS_FIELDS)?;
    Ok(Defaults {
        limits: limits(
            [fuel, memory, timeout, scratch, scratch_entries, handles],
            "defaults.",
        )?,
        retry: Arc::new(retry.map(retry_policy).transpose()?.unwrap_or_default()),
    })
}

/// The steps read so far, each with the links still to check.
pub(super) struct Steps<'s, 'de> {
    defaults: Defaults,
    components: Components<'s, 'de>,
    defs: Vec<StepDef>,
    links: Vec<Links>,
    names: Names<'de>,
}

impl<'s, 'de> Steps<'s, 'de> {
    /// No steps yet, for the workflow file `source`, with room for `capacity`.
    pub(super) fn new(source: &'s Path, defaults: Defaults, capacity: usize) -> Steps<'s, 'de> {
        Steps {
            defaults,
            components: Components {
                dir: source.parent().unwrap_or_else(|| Path::new("")),
                known: HashMap::default(),
            },
            defs: Vec::with_capacity(capacity),
            links: Vec::with_capacity(capacity),
            names: Names {
                needs: Vec::with_capacity(capacity),
                refs: Vec::new(),
            },
        }
    }

    /// Reads the next step from its fields, in the order of [`STEP_FIELDS`];
    /// `at` is where the step is written.
    pub(super) fn read(&mut self, fields: [Option<&Node<'de>>; STEP_FIELDS.len()], at: Location) -> Res<()> {
        let (def, links) = read_step(
            fields,
            at,
            self.defs.len(),
            &mut self.components,
            &self.defaults,
            &mut self.names,
        )?;
        self.defs.push(def);
        self.links.push(links);
        Ok(())
    }

    /// How many steps were read.
    pub(super) fn len(&self) -> usize {
        self.defs.len()
    }

    /// Appends the steps `rest` read, which come after these in the file.
    pub(super) fn append(&mut self, rest: Steps<'_, 'de>) {
        let (needs, refs) = (self.names.needs.len(), self.names.refs.len());
        self.defs.extend(rest.defs);
        self.links.extend(rest.links.into_iter().map(|l| Links {
            needs: l.needs.start + needs..l.needs.end + needs,
            refs: l.refs.start + refs..l.refs.end + refs,
        }));
        self.names.needs.extend(rest.names.needs);
        self.names.refs.extend(rest.names.refs);
    }
}

/// Checks what only the whole workflow can tell (unique ids, needs and
/// template references that name steps, no cycle), and plans it. `steps_at`
/// is where the step list is written.
pub(super) fn finish(
    header: Header<'_>,
    steps: Steps<'_, '_>,
    steps_at: Location,
    source: &Path,
) -> Res<Workflow> {
    let Steps {
        defs, links, names, ..
    } = steps;
    if defs.is_empty() {
        return Err((steps_at, WorkflowErrorKind::EmptyWorkflow));
    }

    // Ids are unique.
    let mut index: HashMap<Arc<str>, usize, _> =
        HashMap::with_capacity_and_hasher(defs.len(), foldhash::fast::RandomState::default());
    for (i, def) in defs.iter().enumerate() {
        if let Some(&first) = index.get(&*def.id) {
            return Err((
                def.location,
                WorkflowErrorKind::DuplicateId {
                    id: def.id.to_string(),
                    first: defs[first].location,
                },
            ));
        }
        index.insert(Arc::clone(&def.id), i);
    }

    // Needs name steps.
    let mut needs = Lists::with_capacity(defs.len(), names.needs.len());
    for (def, link) in defs.iter().zip(&links) {
        for (need, loc) in &names.needs[link.needs.clone()] {
            let Some(&j) = index.get(&**need) else {
                return Err((
                    *loc,
                    WorkflowErrorKind::UnknownNeed {
                        step: def.id.to_string(),
                        need: need.to_string(),
                    },
                ));
            };
            if !needs.open_list().contains(&j) {
                needs.push_item(j);
            }
        }
        needs.end_list();
    }

    // Templates name steps.
    for (id, loc) in names.refs.iter().chain(&header.output_refs) {
        if !index.contains_key(&**id) {
            return Err((
                *loc,
                WorkflowErrorKind::UnknownStepInExpression { id: id.to_string() },
            ));
        }
    }

    // The graph is acyclic.
    let weights: Vec<u64> = defs
        .iter()
        .map(|def| {
            def.limits
                .timeout
                .map_or(1, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1))
        })
        .collect();
    let plan = match plan::order(needs, &weights) {
        Ordered::Plan(plan) => plan,
        Ordered::Cycle(cycle) => {
            let first = cycle[0];
            let second = cycle.get(1).copied().unwrap_or(first);
            let loc = names.needs[links[first].needs.clone()]
                .iter()
                .find(|(name, _)| **name == *defs[second].id)
                .map_or(defs[first].location, |&(_, loc)| loc);
            let mut path: Vec<String> = cycle.iter().map(|&i| defs[i].id.to_string()).collect();
            path.push(defs[first].id.to_string());
            return Err((loc, WorkflowErrorKind::Cycle { path }));
        }
    };

    // Templates only use steps that are needed, directly or transitively.
    let mut level = vec![0usize; defs.len()];
    for (n, steps) in plan.levels().enumerate() {
        for &s in steps {
            level[s] = n;
        }
    }
    let mut reach = Reach::new(defs.len());
    for (i, link) in links.iter().enumerate() {
        for (id, loc) in &names.refs[link.refs.clone()] {
            let j = index[&**id];
            if !reach.needs(i, j, &plan, &level) {
                return Err((
                    *loc,
                    WorkflowErrorKind::NotNeeded {
                        step: defs[i].id.to_string(),
                        used: id.to_string(),
                    },
                ));
            }
        }
    }

    let sinks = (0..defs.len())
        .filter(|&i| plan.dependents(i).is_empty())
        .collect();
    Ok(Workflow {
        name: header.name,
        description: header.description,
        timeout: header.timeout,
        output: header.output,
        steps: defs,
        source: source.to_owned(),
        text: Arc::default(),
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

    fn needs(&mut self, i: usize, j: usize, plan: &Plan, level: &[usize]) -> bool {
        if plan.needs(i).contains(&j) {
            return true;
        }
        if level[i] <= level[j] {
            return false;
        }
        self.epoch += 1;
        self.stack.clear();
        self.stack.push(i);
        while let Some(s) = self.stack.pop() {
            for &need in plan.needs(s) {
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

/// Component paths resolved against the workflow's directory, each once:
/// large workflows run a few components in many steps.
struct Components<'s, 'de> {
    dir: &'s Path,
    known: HashMap<&'de str, Arc<Path>, foldhash::fast::RandomState>,
}

impl<'de> Components<'_, 'de> {
    fn resolve(&mut self, name: Cow<'de, str>) -> Arc<Path> {
        let dir = self.dir;
        match name {
            Cow::Borrowed(name) => {
                Arc::clone(self.known.entry(name).or_insert_with(|| dir.join(name).into()))
            }
            Cow::Owned(name) => dir.join(name).into(),
        }
    }
}

fn read_step<'de>(
    fields: [Option<&Node<'de>>; STEP_FIELDS.len()],
    at: Location,
    n: usize,
    components: &mut Components<'_, 'de>,
    defaults: &Defaults,
    names: &mut Names<'de>,
) -> Res<(StepDef, Links)> {
    let numbered = StepNumber(n + 1);
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
        scratch,
        scratch_entries,
        handles,
        retry,
        continue_on_error,
    ] = fields;
    let id_node = required(id, at, "id", &numbered)?;
    let id = string(id_node, "id")?;
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err((id_node.loc, WorkflowErrorKind::BadId(id.to_owned())));
    }
    let context = StepName(id);
    let component_node = required(component, at, "component", &context)?;
    let component = text(component_node, "component")?;
    if component.is_empty() {
        return Err((
            component_node.loc,
            WorkflowErrorKind::BadValue {
                field: "component".into(),
                message: "must not be empty".into(),
            },
        ));
    }
    let first_need = names.needs.len();
    if let Some(list) = needs {
        strings(list, "needs", &mut names.needs)?;
    }
    let needs = first_need..names.needs.len();

    let first_ref = names.refs.len();
    let refs = &mut names.refs;
    let for_each_template = for_each
        .map(|n| {
            let template = Template::compile(
                n,
                &mut Context {
                    field: "for_each",
                    allow_item: false,
                    refs,
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
                    refs,
                },
            )
        })
        .transpose()?;

    let limits = limits([fuel, memory, timeout, scratch, scratch_entries, handles], "")?.or(&defaults.limits);
    let retry = match retry {
        Some(n) => Arc::new(retry_policy(n)?),
        None => Arc::clone(&defaults.retry),
    };
    let continue_on_error = continue_on_error
        .map(|n| boolean(n, "continue_on_error"))
        .transpose()?
        .unwrap_or(false);

    Ok((
        StepDef {
            id: id.into(),
            component: components.resolve(component),
            input,
            for_each: for_each_template.map(|items| ForEach { items, max_parallel }),
            limits,
            retry,
            continue_on_error,
            location: id_node.loc,
            component_location: component_node.loc,
        },
        Links {
            needs,
            refs: first_ref..names.refs.len(),
        },
    ))
}

/// The limits a step or the defaults set: `fuel`, `memory`, `timeout`,
/// `scratch`, `scratch_entries` and `handles`, in that order.
fn limits(nodes: [Option<&Node>; 6], prefix: &str) -> Res<LimitOverrides> {
    let [fuel, memory, timeout, scratch, scratch_entries, handles] = nodes;
    let field = |name: &str| format!("{prefix}{name}");
    Ok(LimitOverrides {
        fuel: fuel.map(|n| uint(n, &field("fuel"))).transpose()?,
        memory: memory.map(|n| size(n, &field("memory"))).transpose()?,
        timeout: timeout.map(|n| duration(n, &field("timeout"))).transpose()?,
        scratch: scratch.map(|n| size(n, &field("scratch"))).transpose()?,
        scratch_entries: scratch_entries
            .map(|n| uint(n, &field("scratch_entries")))
            .transpose()?,
        handles: handles
            .map(|n| {
                let name = field("handles");
                let value = uint(n, &name)?;
                u32::try_from(value).map_err(|_| wrong_type(n, &name, "an integer below 2^32"))
            })
            .transpose()?,
        ..LimitOverrides::default()
    })
}

fn retry_policy(node: &Node) -> Res<RetryPolicy> {
    let [max_attempts, backoff, max_backoff, multiplier, jitter, retry_on] =
        fields(node, "retry", &"`retry`", RETRY_FIELDS)?;
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
            return Err(bad(
                n,
                format!("`multiplier` must be a number of at least 1, found {value}"),
            ));
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
                    format!(
                        "unknown outcome `{name}` in `retry_on` (expected one of: {})",
                        known.join(", ")
                    ),
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
                    return Err(bad(
                        item,
                        "`completed` is not a failure and cannot be retried".into(),
                    ));
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
fn fields<'n, 'd, const N: usize>(
    node: &'n Node<'d>,
    field: &str,
    context: &dyn fmt::Display,
    allowed: &[&str; N],
) -> Res<[Option<&'n Node<'d>>; N]> {
    let Value::Map(entries) = &node.value else {
        return Err(wrong_type(node, field, "a mapping"));
    };
    let mut found: [Option<&'n Node<'d>>; N] = [None; N];
    for (key, value) in entries {
        let Some(slot) = allowed.iter().position(|a| *a == key.name) else {
            return Err(unknown_field(key, context, allowed));
        };
        if found[slot].is_some() {
            return Err((
                key.loc,
                WorkflowErrorKind::DuplicateField {
                    field: key.name.to_string(),
                    context: context.to_string(),
                },
            ));
        }
        found[slot] = Some(value);
    }
    Ok(found)
}

fn unknown_field(key: &Key, context: &dyn fmt::Display, allowed: &[&str]) -> (Location, WorkflowErrorKind) {
    (
        key.loc,
        WorkflowErrorKind::UnknownField {
            field: key.name.to_string(),
            context: context.to_string(),
            expected: allowed.join(", "),
        },
    )
}

/// `value`, or an error at `parent` (where the mapping that lacks it is written).
fn required<'n, 'd>(
    value: Option<&'n Node<'d>>,
    parent: Location,
    field: &'static str,
    context: &dyn fmt::Display,
) -> Res<&'n Node<'d>> {
    value.ok_or_else(|| {
        (
            parent,
            WorkflowErrorKind::MissingField {
                field,
                context: context.to_string(),
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

/// A string that borrows from the document when the node does, so it
/// outlives the node.
fn text<'de>(node: &Node<'de>, field: &str) -> Res<Cow<'de, str>> {
    match &node.value {
        Value::Str(Cow::Borrowed(s)) => Ok(Cow::Borrowed(s)),
        Value::Str(Cow::Owned(s)) => Ok(Cow::Owned(s.clone())),
        _ => Err(wrong_type(node, field, "a string")),
    }
}

/// One string or a list of strings, each with its position, added to `list`.
fn strings<'de>(node: &Node<'de>, field: &str, list: &mut Vec<(Cow<'de, str>, Location)>) -> Res<()> {
    match &node.value {
        Value::Str(_) => {
            list.push((text(node, field)?, node.loc));
            Ok(())
        }
        Value::Seq(items) => {
            for item in items {
                let Value::Str(_) = &item.value else {
                    return Err(wrong_type(item, field, "a step id"));
                };
                list.push((text(item, field)?, item.loc));
            }
            Ok(())
        }
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
        other => Err(bad(format!(
            "expected a duration such as 500ms, 2s or 1m, found {}",
            other.kind()
        ))),
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
        other => Err(bad(format!(
            "expected a size such as 64MiB, found {}",
            other.kind()
        ))),
    }
}

/// Everything a load decides, in a form that compares (the id index
/// hashes in a random order, so it is left out): for tests that read one
/// file two ways.
#[cfg(test)]
pub(super) fn summary(wf: &Workflow) -> String {
    format!(
        "{} {:?} {:?} {:?} {:?} {:?}",
        wf.name,
        wf.description,
        wf.timeout,
        wf.output,
        wf.steps,
        wf.plan()
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use serde_json::json;

    use super::super::{InputSource, Scope};
    use super::*;

    fn load_ok(text: &str) -> Workflow {
        Workflow::from_str(text, Path::new("flows/wf.yaml")).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Loads `text`, expecting an error; returns it with its one-line message.
    fn load_err(text: &str) -> (WorkflowError, String) {
        let err = Workflow::from_str(text, Path::new("flows/wf.yaml")).expect_err("expected an error");
        let line = err.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with(&format!("flows/wf.yaml:{}:{}: ", err.line, err.column)),
            "{line}"
        );
        (err, line)
    }

    fn at(err: &WorkflowError) -> (usize, usize) {
        (err.line, err.column)
    }

    const FULL: &str = r#"name: docs
description: Split and count.
timeout: 1m
defaults:
  fuel: 1000000
  memory: 64MiB
  timeout: 5s
  retry: {max_attempts: 2}
output: ${steps.merge}
steps:
  - id: split
    component: ../target/split.wasm
    input: {text: "${input.text}"}
    timeout: 1s
  - id: count
    component: count.wasm
    needs: split
    for_each: ${steps.split.chunks}
    max_parallel: 4
    input:
      text: ${item}
      n: ${index}
    memory: 8MiB
    retry:
      max_attempts: 3
      backoff: 50ms
      max_backoff: 1s
      multiplier: 1.5
      jitter: false
      retry_on: [retryable, timeout]
    continue_on_error: true
  - id: merge
    component: /abs/merge.wasm
    needs: [count]
    input: ${steps.count}
"#;

    #[test]
    fn a_full_workflow_loads_with_defaults_merged_under_step_values() {
        let wf = load_ok(FULL);
        assert_eq!(wf.name, "docs");
        assert_eq!(wf.description.as_deref(), Some("Split and count."));
        assert_eq!(wf.timeout, Some(Duration::from_secs(60)));
        assert_eq!(wf.source, PathBuf::from("flows/wf.yaml"));
        let split = wf.step("split").unwrap();
        assert_eq!(&*split.component, Path::new("flows/../target/split.wasm"));
        assert_eq!(split.location, Location { line: 11, column: 9 });
        assert_eq!(split.component_location, Location { line: 12, column: 16 });
        assert_eq!(split.limits.timeout, Some(Duration::from_secs(1)));
        assert_eq!(split.limits.fuel, Some(1_000_000));
        assert_eq!(split.limits.memory, Some(ByteSize::mib(64)));
        assert_eq!(split.retry.max_attempts, 2, "defaults' retry applies");
        let count = wf.step("count").unwrap();
        assert_eq!(
            wf.needs(wf.step_index("count").unwrap()).collect::<Vec<_>>(),
            ["split"]
        );
        assert_eq!(count.limits.memory, Some(ByteSize::mib(8)));
        assert_eq!(count.limits.timeout, Some(Duration::from_secs(5)));
        assert_eq!(count.for_each.as_ref().unwrap().max_parallel, Some(4));
        assert_eq!(
            *count.retry,
            RetryPolicy {
                max_attempts: 3,
                backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(1),
                multiplier: 1.5,
                jitter: false,
                retry_on: vec![OutcomeKind::Retryable, OutcomeKind::Timeout],
            }
        );
        assert!(count.continue_on_error);
        assert_eq!(
            &*wf.step("merge").unwrap().component,
            Path::new("/abs/merge.wasm")
        );
        assert_eq!(wf.step_index("merge"), Some(2));
        assert!(wf.step("nope").is_none());
    }

    #[test]
    fn scratch_and_handle_limits_are_read_per_step_over_the_defaults() {
        let wf = load_ok(
            "name: w\ndefaults: {scratch: 8MiB, scratch_entries: 100, handles: 32}\nsteps:\n  - {id: a, component: a.wasm}\n  - {id: b, component: b.wasm, scratch: 1GiB, scratch_entries: 5, handles: 600}\n",
        );
        let a = &wf.step("a").unwrap().limits;
        assert_eq!(
            (a.scratch, a.scratch_entries, a.handles),
            (Some(ByteSize::mib(8)), Some(100), Some(32))
        );
        let b = &wf.step("b").unwrap().limits;
        assert_eq!(
            (b.scratch, b.scratch_entries, b.handles),
            (Some(ByteSize::gib(1)), Some(5), Some(600))
        );
        let (err, line) = load_err("name: w\nsteps:\n  - {id: a, component: a.wasm, handles: 5000000000}\n");
        assert!(matches!(err.kind, WorkflowErrorKind::WrongType { .. }), "{line}");
        let (_, line) = load_err("name: w\nsteps:\n  - {id: a, component: a.wasm, scratch: lots}\n");
        assert!(line.contains("scratch"), "{line}");
    }

    #[test]
    fn retry_defaults_to_one_attempt_on_retryable() {
        let wf = load_ok(
            "name: w\nsteps:\n  - id: a\n    component: a.wasm\n    retry: {max_attempts: 4}\n  - id: b\n    component: b.wasm\n",
        );
        let a = &wf.steps[0].retry;
        assert_eq!(
            (a.max_attempts, a.backoff, a.max_backoff),
            (4, Duration::from_millis(100), Duration::from_secs(10))
        );
        assert_eq!((a.multiplier, a.jitter), (2.0, true));
        assert_eq!(a.retry_on, [OutcomeKind::Retryable]);
        assert_eq!(*wf.steps[1].retry, RetryPolicy::default());
        assert_eq!(RetryPolicy::default().max_attempts, 1);
        assert!(a.should_retry(3, OutcomeKind::Retryable));
        assert!(!a.should_retry(4, OutcomeKind::Retryable));
        assert!(!a.should_retry(1, OutcomeKind::Trap));
    }

    #[test]
    fn json_files_load_like_the_same_yaml() {
        let yaml = "name: w\nsteps:\n  - id: a\n    component: a.wasm\n    input: {x: \"${input.x}\", n: [1, 2.5, null, true]}\n  - id: b\n    component: b.wasm\n    needs: [a]\n";
        let json = r#"{
  "name": "w",
  "steps": [
    {"id": "a", "component": "a.wasm", "input": {"x": "${input.x}", "n": [1, 2.5, null, true]}},
    {"id": "b", "component": "b.wasm", "needs": ["a"]}
  ]
}"#;
        let (y, j) = (load_ok(yaml), load_ok(json));
        assert_eq!(y.name, j.name);
        assert_eq!(y.steps.len(), j.steps.len());
        for (i, (ys, js)) in y.steps.iter().zip(&j.steps).enumerate() {
            assert_eq!((&ys.id, &ys.component), (&js.id, &js.component));
            assert!(y.needs(i).eq(j.needs(i)));
            // JSON objects come without their key order (serde_json sorts
            // them), so compare what the templates produce.
            let input = serde_json::json!({"x": 5});
            let no_steps = |_: &str| None;
            let scope = crate::workflow::Scope::new(&input, &no_steps);
            assert_eq!(y.eval_input(i, &scope).ok(), j.eval_input(i, &scope).ok());
        }
        assert_eq!(
            j.eval_input(
                0,
                &crate::workflow::Scope::new(&serde_json::json!({"x": 5}), &|_: &str| None)
            )
            .ok(),
            Some(serde_json::json!({"x": 5, "n": [1, 2.5, null, true]}))
        );
        assert_eq!(y.plan(), j.plan());
        // JSON errors have positions too.
        let (err, _) = load_err("{\n  \"name\": \"w\",\n  \"stepz\": []\n}");
        assert!(matches!(err.kind, WorkflowErrorKind::UnknownField { ref field, .. } if field == "stepz"));
        assert_eq!(at(&err), (3, 3));
    }

    /// The JSON read by the tree of nodes, without positions.
    fn load_as_tree(text: &str) -> Workflow {
        let root = node::parse_json_unpositioned(text).unwrap();
        build(&root, Path::new("flows/wf.json")).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn the_streaming_json_path_reads_what_the_tree_reads() {
        // Escapes make strings that cannot borrow from the text.
        let text = r#"{
  "name": "w", "description": "d", "timeout": "1m",
  "defaults": {"fuel": 1000, "memory": "1MiB", "timeout": "5s", "retry": {"max_attempts": 3}},
  "output": {"last": "${steps.s2}"},
  "steps": [
    {"id": "s1", "component": "a.wasm", "input": {"x": "${input.x}"}},
    {"id": "s2", "component": "a.wasm", "needs": ["s1", "s1"], "for_each": "${steps.s1.items}",
     "max_parallel": 2, "input": {"v": "${item}"}, "timeout": "1s", "retry": {"max_attempts": 1},
     "continue_on_error": true},
    {"id": "s3", "component": "../b.wasm", "needs": "s1", "fuel": 7}
  ]
}"#;
        let streamed = super::json::load(text, Path::new("flows/wf.json")).expect("the fast path reads it");
        assert_eq!(summary(&streamed), summary(&load_as_tree(text)));
        assert_eq!(&*streamed.steps[0].id, "s1");
        assert_eq!(streamed.needs(1).collect::<Vec<_>>(), ["s1"]);
        assert_eq!(streamed.steps[2].limits.timeout, Some(Duration::from_secs(5)));
        // One resolved path for the steps that name the same file.
        assert!(Arc::ptr_eq(
            &streamed.steps[0].component,
            &streamed.steps[1].component
        ));
    }

    #[test]
    fn json_the_streaming_path_leaves_loads_through_the_tree_or_with_positions() {
        // Defaults after the steps: the steps were read without them.
        let late = r#"{"name": "w", "steps": [{"id": "a", "component": "a.wasm"}], "defaults": {"fuel": 9}}"#;
        assert!(super::json::load(late, Path::new("w.json")).is_none());
        assert_eq!(load_ok(late).steps[0].limits.fuel, Some(9));
        // Errors are found again with their positions.
        let dup = r#"{"name": "w", "steps": [
 {"id": "a", "component": "a.wasm"},
 {"id": "a", "component": "a.wasm"}]}"#;
        assert!(super::json::load(dup, Path::new("w.json")).is_none());
        let (err, _) = load_err(dup);
        assert!(matches!(err.kind, WorkflowErrorKind::DuplicateId { .. }), "{err}");
        assert_eq!(at(&err), (3, 9));
        let trailing = r#"{"name": "w", "steps": [{"id": "a", "component": "a.wasm"}]} x"#;
        assert!(super::json::load(trailing, Path::new("w.json")).is_none());
        assert!(matches!(load_err(trailing).0.kind, WorkflowErrorKind::Syntax(_)));
    }

    #[test]
    fn dollar_brace_needs_no_quotes_in_block_style_but_does_in_flow_style() {
        let wf = load_ok(
            "name: w\noutput: ${steps.a.x}\nsteps:\n  - id: a\n    component: a.wasm\n    input: ${input}\n",
        );
        assert_eq!(
            wf.output.as_ref().unwrap().references().collect::<Vec<_>>(),
            ["a"]
        );
        let outputs = HashMap::from([("a".to_owned(), json!({"x": [1]}))]);
        let steps = |id: &str| outputs.get(id);
        let input = json!(7);
        let scope = Scope::new(&input, &steps);
        assert_eq!(wf.eval_input(0, &scope).unwrap(), json!(7));
        assert_eq!(wf.eval_output(&scope).unwrap(), json!([1]));
        // Unquoted inside a flow mapping, `}` ends the mapping: YAML rejects it.
        let (err, _) =
            load_err("name: w\nsteps:\n  - id: a\n    component: a.wasm\n    input: {t: ${input.t}}\n");
        assert!(matches!(err.kind, WorkflowErrorKind::Syntax(_)), "{err}");
        assert_eq!(err.line, 5);
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let (err, line) = load_err("name: w\nsteps:\n  - id: a\n   component: [x\n");
        assert!(matches!(err.kind, WorkflowErrorKind::Syntax(_)), "{line}");
        assert!(err.line >= 3, "{line}");
    }

    #[test]
    fn read_error_names_the_file() {
        let err = Workflow::from_file(Path::new("/nonexistent/wf.yaml")).unwrap_err();
        assert!(matches!(err.kind, WorkflowErrorKind::Read(_)));
        assert!(
            err.to_string().starts_with("/nonexistent/wf.yaml: cannot read"),
            "{err}"
        );
    }

    #[test]
    fn from_file_resolves_components_next_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wf.yml");
        std::fs::write(&path, "name: w\nsteps:\n  - {id: a, component: a.wasm}\n").unwrap();
        let wf = Workflow::from_file(&path).unwrap();
        assert_eq!(*wf.steps[0].component, *dir.path().join("a.wasm"));
    }

    #[test]
    fn unknown_fields_are_named_everywhere() {
        let cases = [
            ("name: w\nsteps: []\nextra: 1\n", "extra", (3, 1)),
            (
                "name: w\ndefaults: {fuel: 1, cpu: 2}\nsteps: []\n",
                "cpu",
                (2, 21),
            ),
            (
                "name: w\nsteps:\n  - id: a\n    component: a.wasm\n    nedds: [b]\n",
                "nedds",
                (5, 5),
            ),
            (
                "name: w\nsteps:\n  - id: a\n    component: a.wasm\n    retry: {attempts: 2}\n",
                "attempts",
                (5, 13),
            ),
        ];
        for (text, field, pos) in cases {
            let (err, line) = load_err(text);
            assert!(
                matches!(&err.kind, WorkflowErrorKind::UnknownField { field: f, .. } if f == field),
                "{line}"
            );
            assert!(line.contains(&format!("unknown field `{field}`")), "{line}");
            assert_eq!(at(&err), pos, "{line}");
        }
    }

    #[test]
    fn missing_fields_point_at_their_mapping() {
        let (err, line) = load_err("steps:\n  - id: a\n    component: a.wasm\n");
        assert!(
            matches!(err.kind, WorkflowErrorKind::MissingField { field: "name", .. }),
            "{line}"
        );
        assert_eq!(at(&err), (1, 1));
        let (err, line) = load_err("name: w\nsteps:\n  - id: a\n    needs: []\n");
        assert!(
            matches!(
                err.kind,
                WorkflowErrorKind::MissingField {
                    field: "component",
                    ..
                }
            ),
            "{line}"
        );
        assert!(line.ends_with("missing field `component` in step `a`"), "{line}");
        assert_eq!(at(&err), (3, 5));
        let (err, _) = load_err("name: w\n");
        assert!(matches!(
            err.kind,
            WorkflowErrorKind::MissingField { field: "steps", .. }
        ));
    }

    #[test]
    fn wrong_types_say_what_was_expected() {
        let (err, line) = load_err("name: [w]\nsteps: []\n");
        assert!(matches!(err.kind, WorkflowErrorKind::WrongType { .. }), "{line}");
        assert!(line.ends_with("`name` must be a string, found a list"), "{line}");
        assert_eq!(at(&err), (1, 7));
        let (err, line) = load_err("name: w\nsteps:\n  - id: a\n    component: a.wasm\n    fuel: -1\n");
        assert!(line.contains("`fuel` must be a non-negative integer"), "{line}");
        assert_eq!(at(&err), (5, 11));
    }

    #[test]
    fn empty_workflow_is_rejected() {
        let (err, _) = load_err("name: w\nsteps: []\n");
        assert!(matches!(err.kind, WorkflowErrorKind::EmptyWorkflow));
        assert_eq!(at(&err), (2, 8));
    }

    #[test]
    fn bad_step_ids_are_rejected() {
        let (err, _) = load_err("name: w\nsteps:\n  - id: a.b\n    component: a.wasm\n");
        assert!(matches!(err.kind, WorkflowErrorKind::BadId(ref id) if id == "a.b"));
        assert_eq!(at(&err), (3, 9));
    }

    #[test]
    fn duplicate_id_says_where_the_first_one_is() {
        let (err, line) =
            load_err("name: w\nsteps:\n  - id: a\n    component: a.wasm\n  - id: a\n    component: b.wasm\n");
        assert!(
            matches!(err.kind, WorkflowErrorKind::DuplicateId { .. }),
            "{line}"
        );
        assert_eq!(at(&err), (5, 9));
        assert!(
            line.ends_with("duplicate step id `a` (first defined at 3:9)"),
            "{line}"
        );
    }

    #[test]
    fn duplicate_field_is_rejected() {
        let result = Workflow::from_str(
            "name: w\nname: v\nsteps:\n  - {id: a, component: a.wasm}\n",
            Path::new("w.yaml"),
        );
        // Either the parser or the loader rejects it, with a position.
        let err = result.unwrap_err();
        assert_eq!(err.line, 2, "{err}");
    }

    #[test]
    fn unknown_need_points_at_the_need() {
        let (err, line) = load_err(
            "name: w\nsteps:\n  - id: a\n    component: a.wasm\n    needs: [a0, b]\n  - id: a0\n    component: x.wasm\n",
        );
        assert!(
            matches!(err.kind, WorkflowErrorKind::UnknownNeed { .. }),
            "{line}"
        );
        assert!(
            line.ends_with("step `a` needs `b`, which is not a step of this workflow"),
            "{line}"
        );
        assert_eq!(at(&err), (5, 17));
    }

    #[test]
    fn cycle_message_prints_the_loop() {
        let text = "name: w\nsteps:\n  - id: a\n    component: a.wasm\n    needs: c\n  - id: b\n    component: b.wasm\n    needs: a\n  - id: c\n    component: c.wasm\n    needs: [b]\n  - id: d\n    component: d.wasm\n    needs: [a]\n";
        let (err, line) = load_err(text);
        let WorkflowErrorKind::Cycle { path } = &err.kind else {
            panic!("{line}")
        };
        assert_eq!(path, &["a", "c", "b", "a"]);
        assert!(
            line.ends_with("dependency cycle: a -> c -> b -> a (each step needs the next)"),
            "{line}"
        );
        assert_eq!(at(&err), (5, 12), "points at a's need of c");
        let (err, line) = load_err("name: w\nsteps:\n  - {id: s, component: s.wasm, needs: s}\n");
        assert!(
            line.ends_with("dependency cycle: s -> s (each step needs the next)"),
            "{line}"
        );
        assert_eq!(at(&err), (3, 39));
    }

    #[test]
    fn expressions_must_name_existing_steps() {
        let (err, line) =
            load_err("name: w\nsteps:\n  - id: a\n    component: a.wasm\n    input: ${steps.zz.x}\n");
        assert!(
            matches!(err.kind, WorkflowErrorKind::UnknownStepInExpression { .. }),
            "{line}"
        );
        assert!(
            line.ends_with("`steps.zz` refers to no step of this workflow"),
            "{line}"
        );
        assert_eq!(at(&err), (5, 12));
        let (err, _) = load_err("name: w\noutput: ${steps.q}\nsteps:\n  - {id: a, component: a.wasm}\n");
        assert!(matches!(
            err.kind,
            WorkflowErrorKind::UnknownStepInExpression { .. }
        ));
        assert_eq!(at(&err), (2, 9));
    }

    #[test]
    fn templates_may_use_only_steps_they_need_transitively() {
        let base = "name: w\nsteps:\n  - {id: a, component: a.wasm}\n  - {id: b, component: b.wasm, needs: a}\n  - {id: c, component: c.wasm, needs: b, input: \"${steps.a}\"}\n";
        load_ok(base);
        let text = "name: w\nsteps:\n  - {id: a, component: a.wasm}\n  - {id: b, component: b.wasm}\n  - id: c\n    component: c.wasm\n    needs: a\n    input: {x: \"${steps.b}\"}\n";
        let (err, line) = load_err(text);
        assert!(matches!(err.kind, WorkflowErrorKind::NotNeeded { .. }), "{line}");
        assert!(
            line.ends_with("step `c` uses `steps.b` but does not need it (add it to `needs`)"),
            "{line}"
        );
        assert_eq!(at(&err), (8, 16));
        // A step's own output is never available to it.
        let (err, _) = load_err("name: w\nsteps:\n  - {id: a, component: a.wasm, input: \"${steps.a}\"}\n");
        assert!(matches!(err.kind, WorkflowErrorKind::NotNeeded { .. }));
    }

    #[test]
    fn bad_expression_points_at_its_string() {
        let (err, line) =
            load_err("name: w\nsteps:\n  - id: a\n    component: a.wasm\n    input:\n      x: ${input..y}\n");
        assert!(matches!(err.kind, WorkflowErrorKind::BadExpression(_)), "{line}");
        assert_eq!(at(&err), (6, 10));
        let (err, line) = load_err("name: w\nsteps:\n  - id: a\n    component: a.wasm\n    for_each: 5\n");
        assert!(matches!(err.kind, WorkflowErrorKind::BadExpression(_)), "{line}");
        assert_eq!(at(&err), (5, 15));
    }

    #[test]
    fn item_outside_for_each_is_rejected() {
        let (err, line) =
            load_err("name: w\nsteps:\n  - id: a\n    component: a.wasm\n    input: ${item.x}\n");
        assert!(
            matches!(err.kind, WorkflowErrorKind::ItemOutsideForEach(_)),
            "{line}"
        );
        assert!(
            line.ends_with("`item.x` is only available in the `input` of a step with `for_each`"),
            "{line}"
        );
        assert_eq!(at(&err), (5, 12));
        let (err, _) = load_err("name: w\noutput: ${index}\nsteps:\n  - {id: a, component: a.wasm}\n");
        assert!(matches!(err.kind, WorkflowErrorKind::ItemOutsideForEach(_)));
        let (err, _) = load_err("name: w\nsteps:\n  - {id: a, component: a.wasm, for_each: \"${item}\"}\n");
        assert!(matches!(err.kind, WorkflowErrorKind::ItemOutsideForEach(_)));
    }

    #[test]
    fn bad_sizes_and_durations_name_the_field() {
        let (err, line) = load_err("name: w\ndefaults:\n  memory: 64 parsecs\nsteps: []\n");
        assert!(matches!(err.kind, WorkflowErrorKind::BadSize { .. }), "{line}");
        assert!(
            line.contains("bad size for `defaults.memory`") && line.contains("64 parsecs"),
            "{line}"
        );
        assert_eq!(at(&err), (3, 11));
        let (err, line) = load_err("name: w\nsteps:\n  - id: a\n    component: a.wasm\n    timeout: soon\n");
        assert!(
            matches!(err.kind, WorkflowErrorKind::BadDuration { .. }),
            "{line}"
        );
        assert_eq!(at(&err), (5, 14));
        let (err, line) = load_err("name: w\ntimeout: 30\nsteps: []\n");
        assert!(
            matches!(err.kind, WorkflowErrorKind::BadDuration { .. }),
            "{line}"
        );
        assert_eq!(at(&err), (2, 10));
    }

    #[test]
    fn bad_retry_policies_are_rejected() {
        let step =
            |retry: &str| format!("name: w\nsteps:\n  - id: a\n    component: a.wasm\n    retry: {retry}\n");
        let cases = [
            ("{max_attempts: 0}", "at least 1", (5, 27)),
            (
                "{retry_on: [retryable, invalid-input]}",
                "`invalid-input` cannot be retried",
                (5, 35),
            ),
            ("{retry_on: [completed]}", "`completed` is not a failure", (5, 24)),
            ("{retry_on: [sometimes]}", "unknown outcome `sometimes`", (5, 24)),
            ("{multiplier: 0.5}", "`multiplier` must be", (5, 25)),
            (
                "{backoff: 1m, max_backoff: 1s}",
                "longer than `max_backoff`",
                (5, 22),
            ),
        ];
        for (retry, message, pos) in cases {
            let (err, line) = load_err(&step(retry));
            assert!(matches!(err.kind, WorkflowErrorKind::BadRetry(_)), "{line}");
            assert!(line.contains(message), "{line}");
            assert_eq!(at(&err), pos, "{line}");
        }
        let (err, _) = load_err("name: w\ndefaults:\n  retry: {max_attempts: 0}\nsteps: []\n");
        assert!(matches!(err.kind, WorkflowErrorKind::BadRetry(_)));
    }

    #[test]
    fn max_parallel_requires_for_each() {
        let (err, line) =
            load_err("name: w\nsteps:\n  - id: a\n    component: a.wasm\n    max_parallel: 2\n");
        assert!(
            matches!(err.kind, WorkflowErrorKind::MaxParallelWithoutForEach(_)),
            "{line}"
        );
        assert_eq!(at(&err), (5, 19));
        let (err, _) =
            load_err("name: w\nsteps:\n  - {id: a, component: a.wasm, for_each: [1], max_parallel: 0}\n");
        assert!(matches!(err.kind, WorkflowErrorKind::BadValue { .. }));
    }

    #[test]
    fn check_components_reports_at_the_component() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.wasm"), b"").unwrap();
        let source = dir.path().join("wf.yaml");
        let text = "name: w\nsteps:\n  - id: a\n    component: a.wasm\n  - id: b\n    component: b.wasm\n";
        let wf = Workflow::from_str(text, &source).unwrap();
        let err = wf.check_components(|_| Ok::<_, String>(())).unwrap_err();
        assert!(matches!(err.kind, WorkflowErrorKind::Component(_)));
        assert_eq!(at(&err), (6, 16));
        assert!(err.to_string().ends_with("b.wasm` does not exist"), "{err}");
        std::fs::write(dir.path().join("b.wasm"), b"").unwrap();
        let err = wf
            .check_components(|s| {
                if &*s.id == "b" {
                    Err("not a step component".into())
                } else {
                    Ok(1)
                }
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}:6:16: not a step component", source.display())
        );
        let ids = wf
            .check_components(|s| Ok::<_, String>(s.id.to_string()))
            .unwrap();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn default_input_follows_for_each_then_needs() {
        let text = "name: w\nsteps:\n  - {id: a, component: a.wasm}\n  - {id: b, component: b.wasm, needs: a}\n  - {id: c, component: c.wasm, needs: [a, b]}\n  - {id: d, component: d.wasm, needs: c, for_each: \"${steps.c.a}\"}\n  - {id: e, component: e.wasm, needs: a, input: {k: 1}}\n";
        let wf = load_ok(text);
        let source = |id: &str| wf.input_source(wf.step_index(id).unwrap());
        assert_eq!(source("a"), InputSource::WorkflowInput);
        assert_eq!(source("b"), InputSource::Need("a"));
        assert_eq!(source("c"), InputSource::Needs(vec!["a", "b"]));
        assert_eq!(source("d"), InputSource::Item);
        assert!(matches!(source("e"), InputSource::Template(_)));

        let outputs = HashMap::from([("a".to_owned(), json!([1, 2])), ("b".to_owned(), json!("B"))]);
        let steps = |id: &str| outputs.get(id);
        let input = json!({"in": true});
        let scope = Scope::new(&input, &steps);
        let eval = |id: &str, scope: &Scope<'_>| wf.eval_input(wf.step_index(id).unwrap(), scope).unwrap();
        assert_eq!(eval("a", &scope), input);
        assert_eq!(eval("b", &scope), json!([1, 2]));
        assert_eq!(eval("c", &scope), json!({"a": [1, 2], "b": "B"}));
        let item = json!("it");
        assert_eq!(eval("d", &scope.with_item(&item, 0)), json!("it"));
        assert_eq!(eval("e", &scope), json!({"k": 1}));
    }

    #[test]
    fn default_output_is_the_single_sink_or_an_object_of_sinks() {
        let outputs = HashMap::from([
            ("a".to_owned(), json!(1)),
            ("b".to_owned(), json!(2)),
            ("c".to_owned(), json!(3)),
        ]);
        let steps = |id: &str| outputs.get(id);
        let input = json!(null);
        let scope = Scope::new(&input, &steps);
        let one = load_ok(
            "name: w\nsteps:\n  - {id: a, component: a.wasm}\n  - {id: b, component: b.wasm, needs: a}\n",
        );
        assert_eq!(one.sinks(), [1]);
        assert_eq!(one.eval_output(&scope).unwrap(), json!(2));
        let two = load_ok(
            "name: w\nsteps:\n  - {id: a, component: a.wasm}\n  - {id: b, component: b.wasm, needs: a}\n  - {id: c, component: c.wasm, needs: a}\n",
        );
        assert_eq!(two.eval_output(&scope).unwrap(), json!({"b": 2, "c": 3}));
    }

    #[test]
    fn for_each_items_must_be_a_list() {
        let wf = load_ok(
            "name: w\nsteps:\n  - {id: a, component: a.wasm}\n  - {id: b, component: b.wasm, needs: a, for_each: \"${steps.a}\"}\n",
        );
        let for_each = wf.steps[1].for_each.as_ref().unwrap();
        let input = json!(null);
        let list = HashMap::from([("a".to_owned(), json!([1, 2]))]);
        let steps = |id: &str| list.get(id);
        assert_eq!(
            for_each.eval_items(&Scope::new(&input, &steps)).unwrap(),
            [json!(1), json!(2)]
        );
        let scalar = HashMap::from([("a".to_owned(), json!("x"))]);
        let steps = |id: &str| scalar.get(id);
        let err = for_each.eval_items(&Scope::new(&input, &steps)).unwrap_err();
        assert!(err.to_string().contains("must give a list"), "{err}");
    }

    #[test]
    fn levels_and_critical_path_follow_needs_and_timeouts() {
        let text = "name: w\nsteps:\n  - {id: a, component: x.wasm}\n  - {id: b, component: x.wasm, needs: a}\n  - {id: c, component: x.wasm, needs: a, timeout: 9s}\n  - {id: d, component: x.wasm, needs: [b, c]}\n  - {id: e, component: x.wasm}\n";
        let wf = load_ok(text);
        let plan = wf.plan();
        assert_eq!(plan.levels().collect::<Vec<_>>(), [&[0, 4][..], &[1, 2], &[3]]);
        assert_eq!(plan.critical_path(), [0, 2, 3]);
        assert_eq!(plan.needs(3), [1, 2]);
        assert_eq!(plan.dependents(0), [1, 2]);
        assert_eq!(
            plan.describe(&wf),
            "level 0: a, e\nlevel 1: b, c\nlevel 2: d\ncritical path: a -> c -> d\n"
        );
    }

    #[test]
    fn a_ten_thousand_step_chain_validates_without_stack_overflow() {
        let mut text = String::from("name: chain\nsteps:\n  - {id: s0, component: x.wasm}\n");
        for i in 1..10_000 {
            text.push_str(&format!(
                "  - {{id: s{i}, component: x.wasm, needs: s{}, input: \"${{steps.s0}}\"}}\n",
                i - 1
            ));
        }
        // Run on a small stack: nothing may recurse per step.
        let handle = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let wf = Workflow::from_str(&text, Path::new("chain.yaml")).unwrap();
                let plan = wf.plan();
                (plan.level_count(), plan.critical_path().len())
            })
            .unwrap();
        assert_eq!(handle.join().unwrap(), (10_000, 10_000));
    }
}
