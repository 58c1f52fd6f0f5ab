//! Layer 5, built on a bus and a store: appending events and then publishing them.

use crate::bus::Bus;
use crate::config::PublishMode;
use crate::message::EventEnvelope;
use crate::store::{AppendResult, EventData, ExpectedVersion, Store, StoreError};

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
