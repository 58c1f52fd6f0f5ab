//! The [`Bus`] handle and its adapters.
//!
//! User code talks to [`Bus`] only; which adapter runs behind it is a configuration
//! choice ([`Bus::from_config`]), so handlers never change when the adapter does.

mod context;
mod in_process;
mod lifecycle;
#[cfg(feature = "rabbitmq")]
#[cfg_attr(docsrs, doc(cfg(feature = "rabbitmq")))]
pub mod rabbitmq;
mod run;
mod subscription;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

pub use context::HandlerContext;
pub(crate) use subscription::Input;
pub use subscription::{Subscription, Target};

use crate::config::{BusAdapter, Config, ConfigError, InboxMode, KeysMode};
use crate::handler::{DeadLetter, HandlerError, Inbox};
use crate::keys::{KeyError, Sealer};
use crate::message::{CommandEnvelope, EventEnvelope, Message, MessageKind, TransitionError};

/// Why a bus operation failed. Handler failures are not bus errors: they are recorded in
/// the envelope and, once retries are exhausted, in a [`DeadLetter`].
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// A command was dispatched on a topic no handler is subscribed to.
    #[error("no handler is subscribed to command topic {topic:?}")]
    NoHandler {
        /// The command topic.
        topic: String,
    },
    /// A second handler for one command type.
    #[error(
        "command topic {topic:?} already has handler {existing:?}; {handler:?} cannot subscribe too"
    )]
    CommandAlreadyHandled {
        /// The command topic.
        topic: String,
        /// The handler already subscribed.
        existing: String,
        /// The handler refused.
        handler: String,
    },
    /// A handler name subscribed twice (names identify handlers, and their queues).
    #[error("a handler named {handler:?} is already subscribed")]
    DuplicateHandler {
        /// The handler name.
        handler: String,
    },
    /// A message other than what the operation takes (an event given to dispatch).
    #[error("{0}")]
    WrongKind(String),
    /// The envelope is not in a state that can be dispatched (already finished).
    #[error(transparent)]
    Envelope(#[from] TransitionError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The configured adapter is not part of this build.
    #[error("{setting} = {adapter:?}: {reason}")]
    AdapterUnavailable {
        /// The setting that chose it.
        setting: &'static str,
        /// The adapter name.
        adapter: &'static str,
        /// Why it is unavailable.
        reason: &'static str,
    },
    /// The bus is shut down.
    #[error("the bus is closed")]
    Closed,
    /// The broker cannot be reached (the URL is shown without its password).
    #[error("{setting}: the broker is unavailable: {message}")]
    Unavailable {
        /// The setting that pointed at it.
        setting: &'static str,
        /// Why, with secrets hidden.
        message: String,
        /// The client's error, when there was one.
        #[source]
        source: Option<crate::DriverError>,
    },
    /// A queue exists with other arguments than this bus declares (another
    /// `bus.queue_type`, say). RabbitMQ cannot change a queue's type: the bus refuses to
    /// start rather than redeclare it.
    #[error(
        "queue {queue:?} exists with other arguments than a {wanted} queue of this bus ({source}); \
         drain and delete it (or move its messages with a shovel) before switching bus.queue_type, \
         or set bus.queue_type to the type it has"
    )]
    QueueMismatch {
        /// The queue.
        queue: String,
        /// The type this bus declares.
        wanted: &'static str,
        /// The broker's refusal.
        #[source]
        source: crate::DriverError,
    },
    /// The broker failed or refused an operation.
    #[error("broker: {0}")]
    Broker(#[source] crate::DriverError),
    /// The broker did not answer in time (the operation may or may not have happened).
    #[error("timed out waiting for the {0}")]
    Timeout(&'static str),
    /// A message over the configured size limit (`bus.max_message_bytes`).
    #[error("message of {size} bytes exceeds bus.max_message_bytes ({limit})")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A message could not be encoded for the wire.
    #[error("cannot encode the message: {0}")]
    Encode(String),
    /// A handler of events with personal fields subscribed to a RabbitMQ bus without
    /// keys: it could not open what it receives (see [`keys`](crate::keys)).
    #[error(
        "handler {handler:?} receives event {event_type:?}, whose personal fields travel \
         encrypted on RabbitMQ, but this bus has no keys to open them: {fix} before subscribing"
    )]
    KeysRequired {
        /// The handler refused.
        handler: String,
        /// The first of its events with personal fields.
        event_type: String,
        /// The call that gives the bus its keys.
        fix: &'static str,
    },
    /// Personal data the bus cannot carry: an event without its subject, a description
    /// the bus's keys do not share, a partition key that would be encrypted. Names the
    /// event type and field, never a value.
    #[error("personal data: {0}")]
    PersonalData(String),
    /// The key store failed (worth another try).
    #[error(transparent)]
    Keys(#[from] KeyError),
}

