//! The relay (transactional outbox): with `store.publish = "relay"` appends publish
//! nothing, and the relay publishes every stored event in global order from its
//! checkpoint, with the event id as message id; an event whose topic is unknown stops it;
//! a checkpoint ahead of the head is refused; the checkpoint lives with the relay's lease,
//! begun at the one kept before on an upgrade. On the in-process bus and RabbitMQ.
//! Several copies: `relay_copies.rs`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use orkestra_runtime::relay::{RELAY_CHECKPOINT, Relay, RelayError};
use orkestra_runtime::{
    Bus, Config, Event, EventData, EventEnvelope, ExpectedVersion, Metadata, PublishMode, Store,
    Subscription,
};
use support::payloads::*;
use support::store_suite::{placed, unique};

type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// Records (message id, order id) of every `OrderPlaced` whose order starts with `prefix`.
async fn recorder(bus: &Bus, name: &str, prefix: &str) -> Seen {
    let name = name.to_owned();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let prefix = prefix.to_owned();
    bus.subscribe(Subscription::events(
        name,
        move |ev: Event<OrderPlaced>, _| {
            let s = s.clone();
            let prefix = prefix.clone();
            async move {
                if ev.data.order_id.starts_with(&prefix) {
                    s.lock().unwrap().push((ev.id.clone(), ev.data.order_id));
                }
                Ok(())
            }
        },
    ))
    .await
    .unwrap();
    seen
}

