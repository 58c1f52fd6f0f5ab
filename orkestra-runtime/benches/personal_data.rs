//! Personal data (crypto-shredding) against the same work without it, same run, same
//! machine:
//!
//! - `personal_append_read_{memory,sqlite}`: append one event (a new stream) and read it
//!   back (`read_stream`, data parsed), the event carrying 2 personal fields of one of
//!   100 known subjects (keys cached) ÷ the same event on a store without personal data
//!   declared — target ≥ 0.70× the throughput;
//! - `personal_read_10k_{memory,sqlite}`: `read_all` of 10,000 events of 1,000 subjects,
//!   2 personal fields each (the key cache warm) ÷ the same events stored plain —
//!   target ≥ 0.60×;
//! - `personal_read_decode_10k_{memory,sqlite}`: the same read with each event's data
//!   parsed (`RecordedEvent::data`), as a reader that uses the events does.
//!
//! Memory shows the cost with nothing to hide it (no I/O); SQLite is the one a service
//! on one machine runs. `python3 benches/ratios.py` prints the ratios.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use orkestra_runtime::keys::{PersonalData, PersonalEvent, PersonalField};
use orkestra_runtime::{EventData, ExpectedVersion, Metadata, RawEvent, Store};
use serde_json::json;

const REGISTERED: &str = "Bench.Customers.CustomerRegistered";

static EVENTS: &[PersonalEvent] = &[PersonalEvent::new(
    REGISTERED,
    "customer_id",
    &[
        PersonalField::new("email", "\"\""),
        PersonalField::new("name", "\"(erased)\""),
    ],
)];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn event(i: u64, subjects: u64) -> EventData {
    let subject = format!("customer-{}", i % subjects);
    EventData::from_raw(RawEvent {
        id: orkestra_runtime::new_id(),
        event_type: REGISTERED.into(),
        version: 1,
        topic: "bench.customers".into(),
        data: json!({
            "customer_id": subject,
            "email": format!("person{i}@mail.example"),
            "name": format!("Person Number {i}"),
            "plan": "gold",
            "seats": 3,
        }),
        metadata: Metadata::new(),
    })
}

fn personal(store: Store) -> Store {
    store
        .with_personal_data(&PersonalData::new().with_events(EVENTS))
        .unwrap()
}

fn sqlite_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "orkestra-bench-personal-{name}-{}.db",
        uuid::Uuid::new_v4().simple()
    ))
}

fn remove(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// One append of a new stream and its read back.
async fn append_read(store: &Store, i: u64) {
    let stream = format!("bench-{}", uuid::Uuid::new_v4().simple());
    store
        .append(&stream, ExpectedVersion::NoStream, vec![event(i, 100)])
        .await
        .unwrap();
    let read = store.read_stream(&stream, 0, 1).await.unwrap();
    black_box(read[0].data().unwrap());
}

fn append_and_read(c: &mut Criterion) {
    let rt = runtime();
    let counter = AtomicU64::new(0);
    let paths = [sqlite_path("append-plain"), sqlite_path("append-personal")];
    let (memory_plain, memory_personal, sqlite_plain, sqlite_personal) = rt.block_on(async {
        (
            Store::memory(),
            personal(Store::memory()),
            Store::sqlite(&paths[0]).await.unwrap(),
            personal(Store::sqlite(&paths[1]).await.unwrap()),
        )
    });
    for (group, plain, protected) in [
        (
            "personal_append_read_memory",
            &memory_plain,
            &memory_personal,
        ),
        (
            "personal_append_read_sqlite",
            &sqlite_plain,
            &sqlite_personal,
        ),
    ] {
        // The 100 subjects' keys made and cached before measuring.
        rt.block_on(async {
            for i in 0..100 {
                append_read(protected, i).await;
            }
        });
        let mut g = c.benchmark_group(group);
        g.sample_size(30);
        for (name, store) in [("personal_2", protected), ("plain", plain)] {
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let started = Instant::now();
                        for _ in 0..iters {
                            append_read(store, counter.fetch_add(1, Ordering::Relaxed)).await;
                        }
                        started.elapsed()
                    })
                })
            });
        }
        g.finish();
    }
    drop((memory_plain, memory_personal, sqlite_plain, sqlite_personal));
    paths.iter().for_each(|p| remove(p));
}

fn read_10k(c: &mut Criterion) {
    let rt = runtime();
    let paths = [sqlite_path("read-plain"), sqlite_path("read-personal")];
    let stores = rt.block_on(async {
        let stores = [
            Store::memory(),
            personal(Store::memory()),
            Store::sqlite(&paths[0]).await.unwrap(),
            personal(Store::sqlite(&paths[1]).await.unwrap()),
        ];
        for store in &stores {
            // 10,000 events of 1,000 subjects, 100 to an append.
            for batch in 0..100u64 {
                let events = (0..100).map(|j| event(batch * 100 + j, 1_000)).collect();
                store
                    .append(
                        &format!("customers-{batch}"),
                        ExpectedVersion::NoStream,
                        events,
                    )
                    .await
                    .unwrap();
            }
            // Warm: every subject's key in the cache.
            assert_eq!(store.read_all(0, 10_000).await.unwrap().len(), 10_000);
        }
        stores
    });
    for (group, plain, protected, decode) in [
        ("personal_read_10k_memory", &stores[0], &stores[1], false),
        ("personal_read_10k_sqlite", &stores[2], &stores[3], false),
        (
            "personal_read_decode_10k_memory",
            &stores[0],
            &stores[1],
            true,
        ),
        (
            "personal_read_decode_10k_sqlite",
            &stores[2],
            &stores[3],
            true,
        ),
    ] {
        let mut g = c.benchmark_group(group);
        g.sample_size(20);
        for (name, store) in [("personal_2", protected), ("plain", plain)] {
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let started = Instant::now();
                        for _ in 0..iters {
                            let events = store.read_all(0, 10_000).await.unwrap();
                            if decode {
                                for event in &events {
                                    black_box(event.data().unwrap());
                                }
                            }
                            black_box(events.len());
                        }
                        started.elapsed()
                    })
                })
            });
        }
        g.finish();
    }
    drop(stores);
    paths.iter().for_each(|p| remove(p));
}

criterion_group!(benches, append_and_read, read_10k);
criterion_main!(benches);
