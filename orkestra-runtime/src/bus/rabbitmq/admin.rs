//! Operating dead letters and looking at the topology: [`DeadLetterAdmin`], the library
//! behind the `orkestra` command (`dlq list|show|replay|purge`, `topology`).
//!
//! It works on the catch-all dead-letter queue `<prefix>.deadletter.all` of the
//! configured bus, over its own connection, and declares nothing: every queue and
//! exchange is looked up passively, so pointing it at the wrong prefix is an error that
//! says so, never a new empty topology.
//!
//! **Reading a queue.** AMQP 0-9-1 cannot read a message without taking it, so every
//! operation takes the queue's messages with `basic.get` (unacknowledged, one at a
//! time, on one channel), at most as many as the queue held when it began: letters
//! that arrive meanwhile (a replayed message that fails again, say) are never taken
//! twice. A letter that stays is not handed back with a requeue: on a quorum queue each
//! requeue counts as a delivery, and RabbitMQ 4.x drops a message past its delivery
//! limit (20 by default), so about twenty `dlq list` runs would lose every letter.
//! Instead an exact copy (body, properties, headers) is published to the end of the
//! queue with a publisher confirm, and only then is the letter taken removed. A pass
//! goes through the whole queue, so the letters keep their order (those that arrived
//! during it come first); a copy starts with a delivery count of zero. Only what the
//! operation could not copy goes back with one `basic.nack` (requeue), and if the
//! connection dies first the broker requeues it anyway: nothing is ever lost (a crash
//! between a copy's confirm and the removal of its letter leaves both, never neither).
//! Letters are handed over one at a time ([`DeadLetterAdmin::browse`]): memory does not
//! grow with the queue.
//!
//! **Replay** publishes each chosen letter with publisher confirms and `mandatory`, and
//! acks (removes) it only once the broker confirmed the replay was queued; a nack, an
//! unroutable message or a timeout leaves the letter where it was and is reported. With
//! ids, every id is looked for before anything is published: one missing id is
//! [`AdminError::NotFound`] and nothing is touched. A replayed message:
//! - goes to where it first went: a command to `<prefix>.commands` with its topic; an
//!   event only to the queue of the handler that gave up on it (`<prefix>.evt.<handler>`,
//!   through the default exchange), not to the events exchange, whose other
//!   subscribers already handled it;
//! - keeps its body (id, metadata, payload), its message id and the headers it was
//!   published with (`x-max-retries`, the original exchange and routing key);
//! - has no `x-death` (nor `x-orkestra-attempts`/`x-orkestra-error`), so its attempts
//!   start again at 1 and it gets its binding's full retries;
//! - carries `x-orkestra-replayed-from` (the dead-letter queue's name);
//! - starts a new trace that links to the original one: its `traceparent`/`tracestate`
//!   move to `x-orkestra-replay-of-traceparent`/`-tracestate`, and the consumer adds the
//!   original span context as a link on its `orkestra.rabbitmq.consume` span. (A new
//!   trace rather than a child: the replay is a new operation, possibly days later, and
//!   the original trace may long be closed.)

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind, PublisherConfirm};

use super::headers;
use super::link::open_any;
use super::topology::Names;
use super::{broker_error, urls, wire};
use crate::bus::BusError;
use crate::bus::subscription::RetryDelays;
use crate::config::BusConfig;
use crate::message::{DEFAULT_MAX_RETRIES, Metadata};

/// How long one broker operation of the admin may take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Replays published and not yet confirmed, at most.
const CONFIRM_WINDOW: usize = 256;

/// Why an admin operation failed.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The broker could not be reached, or failed an operation (passwords hidden).
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The dead-letter queue does not exist: no bus with this prefix ran on this broker.
    #[error(
        "queue {queue:?} does not exist: no Orkestra bus with prefix {prefix:?} has run on this broker (check bus.prefix)"
    )]
    NoQueue {
        /// The dead-letter queue looked for.
        queue: String,
        /// The configured prefix.
        prefix: String,
    },
    /// Some ids asked for are not in the dead-letter queue (as letters of `handler`,
    /// when given); nothing was changed.
    #[error(
        "no dead letter with id {}{} in {queue:?}; nothing was changed",
        quoted(.ids),
        .handler.as_ref().map(|h| format!(" of handler {h:?}")).unwrap_or_default()
    )]
    NotFound {
        /// The dead-letter queue.
        queue: String,
        /// The ids not found.
        ids: Vec<String>,
        /// The handler the letters had to be of, if one was named.
        handler: Option<String>,
    },
}

fn quoted(ids: &[String]) -> String {
    let ids: Vec<String> = ids.iter().map(|id| format!("{id:?}")).collect();
    ids.join(", ")
}

/// One dead letter, as read from the dead-letter queue.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StoredDeadLetter {
    /// What `show`, `replay` and `purge` take: the message id, or `body-<hash>` for a
    /// message published without one. An event dead-lettered by two handlers is two
    /// letters with one id.
    pub id: String,
    /// The topic (the routing key it was first published with).
    pub topic: String,
    /// The handler that gave up on it.
    pub handler: String,
    /// How many times it was handled.
    pub attempts: u32,
    /// Why it was dead-lettered.
    pub reason: String,
    /// When it was dead-lettered (to the second), if the letter says.
    pub dead_at: Option<DateTime<Utc>>,
    /// The exchange it was first published to.
    pub original_exchange: String,
    /// The message's type name, when its body is an Orkestra message.
    pub message_type: Option<String>,
    /// The message's metadata, when its body is an Orkestra message.
    pub metadata: Option<Metadata>,
    /// Every header, as JSON (`x-death` and other tables as objects and arrays).
    pub headers: BTreeMap<String, serde_json::Value>,
    /// The body as sent.
    pub body: Vec<u8>,
}

