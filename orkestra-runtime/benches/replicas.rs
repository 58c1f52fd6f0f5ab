//! What leases and partitions cost and buy (`book/src/several-copies.md`; figures in BENCHMARKS.md), each
//! against a baseline in the same run:
//!
//! - `replicas_lease/*`: 20,000 stored `OrderPlaced` events on SQLite, folded in memory by
//!   a one-partition projection with leases (start, catch up, stop: register, heartbeat,
//!   acquire, a fenced checkpoint per batch of 500, release) against the same projection
//!   without them (`Projections::solo`: the checkpoint of its name) — target ≥ 0.95×
//!   throughput; and, for scale, the hand-written loop a projection amounts to (`read_all`
//!   batches of 500, the same handler, `save_checkpoint` per batch) with and without a
//!   lease held around it (register, announce, acquire, a fenced checkpoint per batch,
//!   release), what leases alone cost;
//! - `replicas_partitions/*`: a handler that awaits 2 ms per event (I/O), 1,600 events on
//!   SQLite appended while the projection is live and settled, over streams spread evenly
//!   over 8 partitions: 1 partition on one copy, 8 on one copy (target ≥ 5×), 8 over two
//!   copies (two `Projections` with their own owners in this process, 4 each: the same
//!   rate);
//! - growth (printed, no criterion): on a fresh PostgreSQL database, the median time of
//!   the lease operations (acquire, renew, a fenced checkpoint, release) after each
//!   50,000 events appended, up to 500,000: a flat line is the target.
//!
//! `cargo bench -p orkestra-runtime --bench replicas --features postgres`, then
//! `python3 benches/ratios.py`. PostgreSQL from `ORKESTRA_PG_URL` (the growth run is
//! skipped with a notice when unreachable); `ORKESTRA_REPLICAS_GROWTH_EVENTS` sets its
//! total.

#[path = "../tests/support/databases.rs"]
#[allow(dead_code)]
mod databases;
#[path = "../tests/support/payloads.rs"]
#[allow(dead_code)]
mod payloads;
#[path = "../tests/support/scale.rs"]
#[allow(dead_code)]
mod scale;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::Criterion;
use orkestra_runtime::projection::{Projection, ProjectionContext, ProjectionHandler, Projections};
use orkestra_runtime::{Event, EventData, ExpectedVersion, HandlerError, Metadata, Store};
use payloads::OrderPlaced;

const LEASED_EVENTS: usize = 20_000;
const BATCH: usize = 500;
const SLOW_EVENTS: usize = 1_600;
const PARTITIONS: u32 = 8;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn placed(order: String, quantity: i64) -> EventData {
    EventData::from_event(
        &Event::new(
            OrderPlaced {
                order_id: order,
                quantity,
            },
            Metadata::new(),
        )
        .unwrap(),
    )
    .unwrap()
}

