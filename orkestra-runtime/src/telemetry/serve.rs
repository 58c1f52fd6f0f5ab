//! The HTTP listener of [`Telemetry::serve`](super::Telemetry::serve): `GET /metrics`,
//! `GET /healthz`, `GET /readyz`, on hyper's HTTP/1 server.
//!
//! It runs on a thread of its own with a single-threaded runtime, so collecting and
//! rendering the metrics never takes a worker of the application's runtime: a scrape
//! cannot hold message handling back (the instruments are atomics; the worker gauges
//! take each worker's status lock for a moment). Readiness checks that need the
//! application's runtime (a store's connection pool) run there, through the handle
//! captured when telemetry was installed, each bounded by
//! [`CHECK_TIMEOUT`](super::ready::CHECK_TIMEOUT).

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::{Arc, RwLock};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{ManualReader, Pipeline, Temporality};
use tokio::sync::watch;

use super::TelemetryError;
use super::prometheus;
use super::ready::{CHECK_TIMEOUT, ReadyCheck};

/// The setting an address error names.
const SETTING: &str = "Telemetry::serve";

/// A [`ManualReader`] the provider and the endpoint share (the provider takes its
/// reader by value).
#[derive(Clone, Debug)]
pub(crate) struct SharedReader(pub(crate) Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: std::sync::Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }

    fn collect(&self, rm: &mut ResourceMetrics) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.collect(rm)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: opentelemetry_sdk::metrics::InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// What the endpoint answers from.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub(crate) reader: SharedReader,
    pub(crate) checks: Arc<RwLock<Vec<ReadyCheck>>>,
    /// The application's runtime, when telemetry was installed inside one.
    pub(crate) app: Option<tokio::runtime::Handle>,
}

/// The running listener; stopped when dropped.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds `address` now (so a bad or taken address is an error of `init`) and serves
/// from a thread of its own.
pub(crate) fn start(address: &str, endpoint: Endpoint) -> Result<Server, TelemetryError> {
    let error = |reason: String| TelemetryError::Serve {
        setting: SETTING,
        address: address.to_owned(),
        reason,
    };
    let addrs: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|e| {
            error(format!(
                "not a host:port address ({e}); for example 0.0.0.0:9464"
            ))
        })?
        .collect();
    let listener = TcpListener::bind(&addrs[..]).map_err(|e| {
        error(match e.kind() {
            std::io::ErrorKind::AddrInUse => "the address is already in use".to_owned(),
            _ => format!("cannot listen there: {e}"),
        })
    })?;
    let addr = listener.local_addr().map_err(|e| error(e.to_string()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| error(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| error(format!("cannot start its runtime: {e}")))?;
    let (stop, stopped) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("orkestra-metrics".into())
        .spawn(move || runtime.block_on(accept(listener, endpoint, stopped)))
        .map_err(|e| error(format!("cannot start its thread: {e}")))?;
    Ok(Server {
        addr,
        stop,
        thread: Some(thread),
    })
}

async fn accept(listener: TcpListener, endpoint: Endpoint, mut stop: watch::Receiver<bool>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(orkestra = "telemetry", error = %e, "the metrics endpoint cannot listen");
            return;
        }
    };
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(orkestra = "telemetry", error = %e, "the metrics endpoint cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let endpoint = endpoint.clone();
                async move { Ok::<_, Infallible>(answer(&endpoint, &request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(endpoint: &Endpoint, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET is served\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" => {
            let mut collected = ResourceMetrics::default();
            match endpoint.reader.collect(&mut collected) {
                Ok(()) => reply(
                    StatusCode::OK,
                    prometheus::CONTENT_TYPE,
                    prometheus::render(&collected),
                ),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("cannot collect the metrics: {e}\n"),
                ),
            }
        }
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => readyz(endpoint).await,
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /metrics, /healthz and /readyz are served\n".into(),
        ),
    }
}

/// Runs every check side by side: 200 `{"status":"ready","checks":[..]}` when all pass,
/// 503 `{"status":"not ready","failed":[{"check":..,"reason":..}],..}` otherwise.
async fn readyz(endpoint: &Endpoint) -> Response<Full<Bytes>> {
    let checks = crate::sync::read(&endpoint.checks).clone();
    let runs = checks.iter().map(|check| {
        let check = check.clone();
        let app = endpoint.app.clone();
        async move {
            let run = async move {
                match app {
                    Some(app) => {
                        let name = check.name().to_owned();
                        app.spawn(async move { check.run().await })
                            .await
                            .unwrap_or_else(|e| Err(format!("check {name:?} did not finish: {e}")))
                    }
                    None => check.run().await,
                }
            };
            match tokio::time::timeout(CHECK_TIMEOUT, run).await {
                Ok(result) => result,
                Err(_) => Err(format!(
                    "no answer within {:.0} s",
                    CHECK_TIMEOUT.as_secs_f64()
                )),
            }
        }
    });
    let results = futures_util::future::join_all(runs).await;
    let names: Vec<&str> = checks.iter().map(ReadyCheck::name).collect();
    let failed: Vec<serde_json::Value> = names
        .iter()
        .zip(&results)
        .filter_map(|(name, result)| {
            result
                .as_ref()
                .err()
                .map(|reason| serde_json::json!({ "check": name, "reason": reason }))
        })
        .collect();
    let (status, body) = if failed.is_empty() {
        (
            StatusCode::OK,
            serde_json::json!({ "status": "ready", "checks": names }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "not ready", "failed": failed, "checks": names }),
        )
    };
    reply(status, "application/json", format!("{body}\n"))
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
