//! Projections: the events a read model receives from the store (`event`, `events` or
//! `topic`, as handler bindings), `batch`, `max_retries`, `checkpoint` (`store` or
//! `none`), `partitions` (as a process manager's); names unique across namespaces
//! (a projection's name is its checkpoint's) and free of collisions among the items
//! generated in `<namespace>::projections`.

use std::collections::HashMap;

use heck::ToSnakeCase;

use super::shape::describe;
use super::{Decl, Declared, PayloadTables, Validator};
use crate::diagnostic::{Diagnostic, Span};
use crate::model::*;
use crate::names;
use crate::yaml::{Key, Node, Value};
use orkestra_topic as topic;

pub(super) const PROJECTION_KEYS: &[&str] = &[
    "event",
    "events",
    "topic",
    "batch",
    "max_retries",
    "checkpoint",
    "partitions",
    "description",
];

/// The keys that name what a projection receives; it has exactly one.
const TARGET_KEYS: [&str; 3] = ["event", "events", "topic"];

/// The largest `batch`: one PostgreSQL transaction per batch must stay reasonable.
const MAX_BATCH: i64 = 100_000;

/// The most partitions a worker may have: the runtime's `store::MAX_PARTITIONS` (a unit
/// test holds the two equal; this crate does not depend on the runtime).
pub(super) const MAX_PARTITIONS: i64 = 1024;

/// Projection names seen so far, across namespaces (the checkpoint's name), and the
/// generated items of each namespace: the name and span of what claimed them.
#[derive(Default)]
pub(super) struct ProjectionNames {
    checkpoints: HashMap<String, (String, Span)>,
    items: HashMap<(String, String), (String, Span)>,
}

impl Validator {
    /// One projection.
    pub(super) fn projection(
        &mut self,
        decl: &Decl,
        key: &Key,
        node: &Node,
        tables: &PayloadTables,
        seen: &mut ProjectionNames,
    ) -> Option<Projection> {
        let Value::Map(entries) = &node.value else {
            self.error(
                &node.span,
                format!(
                    "projection `{}` must be a mapping with `event`, `events` or `topic`",
                    key.name
                ),
            );
            return None;
        };
        let map = self.keys(
            entries,
            PROJECTION_KEYS,
            &format!("in projection `{}`", key.name),
        );
        let name_ok = self.projection_name(decl, key, seen);
        let description = self.description(&map);
        let targets: Vec<&str> = TARGET_KEYS
            .into_iter()
            .filter(|t| map.contains_key(t))
            .collect();
        let target = match targets.as_slice() {
            [] => {
                self.error(
                    &key.span,
                    format!(
                        "projection `{}` has no target: give it one of `event`, `events` or `topic`",
                        key.name
                    ),
                );
                None
            }
            ["event"] => self
                .reference(decl, map["event"], &tables.events, "event")
                .map(HandlerTarget::Event),
            ["events"] => self.events_target(
                decl,
                &format!("projection `{}`", key.name),
                map["events"],
                &tables.events,
            ),
            ["topic"] => self.projection_topic(key, map["topic"], &tables.events),
            several => {
                let list = several
                    .iter()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                self.error(
                    &key.span,
                    format!(
                        "projection `{}` has several targets ({list}); give it exactly one",
                        key.name
                    ),
                );
                None
            }
        };
        let batch = map
            .get("batch")
            .map(|n| self.projection_int(key, n, "batch", 1, MAX_BATCH));
        let max_retries = map
            .get("max_retries")
            .map(|n| self.projection_int(key, n, "max_retries", 0, i64::from(u32::MAX)));
        let partitions = match map.get("partitions") {
            None => Some(1),
            Some(n) => self.partitions(&format!("projection `{}`", key.name), n),
        };
        let batch = match batch {
            Some(None) => return None,
            Some(Some(b)) => Some(b as u32),
            None => None,
        };
        let max_retries = match max_retries {
            Some(None) => return None,
            Some(Some(n)) => Some(n as u32),
            None => None,
        };
        let checkpoint = match map.get("checkpoint") {
            None => true,
            Some(n) => match &n.value {
                Value::Str(s) if s == "store" => true,
                Value::Str(s) if s == "none" => false,
                _ => {
                    self.error(
                        &n.span,
                        format!(
                            "`checkpoint` of projection `{}` must be `store` (the default: resume from a checkpoint kept in the store) or `none` (replay from the start at each launch, for a read model kept in memory), found {}",
                            key.name,
                            describe(n)
                        ),
                    );
                    return None;
                }
            },
        };
        if !name_ok {
            return None;
        }
        Some(Projection {
            name: key.name.clone(),
            span: key.span.clone(),
            description,
            target: target?,
            batch,
            max_retries,
            checkpoint,
            partitions: partitions?,
        })
    }

