//! Layer 5, on projections: process managers.
//!
//! A process manager keeps a small typed state per flow instance (one per value of its
//! `correlate_by` field), reacts to the events of that flow, dispatches commands and
//! sets named timers. Generated code (`<namespace>::process_managers`) implements
//! [`ProcessDefinition`] over the schema's trait; [`ProcessManagers`] runs them.
//!
//! ## How a step is recorded
//!
//! Each instance is a stream of its own, `pm-<name>-<key>`, of *steps*: one
//! `orkestra.ProcessStep` record per handled event or fired timer, holding the state
//! after it, the pending timers (name → due time), whether the instance finished, the
//! last event position handled, and the commands the step dispatches, with their ids.
//! Handling is atomic in effect: the step is one append at the instance's expected
//! version (a concurrent step, from a timer or another runner, makes it run again on
//! the new state). A failing handler records nothing: the instance keeps its state.
//!
//! ## Feed, dispatch and timers
//!
//! Events come from a checkpointed subscription of the store (a projection named
//! `process-manager:<name>`): catch-up after a restart, then live. A step's commands are
//! dispatched right after it is recorded; the steps are in that same global log, and the
//! feed dispatches the commands of every step it reads that this process has not (after
//! a crash between recording and dispatching, or a step another runner recorded), with
//! the same ids (derived from the event id and the command's index). Commands carry the
//! event's correlation id and the event id as causation.
//!
//! Timers are durable because they are in the steps: at start the runner reads its
//! steps back from the log into a timer index, so a timer that came due while the
//! process was down fires right away. A timer fires in a step of its own (`on_timeout`);
//! one cleared or set again meanwhile, or one of a finished instance, is dropped with a
//! debug log.
//!
//! ## Several copies
//!
//! Instances are spread over the feed's partitions (1 unless
//! [`ProcessManager::with_partitions`] says otherwise) by their key, and each partition
//! is held through a lease in the store by one copy of the service at a time: only that
//! copy handles the partition's events, dispatches its steps' commands and fires its
//! timers, on any bus and any store that keeps leases, so every command goes out once
//! per step and every timer fires once however many copies run. A copy that dies loses
//! its partitions when their leases end, and the next holder goes on from the
//! partition's checkpoint (a step recorded but not yet dispatched is dispatched then,
//! with the same ids). On a distributed bus over PostgreSQL every event, step and timer
//! is also claimed in the store's inbox before acting, as a second line of defence
//! during a handover.
//!
//! Files: `context.rs` (what a handler receives), `timers.rs` (the timer index),
//! `runner.rs` (a step: load, handle, record, dispatch, fire), `runnable.rs` (the feed,
//! the timers read back and the timer task, types erased), `feed.rs` (the feed's
//! handler: lanes per instance), `test.rs` (given / when / then).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Notify, watch};

use crate::bus::{Bus, BusError};
use crate::handler::{HandlerError, Inbox};
use crate::message::{CommandEnvelope, Message, Metadata, PayloadError, RawCommand, new_id};
use crate::projection::{
    Erased, Holding, Projection, ProjectionContext, ProjectionError, ProjectionStatus, Projections,
    RunningProjections,
};
use crate::store::{EventData, ExpectedVersion, RecordedEvent, Snapshot, Store, StoreError};

mod context;
mod feed;
mod runnable;
mod runner;
mod test;
mod timers;

use test::timer_list;

/// The event type of a process manager's step records.
pub const STEP_TYPE: &str = "orkestra.ProcessStep";
/// How many times a failing handler is retried before its event is dead-lettered.
pub const DEFAULT_PROCESS_RETRIES: u32 = 3;
/// The delay before the first retry of a failing handler (one more each retry).
pub const DEFAULT_PROCESS_RETRY_DELAY: Duration = Duration::from_millis(100);
/// How many instance keys a runner alone on its store remembers, so that starting a new
/// instance needs no read (past it, every start reads).
const KNOWN_LIMIT: usize = 1_000_000;
/// How many instances a runner keeps in memory between events.
const CACHE_LIMIT: usize = 100_000;
/// The shape tag of a timer-index snapshot.
const TIMERS_SHAPE: &str = "orkestra.process-timers.v1";
/// How often a runner saves its timer index (and when it stops).
const TIMERS_SNAPSHOT_EVERY: Duration = Duration::from_secs(30);
/// A timer-index snapshot entry: key, step version, pending timers.
type SavedTimers = (String, u64, BTreeMap<String, i64>);

