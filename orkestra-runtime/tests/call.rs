//! `Bus::call` on both buses: the final status and the handler's reply, failures after
//! their retries, rejections, and `BusError::Timeout`. On RabbitMQ the handler runs on
//! another bus instance (its own connection), as in another process.

mod support;

use std::time::{Duration, Instant};

use orkestra_runtime::{
    Bus, BusError, Command, CommandEnvelope, CommandStatus, HandlerError, Metadata, Subscription,
};
use serde_json::json;
use support::payloads::PlaceOrder;

fn order(quantity: i64) -> CommandEnvelope {
    CommandEnvelope::wrap(
        Command::<PlaceOrder>::from_json(
            json!({"product_id": "sku", "quantity": quantity}),
            Metadata::new(),
        )
        .unwrap(),
    )
}

/// quantity 1: replies; 2: always fails; 3: rejects; 4: takes 3 s.
fn handler() -> Subscription {
    Subscription::command("CallLedger", |cmd: Command<PlaceOrder>, _| async move {
        match cmd.quantity {
            1 => Ok(json!({"reserved": cmd.product_id})),
            2 => Err(HandlerError::Fail("out of stock".into())),
            3 => Err(HandlerError::Reject("not allowed".into())),
            _ => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(json!(null))
            }
        }
    })
    .with_max_retries(1)
}

async fn outcomes(caller: &Bus) {
    let receipt = caller
        .call(order(1), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(receipt.status(), CommandStatus::Succeeded);
    assert_eq!(receipt.reply(), Some(&json!({"reserved": "sku"})));
    assert_eq!(receipt.attempts(), 1);

    let receipt = caller
        .call(order(2), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(receipt.status(), CommandStatus::Failed);
    assert_eq!(receipt.attempts(), 2, "max_retries 1: two runs");
    assert_eq!(receipt.error(), Some("out of stock"));

    let receipt = caller
        .call(order(3), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(receipt.status(), CommandStatus::Rejected);
    assert_eq!(receipt.attempts(), 1);
    assert_eq!(receipt.error(), Some("not allowed"));

    let started = Instant::now();
    let late = caller.call(order(4), Duration::from_millis(300)).await;
    assert!(matches!(late, Err(BusError::Timeout(_))), "{late:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "returned at the timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_call_returns_the_final_outcome() {
    let bus = Bus::in_process();
    bus.subscribe(handler()).await.unwrap();
    outcomes(&bus).await;
    let none = Bus::in_process()
        .call(order(1), Duration::from_secs(1))
        .await;
    assert!(matches!(none, Err(BusError::NoHandler { .. })), "{none:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_call_returns_the_final_outcome_through_direct_reply_to() {
    let config = support::services::rabbit_config();
    let (Some(caller), Some(worker)) = (
        support::services::rabbit_bus_with(&config).await,
        support::services::rabbit_bus_with(&config).await,
    ) else {
        return;
    };
    let none = caller.call(order(1), Duration::from_secs(5)).await;
    assert!(matches!(none, Err(BusError::NoHandler { .. })), "{none:?}");
    worker.subscribe(handler()).await.unwrap();
    outcomes(&caller).await;
    // Many calls at once each get their own reply.
    let calls = (0..50).map(|_| caller.call(order(1), Duration::from_secs(10)));
    for receipt in futures_util::future::join_all(calls).await {
        assert_eq!(receipt.unwrap().status(), CommandStatus::Succeeded);
    }
}
