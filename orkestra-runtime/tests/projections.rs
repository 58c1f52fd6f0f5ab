//! Durable projections (`book/src/projections.md`) on memory, SQLite and PostgreSQL:
//! catch-up then live, status and lag, read-your-writes, restart from the checkpoint,
//! rebuild, failures that stop one projection at the failing event (never skipping it),
//! panics, a checkpoint ahead of the head, and exactly-once read models on PostgreSQL.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orkestra_runtime::projection::{
    Projection, ProjectionContext, ProjectionError, ProjectionHandler, ProjectionState, Projections,
};
use orkestra_runtime::{Event, EventData, ExpectedVersion, HandlerError, Metadata, Store};
use support::payloads::*;
use support::store_suite::{placed, unique};

const WAIT: Duration = Duration::from_secs(20);

fn cancelled(order: &str) -> EventData {
    let ev = Event::new(
        OrderCancelled {
            order_id: order.into(),
        },
        Metadata::new(),
    )
    .unwrap();
    EventData::from_event(&ev).unwrap()
}

fn ping(n: i64) -> EventData {
    EventData::from_event(&Event::new(Ping { n }, Metadata::new()).unwrap()).unwrap()
}

fn temp_db() -> std::path::PathBuf {
    std::env::temp_dir()
        .join(format!("orkestra-proj-{}", uuid::Uuid::new_v4().simple()))
        .join("events.db")
}

/// Quantities per order, from `OrderPlaced`/`OrderCancelled`, for one test's orders.
#[derive(Clone, Default)]
struct Totals {
    prefix: String,
    seen: Arc<Mutex<Vec<(u64, bool)>>>,
    totals: Arc<Mutex<BTreeMap<String, i64>>>,
}

impl Totals {
    fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            ..Self::default()
        }
    }
    fn positions(&self) -> Vec<u64> {
        self.seen.lock().unwrap().iter().map(|s| s.0).collect()
    }
}

impl ProjectionHandler for Totals {
    type Event = OrderProjectorEvent;

    async fn handle(
        &self,
        event: OrderProjectorEvent,
        ctx: ProjectionContext<'_>,
    ) -> Result<(), HandlerError> {
        let (order, delta) = match &event {
            OrderProjectorEvent::OrderPlaced(e) => (e.data.order_id.clone(), e.data.quantity),
            OrderProjectorEvent::OrderCancelled(e) => (e.data.order_id.clone(), -1000),
        };
        if !order.starts_with(&self.prefix) {
            return Ok(());
        }
        self.seen
            .lock()
            .unwrap()
            .push((ctx.position(), ctx.is_replay()));
        *self.totals.lock().unwrap().entry(order).or_default() += delta;
        Ok(())
    }
}

/// Fails (or panics) on one order id, counting attempts; handles the rest.
#[derive(Clone)]
struct FailsOn {
    order: String,
    panic: bool,
    reject: bool,
    attempts: Arc<AtomicU32>,
    handled: Arc<Mutex<Vec<String>>>,
}

impl FailsOn {
    fn new(order: &str) -> Self {
        Self {
            order: order.to_owned(),
            panic: false,
            reject: false,
            attempts: Arc::default(),
            handled: Arc::default(),
        }
    }
}

impl ProjectionHandler for FailsOn {
    type Event = Event<OrderPlaced>;

    async fn handle(
        &self,
        event: Event<OrderPlaced>,
        _ctx: ProjectionContext<'_>,
    ) -> Result<(), HandlerError> {
        if event.data.order_id == self.order {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            if self.panic {
                panic!("boom on {}", self.order);
            }
            if self.reject {
                return Err(HandlerError::reject("never valid"));
            }
            return Err(HandlerError::fail("the read model is down"));
        }
        // Other tests append to a shared database meanwhile: only this test's orders.
        let prefix = self.order.trim_end_matches("-bad");
        if event.data.order_id.starts_with(prefix) {
            self.handled.lock().unwrap().push(event.data.order_id);
        }
        Ok(())
    }
}

async fn append(store: &Store, events: Vec<EventData>) -> u64 {
    store
        .append(&unique("orders"), ExpectedVersion::NoStream, events)
        .await
        .unwrap()
        .last_position
}

async fn state_of(
    running: &orkestra_runtime::projection::RunningProjections,
    name: &str,
) -> ProjectionState {
    running
        .status()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap()
        .state
}

