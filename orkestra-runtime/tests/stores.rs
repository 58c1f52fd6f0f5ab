//! The event-store conformance suite on the adapters that need no server (memory and the
//! embedded SQLite file), plus what only the embedded store promises: it survives a
//! reopen and a `kill -9` mid-write, and reports foreign rows instead of failing blindly.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orkestra_runtime::{EventData, ExpectedVersion, Store, StoreError};
use support::store_suite::{placed, unique};

fn temp_db() -> PathBuf {
    std::env::temp_dir()
        .join(format!("orkestra-test-{}", uuid::Uuid::new_v4().simple()))
        .join("events.db")
}

mod memory {
    use super::*;
    store_suite!(async { Some(Store::memory()) });
}

mod sqlite {
    use super::*;
    store_suite!(async { Some(Store::sqlite(temp_db()).await.unwrap()) });
}

#[tokio::test]
async fn the_embedded_store_keeps_everything_across_a_reopen() {
    let path = temp_db();
    let stream = unique("reopen");
    {
        let store = Store::sqlite(&path).await.unwrap();
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![placed("a", 1), placed("b", 2)],
            )
            .await
            .unwrap();
    }
    let store = Store::sqlite(&path).await.unwrap();
    let events = store.read_stream(&stream, 0, 10).await.unwrap();
    assert_eq!(events.len(), 2);
    let next = store
        .append(&stream, ExpectedVersion::Exact(1), vec![placed("c", 3)])
        .await
        .unwrap();
    assert_eq!(next.last_version, 2);
}

#[tokio::test]
async fn foreign_rows_are_reported_and_updates_refused() {
    let path = temp_db();
    let store = Store::sqlite(&path).await.unwrap();
    let stream = unique("foreign");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![placed("a", 1)])
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let metadata = serde_json::to_string(&orkestra_runtime::Metadata::new()).unwrap();
    conn.execute(
        "INSERT INTO orkestra_events (stream, version, id, event_type, schema_version, data, metadata, recorded_at) \
         VALUES (?1, 1, 'x', 'Test.Orders.OrderPlaced', 1, 'not json', ?2, 0)",
        [&stream, &metadata],
    )
    .unwrap();
    // A row whose data is not JSON: readable as a row, reported when its data is used.
    let events = store.read_stream(&stream, 0, 10).await.unwrap();
    let err = events[1].data().unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("data is not JSON"), "{err}");
    assert!(matches!(
        events[1].decode::<support::payloads::OrderPlaced>(),
        Err(StoreError::Decode { .. })
    ));
    // A row whose metadata is foreign cannot be an Orkestra event at all.
    conn.execute(
        "INSERT INTO orkestra_events (stream, version, id, event_type, schema_version, data, metadata, recorded_at) \
         VALUES (?1, 2, 'y', 'T', 1, '{}', '{\"who\": 1}', 0)",
        [&stream],
    )
    .unwrap();
    let err = store.read_stream(&stream, 0, 10).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("metadata"), "{err}");
    let refused = conn.execute(
        "UPDATE orkestra_events SET data = '{}' WHERE stream = ?1",
        [&stream],
    );
    assert!(refused.unwrap_err().to_string().contains("append-only"));
    // A permit (what `Store::encrypt_personal` writes in its transaction) lets the data
    // of that event change, and nothing else of it.
    let tx = conn.unchecked_transaction().unwrap();
    tx.execute(
        "INSERT INTO orkestra_data_rewrites (position) \
         SELECT position FROM orkestra_events WHERE stream = ?1",
        [&stream],
    )
    .unwrap();
    let refused = tx.execute(
        "UPDATE orkestra_events SET metadata = '{}' WHERE stream = ?1",
        [&stream],
    );
    assert!(refused.unwrap_err().to_string().contains("append-only"));
    tx.rollback().unwrap();
    let refused = conn.execute("DELETE FROM orkestra_events WHERE stream = ?1", [&stream]);
    assert!(refused.is_err());
}

