//! Leases across real processes: a child process of this test binary (`lease_child`,
//! chosen by `ORKESTRA_LEASE_STORE`) holds a partition's lease; the parent pauses it with
//! SIGSTOP past its lease or kills it with SIGKILL, takes the partition over, and checks
//! that the paused copy, once continued, writes nothing (its fencing token is stale), on
//! the embedded SQLite file shared by both processes and on PostgreSQL.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use orkestra_runtime::store::Leases;
use orkestra_runtime::{SecretUrl, Store, StoreError};

const STORE: &str = "ORKESTRA_LEASE_STORE";
const WORKER: &str = "ORKESTRA_LEASE_WORKER";
/// The child's lease: short, so the tests wait little for it to end.
const CHILD_LEASE: Duration = Duration::from_millis(1500);

async fn open(spec: &str) -> Store {
    match spec.strip_prefix("sqlite:") {
        Some(path) => Store::sqlite(path).await.unwrap(),
        None => Store::postgres(&SecretUrl::new(spec.to_owned()))
            .await
            .unwrap(),
    }
}

/// The child: holds partition 0, says so, then on each line from the parent tries to
/// write its checkpoint through the lease it holds and says what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_child() {
    let (Ok(spec), Ok(worker)) = (std::env::var(STORE), std::env::var(WORKER)) else {
        return;
    };
    let leases = open(&spec).await.leases().await.unwrap();
    let lease = leases
        .acquire(&worker, 0, "child", CHILD_LEASE)
        .await
        .unwrap()
        .expect("the partition is free");
    println!("held {}", lease.token);
    for line in std::io::stdin().lock().lines() {
        let Ok(position) = line.unwrap().trim().parse::<u64>() else {
            break;
        };
        match leases.save_checkpoint(&lease, Some(position)).await {
            Ok(()) => println!("written {position}"),
            Err(StoreError::Fenced { token, .. }) => println!("fenced {token}"),
            Err(e) => println!("error {e}"),
        }
    }
}

struct ChildCopy {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl ChildCopy {
    fn start(spec: &str, worker: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["lease_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(STORE, spec)
            .env(WORKER, worker)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
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
            child,
            stdin,
            lines,
        }
    }

    /// The next thing the child says that starts with `word` (or an error it reports).
    fn expect(&self, word: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the child never said {word:?}"));
            // libtest may print `test lease_child ... ` before the child's first line.
            for said in [word, "error"] {
                if let Some(at) = line.find(said) {
                    return line[at..].to_owned();
                }
            }
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal}");
    }

    fn write(&mut self, position: u64) -> String {
        writeln!(self.stdin, "{position}").unwrap();
        self.stdin.flush().unwrap();
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the child answered")
    }
}

impl Drop for ChildCopy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Takes partition 0 as "parent" as soon as the child's lease lets it; how long that took.
async fn take_over(leases: &Leases, worker: &str) -> (orkestra_runtime::store::Lease, Duration) {
    let started = Instant::now();
    loop {
        if let Some(lease) = leases
            .acquire(worker, 0, "parent", Duration::from_secs(30))
            .await
            .unwrap()
        {
            return (lease, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never taken over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_paused_copy_writes_nothing_after_its_lease_was_taken(spec: &str) {
    let store = open(spec).await;
    let leases = store.leases().await.unwrap();
    let worker = format!("Tally-{}", uuid::Uuid::new_v4().simple());
    leases.register(&worker, 1).await.unwrap();
    let mut child = ChildCopy::start(spec, &worker);
    let held: u64 = child.expect("held")[5..].parse().unwrap();
    assert_eq!(child.write(10), "written 10", "the holder writes");
    assert!(
        leases
            .acquire(&worker, 0, "parent", Duration::from_secs(30))
            .await
            .unwrap()
            .is_none(),
        "a live lease of another process is not taken"
    );

    child.signal("-STOP");
    let (lease, waited) = take_over(&leases, &worker).await;
    assert_eq!(lease.token, held + 1);
    assert!(
        waited <= CHILD_LEASE + Duration::from_millis(500),
        "taken within the lease: {waited:?}"
    );
    leases.save_checkpoint(&lease, Some(20)).await.unwrap();

    child.signal("-CONT");
    assert_eq!(
        child.write(15),
        format!("fenced {held}"),
        "the continued copy's write is refused"
    );
    assert_eq!(leases.checkpoint(&worker, 0).await.unwrap(), Some(20));
}

async fn a_killed_copys_partition_is_taken_when_its_lease_ends(spec: &str) {
    let store = open(spec).await;
    let leases = store.leases().await.unwrap();
    let worker = format!("Relay-{}", uuid::Uuid::new_v4().simple());
    let child = ChildCopy::start(spec, &worker);
    let held: u64 = child.expect("held")[5..].parse().unwrap();
    child.signal("-KILL");
    let (lease, waited) = take_over(&leases, &worker).await;
    assert_eq!(lease.token, held + 1);
    assert!(
        waited <= CHILD_LEASE + Duration::from_millis(500),
        "taken within the lease: {waited:?}"
    );
}

fn sqlite_spec() -> String {
    let dir =
        std::env::temp_dir().join(format!("orkestra-leases-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    format!("sqlite:{}", dir.join("leases.db").display())
}

async fn postgres_spec() -> Option<String> {
    support::services::postgres_store().await?;
    Some(support::services::postgres_url().expose().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_paused_copy_writes_nothing_after_its_lease_was_taken() {
    a_paused_copy_writes_nothing_after_its_lease_was_taken(&sqlite_spec()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_killed_copys_partition_is_taken_when_its_lease_ends() {
    a_killed_copys_partition_is_taken_when_its_lease_ends(&sqlite_spec()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_paused_copy_writes_nothing_after_its_lease_was_taken() {
    let Some(spec) = postgres_spec().await else {
        return;
    };
    a_paused_copy_writes_nothing_after_its_lease_was_taken(&spec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_killed_copys_partition_is_taken_when_its_lease_ends() {
    let Some(spec) = postgres_spec().await else {
        return;
    };
    a_killed_copys_partition_is_taken_when_its_lease_ends(&spec).await;
}
