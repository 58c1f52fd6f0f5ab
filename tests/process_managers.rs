//! Process managers generated from `orkestra-gen/tests/golden/process_managers/fulfilment.yaml`
//! (`book/src/process-managers.md`), run for real: the `Fulfilment` flow on the in-process
//! bus with SQLite and PostgreSQL, and on RabbitMQ with PostgreSQL (two runners sharing
//! the work). The payment service is simulated by the `Charger` handler, which appends
//! `PaymentReceived` / `PaymentFailed` as each order's script says.

#[path = "../orkestra-runtime/tests/support/services.rs"]
#[allow(dead_code)]
mod services;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orkestra_runtime::process::{ProcessManager, RunningProcessManagers, start_from_now};
use orkestra_runtime::{
    Bus, Command, Event, EventData, EventPayload, ExpectedVersion, HandlerContext, HandlerError,
    Metadata, ProcessManagers, Store,
};
use orkestra_tests::process_managers::fulfil::commands::{CancelOrder, ChargeCard, ShipOrder};
use orkestra_tests::process_managers::fulfil::events::{
    OrderCancelled, OrderPlaced, OrderShipped, PaymentFailed, PaymentReceived,
};
use orkestra_tests::process_managers::fulfil::handlers::{self, Canceller, Charger, Shipper};
use orkestra_tests::process_managers::fulfil::process_managers::{
    self as pm, Fulfilment, FulfilmentCommand, FulfilmentContext, FulfilmentEvent, FulfilmentState,
    FulfilmentTest, FulfilmentTimer,
};
use serde_json::{Value, json};

/// The flow under test: charge, retry a failed payment once, cancel on the second
/// failure or when no payment comes within the `reminder` timer (2 s); ship once paid.
#[derive(Clone, Default)]
struct Flow {
    /// Events and timers this runner handled.
    handled: Arc<AtomicU32>,
    timeouts: Arc<AtomicU32>,
    /// The orders of this test (a shared PostgreSQL database holds other tests' orders,
    /// which this flow leaves alone).
    tag: String,
}

impl Flow {
    fn tagged(tag: &str) -> Self {
        Self {
            tag: tag.to_owned(),
            ..Self::default()
        }
    }
}

impl Fulfilment for Flow {
    async fn handle(
        &self,
        state: &mut FulfilmentState,
        event: &FulfilmentEvent,
        ctx: &mut FulfilmentContext,
    ) -> Result<(), HandlerError> {
        if !ctx.key().starts_with(&self.tag) {
            return Ok(());
        }
        self.handled.fetch_add(1, Ordering::SeqCst);
        let order_id = ctx.key().to_owned();
        match event {
            FulfilmentEvent::OrderPlaced(e) => {
                state.amount_cents = e.amount_cents;
                ctx.dispatch(FulfilmentCommand::ChargeCard(ChargeCard {
                    order_id,
                    amount_cents: e.amount_cents,
                }));
                ctx.set_timer(FulfilmentTimer::Reminder);
            }
            FulfilmentEvent::PaymentReceived(_) => {
                state.paid = true;
                ctx.clear_timer(FulfilmentTimer::Reminder);
                ctx.dispatch(FulfilmentCommand::ShipOrder(ShipOrder { order_id }));
            }
            FulfilmentEvent::PaymentFailed(e) => {
                if e.reason.as_deref() == Some("panic") {
                    panic!("the card network is on fire");
                }
                state.attempts += 1;
                if state.attempts < 2 {
                    ctx.dispatch(FulfilmentCommand::ChargeCard(ChargeCard {
                        order_id,
                        amount_cents: state.amount_cents,
                    }));
                    ctx.set_timer(FulfilmentTimer::Reminder);
                } else {
                    ctx.clear_timer(FulfilmentTimer::Reminder);
                    ctx.dispatch(FulfilmentCommand::CancelOrder(CancelOrder {
                        order_id,
                        reason: "payment failed twice".into(),
                    }));
                }
            }
            FulfilmentEvent::OrderShipped(_) | FulfilmentEvent::OrderCancelled(_) => {}
        }
        Ok(())
    }

    async fn on_timeout(
        &self,
        _state: &mut FulfilmentState,
        timer: FulfilmentTimer,
        ctx: &mut FulfilmentContext,
    ) -> Result<(), HandlerError> {
        if !ctx.key().starts_with(&self.tag) {
            return Ok(());
        }
        self.timeouts.fetch_add(1, Ordering::SeqCst);
        assert_eq!(timer, FulfilmentTimer::Reminder);
        let order_id = ctx.key().to_owned();
        ctx.dispatch(FulfilmentCommand::CancelOrder(CancelOrder {
            order_id,
            reason: "payment timed out".into(),
        }));
        Ok(())
    }
}

/// What a payment attempt does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Pay {
    Ok,
    Fail,
    Panic,
    /// Never answers (the timer cancels).
    Silent,
}

/// A command as a handler saw it.
#[derive(Clone, Debug)]
struct Seen {
    topic: &'static str,
    id: String,
    order: String,
    correlation: String,
    causation: Option<String>,
}