/// How many instances the feed handles side by side within a batch unless
/// [`ProcessManager::with_lanes`] says otherwise.
pub const DEFAULT_LANES: usize = 16;
/// How many due timers a runner fires at once.
const TIMER_CONCURRENCY: usize = 32;
/// How many times a step is tried again when another step was recorded first.
const CONFLICT_RETRIES: u32 = 20;

/// What an event does to its instance (the schema's list the event is in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `starts_on`: creates the instance (ignored if it already exists).
    Start,
    /// `handles`: handled by a running instance.
    Handle,
    /// `ends_on`: handled, then the instance is finished.
    End,
}

/// The commands a process manager may dispatch (a generated enum of payload structs).
pub trait ProcessCommand: Send + Sync + 'static {
    /// The command as it is recorded and dispatched.
    fn into_raw(self, id: String, metadata: Metadata) -> Result<RawCommand, PayloadError>;
}

/// A process manager's named timers (a generated enum).
pub trait ProcessTimer: Copy + Eq + fmt::Debug + Send + Sync + 'static {
    /// Every timer.
    const ALL: &'static [Self];
    /// Its name in the schema.
    fn name(self) -> &'static str;
    /// How long after being set it fires.
    fn after(self) -> Duration;
    /// The timer of that name.
    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.name() == name)
    }
}

/// A process manager as the runtime sees it (generated code implements it over the
/// schema's trait).
pub trait ProcessDefinition: Send + Sync + 'static {
    /// The name in the schema (`Fulfilment`).
    const NAME: &'static str;
    /// The prefix of its instance streams (`pm-fulfilment`).
    const STREAM: &'static str;
    /// The field of every event that names the instance.
    const CORRELATE_BY: &'static str;
    /// The state of one instance.
    type State: Serialize + DeserializeOwned + Default + Clone + fmt::Debug + Send + Sync;
    /// The events it listens to.
    type Event: Send + Sync;
    /// The commands it may dispatch.
    type Command: ProcessCommand;
    /// Its timers.
    type Timer: ProcessTimer;

    /// The role of an event type (`None`: not one of its events).
    fn role(event_type: &str) -> Option<Role>;
    /// The role of one of its events.
    fn event_role(event: &Self::Event) -> Role;
    /// Decodes one of its events.
    fn decode(recorded: &RecordedEvent) -> Result<Self::Event, StoreError>;
    /// The instance an event belongs to (its `correlate_by` value).
    fn key(event: &Self::Event) -> String;
    /// Handles an event of a running (or starting) instance.
    fn handle<'a>(
        &'a self,
        state: &'a mut Self::State,
        event: &'a Self::Event,
        ctx: &'a mut ProcessContext<Self::Command, Self::Timer>,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
    /// Handles a timer that came due.
    fn on_timeout<'a>(
        &'a self,
        state: &'a mut Self::State,
        timer: Self::Timer,
        ctx: &'a mut ProcessContext<Self::Command, Self::Timer>,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
}

/// What a process manager's handler can do beside changing the state: dispatch
/// commands, set and clear timers, finish the instance.
pub struct ProcessContext<C, T> {
    key: String,
    commands: Vec<C>,
    timers: BTreeMap<String, i64>,
    now: DateTime<Utc>,
    finished: bool,
    _timer: PhantomData<fn(T)>,
}

/// One recorded step of an instance (the data of an `orkestra.ProcessStep` record).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Step<S> {
    process: String,
    key: String,
    state: S,
    /// Pending timers: name → due time in Unix milliseconds.
    #[serde(default)]
    timers: BTreeMap<String, i64>,
    #[serde(default)]
    finished: bool,
    /// The position of the last event handled (redeliveries at or before it are skipped).
    #[serde(default)]
    last: Option<u64>,
    /// The correlation id of the event that started the instance (for timer steps).
    correlation: String,
    /// The commands this step dispatches.
    #[serde(default)]
    commands: Vec<RawCommand>,
}

