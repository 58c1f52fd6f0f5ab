//! Layer 5, built on a bus and a store: the relay (transactional outbox,
//! the guide's [projections and the relay](https://github.com/orkestra-rs/orkestra/blob/main/book/src/projections.md); several copies:
//! [running several copies](https://github.com/orkestra-rs/orkestra/blob/main/book/src/several-copies.md)).
//!
//! A command handler only appends (`store.publish = "relay"`); the [`Relay`] tails the
//! store's global order from its checkpoint (named `orkestra.relay` unless
//! [`Relay::with_checkpoint`] says otherwise) and publishes every event on the bus, in
//! order, saving the checkpoint after each published batch. On RabbitMQ every publish
//! waits for the broker's confirm, so an event is only counted once the broker has it.
//!
//! # One copy publishes at a time
//!
//! Every copy of a service may start the relay: it is a worker of one partition on the
//! runner keeper (`runner/keeper.rs`), and only the copy holding the partition's lease
//! publishes. The checkpoint lives with the lease (`orkestra_leases` on SQLite and
//! PostgreSQL, in memory for the memory store) and every save carries the lease's
//! fencing token: a copy that lost the lease (paused past it, cut off from the store) has
//! its save refused ([`StoreError::Fenced`]), stops publishing at once and logs it once,
//! naming the new owner. A graceful [`RunningRelay::stop`] finishes the batch in hand,
//! saves it and releases the lease, and another copy takes over within about a quarter
//! of a second; a copy that dies loses the relay when its lease ends, after which another
//! takes over within a renewal period (a third of the lease: [`Relay::with_lease`], else
//! the store's `[runners] lease`). The new owner publishes from the last saved
//! checkpoint: the events its predecessor published after it are published again, at
//! most one batch ([`Relay::with_batch`]). Delivery is at least once, and the message id
//! is the event id, so consumers can tell; nothing is skipped, and since the relay
//! publishes in global order, each stream's events go out in order.
//!
//! Upgrading: a relay whose name is new to the leases starts them at the checkpoint it
//! kept before (`orkestra_checkpoints`, [`Store::load_checkpoint`]), so an upgrade neither
//! publishes again nor skips. On a store that keeps no leases (EventStoreDB) the relay
//! runs as before, from that older checkpoint and as if alone: run one copy of it there.
//!
//! Stored events carry the topic they were appended with ([`RecordedEvent::topic`]);
//! for rows without one (appended without a topic, or by a release that did not record
//! topics) the relay asks [`Relay::with_topics`]. An event whose topic nobody knows stops
//! the relay with [`RelayError::UnknownTopic`]: it is never skipped.
//!
//! A bus error that cannot pass by waiting (an event over `bus.max_message_bytes`, one
//! that cannot be encoded) stops the relay with [`RelayError::Unpublishable`], naming
//! the event's position, stream and the reason, logged once and kept in
//! [`RunningRelay::status`]; it is not retried. The copy that stopped releases the lease,
//! so each copy that takes the relay over stops at the same event. An operator moves
//! past it deliberately with [`Relay::skip`] (`orkestra relay skip POSITION`), which
//! takes the lease itself (refused while a copy holds it) and logs what it skipped.
//! Other bus errors (the broker down, a timeout) are retried until they pass.
//!
//! The trace context recorded with an event (the span that appended it, usually its
//! command's `orkestra.command.handle`) is the parent of the relay's
//! `orkestra.event.publish`: a flow is one trace whether its events are published
//! directly or by the relay.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bus::{Bus, BusError};
use crate::message::{EventEnvelope, Message};
use crate::runner::keeper::{self, KeeperConfig, PartitionWork, RunningKeeper};
use crate::runner::partition::LeaseSettings;
use crate::store::{Lease, Leases, RecordedEvent, Store, StoreError};

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
         was the store restored from a backup? To publish everything again, reset it: \
         `store.leases().await?.reset({name:?}, 1)` (`store.save_checkpoint({name:?}, None)` on \
         a store without leases)",
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
    /// [`Relay::skip`] found the relay held by a running copy: it moves the checkpoint
    /// only while no copy publishes.
    #[error(
        "relay checkpoint {name:?} is held by {owner:?}, which may be publishing; nothing was \
         skipped: stop that copy's relay (it stops on its own at an event it cannot publish) \
         and skip again"
    )]
    Held {
        /// The checkpoint name.
        name: String,
        /// The copy holding the relay.
        owner: String,
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
            | BusError::PersonalData(_)
    )
}

