//! Layer 5, built on the store and the handler types: durable projections
//! (`design/projections.md`).
//!
//! A [`Projection`] is a handler of recorded events bound to a name; [`Projections`]
//! runs each one in its own task, from its checkpoint (saved in the store beside the
//! events), through the global order: catch-up, then live.
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

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};

use crate::handler::{EventSet, HandlerError};
use crate::message::{Message, PayloadError};
use crate::store::{RecordedEvent, Store, StoreError};

/// How many events a projection handles per batch (and per transaction on PostgreSQL)
/// unless its binding says otherwise.
pub const DEFAULT_BATCH: usize = 500;
/// How many times a failing event is retried unless the binding says otherwise.
pub const DEFAULT_PROJECTION_RETRIES: u32 = 3;
/// The delay before the first retry; each further retry waits one more of it.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_millis(200);

/// What a projection handler receives beside the event.
pub struct ProjectionContext<'a> {
    event: &'a RecordedEvent,
    replay: bool,
    #[cfg(feature = "postgres")]
    transaction: Option<&'a deadpool_postgres::Transaction<'a>>,
}

impl fmt::Debug for ProjectionContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionContext")
            .field("position", &self.event.position())
            .field("replay", &self.replay)
            .finish_non_exhaustive()
    }
}

impl<'a> ProjectionContext<'a> {
    /// The event as stored (stream, version, position, metadata).
    pub fn recorded(&self) -> &'a RecordedEvent {
        self.event
    }

    /// The event's global position.
    pub fn position(&self) -> u64 {
        self.event.position()
    }

    /// Whether this run replays history for a [`Projections::rebuild`].
    pub fn is_replay(&self) -> bool {
        self.replay
    }

    /// The transaction that also advances this projection's checkpoint, when the store
    /// is PostgreSQL (`None` on every other store). Write the read model through it and
    /// the write commits exactly when the checkpoint does.
    #[cfg(feature = "postgres")]
    pub fn postgres(&self) -> Option<&'a tokio_postgres::Transaction<'a>> {
        self.transaction.map(|t| &**t)
    }

    /// A statement prepared once per pooled connection (the store's statement cache), for
    /// [`postgres`](Self::postgres)'s transaction: what a hot read model should execute.
    /// A rejection off PostgreSQL, a retryable failure when PostgreSQL refuses it.
    #[cfg(feature = "postgres")]
    pub async fn prepare_cached(
        &self,
        query: &str,
    ) -> Result<tokio_postgres::Statement, HandlerError> {
        match self.transaction {
            Some(t) => t.prepare_cached(query).await.map_err(HandlerError::fail),
            None => Err(HandlerError::reject(
                "prepare_cached needs the PostgreSQL store",
            )),
        }
    }
}

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

/// One projection's progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectionStatus {
    /// The projection.
    pub name: String,
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

/// What one projection shares between its runner, [`RunningProjections`] and
/// [`Projections::rebuild`].
struct Shared {
    projection: Projection,
    /// The last position handled (in memory; the store's checkpoint may trail it by a
    /// batch on stores without transactions).
    handled: watch::Sender<Option<u64>>,
    state: Mutex<ProjectionState>,
    /// Requests to a running runner.
    control: Mutex<Option<mpsc::UnboundedSender<Control>>>,
    /// The backlog last counted, for `status()`.
    backlog: Mutex<Option<CountedBacklog>>,
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

impl Shared {
    fn set_state(&self, state: ProjectionState) {
        *crate::sync::lock(&self.state) = state;
    }
}

/// A set of projections over one store.
#[derive(Clone)]
pub struct Projections {
    store: Store,
    entries: Vec<Arc<Shared>>,
    duplicate: Option<String>,
    leases: crate::runner::partition::LeaseSettings,
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

impl Projections {
    /// No projections yet, over `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            entries: Vec::new(),
            duplicate: None,
            leases: Default::default(),
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
        reason = "the name design/projections.md gives; a builder step, not arithmetic"
    )]
    pub fn add(mut self, projection: Projection) -> Self {
        if self
            .entries
            .iter()
            .any(|e| e.projection.name == projection.name)
        {
            self.duplicate.get_or_insert(projection.name.clone());
        }
        self.entries.push(Arc::new(Shared {
            projection,
            handled: watch::Sender::new(None),
            state: Mutex::new(ProjectionState::Stopped),
            control: Mutex::new(None),
            backlog: Mutex::new(None),
        }));
        self
    }

