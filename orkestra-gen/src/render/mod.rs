//! Rendering: the resolved model to Rust source through the minijinja templates in
//! `templates/`. Every identifier, path, type and literal is computed here (through
//! [`names`](crate::names)) into typed contexts, one module per schema section; the
//! templates (`module.rs.j2` and the section templates it includes) only place the
//! strings.

mod aggregates;
mod decisions;
mod fields;
mod handlers;
mod payloads;
mod personal;
mod process_managers;
mod projections;
mod types;
mod wiring;

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use crate::model::*;
use crate::names::{doc_attrs, pascal, shouty, str_lit};

use aggregates::{AggregateCtx, aggregate_ctx};
use decisions::{DecisionCtx, decision_ctx};
use handlers::{HandlerCtx, WiringCtx, handler_ctx, wiring_ctx};
use payloads::{SectionCtx, TopicCtx, payload_ctx};
use personal::{PersonalCtx, personal_ctx};
use process_managers::{ProcessCtx, process_ctx};
use projections::{ProjectionCtx, projection_ctx};
use types::{TypeCtx, type_ctx};
use wiring::AllWiringCtx;

pub(crate) use aggregates::state_shape;

/// The runtime crate, as generated code names it.
const RT: &str = "::orkestra_runtime";
/// What only generated code uses: readers, rule checks and the crates it names.
const CG: &str = "::orkestra_runtime::codegen";
/// The root template (the shared macros, the namespace module), rendered per namespace.
const ROOT: &str = "module.rs.j2";
/// Every template, by the name the others include it with. Embedded, so a published
/// crate renders without its sources.
const TEMPLATES: [(&str, &str); 10] = [
    (ROOT, include_str!("../../templates/module.rs.j2")),
    ("types.rs.j2", include_str!("../../templates/types.rs.j2")),
    (
        "payloads.rs.j2",
        include_str!("../../templates/payloads.rs.j2"),
    ),
    (
        "handlers.rs.j2",
        include_str!("../../templates/handlers.rs.j2"),
    ),
    (
        "aggregates.rs.j2",
        include_str!("../../templates/aggregates.rs.j2"),
    ),
    (
        "projections.rs.j2",
        include_str!("../../templates/projections.rs.j2"),
    ),
    (
        "process_managers.rs.j2",
        include_str!("../../templates/process_managers.rs.j2"),
    ),
    (
        "decisions.rs.j2",
        include_str!("../../templates/decisions.rs.j2"),
    ),
    (
        "personal.rs.j2",
        include_str!("../../templates/personal.rs.j2"),
    ),
    ("wiring.rs.j2", include_str!("../../templates/wiring.rs.j2")),
];

/// The template environment: strict about undefined values, loaded once.
pub struct Renderer {
    env: Environment<'static>,
}

impl Renderer {
    /// Loads the embedded templates.
    pub fn new() -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .map_err(|e| format!("template {name}: {e:#}"))?;
        }
        Ok(Self { env })
    }

    /// Renders one module as unformatted Rust.
    pub fn module(&self, model: &Model, module: &Module) -> Result<String, String> {
        let template = self.env.get_template(ROOT).map_err(|e| e.to_string())?;
        template
            .render(ModuleCtx::new(model, module))
            .map_err(|e| format!("template {ROOT}: {e:#}"))
    }
}

/// One namespace: what `module.rs.j2` (and every template it includes) receives.
#[derive(Serialize)]
struct ModuleCtx {
    ident: String,
    doc: String,
    rt: &'static str,
    cg: &'static str,
    types: Vec<TypeCtx>,
    sections: [SectionCtx; 2],
    topics: Vec<TopicCtx>,
    handlers: Vec<HandlerCtx>,
    /// The `Handlers` struct; absent when the namespace has no binding.
    wiring: Option<WiringCtx>,
    aggregates: Vec<AggregateCtx>,
    projections: Vec<ProjectionCtx>,
    process_managers: Vec<ProcessCtx>,
    decisions: Vec<DecisionCtx>,
    /// The `personal` module; absent when the namespace has no personal data.
    personal: Option<PersonalCtx>,
    /// The namespace's `Wiring` struct (every binding); absent when it has none.
    all_wiring: Option<AllWiringCtx>,
}

pub(super) fn docs(description: Option<&str>, fallback: &str) -> String {
    doc_attrs(description.unwrap_or(fallback))
}

impl ModuleCtx {
    fn new(model: &Model, module: &Module) -> Self {
        let here = module.ident.as_str();
        let payloads = |items: &[Payload]| items.iter().map(|p| payload_ctx(p, here)).collect();
        let handlers: Vec<HandlerCtx> = module
            .handlers
            .iter()
            .map(|h| handler_ctx(model, h, here))
            .collect();
        Self {
            ident: module.ident.clone(),
            doc: docs(
                module.description.as_deref(),
                &format!("Namespace `{}`.", module.namespace),
            ),
            rt: RT,
            cg: CG,
            types: module.types.iter().map(|t| type_ctx(t, here)).collect(),
            sections: [
                SectionCtx {
                    name: "commands",
                    title: "Commands",
                    items: payloads(&module.commands),
                },
                SectionCtx {
                    name: "events",
                    title: "Events",
                    items: payloads(&module.events),
                },
            ],
            topics: module
                .commands
                .iter()
                .chain(&module.events)
                .map(|p| TopicCtx {
                    doc: doc_attrs(&format!("Topic of `{}`.", p.type_name)),
                    name: shouty(&p.name),
                    value: str_lit(&p.topic),
                })
                .collect(),
            wiring: wiring_ctx(module, &handlers),
            handlers,
            aggregates: module
                .aggregates
                .iter()
                .map(|a| aggregate_ctx(model, a, here))
                .collect(),
            projections: module
                .projections
                .iter()
                .map(|p| projection_ctx(model, p, here))
                .collect(),
            process_managers: module
                .process_managers
                .iter()
                .map(|p| process_ctx(model, p, here))
                .collect(),
            decisions: module
                .decisions
                .iter()
                .map(|d| decision_ctx(model, d, here))
                .collect(),
            personal: personal_ctx(model, module),
            all_wiring: None,
        }
        .with_all_wiring(module)
    }
}

/// The path of an item of module `target`'s `section`, seen from a sibling section of
/// module `here`: `super::types::X` in the same namespace, fully qualified otherwise.
pub(super) fn item_path(here: &str, target: &str, section: &str, name: &str) -> String {
    if here == target {
        format!("super::{section}::{}", pascal(name))
    } else {
        format!("super::super::{target}::{section}::{}", pascal(name))
    }
}

/// Whether the event `r` names has `tags`.
pub(super) fn is_tagged(model: &Model, r: &PayloadRef) -> bool {
    model
        .modules
        .iter()
        .find(|m| m.ident == r.module)
        .and_then(|m| m.events.iter().find(|e| e.name == r.name))
        .is_some_and(|e| !e.tags.is_empty())
}

pub(super) fn type_name(model: &Model, r: &PayloadRef) -> String {
    model
        .modules
        .iter()
        .find(|m| m.ident == r.module)
        .map_or_else(|| r.name.clone(), |m| format!("{}.{}", m.namespace, r.name))
}
