//! `runners::status`: every partition of every worker, read from the store, on memory,
//! a SQLite file and PostgreSQL (a database of its own, so the head and the lag in
//! events are this test's alone). Two registered workers and one never registered hold
//! partitions through live, released and expired leases at checkpoints before, between
//! and at the head; the owners, checkpoints, exact lag in events, lag in time and
//! expiries are checked row by row.

mod support;

use std::time::{Duration, Instant};

use chrono::Utc;
use orkestra_runtime::runners::{RunnerStatus, status};
use orkestra_runtime::{EventData, ExpectedVersion, Metadata, Store, new_id};

const LIVE: Duration = Duration::from_secs(30);
/// How long the test waits after its last append before reading the status: every
/// unhandled event is at least this old.
const AGED: Duration = Duration::from_millis(50);

fn counted(n: u64) -> EventData {
    EventData {
        id: new_id(),
        event_type: "Counted".into(),
        schema_version: 1,
        data: serde_json::json!({ "n": n }),
        metadata: Metadata::new(),
        topic: None,
        tags: Vec::new(),
    }
}

/// Appends `n` events, one stream each, and returns their positions.
async fn append(store: &Store, n: u64) -> Vec<u64> {
    let mut positions = Vec::new();
    for i in 0..n {
        let appended = store
            .append(
                &format!("count-{}", new_id()),
                ExpectedVersion::NoStream,
                vec![counted(i)],
            )
            .await
            .unwrap();
        positions.push(appended.last_position);
    }
    positions
}

fn rows<'a>(all: &'a [RunnerStatus], worker: &str) -> Vec<&'a RunnerStatus> {
    all.iter().filter(|s| s.name == worker).collect()
}

