//! What a busy RabbitMQ deployment needs, against the local broker: a dropped bus leaves
//! no connection or consumer behind, finished envelopes are not sent again, an
//! unreachable cluster is named in full.

mod support;

use std::process::Command as Process;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use orkestra_runtime::{
    Bus, BusError, Command, CommandEnvelope, Metadata, SecretUrl, Subscription,
};
use serde_json::json;
use support::payloads::PlaceOrder;
use support::services::{rabbit_bus_with, rabbit_config, required};

fn order(quantity: i64) -> Command<PlaceOrder> {
    Command::from_json(
        json!({"product_id": "sku", "quantity": quantity}),
        Metadata::new(),
    )
    .unwrap()
}

fn rabbitmqctl(args: &[&str]) -> Option<String> {
    Process::new("rabbitmqctl")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
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
