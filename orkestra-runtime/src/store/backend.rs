//! What each adapter implements ([`Backend`]), and the append check adapters that hold
//! a stream's state in hand share.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::encrypt::DataRewrite;
use super::tag_index::{DeclaredTag, ReindexBatch};
use super::{
    AppendCondition, AppendResult, Encoded, ExpectedVersion, Query, RecordedEvent, Snapshot,
    StoreError,
};

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
    /// An append on a condition (checked non-empty by the caller). This default refuses:
    /// the adapter cannot hold a condition across streams.
    fn append_if<'a>(
        &'a self,
        _stream: &'a str,
        _expected: ExpectedVersion,
        _events: Vec<Encoded>,
        _condition: &'a AppendCondition,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        Box::pin(std::future::ready(Err(self.no_dcb("append_if"))))
    }
    /// Up to `max` events matching `query` (not empty), in global order from `from`.
    /// This default refuses, as [`append_if`](Self::append_if) does.
    fn read_query<'a>(
        &'a self,
        _query: &'a Query,
        _from: u64,
        _max: usize,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        Box::pin(std::future::ready(Err(self.no_dcb("read_query"))))
    }
    /// Records each (event type, tag key) pair not yet declared, indexed when no stored
    /// event of its type lacks the key (atomically with the appends of that type), and
    /// returns whether each pair is indexed, in order. This default refuses, as
    /// [`append_if`](Self::append_if) does.
    fn declare_tags<'a>(
        &'a self,
        _pairs: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<Vec<bool>, StoreError>> {
        Box::pin(std::future::ready(Err(self.no_dcb("ensure_tags_indexed"))))
    }
    /// Every declared pair, ordered by event type and key.
    fn declared_tags(&self) -> BoxFuture<'_, Result<Vec<DeclaredTag>, StoreError>> {
        Box::pin(std::future::ready(Err(self.no_dcb("declared_tags"))))
    }
    /// How many events of `event_type` lie after position `after` (a reindex's total).
    fn count_of_type<'a>(
        &'a self,
        _event_type: &'a str,
        _after: Option<u64>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(std::future::ready(Err(self.no_dcb("reindex_tags"))))
    }
    /// One batch of a pending pair's reindexing: up to `max` events of the type after
    /// the registry's cursor, their missing entries written from their data, the cursor
    /// moved, and the pair marked indexed when the batch reached the last event; all in
    /// one transaction.
    fn reindex_batch<'a>(
        &'a self,
        _event_type: &'a str,
        _tag: &'a str,
        _max: usize,
    ) -> BoxFuture<'a, Result<ReindexBatch, StoreError>> {
        Box::pin(std::future::ready(Err(self.no_dcb("reindex_tags"))))
    }
    /// Replaces the data of stored events, each only where it is still `before` (a
    /// compare-and-set), all in one transaction, writing no other column; returns the
    /// positions written, in order. Only `Store::encrypt_personal` calls it. This
    /// default refuses: the adapter's events cannot change.
    fn rewrite_data<'a>(
        &'a self,
        _rewrites: &'a [DataRewrite],
    ) -> BoxFuture<'a, Result<Vec<u64>, StoreError>> {
        Box::pin(std::future::ready(Err(StoreError::Unsupported {
            adapter: self.name(),
            operation: "encrypt_personal",
            hint: "its stored events cannot be rewritten; encrypting stored personal data \
                   needs the memory, SQLite or PostgreSQL store",
        })))
    }
    /// Deletes the snapshots of these state shapes whose state holds no sealed value;
    /// returns how many. This default keeps them (the adapter keeps none it could list).
    fn delete_plain_snapshots<'a>(
        &'a self,
        _shapes: &'a [String],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(std::future::ready(Ok(0)))
    }
    /// The refusal of the defaults above.
    fn no_dcb(&self, operation: &'static str) -> StoreError {
        StoreError::Unsupported {
            adapter: self.name(),
            operation,
            hint: "decisions across streams (tags, read_query, append_if, the tag index's \
                   registry) need the memory, SQLite or PostgreSQL store",
        }
    }
    fn read_all(
        &self,
        from_position: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<RecordedEvent>, StoreError>>;
    /// Keeps `snapshot` unless the one already kept for its stream has the same shape
    /// and a version at least as new ([`Snapshot::replaces`]).
    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The snapshot kept for `stream`.
    fn load_snapshot<'a>(
        &'a self,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>>;
    /// The position of the last event a reader of the global order can see, `None` when
    /// there is none.
    fn head(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>>;
    /// The position of the last event committed, `None` when there is none. Where a
    /// commit can stay out of the global order until older transactions end
    /// (PostgreSQL), this may be past [`head`](Self::head), which reaches it once they
    /// have; elsewhere the two are the same.
    fn recorded_head(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        self.head()
    }
    /// The version at which `stream` holds the event `id`, `None` when it holds no such
    /// event. Adapters with an index of event ids look it up; this default reads the
    /// stream from the start (EventStoreDB has no lookup by id).
    fn version_of<'a>(
        &'a self,
        stream: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            const PAGE: usize = 1024;
            let mut from = 0;
            loop {
                let page = self
                    .read_stream(stream, from, PAGE, Direction::Forwards)
                    .await?;
                if let Some(found) = page.iter().find(|e| e.id == id) {
                    return Ok(Some(found.version));
                }
                match page.last() {
                    Some(last) if page.len() == PAGE => from = last.version.saturating_add(1),
                    _ => return Ok(None),
                }
            }
        })
    }
    /// The checkpoint saved under `name`: the last global position its owner handled.
    fn load_checkpoint<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>>;
    /// Saves (or, with `None`, clears) the checkpoint `name`.
    fn save_checkpoint<'a>(
        &'a self,
        name: &'a str,
        position: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// How many events lie after position `after` up to `until` (both as readers of the
    /// global order see them), and when the first of them was recorded: a reader's
    /// backlog. This default reads them (at most [`BACKLOG_READ_LIMIT`]; a longer
    /// backlog counts as that many); adapters with an index count it.
    fn backlog(
        &self,
        after: Option<u64>,
        until: u64,
    ) -> BoxFuture<'_, Result<Backlog, StoreError>> {
        Box::pin(async move {
            let mut backlog = Backlog::default();
            let mut from = after.map_or(0, |a| a.saturating_add(1));
            while backlog.events < BACKLOG_READ_LIMIT as u64 {
                let page = self.read_all(from, 1000).await?;
                let Some(last) = page.last().map(|e| e.position) else {
                    break;
                };
                for e in page.iter().filter(|e| e.position <= until) {
                    backlog.oldest.get_or_insert(e.recorded_at);
                    backlog.events += 1;
                }
                if last >= until || page.len() < 1000 {
                    break;
                }
                from = last.saturating_add(1);
            }
            Ok(backlog)
        })
    }
    /// The target of the rebuild under way for checkpoint `name` (the head when it
    /// began), `None` when there is none. Adapters with a checkpoint table keep it in
    /// the checkpoint's row; this default keeps it as a checkpoint of its own.
    fn load_replay_until<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move { self.load_checkpoint(&replay_key(name)).await })
    }
    /// Saves checkpoint `name` and its rebuild target together. This default writes the
    /// target first: a crash between the two writes leaves a target with the old
    /// checkpoint (events up to the target then count as replays).
    fn save_replay<'a>(
        &'a self,
        name: &'a str,
        position: Option<u64>,
        until: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.save_checkpoint(&replay_key(name), until).await?;
            self.save_checkpoint(name, position).await
        })
    }
    /// The PostgreSQL adapter, for work that shares its transactions (projections).
    #[cfg(feature = "postgres")]
    fn as_postgres(&self) -> Option<&super::postgres::PostgresStore> {
        None
    }
    /// A counter bumped after every commit, for live subscriptions.
    fn changes(&self) -> watch::Receiver<u64>;
    /// The inbox of `once: true` handlers kept in this store; `None`: the adapter keeps
    /// none (a bus given such a store keeps a bounded inbox in memory).
    fn inbox(&self) -> Option<Arc<dyn crate::handler::InboxBackend>> {
        None
    }
    /// The leases of this store (memory, SQLite, PostgreSQL); `None`: it keeps none.
    fn leases(&self) -> Option<Arc<dyn super::lease::LeaseBackend>> {
        None
    }
    /// How often a live subscription re-reads even without a change notice (adapters
    /// whose notices can be missed or delayed).
    fn poll_interval(&self) -> Option<Duration> {
        None
    }
}