    fn entry(&self, name: &str) -> Result<&Arc<Shared>, ProjectionError> {
        self.entries
            .iter()
            .find(|e| e.projection.name == name)
            .ok_or_else(|| ProjectionError::Unknown(name.to_owned()))
    }

    /// Starts every projection from its checkpoint: catch-up, then live. Refuses to start
    /// when a name is used twice, a projection is already running, or a checkpoint is
    /// ahead of the store's head ([`ProjectionError::AheadOfStore`]).
    pub async fn start(&self) -> Result<RunningProjections, ProjectionError> {
        if let Some(name) = &self.duplicate {
            return Err(ProjectionError::Duplicate(name.clone()));
        }
        let head = self.store.head().await?;
        let mut starts = Vec::with_capacity(self.entries.len());
        for entry in &self.entries {
            let name = &entry.projection.name;
            if crate::sync::lock(&entry.control).is_some() {
                return Err(ProjectionError::AlreadyRunning(name.clone()));
            }
            if !entry.projection.stored {
                // From the start, the history up to the head being a replay.
                starts.push((None, head));
                continue;
            }
            let checkpoint = self.store.load_checkpoint(name).await?;
            check_not_ahead(name, checkpoint, head)?;
            // A rebuild a crash interrupted goes on as one: its events are still replays.
            let until = self
                .store
                .load_replay_until(name)
                .await?
                .filter(|&until| checkpoint.is_none_or(|c| c < until));
            if let Some(until) = until {
                tracing::info!(orkestra = "projection", projection = %name, checkpoint, until, "rebuild resumed");
            }
            starts.push((checkpoint, until));
        }
        let (stop, _) = watch::channel(false);
        let head_tx = watch::Sender::new(head);
        let mut tasks = Vec::with_capacity(self.entries.len());
        for (entry, (checkpoint, replay_until)) in self.entries.iter().zip(starts) {
            let (control_tx, control_rx) = mpsc::unbounded_channel();
            *crate::sync::lock(&entry.control) = Some(control_tx);
            entry.handled.send_replace(checkpoint);
            entry.set_state(ProjectionState::CatchingUp);
            let runner = Runner {
                store: self.store.clone(),
                shared: entry.clone(),
                head: head_tx.clone(),
                replay_until,
                progress: Progress::new(),
            };
            tasks.push(tokio::spawn(runner.run(
                checkpoint,
                stop.subscribe(),
                control_rx,
            )));
        }
        count_backlogs(&self.store, &self.entries, head).await;
        let head_task = tokio::spawn(watch_head(
            self.store.clone(),
            head_tx.clone(),
            self.entries.clone(),
        ));
        Ok(RunningProjections {
            entries: self.entries.clone(),
            stop,
            tasks,
            head: head_tx,
            head_task,
        })
    }

