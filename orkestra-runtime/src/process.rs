//! Layer 5, on projections: process managers (`design/process-managers.md`).
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
//! ## Several runners
//!
//! On a distributed bus (RabbitMQ) several processes may run the same process manager
//! over one PostgreSQL store: each claims every event, step and timer in the store's
//! inbox before acting, so each is acted on by exactly one runner while the others wait
//! for its claim, then skip it. The work is shared, and a runner that dies releases its
//! claims (its transaction ends). Other stores keep no inbox shared between processes:
//! there, run one process of a process manager (a warning says so at start).

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

impl<C, T: ProcessTimer> fmt::Debug for ProcessContext<C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessContext")
            .field("key", &self.key)
            .field("commands", &self.commands.len())
            .field("timers", &self.timers)
            .field("finished", &self.finished)
            .finish()
    }
}

impl<C, T: ProcessTimer> ProcessContext<C, T> {
    fn new(key: String, timers: BTreeMap<String, i64>, now: DateTime<Utc>) -> Self {
        Self {
            key,
            commands: Vec::new(),
            timers,
            now,
            finished: false,
            _timer: PhantomData,
        }
    }

    /// The context an event of `role` is handled in: an `ends_on` event finishes.
    fn for_event(key: String, timers: BTreeMap<String, i64>, role: Role) -> Self {
        let mut ctx = Self::new(key, timers, Utc::now());
        ctx.finished = role == Role::End;
        ctx
    }

    /// The context `timer` fires in: it is no longer set.
    fn for_timer(key: String, mut timers: BTreeMap<String, i64>, timer: T) -> Self {
        timers.remove(timer.name());
        Self::new(key, timers, Utc::now())
    }

    /// After the handler: a finished instance keeps no timers.
    fn settle(&mut self) {
        if self.finished {
            self.timers.clear();
        }
    }

    /// This instance's `correlate_by` value.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Dispatches a command once this step is recorded.
    pub fn dispatch(&mut self, command: C) {
        self.commands.push(command);
    }

    /// Sets `timer` to fire its duration from now (replacing it if it was set).
    pub fn set_timer(&mut self, timer: T) {
        let after = chrono::Duration::from_std(timer.after()).unwrap_or(chrono::Duration::MAX);
        let due = self
            .now
            .checked_add_signed(after)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.timers
            .insert(timer.name().to_owned(), due.timestamp_millis());
    }

    /// Clears `timer` (nothing happens if it is not set).
    pub fn clear_timer(&mut self, timer: T) {
        self.timers.remove(timer.name());
    }

    /// Whether `timer` is set.
    pub fn is_set(&self, timer: T) -> bool {
        self.timers.contains_key(timer.name())
    }

    /// When `timer` fires, if it is set.
    pub fn due(&self, timer: T) -> Option<DateTime<Utc>> {
        self.timers
            .get(timer.name())
            .and_then(|ms| DateTime::from_timestamp_millis(*ms))
    }

    /// Finishes the instance once this step is recorded: later events are ignored and
    /// its timers are dropped.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Whether [`finish`](Self::finish) was called (or the event is in `ends_on`).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The commands dispatched so far in this step.
    pub fn commands(&self) -> &[C] {
        &self.commands
    }

    fn timers_set(&self) -> Vec<T> {
        timer_list(&self.timers)
    }
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

impl TimerIndex {
    /// Takes in a step (newer than the one known for its key).
    fn record(&mut self, key: &str, version: u64, timers: &BTreeMap<String, i64>, finished: bool) {
        if let Some((known, _)) = self.instances.get(key)
            && *known >= version
        {
            return;
        }
        // Only instances with timers are kept, so the index is as large as what is
        // pending. An older step read again later (the feed behind the start-up scan)
        // may bring a timer back: firing reads the instance first and drops it.
        let before = if finished || timers.is_empty() {
            self.instances.remove(key)
        } else {
            for (name, due) in timers {
                self.heap
                    .push(Reverse((*due, key.to_owned(), name.clone())));
            }
            self.live += timers.len();
            self.instances
                .insert(key.to_owned(), (version, timers.clone()))
        };
        if let Some((_, old)) = before {
            self.live -= old.len();
        }
        // Cleared timers stay in the heap until they come due: rebuild it when they
        // outnumber the live ones.
        if self.heap.len() > 2 * self.live + 1024 {
            self.heap = self
                .instances
                .iter()
                .flat_map(|(key, (_, timers))| {
                    timers
                        .iter()
                        .map(|(name, due)| Reverse((*due, key.clone(), name.clone())))
                })
                .collect();
        }
    }

    /// Whether `(key, name)` is still set to fire at `due`.
    fn is_current(&self, key: &str, name: &str, due: i64) -> bool {
        self.instances
            .get(key)
            .is_some_and(|(_, timers)| timers.get(name) == Some(&due))
    }

    /// The next due time of a current timer (stale heap entries are dropped on the way).
    fn next_due(&mut self) -> Option<i64> {
        while let Some(Reverse((due, key, name))) = self.heap.peek() {
            if self.is_current(key, name, *due) {
                return Some(*due);
            }
            self.heap.pop();
        }
        None
    }

    /// Puts back timers taken due but not fired here (another copy holds them).
    fn put_back(&mut self, timers: Vec<(i64, String, String)>) {
        for timer in timers {
            self.heap.push(Reverse(timer));
        }
    }