async fn wait_len(seen: &Seen, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "saw {} of {n}",
            seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn envelope(order: &str) -> EventEnvelope {
    EventEnvelope::wrap(
        Event::new(
            OrderPlaced {
                order_id: order.into(),
                quantity: 1,
            },
            Metadata::new(),
        )
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_mode_appends_only_and_the_relay_publishes_in_order() {
    let config =
        Config::from_toml_str("[store]\nadapter = \"memory\"\npublish = \"relay\"\n").unwrap();
    let store = Store::from_config(&config).await.unwrap();
    assert_eq!(store.publish_mode(), PublishMode::Relay);
    let bus = Bus::in_process();
    let seen = recorder(&bus, "Recorder", "r-").await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let e = envelope(&format!("r-{i:02}"));
        ids.push(e.message().id().to_owned());
        store
            .append_and_publish(&bus, &unique("s"), ExpectedVersion::NoStream, vec![e])
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "relay mode publishes nothing"
    );

    let mut relay = Relay::new(store.clone(), bus.clone())
        .with_batch(7)
        .start()
        .await
        .unwrap();
    let head = store.head().await.unwrap().unwrap();
    relay.wait_for(head).await.unwrap();
    wait_len(&seen, 20).await;
    let got = seen.lock().unwrap().clone();
    let expected: Vec<(String, String)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), format!("r-{i:02}")))
        .collect();
    assert_eq!(got, expected, "in order, the event id as message id");
    relay.stop().await.unwrap();
    assert_eq!(
        Relay::new(store.clone(), bus.clone())
            .checkpoint()
            .await
            .unwrap(),
        Some(head)
    );
    assert_eq!(
        store
            .leases()
            .await
            .unwrap()
            .checkpoint(RELAY_CHECKPOINT, 0)
            .await
            .unwrap(),
        Some(head),
        "the checkpoint lives with the relay's lease"
    );

    // Live, and a restart resumes after the checkpoint: nothing twice.
    let mut relay = Relay::new(store.clone(), bus.clone())
        .start()
        .await
        .unwrap();
    let last = store
        .append(
            &unique("s"),
            ExpectedVersion::NoStream,
            vec![placed("r-20", 1)],
        )
        .await
        .unwrap()
        .last_position;
    relay.wait_for(last).await.unwrap();
    wait_len(&seen, 21).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(seen.lock().unwrap().len(), 21);
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_topic_stops_the_relay_before_the_event() {
    let store = Store::memory().with_publish(PublishMode::Relay);
    let bus = Bus::in_process();
    let seen = recorder(&bus, "Recorder", "u-").await;
    let first = store
        .append("s", ExpectedVersion::NoStream, vec![placed("u-1", 1)])
        .await
        .unwrap();
    let mut bare: EventData = placed("u-2", 2);
    bare.topic = None;
    let bare_at = store
        .append("s", ExpectedVersion::Exact(0), vec![bare])
        .await
        .unwrap();
    let mut relay = Relay::new(store.clone(), bus.clone())
        .start()
        .await
        .unwrap();
    let err = relay.wait_for(bare_at.last_position).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RelayError::UnknownTopic { .. }), "{text}");
    assert!(
        text.contains(&format!("position {}", bare_at.last_position)),
        "{text}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(
        Relay::new(store.clone(), bus.clone())
            .checkpoint()
            .await
            .unwrap(),
        Some(first.last_position),
        "checkpoint before the event it could not publish"
    );
    drop(relay);
    // A fallback that knows the type publishes it.
    let mut relay = Relay::new(store.clone(), bus.clone())
        .with_topics(|e| {
            (e.event_type() == "Test.Orders.OrderPlaced")
                .then(|| "orders.events.order_placed".into())
        })
        .start()
        .await
        .unwrap();
    relay.wait_for(bare_at.last_position).await.unwrap();
    wait_len(&seen, 2).await;
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_ahead_of_the_head_is_refused() {
    let store = Store::memory();
    store
        .append("s", ExpectedVersion::NoStream, vec![placed("a", 1)])
        .await
        .unwrap();
    store
        .save_checkpoint("orkestra.relay", Some(99))
        .await
        .unwrap();
    let err = Relay::new(store.clone(), Bus::in_process())
        .start()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RelayError::AheadOfStore { .. }), "{text}");
    assert!(text.contains("99") && text.contains("position 0"), "{text}");
    let leases = store.leases().await.unwrap();
    assert!(
        leases.list().await.unwrap().is_empty(),
        "an older checkpoint ahead of the head is not carried into the leases"
    );

    // The lease's own checkpoint ahead of the head is refused too, until reset.
    store
        .save_checkpoint("orkestra.relay", Some(0))
        .await
        .unwrap();
    Relay::new(store.clone(), Bus::in_process())
        .start()
        .await
        .unwrap()
        .stop()
        .await
        .unwrap();
    let lease = leases
        .acquire(RELAY_CHECKPOINT, 0, "test", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    leases.save_checkpoint(&lease, Some(99)).await.unwrap();
    leases.release(&lease).await.unwrap();
    let err = Relay::new(store.clone(), Bus::in_process())
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(err, RelayError::AheadOfStore { checkpoint: 99, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("reset(\"orkestra.relay\", 1)"),
        "{err}"
    );
    leases.reset(RELAY_CHECKPOINT, 1).await.unwrap();
    let relay = Relay::new(store.clone(), Bus::in_process());
    assert_eq!(relay.checkpoint().await.unwrap(), None, "reset");
    let mut running = relay.clone().start().await.unwrap();
    running.wait_for(0).await.unwrap();
    running.stop().await.unwrap();
    assert_eq!(
        relay.checkpoint().await.unwrap(),
        Some(0),
        "published again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_to_rabbitmq_with_confirms() {
    let Some(bus) = support::services::rabbit_bus().await else {
        return;
    };
    let store = Store::sqlite(
        std::env::temp_dir()
            .join(format!("orkestra-relay-{}", uuid::Uuid::new_v4().simple()))
            .join("events.db"),
    )
    .await
    .unwrap()
    .with_publish(PublishMode::Relay);
    let prefix = unique("rr");
    let seen = recorder(&bus, &unique("RelayRecorder"), &prefix).await;
    let mut ids = Vec::new();
    for i in 0..50 {
        let e = envelope(&format!("{prefix}-{i:02}"));
        ids.push(e.message().id().to_owned());
        store
            .append_and_publish(&bus, &unique("s"), ExpectedVersion::NoStream, vec![e])
            .await
            .unwrap();
    }
    let mut relay = Relay::new(store.clone(), bus.clone())
        .start()
        .await
        .unwrap();
    relay
        .wait_for(store.head().await.unwrap().unwrap())
        .await
        .unwrap();
    wait_len(&seen, 50).await;
    relay.stop().await.unwrap();
    let got: Vec<String> = seen.lock().unwrap().iter().map(|s| s.0.clone()).collect();
    let mut sorted_got = got.clone();
    sorted_got.sort();
    let mut sorted_ids = ids.clone();
    sorted_ids.sort();
    assert_eq!(
        sorted_got, sorted_ids,
        "every event, the event id as message id"
    );
}

/// Logs of this thread's tasks (the relay runs on the test's current-thread runtime).
fn capture_logs() -> (support::logs::LogBuffer, tracing::subscriber::DefaultGuard) {
    let logs = support::logs::LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

fn big(order: &str, bytes: usize) -> EventData {
    EventData::from_event(
        &Event::new(
            OrderPlaced {
                order_id: format!("{order}-{}", "x".repeat(bytes)),
                quantity: 1,
            },
            Metadata::new(),
        )
        .unwrap(),
    )
    .unwrap()
}

/// An event over `bus.max_message_bytes` stops the relay at once (not retried), with an
/// error naming its position, stream and the reason, logged once and kept in the
/// status; `Relay::skip` refuses any other position than the next, moves past that one
/// (logged), and the relay then publishes the rest.
#[tokio::test]
async fn an_event_the_bus_refuses_stops_the_relay_until_it_is_skipped() {
    let mut config = support::services::rabbit_config();
    config.bus.max_message_bytes = 4096;
    let Some(bus) = support::services::rabbit_bus_with(&config).await else {
        return;
    };
    let (logs, _guard) = capture_logs();
    // Stored before the limit was known (no relay limit on this store).
    let store = Store::memory();
    let prefix = unique("big");
    let seen = recorder(&bus, &unique("BigRecorder"), &prefix).await;
    let append = |stream: String, data: EventData| {
        let store = store.clone();
        async move {
            store
                .append(&stream, ExpectedVersion::NoStream, vec![data])
                .await
                .unwrap()
                .last_position
        }
    };
    let before = append(unique("s"), placed(&format!("{prefix}-before"), 1)).await;
    let stream = unique("huge");
    let huge = append(stream.clone(), big(&prefix, 10_000)).await;
    let after = append(unique("s"), placed(&format!("{prefix}-after"), 1)).await;

    let mut relay = Relay::new(store.clone(), bus.clone())
        .start()
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(20), relay.wait_for(after))
        .await
        .expect("the relay stops on an event the bus refuses for good, it does not retry it")
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, RelayError::Unpublishable { position, stream: s, .. } if *position == huge && *s == stream),
        "{text}"
    );
    for part in [
        huge.to_string(),
        stream.clone(),
        "bus.max_message_bytes".to_owned(),
        format!("orkestra relay skip {huge}"),
    ] {
        assert!(text.contains(&part), "{part:?} in {text}");
    }
    let status = relay.status();
    assert_eq!(status.published, Some(before));
    assert_eq!(status.error.as_deref(), Some(text.as_str()));
    let _ = relay.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = logs.text();
    assert_eq!(
        log.lines().filter(|l| l.contains("ERROR")).count(),
        1,
        "logged once: {log}"
    );
    assert!(!log.contains("retrying"), "not retried: {log}");

    // Only the next event can be skipped.
    let err = Relay::new(store.clone(), bus.clone())
        .skip(after)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RelayError::NotNext { next: Some(n), .. } if n == huge),
        "{err}"
    );
    assert!(err.to_string().contains(&huge.to_string()), "{err}");
    Relay::new(store.clone(), bus.clone())
        .skip(huge)
        .await
        .unwrap();
    assert_eq!(
        Relay::new(store.clone(), bus.clone())
            .checkpoint()
            .await
            .unwrap(),
        Some(huge)
    );
    let log = logs.text();
    assert!(
        log.contains("skipped deliberately") && log.contains(&stream),
        "{log}"
    );
    let mut relay = Relay::new(store.clone(), bus.clone())
        .start()
        .await
        .unwrap();
    relay.wait_for(after).await.unwrap();
    wait_len(&seen, 2).await;
    relay.stop().await.unwrap();
    let orders: Vec<String> = seen.lock().unwrap().iter().map(|s| s.1.clone()).collect();
    assert_eq!(
        orders,
        vec![format!("{prefix}-before"), format!("{prefix}-after")]
    );
}

