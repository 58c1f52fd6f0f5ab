//! [`Subscription`]: a handler bound to what it receives, type-erased so any bus can run
//! it.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use super::HandlerContext;
use crate::handler::{DeadLetter, EventSet, HandlerError};
use crate::message::{Command, CommandPayload, DEFAULT_MAX_RETRIES, Message, PayloadError};

pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<Value, RunError>> + Send>>;

/// Why a handler run did not succeed, as a bus sees it: the handler's own answer, or a
/// message it could not be given (undecodable, or of the wrong kind), which is
/// dead-lettered at once and never retried.
#[derive(Debug)]
pub(crate) enum RunError {
    /// What the handler returned.
    Handler(HandlerError),
    /// The message cannot be decoded into what the handler takes.
    Undecodable(String),
}

/// What a bus hands a subscription: a message, or (to a dead-letter binding) a letter.
#[derive(Clone, Copy)]
pub(crate) enum Input<'a> {
    Message(&'a Message),
    DeadLetter(&'a DeadLetter),
}

impl<'a> Input<'a> {
    /// The message the input is about (a dead letter's original message).
    pub(crate) fn message(self) -> &'a Message {
        match self {
            Input::Message(m) => m,
            Input::DeadLetter(d) => &d.message,
        }
    }
}

pub(crate) trait ErasedHandler: Send + Sync + 'static {
    fn call(&self, input: Input<'_>, ctx: HandlerContext) -> HandlerFuture;
}

struct CommandHandlerFn<P, F> {
    f: F,
    _payload: std::marker::PhantomData<fn() -> P>,
}

impl<P, F, Fut> ErasedHandler for CommandHandlerFn<P, F>
where
    P: CommandPayload,
    F: Fn(Command<P>, HandlerContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, HandlerError>> + Send + 'static,
{
    fn call(&self, input: Input<'_>, ctx: HandlerContext) -> HandlerFuture {
        let Input::Message(message) = input else {
            return Box::pin(std::future::ready(Err(not_a_message())));
        };
        match message.command::<P>() {
            Ok(command) => {
                let fut = (self.f)(command, ctx);
                Box::pin(async move { fut.await.map_err(RunError::Handler) })
            }
            Err(e) => Box::pin(std::future::ready(Err(undecodable(e)))),
        }
    }
}

struct EventHandlerFn<E, F> {
    f: F,
    _events: std::marker::PhantomData<fn() -> E>,
}

impl<E, F, Fut> ErasedHandler for EventHandlerFn<E, F>
where
    E: EventSet,
    F: Fn(E, HandlerContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn call(&self, input: Input<'_>, ctx: HandlerContext) -> HandlerFuture {
        let Input::Message(message) = input else {
            return Box::pin(std::future::ready(Err(not_a_message())));
        };
        match E::from_message(message) {
            Ok(events) => {
                let fut = (self.f)(events, ctx);
                Box::pin(async move { fut.await.map(|()| Value::Null).map_err(RunError::Handler) })
            }
            Err(e) => Box::pin(std::future::ready(Err(undecodable(e)))),
        }
    }
}

struct DeadLetterHandlerFn<F> {
    f: F,
}

impl<F, Fut> ErasedHandler for DeadLetterHandlerFn<F>
where
    F: Fn(DeadLetter, HandlerContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn call(&self, input: Input<'_>, ctx: HandlerContext) -> HandlerFuture {
        let Input::DeadLetter(letter) = input else {
            return Box::pin(std::future::ready(Err(RunError::Undecodable(
                "a dead-letter handler only receives dead letters".into(),
            ))));
        };
        let fut = (self.f)(letter.clone(), ctx);
        Box::pin(async move { fut.await.map(|()| Value::Null).map_err(RunError::Handler) })
    }
}

#[cold]
fn not_a_message() -> RunError {
    RunError::Undecodable("a message handler was given a dead letter".into())
}

#[cold]
fn undecodable(e: PayloadError) -> RunError {
    RunError::Undecodable(format!("undecodable message: {e}"))
}

/// What a binding handles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One command type, on its topic.
    Command {
        /// The command topic.
        topic: &'static str,
        /// The command type name.
        type_name: &'static str,
    },
    /// Events whose topic matches any of the patterns.
    Events {
        /// Exact topics or AMQP wildcard patterns.
        patterns: &'static [&'static str],
    },
    /// Every dead letter of the bus (a `{ dead_letters: true }` binding).
    DeadLetters,
}

