//! Layer 5, built on a bus and a store: aggregates, whose state is the fold of their own
//! event stream (the guide's [aggregates](https://github.com/orkestra-rs/orkestra/blob/main/book/src/aggregates.md) chapter).
//!
//! Generated code declares an aggregate ([`Aggregate`]: its state, its event enum and
//! `apply`) and binds one [`Subscription`] per command with [`command_subscription`].
//! Each command then runs [`Repository::execute`]:
//!
//! 1. the stream name comes from the command's params (an empty one is a rejection);
//!    commands for one stream that reach the same [`Repository`] take turns;
//! 2. the newest snapshot (when its shape is this state's) and the events after it are
//!    folded with `apply`;
//! 3. the decide method sees that state and returns the events to append (none, or a
//!    rejection: nothing is appended);
//! 4. they are appended with [`ExpectedVersion::Exact`] (or [`ExpectedVersion::NoStream`]),
//!    each caused by the command (same correlation id, actor and source, causation id =
//!    the command id) and with an id derived from the command id and its index;
//! 5. when another writer got there first ([`StoreError::WrongExpectedVersion`]) the
//!    stream is loaded again and the decision taken again, up to `conflict_retries`
//!    times, then the command fails (the bus retries it, then dead-letters it): nothing
//!    is ever appended on a state the decision did not see;
//! 6. the appended events are published;
//! 7. the reply is `{"stream", "version", "position"}` of the last appended event (`null`
//!    version and position when nothing was appended).
//!
//! A command delivered again after its events were stored (the process died before the
//! acknowledgement, or publishing failed) is recognised, not decided twice: the events it
//! caused are found in the stream (their causation id is the command id), published again
//! and replied to. Where a snapshot hides them (taken right after them, or by a later
//! command), the derived event ids tell: a decision that appends again is refused by the
//! store ([`StoreError::DuplicateEvent`]), and one that appends nothing or rejects (it
//! saw its own effect: "already open") looks its first event up by id
//! ([`Store::version_of`]); either way the stored events are used.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::bus::{Bus, HandlerContext, Subscription};
use crate::config::PublishMode;
use crate::handler::HandlerError;
use crate::message::{Command, CommandPayload, EventEnvelope, Message, PayloadError};
use crate::store::{EventData, ExpectedVersion, RecordedEvent, Snapshot, Store, StoreError, Tag};

/// How many events one read of a stream takes while loading.
const PAGE: usize = 1024;

/// The future a decide method returns: the events to append, or why not.
pub type Decision<'a, E> = Pin<Box<dyn Future<Output = Result<Vec<E>, HandlerError>> + Send + 'a>>;

/// A decide method as a function pointer: the aggregate's implementation, the state the
/// stream folds to, the command.
pub type Decide<H, A, P> = for<'a> fn(
    &'a H,
    &'a <A as Aggregate>::State,
    &'a Command<P>,
) -> Decision<'a, <A as Aggregate>::Event>;

/// An aggregate type, as generated code declares it.
pub trait Aggregate: Send + Sync + 'static {
    /// The aggregate's name in the schema.
    const NAME: &'static str;
    /// A tag of the state's shape: snapshots with another tag are ignored.
    const SHAPE: &'static str;
    /// Save a snapshot each time a stream's length crosses a multiple of this (`None`:
    /// never).
    const SNAPSHOT_EVERY: Option<u64>;
    /// How often a command is decided again after another writer appended first.
    const CONFLICT_RETRIES: u32;
    /// The state: the fold of the stream, starting from `Default`.
    type State: Default + Clone + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The aggregate's events.
    type Event: AggregateEvent;
    /// Evolves the state by one event: pure, never fails.
    fn apply(state: &mut Self::State, event: &Self::Event);
}

/// The event enum of an aggregate: read from a stream, written as a command's events.
pub trait AggregateEvent: Sized + Send + Sync + 'static {
    /// Reads a stored event ([`RecordedEvent::decode`] of the variant its type names); a
    /// type that is not one of the aggregate's events is [`PayloadError::WrongType`].
    fn decode(recorded: &RecordedEvent) -> Result<Self, StoreError>;
    /// The topic the event is published on.
    fn topic(&self) -> &'static str;
    /// The event as caused by `command`, with id `id`, its rules checked.
    fn into_message<P: CommandPayload>(
        self,
        command: &Command<P>,
        id: String,
    ) -> Result<Message, PayloadError>;
    /// The tags the store indexes the event by: one per field its schema lists in
    /// `tags`, valued by the field's text (none by default). An empty value is an error,
    /// never a missing tag: an event a decision cannot find would break its rule.
    fn tags(&self) -> Result<Vec<Tag>, StoreError> {
        Ok(Vec::new())
    }
}

