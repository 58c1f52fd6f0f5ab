//! Layer 5, built on the store, the handler types and the runner layer: durable
//! projections.
//!
//! A [`Projection`] is a handler of recorded events bound to a name; [`Projections`]
//! runs each one from its checkpoint (saved in the store beside the events), through the
//! global order: catch-up, then live.
//!
//! ## Partitions and copies
//!
//! A projection's events are spread over its partitions (1 unless
//! [`Projection::with_partitions`] says otherwise) by a hash of their stream, so one
//! stream's events stay in order. Each partition has its own checkpoint, held through a
//! lease in the store ([`crate::store::Leases`]): any number of copies of a service run
//! the projection, each working the partitions it holds (a fair share of them), and a
//! copy that stops or dies hands its partitions over. Every checkpoint write carries the
//! lease's fencing token and is refused once another copy holds the partition. A
//! projection without a stored checkpoint runs whole in every copy and takes no lease.
//!
//! Files: `context.rs` (what a handler receives), `runner.rs` (one partition's loop:
//! batches, retries, the fenced checkpoint), `postgres.rs` (a batch in the read model's
//! transaction), `backlog.rs` (lag for `status()`); this file binds them to the keeper.
//!
//! ## What each store guarantees
//!
//! - **PostgreSQL: exactly once.** A batch of events (`batch`, 500 by default) is handled
//!   inside one transaction, [`ProjectionContext::postgres`], which also advances the
//!   checkpoint: the read model's writes and the checkpoint commit together or not at
//!   all. When an event fails inside a batch the transaction rolls back and the batch is
//!   handled again one event per transaction, so the failing event is isolated and the
//!   ones before it are kept.
//! - **SQLite, memory, EventStoreDB: at least once.** The checkpoint is saved after the
//!   handler succeeded (after each batch, and when the projection stops): a crash in
//!   between hands the events after the last saved checkpoint to the handler again, so
//!   the handler must be idempotent (an upsert keyed by the event, or a version column).
//!
//! ## Order and failures
//!
//! One projection sees events in global position order, one at a time. A failing event
//! ([`HandlerError::Fail`], or a panic) is retried `max_retries` times with a growing
//! delay; a rejection ([`HandlerError::Reject`]) is not retried. Then the projection stops
//! in [`ProjectionState::Failed`] with the error and its checkpoint right before that
//! event: an event is never skipped. Other projections keep running; a restart resumes
//! at the failed event.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};

use crate::handler::{EventSet, HandlerError};
use crate::message::{Message, PayloadError};
use crate::runner::keeper::{self, KeeperConfig, PartitionWork, RunningKeeper};
use crate::runner::partition::LeaseSettings;
use crate::store::{Lease, Leases, RecordedEvent, Store, StoreError};

use backlog::{count_backlogs, watch_head};
use runner::{End, Outcome, Runner, check_not_ahead, remaining};

mod backlog;
mod context;
#[cfg(feature = "postgres")]
mod postgres;
mod runner;

pub use context::ProjectionContext;
pub(crate) use runner::run_caught;

/// How many events a projection handles per batch (and per transaction on PostgreSQL)
/// unless its binding says otherwise.
pub const DEFAULT_BATCH: usize = 500;
/// How many times a failing event is retried unless the binding says otherwise.
pub const DEFAULT_PROJECTION_RETRIES: u32 = 3;
/// The delay before the first retry; each further retry waits one more of it.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_millis(200);

/// A projection handler for events of type `Self::Event` (generated bindings implement
/// it over the schema's trait; hand-written ones may too).
pub trait ProjectionHandler: Send + Sync + 'static {
    /// The events it receives (a generated enum, or one `Event<D>`).
    type Event: EventSet;

    /// Handles one event.
    fn handle<'a>(
        &'a self,
        event: Self::Event,
        ctx: ProjectionContext<'a>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a;
}

/// A handler with its event type erased: decodes a recorded event (`None` when it is not
/// one of its events) and runs. Process managers feed on it too.
pub(crate) trait Erased: Send + Sync {
    fn handle<'a>(
        &'a self,
        event: &'a RecordedEvent,
        ctx: ProjectionContext<'a>,
    ) -> Option<BoxFuture<'a, Result<(), HandlerError>>>;

    /// Handles a whole batch at once, when the handler can (a process manager runs the
    /// events of different instances side by side): `Err((position, error))` when the
    /// event at `position` failed, everything before it being done; the batch is then
    /// read again from there after a pause. `None`: one event at a time.
    #[allow(clippy::type_complexity, reason = "one signature, said once")]
    fn handle_batch<'a>(
        &'a self,
        _events: &'a [RecordedEvent],
    ) -> Option<BoxFuture<'a, Result<(), (u64, HandlerError)>>> {
        None
    }

    /// The handler of one partition, when it keeps state per partition (a process
    /// manager's feed); `None`: this one serves every partition.
    fn for_partition(&self, _partition: u32) -> Option<Arc<dyn Erased>> {
        None
    }

    /// Sees an event of another partition, which it does not handle (a process manager
    /// indexes every step's timers).
    fn observe(&self, _event: &RecordedEvent) {}

    /// Every event before `next` was read and handled (or was another partition's): a
    /// process manager's timers wait for it.
    fn advanced(&self, _next: u64) {}

    /// Called on a partition's handler when this copy has taken the partition, before it
    /// works on from `checkpoint`: a handler that indexes what the partition's earlier
    /// holders recorded (a process manager's timers and instances) reads what it has not
    /// seen up to the checkpoint. Retried until it succeeds.
    fn prepare(&self, _checkpoint: Option<u64>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// What the event's partition follows: its stream, so one stream's events stay in
    /// order (a process manager partitions by instance key).
    fn partition_key<'a>(&self, event: &'a RecordedEvent) -> std::borrow::Cow<'a, str> {
        std::borrow::Cow::Borrowed(event.stream())
    }
}

