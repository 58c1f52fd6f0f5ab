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
//!   `orkestra.deadletter.all` bound by `#`.
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

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{Instrument, Span};

use super::in_process;
use super::run::{
    Outcome, log_dead_letter, log_retry, log_subscribed, run_attempt, run_dead_letter_handler,
};
use super::{Bus, BusError, DeadLetters};
use super::{Input, Subscription, Target};
use crate::config::{BusConfig, SecretUrl, redact};
use crate::handler::DeadLetter;
use crate::message::{CommandEnvelope, EventEnvelope};
use crate::message::{Message, MessageKind, RawCommand};
use crate::message::{Metadata, RawEvent};
use crate::trace;

const SYSTEM: &str = "rabbitmq";

/// Exchange and queue names under a prefix (`orkestra` by default).
#[derive(Debug)]
struct Names {
    commands: String,
    events: String,
    retry: String,
    dead_letters: String,
    dead_letter_queue: String,
    prefix: String,
}

impl Names {
    fn new(prefix: &str) -> Self {
        Self {
            commands: format!("{prefix}.commands"),
            events: format!("{prefix}.events"),
            retry: format!("{prefix}.retry"),
            dead_letters: format!("{prefix}.deadletter"),
            dead_letter_queue: format!("{prefix}.deadletter.all"),
            prefix: prefix.to_owned(),
        }
    }
}
/// How long a publish may wait for its confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// The body of every message: the payload and everything needed to rebuild it.
#[derive(Serialize, Deserialize)]
struct Wire {
    kind: MessageKind,
    id: String,
    #[serde(rename = "type")]
    type_name: String,
    topic: String,
    #[serde(default = "one")]
    version: u32,
    payload: Value,
    metadata: Metadata,
}

fn one() -> u32 {
    1
}

/// The same body, written from borrowed parts and a payload serialized straight from
/// the typed value.
#[derive(Serialize)]
struct WireOut<'a> {
    kind: MessageKind,
    id: &'a str,
    #[serde(rename = "type")]
    type_name: &'a str,
    topic: &'a str,
    version: u32,
    payload: &'a serde_json::value::RawValue,
    metadata: &'a Metadata,
}

/// The wire body of a message.
fn encode(message: &Message) -> Result<Vec<u8>, BusError> {
    let payload = message
        .payload_raw()
        .map_err(|e| BusError::Encode(e.to_string()))?;
    serde_json::to_vec(&WireOut {
        kind: message.kind(),
        id: message.id(),
        type_name: message.type_name(),
        topic: message.topic(),
        version: message.version(),
        payload: &payload,
        metadata: message.metadata(),
    })
    .map_err(|e| BusError::Encode(e.to_string()))
}

impl Wire {
    fn into_message(self) -> Message {
        match self.kind {
            MessageKind::Command => Message::from_raw_command(RawCommand {
                id: self.id,
                command_type: self.type_name,
                topic: self.topic,
                params: self.payload,
                metadata: self.metadata,
            }),
            MessageKind::Event => Message::from_raw_event(RawEvent {
                id: self.id,
                event_type: self.type_name,
                version: self.version,
                topic: self.topic,
                data: self.payload,
                metadata: self.metadata,
            }),
        }
    }
}

/// Trace-context headers in and out of an AMQP field table (long strings).
struct Headers<'a>(&'a mut FieldTable);

impl opentelemetry::propagation::Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(
            ShortString::from(key),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
}

struct ReadHeaders<'a>(&'a FieldTable);

impl opentelemetry::propagation::Extractor for ReadHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }
    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(ShortString::as_str).collect()
    }
}

fn header_str(headers: Option<&FieldTable>, key: &str) -> Option<String> {
    match headers?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// An integer header of any AMQP integer type.
fn header_int(headers: Option<&FieldTable>, key: &str) -> Option<i64> {
    as_int(headers?.inner().get(key)?)
}

fn as_int(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(i) => i64::from(*i),
        AMQPValue::ShortShortUInt(i) => i64::from(*i),
        AMQPValue::ShortInt(i) => i64::from(*i),
        AMQPValue::ShortUInt(i) => i64::from(*i),
        AMQPValue::LongInt(i) => i64::from(*i),
        AMQPValue::LongUInt(i) => i64::from(*i),
        AMQPValue::LongLongInt(i) => *i,
        AMQPValue::Timestamp(i) => i64::try_from(*i).ok()?,
        _ => return None,
    })
}