    /// Replays a projection from the start: its checkpoint goes back to none, and every
    /// event up to the current head is handled again with
    /// [`ProjectionContext::is_replay`] true. Returns once the replay reached that head.
    /// Works whether the projection is running (the runner switches over between
    /// batches) or not. Progress (events done, total, rate) is logged at most once a
    /// second.
    pub async fn rebuild(&self, name: &str) -> Result<(), ProjectionError> {
        let entry = self.entry(name)?;
        let control = crate::sync::lock(&entry.control).clone();
        if let Some(control) = control {
            let (reply, done) = oneshot::channel();
            if control.send(Control::Rebuild(reply)).is_ok()
                && let Ok(result) = done.await
            {
                return result;
            }
            return Err(ProjectionError::Stopped(name.to_owned()));
        }
        // Not running: replay here, then stop.
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        {
            let mut slot = crate::sync::lock(&entry.control);
            if slot.is_some() {
                return Err(ProjectionError::AlreadyRunning(name.to_owned()));
            }
            *slot = Some(control_tx);
        }
        let result = async {
            let head = self.store.head().await?;
            let mut runner = Runner {
                store: self.store.clone(),
                shared: entry.clone(),
                head: watch::Sender::new(head),
                replay_until: None,
                progress: Progress::new(),
            };
            runner.start_replay(head).await?;
            let (_stop_tx, stop) = watch::channel(false);
            let mut next = 0;
            while let Some(until) = runner.replay_until {
                let batch = self
                    .store
                    .read_all(next, entry.projection.batch.min(remaining(next, until)))
                    .await?;
                if batch.is_empty() {
                    runner.replay_done().await;
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
                }
                runner.after_batch(next).await;
            }
            Ok(())
        }
        .await;
        *crate::sync::lock(&entry.control) = None;
        // A rebuild asked for meanwhile hears `Stopped` when its request is dropped.
        drop(control_rx);
        if let Err(ProjectionError::Failed { error, .. }) = &result {
            entry.set_state(ProjectionState::Failed(error.clone()));
        } else {
            entry.set_state(ProjectionState::Stopped);
        }
        result
    }

    /// Waits until the projection `name` has handled `position`, reading its checkpoint
    /// from the store: works from any process sharing the store. On stores without
    /// transactions the checkpoint is saved once per batch, so it may trail the
    /// projection by up to a batch until that batch ends.
    pub async fn wait_until(
        store: &Store,
        name: &str,
        position: u64,
        timeout: Duration,
    ) -> Result<(), ProjectionError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = store.changes();
        loop {
            let checkpoint = store.load_checkpoint(name).await?;
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

/// The wait before retry `attempt` (1: the first): one more `delay` each time, at most
/// 30 seconds.
fn retry_wait(delay: Duration, attempt: u32) -> Duration {
    delay.saturating_mul(attempt).min(Duration::from_secs(30))
}

fn remaining(next: u64, until: u64) -> usize {
    usize::try_from(until.saturating_sub(next).saturating_add(1)).unwrap_or(usize::MAX)
}

fn check_not_ahead(
    name: &str,
    checkpoint: Option<u64>,
    head: Option<u64>,
) -> Result<(), ProjectionError> {
    match (checkpoint, head) {
        (Some(c), h) if h.is_none_or(|h| c > h) => Err(ProjectionError::AheadOfStore {
            name: name.to_owned(),
            checkpoint: c,
            head: h,
        }),
        _ => Ok(()),
    }
}

/// How often a projection's backlog is counted again at most while it changes (and at
/// most a tenth of the time: a count that took 100 ms waits a second).
const BACKLOG_RECOUNT: Duration = Duration::from_millis(250);

/// Counts the backlog of each projection behind `head` (positions are not counts: on
/// PostgreSQL one event is over a million positions past the one before).
async fn count_backlogs(store: &Store, entries: &[Arc<Shared>], head: Option<u64>) {
    let Some(head) = head else {
        return;
    };
    for entry in entries {
        let checkpoint = *entry.handled.borrow();
        if checkpoint.is_some_and(|c| c >= head) {
            continue;
        }
        let due = crate::sync::lock(&entry.backlog).as_ref().is_none_or(|b| {
            (b.checkpoint, b.head) != (checkpoint, head)
                && b.at.elapsed() >= BACKLOG_RECOUNT.max(b.took.saturating_mul(10))
        });
        if !due {
            continue;
        }
        let started = Instant::now();
        match store.backlog(checkpoint, head).await {
            Ok(backlog) => {
                *crate::sync::lock(&entry.backlog) = Some(CountedBacklog {
                    checkpoint,
                    head,
                    backlog,
                    at: Instant::now(),
                    took: started.elapsed(),
                });
            }
            Err(e) => {
                tracing::debug!(orkestra = "projection", projection = %entry.projection.name, error = %e, "cannot count the backlog");
            }
        }
    }
}

/// Keeps the head and the backlogs current for `status()`: re-read after change
/// notices, at most every 50 ms, and on the store's poll interval.
async fn watch_head(store: Store, head: watch::Sender<Option<u64>>, entries: Vec<Arc<Shared>>) {
    let mut changes = store.changes();
    let poll = store.poll_interval().unwrap_or(Duration::from_secs(1));
    loop {
        if let Ok(Some(h)) = store.head().await {
            head.send_if_modified(|old| {
                let newer = old.is_none_or(|o| h > o);
                if newer {
                    *old = Some(h);
                }
                newer
            });
        }
        let current = *head.borrow();
        count_backlogs(&store, &entries, current).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = tokio::time::timeout(poll, changes.changed()).await;
    }
}

/// Running projections: their status, read-your-writes waits, and `stop`.
#[derive(Debug)]
pub struct RunningProjections {
    entries: Vec<Arc<Shared>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    head: watch::Sender<Option<u64>>,
    head_task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Projection")
            .field("name", &self.projection.name)
            .field("handled", &*self.handled.borrow())
            .finish_non_exhaustive()
    }
}

impl RunningProjections {
    /// Each projection's checkpoint, the head, the lag and the state, in the order they
    /// were added.
    pub fn status(&self) -> Vec<ProjectionStatus> {
        let head = *self.head.borrow();
        self.entries
            .iter()
            .map(|e| {
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
                ProjectionStatus {
                    name: e.projection.name.clone(),
                    checkpoint,
                    head,
                    lag,
                    oldest_unhandled_age,
                    state: crate::sync::lock(&e.state).clone(),
                }
            })
            .collect()
    }

