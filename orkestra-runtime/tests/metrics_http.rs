//! `Telemetry::serve`: `/metrics` in the Prometheus text format (checked by `promtool
//! check metrics` when it is installed), `/healthz`, `/readyz` (200, then 503 naming
//! what failed: a check of our own, a RabbitMQ bus whose broker went away), and the
//! errors of an address that is not one or is taken.
//!
//! Each test installs its own endpoint with `Telemetry::init_metrics` (no tracing
//! subscriber), on port 0.

mod support;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use orkestra_runtime::telemetry::{ReadyCheck, Telemetry, TelemetryError};
use orkestra_runtime::{
    Bus, Command, CommandEnvelope, Event, EventEnvelope, HandlerError, Metadata, SecretUrl, Store,
    Subscription,
};
use serde_json::{Value, json};
use support::payloads::{OrderPlaced, PlaceOrder};
use support::proxy::Proxy;
use support::services::{rabbit_config, unavailable};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One HTTP/1.1 request; the status and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    get_with(addr, "GET", path).await
}

async fn get_with(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("the endpoint answers within 10 s")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

fn command() -> CommandEnvelope {
    CommandEnvelope::wrap(
        Command::<PlaceOrder>::from_json(
            json!({"product_id": "sku_1", "quantity": 1}),
            Metadata::new(),
        )
        .unwrap(),
    )
}

/// `promtool check metrics` on `exposition`, when promtool is installed: its complaints.
fn promtool(exposition: &str) -> Option<String> {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(if out.status.success() {
        said
    } else {
        format!("FAILED: {said}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_metrics_health_and_readiness() {
    let guard = Telemetry::new("metrics-http")
        .serve("127.0.0.1:0")
        .init_metrics()
        .unwrap();
    let addr = guard.metrics_addr().expect("serving");
    let bus = Bus::in_process();
    let store = Store::memory();
    let handler = "HttpLedger \"quoted\" \\ back\nslash ü";
    bus.subscribe(Subscription::command(
        handler,
        |cmd: Command<PlaceOrder>, _| async move {
            if cmd.quantity > 1 {
                Err(HandlerError::fail("too many"))
            } else {
                Ok(Value::Null)
            }
        },
    ))
    .await
    .unwrap();
    bus.dispatch(command()).await.unwrap();

    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "# TYPE messaging_client_consumed_messages_total counter",
        "# TYPE messaging_process_duration_seconds histogram",
        "# TYPE messaging_client_sent_messages_total counter",
        "# TYPE orkestra_bus_in_flight gauge",
        "# HELP messaging_process_duration_seconds Duration of one handler run, by outcome.",
        "target_info{service_name=\"metrics-http\"} 1",
    ] {
        assert!(metrics.contains(line), "{line:?} missing from:\n{metrics}");
    }
    // The handler's name escaped, not dropped: `\` `"` and the line feed.
    let escaped = "orkestra_handler=\"HttpLedger \\\"quoted\\\" \\\\ back\\nslash ü\"";
    let consumed = metrics
        .lines()
        .find(|l| l.starts_with("messaging_client_consumed_messages_total{"))
        .unwrap_or_else(|| panic!("no consumed series in:\n{metrics}"));
    assert!(consumed.contains(escaped), "{consumed}");
    assert!(
        consumed.contains("messaging_system=\"orkestra\""),
        "{consumed}"
    );
    assert!(consumed.ends_with(" 1"), "{consumed}");
    assert!(
        metrics.contains(
            "messaging_process_duration_seconds_bucket{messaging_system=\"orkestra\",orkestra_handler="
        ) && metrics.contains("le=\"+Inf\"} 1"),
        "{metrics}"
    );
    match promtool(&metrics) {
        Some(said) => assert!(!said.starts_with("FAILED"), "promtool: {said}\n{metrics}"),
        None => eprintln!("promtool is not installed: the exposition is not checked by it"),
    }

    guard.ready_when(&bus).ready_when(&store);
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body, json!({"status": "ready", "checks": ["bus", "store"]}));

    let broken = Arc::new(AtomicBool::new(true));
    let b = broken.clone();
    guard.ready_when(ReadyCheck::new("ledger", move || {
        let broken = b.load(Ordering::SeqCst);
        async move {
            if broken {
                Err("the ledger is closed".to_owned())
            } else {
                Ok(())
            }
        }
    }));
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "not ready");
    assert_eq!(
        body["failed"],
        json!([{"check": "ledger", "reason": "the ledger is closed"}])
    );
    broken.store(false, Ordering::SeqCst);
    assert_eq!(get(addr, "/readyz").await.0, 200);

    assert_eq!(get(addr, "/nothing").await.0, 404);
    assert_eq!(get_with(addr, "POST", "/metrics").await.0, 405);

    // The bus shuts down: not ready.
    bus.shutdown(Duration::from_secs(1)).await.unwrap();
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("the bus is shutting down"), "{body}");

    // Dropping the guard stops the listener.
    drop(guard);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[test]
fn a_bad_or_taken_address_is_an_error_naming_the_setting() {
    for bad in ["nonsense", "127.0.0.1:99999", "127.0.0.1"] {
        let error = Telemetry::new("x").serve(bad).init_metrics().unwrap_err();
        assert!(
            matches!(
                error,
                TelemetryError::Serve {
                    setting: "Telemetry::serve",
                    ..
                }
            ),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(
            text.starts_with(&format!(
                "Telemetry::serve = \"{bad}\": not a host:port address"
            )),
            "{text}"
        );
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let error = Telemetry::new("x")
        .serve(address.clone())
        .init_metrics()
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("Telemetry::serve = \"{address}\": the address is already in use")
    );
}

/// With 200 handlers subscribed, each with a few runs, one scrape takes under 10 ms
/// (in a release build; a debug build is allowed ten times as long) and the series do
/// not grow with the number of messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_with_200_handlers_is_quick() {
    let guard = Telemetry::new("metrics-scale")
        .serve("127.0.0.1:0")
        .init_metrics()
        .unwrap();
    let addr = guard.metrics_addr().unwrap();
    let bus = Bus::in_process();
    for i in 0..200 {
        bus.subscribe(Subscription::events(
            format!("Scale{i}"),
            |_: Event<OrderPlaced>, _| async { Ok(()) },
        ))
        .await
        .unwrap();
    }
    for _ in 0..3 {
        bus.publish(EventEnvelope::wrap(event())).await.unwrap();
    }
    let (_, before) = get(addr, "/metrics").await;
    for _ in 0..20 {
        bus.publish(EventEnvelope::wrap(event())).await.unwrap();
    }
    let mut fastest = Duration::MAX;
    let mut after = String::new();
    for _ in 0..5 {
        let started = Instant::now();
        let (status, body) = get(addr, "/metrics").await;
        fastest = fastest.min(started.elapsed());
        assert_eq!(status, 200);
        after = body;
    }
    // This test's series only: other tests of this binary install providers too, and
    // what is recorded outside a bus goes to the latest one.
    let series = |s: &str| {
        s.lines()
            .filter(|l| l.contains("orkestra_handler=\"Scale"))
            .count()
    };
    assert!(series(&before) >= 200 * 20, "{}", series(&before));
    let names = |s: &str| -> std::collections::BTreeSet<String> {
        s.lines()
            .filter(|l| l.contains("orkestra_handler=\"Scale"))
            .map(|l| l.rsplit_once(' ').unwrap().0.to_owned())
            .collect()
    };
    let new: Vec<_> = names(&after).difference(&names(&before)).cloned().collect();
    assert!(new.is_empty(), "more messages, more series: {new:#?}");
    assert_eq!(series(&before), series(&after));
    let limit = if cfg!(debug_assertions) { 100 } else { 10 };
    eprintln!(
        "scrape of {} series with 200 handlers: {fastest:?}",
        series(&after)
    );
    assert!(
        fastest < Duration::from_millis(limit),
        "a scrape took {fastest:?}"
    );
}

fn event() -> Event<OrderPlaced> {
    Event::new(
        OrderPlaced {
            order_id: "o1".into(),
            quantity: 3,
        },
        Metadata::new(),
    )
    .unwrap()
}

/// `/readyz` says 503 while the bus's broker is unreachable and 200 once it is back.
///
/// The outage is a cut proxy in front of the shared broker on 5672, not
/// `rabbitmqctl stop_app`: stopping that broker would fail every other test and session
/// using it at the same time, while the bus behind the proxy sees exactly what a
/// stopped broker looks like (its connection drops, reconnecting is refused).
/// `rabbitmq_cluster.rs`-style `stop_app` on a node of the throwaway cluster is
/// `readyz_follows_a_stopped_cluster_node` below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_broker() {
    let Ok(proxy) = Proxy::start("127.0.0.1:5672".into()).await else {
        unavailable("a local proxy port", &"cannot listen");
        return;
    };
    let mut config = rabbit_config();
    config.bus.url = Some(SecretUrl::new(format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f",
        proxy.port
    )));
    let Some(bus) = support::services::rabbit_bus_with(&config).await else {
        return;
    };
    let guard = Telemetry::new("metrics-readyz")
        .serve("127.0.0.1:0")
        .init_metrics()
        .unwrap();
    let addr = guard.metrics_addr().unwrap();
    guard.ready_when(&bus);
    assert_eq!(get(addr, "/readyz").await.0, 200);

    proxy.cut();
    let body = wait_for_status(addr, 503, Duration::from_secs(20)).await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["failed"][0]["check"], "bus");
    let reason = body["failed"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("broker connection"), "{reason}");
    assert!(!reason.contains("guest:guest"), "no password in {reason}");

    proxy.restore();
    wait_for_status(addr, 200, Duration::from_secs(60)).await;
    // And the bus works again.
    bus.subscribe(Subscription::command(
        "ReadyLedger",
        |_: Command<PlaceOrder>, _| async { Ok(Value::Null) },
    ))
    .await
    .unwrap();
    let receipt = bus.call(command(), Duration::from_secs(10)).await.unwrap();
    assert_eq!(receipt.status(), orkestra_runtime::CommandStatus::Succeeded);
}

