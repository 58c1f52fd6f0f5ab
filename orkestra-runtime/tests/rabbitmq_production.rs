//! What a busy RabbitMQ deployment needs, against the local broker: a dropped bus leaves
//! no connection or consumer behind, finished envelopes are not sent again, an
//! unreachable cluster is named in full.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use orkestra_runtime::{
    Bus, BusError, Command, CommandEnvelope, Metadata, SecretUrl, Subscription,
};
use serde_json::json;
use support::payloads::PlaceOrder;
use support::services::{rabbit_bus_with, rabbit_config, rabbitmqctl, required};

fn order(quantity: i64) -> Command<PlaceOrder> {
    Command::from_json(
        json!({"product_id": "sku", "quantity": quantity}),
        Metadata::new(),
    )
    .unwrap()
}

/// How many connections and consumers of the broker mention `prefix`.
fn broker_view(prefix: &str) -> (usize, usize) {
    let connections = rabbitmqctl(&["list_connections", "-q", "client_properties"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(prefix))
        .count();
    let consumers = rabbitmqctl(&["list_consumers", "-q", "queue_name"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(prefix))
        .count();
    (connections, consumers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_bus_leaves_no_connection_and_no_consumer() {
    if rabbitmqctl(&["status"]).is_none() {
        assert!(
            !required(),
            "rabbitmqctl is required (ORKESTRA_REQUIRE_SERVICES=1)"
        );
        eprintln!("SKIPPED: rabbitmqctl cannot read the local broker");
        return;
    }
    let config = rabbit_config();
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    let handled = Arc::new(AtomicU32::new(0));
    let h = handled.clone();
    bus.subscribe(Subscription::command(
        "DroppedLedger",
        move |_: Command<PlaceOrder>, _| {
            h.fetch_add(1, Ordering::SeqCst);
            async { Ok(json!(null)) }
        },
    ))
    .await
    .unwrap();
    let _letters = bus.dead_letters().await.unwrap();
    bus.dispatch(CommandEnvelope::wrap(order(1))).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while handled.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "handled before the drop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let prefix = config.bus.prefix.clone();
    let (connections, consumers) = broker_view(&prefix);
    assert_eq!(connections, 1, "one connection while the bus lives");
    assert!(consumers >= 1, "its consumer is registered");

    drop(bus);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = broker_view(&prefix);
        if view == (0, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the drop the broker still shows (connections, consumers) = {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_dispatching_a_dispatched_or_finished_envelope_publishes_nothing() {
    let Some(bus) = rabbit_bus_with(&rabbit_config()).await else {
        return;
    };
    let handled = Arc::new(AtomicU32::new(0));
    let h = handled.clone();
    bus.subscribe(Subscription::command(
        "OnceLedger",
        move |_: Command<PlaceOrder>, _| {
            h.fetch_add(1, Ordering::SeqCst);
            async { Ok(json!(null)) }
        },
    ))
    .await
    .unwrap();
    let receipt = bus.dispatch(CommandEnvelope::wrap(order(1))).await.unwrap();
    let again = bus.dispatch(receipt.clone()).await;
    assert!(matches!(again, Err(BusError::Envelope(_))), "{again:?}");
    let finished = receipt.mark_succeeded(json!(null));
    let again = bus.dispatch(finished).await;
    assert!(matches!(again, Err(BusError::Envelope(_))), "{again:?}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(handled.load(Ordering::SeqCst), 1, "only the first was sent");
}

#[tokio::test]
async fn a_cluster_with_no_reachable_node_names_every_url_without_passwords() {
    let mut config = rabbit_config();
    config.bus.urls = vec![
        SecretUrl::new("amqp://guest:pw-one@127.0.0.1:1/%2f"),
        SecretUrl::new("amqp://guest:pw-two@127.0.0.1:2/%2f"),
    ];
    let started = Instant::now();
    let err = Bus::from_config(&config).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(25), "no hang");
    let text = format!("{err} {err:?}");
    assert!(text.contains("bus.urls"), "{text}");
    assert!(text.contains("guest:***@127.0.0.1:1/"), "{text}");
    assert!(text.contains("guest:***@127.0.0.1:2/"), "{text}");
    assert!(
        !text.contains("pw-one") && !text.contains("pw-two"),
        "{text}"
    );
}

#[tokio::test]
async fn the_first_reachable_url_of_the_list_is_used() {
    let mut config = rabbit_config();
    config.bus.urls = vec![
        SecretUrl::new("amqp://guest:guest@127.0.0.1:1/%2f"),
        support::services::amqp_url(),
    ];
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    let handled = Arc::new(AtomicU32::new(0));
    let h = handled.clone();
    bus.subscribe(Subscription::command(
        "FailoverLedger",
        move |_: Command<PlaceOrder>, _| {
            h.fetch_add(1, Ordering::SeqCst);
            async { Ok(json!(null)) }
        },
    ))
    .await
    .unwrap();
    bus.dispatch(CommandEnvelope::wrap(order(1))).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while handled.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "handled through the second URL");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Handles `PlaceOrder` by recording its id after `delay` (32 at once).
fn recording(
    name: &'static str,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    delay: Duration,
) -> Subscription {
    Subscription::command(name, move |cmd: Command<PlaceOrder>, _| {
        let seen = seen.clone();
        async move {
            tokio::time::sleep(delay).await;
            seen.lock().unwrap().push(cmd.id.clone());
            Ok(json!(null))
        }
    })
    .with_concurrency(32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_1000_in_flight_loses_none_and_handles_none_twice() {
    let mut config = rabbit_config();
    config.bus.queue_expiry_ms = Some(300_000);
    let (Some(producer), Some(first)) = (
        rabbit_bus_with(&config).await,
        rabbit_bus_with(&config).await,
    ) else {
        return;
    };
    let before: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    first
        .subscribe(recording(
            "ShutdownLedger",
            before.clone(),
            Duration::from_millis(100),
        ))
        .await
        .unwrap();
    let commands: Vec<Command<PlaceOrder>> = (0..1000).map(|i| order(i % 100 + 1)).collect();
    let ids: Vec<String> = commands.iter().map(|c| c.id.clone()).collect();
    let sends = commands
        .into_iter()
        .map(|cmd| producer.dispatch(CommandEnvelope::wrap(cmd)));
    for sent in futures_util::future::join_all(sends).await {
        sent.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while before.lock().unwrap().len() < 100 {
        assert!(Instant::now() < deadline, "the first consumer got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.shutdown(Duration::from_secs(5)).await.unwrap();
    let handled_before = before.lock().unwrap().len();
    assert!(
        handled_before < 1000,
        "shut down mid-flight ({handled_before})"
    );
    let again = first.dispatch(CommandEnvelope::wrap(order(1))).await;
    assert!(matches!(again, Err(BusError::Closed)), "{again:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        before.lock().unwrap().len(),
        handled_before,
        "nothing handled after shutdown returned"
    );

    let Some(second) = rabbit_bus_with(&config).await else {
        return;
    };
    let after: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    second
        .subscribe(recording("ShutdownLedger", after.clone(), Duration::ZERO))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while before.lock().unwrap().len() + after.lock().unwrap().len() < 1000 {
        assert!(
            Instant::now() < deadline,
            "the rest reached the second consumer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut all: Vec<String> = before.lock().unwrap().clone();
    all.extend(after.lock().unwrap().iter().cloned());
    assert_eq!(all.len(), 1000, "none handled twice");
    let all: std::collections::HashSet<String> = all.into_iter().collect();
    assert_eq!(all.len(), 1000, "none handled twice");
    assert!(ids.iter().all(|id| all.contains(id)), "none lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_cut_off_by_the_deadline_is_redelivered_and_cancelled_wakes_long_handlers() {
    let mut config = rabbit_config();
    config.bus.queue_expiry_ms = Some(300_000);
    let (Some(producer), Some(first)) = (
        rabbit_bus_with(&config).await,
        rabbit_bus_with(&config).await,
    ) else {
        return;
    };
    let started = Arc::new(AtomicU32::new(0));
    let s = started.clone();
    first
        .subscribe(Subscription::command(
            "StubbornLedger",
            move |_: Command<PlaceOrder>, _| {
                s.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(json!(null))
                }
            },
        ))
        .await
        .unwrap();
    let woken = Arc::new(AtomicU32::new(0));
    let w = woken.clone();
    first
        .subscribe(Subscription::events(
            "PatientProjector",
            move |_: orkestra_runtime::Event<support::payloads::OrderPlaced>, ctx| {
                let w = w.clone();
                async move {
                    ctx.cancelled().await;
                    w.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            },
        ))
        .await
        .unwrap();
    let cmd = order(1);
    let id = cmd.id.clone();
    producer.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    let event = orkestra_runtime::Event::<support::payloads::OrderPlaced>::from_json(
        json!({"order_id": "o-1", "quantity": 1}),
        Metadata::new(),
    )
    .unwrap();
    producer
        .publish(orkestra_runtime::EventEnvelope::wrap(event))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while started.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the stubborn handler started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let result = first.shutdown(Duration::from_secs(1)).await;
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "bounded by the deadline"
    );
    assert!(matches!(result, Err(BusError::Timeout(_))), "{result:?}");
    assert_eq!(
        woken.load(Ordering::SeqCst),
        1,
        "ctx.cancelled() woke the patient handler"
    );

    let Some(second) = rabbit_bus_with(&config).await else {
        return;
    };
    let redelivered: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let r = redelivered.clone();
    second
        .subscribe(Subscription::command(
            "StubbornLedger",
            move |cmd: Command<PlaceOrder>, _| {
                r.lock().unwrap().push(cmd.id.clone());
                async { Ok(json!(null)) }
            },
        ))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while redelivered.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the cut-off delivery came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*redelivered.lock().unwrap(), vec![id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_shutdown_the_broker_shows_no_connection_and_no_consumer() {
    if rabbitmqctl(&["status"]).is_none() {
        assert!(
            !required(),
            "rabbitmqctl is required (ORKESTRA_REQUIRE_SERVICES=1)"
        );
        return;
    }
    let config = rabbit_config();
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    bus.subscribe(Subscription::command(
        "ClosingLedger",
        |_: Command<PlaceOrder>, _| async { Ok(json!(null)) },
    ))
    .await
    .unwrap();
    assert_eq!(broker_view(&config.bus.prefix).0, 1);
    bus.shutdown(Duration::from_secs(2)).await.unwrap();
    assert_eq!(broker_view(&config.bus.prefix), (0, 0));
    let late = bus
        .subscribe(Subscription::command(
            "LateLedger",
            |_: Command<PlaceOrder>, _| async { Ok(json!(null)) },
        ))
        .await;
    assert!(matches!(late, Err(BusError::Closed)), "{late:?}");
}
