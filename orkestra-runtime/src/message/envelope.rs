//! Envelopes: a message plus its delivery state.
//!
//! A [`CommandEnvelope`] moves `Pending → Dispatched → Succeeded | Failed | Rejected`, and
//! back from `Failed` to `Dispatched` while retries remain. An [`EventEnvelope`] records
//! publication and the outcome of each handler.
//!
//! Every transition has a `try_` form that returns a [`TransitionError`] when it is out of
//! order. The chaining forms (`mark_published`, `mark_handler_succeeded`, …) never panic:
//! an out-of-order call leaves the envelope unchanged and logs a warning.

use serde_json::Value;

use super::command::Command;
use super::erased::Message;
use super::event::Event;
use super::payload::{CommandPayload, EventPayload};

/// The retry limit used when neither the envelope nor the handler binding sets one.
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// Where a command is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommandStatus {
    /// Not yet handed to a bus.
    Pending,
    /// Handed to a handler (in-process) or confirmed by the broker; not finished.
    Dispatched,
    /// The handler succeeded.
    Succeeded,
    /// The handler failed (it may be retried while [`CommandEnvelope::retryable`]).
    Failed,
    /// The handler rejected the command; it is not retried.
    Rejected,
}

/// Where an event is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventStatus {
    /// Not yet published.
    Pending,
    /// Published; no handler finished yet, or some still pending.
    Published,
    /// Every registered handler succeeded.
    Handled,
    /// Every registered handler finished; some succeeded and some failed.
    PartiallyHandled,
    /// Every registered handler failed.
    Failed,
}

/// The outcome of one handler of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandlerOutcome {
    /// Registered, not finished.
    Pending,
    /// Succeeded.
    Succeeded,
    /// Failed (after its retries).
    Failed,
}

/// An out-of-order envelope transition. The envelope is left unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    /// A command transition not allowed from its current status.
    #[error("command {id}: cannot go from {from:?} to {to:?}")]
    Command {
        /// The command id.
        id: String,
        /// Its status.
        from: CommandStatus,
        /// The status asked for.
        to: CommandStatus,
    },
    /// A handler outcome recorded before the event was published.
    #[error("event {id}: not published yet")]
    NotPublished {
        /// The event id.
        id: String,
    },
    /// A handler outcome for a handler that was never registered.
    #[error("event {id}: handler {handler} is not registered")]
    UnknownHandler {
        /// The event id.
        id: String,
        /// The handler name.
        handler: String,
    },
    /// A handler that already succeeded marked again.
    #[error("event {id}: handler {handler} already succeeded")]
    AlreadySucceeded {
        /// The event id.
        id: String,
        /// The handler name.
        handler: String,
    },
}

/// A command and its dispatch state.
#[derive(Clone, Debug)]
pub struct CommandEnvelope {
    message: Message,
    status: CommandStatus,
    attempts: u32,
    max_retries: Option<u32>,
    reply: Option<Value>,
    error: Option<String>,
}

impl CommandEnvelope {
    /// Wraps a typed command, `Pending`, no attempts.
    pub fn wrap<P: CommandPayload>(command: Command<P>) -> Self {
        Self::from_message(Message::from_command(command))
    }

    /// Wraps an erased command.
    pub fn from_message(message: Message) -> Self {
        Self {
            message,
            status: CommandStatus::Pending,
            attempts: 0,
            max_retries: None,
            reply: None,
            error: None,
        }
    }

