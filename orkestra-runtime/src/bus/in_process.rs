//! The in-process bus: handlers run in the dispatching task, typed values are handed over
//! behind an `Arc` (never serialized), retries are immediate.
//!
//! Subscriptions live in an immutable [`Registry`] snapshot that `subscribe` replaces
//! (copy on write), so dispatch takes a read lock only long enough to clone an `Arc`.
//! Each snapshot memoises which event subscriptions match a topic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;
use tracing::{Instrument, Span};

use super::lifecycle::Lifecycle;
use super::run::{Outcome, Runner, log_dead_letter, log_retry, log_subscribed};
use super::{Bus, BusError, DEAD_LETTER_BUFFER, DeadLetters};
use super::{Input, Subscription, Target};
use crate::handler::DeadLetter;
use crate::message::{CommandEnvelope, EventEnvelope};
use crate::message::{Message, MessageKind};
use crate::metrics::{DeadLetterKind, Instruments, RouteMeters};
use crate::sync::{lock, read, write};
use crate::trace;

/// `messaging.system` of the in-process bus's spans.
pub(crate) const SYSTEM: &str = "orkestra";
/// The `orkestra` field of the in-process bus's log lines.
const COMPONENT: &str = "pubsub";

/// Most distinct topics whose routes one registry snapshot memoises.
const ROUTE_CACHE_LIMIT: usize = 4096;

type Route = Arc<[Arc<Subscription>]>;

/// A topic's subscribers, and what sending there records (with a meter provider).
type Routed = (Route, Option<Arc<RouteMeters>>);

/// Topics are short, trusted keys (names from the schema, never attacker-chosen in
/// bulk), looked up on every dispatch: FNV-1a hashes them in a third of SipHash's time.
type TopicHash = std::hash::BuildHasherDefault<Fnv>;

/// FNV-1a as a `Hasher`.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        let mut hash = self.0;
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = hash;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Default)]
struct Registry {
    commands: HashMap<&'static str, Arc<Subscription>, TopicHash>,
    events: Vec<Arc<Subscription>>,
    dead_letters: Vec<Arc<Subscription>>,
    routes: RwLock<HashMap<String, Routed, TopicHash>>,
}

impl Registry {
    fn contains_handler(&self, name: &str) -> bool {
        self.commands
            .values()
            .chain(&self.events)
            .chain(&self.dead_letters)
            .any(|s| &*s.handler == name)
    }

    /// The subscribers of `topic` and, with `metrics`, its send instruments bound for
    /// `type_name` (the type first published there).
    fn route(&self, topic: &str, type_name: &str, metrics: Option<&Arc<Instruments>>) -> Routed {
        if let Some(routed) = read(&self.routes).get(topic) {
            return routed.clone();
        }
        let route: Route = self
            .events
            .iter()
            .filter(|s| s.accepts(topic))
            .cloned()
            .collect();
        let meters = metrics.map(|i| Arc::new(RouteMeters::bind(i, SYSTEM, topic, type_name)));
        let routed = (route, meters);
        let mut routes = write(&self.routes);
        if routes.len() < ROUTE_CACHE_LIMIT {
            routes.insert(topic.to_owned(), routed.clone());
        }
        routed
    }
}

/// How an event handler's runs for one event ended.
enum EventRun {
    Succeeded,
    /// The handler refused the event: its answer, not a dead letter.
    Rejected,
    DeadLettered,
}

pub(crate) struct InProcess {
    registry: RwLock<Arc<Registry>>,
    dead_letters: Mutex<Vec<mpsc::Sender<DeadLetter>>>,
    /// Shutdown, and the dispatches and publishes in flight.
    pub(crate) lifecycle: Lifecycle,
    /// The instruments of the meter provider installed when the bus was built.
    metrics: Option<Arc<Instruments>>,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let registry = self.snapshot();
        f.debug_struct("InProcess")
            .field("command_handlers", &registry.commands.len())
            .field("event_handlers", &registry.events.len())
            .finish_non_exhaustive()
    }
}

impl InProcess {
    pub(crate) fn new() -> Self {
        Self {
            registry: RwLock::new(Arc::new(Registry::default())),
            dead_letters: Mutex::new(Vec::new()),
            lifecycle: Lifecycle::default(),
            metrics: crate::metrics::current(),
        }
    }

    fn snapshot(&self) -> Arc<Registry> {
        read(&self.registry).clone()
    }

