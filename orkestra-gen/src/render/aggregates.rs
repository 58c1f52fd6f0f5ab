//! Aggregates: state, event enum, traits, repository glue and the snapshot shape tag.

use serde::Serialize;

use super::fields::{FieldCtx, field_ctx};
use super::handlers::EventVariantCtx;
use super::{docs, is_tagged, item_path, type_name};
use crate::model::*;
use crate::names::{doc_attrs, pascal, snake, str_lit};

/// An aggregate: its state, event enum, trait, command trait and the runtime glue.
#[derive(Serialize)]
pub(super) struct AggregateCtx {
    /// The trait (the aggregate's name).
    pub(super) name: String,
    pub(super) doc: String,
    pub(super) state: String,
    pub(super) state_doc: String,
    pub(super) fields: Vec<FieldCtx>,
    pub(super) event: String,
    pub(super) event_doc: String,
    pub(super) variants: Vec<EventVariantCtx>,
    /// Whether any of its events has tags (the enum then implements `tags`).
    pub(super) tagged: bool,
    /// Every event type name, for a stored event of another type.
    pub(super) expected: String,
    pub(super) marker: String,
    pub(super) command_trait: String,
    pub(super) repository: String,
    pub(super) test: String,
    pub(super) fn_name: String,
    pub(super) wire: String,
    pub(super) shape: String,
    pub(super) snapshot_every: String,
    pub(super) conflict_retries: u32,
    pub(super) commands: Vec<AggregateCommandCtx>,
}

/// A command of an aggregate.
#[derive(Serialize)]
pub(super) struct AggregateCommandCtx {
    pub(super) path: String,
    pub(super) method: String,
    pub(super) doc: String,
    /// The subscription's handler name: `Account.OpenAccount`.
    pub(super) handler_wire: String,
    /// The `(text, value)` pairs of the stream template, as Rust.
    pub(super) stream_parts: String,
}

pub(super) fn aggregate_ctx(model: &Model, a: &Aggregate, here: &str) -> AggregateCtx {
    let name = pascal(&a.name);
    let state = format!("{name}State");
    let event = format!("{name}Event");
    let event_path = |r: &PayloadRef| item_path(here, &r.module, "events", &r.name);
    let commands = a
        .commands
        .iter()
        .map(|r| {
            let path = item_path(here, &r.module, "commands", &r.name);
            let stream_parts = a
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
            AggregateCommandCtx {
                doc: doc_attrs(&format!(
                    "Decides `{}`: the events to append, none, or an error \
                     (`HandlerError::Reject`: nothing is appended and the command is rejected).",
                    type_name(model, r)
                )),
                method: snake(&r.name),
                handler_wire: str_lit(&format!("{}.{}", a.name, r.name)),
                stream_parts,
                path,
            }
        })
        .collect();
    let owner = state.clone();
    AggregateCtx {
        doc: docs(
            a.description.as_deref(),
            &format!("Aggregate `{}`.", a.name),
        ),
        state_doc: doc_attrs(&format!(
            "The state of `{}`: the fold of its stream with `apply`, starting from `Default` \
             (each field's schema default, `None` where it has none).",
            a.name
        )),
        fields: a
            .state
            .iter()
            .map(|f| field_ctx(&owner, f, false, here))
            .collect(),
        event_doc: doc_attrs(&format!("The events of `{}`.", a.name)),
        variants: a
            .events
            .iter()
            .map(|r| EventVariantCtx {
                ident: pascal(&r.name),
                path: event_path(r),
                doc: doc_attrs(&format!("`{}`", type_name(model, r))),
                tagged: is_tagged(model, r),
            })
            .collect(),
        tagged: a.events.iter().any(|r| is_tagged(model, r)),
        expected: str_lit(
            &a.events
                .iter()
                .map(|r| type_name(model, r))
                .collect::<Vec<_>>()
                .join(" | "),
        ),
        marker: format!("{name}Aggregate"),
        command_trait: format!("{name}Command"),
        repository: format!("{name}Repository"),
        test: format!("{name}Test"),
        fn_name: snake(&a.name),
        wire: str_lit(&a.name),
        shape: str_lit(&state_shape(model, a)),
        snapshot_every: match a.snapshot_every {
            Some(n) => format!("::core::option::Option::Some({n})"),
            None => "::core::option::Option::None".into(),
        },
        conflict_retries: a.conflict_retries,
        commands,
        state,
        event,
        name,
    }
}

/// A tag of an aggregate's state shape: FNV-1a over each field's name, type (named
/// struct types by their own fields, enums by their values) and default, then
/// `/v<snapshot_version>` when the schema bumped it (version 1 keeps the bare tag, so
/// existing snapshots stay valid). Snapshots written under another tag are ignored.
pub(crate) fn state_shape(model: &Model, a: &Aggregate) -> String {
    fn ty_text(model: &Model, ty: &Ty, depth: usize) -> String {
        ty.schema_text(&|t: &TypeRef| {
            let def = model
                .modules
                .iter()
                .find(|m| m.ident == t.module)
                .and_then(|m| m.types.iter().find(|d| d.name == t.name));
            match def.map(|d| &d.kind) {
                Some(TypeKind::Enum(values)) => format!("enum({})", values.join("|")),
                Some(TypeKind::Struct(fields)) if depth < 8 => format!(
                    "struct({})",
                    fields
                        .iter()
                        .map(|f| field_text(model, f, depth + 1))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                _ => format!("{}::{}", t.module, t.name),
            }
        })
    }
    fn field_text(model: &Model, f: &Field, depth: usize) -> String {
        format!(
            "{}:{}:{}:{:?}",
            f.name,
            ty_text(model, &f.ty, depth),
            f.required,
            f.default
        )
    }
    let text = a
        .state
        .iter()
        .map(|f| field_text(model, f, 0))
        .collect::<Vec<_>>()
        .join(";");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    match a.snapshot_version {
        1 => format!("fnv1a64:{hash:016x}"),
        v => format!("fnv1a64:{hash:016x}/v{v}"),
    }
}