/// An instance as loaded: its last step and that step's version in the stream.
#[derive(Clone, Debug)]
struct Instance<S> {
    version: u64,
    step: Step<S>,
}

impl<S: Clone> Instance<S> {
    /// What a new step starts from: state, timers, last position, correlation id.
    fn parts(&self) -> (S, BTreeMap<String, i64>, Option<u64>, String) {
        (
            self.step.state.clone(),
            self.step.timers.clone(),
            self.step.last,
            self.step.correlation.clone(),
        )
    }
}

/// A due timer: (due ms, key, timer name).
type Due = Reverse<(i64, String, String)>;

/// Every pending timer of a process manager, as its steps left them.
#[derive(Default)]
struct TimerIndex {
    /// key → (step version, timers), for instances with timers set.
    instances: HashMap<String, (u64, BTreeMap<String, i64>)>,
    heap: BinaryHeap<Due>,
    /// How many timers `instances` holds.
    live: usize,
}

/// A process manager bound to its implementation, for [`ProcessManagers::add`].
pub struct ProcessManager {
    name: String,
    store: Store,
    build: Box<dyn FnOnce(Settings) -> Arc<dyn Runnable> + Send>,
    retries: u32,
    retry_delay: Duration,
    batch: usize,
    lanes: usize,
    partitions: u32,
}

impl fmt::Debug for ProcessManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessManager")
            .field("name", &self.name)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

struct Settings {
    name: Arc<str>,
    lanes: usize,
    partitions: u32,
    bus: Bus,
    retries: u32,
    retry_delay: Duration,
    shared: bool,
}

impl ProcessManager {
    /// Binds `definition` (generated bindings call this) over `store`, where its
    /// instances live.
    pub fn new<D: ProcessDefinition>(definition: D, store: Store) -> Self {
        let instances = store.clone();
        Self {
            name: D::NAME.to_owned(),
            store,
            build: Box::new(move |settings| {
                Arc::new(Runner::new(definition, instances, settings)) as Arc<dyn Runnable>
            }),
            retries: DEFAULT_PROCESS_RETRIES,
            retry_delay: DEFAULT_PROCESS_RETRY_DELAY,
            batch: crate::projection::DEFAULT_BATCH,
            lanes: DEFAULT_LANES,
            partitions: 1,
        }
    }

    /// How many times a failing handler is retried before its event is dead-lettered.
    #[must_use]
    pub fn with_max_retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The delay before the first retry (each further retry waits one more of it).
    #[must_use]
    pub fn with_retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// How many instances the feed handles side by side within a batch (at least 1; 1
    /// handles every event in the log's order, commands of different instances too).
    #[must_use]
    pub fn with_lanes(mut self, lanes: usize) -> Self {
        self.lanes = lanes.max(1);
        self
    }

