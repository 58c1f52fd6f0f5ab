//! The in-memory store: a log, a per-stream index and a tag index behind one mutex
//! (which is also what makes a conditional append atomic).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::Encoded;
use super::tag_index::{self, DeclaredTag, ReindexBatch, SkippedEvent};
use super::{
    AppendCondition, AppendResult, Backend, Conflict, Direction, ExpectedVersion, Query,
    RecordedEvent, Snapshot, StoreError, StoredId, check_append, next_version,
};

#[derive(Debug, Default)]
struct State {
    log: Vec<RecordedEvent>,
    streams: HashMap<String, Vec<usize>>,
    ids: HashMap<String, usize>,
    /// The tag index: the log indices of the events carrying each tag, in order.
    tags: HashMap<String, Vec<usize>>,
    snapshots: HashMap<String, Snapshot>,
    checkpoints: HashMap<String, u64>,
    /// The tag index's registry: (event type, tag key) → indexed, cursor.
    registry: BTreeMap<(String, String), (bool, Option<u64>)>,
    /// The declared tag keys of each event type, which appends give their events.
    declared: HashMap<String, Vec<String>>,
}

impl State {
    /// The events matching `query` from position `from` on, in order: through the tag
    /// index for items with tags, the whole log for items without.
    fn matching<'s>(
        &'s self,
        query: &'s Query,
        from: u64,
    ) -> impl Iterator<Item = &'s RecordedEvent> + 's {
        let start = usize::try_from(from).unwrap_or(usize::MAX);
        let mut indices: Vec<usize> = Vec::new();
        for item in query.items() {
            match item.required_tags().first() {
                Some(tag) => {
                    let found = self.tags.get(tag.as_str()).map_or(&[][..], Vec::as_slice);
                    let skip = found.partition_point(|&i| i < start);
                    indices.extend(found[skip..].iter().copied());
                }
                None => indices.extend(start.min(self.log.len())..self.log.len()),
            }
        }
        indices.sort_unstable();
        indices.dedup();
        indices
            .into_iter()
            .map(|i| &self.log[i])
            .filter(move |e| query.matches(&e.event_type, &e.tags))
    }
}

#[derive(Debug)]
pub(crate) struct MemoryStore {
    state: Mutex<State>,
    leases: std::sync::Arc<super::lease::MemoryLeases>,
    changes: watch::Sender<u64>,
}

impl MemoryStore {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::default(),
            leases: std::sync::Arc::default(),
            changes: watch::Sender::new(0),
        }
    }

    fn append_now(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<Encoded>,
        condition: Option<&AppendCondition>,
    ) -> Result<AppendResult, StoreError> {
        let mut state = crate::sync::lock(&self.state);
        let current = state
            .streams
            .get(stream)
            .and_then(|v| v.len().checked_sub(1))
            .map(|v| v as u64);
        let stored: Vec<StoredId> = events
            .iter()
            .filter_map(|e| state.ids.get(&e.event.id).map(|&i| &state.log[i]))
            .map(|r| StoredId {
                id: r.id.clone(),
                stream: r.stream.to_string(),
                version: r.version,
                position: r.position,
            })
            .collect();
        if let Some(done) = check_append(stream, expected, current, &events, &stored)? {
            return Ok(done);
        }
        if let Some(condition) = condition {
            let from = condition.after.map_or(0, |a| a.saturating_add(1));
            if let Some(e) = state.matching(&condition.fail_if_events_match, from).next() {
                return Err(Conflict {
                    position: e.position,
                    event_type: e.event_type.to_string(),
                }
                .into_error(stream, condition.after));
            }
        }
        let now = chrono::Utc::now();
        let mut events = events;
        for e in &mut events {
            derive_tags(&state.declared, &mut e.event);
        }
        let mut last = AppendResult {
            last_version: 0,
            last_position: 0,
            written: true,
        };
        for (version, e) in (next_version(stream, current)?..).zip(events) {
            let position = state.log.len() as u64;
            let index = state.log.len();
            state.ids.insert(e.event.id.clone(), index);
            for tag in &e.event.tags {
                state
                    .tags
                    .entry(tag.as_str().to_owned())
                    .or_default()
                    .push(index);
            }
            state
                .streams
                .entry(stream.to_owned())
                .or_default()
                .push(index);
            state.log.push(RecordedEvent {
                stream: stream.into(),
                version,
                position,
                id: e.event.id,
                event_type: e.event.event_type.into(),
                schema_version: e.event.schema_version,
                data: e.data,
                metadata: e.event.metadata,
                recorded_at: now,
                topic: e.event.topic.map(Into::into),
                tags: e.event.tags,
                redacted: Vec::new(),
            });
            last = AppendResult {
                last_version: version,
                last_position: position,
                written: true,
            };
        }
        drop(state);
        self.changes.send_modify(|c| *c += 1);
        Ok(last)
    }
}

