//! The handler conformance suite: behaviour every bus adapter must show, written only
//! against the public `Bus` API and observed through what handlers see (never through
//! adapter-specific receipt states), so the same bodies run on every adapter.
//!
//! `bus_suite!(async_expr_making_a_bus)` expands to one `#[tokio::test]` per case.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use orkestra_runtime::{
    ActorType, Bus, BusError, Command, CommandEnvelope, CommandStatus, Event, EventEnvelope,
    HandlerError, Metadata, Payload, Subscription,
};
use serde_json::json;
use tokio::sync::mpsc;

use super::payloads::*;

/// How long a case waits for something a handler does.
pub const WAIT: Duration = Duration::from_secs(20);

pub async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for a handler")
        .expect("channel closed")
}

/// Nothing more arrives within a short grace period.
pub async fn assert_quiet<T: std::fmt::Debug>(rx: &mut mpsc::UnboundedReceiver<T>) {
    if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        panic!("unexpected extra delivery: {extra:?}");
    }
}

fn place_order(quantity: i64) -> Command<PlaceOrder> {
    PlaceOrder::command(json!({"product_id": "sku_42", "quantity": quantity}))
}

impl PlaceOrder {
    pub fn command(params: serde_json::Value) -> Command<PlaceOrder> {
        Command::from_json(
            params,
            Metadata::new().with_actor("user_1", ActorType::User),
        )
        .unwrap()
    }
}

pub async fn command_reaches_its_one_handler(bus: Bus) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    bus.subscribe(Subscription::command(
        "PlaceOrderHandler",
        move |cmd: Command<PlaceOrder>, ctx| {
            let tx = tx.clone();
            async move {
                tx.send((cmd.id.clone(), cmd.quantity, ctx.metadata().clone()))
                    .unwrap();
                Ok(json!({"accepted": true}))
            }
        },
    ))
    .await
    .unwrap();
    let cmd = place_order(3);
    let (id, metadata) = (cmd.id.clone(), cmd.metadata.clone());
    bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    let (seen_id, quantity, seen_meta) = recv(&mut rx).await;
    assert_eq!(seen_id, id);
    assert_eq!(quantity, 3);
    assert_eq!(seen_meta.correlation_id, metadata.correlation_id);
    assert_eq!(seen_meta.actor_id.as_deref(), Some("user_1"));
    assert_quiet(&mut rx).await;
}

pub async fn dispatch_without_handler_is_an_error(bus: Bus) {
    let cmd = Command::from_json(json!({"email": "a@b.c", "name": "A"}), Metadata::new()).unwrap();
    let cmd: Command<CreateAccount> = cmd;
    let err = bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap_err();
    assert!(
        matches!(&err, BusError::NoHandler { topic } if topic == CreateAccount::TOPIC),
        "{err:?}"
    );
}

pub async fn second_command_handler_is_refused(bus: Bus) {
    let ok = |_: Command<PlaceOrder>, _| async { Ok(json!(null)) };
    bus.subscribe(Subscription::command("First", ok))
        .await
        .unwrap();
    let err = bus
        .subscribe(Subscription::command("Second", ok))
        .await
        .unwrap_err();
    assert!(
        matches!(err, BusError::CommandAlreadyHandled { .. }),
        "{err:?}"
    );
    let err = bus
        .subscribe(Subscription::events("First", |_: Event<Ping>, _| async {
            Ok(())
        }))
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::DuplicateHandler { .. }), "{err:?}");
}

