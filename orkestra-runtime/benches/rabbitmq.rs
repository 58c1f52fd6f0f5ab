//! RabbitMQ throughput and confirm latency, Orkestra against raw lapin with identical
//! settings: a classic durable queue, persistent ~1 KB messages, publisher confirms with
//! up to 1,000 in flight, prefetch 1,000, acknowledgements batched (multiple, every 100
//! or after 10 ms idle — what the Orkestra consumer does). Both sides serialize and parse
//! the same ~1 KB JSON document per message, as any real producer and consumer must.
//!
//! - `rabbit_roundtrip/*`: publish + consume + ack of a batch, all confirmed and all
//!   consumed — target: Orkestra's throughput ≥ 0.90× raw lapin's;
//! - p99 confirm latency of 5,000 publishes with 1,000 in flight, printed and written to
//!   `target/criterion/rabbit_confirm_p99.json` — target ≤ 1.2× raw lapin's.
//!
//! - `busy` (printed, and written to `target/criterion/rabbit_busy.json`): the shape of a
//!   busy service, 32 tasks each dispatching fresh ~1 KB commands (own ids and
//!   correlation ids) and awaiting each confirm, prefetch 64, default concurrency, a
//!   raw lapin producer and consumer doing the same in the same run: a no-op handler
//!   (targets ≥ 0.90× raw throughput, p99 dispatch ≤ 1.2×) and a handler that awaits
//!   2 ms against a raw consumer spawning a task per delivery (target ≥ 0.80×).
//!
//! - `busy_metrics` (printed, and written to `target/criterion/rabbit_busy_metrics.json`):
//!   the busy no-op shape on a bus built after an SDK meter provider was installed (a
//!   pull reader, as `Telemetry::serve` installs; scraped every second meanwhile)
//!   against one built before, which records nothing, alternating rounds in one run —
//!   target: with metrics ÷ without ≥ 0.95×. Runs last: it installs the global provider.
//!
//! Needs the local broker (`ORKESTRA_AMQP_URL` or `amqp://guest:guest@127.0.0.1:5672/%2f`).

#[path = "../tests/support/payloads.rs"]
#[allow(dead_code)]
mod payloads;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use orkestra_runtime::{Bus, Command, CommandEnvelope, Config, Metadata, SecretUrl, Subscription};
use payloads::PlaceOrder;
use serde_json::json;
use tokio::sync::Notify;

const IN_FLIGHT: usize = 1000;

