//! The in-process bus: the shared conformance suite, then what only in-process promises
//! (synchronous completion, receipts with final status, no serialization, concurrency).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use orkestra_runtime::{
    Bus, BusError, Command, CommandEnvelope, CommandStatus, Event, EventEnvelope, EventStatus,
    HandlerError, HandlerOutcome, Metadata, Payload, Subscription,
};
use serde_json::json;
use support::payloads::*;

bus_suite!(async { Some(Bus::in_process()) });

fn place_order(quantity: i64) -> Command<PlaceOrder> {
    PlaceOrder::command(json!({"product_id": "sku_1", "quantity": quantity}))
}

#[tokio::test]
async fn dispatch_returns_the_final_status_and_reply() {
    let bus = Bus::in_process();
    bus.subscribe(Subscription::command(
        "H",
        |cmd: Command<PlaceOrder>, _| async move { Ok(json!({"total": cmd.quantity * 10})) },
    ))
    .await
    .unwrap();
    let receipt = bus
        .dispatch(CommandEnvelope::wrap(place_order(3)))
        .await
        .unwrap();
    assert_eq!(receipt.status(), CommandStatus::Succeeded);
    assert_eq!(receipt.attempts(), 1);
    assert_eq!(receipt.reply(), Some(&json!({"total": 30})));
    assert!(!receipt.retryable());
}

#[tokio::test]
async fn receipts_of_failures_and_rejections() {
    let bus = Bus::in_process();
    bus.subscribe(Subscription::command(
        "H",
        |cmd: Command<PlaceOrder>, _| async move {
            match cmd.quantity {
                1 => Err(HandlerError::reject("no stock")),
                _ => Err(HandlerError::fail("timeout")),
            }
        },
    ))
    .await
    .unwrap();
    let rejected = bus
        .dispatch(CommandEnvelope::wrap(place_order(1)))
        .await
        .unwrap();
    assert_eq!(rejected.status(), CommandStatus::Rejected);
    assert_eq!(rejected.attempts(), 1);
    assert_eq!(rejected.error(), Some("no stock"));

    let failed = bus
        .dispatch(CommandEnvelope::wrap(place_order(2)).max_retries(4))
        .await
        .unwrap();
    assert_eq!(failed.status(), CommandStatus::Failed);
    assert_eq!(failed.attempts(), 5);
    assert_eq!(failed.error(), Some("timeout"));
    assert!(!failed.retryable());
}

#[tokio::test]
async fn a_handler_that_recovers_on_retry_succeeds() {
    let bus = Bus::in_process();
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    bus.subscribe(Subscription::command(
        "H",
        move |_: Command<PlaceOrder>, ctx| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                if ctx.attempt() < 3 {
                    Err(HandlerError::fail("not yet"))
                } else {
                    Ok(json!(ctx.attempt()))
                }
            }
        },
    ))
    .await
    .unwrap();
    let mut dead = bus.dead_letters().await.unwrap();
    let receipt = bus
        .dispatch(CommandEnvelope::wrap(place_order(1)))
        .await
        .unwrap();
    assert_eq!(receipt.status(), CommandStatus::Succeeded);
    assert_eq!(receipt.attempts(), 3);
    assert_eq!(receipt.reply(), Some(&json!(3)));
    assert!(
        dead.try_recv().is_none(),
        "a recovered command is no dead letter"
    );
}