/// A stream loaded: the state, the version it is at, the events of the tail that a
/// given command caused (a redelivery), and whether a snapshot stood for the events
/// before that tail (which the tail scan then did not see).
struct Loaded<A: Aggregate> {
    state: A::State,
    version: Option<u64>,
    caused: Vec<RecordedEvent>,
    from_snapshot: bool,
}

/// What a command did to its stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed {
    /// The stream.
    pub stream: String,
    /// The version of the last event appended (`None`: nothing was appended).
    pub version: Option<u64>,
    /// Its global position.
    pub position: Option<u64>,
}

impl Executed {
    /// The command's reply: `{"stream", "version", "position"}`.
    pub fn reply(&self) -> Value {
        json!({ "stream": self.stream, "version": self.version, "position": self.position })
    }
}

/// Loads and executes on the streams of aggregate `A` in a [`Store`]. Cheap to clone;
/// clones share the per-stream queue: commands for one stream that reach the same
/// repository run one after another (in arrival order), so they never race each other
/// and publish their events in stream order. Writers elsewhere (other processes) are
/// still caught by the expected version.
pub struct Repository<A: Aggregate> {
    store: Store,
    queues: Arc<StreamQueues>,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            queues: Arc::clone(&self.queues),
            _aggregate: PhantomData,
        }
    }
}

/// One async lock per stream in use, dropped when nobody holds or waits for it.
#[derive(Default)]
struct StreamQueues(std::sync::Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>);

impl StreamQueues {
    /// Waits for the stream's turn.
    async fn enter(&self, stream: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut queues = crate::sync::lock(&self.0);
            match queues.get(stream).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    if queues.len() >= 1024 {
                        queues.retain(|_, lock| lock.strong_count() > 0);
                    }
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    queues.insert(stream.to_owned(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

impl<A: Aggregate> fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &A::NAME)
            .field("store", &self.store)
            .finish()
    }
}

pub(crate) fn fail(stream: &str, e: impl fmt::Display) -> HandlerError {
    HandlerError::fail(format!("stream {stream:?}: {e}"))
}

/// The id of the `index`-th event a command causes: the same for every delivery of it.
pub(crate) fn event_id(command_id: &str, index: usize) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f72_6b65_7374_7261_8000_6167_6772_6567);
    uuid::Uuid::new_v5(&NAMESPACE, format!("{command_id}/{index}").as_bytes()).to_string()
}

impl<A: Aggregate> Repository<A> {
    /// A repository over `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            queues: Arc::default(),
            _aggregate: PhantomData,
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The state of `stream` and its version (`None`: no event yet): the newest usable
    /// snapshot, then the events after it, folded with [`Aggregate::apply`]. An event that
    /// cannot be read is [`StoreError::Unreadable`], naming the stream and position.
    pub async fn load(&self, stream: &str) -> Result<(A::State, Option<u64>), StoreError> {
        let loaded = self.load_for(stream, None).await?;
        Ok((loaded.state, loaded.version))
    }

    /// [`load`](Self::load) without the snapshot: every event from the first.
    pub async fn replay(&self, stream: &str) -> Result<(A::State, Option<u64>), StoreError> {
        let loaded = self.fold(stream, A::State::default(), None, None).await?;
        Ok((loaded.state, loaded.version))
    }

    async fn load_for(
        &self,
        stream: &str,
        command_id: Option<&str>,
    ) -> Result<Loaded<A>, StoreError> {
        let (state, version) = match self.snapshot(stream).await {
            Some((state, version)) => (state, Some(version)),
            None => (A::State::default(), None),
        };
        let mut loaded = self.fold(stream, state, version, command_id).await?;
        loaded.from_snapshot = version.is_some();
        Ok(loaded)
    }

