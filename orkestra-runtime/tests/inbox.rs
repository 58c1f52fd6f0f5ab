//! `once: true` handlers (`book/src/commands-events-handlers.md`, handlers that run once): a message id a
//! handler has handled is skipped, on the in-memory inbox, the SQLite and PostgreSQL
//! inboxes (which survive a restart), through concurrent copies, on PostgreSQL inside
//! the handler's own transaction, and on RabbitMQ.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use orkestra_runtime::{
    Bus, Event, EventEnvelope, HandlerContext, HandlerError, Inbox, Metadata, Store, Subscription,
    new_id,
};
use support::payloads::OrderPlaced;
use support::services::{postgres_store, rabbit_bus_with, rabbit_config};

fn placed(id: &str) -> Event<OrderPlaced> {
    let mut event = Event::new(
        OrderPlaced {
            order_id: "o-1".into(),
            quantity: 1,
        },
        Metadata::new(),
    )
    .unwrap();
    event.id = id.to_owned();
    event
}

/// A `once` handler counting its runs; it fails while `failures` is above zero.
fn counting(name: &str, runs: Arc<AtomicU32>, failures: Arc<AtomicU32>) -> Subscription {
    Subscription::events::<Event<OrderPlaced>, _, _>(name.to_owned(), move |_, _| {
        let runs = runs.clone();
        let failures = failures.clone();
        async move {
            // A little work, so concurrent copies overlap.
            tokio::time::sleep(Duration::from_millis(5)).await;
            if failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(HandlerError::fail("not yet"));
            }
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    })
    .with_once()
    .with_max_retries(3)
}

async fn publish(bus: &Bus, id: &str) {
    bus.publish(EventEnvelope::wrap(placed(id))).await.unwrap();
}

