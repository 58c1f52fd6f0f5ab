//! An ordered document tree and its two printers (JSON and YAML).
//!
//! `serde_json::Value` sorts object keys (the workspace does not enable
//! `preserve_order`, and turning it on would change the runtime's maps too), while
//! people read `asyncapi: 3.0.0` first and `type` before `properties`. Every string
//! reaches the output through `names::json_str` / `names::yaml_str`.

use std::fmt::Write as _;

use crate::model::Literal;
use crate::names;

/// A JSON value whose objects keep their insertion order.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Node {
    Null,
    Bool(bool),
    /// A number, already in JSON syntax.
    Num(String),
    Str(String),
    Arr(Vec<Node>),
    Obj(Vec<(String, Node)>),
}

impl Node {
    pub(crate) fn obj() -> Self {
        Node::Obj(Vec::new())
    }

    pub(crate) fn str(s: impl Into<String>) -> Self {
        Node::Str(s.into())
    }

    pub(crate) fn int(i: impl Into<i128>) -> Self {
        Node::Num(i.into().to_string())
    }

    /// Sets `key` (replacing an earlier value, keeping its place); no-op on non-objects.
    pub(crate) fn set(&mut self, key: &str, value: Node) {
        if let Node::Obj(entries) = self {
            match entries.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = value,
                None => entries.push((key.to_owned(), value)),
            }
        }
    }

    /// Builder form of [`Node::set`].
    pub(crate) fn with(mut self, key: &str, value: Node) -> Self {
        self.set(key, value);
        self
    }

    /// The value of `key` in an object.
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Obj(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A schema literal (default, `one_of` value) as a JSON value.
    pub(crate) fn literal(lit: &Literal) -> Self {
        match lit {
            Literal::Str(s) => Node::str(s.clone()),
            Literal::Int(i) => Node::int(*i),
            Literal::Float(f) => Node::Num(float(*f)),
            Literal::Bool(b) => Node::Bool(*b),
            Literal::List(items) => Node::Arr(items.iter().map(Node::literal).collect()),
            Literal::Map(entries) => Node::Obj(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), Node::literal(v)))
                    .collect(),
            ),
        }
    }

    /// Pretty JSON, two-space indents, a final newline.
    pub(crate) fn to_json(&self) -> String {
        let mut out = String::new();
        self.json(&mut out, 0, names::json_str);
        out.push('\n');
        out
    }

    /// Compact JSON on one line.
    pub(crate) fn to_json_line(&self) -> String {
        let mut out = String::new();
        self.json_compact(&mut out, names::json_str);
        out
    }

    /// Pretty JSON for a person to read inside HTML: only quotes, backslashes and control
    /// characters escaped, so the caller must pass it through `names::html`.
    pub(crate) fn to_json_for_html(&self) -> String {
        let mut out = String::new();
        self.json(&mut out, 0, names::json_str_readable);
        out
    }

    /// [`Node::to_json_for_html`] on one line.
    pub(crate) fn to_json_line_for_html(&self) -> String {
        let mut out = String::new();
        self.json_compact(&mut out, names::json_str_readable);
        out
    }

    fn json(&self, out: &mut String, depth: usize, quote: fn(&str) -> String) {
        let pad = |out: &mut String, d: usize| {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', d * 2));
        };
        match self {
            Node::Arr(items) if !items.is_empty() => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    pad(out, depth + 1);
                    item.json(out, depth + 1, quote);
                }
                pad(out, depth);
                out.push(']');
            }
            Node::Obj(entries) if !entries.is_empty() => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    pad(out, depth + 1);
                    out.push_str(&quote(k));
                    out.push_str(": ");
                    v.json(out, depth + 1, quote);
                }
                pad(out, depth);
                out.push('}');
            }
            scalar => scalar.json_compact(out, quote),
        }
    }

    fn json_compact(&self, out: &mut String, quote: fn(&str) -> String) {
        match self {
            Node::Null => out.push_str("null"),
            Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Node::Num(n) => out.push_str(n),
            Node::Str(s) => out.push_str(&quote(s)),
            Node::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.json_compact(out, quote);
                }
                out.push(']');
            }
            Node::Obj(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&quote(k));
                    out.push(':');
                    v.json_compact(out, quote);
                }
                out.push('}');
            }
        }
    }

    /// Block-style YAML (every string double-quoted), a final newline.
    pub(crate) fn to_yaml(&self) -> String {
        let mut out = String::new();
        match self {
            Node::Obj(entries) if !entries.is_empty() => yaml_entries(entries, &mut out, 0),
            Node::Arr(items) if !items.is_empty() => yaml_items(items, &mut out, 0),
            scalar => {
                out.push_str(&scalar.to_json_line());
                out.push('\n');
            }
        }
        out
    }
}

