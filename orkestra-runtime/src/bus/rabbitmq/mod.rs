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
//!   queue `orkestra.deadletter.<handler>` and each `Bus::dead_letters` receiver an
//!   exclusive server-named one, both bound by `#` and without dead-letter arguments.
//!
//! A failed run is rejected without requeue; the attempt number is one more than the
//! `count` of the `x-death` entry for the work queue with reason `rejected` (a received
//! `x-death` is never republished). The retry limit travels in `x-max-retries`. An
//! exhausted, rejected or undecodable message is published with confirm to
//! `orkestra.deadletter` (routing key: its original one) with the original exchange,
//! routing key, handler, attempts, error and `traceparent` in headers, then acked.
//!
//! Publishing uses confirms and `mandatory`: a nack, a timeout or a closed channel is an
//! error, and a command that no queue takes is [`BusError::NoHandler`]. An event that no
//! queue takes has no subscriber yet; that is not an error (as on the in-process bus).
//!
//! | file | what it holds |
//! | --- | --- |
//! | `mod.rs` | `RabbitMq`: connect, subscribe, dispatch, publish, dead-letter receivers |
//! | `topology.rs` | exchange and queue names, their declaration and bindings |
//! | `publisher.rs` | publishing with confirms; where a confirmation becomes a result |
//! | `consumer.rs` | consume loops, acks, retries, dead-lettering, dead-letter consumers |
//! | `wire.rs` | the JSON body of a message, and the placeholder for an undecodable one |
//! | `spans.rs` | the `orkestra.rabbitmq.publish` and `orkestra.rabbitmq.consume` spans |
//! | `headers.rs` | every header and argument name, header read/write, trace-context carriers |

mod consumer;
mod headers;
mod publisher;
mod spans;
mod topology;
mod wire;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::BasicQosOptions;
use lapin::types::{FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use self::publisher::{Outgoing, Publisher, Routing};
use self::topology::{Binding, Topology};
use super::run::log_subscribed;
use super::{Bus, BusError, DeadLetters};
use crate::DriverError;
use crate::bus::{Subscription, Target};
use crate::config::{BusConfig, SecretUrl};
use crate::message::MessageKind;
use crate::message::{CommandEnvelope, EventEnvelope};
use crate::sync::lock;
use crate::trace;

/// `messaging.system`, and the `system` every span of this bus names.
const SYSTEM: &str = "rabbitmq";
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

#[cold]
fn broker_error(e: lapin::Error) -> BusError {
    BusError::Broker(DriverError::new(e))
}

#[derive(Debug)]
pub(crate) struct RabbitMq {
    connection: Connection,
    publisher: Publisher,
    topology: Topology,
    settings: BusConfig,
    handlers: Mutex<HashSet<String>>,
    command_topics: Mutex<HashSet<String>>,
    consumers: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        for task in lock(&self.consumers).drain(..) {
            task.abort();
        }
    }
}

