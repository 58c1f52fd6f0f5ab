//! In-process bus overhead, measured against raw baselines in the same run.
//!
//! - `dispatch/orkestra` ÷ `dispatch/raw_mpsc_oneshot` (target ≤ 1.0×): a command to a
//!   no-op handler, against a tokio mpsc send to a handler task plus a oneshot reply.
//! - `dispatch/orkestra` ÷ `dispatch/direct_call` (target ≤ 2.0×): our overhead over
//!   calling the handler; `dispatch/direct_call_plus_receipt_copy` is the floor of any
//!   dispatcher that returns the message in its receipt (one more command copy).
//! - `publish3/orkestra` ÷ `publish3/raw_broadcast` (target ≤ 1.5×): an event to three
//!   subscribers, against a tokio broadcast to three receiver tasks that each run the
//!   handler and acknowledge, so both sides finish when all three handled it.
//! - `topic/15_hashes_31_words`: the pathological wildcard case.
//! - `metrics/provider_installed` ÷ `metrics/no_provider` (throughput ≥ 0.90×): the same
//!   dispatch to a no-op handler on a bus built after an SDK meter provider (a pull
//!   reader, as `Telemetry::serve` installs) against one built before, which records
//!   nothing; `metrics/publish3_*` the same for an event to three subscribers. Runs last:
//!   it installs the global provider.
//!
//! Each sample runs its iterations inside one `block_on`, so no side pays for entering the
//! runtime per iteration.
//!
//! `python3 benches/ratios.py` prints the ratios after `cargo bench`.

#[path = "../tests/support/payloads.rs"]
#[allow(dead_code)]
mod payloads;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use orkestra_runtime::{
    Bus, Command, CommandEnvelope, Event, EventEnvelope, HandlerError, Metadata, Subscription,
};
use payloads::{OrderPlaced, PlaceOrder};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};
/// The multi-thread runtime `#[tokio::main]` gives. Every sample runs inside a task
/// spawned on it (`timed!`), where tokio's LIFO slot lets a woken handler task run on
/// the same worker: the cheapest setting for the channel baselines, and neither side
/// pays for `block_on`'s cross-thread wake-ups.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap()
}

/// `timed!(rt, iters, (captures..), body)`: clones the captures into a spawned task,
/// runs `body` `iters` times there and returns the elapsed time.
macro_rules! timed {
    ($rt:expr, $iters:expr, ($($cap:ident),*), $body:expr) => {{
        $(let $cap = $cap.clone();)*
        let iters = $iters;
        $rt.block_on($rt.spawn(async move {
            let start = Instant::now();
            for _ in 0..iters {
                $body;
            }
            start.elapsed()
        }))
        .unwrap()
    }};
}

async fn noop_command(cmd: Command<PlaceOrder>) -> Result<Value, HandlerError> {
    black_box(&cmd);
    Ok(Value::Null)
}

async fn noop_event(ev: Event<OrderPlaced>) -> Result<(), HandlerError> {
    black_box(&ev);
    Ok(())
}

fn command() -> Command<PlaceOrder> {
    Command::from_json(
        json!({"product_id": "sku_42", "quantity": 3}),
        Metadata::new(),
    )
    .unwrap()
}

fn event() -> Event<OrderPlaced> {
    Event::new(
        OrderPlaced {
            order_id: "o1".into(),
            quantity: 3,
        },
        Metadata::new(),
    )
    .unwrap()
}

type Request = (
    Command<PlaceOrder>,
    oneshot::Sender<Result<Value, HandlerError>>,
);

