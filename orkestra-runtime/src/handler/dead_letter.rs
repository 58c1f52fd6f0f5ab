//! [`DeadLetter`]: a message a handler gave up on.

use chrono::{DateTime, Utc};

use crate::message::Message;

/// A message that a handler could not process: rejected, undecodable, or failed on
/// every allowed attempt.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub(crate) message: Message,
    pub(crate) topic: String,
    pub(crate) handler: String,
    pub(crate) reason: String,
    pub(crate) attempts: u32,
    pub(crate) dead_at: DateTime<Utc>,
}

impl DeadLetter {
    /// The original message's topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The handler that gave up.
    pub fn handler(&self) -> &str {
        &self.handler
    }

    /// The last failure or the rejection reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// How many times the handler ran.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The original message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The original message's id.
    pub fn message_id(&self) -> &str {
        self.message.id()
    }

    /// When it was dead-lettered.
    pub fn dead_at(&self) -> DateTime<Utc> {
        self.dead_at
    }
}