impl StoredDeadLetter {
    /// The body as JSON, if it is JSON.
    pub fn body_json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// How long it has been a dead letter at `now`, if known.
    pub fn age(&self, now: DateTime<Utc>) -> Option<chrono::Duration> {
        self.dead_at.map(|at| now - at)
    }
}

/// Which dead letters a replay or purge takes: some ids or all, optionally only those
/// of one handler.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    ids: Vec<String>,
    handler: Option<String>,
}

impl Selection {
    /// The letters with these ids (every letter of each id).
    pub fn ids(ids: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            ids: ids.into_iter().map(Into::into).collect(),
            handler: None,
        }
    }

    /// Every letter in the queue.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only the letters of `handler`.
    pub fn with_handler(mut self, handler: impl Into<String>) -> Self {
        self.handler = Some(handler.into());
        self
    }

    fn matches(&self, letter: &StoredDeadLetter) -> bool {
        self.handler.as_ref().is_none_or(|h| *h == letter.handler)
            && (self.ids.is_empty() || self.ids.contains(&letter.id))
    }
}

/// How far a replay or purge is: letters looked at, of how many, and settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Letters taken from the queue so far.
    pub seen: u64,
    /// Letters the queue held when the operation began.
    pub total: u64,
    /// Letters replayed (confirmed) or purged so far.
    pub done: u64,
}

/// What a replay or purge did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settlement {
    /// The ids of the letters replayed (confirmed, then removed) or purged, in order.
    pub done: Vec<String>,
    /// Letters chosen but left in the queue, each with why (a refused or unroutable
    /// replay).
    pub failed: Vec<(String, String)>,
    /// Letters looked at and put back because they were not chosen.
    pub kept: u64,
}

/// An exchange Orkestra declares, and whether it exists.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExchangeState {
    /// Its name.
    pub name: String,
    /// `direct`, `topic` or `fanout`.
    pub kind: &'static str,
    /// What it is for.
    pub role: &'static str,
    /// Whether it exists on the broker.
    pub exists: bool,
}

/// A queue Orkestra declares: what it is for, its bindings and its depth.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueState {
    /// Its name.
    pub name: String,
    /// What it is for (`dead letters (catch-all)`, `command orders.commands.place`, …).
    pub role: String,
    /// `exchange -> routing key` of each binding Orkestra makes (`?` where only the
    /// schema knows the key: an event handler's topics).
    pub bindings: Vec<String>,
    /// Where it dead-letters to, if it does.
    pub dead_letters_to: Option<String>,
    /// Messages ready in it; `None` when it does not exist.
    pub messages: Option<u32>,
    /// Its consumers; `None` when it does not exist.
    pub consumers: Option<u32>,
}

/// Exchanges and queues Orkestra declares under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopologyReport {
    /// The prefix.
    pub prefix: String,
    /// The four exchanges.
    pub exchanges: Vec<ExchangeState>,
    /// The catch-all dead-letter queue first, then the work, wait and dead-letter
    /// handler queues found, by name.
    pub queues: Vec<QueueState>,
}

/// What the topology report should also look for, beyond what the dead letters name.
#[derive(Clone, Debug, Default)]
pub struct Known {
    /// Handler names: their event queue, its wait queue and their dead-letter handler
    /// queue are looked for.
    pub handlers: Vec<String>,
    /// Command topics: their command queue and its wait queue are looked for.
    pub command_topics: Vec<String>,
    /// Bindings as a schema declares them: their queues, with every binding key and
    /// every wait queue, are reported whether they exist or not.
    pub bindings: Vec<KnownBinding>,
}

/// A handler binding as a schema declares it (what the generated code subscribes).
#[derive(Clone, Debug)]
pub struct KnownBinding {
    /// The handler's name.
    pub handler: String,
    /// What it receives.
    pub target: KnownTarget,
    /// `max_retries`, when set.
    pub max_retries: Option<u32>,
    /// `retry_delay`, when set.
    pub retry_delay: Option<Duration>,
    /// `retry_backoff`, when set.
    pub retry_backoff: Option<f64>,
    /// `retry_delay_max`, when set.
    pub retry_delay_max: Option<Duration>,
}

/// What a [`KnownBinding`] receives.
#[derive(Clone, Debug)]
pub enum KnownTarget {
    /// One command topic.
    Command(String),
    /// Events, by topic or pattern.
    Events(Vec<String>),
    /// Every dead letter.
    DeadLetters,
}