    pub(crate) fn subscribe(&self, subscription: Subscription) -> Result<(), BusError> {
        let mut current = write(&self.registry);
        if current.contains_handler(&subscription.handler) {
            return Err(BusError::DuplicateHandler {
                handler: subscription.handler.to_string(),
            });
        }
        let mut next = Registry {
            commands: current.commands.clone(),
            events: current.events.clone(),
            dead_letters: current.dead_letters.clone(),
            routes: RwLock::default(),
        };
        let subscription = Arc::new(subscription);
        match &subscription.target {
            Target::Command { topic, .. } => {
                if let Some(existing) = next.commands.get(topic) {
                    return Err(BusError::CommandAlreadyHandled {
                        topic: (*topic).to_owned(),
                        existing: existing.handler.to_string(),
                        handler: subscription.handler.to_string(),
                    });
                }
                log_subscribed(&subscription, None);
                next.commands.insert(topic, subscription);
            }
            Target::Events { .. } => {
                log_subscribed(&subscription, None);
                next.events.push(subscription);
            }
            Target::DeadLetters => {
                log_subscribed(&subscription, None);
                next.dead_letters.push(subscription);
            }
        }
        *current = Arc::new(next);
        Ok(())
    }

    pub(crate) async fn dispatch(
        &self,
        bus: &Bus,
        mut envelope: CommandEnvelope,
    ) -> Result<CommandEnvelope, BusError> {
        super::expect_kind(envelope.message(), MessageKind::Command)?;
        let Some(subscription) = self.snapshot().commands.get(envelope.topic()).cloned() else {
            return Err(BusError::NoHandler {
                topic: envelope.topic().to_owned(),
            });
        };
        if envelope.max_retries_override().is_none() {
            envelope = envelope.with_max_retries(subscription.max_retries);
        }
        let send = subscription.meters.as_ref().and_then(|m| m.send.as_ref());
        let started = send.map(|_| crate::metrics::now());
        let flow = trace::begin(envelope.message_mut(), SYSTEM, trace::dispatch_span);
        // The handler's first run starts when the dispatch does: one clock read less;
        // and it counts the send with its own consumed (one atomic add for both).
        let runner = Runner {
            started,
            sends: send.is_some(),
            ..Self::runner(bus, &flow)
        };
        let message = envelope.message().clone();
        let dispatch = async {
            loop {
                envelope.try_mark_dispatched()?;
                let attempt = envelope.attempts();
                let max_retries = envelope.effective_max_retries();
                let outcome = runner
                    .attempt(
                        &subscription,
                        Input::Message(&message),
                        attempt,
                        max_retries,
                    )
                    .await;
                let transition = match outcome {
                    Outcome::Succeeded(reply) => envelope.try_mark_succeeded(reply),
                    // A refusal is the handler's answer: no retry, no dead letter.
                    Outcome::Rejected(reason) => {
                        trace::record_error(&Span::current(), "rejected", &reason);
                        envelope.try_mark_rejected(reason)
                    }
                    Outcome::Undecodable(reason) => {
                        trace::record_error(&Span::current(), "undecodable", &reason);
                        let kind = DeadLetterKind::of_undecodable(&reason);
                        self.dead_letter(&runner, &subscription, &message, &reason, attempt, kind)
                            .await;
                        envelope.try_mark_rejected(reason)
                    }
                    Outcome::Failed(reason) => {
                        let result = envelope.try_mark_failed(reason.clone());
                        if result.is_ok() && envelope.retryable() {
                            log_retry(&subscription, attempt, max_retries, &reason, COMPONENT);
                            continue;
                        }
                        trace::record_error(&Span::current(), "failed", &reason);
                        let kind = DeadLetterKind::Exhausted;
                        self.dead_letter(&runner, &subscription, &message, &reason, attempt, kind)
                            .await;
                        result
                    }
                };
                transition?;
                return Ok::<(), BusError>(());
            }
        };
        dispatch.instrument(flow.span).await?;
        Ok(envelope)
    }

    pub(crate) async fn publish(
        &self,
        bus: &Bus,
        envelope: EventEnvelope,
    ) -> Result<EventEnvelope, BusError> {
        super::expect_kind(envelope.message(), MessageKind::Event)?;
        let (route, meters) = self.snapshot().route(
            envelope.topic(),
            envelope.message().type_name(),
            self.metrics.as_ref(),
        );
        let started = meters
            .as_ref()
            .filter(|_| !route.is_empty())
            .map(|_| crate::metrics::now());
        let mut envelope = envelope.mark_published();
        let flow = trace::begin(envelope.message_mut(), SYSTEM, trace::publish_span);
        // The first handler's first run starts when the publish does: one clock read less.
        let first = Runner {
            started,
            ..Self::runner(bus, &flow)
        };
        let span = flow.span;
        let message = envelope.message().clone();
        for (i, subscription) in route.iter().enumerate() {
            envelope.register(subscription.handler.to_string());
            let runner = match i {
                0 => first,
                _ => Runner {
                    started: None,
                    ..first
                },
            };
            let outcome = self
                .run_with_retries(&runner, subscription, &message)
                .instrument(span.clone())
                .await;
            let recorded = match outcome {
                EventRun::Succeeded => envelope.try_mark_handler_succeeded(&subscription.handler),
                EventRun::Rejected => envelope.try_mark_handler_failed(&subscription.handler),
                EventRun::DeadLettered => {
                    let reason =
                        format!("handler {} dead-lettered the event", subscription.handler);
                    trace::record_error(&span, "dead_letter", &reason);
                    envelope.try_mark_handler_failed(&subscription.handler)
                }
            };
            if let Err(error) = recorded {
                // Only possible when an envelope is published again after a handler had
                // succeeded on it: the earlier success stands.
                tracing::warn!(%error, "handler outcome not recorded");
            }
        }
        if let Some(meters) = meters {
            meters.sent(envelope.message().type_name());
        }
        Ok(envelope)
    }

