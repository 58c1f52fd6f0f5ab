//! Several copies of the relay over one store (`book/src/several-copies.md`): one publishes at a
//! time, another takes over when it stops or dies, and delivery stays at least once with
//! each stream's order kept.
//!
//! - Two copies in one process (different owners): each event is published once while
//!   both run; a graceful stop hands the relay over within a second, and a skip is
//!   refused while a copy holds it (memory store and PostgreSQL).
//! - Two copies as real child processes of this test binary (`relay_copy_child`, chosen
//!   by `ORKESTRA_RELAY_COPY_STORE`) publishing to RabbitMQ while the parent appends to
//!   several streams; the owner (found in the store's leases) is killed with SIGKILL: the
//!   other takes over within the lease plus a renewal period, every event is published
//!   at least once, at most one batch twice, and each stream's events first arrive in
//!   order (PostgreSQL, and a SQLite file shared by the processes).

mod support;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orkestra_runtime::relay::{Relay, RelayError};
use orkestra_runtime::store::Leases;
use orkestra_runtime::{Bus, Event, ExpectedVersion, PublishMode, SecretUrl, Store, Subscription};
use support::payloads::*;
use support::store_suite::{placed, unique};

const STORE: &str = "ORKESTRA_RELAY_COPY_STORE";
const BUS: &str = "ORKESTRA_RELAY_COPY_BUS";
const NAME: &str = "ORKESTRA_RELAY_COPY_NAME";
const OWNER: &str = "ORKESTRA_RELAY_COPY_OWNER";
/// The copies' lease: short, so a takeover after a kill comes soon.
const LEASE: Duration = Duration::from_millis(1500);
/// Events per batch: what a takeover may publish again.
const BATCH: usize = 20;

/// (message id, order id) of every delivery, in arrival order.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

async fn open(spec: &str) -> Store {
    match spec.strip_prefix("sqlite:") {
        Some(path) => Store::sqlite(path).await.unwrap(),
        None => Store::postgres(&SecretUrl::new(spec.to_owned()))
            .await
            .unwrap(),
    }
    .with_publish(PublishMode::Relay)
}

fn rabbit_config(prefix: &str) -> orkestra_runtime::Config {
    let mut config = support::services::rabbit_config();
    config.bus.prefix = prefix.to_owned();
    config
}