#[derive(Debug)]
struct Backend {
    adapter: Adapter,
    /// Where `once: true` handlers record what they handled.
    inbox: std::sync::RwLock<Inbox>,
    /// `bus.inbox`: with `Store`, `once: true` handlers wait for a store's inbox.
    inbox_mode: InboxMode,
    /// Whether [`Bus::with_inbox`] gave an inbox.
    inbox_given: std::sync::atomic::AtomicBool,
    /// `bus.keys`: with `Store`, [`Bus::with_store`] gives the store's keys.
    keys_mode: KeysMode,
    /// The keys and personal data personal fields are sealed and opened with (RabbitMQ).
    sealer: std::sync::RwLock<Option<Arc<Sealer>>>,
    /// The instruments of the meter provider installed when the bus was built.
    metrics: Option<Arc<crate::metrics::Instruments>>,
}

impl Backend {
    fn new(adapter: Adapter, inbox_mode: InboxMode, keys_mode: KeysMode) -> Arc<Self> {
        Arc::new(Self {
            adapter,
            inbox: std::sync::RwLock::new(Inbox::default()),
            inbox_mode,
            inbox_given: std::sync::atomic::AtomicBool::new(false),
            keys_mode,
            sealer: std::sync::RwLock::new(None),
            metrics: crate::metrics::current(),
        })
    }
}

#[derive(Debug)]
enum Adapter {
    InProcess(in_process::InProcess),
    #[cfg(feature = "rabbitmq")]
    RabbitMq(Arc<rabbitmq::RabbitMq>),
}

/// A handle to a message bus. Cheap to clone; clones share the bus.
#[derive(Clone)]
pub struct Bus {
    backend: Arc<Backend>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match &self.backend.adapter {
            Adapter::InProcess(_) => "in_process",
            #[cfg(feature = "rabbitmq")]
            Adapter::RabbitMq(_) => "rabbitmq",
        };
        f.debug_struct("Bus")
            .field("adapter", &name)
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// An in-process bus: handlers run in the dispatching task, nothing is serialized.
    pub fn in_process() -> Self {
        Self::in_process_with(InboxMode::Memory, KeysMode::None)
    }

    fn in_process_with(inbox: InboxMode, keys: KeysMode) -> Self {
        Self {
            backend: Backend::new(
                Adapter::InProcess(in_process::InProcess::new()),
                inbox,
                keys,
            ),
        }
    }

    /// The bus chosen by `config.bus`. With `bus.inbox = "store"`, give it the store
    /// with [`with_store`](Self::with_store) before subscribing `once: true` handlers.
    pub async fn from_config(config: &Config) -> Result<Self, BusError> {
        match config.bus.adapter {
            BusAdapter::InProcess => Ok(Self::in_process_with(config.bus.inbox, config.bus.keys)),
            #[cfg(feature = "rabbitmq")]
            BusAdapter::RabbitMq => Ok(Self {
                backend: Backend::new(
                    Adapter::RabbitMq(Arc::new(rabbitmq::RabbitMq::connect(&config.bus).await?)),
                    config.bus.inbox,
                    config.bus.keys,
                ),
            }),
            #[cfg(not(feature = "rabbitmq"))]
            BusAdapter::RabbitMq => Err(BusError::AdapterUnavailable {
                setting: "bus.adapter",
                adapter: "rabbitmq",
                reason: "this build of orkestra-runtime lacks the `rabbitmq` feature",
            }),
        }
    }