/// Where a batch's checkpoint is saved.
enum SaveTo<'a> {
    /// Through the relay's lease: refused once another copy holds it. The lease may
    /// have ended by this process's clock at the instant given (a resumed process
    /// publishes nothing more).
    Lease(
        &'a Leases,
        &'a Lease,
        &'a watch::Receiver<tokio::time::Instant>,
    ),
    /// The named checkpoint of a store that keeps no leases.
    Named(&'a str),
}

/// Why publishing stopped before it was asked to.
enum Halt {
    /// Another copy holds the relay now: this one's checkpoint save was refused.
    Fenced,
    /// This process was paused past the lease (its clock says so): it publishes nothing
    /// more until the keeper has the lease again.
    Expired,
    /// An event that cannot be published: the relay stops before it.
    Failed(RelayError),
}

/// What one copy's relay shares between its handle, its supervisor and the work of the
/// partition it holds.
#[derive(Debug)]
struct Shared {
    /// The last position published and checkpointed (by this copy, or the one it took
    /// over from).
    published: watch::Sender<Option<u64>>,
    /// Whether this copy holds the relay and publishes.
    holding: AtomicBool,
    /// The error it stopped on, for [`RunningRelay::status`].
    error: Mutex<Option<String>>,
    /// The same error, for [`RunningRelay::stop`] and [`RunningRelay::wait_for`].
    failure: Mutex<Option<RelayError>>,
    /// Turns `true` when the relay stopped on an error: its supervisor stops the keeper.
    failed: watch::Sender<bool>,
}

impl Shared {
    fn new(checkpoint: Option<u64>) -> Self {
        Self {
            published: watch::Sender::new(checkpoint),
            holding: AtomicBool::new(false),
            error: Mutex::new(None),
            failure: Mutex::new(None),
            failed: watch::Sender::new(false),
        }
    }

    /// Records the error the relay stopped on (logged once, here) and tells the
    /// supervisor.
    fn fail(&self, e: RelayError) {
        tracing::error!(orkestra = "relay", error = %e, "relay stopped");
        *crate::sync::lock(&self.error) = Some(e.to_string());
        *crate::sync::lock(&self.failure) = Some(e);
        self.failed.send_replace(true);
    }
}

/// Marks this copy as publishing while it lives.
struct Holding<'a>(&'a AtomicBool);

