//! Log lines written inside a handler carry the message's ids whether or not the flow is
//! sampled and whether or not an OpenTelemetry layer is installed. Its own binary: the
//! sampling ratio is process-wide, and these tests turn it off.

mod support;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use orkestra_runtime::trace::{LOG_CONTEXT_TARGET, TraceContext, set_sampling_ratio};
use orkestra_runtime::{ActorType, Bus, Command, CommandEnvelope, Event, Metadata, Subscription};
use serde_json::{Value, json};
use support::logs::LogBuffer;
use support::payloads::{OrderPlaced, PlaceOrder};
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const SPAN_ID: &str = "b7ad6b7169203331";

/// A bus whose command handler logs, then publishes an event whose handler logs too.
async fn logging_bus() -> Bus {
    let bus = Bus::in_process();
    bus.subscribe(Subscription::command(
        "PlaceOrderHandler",
        |cmd: Command<PlaceOrder>, ctx| async move {
            tracing::info!(product = %cmd.product_id, "placing order");
            let ev = Event::new(
                OrderPlaced {
                    order_id: "o1".into(),
                    quantity: cmd.quantity,
                },
                Metadata::new(),
            )?;
            ctx.publish(ev).await?;
            Ok(json!(null))
        },
    ))
    .await
    .unwrap();
    bus.subscribe(Subscription::events(
        "Confirm",
        |_: Event<OrderPlaced>, _| async {
            tracing::info!("confirming");
            Ok(())
        },
    ))
    .await
    .unwrap();
    bus
}

fn command(trace: Option<TraceContext>) -> Command<PlaceOrder> {
    let mut metadata = Metadata::new().with_actor("user_3", ActorType::User);
    metadata.trace_context = trace;
    Command::from_json(json!({"product_id": "sku", "quantity": 1}), metadata).unwrap()
}

fn line<'a>(lines: &'a [Value], message: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["fields"]["message"] == message)
        .unwrap_or_else(|| panic!("no log line {message:?} in {lines:#?}"))
}

fn json_logs<S>(buffer: &LogBuffer) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let writer = buffer.clone();
    // The format `Telemetry` installs for `Logs::Json`.
    tracing_subscriber::fmt::layer()
        .json()
        .event_format(orkestra_runtime::telemetry::JsonLines::default())
        .with_writer(move || writer.clone())
}

async fn dispatch_and_check(logs: &LogBuffer) {
    let bus = logging_bus().await;
    // A flow with no trace context: ids from the message, no trace or span id.
    let plain = command(None);
    let (id, correlation) = (plain.id.clone(), plain.metadata.correlation_id.clone());
    bus.dispatch(CommandEnvelope::wrap(plain)).await.unwrap();
    let lines = logs.json_lines();
    let placing = &line(&lines, "placing order")["span"];
    assert_eq!(placing["correlation_id"], correlation.as_str());
    assert_eq!(placing["actor_id"], "user_3");
    assert!(placing.get("causation_id").is_none());
    assert!(placing.get("trace_id").is_none(), "{placing}");
    let confirming = &line(&lines, "confirming")["span"];
    assert_eq!(confirming["correlation_id"], correlation.as_str());
    assert_eq!(confirming["causation_id"], id.as_str());
    assert_eq!(confirming["actor_id"], "user_3");

    // A flow that arrived with a (not sampled) trace context: its ids are logged.
    let traced = command(Some(TraceContext {
        traceparent: format!("00-{TRACE_ID}-{SPAN_ID}-00"),
        tracestate: String::new(),
    }));
    let correlation = traced.metadata.correlation_id.clone();
    bus.dispatch(CommandEnvelope::wrap(traced)).await.unwrap();
    let lines = logs.json_lines();
    let placing = lines
        .iter()
        .find(|l| {
            l["fields"]["message"] == "placing order"
                && l["span"]["correlation_id"] == correlation.as_str()
        })
        .unwrap();
    assert_eq!(placing["span"]["trace_id"], TRACE_ID);
    assert_eq!(placing["span"]["span_id"], SPAN_ID);
    assert_eq!(placing["span"]["name"], "orkestra.log_context");
}

#[tokio::test]
async fn unsampled_flows_log_their_ids_without_opentelemetry() {
    set_sampling_ratio(0.0);
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::registry().with(json_logs(&logs));
    let _guard = tracing::subscriber::set_default(subscriber);
    dispatch_and_check(&logs).await;
}

#[tokio::test]
async fn unsampled_flows_log_their_ids_beside_an_opentelemetry_layer() {
    set_sampling_ratio(0.0);
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOff)
        .build();
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .with_filter(filter_fn(|m| m.target() != LOG_CONTEXT_TARGET)),
        )
        .with(json_logs(&logs));
    let _guard = tracing::subscriber::set_default(subscriber);
    dispatch_and_check(&logs).await;
}

/// A handler that opens spans of its own: every line it writes, however deep, still has
/// the message's ids at the top level (the current span is the handler's own).
#[tokio::test]
async fn lines_inside_a_handlers_own_spans_keep_its_ids() {
    set_sampling_ratio(0.0);
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::registry().with(json_logs(&logs));
    let _guard = tracing::subscriber::set_default(subscriber);
    let bus = Bus::in_process();
    bus.subscribe(Subscription::command(
        "PlaceOrderHandler",
        |_: Command<PlaceOrder>, _| async move {
            let charging = tracing::info_span!("charging", card = "visa");
            let _outer = charging.enter();
            tracing::info!(amount = 3, "charging the card");
            let retry = tracing::info_span!("retrying", attempt = 2);
            let _inner = retry.enter();
            tracing::warn!("card network slow");
            Ok(json!(null))
        },
    ))
    .await
    .unwrap();
    let traced = command(Some(TraceContext {
        traceparent: format!("00-{TRACE_ID}-{SPAN_ID}-00"),
        tracestate: String::new(),
    }));
    let correlation = traced.metadata.correlation_id.clone();
    bus.dispatch(CommandEnvelope::wrap(traced)).await.unwrap();
    tracing::info!("outside any handler");
    let lines = logs.json_lines();
    for (message, span) in [
        ("charging the card", "charging"),
        ("card network slow", "retrying"),
    ] {
        let line = line(&lines, message);
        assert_eq!(line["span"]["name"], span, "{line}");
        assert_eq!(line["correlation_id"], correlation.as_str(), "{line}");
        assert_eq!(line["actor_id"], "user_3", "{line}");
        assert_eq!(line["trace_id"], TRACE_ID, "{line}");
        assert_eq!(line["span_id"], SPAN_ID, "{line}");
    }
    assert_eq!(line(&lines, "charging the card")["fields"]["amount"], 3);
    assert_eq!(line(&lines, "card network slow")["span"]["attempt"], 2);
    let outside = line(&lines, "outside any handler");
    assert!(outside.get("correlation_id").is_none(), "{outside}");
}