    /// The stored snapshot when it is this state's shape and readable; anything else
    /// (none, another shape, a failed read, unreadable JSON) means a full replay.
    async fn snapshot(&self, stream: &str) -> Option<(A::State, u64)> {
        A::SNAPSHOT_EVERY?;
        let snapshot = match self.store.load_snapshot(stream).await {
            Ok(Some(s)) if s.shape == A::SHAPE => s,
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!(orkestra = "aggregate", aggregate = A::NAME, stream, error = %e, "cannot read the snapshot; replaying the stream");
                return None;
            }
        };
        match serde_json::from_str(&snapshot.state) {
            Ok(state) => Some((state, snapshot.version)),
            Err(e) => {
                tracing::warn!(orkestra = "aggregate", aggregate = A::NAME, stream, version = snapshot.version, error = %e, "unreadable snapshot; replaying the stream");
                None
            }
        }
    }

    /// Folds the events after `version` into `state`, page by page.
    async fn fold(
        &self,
        stream: &str,
        mut state: A::State,
        mut version: Option<u64>,
        command_id: Option<&str>,
    ) -> Result<Loaded<A>, StoreError> {
        let mut caused = Vec::new();
        loop {
            let from = version.map_or(0, |v| v.saturating_add(1));
            let page = self.store.read_stream(stream, from, PAGE).await?;
            let full = page.len() == PAGE;
            for recorded in page {
                let event =
                    A::Event::decode(&recorded).map_err(|e| unreadable::<A>(&recorded, e))?;
                A::apply(&mut state, &event);
                version = Some(recorded.version());
                if command_id.is_some() && recorded.metadata().causation_id.as_deref() == command_id
                {
                    caused.push(recorded);
                }
            }
            if !full {
                return Ok(Loaded {
                    state,
                    version,
                    caused,
                    from_snapshot: false,
                });
            }
        }
    }

    /// Runs one command against `stream` (the seven steps of the module docs) and
    /// publishes on `bus` when one is given.
    pub async fn execute<H, P>(
        &self,
        stream: &str,
        command: &Command<P>,
        bus: Option<&Bus>,
        handler: &H,
        decide: Decide<H, A, P>,
    ) -> Result<Executed, HandlerError>
    where
        H: Send + Sync,
        P: CommandPayload,
    {
        let _turn = self.queues.enter(stream).await;
        let mut conflicts = 0;
        loop {
            let loaded = self
                .load_for(stream, Some(&command.id))
                .await
                .map_err(|e| fail(stream, e))?;
            if !loaded.caused.is_empty() {
                return self.redelivered(stream, loaded.caused, bus).await;
            }
            let events = match decide(handler, &loaded.state, command).await {
                Ok(events) if !events.is_empty() => events,
                // A rejection or nothing to append: on the state a snapshot gave, this may be
                // a redelivery whose events the snapshot already holds (snapshotted right
                // after them): deciding again saw its own effects. Its first event, by its
                // derived id, tells.
                outcome => {
                    if loaded.from_snapshot
                        && let Some(version) = self
                            .store
                            .version_of(stream, &event_id(&command.id, 0))
                            .await
                            .map_err(|e| fail(stream, e))?
                    {
                        let caused = self
                            .caused_from(stream, version, &command.id)
                            .await
                            .map_err(|e| fail(stream, e))?;
                        return self.redelivered(stream, caused, bus).await;
                    }
                    outcome?;
                    return Ok(Executed {
                        stream: stream.to_owned(),
                        version: None,
                        position: None,
                    });
                }
            };
            let length = loaded.version.map_or(0, |v| v.saturating_add(1));
            let added = events.len() as u64;
            let mut snapshot = A::SNAPSHOT_EVERY
                .filter(|&n| n > 0 && (length + added) / n > length / n)
                .map(|_| loaded.state.clone());
            let mut messages = Vec::with_capacity(events.len());
            let mut tags = Vec::with_capacity(events.len());
            for (index, event) in events.into_iter().enumerate() {
                if let Some(state) = snapshot.as_mut() {
                    A::apply(state, &event);
                }
                tags.push(event.tags().map_err(|e| {
                    fail(
                        stream,
                        format_args!("{} decided an event it cannot tag: {e}", A::NAME),
                    )
                })?);
                let message = event
                    .into_message(command, event_id(&command.id, index))
                    .map_err(|e| {
                        fail(
                            stream,
                            format_args!("{} decided an invalid event: {e}", A::NAME),
                        )
                    })?;
                messages.push(message);
            }
            let data = messages
                .iter()
                .zip(tags)
                .map(|(m, tags)| EventData::from_message(m).map(|d| d.with_tags(tags)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail(stream, e))?;
            let expected = loaded
                .version
                .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
            match self.store.append(stream, expected, data).await {
                Ok(appended) => {
                    if let Some(state) = snapshot {
                        self.save_snapshot(stream, appended.last_version, &state)
                            .await;
                    }
                    if let Some(bus) = bus
                        && self.store.publish_mode() == PublishMode::Direct
                    {
                        publish(stream, bus, messages).await?;
                    }
                    return Ok(Executed {
                        stream: stream.to_owned(),
                        version: Some(appended.last_version),
                        position: Some(appended.last_position),
                    });
                }
                Err(StoreError::WrongExpectedVersion { .. }) if conflicts < A::CONFLICT_RETRIES => {
                    conflicts += 1;
                    crate::metrics::conflict(A::NAME);
                    tracing::debug!(
                        orkestra = "aggregate",
                        aggregate = A::NAME,
                        stream,
                        conflicts,
                        "another writer appended first; deciding again"
                    );
                    tokio::time::sleep(conflict_backoff(conflicts)).await;
                }
                Err(StoreError::WrongExpectedVersion { .. }) => {
                    crate::metrics::conflict(A::NAME);
                    return Err(fail(
                        stream,
                        format_args!(
                            "another writer appended first {} times in a row; gave up after {} retries",
                            conflicts + 1,
                            A::CONFLICT_RETRIES
                        ),
                    ));
                }
                // Stored by an earlier delivery of this command, behind a snapshot.
                Err(StoreError::DuplicateEvent {
                    stream: stored,
                    version,
                    ..
                }) if stored == stream => {
                    let caused = self
                        .caused_from(stream, version, &command.id)
                        .await
                        .map_err(|e| fail(stream, e))?;
                    return self.redelivered(stream, caused, bus).await;
                }
                Err(e) => return Err(fail(stream, e)),
            }
        }
    }

    /// The events from `version` on that `command_id` caused.
    async fn caused_from(
        &self,
        stream: &str,
        version: u64,
        command_id: &str,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut caused = Vec::new();
        let mut from = version;
        loop {
            let page = self.store.read_stream(stream, from, PAGE).await?;
            let full = page.len() == PAGE;
            from = page.last().map_or(from, |e| e.version().saturating_add(1));
            caused.extend(
                page.into_iter()
                    .filter(|e| e.metadata().causation_id.as_deref() == Some(command_id)),
            );
            if !full {
                return Ok(caused);
            }
        }
    }

    /// A command whose events are already stored: publish them again (at least once)
    /// and reply as the first delivery did.
    async fn redelivered(
        &self,
        stream: &str,
        caused: Vec<RecordedEvent>,
        bus: Option<&Bus>,
    ) -> Result<Executed, HandlerError> {
        let last = caused.last().map(|e| (e.version(), e.position()));
        tracing::debug!(
            orkestra = "aggregate",
            aggregate = A::NAME,
            stream,
            events = caused.len(),
            "command already applied; publishing its events again"
        );
        // With the relay, the events are stored: it publishes them (again) itself.
        if let Some(bus) = bus
            && self.store.publish_mode() == PublishMode::Direct
        {
            let mut messages = Vec::with_capacity(caused.len());
            for recorded in &caused {
                let event = A::Event::decode(recorded)
                    .map_err(|e| fail(stream, unreadable::<A>(recorded, e)))?;
                let raw = recorded
                    .to_raw(event.topic())
                    .map_err(|e| fail(stream, e))?;
                messages.push(Message::from_raw_event(raw));
            }
            publish(stream, bus, messages).await?;
        }
        Ok(Executed {
            stream: stream.to_owned(),
            version: last.map(|l| l.0),
            position: last.map(|l| l.1),
        })
    }

    /// Saves a snapshot; a failure only costs the next loads time, so it is logged.
    async fn save_snapshot(&self, stream: &str, version: u64, state: &A::State) {
        let saved = match serde_json::to_string(state) {
            Ok(state) => {
                self.store
                    .save_snapshot(Snapshot {
                        stream: stream.to_owned(),
                        version,
                        shape: A::SHAPE.to_owned(),
                        state,
                    })
                    .await
            }
            Err(e) => Err(StoreError::Encode(e.to_string())),
        };
        if let Err(e) = saved {
            tracing::warn!(orkestra = "aggregate", aggregate = A::NAME, stream, version, error = %e, "cannot save a snapshot");
        }
    }
}

