//! Spans and logs of the in-process bus, captured with OpenTelemetry's in-memory
//! exporter (a provider per test) and tracing-subscriber's JSON formatter.

mod support;

use orkestra_runtime::trace::LOG_CONTEXT_TARGET;
use support::logs::LogBuffer;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::filter_fn;

use opentelemetry::Value;
use opentelemetry::trace::{SpanKind, Status, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use orkestra_runtime::trace::{TraceContext, extract, inject};
use orkestra_runtime::{
    ActorType, Bus, Command, CommandEnvelope, Event, HandlerError, Metadata, Subscription,
};
use serde_json::json;
use support::payloads::*;
use tracing_subscriber::layer::SubscriberExt;

struct Capture {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    _guard: tracing::subscriber::DefaultGuard,
    logs: LogBuffer,
}

/// An OpenTelemetry layer over an in-memory exporter plus a JSON log layer, installed
/// for the current thread only.
fn capture() -> Capture {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("orkestra-test"))
                .with_filter(filter_fn(|m| m.target() != LOG_CONTEXT_TARGET)),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(move || writer.clone()),
        );
    let guard = tracing::subscriber::set_default(subscriber);
    Capture {
        exporter,
        provider,
        _guard: guard,
        logs,
    }
}

impl Capture {
    fn spans(&self) -> Vec<SpanData> {
        self.provider.force_flush().unwrap();
        self.exporter.get_finished_spans().unwrap()
    }