    /// Sets how many times a failed handler is retried (so it runs at most
    /// `max_retries + 1` times). Overrides the handler binding's limit.
    #[must_use]
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = Some(max_retries);
        self
    }

    /// [`CommandEnvelope::with_max_retries`], under the name the guide uses
    /// (`CommandEnvelope::wrap(cmd).max_retries(2)`).
    #[must_use]
    pub fn max_retries(self, max_retries: u32) -> Self {
        self.with_max_retries(max_retries)
    }

    /// The retry limit set on this envelope, if any.
    pub fn max_retries_override(&self) -> Option<u32> {
        self.max_retries
    }

    /// The retry limit in force: this envelope's, else [`DEFAULT_MAX_RETRIES`].
    pub fn effective_max_retries(&self) -> u32 {
        self.max_retries.unwrap_or(DEFAULT_MAX_RETRIES)
    }

    /// The command.
    pub fn message(&self) -> &Message {
        &self.message
    }

    pub(crate) fn message_mut(&mut self) -> &mut Message {
        &mut self.message
    }

    /// The command id.
    pub fn id(&self) -> &str {
        self.message.id()
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        self.message.topic()
    }

    /// The current status.
    pub fn status(&self) -> CommandStatus {
        self.status
    }

    /// How many times a handler ran.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The handler's reply, once it succeeded.
    pub fn reply(&self) -> Option<&Value> {
        self.reply.as_ref()
    }

    /// The last failure or rejection reason.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Failed, and attempts ≤ the retry limit: another attempt is allowed.
    pub fn retryable(&self) -> bool {
        self.status == CommandStatus::Failed && self.attempts <= self.effective_max_retries()
    }

    /// `Pending → Dispatched`, or `Failed → Dispatched` while [`retryable`](Self::retryable);
    /// counts an attempt.
    pub fn try_mark_dispatched(&mut self) -> Result<(), TransitionError> {
        match self.status {
            CommandStatus::Pending => {}
            CommandStatus::Failed if self.retryable() => {}
            _ => return Err(self.refuse(CommandStatus::Dispatched)),
        }
        self.status = CommandStatus::Dispatched;
        self.attempts += 1;
        Ok(())
    }

    /// `Dispatched → Succeeded`, keeping the handler's reply.
    pub fn try_mark_succeeded(&mut self, reply: Value) -> Result<(), TransitionError> {
        self.finish(CommandStatus::Succeeded)?;
        self.reply = Some(reply);
        self.error = None;
        Ok(())
    }

    /// `Dispatched → Failed`.
    pub fn try_mark_failed(&mut self, reason: impl Into<String>) -> Result<(), TransitionError> {
        self.finish(CommandStatus::Failed)?;
        self.error = Some(reason.into());
        Ok(())
    }

    /// `Dispatched → Rejected`.
    pub fn try_mark_rejected(&mut self, reason: impl Into<String>) -> Result<(), TransitionError> {
        self.finish(CommandStatus::Rejected)?;
        self.error = Some(reason.into());
        Ok(())
    }

    /// Chaining form of [`try_mark_dispatched`](Self::try_mark_dispatched).
    #[must_use]
    pub fn mark_dispatched(mut self) -> Self {
        warn_out_of_order(self.try_mark_dispatched());
        self
    }

    /// Chaining form of [`try_mark_succeeded`](Self::try_mark_succeeded).
    #[must_use]
    pub fn mark_succeeded(mut self, reply: Value) -> Self {
        warn_out_of_order(self.try_mark_succeeded(reply));
        self
    }

    /// Chaining form of [`try_mark_failed`](Self::try_mark_failed).
    #[must_use]
    pub fn mark_failed(mut self, reason: impl Into<String>) -> Self {
        warn_out_of_order(self.try_mark_failed(reason));
        self
    }

    /// Chaining form of [`try_mark_rejected`](Self::try_mark_rejected).
    #[must_use]
    pub fn mark_rejected(mut self, reason: impl Into<String>) -> Self {
        warn_out_of_order(self.try_mark_rejected(reason));
        self
    }

    fn finish(&mut self, to: CommandStatus) -> Result<(), TransitionError> {
        if self.status != CommandStatus::Dispatched {
            return Err(self.refuse(to));
        }
        self.status = to;
        Ok(())
    }

    #[cold]
    fn refuse(&self, to: CommandStatus) -> TransitionError {
        TransitionError::Command {
            id: self.id().to_owned(),
            from: self.status,
            to,
        }
    }
}

/// An event and its delivery state.
#[derive(Clone, Debug)]
pub struct EventEnvelope {
    message: Message,
    published: bool,
    handlers: Vec<(String, HandlerOutcome)>,
}

impl EventEnvelope {
    /// Wraps a typed event, not yet published.
    pub fn wrap<D: EventPayload>(event: Event<D>) -> Self {
        Self::from_message(Message::from_event(event))
    }

    /// Wraps an erased event.
    pub fn from_message(message: Message) -> Self {
        Self {
            message,
            published: false,
            handlers: Vec::new(),
        }
    }

