//! One-call telemetry setup (feature `telemetry`; OTLP export with feature `otlp`).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use orkestra_runtime::telemetry::{Logs, Telemetry};
//! let _guard = Telemetry::new("orders").stdout().logs(Logs::Json).init()?;
//! // ... run the app; dropping the guard flushes and shuts the exporters down.
//! # Ok(()) }
//! ```
//!
//! It installs, process-wide: an OpenTelemetry tracer provider (service name, a
//! parent-based ratio sampler, the chosen exporters) as the global provider, the W3C
//! trace-context propagator, and a `tracing` subscriber with the OpenTelemetry layer and
//! a log formatter filtered by `RUST_LOG` (default `info`). It also sets
//! [`crate::trace::set_sampling_ratio`] to the same ratio, so unsampled flows cost nothing.
//!
//! # Metrics, health and readiness
//!
//! With [`Telemetry::serve`] or [`Telemetry::otlp`] it also installs a meter provider
//! (through [`crate::metrics::set_meter_provider`]) that receives Orkestra's
//! instruments (see [`crate::metrics`]). `serve` answers, on one small HTTP/1 listener
//! of its own thread:
//!
//! - `GET /metrics`: the Prometheus text format ([`prometheus`'s naming](crate::metrics));
//! - `GET /healthz`: 200 while the process runs;
//! - `GET /readyz`: 200 when every check registered with
//!   [`TelemetryGuard::ready_when`] passes, else 503 with a JSON body naming what failed.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use orkestra_runtime::telemetry::Telemetry;
//! use orkestra_runtime::{Bus, Config, Store};
//! // First, so the bus and store built next record into its meter provider.
//! let guard = Telemetry::new("orders").serve("0.0.0.0:9464").init()?;
//! let config = Config::from_env()?;
//! let bus = Bus::from_config(&config).await?;
//! let store = Store::from_config(&config).await?;
//! guard.ready_when(&bus).ready_when(&store);
//! # Ok(()) }
//! ```
//!
//! Build buses after `init`: a bus binds its instruments when it is built (see
//! [`crate::metrics`] for why).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, RwLock};

use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::trace::{Status, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::{ManualReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample, SpanData,
    SpanExporter,
};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

mod json_logs;
mod prometheus;
mod ready;
mod serve;

pub use json_logs::JsonLines;
pub use ready::ReadyCheck;

/// Where spans go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exporter {
    /// Nowhere (spans still feed the trace tree, if one is attached).
    #[default]
    None,
    /// Standard output, as OpenTelemetry's stdout exporter prints them.
    Stdout,
    /// OTLP over HTTP/protobuf to this endpoint (feature `otlp`), for example
    /// `http://127.0.0.1:4318/v1/traces`.
    Otlp(String),
}

/// How log lines are printed (to standard error).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Logs {
    /// Not at all.
    Off,
    /// Human-readable, one line each, with span fields.
    #[default]
    Pretty,
    /// One JSON object per line ([`JsonLines`]): the current span's fields, and inside
    /// a handler its `correlation_id`, `causation_id`, `actor_id`, `trace_id` and
    /// `span_id` at the top level, also under spans the handler opens.
    Json,
}

/// Why telemetry could not be installed.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// A global `tracing` subscriber was installed already.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
    /// The exporter could not be built.
    #[error("cannot build the {exporter} exporter: {reason}")]
    Exporter {
        /// Which exporter.
        exporter: &'static str,
        /// Why.
        reason: String,
    },
    /// The metrics address is not an address, or cannot be listened on.
    #[error("{setting} = {address:?}: {reason}")]
    Serve {
        /// The setting that gave it.
        setting: &'static str,
        /// The address as given.
        address: String,
        /// Why (`the address is already in use`, ...).
        reason: String,
    },
    /// `RUST_LOG` or the configured filter does not parse.
    #[error("invalid log filter {filter:?}: {reason}")]
    Filter {
        /// The filter text.
        filter: String,
        /// Why.
        reason: String,
    },
}

