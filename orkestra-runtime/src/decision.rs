//! Layer 5, built on a bus and a store: decisions across streams (dynamic consistency
//! boundaries, dcb.events), whose state is the fold of the events matching a query of
//! types and tags rather than of one stream (the guide's
//! [decisions](https://github.com/orkestra-rs/orkestra/blob/main/book/src/decisions-store.md)
//! chapter).
//!
//! Generated code declares a decision ([`Decision`]: its command, boundary, state, read
//! events, emitted events, `apply` and `decide`) and binds it with
//! [`command_subscription`]. Each command then runs [`execute`]:
//!
//! 1. the stream and the boundary (a [`Query`]: one item per read item, its event types
//!    and the tag whose value is a param of the command) come from the command's params;
//!    an empty param is a rejection and nothing is written; every (type, tag) pair the
//!    boundary reads by must be indexed ([`Store::ensure_tags_indexed`]): events stored
//!    before their type had the tag have no index entries, so until `orkestra store
//!    reindex-tags` has run the command fails with an error saying so (the bus retries
//!    it, then dead-letters it for a replay);
//! 2. a command delivered again after its events were stored (their ids derive from the
//!    command id, as an aggregate's do) is recognised by its first event's id (looked up
//!    while step 3's first read runs, on another connection): its events are published
//!    again and replied to, never appended twice;
//! 3. the events matching the boundary are read in global order and folded with `apply`,
//!    each once (even when it matches several items), told which items it matched;
//! 4. `decide` sees that state and returns the events to append (none, or a rejection:
//!    nothing is appended; since no condition guards what is not appended, a refusal
//!    stands only once the global order has caught up with every event committed
//!    before it and the boundary gained none, else the decision is taken again);
//! 5. they are appended to the stream with their tags, each caused by the command (same
//!    correlation id, actor and source, causation id = the command id), on the condition
//!    that no event matching the boundary was stored after the last position read
//!    ([`Store::append_if`]);
//! 6. when one was ([`StoreError::WrongCondition`]), the boundary is read and the
//!    decision taken again, up to `conflict_retries` times, then the command fails with
//!    an error naming the decision and the number of tries (the bus retries it, then
//!    dead-letters it): nothing is ever appended on a state the decision did not see;
//! 7. the appended events are published (unless `store.publish = "relay"`) and the reply
//!    is `{"stream", "position"}` of the last appended event (`null` position when
//!    nothing was appended).
//!
//! A `decide` that panics is a handler failure like any other: the bus catches it,
//! retries the command and dead-letters it after the last retry.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::aggregate::{AggregateEvent, conflict_backoff, event_id, fail, publish};
use crate::bus::{Bus, HandlerContext, Subscription};
use crate::config::PublishMode;
use crate::handler::HandlerError;
use crate::message::{Command, CommandPayload, Message};
use crate::store::{
    AppendCondition, EventData, ExpectedVersion, Query, QueryItem, RecordedEvent, Store,
    StoreError, Tag,
};

/// How many events one read of the boundary takes while folding.
const PAGE: usize = 1024;

/// The future a decide method returns: the events to append, or why not.
pub type Decided<'a, E> = Pin<Box<dyn Future<Output = Result<Vec<E>, HandlerError>> + Send + 'a>>;