    /// How many events the feed reads per batch.
    #[must_use]
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Spreads its instances over `partitions` partitions by their key (FNV-1a), each
    /// held by one copy of the service at a time, which alone handles those instances'
    /// events and fires their timers. From 1 (the default) to
    /// [`MAX_PARTITIONS`](crate::store::MAX_PARTITIONS).
    #[must_use]
    pub fn with_partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Runs it under another name: its own instance streams (`pm-<name>.<run name>-<key>`),
    /// feed checkpoint, claims and timers, beside the schema's (a second deployment on
    /// the same store, or a test sharing a database).
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The name it runs under (the schema's unless [`named`](Self::named)).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The name of a process manager's feed (its checkpoint).
pub fn checkpoint_name(process: &str) -> String {
    format!("process-manager:{process}")
}

/// How often due timers of instances whose partition another copy holds are looked at
/// again (the holder fires them; this copy does if it takes the partition over).
const TIMERS_ELSEWHERE_LOOK: Duration = Duration::from_millis(250);

/// How long due timers wait for the feed before a warning says so.
const TIMERS_WAIT_WARNING: Duration = Duration::from_secs(30);

/// The snapshot key of a process manager's timer index.
fn timers_key(process: &str) -> String {
    format!("orkestra.process-timers/{process}")
}

/// Makes process manager `process` (its schema name, or a [`ProcessManager::named`]
/// run's) start from the store's head instead of its first event: its feed's checkpoint
/// and its timer index are set there, so history starts no instance and its first start
/// reads no old event. For a process manager deployed onto a store that already holds
/// the events it listens to; call it before its first [`ProcessManagers::start`].
pub async fn start_from_now(store: &Store, process: &str) -> Result<(), StoreError> {
    let head = store.head().await?;
    store
        .save_checkpoint(&checkpoint_name(process), head)
        .await?;
    if let Some(head) = head {
        store
            .save_snapshot(Snapshot {
                stream: timers_key(process),
                version: head,
                shape: TIMERS_SHAPE.to_owned(),
                state: "[]".to_owned(),
            })
            .await?;
    }
    Ok(())
}

/// What [`ProcessManagers`] runs of a process manager, its types erased.
trait Runnable: Send + Sync {
    fn name(&self) -> &str;
    fn feed(self: Arc<Self>) -> Arc<dyn Erased>;
    /// Reads the steps in the log back into the timer index.
    fn load_timers(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Where the feed resumes: every event up to `checkpoint` was handled before.
    fn resume_after(&self, checkpoint: Option<u64>);
    fn run_timers(
        self: Arc<Self>,
        stop: watch::Receiver<bool>,
        holding: Holding,
    ) -> BoxFuture<'static, ()>;
    /// How many timers are pending (every partition's: the index holds them all).
    fn pending_timers(&self) -> usize;
}

/// The pending-timer gauge of every process manager started together.
struct TimerGauges(Vec<Arc<dyn Runnable>>);

impl crate::metrics::Observed for TimerGauges {
    fn observe(&self, into: &mut crate::metrics::Observations) {
        for r in &self.0 {
            into.timers
                .push((r.name().to_owned(), r.pending_timers() as u64));
        }
    }
}

/// Why a process manager call did not succeed.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Its feed (a projection) failed or could not start.
    #[error(transparent)]
    Feed(#[from] ProjectionError),
    /// A process manager was bound to another store than the one it runs on.
    #[error(
        "process manager {name:?} was bound to another store (a {bound} one) than the {runs} store it runs on; bind it to a clone of the same Store"
    )]
    OtherStore {
        /// The process manager.
        name: String,
        /// The store it was bound to.
        bound: &'static str,
        /// The store of `ProcessManagers::new`.
        runs: &'static str,
    },
    /// No process manager of that name was added.
    #[error("no process manager named {0:?}")]
    Unknown(String),
}

/// The process managers of an application, over one store and one bus.
pub struct ProcessManagers {
    store: Store,
    bus: Bus,
    managers: Vec<ProcessManager>,
    leases: crate::runner::partition::LeaseSettings,
}

impl fmt::Debug for ProcessManagers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessManagers")
            .field("store", &self.store)
            .field("bus", &self.bus)
            .field("managers", &self.managers)
            .finish()
    }
}

impl ProcessManagers {
    /// No process managers yet: events are read from `store`, commands go to `bus`.
    pub fn new(store: Store, bus: Bus) -> Self {
        Self {
            store,
            bus,
            managers: Vec::new(),
            leases: Default::default(),
        }
    }