    /// The current timers due at `now`, removed from the heap.
    fn take_due(&mut self, now: i64) -> Vec<(i64, String, String)> {
        let mut due = Vec::new();
        while self
            .heap
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= now)
        {
            let Some(Reverse(entry)) = self.heap.pop() else {
                break;
            };
            if self.is_current(&entry.1, &entry.2, entry.0) {
                due.push(entry);
            } else {
                tracing::debug!(
                    orkestra = "process",
                    key = entry.1,
                    timer = entry.2,
                    "timer cleared, set again, or its instance finished; dropped"
                );
            }
        }
        due
    }
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
        Ok(RunningProcessManagers {
            names: runnables.iter().map(|r| r.name().to_owned()).collect(),
            feeds: Some(feeds),
            stop,
            timers,
        })
    }
}

/// Running process managers: status, waits, and `stop`.
#[derive(Debug)]
pub struct RunningProcessManagers {
    names: Vec<String>,
    feeds: Option<RunningProjections>,
    stop: watch::Sender<bool>,
    timers: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningProcessManagers {
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

impl<D: ProcessDefinition> Runner<D> {
    fn new(definition: D, store: Store, settings: Settings) -> Self {
        let claims = settings.shared.then(|| Inbox::from(&store));
        let name = settings.name;
        Self {
            handler: Arc::from(format!("pm:{name}")),
            step_claims: Arc::from(format!("pm:{name}:step")),
            timer_claims: Arc::from(format!("pm:{name}:timer")),
            // A renamed run: `pm-fulfilment.blue-<key>` (a `.` no schema name makes, so
            // no key of the schema's run can name the same stream).
            stream: match &*name {
                n if n == D::NAME => D::STREAM.to_owned(),
                n => format!("{}.{}", D::STREAM, n.to_lowercase()),
            },
            name,
            definition,
            store,
            bus: settings.bus,
            claims,
            retries: settings.retries,
            retry_delay: settings.retry_delay,
            lanes: settings.lanes,
            cache: Mutex::new(HashMap::new()),
            timers: Mutex::new(TimerIndex::default()),
            wake: Notify::new(),
            known: Mutex::new(HashSet::new()),
            known_complete: AtomicBool::new(false),
            dispatched: Mutex::new(HashSet::new()),
            offered: (0..settings.partitions.max(1))
                .map(|_| AtomicU64::new(0))
                .collect(),
            partitions: settings.partitions.max(1),
        }
    }

    /// The partition of the instance `key`.
    fn partition(&self, key: &str) -> u32 {
        crate::runner::partition::partition_of(key, self.partitions)
    }

    /// What partition `p` of the feed was last offered.
    fn offered(&self, partition: u32) -> u64 {
        self.offered
            .get(partition as usize)
            .map_or(0, |o| o.load(Ordering::Acquire))
    }

    /// The instance key of a step record of this process manager (its stream's suffix).
    fn step_key<'a>(&self, recorded: &'a RecordedEvent) -> Option<&'a str> {
        recorded
            .stream()
            .strip_prefix(self.stream.as_str())?
            .strip_prefix('-')
    }

    fn stream(&self, key: &str) -> String {
        format!("{}-{key}", self.stream)
    }

    /// The instance's last step, from memory or the store.
    async fn load(&self, key: &str, fresh: bool) -> Result<Option<Instance<D::State>>, StoreError> {
        if !fresh && let Some(found) = crate::sync::lock(&self.cache).get(key) {
            return Ok(Some(found.clone()));
        }
        if !fresh
            && self.claims.is_none()
            && self.known_complete.load(Ordering::Acquire)
            && !crate::sync::lock(&self.known).contains(key)
        {
            return Ok(None);
        }
        let last = self
            .store
            .read_stream_backwards(&self.stream(key), u64::MAX, 1)
            .await?;
        let Some(recorded) = last.into_iter().next() else {
            return Ok(None);
        };
        let mut step: Step<D::State> = serde_json::from_str(recorded.data_json()).map_err(|e| {
            StoreError::Invalid(format!(
                "step {} of process manager {} (stream {}) cannot be read: {e}",
                recorded.id(),
                self.name,
                recorded.stream()
            ))
        })?;
        if *step.process != *self.name || step.key != key {
            return Err(StoreError::Invalid(format!(
                "stream {} holds a step of {} (instance {}), not of {} (instance {key})",
                recorded.stream(),
                step.process,
                step.key,
                self.name
            )));
        }
        // Its commands were dispatched (or are, by the feed): the next step needs none.
        step.commands.clear();
        let instance = Instance {
            version: recorded.version(),
            step,
        };
        self.remember(key, &instance);
        Ok(Some(instance))
    }

    fn remember(&self, key: &str, instance: &Instance<D::State>) {
        let mut cache = crate::sync::lock(&self.cache);
        if cache.len() >= CACHE_LIMIT && !cache.contains_key(key) {
            cache.clear();
        }
        cache.insert(key.to_owned(), instance.clone());
    }

    /// Notes that `key` has a stream; past [`KNOWN_LIMIT`] keys the set is dropped and
    /// a new instance costs a read again.
    fn know(&self, key: &str) {
        let mut known = crate::sync::lock(&self.known);
        if known.len() >= KNOWN_LIMIT {
            known.clear();
            known.shrink_to_fit();
            self.known_complete.store(false, Ordering::Release);
        } else if self.known_complete.load(Ordering::Acquire) {
            known.insert(key.to_owned());
        }
    }

