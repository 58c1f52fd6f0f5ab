//! W3C trace-context propagation: [`TraceContext`] from and to spans, and the
//! `traceparent` / `tracestate` headers.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::message::TraceContext;

/// The W3C trace-context headers.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C vendor-specific trace state header.
pub const TRACESTATE: &str = "tracestate";

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
