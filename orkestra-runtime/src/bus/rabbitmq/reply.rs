//! Replies across processes (`Bus::call`) through RabbitMQ's direct reply-to: the
//! bus's publishing channel also consumes `amq.rabbitmq.reply-to` (no ack), a request
//! carries that address and a correlation id, and the handling bus, once the command's
//! outcome is final, publishes the outcome to that address. No queue is declared.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use lapin::Channel;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;

use super::broker_error;
use crate::bus::BusError;
use crate::message::CommandEnvelope;
use crate::sync::lock;

/// The pseudo-queue of direct reply-to.
pub(super) const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// A command's final outcome, as the handling bus sends it back.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Reply {
    /// `succeeded`, `failed` or `rejected`.
    pub(super) status: String,
    /// The handler's reply (succeeded).
    #[serde(default)]
    pub(super) reply: Value,
    /// Why it failed or was rejected.
    #[serde(default)]
    pub(super) error: Option<String>,
    /// How many times the handler ran.
    pub(super) attempts: u32,
    /// The retry limit it ran under.
    pub(super) max_retries: u32,
}

/// Calls waiting for their reply, by correlation id.
#[derive(Debug, Default)]
pub(super) struct Replies {
    /// By correlation id: the call's number (in registration order) and its sender.
    waiting: Mutex<HashMap<String, (u64, oneshot::Sender<Reply>)>>,
    /// The number of the last call registered.
    last: AtomicU64,
}

/// A registered call; dropping it forgets the call (its reply, if any, is dropped).
pub(super) struct Waiting<'a> {
    replies: &'a Replies,
    id: String,
    pub(super) rx: oneshot::Receiver<Reply>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.replies.waiting).remove(&self.id);
    }
}

impl Replies {
    pub(super) fn wait_for(&self, id: String) -> Waiting<'_> {
        let (tx, rx) = oneshot::channel();
        let number = self.last.fetch_add(1, Ordering::SeqCst) + 1;
        lock(&self.waiting).insert(id.clone(), (number, tx));
        Waiting {
            replies: self,
            id,
            rx,
        }
    }

    /// The number of the last call registered so far.
    pub(super) fn last_call(&self) -> u64 {
        self.last.load(Ordering::SeqCst)
    }

    /// Whether a call registered at or before call number `last` still waits.
    pub(super) fn waits_from(&self, last: u64) -> bool {
        lock(&self.waiting).values().any(|(n, _)| *n <= last)
    }

    fn deliver(&self, id: &str, reply: Reply) {
        if let Some((_, tx)) = lock(&self.waiting).remove(id) {
            let _ = tx.send(reply);
        }
    }

    /// Consumes direct replies on `channel` (the publishing channel) and hands each to
    /// its call, until the channel closes.
    pub(super) async fn listen(self: &Arc<Self>, channel: &Channel) -> Result<(), BusError> {
        let mut consumer = channel
            .basic_consume(
                REPLY_TO.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(broker_error)?;
        let replies = self.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let Some(id) = delivery.properties.correlation_id().as_ref() else {
                    continue;
                };
                match serde_json::from_slice::<Reply>(&delivery.data) {
                    Ok(reply) => replies.deliver(id.as_str(), reply),
                    Err(error) => {
                        tracing::warn!(%error, orkestra = "rabbitmq", "unreadable reply dropped");
                    }
                }
            }
        });
        Ok(())
    }
}

/// The receipt of a call: the dispatched envelope with the outcome the reply reports.
pub(super) fn receipt(mut envelope: CommandEnvelope, reply: Reply) -> CommandEnvelope {
    if envelope.max_retries_override().is_none() {
        envelope = envelope.with_max_retries(reply.max_retries);
    }
    // Earlier runs failed (they were retried).
    for _ in 1..reply.attempts {
        if envelope.try_mark_failed("retried").is_err() || envelope.try_mark_dispatched().is_err() {
            break;
        }
    }
    let error = reply.error.unwrap_or_default();
    let _ = match reply.status.as_str() {
        "succeeded" => envelope.try_mark_succeeded(reply.reply),
        "rejected" => envelope.try_mark_rejected(error),
        _ => envelope.try_mark_failed(error),
    };
    envelope
}
