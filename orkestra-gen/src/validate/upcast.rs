//! An event's `upcast` section: one step per older version still readable, each
//! declarative (`renamed`, `removed`, `added`) or `custom`. Steps are checked against the
//! fields each version has, worked out backwards from the current fields.

use std::collections::BTreeMap;

use super::Validator;
use super::fields::literal;
use super::shape::describe;
use crate::diagnostic::{Diagnostic, Span};
use crate::model::*;
use crate::yaml::{Key, Node, Value};

pub(super) const STEP_KEYS: &[&str] = &["renamed", "removed", "added"];

/// The fields of one version: their names and, where known, their types (a field only
/// an older version has, brought back by `removed`, has no known type).
type Fields = BTreeMap<String, Option<Ty>>;

/// A parsed step with the nodes its checks point at.
struct Parsed<'a> {
    step: UpcastStep,
    renamed: Vec<(&'a Key, &'a Node)>,
    added: Vec<(&'a Key, &'a Node)>,
    removed: Vec<&'a Node>,
}

impl Validator {
    /// The steps of event `event` (current `version`, current `fields`) under `upcast`.
    pub(super) fn upcast_steps(
        &mut self,
        event: &str,
        node: &Node,
        version: u32,
        fields: &[Field],
    ) -> Option<Vec<UpcastStep>> {
        let Value::Map(entries) = &node.value else {
            self.error(
                &node.span,
                format!(
                    "`upcast` of event `{event}` must be a mapping of versions to steps, found {}",
                    node.kind()
                ),
            );
            return None;
        };
        self.check_duplicates(entries);
        let mut ok = true;
        let mut parsed: Vec<Parsed<'_>> = Vec::new();
        for (key, step) in entries {
            let Some(from) = key.name.parse::<u32>().ok().filter(|v| *v >= 1) else {
                self.error(
                    &key.span,
                    format!(
                        "`{}` is not a version: each key of `upcast` is the version a step reads (1, 2, ..), and the step brings it to the next",
                        key.name
                    ),
                );
                ok = false;
                continue;
            };
            if from >= version {
                let d = Diagnostic::error(
                    &key.span,
                    format!(
                        "step {from} is not older than event `{event}`'s version ({version}): a step reads an older version and brings it to the next"
                    ),
                )
                .with_help(match version {
                    1 => "set `version:` on the event to its current version; steps run from 1 up to that version minus one".to_owned(),
                    2 => "the only step version 2 can have is 1, from version 1 to 2".to_owned(),
                    _ => format!("steps run from 1 up to {}", version - 1),
                });
                self.diags.push(d);
                ok = false;
                continue;
            }
            if parsed.iter().any(|p| p.step.from == from) {
                continue; // reported as a duplicate key
            }
            match self.step(event, key, from, step) {
                Some(p) => parsed.push(p),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        parsed.sort_by_key(|p| p.step.from);
        if let Some(first) = parsed.first().map(|p| p.step.from) {
            let missing: Vec<String> = (first..version)
                .filter(|v| !parsed.iter().any(|p| p.step.from == *v))
                .map(|v| v.to_string())
                .collect();
            if !missing.is_empty() {
                self.error(
                    &node.span,
                    format!(
                        "the steps of event `{event}` have a gap: no step from version {} (data of version {first} could not reach version {version})",
                        missing.join(", ")
                    ),
                );
                return None;
            }
        }
        self.check_fields(event, &mut parsed, fields)
            .then(|| parsed.into_iter().map(|p| p.step).collect())
    }

    /// One step: `custom`, or a mapping of `renamed`, `removed`, `added`.
    fn step<'a>(
        &mut self,
        event: &str,
        key: &Key,
        from: u32,
        node: &'a Node,
    ) -> Option<Parsed<'a>> {
        let step = |kind| UpcastStep {
            from,
            span: key.span.clone(),
            kind,
        };
        let entries = match &node.value {
            Value::Str(s) if s == "custom" => {
                return Some(Parsed {
                    step: step(StepKind::Custom),
                    renamed: Vec::new(),
                    added: Vec::new(),
                    removed: Vec::new(),
                });
            }
            Value::Map(entries) if !entries.is_empty() => entries,
            _ => {
                self.error(
                    &node.span,
                    format!(
                        "step {from} of event `{event}` must be `custom` or a mapping with `renamed`, `removed` or `added`, found {}",
                        describe(node)
                    ),
                );
                return None;
            }
        };
        let map = self.keys(
            entries,
            STEP_KEYS,
            &format!("in step {from} of event `{event}`"),
        );
        let mut ok = map.len() == entries.len();
        let mut renamed = Vec::new();
        if let Some(n) = map.get("renamed") {
            match &n.value {
                Value::Map(pairs) => {
                    self.check_duplicates(pairs);
                    for (old, new) in pairs {
                        match new.as_str() {
                            Some(name) if name != old.name => renamed.push((old, new)),
                            _ => {
                                self.error(
                                    &new.span,
                                    format!(
                                        "`renamed` maps an old field name to its new name; `{}` maps to {}",
                                        old.name,
                                        describe(new)
                                    ),
                                );
                                ok = false;
                            }
                        }
                    }
                }
                _ => {
                    self.error(
                        &n.span,
                        format!(
                            "`renamed` must be a mapping of old to new field names, found {}",
                            n.kind()
                        ),
                    );
                    ok = false;
                }
            }
        }
        let mut removed = Vec::new();
        if let Some(n) = map.get("removed") {
            match &n.value {
                Value::Seq(items) => {
                    for item in items {
                        if item.as_str().is_some() {
                            removed.push(item);
                        } else {
                            self.error(
                                &item.span,
                                format!("`removed` lists field names, found {}", describe(item)),
                            );
                            ok = false;
                        }
                    }
                }
                _ => {
                    self.error(
                        &n.span,
                        format!(
                            "`removed` must be a list of field names, found {}",
                            n.kind()
                        ),
                    );
                    ok = false;
                }
            }
        }
        let mut added = Vec::new();
        if let Some(n) = map.get("added") {
            match &n.value {
                Value::Map(pairs) => {
                    self.check_duplicates(pairs);
                    added.extend(pairs.iter().map(|(k, v)| (k, v)));
                }
                _ => {
                    self.error(
                        &n.span,
                        format!(
                            "`added` must be a mapping of field names to values, found {}",
                            n.kind()
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then(|| Parsed {
            step: step(StepKind::Declarative {
                renamed: renamed
                    .iter()
                    .map(|(old, new)| {
                        (
                            old.name.clone(),
                            new.as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect(),
                removed: removed
                    .iter()
                    .map(|n| n.as_str().unwrap_or_default().to_owned())
                    .collect(),
                added: Vec::new(),
            }),
            renamed,
            added,
            removed,
        })
    }

    /// Walks the steps from the newest down, knowing the fields of the version each step
    /// produces: a rename must produce a field of that version, an added field must be one
    /// and its value must fit the field's type. Below a custom step nothing is known.
    fn check_fields(&mut self, event: &str, parsed: &mut [Parsed<'_>], current: &[Field]) -> bool {
        let mut ok = true;
        let mut next: Option<Fields> = Some(
            current
                .iter()
                .map(|f| (f.name.clone(), Some(f.ty.clone())))
                .collect(),
        );
        for p in parsed.iter_mut().rev() {
            let produced = p.step.from + 1;
            let Some(fields) = next.take() else { continue };
            if matches!(p.step.kind, StepKind::Custom) {
                continue;
            }
            let mut older = fields.clone();
            let mut values = Vec::new();
            for (key, value) in &p.added {
                match fields.get(&key.name) {
                    None => {
                        self.unknown_field(event, produced, &key.name, &key.span, &fields, "adds");
                        ok = false;
                    }
                    Some(Some(ty)) => match literal(value, ty) {
                        Ok(lit) => values.push((key.name.clone(), lit)),
                        Err(message) => {
                            self.error(
                                &value.span,
                                format!(
                                    "the value step {} adds for `{}` {message}",
                                    p.step.from, key.name
                                ),
                            );
                            ok = false;
                        }
                    },
                    // Only an older version has it (brought back by a lower `removed`).
                    Some(None) => {
                        self.error(&value.span, format!("step {} adds `{}`, a field version {produced} has only through `removed`; its type is unknown", p.step.from, key.name));
                        ok = false;
                    }
                }
                older.remove(&key.name);
            }
            for (old, new) in &p.renamed {
                let new_name = new.as_str().unwrap_or_default();
                match fields.get(new_name) {
                    None => {
                        self.unknown_field(
                            event,
                            produced,
                            new_name,
                            &new.span,
                            &fields,
                            "renames a field to",
                        );
                        ok = false;
                    }
                    Some(ty) => {
                        older.remove(new_name);
                        older.insert(old.name.clone(), ty.clone());
                    }
                }
            }
            for n in &p.removed {
                older.insert(n.as_str().unwrap_or_default().to_owned(), None);
            }
            if let StepKind::Declarative { added, .. } = &mut p.step.kind {
                *added = values;
            }
            next = Some(older);
        }
        ok
    }

    fn unknown_field(
        &mut self,
        event: &str,
        version: u32,
        name: &str,
        span: &Span,
        fields: &Fields,
        verb: &str,
    ) {
        let d = Diagnostic::error(
            span,
            format!("the step to version {version} {verb} `{name}`, but version {version} of event `{event}` has no field `{name}`"),
        )
        .did_you_mean(name, fields.keys().map(String::as_str));
        self.diags.push(d);
    }
}