/// Operations on the dead letters and the topology of the bus a [`BusConfig`] names.
///
/// ```no_run
/// # async fn run() -> Result<(), orkestra_runtime::bus::rabbitmq::AdminError> {
/// use orkestra_runtime::bus::rabbitmq::{DeadLetterAdmin, Selection};
/// let config = orkestra_runtime::Config::load().expect("configuration");
/// let admin = DeadLetterAdmin::connect(&config.bus).await?;
/// for letter in admin.list(Some("Mailer"), Some(20)).await? {
///     println!("{} {} {}", letter.id, letter.topic, letter.reason);
/// }
/// let done = admin
///     .replay(&Selection::all().with_handler("Mailer"), &mut |_| {})
///     .await?;
/// println!("replayed {}", done.done.len());
/// admin.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct DeadLetterAdmin {
    connection: Connection,
    names: Names,
    prefix: String,
    retry_delay_ms: u32,
    confirm_timeout: Duration,
}

/// What to do with a chosen letter.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Replay,
    Purge,
}

impl DeadLetterAdmin {
    /// Connects to the first URL of `bus.urls` (or `bus.url`) that answers; an error
    /// names every URL tried, passwords hidden.
    pub async fn connect(settings: &BusConfig) -> Result<Self, AdminError> {
        let name = format!("orkestra admin {}", settings.prefix);
        let (connection, _) = open_any(&urls(settings), &name)
            .await
            .map_err(|e| AdminError::Bus(e.error()))?;
        Ok(Self {
            connection,
            names: Names::new(&settings.prefix),
            prefix: settings.prefix.clone(),
            retry_delay_ms: settings.retry_delay_ms,
            confirm_timeout: Duration::from_millis(u64::from(settings.confirm_timeout_ms)),
        })
    }

