//! The instruments through the SDK's in-memory metric exporter: names, units,
//! attributes and values on the in-process bus, on RabbitMQ (the real broker), on every
//! store that runs here, on projections; and the series count staying flat over
//! 10,000 distinct messages (no id ever becomes an attribute).
//!
//! One meter provider for the whole binary (the global one), installed before any bus
//! is built; each test uses handler names, message types and workers of its own, so
//! tests running side by side read their own series.

mod support;

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};
use orkestra_runtime::projection::{
    Projection, ProjectionContext, ProjectionHandler, ProjectionState, Projections,
};
use orkestra_runtime::{
    Bus, Command, CommandEnvelope, CommandStatus, Event, EventData, EventEnvelope, ExpectedVersion,
    HandlerError, Metadata, Payload, Store, Subscription,
};
use serde_json::{Value, json};
use support::payloads::{
    AccountCreated, CreateAccount, OrderPlaced, OrderShipped, Ping, PlaceOrder,
};
use support::services::{postgres_store, rabbit_bus};

struct Meters {
    provider: SdkMeterProvider,
    exporter: InMemoryMetricExporter,
}

fn meters() -> &'static Meters {
    static METERS: OnceLock<Meters> = OnceLock::new();
    METERS.get_or_init(|| {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_periodic_exporter(exporter.clone())
            .build();
        orkestra_runtime::metrics::set_meter_provider(provider.clone());
        Meters { provider, exporter }
    })
}

/// One data point as the exporter gave it.
#[derive(Clone, Debug)]
struct Point {
    name: String,
    unit: String,
    kind: &'static str,
    attributes: BTreeMap<String, String>,
    /// A sum's or gauge's value; a histogram's count.
    value: f64,
    /// A histogram's bucket boundaries.
    bounds: Vec<f64>,
}

/// Every data point now (cumulative: the last export holds them all).
fn collect() -> Vec<Point> {
    let m = meters();
    m.provider.force_flush().unwrap();
    let exported = m.exporter.get_finished_metrics().unwrap();
    let Some(last) = exported.last() else {
        return Vec::new();
    };
    let mut points = Vec::new();
    for scope in last.scope_metrics() {
        assert_eq!(scope.scope().name(), "orkestra");
        for metric in scope.metrics() {
            let mut push = |kind, attributes: Vec<(String, String)>, value: f64, bounds| {
                points.push(Point {
                    name: metric.name().to_owned(),
                    unit: metric.unit().to_owned(),
                    kind,
                    attributes: attributes.into_iter().collect(),
                    value,
                    bounds,
                })
            };
            let attrs = |it: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
                it.map(|kv| (kv.key.to_string(), kv.value.as_str().into_owned()))
                    .collect::<Vec<_>>()
            };
            macro_rules! points_of {
                ($data:expr) => {
                    match $data {
                        MetricData::Sum(sum) => {
                            let kind = if sum.is_monotonic() {
                                "counter"
                            } else {
                                "updown"
                            };
                            for p in sum.data_points() {
                                push(kind, attrs(&mut p.attributes()), p.value() as f64, vec![]);
                            }
                        }
                        MetricData::Gauge(gauge) => {
                            for p in gauge.data_points() {
                                push(
                                    "gauge",
                                    attrs(&mut p.attributes()),
                                    p.value() as f64,
                                    vec![],
                                );
                            }
                        }
                        MetricData::Histogram(h) => {
                            for p in h.data_points() {
                                push(
                                    "histogram",
                                    attrs(&mut p.attributes()),
                                    p.count() as f64,
                                    p.bounds().collect(),
                                );
                            }
                        }
                        MetricData::ExponentialHistogram(_) => panic!("no exponential histograms"),
                    }
                };
            }
            match metric.data() {
                AggregatedMetrics::F64(d) => points_of!(d),
                AggregatedMetrics::U64(d) => points_of!(d),
                AggregatedMetrics::I64(d) => points_of!(d),
            }
        }
    }
    points
}

/// The one point of `name` whose attributes are exactly `attributes`; its value.
fn value(points: &[Point], name: &str, attributes: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = attributes
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let found: Vec<&Point> = points
        .iter()
        .filter(|p| p.name == name && p.attributes == want)
        .collect();
    match found[..] {
        [one] => one.value,
        [] => panic!(
            "no {name} with {want:?}; {name} has: {:#?}",
            points
                .iter()
                .filter(|p| p.name == name)
                .map(|p| &p.attributes)
                .collect::<Vec<_>>()
        ),
        _ => panic!("{} points of {name} with {want:?}", found.len()),
    }
}