fn url() -> String {
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

fn command() -> Command<PlaceOrder> {
    // About 1 KB on the wire.
    Command::from_json(
        json!({"product_id": "sku", "quantity": 1, "notes": "n".repeat(700)}),
        Metadata::new(),
    )
    .unwrap()
}

struct Counter {
    seen: AtomicU64,
    notify: Notify,
}

impl Counter {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            seen: AtomicU64::new(0),
            notify: Notify::new(),
        })
    }
    fn hit(&self) {
        self.seen.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
    async fn wait_for(&self, target: u64) {
        loop {
            let notified = self.notify.notified();
            if self.seen.load(Ordering::SeqCst) >= target {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }
}

struct Raw {
    publisher: lapin::Channel,
    counter: Arc<Counter>,
    exchange: String,
    _conn: Connection,
}

/// The raw lapin side's topology, as Orkestra's would be: a confirming publisher
/// channel, a direct exchange and a queue bound to it (both removed after the run), and a
/// consumer on its own channel with `prefetch`.
struct RawTopology {
    conn: Connection,
    publisher: lapin::Channel,
    exchange: String,
    consumer_channel: lapin::Channel,
    consumer: lapin::Consumer,
}

async fn raw_topology(prefix: &str, prefetch: u16, tag: &str) -> RawTopology {
    let conn = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .unwrap();
    let publisher = conn.create_channel().await.unwrap();
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let exchange = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
    let queue = format!("{exchange}.q");
    publisher
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Direct,
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
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let consumer_channel = conn.create_channel().await.unwrap();
    consumer_channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let consumer = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    RawTopology {
        conn,
        publisher,
        exchange,
        consumer_channel,
        consumer,
    }
}

async fn raw_setup() -> Raw {
    let RawTopology {
        conn,
        publisher,
        exchange,
        consumer_channel,
        mut consumer,
    } = raw_topology("bench-raw", 1000, "raw").await;
    let counter = Counter::new();
    let c = counter.clone();
    tokio::spawn(async move {
        let mut pending = None;
        let mut n = 0;
        loop {
            let next = if pending.is_some() {
                match tokio::time::timeout(Duration::from_millis(10), consumer.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        if let Some(tag) = pending.take() {
                            consumer_channel
                                .basic_ack(tag, BasicAckOptions { multiple: true })
                                .await
                                .unwrap();
                        }
                        n = 0;
                        continue;
                    }
                }
            } else {
                consumer.next().await
            };
            let Some(Ok(delivery)) = next else { break };
            // A real consumer reads the message: parse the JSON body.
            let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
            std::hint::black_box(body);
            c.hit();
            pending = Some(delivery.delivery_tag);
            n += 1;
            if n >= 100 {
                consumer_channel
                    .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                    .await
                    .unwrap();
                pending = None;
                n = 0;
            }
        }
    });
    Raw {
        publisher,
        counter,
        exchange,
        _conn: conn,
    }
}

async fn raw_publish(raw: &Raw, payload: &serde_json::Value) -> Duration {
    let start = Instant::now();
    // A real producer writes the message: serialize the JSON body.
    let body = serde_json::to_vec(payload).unwrap();
    let body = body.as_slice();
    raw.publisher
        .basic_publish(
            raw.exchange.as_str().into(),
            "k".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    start.elapsed()
}

async fn orkestra_setup() -> (Bus, Arc<Counter>) {
    let mut config = Config::default();
    config.bus.adapter = orkestra_runtime::config::BusAdapter::RabbitMq;
    config.bus.url = Some(SecretUrl::new(url()));
    config.bus.prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    config.bus.prefetch = 1000;
    config.bus.queue_expiry_ms = Some(120_000);
    let bus = Bus::from_config(&config).await.unwrap();
    let counter = Counter::new();
    let c = counter.clone();
    bus.subscribe(Subscription::command(
        "Bench",
        move |cmd: Command<PlaceOrder>, _| {
            std::hint::black_box(&cmd);
            c.hit();
            async { Ok(serde_json::Value::Null) }
        },
    ))
    .await
    .unwrap();
    (bus, counter)
}

async fn orkestra_publish(bus: &Bus, cmd: Command<PlaceOrder>) -> Duration {
    let start = Instant::now();
    bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    start.elapsed()
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

fn rabbit(c: &mut Criterion) {
    let rt = runtime();
    if rt
        .block_on(Connection::connect(&url(), ConnectionProperties::default()))
        .is_err()
    {
        eprintln!("SKIPPED rabbitmq benches: no broker at the configured URL");
        return;
    }
    let raw = Arc::new(rt.block_on(raw_setup()));
    let (bus, counter) = rt.block_on(orkestra_setup());
    // The same ~1 KB JSON document Orkestra sends for a command.
    let body = json!({
        "kind": "command", "id": uuid::Uuid::new_v4().to_string(), "type": "Test.Orders.PlaceOrder",
        "topic": "orders.commands.place_order",
        "payload": {"product_id": "sku", "quantity": 1, "notes": "n".repeat(700)},
        "metadata": serde_json::to_value(Metadata::new()).unwrap(),
    });

    // p99 confirm latency with 1,000 in flight.
    let raw_lat = rt.block_on(async {
        futures_util::stream::iter(0..5000)
            .map(|_| raw_publish(&raw, &body))
            .buffer_unordered(IN_FLIGHT)
            .collect::<Vec<_>>()
            .await
    });
    // Both sides start from a message already in memory: a prebuilt command here, a
    // prebuilt JSON value on the raw side.
    let cmd = command();
    let ork_lat = rt.block_on(async {
        futures_util::stream::iter(0..5000)
            .map(|_| orkestra_publish(&bus, cmd.clone()))
            .buffer_unordered(IN_FLIGHT)
            .collect::<Vec<_>>()
            .await
    });
    let (raw_p99, ork_p99) = (p99(raw_lat), p99(ork_lat));
    eprintln!(
        "p99 confirm latency: orkestra {ork_p99:?}, raw lapin {raw_p99:?}, ratio {:.2}",
        ork_p99.as_secs_f64() / raw_p99.as_secs_f64()
    );
    let dir = std::path::Path::new(
        &std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "../target".into()),
    )
    .join("criterion");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("rabbit_confirm_p99.json"),
        format!(
            "{{\"orkestra_ns\": {}, \"raw_ns\": {}}}",
            ork_p99.as_nanos(),
            raw_p99.as_nanos()
        ),
    );

    let mut group = c.benchmark_group("rabbit_roundtrip");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("orkestra", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let target = counter.seen.load(Ordering::SeqCst) + iters;
                let start = Instant::now();
                futures_util::stream::iter(0..iters)
                    .map(|_| orkestra_publish(&bus, cmd.clone()))
                    .buffer_unordered(IN_FLIGHT)
                    .for_each(|_| async {})
                    .await;
                counter.wait_for(target).await;
                start.elapsed()
            })
        })
    });
    group.bench_function("raw_lapin", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let target = raw.counter.seen.load(Ordering::SeqCst) + iters;
                let start = Instant::now();
                futures_util::stream::iter(0..iters)
                    .map(|_| raw_publish(&raw, &body))
                    .buffer_unordered(IN_FLIGHT)
                    .for_each(|_| async {})
                    .await;
                raw.counter.wait_for(target).await;
                start.elapsed()
            })
        })
    });
    group.finish();
}

