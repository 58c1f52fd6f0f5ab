//! The per-message counters (`messaging.client.consumed.messages`,
//! `orkestra.bus.in_flight`, `messaging.client.sent.messages`) kept in plain atomics and
//! reported through observable instruments at each collection.
//!
//! A handler run is on the hot path of every dispatch: three bound SDK counter adds
//! per run (consumed, in flight up and down) cost more than the no-op handler's own
//! dispatch work does on the in-process bus, because each goes through two dynamic
//! calls and the SDK's tracker. Here a run adds to two atomics of its own (started,
//! finished): consumed is `started`, in flight is `started - finished`. The cells are
//! shared by every handler bound under one attribute set (two buses of one process
//! with a handler of the same name add to the same cells, as bound counters did), and
//! they outlive their handlers, so a bus rebuilt in the same process carries its
//! counts on instead of resetting them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, ObservableCounter, ObservableUpDownCounter};

use super::{keys, names};

/// A handler's run counts.
#[derive(Debug, Default)]
pub(crate) struct RunCounts {
    started: AtomicU64,
    /// Runs that were also their message's send: the first attempt of an in-process
    /// dispatch, which is one atomic add for both (the route they were sent to reads
    /// them as its own, see [`SendCount::dispatched_by`]).
    sent: AtomicU64,
    finished: AtomicU64,
}