    /// Records the messages `once: true` handlers handled in `inbox` instead of the
    /// default bounded memory: `bus.with_inbox(&store)` keeps them in the event store
    /// (SQLite, PostgreSQL), where they survive restarts and, on PostgreSQL, share a
    /// transaction with the handler's writes ([`HandlerContext::postgres`]). Set it
    /// before subscribing; clones of the bus share it.
    #[must_use]
    pub fn with_inbox(self, inbox: impl Into<Inbox>) -> Self {
        *crate::sync::write(&self.backend.inbox) = inbox.into();
        self.backend
            .inbox_given
            .store(true, std::sync::atomic::Ordering::Release);
        self
    }

    /// `bus.inbox` as configured.
    pub(crate) fn inbox_mode(&self) -> InboxMode {
        self.backend.inbox_mode
    }

    /// `bus.keys` as configured.
    pub(crate) fn keys_mode(&self) -> KeysMode {
        self.backend.keys_mode
    }

    /// Seals and opens personal fields with `sealer` from now on (clones of the bus
    /// share it); `Bus::with_keys` calls it with a store's.
    pub(crate) fn set_sealer(&self, sealer: Option<Arc<Sealer>>) {
        *crate::sync::write(&self.backend.sealer) = sealer;
    }

    /// What personal fields are sealed and opened with, if the bus has keys.
    pub(crate) fn sealer(&self) -> Option<Arc<Sealer>> {
        crate::sync::read(&self.backend.sealer).clone()
    }

    /// Whether this bus carries events out of the process (RabbitMQ), where their
    /// personal fields must travel sealed, and has no keys to seal them with.
    pub(crate) fn lacks_keys_for_the_wire(&self) -> bool {
        self.is_distributed() && crate::sync::read(&self.backend.sealer).is_none()
    }

    /// On a broker, a handler of events with personal fields needs keys, the same
    /// description of those events, and a partition key that is not encrypted.
    fn check_personal(&self, subscription: &Subscription) -> Result<(), BusError> {
        let Some(first) = subscription.personal.first() else {
            return Ok(());
        };
        if !self.is_distributed() {
            return Ok(());
        }
        let Some(sealer) = self.sealer() else {
            return Err(BusError::KeysRequired {
                handler: subscription.handler().to_owned(),
                event_type: first.event_type().to_owned(),
                fix: match self.keys_mode() {
                    KeysMode::Store => {
                        "bus.keys is \"store\" but no store was given: call `bus.with_store(&store)`"
                    }
                    _ => {
                        "give it the store's keys with `bus.with_keys(&store)` (or set bus.keys = \"store\" and call `bus.with_store(&store)`)"
                    }
                },
            });
        };
        for event in subscription.personal {
            let known = sealer.personal_data().event(event.event_type());
            if known != Some(event) {
                return Err(BusError::PersonalData(format!(
                    "handler {:?} receives event {:?}, whose personal fields the store given to \
                     `Bus::with_keys` {}: give the store the namespace's description \
                     (`store.with_personal_data(..)`) before giving it to the bus",
                    subscription.handler(),
                    event.event_type(),
                    if known.is_some() {
                        "describes differently"
                    } else {
                        "does not encrypt"
                    },
                )));
            }
            if let (Some(field), Some(fields)) = (
                subscription.partition_by.as_deref(),
                sealer.fields(event.event_type()),
            ) && fields.covers_top_level(field)
            {
                return Err(BusError::PersonalData(format!(
                    "handler {:?} partitions by field {field:?}, which holds personal data of \
                     event {:?}: it travels encrypted, so it cannot choose a partition; \
                     partition by the subject field {:?} or by correlation_id",
                    subscription.handler(),
                    event.event_type(),
                    fields.subject_field(),
                )));
            }
        }
        Ok(())
    }