fn dispatch(c: &mut Criterion) {
    let rt = runtime();
    let cmd = command();
    let mut group = c.benchmark_group("dispatch");

    let bus = Bus::in_process();
    rt.block_on(bus.subscribe(Subscription::command("Noop", |cmd, _| noop_command(cmd))))
        .unwrap();
    group.bench_function("orkestra", |b| {
        b.iter_custom(|iters| {
            timed!(rt, iters, (bus, cmd), {
                black_box(
                    bus.dispatch(CommandEnvelope::wrap(cmd.clone()))
                        .await
                        .unwrap(),
                );
            })
        })
    });

    let (tx, mut rx) = mpsc::channel::<Request>(1024);
    rt.spawn(async move {
        while let Some((cmd, reply)) = rx.recv().await {
            let _ = reply.send(noop_command(cmd).await);
        }
    });
    group.bench_function("raw_mpsc_oneshot", |b| {
        b.iter_custom(|iters| {
            timed!(rt, iters, (tx, cmd), {
                let (reply_tx, reply_rx) = oneshot::channel();
                tx.send((cmd.clone(), reply_tx)).await.unwrap();
                black_box(reply_rx.await.unwrap().unwrap());
            })
        })
    });

    group.bench_function("direct_call", |b| {
        b.iter_custom(|iters| {
            timed!(rt, iters, (cmd), {
                black_box(noop_command(cmd.clone()).await.unwrap());
            })
        })
    });

    // The floor for any dispatcher that hands the handler an owned command and still
    // returns the message in its receipt: one more copy of the command than a direct call.
    group.bench_function("direct_call_plus_receipt_copy", |b| {
        b.iter_custom(|iters| {
            timed!(rt, iters, (cmd), {
                let kept = cmd.clone();
                black_box(noop_command(kept.clone()).await.unwrap());
                black_box(kept);
            })
        })
    });
    group.finish();
}

fn publish(c: &mut Criterion) {
    let rt = runtime();
    let ev = event();
    let mut group = c.benchmark_group("publish3");

    let bus = Bus::in_process();
    for name in ["A", "B", "C"] {
        rt.block_on(bus.subscribe(Subscription::events(name, |ev, _| noop_event(ev))))
            .unwrap();
    }
    group.bench_function("orkestra", |b| {
        b.iter_custom(|iters| {
            timed!(rt, iters, (bus, ev), {
                black_box(bus.publish(EventEnvelope::wrap(ev.clone())).await.unwrap());
            })
        })
    });

    let (tx, _) = broadcast::channel::<Event<OrderPlaced>>(1024);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<()>();
    for _ in 0..3 {
        let mut rx = tx.subscribe();
        let ack = ack_tx.clone();
        rt.spawn(async move {
            while let Ok(ev) = rx.recv().await {
                noop_event(ev).await.unwrap();
                ack.send(()).unwrap();
            }
        });
    }
    // The receiver moves into each sample's task and back out through this slot.
    let acks = Arc::new(std::sync::Mutex::new(Some(ack_rx)));
    group.bench_function("raw_broadcast", |b| {
        b.iter_custom(|iters| {
            let mut ack_rx = acks.lock().unwrap().take().unwrap();
            let (tx, ev) = (tx.clone(), ev.clone());
            let (elapsed, ack_rx) = rt
                .block_on(rt.spawn(async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        tx.send(ev.clone()).unwrap();
                        for _ in 0..3 {
                            ack_rx.recv().await.unwrap();
                        }
                    }
                    (start.elapsed(), ack_rx)
                }))
                .unwrap();
            *acks.lock().unwrap() = Some(ack_rx);
            elapsed
        })
    });
    group.finish();
}

fn topic(c: &mut Criterion) {
    let pattern = vec!["#"; 15].join(".") + ".z";
    let key = vec!["a"; 31].join(".");
    c.bench_function("topic/15_hashes_31_words", |b| {
        b.iter(|| {
            black_box(orkestra_runtime::topic::matches(
                black_box(&pattern),
                black_box(&key),
            ))
        })
    });
}