async fn wait_state(
    running: &orkestra_runtime::projection::RunningProjections,
    name: &str,
    want: impl Fn(&ProjectionState) -> bool,
) -> ProjectionState {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let state = state_of(running, name).await;
        if want(&state) {
            return state;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stuck in {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `from_start`: the store holds only this test's events (a rebuild replays them all);
/// otherwise (the shared PostgreSQL database, whose history other suites fill with
/// deliberately unreadable events) it starts at the head and does not rebuild.
async fn catch_up_then_live_and_resume(store: Store, from_start: bool) {
    let p = unique("o");
    let name = unique("totals");
    if !from_start && let Some(h) = store.head().await.unwrap() {
        store.save_checkpoint(&name, Some(h)).await.unwrap();
    }
    append(
        &store,
        vec![placed(&format!("{p}-a"), 2), placed(&format!("{p}-b"), 3)],
    )
    .await;
    let totals = Totals::new(&p);
    let projections = Projections::new(store.clone())
        .add(Projection::new(name.clone(), totals.clone()).with_batch(2));
    let running = projections.start().await.unwrap();
    // Live: events after the start, other types in between (skipped, not failing).
    append(&store, vec![ping(1), cancelled(&format!("{p}-a"))]).await;
    let last = append(&store, vec![placed(&format!("{p}-c"), 5)]).await;
    running.wait_for(&name, last).await.unwrap();
    assert_eq!(
        totals.totals.lock().unwrap().clone(),
        BTreeMap::from([
            (format!("{p}-a"), 2 - 1000),
            (format!("{p}-b"), 3),
            (format!("{p}-c"), 5)
        ])
    );
    let positions = totals.positions();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert!(
        totals.seen.lock().unwrap().iter().all(|s| !s.1),
        "no replay"
    );
    wait_state(&running, &name, |s| *s == ProjectionState::Live).await;
    let status = &running.status()[0];
    assert!(status.checkpoint >= Some(last));
    running.stop().await.unwrap();
    assert!(Projections::checkpoint(&store, &name).await.unwrap() >= Some(last));

    // A restart resumes after the checkpoint: nothing handled twice.
    let before = totals.positions().len();
    let last = append(&store, vec![placed(&format!("{p}-d"), 7)]).await;
    let running = projections.start().await.unwrap();
    running.wait_for(&name, last).await.unwrap();
    assert_eq!(totals.positions().len(), before + 1);
    Projections::wait_until(&store, &name, last, WAIT)
        .await
        .unwrap();
    let err = Projections::wait_until(&store, &name, u64::MAX, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, ProjectionError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains(&name), "{err}");
    // Started twice: refused.
    assert!(matches!(
        projections.start().await,
        Err(ProjectionError::AlreadyRunning(_))
    ));

    if !from_start {
        running.stop().await.unwrap();
        return;
    }
    // Rebuild while running: everything again, as a replay, in order.
    projections.rebuild(&name).await.unwrap();
    let seen = totals.seen.lock().unwrap().clone();
    let replayed: Vec<_> = seen[before + 1..].to_vec();
    assert_eq!(replayed.len(), before + 1, "{replayed:?}");
    assert!(replayed.iter().all(|s| s.1), "{replayed:?}");
    running.stop().await.unwrap();
    // And while stopped.
    projections.rebuild(&name).await.unwrap();
    assert_eq!(totals.positions().len(), 3 * (before + 1));
    assert!(Projections::checkpoint(&store, &name).await.unwrap() >= Some(last));
}

async fn a_failing_event_stops_only_its_projection(store: Store, panic: bool) {
    let p = unique("f");
    let bad = format!("{p}-bad");
    let failing_name = unique("failing");
    let healthy_name = unique("healthy");
    let failing = FailsOn {
        panic,
        ..FailsOn::new(&bad)
    };
    let healthy = Totals::new(&p);
    let start = store.head().await.unwrap();
    let projections = Projections::new(store.clone())
        .add(
            Projection::new(failing_name.clone(), failing.clone())
                .with_max_retries(2)
                .with_retry_delay(Duration::from_millis(10)),
        )
        .add(Projection::new(healthy_name.clone(), healthy.clone()));
    // Start both at the current head (other tests' events are not ours to wait for).
    if let Some(h) = start {
        store.save_checkpoint(&failing_name, Some(h)).await.unwrap();
        store.save_checkpoint(&healthy_name, Some(h)).await.unwrap();
    }
    let running = projections.start().await.unwrap();
    let good = append(&store, vec![placed(&format!("{p}-ok"), 1)]).await;
    let bad_at = append(&store, vec![placed(&bad, 1)]).await;
    let last = append(&store, vec![placed(&format!("{p}-after"), 1)]).await;
    let state = wait_state(&running, &failing_name, |s| {
        matches!(s, ProjectionState::Failed(_))
    })
    .await;
    let ProjectionState::Failed(error) = state else {
        unreachable!()
    };
    assert!(error.contains(&bad_at.to_string()), "{error}");
    assert!(
        error.contains(if panic { "panicked" } else { "down" }),
        "{error}"
    );
    assert_eq!(
        failing.attempts.load(Ordering::SeqCst),
        3,
        "1 try + 2 retries"
    );
    // Never skipped: the checkpoint is right before the failing event.
    let checkpoint = Projections::checkpoint(&store, &failing_name)
        .await
        .unwrap();
    assert!(
        checkpoint >= Some(good) && checkpoint < Some(bad_at),
        "{checkpoint:?}"
    );
    // Only the event before the failing one was handled. On PostgreSQL a batch holding
    // both is rolled back and replayed one event per transaction, so the handler may have
    // seen it twice (its first writes were rolled back): count what it saw, not how often.
    let handled = failing.handled.lock().unwrap().clone();
    assert!(
        !handled.is_empty(),
        "the event before the failing one was handled"
    );
    assert!(
        handled.iter().all(|o| *o == format!("{p}-ok")),
        "{handled:?}"
    );
    let err = running.wait_for(&failing_name, last).await.unwrap_err();
    assert!(matches!(err, ProjectionError::Failed { .. }), "{err}");
    // The other projection went on.
    running.wait_for(&healthy_name, last).await.unwrap();
    assert_eq!(healthy.positions().len(), 3);
    running.stop().await.unwrap();
}

async fn a_checkpoint_ahead_of_the_head_is_an_error(store: Store) {
    append(&store, vec![placed("ahead", 1)]).await;
    let head = store.head().await.unwrap().unwrap();
    let name = unique("ahead");
    // Far ahead: PostgreSQL positions grow in large steps while other tests append.
    let ahead = head + (1 << 50);
    store.save_checkpoint(&name, Some(ahead)).await.unwrap();
    let err = Projections::new(store.clone())
        .add(Projection::new(name.clone(), Totals::new("x")))
        .start()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ProjectionError::AheadOfStore { .. }),
        "{text}"
    );
    assert!(text.contains(&ahead.to_string()), "{text}");
    assert!(text.contains(&name), "{text}");
    // Duplicate names are refused too.
    let err = Projections::new(store.clone())
        .add(Projection::new("twice", Totals::new("x")))
        .add(Projection::new("twice", Totals::new("x")))
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, ProjectionError::Duplicate(_)), "{err}");
}

