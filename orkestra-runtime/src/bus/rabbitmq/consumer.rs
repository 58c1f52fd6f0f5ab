//! Consuming: the consume loop of a work queue (batched acks, rejects into the retry
//! path, dead-lettering of exhausted, rejected or undecodable messages), and the
//! consumers of dead letters (a dead-letter handler's queue, a `Bus::dead_letters`
//! receiver).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use opentelemetry::trace::TraceContextExt;
use tokio::sync::mpsc;
use tracing::{Instrument, Span};

use super::headers::{self, TraceExtractor};
use super::publisher::Outgoing;
use super::{RabbitMq, SYSTEM, broker_error, spans, wire};
use crate::bus::run::{Outcome, Runner, log_dead_letter, log_retry};
use crate::bus::{Bus, BusError};
use crate::bus::{Input, Subscription};
use crate::handler::DeadLetter;
use crate::message::Message;
use crate::message::new_id;
use crate::trace;

/// How this bus runs handlers: a delivered message's trace context always comes from
/// its producer. Dead-letter handlers are not traced.
fn runner(bus: &Bus) -> Runner<'_> {
    Runner {
        bus,
        system: SYSTEM,
        component: SYSTEM,
        traced: false,
        foreign_origin: true,
    }
}

/// Most successful deliveries acknowledged by one batch ack.
const ACK_BATCH: usize = 100;
/// How long a batch ack waits for more deliveries.
const ACK_IDLE: Duration = Duration::from_millis(10);

/// Starts consuming `queue` on `channel`, with a consumer tag naming the handler (a
/// broker-chosen tag without one).
pub(super) async fn start(
    channel: &Channel,
    queue: &str,
    handler: Option<&str>,
) -> Result<lapin::Consumer, BusError> {
    let tag = handler.map_or_else(String::new, |h| format!("orkestra-{h}-{}", new_id()));
    channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker_error)
}

/// Feeds one subscription's work queue to its handler.
///
/// Successful deliveries are acknowledged in batches (`multiple`), after at most
/// [`ACK_BATCH`] of them or when no delivery is waiting for [`ACK_IDLE`]. Deliveries are
/// handled one after another per consumer, so every earlier delivery is settled (acked,
/// rejected or dead-lettered) before a batch ack covers it.
pub(super) async fn consume(
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
    delivery: Delivery,
) -> Option<u64> {
    let headers = delivery.properties.headers().as_ref();
    let attempt = headers::rejections(headers, queue).saturating_add(1);
    let max_retries =
        headers::uint(headers, headers::MAX_RETRIES).unwrap_or(subscription.max_retries);
    let decoded = decode(&delivery.data, broker.settings.max_message_bytes);
    // The producer's trace context decides, as a parent would; without one, the flow's
    // own sampling decision (its correlation id), as on the in-process bus.
    let parent = headers.map(|h| trace::extract(&TraceExtractor(h)));
    let producer = parent.as_ref().map(|cx| cx.span().span_context().clone());
    let traced = match (&producer, &decoded) {
        (Some(sc), _) if sc.is_valid() => sc.is_sampled(),
        (_, Ok(message)) => trace::should_trace(message),
        (_, Err(_)) => trace::samples(
            delivery
                .properties
                .message_id()
                .as_ref()
                .map_or("", |id| id.as_str()),
            trace::sampling_ratio(),
        ),
    };
    let span = if traced {
        let span = spans::consume(queue, &delivery, &subscription.handler);
        if let (Some(parent), Some(link)) = (parent, producer) {
            let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, parent);
            tracing_opentelemetry::OpenTelemetrySpanExt::add_link(&span, link);
        }
        match &decoded {
            Ok(message) => spans::record_message(&span, message),
            Err(_) => spans::record_undecodable(&span, &delivery.properties),
        }
        span
    } else {
        Span::none()
    };
    let outcome = match &decoded {
        Ok(message) => {
            let runner = Runner {
                traced,
                ..runner(bus)
            };
            runner
                .attempt(subscription, Input::Message(message), attempt, max_retries)
                .instrument(span.clone())
                .await
        }
        Err(reason) => Outcome::Rejected(reason.clone()),
    };
    let settled = match outcome {
        Outcome::Succeeded(_) => return Some(delivery.delivery_tag),
        Outcome::Failed(reason) if attempt <= max_retries => {
            log_retry(subscription, attempt, max_retries, &reason, SYSTEM);
            delivery
                .reject(BasicRejectOptions { requeue: false })
                .await
                .map(drop)
                .map_err(broker_error)
        }
        Outcome::Failed(reason) | Outcome::Rejected(reason) => {
            let letter = Letter {
                message: decoded.as_ref().ok(),
                handler: &subscription.handler,
                reason: &reason,
                attempts: attempt,
                traced,
            };
            dead_letter(broker, &delivery, letter)
                .instrument(span)
                .await
        }
    };
    if let Err(error) = settled {
        tracing::error!(handler = %subscription.handler, %error, "could not settle a delivery; the broker will redeliver it");
    }
    None
}