/// The services the flow drives: they record the commands and append the answers.
#[derive(Clone)]
struct World {
    store: Store,
    scripts: Arc<Mutex<HashMap<String, Vec<Pay>>>>,
    outcomes: Arc<Mutex<HashMap<String, Pay>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// How often each command id was delivered (`seen` keeps each once).
    deliveries: Arc<Mutex<HashMap<String, u32>>>,
}

impl World {
    fn new(store: Store) -> Self {
        Self {
            store,
            scripts: Arc::default(),
            outcomes: Arc::default(),
            seen: Arc::default(),
            deliveries: Arc::default(),
        }
    }

    /// Records a command once per id: a broker may deliver it again (a handler retried
    /// after a slow store), and the services are idempotent, as the design asks.
    fn see<P>(&self, topic: &'static str, command: &Command<P>, order: &str) {
        *self
            .deliveries
            .lock()
            .unwrap()
            .entry(command.id.clone())
            .or_default() += 1;
        let mut seen = self.seen.lock().unwrap();
        if seen.iter().any(|s| s.id == command.id) {
            return;
        }
        seen.push(Seen {
            topic,
            id: command.id.clone(),
            order: order.to_owned(),
            correlation: command.metadata.correlation_id.clone(),
            causation: command.metadata.causation_id.clone(),
        });
    }

    async fn answer<D: EventPayload, P>(
        &self,
        command: &Command<P>,
        order: &str,
        payload: D,
    ) -> Result<Value, HandlerError> {
        let event = Event::new(
            payload,
            Metadata::derive(&command.metadata, command.id.clone()),
        )
        .map_err(HandlerError::reject)?;
        // The id is derived from the command's: a redelivered command appends nothing new.
        let mut data = EventData::from_event(&event).map_err(HandlerError::fail)?;
        data.id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, command.id.as_bytes()).to_string();
        self.store
            .append(&format!("order-{order}"), ExpectedVersion::Any, vec![data])
            .await
            .map_err(HandlerError::fail)?;
        Ok(Value::Null)
    }

    /// What the payment service answers for `order`'s charges, in turn (then `Ok`).
    fn script(&self, order: &str, pays: Vec<Pay>) {
        self.scripts.lock().unwrap().insert(order.to_owned(), pays);
    }

    fn commands(&self, order: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.order == order)
            .cloned()
            .collect()
    }

    fn topics(&self, order: &str) -> Vec<&'static str> {
        self.commands(order).iter().map(|s| s.topic).collect()
    }

    fn subscriptions(&self) -> Vec<orkestra_runtime::Subscription> {
        vec![
            handlers::charger(self.clone()),
            handlers::shipper(self.clone()),
            handlers::canceller(self.clone()),
        ]
    }
}

impl Charger for World {
    async fn execute(
        &self,
        command: Command<ChargeCard>,
        _ctx: HandlerContext,
    ) -> Result<Value, HandlerError> {
        let order = command.order_id.clone();
        self.see("ChargeCard", &command, &order);
        let next = {
            // The same command delivered again gets the same answer.
            let mut outcomes = self.outcomes.lock().unwrap();
            *outcomes.entry(command.id.clone()).or_insert_with(|| {
                let mut scripts = self.scripts.lock().unwrap();
                let script = scripts.entry(order.clone()).or_default();
                if script.is_empty() {
                    Pay::Ok
                } else {
                    script.remove(0)
                }
            })
        };
        match next {
            Pay::Ok => {
                self.answer(
                    &command,
                    &order,
                    PaymentReceived {
                        order_id: order.clone(),
                    },
                )
                .await
            }
            Pay::Fail | Pay::Panic => {
                let reason = if next == Pay::Panic {
                    "panic"
                } else {
                    "declined"
                };
                self.answer(
                    &command,
                    &order,
                    PaymentFailed {
                        order_id: order.clone(),
                        reason: Some(reason.into()),
                    },
                )
                .await
            }
            Pay::Silent => Ok(Value::Null),
        }
    }
}

impl Shipper for World {
    async fn execute(
        &self,
        command: Command<ShipOrder>,
        _ctx: HandlerContext,
    ) -> Result<Value, HandlerError> {
        let order = command.order_id.clone();
        self.see("ShipOrder", &command, &order);
        self.answer(
            &command,
            &order,
            OrderShipped {
                order_id: order.clone(),
            },
        )
        .await
    }
}