/// How many times this message was rejected from `queue` (the `x-death` entry with
/// reason `rejected` for that queue). Malformed headers count as none.
fn rejections(headers: Option<&FieldTable>, queue: &str) -> u32 {
    let Some(AMQPValue::FieldArray(deaths)) = headers.and_then(|h| h.inner().get("x-death")) else {
        return 0;
    };
    deaths
        .as_slice()
        .iter()
        .filter_map(|d| match d {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        })
        .filter(|t| {
            header_str(Some(t), "queue").as_deref() == Some(queue)
                && header_str(Some(t), "reason").as_deref() == Some("rejected")
        })
        .filter_map(|t| t.inner().get("count").and_then(as_int))
        .map(|c| u32::try_from(c).unwrap_or(u32::MAX))
        .max()
        .unwrap_or(0)
}

#[cold]
fn broker_error(e: lapin::Error) -> BusError {
    BusError::Broker(crate::DriverError::new(e))
}

#[derive(Debug)]
pub(crate) struct RabbitMq {
    connection: Connection,
    publisher: Channel,
    names: Names,
    settings: BusConfig,
    handlers: Mutex<HashSet<String>>,
    command_topics: Mutex<HashSet<String>>,
    consumers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        for task in self
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
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
        let unavailable = |e: &dyn std::fmt::Display| BusError::Unavailable {
            setting: "bus.url",
            message: format!("{url}: {}", redact(&e.to_string())),
        };
        // A first connection without recovery fails fast on a wrong address or password;
        // the working one recovers by itself (re-declaring topology and consumers).
        let probe = ConnectionProperties::default()
            .with_connection_name(LongString::from("orkestra-probe"));
        let probe = tokio::time::timeout(
            Duration::from_secs(15),
            Connection::connect(url.expose(), probe),
        )
        .await
        .map_err(|_| unavailable(&"no answer within 15 s"))?
        .map_err(|e| unavailable(&e))?;
        let _ = probe.close(200, "probe".into()).await;
        let properties = ConnectionProperties::default()
            .with_connection_name(LongString::from("orkestra"))
            .enable_auto_recover();
        let connection = tokio::time::timeout(
            Duration::from_secs(15),
            Connection::connect(url.expose(), properties),
        )
        .await
        .map_err(|_| unavailable(&"no answer within 15 s"))?
        .map_err(|e| unavailable(&e))?;
        let publisher = connection.create_channel().await.map_err(broker_error)?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker_error)?;
        let bus = Self {
            connection,
            publisher,
            names: Names::new(&settings.prefix),
            settings: settings.clone(),
            handlers: Mutex::default(),
            command_topics: Mutex::default(),
            consumers: Mutex::default(),
        };
        bus.declare_exchanges().await?;
        Ok(bus)
    }

    async fn declare_exchanges(&self) -> Result<(), BusError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let n = &self.names;
        for (name, kind) in [
            (&n.commands, ExchangeKind::Direct),
            (&n.events, ExchangeKind::Topic),
            (&n.retry, ExchangeKind::Direct),
            (&n.dead_letters, ExchangeKind::Topic),
        ] {
            self.publisher
                .exchange_declare(name.as_str().into(), kind, durable, FieldTable::default())
                .await
                .map_err(broker_error)?;
        }
        self.publisher
            .queue_declare(
                n.dead_letter_queue.as_str().into(),
                QueueDeclareOptions::durable(),
                self.expiry_args(),
            )
            .await
            .map_err(broker_error)?;
        self.publisher
            .queue_bind(
                n.dead_letter_queue.as_str().into(),
                n.dead_letters.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker_error)?;
        Ok(())
    }

    fn expiry_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if let Some(ms) = self.settings.queue_expiry_ms {
            args.insert("x-expires".into(), AMQPValue::LongLongInt(i64::from(ms)));
        }
        args
    }

    /// Declares a work queue with its wait queue and bindings.
    async fn declare_work_queue(
        &self,
        channel: &Channel,
        queue: &str,
        bindings: &[(&str, &str)],
    ) -> Result<(), BusError> {
        let wait = format!("{queue}.wait.{}ms", self.settings.retry_delay_ms);
        let retry = self.names.retry.as_str();
        let mut work_args = self.expiry_args();
        work_args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(retry.into()),
        );
        work_args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(queue.into()),
        );
        channel
            .queue_declare(queue.into(), QueueDeclareOptions::durable(), work_args)
            .await
            .map_err(broker_error)?;
        let mut wait_args = self.expiry_args();
        wait_args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::from(self.settings.retry_delay_ms)),
        );
        wait_args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        wait_args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(queue.into()),
        );
        channel
            .queue_declare(
                wait.as_str().into(),
                QueueDeclareOptions::durable(),
                wait_args,
            )
            .await
            .map_err(broker_error)?;
        channel
            .queue_bind(
                wait.as_str().into(),
                retry.into(),
                queue.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker_error)?;
        for (exchange, key) in bindings {
            channel
                .queue_bind(
                    queue.into(),
                    (*exchange).into(),
                    (*key).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(broker_error)?;
        }
        Ok(())
    }

    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        bus: &Bus,
        subscription: Subscription,
    ) -> Result<(), BusError> {
        {
            let mut handlers = self.handlers.lock().unwrap_or_else(PoisonError::into_inner);
            if !handlers.insert(subscription.handler.to_string()) {
                return Err(BusError::DuplicateHandler {
                    handler: subscription.handler.to_string(),
                });
            }
        }
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(broker_error)?;
        channel
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(broker_error)?;
        let queue = match &subscription.target {
            Target::Command { topic, .. } => {
                if !self
                    .command_topics
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert((*topic).to_owned())
                {
                    self.handlers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&*subscription.handler);
                    return Err(BusError::CommandAlreadyHandled {
                        topic: (*topic).to_owned(),
                        existing: "another handler of this bus".into(),
                        handler: subscription.handler.to_string(),
                    });
                }
                let queue = format!("{}.cmd.{topic}", self.names.prefix);
                self.declare_work_queue(&channel, &queue, &[(self.names.commands.as_str(), topic)])
                    .await?;
                log_subscribed(&subscription, Some(&queue));
                queue
            }
            Target::Events { patterns } => {
                let queue = format!("{}.evt.{}", self.names.prefix, subscription.handler);
                let bindings: Vec<(&str, &str)> = patterns
                    .iter()
                    .map(|p| (self.names.events.as_str(), *p))
                    .collect();
                self.declare_work_queue(&channel, &queue, &bindings).await?;
                log_subscribed(&subscription, Some(&queue));
                queue
            }
            Target::DeadLetters => {
                // No dead-letter arguments on this queue: a letter is never dead-lettered again.
                let queue = format!("{}.deadletter.{}", self.names.prefix, subscription.handler);
                channel
                    .queue_declare(
                        queue.as_str().into(),
                        QueueDeclareOptions {
                            durable: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map_err(broker_error)?;
                channel
                    .queue_bind(
                        queue.as_str().into(),
                        self.names.dead_letters.as_str().into(),
                        "#".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(broker_error)?;
                log_subscribed(&subscription, Some(&queue));
                let consumer = channel
                    .basic_consume(
                        queue.as_str().into(),
                        format!(
                            "orkestra-{}-{}",
                            subscription.handler,
                            crate::message::new_id()
                        )
                        .into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(broker_error)?;
                let task = tokio::spawn(consume_dead_letters(
                    bus.clone(),
                    Arc::new(subscription),
                    channel,
                    consumer,
                ));
                self.consumers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(task);
                return Ok(());
            }
        };
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                format!(
                    "orkestra-{}-{}",
                    subscription.handler,
                    crate::message::new_id()
                )
                .into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker_error)?;
        let task = tokio::spawn(consume(
            self.clone(),
            bus.clone(),
            Arc::new(subscription),
            queue,
            channel,
            consumer,
        ));
        self.consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(task);
        Ok(())
    }

    /// Publishes with confirm; `Ok(false)` when the broker returned it (no queue bound).
    async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<bool, BusError> {
        if body.len() > self.settings.max_message_bytes {
            return Err(BusError::TooLarge {
                size: body.len(),
                limit: self.settings.max_message_bytes,
            });
        }
        let span = tracing::info_span!(
            "orkestra.rabbitmq.publish",
            otel.kind = "producer",
            messaging.system = SYSTEM,
            "messaging.operation.type" = "publish",
            messaging.destination.name = exchange,
            messaging.rabbitmq.destination.routing_key = routing_key,
        );
        let mut properties = properties;
        if !span.is_disabled() {
            let mut headers = properties.headers().clone().unwrap_or_default();
            trace::inject(
                &tracing_opentelemetry::OpenTelemetrySpanExt::context(&span),
                &mut Headers(&mut headers),
            );
            properties = properties.with_headers(headers);
        }
        async {
            let confirm = self
                .publisher
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties,
                )
                .await
                .map_err(broker_error)?;
            match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
                Err(_) => Err(BusError::Timeout("publisher confirm")),
                Ok(Err(e)) => Err(broker_error(e)),
                Ok(Ok(Confirmation::Ack(None))) => Ok(true),
                Ok(Ok(Confirmation::Ack(Some(_)))) => Ok(false),
                Ok(Ok(Confirmation::Nack(_))) => Err(BusError::Broker(crate::DriverError::msg(
                    "the broker refused the message (nack)",
                ))),
                Ok(Ok(Confirmation::NotRequested)) => Err(BusError::Broker(
                    crate::DriverError::msg("publisher confirms are off"),
                )),
            }
        }
        .instrument(span)
        .await
    }

    fn properties(message: &Message) -> BasicProperties {
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(message.id().into())
            .with_type(message.type_name().into())
    }

    pub(crate) async fn dispatch(
        &self,
        mut envelope: CommandEnvelope,
    ) -> Result<CommandEnvelope, BusError> {
        super::expect_kind(envelope.message(), MessageKind::Command)?;
        let (span, _) = trace::begin(envelope.message_mut(), SYSTEM, trace::dispatch_span);
        let body = encode(envelope.message())?;
        let mut headers = FieldTable::default();
        if let Some(max) = envelope.max_retries_override() {
            headers.insert(
                "x-max-retries".into(),
                AMQPValue::LongLongInt(i64::from(max)),
            );
        }
        let mut properties = Self::properties(envelope.message());
        if !headers.inner().is_empty() {
            properties = properties.with_headers(headers);
        }
        let topic = envelope.topic().to_owned();
        let routed = self
            .publish_raw(&self.names.commands, &topic, &body, properties)
            .instrument(span.clone())
            .await?;
        if !routed {
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
        let (span, _) = trace::begin(envelope.message_mut(), SYSTEM, trace::publish_span);
        let body = encode(envelope.message())?;
        let topic = envelope.topic().to_owned();
        let routed = self
            .publish_raw(
                &self.names.events,
                &topic,
                &body,
                Self::properties(envelope.message()),
            )
            .instrument(span)
            .await?;
        if !routed {
            tracing::debug!(topic, "event published with no subscriber bound yet");
        }
        Ok(envelope)
    }

    pub(crate) async fn dead_letters(&self) -> Result<DeadLetters, BusError> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(broker_error)?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(broker_error)?;
        let name = queue.name().clone();
        channel
            .queue_bind(
                name.clone(),
                self.names.dead_letters.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker_error)?;
        let mut consumer = channel
            .basic_consume(
                name,
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker_error)?;
        let (tx, rx) = mpsc::channel(in_process::DEAD_LETTER_BUFFER);
        let task = tokio::spawn(async move {
            let _channel = channel;
            while let Some(Ok(delivery)) = consumer.next().await {
                let letter = letter_from_delivery(&delivery);
                // Wait for room before acking: a slow reader leaves the rest in the queue.
                if tx.send(letter).await.is_err() {
                    break;
                }
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
        });
        self.consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(task);
        Ok(DeadLetters::new(rx))
    }
}