/// The telemetry setup, as a builder.
#[derive(Clone, Debug)]
pub struct Telemetry {
    service_name: String,
    exporter: Exporter,
    sampling_ratio: f64,
    logs: Logs,
    filter: Option<String>,
    tree: Option<TraceTree>,
    serve: Option<String>,
    metrics_every: std::time::Duration,
}

impl Telemetry {
    /// Telemetry for a service: no exporter, every flow sampled, pretty logs.
    pub fn new(service_name: impl Into<String>) -> Self {
        Self {
            service_name: service_name.into(),
            exporter: Exporter::None,
            sampling_ratio: 1.0,
            logs: Logs::Pretty,
            filter: None,
            tree: None,
            serve: None,
            metrics_every: std::time::Duration::from_secs(60),
        }
    }

    /// Serves `/metrics` (Prometheus text format), `/healthz` and `/readyz` on
    /// `address` (`0.0.0.0:9464`; port 0 picks a free one, see
    /// [`TelemetryGuard::metrics_addr`]). The address is bound by `init`: one that is not
    /// an address or is taken is [`TelemetryError::Serve`].
    #[must_use]
    pub fn serve(mut self, address: impl Into<String>) -> Self {
        self.serve = Some(address.into());
        self
    }

    /// How often metrics are pushed over OTLP (default 60 s).
    #[must_use]
    pub fn metrics_interval(mut self, every: std::time::Duration) -> Self {
        self.metrics_every = every;
        self
    }

    /// Exports spans to standard output.
    #[must_use]
    pub fn stdout(mut self) -> Self {
        self.exporter = Exporter::Stdout;
        self
    }

    /// Exports spans, and metrics every [`metrics_interval`](Self::metrics_interval),
    /// with OTLP over HTTP (feature `otlp`). `endpoint` is the traces URL
    /// (`http://collector:4318/v1/traces`); metrics go to the same URL ending in
    /// `/v1/metrics` (a URL without `/v1/traces` gets `/v1/metrics` appended).
    #[must_use]
    pub fn otlp(mut self, endpoint: impl Into<String>) -> Self {
        self.exporter = Exporter::Otlp(endpoint.into());
        self
    }

    /// Sets the exporter.
    #[must_use]
    pub fn exporter(mut self, exporter: Exporter) -> Self {
        self.exporter = exporter;
        self
    }

    /// The share of new flows traced, 0.0 to 1.0 (parent-based below a root).
    #[must_use]
    pub fn sampling_ratio(mut self, ratio: f64) -> Self {
        self.sampling_ratio = ratio;
        self
    }

    /// How log lines are printed.
    #[must_use]
    pub fn logs(mut self, logs: Logs) -> Self {
        self.logs = logs;
        self
    }

    /// The log filter (`RUST_LOG` syntax); `RUST_LOG` wins when set.
    #[must_use]
    pub fn filter(mut self, filter: impl Into<String>) -> Self {
        self.filter = Some(filter.into());
        self
    }

    /// Also collects every span into `tree`, to print as an indented tree.
    #[must_use]
    pub fn trace_tree(mut self, tree: TraceTree) -> Self {
        self.tree = Some(tree);
        self
    }

    /// Installs the meter provider and the metrics endpoint only (when
    /// [`serve`](Self::serve) or [`otlp`](Self::otlp) asks for them), leaving tracing and
    /// logs alone: for an application that sets up its own `tracing` subscriber. May be
    /// called again (a test's fresh endpoint); buses built before keep the provider they
    /// found.
    pub fn init_metrics(self) -> Result<TelemetryGuard, TelemetryError> {
        let metrics = self.metrics()?;
        Ok(TelemetryGuard {
            provider: None,
            metrics,
        })
    }

