//! [`EventSet`]: the events one binding receives.

use crate::message::{Event, EventPayload, Message, PayloadError};

/// The events a binding can receive: one event type (`Event<D>`), or a generated enum
/// with a variant per event (and `Other(RawEvent)` for wildcard bindings).
pub trait EventSet: Sized + Send + 'static {
    /// The topic patterns to bind (exact topics or AMQP wildcards).
    const PATTERNS: &'static [&'static str];

    /// Reads the typed value out of a message. An unknown type is
    /// [`PayloadError::WrongType`]; the bus dead-letters it.
    fn from_message(message: &Message) -> Result<Self, PayloadError>;
}

impl<D: EventPayload> EventSet for Event<D> {
    const PATTERNS: &'static [&'static str] = &[D::TOPIC];

    fn from_message(message: &Message) -> Result<Self, PayloadError> {
        message.event()
    }
}
