//! Publishing with publisher confirms: a message with `mandatory` (so an unroutable
//! one comes back), a dead letter without. The one place a confirmation becomes a result.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, PublisherConfirm};
use tokio::time::Instant;
use tracing::{Instrument, Span};

use super::headers::TraceInjector;
use super::link::Link;
use super::{broker_error, spans};
use crate::DriverError;
use crate::bus::BusError;
use crate::message::Message;
use crate::trace;

/// One message to publish.
pub(super) struct Outgoing<'a> {
    pub(super) exchange: &'a str,
    pub(super) routing_key: &'a str,
    pub(super) body: &'a [u8],
    pub(super) properties: BasicProperties,
}

/// Where a confirmed message went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Routing {
    /// At least one queue took it.
    Queued,
    /// No queue is bound to its routing key; the broker returned it (`mandatory`).
    Unroutable,
}

/// What is published, as confirm errors name it.
#[derive(Clone, Copy)]
enum Purpose {
    Message,
    DeadLetter,
    Reply,
}

/// Publishes through the link's confirm-mode channel. Every publish returns within the
/// confirm timeout, whatever the broker does: waiting for a connection while the link
/// is down, sending, and the confirm all count against it.
#[derive(Debug)]
pub(super) struct Publisher {
    link: Arc<Link>,
    max_message_bytes: usize,
    confirm_timeout: Duration,
}

impl Publisher {
    pub(super) fn new(
        link: Arc<Link>,
        max_message_bytes: usize,
        confirm_timeout: Duration,
    ) -> Self {
        Self {
            link,
            max_message_bytes,
            confirm_timeout,
        }
    }

    /// Publishes a message with confirm and `mandatory`, in an `orkestra.rabbitmq.publish`
    /// span (when the flow is `traced`) whose trace context travels in the headers. A
    /// body over the size limit is refused before it is sent.
    pub(super) async fn publish(
        &self,
        out: Outgoing<'_>,
        message: &Message,
        traced: bool,
    ) -> Result<Routing, BusError> {
        if out.body.len() > self.max_message_bytes {
            return Err(BusError::TooLarge {
                size: out.body.len(),
                limit: self.max_message_bytes,
            });
        }
        let span = if traced {
            spans::publish(out.exchange, out.routing_key)
        } else {
            Span::none()
        };
        spans::record_message(&span, message);
        let mut out = out;
        if !span.is_disabled() {
            let mut headers = out.properties.headers().clone().unwrap_or_default();
            trace::inject(
                &tracing_opentelemetry::OpenTelemetrySpanExt::context(&span),
                &mut TraceInjector(&mut headers),
            );
            out.properties = out.properties.with_headers(headers);
        }
        self.send(out, Purpose::Message).instrument(span).await
    }

    /// Publishes a dead letter with confirm, in an `orkestra.rabbitmq.publish` span with
    /// what is known of the message (`None`: its body is not an Orkestra message). Its
    /// headers keep the original trace context. The body may be over the size limit
    /// (that can be why it is a dead letter): it is sent as it is.
    pub(super) async fn publish_dead_letter(
        &self,
        out: Outgoing<'_>,
        message: Option<&Message>,
        traced: bool,
    ) -> Result<(), BusError> {
        let span = if traced {
            spans::publish(out.exchange, out.routing_key)
        } else {
            Span::none()
        };
        match message {
            Some(message) => spans::record_message(&span, message),
            None => spans::record_undecodable(&span, &out.properties),
        }
        self.send(out, Purpose::DeadLetter)
            .instrument(span)
            .await
            .map(drop)
    }

    /// Sends a command's outcome to the direct reply-to address of its caller (not
    /// `mandatory`: a caller that has gone away drops it).
    pub(super) async fn publish_reply(
        &self,
        reply_to: &str,
        correlation_id: &str,
        body: &[u8],
    ) -> Result<(), BusError> {
        let out = Outgoing {
            exchange: "",
            routing_key: reply_to,
            body,
            properties: BasicProperties::default()
                .with_content_type("application/json".into())
                .with_correlation_id(correlation_id.into()),
        };
        self.send(out, Purpose::Reply).await.map(drop)
    }

    /// Publishes and waits for the confirm; only a message is `mandatory`. Waits for a
    /// connection while the link is down; all of it within the confirm timeout.
    async fn send(&self, out: Outgoing<'_>, purpose: Purpose) -> Result<Routing, BusError> {
        let started = Instant::now();
        let deadline = started + self.confirm_timeout;
        let live = match self.link.current() {
            Some(live) => live,
            None => match tokio::time::timeout_at(deadline, self.link.live()).await {
                Ok(live) => live?,
                Err(_) => return Err(self.link.unavailable(started.elapsed())),
            },
        };
        let options = BasicPublishOptions {
            mandatory: matches!(purpose, Purpose::Message),
            ..BasicPublishOptions::default()
        };
        let mut used = None;
        let sent = tokio::time::timeout_at(deadline, async {
            let in_use = live.publish_channel().await?;
            used = Some(in_use.channel.clone());
            let confirm = in_use
                .channel
                .basic_publish(
                    out.exchange.into(),
                    out.routing_key.into(),
                    options,
                    out.body,
                    out.properties,
                )
                .await
                .map_err(broker_error)?;
            let result = confirmed(confirm, purpose).await;
            drop(in_use);
            result
        })
        .await;
        let result = sent.unwrap_or(Err(BusError::Timeout(match purpose {
            Purpose::Message => "publisher confirm",
            Purpose::DeadLetter => "dead-letter confirm",
            Purpose::Reply => "reply confirm",
        })));
        if matches!(result, Err(BusError::Broker(_) | BusError::Timeout(_))) {
            if let Some(channel) = &used {
                live.forget_channel(channel);
            }
            self.link.suspect();
        }
        result
    }
}

/// The properties every message is published with.
pub(super) fn message_properties(message: &Message, headers: FieldTable) -> BasicProperties {
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(message.id().into())
        .with_type(message.type_name().into());
    if headers.inner().is_empty() {
        properties
    } else {
        properties.with_headers(headers)
    }
}

/// Waits for the broker's confirm: an ack is success (with the message back when it
/// was unroutable); a nack, confirms being off or a closed channel is an error. The
/// caller bounds the wait.
async fn confirmed(confirm: PublisherConfirm, purpose: Purpose) -> Result<Routing, BusError> {
    let refused = match purpose {
        Purpose::Message => "the broker refused the message (nack)",
        Purpose::DeadLetter => "the broker refused the dead letter",
        Purpose::Reply => "the broker refused the reply",
    };
    match confirm.await {
        Err(e) => Err(broker_error(e)),
        Ok(Confirmation::Ack(None)) => Ok(Routing::Queued),
        Ok(Confirmation::Ack(Some(_))) => Ok(Routing::Unroutable),
        Ok(Confirmation::Nack(_)) => Err(BusError::Broker(DriverError::msg(refused))),
        Ok(Confirmation::NotRequested) => Err(BusError::Broker(DriverError::msg(
            "publisher confirms are off",
        ))),
    }
}