/// Records every delivered `OrderPlaced` of `prefix`, one at a time (concurrency 1 keeps
/// the queue's order).
async fn recorder(bus: &Bus, prefix: &str) -> Seen {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let prefix = prefix.to_owned();
    bus.subscribe(
        Subscription::events(unique("CopyRecorder"), move |ev: Event<OrderPlaced>, _| {
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

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Who holds the relay `name` now, from the store's leases.
async fn holder(leases: &Leases, name: &str) -> Option<String> {
    leases
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.worker == name && r.partition == 0)
        .and_then(|r| r.owner)
}

/// Order `seq` of stream `stream`: `<prefix>-<stream>-<seq>`, so a delivery names both.
fn order_id(prefix: &str, stream: usize, seq: usize) -> String {
    format!("{prefix}-{stream}-{seq:05}")
}

/// (stream, seq) of an order id made by [`order_id`].
fn stream_and_seq(order: &str) -> (usize, usize) {
    let mut parts = order.rsplit('-');
    let seq = parts.next().unwrap().parse().unwrap();
    let stream = parts.next().unwrap().parse().unwrap();
    (stream, seq)
}

/// Appends `per_stream` events to each of `streams` streams, round robin, one append
/// at a time with `pause` between them; the stored event ids.
async fn append_round_robin(
    store: &Store,
    prefix: &str,
    streams: usize,
    per_stream: usize,
    pause: Duration,
) -> Vec<String> {
    let mut ids = Vec::new();
    for seq in 0..per_stream {
        for stream in 0..streams {
            let data = placed(&order_id(prefix, stream, seq), 1);
            ids.push(data.id.clone());
            store
                .append(
                    &format!("{prefix}-stream-{stream}"),
                    ExpectedVersion::Any,
                    vec![data],
                )
                .await
                .unwrap();
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }
    ids
}

/// Every delivered order of each stream, in the order of first arrival, must be the
/// stream's order.
fn assert_first_arrivals_in_stream_order(seen: &[(String, String)]) {
    let mut first: HashSet<&str> = HashSet::new();
    let mut next: BTreeMap<usize, usize> = BTreeMap::new();
    for (id, order) in seen {
        if !first.insert(id) {
            continue;
        }
        let (stream, seq) = stream_and_seq(order);
        let expected = next.entry(stream).or_insert(0);
        assert_eq!(
            seq, *expected,
            "stream {stream}: event {seq} first arrived where event {expected} was due"
        );
        *expected += 1;
    }
}

// ---- two copies in one process ------------------------------------------------------

async fn two_copies_publish_once_and_hand_over_on_a_graceful_stop(store: Store) {
    let bus = Bus::in_process();
    let prefix = unique("inproc");
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let p = prefix.clone();
    bus.subscribe(Subscription::events(
        "InProcessRecorder",
        move |ev: Event<OrderPlaced>, _| {
            let s = s.clone();
            let p = p.clone();
            async move {
                if ev.data.order_id.starts_with(&p) {
                    s.lock().unwrap().push((ev.id.clone(), ev.data.order_id));
                }
                Ok(())
            }
        },
    ))
    .await
    .unwrap();
    let name = unique("relay");
    // Only what this test appends: start at the head (the older checkpoint a relay new
    // to the leases begins at).
    store
        .save_checkpoint(&name, store.head().await.unwrap())
        .await
        .unwrap();
    let copy = |owner: &str| {
        Relay::new(store.clone(), bus.clone())
            .with_checkpoint(name.clone())
            .with_owner(owner)
            .with_batch(BATCH)
            .with_lease(Duration::from_secs(10))
            .start()
    };
    let a = copy("copy-a").await.unwrap();
    let b = copy("copy-b").await.unwrap();
    let leases = store.leases().await.unwrap();

    let ids = append_round_robin(&store, &prefix, 4, 50, Duration::ZERO).await;
    wait_until("every event published", Duration::from_secs(30), || {
        seen.lock().unwrap().len() >= ids.len()
    })
    .await;
    // Give a second publisher time to show itself.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got: Vec<String> = seen.lock().unwrap().iter().map(|s| s.0.clone()).collect();
    assert_eq!(got, ids, "each event once, in order, while both copies run");
    assert_eq!(
        [a.holding(), b.holding()].iter().filter(|h| **h).count(),
        1,
        "one copy holds the relay"
    );
    let (held, waiting) = if a.holding() { (a, b) } else { (b, a) };
    let status = held.status();
    assert!(status.holding && status.error.is_none(), "{status:?}");
    assert_eq!(
        holder(&leases, &name).await.as_deref(),
        Some(status.owner.as_str())
    );
    assert!(!waiting.status().holding);

    // A skip is refused while a copy holds the relay, and names it.
    let last = store.head().await.unwrap().unwrap();
    let err = Relay::new(store.clone(), bus.clone())
        .with_checkpoint(name.clone())
        .skip(last)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RelayError::Held { owner, .. } if *owner == status.owner),
        "{err}"
    );

    // A graceful stop hands the relay over well within a second.
    let stopped_at = Instant::now();
    held.stop().await.unwrap();
    wait_until(
        "the other copy takes the relay over",
        Duration::from_secs(5),
        || waiting.holding(),
    )
    .await;
    let took = stopped_at.elapsed();
    eprintln!("in-process graceful handover: {took:?}");
    assert!(took < Duration::from_secs(1), "handed over in {took:?}");

    let more = append_round_robin(&store, &prefix, 4, 10, Duration::ZERO).await;
    let all: Vec<String> = ids.iter().chain(&more).cloned().collect();
    let mut waiting = waiting;
    waiting
        .wait_for(store.head().await.unwrap().unwrap())
        .await
        .unwrap();
    wait_until("the rest published", Duration::from_secs(30), || {
        seen.lock().unwrap().len() >= all.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got: Vec<String> = seen.lock().unwrap().iter().map(|s| s.0.clone()).collect();
    assert_eq!(got, all, "nothing twice across a graceful handover");
    waiting.stop().await.unwrap();
    assert_eq!(holder(&leases, &name).await, None, "released on stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_two_copies_publish_once_and_hand_over_on_a_graceful_stop() {
    two_copies_publish_once_and_hand_over_on_a_graceful_stop(Store::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_copies_publish_once_and_hand_over_on_a_graceful_stop() {
    let Some(store) = support::services::postgres_store().await else {
        return;
    };
    two_copies_publish_once_and_hand_over_on_a_graceful_stop(store).await;
}

/// A copy whose lease another took while it was away (the way a copy paused past its
/// lease finds it when it resumes) has its next checkpoint save refused: it stops
/// publishing after the batch in hand, logs it once naming the new owner, and publishes
/// nothing more.
#[tokio::test]
async fn a_copy_whose_lease_was_taken_stops_publishing_at_its_next_save() {
    let logs = support::logs::LogBuffer::default();
    let writer = logs.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish(),
    );
    let store = Store::memory();
    let bus = Bus::in_process();
    let prefix = unique("fenced");
    let seen: Seen = Arc::default();
    let s = seen.clone();
    bus.subscribe(Subscription::events(
        "FencedRecorder",
        move |ev: Event<OrderPlaced>, _| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push((ev.id.clone(), ev.data.order_id));
                Ok(())
            }
        },
    ))
    .await
    .unwrap();
    // A long lease: the keeper does not renew (and notice) before the relay's next save.
    let lease = Duration::from_secs(30);
    let batch = 5;
    let mut relay = Relay::new(store.clone(), bus.clone())
        .with_owner("copy-a")
        .with_lease(lease)
        .with_batch(batch)
        .start()
        .await
        .unwrap();
    append_round_robin(&store, &prefix, 2, 5, Duration::ZERO).await;
    relay
        .wait_for(store.head().await.unwrap().unwrap())
        .await
        .unwrap();
    assert!(relay.holding());
    let before = seen.lock().unwrap().len();
    assert_eq!(before, 10);

    // Another holding begins behind copy-a's back: a new fencing token.
    let leases = store.leases().await.unwrap();
    let stale = leases
        .acquire("orkestra.relay", 0, "copy-a", lease)
        .await
        .unwrap()
        .unwrap();
    assert!(leases.release(&stale).await.unwrap());
    let other = leases
        .acquire("orkestra.relay", 0, "copy-b", lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(other.token, stale.token + 1);

    append_round_robin(&store, &prefix, 2, 5, Duration::ZERO).await;
    wait_until(
        "the fenced copy stops publishing",
        Duration::from_secs(5),
        || !relay.holding(),
    )
    .await;
    let after = seen.lock().unwrap().len();
    assert!(
        after - before <= batch,
        "at most the batch in hand before the refused save: {}",
        after - before
    );
    append_round_robin(&store, &prefix, 2, 5, Duration::ZERO).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        seen.lock().unwrap().len(),
        after,
        "nothing published while copy-b holds the relay"
    );
    assert_eq!(
        leases.checkpoint("orkestra.relay", 0).await.unwrap(),
        Some(9),
        "the fenced copy saved nothing"
    );
    let status = relay.status();
    assert!(!status.holding && status.error.is_none(), "{status:?}");
    let log = logs.text();
    let warned: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warned.len(), 1, "logged once: {log}");
    assert!(
        warned[0].contains("new_owner=\"copy-b\"") && warned[0].contains("orkestra.relay"),
        "{log}"
    );
    relay.stop().await.unwrap();
}

// ---- two copies as child processes ----------------------------------------------------

/// The child: one copy of the relay, until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_copy_child() {
    let Ok(spec) = std::env::var(STORE) else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let store = open(&spec).await;
    let bus = Bus::from_config(&rabbit_config(&var(BUS))).await.unwrap();
    let relay = Relay::new(store, bus)
        .with_checkpoint(var(NAME))
        .with_owner(var(OWNER))
        .with_batch(BATCH)
        .with_lease(LEASE)
        .start()
        .await
        .unwrap();
    println!("started");
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(error) = relay.status().error {
            println!("error {error}");
        }
    }
}

struct ChildCopy {
    child: Child,
    owner: String,
}

impl ChildCopy {
    fn start(spec: &str, bus: &str, name: &str, owner: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "relay_copy_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(STORE, spec)
            .env(BUS, bus)
            .env(NAME, name)
            .env(OWNER, owner)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("error") {
                    eprintln!("relay copy: {line}");
                }
            }
        });
        Self {
            child,
            owner: owner.to_owned(),
        }
    }

    fn kill(&mut self) {
        self.child.kill().unwrap(); // SIGKILL on Unix
        self.child.wait().unwrap();
    }
}

