//! Layer 5, built on a bus and a store: appending events and then publishing them, and a
//! bus given the store it works with (its inbox, when `bus.inbox = "store"`).

use crate::bus::Bus;
use crate::config::{InboxMode, PublishMode};
use crate::message::EventEnvelope;
use crate::store::{AppendResult, EventData, ExpectedVersion, Store, StoreError};

impl Bus {
    /// The store this bus works with. With `bus.inbox = "store"` (env
    /// `ORKESTRA_BUS_INBOX`), `once: true` handlers record what they handled in its inbox
    /// ([`with_inbox`](Self::with_inbox)); with the default `memory`, the store is not
    /// used for it. So the inbox is switched by configuration alone:
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use orkestra_runtime::{Bus, Config, Store};
    /// let config = Config::load()?;
    /// let store = Store::from_config(&config).await?;
    /// let bus = Bus::from_config(&config).await?.with_store(&store);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_store(self, store: &Store) -> Self {
        match self.inbox_mode() {
            InboxMode::Store => self.with_inbox(store),
            _ => self,
        }
    }
}

impl Store {
    /// Appends `events` to `stream`, then publishes them on `bus`, in that order: an event
    /// is published only once stored. If publishing fails the events stay stored and the
    /// error is [`StoreError::Publish`]; publish them again (delivery is at-least-once, so
    /// handlers must tolerate a repeat). A command handler calls this with `ctx.bus()`.
    ///
    /// With `store.publish = "relay"` ([`PublishMode::Relay`]) it only appends: the
    /// relay publishes every stored event, even when this process dies right after the
    /// append.
    pub async fn append_and_publish(
        &self,
        bus: &Bus,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EventEnvelope>,
    ) -> Result<AppendResult, StoreError> {
        let data = events
            .iter()
            .map(|e| EventData::from_message(e.message()))
            .collect::<Result<Vec<_>, _>>()?;
        let result = self.append(stream, expected, data).await?;
        if self.publish_mode() == PublishMode::Relay {
            return Ok(result);
        }
        for envelope in events {
            bus.publish(envelope).await?;
        }
        Ok(result)
    }
}
