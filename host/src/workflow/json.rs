//! The fast path for large workflows, which programs write as JSON: one
//! pass over the text, each step read straight into its definition as it
//! is parsed, with no tree of the whole document and no positions. A large
//! file is read in two halves at once, on two cores.
//!
//! It only answers "here is the workflow" or "no": a file it cannot read
//! (bad, or merely unusual, such as `defaults` after `steps`) is read again
//! by the slower paths, which also say what is wrong and where.

use std::fmt;
use std::path::Path;
use std::sync::mpsc;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::Workflow;
use super::load::{self, Defaults, STEP_FIELDS, Steps, WORKFLOW_FIELDS};
use super::node::{Flat, FlatKey, NOWHERE, Node};

/// Files smaller than this are read in one piece: splitting one costs two
/// copies of its text and a thread, worth it only for thousands of steps.
const SPLIT_FROM: usize = 256 * 1024;

/// The workflow in `text`, or `None` if this path cannot read it.
pub(super) fn load(text: &str, source: &Path) -> Option<Workflow> {
    if text.len() >= SPLIT_FROM
        && let Some(comma) = split_point(text)
        && let Some(workflow) = load_halves(text, comma, source)
    {
        return Some(workflow);
    }
    finish(parse(text, source, None, Inherit::Own(None))?, None, source)
}

/// Reads `text` in two halves at once, one on a [`helper`] thread: the
/// steps before the comma at `comma` and the steps after it.
///
/// The first half is the text up to the comma, closed with `]}`; the
/// second is `{"steps":[` followed by the text after it. Where the comma
/// separates two steps, the two halves hold every field and step of the
/// file, in order, and each half reads as the whole would have read its
/// part. The first half proves it: it must end with its step list, so the
/// `]` appended closed the list of steps, so the comma was between two of
/// them. A comma anywhere else (in a step's input, say) gives `None`, and
/// the file is read in one piece.
fn load_halves(text: &str, comma: usize, source: &Path) -> Option<Workflow> {
    let helper = helper()?;
    let first = [&text[..comma], "]}"].concat();
    let second = [r#"{"steps":["#, &text[comma + 1..]].concat();
    let (send, receive) = mpsc::sync_channel(1);
    // The first half's lists get room for the second's, which are appended.
    let second_room = step_count_guess(&second);
    let first_room = step_count_guess(&first) + second_room;
    // The second half on the helper thread, the first on this one,
    // meanwhile. The first hands the defaults to the second when it has them.
    let mut second_parsed = None;
    let first = helper.in_place_scope(|scope| {
        scope.spawn(|_| second_parsed = parse(&second, source, Some(second_room), Inherit::From(receive)));
        parse(&first, source, Some(first_room), Inherit::Own(Some(send)))
    });
    let second = second_parsed;
    let (first, second) = (first?, second?);
    // Both halves hold steps, and the first ends with them; the second
    // starts with them by construction.
    if !first.steps_last || first.steps.as_ref()?.len() == 0 || second.steps.as_ref()?.len() == 0 {
        return None;
    }
    finish(first, Some(second), source)
}

/// The thread that reads second halves, started with the first large
/// file: one thread kept for the process rather than one per file, because
/// a fresh thread's heap is cold (it read its half at half the speed). Its
/// own pool, not rayon's global one, so an embedder's use of that pool
/// neither waits on a load nor delays one. `None` if it cannot be started:
/// files are then read in one piece.
fn helper() -> Option<&'static rayon::ThreadPool> {
    static HELPER: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    HELPER
        .get_or_init(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .thread_name(|_| "stepbox-load".into())
                .build()
                .ok()
        })
        .as_ref()
}

