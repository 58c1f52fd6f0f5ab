//! [`StoreError`].

use std::fmt;

use super::ExpectedVersion;
use crate::DriverError;
use crate::bus::BusError;
use crate::config::ConfigError;
use crate::keys::KeyError;
use crate::message::PayloadError;

/// Why a store operation failed. URLs and passwords never appear in these messages.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream was not at the expected version; nothing was written.
    #[error("stream {stream:?}: expected {expected}, but {}", match .actual { Some(v) => format!("its last version is {v}"), None => "it does not exist".to_owned() })]
    WrongExpectedVersion {
        /// The stream.
        stream: String,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's last version (None: no stream).
        actual: Option<u64>,
    },
    /// An event matching an [`AppendCondition`](super::AppendCondition)'s query is stored
    /// after the position the decision read; nothing was written (read again, decide
    /// again).
    #[error(
        "append to stream {stream:?} refused: event at position {position} ({event_type}) matches the condition's query and lies after {}; nothing was written",
        match .after { Some(p) => format!("position {p}"), None => "the start (the condition expected none)".to_owned() }
    )]
    WrongCondition {
        /// The stream appended to.
        stream: String,
        /// The condition's position (`None`: it expected no matching event at all).
        after: Option<u64>,
        /// The first matching event after it.
        position: u64,
        /// That event's type.
        event_type: String,
    },
    /// A decision reads events of `event_type` by tag `tag`, but events of that type
    /// were stored before the tag was declared and have no index entries yet: a query by
    /// the tag would miss them. Run `orkestra store reindex-tags` (or
    /// [`Store::reindex_tags`](super::Store::reindex_tags)).
    #[error(
        "tag {tag:?} of event type {event_type:?} is not indexed yet: events of that type were stored before the tag was declared, and a query by it would miss them; run `orkestra store reindex-tags` against this store"
    )]
    TagsNotIndexed {
        /// The event type.
        event_type: String,
        /// The tag key.
        tag: String,
    },
    /// The adapter cannot do this operation.
    #[error("the {adapter} store does not support {operation}; {hint}")]
    Unsupported {
        /// The adapter.
        adapter: &'static str,
        /// What was asked.
        operation: &'static str,
        /// What to use instead.
        hint: &'static str,
    },
    /// An event id already stored elsewhere (another stream or place).
    #[error("event {id} is already stored in stream {stream:?} at version {version}")]
    DuplicateEvent {
        /// The event id.
        id: String,
        /// Where it is.
        stream: String,
        /// Its version there.
        version: u64,
    },
    /// An event larger than the store accepts; nothing was written.
    #[error("event {id} is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// The event id.
        id: String,
        /// Its encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// An event whose message would be over the bus's limit, appended where the relay
    /// publishes (which could never publish it); nothing was written.
    #[error(
        "event {id} would be a message of about {size} bytes, over bus.max_message_bytes ({limit}); \
         the relay could never publish it, so it is not stored"
    )]
    TooLargeForBus {
        /// The event id.
        id: String,
        /// Its size as a message, estimated.
        size: usize,
        /// `bus.max_message_bytes`.
        limit: usize,
    },
    /// The request itself is invalid (an empty stream name, an empty append).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A stored event could not be decoded into the requested type.
    #[error("event at position {position}: {source}")]
    Decode {
        /// Its position.
        position: u64,
        /// Why.
        source: PayloadError,
    },
    /// An event of an aggregate's stream is not one of its events, or does not fit its
    /// type: the stream cannot be loaded until the schema (or an upcast) reads it.
    #[error("{aggregate} stream {stream:?}, version {version} (position {position}): {source}")]
    Unreadable {
        /// The aggregate.
        aggregate: &'static str,
        /// The stream.
        stream: String,
        /// The event's version in it.
        version: u64,
        /// Its global position.
        position: u64,
        /// Why (boxed: the variant stays small).
        source: Box<PayloadError>,
    },
    /// A stored row is not an Orkestra event (foreign or corrupted data).
    #[error("corrupt or foreign record at {location}: {message}")]
    Corrupt {
        /// Where (a position or row id).
        location: String,
        /// What is wrong.
        message: String,
    },
    /// A value could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(String),
    /// The database cannot be reached or opened.
    #[error("{adapter} store unavailable ({setting}): {message}")]
    Unavailable {
        /// The adapter.
        adapter: &'static str,
        /// The setting that pointed at it (`store.url`).
        setting: &'static str,
        /// Why, with secrets hidden.
        message: String,
        /// The driver's error, when there was one.
        #[source]
        source: Option<DriverError>,
    },
    /// The database failed.
    #[error("{adapter} store: {source}")]
    Backend {
        /// The adapter.
        adapter: &'static str,
        /// The driver's error (its text with secrets hidden).
        source: DriverError,
    },
    /// The configured adapter is not part of this build.
    #[error(
        "store.adapter = {adapter:?}: this build of orkestra-runtime lacks the `{feature}` feature"
    )]
    AdapterUnavailable {
        /// The adapter.
        adapter: &'static str,
        /// The cargo feature that builds it.
        feature: &'static str,
    },
    /// A write through a lease whose holding has ended: another copy holds the
    /// partition now (a newer fencing token); nothing was written.
    #[error(
        "partition {partition} of {worker:?} is held by another copy now (fencing token {token} is stale); nothing was written"
    )]
    Fenced {
        /// The worker.
        worker: String,
        /// The partition.
        partition: u32,
        /// The token the write carried.
        token: u64,
    },
    /// A worker started with another number of partitions than the store records for
    /// it: events were assigned to the old partitions, so the new count needs a rebuild.
    #[error(
        "{worker:?} has {stored} partitions in the store but {configured} are configured; changing the count needs a rebuild of {worker:?} (or keep partitions: {stored})"
    )]
    PartitionsChanged {
        /// The worker.
        worker: String,
        /// The count the store holds.
        stored: u32,
        /// The count this copy was started with.
        configured: u32,
    },
    /// Personal data for a forgotten subject: nothing was written.
    #[error(
        "{record}: subject {subject:?} is forgotten, so no personal data can be stored for it again; nothing was written"
    )]
    SubjectForgotten {
        /// The subject.
        subject: String,
        /// The event (id and type) or snapshot that carried it.
        record: String,
    },
    /// A personal field that does not decrypt: its stored value was changed, or copied
    /// from another subject or field. Never decoded as garbage.
    #[error(
        "stream {stream:?}, {}, field {field}: {message}",
        match .position { Some(p) => format!("position {p}"), None => "snapshot".to_owned() }
    )]
    PersonalData {
        /// The stream.
        stream: String,
        /// The event's global position (`None`: the stream's snapshot).
        position: Option<u64>,
        /// The field's path (`contacts[1].phone`).
        field: String,
        /// Why.
        message: String,
    },
    /// The key store failed.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Publishing after an append failed; the events are stored (at-least-once: retry
    /// the publish, handlers must tolerate a repeat).
    #[error("events stored, but publishing failed: {0}")]
    Publish(#[from] BusError),
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl StoreError {
    /// A driver error during an operation.
    #[cold]
    #[cfg(any(feature = "sqlite", feature = "postgres", feature = "eventstoredb"))]
    pub(crate) fn backend(adapter: &'static str, error: impl Into<BoxError>) -> Self {
        Self::Backend {
            adapter,
            source: DriverError::new(error),
        }
    }

    /// The store at `store.url` cannot be opened or reached: `context` says what was
    /// tried (never a password: pass a [`SecretUrl`](crate::SecretUrl) or a path).
    #[cold]
    pub(crate) fn unavailable(
        adapter: &'static str,
        context: impl fmt::Display,
        error: Option<BoxError>,
    ) -> Self {
        let source = error.map(DriverError::new);
        let message = match &source {
            Some(source) => format!("{context}: {source}"),
            None => context.to_string(),
        };
        Self::Unavailable {
            adapter,
            setting: "store.url",
            message,
            source,
        }
    }
}
