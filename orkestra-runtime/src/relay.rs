//! Layer 5, built on a bus and a store: the relay (transactional outbox,
//! `design/projections.md`).
//!
//! A command handler only appends (`store.publish = "relay"`); the [`Relay`] tails the
//! store's global order from its checkpoint (`orkestra.relay`) and publishes every event
//! on the bus, in order, saving the checkpoint after each published batch. On RabbitMQ
//! every publish waits for the broker's confirm, so an event is only counted once the
//! broker has it. After a crash the events after the last checkpoint are published again:
//! delivery is at least once, and the message id is the event id, so consumers can tell.
//!
//! Stored events carry the topic they were appended with ([`RecordedEvent::topic`]);
//! for rows without one (appended without a topic, or by a release that did not record
//! topics) the relay asks [`Relay::with_topics`]. An event whose topic nobody knows stops
//! the relay with [`RelayError::UnknownTopic`]: it is never skipped.
//!
//! A bus error that cannot pass by waiting (an event over `bus.max_message_bytes`, one
//! that cannot be encoded) stops the relay with [`RelayError::Unpublishable`], naming
//! the event's position, stream and the reason, logged once and kept in
//! [`RunningRelay::status`]; it is not retried. An operator moves past it deliberately
//! with [`Relay::skip`] (`orkestra relay skip POSITION`), which logs what it skipped.
//! Other bus errors (the broker down, a timeout) are retried until they pass.
//!
//! The trace context recorded with an event (the span that appended it, usually its
//! command's `orkestra.command.handle`) is the parent of the relay's
//! `orkestra.event.publish`: a flow is one trace whether its events are published
//! directly or by the relay.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::bus::{Bus, BusError};
use crate::message::{EventEnvelope, Message};
use crate::store::{RecordedEvent, Store, StoreError};

/// The relay's checkpoint name unless [`Relay::with_checkpoint`] says otherwise.
pub const RELAY_CHECKPOINT: &str = "orkestra.relay";
/// Events read (and published before the checkpoint is saved) per batch by default.
pub const DEFAULT_RELAY_BATCH: usize = 500;

type TopicFn = dyn Fn(&RecordedEvent) -> Option<String> + Send + Sync;

/// Why the relay stopped or could not start.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored event has no recorded topic and the fallback does not know it either.
    #[error(
        "event {id} ({event_type}) at position {position} has no recorded topic and the relay's \
         fallback (Relay::with_topics) does not know one; the relay stopped before it"
    )]
    UnknownTopic {
        /// The event id.
        id: String,
        /// Its type.
        event_type: String,
        /// Its position.
        position: u64,
    },
    /// The checkpoint is beyond the store's last event (a store restored from a backup).
    #[error(
        "relay checkpoint {name:?} is at position {checkpoint}, but the store's head is {}; \
         was the store restored from a backup? Clear the checkpoint to publish everything again",
        match .head { Some(h) => format!("at position {h}"), None => "empty".to_owned() }
    )]
    AheadOfStore {
        /// The checkpoint name.
        name: String,
        /// Its position.
        checkpoint: u64,
        /// The store's head.
        head: Option<u64>,
    },
    /// The bus refused an event for good (too large, cannot be encoded): the relay
    /// stopped before it. Fix the cause, or move past it with [`Relay::skip`].
    #[error(
        "event {id} ({event_type}) of stream {stream:?} at position {position} cannot be published: \
         {reason}; the relay stopped before it (to move past it: `orkestra relay skip {position}` \
         or Relay::skip({position}))"
    )]
    Unpublishable {
        /// The event id.
        id: String,
        /// Its type.
        event_type: String,
        /// Its stream.
        stream: String,
        /// Its position.
        position: u64,
        /// Why the bus refused it.
        reason: String,
    },
    /// [`Relay::skip`] was given another position than the next event to publish.
    #[error(
        "relay checkpoint {name:?}: the next event to publish is {}, not position {position}; \
         nothing was skipped",
        match .next { Some(n) => format!("at position {n}"), None => "not there (every stored event is published)".to_owned() }
    )]
    NotNext {
        /// The checkpoint name.
        name: String,
        /// The position asked for.
        position: u64,
        /// The next event to publish.
        next: Option<u64>,
    },
    /// The relay task ended abnormally.
    #[error("the relay task ended abnormally: {0}")]
    Task(String),
}

impl RelayError {
    fn unpublishable(event: &RecordedEvent, reason: impl fmt::Display) -> Self {
        Self::Unpublishable {
            id: event.id().to_owned(),
            event_type: event.event_type().to_owned(),
            stream: event.stream().to_owned(),
            position: event.position(),
            reason: reason.to_string(),
        }
    }
}

/// Whether waiting cannot make the bus take a message it refused with `e`.
fn refused_for_good(e: &BusError) -> bool {
    matches!(
        e,
        BusError::TooLarge { .. }
            | BusError::Encode(_)
            | BusError::WrongKind(_)
            | BusError::Envelope(_)
    )
}