    /// With `bus.inbox = "store"`, a `once: true` handler needs the store's inbox.
    fn check_inbox(&self, subscription: &Subscription) -> Result<(), BusError> {
        if subscription.once
            && self.backend.inbox_mode == InboxMode::Store
            && !self
                .backend
                .inbox_given
                .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(BusError::Config(ConfigError::Invalid {
                setting: "bus.inbox",
                origin: "configuration".into(),
                message: format!(
                    "is \"store\", but {:?} (once: true) was subscribed before the bus was given a store: \
                     build it with `Bus::from_config(&config).await?.with_store(&store)`",
                    subscription.handler()
                ),
            }));
        }
        Ok(())
    }

    /// The inbox of `once: true` handlers.
    pub(crate) fn inbox(&self) -> Inbox {
        crate::sync::read(&self.backend.inbox).clone()
    }

    /// Adds a handler. A second handler for one command type, or a second handler with
    /// the same name, is an error.
    ///
    /// On RabbitMQ a handler whose binding declares events with personal fields
    /// ([`Subscription::with_personal_data`]) needs the bus's keys
    /// ([`with_keys`](Self::with_keys)): without them it is
    /// [`BusError::KeysRequired`], naming the handler, the event and the call to make.
    pub async fn subscribe(&self, mut subscription: Subscription) -> Result<(), BusError> {
        self.check_inbox(&subscription)?;
        self.check_personal(&subscription)?;
        if let Some(instruments) = &self.backend.metrics {
            subscription.meters = Some(Arc::new(self.bind_meters(instruments, &subscription)));
        }
        match &self.backend.adapter {
            Adapter::InProcess(b) => {
                if b.lifecycle.is_stopping() {
                    return Err(BusError::Closed);
                }
                b.subscribe(subscription)
            }
            #[cfg(feature = "rabbitmq")]
            Adapter::RabbitMq(b) => b.subscribe(self, subscription).await,
        }
    }

    /// A handler's instruments on this bus; an in-process command handler's topic is
    /// bound for dispatch too (a broker's send is timed where it publishes).
    fn bind_meters(
        &self,
        instruments: &Arc<crate::metrics::Instruments>,
        subscription: &Subscription,
    ) -> crate::metrics::HandlerMeters {
        let (system, command) = match (&self.backend.adapter, &subscription.target) {
            (Adapter::InProcess(_), Target::Command { topic, type_name }) => {
                (in_process::SYSTEM, Some((*topic, *type_name)))
            }
            (Adapter::InProcess(_), _) => (in_process::SYSTEM, None),
            #[cfg(feature = "rabbitmq")]
            (Adapter::RabbitMq(_), _) => (rabbitmq::SYSTEM, None),
        };
        crate::metrics::HandlerMeters::bind(
            instruments.clone(),
            system,
            subscription.handler.clone(),
            command,
        )
    }

    /// The instruments of the meter provider installed when this bus was built.
    pub(crate) fn metrics(&self) -> Option<&Arc<crate::metrics::Instruments>> {
        self.backend.metrics.as_ref()
    }

    /// Adds every subscription, in order (for a generated `handlers::Handlers { .. }`
    /// value's `.subscriptions()`). Stops at the first refused one; those before it stay.
    pub async fn subscribe_all(
        &self,
        subscriptions: impl IntoIterator<Item = Subscription>,
    ) -> Result<(), BusError> {
        for subscription in subscriptions {
            self.subscribe(subscription).await?;
        }
        Ok(())
    }

    /// Dispatches a command to its handler.
    ///
    /// In-process, the handler (with its retries) and every event it publishes have been
    /// handled when this returns; the returned envelope holds the final status, attempts
    /// and the handler's reply. A handler's failure is in that status, not an `Err`.
    /// With no handler subscribed it is [`BusError::NoHandler`].
    pub async fn dispatch(&self, envelope: CommandEnvelope) -> Result<CommandEnvelope, BusError> {
        match &self.backend.adapter {
            Adapter::InProcess(b) => {
                let _in_flight = b.lifecycle.enter()?;
                b.dispatch(self, envelope).await
            }
            #[cfg(feature = "rabbitmq")]
            Adapter::RabbitMq(b) => {
                let started = self.backend.metrics.as_ref().map(|_| crate::metrics::now());
                let sent = b.dispatch(envelope).await;
                if let (Some(started), Ok(envelope)) = (started, &sent) {
                    self.broker_sent(envelope.message(), "send", started);
                }
                sent
            }
        }
    }

    /// Counts a message the broker confirmed, and times the operation.
    #[cfg(feature = "rabbitmq")]
    fn broker_sent(
        &self,
        message: &Message,
        operation: &'static str,
        started: crate::metrics::Instant,
    ) {
        if let Some(i) = &self.backend.metrics {
            i.sent_one(rabbitmq::SYSTEM, message.topic(), message.type_name());
            i.operation_took(rabbitmq::SYSTEM, operation, message.topic(), started);
        }
    }

    /// Dispatches a command and waits for its handler's outcome, on any bus: the
    /// returned envelope holds the final status (`Succeeded` with the handler's reply,
    /// `Failed` after its retries, `Rejected`) and the attempts.
    ///
    /// On RabbitMQ the reply comes back through direct reply-to
    /// (`amq.rabbitmq.reply-to`), so the handler may run in another process. Past
    /// `timeout` it is [`BusError::Timeout`]; the command may still run (in-process
    /// it keeps running in its own task; on RabbitMQ it stays queued or running).
    pub async fn call(
        &self,
        envelope: CommandEnvelope,
        timeout: std::time::Duration,
    ) -> Result<CommandEnvelope, BusError> {
        match &self.backend.adapter {
            Adapter::InProcess(_) => {
                let started = crate::metrics::now();
                let topic = envelope.topic().to_owned();
                let bus = self.clone();
                let run = tokio::spawn(async move { bus.dispatch(envelope).await });
                let result = match tokio::time::timeout(timeout, run).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) => Err(BusError::Closed),
                    Err(_) => Err(BusError::Timeout("reply")),
                };
                if let Some(i) = self.metrics() {
                    i.operation_took(in_process::SYSTEM, "call", &topic, started);
                }
                result
            }
            #[cfg(feature = "rabbitmq")]
            Adapter::RabbitMq(b) => {
                let started = self.backend.metrics.as_ref().map(|_| crate::metrics::now());
                let answered = b.call(envelope, timeout).await;
                if let (Some(started), Ok(envelope)) = (started, &answered) {
                    self.broker_sent(envelope.message(), "call", started);
                }
                answered
            }
        }
    }

    /// Publishes an event to every subscriber whose pattern matches its topic.
    ///
    /// `Ok` once delivered; each subscriber's failures are retried and dead-lettered on
    /// their own. In-process, the returned envelope holds each handler's outcome.
    pub async fn publish(&self, envelope: EventEnvelope) -> Result<EventEnvelope, BusError> {
        match &self.backend.adapter {
            Adapter::InProcess(b) => {
                let _in_flight = b.lifecycle.enter()?;
                b.publish(self, envelope).await
            }
            #[cfg(feature = "rabbitmq")]
            Adapter::RabbitMq(b) => {
                let started = self.backend.metrics.as_ref().map(|_| crate::metrics::now());
                let sent = b.publish(envelope, self.sealer().as_deref()).await;
                if let (Some(started), Ok(envelope)) = (started, &sent) {
                    self.broker_sent(envelope.message(), "send", started);
                }
                sent
            }
        }
    }

    /// Shuts the bus down: no new deliveries are taken (RabbitMQ cancels its
    /// consumers; in-process, new dispatches and publishes are refused with
    /// [`BusError::Closed`]), running handlers may finish until `deadline` from now
    /// (they can watch [`HandlerContext::cancelled`]), their deliveries are settled,
    /// then channels and the connection are closed.
    ///
    /// On RabbitMQ a handler still running at the deadline is stopped and its delivery
    /// left unacked, so the broker redelivers it: nothing is lost, and nothing that was
    /// handled is delivered again. That case returns `Err(BusError::Timeout(..))`.
    /// Afterwards every operation of the bus (and its clones) is `BusError::Closed`.
    pub async fn shutdown(&self, deadline: std::time::Duration) -> Result<(), BusError> {
        let deadline = tokio::time::Instant::now() + deadline;
        match &self.backend.adapter {
            Adapter::InProcess(b) => {
                b.lifecycle.begin(deadline);
                if b.lifecycle.drained(deadline).await {
                    Ok(())
                } else {
                    Err(BusError::Timeout(
                        "handlers to finish before the shutdown deadline",
                    ))
                }
            }
            #[cfg(feature = "rabbitmq")]
            Adapter::RabbitMq(b) => b.shutdown(deadline).await,
        }
    }

    /// The shutdown signal: `Some(deadline)` once shutdown started.
    pub(crate) fn shutdown_signal(
        &self,
    ) -> tokio::sync::watch::Receiver<Option<tokio::time::Instant>> {
        match &self.backend.adapter {
            Adapter::InProcess(b) => b.lifecycle.signal(),
            #[cfg(feature = "rabbitmq")]
            Adapter::RabbitMq(b) => b.shared.lifecycle.signal(),
        }
    }

    /// Publishes on behalf of a running handler: allowed while the bus shuts down (the
    /// handler is finishing its work), unlike a new [`Bus::publish`].
    pub(crate) async fn publish_from_handler(
        &self,
        envelope: EventEnvelope,
    ) -> Result<EventEnvelope, BusError> {
        match &self.backend.adapter {
            Adapter::InProcess(b) => {
                let _in_flight = b.lifecycle.enter_always();
                b.publish(self, envelope).await
            }
            #[cfg(feature = "rabbitmq")]
            Adapter::RabbitMq(b) => {
                let started = self.backend.metrics.as_ref().map(|_| crate::metrics::now());
                let sent = b.publish(envelope, self.sealer().as_deref()).await;
                if let (Some(started), Ok(envelope)) = (started, &sent) {
                    self.broker_sent(envelope.message(), "send", started);
                }
                sent
            }
        }
    }

    /// Dead-letters `message` for `handler`, a runner that is not a bus subscription
    /// (a process manager fed from the store): in-process it reaches every
    /// [`DeadLetters`] receiver and dead-letter handler; on RabbitMQ it goes to the
    /// dead-letter exchange, like a consumer's.
    pub(crate) async fn dead_letter_from(
        &self,
        message: &Message,
        handler: &str,
        reason: &str,
        attempts: u32,
    ) -> Result<(), BusError> {
        match &self.backend.adapter {
            Adapter::InProcess(b) => {
                b.dead_letter_from(self, message, handler, reason, attempts)
                    .await;
                Ok(())
            }
            #[cfg(feature = "rabbitmq")]
            Adapter::RabbitMq(b) => {
                b.dead_letter_from(message, handler, reason, attempts, self.sealer().as_deref())
                    .await
            }
        }
    }

    /// Whether the bus can deliver now, for a readiness check: `Ok` while it is
    /// connected to its broker (RabbitMQ) and not shutting down; the reason otherwise.
    pub fn readiness(&self) -> Result<(), String> {
        match &self.backend.adapter {
            Adapter::InProcess(b) if b.lifecycle.is_stopping() => {
                Err("the bus is shutting down".into())
            }
            Adapter::InProcess(_) => Ok(()),
            #[cfg(feature = "rabbitmq")]
            Adapter::RabbitMq(b) if b.shared.lifecycle.is_stopping() => {
                Err("the bus is shutting down".into())
            }
            #[cfg(feature = "rabbitmq")]
            Adapter::RabbitMq(b) => b.readiness(),
        }
    }

    /// Whether handlers of this bus may run in other processes (RabbitMQ): then
    /// runners that share a store coordinate through it.
    pub(crate) fn is_distributed(&self) -> bool {
        !matches!(self.backend.adapter, Adapter::InProcess(_))
    }

    /// A stream of the dead letters recorded from now on.
    pub async fn dead_letters(&self) -> Result<DeadLetters, BusError> {
        match &self.backend.adapter {
            Adapter::InProcess(b) => Ok(b.dead_letters()),
            #[cfg(feature = "rabbitmq")]
            Adapter::RabbitMq(b) => b.dead_letters(self).await,
        }
    }
}

