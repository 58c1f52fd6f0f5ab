//! W3C trace-context propagation: [`TraceContext`] from and to spans, and the
//! `traceparent` / `tracestate` headers.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
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
        let span_ref = cx.span();
        let sc = span_ref.span_context();
        if !sc.is_valid() || !sc.is_sampled() {
            return None;
        }
        Some(Self::from_span_context(sc))
    }

    /// The W3C text of a span context, written directly (what the propagator writes,
    /// without its header map).
    pub fn from_span_context(sc: &SpanContext) -> Self {
        fn hex(out: &mut String, bytes: &[u8]) {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            for b in bytes {
                out.push(char::from(DIGITS[usize::from(b >> 4)]));
                out.push(char::from(DIGITS[usize::from(b & 0xf)]));
            }
        }
        let mut traceparent = String::with_capacity(55);
        traceparent.push_str("00-");
        hex(&mut traceparent, &sc.trace_id().to_bytes());
        traceparent.push('-');
        hex(&mut traceparent, &sc.span_id().to_bytes());
        traceparent.push('-');
        hex(
            &mut traceparent,
            &[(sc.trace_flags() & TraceFlags::SAMPLED).to_u8()],
        );
        Self {
            traceparent,
            tracestate: sc.trace_state().header(),
        }
    }

    /// The trace id and parent span id of `traceparent` as lowercase hex, if it is
    /// well-formed: what a handler's log lines carry when its flow is not sampled.
    pub fn ids(&self) -> Option<(&str, &str)> {
        let (trace_id, span_id, _) = parse_traceparent(&self.traceparent)?;
        Some((trace_id, span_id))
    }

    /// The context of the current span, if any.
    pub fn current() -> Option<Self> {
        Self::of(&Span::current())
    }

    /// The remote span context this names (invalid if the text is malformed), parsed
    /// as the W3C propagator parses it.
    pub fn span_context(&self) -> SpanContext {
        let Some((trace_id, span_id, flags)) = parse_traceparent(&self.traceparent) else {
            return SpanContext::empty_context();
        };
        let (Ok(trace_id), Ok(span_id)) = (TraceId::from_hex(trace_id), SpanId::from_hex(span_id))
        else {
            return SpanContext::empty_context();
        };
        let state = if self.tracestate.is_empty() {
            TraceState::default()
        } else {
            self.tracestate.parse().unwrap_or_default()
        };
        SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::new(flags) & TraceFlags::SAMPLED,
            true,
            state,
        )
    }
}

/// `version-traceid-spanid-flags` (W3C Trace Context level 1): the trace id, span id and
/// flags of a well-formed header whose ids are not all zero. Later versions may append
/// fields after the flags; version `ff` is invalid.
fn parse_traceparent(text: &str) -> Option<(&str, &str, u8)> {
    let mut parts = text.trim().splitn(5, '-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    let extra = parts.next();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && (version != "00" || extra.is_none())
        && hex(trace_id, 32)
        && hex(span_id, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && span_id.bytes().any(|b| b != b'0');
    valid.then(|| {
        (
            trace_id,
            span_id,
            u8::from_str_radix(flags, 16).unwrap_or(0),
        )
    })
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// The direct writer and parser agree with OpenTelemetry's propagator.
    #[test]
    fn agrees_with_the_propagator() {
        let cases = [
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-09-extra",
            "garbage",
            "",
        ];
        for traceparent in cases {
            for tracestate in ["", "vendor=value,other=x"] {
                let ours = TraceContext {
                    traceparent: traceparent.into(),
                    tracestate: tracestate.into(),
                };
                let mut headers = HashMap::new();
                headers.insert(TRACEPARENT.to_owned(), traceparent.to_owned());
                headers.insert(TRACESTATE.to_owned(), tracestate.to_owned());
                let theirs = extract(&headers).span().span_context().clone();
                assert_eq!(
                    ours.span_context(),
                    theirs,
                    "{traceparent:?} {tracestate:?}"
                );
                if theirs.is_valid() {
                    let cx = opentelemetry::Context::new().with_remote_span_context(theirs.clone());
                    let mut written = HashMap::new();
                    inject(&cx, &mut written);
                    let direct = TraceContext::from_span_context(&theirs);
                    assert_eq!(Some(&direct.traceparent), written.get(TRACEPARENT));
                    assert_eq!(
                        direct.tracestate.as_str(),
                        written.get(TRACESTATE).map_or("", String::as_str)
                    );
                }
            }
        }
        // Stricter than the propagator where the W3C text is: a 15-digit span id is
        // malformed (the propagator pads it).
        let short = TraceContext {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01".into(),
            tracestate: String::new(),
        };
        assert!(!short.span_context().is_valid());
        assert_eq!(short.ids(), None);
    }
}
