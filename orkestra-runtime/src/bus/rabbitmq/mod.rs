//! The RabbitMQ bus (lapin, feature `rabbitmq`).
//!
//! Topology, declared idempotently by every bus instance:
//!
//! Names below use the default prefix `orkestra` (setting `bus.prefix`).
//!
//! - exchange `orkestra.commands` (direct): one durable queue per command type,
//!   `orkestra.cmd.<topic>`, bound by its topic; consumers on it compete;
//! - exchange `orkestra.events` (topic): one durable queue per handler,
//!   `orkestra.evt.<handler>`, bound by each of its topics or patterns (fan-out);
//! - every work queue dead-letters to exchange `orkestra.retry` (direct), which routes to
//!   its wait queue `<queue>.wait.<ms>ms`, whose queue-level TTL dead-letters the message
//!   back to the work queue (no per-message TTL, so no head-of-line blocking);
//! - exchange `orkestra.deadletter` (topic) with the durable catch-all queue
//!   `orkestra.deadletter.all` bound by `#`; each dead-letter handler has its durable
//!   queue `orkestra.deadletter.handler.<handler>` and each `Bus::dead_letters` receiver an
//!   exclusive server-named one, both bound by `#` and without dead-letter arguments.
//!
//! A failed run is rejected without requeue; the attempt number is one more than the
//! `count` of the `x-death` entry for the work queue with reason `rejected` (a received
//! `x-death` is never republished). The retry limit is the binding's, unless the
//! producer set one (`CommandEnvelope::with_max_retries`), which travels in
//! `x-max-retries`; a producer never writes a default there, since it cannot know the
//! limits of the bindings that will handle the message. A message its handler rejects
//! (`HandlerError::Reject`) is acked: a rejection is an answer (sent to a waiting
//! caller), never retried nor dead-lettered. An exhausted or undecodable message is
//! published with confirm to `orkestra.deadletter` (routing key:
//! its original one) with the original exchange, routing key, handler, attempts, error,
//! `traceparent` and the producer's `x-max-retries` in headers and the time in
//! `timestamp`, then acked. [`DeadLetterAdmin`] lists, shows, replays and purges them.
//!
//! Publishing uses confirms and `mandatory`: a nack, a timeout or a closed channel is an
//! error, and a command that no queue takes is [`BusError::NoHandler`]. An event that no
//! queue takes has no subscriber yet; that is not an error (as on the in-process bus).
//! Every publish returns within `bus.confirm_timeout_ms`, waiting for a connection
//! included.
//!
//! The connection is kept up by the bus itself (`link.rs`), not by lapin's recovery:
//! after an outage of any length it reconnects (to the URLs of `bus.urls` in order) and
//! every consumer consumes again. Each subscription's worker runs up to `concurrency`
//! handlers at once, one at a time per partition key (`consumer.rs`).
//!
//! Personal data: with keys (`Bus::with_keys(&store)`, or `bus.keys = "store"` and
//! `Bus::with_store`) an event whose type the store describes as personal is published
//! with those fields sealed as the store seals them, so work, wait and dead-letter
//! queues hold ciphertext; a consumer opens them before decoding (a forgotten
//! subject's fields read as their replacements, listed by `Event::redacted`; a value
//! that does not open is dead-lettered at once, naming the event type and field).
//! Replies carry the handler's return value and status, never the event's data.
//!
//! | file | what it holds |
//! | --- | --- |
//! | `mod.rs` | `RabbitMq`: connect, subscribe, dispatch, publish, dead-letter receivers, shutdown |
//! | `link.rs` | the connection, its supervisor and reconnection, the publishing channel |
//! | `topology.rs` | exchange and queue names, their declaration and bindings |
//! | `publisher.rs` | publishing with confirms; where a confirmation becomes a result |
//! | `reply.rs` | `Bus::call`: direct reply-to, waiting calls, the reply body and receipt |
//! | `consumer.rs` | workers: concurrency with per-key order, settling, retries, dead-lettering, resuming |
//! | `wire.rs` | the JSON body of a message, and the placeholder for an undecodable one |
//! | `spans.rs` | the `orkestra.rabbitmq.publish` and `orkestra.rabbitmq.consume` spans |
//! | `headers.rs` | every header and argument name, header read/write, trace-context carriers |
//! | `admin.rs` | [`DeadLetterAdmin`]: list, show, replay and purge dead letters; the topology and its depths |

mod admin;
mod consumer;
mod headers;
mod link;
mod publisher;
mod reply;
mod spans;
mod topology;
mod wire;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::types::FieldTable;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

