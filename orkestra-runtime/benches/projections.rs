//! Projections and the relay against hand-written equivalents, in the same run:
//!
//! - `pg_projection/*`: 5,000 stored `OrderPlaced` events folded into a PostgreSQL read
//!   model (an upsert per event) with the checkpoint in the same transaction, batches of
//!   500: a `Projection` (catch-up to the last event) against a hand-written loop doing
//!   the same reads, decodes and writes in the same batches — target ≥ 0.80×;
//! - `relay/*`: 1,000 stored events published on RabbitMQ with publisher confirms, in
//!   order, one confirm awaited per event: the `Relay` against raw lapin publishing the
//!   same stored events (read in batches of 500, serialized, published, confirmed) —
//!   target ≥ 0.80×;
//! - lag (printed, and written to `target/criterion/projection_lag.json`): a PostgreSQL
//!   projection live under a steady 1,000 appends per second for 5 s; the time from each
//!   append's return to the projection's handling of it, p50 and p99 (target p99 < 100 ms).
//!
//! Needs the local PostgreSQL and RabbitMQ (`ORKESTRA_PG_URL`, `ORKESTRA_AMQP_URL`).

#[path = "../tests/support/payloads.rs"]
#[allow(dead_code)]
mod payloads;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use orkestra_runtime::projection::{Projection, ProjectionContext, ProjectionHandler, Projections};
use orkestra_runtime::relay::Relay;
use orkestra_runtime::{
    Bus, Config, Event, EventData, ExpectedVersion, HandlerError, Metadata, SecretUrl, Store,
    Subscription,
};
use payloads::OrderPlaced;

const EVENTS: usize = 5_000;
const RELAYED: usize = 1_000;
const BATCH: usize = 500;

