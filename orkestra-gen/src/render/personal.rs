//! `<namespace>::personal`: the personal data of the namespace's events and aggregate
//! states as the runtime's static tables, computed by [`crate::personal`] (the one
//! place the paths and replacements are made, so the ops tooling agrees).

use serde::Serialize;

use super::RT;
use crate::model::*;
use crate::names::{doc_attrs, shouty, str_lit};
use crate::personal::{PersonalField, module_events, module_states};

/// The `personal` module of a namespace with personal data.
#[derive(Serialize)]
pub(super) struct PersonalCtx {
    pub(super) doc: String,
    pub(super) events: Vec<PersonalEventCtx>,
    /// One `PersonalState::new(..)` expression per aggregate with personal state.
    pub(super) states: Vec<String>,
    /// The `EVENTS` items: the constants' names.
    pub(super) event_consts: String,
}

/// One event's constant.
#[derive(Serialize)]
pub(super) struct PersonalEventCtx {
    pub(super) doc: String,
    pub(super) ident: String,
    /// `PersonalEvent::new(..)`.
    pub(super) value: String,
}

/// The name of the constant describing event `name` in `personal`: its SHOUTY name,
/// with `_EVENT` appended where that would be `EVENTS` or `STATES`.
pub(super) fn event_const(name: &str) -> String {
    let ident = shouty(name);
    if ident == "EVENTS" || ident == "STATES" {
        format!("{ident}_EVENT")
    } else {
        ident
    }
}

/// The path of event `r`'s constant seen from a section of module `here`, or `None`
/// when the event has no personal data.
pub(super) fn event_const_path(model: &Model, here: &str, r: &PayloadRef) -> Option<String> {
    let event = model
        .modules
        .iter()
        .find(|m| m.ident == r.module)?
        .events
        .iter()
        .find(|e| e.name == r.name)?;
    event.personal_subject.as_ref()?;
    let ident = event_const(&r.name);
    Some(if here == r.module {
        format!("super::personal::{ident}")
    } else {
        format!("super::super::{}::personal::{ident}", r.module)
    })
}

/// Whether the module has personal data (events or states): it then gets `personal`
/// and its `Wiring::start` checks the store.
pub(super) fn has_personal_data(module: &Module) -> bool {
    module.events.iter().any(|e| e.personal_subject.is_some())
        || module
            .aggregates
            .iter()
            .any(|a| a.personal_subject.is_some())
}

fn fields(fields: &[PersonalField]) -> String {
    let items: Vec<String> = fields
        .iter()
        .map(|f| {
            format!(
                "{RT}::keys::PersonalField::new({}, {})",
                str_lit(&f.path),
                str_lit(&f.replacement_json)
            )
        })
        .collect();
    format!("&[{}]", items.join(", "))
}

fn listed(fields: &[PersonalField]) -> String {
    fields
        .iter()
        .map(|f| format!("`{}` (then `{}`)", f.path, f.replacement_json))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn personal_ctx(model: &Model, module: &Module) -> Option<PersonalCtx> {
    if !has_personal_data(module) {
        return None;
    }
    let events: Vec<PersonalEventCtx> = module_events(model, module)
        .into_iter()
        .map(|e| PersonalEventCtx {
            doc: doc_attrs(&format!(
                "`{}`: subject `{}`; personal {}.",
                e.event_type,
                e.subject,
                listed(&e.fields)
            )),
            ident: event_const(&e.event),
            value: format!(
                "{RT}::keys::PersonalEvent::new({}, {}, {})",
                str_lit(&e.event_type),
                str_lit(&e.subject),
                fields(&e.fields)
            ),
        })
        .collect();
    let states = module_states(model, module)
        .into_iter()
        .map(|s| {
            format!(
                "{RT}::keys::PersonalState::new({}, {}, {})",
                str_lit(&s.shape),
                str_lit(&s.subject),
                fields(&s.fields)
            )
        })
        .collect();
    Some(PersonalCtx {
        doc: doc_attrs(&format!(
            "The personal data of `{}`: which fields of its events (and of its aggregates' \
             snapshotted state) are personal, whose they are, and what readers get once \
             their subject is forgotten.\n\n\
             Give it to the store before anything appends or reads: \
             `store.with_personal_data(&personal::data())?` (a generated `Wiring::start` \
             refuses a store without it).",
            module.namespace
        )),
        event_consts: events
            .iter()
            .map(|e| e.ident.clone())
            .collect::<Vec<_>>()
            .join(", "),
        events,
        states,
    })
}
