//! JSON Schema (2020-12) for every command and event, from the model the Rust code is
//! generated from, stating what the generated `from_json` accepts:
//!
//! - a top-level `null` counts as absent (a required one is missing, an optional one takes
//!   its default), so optional params accept `null`; inside a named struct type, serde
//!   reads the fields, so only fields without a default (`Option`s) accept `null`;
//! - commands reject unknown keys at every depth (`additionalProperties: false` on them
//!   and on the named struct types they use), events ignore them (open, nested types too);
//! - rules are those `from_json` checks when a message is built (reading stored history
//!   with `decode_json` skips them, by design);
//! - `integer` is an `i64` (its range is stated when no tighter bound is); `decimal` is a
//!   string or a number (the string matched by the same syntax `Decimal::parse` reads);
//! - `format: email` and `format: url` also carry the exact pattern the generated check
//!   applies, so a validator that treats `format` as an annotation (the 2020-12 default)
//!   still enforces it; `format: uuid`, `date-time` and `date` are the RFC forms.
//!
//! - personal data (`personal: true`) is marked, not changed: the property has
//!   `x-personal: true` (also inside named types), and an event with personal data names
//!   its subject field with `x-personal-subject`. The schema states what a message holds
//!   in the clear; the store seals those values at rest.
//!
//! The same builders serve AsyncAPI, whose named types live under
//! `#/components/schemas/` instead of `$defs`.

use std::collections::BTreeSet;

use super::flow::{Flow, Msg};
use super::tree::Node;
use crate::model::{
    Field, Format, Literal, Model, PayloadKind, Rules, Ty, TypeDef, TypeKind, TypeRef,
};
use crate::names;

/// The dialect every standalone schema declares.
pub(crate) const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// What `rules::email` accepts: one `@`, a non-empty local part, a dotted domain with
/// no empty label, no whitespace or control characters.
pub(crate) const EMAIL_PATTERN: &str =
    r"^[^@\s\x00-\x1f\x7f-\x9f]+@[^@.\s\x00-\x1f\x7f-\x9f]+(\.[^@.\s\x00-\x1f\x7f-\x9f]+)+$";
/// What `rules::url` accepts: a scheme, `://`, a non-empty host, no whitespace or control
/// characters.
pub(crate) const URL_PATTERN: &str =
    r"^[A-Za-z][A-Za-z0-9+.\-]*://[^/?#\s\x00-\x1f\x7f-\x9f][^\s\x00-\x1f\x7f-\x9f]*$";
/// What `Decimal::parse` reads from a string: a sign, digits with an optional fraction
/// (or a fraction alone), an optional exponent, surrounding whitespace.
pub(crate) const DECIMAL_PATTERN: &str =
    r"^\s*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$";

/// Where named types are referenced from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Refs {
    /// A standalone document: `#/$defs/<key>`.
    Defs,
    /// AsyncAPI: `#/components/schemas/<key>`.
    Components,
}

impl Refs {
    fn path(self, key: &str) -> String {
        match self {
            Refs::Defs => format!("#/$defs/{key}"),
            Refs::Components => format!("#/components/schemas/{key}"),
        }
    }
}

/// Builds schemas for one model.
#[derive(Debug)]
pub(crate) struct Schemas<'m> {
    model: &'m Model,
    refs: Refs,
}

impl<'m> Schemas<'m> {
    pub(crate) fn new(model: &'m Model, refs: Refs) -> Self {
        Self { model, refs }
    }

    /// The key of a named type: `Orders.Address`.
    pub(crate) fn type_key(&self, r: &TypeRef) -> String {
        let qualifier = self
            .model
            .modules
            .iter()
            .find(|m| m.ident == r.module)
            .map_or(r.module.as_str(), |m| m.qualifier.as_str());
        names::component_key(&format!("{qualifier}.{}", r.name))
    }

    /// Every named type of the model with its key, in model order.
    pub(crate) fn all_types(&self) -> Vec<(String, &'m TypeDef)> {
        self.model
            .modules
            .iter()
            .flat_map(|m| {
                m.types.iter().map(move |t| {
                    (
                        names::component_key(&format!("{}.{}", m.qualifier, t.name)),
                        t,
                    )
                })
            })
            .collect()
    }