fn pg_url() -> String {
    std::env::var("ORKESTRA_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn amqp_url() -> String {
    std::env::var("ORKESTRA_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn placed(prefix: &str, i: usize) -> EventData {
    EventData::from_event(
        &Event::new(
            OrderPlaced {
                order_id: format!("{prefix}-{}", i % 100),
                quantity: (i % 9) as i64 + 1,
            },
            Metadata::new(),
        )
        .unwrap(),
    )
    .unwrap()
}

/// Appends `n` events of a fresh prefix; the positions before the first and of the last.
async fn fill(store: &Store, n: usize) -> (Option<u64>, u64) {
    let prefix = uuid::Uuid::new_v4().simple().to_string();
    let start = store.head().await.unwrap();
    let mut last = 0;
    for chunk in 0..n / 100 {
        let events = (0..100).map(|i| placed(&prefix, chunk * 100 + i)).collect();
        last = store
            .append(
                &format!("bench-{prefix}-{chunk}"),
                ExpectedVersion::NoStream,
                events,
            )
            .await
            .unwrap()
            .last_position;
    }
    (start, last)
}

async fn pg_client() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// The read model both sides write: quantity per order.
struct Fold {
    table: String,
}

impl ProjectionHandler for Fold {
    type Event = Event<OrderPlaced>;

    async fn handle(
        &self,
        event: Event<OrderPlaced>,
        ctx: ProjectionContext<'_>,
    ) -> Result<(), HandlerError> {
        let statement = ctx.prepare_cached(&upsert(&self.table)).await?;
        let tx = ctx
            .postgres()
            .ok_or_else(|| HandlerError::reject("not PostgreSQL"))?;
        tx.execute(&statement, &[&event.data.order_id, &event.data.quantity])
            .await
            .map_err(HandlerError::fail)?;
        Ok(())
    }
}

fn upsert(table: &str) -> String {
    format!(
        "INSERT INTO {table} (order_id, quantity) VALUES ($1, $2) \
         ON CONFLICT (order_id) DO UPDATE SET quantity = {table}.quantity + excluded.quantity"
    )
}

/// The hand-written loop: the same reads, decodes, writes and checkpoint, in batches.
async fn raw_fold(
    store: &Store,
    client: &mut tokio_postgres::Client,
    table: &str,
    name: &str,
    start: Option<u64>,
    last: u64,
) {
    let mut next = start.map_or(0, |s| s + 1);
    let upsert = client.prepare(&upsert(table)).await.unwrap();
    let checkpoint = client
        .prepare(
            "INSERT INTO orkestra_checkpoints (name, position) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = now()",
        )
        .await
        .unwrap();
    while next <= last {
        let batch = store.read_all(next, BATCH).await.unwrap();
        let tx = client.transaction().await.unwrap();
        for e in &batch {
            if let Ok(ev) = e.decode::<OrderPlaced>() {
                tx.execute(&upsert, &[&ev.data.order_id, &ev.data.quantity])
                    .await
                    .unwrap();
            }
        }
        let end = batch.last().unwrap().position();
        tx.execute(&checkpoint, &[&name, &(end as i64)])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        next = end + 1;
    }
}

fn pg_projection(c: &mut Criterion) {
    let rt = runtime();
    let store = rt
        .block_on(Store::postgres(&SecretUrl::new(pg_url())))
        .unwrap();
    let (start, last) = rt.block_on(fill(&store, EVENTS));
    let table = format!("bench_fold_{}", uuid::Uuid::new_v4().simple());
    let mut client = rt.block_on(pg_client());
    rt.block_on(client.batch_execute(&format!(
        "CREATE TABLE {table} (order_id TEXT PRIMARY KEY, quantity BIGINT NOT NULL)"
    )))
    .unwrap();
    let mut group = c.benchmark_group("pg_projection");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    let name = format!("bench-{table}");
    group.bench_function("orkestra", |b| {
        b.iter(|| {
            rt.block_on(async {
                store.save_checkpoint(&name, start).await.unwrap();
                let running = Projections::new(store.clone())
                    .add(
                        Projection::new(
                            name.clone(),
                            Fold {
                                table: table.clone(),
                            },
                        )
                        .with_batch(BATCH),
                    )
                    .start()
                    .await
                    .unwrap();
                running.wait_for(&name, last).await.unwrap();
                running.stop().await.unwrap();
            })
        })
    });
    let raw_name = format!("bench-raw-{table}");
    group.bench_function("raw_loop", |b| {
        b.iter(|| {
            rt.block_on(raw_fold(
                &store,
                &mut client,
                &table,
                &raw_name,
                start,
                last,
            ))
        })
    });
    group.finish();
    rt.block_on(client.batch_execute(&format!("DROP TABLE {table}")))
        .unwrap();
}

async fn rabbit_bus() -> Bus {
    let mut config = Config::default();
    config.bus.adapter = orkestra_runtime::config::BusAdapter::RabbitMq;
    config.bus.url = Some(SecretUrl::new(amqp_url()));
    config.bus.prefix = format!("bench-relay-{}", uuid::Uuid::new_v4().simple());
    config.bus.queue_expiry_ms = Some(120_000);
    let bus = Bus::from_config(&config).await.unwrap();
    bus.subscribe(Subscription::events(
        "RelayBenchSink",
        |_: Event<OrderPlaced>, _| async { Ok(()) },
    ))
    .await
    .unwrap();
    bus
}

/// Raw lapin: a confirming channel, an exchange with a bound queue drained by an acking
/// consumer (as the Orkestra side's subscriber).
async fn raw_channel() -> (Connection, lapin::Channel, String) {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let publisher = conn.create_channel().await.unwrap();
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let exchange = format!("bench-relay-raw-{}", uuid::Uuid::new_v4().simple());
    let queue = format!("{exchange}.q");
    publisher
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-expires".into(),
        lapin::types::AMQPValue::LongLongInt(120_000),
    );
    publisher
        .queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args)
        .await
        .unwrap();
    publisher
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let consumer_channel = conn.create_channel().await.unwrap();
    consumer_channel
        .basic_qos(1000, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let _ = consumer_channel
                .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
                .await;
        }
    });
    (conn, publisher, exchange)
}

async fn raw_relay(
    store: &Store,
    publisher: &lapin::Channel,
    exchange: &str,
    start: Option<u64>,
    last: u64,
) {
    let mut next = start.map_or(0, |s| s + 1);
    while next <= last {
        let batch = store.read_all(next, BATCH).await.unwrap();
        for e in &batch {
            let raw = e.to_raw(e.topic().unwrap_or_default()).unwrap();
            let body = serde_json::to_vec(&raw.data).unwrap();
            publisher
                .basic_publish(
                    exchange.into(),
                    raw.topic.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_message_id(raw.id.as_str().into())
                        .with_content_type("application/json".into()),
                )
                .await
                .unwrap()
                .await
                .unwrap();
        }
        next = batch.last().unwrap().position() + 1;
    }
}