impl Canceller for World {
    async fn execute(
        &self,
        command: Command<CancelOrder>,
        _ctx: HandlerContext,
    ) -> Result<Value, HandlerError> {
        let order = command.order_id.clone();
        self.see("CancelOrder", &command, &order);
        self.answer(
            &command,
            &order,
            OrderCancelled {
                order_id: order.clone(),
            },
        )
        .await
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A process-manager run name of its own, starting at the store's head (the shared
/// test database holds other runs' events).
async fn fresh_name(store: &Store) -> String {
    let name = format!(
        "Fulfilment{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    start_from_now(store, &name).await.unwrap();
    name
}

fn manager(flow: &Flow, store: &Store, name: &str) -> ProcessManager {
    pm::fulfilment(flow.clone(), store.clone())
        .named(name)
        .with_retry_delay(Duration::from_millis(20))
}

/// The flow running as process manager `name` on `store` and `bus`.
async fn run(flow: &Flow, store: &Store, bus: &Bus, name: &str) -> RunningProcessManagers {
    ProcessManagers::new(store.clone(), bus.clone())
        .add(manager(flow, store, name))
        .start()
        .await
        .unwrap()
}

/// Appends the payment of `order`, as the payment service would.
async fn pay(store: &Store, order: &str) {
    let payment = Event::new(
        PaymentReceived {
            order_id: order.to_owned(),
        },
        Metadata::new(),
    )
    .unwrap();
    store
        .append(
            &format!("order-{order}"),
            ExpectedVersion::Any,
            vec![EventData::from_event(&payment).unwrap()],
        )
        .await
        .unwrap();
}

async fn place(store: &Store, order: &str, amount: i64) -> orkestra_runtime::RecordedEvent {
    let event = Event::new(
        OrderPlaced {
            order_id: order.into(),
            amount_cents: amount,
        },
        Metadata::new(),
    )
    .unwrap();
    let stream = format!("order-{order}");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![EventData::from_event(&event).unwrap()],
        )
        .await
        .unwrap();
    store.read_stream(&stream, 0, 1).await.unwrap().remove(0)
}

/// The instance's last step, as JSON.
async fn last_step(store: &Store, name: &str, order: &str) -> Option<Value> {
    let stream = format!("pm-fulfilment.{}-{order}", name.to_lowercase());
    let last = store
        .read_stream_backwards(&stream, u64::MAX, 1)
        .await
        .unwrap();
    last.first().map(|e| e.data().unwrap())
}

async fn wait_until<F: Future<Output = bool>>(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> F,
) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_finished(store: &Store, name: &str, order: &str) -> Value {
    wait_until(
        &format!("order {order} to finish"),
        Duration::from_secs(20),
        || async {
            last_step(store, name, order)
                .await
                .is_some_and(|s| s["finished"] == json!(true))
        },
    )
    .await;
    last_step(store, name, order).await.unwrap()
}

/// The whole scenario list on one store and bus.
async fn scenarios(store: Store, bus: Bus) {
    let world = World::new(store.clone());
    bus.subscribe_all(world.subscriptions()).await.unwrap();
    let name = fresh_name(&store).await;
    let tag = unique("s");
    let unique = |kind: &str| format!("{tag}-{kind}");
    let flow = Flow::tagged(&tag);
    let running = run(&flow, &store, &bus, &name).await;

    // The happy flow: charged, paid, shipped, finished; the reminder, cleared in time,
    // never fires.
    let happy = unique("happy");
    let placed = place(&store, &happy, 500).await;
    let step = wait_finished(&store, &name, &happy).await;
    assert_eq!(world.topics(&happy), ["ChargeCard", "ShipOrder"]);
    assert_eq!(step["state"]["paid"], json!(true));
    assert_eq!(step["timers"], json!({}));
    let charge = &world.commands(&happy)[0];
    assert_eq!(
        charge.correlation,
        placed.metadata().correlation_id,
        "commands carry the event's correlation id"
    );
    assert_eq!(
        charge.causation.as_deref(),
        Some(placed.id()),
        "causation = the event id"
    );

    // Fails twice, then cancels.
    let twice = unique("twice");
    world.script(&twice, vec![Pay::Fail, Pay::Fail]);
    place(&store, &twice, 700).await;
    let step = wait_finished(&store, &name, &twice).await;
    assert_eq!(
        world.topics(&twice),
        ["ChargeCard", "ChargeCard", "CancelOrder"]
    );
    assert_eq!(step["state"]["attempts"], json!(2));

    // No payment: the reminder (2 s) cancels.
    let silent = unique("silent");
    world.script(&silent, vec![Pay::Silent]);
    let started = Instant::now();
    place(&store, &silent, 900).await;
    // Meanwhile its reminder is the one timer pending (the others were cleared).
    let mut pending = false;
    while !pending && started.elapsed() < Duration::from_millis(1900) {
        pending = metric(&name, "orkestra.process.timers.pending") == Some(1.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pending, "the pending timer gauge never showed the reminder");
    wait_finished(&store, &name, &silent).await;
    let waited = started.elapsed();
    assert_eq!(
        metric(&name, "orkestra.process.timer.lateness"),
        Some(1.0),
        "one timer fired, its lateness recorded"
    );
    assert_eq!(metric(&name, "orkestra.process.timers.pending"), Some(0.0));
    assert_eq!(world.topics(&silent), ["ChargeCard", "CancelOrder"]);
    assert_eq!(world.commands(&silent)[1].topic, "CancelOrder");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(8),
        "the timer fires near its due time: {waited:?}"
    );

    // The happy order's cleared reminder is long past due: still nothing more for it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(world.topics(&happy), ["ChargeCard", "ShipOrder"]);
    assert_eq!(
        flow.timeouts.load(Ordering::SeqCst),
        1,
        "only the silent order's timer fired"
    );

    running.stop().await.unwrap();
}

/// Process manager `name`'s point of instrument `instrument` (a gauge's value, a
/// histogram's count), through the SDK's in-memory exporter (one meter provider for this
/// binary, installed on first use).
fn metric(name: &str, instrument: &str) -> Option<f64> {
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};
    static METERS: std::sync::OnceLock<(SdkMeterProvider, InMemoryMetricExporter)> =
        std::sync::OnceLock::new();
    let (provider, exporter) = METERS.get_or_init(|| {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_periodic_exporter(exporter.clone())
            .build();
        orkestra_runtime::metrics::set_meter_provider(provider.clone());
        (provider, exporter)
    });
    provider.force_flush().unwrap();
    let exported = exporter.get_finished_metrics().unwrap();
    let ours = |attributes: Vec<&opentelemetry::KeyValue>| {
        attributes.len() == 1
            && attributes[0].key.as_str() == "orkestra.process_manager"
            && attributes[0].value.as_str() == name
    };
    for metric in exported.last()?.scope_metrics().flat_map(|s| s.metrics()) {
        if metric.name() != instrument {
            continue;
        }
        match metric.data() {
            AggregatedMetrics::U64(MetricData::Gauge(gauge)) => {
                assert_eq!(metric.unit(), "{timer}");
                return gauge
                    .data_points()
                    .find(|p| ours(p.attributes().collect()))
                    .map(|p| p.value() as f64);
            }
            AggregatedMetrics::F64(MetricData::Histogram(histogram)) => {
                assert_eq!(metric.unit(), "s");
                return histogram
                    .data_points()
                    .find(|p| ours(p.attributes().collect()))
                    .map(|p| p.count() as f64);
            }
            other => panic!("{instrument}: {other:?}"),
        }
    }
    None
}

/// The flow's scenarios on one stack.
async fn fulfilment(stack: Stack) {
    let Some((store, bus)) = stack.open().await else {
        return;
    };
    scenarios(store, bus.clone()).await;
    Stack::stop(&bus).await;
}

/// One test of `scenario` per stack: `<scenario>::in_process_with_sqlite`,
/// `::in_process_with_postgres`, `::on_rabbitmq_with_postgres`.
macro_rules! on_every_stack {
    ($scenario:ident) => {
        mod $scenario {
            use super::Stack;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_process_with_sqlite() {
                super::$scenario(Stack::sqlite()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_process_with_postgres() {
                super::$scenario(Stack::Postgres).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_rabbitmq_with_postgres() {
                super::$scenario(Stack::rabbit()).await;
            }
        }
    };
}

on_every_stack!(fulfilment);
on_every_stack!(downtime);
on_every_stack!(crash);

/// A panicking handler is retried, then its event dead-lettered; the instance keeps the
/// state from before that event and goes on with the next one. An event without the
/// `correlate_by` field is dead-lettered with that reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_dead_lettered_and_the_instance_keeps_its_state() {
    let store = Store::memory();
    let bus = Bus::in_process();
    let world = World::new(store.clone());
    bus.subscribe_all(world.subscriptions()).await.unwrap();
    let mut dead = bus.dead_letters().await.unwrap();
    let name = fresh_name(&store).await;
    let flow = Flow::default();
    let running = ProcessManagers::new(store.clone(), bus.clone())
        .add(manager(&flow, &store, &name).with_max_retries(2))
        .start()
        .await
        .unwrap();

    let order = unique("panics");
    world.script(&order, vec![Pay::Panic, Pay::Silent]);
    place(&store, &order, 300).await;
    let letter = tokio::time::timeout(Duration::from_secs(10), dead.recv())
        .await
        .expect("a dead letter")
        .unwrap();
    assert_eq!(letter.handler(), format!("pm:{name}"));
    assert_eq!(letter.attempts(), 3, "the first try and 2 retries");
    assert!(
        letter.reason().contains("the card network is on fire"),
        "{}",
        letter.reason()
    );
    assert_eq!(letter.message().type_name(), "Shop.Fulfil.PaymentFailed");
    // Before the panic: placed, charged, reminder set; attempts untouched.
    let step = last_step(&store, &name, &order).await.unwrap();
    assert_eq!(step["state"]["attempts"], json!(0));
    assert_eq!(step["finished"], json!(false));
    // The reminder still stands and cancels it.
    let step = wait_finished(&store, &name, &order).await;
    assert_eq!(step["state"]["amount_cents"], json!(300));
    assert_eq!(world.topics(&order), ["ChargeCard", "CancelOrder"]);

    // A command that breaks its schema's rules (`amount_cents` min 1): the event is
    // dead-lettered as if the handler failed, and no instance starts.
    let free = unique("free");
    place(&store, &free, 0).await;
    let letter = tokio::time::timeout(Duration::from_secs(10), dead.recv())
        .await
        .expect("a dead letter")
        .unwrap();
    assert!(
        letter.reason().contains("dispatched an invalid command"),
        "{}",
        letter.reason()
    );
    assert_eq!(letter.message().type_name(), "Shop.Fulfil.OrderPlaced");
    assert!(last_step(&store, &name, &free).await.is_none());
    assert!(world.commands(&free).is_empty());

    // No `order_id` at run time.
    let raw = EventData {
        id: orkestra_runtime::new_id(),
        event_type: "Shop.Fulfil.OrderPlaced".into(),
        schema_version: 1,
        data: json!({ "amount_cents": 5 }),
        metadata: Metadata::new(),
        topic: Some("fulfil.events.order_placed".into()),
        tags: Vec::new(),
    };
    store
        .append("order-nameless", ExpectedVersion::Any, vec![raw])
        .await
        .unwrap();
    let letter = tokio::time::timeout(Duration::from_secs(10), dead.recv())
        .await
        .expect("a dead letter")
        .unwrap();
    assert!(
        letter.reason().contains("has no `order_id`"),
        "{}",
        letter.reason()
    );
    running.stop().await.unwrap();
}

/// When one lane of a batch fails (here: a step's command has no handler yet, so the feed
/// stops there and reads the batch again every half second), the work other lanes finished
/// is not done again: their steps' commands are dispatched once and their dead letters
/// are not repeated, however often the failing lane is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_lane_does_not_repeat_what_other_lanes_did() {
    let dir = std::env::temp_dir().join(unique("orkestra-pm-lanes"));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::sqlite(dir.join("events.db")).await.unwrap();
    let bus = Bus::in_process();
    let world = World::new(store.clone());
    // No `ShipOrder` handler yet.
    bus.subscribe(handlers::charger(world.clone()))
        .await
        .unwrap();
    bus.subscribe(handlers::canceller(world.clone()))
        .await
        .unwrap();
    let mut dead = bus.dead_letters().await.unwrap();
    let name = fresh_name(&store).await;
    let flow = Flow::default();
    let running = run(&flow, &store, &bus, &name).await;

    // Order A is paid: its step dispatches `ShipOrder`, which nobody takes, so A's lane
    // fails from there on.
    let a = unique("lanes-a");
    world.script(&a, vec![Pay::Silent]);
    place(&store, &a, 100).await;
    pay(&store, &a).await;
    wait_until("A's shipping step", Duration::from_secs(20), || async {
        last_step(&store, &name, &a)
            .await
            .is_some_and(|s| s["state"]["paid"] == json!(true))
    })
    .await;
    // Behind it, while the feed keeps failing there: an event with no `order_id` (a dead
    // letter) and order B (a step that dispatches `ChargeCard`).
    let keyless = EventData {
        id: orkestra_runtime::new_id(),
        event_type: "Shop.Fulfil.OrderPlaced".into(),
        schema_version: 1,
        data: json!({ "amount_cents": 5 }),
        metadata: Metadata::new(),
        topic: Some("fulfil.events.order_placed".into()),
        tags: Vec::new(),
    };
    let keyless_id = keyless.id.clone();
    store
        .append(
            &unique("order-nameless"),
            ExpectedVersion::Any,
            vec![keyless],
        )
        .await
        .unwrap();
    let b = unique("lanes-b");
    world.script(&b, vec![Pay::Silent]);
    place(&store, &b, 200).await;
    wait_until("B's charge", Duration::from_secs(20), || async {
        world.topics(&b) == ["ChargeCard"]
    })
    .await;
    // Several rounds of the failing batch (one each 500 ms).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b_charges: Vec<u32> = world
        .commands(&b)
        .iter()
        .map(|s| world.deliveries.lock().unwrap()[&s.id])
        .collect();
    assert_eq!(b_charges, [1], "B's ChargeCard, dispatched once");
    let mut letters = Vec::new();
    while let Some(letter) = dead.try_recv() {
        letters.push(letter.message_id().to_owned());
    }
    assert_eq!(
        letters,
        [keyless_id],
        "one dead letter for the keyless event"
    );
    assert!(world.commands(&a).iter().all(|s| s.topic != "ShipOrder"));

    // The missing handler arrives: A ships, and nothing of B's is repeated.
    bus.subscribe(handlers::shipper(world.clone()))
        .await
        .unwrap();
    wait_until("A's shipping", Duration::from_secs(20), || async {
        world.topics(&a) == ["ChargeCard", "ShipOrder"]
    })
    .await;
    running.stop().await.unwrap();
    let deliveries = world.deliveries.lock().unwrap().clone();
    for seen in world.commands(&a).iter().chain(&world.commands(&b)) {
        assert_eq!(
            deliveries[&seen.id], 1,
            "{} of {} delivered once",
            seen.topic, seen.order
        );
    }
    assert!(dead.try_recv().is_none(), "no dead letter repeated");
}

/// On PostgreSQL a commit joins the global order once every older transaction has
/// ended. A payment committed before its timer came due, but kept out of the global order
/// by an older transaction still open, beats the timer all the same: the timer waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_held_back_by_an_older_transaction_beats_its_timer() {
    let Some(store) = services::postgres_store().await else {
        return;
    };
    let bus = Bus::in_process();
    let world = World::new(store.clone());
    bus.subscribe_all(world.subscriptions()).await.unwrap();
    let name = fresh_name(&store).await;
    let tag = unique("h");
    let order = format!("{tag}-held-back");
    world.script(&order, vec![Pay::Silent]);
    let flow = Flow::tagged(&tag);
    let running = run(&flow, &store, &bus, &name).await;
    place(&store, &order, 100).await;
    wait_until("the charge", Duration::from_secs(10), || async {
        world.topics(&order) == ["ChargeCard"]
    })
    .await;
    let due = last_step(&store, &name, &order).await.unwrap()["timers"]["reminder"]
        .as_i64()
        .expect("the reminder is set");
    let until_due = |margin: i64| {
        let now = now_ms();
        Duration::from_millis(u64::try_from(due + margin - now).unwrap_or(0))
    };
    // Shortly before the timer is due: an older transaction takes a transaction id and
    // stays open, then the payment commits behind it.
    tokio::time::sleep(until_due(-1000)).await;
    let (mut client, connection) =
        tokio_postgres::connect(services::postgres_url().expose(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    let older = client.transaction().await.unwrap();
    older
        .execute("SELECT pg_current_xact_id()", &[])
        .await
        .unwrap();
    pay(&store, &order).await;
    assert!(
        now_ms() < due,
        "the payment committed before the timer came due"
    );
    // Well past the due time, the payment is still out of the global order: the timer
    // has not fired.
    tokio::time::sleep(until_due(600)).await;
    assert_eq!(world.topics(&order), ["ChargeCard"]);
    assert_eq!(flow.timeouts.load(Ordering::SeqCst), 0);
    older.rollback().await.unwrap();

    let step = wait_finished(&store, &name, &order).await;
    assert_eq!(world.topics(&order), ["ChargeCard", "ShipOrder"]);
    assert_eq!(step["state"]["paid"], json!(true));
    assert_eq!(
        flow.timeouts.load(Ordering::SeqCst),
        0,
        "the timer never fired"
    );
    running.stop().await.unwrap();
}

/// The wall clock in Unix milliseconds, as timers' due times are kept.
fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

/// Two runners over one PostgreSQL store on RabbitMQ: each event, step and timer is
/// acted on by exactly one of them, and both take part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_on_rabbitmq_share_the_work() {
    let Some(store) = services::postgres_store().await else {
        return;
    };
    // Two connections to one topology, as two processes of one service would have.
    let config = services::rabbit_config();
    let (Some(bus_a), Some(bus_b)) = (
        services::rabbit_bus_with(&config).await,
        services::rabbit_bus_with(&config).await,
    ) else {
        return;
    };
    let world = World::new(store.clone());
    bus_a.subscribe_all(world.subscriptions()).await.unwrap();
    let name = fresh_name(&store).await;
    let tag = unique("r");
    let (flow_a, flow_b) = (Flow::tagged(&tag), Flow::tagged(&tag));
    // Two copies (their own owner names), the instances spread over 4 partitions: each
    // copy holds 2 of them once both run.
    let a = ProcessManagers::new(store.clone(), bus_a.clone())
        .with_owner("copy-a")
        .add(manager(&flow_a, &store, &name).with_partitions(4))
        .start()
        .await
        .unwrap();
    let b = ProcessManagers::new(store.clone(), bus_b.clone())
        .with_owner("copy-b")
        .add(manager(&flow_b, &store, &name).with_partitions(4))
        .start()
        .await
        .unwrap();
    let leases = store.leases().await.unwrap();
    let worker = orkestra_runtime::process::checkpoint_name(&name);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let owners: Vec<Option<String>> = leases
            .list()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.worker == worker)
            .map(|r| r.owner)
            .collect();
        let held_by = |o: &str| owners.iter().filter(|x| x.as_deref() == Some(o)).count();
        if held_by("copy-a") == 2 && held_by("copy-b") == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the copies share the partitions: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut orders = Vec::new();
    for i in 0..24 {
        let order = format!("{tag}-shared-{i}");
        let script = match i % 3 {
            0 => vec![],
            1 => vec![Pay::Fail, Pay::Ok],
            _ => vec![Pay::Silent],
        };
        world.script(&order, script);
        place(&store, &order, 100 + i).await;
        orders.push(order);
    }
    for (i, order) in orders.iter().enumerate() {
        wait_finished(&store, &name, order).await;
        let expected: &[&str] = match i % 3 {
            0 => &["ChargeCard", "ShipOrder"],
            1 => &["ChargeCard", "ChargeCard", "ShipOrder"],
            _ => &["ChargeCard", "CancelOrder"],
        };
        assert_eq!(world.topics(order), expected, "order {i}");
    }
    let ids: Vec<String> = world
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.id.clone())
        .collect();
    let mut unique_ids = ids.clone();
    unique_ids.sort();
    unique_ids.dedup();
    assert_eq!(ids.len(), unique_ids.len(), "every command dispatched once");
    let (ha, hb) = (
        flow_a.handled.load(Ordering::SeqCst),
        flow_b.handled.load(Ordering::SeqCst),
    );
    // 8 + 8 × 2 + 8 × … events per flow: placed, answers, end.
    assert_eq!(
        ha + hb,
        8 * 3 + 8 * 4 + 8 * 2,
        "each event handled by one runner"
    );
    assert!(ha > 0 && hb > 0, "both runners took part: {ha} and {hb}");
    assert_eq!(
        flow_a.timeouts.load(Ordering::SeqCst) + flow_b.timeouts.load(Ordering::SeqCst),
        8,
        "each timer fired in exactly one runner"
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    bus_a.shutdown(Duration::from_secs(5)).await.unwrap();
    bus_b.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// The given / when / then helper, without a store or a bus.
#[tokio::test]
async fn given_when_then() {
    let placed = FulfilmentEvent::OrderPlaced(OrderPlaced {
        order_id: "o-1".into(),
        amount_cents: 250,
    });
    let (state, commands, timers) = FulfilmentTest::given(Flow::default(), vec![])
        .when(placed.clone())
        .await
        .unwrap();
    assert_eq!(state.amount_cents, 250);
    assert_eq!(
        commands,
        [FulfilmentCommand::ChargeCard(ChargeCard {
            order_id: "o-1".into(),
            amount_cents: 250
        })]
    );
    assert_eq!(timers, [FulfilmentTimer::Reminder]);

    let failed = FulfilmentEvent::PaymentFailed(PaymentFailed {
        order_id: "o-1".into(),
        reason: None,
    });
    let test = FulfilmentTest::given(Flow::default(), vec![placed.clone(), failed.clone()]);
    let (state, commands, timers) = test.when(failed).await.unwrap();
    assert_eq!(state.attempts, 2);
    assert!(
        matches!(&commands[..], [FulfilmentCommand::CancelOrder(c)] if c.reason == "payment failed twice")
    );
    assert!(timers.is_empty());

    let (_, commands, timers) = FulfilmentTest::given(Flow::default(), vec![placed.clone()])
        .when_timeout(FulfilmentTimer::Reminder)
        .await
        .unwrap();
    assert!(
        matches!(&commands[..], [FulfilmentCommand::CancelOrder(c)] if c.reason == "payment timed out")
    );
    assert!(timers.is_empty());

    // An event before the instance started changes nothing, as in the runtime.
    let (state, commands, timers) = FulfilmentTest::given(Flow::default(), vec![])
        .when(FulfilmentEvent::PaymentReceived(PaymentReceived {
            order_id: "o-1".into(),
        }))
        .await
        .unwrap();
    assert!(!state.paid && commands.is_empty() && timers.is_empty());

    // An `ends_on` event finishes the instance: nothing after it does anything.
    let shipped = FulfilmentEvent::OrderShipped(OrderShipped {
        order_id: "o-1".into(),
    });
    let (_, commands, timers) =
        FulfilmentTest::given(Flow::default(), vec![placed.clone(), shipped])
            .when(FulfilmentEvent::PaymentReceived(PaymentReceived {
                order_id: "o-1".into(),
            }))
            .await
            .unwrap();
    assert!(commands.is_empty() && timers.is_empty());
}

/// Where a test runs: the in-process bus with SQLite or PostgreSQL, or RabbitMQ with
/// PostgreSQL. A child process of the crash test gets the same stack (and orders) through
/// its environment.
#[derive(Clone, Debug)]
enum Stack {
    Sqlite(std::path::PathBuf),
    Postgres,
    Rabbit(String),
}

impl Stack {
    fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(unique("orkestra-pm"));
        std::fs::create_dir_all(&dir).unwrap();
        Self::Sqlite(dir.join("events.db"))
    }

    fn rabbit() -> Self {
        Self::Rabbit(services::rabbit_config().bus.prefix)
    }

    /// A fresh store and bus (a restart opens them again); `None` when the service is
    /// not here (and not required).
    async fn open(&self) -> Option<(Store, Bus)> {
        match self {
            Self::Sqlite(path) => Some((Store::sqlite(path).await.unwrap(), Bus::in_process())),
            Self::Postgres => Some((services::postgres_store().await?, Bus::in_process())),
            Self::Rabbit(prefix) => {
                let store = services::postgres_store().await?;
                let mut config = services::rabbit_config();
                config.bus.prefix = prefix.clone();
                Some((store, services::rabbit_bus_with(&config).await?))
            }
        }
    }

    fn to_env(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite:{}", path.display()),
            Self::Postgres => "postgres".into(),
            Self::Rabbit(prefix) => format!("rabbitmq:{prefix}"),
        }
    }

