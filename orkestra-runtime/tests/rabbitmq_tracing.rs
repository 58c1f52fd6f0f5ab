//! Trace propagation through RabbitMQ: the producer span injects `traceparent`, the
//! consumer span continues the same trace (and links to the producer), and the handler
//! span sits under it; on the command path and on the event path. Both RabbitMQ spans
//! carry the message's type and id and its correlation, causation and actor ids; for a
//! body that is not an Orkestra message, what is known (the message id of its properties).
//!
//! Its own binary: it installs one global subscriber (consumers run on the runtime's
//! worker threads), shared by the tests, which find their spans by message id.

mod support;

use orkestra_runtime::trace::LOG_CONTEXT_TARGET;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::filter_fn;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use orkestra_runtime::{
    ActorType, Command, CommandEnvelope, Event, EventEnvelope, Metadata, Payload, Subscription,
};
use serde_json::json;
use support::payloads::{OrderPlaced, PlaceOrder};
use support::services::{amqp_url, rabbit_bus, rabbit_bus_with, rabbit_config};
use tracing_subscriber::layer::SubscriberExt;

/// How long a test waits for a handler or for spans.
const WAIT: Duration = Duration::from_secs(20);

struct Telemetry {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
}

/// The global OpenTelemetry layer over an in-memory exporter, installed once.
fn telemetry() -> &'static Telemetry {
    static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();
    TELEMETRY.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry().with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("rabbit-test"))
                .with_filter(filter_fn(|m| m.target() != LOG_CONTEXT_TARGET)),
        );
        tracing::subscriber::set_global_default(subscriber).unwrap();
        Telemetry { exporter, provider }
    })
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// The finished span named `name` whose `messaging.message.id` is `id`, if any.
fn find<'a>(spans: &'a [SpanData], name: &str, id: &str) -> Option<&'a SpanData> {
    spans
        .iter()
        .find(|s| s.name == name && attr(s, "messaging.message.id").as_deref() == Some(id))
}

