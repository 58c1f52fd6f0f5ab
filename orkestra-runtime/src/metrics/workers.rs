//! The workers' gauges (lag, lag age, partitions owned, pending timers): read from the
//! running workers at each collection, through a registry of weak references, so a
//! stopped worker simply stops being reported.

use std::sync::{Mutex, Weak};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, ObservableGauge};

use super::{keys, names};

/// A running worker that reports its gauges.
pub(crate) trait Observed: Send + Sync {
    /// Adds what this worker reports now.
    fn observe(&self, into: &mut Observations);
}

/// What the running workers report at one collection.
#[derive(Debug, Default)]
pub(crate) struct Observations {
    /// Per held partition: worker, partition, events not handled yet, the oldest
    /// one's age in seconds (0 when none is waiting).
    pub(crate) lag: Vec<(String, u32, u64, f64)>,
    /// Per worker: partitions this copy holds.
    pub(crate) owned: Vec<(String, u64)>,
    /// Per process manager: timers pending.
    pub(crate) timers: Vec<(String, u64)>,
    /// What failed, one sentence each (`/readyz` names them).
    pub(crate) failed: Vec<String>,
}

static WORKERS: Mutex<Vec<Weak<dyn Observed>>> = Mutex::new(Vec::new());

/// Reports `worker`'s gauges for as long as it lives.
pub(crate) fn register(worker: Weak<dyn Observed>) {
    let mut workers = crate::sync::lock(&WORKERS);
    workers.retain(|w| w.strong_count() > 0);
    workers.push(worker);
}

fn collect() -> Observations {
    let live: Vec<_> = crate::sync::lock(&WORKERS)
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    let mut out = Observations::default();
    for worker in live {
        worker.observe(&mut out);
    }
    out
}

fn worker(name: &str) -> KeyValue {
    KeyValue::new(keys::WORKER, name.to_owned())
}

fn partition(p: u32) -> KeyValue {
    KeyValue::new(keys::PARTITION, p.to_string())
}

/// `orkestra.runner.lag`, `orkestra.runner.owned`, `orkestra.process.timers.pending`.
pub(super) fn gauges(meter: &Meter) -> [ObservableGauge<u64>; 3] {
    [
        meter
            .u64_observable_gauge(names::LAG)
            .with_unit("{event}")
            .with_description("Events a worker partition has not handled yet.")
            .with_callback(|gauge| {
                for (w, p, lag, _) in collect().lag {
                    gauge.observe(lag, &[worker(&w), partition(p)]);
                }
            })
            .build(),
        meter
            .u64_observable_gauge(names::OWNED)
            .with_unit("{partition}")
            .with_description("Partitions of a worker this copy holds.")
            .with_callback(|gauge| {
                for (w, owned) in collect().owned {
                    gauge.observe(owned, &[worker(&w)]);
                }
            })
            .build(),
        meter
            .u64_observable_gauge(names::TIMERS_PENDING)
            .with_unit("{timer}")
            .with_description("Timers a process manager has pending.")
            .with_callback(|gauge| {
                for (pm, pending) in collect().timers {
                    gauge.observe(pending, &[KeyValue::new(keys::PROCESS_MANAGER, pm.clone())]);
                }
            })
            .build(),
    ]
}

/// `orkestra.runner.lag.age`.
pub(super) fn age_gauge(meter: &Meter) -> ObservableGauge<f64> {
    meter
        .f64_observable_gauge(names::LAG_AGE)
        .with_unit("s")
        .with_description("Age of the oldest event a worker partition has not handled yet.")
        .with_callback(|gauge| {
            for (w, p, _, age) in collect().lag {
                gauge.observe(age, &[worker(&w), partition(p)]);
            }
        })
        .build()
}
