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
    /// The connection holding the inbox claim's transaction (`once: true` on PostgreSQL).
    #[cfg(feature = "postgres")]
    postgres: Option<Arc<dyn crate::handler::PostgresClaimConnection>>,
}

impl HandlerContext {
    pub(crate) fn new(bus: Bus, message: Message, handler: Arc<str>, attempt: u32) -> Self {
        Self {
            bus,
            message,
            handler,
            attempt,
            #[cfg(feature = "postgres")]
            postgres: None,
        }
    }

    /// With the connection of the inbox claim's open transaction.
    #[cfg(feature = "postgres")]
    pub(crate) fn with_postgres(
        mut self,
        client: Option<Arc<dyn crate::handler::PostgresClaimConnection>>,
    ) -> Self {
        self.postgres = client;
        self
    }

    /// For a `once: true` handler on a bus whose inbox is a PostgreSQL store: the
    /// connection whose open transaction holds this message's claim. Write through it and
    /// the handler's writes commit together with the message's inbox row (inserted when
    /// the handler succeeds), or roll back when it fails (then the message is handled
    /// again): the writes happen exactly once. The claim itself takes no transaction id;
    /// the first write does, and from then until the commit it holds back every reader
    /// of the global order, so write late in a long handler. `None` for other handlers
    /// and inboxes.
    #[cfg(feature = "postgres")]
    pub fn postgres(&self) -> Option<&tokio_postgres::Client> {
        self.postgres.as_deref().and_then(|c| c.client())
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

    /// Publishes an event caused by the message being handled, with that message's
    /// derived metadata: its correlation id, actor (id and type) and source, and
    /// causation id = its id. The event keeps its own id and issue time.
    pub async fn publish<D: EventPayload>(
        &self,
        mut event: Event<D>,
    ) -> Result<EventEnvelope, BusError> {
        let parent = self.message.metadata();
        let metadata = &mut event.metadata;
        metadata.correlation_id.clone_from(&parent.correlation_id);
        metadata.causation_id = Some(self.message.id().to_owned());
        metadata.actor_id.clone_from(&parent.actor_id);
        metadata.actor_type = parent.actor_type;
        metadata.source.clone_from(&parent.source);
        self.bus
            .publish_from_handler(EventEnvelope::wrap(event))
            .await
    }

    /// Resolves when the bus starts shutting down (or is gone): a long handler can
    /// `select!` on it to stop early, leaving its message to be redelivered (return a
    /// `HandlerError`) or finishing quickly.
    pub async fn cancelled(&self) {
        let mut signal = self.bus.shutdown_signal();
        let _ = signal.wait_for(Option::is_some).await;
    }
}
