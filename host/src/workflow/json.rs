//! The fast path for large workflows, which programs write as JSON: one
//! pass over the text, each step read straight into its definition as it
//! is parsed, with no tree of the whole document and no positions.
//!
//! It only answers "here is the workflow" or "no": a file it cannot read
//! (bad, or merely unusual, such as `defaults` after `steps`) is read again
//! by the slower paths, which also say what is wrong and where.

use std::fmt;
use std::path::Path;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::Workflow;
use super::load::{self, STEP_FIELDS, Steps, WORKFLOW_FIELDS};
use super::node::{Flat, FlatKey, NOWHERE, Node};

/// The workflow in `text`, or `None` if this path cannot read it.
pub(super) fn load(text: &str, source: &Path) -> Option<Workflow> {
    let mut de = serde_json::Deserializer::from_str(text);
    let workflow = WorkflowSeed {
        source,
        capacity: step_count_guess(text),
    }
    .deserialize(&mut de)
    .ok()?;
    de.end().ok()?;
    Some(workflow)
}

/// About how many steps `text` holds, so the steps are read into lists
/// that never grow: growing a list of 10,000 definitions copies megabytes.
/// Each step has an `"id"`; the count is capped by the shortest step, so a
/// file full of `"id"` strings cannot reserve much more than its own size.
fn step_count_guess(text: &str) -> usize {
    const SHORTEST_STEP: usize = r#"{"id":"a","component":"b"}"#.len();
    memchr::memmem::find_iter(text.as_bytes(), br#""id""#)
        .count()
        .min(text.len() / SHORTEST_STEP)
}

/// Any error: the caller only needs to know that this path gave up.
fn give_up<E: de::Error>() -> E {
    E::custom("not readable by the fast path")
}

/// Where in `WORKFLOW_FIELDS` the step list is, and the workflow's defaults.
const STEPS: usize = 5;
const DEFAULTS: usize = 3;

struct WorkflowSeed<'s> {
    source: &'s Path,
    /// How many steps to make room for.
    capacity: usize,
}

impl<'de> DeserializeSeed<'de> for WorkflowSeed<'_> {
    type Value = Workflow;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Workflow, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for WorkflowSeed<'_> {
    type Value = Workflow;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a workflow")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Workflow, A::Error> {
        let mut fields: [Option<Node<'de>>; STEPS] = Default::default();
        let mut steps = None;
        while let Some(key) = map.next_key::<FlatKey<'de>>()? {
            let slot = WORKFLOW_FIELDS
                .iter()
                .position(|f| *f == key.as_str())
                .ok_or_else(give_up)?;
            if slot == STEPS {
                if steps.is_some() {
                    return Err(give_up());
                }
                // Steps inherit the defaults as they are read, so defaults
                // written after the steps are left to the slower path.
                let defaults = load::defaults(fields[DEFAULTS].as_ref()).map_err(|_| give_up())?;
                let steps_seed = StepsSeed {
                    steps: Steps::new(self.source, defaults, self.capacity),
                };
                steps = Some(map.next_value_seed(steps_seed)?);
            } else {
                if fields[slot].is_some() || (slot == DEFAULTS && steps.is_some()) {
                    return Err(give_up());
                }
                fields[slot] = Some(map.next_value::<Flat<'de>>()?.0);
            }
        }
        let steps = steps.ok_or_else(give_up)?;
        // The defaults were read, and checked, when the steps came.
        fields[DEFAULTS] = None;
        let (header, _) =
            load::header(fields.each_ref().map(Option::as_ref), NOWHERE).map_err(|_| give_up())?;
        load::finish(header, steps, NOWHERE, self.source).map_err(|_| give_up())
    }
}

struct StepsSeed<'s, 'de> {
    steps: Steps<'s, 'de>,
}

impl<'s, 'de> DeserializeSeed<'de> for StepsSeed<'s, 'de> {
    type Value = Steps<'s, 'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Steps<'s, 'de>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'s, 'de> Visitor<'de> for StepsSeed<'s, 'de> {
    type Value = Steps<'s, 'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of steps")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Steps<'s, 'de>, A::Error> {
        while seq
            .next_element_seed(StepSeed {
                steps: &mut self.steps,
            })?
            .is_some()
        {}
        Ok(self.steps)
    }
}

/// Reads one step into `steps`, holding only that step's fields.
struct StepSeed<'a, 's, 'de> {
    steps: &'a mut Steps<'s, 'de>,
}

impl<'de> DeserializeSeed<'de> for StepSeed<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for StepSeed<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a step")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut fields: [Option<Node<'de>>; STEP_FIELDS.len()] = Default::default();
        while let Some(key) = map.next_key::<FlatKey<'de>>()? {
            let slot = STEP_FIELDS
                .iter()
                .position(|f| *f == key.as_str())
                .ok_or_else(give_up)?;
            if fields[slot].is_some() {
                return Err(give_up());
            }
            fields[slot] = Some(map.next_value::<Flat<'de>>()?.0);
        }
        self.steps
            .read(fields.each_ref().map(Option::as_ref), NOWHERE)
            .map_err(|_| give_up())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_positions_name_the_fields_they_stand_for() {
        assert_eq!(WORKFLOW_FIELDS[STEPS], "steps");
        assert_eq!(WORKFLOW_FIELDS[DEFAULTS], "defaults");
    }

    #[test]
    fn the_step_count_guess_counts_ids_but_never_beyond_the_shortest_steps() {
        let text = r#"{"steps": [{"id": "a", "component": "a.wasm"}, {"id": "b", "component": "a.wasm"}]}"#;
        assert_eq!(step_count_guess(text), 2);
        assert_eq!(step_count_guess(&r#""id""#.repeat(100)), 400 / 26);
    }
}
