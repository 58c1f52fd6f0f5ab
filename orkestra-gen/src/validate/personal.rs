//! Personal data: `personal_data: { subject }` on events and aggregates, and where
//! `personal: true` may be written. Whether each event or state with personal fields
//! names a subject (and each subject has personal fields to cover) is checked once
//! every namespace's types are resolved, since a named type can carry them.

use super::Validator;
use super::shape::describe;
use super::types::ty_name;
use crate::diagnostic::{Diagnostic, Span};
use crate::model::*;
use crate::personal::{paths, personal_inside};
use crate::yaml::{Node, Value};

pub(super) const PERSONAL_DATA_KEYS: &[&str] = &["subject"];

/// What a `personal_data` belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum SubjectOf {
    /// An event: the subject is a required string field.
    Event,
    /// An aggregate's state: the subject is a string state field (state is never
    /// `required`; a snapshot without a subject is not saved).
    State,
}

impl Validator {
    /// Reads `personal_data: { subject }` of `owner` (`event \`X\``), whose fields are
    /// `fields`, and remembers where it is written (`key` names the owner).
    pub(super) fn personal_subject(
        &mut self,
        owner: &str,
        key: String,
        node: &Node,
        fields: &[Field],
        of: SubjectOf,
    ) -> Option<String> {
        let what = match of {
            SubjectOf::Event => "field",
            SubjectOf::State => "state field",
        };
        let Value::Map(entries) = &node.value else {
            self.error(
                &node.span,
                format!(
                    "`personal_data` of {owner} must be a mapping naming the subject {what}, like `personal_data: {{ subject: customer_id }}`, found {}",
                    describe(node)
                ),
            );
            return None;
        };
        let map = self.keys(
            entries,
            PERSONAL_DATA_KEYS,
            &format!("in `personal_data` of {owner}"),
        );
        let Some(n) = map.get("subject") else {
            self.error(
                &node.span,
                format!("`personal_data` of {owner} has no `subject`: name the {what} holding the id of the person the personal fields belong to"),
            );
            return None;
        };
        let name = self.string(n, &format!("`subject` of {owner}"))?;
        self.personal_spans.insert(key, node.span.clone());
        let Some(field) = fields.iter().find(|f| f.name == name) else {
            let d = Diagnostic::error(
                &n.span,
                format!("subject `{name}` of {owner} is not one of its {what}s; the subject is the {what} holding the id of the person the personal fields belong to"),
            )
            .did_you_mean(&name, fields.iter().map(|f| f.name.as_str()));
            self.diags.push(d);
            return None;
        };
        let mut ok = true;
        if field.personal {
            self.error(
                &n.span,
                format!("subject `{name}` of {owner} is itself personal: the subject stays readable, so a forgotten person's records can still be found and folded; remove `personal: true` from `{name}`"),
            );
            ok = false;
        }
        if field.ty != Ty::String {
            self.error(
                &n.span,
                format!(
                    "subject `{name}` of {owner} is {}; a subject is a string {what} (the person's id)",
                    ty_name(&field.ty)
                ),
            );
            ok = false;
        } else if of == SubjectOf::Event && !field.required {
            self.error(
                &n.span,
                format!("subject `{name}` of {owner} is optional; every event with personal data needs its subject: make `{name}` `required`"),
            );
            ok = false;
        }
        ok.then_some(name)
    }

    /// Commands are not stored: a personal param is a mistake (the event that records
    /// the value is where it is declared personal).
    pub(super) fn no_personal_params(&mut self, command: &str, fields: &[Field]) -> bool {
        let mut ok = true;
        for f in fields.iter().filter(|f| f.personal) {
            self.error(
                &f.span,
                format!("param `{}` of command `{command}` is marked personal, but commands are not stored: mark the field personal in the events that record it (with `personal_data: {{ subject: .. }}` on each)", f.name),
            );
            ok = false;
        }
        ok
    }