    /// Runs an event handler until it succeeds, rejects or runs out of retries (then
    /// dead-letters the event).
    async fn run_with_retries(
        &self,
        runner: &Runner<'_>,
        subscription: &Subscription,
        message: &Message,
    ) -> EventRun {
        let max_retries = subscription.max_retries;
        let mut attempt = 1;
        loop {
            match runner
                .attempt(subscription, Input::Message(message), attempt, max_retries)
                .await
            {
                Outcome::Succeeded(_) => return EventRun::Succeeded,
                Outcome::Rejected(_) => return EventRun::Rejected,
                Outcome::Failed(reason) if attempt <= max_retries => {
                    log_retry(subscription, attempt, max_retries, &reason, COMPONENT);
                    attempt += 1;
                }
                Outcome::Failed(reason) => {
                    let kind = DeadLetterKind::Exhausted;
                    self.dead_letter(runner, subscription, message, &reason, attempt, kind)
                        .await;
                    return EventRun::DeadLettered;
                }
                Outcome::Undecodable(reason) => {
                    let kind = DeadLetterKind::of_undecodable(&reason);
                    self.dead_letter(runner, subscription, message, &reason, attempt, kind)
                        .await;
                    return EventRun::DeadLettered;
                }
            }
        }
    }

    pub(crate) fn dead_letters(&self) -> DeadLetters {
        let (tx, rx) = mpsc::channel(DEAD_LETTER_BUFFER);
        lock(&self.dead_letters).push(tx);
        DeadLetters::new(rx)
    }

    /// How this bus runs the handlers of `flow`.
    fn runner<'a>(bus: &'a Bus, flow: &trace::Flow) -> Runner<'a> {
        Runner {
            bus,
            system: SYSTEM,
            component: COMPONENT,
            traced: flow.traced,
            foreign_origin: flow.foreign_origin,
            started: None,
            sends: false,
        }
    }

    async fn dead_letter(
        &self,
        runner: &Runner<'_>,
        subscription: &Subscription,
        message: &Message,
        reason: &str,
        attempts: u32,
        kind: DeadLetterKind,
    ) {
        let handler = &subscription.handler;
        self.record_dead_letter(runner, message, handler, reason, attempts, kind)
            .await;
    }

    /// Dead-letters a message on behalf of a runner outside the bus (a process manager
    /// fed from the store): logged, sent to every [`DeadLetters`] receiver and handler.
    pub(crate) async fn dead_letter_from(
        &self,
        bus: &Bus,
        message: &Message,
        handler: &str,
        reason: &str,
        attempts: u32,
    ) {
        let runner = Runner {
            bus,
            system: SYSTEM,
            component: COMPONENT,
            traced: false,
            foreign_origin: false,
            started: None,
            sends: false,
        };
        let kind = DeadLetterKind::classify(reason);
        self.record_dead_letter(&runner, message, handler, reason, attempts, kind)
            .await;
    }

    async fn record_dead_letter(
        &self,
        runner: &Runner<'_>,
        message: &Message,
        handler: &str,
        reason: &str,
        attempts: u32,
        kind: DeadLetterKind,
    ) {
        log_dead_letter(handler, message.topic(), reason, attempts, COMPONENT, kind);
        let letter = DeadLetter {
            message: message.clone(),
            topic: message.topic().to_owned(),
            handler: handler.to_owned(),
            reason: reason.to_owned(),
            attempts,
            dead_at: chrono::Utc::now(),
        };
        lock(&self.dead_letters).retain(|tx| match tx.try_send(letter.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    message_id = letter.message_id(),
                    buffer = DEAD_LETTER_BUFFER,
                    orkestra = COMPONENT,
                    "Dead letter not queued for a receiver that is not reading"
                );
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        // Dead-letter handlers get no spans of their own: they are not part of the flow.
        let runner = Runner {
            traced: false,
            started: None,
            sends: false,
            ..*runner
        };
        for handler in self.snapshot().dead_letters.iter() {
            runner.dead_letter_handler(handler, &letter).await;
        }
    }
}
