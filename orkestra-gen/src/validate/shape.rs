//! The shape of a file: the top level, known keys (with suggestions), duplicates, strings.

use std::collections::HashMap;

use heck::ToSnakeCase;

use super::{Decl, Source, Validator};
use crate::diagnostic::{Diagnostic, Span};
use crate::names;
use crate::yaml::{Key, Node, Value};
use orkestra_topic as topic;

pub(super) const TOP_KEYS: &[&str] = &[
    "namespace",
    "description",
    "types",
    "commands",
    "events",
    "handlers",
    "aggregates",
    "projections",
    "process_managers",
    "decisions",
];

impl Validator {
    /// Top level of one file.
    pub(super) fn file(&mut self, root: &Node, source: &Source) -> Option<Decl> {
        let entries = match &root.value {
            Value::Map(entries) => entries,
            Value::Null => {
                self.error(
                    &Span::start_of(&source.path),
                    "the schema file is empty; it needs at least a `namespace`",
                );
                return None;
            }
            _ => {
                self.error(
                    &root.span,
                    format!("a schema file must be a mapping, found {}", root.kind()),
                );
                return None;
            }
        };
        let map = self.keys(entries, TOP_KEYS, "at the top level");
        let Some(ns_node) = map.get("namespace") else {
            self.error(
                &Span::start_of(&source.path),
                "missing `namespace` (for example `namespace: MyApp.Orders`)",
            );
            return None;
        };
        let namespace = self.string(ns_node, "`namespace`")?;
        let segments: Vec<&str> = namespace.split('.').collect();
        if segments.iter().any(|s| !names::is_identifier(s)) {
            self.error(
                &ns_node.span,
                format!(
                    "namespace `{namespace}` must be dot-separated identifiers, like `MyApp.Orders`"
                ),
            );
            return None;
        }
        let qualifier = topic::strip_prefix(&namespace, &self.app_prefix).to_owned();
        if qualifier.is_empty() {
            self.error(
                &ns_node.span,
                format!(
                    "namespace `{namespace}` has nothing after the app prefix `{}`",
                    self.app_prefix
                ),
            );
            return None;
        }
        if !self.app_prefix.is_empty() && qualifier == namespace {
            // A prefix that strips nothing silently renames every module and topic.
            let first = segments[0];
            let rest = segments[1..].join(".");
            let suggestion = if rest.is_empty() {
                format!("`namespace: {}.{namespace}`", self.app_prefix)
            } else {
                format!("`namespace: {}.{rest}`", self.app_prefix)
            };
            self.diags.push(
                Diagnostic::warning(
                    &ns_node.span,
                    format!(
                        "namespace `{namespace}` does not start with the app prefix `{}`, so nothing is stripped: its topics start with `{}.`",
                        self.app_prefix,
                        topic::derive(&namespace, "")
                    ),
                )
                .with_help(format!(
                    "did you mean app prefix `{first}`, or {suggestion}?"
                )),
            );
        }
        let ident = names::ident(
            &qualifier
                .split('.')
                .map(|s| s.to_snake_case())
                .collect::<Vec<_>>()
                .join("_"),
        );
        let description = map
            .get("description")
            .and_then(|n| self.string(n, "`description`"));
        let mut section = |name: &str| -> Vec<(Key, Node)> {
            match map.get(name) {
                None => Vec::new(),
                Some(Node {
                    value: Value::Null, ..
                }) => Vec::new(),
                Some(Node {
                    value: Value::Map(entries),
                    ..
                }) => {
                    self.check_duplicates(entries);
                    entries.clone()
                }
                Some(other) => {
                    self.error(
                        &other.span,
                        format!(
                            "`{name}` must be a mapping of names, found {}",
                            other.kind()
                        ),
                    );
                    Vec::new()
                }
            }
        };
        let types = section("types");
        let commands = section("commands");
        let events = section("events");
        let handlers = section("handlers");
        let aggregates = section("aggregates");
        let projections = section("projections");
        let process_managers = section("process_managers");
        let decisions = section("decisions");
        Some(Decl {
            span: ns_node.span.clone(),
            namespace,
            qualifier,
            ident,
            description,
            types,
            commands,
            events,
            handlers,
            aggregates,
            projections,
            process_managers,
            decisions,
        })
    }

    /// Checks the keys of a mapping (unknown keys with suggestions, duplicates) and
    /// returns the first value of each known key.
    pub(super) fn keys<'a>(
        &mut self,
        entries: &'a [(Key, Node)],
        allowed: &[&str],
        context: &str,
    ) -> HashMap<&'a str, &'a Node> {
        self.check_duplicates(entries);
        let mut map = HashMap::new();
        for (key, node) in entries {
            if allowed.contains(&key.name.as_str()) {
                map.entry(key.name.as_str()).or_insert(node);
            } else {
                let d =
                    Diagnostic::error(&key.span, format!("unknown key `{}` {context}", key.name))
                        .did_you_mean(&key.name, allowed.iter().copied());
                let d = if d.help.is_none() {
                    d.with_help(format!("expected one of: {}", allowed.join(", ")))
                } else {
                    d
                };
                self.diags.push(d);
            }
        }
        map
    }

    pub(super) fn check_duplicates(&mut self, entries: &[(Key, Node)]) {
        let mut seen: HashMap<&str, &Span> = HashMap::new();
        for (key, _) in entries {
            if let Some(first) = seen.get(key.name.as_str()) {
                let message = format!(
                    "duplicate key `{}` (first defined at line {})",
                    key.name, first.line
                );
                self.error(&key.span, message);
            } else {
                seen.insert(&key.name, &key.span);
            }
        }
    }

    pub(super) fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            _ => {
                self.error(
                    &node.span,
                    format!("{what} must be a string, found {}", node.kind()),
                );
                None
            }
        }
    }

    /// Whether `key` is an identifier; if not, says so for `what` (`aggregate`, `timer`
    /// name in ...).
    pub(super) fn identifier(&mut self, key: &Key, what: &str) -> bool {
        if names::is_identifier(&key.name) {
            return true;
        }
        self.error(
            &key.span,
            format!(
                "`{}` is not a valid {what}: use letters, digits and `_`, starting with a letter",
                key.name
            ),
        );
        false
    }

    pub(super) fn description(&mut self, map: &HashMap<&str, &Node>) -> Option<String> {
        map.get("description")
            .and_then(|n| self.string(n, "`description`"))
    }
}

pub(super) fn describe(n: &Node) -> String {
    match &n.value {
        Value::Str(s) => format!("the string \"{}\"", s.escape_debug()),
        Value::Int(i) => format!("{i}"),
        Value::Float(f) => format!("{f}"),
        Value::Bool(b) => format!("{b}"),
        _ => n.kind().to_owned(),
    }
}