/// Dispatching tasks in the busy shape.
const BUSY_TASKS: usize = 32;
/// Messages per busy round.
const BUSY_MESSAGES: u64 = 20_000;

/// What a consumer does with each message in the busy shape.
#[derive(Clone, Copy, Debug)]
enum Work {
    Noop,
    /// Awaits 2 ms, as a database write would.
    Io2ms,
}

/// A raw lapin producer channel and a consumer with prefetch 64 that acks each message
/// (for `Io2ms`, from a task spawned per delivery that first sleeps 2 ms).
async fn busy_raw_setup(work: Work) -> Raw {
    let RawTopology {
        conn,
        publisher,
        exchange,
        mut consumer,
        ..
    } = raw_topology("bench-busy-raw", 64, "raw-busy").await;
    let counter = Counter::new();
    let c = counter.clone();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let c = c.clone();
            let handle = async move {
                let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
                std::hint::black_box(body);
                if let Work::Io2ms = work {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                delivery.ack(BasicAckOptions::default()).await.unwrap();
                c.hit();
            };
            match work {
                Work::Noop => handle.await,
                Work::Io2ms => {
                    tokio::spawn(handle);
                }
            }
        }
    });
    Raw {
        publisher,
        counter,
        exchange,
        _conn: conn,
    }
}