/// Publishes every stored event on a bus, from a checkpoint. Configure, then
/// [`start`](Self::start).
#[derive(Clone)]
pub struct Relay {
    store: Store,
    bus: Bus,
    checkpoint: String,
    batch: usize,
    topics: Option<Arc<TopicFn>>,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("store", &self.store)
            .field("checkpoint", &self.checkpoint)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay from `store` to `bus`, checkpointed as `orkestra.relay`.
    pub fn new(store: Store, bus: Bus) -> Self {
        Self {
            store,
            bus,
            checkpoint: RELAY_CHECKPOINT.to_owned(),
            batch: DEFAULT_RELAY_BATCH,
            topics: None,
        }
    }

    /// Another checkpoint name (one per relay publishing the same store to another bus).
    #[must_use]
    pub fn with_checkpoint(mut self, name: impl Into<String>) -> Self {
        self.checkpoint = name.into();
        self
    }

    /// Events per batch: the checkpoint is saved after each published batch (at least 1).
    #[must_use]
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// The topic of a stored event that has none recorded (`None`: unknown, and the relay
    /// stops there). Generated code's `<Payload>::TOPIC` constants, matched on
    /// [`RecordedEvent::event_type`], are the usual source.
    #[must_use]
    pub fn with_topics(
        mut self,
        topics: impl Fn(&RecordedEvent) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.topics = Some(Arc::new(topics));
        self
    }

    /// Starts tailing the store from the checkpoint. Refuses a checkpoint ahead of the
    /// store's head ([`RelayError::AheadOfStore`]).
    pub async fn start(self) -> Result<RunningRelay, RelayError> {
        let checkpoint = self.store.load_checkpoint(&self.checkpoint).await?;
        let head = self.store.head().await?;
        if let Some(c) = checkpoint
            && head.is_none_or(|h| c > h)
        {
            return Err(RelayError::AheadOfStore {
                name: self.checkpoint.clone(),
                checkpoint: c,
                head,
            });
        }
        let (stop, stop_rx) = watch::channel(false);
        let published = watch::Sender::new(checkpoint);
        let error = Arc::new(std::sync::Mutex::new(None));
        let run = self.run(checkpoint, stop_rx, published.clone());
        let slot = error.clone();
        let task = tokio::spawn(async move {
            let result = run.await;
            if let Err(e) = &result {
                *crate::sync::lock(&slot) = Some(e.to_string());
            }
            result
        });
        Ok(RunningRelay {
            stop,
            published,
            error,
            task: Some(task),
        })
    }

    /// Moves the checkpoint past the event at `position`, which must be the next one
    /// to publish, without publishing it: what an operator does, deliberately, about an
    /// event the bus refuses for good ([`RelayError::Unpublishable`]). Logged at warn
    /// with the event's id, type and stream. Run it while the relay is stopped (it stops
    /// itself on such an event); [`RelayError::NotNext`] when `position` is not next.
    pub async fn skip(&self, position: u64) -> Result<(), RelayError> {
        let checkpoint = self.store.load_checkpoint(&self.checkpoint).await?;
        let from = checkpoint.map_or(0, |c| c.saturating_add(1));
        let event = match self.store.read_all(from, 1).await?.into_iter().next() {
            Some(event) if event.position() == position => event,
            other => {
                return Err(RelayError::NotNext {
                    name: self.checkpoint.clone(),
                    position,
                    next: other.as_ref().map(RecordedEvent::position),
                });
            }
        };
        self.store
            .save_checkpoint(&self.checkpoint, Some(position))
            .await?;
        tracing::warn!(
            orkestra = "relay",
            checkpoint = %self.checkpoint,
            position,
            id = event.id(),
            event_type = event.event_type(),
            stream = event.stream(),
            "event skipped deliberately: the relay will not publish it"
        );
        Ok(())
    }

