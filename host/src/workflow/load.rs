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
use crate::sandbox::{HttpGrant, HttpPolicy};

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
pub(super) const STEP_FIELDS: &[&str; 16] = &[
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
    "allow_http",
    "secrets",
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
        allow_http,
        secrets,
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
    let http = allow_http
        .map(|n| Ok(Arc::new(HttpPolicy::allowing(grants(n)?))))
        .transpose()?;
    let secrets = secrets.map(secret_names).transpose()?.unwrap_or_default();

    Ok((
        StepDef {
            id: id.into(),
            component: components.resolve(component),
            input,
            for_each: for_each_template.map(|items| ForEach { items, max_parallel }),
            limits,
            retry,
            continue_on_error,
            http,
            secrets,
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

/// `allow_http`: a list of `HOST:PORT` grants.
fn grants(node: &Node) -> Res<Vec<HttpGrant>> {
    let Value::Seq(items) = &node.value else {
        return Err(wrong_type(node, "allow_http", "a list of HOST:PORT strings"));
    };
    items
        .iter()
        .map(|item| {
            text(item, "allow_http")?.parse().map_err(|message| {
                (
                    item.loc,
                    WorkflowErrorKind::BadValue {
                        field: "allow_http".into(),
                        message,
                    },
                )
            })
        })
        .collect()
}

/// `secrets`: a list of distinct names, such as environment variables have.
fn secret_names(node: &Node) -> Res<Arc<[Arc<str>]>> {
    let Value::Seq(items) = &node.value else {
        return Err(wrong_type(node, "secrets", "a list of secret names"));
    };
    let mut names: Vec<Arc<str>> = Vec::with_capacity(items.len());
    for item in items {
        let name = text(item, "secrets")?;
        let bad = |message: String| {
            (
                item.loc,
                WorkflowErrorKind::BadValue {
                    field: "secrets".into(),
                    message,
                },
            )
        };
        if !is_secret_name(&name) {
            return Err(bad(format!(
                "`{name}` is not a secret name: use letters, digits and `_`, not starting with a digit"
            )));
        }
        if names.iter().any(|n| **n == *name) {
            return Err(bad(format!("`{name}` is named twice")));
        }
        names.push(name.as_ref().into());
    }
    Ok(names.into())
}

/// Whether `name` can name a secret: what an environment variable's name
/// can be, so that any secret can come from the environment.
///
/// ```
/// assert!(stepbox::workflow::is_secret_name("API_TOKEN"));
/// assert!(!stepbox::workflow::is_secret_name("1PASSWORD"));
/// ```
pub fn is_secret_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
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
mod tests;
