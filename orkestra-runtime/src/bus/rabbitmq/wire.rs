//! The wire format: every message body is one JSON object holding the payload and
//! everything needed to rebuild the message. A body that is not one still yields a
//! placeholder message, so its dead letter can be delivered and read.
//!
//! With keys (`Bus::with_keys`) an event whose type has personal data travels with
//! those fields sealed, in the store's form ([`keys`](crate::keys)): what the work,
//! wait and dead-letter queues hold is ciphertext, opened by the consumer.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bus::BusError;
use crate::keys::{SealError, Sealer, Sealing};
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
    encode_parts(message, &payload, message.metadata())
}

fn encode_parts(
    message: &Message,
    payload: &serde_json::value::RawValue,
    metadata: &Metadata,
) -> Result<Vec<u8>, BusError> {
    serde_json::to_vec(&WireOut {
        kind: message.kind(),
        id: message.id(),
        type_name: message.type_name(),
        topic: message.topic(),
        version: message.version(),
        payload,
        metadata,
    })
    .map_err(|e| BusError::Encode(e.to_string()))
}

/// The wire body of a message, with the personal fields of an event `sealer` describes
/// sealed (any other message: [`encode`]). A forgotten subject's fields go out as their
/// replacements, listed in the metadata's `redacted`: the relay publishes events stored
/// before a forget, and they must go out without what was forgotten.
pub(super) async fn encode_sealed(
    message: &Message,
    sealer: Option<&Sealer>,
) -> Result<Vec<u8>, BusError> {
    let Some(sealer) = sealer.filter(|s| {
        message.kind() == MessageKind::Event && s.fields(message.type_name()).is_some()
    }) else {
        return encode(message);
    };
    let mut payload = message
        .payload_json()
        .map_err(|e| BusError::Encode(e.to_string()))?;
    let mut metadata = message.metadata().clone();
    match sealer.seal(message.type_name(), &mut payload).await {
        Ok(Sealing::Sealed | Sealing::NotPersonal) => {}
        Ok(Sealing::Redacted(paths)) => {
            tracing::info!(
                event_type = message.type_name(),
                message_id = message.id(),
                fields = %paths.join(", "),
                orkestra = "rabbitmq",
                "Subject forgotten: personal fields published as their replacements"
            );
            metadata.add_redacted(&paths);
        }
        Err(SealError::Field {
            field,
            message: why,
        }) => {
            return Err(BusError::PersonalData(format!(
                "event {} ({}){}: {why}",
                message.id(),
                message.type_name(),
                if field.is_empty() {
                    String::new()
                } else {
                    format!(", field {field}")
                },
            )));
        }
        Err(SealError::Keys(e)) => return Err(BusError::Keys(e)),
    }
    let payload =
        serde_json::value::to_raw_value(&payload).map_err(|e| BusError::Encode(e.to_string()))?;
    encode_parts(message, &payload, &metadata)
}

/// Opens the personal fields of a delivered event `sealer` describes: the message with
/// plain data and, for a forgotten subject, its replacements listed in
/// [`Metadata::redacted`]. A value that does not open is [`Opened::Refused`] naming the
/// event type and field (dead-lettered, never decoded as garbage); a key store that
/// fails is [`Opened::KeysDown`] (retried).
pub(super) async fn open(message: Message, sealer: Option<&Sealer>) -> Opened {
    let Some(sealer) = sealer.filter(|s| {
        message.kind() == MessageKind::Event && s.fields(message.type_name()).is_some()
    }) else {
        return Opened::Ready(message);
    };
    let mut data = match message.payload_json() {
        Ok(data) => data,
        Err(e) => return Opened::Refused(format!("undecodable message: {e}")),
    };
    match sealer.open(message.type_name(), &mut data).await {
        Ok(redacted) => {
            let mut metadata = message.metadata().clone();
            metadata.add_redacted(&redacted);
            Opened::Ready(Message::from_raw_event(RawEvent {
                id: message.id().to_owned(),
                event_type: message.type_name().to_owned(),
                version: message.version(),
                topic: message.topic().to_owned(),
                data,
                metadata,
            }))
        }
        Err(SealError::Field {
            field,
            message: why,
        }) => Opened::Refused(format!(
            "personal data of event {} ({}) does not open at field {}: {why}",
            message.id(),
            message.type_name(),
            if field.is_empty() { "?" } else { &field },
        )),
        Err(SealError::Keys(e)) => Opened::KeysDown(format!(
            "cannot open the personal data of event {} ({}): {e}",
            message.id(),
            message.type_name()
        )),
    }
}

/// What [`open`] made of a delivered message.
pub(super) enum Opened {
    /// Ready for its handler.
    Ready(Message),
    /// A value that does not open: dead-lettered at once.
    Refused(String),
    /// The key store failed: retried.
    KeysDown(String),
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