/// Where to cut `text` in two: a comma about halfway through that looks
/// like the one between two steps. Steps are written alike, so it looks
/// for a `{` and first key written exactly as the first step's are (spaces
/// and indentation too), after a comma. Only a guess, which
/// [`load_halves`] checks; in pretty-printed files the indentation tells
/// steps from the objects inside them.
fn split_point(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let steps = memchr::memmem::find(bytes, br#""steps""#)?;
    let list = bytes[steps + br#""steps""#.len()..]
        .trim_ascii_start()
        .strip_prefix(b":")?
        .trim_ascii_start()
        .strip_prefix(b"[")?;
    let first = list.trim_ascii_start();
    let key = first.strip_prefix(b"{")?.trim_ascii_start().strip_prefix(b"\"")?;
    let key_len = memchr::memchr(b'"', key)?;
    if !STEP_FIELDS.iter().any(|f| f.as_bytes() == &key[..key_len]) {
        return None;
    }
    // From the `{` to the key's closing quote.
    let shape = &first[..first.len() - key.len() + key_len + 1];
    let from = text.len() / 2;
    memchr::memmem::find_iter(&bytes[from..], shape)
        .take(64)
        .find_map(|at| {
            let before = bytes[..from + at].trim_ascii_end();
            before.ends_with(b",").then(|| before.len() - 1)
        })
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

/// Where a document's steps get the defaults they inherit.
enum Inherit {
    /// From its own `defaults`, which come before its steps; passed on to
    /// the reader of the file's other half, if there is one.
    Own(Option<mpsc::SyncSender<Defaults>>),
    /// From the reader of the file's first half (the second half holds no
    /// `defaults`: they come before the steps).
    From(mpsc::Receiver<Defaults>),
}

/// What one document holds: the workflow's fields but its steps, in the
/// order of `WORKFLOW_FIELDS`, and its steps.
struct Parsed<'s, 'de> {
    fields: [Option<Node<'de>>; STEPS],
    steps: Option<Steps<'s, 'de>>,
    /// No field comes after the steps.
    steps_last: bool,
}

/// Reads the document `text`, with room for `room` steps (by default, as
/// many as it seems to hold), or gives `None`.
fn parse<'s, 'de>(
    text: &'de str,
    source: &'s Path,
    room: Option<usize>,
    inherit: Inherit,
) -> Option<Parsed<'s, 'de>> {
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = WorkflowSeed {
        source,
        capacity: room.unwrap_or_else(|| step_count_guess(text)),
        inherit,
    }
    .deserialize(&mut de)
    .ok()?;
    de.end().ok()?;
    Some(parsed)
}

/// The workflow from a document's fields and steps, and those of the
/// file's second half if it was read in two.
fn finish<'s, 'de>(
    mut parsed: Parsed<'s, 'de>,
    second: Option<Parsed<'s, 'de>>,
    source: &Path,
) -> Option<Workflow> {
    let mut steps = parsed.steps?;
    // The defaults were read, and checked, when the steps came.
    parsed.fields[DEFAULTS] = None;
    if let Some(second) = second {
        for (field, other) in parsed.fields.iter_mut().zip(second.fields) {
            match (&field, other) {
                // Written twice: the slower path says so.
                (Some(_), Some(_)) => return None,
                (None, Some(other)) => *field = Some(other),
                _ => {}
            }
        }
        steps.append(second.steps?);
    }
    let (header, _) = load::header(parsed.fields.each_ref().map(Option::as_ref), NOWHERE).ok()?;
    load::finish(header, steps, NOWHERE, source).ok()
}

struct WorkflowSeed<'s> {
    source: &'s Path,
    /// How many steps to make room for.
    capacity: usize,
    inherit: Inherit,
}

impl<'s, 'de> DeserializeSeed<'de> for WorkflowSeed<'s> {
    type Value = Parsed<'s, 'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Parsed<'s, 'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'s, 'de> Visitor<'de> for WorkflowSeed<'s> {
    type Value = Parsed<'s, 'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a workflow")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed<'s, 'de>, A::Error> {
        let mut fields: [Option<Node<'de>>; STEPS] = Default::default();
        let mut steps = None;
        let mut steps_last = false;
        let mut inherit = Some(self.inherit);
        while let Some(key) = map.next_key::<FlatKey<'de>>()? {
            let slot = WORKFLOW_FIELDS
                .iter()
                .position(|f| *f == key.as_str())
                .ok_or_else(give_up)?;
            steps_last = slot == STEPS;
            if slot == STEPS {
                // Steps inherit the defaults as they are read, so defaults
                // written after the steps are left to the slower path.
                let defaults = match inherit.take().ok_or_else(give_up)? {
                    Inherit::Own(share) => {
                        let defaults = load::defaults(fields[DEFAULTS].as_ref()).map_err(|_| give_up())?;
                        if let Some(share) = share {
                            share.send(defaults.clone()).map_err(|_| give_up())?;
                        }
                        defaults
                    }
                    Inherit::From(receive) => receive.recv().map_err(|_| give_up())?,
                };
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
        Ok(Parsed {
            fields,
            steps,
            steps_last,
        })
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
    use crate::workflow::load::summary;

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

    /// A workflow of `n` steps, pretty-printed as people and most programs
    /// write JSON: defaults the steps inherit, an output after the steps,
    /// needs across the whole list, templates, escapes, and inputs holding
    /// lists of objects with an `"id"` (commas that are not between steps).
    fn big(n: usize) -> String {
        let steps: Vec<serde_json::Value> = (0..n)
            .map(|i| {
                let needs: Vec<String> = [i / 2, i.saturating_sub(1)]
                    .into_iter()
                    .filter(|&j| j < i)
                    .map(|j| format!("s{j}"))
                    .collect();
                let mut step = serde_json::json!({
                    "id": format!("s{i}"),
                    "component": if i % 7 == 0 { "b\\\"q.wasm" } else { "a.wasm" },
                    "needs": needs,
                    "input": {"rows": [{"id": i, "v": "${input.x}"}, {"id": i + 1}]},
                });
                if i % 5 == 0 {
                    step["fuel"] = serde_json::json!(i + 1);
                    step["retry"] = serde_json::json!({"max_attempts": 2});
                }
                step
            })
            .collect();
        let mut text = serde_json::to_string_pretty(&serde_json::json!({
            "name": "big",
            "defaults": {"fuel": 1000, "memory": "1MiB", "timeout": "5s", "retry": {"max_attempts": 3}},
            "steps": steps,
        }))
        .unwrap();
        // After the steps, where the second half finds it.
        let end = text.rfind('}').unwrap();
        text.insert_str(
            end,
            &format!(r#", "output": {{"last": "${{steps.s{}}}"}}"#, n - 1),
        );
        text
    }

    fn one_piece(text: &str) -> Workflow {
        finish(
            parse(text, Path::new("flows/w.json"), None, Inherit::Own(None)).unwrap(),
            None,
            Path::new("flows/w.json"),
        )
        .unwrap()
    }

    #[test]
    fn a_large_file_read_in_halves_reads_what_one_pass_reads() {
        let text = big(3_000);
        assert!(text.len() >= SPLIT_FROM, "{} bytes", text.len());
        let comma = split_point(&text).expect("a comma between steps");
        let halves = load_halves(&text, comma, Path::new("flows/w.json")).expect("read in halves");
        let whole = one_piece(&text);
        assert_eq!(summary(&halves), summary(&whole));
        assert_eq!(halves.steps.len(), 3_000);
        // Steps of the second half inherited the defaults too.
        let last = halves.steps.last().unwrap();
        assert_eq!((last.limits.fuel, last.retry.max_attempts), (Some(1000), 3));
        assert!(halves.output.is_some());
        // And the public entry point takes this path.
        assert_eq!(
            summary(&load(&text, Path::new("flows/w.json")).unwrap()),
            summary(&whole)
        );
    }

    #[test]
    fn a_cut_anywhere_but_between_two_steps_is_refused() {
        let text = big(50);
        let source = Path::new("flows/w.json");
        let between = text.find("},\n    {\n      \"component\"").unwrap() + 1;
        assert_eq!(
            summary(&load_halves(&text, between, source).unwrap()),
            summary(&one_piece(&text))
        );
        // Inside a step's input, between two objects with an "id".
        let inside = text.find(r#""id": 3,"#).unwrap();
        let inside = inside + text[inside..].find("},").unwrap() + 1;
        assert_eq!(&text[inside..inside + 1], ",");
        assert!(load_halves(&text, inside, source).is_none());
        // Between two of a step's fields, and between two needs.
        let field = text.find(r#""fuel": 6,"#).unwrap();
        let field = text[..field].rfind(',').unwrap();
        assert!(load_halves(&text, field, source).is_none());
        let need = text.find(r#""s1","#).unwrap() + 4;
        assert!(load_halves(&text, need, source).is_none());
        // Between two objects of a list after the steps that look like
        // steps: both halves read, but the first does not end with its
        // steps, so the cut was not between two of them.
        let output = text.rfind(r#", "output""#).unwrap();
        let tricky = format!(
            r#"{}, "output": [{{"id": "x", "component": "a.wasm"}}, {{"id": "y", "component": "a.wasm"}}]}}"#,
            &text[..output]
        );
        let cut = tricky.rfind("}, {").unwrap() + 1;
        assert!(one_piece(&tricky).step_index("y").is_none());
        assert!(load_halves(&tricky, cut, source).is_none());
        // Between two workflow fields.
        let header = text.find(r#""steps""#).unwrap();
        let header = text[..header].rfind(',').unwrap();
        assert!(load_halves(&text, header, source).is_none());
    }

    #[test]
    fn a_field_written_before_and_after_the_steps_is_left_to_the_slower_path() {
        let mut text = big(3_000);
        let end = text.rfind('}').unwrap();
        text.insert_str(end, r#", "name": "again""#);
        let comma = split_point(&text).unwrap();
        assert!(load_halves(&text, comma, Path::new("w.json")).is_none());
        assert!(load(&text, Path::new("w.json")).is_none());
    }
}