    /// A decision's state is folded anew at each decision and never stored, so a
    /// personal state field means nothing.
    pub(super) fn no_personal_decision_state(&mut self, owner: &str, fields: &[Field]) -> bool {
        let mut ok = true;
        for f in fields.iter().filter(|f| f.personal) {
            self.error(
                &f.span,
                format!("state field `{}` of {owner} is marked personal, but a decision's state is never stored (it is folded from the events it reads at each decision): mark the events' fields personal instead", f.name),
            );
            ok = false;
        }
        ok
    }

    /// Once every type is resolved: each event and aggregate state with personal
    /// fields (directly or through named types) names a subject, each subject has
    /// something to cover, every personal path can be described, and no process
    /// manager keeps personal data in its state.
    pub(super) fn check_personal_data(&mut self, modules: &[Module]) {
        for m in modules {
            for e in &m.events {
                let span = self
                    .personal_spans
                    .get(&subject_key("event", &m.ident, &e.name))
                    .cloned();
                self.check_covered(
                    modules,
                    &format!("event `{}`", e.name),
                    "field",
                    &e.fields,
                    e.personal_subject.is_some(),
                    span.as_ref().unwrap_or(&e.span),
                );
            }
            for a in &m.aggregates {
                let span = self
                    .personal_spans
                    .get(&subject_key("aggregate", &m.ident, &a.name))
                    .cloned();
                self.check_covered(
                    modules,
                    &format!("aggregate `{}`", a.name),
                    "state field",
                    &a.state,
                    a.personal_subject.is_some(),
                    span.as_ref().unwrap_or(&a.span),
                );
            }
            for p in &m.process_managers {
                for f in &p.state {
                    let inside = if f.personal {
                        Some("it is marked personal".to_owned())
                    } else {
                        personal_inside(modules, &f.ty, &mut Vec::new())
                            .map(|i| format!("its type holds personal field `{i}`"))
                    };
                    if let Some(inside) = inside {
                        self.error(
                            &f.span,
                            format!("state field `{}` of process manager `{}` holds personal data ({inside}), but a process manager's state is recorded in `orkestra.ProcessStep` records, which are not encrypted: keep the person's id in the state and read the personal data where it is needed", f.name, p.name),
                        );
                    }
                }
            }
        }
    }

    /// The personal paths of one event or state against its `personal_data`.
    fn check_covered(
        &mut self,
        modules: &[Module],
        owner: &str,
        what: &str,
        fields: &[Field],
        has_subject: bool,
        subject_span: &Span,
    ) {
        let found = paths(modules, fields);
        for (i, problem) in &found.problems {
            if let Some(f) = fields.get(*i) {
                self.error(&f.span, format!("in {owner}, {problem}"));
            }
        }
        if let Some(first) = found.fields.first()
            && !has_subject
        {
            let top = first.path.split(['.', '[']).next().unwrap_or(&first.path);
            let Some(f) = fields.iter().find(|f| f.name == top) else {
                return;
            };
            let list = found
                .fields
                .iter()
                .map(|p| format!("`{}`", p.path))
                .collect::<Vec<_>>()
                .join(", ");
            let how = if f.personal {
                format!("{what} `{top}` of {owner} is personal")
            } else {
                format!("{what} `{top}` of {owner} holds personal data through its type ({list})")
            };
            self.error(
                &f.span,
                format!("{how}, but {owner} does not say whose data it is: add `personal_data: {{ subject: <{what}> }}` naming the string {what} that holds the person's id"),
            );
        } else if found.fields.is_empty() && found.problems.is_empty() && has_subject {
            self.error(
                subject_span,
                format!("{owner} has `personal_data`, but none of its {what}s is personal, directly or through its named types: mark them `personal: true`, or remove `personal_data`"),
            );
        }
    }
}

/// The key `personal_spans` files a `personal_data` under.
pub(super) fn subject_key(kind: &str, module: &str, name: &str) -> String {
    format!("{kind} {module}::{name}")
}