    /// How long this copy holds each partition it works without renewing (it renews
    /// every third): after a copy dies, its instances wait this long for another. The
    /// store's `[runners] lease` (10 s) unless set.
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.leases.lease = Some(lease);
        self
    }

    /// This copy's name in the leases (`<hostname>:<pid>` unless set).
    #[must_use]
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.leases.owner = Some(owner.into());
        self
    }

    /// Adds a process manager (a generated binding's value).
    #[must_use]
    #[allow(
        clippy::should_implement_trait,
        reason = "the name design/process-managers.md gives; a builder step"
    )]
    pub fn add(mut self, manager: ProcessManager) -> Self {
        self.managers.push(manager);
        self
    }

    /// Reads each process manager's pending timers back from its steps, then starts its
    /// feed (from its checkpoint) and its timers.
    pub async fn start(self) -> Result<RunningProcessManagers, ProcessError> {
        let shared = self.bus.is_distributed();
        if shared && self.store.adapter() != "postgres" && !self.managers.is_empty() {
            tracing::warn!(
                orkestra = "process",
                adapter = self.store.adapter(),
                "process managers on a distributed bus claim their work in the store's inbox, which only PostgreSQL shares between processes: run one process of them on this store"
            );
        }
        let mut projections = Projections::new(self.store.clone());
        let mut runnables = Vec::with_capacity(self.managers.len());
        for manager in self.managers {
            if !manager.store.same_as(&self.store) {
                return Err(ProcessError::OtherStore {
                    name: manager.name.clone(),
                    bound: manager.store.adapter(),
                    runs: self.store.adapter(),
                });
            }
            let runnable = (manager.build)(Settings {
                name: Arc::from(manager.name.as_str()),
                lanes: manager.lanes,
                partitions: manager.partitions,
                bus: self.bus.clone(),
                retries: manager.retries,
                retry_delay: manager.retry_delay,
                shared,
            });
            runnable.resume_after(
                Projections::checkpoint(&self.store, &checkpoint_name(runnable.name())).await?,
            );
            runnable.load_timers().await?;
            projections = projections.add(
                Projection::raw(checkpoint_name(runnable.name()), runnable.clone().feed())
                    .with_partitions(manager.partitions)
                    .with_batch(manager.batch)
                    // Handler failures are dead-lettered inside; what reaches the feed is
                    // the store or the bus failing, which waits for them to come back.
                    .with_max_retries(u32::MAX)
                    .with_retry_delay(Duration::from_millis(250)),
            );
            runnables.push(runnable);
        }
        if let Some(lease) = self.leases.lease {
            projections = projections.with_lease(lease);
        }
        if let Some(owner) = &self.leases.owner {
            projections = projections.with_owner(owner.clone());
        }
        let feeds = projections.start().await?;
        let (stop, _) = watch::channel(false);
        let mut timers = Vec::with_capacity(runnables.len());
        for r in &runnables {
            // Only this copy's partitions' timers fire here.
            let Some(holding) = feeds.holding(&checkpoint_name(r.name())) else {
                continue;
            };
            timers.push(tokio::spawn(
                r.clone().run_timers(stop.subscribe(), holding),
            ));
        }
        let gauges: Arc<dyn crate::metrics::Observed> = Arc::new(TimerGauges(runnables.clone()));
        crate::metrics::register(Arc::downgrade(&gauges));
        Ok(RunningProcessManagers {
            names: runnables.iter().map(|r| r.name().to_owned()).collect(),
            feeds: Some(feeds),
            stop,
            timers,
            gauges,
        })
    }
}

/// Running process managers: status, waits, and `stop`.
pub struct RunningProcessManagers {
    names: Vec<String>,
    feeds: Option<RunningProjections>,
    stop: watch::Sender<bool>,
    timers: Vec<tokio::task::JoinHandle<()>>,
    /// What the pending-timer gauge reads, while these run.
    gauges: Arc<dyn crate::metrics::Observed>,
}

impl fmt::Debug for RunningProcessManagers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningProcessManagers")
            .field("names", &self.names)
            .field("feeds", &self.feeds)
            .finish_non_exhaustive()
    }
}

impl RunningProcessManagers {
    /// What the runner gauges and a readiness check read of these process managers:
    /// their feeds (a failed partition) and timers.
    pub(crate) fn observed(&self) -> Vec<Arc<dyn crate::metrics::Observed>> {
        let mut observed = vec![self.gauges.clone()];
        observed.extend(self.feeds.as_ref().map(RunningProjections::observed));
        observed
    }

