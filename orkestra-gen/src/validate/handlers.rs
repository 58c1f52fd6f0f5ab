//! Handler bindings: one target each, resolved references, retries, emitted events.

use std::collections::HashMap;

use super::shape::describe;
use super::{Decl, Declared, PayloadTables, Validator};
use crate::diagnostic::Diagnostic;
use crate::model::*;
use crate::yaml::{Key, Node, Value};
use orkestra_topic as topic;

pub(super) const HANDLER_KEYS: &[&str] = &[
    "command",
    "event",
    "events",
    "topic",
    "max_retries",
    "concurrency",
    "partition_by",
    "retry_delay",
    "retry_backoff",
    "retry_delay_max",
    "emits",
    "description",
    "dead_letters",
    "once",
];

/// The partition key every message has: its correlation id.
pub(super) const CORRELATION_ID: &str = "correlation_id";

/// What a `dead_letters: true` binding cannot also have: it receives every dead letter
/// of the bus and nothing else, and emits nothing.
const NOT_WITH_DEAD_LETTERS: [&str; 11] = [
    "once",
    "command",
    "event",
    "events",
    "topic",
    "emits",
    "concurrency",
    "partition_by",
    "retry_delay",
    "retry_backoff",
    "retry_delay_max",
];

/// The keys that name what a binding receives; a binding has exactly one.
const TARGET_KEYS: [&str; 4] = ["command", "event", "events", "topic"];

/// Whether a payload is of the kind a target receives (a command and an event may
/// share a name).
fn matches_kind(target: &HandlerTarget, payload: &Payload) -> bool {
    match target {
        HandlerTarget::Command(_) => payload.kind == PayloadKind::Command,
        _ => payload.kind == PayloadKind::Event,
    }
}

/// Commands that already have a handler (a binding or an aggregate), with what it is
/// ("handler `PlaceOrder`"): a command has exactly one.
pub(super) type HandledCommands = HashMap<PayloadRef, String>;

impl Validator {
    /// One handler binding: its target, retry limit and emitted events.
    pub(super) fn handler(
        &mut self,
        decl: &Decl,
        key: &Key,
        node: &Node,
        tables: &PayloadTables,
        handled_commands: &mut HandledCommands,
    ) -> Option<Handler> {
        let Value::Map(entries) = &node.value else {
            self.error(
                &node.span,
                format!(
                    "handler `{}` must be a mapping with `command`, `event`, `events` or `topic`",
                    key.name
                ),
            );
            return None;
        };
        let map = self.keys(entries, HANDLER_KEYS, &format!("in handler `{}`", key.name));
        let description = self.description(&map);
        if let Some(flag) = map.get("dead_letters") {
            return self.dead_letter_binding(key, flag, &map, description);
        }
        let target_key = self.target_key(key, &map)?;
        let target_node = map[target_key];
        let target = match target_key {
            "command" => self.command_target(decl, key, target_node, tables, handled_commands)?,
            "event" => {
                HandlerTarget::Event(self.reference(decl, target_node, &tables.events, "event")?)
            }
            "events" => self.events_target(
                decl,
                &format!("handler `{}`", key.name),
                target_node,
                &tables.events,
            )?,
            _ => self.topic_target(key, target_node, &tables.events)?,
        };
        let max_retries = match map.get("max_retries") {
            None => None,
            Some(n) => Some(self.max_retries(key, n)?),
        };
        let concurrency = match map.get("concurrency") {
            None => None,
            Some(n) => Some(self.concurrency(key, n)?),
        };
        let partition_by = match map.get("partition_by") {
            None => None,
            Some(n) => Some(PartitionKey {
                field: self.string(n, "a field or param name, or `correlation_id`")?,
                span: n.span.clone(),
            }),
        };
        let retry = self.retry_delays(key, &map)?;
        let once = match map.get("once") {
            None => false,
            Some(n) => self.once(key, n, &target)?,
        };
        let emits = match map.get("emits") {
            None => Vec::new(),
            Some(n) => self.emits(decl, key, n, &tables.events)?,
        };
        Some(Handler {
            name: key.name.clone(),
            span: key.span.clone(),
            description,
            target,
            max_retries,
            concurrency,
            partition_by,
            retry,
            once,
            emits,
        })
    }

