//! Event-store throughput against the raw driver, same run, same machine.
//!
//! - `pg_append_1`: one event per commit, Orkestra's append ÷ a raw INSERT + COMMIT
//!   (tokio-postgres, same table shape) — target ≥ 0.80× the raw throughput;
//! - `pg_append_8w`: the same with 8 writers on separate streams — target ≥ 0.80×
//!   (a global lock that serializes commits would show here);
//! - `sqlite_batch_1000`: one 1,000-event append ÷ raw rusqlite inserts in one
//!   transaction with the same pragmas — target ≥ 0.80×;
//! - `read_decode_10k`: reading and decoding a 10,000-event stream (embedded store) ÷ a
//!   raw SELECT plus serde decode — target ≥ 0.70×.
//!
//! PostgreSQL benches need the local server (`ORKESTRA_PG_URL` or
//! `postgres://postgres@127.0.0.1:5432/test`); they are skipped with a notice without it.
//! `python3 benches/ratios.py` prints the ratios.

#[path = "../tests/support/payloads.rs"]
#[allow(dead_code)]
mod payloads;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use orkestra_runtime::{Event, EventData, ExpectedVersion, Metadata, SecretUrl, Store};
use payloads::OrderPlaced;

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

fn event(i: u64) -> EventData {
    let ev = Event::new(
        OrderPlaced {
            order_id: format!("order-{i}"),
            quantity: i as i64,
        },
        Metadata::new(),
    )
    .unwrap();
    EventData::from_event(&ev).unwrap()
}

