//! Dead-letter subscriptions on the real broker: a `Subscription::dead_letters` handler
//! receives every dead letter of the bus (a command or an event whose handler is out of
//! retries; never a rejection, which is an answer) with its topic, handler, reason and attempts; a dead-letter handler that
//! fails is retried, then dropped, and never produces another dead letter.

mod support;

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use orkestra_runtime::{
    Command, CommandEnvelope, DeadLetter, DeadLetters, Event, EventEnvelope, HandlerError,
    Metadata, Payload, Subscription,
};
use serde_json::json;
use support::payloads::{OrderPlaced, PlaceOrder};
use support::services::{amqp_url, rabbit_bus_with, rabbit_config};
use tokio::sync::mpsc;

/// How long a test waits for a handler.
const WAIT: Duration = Duration::from_secs(20);
/// How long nothing more must arrive for a test to call it done.
const QUIET: Duration = Duration::from_millis(800);

/// What a dead-letter handler saw.
#[derive(Debug, PartialEq)]
struct Seen {
    topic: String,
    handler: String,
    reason: String,
    attempts: u32,
    message_id: String,
    message_type: String,
}

impl From<&DeadLetter> for Seen {
    fn from(letter: &DeadLetter) -> Self {
        Self {
            topic: letter.topic().to_owned(),
            handler: letter.handler().to_owned(),
            reason: letter.reason().to_owned(),
            attempts: letter.attempts(),
            message_id: letter.message_id().to_owned(),
            message_type: letter.message().type_name().to_owned(),
        }
    }
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for a handler")
        .expect("channel closed")
}

async fn assert_quiet<T: std::fmt::Debug>(rx: &mut mpsc::UnboundedReceiver<T>) {
    if let Ok(Some(extra)) = tokio::time::timeout(QUIET, rx.recv()).await {
        panic!("unexpected extra delivery: {extra:?}");
    }
}

async fn next_letter(dead: &mut DeadLetters) -> DeadLetter {
    tokio::time::timeout(WAIT, dead.recv())
        .await
        .expect("timed out waiting for a dead letter")
        .unwrap()
}

fn order() -> Command<PlaceOrder> {
    Command::from_json(json!({"product_id": "sku", "quantity": 1}), Metadata::new()).unwrap()
}

fn order_placed() -> Event<OrderPlaced> {
    Event::new(
        OrderPlaced {
            order_id: "o1".into(),
            quantity: 1,
        },
        Metadata::new(),
    )
    .unwrap()
}

