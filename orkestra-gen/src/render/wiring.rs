//! `Wiring`: every binding of a namespace, one field each, started at once.

use serde::Serialize;

use super::ModuleCtx;
use crate::model::*;
use crate::names::{doc_attrs, pascal};

/// `Wiring`: one public field per binding of every kind (handlers, aggregates,
/// projections, process managers, decisions), so leaving one out does not compile, and `start`.
#[derive(Serialize)]
pub(super) struct AllWiringCtx {
    pub(super) doc: String,
    pub(super) fields: Vec<AllWiringField>,
    /// One subscription expression per handler binding.
    pub(super) handler_subscriptions: Vec<String>,
    /// One expression per aggregate, then per decision (its subscriptions, extended onto
    /// the handlers').
    pub(super) aggregate_subscriptions: Vec<String>,
    /// One expression per projection, then per process manager.
    pub(super) projections: Vec<String>,
    pub(super) process_managers: Vec<String>,
    /// The namespace has personal data: `start` first checks the store encrypts it.
    pub(super) personal: bool,
}

/// A field of `Wiring`.
#[derive(Serialize)]
pub(super) struct AllWiringField {
    pub(super) ident: String,
    pub(super) param: String,
    /// The trait, from the namespace module (`handlers::PlaceOrderHandler`).
    pub(super) bound: String,
    /// The binding fn, from the namespace module (`handlers::place_order_handler`).
    pub(super) ctor: String,
    /// `handler`, `aggregate`, `projection`, `process_manager` or `decision`.
    pub(super) kind: &'static str,
    pub(super) doc: String,
}

impl ModuleCtx {
    /// The `Wiring` struct over every binding rendered above. Field and parameter names
    /// are the binding fns and traits; one taken by another kind gets the kind appended.
    pub(super) fn with_all_wiring(mut self, module: &Module) -> Self {
        let mut bindings: Vec<(&'static str, &'static str, String, String)> = Vec::new();
        bindings.extend(
            self.handlers
                .iter()
                .map(|h| ("handler", "handlers", h.name.clone(), h.fn_name.clone())),
        );
        bindings.extend(
            self.aggregates
                .iter()
                .map(|a| ("aggregate", "aggregates", a.name.clone(), a.fn_name.clone())),
        );
        bindings.extend(self.projections.iter().map(|p| {
            (
                "projection",
                "projections",
                p.h.name.clone(),
                p.h.fn_name.clone(),
            )
        }));
        bindings.extend(self.process_managers.iter().map(|p| {
            (
                "process_manager",
                "process_managers",
                p.name.clone(),
                p.fn_name.clone(),
            )
        }));
        bindings.extend(
            self.decisions
                .iter()
                .map(|d| ("decision", "decisions", d.name.clone(), d.fn_name.clone())),
        );
        if bindings.is_empty() {
            return self;
        }
        let mut idents = std::collections::HashSet::new();
        let mut params = std::collections::HashSet::new();
        let mut fields = Vec::new();
        for (kind, section, name, ctor) in bindings {
            let bare = ctor.trim_start_matches("r#").to_owned();
            let ident = if idents.insert(ctor.clone()) {
                ctor.clone()
            } else {
                let renamed = format!("{bare}_{kind}");
                idents.insert(renamed.clone());
                renamed
            };
            let trait_name = name.trim_start_matches("r#");
            let mut param = format!("{trait_name}Impl");
            if !params.insert(param.clone()) {
                param = format!("{trait_name}{}Impl", pascal(kind));
                params.insert(param.clone());
            }
            let what = match kind {
                "handler" => "handler binding",
                "aggregate" => "aggregate",
                "decision" => "decision",
                "projection" => "projection",
                _ => "process manager",
            };
            fields.push(AllWiringField {
                doc: doc_attrs(&format!(
                    "The implementation of [`{section}::{trait_name}`], the {what}."
                )),
                ident,
                param,
                bound: format!("{section}::{name}"),
                ctor: format!("{section}::{ctor}"),
                kind,
            });
        }
        let list = fields
            .iter()
            .map(|f| format!("`{}`", f.bound))
            .collect::<Vec<_>>()
            .join(", ");
        let of_kind = |kind: &str, shape: &dyn Fn(&AllWiringField) -> String| {
            fields
                .iter()
                .filter(|f| f.kind == kind)
                .map(shape)
                .collect::<Vec<_>>()
        };
        let handler_subscriptions = of_kind("handler", &|f| {
            format!("self::{}(self.{})", f.ctor, f.ident)
        });
        let mut aggregate_subscriptions = of_kind("aggregate", &|f| {
            format!("self::{}(self.{}, store.clone())", f.ctor, f.ident)
        });
        aggregate_subscriptions.extend(of_kind("decision", &|f| {
            format!("self::{}(self.{}, store.clone())", f.ctor, f.ident)
        }));
        let subscribed = if self.decisions.is_empty() {
            "the handlers and aggregates"
        } else {
            "the handlers, aggregates and decisions"
        };
        let projections = of_kind("projection", &|f| {
            format!("self::{}(self.{})", f.ctor, f.ident)
        });
        let process_managers = of_kind("process_manager", &|f| {
            format!("self::{}(self.{}, store.clone())", f.ctor, f.ident)
        });
        self.all_wiring = Some(AllWiringCtx {
            doc: doc_attrs(&format!(
                "Every binding of `{}`, one field each ({list}): a missing field is a compile error.\n\n\
                 `Wiring {{ .. }}.start(&bus, &store).await?` {checks}subscribes {subscribed}, then starts the projections and process managers; \
                 stop what it returns to stop them.",
                module.namespace,
                checks = if super::personal::has_personal_data(module) {
                    "checks that `store` encrypts the namespace's personal data (`personal::data()`), "
                } else {
                    ""
                },
            )),
            fields,
            handler_subscriptions,
            aggregate_subscriptions,
            projections,
            process_managers,
            personal: super::personal::has_personal_data(module),
        });
        self
    }
}