    fn forget(&self, key: &str) {
        crate::sync::lock(&self.cache).remove(key);
    }

    /// Runs the handler on a copy of the state, retried; `Err` with the last error.
    async fn run_handler(
        &self,
        state: &D::State,
        key: &str,
        timers: &BTreeMap<String, i64>,
        cause: &Cause<'_, D::Event, D::Timer>,
    ) -> Result<(D::State, ProcessContext<D::Command, D::Timer>), (HandlerError, u32)> {
        let mut attempt = 0u32;
        loop {
            let mut state = state.clone();
            let mut ctx = match cause {
                Cause::Event { role, .. } => {
                    ProcessContext::for_event(key.to_owned(), timers.clone(), *role)
                }
                Cause::Timer { timer, .. } => {
                    ProcessContext::for_timer(key.to_owned(), timers.clone(), *timer)
                }
            };
            let run = match cause {
                Cause::Event { event, .. } => self.definition.handle(&mut state, event, &mut ctx),
                Cause::Timer { timer, .. } => {
                    self.definition.on_timeout(&mut state, *timer, &mut ctx)
                }
            };
            match crate::projection::run_caught(run).await {
                Ok(()) => {
                    ctx.settle();
                    return Ok((state, ctx));
                }
                Err(e) => {
                    attempt += 1;
                    if !e.is_retryable() || attempt > self.retries {
                        return Err((e, attempt));
                    }
                    tracing::warn!(orkestra = "process", process = &*self.name, key, attempt, error = %e, "process manager handler failed; retrying");
                    tokio::time::sleep(self.retry_delay.saturating_mul(attempt)).await;
                }
            }
        }
    }

    /// The instance an event belongs to (its `correlate_by` value), or why it has none.
    fn event_key(&self, recorded: &RecordedEvent) -> Result<String, String> {
        let data = recorded.data().map_err(|e| e.to_string())?;
        key_of(&data, D::CORRELATE_BY).ok_or_else(|| {
            format!(
                "event {} ({}) has no `{}`: process manager {} correlates its instances by it",
                recorded.id(),
                recorded.event_type(),
                D::CORRELATE_BY,
                self.name
            )
        })
    }

    /// Handles one event of this process manager (`key`: [`event_key`](Self::event_key)).
    async fn on_event(
        &self,
        recorded: &RecordedEvent,
        role: Role,
        key: Result<String, String>,
    ) -> Result<(), HandlerError> {
        let key = match key {
            Ok(key) => key,
            Err(reason) => return self.dead_letter(recorded, &reason, 0).await,
        };
        let event = match D::decode(recorded) {
            Ok(event) => event,
            Err(e) => return self.dead_letter(recorded, &e.to_string(), 0).await,
        };
        let cause = Cause::Event {
            event: &event,
            recorded,
            role,
        };
        self.exclusively(&self.handler, recorded.id(), async || {
            self.step(&key, &cause).await
        })
        .await
    }