/// The same id twice, a failure then success, and 8 copies at once: one run each.
async fn runs_once(bus: Bus, name: &str) {
    let runs = Arc::new(AtomicU32::new(0));
    let failures = Arc::new(AtomicU32::new(0));
    bus.subscribe(counting(name, runs.clone(), failures.clone()))
        .await
        .unwrap();
    let id = new_id();
    publish(&bus, &id).await;
    publish(&bus, &id).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "{name}: a repeat is skipped"
    );

    // A failed run records nothing: the retry runs it, then it is recorded.
    failures.store(2, Ordering::SeqCst);
    let id = new_id();
    publish(&bus, &id).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2, "{name}");
    publish(&bus, &id).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2, "{name}");

    // Copies delivered side by side take turns: one runs, the others find it recorded.
    let id = new_id();
    let copies: Vec<_> = (0..8)
        .map(|_| {
            let bus = bus.clone();
            let id = id.clone();
            tokio::spawn(async move { publish(&bus, &id).await })
        })
        .collect();
    for c in copies {
        c.await.unwrap();
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3, "{name}");

    // Another handler keeps its own record.
    let other = Arc::new(AtomicU32::new(0));
    bus.subscribe(counting(
        &format!("{name}-2"),
        other.clone(),
        Arc::default(),
    ))
    .await
    .unwrap();
    publish(&bus, &id).await;
    assert_eq!(other.load(Ordering::SeqCst), 1, "{name}");
    assert_eq!(runs.load(Ordering::SeqCst), 3, "{name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_inbox() {
    runs_once(Bus::in_process(), "memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_inbox_survives_a_restart() {
    let path = std::env::temp_dir().join(format!("orkestra-inbox-{}.db", new_id()));
    let store = Store::sqlite(&path).await.unwrap();
    runs_once(Bus::in_process().with_inbox(&store), "sqlite").await;

    // A new process (a new bus and store handle on the same file) still knows.
    let runs = Arc::new(AtomicU32::new(0));
    let id = new_id();
    let first = Bus::in_process().with_inbox(&store);
    first
        .subscribe(counting("restart", runs.clone(), Arc::default()))
        .await
        .unwrap();
    publish(&first, &id).await;
    drop(first);
    drop(store);
    let store = Store::sqlite(&path).await.unwrap();
    let second = Bus::in_process().with_inbox(&store);
    second
        .subscribe(counting("restart", runs.clone(), Arc::default()))
        .await
        .unwrap();
    publish(&second, &id).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let _ = std::fs::remove_file(&path);
}

/// `[bus] inbox = "store"` switches the inbox by configuration alone: the same code
/// (`Bus::from_config(..).with_store(&store)`) keeps the record in the store (a restart
/// still knows) with it, and in memory (a restart forgets) without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_inbox_is_chosen_by_configuration() {
    let path = std::env::temp_dir().join(format!("orkestra-inbox-{}.db", new_id()));
    let config = |inbox: &str| {
        orkestra_runtime::Config::from_toml_str(&format!(
            "[bus]\ninbox = \"{inbox}\"\n[store]\nurl = {:?}\n",
            path.display().to_string()
        ))
        .unwrap()
    };
    // What a service's main does, twice (a restart), handling one message each time.
    let runs_after_restart = async |config: &orkestra_runtime::Config| {
        let runs = Arc::new(AtomicU32::new(0));
        let id = new_id();
        for _ in 0..2 {
            let store = Store::from_config(config).await.unwrap();
            let bus = Bus::from_config(config).await.unwrap().with_store(&store);
            bus.subscribe(counting(
                &format!("configured-{id}"),
                runs.clone(),
                Arc::default(),
            ))
            .await
            .unwrap();
            publish(&bus, &id).await;
        }
        runs.load(Ordering::SeqCst)
    };
    assert_eq!(
        runs_after_restart(&config("store")).await,
        1,
        "kept in the store"
    );
    assert_eq!(
        runs_after_restart(&config("memory")).await,
        2,
        "kept in memory"
    );

    // The env override, and a value it does not know.
    let from_env = config("memory")
        .with_env_overrides(|name| (name == "ORKESTRA_BUS_INBOX").then(|| "store".into()))
        .unwrap();
    assert_eq!(from_env.bus.inbox, orkestra_runtime::InboxMode::Store);
    let bad = config("memory")
        .with_env_overrides(|name| (name == "ORKESTRA_BUS_INBOX").then(|| "redis".into()))
        .unwrap_err()
        .to_string();
    assert!(
        bad.contains("bus.inbox") && bad.contains("ORKESTRA_BUS_INBOX"),
        "{bad}"
    );

    // With "store", a once handler subscribed before a store is given is refused, naming
    // the setting, rather than silently remembering in memory.
    let bus = Bus::from_config(&config("store")).await.unwrap();
    let refused = bus
        .subscribe(counting("too-early", Arc::default(), Arc::default()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("bus.inbox") && refused.contains("with_store"),
        "{refused}"
    );
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_inbox() {
    let Some(store) = postgres_store().await else {
        return;
    };
    runs_once(
        Bus::in_process().with_inbox(&store),
        &format!("pg-{}", new_id()),
    )
    .await;
}

/// On PostgreSQL the handler writes through `ctx.postgres()`: its writes and the inbox
/// row commit together, so a failure after writing undoes the write, and two processes
/// handling copies of one message at once write once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_writes_share_the_inbox_transaction() {
    let Some(store) = postgres_store().await else {
        return;
    };
    let (client, connection) = tokio_postgres::connect(
        support::services::postgres_url().expose(),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let table = format!("inbox_test_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (message_id TEXT NOT NULL, n INT NOT NULL)"
        ))
        .await
        .unwrap();
    let failures = Arc::new(AtomicU32::new(1));
    let handler = format!("charge-{}", new_id());
    let subscription = |table: String, failures: Arc<AtomicU32>| {
        Subscription::events::<Event<OrderPlaced>, _, _>(
            handler.clone(),
            move |event, ctx: HandlerContext| {
                let table = table.clone();
                let failures = failures.clone();
                async move {
                    let tx = ctx.postgres().expect("a PostgreSQL inbox transaction");
                    tx.execute(
                        &format!("INSERT INTO {table} (message_id, n) VALUES ($1, 1)"),
                        &[&event.id],
                    )
                    .await
                    .map_err(HandlerError::fail)?;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if failures
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        return Err(HandlerError::fail("card network down"));
                    }
                    Ok(())
                }
            },
        )
        .with_once()
    };
    // Two processes: two buses, each with its own inbox handle on the store.
    let a = Bus::in_process().with_inbox(&store);
    let b = Bus::in_process().with_inbox(
        &Store::postgres(&support::services::postgres_url())
            .await
            .unwrap(),
    );
    a.subscribe(subscription(table.clone(), failures.clone()))
        .await
        .unwrap();
    b.subscribe(subscription(table.clone(), failures.clone()))
        .await
        .unwrap();
    let id = new_id();
    let (x, y) = tokio::join!(publish(&a, &id), publish(&b, &id));
    let ((), ()) = (x, y);
    publish(&a, &id).await;
    let rows = client
        .query(&format!("SELECT message_id, n FROM {table}"), &[])
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        1,
        "the failed run's write rolled back; one run wrote"
    );
    assert_eq!(rows[0].get::<_, String>(0), id);
    assert_eq!(failures.load(Ordering::SeqCst), 0, "the first run failed");
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