pub use self::admin::{
    AdminError, DeadLetterAdmin, ExchangeState, Known, KnownBinding, KnownTarget, Progress,
    QueueState, Selection, Settlement, StoredDeadLetter, TopologyReport,
};
use self::consumer::{Feed, Worker};
use self::link::Link;
use self::publisher::{Outgoing, Publisher, Routing};
use self::topology::{Source, Topology};
use super::lifecycle::Lifecycle;
use super::run::log_subscribed;
use super::{Bus, BusError, DeadLetters};
use crate::DriverError;
use crate::bus::{Subscription, Target};
use crate::config::{BusConfig, SecretUrl};
use crate::keys::Sealer;
use crate::message::MessageKind;
use crate::message::{CommandEnvelope, EventEnvelope};
use crate::sync::lock;
use crate::trace;

/// `messaging.system`, and the `system` every span of this bus names.
pub(crate) const SYSTEM: &str = "rabbitmq";
/// The broker when no URL is configured.
const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[cold]
fn broker_error(e: lapin::Error) -> BusError {
    BusError::Broker(DriverError::new(e))
}

/// What the bus's tasks share: the link, the publisher, the topology, the settings and
/// the lifecycle (the shutdown signal).
#[derive(Debug)]
pub(crate) struct Shared {
    link: Arc<Link>,
    publisher: Publisher,
    topology: Arc<Topology>,
    settings: BusConfig,
    pub(crate) lifecycle: Lifecycle,
}

#[derive(Debug)]
pub(crate) struct RabbitMq {
    pub(crate) shared: Arc<Shared>,
    handlers: Mutex<HashSet<String>>,
    command_topics: Mutex<HashSet<String>>,
    /// The workers.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The link's supervisor.
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl RabbitMq {
    /// `Ok` while connected to a broker; why not otherwise.
    pub(crate) fn readiness(&self) -> Result<(), String> {
        self.shared.link.readiness()
    }
}

/// Dropping the bus stops every task (the supervisor, every worker) and closes the
/// connection; unacked deliveries go back to their queues.
impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.shared.lifecycle.begin(Instant::now());
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        if let Some(task) = lock(&self.supervisor).take() {
            task.abort();
        }
        let link = self.shared.link.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { link.close().await });
        }
    }
}

/// The URLs to try, in order: `bus.urls`, else `bus.url`, else the local broker.
fn urls(settings: &BusConfig) -> Vec<SecretUrl> {
    if !settings.urls.is_empty() {
        settings.urls.clone()
    } else {
        vec![
            settings
                .url
                .clone()
                .unwrap_or_else(|| SecretUrl::new(DEFAULT_URL)),
        ]
    }
}

impl RabbitMq {
    pub(crate) async fn connect(settings: &BusConfig) -> Result<Self, BusError> {
        let topology = Arc::new(Topology::new(settings));
        let name = format!("orkestra {} {}", settings.prefix, crate::message::new_id());
        let link = Link::connect(urls(settings), name, &topology).await?;
        let publisher = Publisher::new(
            link.clone(),
            settings.max_message_bytes,
            Duration::from_millis(u64::from(settings.confirm_timeout_ms)),
        );
        let shared = Arc::new(Shared {
            link: link.clone(),
            publisher,
            topology: topology.clone(),
            settings: settings.clone(),
            lifecycle: Lifecycle::default(),
        });
        Ok(Self {
            shared,
            handlers: Mutex::default(),
            command_topics: Mutex::default(),
            tasks: Mutex::default(),
            supervisor: Mutex::new(Some(tokio::spawn(link.maintain(topology)))),
        })
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(tokio::spawn(task));
    }

    pub(crate) async fn subscribe(
        &self,
        bus: &Bus,
        subscription: Subscription,
    ) -> Result<(), BusError> {
        if self.shared.lifecycle.is_stopping() {
            return Err(BusError::Closed);
        }
        let handler = subscription.handler.to_string();
        if !lock(&self.handlers).insert(handler.clone()) {
            return Err(BusError::DuplicateHandler { handler });
        }
        let command_topic = match &subscription.target {
            Target::Command { topic, .. } => Some(*topic),
            Target::Events { .. } | Target::DeadLetters => None,
        };
        if let Some(topic) = command_topic
            && !lock(&self.command_topics).insert(topic.to_owned())
        {
            lock(&self.handlers).remove(&handler);
            return Err(BusError::CommandAlreadyHandled {
                topic: topic.to_owned(),
                existing: "another handler of this bus".into(),
                handler,
            });
        }
        let started = self.start(bus, subscription).await;
        if started.is_err() {
            // Nothing consumes under these names: free them, so a retry can subscribe.
            lock(&self.handlers).remove(&handler);
            if let Some(topic) = command_topic {
                lock(&self.command_topics).remove(topic);
            }
        }
        started
    }

