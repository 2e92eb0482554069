//! A YAML document as a tree of nodes that remember where they were written.
//!
//! The loader walks this tree itself (instead of deriving `Deserialize` for the
//! file format) so that every validation error, not only syntax errors, can
//! name its field and point at its line and column.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::Location;

/// One YAML node and the position of its first character.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) loc: Location,
    pub(crate) value: Value,
}

/// A mapping key and its position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Key {
    pub(crate) name: String,
    pub(crate) loc: Location,
}

/// The value of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

impl Value {
    /// What this value is, for "expected X, found Y" messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::UInt(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

fn location(loc: &serde_saphyr::Location) -> Location {
    Location {
        line: usize::try_from(loc.line()).unwrap_or(usize::MAX),
        column: usize::try_from(loc.column()).unwrap_or(usize::MAX),
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Bare>::deserialize(d)?;
        Ok(Node {
            loc: location(&spanned.referenced),
            value: spanned.value.0,
        })
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<String>::deserialize(d)?;
        Ok(Key {
            loc: location(&spanned.referenced),
            name: spanned.value,
        })
    }
}

/// A value without its own position (its children have theirs).
struct Bare(Value);

impl<'de> Deserialize<'de> for Bare {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BareVisitor).map(Bare)
    }
}

struct BareVisitor;

impl<'de> Visitor<'de> for BareVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::UInt(v))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom(format!("integer {v} is out of range")))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        u64::try_from(v)
            .map(Value::UInt)
            .map_err(|_| E::custom(format!("integer {v} is out of range")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Bare::deserialize(d).map(|b| b.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(key) = map.next_key::<Key>()? {
            let value = map.next_value::<Node>()?;
            entries.push((key, value));
        }
        Ok(Value::Map(entries))
    }
}

/// Parses one YAML (or JSON) document into a positioned tree.
pub(crate) fn parse(text: &str) -> Result<Node, (Location, String)> {
    serde_saphyr::from_str::<Node>(text).map_err(|e| {
        let loc = e
            .location()
            .map(|l| location(&l))
            .unwrap_or(Location { line: 1, column: 1 });
        let loc = if loc.line == 0 {
            Location { line: 1, column: 1 }
        } else {
            loc
        };
        (loc, one_line(&e))
    })
}

/// Parses a JSON document into a tree without positions, several times
/// faster than [`parse`]: the fast path for large, machine-written
/// workflows. `None` when it is not JSON; callers use [`parse`] for the
/// positions of any error.
pub(crate) fn parse_json_unpositioned(text: &str) -> Option<Node> {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .map(from_json)
}

/// JSON nests at most 128 deep (serde_json's limit), so recursion is safe.
fn from_json(value: serde_json::Value) -> Node {
    use serde_json::Value as J;
    let nowhere = Location { line: 0, column: 0 };
    let value = match value {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(b),
        J::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Value::UInt(u),
            (None, Some(i)) => Value::Int(i),
            (None, None) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::Str(s),
        J::Array(items) => Value::Seq(items.into_iter().map(from_json).collect()),
        J::Object(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(name, v)| (Key { name, loc: nowhere }, from_json(v)))
                .collect(),
        ),
    };
    Node { loc: nowhere, value }
}

/// The parser's message without its snippet or location suffix, on one line.
fn one_line(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    let first = text.lines().next().unwrap_or("invalid YAML").trim();
    // serde-saphyr appends " at line L, column C"; the error's position says that already.
    let message = match first.rfind(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    message.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_and_keys_carry_their_line_and_column() {
        let node = parse("a: 1\nb:\n  - x\n  - {c: true}\n").unwrap();
        let Value::Map(entries) = node.value else { panic!() };
        assert_eq!(entries[0].0.name, "a");
        assert_eq!(entries[0].0.loc, Location { line: 1, column: 1 });
        assert_eq!(entries[0].1.loc, Location { line: 1, column: 4 });
        assert_eq!(entries[1].0.loc, Location { line: 2, column: 1 });
        let Value::Seq(items) = &entries[1].1.value else {
            panic!()
        };
        assert_eq!(items[0].loc, Location { line: 3, column: 5 });
        assert_eq!(items[0].value, Value::Str("x".into()));
        let Value::Map(inner) = &items[1].value else {
            panic!()
        };
        assert_eq!(inner[0].0.loc, Location { line: 4, column: 6 });
        assert_eq!(inner[0].1.value, Value::Bool(true));
    }

    #[test]
    fn json_parses_to_the_same_tree_without_positions() {
        let text = r#"{"a": 1, "b": [-2, 2.5, null, "x", {"c": true}]}"#;
        fn strip(node: &mut Node) {
            node.loc = Location { line: 0, column: 0 };
            match &mut node.value {
                Value::Seq(items) => items.iter_mut().for_each(strip),
                Value::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
                    k.loc = Location { line: 0, column: 0 };
                    strip(v);
                }),
                _ => {}
            }
        }
        let mut slow = parse(text).unwrap();
        let mut fast = parse_json_unpositioned(text).unwrap();
        strip(&mut slow);
        strip(&mut fast);
        assert_eq!(fast, slow);
        assert!(parse_json_unpositioned("a: 1").is_none());
    }

    #[test]
    fn syntax_errors_report_a_position_and_one_line() {
        let (loc, message) = parse("a: 1\nb: [1, 2\n").unwrap_err();
        assert!(loc.line >= 2, "{loc:?} {message}");
        assert!(!message.contains('\n'), "{message}");
    }
}
