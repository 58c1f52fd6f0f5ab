//! The spans every bus emits, built in one place so they carry the same fields.

use opentelemetry::trace::TraceContextExt;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::sampling::should_trace;
use crate::message::{Message, MessageKind, TraceContext};

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