    /// The meter provider with its readers (a pull reader for `serve`, a periodic OTLP
    /// push), installed; `None` when neither asks for metrics.
    fn metrics(&self) -> Result<Option<Metrics>, TelemetryError> {
        let otlp = match &self.exporter {
            Exporter::Otlp(endpoint) => Some(endpoint.as_str()),
            _ => None,
        };
        if self.serve.is_none() && otlp.is_none() {
            return Ok(None);
        }
        let mut builder = SdkMeterProvider::builder().with_resource(
            Resource::builder_empty()
                .with_service_name(self.service_name.clone())
                .build(),
        );
        let checks = Arc::new(RwLock::new(Vec::new()));
        let mut server = None;
        if let Some(address) = &self.serve {
            let reader = serve::SharedReader(Arc::new(ManualReader::builder().build()));
            builder = builder.with_reader(reader.clone());
            server = Some(serve::start(
                address,
                serve::Endpoint {
                    reader,
                    checks: checks.clone(),
                    app: tokio::runtime::Handle::try_current().ok(),
                },
            )?);
        }
        if let Some(endpoint) = otlp {
            builder = builder.with_reader(otlp_metric_reader(endpoint, self.metrics_every)?);
        }
        let provider = builder.build();
        crate::metrics::set_meter_provider(provider.clone());
        Ok(Some(Metrics {
            provider,
            server,
            checks,
        }))
    }

    /// Installs everything; keep the guard alive for as long as spans should be exported.
    pub fn init(self) -> Result<TelemetryGuard, TelemetryError> {
        let filter_text = std::env::var("RUST_LOG")
            .ok()
            .or(self.filter.clone())
            .unwrap_or_else(|| "info".to_owned());
        let filter = EnvFilter::try_new(&filter_text).map_err(|e| TelemetryError::Filter {
            filter: filter_text.clone(),
            reason: e.to_string(),
        })?;
        let ratio = self.sampling_ratio.clamp(0.0, 1.0);
        // Bound first: a bad or taken metrics address leaves nothing installed.
        let metrics = self.metrics()?;
        let mut builder = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(FlowRoots {
                others: Sampler::TraceIdRatioBased(ratio),
            })))
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(self.service_name.clone())
                    .build(),
            );
        match &self.exporter {
            Exporter::None => {}
            Exporter::Stdout => {
                builder =
                    builder.with_simple_exporter(opentelemetry_stdout::SpanExporter::default())
            }
            Exporter::Otlp(endpoint) => {
                builder = builder.with_batch_exporter(otlp_exporter(endpoint)?)
            }
        }
        if let Some(tree) = &self.tree {
            builder = builder.with_simple_exporter(tree.clone());
        }
        let provider = builder.build();
        let tracer = provider.tracer("orkestra");
        // `orkestra.log_context` only carries log fields: not an OpenTelemetry span. Busy
        // and idle times, source locations, threads and targets are left out: they cost a
        // third of a sampled dispatch (BENCHMARKS.md) and the spans carry what matters.
        let otel = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.target() != crate::trace::LOG_CONTEXT_TARGET
            }));
        let fmt_pretty = (self.logs == Logs::Pretty)
            .then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
        let fmt_json = (self.logs == Logs::Json).then(|| {
            tracing_subscriber::fmt::layer()
                .json()
                .event_format(JsonLines)
                .with_writer(std::io::stderr)
        });
        tracing_subscriber::registry()
            .with(filter)
            .with(otel)
            .with(fmt_pretty)
            .with(fmt_json)
            .try_init()
            .map_err(|_| TelemetryError::AlreadyInstalled)?;
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        opentelemetry::global::set_tracer_provider(provider.clone());
        crate::trace::set_sampling_ratio(ratio);
        Ok(TelemetryGuard {
            provider: Some(provider),
            metrics,
        })
    }
}

/// The meter provider `init` installed, and its endpoint.
#[derive(Debug)]
struct Metrics {
    provider: SdkMeterProvider,
    server: Option<serve::Server>,
    checks: Arc<RwLock<Vec<ReadyCheck>>>,
}