/// A fresh SQLite store in its own directory (removed with the returned guard).
async fn sqlite(name: &str) -> (Store, TempDir) {
    let dir =
        std::env::temp_dir().join(format!("orkestra-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::sqlite(dir.join("events.db")).await.unwrap();
    (store, TempDir(dir))
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A projection of its own name, starting after `start`.
async fn fresh_name(store: &Store, start: Option<u64>) -> String {
    let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
    store.save_checkpoint(&name, start).await.unwrap();
    name
}

// ---------------------------------------------------------------------------------------
// The cost of leases: one partition against the loop without them.
// ---------------------------------------------------------------------------------------

/// The handler both sides run: quantity per order, in memory.
#[derive(Clone, Default)]
struct Fold(Arc<Mutex<HashMap<String, i64>>>);

impl Fold {
    fn apply(&self, event: &Event<OrderPlaced>) {
        *self
            .0
            .lock()
            .unwrap()
            .entry(event.data.order_id.clone())
            .or_default() += event.data.quantity;
    }
}

impl ProjectionHandler for Fold {
    type Event = Event<OrderPlaced>;

    async fn handle(
        &self,
        event: Event<OrderPlaced>,
        _ctx: ProjectionContext<'_>,
    ) -> Result<(), HandlerError> {
        self.apply(&event);
        Ok(())
    }
}

/// What a projection without leases did: batches of 500 from the checkpoint, the
/// handler, the checkpoint saved after each batch.
async fn without_leases(store: &Store, fold: &Fold, name: &str, start: Option<u64>, last: u64) {
    let mut next = start.map_or(0, |s| s + 1);
    while next <= last {
        let batch = store.read_all(next, BATCH).await.unwrap();
        for recorded in &batch {
            if let Ok(event) = recorded.decode::<OrderPlaced>() {
                fold.apply(&event);
            }
        }
        let end = batch.last().unwrap().position();
        store.save_checkpoint(name, Some(end)).await.unwrap();
        next = end + 1;
    }
}

/// The same loop holding the partition through a lease, as the runtime does: register,
/// announce, acquire, a fenced checkpoint per batch, release, withdraw. What leases
/// themselves cost, apart from the rest of a projection's run.
async fn with_leases_only(store: &Store, fold: &Fold, name: &str, last: u64) {
    let leases = store.leases().await.unwrap();
    let ttl = Duration::from_secs(10);
    leases.register(name, 1).await.unwrap();
    leases.heartbeat(name, "bench", ttl).await.unwrap();
    let lease = leases
        .acquire(name, 0, "bench", ttl)
        .await
        .unwrap()
        .unwrap();
    let mut next = leases
        .checkpoint(name, 0)
        .await
        .unwrap()
        .map_or(0, |c| c + 1);
    while next <= last {
        let batch = store.read_all(next, BATCH).await.unwrap();
        for recorded in &batch {
            if let Ok(event) = recorded.decode::<OrderPlaced>() {
                fold.apply(&event);
            }
        }
        let end = batch.last().unwrap().position();
        leases.save_checkpoint(&lease, Some(end)).await.unwrap();
        next = end + 1;
    }
    leases.release(&lease).await.unwrap();
    leases.leave(name, "bench").await.unwrap();
}

/// `iters` runs of the one-partition projection (start, catch up to `last`, stop), with
/// leases or `solo`: the time they took.
async fn projection_runs(store: &Store, last: u64, iters: u64, solo: bool) -> Duration {
    let mut spent = Duration::ZERO;
    for _ in 0..iters {
        let name = fresh_name(store, None).await;
        let started = Instant::now();
        let projections = Projections::new(store.clone());
        let projections = if solo {
            projections.solo()
        } else {
            projections
        };
        let running = projections
            .add(Projection::new(name.clone(), Fold::default()).with_batch(BATCH))
            .start()
            .await
            .unwrap();
        running.wait_for(&name, last).await.unwrap();
        running.stop().await.unwrap();
        spent += started.elapsed();
    }
    spent
}

fn lease_overhead(c: &mut Criterion) {
    let rt = runtime();
    let (store, _dir) = rt.block_on(sqlite("replicas-lease"));
    let last = rt.block_on(async {
        let mut last = 0;
        for chunk in 0..LEASED_EVENTS / 100 {
            let events = (0..100)
                .map(|i| placed(format!("order-{}", (chunk * 100 + i) % 100), 1))
                .collect();
            last = store
                .append(
                    &format!("stream-{chunk}"),
                    ExpectedVersion::NoStream,
                    events,
                )
                .await
                .unwrap()
                .last_position;
        }
        last
    });
    let mut group = c.benchmark_group("replicas_lease");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("orkestra", |b| {
        b.iter_custom(|iters| rt.block_on(projection_runs(&store, last, iters, false)))
    });
    // The same projection, the same run, without leases: `Projections::solo`.
    group.bench_function("orkestra_solo", |b| {
        b.iter_custom(|iters| rt.block_on(projection_runs(&store, last, iters, true)))
    });
    group.bench_function("raw_no_lease", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let name = fresh_name(&store, None).await;
                    let started = Instant::now();
                    without_leases(&store, &Fold::default(), &name, None, last).await;
                    spent += started.elapsed();
                }
                spent
            })
        })
    });
    group.bench_function("raw_with_leases", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let name = fresh_name(&store, None).await;
                    let started = Instant::now();
                    with_leases_only(&store, &Fold::default(), &name, last).await;
                    spent += started.elapsed();
                }
                spent
            })
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------
// What partitions buy: a slow handler over 1 and 8 partitions, one and two copies.
// ---------------------------------------------------------------------------------------

/// Awaits 2 ms per event, as a handler waiting on I/O.
#[derive(Clone)]
struct Slow;

impl ProjectionHandler for Slow {
    type Event = Event<OrderPlaced>;

    async fn handle(
        &self,
        _event: Event<OrderPlaced>,
        _ctx: ProjectionContext<'_>,
    ) -> Result<(), HandlerError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(())
    }
}

/// The runtime's partition of a stream (FNV-1a of its name).
fn partition_of(stream: &str, partitions: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in stream.as_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % partitions
}

/// 25 streams of each of the 8 partitions, so every partition has the same work.
fn even_streams(prefix: &str) -> Vec<String> {
    let mut by_partition: Vec<Vec<String>> = vec![Vec::new(); PARTITIONS as usize];
    let mut k = 0;
    while by_partition.iter().any(|p| p.len() < 25) {
        let stream = format!("{prefix}-{k}");
        let p = &mut by_partition[partition_of(&stream, PARTITIONS) as usize];
        if p.len() < 25 {
            p.push(stream);
        }
        k += 1;
    }
    by_partition.concat()
}