/// A random wait before deciding again after the `conflicts`-th lost race, up to
/// 2^conflicts ms (at most 100 ms): writers that collided spread out instead of colliding
/// again in step, so every one of them gets through within a few rounds.
pub(crate) fn conflict_backoff(conflicts: u32) -> std::time::Duration {
    let cap_us = (1_000u64 << conflicts.min(7)).min(100_000);
    let random = uuid::Uuid::new_v4().as_u128() as u64;
    std::time::Duration::from_micros(random % (cap_us + 1))
}

/// A decode failure, with the stream and version that hold the event.
fn unreadable<A: Aggregate>(recorded: &RecordedEvent, error: StoreError) -> StoreError {
    match error {
        StoreError::Decode { source, .. } => StoreError::Unreadable {
            aggregate: A::NAME,
            stream: recorded.stream().to_owned(),
            version: recorded.version(),
            position: recorded.position(),
            source: Box::new(source),
        },
        other => other,
    }
}

pub(crate) async fn publish(
    stream: &str,
    bus: &Bus,
    messages: Vec<Message>,
) -> Result<(), HandlerError> {
    for message in messages {
        bus.publish_from_handler(EventEnvelope::from_message(message))
            .await
            .map_err(|e| {
                fail(
                    stream,
                    format_args!("events stored, but publishing failed: {e}"),
                )
            })?;
    }
    Ok(())
}