pub async fn events_reach_every_matching_subscriber(bus: Bus) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(&'static str, String)>();
    let t = tx.clone();
    bus.subscribe(Subscription::events(
        "SendOrderConfirmation",
        move |ev: Event<OrderPlaced>, _| {
            let t = t.clone();
            async move {
                t.send(("exact", ev.order_id.clone())).unwrap();
                Ok(())
            }
        },
    ))
    .await
    .unwrap();
    let t = tx.clone();
    bus.subscribe(Subscription::events(
        "OrderProjector",
        move |ev: OrderProjectorEvent, _| {
            let t = t.clone();
            async move {
                let id = match ev {
                    OrderProjectorEvent::OrderPlaced(e) => format!("placed:{}", e.order_id),
                    OrderProjectorEvent::OrderCancelled(e) => format!("cancelled:{}", e.order_id),
                };
                t.send(("multi", id)).unwrap();
                Ok(())
            }
        },
    ))
    .await
    .unwrap();
    let t = tx.clone();
    bus.subscribe(Subscription::events(
        "OrderAudit",
        move |ev: OrderAuditEvent, _| {
            let t = t.clone();
            async move {
                let id = match ev {
                    OrderAuditEvent::OrderPlaced(e) => format!("placed:{}", e.order_id),
                    OrderAuditEvent::OrderCancelled(e) => format!("cancelled:{}", e.order_id),
                    OrderAuditEvent::Other(raw) => format!("other:{}", raw.event_type),
                };
                t.send(("wildcard", id)).unwrap();
                Ok(())
            }
        },
    ))
    .await
    .unwrap();
    drop(tx);

    let placed = Event::new(
        OrderPlaced {
            order_id: "o1".into(),
            quantity: 1,
        },
        Metadata::new(),
    )
    .unwrap();
    bus.publish(EventEnvelope::wrap(placed)).await.unwrap();
    let mut got = vec![
        recv(&mut rx).await,
        recv(&mut rx).await,
        recv(&mut rx).await,
    ];
    got.sort();
    assert_eq!(
        got,
        vec![
            ("exact", "o1".to_owned()),
            ("multi", "placed:o1".to_owned()),
            ("wildcard", "placed:o1".to_owned())
        ]
    );
    assert_quiet(&mut rx).await;

    let shipped = Event::new(
        OrderShipped {
            order_id: "o1".into(),
        },
        Metadata::new(),
    )
    .unwrap();
    bus.publish(EventEnvelope::wrap(shipped)).await.unwrap();
    assert_eq!(
        recv(&mut rx).await,
        ("wildcard", "other:Test.Orders.OrderShipped".to_owned())
    );
    assert_quiet(&mut rx).await;

    // No subscriber at all is not an error for an event.
    let ping = Event::new(Ping { n: 1 }, Metadata::new()).unwrap();
    bus.publish(EventEnvelope::wrap(ping)).await.unwrap();
    assert_quiet(&mut rx).await;
}

pub async fn events_published_by_handlers_carry_the_chain(bus: Bus) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    bus.subscribe(Subscription::command(
        "PlaceOrderHandler",
        |cmd: Command<PlaceOrder>, ctx| async move {
            let ev = Event::from_command(
                &cmd,
                OrderPlaced {
                    order_id: "o7".into(),
                    quantity: cmd.quantity,
                },
            )?;
            ctx.publish(ev).await?;
            Ok(json!(null))
        },
    ))
    .await
    .unwrap();
    bus.subscribe(Subscription::events(
        "Confirm",
        |ev: Event<OrderPlaced>, ctx| async move {
            // Published from here without from_event: ctx.publish derives the chain anyway.
            let next = Event::new(
                OrderShipped {
                    order_id: ev.order_id.clone(),
                },
                Metadata::new(),
            )?;
            ctx.publish(next).await?;
            Ok(())
        },
    ))
    .await
    .unwrap();
    bus.subscribe(Subscription::events(
        "Record",
        move |ev: OrderAuditEvent, _| {
            let tx = tx.clone();
            async move {
                let (kind, id, meta) = match ev {
                    OrderAuditEvent::OrderPlaced(e) => ("placed", e.id, e.metadata),
                    OrderAuditEvent::OrderCancelled(e) => ("cancelled", e.id, e.metadata),
                    OrderAuditEvent::Other(raw) => ("other", raw.id, raw.metadata),
                };
                tx.send((kind, id, meta)).unwrap();
                Ok(())
            }
        },
    ))
    .await
    .unwrap();

    let cmd = place_order(2);
    let (cmd_id, correlation) = (cmd.id.clone(), cmd.metadata.correlation_id.clone());
    bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    // Delivery order differs between adapters (depth-first in-process); sort by kind.
    let mut got = vec![recv(&mut rx).await, recv(&mut rx).await];
    got.sort_by_key(|(kind, _, _)| *kind);
    let [(other, _, shipped_meta), (placed, placed_id, placed_meta)] =
        <[_; 2]>::try_from(got).unwrap();
    assert_eq!((other, placed), ("other", "placed"));
    assert_eq!(placed_meta.correlation_id, correlation);
    assert_eq!(placed_meta.causation_id.as_deref(), Some(cmd_id.as_str()));
    assert_eq!(placed_meta.actor_id.as_deref(), Some("user_1"));
    assert_eq!(shipped_meta.correlation_id, correlation);
    assert_eq!(
        shipped_meta.causation_id.as_deref(),
        Some(placed_id.as_str())
    );
    assert_quiet(&mut rx).await;
}