struct Bound<H>(H);

impl<H: ProjectionHandler> Erased for Bound<H> {
    fn handle<'a>(
        &'a self,
        event: &'a RecordedEvent,
        ctx: ProjectionContext<'a>,
    ) -> Option<BoxFuture<'a, Result<(), HandlerError>>> {
        // A recorded topic decides as the bus would; events stored without one are
        // offered to the decoder (an event type outside the set is then skipped).
        if let Some(topic) = event.topic()
            && !H::Event::PATTERNS
                .iter()
                .any(|pattern| crate::message::topic::matches(pattern, topic))
        {
            return None;
        }
        let decoded = event
            .to_raw(event.topic().unwrap_or_default())
            .map_err(HandlerError::reject)
            .and_then(|raw| {
                match H::Event::from_message(&Message::from_raw_event(raw)) {
                    Ok(typed) => Ok(Some(typed)),
                    // Not one of this projection's events: nothing to do.
                    Err(PayloadError::WrongType { .. }) => Ok(None),
                    Err(e) => Err(HandlerError::reject(format!(
                        "event {} at position {} cannot be read: {e}",
                        event.id(),
                        event.position()
                    ))),
                }
            });
        match decoded {
            Ok(Some(typed)) => Some(Box::pin(self.0.handle(typed, ctx))),
            Ok(None) => None,
            Err(e) => Some(Box::pin(std::future::ready(Err(e)))),
        }
    }
}

/// A projection: a name (its checkpoint's), a handler and how it runs.
#[derive(Clone)]
pub struct Projection {
    name: String,
    handler: Arc<dyn Erased>,
    batch: usize,
    max_retries: u32,
    retry_delay: Duration,
    /// Whether the checkpoint is kept in the store (`false`: `checkpoint: none`).
    stored: bool,
    /// How many partitions its events are spread over (by their stream).
    partitions: u32,
}

impl fmt::Debug for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Projection")
            .field("name", &self.name)
            .field("batch", &self.batch)
            .field("max_retries", &self.max_retries)
            .field("checkpoint", &if self.stored { "store" } else { "none" })
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl Projection {
    /// Binds `handler` under `name` (the checkpoint's name: keep it stable).
    pub fn new<H: ProjectionHandler>(name: impl Into<String>, handler: H) -> Self {
        Self::raw(name, Arc::new(Bound(handler)))
    }

    /// A projection of recorded events as they are (a process manager's feed).
    pub(crate) fn raw(name: impl Into<String>, handler: Arc<dyn Erased>) -> Self {
        Self {
            name: name.into(),
            handler,
            batch: DEFAULT_BATCH,
            max_retries: DEFAULT_PROJECTION_RETRIES,
            retry_delay: DEFAULT_RETRY_DELAY,
            stored: true,
            partitions: 1,
        }
    }

    /// Spreads its events over `partitions` partitions by their stream (FNV-1a of the
    /// stream name: one stream's events stay in order in one partition), each with its
    /// own checkpoint and lease, so copies of the service share the work and one copy
    /// handles partitions side by side. From 1 (the default) to
    /// [`MAX_PARTITIONS`](crate::store::MAX_PARTITIONS); a count other than the one the
    /// store holds for it is refused at start until the projection is rebuilt.
    #[must_use]
    pub fn with_partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// How many partitions it has.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// How many events per batch (per transaction on PostgreSQL); at least 1.
    #[must_use]
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// How many times a failing event is retried before the projection stops.
    #[must_use]
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// The delay before the first retry (each further retry waits one more of it).
    #[must_use]
    pub fn with_retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// Keeps no checkpoint in the store (`checkpoint: none` in the schema), for a read
    /// model held in memory: each start handles every event from the start of the
    /// global order, those up to the head at the start with
    /// [`ProjectionContext::is_replay`] true. It never reads or writes a stored
    /// checkpoint, so other copies of it (other processes) and a checkpoint saved under
    /// the same name are left alone. [`Projections::wait_until`], which reads stored
    /// checkpoints, does not see it: use [`RunningProjections::wait_for`].
    #[must_use]
    pub fn without_checkpoint(mut self) -> Self {
        self.stored = false;
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Where a projection is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProjectionState {
    /// Handling stored events behind the head.
    CatchingUp,
    /// At the head, waiting for new events.
    Live,
    /// Stopped at an event that kept failing (the error); the checkpoint is right before it.
    Failed(String),
    /// Not running.
    Stopped,
}

/// The progress of one partition of a projection that runs in this copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectionStatus {
    /// The projection.
    pub name: String,
    /// The partition (0 for a projection of one partition).
    pub partition: u32,
    /// How many partitions the projection has.
    pub partitions: u32,
    /// This copy's name in the leases (`None`: a projection without a stored
    /// checkpoint, which takes no lease).
    pub owner: Option<String>,
    /// The last position it has handled (`None`: none yet).
    pub checkpoint: Option<u64>,
    /// The store's head when last looked at.
    pub head: Option<u64>,
    /// How many events it has still to handle up to the head (every event of the
    /// global order, its own or not), as last counted: recounted while it changes, at
    /// most every 250 ms and at most a tenth of the time (a long count waits longer).
    pub lag: u64,
    /// How long ago the oldest event it has still to handle was recorded (`None`: it is
    /// at the head).
    pub oldest_unhandled_age: Option<Duration>,
    /// Its state.
    pub state: ProjectionState,
}

/// Why a projection call did not succeed.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A checkpoint beyond the last stored event: the store was restored from an older
    /// backup (or the checkpoint belongs to another store). Nothing is handled until the
    /// checkpoint is cleared or the events are back.
    #[error(
        "projection {name:?}: its checkpoint is at position {checkpoint}, but the store's head is {}; \
         was the store restored from a backup? Rebuild the projection or restore the events",
        match .head { Some(h) => format!("at position {h}"), None => "empty".to_owned() }
    )]
    AheadOfStore {
        /// The projection.
        name: String,
        /// Its checkpoint.
        checkpoint: u64,
        /// The store's head.
        head: Option<u64>,
    },
    /// The store holds another partition count for the projection: its events were
    /// assigned to the stored count's partitions, so a new count needs a rebuild.
    #[error(
        "projection {name:?} has {stored} partitions in the store but {configured} configured; \
         changing the count needs a rebuild, which replays every event into the new partitions: \
         `orkestra projection rebuild {name} --partitions {configured}` (the next start \
         replays), or `Projections::rebuild` in the service"
    )]
    PartitionsChanged {
        /// The projection.
        name: String,
        /// The count the store holds.
        stored: u32,
        /// The count configured now.
        configured: u32,
    },
    /// No projection of that name was added.
    #[error("no projection named {0:?}")]
    Unknown(String),
    /// Two projections share a name (hence a checkpoint).
    #[error("two projections are named {0:?}; each needs its own checkpoint")]
    Duplicate(String),
    /// The projection is already running (started twice, or rebuilt while another
    /// rebuild runs).
    #[error("projection {0:?} is already running")]
    AlreadyRunning(String),
    /// The projection stopped at an event that kept failing.
    #[error("projection {name:?} failed: {error}")]
    Failed {
        /// The projection.
        name: String,
        /// The handler's last error.
        error: String,
    },
    /// The projection was stopped before it reached the position waited for.
    #[error("projection {0:?} stopped")]
    Stopped(String),
    /// The position was not reached in time.
    #[error(
        "projection {name:?} did not reach position {position} within {timeout:?} (its checkpoint is {})",
        match .checkpoint { Some(c) => c.to_string(), None => "empty".to_owned() }
    )]
    Timeout {
        /// The projection.
        name: String,
        /// The position waited for.
        position: u64,
        /// Its checkpoint when the wait gave up.
        checkpoint: Option<u64>,
        /// How long it waited.
        timeout: Duration,
    },
}

