//! The broker restarted twice (`rabbitmqctl stop_app` / `start_app`) and every client
//! connection killed once (`close_all_connections`) while 10,000 commands flow: every command the broker confirmed is handled, none is lost, and the
//! consumer resumes by itself. Its own test binary, so no other test sees the outage.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orkestra_runtime::{Command, CommandEnvelope, Metadata, Subscription};
use serde_json::json;
use support::payloads::PlaceOrder;
use support::services::{rabbit_bus_with, rabbit_config, rabbitmqctl, required};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_commands_survive_two_broker_restarts() {
    if rabbitmqctl(&["status"]).is_none() {
        assert!(
            !required(),
            "rabbitmqctl is required to restart the broker (ORKESTRA_REQUIRE_SERVICES=1)"
        );
        eprintln!("SKIPPED: rabbitmqctl cannot control a local broker");
        return;
    }
    let mut config = rabbit_config();
    config.bus.queue_expiry_ms = Some(600_000);
    let (Some(consumer), Some(producer)) = (
        rabbit_bus_with(&config).await,
        rabbit_bus_with(&config).await,
    ) else {
        return;
    };
    let handled = Arc::new(Mutex::new(HashSet::<String>::new()));
    let h = handled.clone();
    consumer
        .subscribe(Subscription::command(
            "Ledger",
            move |cmd: Command<PlaceOrder>, _| {
                h.lock().unwrap().insert(cmd.id.clone());
                async { Ok(json!(null)) }
            },
        ))
        .await
        .unwrap();

    const TOTAL: usize = 10_000;
    let mut confirmed = Vec::with_capacity(TOTAL);
    let mut failed = 0usize;
    let mut restarts = 0;
    let mut killed = false;
    let started = Instant::now();
    let mut i = 0;
    while confirmed.len() < TOTAL && started.elapsed() < Duration::from_secs(240) {
        if confirmed.len() == 4_000 && !killed {
            // A killed connection (not a broker restart): clients must reconnect too.
            killed = true;
            assert!(
                rabbitmqctl(&["close_all_connections", "orkestra test: killed connection"])
                    .is_some(),
                "close_all_connections"
            );
        }
        if (confirmed.len() == 2_000 && restarts == 0)
            || (confirmed.len() == 6_000 && restarts == 1)
        {
            restarts += 1;
            assert!(rabbitmqctl(&["stop_app"]).is_some(), "stop_app");
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(rabbitmqctl(&["start_app"]).is_some(), "start_app");
            assert!(rabbitmqctl(&["await_startup"]).is_some(), "await_startup");
        }
        i += 1;
        let cmd = Command::<PlaceOrder>::from_json(
            json!({"product_id": "sku", "quantity": 1 + i % 100}),
            Metadata::new(),
        )
        .unwrap();
        let id = cmd.id.clone();
        match producer.dispatch(CommandEnvelope::wrap(cmd)).await {
            Ok(_) => confirmed.push(id),
            Err(_) => {
                // Unconfirmed: it may or may not arrive. Never hangs: errors come back.
                failed += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(restarts, 2, "both restarts happened");
    assert!(killed, "the connections were killed once");
    assert_eq!(
        confirmed.len(),
        TOTAL,
        "the producer kept going after each restart ({failed} failed publishes)"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let missing = {
            let handled = handled.lock().unwrap();
            confirmed.iter().filter(|id| !handled.contains(*id)).count()
        };
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} confirmed commands were never handled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