    fn from_env(text: &str) -> Self {
        match text.split_once(':') {
            Some(("sqlite", path)) => Self::Sqlite(path.into()),
            Some(("rabbitmq", prefix)) => Self::Rabbit(prefix.into()),
            _ => Self::Postgres,
        }
    }

    async fn stop(bus: &Bus) {
        let _ = bus.shutdown(Duration::from_secs(5)).await;
    }
}

/// A timer that came due while no runner was up fires when one starts again; a payment
/// recorded during the downtime, before its timer was due, wins over the timer.
async fn downtime(stack: Stack) {
    let Some((store, bus)) = stack.open().await else {
        return;
    };
    let world = World::new(store.clone());
    bus.subscribe_all(world.subscriptions()).await.unwrap();
    let name = fresh_name(&store).await;
    let tag = unique("d");
    let order = format!("{tag}-timed-out");
    let paid = format!("{tag}-paid-in-downtime");
    for o in [&order, &paid] {
        world.script(o, vec![Pay::Silent]);
    }
    let flow = Flow::tagged(&tag);
    let running = run(&flow, &store, &bus, &name).await;
    place(&store, &order, 100).await;
    place(&store, &paid, 200).await;
    wait_until("the charges", Duration::from_secs(10), || async {
        world.topics(&order) == ["ChargeCard"] && world.topics(&paid) == ["ChargeCard"]
    })
    .await;
    running.stop().await.unwrap();
    Stack::stop(&bus).await;
    // Stopping saved the timer index: the restart reads only the steps after it.
    let saved = store
        .load_snapshot(&format!("orkestra.process-timers/{name}"))
        .await
        .unwrap()
        .expect("a timer snapshot");
    assert!(
        saved.state.contains(&order) && saved.state.contains("reminder"),
        "{}",
        saved.state
    );
    pay(&store, &paid).await;
    drop(store);

    // Down for longer than the timer.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (store, bus) = stack.open().await.unwrap();
    let world2 = World {
        store: store.clone(),
        ..world.clone()
    };
    bus.subscribe_all(world2.subscriptions()).await.unwrap();
    let restarted = Instant::now();
    let running = run(&flow, &store, &bus, &name).await;
    wait_finished(&store, &name, &order).await;
    assert!(
        restarted.elapsed() < Duration::from_secs(8),
        "fired right after the restart: {:?}",
        restarted.elapsed()
    );
    assert_eq!(world.topics(&order), ["ChargeCard", "CancelOrder"]);
    // The timer waits for the feed to handle what was recorded before it came due.
    wait_finished(&store, &name, &paid).await;
    assert_eq!(world.topics(&paid), ["ChargeCard", "ShipOrder"]);
    running.stop().await.unwrap();
    Stack::stop(&bus).await;
}

