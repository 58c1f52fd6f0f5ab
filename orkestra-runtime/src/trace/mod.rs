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
//! Every run of a handler, traced or not, also runs inside `orkestra.log_context` (target
//! [`LOG_CONTEXT_TARGET`]), whose plain fields `correlation_id`, `causation_id`,
//! `actor_id`, `trace_id` and `span_id` every log line written inside a handler carries
//! (for example as span fields in tracing-subscriber's JSON output). It is for logs only:
//! filter that target out of an OpenTelemetry layer, as `telemetry` does.
//!
//! Whether a new flow is traced is [`samples`]`(correlation_id, ratio)`: a documented
//! hash, the same in every process, so a flow is traced in every service or in none.

mod context;
mod sampling;
mod spans;

pub use crate::message::TraceContext;
pub use context::{TRACEPARENT, TRACESTATE, extract, inject};
#[cfg(feature = "rabbitmq")]
pub(crate) use sampling::should_trace;
pub use sampling::{samples, sampling_ratio, set_sampling_ratio};
pub use spans::LOG_CONTEXT_TARGET;
pub(crate) use spans::{
    Flow, begin, continuing, dispatch_span, handle_span, handling, log_context_span, producing,
    publish_span, record_error, retry_span,
};
