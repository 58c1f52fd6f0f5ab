//! Decisions across streams (dcb.events), same run, same machine:
//!
//! - `tags_append_sqlite`, `tags_append_pg`: appending one event carrying 2 tags ÷ one
//!   without tags, a new stream each (the tag index's overhead) — target ≥ 0.80× the
//!   throughput;
//! - `dcb_pg_writers`: decisions (`read_query` then `append_if`) by 16 writers on 16
//!   disjoint boundaries ÷ by 1 writer — target ≥ 6× the throughput (disjoint boundaries
//!   never wait for each other).
//!
//! PostgreSQL benches need the local server (`ORKESTRA_PG_URL` or
//! `postgres://postgres@127.0.0.1:5432/test`); they are skipped with a notice without it.
//! `python3 benches/ratios.py` prints the ratios.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use orkestra_runtime::{
    AppendCondition, EventData, ExpectedVersion, Metadata, Query, QueryItem, RecordedEvent,
    SecretUrl, Store, StoreError, Tag,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn pg_url() -> String {
    std::env::var("ORKESTRA_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn event(tags: &[Tag]) -> EventData {
    EventData {
        id: orkestra_runtime::new_id(),
        event_type: "Bench.Seat.Taken".into(),
        schema_version: 1,
        data: serde_json::json!({"seat": 1, "note": "a small payload"}),
        metadata: Metadata::new(),
        topic: None,
        tags: Vec::new(),
    }
    .with_tags(tags.iter().cloned())
}

/// Appends `iters` events, one per new stream, each with `tags` fresh tags.
async fn appends(store: Store, iters: u64, tags: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let tags: Vec<Tag> = (0..tags)
            .map(|k| Tag::new(format!("k{k}"), unique("v")).unwrap())
            .collect();
        store
            .append(&unique("t"), ExpectedVersion::NoStream, vec![event(&tags)])
            .await
            .unwrap();
    }
    start.elapsed()
}

fn tag_overhead(c: &mut Criterion, group: &str, rt: &tokio::runtime::Runtime, store: &Store) {
    let mut group = c.benchmark_group(group);
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8));
    for (name, tags) in [("untagged", 0), ("tagged_2", 2)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| rt.block_on(appends(store.clone(), iters, tags)))
        });
    }
    group.finish();
}

/// Conditions that failed, over the whole run: on disjoint boundaries there must be
/// none (printed after the group).
static CONFLICTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `n` decisions on one boundary: read it, append on the condition that nothing
/// matching it came after; on a conflict (counted in [`CONFLICTS`]), read and append
/// again, as a real decision would.
async fn decide(store: Store, n: u64) {
    let tag = Tag::new("course", unique("c")).unwrap();
    let boundary = Query::of(QueryItem::tags([tag.clone()]));
    let stream = unique("d");
    for _ in 0..n {
        loop {
            let seen = store.read_query(&boundary, 0, 1000).await.unwrap();
            let appended = store
                .append_if(
                    &stream,
                    ExpectedVersion::Any,
                    vec![event(std::slice::from_ref(&tag))],
                    AppendCondition {
                        fail_if_events_match: boundary.clone(),
                        after: seen.last().map(RecordedEvent::position),
                    },
                )
                .await;
            match appended {
                Ok(_) => break,
                Err(StoreError::WrongCondition { .. }) => {
                    CONFLICTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}

fn postgres(c: &mut Criterion) {
    let rt = runtime();
    let store = match rt.block_on(Store::postgres(&SecretUrl::new(pg_url()))) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("SKIPPED postgres benches: {e}");
            return;
        }
    };
    tag_overhead(c, "tags_append_pg", &rt, &store);
    let mut group = c.benchmark_group("dcb_pg_writers");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for (name, writers) in [("w1", 1u64), ("w16", 16)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let store = store.clone();
                rt.block_on(async move {
                    let per = iters.div_ceil(writers);
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..writers)
                        .map(|_| tokio::spawn(decide(store.clone(), per)))
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                    // Per decision, whatever the rounding of `per`.
                    start
                        .elapsed()
                        .mul_f64(iters as f64 / (per * writers) as f64)
                })
            })
        });
    }
    group.finish();
    eprintln!(
        "dcb_pg_writers: {} condition(s) failed on disjoint boundaries",
        CONFLICTS.load(std::sync::atomic::Ordering::Relaxed)
    );
}

fn sqlite(c: &mut Criterion) {
    let rt = runtime();
    let dir = std::env::temp_dir().join(unique("orkestra-bench-tags"));
    let store = rt.block_on(Store::sqlite(dir.join("events.db"))).unwrap();
    tag_overhead(c, "tags_append_sqlite", &rt, &store);
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

criterion_group!(benches, postgres, sqlite);
criterion_main!(benches);