/// A dead letter as the dead-letter exchange delivers it (headers set by [`dead_letter`]).
fn letter_from_delivery(delivery: &lapin::message::Delivery) -> DeadLetter {
    let headers = delivery.properties.headers().as_ref();
    DeadLetter {
        message: decode_or_placeholder(&delivery.data, delivery.routing_key.as_str(), headers),
        topic: header_str(headers, "x-orkestra-original-routing-key")
            .unwrap_or_else(|| delivery.routing_key.as_str().to_owned()),
        handler: header_str(headers, "x-orkestra-handler").unwrap_or_default(),
        reason: header_str(headers, "x-orkestra-error").unwrap_or_default(),
        attempts: header_int(headers, "x-orkestra-attempts")
            .and_then(|a| u32::try_from(a).ok())
            .unwrap_or(0),
        dead_at: chrono::Utc::now(),
    }
}

/// Feeds a dead-letter binding: each letter runs the handler (with its retries), then is
/// acked whatever the outcome, so a failing dead-letter handler never loops.
async fn consume_dead_letters(
    bus: Bus,
    subscription: Arc<Subscription>,
    channel: Channel,
    mut consumer: lapin::Consumer,
) {
    let _channel = channel;
    while let Some(Ok(delivery)) = consumer.next().await {
        let letter = letter_from_delivery(&delivery);
        run_dead_letter_handler(&bus, &subscription, &letter, SYSTEM, SYSTEM).await;
        if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
            tracing::warn!(%error, handler = %subscription.handler, orkestra = "rabbitmq", "dead letter not acked");
        }
    }
}

