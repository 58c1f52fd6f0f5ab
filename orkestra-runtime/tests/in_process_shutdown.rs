//! Shutdown of the in-process bus: running dispatches finish, new ones are refused,
//! `ctx.cancelled()` wakes long handlers, and a deadline that passes is reported.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use orkestra_runtime::{Bus, BusError, Command, CommandEnvelope, Metadata, Subscription};
use serde_json::json;
use support::payloads::PlaceOrder;

fn order() -> CommandEnvelope {
    CommandEnvelope::wrap(
        Command::<PlaceOrder>::from_json(
            json!({"product_id": "sku", "quantity": 1}),
            Metadata::new(),
        )
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_running_handlers_then_refuses_new_work() {
    let bus = Bus::in_process();
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let s = saw_cancel.clone();
    bus.subscribe(Subscription::command(
        "SlowLedger",
        move |_: Command<PlaceOrder>, ctx| {
            let s = s.clone();
            async move {
                // Finishes early once shutdown starts.
                tokio::select! {
                    () = ctx.cancelled() => s.store(true, Ordering::SeqCst),
                    () = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
                Ok(json!("done"))
            }
        },
    ))
    .await
    .unwrap();
    let b = bus.clone();
    let running = tokio::spawn(async move { b.dispatch(order()).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "cancelled() ended it early"
    );
    assert!(saw_cancel.load(Ordering::SeqCst));
    let receipt = running.await.unwrap().unwrap();
    assert_eq!(
        receipt.reply(),
        Some(&json!("done")),
        "the running dispatch finished"
    );
    assert!(matches!(bus.dispatch(order()).await, Err(BusError::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_past_the_deadline_is_reported() {
    let bus = Bus::in_process();
    bus.subscribe(Subscription::command(
        "StubbornLedger",
        |_: Command<PlaceOrder>, _| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(json!(null))
        },
    ))
    .await
    .unwrap();
    let b = bus.clone();
    let running = tokio::spawn(async move { b.dispatch(order()).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let result = bus.shutdown(Duration::from_millis(300)).await;
    assert!(matches!(result, Err(BusError::Timeout(_))), "{result:?}");
    // In-process the handler runs in the dispatching task: it is not stopped.
    assert!(running.await.unwrap().is_ok());
}