    /// Each process manager's feed: checkpoint, head, lag, state (named
    /// `process-manager:<name>`).
    pub fn status(&self) -> Vec<ProcessStatus> {
        self.feeds
            .as_ref()
            .map(RunningProjections::status)
            .unwrap_or_default()
    }

    /// Waits until process manager `name` has handled the event at `position` (and
    /// dispatched the commands of the steps before it).
    pub async fn wait_for(&self, name: &str, position: u64) -> Result<(), ProcessError> {
        if !self.names.iter().any(|n| n == name) {
            return Err(ProcessError::Unknown(name.to_owned()));
        }
        let Some(feeds) = &self.feeds else {
            return Err(ProcessError::Unknown(name.to_owned()));
        };
        Ok(feeds.wait_for(&checkpoint_name(name), position).await?)
    }

    /// Stops the feeds (each finishes the event in hand and saves its checkpoint) and
    /// the timers.
    pub async fn stop(mut self) -> Result<(), ProcessError> {
        self.stop.send_replace(true);
        for task in self.timers.drain(..) {
            let _ = task.await;
        }
        if let Some(feeds) = self.feeds.take() {
            feeds.stop().await?;
        }
        Ok(())
    }
}

impl Drop for RunningProcessManagers {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// A process manager's feed status (its projection's).
pub type ProcessStatus = ProjectionStatus;

/// Runs one process manager.
struct Runner<D: ProcessDefinition> {
    definition: D,
    /// Its name (`D::NAME` unless renamed) and its instance streams' prefix.
    name: Arc<str>,
    stream: String,
    store: Store,
    bus: Bus,
    /// The store's inbox, when runners in several processes share the work.
    claims: Option<Inbox>,
    handler: Arc<str>,
    step_claims: Arc<str>,
    timer_claims: Arc<str>,
    retries: u32,
    retry_delay: Duration,
    lanes: usize,
    cache: Mutex<HashMap<String, Instance<D::State>>>,
    /// Alone on the store (no claims): every instance key with a stream, so starting a
    /// new instance reads nothing; and the steps whose commands this process dispatched
    /// right after recording them (the feed skips them when it reads them back).
    known: Mutex<HashSet<String>>,
    /// Whether `known` holds every key (the start-up scan read the whole log).
    known_complete: AtomicBool,
    /// Every step before this position is in the timer index and `known` (the start-up
    /// scan, then each partition taken read up to its checkpoint); the feed of each
    /// partition held here takes in the steps after.
    indexed: AtomicU64,
    dispatched: Mutex<HashSet<String>>,
    timers: Mutex<TimerIndex>,
    /// Per partition of the feed, the position of the event it was last offered: every
    /// step of the partition before it is in the timer index (what a snapshot of the
    /// index may claim: the lowest of them).
    offered: Vec<AtomicU64>,
    /// How many partitions the instances are spread over (by key).
    partitions: u32,
    wake: Notify,
}

/// Why a step was not recorded.
enum StepError {
    /// Another step was recorded first: load again and redo.
    Conflict,
    /// The store or the bus failed: the feed retries the event.
    Retry(HandlerError),
    /// The step can never be recorded (too large, unreadable, refused): the cause goes
    /// to the dead letters with this reason.
    Fatal(String),
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WrongExpectedVersion { .. } => Self::Conflict,
            e @ (StoreError::TooLarge { .. }
            | StoreError::TooLargeForBus { .. }
            | StoreError::Invalid(_)
            | StoreError::Encode(_)
            | StoreError::Decode { .. }
            | StoreError::DuplicateEvent { .. }) => Self::Fatal(e.to_string()),
            e => Self::Retry(HandlerError::fail(e.to_string())),
        }
    }
}

