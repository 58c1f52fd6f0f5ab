//! Tracing: the spans every bus emits, and W3C trace-context propagation.
//!
//! Spans go through the `tracing` crate with OpenTelemetry field names, so an
//! application that installs `tracing-opentelemetry` receives them as OpenTelemetry spans
//! (`otel.kind`, `otel.status_code`, messaging semantic conventions). With no subscriber
//! installed a span costs one relaxed atomic load.
//!
//! | span | parent | when |
//! | --- | --- | --- |
//! | `orkestra.command.dispatch` | the caller's span | `Bus::dispatch` |
//! | `orkestra.command.handle` | dispatch (or retry) | each run of the command handler |
//! | `orkestra.event.publish` | the caller's span (a handler's span inside a handler) | `Bus::publish` |
//! | `orkestra.event.handle` | publish (or retry) | each run of each event handler |
//! | `orkestra.retry` | dispatch or publish | each retry, with `orkestra.retry.attempt` |
//!
//! Handle spans also carry `correlation_id`, `causation_id`, `actor_id`, `trace_id` and
//! `span_id` as plain fields, so every log line written inside a handler has them (for
//! example as span fields in tracing-subscriber's JSON output).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde::{Deserialize, Serialize};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::any_message::{Message, MessageKind};

/// Share of new flows (a dispatch or publish with no sampled trace around it) that get
/// spans, as `f64` bits. 1.0 by default: every flow, and the OpenTelemetry sampler decides.
static SAMPLING_RATIO: AtomicU64 = AtomicU64::new(0x3FF0_0000_0000_0000); // 1.0f64

/// Sets the share of new flows the buses trace, from 0.0 (none) to 1.0 (all, the default).
///
/// Inside a sampled trace the buses always trace; inside an unsampled OpenTelemetry trace
/// they never do. For a new flow, this ratio decides, by a hash of the correlation id, so
/// every message of one flow is traced or none is (across services too, since the
/// correlation id travels). An unsampled flow creates no spans at all, which keeps a
/// sampled-off OpenTelemetry pipeline almost free (see BENCHMARKS.md); its handler logs
/// then carry only their own fields. `telemetry::init` sets this from its configuration;
/// set it yourself when you install an OpenTelemetry layer with a ratio sampler.
pub fn set_sampling_ratio(ratio: f64) {
    let ratio = if ratio.is_nan() {
        1.0
    } else {
        ratio.clamp(0.0, 1.0)
    };
    SAMPLING_RATIO.store(ratio.to_bits(), Ordering::Relaxed);
}

/// The share of new flows the buses trace.
pub fn sampling_ratio() -> f64 {
    f64::from_bits(SAMPLING_RATIO.load(Ordering::Relaxed))
}

/// Whether the bus should create spans for `message`.
pub(crate) fn should_trace(message: &Message) -> bool {
    let current = Span::current();
    if !current.is_disabled() {
        let cx = current.context();
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            return sc.is_sampled();
        }
    }
    let ratio = sampling_ratio();
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    message.metadata().correlation_id.hash(&mut hasher);
    (hasher.finish() as f64 / u64::MAX as f64) < ratio
}

/// The W3C trace-context headers.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C vendor-specific trace state header.
pub const TRACESTATE: &str = "tracestate";

/// A W3C trace context (`traceparent` and `tracestate`), as it travels in message
/// metadata so work done later (a stored event handled by a subscriber) can link back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    /// `00-<trace id>-<span id>-<flags>`.
    pub traceparent: String,
    /// Vendor trace state, possibly empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tracestate: String,
}

impl TraceContext {
    /// The context of `span`, if it belongs to a valid OpenTelemetry trace (that is, an
    /// OpenTelemetry layer is installed and the span is enabled).
    pub fn of(span: &Span) -> Option<Self> {
        if span.is_disabled() {
            return None;
        }
        let cx = span.context();
        if !cx.span().span_context().is_sampled() {
            return None;
        }
        let mut headers = HashMap::new();
        inject(&cx, &mut headers);
        Some(Self {
            traceparent: headers.remove(TRACEPARENT)?,
            tracestate: headers.remove(TRACESTATE).unwrap_or_default(),
        })
    }

    /// The context of the current span, if any.
    pub fn current() -> Option<Self> {
        Self::of(&Span::current())
    }

    /// The remote span context this names (invalid if the text is malformed).
    pub fn span_context(&self) -> SpanContext {
        let mut headers = HashMap::with_capacity(2);
        headers.insert(TRACEPARENT.to_owned(), self.traceparent.clone());
        if !self.tracestate.is_empty() {
            headers.insert(TRACESTATE.to_owned(), self.tracestate.clone());
        }
        extract(&headers).span().span_context().clone()
    }
}

/// Writes `traceparent` (and `tracestate` when not empty) for `cx` into `headers`.
pub fn inject(cx: &opentelemetry::Context, headers: &mut dyn Injector) {
    TraceContextPropagator::new().inject_context(cx, headers);
}

/// Reads `traceparent` / `tracestate` from `headers` into a context whose span is the
/// remote parent (an empty context when absent or malformed).
pub fn extract(headers: &dyn Extractor) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(headers)
}

/// Writes the current span's trace context into `headers`.
pub fn inject_current(headers: &mut dyn Injector) {
    inject(&Span::current().context(), headers);
}