/// A command handler that fails every command, with no retries: dead-lettered at once.
fn refuser() -> Subscription {
    Subscription::command("Refuser", |_: Command<PlaceOrder>, _| async {
        Err(HandlerError::fail("out of stock"))
    })
    .with_max_retries(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_handler_receives_failed_commands_and_exhausted_events() {
    let config = rabbit_config();
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    let (tx, mut seen) = mpsc::unbounded_channel();
    bus.subscribe(Subscription::dead_letters(
        "Alarm",
        move |letter: DeadLetter, _| {
            let tx = tx.clone();
            async move {
                tx.send(Seen::from(&letter)).unwrap();
                Ok(())
            }
        },
    ))
    .await
    .unwrap();
    bus.subscribe(refuser()).await.unwrap();
    bus.subscribe(
        Subscription::events("Flaky", |_: Event<OrderPlaced>, _| async {
            Err(HandlerError::fail("index down"))
        })
        .with_max_retries(2),
    )
    .await
    .unwrap();

    let cmd = order();
    let cmd_id = cmd.id.clone();
    bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    assert_eq!(
        recv(&mut seen).await,
        Seen {
            topic: PlaceOrder::TOPIC.into(),
            handler: "Refuser".into(),
            reason: "out of stock".into(),
            attempts: 1,
            message_id: cmd_id,
            message_type: PlaceOrder::TYPE_NAME.into(),
        },
        "a failure with no retries left is dead-lettered at once"
    );

    let event = order_placed();
    let event_id = event.id.clone();
    bus.publish(EventEnvelope::wrap(event)).await.unwrap();
    assert_eq!(
        recv(&mut seen).await,
        Seen {
            topic: OrderPlaced::TOPIC.into(),
            handler: "Flaky".into(),
            reason: "index down".into(),
            attempts: 3,
            message_id: event_id,
            message_type: OrderPlaced::TYPE_NAME.into(),
        },
        "a failure is dead-lettered after max_retries + 1 runs"
    );
    assert_quiet(&mut seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_dead_letter_handler_produces_no_further_dead_letter() {
    let config = rabbit_config();
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    let mut dead = bus.dead_letters().await.unwrap();
    let (tx, mut runs) = mpsc::unbounded_channel();
    bus.subscribe(
        Subscription::dead_letters("Alarm", move |letter: DeadLetter, ctx| {
            let tx = tx.clone();
            async move {
                tx.send((letter.message_id().to_owned(), ctx.attempt()))
                    .unwrap();
                Err(HandlerError::fail("pager down"))
            }
        })
        .with_max_retries(1),
    )
    .await
    .unwrap();
    bus.subscribe(refuser()).await.unwrap();

    let cmd = order();
    let id = cmd.id.clone();
    bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    assert_eq!(recv(&mut runs).await, (id.clone(), 1));
    assert_eq!(
        recv(&mut runs).await,
        (id.clone(), 2),
        "the dead-letter handler is retried up to its limit"
    );
    assert_quiet(&mut runs).await;

    let letter = next_letter(&mut dead).await;
    assert_eq!(
        (letter.handler(), letter.message_id()),
        ("Refuser", id.as_str())
    );
    if let Ok(Ok(extra)) = tokio::time::timeout(QUIET, dead.recv()).await {
        panic!(
            "a second dead letter (from {:?}, reason {:?}): the failing dead-letter handler looped",
            extra.handler(),
            extra.reason()
        );
    }

    // The durable catch-all queue, which nobody consumes, holds exactly that one letter.
    let conn = Connection::connect(amqp_url().expose(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let catch_all = channel
        .queue_declare(
            format!("{}.deadletter.all", config.bus.prefix)
                .as_str()
                .into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        catch_all.message_count(),
        1,
        "one letter per original message"
    );
    conn.close(200, "done".into()).await.unwrap();
}

/// When the broker opened the connection of the bus whose prefix is `prefix`
/// (`rabbitmqctl list_connections client_properties connected_at`); `None` without `rabbitmqctl`.
fn connected_at(prefix: &str) -> Option<String> {
    let out = support::services::rabbitmqctl(&[
        "list_connections",
        "-q",
        "client_properties",
        "connected_at",
    ])?;
    let found: Vec<&str> = out.lines().filter(|l| l.contains(prefix)).collect();
    assert_eq!(found.len(), 1, "one connection for {prefix}: {out}");
    Some(found[0].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mebibyte_failure_reason_is_cut_and_the_connection_stays_up() {
    let config = rabbit_config();
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    let (tx, mut seen) = mpsc::unbounded_channel();
    bus.subscribe(Subscription::dead_letters(
        "Alarm",
        move |letter: DeadLetter, _| {
            let tx = tx.clone();
            async move {
                tx.send(Seen::from(&letter)).unwrap();
                Ok(())
            }
        },
    ))
    .await
    .unwrap();
    bus.subscribe(
        Subscription::command("Verbose", |_: Command<PlaceOrder>, _| async {
            Err(HandlerError::fail("x".repeat(1 << 20)))
        })
        .with_max_retries(0),
    )
    .await
    .unwrap();
    let opened = connected_at(&config.bus.prefix);

    for _ in 0..2 {
        let cmd = order();
        let id = cmd.id.clone();
        bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
        let letter = recv(&mut seen).await;
        assert_eq!(
            (letter.handler.as_str(), letter.message_id.as_str()),
            ("Verbose", id.as_str())
        );
        assert!(
            letter.reason.len() <= 4096,
            "the reason is cut to a few KiB, not {} bytes",
            letter.reason.len()
        );
        assert!(
            letter.reason.starts_with("xxxxxxxx")
                && letter.reason.ends_with("[cut: 1048576 bytes in all]"),
            "the cut reason keeps its start and says it was cut: …{}",
            &letter.reason[letter.reason.len().saturating_sub(60)..]
        );
    }
    assert_quiet(&mut seen).await;
    if let Some(opened) = opened {
        assert_eq!(
            connected_at(&config.bus.prefix),
            Some(opened),
            "the bus kept its connection"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_leaves_the_catch_all_dead_letter_queue_empty() {
    let config = rabbit_config();
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    bus.subscribe(Subscription::command(
        "Lending",
        |_: Command<PlaceOrder>, _| async { Err(HandlerError::reject("book already lent")) },
    ))
    .await
    .unwrap();
    let receipt = bus
        .call(CommandEnvelope::wrap(order()), WAIT)
        .await
        .unwrap();
    assert_eq!(receipt.status(), orkestra_runtime::CommandStatus::Rejected);
    assert_eq!(receipt.error(), Some("book already lent"));
    // A dispatched (not called) rejection settles the same way.
    bus.dispatch(CommandEnvelope::wrap(order())).await.unwrap();
    tokio::time::sleep(QUIET).await;

    let conn = Connection::connect(amqp_url().expose(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let catch_all = channel
        .queue_declare(
            format!("{}.deadletter.all", config.bus.prefix)
                .as_str()
                .into(),
            passive,
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        catch_all.message_count(),
        0,
        "a rejection is not a dead letter"
    );
    let work = channel
        .queue_declare(
            format!("{}.cmd.{}", config.bus.prefix, PlaceOrder::TOPIC)
                .as_str()
                .into(),
            passive,
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(work.message_count(), 0, "the rejected command was settled");
    conn.close(200, "done".into()).await.unwrap();
}
