//! Between prepared workflows and the journal: the record a run is accepted
//! with, the workflow rebuilt from it on resume, and what a resumed run
//! already did.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::runner::{Component, StepRunner};
use super::{PrepareError, PreparedWorkflow};
use crate::outcome::{OutcomeKind, Usage};
use crate::sandbox::Digest;
use crate::store::{AttemptStatus, ComponentRecord, RecoveredRun, WorkflowRecord};
use crate::workflow::Workflow;

/// The journal's record of `workflow`: its text and each step's component
/// bytes, read again and checked against what was loaded.
pub(super) fn record(
    workflow: &Workflow,
    components: &[impl Component],
) -> Result<Arc<WorkflowRecord>, PrepareError> {
    let mut read: HashMap<&Path, ComponentRecord> = HashMap::new();
    let mut records = Vec::with_capacity(components.len());
    for (step, component) in workflow.steps.iter().zip(components) {
        if let Some(known) = read.get(&*step.component) {
            records.push(known.clone());
            continue;
        }
        let bytes = std::fs::read(&step.component).map_err(|e| PrepareError::Record {
            path: step.component.to_path_buf(),
            message: e.to_string(),
        })?;
        if Digest::of(&bytes) != component.digest() {
            return Err(PrepareError::Record {
                path: step.component.to_path_buf(),
                message: "the file changed while it was being loaded".into(),
            });
        }
        let record = ComponentRecord {
            digest: component.digest().to_string(),
            name: component.name().to_owned(),
            bytes: bytes.into(),
        };
        read.insert(&step.component, record.clone());
        records.push(record);
    }
    let path = workflow.source.display().to_string();
    let mut hash = Sha256::new();
    hash.update(path.as_bytes());
    hash.update([0]);
    hash.update(workflow.text().as_bytes());
    for c in &records {
        hash.update([0]);
        hash.update(c.digest.as_bytes());
    }
    let digest = Digest(hash.finalize().into()).to_string();
    Ok(Arc::new(WorkflowRecord {
        digest,
        name: workflow.name.clone(),
        path,
        source: workflow.text().to_owned(),
        components: records,
    }))
}

/// The workflow and components a run was accepted with, from its record.
pub(super) fn rebuild<R: StepRunner>(
    runner: &R,
    record: &WorkflowRecord,
) -> Result<(Workflow, Vec<R::Component>), String> {
    let workflow = Workflow::from_str(&record.source, &PathBuf::from(&record.path))
        .map_err(|e| format!("its recorded definition no longer loads: {e}"))?;
    if workflow.steps.len() != record.components.len() {
        return Err(format!(
            "its record has {} components for {} steps",
            record.components.len(),
            workflow.steps.len()
        ));
    }
    let mut loaded: HashMap<&str, R::Component> = HashMap::new();
    let mut components = Vec::with_capacity(record.components.len());
    for c in &record.components {
        if let Some(component) = loaded.get(c.digest.as_str()) {
            components.push(component.clone());
            continue;
        }
        let component = runner
            .load_bytes(&c.name, &c.bytes)
            .map_err(|e| format!("its component `{}` no longer loads: {e}", c.name))?;
        if component.digest().to_string() != c.digest {
            return Err(format!(
                "its component `{}` does not match its recorded digest",
                c.name
            ));
        }
        loaded.insert(&c.digest, component.clone());
        components.push(component);
    }
    Ok((workflow, components))
}

/// A unit of work: a step, or one item of a `for_each` step.
pub(super) type Unit = (usize, Option<u32>);

/// How a unit ended for good before the run was resumed.
#[derive(Debug, Clone)]
pub(super) struct Done {
    pub(super) output: Option<Value>,
    pub(super) outcome: OutcomeKind,
    pub(super) message: Option<String>,
    pub(super) attempt: u32,
    pub(super) usage: Usage,
}

/// What a resumed run already did.
#[derive(Debug, Default)]
pub(super) struct Resume {
    done: HashMap<Unit, Done>,
    attempts: HashMap<Unit, u32>,
    pub(super) state: Vec<(String, String)>,
}

impl Resume {
    pub(super) fn new<R: StepRunner>(wf: &PreparedWorkflow<R>, run: &RecoveredRun) -> Resume {
        let index = |step: &str| wf.workflow.step_index(step);
        let done = run
            .done
            .iter()
            .filter_map(|a| {
                let outcome = a.outcome.unwrap_or(OutcomeKind::HostFailure);
                let output = match a.status {
                    AttemptStatus::Completed => Some(
                        a.output
                            .as_deref()
                            .map(|o| serde_json::from_slice(o).unwrap_or(Value::Null))
                            .unwrap_or(Value::Null),
                    ),
                    _ => None,
                };
                Some((
                    (index(&a.step)?, a.item),
                    Done {
                        output,
                        outcome,
                        message: a.message.clone(),
                        attempt: a.attempt,
                        usage: a.usage,
                    },
                ))
            })
            .collect();
        let attempts = run
            .attempts
            .iter()
            .filter_map(|(step, item, n)| Some(((index(step)?, *item), *n)))
            .collect();
        Resume {
            done,
            attempts,
            state: run.state.clone(),
        }
    }

    /// How `unit` ended, if it ended for good before the resume.
    pub(super) fn done(&self, unit: Unit) -> Option<&Done> {
        self.done.get(&unit)
    }

    /// Attempts recorded at `unit` before the resume.
    pub(super) fn attempts(&self, unit: Unit) -> u32 {
        self.attempts.get(&unit).copied().unwrap_or(0)
    }
}