/// The scenario, on any store with leases.
async fn status_of_every_partition(store: &Store) {
    let leases = store.leases().await.unwrap();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (tally, relay, loose) = (
        format!("Tally-{suffix}"),
        format!("orkestra.relay-{suffix}"),
        format!("Loose-{suffix}"),
    );

    // Nothing appended yet: no head, nothing to do.
    leases.register(&relay, 1).await.unwrap();
    let before = status(store).await.unwrap();
    let row = rows(&before, &relay)[0];
    assert_eq!(row.head, store.head().await.unwrap());
    assert_eq!((row.owner.as_deref(), row.checkpoint), (None, None));
    assert_eq!(row.expires_at, None);

    let p = append(store, 5).await;
    leases.register(&tally, 5).await.unwrap();
    // 0: copy-a, at the head.
    let lease = leases
        .acquire(&tally, 0, "copy-a", LIVE)
        .await
        .unwrap()
        .unwrap();
    leases.save_checkpoint(&lease, Some(p[4])).await.unwrap();
    // 1: copy-b, two events handled.
    let lease = leases
        .acquire(&tally, 1, "copy-b", LIVE)
        .await
        .unwrap()
        .unwrap();
    leases.save_checkpoint(&lease, Some(p[1])).await.unwrap();
    // 2: held by copy-a then released, at the same checkpoint as 1.
    let lease = leases
        .acquire(&tally, 2, "copy-a", LIVE)
        .await
        .unwrap()
        .unwrap();
    leases.save_checkpoint(&lease, Some(p[1])).await.unwrap();
    assert!(leases.release(&lease).await.unwrap());
    // 3: a lease left to expire, one event short of the head.
    let lease = leases
        .acquire(&tally, 3, "copy-c", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    leases.save_checkpoint(&lease, Some(p[3])).await.unwrap();
    // 4: never held, nothing handled.
    // The relay: copy-b, at the same checkpoint as Tally's partitions 1 and 2.
    let lease = leases
        .acquire(&relay, 0, "copy-b", LIVE)
        .await
        .unwrap()
        .unwrap();
    leases.save_checkpoint(&lease, Some(p[1])).await.unwrap();
    // A worker never registered: only the partition it holds is known.
    let lease = leases
        .acquire(&loose, 1, "copy-c", LIVE)
        .await
        .unwrap()
        .unwrap();
    leases.save_checkpoint(&lease, Some(p[0])).await.unwrap();
    // Past copy-c's short lease, and every unhandled event at least `AGED` old.
    tokio::time::sleep(Duration::from_millis(150).max(AGED)).await;

    let read_at = Utc::now();
    let started = Instant::now();
    let all = status(store).await.unwrap();
    let took = started.elapsed();
    let head = store.head().await.unwrap();
    assert_eq!(head, Some(p[4]));

    let tally_rows = rows(&all, &tally);
    let expected: [(u32, Option<&str>, Option<u64>, u64); 5] = [
        (0, Some("copy-a"), Some(p[4]), 0),
        (1, Some("copy-b"), Some(p[1]), 3),
        (2, None, Some(p[1]), 3),
        (3, None, Some(p[3]), 1),
        (4, None, None, 5),
    ];
    assert_eq!(tally_rows.len(), 5, "{all:#?}");
    for (row, (partition, owner, checkpoint, lag_events)) in tally_rows.iter().zip(expected) {
        assert_eq!(row.partition, partition);
        assert_eq!(row.partitions, 5);
        assert_eq!(row.owner.as_deref(), owner, "{row:?}");
        assert_eq!(row.checkpoint, checkpoint, "{row:?}");
        assert_eq!(row.head, head);
        assert_eq!(row.lag_events, lag_events, "events, not positions: {row:?}");
        if lag_events == 0 {
            assert_eq!(row.lag, Duration::ZERO, "at the head: {row:?}");
        } else {
            assert!(
                row.lag >= AGED && row.lag < Duration::from_secs(60) + took,
                "the oldest unhandled event's age: {row:?}"
            );
        }
        match owner {
            Some(_) => {
                let expires = row.expires_at.expect("a live lease has an expiry");
                let left = (expires - read_at).to_std().unwrap();
                assert!(
                    left > LIVE - Duration::from_secs(5) && left <= LIVE + Duration::from_secs(1),
                    "{row:?}"
                );
            }
            None => assert_eq!(row.expires_at, None, "released or expired: {row:?}"),
        }
    }
    // The oldest unhandled event of partition 4 (the first appended) is older than that
    // of partition 3 (the last appended).
    assert!(tally_rows[4].lag >= tally_rows[3].lag);

    let relay_rows = rows(&all, &relay);
    assert_eq!(relay_rows.len(), 1);
    assert_eq!(relay_rows[0].owner.as_deref(), Some("copy-b"));
    assert_eq!(relay_rows[0].partitions, 1);
    assert_eq!(relay_rows[0].lag_events, 3);
    assert_eq!(
        relay_rows[0].lag, tally_rows[1].lag,
        "one count per checkpoint"
    );

    let loose_rows = rows(&all, &loose);
    assert_eq!(loose_rows.len(), 1);
    assert_eq!(loose_rows[0].partition, 1);
    assert_eq!(
        loose_rows[0].partitions, 2,
        "never registered: as far as it is known"
    );
    assert_eq!(loose_rows[0].lag_events, 4);

    // Rows by worker, then partition.
    let keys: Vec<(&str, u32)> = all.iter().map(|s| (s.name.as_str(), s.partition)).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);

    // Catching up: every partition at the head has no lag.
    let lease = leases
        .acquire(&relay, 0, "copy-b", LIVE)
        .await
        .unwrap()
        .unwrap();
    leases.save_checkpoint(&lease, Some(p[4])).await.unwrap();
    let after = status(store).await.unwrap();
    let row = rows(&after, &relay)[0];
    assert_eq!((row.lag_events, row.lag), (0, Duration::ZERO));
}

#[tokio::test]
async fn memory_status_of_every_partition() {
    status_of_every_partition(&Store::memory()).await;
}

#[tokio::test]
async fn memory_an_empty_store_has_no_workers() {
    assert_eq!(status(&Store::memory()).await.unwrap(), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_status_of_every_partition() {
    let dir =
        std::env::temp_dir().join(format!("orkestra-status-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::sqlite(dir.join("events.db")).await.unwrap();
    status_of_every_partition(&store).await;
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_status_of_every_partition() {
    let database = match support::databases::FreshDatabase::create("status").await {
        Ok(database) => database,
        Err(e) => return support::services::unavailable("PostgreSQL", &e),
    };
    let store = Store::postgres(&database.url()).await.unwrap();
    status_of_every_partition(&store).await;
}