/// A handler bound to its messages, type-erased so any bus can run it.
///
/// Generated code builds one per binding (`handlers::place_order_handler(MyHandler)`);
/// hand-written code can use [`Subscription::command`] and [`Subscription::events`].
#[derive(Clone)]
pub struct Subscription {
    pub(crate) handler: Arc<str>,
    pub(crate) target: Target,
    pub(crate) max_retries: u32,
    pub(crate) concurrency: Option<u16>,
    pub(crate) partition_by: Option<Arc<str>>,
    pub(crate) retry: RetryDelays,
    /// `once: true`: skip a message id the inbox records as handled.
    pub(crate) once: bool,
    pub(crate) call: Arc<dyn ErasedHandler>,
    /// Its instruments, bound by the bus it subscribes to (`None`: no meter provider).
    pub(crate) meters: Option<Arc<crate::metrics::HandlerMeters>>,
    /// The personal data of the events it receives (generated bindings declare it): a
    /// bus that carries them encrypted must have keys to subscribe it.
    pub(crate) personal: &'static [crate::keys::PersonalEvent],
}

/// A binding's waits before its retries: `min(delay · backoff^(n-1), max)` before retry
/// `n`; unset fields fall back to the bus (`bus.retry_delay_ms`, no backoff).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct RetryDelays {
    pub(crate) delay: Option<std::time::Duration>,
    pub(crate) backoff: Option<f64>,
    pub(crate) max: Option<std::time::Duration>,
}

