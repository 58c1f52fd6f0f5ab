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
//!
//! Events may carry [`Tag`]s, which memory, SQLite and PostgreSQL index at append time:
//! [`Store::read_query`] and [`Store::append_if`] make decisions across streams (see
//! [`Query`]; EventStoreDB refuses them). [`Store::ensure_tags_indexed`] records the tags a
//! decision reads and refuses while older events lack entries;
//! [`Store::reindex_tags`] builds them (see [`tag_index`]).
//!
//! Stored events never change, with one exception: [`Store::encrypt_personal`] seals, in
//! place, personal fields that events stored before the fields were declared personal
//! hold in plain text (see [`encrypt`]).

mod backend;
pub mod encrypt;
mod error;
mod event;
#[cfg(feature = "eventstoredb")]
mod eventstoredb;
pub(crate) mod lease;
mod memory;
mod personal;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
mod query;
mod snapshot;
#[cfg(feature = "sqlite")]
mod sqlite;
mod subscription;
pub mod tag_index;

use std::fmt;
use std::sync::Arc;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) use backend::sql_int;
pub(crate) use backend::{Backend, Backlog, Direction, StoredId, check_append, next_version};
pub use encrypt::{
    ENCRYPT_PERSONAL_COMMAND, EncryptOptions, EncryptProgress, EncryptReport, UnsealedEvent,
};
pub use error::StoreError;
pub(crate) use event::Encoded;
pub use event::{
    AppendResult, DEFAULT_MAX_EVENT_BYTES, EventData, ExpectedVersion, INTERNAL_TYPE_PREFIX,
    RecordedEvent,
};
pub use lease::{Lease, LeaseRecord, Leases, MAX_PARTITIONS, default_owner};
pub use personal::{FORGOTTEN_STREAM, Forgotten, SUBJECT_FORGOTTEN};
pub(crate) use query::Conflict;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) use query::matching_positions;
pub use query::{AppendCondition, Query, QueryItem, Tag};
pub use snapshot::Snapshot;
pub use subscription::AllSubscription;
pub use tag_index::{
    DeclaredTag, REINDEX_COMMAND, ReindexReport, ReindexedPair, SkipReason, SkippedEvent,
};

use crate::config::{Config, PublishMode, StoreAdapter};

/// A handle to an event store. Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    max_event_bytes: usize,
    publish: PublishMode,
    /// The bus's largest message, checked at append when the relay publishes.
    bus_message_limit: Option<usize>,
    /// `[runners] lease`: how long the workers over this store hold their partitions.
    runner_lease: Option<std::time::Duration>,
    /// The (event type, tag key) pairs found indexed: an indexed pair stays indexed (see
    /// [`tag_index`]), so each is asked of the store once per handle.
    indexed_tags: Arc<std::sync::Mutex<IndexedTags>>,
    /// Personal data: the key store and what to encrypt (`personal.rs`).
    personal: personal::Personal,
}

/// The pairs a [`Store`] handle found indexed: tag keys by event type (looked up
/// without allocating, on every decision).
type IndexedTags = std::collections::HashMap<String, std::collections::HashSet<String>>;

/// What a published message adds to an event's stored size (the envelope's keys, kind
/// and version, the trace context), counted against the bus's limit at append.
const WIRE_OVERHEAD: usize = 256;

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("adapter", &self.backend.name())
            .finish_non_exhaustive()
    }
}

impl Store {
    fn new(backend: Arc<dyn Backend>) -> Self {
        Self {
            backend,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            publish: PublishMode::Direct,
            bus_message_limit: None,
            runner_lease: None,
            indexed_tags: Arc::default(),
            personal: personal::Personal::default(),
        }
    }

    /// With the adapter's own key store (see [`keys`](crate::keys)).
    fn with_key_store(mut self, keys: Arc<dyn crate::keys::KeyStore>) -> Self {
        self.personal = personal::Personal::with_key_store(keys);
        self
    }

    /// An in-memory store (its keys in a [`MemoryKeyStore`](crate::keys::MemoryKeyStore)).
    pub fn memory() -> Self {
        Self::new(Arc::new(memory::MemoryStore::new()))
            .with_key_store(Arc::new(crate::keys::MemoryKeyStore::new()))
    }