pub async fn failing_handler_is_retried_then_dead_lettered(bus: Bus) {
    let mut dead = bus.dead_letters().await.unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    bus.subscribe(
        Subscription::command("Flaky", move |_: Command<PlaceOrder>, _| {
            r.fetch_add(1, Ordering::SeqCst);
            async { Err(HandlerError::fail("warehouse unreachable")) }
        })
        .with_max_retries(5),
    )
    .await
    .unwrap();
    let cmd = place_order(1);
    let id = cmd.id.clone();
    bus.dispatch(CommandEnvelope::wrap(cmd).max_retries(2))
        .await
        .unwrap();
    let letter = tokio::time::timeout(WAIT, dead.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(letter.topic(), "orders.commands.place_order");
    assert_eq!(letter.handler(), "Flaky");
    assert_eq!(letter.reason(), "warehouse unreachable");
    assert_eq!(
        letter.attempts(),
        3,
        "max_retries(2) on the envelope wins over the binding's 5"
    );
    assert_eq!(letter.message_id(), id);
    assert_eq!(runs.load(Ordering::SeqCst), 3);

    // The binding's limit applies when the envelope sets none.
    runs.store(0, Ordering::SeqCst);
    bus.dispatch(CommandEnvelope::wrap(place_order(1)))
        .await
        .unwrap();
    let letter = tokio::time::timeout(WAIT, dead.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(letter.attempts(), 6);
    assert_eq!(runs.load(Ordering::SeqCst), 6);
}

/// A business refusal (`HandlerError::Reject`) is an answer: the caller gets `Rejected`
/// with the reason; it is never retried and never dead-lettered (no letter for a
/// receiver, no run of a dead-letter binding), for a command as for an event.
pub async fn a_rejection_is_an_answer_not_a_dead_letter(bus: Bus) {
    let mut dead = bus.dead_letters().await.unwrap();
    let alarms = Arc::new(AtomicU32::new(0));
    let a = alarms.clone();
    bus.subscribe(Subscription::dead_letters("Alarm", move |_, _| {
        a.fetch_add(1, Ordering::SeqCst);
        async { Ok(()) }
    }))
    .await
    .unwrap();
    let command_runs = Arc::new(AtomicU32::new(0));
    let c = command_runs.clone();
    bus.subscribe(
        Subscription::command("Lending", move |_: Command<PlaceOrder>, _| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err(HandlerError::reject("book already lent")) }
        })
        .with_max_retries(3),
    )
    .await
    .unwrap();
    let event_runs = Arc::new(AtomicU32::new(0));
    let e = event_runs.clone();
    bus.subscribe(
        Subscription::events("Picky", move |_: Event<OrderCancelled>, _| {
            e.fetch_add(1, Ordering::SeqCst);
            async { Err(HandlerError::reject("order unknown")) }
        })
        .with_max_retries(3),
    )
    .await
    .unwrap();

    let receipt = bus
        .call(CommandEnvelope::wrap(place_order(1)), WAIT)
        .await
        .unwrap();
    assert_eq!(receipt.status(), CommandStatus::Rejected);
    assert_eq!(receipt.error(), Some("book already lent"));
    assert_eq!(receipt.attempts(), 1, "a rejection is not retried");

    let ev = Event::new(
        OrderCancelled {
            order_id: "o9".into(),
        },
        Metadata::new(),
    )
    .unwrap();
    bus.publish(EventEnvelope::wrap(ev)).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while event_runs.load(Ordering::SeqCst) < 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Ok(Ok(letter)) = tokio::time::timeout(Duration::from_millis(800), dead.recv()).await {
        panic!(
            "a rejection was dead-lettered: handler {:?}, reason {:?}",
            letter.handler(),
            letter.reason()
        );
    }
    assert_eq!(command_runs.load(Ordering::SeqCst), 1);
    assert_eq!(event_runs.load(Ordering::SeqCst), 1, "not retried");
    assert_eq!(
        alarms.load(Ordering::SeqCst),
        0,
        "no dead-letter binding runs for a rejection"
    );
}