/// The root sampler: a root `orkestra.*` span exists only because Orkestra already
/// decided to trace its flow (`trace::samples` on the correlation id, at the same ratio),
/// so it is recorded; applying the trace-id ratio again would trace `ratio²` of flows and
/// split a flow's decision between services. Every other root gets the trace-id ratio.
#[derive(Clone, Debug)]
struct FlowRoots {
    others: Sampler,
}

impl ShouldSample for FlowRoots {
    fn should_sample(
        &self,
        parent_context: Option<&opentelemetry::Context>,
        trace_id: opentelemetry::trace::TraceId,
        name: &str,
        span_kind: &opentelemetry::trace::SpanKind,
        attributes: &[opentelemetry::KeyValue],
        links: &[opentelemetry::trace::Link],
    ) -> SamplingResult {
        if name.starts_with("orkestra.") {
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: parent_context
                    .map(|cx| cx.span().span_context().trace_state().clone())
                    .unwrap_or_default(),
            };
        }
        self.others
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

#[cfg(feature = "otlp")]
fn otlp_exporter(endpoint: &str) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig;
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| TelemetryError::Exporter {
            exporter: "otlp",
            reason: crate::config::redact(&e.to_string()),
        })
}

/// The OTLP metrics URL beside a traces URL.
#[cfg(any(feature = "otlp", test))]
fn metrics_endpoint(traces: &str) -> String {
    match traces.strip_suffix("/v1/traces") {
        Some(base) => format!("{base}/v1/metrics"),
        None => format!("{}/v1/metrics", traces.trim_end_matches('/')),
    }
}

#[cfg(feature = "otlp")]
fn otlp_metric_reader(
    endpoint: &str,
    every: std::time::Duration,
) -> Result<
    opentelemetry_sdk::metrics::PeriodicReader<opentelemetry_otlp::MetricExporter>,
    TelemetryError,
> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_endpoint(metrics_endpoint(endpoint))
        .build()
        .map_err(|e| TelemetryError::Exporter {
            exporter: "otlp",
            reason: crate::config::redact(&e.to_string()),
        })?;
    Ok(
        opentelemetry_sdk::metrics::PeriodicReader::builder(exporter)
            .with_interval(every)
            .build(),
    )
}

#[cfg(not(feature = "otlp"))]
fn otlp_metric_reader(
    _endpoint: &str,
    _every: std::time::Duration,
) -> Result<serve::SharedReader, TelemetryError> {
    Err(TelemetryError::Exporter {
        exporter: "otlp",
        reason: "this build of orkestra-runtime has no OTLP exporter (enable the `otlp` feature)"
            .into(),
    })
}

#[cfg(not(feature = "otlp"))]
fn otlp_exporter(_endpoint: &str) -> Result<opentelemetry_stdout::SpanExporter, TelemetryError> {
    Err(TelemetryError::Exporter {
        exporter: "otlp",
        reason: "this build of orkestra-runtime has no OTLP exporter (enable the `otlp` feature)"
            .into(),
    })
}

/// Flushes and shuts the providers down, and stops the metrics endpoint, when dropped.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    metrics: Option<Metrics>,
}

impl TelemetryGuard {
    /// Exports every finished span (and, over OTLP, the metrics) now.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
        }
        if let Some(metrics) = &self.metrics {
            let _ = metrics.provider.force_flush();
        }
    }

    /// Adds a check `/readyz` runs: a [`Bus`](crate::Bus) (connected), a
    /// [`Store`](crate::Store) (answers), running workers (none `Failed`), or a
    /// [`ReadyCheck::new`]. Without [`Telemetry::serve`] checks are kept but nothing
    /// asks them.
    pub fn ready_when(&self, check: impl Into<ReadyCheck>) -> &Self {
        if let Some(metrics) = &self.metrics {
            crate::sync::write(&metrics.checks).push(check.into());
        }
        self
    }

    /// The address `/metrics` is served on (the port chosen, for port 0), if it is.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics
            .as_ref()
            .and_then(|m| m.server.as_ref())
            .map(|s| s.addr)
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = &self.provider {
            let _ = provider.shutdown();
        }
        if let Some(metrics) = self.metrics.take() {
            // The listener first: no scrape collects from a provider shut down.
            drop(metrics.server);
            let _ = metrics.provider.shutdown();
        }
    }
}