/// Gives `event` the tags declared for its type that it lacks, from its fields (one
/// missing or not text gets none; see [`tag_index`]).
fn derive_tags(declared: &HashMap<String, Vec<String>>, event: &mut super::EventData) {
    let Some(keys) = declared.get(&event.event_type) else {
        return;
    };
    for key in keys {
        if !tag_index::has_key(&event.tags, key)
            && let Ok(tag) = tag_index::tag_from_data(&event.data, key)
        {
            event.tags.push(tag);
        }
    }
}

impl MemoryStore {
    /// One reindexing batch under the store's lock.
    fn reindex_now(
        &self,
        event_type: &str,
        key: &str,
        max: usize,
    ) -> Result<ReindexBatch, StoreError> {
        let mut guard = crate::sync::lock(&self.state);
        let state = &mut *guard;
        let pair = (event_type.to_owned(), key.to_owned());
        let Some(&(indexed, cursor)) = state.registry.get(&pair) else {
            return Err(super::tag_index::undeclared(event_type, key));
        };
        let mut batch = ReindexBatch::default();
        if indexed {
            batch.done = true;
            return Ok(batch);
        }
        let start = cursor.map_or(0, |c| {
            usize::try_from(c).unwrap_or(usize::MAX).saturating_add(1)
        });
        let mut last = cursor;
        let mut index = start.min(state.log.len());
        while index < state.log.len() && (batch.events as usize) < max {
            let e = &mut state.log[index];
            if &*e.event_type == event_type {
                batch.events += 1;
                last = Some(e.position);
                if !tag_index::has_key(&e.tags, key) {
                    let data: serde_json::Value =
                        serde_json::from_str(&e.data).unwrap_or(serde_json::Value::Null);
                    match tag_index::tag_from_data(&data, key) {
                        Ok(tag) => {
                            let entries = state.tags.entry(tag.as_str().to_owned()).or_default();
                            let at = entries.partition_point(|&i| i < index);
                            entries.insert(at, index);
                            e.tags.push(tag);
                            batch.written += 1;
                        }
                        Err(reason) => batch.skipped.push(SkippedEvent {
                            event_type: event_type.to_owned(),
                            tag: key.to_owned(),
                            stream: e.stream.to_string(),
                            position: e.position,
                            reason,
                        }),
                    }
                }
            }
            index += 1;
        }
        batch.done = index >= state.log.len();
        state.registry.insert(pair, (batch.done, last));
        Ok(batch)
    }
}

