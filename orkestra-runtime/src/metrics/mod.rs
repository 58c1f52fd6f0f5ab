//! Orkestra's metrics: the instruments of meter `orkestra`, recorded through the
//! `opentelemetry` metrics API, so whatever exporter the application installs (OTLP,
//! the Prometheus endpoint of `Telemetry::serve`, the SDK's in-memory exporter in
//! tests) receives them.
//!
//! # When instruments find the provider
//!
//! With OpenTelemetry's global API an instrument made before a meter provider is
//! installed stays a no-op for good. Orkestra therefore makes its instruments when a
//! provider is installed through [`set_meter_provider`] (which `Telemetry::init` calls)
//! and counts installations in a generation number:
//!
//! - a bus takes the instruments when it is built, and binds each handler's when the
//!   handler subscribes (pre-bound attributes: recording is an atomic add, no hashing;
//!   the per-message counters are plain atomics read by observable instruments at each
//!   collection, see `counts`);
//! - stores, aggregates, dead letters, reconnects and workers look them up per
//!   operation (one atomic load while no provider is installed; a read lock and a
//!   reference count otherwise, next to work that takes microseconds or more).
//!
//! So install the provider first (`Telemetry::init`, then `Bus::from_config`): a bus
//! built before records nothing. Until a provider is installed nothing is recorded and
//! no clock is read. An application that installs its provider with
//! `opentelemetry::global::set_meter_provider` itself calls [`refresh`] afterwards.
//!
//! # Attributes
//!
//! Bounded values only: handler, message type, topic, outcome, `messaging.system`,
//! store, aggregate, worker, partition. Never an id. Names are kept as they are (a
//! Prometheus exporter escapes label values; see `telemetry`).

mod counts;
mod handler;
mod workers;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider, ObservableGauge};

pub(crate) use handler::{HandlerMeters, Outcome, RouteMeters};
pub(crate) use workers::{Observations, Observed, register};

/// The meter every Orkestra instrument belongs to.
pub const METER: &str = "orkestra";

/// Instrument names, as OpenTelemetry's messaging conventions name them where they
/// exist, `orkestra.*` otherwise.
pub mod names {
    /// Messages a bus sent (dispatched commands, published events).
    pub const SENT: &str = "messaging.client.sent.messages";
    /// Messages handed to a handler (every attempt).
    pub const CONSUMED: &str = "messaging.client.consumed.messages";
    /// How long one handler run took, by outcome.
    pub const PROCESS_DURATION: &str = "messaging.process.duration";
    /// How long a send (dispatch, publish) through a broker or a call took. An
    /// in-process send runs the handlers in the caller's task: its duration is theirs.
    pub const OPERATION_DURATION: &str = "messaging.client.operation.duration";
    /// Failed runs that will be retried.
    pub const RETRIES: &str = "orkestra.handler.retries";
    /// Dead letters, by reason kind.
    pub const DEAD_LETTERS: &str = "orkestra.dead_letters";
    /// Messages a `once: true` handler skipped: its inbox had them already.
    pub const INBOX_SKIPPED: &str = "orkestra.inbox.skipped";
    /// Handler runs in progress.
    pub const IN_FLIGHT: &str = "orkestra.bus.in_flight";
    /// Broker connections re-established after a loss.
    pub const RECONNECTS: &str = "orkestra.bus.reconnects";
    /// How long an append to the event store took.
    pub const APPEND_DURATION: &str = "orkestra.store.append.duration";
    /// Appends an aggregate lost to a concurrent writer (then decided again).
    pub const CONFLICTS: &str = "orkestra.aggregate.conflicts";
    /// Events a worker partition has not handled yet.
    pub const LAG: &str = "orkestra.runner.lag";
    /// Age of the oldest event a worker partition has not handled yet.
    pub const LAG_AGE: &str = "orkestra.runner.lag.age";
    /// Partitions of a worker this copy holds.
    pub const OWNED: &str = "orkestra.runner.owned";
    /// Timers a process manager has pending.
    pub const TIMERS_PENDING: &str = "orkestra.process.timers.pending";
    /// How long after its due time a process manager timer fired.
    pub const TIMER_LATENESS: &str = "orkestra.process.timer.lateness";
}

