//! Retry delays per binding on RabbitMQ: `retry_delay` 1 s with `retry_backoff` 2 and
//! `retry_delay_max` 4 s waits about 1 s, 2 s, 4 s, 4 s between runs (one wait queue per
//! distinct delay), attempts still counted from `x-death`; a binding without them keeps
//! the bus's delay.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orkestra_runtime::{Command, CommandEnvelope, HandlerError, Metadata, Subscription};
use serde_json::json;
use support::payloads::PlaceOrder;
use support::services::{rabbit_bus_with, rabbit_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_delays_are_observed_within_tolerance() {
    let config = rabbit_config();
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    let runs: Arc<Mutex<Vec<(Instant, u32)>>> = Arc::default();
    let r = runs.clone();
    bus.subscribe(
        Subscription::command("BackoffLedger", move |_: Command<PlaceOrder>, ctx| {
            r.lock().unwrap().push((Instant::now(), ctx.attempt()));
            async { Err(HandlerError::Fail("still down".into())) }
        })
        .with_max_retries(4)
        .with_retry_delay(Duration::from_secs(1))
        .with_retry_backoff(2.0)
        .with_retry_delay_max(Duration::from_secs(4)),
    )
    .await
    .unwrap();
    let mut dead = bus.dead_letters().await.unwrap();
    bus.dispatch(CommandEnvelope::wrap(
        Command::<PlaceOrder>::from_json(
            json!({"product_id": "sku", "quantity": 1}),
            Metadata::new(),
        )
        .unwrap(),
    ))
    .await
    .unwrap();
    let letter = tokio::time::timeout(Duration::from_secs(30), dead.recv())
        .await
        .expect("dead-lettered after its retries")
        .unwrap();
    assert_eq!(letter.attempts(), 5);
    let runs = runs.lock().unwrap().clone();
    let attempts: Vec<u32> = runs.iter().map(|(_, a)| *a).collect();
    assert_eq!(attempts, vec![1, 2, 3, 4, 5], "attempts from x-death");
    let gaps: Vec<f64> = runs
        .windows(2)
        .map(|w| (w[1].0 - w[0].0).as_secs_f64())
        .collect();
    for (gap, expected) in gaps.iter().zip([1.0, 2.0, 4.0, 4.0]) {
        assert!(
            // Late by up to half again (a busy broker or scheduler), never as late as
            // the next doubling.
            (expected - 0.1..expected * 1.5 + 0.4).contains(gap),
            "waits {gaps:?}, expected about 1, 2, 4, 4 s"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_retry_delay_per_binding_replaces_the_bus_delay() {
    let config = rabbit_config(); // the bus retries after 100 ms
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    let runs: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let r = runs.clone();
    bus.subscribe(
        Subscription::command("SlowRetryLedger", move |_: Command<PlaceOrder>, _| {
            r.lock().unwrap().push(Instant::now());
            async { Err(HandlerError::Fail("down".into())) }
        })
        .with_max_retries(1)
        .with_retry_delay(Duration::from_millis(1500)),
    )
    .await
    .unwrap();
    bus.dispatch(CommandEnvelope::wrap(
        Command::<PlaceOrder>::from_json(
            json!({"product_id": "sku", "quantity": 1}),
            Metadata::new(),
        )
        .unwrap(),
    ))
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while runs.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "retried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let runs = runs.lock().unwrap().clone();
    let gap = (runs[1] - runs[0]).as_secs_f64();
    // The binding's 1.5 s, not the bus's 100 ms (late by up to 2 s on a busy machine).
    assert!((1.4..3.5).contains(&gap), "waited {gap} s");
}