    /// The dead-letter queue it works on (`<prefix>.deadletter.all`).
    pub fn queue(&self) -> &str {
        &self.names.dead_letter_queue
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.connection.close(200, "done".into()),
        )
        .await;
    }

    /// Hands every letter (of `handler` only, when given) to `visit`, one at a time, in
    /// queue order; returns how many letters the queue held. Every letter stays in the
    /// queue (see the module docs: nothing counts as a delivery), and memory does not
    /// grow with the queue.
    pub async fn browse(
        &self,
        handler: Option<&str>,
        visit: &mut (dyn FnMut(StoredDeadLetter) + Send),
    ) -> Result<u64, AdminError> {
        let mut taken = self.take().await?;
        let read = async {
            while let Some(delivery) = taken.next().await? {
                let letter = read_letter(&delivery);
                taken.keep(&delivery).await?;
                drop(delivery);
                if handler.is_none_or(|h| h == letter.handler) {
                    visit(letter);
                }
            }
            Ok::<_, AdminError>(())
        }
        .await;
        taken.put_back().await;
        read.map(|()| u64::from(taken.total))
    }

    /// The letters in queue order (of `handler` only, when given), at most `limit`;
    /// every letter stays in the queue. Each letter holds its body: for a large queue,
    /// [`DeadLetterAdmin::browse`] keeps only one at a time.
    pub async fn list(
        &self,
        handler: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<StoredDeadLetter>, AdminError> {
        let mut letters = Vec::new();
        self.browse(handler, &mut |letter| {
            if limit.is_none_or(|l| letters.len() < l) {
                letters.push(letter);
            }
        })
        .await?;
        Ok(letters)
    }

    /// Every letter with this id (an event dead-lettered by two handlers is two);
    /// [`AdminError::NotFound`] when there is none. Every letter stays in the queue;
    /// only those with the id are kept in memory.
    pub async fn show(&self, id: &str) -> Result<Vec<StoredDeadLetter>, AdminError> {
        let mut letters = Vec::new();
        self.browse(None, &mut |letter| {
            if letter.id == id {
                letters.push(letter);
            }
        })
        .await?;
        if letters.is_empty() {
            return Err(AdminError::NotFound {
                queue: self.queue().to_owned(),
                ids: vec![id.to_owned()],
                handler: None,
            });
        }
        Ok(letters)
    }

    /// Replays the chosen letters (see the module docs): each is removed from the queue
    /// only once its replay is confirmed. `progress` is called after each letter taken.
    pub async fn replay(
        &self,
        selection: &Selection,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Settlement, AdminError> {
        self.settle(selection, Action::Replay, progress).await
    }

    /// Removes the chosen letters for good. `progress` is called after each letter taken.
    pub async fn purge(
        &self,
        selection: &Selection,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Settlement, AdminError> {
        self.settle(selection, Action::Purge, progress).await
    }

    async fn take(&self) -> Result<Taken, AdminError> {
        let channel = self.channel().await?;
        // Copies of the letters that stay are published on it, with confirms.
        within(channel.confirm_select(ConfirmSelectOptions::default()))
            .await
            .map_err(|e| AdminError::Bus(e.into_bus()))?;
        let queue = self.queue().to_owned();
        let declared = within(channel.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ))
        .await;
        let total = match declared {
            Ok(q) => q.message_count(),
            Err(e) if is_not_found(&e) => {
                return Err(AdminError::NoQueue {
                    queue,
                    prefix: self.prefix.clone(),
                });
            }
            Err(e) => return Err(AdminError::Bus(e.into_bus())),
        };
        Ok(Taken {
            channel,
            queue,
            total,
            left: total,
            outstanding: BTreeSet::new(),
            copies: VecDeque::new(),
            confirm_timeout: self.confirm_timeout,
        })
    }

    async fn channel(&self) -> Result<Channel, AdminError> {
        within(self.connection.create_channel())
            .await
            .map_err(|e| AdminError::Bus(e.into_bus()))
    }

    async fn settle(
        &self,
        selection: &Selection,
        action: Action,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Settlement, AdminError> {
        if !selection.ids.is_empty() {
            // Ids: every one must be there before anything is touched. A first pass
            // looks (changing nothing, the order included); the second settles.
            let mut found = HashSet::new();
            self.browse(selection.handler.as_deref(), &mut |letter| {
                if selection.matches(&letter) {
                    found.insert(letter.id);
                }
            })
            .await?;
            let mut missing: Vec<String> = selection
                .ids
                .iter()
                .filter(|id| !found.contains(*id))
                .cloned()
                .collect();
            if !missing.is_empty() {
                missing.dedup();
                return Err(AdminError::NotFound {
                    queue: self.queue().to_owned(),
                    ids: missing,
                    handler: selection.handler.clone(),
                });
            }
        }
        let publisher = match action {
            Action::Replay => {
                let channel = self.channel().await?;
                within(channel.confirm_select(ConfirmSelectOptions::default()))
                    .await
                    .map_err(|e| AdminError::Bus(e.into_bus()))?;
                Some(channel)
            }
            Action::Purge => None,
        };
        let mut taken = match self.take().await {
            Ok(taken) => taken,
            Err(e) => {
                close(publisher).await;
                return Err(e);
            }
        };
        let result = self
            .settle_taken(&mut taken, publisher.clone(), selection, progress)
            .await;
        taken.put_back().await;
        close(publisher).await;
        result
    }

    async fn settle_taken(
        &self,
        taken: &mut Taken,
        publisher: Option<Channel>,
        selection: &Selection,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Settlement, AdminError> {
        let mut run = Run {
            admin: self,
            publisher,
            pending: VecDeque::new(),
            settlement: Settlement::default(),
            progress: Progress {
                seen: 0,
                total: u64::from(taken.total),
                done: 0,
            },
        };
        // Settled as they are taken (ids were all found by a first pass, in `settle`).
        while let Some(delivery) = taken.next().await? {
            run.progress.seen += 1;
            let letter = read_letter(&delivery);
            if selection.matches(&letter) {
                run.push(taken, delivery, letter).await?;
            } else {
                taken.keep(&delivery).await?;
                run.settlement.kept += 1;
            }
            progress(run.progress);
        }
        run.drain(taken).await?;
        progress(run.progress);
        Ok(run.settlement)
    }

    /// Where a letter is replayed to, and with which properties.
    fn replay_of(&self, delivery: &lapin::message::Delivery) -> Result<Replay, String> {
        let found = delivery.properties.headers().as_ref();
        let exchange = headers::string(found, headers::ORIGINAL_EXCHANGE).unwrap_or_default();
        let routing_key = headers::string(found, headers::ORIGINAL_ROUTING_KEY)
            .unwrap_or_else(|| delivery.routing_key.as_str().to_owned());
        let handler = headers::string(found, headers::HANDLER).unwrap_or_default();
        let (exchange, routing_key) = if exchange == self.names.events && !handler.is_empty() {
            (String::new(), self.names.event_queue(&handler))
        } else if exchange.is_empty() {
            return Err("the letter does not name the exchange it came from".to_owned());
        } else {
            (exchange, routing_key)
        };
        let mut table = FieldTable::default();
        if let Some(found) = found {
            for (key, value) in found.inner() {
                if !dropped_on_replay(key.as_str()) {
                    table.insert(key.clone(), value.clone());
                }
            }
        }
        headers::put_str(&mut table, headers::REPLAYED_FROM, self.queue());
        for (from, to) in [
            (headers::TRACEPARENT, headers::REPLAY_OF_TRACEPARENT),
            (headers::TRACESTATE, headers::REPLAY_OF_TRACESTATE),
        ] {
            if let Some(value) = headers::string(found, from) {
                headers::put_str(&mut table, to, &value);
            }
        }
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(table);
        if let Some(id) = delivery.properties.message_id() {
            properties = properties.with_message_id(id.clone());
        }
        if let Some(content_type) = delivery.properties.content_type() {
            properties = properties.with_content_type(content_type.clone());
        }
        if let Some(kind) = delivery.properties.kind() {
            properties = properties.with_type(kind.clone());
        }
        Ok(Replay {
            exchange,
            routing_key,
            properties,
        })
    }

    /// The exchanges, the catch-all dead-letter queue, and every work, wait and
    /// dead-letter handler queue that the dead letters or `known` name, with depths.
    ///
    /// AMQP cannot list queues, and the broker may lack the management plugin, so the
    /// queues are found by name (the names `topology.rs` gives them) with passive
    /// declarations. The queues of `known.bindings` are reported exactly (binding keys,
    /// every wait queue), missing ones included; for a handler known only by name (a
    /// dead letter's, or `known.handlers`) only what exists is reported, an event
    /// queue's keys as `?`, and only the `bus.retry_delay_ms` wait queue. A queue
    /// nothing names is not in the report.
    pub async fn topology(&self, known: &Known) -> Result<TopologyReport, AdminError> {
        let mut probe = Probe {
            admin: self,
            channel: None,
        };
        let n = &self.names;
        let mut exchanges = Vec::new();
        for (name, kind, role) in [
            (&n.commands, ExchangeKind::Direct, "commands, by topic"),
            (&n.events, ExchangeKind::Topic, "events, by topic pattern"),
            (&n.retry, ExchangeKind::Direct, "retries, by work queue"),
            (&n.dead_letters, ExchangeKind::Topic, "dead letters"),
        ] {
            exchanges.push(ExchangeState {
                name: name.clone(),
                kind: kind_name(&kind),
                role,
                exists: probe.exchange(name, kind).await?,
            });
        }
        let mut handlers: BTreeSet<String> = known.handlers.iter().cloned().collect();
        let mut commands: BTreeSet<String> = known.command_topics.iter().cloned().collect();
        let explicit: HashSet<String> = known
            .handlers
            .iter()
            .map(|h| n.event_queue(h))
            .chain(known.command_topics.iter().map(|t| n.command_queue(t)))
            .collect();
        let browsed = self
            .browse(None, &mut |letter| {
                if letter.original_exchange == n.commands {
                    commands.insert(letter.topic);
                } else if !letter.handler.is_empty() {
                    handlers.insert(letter.handler);
                }
            })
            .await;
        match browsed {
            Ok(_) | Err(AdminError::NoQueue { .. }) => {}
            Err(e) => return Err(e),
        }
        let mut queues = Vec::new();
        let all = n.dead_letter_queue.clone();
        queues.push(
            probe
                .queue(QueueState {
                    name: all,
                    role: "dead letters (catch-all)".to_owned(),
                    bindings: vec![format!("{} -> #", n.dead_letters)],
                    dead_letters_to: None,
                    messages: None,
                    consumers: None,
                })
                .await?,
        );
        let mut found = Vec::new();
        for binding in &known.bindings {
            found.extend(self.declared(binding).into_iter().map(|q| (q, true)));
        }
        let wait = |queue: &str| format!("{queue}.wait.{}ms", self.retry_delay_ms);
        for topic in &commands {
            let queue = n.command_queue(topic);
            let state = QueueState {
                name: queue.clone(),
                role: format!("command {topic}"),
                bindings: vec![format!("{} -> {topic}", n.commands)],
                dead_letters_to: Some(n.retry.clone()),
                messages: None,
                consumers: None,
            };
            found.push((state, explicit.contains(&queue)));
            found.push((
                wait_state(n, &queue, &wait(&queue), self.retry_delay_ms),
                false,
            ));
        }
        for handler in &handlers {
            let queue = n.event_queue(handler);
            let state = QueueState {
                name: queue.clone(),
                role: format!("events of {handler}"),
                bindings: vec![format!("{} -> ? (the binding's topics)", n.events)],
                dead_letters_to: Some(n.retry.clone()),
                messages: None,
                consumers: None,
            };
            found.push((state, explicit.contains(&queue)));
            found.push((
                wait_state(n, &queue, &wait(&queue), self.retry_delay_ms),
                false,
            ));
            found.push((
                QueueState {
                    name: n.dead_letter_handler_queue(handler),
                    role: format!("dead letters for {handler}"),
                    bindings: vec![format!("{} -> #", n.dead_letters)],
                    dead_letters_to: None,
                    messages: None,
                    consumers: None,
                },
                false,
            ));
        }
        let mut rest = Vec::new();
        for (state, always) in found {
            let state = probe.queue(state).await?;
            if always || state.messages.is_some() {
                rest.push(state);
            }
        }
        rest.sort_by(|a, b| a.name.cmp(&b.name));
        rest.dedup_by(|a, b| a.name == b.name);
        queues.extend(rest);
        close(probe.channel.take()).await;
        Ok(TopologyReport {
            prefix: self.prefix.clone(),
            exchanges,
            queues,
        })
    }
}

impl DeadLetterAdmin {
    /// The queues a binding declares, with their bindings and dead-letter targets, as
    /// `topology.rs` declares them.
    fn declared(&self, binding: &KnownBinding) -> Vec<QueueState> {
        let n = &self.names;
        let state =
            |name: String, role: String, bindings: Vec<String>, to: Option<String>| QueueState {
                name,
                role,
                bindings,
                dead_letters_to: to,
                messages: None,
                consumers: None,
            };
        let handler = &binding.handler;
        let (queue, role, bindings) = match &binding.target {
            KnownTarget::DeadLetters => {
                return vec![state(
                    n.dead_letter_handler_queue(handler),
                    format!("dead letters for {handler}"),
                    vec![format!("{} -> #", n.dead_letters)],
                    None,
                )];
            }
            KnownTarget::Command(topic) => (
                n.command_queue(topic),
                format!("command {topic}, handled by {handler}"),
                vec![format!("{} -> {topic}", n.commands)],
            ),
            KnownTarget::Events(patterns) => (
                n.event_queue(handler),
                format!("events of {handler}"),
                patterns
                    .iter()
                    .map(|p| format!("{} -> {p}", n.events))
                    .collect(),
            ),
        };
        let delays = RetryDelays {
            delay: binding.retry_delay,
            backoff: binding.retry_backoff,
            max: binding.retry_delay_max,
        }
        .waits_ms(
            self.retry_delay_ms,
            binding.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
        );
        let mut states = Vec::new();
        if delays.len() <= 1 {
            let delay = delays.first().copied().unwrap_or(self.retry_delay_ms);
            states.push(state(queue.clone(), role, bindings, Some(n.retry.clone())));
            let mut wait = wait_state(n, &queue, &format!("{queue}.wait.{delay}ms"), delay);
            wait.role = format!("retry wait of {queue} ({delay} ms)");
            states.push(wait);
            return states;
        }
        let mut bindings = bindings;
        for stage in 2..=delays.len() {
            bindings.push(format!("{queue}.back -> stage-{stage}"));
        }
        states.push(state(
            queue.clone(),
            role,
            bindings,
            Some(format!("{queue}.retry")),
        ));
        for (i, delay) in delays.iter().enumerate() {
            let stage = i + 1;
            let bound = if stage == 1 {
                format!("{queue}.retry.first (alternate exchange of {queue}.retry)")
            } else {
                format!("{queue}.retry -> stage-{stage}")
            };
            states.push(state(
                format!("{queue}.wait.{delay}ms"),
                format!("retry wait {stage} of {queue} ({delay} ms)"),
                vec![bound],
                Some(format!(
                    "{queue}.back -> stage-{}",
                    (stage + 1).min(delays.len())
                )),
            ));
        }
        states
    }
}

fn wait_state(n: &Names, queue: &str, wait: &str, delay_ms: u32) -> QueueState {
    QueueState {
        name: wait.to_owned(),
        role: format!("retry wait of {queue} ({delay_ms} ms, bus.retry_delay_ms)"),
        bindings: vec![format!("{} -> {queue}", n.retry)],
        dead_letters_to: Some(format!("(default exchange) -> {queue}")),
        messages: None,
        consumers: None,
    }
}

fn kind_name(kind: &ExchangeKind) -> &'static str {
    match kind {
        ExchangeKind::Direct => "direct",
        ExchangeKind::Topic => "topic",
        ExchangeKind::Fanout => "fanout",
        _ => "other",
    }
}

/// Closes a channel, if any, within [`OPERATION_TIMEOUT`].
async fn close(channel: Option<Channel>) {
    if let Some(channel) = channel {
        let _ = within(channel.close(200, "done".into())).await;
    }
}

/// Passive declarations on one channel, opened again after a miss (a passive
/// declaration of something absent closes its channel).
struct Probe<'a> {
    admin: &'a DeadLetterAdmin,
    channel: Option<Channel>,
}

impl Probe<'_> {
    async fn channel(&mut self) -> Result<Channel, AdminError> {
        match &self.channel {
            Some(c) if c.status().connected() => Ok(c.clone()),
            _ => {
                let c = self.admin.channel().await?;
                self.channel = Some(c.clone());
                Ok(c)
            }
        }
    }

    async fn exchange(&mut self, name: &str, kind: ExchangeKind) -> Result<bool, AdminError> {
        let channel = self.channel().await?;
        let options = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        match within(channel.exchange_declare(name.into(), kind, options, FieldTable::default()))
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(AdminError::Bus(e.into_bus())),
        }
    }

    async fn queue(&mut self, mut state: QueueState) -> Result<QueueState, AdminError> {
        let channel = self.channel().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match within(channel.queue_declare(
            state.name.as_str().into(),
            options,
            FieldTable::default(),
        ))
        .await
        {
            Ok(q) => {
                state.messages = Some(q.message_count());
                state.consumers = Some(q.consumer_count());
                Ok(state)
            }
            Err(e) if is_not_found(&e) => Ok(state),
            Err(e) => Err(AdminError::Bus(e.into_bus())),
        }
    }
}