    /// Waits until projection `name` has handled `position` (read-your-writes: pass the
    /// `last_position` of an append). Fails when the projection fails or stops first.
    pub async fn wait_for(&self, name: &str, position: u64) -> Result<(), ProjectionError> {
        let entry = self
            .entries
            .iter()
            .find(|e| e.projection.name == name)
            .ok_or_else(|| ProjectionError::Unknown(name.to_owned()))?;
        let mut handled = entry.handled.subscribe();
        loop {
            if handled.borrow_and_update().is_some_and(|h| h >= position) {
                return Ok(());
            }
            match crate::sync::lock(&entry.state).clone() {
                ProjectionState::Failed(error) => {
                    return Err(ProjectionError::Failed {
                        name: name.to_owned(),
                        error,
                    });
                }
                ProjectionState::Stopped => return Err(ProjectionError::Stopped(name.to_owned())),
                ProjectionState::CatchingUp | ProjectionState::Live => {}
            }
            // State changes send no notice: look again now and then.
            let _ = tokio::time::timeout(Duration::from_millis(100), handled.changed()).await;
        }
    }

    /// Stops every projection: each finishes the event in hand and saves its checkpoint.
    pub async fn stop(mut self) -> Result<(), ProjectionError> {
        self.stop.send_replace(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        self.head_task.abort();
        Ok(())
    }
}

impl Drop for RunningProjections {
    fn drop(&mut self) {
        // Dropped without `stop`: the runners stop at their next event.
        self.stop.send_replace(true);
        self.head_task.abort();
    }
}

/// Rebuild progress, logged at most once a second.
struct Progress {
    started: Instant,
    last_log: Instant,
    done: u64,
}

impl Progress {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last_log: now,
            done: 0,
        }
    }
}

enum Outcome {
    /// Every event of the batch handled (or not this projection's); the last position.
    Done(u64),
    /// Stopped at an event after its retries; handled ones are saved.
    Failed(String),
    /// The store failed (saving a checkpoint, opening a transaction).
    Store(StoreError),
    /// A batch handled whole stopped at an event that may pass later (its handler says
    /// the store or the bus failed): read again from the checkpoint after a pause.
    Retry(String),
}

