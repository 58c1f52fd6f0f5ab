//! Outages never hang: 16 tasks dispatch commands to a consumer in another process
//! while the link to the broker goes away: the broker restarted (`stop_app`, 3 s,
//! `start_app`), the network cut for 20 s (a proxy in front of the broker, so other
//! users of the shared broker see nothing), and the bus's connections closed by the
//! broker (`rabbitmqctl close_connection`). Every dispatch returns within the confirm
//! timeout, every confirmed command is handled, and both processes resume by
//! themselves. Each scenario runs `ORKESTRA_OUTAGE_REPEATS` times (default 2; the issue's
//! full run is 5). Its own test binary, so no other test sees the outages.

mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command as Process, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orkestra_runtime::{Bus, Command, CommandEnvelope, Metadata, SecretUrl, Subscription};
use serde_json::json;
use support::payloads::PlaceOrder;
use support::proxy::Proxy;
use support::services::{rabbit_config, rabbitmqctl, required};

const DISPATCHERS: usize = 16;
/// Commands dispatched before the outage starts, at least.
const BEFORE: usize = 1_000;
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// What "within the timeout" tolerates for scheduling on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(1500);

fn repeats() -> usize {
    std::env::var("ORKESTRA_OUTAGE_REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

fn config(prefix: &str, port: u16) -> orkestra_runtime::Config {
    let mut config = rabbit_config();
    config.bus.prefix = prefix.to_owned();
    config.bus.url = Some(SecretUrl::new(format!(
        "amqp://guest:guest@127.0.0.1:{port}/%2f"
    )));
    config.bus.queue_expiry_ms = Some(600_000);
    config.bus.confirm_timeout_ms = CONFIRM_TIMEOUT.as_millis() as u32;
    config
}

/// The consumer process: handles every command by printing its id, until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_consumer_child() {
    let (Ok(prefix), Ok(port)) = (
        std::env::var("ORKESTRA_OUTAGE_PREFIX"),
        std::env::var("ORKESTRA_OUTAGE_PORT"),
    ) else {
        return; // only as a child of the test below
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let bus = Bus::from_config(&config(&prefix, port.parse().unwrap()))
        .await
        .unwrap();
    bus.subscribe(Subscription::command(
        "OutageLedger",
        |cmd: Command<PlaceOrder>, _| {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "handled {}", cmd.id);
            let _ = out.flush();
            async { Ok(json!(null)) }
        },
    ))
    .await
    .unwrap();
    println!("ready");
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

struct Consumer {
    child: Child,
    handled: Arc<Mutex<HashSet<String>>>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_consumer(prefix: &str, port: u16) -> Consumer {
    let mut child = Process::new(std::env::current_exe().unwrap())
        .args([
            "outage_consumer_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ORKESTRA_OUTAGE_PREFIX", prefix)
        .env("ORKESTRA_OUTAGE_PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(
            std::fs::File::create(std::env::temp_dir().join(format!("{prefix}.log")))
                .map_or_else(|_| Stdio::null(), Stdio::from),
        )
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let handled = Arc::new(Mutex::new(HashSet::new()));
    let (h, (ready_tx, ready_rx)) = (handled.clone(), std::sync::mpsc::channel());
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // The harness prints `test outage_consumer_child ... ` before it on one line.
            if line.ends_with("ready") {
                let _ = ready_tx.send(());
            } else if let Some(id) = line.strip_prefix("handled ") {
                h.lock().unwrap().insert(id.to_owned());
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the consumer process subscribed");
    Consumer { child, handled }
}

#[derive(Clone, Copy, Debug)]
enum Outage {
    /// `rabbitmqctl stop_app`, 3 s, `start_app`: a rolling upgrade of the broker.
    BrokerRestart,
    /// The network to the broker cut for 20 s.
    NetworkCut,
    /// The broker closes every connection of this test.
    ConnectionsClosed,
}

/// What one run saw.
struct Run {
    confirmed: Vec<String>,
    failed: usize,
    slowest: Duration,
}

async fn run(bus: &Bus, outage: Outage, proxy: &Proxy, prefix: &str) -> Run {
    let confirmed = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(0usize));
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..DISPATCHERS {
        let (bus, confirmed, failed, slowest, sent, done) = (
            bus.clone(),
            confirmed.clone(),
            failed.clone(),
            slowest.clone(),
            sent.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let cmd = Command::<PlaceOrder>::from_json(
                    json!({"product_id": "sku", "quantity": 1}),
                    Metadata::new(),
                )
                .unwrap();
                let id = cmd.id.clone();
                let started = Instant::now();
                let result = bus.dispatch(CommandEnvelope::wrap(cmd)).await;
                let took = started.elapsed();
                {
                    let mut s = slowest.lock().unwrap();
                    *s = (*s).max(took);
                }
                match result {
                    Ok(_) => confirmed.lock().unwrap().push(id),
                    Err(_) => {
                        *failed.lock().unwrap() += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    // The outage starts once the flow is under way.
    while sent.load(std::sync::atomic::Ordering::SeqCst) < BEFORE {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    match outage {
        Outage::BrokerRestart => {
            assert!(rabbitmqctl(&["stop_app"]).is_some(), "stop_app");
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert!(rabbitmqctl(&["start_app"]).is_some(), "start_app");
        }
        Outage::NetworkCut => {
            proxy.cut();
            tokio::time::sleep(Duration::from_secs(20)).await;
            proxy.restore();
        }
        Outage::ConnectionsClosed => {
            let list = rabbitmqctl(&["list_connections", "-q", "pid", "client_properties"])
                .unwrap_or_default();
            let mut closed = 0;
            for line in list.lines().filter(|l| l.contains(prefix)) {
                let pid = line.split_whitespace().next().unwrap_or_default();
                if rabbitmqctl(&["close_connection", pid, "orkestra test: closed"]).is_some() {
                    closed += 1;
                }
            }
            assert!(closed >= 2, "closed both processes' connections ({list})");
        }
    }
    // The flow goes on for a while after the outage: both sides resumed.
    let resumed = sent.load(std::sync::atomic::Ordering::SeqCst);
    while sent.load(std::sync::atomic::Ordering::SeqCst) < resumed + BEFORE {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let confirmed = std::mem::take(&mut *confirmed.lock().unwrap());
    let failed = *failed.lock().unwrap();
    let slowest = *slowest.lock().unwrap();
    Run {
        confirmed,
        failed,
        slowest,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_dispatch_hangs_and_every_confirmed_command_is_handled_across_outages() {
    if std::env::var("ORKESTRA_OUTAGE_PREFIX").is_ok() {
        return;
    }
    if rabbitmqctl(&["status"]).is_none() {
        assert!(
            !required(),
            "rabbitmqctl is required to restart the broker (ORKESTRA_REQUIRE_SERVICES=1)"
        );
        eprintln!("SKIPPED: rabbitmqctl cannot control a local broker");
        return;
    }
    let proxy = Proxy::start("127.0.0.1:5672".into()).await.unwrap();
    let prefix = format!("orkestra-outage-{}", uuid::Uuid::new_v4().simple());
    let consumer = spawn_consumer(&prefix, proxy.port);
    let bus = Bus::from_config(&config(&prefix, proxy.port))
        .await
        .unwrap();
    let limit = CONFIRM_TIMEOUT + SLACK;
    for outage in [
        Outage::BrokerRestart,
        Outage::NetworkCut,
        Outage::ConnectionsClosed,
    ] {
        for repeat in 1..=repeats() {
            let started = Instant::now();
            let run = run(&bus, outage, &proxy, &prefix).await;
            eprintln!(
                "{outage:?} #{repeat}: {} confirmed, {} failed, slowest dispatch {:?}, {:?}",
                run.confirmed.len(),
                run.failed,
                run.slowest,
                started.elapsed()
            );
            assert!(
                run.slowest <= limit,
                "{outage:?} #{repeat}: a dispatch took {:?} (timeout {CONFIRM_TIMEOUT:?})",
                run.slowest
            );
            assert!(
                run.confirmed.len() >= BEFORE,
                "{outage:?} #{repeat}: the producer kept going ({} confirmed, {} failed)",
                run.confirmed.len(),
                run.failed
            );
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                let missing = {
                    let handled = consumer.handled.lock().unwrap();
                    run.confirmed
                        .iter()
                        .filter(|id| !handled.contains(*id))
                        .count()
                };
                if missing == 0 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{outage:?} #{repeat}: {missing} confirmed commands were never handled"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