/// A decision, as generated code declares it (over the user's implementation, which
/// it holds and whose `decide` it calls).
pub trait Decision: Send + Sync + 'static {
    /// The decision's name in the schema.
    const NAME: &'static str;
    /// How often the command is decided again after a conflicting append.
    const CONFLICT_RETRIES: u32;
    /// Every (event type, tag key) pair its boundary reads by: the index entries it
    /// needs (events stored before a tag was added to their type have none until they
    /// are reindexed).
    const TAGS_READ: &'static [(&'static str, &'static str)];
    /// The command it decides.
    type Command: CommandPayload;
    /// The state: the fold of the boundary's events, starting from `Default`.
    type State: Default + fmt::Debug + Send + Sync + 'static;
    /// The events it reads (one variant per event type of its read items).
    type Event: Send + Sync + 'static;
    /// Which read items an event matched: one `bool` per item.
    type Reads: Copy + fmt::Debug + Send + Sync + 'static;
    /// The events it may append.
    type Emit: AggregateEvent;

    /// The stream the command's events are appended to, from its params (an empty value
    /// is a rejection).
    fn stream(command: &Command<Self::Command>) -> Result<String, HandlerError>;
    /// The consistency boundary of the command: one item per read item, in declaration
    /// order, built with [`read_item`] (an empty tag value is a rejection).
    fn boundary(command: &Command<Self::Command>) -> Result<Query, HandlerError>;
    /// Reads a stored event of one of the read types.
    fn decode(recorded: &RecordedEvent) -> Result<Self::Event, StoreError>;
    /// The type name of a read event.
    fn event_type(event: &Self::Event) -> &'static str;
    /// The tags of a read event (what the store indexes it by).
    fn event_tags(event: &Self::Event) -> Result<Vec<Tag>, StoreError>;
    /// The matched items as the generated struct: `matched[i]` is item `i`'s.
    fn reads(matched: &[bool]) -> Self::Reads;
    /// Evolves the state by one event: pure, never fails.
    fn apply(state: &mut Self::State, event: &Self::Event, matched: Self::Reads);
    /// Decides the command on the state.
    fn decide<'a>(
        &'a self,
        state: &'a Self::State,
        command: &'a Command<Self::Command>,
    ) -> Decided<'a, Self::Emit>;
}

/// The item of a boundary that reads events of `types` carrying the tag `tag` valued by
/// param `param` of the command. An empty value is a rejection (a tag needs a value; the
/// command would read nothing and decide blind), never a write.
pub fn read_item(
    decision: &str,
    types: &[&str],
    tag: &str,
    param: &str,
    value: &dyn fmt::Display,
) -> Result<QueryItem, HandlerError> {
    let value = value.to_string();
    if value.is_empty() {
        return Err(HandlerError::reject(format!(
            "param `{param}` is empty, so decision {decision} has no `{tag}` tag to read by; nothing was written"
        )));
    }
    let tag = Tag::new(tag, value)
        .map_err(|e| HandlerError::fail(format!("decision {decision}: param `{param}`: {e}")))?;
    Ok(QueryItem::types(types.iter().copied()).with_tags([tag]))
}

/// What a command did: where its events went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The stream its events were appended to.
    pub stream: String,
    /// The global position of the last event appended (`None`: nothing was appended).
    pub position: Option<u64>,
}

impl Outcome {
    /// The command's reply: `{"stream", "position"}`.
    pub fn reply(&self) -> Value {
        json!({ "stream": self.stream, "position": self.position })
    }
}

/// The state a boundary folds to and the last position read.
struct Folded<D: Decision> {
    state: D::State,
    last: Option<u64>,
}

/// Reads the boundary in global order and folds it. An event that cannot be read names
/// the decision, its stream and position.
async fn fold<D: Decision>(
    store: &Store,
    stream: &str,
    query: &Query,
) -> Result<Folded<D>, HandlerError> {
    let mut state = D::State::default();
    let mut last: Option<u64> = None;
    let mut matched = vec![false; query.items().len()];
    loop {
        let from = last.map_or(0, |p| p.saturating_add(1));
        let page = store
            .read_query(query, from, PAGE)
            .await
            .map_err(|e| fail(stream, e))?;
        let full = page.len() == PAGE;
        for recorded in page {
            let event = D::decode(&recorded).map_err(|e| {
                HandlerError::fail(format!(
                    "decision {} cannot read the event at position {} (stream {:?}, version {}): {e}",
                    D::NAME,
                    recorded.position(),
                    recorded.stream(),
                    recorded.version()
                ))
            })?;
            for (slot, item) in matched.iter_mut().zip(query.items()) {
                *slot = item.matches(recorded.event_type(), recorded.tags());
            }
            D::apply(&mut state, &event, D::reads(&matched));
            last = Some(recorded.position());
        }
        if !full {
            return Ok(Folded { state, last });
        }
    }
}