    /// The schema of a command's params or an event's data (no `$schema`, no `$defs`).
    pub(crate) fn payload(&self, msg: &Msg<'_>) -> Node {
        let p = msg.payload;
        let mut schema = Node::obj().with("title", Node::str(p.type_name.clone()));
        if let Some(d) = &p.description {
            schema.set("description", Node::str(d.clone()));
        }
        let strict = p.kind == PayloadKind::Command;
        self.object(&mut schema, &p.fields, true, strict);
        if let Some(subject) = &p.personal_subject {
            schema.set("x-personal-subject", Node::str(subject.clone()));
        }
        schema
    }

    /// The schema of a named type, as commands read it (`strict`: unknown keys refused at
    /// any depth) or as events are read (unknown keys ignored).
    pub(crate) fn named(&self, t: &TypeDef, strict: bool) -> Node {
        let mut schema = Node::obj().with("title", Node::str(t.name.clone()));
        if let Some(d) = &t.description {
            schema.set("description", Node::str(d.clone()));
        }
        match &t.kind {
            TypeKind::Enum(values) => {
                schema.set("type", Node::str("string"));
                schema.set(
                    "enum",
                    Node::Arr(values.iter().map(|v| Node::str(v.clone())).collect()),
                );
            }
            TypeKind::Struct(fields) => self.object(&mut schema, fields, false, strict),
        }
        schema
    }

    /// A standalone 2020-12 document for one command or event, with the named types it
    /// uses (directly or through other types) under `$defs`.
    pub(crate) fn document(&self, msg: &Msg<'_>) -> Node {
        let mut doc = Node::obj().with("$schema", Node::str(DIALECT));
        if let Node::Obj(entries) = self.payload(msg) {
            for (k, v) in entries {
                doc.set(&k, v);
            }
        }
        doc.set(
            "x-orkestra",
            Node::obj()
                .with(
                    "kind",
                    Node::str(if msg.is_command() { "command" } else { "event" }),
                )
                .with("topic", Node::str(msg.payload.topic.clone()))
                .with("version", Node::int(msg.payload.version)),
        );
        let used = self.used_types(&msg.payload.fields);
        if !used.is_empty() {
            let strict = msg.is_command();
            let defs = self
                .all_types()
                .into_iter()
                .filter(|(key, _)| used.contains(key))
                .map(|(key, t)| (self.def_key(&key, strict), self.named(t, strict)))
                .collect();
            doc.set("$defs", Node::Obj(defs));
        }
        doc
    }

    /// Where a named type's schema is kept for one reading: in AsyncAPI, where commands
    /// and events share `components`, the strict (command) form is `<key>.Strict`.
    pub(crate) fn def_key(&self, key: &str, strict: bool) -> String {
        match (self.refs, strict) {
            (Refs::Components, true) => format!("{key}.Strict"),
            _ => key.to_owned(),
        }
    }

    /// The keys of the named types `fields` reach, transitively.
    pub(crate) fn used_types(&self, fields: &[Field]) -> BTreeSet<String> {
        let all = self.all_types();
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&TypeRef> = Vec::new();
        for f in fields {
            named_refs(&f.ty, &mut todo);
        }
        while let Some(r) = todo.pop() {
            let key = self.type_key(r);
            if !seen.insert(key.clone()) {
                continue;
            }
            if let Some((
                _,
                TypeDef {
                    kind: TypeKind::Struct(fields),
                    ..
                },
            )) = all.iter().find(|(k, _)| *k == key)
            {
                for f in fields {
                    named_refs(&f.ty, &mut todo);
                }
            }
        }
        seen
    }

    /// `type: object`, `properties`, `required` and `additionalProperties` on `schema`.
    fn object(&self, schema: &mut Node, fields: &[Field], top_level: bool, strict: bool) {
        schema.set("type", Node::str("object"));
        let properties = fields
            .iter()
            .map(|f| (f.name.clone(), self.field(f, top_level, strict)))
            .collect();
        schema.set("properties", Node::Obj(properties));
        let required: Vec<Node> = fields
            .iter()
            .filter(|f| f.required)
            .map(|f| Node::str(f.name.clone()))
            .collect();
        if !required.is_empty() {
            schema.set("required", Node::Arr(required));
        }
        if strict {
            schema.set("additionalProperties", Node::Bool(false));
        }
    }