/// A `once` handler that swallows the error of its own statement on `ctx.postgres()` and
/// returns `Ok` has lost its writes: its run fails (and is dead-lettered after its
/// retries). Its connection must not go back to the pool inside the aborted transaction:
/// the 200 messages after it are all handled, none dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_inbox_commit_leaves_the_pool_clean() {
    let Some(store) = postgres_store().await else {
        return;
    };
    let bus = Bus::in_process().with_inbox(&store);
    let mut dead = bus.dead_letters().await.unwrap();
    let handled = Arc::new(AtomicU32::new(0));
    let bad = new_id();
    let subscription = {
        let handled = handled.clone();
        let bad = bad.clone();
        Subscription::events::<Event<OrderPlaced>, _, _>(
            format!("swallow-{}", new_id()),
            move |event, ctx: HandlerContext| {
                let handled = handled.clone();
                let bad = bad.clone();
                async move {
                    let tx = ctx.postgres().expect("a PostgreSQL inbox transaction");
                    if event.id == bad {
                        // The handler's bug: the error is caught and dropped.
                        let failed = tx
                            .execute("SELECT * FROM orkestra_no_such_table", &[])
                            .await;
                        assert!(failed.is_err());
                        return Ok(());
                    }
                    tx.execute("SELECT 1", &[])
                        .await
                        .map_err(HandlerError::fail)?;
                    handled.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            },
        )
        .with_once()
        .with_max_retries(2)
    };
    bus.subscribe(subscription).await.unwrap();
    publish(&bus, &bad).await;
    let letter = tokio::time::timeout(Duration::from_secs(30), dead.recv())
        .await
        .expect("the swallowed failure is dead-lettered")
        .unwrap();
    assert_eq!(letter.message_id(), bad);

    let mut dead_letters = Vec::new();
    for _ in 0..200 {
        publish(&bus, &new_id()).await;
        while let Some(letter) = dead.try_recv() {
            dead_letters.push(letter.reason().to_owned());
        }
    }
    assert!(
        dead_letters.is_empty(),
        "{} of 200 messages dead-lettered, the first: {:?}",
        dead_letters.len(),
        dead_letters.first()
    );
    assert_eq!(handled.load(Ordering::SeqCst), 200, "every message handled");
    assert!(
        letter.reason().contains("aborted"),
        "the reason names the aborted transaction: {}",
        letter.reason()
    );
}

