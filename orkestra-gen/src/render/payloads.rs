//! Commands and events: the payload structs, their topics and upcast steps.

use serde::Serialize;

use super::fields::{FieldCtx, field_ctx, json_expr, unknown_walker};
use super::{RT, docs};
use crate::model::*;
use crate::names::{doc_attrs, pascal, snake, str_lit};

/// The `commands` or `events` module.
#[derive(Serialize)]
pub(super) struct SectionCtx {
    pub(super) name: &'static str,
    pub(super) title: &'static str,
    pub(super) items: Vec<PayloadCtx>,
}

/// A command or event struct.
#[derive(Serialize)]
pub(super) struct PayloadCtx {
    /// `Command` or `Event` (also names the `<kind>Payload` marker trait).
    pub(super) kind: &'static str,
    pub(super) name: String,
    pub(super) doc: String,
    pub(super) type_name: String,
    pub(super) topic: String,
    pub(super) version: u32,
    pub(super) custom_validate: bool,
    pub(super) fields: Vec<FieldCtx>,
    /// Every wire name, as a list of literals.
    pub(super) known: String,
    /// The required wire names, as a list of literals.
    pub(super) required: String,
    /// Whether any field has a rule (else `check` has nothing to collect).
    pub(super) checked: bool,
    /// Events read tolerantly (`ObjectReader::open`), commands strictly.
    pub(super) tolerant: bool,
    /// Commands: statements recording unknown keys nested in struct-typed params.
    pub(super) unknown_checks: Vec<String>,
    /// Events with `upcast` steps.
    pub(super) upcast: Option<UpcastCtx>,
    /// Events with `tags`: one `Tag` expression per tag, in declaration order.
    pub(super) tags: Vec<String>,
    pub(super) tags_doc: String,
}

/// An event's upcast steps.
#[derive(Serialize)]
pub(super) struct UpcastCtx {
    /// The version the first step reads.
    pub(super) first: u32,
    /// One `UpcastStep` expression per step, oldest first.
    pub(super) steps: Vec<String>,
    /// The custom steps' trait (`OrderPlacedUpcast`), when there are any.
    pub(super) custom_trait: Option<String>,
    pub(super) trait_doc: String,
    pub(super) custom: Vec<CustomStepCtx>,
}

/// A method of the custom steps' trait.
#[derive(Serialize)]
pub(super) struct CustomStepCtx {
    pub(super) method: String,
    pub(super) doc: String,
}

/// A topic constant.
#[derive(Serialize)]
pub(super) struct TopicCtx {
    pub(super) doc: String,
    pub(super) name: String,
    pub(super) value: String,
}

pub(super) fn payload_ctx(p: &Payload, here: &str) -> PayloadCtx {
    let name = pascal(&p.name);
    let fields: Vec<FieldCtx> = p
        .fields
        .iter()
        .map(|f| field_ctx(&name, f, false, here))
        .collect();
    let wire_names = |pred: &dyn Fn(&FieldCtx) -> bool| {
        fields
            .iter()
            .filter(|f| pred(f))
            .map(|f| f.wire.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let kind = match p.kind {
        PayloadKind::Command => "Command",
        PayloadKind::Event => "Event",
    };
    PayloadCtx {
        kind,
        doc: docs(
            p.description.as_deref(),
            &format!("{kind} `{}`.", p.type_name),
        ),
        type_name: str_lit(&p.type_name),
        topic: str_lit(&p.topic),
        version: p.version,
        custom_validate: p.custom_validate,
        known: wire_names(&|_| true),
        required: wire_names(&|f| f.required),
        checked: fields.iter().any(|f| f.rules.is_some()),
        tolerant: p.kind == PayloadKind::Event,
        unknown_checks: if p.kind == PayloadKind::Command {
            p.fields
                .iter()
                .filter_map(|f| {
                    let walk = unknown_walker(&f.ty, here)?;
                    Some(format!(
                        "reader.check_unknown({}, {walk});",
                        str_lit(&f.name)
                    ))
                })
                .collect()
        } else {
            Vec::new()
        },
        upcast: upcast_ctx(p),
        tags: p
            .tags
            .iter()
            .map(|t| {
                format!(
                    "{RT}::Tag::new({}, ::std::string::ToString::to_string(&self.{}))?",
                    str_lit(t),
                    snake(t)
                )
            })
            .collect(),
        tags_doc: doc_attrs(&format!(
            "The tags the store indexes this event by ({}), each valued by its field's text. \
             An empty value is an error: the event could not be found by it.",
            p.tags
                .iter()
                .map(|t| format!("`{t}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        fields,
        name,
    }
}

/// The `Payload::upcast` of an event with steps.
pub(super) fn upcast_ctx(p: &Payload) -> Option<UpcastCtx> {
    if p.upcast.is_empty() {
        return None;
    }
    let name = pascal(&p.name);
    let custom_trait = format!("{name}Upcast");
    let has_custom = p.upcast.iter().any(|s| matches!(s.kind, StepKind::Custom));
    let steps = p
        .upcast
        .iter()
        .map(|step| match &step.kind {
            StepKind::Custom => format!(
                "{RT}::UpcastStep::Custom(<Self as self::{custom_trait}>::upcast_v{})",
                step.from
            ),
            StepKind::Declarative {
                renamed,
                removed,
                added,
            } => format!(
                "{RT}::UpcastStep::Declarative {{ renamed: &[{}], removed: &[{}], added: &[{}] }}",
                renamed
                    .iter()
                    .map(|(old, new)| format!("({}, {})", str_lit(old), str_lit(new)))
                    .collect::<Vec<_>>()
                    .join(", "),
                removed
                    .iter()
                    .map(|f| str_lit(f))
                    .collect::<Vec<_>>()
                    .join(", "),
                added
                    .iter()
                    .map(|(f, lit)| format!("({}, || {})", str_lit(f), json_expr(lit)))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        })
        .collect();
    Some(UpcastCtx {
        first: p.upcast[0].from,
        steps,
        trait_doc: doc_attrs(&format!(
            "The custom upcast steps of event `{}`: implement it for [`{name}`]. Each method \
             reads data of one older version and returns it as the next version.",
            p.type_name
        )),
        custom: p
            .upcast
            .iter()
            .filter(|s| matches!(s.kind, StepKind::Custom))
            .map(|s| CustomStepCtx {
                method: format!("upcast_v{}", s.from),
                doc: doc_attrs(&format!(
                    "Upcasts data of version {} to version {}.",
                    s.from,
                    s.from + 1
                )),
            })
            .collect(),
        custom_trait: has_custom.then_some(custom_trait),
    })
}