/// Where the relay publishes to RabbitMQ, an event its message limit would refuse is
/// refused at append, naming the setting; publishing directly, the bus refuses it at
/// publish as before.
#[tokio::test]
async fn an_event_over_the_bus_limit_is_refused_at_append_in_relay_mode() {
    let toml = |publish: &str| {
        format!(
            "[bus]\nadapter = \"rabbitmq\"\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n\
             max_message_bytes = 4096\n[store]\nadapter = \"memory\"\npublish = \"{publish}\"\n"
        )
    };
    let store = Store::from_config(&Config::from_toml_str(&toml("relay")).unwrap())
        .await
        .unwrap();
    let err = store
        .append("big", ExpectedVersion::NoStream, vec![big("b", 10_000)])
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            orkestra_runtime::StoreError::TooLargeForBus { limit: 4096, .. }
        ),
        "{text}"
    );
    assert!(text.contains("bus.max_message_bytes"), "{text}");
    assert_eq!(store.head().await.unwrap(), None, "nothing stored");
    store
        .append("small", ExpectedVersion::NoStream, vec![big("s", 100)])
        .await
        .unwrap();
    let direct = Store::from_config(&Config::from_toml_str(&toml("direct")).unwrap())
        .await
        .unwrap();
    direct
        .append("big", ExpectedVersion::NoStream, vec![big("b", 10_000)])
        .await
        .unwrap();
}

