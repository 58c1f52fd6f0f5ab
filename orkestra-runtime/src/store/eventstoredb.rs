//! The EventStoreDB / KurrentDB store, through the maintained `kurrentdb` client.
//!
//! Streams map one to one; the global position is the server's commit position in
//! `$all` (system events, whose type or stream starts with `$`, are left out). Data is
//! stored as JSON; Orkestra's metadata and the schema version travel as the event's
//! custom metadata. The server enforces expected versions and deduplicates event ids
//! itself (an idempotent repeat reports `written: true`, the server does not say).
//!
//! Snapshots and checkpoints live in streams of their own, `orkestra.snapshot-<stream>`
//! and `orkestra.checkpoint-<name>`: names an ordinary user may write (a secured server
//! lets only `$admins` write `$` streams), kept out of the global order like system
//! events, and trimmed by the server to their last few events (`$maxCount`, set when
//! the stream is first written). A checkpoint an older release saved in
//! `$checkpoint-<name>` is still read when the new stream has none.
//!
//! Decisions across streams are not supported: the server has no index of tags and no
//! append condition over several streams, so `read_query` and `append_if` return
//! [`StoreError::Unsupported`], and an append of events carrying tags is refused the same
//! way rather than storing them without their index.
//!
//! No server runs on our build machines: this adapter is compiled in CI and its
//! conformance tests run when `ORKESTRA_ESDB_URL` is set.

use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

use futures_util::future::BoxFuture;
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, CurrentRevision, Position, ReadAllOptions,
    ReadStreamOptions, StreamPosition, StreamState, SubscribeToAllOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Encoded;
use super::{
    AppendResult, Backend, Direction, ExpectedVersion, RecordedEvent, Snapshot, StoreError,
};
use crate::config::SecretUrl;
use crate::message::Metadata;

const ADAPTER: &str = "eventstoredb";

/// The type of the events of an `orkestra.snapshot-<stream>` stream.
const SNAPSHOT_TYPE: &str = "orkestra.snapshot";
const SNAPSHOT_PREFIX: &str = "orkestra.snapshot-";

/// A snapshot as the data of one event of `orkestra.snapshot-<stream>` (the newest one
/// counts).
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    version: u64,
    shape: String,
    state: String,
}

fn snapshot_stream(stream: &str) -> String {
    format!("{SNAPSHOT_PREFIX}{stream}")
}

/// The type of the events of an `orkestra.checkpoint-<name>` stream.
const CHECKPOINT_TYPE: &str = "orkestra.checkpoint";
const CHECKPOINT_PREFIX: &str = "orkestra.checkpoint-";

/// How many events the server keeps of a snapshot or checkpoint stream (the newest one
/// counts; a few more cost nothing and help whoever looks into one).
const KEEP: u64 = 5;

/// A checkpoint as the data of one event of `orkestra.checkpoint-<name>` (the newest one
/// counts; `None` records a reset).
#[derive(Serialize, Deserialize)]
struct StoredCheckpoint {
    position: Option<u64>,
}

fn checkpoint_stream(name: &str) -> String {
    format!("{CHECKPOINT_PREFIX}{name}")
}

/// Where releases before 0.1 kept checkpoints (only `$admins` may write there on a
/// secured server); still read.
fn legacy_checkpoint_stream(name: &str) -> String {
    format!("$checkpoint-{name}")
}

/// Whether an event stays out of the global order: the server's own (`$` types and
/// streams) and the snapshots and checkpoints kept here.
fn hidden(event_type: &str, stream: &str) -> bool {
    event_type.starts_with('$')
        || stream.starts_with('$')
        || (event_type == SNAPSHOT_TYPE && stream.starts_with(SNAPSHOT_PREFIX))
        || (event_type == CHECKPOINT_TYPE && stream.starts_with(CHECKPOINT_PREFIX))
}

/// What travels as the event's custom metadata.
#[derive(Serialize, Deserialize)]
struct Envelope {
    schema_version: u32,
    metadata: Metadata,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    topic: Option<String>,
}

