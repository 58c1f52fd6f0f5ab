//! Trace propagation through RabbitMQ: the producer span injects `traceparent`, the
//! consumer span continues the same trace (and links to the producer), and the handler
//! span sits under it. Its own binary: it installs a global subscriber, since consumers
//! run on the runtime's worker threads.

mod support;

use std::time::Duration;

use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use orkestra_runtime::{Command, CommandEnvelope, Metadata, Subscription};
use serde_json::json;
use support::payloads::PlaceOrder;
use support::services::rabbit_bus;
use tracing_subscriber::layer::SubscriberExt;

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_crosses_the_broker_in_one_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("rabbit-test")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let Some(bus) = rabbit_bus().await else {
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    bus.subscribe(Subscription::command(
        "Traced",
        move |cmd: Command<PlaceOrder>, _| {
            let tx = tx.clone();
            async move {
                tx.send(cmd.id.clone()).unwrap();
                Ok(json!(null))
            }
        },
    ))
    .await
    .unwrap();
    let cmd = Command::<PlaceOrder>::from_json(
        json!({"product_id": "p", "quantity": 1}),
        Metadata::new(),
    )
    .unwrap();
    let id = cmd.id.clone();
    bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap()
            .unwrap(),
        id
    );
    tokio::time::sleep(Duration::from_millis(200)).await; // let the handler's spans close
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| {
                s.name == name
                    && (attr(s, "messaging.message.id").as_deref() == Some(id.as_str())
                        || name == "orkestra.rabbitmq.publish")
            })
            .unwrap_or_else(|| {
                panic!(
                    "no {name} span among {:?}",
                    spans.iter().map(|s| &s.name).collect::<Vec<_>>()
                )
            })
    };
    let dispatch = find("orkestra.command.dispatch");
    let publish = find("orkestra.rabbitmq.publish");
    let consume = find("orkestra.rabbitmq.consume");
    let handle = find("orkestra.command.handle");
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert_eq!(consume.span_kind, SpanKind::Consumer);
    assert_eq!(publish.parent_span_id, dispatch.span_context.span_id());
    let trace_id = dispatch.span_context.trace_id();
    assert_eq!(
        consume.span_context.trace_id(),
        trace_id,
        "the consumer continues the producer's trace"
    );
    assert_eq!(
        consume.parent_span_id,
        publish.span_context.span_id(),
        "child of the extracted context"
    );
    assert!(
        consume
            .links
            .iter()
            .any(|l| l.span_context.span_id() == publish.span_context.span_id()),
        "and linked"
    );
    assert_eq!(handle.parent_span_id, consume.span_context.span_id());
    assert_eq!(
        attr(publish, "messaging.system").as_deref(),
        Some("rabbitmq")
    );
    assert_eq!(
        attr(publish, "messaging.rabbitmq.destination.routing_key").as_deref(),
        Some("orders.commands.place_order")
    );
    assert!(
        attr(consume, "messaging.destination.name")
            .is_some_and(|q| q.ends_with(".cmd.orders.commands.place_order"))
    );
    assert!(
        consume
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "messaging.rabbitmq.message.delivery_tag")
    );
}
