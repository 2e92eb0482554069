//! A YAML document as a tree of nodes that remember where they were written.
//!
//! The loader walks this tree itself (instead of deriving `Deserialize` for the
//! file format) so that every validation error, not only syntax errors, can
//! name its field and point at its line and column.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::Location;

/// One YAML node and the position of its first character.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node<'a> {
    pub(crate) loc: Location,
    pub(crate) value: Value<'a>,
}

/// A mapping key and its position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Key<'a> {
    pub(crate) name: Cow<'a, str>,
    pub(crate) loc: Location,
}

/// The value of a [`Node`]. Strings borrow from the document where the
/// parser allows it (no escapes), which saves an allocation per string in
/// large workflows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Seq(Vec<Node<'a>>),
    Map(Vec<(Key<'a>, Node<'a>)>),
}

impl Value<'_> {
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

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Bare<'de>>::deserialize(d)?;
        Ok(Node {
            loc: location(&spanned.referenced),
            value: spanned.value.0,
        })
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Text<'de>>::deserialize(d)?;
        Ok(Key {
            loc: location(&spanned.referenced),
            name: spanned.value.0,
        })
    }
}

/// A string that borrows from the document when it can.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

/// A value without its own position (its children have theirs).
struct Bare<'a>(Value<'a>);

impl<'de> Deserialize<'de> for Bare<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BareVisitor::<Positioned>(PhantomData))
            .map(Bare)
    }
}

/// How the children of a value are read: with their positions (from
/// serde-saphyr) or without (from any other deserializer).
trait Children<'de> {
    type Node: Deserialize<'de> + Into<Node<'de>>;
    type Key: Deserialize<'de> + Into<Key<'de>>;
    /// The value inside a `Some`.
    fn some<D: Deserializer<'de>>(d: D) -> Result<Value<'de>, D::Error>;
}

/// Children read with their positions, from serde-saphyr.
struct Positioned;

impl<'de> Children<'de> for Positioned {
    type Node = Node<'de>;
    type Key = Key<'de>;
    fn some<D: Deserializer<'de>>(d: D) -> Result<Value<'de>, D::Error> {
        Bare::deserialize(d).map(|b| b.0)
    }
}

/// A node read without positions: every location is 0:0.
pub(crate) struct Flat<'a>(pub(crate) Node<'a>);

/// A mapping key read without its position.
pub(crate) struct FlatKey<'a>(Text<'a>);

impl FlatKey<'_> {
    /// The key's text.
    pub(crate) fn as_str(&self) -> &str {
        &self.0.0
    }
}

/// The position of everything read without positions.
pub(crate) const NOWHERE: Location = Location { line: 0, column: 0 };

impl<'a> From<Flat<'a>> for Node<'a> {
    fn from(flat: Flat<'a>) -> Node<'a> {
        flat.0
    }
}

impl<'a> From<FlatKey<'a>> for Key<'a> {
    fn from(key: FlatKey<'a>) -> Key<'a> {
        Key {
            name: key.0.0,
            loc: NOWHERE,
        }
    }
}

impl<'de> Deserialize<'de> for Flat<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BareVisitor::<Flat<'de>>(PhantomData))
            .map(|value| Flat(Node { loc: NOWHERE, value }))
    }
}

impl<'de> Deserialize<'de> for FlatKey<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Text::deserialize(d).map(FlatKey)
    }
}

impl<'de> Children<'de> for Flat<'de> {
    type Node = Flat<'de>;
    type Key = FlatKey<'de>;
    fn some<D: Deserializer<'de>>(d: D) -> Result<Value<'de>, D::Error> {
        Flat::deserialize(d).map(|f| f.0.value)
    }
}

struct BareVisitor<C>(PhantomData<C>);

impl<'de, C: Children<'de>> Visitor<'de> for BareVisitor<C> {
    type Value = Value<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value<'de>, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value<'de>, E> {
        Ok(Value::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value<'de>, E> {
        Ok(Value::UInt(v))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value<'de>, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom(format!("integer {v} is out of range")))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value<'de>, E> {
        u64::try_from(v)
            .map(Value::UInt)
            .map_err(|_| E::custom(format!("integer {v} is out of range")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value<'de>, E> {
        // Negative zero reads as the integer 0: YAML reads `-0` as an
        // integer and JSON parsers as the float -0.0, and a file must read
        // alike whichever parser reads it (found by the workflow_json fuzz
        // target).
        if v == 0.0 && v.is_sign_negative() {
            return Ok(Value::Int(0));
        }
        Ok(Value::Float(v))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Value<'de>, E> {
        Ok(Value::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value<'de>, E> {
        Ok(Value::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value<'de>, E> {
        Ok(Value::Str(Cow::Owned(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value<'de>, D::Error> {
        C::some(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element::<C::Node>()? {
            items.push(item.into());
        }
        Ok(Value::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value<'de>, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(key) = map.next_key::<C::Key>()? {
            let value = map.next_value::<C::Node>()?;
            entries.push((key.into(), value.into()));
        }
        Ok(Value::Map(entries))
    }
}

/// Parses one YAML (or JSON) document into a positioned tree.
pub(crate) fn parse(text: &str) -> Result<Node<'_>, (Location, String)> {
    serde_saphyr::from_str::<Node<'_>>(text).map_err(|e| {
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
pub(crate) fn parse_json_unpositioned(text: &str) -> Option<Node<'_>> {
    serde_json::from_str::<Flat<'_>>(text).ok().map(|flat| flat.0)
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