#[tokio::test]
async fn an_unusable_file_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("orkestra-bad-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("not-a-db");
    std::fs::write(&path, vec![0x42u8; 4096]).unwrap();
    let err = Store::sqlite(&path).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Unavailable {
                adapter: "sqlite",
                setting: "store.url",
                ..
            }
        ),
        "{err:?}"
    );
}

const BATCH: usize = 10;

/// The child side of the crash test: appends batches of `BATCH` events from 4 tasks,
/// printing `acked <stream>` once each append returns, until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_writer_child() {
    let Ok(path) = std::env::var("ORKESTRA_CRASH_DB") else {
        return;
    };
    let store = Store::sqlite(&path).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let stream = format!("crash-{w}-{i}");
                let events: Vec<EventData> = (0..BATCH)
                    .map(|n| placed(&format!("{w}-{i}-{n}"), n as i64))
                    .collect();
                store
                    .append(&stream, ExpectedVersion::NoStream, events)
                    .await
                    .unwrap();
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                writeln!(out, "acked {stream}").unwrap();
                out.flush().unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn kill_dash_nine_mid_write_loses_no_acknowledged_batch_and_splits_none() {
    let path = temp_db();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_writer_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ORKESTRA_CRASH_DB", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, acks) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(stream) = line.strip_prefix("acked ") {
                let _ = tx.send(stream.to_owned());
            }
        }
    });
    // Let it write a while (at least 25 acknowledged batches, however slow the disk),
    // then kill it without warning in the middle of batches.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acked = Vec::new();
    while acked.len() < 25 {
        let left = deadline.saturating_duration_since(Instant::now());
        match acks.recv_timeout(left) {
            Ok(stream) => acked.push(stream),
            Err(e) => panic!("the child acknowledged only {} batches: {e}", acked.len()),
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    // What it acknowledged before dying.
    acked.extend(acks.iter());

    let store = Store::sqlite(&path).await.unwrap();
    for stream in &acked {
        assert_eq!(
            store.read_stream(stream, 0, 100).await.unwrap().len(),
            BATCH,
            "acknowledged {stream} is complete"
        );
    }
    let all = store.read_all(0, 1_000_000).await.unwrap();
    let mut counts = std::collections::HashMap::<&str, usize>::new();
    for e in &all {
        *counts.entry(e.stream()).or_default() += 1;
    }
    assert!(
        counts.values().all(|&n| n == BATCH),
        "every batch all-or-nothing: {counts:?}"
    );
    assert!(counts.len() >= acked.len());
}

mod postgres {
    use super::*;
    store_suite!(support::services::postgres_store());
}

#[tokio::test]
async fn postgres_errors_hide_the_password() {
    let url = orkestra_runtime::SecretUrl::new("postgres://postgres:hunter2@127.0.0.1:1/test");
    let err = Store::postgres(&url).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("store.url"), "{text}");
    let bad = orkestra_runtime::SecretUrl::new("postgres://u:hunter2@host:notaport/db");
    let err = Store::postgres(&bad).await.unwrap_err();
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err}");
}