#[cfg(any(test, feature = "rabbitmq"))]
impl RetryDelays {
    /// The distinct waits before each retry, in ms (empty: the bus's one delay); also
    /// what `DeadLetterAdmin::topology` names wait queues by.
    pub(crate) fn waits_ms(&self, default_ms: u32, max_retries: u32) -> Vec<u32> {
        if *self == RetryDelays::default() {
            return Vec::new();
        }
        let ms = |d: std::time::Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1);
        let first = self.delay.map_or(default_ms.max(1), ms);
        let factor = self.backoff.unwrap_or(1.0);
        if factor.is_nan() || factor <= 1.0 || factor.is_infinite() {
            return vec![first.min(self.max.map_or(u32::MAX, ms))];
        }
        let cap = self.max.map_or(u32::MAX, ms);
        let mut delays = vec![first.min(cap)];
        let mut next = f64::from(first);
        // Distinct waits up to the cap, at most one per retry.
        for _ in 1..max_retries.max(1) {
            next *= factor;
            let wait = if next >= f64::from(cap) {
                cap
            } else {
                next as u32
            };
            if Some(&wait) == delays.last() {
                break;
            }
            delays.push(wait);
            if wait == cap {
                break;
            }
        }
        delays
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("handler", &self.handler)
            .field("target", &self.target)
            .field("max_retries", &self.max_retries)
            .field("concurrency", &self.concurrency)
            .field("partition_by", &self.partition_by)
            .field("retry", &self.retry)
            .field("once", &self.once)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// Binds a command handler; its reply (JSON) is returned in the dispatch receipt.
    pub fn command<P, F, Fut>(handler: impl Into<Cow<'static, str>>, f: F) -> Self
    where
        P: CommandPayload,
        F: Fn(Command<P>, HandlerContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, HandlerError>> + Send + 'static,
    {
        Self {
            handler: Arc::from(handler.into().as_ref()),
            target: Target::Command {
                topic: P::TOPIC,
                type_name: P::TYPE_NAME,
            },
            max_retries: DEFAULT_MAX_RETRIES,
            concurrency: None,
            partition_by: None,
            retry: RetryDelays::default(),
            once: false,
            meters: None,
            personal: &[],
            call: Arc::new(CommandHandlerFn {
                f,
                _payload: std::marker::PhantomData,
            }),
        }
    }

    /// Binds an event handler to the events of `E` (`Event<D>` or a generated enum).
    pub fn events<E, F, Fut>(handler: impl Into<Cow<'static, str>>, f: F) -> Self
    where
        E: EventSet,
        F: Fn(E, HandlerContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        Self {
            handler: Arc::from(handler.into().as_ref()),
            target: Target::Events {
                patterns: E::PATTERNS,
            },
            max_retries: DEFAULT_MAX_RETRIES,
            concurrency: None,
            partition_by: None,
            retry: RetryDelays::default(),
            once: false,
            meters: None,
            personal: &[],
            call: Arc::new(EventHandlerFn {
                f,
                _events: std::marker::PhantomData,
            }),
        }
    }

    /// Binds a dead-letter handler: it receives every dead letter the bus records
    /// (in-process: those published on [`topic::DEAD_LETTER`](crate::topic::DEAD_LETTER);
    /// RabbitMQ: a queue bound to the dead-letter exchange). A dead-letter handler that
    /// fails is retried up to its limit, then logged; it never produces another dead
    /// letter.
    pub fn dead_letters<F, Fut>(handler: impl Into<Cow<'static, str>>, f: F) -> Self
    where
        F: Fn(DeadLetter, HandlerContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        Self {
            handler: Arc::from(handler.into().as_ref()),
            target: Target::DeadLetters,
            max_retries: DEFAULT_MAX_RETRIES,
            concurrency: None,
            partition_by: None,
            retry: RetryDelays::default(),
            once: false,
            meters: None,
            personal: &[],
            call: Arc::new(DeadLetterHandlerFn { f }),
        }
    }

    /// Sets how many times a failed run is retried (the binding's `max_retries`).
    #[must_use]
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Runs the handler once per message id (`once: true`): a message the bus's
    /// [`Inbox`](crate::Inbox) records as handled is skipped, and a success is recorded.
    #[must_use]
    pub fn with_once(mut self) -> Self {
        self.once = true;
        self
    }

    /// Whether the handler runs once per message id.
    pub fn once(&self) -> bool {
        self.once
    }

    /// Declares the personal data of the events this binding receives (what generated
    /// bindings do for events with `personal: true` fields): the RabbitMQ bus refuses to
    /// subscribe it without keys to decrypt them.
    #[must_use]
    pub fn with_personal_data(mut self, events: &'static [crate::keys::PersonalEvent]) -> Self {
        self.personal = events;
        self
    }

    /// The personal data of the events this binding receives, as declared.
    pub fn personal_data(&self) -> &'static [crate::keys::PersonalEvent] {
        self.personal
    }

    /// Sets how many deliveries one process handles at once for this binding (the
    /// binding's `concurrency`; default `bus.concurrency`). On RabbitMQ the prefetch is
    /// raised to at least it; in-process dispatch stays synchronous and ignores it. `1`
    /// is strict arrival order. A value of 0 counts as 1.
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: u16) -> Self {
        self.concurrency = Some(concurrency.max(1));
        self
    }

    /// Sets the partition key (the binding's `partition_by`): deliveries whose payload
    /// has the same value in this field (or param) are handled one at a time, in
    /// delivery order; different values in parallel. `correlation_id` (the default)
    /// keys by the correlation id, which is also used, with a warning, for a message
    /// that lacks the field.
    #[must_use]
    pub fn with_partition_by(mut self, field: impl Into<Cow<'static, str>>) -> Self {
        self.partition_by = Some(Arc::from(field.into().as_ref()));
        self
    }

    /// Sets the wait before a retry (the binding's `retry_delay`; default
    /// `bus.retry_delay_ms`). On RabbitMQ each distinct wait has its own wait queue;
    /// in-process retries are immediate.
    #[must_use]
    pub fn with_retry_delay(mut self, delay: std::time::Duration) -> Self {
        self.retry.delay = Some(delay);
        self
    }

    /// Multiplies the wait by `factor` after each retry (the binding's `retry_backoff`;
    /// values below 1 count as 1): the wait before retry `n` is
    /// `min(retry_delay · factor^(n-1), retry_delay_max)`.
    #[must_use]
    pub fn with_retry_backoff(mut self, factor: f64) -> Self {
        self.retry.backoff = Some(factor);
        self
    }

    /// The longest wait before a retry (the binding's `retry_delay_max`).
    #[must_use]
    pub fn with_retry_delay_max(mut self, max: std::time::Duration) -> Self {
        self.retry.max = Some(max);
        self
    }

    /// The distinct waits before retries 1, 2, … in ms, in order (the last one repeats);
    /// empty when the binding sets none (the bus's delay, `default_ms`, applies).
    #[cfg(any(test, feature = "rabbitmq"))]
    pub(crate) fn retry_delays_ms(&self, default_ms: u32) -> Vec<u32> {
        self.retry.waits_ms(default_ms, self.max_retries)
    }

    /// The binding's own concurrency, if set.
    pub fn concurrency(&self) -> Option<u16> {
        self.concurrency
    }

    /// The binding's partition key, if set.
    pub fn partition_by(&self) -> Option<&str> {
        self.partition_by.as_deref()
    }

    /// The concurrency of this binding, or the bus's default.
    #[cfg(feature = "rabbitmq")]
    pub(crate) fn concurrency_or(&self, default: u16) -> usize {
        usize::from(self.concurrency.unwrap_or(default).max(1))
    }

    /// The handler's name.
    pub fn handler(&self) -> &str {
        &self.handler
    }

    /// What it handles.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The retry limit of the binding.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// Whether this subscription receives messages on `topic`.
    pub fn accepts(&self, topic: &str) -> bool {
        match &self.target {
            Target::Command { topic: t, .. } => *t == topic,
            Target::Events { patterns } => patterns.iter().any(|p| crate::topic::matches(p, topic)),
            Target::DeadLetters => topic == crate::topic::DEAD_LETTER,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::handler::DeadLetter;

    fn binding() -> Subscription {
        Subscription::dead_letters("X", |_: DeadLetter, _| async { Ok(()) }).with_max_retries(8)
    }

    #[test]
    fn retry_delays_are_the_distinct_waits_up_to_the_cap() {
        assert!(
            binding().retry_delays_ms(1000).is_empty(),
            "the bus's delay"
        );
        let fixed = binding().with_retry_delay(Duration::from_secs(5));
        assert_eq!(fixed.retry_delays_ms(1000), vec![5000]);
        let backoff = binding()
            .with_retry_delay(Duration::from_secs(1))
            .with_retry_backoff(2.0)
            .with_retry_delay_max(Duration::from_secs(4));
        assert_eq!(backoff.retry_delays_ms(1000), vec![1000, 2000, 4000]);
        let uncapped = binding()
            .with_retry_delay(Duration::from_millis(100))
            .with_retry_backoff(3.0)
            .with_max_retries(4);
        assert_eq!(uncapped.retry_delays_ms(1000), vec![100, 300, 900, 2700]);
        let from_bus = binding().with_retry_backoff(2.0).with_max_retries(2);
        assert_eq!(from_bus.retry_delays_ms(250), vec![250, 500]);
        let odd = binding()
            .with_retry_delay(Duration::from_secs(1))
            .with_retry_backoff(f64::NAN);
        assert_eq!(odd.retry_delays_ms(1000), vec![1000]);
    }
}
