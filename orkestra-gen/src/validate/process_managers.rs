//! Process managers: `correlate_by` (a required field of every event it listens to),
//! typed state, the events that start, drive and end an instance (each in one list),
//! the commands it dispatches and named timers with durations (`500ms`, `30s`, `30m`,
//! `2h`) and `partitions` (as a projection's). Names are unique across namespaces: the instance streams and the feed's
//! checkpoint are named after them.

use std::collections::HashMap;

use super::shape::describe;
use super::{Decl, PayloadTables, TypeTable, Validator};
use crate::diagnostic::Span;
use crate::model::*;
use crate::names;
use crate::yaml::{Key, Node, Value};

pub(super) const PROCESS_KEYS: &[&str] = &[
    "description",
    "correlate_by",
    "state",
    "starts_on",
    "handles",
    "ends_on",
    "dispatches",
    "timeouts",
    "partitions",
    "personal_data",
];

pub(super) const TIMEOUT_KEYS: &[&str] = &["after", "description"];

/// The longest timer: 366 days.
const MAX_TIMEOUT_MS: u64 = 366 * 24 * 3_600_000;

/// The prefix of a process manager's instance streams, as the generated code names it.
pub(crate) fn stream_prefix(name: &str) -> String {
    format!(
        "pm-{}",
        names::snake(name)
            .trim_start_matches("r#")
            .replace('_', "-")
    )
}

/// Process manager names seen so far across namespaces (snake case → first name, span).
/// Two names whose streams cannot overlap cannot generate the same items either (`X` and
/// `XState` overlap).
#[derive(Default)]
pub(super) struct ProcessNames(HashMap<String, (String, Span)>);

