//! A real three-node cluster (`../shared/scripts/rabbitmq-cluster start`, or `.ci/run`,
//! which sets `ORKESTRA_CLUSTER_URLS` to the nodes' URLs): quorum queues, and the node
//! both buses are connected to killed while 5,000 commands flow, then revived; every
//! command whose dispatch returned `Ok` is handled at least once. Skipped without
//! `ORKESTRA_CLUSTER_URLS` (`ORKESTRA_CLUSTER_SCRIPT` names the control script when it
//! is not at `../shared/scripts/rabbitmq-cluster`).

mod support;

use std::collections::HashSet;
use std::process::Command as Process;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orkestra_runtime::config::QueueType;
use orkestra_runtime::{
    Bus, BusError, Command, CommandEnvelope, Metadata, SecretUrl, Subscription,
};
use serde_json::json;
use support::payloads::PlaceOrder;
use support::services::rabbit_config;

const TOTAL: usize = 5_000;
const DISPATCHERS: usize = 8;

fn cluster() -> Option<(Vec<SecretUrl>, String)> {
    let urls = std::env::var("ORKESTRA_CLUSTER_URLS").ok()?;
    let script = std::env::var("ORKESTRA_CLUSTER_SCRIPT").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/scripts/rabbitmq-cluster"
        )
        .to_owned()
    });
    Some((
        urls.split_whitespace().map(SecretUrl::new).collect(),
        script,
    ))
}

fn control(script: &str, args: &[&str]) -> bool {
    Process::new(script)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_connected_node_loses_no_confirmed_command() {
    let Some((urls, script)) = cluster() else {
        eprintln!("SKIPPED: ORKESTRA_CLUSTER_URLS is not set (see .ci/run)");
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .try_init();
    let mut config = rabbit_config();
    config.bus.url = None;
    config.bus.urls = urls;
    config.bus.queue_type = QueueType::Quorum;
    config.bus.queue_expiry_ms = Some(600_000);
    config.bus.confirm_timeout_ms = 5_000;
    let consumer = Bus::from_config(&config).await.unwrap();
    let producer = Bus::from_config(&config).await.unwrap();
    let handled: Arc<Mutex<HashSet<String>>> = Arc::default();
    let h = handled.clone();
    consumer
        .subscribe(Subscription::command(
            "ClusterLedger",
            move |cmd: Command<PlaceOrder>, _| {
                h.lock().unwrap().insert(cmd.id.clone());
                async { Ok(json!(null)) }
            },
        ))
        .await
        .unwrap();

    let confirmed: Arc<Mutex<Vec<String>>> = Arc::default();
    let failed = Arc::new(AtomicUsize::new(0));
    let last_error: Arc<Mutex<String>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..DISPATCHERS {
        let (producer, confirmed, failed, last_error) = (
            producer.clone(),
            confirmed.clone(),
            failed.clone(),
            last_error.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            while confirmed.lock().unwrap().len() < TOTAL
                && started.elapsed() < Duration::from_secs(120)
            {
                let cmd = Command::<PlaceOrder>::from_json(
                    json!({"product_id": "sku", "quantity": 1}),
                    Metadata::new(),
                )
                .unwrap();
                let id = cmd.id.clone();
                let t = Instant::now();
                match producer.dispatch(CommandEnvelope::wrap(cmd)).await {
                    Ok(_) => confirmed.lock().unwrap().push(id),
                    Err(e) => {
                        assert!(
                            t.elapsed() < Duration::from_millis(6_500),
                            "a dispatch blocked {:?}: {e}",
                            t.elapsed()
                        );
                        failed.fetch_add(1, Ordering::SeqCst);
                        *last_error.lock().unwrap() = e.to_string();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    // Both buses connected to the first URL: node 1. Kill it mid-flow.
    while confirmed.lock().unwrap().len() < TOTAL / 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(control(&script, &["kill", "1"]), "kill node 1");
    for t in tasks {
        t.await.unwrap();
    }
    let confirmed = confirmed.lock().unwrap().clone();
    assert!(
        confirmed.len() >= TOTAL,
        "the producer moved to another node ({} failed, the last: {})",
        failed.load(Ordering::SeqCst),
        last_error.lock().unwrap()
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
    assert!(control(&script, &["revive", "1"]), "revive node 1");
    // The revived node serves again: a fresh bus whose only URL is node 1 works.
    let mut node1 = config.clone();
    node1.bus.urls.truncate(1);
    let bus = Bus::from_config(&node1).await.unwrap();
    bus.dispatch(CommandEnvelope::wrap(
        Command::<PlaceOrder>::from_json(
            json!({"product_id": "after", "quantity": 1}),
            Metadata::new(),
        )
        .unwrap(),
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn a_queue_of_the_other_type_is_refused_with_a_clear_error() {
    let Some(bus) = support::services::rabbit_bus_with(&rabbit_config()).await else {
        return;
    };
    drop(bus);
    // Declare the classic queues first, then ask for quorum ones under the same names.
    let config = rabbit_config();
    let classic = Bus::from_config(&config).await.unwrap();
    classic
        .subscribe(Subscription::command(
            "TypedLedger",
            |_: Command<PlaceOrder>, _| async { Ok(json!(null)) },
        ))
        .await
        .unwrap();
    let mut quorum = config.clone();
    quorum.bus.queue_type = QueueType::Quorum;
    let err = match Bus::from_config(&quorum).await {
        // The catch-all dead-letter queue already exists as a classic queue.
        Err(e) => e,
        Ok(bus) => bus
            .subscribe(Subscription::command(
                "TypedLedger",
                |_: Command<PlaceOrder>, _| async { Ok(json!(null)) },
            ))
            .await
            .unwrap_err(),
    };
    let text = err.to_string();
    assert!(matches!(err, BusError::QueueMismatch { .. }), "{err:?}");
    assert!(text.contains(&config.bus.prefix), "names the queue: {text}");
    assert!(text.contains("bus.queue_type"), "says what to do: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_retry_and_dead_letter_on_a_single_broker() {
    let mut config = rabbit_config();
    config.bus.queue_type = QueueType::Quorum;
    let Some(bus) = support::services::rabbit_bus_with(&config).await else {
        return;
    };
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    bus.subscribe(
        Subscription::command("QuorumLedger", move |_: Command<PlaceOrder>, _| {
            r.fetch_add(1, Ordering::SeqCst);
            async { Err(orkestra_runtime::HandlerError::Fail("always".into())) }
        })
        .with_max_retries(2),
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
    let letter = tokio::time::timeout(Duration::from_secs(20), dead.recv())
        .await
        .expect("a dead letter")
        .unwrap();
    assert_eq!(
        letter.attempts(),
        3,
        "attempts from x-death on a quorum queue"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}
