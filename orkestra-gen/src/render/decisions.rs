//! Decisions: state, read event enum, reads struct, emitted event enum, trait, the
//! runtime glue (stream, boundary), binding and test helper.

use serde::Serialize;

use super::fields::{FieldCtx, field_ctx};
use super::handlers::EventVariantCtx;
use super::{RT, docs, is_tagged, item_path, type_name};
use crate::model::*;
use crate::names::{doc_attrs, pascal, snake, str_lit};

/// A decision: what `decisions.rs.j2` places.
#[derive(Serialize)]
pub(super) struct DecisionCtx {
    /// The trait (the decision's name).
    pub(super) name: String,
    pub(super) doc: String,
    pub(super) state: String,
    pub(super) state_doc: String,
    pub(super) fields: Vec<FieldCtx>,
    /// The enum of the events it reads.
    pub(super) event: String,
    pub(super) event_doc: String,
    pub(super) events: Vec<EventVariantCtx>,
    /// Every read event type name, for a stored event of another type.
    pub(super) expected: String,
    /// The struct of matched read items.
    pub(super) reads: String,
    pub(super) reads_doc: String,
    pub(super) items: Vec<ReadItemCtx>,
    /// The enum of the events it may append.
    pub(super) emit: String,
    pub(super) emit_doc: String,
    pub(super) emits: Vec<EventVariantCtx>,
    pub(super) emit_expected: String,
    /// Whether any emitted event has tags (the enum then implements `tags`).
    pub(super) emit_tagged: bool,
    pub(super) marker: String,
    pub(super) test: String,
    pub(super) fn_name: String,
    pub(super) wire: String,
    pub(super) conflict_retries: u32,
    /// The command's path.
    pub(super) command: String,
    pub(super) decide_doc: String,
    /// The `(text, value)` pairs of the stream template, as Rust.
    pub(super) stream_parts: String,
    /// The boundary: a `Query` expression of one item per read item.
    pub(super) boundary: String,
    /// `(TYPE_NAME, tag key)` tuples, one per event type and tag the boundary reads by.
    pub(super) tags_read: Vec<String>,
    /// The binding fn's doc.
    pub(super) binding_doc: String,
}

/// A read item: a field of the reads struct.
#[derive(Serialize)]
pub(super) struct ReadItemCtx {
    pub(super) ident: String,
    pub(super) doc: String,
    /// Its entry of the matched slice: `matched.first()`, `matched.get(1)`, ..
    pub(super) matched: String,
}