    /// Waits until the feed has handled every event recorded until now, so a timer never
    /// fires on a state that misses an event that came before its due time (after a
    /// restart, while the feed is behind, or while an older PostgreSQL transaction keeps
    /// a commit out of the global order). `false` when asked to stop first.
    async fn caught_up(&self, partition: u32, stop: &mut watch::Receiver<bool>) -> bool {
        let head = loop {
            match self.store.recorded_head().await {
                Ok(head) => break head,
                Err(e) => {
                    tracing::warn!(orkestra = "process", process = &*self.name, error = %e, "cannot read the head; timers wait");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stop.changed() => return false,
                    }
                }
            }
        };
        let Some(head) = head else {
            return true;
        };
        let (since, mut warned) = (tokio::time::Instant::now(), false);
        while self.offered(partition) <= head {
            if *stop.borrow() {
                return false;
            }
            if !warned && since.elapsed() >= TIMERS_WAIT_WARNING {
                warned = true;
                tracing::warn!(
                    orkestra = "process",
                    process = &*self.name,
                    position = head,
                    "due timers wait for the feed to reach this position (a failing feed, or on PostgreSQL a long-running transaction, holds it back)"
                );
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
                _ = stop.changed() => {}
            }
        }
        true
    }

    /// The id a timer's firing goes by (the cause of its step).
    fn timer_cause_id(&self, key: &str, timer: D::Timer, due: i64) -> String {
        uuid_v5(&format!("{}/{key}/timer/{}/{due}", self.name, timer.name()))
    }

    /// The snapshot key of the timer index.
    fn timers_key(&self) -> String {
        timers_key(&self.name)
    }

    /// Saves the timer index as of the feed's position, so the next start reads only
    /// the steps after it (a lost or stale snapshot only costs a longer read).
    async fn save_timers(&self) {
        let offered = (0..self.partitions)
            .map(|p| self.offered(p))
            .min()
            .unwrap_or(0);
        // Every step before `offered` is in the index.
        let Some(position) = offered.checked_sub(1) else {
            return;
        };
        let pending: Vec<SavedTimers> = crate::sync::lock(&self.timers)
            .instances
            .iter()
            .map(|(key, (version, timers))| (key.clone(), *version, timers.clone()))
            .collect();
        let Ok(state) = serde_json::to_string(&pending) else {
            return;
        };
        let snapshot = Snapshot {
            stream: self.timers_key(),
            version: position,
            shape: TIMERS_SHAPE.to_owned(),
            state,
        };
        if let Err(e) = self.store.save_snapshot(snapshot).await {
            tracing::warn!(orkestra = "process", process = &*self.name, error = %e, "cannot save the timer snapshot");
        }
    }

    /// An event or timer that changes nothing, said at debug level.
    fn ignored(&self, key: &str, subject: &str, why: &str) {
        tracing::debug!(
            orkestra = "process",
            process = &*self.name,
            key,
            subject,
            why,
            "ignored"
        );
    }

    /// Runs `work` as the one runner acting on `(kind, id)`: with runners in other
    /// processes, after claiming the pair in the store's inbox (`Ok` without running
    /// when another runner did it already), the claim committed when `work` succeeded.
    async fn exclusively(
        &self,
        kind: &Arc<str>,
        id: &str,
        work: impl AsyncFnOnce() -> Result<(), HandlerError>,
    ) -> Result<(), HandlerError> {
        let Some(inbox) = &self.claims else {
            return work().await;
        };
        let claim = match inbox.claim(kind, id).await {
            Ok(Some(claim)) => claim,
            Ok(None) => return Ok(()),
            Err(e) => return Err(HandlerError::fail(e.to_string())),
        };
        work().await?;
        claim
            .commit()
            .await
            .map_err(|e| HandlerError::fail(e.to_string()))
    }

    /// Loads, handles and records one step, again on a conflict.
    async fn step(
        &self,
        key: &str,
        cause: &Cause<'_, D::Event, D::Timer>,
    ) -> Result<(), HandlerError> {
        let mut fresh = false;
        for _ in 0..CONFLICT_RETRIES {
            match self.try_step(key, cause, fresh).await {
                Ok(()) => return Ok(()),
                Err(StepError::Conflict) => {
                    self.forget(key);
                    fresh = true;
                }
                Err(StepError::Retry(e)) => {
                    self.forget(key);
                    return Err(e);
                }
                Err(StepError::Fatal(reason)) => {
                    self.forget(key);
                    let reason =
                        format!("instance {key} of process manager {}: {reason}", self.name);
                    return match cause {
                        Cause::Event { recorded, .. } => {
                            self.dead_letter(recorded, &reason, 1).await
                        }
                        Cause::Timer { timer, due } => {
                            let id = self.timer_cause_id(key, *timer, *due);
                            self.dead_letter_timer(key, *timer, &id, &new_id(), &reason, 1)
                                .await
                        }
                    };
                }
            }
        }
        Err(HandlerError::fail(format!(
            "instance {key} of process manager {} kept changing under {CONFLICT_RETRIES} tries",
            self.name
        )))
    }

    async fn try_step(
        &self,
        key: &str,
        cause: &Cause<'_, D::Event, D::Timer>,
        fresh: bool,
    ) -> Result<(), StepError> {
        // With runners in other processes the cached step may be stale: read it.
        let instance = self.load(key, fresh || self.claims.is_some()).await?;
        // What this cause means for the instance as it is.
        let (state, timers, last, correlation) = match (&instance, cause) {
            (None, Cause::Event { role, recorded, .. }) => {
                if *role != Role::Start {
                    self.ignored(
                        key,
                        recorded.event_type(),
                        "event for an instance that was never started; ignored",
                    );
                    return Ok(());
                }
                (
                    D::State::default(),
                    BTreeMap::new(),
                    None,
                    recorded.metadata().correlation_id.clone(),
                )
            }
            (Some(i), Cause::Event { role, recorded, .. }) => {
                if i.step.last.is_some_and(|l| l >= recorded.position()) {
                    // Handled already (a redelivery after a crash): its step's commands are
                    // dispatched when the feed reads the step.
                    return Ok(());
                }
                if i.step.finished {
                    self.ignored(
                        key,
                        recorded.event_type(),
                        "event for a finished instance; ignored",
                    );
                    return Ok(());
                }
                if *role == Role::Start {
                    self.ignored(
                        key,
                        recorded.event_type(),
                        "start event for an instance that exists; ignored",
                    );
                    return Ok(());
                }
                i.parts()
            }
            (None, Cause::Timer { timer, .. }) => {
                self.ignored(key, timer.name(), "timer of an unknown instance; dropped");
                return Ok(());
            }
            (Some(i), Cause::Timer { timer, due }) => {
                if i.step.finished {
                    self.ignored(key, timer.name(), "timer of a finished instance; dropped");
                    return Ok(());
                }
                if i.step.timers.get(timer.name()) != Some(due) {
                    self.ignored(key, timer.name(), "timer cleared or set again; dropped");
                    return Ok(());
                }
                i.parts()
            }
        };
        let (cause_id, parent) = match cause {
            Cause::Event { recorded, .. } => (
                recorded.id().to_owned(),
                Some((recorded.metadata(), recorded.id())),
            ),
            Cause::Timer { timer, due } => (self.timer_cause_id(key, *timer, *due), None),
        };
        let step_id = uuid_v5(&format!("{}/{cause_id}", self.name));
        let metadata = match parent {
            Some((meta, id)) => Metadata::derive(meta, id),
            None => {
                let mut m = Metadata::new().with_correlation_id(correlation.clone());
                m.causation_id = Some(step_id.clone());
                m
            }
        };
        // The handler's outcome, its commands checked: an invalid command fails the step
        // as the handler failing would (it would be invalid again on a retry).
        let outcome = match self.run_handler(&state, key, &timers, cause).await {
            Ok((s, ctx)) => {
                let mut raw = Vec::with_capacity(ctx.commands.len());
                let mut invalid = None;
                for (index, command) in ctx.commands.into_iter().enumerate() {
                    let id = uuid_v5(&format!("{}/{cause_id}/command/{index}", self.name));
                    match command.into_raw(id, metadata.clone()) {
                        Ok(c) => raw.push(c),
                        Err(e) => {
                            invalid = Some(HandlerError::reject(format!(
                                "process manager {} dispatched an invalid command: {e}",
                                self.name
                            )));
                            break;
                        }
                    }
                }
                match invalid {
                    None => Ok((s, ctx.timers, ctx.finished, raw)),
                    Some(e) => Err((e, 1)),
                }
            }
            Err(failure) => Err(failure),
        };
        let (new_state, ctx_timers, finished, raw) = match outcome {
            Ok(done) => done,
            Err((error, attempts)) => {
                let reason = error.to_string();
                match cause {
                    // The instance keeps its state; the event goes to the dead letters.
                    Cause::Event { recorded, .. } => {
                        self.dead_letter(recorded, &reason, attempts)
                            .await
                            .map_err(StepError::Retry)?;
                        return Ok(());
                    }
                    // A failed timer is recorded as fired (it would fail again), reported.
                    Cause::Timer { timer, .. } => {
                        self.dead_letter_timer(
                            key,
                            *timer,
                            &cause_id,
                            &correlation,
                            &reason,
                            attempts,
                        )
                        .await
                        .map_err(StepError::Retry)?;
                        let mut left = timers;
                        left.remove(timer.name());
                        (state, left, false, Vec::new())
                    }
                }
            }
        };
        let last = match cause {
            Cause::Event { recorded, .. } => Some(recorded.position()),
            Cause::Timer { .. } => last,
        };
        let step = Step {
            process: self.name.to_string(),
            key: key.to_owned(),
            state: new_state,
            timers: ctx_timers,
            finished,
            last,
            correlation,
            commands: raw,
        };
        let data = serde_json::to_value(&step)
            .map_err(|e| StepError::Retry(HandlerError::fail(format!("step: {e}"))))?;
        let expected = match &instance {
            None => ExpectedVersion::NoStream,
            Some(i) => ExpectedVersion::Exact(i.version),
        };
        let mut step_metadata = metadata;
        step_metadata.causation_id = Some(cause_id);
        let appended = self
            .store
            .append(
                &self.stream(key),
                expected,
                vec![EventData {
                    id: step_id.clone(),
                    event_type: STEP_TYPE.to_owned(),
                    schema_version: 1,
                    data,
                    metadata: step_metadata,
                    topic: None,
                }],
            )
            .await?;
        let version = appended.last_version;
        crate::sync::lock(&self.timers).record(key, version, &step.timers, step.finished);
        self.wake.notify_one();
        let mut step = step;
        // The cache keeps what the next step starts from; the commands leave here.
        let commands = std::mem::take(&mut step.commands);
        self.remember(key, &Instance { version, step });
        if self.claims.is_some() {
            return Ok(());
        }
        self.know(key);
        // Alone on the store, a step of the feed's own (an event's) is dispatched now,
        // before the feed reads it back: should the process die first, the feed dispatches
        // it after the restart (the same ids). A timer's step is left to the feed, which
        // may read it before a dispatch from here would end.
        if matches!(cause, Cause::Event { .. }) {
            match self.dispatch_all(key, commands).await {
                Ok(()) => {
                    crate::sync::lock(&self.dispatched).insert(step_id);
                }
                Err(e) => {
                    tracing::warn!(orkestra = "process", process = &*self.name, key, error = %e, "cannot dispatch a step's commands yet; the feed will");
                }
            }
        }
        Ok(())
    }

    /// Dispatches a step's commands, in order.
    async fn dispatch_all(&self, key: &str, commands: Vec<RawCommand>) -> Result<(), HandlerError> {
        for command in commands {
            let topic = command.topic.clone();
            let envelope = CommandEnvelope::from_message(Message::from_raw_command(command));
            match self.bus.dispatch(envelope).await {
                Ok(_) => {}
                // Nothing is dropped: the feed waits here (retrying, with a warning each
                // time) until a handler of the command is subscribed.
                Err(e @ BusError::NoHandler { .. }) => {
                    return Err(HandlerError::fail(format!(
                        "process manager {} cannot dispatch {topic} for instance {key}: {e}",
                        self.name
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Dead-letters a timer whose firing failed, as an `orkestra.ProcessTimer` message
    /// naming the instance and the timer.
    async fn dead_letter_timer(
        &self,
        key: &str,
        timer: D::Timer,
        id: &str,
        correlation: &str,
        reason: &str,
        attempts: u32,
    ) -> Result<(), HandlerError> {
        let message = Message::from_raw_event(crate::message::RawEvent {
            id: id.to_owned(),
            event_type: "orkestra.ProcessTimer".to_owned(),
            topic: format!("orkestra.process.{}.timer", self.name),
            version: 1,
            data: serde_json::json!({ "process": &*self.name, "key": key, "timer": timer.name() }),
            metadata: Metadata::new().with_correlation_id(correlation),
        });
        self.bus
            .dead_letter_from(&message, &self.handler, reason, attempts)
            .await
            .map_err(HandlerError::from)
    }

    async fn dead_letter(
        &self,
        recorded: &RecordedEvent,
        reason: &str,
        attempts: u32,
    ) -> Result<(), HandlerError> {
        self.bus
            .dead_letter_from(&message_of(recorded), &self.handler, reason, attempts)
            .await
            .map_err(HandlerError::from)
    }

    /// A step read from the log: its timers go to the index, its commands to the bus.
    async fn on_step(&self, recorded: &RecordedEvent) -> Result<(), HandlerError> {
        if self.claims.is_none() && crate::sync::lock(&self.dispatched).remove(recorded.id()) {
            // Recorded and dispatched by this process: its timers are indexed already.
            return Ok(());
        }
        let step: Step<serde::de::IgnoredAny> = match serde_json::from_str(recorded.data_json()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(orkestra = "process", process = &*self.name, step = recorded.id(), error = %e, "a step cannot be read; skipped");
                return Ok(());
            }
        };
        if *step.process != *self.name {
            return Ok(());
        }
        crate::sync::lock(&self.timers).record(
            &step.key,
            recorded.version(),
            &step.timers,
            step.finished,
        );
        self.wake.notify_one();
        if step.commands.is_empty() {
            return Ok(());
        }
        let key = step.key;
        let commands = step.commands;
        self.exclusively(&self.step_claims, recorded.id(), async || {
            self.dispatch_all(&key, commands).await
        })
        .await
    }

    /// Fires one due timer.
    async fn fire(&self, due: i64, key: String, name: String, stop: &watch::Receiver<bool>) {
        let Some(timer) = D::Timer::from_name(&name) else {
            tracing::debug!(
                orkestra = "process",
                process = &*self.name,
                key,
                timer = name,
                "timer no longer in the schema; dropped"
            );
            return;
        };
        let claim_id = format!("{key}/{name}/{due}");
        let mut attempt = 0u32;
        loop {
            let result = self
                .exclusively(&self.timer_claims, &claim_id, async || {
                    self.step(&key, &Cause::Timer { timer, due }).await
                })
                .await;
            match result {
                Ok(()) => return,
                // Left set in the store: it fires after the next start.
                Err(_) if *stop.borrow() => return,
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(orkestra = "process", process = &*self.name, key, timer = name, attempt, error = %e, "cannot fire a timer; retrying");
                    tokio::time::sleep(Duration::from_millis(250).saturating_mul(attempt.min(40)))
                        .await;
                }
            }
        }
    }
}

impl<D: ProcessDefinition> Runnable for Runner<D> {
    fn name(&self) -> &str {
        &self.name
    }

    fn feed(self: Arc<Self>) -> Arc<dyn Erased> {
        Arc::new(Feed {
            runner: self,
            partition: 0,
            done_ahead: Mutex::default(),
        })
    }

    fn resume_after(&self, checkpoint: Option<u64>) {
        let next = checkpoint.map_or(0, |c| c.saturating_add(1));
        for offered in &self.offered {
            offered.store(next, Ordering::Release);
        }
    }

    fn load_timers(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut next = 0u64;
            // The index as a snapshot saved it, then the steps after it.
            let snapshot = self.store.load_snapshot(&self.timers_key()).await?;
            if let Some(snapshot) = snapshot.filter(|s| s.shape == TIMERS_SHAPE)
                && let Ok(saved) = serde_json::from_str::<Vec<SavedTimers>>(&snapshot.state)
            {
                let mut index = crate::sync::lock(&self.timers);
                for (key, version, timers) in saved {
                    index.record(&key, version, &timers, false);
                }
                next = snapshot.version.saturating_add(1);
            } else {
                // From the start: every instance key is seen on the way.
                self.known_complete.store(true, Ordering::Release);
            }
            loop {
                let batch = self.store.read_all(next, 1_000).await?;
                let Some(last) = batch.last() else {
                    break;
                };
                next = last.position().saturating_add(1);
                let mut index = crate::sync::lock(&self.timers);
                for recorded in &batch {
                    if recorded.event_type() != STEP_TYPE
                        || !recorded.stream().starts_with(&self.stream)
                    {
                        continue;
                    }
                    let Ok(step) =
                        serde_json::from_str::<Step<serde::de::IgnoredAny>>(recorded.data_json())
                    else {
                        continue;
                    };
                    if *step.process == *self.name {
                        index.record(&step.key, recorded.version(), &step.timers, step.finished);
                        self.know(&step.key);
                    }
                }
            }
            Ok(())
        })
    }

    fn run_timers(
        self: Arc<Self>,
        mut stop: watch::Receiver<bool>,
        holding: Holding,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut saved_at = tokio::time::Instant::now();
            loop {
                if *stop.borrow() {
                    self.save_timers().await;
                    return;
                }
                if saved_at.elapsed() >= TIMERS_SNAPSHOT_EVERY {
                    saved_at = tokio::time::Instant::now();
                    self.save_timers().await;
                }
                let now = now_ms();
                let (due, next) = {
                    let mut index = crate::sync::lock(&self.timers);
                    let due = index.take_due(now);
                    (due, index.next_due())
                };
                // A timer fires in the copy that holds its instance's partition, once the
                // partition's feed has caught up; the others are put back for later (the
                // holder's step clears them, or this copy takes the partition over).
                let (mut ours, mut later) = (Vec::new(), Vec::new());
                for timer in due {
                    let partition = self.partition(&timer.1);
                    if holding.holds(partition) {
                        ours.push((partition, timer));
                    } else {
                        later.push(timer);
                    }
                }
                let mut fire = Vec::with_capacity(ours.len());
                let mut ready: HashMap<u32, bool> = HashMap::new();
                for (partition, timer) in ours {
                    let caught_up = match ready.get(&partition) {
                        Some(&r) => r,
                        None => {
                            let r = self.caught_up(partition, &mut stop).await;
                            ready.insert(partition, r);
                            r
                        }
                    };
                    if caught_up {
                        fire.push(timer);
                    } else {
                        later.push(timer);
                    }
                }
                let waiting = !later.is_empty();
                if waiting {
                    crate::sync::lock(&self.timers).put_back(later);
                }
                let due = fire;
                if !due.is_empty() {
                    // Fired side by side (up to 32 at once): one slow handler does not
                    // hold the others back, and a backlog after downtime does not take
                    // every connection of the store.
                    use futures_util::StreamExt as _;
                    let stopping = stop.clone();
                    futures_util::stream::iter(due)
                        .for_each_concurrent(TIMER_CONCURRENCY, |(at, key, name)| {
                            self.fire(at, key, name, &stopping)
                        })
                        .await;
                    continue;
                }
                let wait = match next {
                    // Due timers of partitions held elsewhere: look again shortly.
                    _ if waiting => TIMERS_ELSEWHERE_LOOK,
                    None => Duration::from_secs(1),
                    Some(at) => {
                        Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0))
                            .min(Duration::from_secs(1))
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.wake.notified() => {}
                    _ = stop.changed() => {}
                }
            }
        })
    }
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