fn relay(c: &mut Criterion) {
    let rt = runtime();
    let store = Store::memory();
    let (start, last) = rt.block_on(fill(&store, RELAYED));
    let bus = rt.block_on(rabbit_bus());
    let (_conn, publisher, exchange) = rt.block_on(raw_channel());
    let mut group = c.benchmark_group("relay");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    group.bench_function("orkestra", |b| {
        b.iter(|| {
            rt.block_on(async {
                store.save_checkpoint("bench.relay", start).await.unwrap();
                let mut relay = Relay::new(store.clone(), bus.clone())
                    .with_checkpoint("bench.relay")
                    .start()
                    .await
                    .unwrap();
                relay.wait_for(last).await.unwrap();
                relay.stop().await.unwrap();
            })
        })
    });
    group.bench_function("raw_lapin", |b| {
        b.iter(|| rt.block_on(raw_relay(&store, &publisher, &exchange, start, last)))
    });
    group.finish();
}

/// When each position was acknowledged to its writer and when it was handled.
#[derive(Clone)]
struct Lag {
    appended: Arc<Mutex<HashMap<u64, Instant>>>,
    handled: Arc<Mutex<HashMap<u64, Instant>>>,
}

impl ProjectionHandler for Lag {
    type Event = Event<OrderPlaced>;

    async fn handle(
        &self,
        _event: Event<OrderPlaced>,
        ctx: ProjectionContext<'_>,
    ) -> Result<(), HandlerError> {
        self.handled
            .lock()
            .unwrap()
            .insert(ctx.position(), Instant::now());
        Ok(())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn lag(_: &mut Criterion) {
    let rt = runtime();
    rt.block_on(async {
        let store = Store::postgres(&SecretUrl::new(pg_url())).await.unwrap();
        let name = format!("bench-lag-{}", uuid::Uuid::new_v4().simple());
        store
            .save_checkpoint(&name, store.head().await.unwrap())
            .await
            .unwrap();
        let probe = Lag {
            appended: Arc::default(),
            handled: Arc::default(),
        };
        let running = Projections::new(store.clone())
            .add(Projection::new(name.clone(), probe.clone()))
            .start()
            .await
            .unwrap();
        let prefix = uuid::Uuid::new_v4().simple().to_string();
        let mut ticker = tokio::time::interval(Duration::from_millis(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let began = Instant::now();
        // One append per millisecond, each in its own task: a steady rate even when one
        // append takes longer than a tick.
        let mut tasks = Vec::with_capacity(5_000);
        for i in 0..5_000 {
            ticker.tick().await;
            let (store, prefix, appended) = (store.clone(), prefix.clone(), probe.appended.clone());
            tasks.push(tokio::spawn(async move {
                let done = store
                    .append(&format!("lag-{prefix}-{i}"), ExpectedVersion::NoStream, vec![placed(&prefix, i)])
                    .await
                    .unwrap();
                appended.lock().unwrap().insert(done.last_position, Instant::now());
                done.last_position
            }));
        }
        let mut last = 0;
        for t in tasks {
            last = last.max(t.await.unwrap());
        }
        let rate = 5_000.0 / began.elapsed().as_secs_f64();
        running.wait_for(&name, last).await.unwrap();
        running.stop().await.unwrap();
        let handled = probe.handled.lock().unwrap().clone();
        let mut lags: Vec<Duration> = probe
            .appended
            .lock()
            .unwrap()
            .iter()
            .map(|(position, at)| {
                handled
                    .get(position)
                    .map_or(Duration::MAX, |h| h.saturating_duration_since(*at))
            })
            .collect();
        lags.sort();
        let (p50, p99) = (percentile(&lags, 0.50), percentile(&lags, 0.99));
        println!(
            "projection lag on PostgreSQL at {rate:.0} appends/s: p50 {p50:?}, p99 {p99:?} over {} events (target p99 < 100 ms)",
            lags.len()
        );
        let dir = std::path::Path::new(
            &std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
        )
        .join("criterion");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(
            dir.join("projection_lag.json"),
            format!(
                "{{\"rate\": {rate:.0}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"events\": {}}}\n",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                lags.len()
            ),
        );
    });
}

criterion_group!(benches, pg_projection, relay, lag);
criterion_main!(benches);
