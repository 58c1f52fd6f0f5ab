//! The append-at-scale workload shared by `tests/postgres_scale.rs` and
//! `benches/scale.rs`: one writer appends batches of [`BATCH`] events over [`STREAMS`]
//! streams, timed per step, so a rate that falls with the table's size shows as a line.

use std::time::{Duration, Instant};

use orkestra_runtime::{Event, EventData, ExpectedVersion, Metadata, Store};

use super::payloads::OrderPlaced;

/// Events per append.
pub const BATCH: usize = 100;
/// Streams the batches go to, round robin.
pub const STREAMS: usize = 5_000;
/// Events per measured step.
pub const STEP: usize = 50_000;

/// The events of batch `n`.
pub fn batch(n: usize) -> Vec<EventData> {
    (0..BATCH)
        .map(|i| {
            let ev = Event::new(
                OrderPlaced {
                    order_id: format!("order-{n}-{i}"),
                    quantity: i as i64,
                },
                Metadata::new().with_source("scale"),
            )
            .expect("an event");
            EventData::from_event(&ev).expect("encodable")
        })
        .collect()
}

/// The stream batch `n` goes to.
pub fn stream_of(n: usize) -> String {
    format!("scale-{}", n % STREAMS)
}

/// Appends batches `first..first + count` and returns the time each `append` took (the
/// events are built outside the clock).
pub async fn append_batches(store: &Store, first: usize, count: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(count);
    for n in first..first + count {
        let events = batch(n);
        let stream = stream_of(n);
        let started = Instant::now();
        store
            .append(&stream, ExpectedVersion::Any, events)
            .await
            .expect("append");
        times.push(started.elapsed());
    }
    times
}

/// Events per second over all of `times` (one append of [`BATCH`] events each).
pub fn rate(times: &[Duration]) -> f64 {
    let spent: Duration = times.iter().sum();
    (times.len() * BATCH) as f64 / spent.as_secs_f64().max(1e-9)
}

/// Events per second at the median append: what the store sustains, with bursts of
/// load from other work on a shared machine left out.
pub fn median_rate(times: &[Duration]) -> f64 {
    let mut sorted = times.to_vec();
    sorted.sort();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    BATCH as f64 / median.as_secs_f64().max(1e-9)
}

/// One line of rates, `50k: 23,000/s, 100k: ...`.
pub fn line(rates: &[f64]) -> String {
    rates
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{}k: {:.0}/s", (i + 1) * STEP / 1000, r))
        .collect::<Vec<_>>()
        .join(", ")
}
