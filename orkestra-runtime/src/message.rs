//! The values that travel: [`Metadata`], [`Command`], [`Event`] and [`RawEvent`].

use std::fmt;
use std::ops::Deref;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::payload::{CommandPayload, EventPayload, Payload, PayloadError};

/// A fresh message id: a random (v4) UUID in its hyphenated lowercase form.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Who caused a message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorType {
    /// A human user.
    User,
    /// The system itself (the default).
    #[default]
    System,
    /// A domain expert or back-office operator.
    Expert,
    /// A scheduled job.
    Scheduler,
}

impl fmt::Display for ActorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::User => "user",
            Self::System => "system",
            Self::Expert => "expert",
            Self::Scheduler => "scheduler",
        })
    }
}

/// Context that travels with every command and event.
///
/// The correlation id ties together everything caused by one original request; the
/// causation id names the message that directly caused this one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Metadata {
    /// Shared by every message caused, directly or not, by the same original message.
    pub correlation_id: String,
    /// The id of the message that caused this one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// Who acted, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    /// What kind of actor acted.
    #[serde(default)]
    pub actor_type: ActorType,
    /// Where the message came from (a service or channel name), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// When the message was issued (UTC).
    pub issued_at: DateTime<Utc>,
    /// The W3C trace context it was produced in, when tracing is on: lets work done later
    /// (a stored event replayed, a message from a broker) link back to its origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_context: Option<crate::trace::TraceContext>,
}

impl Metadata {
    /// Fresh metadata: a new correlation id, no causation, a system actor, issued now.
    pub fn new() -> Self {
        Self {
            correlation_id: new_id(),
            causation_id: None,
            actor_id: None,
            actor_type: ActorType::System,
            source: None,
            issued_at: Utc::now(),
            trace_context: None,
        }
    }

    /// Sets the actor.
    #[must_use]
    pub fn with_actor(mut self, actor_id: impl Into<String>, actor_type: ActorType) -> Self {
        self.actor_id = Some(actor_id.into());
        self.actor_type = actor_type;
        self
    }

    /// Sets the source.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Sets the correlation id (for example one received from an HTTP header).
    #[must_use]
    pub fn with_correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = correlation_id.into();
        self
    }

    /// Metadata for a message caused by `parent_id`, whose metadata is `parent`: the same
    /// correlation id, actor and source; the causation id is `parent_id`; issued now.
    pub fn derive(parent: &Metadata, parent_id: impl Into<String>) -> Self {
        Self {
            correlation_id: parent.correlation_id.clone(),
            causation_id: Some(parent_id.into()),
            actor_id: parent.actor_id.clone(),
            actor_type: parent.actor_type,
            source: parent.source.clone(),
            issued_at: Utc::now(),
            trace_context: None,
        }
    }
}

impl Default for Metadata {
    fn default() -> Self {
        Self::new()
    }
}

/// A command: a typed payload `P` (its params) with an id and metadata.
///
/// Dereferences to `P`, so `cmd.quantity` reads a param directly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound(serialize = "P: Serialize", deserialize = "P: Deserialize<'de>"))]
pub struct Command<P> {
    /// The command id (a UUID).
    pub id: String,
    /// The params.
    pub params: P,
    /// Context of the command.
    pub metadata: Metadata,
}

impl<P: CommandPayload> Command<P> {
    /// Builds a command from typed params, checking the schema rules and the custom
    /// validation exactly as [`Command::from_json`] does.
    pub fn new(params: P, metadata: Metadata) -> Result<Self, PayloadError> {
        params.check()?;
        Ok(Self::unchecked(params, metadata))
    }

    /// Builds a command from JSON params, checking in the documented order: object shape,
    /// unknown params, missing required params, wrong types and rule violations, then
    /// the custom validation.
    pub fn from_json(params: Value, metadata: Metadata) -> Result<Self, PayloadError> {
        Ok(Self::unchecked(P::from_json(params)?, metadata))
    }

    /// Wraps params without checking them (for values that were checked already, such as
    /// a decoded message whose producer checked it).
    pub fn unchecked(params: P, metadata: Metadata) -> Self {
        Self {
            id: new_id(),
            params,
            metadata,
        }
    }

    /// The topic this command is dispatched on.
    pub fn topic(&self) -> &'static str {
        P::TOPIC
    }
}

impl<P> Deref for Command<P> {
    type Target = P;
    fn deref(&self) -> &P {
        &self.params
    }
}

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

impl<D> Deref for Event<D> {
    type Target = D;
    fn deref(&self) -> &D {
        &self.data
    }
}

/// An event whose data is kept as JSON: what a wildcard handler receives for an event
/// type it does not know, and what buses and stores carry on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RawEvent {
    /// The event id.
    pub id: String,
    /// The event type name (for generated events `Namespace.EventName`).
    pub event_type: String,
    /// The schema version of the data.
    #[serde(default = "default_version")]
    pub version: u32,
    /// The topic it was published on.
    pub topic: String,
    /// The data as JSON.
    pub data: Value,
    /// Context of the event.
    pub metadata: Metadata,
}

fn default_version() -> u32 {
    1
}

impl RawEvent {
    /// Decodes the data into a typed event, checking it against the schema.
    ///
    /// Fails with [`PayloadError::WrongType`] when the event type differs from `D`'s.
    pub fn decode<D: EventPayload>(&self) -> Result<Event<D>, PayloadError> {
        if self.event_type != D::TYPE_NAME {
            return Err(PayloadError::WrongType {
                expected: D::TYPE_NAME,
                found: self.event_type.clone(),
            });
        }
        Ok(Event {
            id: self.id.clone(),
            data: D::from_json(self.data.clone())?,
            metadata: self.metadata.clone(),
        })
    }
}
