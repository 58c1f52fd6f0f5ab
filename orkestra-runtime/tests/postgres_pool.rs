//! The PostgreSQL pool (issue 23, item 8): its size and wait timeout come from
//! `[store]`, a wait that times out names the settings, and projections catching up
//! never starve appends nor deadlock a handler that reads the store.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use orkestra_runtime::projection::{Projection, ProjectionContext, ProjectionHandler, Projections};
use orkestra_runtime::{Config, Event, ExpectedVersion, HandlerError, Store, StoreError};
use support::databases::FreshDatabase;
use support::payloads::OrderPlaced;
use support::store_suite::placed;

/// Reads the store for every event (the aggregate's stream) inside its batch's
/// transaction, slowly enough that every projection holds its transaction at once.
#[derive(Clone)]
struct Reader {
    store: Store,
    handled: Arc<AtomicU64>,
}

impl ProjectionHandler for Reader {
    type Event = Event<OrderPlaced>;

    async fn handle(
        &self,
        event: Event<OrderPlaced>,
        ctx: ProjectionContext<'_>,
    ) -> Result<(), HandlerError> {
        let stream = ctx.recorded().stream().to_owned();
        let tx = ctx
            .postgres()
            .ok_or_else(|| HandlerError::fail("not on PostgreSQL"))?;
        tx.execute("SELECT 1", &[])
            .await
            .map_err(HandlerError::fail)?;
        let read = self
            .store
            .read_stream(&stream, 0, 10)
            .await
            .map_err(HandlerError::fail)?;
        if read.is_empty() || event.data.quantity < 0 {
            return Err(HandlerError::fail("the event's stream is empty"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.handled.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

async fn store_for(db: &FreshDatabase, pool_size: Option<u32>, timeout_ms: Option<u32>) -> Store {
    let mut config = Config::default();
    config.store.adapter = orkestra_runtime::config::StoreAdapter::Postgres;
    config.store.url = Some(db.url());
    if let Some(size) = pool_size {
        config.store.pool_size = size;
    }
    if let Some(ms) = timeout_ms {
        config.store.pool_timeout_ms = ms;
    }
    Store::from_config(&config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_projections_catching_up_leave_room_for_appends_and_handler_reads() {
    let db = match FreshDatabase::create("pool").await {
        Ok(db) => db,
        Err(e) => return support::services::unavailable("PostgreSQL", &e),
    };
    // The default pool (16 connections).
    let store = store_for(&db, None, None).await;
    for s in 0..100 {
        let events = (0..20).map(|i| placed(&format!("o{s}-{i}"), i)).collect();
        store
            .append(&format!("order-{s}"), ExpectedVersion::NoStream, events)
            .await
            .unwrap();
    }
    let handled = Arc::new(AtomicU64::new(0));
    let mut projections = Projections::new(store.clone());
    for p in 0..20 {
        projections = projections.add(
            Projection::new(
                format!("reader-{p}"),
                Reader {
                    store: store.clone(),
                    handled: handled.clone(),
                },
            )
            .with_batch(50),
        );
    }
    let running = projections.start().await.unwrap();

    // Appends go on while all twenty catch up.
    let appender = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut last = 0;
            for i in 0..200 {
                let started = Instant::now();
                last = store
                    .append(
                        &format!("live-{i}"),
                        ExpectedVersion::NoStream,
                        vec![placed("live", i)],
                    )
                    .await
                    .unwrap()
                    .last_position;
                slowest = slowest.max(started.elapsed());
            }
            (slowest, last)
        })
    };
    let (slowest, last) = tokio::time::timeout(Duration::from_secs(60), appender)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "appends stalled behind twenty projections ({} events handled in 60 s)",
                handled.load(Ordering::Relaxed)
            )
        })
        .unwrap();
    eprintln!("slowest of 200 appends during the catch-up: {slowest:?}");
    assert!(
        slowest < Duration::from_secs(10),
        "an append waited {slowest:?}"
    );
    for p in 0..20 {
        tokio::time::timeout(
            Duration::from_secs(120),
            running.wait_for(&format!("reader-{p}"), last),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "reader-{p} did not catch up in 120 s ({} events handled): a deadlock",
                handled.load(Ordering::Relaxed)
            )
        })
        .unwrap();
    }
    assert_eq!(handled.load(Ordering::Relaxed), 20 * 2_200);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_a_connection_times_out_naming_the_settings() {
    let db = match FreshDatabase::create("pool_wait").await {
        Ok(db) => db,
        Err(e) => return support::services::unavailable("PostgreSQL", &e),
    };
    let store = store_for(&db, Some(2), Some(300)).await;
    store
        .append("held", ExpectedVersion::NoStream, vec![placed("a", 1)])
        .await
        .unwrap();
    // Two appends wait on a table lock held elsewhere, each holding a pooled connection.
    let locker = db.client().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE orkestra_events IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let blocked: Vec<_> = (0..2)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(
                        &format!("blocked-{i}"),
                        ExpectedVersion::NoStream,
                        vec![placed("b", i)],
                    )
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let error = tokio::time::timeout(Duration::from_secs(10), store.read_stream("held", 0, 10))
        .await
        .expect("a wait for a connection gives up within store.pool_timeout_ms")
        .unwrap_err();
    let waited = started.elapsed();
    let text = error.to_string();
    eprintln!("{text}");
    assert!(matches!(error, StoreError::Unavailable { .. }), "{text}");
    assert!(text.contains("store.pool_timeout_ms"), "{text}");
    assert!(text.contains("store.pool_size"), "{text}");
    assert!(text.contains("300 ms"), "{text}");
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    locker.batch_execute("COMMIT").await.unwrap();
    for b in blocked {
        b.await.unwrap().unwrap();
    }
    assert_eq!(store.read_stream("held", 0, 10).await.unwrap().len(), 1);
}