    /// The event.
    pub fn message(&self) -> &Message {
        &self.message
    }

    pub(crate) fn message_mut(&mut self) -> &mut Message {
        &mut self.message
    }

    /// The event id.
    pub fn id(&self) -> &str {
        self.message.id()
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        self.message.topic()
    }

    /// Whether it was published.
    pub fn is_published(&self) -> bool {
        self.published
    }

    /// Registered handlers and their outcomes, in registration order.
    pub fn handlers(&self) -> impl Iterator<Item = (&str, HandlerOutcome)> {
        self.handlers.iter().map(|(h, o)| (h.as_str(), *o))
    }

    /// The outcome of one handler, if registered.
    pub fn handler_outcome(&self, handler: &str) -> Option<HandlerOutcome> {
        self.handlers
            .iter()
            .find(|(h, _)| h == handler)
            .map(|(_, o)| *o)
    }

    /// The status derived from publication and the handler outcomes.
    pub fn status(&self) -> EventStatus {
        if !self.published {
            return EventStatus::Pending;
        }
        let mut succeeded = 0;
        let mut failed = 0;
        for (_, outcome) in &self.handlers {
            match outcome {
                HandlerOutcome::Pending => return EventStatus::Published,
                HandlerOutcome::Succeeded => succeeded += 1,
                HandlerOutcome::Failed => failed += 1,
            }
        }
        match (succeeded, failed) {
            (0, 0) => EventStatus::Published,
            (_, 0) => EventStatus::Handled,
            (0, _) => EventStatus::Failed,
            _ => EventStatus::PartiallyHandled,
        }
    }

    /// Records publication. Publishing twice is harmless.
    #[must_use]
    pub fn mark_published(mut self) -> Self {
        self.published = true;
        self
    }

    /// Registers a handler as pending. Registering one twice keeps its outcome.
    #[must_use]
    pub fn register_handler(mut self, handler: impl Into<String>) -> Self {
        self.register(handler.into());
        self
    }

    pub(crate) fn register(&mut self, handler: String) {
        if self.handler_outcome(&handler).is_none() {
            self.handlers.push((handler, HandlerOutcome::Pending));
        }
    }

    /// Records a handler's success. The event must be published and the handler registered.
    pub fn try_mark_handler_succeeded(&mut self, handler: &str) -> Result<(), TransitionError> {
        self.set_outcome(handler, HandlerOutcome::Succeeded)
    }

    /// Records a handler's failure. The event must be published and the handler registered
    /// and not already succeeded.
    pub fn try_mark_handler_failed(&mut self, handler: &str) -> Result<(), TransitionError> {
        self.set_outcome(handler, HandlerOutcome::Failed)
    }

    /// Chaining form of [`try_mark_handler_succeeded`](Self::try_mark_handler_succeeded).
    #[must_use]
    pub fn mark_handler_succeeded(mut self, handler: &str) -> Self {
        warn_out_of_order(self.try_mark_handler_succeeded(handler));
        self
    }

    /// Chaining form of [`try_mark_handler_failed`](Self::try_mark_handler_failed).
    #[must_use]
    pub fn mark_handler_failed(mut self, handler: &str) -> Self {
        warn_out_of_order(self.try_mark_handler_failed(handler));
        self
    }

    fn set_outcome(&mut self, handler: &str, to: HandlerOutcome) -> Result<(), TransitionError> {
        if !self.published {
            return Err(TransitionError::NotPublished {
                id: self.id().to_owned(),
            });
        }
        let id = self.message.id();
        let Some((_, outcome)) = self.handlers.iter_mut().find(|(h, _)| h == handler) else {
            return Err(TransitionError::UnknownHandler {
                id: id.to_owned(),
                handler: handler.to_owned(),
            });
        };
        if *outcome == HandlerOutcome::Succeeded && to != HandlerOutcome::Succeeded {
            return Err(TransitionError::AlreadySucceeded {
                id: id.to_owned(),
                handler: handler.to_owned(),
            });
        }
        *outcome = to;
        Ok(())
    }
}

fn warn_out_of_order(result: Result<(), TransitionError>) {
    if let Err(error) = result {
        tracing::warn!(%error, "out-of-order envelope transition ignored");
    }
}