/// Waits at `{prefix}-block` until opened.
#[derive(Clone)]
struct Gate {
    prefix: String,
    open: Arc<tokio::sync::watch::Sender<bool>>,
}

impl ProjectionHandler for Gate {
    type Event = Event<OrderPlaced>;

    async fn handle(
        &self,
        event: Event<OrderPlaced>,
        _ctx: ProjectionContext<'_>,
    ) -> Result<(), HandlerError> {
        if event.data.order_id == format!("{}-block", self.prefix) {
            let mut open = self.open.subscribe();
            let _ = open.wait_for(|o| *o).await;
        }
        Ok(())
    }
}

/// The lag is a number of events (not of positions, which on PostgreSQL are over a
/// million apart for two events), with the age of the oldest event not yet handled.
async fn lag_is_counted_in_events_with_the_age_of_the_oldest(store: Store) {
    let p = unique("lag");
    let name = unique("lagging");
    if let Some(h) = store.head().await.unwrap() {
        store.save_checkpoint(&name, Some(h)).await.unwrap();
    }
    let gate = Gate {
        prefix: p.clone(),
        open: Arc::new(tokio::sync::watch::Sender::new(false)),
    };
    let running = Projections::new(store.clone())
        .add(Projection::new(name.clone(), gate.clone()).with_batch(1))
        .start()
        .await
        .unwrap();
    append(&store, vec![placed(&format!("{p}-block"), 1)]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let last = append(
        &store,
        vec![placed(&format!("{p}-b"), 1), placed(&format!("{p}-c"), 1)],
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        let status = running.status().remove(0);
        if status.head >= Some(last) && status.lag >= 3 {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Other tests may append to a shared database meanwhile (a hundred or so): a few
    // more, not the millions of positions between them.
    assert!(status.lag < 1_000, "the lag is in events: {status:?}");
    let age = status.oldest_unhandled_age.expect("an event is waiting");
    assert!(
        age >= Duration::from_secs(1) && age < Duration::from_secs(60),
        "the oldest waiting event was recorded over a second ago: {status:?}"
    );
    gate.open.send_replace(true);
    running.wait_for(&name, last).await.unwrap();
    let status = running.status().remove(0);
    if status.head == status.checkpoint {
        assert_eq!((status.lag, status.oldest_unhandled_age), (0, None));
    }
    running.stop().await.unwrap();
}

/// `checkpoint: none`: each launch replays from the start (history as replays, live
/// events not), nothing is stored under its name (a checkpoint saved there stays as it
/// was, and wait_until does not see it), and a stored projection beside it keeps its
/// own checkpoint and resumes from it.
async fn without_a_checkpoint_each_launch_replays_from_the_start(store: Store) {
    let p = unique("n");
    let name = unique("in-memory");
    let stored = unique("stored");
    let first = append(&store, vec![placed(&format!("{p}-a"), 1)]).await;
    let second = append(&store, vec![placed(&format!("{p}-b"), 2)]).await;
    // Another copy's checkpoint under the same name, and where the stored one begins.
    store.save_checkpoint(&name, Some(first)).await.unwrap();
    store.save_checkpoint(&stored, Some(second)).await.unwrap();
    let mut launches = Vec::new();
    for launch in 0..2 {
        let memory = Totals::new(&p);
        let kept = Totals::new(&p);
        let running = Projections::new(store.clone())
            .add(Projection::new(name.clone(), memory.clone()).without_checkpoint())
            .add(Projection::new(stored.clone(), kept.clone()))
            .start()
            .await
            .unwrap();
        let live = append(&store, vec![placed(&format!("{p}-live{launch}"), 3)]).await;
        running.wait_for(&name, live).await.unwrap();
        running.wait_for(&stored, live).await.unwrap();
        if launch == 1 {
            // A rebuild replays in memory too, and stores nothing either.
            projections_rebuild(&store, &name, &memory).await;
        }
        running.stop().await.unwrap();
        assert_eq!(
            Projections::checkpoint(&store, &name).await.unwrap(),
            Some(first),
            "nothing is stored under the name"
        );
        assert_eq!(
            Projections::checkpoint(&store, &stored).await.unwrap(),
            Some(live)
        );
        launches.push((memory.seen.lock().unwrap().clone(), kept.positions(), live));
    }
    let (seen, kept, live0) = &launches[0];
    assert_eq!(
        seen,
        &vec![(first, true), (second, true), (*live0, false)],
        "the first launch from the start"
    );
    assert_eq!(kept, &vec![*live0]);
    let (seen, kept, live1) = &launches[1];
    assert_eq!(
        seen[..4].to_vec(),
        vec![
            (first, true),
            (second, true),
            (*live0, true),
            (*live1, false)
        ],
        "the second launch from the start again"
    );
    assert_eq!(
        kept,
        &vec![*live1],
        "the stored one resumed from its checkpoint"
    );
    let err = Projections::wait_until(&store, &name, *live1, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, ProjectionError::Timeout { .. }), "{err}");
}

/// Per stream, the versions in the order handled and whether each was a replay.
type Versions = BTreeMap<String, Vec<(u64, bool)>>;

/// What a partitioned projection saw.
#[derive(Clone, Default)]
struct ByStream {
    prefix: String,
    seen: Arc<Mutex<Versions>>,
}

impl ProjectionHandler for ByStream {
    type Event = OrderProjectorEvent;

    async fn handle(
        &self,
        _event: OrderProjectorEvent,
        ctx: ProjectionContext<'_>,
    ) -> Result<(), HandlerError> {
        let recorded = ctx.recorded();
        if recorded.stream().starts_with(&self.prefix) {
            self.seen
                .lock()
                .unwrap()
                .entry(recorded.stream().to_owned())
                .or_default()
                .push((recorded.version(), ctx.is_replay()));
        }
        Ok(())
    }
}

impl ByStream {
    /// `streams` streams, every one's versions from 0 exactly once and in order,
    /// `events` in all.
    fn assert_each_once_in_order(&self, streams: usize, events: usize) {
        let seen = self.seen.lock().unwrap();
        assert_eq!(seen.len(), streams, "{seen:?}");
        for (stream, versions) in seen.iter() {
            let versions: Vec<u64> = versions.iter().map(|v| v.0).collect();
            assert_eq!(
                versions,
                (0..versions.len() as u64).collect::<Vec<_>>(),
                "stream {stream}: each event once, in order"
            );
        }
        assert_eq!(seen.values().map(Vec::len).sum::<usize>(), events);
    }
}

/// Appends `per_stream` events to each of `streams` streams named `{prefix}-{i}`; the
/// last position.
async fn append_streams(store: &Store, prefix: &str, streams: usize, per_stream: u64) -> u64 {
    let mut last = 0;
    for i in 0..streams {
        let events = (0..per_stream)
            .map(|n| placed(&format!("{prefix}-{i}-{n}"), 1))
            .collect();
        last = store
            .append(&format!("{prefix}-{i}"), ExpectedVersion::NoStream, events)
            .await
            .unwrap()
            .last_position;
    }
    last
}

/// Partitions: a copy alone works them all, side by side, each stream in order; a second
/// copy (its own owner) takes half, a stopped copy's go to the other at once; another
/// count is refused naming both, and a rebuild changes it (`rebuild`: the store holds
/// only this test's events).
async fn partitions_share_the_streams_and_a_new_count_needs_a_rebuild(store: Store, rebuild: bool) {
    let prefix = unique("part");
    let name = unique("by-stream");
    if !rebuild && let Some(h) = store.head().await.unwrap() {
        store.save_checkpoint(&name, Some(h)).await.unwrap();
    }
    let seen = ByStream {
        prefix: prefix.clone(),
        ..ByStream::default()
    };
    let projection = || Projection::new(name.clone(), seen.clone()).with_batch(7);
    let a = Projections::new(store.clone())
        .with_owner("copy-a")
        .with_lease(Duration::from_secs(2))
        .add(projection().with_partitions(4))
        .start()
        .await
        .unwrap();
    let status = a.status();
    assert_eq!(
        status
            .iter()
            .map(|s| (s.partition, s.partitions))
            .collect::<Vec<_>>(),
        [(0, 4), (1, 4), (2, 4), (3, 4)],
        "{status:?}"
    );
    assert!(status.iter().all(|s| s.owner.as_deref() == Some("copy-a")));
    let last = append_streams(&store, &prefix, 12, 5).await;
    a.wait_for(&name, last).await.unwrap();
    seen.assert_each_once_in_order(12, 60);

    // A second copy: the partitions are shared 2 and 2, and the work goes on once.
    let b = Projections::new(store.clone())
        .with_owner("copy-b")
        .with_lease(Duration::from_secs(2))
        .add(projection().with_partitions(4))
        .start()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while (a.status().len(), b.status().len()) != (2, 2) {
        assert!(
            std::time::Instant::now() < deadline,
            "shared: {:?} / {:?}",
            a.status(),
            b.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = append_streams(&store, &format!("{prefix}m"), 12, 3).await;
    Projections::wait_until(&store, &name, last, Duration::from_secs(20))
        .await
        .unwrap();
    // A graceful stop hands the partitions over at once.
    let stopped = std::time::Instant::now();
    a.stop().await.unwrap();
    while b.status().len() != 4 {
        assert!(
            stopped.elapsed() < Duration::from_secs(2),
            "handed over: {:?}",
            b.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = append_streams(&store, &format!("{prefix}n"), 4, 2).await;
    b.wait_for(&name, last).await.unwrap();
    b.stop().await.unwrap();
    seen.assert_each_once_in_order(12 + 12 + 4, 60 + 36 + 8);

    // Another count: refused, naming both and the way out.
    let err = Projections::new(store.clone())
        .add(projection().with_partitions(3))
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProjectionError::PartitionsChanged {
                stored: 4,
                configured: 3,
                ..
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("4 partitions in the store but 3 configured")
            && text.contains(&format!(
                "orkestra projection rebuild {name} --partitions 3"
            )),
        "{text}"
    );
    if !rebuild {
        return;
    }
    // A rebuild with the new count replays everything into 3 partitions.
    seen.seen.lock().unwrap().clear();
    let three = Projections::new(store.clone()).add(projection().with_partitions(3));
    three.rebuild(&name).await.unwrap();
    {
        let seen = seen.seen.lock().unwrap();
        assert_eq!(seen.len(), 28);
        assert!(
            seen.values().flatten().all(|(_, replay)| *replay),
            "{seen:?}"
        );
    }
    let running = three.start().await.unwrap();
    assert_eq!(running.status().len(), 3);
    running.stop().await.unwrap();
}

/// Rebuilds `name` alone (a projection set of its own, not running).
async fn projections_rebuild(store: &Store, name: &str, totals: &Totals) {
    let before = totals.positions().len();
    Projections::new(store.clone())
        .add(Projection::new(name, totals.clone()).without_checkpoint())
        .rebuild(name)
        .await
        .unwrap();
    assert!(totals.positions().len() > before);
}

/// `Projections::solo`: the projection runs whole without leases (no lease record, the
/// checkpoint of its name, resumed from it by the next solo start), and a projection that
/// ran with leases is refused solo (its checkpoints are in them).
async fn solo_runs_without_leases_and_refuses_a_leased_projection(store: Store) {
    let p = unique("solo");
    let name = unique("solo-totals");
    let head = store.head().await.unwrap();
    store.save_checkpoint(&name, head).await.unwrap();
    let totals = Totals::new(&p);
    let running = Projections::new(store.clone())
        .add(Projection::new(&name, totals.clone()).with_partitions(4))
        .solo()
        .start()
        .await
        .unwrap();
    let first = append(&store, vec![placed(&format!("{p}-a"), 2)]).await;
    running.wait_for(&name, first).await.unwrap();
    running.stop().await.unwrap();
    let leases = store.leases().await.unwrap();
    assert!(
        leases
            .list()
            .await
            .unwrap()
            .iter()
            .all(|r| r.worker != name),
        "a solo projection took no lease"
    );
    // Its own checkpoint (other tests may append to a shared database meanwhile).
    let saved = store.load_checkpoint(&name).await.unwrap();
    assert!(saved >= Some(first), "{saved:?} < {first}");
    // Resumed from its checkpoint: the first event is not applied again.
    let second = append(&store, vec![placed(&format!("{p}-a"), 3)]).await;
    let running = Projections::new(store.clone())
        .solo()
        .add(Projection::new(&name, totals.clone()))
        .start()
        .await
        .unwrap();
    running.wait_for(&name, second).await.unwrap();
    running.stop().await.unwrap();
    assert_eq!(totals.positions(), [first, second]);
    assert_eq!(totals.totals.lock().unwrap()[&format!("{p}-a")], 5);

    // With leases once, solo never again.
    let leased = unique("leased-totals");
    store.save_checkpoint(&leased, head).await.unwrap();
    let running = Projections::new(store.clone())
        .add(Projection::new(&leased, Totals::new(&p)))
        .start()
        .await
        .unwrap();
    running.stop().await.unwrap();
    let refused = Projections::new(store.clone())
        .solo()
        .add(Projection::new(&leased, Totals::new(&p)))
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ProjectionError::Leased(n) if *n == leased),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("cannot run solo"), "{refused}");
}

mod memory {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn solo_runs_without_leases_and_refuses_a_leased_projection() {
        super::solo_runs_without_leases_and_refuses_a_leased_projection(Store::memory()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partitions_share_the_streams_and_a_new_count_needs_a_rebuild() {
        super::partitions_share_the_streams_and_a_new_count_needs_a_rebuild(Store::memory(), true)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lag_is_counted_in_events_with_the_age_of_the_oldest() {
        super::lag_is_counted_in_events_with_the_age_of_the_oldest(Store::memory()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_checkpoint_each_launch_replays_from_the_start() {
        super::without_a_checkpoint_each_launch_replays_from_the_start(Store::memory()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn catch_up_then_live_and_resume() {
        super::catch_up_then_live_and_resume(Store::memory(), true).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_event_stops_only_its_projection() {
        super::a_failing_event_stops_only_its_projection(Store::memory(), false).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_is_a_failure() {
        super::a_failing_event_stops_only_its_projection(Store::memory(), true).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkpoint_ahead_of_the_head_is_an_error() {
        super::a_checkpoint_ahead_of_the_head_is_an_error(Store::memory()).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_empty_store_with_a_checkpoint_is_ahead() {
        let store = Store::memory();
        store.save_checkpoint("p", Some(0)).await.unwrap();
        let err = Projections::new(store)
            .add(Projection::new("p", Totals::new("x")))
            .start()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rejection_is_not_retried() {
        let store = Store::memory();
        let failing = FailsOn {
            reject: true,
            ..FailsOn::new("r")
        };
        let running = Projections::new(store.clone())
            .add(Projection::new("r", failing.clone()))
            .start()
            .await
            .unwrap();
        append(&store, vec![placed("r", 1)]).await;
        wait_state(&running, "r", |s| matches!(s, ProjectionState::Failed(_))).await;
        assert_eq!(failing.attempts.load(Ordering::SeqCst), 1);
        assert_eq!(Projections::checkpoint(&store, "r").await.unwrap(), None);
        running.stop().await.unwrap();
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_names_are_errors() {
        let store = Store::memory();
        let projections = Projections::new(store.clone());
        assert!(matches!(
            projections.rebuild("nope").await,
            Err(ProjectionError::Unknown(_))
        ));
        let running = projections.start().await.unwrap();
        assert!(matches!(
            running.wait_for("nope", 0).await,
            Err(ProjectionError::Unknown(_))
        ));
        running.stop().await.unwrap();
    }
}

mod sqlite {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn solo_runs_without_leases_and_refuses_a_leased_projection() {
        let store = Store::sqlite(temp_db()).await.unwrap();
        super::solo_runs_without_leases_and_refuses_a_leased_projection(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partitions_share_the_streams_and_a_new_count_needs_a_rebuild() {
        let store = Store::sqlite(temp_db()).await.unwrap();
        super::partitions_share_the_streams_and_a_new_count_needs_a_rebuild(store, true).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lag_is_counted_in_events_with_the_age_of_the_oldest() {
        let store = Store::sqlite(temp_db()).await.unwrap();
        super::lag_is_counted_in_events_with_the_age_of_the_oldest(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_checkpoint_each_launch_replays_from_the_start() {
        let store = Store::sqlite(temp_db()).await.unwrap();
        super::without_a_checkpoint_each_launch_replays_from_the_start(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn catch_up_then_live_and_resume() {
        let store = Store::sqlite(temp_db()).await.unwrap();
        super::catch_up_then_live_and_resume(store, true).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_event_stops_only_its_projection() {
        let store = Store::sqlite(temp_db()).await.unwrap();
        super::a_failing_event_stops_only_its_projection(store, false).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkpoint_ahead_of_the_head_is_an_error() {
        let store = Store::sqlite(temp_db()).await.unwrap();
        super::a_checkpoint_ahead_of_the_head_is_an_error(store).await;
    }
}

mod postgres {
    use super::*;

    /// A read model in PostgreSQL written through `ctx.postgres()`: one row per order,
    /// and a row per handled event id whose primary key makes a double apply an error.
    #[derive(Clone)]
    struct PgTotals {
        prefix: String,
        table: String,
        fail_on: Option<String>,
        failures: Arc<AtomicU32>,
    }

    impl ProjectionHandler for PgTotals {
        type Event = Event<OrderPlaced>;

        async fn handle(
            &self,
            event: Event<OrderPlaced>,
            ctx: ProjectionContext<'_>,
        ) -> Result<(), HandlerError> {
            // Other tests append to the same database meanwhile.
            if !event.data.order_id.starts_with(&self.prefix) {
                return Ok(());
            }
            let tx = ctx
                .postgres()
                .ok_or_else(|| HandlerError::reject("not on PostgreSQL"))?;
            tx.execute(
                &format!(
                    "INSERT INTO {} (order_id, quantity) VALUES ($1, $2) \
                     ON CONFLICT (order_id) DO UPDATE SET quantity = {0}.quantity + excluded.quantity",
                    self.table
                ),
                &[&event.data.order_id, &event.data.quantity],
            )
            .await
            .map_err(HandlerError::fail)?;
            tx.execute(
                &format!("INSERT INTO {}_seen (event_id) VALUES ($1)", self.table),
                &[&event.id],
            )
            .await
            .map_err(HandlerError::fail)?;
            if self.fail_on.as_deref() == Some(event.data.order_id.as_str()) {
                self.failures.fetch_add(1, Ordering::SeqCst);
                return Err(HandlerError::fail("refused after writing"));
            }
            Ok(())
        }
    }

    async fn client() -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(
            support::services::postgres_url().expose(),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        client
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn solo_runs_without_leases_and_refuses_a_leased_projection() {
        let Some(store) = support::services::postgres_store().await else {
            return;
        };
        super::solo_runs_without_leases_and_refuses_a_leased_projection(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partitions_share_the_streams_and_a_new_count_needs_a_rebuild() {
        let Some(store) = support::services::postgres_store().await else {
            return;
        };
        super::partitions_share_the_streams_and_a_new_count_needs_a_rebuild(store, false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn catch_up_then_live_and_resume() {
        let Some(store) = support::services::postgres_store().await else {
            return;
        };
        super::catch_up_then_live_and_resume(store, false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_event_stops_only_its_projection() {
        let Some(store) = support::services::postgres_store().await else {
            return;
        };
        super::a_failing_event_stops_only_its_projection(store, true).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lag_is_counted_in_events_with_the_age_of_the_oldest() {
        let Some(store) = support::services::postgres_store().await else {
            return;
        };
        super::lag_is_counted_in_events_with_the_age_of_the_oldest(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkpoint_ahead_of_the_head_is_an_error() {
        let Some(store) = support::services::postgres_store().await else {
            return;
        };
        super::a_checkpoint_ahead_of_the_head_is_an_error(store).await;
    }

    /// A proxy in front of PostgreSQL that, once armed, lets the next `COMMIT` through
    /// to the server but holds back everything the server answers from then on: the
    /// commit happens, its answer never arrives. The connection ends when the server
    /// side does (the test terminates the backend).
    struct CommitEater {
        port: u16,
        armed: Arc<std::sync::atomic::AtomicBool>,
        eaten: Arc<tokio::sync::Notify>,
        accept: tokio::task::AbortHandle,
    }

    impl CommitEater {
        async fn start(upstream: String) -> Self {
            use std::sync::atomic::AtomicBool;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let armed = Arc::new(AtomicBool::new(false));
            let eaten = Arc::new(tokio::sync::Notify::new());
            let (a, n) = (armed.clone(), eaten.clone());
            let accept = tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream.clone()).await else {
                        continue;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let swallow = Arc::new(AtomicBool::new(false));
                    let (a, n, s) = (a.clone(), n.clone(), swallow.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        // A simple query message: 'Q', its length (4 + 7), "COMMIT\0".
                        let commit = b"Q\0\0\0\x0bCOMMIT\0";
                        while let Ok(read) = client_read.read(&mut buf).await {
                            if read == 0 {
                                break;
                            }
                            let chunk = &buf[..read];
                            if chunk.windows(commit.len()).any(|w| w == commit)
                                && a.swap(false, Ordering::SeqCst)
                            {
                                s.store(true, Ordering::SeqCst);
                                n.notify_one();
                            }
                            if server_write.write_all(chunk).await.is_err() {
                                break;
                            }
                        }
                    });
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(read) = server_read.read(&mut buf).await {
                            if read == 0 {
                                break;
                            }
                            if swallow.load(Ordering::SeqCst) {
                                continue;
                            }
                            if client_write.write_all(&buf[..read]).await.is_err() {
                                break;
                            }
                        }
                        // The server side ended: so does the client's.
                        let _ = client_write.shutdown().await;
                    });
                }
            })
            .abort_handle();
            Self {
                port,
                armed,
                eaten,
                accept,
            }
        }
    }

    impl Drop for CommitEater {
        fn drop(&mut self) {
            self.accept.abort();
        }
    }

    /// `ORKESTRA_PG_URL` through `port` (host:port swapped), and the original host:port.
    fn through(port: u16, application_name: &str) -> (orkestra_runtime::SecretUrl, String) {
        let url = support::services::postgres_url().expose().to_owned();
        let at = url
            .find('@')
            .map_or(url.find("://").unwrap() + 3, |i| i + 1);
        let end = url[at..].find('/').map_or(url.len(), |i| at + i);
        let upstream = url[at..end].to_owned();
        let sep = if url.contains('?') { '&' } else { '?' };
        let proxied = format!(
            "{}127.0.0.1:{port}{}{sep}application_name={application_name}",
            &url[..at],
            &url[end..]
        );
        (orkestra_runtime::SecretUrl::new(proxied), upstream)
    }

    /// Counts each event a projection applies (a row per application, no key).
    #[derive(Clone)]
    struct Applied {
        prefix: String,
        table: String,
    }

    impl ProjectionHandler for Applied {
        type Event = Event<OrderPlaced>;

        async fn handle(
            &self,
            event: Event<OrderPlaced>,
            ctx: ProjectionContext<'_>,
        ) -> Result<(), HandlerError> {
            if !event.data.order_id.starts_with(&self.prefix) {
                return Ok(());
            }
            let tx = ctx
                .postgres()
                .ok_or_else(|| HandlerError::reject("not on PostgreSQL"))?;
            tx.execute(
                &format!("INSERT INTO {} (event_id) VALUES ($1)", self.table),
                &[&event.id],
            )
            .await
            .map_err(HandlerError::fail)?;
            Ok(())
        }
    }

    /// An ambiguous COMMIT: the server commits a batch with its checkpoint, the answer
    /// is lost as the backend is terminated (`pg_terminate_backend`). The projection must
    /// go on from the checkpoint the store holds, not apply the batch again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ambiguous_commit_does_not_apply_a_batch_twice() {
        let Some(store) = support::services::postgres_store().await else {
            return;
        };
        let pg = client().await;
        let table = format!("applied_{}", uuid::Uuid::new_v4().simple());
        pg.batch_execute(&format!("CREATE TABLE {table} (event_id TEXT NOT NULL)"))
            .await
            .unwrap();
        let p = unique("amb");
        let name = unique("ambiguous");
        if let Some(h) = store.head().await.unwrap() {
            store.save_checkpoint(&name, Some(h)).await.unwrap();
        }
        let mut last = 0;
        for n in 0..5 {
            last = append(&store, vec![placed(&format!("{p}-{n}"), 1)]).await;
        }
        let application = format!("amb{}", uuid::Uuid::new_v4().simple());
        let (_, upstream) = through(0, &application);
        let eater = CommitEater::start(upstream).await;
        let (url, _) = through(eater.port, &application);
        let proxied = Store::postgres(&url).await.unwrap();
        eater.armed.store(true, Ordering::SeqCst);
        let running = Projections::new(proxied.clone())
            .add(Projection::new(
                name.clone(),
                Applied {
                    prefix: p.clone(),
                    table: table.clone(),
                },
            ))
            .start()
            .await
            .unwrap();
        tokio::time::timeout(WAIT, eater.eaten.notified())
            .await
            .expect("the projection's COMMIT went through the proxy");
        // The server committed (the checkpoint moved); its answer is held back.
        let deadline = tokio::time::Instant::now() + WAIT;
        while Projections::checkpoint(&store, &name).await.unwrap() < Some(last) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the batch never committed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&application],
        )
        .await
        .unwrap();
        running.wait_for(&name, last).await.unwrap();
        // Let a wrong rewind show itself: it reads the batch again after a pause.
        let more = append(&store, vec![placed(&format!("{p}-after"), 1)]).await;
        running.wait_for(&name, more).await.unwrap();
        running.stop().await.unwrap();
        let row = pg
            .query_one(
                &format!("SELECT count(*), count(DISTINCT event_id) FROM {table}"),
                &[],
            )
            .await
            .unwrap();
        let (applied, distinct): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(
            (applied, distinct),
            (6, 6),
            "each event applied exactly once (the committed batch is not applied again)"
        );
        pg.batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
    }

    /// The read model and the checkpoint commit together: a failure inside a batch
    /// keeps the events before it exactly once, writes nothing of the failing one, and
    /// leaves the checkpoint right before it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_read_model_and_the_checkpoint_commit_together() {
        let Some(store) = support::services::postgres_store().await else {
            return;
        };
        let pg = client().await;
        let table = format!("proj_{}", uuid::Uuid::new_v4().simple());
        pg.batch_execute(&format!(
            "CREATE TABLE {table} (order_id TEXT PRIMARY KEY, quantity BIGINT NOT NULL);
             CREATE TABLE {table}_seen (event_id TEXT PRIMARY KEY);"
        ))
        .await
        .unwrap();
        let p = unique("pg");
        let name = unique("pg-totals");
        let handler = PgTotals {
            prefix: p.clone(),
            table: table.clone(),
            fail_on: Some(format!("{p}-bad")),
            failures: Arc::default(),
        };
        if let Some(h) = store.head().await.unwrap() {
            store.save_checkpoint(&name, Some(h)).await.unwrap();
        }
        // Everything stored before the start: one batch of five, the fourth fails.
        let mut positions = Vec::new();
        for (order, q) in [("a", 1), ("b", 2), ("a", 3), ("bad", 4), ("c", 5)] {
            positions.push(append(&store, vec![placed(&format!("{p}-{order}"), q)]).await);
        }
        let projections = Projections::new(store.clone()).add(
            Projection::new(name.clone(), handler.clone())
                .with_batch(500)
                .with_max_retries(1)
                .with_retry_delay(Duration::from_millis(10)),
        );
        let running = projections.start().await.unwrap();
        wait_state(&running, &name, |s| matches!(s, ProjectionState::Failed(_))).await;
        running.stop().await.unwrap();
        assert_eq!(
            Projections::checkpoint(&store, &name).await.unwrap(),
            Some(positions[2])
        );
        let rows = pg
            .query(
                &format!("SELECT order_id, quantity FROM {table} ORDER BY order_id"),
                &[],
            )
            .await
            .unwrap();
        let got: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(
            got,
            vec![(format!("{p}-a"), 4), (format!("{p}-b"), 2)],
            "the events before the failing one exactly once, nothing of it"
        );
        let seen: i64 = pg
            .query_one(&format!("SELECT count(*) FROM {table}_seen"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(seen, 3);
        // Fixed: the restart resumes at the failing event.
        let fixed = PgTotals {
            fail_on: None,
            ..handler
        };
        let running = Projections::new(store.clone())
            .add(Projection::new(name.clone(), fixed))
            .start()
            .await
            .unwrap();
        running.wait_for(&name, positions[4]).await.unwrap();
        running.stop().await.unwrap();
        let total: i64 = pg
            .query_one(&format!("SELECT sum(quantity)::bigint FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(total, 15);
        pg.batch_execute(&format!("DROP TABLE {table}; DROP TABLE {table}_seen;"))
            .await
            .unwrap();
    }
}
