//! Decisions: one command decided over the events that match its read items (a dynamic
//! consistency boundary). The command (claimed once across aggregates, decisions and
//! bindings), the stream its events go to, the read items (events that all carry the
//! item's tag, whose value is a required param of the command with a stable text form),
//! typed state with defaults, the emitted events and conflict retries.

use std::collections::HashMap;

use super::aggregates::DEFAULT_CONFLICT_RETRIES;
use super::handlers::HandledCommands;
use super::shape::describe;
use super::{Decl, PayloadTables, TypeTable, Validator, text_forms};
use crate::diagnostic::{Diagnostic, Span};
use crate::model::*;
use crate::names;
use crate::yaml::{Key, Node, Value};

pub(super) const DECISION_KEYS: &[&str] = &[
    "description",
    "command",
    "stream",
    "reads",
    "state",
    "emits",
    "conflict_retries",
];

pub(super) const READ_KEYS: &[&str] = &["events", "tag"];

/// The most `conflict_retries` a decision may ask for (as aggregates).
const MAX_CONFLICT_RETRIES: i64 = 1000;

/// What the items generated for decision `N` append to its name (the trait is `N`).
const GENERATED_SUFFIXES: [&str; 7] = ["", "State", "Event", "Reads", "Emit", "Decision", "Test"];

/// Decision names across every namespace (their subscriptions are named after them),
/// with where each was first declared.
pub(super) type DecisionNames = HashMap<String, (String, Span)>;