impl<D: ProcessDefinition> Feed<D> {
    /// What the feed does with a recorded event: the instance stream it concerns (events
    /// and steps of one instance are handled in order) and the work, or `None` when it
    /// is not this process manager's.
    fn work<'a>(&'a self, event: &'a RecordedEvent) -> Option<(String, Work<'a>)> {
        let runner = &self.runner;
        if event.event_type() == STEP_TYPE {
            if !event.stream().starts_with(&runner.stream) {
                return None;
            }
            return Some((event.stream().to_owned(), Box::pin(runner.on_step(event))));
        }
        let role = D::role(event.event_type())?;
        let key = runner.event_key(event);
        let lane = match &key {
            Ok(key) => runner.stream(key),
            // Dead-lettered on its own.
            Err(_) => format!("\u{0}{}", event.id()),
        };
        Some((lane, Box::pin(runner.on_event(event, role, key))))
    }
}

impl<D: ProcessDefinition> Erased for Feed<D> {
    fn handle<'a>(
        &'a self,
        event: &'a RecordedEvent,
        _ctx: ProjectionContext<'a>,
    ) -> Option<BoxFuture<'a, Result<(), HandlerError>>> {
        if crate::sync::lock(&self.done_ahead).remove(&event.position()) {
            return None;
        }
        let (_, work) = self.work(event)?;
        let offered = self.runner.offered.get(self.partition as usize);
        Some(Box::pin(async move {
            work.await?;
            if let Some(offered) = offered {
                offered.store(event.position().saturating_add(1), Ordering::Release);
            }
            Ok(())
        }))
    }

    fn for_partition(&self, partition: u32) -> Option<Arc<dyn Erased>> {
        Some(Arc::new(Feed {
            runner: self.runner.clone(),
            partition,
            done_ahead: Mutex::default(),
        }))
    }

    /// An instance's events and steps go to the partition of its key.
    fn partition_key<'a>(&self, event: &'a RecordedEvent) -> std::borrow::Cow<'a, str> {
        let runner = &self.runner;
        if event.event_type() == STEP_TYPE
            && let Some(key) = runner.step_key(event)
        {
            return std::borrow::Cow::Borrowed(key);
        }
        if D::role(event.event_type()).is_some()
            && let Ok(key) = runner.event_key(event)
        {
            return std::borrow::Cow::Owned(key);
        }
        std::borrow::Cow::Borrowed(event.stream())
    }

    /// Another partition's step: its timers go to the index all the same, so a timer
    /// is known here when this copy takes its partition over.
    fn observe(&self, event: &RecordedEvent) {
        let runner = &self.runner;
        if event.event_type() != STEP_TYPE || runner.step_key(event).is_none() {
            return;
        }
        let Ok(step) = serde_json::from_str::<Step<serde::de::IgnoredAny>>(event.data_json())
        else {
            return;
        };
        if *step.process == *runner.name {
            crate::sync::lock(&runner.timers).record(
                &step.key,
                event.version(),
                &step.timers,
                step.finished,
            );
            runner.know(&step.key);
        }
    }

    /// The batch in lanes, one per instance: each lane in order, up to `lanes` side by
    /// side (their appends share the store's group commits and connections).
    fn handle_batch<'a>(
        &'a self,
        events: &'a [RecordedEvent],
    ) -> Option<BoxFuture<'a, Result<(), (u64, HandlerError)>>> {
        Some(Box::pin(async move {
            let mut lanes: Vec<Vec<(u64, Work<'a>)>> = Vec::new();
            let mut lane_of: HashMap<String, usize> = HashMap::new();
            let mut ahead = std::mem::take(&mut *crate::sync::lock(&self.done_ahead));
            for event in events {
                if ahead.contains(&event.position()) {
                    continue;
                }
                let Some((lane, work)) = self.work(event) else {
                    continue;
                };
                let i = *lane_of.entry(lane).or_insert_with(|| {
                    lanes.push(Vec::new());
                    lanes.len() - 1
                });
                lanes[i].push((event.position(), work));
            }
            let failed: Mutex<Option<(u64, HandlerError)>> = Mutex::new(None);
            let finished: Mutex<Vec<u64>> = Mutex::default();
            use futures_util::StreamExt as _;
            futures_util::stream::iter(lanes)
                .for_each_concurrent(self.runner.lanes, |lane| {
                    let (failed, finished) = (&failed, &finished);
                    async move {
                        for (position, work) in lane {
                            if let Err(e) = work.await {
                                let mut first = crate::sync::lock(failed);
                                if first.as_ref().is_none_or(|(p, _)| position < *p) {
                                    *first = Some((position, e));
                                }
                                return;
                            }
                            crate::sync::lock(finished).push(position);
                        }
                    }
                })
                .await;
            let failed = failed.into_inner().unwrap_or_else(|p| p.into_inner());
            let done = match &failed {
                Some((position, _)) => *position,
                None => events.last().map_or(0, |e| e.position().saturating_add(1)),
            };
            // The next read starts at `done`: what is finished from there on (this time, or
            // skipped this time as finished before) is not done again.
            if failed.is_some() {
                ahead.extend(finished.into_inner().unwrap_or_else(|p| p.into_inner()));
            }
            ahead.retain(|&p| p >= done);
            *crate::sync::lock(&self.done_ahead) = ahead;
            if let Some(offered) = self.runner.offered.get(self.partition as usize) {
                offered.store(done, Ordering::Release);
            }
            match failed {
                Some(failure) => Err(failure),
                None => Ok(()),
            }
        }))
    }
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