/// One projection as added: the runners of the partitions this copy works, and whether
/// it runs here.
struct Entry {
    projection: Projection,
    /// The partitions this copy works or worked (a failed or stopped one stays, to be
    /// seen in `status()`; a lost one goes), by partition. A projection without a
    /// stored checkpoint has one, partition 0, and takes no lease.
    parts: Mutex<BTreeMap<u32, Arc<Shared>>>,
    /// Whether it runs in this copy (started, or rebuilt while not started).
    running: AtomicBool,
    /// Whether its partitions are held through leases: a stored checkpoint on a store
    /// that keeps leases. Otherwise it runs whole here (EventStoreDB: by the checkpoint
    /// of its name).
    leased: bool,
}

impl Entry {
    /// How many partitions this copy may work (one without a stored checkpoint, or on
    /// a store that keeps no leases).
    fn partitions(&self) -> u32 {
        if self.leased {
            self.projection.partitions
        } else {
            1
        }
    }

    fn parts(&self) -> Vec<Arc<Shared>> {
        crate::sync::lock(&self.parts).values().cloned().collect()
    }

    fn part(&self, partition: u32) -> Option<Arc<Shared>> {
        crate::sync::lock(&self.parts).get(&partition).cloned()
    }

    fn insert(&self, shared: Arc<Shared>) {
        crate::sync::lock(&self.parts).insert(shared.partition, shared);
    }

    /// Forgets a partition's runner if it is still `shared` (not one started since).
    fn remove(&self, shared: &Arc<Shared>) {
        let mut parts = crate::sync::lock(&self.parts);
        if parts
            .get(&shared.partition)
            .is_some_and(|p| Arc::ptr_eq(p, shared))
        {
            parts.remove(&shared.partition);
        }
    }
}

/// What one partition's runner shares with [`RunningProjections`] and
/// [`Projections::rebuild`].
struct Shared {
    projection: Projection,
    partition: u32,
    owner: Option<String>,
    /// The last position handled (in memory; the store's checkpoint may trail it by a
    /// batch on stores without transactions).
    handled: watch::Sender<Option<u64>>,
    state: Mutex<ProjectionState>,
    /// Requests to the running runner.
    control: Mutex<Option<mpsc::UnboundedSender<Control>>>,
    /// The backlog last counted, for `status()`.
    backlog: Mutex<Option<CountedBacklog>>,
}

impl Shared {
    fn new(projection: Projection, partition: u32, owner: Option<String>) -> Self {
        Self {
            projection,
            partition,
            owner,
            handled: watch::Sender::new(None),
            state: Mutex::new(ProjectionState::Stopped),
            control: Mutex::new(None),
            backlog: Mutex::new(None),
        }
    }

