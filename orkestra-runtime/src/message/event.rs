//! [`Event`]: a typed payload with an id and metadata, and how one event causes another.

use std::ops::Deref;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::command::Command;
use super::erased::RawEvent;
use super::metadata::{Metadata, new_id};
use super::payload::{EventPayload, Payload, PayloadError};

/// An event: a typed payload `D` (its data) with an id and metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound(serialize = "D: Serialize", deserialize = "D: Deserialize<'de>"))]
pub struct Event<D> {
    /// The event id (a UUID).
    pub id: String,
    /// The event data.
    pub data: D,
    /// Context of the event.
    pub metadata: Metadata,
}

impl<D: EventPayload> Event<D> {
    /// Builds an event from typed data, checking the schema rules.
    pub fn new(data: D, metadata: Metadata) -> Result<Self, PayloadError> {
        data.check()?;
        Ok(Self::unchecked(data, metadata))
    }

    /// Builds an event from JSON data, checking it as [`Command::from_json`] checks params.
    pub fn from_json(data: Value, metadata: Metadata) -> Result<Self, PayloadError> {
        Ok(Self::unchecked(D::from_json(data)?, metadata))
    }

    /// Wraps data without checking it.
    pub fn unchecked(data: D, metadata: Metadata) -> Self {
        Self {
            id: new_id(),
            data,
            metadata,
        }
    }

    /// An event caused by `command`: same correlation id, causation id = the command id.
    pub fn from_command<P: Payload>(command: &Command<P>, data: D) -> Result<Self, PayloadError> {
        Self::new(data, Metadata::derive(&command.metadata, &command.id))
    }

    /// An event caused by `event`: same correlation id, causation id = that event's id.
    pub fn from_event<E>(event: &Event<E>, data: D) -> Result<Self, PayloadError> {
        Self::new(data, Metadata::derive(&event.metadata, &event.id))
    }

    /// [`Event::from_command`] with JSON data.
    pub fn from_command_json<P: Payload>(
        command: &Command<P>,
        data: Value,
    ) -> Result<Self, PayloadError> {
        Self::from_json(data, Metadata::derive(&command.metadata, &command.id))
    }

    /// [`Event::from_event`] with JSON data.
    pub fn from_event_json<E>(event: &Event<E>, data: Value) -> Result<Self, PayloadError> {
        Self::from_json(data, Metadata::derive(&event.metadata, &event.id))
    }

    /// The topic this event is published on.
    pub fn topic(&self) -> &'static str {
        D::TOPIC
    }

    /// The event with its data encoded as JSON.
    pub fn to_raw(&self) -> Result<RawEvent, serde_json::Error> {
        Ok(RawEvent {
            id: self.id.clone(),
            event_type: D::TYPE_NAME.to_owned(),
            version: D::VERSION,
            topic: D::TOPIC.to_owned(),
            data: serde_json::to_value(&self.data)?,
            metadata: self.metadata.clone(),
        })
    }
}

impl<D> Event<D> {
    /// The paths of the personal fields (`email`, `contacts[1].phone`) this event was read
    /// with as their replacement, because their subject was forgotten; empty otherwise
    /// (and always for an event built in this process). Kept in the
    /// [`metadata`](Metadata::redacted), so `Event`'s fields are as they were.
    pub fn redacted(&self) -> &[String] {
        self.metadata.redacted()
    }
}

impl<D> Deref for Event<D> {
    type Target = D;
    fn deref(&self) -> &D {
        &self.data
    }
}
