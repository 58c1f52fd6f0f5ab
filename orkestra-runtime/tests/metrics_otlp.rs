//! `Telemetry::otlp` pushes metrics too: to the traces URL's `/v1/metrics`, every
//! `metrics_interval`, as OTLP over HTTP/protobuf. A local listener stands in for the
//! collector. Runs with `--features otlp`.
#![cfg(feature = "otlp")]

mod support;

use std::time::Duration;

use orkestra_runtime::telemetry::Telemetry;
use orkestra_runtime::{Bus, Command, CommandEnvelope, Metadata, Subscription};
use serde_json::{Value, json};
use support::payloads::PlaceOrder;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_pushed_beside_the_spans() {
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = collector.local_addr().unwrap().port();
    let guard = Telemetry::new("metrics-otlp")
        .otlp(format!("http://127.0.0.1:{port}/v1/traces"))
        .metrics_interval(Duration::from_millis(200))
        .init_metrics()
        .unwrap();
    let bus = Bus::in_process();
    bus.subscribe(Subscription::command(
        "OtlpLedger",
        |_: Command<PlaceOrder>, _| async { Ok(Value::Null) },
    ))
    .await
    .unwrap();
    let command = Command::<PlaceOrder>::from_json(
        json!({"product_id": "p", "quantity": 1}),
        Metadata::new(),
    )
    .unwrap();
    bus.dispatch(CommandEnvelope::wrap(command)).await.unwrap();

    let (mut stream, _) = tokio::time::timeout(Duration::from_secs(20), collector.accept())
        .await
        .expect("an export within 20 s")
        .unwrap();
    let mut request = Vec::new();
    let mut buf = [0u8; 8192];
    // The headers, then as much of the body as Content-Length says.
    let (head, body_len) = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the exporter closed before its request was complete");
        request.extend_from_slice(&buf[..n]);
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&request[..end]).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap())
                .unwrap_or(0);
            while request.len() < end + 4 + len {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0);
                request.extend_from_slice(&buf[..n]);
            }
            break (head, len);
        }
    };
    stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    assert!(head.starts_with("post /v1/metrics "), "{head}");
    assert!(
        head.contains("content-type: application/x-protobuf"),
        "{head}"
    );
    assert!(body_len > 0);
    // The protobuf carries the instrument names as plain strings.
    let body = String::from_utf8_lossy(&request[request.len() - body_len..]).into_owned();
    assert!(
        body.contains("messaging.client.consumed.messages"),
        "{body:?}"
    );
    assert!(body.contains("OtlpLedger"));
    drop(guard);
}