    /// The embedded single-file store at `path` (created if missing), its keys in the
    /// same file ([`SqliteKeyStore`](crate::keys::SqliteKeyStore)).
    #[cfg(feature = "sqlite")]
    pub async fn sqlite(path: impl AsRef<std::path::Path>) -> Result<Self, StoreError> {
        let store = Self::new(Arc::new(sqlite::SqliteStore::open(path.as_ref()).await?));
        let keys = crate::keys::SqliteKeyStore::open(path).await?;
        Ok(store.with_key_store(Arc::new(keys)))
    }

    /// A PostgreSQL store (the schema is created on first use), with the default pool
    /// (16 connections, waits give up after 30 s).
    #[cfg(feature = "postgres")]
    pub async fn postgres(url: &crate::config::SecretUrl) -> Result<Self, StoreError> {
        Self::postgres_with(url, &crate::config::StoreConfig::default()).await
    }

    /// A PostgreSQL store whose pool follows `settings.pool_size` and
    /// `settings.pool_timeout_ms` (the URL is `url`, not `settings.url`); its keys are in
    /// the same database ([`PostgresKeyStore`](crate::keys::PostgresKeyStore)).
    #[cfg(feature = "postgres")]
    pub async fn postgres_with(
        url: &crate::config::SecretUrl,
        settings: &crate::config::StoreConfig,
    ) -> Result<Self, StoreError> {
        let store = Self::new(Arc::new(
            postgres::PostgresStore::connect(url, settings).await?,
        ));
        let keys = crate::keys::PostgresKeyStore::connect(url).await?;
        Ok(store.with_key_store(Arc::new(keys)))
    }

    /// An EventStoreDB / KurrentDB store.
    #[cfg(feature = "eventstoredb")]
    pub async fn eventstoredb(url: &crate::config::SecretUrl) -> Result<Self, StoreError> {
        Ok(Self::new(Arc::new(
            eventstoredb::EsdbStore::connect(url).await?,
        )))
    }

    /// The store chosen by `config.store`.
    /// With `store.publish = "relay"` and the RabbitMQ bus, an event the bus would
    /// refuse (over `bus.max_message_bytes`) is refused at append
    /// ([`StoreError::TooLargeForBus`]).
    pub async fn from_config(config: &Config) -> Result<Self, StoreError> {
        let store = Self::from_config_adapter(config)
            .await?
            .with_publish(config.store.publish)
            .with_runner_lease(config.runners.lease);
        Ok(match config.bus.adapter {
            crate::config::BusAdapter::RabbitMq => {
                store.with_bus_message_limit(config.bus.max_message_bytes)
            }
            _ => store,
        })
    }

    /// The largest message the bus takes (`bus.max_message_bytes`): with
    /// [`PublishMode::Relay`], an append holding an event whose message would be larger
    /// is refused ([`StoreError::TooLargeForBus`]), since the relay could never publish
    /// it. [`from_config`](Self::from_config) sets it for the RabbitMQ bus.
    #[must_use]
    pub fn with_bus_message_limit(mut self, limit: usize) -> Self {
        self.bus_message_limit = Some(limit);
        self
    }