/// Attribute keys.
pub mod keys {
    /// `orkestra` (in-process) or `rabbitmq`.
    pub const SYSTEM: &str = "messaging.system";
    /// The topic a message was sent to.
    pub const DESTINATION: &str = "messaging.destination.name";
    /// `send` or `call`.
    pub const OPERATION: &str = "messaging.operation.name";
    /// The message type name.
    pub const TYPE: &str = "orkestra.message.type";
    /// The handler (binding) name.
    pub const HANDLER: &str = "orkestra.handler";
    /// `success`, `failure` or `rejected`.
    pub const OUTCOME: &str = "orkestra.outcome";
    /// `exhausted`, `rejected`, `undecodable` or `upcast`.
    pub const REASON: &str = "orkestra.dead_letter.reason";
    /// The store adapter: `memory`, `sqlite`, `postgres`, `eventstoredb`.
    pub const STORE: &str = "orkestra.store";
    /// The aggregate type.
    pub const AGGREGATE: &str = "orkestra.aggregate";
    /// The worker: a projection's name, `orkestra.relay`, `process-manager:<name>`.
    pub const WORKER: &str = "orkestra.worker";
    /// A worker's partition number.
    pub const PARTITION: &str = "orkestra.partition";
    /// The process manager's name.
    pub const PROCESS_MANAGER: &str = "orkestra.process_manager";
}

/// Histogram bucket boundaries in seconds: 0.5 ms to 30 s, roughly ×2.5 apart, which
/// covers a no-op handler on one end and a broker's retry delays on the other.
pub const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How many providers were installed through [`set_meter_provider`]/[`refresh`]; 0:
/// none, so nothing records.
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// The instruments of the provider installed last.
static CURRENT: RwLock<Option<Arc<Instruments>>> = RwLock::new(None);

/// Installs `provider` as OpenTelemetry's global meter provider and makes Orkestra
/// record into it. Buses built before keep recording nothing; see the module docs.
pub fn set_meter_provider<P>(provider: P)
where
    P: MeterProvider + Send + Sync + 'static,
{
    opentelemetry::global::set_meter_provider(provider);
    refresh();
}

/// Makes Orkestra's instruments again from OpenTelemetry's global meter provider: call
/// it after installing a provider with `opentelemetry::global::set_meter_provider`.
pub fn refresh() {
    // The clock calibrates on its first read: here, not in the first handler's run.
    let _ = now();
    let instruments = Arc::new(Instruments::new(&opentelemetry::global::meter(METER)));
    *crate::sync::write(&CURRENT) = Some(instruments);
    GENERATION.fetch_add(1, Ordering::Release);
}

/// The clock durations are measured with: the TSC through `quanta` where it is
/// invariant (a read costs a third of the OS clock's on the machines we measured), the
/// OS's monotonic clock elsewhere.
pub(crate) type Instant = quanta::Instant;

/// Now, on [`Instant`]'s clock.
#[inline]
pub(crate) fn now() -> Instant {
    quanta::Instant::now()
}

/// The instruments of the installed provider, `None` while none is (one atomic load).
#[inline]
pub(crate) fn current() -> Option<Arc<Instruments>> {
    if GENERATION.load(Ordering::Acquire) == 0 {
        return None;
    }
    crate::sync::read(&CURRENT).clone()
}

/// Every instrument of meter `orkestra`, made from one provider.
pub(crate) struct Instruments {
    /// Consumed, in flight and sent: atomics of their own, observed at collection.
    pub(crate) counts: Arc<counts::Counts>,
    _counted: counts::CountInstruments,
    pub(crate) process_duration: Histogram<f64>,
    pub(crate) operation_duration: Histogram<f64>,
    pub(crate) retries: Counter<u64>,
    pub(crate) dead_letters: Counter<u64>,
    pub(crate) inbox_skipped: Counter<u64>,
    #[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
    pub(crate) reconnects: Counter<u64>,
    pub(crate) append_duration: Histogram<f64>,
    pub(crate) conflicts: Counter<u64>,
    pub(crate) timer_lateness: Histogram<f64>,
    /// The gauges read from the running workers at each collection; kept with the
    /// rest (their callbacks live as long as the provider).
    _gauges: [ObservableGauge<u64>; 3],
    _age: ObservableGauge<f64>,
}

impl std::fmt::Debug for Instruments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Instruments")
    }
}

impl Instruments {
    fn new(meter: &Meter) -> Self {
        let histogram = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build()
        };
        let counter = |name: &'static str, unit: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_unit(unit)
                .with_description(description)
                .build()
        };
        let counts = Arc::new(counts::Counts::default());
        Self {
            _counted: counts::CountInstruments::new(meter, &counts),
            counts,
            process_duration: histogram(
                names::PROCESS_DURATION,
                "Duration of one handler run, by outcome.",
            ),
            operation_duration: histogram(
                names::OPERATION_DURATION,
                "Duration of a send through a broker (until confirmed) or a call (until answered).",
            ),
            retries: counter(
                names::RETRIES,
                "{retry}",
                "Failed handler runs that will be retried.",
            ),
            dead_letters: counter(
                names::DEAD_LETTERS,
                "{message}",
                "Dead letters recorded, by reason kind.",
            ),
            inbox_skipped: counter(
                names::INBOX_SKIPPED,
                "{message}",
                "Messages a once: true handler skipped because its inbox had them.",
            ),
            reconnects: counter(
                names::RECONNECTS,
                "{reconnect}",
                "Broker connections re-established after a loss.",
            ),
            append_duration: histogram(
                names::APPEND_DURATION,
                "Duration of an append to the event store.",
            ),
            conflicts: counter(
                names::CONFLICTS,
                "{conflict}",
                "Appends an aggregate lost to a concurrent writer.",
            ),
            timer_lateness: histogram(
                names::TIMER_LATENESS,
                "How long after its due time a process manager timer fired.",
            ),
            _gauges: workers::gauges(meter),
            _age: workers::age_gauge(meter),
        }
    }
}