/// The message in a body, or a placeholder event holding the raw text when the body is
/// not an Orkestra message (dead letters must still be delivered and read).
fn decode_or_placeholder(body: &[u8], routing_key: &str, headers: Option<&FieldTable>) -> Message {
    match serde_json::from_slice::<Wire>(body) {
        Ok(wire) => wire.into_message(),
        Err(_) => Message::from_raw_event(RawEvent {
            id: header_str(headers, "message_id").unwrap_or_default(),
            event_type: "orkestra.undecodable".into(),
            version: 1,
            topic: routing_key.to_owned(),
            data: Value::String(String::from_utf8_lossy(body).into_owned()),
            metadata: Metadata::new(),
        }),
    }
}

/// Successful deliveries are acknowledged in batches (`multiple`), after at most
/// [`ACK_BATCH`] of them or when no delivery is waiting for [`ACK_IDLE`]. Deliveries are
/// handled one after another per consumer, so every earlier delivery is settled (acked,
/// rejected or dead-lettered) before a batch ack covers it.
async fn consume(
    broker: Arc<RabbitMq>,
    bus: Bus,
    subscription: Arc<Subscription>,
    queue: String,
    channel: Channel,
    mut consumer: lapin::Consumer,
) {
    let mut pending: Option<u64> = None;
    let mut unacked = 0usize;
    loop {
        let next = if pending.is_some() {
            match tokio::time::timeout(ACK_IDLE, consumer.next()).await {
                Ok(next) => next,
                Err(_) => {
                    flush_acks(&channel, &mut pending, &mut unacked).await;
                    continue;
                }
            }
        } else {
            consumer.next().await
        };
        let Some(delivery) = next else { break };
        let Ok(delivery) = delivery else {
            // The channel failed; with auto-recovery lapin re-opens it and the broker
            // redelivers whatever was not acknowledged (at-least-once). Old tags are void.
            pending = None;
            unacked = 0;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if let Some(tag) = handle_delivery(&broker, &bus, &subscription, &queue, delivery).await {
            pending = Some(tag);
            unacked += 1;
            if unacked >= ACK_BATCH {
                flush_acks(&channel, &mut pending, &mut unacked).await;
            }
        }
    }
    flush_acks(&channel, &mut pending, &mut unacked).await;
}

/// Most successful deliveries acknowledged by one batch ack.
const ACK_BATCH: usize = 100;
/// How long a batch ack waits for more deliveries.
const ACK_IDLE: Duration = Duration::from_millis(10);

async fn flush_acks(channel: &Channel, pending: &mut Option<u64>, unacked: &mut usize) {
    if let Some(tag) = pending.take()
        && let Err(error) = channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await
    {
        tracing::error!(%error, "batch ack failed; the broker will redeliver those messages");
    }
    *unacked = 0;
}

/// Handles one delivery and settles it, except a success: its tag is returned for the
/// next batch ack.
async fn handle_delivery(
    broker: &RabbitMq,
    bus: &Bus,
    subscription: &Subscription,
    queue: &str,
    delivery: lapin::message::Delivery,
) -> Option<u64> {
    let headers = delivery.properties.headers().as_ref();
    let attempt = rejections(headers, queue).saturating_add(1);
    let max_retries = header_int(headers, "x-max-retries")
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(subscription.max_retries);
    let span = tracing::info_span!(
        "orkestra.rabbitmq.consume",
        otel.kind = "consumer",
        messaging.system = SYSTEM,
        "messaging.operation.type" = "receive",
        messaging.destination.name = queue,
        messaging.rabbitmq.destination.routing_key = delivery.routing_key.as_str(),
        messaging.rabbitmq.message.delivery_tag = delivery.delivery_tag as i64,
        messaging.message.id = Empty,
        orkestra.handler = &*subscription.handler,
    );
    // Only a span that records anything needs the producer's context.
    if let Some(parent) = headers
        .filter(|_| !span.is_disabled())
        .map(|h| trace::extract(&ReadHeaders(h)))
    {
        use opentelemetry::trace::TraceContextExt;
        let link = parent.span().span_context().clone();
        let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, parent);
        tracing_opentelemetry::OpenTelemetrySpanExt::add_link(&span, link);
    }
    // The topic it was published with: after a retry the delivery's own routing key is
    // the work queue's name (the wait queue sends it back through the default exchange).
    let mut topic = delivery.routing_key.as_str().to_owned();
    let outcome = async {
        if delivery.data.len() > broker.settings.max_message_bytes {
            return Err(format!(
                "message of {} bytes exceeds the limit of {}",
                delivery.data.len(),
                broker.settings.max_message_bytes
            ));
        }
        let wire: Wire = serde_json::from_slice(&delivery.data)
            .map_err(|e| format!("undecodable message: {e}"))?;
        Span::current().record("messaging.message.id", wire.id.as_str());
        topic.clone_from(&wire.topic);
        let message = wire.into_message();
        let traced = !Span::current().is_disabled() || trace::should_trace(&message);
        Ok(run_attempt(
            bus,
            subscription,
            Input::Message(&message),
            attempt,
            max_retries,
            traced,
            SYSTEM,
        )
        .await)
    }
    .instrument(span.clone())
    .await;
    let result = match outcome {
        Ok(Outcome::Succeeded(_)) => return Some(delivery.delivery_tag),
        Ok(Outcome::Failed(reason)) if attempt <= max_retries => {
            log_retry(subscription, attempt, max_retries, &reason, SYSTEM);
            delivery
                .reject(BasicRejectOptions { requeue: false })
                .await
                .map(drop)
                .map_err(broker_error)
        }
        Ok(Outcome::Failed(reason) | Outcome::Rejected(reason)) | Err(reason) => {
            dead_letter(broker, subscription, &delivery, &topic, &reason, attempt)
                .instrument(span)
                .await
        }
    };
    if let Err(error) = result {
        tracing::error!(handler = %subscription.handler, %error, "could not settle a delivery; the broker will redeliver it");
    }
    None
}