async fn busy_orkestra_setup(work: Work) -> (Bus, Arc<Counter>) {
    let mut config = Config::default();
    config.bus.adapter = orkestra_runtime::config::BusAdapter::RabbitMq;
    config.bus.url = Some(SecretUrl::new(url()));
    config.bus.prefix = format!("bench-busy-{}", uuid::Uuid::new_v4().simple());
    config.bus.prefetch = 64;
    config.bus.queue_expiry_ms = Some(120_000);
    let bus = Bus::from_config(&config).await.unwrap();
    let counter = Counter::new();
    let c = counter.clone();
    bus.subscribe(Subscription::command(
        "BusyBench",
        move |cmd: Command<PlaceOrder>, _| {
            std::hint::black_box(&cmd);
            let c = c.clone();
            async move {
                if let Work::Io2ms = work {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                c.hit();
                Ok(serde_json::Value::Null)
            }
        },
    ))
    .await
    .unwrap();
    (bus, counter)
}

/// One busy round: `BUSY_TASKS` tasks dispatch `BUSY_MESSAGES` fresh messages in all,
/// each awaiting its confirm; returns messages per second (until all are consumed) and
/// every dispatch latency.
async fn busy_round<F, Fut>(counter: &Counter, send: F) -> (f64, Vec<Duration>)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Duration> + Send,
{
    let target = counter.seen.load(Ordering::SeqCst) + BUSY_MESSAGES;
    let left = Arc::new(AtomicU64::new(BUSY_MESSAGES));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..BUSY_TASKS {
        let (left, send) = (left.clone(), send.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                latencies.push(send().await);
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    counter.wait_for(target).await;
    (
        BUSY_MESSAGES as f64 / start.elapsed().as_secs_f64(),
        latencies,
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn busy(_: &mut Criterion) {
    let rt = runtime();
    if rt
        .block_on(Connection::connect(&url(), ConnectionProperties::default()))
        .is_err()
    {
        eprintln!("SKIPPED rabbitmq busy bench: no broker at the configured URL");
        return;
    }
    let mut report = Vec::new();
    for work in [Work::Noop, Work::Io2ms] {
        let raw = Arc::new(rt.block_on(busy_raw_setup(work)));
        let (bus, counter) = rt.block_on(busy_orkestra_setup(work));
        let (mut raw_rates, mut ork_rates) = (Vec::new(), Vec::new());
        let (mut raw_lat, mut ork_lat) = (Vec::new(), Vec::new());
        // Alternate, after one warm-up round each; three measured rounds per side.
        for round in 0..4 {
            let r = raw.clone();
            let (rate, lat) = rt.block_on(busy_round(&raw.counter, move || {
                let r = r.clone();
                async move {
                    // Fresh message: own id and correlation id, serialized here.
                    let body = json!({
                        "kind": "command", "id": uuid::Uuid::new_v4().to_string(),
                        "type": "Test.Orders.PlaceOrder", "topic": "orders.commands.place_order",
                        "payload": {"product_id": "sku", "quantity": 1, "notes": "n".repeat(700)},
                        "metadata": serde_json::to_value(Metadata::new()).unwrap(),
                    });
                    raw_publish(&r, &body).await
                }
            }));
            let b = bus.clone();
            let (ork_rate, olat) = rt.block_on(busy_round(&counter, move || {
                let b = b.clone();
                async move { orkestra_publish(&b, command()).await }
            }));
            if round > 0 {
                raw_rates.push(rate);
                ork_rates.push(ork_rate);
                raw_lat.extend(lat);
                ork_lat.extend(olat);
            }
        }
        let (raw_rate, ork_rate) = (median(raw_rates), median(ork_rates));
        let (raw_p99, ork_p99) = (p99(raw_lat), p99(ork_lat));
        eprintln!(
            "busy {work:?}: orkestra {ork_rate:.0} msg/s, raw lapin {raw_rate:.0} msg/s, ratio {:.2}; \
             p99 dispatch orkestra {ork_p99:?}, raw {raw_p99:?}, ratio {:.2}",
            ork_rate / raw_rate,
            ork_p99.as_secs_f64() / raw_p99.as_secs_f64()
        );
        report.push(format!(
            "\"{work:?}\": {{\"orkestra_per_s\": {ork_rate:.0}, \"raw_per_s\": {raw_rate:.0}, \
             \"orkestra_p99_ns\": {}, \"raw_p99_ns\": {}}}",
            ork_p99.as_nanos(),
            raw_p99.as_nanos()
        ));
    }
    let dir = std::path::Path::new(
        &std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "../target".into()),
    )
    .join("criterion");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("rabbit_busy.json"),
        format!("{{{}}}", report.join(", ")),
    );
}

fn busy_metrics(_: &mut Criterion) {
    let rt = runtime();
    if rt
        .block_on(Connection::connect(&url(), ConnectionProperties::default()))
        .is_err()
    {
        eprintln!("SKIPPED rabbitmq busy_metrics bench: no broker at the configured URL");
        return;
    }
    // Built before any meter provider is installed: records nothing.
    let (off, off_counter) = rt.block_on(busy_orkestra_setup(Work::Noop));
    let reader = Arc::new(opentelemetry_sdk::metrics::ManualReader::builder().build());
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(SharedReader(reader.clone()))
        .build();
    orkestra_runtime::metrics::set_meter_provider(provider.clone());
    let (on, on_counter) = rt.block_on(busy_orkestra_setup(Work::Noop));
    // A scraper's collection every second, as Prometheus would.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraping = std::thread::spawn({
        let (reader, stop) = (reader.clone(), stop.clone());
        move || {
            use opentelemetry_sdk::metrics::reader::MetricReader;
            while !stop.load(Ordering::SeqCst) {
                let mut collected = opentelemetry_sdk::metrics::data::ResourceMetrics::default();
                let _ = reader.collect(&mut collected);
                std::thread::sleep(Duration::from_millis(1000));
            }
        }
    });
    let (mut off_rates, mut on_rates) = (Vec::new(), Vec::new());
    for round in 0..6 {
        for (bus, counter, rates) in [
            (&off, &off_counter, &mut off_rates),
            (&on, &on_counter, &mut on_rates),
        ] {
            let b = bus.clone();
            let (rate, _) = rt.block_on(busy_round(counter, move || {
                let b = b.clone();
                async move { orkestra_publish(&b, command()).await }
            }));
            if round > 0 {
                rates.push(rate);
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let _ = scraping.join();
    drop(provider);
    let (off_rate, on_rate) = (median(off_rates), median(on_rates));
    eprintln!(
        "busy_metrics: with metrics {on_rate:.0} msg/s, without {off_rate:.0} msg/s, ratio {:.3}",
        on_rate / off_rate
    );
    let dir = std::path::Path::new(
        &std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "../target".into()),
    )
    .join("criterion");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("rabbit_busy_metrics.json"),
        format!("{{\"with_metrics_per_s\": {on_rate:.0}, \"without_per_s\": {off_rate:.0}}}"),
    );
}

/// The provider takes its reader by value; the scraper keeps a handle too.
#[derive(Debug)]
struct SharedReader(Arc<opentelemetry_sdk::metrics::ManualReader>);

impl opentelemetry_sdk::metrics::reader::MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: std::sync::Weak<opentelemetry_sdk::metrics::Pipeline>) {
        self.0.register_pipeline(pipeline);
    }
    fn collect(
        &self,
        rm: &mut opentelemetry_sdk::metrics::data::ResourceMetrics,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(
        &self,
        kind: opentelemetry_sdk::metrics::InstrumentKind,
    ) -> opentelemetry_sdk::metrics::Temporality {
        self.0.temporality(kind)
    }
}

criterion_group!(benches, busy, rabbit, busy_metrics);
criterion_main!(benches);
