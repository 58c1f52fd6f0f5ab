//! PostgreSQL positions survive a logical move (issue 23, item 3): a store is dumped
//! with `pg_dump` from the main server and restored into a second cluster made here with
//! `initdb` (whose transaction ids start low again); the history stays visible in the
//! global order, checkpoints still point into it, and new events get larger positions.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use orkestra_runtime::{ExpectedVersion, SecretUrl, Store};
use support::databases::FreshDatabase;
use support::store_suite::{placed, unique};

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A throwaway cluster: stopped and deleted when dropped, also when the test fails.
struct Cluster {
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Runs a server binary as the `postgres` user (initdb and the server refuse root).
    fn as_postgres(program: &str, args: &[&str]) -> Result<String, String> {
        let path = format!("{BIN}/{program}");
        let running_as_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let mut command = if running_as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", &path]);
            c
        } else {
            Command::new(&path)
        };
        let out = command
            .args(args)
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{program} {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn start() -> Result<Self, String> {
        if !Path::new(BIN).join("initdb").exists() {
            return Err(format!("{BIN}/initdb is not installed"));
        }
        let dir = std::env::temp_dir().join(format!(
            "orkestra-cluster-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        // Owned by postgres when we are root; the guard deletes it from here on.
        let _ = Command::new("chown")
            .args(["postgres:postgres", &dir.display().to_string()])
            .status();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let cluster = Self { dir, port };
        let data = cluster.data().display().to_string();
        Self::as_postgres(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            cluster.dir.display()
        );
        let log = cluster.dir.join("server.log").display().to_string();
        Self::as_postgres(
            "pg_ctl",
            &["-D", &data, "-o", &options, "-l", &log, "-w", "start"],
        )?;
        Ok(cluster)
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data().display().to_string();
        let _ = Self::as_postgres("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a client binary (pg_dump, pg_restore, createdb) and fails with its output.
fn client_tool(program: &str, args: &[&str]) {
    let out = Command::new(format!("{BIN}/{program}"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_keep_growing_after_a_dump_and_restore_into_a_new_cluster() {
    let db = match FreshDatabase::create("restore").await {
        Ok(db) => db,
        Err(e) => return support::services::unavailable("PostgreSQL", &e),
    };
    let cluster = match Cluster::start() {
        Ok(c) => c,
        Err(e) => return support::services::unavailable("a second PostgreSQL cluster", &e),
    };

    // History in the main cluster, whose transaction ids are far above a new cluster's.
    let old = Store::postgres(&db.url()).await.unwrap();
    let stream = unique("moved");
    let mut last_old = 0;
    for i in 0..5 {
        last_old = old
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![placed(&format!("o{i}"), i)],
            )
            .await
            .unwrap()
            .last_position;
    }
    old.save_checkpoint("reader", Some(last_old)).await.unwrap();
    drop(old);

    // pg_dump from the main cluster, restore into the new one.
    let dump = cluster.dir.join("store.dump").display().to_string();
    let source = db.url();
    client_tool("pg_dump", &["-Fc", "-f", &dump, "-d", source.expose()]);
    let port = cluster.port.to_string();
    client_tool(
        "createdb",
        &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "restored"],
    );
    client_tool(
        "pg_restore",
        &["--exit-on-error", "-d", &cluster.url("restored"), &dump],
    );

    let moved = Store::postgres(&SecretUrl::new(cluster.url("restored")))
        .await
        .unwrap();
    let history = moved.read_all(0, 100).await.unwrap();
    assert_eq!(
        history.len(),
        5,
        "the restored history is visible in the global order"
    );
    assert_eq!(moved.head().await.unwrap(), Some(last_old));
    assert_eq!(
        moved.load_checkpoint("reader").await.unwrap(),
        Some(last_old)
    );
    let new = moved
        .append(&stream, ExpectedVersion::Exact(4), vec![placed("n", 9)])
        .await
        .unwrap();
    assert!(
        new.last_position > last_old,
        "a new event's position {} is above the restored history's last {last_old}",
        new.last_position
    );
    // A reader resuming from the checkpoint sees the new event, and only it.
    let mut after = Vec::new();
    for _ in 0..50 {
        after = moved.read_all(last_old + 1, 100).await.unwrap();
        if !after.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(after.len(), 1, "the new event follows the checkpoint");
    assert_eq!(after[0].position(), new.last_position);
    assert_eq!(moved.read_stream(&stream, 0, 10).await.unwrap().len(), 6);
    drop(moved);
    drop(cluster);
}