impl<D: ProcessDefinition> ProcessTest<D> {
    /// The instance after `events` (handled as the runtime would, from a fresh state).
    pub fn given(definition: D, events: Vec<D::Event>) -> Self {
        Self {
            definition,
            given: events,
        }
    }

    /// The instance after the given events, handled by the runtime's rules: an event
    /// before a start, a second start and anything after the end change nothing.
    async fn replay(&self) -> Result<Replayed<D>, HandlerError> {
        let mut done = Replayed::<D> {
            state: D::State::default(),
            timers: BTreeMap::new(),
            finished: false,
            key: None,
        };
        for event in &self.given {
            if !done.takes(D::event_role(event)) {
                continue;
            }
            let key = D::key(event);
            let (state, ctx) = self
                .run(&done.state, done.timers.clone(), event, &key)
                .await?;
            done.state = state;
            done.timers = ctx.timers;
            done.finished = ctx.finished;
            done.key = Some(key);
        }
        Ok(done)
    }

    async fn run(
        &self,
        state: &D::State,
        timers: BTreeMap<String, i64>,
        event: &D::Event,
        key: &str,
    ) -> Result<(D::State, ProcessContext<D::Command, D::Timer>), HandlerError> {
        let mut state = state.clone();
        let mut ctx = ProcessContext::for_event(key.to_owned(), timers, D::event_role(event));
        self.definition.handle(&mut state, event, &mut ctx).await?;
        ctx.settle();
        Ok((state, ctx))
    }

