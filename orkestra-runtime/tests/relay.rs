//! The relay (transactional outbox): with `store.publish = "relay"` appends publish
//! nothing, and the relay publishes every stored event in global order from its
//! checkpoint, with the event id as message id; an event whose topic is unknown stops it;
//! a checkpoint ahead of the head is refused. On the in-process bus and RabbitMQ.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use orkestra_runtime::relay::{Relay, RelayError};
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
        store.load_checkpoint("orkestra.relay").await.unwrap(),
        Some(head)
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
        store.load_checkpoint("orkestra.relay").await.unwrap(),
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
    let err = Relay::new(store, Bus::in_process())
        .start()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RelayError::AheadOfStore { .. }), "{text}");
    assert!(text.contains("99") && text.contains("position 0"), "{text}");
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
