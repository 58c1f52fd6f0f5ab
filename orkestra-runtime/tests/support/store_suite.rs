//! The event-store conformance suite: one body per behaviour, run against every adapter
//! by `store_suite!(async_expr_making_an_optional_store)`. Stream names are unique per run,
//! so the suite also runs against a database that keeps data between runs.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use orkestra_runtime::{
    AppendCondition, Event, EventData, ExpectedVersion, Metadata, PayloadError, Query, QueryItem,
    RecordedEvent, Store, StoreError, Tag,
};
use serde_json::json;

use super::payloads::*;

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub fn placed(order: &str, quantity: i64) -> EventData {
    let ev = Event::new(
        OrderPlaced {
            order_id: order.into(),
            quantity,
        },
        Metadata::new().with_source("suite"),
    )
    .unwrap();
    EventData::from_event(&ev).unwrap()
}

/// The position right after everything stored so far (appends a marker event).
async fn head(store: &Store) -> u64 {
    let marker = store
        .append(
            &unique("marker"),
            ExpectedVersion::NoStream,
            vec![placed("marker", 1)],
        )
        .await
        .unwrap();
    marker.last_position + 1
}

/// Waits until readers of the global order see `position`. On PostgreSQL a commit joins
/// the global order once every older transaction has ended, and tests that share the
/// database keep some open (one holds a transaction for most of a second on purpose).
async fn visible(store: &Store, position: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while store
        .head()
        .await
        .unwrap()
        .is_none_or(|head| head < position)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "position {position} never joined the global order"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn next_event(sub: &mut orkestra_runtime::AllSubscription) -> RecordedEvent {
    tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("subscription stalled")
        .expect("subscription ended")
        .expect("subscription failed")
}

pub async fn append_then_read_back(store: Store) {
    let stream = unique("account");
    let events = vec![placed("o1", 1), placed("o2", 2), placed("o3", 3)];
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let result = store
        .append(&stream, ExpectedVersion::NoStream, events.clone())
        .await
        .unwrap();
    assert_eq!(result.last_version, 2);
    assert!(result.written);

    let read = store.read_stream(&stream, 0, 100).await.unwrap();
    assert_eq!(
        read.iter().map(|e| e.version()).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(
        read.iter().map(|e| e.id().to_owned()).collect::<Vec<_>>(),
        ids
    );
    assert!(
        read.windows(2).all(|w| w[0].position() < w[1].position()),
        "positions increase"
    );
    assert_eq!(read[2].position(), result.last_position);
    assert!(
        read.iter()
            .all(|e| e.stream() == stream && e.event_type() == "Test.Orders.OrderPlaced")
    );

    let typed: Event<OrderPlaced> = read[1].decode().unwrap();
    assert_eq!(
        typed.data,
        OrderPlaced {
            order_id: "o2".into(),
            quantity: 2
        }
    );
    assert_eq!(typed.id, ids[1]);
    assert_eq!(typed.metadata, events[1].metadata, "metadata preserved");

    let partial = store.read_stream(&stream, 1, 1).await.unwrap();
    assert_eq!(partial.len(), 1);
    assert_eq!(partial[0].version(), 1);
    assert!(
        store
            .read_stream(&unique("missing"), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );

    visible(&store, result.last_position).await;
    let all = store.read_all(read[0].position(), 10_000).await.unwrap();
    let mine: Vec<_> = all
        .iter()
        .filter(|e| e.stream() == stream)
        .map(|e| e.id().to_owned())
        .collect();
    assert_eq!(
        mine, ids,
        "read_all returns them in order, from a position inclusive"
    );

    let more = store
        .append(&stream, ExpectedVersion::Exact(2), vec![placed("o4", 4)])
        .await
        .unwrap();
    assert_eq!(more.last_version, 3);
    let any = store
        .append(&stream, ExpectedVersion::Any, vec![placed("o5", 5)])
        .await
        .unwrap();
    assert_eq!(any.last_version, 4);
    let exists = store
        .append(
            &stream,
            ExpectedVersion::StreamExists,
            vec![placed("o6", 6)],
        )
        .await
        .unwrap();
    assert_eq!(exists.last_version, 5);
}

pub async fn stale_expectations_write_nothing(store: Store) {
    let stream = unique("stale");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![placed("a", 1), placed("b", 1)],
        )
        .await
        .unwrap();
    let cases = [
        (ExpectedVersion::NoStream, Some(1)),
        (ExpectedVersion::Exact(0), Some(1)),
        (ExpectedVersion::Exact(7), Some(1)),
    ];
    for (expected, actual) in cases {
        let err = store
            .append(&stream, expected, vec![placed("c", 1)])
            .await
            .unwrap_err();
        match err {
            StoreError::WrongExpectedVersion {
                stream: s,
                expected: e,
                actual: a,
            } => {
                assert_eq!((s.as_str(), e, a), (stream.as_str(), expected, actual));
            }
            other => panic!("{expected:?}: {other:?}"),
        }
    }
    let missing = unique("missing");
    let err = store
        .append(
            &missing,
            ExpectedVersion::StreamExists,
            vec![placed("d", 1)],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { actual: None, .. }),
        "{err:?}"
    );
    let err = store
        .append(&missing, ExpectedVersion::Exact(0), vec![placed("e", 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { actual: None, .. }),
        "{err:?}"
    );
    assert_eq!(
        store.read_stream(&stream, 0, 10).await.unwrap().len(),
        2,
        "nothing written"
    );
    assert!(store.read_stream(&missing, 0, 10).await.unwrap().is_empty());
}

pub async fn reappending_the_same_ids_is_idempotent(store: Store) {
    let stream = unique("idem");
    let batch = vec![placed("a", 1), placed("b", 2)];
    let first = store
        .append(&stream, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    let again = store
        .append(&stream, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    assert!(!again.written);
    assert_eq!(
        (again.last_version, again.last_position),
        (first.last_version, first.last_position)
    );
    let any = store
        .append(&stream, ExpectedVersion::Any, batch.clone())
        .await
        .unwrap();
    assert!(!any.written);
    assert_eq!(
        store.read_stream(&stream, 0, 10).await.unwrap().len(),
        2,
        "no duplicates"
    );

    // The same id elsewhere is not a repeat: it is refused.
    let err = store
        .append(
            &unique("other"),
            ExpectedVersion::Any,
            vec![batch[0].clone()],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::DuplicateEvent { .. }), "{err:?}");
}

pub async fn racing_writers_one_wins(store: Store) {
    let stream = unique("race");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![placed("seed", 1)])
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        let stream = stream.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append(
                    &stream,
                    ExpectedVersion::Exact(0),
                    vec![placed(&format!("w{i}"), i)],
                )
                .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                assert_eq!(r.last_version, 1);
                wins += 1;
            }
            Err(StoreError::WrongExpectedVersion {
                actual: Some(1), ..
            }) => {}
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!(wins, 1, "exactly one writer wins");
    assert_eq!(store.read_stream(&stream, 0, 10).await.unwrap().len(), 2);
}

pub async fn live_subscriber_sees_concurrent_writes_once_in_order(store: Store) {
    let from = head(&store).await;
    let mut sub = store.subscribe_all(from).await.unwrap();
    let prefix = unique("writer");
    let mut writers = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        let stream = format!("{prefix}-{w}");
        writers.push(tokio::spawn(async move {
            for i in 0..50u64 {
                let expected = if i == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(i - 1)
                };
                store
                    .append(
                        &stream,
                        expected,
                        vec![placed(&format!("{w}-{i}"), i as i64)],
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    let mut seen = HashSet::new();
    let mut last_position = None;
    let mut per_stream = std::collections::HashMap::<String, u64>::new();
    while seen.len() < 200 {
        let e = next_event(&mut sub).await;
        if let Some(last) = last_position {
            assert!(
                e.position() > last,
                "positions strictly increase: {} after {last}",
                e.position()
            );
        }
        last_position = Some(e.position());
        if !e.stream().starts_with(&prefix) {
            continue; // another test's events
        }
        assert!(
            seen.insert(e.id().to_owned()),
            "event {} delivered twice",
            e.id()
        );
        let expected_version = per_stream.entry(e.stream().to_owned()).or_insert(0);
        assert_eq!(e.version(), *expected_version, "stream order kept");
        *expected_version += 1;
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(seen.len(), 200);
}

pub async fn resume_from_a_saved_position(store: Store) {
    let from = head(&store).await;
    let stream = unique("resume");
    let events: Vec<EventData> = (0..20).map(|i| placed(&format!("r{i}"), i)).collect();
    store
        .append(&stream, ExpectedVersion::NoStream, events)
        .await
        .unwrap();

    let mut sub = store.subscribe_all(from).await.unwrap();
    let mut first_half = Vec::new();
    while first_half.len() < 10 {
        let e = next_event(&mut sub).await;
        if e.stream() == stream {
            first_half.push(e);
        }
    }
    let saved = first_half.last().unwrap().position();
    drop(sub);

    store
        .append(&stream, ExpectedVersion::Exact(19), vec![placed("late", 1)])
        .await
        .unwrap();
    let mut resumed = store.subscribe_all(saved + 1).await.unwrap();
    let mut second_half = Vec::new();
    while second_half.len() < 11 {
        let e = next_event(&mut resumed).await;
        if e.stream() == stream {
            second_half.push(e);
        }
    }
    let versions: Vec<u64> = first_half
        .iter()
        .chain(&second_half)
        .map(|e| e.version())
        .collect();
    assert_eq!(
        versions,
        (0..21).collect::<Vec<_>>(),
        "no gap, no repeat across the resume"
    );
}

pub async fn read_backwards(store: Store) {
    let stream = unique("back");
    let events: Vec<EventData> = (0..5).map(|i| placed(&format!("b{i}"), i)).collect();
    store
        .append(&stream, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    let newest = store
        .read_stream_backwards(&stream, u64::MAX, 2)
        .await
        .unwrap();
    assert_eq!(
        newest.iter().map(|e| e.version()).collect::<Vec<_>>(),
        vec![4, 3]
    );
    let from_two = store.read_stream_backwards(&stream, 2, 10).await.unwrap();
    assert_eq!(
        from_two.iter().map(|e| e.version()).collect::<Vec<_>>(),
        vec![2, 1, 0]
    );
}

pub async fn decoding_checks_the_type(store: Store) {
    let stream = unique("decode");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![placed("x", 1)])
        .await
        .unwrap();
    let rec = &store.read_stream(&stream, 0, 1).await.unwrap()[0];
    match rec.decode::<OrderCancelled>() {
        Err(StoreError::Decode {
            source: PayloadError::WrongType { expected, found },
            ..
        }) => {
            assert_eq!(expected, "Test.Orders.OrderCancelled");
            assert_eq!(found, "Test.Orders.OrderPlaced");
        }
        other => panic!("{other:?}"),
    }
    // Data that no longer fits the schema is a decode error, not a panic.
    let raw = EventData {
        id: uuid::Uuid::new_v4().to_string(),
        event_type: "Test.Orders.OrderPlaced".into(),
        schema_version: 1,
        data: json!({"order_id": 5}),
        metadata: Metadata::new(),
        // A topic no projection or subscriber of a shared database listens to.
        topic: Some("test.decode.unreadable".into()),
        tags: Vec::new(),
    };
    store
        .append(&stream, ExpectedVersion::Exact(0), vec![raw])
        .await
        .unwrap();
    let rec = &store.read_stream(&stream, 1, 1).await.unwrap()[0];
    assert!(matches!(
        rec.decode::<OrderPlaced>(),
        Err(StoreError::Decode { .. })
    ));
}

pub async fn bad_appends_are_refused(store: Store) {
    let stream = unique("bad");
    let mut big = placed("big", 1);
    big.data = json!({"order_id": "x".repeat(64 * 1024), "quantity": 1});
    let small_store = store.clone().with_max_event_bytes(16 * 1024);
    let err = small_store
        .append(&stream, ExpectedVersion::Any, vec![placed("ok", 1), big])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::TooLarge { limit: 16384, .. }),
        "{err:?}"
    );
    assert!(
        store.read_stream(&stream, 0, 10).await.unwrap().is_empty(),
        "nothing half-written"
    );
    assert!(matches!(
        store
            .append("", ExpectedVersion::Any, vec![placed("a", 1)])
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.append(&stream, ExpectedVersion::Any, vec![]).await,
        Err(StoreError::Invalid(_))
    ));
}

/// Versions and counts at the edge of `u64` are errors or empty answers, never a panic
/// or a wrapped number.
pub async fn extreme_versions_and_counts_are_values(store: Store) {
    let stream = unique("edge");
    let first = placed("o1", 1);
    store
        .append(&stream, ExpectedVersion::NoStream, vec![first.clone()])
        .await
        .unwrap();
    // A stale Exact far beyond the stream: refused, nothing written.
    let err = store
        .append(
            &stream,
            ExpectedVersion::Exact(u64::MAX),
            vec![placed("o2", 2)],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::WrongExpectedVersion { .. } | StoreError::Invalid(_)
        ),
        "{err:?}"
    );
    // The same id again with an Exact that leaves no room for a next version.
    let err = store
        .append(&stream, ExpectedVersion::Exact(u64::MAX), vec![first])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::WrongExpectedVersion { .. }
                | StoreError::Invalid(_)
                | StoreError::DuplicateEvent { .. }
        ),
        "{err:?}"
    );
    assert_eq!(store.read_stream(&stream, 0, 10).await.unwrap().len(), 1);
    // max = 0 reads nothing, whatever is stored.
    assert!(store.read_stream(&stream, 0, 0).await.unwrap().is_empty());
    assert!(
        store
            .read_stream_backwards(&stream, u64::MAX, 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.read_all(0, 0).await.unwrap().is_empty());
    // Reads from beyond any stored version or position are empty.
    assert!(
        store
            .read_stream(&stream, u64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.read_all(u64::MAX, 10).await.unwrap().is_empty());
}

/// One snapshot per stream: the newest version of a shape is kept, an older one is
/// ignored, another shape replaces it (the release saving now is the one reading next).
pub async fn snapshots_keep_the_newest_per_stream(store: Store) {
    use orkestra_runtime::Snapshot;
    let stream = unique("snap");
    let snapshot = |version, shape: &str| Snapshot {
        stream: stream.clone(),
        version,
        shape: shape.into(),
        state: format!("{{\"v\":{version}}}"),
    };
    assert_eq!(store.load_snapshot(&stream).await.unwrap(), None);
    store.save_snapshot(snapshot(10, "a")).await.unwrap();
    store.save_snapshot(snapshot(5, "a")).await.unwrap();
    assert_eq!(
        store.load_snapshot(&stream).await.unwrap(),
        Some(snapshot(10, "a"))
    );
    store.save_snapshot(snapshot(20, "a")).await.unwrap();
    assert_eq!(
        store.load_snapshot(&stream).await.unwrap(),
        Some(snapshot(20, "a"))
    );
    store.save_snapshot(snapshot(3, "b")).await.unwrap();
    assert_eq!(
        store.load_snapshot(&stream).await.unwrap(),
        Some(snapshot(3, "b"))
    );
    let other = unique("snap");
    assert_eq!(
        store.load_snapshot(&other).await.unwrap(),
        None,
        "one per stream"
    );
    assert!(matches!(
        store
            .save_snapshot(Snapshot {
                stream: String::new(),
                ..snapshot(1, "a")
            })
            .await,
        Err(StoreError::Invalid(_))
    ));
    // Snapshots are not events: the stream and the global order do not see them.
    assert!(store.read_stream(&stream, 0, 10).await.unwrap().is_empty());
}

pub async fn head_is_the_last_position(store: Store) {
    let before = store.head().await.unwrap();
    let stream = unique("head");
    let appended = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![placed("h1", 1), placed("h2", 2)],
        )
        .await
        .unwrap();
    // Other tests may share the database: the head reaches this append (once older
    // transactions end), and is exactly the last position a reader sees.
    visible(&store, appended.last_position).await;
    let head = store.head().await.unwrap().expect("a head after an append");
    assert!(head >= appended.last_position, "{head} < {appended:?}");
    assert!(before.is_none_or(|b| b < head));
    let tail = store.read_all(head, 10).await.unwrap();
    assert_eq!(tail.first().map(|e| e.position()), Some(head));
}

pub async fn checkpoints_are_saved_replaced_and_cleared(store: Store) {
    let name = unique("checkpoint");
    assert_eq!(store.load_checkpoint(&name).await.unwrap(), None);
    store.save_checkpoint(&name, Some(7)).await.unwrap();
    assert_eq!(store.load_checkpoint(&name).await.unwrap(), Some(7));
    store.save_checkpoint(&name, Some(42)).await.unwrap();
    assert_eq!(store.load_checkpoint(&name).await.unwrap(), Some(42));
    // Going back is allowed: a rebuild starts over.
    store.save_checkpoint(&name, Some(3)).await.unwrap();
    assert_eq!(store.load_checkpoint(&name).await.unwrap(), Some(3));
    store.save_checkpoint(&name, None).await.unwrap();
    assert_eq!(store.load_checkpoint(&name).await.unwrap(), None);
    // Names are independent.
    let other = unique("checkpoint");
    store.save_checkpoint(&other, Some(1)).await.unwrap();
    assert_eq!(store.load_checkpoint(&name).await.unwrap(), None);
    assert_eq!(store.load_checkpoint(&other).await.unwrap(), Some(1));
    // Edges: a name with any character, the largest SQL-representable position.
    let odd = format!("{name}/ünïcode \"quoted\"");
    store
        .save_checkpoint(&odd, Some(i64::MAX as u64))
        .await
        .unwrap();
    assert_eq!(
        store.load_checkpoint(&odd).await.unwrap(),
        Some(i64::MAX as u64)
    );
    assert!(matches!(
        store.save_checkpoint("", Some(1)).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.load_checkpoint("").await,
        Err(StoreError::Invalid(_))
    ));
}

pub async fn topics_are_recorded(store: Store) {
    let stream = unique("topics");
    let mut bare = placed("t2", 2);
    bare.topic = None;
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![placed("t1", 1), bare],
        )
        .await
        .unwrap();
    let events = store.read_stream(&stream, 0, 10).await.unwrap();
    assert_eq!(events[0].topic(), Some("orders.events.order_placed"));
    assert_eq!(events[1].topic(), None);
    visible(&store, events[1].position()).await;
    let all = store.read_all(events[0].position(), 2).await.unwrap();
    assert_eq!(all[0].topic(), Some("orders.events.order_placed"));
}

/// Snapshots and checkpoints never show up in the global order or move the head (on
/// EventStoreDB they are streams of their own, filtered out).
pub async fn snapshots_and_checkpoints_stay_out_of_the_global_order(store: Store) {
    let stream = unique("kept-apart");
    let first = store
        .append(&stream, ExpectedVersion::NoStream, vec![placed("k", 1)])
        .await
        .unwrap();
    store
        .save_snapshot(orkestra_runtime::Snapshot {
            stream: stream.clone(),
            version: 0,
            shape: "s".into(),
            state: "{}".into(),
        })
        .await
        .unwrap();
    let checkpoint = unique("kept-apart-checkpoint");
    store
        .save_checkpoint(&checkpoint, Some(first.last_position))
        .await
        .unwrap();
    let last = store
        .append(&stream, ExpectedVersion::Exact(0), vec![placed("k", 2)])
        .await
        .unwrap();
    visible(&store, last.last_position).await;
    let ours: Vec<RecordedEvent> = store
        .read_all(first.last_position, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.position() <= last.last_position)
        .collect();
    let of_stream: Vec<u64> = ours
        .iter()
        .filter(|e| e.stream() == stream)
        .map(|e| e.version())
        .collect();
    assert_eq!(of_stream, [0, 1]);
    let kinds: Vec<&str> = ours.iter().map(|e| e.event_type()).collect();
    assert!(
        !kinds.contains(&"orkestra.snapshot") && !kinds.contains(&"orkestra.checkpoint"),
        "{kinds:?}"
    );
    assert_eq!(
        store.load_checkpoint(&checkpoint).await.unwrap(),
        Some(first.last_position)
    );
    assert_eq!(
        store
            .load_snapshot(&stream)
            .await
            .unwrap()
            .map(|s| s.version),
        Some(0)
    );
}

pub async fn events_are_found_by_id_in_their_stream(store: Store) {
    let stream = unique("by-id");
    let events: Vec<EventData> = (0..3).map(|i| placed("o", i + 1)).collect();
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    store
        .append(&stream, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    for (version, id) in ids.iter().enumerate() {
        assert_eq!(
            store.version_of(&stream, id).await.unwrap(),
            Some(version as u64)
        );
    }
    assert_eq!(store.version_of(&stream, "no-such-id").await.unwrap(), None);
    // Only in the stream asked about.
    assert_eq!(
        store.version_of(&unique("other"), &ids[0]).await.unwrap(),
        None
    );
}

/// The store's leases, or `None` on an adapter that keeps none (EventStoreDB, whose
/// refusal must say so).
async fn leases_of(store: &Store) -> Option<orkestra_runtime::store::Leases> {
    match store.leases().await {
        Ok(leases) => Some(leases),
        Err(e) if store.adapter() == "eventstoredb" => {
            assert!(e.to_string().contains("keeps no leases"), "{e}");
            None
        }
        Err(e) => panic!("{}: {e}", store.adapter()),
    }
}

const LONG: Duration = Duration::from_secs(30);

pub async fn leases_are_exclusive_and_fenced(store: Store) {
    let Some(leases) = leases_of(&store).await else {
        return;
    };
    let worker = unique("Tally");
    leases.register(&worker, 2).await.unwrap();
    let a = leases
        .acquire(&worker, 0, "a", LONG)
        .await
        .unwrap()
        .unwrap();
    assert!(
        leases
            .acquire(&worker, 0, "b", LONG)
            .await
            .unwrap()
            .is_none(),
        "a live lease is not taken"
    );
    let again = leases
        .acquire(&worker, 0, "a", LONG)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.token, a.token, "the holder extends its own lease");
    leases.save_checkpoint(&a, Some(5)).await.unwrap();
    assert_eq!(leases.checkpoint(&worker, 0).await.unwrap(), Some(5));

    assert!(leases.release(&a).await.unwrap());
    let b = leases
        .acquire(&worker, 0, "b", LONG)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.token, a.token + 1, "a new holding, a new token");
    match leases.save_checkpoint(&a, Some(9)).await {
        Err(StoreError::Fenced {
            worker: w,
            partition: 0,
            token,
        }) if w == worker && token == a.token => {}
        other => panic!("a stale token must be refused: {other:?}"),
    }
    assert_eq!(
        leases.checkpoint(&worker, 0).await.unwrap(),
        Some(5),
        "nothing written"
    );
    assert!(leases.renew(&a, LONG).await.unwrap().is_none());
    assert!(!leases.release(&a).await.unwrap());
    leases.save_checkpoint(&b, Some(7)).await.unwrap();

    let mine: Vec<_> = leases
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.worker == worker)
        .collect();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert_eq!(mine[0].partition, 0);
    assert_eq!(mine[0].owner.as_deref(), Some("b"));
    assert_eq!(mine[0].token, b.token);
    assert_eq!(mine[0].checkpoint, Some(7));
    assert_eq!(mine[0].partitions, Some(2));
    assert!(mine[0].expires_at.is_some());
    assert_eq!((mine[1].partition, mine[1].owner.as_ref()), (1, None));
}