/// Polls the worker's leases until `done` holds of them (every 2 ms).
async fn until_leases(
    store: &Store,
    name: &str,
    done: impl Fn(&[orkestra_runtime::store::LeaseRecord]) -> bool,
) {
    let leases = store.leases().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let records: Vec<_> = leases
            .list()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.worker == name)
            .collect();
        if done(&records) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: never settled: {records:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// One run: `copies` copies of a projection of `partitions` partitions, started and
/// settled (each copy holding its share); then 1,600 events are appended (8 per append,
/// one stream each) and the time until every partition's checkpoint passes the last one
/// is returned.
async fn slow_run(store: &Store, partitions: u32, copies: usize) -> Duration {
    let name = fresh_name(store, store.head().await.unwrap()).await;
    let mut running = Vec::new();
    for copy in 0..copies {
        running.push(
            Projections::new(store.clone())
                .with_owner(format!("copy-{copy}"))
                .add(
                    Projection::new(name.clone(), Slow)
                        .with_partitions(partitions)
                        .with_batch(BATCH),
                )
                .start()
                .await
                .unwrap(),
        );
    }
    let share = partitions as usize / copies;
    until_leases(store, &name, |records| {
        records.len() == partitions as usize
            && (0..copies).all(|c| {
                let owner = format!("copy-{c}");
                records
                    .iter()
                    .filter(|r| r.owner.as_deref() == Some(&owner))
                    .count()
                    == share
            })
    })
    .await;
    let streams = even_streams(&uuid::Uuid::new_v4().simple().to_string());
    let per_append = SLOW_EVENTS / streams.len();
    let started = Instant::now();
    let mut last = 0;
    for stream in &streams {
        let events = (0..per_append)
            .map(|i| placed(format!("{stream}-{i}"), 1))
            .collect();
        last = store
            .append(stream, ExpectedVersion::NoStream, events)
            .await
            .unwrap()
            .last_position;
    }
    until_leases(store, &name, |records| {
        records.len() == partitions as usize && records.iter().all(|r| r.checkpoint >= Some(last))
    })
    .await;
    let took = started.elapsed();
    for r in running {
        r.stop().await.unwrap();
    }
    took
}

fn partitions(c: &mut Criterion) {
    let rt = runtime();
    let (store, _dir) = rt.block_on(sqlite("replicas-partitions"));
    let mut group = c.benchmark_group("replicas_partitions");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for (id, partitions, copies) in [
        ("p1", 1, 1),
        ("p8_one_copy", PARTITIONS, 1),
        ("p8_two_copies", PARTITIONS, 2),
    ] {
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        spent += slow_run(&store, partitions, copies).await;
                    }
                    spent
                })
            })
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------
// Growth: lease operations as the store fills.
// ---------------------------------------------------------------------------------------

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

/// The median of each lease operation over 200 rounds (acquire, renew, a fenced
/// checkpoint, release of one of 8 partitions in turn), in microseconds.
async fn lease_ops(store: &Store, worker: &str) -> [f64; 4] {
    let leases = store.leases().await.unwrap();
    let lease = Duration::from_secs(10);
    let mut times: [Vec<Duration>; 4] = Default::default();
    for round in 0..200u32 {
        let partition = round % 8;
        let t = Instant::now();
        let held = leases
            .acquire(worker, partition, "bench", lease)
            .await
            .unwrap()
            .unwrap();
        times[0].push(t.elapsed());
        let t = Instant::now();
        let held = leases.renew(&held, lease).await.unwrap().unwrap();
        times[1].push(t.elapsed());
        let t = Instant::now();
        leases
            .save_checkpoint(&held, Some(u64::from(round)))
            .await
            .unwrap();
        times[2].push(t.elapsed());
        let t = Instant::now();
        assert!(leases.release(&held).await.unwrap());
        times[3].push(t.elapsed());
    }
    times.map(|mut t| median(&mut t).as_secs_f64() * 1e6)
}

fn growth(total: usize) {
    let rt = runtime();
    rt.block_on(async {
        let database = match databases::FreshDatabase::create("replicas_growth").await {
            Ok(database) => database,
            Err(e) => {
                println!("lease growth: skipped, PostgreSQL unreachable ({e})");
                return;
            }
        };
        let store = Store::postgres(&database.url()).await.unwrap();
        let worker = "bench-growth";
        store
            .leases()
            .await
            .unwrap()
            .register(worker, 8)
            .await
            .unwrap();
        let per_step = scale::STEP / scale::BATCH;
        let mut rows = Vec::new();
        let before = lease_ops(&store, worker).await;
        rows.push((0, before));
        for step in 0..total / scale::STEP {
            scale::append_batches(&store, step * per_step, per_step).await;
            rows.push(((step + 1) * scale::STEP, lease_ops(&store, worker).await));
        }
        println!("lease operations on PostgreSQL, median µs over 200 rounds, as the store grows:");
        println!("| events stored | acquire | renew | save_checkpoint | release |");
        println!("| --- | --- | --- | --- | --- |");
        for (events, [a, r, s, l]) in rows {
            println!("| {events} | {a:.0} | {r:.0} | {s:.0} | {l:.0} |");
        }
        drop(store);
    });
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it without: then the
    // growth run is a smoke run.
    let benching = std::env::args().any(|a| a == "--bench");
    let mut criterion = Criterion::default().configure_from_args();
    lease_overhead(&mut criterion);
    partitions(&mut criterion);
    criterion.final_summary();
    let total = if benching {
        std::env::var("ORKESTRA_REPLICAS_GROWTH_EVENTS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(500_000)
    } else {
        scale::STEP
    };
    growth(total);
}