/// The subscription that runs one command of aggregate `A` through
/// [`Repository::execute`]: `stream` names the stream from the command's params,
/// `decide` is the aggregate's method for the command. Generated code calls this once
/// per command.
pub fn command_subscription<A, H, P>(
    handler_name: &'static str,
    aggregate: Arc<H>,
    repository: Repository<A>,
    stream: fn(&Command<P>) -> Result<String, HandlerError>,
    decide: Decide<H, A, P>,
) -> Subscription
where
    A: Aggregate,
    H: Send + Sync + 'static,
    P: CommandPayload,
{
    Subscription::command::<P, _, _>(handler_name, move |command, ctx: HandlerContext| {
        let aggregate = Arc::clone(&aggregate);
        let repository = repository.clone();
        async move {
            let stream = stream(&command)?;
            repository
                .execute(&stream, &command, Some(ctx.bus()), &*aggregate, decide)
                .await
                .map(|done| done.reply())
        }
    })
}

/// The name of the stream a command of `aggregate` goes to, from the template's parts:
/// literal text and the command's param values (`(param name, Some(value))`). An empty
/// value is a rejection (the stream would be `account-`), never a write.
///
/// Two commands name one stream only when their values are equal: a value followed by
/// another placeholder may not run into the text that separates them. With
/// `account-{a}-{b}`, `a = "x-y", b = "z"` and `a = "x", b = "y-z"` would both name
/// `account-x-y-z`, so the first is refused (the rejection names `a`). The rule: the
/// separator's first occurrence in `value + separator` is where the value ends, which
/// the name can then be split by. The last placeholder may hold anything: the text after
/// it is the end of the name (a single `account-{id}` takes ids with dashes, as uuids).
pub fn stream_name(
    aggregate: &str,
    parts: &[(&str, Option<&dyn fmt::Display>)],
) -> Result<String, HandlerError> {
    let mut name = String::new();
    for (index, (text, value)) in parts.iter().enumerate() {
        let Some(value) = value else {
            name.push_str(text);
            continue;
        };
        let value = value.to_string();
        if value.is_empty() {
            return Err(HandlerError::reject(format!(
                "param `{text}` is empty, so the command names no {aggregate} stream"
            )));
        }
        // A separator is the literal text between this placeholder and the next one.
        if let [(separator, None), (next, Some(_)), ..] = parts.get(index + 1..).unwrap_or(&[])
            && !separator.is_empty()
            && format!("{value}{separator}").find(separator) != Some(value.len())
        {
            return Err(HandlerError::reject(format!(
                "param `{text}` is {value:?}, which runs into the `{separator}` that separates it from `{next}` in the {aggregate} stream name, so two different commands could name the same stream; use values without `{separator}`"
            )));
        }
        name.push_str(&value);
    }
    Ok(name)
}