pub async fn a_failing_subscriber_does_not_affect_the_others(bus: Bus) {
    let mut dead = bus.dead_letters().await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let broken_runs = Arc::new(AtomicU32::new(0));
    let b = broken_runs.clone();
    bus.subscribe(
        Subscription::events("Broken", move |_: Event<OrderPlaced>, _| {
            b.fetch_add(1, Ordering::SeqCst);
            async { Err(HandlerError::fail("index down")) }
        })
        .with_max_retries(1),
    )
    .await
    .unwrap();
    bus.subscribe(Subscription::events(
        "Healthy",
        move |ev: Event<OrderPlaced>, _| {
            let tx = tx.clone();
            async move {
                tx.send(ev.order_id.clone()).unwrap();
                Ok(())
            }
        },
    ))
    .await
    .unwrap();
    let ev = Event::new(
        OrderPlaced {
            order_id: "o2".into(),
            quantity: 1,
        },
        Metadata::new(),
    )
    .unwrap();
    bus.publish(EventEnvelope::wrap(ev)).await.unwrap();
    assert_eq!(recv(&mut rx).await, "o2");
    let letter = tokio::time::timeout(WAIT, dead.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(letter.handler(), "Broken");
    assert_eq!(letter.attempts(), 2);
    assert_eq!(broken_runs.load(Ordering::SeqCst), 2);
    assert_quiet(&mut rx).await;
}

pub async fn a_panicking_handler_is_a_failure_and_the_bus_survives(bus: Bus) {
    let mut dead = bus.dead_letters().await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    bus.subscribe(
        Subscription::command("Panicky", move |cmd: Command<PlaceOrder>, _| {
            let tx = tx.clone();
            async move {
                if cmd.quantity == 13 {
                    panic!("unlucky quantity");
                }
                tx.send(cmd.quantity).unwrap();
                Ok(json!(null))
            }
        })
        .with_max_retries(1),
    )
    .await
    .unwrap();
    bus.dispatch(CommandEnvelope::wrap(place_order(13)))
        .await
        .unwrap();
    let letter = tokio::time::timeout(WAIT, dead.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(letter.attempts(), 2);
    assert!(
        letter.reason().contains("unlucky quantity"),
        "{}",
        letter.reason()
    );
    bus.dispatch(CommandEnvelope::wrap(place_order(4)))
        .await
        .unwrap();
    assert_eq!(recv(&mut rx).await, 4);
}

pub async fn ctx_publish_derives_metadata_from_the_handled_message(bus: Bus) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    bus.subscribe(Subscription::command(
        "PlaceOrderHandler",
        |cmd: Command<PlaceOrder>, ctx| async move {
            // Fresh metadata on purpose: a system actor, no source, a new correlation.
            let ev = Event::new(
                OrderPlaced {
                    order_id: "o1".into(),
                    quantity: cmd.quantity,
                },
                Metadata::new(),
            )?;
            ctx.publish(ev).await?;
            Ok(json!(null))
        },
    ))
    .await
    .unwrap();
    bus.subscribe(Subscription::events(
        "Record",
        move |ev: Event<OrderPlaced>, _| {
            let tx = tx.clone();
            async move {
                tx.send(ev.metadata).unwrap();
                Ok(())
            }
        },
    ))
    .await
    .unwrap();
    let cmd = Command::<PlaceOrder>::from_json(
        json!({"product_id": "sku_42", "quantity": 1}),
        Metadata::new()
            .with_actor("expert_7", ActorType::Expert)
            .with_source("back-office"),
    )
    .unwrap();
    let (cmd_id, correlation) = (cmd.id.clone(), cmd.metadata.correlation_id.clone());
    bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    let meta = recv(&mut rx).await;
    assert_eq!(meta.correlation_id, correlation);
    assert_eq!(meta.causation_id.as_deref(), Some(cmd_id.as_str()));
    assert_eq!(meta.actor_id.as_deref(), Some("expert_7"));
    assert_eq!(meta.actor_type, ActorType::Expert);
    assert_eq!(meta.source.as_deref(), Some("back-office"));
}

pub async fn dead_letter_handlers_receive_every_dead_letter_once(bus: Bus) {
    let mut dead = bus.dead_letters().await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    bus.subscribe(Subscription::dead_letters("Alarm", move |letter, ctx| {
        let tx = tx.clone();
        async move {
            tx.send((
                letter.topic().to_owned(),
                letter.handler().to_owned(),
                letter.reason().to_owned(),
                letter.attempts(),
                letter.message_id().to_owned(),
                ctx.metadata().correlation_id.clone(),
            ))
            .unwrap();
            Ok(())
        }
    }))
    .await
    .unwrap();
    // A dead-letter handler that always fails: logged, never dead-lettered again.
    let broken_runs = Arc::new(AtomicU32::new(0));
    let b = broken_runs.clone();
    bus.subscribe(
        Subscription::dead_letters("BrokenAlarm", move |_, _| {
            b.fetch_add(1, Ordering::SeqCst);
            async { Err(HandlerError::fail("pager down")) }
        })
        .with_max_retries(1),
    )
    .await
    .unwrap();
    bus.subscribe(
        Subscription::command("No", |_: Command<PlaceOrder>, _| async {
            Err(HandlerError::fail("sold out"))
        })
        .with_max_retries(0),
    )
    .await
    .unwrap();
    // A dead-letter binding is a handler name like any other.
    assert!(matches!(
        bus.subscribe(Subscription::dead_letters("Alarm", |_, _| async { Ok(()) }))
            .await,
        Err(BusError::DuplicateHandler { .. })
    ));

    let cmd = place_order(1);
    let (cmd_id, correlation) = (cmd.id.clone(), cmd.metadata.correlation_id.clone());
    bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    let (topic, handler, reason, attempts, message_id, seen_correlation) = recv(&mut rx).await;
    assert_eq!(topic, "orders.commands.place_order");
    assert_eq!(handler, "No");
    assert_eq!(reason, "sold out");
    assert_eq!(attempts, 1);
    assert_eq!(message_id, cmd_id);
    assert_eq!(
        seen_correlation, correlation,
        "the context is the original message's"
    );
    let letter = tokio::time::timeout(WAIT, dead.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(letter.handler(), "No");
    // BrokenAlarm ran its two attempts, and its failure produced no second letter.
    let deadline = tokio::time::Instant::now() + WAIT;
    while broken_runs.load(Ordering::SeqCst) < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(broken_runs.load(Ordering::SeqCst), 2);
    assert_quiet(&mut rx).await;
    if let Ok(Ok(extra)) = tokio::time::timeout(Duration::from_millis(300), dead.recv()).await {
        panic!("a failing dead-letter handler produced another dead letter: {extra:?}");
    }
}

#[macro_export]
macro_rules! bus_suite {
    ($make_bus:expr) => {
        mod bus_suite_cases {
            use super::*;
            use $crate::support::bus_suite as suite;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let Some(bus) = ($make_bus).await else { return };
                        suite::$name(bus).await;
                    }
                };
            }

            case!(command_reaches_its_one_handler);
            case!(dispatch_without_handler_is_an_error);
            case!(second_command_handler_is_refused);
            case!(events_reach_every_matching_subscriber);
            case!(events_published_by_handlers_carry_the_chain);
            case!(failing_handler_is_retried_then_dead_lettered);
            case!(a_rejection_is_an_answer_not_a_dead_letter);
            case!(a_failing_subscriber_does_not_affect_the_others);
            case!(a_panicking_handler_is_a_failure_and_the_bus_survives);
            case!(ctx_publish_derives_metadata_from_the_handled_message);
            case!(dead_letter_handlers_receive_every_dead_letter_once);
        }
    };
}