/// Waits until a span of each name with `messaging.message.id` = `id` has finished
/// (a handler's spans close after it has answered the test), then returns all spans.
async fn spans_for(id: &str, names: &[&str]) -> Vec<SpanData> {
    let t = telemetry();
    let deadline = Instant::now() + WAIT;
    loop {
        t.provider.force_flush().unwrap();
        let spans = t.exporter.get_finished_spans().unwrap();
        let missing: Vec<_> = names
            .iter()
            .filter(|n| find(&spans, n, id).is_none())
            .collect();
        if missing.is_empty() {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "no {missing:?} span for message {id} among {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `span` carries the message's type and id under `kind` (`command` or `event`), its
/// correlation, causation and actor ids, and nothing of the other kind.
fn assert_message_attributes(
    span: &SpanData,
    kind: &str,
    type_name: &str,
    id: &str,
    metadata: &Metadata,
) {
    let other = if kind == "command" {
        "event"
    } else {
        "command"
    };
    let name = &span.name;
    assert_eq!(
        attr(span, "messaging.message.id").as_deref(),
        Some(id),
        "{name}"
    );
    assert_eq!(
        attr(span, &format!("orkestra.{kind}.type")).as_deref(),
        Some(type_name),
        "{name}"
    );
    assert_eq!(
        attr(span, &format!("orkestra.{kind}.id")).as_deref(),
        Some(id),
        "{name}"
    );
    assert_eq!(
        attr(span, &format!("orkestra.{other}.type")),
        None,
        "{name}"
    );
    assert_eq!(attr(span, &format!("orkestra.{other}.id")), None, "{name}");
    assert_eq!(
        attr(span, "orkestra.correlation_id"),
        Some(metadata.correlation_id.clone()),
        "{name}"
    );
    assert_eq!(
        attr(span, "orkestra.causation_id"),
        metadata.causation_id,
        "{name}"
    );
    assert_eq!(attr(span, "orkestra.actor_id"), metadata.actor_id, "{name}");
}

/// The consumer span continues the producer's trace: same trace id as `outer`, child of
/// the producer span and linked to it; the handler span is the consumer span's child.
fn assert_one_trace(outer: &SpanData, publish: &SpanData, consume: &SpanData, handle: &SpanData) {
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert_eq!(consume.span_kind, SpanKind::Consumer);
    assert_eq!(publish.parent_span_id, outer.span_context.span_id());
    assert_eq!(
        consume.span_context.trace_id(),
        outer.span_context.trace_id(),
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
    assert!(
        consume
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "messaging.rabbitmq.message.delivery_tag")
    );
}

/// Waits for the handler to see message `id` of `kind` (`command` or `event`), then
/// checks its flow: outer span > RabbitMQ publish > consume > handle in one trace, both
/// RabbitMQ spans with the message's attributes. Returns the publish and consume spans.
async fn assert_flow(
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    kind: &str,
    type_name: &str,
    id: &str,
    metadata: &Metadata,
) -> (SpanData, SpanData) {
    let handled = tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("the handler ran")
        .unwrap();
    assert_eq!(handled, id);
    let outer = if kind == "command" {
        "orkestra.command.dispatch"
    } else {
        "orkestra.event.publish"
    };
    let handle = format!("orkestra.{kind}.handle");
    let names = [
        outer,
        "orkestra.rabbitmq.publish",
        "orkestra.rabbitmq.consume",
        handle.as_str(),
    ];
    let spans = spans_for(id, &names).await;
    let [outer, publish, consume, handle] = names.map(|n| find(&spans, n, id).unwrap());
    assert_one_trace(outer, publish, consume, handle);
    for span in [publish, consume] {
        assert_message_attributes(span, kind, type_name, id, metadata);
    }
    (publish.clone(), consume.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_crosses_the_broker_in_one_trace() {
    telemetry();
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
    let mut metadata = Metadata::new().with_actor("user_3", ActorType::User);
    metadata.causation_id = Some("upstream-request-1".into());
    let cmd = Command::<PlaceOrder>::from_json(json!({"product_id": "p", "quantity": 1}), metadata)
        .unwrap();
    let (id, metadata) = (cmd.id.clone(), cmd.metadata.clone());
    bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    let (publish, consume) =
        assert_flow(&mut rx, "command", PlaceOrder::TYPE_NAME, &id, &metadata).await;
    assert_eq!(
        attr(&publish, "messaging.rabbitmq.destination.routing_key").as_deref(),
        Some("orders.commands.place_order")
    );
    assert!(
        attr(&consume, "messaging.destination.name")
            .is_some_and(|q| q.ends_with(".cmd.orders.commands.place_order"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_crosses_the_broker_in_one_trace() {
    telemetry();
    let Some(bus) = rabbit_bus().await else {
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    bus.subscribe(Subscription::events(
        "TracedAudit",
        move |ev: Event<OrderPlaced>, _| {
            let tx = tx.clone();
            async move {
                tx.send(ev.id.clone()).unwrap();
                Ok(())
            }
        },
    ))
    .await
    .unwrap();
    let parent = Metadata::new().with_actor("user_4", ActorType::User);
    let event = Event::new(
        OrderPlaced {
            order_id: "o-trace".into(),
            quantity: 2,
        },
        Metadata::derive(&parent, "cmd-that-caused-it"),
    )
    .unwrap();
    let (id, metadata) = (event.id.clone(), event.metadata.clone());
    bus.publish(EventEnvelope::wrap(event)).await.unwrap();
    let (publish, consume) =
        assert_flow(&mut rx, "event", OrderPlaced::TYPE_NAME, &id, &metadata).await;
    assert_eq!(
        attr(&publish, "messaging.rabbitmq.destination.routing_key").as_deref(),
        Some(OrderPlaced::TOPIC)
    );
    assert!(
        attr(&consume, "messaging.destination.name")
            .is_some_and(|q| q.ends_with(".evt.TracedAudit"))
    );
    assert_eq!(
        attr(&consume, "orkestra.handler").as_deref(),
        Some("TracedAudit")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_body_is_traced_with_what_is_known() {
    telemetry();
    let config = rabbit_config();
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    let mut dead = bus.dead_letters().await.unwrap();
    bus.subscribe(Subscription::command(
        "Sturdy",
        |_: Command<PlaceOrder>, _| async { Ok(json!(null)) },
    ))
    .await
    .unwrap();
    let conn = Connection::connect(amqp_url().expose(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let raw_id = format!("raw-{}", uuid::Uuid::new_v4());
    channel
        .basic_publish(
            format!("{}.commands", config.bus.prefix).as_str().into(),
            PlaceOrder::TOPIC.into(),
            BasicPublishOptions::default(),
            b"not an orkestra message",
            BasicProperties::default().with_message_id(raw_id.as_str().into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let letter = tokio::time::timeout(WAIT, dead.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(letter.reason().starts_with("undecodable message"));
    assert_eq!(
        letter.message_id(),
        raw_id,
        "the placeholder keeps the message id of the properties"
    );
    let names = ["orkestra.rabbitmq.consume", "orkestra.rabbitmq.publish"];
    let spans = spans_for(&raw_id, &names).await;
    let [consume, republish] = names.map(|n| find(&spans, n, &raw_id).unwrap());
    assert_eq!(republish.span_kind, SpanKind::Producer);
    assert_eq!(
        republish.parent_span_id,
        consume.span_context.span_id(),
        "the dead letter is published while the delivery is consumed"
    );
    assert_eq!(
        attr(republish, "messaging.destination.name"),
        Some(format!("{}.deadletter", config.bus.prefix))
    );
    for span in [consume, republish] {
        for unknown in [
            "orkestra.command.type",
            "orkestra.command.id",
            "orkestra.correlation_id",
        ] {
            assert_eq!(attr(span, unknown), None, "{} has {unknown}", span.name);
        }
    }
    conn.close(200, "done".into()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_starts_a_new_trace_linked_to_the_original() {
    use orkestra_runtime::HandlerError;
    use orkestra_runtime::bus::rabbitmq::{DeadLetterAdmin, Selection};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    telemetry();
    let config = rabbit_config();
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    let healed = Arc::new(AtomicBool::new(false));
    let flag = healed.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    bus.subscribe(
        Subscription::command("Replayed", move |cmd: Command<PlaceOrder>, _| {
            let (tx, healed) = (tx.clone(), flag.load(Ordering::SeqCst));
            async move {
                if !healed {
                    return Err(HandlerError::fail("not yet"));
                }
                tx.send(cmd.id.clone()).unwrap();
                Ok(json!(null))
            }
        })
        .with_max_retries(0),
    )
    .await
    .unwrap();
    let cmd = Command::<PlaceOrder>::from_json(
        json!({"product_id": "p", "quantity": 1}),
        Metadata::new(),
    )
    .unwrap();
    let id = cmd.id.clone();
    bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    let admin = DeadLetterAdmin::connect(&config.bus).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while admin.list(None, None).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    healed.store(true, Ordering::SeqCst);
    let done = admin
        .replay(&Selection::ids([id.clone()]), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(done.done, vec![id.clone()]);
    let handled = tokio::time::timeout(WAIT, rx.recv()).await.unwrap();
    assert_eq!(handled, Some(id.clone()));
    admin.close().await;

    let t = telemetry();
    let deadline = Instant::now() + WAIT;
    let consumes = loop {
        t.provider.force_flush().unwrap();
        let consumes: Vec<SpanData> = t
            .exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|s| {
                s.name == "orkestra.rabbitmq.consume"
                    && attr(s, "messaging.message.id").as_deref() == Some(id.as_str())
            })
            .collect();
        if consumes.len() >= 2 || Instant::now() > deadline {
            break consumes;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let [original, replay] = consumes.as_slice() else {
        panic!("expected two consume spans, got {}", consumes.len());
    };
    let first = original.span_context.trace_id();
    assert_ne!(
        replay.span_context.trace_id(),
        first,
        "the replay is a trace of its own"
    );
    assert!(
        replay
            .links
            .iter()
            .any(|l| l.span_context.trace_id() == first),
        "linked to the original trace"
    );
}