/// A handle that does not keep the bus alive: what a bus's own tasks hold, so dropping
/// the last [`Bus`] stops them.
#[cfg(feature = "rabbitmq")]
#[derive(Clone, Debug)]
pub(crate) struct WeakBus(std::sync::Weak<Backend>);

#[cfg(feature = "rabbitmq")]
impl WeakBus {
    /// The bus, while a handle to it exists.
    pub(crate) fn upgrade(&self) -> Option<Bus> {
        self.0.upgrade().map(|backend| Bus { backend })
    }
}

#[cfg(feature = "rabbitmq")]
impl Bus {
    pub(crate) fn downgrade(&self) -> WeakBus {
        WeakBus(Arc::downgrade(&self.backend))
    }
}

/// A bus error (a broker gone, no handler yet) may pass: it fails, and is retried.
impl From<BusError> for HandlerError {
    fn from(e: BusError) -> Self {
        Self::Fail(e.to_string())
    }
}

/// Refuses an event given to `dispatch` or a command given to `publish`.
pub(crate) fn expect_kind(message: &Message, kind: MessageKind) -> Result<(), BusError> {
    if message.kind() == kind {
        return Ok(());
    }
    let (op, wanted, found) = match kind {
        MessageKind::Command => ("dispatch", "a command", "an event"),
        MessageKind::Event => ("publish", "an event", "a command"),
    };
    Err(BusError::WrongKind(format!(
        "{op} takes {wanted}; {} is {found}",
        message.type_name()
    )))
}