/// Headers a replay does not carry: the broker's and the bus's record of the failed
/// attempts, and the trace context (it moves to `x-orkestra-replay-of-*`).
fn dropped_on_replay(key: &str) -> bool {
    key == headers::X_DEATH
        || key.starts_with("x-first-death-")
        || key.starts_with("x-last-death-")
        || key == "x-delivery-count"
        || [
            headers::ATTEMPTS,
            headers::ERROR,
            headers::TRACEPARENT,
            headers::TRACESTATE,
            headers::REPLAYED_FROM,
            headers::REPLAY_OF_TRACEPARENT,
            headers::REPLAY_OF_TRACESTATE,
        ]
        .contains(&key)
}

/// A replay's destination and properties.
struct Replay {
    exchange: String,
    routing_key: String,
    properties: BasicProperties,
}

/// The messages taken from the dead-letter queue on one channel.
struct Taken {
    channel: Channel,
    queue: String,
    /// What the queue held when taking began.
    total: u32,
    /// How many more may be taken.
    left: u32,
    /// Delivery tags taken and not yet settled.
    outstanding: BTreeSet<u64>,
    /// Copies of kept letters published and not yet confirmed, oldest first, with the
    /// delivery tag of the letter each replaces.
    copies: VecDeque<(u64, PublisherConfirm)>,
    confirm_timeout: Duration,
}

