//! Crash tests with real processes (`book/src/projections.md`): a child process of this
//! test binary (`crash_child`, chosen by `ORKESTRA_CRASH_ROLE`) is killed with SIGKILL,
//! then the parent restarts the work and checks the guarantees:
//!
//! - events appended in relay mode, the process killed before any publish: the relay
//!   publishes every event, in order (RabbitMQ);
//! - the relay killed mid-stream: after a restart every event has been published at
//!   least once (RabbitMQ);
//! - a PostgreSQL projection killed mid-batch while 4 writers append: the read model is
//!   the exact fold of all events and the checkpoint reaches the head;
//! - the same on SQLite with an idempotent projection.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orkestra_runtime::projection::{Projection, ProjectionContext, ProjectionHandler, Projections};
use orkestra_runtime::relay::Relay;
use orkestra_runtime::{
    Bus, Event, EventData, EventEnvelope, ExpectedVersion, HandlerError, Metadata, PublishMode,
    Store, Subscription,
};
use support::payloads::*;
use support::store_suite::{placed, unique};

const ROLE: &str = "ORKESTRA_CRASH_ROLE";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

fn temp_db(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("orkestra-crash-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A child's projection lease: short, so the parent takes over soon after the kill.
const CHILD_LEASE: Duration = Duration::from_secs(1);

/// Starts the child with `role` and `vars`; its stdout lines arrive on the receiver.
fn spawn_child(role: &str, vars: &[(&str, String)]) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in vars {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits for a line with `prefix` `count` times (30 s at most).
fn wait_lines(rx: &std::sync::mpsc::Receiver<String>, prefix: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 0;
    while seen < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => seen += 1,
            Ok(_) => {}
            Err(e) => panic!("the child said {prefix:?} {seen} times of {count}: {e}"),
        }
    }
}

fn sigkill(mut child: Child) {
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
}

fn order(prefix: &str, i: usize) -> EventEnvelope {
    EventEnvelope::wrap(
        Event::new(
            OrderPlaced {
                order_id: format!("{prefix}-{i:06}"),
                quantity: (i % 7) as i64 + 1,
            },
            Metadata::new(),
        )
        .unwrap(),
    )
}

fn rabbit_config(prefix: &str) -> orkestra_runtime::Config {
    let mut config = support::services::rabbit_config();
    config.bus.prefix = prefix.to_owned();
    config
}

/// The child side: what it does depends on `ORKESTRA_CRASH_ROLE`; without it, nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    match role.as_str() {
        // Appends in relay mode (nothing published) until killed.
        "append" => {
            let store = Store::sqlite(env("ORKESTRA_CRASH_DB"))
                .await
                .unwrap()
                .with_publish(PublishMode::Relay);
            let bus = Bus::in_process();
            let prefix = env("ORKESTRA_CRASH_PREFIX");
            for i in 0.. {
                store
                    .append_and_publish(
                        &bus,
                        &format!("{prefix}-{i}"),
                        ExpectedVersion::NoStream,
                        vec![order(&prefix, i)],
                    )
                    .await
                    .unwrap();
                say(&format!("appended {i}"));
            }
        }
        // Relays to RabbitMQ until killed.
        "relay" => {
            let store = Store::sqlite(env("ORKESTRA_CRASH_DB")).await.unwrap();
            let bus = Bus::from_config(&rabbit_config(&env("ORKESTRA_CRASH_BUS")))
                .await
                .unwrap();
            // A short lease: the parent's relay takes over soon after the kill.
            let relay = Relay::new(store, bus)
                .with_checkpoint(env("ORKESTRA_CRASH_CHECKPOINT"))
                .with_batch(50)
                .with_lease(Duration::from_millis(1500))
                .start()
                .await
                .unwrap();
            loop {
                if let Some(p) = relay.published() {
                    say(&format!("published {p}"));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // Runs the fold projection until killed.
        "pg-projection" | "sqlite-projection" => {
            let prefix = env("ORKESTRA_CRASH_PREFIX");
            let (store, handler) = if role == "pg-projection" {
                let store = Store::postgres(&support::services::postgres_url())
                    .await
                    .unwrap();
                (
                    store,
                    Fold::Postgres {
                        prefix,
                        table: env("ORKESTRA_CRASH_TABLE"),
                    },
                )
            } else {
                let store = Store::sqlite(env("ORKESTRA_CRASH_DB")).await.unwrap();
                (store, Fold::sqlite(prefix, &env("ORKESTRA_CRASH_MODEL")))
            };
            let running = Projections::new(store)
                .with_lease(CHILD_LEASE)
                .add(Projection::new(env("ORKESTRA_CRASH_CHECKPOINT"), handler).with_batch(500))
                .start()
                .await
                .unwrap();
            loop {
                if let Some(c) = running.status()[0].checkpoint {
                    say(&format!("handled {c}"));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // Rebuilds a projection slowly until killed.
        "rebuild" => {
            let store = match std::env::var("ORKESTRA_CRASH_DB") {
                Ok(path) => Store::sqlite(path).await.unwrap(),
                Err(_) => Store::postgres(&support::services::postgres_url())
                    .await
                    .unwrap(),
            };
            let name = env("ORKESTRA_CRASH_CHECKPOINT");
            let projections = Projections::new(store).with_lease(CHILD_LEASE).add(
                Projection::new(
                    name.clone(),
                    Replays {
                        seen: Arc::default(),
                        say: true,
                    },
                )
                .with_batch(10),
            );
            projections.rebuild(&name).await.unwrap();
            say("rebuilt");
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        other => panic!("unknown role {other}"),
    }
}

/// Records (message id, order id) of every delivered `OrderPlaced` of `prefix`, one at a
/// time (concurrency 1 keeps the broker's order).
async fn recorder(bus: &Bus, prefix: &str) -> Arc<Mutex<Vec<(String, String)>>> {
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let s = seen.clone();
    let prefix = prefix.to_owned();
    bus.subscribe(
        Subscription::events(unique("CrashRecorder"), move |ev: Event<OrderPlaced>, _| {
            let s = s.clone();
            let prefix = prefix.clone();
            async move {
                if ev.data.order_id.starts_with(&prefix) {
                    s.lock().unwrap().push((ev.id.clone(), ev.data.order_id));
                }
                Ok(())
            }
        })
        .with_concurrency(1),
    )
    .await
    .unwrap();
    seen
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_then_killed_before_any_publish_the_relay_publishes_all_in_order() {
    let bus_prefix = format!("orkestra-crash-{}", uuid::Uuid::new_v4().simple());
    let Some(bus) = support::services::rabbit_bus_with(&rabbit_config(&bus_prefix)).await else {
        return;
    };
    let path = temp_db("events.db");
    let prefix = unique("a");
    let seen = recorder(&bus, &prefix).await;
    let (child, rx) = spawn_child(
        "append",
        &[
            ("ORKESTRA_CRASH_DB", path.display().to_string()),
            ("ORKESTRA_CRASH_PREFIX", prefix.clone()),
        ],
    );
    wait_lines(&rx, "appended", 200);
    sigkill(child);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing published before the relay"
    );

    let store = Store::sqlite(&path).await.unwrap();
    let stored = store.read_all(0, 1_000_000).await.unwrap();
    assert!(stored.len() >= 200, "{}", stored.len());
    let mut relay = Relay::new(store.clone(), bus.clone())
        .start()
        .await
        .unwrap();
    relay
        .wait_for(stored.last().unwrap().position())
        .await
        .unwrap();
    wait_until("every event delivered", || {
        seen.lock().unwrap().len() >= stored.len()
    })
    .await;
    relay.stop().await.unwrap();
    let got = seen.lock().unwrap().clone();
    let expected: Vec<String> = stored.iter().map(|e| e.id().to_owned()).collect();
    assert_eq!(
        got.iter().map(|g| g.0.clone()).collect::<Vec<_>>(),
        expected,
        "every stored event, once, in order, with its event id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_stream_publishes_every_event_at_least_once_after_a_restart() {
    let bus_prefix = format!("orkestra-crash-{}", uuid::Uuid::new_v4().simple());
    let Some(bus) = support::services::rabbit_bus_with(&rabbit_config(&bus_prefix)).await else {
        return;
    };
    let path = temp_db("events.db");
    let store = Store::sqlite(&path).await.unwrap();
    let prefix = unique("b");
    for chunk in 0..100 {
        let events: Vec<EventData> = (0..20)
            .map(|i| EventData::from_message(order(&prefix, chunk * 20 + i).message()).unwrap())
            .collect();
        store
            .append(
                &format!("{prefix}-{chunk}"),
                ExpectedVersion::NoStream,
                events,
            )
            .await
            .unwrap();
    }
    let stored = store.read_all(0, 1_000_000).await.unwrap();
    let seen = recorder(&bus, &prefix).await;
    let checkpoint = unique("relay");
    let (child, rx) = spawn_child(
        "relay",
        &[
            ("ORKESTRA_CRASH_DB", path.display().to_string()),
            ("ORKESTRA_CRASH_BUS", bus_prefix.clone()),
            ("ORKESTRA_CRASH_CHECKPOINT", checkpoint.clone()),
        ],
    );
    wait_lines(&rx, "published", 3);
    sigkill(child);
    let before = Relay::new(store.clone(), bus.clone())
        .with_checkpoint(checkpoint.clone())
        .checkpoint()
        .await
        .unwrap();
    assert!(before.is_some(), "the killed relay saved a checkpoint");
    assert!(
        before < Some(stored.last().unwrap().position()),
        "killed mid-stream: {before:?}"
    );
    let mut relay = Relay::new(store.clone(), bus.clone())
        .with_checkpoint(checkpoint.clone())
        .start()
        .await
        .unwrap();
    relay
        .wait_for(stored.last().unwrap().position())
        .await
        .unwrap();
    let ids: Vec<String> = stored.iter().map(|e| e.id().to_owned()).collect();
    wait_until("every event delivered at least once", || {
        let got: std::collections::HashSet<String> =
            seen.lock().unwrap().iter().map(|g| g.0.clone()).collect();
        ids.iter().all(|id| got.contains(id))
    })
    .await;
    relay.stop().await.unwrap();
    let delivered = seen.lock().unwrap().len();
    eprintln!(
        "relay crash: {} events, {delivered} deliveries ({} again after the restart)",
        ids.len(),
        delivered - ids.len()
    );
}

/// The fold every projection of these tests computes: quantity per order, from
/// `OrderPlaced` events of one prefix.
#[derive(Clone)]
enum Fold {
    /// Exactly once: written in the checkpoint's transaction; a second row for an event
    /// id breaks the primary key, so a double apply fails loudly.
    Postgres { prefix: String, table: String },
    /// At least once, made idempotent: an event id is applied once, in the read model's
    /// own transaction.
    Sqlite {
        prefix: String,
        model: Arc<Mutex<rusqlite::Connection>>,
    },
}

impl Fold {
    fn sqlite(prefix: String, path: &str) -> Self {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=10000;
             CREATE TABLE IF NOT EXISTS applied (event_id TEXT PRIMARY KEY);
             CREATE TABLE IF NOT EXISTS totals (order_id TEXT PRIMARY KEY, quantity INTEGER NOT NULL);",
        )
        .unwrap();
        Fold::Sqlite {
            prefix,
            model: Arc::new(Mutex::new(conn)),
        }
    }
}

impl ProjectionHandler for Fold {
    type Event = Event<OrderPlaced>;

    async fn handle(
        &self,
        event: Event<OrderPlaced>,
        ctx: ProjectionContext<'_>,
    ) -> Result<(), HandlerError> {
        match self {
            Fold::Postgres { prefix, table } => {
                if !event.data.order_id.starts_with(prefix.as_str()) {
                    return Ok(());
                }
                let tx = ctx
                    .postgres()
                    .ok_or_else(|| HandlerError::reject("not PostgreSQL"))?;
                tx.execute(
                    &format!("INSERT INTO {table}_applied (event_id) VALUES ($1)"),
                    &[&event.id],
                )
                .await
                .map_err(HandlerError::fail)?;
                tx.execute(
                    &format!(
                        "INSERT INTO {table} (order_id, quantity) VALUES ($1, $2) \
                         ON CONFLICT (order_id) DO UPDATE SET quantity = {table}.quantity + excluded.quantity"
                    ),
                    &[&event.data.order_id, &event.data.quantity],
                )
                .await
                .map_err(HandlerError::fail)?;
                Ok(())
            }
            Fold::Sqlite { prefix, model } => {
                if !event.data.order_id.starts_with(prefix.as_str()) {
                    return Ok(());
                }
                let mut conn = model.lock().unwrap();
                let tx = conn.transaction().map_err(HandlerError::fail)?;
                let fresh = tx
                    .execute(
                        "INSERT OR IGNORE INTO applied (event_id) VALUES (?1)",
                        [&event.id],
                    )
                    .map_err(HandlerError::fail)?;
                if fresh == 1 {
                    tx.execute(
                        "INSERT INTO totals (order_id, quantity) VALUES (?1, ?2) \
                         ON CONFLICT (order_id) DO UPDATE SET quantity = quantity + excluded.quantity",
                        rusqlite::params![event.data.order_id, event.data.quantity],
                    )
                    .map_err(HandlerError::fail)?;
                }
                tx.commit().map_err(HandlerError::fail)
            }
        }
    }
}

/// 4 writers appending events of `prefix` until `stop`; each returns the position of
/// its last event.
fn writers(
    store: &Store,
    prefix: &str,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..4)
        .map(|w| {
            let store = store.clone();
            let prefix = prefix.to_owned();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut i = 0;
                let mut last = 0;
                while !stop.load(Ordering::SeqCst) {
                    let events: Vec<EventData> = (0..5)
                        .map(|n| {
                            placed(
                                &format!("{prefix}-{w}-{}", (i * 5 + n) % 13),
                                (n + 1) as i64,
                            )
                        })
                        .collect();
                    last = store
                        .append(
                            &format!("{prefix}-w{w}-{i}"),
                            ExpectedVersion::NoStream,
                            events,
                        )
                        .await
                        .unwrap()
                        .last_position;
                    i += 1;
                }
                last
            })
        })
        .collect()
}

/// The fold of the store's events of `prefix`, from the store itself.
async fn expected_fold(store: &Store, prefix: &str, from: u64) -> BTreeMap<String, i64> {
    let mut fold = BTreeMap::new();
    let mut next = from;
    loop {
        let batch = store.read_all(next, 5000).await.unwrap();
        let Some(last) = batch.last() else { break };
        next = last.position() + 1;
        for e in &batch {
            if let Ok(ev) = e.decode::<OrderPlaced>()
                && ev.data.order_id.starts_with(prefix)
            {
                *fold.entry(ev.data.order_id).or_default() += ev.data.quantity;
            }
        }
    }
    fold
}

/// Runs the crash: the child projects while 4 writers append, is killed mid-batch, the
/// parent projects to the head and returns the checkpoint.
async fn projection_crash(
    store: &Store,
    role: &str,
    prefix: &str,
    checkpoint: &str,
    vars: &[(&str, String)],
    fold: Fold,
) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = writers(store, prefix, &stop);
    let mut all = vars.to_vec();
    all.push(("ORKESTRA_CRASH_PREFIX", prefix.to_owned()));
    all.push(("ORKESTRA_CRASH_CHECKPOINT", checkpoint.to_owned()));
    let (child, rx) = spawn_child(role, &all);
    wait_lines(&rx, "handled", 100);
    // Batches keep coming while the writers append: the kill lands inside one.
    tokio::time::sleep(Duration::from_millis(700)).await;
    sigkill(child);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut appended = 0;
    for t in tasks {
        appended = appended.max(t.await.unwrap());
    }
    // On PostgreSQL the head reaches an append once older transactions (of other tests
    // too) have ended: wait until it covers every event of this test.
    let head = loop {
        let head = store.head().await.unwrap().unwrap();
        if head >= appended {
            break head;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let running = Projections::new(store.clone())
        .add(Projection::new(checkpoint, fold).with_batch(500))
        .start()
        .await
        .unwrap();
    running.wait_for(checkpoint, head).await.unwrap();
    running.stop().await.unwrap();
    let saved = Projections::checkpoint(store, checkpoint)
        .await
        .unwrap()
        .unwrap();
    assert!(saved >= head, "checkpoint {saved} short of the head {head}");
    saved
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_projection_killed_mid_batch_folds_every_event_exactly_once() {
    let Some(store) = support::services::postgres_store().await else {
        return;
    };
    let (pg, connection) = tokio_postgres::connect(
        support::services::postgres_url().expose(),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let table = format!("crash_{}", uuid::Uuid::new_v4().simple());
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (order_id TEXT PRIMARY KEY, quantity BIGINT NOT NULL);
         CREATE TABLE {table}_applied (event_id TEXT PRIMARY KEY);"
    ))
    .await
    .unwrap();
    let prefix = unique("c");
    let checkpoint = unique("pg-fold");
    let start = store.head().await.unwrap();
    store.save_checkpoint(&checkpoint, start).await.unwrap();
    let fold = Fold::Postgres {
        prefix: prefix.clone(),
        table: table.clone(),
    };
    projection_crash(
        &store,
        "pg-projection",
        &prefix,
        &checkpoint,
        &[("ORKESTRA_CRASH_TABLE", table.clone())],
        fold,
    )
    .await;
    let rows = pg
        .query(&format!("SELECT order_id, quantity FROM {table}"), &[])
        .await
        .unwrap();
    let got: BTreeMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let expected = expected_fold(&store, &prefix, start.map_or(0, |s| s + 1)).await;
    assert!(!expected.is_empty());
    assert_eq!(got, expected, "the read model is the exact fold");
    pg.batch_execute(&format!("DROP TABLE {table}; DROP TABLE {table}_applied;"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_idempotent_projection_killed_mid_batch_folds_every_event_once() {
    let path = temp_db("events.db");
    let model = path.with_file_name("model.db");
    let store = Store::sqlite(&path).await.unwrap();
    let prefix = unique("d");
    let checkpoint = unique("sqlite-fold");
    let fold = Fold::sqlite(prefix.clone(), &model.display().to_string());
    projection_crash(
        &store,
        "sqlite-projection",
        &prefix,
        &checkpoint,
        &[
            ("ORKESTRA_CRASH_DB", path.display().to_string()),
            ("ORKESTRA_CRASH_MODEL", model.display().to_string()),
        ],
        fold,
    )
    .await;
    let conn = rusqlite::Connection::open(&model).unwrap();
    let mut stmt = conn
        .prepare("SELECT order_id, quantity FROM totals")
        .unwrap();
    let got: BTreeMap<String, i64> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let expected = expected_fold(&store, &prefix, 0).await;
    assert!(!expected.is_empty());
    assert_eq!(got, expected, "the read model is the exact fold");
    let applied: i64 = conn
        .query_row("SELECT count(*) FROM applied", [], |r| r.get(0))
        .unwrap();
    let events: usize = store.read_all(0, 10_000_000).await.unwrap().len();
    assert_eq!(applied as usize, events, "each event applied once");
}

/// (position, `is_replay()`, ping number) of each ping handled.
type Seen = Arc<Mutex<Vec<(u64, bool, i64)>>>;

/// Records each ping's position, `is_replay()` and number; in the child, slowly, saying so.
#[derive(Clone)]
struct Replays {
    seen: Seen,
    say: bool,
}

impl ProjectionHandler for Replays {
    type Event = Event<Ping>;

    async fn handle(
        &self,
        event: Event<Ping>,
        ctx: ProjectionContext<'_>,
    ) -> Result<(), HandlerError> {
        self.seen
            .lock()
            .unwrap()
            .push((ctx.position(), ctx.is_replay(), event.data.n));
        if self.say {
            say(&format!("replayed {} {}", ctx.position(), ctx.is_replay()));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }
}

/// Starts the projection `name` recording into `seen` (the parent's, quietly).
async fn start_replays(
    store: &Store,
    name: &str,
    seen: &Seen,
) -> orkestra_runtime::projection::RunningProjections {
    Projections::new(store.clone())
        .add(Projection::new(
            name.to_owned(),
            Replays {
                seen: seen.clone(),
                say: false,
            },
        ))
        .start()
        .await
        .unwrap()
}

fn ping(n: i64) -> EventData {
    EventData::from_event(&Event::new(Ping { n }, Metadata::new()).unwrap()).unwrap()
}

/// A rebuild killed half-way: after the restart the events it had not reached yet still
/// arrive with `is_replay() == true` (handlers that suppress side effects in a rebuild
/// keep suppressing them), and the first event after the rebuild's target does not.
/// `vars` tell the child where the store is.
async fn rebuild_crash(store: Store, vars: &[(&str, String)]) {
    // This test's pings: numbers no other test uses.
    let base = (uuid::Uuid::new_v4().as_u128() % 1_000_000) as i64 * 10_000 + 1_000_000_000;
    let prefix = unique("r");
    let mut appended = 0;
    for chunk in 0..20 {
        let events = (0..50).map(|i| ping(base + chunk * 50 + i)).collect();
        appended = store
            .append(
                &format!("{prefix}-{chunk}"),
                ExpectedVersion::NoStream,
                events,
            )
            .await
            .unwrap()
            .last_position;
    }
    // On PostgreSQL the head reaches an append once older transactions (anywhere in the
    // cluster) have ended: the rebuild's target must cover every ping of this test.
    let head = loop {
        let head = store.head().await.unwrap().unwrap();
        if head >= appended {
            break head;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let name = unique("rebuilt");
    // Up to date before the rebuild.
    store.save_checkpoint(&name, Some(head)).await.unwrap();
    let mut all = vars.to_vec();
    all.push(("ORKESTRA_CRASH_CHECKPOINT", name.clone()));
    let (child, rx) = spawn_child("rebuild", &all);
    wait_lines(&rx, "replayed", 200);
    sigkill(child);
    let checkpoint = Projections::checkpoint(&store, &name).await.unwrap();
    assert!(
        checkpoint.is_some_and(|c| c < head),
        "killed half-way: checkpoint {checkpoint:?}, head {head}"
    );
    let ours = |seen: &Seen| -> Vec<(u64, bool)> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|s| s.2 >= base && s.2 < base + 10_000)
            .map(|s| (s.0, s.1))
            .collect()
    };
    let seen: Seen = Arc::default();
    let running = start_replays(&store, &name, &seen).await;
    running.wait_for(&name, head).await.unwrap();
    let after = store
        .append(
            &format!("{prefix}-after"),
            ExpectedVersion::NoStream,
            vec![ping(base + 5000)],
        )
        .await
        .unwrap()
        .last_position;
    running.wait_for(&name, after).await.unwrap();
    running.stop().await.unwrap();
    let (old, new): (Vec<_>, Vec<_>) = ours(&seen).into_iter().partition(|(p, _)| *p <= head);
    assert!(
        !old.is_empty(),
        "the rest of the rebuild ran after the restart"
    );
    assert!(
        old.iter().all(|(_, replay)| *replay),
        "events up to the rebuild's target are replays after the restart: {:?}",
        old.iter().filter(|s| !s.1).take(5).collect::<Vec<_>>()
    );
    assert_eq!(new, vec![(after, false)], "a new event is not a replay");
    // The finished rebuild left no target behind: another restart replays nothing.
    let seen: Seen = Arc::default();
    let running = start_replays(&store, &name, &seen).await;
    let last = store
        .append(
            &format!("{prefix}-last"),
            ExpectedVersion::NoStream,
            vec![ping(base + 5001)],
        )
        .await
        .unwrap()
        .last_position;
    running.wait_for(&name, last).await.unwrap();
    running.stop().await.unwrap();
    assert_eq!(ours(&seen), vec![(last, false)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_killed_half_way_goes_on_as_a_replay_after_a_restart() {
    let path = temp_db("events.db");
    let store = Store::sqlite(&path).await.unwrap();
    rebuild_crash(store, &[("ORKESTRA_CRASH_DB", path.display().to_string())]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_rebuild_killed_half_way_goes_on_as_a_replay_after_a_restart() {
    let Some(store) = support::services::postgres_store().await else {
        return;
    };
    rebuild_crash(store, &[]).await;
}