/// The unit and kind of instrument `name`.
fn shape(points: &[Point], name: &str) -> (String, &'static str) {
    let p = points
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no {name}"));
    (p.unit.clone(), p.kind)
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn place_order() -> CommandEnvelope {
    CommandEnvelope::wrap(
        Command::<PlaceOrder>::from_json(
            json!({"product_id": "sku", "quantity": 1}),
            Metadata::new(),
        )
        .unwrap(),
    )
}

fn create_account() -> CommandEnvelope {
    CommandEnvelope::wrap(
        Command::<CreateAccount>::from_json(
            json!({"email": "a@b.c", "name": "Ann"}),
            Metadata::new(),
        )
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_bus_records_every_handler_instrument() {
    meters();
    let bus = Bus::in_process();
    let (ok, failing, rejecting, once) = (
        unique("MxOk"),
        unique("MxFail"),
        unique("MxReject"),
        unique("MxOnce"),
    );
    bus.subscribe(Subscription::command(
        ok.clone(),
        |_: Command<PlaceOrder>, _| async { Ok(Value::Null) },
    ))
    .await
    .unwrap();
    bus.subscribe(
        Subscription::command(failing.clone(), |_: Command<CreateAccount>, _| async {
            Err(HandlerError::fail("down"))
        })
        .with_max_retries(2),
    )
    .await
    .unwrap();
    bus.subscribe(Subscription::events(
        rejecting.clone(),
        |_: Event<OrderShipped>, _| async { Err(HandlerError::reject("not ours")) },
    ))
    .await
    .unwrap();
    bus.subscribe(
        Subscription::events(once.clone(), |_: Event<OrderShipped>, _| async { Ok(()) })
            .with_once(),
    )
    .await
    .unwrap();

    for _ in 0..2 {
        let receipt = bus.dispatch(place_order()).await.unwrap();
        assert_eq!(receipt.status(), CommandStatus::Succeeded);
    }
    let receipt = bus.dispatch(create_account()).await.unwrap();
    assert_eq!(receipt.status(), CommandStatus::Failed);
    let shipped = EventEnvelope::wrap(
        Event::new(
            OrderShipped {
                order_id: "o1".into(),
            },
            Metadata::new(),
        )
        .unwrap(),
    );
    bus.publish(shipped.clone()).await.unwrap();
    // The same event again: the `once` handler's inbox has it.
    bus.publish(EventEnvelope::from_message(shipped.message().clone()))
        .await
        .unwrap();
    let call = bus
        .call(place_order(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(call.status(), CommandStatus::Succeeded);

    let points = collect();
    let sys = ("messaging.system", "orkestra");
    let h = |name: &str| ("orkestra.handler", name.to_owned());
    let (ok_h, fail_h, reject_h, once_h) = (h(&ok), h(&failing), h(&rejecting), h(&once));
    let ty = |t: &'static str| ("orkestra.message.type", t);
    let consumed = "messaging.client.consumed.messages";
    let process = "messaging.process.duration";

    assert_eq!(shape(&points, consumed), ("{message}".into(), "counter"));
    assert_eq!(value(&points, consumed, &[sys, (ok_h.0, &ok_h.1)]), 3.0);
    // Every attempt is consumed: the first run and two retries.
    assert_eq!(value(&points, consumed, &[sys, (fail_h.0, &fail_h.1)]), 3.0);

    assert_eq!(shape(&points, process), ("s".into(), "histogram"));
    let success = ("orkestra.outcome", "success");
    let failure = ("orkestra.outcome", "failure");
    let rejected = ("orkestra.outcome", "rejected");
    assert_eq!(
        value(
            &points,
            process,
            &[sys, (ok_h.0, &ok_h.1), ty(PlaceOrder::TYPE_NAME), success]
        ),
        3.0
    );
    assert_eq!(
        value(
            &points,
            process,
            &[
                sys,
                (fail_h.0, &fail_h.1),
                ty(CreateAccount::TYPE_NAME),
                failure
            ]
        ),
        3.0
    );
    assert_eq!(
        value(
            &points,
            process,
            &[
                sys,
                (reject_h.0, &reject_h.1),
                ty(OrderShipped::TYPE_NAME),
                rejected
            ]
        ),
        2.0
    );
    let buckets = points.iter().find(|p| p.name == process).unwrap();
    assert_eq!(buckets.bounds.first(), Some(&0.0005));
    assert_eq!(buckets.bounds.last(), Some(&30.0));

    assert_eq!(
        shape(&points, "orkestra.handler.retries"),
        ("{retry}".into(), "counter")
    );
    assert_eq!(
        value(
            &points,
            "orkestra.handler.retries",
            &[(fail_h.0, &fail_h.1)]
        ),
        2.0
    );
    assert_eq!(
        value(
            &points,
            "orkestra.dead_letters",
            &[
                (fail_h.0, &fail_h.1),
                ("orkestra.dead_letter.reason", "exhausted")
            ]
        ),
        1.0
    );
    // A rejection is an answer, never a dead letter.
    assert!(!points.iter().any(|p| p.name == "orkestra.dead_letters"
        && p.attributes.get("orkestra.handler") == Some(&rejecting)));
    assert_eq!(
        value(&points, "orkestra.inbox.skipped", &[(once_h.0, &once_h.1)]),
        1.0
    );
    assert_eq!(value(&points, consumed, &[sys, (once_h.0, &once_h.1)]), 1.0);
    assert_eq!(
        shape(&points, "orkestra.bus.in_flight"),
        ("{message}".into(), "updown")
    );
    assert_eq!(
        value(&points, "orkestra.bus.in_flight", &[(ok_h.0, &ok_h.1)]),
        0.0
    );

    let sent = "messaging.client.sent.messages";
    let to = |t: &'static str| ("messaging.destination.name", t);
    assert_eq!(
        value(
            &points,
            sent,
            &[sys, to(PlaceOrder::TOPIC), ty(PlaceOrder::TYPE_NAME)]
        ),
        3.0
    );
    assert_eq!(
        value(
            &points,
            sent,
            &[sys, to(OrderShipped::TOPIC), ty(OrderShipped::TYPE_NAME)]
        ),
        2.0
    );
    let operation = "messaging.client.operation.duration";
    assert_eq!(shape(&points, operation), ("s".into(), "histogram"));
    let send = ("messaging.operation.name", "send");
    assert_eq!(
        value(&points, operation, &[sys, send, to(PlaceOrder::TOPIC)]),
        3.0
    );
    assert_eq!(
        value(
            &points,
            operation,
            &[
                sys,
                ("messaging.operation.name", "call"),
                to(PlaceOrder::TOPIC)
            ]
        ),
        1.0
    );
}

/// The same on RabbitMQ: a handler that succeeds, one that fails past its one retry
/// (retried through the broker's wait queue, then dead-lettered), a call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rabbitmq_bus_records_every_handler_instrument() {
    meters();
    let Some(bus) = rabbit_bus().await else {
        return;
    };
    let (ok, failing) = (unique("RmqOk"), unique("RmqFail"));
    bus.subscribe(Subscription::command(
        ok.clone(),
        |_: Command<PlaceOrder>, _| async { Ok(Value::Null) },
    ))
    .await
    .unwrap();
    bus.subscribe(
        Subscription::command(failing.clone(), |_: Command<CreateAccount>, _| async {
            Err(HandlerError::fail("down"))
        })
        .with_max_retries(1),
    )
    .await
    .unwrap();
    let mut dead = bus.dead_letters().await.unwrap();
    bus.dispatch(place_order()).await.unwrap();
    bus.dispatch(create_account()).await.unwrap();
    let call = bus
        .call(place_order(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(call.status(), CommandStatus::Succeeded);
    let letter = tokio::time::timeout(Duration::from_secs(20), dead.recv())
        .await
        .expect("dead-lettered within 20 s")
        .unwrap();
    assert_eq!(letter.handler(), failing);

    let sys = ("messaging.system", "rabbitmq");
    let (ok_h, fail_h) = (("orkestra.handler", &*ok), ("orkestra.handler", &*failing));
    let ty = |t: &'static str| ("orkestra.message.type", t);
    // The first command may still be settling: wait for its count.
    let deadline = Instant::now() + Duration::from_secs(10);
    let points = loop {
        let points = collect();
        let done = points.iter().any(|p| {
            p.name == "messaging.client.consumed.messages"
                && p.attributes.get("orkestra.handler") == Some(&ok)
                && p.value == 2.0
        });
        if done || Instant::now() > deadline {
            break points;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let consumed = "messaging.client.consumed.messages";
    assert_eq!(value(&points, consumed, &[sys, ok_h]), 2.0);
    assert_eq!(value(&points, consumed, &[sys, fail_h]), 2.0);
    let process = "messaging.process.duration";
    assert_eq!(
        value(
            &points,
            process,
            &[
                sys,
                ok_h,
                ty(PlaceOrder::TYPE_NAME),
                ("orkestra.outcome", "success")
            ]
        ),
        2.0
    );
    assert_eq!(
        value(
            &points,
            process,
            &[
                sys,
                fail_h,
                ty(CreateAccount::TYPE_NAME),
                ("orkestra.outcome", "failure")
            ]
        ),
        2.0
    );
    assert_eq!(value(&points, "orkestra.handler.retries", &[fail_h]), 1.0);
    assert_eq!(
        value(
            &points,
            "orkestra.dead_letters",
            &[fail_h, ("orkestra.dead_letter.reason", "exhausted")]
        ),
        1.0
    );
    assert_eq!(value(&points, "orkestra.bus.in_flight", &[ok_h]), 0.0);
    let to = |t: &'static str| ("messaging.destination.name", t);
    // Sent: two PlaceOrder (a dispatch, a call), and one CreateAccount, on this bus's
    // topics (other RabbitMQ tests of this binary send nothing).
    assert_eq!(
        value(
            &points,
            "messaging.client.sent.messages",
            &[sys, to(PlaceOrder::TOPIC), ty(PlaceOrder::TYPE_NAME)]
        ),
        2.0
    );
    let operation = "messaging.client.operation.duration";
    let op = |name: &'static str| ("messaging.operation.name", name);
    assert_eq!(
        value(
            &points,
            operation,
            &[sys, op("send"), to(PlaceOrder::TOPIC)]
        ),
        1.0
    );
    assert_eq!(
        value(
            &points,
            operation,
            &[sys, op("call"), to(PlaceOrder::TOPIC)]
        ),
        1.0
    );
}

fn event_data() -> EventData {
    EventData::from_event(
        &Event::new(
            AccountCreated {
                account_id: "a1".into(),
            },
            Metadata::new(),
        )
        .unwrap(),
    )
    .unwrap()
}

async fn appends_are_timed(store: Store, label: &str) {
    let count = |points: &[Point]| {
        points
            .iter()
            .find(|p| {
                p.name == "orkestra.store.append.duration"
                    && p.attributes.get("orkestra.store").map(String::as_str) == Some(label)
            })
            .map_or(0.0, |p| p.value)
    };
    let before = count(&collect());
    let stream = unique("metrics-account");
    for _ in 0..3 {
        store
            .append(&stream, ExpectedVersion::Any, vec![event_data()])
            .await
            .unwrap();
    }
    let points = collect();
    // Other tests may append to the same kind of store meanwhile: at least ours.
    assert!(
        count(&points) >= before + 3.0,
        "{label}: {}",
        count(&points)
    );
    let p = points
        .iter()
        .find(|p| p.name == "orkestra.store.append.duration")
        .unwrap();
    assert_eq!((p.unit.as_str(), p.kind), ("s", "histogram"));
    assert_eq!(p.attributes.len(), 1, "only the store: {:?}", p.attributes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_times_its_appends() {
    meters();
    appends_are_timed(Store::memory(), "memory").await;
    let dir = std::env::temp_dir().join(unique("orkestra-metrics"));
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = Store::sqlite(dir.join("events.db")).await.unwrap();
    appends_are_timed(sqlite, "sqlite").await;
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(pg) = postgres_store().await {
        appends_are_timed(pg, "postgres").await;
    }
}

/// 10,000 messages, each with its own id, correlation id and payload, keep the series
/// count where 100 left it; no attribute value anywhere is an id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_distinct_messages_keep_the_series_count_flat() {
    meters();
    let bus = Bus::in_process();
    let handler = unique("Flat");
    bus.subscribe(Subscription::events(
        handler.clone(),
        |ev: Event<Ping>, _| async move {
            if ev.data.n % 7 == 0 {
                Err(HandlerError::reject("sevens"))
            } else {
                Ok(())
            }
        },
    ))
    .await
    .unwrap();
    let mut ids = std::collections::HashSet::new();
    let mut publish = async |from: i64, to: i64| {
        for n in from..to {
            let ping = Event::new(Ping { n }, Metadata::new()).unwrap();
            ids.insert(ping.id.clone());
            ids.insert(ping.metadata.correlation_id.clone());
            bus.publish(EventEnvelope::wrap(ping)).await.unwrap();
        }
    };
    let ours = |points: &[Point]| {
        points
            .iter()
            .filter(|p| {
                p.attributes
                    .values()
                    .any(|v| v == &handler || v == Ping::TOPIC)
            })
            .count()
    };
    publish(0, 100).await;
    let after_100 = ours(&collect());
    publish(100, 10_100).await;
    let points = collect();
    assert_eq!(
        ours(&points),
        after_100,
        "series grew with distinct messages"
    );
    assert!(after_100 >= 4, "{after_100}");
    for point in &points {
        for value in point.attributes.values() {
            assert!(
                !ids.contains(value) && uuid::Uuid::parse_str(value).is_err(),
                "{} has an id as an attribute: {value}",
                point.name
            );
        }
    }
}

/// A projection's partitions show as owned with their lag; a failed one is not owned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_report_lag_and_owned_partitions() {
    meters();
    let store = Store::memory();
    for i in 0..5 {
        let placed = Event::new(
            OrderPlaced {
                order_id: format!("o{i}"),
                quantity: 1,
            },
            Metadata::new(),
        )
        .unwrap();
        store
            .append(
                &format!("order-{i}"),
                ExpectedVersion::Any,
                vec![EventData::from_event(&placed).unwrap()],
            )
            .await
            .unwrap();
    }
    let (fine, broken) = (unique("metrics-fine"), unique("metrics-broken"));
    let running = Projections::new(store.clone())
        .add(Projection::new(fine.clone(), Counting(false)).with_partitions(2))
        .add(Projection::new(broken.clone(), Counting(true)).with_max_retries(0))
        .start()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let states: Vec<_> = running.status().into_iter().map(|s| s.state).collect();
        let settled = states
            .iter()
            .filter(|s| matches!(s, ProjectionState::Live | ProjectionState::Failed(_)))
            .count();
        if settled == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{states:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let points = collect();
    let worker = |w: &str| ("orkestra.worker", w.to_owned());
    let w = worker(&fine);
    assert_eq!(
        shape(&points, "orkestra.runner.owned"),
        ("{partition}".into(), "gauge")
    );
    assert_eq!(value(&points, "orkestra.runner.owned", &[(w.0, &w.1)]), 2.0);
    for partition in ["0", "1"] {
        let at = [(w.0, &*w.1), ("orkestra.partition", partition)];
        assert_eq!(value(&points, "orkestra.runner.lag", &at), 0.0);
        assert_eq!(value(&points, "orkestra.runner.lag.age", &at), 0.0);
    }
    assert_eq!(
        shape(&points, "orkestra.runner.lag.age"),
        ("s".into(), "gauge")
    );
    let b = worker(&broken);
    assert_eq!(value(&points, "orkestra.runner.owned", &[(b.0, &b.1)]), 0.0);
    assert!(
        !points.iter().any(|p| p.name == "orkestra.runner.lag"
            && p.attributes.get("orkestra.worker") == Some(&broken))
    );
    running.stop().await.unwrap();
    let points = collect();
    assert!(
        !points.iter().any(|p| p.name == "orkestra.runner.owned"
            && p.attributes.get("orkestra.worker") == Some(&fine)),
        "a stopped projection is no longer reported"
    );
}

/// Handles every `OrderPlaced`, or fails on each when `.0`.
#[derive(Clone)]
struct Counting(bool);

impl ProjectionHandler for Counting {
    type Event = Event<OrderPlaced>;

    async fn handle(
        &self,
        _event: Event<OrderPlaced>,
        _ctx: ProjectionContext<'_>,
    ) -> Result<(), HandlerError> {
        if self.0 {
            Err(HandlerError::fail("broken on purpose"))
        } else {
            Ok(())
        }
    }
}