    fn field(&self, f: &Field, top_level: bool, strict: bool) -> Node {
        let mut schema = self.ty(&f.ty, strict);
        apply_rules(&mut schema, &f.ty, &f.rules);
        // At the top level a null is "absent"; inside a struct only an `Option` takes it.
        let nullable = if top_level {
            !f.required
        } else {
            !f.required && f.default.is_none()
        };
        if nullable {
            schema = or_null(schema);
        } else if top_level && f.ty == Ty::Json {
            // A required `json` param that is null counts as missing.
            schema = Node::obj().with("not", Node::obj().with("type", Node::str("null")));
        }
        let mut out = Node::obj();
        if let Some(d) = &f.description {
            out.set("description", Node::str(d.clone()));
        }
        if let Node::Obj(entries) = schema {
            for (k, v) in entries {
                out.set(&k, v);
            }
        }
        if let Some(d) = &f.default {
            out.set("default", Node::literal(d));
        }
        if f.personal {
            out.set("x-personal", Node::Bool(true));
            if out.get("$ref").is_some() {
                wrap_ref(&mut out);
            }
        }
        out
    }

    /// The schema of a type, without rules.
    fn ty(&self, ty: &Ty, strict: bool) -> Node {
        let typed = |t: &str| Node::obj().with("type", Node::str(t));
        match ty {
            Ty::String => typed("string"),
            Ty::Integer => typed("integer")
                .with("minimum", Node::int(i64::MIN))
                .with("maximum", Node::int(i64::MAX)),
            Ty::Float => typed("number"),
            Ty::Boolean => typed("boolean"),
            Ty::DateTime => typed("string").with("format", Node::str("date-time")),
            Ty::Date => typed("string").with("format", Node::str("date")),
            Ty::Uuid => typed("string").with("format", Node::str("uuid")),
            Ty::Decimal => Node::obj()
                .with(
                    "type",
                    Node::Arr(vec![Node::str("string"), Node::str("number")]),
                )
                .with("pattern", Node::str(DECIMAL_PATTERN)),
            Ty::Json => Node::obj(),
            Ty::List(inner) => typed("array").with("items", self.ty(inner, strict)),
            Ty::Map(inner) => typed("object").with("additionalProperties", self.ty(inner, strict)),
            Ty::Named(r) => {
                let key = self.def_key(&self.type_key(r), strict && !r.is_enum);
                Node::obj().with("$ref", Node::str(self.refs.path(&key)))
            }
        }
    }
}

fn named_refs<'a>(ty: &'a Ty, out: &mut Vec<&'a TypeRef>) {
    match ty {
        Ty::List(inner) | Ty::Map(inner) => named_refs(inner, out),
        Ty::Named(r) => out.push(r),
        _ => {}
    }
}

/// The field's rules as keywords on its type's schema.
fn apply_rules(schema: &mut Node, ty: &Ty, rules: &Rules) {
    if let Some(min) = &rules.min {
        schema.set("minimum", Node::literal(min));
    }
    if let Some(max) = &rules.max {
        schema.set("maximum", Node::literal(max));
    }
    let (min_len, max_len) = match ty {
        Ty::List(_) => ("minItems", "maxItems"),
        Ty::Map(_) => ("minProperties", "maxProperties"),
        _ => ("minLength", "maxLength"),
    };
    if let Some(n) = rules.min_length {
        schema.set(min_len, Node::int(n));
    }
    if let Some(n) = rules.max_length {
        schema.set(max_len, Node::int(n));
    }
    if let Some(p) = &rules.pattern {
        schema.set("pattern", Node::str(p.clone()));
    }
    if let Some(format) = rules.format {
        let (name, exact) = match format {
            Format::Email => ("email", Some(EMAIL_PATTERN)),
            Format::Url => ("uri", Some(URL_PATTERN)),
            Format::Uuid => ("uuid", None),
        };
        schema.set("format", Node::str(name));
        if let Some(exact) = exact {
            if schema.get("pattern").is_some() {
                // The schema's own pattern holds that key: the format's goes in an `allOf`.
                schema.set(
                    "allOf",
                    Node::Arr(vec![Node::obj().with("pattern", Node::str(exact))]),
                );
            } else {
                schema.set("pattern", Node::str(exact));
            }
        }
    }
    if let Some(values) = &rules.one_of {
        schema.set(
            "enum",
            Node::Arr(values.iter().map(Node::literal).collect()),
        );
    }
    if schema.get("$ref").is_some() {
        wrap_ref(schema);
    }
}