    async fn run(
        self,
        checkpoint: Option<u64>,
        mut stop: watch::Receiver<bool>,
        published: watch::Sender<Option<u64>>,
    ) -> Result<(), RelayError> {
        let mut next = checkpoint.map_or(0, |c| c.saturating_add(1));
        let mut changes = self.store.changes();
        let poll = self.store.poll_interval();
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let _ = changes.borrow_and_update();
            let batch = match self.store.read_all(next, self.batch).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(orkestra = "relay", error = %e, "cannot read events; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if batch.is_empty() {
                let wait = async {
                    match poll {
                        Some(p) => {
                            let _ = tokio::time::timeout(p, changes.changed()).await;
                        }
                        None => {
                            let _ = changes.changed().await;
                        }
                    }
                };
                tokio::select! {
                    () = wait => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let mut last = None;
            let mut failure = None;
            for event in &batch {
                // Between events: a stop finishes the event in hand and saves the batch.
                if *stop.borrow() {
                    break;
                }
                // The runtime's own records (a process manager's steps) are not messages.
                if event.is_internal() {
                    last = Some(event.position());
                    continue;
                }
                match self.publish(event, &stop).await {
                    Ok(true) => last = Some(event.position()),
                    Ok(false) => break,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if let Some(last) = last {
                self.save(last).await;
                published.send_replace(Some(last));
                next = last.saturating_add(1);
            }
            if let Some(e) = failure {
                // Logged once, here; the error stays in `RunningRelay::status`.
                tracing::error!(orkestra = "relay", error = %e, "relay stopped");
                return Err(e);
            }
        }
    }

    /// Publishes one event, retrying while the bus cannot take it; `Ok(false)` when asked
    /// to stop meanwhile.
    async fn publish(
        &self,
        event: &RecordedEvent,
        stop: &watch::Receiver<bool>,
    ) -> Result<bool, RelayError> {
        let topic = match event.topic() {
            Some(t) => t.to_owned(),
            None => self.topics.as_ref().and_then(|f| f(event)).ok_or_else(|| {
                RelayError::UnknownTopic {
                    id: event.id().to_owned(),
                    event_type: event.event_type().to_owned(),
                    position: event.position(),
                }
            })?,
        };
        let mut raw = event
            .to_raw(topic)
            .map_err(|e| RelayError::unpublishable(event, e))?;
        // The publish span continues the trace recorded with the event; the message then
        // carries the publish span's context, as a direct publish's does.
        let origin = raw.metadata.trace_context.take();
        let mut backoff = Duration::from_millis(100);
        loop {
            let envelope = EventEnvelope::from_message(Message::from_raw_event(raw.clone()));
            match crate::trace::continuing(origin.clone(), self.bus.publish(envelope)).await {
                Ok(_) => return Ok(true),
                Err(e) if refused_for_good(&e) => {
                    return Err(RelayError::unpublishable(event, e));
                }
                Err(e) => {
                    log_publish_failure(event, &e);
                    if *stop.borrow() {
                        return Ok(false);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Saves the checkpoint, retrying: what is published but not checkpointed is only
    /// published again after a crash.
    async fn save(&self, last: u64) {
        let mut backoff = Duration::from_millis(100);
        for _ in 0..10 {
            match self
                .store
                .save_checkpoint(&self.checkpoint, Some(last))
                .await
            {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(orkestra = "relay", error = %e, position = last, "cannot save the relay checkpoint; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[cold]
fn log_publish_failure(event: &RecordedEvent, e: &BusError) {
    tracing::warn!(orkestra = "relay", id = event.id(), position = event.position(), error = %e, "cannot publish; retrying");
}

/// A started relay.
#[derive(Debug)]
pub struct RunningRelay {
    stop: watch::Sender<bool>,
    published: watch::Sender<Option<u64>>,
    /// Why the relay stopped on its own.
    error: Arc<std::sync::Mutex<Option<String>>>,
    task: Option<tokio::task::JoinHandle<Result<(), RelayError>>>,
}

/// Where a relay is: what it published, and why it stopped if it stopped on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayStatus {
    /// The position of the last event published (and checkpointed).
    pub published: Option<u64>,
    /// The error it stopped on (an unpublishable event names its position, stream and
    /// reason); `None` while it runs.
    pub error: Option<String>,
}

impl RunningRelay {
    /// What it published, and the error it stopped on, if any.
    pub fn status(&self) -> RelayStatus {
        RelayStatus {
            published: self.published(),
            error: crate::sync::lock(&self.error).clone(),
        }
    }

    /// The position of the last event published (and checkpointed).
    pub fn published(&self) -> Option<u64> {
        *self.published.borrow()
    }

    /// Waits until the event at `position` has been published. Fails when the relay
    /// stops first (with its error).
    pub async fn wait_for(&mut self, position: u64) -> Result<(), RelayError> {
        let mut published = self.published.subscribe();
        loop {
            if published.borrow_and_update().is_some_and(|p| p >= position) {
                return Ok(());
            }
            if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                return match self.task.take() {
                    Some(task) => match task.await {
                        Ok(Ok(())) => Err(RelayError::Task("stopped".into())),
                        Ok(Err(e)) => Err(e),
                        Err(e) => Err(RelayError::Task(e.to_string())),
                    },
                    None => Err(RelayError::Task("stopped".into())),
                };
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), published.changed()).await;
        }
    }

    /// Stops after the event in hand, saving the checkpoint; the error the relay stopped
    /// on, if it stopped on its own.
    pub async fn stop(mut self) -> Result<(), RelayError> {
        self.stop.send_replace(true);
        match self.task.take() {
            Some(task) => match task.await {
                Ok(result) => result,
                Err(e) => Err(RelayError::Task(e.to_string())),
            },
            None => Ok(()),
        }
    }
}

impl Drop for RunningRelay {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}