/// The same dispatch with no subscriber, with an OpenTelemetry layer whose sampler drops
/// everything, and with one that samples every span (recorded, then dropped: no exporter).
fn tracing_overhead(c: &mut Criterion) {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
    use tracing::instrument::WithSubscriber;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt;

    let rt = runtime();
    let cmd = command();
    let bus = Bus::in_process();
    rt.block_on(bus.subscribe(Subscription::command("Noop", |cmd, _| noop_command(cmd))))
        .unwrap();
    let mut group = c.benchmark_group("tracing");
    // The layer as `telemetry::Telemetry` installs it (and the README recommends): no
    // log-context spans, no busy/idle, location, thread or target attributes. `lean =
    // false` keeps tracing-opentelemetry's defaults, for comparison.
    let otel = |sampler: Sampler, lean: bool| {
        let provider = SdkTracerProvider::builder().with_sampler(sampler).build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("bench"))
            .with_tracked_inactivity(!lean)
            .with_location(!lean)
            .with_threads(!lean)
            .with_target(!lean)
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.target() != orkestra_runtime::trace::LOG_CONTEXT_TARGET
            }));
        tracing::Dispatch::new(tracing_subscriber::registry().with(layer))
    };
    // Sampling off is configured on both sides, as `telemetry::init` does: the
    // OpenTelemetry sampler and Orkestra's ratio for new flows.
    let subscribers = [
        ("no_subscriber", tracing::Dispatch::none(), 1.0),
        ("otel_sampling_off", otel(Sampler::AlwaysOff, true), 0.0),
        ("otel_sampled", otel(Sampler::AlwaysOn, true), 1.0),
        (
            "otel_sampled_layer_defaults",
            otel(Sampler::AlwaysOn, false),
            1.0,
        ),
    ];
    for (name, dispatch, ratio) in subscribers {
        orkestra_runtime::trace::set_sampling_ratio(ratio);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let (bus, cmd, dispatch) = (bus.clone(), cmd.clone(), dispatch.clone());
                rt.block_on(
                    rt.spawn(
                        async move {
                            let start = Instant::now();
                            for _ in 0..iters {
                                black_box(
                                    bus.dispatch(CommandEnvelope::wrap(cmd.clone()))
                                        .await
                                        .unwrap(),
                                );
                            }
                            start.elapsed()
                        }
                        .with_subscriber(dispatch),
                    ),
                )
                .unwrap()
            })
        });
    }
    orkestra_runtime::trace::set_sampling_ratio(1.0);
    group.finish();
}

fn metrics_overhead(c: &mut Criterion) {
    let rt = runtime();
    let cmd = command();
    let ev = event();
    let build = || {
        let bus = Bus::in_process();
        rt.block_on(bus.subscribe(Subscription::command("Noop", |cmd, _| noop_command(cmd))))
            .unwrap();
        for name in ["A", "B", "C"] {
            rt.block_on(bus.subscribe(Subscription::events(name, |ev, _| noop_event(ev))))
                .unwrap();
        }
        bus
    };
    // Built before any meter provider is installed: it records nothing.
    let off = build();
    let reader = opentelemetry_sdk::metrics::ManualReader::builder().build();
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(reader)
        .build();
    orkestra_runtime::metrics::set_meter_provider(provider.clone());
    let on = build();

    let mut group = c.benchmark_group("metrics");
    for (name, bus) in [("no_provider", &off), ("provider_installed", &on)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                timed!(rt, iters, (bus, cmd), {
                    black_box(
                        bus.dispatch(CommandEnvelope::wrap(cmd.clone()))
                            .await
                            .unwrap(),
                    );
                })
            })
        });
    }
    for (name, bus) in [
        ("publish3_no_provider", &off),
        ("publish3_provider_installed", &on),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                timed!(rt, iters, (bus, ev), {
                    black_box(bus.publish(EventEnvelope::wrap(ev.clone())).await.unwrap());
                })
            })
        });
    }
    group.finish();
    drop(provider);
}

criterion_group!(
    benches,
    dispatch,
    publish,
    topic,
    tracing_overhead,
    metrics_overhead
);
criterion_main!(benches);