pub async fn an_expired_lease_is_taken_with_a_new_token(store: Store) {
    let Some(leases) = leases_of(&store).await else {
        return;
    };
    let worker = unique("Relay");
    let short = Duration::from_millis(300);
    let a = leases
        .acquire(&worker, 0, "a", short)
        .await
        .unwrap()
        .unwrap();
    assert!(
        leases.renew(&a, short).await.unwrap().is_some(),
        "live: renewed"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        leases.renew(&a, short).await.unwrap().is_none(),
        "an expired lease is not renewed: its holder stops"
    );
    let b = leases
        .acquire(&worker, 0, "b", LONG)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.token, a.token + 1);
    assert!(matches!(
        leases.save_checkpoint(&a, Some(1)).await,
        Err(StoreError::Fenced { .. })
    ));
    // The same owner coming back after its lease ran out holds it anew: a new token, so
    // whatever it still had in hand from before is fenced too.
    let c = leases
        .acquire(&worker, 1, "c", short)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;
    let c2 = leases
        .acquire(&worker, 1, "c", short)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c2.token, c.token + 1);
}

pub async fn racing_copies_take_a_partition_once(store: Store) {
    let Some(leases) = leases_of(&store).await else {
        return;
    };
    let worker = unique("Race");
    leases.register(&worker, 1).await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (leases, worker) = (leases.clone(), worker.clone());
            tokio::spawn(async move {
                leases
                    .acquire(&worker, 0, &format!("copy-{i}"), LONG)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut won = Vec::new();
    for t in tasks {
        if let Some(lease) = t.await.unwrap() {
            won.push(lease);
        }
    }
    assert_eq!(won.len(), 1, "exactly one copy holds it: {won:?}");
    assert_eq!(won[0].token, 1);
}

pub async fn partition_counts_must_agree(store: Store) {
    let Some(leases) = leases_of(&store).await else {
        return;
    };
    let worker = unique("Counts");
    leases.register(&worker, 3).await.unwrap();
    leases.register(&worker, 3).await.unwrap();
    let err = leases.register(&worker, 4).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::PartitionsChanged {
                stored: 3,
                configured: 4,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("3 partitions")
            && text.contains("4 are configured")
            && text.contains("rebuild"),
        "{text}"
    );
    assert!(matches!(
        leases.register(&worker, 0).await,
        Err(StoreError::Invalid(_))
    ));
}

pub async fn live_copies_are_counted_by_heartbeat(store: Store) {
    let Some(leases) = leases_of(&store).await else {
        return;
    };
    let worker = unique("Members");
    let short = Duration::from_millis(300);
    assert_eq!(leases.heartbeat(&worker, "a", LONG).await.unwrap(), ["a"]);
    assert_eq!(
        leases.heartbeat(&worker, "b", short).await.unwrap(),
        ["a", "b"]
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        leases.heartbeat(&worker, "a", LONG).await.unwrap(),
        ["a"],
        "b went silent"
    );
    assert_eq!(leases.members(&worker).await.unwrap(), ["a"]);
    leases.leave(&worker, "a").await.unwrap();
    assert!(leases.members(&worker).await.unwrap().is_empty());
    assert_eq!(
        leases.heartbeat(&worker, "c", LONG).await.unwrap(),
        ["c"],
        "a left"
    );
}

// Decisions across streams (dcb.events): the tag index, `read_query` and `append_if`.

/// An event of `event_type` carrying `tags` (`key:value` texts).
fn tagged(event_type: &str, tags: &[&str]) -> EventData {
    EventData {
        id: orkestra_runtime::new_id(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        data: json!({ "tags": tags }),
        metadata: Metadata::new(),
        topic: None,
        tags: Vec::new(),
    }
    .with_tags(tags.iter().map(|t| Tag::parse(t).unwrap()))
}

/// Whether the adapter refuses decisions across streams (EventStoreDB): then the case
/// checks the refusal and stops.
async fn refuses_dcb(store: &Store) -> bool {
    if store.adapter() != "eventstoredb" {
        return false;
    }
    let query = Query::of(QueryItem::types(["T"]));
    let err = store.read_query(&query, 0, 10).await.unwrap_err();
    assert!(matches!(err, StoreError::Unsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("read_query"), "{err}");
    let condition = AppendCondition {
        fail_if_events_match: query,
        after: None,
    };
    let err = store
        .append_if(
            &unique("s"),
            ExpectedVersion::Any,
            vec![tagged("T", &[])],
            condition,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unsupported { .. }), "{err:?}");
    true
}

fn positions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(RecordedEvent::position).collect()
}

/// The specification's query semantics: by type only, by tags only, by both, items
/// combined with OR, in global order, from a position, up to a limit.
pub async fn dcb_queries_match_types_and_tags(store: Store) {
    if refuses_dcb(&store).await {
        return;
    }
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (defined, subscribed) = (
        format!("CourseDefined{run}"),
        format!("StudentSubscribed{run}"),
    );
    let (c1, c2, s1) = (
        format!("course:c1-{run}"),
        format!("course:c2-{run}"),
        format!("student:s1-{run}"),
    );
    let mut at = Vec::new();
    for (stream, event) in [
        ("course-c1", tagged(&defined, &[&c1])),
        ("sub-c1-s1", tagged(&subscribed, &[&c1, &s1])),
        ("sub-c2-s1", tagged(&subscribed, &[&c2, &s1])),
        ("course-c2", tagged(&defined, &[&c2])),
        ("unrelated", tagged(&format!("Other{run}"), &[])),
    ] {
        let r = store
            .append(
                &format!("{stream}-{run}"),
                ExpectedVersion::NoStream,
                vec![event],
            )
            .await
            .unwrap();
        at.push(r.last_position);
    }
    visible(&store, at[4]).await;
    let read = |query: Query| {
        let store = store.clone();
        async move { positions(&store.read_query(&query, 0, 100).await.unwrap()) }
    };
    let tag = |t: &str| Tag::parse(t).unwrap();
    assert_eq!(
        read(Query::of(QueryItem::types([defined.as_str()]))).await,
        [at[0], at[3]],
        "type only"
    );
    assert_eq!(
        read(Query::of(QueryItem::tags([tag(&c1)]))).await,
        [at[0], at[1]],
        "tag only"
    );
    assert_eq!(
        read(Query::of(
            QueryItem::types([subscribed.as_str()]).with_tags([tag(&s1)])
        ))
        .await,
        [at[1], at[2]],
        "type and tag"
    );
    assert_eq!(
        read(Query::of(QueryItem::tags([tag(&c1), tag(&s1)]))).await,
        [at[1]],
        "every tag of an item"
    );
    assert_eq!(
        read(
            Query::of(QueryItem::types([defined.as_str()]).with_tags([tag(&c2)]))
                .or(QueryItem::tags([tag(&s1)]))
        )
        .await,
        [at[1], at[2], at[3]],
        "items OR-ed, each event once, in global order"
    );
    assert!(
        read(Query::of(
            QueryItem::types([subscribed.as_str()]).with_tags([tag(&format!("course:none-{run}"))])
        ))
        .await
        .is_empty()
    );
    assert!(read(Query::default()).await.is_empty(), "no items: nothing");
    let both = Query::of(QueryItem::tags([tag(&s1)]));
    assert_eq!(
        positions(&store.read_query(&both, at[2], 100).await.unwrap()),
        [at[2]],
        "from is inclusive"
    );
    assert_eq!(
        positions(&store.read_query(&both, 0, 1).await.unwrap()),
        [at[1]],
        "limit"
    );
    let events = store.read_query(&both, 0, 1).await.unwrap();
    assert_eq!(events[0].tags(), [tag(&c1), tag(&s1)], "tags read back");
    assert_eq!(events[0].event_type(), subscribed);
    let stream = store
        .read_stream(&format!("sub-c1-s1-{run}"), 0, 1)
        .await
        .unwrap();
    assert_eq!(
        stream[0].tags(),
        events[0].tags(),
        "every read carries the tags"
    );
    let all = store.read_all(at[4], 1).await.unwrap();
    assert!(all[0].tags().is_empty());
}

/// The specification's append conditions: a matching event after the position fails
/// the append (nothing written, a readable error); one at or before it does not; an
/// append matching nothing passes; a repeat is a no-op; bad conditions are refused.
pub async fn dcb_append_conditions_hold(store: Store) {
    if refuses_dcb(&store).await {
        return;
    }
    let run = uuid::Uuid::new_v4().simple().to_string();
    let tag = |t: &str| Tag::parse(&format!("{t}-{run}")).unwrap();
    let defined = format!("CourseDefined{run}");
    let first = store
        .append(
            &format!("course-{run}"),
            ExpectedVersion::NoStream,
            vec![tagged(&defined, &[tag("course:c1").as_str()])],
        )
        .await
        .unwrap();
    let boundary = Query::of(QueryItem::tags([tag("course:c1")]));
    let condition = |after| AppendCondition {
        fail_if_events_match: boundary.clone(),
        after,
    };
    let stream = format!("sub-{run}");
    let sub = || {
        tagged(
            &format!("StudentSubscribed{run}"),
            &[tag("course:c1").as_str(), tag("student:s1").as_str()],
        )
    };
    // Nothing read: the course event breaks the condition.
    let err = store
        .append_if(
            &stream,
            ExpectedVersion::NoStream,
            vec![sub()],
            condition(None),
        )
        .await
        .unwrap_err();
    match &err {
        StoreError::WrongCondition {
            stream: s,
            after: None,
            position,
            event_type,
        } => {
            assert_eq!(
                (s, *position, event_type),
                (&stream, first.last_position, &defined)
            );
        }
        other => panic!("expected WrongCondition, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&stream) && text.contains(&first.last_position.to_string()),
        "{text}"
    );
    assert!(
        store.read_stream(&stream, 0, 10).await.unwrap().is_empty(),
        "nothing written"
    );
    // Read up to the course event: the append passes.
    let event = sub();
    let won = store
        .append_if(
            &stream,
            ExpectedVersion::NoStream,
            vec![event.clone()],
            condition(Some(first.last_position)),
        )
        .await
        .unwrap();
    assert!(won.written);
    // The same append again: a repeat, not a conflict with itself.
    let again = store
        .append_if(
            &stream,
            ExpectedVersion::NoStream,
            vec![event],
            condition(Some(first.last_position)),
        )
        .await
        .unwrap();
    assert_eq!(
        (again.written, again.last_position),
        (false, won.last_position)
    );
    // An earlier position no longer holds: the subscription lies after it.
    let err = store
        .append_if(
            &format!("other-{run}"),
            ExpectedVersion::Any,
            vec![sub()],
            condition(Some(first.last_position)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongCondition { position, .. } if position == won.last_position),
        "{err:?}"
    );
    // Types narrow an item: a condition on another type of the same tag passes.
    let other_type = AppendCondition {
        fail_if_events_match: Query::of(
            QueryItem::types([format!("Unsubscribed{run}")]).with_tags([tag("course:c1")]),
        ),
        after: None,
    };
    store
        .append_if(
            &format!("other-{run}"),
            ExpectedVersion::Any,
            vec![tagged("Note", &[])],
            other_type,
        )
        .await
        .unwrap();
    // A boundary nothing matches: passes.
    let unrelated = AppendCondition {
        fail_if_events_match: Query::of(QueryItem::tags([tag("course:c3")]))
            .or(QueryItem::types([format!("Nothing{run}")])),
        after: None,
    };
    store
        .append_if(
            &format!("c3-{run}"),
            ExpectedVersion::NoStream,
            vec![tagged("Note", &[tag("course:c3").as_str()])],
            unrelated.clone(),
        )
        .await
        .unwrap();
    // ...until an event matches it; the stream's expectation is still checked too.
    let err = store
        .append_if(
            &format!("c3-{run}"),
            ExpectedVersion::Any,
            vec![tagged("Note", &[])],
            unrelated.clone(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::WrongCondition { .. }), "{err:?}");
    let err = store
        .append_if(
            &format!("c3-{run}"),
            ExpectedVersion::NoStream,
            vec![tagged("Note", &[])],
            AppendCondition {
                after: Some(u64::MAX >> 1),
                ..unrelated
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { .. }),
        "{err:?}"
    );
    // Conditions that would lock everything are refused, with nothing written.
    let empty = store
        .append_if(
            &format!("empty-{run}"),
            ExpectedVersion::Any,
            vec![tagged("Note", &[])],
            AppendCondition {
                fail_if_events_match: Query::default(),
                after: None,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&empty, StoreError::Invalid(m) if m.contains("no items") && m.contains("empty-")),
        "{empty:?}"
    );
    let everything = store
        .append_if(
            &format!("empty-{run}"),
            ExpectedVersion::Any,
            vec![tagged("Note", &[])],
            AppendCondition {
                fail_if_events_match: Query::of(QueryItem::default()),
                after: None,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&everything, StoreError::Invalid(m) if m.contains("neither types nor tags")),
        "{everything:?}"
    );
    assert!(
        store
            .read_stream(&format!("empty-{run}"), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(Tag::new("course", "").is_err() && Tag::new("", "c1").is_err());
    // A tag set twice through the public field is stored (and indexed) once.
    let mut doubled = tagged("Note", &[]);
    doubled.tags = vec![tag("dup:x"), tag("dup:x")];
    let dup = store
        .append(
            &format!("dup-{run}"),
            ExpectedVersion::NoStream,
            vec![doubled],
        )
        .await
        .unwrap();
    let back = store
        .read_stream(&format!("dup-{run}"), 0, 1)
        .await
        .unwrap();
    assert_eq!(back[0].tags(), [tag("dup:x")]);
    visible(&store, dup.last_position).await;
    let found = store
        .read_query(&Query::of(QueryItem::tags([tag("dup:x")])), 0, 10)
        .await
        .unwrap();
    assert_eq!(positions(&found), [dup.last_position]);
}

/// Reads the course's boundary, decides (capacity 1), appends on the condition; on a
/// conflict, reads and decides again. `Ok(true)`: subscribed; `Ok(false)`: full.
async fn subscribe(store: &Store, run: &str, student: usize) -> Result<bool, StoreError> {
    let course = Tag::parse(&format!("course:c-{run}")).unwrap();
    let boundary = Query::of(
        QueryItem::types([
            format!("CourseDefined{run}"),
            format!("StudentSubscribed{run}"),
        ])
        .with_tags([course.clone()]),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = store.read_query(&boundary, 0, 1000).await?;
        let after = events.last().map(RecordedEvent::position);
        let taken = events
            .iter()
            .filter(|e| e.event_type().starts_with("StudentSubscribed"))
            .count();
        if taken >= 1 {
            return Ok(false);
        }
        let event = tagged(
            &format!("StudentSubscribed{run}"),
            &[course.as_str(), &format!("student:s{student}-{run}")],
        );
        match store
            .append_if(
                &format!("subscription-{run}-{student}"),
                ExpectedVersion::NoStream,
                vec![event],
                AppendCondition {
                    fail_if_events_match: boundary.clone(),
                    after,
                },
            )
            .await
        {
            Ok(_) => return Ok(true),
            Err(StoreError::WrongCondition { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(other) => return Err(other),
        }
    }
}

/// 32 racers for the one seat of a course: exactly one subscription is stored.
pub async fn dcb_racers_for_one_seat_one_wins(store: Store) {
    if refuses_dcb(&store).await {
        return;
    }
    let run = uuid::Uuid::new_v4().simple().to_string();
    store
        .append(
            &format!("course-{run}"),
            ExpectedVersion::NoStream,
            vec![tagged(
                &format!("CourseDefined{run}"),
                &[&format!("course:c-{run}")],
            )],
        )
        .await
        .unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let (store, run) = (store.clone(), run.clone());
            tokio::spawn(async move { subscribe(&store, &run, i).await })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() {
            wins += 1;
        }
    }
    assert_eq!(wins, 1, "exactly one racer takes the seat");
    let course = Query::of(
        QueryItem::types([format!("StudentSubscribed{run}")])
            .with_tags([Tag::parse(&format!("course:c-{run}")).unwrap()]),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let stored = store.read_query(&course, 0, 100).await.unwrap();
        if !stored.is_empty() || tokio::time::Instant::now() > deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(stored.len(), 1, "one subscription stored");
}

/// Decisions on disjoint boundaries never fail each other, even all at once, and each
/// reads its own last event back at once.
pub async fn dcb_disjoint_boundaries_never_conflict(store: Store) {
    if refuses_dcb(&store).await {
        return;
    }
    let run = uuid::Uuid::new_v4().simple().to_string();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (store, run) = (store.clone(), run.clone());
            tokio::spawn(async move {
                let tag = format!("course:c{i}-{run}");
                let boundary = Query::of(QueryItem::tags([Tag::parse(&tag).unwrap()]));
                for n in 0..5 {
                    // Each append read nothing new of its own boundary but its own last one.
                    let seen = store.read_query(&boundary, 0, 100).await.unwrap();
                    let after = seen.last().map(RecordedEvent::position);
                    assert_eq!(seen.len(), n, "its own events, no one else's");
                    store
                        .append_if(
                            &format!("s{i}-{run}"),
                            ExpectedVersion::Any,
                            vec![tagged("Seat", &[&tag])],
                            AppendCondition {
                                fail_if_events_match: boundary.clone(),
                                after,
                            },
                        )
                        .await
                        .unwrap();
                    // Its own event at once, whatever other writers have in flight
                    // (PostgreSQL reads a boundary under its locks, not behind the
                    // cluster's oldest transaction).
                    let own = store.read_query(&boundary, 0, 100).await.unwrap();
                    assert_eq!(own.len(), n + 1, "its own last event is read back at once");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// An event of `event_type` with `data`, carrying `tags` (`key:value` texts).
fn with_data(event_type: &str, data: serde_json::Value, tags: &[&str]) -> EventData {
    EventData {
        data,
        ..tagged(event_type, tags)
    }
}

/// Whether the adapter refuses the tag index's registry (EventStoreDB): then the case
/// checks the refusal and stops.
async fn refuses_registry(store: &Store) -> bool {
    if store.adapter() != "eventstoredb" {
        return false;
    }
    let err = store.ensure_tags_indexed(&[("T", "k")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Unsupported { .. }), "{err:?}");
    let err = store.reindex_tags(|_, _| {}).await.unwrap_err();
    assert!(matches!(err, StoreError::Unsupported { .. }), "{err:?}");
    true
}

/// The tags a decision reads, declared before any event of their types is stored, are
/// indexed at once; from then on an append of such a type that lacks the tag (a process
/// on an older schema) gets it from the event's field, so the pair stays indexed.
pub async fn dcb_tags_declared_on_an_empty_store_are_indexed(store: Store) {
    if refuses_registry(&store).await {
        return;
    }
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (defined, subscribed) = (
        format!("CourseDefined{run}"),
        format!("StudentSubscribed{run}"),
    );
    let pairs = [
        (defined.as_str(), "course_id"),
        (subscribed.as_str(), "course_id"),
        (subscribed.as_str(), "student_id"),
    ];
    store.ensure_tags_indexed(&pairs).await.unwrap();
    store.ensure_tags_indexed(&pairs).await.unwrap();
    let declared: Vec<_> = store
        .declared_tags()
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.event_type.ends_with(&run))
        .map(|d| (d.event_type, d.tag, d.indexed))
        .collect();
    assert_eq!(
        declared,
        [
            (defined.clone(), "course_id".to_owned(), true),
            (subscribed.clone(), "course_id".to_owned(), true),
            (subscribed.clone(), "student_id".to_owned(), true),
        ]
    );
    // An older writer: the type without its tags. The store derives them.
    let course = format!("c1-{run}");
    let old = store
        .append(
            &format!("sub-{run}"),
            ExpectedVersion::NoStream,
            vec![with_data(
                &subscribed,
                json!({"course_id": course, "student_id": format!("s1-{run}")}),
                &[&format!("student_id:s1-{run}")],
            )],
        )
        .await
        .unwrap();
    visible(&store, old.last_position).await;
    let found = store
        .read_query(
            &Query::of(QueryItem::tags([Tag::new("course_id", &course).unwrap()])),
            0,
            10,
        )
        .await
        .unwrap();
    assert_eq!(positions(&found), [old.last_position]);
    assert_eq!(
        found[0].tags(),
        [
            Tag::new("student_id", format!("s1-{run}")).unwrap(),
            Tag::new("course_id", &course).unwrap()
        ],
        "the carried tag first, the derived one after"
    );
    store.ensure_tags_indexed(&pairs).await.unwrap();
    let err = store.ensure_tags_indexed(&[("", "k")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
}

/// Appends of a type without its tag (processes on an older schema) racing the tag's
/// declaration: whichever way the race goes, no event is left out of the index once the
/// pair is indexed (declared indexed at once, or after a reindex).
pub async fn dcb_a_declaration_racing_old_appends_leaves_none_unindexed(store: Store) {
    if refuses_registry(&store).await {
        return;
    }
    let run = uuid::Uuid::new_v4().simple().to_string();
    let event_type = format!("SeatTaken{run}");
    // Set once the declaration returned: each writer then appends 3 more and stops.
    let declared_flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (store, run, event_type) = (store.clone(), run.clone(), event_type.clone());
            let declared_flag = declared_flag.clone();
            tokio::spawn(async move {
                let mut values = Vec::new();
                let mut more = 3;
                for i in 0..500 {
                    if declared_flag.load(std::sync::atomic::Ordering::SeqCst) {
                        if more == 0 {
                            break;
                        }
                        more -= 1;
                    }
                    let value = format!("w{w}-{i}-{run}");
                    let started = std::time::Instant::now();
                    store
                        .append(
                            &format!("seat-{w}-{i}-{run}"),
                            ExpectedVersion::NoStream,
                            vec![with_data(&event_type, json!({ "seat": value }), &[])],
                        )
                        .await
                        .unwrap();
                    values.push((value, started));
                    tokio::task::yield_now().await;
                }
                values
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let declared = store
        .ensure_tags_indexed(&[(event_type.as_str(), "seat")])
        .await;
    let declared_at = std::time::Instant::now();
    declared_flag.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut values = Vec::new();
    for w in writers {
        values.extend(w.await.unwrap());
    }
    let find = |value: String| {
        let store = store.clone();
        async move {
            store
                .read_query(
                    &Query::of(QueryItem::tags([Tag::new("seat", &value).unwrap()])),
                    0,
                    10,
                )
                .await
                .unwrap()
                .len()
        }
    };
    // Appended after the declaration: indexed by the append itself, reindex or not.
    let after: Vec<_> = values.iter().filter(|(_, at)| *at > declared_at).collect();
    assert!(
        after.len() >= 8,
        "every writer appended after the declaration"
    );
    for (value, _) in &after {
        assert_eq!(
            find(value.clone()).await,
            1,
            "{value}, appended after the declaration"
        );
    }
    match declared {
        Ok(()) => {}
        Err(StoreError::TagsNotIndexed { .. }) => {
            store.reindex_tags(|_, _| {}).await.unwrap();
        }
        Err(other) => panic!("{other:?}"),
    }
    store
        .ensure_tags_indexed(&[(event_type.as_str(), "seat")])
        .await
        .unwrap();
    for (value, _) in &values {
        assert_eq!(
            find(value.clone()).await,
            1,
            "the event with seat {value} is indexed"
        );
    }
}

/// A tag added to a type whose events are already stored: a decision reading it is
/// refused, naming the command to run; a reindex gives the old events their entries
/// (reporting those whose field is missing or not text), after which the decision runs
/// and finds them; a second reindex changes nothing.
pub async fn dcb_tags_added_later_need_a_reindex(store: Store) {
    if refuses_registry(&store).await {
        return;
    }
    let run = uuid::Uuid::new_v4().simple().to_string();
    let registered = format!("UserRegistered{run}");
    let name = |n: &str| format!("{n}-{run}");
    let mut at = Vec::new();
    for (i, data) in [
        json!({"username": name("ada")}),
        json!({"username": name("bob")}),
        json!({"username": 42}),
        json!({"other": "x"}),
        json!({"username": name("ada")}),
    ]
    .into_iter()
    .enumerate()
    {
        let r = store
            .append(
                &format!("user-{i}-{run}"),
                ExpectedVersion::NoStream,
                vec![with_data(&registered, data, &[])],
            )
            .await
            .unwrap();
        at.push(r.last_position);
    }
    visible(&store, at[4]).await;
    let pair = [(registered.as_str(), "username")];
    for _ in 0..2 {
        let err = store.ensure_tags_indexed(&pair).await.unwrap_err();
        match &err {
            StoreError::TagsNotIndexed { event_type, tag } => {
                assert_eq!(
                    (event_type.as_str(), tag.as_str()),
                    (registered.as_str(), "username")
                );
            }
            other => panic!("expected TagsNotIndexed, got {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("orkestra store reindex-tags")
                && text.contains(&registered)
                && text.contains("username"),
            "{text}"
        );
    }
    let ada = Query::of(
        QueryItem::types([registered.as_str()])
            .with_tags([Tag::new("username", name("ada")).unwrap()]),
    );
    assert!(
        store.read_query(&ada, 0, 10).await.unwrap().is_empty(),
        "not indexed yet"
    );
    let pending = store.declared_tags().await.unwrap();
    assert!(
        pending
            .iter()
            .any(|d| d.event_type == registered && d.tag == "username" && !d.indexed),
        "{pending:?}"
    );

    let mut calls: Vec<(u64, u64)> = Vec::new();
    let report = store
        .reindex_tags(|done, total| calls.push((done, total)))
        .await
        .unwrap();
    let ours: Vec<_> = report
        .pairs
        .iter()
        .filter(|p| p.event_type == registered)
        .collect();
    assert_eq!(ours.len(), 1, "{report:?}");
    assert_eq!(
        (
            ours[0].tag.as_str(),
            ours[0].events,
            ours[0].written,
            ours[0].skipped
        ),
        ("username", 5, 3, 2)
    );
    let mut skipped: Vec<_> = report
        .skipped
        .iter()
        .filter(|s| s.event_type == registered)
        .map(|s| (s.stream.clone(), s.position, s.reason))
        .collect();
    skipped.sort_by_key(|s| s.1);
    assert_eq!(
        skipped,
        [
            (
                format!("user-2-{run}"),
                at[2],
                orkestra_runtime::store::SkipReason::NotText
            ),
            (
                format!("user-3-{run}"),
                at[3],
                orkestra_runtime::store::SkipReason::Missing
            ),
        ]
    );
    assert_eq!(calls.first().map(|c| c.0), Some(0), "{calls:?}");
    let (done, total) = *calls.last().unwrap();
    assert!(done == total && done >= 5, "{calls:?}");
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0), "{calls:?}");

    store.ensure_tags_indexed(&pair).await.unwrap();
    let found = store.read_query(&ada, 0, 10).await.unwrap();
    assert_eq!(
        positions(&found),
        [at[0], at[4]],
        "the old events, found by the tag"
    );
    assert_eq!(
        found[0].tags(),
        [Tag::new("username", name("ada")).unwrap()]
    );
    // A decision on the reindexed boundary holds as on any other.
    let err = store
        .append_if(
            &format!("user-5-{run}"),
            ExpectedVersion::NoStream,
            vec![with_data(
                &registered,
                json!({"username": name("ada")}),
                &[],
            )],
            AppendCondition {
                fail_if_events_match: ada.clone(),
                after: Some(at[0]),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongCondition { position, .. } if position == at[4]),
        "{err:?}"
    );

    // Idempotent: nothing of ours is pending, nothing changes.
    let again = store.reindex_tags(|_, _| {}).await.unwrap();
    assert!(
        again.pairs.iter().all(|p| p.event_type != registered),
        "{again:?}"
    );
    assert_eq!(
        positions(&store.read_query(&ada, 0, 10).await.unwrap()),
        [at[0], at[4]]
    );
    let bob = Query::of(QueryItem::tags(
        [Tag::new("username", name("bob")).unwrap()],
    ));
    assert_eq!(
        positions(&store.read_query(&bob, 0, 10).await.unwrap()),
        [at[1]]
    );
    let declared = store.declared_tags().await.unwrap();
    assert!(
        declared
            .iter()
            .any(|d| d.event_type == registered && d.tag == "username" && d.indexed),
        "{declared:?}"
    );
}

#[macro_export]
macro_rules! store_suite {
    ($make_store:expr) => {
        mod store_suite_cases {
            use super::*;
            use $crate::support::store_suite as suite;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let Some(store) = ($make_store).await else {
                            return;
                        };
                        suite::$name(store).await;
                    }
                };
            }

            case!(append_then_read_back);
            case!(stale_expectations_write_nothing);
            case!(reappending_the_same_ids_is_idempotent);
            case!(racing_writers_one_wins);
            case!(live_subscriber_sees_concurrent_writes_once_in_order);
            case!(resume_from_a_saved_position);
            case!(read_backwards);
            case!(decoding_checks_the_type);
            case!(bad_appends_are_refused);
            case!(extreme_versions_and_counts_are_values);
            case!(snapshots_keep_the_newest_per_stream);
            case!(head_is_the_last_position);
            case!(topics_are_recorded);
            case!(checkpoints_are_saved_replaced_and_cleared);
            case!(events_are_found_by_id_in_their_stream);
            case!(snapshots_and_checkpoints_stay_out_of_the_global_order);
            case!(leases_are_exclusive_and_fenced);
            case!(an_expired_lease_is_taken_with_a_new_token);
            case!(racing_copies_take_a_partition_once);
            case!(partition_counts_must_agree);
            case!(live_copies_are_counted_by_heartbeat);
            case!(dcb_queries_match_types_and_tags);
            case!(dcb_append_conditions_hold);
            case!(dcb_racers_for_one_seat_one_wins);
            case!(dcb_disjoint_boundaries_never_conflict);
            case!(dcb_tags_declared_on_an_empty_store_are_indexed);
            case!(dcb_tags_added_later_need_a_reindex);
            case!(dcb_a_declaration_racing_old_appends_leaves_none_unindexed);
        }
    };
}