fn uuid_v5(name: &str) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f72_6b65_7374_7261_8000_7072_6f63_6573);
    uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes()).to_string()
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The `correlate_by` value of an event's data, as the instance key.
fn key_of(data: &Value, field: &str) -> Option<String> {
    match data.get(field)? {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn message_of(event: &RecordedEvent) -> Message {
    let topic = event
        .topic()
        .unwrap_or_else(|| event.event_type())
        .to_owned();
    match event.to_raw(topic) {
        Ok(raw) => Message::from_raw_event(raw),
        Err(e) => Message::from_raw_event(crate::message::RawEvent {
            id: event.id().to_owned(),
            event_type: event.event_type().to_owned(),
            topic: event.topic().unwrap_or_default().to_owned(),
            version: event.schema_version(),
            data: Value::String(format!("unreadable: {e}")),
            metadata: event.metadata().clone(),
        }),
    }
}

/// What triggers a step.
enum Cause<'a, E, T> {
    Event {
        event: &'a E,
        recorded: &'a RecordedEvent,
        role: Role,
    },
    Timer {
        timer: T,
        due: i64,
    },
}

/// The work of one recorded event.
type Work<'a> = BoxFuture<'a, Result<(), HandlerError>>;

/// The feed's handler: every recorded event goes through it.
struct Feed<D: ProcessDefinition> {
    runner: Arc<Runner<D>>,
    /// The partition of the instances it feeds (one feed per partition this copy works).
    partition: u32,
    /// Positions past a failed batch's failure that other lanes finished: the batch is
    /// read again from the failure, and these are not done twice (their commands
    /// dispatched again, their dead letters repeated). At most one batch of them.
    done_ahead: Mutex<HashSet<u64>>,
}

/// Given / when / then for a process manager, without a store or a bus: the events
/// `given` are handled in order, then `when`'s; what `when` did is returned.
pub struct ProcessTest<D: ProcessDefinition> {
    definition: D,
    given: Vec<D::Event>,
}

impl<D: ProcessDefinition + fmt::Debug> fmt::Debug for ProcessTest<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessTest")
            .field("definition", &self.definition)
            .field("given", &self.given.len())
            .finish()
    }
}

/// What a step did in a [`ProcessTest`]: the state after it, the commands it
/// dispatched, the timers left set.
pub type Then<D> = (
    <D as ProcessDefinition>::State,
    Vec<<D as ProcessDefinition>::Command>,
    Vec<<D as ProcessDefinition>::Timer>,
);

/// A [`ProcessTest`] instance after its given events.
struct Replayed<D: ProcessDefinition> {
    state: D::State,
    timers: BTreeMap<String, i64>,
    finished: bool,
    /// The instance's key, once an event started it.
    key: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::{BTreeMap, TimerIndex};

    fn timers(entries: &[(&str, i64)]) -> BTreeMap<String, i64> {
        entries.iter().map(|(n, d)| ((*n).to_owned(), *d)).collect()
    }

    #[test]
    fn the_timer_index_fires_what_is_current_only() {
        let mut index = TimerIndex::default();
        index.record("a", 0, &timers(&[("payment", 100)]), false);
        index.record("b", 0, &timers(&[("payment", 50)]), false);
        // `a` set again later, `b` cleared, an older step of `a` read again: ignored.
        index.record("a", 1, &timers(&[("payment", 300)]), false);
        index.record("b", 1, &timers(&[]), false);
        index.record("a", 0, &timers(&[("payment", 100)]), false);
        assert_eq!(index.next_due(), Some(300));
        assert!(index.take_due(299).is_empty());
        assert_eq!(
            index.take_due(300),
            [(300, "a".to_owned(), "payment".to_owned())]
        );
        // A finished instance leaves nothing behind.
        index.record("a", 2, &timers(&[("payment", 900)]), true);
        assert!(index.instances.is_empty() && index.live == 0);
        assert_eq!(index.next_due(), None);
    }

    #[test]
    fn cleared_timers_do_not_pile_up_in_the_heap() {
        let mut index = TimerIndex::default();
        for version in 0..10_000u64 {
            // One instance whose timer is set again at every step.
            index.record(
                "a",
                version,
                &timers(&[("payment", 1_000_000 + version as i64)]),
                false,
            );
        }
        assert_eq!(index.live, 1);
        assert!(index.heap.len() <= 2 + 1024, "{}", index.heap.len());
        assert_eq!(index.next_due(), Some(1_000_000 + 9_999));
    }
}
