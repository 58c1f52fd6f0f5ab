//! Commands and events: their keys, version, custom validation and topic.

use super::personal::{SubjectOf, subject_key};
use super::shape::describe;
use super::text_forms;
use super::{Decl, Declared, PayloadTables, TypeTable, Validator};
use crate::diagnostic::Diagnostic;
use crate::model::*;
use crate::yaml::{Key, Node, Value};
use orkestra_topic as topic;

/// How commands and events differ in the schema language.
struct Syntax {
    /// The word messages use (`command`).
    what: &'static str,
    /// The keys it accepts.
    keys: &'static [&'static str],
    /// The key holding its fields.
    fields_key: &'static str,
    /// The segment of its derived topic's full name (`Commands`).
    section: &'static str,
}

pub(super) const COMMAND_KEYS: &[&str] = &["description", "params", "validate", "topic"];

pub(super) const EVENT_KEYS: &[&str] = &[
    "description",
    "fields",
    "version",
    "upcast",
    "validate",
    "topic",
    "tags",
    "personal_data",
];

const COMMAND: Syntax = Syntax {
    what: "command",
    keys: COMMAND_KEYS,
    fields_key: "params",
    section: "Commands",
};

const EVENT: Syntax = Syntax {
    what: "event",
    keys: EVENT_KEYS,
    fields_key: "fields",
    section: "Events",
};

impl Validator {
    /// Every command and event with its module and topic.
    pub(super) fn payload_tables(&mut self, decls: &[Decl]) -> PayloadTables {
        let mut commands = Vec::new();
        let mut events = Vec::new();
        for decl in decls {
            for (list, Syntax { section, .. }, out) in [
                (&decl.commands, COMMAND, &mut commands),
                (&decl.events, EVENT, &mut events),
            ] {
                for (key, node) in list {
                    let topic = override_topic(node)
                        .unwrap_or_else(|| self.derived_topic(decl, section, &key.name));
                    out.push(Declared {
                        module: decl.ident.clone(),
                        qualifier: decl.qualifier.clone(),
                        name: key.name.clone(),
                        topic,
                    });
                }
            }
        }
        PayloadTables { commands, events }
    }

    /// The topic of a command or event without a `topic` override.
    pub(super) fn derived_topic(&self, decl: &Decl, section: &str, name: &str) -> String {
        topic::derive(
            &format!("{}.{section}.{name}", decl.namespace),
            &self.app_prefix,
        )
    }