impl Taken {
    /// The next message, unacknowledged; `None` past the queue's depth at the start.
    async fn next(&mut self) -> Result<Option<lapin::message::Delivery>, AdminError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let got = within(self.channel.basic_get(
            self.queue.as_str().into(),
            BasicGetOptions { no_ack: false },
        ))
        .await
        .map_err(|e| AdminError::Bus(e.into_bus()))?;
        match got {
            Some(message) => {
                self.outstanding.insert(message.delivery.delivery_tag);
                Ok(Some(message.delivery))
            }
            None => {
                self.left = 0;
                Ok(None)
            }
        }
    }

    /// Removes one message from the queue.
    async fn remove(&mut self, tag: u64) -> Result<(), AdminError> {
        within(
            self.channel
                .basic_ack(tag, BasicAckOptions { multiple: false }),
        )
        .await
        .map_err(|e| AdminError::Bus(e.into_bus()))?;
        self.outstanding.remove(&tag);
        Ok(())
    }

    /// Keeps a letter without a requeue (see the module docs): publishes an exact copy
    /// to the end of the queue; the letter is removed once the copy is confirmed.
    async fn keep(&mut self, delivery: &lapin::message::Delivery) -> Result<(), AdminError> {
        let mut properties = delivery.properties.clone();
        if let Some(found) = delivery.properties.headers() {
            let mut headers = FieldTable::default();
            for (key, value) in found.inner() {
                // The broker's count of this letter's deliveries: the copy starts anew.
                if key.as_str() != "x-delivery-count" {
                    headers.insert(key.clone(), value.clone());
                }
            }
            properties = properties.with_headers(headers);
        }
        let confirm = within(self.channel.basic_publish(
            "".into(),
            self.queue.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &delivery.data,
            properties,
        ))
        .await
        .map_err(|e| AdminError::Bus(e.into_bus()))?;
        self.copies.push_back((delivery.delivery_tag, confirm));
        if self.copies.len() >= CONFIRM_WINDOW {
            self.confirm_copy().await?;
        }
        Ok(())
    }

    /// Waits for the oldest copy's confirm and removes its letter; a copy the broker
    /// did not take leaves its letter to go back with the requeue at the end.
    async fn confirm_copy(&mut self) -> Result<(), AdminError> {
        let Some((tag, confirm)) = self.copies.pop_front() else {
            return Ok(());
        };
        match tokio::time::timeout(self.confirm_timeout, confirm).await {
            Ok(Ok(Confirmation::Ack(None))) => self.remove(tag).await,
            _ => Ok(()),
        }
    }

    /// Puts back every message not removed: waits for the copies still unconfirmed,
    /// then requeues what is left (one `basic.nack`) and closes the channel (which
    /// requeues it too, should the nack fail).
    async fn put_back(&mut self) {
        while !self.copies.is_empty() {
            if self.confirm_copy().await.is_err() {
                self.copies.clear();
            }
        }
        if let Some(last) = self.outstanding.last().copied() {
            let _ = within(self.channel.basic_nack(
                last,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            ))
            .await;
            self.outstanding.clear();
        }
        let _ = within(self.channel.close(200, "done".into())).await;
    }
}