const CRASH_STACK: &str = "ORKESTRA_PM_CRASH_STACK";

/// The child of the crash tests: runs the flow on the stack its parent names; its payment
/// service records the payment, prints the command id and kills the process (SIGKILL)
/// before the dispatch returns, so the feed never saves its checkpoint past the step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(stack) = std::env::var(CRASH_STACK) else {
        return;
    };
    #[derive(Clone)]
    struct Dying(World);
    impl Charger for Dying {
        async fn execute(
            &self,
            command: Command<ChargeCard>,
            ctx: HandlerContext,
        ) -> Result<Value, HandlerError> {
            Charger::execute(&self.0, command.clone(), ctx).await?;
            println!("charged {}", command.id);
            let _ = std::process::Command::new("kill")
                .args(["-9", &std::process::id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(30));
            unreachable!("killed");
        }
    }
    let (store, bus) = Stack::from_env(&stack).open().await.unwrap();
    let world = World::new(store.clone());
    bus.subscribe_all(vec![
        handlers::charger(Dying(world.clone())),
        handlers::shipper(world.clone()),
        handlers::canceller(world.clone()),
    ])
    .await
    .unwrap();
    let name = std::env::var("ORKESTRA_PM_NAME").unwrap();
    let order = std::env::var("ORKESTRA_PM_ORDER").unwrap();
    let flow = Flow::tagged(&order);
    let _running = ProcessManagers::new(store.clone(), bus)
        .add(manager(&flow, &store, &name))
        .start()
        .await
        .unwrap();
    place(&store, &order, 100).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
}

