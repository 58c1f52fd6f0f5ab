//! Parsing: YAML text to a tree of nodes that each know their position.
//!
//! Schemas are read into this generic tree rather than straight into typed structs, so
//! validation can report every mistake of a file (unknown keys with suggestions, wrong
//! kinds, duplicate keys) instead of stopping at the first.

use std::fmt;
use std::path::Path;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use crate::diagnostic::{Diagnostic, Span};

/// A YAML value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `~`, `null` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order (duplicates kept, so they can be reported).
    Map(Vec<(Key, Node)>),
}

/// A mapping key with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    /// The key text.
    pub name: String,
    /// Where it is.
    pub span: Span,
}

/// A value with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Where it is.
    pub span: Span,
    /// A boolean's spelling in the file (`no`, `On`, `TRUE`): YAML 1.1 reads these words
    /// as booleans, but where the schema expects text (a string field's default) the
    /// word is what the author wrote.
    pub spelling: Option<String>,
}

impl Node {
    /// What kind of value this is, for messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as text where text is expected: a string, or a boolean word as written
    /// (`default: no` on a string field is the string "no").
    pub fn as_text(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            Value::Bool(_) => self.spelling.as_deref(),
            _ => None,
        }
    }
}

/// What serde-saphyr hands us: values wrapped in `Spanned` at every level.
struct Raw(Value);

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawKey(String);

impl<'de> Deserialize<'de> for RawKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Keys are names: read as the text written, never resolved, so `n:`, `on:` or
        // `1:` are the names "n", "on" and "1" (YAML 1.1 would read `n` as false).
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = RawKey;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key that is a plain scalar")
    }
    fn visit_str<E>(self, v: &str) -> Result<RawKey, E> {
        Ok(RawKey(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<RawKey, E> {
        Ok(RawKey(v))
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw(Value::Null))
    }
    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw(Value::Int(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        i64::try_from(v)
            .map(|v| Raw(Value::Int(v)))
            .map_err(|_| E::custom(format!("integer {v} is too large")))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Raw, E> {
        i64::try_from(v)
            .map(|v| Raw(Value::Int(v)))
            .map_err(|_| E::custom(format!("integer {v} is too large")))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Raw, E> {
        i64::try_from(v)
            .map(|v| Raw(Value::Int(v)))
            .map_err(|_| E::custom(format!("integer {v} is too large")))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw(Value::Float(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw(Value::Str(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw(Value::Str(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Raw>>()? {
            items.push(item);
        }
        Ok(Raw(Value::Seq(
            items
                .into_iter()
                .map(PendingNode::from)
                .map(|p| p.0)
                .collect(),
        )))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<RawKey>>()? {
            let value = map.next_value::<Spanned<Raw>>()?;
            entries.push((key, value));
        }
        Ok(Raw(Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let key = Key {
                        name: k.value.0,
                        span: pending_span(&k.referenced),
                    };
                    (key, PendingNode::from(v).0)
                })
                .collect(),
        )))
    }
}

/// Spans are built without the file name (the visitor does not know it) and filled in
/// by [`set_file`] afterwards.
struct PendingNode(Node);

impl From<Spanned<Raw>> for PendingNode {
    fn from(s: Spanned<Raw>) -> Self {
        PendingNode(Node {
            value: s.value.0,
            span: pending_span(&s.referenced),
            spelling: None,
        })
    }
}

fn pending_span(location: &serde_saphyr::Location) -> Span {
    Span {
        file: Default::default(),
        line: location.line(),
        column: location.column(),
        offset: location
            .span()
            .byte_offset()
            .and_then(|o| usize::try_from(o).ok()),
    }
}

/// Fills in the file of every span and the spelling of every boolean (read from the
/// text at its offset; a boolean reached through an alias or a tag keeps none).
fn set_file(node: &mut Node, file: &Path, text: &str) {
    node.span.file = file.to_owned();
    match &mut node.value {
        Value::Seq(items) => items.iter_mut().for_each(|n| set_file(n, file, text)),
        Value::Map(entries) => {
            for (k, v) in entries {
                k.span.file = file.to_owned();
                set_file(v, file, text);
            }
        }
        Value::Bool(_) => node.spelling = boolean_word_at(text, node.span.offset),
        _ => {}
    }
}

/// The YAML 1.1 boolean word that starts at `offset`, if one does.
fn boolean_word_at(text: &str, offset: Option<usize>) -> Option<String> {
    let rest = text.get(offset?..)?;
    let end = rest
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    let word = &rest[..end];
    const WORDS: &[&str] = &["y", "yes", "n", "no", "true", "false", "on", "off"];
    WORDS
        .iter()
        .any(|w| w.eq_ignore_ascii_case(word))
        .then(|| word.to_owned())
}

/// Parses one YAML document. A syntax error is one located diagnostic.
pub fn parse(text: &str, file: &Path) -> Result<Node, Box<Diagnostic>> {
    let result: Result<Spanned<Raw>, _> = serde_saphyr::from_str(text);
    match result {
        Ok(root) => {
            let mut node = PendingNode::from(root).0;
            set_file(&mut node, file, text);
            Ok(node)
        }
        Err(e) => {
            let mut span = e.location().map(|l| pending_span(&l)).unwrap_or(Span {
                line: 1,
                column: 1,
                ..Span::default()
            });
            span.file = file.to_owned();
            Err(Box::new(Diagnostic::error(&span, {
                let sentence = first_line(&e.to_string());
                if sentence.starts_with("duplicate key") {
                    sentence
                } else {
                    format!("invalid YAML: {sentence}")
                }
            })))
        }
    }
}

/// The parser's sentence without its own `error: line N column M:` prefix (the
/// diagnostic carries the position) and without advice about parser options.
fn first_line(message: &str) -> String {
    let mut line = message.lines().next().unwrap_or("").trim();
    line = line.strip_prefix("error:").unwrap_or(line).trim_start();
    if let Some((_, after)) = line
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
    {
        line = after;
    }
    if let Some(rest) = line.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(',').next().unwrap_or(rest).trim();
        return format!("duplicate key `{key}`");
    }
    line.trim_end_matches('.').to_owned()
}
