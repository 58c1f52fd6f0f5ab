//! Aggregates: the stream template and its placeholders, typed state with defaults, the
//! commands (each handled by exactly one aggregate or binding) and events, snapshots and
//! conflict retries.

use std::collections::HashMap;

use super::handlers::HandledCommands;
use super::personal::{SubjectOf, subject_key};
use super::shape::describe;
use super::{Decl, PayloadTables, TypeTable, Validator};
use crate::diagnostic::Span;
use crate::model::*;
use crate::names;
use crate::yaml::{Key, Node, Value};

pub(super) const AGGREGATE_KEYS: &[&str] = &[
    "description",
    "stream",
    "state",
    "commands",
    "events",
    "snapshot_every",
    "snapshot_version",
    "conflict_retries",
    "personal_data",
];

/// The most `conflict_retries` an aggregate may ask for.
const MAX_CONFLICT_RETRIES: i64 = 1000;

/// What the items generated for aggregate `N` append to its name (the trait is `N`).
const GENERATED_SUFFIXES: [&str; 7] = [
    "",
    "State",
    "Event",
    "Command",
    "Aggregate",
    "Repository",
    "Test",
];

/// The default of `conflict_retries`.
pub(super) const DEFAULT_CONFLICT_RETRIES: u32 = 5;

/// Aggregate names across every namespace (their subscriptions are named after them),
/// with where each was first declared.
pub(super) type AggregateNames = HashMap<String, (String, Span)>;

