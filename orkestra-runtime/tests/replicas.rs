//! Several copies of a service as real processes (`book/src/several-copies.md`): child processes
//! of this test binary (`replica_child`, chosen by `ORKESTRA_REPLICA_ROLE`) run one
//! projection with 6 partitions over one store, each under its own owner name, while the
//! parent appends events, kills a copy (SIGKILL), pauses one past its lease (SIGSTOP, then
//! SIGCONT), stops one (SIGTERM: the copy calls `stop()`) and starts copies again. Every
//! application of an event is a row of the read model, so the checks are row by row:
//!
//! - PostgreSQL, one copy killed and started again, another paused past its lease: every
//!   event applied exactly once, in stream order and in global order within a partition;
//!   the killed copy's partitions taken over within the lease plus a renewal period;
//! - balance: three copies hold 2 partitions each; after one stops gracefully the other
//!   two hold all 6 within a second;
//! - SQLite, one file shared by processes on one machine, the same kill and pause with an
//!   idempotent read model: every event applied at least once, first applications in
//!   order, a repeat only within the batch that followed the last checkpoint of a holding
//!   that ended, and nothing begun by the paused copy after it was continued except in
//!   partitions it took again;
//! - a rolling restart on PostgreSQL while events flow: exactly once, and no partition
//!   left waiting for a lease;
//! - PostgreSQL, a copy paused in the middle of a batch: with the partition's lease row
//!   locked (its checkpoint written, not committed) the other copies keep every other
//!   partition; inside its transaction (holding the horizon) it holds the others up for
//!   a lease at most.
//!
//! The tests take turns (they time takeovers on a small shared machine). Set
//! `ORKESTRA_REPLICA_LOG=warn` (an env filter) to see each copy's logs.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use orkestra_runtime::projection::{Projection, ProjectionContext, ProjectionHandler, Projections};
use orkestra_runtime::store::{LeaseRecord, Leases};
use orkestra_runtime::{Event, ExpectedVersion, HandlerError, Store};
use support::payloads::OrderPlaced;
use support::store_suite::{placed, unique};

const ROLE: &str = "ORKESTRA_REPLICA_ROLE";
/// `postgres` (the URL from `ORKESTRA_PG_URL`) or `sqlite:<path>`.
const STORE: &str = "ORKESTRA_REPLICA_STORE";
/// The read model: a PostgreSQL table's name, or a SQLite file's path.
const MODEL: &str = "ORKESTRA_REPLICA_MODEL";
const NAME: &str = "ORKESTRA_REPLICA_NAME";
const OWNER: &str = "ORKESTRA_REPLICA_OWNER";
const PREFIX: &str = "ORKESTRA_REPLICA_PREFIX";
const PARTITIONS: &str = "ORKESTRA_REPLICA_PARTITIONS";
const LEASE_MS: &str = "ORKESTRA_REPLICA_LEASE_MS";
const BATCH: &str = "ORKESTRA_REPLICA_BATCH";
/// A file whose creation makes one copy, once, wait inside its read-model transaction
/// after writing the row of an event whose order id contains `-hold-`.
const HOLD: &str = "ORKESTRA_REPLICA_HOLD";

/// The copies' lease: short, so takeovers come soon.
const LEASE: Duration = Duration::from_millis(1500);
/// What the machine may add to a measured takeover (a loaded 2-core machine).
const SLACK: Duration = Duration::from_millis(500);
const COPIES: [&str; 3] = ["copy-a", "copy-b", "copy-c"];

/// One test at a time: each starts three processes and times their takeovers.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Milliseconds since the epoch by this machine's clock (every process here shares it).
fn wall_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

/// The runtime's partition of a stream: FNV-1a of its name (`src/runner/partition.rs`).
fn partition_of(stream: &str, partitions: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in stream.as_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % partitions
}

async fn open(spec: &str) -> Store {
    match spec.strip_prefix("sqlite:") {
        Some(path) => Store::sqlite(path).await.unwrap(),
        None => Store::postgres(&support::services::postgres_url())
            .await
            .unwrap(),
    }
}

// ---------------------------------------------------------------------------------------
// The child: one copy of the service.
// ---------------------------------------------------------------------------------------

/// Writes one row per application of one of its prefix's events.
#[derive(Clone)]
struct Recorder {
    prefix: String,
    copy: String,
    partitions: u32,
    model: Model,
}

#[derive(Clone)]
enum Model {
    /// In the checkpoint's transaction (`ctx.postgres()`): exactly once.
    Postgres { table: String },
    /// Its own file: a log of every application, and an idempotent upsert per event.
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
}

impl ProjectionHandler for Recorder {
    type Event = Event<OrderPlaced>;