/// Given / when / then for an aggregate: the state folded from `given` events, a
/// command decided on it, without a store or a bus.
pub struct Given<A: Aggregate, H> {
    aggregate: H,
    state: A::State,
}

impl<A: Aggregate, H: fmt::Debug> fmt::Debug for Given<A, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Given")
            .field("aggregate", &self.aggregate)
            .field("state", &self.state)
            .finish()
    }
}

impl<A: Aggregate, H: Send + Sync> Given<A, H> {
    /// The state after `events`, folded with `apply`.
    pub fn new(aggregate: H, events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::State::default();
        for event in events {
            A::apply(&mut state, &event);
        }
        Self { aggregate, state }
    }

    /// The state the given events fold to.
    pub fn state(&self) -> &A::State {
        &self.state
    }

    /// Decides `command` on the state: the events it would append, or why not.
    pub async fn when<P: CommandPayload>(
        &self,
        command: &Command<P>,
        decide: Decide<H, A, P>,
    ) -> Result<Vec<A::Event>, HandlerError> {
        decide(&self.aggregate, &self.state, command).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(template: &[(&str, Option<&str>)]) -> Result<String, HandlerError> {
        let parts: Vec<(&str, Option<&dyn fmt::Display>)> = template
            .iter()
            .map(|(text, value)| (*text, value.as_ref().map(|v| v as &dyn fmt::Display)))
            .collect();
        stream_name("Account", &parts)
    }

    fn two(a: &str, separator: &str, b: &str) -> Result<String, HandlerError> {
        name(&[
            ("account-", None),
            ("a", Some(a)),
            (separator, None),
            ("b", Some(b)),
        ])
    }

    #[test]
    fn values_that_would_name_the_same_stream_are_refused_naming_the_param() {
        assert_eq!(two("x", "-", "y-z").unwrap(), "account-x-y-z");
        let refused = two("x-y", "-", "z").unwrap_err();
        assert!(matches!(refused, HandlerError::Reject(_)), "{refused:?}");
        let reason = refused.to_string();
        assert!(
            reason.contains("param `a`") && reason.contains("`b`"),
            "{reason}"
        );
        // A value ending in part of a longer separator runs into it too: x- then -- reads
        // as x then --- .
        assert_eq!(two("x", "--", "-y").unwrap(), "account-x---y");
        assert!(two("x-", "--", "y").is_err());
        assert!(two("x--y", "--", "z").is_err());
        assert_eq!(two("x-y", "--", "z").unwrap(), "account-x-y--z");
    }

    #[test]
    fn the_last_placeholder_takes_any_value() {
        let id = "7f3c2a9e-1b4d-4c6e-9a8b-0d1e2f3a4b5c";
        assert_eq!(
            name(&[("account-", None), ("id", Some(id))]).unwrap(),
            format!("account-{id}")
        );
        assert_eq!(
            name(&[("a-", None), ("id", Some("x-y")), ("-end", None)]).unwrap(),
            "a-x-y-end"
        );
    }

    #[test]
    fn an_empty_value_is_a_rejection() {
        assert!(matches!(two("", "-", "z"), Err(HandlerError::Reject(_))));
        assert!(matches!(two("x", "-", ""), Err(HandlerError::Reject(_))));
    }

    proptest::proptest! {
        /// Accepted names are injective: two accepted value pairs that give one name are
        /// the same pair.
        #[test]
        fn accepted_names_are_injective(
            a1 in "[xy-]{1,4}", b1 in "[xy-]{1,4}", a2 in "[xy-]{1,4}", b2 in "[xy-]{1,4}",
            separator in "[-x]{1,2}",
        ) {
            if let (Ok(n1), Ok(n2)) = (two(&a1, &separator, &b1), two(&a2, &separator, &b2)) {
                proptest::prop_assert!(n1 != n2 || (a1 == a2 && b1 == b2), "{n1}: {a1}/{b1} vs {a2}/{b2}");
            }
        }
    }
}