pub(crate) struct EsdbStore {
    client: Client,
    url: SecretUrl,
    changes: watch::Sender<u64>,
    watcher: tokio::task::JoinHandle<()>,
    /// Checkpoint streams this process has set `$maxCount` on.
    trimmed: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for EsdbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EsdbStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Drop for EsdbStore {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

#[cold]
fn backend_error(e: kurrentdb::Error) -> StoreError {
    StoreError::backend(ADAPTER, e)
}

impl EsdbStore {
    /// The data of the last event of `stream` (`None`: no such stream, or empty): what a
    /// snapshot or checkpoint stream holds.
    async fn last_data(&self, stream: String) -> Result<Option<Vec<u8>>, StoreError> {
        let options = ReadStreamOptions::default()
            .max_count(1)
            .backwards()
            .position(StreamPosition::End);
        let mut read = match self.client.read_stream(stream, &options).await {
            Ok(read) => read,
            Err(kurrentdb::Error::ResourceNotFound) => return Ok(None),
            Err(e) => return Err(backend_error(e)),
        };
        match read.next().await {
            Ok(Some(resolved)) => Ok(Some(resolved.get_original_event().data.to_vec())),
            Ok(None) | Err(kurrentdb::Error::ResourceNotFound) => Ok(None),
            Err(e) => Err(backend_error(e)),
        }
    }

    /// Asks the server to keep only the last [`KEEP`] events of `stream`. A refusal
    /// (an ACL that keeps stream metadata to admins) only costs disk: logged, not fatal.
    async fn trim(&self, stream: &str) {
        let metadata = kurrentdb::StreamMetadata::builder().max_count(KEEP).build();
        if let Err(e) = self
            .client
            .set_stream_metadata(stream, &AppendToStreamOptions::default(), &metadata)
            .await
        {
            tracing::warn!(orkestra = "store", adapter = ADAPTER, stream, error = %e, "cannot set $maxCount; the stream keeps every event");
        }
    }

    pub(crate) async fn connect(url: &SecretUrl) -> Result<Self, StoreError> {
        let unavailable = |e: Option<BoxError>| StoreError::unavailable(ADAPTER, url, e);
        let settings: ClientSettings = url
            .expose()
            .parse()
            .map_err(|e: kurrentdb::ClientSettingsParseError| unavailable(Some(e.into())))?;
        let client = Client::new(settings).map_err(|e| unavailable(Some(e.into())))?;
        // The client connects lazily: probe once so a wrong address fails here.
        let probe_options = ReadAllOptions::default().max_count(1);
        let probe = client.read_all(&probe_options);
        match tokio::time::timeout(Duration::from_secs(10), probe).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(unavailable(Some(e.into()))),
            Err(_) => {
                return Err(StoreError::unavailable(
                    ADAPTER,
                    format_args!("{url}: no answer within 10 s"),
                    None,
                ));
            }
        }
        let changes = watch::Sender::new(0);
        let watcher = tokio::spawn(watch_all(client.clone(), changes.clone()));
        Ok(Self {
            client,
            url: url.clone(),
            changes,
            watcher,
            trimmed: std::sync::Mutex::default(),
        })
    }
}

/// Bumps `changes` for every new event, so live subscriptions wake without polling.
async fn watch_all(client: Client, changes: watch::Sender<u64>) {
    loop {
        let mut sub = client
            .subscribe_to_all(&SubscribeToAllOptions::default().position(StreamPosition::End))
            .await;
        while sub.next().await.is_ok() {
            changes.send_modify(|c| *c += 1);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn to_esdb(encoded: &Encoded) -> Result<kurrentdb::EventData, StoreError> {
    let e = &encoded.event;
    let id = uuid::Uuid::parse_str(&e.id).map_err(|_| {
        StoreError::Invalid(format!(
            "EventStoreDB needs UUID event ids; {:?} is not one",
            e.id
        ))
    })?;
    kurrentdb::EventData::json(e.event_type.clone(), &e.data)
        .and_then(|d| {
            d.metadata_as_json(&Envelope {
                schema_version: e.schema_version,
                metadata: e.metadata.clone(),
                topic: e.topic.clone(),
            })
        })
        .map(|d| d.id(id))
        .map_err(|e| StoreError::Encode(e.to_string()))
}

fn from_esdb(event: &kurrentdb::RecordedEvent) -> Result<RecordedEvent, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        location: format!("position {}", event.position.commit),
        message,
    };
    let envelope: Envelope = serde_json::from_slice(&event.custom_metadata)
        .map_err(|e| corrupt(format!("custom metadata is not Orkestra metadata: {e}")))?;
    Ok(RecordedEvent {
        stream: event.stream_id().into(),
        version: event.revision,
        position: event.position.commit,
        id: event.id.to_string(),
        event_type: event.event_type.as_str().into(),
        schema_version: envelope.schema_version,
        data: String::from_utf8(event.data.to_vec())
            .ok()
            .filter(|text| serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok())
            .ok_or_else(|| corrupt("data is not JSON".to_owned()))?,
        metadata: envelope.metadata.clone(),
        recorded_at: event.created,
        topic: envelope.topic.map(Into::into),
        tags: Vec::new(),
        redacted: Vec::new(),
    })
}

async fn collect(
    mut read: kurrentdb::ReadStream,
    from_position: u64,
    max: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut out = Vec::new();
    // Checked before reading, so `max = 0` returns nothing even when called directly.
    while out.len() < max {
        match read.next().await {
            Ok(Some(resolved)) => {
                let event = resolved.get_original_event();
                if hidden(&event.event_type, event.stream_id())
                    || event.position.commit < from_position
                {
                    continue;
                }
                out.push(from_esdb(event)?);
            }
            Ok(None) | Err(kurrentdb::Error::ResourceNotFound) => break,
            Err(e) => return Err(backend_error(e)),
        }
    }
    Ok(out)
}

impl Backend for EsdbStore {
    fn name(&self) -> &'static str {
        ADAPTER
    }

    fn append<'a>(
        &'a self,
        stream: &'a str,
        expected: ExpectedVersion,
        events: Vec<Encoded>,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        Box::pin(async move {
            if events.iter().any(|e| !e.event.tags.is_empty()) {
                return Err(self.no_dcb("tagged events"));
            }
            let state = match expected {
                ExpectedVersion::Any => StreamState::Any,
                ExpectedVersion::NoStream => StreamState::NoStream,
                ExpectedVersion::StreamExists => StreamState::StreamExists,
                ExpectedVersion::Exact(v) => StreamState::StreamRevision(v),
            };
            let data = events.iter().map(to_esdb).collect::<Result<Vec<_>, _>>()?;
            let options = AppendToStreamOptions::default().stream_state(state);
            match self.client.append_to_stream(stream, &options, data).await {
                Ok(result) => Ok(AppendResult {
                    last_version: result.next_expected_version,
                    last_position: result.position.commit,
                    written: true,
                }),
                Err(kurrentdb::Error::WrongExpectedVersion { current, .. }) => {
                    Err(StoreError::WrongExpectedVersion {
                        stream: stream.to_owned(),
                        expected,
                        actual: match current {
                            CurrentRevision::Current(v) => Some(v),
                            CurrentRevision::NoStream => None,
                        },
                    })
                }
                Err(e) => Err(backend_error(e)),
            }
        })
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a str,
        from_version: u64,
        max: usize,
        direction: Direction,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        Box::pin(async move {
            let options = ReadStreamOptions::default().max_count(max);
            let options = match direction {
                Direction::Forwards => options
                    .forwards()
                    .position(StreamPosition::Position(from_version)),
                Direction::Backwards if from_version == u64::MAX => {
                    options.backwards().position(StreamPosition::End)
                }
                Direction::Backwards => options
                    .backwards()
                    .position(StreamPosition::Position(from_version)),
            };
            match self.client.read_stream(stream, &options).await {
                Ok(read) => collect(read, 0, max).await,
                Err(kurrentdb::Error::ResourceNotFound) => Ok(Vec::new()),
                Err(e) => Err(backend_error(e)),
            }
        })
    }

