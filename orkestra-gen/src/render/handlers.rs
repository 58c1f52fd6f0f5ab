//! Handler bindings: traits, binding fns, multi-event enums and `Handlers`.

use serde::Serialize;

use super::personal::event_const_path;
use super::{RT, item_path, type_name};
use crate::model::*;
use crate::names::{doc_attrs, pascal, snake, str_lit};

/// What a binding receives, and so which trait method it gets.
#[derive(Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum BindingKind {
    Command,
    Event,
    Events,
    Topic,
    DeadLetters,
}

/// A handler binding: its trait, its constructor and (events, topic) its enum.
#[derive(Serialize)]
pub(super) struct HandlerCtx {
    pub(super) kind: BindingKind,
    pub(super) name: String,
    pub(super) wire: String,
    pub(super) fn_name: String,
    pub(super) doc: String,
    /// What the handler method receives (a payload, `Event<..>` or the generated enum).
    pub(super) message_ty: String,
    pub(super) patterns: String,
    pub(super) variants: Vec<EventVariantCtx>,
    pub(super) max_retries: Option<u32>,
    pub(super) concurrency: Option<u16>,
    /// The `partition_by` name as a string literal.
    pub(super) partition_by: Option<String>,
    pub(super) retry_delay_ms: Option<u64>,
    pub(super) retry_delay_max_ms: Option<u64>,
    /// The `retry_backoff` factor as a float literal.
    pub(super) retry_backoff: Option<String>,
    /// `once: true`.
    pub(super) once: bool,
    /// The constants of the personal data of the events it receives, comma-separated
    /// (`with_personal_data`); absent when none has any.
    pub(super) personal: Option<String>,
    pub(super) enum_doc: String,
    /// The accepted type names, for `PayloadError::WrongType::expected`.
    pub(super) expected: String,
}

/// One variant of a multi-event or wildcard binding's enum.
#[derive(Serialize)]
pub(super) struct EventVariantCtx {
    pub(super) ident: String,
    pub(super) path: String,
    pub(super) doc: String,
    /// An event with `tags` (its payload has a `tags` method).
    pub(super) tagged: bool,
}

/// `Handlers`: one public field per binding, so leaving one out does not compile.
#[derive(Serialize)]
pub(super) struct WiringCtx {
    pub(super) doc: String,
    pub(super) fields: Vec<WiringField>,
}

/// A field of `Handlers`.
#[derive(Serialize)]
pub(super) struct WiringField {
    /// The field, named like the binding's constructor.
    pub(super) ident: String,
    /// The generic parameter holding the implementation.
    pub(super) param: String,
    /// The binding's trait.
    pub(super) bound: String,
    pub(super) doc: String,
}

pub(super) fn handler_ctx(model: &Model, h: &Handler, here: &str) -> HandlerCtx {
    let name = pascal(&h.name);
    let event_path = |r: &PayloadRef| item_path(here, &r.module, "events", &r.name);
    let enum_name = format!("{name}Event");
    let (kind, message_ty, patterns, variants): (_, _, Vec<String>, &[PayloadRef]) = match &h.target
    {
        HandlerTarget::Command(r) => (
            BindingKind::Command,
            item_path(here, &r.module, "commands", &r.name),
            Vec::new(),
            &[],
        ),
        HandlerTarget::Event(r) => (
            BindingKind::Event,
            format!("{RT}::Event<{}>", event_path(r)),
            Vec::new(),
            &[],
        ),
        HandlerTarget::Events(refs) => (
            BindingKind::Events,
            enum_name,
            refs.iter()
                .map(|r| format!("{}::TOPIC", event_path(r)))
                .collect(),
            refs,
        ),
        HandlerTarget::Topic { pattern, matched } => (
            BindingKind::Topic,
            enum_name,
            vec![str_lit(pattern)],
            matched,
        ),
        HandlerTarget::DeadLetters => (
            BindingKind::DeadLetters,
            format!("{RT}::DeadLetter"),
            Vec::new(),
            &[],
        ),
    };
    let received: &[PayloadRef] = match &h.target {
        HandlerTarget::Event(r) => std::slice::from_ref(r),
        HandlerTarget::Events(refs) => refs,
        HandlerTarget::Topic { matched, .. } => matched,
        HandlerTarget::Command(_) | HandlerTarget::DeadLetters => &[],
    };
    let personal: Vec<String> = received
        .iter()
        .filter_map(|r| event_const_path(model, here, r))
        .collect();
    let emits = h
        .emits
        .iter()
        .map(|r| format!("`{}`", type_name(model, r)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut doc = h
        .description
        .clone()
        .unwrap_or_else(|| format!("Handler binding `{}`.", h.name));
    if !emits.is_empty() {
        doc.push_str(&format!("\n\nEmits {emits}."));
    }
    HandlerCtx {
        kind,
        wire: str_lit(&h.name),
        fn_name: snake(&h.name),
        doc: doc_attrs(&doc),
        message_ty,
        patterns: patterns.join(", "),
        expected: str_lit(
            &variants
                .iter()
                .map(|r| type_name(model, r))
                .collect::<Vec<_>>()
                .join(" | "),
        ),
        variants: variants
            .iter()
            .map(|r| EventVariantCtx {
                ident: pascal(&r.name),
                path: event_path(r),
                doc: doc_attrs(&format!("`{}`", type_name(model, r))),
                tagged: false,
            })
            .collect(),
        max_retries: h.max_retries,
        concurrency: h.concurrency,
        partition_by: h.partition_by.as_ref().map(|k| str_lit(&k.field)),
        retry_delay_ms: h.retry.delay_ms,
        retry_delay_max_ms: h.retry.max_ms,
        retry_backoff: h.retry.backoff.map(|f| format!("{f:?}_f64")),
        once: h.once,
        personal: (!personal.is_empty()).then(|| personal.join(", ")),
        enum_doc: doc_attrs(&format!("What `{}` receives.", h.name)),
        name,
    }
}

/// The `Handlers` struct of a namespace with bindings. Its generic parameters are named
/// after the traits (`PlaceOrderHandlerImpl`) and bounded through `self::`, so no
/// binding name can shadow a bound.
pub(super) fn wiring_ctx(module: &Module, handlers: &[HandlerCtx]) -> Option<WiringCtx> {
    if handlers.is_empty() {
        return None;
    }
    let list = module
        .handlers
        .iter()
        .map(|h| format!("`{}`", h.name))
        .collect::<Vec<_>>()
        .join(", ");
    Some(WiringCtx {
        doc: doc_attrs(&format!(
            "Every binding of `{}`, one field each ({list}): a missing field is a compile error.\n\n\
             `bus.subscribe_all(Handlers {{ .. }}.subscriptions()).await?` subscribes them all.",
            module.namespace
        )),
        fields: handlers
            .iter()
            .map(|h| WiringField {
                ident: h.fn_name.clone(),
                param: format!("{}Impl", h.name.trim_start_matches("r#")),
                bound: h.name.clone(),
                doc: doc_attrs(&format!("The implementation of [`{}`].", h.name)),
            })
            .collect(),
    })
}
