//! [`HandlerContext`]: what a handler gets besides its message.

use std::sync::Arc;

use super::{Bus, BusError};
use crate::message::{Event, EventEnvelope, EventPayload, Message, Metadata};

/// What a handler gets besides its message: the message's metadata and the bus.
#[derive(Clone, Debug)]
pub struct HandlerContext {
    bus: Bus,
    message: Message,
    handler: Arc<str>,
    attempt: u32,
}

impl HandlerContext {
    pub(crate) fn new(bus: Bus, message: Message, handler: Arc<str>, attempt: u32) -> Self {
        Self {
            bus,
            message,
            handler,
            attempt,
        }
    }

    /// The metadata of the message being handled.
    pub fn metadata(&self) -> &Metadata {
        self.message.metadata()
    }

    /// The message being handled.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The handler's name (its binding name in the schema).
    pub fn handler(&self) -> &str {
        &self.handler
    }

    /// Which run of the handler this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The bus the message came from.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Metadata for a message caused by the one being handled.
    pub fn derived_metadata(&self) -> Metadata {
        Metadata::derive(self.message.metadata(), self.message.id())
    }

    /// Publishes an event caused by the message being handled: its correlation id and
    /// causation id are set from that message (actor, source and time are kept).
    pub async fn publish<D: EventPayload>(
        &self,
        mut event: Event<D>,
    ) -> Result<EventEnvelope, BusError> {
        let parent = self.message.metadata();
        event
            .metadata
            .correlation_id
            .clone_from(&parent.correlation_id);
        event.metadata.causation_id = Some(self.message.id().to_owned());
        self.bus.publish(EventEnvelope::wrap(event)).await
    }
}
