//! The bus's channels on the real broker: a publishing channel the bus stops using (the
//! broker refused a message on it) is closed with its reply consumer, so a long incident
//! does not pile channels up to `channel_max`; calls still get their replies after.

mod support;

use std::time::Duration;

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ConnectionProperties};
use orkestra_runtime::{
    BusError, Command, CommandEnvelope, CommandStatus, Metadata, Payload, Subscription,
};
use serde_json::json;
use support::payloads::{CreateAccount, PlaceOrder};
use support::services::{amqp_url, rabbit_bus_with, rabbit_config, rabbitmqctl};

fn order() -> Command<PlaceOrder> {
    Command::from_json(json!({"product_id": "sku", "quantity": 1}), Metadata::new()).unwrap()
}

/// How many channels the broker counts on the connection whose name contains `prefix`
/// (`rabbitmqctl list_connections client_properties channels`: the name is the
/// `connection_name` client property); `None` without `rabbitmqctl`.
fn channels_of(prefix: &str) -> Option<u32> {
    let out = rabbitmqctl(&["list_connections", "-q", "client_properties", "channels"])?;
    let counts: Vec<u32> = out
        .lines()
        .filter(|l| l.contains(prefix))
        .filter_map(|l| l.rsplit('\t').next()?.trim().parse().ok())
        .collect();
    assert_eq!(counts.len(), 1, "one connection for {prefix}: {out}");
    Some(counts[0])
}

/// Declares a queue that refuses every message (length 0, `reject-publish`) bound to
/// the PlaceOrder topic of the bus with this prefix: each dispatch of one is nacked, and
/// the bus stops using its publishing channel. The connection keeps it declared.
async fn refuse_place_order(prefix: &str) -> Connection {
    let conn = Connection::connect(amqp_url().expose(), ConnectionProperties::default())
        .await
        .unwrap();
    let raw = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    args.insert("x-expires".into(), AMQPValue::LongLongInt(120_000));
    let full = format!("{prefix}.full");
    raw.queue_declare(full.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    raw.queue_bind(
        full.as_str().into(),
        format!("{prefix}.commands").as_str().into(),
        PlaceOrder::TOPIC.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_publishes_do_not_leak_channels() {
    let mut config = rabbit_config();
    config.bus.confirm_timeout_ms = 2_000;
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    if rabbitmqctl(&["list_connections", "-q", "name"]).is_none() {
        support::services::unavailable("rabbitmqctl", &"not installed or not allowed");
        return;
    }
    let prefix = config.bus.prefix.clone();
    let conn = refuse_place_order(&prefix).await;
    bus.subscribe(Subscription::command(
        "CreateAccountHandler",
        |_: Command<CreateAccount>, _| async { Ok(json!("created")) },
    ))
    .await
    .unwrap();

    let before = channels_of(&prefix).unwrap();
    for cycle in 0..30 {
        let refused = bus.dispatch(CommandEnvelope::wrap(order())).await;
        assert!(
            matches!(refused, Err(BusError::Broker(_))),
            "cycle {cycle}: {refused:?}"
        );
    }
    // Retired channels close once nothing waits on them (at once here).
    let mut after = channels_of(&prefix).unwrap();
    for _ in 0..20 {
        if after <= before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = channels_of(&prefix).unwrap();
    }
    eprintln!("channels before: {before}, after 30 refused publishes: {after}");
    assert!(
        after <= before,
        "channels grew from {before} to {after} over 30 refused publishes"
    );

    // The new publishing channel consumes replies: a call still gets its answer.
    let create = Command::<CreateAccount>::from_json(
        json!({"email": "a@example.com", "name": "A"}),
        Metadata::new(),
    )
    .unwrap();
    let receipt = bus
        .call(CommandEnvelope::wrap(create), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(receipt.status(), CommandStatus::Succeeded);
    conn.close(200, "done".into()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_on_a_retired_channel_still_gets_its_reply() {
    let mut config = rabbit_config();
    config.bus.confirm_timeout_ms = 2_000;
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    let conn = refuse_place_order(&config.bus.prefix).await;
    bus.subscribe(Subscription::command(
        "SlowAccounts",
        |_: Command<CreateAccount>, _| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(json!("created"))
        },
    ))
    .await
    .unwrap();
    let create = Command::<CreateAccount>::from_json(
        json!({"email": "a@example.com", "name": "A"}),
        Metadata::new(),
    )
    .unwrap();
    let caller = bus.clone();
    let call = tokio::spawn(async move {
        caller
            .call(CommandEnvelope::wrap(create), Duration::from_secs(20))
            .await
    });
    // While the handler runs, the channel the call went out on is retired.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = bus.dispatch(CommandEnvelope::wrap(order())).await;
    assert!(matches!(refused, Err(BusError::Broker(_))), "{refused:?}");
    let receipt = call.await.unwrap().unwrap();
    assert_eq!(
        receipt.status(),
        CommandStatus::Succeeded,
        "the reply came back on the retired channel"
    );
    conn.close(200, "done".into()).await.unwrap();
}