    fn set_state(&self, state: ProjectionState) {
        *crate::sync::lock(&self.state) = state;
    }

    fn state(&self) -> ProjectionState {
        crate::sync::lock(&self.state).clone()
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Projection")
            .field("name", &self.projection.name)
            .field("partition", &self.partition)
            .field("handled", &*self.handled.borrow())
            .finish_non_exhaustive()
    }
}

/// A backlog as counted for a checkpoint and a head.
struct CountedBacklog {
    checkpoint: Option<u64>,
    head: u64,
    backlog: crate::store::Backlog,
    at: Instant,
    /// How long the count took: a long backlog is counted less often.
    took: Duration,
}

enum Control {
    Rebuild(oneshot::Sender<Result<(), ProjectionError>>),
}

/// A set of projections over one store.
#[derive(Clone)]
pub struct Projections {
    store: Store,
    entries: Vec<Arc<Entry>>,
    duplicate: Option<String>,
    leases: LeaseSettings,
}

impl fmt::Debug for Projections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Projections")
            .field("store", &self.store)
            .field(
                "projections",
                &self
                    .entries
                    .iter()
                    .map(|e| &e.projection.name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn partitions_changed(name: &str, error: StoreError) -> ProjectionError {
    match error {
        StoreError::PartitionsChanged {
            stored, configured, ..
        } => ProjectionError::PartitionsChanged {
            name: name.to_owned(),
            stored,
            configured,
        },
        other => other.into(),
    }
}

impl Projections {
    /// No projections yet, over `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            entries: Vec::new(),
            duplicate: None,
            leases: LeaseSettings::default(),
        }
    }

    /// How long this copy holds each partition it works without renewing (it renews
    /// every third): after a copy dies, its partitions wait this long for another. The
    /// store's `[runners] lease` (10 s) unless set.
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.leases.lease = Some(lease);
        self
    }

    /// This copy's name in the leases and in `orkestra status` (`<hostname>:<pid>` unless
    /// set; each copy needs its own).
    #[must_use]
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.leases.owner = Some(owner.into());
        self
    }

    /// Adds a projection (a name used twice is reported by [`start`](Self::start)).
    #[must_use]
    #[allow(
        clippy::should_implement_trait,
        reason = "the builder step's name in the guide; not arithmetic"
    )]
    pub fn add(mut self, projection: Projection) -> Self {
        if self
            .entries
            .iter()
            .any(|e| e.projection.name == projection.name)
        {
            self.duplicate.get_or_insert(projection.name.clone());
        }
        let leased = projection.stored && self.store.keeps_leases();
        if projection.stored && !leased && projection.partitions > 1 {
            tracing::warn!(orkestra = "projection", projection = %projection.name, adapter = self.store.adapter(), partitions = projection.partitions, "this store keeps no leases: the projection runs as one partition in each copy; run one copy of it");
        }
        self.entries.push(Arc::new(Entry {
            projection,
            parts: Mutex::new(BTreeMap::new()),
            running: AtomicBool::new(false),
            leased,
        }));
        self
    }

    fn entry(&self, name: &str) -> Result<&Arc<Entry>, ProjectionError> {
        self.entries
            .iter()
            .find(|e| e.projection.name == name)
            .ok_or_else(|| ProjectionError::Unknown(name.to_owned()))
    }

    /// Starts every projection: each one with a stored checkpoint runs the partitions
    /// this copy holds (all of them when it is alone; a fair share beside other copies),
    /// each from its checkpoint, catch-up then live; one without runs here whole, from
    /// the start. Refuses to start when a name is used twice, a projection is already
    /// running, the store holds another partition count for one
    /// ([`ProjectionError::PartitionsChanged`]), or a checkpoint is ahead of the store's
    /// head ([`ProjectionError::AheadOfStore`]).
    pub async fn start(&self) -> Result<RunningProjections, ProjectionError> {
        if let Some(name) = &self.duplicate {
            return Err(ProjectionError::Duplicate(name.clone()));
        }
        for entry in &self.entries {
            if entry.running.load(Ordering::SeqCst) {
                return Err(ProjectionError::AlreadyRunning(
                    entry.projection.name.clone(),
                ));
            }
        }
        let head = self.store.head().await?;
        let stored = self.entries.iter().any(|e| e.leased);
        let leases = match stored {
            true => Some(self.store.leases().await?),
            false => None,
        };
        if let Some(leases) = &leases {
            for entry in self.entries.iter().filter(|e| e.leased) {
                let name = &entry.projection.name;
                // A projection that kept one checkpoint before it had partitions: every
                // event up to it was handled, whatever its partition.
                let legacy = self.store.load_checkpoint(name).await?;
                leases
                    .register_from(name, entry.projection.partitions, legacy)
                    .await
                    .map_err(|e| partitions_changed(name, e))?;
            }
            // The head read after the checkpoints: other copies move them on meanwhile,
            // every position they save having been below a head they read before.
            let records = leases.list().await?;
            let head = self.store.head().await?;
            for record in records {
                if self
                    .entries
                    .iter()
                    .any(|e| e.leased && e.projection.name == record.worker)
                {
                    check_not_ahead(&record.worker, record.checkpoint, head)?;
                }
            }
        }
        let (stop, _) = watch::channel(false);
        let head_tx = watch::Sender::new(head);
        let (owner, lease) = (self.leases.owner(), self.leases.lease(&self.store));
        let mut tasks = Vec::new();
        let mut keepers = Vec::new();
        for entry in &self.entries {
            entry.running.store(true, Ordering::SeqCst);
            crate::sync::lock(&entry.parts).clear();
            match &leases {
                Some(leases) if entry.leased => {
                    let work = PartitionRun {
                        store: self.store.clone(),
                        leases: leases.clone(),
                        entry: entry.clone(),
                        head: head_tx.clone(),
                    };
                    let config = KeeperConfig {
                        worker: entry.projection.name.clone(),
                        partitions: entry.projection.partitions,
                        owner: owner.clone(),
                        lease,
                    };
                    match keeper::start(leases.clone(), config, Arc::new(work)).await {
                        Ok(k) => keepers.push(k),
                        Err(e) => {
                            for k in keepers {
                                k.stop().await;
                            }
                            stop.send_replace(true);
                            for e in &self.entries {
                                e.running.store(false, Ordering::SeqCst);
                            }
                            return Err(partitions_changed(&entry.projection.name, e));
                        }
                    }
                }
                _ => {
                    let (checkpoint, replay_until) = match entry.projection.stored {
                        // A store without leases: from the checkpoint of its name.
                        true => self.local_start(entry, head).await?,
                        // From the start, the history up to the head being a replay.
                        false => (None, head),
                    };
                    let shared = Arc::new(Shared::new(entry.projection.clone(), 0, None));
                    let (control_tx, control_rx) = mpsc::unbounded_channel();
                    *crate::sync::lock(&shared.control) = Some(control_tx);
                    shared.handled.send_replace(checkpoint);
                    shared.set_state(ProjectionState::CatchingUp);
                    entry.insert(shared.clone());
                    let mut runner = Runner::new(self.store.clone(), shared, head_tx.clone(), None);
                    runner.replay_until = replay_until;
                    let entry = entry.clone();
                    let stop = stop.subscribe();
                    tasks.push(tokio::spawn(async move {
                        runner.run(checkpoint, stop, control_rx).await;
                        entry.running.store(false, Ordering::SeqCst);
                    }));
                }
            }
        }
        // A copy alone holds every partition once its keeper has looked: `status()` and
        // `wait_for` see them from here on.
        for k in &keepers {
            k.first_round().await;
        }
        count_backlogs(&self.store, &self.entries, head).await;
        let head_task = tokio::spawn(watch_head(
            self.store.clone(),
            head_tx.clone(),
            self.entries.clone(),
        ));
        let gauges = Arc::new(Gauges {
            entries: self.entries.clone(),
            head: head_tx.subscribe(),
        });
        let observed: Arc<dyn crate::metrics::Observed> = gauges.clone();
        crate::metrics::register(Arc::downgrade(&observed));
        Ok(RunningProjections {
            store: self.store.clone(),
            entries: self.entries.clone(),
            stop,
            tasks,
            keepers,
            head_task,
            gauges,
        })
    }

    /// Where a stored projection over a store without leases starts: its checkpoint by
    /// name, and the target of a rebuild a crash interrupted.
    async fn local_start(
        &self,
        entry: &Entry,
        head: Option<u64>,
    ) -> Result<(Option<u64>, Option<u64>), ProjectionError> {
        let name = &entry.projection.name;
        let checkpoint = self.store.load_checkpoint(name).await?;
        check_not_ahead(name, checkpoint, head)?;
        let until = self
            .store
            .load_replay_until(name)
            .await?
            .filter(|&until| checkpoint.is_none_or(|c| c < until));
        if let Some(until) = until {
            tracing::info!(orkestra = "projection", projection = %name, checkpoint, until, "rebuild resumed");
        }
        Ok((checkpoint, until))
    }

    /// Replays a projection from the start: every event up to the current head is
    /// handled again with [`ProjectionContext::is_replay`] true. Returns once the
    /// replay reached that head. Progress (events done, total, rate) is logged at most
    /// once a second.
    ///
    /// With a stored checkpoint, every partition's checkpoint goes back to none and
    /// every lease ends (whichever copy held a partition is fenced: it writes nothing
    /// more), with the partition count now configured, so a rebuild is also how a
    /// projection changes its count; the copies running it replay their partitions,
    /// and when none runs it this call runs it until the replay is done. Without a
    /// stored checkpoint the replay happens in this copy, running or not.
    pub async fn rebuild(&self, name: &str) -> Result<(), ProjectionError> {
        let entry = self.entry(name)?;
        if entry.leased {
            return self.rebuild_stored(entry).await;
        }
        if let Some(shared) = entry.part(0) {
            let control = crate::sync::lock(&shared.control).clone();
            if let Some(control) = control {
                let (reply, done) = oneshot::channel();
                if control.send(Control::Rebuild(reply)).is_ok()
                    && let Ok(result) = done.await
                {
                    return result;
                }
                return Err(ProjectionError::Stopped(name.to_owned()));
            }
        }
        // Not running: replay here, then stop.
        if entry.running.swap(true, Ordering::SeqCst) {
            return Err(ProjectionError::AlreadyRunning(name.to_owned()));
        }
        let shared = Arc::new(Shared::new(entry.projection.clone(), 0, None));
        entry.insert(shared.clone());
        let result = async {
            let head = self.store.head().await?;
            let mut runner = Runner::new(
                self.store.clone(),
                shared.clone(),
                watch::Sender::new(head),
                None,
            );
            runner.start_replay(head).await?;
            let (_stop_tx, stop) = watch::channel(false);
            let mut next = 0;
            while let Some(until) = runner.replay_until {
                let batch = self
                    .store
                    .read_all(next, entry.projection.batch.min(remaining(next, until)))
                    .await?;
                if batch.is_empty() {
                    runner.replay_done();
                    break;
                }
                match runner.handle_batch(&batch, &stop).await {
                    Outcome::Done(last) => next = last.saturating_add(1),
                    Outcome::Failed(error) | Outcome::Retry(error) => {
                        return Err(ProjectionError::Failed {
                            name: name.to_owned(),
                            error,
                        });
                    }
                    Outcome::Store(e) => return Err(e.into()),
                    // Without a lease nothing expires.
                    Outcome::Expired => return Err(ProjectionError::Stopped(name.to_owned())),
                }
                runner.after_batch(next);
            }
            Ok(())
        }
        .await;
        entry.running.store(false, Ordering::SeqCst);
        if let Err(ProjectionError::Failed { error, .. }) = &result {
            shared.set_state(ProjectionState::Failed(error.clone()));
        } else {
            shared.set_state(ProjectionState::Stopped);
        }
        result
    }

    /// Sets projection `name` up to be rebuilt with `partitions` partitions, from any
    /// process sharing the store (`orkestra projection rebuild`): every partition's
    /// checkpoint goes back to none and every lease ends (whichever copy held a
    /// partition is fenced), and the store's head is the rebuild's target, so the copies
    /// running it, or the next to start it, replay every event up to that head with
    /// [`ProjectionContext::is_replay`] true. Also how its partition count changes.
    /// Returns the target (`None`: an empty store).
    pub async fn prepare_rebuild(
        store: &Store,
        name: &str,
        partitions: u32,
    ) -> Result<Option<u64>, ProjectionError> {
        let leases = store.leases().await?;
        let head = store.head().await?;
        // The target first: a partition taken after the reset replays up to it.
        store.save_replay(name, None, head).await?;
        leases.reset(name, partitions).await?;
        tracing::info!(orkestra = "projection", projection = %name, head, partitions, "rebuild started");
        Ok(head)
    }

    /// A rebuild of a projection whose checkpoints are in the store's leases.
    async fn rebuild_stored(&self, entry: &Arc<Entry>) -> Result<(), ProjectionError> {
        let name = &entry.projection.name;
        let head = Self::prepare_rebuild(&self.store, name, entry.projection.partitions).await?;
        // This copy's runners of it are fenced now: let them go at once rather than at
        // their next write, so the keeper takes their partitions afresh.
        for shared in entry.parts() {
            entry.remove(&shared);
            let control = crate::sync::lock(&shared.control).clone();
            if let Some(control) = control {
                let (reply, _) = oneshot::channel();
                let _ = control.send(Control::Rebuild(reply));
            }
        }
        let Some(head) = head else {
            return Ok(());
        };
        if entry.running.load(Ordering::SeqCst) {
            return wait_partitions(&self.store, entry, head, None).await;
        }
        // Nobody here runs it: run it alone until the replay is done.
        let alone = Projections {
            store: self.store.clone(),
            entries: Vec::new(),
            duplicate: None,
            leases: self.leases.clone(),
        }
        .add(entry.projection.clone());
        let running = alone.start().await?;
        let result = running.wait_for(name, head).await;
        running.stop().await?;
        result
    }

    /// The position projection `name` has handled in every partition (the lowest of its
    /// partitions' checkpoints), read from the store: `None` before it handled any. A
    /// projection that has not run since it had partitions has its checkpoint of
    /// before, which its first start carries into every partition.
    pub async fn checkpoint(store: &Store, name: &str) -> Result<Option<u64>, ProjectionError> {
        Ok(stored_checkpoint(store, name).await?)
    }

    /// Waits until the projection `name` has handled `position` in every partition,
    /// reading the checkpoints from the store: works from any process sharing the store.
    /// On stores without transactions the checkpoint is saved once per batch, so it may
    /// trail the projection by up to a batch until that batch ends.
    pub async fn wait_until(
        store: &Store,
        name: &str,
        position: u64,
        timeout: Duration,
    ) -> Result<(), ProjectionError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = store.changes();
        loop {
            let checkpoint = stored_checkpoint(store, name).await?;
            if checkpoint.is_some_and(|c| c >= position) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProjectionError::Timeout {
                    name: name.to_owned(),
                    position,
                    checkpoint,
                    timeout,
                });
            }
            // Checkpoints send no change notice: poll, waking early on new events.
            let _ = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(25)),
                changes.changed(),
            )
            .await;
        }
    }
}