struct Runner {
    store: Store,
    shared: Arc<Shared>,
    head: watch::Sender<Option<u64>>,
    /// During a rebuild: the head when it began (handled events up to it are replays).
    replay_until: Option<u64>,
    progress: Progress,
}

impl Runner {
    fn name(&self) -> &str {
        &self.shared.projection.name
    }

    async fn run(
        mut self,
        checkpoint: Option<u64>,
        mut stop: watch::Receiver<bool>,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) {
        let mut next = checkpoint.map_or(0, |c| c.saturating_add(1));
        let mut changes = self.store.changes();
        let poll = self.store.poll_interval();
        let mut rebuilds: Vec<oneshot::Sender<Result<(), ProjectionError>>> = Vec::new();
        let end_state = loop {
            if *stop.borrow() {
                break ProjectionState::Stopped;
            }
            while let Ok(Control::Rebuild(reply)) = control.try_recv() {
                let head = match self.store.head().await {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                        continue;
                    }
                };
                match self.start_replay(head).await {
                    Ok(()) => {
                        next = 0;
                        rebuilds.push(reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            if self.replay_until.is_none() {
                for reply in rebuilds.drain(..) {
                    let _ = reply.send(Ok(()));
                }
            }
            // Whatever committed before this read is in it: wait only for later notices.
            let _ = changes.borrow_and_update();
            let batch = match self
                .store
                .read_all(next, self.shared.projection.batch)
                .await
            {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(orkestra = "projection", projection = self.name(), error = %e, "cannot read events; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if batch.is_empty() {
                self.replay_done().await;
                // Caught up: is the head where we are? (A restored backup puts it behind.)
                match self.store.head().await {
                    Ok(head) => {
                        let checkpoint = *self.shared.handled.borrow();
                        if let Err(e) = check_not_ahead(self.name(), checkpoint, head) {
                            tracing::error!(orkestra = "projection", projection = self.name(), error = %e, "projection stopped");
                            break ProjectionState::Failed(e.to_string());
                        }
                    }
                    Err(e) => {
                        tracing::warn!(orkestra = "projection", projection = self.name(), error = %e, "cannot read the head");
                    }
                }
                self.shared.set_state(ProjectionState::Live);
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
                    request = control.recv() => {
                        if let Some(Control::Rebuild(reply)) = request {
                            match self.store.head().await {
                                Ok(head) => match self.start_replay(head).await {
                                    Ok(()) => { next = 0; rebuilds.push(reply); }
                                    Err(e) => { let _ = reply.send(Err(e)); }
                                },
                                Err(e) => { let _ = reply.send(Err(e.into())); }
                            }
                        }
                    }
                }
                continue;
            }
            if self.replay_until.is_none() {
                self.shared.set_state(ProjectionState::CatchingUp);
            }
            match self.handle_batch(&batch, &stop).await {
                Outcome::Done(last) => {
                    next = last.saturating_add(1);
                    self.after_batch(next).await;
                }
                Outcome::Failed(error) => {
                    tracing::error!(orkestra = "projection", projection = self.name(), error = %error, "projection stopped at a failing event");
                    break ProjectionState::Failed(error);
                }
                Outcome::Retry(error) => {
                    next = self.rewind("batch stopped", &error, &stop).await;
                }
                Outcome::Store(e) => {
                    next = self.rewind("store error", &e, &stop).await;
                }
            }
        };
        let error = match &end_state {
            ProjectionState::Failed(e) => e.clone(),
            _ => "stopped".to_owned(),
        };
        for reply in rebuilds {
            let _ = reply.send(Err(ProjectionError::Failed {
                name: self.name().to_owned(),
                error: error.clone(),
            }));
        }
        *crate::sync::lock(&self.shared.control) = None;
        self.shared.set_state(end_state);
    }

    /// After a batch that could not finish: a pause, then the position after the last
    /// event handled, where the next read starts.
    ///
    /// The store's checkpoint decides, not the one in memory: a COMMIT whose answer was
    /// lost (the connection dropped after the server committed) moved the stored
    /// checkpoint with the read model's writes, and reading from the one in memory would
    /// apply that batch twice. Stores without transactions save the checkpoint after the
    /// batch, so theirs may trail the one in memory: the later of the two is kept.
    async fn rewind(
        &self,
        what: &str,
        error: &(dyn fmt::Display + Sync),
        stop: &watch::Receiver<bool>,
    ) -> u64 {
        tracing::warn!(orkestra = "projection", projection = self.name(), what, error = %error, "retrying from the checkpoint");
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if *stop.borrow() || !self.shared.projection.stored {
                break;
            }
            match self.store.load_checkpoint(self.name()).await {
                Ok(stored) => {
                    self.shared.handled.send_if_modified(|handled| {
                        let later = stored > *handled;
                        if later {
                            tracing::info!(orkestra = "projection", projection = self.name(), checkpoint = stored, "the store's checkpoint is past the last commit seen here (a commit whose answer was lost); going on from it");
                            *handled = stored;
                        }
                        later
                    });
                    break;
                }
                Err(e) => {
                    tracing::warn!(orkestra = "projection", projection = self.name(), error = %e, "cannot read the checkpoint; retrying");
                }
            }
        }
        self.shared
            .handled
            .borrow()
            .map_or(0, |c| c.saturating_add(1))
    }

    /// Clears the checkpoint and replays up to `head`. The target is saved with the
    /// checkpoint: a restart before the replay reaches it goes on replaying.
    async fn start_replay(&mut self, head: Option<u64>) -> Result<(), ProjectionError> {
        if self.shared.projection.stored {
            self.store
                .save_replay(&self.shared.projection.name, None, head)
                .await?;
        }
        self.shared.handled.send_replace(None);
        self.replay_until = head;
        self.progress = Progress::new();
        self.shared.set_state(ProjectionState::CatchingUp);
        tracing::info!(
            orkestra = "projection",
            projection = self.name(),
            head,
            "rebuild started"
        );
        Ok(())
    }

    async fn replay_done(&mut self) {
        if self.replay_until.take().is_some() {
            // A target left behind is harmless (the checkpoint is past it); clear it
            // anyway so the row says no rebuild is under way.
            let handled = *self.shared.handled.borrow();
            if self.shared.projection.stored
                && let Err(e) = self.store.save_replay(self.name(), handled, None).await
            {
                tracing::warn!(orkestra = "projection", projection = self.name(), error = %e, "cannot clear the finished rebuild's target");
            }
            let elapsed = self.progress.started.elapsed();
            tracing::info!(
                orkestra = "projection",
                projection = self.name(),
                events = self.progress.done,
                seconds = elapsed.as_secs_f64(),
                "rebuild finished"
            );
        }
    }

    async fn after_batch(&mut self, next: u64) {
        let Some(until) = self.replay_until else {
            return;
        };
        if next > until {
            self.replay_done().await;
            return;
        }
        if self.progress.last_log.elapsed() >= Duration::from_secs(1) {
            self.progress.last_log = Instant::now();
            let elapsed = self.progress.started.elapsed().as_secs_f64();
            tracing::info!(
                orkestra = "projection",
                projection = self.name(),
                done = self.progress.done,
                position = next.saturating_sub(1),
                total = until,
                rate = self.progress.done as f64 / elapsed.max(1e-9),
                "rebuilding"
            );
        }
    }

    fn is_replay(&self, position: u64) -> bool {
        self.replay_until.is_some_and(|until| position <= until)
    }

    /// Handles a batch: on PostgreSQL in one transaction with the checkpoint, elsewhere
    /// event by event with the checkpoint saved after.
    async fn handle_batch(
        &mut self,
        batch: &[RecordedEvent],
        stop: &watch::Receiver<bool>,
    ) -> Outcome {
        if let Some(last) = batch.last() {
            self.head.send_if_modified(|h| {
                let newer = h.is_none_or(|h| last.position() > h);
                if newer {
                    *h = Some(last.position());
                }
                newer
            });
        }
        let handler = Arc::clone(&self.shared.projection.handler);
        if let Some(run) = handler.handle_batch(batch) {
            return self.handled_whole(batch, run).await;
        }
        #[cfg(feature = "postgres")]
        if self.store.as_postgres().is_some() {
            return self.handle_batch_postgres(batch, stop).await;
        }
        let mut last_done = None;
        let mut outcome = None;
        for event in batch {
            if *stop.borrow() && last_done.is_some() {
                break;
            }
            match self.handle_with_retries(event).await {
                Ok(()) => {
                    last_done = Some(event.position());
                    self.progress.done += 1;
                    self.shared.handled.send_replace(Some(event.position()));
                }
                Err(error) => {
                    outcome = Some(Outcome::Failed(error));
                    break;
                }
            }
        }
        if let Some(last) = last_done
            && self.shared.projection.stored
            && let Err(e) = self
                .store
                .save_checkpoint(&self.shared.projection.name, Some(last))
                .await
        {
            return Outcome::Store(e);
        }
        match (outcome, last_done) {
            (Some(failed), _) => failed,
            (None, Some(last)) => Outcome::Done(last),
            (None, None) => Outcome::Done(batch.last().map_or(0, RecordedEvent::position)),
        }
    }

    /// A batch the handler took whole: the checkpoint moves to the last event done.
    async fn handled_whole(
        &mut self,
        batch: &[RecordedEvent],
        run: BoxFuture<'_, Result<(), (u64, HandlerError)>>,
    ) -> Outcome {
        // Positions only go up within a batch: the events done are a prefix of it.
        let (done, failure) = match run.await {
            Ok(()) => (batch.len(), None),
            Err((failed_at, error)) => (
                batch.partition_point(|e| e.position() < failed_at),
                Some(format!("event at position {failed_at}: {error}")),
            ),
        };
        let last_done = batch[..done].last().map(RecordedEvent::position);
        if let Some(last) = last_done {
            self.progress.done += done as u64;
            self.shared.handled.send_replace(Some(last));
            if self.shared.projection.stored
                && let Err(e) = self
                    .store
                    .save_checkpoint(&self.shared.projection.name, Some(last))
                    .await
            {
                return Outcome::Store(e);
            }
        }
        match failure {
            Some(error) => Outcome::Retry(error),
            None => Outcome::Done(last_done.unwrap_or_default()),
        }
    }

    /// One event, retried; the error text after the last attempt.
    async fn handle_with_retries(&self, event: &RecordedEvent) -> Result<(), String> {
        let projection = &self.shared.projection;
        let mut attempt = 0u32;
        loop {
            let ctx = ProjectionContext {
                event,
                replay: self.is_replay(event.position()),
                #[cfg(feature = "postgres")]
                transaction: None,
            };
            let result = match projection.handler.handle(event, ctx) {
                None => return Ok(()),
                Some(run) => run_caught(run).await,
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) => {
                    if let Some(error) = self.give_up(event, &e, attempt) {
                        return Err(error);
                    }
                }
            }
            attempt += 1;
            tokio::time::sleep(retry_wait(projection.retry_delay, attempt)).await;
        }
    }

    /// `Some(final error)` when `error` at `attempt` (0: the first try) ends the tries.
    fn give_up(&self, event: &RecordedEvent, error: &HandlerError, attempt: u32) -> Option<String> {
        let projection = &self.shared.projection;
        let text = format!(
            "event {} ({}) at position {}: {error}",
            event.id(),
            event.event_type(),
            event.position()
        );
        if !error.is_retryable() || attempt >= projection.max_retries {
            return Some(if attempt > 0 {
                format!("{text} (after {} retries)", attempt)
            } else {
                text
            });
        }
        tracing::warn!(orkestra = "projection", projection = self.name(), position = event.position(), attempt = attempt + 1, error = %error, "projection handler failed; retrying");
        None
    }

    #[cfg(feature = "postgres")]
    async fn handle_batch_postgres(
        &mut self,
        batch: &[RecordedEvent],
        stop: &watch::Receiver<bool>,
    ) -> Outcome {
        // The whole batch in one transaction; a failure rolls it back and the batch is
        // handled again one event per transaction, so the failing event is isolated.
        let failed_at = match self.postgres_transaction(batch, stop, false).await {
            Ok(Ok(last)) => return Outcome::Done(last),
            Ok(Err((position, _))) => position,
            Err(e) => return Outcome::Store(e),
        };
        let mut last_done = None;
        for event in batch {
            if *stop.borrow() && last_done.is_some() {
                break;
            }
            // The batch's try counts as the failing event's first attempt.
            let mut attempt = u32::from(event.position() == failed_at);
            if attempt > 0 {
                tokio::time::sleep(self.shared.projection.retry_delay).await;
            }
            loop {
                match self
                    .postgres_transaction(std::slice::from_ref(event), stop, true)
                    .await
                {
                    Ok(Ok(last)) => {
                        last_done = Some(last);
                        break;
                    }
                    Ok(Err((_, e))) => {
                        if let Some(error) = self.give_up(event, &e, attempt) {
                            return Outcome::Failed(error);
                        }
                    }
                    Err(e) => return Outcome::Store(e),
                }
                attempt += 1;
                tokio::time::sleep(retry_wait(self.shared.projection.retry_delay, attempt)).await;
            }
        }
        Outcome::Done(last_done.unwrap_or_else(|| batch.last().map_or(0, RecordedEvent::position)))
    }

    /// Handles `events` in one transaction with the checkpoint: `Ok(Ok(last position))`
    /// once committed, `Ok(Err((position, handler error)))` rolled back, `Err` when the
    /// store failed.
    /// Stops early (committing what is done) when asked to stop, unless `whole`.
    #[cfg(feature = "postgres")]
    async fn postgres_transaction(
        &mut self,
        events: &[RecordedEvent],
        stop: &watch::Receiver<bool>,
        whole: bool,
    ) -> Result<Result<u64, (u64, HandlerError)>, StoreError> {
        let Some(pg) = self.store.as_postgres() else {
            return Err(StoreError::Invalid("not a PostgreSQL store".into()));
        };
        let pg_error = |e: tokio_postgres::Error| StoreError::backend("postgres", e);
        let mut client = pg.connection().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let mut last = None;
        let mut done = 0u64;
        for event in events {
            if !whole && *stop.borrow() && last.is_some() {
                break;
            }
            let ctx = ProjectionContext {
                event,
                replay: self.is_replay(event.position()),
                transaction: Some(&tx),
            };
            let result = match self.shared.projection.handler.handle(event, ctx) {
                None => Ok(()),
                Some(run) => run_caught(run).await,
            };
            if let Err(e) = result {
                // Dropping the transaction rolls it back; say so explicitly.
                let _ = tx.rollback().await;
                return Ok(Err((event.position(), e)));
            }
            last = Some(event.position());
            done += 1;
        }
        let Some(last) = last else {
            return Ok(Ok(0));
        };
        if self.shared.projection.stored {
            crate::store::postgres::save_checkpoint_in(
                &tx,
                &self.shared.projection.name,
                Some(last),
            )
            .await?;
        }
        tx.commit().await.map_err(pg_error)?;
        self.progress.done += done;
        self.shared.handled.send_replace(Some(last));
        Ok(Ok(last))
    }
}

/// Runs a handler's future; a panic becomes a failure with its message.
pub(crate) async fn run_caught(
    run: BoxFuture<'_, Result<(), HandlerError>>,
) -> Result<(), HandlerError> {
    match AssertUnwindSafe(run).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            Err(HandlerError::fail(format!(
                "the handler panicked: {message}"
            )))
        }
    }
}