pub(super) fn decision_ctx(model: &Model, d: &Decision, here: &str) -> DecisionCtx {
    let name = pascal(&d.name);
    let state = format!("{name}State");
    let event_path = |r: &PayloadRef| item_path(here, &r.module, "events", &r.name);
    let variant = |r: &PayloadRef| EventVariantCtx {
        ident: pascal(&r.name),
        path: event_path(r),
        doc: doc_attrs(&format!("`{}`", type_name(model, r))),
        tagged: is_tagged(model, r),
    };
    // Each event type once, in the order the read items first name it.
    let mut read: Vec<&PayloadRef> = Vec::new();
    for r in d.reads.iter().flat_map(|i| &i.events) {
        if !read.contains(&r) {
            read.push(r);
        }
    }
    let expected = |refs: &[&PayloadRef]| {
        str_lit(
            &refs
                .iter()
                .map(|r| type_name(model, r))
                .collect::<Vec<_>>()
                .join(" | "),
        )
    };
    let stream_parts = d
        .stream
        .iter()
        .map(|part| match part {
            StreamPart::Text(text) => {
                format!("({}, ::core::option::Option::None)", str_lit(text))
            }
            StreamPart::Param(param) => format!(
                "({}, ::core::option::Option::Some(&command.params.{} as &dyn ::core::fmt::Display))",
                str_lit(param),
                snake(param)
            ),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let item_exprs: Vec<String> = d
        .reads
        .iter()
        .map(|item| {
            format!(
                "{RT}::decision::read_item({}, &[{}], {}, {}, &command.params.{})?",
                str_lit(&d.name),
                item.events
                    .iter()
                    .map(|r| format!("<{} as {RT}::Payload>::TYPE_NAME", event_path(r)))
                    .collect::<Vec<_>>()
                    .join(", "),
                str_lit(&item.tag),
                str_lit(&item.param),
                snake(&item.param)
            )
        })
        .collect();
    let boundary = item_exprs
        .iter()
        .enumerate()
        .fold(String::new(), |acc, (i, item)| {
            if i == 0 {
                format!("{RT}::Query::of({item})")
            } else {
                format!("{acc}.or({item})")
            }
        });
    let mut tags_read: Vec<String> = Vec::new();
    for item in &d.reads {
        for r in &item.events {
            let pair = format!("({}::TYPE_NAME, {})", event_path(r), str_lit(&item.tag));
            if !tags_read.contains(&pair) {
                tags_read.push(pair);
            }
        }
    }
    let command_name = type_name(model, &d.command);
    let emits: Vec<&PayloadRef> = d.emits.iter().collect();
    DecisionCtx {
        doc: docs(
            d.description.as_deref(),
            &format!("Decision `{}`: decides `{command_name}`.", d.name),
        ),
        state_doc: doc_attrs(&format!(
            "The state of `{}`: the fold of the events its read items match, with `apply`, \
             starting from `Default` (each field's schema default, `None` where it has none).",
            d.name
        )),
        fields: d
            .state
            .iter()
            .map(|f| field_ctx(&state, f, false, here))
            .collect(),
        event: format!("{name}Event"),
        event_doc: doc_attrs(&format!("The events `{}` reads.", d.name)),
        events: read.iter().map(|r| variant(r)).collect(),
        expected: expected(&read),
        reads: format!("{name}Reads"),
        reads_doc: doc_attrs(&format!(
            "Which read items of `{}` an event matched: one `bool` per item.",
            d.name
        )),
        items: d
            .reads
            .iter()
            .enumerate()
            .map(|(index, item)| ReadItemCtx {
                ident: snake(&item.name),
                doc: doc_attrs(&format!(
                    "`{}`: {} tagged `{}` with the command's `{}`.",
                    item.name,
                    item.events
                        .iter()
                        .map(|r| format!("`{}`", type_name(model, r)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    item.tag,
                    item.param
                )),
                matched: match index {
                    0 => "matched.first()".to_owned(),
                    i => format!("matched.get({i})"),
                },
            })
            .collect(),
        emit: format!("{name}Emit"),
        emit_doc: doc_attrs(&format!("The events `{}` may append.", d.name)),
        emits: d.emits.iter().map(variant).collect(),
        emit_expected: expected(&emits),
        emit_tagged: d.emits.iter().any(|r| is_tagged(model, r)),
        marker: format!("{name}Decision"),
        test: format!("{name}Test"),
        fn_name: snake(&d.name),
        wire: str_lit(&d.name),
        conflict_retries: d.conflict_retries,
        command: item_path(here, &d.command.module, "commands", &d.command.name),
        decide_doc: doc_attrs(&format!(
            "Decides `{command_name}`: the events to append, none, or an error \
             (`HandlerError::Reject`: nothing is appended and the command is rejected)."
        )),
        stream_parts,
        boundary,
        tags_read,
        binding_doc: doc_attrs(&format!(
            "Binds a [`{name}`] implementation over `store`: one subscription that reads the \
             boundary, decides, appends to `{}` on the condition that nothing of the boundary \
             was appended meanwhile (deciding again on a conflict), publishes and replies \
             `{{\"stream\", \"position\"}}`, for `bus.subscribe_all(..)`.",
            d.stream_text
        )),
        state,
        name,
    }
}