    async fn from_config_adapter(config: &Config) -> Result<Self, StoreError> {
        #[cfg_attr(
            not(any(feature = "sqlite", feature = "postgres", feature = "eventstoredb")),
            allow(unused_variables)
        )]
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
                Some(url) => Self::postgres_with(url, &config.store).await,
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

    /// Who publishes what this store appends (`store.publish`): with
    /// [`PublishMode::Relay`], `append_and_publish` and the aggregate handlers only
    /// append, and a `Relay` publishes.
    #[must_use]
    pub fn with_publish(mut self, mode: PublishMode) -> Self {
        self.publish = mode;
        self
    }

    /// How long the workers over this store (projections, the relay, process managers)
    /// hold each partition's lease unless they are given one
    /// (`Projections::with_lease` and the like):
    /// `[runners] lease`, which [`from_config`](Self::from_config) sets.
    #[must_use]
    pub fn with_runner_lease(mut self, lease: std::time::Duration) -> Self {
        self.runner_lease = Some(lease);
        self
    }

    /// The lease the workers over this store hold partitions by, unless given their own.
    pub fn runner_lease(&self) -> std::time::Duration {
        self.runner_lease.unwrap_or(crate::config::DEFAULT_LEASE)
    }

    /// Who publishes what this store appends.
    pub fn publish_mode(&self) -> PublishMode {
        self.publish
    }

    /// Whether `other` is a clone of this handle (the same connection pool or file).
    pub fn same_as(&self, other: &Store) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.backend), Arc::as_ptr(&other.backend))
    }

    /// Whether the store answers now, for a readiness check: it reads the head within
    /// `timeout`; the error (secrets hidden) otherwise.
    pub async fn readiness(&self, timeout: std::time::Duration) -> Result<(), String> {
        match tokio::time::timeout(timeout, self.head()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:.1} s", timeout.as_secs_f64())),
        }
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
        mut events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        self.protect(&mut events).await?;
        let encoded = self.encode(stream, events)?;
        let started = crate::metrics::current().map(|_| crate::metrics::now());
        let appended = self.backend.append(stream, expected, encoded).await;
        if let Some(started) = started {
            crate::metrics::append_took(self.backend.name(), started);
        }
        appended
    }

    /// Appends events to a stream if it is at the expected version and no event matching
    /// `condition.fail_if_events_match` is stored after `condition.after`, all or
    /// nothing: a decision across streams (dcb.events). A matching event is
    /// [`StoreError::WrongCondition`] (read again with [`read_query`](Self::read_query)
    /// and decide again); the expected version is checked as by [`append`](Self::append),
    /// and re-appending the same event ids at the same place is a no-op even when the
    /// condition no longer holds (those events are what broke it).
    ///
    /// A condition without items, or with an item naming neither types nor tags, is
    /// refused: it would lock every event. Memory, SQLite and PostgreSQL hold the
    /// condition under concurrency; EventStoreDB returns [`StoreError::Unsupported`].
    pub async fn append_if(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        mut events: Vec<EventData>,
        condition: AppendCondition,
    ) -> Result<AppendResult, StoreError> {
        condition.fail_if_events_match.check_condition(stream)?;
        self.protect(&mut events).await?;
        let encoded = self.encode(stream, events)?;
        let started = crate::metrics::current().map(|_| crate::metrics::now());
        let appended = self
            .backend
            .append_if(stream, expected, encoded, &condition)
            .await;
        if let Some(started) = started {
            crate::metrics::append_took(self.backend.name(), started);
        }
        appended
    }

    /// Up to `max` events matching `query`, in global order from position `from`
    /// (inclusive): what a decision reads. A query without items matches nothing. On
    /// PostgreSQL it sees what [`read_all`](Self::read_all) sees (events whose commit
    /// every older transaction has ended), so the position of the last event read is a
    /// sound [`AppendCondition::after`]. EventStoreDB returns [`StoreError::Unsupported`].
    pub async fn read_query(
        &self,
        query: &Query,
        from: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if max == 0 || query.is_empty() {
            return Ok(Vec::new());
        }
        let mut events = self.backend.read_query(query, from, max).await?;
        self.reveal(&mut events).await?;
        Ok(events)
    }

    /// Declares the (event type, tag key) pairs a decision reads (see [`tag_index`]) and
    /// checks that each is indexed: every stored event of the type carries the key in
    /// the tag index. A pair first declared while no stored event of its type lacks the
    /// key is indexed at once; from its declaration on, appends of the type take the tag
    /// from the event's field of that name when they lack it. Otherwise
    /// [`StoreError::TagsNotIndexed`] names the first pair that is not, and the command
    /// to run (`orkestra store reindex-tags`, which calls
    /// [`reindex_tags`](Self::reindex_tags)). Positive answers are cached by this handle
    /// and its clones. EventStoreDB returns [`StoreError::Unsupported`].
    pub async fn ensure_tags_indexed(&self, pairs: &[(&str, &str)]) -> Result<(), StoreError> {
        tag_index::check_pairs(pairs)?;
        let unknown: Vec<(&str, &str)> = {
            let known = crate::sync::lock(&self.indexed_tags);
            let mut unknown: Vec<(&str, &str)> = Vec::new();
            for &(t, k) in pairs {
                let indexed = known.get(t).is_some_and(|keys| keys.contains(k));
                if !indexed && !unknown.contains(&(t, k)) {
                    unknown.push((t, k));
                }
            }
            unknown
        };
        if unknown.is_empty() {
            return Ok(());
        }
        let indexed = self.backend.declare_tags(&unknown).await?;
        let mut first_pending = None;
        {
            let mut known = crate::sync::lock(&self.indexed_tags);
            for (&(t, k), ok) in unknown.iter().zip(indexed) {
                if ok {
                    known.entry(t.to_owned()).or_default().insert(k.to_owned());
                } else if first_pending.is_none() {
                    first_pending = Some((t, k));
                }
            }
        }
        match first_pending {
            Some((event_type, tag)) => Err(StoreError::TagsNotIndexed {
                event_type: event_type.to_owned(),
                tag: tag.to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// Every declared (event type, tag key) pair and whether it is indexed (what
    /// `orkestra store tags` lists).
    pub async fn declared_tags(&self) -> Result<Vec<DeclaredTag>, StoreError> {
        self.backend.declared_tags().await
    }

    /// Builds the index entries of every declared pair that is not indexed yet: reads the
    /// events of its type (in batches of 1,000, each written in one transaction with the
    /// pair's cursor, so a stopped run resumes where it was), gives each the tag from its
    /// field of the same name (a missing or non-text field: reported in
    /// [`ReindexReport::skipped`], no entry), then marks the pair indexed. Idempotent
    /// (entries already there are kept), and safe while the service appends (appends of
    /// a declared type write their own entries). `progress(done, total)` is called after
    /// each batch with the events read so far and the events to read.
    pub async fn reindex_tags(
        &self,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<ReindexReport, StoreError> {
        let pending: Vec<DeclaredTag> = self
            .backend
            .declared_tags()
            .await?
            .into_iter()
            .filter(|d| !d.indexed)
            .collect();
        let mut total = 0u64;
        for pair in &pending {
            total += self
                .backend
                .count_of_type(&pair.event_type, pair.reindexed_to)
                .await?;
        }
        progress(0, total);
        let mut report = ReindexReport::default();
        let mut done = 0u64;
        for pair in pending {
            let mut summary = ReindexedPair {
                event_type: pair.event_type.clone(),
                tag: pair.tag.clone(),
                ..ReindexedPair::default()
            };
            loop {
                let batch = self
                    .backend
                    .reindex_batch(&pair.event_type, &pair.tag, tag_index::REINDEX_BATCH)
                    .await?;
                summary.events += batch.events;
                summary.written += batch.written;
                summary.skipped += batch.skipped.len() as u64;
                let room = tag_index::REPORTED_SKIPS.saturating_sub(report.skipped.len());
                report.skipped.extend(batch.skipped.into_iter().take(room));
                done += batch.events;
                // Events appended meanwhile may make it more than counted at the start.
                total = total.max(done);
                progress(done, total);
                if batch.done {
                    break;
                }
            }
            crate::sync::lock(&self.indexed_tags)
                .entry(pair.event_type)
                .or_default()
                .insert(pair.tag);
            report.pairs.push(summary);
        }
        Ok(report)
    }

    /// Checks and encodes the events of an append.
    fn encode(&self, stream: &str, events: Vec<EventData>) -> Result<Vec<Encoded>, StoreError> {
        if stream.is_empty() {
            return Err(StoreError::Invalid("the stream name is empty".into()));
        }
        if events.is_empty() {
            return Err(StoreError::Invalid(
                "an append needs at least one event".into(),
            ));
        }
        let mut encoded = Vec::with_capacity(events.len());
        // Where the events were produced (a command's handle span), so the relay's
        // publish continues that trace.
        let here = crate::trace::producing();
        for mut e in events {
            if e.id.is_empty() || e.event_type.is_empty() {
                return Err(StoreError::Invalid(
                    "an event needs an id and a type".into(),
                ));
            }
            if e.metadata.trace_context.is_none() {
                e.metadata.trace_context.clone_from(&here);
            }
            // Each tag once (the field is public; `with_tags` already dedups).
            if e.tags.len() > 1 {
                let mut i = 1;
                while i < e.tags.len() {
                    if e.tags[..i].contains(&e.tags[i]) {
                        e.tags.remove(i);
                    } else {
                        i += 1;
                    }
                }
            }
            let topic_len = e.topic.as_ref().map_or(0, String::len);
            let e = e.encode()?;
            let size = e.size();
            if size > self.max_event_bytes {
                return Err(StoreError::TooLarge {
                    id: e.event.id,
                    size,
                    limit: self.max_event_bytes,
                });
            }
            // The relay could never publish it: refuse it now, not at publish time.
            if self.publish == PublishMode::Relay
                && let Some(limit) = self.bus_message_limit
                && size + topic_len + WIRE_OVERHEAD > limit
            {
                return Err(StoreError::TooLargeForBus {
                    id: e.event.id,
                    size: size + topic_len + WIRE_OVERHEAD,
                    limit,
                });
            }
            encoded.push(e);
        }
        Ok(encoded)
    }

    /// Up to `max` events of a stream from `from_version` on, oldest first.
    pub async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut events = self
            .backend
            .read_stream(stream, from_version, max, Direction::Forwards)
            .await?;
        self.reveal(&mut events).await?;
        Ok(events)
    }

    /// Up to `max` events of a stream from `from_version` down, newest first
    /// (`u64::MAX` starts at the end).
    pub async fn read_stream_backwards(
        &self,
        stream: &str,
        from_version: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut events = self
            .backend
            .read_stream(stream, from_version, max, Direction::Backwards)
            .await?;
        self.reveal(&mut events).await?;
        Ok(events)
    }

    /// Up to `max` events in global order, from position `from_position` (inclusive).
    pub async fn read_all(
        &self,
        from_position: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut events = self.backend.read_all(from_position, max).await?;
        self.reveal(&mut events).await?;
        Ok(events)
    }

    /// Saves a snapshot of a stream's fold. The store keeps the newest per stream: an
    /// older version of the same shape than the one kept is ignored. See [`Snapshot`].
    /// A state with personal data declared ([`PersonalState`](crate::keys::PersonalState))
    /// is stored with those fields encrypted.
    pub async fn save_snapshot(&self, mut snapshot: Snapshot) -> Result<(), StoreError> {
        if snapshot.stream.is_empty() {
            return Err(StoreError::Invalid("the stream name is empty".into()));
        }
        self.protect_snapshot(&mut snapshot).await?;
        self.backend.save_snapshot(snapshot).await
    }

    /// The snapshot kept for `stream`, if any; none once a subject of its state was
    /// forgotten (the reader folds the events, which read with replacements).
    pub async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        match self.backend.load_snapshot(stream).await? {
            Some(snapshot) => self.reveal_snapshot(snapshot).await,
            None => Ok(None),
        }
    }

    /// The version at which `stream` holds the event `id` (`None`: it holds none). An
    /// index lookup on memory, SQLite and PostgreSQL; EventStoreDB, which cannot look an
    /// event up by id, reads the stream.
    pub async fn version_of(&self, stream: &str, id: &str) -> Result<Option<u64>, StoreError> {
        self.backend.version_of(stream, id).await
    }

    /// The global position of the last event a reader can see (what
    /// [`read_all`](Self::read_all) and [`subscribe_all`](Self::subscribe_all) reach),
    /// `None` for an empty store.
    pub async fn head(&self) -> Result<Option<u64>, StoreError> {
        self.backend.head().await
    }

    /// The global position of the last event committed: on PostgreSQL it may be past
    /// [`head`](Self::head) while an older transaction is still open (the global order
    /// shows a commit once every older one has ended); elsewhere it is the head.
    pub(crate) async fn recorded_head(&self) -> Result<Option<u64>, StoreError> {
        self.backend.recorded_head().await
    }

    /// The checkpoint saved under `name`: the global position of the last event its
    /// owner (a projection, the relay) has handled; `None` when it has handled none.
    ///
    /// Checkpoints live beside the events: `orkestra_checkpoints` on SQLite and
    /// PostgreSQL, an `orkestra.checkpoint-<name>` stream on EventStoreDB, memory for memory.
    pub async fn load_checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        check_checkpoint_name(name)?;
        self.backend.load_checkpoint(name).await
    }

    /// Saves the checkpoint `name` (`None` clears it: the owner starts over).
    pub async fn save_checkpoint(
        &self,
        name: &str,
        position: Option<u64>,
    ) -> Result<(), StoreError> {
        check_checkpoint_name(name)?;
        self.backend.save_checkpoint(name, position).await
    }

    /// Whether the store keeps leases (every adapter but EventStoreDB): workers over a
    /// store without them run whole in each copy, checkpointed by name.
    pub fn keeps_leases(&self) -> bool {
        self.backend.leases().is_some()
    }

    /// The leases of this store: what the workers of several copies of a service hold
    /// their partitions by (see [`Leases`]). EventStoreDB keeps none yet: an error.
    pub async fn leases(&self) -> Result<Leases, StoreError> {
        match self.backend.leases() {
            Some(backend) => Ok(Leases::new(backend)),
            None => Err(StoreError::Invalid(format!(
                "the {} store keeps no leases; run workers on memory, SQLite or PostgreSQL",
                self.backend.name()
            ))),
        }
    }

    /// The events after position `after` up to `until`, and when the first of them was
    /// recorded (a projection's lag).
    pub(crate) async fn backlog(
        &self,
        after: Option<u64>,
        until: u64,
    ) -> Result<Backlog, StoreError> {
        self.backend.backlog(after, until).await
    }

    /// The target of the rebuild under way for checkpoint `name` (the head when it
    /// began), kept with the checkpoint so a restart mid-rebuild still replays.
    pub(crate) async fn load_replay_until(&self, name: &str) -> Result<Option<u64>, StoreError> {
        check_checkpoint_name(name)?;
        self.backend.load_replay_until(name).await
    }

    /// Saves checkpoint `name` with its rebuild target (`None`: no rebuild under way).
    pub(crate) async fn save_replay(
        &self,
        name: &str,
        position: Option<u64>,
        until: Option<u64>,
    ) -> Result<(), StoreError> {
        check_checkpoint_name(name)?;
        self.backend.save_replay(name, position, until).await
    }

    /// A counter bumped after every commit this process sees.
    pub(crate) fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.backend.changes()
    }

    /// How often a live reader should look again without a notice.
    pub(crate) fn poll_interval(&self) -> Option<std::time::Duration> {
        self.backend.poll_interval()
    }

    /// The PostgreSQL adapter, when this store is one.
    #[cfg(feature = "postgres")]
    pub(crate) fn as_postgres(&self) -> Option<&postgres::PostgresStore> {
        self.backend.as_postgres()
    }
}