/// The known failure of sequence-ordered stores: a transaction that took an earlier
/// position commits after a later one. Here A holds its insert open while B appends and
/// commits; a subscriber must not pass B until A has committed, and then sees A first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_subscribers_never_skip_a_late_commit() {
    use futures_util::StreamExt;
    let Some(store) = support::services::postgres_store().await else {
        return;
    };
    let marker = store
        .append(
            &unique("marker"),
            ExpectedVersion::NoStream,
            vec![placed("m", 1)],
        )
        .await
        .unwrap();
    let mut sub = store.subscribe_all(marker.last_position + 1).await.unwrap();

    let (mut client, connection) = tokio_postgres::connect(
        support::services::postgres_url().expose(),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let tx = client.transaction().await.unwrap();
    let stream_a = unique("late-a");
    let id_a = uuid::Uuid::new_v4().to_string();
    tx.execute(
        "INSERT INTO orkestra_events (position, stream, version, id, event_type, schema_version, data, metadata) \
         VALUES ((pg_current_xact_id()::text::bigint << 20), $1, 0, $2, 'Test.Orders.OrderPlaced', 1, \
                 '{\"order_id\": \"a\", \"quantity\": 1}', $3)",
        &[&stream_a, &id_a, &serde_json::to_value(orkestra_runtime::Metadata::new()).unwrap()],
    )
    .await
    .unwrap();

    let stream_b = unique("late-b");
    let b = store
        .append(&stream_b, ExpectedVersion::NoStream, vec![placed("b", 1)])
        .await
        .unwrap();
    // B is committed, but A (older, still open) could still land before it: B must wait.
    let early = tokio::time::timeout(std::time::Duration::from_millis(800), async {
        loop {
            let e = sub.next().await.unwrap().unwrap();
            if e.stream() == stream_a || e.stream() == stream_b {
                return e;
            }
        }
    })
    .await;
    assert!(
        early.is_err(),
        "a subscriber passed B while an older transaction was open: {early:?}"
    );
    assert!(
        store.read_stream(&stream_b, 0, 1).await.unwrap().len() == 1,
        "B itself is readable by stream"
    );

    tx.commit().await.unwrap();
    let mut order = Vec::new();
    while order.len() < 2 {
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if e.stream() == stream_a || e.stream() == stream_b {
            order.push((e.stream().to_owned(), e.position()));
        }
    }
    assert_eq!(
        order[0].0, stream_a,
        "the late commit comes first: its transaction is older"
    );
    assert_eq!(order[1].0, stream_b);
    assert!(order[0].1 < order[1].1);
    assert_eq!(order[1].1, b.last_position);
}

#[tokio::test]
async fn postgres_events_are_append_only() {
    let Some(store) = support::services::postgres_store().await else {
        return;
    };
    let stream = unique("append-only");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![placed("a", 1)])
        .await
        .unwrap();
    let (client, connection) = tokio_postgres::connect(
        support::services::postgres_url().expose(),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    for sql in [
        "UPDATE orkestra_events SET event_type = 'x' WHERE stream = $1",
        "UPDATE orkestra_events SET data = '{}' WHERE stream = $1",
        "DELETE FROM orkestra_events WHERE stream = $1",
    ] {
        let err = client.execute(sql, &[&stream]).await.unwrap_err();
        assert!(format!("{err:?}").contains("append-only"), "{err:?}");
    }
    // The transaction `Store::encrypt_personal` runs in may change an event's data and
    // nothing else.
    for set in ["metadata = '{}'", "data = '{}', version = 7"] {
        client
            .batch_execute("BEGIN; SET LOCAL orkestra.rewrite = 'personal data'")
            .await
            .unwrap();
        let err = client
            .execute(
                &format!("UPDATE orkestra_events SET {set} WHERE stream = $1"),
                &[&stream],
            )
            .await
            .unwrap_err();
        assert!(format!("{err:?}").contains("append-only"), "{set}: {err:?}");
        client.batch_execute("ROLLBACK").await.unwrap();
    }
    // TRUNCATE waits for every open transaction on the table, and readers queue behind
    // it: with a lock timeout it steps out of the queue (and tries again) instead of
    // blocking other tests' readers while one of them holds a transaction open.
    client
        .batch_execute("SET lock_timeout = '500ms'")
        .await
        .unwrap();
    let mut tries = 0;
    let err = loop {
        let err = client
            .execute("TRUNCATE orkestra_events", &[])
            .await
            .unwrap_err();
        if err.code() != Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) || tries == 60 {
            break err;
        }
        tries += 1;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(format!("{err:?}").contains("append-only"), "{err:?}");
    assert_eq!(store.read_stream(&stream, 0, 10).await.unwrap().len(), 1);
}