impl<'a> Holding<'a> {
    fn new(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::SeqCst);
        Self(flag)
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Publishes every stored event on a bus, from a checkpoint, in one copy of a service
/// at a time. Configure, then [`start`](Self::start).
#[derive(Clone)]
pub struct Relay {
    store: Store,
    bus: Bus,
    checkpoint: String,
    batch: usize,
    topics: Option<Arc<TopicFn>>,
    leases: LeaseSettings,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("store", &self.store)
            .field("checkpoint", &self.checkpoint)
            .field("batch", &self.batch)
            .field("lease", &self.leases.lease)
            .field("owner", &self.leases.owner)
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
            leases: LeaseSettings::default(),
        }
    }

    /// Another checkpoint name (one per relay publishing the same store to another bus).
    /// It is also the relay's worker name in the leases and in `orkestra status`.
    #[must_use]
    pub fn with_checkpoint(mut self, name: impl Into<String>) -> Self {
        self.checkpoint = name.into();
        self
    }

    /// Events per batch: the checkpoint is saved after each published batch (at least 1).
    /// After a takeover at most one batch is published again.
    #[must_use]
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// How long the copy that publishes holds the relay without renewing (it renews every
    /// third): after it dies, the relay waits this long for another copy. The store's
    /// `[runners] lease` (10 s) unless set.
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.leases.lease = Some(lease);
        self
    }

    /// This copy's name in the leases and in `orkestra status` (`<hostname>:<pid>` unless
    /// set; each copy needs its own: two relays of one name in one process would both
    /// publish).
    #[must_use]
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.leases.owner = Some(owner.into());
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

    /// Registers the relay in the store's leases (starting at its older checkpoint when
    /// the leases do not know it yet) and starts keeping it: this copy publishes while
    /// it holds the relay's lease. Refuses a checkpoint ahead of the store's head
    /// ([`RelayError::AheadOfStore`]) and a lease out of range (more than zero, at most
    /// a day).
    pub async fn start(self) -> Result<RunningRelay, RelayError> {
        let lease = self.leases.lease(&self.store);
        if lease.is_zero() || lease > Duration::from_secs(24 * 3600) {
            return Err(StoreError::Invalid(format!(
                "relay {:?}: a lease of {lease:?} is out of range (more than zero, at most a day)",
                self.checkpoint
            ))
            .into());
        }
        if self.bus.lacks_keys_for_the_wire()
            && let Some(event) = self.store.personal_data().and_then(|p| p.events().next())
        {
            return Err(StoreError::Invalid(format!(
                "relay {:?}: the store encrypts personal fields (of {:?}, among others), and the \
                 RabbitMQ bus it publishes on has no keys to encrypt them on the wire: give it \
                 the store's with `bus.with_keys(&store)`",
                self.checkpoint,
                event.event_type()
            ))
            .into());
        }
        // Checked before registering: an older checkpoint ahead of the head is not
        // carried into the leases.
        let checkpoint = self.checkpoint().await?;
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
        let leases = self.leases_registered().await?;
        let checkpoint = match &leases {
            Some(leases) => leases.checkpoint(&self.checkpoint, 0).await?,
            None => checkpoint,
        };
        let owner = self.leases.owner();
        let name = self.checkpoint.clone();
        let shared = Arc::new(Shared::new(checkpoint));
        let gauges = Arc::new(RelayGauges {
            name: name.clone(),
            shared: shared.clone(),
            backlog: Mutex::new((0, 0.0)),
        });
        let observed: Arc<dyn crate::metrics::Observed> = gauges.clone();
        crate::metrics::register(Arc::downgrade(&observed));
        let counting = tokio::spawn(count_backlog(self.store.clone(), Arc::downgrade(&gauges)));
        let (stop, stop_rx) = watch::channel(false);
        let task = match &leases {
            Some(leases) => {
                let config = KeeperConfig {
                    worker: self.checkpoint.clone(),
                    partitions: 1,
                    owner: owner.clone(),
                    lease,
                };
                let work = Arc::new(RelayWork {
                    relay: self,
                    leases: leases.clone(),
                    shared: shared.clone(),
                });
                let keeper = keeper::start(leases.clone(), config, work).await?;
                tokio::spawn(supervise(keeper, stop_rx, shared.clone()))
            }
            None => {
                tracing::info!(
                    orkestra = "relay",
                    checkpoint = %self.checkpoint,
                    "this store keeps no leases: the relay publishes as if it were the only copy"
                );
                tokio::spawn(self.run_alone(checkpoint, stop_rx, shared.clone()))
            }
        };
        Ok(RunningRelay {
            stop,
            shared,
            name,
            owner,
            leases,
            task: Some(task),
            gauges,
            counting,
        })
    }

    /// The store's leases with this relay registered (its older checkpoint as the start
    /// when they did not know it); `None` when the store keeps no leases (EventStoreDB).
    async fn leases_registered(&self) -> Result<Option<Leases>, RelayError> {
        // `Store::leases` fails only for a store without leases.
        let Ok(leases) = self.store.leases().await else {
            return Ok(None);
        };
        let older = self.store.load_checkpoint(&self.checkpoint).await?;
        leases.register_from(&self.checkpoint, 1, older).await?;
        Ok(Some(leases))
    }

    /// The relay's checkpoint: the position of the last event published and saved, by
    /// whichever copy held the relay (the checkpoint its lease keeps; before the relay
    /// first ran with leases, the one it kept before).
    pub async fn checkpoint(&self) -> Result<Option<u64>, RelayError> {
        if let Ok(leases) = self.store.leases().await
            && let Some(record) = leases
                .list()
                .await?
                .into_iter()
                .find(|r| r.worker == self.checkpoint && r.partition == 0)
        {
            return Ok(record.checkpoint);
        }
        Ok(self.store.load_checkpoint(&self.checkpoint).await?)
    }

    /// Moves the checkpoint past the event at `position`, which must be the next one
    /// to publish, without publishing it: what an operator does, deliberately, about an
    /// event the bus refuses for good ([`RelayError::Unpublishable`]). Logged at warn
    /// with the event's id, type and stream. [`RelayError::NotNext`] when `position` is
    /// not next.
    ///
    /// It takes the relay's lease itself (a new fencing token) for the move and releases
    /// it right after, so it only moves the checkpoint while no copy publishes, and a copy
    /// that held the relay earlier can never save over it. While a copy holds the relay
    /// it is refused with [`RelayError::Held`], naming that copy: stop it first (a relay
    /// stops on its own at an unpublishable event, and gives the lease back).
    pub async fn skip(&self, position: u64) -> Result<(), RelayError> {
        let Some(leases) = self.leases_registered().await? else {
            let checkpoint = self.store.load_checkpoint(&self.checkpoint).await?;
            let event = self.next_is(checkpoint, position).await?;
            self.store
                .save_checkpoint(&self.checkpoint, Some(position))
                .await?;
            self.log_skip(&event);
            return Ok(());
        };
        // Not the owner name of any relay: a running relay's lease is never extended.
        let owner = format!("{} (relay skip)", self.leases.owner());
        let lease = match leases
            .acquire(&self.checkpoint, 0, &owner, self.leases.lease(&self.store))
            .await?
        {
            Some(lease) => lease,
            None => {
                let holder = leases.holder(&self.checkpoint, 0).await?;
                return Err(RelayError::Held {
                    name: self.checkpoint.clone(),
                    owner: holder.unwrap_or_else(|| "another copy".to_owned()),
                });
            }
        };
        let moved = async {
            let checkpoint = leases.checkpoint(&self.checkpoint, 0).await?;
            let event = self.next_is(checkpoint, position).await?;
            leases.save_checkpoint(&lease, Some(position)).await?;
            Ok::<_, RelayError>(event)
        }
        .await;
        if let Err(e) = leases.release(&lease).await {
            tracing::debug!(orkestra = "relay", checkpoint = %self.checkpoint, error = %e, "could not release the skip's lease; it expires on its own");
        }
        self.log_skip(&moved?);
        Ok(())
    }

    /// The event at `position` when it is the next after `checkpoint`.
    async fn next_is(
        &self,
        checkpoint: Option<u64>,
        position: u64,
    ) -> Result<RecordedEvent, RelayError> {
        let from = checkpoint.map_or(0, |c| c.saturating_add(1));
        match self.store.read_all(from, 1).await?.into_iter().next() {
            Some(event) if event.position() == position => Ok(event),
            other => Err(RelayError::NotNext {
                name: self.checkpoint.clone(),
                position,
                next: other.as_ref().map(RecordedEvent::position),
            }),
        }
    }

    fn log_skip(&self, event: &RecordedEvent) {
        tracing::warn!(
            orkestra = "relay",
            checkpoint = %self.checkpoint,
            position = event.position(),
            id = event.id(),
            event_type = event.event_type(),
            stream = event.stream(),
            "event skipped deliberately: the relay will not publish it"
        );
    }

    /// On a store without leases: publishes from `checkpoint` until stopped or failed.
    async fn run_alone(
        self,
        checkpoint: Option<u64>,
        mut stop: watch::Receiver<bool>,
        shared: Arc<Shared>,
    ) -> Result<(), RelayError> {
        let holding = Holding::new(&shared.holding);
        let result = self
            .tail(
                checkpoint,
                &mut stop,
                &shared,
                &SaveTo::Named(&self.checkpoint),
            )
            .await;
        drop(holding);
        match result {
            Err(Halt::Failed(e)) => {
                shared.fail(e);
                match crate::sync::lock(&shared.failure).take() {
                    Some(e) => Err(e),
                    None => Ok(()),
                }
            }
            // Without a lease nothing is fenced.
            Ok(()) | Err(Halt::Fenced | Halt::Expired) => Ok(()),
        }
    }

    /// While this copy holds the relay's `lease`: publishes from the checkpoint the lease
    /// keeps until told to stop, fenced or failed.
    async fn hold(
        self,
        leases: Leases,
        lease: Lease,
        mut stop: watch::Receiver<bool>,
        until: watch::Receiver<tokio::time::Instant>,
        shared: Arc<Shared>,
    ) {
        if *shared.failed.borrow() {
            // Stopped for good: the supervisor is stopping the keeper.
            let _ = stop.wait_for(|s| *s).await;
            return;
        }
        let checkpoint = loop {
            match leases.checkpoint(&lease.worker, lease.partition).await {
                Ok(checkpoint) => break checkpoint,
                Err(e) => {
                    tracing::warn!(orkestra = "relay", worker = %lease.worker, error = %e, "cannot read the relay's checkpoint; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        };
        let holding = Holding::new(&shared.holding);
        shared.published.send_replace(checkpoint);
        tracing::info!(
            orkestra = "relay",
            worker = %lease.worker,
            owner = %lease.owner,
            token = lease.token,
            checkpoint = ?checkpoint,
            "this copy holds the relay: publishing after its checkpoint"
        );
        let result = self
            .tail(
                checkpoint,
                &mut stop,
                &shared,
                &SaveTo::Lease(&leases, &lease, &until),
            )
            .await;
        drop(holding);
        match result {
            Ok(()) => {}
            Err(Halt::Fenced) => {
                // A stop requested first came from the keeper, which logged why.
                if !*stop.borrow() {
                    let owner = leases
                        .holder(&lease.worker, lease.partition)
                        .await
                        .ok()
                        .flatten();
                    tracing::warn!(
                        orkestra = "relay",
                        worker = %lease.worker,
                        partition = lease.partition,
                        token = lease.token,
                        new_owner = owner.as_deref().unwrap_or("none"),
                        "another copy took the relay over: this copy stopped publishing"
                    );
                }
            }
            Err(Halt::Expired) => {
                tracing::debug!(orkestra = "relay", worker = %lease.worker, "this copy was paused past the relay's lease; it publishes nothing more until it holds it again");
            }
            Err(Halt::Failed(e)) => {
                shared.fail(e);
                // Held until the supervisor stops the keeper, which then releases it:
                // the keeper must not start this partition's work again meanwhile.
                let _ = stop.wait_for(|s| *s).await;
            }
        }
    }

    /// Publishes from after `checkpoint`, saving the checkpoint per batch, until `stop`
    /// turns `true` (the batch in hand finished and saved) or it halts.
    async fn tail(
        &self,
        checkpoint: Option<u64>,
        stop: &mut watch::Receiver<bool>,
        shared: &Shared,
        save_to: &SaveTo<'_>,
    ) -> Result<(), Halt> {
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
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stop.changed() => {}
                    }
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
            let mut expired = false;
            for event in &batch {
                // Between events: a stop finishes the event in hand and saves the batch.
                if *stop.borrow() {
                    break;
                }
                if let SaveTo::Lease(_, _, until) = save_to
                    && crate::runner::keeper::expired(until)
                {
                    expired = true;
                    break;
                }
                // The runtime's own records (a process manager's steps) are not messages.
                if event.is_internal() {
                    last = Some(event.position());
                    continue;
                }
                match self.publish(event, stop).await {
                    Ok(true) => last = Some(event.position()),
                    Ok(false) => break,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if let Some(last) = last {
                self.save(save_to, last, stop).await?;
                shared.published.send_replace(Some(last));
                next = last.saturating_add(1);
            }
            if let Some(e) = failure {
                return Err(Halt::Failed(e));
            }
            if expired {
                return Err(Halt::Expired);
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

    /// Saves the checkpoint, retrying a store error (up to ten times, or once more when
    /// asked to stop): what is published but not checkpointed is only published again
    /// after a takeover or a restart. A refused save ([`StoreError::Fenced`]) halts.
    async fn save(
        &self,
        to: &SaveTo<'_>,
        last: u64,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), Halt> {
        let mut backoff = Duration::from_millis(100);
        for _ in 0..10 {
            let saved = match to {
                SaveTo::Lease(leases, lease, _) => leases.save_checkpoint(lease, Some(last)).await,
                SaveTo::Named(name) => self.store.save_checkpoint(name, Some(last)).await,
            };
            match saved {
                Ok(()) => return Ok(()),
                Err(StoreError::Fenced { .. }) => return Err(Halt::Fenced),
                Err(e) => {
                    tracing::warn!(orkestra = "relay", error = %e, position = last, "cannot save the relay checkpoint; retrying");
                    if *stop.borrow() {
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::warn!(
            orkestra = "relay",
            position = last,
            "the relay checkpoint was not saved: the events up to this position will be published again after a takeover or a restart"
        );
        Ok(())
    }
}

/// The relay's work on the keeper: its one partition, published while held.
struct RelayWork {
    relay: Relay,
    leases: Leases,
    shared: Arc<Shared>,
}

impl PartitionWork for RelayWork {
    fn run(
        &self,
        lease: Lease,
        stop: watch::Receiver<bool>,
        until: watch::Receiver<tokio::time::Instant>,
    ) -> BoxFuture<'static, ()> {
        let relay = self.relay.clone();
        let leases = self.leases.clone();
        let shared = self.shared.clone();
        Box::pin(relay.hold(leases, lease, stop, until, shared))
    }
}

/// Keeps the relay until asked to stop or until it stopped on an error, then stops the
/// keeper (the batch in hand finished, the lease released at once).
async fn supervise(
    keeper: RunningKeeper,
    mut stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
) -> Result<(), RelayError> {
    let mut failed = shared.failed.subscribe();
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        _ = failed.wait_for(|f| *f) => {}
    }
    keeper.stop().await;
    match crate::sync::lock(&shared.failure).take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cold]
fn log_publish_failure(event: &RecordedEvent, e: &BusError) {
    tracing::warn!(orkestra = "relay", id = event.id(), position = event.position(), error = %e, "cannot publish; retrying");
}

/// A started relay: this copy publishes while it holds the relay's lease.
#[derive(Debug)]
pub struct RunningRelay {
    stop: watch::Sender<bool>,
    shared: Arc<Shared>,
    /// The checkpoint (worker) name.
    name: String,
    /// This copy's owner name.
    owner: String,
    /// The store's leases (`None`: it keeps none, the relay runs alone).
    leases: Option<Leases>,
    task: Option<JoinHandle<Result<(), RelayError>>>,
    /// What the runner gauges (registered weakly: held here while it runs) and a
    /// readiness check read.
    #[cfg_attr(not(feature = "telemetry"), allow(dead_code))]
    gauges: Arc<RelayGauges>,
    /// Counts the backlog behind what was published, for the gauges.
    counting: JoinHandle<()>,
}

/// The relay's runner gauges: its lag while this copy holds it, and its failure.
#[derive(Debug)]
struct RelayGauges {
    name: String,
    shared: Arc<Shared>,
    /// Events not published yet and the oldest one's age in seconds, last counted.
    backlog: Mutex<(u64, f64)>,
}

impl crate::metrics::Observed for RelayGauges {
    fn observe(&self, into: &mut crate::metrics::Observations) {
        let holding = self.shared.holding.load(Ordering::SeqCst);
        if holding {
            let (events, age) = *crate::sync::lock(&self.backlog);
            into.lag.push((self.name.clone(), 0, events, age));
        }
        into.owned.push((self.name.clone(), u64::from(holding)));
        if let Some(error) = &*crate::sync::lock(&self.shared.error) {
            into.failed.push(format!("relay {:?}: {error}", self.name));
        }
    }
}

/// How often the relay's backlog is counted for its gauges.
const RELAY_BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// Counts the events between what the relay published and the head, while this copy
/// holds the relay, until the relay is gone.
async fn count_backlog(store: Store, gauges: std::sync::Weak<RelayGauges>) {
    loop {
        tokio::time::sleep(RELAY_BACKLOG_EVERY).await;
        let Some(g) = gauges.upgrade() else {
            return;
        };
        if !g.shared.holding.load(Ordering::SeqCst) {
            continue;
        }
        let published = *g.shared.published.borrow();
        let counted = match store.head().await {
            Ok(Some(head)) if published.is_none_or(|p| p < head) => {
                store.backlog(published, head).await.map(|b| {
                    let age = b.oldest.map_or(0.0, |t| {
                        (chrono::Utc::now() - t)
                            .to_std()
                            .unwrap_or_default()
                            .as_secs_f64()
                    });
                    (b.events, age)
                })
            }
            Ok(_) => Ok((0, 0.0)),
            Err(e) => Err(e),
        };
        match counted {
            Ok(backlog) => *crate::sync::lock(&g.backlog) = backlog,
            Err(e) => {
                tracing::debug!(orkestra = "relay", error = %e, "cannot count the backlog")
            }
        }
    }
}

/// Where a relay is: what it published, whether this copy publishes, and why it stopped
/// if it stopped on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStatus {
    /// The position of the last event published (and checkpointed) by this copy, or by
    /// the copy it took the relay over from.
    pub published: Option<u64>,
    /// The error it stopped on (an unpublishable event names its position, stream and
    /// reason); `None` while it runs.
    pub error: Option<String>,
    /// Whether this copy holds the relay and publishes (another copy does otherwise).
    pub holding: bool,
    /// This copy's name in the leases (`<hostname>:<pid>` unless
    /// [`Relay::with_owner`] set it).
    pub owner: String,
}

impl RunningRelay {
    /// What the runner gauges and a readiness check read of this relay.
    #[cfg(feature = "telemetry")]
    pub(crate) fn observed(&self) -> Arc<dyn crate::metrics::Observed> {
        self.gauges.clone()
    }

    /// What it published, whether this copy holds the relay, and the error it stopped
    /// on, if any.
    pub fn status(&self) -> RelayStatus {
        RelayStatus {
            published: self.published(),
            error: crate::sync::lock(&self.shared.error).clone(),
            holding: self.holding(),
            owner: self.owner.clone(),
        }
    }

    /// The position of the last event published (and checkpointed) by this copy, or by
    /// the copy it took the relay over from.
    pub fn published(&self) -> Option<u64> {
        *self.shared.published.borrow()
    }

    /// Whether this copy holds the relay and publishes now.
    pub fn holding(&self) -> bool {
        self.shared.holding.load(Ordering::SeqCst)
    }

    /// Waits until the event at `position` has been published, by this copy or by the
    /// one holding the relay (read from the store while this copy does not). Fails when
    /// the relay stops first (with its error).
    pub async fn wait_for(&mut self, position: u64) -> Result<(), RelayError> {
        let mut published = self.shared.published.subscribe();
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
            if !self.holding()
                && let Some(leases) = &self.leases
                && let Ok(Some(at)) = leases.checkpoint(&self.name, 0).await
                && at >= position
            {
                return Ok(());
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), published.changed()).await;
        }
    }

    /// Stops after the event in hand, saving the checkpoint, and releases the relay's
    /// lease at once (another copy takes over within about a quarter of a second); the
    /// error the relay stopped on, if it stopped on its own.
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
        self.counting.abort();
        self.stop.send_replace(true);
    }
}