impl Validator {
    /// One aggregate. `modules` holds every namespace's resolved commands (for the
    /// placeholders' params).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn aggregate(
        &mut self,
        decl: &Decl,
        key: &Key,
        node: &Node,
        types: &TypeTable,
        tables: &PayloadTables,
        modules: &[Module],
        handled_commands: &mut HandledCommands,
        seen: &mut AggregateNames,
    ) -> Option<Aggregate> {
        let name = key.name.clone();
        let Value::Map(entries) = &node.value else {
            self.error(
                &node.span,
                format!(
                    "aggregate `{name}` must be a mapping with `stream`, `commands` and `events`"
                ),
            );
            return None;
        };
        let mut ok = self.aggregate_name(key, seen);
        let map = self.keys(entries, AGGREGATE_KEYS, &format!("in aggregate `{name}`"));
        let description = self.description(&map);
        let owner = format!("aggregate `{name}`");
        let commands = self.payload_list(
            decl,
            &owner,
            key,
            map.get("commands").copied(),
            "commands",
            &tables.commands,
            "command",
            true,
        );
        let events = self.payload_list(
            decl,
            &owner,
            key,
            map.get("events").copied(),
            "events",
            &tables.events,
            "event",
            true,
        );
        let state = match map.get("state") {
            None => Some(Vec::new()),
            Some(n) => self.state_fields(decl, &owner, n, types),
        };
        let personal_subject = match (&state, map.get("personal_data")) {
            (_, None) => Some(None),
            (Some(fields), Some(n)) => self
                .personal_subject(
                    &owner,
                    subject_key("aggregate", &decl.ident, &name),
                    n,
                    fields,
                    SubjectOf::State,
                )
                .map(Some),
            (None, Some(_)) => None,
        };
        let snapshot_every = match map.get("snapshot_every") {
            None => Some(None),
            Some(n) => match n.value {
                Value::Int(i) if i >= 1 => Some(Some(i as u64)),
                _ => {
                    self.error(
                        &n.span,
                        format!(
                            "`snapshot_every` of aggregate `{name}` must be a positive integer (events between two snapshots), found {}",
                            describe(n)
                        ),
                    );
                    None
                }
            },
        };
        let snapshot_version = match map.get("snapshot_version") {
            None => Some(1),
            Some(n) => match n.value {
                Value::Int(i) if (1..=i64::from(u32::MAX)).contains(&i) => Some(i as u32),
                _ => {
                    self.error(
                        &n.span,
                        format!(
                            "`snapshot_version` of aggregate `{name}` must be a positive integer (bump it when `apply` changes), found {}",
                            describe(n)
                        ),
                    );
                    None
                }
            },
        };
        let conflict_retries = match map.get("conflict_retries") {
            None => Some(DEFAULT_CONFLICT_RETRIES),
            Some(n) => match n.value {
                Value::Int(i) if (0..=MAX_CONFLICT_RETRIES).contains(&i) => Some(i as u32),
                _ => {
                    self.error(
                        &n.span,
                        format!(
                            "`conflict_retries` of aggregate `{name}` must be an integer from 0 to {MAX_CONFLICT_RETRIES}, found {}",
                            describe(n)
                        ),
                    );
                    None
                }
            },
        };
        let stream = match map.get("stream") {
            None => {
                self.error(
                    &key.span,
                    format!("aggregate `{name}` has no `stream`: name its streams from the commands' params, like `stream: \"account-{{account_id}}\"`"),
                );
                None
            }
            Some(n) => self
                .string(n, &format!("`stream` of aggregate `{name}`"))
                .and_then(|text| {
                    self.stream_template(&format!("aggregate `{name}`"), n, &text)
                        .map(|parts| (n, text, parts))
                }),
        };
        if let Some((commands, nodes)) = &commands {
            for (r, item) in commands.iter().zip(nodes) {
                if names::snake(&r.name) == "apply" {
                    self.error(
                        &item.span,
                        format!("command `{}` would be decided by a method `apply`, which aggregate `{name}` uses to fold its events; rename the command", r.name),
                    );
                    ok = false;
                }
            }
        }
        // Claim the commands only once they resolved, so a second claimant is reported at
        // its own place.
        if let Some((commands, nodes)) = &commands {
            for (r, item) in commands.iter().zip(nodes) {
                if let Some(first) = handled_commands.get(r) {
                    self.error(
                        &item.span,
                        format!(
                            "command `{}` already has {first}; a command has exactly one handler",
                            r.name
                        ),
                    );
                    ok = false;
                } else {
                    handled_commands.insert(r.clone(), format!("aggregate `{name}`"));
                }
            }
        }
        if let (Some((stream_node, _, parts)), Some((commands, _))) = (&stream, &commands) {
            ok &= self.placeholders(&name, stream_node, parts, commands, modules);
        }
        let (
            Some((_, stream_text, stream)),
            Some((commands, _)),
            Some((events, _)),
            Some(state),
            Some(snapshot_every),
            Some(snapshot_version),
            Some(conflict_retries),
            Some(personal_subject),
        ) = (
            stream,
            commands,
            events,
            state,
            snapshot_every,
            snapshot_version,
            conflict_retries,
            personal_subject,
        )
        else {
            return None;
        };
        ok.then(|| Aggregate {
            name,
            span: key.span.clone(),
            description,
            stream,
            stream_text,
            state,
            commands,
            events,
            snapshot_every,
            snapshot_version,
            conflict_retries,
            personal_subject,
        })
    }

    /// An identifier, unique across namespaces and after case conversion.
    fn aggregate_name(&mut self, key: &Key, seen: &mut AggregateNames) -> bool {
        if !self.identifier(key, "aggregate name") {
            return false;
        }
        let pascal = names::pascal(&key.name);
        // The items generated for it: a name another aggregate's items already use is a
        // collision in `<namespace>::aggregates`.
        let generated: Vec<String> = GENERATED_SUFFIXES
            .iter()
            .map(|suffix| format!("{pascal}{suffix}"))
            .collect();
        if let Some((first, span)) = seen.get(&pascal) {
            let message = if *first == key.name {
                format!(
                    "aggregate `{}` is declared twice (first at {}:{}); its subscriptions are named after it",
                    key.name,
                    span.file.display(),
                    span.line
                )
            } else {
                format!(
                    "aggregate `{}` collides with `{first}` (at {}:{}): both become `{pascal}`",
                    key.name,
                    span.file.display(),
                    span.line
                )
            };
            self.error(&key.span, message);
            return false;
        }
        if let Some((other, (first, span))) = generated
            .iter()
            .find_map(|g| seen.get(&format!("item:{g}")).map(|f| (g, f)))
        {
            self.error(
                &key.span,
                format!(
                    "aggregate `{}` would generate `{other}`, which aggregate `{first}` (at {}:{}) also generates; rename one",
                    key.name,
                    span.file.display(),
                    span.line
                ),
            );
            return false;
        }
        for g in generated {
            seen.insert(format!("item:{g}"), (key.name.clone(), key.span.clone()));
        }
        seen.insert(pascal, (key.name.clone(), key.span.clone()));
        true
    }

    /// `commands: [..]` or `events: [..]`: a non-empty list of distinct, known names
    /// (variants and methods are named after them). Returns the references and the node
    /// of each.
    /// `owner` is what the list belongs to (`aggregate \`Account\``); a list that is
    /// not `required` may be missing or empty.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn payload_list<'n>(
        &mut self,
        decl: &Decl,
        owner: &str,
        key: &Key,
        node: Option<&'n Node>,
        section: &str,
        table: &[super::Declared],
        what: &str,
        required: bool,
    ) -> Option<(Vec<PayloadRef>, Vec<&'n Node>)> {
        let Some(node) = node else {
            if !required {
                return Some((Vec::new(), Vec::new()));
            }
            self.error(
                &key.span,
                format!("{owner} has no `{section}`: list the {section} it handles"),
            );
            return None;
        };
        let Value::Seq(items) = &node.value else {
            self.error(
                &node.span,
                format!(
                    "`{section}` of {owner} must be a list of {what} names, found {}",
                    node.kind()
                ),
            );
            return None;
        };
        if items.is_empty() && required {
            self.error(&node.span, format!("`{section}` of {owner} is empty"));
            return None;
        }
        let mut refs: Vec<PayloadRef> = Vec::new();
        let mut nodes = Vec::new();
        let mut ok = true;
        for item in items {
            let Some(r) = self.reference(decl, item, table, what) else {
                ok = false;
                continue;
            };
            if refs.contains(&r) {
                self.error(&item.span, format!("{what} `{}` is listed twice", r.name));
                ok = false;
            } else if refs
                .iter()
                .any(|x| names::snake(&x.name) == names::snake(&r.name))
            {
                self.error(
                    &item.span,
                    format!("two {section} named `{}` in {owner}; its variants and methods are named after them", r.name),
                );
                ok = false;
            } else {
                refs.push(r);
                nodes.push(item);
            }
        }
        ok.then_some((refs, nodes))
    }

    /// `state:` fields: a type, an optional default (checked against the type) and docs;
    /// no rules and no `required` (a field without a default is optional).
    pub(super) fn state_fields(
        &mut self,
        decl: &Decl,
        owner: &str,
        node: &Node,
        types: &TypeTable,
    ) -> Option<Vec<Field>> {
        let fields = self.fields(decl, node, types, &format!("the state of {owner}"))?;
        let mut ok = true;
        for f in &fields {
            if f.required {
                self.error(
                    &f.span,
                    format!("state field `{}` of {owner} cannot be `required`: give it a `default`, or none to make it optional", f.name),
                );
                ok = false;
            }
            if f.rules != Rules::default() {
                self.error(
                    &f.span,
                    format!("state field `{}` of {owner} has rules; state is kept, not checked: it takes `type`, `default` and `description`", f.name),
                );
                ok = false;
            }
        }
        ok.then_some(fields)
    }

    /// Splits `account-{account_id}` into text and placeholders; `owner` is what the
    /// template belongs to (`aggregate \`Account\``).
    pub(super) fn stream_template(
        &mut self,
        owner: &str,
        node: &Node,
        text: &str,
    ) -> Option<Vec<StreamPart>> {
        let bad =
            |reason: &str| format!("`stream` of {owner} (\"{}\") {reason}", text.escape_debug());
        if text.trim().is_empty() {
            self.error(&node.span, bad("is empty"));
            return None;
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let open = rest.find('{');
            let close = rest.find('}');
            match (open, close) {
                (None, None) => {
                    parts.push(StreamPart::Text(rest.to_owned()));
                    break;
                }
                (Some(o), Some(c)) if o < c => {
                    if o > 0 {
                        parts.push(StreamPart::Text(rest[..o].to_owned()));
                    }
                    let param = &rest[o + 1..c];
                    if !names::is_identifier(param) {
                        self.error(
                            &node.span,
                            bad(&format!("has the placeholder `{{{param}}}`; a placeholder is a param name, like `{{account_id}}`")),
                        );
                        return None;
                    }
                    if let Some(StreamPart::Param(prev)) = parts.last() {
                        self.error(
                            &node.span,
                            bad(&format!("puts `{{{prev}}}` and `{{{param}}}` side by side; separate placeholders with text so two commands cannot name the same stream differently")),
                        );
                        return None;
                    }
                    parts.push(StreamPart::Param(param.to_owned()));
                    rest = &rest[c + 1..];
                }
                (_, Some(_)) => {
                    self.error(&node.span, bad("has a `}` without its `{`"));
                    return None;
                }
                (Some(_), None) => {
                    self.error(&node.span, bad("has a `{` without its `}`"));
                    return None;
                }
            }
        }
        Some(parts)
    }

    /// Every placeholder is a required param of every command, of a type whose text is a
    /// stable name (string, integer, uuid, date, an enum).
    fn placeholders(
        &mut self,
        aggregate: &str,
        node: &Node,
        parts: &[StreamPart],
        commands: &[PayloadRef],
        modules: &[Module],
    ) -> bool {
        let mut ok = true;
        for param in parts.iter().filter_map(|p| match p {
            StreamPart::Param(p) => Some(p),
            StreamPart::Text(_) => None,
        }) {
            for r in commands {
                let Some(command) = modules
                    .iter()
                    .find(|m| m.ident == r.module)
                    .and_then(|m| m.commands.iter().find(|c| c.name == r.name))
                else {
                    // The command itself failed validation and was reported.
                    continue;
                };
                let Some(field) = command.fields.iter().find(|f| f.name == *param) else {
                    self.error(
                        &node.span,
                        format!("placeholder `{{{param}}}` of aggregate `{aggregate}` is not a param of command `{}`; every command of an aggregate names its stream", r.name),
                    );
                    ok = false;
                    continue;
                };
                if !field.required && field.default.is_none() {
                    self.error(
                        &node.span,
                        format!("placeholder `{{{param}}}` of aggregate `{aggregate}` uses param `{param}` of command `{}`, which is optional; make it `required`", r.name),
                    );
                    ok = false;
                }
                if !super::text_forms::stable(&field.ty) {
                    self.error(
                        &node.span,
                        format!(
                            "placeholder `{{{param}}}` of aggregate `{aggregate}` uses param `{param}` of command `{}`, a {}; a stream name takes a string, integer, uuid, date or enum param",
                            r.name,
                            field.ty.schema_text(&|t| t.name.clone())
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok
    }
}
