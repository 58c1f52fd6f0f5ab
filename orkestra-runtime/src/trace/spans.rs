//! The spans every bus emits, built in one place so they carry the same fields.

use opentelemetry::trace::{SpanContext, TraceContextExt};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::sampling::should_trace;
use crate::message::{Message, MessageKind, TraceContext};

/// Starts a flow's outer span (`make` is [`dispatch_span`] or [`publish_span`]) when the
/// flow is sampled, a disabled span otherwise, and records the trace context in the
/// message's metadata unless it has one.
pub(crate) fn begin(
    message: &mut Message,
    system: &'static str,
    make: fn(&Message, &'static str) -> Span,
) -> Flow {
    // A trace to continue (the relay publishing a stored event) decides as a parent.
    let origin = CONTINUES
        .try_with(std::cell::Cell::take)
        .ok()
        .flatten()
        .filter(|o| o.span_context().is_valid());
    let traced = match &origin {
        Some(o) => o.span_context().is_sampled(),
        None => should_trace(message),
    };
    let span = if traced {
        make(message, system)
    } else {
        Span::none()
    };
    if let Some(o) = &origin
        && !span.is_disabled()
    {
        let parent = opentelemetry::Context::new().with_remote_span_context(o.span_context());
        let _ = span.set_parent(parent);
    }
    let foreign_origin = message.metadata().trace_context.is_some();
    if !foreign_origin {
        message.set_trace_context_if_absent(|| TraceContext::of(&span).or(origin));
    }
    Flow {
        span,
        traced,
        foreign_origin,
    }
}

tokio::task_local! {
    /// The trace the next flow begun in this task continues (taken by the first).
    static CONTINUES: std::cell::Cell<Option<TraceContext>>;
    /// The handle span of the handler running in this task: the current span inside a
    /// handler is `orkestra.log_context`, which OpenTelemetry layers leave out.
    static HANDLING: Span;
}

/// Runs a handler's `work` with `span` (its `orkestra.command.handle` or
/// `orkestra.event.handle`) known to [`producing`].
pub(crate) async fn handling<F: Future>(span: &Span, work: F) -> F::Output {
    HANDLING.scope(span.clone(), work).await
}

/// The trace context work done now belongs to: the current span's, or inside a handler
/// (whose current span is its log-only `orkestra.log_context`) the handle span's. What an
/// append records with its events.
pub(crate) fn producing() -> Option<TraceContext> {
    TraceContext::current().or_else(|| HANDLING.try_with(TraceContext::of).ok().flatten())
}

/// Runs `work` (a publish) so that the flow it begins continues `origin`: its outer span
/// is a child of the span `origin` names, even with no span current (the relay's task).
/// Only the first flow begun takes it; flows begun by handlers inside stay children of
/// their handler's span.
pub(crate) async fn continuing<F: Future>(origin: Option<TraceContext>, work: F) -> F::Output {
    match origin {
        Some(origin) => {
            CONTINUES
                .scope(std::cell::Cell::new(Some(origin)), work)
                .await
        }
        None => work.await,
    }
}

/// A flow's outer span and what its handler runs need to know of it.
pub(crate) struct Flow {
    /// `orkestra.command.dispatch` / `orkestra.event.publish`, or a disabled span.
    pub(crate) span: Span,
    /// Whether the flow is traced.
    pub(crate) traced: bool,
    /// Whether the message already carried a trace context (made elsewhere) rather than
    /// getting this flow's.
    pub(crate) foreign_origin: bool,
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
pub(crate) fn retry_span(message: &Message, handler: &str, attempt: u32, max_retries: u32) -> Span {
    macro_rules! retry_span {
        ($type_key:literal, $id_key:literal) => {{
            let m = message.metadata();
            tracing::info_span!(
                "orkestra.retry",
                otel.kind = "internal",
                messaging.message.id = message.id(),
                $type_key = message.type_name(),
                $id_key = message.id(),
                orkestra.handler = handler,
                orkestra.retry.attempt = i64::from(attempt),
                orkestra.retry.max_retries = i64::from(max_retries),
                orkestra.correlation_id = m.correlation_id.as_str(),
                orkestra.causation_id = m.causation_id.as_deref(),
                orkestra.actor_id = m.actor_id.as_deref(),
            )
        }};
    }
    match message.kind() {
        MessageKind::Command => retry_span!("orkestra.command.type", "orkestra.command.id"),
        MessageKind::Event => retry_span!("orkestra.event.type", "orkestra.event.id"),
    }
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
        )
    };
}

/// `orkestra.command.handle` or `orkestra.event.handle`, for one run of a handler.
/// `link_origin`: whether the message's trace context may be from another trace (then
/// the span links to it when it is).
pub(crate) fn handle_span(
    message: &Message,
    handler: &str,
    attempt: u32,
    system: &'static str,
    link_origin: bool,
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
    // A message from another trace (a stored event replayed, a broker delivery) links
    // back to where it was produced.
    if link_origin
        && let Some(origin) = &message.metadata().trace_context
        && !span.is_disabled()
    {
        let origin = origin.span_context();
        if origin.is_valid() {
            let cx = span.context();
            if origin.trace_id() != cx.span().span_context().trace_id() {
                span.add_link(origin);
            }
        }
    }
    span
}

/// The target of the `orkestra.log_context` span every handler run is wrapped in. An OpenTelemetry layer should not export it (it
/// only carries log fields): `telemetry::Telemetry` filters it out, and an application
/// that installs `tracing-opentelemetry` itself adds
/// `.with_filter(filter_fn(|m| m.target() != orkestra_runtime::trace::LOG_CONTEXT_TARGET))`.
pub const LOG_CONTEXT_TARGET: &str = "orkestra::log_context";

/// `orkestra.log_context`, around every run of a handler, sampled or not: it carries
/// `correlation_id`, `causation_id`, `actor_id` and, whenever a trace context exists,
/// `trace_id` and `span_id`, so every log line a handler writes has them. The ids come
/// from `handle` (the handler's span) when the flow is traced, otherwise from the trace
/// context the message carries. Disabled at its call site (one atomic load) when no
/// layer wants it, for example an OpenTelemetry layer filtered as above.
pub(crate) fn log_context_span(message: &Message, handle: &Span) -> Span {
    let m = message.metadata();
    // A child of `handle` when there is one; otherwise of whatever span is current.
    macro_rules! log_context {
        ($($parent:tt)*) => {
            tracing::info_span!(
                target: LOG_CONTEXT_TARGET,
                $($parent)*
                "orkestra.log_context",
                correlation_id = m.correlation_id.as_str(),
                causation_id = m.causation_id.as_deref(),
                actor_id = m.actor_id.as_deref(),
                trace_id = Empty,
                span_id = Empty,
            )
        };
    }
    let span = if handle.is_disabled() {
        log_context!()
    } else {
        log_context!(parent: handle,)
    };
    if span.is_disabled() {
        return span;
    }
    let traced = (!handle.is_disabled())
        .then(|| handle.context().span().span_context().clone())
        .filter(SpanContext::is_valid);
    match traced {
        Some(sc) => {
            span.record("trace_id", tracing::field::display(sc.trace_id()));
            span.record("span_id", tracing::field::display(sc.span_id()));
        }
        None => {
            if let Some((trace_id, span_id)) = m.trace_context.as_ref().and_then(TraceContext::ids)
            {
                span.record("trace_id", trace_id);
                span.record("span_id", span_id);
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
