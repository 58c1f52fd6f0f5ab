//! A handler's instruments, bound to its attributes when it subscribes, so a run
//! records with atomic adds and never hashes its attributes; and a destination's, bound
//! when the bus first sends there.

use std::sync::{Arc, OnceLock, RwLock};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{BoundCounter, BoundHistogram};

use super::counts::{RunCounts, SendCount};
use super::{Instant, Instruments, keys};

/// Most message types one handler binds its duration histograms for; past that (a
/// wildcard binding fed arbitrary types from a wire) it records with attributes.
const MAX_BOUND_TYPES: usize = 64;

/// How one handler run ended, as the `orkestra.outcome` attribute says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The handler succeeded.
    Success,
    /// It failed (an error, a panic, an undecodable message).
    Failure,
    /// It refused the message (`HandlerError::Reject`).
    Rejected,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Rejected => "rejected",
        }
    }
}

/// `messaging.process.duration` of one (handler, type), one series per outcome, each
/// bound when that outcome first happens (a series that never had a value is not
/// exported).
struct ByOutcome {
    type_name: Box<str>,
    bound: [OnceLock<BoundHistogram<f64>>; 3],
}

impl ByOutcome {
    fn new(type_name: &str) -> Self {
        Self {
            type_name: type_name.into(),
            bound: Default::default(),
        }
    }

    fn get(&self, meters: &HandlerMeters, outcome: Outcome) -> &BoundHistogram<f64> {
        self.bound[outcome as usize].get_or_init(|| {
            meters.instruments.process_duration.bind(&[
                KeyValue::new(keys::SYSTEM, meters.system),
                KeyValue::new(keys::HANDLER, meters.handler.clone()),
                KeyValue::new(keys::TYPE, self.type_name.to_string()),
                KeyValue::new(keys::OUTCOME, outcome.as_str()),
            ])
        })
    }
}

/// A subscribed handler's instruments.
pub(crate) struct HandlerMeters {
    instruments: Arc<Instruments>,
    system: &'static str,
    handler: Arc<str>,
    /// Consumed and in flight.
    runs: Arc<RunCounts>,
    /// Bound at the first retry, the first skip: most handlers have neither.
    retries: OnceLock<BoundCounter<u64>>,
    skipped: OnceLock<BoundCounter<u64>>,
    /// The durations of the first type it received (a command handler's only one),
    /// read without a lock.
    first_type: OnceLock<ByOutcome>,
    /// The durations of the other types it received so far.
    by_type: RwLock<Vec<Arc<ByOutcome>>>,
    /// A command handler's topic, bound for the in-process bus's dispatch.
    pub(crate) send: Option<RouteMeters>,
    /// A command handler's type name as the payload declares it: the messages it runs
    /// name their type with this very text, so one pointer comparison finds its
    /// durations and its route without comparing the text.
    command_type: Option<&'static str>,
}

/// Whether `name` is `known`: the same text in memory (a typed message's type name is
/// its payload's constant), or else equal text.
#[inline]
fn is(known: &'static str, name: &str) -> bool {
    std::ptr::eq(known, name) || known == name
}

impl std::fmt::Debug for HandlerMeters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerMeters")
            .field("handler", &self.handler)
            .finish_non_exhaustive()
    }
}

impl HandlerMeters {
    /// Binds `handler`'s instruments on a bus of `system`; a command handler's type
    /// and, for sending, its topic are bound at once.
    pub(crate) fn bind(
        instruments: Arc<Instruments>,
        system: &'static str,
        handler: Arc<str>,
        command: Option<(&'static str, &'static str)>,
    ) -> Self {
        let i = &instruments;
        let first_type = OnceLock::new();
        if let Some((_, type_name)) = command {
            let _ = first_type.set(ByOutcome::new(type_name));
        }
        let runs = i.counts.handler(system, &handler);
        let send = command.map(|(topic, type_name)| RouteMeters::bind(i, system, topic, type_name));
        if let Some(send) = &send {
            send.sent.dispatched_by(&runs);
        }
        Self {
            first_type,
            command_type: command.map(|(_, type_name)| type_name),
            runs,
            retries: OnceLock::new(),
            skipped: OnceLock::new(),
            by_type: RwLock::new(Vec::new()),
            send,
            system,
            handler,
            instruments,
        }
    }