/// The position every partition of `name` has handled (the lowest of their
/// checkpoints), from the leases; a projection not in them yet has its checkpoint from
/// before partitions, if any.
async fn stored_checkpoint(store: &Store, name: &str) -> Result<Option<u64>, StoreError> {
    let leases = match store.leases().await {
        Ok(leases) => leases,
        Err(StoreError::Invalid(_)) => return store.load_checkpoint(name).await,
        Err(e) => return Err(e),
    };
    let records: Vec<_> = leases
        .list()
        .await?
        .into_iter()
        .filter(|r| r.worker == name)
        .collect();
    if records.is_empty() {
        return store.load_checkpoint(name).await;
    }
    Ok(records.iter().map(|r| r.checkpoint).min().flatten())
}

/// Waits until every partition of `entry` has handled `position`: those this copy
/// works seen in memory, the others through the store. Fails when one of this copy's
/// fails, or when it stops running here (or at `deadline`, as a timeout).
async fn wait_partitions(
    store: &Store,
    entry: &Entry,
    position: u64,
    deadline: Option<(tokio::time::Instant, Duration)>,
) -> Result<(), ProjectionError> {
    let name = &entry.projection.name;
    let mut leases = None;
    loop {
        let mut lowest: Option<Option<u64>> = None;
        let mut missing = Vec::new();
        let mut waiting_on = None;
        for partition in 0..entry.partitions() {
            match entry.part(partition) {
                Some(shared) => {
                    match shared.state() {
                        ProjectionState::Failed(error) => {
                            return Err(ProjectionError::Failed {
                                name: name.clone(),
                                error,
                            });
                        }
                        ProjectionState::Stopped if !entry.running.load(Ordering::SeqCst) => {
                            return Err(ProjectionError::Stopped(name.clone()));
                        }
                        _ => {}
                    }
                    let handled = *shared.handled.borrow();
                    if handled.is_none_or(|h| h < position) {
                        waiting_on.get_or_insert(shared.handled.subscribe());
                    }
                    lowest = Some(lowest.map_or(handled, |l| l.min(handled)));
                }
                None => missing.push(partition),
            }
        }
        if !entry.running.load(Ordering::SeqCst) && entry.parts().is_empty() {
            return Err(ProjectionError::Stopped(name.clone()));
        }
        if waiting_on.is_none() {
            if missing.is_empty() {
                return Ok(());
            }
            // Partitions other copies work: their checkpoints are in the store.
            if leases.is_none() {
                leases = Some(store.leases().await?);
            }
            let Some(leases) = &leases else {
                unreachable!("set above")
            };
            let mut behind = false;
            for partition in missing {
                let checkpoint = leases.checkpoint(name, partition).await?;
                lowest = Some(lowest.map_or(checkpoint, |l| l.min(checkpoint)));
                behind |= checkpoint.is_none_or(|c| c < position);
            }
            if !behind {
                return Ok(());
            }
        }
        if let Some((at, timeout)) = deadline
            && tokio::time::Instant::now() >= at
        {
            return Err(ProjectionError::Timeout {
                name: name.clone(),
                position,
                checkpoint: lowest.flatten(),
                timeout,
            });
        }
        // State changes and other copies' checkpoints send no notice: look again soon.
        let pause = Duration::from_millis(if waiting_on.is_some() { 100 } else { 25 });
        match waiting_on {
            Some(mut handled) => {
                let _ = tokio::time::timeout(pause, handled.changed()).await;
            }
            None => tokio::time::sleep(pause).await,
        }
    }
}

