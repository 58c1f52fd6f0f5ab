//! Concurrency with per-key order on RabbitMQ: deliveries with the same partition key
//! run one at a time in delivery order while different keys run in parallel (up to the
//! concurrency), `concurrency: 1` is strict arrival order, a message without the
//! partition field is keyed by its correlation id (with a warning), and no delivery is
//! acknowledged before its handler finished: a consumer process killed mid-flight
//! leaves every unfinished delivery to be redelivered.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command as Process, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orkestra_runtime::{Bus, Command, CommandEnvelope, Metadata, Subscription};
use serde_json::json;
use support::payloads::PlaceOrder;
use support::services::{rabbit_bus_with, rabbit_config};

const KEYS: usize = 40;
const PER_KEY: usize = 25;

fn order(product: &str, quantity: i64, correlation: &str) -> Command<PlaceOrder> {
    Command::from_json(
        json!({"product_id": product, "quantity": quantity}),
        Metadata::new().with_correlation_id(correlation),
    )
    .unwrap()
}

/// A cheap deterministic "random" delay in 0..=4 ms.
fn jitter(i: i64, key: &str) -> Duration {
    let h = key.bytes().fold(i as u64 ^ 0x9e37_79b9, |h, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    Duration::from_micros((h % 5) * 1000)
}

async fn wait_until(what: &str, secs: u64, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_in_order_different_keys_in_parallel_under_concurrency_32() {
    let mut config = rabbit_config();
    config.bus.prefetch = 64;
    let (Some(consumer), Some(producer)) = (
        rabbit_bus_with(&config).await,
        rabbit_bus_with(&config).await,
    ) else {
        return;
    };
    let seen: Arc<Mutex<HashMap<String, Vec<i64>>>> = Arc::default();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let per_key_running: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let overlap = Arc::new(AtomicUsize::new(0));
    let (s, r, m, pk, o) = (
        seen.clone(),
        running.clone(),
        most.clone(),
        per_key_running.clone(),
        overlap.clone(),
    );
    consumer
        .subscribe(
            Subscription::command("OrderedLedger", move |cmd: Command<PlaceOrder>, _| {
                let (s, r, m, pk, o) = (s.clone(), r.clone(), m.clone(), pk.clone(), o.clone());
                async move {
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    {
                        let mut pk = pk.lock().unwrap();
                        let n = pk.entry(cmd.product_id.clone()).or_default();
                        *n += 1;
                        if *n > 1 {
                            o.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    tokio::time::sleep(jitter(cmd.quantity, &cmd.product_id)).await;
                    s.lock()
                        .unwrap()
                        .entry(cmd.product_id.clone())
                        .or_default()
                        .push(cmd.quantity);
                    *pk.lock().unwrap().get_mut(&cmd.product_id).unwrap() -= 1;
                    r.fetch_sub(1, Ordering::SeqCst);
                    Ok(json!(null))
                }
            })
            .with_concurrency(32)
            .with_partition_by("product_id"),
        )
        .await
        .unwrap();
    // Each key's commands are dispatched in order (one task per key, so keys interleave).
    let mut tasks = Vec::new();
    for k in 0..KEYS {
        let producer = producer.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("sku-{k}");
            for i in 0..PER_KEY as i64 {
                // Distinct correlation ids: only partition_by keeps them in order.
                let cmd = order(&key, i + 1, &format!("c-{k}-{i}"));
                producer.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_until("every command handled", 60, || {
        seen.lock().unwrap().values().map(Vec::len).sum::<usize>() == KEYS * PER_KEY
    })
    .await;
    for (key, order) in seen.lock().unwrap().iter() {
        let expected: Vec<i64> = (1..=PER_KEY as i64).collect();
        assert_eq!(order, &expected, "{key} handled in delivery order");
    }
    assert_eq!(
        overlap.load(Ordering::SeqCst),
        0,
        "one key never ran twice at once"
    );
    let most = most.load(Ordering::SeqCst);
    assert!(
        most > 4,
        "different keys ran in parallel (at most {most} at once)"
    );
    assert!(most <= 32, "never more than the concurrency ({most})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_one_is_strict_arrival_order() {
    let Some(bus) = rabbit_bus_with(&rabbit_config()).await else {
        return;
    };
    let seen: Arc<Mutex<Vec<i64>>> = Arc::default();
    let s = seen.clone();
    bus.subscribe(
        Subscription::command("StrictLedger", move |cmd: Command<PlaceOrder>, _| {
            let s = s.clone();
            async move {
                tokio::time::sleep(jitter(cmd.quantity, "strict")).await;
                s.lock().unwrap().push(cmd.quantity);
                Ok(json!(null))
            }
        })
        .with_concurrency(1),
    )
    .await
    .unwrap();
    for i in 1..=60 {
        let cmd = order(&format!("sku-{}", i % 7), i, &format!("c-{i}"));
        bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    }
    wait_until("all handled", 30, || seen.lock().unwrap().len() == 60).await;
    assert_eq!(*seen.lock().unwrap(), (1..=60).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_partition_field_falls_back_to_the_correlation_id_with_a_warning() {
    let logs = support::logs::LogBuffer::default();
    let writer = logs.clone();
    let _ = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .try_init();
    let Some(bus) = rabbit_bus_with(&rabbit_config()).await else {
        return;
    };
    let seen: Arc<Mutex<Vec<i64>>> = Arc::default();
    let s = seen.clone();
    bus.subscribe(
        Subscription::command("KeylessLedger", move |cmd: Command<PlaceOrder>, _| {
            let s = s.clone();
            async move {
                tokio::time::sleep(jitter(cmd.quantity, "keyless")).await;
                s.lock().unwrap().push(cmd.quantity);
                Ok(json!(null))
            }
        })
        .with_partition_by("no_such_field"),
    )
    .await
    .unwrap();
    // One correlation id: the fallback key keeps them in order.
    for i in 1..=20 {
        let cmd = order("sku", i, "one-flow");
        bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    }
    wait_until("all handled, none stuck", 30, || {
        seen.lock().unwrap().len() == 20
    })
    .await;
    assert_eq!(*seen.lock().unwrap(), (1..=20).collect::<Vec<i64>>());
    let text = logs.text();
    assert!(
        text.contains("partition_by field missing") && text.contains("no_such_field"),
        "{text}"
    );
}

/// The consumer process of the kill test: slow handlers, 32 at once; prints `started`
/// and `finished` for each command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_child() {
    let Ok(prefix) = std::env::var("ORKESTRA_SLOW_PREFIX") else {
        return; // only as a child of the test below
    };
    let mut config = rabbit_config();
    config.bus.prefix = prefix;
    config.bus.queue_expiry_ms = Some(300_000);
    let bus = Bus::from_config(&config).await.unwrap();
    bus.subscribe(
        Subscription::command("SlowLedger", |cmd: Command<PlaceOrder>, _| async move {
            say(&format!("started {}", cmd.id));
            tokio::time::sleep(Duration::from_millis(300)).await;
            say(&format!("finished {}", cmd.id));
            Ok(json!(null))
        })
        .with_concurrency(32),
    )
    .await
    .unwrap();
    say("ready");
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\n{line}");
    let _ = out.flush();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumer_leaves_every_unfinished_delivery_to_be_redelivered() {
    if std::env::var("ORKESTRA_SLOW_PREFIX").is_ok() {
        return;
    }
    let mut config = rabbit_config();
    config.bus.queue_expiry_ms = Some(300_000);
    let Some(producer) = rabbit_bus_with(&config).await else {
        return;
    };
    let mut child = Process::new(std::env::current_exe().unwrap())
        .args([
            "slow_consumer_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ORKESTRA_SLOW_PREFIX", &config.bus.prefix)
        .env("ORKESTRA_AMQP_URL", support::services::amqp_url().expose())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let started: Arc<Mutex<HashSet<String>>> = Arc::default();
    let finished: Arc<Mutex<HashSet<String>>> = Arc::default();
    let (st, fi) = (started.clone(), finished.clone());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line == "ready" {
                let _ = ready_tx.send(());
            } else if let Some(id) = line.strip_prefix("started ") {
                st.lock().unwrap().insert(id.to_owned());
            } else if let Some(id) = line.strip_prefix("finished ") {
                fi.lock().unwrap().insert(id.to_owned());
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the consumer process subscribed");
    let mut ids = Vec::new();
    for i in 0..200 {
        let cmd = order("sku", i % 100 + 1, &format!("c-{i}"));
        ids.push(cmd.id.clone());
        producer.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    }
    // Kill it while handlers run: some finished, some started and not finished.
    wait_until("the child finished some", 30, || {
        finished.lock().unwrap().len() >= 40
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let finished = finished.lock().unwrap().clone();
    let cut_off: HashSet<String> = started
        .lock()
        .unwrap()
        .difference(&finished)
        .cloned()
        .collect();
    assert!(!cut_off.is_empty(), "the kill cut handlers off mid-flight");
    assert!(finished.len() < ids.len(), "the kill came before the end");

    // A new consumer gets everything that was not finished, the cut-off ones included.
    let handled: Arc<Mutex<HashSet<String>>> = Arc::default();
    let h = handled.clone();
    let Some(consumer) = rabbit_bus_with(&config).await else {
        return;
    };
    consumer
        .subscribe(Subscription::command(
            "SlowLedger",
            move |cmd: Command<PlaceOrder>, _| {
                h.lock().unwrap().insert(cmd.id.clone());
                async { Ok(json!(null)) }
            },
        ))
        .await
        .unwrap();
    let unfinished: Vec<&String> = ids.iter().filter(|id| !finished.contains(*id)).collect();
    wait_until("every unfinished delivery redelivered", 30, || {
        let handled = handled.lock().unwrap();
        unfinished.iter().all(|id| handled.contains(*id))
    })
    .await;
}