/// The first start after an upgrade begins the relay's lease at the checkpoint it kept
/// before (`orkestra_checkpoints`): nothing published again, nothing skipped; later
/// starts go by the lease's checkpoint, whatever the older row says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_starts_at_the_checkpoint_kept_before() {
    let store = Store::sqlite(
        std::env::temp_dir()
            .join(format!("orkestra-relay-{}", uuid::Uuid::new_v4().simple()))
            .join("events.db"),
    )
    .await
    .unwrap();
    let bus = Bus::in_process();
    let seen = recorder(&bus, "UpgradeRecorder", "up-").await;
    let mut positions = Vec::new();
    for i in 0..6 {
        positions.push(
            store
                .append(
                    &unique("s"),
                    ExpectedVersion::NoStream,
                    vec![placed(&format!("up-{i}"), 1)],
                )
                .await
                .unwrap()
                .last_position,
        );
    }
    // What the relay of the release before leases saved.
    store
        .save_checkpoint(RELAY_CHECKPOINT, Some(positions[2]))
        .await
        .unwrap();
    let relay = Relay::new(store.clone(), bus.clone());
    assert_eq!(relay.checkpoint().await.unwrap(), Some(positions[2]));
    let mut running = relay.clone().start().await.unwrap();
    running.wait_for(positions[5]).await.unwrap();
    wait_len(&seen, 3).await;
    running.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let orders: Vec<String> = seen.lock().unwrap().iter().map(|s| s.1.clone()).collect();
    assert_eq!(orders, ["up-3", "up-4", "up-5"], "only what came after it");
    assert_eq!(relay.checkpoint().await.unwrap(), Some(positions[5]));

    // The older row no longer decides.
    store
        .save_checkpoint(RELAY_CHECKPOINT, Some(positions[0]))
        .await
        .unwrap();
    let mut running = relay.clone().start().await.unwrap();
    let last = store
        .append(
            &unique("s"),
            ExpectedVersion::NoStream,
            vec![placed("up-6", 1)],
        )
        .await
        .unwrap()
        .last_position;
    running.wait_for(last).await.unwrap();
    wait_len(&seen, 4).await;
    running.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(seen.lock().unwrap().len(), 4, "nothing published twice");
}