/// The same with `rabbitmqctl stop_app` / `start_app` on node 3 of the throwaway
/// three-node cluster (`ORKESTRA_CLUSTER_URLS`, as `rabbitmq_cluster.rs` uses it): only
/// that node stops, so nothing else on the machine notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_a_stopped_cluster_node() {
    let Some(node3) = std::env::var("ORKESTRA_CLUSTER_URLS")
        .ok()
        .and_then(|urls| urls.split_whitespace().nth(2).map(str::to_owned))
    else {
        eprintln!("SKIPPED: ORKESTRA_CLUSTER_URLS is not set (see .ci/run)");
        return;
    };
    let mut config = rabbit_config();
    config.bus.url = Some(SecretUrl::new(node3));
    let bus = Bus::from_config(&config).await.unwrap();
    let guard = Telemetry::new("metrics-cluster")
        .serve("127.0.0.1:0")
        .init_metrics()
        .unwrap();
    let addr = guard.metrics_addr().unwrap();
    guard.ready_when(&bus);
    assert_eq!(get(addr, "/readyz").await.0, 200);
    let node = ["-n", "orkestra3@localhost"];
    assert!(
        cluster_ctl(&[&node[..], &["stop_app"]].concat()),
        "stop_app"
    );
    let stopped = wait_for_status(addr, 503, Duration::from_secs(30)).await;
    let started = cluster_ctl(&[&node[..], &["start_app"]].concat());
    assert!(started, "start_app");
    assert!(stopped.contains("\"check\":\"bus\""), "{stopped}");
    wait_for_status(addr, 200, Duration::from_secs(90)).await;
}

/// `rabbitmqctl` as the cluster's script runs it (as the rabbitmq user).
fn cluster_ctl(args: &[&str]) -> bool {
    std::process::Command::new("runuser")
        .args([
            "-u",
            "rabbitmq",
            "--",
            "env",
            "HOME=/var/lib/rabbitmq",
            "rabbitmqctl",
        ])
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Asks `/readyz` until it answers `status`; its body.
async fn wait_for_status(addr: SocketAddr, status: u16, within: Duration) -> String {
    let started = Instant::now();
    loop {
        let (got, body) = get(addr, "/readyz").await;
        if got == status {
            return body;
        }
        assert!(
            started.elapsed() < within,
            "/readyz still {got} after {within:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