/// A slow `once` handler that writes nothing holds no transaction id, so readers of the
/// global order (projections, the relay, timers wait on the same horizon) see events
/// appended meanwhile at once. Its claim still makes it run once: a copy of the message
/// delivered by another process at the same time waits for it and is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_once_handler_does_not_hold_readers_back() {
    let Some(store) = postgres_store().await else {
        return;
    };
    let other = Store::postgres(&support::services::postgres_url())
        .await
        .unwrap();
    let started = Arc::new(tokio::sync::Notify::new());
    let runs = Arc::new(AtomicU32::new(0));
    let handler = format!("slow-{}", new_id());
    let slow = |started: Arc<tokio::sync::Notify>, runs: Arc<AtomicU32>| {
        Subscription::events::<Event<OrderPlaced>, _, _>(handler.clone(), move |_, _| {
            let started = started.clone();
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                started.notify_one();
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok(())
            }
        })
        .with_once()
    };
    // Two processes: two buses, each with its own inbox on its own store handle.
    let a = Bus::in_process().with_inbox(&store);
    let b = Bus::in_process().with_inbox(&other);
    a.subscribe(slow(started.clone(), runs.clone()))
        .await
        .unwrap();
    b.subscribe(slow(started.clone(), runs.clone()))
        .await
        .unwrap();
    let id = new_id();
    let first = tokio::spawn({
        let (a, id) = (a.clone(), id.clone());
        async move { publish(&a, &id).await }
    });
    tokio::time::timeout(Duration::from_secs(10), started.notified())
        .await
        .expect("the handler starts");
    let copy = tokio::spawn({
        let (b, id) = (b.clone(), id.clone());
        async move { publish(&b, &id).await }
    });

    let mut delays = Vec::new();
    for _ in 0..5 {
        let appended = store
            .append(
                &support::store_suite::unique("meanwhile"),
                orkestra_runtime::ExpectedVersion::NoStream,
                vec![support::store_suite::placed("m", 1)],
            )
            .await
            .unwrap();
        let appended_at = std::time::Instant::now();
        loop {
            let seen = store.read_all(appended.last_position, 1).await.unwrap();
            if seen
                .first()
                .is_some_and(|e| e.position() == appended.last_position)
            {
                break;
            }
            assert!(
                appended_at.elapsed() < Duration::from_secs(3),
                "an event appended while the once handler runs is not visible to readers after 3 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        delays.push(appended_at.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("visible after {delays:?}");
    delays.sort();
    assert!(
        delays[2] < Duration::from_millis(100),
        "readers are held back by the running handler: {delays:?}"
    );
    first.await.unwrap();
    copy.await.unwrap();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the copy delivered meanwhile by another process is skipped"
    );
}

#[tokio::test]
async fn a_bounded_memory_inbox_forgets_the_oldest() {
    let bus = Bus::in_process().with_inbox(Inbox::memory(2));
    let runs = Arc::new(AtomicU32::new(0));
    bus.subscribe(counting("bounded", runs.clone(), Arc::default()))
        .await
        .unwrap();
    let ids: Vec<String> = (0..3).map(|_| new_id()).collect();
    for id in &ids {
        publish(&bus, id).await;
    }
    publish(&bus, &ids[2]).await;
    publish(&bus, &ids[1]).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "the last two are remembered"
    );
    publish(&bus, &ids[0]).await;
    assert_eq!(runs.load(Ordering::SeqCst), 4, "the oldest was forgotten");
}

/// The relay publishes an event again after a crash: two broker messages with the same
/// id. A `once` handler consuming with concurrency runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_copies_run_once() {
    let config = rabbit_config();
    let Some(bus) = rabbit_bus_with(&config).await else {
        return;
    };
    let runs = Arc::new(AtomicU32::new(0));
    bus.subscribe(counting("once-rabbit", runs.clone(), Arc::default()).with_concurrency(8))
        .await
        .unwrap();
    let ids: Vec<String> = (0..20).map(|_| new_id()).collect();
    for id in ids.iter().chain(&ids).chain(&ids) {
        publish(&bus, id).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while runs.load(Ordering::SeqCst) < 20 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give any second run the time to happen.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 20);
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}
