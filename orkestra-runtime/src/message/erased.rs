//! [`Message`]: a command or event with its payload type erased, as buses carry it;
//! [`RawCommand`] and [`RawEvent`], the JSON forms a broker or store delivers.
//!
//! On the in-process path the typed value is kept behind an `Arc` and handed back by
//! downcast, so nothing is serialized. A message that arrived as JSON (from a broker or a
//! store) is decoded into the handler's type on demand.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::command::Command;
use super::event::Event;
use super::metadata::{Metadata, TraceContext};
use super::payload::{CommandPayload, EventPayload, PayloadError};

/// Whether a message is a command or an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A command.
    Command,
    /// An event.
    Event,
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
    /// Decodes the data into a typed event: data of an older schema version is upcast
    /// first, fields `D` does not declare are ignored, rules are not checked (see
    /// [`Payload::decode_json`](crate::Payload::decode_json)).
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
            data: match super::read_event_ref(&self.data, self.version) {
                Some(data) => data,
                None => super::read_event(self.data.clone(), self.version)?,
            },
            metadata: self.metadata.clone(),
        })
    }
}

/// A command whose params are kept as JSON (what a broker delivers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RawCommand {
    /// The command id.
    pub id: String,
    /// The command type name (`Namespace.CommandName`).
    pub command_type: String,
    /// The topic it was dispatched on.
    pub topic: String,
    /// The params as JSON.
    pub params: Value,
    /// Context of the command.
    pub metadata: Metadata,
}

trait Typed: Send + Sync + 'static {
    fn as_any(&self) -> &dyn Any;
    fn id(&self) -> &str;
    fn metadata(&self) -> &Metadata;
    fn topic(&self) -> &'static str;
    fn type_name(&self) -> &'static str;
    fn version(&self) -> u32;
    fn kind(&self) -> MessageKind;
    fn payload_json(&self) -> Result<Value, serde_json::Error>;
    fn payload_raw(&self) -> Result<Box<serde_json::value::RawValue>, serde_json::Error>;
    fn metadata_mut(&mut self) -> &mut Metadata;
    fn clone_arc(&self) -> Arc<dyn Typed>;
}

impl<P: CommandPayload> Typed for Command<P> {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    fn topic(&self) -> &'static str {
        P::TOPIC
    }
    fn type_name(&self) -> &'static str {
        P::TYPE_NAME
    }
    fn version(&self) -> u32 {
        P::VERSION
    }
    fn kind(&self) -> MessageKind {
        MessageKind::Command
    }
    fn payload_json(&self) -> Result<Value, serde_json::Error> {
        serde_json::to_value(&self.params)
    }
    fn payload_raw(&self) -> Result<Box<serde_json::value::RawValue>, serde_json::Error> {
        serde_json::value::to_raw_value(&self.params)
    }
    fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }
    fn clone_arc(&self) -> Arc<dyn Typed> {
        Arc::new(self.clone())
    }
}

impl<D: EventPayload> Typed for Event<D> {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    fn topic(&self) -> &'static str {
        D::TOPIC
    }
    fn type_name(&self) -> &'static str {
        D::TYPE_NAME
    }
    fn version(&self) -> u32 {
        D::VERSION
    }
    fn kind(&self) -> MessageKind {
        MessageKind::Event
    }
    fn payload_json(&self) -> Result<Value, serde_json::Error> {
        serde_json::to_value(&self.data)
    }
    fn payload_raw(&self) -> Result<Box<serde_json::value::RawValue>, serde_json::Error> {
        serde_json::value::to_raw_value(&self.data)
    }
    fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }
    fn clone_arc(&self) -> Arc<dyn Typed> {
        Arc::new(self.clone())
    }
}

#[derive(Clone)]
enum Repr {
    Typed(Arc<dyn Typed>),
    RawCommand(Arc<RawCommand>),
    RawEvent(Arc<RawEvent>),
}

/// A command or event whose payload type is erased. Cheap to clone.
///
/// Generated code reads typed values back out with [`Message::command`] and
/// [`Message::event`]; buses and stores use the accessors and [`Message::payload_json`].
#[derive(Clone)]
pub struct Message {
    repr: Repr,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("kind", &self.kind())
            .field("type", &self.type_name())
            .field("id", &self.id())
            .field("topic", &self.topic())
            .finish_non_exhaustive()
    }
}

impl Message {
    /// Erases a typed command.
    pub fn from_command<P: CommandPayload>(command: Command<P>) -> Self {
        Self {
            repr: Repr::Typed(Arc::new(command)),
        }
    }

    /// Erases a typed event.
    pub fn from_event<D: EventPayload>(event: Event<D>) -> Self {
        Self {
            repr: Repr::Typed(Arc::new(event)),
        }
    }

    /// Wraps a command that arrived as JSON.
    pub fn from_raw_command(command: RawCommand) -> Self {
        Self {
            repr: Repr::RawCommand(Arc::new(command)),
        }
    }

    /// Wraps an event that arrived as JSON.
    pub fn from_raw_event(event: RawEvent) -> Self {
        Self {
            repr: Repr::RawEvent(Arc::new(event)),
        }
    }