    /// A run starts (now, or at `started` when the caller just read the clock):
    /// counted as consumed and in flight until the returned guard is finished or
    /// dropped (a run cut off by a shutdown leaves flight too).
    ///
    /// `sent` is the type of the message when this run is also its send (the first
    /// attempt of an in-process dispatch): one count for both when it is the bound
    /// command's type.
    pub(crate) fn start(&self, started: Option<Instant>, sent: Option<&str>) -> Run<'_> {
        match (sent, &self.send) {
            (Some(type_name), Some(route))
                if self.command_type.is_some_and(|known| is(known, type_name)) =>
            {
                self.runs.start_sent();
            }
            (Some(type_name), Some(route)) => {
                self.runs.start();
                route.sent(type_name);
            }
            _ => self.runs.start(),
        }
        Run {
            meters: self,
            started: started.unwrap_or_else(super::now),
        }
    }

    /// A failed run that will be retried.
    pub(crate) fn retried(&self) {
        self.retries
            .get_or_init(|| self.instruments.retries.bind(&[self.handler_key()]))
            .add(1);
    }

    /// A message the handler's inbox had already.
    pub(crate) fn skipped(&self) {
        self.skipped
            .get_or_init(|| self.instruments.inbox_skipped.bind(&[self.handler_key()]))
            .add(1);
    }

    fn handler_key(&self) -> KeyValue {
        KeyValue::new(keys::HANDLER, self.handler.clone())
    }

    /// The durations of `type_name`: the first type's without a lock; `None` past
    /// [`MAX_BOUND_TYPES`].
    fn record(&self, type_name: &str, outcome: Outcome, seconds: f64) {
        let first = self.first_type.get_or_init(|| ByOutcome::new(type_name));
        // A command handler's first type is its command's, set when it was bound.
        if self
            .command_type
            .is_some_and(|known| std::ptr::eq(known, type_name))
            || &*first.type_name == type_name
        {
            first.get(self, outcome).record(seconds);
            return;
        }
        match self.by_type(type_name) {
            Some(bound) => bound.get(self, outcome).record(seconds),
            None => self.instruments.process_duration.record(
                seconds,
                &[
                    KeyValue::new(keys::SYSTEM, self.system),
                    KeyValue::new(keys::HANDLER, self.handler.clone()),
                    KeyValue::new(keys::TYPE, type_name.to_owned()),
                    KeyValue::new(keys::OUTCOME, outcome.as_str()),
                ],
            ),
        }
    }

    fn by_type(&self, type_name: &str) -> Option<Arc<ByOutcome>> {
        let find =
            |types: &[Arc<ByOutcome>]| types.iter().find(|t| &*t.type_name == type_name).cloned();
        if let Some(found) = find(&crate::sync::read(&self.by_type)) {
            return Some(found);
        }
        let mut types = crate::sync::write(&self.by_type);
        if let Some(found) = find(&types) {
            return Some(found);
        }
        if types.len() >= MAX_BOUND_TYPES {
            return None;
        }
        let bound = Arc::new(ByOutcome::new(type_name));
        types.push(bound.clone());
        Some(bound)
    }
}

/// One handler run in progress.
pub(crate) struct Run<'a> {
    meters: &'a HandlerMeters,
    started: Instant,
}

impl Run<'_> {
    /// The run ended with `outcome` on a message of `type_name`.
    pub(crate) fn finish(self, type_name: &str, outcome: Outcome) {
        let seconds = self.started.elapsed().as_secs_f64();
        self.meters.record(type_name, outcome, seconds);
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        self.meters.runs.finish();
    }
}

/// What sending to one topic records in-process: `messaging.client.sent.messages`,
/// bound for the topic and the type first sent there. (An in-process send runs the
/// handlers in the caller's task, so its duration is theirs,
/// `messaging.process.duration`: it is not timed twice.)
pub(crate) struct RouteMeters {
    instruments: Arc<Instruments>,
    system: &'static str,
    topic: Box<str>,
    type_name: Box<str>,
    sent: Arc<SendCount>,
}

impl std::fmt::Debug for RouteMeters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMeters")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl RouteMeters {
    /// Binds sending `type_name` to `topic`.
    pub(crate) fn bind(
        instruments: &Arc<Instruments>,
        system: &'static str,
        topic: &str,
        type_name: &str,
    ) -> Self {
        Self {
            sent: instruments.counts.route(system, topic, type_name),
            instruments: instruments.clone(),
            system,
            topic: topic.into(),
            type_name: type_name.into(),
        }
    }

    /// A message of `type_name` was sent.
    pub(crate) fn sent(&self, type_name: &str) {
        if type_name == &*self.type_name {
            self.sent.add();
        } else {
            // Another type on the same topic: rare, so looked up.
            self.instruments
                .counts
                .route(self.system, &self.topic, type_name)
                .add();
        }
    }
}

impl Instruments {
    /// A message of `type_name` sent to `topic` (looked up each time: a broker's round
    /// trip dwarfs the lookup).
    #[cfg(feature = "rabbitmq")]
    pub(crate) fn sent_one(&self, system: &'static str, topic: &str, type_name: &str) {
        self.counts.route(system, topic, type_name).add();
    }

    /// A send or call to `topic` that began at `started` ended now.
    pub(crate) fn operation_took(
        &self,
        system: &'static str,
        operation: &'static str,
        topic: &str,
        started: Instant,
    ) {
        self.operation_duration.record(
            started.elapsed().as_secs_f64(),
            &[
                KeyValue::new(keys::SYSTEM, system),
                KeyValue::new(keys::OPERATION, operation),
                KeyValue::new(keys::DESTINATION, topic.to_owned()),
            ],
        );
    }
}
