//! Exchange and queue names, and their idempotent declaration (see the module docs of
//! [`super`] for the whole topology).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use super::broker_error;
use super::headers;
use crate::bus::BusError;
use crate::config::BusConfig;

/// The routing key that binds a queue to every message of a topic exchange.
const EVERYTHING: &str = "#";

/// Exchange and queue names under a prefix (`orkestra` by default).
#[derive(Debug)]
pub(super) struct Names {
    pub(super) commands: String,
    pub(super) events: String,
    pub(super) retry: String,
    pub(super) dead_letters: String,
    pub(super) dead_letter_queue: String,
    prefix: String,
}

impl Names {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            commands: format!("{prefix}.commands"),
            events: format!("{prefix}.events"),
            retry: format!("{prefix}.retry"),
            dead_letters: format!("{prefix}.deadletter"),
            dead_letter_queue: format!("{prefix}.deadletter.all"),
            prefix: prefix.to_owned(),
        }
    }

    /// The work queue of a command type.
    pub(super) fn command_queue(&self, topic: &str) -> String {
        format!("{}.cmd.{topic}", self.prefix)
    }

    /// The work queue of an event handler.
    pub(super) fn event_queue(&self, handler: &str) -> String {
        format!("{}.evt.{handler}", self.prefix)
    }

    /// The queue of a dead-letter handler.
    pub(super) fn dead_letter_handler_queue(&self, handler: &str) -> String {
        // `.handler.` keeps a handler named `all` off the catch-all queue.
        format!("{}.deadletter.handler.{handler}", self.prefix)
    }
}

/// A queue's binding: the exchange and the routing key (or pattern) it takes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Binding<'a> {
    pub(super) exchange: &'a str,
    pub(super) routing_key: &'a str,
}

/// What a consumer consumes from, declared again on every connection it consumes on.
#[derive(Clone, Debug)]
pub(super) enum Source {
    /// A work queue, with its bindings (exchange, routing key) and wait queue.
    Work {
        queue: String,
        bindings: Vec<(String, String)>,
    },
    /// A dead-letter handler's durable queue.
    DeadLetterHandler { queue: String },
    /// A `Bus::dead_letters` receiver: a new exclusive, server-named queue each time.
    Receiver,
}

/// The names and the settings that shape queues.
#[derive(Debug)]
pub(super) struct Topology {
    pub(super) names: Names,
    retry_delay_ms: u32,
    queue_expiry_ms: Option<u32>,
}

impl Topology {
    pub(super) fn new(settings: &BusConfig) -> Self {
        Self {
            names: Names::new(&settings.prefix),
            retry_delay_ms: settings.retry_delay_ms,
            queue_expiry_ms: settings.queue_expiry_ms,
        }
    }

    /// Declares what `source` consumes from; returns the queue's name.
    pub(super) async fn declare_source(
        &self,
        channel: &Channel,
        source: &Source,
    ) -> Result<String, BusError> {
        match source {
            Source::Work { queue, bindings } => {
                let bindings: Vec<Binding<'_>> = bindings
                    .iter()
                    .map(|(exchange, routing_key)| Binding {
                        exchange,
                        routing_key,
                    })
                    .collect();
                self.declare_work_queue(channel, queue, &bindings).await?;
                Ok(queue.clone())
            }
            Source::DeadLetterHandler { queue } => {
                self.declare_dead_letter_handler_queue(channel, queue)
                    .await?;
                Ok(queue.clone())
            }
            Source::Receiver => Ok(self
                .declare_dead_letter_receiver(channel)
                .await?
                .as_str()
                .to_owned()),
        }
    }

    /// The four exchanges and the catch-all dead-letter queue.
    pub(super) async fn declare_exchanges(&self, channel: &Channel) -> Result<(), BusError> {
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
            channel
                .exchange_declare(name.as_str().into(), kind, durable, FieldTable::default())
                .await
                .map_err(broker_error)?;
        }
        channel
            .queue_declare(
                n.dead_letter_queue.as_str().into(),
                QueueDeclareOptions::durable(),
                self.expiry_args(),
            )
            .await
            .map_err(broker_error)?;
        bind(channel, &n.dead_letter_queue, self.all_dead_letters()).await
    }

    fn expiry_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if let Some(ms) = self.queue_expiry_ms {
            headers::put_int(&mut args, headers::EXPIRES, i64::from(ms));
        }
        args
    }

    fn all_dead_letters(&self) -> Binding<'_> {
        Binding {
            exchange: &self.names.dead_letters,
            routing_key: EVERYTHING,
        }
    }

    /// Declares a work queue with its wait queue and bindings: the work queue
    /// dead-letters to the retry exchange, which routes to the wait queue, whose TTL
    /// dead-letters back to the work queue through the default exchange.
    pub(super) async fn declare_work_queue(
        &self,
        channel: &Channel,
        queue: &str,
        bindings: &[Binding<'_>],
    ) -> Result<(), BusError> {
        let wait = format!("{queue}.wait.{}ms", self.retry_delay_ms);
        let retry = self.names.retry.as_str();
        let mut work_args = self.expiry_args();
        headers::put_str(&mut work_args, headers::DEAD_LETTER_EXCHANGE, retry);
        headers::put_str(&mut work_args, headers::DEAD_LETTER_ROUTING_KEY, queue);
        channel
            .queue_declare(queue.into(), QueueDeclareOptions::durable(), work_args)
            .await
            .map_err(broker_error)?;
        let mut wait_args = self.expiry_args();
        headers::put_int(
            &mut wait_args,
            headers::MESSAGE_TTL,
            i64::from(self.retry_delay_ms),
        );
        headers::put_str(&mut wait_args, headers::DEAD_LETTER_EXCHANGE, "");
        headers::put_str(&mut wait_args, headers::DEAD_LETTER_ROUTING_KEY, queue);
        channel
            .queue_declare(
                wait.as_str().into(),
                QueueDeclareOptions::durable(),
                wait_args,
            )
            .await
            .map_err(broker_error)?;
        bind(
            channel,
            &wait,
            Binding {
                exchange: retry,
                routing_key: queue,
            },
        )
        .await?;
        for binding in bindings {
            bind(channel, queue, *binding).await?;
        }
        Ok(())
    }

    /// Declares a dead-letter handler's durable queue, bound to every dead letter. It
    /// has no dead-letter arguments (a letter is never dead-lettered again) and expires
    /// like the work queues.
    pub(super) async fn declare_dead_letter_handler_queue(
        &self,
        channel: &Channel,
        queue: &str,
    ) -> Result<(), BusError> {
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::durable(),
                self.expiry_args(),
            )
            .await
            .map_err(broker_error)?;
        bind(channel, queue, self.all_dead_letters()).await
    }

    /// Declares a server-named, exclusive queue bound to every dead letter (for one
    /// `Bus::dead_letters` receiver; it goes away with its channel) and returns its name.
    pub(super) async fn declare_dead_letter_receiver(
        &self,
        channel: &Channel,
    ) -> Result<ShortString, BusError> {
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
        bind(channel, name.as_str(), self.all_dead_letters()).await?;
        Ok(name)
    }
}

async fn bind(channel: &Channel, queue: &str, binding: Binding<'_>) -> Result<(), BusError> {
    channel
        .queue_bind(
            queue.into(),
            binding.exchange.into(),
            binding.routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker_error)
}