/// The message in a delivery's body, or why there is none (too large, undecodable:
/// neither is retried).
fn decode(body: &[u8], limit: usize) -> Result<Message, String> {
    if body.len() > limit {
        return Err(format!(
            "message of {} bytes exceeds the limit of {limit}",
            body.len(),
        ));
    }
    wire::decode(body)
        .map(wire::Wire::into_message)
        .map_err(|e| format!("undecodable message: {e}"))
}

/// Why a delivery is dead-lettered, and what is known of it.
struct Letter<'a> {
    /// The decoded message; `None` for a body that is not an Orkestra message.
    message: Option<&'a Message>,
    handler: &'a str,
    reason: &'a str,
    attempts: u32,
    /// Whether the flow is traced (the republish gets a producer span).
    traced: bool,
}

/// Publishes the delivery to the dead-letter exchange (with confirm), then acks it. If
/// the dead letter cannot be confirmed the delivery is rejected with requeue: never lost.
/// Its routing key is the topic it was published with: after a retry the delivery's own
/// routing key is the work queue's name (the wait queue sends it back through the
/// default exchange).
async fn dead_letter(
    broker: &RabbitMq,
    delivery: &Delivery,
    letter: Letter<'_>,
) -> Result<(), BusError> {
    let topic = letter
        .message
        .map_or(delivery.routing_key.as_str(), Message::topic);
    log_dead_letter(
        letter.handler,
        topic,
        letter.reason,
        letter.attempts,
        SYSTEM,
    );
    let original = delivery.properties.headers().as_ref();
    let exchange = headers::string(original, headers::X_FIRST_DEATH_EXCHANGE)
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| delivery.exchange.as_str().to_owned());
    let mut table = FieldTable::default();
    headers::put_str(&mut table, headers::ORIGINAL_EXCHANGE, &exchange);
    headers::put_str(&mut table, headers::ORIGINAL_ROUTING_KEY, topic);
    headers::put_str(&mut table, headers::HANDLER, letter.handler);
    headers::put_int(&mut table, headers::ATTEMPTS, i64::from(letter.attempts));
    headers::put_str(&mut table, headers::ERROR, letter.reason);
    for key in [headers::TRACEPARENT, headers::TRACESTATE] {
        if let Some(value) = headers::string(original, key) {
            headers::put_str(&mut table, key, &value);
        }
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(table);
    if let Some(id) = delivery.properties.message_id() {
        properties = properties.with_message_id(id.clone());
    }
    let sent = broker
        .publisher
        .publish_dead_letter(
            Outgoing {
                exchange: &broker.topology.names.dead_letters,
                routing_key: topic,
                body: &delivery.data,
                properties,
            },
            letter.message,
            letter.traced,
        )
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

/// A dead letter as the dead-letter exchange delivers it (headers set by [`dead_letter`]).
fn letter_from_delivery(delivery: &Delivery) -> DeadLetter {
    let headers = delivery.properties.headers().as_ref();
    DeadLetter {
        message: wire::decode_or_placeholder(
            &delivery.data,
            delivery.routing_key.as_str(),
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str()),
        ),
        topic: headers::string(headers, headers::ORIGINAL_ROUTING_KEY)
            .unwrap_or_else(|| delivery.routing_key.as_str().to_owned()),
        handler: headers::string(headers, headers::HANDLER).unwrap_or_default(),
        reason: headers::string(headers, headers::ERROR).unwrap_or_default(),
        attempts: headers::uint(headers, headers::ATTEMPTS).unwrap_or(0),
        dead_at: chrono::Utc::now(),
    }
}

/// The next delivery, riding through channel failures as `consume` does (lapin's
/// recovery re-opens the channel and the broker redelivers what was not acked); `None`
/// once the consumer is gone.
async fn next_delivery(consumer: &mut lapin::Consumer) -> Option<Delivery> {
    loop {
        match consumer.next().await? {
            Ok(delivery) => return Some(delivery),
            Err(error) => {
                tracing::warn!(%error, orkestra = "rabbitmq", "dead-letter consumer interrupted; resuming");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Feeds a dead-letter handler: each letter runs the handler (with its retries), then is
/// acked whatever the outcome, so a failing dead-letter handler never loops.
pub(super) async fn consume_dead_letters(
    bus: Bus,
    subscription: Arc<Subscription>,
    channel: Channel,
    mut consumer: lapin::Consumer,
) {
    let _channel = channel;
    while let Some(delivery) = next_delivery(&mut consumer).await {
        let letter = letter_from_delivery(&delivery);
        runner(&bus)
            .dead_letter_handler(&subscription, &letter)
            .await;
        if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
            tracing::warn!(%error, handler = %subscription.handler, orkestra = "rabbitmq", "dead letter not acked");
        }
    }
}

/// Feeds a `Bus::dead_letters` receiver. It waits for room before acking: a slow
/// reader leaves the rest in the queue. Ends when the receiver is dropped.
pub(super) async fn forward_dead_letters(
    channel: Channel,
    mut consumer: lapin::Consumer,
    tx: mpsc::Sender<DeadLetter>,
) {
    let _channel = channel;
    while let Some(delivery) = next_delivery(&mut consumer).await {
        if tx.send(letter_from_delivery(&delivery)).await.is_err() {
            break;
        }
        let _ = delivery.ack(BasicAckOptions::default()).await;
    }
}