    /// Declares what a subscription consumes from and starts its worker.
    async fn start(&self, bus: &Bus, subscription: Subscription) -> Result<(), BusError> {
        let names = &self.shared.topology.names;
        let subscription = Arc::new(subscription);
        let (source, feed, concurrency) = match subscription.target.clone() {
            Target::Command { topic, .. } => (
                Source::Work {
                    queue: names.command_queue(topic),
                    bindings: vec![(names.commands.clone(), topic.to_owned())],
                    delays: subscription.retry_delays_ms(self.shared.settings.retry_delay_ms),
                },
                Feed::Work(subscription.clone()),
                subscription.concurrency_or(self.shared.settings.concurrency),
            ),
            Target::Events { patterns } => (
                Source::Work {
                    queue: names.event_queue(&subscription.handler),
                    bindings: patterns
                        .iter()
                        .map(|p| (names.events.clone(), (*p).to_owned()))
                        .collect(),
                    delays: subscription.retry_delays_ms(self.shared.settings.retry_delay_ms),
                },
                Feed::Work(subscription.clone()),
                subscription.concurrency_or(self.shared.settings.concurrency),
            ),
            Target::DeadLetters => (
                Source::DeadLetterHandler {
                    queue: names.dead_letter_handler_queue(&subscription.handler),
                },
                Feed::DeadLetterHandler(subscription.clone()),
                1,
            ),
        };
        let worker = Arc::new(Worker {
            shared: self.shared.clone(),
            bus: bus.downgrade(),
            feed,
            source,
            concurrency,
            label: subscription.handler.to_string(),
        });
        let opened = worker.open().await?;
        log_subscribed(&subscription, Some(opened.queue()));
        self.spawn(worker.run(opened));
        Ok(())
    }

    pub(crate) async fn dispatch(
        &self,
        mut envelope: CommandEnvelope,
    ) -> Result<CommandEnvelope, BusError> {
        let OutgoingCommand {
            traced,
            span,
            body,
            headers,
            topic,
        } = prepare_command(&mut envelope)?;
        let properties = publisher::message_properties(envelope.message(), headers);
        self.send_command(&envelope, &topic, &body, properties, traced, &span)
            .await?;
        envelope.try_mark_dispatched()?;
        Ok(envelope)
    }

    /// Dispatches with a direct reply-to address and waits for the command's final
    /// outcome until `timeout` (publishing included).
    pub(crate) async fn call(
        &self,
        mut envelope: CommandEnvelope,
        timeout: Duration,
    ) -> Result<CommandEnvelope, BusError> {
        let deadline = Instant::now() + timeout;
        let OutgoingCommand {
            traced,
            span,
            body,
            headers,
            topic,
        } = prepare_command(&mut envelope)?;
        let call_id = crate::message::new_id();
        let waiting = self.shared.link.replies.wait_for(call_id.clone());
        let properties = publisher::message_properties(envelope.message(), headers)
            .with_reply_to(reply::REPLY_TO.into())
            .with_correlation_id(call_id.as_str().into());
        tokio::time::timeout_at(
            deadline,
            self.send_command(&envelope, &topic, &body, properties, traced, &span),
        )
        .await
        .unwrap_or(Err(BusError::Timeout("reply")))?;
        envelope.try_mark_dispatched()?;
        let mut waiting = waiting;
        match tokio::time::timeout_at(deadline, &mut waiting.rx).await {
            Ok(Ok(outcome)) => Ok(reply::receipt(envelope, outcome)),
            Ok(Err(_)) => Err(BusError::Closed),
            Err(_) => Err(BusError::Timeout("reply")),
        }
    }

    /// Publishes a prepared command to the commands exchange; a command no queue takes
    /// is `NoHandler`, recorded on its span.
    async fn send_command(
        &self,
        envelope: &CommandEnvelope,
        topic: &str,
        body: &[u8],
        properties: lapin::BasicProperties,
        traced: bool,
        span: &tracing::Span,
    ) -> Result<(), BusError> {
        let routing = self
            .shared
            .publisher
            .publish(
                Outgoing {
                    exchange: &self.shared.topology.names.commands,
                    routing_key: topic,
                    body,
                    properties,
                },
                envelope.message(),
                traced,
            )
            .instrument(span.clone())
            .await?;
        if routing == Routing::Unroutable {
            return Err(no_handler(span, topic.to_owned()));
        }
        Ok(())
    }

    /// Dead-letters a message that did not come from a delivery (a process manager fed
    /// from the store): published to the dead-letter exchange with the headers a
    /// consumer's dead letter carries, confirmed.
    pub(crate) async fn dead_letter_from(
        &self,
        message: &crate::message::Message,
        handler: &str,
        reason: &str,
        attempts: u32,
        sealer: Option<&Sealer>,
    ) -> Result<(), BusError> {
        let kind = crate::metrics::DeadLetterKind::classify(reason);
        super::run::log_dead_letter(handler, message.topic(), reason, attempts, SYSTEM, kind);
        let body = wire::encode_sealed(message, sealer).await?;
        let table = headers::dead_letter(
            &self.shared.topology.names.events,
            message.topic(),
            handler,
            attempts,
            reason,
        );
        self.shared
            .publisher
            .publish_dead_letter(
                Outgoing {
                    exchange: &self.shared.topology.names.dead_letters,
                    routing_key: message.topic(),
                    body: &body,
                    properties: publisher::message_properties(message, table),
                },
                Some(message),
                false,
            )
            .await
    }

