//! The seed's log lines on RabbitMQ, captured as JSON: `Command handler subscribed`,
//! `Event handler subscribed`, `Handler nack, requeuing` and `Dead letter recorded`, each
//! with its fields and the `orkestra` field naming the component.
//!
//! Its own binary: consumers log on the runtime's worker threads, so the capture is a
//! global subscriber.

mod support;

use std::time::Duration;
use support::logs::LogBuffer;

use orkestra_runtime::{Command, CommandEnvelope, HandlerError, Metadata, Payload, Subscription};
use serde_json::{Value, json};
use support::payloads::{CreateAccount, OrderAuditEvent, PlaceOrder};
use support::services::{rabbit_bus_with, rabbit_config};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;

/// The captured lines that carry an `orkestra` field (the bus's own lines).
fn bus_lines(logs: &LogBuffer) -> Vec<Value> {
    logs.json_lines()
        .into_iter()
        .filter(|l| l["fields"].get("orkestra").is_some())
        .collect()
}

/// `line` has this level and message and at least these fields.
fn assert_line(line: &Value, level: &str, message: &str, fields: &Value) {
    assert_eq!(line["level"], level, "{line}");
    assert_eq!(line["fields"]["message"], message, "{line}");
    for (key, value) in fields.as_object().unwrap() {
        assert_eq!(&line["fields"][key], value, "field {key} of {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_log_lines_with_their_fields() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let layer = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(move || writer.clone())
        .with_filter(Targets::new().with_target("orkestra_runtime", tracing::Level::INFO));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer)).unwrap();

    let config = rabbit_config();
    let prefix = config.bus.prefix.clone();
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    let mut dead = bus.dead_letters().await.unwrap();
    bus.subscribe(
        Subscription::command("PlaceOrderHandler", |_: Command<PlaceOrder>, _| async {
            Err(HandlerError::fail("timeout"))
        })
        .with_max_retries(2),
    )
    .await
    .unwrap();
    bus.subscribe(Subscription::events(
        "OrderAudit",
        |_: OrderAuditEvent, _| async { Ok(()) },
    ))
    .await
    .unwrap();
    let cmd = Command::<PlaceOrder>::from_json(
        json!({"product_id": "sku", "quantity": 1}),
        Metadata::new(),
    )
    .unwrap();
    bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    // The dead letter is recorded (and logged) before it is published.
    let letter = tokio::time::timeout(Duration::from_secs(20), dead.recv())
        .await
        .expect("the command was dead-lettered")
        .unwrap();
    assert_eq!(letter.attempts(), 3);

    let lines = bus_lines(&logs);
    let summary: Vec<_> = lines
        .iter()
        .map(|l| format!("{} {}", l["level"], l["fields"]["message"]))
        .collect();
    assert_eq!(
        summary,
        [
            r#""INFO" "Command handler subscribed""#,
            r#""INFO" "Event handler subscribed""#,
            r#""WARN" "Handler nack, requeuing""#,
            r#""WARN" "Handler nack, requeuing""#,
            r#""ERROR" "Dead letter recorded""#,
        ],
        "exactly the seed's lines, in order: {lines:#?}"
    );
    assert_line(
        &lines[0],
        "INFO",
        "Command handler subscribed",
        &json!({
            "handler": "PlaceOrderHandler",
            "topic": PlaceOrder::TOPIC,
            "queue": format!("{prefix}.cmd.{}", PlaceOrder::TOPIC),
            "orkestra": "command_handler",
        }),
    );
    assert_line(
        &lines[1],
        "INFO",
        "Event handler subscribed",
        &json!({
            "handler": "OrderAudit",
            "topic": "orders.events.#",
            "queue": format!("{prefix}.evt.OrderAudit"),
            "orkestra": "event_handler",
        }),
    );
    for (line, attempt) in lines[2..4].iter().zip(1..) {
        assert_line(
            line,
            "WARN",
            "Handler nack, requeuing",
            &json!({
                "handler": "PlaceOrderHandler",
                "attempt": attempt,
                "max_retries": 2,
                "orkestra": "rabbitmq",
            }),
        );
    }
    assert_line(
        &lines[4],
        "ERROR",
        "Dead letter recorded",
        &json!({
            "handler": "PlaceOrderHandler",
            "reason": "timeout",
            "orkestra": "rabbitmq",
        }),
    );

    // A rejection is an answer: one INFO line with the handler and the reason.
    bus.subscribe(Subscription::command(
        "Accounts",
        |_: Command<CreateAccount>, _| async { Err(HandlerError::reject("email taken")) },
    ))
    .await
    .unwrap();
    let create = Command::<CreateAccount>::from_json(
        json!({"email": "a@example.com", "name": "A"}),
        Metadata::new(),
    )
    .unwrap();
    let receipt = bus
        .call(CommandEnvelope::wrap(create), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(receipt.error(), Some("email taken"));
    let lines = bus_lines(&logs);
    let rejected: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "Handler rejected the message")
        .collect();
    assert_eq!(rejected.len(), 1, "{lines:#?}");
    assert_line(
        rejected[0],
        "INFO",
        "Handler rejected the message",
        &json!({
            "handler": "Accounts",
            "topic": CreateAccount::TOPIC,
            "reason": "email taken",
            "orkestra": "rabbitmq",
        }),
    );
    assert!(
        !lines
            .iter()
            .any(|l| l["fields"]["message"] == "Dead letter recorded"
                && l["fields"]["handler"] == "Accounts"),
        "a rejection is not a dead letter: {lines:#?}"
    );
}
