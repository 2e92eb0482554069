//! A YAML document as a tree of nodes that remember where they were written.
//!
//! The loader walks this tree itself (instead of deriving `Deserialize` for the
//! file format) so that every validation error, not only syntax errors, can
//! name its field and point at its line and column.

use std::fmt;
use std::marker::PhantomData;

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
        d.deserialize_any(BareVisitor::<Positioned>(PhantomData))
            .map(Bare)
    }
}

/// How the children of a value are read: with their positions (from
/// serde-saphyr) or without (from any other deserializer).
trait Children<'de> {
    type Node: Deserialize<'de> + Into<Node>;
    type Key: Deserialize<'de> + Into<Key>;
    /// The value inside a `Some`.
    fn some<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error>;
}

struct Positioned;

impl<'de> Children<'de> for Positioned {
    type Node = Node;
    type Key = Key;
    fn some<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        Bare::deserialize(d).map(|b| b.0)
    }
}

/// A node read without positions: every location is 0:0.
struct Flat(Node);

struct FlatKey(String);

const NOWHERE: Location = Location { line: 0, column: 0 };

impl From<Flat> for Node {
    fn from(flat: Flat) -> Node {
        flat.0
    }
}

impl From<FlatKey> for Key {
    fn from(key: FlatKey) -> Key {
        Key {
            name: key.0,
            loc: NOWHERE,
        }
    }
}

impl<'de> Deserialize<'de> for Flat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BareVisitor::<Flat>(PhantomData))
            .map(|value| Flat(Node { loc: NOWHERE, value }))
    }
}

impl<'de> Deserialize<'de> for FlatKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(FlatKey)
    }
}

impl<'de> Children<'de> for Flat {
    type Node = Flat;
    type Key = FlatKey;
    fn some<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        Flat::deserialize(d).map(|f| f.0.value)
    }
}

struct BareVisitor<C>(PhantomData<C>);

impl<'de, C: Children<'de>> Visitor<'de> for BareVisitor<C> {
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
        C::some(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element::<C::Node>()? {
            items.push(item.into());
        }
        Ok(Value::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(key) = map.next_key::<C::Key>()? {
            let value = map.next_value::<C::Node>()?;
            entries.push((key.into(), value.into()));
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

/// Parses a JSON document into a tree without positions, many times
/// faster than [`parse`]: the fast path for large, machine-written
/// workflows. `None` when it is not JSON; callers use [`parse`] for the
/// positions of any error.
///
/// serde_json nests at most 128 deep, so the recursion is bounded.
pub(crate) fn parse_json_unpositioned(text: &str) -> Option<Node> {
    serde_json::from_str::<Flat>(text).ok().map(|flat| flat.0)
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