    /// Publishes an event, its personal fields sealed with `sealer` (see `wire.rs`).
    pub(crate) async fn publish(
        &self,
        envelope: EventEnvelope,
        sealer: Option<&Sealer>,
    ) -> Result<EventEnvelope, BusError> {
        super::expect_kind(envelope.message(), MessageKind::Event)?;
        let mut envelope = envelope.mark_published();
        let flow = trace::begin(envelope.message_mut(), SYSTEM, trace::publish_span);
        let span = flow.span;
        let body = wire::encode_sealed(envelope.message(), sealer)
            .instrument(span.clone())
            .await?;
        let topic = envelope.topic();
        let routing = self
            .shared
            .publisher
            .publish(
                Outgoing {
                    exchange: &self.shared.topology.names.events,
                    routing_key: topic,
                    body: &body,
                    properties: publisher::message_properties(
                        envelope.message(),
                        FieldTable::default(),
                    ),
                },
                envelope.message(),
                flow.traced,
            )
            .instrument(span)
            .await?;
        if routing == Routing::Unroutable {
            tracing::debug!(topic, "event published with no subscriber bound yet");
        }
        Ok(envelope)
    }

    /// Stops taking deliveries (every consumer is cancelled), lets running handlers
    /// finish until `deadline` (those cut off are stopped, their deliveries left unacked
    /// for the broker to redeliver), then closes the channels and the connection.
    /// `Err(Timeout)` when handlers were cut off.
    pub(crate) async fn shutdown(&self, deadline: Instant) -> Result<(), BusError> {
        self.shared.lifecycle.begin(deadline);
        let workers: Vec<JoinHandle<()>> = lock(&self.tasks).drain(..).collect();
        let mut cut_off = false;
        // Each worker stops its own handlers at the deadline, then closes its channel.
        let margin = Duration::from_secs(3);
        for mut worker in workers {
            match tokio::time::timeout_at(deadline + margin, &mut worker).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    worker.abort();
                    cut_off = true;
                }
            }
        }
        cut_off |= self.shared.lifecycle.cut_off();
        if let Some(task) = lock(&self.supervisor).take() {
            task.abort();
        }
        self.shared.link.close().await;
        if cut_off {
            Err(BusError::Timeout(
                "handlers to finish before the shutdown deadline",
            ))
        } else {
            Ok(())
        }
    }

    pub(crate) async fn dead_letters(&self, bus: &Bus) -> Result<DeadLetters, BusError> {
        let (tx, rx) = mpsc::channel(super::DEAD_LETTER_BUFFER);
        let worker = Arc::new(Worker {
            shared: self.shared.clone(),
            bus: bus.downgrade(),
            feed: Feed::Receiver(tx),
            source: Source::Receiver,
            concurrency: 1,
            label: "dead-letter receiver".to_owned(),
        });
        let opened = worker.open().await?;
        self.spawn(worker.run(opened));
        Ok(DeadLetters::new(rx))
    }
}

/// A command ready to publish: its flow's span, the encoded body, the headers and the
/// routing key. A finished (or already dispatched) envelope is refused here, before
/// anything is sent.
struct OutgoingCommand {
    traced: bool,
    span: tracing::Span,
    body: Vec<u8>,
    headers: FieldTable,
    topic: String,
}

fn prepare_command(envelope: &mut CommandEnvelope) -> Result<OutgoingCommand, BusError> {
    super::expect_kind(envelope.message(), MessageKind::Command)?;
    envelope.clone().try_mark_dispatched()?;
    let flow = trace::begin(envelope.message_mut(), SYSTEM, trace::dispatch_span);
    let body = wire::encode(envelope.message())?;
    let mut headers = FieldTable::default();
    if let Some(max) = envelope.max_retries_override() {
        headers::put_int(&mut headers, headers::MAX_RETRIES, i64::from(max));
    }
    Ok(OutgoingCommand {
        traced: flow.traced,
        span: flow.span,
        body,
        headers,
        topic: envelope.topic().to_owned(),
    })
}

/// No queue took the command: recorded on its span, reported as `NoHandler`.
fn no_handler(span: &tracing::Span, topic: String) -> BusError {
    trace::record_error(
        span,
        "no_handler",
        "no queue is bound to this command topic",
    );
    BusError::NoHandler { topic }
}