/// Runs one command of decision `D` (the seven steps of the module docs) over `store`,
/// publishing on `bus` when one is given.
pub async fn execute<D: Decision>(
    decision: &D,
    store: &Store,
    command: &Command<D::Command>,
    bus: Option<&Bus>,
) -> Result<Outcome, HandlerError> {
    let stream = D::stream(command)?;
    let stream = stream.as_str();
    let query = D::boundary(command)?;
    // Events stored before a tag was declared have no index entries: a boundary that
    // reads such a tag would miss them and decide wrongly, so the decision refuses to run
    // (a failure: retried, then dead-lettered, replayable once `orkestra store
    // reindex-tags` has run). Answered from the store's cache after the first time.
    store
        .ensure_tags_indexed(D::TAGS_READ)
        .await
        .map_err(|e| HandlerError::fail(format!("decision {}: {e}", D::NAME)))?;
    // A redelivery: the command's first event is stored under its derived id. The check
    // and the first read of the boundary are independent reads, so they run together
    // (one round trip of latency, not two); the read is dropped on a redelivery.
    let first_id = event_id(&command.id, 0);
    let (stored, first) = tokio::join!(
        store.version_of(stream, &first_id),
        fold::<D>(store, stream, &query)
    );
    if let Some(version) = stored.map_err(|e| fail(stream, e))? {
        return redelivered::<D>(store, stream, version, &command.id, bus).await;
    }
    let mut first = Some(first?);
    let mut tries: u32 = 0;
    loop {
        tries += 1;
        let folded = match first.take() {
            Some(folded) => folded,
            None => fold::<D>(store, stream, &query).await?,
        };
        let decided = decision.decide(&folded.state, command).await;
        let events = match decided {
            Ok(events) if !events.is_empty() => events,
            // A refusal or nothing to append writes nothing, so no condition guards it:
            // decide again if it saw a boundary the global order had not caught up with.
            outcome => {
                if tries <= D::CONFLICT_RETRIES
                    && !caught_up::<D>(store, stream, &query, folded.last).await?
                {
                    continue;
                }
                outcome?;
                return Ok(Outcome {
                    stream: stream.to_owned(),
                    position: None,
                });
            }
        };
        let mut messages = Vec::with_capacity(events.len());
        let mut data = Vec::with_capacity(events.len());
        for (index, event) in events.into_iter().enumerate() {
            let tags = event.tags().map_err(|e| {
                fail(
                    stream,
                    format_args!("decision {} decided an event it cannot tag: {e}", D::NAME),
                )
            })?;
            let message = event
                .into_message(command, event_id(&command.id, index))
                .map_err(|e| {
                    fail(
                        stream,
                        format_args!("decision {} decided an invalid event: {e}", D::NAME),
                    )
                })?;
            data.push(
                EventData::from_message(&message)
                    .map_err(|e| fail(stream, e))?
                    .with_tags(tags),
            );
            messages.push(message);
        }
        let condition = AppendCondition {
            fail_if_events_match: query.clone(),
            after: folded.last,
        };
        match store
            .append_if(stream, ExpectedVersion::Any, data, condition)
            .await
        {
            Ok(appended) => {
                if let Some(bus) = bus
                    && store.publish_mode() == PublishMode::Direct
                {
                    publish(stream, bus, messages).await?;
                }
                return Ok(Outcome {
                    stream: stream.to_owned(),
                    position: Some(appended.last_position),
                });
            }
            Err(StoreError::WrongCondition { .. }) if tries <= D::CONFLICT_RETRIES => {
                crate::metrics::conflict(D::NAME);
                tracing::debug!(
                    orkestra = "decision",
                    decision = D::NAME,
                    stream,
                    tries,
                    "an event of the boundary was appended meanwhile; deciding again"
                );
                tokio::time::sleep(conflict_backoff(tries)).await;
            }
            Err(e @ StoreError::WrongCondition { .. }) => {
                crate::metrics::conflict(D::NAME);
                return Err(HandlerError::fail(format!(
                    "decision {} gave up after {tries} tries ({} conflict retries): each time an event of its boundary was appended between its read and its append; last: {e}",
                    D::NAME,
                    D::CONFLICT_RETRIES
                )));
            }
            // Stored by an earlier delivery of this command (it raced this one).
            Err(StoreError::DuplicateEvent {
                stream: stored,
                version,
                ..
            }) if stored == stream => {
                return redelivered::<D>(store, stream, version, &command.id, bus).await;
            }
            Err(e) => return Err(fail(stream, e)),
        }
    }
}