use tracing::field::Empty;

/// Publishes the message to the dead-letter exchange (with confirm), then acks it. If the
/// dead letter cannot be confirmed the delivery is rejected with requeue: never lost.
async fn dead_letter(
    broker: &RabbitMq,
    subscription: &Subscription,
    delivery: &lapin::message::Delivery,
    topic: &str,
    reason: &str,
    attempts: u32,
) -> Result<(), BusError> {
    log_dead_letter(&subscription.handler, topic, reason, attempts, SYSTEM);
    let original = delivery.properties.headers().as_ref();
    let mut headers = FieldTable::default();
    let exchange = header_str(original, "x-first-death-exchange")
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| delivery.exchange.as_str().to_owned());
    headers.insert(
        "x-orkestra-original-exchange".into(),
        AMQPValue::LongString(exchange.into()),
    );
    headers.insert(
        "x-orkestra-original-routing-key".into(),
        AMQPValue::LongString(topic.into()),
    );
    headers.insert(
        "x-orkestra-handler".into(),
        AMQPValue::LongString(subscription.handler.as_ref().into()),
    );
    headers.insert(
        "x-orkestra-attempts".into(),
        AMQPValue::LongLongInt(i64::from(attempts)),
    );
    headers.insert(
        "x-orkestra-error".into(),
        AMQPValue::LongString(reason.into()),
    );
    for key in [trace::TRACEPARENT, trace::TRACESTATE] {
        if let Some(v) = header_str(original, key) {
            headers.insert(key.into(), AMQPValue::LongString(v.into()));
        }
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(id) = delivery.properties.message_id() {
        properties = properties.with_message_id(id.clone());
    }
    // The body may be over the size limit (that can be why it is here): send it as is.
    let sent = async {
        let confirm = broker
            .publisher
            .basic_publish(
                broker.names.dead_letters.as_str().into(),
                topic.into(),
                BasicPublishOptions::default(),
                &delivery.data,
                properties,
            )
            .await
            .map_err(broker_error)?;
        match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
            Ok(Ok(Confirmation::Ack(_))) => Ok(()),
            Ok(Ok(_)) => Err(BusError::Broker(crate::DriverError::msg(
                "the broker refused the dead letter",
            ))),
            Ok(Err(e)) => Err(broker_error(e)),
            Err(_) => Err(BusError::Timeout("dead-letter confirm")),
        }
    }
    .await;
    match sent {
        Ok(()) => delivery
            .ack(BasicAckOptions::default())
            .await
            .map(drop)
            .map_err(broker_error),
        Err(e) => {
            let _ = delivery.reject(BasicRejectOptions { requeue: true }).await;
            Err(e)
        }
    }
}