    /// The message id.
    pub fn id(&self) -> &str {
        match &self.repr {
            Repr::Typed(t) => t.id(),
            Repr::RawCommand(c) => &c.id,
            Repr::RawEvent(e) => &e.id,
        }
    }

    /// Records the trace context the message was produced in, unless it has one.
    /// Copies the value only when the message is shared.
    pub(crate) fn set_trace_context_if_absent(
        &mut self,
        context: impl FnOnce() -> Option<TraceContext>,
    ) {
        if self.metadata().trace_context.is_some() {
            return;
        }
        let Some(context) = context() else { return };
        let metadata = match &mut self.repr {
            Repr::Typed(t) => {
                if Arc::get_mut(t).is_none() {
                    *t = t.clone_arc();
                }
                Arc::get_mut(t).map(|t| t.metadata_mut())
            }
            Repr::RawCommand(c) => Some(&mut Arc::make_mut(c).metadata),
            Repr::RawEvent(e) => Some(&mut Arc::make_mut(e).metadata),
        };
        if let Some(metadata) = metadata {
            metadata.trace_context = Some(context);
        }
    }

    /// The message metadata.
    pub fn metadata(&self) -> &Metadata {
        match &self.repr {
            Repr::Typed(t) => t.metadata(),
            Repr::RawCommand(c) => &c.metadata,
            Repr::RawEvent(e) => &e.metadata,
        }
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        match &self.repr {
            Repr::Typed(t) => t.topic(),
            Repr::RawCommand(c) => &c.topic,
            Repr::RawEvent(e) => &e.topic,
        }
    }

    /// The type name (`Namespace.Name`).
    pub fn type_name(&self) -> &str {
        match &self.repr {
            Repr::Typed(t) => t.type_name(),
            Repr::RawCommand(c) => &c.command_type,
            Repr::RawEvent(e) => &e.event_type,
        }
    }

    /// The payload's schema version.
    pub fn version(&self) -> u32 {
        match &self.repr {
            Repr::Typed(t) => t.version(),
            Repr::RawCommand(_) => 1,
            Repr::RawEvent(e) => e.version,
        }
    }

    /// Command or event.
    pub fn kind(&self) -> MessageKind {
        match &self.repr {
            Repr::Typed(t) => t.kind(),
            Repr::RawCommand(_) => MessageKind::Command,
            Repr::RawEvent(_) => MessageKind::Event,
        }
    }

    /// The payload (params or data) as raw JSON, serialized straight from the typed
    /// value (no intermediate `Value`).
    pub fn payload_raw(&self) -> Result<Box<serde_json::value::RawValue>, serde_json::Error> {
        match &self.repr {
            Repr::Typed(t) => t.payload_raw(),
            Repr::RawCommand(c) => serde_json::value::to_raw_value(&c.params),
            Repr::RawEvent(e) => serde_json::value::to_raw_value(&e.data),
        }
    }

    /// The payload (params or data) as JSON.
    pub fn payload_json(&self) -> Result<Value, serde_json::Error> {
        match &self.repr {
            Repr::Typed(t) => t.payload_json(),
            Repr::RawCommand(c) => Ok(c.params.clone()),
            Repr::RawEvent(e) => Ok(e.data.clone()),
        }
    }

    /// The typed command, cloned from the in-process value or decoded (and checked) from
    /// JSON. Fails with [`PayloadError::WrongType`] for a message of another type.
    pub fn command<P: CommandPayload>(&self) -> Result<Command<P>, PayloadError> {
        match &self.repr {
            Repr::Typed(t) => t
                .as_any()
                .downcast_ref::<Command<P>>()
                .cloned()
                .ok_or_else(|| wrong_type(P::TYPE_NAME, t.type_name())),
            Repr::RawCommand(c) if c.command_type == P::TYPE_NAME => Ok(Command {
                id: c.id.clone(),
                params: P::from_json(c.params.clone())?,
                metadata: c.metadata.clone(),
            }),
            _ => Err(wrong_type(P::TYPE_NAME, self.type_name())),
        }
    }

    /// The typed event, cloned from the in-process value or decoded (and checked) from
    /// JSON. Fails with [`PayloadError::WrongType`] for a message of another type.
    pub fn event<D: EventPayload>(&self) -> Result<Event<D>, PayloadError> {
        match &self.repr {
            Repr::Typed(t) => t
                .as_any()
                .downcast_ref::<Event<D>>()
                .cloned()
                .ok_or_else(|| wrong_type(D::TYPE_NAME, t.type_name())),
            Repr::RawEvent(e) => e.decode(),
            Repr::RawCommand(_) => Err(wrong_type(D::TYPE_NAME, self.type_name())),
        }
    }

    /// The event with its data as JSON (serializes a typed event).
    pub fn raw_event(&self) -> Result<RawEvent, PayloadError> {
        match &self.repr {
            Repr::RawEvent(e) => Ok(RawEvent::clone(e)),
            _ => Ok(RawEvent {
                id: self.id().to_owned(),
                event_type: self.type_name().to_owned(),
                version: self.version(),
                topic: self.topic().to_owned(),
                data: self.payload_json()?,
                metadata: self.metadata().clone(),
            }),
        }
    }
}

#[cold]
fn wrong_type(expected: &'static str, found: &str) -> PayloadError {
    PayloadError::WrongType {
        expected,
        found: found.to_owned(),
    }
}