/// Records how long an append took on `store`.
pub(crate) fn append_took(store: &'static str, started: Instant) {
    if let Some(i) = current() {
        i.append_duration.record(
            started.elapsed().as_secs_f64(),
            &[KeyValue::new(keys::STORE, store)],
        );
    }
}

/// Counts an append `aggregate` lost to a concurrent writer.
pub(crate) fn conflict(aggregate: &'static str) {
    if let Some(i) = current() {
        i.conflicts
            .add(1, &[KeyValue::new(keys::AGGREGATE, aggregate)]);
    }
}

/// Counts a broker connection re-established.
#[cfg(feature = "rabbitmq")]
pub(crate) fn reconnected() {
    if let Some(i) = current() {
        i.reconnects.add(1, &[]);
    }
}

/// Records how late a process manager's timer fired.
pub(crate) fn timer_fired(process_manager: &str, late: std::time::Duration) {
    if let Some(i) = current() {
        i.timer_lateness.record(
            late.as_secs_f64(),
            &[KeyValue::new(
                keys::PROCESS_MANAGER,
                process_manager.to_owned(),
            )],
        );
    }
}

/// Why a message was dead-lettered, as the `orkestra.dead_letter.reason` attribute
/// says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeadLetterKind {
    /// A handler failed past its retries.
    Exhausted,
    /// The bus refused it before any handler ran (over the size limit).
    Rejected,
    /// It could not be decoded into what the handler takes.
    Undecodable,
    /// Event data of an older version could not be upcast.
    Upcast,
}

impl DeadLetterKind {
    /// The attribute value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Exhausted => "exhausted",
            Self::Rejected => "rejected",
            Self::Undecodable => "undecodable",
            Self::Upcast => "upcast",
        }
    }

    /// The kind of a dead letter known only by its reason (a process manager's):
    /// exhausted unless the reason says it never reached the handler.
    pub(crate) fn classify(reason: &str) -> Self {
        match Self::of_undecodable(reason) {
            Self::Undecodable if !reason.contains("undecodable") => Self::Exhausted,
            kind => kind,
        }
    }

    /// The kind of a message that never reached its handler, from the reason the bus
    /// wrote (`RunError::Undecodable`, the broker consumer's size check).
    pub(crate) fn of_undecodable(reason: &str) -> Self {
        // The texts `PayloadError::Upcast` and the consumer's size check write (a test
        // pins both).
        if reason.contains("cannot upcast ") {
            Self::Upcast
        } else if reason.contains("bytes exceeds the limit of") {
            Self::Rejected
        } else {
            Self::Undecodable
        }
    }
}

/// Counts a dead letter of `handler`.
pub(crate) fn dead_letter(handler: &str, kind: DeadLetterKind) {
    if let Some(i) = current() {
        i.dead_letters.add(
            1,
            &[
                KeyValue::new(keys::HANDLER, handler.to_owned()),
                KeyValue::new(keys::REASON, kind.as_str()),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::PayloadError;

    /// The texts the kinds are read from are the ones the runtime writes.
    #[test]
    fn dead_letter_kinds_follow_the_reasons_the_buses_write() {
        let upcast = PayloadError::Upcast {
            event_type: "Shop.Placed",
            from: 1,
            to: 2,
            reason: "no step".into(),
        };
        // `RunError::Undecodable` as `bus/subscription.rs` words it.
        let reason = format!("undecodable message: {upcast}");
        assert_eq!(
            DeadLetterKind::of_undecodable(&reason),
            DeadLetterKind::Upcast
        );
        assert_eq!(DeadLetterKind::classify(&reason), DeadLetterKind::Upcast);
        // The RabbitMQ consumer's size check.
        let oversize = "message of 2000 bytes exceeds the limit of 1000";
        assert_eq!(
            DeadLetterKind::of_undecodable(oversize),
            DeadLetterKind::Rejected
        );
        assert_eq!(
            DeadLetterKind::of_undecodable("undecodable message: expected value"),
            DeadLetterKind::Undecodable
        );
        assert_eq!(
            DeadLetterKind::classify("card declined"),
            DeadLetterKind::Exhausted
        );
        assert_eq!(
            DeadLetterKind::classify("undecodable message: expected value"),
            DeadLetterKind::Undecodable
        );
    }

    #[test]
    fn nothing_is_recorded_before_a_provider_is_installed() {
        // This unit-test binary never installs one.
        assert!(current().is_none());
    }
}