impl Drop for ChildCopy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn the_owner_killed_another_copy_takes_over_and_publishes_the_rest(spec: &str) {
    let bus_prefix = format!("orkestra-relay-copies-{}", uuid::Uuid::new_v4().simple());
    let Some(bus) = support::services::rabbit_bus_with(&rabbit_config(&bus_prefix)).await else {
        return;
    };
    let store = open(spec).await;
    let leases = store.leases().await.unwrap();
    let prefix = unique("copies");
    let seen = recorder(&bus, &prefix).await;
    let name = unique("relay");
    // Only what this test appends: the relay begins at the head, through the older
    // checkpoint a relay new to the leases starts from.
    store
        .save_checkpoint(&name, store.head().await.unwrap())
        .await
        .unwrap();
    let mut copies: Vec<ChildCopy> = (0..2)
        .map(|i| ChildCopy::start(spec, &bus_prefix, &name, &format!("copy-{i}-{prefix}")))
        .collect();

    // The parent appends to 6 streams throughout; the owner dies a third of the way.
    let (streams, per_stream) = (6, 100);
    let writer = {
        let store = store.clone();
        let prefix = prefix.clone();
        tokio::spawn(async move {
            append_round_robin(
                &store,
                &prefix,
                streams,
                per_stream,
                Duration::from_millis(5),
            )
            .await
        })
    };
    wait_until("the first copy publishes", Duration::from_secs(60), || {
        seen.lock().unwrap().len() >= 150
    })
    .await;
    // The owner, once the copies settled (a copy that started first hands over to the
    // first in order of names).
    let mut owner = None;
    for _ in 0..500 {
        owner = holder(&leases, &name).await;
        if owner.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let owner = owner.expect("a copy holds the relay");
    let victim = copies.iter().position(|c| c.owner == owner).unwrap();
    copies[victim].kill();
    let killed_at = Instant::now();
    let survivor = copies[1 - victim].owner.clone();
    let deadline = killed_at + Duration::from_secs(30);
    loop {
        if holder(&leases, &name).await.as_deref() == Some(survivor.as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "never taken over");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = killed_at.elapsed();
    let ids = writer.await.unwrap();
    let want: HashSet<String> = ids.iter().cloned().collect();
    wait_until(
        "every event published at least once",
        Duration::from_secs(60),
        || {
            let got: HashSet<String> = seen.lock().unwrap().iter().map(|s| s.0.clone()).collect();
            want.is_subset(&got)
        },
    )
    .await;
    // Let any late duplicate arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap().clone();
    let again = seen.len() - ids.len();
    eprintln!(
        "relay copies ({}): owner killed, taken over in {took:?}; {} events, {} deliveries ({again} again)",
        spec.split(':').next().unwrap_or(spec),
        ids.len(),
        seen.len()
    );
    assert!(
        took <= LEASE + LEASE / 3,
        "taken over within the lease and a renewal period: {took:?}"
    );
    assert!(again <= BATCH, "at most one batch published twice: {again}");
    assert_first_arrivals_in_stream_order(&seen);
}

fn sqlite_spec() -> String {
    let dir = std::env::temp_dir().join(format!(
        "orkestra-relay-copies-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    format!("sqlite:{}", dir.join("events.db").display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_owner_killed_another_copy_takes_over_and_publishes_the_rest() {
    if support::services::postgres_store().await.is_none() {
        return;
    }
    let spec = support::services::postgres_url().expose().to_owned();
    the_owner_killed_another_copy_takes_over_and_publishes_the_rest(&spec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_owner_killed_another_copy_takes_over_and_publishes_the_rest() {
    the_owner_killed_another_copy_takes_over_and_publishes_the_rest(&sqlite_spec()).await;
}