    fn read_all(
        &self,
        from_position: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<RecordedEvent>, StoreError>> {
        Box::pin(async move {
            let start = if from_position == 0 {
                StreamPosition::Start
            } else {
                StreamPosition::Position(Position {
                    commit: from_position,
                    prepare: from_position,
                })
            };
            // System events are skipped, so ask for a little more than needed.
            let options = ReadAllOptions::default()
                .forwards()
                .position(start)
                .max_count(max.saturating_mul(2).max(16));
            let read = self
                .client
                .read_all(&options)
                .await
                .map_err(backend_error)?;
            collect(read, from_position, max).await
        })
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let stored = self.load_snapshot(&snapshot.stream).await?;
            if let Some(stored) = &stored
                && !snapshot.replaces(stored)
            {
                return Ok(());
            }
            let stream = snapshot_stream(&snapshot.stream);
            if stored.is_none() {
                self.trim(&stream).await;
            }
            let data = kurrentdb::EventData::json(
                SNAPSHOT_TYPE,
                &StoredSnapshot {
                    version: snapshot.version,
                    shape: snapshot.shape,
                    state: snapshot.state,
                },
            )
            .map_err(|e| StoreError::Encode(e.to_string()))?;
            self.client
                .append_to_stream(stream, &AppendToStreamOptions::default(), data)
                .await
                .map(drop)
                .map_err(backend_error)
        })
    }

    fn load_snapshot<'a>(
        &'a self,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        Box::pin(async move {
            // An unreadable snapshot only costs a replay.
            Ok(self
                .last_data(snapshot_stream(stream))
                .await?
                .and_then(|data| serde_json::from_slice::<StoredSnapshot>(&data).ok())
                .map(|s| Snapshot {
                    stream: stream.to_owned(),
                    version: s.version,
                    shape: s.shape,
                    state: s.state,
                }))
        })
    }

    fn head(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            // System events are skipped: read back until a user event shows up.
            let options = ReadAllOptions::default()
                .backwards()
                .position(StreamPosition::End)
                .max_count(256);
            let mut read = self
                .client
                .read_all(&options)
                .await
                .map_err(backend_error)?;
            loop {
                match read.next().await {
                    Ok(Some(resolved)) => {
                        let event = resolved.get_original_event();
                        if !hidden(&event.event_type, event.stream_id()) {
                            return Ok(Some(event.position.commit));
                        }
                    }
                    Ok(None) | Err(kurrentdb::Error::ResourceNotFound) => return Ok(None),
                    Err(e) => return Err(backend_error(e)),
                }
            }
        })
    }

    fn load_checkpoint<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            // Unlike a snapshot, a checkpoint that cannot be read must not be mistaken
            // for "none": that would replay everything.
            let mut location = checkpoint_stream(name);
            let mut data = self.last_data(location.clone()).await?;
            if data.is_none() {
                location = legacy_checkpoint_stream(name);
                data = match self.last_data(location.clone()).await {
                    Ok(data) => data,
                    // Not readable to this user: there is nothing of ours there.
                    Err(e) => {
                        tracing::debug!(orkestra = "store", adapter = ADAPTER, stream = location, error = %e, "cannot read an older release's checkpoint stream");
                        None
                    }
                };
            }
            data.map(|data| {
                serde_json::from_slice::<StoredCheckpoint>(&data)
                    .map(|c| c.position)
                    .map_err(|e| StoreError::Corrupt {
                        location,
                        message: format!("not an Orkestra checkpoint: {e}"),
                    })
            })
            .transpose()
            .map(Option::flatten)
        })
    }

    fn save_checkpoint<'a>(
        &'a self,
        name: &'a str,
        position: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let data = kurrentdb::EventData::json(CHECKPOINT_TYPE, &StoredCheckpoint { position })
                .map_err(|e| StoreError::Encode(e.to_string()))?;
            let stream = checkpoint_stream(name);
            if crate::sync::lock(&self.trimmed).insert(stream.clone()) {
                self.trim(&stream).await;
            }
            self.client
                .append_to_stream(stream, &AppendToStreamOptions::default(), data)
                .await
                .map(drop)
                .map_err(backend_error)
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn poll_interval(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_and_checkpoints_use_streams_a_user_may_write_and_stay_out_of_the_order() {
        for stream in [snapshot_stream("account-1"), checkpoint_stream("Tally")] {
            assert!(!stream.starts_with('$'), "{stream}");
        }
        assert!(hidden(SNAPSHOT_TYPE, &snapshot_stream("account-1")));
        assert!(hidden(CHECKPOINT_TYPE, &checkpoint_stream("Tally")));
        assert!(hidden("$metadata", "$$account-1"));
        assert!(hidden("Shop.Orders.OrderPlaced", "$ce-order"));
        // Ordinary events keep their place, also one named like ours in a user stream.
        assert!(!hidden("Shop.Orders.OrderPlaced", "order-1"));
        assert!(!hidden(SNAPSHOT_TYPE, "account-1"));
        assert!(!hidden("orkestra.ProcessStep", "pm-fulfilment-o1"));
    }
}
