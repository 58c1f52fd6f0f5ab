//! JSON log lines that keep a handler's context however deep the line is written.
//!
//! `tracing-subscriber`'s JSON format prints the current span's fields; a handler that
//! opens a span of its own would then lose the ids its `orkestra.log_context` span
//! carries. [`JsonLines`] prints the same layout (`timestamp`, `level`, `fields`,
//! `target`, `span` = the current span) and adds, at the top level of every line written
//! inside a handler run, `correlation_id`, `causation_id`, `actor_id`, `trace_id` and
//! `span_id` from the nearest `orkestra.log_context` in scope: the metadata every log
//! line of a handler carries, as a log aggregator indexes it.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use crate::trace::LOG_CONTEXT_TARGET;

/// The JSON event format of [`Logs::Json`](super::Logs::Json): one object per line with
/// the handler's ids at its top level. For a subscriber of your own:
///
/// ```
/// use orkestra_runtime::telemetry::JsonLines;
/// use tracing_subscriber::prelude::*;
///
/// let subscriber = tracing_subscriber::registry()
///     .with(tracing_subscriber::fmt::layer().json().event_format(JsonLines::default()));
/// # let _ = subscriber;
/// ```
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct JsonLines;

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        let mut fields = Map::new();
        event.record(&mut Fields(&mut fields));
        line.insert("fields".into(), fields.into());
        line.insert("target".into(), meta.target().into());
        if let Some(current) = ctx.lookup_current() {
            let mut span = span_fields(&current);
            span.insert("name".into(), current.name().into());
            line.insert("span".into(), span.into());
        }
        if let Some(context) = ctx
            .event_scope()
            .and_then(|mut scope| scope.find(|s| s.metadata().target() == LOG_CONTEXT_TARGET))
        {
            for (key, value) in span_fields(&context) {
                line.entry(key).or_insert(value);
            }
        }
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// A span's fields as the JSON field formatter stored them (an object's text).
fn span_fields<S>(span: &SpanRef<'_, S>) -> Map<String, Value>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    span.extensions()
        .get::<FormattedFields<JsonFields>>()
        .and_then(|f| serde_json::from_str(f).ok())
        .unwrap_or_default()
}

/// An event's fields as JSON values.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}