/// Starts a flow's outer span (`make` is [`dispatch_span`] or [`publish_span`]) when the
/// flow is sampled, a disabled span otherwise, and records the trace context in the
/// message's metadata. Returns the span and whether the flow is traced.
pub(crate) fn begin(
    message: &mut Message,
    system: &'static str,
    make: fn(&Message, &'static str) -> Span,
) -> (Span, bool) {
    let traced = should_trace(message);
    let span = if traced {
        make(message, system)
    } else {
        Span::none()
    };
    message.set_trace_context_if_absent(|| TraceContext::of(&span));
    (span, traced)
}

/// The fields of a flow's outer span; name, operation and the type/id keys differ
/// between dispatch and publish, and `tracing` needs them at the call site.
macro_rules! outer_span {
    ($name:literal, $operation:literal, $type_key:literal, $id_key:literal, $message:ident, $system:ident) => {{
        let m = $message.metadata();
        tracing::info_span!(
            $name,
            otel.kind = "internal",
            otel.status_code = Empty,
            otel.status_description = Empty,
            "error.type" = Empty,
            messaging.system = $system,
            "messaging.operation.type" = $operation,
            messaging.destination.name = $message.topic(),
            messaging.message.id = $message.id(),
            $type_key = $message.type_name(),
            $id_key = $message.id(),
            orkestra.correlation_id = m.correlation_id.as_str(),
            orkestra.causation_id = m.causation_id.as_deref(),
            orkestra.actor_id = m.actor_id.as_deref(),
        )
    }};
}

/// `orkestra.command.dispatch`.
pub(crate) fn dispatch_span(message: &Message, system: &'static str) -> Span {
    outer_span!(
        "orkestra.command.dispatch",
        "send",
        "orkestra.command.type",
        "orkestra.command.id",
        message,
        system
    )
}

/// `orkestra.event.publish`.
pub(crate) fn publish_span(message: &Message, system: &'static str) -> Span {
    outer_span!(
        "orkestra.event.publish",
        "publish",
        "orkestra.event.type",
        "orkestra.event.id",
        message,
        system
    )
}

/// `orkestra.retry`, around one retried run.
pub(crate) fn retry_span(handler: &str, attempt: u32, max_retries: u32) -> Span {
    tracing::info_span!(
        "orkestra.retry",
        otel.kind = "internal",
        orkestra.handler = handler,
        orkestra.retry.attempt = i64::from(attempt),
        orkestra.retry.max_retries = i64::from(max_retries),
    )
}

/// The fields of a handle span; the name and the type/id keys differ by message kind,
/// and `tracing` needs them all at the call site.
macro_rules! handle_span {
    ($name:literal, $type_key:literal, $id_key:literal, $message:ident, $handler:ident, $attempt:ident, $system:ident, $m:ident) => {
        tracing::info_span!(
            $name,
            otel.kind = "internal",
            otel.status_code = Empty,
            otel.status_description = Empty,
            "error.type" = Empty,
            messaging.system = $system,
            "messaging.operation.type" = "process",
            messaging.destination.name = $message.topic(),
            messaging.message.id = $message.id(),
            $type_key = $message.type_name(),
            $id_key = $message.id(),
            orkestra.handler = $handler,
            orkestra.attempt = i64::from($attempt),
            orkestra.correlation_id = $m.correlation_id.as_str(),
            orkestra.causation_id = $m.causation_id.as_deref(),
            orkestra.actor_id = $m.actor_id.as_deref(),
            correlation_id = $m.correlation_id.as_str(),
            causation_id = $m.causation_id.as_deref(),
            actor_id = $m.actor_id.as_deref(),
            trace_id = Empty,
            span_id = Empty,
        )
    };
}

/// `orkestra.command.handle` or `orkestra.event.handle`, for one run of a handler.
pub(crate) fn handle_span(
    message: &Message,
    handler: &str,
    attempt: u32,
    system: &'static str,
) -> Span {
    let m = message.metadata();
    let span = match message.kind() {
        MessageKind::Command => handle_span!(
            "orkestra.command.handle",
            "orkestra.command.type",
            "orkestra.command.id",
            message,
            handler,
            attempt,
            system,
            m
        ),
        MessageKind::Event => handle_span!(
            "orkestra.event.handle",
            "orkestra.event.type",
            "orkestra.event.id",
            message,
            handler,
            attempt,
            system,
            m
        ),
    };
    if !span.is_disabled() {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            span.record("trace_id", tracing::field::display(sc.trace_id()));
            span.record("span_id", tracing::field::display(sc.span_id()));
        }
        // A message from another trace (a stored event replayed, a broker delivery)
        // links back to where it was produced.
        if let Some(origin) = &message.metadata().trace_context {
            let origin = origin.span_context();
            if origin.is_valid() && origin.trace_id() != sc.trace_id() {
                span.add_link(origin);
            }
        }
    }
    span
}

/// Marks a span as failed: OpenTelemetry error status and `error.type`.
pub(crate) fn record_error(span: &Span, error_type: &'static str, description: &str) {
    if span.is_disabled() {
        return;
    }
    span.record("otel.status_code", "error");
    span.record("otel.status_description", description);
    span.record("error.type", error_type);
}