fn check_checkpoint_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() {
        return Err(StoreError::Invalid("the checkpoint name is empty".into()));
    }
    Ok(())
}

impl Store {
    /// The store's key cache and personal data, shared, for a bus that seals what it
    /// carries (`Bus::with_keys`); `None` when the store keeps no keys.
    pub(crate) fn sealer(&self) -> Option<crate::keys::Sealer> {
        let keys = self.personal.keys.clone()?;
        let fields = self.personal.fields.clone().unwrap_or_default();
        Some(crate::keys::Sealer::new(keys, fields))
    }
}

/// `bus.with_inbox(&store)`: the store's own inbox (SQLite, PostgreSQL); for an adapter
/// without one (memory, EventStoreDB) the default bounded memory inbox, with a warning.
impl From<&Store> for crate::handler::Inbox {
    fn from(store: &Store) -> Self {
        match store.backend.inbox() {
            Some(backend) => Self::new(backend),
            None => {
                if store.adapter() != "memory" {
                    tracing::warn!(
                        adapter = store.adapter(),
                        "this store keeps no inbox; once: true handlers remember handled messages in memory"
                    );
                }
                Self::default()
            }
        }
    }
}

#[cfg_attr(
    not(any(feature = "postgres", feature = "eventstoredb")),
    allow(dead_code)
)]
fn missing_url(adapter: &'static str) -> StoreError {
    StoreError::unavailable(adapter, "no URL configured", None)
}