    pub(super) fn payload(
        &mut self,
        decl: &Decl,
        key: &Key,
        node: &Node,
        kind: PayloadKind,
        types: &TypeTable,
    ) -> Option<Payload> {
        let Syntax {
            what,
            keys: allowed,
            fields_key,
            section,
        } = match kind {
            PayloadKind::Command => COMMAND,
            PayloadKind::Event => EVENT,
        };
        let empty = Vec::new();
        let entries = match &node.value {
            Value::Map(entries) => entries,
            Value::Null => &empty,
            _ => {
                self.error(
                    &node.span,
                    format!(
                        "{what} `{}` must be a mapping, found {}",
                        key.name,
                        node.kind()
                    ),
                );
                return None;
            }
        };
        let map = self.keys(entries, allowed, &format!("in {what} `{}`", key.name));
        let description = self.description(&map);
        let fields = match map.get(fields_key) {
            Some(f) => self.fields(decl, f, types, &format!("{what} `{}`", key.name))?,
            None => Vec::new(),
        };
        let personal_subject = match (kind, map.get("personal_data")) {
            (PayloadKind::Command, _) => {
                if !self.no_personal_params(&key.name, &fields) {
                    return None;
                }
                None
            }
            (PayloadKind::Event, None) => None,
            (PayloadKind::Event, Some(n)) => Some(self.personal_subject(
                &format!("event `{}`", key.name),
                subject_key("event", &decl.ident, &key.name),
                n,
                &fields,
                SubjectOf::Event,
            )?),
        };
        let custom_validate = match map.get("validate") {
            None => false,
            Some(n) if n.as_str() == Some("custom") => true,
            Some(n) => {
                self.error(&n.span, "`validate` takes one value, `custom` (you implement `orkestra_runtime::Validate`)");
                false
            }
        };
        let version = match map.get("version") {
            None => 1,
            Some(n) => match n.value {
                Value::Int(v) if (1..=i64::from(u32::MAX)).contains(&v) => v as u32,
                _ => {
                    self.error(
                        &n.span,
                        format!(
                            "`version` must be a positive integer, found {}",
                            describe(n)
                        ),
                    );
                    1
                }
            },
        };
        let upcast = match map.get("upcast") {
            None => Vec::new(),
            Some(n) => self.upcast_steps(&key.name, n, version, &fields)?,
        };
        let tags = match map.get("tags") {
            None => Vec::new(),
            Some(n) => self.event_tags(&key.name, n, &fields)?,
        };
        let topic = match map.get("topic") {
            Some(n) => {
                let t = self.string(n, "`topic`")?;
                if t.is_empty() || t.contains(char::is_whitespace) || topic::is_pattern(&t) {
                    self.error(
                        &n.span,
                        format!("topic `{t}` must be a non-empty name without spaces or wildcards"),
                    );
                    return None;
                }
                t
            }
            None => self.derived_topic(decl, section, &key.name),
        };
        Some(Payload {
            kind,
            name: key.name.clone(),
            description,
            fields,
            topic,
            type_name: format!("{}.{}", decl.namespace, key.name),
            version,
            custom_validate,
            upcast,
            tags,
            personal_subject,
            span: key.span.clone(),
        })
    }

    /// An event's `tags`: distinct names of its fields, each required and with a stable
    /// text form (the tag's value is that text).
    fn event_tags(&mut self, event: &str, node: &Node, fields: &[Field]) -> Option<Vec<String>> {
        let Value::Seq(items) = &node.value else {
            self.error(
                &node.span,
                format!(
                    "`tags` of event `{event}` must be a list of its field names, found {}",
                    node.kind()
                ),
            );
            return None;
        };
        let mut tags: Vec<String> = Vec::new();
        let mut ok = true;
        for item in items {
            let Some(name) = self.string(item, &format!("a tag of event `{event}`")) else {
                ok = false;
                continue;
            };
            let Some(field) = fields.iter().find(|f| f.name == name) else {
                let d = Diagnostic::error(
                    &item.span,
                    format!("tag `{name}` of event `{event}` is not one of its fields; a tag names a field whose value indexes the event"),
                )
                .did_you_mean(&name, fields.iter().map(|f| f.name.as_str()));
                self.diags.push(d);
                ok = false;
                continue;
            };
            if tags.contains(&name) {
                self.error(
                    &item.span,
                    format!("tag `{name}` of event `{event}` is listed twice"),
                );
                ok = false;
                continue;
            }
            if !field.required {
                self.error(
                    &item.span,
                    format!("tag `{name}` of event `{event}` names an optional field; a tag needs a value on every event: make the field `required`"),
                );
                ok = false;
            }
            if field.personal {
                self.error(
                    &item.span,
                    format!("tag `{name}` of event `{event}` names a personal field; tags are stored in plain text in the store's index, so a tag cannot be personal"),
                );
                ok = false;
            }
            if !text_forms::stable(&field.ty) {
                self.error(
                    &item.span,
                    format!(
                        "tag `{name}` of event `{event}` names a field of type {}, which has no stable text form; a tag takes a string, integer, uuid, date or enum field",
                        field.ty.schema_text(&|t| t.name.clone())
                    ),
                );
                ok = false;
            }
            tags.push(name);
        }
        ok.then_some(tags)
    }
}

pub(super) fn override_topic(node: &Node) -> Option<String> {
    match &node.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.name == "topic")
            .and_then(|(_, n)| n.as_str().map(str::to_owned)),
        _ => None,
    }
}
