//! Operating dead letters on the real broker (`DeadLetterAdmin`, the library behind the
//! `orkestra` command): a message dead-lettered after its retries, replayed, gets its
//! binding's full retries again and succeeds; an event goes back to the handler that gave
//! up on it only; a replay keeps the message id and headers, drops the attempt record,
//! says where it came from and links the original trace; an id that is not there
//! changes nothing; `--all` with a handler takes only that handler's letters; purge; the
//! topology with depths.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use orkestra_runtime::bus::rabbitmq::{AdminError, DeadLetterAdmin, Known, Selection};
use orkestra_runtime::{
    Command, CommandEnvelope, Event, EventEnvelope, HandlerError, Metadata, Payload, Subscription,
};
use serde_json::json;
use support::payloads::{OrderPlaced, PlaceOrder};
use support::services::{amqp_url, rabbit_bus_with, rabbit_config};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);

fn order() -> Command<PlaceOrder> {
    Command::from_json(json!({"product_id": "sku", "quantity": 1}), Metadata::new()).unwrap()
}

fn order_placed() -> Event<OrderPlaced> {
    Event::new(
        OrderPlaced {
            order_id: "o1".into(),
            quantity: 1,
        },
        Metadata::new(),
    )
    .unwrap()
}

async fn channel() -> (Connection, Channel) {
    let connection = Connection::connect(amqp_url().expose(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (connection, channel)
}

/// The depth of a queue (passive declare).
async fn depth(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count()
}

/// Waits until the dead-letter queue holds `n` letters.
async fn letters(admin: &DeadLetterAdmin, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let listed = admin.list(None, None).await.unwrap();
        if listed.len() >= n {
            return listed.into_iter().map(|l| l.id).collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited for {n} dead letters, have {}",
            listed.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes a dead letter as the bus's consumer writes it, straight to the
/// dead-letter exchange.
async fn plant(
    channel: &Channel,
    prefix: &str,
    id: &str,
    handler: &str,
    extra: &[(&str, &str)],
    max_retries: Option<i64>,
) {
    let mut headers = FieldTable::default();
    let mut put = |k: &str, v: &str| {
        headers.insert(k.into(), AMQPValue::LongString(v.into()));
    };
    put(
        "x-orkestra-original-exchange",
        &format!("{prefix}.commands"),
    );
    put("x-orkestra-original-routing-key", PlaceOrder::TOPIC);
    put("x-orkestra-handler", handler);
    put("x-orkestra-error", "boom");
    for (k, v) in extra {
        put(k, v);
    }
    headers.insert("x-orkestra-attempts".into(), AMQPValue::LongLongInt(4));
    if let Some(max) = max_retries {
        headers.insert("x-max-retries".into(), AMQPValue::LongLongInt(max));
    }
    let body = json!({
        "kind": "command", "id": id, "type": PlaceOrder::TYPE_NAME,
        "topic": PlaceOrder::TOPIC, "version": 1,
        "payload": {"product_id": "sku", "quantity": 1},
        "metadata": Metadata::new(),
    });
    channel
        .basic_publish(
            format!("{prefix}.deadletter").as_str().into(),
            PlaceOrder::TOPIC.into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(&body).unwrap(),
            BasicProperties::default()
                .with_message_id(id.into())
                .with_delivery_mode(2)
                .with_timestamp(1_700_000_000)
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn delete_queues(channel: &Channel, queues: &[String]) {
    for queue in queues {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_command_gets_its_full_retries_again_and_succeeds() {
    let config = rabbit_config();
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    let healed = Arc::new(AtomicBool::new(false));
    let (tx, mut runs) = mpsc::unbounded_channel();
    let flag = healed.clone();
    bus.subscribe(
        Subscription::command("Flaky", move |_: Command<PlaceOrder>, ctx| {
            let (tx, healed) = (tx.clone(), flag.load(Ordering::SeqCst));
            async move {
                tx.send((healed, ctx.attempt())).unwrap();
                // Before the fix: always fails. After: fails once more, then succeeds,
                // which needs the retry the replay must give back.
                if healed && ctx.attempt() >= 2 {
                    Ok(serde_json::Value::Null)
                } else {
                    Err(HandlerError::fail("database down"))
                }
            }
        })
        .with_max_retries(1),
    )
    .await
    .unwrap();
    let admin = DeadLetterAdmin::connect(&config.bus).await.unwrap();
    let cmd = order();
    let id = cmd.id.clone();
    bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    assert_eq!(letters(&admin, 1).await, vec![id.clone()]);
    let listed = admin.list(None, None).await.unwrap();
    let letter = &listed[0];
    assert_eq!(
        (
            letter.topic.as_str(),
            letter.handler.as_str(),
            letter.attempts,
            letter.reason.as_str()
        ),
        (PlaceOrder::TOPIC, "Flaky", 2, "database down")
    );
    assert!(letter.dead_at.is_some(), "dead letters carry their time");
    let mut seen = Vec::new();
    while let Ok(Some(run)) = tokio::time::timeout(Duration::from_millis(300), runs.recv()).await {
        seen.push(run);
    }
    assert_eq!(seen, vec![(false, 1), (false, 2)]);

    healed.store(true, Ordering::SeqCst);
    let mut progress = Vec::new();
    let done = admin
        .replay(&Selection::ids([id.clone()]), &mut |p| progress.push(p))
        .await
        .unwrap();
    assert_eq!(done.done, vec![id.clone()]);
    assert!(done.failed.is_empty());
    assert_eq!(progress.last().map(|p| (p.seen, p.done)), Some((1, 1)));
    let mut after = Vec::new();
    for _ in 0..2 {
        after.push(
            tokio::time::timeout(WAIT, runs.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(
        after,
        vec![(true, 1), (true, 2)],
        "the replay starts again at attempt 1 and gets the binding's retry"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        admin.list(None, None).await.unwrap().is_empty(),
        "the replayed letter left the queue and did not come back"
    );
    admin.close().await;
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
    let (_c, ch) = channel().await;
    let p = &config.bus.prefix;
    delete_queues(
        &ch,
        &[
            format!("{p}.deadletter.all"),
            format!("{p}.cmd.{}", PlaceOrder::TOPIC),
            format!("{p}.cmd.{}.wait.100ms", PlaceOrder::TOPIC),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_goes_back_only_to_the_handler_that_gave_up_with_its_id_and_a_fresh_count() {
    let config = rabbit_config();
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    let p = config.bus.prefix.clone();
    bus.subscribe(
        Subscription::events("Indexer", |_: Event<OrderPlaced>, _| async {
            Err(HandlerError::fail("bad shape"))
        })
        .with_max_retries(0),
    )
    .await
    .unwrap();
    bus.subscribe(Subscription::events(
        "Mailer",
        |_: Event<OrderPlaced>, _| async { Ok(()) },
    ))
    .await
    .unwrap();
    let admin = DeadLetterAdmin::connect(&config.bus).await.unwrap();
    let event = order_placed();
    let id = event.id.clone();
    bus.publish(EventEnvelope::wrap(event)).await.unwrap();
    assert_eq!(letters(&admin, 1).await, vec![id.clone()]);
    // No consumer from here on: the replay stays in the queue it went to.
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
    drop(bus);

    let done = admin
        .replay(&Selection::all().with_handler("Indexer"), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(done.done, vec![id.clone()]);
    let (_c, ch) = channel().await;
    let indexer = format!("{p}.evt.Indexer");
    let mailer = format!("{p}.evt.Mailer");
    assert_eq!(depth(&ch, &mailer).await, 0, "Mailer handled it already");
    let got = ch
        .basic_get(indexer.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the replay is in the Indexer's queue");
    let props = &got.delivery.properties;
    assert_eq!(
        props.message_id().as_ref().map(|i| i.as_str()),
        Some(id.as_str())
    );
    let headers = props.headers().clone().unwrap_or_default();
    let h = headers.inner();
    assert_eq!(
        h.get("x-orkestra-replayed-from"),
        Some(&AMQPValue::LongString(format!("{p}.deadletter.all").into()))
    );
    for gone in ["x-death", "x-orkestra-attempts", "x-orkestra-error"] {
        assert!(!h.contains_key(gone), "{gone} is dropped");
    }
    assert_eq!(
        h.get("x-orkestra-original-exchange"),
        Some(&AMQPValue::LongString(format!("{p}.events").into())),
        "the original exchange travels on (a second dead letter names it)"
    );
    assert!(admin.list(None, None).await.unwrap().is_empty());
    admin.close().await;
    delete_queues(
        &ch,
        &[
            format!("{p}.deadletter.all"),
            indexer.clone(),
            mailer.clone(),
            format!("{indexer}.wait.100ms"),
            format!("{mailer}.wait.100ms"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_links_the_original_trace_and_keeps_the_producers_limit() {
    let config = rabbit_config();
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    let p = config.bus.prefix.clone();
    // The command queue exists (a handler subscribed once), and nothing consumes it.
    bus.subscribe(Subscription::command(
        "Orders",
        |_: Command<PlaceOrder>, _| async { Ok(serde_json::Value::Null) },
    ))
    .await
    .unwrap();
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
    drop(bus);
    let (_c, ch) = channel().await;
    let original = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    plant(
        &ch,
        &p,
        "cmd-1",
        "Orders",
        &[("traceparent", original), ("tracestate", "k=v")],
        Some(7),
    )
    .await;
    let admin = DeadLetterAdmin::connect(&config.bus).await.unwrap();
    assert_eq!(letters(&admin, 1).await, vec!["cmd-1".to_owned()]);
    let done = admin
        .replay(&Selection::ids(["cmd-1"]), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(done.done, vec!["cmd-1".to_owned()]);
    let queue = format!("{p}.cmd.{}", PlaceOrder::TOPIC);
    let got = ch
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the replay is in the command queue");
    let headers = got
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    let h = headers.inner();
    assert!(
        !h.contains_key("traceparent"),
        "a replay starts a new trace"
    );
    assert_eq!(
        h.get("x-orkestra-replay-of-traceparent"),
        Some(&AMQPValue::LongString(original.into()))
    );
    assert_eq!(
        h.get("x-orkestra-replay-of-tracestate"),
        Some(&AMQPValue::LongString("k=v".into()))
    );
    assert_eq!(
        h.get("x-max-retries"),
        Some(&AMQPValue::LongLongInt(7)),
        "the producer's own limit is kept"
    );
    admin.close().await;
    delete_queues(
        &ch,
        &[
            format!("{p}.deadletter.all"),
            queue.clone(),
            format!("{queue}.wait.100ms"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_id_changes_nothing_and_all_with_a_handler_takes_only_its_letters() {
    let config = rabbit_config();
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    let p = config.bus.prefix.clone();
    bus.subscribe(Subscription::command(
        "Orders",
        |_: Command<PlaceOrder>, _| async { Ok(serde_json::Value::Null) },
    ))
    .await
    .unwrap();
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
    drop(bus);
    let (_c, ch) = channel().await;
    for (id, handler) in [("a1", "A"), ("b1", "B"), ("a2", "A"), ("b2", "B")] {
        plant(&ch, &p, id, handler, &[], None).await;
    }
    let admin = DeadLetterAdmin::connect(&config.bus).await.unwrap();
    let order = letters(&admin, 4).await;
    assert_eq!(order, ["a1", "b1", "a2", "b2"]);

    for result in [
        admin
            .replay(&Selection::ids(["a1", "nope"]), &mut |_| {})
            .await,
        admin
            .purge(&Selection::ids(["nope", "b2"]), &mut |_| {})
            .await,
    ] {
        match result {
            Err(AdminError::NotFound { ids, queue, .. }) => {
                assert_eq!(ids, ["nope"]);
                assert_eq!(queue, format!("{p}.deadletter.all"));
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
        assert_eq!(
            letters(&admin, 4).await,
            order,
            "nothing touched, the order kept"
        );
    }
    let error = admin
        .replay(&Selection::ids(["a1"]).with_handler("B"), &mut |_| {})
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "no dead letter with id \"a1\" of handler \"B\" in \"{p}.deadletter.all\"; nothing was changed"
        )
    );
    assert_eq!(letters(&admin, 4).await, order);
    let queue = format!("{p}.cmd.{}", PlaceOrder::TOPIC);
    assert_eq!(depth(&ch, &queue).await, 0, "nothing was replayed");

    let purged = admin
        .purge(&Selection::all().with_handler("A"), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(purged.done, ["a1", "a2"]);
    assert_eq!(purged.kept, 2);
    assert_eq!(letters(&admin, 2).await, ["b1", "b2"]);
    let only = admin.list(Some("B"), Some(1)).await.unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].id, "b1");

    let replayed = admin
        .replay(&Selection::all().with_handler("B"), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(replayed.done, ["b1", "b2"]);
    assert_eq!(depth(&ch, &queue).await, 2);
    assert!(admin.list(None, None).await.unwrap().is_empty());

    let report = admin
        .topology(&Known {
            handlers: vec![],
            command_topics: vec![PlaceOrder::TOPIC.to_owned()],
            ..Known::default()
        })
        .await
        .unwrap();
    assert!(report.exchanges.iter().all(|e| e.exists), "{report:?}");
    let depths: Vec<(String, Option<u32>)> = report
        .queues
        .iter()
        .map(|q| (q.name.clone(), q.messages))
        .collect();
    assert_eq!(
        depths,
        [
            (format!("{p}.deadletter.all"), Some(0)),
            (queue.clone(), Some(2)),
            (format!("{queue}.wait.100ms"), Some(0)),
        ]
    );
    admin.close().await;
    delete_queues(
        &ch,
        &[
            format!("{p}.deadletter.all"),
            queue.clone(),
            format!("{queue}.wait.100ms"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_no_bus_used_is_named_in_the_error() {
    let mut config = rabbit_config();
    config.bus.prefix = format!("orkestra-test-absent-{}", uuid::Uuid::new_v4().simple());
    let admin = match DeadLetterAdmin::connect(&config.bus).await {
        Ok(admin) => admin,
        Err(e) => {
            support::services::unavailable("RabbitMQ", &e);
            return;
        }
    };
    let error = admin.list(None, None).await.unwrap_err();
    assert!(matches!(error, AdminError::NoQueue { .. }), "{error:?}");
    assert!(error.to_string().contains(&config.bus.prefix));
    admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_hide_the_password() {
    let mut config = rabbit_config();
    config.bus.url = Some(orkestra_runtime::SecretUrl::new(
        "amqp://guest:hunter2@127.0.0.1:1/%2f",
    ));
    let error = DeadLetterAdmin::connect(&config.bus).await.unwrap_err();
    let text = format!("{error} {error:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("guest:***@127.0.0.1:1"), "{text}");
}