/// EventStoreDB: no server can run on our machines, so these run only when
/// `ORKESTRA_ESDB_URL` is set (and the `eventstoredb` feature is on), for example
/// `ORKESTRA_ESDB_URL=esdb://127.0.0.1:2113?tls=false cargo test -p orkestra-runtime --features eventstoredb`.
#[cfg(feature = "eventstoredb")]
mod eventstoredb {
    use super::*;

    async fn esdb_store() -> Option<Store> {
        let Ok(url) = std::env::var("ORKESTRA_ESDB_URL") else {
            eprintln!(
                "SKIPPED: ORKESTRA_ESDB_URL is not set; the EventStoreDB suite needs a server"
            );
            return None;
        };
        Some(
            Store::eventstoredb(&orkestra_runtime::SecretUrl::new(url))
                .await
                .unwrap(),
        )
    }

    store_suite!(esdb_store());
}

#[tokio::test]
async fn append_and_publish_stores_before_it_publishes() {
    use orkestra_runtime::{Bus, Event, EventEnvelope, Metadata, Subscription};
    use support::payloads::OrderPlaced;
    let store = Store::memory();
    let bus = Bus::in_process();
    let stream = unique("order");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (s, st) = (store.clone(), stream.clone());
    bus.subscribe(Subscription::events(
        "Check",
        move |ev: Event<OrderPlaced>, _| {
            let (s, st, tx) = (s.clone(), st.clone(), tx.clone());
            async move {
                // By the time a subscriber runs, the event is stored.
                let stored = s.read_stream(&st, 0, 10).await.unwrap();
                tx.send(stored.iter().any(|r| r.id() == ev.id)).unwrap();
                Ok(())
            }
        },
    ))
    .await
    .unwrap();
    let events: Vec<EventEnvelope> = (0..2)
        .map(|i| {
            EventEnvelope::wrap(
                Event::new(
                    OrderPlaced {
                        order_id: format!("o{i}"),
                        quantity: 1,
                    },
                    Metadata::new(),
                )
                .unwrap(),
            )
        })
        .collect();
    let result = store
        .append_and_publish(&bus, &stream, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    assert_eq!(result.last_version, 1);
    assert!(rx.recv().await.unwrap() && rx.recv().await.unwrap());

    // A refused append publishes nothing.
    let again = vec![EventEnvelope::wrap(
        Event::new(
            OrderPlaced {
                order_id: "x".into(),
                quantity: 1,
            },
            Metadata::new(),
        )
        .unwrap(),
    )];
    let err = store
        .append_and_publish(&bus, &stream, ExpectedVersion::NoStream, again)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::WrongExpectedVersion { .. }));
    assert!(
        rx.try_recv().is_err(),
        "nothing published after a refused append"
    );
}

#[tokio::test]
async fn the_default_configuration_is_the_embedded_store() {
    let dir = std::env::temp_dir().join(format!("orkestra-cfg-{}", uuid::Uuid::new_v4().simple()));
    let path = dir.join("events.db");
    let config = orkestra_runtime::Config::from_toml_str(&format!(
        "[store]\nurl = {:?}\n",
        path.display().to_string()
    ))
    .unwrap();
    let store = Store::from_config(&config).await.unwrap();
    assert_eq!(store.adapter(), "sqlite");
    assert!(path.exists());
    let memory =
        orkestra_runtime::Config::from_toml_str("[store]\nadapter = \"memory\"\n").unwrap();
    assert_eq!(
        Store::from_config(&memory).await.unwrap().adapter(),
        "memory"
    );
    let esdb = orkestra_runtime::Config::from_toml_str(
        "[store]\nadapter = \"eventstoredb\"\nurl = \"esdb://127.0.0.1:2113\"\n",
    )
    .unwrap();
    if !cfg!(feature = "eventstoredb") {
        let err = Store::from_config(&esdb).await.unwrap_err();
        assert!(err.to_string().contains("eventstoredb"), "{err}");
    }
}