impl Backend for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn append<'a>(
        &'a self,
        stream: &'a str,
        expected: ExpectedVersion,
        events: Vec<Encoded>,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        Box::pin(std::future::ready(
            self.append_now(stream, expected, events, None),
        ))
    }

    fn append_if<'a>(
        &'a self,
        stream: &'a str,
        expected: ExpectedVersion,
        events: Vec<Encoded>,
        condition: &'a AppendCondition,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        Box::pin(std::future::ready(self.append_now(
            stream,
            expected,
            events,
            Some(condition),
        )))
    }

    fn read_query<'a>(
        &'a self,
        query: &'a Query,
        from: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        let state = crate::sync::lock(&self.state);
        let events = state.matching(query, from).take(max).cloned().collect();
        Box::pin(std::future::ready(Ok(events)))
    }

    fn declare_tags<'a>(
        &'a self,
        pairs: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<Vec<bool>, StoreError>> {
        let mut state = crate::sync::lock(&self.state);
        let mut answers = Vec::with_capacity(pairs.len());
        for &(event_type, key) in pairs {
            let pair = (event_type.to_owned(), key.to_owned());
            let indexed = match state.registry.get(&pair) {
                Some(&(indexed, _)) => indexed,
                None => {
                    let indexed = !state
                        .log
                        .iter()
                        .any(|e| &*e.event_type == event_type && !tag_index::has_key(&e.tags, key));
                    state.registry.insert(pair, (indexed, None));
                    state
                        .declared
                        .entry(event_type.to_owned())
                        .or_default()
                        .push(key.to_owned());
                    indexed
                }
            };
            answers.push(indexed);
        }
        Box::pin(std::future::ready(Ok(answers)))
    }

    fn declared_tags(&self) -> BoxFuture<'_, Result<Vec<DeclaredTag>, StoreError>> {
        let state = crate::sync::lock(&self.state);
        let rows = state
            .registry
            .iter()
            .map(
                |((event_type, tag), &(indexed, reindexed_to))| DeclaredTag {
                    event_type: event_type.clone(),
                    tag: tag.clone(),
                    indexed,
                    reindexed_to,
                },
            )
            .collect();
        Box::pin(std::future::ready(Ok(rows)))
    }

    fn count_of_type<'a>(
        &'a self,
        event_type: &'a str,
        after: Option<u64>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let state = crate::sync::lock(&self.state);
        let count = state
            .log
            .iter()
            .filter(|e| &*e.event_type == event_type && after.is_none_or(|a| e.position > a))
            .count() as u64;
        Box::pin(std::future::ready(Ok(count)))
    }

    fn reindex_batch<'a>(
        &'a self,
        event_type: &'a str,
        tag: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<ReindexBatch, StoreError>> {
        Box::pin(std::future::ready(self.reindex_now(event_type, tag, max)))
    }

    fn rewrite_data<'a>(
        &'a self,
        rewrites: &'a [super::encrypt::DataRewrite],
    ) -> BoxFuture<'a, Result<Vec<u64>, StoreError>> {
        let mut state = crate::sync::lock(&self.state);
        let mut written = Vec::with_capacity(rewrites.len());
        for r in rewrites {
            let Some(event) = usize::try_from(r.position)
                .ok()
                .and_then(|i| state.log.get_mut(i))
            else {
                continue;
            };
            if event.data == r.before {
                event.data.clone_from(&r.after);
                written.push(r.position);
            }
        }
        drop(state);
        written.sort_unstable();
        Box::pin(std::future::ready(Ok(written)))
    }

    fn delete_plain_snapshots<'a>(
        &'a self,
        shapes: &'a [String],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let mut state = crate::sync::lock(&self.state);
        let before = state.snapshots.len();
        state
            .snapshots
            .retain(|_, s| !shapes.contains(&s.shape) || crate::keys::find_encrypted(&s.state));
        let deleted = (before - state.snapshots.len()) as u64;
        Box::pin(std::future::ready(Ok(deleted)))
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a str,
        from_version: u64,
        max: usize,
        direction: Direction,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        let state = crate::sync::lock(&self.state);
        let indices = state
            .streams
            .get(stream)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let events = match direction {
            Direction::Forwards => indices
                .iter()
                .skip(usize::try_from(from_version).unwrap_or(usize::MAX))
                .take(max)
                .map(|&i| state.log[i].clone())
                .collect(),
            Direction::Backwards => {
                let end = usize::try_from(from_version)
                    .map_or(indices.len(), |v| v.saturating_add(1).min(indices.len()));
                indices[..end]
                    .iter()
                    .rev()
                    .take(max)
                    .map(|&i| state.log[i].clone())
                    .collect()
            }
        };
        Box::pin(std::future::ready(Ok(events)))
    }

    fn read_all(
        &self,
        from_position: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<RecordedEvent>, StoreError>> {
        let state = crate::sync::lock(&self.state);
        let start = usize::try_from(from_position)
            .unwrap_or(usize::MAX)
            .min(state.log.len());
        let events = state.log[start..].iter().take(max).cloned().collect();
        Box::pin(std::future::ready(Ok(events)))
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut state = crate::sync::lock(&self.state);
        let keep = state
            .snapshots
            .get(&snapshot.stream)
            .is_none_or(|stored| snapshot.replaces(stored));
        if keep {
            state.snapshots.insert(snapshot.stream.clone(), snapshot);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn version_of<'a>(
        &'a self,
        stream: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        let state = crate::sync::lock(&self.state);
        let found = state
            .ids
            .get(id)
            .map(|&i| &state.log[i])
            .filter(|e| &*e.stream == stream)
            .map(|e| e.version);
        Box::pin(std::future::ready(Ok(found)))
    }

    fn load_snapshot<'a>(
        &'a self,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        let found = crate::sync::lock(&self.state)
            .snapshots
            .get(stream)
            .cloned();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn head(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        let head = crate::sync::lock(&self.state)
            .log
            .last()
            .map(|e| e.position);
        Box::pin(std::future::ready(Ok(head)))
    }

    fn leases(&self) -> Option<std::sync::Arc<dyn super::lease::LeaseBackend>> {
        Some(self.leases.clone())
    }

    fn backlog(
        &self,
        after: Option<u64>,
        until: u64,
    ) -> BoxFuture<'_, Result<super::Backlog, StoreError>> {
        let state = crate::sync::lock(&self.state);
        let mut backlog = super::Backlog::default();
        for e in state
            .log
            .iter()
            .filter(|e| after.is_none_or(|a| e.position > a) && e.position <= until)
        {
            backlog.oldest.get_or_insert(e.recorded_at);
            backlog.events += 1;
        }
        Box::pin(std::future::ready(Ok(backlog)))
    }

    fn load_checkpoint<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        let found = crate::sync::lock(&self.state)
            .checkpoints
            .get(name)
            .copied();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn save_checkpoint<'a>(
        &'a self,
        name: &'a str,
        position: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut state = crate::sync::lock(&self.state);
        match position {
            Some(p) => state.checkpoints.insert(name.to_owned(), p),
            None => state.checkpoints.remove(name),
        };
        Box::pin(std::future::ready(Ok(())))
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