/// The work of one partition of a projection with a stored checkpoint, as the keeper
/// runs it while this copy holds the partition's lease.
struct PartitionRun {
    store: Store,
    leases: Leases,
    entry: Arc<Entry>,
    head: watch::Sender<Option<u64>>,
}

impl PartitionWork for PartitionRun {
    fn run(
        &self,
        lease: Lease,
        mut stop: watch::Receiver<bool>,
        deadline: watch::Receiver<tokio::time::Instant>,
    ) -> BoxFuture<'static, ()> {
        let shared = Arc::new(Shared::new(
            self.entry.projection.clone(),
            lease.partition,
            Some(lease.owner.clone()),
        ));
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        *crate::sync::lock(&shared.control) = Some(control_tx);
        shared.set_state(ProjectionState::CatchingUp);
        self.entry.insert(shared.clone());
        let (store, leases, entry, head) = (
            self.store.clone(),
            self.leases.clone(),
            self.entry.clone(),
            self.head.clone(),
        );
        Box::pin(async move {
            let name = shared.projection.name.clone();
            let start = loop {
                let read = async {
                    let checkpoint = leases.checkpoint(&name, lease.partition).await?;
                    let until = store
                        .load_replay_until(&name)
                        .await?
                        .filter(|&until| checkpoint.is_none_or(|c| c < until));
                    Ok::<_, StoreError>((checkpoint, until))
                };
                match read.await {
                    Ok(start) => break Some(start),
                    Err(e) => {
                        tracing::warn!(orkestra = "projection", projection = %name, partition = lease.partition, error = %e, "cannot read the partition's checkpoint; retrying");
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.wait_for(|s| *s) => break None,
                }
            };
            let Some((checkpoint, until)) = start else {
                shared.set_state(ProjectionState::Stopped);
                return;
            };
            if let Some(until) = until {
                tracing::info!(orkestra = "projection", projection = %name, partition = lease.partition, checkpoint, until, "rebuild resumed");
            }
            shared.handled.send_replace(checkpoint);
            let partition = lease.partition;
            let mut runner = Runner::new(store, shared.clone(), head, Some((leases, lease)));
            loop {
                match runner.handler.prepare(checkpoint).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(orkestra = "projection", projection = %name, partition, error = %e, "cannot read what the partition's earlier holders recorded; retrying");
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.wait_for(|s| *s) => {
                        shared.set_state(ProjectionState::Stopped);
                        return;
                    }
                }
            }
            runner.until = Some(deadline);
            runner.replay_until = until;
            match runner.run(checkpoint, stop.clone(), control_rx).await {
                End::Lost => entry.remove(&shared),
                // A failed partition stays held, and seen failed, until this copy stops
                // or loses it: another copy would only fail on the same event.
                End::Failed => {
                    let _ = stop.wait_for(|s| *s).await;
                }
                // Handed over while the projection runs on here: no longer this copy's.
                // (Stopping the projection keeps it, seen stopped.)
                End::Stopped => {
                    if entry.running.load(Ordering::SeqCst) {
                        entry.remove(&shared);
                    }
                }
            }
        })
    }
}

