//! Exchange and queue names, and their idempotent declaration (see the module docs of
//! [`super`] for the whole topology).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use super::broker_error;
use super::headers;
use crate::bus::BusError;
use crate::config::{BusConfig, QueueType};

/// A quorum queue's `x-delivery-limit`: a backstop against a message that keeps
/// killing its consumer. Retries are rejections without requeue, which it does not
/// count; only returned deliveries (a consumer gone, a shutdown) do.
const DELIVERY_LIMIT: i64 = 100;

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
        /// The waits before each retry, in ms (empty: `bus.retry_delay_ms`).
        delays: Vec<u32>,
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
    queue_type: QueueType,
    retry_delay_ms: u32,
    queue_expiry_ms: Option<u32>,
}

impl Topology {
    pub(super) fn new(settings: &BusConfig) -> Self {
        Self {
            names: Names::new(&settings.prefix),
            queue_type: settings.queue_type,
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
            Source::Work {
                queue,
                bindings,
                delays,
            } => {
                let bindings: Vec<Binding<'_>> = bindings
                    .iter()
                    .map(|(exchange, routing_key)| Binding {
                        exchange,
                        routing_key,
                    })
                    .collect();
                self.declare_work_queue(channel, queue, &bindings, delays)
                    .await?;
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
        self.declare_durable(channel, &n.dead_letter_queue, self.expiry_args(), false)
            .await?;
        bind(channel, &n.dead_letter_queue, self.all_dead_letters()).await
    }

    /// Declares a durable queue of the configured type. A quorum queue that
    /// dead-letters does it `at-least-once` (which needs `reject-publish` overflow) and
    /// has the broker's delivery limit as a backstop. An existing queue with other
    /// arguments (another type, say) is [`BusError::QueueMismatch`], never redeclared.
    async fn declare_durable(
        &self,
        channel: &Channel,
        queue: &str,
        mut args: FieldTable,
        dead_letters: bool,
    ) -> Result<(), BusError> {
        if self.queue_type == QueueType::Quorum {
            headers::put_str(&mut args, headers::QUEUE_TYPE, "quorum");
            if dead_letters {
                headers::put_str(&mut args, headers::DEAD_LETTER_STRATEGY, "at-least-once");
                headers::put_str(&mut args, headers::OVERFLOW, "reject-publish");
                headers::put_int(&mut args, headers::DELIVERY_LIMIT, DELIVERY_LIMIT);
            }
        }
        match channel
            .queue_declare(queue.into(), QueueDeclareOptions::durable(), args)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let error = crate::DriverError::new(e);
                if error.to_string().contains("inequivalent arg") {
                    Err(BusError::QueueMismatch {
                        queue: queue.to_owned(),
                        wanted: self.queue_type.name(),
                        source: error,
                    })
                } else {
                    Err(BusError::Broker(error))
                }
            }
        }
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

    /// Declares a work queue with its wait queues and bindings. `delays` are the waits
    /// before each retry, in ms (none: `bus.retry_delay_ms`).
    ///
    /// One delay (the usual case): the work queue dead-letters to the retry exchange,
    /// which routes by the queue's name to its wait queue, whose TTL dead-letters back
    /// to the work queue through the default exchange.
    ///
    /// Several (a binding's `retry_backoff`): one wait queue per distinct delay, chosen
    /// by the broker alone, so attempts still come from `x-death`. The work queue
    /// dead-letters to `<queue>.retry` keeping the message's routing key; a first
    /// failure's key (its topic) matches nothing there and goes to the alternate
    /// exchange `<queue>.retry.first`, bound to the first wait queue; each wait queue
    /// dead-letters to `<queue>.back` with the key of the next stage (`stage-2`, …, the
    /// last one keeping its own), which takes it back to the work queue, and a failure
    /// with a stage key is routed by `<queue>.retry` to that stage's wait queue.
    pub(super) async fn declare_work_queue(
        &self,
        channel: &Channel,
        queue: &str,
        bindings: &[Binding<'_>],
        delays: &[u32],
    ) -> Result<(), BusError> {
        let delays: Vec<u32> = if delays.is_empty() {
            vec![self.retry_delay_ms]
        } else {
            delays.to_vec()
        };
        if let [delay] = delays.as_slice() {
            self.declare_single_delay(channel, queue, *delay).await?;
        } else {
            self.declare_staged_delays(channel, queue, &delays).await?;
        }
        for binding in bindings {
            bind(channel, queue, *binding).await?;
        }
        Ok(())
    }

    async fn declare_single_delay(
        &self,
        channel: &Channel,
        queue: &str,
        delay: u32,
    ) -> Result<(), BusError> {
        let wait = format!("{queue}.wait.{delay}ms");
        let retry = self.names.retry.as_str();
        let mut work_args = self.expiry_args();
        headers::put_str(&mut work_args, headers::DEAD_LETTER_EXCHANGE, retry);
        headers::put_str(&mut work_args, headers::DEAD_LETTER_ROUTING_KEY, queue);
        self.declare_durable(channel, queue, work_args, true)
            .await?;
        let mut wait_args = self.expiry_args();
        headers::put_int(&mut wait_args, headers::MESSAGE_TTL, i64::from(delay));
        headers::put_str(&mut wait_args, headers::DEAD_LETTER_EXCHANGE, "");
        headers::put_str(&mut wait_args, headers::DEAD_LETTER_ROUTING_KEY, queue);
        self.declare_durable(channel, &wait, wait_args, true)
            .await?;
        bind(
            channel,
            &wait,
            Binding {
                exchange: retry,
                routing_key: queue,
            },
        )
        .await
    }

    async fn declare_staged_delays(
        &self,
        channel: &Channel,
        queue: &str,
        delays: &[u32],
    ) -> Result<(), BusError> {
        let retry = format!("{queue}.retry");
        let first = format!("{queue}.retry.first");
        let back = format!("{queue}.back");
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let mut retry_args = FieldTable::default();
        headers::put_str(&mut retry_args, headers::ALTERNATE_EXCHANGE, &first);
        for (name, kind, args) in [
            (first.as_str(), ExchangeKind::Fanout, FieldTable::default()),
            (retry.as_str(), ExchangeKind::Direct, retry_args),
            (back.as_str(), ExchangeKind::Direct, FieldTable::default()),
        ] {
            channel
                .exchange_declare(name.into(), kind, durable, args)
                .await
                .map_err(broker_error)?;
        }
        let mut work_args = self.expiry_args();
        headers::put_str(&mut work_args, headers::DEAD_LETTER_EXCHANGE, &retry);
        self.declare_durable(channel, queue, work_args, true)
            .await?;
        let stage = |i: usize| format!("stage-{}", i.min(delays.len()));
        for (i, delay) in delays.iter().enumerate() {
            let n = i + 1;
            let wait = format!("{queue}.wait.{delay}ms");
            let mut wait_args = self.expiry_args();
            headers::put_int(&mut wait_args, headers::MESSAGE_TTL, i64::from(*delay));
            headers::put_str(&mut wait_args, headers::DEAD_LETTER_EXCHANGE, &back);
            headers::put_str(
                &mut wait_args,
                headers::DEAD_LETTER_ROUTING_KEY,
                &stage(n + 1),
            );
            self.declare_durable(channel, &wait, wait_args, true)
                .await?;
            let key = stage(n);
            let (exchange, routing_key) = if n == 1 {
                (first.as_str(), "")
            } else {
                (retry.as_str(), key.as_str())
            };
            bind(
                channel,
                &wait,
                Binding {
                    exchange,
                    routing_key,
                },
            )
            .await?;
            if n >= 2 {
                bind(
                    channel,
                    queue,
                    Binding {
                        exchange: &back,
                        routing_key: &key,
                    },
                )
                .await?;
            }
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
        self.declare_durable(channel, queue, self.expiry_args(), false)
            .await?;
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