/// A `$ref` with sibling keywords becomes `allOf: [{$ref}]` plus the siblings, which
/// every dialect (AsyncAPI's draft-07 base included) reads the same way.
fn wrap_ref(schema: &mut Node) {
    if let Node::Obj(entries) = schema
        && entries.len() > 1
        && let Some(i) = entries.iter().position(|(k, _)| k == "$ref")
    {
        let (k, v) = entries.remove(i);
        entries.insert(
            0,
            ("allOf".to_owned(), Node::Arr(vec![Node::obj().with(&k, v)])),
        );
    }
}

/// The schema, or `null`.
fn or_null(schema: Node) -> Node {
    let Node::Obj(mut entries) = schema else {
        return schema;
    };
    if entries.is_empty() {
        // `json`: anything, null included.
        return Node::Obj(entries);
    }
    let type_at = entries.iter().position(|(k, _)| k == "type");
    match type_at {
        Some(i) => {
            let types = match std::mem::replace(&mut entries[i].1, Node::Null) {
                Node::Str(t) => vec![Node::str(t), Node::str("null")],
                Node::Arr(mut ts) => {
                    ts.push(Node::str("null"));
                    ts
                }
                other => vec![other],
            };
            entries[i].1 = Node::Arr(types);
            if let Some((_, Node::Arr(values))) = entries.iter_mut().find(|(k, _)| k == "enum") {
                values.push(Node::Null);
            }
            Node::Obj(entries)
        }
        None => Node::obj().with(
            "anyOf",
            Node::Arr(vec![
                Node::Obj(entries),
                Node::obj().with("type", Node::str("null")),
            ]),
        ),
    }
}

/// An example payload: every required field and every field with a default, with a value
/// that passes its rules where one is easy to pick (the docs site shows it).
pub(crate) fn example(model: &Model, fields: &[Field]) -> Node {
    example_depth(model, fields, 0)
}

fn example_depth(model: &Model, fields: &[Field], depth: usize) -> Node {
    let mut out = Node::obj();
    for f in fields {
        let value = match &f.default {
            Some(d) => Node::literal(d),
            // Optional fields are shown at the top level, except patterned strings: no
            // value is picked to match a pattern, so one would only be a placeholder.
            None if f.required || (depth == 0 && f.rules.pattern.is_none()) => {
                example_value(model, &f.ty, &f.rules, depth)
            }
            None => continue,
        };
        out.set(&f.name, value);
    }
    out
}

fn example_value(model: &Model, ty: &Ty, rules: &Rules, depth: usize) -> Node {
    if let Some(first) = rules.one_of.as_ref().and_then(|v| v.first()) {
        return Node::literal(first);
    }
    match ty {
        Ty::String => Node::str(match rules.format {
            Some(Format::Email) => "ada@example.com".to_owned(),
            Some(Format::Url) => "https://example.com/".to_owned(),
            Some(Format::Uuid) => "67e55044-10b1-426f-9247-bb680e5fe0c8".to_owned(),
            None if rules.pattern.is_some() => rules
                .pattern
                .as_deref()
                .and_then(|p| pattern_sample(p, rules))
                .unwrap_or_else(|| "…".to_owned()),
            None => {
                // "example", or x's when the length rules leave no room for it.
                let word = "example";
                let min =
                    usize::try_from(rules.min_length.unwrap_or(0)).map_or(4096, |n| n.min(4096));
                let max =
                    usize::try_from(rules.max_length.unwrap_or(u64::MAX)).unwrap_or(usize::MAX);
                if (min..=max).contains(&word.len()) {
                    word.to_owned()
                } else {
                    "x".repeat(if min > word.len() { min } else { max })
                }
            }
        }),
        Ty::Integer => match (&rules.min, &rules.max) {
            (Some(Literal::Int(i)), _) => Node::int(*i),
            (None, Some(Literal::Int(i))) if *i < 1 => Node::int(*i),
            _ => Node::int(1),
        },
        Ty::Float => match (&rules.min, &rules.max) {
            (Some(l), _) => Node::literal(l),
            (None, Some(Literal::Float(f))) if *f < 1.5 => Node::literal(&Literal::Float(*f)),
            _ => Node::Num("1.5".into()),
        },
        Ty::Boolean => Node::Bool(true),
        Ty::DateTime => Node::str("2026-01-31T09:30:00Z"),
        Ty::Date => Node::str("2026-01-31"),
        Ty::Uuid => Node::str("67e55044-10b1-426f-9247-bb680e5fe0c8"),
        Ty::Decimal => Node::str("12.50"),
        Ty::Json => Node::obj(),
        Ty::List(inner) if depth < 3 => Node::Arr(vec![example_value(
            model,
            inner,
            &Rules::default(),
            depth + 1,
        )]),
        Ty::Map(inner) if depth < 3 => Node::obj().with(
            "key",
            example_value(model, inner, &Rules::default(), depth + 1),
        ),
        Ty::List(_) => Node::Arr(vec![]),
        Ty::Map(_) => Node::obj(),
        Ty::Named(r) if r.is_enum => Node::str(r.variants.first().cloned().unwrap_or_default()),
        Ty::Named(r) => {
            let fields = model
                .modules
                .iter()
                .find(|m| m.ident == r.module)
                .and_then(|m| m.types.iter().find(|t| t.name == r.name))
                .and_then(|t| match &t.kind {
                    TypeKind::Struct(fields) => Some(fields),
                    TypeKind::Enum(_) => None,
                });
            match fields {
                Some(fields) if depth < 3 => example_depth(model, fields, depth + 1),
                _ => Node::obj(),
            }
        }
    }
}

