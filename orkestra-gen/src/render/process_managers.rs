//! Process managers: state, event, command and timer enums, context and glue.

use serde::Serialize;

use super::fields::{FieldCtx, field_ctx};
use super::handlers::EventVariantCtx;
use super::{docs, item_path, type_name};
use crate::model::*;
use crate::names::{doc_attrs, pascal, snake, str_lit};

/// A process manager: state, event, command and timer enums, context, trait and glue.
#[derive(Serialize)]
pub(super) struct ProcessCtx {
    /// The trait (the process manager's name).
    pub(super) name: String,
    pub(super) doc: String,
    pub(super) state: String,
    pub(super) state_doc: String,
    pub(super) fields: Vec<FieldCtx>,
    pub(super) event: String,
    pub(super) events: Vec<ProcessEventCtx>,
    /// Every event type name, for a stored event of another type.
    pub(super) expected: String,
    pub(super) command: String,
    pub(super) commands: Vec<EventVariantCtx>,
    pub(super) timer: String,
    pub(super) timers: Vec<TimerCtx>,
    pub(super) context: String,
    pub(super) marker: String,
    pub(super) test: String,
    pub(super) fn_name: String,
    pub(super) wire: String,
    pub(super) stream: String,
    pub(super) correlate_by: String,
    /// The Rust field of `correlate_by` in each event.
    pub(super) key_field: String,
    /// `partitions`, when not 1 (the binding calls `with_partitions` only then).
    pub(super) partitions: Option<u32>,
}

/// An event of a process manager, with its role.
#[derive(Serialize)]
pub(super) struct ProcessEventCtx {
    pub(super) ident: String,
    pub(super) path: String,
    pub(super) doc: String,
    pub(super) role: &'static str,
}

/// A timer of a process manager.
#[derive(Serialize)]
pub(super) struct TimerCtx {
    pub(super) ident: String,
    pub(super) wire: String,
    pub(super) doc: String,
    pub(super) ms: u64,
}

pub(super) fn process_ctx(model: &Model, p: &ProcessManager, here: &str) -> ProcessCtx {
    let name = pascal(&p.name);
    let state = format!("{name}State");
    let roles = [
        (&p.starts_on, "Start", "starts an instance"),
        (&p.handles, "Handle", "handled by a running instance"),
        (&p.ends_on, "End", "handled, then the instance is finished"),
    ];
    let events: Vec<ProcessEventCtx> = roles
        .iter()
        .flat_map(|(refs, role, what)| {
            refs.iter().map(move |r| ProcessEventCtx {
                ident: pascal(&r.name),
                path: item_path(here, &r.module, "events", &r.name),
                doc: doc_attrs(&format!("`{}`: {what}.", type_name(model, r))),
                role,
            })
        })
        .collect();
    ProcessCtx {
        doc: docs(
            p.description.as_deref(),
            &format!("Process manager `{}`.", p.name),
        ),
        state_doc: doc_attrs(&format!(
            "The state of one `{}` instance, recorded after each step; a new instance starts \
             from `Default` (each field's schema default, `None` where it has none).",
            p.name
        )),
        fields: p
            .state
            .iter()
            .map(|f| field_ctx(&state, f, false, here))
            .collect(),
        event: format!("{name}Event"),
        expected: str_lit(
            &roles
                .iter()
                .flat_map(|(refs, _, _)| refs.iter())
                .map(|r| type_name(model, r))
                .collect::<Vec<_>>()
                .join(" | "),
        ),
        events,
        command: format!("{name}Command"),
        commands: p
            .dispatches
            .iter()
            .map(|r| EventVariantCtx {
                ident: pascal(&r.name),
                path: item_path(here, &r.module, "commands", &r.name),
                doc: doc_attrs(&format!("`{}`", type_name(model, r))),
                tagged: false,
            })
            .collect(),
        timer: format!("{name}Timer"),
        timers: p
            .timeouts
            .iter()
            .map(|t| TimerCtx {
                ident: pascal(&t.name),
                wire: str_lit(&t.name),
                doc: docs(
                    t.description.as_deref(),
                    &format!("`{}`: fires {} after it is set.", t.name, t.after),
                ),
                ms: t.after_ms,
            })
            .collect(),
        context: format!("{name}Context"),
        marker: format!("{name}Manager"),
        test: format!("{name}Test"),
        fn_name: snake(&p.name),
        wire: str_lit(&p.name),
        stream: str_lit(&crate::validate::stream_prefix(&p.name)),
        correlate_by: str_lit(&p.correlate_by),
        key_field: snake(&p.correlate_by),
        partitions: (p.partitions != 1).then_some(p.partitions),
        state,
        name,
    }
}
