//! Running a handler once: its span, panic capture and the outcome. Shared by every bus
//! adapter, so handlers behave the same on all of them.

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use serde_json::Value;
use tracing::{Instrument, Span};

use super::Bus;
use super::subscription::RunError;
use super::{HandlerContext, Input, Subscription, Target};
use crate::handler::{DeadLetter, HandlerError};
use crate::message::Message;
use crate::metrics::{self, DeadLetterKind};
use crate::trace;

/// What one handler run (or all of them, with retries) came to.
pub(crate) enum Outcome {
    Succeeded(Value),
    /// The handler refused the message (`HandlerError::Reject`): an answer, never
    /// retried nor dead-lettered.
    Rejected(String),
    /// A failure: retried up to the limit, then dead-lettered.
    Failed(String),
    /// The message cannot be given to the handler: dead-lettered at once.
    Undecodable(String),
}

/// What every run of handlers for one message shares: the bus, how its spans and log
/// lines are labelled, and what the flow decided about tracing.
#[derive(Clone, Copy)]
pub(crate) struct Runner<'a> {
    pub(crate) bus: &'a Bus,
    /// `messaging.system` of the spans.
    pub(crate) system: &'static str,
    /// The `orkestra` field of the log lines (`pubsub`, `rabbitmq`).
    pub(crate) component: &'static str,
    /// Whether the flow is traced (spans are created).
    pub(crate) traced: bool,
    /// Whether the message's trace context came from elsewhere (a broker, a store), so a
    /// handle span may need a link to it; `false` when this flow just recorded it.
    pub(crate) foreign_origin: bool,
    /// When the first run starts, if the bus just read the clock (in-process dispatch
    /// times the send and the handler from the same reading).
    pub(crate) started: Option<crate::metrics::Instant>,
    /// Whether the first run is also the message's send (in-process dispatch: its
    /// `messaging.client.sent.messages` is counted with the run's consumed).
    pub(crate) sends: bool,
}

impl Runner<'_> {
    /// One run of a handler, inside its handle span (and, from the second attempt on, an
    /// `orkestra.retry` span); a panic counts as a failure.
    pub(crate) async fn attempt(
        &self,
        subscription: &Subscription,
        input: Input<'_>,
        attempt: u32,
        max_retries: u32,
    ) -> Outcome {
        if attempt > 1 && self.traced {
            let retry =
                trace::retry_span(input.message(), &subscription.handler, attempt, max_retries);
            self.run_once(subscription, input, attempt)
                .instrument(retry)
                .await
        } else {
            self.run_once(subscription, input, attempt).await
        }
    }

    async fn run_once(
        &self,
        subscription: &Subscription,
        input: Input<'_>,
        attempt: u32,
    ) -> Outcome {
        let message = input.message();
        let span = if self.traced {
            trace::handle_span(
                message,
                &subscription.handler,
                attempt,
                self.system,
                self.foreign_origin,
            )
        } else {
            Span::none()
        };
        let claim = if subscription.once {
            match self
                .bus
                .inbox()
                .claim(&subscription.handler, message.id())
                .await
            {
                Ok(Some(claim)) => Some(claim),
                Ok(None) => {
                    if let Some(m) = &subscription.meters {
                        m.skipped();
                    }
                    tracing::debug!(
                        handler = %subscription.handler,
                        message_id = message.id(),
                        orkestra = self.component,
                        "Already handled (once: true); skipped"
                    );
                    return Outcome::Succeeded(Value::Null);
                }
                Err(e) => {
                    let reason = e.to_string();
                    trace::record_error(&span, "failed", &reason);
                    return Outcome::Failed(reason);
                }
            }
        } else {
            None
        };
        let ctx = HandlerContext::new(
            self.bus.clone(),
            message.clone(),
            subscription.handler.clone(),
            attempt,
        );
        #[cfg(feature = "postgres")]
        let ctx = ctx.with_postgres(claim.as_ref().and_then(|c| c.postgres()));
        let logs = trace::log_context_span(message, &span);
        let started = self.started.filter(|_| attempt == 1);
        let sent = (self.sends && attempt == 1).then(|| message.type_name());
        let metered = subscription.meters.as_ref().map(|m| m.start(started, sent));
        let run = AssertUnwindSafe(async { subscription.call.call(input, ctx).await });
        let outcome = match trace::handling(&span, run.catch_unwind())
            .instrument(logs)
            .instrument(span.clone())
            .await
        {
            Ok(Ok(reply)) => match claim {
                None => {
                    if let Some(run) = metered {
                        run.finish(message.type_name(), metrics::Outcome::Success);
                    }
                    return Outcome::Succeeded(reply);
                }
                // The handler's work and the inbox row commit together (PostgreSQL) or
                // the row follows the work: a failure here means "run it again".
                Some(claim) => match claim.commit().await {
                    Ok(()) => {
                        if let Some(run) = metered {
                            run.finish(message.type_name(), metrics::Outcome::Success);
                        }
                        return Outcome::Succeeded(reply);
                    }
                    Err(e) => Outcome::Failed(e.to_string()),
                },
            },
            Ok(Err(RunError::Handler(HandlerError::Reject(reason)))) => {
                log_rejected(subscription, message, &reason, self.component);
                Outcome::Rejected(reason)
            }
            Ok(Err(RunError::Handler(HandlerError::Fail(reason)))) => Outcome::Failed(reason),
            Ok(Err(RunError::Undecodable(reason))) => Outcome::Undecodable(reason),
            Err(panic) => Outcome::Failed(format!("handler panicked: {}", panic_message(&*panic))),
        };
        if let Some(run) = metered {
            let counted = match outcome {
                Outcome::Rejected(_) => metrics::Outcome::Rejected,
                _ => metrics::Outcome::Failure,
            };
            run.finish(message.type_name(), counted);
        }
        let (error_type, reason) = match &outcome {
            Outcome::Rejected(reason) => ("rejected", reason),
            Outcome::Failed(reason) => ("failed", reason),
            Outcome::Undecodable(reason) => ("undecodable", reason),
            Outcome::Succeeded(_) => return outcome,
        };
        trace::record_error(&span, error_type, reason);
        outcome
    }

    /// Runs a dead-letter handler with its retries. Its failure is logged and goes no
    /// further: a dead letter never produces another one.
    pub(crate) async fn dead_letter_handler(&self, handler: &Subscription, letter: &DeadLetter) {
        let mut attempt = 1;
        loop {
            let input = Input::DeadLetter(letter);
            match self
                .attempt(handler, input, attempt, handler.max_retries)
                .await
            {
                Outcome::Succeeded(_) => return,
                Outcome::Failed(reason) if attempt <= handler.max_retries => {
                    log_retry(
                        handler,
                        attempt,
                        handler.max_retries,
                        &reason,
                        self.component,
                    );
                    attempt += 1;
                }
                Outcome::Failed(reason)
                | Outcome::Rejected(reason)
                | Outcome::Undecodable(reason) => {
                    tracing::error!(
                        handler = %handler.handler,
                        message_id = letter.message_id(),
                        reason,
                        attempts = attempt,
                        orkestra = self.component,
                        "Dead-letter handler failed; the letter is dropped"
                    );
                    return;
                }
            }
        }
    }
}

