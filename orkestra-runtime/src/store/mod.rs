//! Event stores: one [`Store`] handle over several adapters.
//!
//! Streams hold events in version order (the first event of a stream is version 0);
//! every event also has a global position, and positions strictly increase in the order
//! readers see commits, so a subscriber that resumes from a saved position misses
//! nothing. Appends carry an [`ExpectedVersion`]; a stale one is refused with nothing
//! written, and re-appending the same event ids at the same place is a no-op.
//!
//! | adapter | feature | notes |
//! | --- | --- | --- |
//! | memory | always | gone with the process |
//! | sqlite | `sqlite` (default) | one file, WAL, `synchronous=FULL`, one writer thread with group commit |
//! | postgres | `postgres` | commit-ordered positions without a global lock; LISTEN/NOTIFY |
//! | eventstoredb | `eventstoredb` | the `kurrentdb` client |

#[cfg(feature = "eventstoredb")]
mod eventstoredb;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::Stream;
use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::sync::watch;

use crate::any_message::Message;
use crate::bus::{Bus, BusError};
use crate::config::{Config, ConfigError, StoreAdapter};
use crate::envelope::EventEnvelope;
use crate::message::{Event, Metadata, RawEvent};
use crate::payload::{EventPayload, PayloadError};

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
}

impl EventData {
    /// From a typed event.
    pub fn from_event<D: EventPayload>(event: &Event<D>) -> Result<Self, StoreError> {
        Ok(Self {
            id: event.id.clone(),
            event_type: D::TYPE_NAME.to_owned(),
            schema_version: D::VERSION,
            data: serde_json::to_value(&event.data)
                .map_err(|e| StoreError::Encode(e.to_string()))?,
            metadata: event.metadata.clone(),
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
    fn encode(self) -> Result<Encoded, StoreError> {
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
    fn size(&self) -> usize {
        self.data.len() + self.metadata.len() + self.event.event_type.len() + self.event.id.len()
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
    /// When the store recorded it.
    pub fn recorded_at(&self) -> DateTime<Utc> {
        self.recorded_at
    }

    /// The typed event, with its metadata. A recorded event of another type is
    /// [`StoreError::Decode`] with [`PayloadError::WrongType`]; data that does not fit the
    /// type's shape (a missing field, a wrong type, an unknown field) is
    /// [`StoreError::Decode`] too.
    ///
    /// Decoding checks the shape, not the rules (`min`, `pattern`, custom validation):
    /// a stored event is a fact, checked when it was appended, and a rule tightened since
    /// must not make history unreadable.
    pub fn decode<D: EventPayload>(&self) -> Result<Event<D>, StoreError> {
        if &*self.event_type != D::TYPE_NAME {
            return Err(StoreError::Decode {
                position: self.position,
                source: PayloadError::WrongType {
                    expected: D::TYPE_NAME,
                    found: self.event_type.to_string(),
                },
            });
        }
        let data = serde_json::from_str(&self.data).map_err(|e| StoreError::Decode {
            position: self.position,
            source: PayloadError::InvalidParams(vec![crate::payload::ParamError::new(
                "data",
                "invalid_type",
                e.to_string(),
            )]),
        })?;
        Ok(Event {
            id: self.id.clone(),
            data,
            metadata: self.metadata.clone(),
        })
    }

    /// The event as JSON, with the topic it would be published on.
    pub fn to_raw(&self, topic: impl Into<String>) -> Result<RawEvent, StoreError> {
        Ok(RawEvent {
            id: self.id.clone(),
            event_type: self.event_type.to_string(),
            version: self.schema_version,
            topic: topic.into(),
            data: self.data()?,
            metadata: self.metadata.clone(),
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

/// Why a store operation failed. URLs and passwords never appear in these messages.
#[derive(Debug, thiserror::Error)]
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
    },
    /// The database failed.
    #[error("{adapter} store: {message}")]
    Backend {
        /// The adapter.
        adapter: &'static str,
        /// What failed, with secrets hidden.
        message: String,
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
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Publishing after an append failed; the events are stored (at-least-once: retry
    /// the publish, handlers must tolerate a repeat).
    #[error("events stored, but publishing failed: {0}")]
    Publish(#[from] BusError),
}

/// Direction of a stream read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Forwards,
    Backwards,
}

/// What each adapter implements. Futures are boxed: store calls do I/O, and a box is
/// noise next to it.
pub(crate) trait Backend: Send + Sync + fmt::Debug + 'static {
    fn name(&self) -> &'static str;
    fn append<'a>(
        &'a self,
        stream: &'a str,
        expected: ExpectedVersion,
        events: Vec<Encoded>,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>>;
    fn read_stream<'a>(
        &'a self,
        stream: &'a str,
        from_version: u64,
        max: usize,
        direction: Direction,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>>;
    fn read_all(
        &self,
        from_position: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<RecordedEvent>, StoreError>>;
    /// A counter bumped after every commit, for live subscriptions.
    fn changes(&self) -> watch::Receiver<u64>;
    /// How often a live subscription re-reads even without a change notice (adapters
    /// whose notices can be missed or delayed).
    fn poll_interval(&self) -> Option<Duration> {
        None
    }
}

/// A handle to an event store. Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    max_event_bytes: usize,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("adapter", &self.backend.name())
            .finish_non_exhaustive()
    }
}

/// A live subscription to every event: catch-up from a position, then new events as
/// they commit, in position order, with no gap and no repeat.
pub struct AllSubscription {
    inner: Pin<Box<dyn Stream<Item = Result<RecordedEvent, StoreError>> + Send>>,
}

impl fmt::Debug for AllSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllSubscription").finish_non_exhaustive()
    }
}

impl Stream for AllSubscription {
    type Item = Result<RecordedEvent, StoreError>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// How many events a subscription reads per query.
const SUBSCRIPTION_BATCH: usize = 512;

impl Store {
    fn new(backend: Arc<dyn Backend>) -> Self {
        Self {
            backend,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
        }
    }

    /// An in-memory store.
    pub fn memory() -> Self {
        Self::new(Arc::new(memory::MemoryStore::new()))
    }

    /// The embedded single-file store at `path` (created if missing).
    #[cfg(feature = "sqlite")]
    pub async fn sqlite(path: impl AsRef<std::path::Path>) -> Result<Self, StoreError> {
        Ok(Self::new(Arc::new(
            sqlite::SqliteStore::open(path.as_ref()).await?,
        )))
    }

    /// A PostgreSQL store (the schema is created on first use).
    #[cfg(feature = "postgres")]
    pub async fn postgres(url: &crate::config::SecretUrl) -> Result<Self, StoreError> {
        Ok(Self::new(Arc::new(
            postgres::PostgresStore::connect(url).await?,
        )))
    }

    /// An EventStoreDB / KurrentDB store.
    #[cfg(feature = "eventstoredb")]
    pub async fn eventstoredb(url: &crate::config::SecretUrl) -> Result<Self, StoreError> {
        Ok(Self::new(Arc::new(
            eventstoredb::EsdbStore::connect(url).await?,
        )))
    }

    /// The store chosen by `config.store`.
    pub async fn from_config(config: &Config) -> Result<Self, StoreError> {
        let url = config.store.url.as_ref();
        match config.store.adapter {
            StoreAdapter::Memory => Ok(Self::memory()),
            #[cfg(feature = "sqlite")]
            StoreAdapter::Sqlite => {
                let path = url.map_or(crate::config::DEFAULT_SQLITE_PATH, |u| u.expose());
                Self::sqlite(path).await
            }
            #[cfg(feature = "postgres")]
            StoreAdapter::Postgres => match url {
                Some(url) => Self::postgres(url).await,
                None => Err(missing_url("postgres")),
            },
            #[cfg(feature = "eventstoredb")]
            StoreAdapter::EventStoreDb => match url {
                Some(url) => Self::eventstoredb(url).await,
                None => Err(missing_url("eventstoredb")),
            },
            #[allow(unreachable_patterns)]
            other => Err(StoreError::AdapterUnavailable {
                adapter: other.name(),
                feature: other.name(),
            }),
        }
    }

    /// Sets the largest event accepted (data plus metadata as JSON).
    #[must_use]
    pub fn with_max_event_bytes(mut self, limit: usize) -> Self {
        self.max_event_bytes = limit;
        self
    }

    /// The adapter's name.
    pub fn adapter(&self) -> &'static str {
        self.backend.name()
    }

    /// Appends events to a stream if it is at the expected version, all or nothing.
    pub async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        if stream.is_empty() {
            return Err(StoreError::Invalid("the stream name is empty".into()));
        }
        if events.is_empty() {
            return Err(StoreError::Invalid(
                "an append needs at least one event".into(),
            ));
        }
        let mut encoded = Vec::with_capacity(events.len());
        for e in events {
            if e.id.is_empty() || e.event_type.is_empty() {
                return Err(StoreError::Invalid(
                    "an event needs an id and a type".into(),
                ));
            }
            let e = e.encode()?;
            let size = e.size();
            if size > self.max_event_bytes {
                return Err(StoreError::TooLarge {
                    id: e.event.id,
                    size,
                    limit: self.max_event_bytes,
                });
            }
            encoded.push(e);
        }
        self.backend.append(stream, expected, encoded).await
    }

    /// Up to `max` events of a stream from `from_version` on, oldest first.
    pub async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.backend
            .read_stream(stream, from_version, max, Direction::Forwards)
            .await
    }

    /// Up to `max` events of a stream from `from_version` down, newest first
    /// (`u64::MAX` starts at the end).
    pub async fn read_stream_backwards(
        &self,
        stream: &str,
        from_version: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.backend
            .read_stream(stream, from_version, max, Direction::Backwards)
            .await
    }

    /// Up to `max` events in global order, from position `from_position` (inclusive).
    pub async fn read_all(
        &self,
        from_position: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.backend.read_all(from_position, max).await
    }

    /// Every event from `from_position` (inclusive): those stored, then new ones live.
    /// Resume after a restart from the last position handled plus one.
    pub async fn subscribe_all(&self, from_position: u64) -> Result<AllSubscription, StoreError> {
        let backend = self.backend.clone();
        let changes = backend.changes();
        let poll = backend.poll_interval();
        let state = (
            backend,
            changes,
            poll,
            from_position,
            VecDeque::new(),
            false,
        );
        let stream = futures_util::stream::unfold(
            state,
            |(backend, mut changes, poll, mut next, mut buffer, failed)| async move {
                if failed {
                    return None;
                }
                loop {
                    if let Some(event) = buffer.pop_front() {
                        return Some((Ok(event), (backend, changes, poll, next, buffer, false)));
                    }
                    // Mark the current change as seen before reading, so a commit that lands
                    // after the read still wakes us.
                    changes.borrow_and_update();
                    match backend.read_all(next, SUBSCRIPTION_BATCH).await {
                        Ok(batch) if !batch.is_empty() => {
                            next = batch.last().map_or(next, |e| e.position + 1);
                            buffer.extend(batch);
                        }
                        Ok(_) => {
                            let changed = changes.changed();
                            match poll {
                                Some(interval) => {
                                    let _ = tokio::time::timeout(interval, changed).await;
                                }
                                None => {
                                    if changed.await.is_err() {
                                        return None;
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            return Some((Err(e), (backend, changes, poll, next, buffer, true)));
                        }
                    }
                }
            },
        );
        Ok(AllSubscription {
            inner: Box::pin(stream),
        })
    }

    /// Appends `events` to `stream`, then publishes them on `bus`, in that order: an event
    /// is published only once stored. If publishing fails the events stay stored and the
    /// error is [`StoreError::Publish`]; publish them again (delivery is at-least-once, so
    /// handlers must tolerate a repeat). A command handler calls this with `ctx.bus()`.
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
        for envelope in events {
            bus.publish(envelope).await?;
        }
        Ok(result)
    }
}

#[cfg_attr(
    not(any(feature = "postgres", feature = "eventstoredb")),
    allow(dead_code)
)]
fn missing_url(adapter: &'static str) -> StoreError {
    StoreError::Unavailable {
        adapter,
        setting: "store.url",
        message: "no URL configured".into(),
    }
}

/// Checks an append against the stream's current last version and the ids already
/// stored, for adapters that hold both in hand. Returns `Some(result)` when the append
/// is an idempotent repeat (every id already stored, in order, right after the expected
/// version), `None` when it should be written.
pub(crate) fn check_append(
    stream: &str,
    expected: ExpectedVersion,
    current: Option<u64>,
    events: &[Encoded],
    stored: &[(String, String, u64, u64)], // (id, stream, version, position) of ids already stored
) -> Result<Option<AppendResult>, StoreError> {
    if !stored.is_empty() {
        let first_version = match expected {
            ExpectedVersion::NoStream => Some(0),
            ExpectedVersion::Exact(v) => Some(v + 1),
            _ => None,
        };
        let find = |id: &str| stored.iter().find(|(i, ..)| i == id);
        let all_here = events
            .iter()
            .enumerate()
            .all(|(i, e)| match find(&e.event.id) {
                Some((_, s, version, _)) => {
                    s == stream
                        && match first_version {
                            Some(first) => *version == first + i as u64,
                            None => find(&events[0].event.id)
                                .is_some_and(|(_, _, v0, _)| *version == v0 + i as u64),
                        }
                }
                None => false,
            });
        if all_here {
            let (_, _, version, position) = find(&events[events.len() - 1].event.id)
                .cloned()
                .unwrap_or_default();
            return Ok(Some(AppendResult {
                last_version: version,
                last_position: position,
                written: false,
            }));
        }
        if let Some((id, s, version, _)) = stored.first() {
            return Err(StoreError::DuplicateEvent {
                id: id.clone(),
                stream: s.clone(),
                version: *version,
            });
        }
    }
    if !expected.accepts(current) {
        return Err(StoreError::WrongExpectedVersion {
            stream: stream.to_owned(),
            expected,
            actual: current,
        });
    }
    Ok(None)
}