fn indent(out: &mut String, depth: usize) {
    out.extend(std::iter::repeat_n(' ', depth * 2));
}

/// Whether a value prints on its key's line (scalars and empty collections, in flow style).
fn inline(node: &Node) -> bool {
    match node {
        Node::Arr(items) => items.is_empty(),
        Node::Obj(entries) => entries.is_empty(),
        _ => true,
    }
}

fn yaml_entries(entries: &[(String, Node)], out: &mut String, depth: usize) {
    for (k, v) in entries {
        indent(out, depth);
        out.push_str(&names::yaml_key(k));
        out.push(':');
        yaml_value(v, out, depth);
    }
}

fn yaml_items(items: &[Node], out: &mut String, depth: usize) {
    for item in items {
        indent(out, depth);
        out.push('-');
        match item {
            Node::Obj(entries) if !entries.is_empty() => {
                // The first key shares the dash's line; the others align with it.
                let mut first = String::new();
                yaml_entries(entries, &mut first, depth + 1);
                out.push(' ');
                out.push_str(first.trim_start());
            }
            _ => yaml_value(item, out, depth),
        }
    }
}

fn yaml_value(v: &Node, out: &mut String, depth: usize) {
    if inline(v) {
        // JSON scalars and `[]` / `{}` are YAML flow values; strings are double-quoted.
        let _ = writeln!(out, " {}", v.to_json_line());
        return;
    }
    out.push('\n');
    match v {
        Node::Obj(entries) => yaml_entries(entries, out, depth + 1),
        Node::Arr(items) => yaml_items(items, out, depth + 1),
        _ => {}
    }
}

/// A float in JSON syntax (always with a fraction or exponent, so it stays a float).
pub(crate) fn float(f: f64) -> String {
    if !f.is_finite() {
        return "null".to_owned();
    }
    let s = format!("{f:?}");
    if s.contains(['.', 'e', 'E']) {
        s
    } else {
        format!("{s}.0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Node {
        Node::obj()
            .with("asyncapi", Node::str("3.0.0"))
            .with("on", Node::Bool(true))
            .with(
                "list",
                Node::Arr(vec![
                    Node::obj().with("a", Node::int(1)).with("b", Node::Null),
                    Node::str("x: \"y\"\n\u{202e}"),
                    Node::Arr(vec![]),
                ]),
            )
            .with("nested", Node::obj().with("k", Node::obj()))
    }

    #[test]
    fn json_keeps_key_order_and_parses() {
        let json = sample().to_json();
        assert!(json.starts_with("{\n  \"asyncapi\": \"3.0.0\",\n  \"on\": true"));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["list"][1], "x: \"y\"\n\u{202e}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&sample().to_json_line()).unwrap(),
            v
        );
    }

    #[test]
    fn yaml_is_block_style_with_quoted_strings() {
        let yaml = sample().to_yaml();
        assert_eq!(
            yaml,
            "asyncapi: \"3.0.0\"\n\"on\": true\nlist:\n  - a: 1\n    b: null\n  - \"x: \\\"y\\\"\\n\\u202e\"\n  - []\nnested:\n  k: {}\n"
        );
    }

    #[test]
    fn floats_stay_floats() {
        assert_eq!(float(1.0), "1.0");
        assert_eq!(float(0.5), "0.5");
        assert_eq!(float(1e300), "1e300");
    }
}