/// Whether the boundary read up to `last` was all there was: waits (up to
/// [`CATCH_UP`]) for the readers' horizon to reach every event committed so far (on
/// PostgreSQL a commit joins the global order once every older transaction has ended;
/// elsewhere at once), then looks for a boundary event after `last`.
async fn caught_up<D: Decision>(
    store: &Store,
    stream: &str,
    query: &Query,
    last: Option<u64>,
) -> Result<bool, HandlerError> {
    let Some(committed) = store.recorded_head().await.map_err(|e| fail(stream, e))? else {
        return Ok(true);
    };
    if last.is_some_and(|l| l >= committed) {
        return Ok(true);
    }
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    while store
        .head()
        .await
        .map_err(|e| fail(stream, e))?
        .is_none_or(|h| h < committed)
    {
        if tokio::time::Instant::now() >= deadline {
            // An old transaction holds the horizon back: answer on what was read.
            tracing::warn!(
                orkestra = "decision",
                decision = D::NAME,
                stream,
                committed,
                "the global order has not caught up; refusing on the events read"
            );
            return Ok(true);
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let from = last.map_or(0, |l| l.saturating_add(1));
    let newer = store
        .read_query(query, from, 1)
        .await
        .map_err(|e| fail(stream, e))?;
    Ok(newer.is_empty())
}

/// How long a refusal waits for the global order to show what was committed before it.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(5);

/// A command whose events are stored from `version` of `stream` on: publish them again
/// (at least once) and reply as the first delivery did.
async fn redelivered<D: Decision>(
    store: &Store,
    stream: &str,
    version: u64,
    command_id: &str,
    bus: Option<&Bus>,
) -> Result<Outcome, HandlerError> {
    // A decision appends its events in one append, so they follow each other.
    let mut caused = Vec::new();
    let mut from = version;
    loop {
        let page = store
            .read_stream(stream, from, PAGE)
            .await
            .map_err(|e| fail(stream, e))?;
        let full = page.len() == PAGE;
        from = page.last().map_or(from, |e| e.version().saturating_add(1));
        let before = caused.len();
        caused.extend(
            page.into_iter()
                .filter(|e| e.metadata().causation_id.as_deref() == Some(command_id)),
        );
        if !full || caused.len() == before {
            break;
        }
    }
    tracing::debug!(
        orkestra = "decision",
        decision = D::NAME,
        stream,
        events = caused.len(),
        "command already decided; publishing its events again"
    );
    if let Some(bus) = bus
        && store.publish_mode() == PublishMode::Direct
    {
        let mut messages = Vec::with_capacity(caused.len());
        for recorded in &caused {
            let event = D::Emit::decode(recorded).map_err(|e| fail(stream, e))?;
            let raw = recorded
                .to_raw(event.topic())
                .map_err(|e| fail(stream, e))?;
            messages.push(Message::from_raw_event(raw));
        }
        publish(stream, bus, messages).await?;
    }
    Ok(Outcome {
        stream: stream.to_owned(),
        position: caused.last().map(RecordedEvent::position),
    })
}

/// The subscription that runs decision `D`'s command through [`execute`] over `store`.
/// Generated code calls this in the decision's binding fn.
pub fn command_subscription<D: Decision>(decision: D, store: Store) -> Subscription {
    let decision = Arc::new(decision);
    Subscription::command::<D::Command, _, _>(D::NAME, move |command, ctx: HandlerContext| {
        let decision = Arc::clone(&decision);
        let store = store.clone();
        async move {
            execute(&*decision, &store, &command, Some(ctx.bus()))
                .await
                .map(|done| done.reply())
        }
    })
}

/// Given / when / then for a decision, without a store or a bus: `when(command)` folds
/// the given events that the command's boundary matches (by type and tags, as the store
/// would select them, each told which items it matched), then decides.
pub struct Given<D: Decision> {
    decision: D,
    events: Vec<D::Event>,
}

impl<D: Decision> fmt::Debug for Given<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Given")
            .field("decision", &D::NAME)
            .field("events", &self.events.len())
            .finish()
    }
}