/// How many dead letters one [`DeadLetters`] receiver buffers.
pub(crate) const DEAD_LETTER_BUFFER: usize = 1024;

/// Dead letters as they are recorded: call [`DeadLetters::recv`], or use it as a
/// [`Stream`](futures_util::Stream).
///
/// Each receiver buffers up to 1,024 letters. In-process, a letter recorded while that
/// buffer is full is not queued for this receiver (a warning is logged; dispatch never
/// waits on a reader). On RabbitMQ the broker keeps the rest in the receiver's queue
/// until it reads again.
#[derive(Debug)]
pub struct DeadLetters {
    rx: mpsc::Receiver<DeadLetter>,
}

impl DeadLetters {
    pub(crate) fn new(rx: mpsc::Receiver<DeadLetter>) -> Self {
        Self { rx }
    }

    /// The next dead letter; [`BusError::Closed`] once the bus is gone.
    pub async fn recv(&mut self) -> Result<DeadLetter, BusError> {
        self.rx.recv().await.ok_or(BusError::Closed)
    }

    /// A dead letter if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<DeadLetter> {
        self.rx.try_recv().ok()
    }
}

impl futures_util::Stream for DeadLetters {
    type Item = DeadLetter;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<DeadLetter>> {
        self.rx.poll_recv(cx)
    }
}