    /// Handles `event` after the given ones, as the runtime would: an `ends_on` event
    /// finishes the instance (no timers left); an event before a start, a `starts_on`
    /// event for an instance that exists and any event after the end change nothing.
    pub async fn when(&self, event: D::Event) -> Result<Then<D>, HandlerError> {
        let done = self.replay().await?;
        if !done.takes(D::event_role(&event)) {
            let timers = timer_list::<D::Timer>(&done.timers);
            return Ok((done.state, Vec::new(), timers));
        }
        let key = D::key(&event);
        let (state, ctx) = self.run(&done.state, done.timers, &event, &key).await?;
        let set = ctx.timers_set();
        Ok((state, ctx.commands, set))
    }

    /// Fires `timer` after the given events (nothing happens to an instance that never
    /// started or has finished).
    pub async fn when_timeout(&self, timer: D::Timer) -> Result<Then<D>, HandlerError> {
        let done = self.replay().await?;
        let key = match done.key {
            Some(key) if !done.finished => key,
            _ => {
                let timers = timer_list::<D::Timer>(&done.timers);
                return Ok((done.state, Vec::new(), timers));
            }
        };
        let mut state = done.state;
        let mut ctx = ProcessContext::for_timer(key, done.timers, timer);
        self.definition
            .on_timeout(&mut state, timer, &mut ctx)
            .await?;
        ctx.settle();
        let set = ctx.timers_set();
        Ok((state, ctx.commands, set))
    }

    /// The state after the given events.
    pub async fn state(&self) -> Result<D::State, HandlerError> {
        Ok(self.replay().await?.state)
    }
}

/// A [`ProcessTest`] instance after its given events.
struct Replayed<D: ProcessDefinition> {
    state: D::State,
    timers: BTreeMap<String, i64>,
    finished: bool,
    /// The instance's key, once an event started it.
    key: Option<String>,
}

impl<D: ProcessDefinition> Replayed<D> {
    /// Whether an event of `role` is handled, as the runtime decides.
    fn takes(&self, role: Role) -> bool {
        !self.finished && (self.key.is_some() != (role == Role::Start))
    }
}

fn timer_list<T: ProcessTimer>(timers: &BTreeMap<String, i64>) -> Vec<T> {
    timers
        .keys()
        .filter_map(|name| T::from_name(name))
        .collect()
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