#[tokio::test]
async fn a_rejection_is_logged_at_info_with_the_handler_and_the_reason() {
    let logs = support::logs::LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let bus = Bus::in_process();
    let mut dead = bus.dead_letters().await.unwrap();
    bus.subscribe(Subscription::command(
        "Lending",
        |_: Command<PlaceOrder>, _| async { Err(HandlerError::reject("book already lent")) },
    ))
    .await
    .unwrap();
    let receipt = bus
        .dispatch(CommandEnvelope::wrap(place_order(1)))
        .await
        .unwrap();
    assert_eq!(receipt.status(), CommandStatus::Rejected);
    assert!(dead.try_recv().is_none(), "a rejection is no dead letter");
    let lines = logs.json_lines();
    let rejected: Vec<_> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "Handler rejected the message")
        .collect();
    assert_eq!(rejected.len(), 1, "{lines:#?}");
    assert_eq!(rejected[0]["level"], "INFO");
    assert_eq!(rejected[0]["fields"]["handler"], "Lending");
    assert_eq!(rejected[0]["fields"]["reason"], "book already lent");
    assert_eq!(rejected[0]["fields"]["topic"], PlaceOrder::TOPIC);
    assert!(
        !lines
            .iter()
            .any(|l| l["fields"]["message"] == "Dead letter recorded"),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn publish_returns_each_handlers_outcome_after_handling() {
    let bus = Bus::in_process();
    let handled = Arc::new(AtomicU32::new(0));
    let h = handled.clone();
    bus.subscribe(Subscription::events(
        "Good",
        move |_: Event<OrderPlaced>, _| {
            h.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        },
    ))
    .await
    .unwrap();
    bus.subscribe(
        Subscription::events("Bad", |_: OrderProjectorEvent, _| async {
            Err(HandlerError::fail("x"))
        })
        .with_max_retries(0),
    )
    .await
    .unwrap();
    let ev = Event::new(
        OrderPlaced {
            order_id: "o".into(),
            quantity: 1,
        },
        Metadata::new(),
    )
    .unwrap();
    let env = bus.publish(EventEnvelope::wrap(ev)).await.unwrap();
    // Synchronous: the handler already ran when publish returned.
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    assert_eq!(env.status(), EventStatus::PartiallyHandled);
    assert_eq!(env.handler_outcome("Good"), Some(HandlerOutcome::Succeeded));
    assert_eq!(env.handler_outcome("Bad"), Some(HandlerOutcome::Failed));

    let lonely = Event::new(Ping { n: 1 }, Metadata::new()).unwrap();
    let env = bus.publish(EventEnvelope::wrap(lonely)).await.unwrap();
    assert_eq!(env.status(), EventStatus::Published);
}

#[tokio::test]
async fn events_published_by_a_command_handler_are_handled_before_dispatch_returns() {
    let bus = Bus::in_process();
    let seen = Arc::new(AtomicU32::new(0));
    let s = seen.clone();
    bus.subscribe(Subscription::command(
        "H",
        |cmd: Command<PlaceOrder>, ctx| async move {
            ctx.publish(Event::from_command(
                &cmd,
                OrderPlaced {
                    order_id: "o".into(),
                    quantity: 1,
                },
            )?)
            .await?;
            Ok(json!(null))
        },
    ))
    .await
    .unwrap();
    bus.subscribe(Subscription::events(
        "E",
        move |_: Event<OrderPlaced>, _| {
            s.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        },
    ))
    .await
    .unwrap();
    bus.dispatch(CommandEnvelope::wrap(place_order(1)))
        .await
        .unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_in_process_path_never_serializes() {
    let bus = Bus::in_process();
    bus.subscribe(Subscription::command(
        "H",
        |cmd: Command<NoSerialize>, _| async move { Ok(json!(cmd.n + 1)) },
    ))
    .await
    .unwrap();
    let cmd = Command::new(NoSerialize { n: 41 }, Metadata::new()).unwrap();
    let receipt = bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    assert_eq!(
        receipt.status(),
        CommandStatus::Succeeded,
        "{:?}",
        receipt.error()
    );
    assert_eq!(receipt.reply(), Some(&json!(42)));
}

#[tokio::test]
async fn an_event_cannot_be_dispatched_nor_a_finished_envelope_redispatched() {
    let bus = Bus::in_process();
    let ev = Event::new(Ping { n: 1 }, Metadata::new()).unwrap();
    let as_command = CommandEnvelope::from_message(EventEnvelope::wrap(ev).message().clone());
    assert!(matches!(
        bus.dispatch(as_command).await,
        Err(BusError::WrongKind(_))
    ));

    bus.subscribe(Subscription::command(
        "H",
        |_: Command<PlaceOrder>, _| async { Ok(json!(null)) },
    ))
    .await
    .unwrap();
    let done = bus
        .dispatch(CommandEnvelope::wrap(place_order(1)))
        .await
        .unwrap();
    assert!(matches!(
        bus.dispatch(done).await,
        Err(BusError::Envelope(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_dispatchers_and_subscribers() {
    let bus = Bus::in_process();
    let commands = Arc::new(AtomicU32::new(0));
    let c = commands.clone();
    bus.subscribe(Subscription::command(
        "H",
        move |cmd: Command<PlaceOrder>, ctx| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                ctx.publish(Event::from_command(
                    &cmd,
                    OrderPlaced {
                        order_id: cmd.id.clone(),
                        quantity: 1,
                    },
                )?)
                .await?;
                Ok(json!(null))
            }
        },
    ))
    .await
    .unwrap();
    let events = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let bus = bus.clone();
        let events = events.clone();
        tasks.push(tokio::spawn(async move {
            // Each task adds a subscriber while the others dispatch.
            let e = events.clone();
            bus.subscribe(Subscription::events(
                format!("Listener{t}"),
                move |_: Event<OrderPlaced>, _| {
                    e.fetch_add(1, Ordering::SeqCst);
                    async { Ok(()) }
                },
            ))
            .await
            .unwrap();
            for _ in 0..250 {
                let r = bus
                    .dispatch(CommandEnvelope::wrap(place_order(1)))
                    .await
                    .unwrap();
                assert_eq!(r.status(), CommandStatus::Succeeded);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(commands.load(Ordering::SeqCst), 2000);
    // Every listener was subscribed before its own task dispatched, so each event reached
    // at least the listeners of tasks that had started; after all joins, one more event
    // reaches exactly eight.
    let before = events.load(Ordering::SeqCst);
    bus.dispatch(CommandEnvelope::wrap(place_order(1)))
        .await
        .unwrap();
    assert_eq!(events.load(Ordering::SeqCst) - before, 8);
    assert!(
        before >= 250 * 8,
        "each task's own listener saw its 250 events: {before}"
    );
}