    fn log_lines(&self) -> Vec<serde_json::Value> {
        self.logs.json_lines()
    }
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn attr(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

fn attr_str(span: &SpanData, key: &str) -> Option<String> {
    attr(span, key).map(|v| v.as_str().into_owned())
}

async fn traced_bus() -> Bus {
    let bus = Bus::in_process();
    bus.subscribe(Subscription::command(
        "PlaceOrderHandler",
        |cmd: Command<PlaceOrder>, ctx| async move {
            tracing::info!(product = %cmd.product_id, "placing order");
            ctx.publish(Event::from_command(
                &cmd,
                OrderPlaced {
                    order_id: "o1".into(),
                    quantity: cmd.quantity,
                },
            )?)
            .await?;
            Ok(json!(null))
        },
    ))
    .await
    .unwrap();
    bus.subscribe(Subscription::events(
        "Confirm",
        |_: Event<OrderPlaced>, _| async { Ok(()) },
    ))
    .await
    .unwrap();
    bus.subscribe(
        Subscription::events("Index", |_: Event<OrderPlaced>, _| async {
            Err(HandlerError::fail("index down"))
        })
        .with_max_retries(1),
    )
    .await
    .unwrap();
    bus
}

fn command() -> Command<PlaceOrder> {
    Command::from_json(
        json!({"product_id": "sku", "quantity": 2}),
        Metadata::new().with_actor("user_9", ActorType::User),
    )
    .unwrap()
}

#[tokio::test]
async fn span_tree_of_a_command_and_the_events_it_publishes() {
    let cap = capture();
    let bus = traced_bus().await;
    let cmd = command();
    let (cmd_id, correlation) = (cmd.id.clone(), cmd.metadata.correlation_id.clone());
    bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    let spans = cap.spans();

    let dispatch = named(&spans, "orkestra.command.dispatch");
    let handle = named(&spans, "orkestra.command.handle");
    let publish = named(&spans, "orkestra.event.publish");
    let event_handles = named(&spans, "orkestra.event.handle");
    let retries = named(&spans, "orkestra.retry");
    assert_eq!((dispatch.len(), handle.len(), publish.len()), (1, 1, 1));
    assert_eq!(
        event_handles.len(),
        3,
        "Confirm once, Index twice (one retry)"
    );
    assert_eq!(retries.len(), 1);
    let (dispatch, handle, publish, retry) = (dispatch[0], handle[0], publish[0], retries[0]);

    // One trace; parents as documented.
    let trace_id = dispatch.span_context.trace_id();
    assert!(
        spans.iter().all(|s| s.span_context.trace_id() == trace_id),
        "one trace"
    );
    assert_eq!(handle.parent_span_id, dispatch.span_context.span_id());
    assert_eq!(
        publish.parent_span_id,
        handle.span_context.span_id(),
        "published inside the command handler"
    );
    assert_eq!(retry.parent_span_id, publish.span_context.span_id());
    let under_publish = event_handles
        .iter()
        .filter(|s| s.parent_span_id == publish.span_context.span_id())
        .count();
    let under_retry = event_handles
        .iter()
        .filter(|s| s.parent_span_id == retry.span_context.span_id())
        .count();
    assert_eq!((under_publish, under_retry), (2, 1));

    // Kinds and attributes.
    assert!(spans.iter().all(|s| s.span_kind == SpanKind::Internal));
    for span in [dispatch, handle] {
        assert_eq!(
            attr_str(span, "orkestra.command.type").as_deref(),
            Some("Test.Orders.PlaceOrder")
        );
        assert_eq!(
            attr_str(span, "orkestra.command.id").as_deref(),
            Some(cmd_id.as_str())
        );
        assert_eq!(
            attr_str(span, "orkestra.correlation_id").as_deref(),
            Some(correlation.as_str())
        );
        assert_eq!(
            attr_str(span, "orkestra.actor_id").as_deref(),
            Some("user_9")
        );
        assert_eq!(
            attr_str(span, "messaging.system").as_deref(),
            Some("orkestra")
        );
        assert_eq!(
            attr_str(span, "messaging.destination.name").as_deref(),
            Some("orders.commands.place_order")
        );
        assert_eq!(
            attr_str(span, "messaging.message.id").as_deref(),
            Some(cmd_id.as_str())
        );
    }
    assert_eq!(
        attr_str(dispatch, "messaging.operation.type").as_deref(),
        Some("send")
    );
    assert_eq!(
        attr_str(handle, "messaging.operation.type").as_deref(),
        Some("process")
    );
    assert_eq!(
        attr_str(handle, "orkestra.handler").as_deref(),
        Some("PlaceOrderHandler")
    );
    assert_eq!(
        attr_str(publish, "orkestra.causation_id").as_deref(),
        Some(cmd_id.as_str())
    );
    assert_eq!(
        attr_str(publish, "messaging.operation.type").as_deref(),
        Some("publish")
    );
    assert_eq!(attr(retry, "orkestra.retry.attempt"), Some(Value::I64(2)));
    assert_eq!(
        attr_str(retry, "orkestra.handler").as_deref(),
        Some("Index")
    );

    // Failed runs carry error status and error.type; successful ones do not.
    let failed: Vec<_> = event_handles
        .iter()
        .filter(|s| attr_str(s, "orkestra.handler").as_deref() == Some("Index"))
        .collect();
    assert_eq!(failed.len(), 2);
    for s in failed {
        assert_eq!(s.status, Status::error("index down"));
        assert_eq!(attr_str(s, "error.type").as_deref(), Some("failed"));
    }
    let ok = event_handles
        .iter()
        .find(|s| attr_str(s, "orkestra.handler").as_deref() == Some("Confirm"))
        .unwrap();
    assert_eq!(ok.status, Status::Unset);
    assert_eq!(
        dispatch.status,
        Status::Unset,
        "the command itself succeeded"
    );
}

#[tokio::test]
async fn a_rejected_command_marks_dispatch_and_handle_as_errors() {
    let cap = capture();
    let bus = Bus::in_process();
    bus.subscribe(Subscription::command(
        "No",
        |_: Command<PlaceOrder>, _| async { Err(HandlerError::reject("sold out")) },
    ))
    .await
    .unwrap();
    bus.dispatch(CommandEnvelope::wrap(command()))
        .await
        .unwrap();
    let spans = cap.spans();
    for name in ["orkestra.command.dispatch", "orkestra.command.handle"] {
        let span = named(&spans, name)[0];
        assert_eq!(span.status, Status::error("sold out"), "{name}");
        assert_eq!(
            attr_str(span, "error.type").as_deref(),
            Some("rejected"),
            "{name}"
        );
    }
}

#[tokio::test]
async fn logs_inside_a_handler_carry_ids_and_trace() {
    let cap = capture();
    let bus = traced_bus().await;
    let cmd = command();
    let (cmd_id, correlation) = (cmd.id.clone(), cmd.metadata.correlation_id.clone());
    bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    let spans = cap.spans();
    let handle = named(&spans, "orkestra.command.handle")[0];
    let lines = cap.log_lines();
    let line = lines
        .iter()
        .find(|l| l["fields"]["message"] == "placing order")
        .expect("handler log line");
    assert_eq!(
        line["fields"]["product"], "sku",
        "structured fields, not interpolation"
    );
    let span = &line["span"];
    assert_eq!(span["correlation_id"], correlation.as_str());
    assert_eq!(span["actor_id"], "user_9");
    assert_eq!(span["trace_id"], handle.span_context.trace_id().to_string());
    assert_eq!(span["span_id"], handle.span_context.span_id().to_string());
    assert!(
        span.get("causation_id").is_none(),
        "a fresh command has no causation id"
    );

    // The seed's structured lines: subscribed, retry (warn), dead letter (error).
    let subscribed = lines
        .iter()
        .find(|l| l["fields"]["message"] == "Command handler subscribed")
        .unwrap();
    assert_eq!(subscribed["level"], "INFO");
    assert_eq!(subscribed["fields"]["handler"], "PlaceOrderHandler");
    assert_eq!(subscribed["fields"]["orkestra"], "command_handler");
    assert_eq!(subscribed["fields"]["topic"], "orders.commands.place_order");
    let retry = lines
        .iter()
        .find(|l| l["fields"]["message"] == "Handler nack, requeuing")
        .unwrap();
    assert_eq!(retry["level"], "WARN");
    assert_eq!(retry["fields"]["orkestra"], "pubsub");
    assert_eq!(retry["fields"]["handler"], "Index");
    assert_eq!(retry["fields"]["attempt"], 1);
    assert_eq!(retry["fields"]["max_retries"], 1);
    let dead = lines
        .iter()
        .find(|l| l["fields"]["message"] == "Dead letter recorded")
        .unwrap();
    assert_eq!(dead["level"], "ERROR");
    assert_eq!(dead["fields"]["orkestra"], "pubsub");
    assert_eq!(dead["fields"]["handler"], "Index");
    assert_eq!(dead["fields"]["reason"], "index down");
    // The dead letter is logged inside the publish span of the event the command caused.
    assert_eq!(dead["span"]["name"], "orkestra.event.publish");
    assert_eq!(dead["span"]["orkestra.causation_id"], cmd_id.as_str());
}

#[tokio::test]
async fn trace_context_travels_in_event_metadata_and_headers() {
    let cap = capture();
    let bus = Bus::in_process();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    bus.subscribe(Subscription::events(
        "Keep",
        move |ev: Event<OrderPlaced>, _| {
            let tx = tx.clone();
            async move {
                tx.send(ev.metadata.trace_context.clone()).unwrap();
                Ok(())
            }
        },
    ))
    .await
    .unwrap();
    let ev = Event::new(
        OrderPlaced {
            order_id: "o".into(),
            quantity: 1,
        },
        Metadata::new(),
    )
    .unwrap();
    bus.publish(orkestra_runtime::EventEnvelope::wrap(ev))
        .await
        .unwrap();
    let context: TraceContext = rx
        .recv()
        .await
        .unwrap()
        .expect("trace context recorded in metadata");
    let spans = cap.spans();
    let publish = named(&spans, "orkestra.event.publish")[0];
    assert_eq!(
        context.traceparent,
        format!(
            "00-{}-{}-01",
            publish.span_context.trace_id(),
            publish.span_context.span_id()
        )
    );

    // Header helpers round-trip the W3C form.
    let mut headers = std::collections::HashMap::new();
    let remote = extract(&std::collections::HashMap::from([
        ("traceparent".to_owned(), context.traceparent.clone()),
        ("tracestate".to_owned(), "vendor=1".to_owned()),
    ]));
    inject(&remote, &mut headers);
    assert_eq!(headers["traceparent"], context.traceparent);
    assert_eq!(headers["tracestate"], "vendor=1");

    // A later run of a stored event, in a new trace, links back to its origin.
    let replayed = {
        let mut m = Metadata::new();
        m.trace_context = Some(context.clone());
        Event::new(
            OrderPlaced {
                order_id: "o".into(),
                quantity: 1,
            },
            m,
        )
        .unwrap()
    };
    bus.publish(orkestra_runtime::EventEnvelope::wrap(replayed))
        .await
        .unwrap();
    let spans = cap.spans();
    let handles = named(&spans, "orkestra.event.handle");
    let linked = handles
        .iter()
        .find(|s| !s.links.is_empty())
        .expect("a linked handle span");
    assert_eq!(
        linked.links[0].span_context.trace_id(),
        publish.span_context.trace_id()
    );
}

#[test]
fn malformed_trace_context_is_ignored() {
    let bad = TraceContext {
        traceparent: "00-zz-yy-01".into(),
        tracestate: String::new(),
    };
    assert!(!bad.span_context().is_valid());
    assert!(
        TraceContext::current().is_none(),
        "no subscriber: no context"
    );
}

/// Published by the relay, an event's `orkestra.event.publish` continues the trace
/// recorded with it: a child of the `orkestra.command.handle` that appended it, as when
/// the handler publishes directly, and its handlers' spans sit below it.
#[tokio::test]
async fn the_relay_continues_the_trace_recorded_with_the_event() {
    use orkestra_runtime::relay::Relay;
    use orkestra_runtime::{EventEnvelope, ExpectedVersion, PublishMode, Store};

    let cap = capture();
    let store = Store::memory().with_publish(PublishMode::Relay);
    let bus = Bus::in_process();
    let s = store.clone();
    bus.subscribe(Subscription::command(
        "PlaceOrderHandler",
        move |cmd: Command<PlaceOrder>, ctx| {
            let store = s.clone();
            async move {
                let event = Event::from_command(
                    &cmd,
                    OrderPlaced {
                        order_id: "o1".into(),
                        quantity: cmd.quantity,
                    },
                )?;
                store
                    .append_and_publish(
                        ctx.bus(),
                        "order-o1",
                        ExpectedVersion::NoStream,
                        vec![EventEnvelope::wrap(event)],
                    )
                    .await
                    .map_err(HandlerError::fail)?;
                Ok(json!(null))
            }
        },
    ))
    .await
    .unwrap();
    bus.subscribe(Subscription::events(
        "Confirm",
        |_: Event<OrderPlaced>, _| async { Ok(()) },
    ))
    .await
    .unwrap();
    bus.dispatch(CommandEnvelope::wrap(command()))
        .await
        .unwrap();
    assert!(
        named(&cap.spans(), "orkestra.event.publish").is_empty(),
        "relay mode: the handler only appends"
    );
    let mut relay = Relay::new(store.clone(), bus.clone())
        .start()
        .await
        .unwrap();
    relay
        .wait_for(store.head().await.unwrap().unwrap())
        .await
        .unwrap();
    relay.stop().await.unwrap();
    let spans = cap.spans();
    let handle = named(&spans, "orkestra.command.handle");
    let publish = named(&spans, "orkestra.event.publish");
    let event_handle = named(&spans, "orkestra.event.handle");
    assert_eq!((handle.len(), publish.len(), event_handle.len()), (1, 1, 1));
    let (handle, publish, event_handle) = (handle[0], publish[0], event_handle[0]);
    assert_eq!(
        publish.span_context.trace_id(),
        handle.span_context.trace_id(),
        "one trace through the relay"
    );
    assert_eq!(
        publish.parent_span_id,
        handle.span_context.span_id(),
        "the publish is a child of the command's handle span"
    );
    assert_eq!(event_handle.parent_span_id, publish.span_context.span_id());
    assert_eq!(
        spans
            .iter()
            .map(|s| s.span_context.trace_id())
            .collect::<std::collections::HashSet<_>>()
            .len(),
        1,
        "every span in one trace"
    );
}