    async fn handle(
        &self,
        event: Event<OrderPlaced>,
        ctx: ProjectionContext<'_>,
    ) -> Result<(), HandlerError> {
        // When the runtime began this event: what a paused copy must not do any more.
        let entered = wall_ms();
        if !event.data.order_id.starts_with(&self.prefix) {
            return Ok(());
        }
        let recorded = ctx.recorded();
        let (stream, version, position) = (
            recorded.stream(),
            recorded.version() as i64,
            recorded.position() as i64,
        );
        let part = partition_of(stream, self.partitions) as i32;
        match &self.model {
            Model::Postgres { table } => {
                let tx = ctx
                    .postgres()
                    .ok_or_else(|| HandlerError::reject("not PostgreSQL"))?;
                tx.execute(
                    &format!(
                        "INSERT INTO {table} (event_id, stream, version, position, part, copy) \
                         VALUES ($1, $2, $3, $4, $5, $6)"
                    ),
                    &[&event.id, &stream, &version, &position, &part, &self.copy],
                )
                .await
                .map_err(HandlerError::fail)?;
                if event.data.order_id.contains("-hold-")
                    && let Ok(path) = std::env::var(HOLD)
                    && std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(path)
                        .is_ok()
                {
                    say(&format!("holding {}", self.copy));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            Model::Sqlite(model) => {
                // Blocking (another copy may hold the file's lock): off the runtime's
                // workers, so the keeper goes on renewing meanwhile.
                tokio::task::block_in_place(|| {
                    let mut conn = model.lock().unwrap();
                    let tx = conn.transaction()?;
                    tx.execute(
                        "INSERT INTO applications (event_id, stream, version, position, part, copy, at_ms) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        rusqlite::params![event.id, stream, version, position, part, self.copy, entered],
                    )?;
                    tx.execute(
                        "INSERT INTO model (event_id, stream, version, applications) VALUES (?1, ?2, ?3, 1) \
                         ON CONFLICT (event_id) DO UPDATE SET applications = applications + 1",
                        rusqlite::params![event.id, stream, version],
                    )?;
                    tx.commit()
                })
                .map_err(HandlerError::fail)?;
            }
        }
        Ok(())
    }
}

fn open_sqlite_model(path: &str) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=20000;
         CREATE TABLE IF NOT EXISTS applications (
             seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, stream TEXT NOT NULL,
             version INTEGER NOT NULL, position INTEGER NOT NULL, part INTEGER NOT NULL,
             copy TEXT NOT NULL, at_ms INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS model (
             event_id TEXT PRIMARY KEY, stream TEXT NOT NULL, version INTEGER NOT NULL,
             applications INTEGER NOT NULL);",
    )
    .unwrap();
    conn
}

/// Stderr, each write (a log line) tagged with the copy's owner name.
struct Tagged(&'static str);

impl std::io::Write for Tagged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        err.write_all(self.0.as_bytes())?;
        err.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The child side: what it runs depends on `ORKESTRA_REPLICA_ROLE`; without it, nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    // The parent holds this process's stdin: when the parent goes (a failed test, a
    // killed run), so does this copy.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    // `ORKESTRA_REPLICA_LOG=warn` (an env filter) shows each copy's logs on stderr.
    if let Ok(filter) = std::env::var("ORKESTRA_REPLICA_LOG") {
        let tag: &'static str = format!("[{}] ", env(OWNER)).leak();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(move || Tagged(tag))
            .with_ansi(false)
            .try_init();
    }
    match role.as_str() {
        "projection" => projection_copy().await,
        other => panic!("unknown role {other}"),
    }
}

/// Runs the recording projection until SIGTERM, then stops it gracefully.
async fn projection_copy() {
    let spec = env(STORE);
    let store = open(&spec).await;
    let model = match spec.strip_prefix("sqlite:") {
        Some(_) => Model::Sqlite(Arc::new(Mutex::new(open_sqlite_model(&env(MODEL))))),
        None => Model::Postgres { table: env(MODEL) },
    };
    let partitions: u32 = env(PARTITIONS).parse().unwrap();
    let owner = env(OWNER);
    let recorder = Recorder {
        prefix: env(PREFIX),
        copy: owner.clone(),
        partitions,
        model,
    };
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    let running = Projections::new(store)
        .with_lease(Duration::from_millis(env(LEASE_MS).parse().unwrap()))
        .with_owner(owner)
        .add(
            Projection::new(env(NAME), recorder)
                .with_partitions(partitions)
                .with_batch(env(BATCH).parse().unwrap()),
        )
        .start()
        .await
        .unwrap();
    say("ready");
    terminate.recv().await;
    running.stop().await.unwrap();
    say("stopped");
}

// ---------------------------------------------------------------------------------------
// The parent: copies, writers, leases.
// ---------------------------------------------------------------------------------------

/// What every copy of one test runs.
#[derive(Clone, Debug)]
struct Settings {
    store: String,
    model: String,
    name: String,
    prefix: String,
    partitions: u32,
    lease: Duration,
    batch: usize,
    /// See [`HOLD`] (empty: no copy holds).
    hold: String,
}

/// A running copy (a child process); killed when dropped, so a failing test leaves none.
struct Copy {
    owner: String,
    child: Child,
    _stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Copy {
    fn start(settings: &Settings, owner: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "replica_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE, "projection")
            .env(STORE, &settings.store)
            .env(MODEL, &settings.model)
            .env(NAME, &settings.name)
            .env(OWNER, owner)
            .env(PREFIX, &settings.prefix)
            .env(PARTITIONS, settings.partitions.to_string())
            .env(LEASE_MS, settings.lease.as_millis().to_string())
            .env(BATCH, settings.batch.to_string())
            .env(HOLD, &settings.hold)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            owner: owner.to_owned(),
            child,
            _stdin: stdin,
            lines,
        }
    }

    /// Whether the copy has said `word` by now (what it said before is read and dropped).
    fn said(&self, word: &str) -> bool {
        self.lines.try_iter().any(|line| line.contains(word))
    }

    /// Waits until the copy says `word` (libtest may print before it on the same line).
    fn expect(&self, word: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(word) => return,
                Ok(_) => {}
                Err(e) => panic!("{} never said {word:?}: {e}", self.owner),
            }
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {}", self.owner);
    }

    /// SIGKILL, and the process reaped.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM: the copy stops its projections (releasing its leases) and exits.
    fn terminate(mut self) {
        self.signal("-TERM");
        self.expect("stopped");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{} exited with {status}", self.owner);
                return;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.owner);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        // SIGKILL ends a stopped (SIGSTOP) process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory of its own under the temporary directory, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts the three copies and waits until each has started its projection.
fn start_copies(settings: &Settings) -> Vec<Copy> {
    let copies: Vec<Copy> = COPIES.iter().map(|o| Copy::start(settings, o)).collect();
    for copy in &copies {
        copy.expect("ready");
    }
    copies
}

/// One event a writer appended.
#[derive(Clone, Debug)]
struct Appended {
    id: String,
    stream: String,
    version: u64,
    position: u64,
    /// When the append returned (this machine's clock).
    at_ms: i64,
}

/// Four tasks appending one event at a time to 48 streams of `prefix` (each stream has one
/// writer, so its versions follow the appends), pausing `pace` between appends.
struct Writers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Appended>>>,
}