impl Validator {
    /// One decision. `modules` holds every namespace's resolved commands and events (for
    /// the params and the events' tags).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decision(
        &mut self,
        decl: &Decl,
        key: &Key,
        node: &Node,
        types: &TypeTable,
        tables: &PayloadTables,
        modules: &[Module],
        handled_commands: &mut HandledCommands,
        seen: &mut DecisionNames,
    ) -> Option<Decision> {
        let name = key.name.clone();
        let Value::Map(entries) = &node.value else {
            self.error(
                &node.span,
                format!(
                    "decision `{name}` must be a mapping with `command`, `stream`, `reads` and `emits`"
                ),
            );
            return None;
        };
        let mut ok = self.decision_name(key, seen);
        let map = self.keys(entries, DECISION_KEYS, &format!("in decision `{name}`"));
        let description = self.description(&map);
        let owner = format!("decision `{name}`");
        let command = match map.get("command") {
            None => {
                self.error(
                    &key.span,
                    format!("{owner} has no `command`: name the command it decides"),
                );
                None
            }
            Some(n) => self
                .reference(decl, n, &tables.commands, "command")
                .map(|r| (r, *n)),
        };
        // Claimed once it resolved, so a second claimant is reported at its own place.
        if let Some((r, n)) = &command {
            if let Some(first) = handled_commands.get(r) {
                self.error(
                    &n.span,
                    format!(
                        "command `{}` already has {first}; a command has exactly one handler",
                        r.name
                    ),
                );
                ok = false;
            } else {
                handled_commands.insert(r.clone(), owner.clone());
            }
        }
        let command_payload = command.as_ref().and_then(|(r, _)| {
            modules
                .iter()
                .find(|m| m.ident == r.module)
                .and_then(|m| m.commands.iter().find(|c| c.name == r.name))
        });
        let stream = match map.get("stream") {
            None => {
                self.error(
                    &key.span,
                    format!("{owner} has no `stream`: name the stream its events are appended to from the command's params, like `stream: \"subscription-{{course_id}}-{{student_id}}\"`"),
                );
                None
            }
            Some(n) => self
                .string(n, &format!("`stream` of {owner}"))
                .and_then(|text| {
                    self.stream_template(&owner, n, &text)
                        .map(|parts| (n, text, parts))
                }),
        };
        if let (Some((stream_node, _, parts)), Some(command)) = (&stream, command_payload) {
            for part in parts {
                if let StreamPart::Param(param) = part {
                    ok &= self.decision_param(
                        &owner,
                        &format!("placeholder `{{{param}}}`"),
                        param,
                        command,
                        &stream_node.span,
                    );
                }
            }
        }
        let reads = match map.get("reads") {
            None => {
                self.error(
                    &key.span,
                    format!("{owner} has no `reads`: list the events its rule depends on, like `reads: {{ course: {{ events: [CourseDefined], tag: course_id }} }}`"),
                );
                None
            }
            Some(n) => self.read_items(decl, &owner, n, tables, modules, command_payload),
        };
        let state = match map.get("state") {
            None => Some(Vec::new()),
            Some(n) => self
                .state_fields(decl, &owner, n, types)
                .and_then(|fields| {
                    self.no_personal_decision_state(&owner, &fields)
                        .then_some(fields)
                }),
        };
        let emits = match map.get("emits") {
            None => {
                self.error(
                    &key.span,
                    format!("{owner} has no `emits`: list the events it may append"),
                );
                None
            }
            Some(n) => self.payload_list(
                decl,
                &owner,
                key,
                Some(*n),
                "emits",
                &tables.events,
                "event",
                true,
            ),
        };
        let conflict_retries = match map.get("conflict_retries") {
            None => Some(DEFAULT_CONFLICT_RETRIES),
            Some(n) => match n.value {
                Value::Int(i) if (0..=MAX_CONFLICT_RETRIES).contains(&i) => Some(i as u32),
                _ => {
                    self.error(
                        &n.span,
                        format!(
                            "`conflict_retries` of {owner} must be an integer from 0 to {MAX_CONFLICT_RETRIES}, found {}",
                            describe(n)
                        ),
                    );
                    None
                }
            },
        };
        let (
            Some((command, _)),
            Some((_, stream_text, stream)),
            Some(reads),
            Some(state),
            Some((emits, _)),
            Some(conflict_retries),
        ) = (command, stream, reads, state, emits, conflict_retries)
        else {
            return None;
        };
        ok.then(|| Decision {
            name,
            span: key.span.clone(),
            description,
            command,
            stream,
            stream_text,
            reads,
            state,
            emits,
            conflict_retries,
        })
    }

    /// An identifier, unique across namespaces and after case conversion, whose
    /// generated items no other decision's use.
    fn decision_name(&mut self, key: &Key, seen: &mut DecisionNames) -> bool {
        if !self.identifier(key, "decision name") {
            return false;
        }
        let pascal = names::pascal(&key.name);
        if let Some((first, span)) = seen.get(&pascal) {
            let message = if *first == key.name {
                format!(
                    "decision `{}` is declared twice (first at {}:{}); its subscription is named after it",
                    key.name,
                    span.file.display(),
                    span.line
                )
            } else {
                format!(
                    "decision `{}` collides with `{first}` (at {}:{}): both become `{pascal}`",
                    key.name,
                    span.file.display(),
                    span.line
                )
            };
            self.error(&key.span, message);
            return false;
        }
        let generated: Vec<String> = GENERATED_SUFFIXES
            .iter()
            .map(|suffix| format!("{pascal}{suffix}"))
            .collect();
        if let Some((other, (first, span))) = generated
            .iter()
            .find_map(|g| seen.get(&format!("item:{g}")).map(|f| (g, f)))
        {
            self.error(
                &key.span,
                format!(
                    "decision `{}` would generate `{other}`, which decision `{first}` (at {}:{}) also generates; rename one",
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

    /// `reads:`: a non-empty mapping of item names to `{ events: [..], tag: param }` (or
    /// `tag: { tag_name: param }`).
    fn read_items(
        &mut self,
        decl: &Decl,
        owner: &str,
        node: &Node,
        tables: &PayloadTables,
        modules: &[Module],
        command: Option<&Payload>,
    ) -> Option<Vec<ReadItem>> {
        let Value::Map(entries) = &node.value else {
            self.error(
                &node.span,
                format!(
                    "`reads` of {owner} must be a mapping of read items, found {}",
                    node.kind()
                ),
            );
            return None;
        };
        if entries.is_empty() {
            self.error(
                &node.span,
                format!("`reads` of {owner} is empty; a decision reads at least one item (a condition over nothing would lock every append)"),
            );
            return None;
        }
        self.check_duplicates(entries);
        let mut items: Vec<ReadItem> = Vec::new();
        let mut ok = true;
        for (key, item) in entries {
            if !self.identifier(key, &format!("read item name in {owner}")) {
                ok = false;
                continue;
            }
            if items
                .iter()
                .any(|i| names::snake(&i.name) == names::snake(&key.name))
            {
                // Exact duplicates were reported by `check_duplicates`.
                if items.iter().all(|i| i.name != key.name) {
                    self.error(
                        &key.span,
                        format!("read items of {owner} collide after snake case at `{}`; each names a field of the generated reads", names::snake(&key.name)),
                    );
                }
                ok = false;
                continue;
            }
            match self.read_item(decl, owner, key, item, tables, modules, command) {
                Some(i) => items.push(i),
                None => ok = false,
            }
        }
        ok.then_some(items)
    }

    /// One read item.
    #[allow(clippy::too_many_arguments)]
    fn read_item(
        &mut self,
        decl: &Decl,
        owner: &str,
        key: &Key,
        node: &Node,
        tables: &PayloadTables,
        modules: &[Module],
        command: Option<&Payload>,
    ) -> Option<ReadItem> {
        let item = format!("read item `{}` of {owner}", key.name);
        let Value::Map(entries) = &node.value else {
            self.error(
                &node.span,
                format!(
                    "{item} must be a mapping with `events` and `tag`, found {}",
                    node.kind()
                ),
            );
            return None;
        };
        let map = self.keys(entries, READ_KEYS, &format!("in {item}"));
        let events = match map.get("events") {
            None => {
                self.error(
                    &key.span,
                    format!("{item} has no `events`: list the event types it reads"),
                );
                None
            }
            Some(n) => self.payload_list(
                decl,
                &item,
                key,
                Some(*n),
                "events",
                &tables.events,
                "event",
                true,
            ),
        };
        let tag = match map.get("tag") {
            None => {
                self.error(
                    &key.span,
                    format!("{item} has no `tag`: name the command param whose value the events must carry, like `tag: course_id`"),
                );
                None
            }
            Some(n) => self.read_tag(&item, n),
        };
        let (Some((events, nodes)), Some((tag, param, tag_node))) = (events, tag) else {
            return None;
        };
        let mut ok = match command {
            Some(command) => self.decision_param(
                owner,
                &format!("read item `{}`", key.name),
                &param,
                command,
                &tag_node.span,
            ),
            // The command failed to resolve and was reported.
            None => false,
        };
        for (r, event_node) in events.iter().zip(nodes) {
            let Some(event) = modules
                .iter()
                .find(|m| m.ident == r.module)
                .and_then(|m| m.events.iter().find(|e| e.name == r.name))
            else {
                // The event itself failed validation and was reported.
                ok = false;
                continue;
            };
            if !event.tags.contains(&tag) {
                let listed = if event.tags.is_empty() {
                    "it has no `tags`".to_owned()
                } else {
                    format!(
                        "its tags are {}",
                        event
                            .tags
                            .iter()
                            .map(|t| format!("`{t}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                self.error(
                    &event_node.span,
                    format!(
                        "event `{}` is read by {item} through tag `{tag}`, but {listed}; add `{tag}` to the event's `tags` (the store finds the events by it)",
                        r.name
                    ),
                );
                ok = false;
            }
        }
        ok.then(|| ReadItem {
            name: key.name.clone(),
            events,
            tag,
            param,
        })
    }

    /// `tag: param` (the tag is named like the param) or `tag: { tag_name: param }`: the
    /// tag key, the param and the node of the param.
    fn read_tag<'n>(&mut self, item: &str, node: &'n Node) -> Option<(String, String, &'n Node)> {
        let bad = |found: &str| {
            format!(
                "`tag` of {item} must be a param name (`tag: course_id`) or one tag mapped to a param (`tag: {{ course_id: course }}`), found {found}"
            )
        };
        let (tag, param_node) = match &node.value {
            Value::Str(s) => (s.clone(), node),
            Value::Map(entries) if entries.len() == 1 => {
                let (k, v) = &entries[0];
                (k.name.clone(), v)
            }
            _ => {
                self.error(&node.span, bad(node.kind()));
                return None;
            }
        };
        let param = match &param_node.value {
            Value::Str(s) => s.clone(),
            _ => {
                self.error(&param_node.span, bad(param_node.kind()));
                return None;
            }
        };
        for (text, what) in [(&tag, "tag"), (&param, "param")] {
            if !names::is_identifier(text) {
                self.error(
                    &param_node.span,
                    format!("`tag` of {item} names the {what} `{text}`, which is not a field name"),
                );
                return None;
            }
        }
        Some((tag, param, param_node))
    }

    /// `param` (used by `user`, a placeholder or a read item of `owner`) is a required
    /// param of the command with a stable text form.
    fn decision_param(
        &mut self,
        owner: &str,
        user: &str,
        param: &str,
        command: &Payload,
        span: &Span,
    ) -> bool {
        let Some(field) = command.fields.iter().find(|f| f.name == param) else {
            let d = Diagnostic::error(
                span,
                format!(
                    "{user} of {owner} uses param `{param}`, which command `{}` does not have",
                    command.name
                ),
            )
            .did_you_mean(param, command.fields.iter().map(|f| f.name.as_str()));
            self.diags.push(d);
            return false;
        };
        let mut ok = true;
        if !field.required && field.default.is_none() {
            self.error(
                span,
                format!("{user} of {owner} uses param `{param}` of command `{}`, which is optional; make it `required`", command.name),
            );
            ok = false;
        }
        if !text_forms::stable(&field.ty) {
            self.error(
                span,
                format!(
                    "{user} of {owner} uses param `{param}` of command `{}`, a {}; its value must have one text form: a string, integer, uuid, date or enum param",
                    command.name,
                    field.ty.schema_text(&|t| t.name.clone())
                ),
            );
            ok = false;
        }
        ok
    }
}