/// One replay or purge in progress.
struct Run<'a> {
    admin: &'a DeadLetterAdmin,
    /// The confirm-mode channel replays are published on (`None` for a purge).
    publisher: Option<Channel>,
    /// Replays published, waiting for their confirms, in order.
    pending: VecDeque<Pending>,
    settlement: Settlement,
    progress: Progress,
}

struct Pending {
    tag: u64,
    id: String,
    confirm: PublisherConfirm,
}

impl Run<'_> {
    /// Replays or purges one chosen letter (a replay is removed once confirmed).
    async fn push(
        &mut self,
        taken: &mut Taken,
        delivery: lapin::message::Delivery,
        letter: StoredDeadLetter,
    ) -> Result<(), AdminError> {
        let Some(publisher) = self.publisher.clone() else {
            taken.remove(delivery.delivery_tag).await?;
            self.settlement.done.push(letter.id);
            self.progress.done += 1;
            return Ok(());
        };
        let replay = match self.admin.replay_of(&delivery) {
            Ok(replay) => replay,
            Err(why) => {
                self.settlement.failed.push((letter.id, why));
                return Ok(());
            }
        };
        let sent = within(publisher.basic_publish(
            replay.exchange.as_str().into(),
            replay.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &delivery.data,
            replay.properties,
        ))
        .await
        .map_err(|e| AdminError::Bus(e.into_bus()))?;
        self.pending.push_back(Pending {
            tag: delivery.delivery_tag,
            id: letter.id,
            confirm: sent,
        });
        if self.pending.len() >= CONFIRM_WINDOW {
            self.confirm_one(taken).await?;
        }
        Ok(())
    }

    /// Waits for every replay still unconfirmed.
    async fn drain(&mut self, taken: &mut Taken) -> Result<(), AdminError> {
        while !self.pending.is_empty() {
            self.confirm_one(taken).await?;
        }
        Ok(())
    }

    /// Waits for the oldest replay's confirm: removes its letter once it is queued,
    /// records why not otherwise (the letter stays).
    async fn confirm_one(&mut self, taken: &mut Taken) -> Result<(), AdminError> {
        let Some(pending) = self.pending.pop_front() else {
            return Ok(());
        };
        let outcome = match tokio::time::timeout(self.admin.confirm_timeout, pending.confirm).await
        {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => {
                Err("no queue took the replay (its handler's queue is gone?)".to_owned())
            }
            Ok(Ok(Confirmation::Nack(_))) => Err("the broker refused the replay (nack)".to_owned()),
            Ok(Ok(Confirmation::NotRequested)) => Err("publisher confirms are off".to_owned()),
            Ok(Err(e)) => Err(broker_error(e).to_string()),
            Err(_) => Err("no publisher confirm within bus.confirm_timeout_ms".to_owned()),
        };
        match outcome {
            Ok(()) => {
                taken.remove(pending.tag).await?;
                self.settlement.done.push(pending.id);
                self.progress.done += 1;
            }
            Err(why) => self.settlement.failed.push((pending.id, why)),
        }
        Ok(())
    }
}

