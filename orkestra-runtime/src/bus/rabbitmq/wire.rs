//! The wire format: every message body is one JSON object holding the payload and
//! everything needed to rebuild the message. A body that is not one still yields a
//! placeholder message, so its dead letter can be delivered and read.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bus::BusError;
use crate::message::{Message, MessageKind, RawCommand};
use crate::message::{Metadata, RawEvent};

/// The type name of the placeholder for a body that is not an Orkestra message.
pub(super) const UNDECODABLE: &str = "orkestra.undecodable";

/// The body of every message, as read.
#[derive(Deserialize)]
pub(super) struct Wire {
    kind: MessageKind,
    pub(super) id: String,
    #[serde(rename = "type")]
    type_name: String,
    pub(super) topic: String,
    #[serde(default = "one")]
    version: u32,
    payload: Value,
    metadata: Metadata,
}

fn one() -> u32 {
    1
}

/// The same body, written from borrowed parts and a payload serialized straight from
/// the typed value.
#[derive(Serialize)]
struct WireOut<'a> {
    kind: MessageKind,
    id: &'a str,
    #[serde(rename = "type")]
    type_name: &'a str,
    topic: &'a str,
    version: u32,
    payload: &'a serde_json::value::RawValue,
    metadata: &'a Metadata,
}

/// The wire body of a message.
pub(super) fn encode(message: &Message) -> Result<Vec<u8>, BusError> {
    let payload = message
        .payload_raw()
        .map_err(|e| BusError::Encode(e.to_string()))?;
    serde_json::to_vec(&WireOut {
        kind: message.kind(),
        id: message.id(),
        type_name: message.type_name(),
        topic: message.topic(),
        version: message.version(),
        payload: &payload,
        metadata: message.metadata(),
    })
    .map_err(|e| BusError::Encode(e.to_string()))
}

/// The wire form of a body.
pub(super) fn decode(body: &[u8]) -> Result<Wire, serde_json::Error> {
    serde_json::from_slice(body)
}

impl Wire {
    pub(super) fn into_message(self) -> Message {
        match self.kind {
            MessageKind::Command => Message::from_raw_command(RawCommand {
                id: self.id,
                command_type: self.type_name,
                topic: self.topic,
                params: self.payload,
                metadata: self.metadata,
            }),
            MessageKind::Event => Message::from_raw_event(RawEvent {
                id: self.id,
                event_type: self.type_name,
                version: self.version,
                topic: self.topic,
                data: self.payload,
                metadata: self.metadata,
            }),
        }
    }
}

/// The message in a body, or a placeholder event of type [`UNDECODABLE`] holding the
/// raw text when the body is not an Orkestra message (dead letters must still be
/// delivered and read); its id is the message id of the properties, if any.
pub(super) fn decode_or_placeholder(
    body: &[u8],
    routing_key: &str,
    message_id: Option<&str>,
) -> Message {
    match decode(body) {
        Ok(wire) => wire.into_message(),
        Err(_) => Message::from_raw_event(RawEvent {
            id: message_id.unwrap_or_default().to_owned(),
            event_type: UNDECODABLE.into(),
            version: 1,
            topic: routing_key.to_owned(),
            data: Value::String(String::from_utf8_lossy(body).into_owned()),
            metadata: Metadata::new(),
        }),
    }
}
