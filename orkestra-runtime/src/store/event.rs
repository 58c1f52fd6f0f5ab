//! The values of the store API: [`ExpectedVersion`], [`EventData`] (to append),
//! [`RecordedEvent`] (as stored) and [`AppendResult`].

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{StoreError, Tag};
use crate::message::{Event, EventPayload, Message, Metadata, PayloadError, RawEvent};

/// The type prefix of the runtime's own records in a store (process manager steps):
/// the relay does not publish them, and no generated event type can take it.
pub const INTERNAL_TYPE_PREFIX: &str = "orkestra.";

/// The largest event (data plus metadata, as JSON) a store accepts by default: 4 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// What an append expects of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist (no event yet).
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream's last event must have this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose last version is `current` (None: no stream) satisfies it.
    pub fn accepts(self, current: Option<u64>) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => current.is_none(),
            Self::StreamExists => current.is_some(),
            Self::Exact(v) => current == Some(v),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any version"),
            Self::NoStream => f.write_str("no stream"),
            Self::StreamExists => f.write_str("an existing stream"),
            Self::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// An event to append: its id, type, schema version, JSON data and metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct EventData {
    /// The event id (appending the same id at the same place again is a no-op).
    pub id: String,
    /// The event type name.
    pub event_type: String,
    /// The payload's schema version.
    pub schema_version: u32,
    /// The data.
    pub data: Value,
    /// The metadata.
    pub metadata: Metadata,
    /// The topic it is published on, kept with the event so the relay can publish it
    /// later (`None`: the relay asks its fallback, see `Relay::with_topics`).
    pub topic: Option<String>,
    /// The tags the store indexes it by (see [`Query`](super::Query)); empty for most
    /// events. [`with_tags`](Self::with_tags) sets them.
    pub tags: Vec<Tag>,
}

impl EventData {
    /// With these tags (replacing any; a repeated tag is kept once).
    #[must_use]
    pub fn with_tags(mut self, tags: impl IntoIterator<Item = Tag>) -> Self {
        self.tags.clear();
        for t in tags {
            if !self.tags.contains(&t) {
                self.tags.push(t);
            }
        }
        self
    }

    /// From a typed event.
    pub fn from_event<D: EventPayload>(event: &Event<D>) -> Result<Self, StoreError> {
        Ok(Self {
            id: event.id.clone(),
            event_type: D::TYPE_NAME.to_owned(),
            schema_version: D::VERSION,
            data: serde_json::to_value(&event.data)
                .map_err(|e| StoreError::Encode(e.to_string()))?,
            metadata: event.metadata.clone(),
            topic: Some(D::TOPIC.to_owned()),
            tags: Vec::new(),
        })
    }

    /// From an event kept as JSON.
    pub fn from_raw(event: RawEvent) -> Self {
        Self {
            id: event.id,
            event_type: event.event_type,
            schema_version: event.version,
            data: event.data,
            metadata: event.metadata,
            topic: Some(event.topic).filter(|t| !t.is_empty()),
            tags: Vec::new(),
        }
    }

    /// From an erased event.
    pub fn from_message(message: &Message) -> Result<Self, StoreError> {
        let raw = message
            .raw_event()
            .map_err(|e| StoreError::Encode(e.to_string()))?;
        Ok(Self::from_raw(raw))
    }

    /// Serializes data and metadata once, for the size check and the adapter.
    pub(crate) fn encode(self) -> Result<Encoded, StoreError> {
        let data =
            serde_json::to_string(&self.data).map_err(|e| StoreError::Encode(e.to_string()))?;
        let metadata =
            serde_json::to_string(&self.metadata).map_err(|e| StoreError::Encode(e.to_string()))?;
        Ok(Encoded {
            event: self,
            data,
            metadata,
        })
    }
}

/// An event about to be appended, with its data and metadata as JSON text.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) event: EventData,
    pub(crate) data: String,
    pub(crate) metadata: String,
}

impl Encoded {
    /// The size that counts against the limit.
    pub(crate) fn size(&self) -> usize {
        self.data.len()
            + self.metadata.len()
            + self.event.event_type.len()
            + self.event.id.len()
            + self
                .event
                .tags
                .iter()
                .map(|t| t.as_str().len())
                .sum::<usize>()
    }
}