impl Validator {
    /// One process manager.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn process_manager(
        &mut self,
        decl: &Decl,
        key: &Key,
        node: &Node,
        types: &TypeTable,
        tables: &PayloadTables,
        modules: &[Module],
        seen: &mut ProcessNames,
    ) -> Option<ProcessManager> {
        let name = key.name.clone();
        let Value::Map(entries) = &node.value else {
            self.error(
                &node.span,
                format!(
                    "process manager `{name}` must be a mapping with `correlate_by` and `starts_on`"
                ),
            );
            return None;
        };
        let mut ok = self.process_name(key, seen);
        let owner = format!("process manager `{name}`");
        let map = self.keys(entries, PROCESS_KEYS, &format!("in {owner}"));
        let description = self.description(&map);
        let correlate_by = match map.get("correlate_by") {
            None => {
                self.error(
                    &key.span,
                    format!("{owner} has no `correlate_by`: name the field of its events that tells instances apart, like `correlate_by: order_id`"),
                );
                None
            }
            Some(n) => self
                .string(n, &format!("`correlate_by` of {owner}"))
                .and_then(|field| {
                    if names::is_identifier(&field) {
                        Some(field)
                    } else {
                        self.error(
                            &n.span,
                            format!(
                                "`correlate_by` of {owner} must be a field name, found `{field}`"
                            ),
                        );
                        None
                    }
                }),
        };
        let state = match map.get("state") {
            None => Some(Vec::new()),
            Some(n) => self.state_fields(decl, &owner, n, types),
        };
        if let Some(n) = map.get("personal_data") {
            self.error(
                &n.span,
                format!("{owner} cannot hold personal data: its state is recorded in `orkestra.ProcessStep` records, which are not encrypted; keep the person's id in the state and read the personal data where it is needed"),
            );
            ok = false;
        }
        let mut lists = Vec::new();
        for (section, required) in [("starts_on", true), ("handles", false), ("ends_on", false)] {
            lists.push(self.payload_list(
                decl,
                &owner,
                key,
                map.get(section).copied(),
                section,
                &tables.events,
                "event",
                required,
            ));
        }
        let dispatches = self.payload_list(
            decl,
            &owner,
            key,
            map.get("dispatches").copied(),
            "dispatches",
            &tables.commands,
            "command",
            false,
        );
        // Each event has one role; variants of the event enum are named after them.
        let mut roles: Vec<(PayloadRef, &str)> = Vec::new();
        for (section, list) in ["starts_on", "handles", "ends_on"].into_iter().zip(&lists) {
            let Some((refs, nodes)) = list else { continue };
            for (r, item) in refs.iter().zip(nodes) {
                if let Some((_, first)) = roles.iter().find(|(x, _)| x == r) {
                    self.error(
                        &item.span,
                        format!("event `{}` is in both `{first}` and `{section}` of {owner}; an event starts, drives or ends an instance, not two of these", r.name),
                    );
                    ok = false;
                } else if let Some((other, _)) = roles
                    .iter()
                    .find(|(x, _)| names::pascal(&x.name) == names::pascal(&r.name))
                {
                    self.error(
                        &item.span,
                        format!("events `{}` and `{}` of {owner} would both be variant `{}`; rename one", other.name, r.name, names::pascal(&r.name)),
                    );
                    ok = false;
                } else {
                    roles.push((r.clone(), section));
                }
            }
        }
        if let Some(field) = &correlate_by {
            for (list, section) in lists.iter().zip(["starts_on", "handles", "ends_on"]) {
                let Some((refs, nodes)) = list else { continue };
                for (r, item) in refs.iter().zip(nodes) {
                    ok &= self.correlated(&owner, field, section, r, item, modules);
                }
            }
        }
        let timeouts = match map.get("timeouts") {
            None => Some(Vec::new()),
            Some(n) => self.timeouts(&owner, n),
        };
        let partitions = match map.get("partitions") {
            None => Some(1),
            Some(n) => self.partitions(&owner, n),
        };
        let (
            Some(correlate_by),
            Some(state),
            [Some((starts_on, _)), Some((handles, _)), Some((ends_on, _))],
            Some((dispatches, _)),
            Some(timeouts),
            Some(partitions),
        ) = (
            correlate_by,
            state,
            <[_; 3]>::try_from(lists).ok()?,
            dispatches,
            timeouts,
            partitions,
        )
        else {
            return None;
        };
        ok.then(|| ProcessManager {
            name,
            span: key.span.clone(),
            description,
            correlate_by,
            state,
            starts_on,
            handles,
            ends_on,
            dispatches,
            timeouts,
            partitions,
            personal_subject: None,
        })
    }

    /// An identifier, unique across namespaces after case conversion, whose instance
    /// streams no other process manager's can be mistaken for.
    fn process_name(&mut self, key: &Key, seen: &mut ProcessNames) -> bool {
        if !self.identifier(key, "process manager name") {
            return false;
        }
        let snake = names::snake(&key.name);
        let prefix = stream_prefix(&key.name);
        if let Some((first, span)) = seen.0.get(&snake) {
            let what = if *first == key.name {
                format!(
                    "is declared twice (first at {}:{})",
                    span.file.display(),
                    span.line
                )
            } else {
                format!(
                    "collides with `{first}` (at {}:{}): both name the streams `{prefix}-<key>`",
                    span.file.display(),
                    span.line
                )
            };
            self.error(
                &key.span,
                format!("process manager `{}` {what}; its instance streams and checkpoint are named after it", key.name),
            );
            return false;
        }
        // `pm-order-<key>` and `pm-order-shipping-<key>`: the key `shipping-42` of one is
        // the key `42` of the other.
        let ours = format!("{prefix}-");
        let overlapping = seen.0.values().find(|(other, _)| {
            let theirs = format!("{}-", stream_prefix(other));
            theirs.starts_with(&ours) || ours.starts_with(&theirs)
        });
        if let Some((first, span)) = overlapping {
            self.error(
                &key.span,
                format!(
                    "process manager `{}` names its streams `{prefix}-<key>`, which can be the streams of `{first}` (at {}:{}) too; rename one so neither name starts with the other's words",
                    key.name,
                    span.file.display(),
                    span.line
                ),
            );
            return false;
        }
        seen.0.insert(snake, (key.name.clone(), key.span.clone()));
        true
    }

    /// `field` is a required field of event `r`, of a type whose text names an instance.
    fn correlated(
        &mut self,
        owner: &str,
        field: &str,
        section: &str,
        r: &PayloadRef,
        item: &Node,
        modules: &[Module],
    ) -> bool {
        let Some(event) = modules
            .iter()
            .find(|m| m.ident == r.module)
            .and_then(|m| m.events.iter().find(|e| e.name == r.name))
        else {
            // The event itself failed validation and was reported.
            return true;
        };
        let Some(f) = event.fields.iter().find(|f| f.name == field) else {
            self.error(
                &item.span,
                format!("event `{}` (in `{section}`) has no field `{field}`, which {owner} correlates its instances by; every event it listens to carries it", r.name),
            );
            return false;
        };
        if !f.required && f.default.is_none() {
            self.error(
                &item.span,
                format!("field `{field}` of event `{}` is optional, but {owner} correlates its instances by it; make it `required`", r.name),
            );
            return false;
        }
        let keyed = matches!(f.ty, Ty::String | Ty::Integer | Ty::Uuid);
        if !keyed {
            self.error(
                &item.span,
                format!(
                    "field `{field}` of event `{}` is a {}; {owner} correlates by it, which takes a string, integer or uuid field",
                    r.name,
                    f.ty.schema_text(&|t| t.name.clone())
                ),
            );
        }
        keyed
    }

    /// `timeouts: { name: { after: 30m } }`.
    fn timeouts(&mut self, owner: &str, node: &Node) -> Option<Vec<Timeout>> {
        let Value::Map(entries) = &node.value else {
            self.error(
                &node.span,
                format!("`timeouts` of {owner} must be a mapping of timer names to `{{ after: 30m }}`, found {}", node.kind()),
            );
            return None;
        };
        let mut out: Vec<Timeout> = Vec::new();
        let mut ok = true;
        for (key, value) in entries {
            if !self.identifier(key, &format!("timer name in {owner}")) {
                ok = false;
                continue;
            }
            if let Some(first) = out
                .iter()
                .find(|t| names::pascal(&t.name) == names::pascal(&key.name))
            {
                self.error(
                    &key.span,
                    format!(
                        "timers `{}` and `{}` of {owner} would both be variant `{}`",
                        first.name,
                        key.name,
                        names::pascal(&key.name)
                    ),
                );
                ok = false;
                continue;
            }
            let Value::Map(fields) = &value.value else {
                self.error(
                    &value.span,
                    format!(
                        "timer `{}` of {owner} must be a mapping like `{{ after: 30m }}`, found {}",
                        key.name,
                        value.kind()
                    ),
                );
                ok = false;
                continue;
            };
            let map = self.keys(
                fields,
                TIMEOUT_KEYS,
                &format!("in timer `{}` of {owner}", key.name),
            );
            let description = self.description(&map);
            let Some(after) = map.get("after") else {
                self.error(
                    &key.span,
                    format!("timer `{}` of {owner} has no `after`: say when it fires, like `after: 30m`", key.name),
                );
                ok = false;
                continue;
            };
            let text = match &after.value {
                Value::Str(s) => s.clone(),
                _ => describe(after),
            };
            match duration_ms(&text) {
                Some(ms) if ms > 0 && ms <= MAX_TIMEOUT_MS => out.push(Timeout {
                    name: key.name.clone(),
                    description,
                    after_ms: ms,
                    after: text,
                }),
                Some(_) => {
                    self.error(
                        &after.span,
                        format!("`after` of timer `{}` of {owner} must be more than zero and at most 366 days, found `{text}`", key.name),
                    );
                    ok = false;
                }
                None => {
                    self.error(
                        &after.span,
                        format!("`after` of timer `{}` of {owner} must be a duration like `500ms`, `30s`, `30m` or `2h`, found {}", key.name, describe(after)),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }
}

/// `500ms`, `30s`, `30m`, `2h` in milliseconds (`None`: not a duration).
pub(crate) fn duration_ms(text: &str) -> Option<u64> {
    let digits = text.find(|c: char| !c.is_ascii_digit())?;
    if digits == 0 {
        return None;
    }
    let (number, unit) = text.split_at(digits);
    let n: u64 = number.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::duration_ms;

    #[test]
    fn durations_in_every_unit_and_nothing_else() {
        assert_eq!(duration_ms("500ms"), Some(500));
        assert_eq!(duration_ms("30s"), Some(30_000));
        assert_eq!(duration_ms("30m"), Some(1_800_000));
        assert_eq!(duration_ms("2h"), Some(7_200_000));
        for bad in [
            "",
            "30",
            "m",
            "30 m",
            "1.5h",
            "30min",
            "-5s",
            "99999999999999999999h",
        ] {
            assert_eq!(duration_ms(bad), None, "{bad}");
        }
    }
}