/// A dead letter as the bus's consumer wrote it (see `consumer::dead_letter`).
fn read_letter(delivery: &lapin::message::Delivery) -> StoredDeadLetter {
    let found = delivery.properties.headers().as_ref();
    let message = wire::decode(&delivery.data)
        .ok()
        .map(wire::Wire::into_message);
    let id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .filter(|id| !id.is_empty())
        .or_else(|| message.as_ref().map(|m| m.id().to_owned()))
        .unwrap_or_else(|| format!("body-{:016x}", fnv1a(&delivery.data)));
    let dead_at = delivery
        .properties
        .timestamp()
        .and_then(|s| i64::try_from(s).ok())
        .and_then(|s| DateTime::from_timestamp(s, 0));
    StoredDeadLetter {
        id,
        topic: headers::string(found, headers::ORIGINAL_ROUTING_KEY)
            .unwrap_or_else(|| delivery.routing_key.as_str().to_owned()),
        handler: headers::string(found, headers::HANDLER).unwrap_or_default(),
        attempts: headers::uint(found, headers::ATTEMPTS).unwrap_or(0),
        reason: headers::string(found, headers::ERROR).unwrap_or_default(),
        dead_at,
        original_exchange: headers::string(found, headers::ORIGINAL_EXCHANGE).unwrap_or_default(),
        message_type: message.as_ref().map(|m| m.type_name().to_owned()),
        metadata: message.as_ref().map(|m| m.metadata().clone()),
        headers: found
            .map(|t| {
                t.inner()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), json_of(v)))
                    .collect()
            })
            .unwrap_or_default(),
        body: delivery.data.clone(),
    }
}

/// An AMQP value as JSON (tables as objects, arrays as arrays, bytes as text).
fn json_of(value: &AMQPValue) -> serde_json::Value {
    use serde_json::Value;
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => Value::from(*i),
        AMQPValue::ShortShortUInt(i) => Value::from(*i),
        AMQPValue::ShortInt(i) => Value::from(*i),
        AMQPValue::ShortUInt(i) => Value::from(*i),
        AMQPValue::LongInt(i) => Value::from(*i),
        AMQPValue::LongUInt(i) => Value::from(*i),
        AMQPValue::LongLongInt(i) => Value::from(*i),
        AMQPValue::Float(f) => Value::from(*f),
        AMQPValue::Double(f) => Value::from(*f),
        AMQPValue::DecimalValue(d) => {
            Value::from(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => Value::from(s.as_str()),
        AMQPValue::LongString(s) => Value::from(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(json_of).collect()),
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), json_of(v)))
                .collect(),
        ),
        AMQPValue::ByteArray(b) => Value::from(String::from_utf8_lossy(b.as_slice())),
        AMQPValue::Void => Value::Null,
    }
}

/// FNV-1a of a body without a message id: a stable id to name it by.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether the broker said `NOT_FOUND` (404): a passive declaration of something absent.
fn is_not_found(failure: &Failure) -> bool {
    matches!(failure, Failure::Broker(e)
        if matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 404))
}

/// An operation bounded by [`OPERATION_TIMEOUT`].
async fn within<T>(operation: impl Future<Output = Result<T, lapin::Error>>) -> Result<T, Failure> {
    match tokio::time::timeout(OPERATION_TIMEOUT, operation).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Failure::Broker(e)),
        Err(_) => Err(Failure::Timeout),
    }
}

/// Why one broker operation failed.
enum Failure {
    Broker(lapin::Error),
    Timeout,
}

impl Failure {
    fn into_bus(self) -> BusError {
        match self {
            Failure::Broker(e) => broker_error(e),
            Failure::Timeout => BusError::Timeout("broker to answer"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_drop_the_attempt_record_and_the_trace_context_only() {
        for key in [
            "x-death",
            "x-first-death-exchange",
            "x-last-death-queue",
            "x-orkestra-attempts",
            "x-orkestra-error",
            "traceparent",
            "tracestate",
        ] {
            assert!(dropped_on_replay(key), "{key}");
        }
        for key in [
            "x-max-retries",
            "x-orkestra-original-exchange",
            "x-orkestra-original-routing-key",
            "x-orkestra-handler",
        ] {
            assert!(!dropped_on_replay(key), "{key}");
        }
    }

    #[test]
    fn amqp_values_read_as_json() {
        let mut death = FieldTable::default();
        headers::put_str(&mut death, "queue", "q");
        headers::put_int(&mut death, "count", 2);
        let array = AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into());
        assert_eq!(
            json_of(&array),
            serde_json::json!([{"queue": "q", "count": 2}])
        );
    }
}