/// An event as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedEvent {
    pub(crate) stream: Arc<str>,
    pub(crate) version: u64,
    pub(crate) position: u64,
    pub(crate) id: String,
    pub(crate) event_type: Arc<str>,
    pub(crate) schema_version: u32,
    /// The data as JSON text (checked to be JSON when read).
    pub(crate) data: String,
    pub(crate) metadata: Metadata,
    pub(crate) recorded_at: DateTime<Utc>,
    pub(crate) topic: Option<Arc<str>>,
    pub(crate) tags: Vec<Tag>,
    /// The personal fields read as their replacement (their subject was forgotten).
    pub(crate) redacted: Vec<String>,
}

impl RecordedEvent {
    /// The stream.
    pub fn stream(&self) -> &str {
        &self.stream
    }
    /// The version within the stream (from 0).
    pub fn version(&self) -> u64 {
        self.version
    }
    /// The global position.
    pub fn position(&self) -> u64 {
        self.position
    }
    /// The event id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this is one of the runtime's own records (its type starts with
    /// [`INTERNAL_TYPE_PREFIX`]: a process manager's steps), not an application event.
    pub fn is_internal(&self) -> bool {
        self.event_type.starts_with(INTERNAL_TYPE_PREFIX)
    }

    /// The event type name.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }
    /// The payload's schema version.
    pub fn schema_version(&self) -> u32 {
        self.schema_version
    }
    /// The data as JSON text.
    pub fn data_json(&self) -> &str {
        &self.data
    }
    /// The data as a JSON value.
    pub fn data(&self) -> Result<Value, StoreError> {
        serde_json::from_str(&self.data).map_err(|e| StoreError::Corrupt {
            location: format!("position {}", self.position),
            message: format!("data is not JSON: {e}"),
        })
    }
    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    /// The topic recorded with it at append time (`None` for events appended without one,
    /// or by a release that did not record topics).
    pub fn topic(&self) -> Option<&str> {
        self.topic.as_deref()
    }
    /// The tags it was appended with (empty for most events).
    pub fn tags(&self) -> &[Tag] {
        &self.tags
    }
    /// When the store recorded it.
    pub fn recorded_at(&self) -> DateTime<Utc> {
        self.recorded_at
    }
    /// The paths of the personal fields that read as their replacement because their
    /// subject was forgotten (`email`, `contacts[1].phone`); empty otherwise.
    pub fn redacted(&self) -> &[String] {
        &self.redacted
    }

    /// The typed event, with its metadata. A recorded event of another type is
    /// [`StoreError::Decode`] with [`PayloadError::WrongType`]; data that does not fit the
    /// type's shape (a missing field, a wrong type) is [`StoreError::Decode`] too.
    ///
    /// Decoding reads as a release deployed at another time must ([schema evolution](https://github.com/orkestra-rs/orkestra/blob/main/book/src/evolution.md)):
    /// data stored at an older [`schema_version`](Self::schema_version) is upcast through
    /// the type's steps first ([`PayloadError::Upcast`] when no step covers it or one
    /// fails), and fields the type does not declare are ignored. It checks the shape, not
    /// the rules (`min`, `pattern`, custom validation): a stored event is a fact, checked
    /// when it was appended, and a rule tightened since must not make history unreadable.
    pub fn decode<D: EventPayload>(&self) -> Result<Event<D>, StoreError> {
        let failed = |source| StoreError::Decode {
            position: self.position,
            source,
        };
        if &*self.event_type != D::TYPE_NAME {
            return Err(failed(PayloadError::WrongType {
                expected: D::TYPE_NAME,
                found: self.event_type.to_string(),
            }));
        }
        let data = crate::message::read_stored(&self.data, self.schema_version).map_err(failed)?;
        Ok(Event {
            id: self.id.clone(),
            data,
            metadata: self.read_metadata(),
        })
    }

    /// The metadata as a reader gets it: with the fields read as their replacement
    /// ([`Event::redacted`]).
    fn read_metadata(&self) -> Metadata {
        let mut metadata = self.metadata.clone();
        metadata.add_redacted(&self.redacted);
        metadata
    }

    /// The event as JSON, with the topic it would be published on.
    pub fn to_raw(&self, topic: impl Into<String>) -> Result<RawEvent, StoreError> {
        Ok(RawEvent {
            id: self.id.clone(),
            event_type: self.event_type.to_string(),
            version: self.schema_version,
            topic: topic.into(),
            data: self.data()?,
            metadata: self.read_metadata(),
        })
    }
}

/// What an append did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendResult {
    /// The version of the last event of the append (the stream's new version).
    pub last_version: u64,
    /// The global position of the last event of the append.
    pub last_position: u64,
    /// False when every event was already there (an idempotent repeat).
    pub written: bool,
}
