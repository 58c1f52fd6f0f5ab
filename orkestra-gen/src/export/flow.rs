//! Who sends and who receives each message: the relations every export shows, computed
//! once from the model (the same rules the generated wiring follows).

use crate::model::{
    Decision, Handler, HandlerTarget, Model, Module, Payload, PayloadKind, PayloadRef, ReadItem,
};
use crate::names;

/// A command or event with the namespace it belongs to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Msg<'m> {
    pub(crate) module: &'m Module,
    pub(crate) payload: &'m Payload,
}

impl Msg<'_> {
    /// `Orders.PlaceOrder`: unique across the model, readable, used as the message's key
    /// in every export.
    pub(crate) fn key(&self) -> String {
        names::component_key(&format!("{}.{}", self.module.qualifier, self.payload.name))
    }

    pub(crate) fn is_command(&self) -> bool {
        self.payload.kind == PayloadKind::Command
    }

    fn is(&self, r: &PayloadRef) -> bool {
        r.module == self.module.ident && r.name == self.payload.name
    }
}

/// A handler binding with its namespace.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bound<'m> {
    pub(crate) module: &'m Module,
    pub(crate) handler: &'m Handler,
}

impl Bound<'_> {
    /// Handler names are unique across namespaces (validation checks it).
    pub(crate) fn key(&self) -> String {
        names::component_key(&self.handler.name)
    }
}

/// A decision with its namespace.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Decided<'m> {
    pub(crate) module: &'m Module,
    pub(crate) decision: &'m Decision,
}

impl Decided<'_> {
    /// `Courses.Subscription`: decision names are unique within a namespace only.
    pub(crate) fn key(&self) -> String {
        names::component_key(&format!("{}.{}", self.module.qualifier, self.decision.name))
    }
}

/// The relations of one model.
#[derive(Debug)]
pub(crate) struct Flow<'m> {
    pub(crate) model: &'m Model,
    pub(crate) messages: Vec<Msg<'m>>,
    pub(crate) handlers: Vec<Bound<'m>>,
    pub(crate) decisions: Vec<Decided<'m>>,
}

impl<'m> Flow<'m> {
    pub(crate) fn new(model: &'m Model) -> Self {
        let messages = model
            .modules
            .iter()
            .flat_map(|module| {
                module
                    .commands
                    .iter()
                    .chain(&module.events)
                    .map(move |payload| Msg { module, payload })
            })
            .collect();
        let handlers = model
            .modules
            .iter()
            .flat_map(|module| {
                module
                    .handlers
                    .iter()
                    .map(move |handler| Bound { module, handler })
            })
            .collect();
        let decisions = model
            .modules
            .iter()
            .flat_map(|module| {
                module
                    .decisions
                    .iter()
                    .map(move |decision| Decided { module, decision })
            })
            .collect();
        Self {
            model,
            messages,
            handlers,
            decisions,
        }
    }

    /// The decisions that decide `msg` (a command bound to one is bound to nothing else).
    pub(crate) fn deciders(&self, msg: &Msg<'_>) -> Vec<Decided<'m>> {
        self.decisions
            .iter()
            .copied()
            .filter(|d| msg.is(&d.decision.command))
            .collect()
    }

    /// The decisions that may append `msg`.
    pub(crate) fn decision_emitters(&self, msg: &Msg<'_>) -> Vec<Decided<'m>> {
        self.decisions
            .iter()
            .copied()
            .filter(|d| d.decision.emits.iter().any(|r| msg.is(r)))
            .collect()
    }

    /// The decisions whose boundary reads `msg`, each with the read items that name it.
    pub(crate) fn decision_readers(&self, msg: &Msg<'_>) -> Vec<(Decided<'m>, Vec<&'m ReadItem>)> {
        self.decisions
            .iter()
            .filter_map(|d| {
                let items = items_reading(d.decision, msg);
                (!items.is_empty()).then_some((*d, items))
            })
            .collect()
    }

    /// The events a decision reads, each with the read items that name it, in the order
    /// the items first name them.
    pub(crate) fn read_by(&self, decision: &'m Decision) -> Vec<(Msg<'m>, Vec<&'m ReadItem>)> {
        let mut out: Vec<(Msg<'m>, Vec<&'m ReadItem>)> = Vec::new();
        for r in decision.reads.iter().flat_map(|item| &item.events) {
            if let Some(m) = self.find(r)
                && !out.iter().any(|(seen, _)| seen.is(r))
            {
                out.push((m, items_reading(decision, &m)));
            }
        }
        out
    }

    /// The message a reference names.
    pub(crate) fn find(&self, r: &PayloadRef) -> Option<Msg<'m>> {
        self.messages.iter().copied().find(|m| m.is(r))
    }

    /// The bindings that receive `msg` (wildcard bindings through their matched events).
    pub(crate) fn receivers(&self, msg: &Msg<'_>) -> Vec<Bound<'m>> {
        self.handlers
            .iter()
            .copied()
            .filter(|b| receives(&b.handler.target, msg))
            .collect()
    }

    /// The bindings that declare they emit `msg`.
    pub(crate) fn emitters(&self, msg: &Msg<'_>) -> Vec<Bound<'m>> {
        self.handlers
            .iter()
            .copied()
            .filter(|b| b.handler.emits.iter().any(|r| msg.is(r)))
            .collect()
    }

    /// The messages a binding receives.
    pub(crate) fn received_by(&self, handler: &Handler) -> Vec<Msg<'m>> {
        self.messages
            .iter()
            .copied()
            .filter(|m| receives(&handler.target, m))
            .collect()
    }

    /// The messages a binding emits.
    pub(crate) fn emitted_by(&self, handler: &Handler) -> Vec<Msg<'m>> {
        handler.emits.iter().filter_map(|r| self.find(r)).collect()
    }
}

fn items_reading<'d>(decision: &'d Decision, msg: &Msg<'_>) -> Vec<&'d ReadItem> {
    decision
        .reads
        .iter()
        .filter(|item| item.events.iter().any(|r| msg.is(r)))
        .collect()
}

/// How a decision reads an event, for labels: `course_id` (or `course_id, student_id`
/// when several of its items read the event by different tags).
pub(crate) fn read_tags(items: &[&ReadItem]) -> String {
    let mut tags: Vec<&str> = Vec::new();
    for item in items {
        if !tags.contains(&item.tag.as_str()) {
            tags.push(&item.tag);
        }
    }
    tags.join(", ")
}

fn receives(target: &HandlerTarget, msg: &Msg<'_>) -> bool {
    match target {
        HandlerTarget::Command(r) | HandlerTarget::Event(r) => msg.is(r),
        HandlerTarget::Events(rs) | HandlerTarget::Topic { matched: rs, .. } => {
            rs.iter().any(|r| msg.is(r))
        }
        HandlerTarget::DeadLetters => false,
    }
}

/// A one-line description of what a binding receives (`orders.events.#`, `PlaceOrder`).
pub(crate) fn target_text(target: &HandlerTarget) -> String {
    match target {
        HandlerTarget::Command(r) => format!("command {}", r.name),
        HandlerTarget::Event(r) => format!("event {}", r.name),
        HandlerTarget::Events(rs) => format!(
            "events {}",
            rs.iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        HandlerTarget::Topic { pattern, .. } => format!("every event matching `{pattern}`"),
        HandlerTarget::DeadLetters => "every dead letter of the bus".to_owned(),
    }
}