impl<D: Decision> Given<D> {
    /// A history of `events`, in global order.
    pub fn new(decision: D, events: impl IntoIterator<Item = D::Event>) -> Self {
        Self {
            decision,
            events: events.into_iter().collect(),
        }
    }

    /// The state the command's boundary folds to over the given events.
    pub fn state(&self, command: &Command<D::Command>) -> Result<D::State, HandlerError> {
        let query = D::boundary(command)?;
        let mut state = D::State::default();
        for event in &self.events {
            let tags = D::event_tags(event).map_err(HandlerError::fail)?;
            let matched: Vec<bool> = query
                .items()
                .iter()
                .map(|item| item.matches(D::event_type(event), &tags))
                .collect();
            if matched.contains(&true) {
                D::apply(&mut state, event, D::reads(&matched));
            }
        }
        Ok(state)
    }

    /// Decides `command` on that state: the events it would append, or why not.
    pub async fn when(&self, command: &Command<D::Command>) -> Result<Vec<D::Emit>, HandlerError> {
        let state = self.state(command)?;
        self.decision.decide(&state, command).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_item_reads_its_types_by_the_param_value() {
        let item = read_item("Seats", &["Shop.A", "Shop.B"], "course", "course_id", &"c1")
            .expect("a value");
        let tag = Tag::new("course", "c1").unwrap();
        assert!(item.matches("Shop.B", std::slice::from_ref(&tag)));
        assert!(!item.matches("Shop.C", std::slice::from_ref(&tag)));
        assert!(!item.matches("Shop.A", &[Tag::new("course", "c2").unwrap()]));
        assert!(item.matches("Shop.A", &[Tag::new("other", "x").unwrap(), tag]));
        // Numbers and other values read by their text.
        let item = read_item("Seats", &["Shop.A"], "n", "n", &42).unwrap();
        assert!(item.matches("Shop.A", &[Tag::new("n", "42").unwrap()]));
    }

    #[test]
    fn an_empty_value_is_a_rejection_naming_the_param_and_the_decision() {
        let refused = read_item("Seats", &["Shop.A"], "course", "course_id", &"").unwrap_err();
        assert!(matches!(refused, HandlerError::Reject(_)), "{refused:?}");
        let reason = refused.to_string();
        assert!(
            reason.contains("param `course_id` is empty") && reason.contains("decision Seats"),
            "{reason}"
        );
    }

    #[test]
    fn the_reply_names_the_stream_and_position() {
        let done = Outcome {
            stream: "s-1".into(),
            position: Some(7),
        };
        assert_eq!(done.reply(), json!({ "stream": "s-1", "position": 7 }));
        let nothing = Outcome {
            stream: "s-1".into(),
            position: None,
        };
        assert_eq!(
            nothing.reply(),
            json!({ "stream": "s-1", "position": null })
        );
    }
}
