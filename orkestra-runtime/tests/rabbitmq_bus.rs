//! The RabbitMQ bus against the local broker: the same conformance suite as the
//! in-process bus, then what only a broker adds (competing consumers across processes,
//! delayed retries, dead letters with their headers, malformed messages, secrets).

mod support;

use orkestra_runtime::Bus;

bus_suite!(support::services::rabbit_bus());

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use orkestra_runtime::{
    Command, CommandEnvelope, CommandStatus, HandlerError, Metadata, Subscription,
};
use serde_json::json;
use support::payloads::PlaceOrder;
use support::services::{amqp_url, rabbit_bus_with, rabbit_config};

fn order(quantity: i64) -> Command<PlaceOrder> {
    Command::from_json(
        json!({"product_id": "sku", "quantity": quantity}),
        Metadata::new(),
    )
    .unwrap()
}

async fn raw_channel() -> lapin::Channel {
    let conn = Connection::connect(amqp_url().expose(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    std::mem::forget(conn); // keep the connection open for the test's life
    channel
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_consumers_across_two_bus_instances_handle_each_command_once() {
    let config = rabbit_config();
    let (Some(a), Some(b)) = (
        rabbit_bus_with(&config).await,
        rabbit_bus_with(&config).await,
    ) else {
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (name, bus) in [("a", &a), ("b", &b)] {
        let tx = tx.clone();
        bus.subscribe(Subscription::command(
            "PlaceOrderHandler",
            move |cmd: Command<PlaceOrder>, _| {
                let tx = tx.clone();
                async move {
                    tx.send((name, cmd.quantity)).unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok(json!(null))
                }
            },
        ))
        .await
        .unwrap();
    }
    for i in 0..40 {
        let receipt = a
            .dispatch(CommandEnvelope::wrap(order(i + 1)))
            .await
            .unwrap();
        assert_eq!(
            receipt.status(),
            CommandStatus::Dispatched,
            "the broker confirmed it"
        );
    }
    let mut seen = Vec::new();
    while seen.len() < 40 {
        seen.push(
            tokio::time::timeout(Duration::from_secs(20), rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let mut quantities: Vec<i64> = seen.iter().map(|(_, q)| *q).collect();
    quantities.sort();
    assert_eq!(
        quantities,
        (1..=40).collect::<Vec<_>>(),
        "each command handled exactly once"
    );
    assert!(
        seen.iter().any(|(n, _)| *n == "a") && seen.iter().any(|(n, _)| *n == "b"),
        "both instances took work"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "no duplicates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_failing_handler_runs_max_retries_plus_one_times_with_delays() {
    let mut config = rabbit_config();
    config.bus.retry_delay_ms = 300;
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    let mut dead = bus.dead_letters().await.unwrap();
    let runs = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let r = runs.clone();
    bus.subscribe(
        Subscription::command("Broken", move |_: Command<PlaceOrder>, _| {
            r.lock().unwrap().push(Instant::now());
            async { Err(HandlerError::fail("disk full")) }
        })
        .with_max_retries(5),
    )
    .await
    .unwrap();
    bus.dispatch(CommandEnvelope::wrap(order(1)).max_retries(2))
        .await
        .unwrap();
    let letter = tokio::time::timeout(Duration::from_secs(20), dead.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(letter.handler(), "Broken");
    assert_eq!(letter.topic(), "orders.commands.place_order");
    assert_eq!(letter.reason(), "disk full");
    assert_eq!(
        letter.attempts(),
        3,
        "x-max-retries from the envelope (2) wins over the binding's 5"
    );
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 3, "exactly max_retries + 1 runs");
    for pair in runs.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(280),
            "retry delay honoured: {:?}",
            pair[1] - pair[0]
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(800), dead.recv())
            .await
            .is_err(),
        "one dead letter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_and_odd_headers_never_stop_the_consumer() {
    let config = rabbit_config();
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    let mut dead = bus.dead_letters().await.unwrap();
    let handled = Arc::new(AtomicU32::new(0));
    let h = handled.clone();
    bus.subscribe(Subscription::command(
        "Sturdy",
        move |_: Command<PlaceOrder>, _| {
            h.fetch_add(1, Ordering::SeqCst);
            async { Ok(json!(null)) }
        },
    ))
    .await
    .unwrap();
    let channel = raw_channel().await;
    let exchange = format!("{}.commands", config.bus.prefix);
    let publish = |body: Vec<u8>, headers: FieldTable| {
        let channel = channel.clone();
        let exchange = exchange.clone();
        async move {
            channel
                .basic_publish(
                    exchange.as_str().into(),
                    "orders.commands.place_order".into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_headers(headers),
                )
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    publish(b"this is not json".to_vec(), FieldTable::default()).await;
    let letter = tokio::time::timeout(Duration::from_secs(20), dead.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        letter.reason().starts_with("undecodable message"),
        "{}",
        letter.reason()
    );
    assert_eq!(letter.attempts(), 1, "undecodable: no retries");

    // A valid message with headers of unexpected AMQP types is still handled.
    let valid = serde_json::to_vec(&json!({
        "kind": "command", "id": uuid::Uuid::new_v4().to_string(), "type": "Test.Orders.PlaceOrder",
        "topic": "orders.commands.place_order", "payload": {"product_id": "p", "quantity": 1},
        "metadata": serde_json::to_value(Metadata::new()).unwrap()
    }))
    .unwrap();
    let mut odd = FieldTable::default();
    odd.insert(
        "x-death".into(),
        AMQPValue::LongString(LongString::from("not a table")),
    );
    odd.insert(
        "x-max-retries".into(),
        AMQPValue::LongString(LongString::from("three")),
    );
    odd.insert("traceparent".into(), AMQPValue::LongLongInt(42));
    odd.insert(
        "nested".into(),
        AMQPValue::FieldTable(FieldTable::default()),
    );
    publish(valid, odd).await;
    bus.dispatch(CommandEnvelope::wrap(order(2))).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while handled.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        handled.load(Ordering::SeqCst),
        2,
        "the consumer is alive and handled both"
    );
}

#[tokio::test]
async fn oversized_messages_are_refused_before_publishing() {
    let mut config = rabbit_config();
    config.bus.max_message_bytes = 512;
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    bus.subscribe(Subscription::command(
        "Any",
        |_: Command<PlaceOrder>, _| async { Ok(json!(null)) },
    ))
    .await
    .unwrap();
    let big = Command::<PlaceOrder>::from_json(
        json!({"product_id": "x".repeat(2000), "quantity": 1}),
        Metadata::new(),
    )
    .unwrap();
    let err = bus.dispatch(CommandEnvelope::wrap(big)).await.unwrap_err();
    assert!(
        matches!(err, orkestra_runtime::BusError::TooLarge { limit: 512, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_password_never_appears_in_errors() {
    // Capture every log line written on this thread while connecting.
    let logs = support::logs::LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut config = rabbit_config();
    config.bus.url = Some(orkestra_runtime::SecretUrl::new(
        "amqp://guest:s3cr3t-pw@127.0.0.1:5672/%2f",
    ));
    let err = Bus::from_config(&config).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("s3cr3t-pw"), "{text}");
    config.bus.url = Some(orkestra_runtime::SecretUrl::new(
        "amqp://guest:s3cr3t-pw@127.0.0.1:1/%2f",
    ));
    let err = Bus::from_config(&config).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("s3cr3t-pw"), "{text}");
    assert!(text.contains("bus.url"), "{text}");
    assert!(!format!("{config:?}").contains("s3cr3t-pw"));
    let logs = logs.text();
    assert!(
        !logs.contains("s3cr3t-pw"),
        "a log line leaked the password: {logs}"
    );
}

/// The error's Display and Debug, and those of every error in its `source()` chain.
fn whole_chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut texts = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        texts.push(format!("{e} | {e:?}"));
        next = e.source();
    }
    texts
}

#[tokio::test]
async fn a_failed_connection_error_hides_the_password_down_its_whole_source_chain() {
    let mut config = rabbit_config();
    for (url, case) in [
        (
            "amqp://guest:s3cr3t-pw@127.0.0.1:5672/%2f",
            "wrong password",
        ),
        (
            "amqp://guest:s3cr3t-pw@127.0.0.1:1/%2f",
            "nothing listening",
        ),
    ] {
        config.bus.url = Some(orkestra_runtime::SecretUrl::new(url));
        let err = Bus::from_config(&config).await.unwrap_err();
        let chain = whole_chain(&err);
        assert!(
            matches!(
                err,
                orkestra_runtime::BusError::Unavailable { .. }
                    | orkestra_runtime::BusError::Broker(_)
            ),
            "{case}: {err:?}"
        );
        for text in &chain {
            assert!(!text.contains("s3cr3t-pw"), "{case}: {text}");
        }
        assert!(
            chain[0].contains("guest:***@127.0.0.1"),
            "{case}: the URL is named, redacted: {chain:?}"
        );
    }
}