/// A short string the pattern matches (and the length rules allow), built from the
/// regex's syntax tree: the first branch of each alternation, the fewest repetitions, a
/// readable character of each class. Checked with the regex itself; `None` when the
/// result does not match (look-arounds such as `\b` can defeat it).
fn pattern_sample(pattern: &str, rules: &Rules) -> Option<String> {
    use regex_syntax::hir::{Class, Hir, HirKind};
    fn pick(ranges: impl Iterator<Item = (char, char)> + Clone) -> Option<char> {
        let inside = |c: char| ranges.clone().any(|(a, b)| a <= c && c <= b);
        ('a'..='z')
            .chain('A'..='Z')
            .chain('0'..='9')
            .chain("-_.@ ".chars())
            .find(|&c| inside(c))
            .or_else(|| ranges.clone().next().map(|(a, _)| a))
    }
    fn build(h: &Hir, out: &mut String) -> Option<()> {
        match h.kind() {
            HirKind::Empty | HirKind::Look(_) => {}
            HirKind::Literal(l) => out.push_str(std::str::from_utf8(&l.0).ok()?),
            HirKind::Class(Class::Unicode(c)) => {
                out.push(pick(c.ranges().iter().map(|r| (r.start(), r.end())))?);
            }
            HirKind::Class(Class::Bytes(c)) => out.push(pick(
                c.ranges()
                    .iter()
                    .filter(|r| r.start().is_ascii())
                    .map(|r| (char::from(r.start()), char::from(r.end().min(0x7f)))),
            )?),
            HirKind::Repetition(r) => {
                for _ in 0..r.min.min(64) {
                    build(&r.sub, out)?;
                }
            }
            HirKind::Capture(c) => build(&c.sub, out)?,
            HirKind::Concat(parts) => {
                for p in parts {
                    build(p, out)?;
                }
            }
            HirKind::Alternation(branches) => build(branches.first()?, out)?,
        }
        Some(())
    }
    let hir = regex_syntax::Parser::new().parse(pattern).ok()?;
    let mut out = String::new();
    build(&hir, &mut out)?;
    let chars = out.chars().count() as u64;
    let fits =
        rules.min_length.is_none_or(|n| chars >= n) && rules.max_length.is_none_or(|n| chars <= n);
    let matches = regex::Regex::new(pattern).ok()?.is_match(&out);
    (fits && matches).then_some(out)
}

/// One file per command and event: `<Qualifier>.<Name>.json` (`Orders.PlaceOrder.json`).
pub(crate) fn files(flow: &Flow<'_>) -> Vec<(String, String)> {
    let schemas = Schemas::new(flow.model, Refs::Defs);
    flow.messages
        .iter()
        .map(|msg| {
            (
                format!("{}.json", msg.key()),
                schemas.document(msg).to_json(),
            )
        })
        .collect()
}