/// Collects finished spans to print them as an indented tree with durations: for
/// examples and demos, where reading a trace beats installing a trace viewer.
#[derive(Clone, Debug, Default)]
pub struct TraceTree {
    spans: Arc<Mutex<Vec<SpanData>>>,
}

impl TraceTree {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// The spans collected so far.
    pub fn spans(&self) -> Vec<SpanData> {
        crate::sync::lock(&self.spans).clone()
    }

    /// Every trace collected so far, one indented line per span, children in start order:
    /// `name [duration] handler=… type=… ERROR(reason)`.
    pub fn render(&self) -> String {
        let spans = self.spans();
        let ids: std::collections::HashSet<_> =
            spans.iter().map(|s| s.span_context.span_id()).collect();
        let mut children: HashMap<_, Vec<&SpanData>> = HashMap::new();
        let mut roots = Vec::new();
        for span in &spans {
            if ids.contains(&span.parent_span_id) {
                children.entry(span.parent_span_id).or_default().push(span);
            } else {
                roots.push(span);
            }
        }
        let by_start = |a: &&SpanData, b: &&SpanData| a.start_time.cmp(&b.start_time);
        roots.sort_by(by_start);
        for list in children.values_mut() {
            list.sort_by(by_start);
        }
        let mut out = String::new();
        for root in roots {
            let _ = writeln!(out, "trace {}", root.span_context.trace_id());
            render_span(&mut out, root, &children, 1);
        }
        out
    }
}

fn render_span(
    out: &mut String,
    span: &SpanData,
    children: &HashMap<opentelemetry::trace::SpanId, Vec<&SpanData>>,
    depth: usize,
) {
    let micros = span
        .end_time
        .duration_since(span.start_time)
        .unwrap_or_default()
        .as_secs_f64()
        * 1e6;
    let mut line = format!("{}{} [{micros:.0} µs]", "  ".repeat(depth), span.name);
    for key in [
        "orkestra.handler",
        "orkestra.command.type",
        "orkestra.event.type",
        "orkestra.retry.attempt",
    ] {
        if let Some(kv) = span.attributes.iter().find(|kv| kv.key.as_str() == key) {
            let short = key.rsplit('.').next().unwrap_or(key);
            let _ = write!(line, " {short}={}", kv.value);
        }
    }
    if let Status::Error { description } = &span.status {
        let _ = write!(line, " ERROR({description})");
    }
    let _ = writeln!(out, "{line}");
    for child in children
        .get(&span.span_context.span_id())
        .into_iter()
        .flatten()
    {
        render_span(out, child, children, depth + 1);
    }
}

impl SpanExporter for TraceTree {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        crate::sync::lock(&self.spans).extend(batch);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanKind, TraceId};

    use super::*;

    #[test]
    fn orkestra_roots_are_decided_once_other_roots_by_ratio() {
        let roots = FlowRoots {
            others: Sampler::TraceIdRatioBased(0.0),
        };
        let decide = |name: &str| {
            roots
                .should_sample(
                    None,
                    TraceId::from(7_u128),
                    name,
                    &SpanKind::Internal,
                    &[],
                    &[],
                )
                .decision
        };
        assert_eq!(
            decide("orkestra.command.dispatch"),
            SamplingDecision::RecordAndSample
        );
        assert_eq!(decide("http.request"), SamplingDecision::Drop);
    }
}