impl RunCounts {
    /// A run starts: consumed and in flight.
    #[inline]
    pub(crate) fn start(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// A run that is also its message's send starts: consumed, in flight and sent.
    #[inline]
    pub(crate) fn start_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// A run left flight (finished, failed or was cut off).
    #[inline]
    pub(crate) fn finish(&self) {
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    /// (consumed, in flight) now. `finished` is read first: a run that starts and
    /// finishes between the two reads then counts as in flight for this one collection
    /// rather than making the difference negative.
    fn read(&self) -> (u64, i64) {
        let finished = self.finished.load(Ordering::Relaxed);
        let started = self.started.load(Ordering::Relaxed) + self.sent.load(Ordering::Relaxed);
        let in_flight = i64::try_from(started.saturating_sub(finished)).unwrap_or(i64::MAX);
        (started, in_flight)
    }
}

/// A destination's send count.
#[derive(Debug, Default)]
pub(crate) struct SendCount {
    count: AtomicU64,
    /// The in-process command handlers of this destination, whose first attempts count
    /// as its sends ([`RunCounts::start_sent`]); each once.
    dispatched_by: Mutex<Vec<Arc<RunCounts>>>,
}

impl SendCount {
    /// One message sent.
    #[inline]
    pub(crate) fn add(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `runs`' sends ([`RunCounts::start_sent`]) as this destination's.
    pub(crate) fn dispatched_by(&self, runs: &Arc<RunCounts>) {
        let mut linked = crate::sync::lock(&self.dispatched_by);
        if !linked.iter().any(|r| Arc::ptr_eq(r, runs)) {
            linked.push(runs.clone());
        }
    }

    /// Sent so far.
    fn read(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
            + crate::sync::lock(&self.dispatched_by)
                .iter()
                .map(|r| r.sent.load(Ordering::Relaxed))
                .sum::<u64>()
    }
}

/// A handler's attributes: `messaging.system` and the handler name.
type HandlerKey = (&'static str, Arc<str>);
/// The send counts of one topic: per `messaging.system` and message type (one or two,
/// almost always).
type TopicCounts = Vec<(&'static str, Box<str>, Arc<SendCount>)>;

/// Every counter cell of one meter provider, by attribute set. Grows with the bounded
/// attribute values only (handler names, topics, types), never with messages.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    handlers: Mutex<HashMap<HandlerKey, Arc<RunCounts>>>,
    routes: Mutex<HashMap<Box<str>, TopicCounts>>,
}

impl Counts {
    /// The run counts of `handler` on a bus of `system`.
    pub(crate) fn handler(&self, system: &'static str, handler: &Arc<str>) -> Arc<RunCounts> {
        crate::sync::lock(&self.handlers)
            .entry((system, handler.clone()))
            .or_default()
            .clone()
    }

    /// The send count of `type_name` to `topic` on a bus of `system`.
    pub(crate) fn route(
        &self,
        system: &'static str,
        topic: &str,
        type_name: &str,
    ) -> Arc<SendCount> {
        let mut routes = crate::sync::lock(&self.routes);
        // A send to a known destination allocates nothing.
        if let Some(found) = routes.get(topic).and_then(|counts| {
            counts
                .iter()
                .find(|(s, ty, _)| *s == system && &**ty == type_name)
                .map(|(_, _, c)| c.clone())
        }) {
            return found;
        }
        let count = Arc::new(SendCount::default());
        routes
            .entry(topic.into())
            .or_default()
            .push((system, type_name.into(), count.clone()));
        count
    }

    /// The destinations' (attributes, sent) now.
    fn routes_now(&self) -> Vec<(&'static str, String, String, u64)> {
        crate::sync::lock(&self.routes)
            .iter()
            .flat_map(|(topic, counts)| {
                counts.iter().map(|(system, type_name, count)| {
                    (
                        *system,
                        topic.to_string(),
                        type_name.to_string(),
                        count.read(),
                    )
                })
            })
            .collect()
    }

    /// The handlers' (attributes, consumed, in flight) now.
    fn handlers_now(&self) -> Vec<(&'static str, Arc<str>, u64, i64)> {
        crate::sync::lock(&self.handlers)
            .iter()
            .map(|((system, handler), counts)| {
                let (consumed, in_flight) = counts.read();
                (*system, handler.clone(), consumed, in_flight)
            })
            .collect()
    }
}

/// The observable instruments that report `counts`; they live as long as the
/// provider's other instruments.
pub(crate) struct CountInstruments {
    _consumed: ObservableCounter<u64>,
    _in_flight: ObservableUpDownCounter<i64>,
    _sent: ObservableCounter<u64>,
}

impl CountInstruments {
    pub(crate) fn new(meter: &Meter, counts: &Arc<Counts>) -> Self {
        let (c1, c2, c3) = (counts.clone(), counts.clone(), counts.clone());
        Self {
            _consumed: meter
                .u64_observable_counter(names::CONSUMED)
                .with_unit("{message}")
                .with_description("Messages handed to a handler, every attempt.")
                .with_callback(move |counter| {
                    for (system, handler, consumed, _) in c1.handlers_now() {
                        counter.observe(
                            consumed,
                            &[
                                KeyValue::new(keys::SYSTEM, system),
                                KeyValue::new(keys::HANDLER, handler),
                            ],
                        );
                    }
                })
                .build(),
            _in_flight: meter
                .i64_observable_up_down_counter(names::IN_FLIGHT)
                .with_unit("{message}")
                .with_description("Handler runs in progress.")
                .with_callback(move |counter| {
                    // One series per handler: a name on two systems adds up.
                    let mut by_handler: HashMap<Arc<str>, i64> = HashMap::new();
                    for (_, handler, _, in_flight) in c2.handlers_now() {
                        *by_handler.entry(handler).or_default() += in_flight;
                    }
                    for (handler, in_flight) in by_handler {
                        counter.observe(in_flight, &[KeyValue::new(keys::HANDLER, handler)]);
                    }
                })
                .build(),
            _sent: meter
                .u64_observable_counter(names::SENT)
                .with_unit("{message}")
                .with_description("Messages sent: commands dispatched, events published.")
                .with_callback(move |counter| {
                    for (system, topic, type_name, count) in c3.routes_now() {
                        counter.observe(
                            count,
                            &[
                                KeyValue::new(keys::SYSTEM, system),
                                KeyValue::new(keys::DESTINATION, topic),
                                KeyValue::new(keys::TYPE, type_name),
                            ],
                        );
                    }
                })
                .build(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_is_started_minus_finished_and_never_negative() {
        let counts = RunCounts::default();
        counts.start();
        counts.start();
        counts.finish();
        assert_eq!(counts.read(), (2, 1));
        counts.finish();
        assert_eq!(counts.read(), (2, 0));
        counts.start_sent();
        assert_eq!(counts.read(), (3, 1));
    }

    #[test]
    fn a_route_counts_its_dispatching_handlers_first_attempts_once() {
        let counts = Counts::default();
        let runs = counts.handler("orkestra", &Arc::from("Place"));
        let route = counts.route("orkestra", "shop.place", "Shop.Place");
        route.dispatched_by(&runs);
        route.dispatched_by(&runs);
        runs.start_sent();
        runs.start(); // a retry: consumed, not sent
        route.add();
        assert_eq!(route.read(), 2);
        assert_eq!(runs.read(), (2, 2));
    }

    #[test]
    fn one_attribute_set_shares_its_cells() {
        let counts = Counts::default();
        let name: Arc<str> = "Noop".into();
        let a = counts.handler("orkestra", &name);
        let b = counts.handler("orkestra", &Arc::from("Noop"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &counts.handler("rabbitmq", &name)));
        let r1 = counts.route("orkestra", "shop.place", "Shop.Place");
        let r2 = counts.route("orkestra", "shop.place", "Shop.Place");
        assert!(Arc::ptr_eq(&r1, &r2));
        assert!(!Arc::ptr_eq(
            &r1,
            &counts.route("orkestra", "shop.place", "Shop.Other")
        ));
    }
}