    /// An identifier, unique across namespaces (it names the checkpoint), whose
    /// generated items (`<Name>`, `<Name>Event`, `<name>()`) collide with no other
    /// projection's in the same namespace.
    fn projection_name(&mut self, decl: &Decl, key: &Key, seen: &mut ProjectionNames) -> bool {
        if !self.identifier(key, "projection name") {
            return false;
        }
        if key.name == "Self" || key.name == "Other" {
            self.error(
                &key.span,
                format!("`{}` is reserved; choose another name", key.name),
            );
            return false;
        }
        if let Some((first_ns, span)) = seen.checkpoints.get(&key.name) {
            self.error(
                &key.span,
                format!(
                    "projection `{}` is also declared in namespace `{first_ns}` (at {}:{}); a projection's name is its checkpoint's and must be unique",
                    key.name,
                    span.file.display(),
                    span.line
                ),
            );
            return false;
        }
        seen.checkpoints
            .insert(key.name.clone(), (decl.namespace.clone(), key.span.clone()));
        let pascal = names::pascal(&key.name);
        let items = [
            pascal.clone(),
            format!("{pascal}Event"),
            format!("{pascal}Binding"),
            format!("fn {}", key.name.to_snake_case()),
        ];
        for item in &items {
            if let Some((first, span)) = seen.items.get(&(decl.ident.clone(), item.clone())) {
                self.error(
                    &key.span,
                    format!(
                        "projection `{}` would generate `{}`, which projection `{first}` (at {}:{}) also generates in `{}::projections`; rename one",
                        key.name,
                        item.trim_start_matches("fn "),
                        span.file.display(),
                        span.line,
                        decl.ident
                    ),
                );
                return false;
            }
        }
        for item in items {
            seen.items.insert(
                (decl.ident.clone(), item),
                (key.name.clone(), key.span.clone()),
            );
        }
        true
    }

    /// `topic: "pattern"`: every known event it matches (a warning when none).
    fn projection_topic(
        &mut self,
        key: &Key,
        node: &Node,
        events: &[Declared],
    ) -> Option<HandlerTarget> {
        let pattern = self.string(node, "`topic`")?;
        if pattern.is_empty() || pattern.contains(char::is_whitespace) {
            self.error(
                &node.span,
                format!(
                    "topic pattern `{pattern}` of projection `{}` must be non-empty and without spaces",
                    key.name
                ),
            );
            return None;
        }
        let mut matched: Vec<PayloadRef> = Vec::new();
        for e in events.iter().filter(|e| topic::matches(&pattern, &e.topic)) {
            if matched.iter().any(|m| m.name == e.name) {
                self.error(
                    &node.span,
                    format!(
                        "topic pattern `{pattern}` matches two events named `{}`; variants are named after events",
                        e.name
                    ),
                );
                return None;
            }
            matched.push(PayloadRef {
                module: e.module.clone(),
                name: e.name.clone(),
            });
        }
        if matched.is_empty() {
            self.diags.push(Diagnostic::warning(
                &node.span,
                format!(
                    "topic pattern `{pattern}` matches no known event; projection `{}` will only see stored events of other schemas, as `Other`",
                    key.name
                ),
            ));
        }
        Some(HandlerTarget::Topic { pattern, matched })
    }

    /// `partitions` of a projection or a process manager (`owner` names it): an integer
    /// from 1 to [`MAX_PARTITIONS`]. Each mistake gets its own sentence, and a help line
    /// with the range (or the unquoted number, for one written as text).
    pub(super) fn partitions(&mut self, owner: &str, n: &Node) -> Option<u32> {
        let range = format!(
            "use an integer from 1 to {MAX_PARTITIONS}; the default, 1, runs it as one partition"
        );
        let (problem, help) = match &n.value {
            Value::Int(i) if (1..=MAX_PARTITIONS).contains(i) => return u32::try_from(*i).ok(),
            Value::Int(0) => (
                format!("`partitions` of {owner} is 0: a worker needs at least one partition"),
                range,
            ),
            Value::Int(i) if *i < 0 => (
                format!(
                    "`partitions` of {owner} is negative ({i}): a worker needs at least one partition"
                ),
                range,
            ),
            Value::Int(i) => (
                format!(
                    "`partitions` of {owner} is {i}, out of range: a worker has 1 to {MAX_PARTITIONS} partitions"
                ),
                range,
            ),
            Value::Str(text)
                if text
                    .trim()
                    .parse::<i64>()
                    .is_ok_and(|i| (1..=MAX_PARTITIONS).contains(&i)) =>
            {
                (
                    format!(
                        "`partitions` of {owner} must be a number, found {}",
                        describe(n)
                    ),
                    format!("write it without quotes: `partitions: {}`", text.trim()),
                )
            }
            _ => (
                format!(
                    "`partitions` of {owner} must be a whole number, found {}",
                    describe(n)
                ),
                range,
            ),
        };
        self.diags
            .push(Diagnostic::error(&n.span, problem).with_help(help));
        None
    }

    /// An integer setting in `min..=max`.
    fn projection_int(
        &mut self,
        key: &Key,
        n: &Node,
        what: &str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        match n.value {
            Value::Int(i) if (min..=max).contains(&i) => Some(i),
            _ => {
                self.error(
                    &n.span,
                    format!(
                        "`{what}` of projection `{}` must be an integer from {min} to {max}, found {}",
                        key.name,
                        describe(n)
                    ),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_partition_limit_is_the_runtime_s() {
        assert_eq!(
            super::MAX_PARTITIONS,
            i64::from(orkestra_runtime::store::MAX_PARTITIONS)
        );
    }
}