/// Which partitions of one projection this copy works now (a process manager's timers
/// fire for those only).
#[derive(Clone)]
pub(crate) struct Holding(Arc<Entry>);

impl Holding {
    /// Whether this copy works `partition` now (held, and neither failed nor stopped).
    pub(crate) fn holds(&self, partition: u32) -> bool {
        self.0.part(partition).is_some_and(|s| {
            matches!(
                s.state(),
                ProjectionState::CatchingUp | ProjectionState::Live
            )
        })
    }
}

/// The partitions this copy works, as `status()`, the runner gauges and readiness read
/// them.
struct Gauges {
    entries: Vec<Arc<Entry>>,
    head: watch::Receiver<Option<u64>>,
}

impl Gauges {
    fn status(&self) -> Vec<ProjectionStatus> {
        let head = *self.head.borrow();
        let mut statuses = Vec::new();
        for entry in &self.entries {
            for e in entry.parts() {
                let checkpoint = *e.handled.borrow();
                // The head is refreshed on its own; a projection can be ahead of the last
                // reading, never behind what it handled.
                let head = match (head, checkpoint) {
                    (Some(h), Some(c)) => Some(h.max(c)),
                    (h, c) => h.or(c),
                };
                let behind = head.is_some_and(|h| checkpoint.is_none_or(|c| c < h));
                let (lag, oldest_unhandled_age) = match &*crate::sync::lock(&e.backlog) {
                    Some(counted) if behind => (
                        counted.backlog.events,
                        counted
                            .backlog
                            .oldest
                            .map(|t| (chrono::Utc::now() - t).to_std().unwrap_or_default()),
                    ),
                    _ => (0, None),
                };
                statuses.push(ProjectionStatus {
                    name: e.projection.name.clone(),
                    partition: e.partition,
                    partitions: entry.partitions(),
                    owner: e.owner.clone(),
                    checkpoint,
                    head,
                    lag,
                    oldest_unhandled_age,
                    state: e.state(),
                });
            }
        }
        statuses
    }
}