/// How many events the default [`Backend::backlog`] reads at most.
pub(crate) const BACKLOG_READ_LIMIT: usize = 100_000;

/// A reader's backlog: the events after its position, and when the first was recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Backlog {
    pub(crate) events: u64,
    pub(crate) oldest: Option<chrono::DateTime<chrono::Utc>>,
}

/// Where the default [`Backend::save_replay`] keeps a rebuild's target.
fn replay_key(name: &str) -> String {
    format!("{name}#replay-until")
}

/// An event id of an append that is already stored, and where.
#[derive(Clone, Debug)]
pub(crate) struct StoredId {
    pub(crate) id: String,
    pub(crate) stream: String,
    pub(crate) version: u64,
    pub(crate) position: u64,
}

/// The version the next event of a stream whose last version is `current` gets, or an
/// error when `u64` has no room left (no adapter can store 2^64 events in one stream;
/// this guards a corrupt or hostile version number).
pub(crate) fn next_version(stream: &str, current: Option<u64>) -> Result<u64, StoreError> {
    match current {
        None => Ok(0),
        Some(v) => v.checked_add(1).ok_or_else(|| {
            StoreError::Invalid(format!("stream {stream:?} is at the largest version {v}"))
        }),
    }
}

/// A count or position for a SQL parameter: SQLite and PostgreSQL integers are `i64`, so
/// anything above `i64::MAX` saturates (no stored value can be that large).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn sql_int(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
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
    stored: &[StoredId],
) -> Result<Option<AppendResult>, StoreError> {
    if !stored.is_empty() {
        let first_version = match expected {
            ExpectedVersion::NoStream => Some(0),
            // `Exact(u64::MAX)`: no version can follow it, so nothing can match.
            ExpectedVersion::Exact(v) => Some(v.checked_add(1).ok_or_else(|| {
                StoreError::Invalid(format!("expected version {v} leaves no room for an event"))
            })?),
            _ => None,
        };
        let find = |id: &str| stored.iter().find(|s| s.id == id);
        let at = |first: u64, i: usize| first.checked_add(i as u64);
        let all_here = events
            .iter()
            .enumerate()
            .all(|(i, e)| match find(&e.event.id) {
                Some(s) => {
                    s.stream == stream
                        && match first_version {
                            Some(first) => Some(s.version) == at(first, i),
                            None => find(&events[0].event.id)
                                .is_some_and(|s0| Some(s.version) == at(s0.version, i)),
                        }
                }
                None => false,
            });
        if all_here && let Some(last) = events.last().and_then(|e| find(&e.event.id)) {
            return Ok(Some(AppendResult {
                last_version: last.version,
                last_position: last.position,
                written: false,
            }));
        }
        if let Some(s) = stored.first() {
            return Err(StoreError::DuplicateEvent {
                id: s.id.clone(),
                stream: s.stream.clone(),
                version: s.version,
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