/// `WARN Handler nack, requeuing`: a failed run that will be retried. `component` is the
/// bus's `orkestra` field (`pubsub` in-process, `rabbitmq`).
pub(crate) fn log_retry(
    subscription: &Subscription,
    attempt: u32,
    max_retries: u32,
    reason: &str,
    component: &'static str,
) {
    if let Some(m) = &subscription.meters {
        m.retried();
    }
    tracing::warn!(
        handler = %subscription.handler,
        attempt,
        max_retries,
        reason,
        orkestra = component,
        "Handler nack, requeuing"
    );
}

/// `INFO Handler rejected the message`: a business refusal, the handler's answer (not
/// retried, not dead-lettered).
fn log_rejected(subscription: &Subscription, message: &Message, reason: &str, component: &str) {
    tracing::info!(
        handler = %subscription.handler,
        topic = message.topic(),
        message_id = message.id(),
        reason,
        orkestra = component,
        "Handler rejected the message"
    );
}

/// `INFO Command handler subscribed` / `INFO Event handler subscribed`, with the topic
/// (patterns joined by `, `) and, on a broker, the queue.
pub(crate) fn log_subscribed(subscription: &Subscription, queue: Option<&str>) {
    match &subscription.target {
        Target::Command { topic, .. } => tracing::info!(
            handler = %subscription.handler,
            topic = *topic,
            queue,
            orkestra = "command_handler",
            "Command handler subscribed"
        ),
        Target::Events { patterns } => tracing::info!(
            handler = %subscription.handler,
            topic = %patterns.join(", "),
            queue,
            orkestra = "event_handler",
            "Event handler subscribed"
        ),
        Target::DeadLetters => tracing::info!(
            handler = %subscription.handler,
            topic = crate::topic::DEAD_LETTER,
            queue,
            orkestra = "event_handler",
            "Event handler subscribed"
        ),
    }
}

/// `ERROR Dead letter recorded`, and counted by `kind`.
pub(crate) fn log_dead_letter(
    handler: &str,
    topic: &str,
    reason: &str,
    attempts: u32,
    component: &'static str,
    kind: DeadLetterKind,
) {
    metrics::dead_letter(handler, kind);
    tracing::error!(
        handler,
        topic,
        reason,
        attempts,
        orkestra = component,
        "Dead letter recorded"
    );
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}