/// Killed between recording a step and dispatching its command: after the restart the
/// command is dispatched again with the same id, and the idempotent payment service
/// (its answer's id derives from the command id) pays once; the flow completes.
async fn crash(stack: Stack) {
    let Some((store, bus)) = stack.open().await else {
        return;
    };
    let name = fresh_name(&store).await;
    drop(store);
    Stack::stop(&bus).await;
    let order = unique("crash");
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CRASH_STACK, stack.to_env())
        .env("ORKESTRA_PM_NAME", &name)
        .env("ORKESTRA_PM_ORDER", &order)
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success(), "the child was killed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let charged = stdout
        .lines()
        .find_map(|l| l.split_once("charged ").map(|(_, id)| id.trim()))
        .unwrap_or_else(|| panic!("the child charged before dying: {stdout}"))
        .to_owned();

    let (store, bus) = stack.open().await.unwrap();
    let world = World::new(store.clone());
    bus.subscribe_all(world.subscriptions()).await.unwrap();
    let running = run(&Flow::tagged(&order), &store, &bus, &name).await;
    wait_finished(&store, &name, &order).await;
    let commands = world.commands(&order);
    assert_eq!(
        commands.iter().map(|c| c.topic).collect::<Vec<_>>(),
        ["ChargeCard", "ShipOrder"]
    );
    assert_eq!(commands[0].id, charged, "dispatched again with the same id");
    let payments = store
        .read_stream(&format!("order-{order}"), 0, 100)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.event_type() == "Shop.Fulfil.PaymentReceived")
        .count();
    assert_eq!(payments, 1, "the payment was made once");
    running.stop().await.unwrap();
    Stack::stop(&bus).await;
}