fn new_stream(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

const RAW_TABLE: &str = "
CREATE TABLE IF NOT EXISTS orkestra_bench_raw (
    position BIGSERIAL PRIMARY KEY, stream TEXT NOT NULL, version BIGINT NOT NULL,
    id TEXT NOT NULL UNIQUE, event_type TEXT NOT NULL, schema_version INTEGER NOT NULL,
    data JSONB NOT NULL, metadata JSONB NOT NULL, recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (stream, version))";
const RAW_INSERT: &str = "INSERT INTO orkestra_bench_raw (stream, version, id, event_type, schema_version, data, metadata) \
                          VALUES ($1, $2, $3, $4, $5, $6, $7)";

async fn raw_insert(
    client: &mut tokio_postgres::Client,
    stmt: &tokio_postgres::Statement,
    stream: &str,
    version: i64,
    e: &EventData,
) {
    let tx = client.transaction().await.unwrap();
    let metadata = serde_json::to_value(&e.metadata).unwrap();
    let schema_version = e.schema_version as i32;
    tx.execute(
        stmt,
        &[
            &stream,
            &version,
            &e.id,
            &e.event_type,
            &schema_version,
            &e.data,
            &metadata,
        ],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

async fn raw_client() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
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
    rt.block_on(async { raw_client().await.batch_execute(RAW_TABLE).await.unwrap() });

    let mut group = c.benchmark_group("pg_append_1");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8));
    group.bench_function("orkestra", |b| {
        b.iter_custom(|iters| {
            let store = store.clone();
            rt.block_on(rt.spawn(async move {
                let start = Instant::now();
                for i in 0..iters {
                    black_box(
                        store
                            .append(&new_stream("b1"), ExpectedVersion::NoStream, vec![event(i)])
                            .await
                            .unwrap(),
                    );
                }
                start.elapsed()
            }))
            .unwrap()
        })
    });
    group.bench_function("raw_insert_commit", |b| {
        b.iter_custom(|iters| {
            rt.block_on(rt.spawn(async move {
                let mut client = raw_client().await;
                let stmt = client.prepare(RAW_INSERT).await.unwrap();
                let start = Instant::now();
                for i in 0..iters {
                    raw_insert(&mut client, &stmt, &new_stream("r1"), 0, &event(i)).await;
                }
                start.elapsed()
            }))
            .unwrap()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("pg_append_8w");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8));
    group.bench_function("orkestra", |b| {
        b.iter_custom(|iters| {
            let store = store.clone();
            rt.block_on(async move {
                let per = iters.div_ceil(8);
                let start = Instant::now();
                let tasks: Vec<_> = (0..8)
                    .map(|w| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            let stream = new_stream(&format!("b8-{w}"));
                            for i in 0..per {
                                let expected = if i == 0 {
                                    ExpectedVersion::NoStream
                                } else {
                                    ExpectedVersion::Exact(i - 1)
                                };
                                store
                                    .append(&stream, expected, vec![event(i)])
                                    .await
                                    .unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("raw_insert_commit", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async move {
                let per = iters.div_ceil(8);
                let mut clients = Vec::new();
                for _ in 0..8 {
                    clients.push(raw_client().await);
                }
                let start = Instant::now();
                let tasks: Vec<_> = clients
                    .into_iter()
                    .enumerate()
                    .map(|(w, mut client)| {
                        tokio::spawn(async move {
                            let stream = new_stream(&format!("r8-{w}"));
                            let stmt = client.prepare(RAW_INSERT).await.unwrap();
                            for i in 0..per {
                                raw_insert(&mut client, &stmt, &stream, i as i64, &event(i)).await;
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

fn temp_db(name: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("orkestra-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

const SQLITE_RAW_SCHEMA: &str = "
PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
CREATE TABLE IF NOT EXISTS raw_events (
    position INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, version INTEGER NOT NULL,
    id TEXT NOT NULL UNIQUE, event_type TEXT NOT NULL, schema_version INTEGER NOT NULL,
    data TEXT NOT NULL, metadata TEXT NOT NULL, recorded_at TEXT NOT NULL, UNIQUE (stream, version));";

fn sqlite(c: &mut Criterion) {
    let rt = runtime();
    let store_path = temp_db("orkestra.db");
    let store = rt.block_on(Store::sqlite(&store_path)).unwrap();
    let mut group = c.benchmark_group("sqlite_batch_1000");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8));
    group.bench_function("orkestra", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batch: Vec<EventData> = (0..1000).map(event).collect();
                let stream = new_stream("s");
                let start = Instant::now();
                rt.block_on(store.append(&stream, ExpectedVersion::NoStream, batch))
                    .unwrap();
                total += start.elapsed();
            }
            total
        })
    });
    let conn = Arc::new(std::sync::Mutex::new(
        rusqlite::Connection::open(temp_db("raw.db")).unwrap(),
    ));
    conn.lock()
        .unwrap()
        .execute_batch(SQLITE_RAW_SCHEMA)
        .unwrap();
    group.bench_function("raw_rusqlite", |b| {
        b.iter_custom(|iters| {
            let mut conn = conn.lock().unwrap();
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batch: Vec<EventData> = (0..1000).map(event).collect();
                let stream = new_stream("s");
                let start = Instant::now();
                let tx = conn.transaction().unwrap();
                {
                    let mut insert = tx
                        .prepare_cached(
                            "INSERT INTO raw_events (stream, version, id, event_type, schema_version, data, metadata, recorded_at) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        )
                        .unwrap();
                    let now = chrono::Utc::now().to_rfc3339();
                    for (v, e) in batch.iter().enumerate() {
                        let data = serde_json::to_string(&e.data).unwrap();
                        let metadata = serde_json::to_string(&e.metadata).unwrap();
                        insert
                            .execute(rusqlite::params![stream, v as i64, e.id, e.event_type, e.schema_version, data, metadata, now])
                            .unwrap();
                    }
                }
                tx.commit().unwrap();
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();

    // Reading and decoding a 10,000-event stream.
    let stream = new_stream("read");
    for chunk in 0..10u64 {
        let batch: Vec<EventData> = (chunk * 1000..(chunk + 1) * 1000).map(event).collect();
        let expected = if chunk == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(chunk * 1000 - 1)
        };
        rt.block_on(store.append(&stream, expected, batch)).unwrap();
    }
    let mut group = c.benchmark_group("read_decode_10k");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8));
    group.bench_function("orkestra", |b| {
        b.iter(|| {
            let events = rt.block_on(store.read_stream(&stream, 0, 10_000)).unwrap();
            let decoded: Vec<Event<OrderPlaced>> =
                events.iter().map(|r| r.decode().unwrap()).collect();
            assert_eq!(decoded.len(), 10_000);
            black_box(decoded)
        })
    });
    group.bench_function("raw_select_serde", |b| {
        let conn = rusqlite::Connection::open(&store_path).unwrap();
        b.iter(|| {
            let mut stmt = conn
                .prepare_cached("SELECT id, data, metadata FROM orkestra_events WHERE stream = ?1 ORDER BY version LIMIT 10000")
                .unwrap();
            let decoded: Vec<Event<OrderPlaced>> = stmt
                .query_map([&stream], |r| {
                    let id: String = r.get(0)?;
                    let data: String = r.get(1)?;
                    let metadata: String = r.get(2)?;
                    Ok(Event {
                        id,
                        data: serde_json::from_str(&data).unwrap(),
                        metadata: serde_json::from_str(&metadata).unwrap(),
                    })
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(decoded.len(), 10_000);
            black_box(decoded)
        })
    });
    group.finish();
}

criterion_group!(benches, postgres, sqlite);
criterion_main!(benches);