    /// `{ dead_letters: true }`, optionally with `max_retries` and `description`.
    fn dead_letter_binding(
        &mut self,
        key: &Key,
        flag: &Node,
        map: &HashMap<&str, &Node>,
        description: Option<String>,
    ) -> Option<Handler> {
        let mut ok = match flag.value {
            Value::Bool(true) => true,
            Value::Bool(false) => {
                self.error(
                    &flag.span,
                    format!(
                        "`dead_letters: false` binds nothing; give handler `{}` a target, or set `dead_letters: true` to receive every dead letter",
                        key.name
                    ),
                );
                false
            }
            _ => {
                self.error(
                    &flag.span,
                    format!(
                        "`dead_letters` of handler `{}` must be `true`, found {}",
                        key.name,
                        describe(flag)
                    ),
                );
                false
            }
        };
        for other in NOT_WITH_DEAD_LETTERS {
            if let Some(n) = map.get(other) {
                self.error(
                    &n.span,
                    format!(
                        "handler `{}` receives dead letters, so it cannot also have `{other}`; a dead-letter binding receives every dead letter of the bus and emits nothing",
                        key.name
                    ),
                );
                ok = false;
            }
        }
        let max_retries = match map.get("max_retries") {
            None => None,
            Some(n) => Some(self.max_retries(key, n)?),
        };
        ok.then(|| Handler {
            name: key.name.clone(),
            span: key.span.clone(),
            description,
            target: HandlerTarget::DeadLetters,
            max_retries,
            concurrency: None,
            partition_by: None,
            retry: RetryDelays::default(),
            once: false,
            emits: Vec::new(),
        })
    }

