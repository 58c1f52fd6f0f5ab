//! The two spans only this bus has: `orkestra.rabbitmq.publish` (producer) and
//! `orkestra.rabbitmq.consume` (consumer). Like the other spans they carry the message's
//! type and id and its correlation, causation and actor ids once the message is known;
//! for a body that is not an Orkestra message, the message id of its properties.

use lapin::BasicProperties;
use lapin::message::Delivery;
use tracing::Span;
use tracing::field::Empty;

use super::SYSTEM;
use crate::message::{Message, MessageKind};

/// A span of this module: its own fields first, then the message fields every such
/// span has, empty until [`record_message`] or [`record_undecodable`] fills them.
macro_rules! rabbitmq_span {
    ($name:literal, $($fields:tt)*) => {
        tracing::info_span!(
            $name,
            messaging.system = SYSTEM,
            $($fields)*
            messaging.message.id = Empty,
            orkestra.command.type = Empty,
            orkestra.command.id = Empty,
            orkestra.event.type = Empty,
            orkestra.event.id = Empty,
            orkestra.correlation_id = Empty,
            orkestra.causation_id = Empty,
            orkestra.actor_id = Empty,
        )
    };
}

/// `orkestra.rabbitmq.publish`, for one publish to `exchange` with `routing_key`.
pub(super) fn publish(exchange: &str, routing_key: &str) -> Span {
    rabbitmq_span!(
        "orkestra.rabbitmq.publish",
        otel.kind = "producer",
        "messaging.operation.type" = "publish",
        messaging.destination.name = exchange,
        messaging.rabbitmq.destination.routing_key = routing_key,
    )
}

/// `orkestra.rabbitmq.consume`, for one delivery from `queue` to `handler`.
pub(super) fn consume(queue: &str, delivery: &Delivery, handler: &str) -> Span {
    rabbitmq_span!(
        "orkestra.rabbitmq.consume",
        otel.kind = "consumer",
        "messaging.operation.type" = "receive",
        messaging.destination.name = queue,
        messaging.rabbitmq.destination.routing_key = delivery.routing_key.as_str(),
        messaging.rabbitmq.message.delivery_tag = delivery.delivery_tag as i64,
        orkestra.handler = handler,
    )
}

/// Records the message's ids and type on a span of this module.
pub(super) fn record_message(span: &Span, message: &Message) {
    if span.is_disabled() {
        return;
    }
    let (type_key, id_key) = match message.kind() {
        MessageKind::Command => ("orkestra.command.type", "orkestra.command.id"),
        MessageKind::Event => ("orkestra.event.type", "orkestra.event.id"),
    };
    let metadata = message.metadata();
    span.record("messaging.message.id", message.id());
    span.record(type_key, message.type_name());
    span.record(id_key, message.id());
    span.record("orkestra.correlation_id", metadata.correlation_id.as_str());
    if let Some(causation) = &metadata.causation_id {
        span.record("orkestra.causation_id", causation.as_str());
    }
    if let Some(actor) = &metadata.actor_id {
        span.record("orkestra.actor_id", actor.as_str());
    }
}

/// Records what is known of a body that is not an Orkestra message: the message id of
/// its properties, if it has one.
pub(super) fn record_undecodable(span: &Span, properties: &BasicProperties) {
    if let Some(id) = properties.message_id() {
        span.record("messaging.message.id", id.as_str());
    }
}