impl RabbitMq {
    pub(crate) async fn connect(settings: &BusConfig) -> Result<Self, BusError> {
        let url = settings
            .url
            .clone()
            .unwrap_or_else(|| SecretUrl::new("amqp://guest:guest@127.0.0.1:5672/%2f"));
        let unavailable = |reason: &str, source: Option<lapin::Error>| {
            let source = source.map(DriverError::new);
            let message = match &source {
                Some(e) => format!("{url}: {e}"),
                None => format!("{url}: {reason}"),
            };
            BusError::Unavailable {
                setting: "bus.url",
                message,
                source,
            }
        };
        let open = |name: &str, properties: ConnectionProperties| {
            let properties = properties.with_connection_name(LongString::from(name));
            async {
                tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    Connection::connect(url.expose(), properties),
                )
                .await
                .map_err(|_| unavailable("no answer within 15 s", None))?
                .map_err(|e| unavailable("", Some(e)))
            }
        };
        // A first connection without recovery fails fast on a wrong address or password;
        // the working one recovers by itself (re-declaring topology and consumers).
        let probe = open("orkestra-probe", ConnectionProperties::default()).await?;
        let _ = probe.close(200, "probe".into()).await;
        let connection = open(
            "orkestra",
            ConnectionProperties::default().enable_auto_recover(),
        )
        .await?;
        let publisher = Publisher::open(&connection, settings.max_message_bytes).await?;
        let topology = Topology::new(settings);
        topology.declare_exchanges(publisher.channel()).await?;
        Ok(Self {
            connection,
            publisher,
            topology,
            settings: settings.clone(),
            handlers: Mutex::default(),
            command_topics: Mutex::default(),
            consumers: Mutex::default(),
        })
    }

    /// A channel for one consumer, with the configured prefetch.
    async fn consumer_channel(&self) -> Result<Channel, BusError> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(broker_error)?;
        channel
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(broker_error)?;
        Ok(channel)
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        lock(&self.consumers).push(tokio::spawn(task));
    }

    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        bus: &Bus,
        subscription: Subscription,
    ) -> Result<(), BusError> {
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

    /// Declares what a subscription consumes from and starts its consumer.
    async fn start(
        self: &Arc<Self>,
        bus: &Bus,
        subscription: Subscription,
    ) -> Result<(), BusError> {
        let channel = self.consumer_channel().await?;
        let names = &self.topology.names;
        let queue = match subscription.target.clone() {
            Target::Command { topic, .. } => {
                let queue = names.command_queue(topic);
                let binding = Binding {
                    exchange: &names.commands,
                    routing_key: topic,
                };
                self.topology
                    .declare_work_queue(&channel, &queue, &[binding])
                    .await?;
                queue
            }
            Target::Events { patterns } => {
                let queue = names.event_queue(&subscription.handler);
                let bindings: Vec<Binding<'_>> = patterns
                    .iter()
                    .map(|pattern| Binding {
                        exchange: &names.events,
                        routing_key: pattern,
                    })
                    .collect();
                self.topology
                    .declare_work_queue(&channel, &queue, &bindings)
                    .await?;
                queue
            }
            Target::DeadLetters => {
                let queue = names.dead_letter_handler_queue(&subscription.handler);
                self.topology
                    .declare_dead_letter_handler_queue(&channel, &queue)
                    .await?;
                log_subscribed(&subscription, Some(&queue));
                let consumer =
                    consumer::start(&channel, &queue, Some(&subscription.handler)).await?;
                self.spawn(consumer::consume_dead_letters(
                    bus.clone(),
                    Arc::new(subscription),
                    channel,
                    consumer,
                ));
                return Ok(());
            }
        };
        log_subscribed(&subscription, Some(&queue));
        let consumer = consumer::start(&channel, &queue, Some(&subscription.handler)).await?;
        self.spawn(consumer::consume(
            self.clone(),
            bus.clone(),
            Arc::new(subscription),
            queue,
            channel,
            consumer,
        ));
        Ok(())
    }

    pub(crate) async fn dispatch(
        &self,
        mut envelope: CommandEnvelope,
    ) -> Result<CommandEnvelope, BusError> {
        super::expect_kind(envelope.message(), MessageKind::Command)?;
        let flow = trace::begin(envelope.message_mut(), SYSTEM, trace::dispatch_span);
        let span = flow.span;
        let body = wire::encode(envelope.message())?;
        let mut headers = FieldTable::default();
        if let Some(max) = envelope.max_retries_override() {
            headers::put_int(&mut headers, headers::MAX_RETRIES, i64::from(max));
        }
        let topic = envelope.topic().to_owned();
        let routing = self
            .publisher
            .publish(
                Outgoing {
                    exchange: &self.topology.names.commands,
                    routing_key: &topic,
                    body: &body,
                    properties: publisher::message_properties(envelope.message(), headers),
                },
                envelope.message(),
                flow.traced,
            )
            .instrument(span.clone())
            .await?;
        if routing == Routing::Unroutable {
            trace::record_error(
                &span,
                "no_handler",
                "no queue is bound to this command topic",
            );
            return Err(BusError::NoHandler { topic });
        }
        envelope.try_mark_dispatched()?;
        Ok(envelope)
    }

    pub(crate) async fn publish(&self, envelope: EventEnvelope) -> Result<EventEnvelope, BusError> {
        super::expect_kind(envelope.message(), MessageKind::Event)?;
        let mut envelope = envelope.mark_published();
        let flow = trace::begin(envelope.message_mut(), SYSTEM, trace::publish_span);
        let span = flow.span;
        let body = wire::encode(envelope.message())?;
        let topic = envelope.topic();
        let routing = self
            .publisher
            .publish(
                Outgoing {
                    exchange: &self.topology.names.events,
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

    pub(crate) async fn dead_letters(&self) -> Result<DeadLetters, BusError> {
        // With the consumers' prefetch, so letters beyond it wait in the broker.
        let channel = self.consumer_channel().await?;
        let queue = self.topology.declare_dead_letter_receiver(&channel).await?;
        let consumer = consumer::start(&channel, queue.as_str(), None).await?;
        let (tx, rx) = mpsc::channel(super::DEAD_LETTER_BUFFER);
        self.spawn(consumer::forward_dead_letters(channel, consumer, tx));
        Ok(DeadLetters::new(rx))
    }
}