impl crate::metrics::Observed for Gauges {
    fn observe(&self, into: &mut crate::metrics::Observations) {
        let statuses = self.status();
        for entry in &self.entries {
            let name = &entry.projection.name;
            let mut owned = 0;
            for s in statuses.iter().filter(|s| &s.name == name) {
                match &s.state {
                    ProjectionState::CatchingUp | ProjectionState::Live => {
                        owned += 1;
                        let age = s.oldest_unhandled_age.unwrap_or_default();
                        into.lag
                            .push((name.clone(), s.partition, s.lag, age.as_secs_f64()));
                    }
                    ProjectionState::Failed(reason) => into.failed.push(format!(
                        "projection {name:?} partition {}: {reason}",
                        s.partition
                    )),
                    ProjectionState::Stopped => {}
                }
            }
            into.owned.push((name.clone(), owned));
        }
    }
}

/// Running projections: their status, read-your-writes waits, and `stop`.
pub struct RunningProjections {
    store: Store,
    entries: Vec<Arc<Entry>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    keepers: Vec<RunningKeeper>,
    head_task: tokio::task::JoinHandle<()>,
    /// What `status()` and the runner gauges read.
    gauges: Arc<Gauges>,
}

impl fmt::Debug for RunningProjections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningProjections")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl RunningProjections {
    /// The partitions this copy works (every partition when it is alone), in the order
    /// the projections were added, then by partition: each one's checkpoint, the head,
    /// the lag and the state. `runners::status` shows every copy's.
    pub fn status(&self) -> Vec<ProjectionStatus> {
        self.gauges.status()
    }

    /// What the runner gauges and a readiness check read of these projections.
    pub(crate) fn observed(&self) -> Arc<dyn crate::metrics::Observed> {
        self.gauges.clone()
    }

    /// Waits until projection `name` has handled `position` in every partition
    /// (read-your-writes: pass the `last_position` of an append); partitions other
    /// copies work are read from the store. Fails when one of this copy's partitions
    /// fails, or the projection stops here first.
    pub async fn wait_for(&self, name: &str, position: u64) -> Result<(), ProjectionError> {
        let entry = self
            .entries
            .iter()
            .find(|e| e.projection.name == name)
            .ok_or_else(|| ProjectionError::Unknown(name.to_owned()))?;
        wait_partitions(&self.store, entry, position, None).await
    }

    /// Which partitions of projection `name` this copy works, as they change.
    pub(crate) fn holding(&self, name: &str) -> Option<Holding> {
        self.entries
            .iter()
            .find(|e| e.projection.name == name)
            .map(|e| Holding(e.clone()))
    }

    /// Stops every projection: each partition finishes the event in hand, saves its
    /// checkpoint and releases its lease at once (another copy takes it within about
    /// 250 ms).
    pub async fn stop(mut self) -> Result<(), ProjectionError> {
        for entry in &self.entries {
            entry.running.store(false, Ordering::SeqCst);
        }
        self.stop.send_replace(true);
        for keeper in std::mem::take(&mut self.keepers) {
            keeper.stop().await;
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        self.head_task.abort();
        Ok(())
    }
}

impl Drop for RunningProjections {
    fn drop(&mut self) {
        // Dropped without `stop`: the runners stop at their next event, and the keepers
        // release their leases.
        self.stop.send_replace(true);
        for keeper in &self.keepers {
            keeper.request_stop();
        }
        for entry in &self.entries {
            entry.running.store(false, Ordering::SeqCst);
        }
        self.head_task.abort();
    }
}