    /// The one target key of a binding.
    fn target_key(&mut self, key: &Key, map: &HashMap<&str, &Node>) -> Option<&'static str> {
        let targets: Vec<&'static str> = TARGET_KEYS
            .into_iter()
            .filter(|t| map.contains_key(t))
            .collect();
        match targets.as_slice() {
            [] => {
                self.error(&key.span, format!("handler `{}` has no target: give it one of `command`, `event`, `events` or `topic`", key.name));
                None
            }
            [one] => Some(*one),
            several => {
                let list = several
                    .iter()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                self.error(
                    &key.span,
                    format!(
                        "handler `{}` has several targets ({list}); give it exactly one",
                        key.name
                    ),
                );
                None
            }
        }
    }

    /// `command: Name`: a command no other binding handles.
    fn command_target(
        &mut self,
        decl: &Decl,
        key: &Key,
        node: &Node,
        tables: &PayloadTables,
        handled_commands: &mut HandledCommands,
    ) -> Option<HandlerTarget> {
        let r = self.reference(decl, node, &tables.commands, "command")?;
        if let Some(first) = handled_commands.get(&r) {
            self.error(
                &node.span,
                format!(
                    "command `{}` already has {first}; a command has exactly one handler",
                    r.name
                ),
            );
            return None;
        }
        handled_commands.insert(r.clone(), format!("handler `{}`", key.name));
        Some(HandlerTarget::Command(r))
    }

    /// `events: [A, B]` of `owner` (`handler \`X\``, `projection \`X\``): a non-empty
    /// list of distinct known events whose names can be variants.
    pub(super) fn events_target(
        &mut self,
        decl: &Decl,
        owner: &str,
        node: &Node,
        events: &[Declared],
    ) -> Option<HandlerTarget> {
        let Value::Seq(items) = &node.value else {
            self.error(
                &node.span,
                format!(
                    "`events` of {owner} must be a list of event names, found {}",
                    node.kind()
                ),
            );
            return None;
        };
        if items.is_empty() {
            self.error(&node.span, format!("`events` of {owner} is empty"));
            return None;
        }
        let mut refs: Vec<PayloadRef> = Vec::new();
        for item in items {
            let r = self.reference(decl, item, events, "event")?;
            if refs.contains(&r) {
                self.error(&item.span, format!("event `{}` is listed twice", r.name));
                return None;
            }
            if refs.iter().any(|x| x.name == r.name) {
                self.error(
                    &item.span,
                    format!(
                        "two events named `{}` in {owner}; variants are named after events",
                        r.name
                    ),
                );
                return None;
            }
            refs.push(r);
        }
        Some(HandlerTarget::Events(refs))
    }

    /// `topic: "pattern"`: every known event it matches (a warning when none).
    fn topic_target(
        &mut self,
        key: &Key,
        node: &Node,
        events: &[Declared],
    ) -> Option<HandlerTarget> {
        let pattern = self.string(node, "`topic`")?;
        if pattern.contains(char::is_whitespace) {
            self.error(
                &node.span,
                format!("topic pattern `{pattern}` must not contain spaces"),
            );
            return None;
        }
        let mut matched: Vec<PayloadRef> = Vec::new();
        for e in events.iter().filter(|e| topic::matches(&pattern, &e.topic)) {
            if matched.iter().any(|m| m.name == e.name) {
                self.error(&node.span, format!("topic pattern `{pattern}` matches two events named `{}`; variants are named after events", e.name));
                return None;
            }
            matched.push(PayloadRef {
                module: e.module.clone(),
                name: e.name.clone(),
            });
        }
        if matched.is_empty() {
            let d = Diagnostic::warning(
                &node.span,
                format!(
                    "topic pattern `{pattern}` matches no known event; handler `{}` will only see events from other services as `Other`",
                    key.name
                ),
            );
            self.diags.push(d);
        }
        Some(HandlerTarget::Topic { pattern, matched })
    }

    /// `once: true`: event bindings only (a command's idempotence belongs to its handler's
    /// store: an aggregate recognises a redelivered command itself).
    fn once(&mut self, key: &Key, n: &Node, target: &HandlerTarget) -> Option<bool> {
        let Value::Bool(once) = n.value else {
            self.error(
                &n.span,
                format!(
                    "`once` of handler `{}` must be `true` or `false`, found {}",
                    key.name,
                    describe(n)
                ),
            );
            return None;
        };
        if once && matches!(target, HandlerTarget::Command(_)) {
            self.error(
                &n.span,
                format!(
                    "handler `{}` handles a command, so it cannot be `once`: a command has one handler and one reply; make the handler idempotent through its store (an aggregate recognises a command delivered again)",
                    key.name
                ),
            );
            return None;
        }
        Some(once)
    }

    /// `max_retries: n`, a non-negative integer that fits a `u32`.
    fn max_retries(&mut self, key: &Key, n: &Node) -> Option<u32> {
        match n.value {
            Value::Int(i) if (0..=i64::from(u32::MAX)).contains(&i) => Some(i as u32),
            Value::Int(i) if i < 0 => {
                self.error(
                    &n.span,
                    format!(
                        "`max_retries` of handler `{}` is negative ({i}); use 0 for no retries",
                        key.name
                    ),
                );
                None
            }
            _ => {
                self.error(
                    &n.span,
                    format!(
                        "`max_retries` of handler `{}` must be a non-negative integer, found {}",
                        key.name,
                        describe(n)
                    ),
                );
                None
            }
        }
    }

    /// `retry_delay: 5s`, `retry_backoff: 2.0`, `retry_delay_max: 60s`: durations as
    /// `<n>ms`, `<n>s` or `<n>m`, a factor of at least 1, a cap not below the delay.
    fn retry_delays(&mut self, key: &Key, map: &HashMap<&str, &Node>) -> Option<RetryDelays> {
        let delay_ms = match map.get("retry_delay") {
            None => None,
            Some(n) => Some(self.duration(key, "retry_delay", n)?),
        };
        let max_ms = match map.get("retry_delay_max") {
            None => None,
            Some(n) => Some(self.duration(key, "retry_delay_max", n)?),
        };
        let backoff = match map.get("retry_backoff") {
            None => None,
            Some(n) => {
                let factor = match n.value {
                    Value::Int(i) => i as f64,
                    Value::Float(f) => f,
                    _ => f64::NAN,
                };
                if !(1.0..=1000.0).contains(&factor) {
                    self.error(
                        &n.span,
                        format!(
                            "`retry_backoff` of handler `{}` must be a number from 1 to 1000 (the factor between two waits), found {}",
                            key.name,
                            describe(n)
                        ),
                    );
                    return None;
                }
                Some(factor)
            }
        };
        if let (Some(delay), Some(max), Some(n)) = (delay_ms, max_ms, map.get("retry_delay_max"))
            && max < delay
        {
            self.error(
                &n.span,
                format!(
                    "`retry_delay_max` of handler `{}` ({max} ms) is below its `retry_delay` ({delay} ms)",
                    key.name
                ),
            );
            return None;
        }
        Some(RetryDelays {
            delay_ms,
            backoff,
            max_ms,
        })
    }

    /// A duration such as `500ms`, `5s` or `2m`, in ms (at least 1 ms, at most 24 h).
    fn duration(&mut self, key: &Key, what: &str, n: &Node) -> Option<u64> {
        let parsed = match &n.value {
            Value::Str(text) => {
                let text = text.trim();
                let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
                    Some(i) => text.split_at(i),
                    None => (text, ""),
                };
                let factor = match unit {
                    "ms" => Some(1),
                    "s" => Some(1000),
                    "m" => Some(60_000),
                    _ => None,
                };
                number
                    .parse::<u64>()
                    .ok()
                    .zip(factor)
                    .and_then(|(n, f)| n.checked_mul(f))
            }
            _ => None,
        };
        match parsed {
            Some(ms) if (1..=86_400_000).contains(&ms) => Some(ms),
            _ => {
                self.error(
                    &n.span,
                    format!(
                        "`{what}` of handler `{}` must be a duration such as `500ms`, `5s` or `2m` (up to 24 h), found {}",
                        key.name,
                        describe(n)
                    ),
                );
                None
            }
        }
    }

    /// `concurrency: n`, from 1 to 65535.
    fn concurrency(&mut self, key: &Key, n: &Node) -> Option<u16> {
        match n.value {
            Value::Int(i) if (1..=i64::from(u16::MAX)).contains(&i) => Some(i as u16),
            _ => {
                self.error(
                    &n.span,
                    format!(
                        "`concurrency` of handler `{}` must be an integer from 1 to 65535, found {}; use 1 for strict arrival order",
                        key.name,
                        describe(n)
                    ),
                );
                None
            }
        }
    }

    /// Every binding's `partition_by` names a field or param that every message it
    /// receives has (or `correlation_id`); reported at the key with the fields they share.
    pub(super) fn check_partition_keys(&mut self, modules: &[Module]) {
        for handler in modules.iter().flat_map(|m| &m.handlers) {
            let Some(key) = &handler.partition_by else {
                continue;
            };
            if key.field == CORRELATION_ID {
                continue;
            }
            let received: Vec<&PayloadRef> = match &handler.target {
                HandlerTarget::Command(r) | HandlerTarget::Event(r) => vec![r],
                HandlerTarget::Events(rs) => rs.iter().collect(),
                HandlerTarget::Topic { matched, .. } => matched.iter().collect(),
                HandlerTarget::DeadLetters => Vec::new(),
            };
            let payloads: Vec<&Payload> = received
                .iter()
                .filter_map(|r| {
                    let module = modules.iter().find(|m| m.ident == r.module)?;
                    module
                        .commands
                        .iter()
                        .chain(&module.events)
                        .find(|p| p.name == r.name && matches_kind(&handler.target, p))
                })
                .collect();
            let lacking: Vec<&str> = payloads
                .iter()
                .filter(|p| !p.fields.iter().any(|f| f.name == key.field))
                .map(|p| p.name.as_str())
                .collect();
            if lacking.is_empty() {
                continue;
            }
            let shared: Vec<&str> = payloads
                .first()
                .map(|first| {
                    first
                        .fields
                        .iter()
                        .map(|f| f.name.as_str())
                        .filter(|name| {
                            payloads
                                .iter()
                                .all(|p| p.fields.iter().any(|f| f.name == *name))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let d = Diagnostic::error(
                &key.span,
                format!(
                    "`partition_by: {}` of handler `{}`: no field or param `{}` in {}; the key must be in every message the binding receives, or be `correlation_id`",
                    key.field,
                    handler.name,
                    key.field,
                    lacking
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .did_you_mean(
                &key.field,
                shared.iter().copied().chain(std::iter::once(CORRELATION_ID)),
            );
            self.diags.push(d);
        }
    }

    /// `emits: [A, B]`: known events.
    fn emits(
        &mut self,
        decl: &Decl,
        key: &Key,
        n: &Node,
        events: &[Declared],
    ) -> Option<Vec<PayloadRef>> {
        let Value::Seq(items) = &n.value else {
            self.error(
                &n.span,
                format!(
                    "`emits` of handler `{}` must be a list of event names",
                    key.name
                ),
            );
            return None;
        };
        items
            .iter()
            .map(|item| self.reference(decl, item, events, "event"))
            .collect()
    }

    /// Resolves `Name` (this namespace) or `Qualifier.Name` to a declared command or event.
    pub(super) fn reference(
        &mut self,
        decl: &Decl,
        node: &Node,
        table: &[Declared],
        what: &str,
    ) -> Option<PayloadRef> {
        let text = self.string(node, &format!("a {what} name"))?;
        let (qualifier, name) = match text.rsplit_once('.') {
            Some((q, n)) => (q.to_owned(), n.to_owned()),
            None => (decl.qualifier.clone(), text.clone()),
        };
        if let Some(d) = table
            .iter()
            .find(|d| d.qualifier == qualifier && d.name == name)
        {
            return Some(PayloadRef {
                module: d.module.clone(),
                name: d.name.clone(),
            });
        }
        let candidates: Vec<String> = table
            .iter()
            .map(|d| {
                if d.qualifier == decl.qualifier {
                    d.name.clone()
                } else {
                    format!("{}.{}", d.qualifier, d.name)
                }
            })
            .collect();
        let d = Diagnostic::error(&node.span, format!("unknown {what} `{text}`"))
            .did_you_mean(&text, candidates.iter().map(String::as_str));
        self.diags.push(d);
        None
    }
}