impl Writers {
    fn start(store: &Store, prefix: &str, pace: Duration) -> Self {
        const WRITERS: usize = 4;
        const STREAMS: usize = 48;
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..WRITERS)
            .map(|w| {
                let (store, prefix, stop) = (store.clone(), prefix.to_owned(), stop.clone());
                tokio::spawn(async move {
                    let mut appended = Vec::new();
                    let streams: Vec<usize> = (w..STREAMS).step_by(WRITERS).collect();
                    for i in 0.. {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let stream = format!("{prefix}-s{}", streams[i % streams.len()]);
                        let data = placed(&format!("{prefix}-{w}-{i}"), 1);
                        let id = data.id.clone();
                        let result = store
                            .append(&stream, ExpectedVersion::Any, vec![data])
                            .await
                            .unwrap();
                        appended.push(Appended {
                            id,
                            stream,
                            version: result.last_version,
                            position: result.last_position,
                            at_ms: wall_ms(),
                        });
                        tokio::time::sleep(pace).await;
                    }
                    appended
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the writers: every event appended, and when they stopped.
    async fn finish(self) -> (Vec<Appended>, i64) {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.unwrap());
        }
        (all, wall_ms())
    }
}

/// The worker's lease records, by partition.
async fn records(leases: &Leases, name: &str) -> Vec<LeaseRecord> {
    leases
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.worker == name)
        .collect()
}

/// The partitions `owner` holds in `records`.
fn held_by(records: &[LeaseRecord], owner: &str) -> BTreeSet<u32> {
    holdings_of(records, owner).into_keys().collect()
}

/// The partitions `owner` holds in `records`, with their fencing tokens.
fn holdings_of(records: &[LeaseRecord], owner: &str) -> BTreeMap<u32, u64> {
    records
        .iter()
        .filter(|r| r.owner.as_deref() == Some(owner))
        .map(|r| (r.partition, r.token))
        .collect()
}

/// How many partitions each live owner holds (`-` for free ones).
fn shares(records: &[LeaseRecord]) -> BTreeMap<String, usize> {
    let mut shares = BTreeMap::new();
    for r in records {
        *shares
            .entry(r.owner.clone().unwrap_or_else(|| "-".into()))
            .or_default() += 1;
    }
    shares
}

/// Whether `owners` hold every one of `partitions` partitions, in shares that differ by at
/// most one.
fn balanced(records: &[LeaseRecord], partitions: u32, owners: &[&str]) -> bool {
    let counts: Vec<usize> = owners.iter().map(|o| held_by(records, o).len()).collect();
    let (min, max) = (counts.iter().min(), counts.iter().max());
    records.len() == partitions as usize
        && counts.iter().sum::<usize>() == partitions as usize
        && max.zip(min).is_some_and(|(max, min)| max - min <= 1)
}

/// Polls the worker's leases (every 10 ms) until `done` holds: how long it took, and the
/// records then. Fails after `within`.
async fn wait_leases(
    leases: &Leases,
    name: &str,
    within: Duration,
    what: &str,
    done: impl Fn(&[LeaseRecord]) -> bool,
) -> (Duration, Vec<LeaseRecord>) {
    let started = Instant::now();
    loop {
        let now = records(leases, name).await;
        if done(&now) {
            return (started.elapsed(), now);
        }
        assert!(
            started.elapsed() < within,
            "{what}: not within {within:?}; leases now {:?}",
            shares(&now)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A projection of its own, starting at the store's head (other tests' events stay out).
async fn fresh_projection(store: &Store) -> String {
    let name = unique("Replicated");
    store
        .save_checkpoint(&name, store.head().await.unwrap())
        .await
        .unwrap();
    name
}

/// One application of an event, as the read model recorded it; read in the order of the
/// applications (a serial id: on PostgreSQL in order of insertion, on SQLite of commit).
#[derive(Clone, Debug)]
struct Applied {
    event_id: String,
    stream: String,
    version: u64,
    position: u64,
    part: u32,
    copy: String,
    /// When it was applied (PostgreSQL: the insert; SQLite: when the handler began).
    at_ms: i64,
}

async fn postgres_client() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(
        support::services::postgres_url().expose(),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    client
}

async fn postgres_rows(pg: &tokio_postgres::Client, table: &str) -> Vec<Applied> {
    pg.query(
        &format!(
            "SELECT serial, event_id, stream, version, position, part, copy, \
             (extract(epoch FROM applied_at) * 1000)::bigint FROM {table} ORDER BY serial"
        ),
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| Applied {
        event_id: r.get(1),
        stream: r.get(2),
        version: r.get::<_, i64>(3) as u64,
        position: r.get::<_, i64>(4) as u64,
        part: r.get::<_, i32>(5) as u32,
        copy: r.get(6),
        at_ms: r.get(7),
    })
    .collect()
}

fn sqlite_rows(path: &str) -> Vec<Applied> {
    let conn = open_sqlite_model(path);
    let mut statement = conn
        .prepare(
            "SELECT seq, event_id, stream, version, position, part, copy, at_ms \
             FROM applications ORDER BY seq",
        )
        .unwrap();
    statement
        .query_map([], |r| {
            Ok(Applied {
                event_id: r.get(1)?,
                stream: r.get(2)?,
                version: r.get::<_, i64>(3)? as u64,
                position: r.get::<_, i64>(4)? as u64,
                part: r.get::<_, i64>(5)? as u32,
                copy: r.get(6)?,
                at_ms: r.get(7)?,
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Every appended event has a row, no row is of another event, and each row has its
/// event's stream and version.
fn check_all_applied(applied: &[Applied], appended: &[Appended]) {
    let by_id: HashMap<&str, &Appended> = appended.iter().map(|a| (a.id.as_str(), a)).collect();
    for a in applied {
        if let Some(e) = by_id.get(a.event_id.as_str()) {
            assert_eq!(
                (a.stream.as_str(), a.version, a.position),
                (e.stream.as_str(), e.version, e.position),
                "the row of event {}",
                a.event_id
            );
        }
    }
    let ids: BTreeSet<&str> = applied.iter().map(|a| a.event_id.as_str()).collect();
    let expected: BTreeSet<&str> = appended.iter().map(|a| a.id.as_str()).collect();
    let missing: Vec<_> = expected.difference(&ids).take(5).collect();
    let extra: Vec<_> = ids.difference(&expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} events appended, {} applied: missing {missing:?}, not appended {extra:?}",
        expected.len(),
        ids.len()
    );
}

/// How often each event was applied.
fn applications(applied: &[Applied]) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for a in applied {
        *counts.entry(a.event_id.as_str()).or_default() += 1;
    }
    counts
}

/// Within each stream the versions ascend in the order of `applied`, and within each
/// partition the global positions do (a partition is worked in the global order, each
/// holder going on from where the last one committed).
fn check_order(applied: &[&Applied]) {
    let mut streams: HashMap<&str, u64> = HashMap::new();
    let mut parts: HashMap<u32, (u64, &Applied)> = HashMap::new();
    for a in applied {
        if let Some(last) = streams.insert(&a.stream, a.version) {
            assert!(
                a.version > last,
                "stream {} applied out of order: version {} after {last} ({a:?})",
                a.stream,
                a.version
            );
        }
        if let Some((last, before)) = parts.insert(a.part, (a.position, a)) {
            assert!(
                a.position > last,
                "partition {} went back: {a:?} after {before:?}",
                a.part
            );
        }
    }
}

/// The first application of each event, in the order of the applications.
fn firsts(applied: &[Applied]) -> Vec<&Applied> {
    let mut seen = BTreeSet::new();
    applied
        .iter()
        .filter(|a| seen.insert(a.event_id.as_str()))
        .collect()
}

/// The highest position appended (what every partition must reach).
fn last_position(appended: &[Appended]) -> u64 {
    appended.iter().map(|a| a.position).max().unwrap()
}

/// Which copies applied how many rows.
fn by_copy(applied: &[Applied]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for a in applied {
        *counts.entry(a.copy.as_str()).or_default() += 1;
    }
    counts
}

/// How long partitions went without applying while the writers ran: per partition, the
/// longest time between consecutive rows, and the longest an event waited once both it
/// was appended and the row before it in its partition was written (what a partition
/// left without a holder shows, whatever the writers' pace).
struct Stalls {
    gap: i64,
    worst_gap: Option<Applied>,
    waited: i64,
    worst_wait: Option<Applied>,
}

impl Stalls {
    fn measure(applied: &[Applied], appended: &[Appended], until_ms: i64) -> Self {
        let appended_at: HashMap<&str, i64> =
            appended.iter().map(|a| (a.id.as_str(), a.at_ms)).collect();
        let mut rows: Vec<&Applied> = applied.iter().collect();
        rows.sort_by_key(|a| (a.part, a.at_ms));
        let mut stalls = Self {
            gap: 0,
            worst_gap: None,
            waited: 0,
            worst_wait: None,
        };
        for pair in rows.windows(2) {
            let (before, after) = (pair[0], pair[1]);
            if before.part != after.part || after.at_ms > until_ms {
                continue;
            }
            if after.at_ms - before.at_ms > stalls.gap {
                stalls.gap = after.at_ms - before.at_ms;
                stalls.worst_gap = Some(after.clone());
            }
            let ready = before.at_ms.max(appended_at[after.event_id.as_str()]);
            if after.at_ms - ready > stalls.waited {
                stalls.waited = after.at_ms - ready;
                stalls.worst_wait = Some(after.clone());
            }
        }
        stalls
    }
}

impl std::fmt::Display for Stalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = |a: &Option<Applied>| {
            a.as_ref()
                .map(|a| format!("partition {} at {} by {}", a.part, a.at_ms, a.copy))
                .unwrap_or_default()
        };
        write!(
            f,
            "per partition, longest gap between rows {} ms ({}), longest wait of an event {} ms ({})",
            self.gap,
            at(&self.worst_gap),
            self.waited,
            at(&self.worst_wait)
        )
    }
}

/// Each holding of a partition the parent saw while polling the leases every 10 ms: its
/// owner, when it began (its first expiry seen, less the lease), and the last checkpoint
/// seen under its token.
#[derive(Clone, Debug)]
struct Holding {
    partition: u32,
    token: u64,
    owner: String,
    began_ms: i64,
    checkpoint: Option<u64>,
}

/// The lease history of one worker, recorded in the background.
struct History {
    holdings: Arc<Mutex<Vec<Holding>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl History {
    fn record(leases: &Leases, name: &str, lease: Duration) -> Self {
        let holdings: Arc<Mutex<Vec<Holding>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (leases, name, holdings, stop) = (
                leases.clone(),
                name.to_owned(),
                holdings.clone(),
                stop.clone(),
            );
            async move {
                while !stop.load(Ordering::SeqCst) {
                    for r in records(&leases, &name).await {
                        let mut all = holdings.lock().unwrap();
                        let known = all
                            .iter_mut()
                            .find(|h| h.partition == r.partition && h.token == r.token);
                        match (known, &r.owner, r.expires_at) {
                            (Some(h), _, _) => h.checkpoint = r.checkpoint,
                            (None, Some(owner), Some(expires)) => all.push(Holding {
                                partition: r.partition,
                                token: r.token,
                                owner: owner.clone(),
                                began_ms: expires.timestamp_millis() - lease.as_millis() as i64,
                                checkpoint: r.checkpoint,
                            }),
                            (None, _, _) => {}
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        Self {
            holdings,
            stop,
            task,
        }
    }

    async fn finish(self) -> Vec<Holding> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        Arc::try_unwrap(self.holdings)
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

// ---------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------

/// Kills the copy `victim` (SIGKILL) and waits until others hold every partition it held:
/// those partitions with the tokens it held them by, and the takeover's time, from the
/// kill to the leases showing the new owners.
async fn kill_and_take_over(
    victim: Copy,
    leases: &Leases,
    settings: &Settings,
) -> (BTreeMap<u32, u64>, Duration) {
    let owner = victim.owner.clone();
    let held = holdings_of(&records(leases, &settings.name).await, &owner);
    assert!(!held.is_empty(), "{owner} holds partitions before the kill");
    victim.kill();
    let (took, _) = wait_leases(
        leases,
        &settings.name,
        Duration::from_secs(15),
        "the killed copy's partitions taken over",
        |now| {
            now.iter()
                .filter(|r| held.contains_key(&r.partition))
                .all(|r| r.owner.as_deref().is_some_and(|o| o != owner))
        },
    )
    .await;
    (held, took)
}

/// What a pause past the lease must bring about while the copy is paused.
#[derive(Clone, Copy, PartialEq)]
enum WhilePaused {
    /// Other copies hold every partition it held.
    TakenOver,
    /// Its leases have ended (taken by others, or lapsed: on SQLite a copy paused inside
    /// a write transaction holds the file's write lock, and every copy's renewals wait
    /// for it until it continues).
    Ended,
}

/// Pauses `copy` (SIGSTOP) for `pause`, then continues it (SIGCONT): the partitions it
/// held with their tokens, how long until `what` was true of them, and when it was
/// continued (read just before SIGCONT, so whatever it does after is later).
async fn pause_past_lease(
    copy: &Copy,
    leases: &Leases,
    settings: &Settings,
    pause: Duration,
    what: WhilePaused,
) -> (BTreeMap<u32, u64>, Duration, i64) {
    let held = holdings_of(&records(leases, &settings.name).await, &copy.owner);
    assert!(
        !held.is_empty(),
        "{} holds partitions before the pause",
        copy.owner
    );
    copy.signal("-STOP");
    let stopped = Instant::now();
    let (took, _) = wait_leases(
        leases,
        &settings.name,
        pause,
        match what {
            WhilePaused::TakenOver => "the paused copy's partitions taken over while it is paused",
            WhilePaused::Ended => "the paused copy's leases ended while it is paused",
        },
        |now| {
            now.iter()
                .filter(|r| held.contains_key(&r.partition))
                .all(|r| match (what, r.owner.as_deref()) {
                    (WhilePaused::TakenOver, owner) => owner.is_some_and(|o| o != copy.owner),
                    (WhilePaused::Ended, owner) => owner != Some(&copy.owner),
                })
        },
    )
    .await;
    tokio::time::sleep(pause.saturating_sub(stopped.elapsed())).await;
    let continued = wall_ms();
    copy.signal("-CONT");
    (held, took, continued)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_three_copies_apply_every_event_once_through_a_kill_and_a_pause() {
    let Some(store) = support::services::postgres_store().await else {
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().await;
    let pg = postgres_client().await;
    let table = format!("replicas_{}", uuid::Uuid::new_v4().simple());
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (serial BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL, \
         stream TEXT NOT NULL, version BIGINT NOT NULL, position BIGINT NOT NULL, \
         part INTEGER NOT NULL, copy TEXT NOT NULL, \
         applied_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())"
    ))
    .await
    .unwrap();
    let settings = Settings {
        store: "postgres".into(),
        model: table.clone(),
        name: fresh_projection(&store).await,
        prefix: unique("kp"),
        partitions: 6,
        lease: LEASE,
        batch: 100,
        hold: String::new(),
    };
    let leases = store.leases().await.unwrap();
    let mut copies = start_copies(&settings);
    let (balance, _) = wait_leases(
        &leases,
        &settings.name,
        Duration::from_secs(20),
        "three copies share 6 partitions",
        |now| balanced(now, 6, &COPIES),
    )
    .await;
    let writers = Writers::start(&store, &settings.prefix, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // A copy killed outright: its partitions wait for their leases to end.
    let a = copies.remove(0);
    let (killed, takeover) = kill_and_take_over(a, &leases, &settings).await;
    eprintln!(
        "postgres: takeover of {killed:?} after SIGKILL in {takeover:?} \
         (lease {LEASE:?}, bound {:?}); balanced at start in {balance:?}",
        LEASE + LEASE / 3 + SLACK
    );
    assert!(
        takeover <= LEASE + LEASE / 3 + SLACK,
        "taken over within the lease and a renewal period: {takeover:?}"
    );
    let a = Copy::start(&settings, "copy-a");
    a.expect("ready");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A copy paused past its lease, then continued.
    let (paused, taken, continued) = pause_past_lease(
        &copies[0],
        &leases,
        &settings,
        Duration::from_secs(4),
        WhilePaused::TakenOver,
    )
    .await;
    eprintln!("postgres: {paused:?} of the paused copy taken over in {taken:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (appended, writers_stopped) = writers.finish().await;
    let head = last_position(&appended);
    Projections::wait_until(&store, &settings.name, head, Duration::from_secs(30))
        .await
        .unwrap();
    // The continued copy is back in the share.
    let (rebalanced, _) = wait_leases(
        &leases,
        &settings.name,
        Duration::from_secs(20),
        "the three copies share the partitions again",
        |now| balanced(now, 6, &COPIES),
    )
    .await;

    let applied = postgres_rows(&pg, &table).await;
    check_all_applied(&applied, &appended);
    let twice: Vec<_> = applications(&applied)
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .take(5)
        .collect();
    assert!(twice.is_empty(), "events applied more than once: {twice:?}");
    assert_eq!(applied.len(), appended.len(), "one row per event");
    check_order(&applied.iter().collect::<Vec<_>>());
    eprintln!(
        "postgres: {}; the pause ended at {continued}",
        Stalls::measure(&applied, &appended, writers_stopped)
    );
    let copies_seen = by_copy(&applied);
    eprintln!(
        "postgres: {} events, rows per copy {copies_seen:?}; balanced again {rebalanced:?} after the writers stopped",
        appended.len()
    );
    assert_eq!(copies_seen.len(), 3, "every copy applied events");
    drop((a, copies));
    pg.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_copies_share_partitions_and_a_graceful_stop_hands_over_within_a_second() {
    let Some(store) = support::services::postgres_store().await else {
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().await;
    let settings = Settings {
        store: "postgres".into(),
        // Nothing of this prefix is appended: no row is written.
        model: "replicas_unused".into(),
        name: fresh_projection(&store).await,
        prefix: unique("bp"),
        partitions: 6,
        lease: LEASE,
        batch: 100,
        hold: String::new(),
    };
    let leases = store.leases().await.unwrap();
    let mut copies = start_copies(&settings);
    let (balance, now) = wait_leases(
        &leases,
        &settings.name,
        Duration::from_secs(20),
        "three copies share 6 partitions",
        |now| balanced(now, 6, &COPIES),
    )
    .await;
    for owner in COPIES {
        assert_eq!(held_by(&now, owner).len(), 2, "{owner}: {:?}", shares(&now));
    }
    let c = copies.pop().unwrap();
    let stopping = Instant::now();
    c.terminate();
    let stopped = stopping.elapsed();
    let (_, now) = wait_leases(
        &leases,
        &settings.name,
        Duration::from_secs(10),
        "the two copies left hold every partition",
        |now| {
            now.iter()
                .all(|r| r.owner.as_deref().is_some_and(|o| o != "copy-c"))
        },
    )
    .await;
    let handover = stopping.elapsed();
    eprintln!(
        "balance: 2/2/2 after {balance:?}; SIGTERM to exit {stopped:?}; \
         the other two hold all 6 {handover:?} after SIGTERM: {:?}",
        shares(&now)
    );
    assert!(
        handover < Duration::from_secs(1),
        "handed over within a second of the stop: {handover:?}"
    );
    let (_, now) = wait_leases(
        &leases,
        &settings.name,
        Duration::from_secs(10),
        "the two copies left share the partitions",
        |now| balanced(now, 6, &COPIES[..2]),
    )
    .await;
    assert_eq!(held_by(&now, "copy-a").len(), 3);
    assert_eq!(held_by(&now, "copy-b").len(), 3);
}

/// A copy paused in the middle of committing a batch (its read-model transaction has
/// written the partition's checkpoint, not committed) holds the partition's lease row
/// locked until it continues. The other copies must not wait for that row: they keep
/// renewing and working every other partition, and take the locked one once it is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_lease_row_locked_by_a_paused_commit_stops_no_other_partition() {
    let Some(store) = support::services::postgres_store().await else {
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().await;
    let settings = Settings {
        store: "postgres".into(),
        model: "replicas_unused".into(),
        name: fresh_projection(&store).await,
        prefix: unique("lp"),
        partitions: 6,
        lease: LEASE,
        batch: 100,
        hold: String::new(),
    };
    let leases = store.leases().await.unwrap();
    // The paused copy: it held partition 0 and was stopped between its checkpoint's
    // UPDATE and the COMMIT.
    leases.register(&settings.name, 6).await.unwrap();
    let paused = leases
        .acquire(&settings.name, 0, "paused", LEASE)
        .await
        .unwrap()
        .unwrap();
    let mut pg = postgres_client().await;
    let commit = pg.transaction().await.unwrap();
    commit
        .execute(
            "UPDATE orkestra_leases SET checkpoint = checkpoint \
             WHERE worker = $1 AND partition = 0 AND token = $2",
            &[&settings.name, &(paused.token as i64)],
        )
        .await
        .unwrap();
    let copies: Vec<Copy> = COPIES[..2]
        .iter()
        .map(|o| Copy::start(&settings, o))
        .collect();
    for copy in &copies {
        copy.expect("ready");
    }
    let others = |now: &[LeaseRecord]| {
        now.iter()
            .filter(|r| r.partition != 0)
            .all(|r| r.owner.as_deref().is_some_and(|o| COPIES[..2].contains(&o)))
    };
    wait_leases(
        &leases,
        &settings.name,
        Duration::from_secs(10),
        "the two copies share partitions 1 to 5",
        |now| others(now) && COPIES[..2].iter().all(|o| held_by(now, o).len() >= 2),
    )
    .await;
    // Three leases long, the row stays locked: the copies keep every other partition.
    let until = Instant::now() + 3 * LEASE;
    while Instant::now() < until {
        let now = records(&leases, &settings.name).await;
        assert!(
            others(&now),
            "a copy lost a partition while another partition's row was locked: {:?}",
            now.iter()
                .map(|r| (r.partition, r.owner.clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Continued: its commit is refused by nobody (its token is the partition's still),
    // and partition 0 is taken once the row is free and the lease over.
    commit.rollback().await.unwrap();
    let (taken, _) = wait_leases(
        &leases,
        &settings.name,
        Duration::from_secs(5),
        "partition 0 taken once its row is free",
        |now| {
            now.iter()
                .all(|r| r.owner.as_deref().is_some_and(|o| COPIES[..2].contains(&o)))
        },
    )
    .await;
    eprintln!("locked row: partition 0 taken {taken:?} after the row was free");
    drop(copies);
}

/// A copy paused while its read-model transaction is open (it has written a row) holds
/// PostgreSQL's horizon: no reader of the global order, in any copy, sees a later commit
/// until that transaction ends. The server ends it once it has been idle as long as the
/// copy's lease could last, so the other copies go on applying within about a lease, and
/// the paused copy's row is never committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_copy_paused_inside_its_transaction_holds_up_the_others_for_a_lease_at_most() {
    let Some(store) = support::services::postgres_store().await else {
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().await;
    let pg = postgres_client().await;
    let table = format!("replicas_{}", uuid::Uuid::new_v4().simple());
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (serial BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL, \
         stream TEXT NOT NULL, version BIGINT NOT NULL, position BIGINT NOT NULL, \
         part INTEGER NOT NULL, copy TEXT NOT NULL, \
         applied_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())"
    ))
    .await
    .unwrap();
    let dir = TempDir::new("orkestra-hold");
    let hold = dir.0.join("held");
    let settings = Settings {
        store: "postgres".into(),
        model: table.clone(),
        name: fresh_projection(&store).await,
        prefix: unique("hp"),
        partitions: 6,
        lease: LEASE,
        batch: 100,
        hold: hold.display().to_string(),
    };
    let leases = store.leases().await.unwrap();
    let copies = start_copies(&settings);
    wait_leases(
        &leases,
        &settings.name,
        Duration::from_secs(20),
        "three copies share 6 partitions",
        |now| balanced(now, 6, &COPIES),
    )
    .await;
    let append = |stream: String, order: String| {
        let store = store.clone();
        async move {
            let data = placed(&order, 1);
            let id = data.id.clone();
            let result = store
                .append(&stream, ExpectedVersion::Any, vec![data])
                .await
                .unwrap();
            Appended {
                id,
                stream,
                version: result.last_version,
                position: result.last_position,
                at_ms: wall_ms(),
            }
        }
    };
    let prefix = settings.prefix.clone();
    let mut appended = vec![append(format!("{prefix}-held"), format!("{prefix}-hold-1")).await];
    // The copy that handles it stops inside its transaction.
    let deadline = Instant::now() + Duration::from_secs(10);
    let paused = loop {
        if let Some(copy) = copies.iter().find(|c| c.said("holding")) {
            break copy;
        }
        assert!(Instant::now() < deadline, "no copy held the event");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    paused.signal("-STOP");
    let stopped = Instant::now();
    let theirs = held_by(&records(&leases, &settings.name).await, &paused.owner);
    // Events of the partitions the others hold, appended while it is paused.
    let others: Vec<String> = (0..)
        .map(|k| format!("{prefix}-o{k}"))
        .filter(|s| !theirs.contains(&partition_of(s, 6)))
        .take(20)
        .collect();
    let mut during = Vec::new();
    for (i, stream) in others.into_iter().enumerate() {
        during.push(append(stream, format!("{prefix}-{i}")).await);
    }
    let last = last_position(&during);
    let waited = loop {
        let applied = postgres_rows(&pg, &table).await;
        let ids: BTreeSet<&str> = applied.iter().map(|a| a.event_id.as_str()).collect();
        if during.iter().all(|d| ids.contains(d.id.as_str())) {
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(5),
            "the other copies applied nothing while one was paused inside its transaction \
             (the events up to position {last}, {} of {} applied)",
            during
                .iter()
                .filter(|d| ids.contains(d.id.as_str()))
                .count(),
            during.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "horizon: {} paused inside its transaction; the others applied what followed {waited:?} after the pause",
        paused.owner
    );
    assert!(
        waited <= LEASE + SLACK,
        "held up for longer than a lease: {waited:?}"
    );
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(stopped.elapsed())).await;
    paused.signal("-CONT");
    appended.extend(during);
    Projections::wait_until(
        &store,
        &settings.name,
        last_position(&appended),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let applied = postgres_rows(&pg, &table).await;
    check_all_applied(&applied, &appended);
    assert_eq!(applied.len(), appended.len(), "one row per event");
    drop(copies);
    pg.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_copies_on_one_machine_apply_every_event_at_least_once_through_a_kill_and_a_pause() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = TempDir::new("orkestra-replicas");
    let (events, model) = (dir.0.join("events.db"), dir.0.join("model.db"));
    let model = model.display().to_string();
    drop(open_sqlite_model(&model));
    let store = Store::sqlite(&events).await.unwrap();
    let settings = Settings {
        store: format!("sqlite:{}", events.display()),
        model: model.clone(),
        name: unique("Replicated"),
        prefix: unique("ks"),
        partitions: 6,
        lease: LEASE,
        batch: 50,
        hold: String::new(),
    };
    let leases = store.leases().await.unwrap();
    let history = History::record(&leases, &settings.name, settings.lease);
    let mut copies = start_copies(&settings);
    wait_leases(
        &leases,
        &settings.name,
        Duration::from_secs(20),
        "three copies share 6 partitions",
        |now| balanced(now, 6, &COPIES),
    )
    .await;
    let writers = Writers::start(&store, &settings.prefix, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let a = copies.remove(0);
    let (killed, takeover) = kill_and_take_over(a, &leases, &settings).await;
    eprintln!("sqlite: takeover of {killed:?} after SIGKILL in {takeover:?}");
    assert!(
        takeover <= LEASE + LEASE / 3 + SLACK,
        "taken over within the lease and a renewal period: {takeover:?}"
    );
    let a = Copy::start(&settings, "copy-a");
    a.expect("ready");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (paused, ended, continued) = pause_past_lease(
        &copies[0],
        &leases,
        &settings,
        Duration::from_secs(4),
        WhilePaused::Ended,
    )
    .await;
    eprintln!("sqlite: the leases of {paused:?} of the paused copy ended in {ended:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (appended, _) = writers.finish().await;
    let head = last_position(&appended);
    Projections::wait_until(&store, &settings.name, head, Duration::from_secs(30))
        .await
        .unwrap();
    let holdings = history.finish().await;
    drop((a, copies));

    let applied = sqlite_rows(&model);
    check_all_applied(&applied, &appended);
    check_order(&firsts(&applied));
    // The read model itself: one upserted row per event.
    let conn = open_sqlite_model(&model);
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM model", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        rows as usize,
        appended.len(),
        "one read-model row per event"
    );

    // A repeat is an event within the batch that followed the last checkpoint of a
    // holding that ended (the batch its holder had in hand): the killed copy's and the
    // paused copy's, or any lapsed while the paused copy held the file's write lock
    // (handovers on a stop save their checkpoint, and repeat nothing).
    for (partition, token) in killed.iter().chain(&paused) {
        assert!(
            holdings
                .iter()
                .any(|h| h.partition == *partition && h.token == *token),
            "the lost holding {partition}/{token} was seen: {holdings:?}"
        );
    }
    let mut windows: Vec<(u32, u64, u64)> = Vec::new();
    for ended in holdings.iter().filter(|h| {
        holdings
            .iter()
            .any(|later| later.partition == h.partition && later.token > h.token)
    }) {
        let from = ended.checkpoint.map_or(0, |c| c + 1);
        let batch = store.read_all(from, settings.batch).await.unwrap();
        let to = batch.last().map_or(from, |e| e.position());
        windows.push((ended.partition, from, to));
    }
    let counts = applications(&applied);
    let repeated: Vec<&Applied> = firsts(&applied)
        .into_iter()
        .filter(|a| counts[a.event_id.as_str()] > 1)
        .collect();
    for a in &repeated {
        assert!(
            windows
                .iter()
                .any(|(p, from, to)| *p == a.part && (*from..=*to).contains(&a.position)),
            "applied {} times outside the batch in hand when a holding ended: {a:?}; windows {windows:?}",
            counts[a.event_id.as_str()]
        );
    }

    // The paused copy began nothing after it was continued, except in a partition it took
    // again since (a new holding, after its lease had been taken).
    for a in applied
        .iter()
        .filter(|a| a.copy == "copy-b" && a.at_ms >= continued)
    {
        // It cannot take a lease while stopped: a holding that began after `continued`
        // is a new one.
        let retaken = holdings.iter().any(|h| {
            h.owner == "copy-b"
                && h.partition == a.part
                && (continued..=a.at_ms).contains(&h.began_ms)
        });
        assert!(
            retaken,
            "the paused copy applied an event after it was continued without holding its partition again: {a:?}"
        );
    }
    eprintln!(
        "sqlite: {} events, {} applications, {} events applied again (within {} ended holdings' \
         batches); applications per copy {:?}",
        appended.len(),
        applied.len(),
        repeated.len(),
        windows.len(),
        by_copy(&applied)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rolling_restart_applies_every_event_once_without_a_stall() {
    let Some(store) = support::services::postgres_store().await else {
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().await;
    let pg = postgres_client().await;
    let table = format!("replicas_{}", uuid::Uuid::new_v4().simple());
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (serial BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL, \
         stream TEXT NOT NULL, version BIGINT NOT NULL, position BIGINT NOT NULL, \
         part INTEGER NOT NULL, copy TEXT NOT NULL, \
         applied_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())"
    ))
    .await
    .unwrap();
    let settings = Settings {
        store: "postgres".into(),
        model: table.clone(),
        name: fresh_projection(&store).await,
        prefix: unique("rp"),
        partitions: 6,
        lease: LEASE,
        batch: 100,
        hold: String::new(),
    };
    let leases = store.leases().await.unwrap();
    let mut copies = start_copies(&settings);
    wait_leases(
        &leases,
        &settings.name,
        Duration::from_secs(20),
        "three copies share 6 partitions",
        |now| balanced(now, 6, &COPIES),
    )
    .await;
    let writers = Writers::start(&store, &settings.prefix, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // One copy after the other: stopped, then started again once the others hold its
    // partitions; the next once the three share them again.
    for i in 0..copies.len() {
        let old = copies.remove(i);
        let owner = old.owner.clone();
        old.terminate();
        copies.insert(i, Copy::start(&settings, &owner));
        copies[i].expect("ready");
        let (rebalanced, _) = wait_leases(
            &leases,
            &settings.name,
            Duration::from_secs(20),
            "the three copies share the partitions again",
            |now| balanced(now, 6, &COPIES),
        )
        .await;
        eprintln!("rolling: {owner} restarted, shares again after {rebalanced:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (appended, writers_stopped) = writers.finish().await;
    let head = last_position(&appended);
    Projections::wait_until(&store, &settings.name, head, Duration::from_secs(30))
        .await
        .unwrap();
    drop(copies);

    let applied = postgres_rows(&pg, &table).await;
    check_all_applied(&applied, &appended);
    let twice: Vec<_> = applications(&applied)
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .take(5)
        .collect();
    assert!(twice.is_empty(), "events applied more than once: {twice:?}");
    assert_eq!(applied.len(), appended.len(), "one row per event");
    check_order(&applied.iter().collect::<Vec<_>>());

    let stalls = Stalls::measure(&applied, &appended, writers_stopped);
    eprintln!(
        "rolling: {} events; {stalls}; rows per copy {:?}",
        appended.len(),
        by_copy(&applied)
    );
    assert!(
        (stalls.gap as u128) < LEASE.as_millis() && (stalls.waited as u128) < LEASE.as_millis(),
        "a partition stalled for longer than the lease ({LEASE:?}): {stalls}"
    );
    pg.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}
