//! Leases in the embedded store's file: processes on one machine sharing the file share
//! its leases (one clock: the machine's). Every change is one statement, which SQLite
//! runs under its write lock.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Lease, LeaseBackend, LeaseRecord, expiry};
use crate::store::{StoreError, sql_int};

const ADAPTER: &str = "sqlite";

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS orkestra_workers (
    worker     TEXT    PRIMARY KEY,
    partitions INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS orkestra_leases (
    worker     TEXT    NOT NULL,
    partition  INTEGER NOT NULL,
    owner      TEXT,
    token      INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER,            -- milliseconds since the epoch
    checkpoint INTEGER,
    PRIMARY KEY (worker, partition)
);
CREATE TABLE IF NOT EXISTS orkestra_runner_members (
    worker     TEXT    NOT NULL,
    owner      TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (worker, owner)
);
"#;

#[derive(Debug)]
pub(crate) struct SqliteLeases {
    path: PathBuf,
    /// One connection, opened (and the tables created) on first use.
    conn: Arc<Mutex<Option<Connection>>>,
}

fn backend_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::backend(ADAPTER, e)
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl SqliteLeases {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            conn: Arc::new(Mutex::new(None)),
        }
    }

    /// Runs `f` on the connection, on the blocking pool, with the current time.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, DateTime<Utc>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (conn, path) = (self.conn.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || {
            let mut slot = crate::sync::lock(&conn);
            if slot.is_none() {
                let opened = crate::store::sqlite::open_connection(&path)?;
                opened.execute_batch(SCHEMA).map_err(backend_error)?;
                *slot = Some(opened);
            }
            match slot.as_ref() {
                Some(c) => f(c, Utc::now()),
                None => Err(backend_error("no connection")),
            }
        })
        .await
        .map_err(backend_error)?
    }
}

impl LeaseBackend for SqliteLeases {
    fn register<'a>(
        &'a self,
        worker: &'a str,
        partitions: u32,
        initial: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let worker = worker.to_owned();
        let initial = initial.map(sql_int);
        Box::pin(self.run(move |c, _| {
            c.execute(
                "INSERT INTO orkestra_workers (worker, partitions) VALUES (?1, ?2) \
                 ON CONFLICT (worker) DO NOTHING",
                params![worker, partitions],
            )
            .map_err(backend_error)?;
            let stored: u32 = c
                .query_row(
                    "SELECT partitions FROM orkestra_workers WHERE worker = ?1",
                    [&worker],
                    |r| r.get(0),
                )
                .map_err(backend_error)?;
            if stored != partitions {
                return Err(StoreError::PartitionsChanged {
                    worker,
                    stored,
                    configured: partitions,
                });
            }
            let mut insert = c
                .prepare_cached(
                    "INSERT INTO orkestra_leases (worker, partition, checkpoint) \
                     VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                )
                .map_err(backend_error)?;
            for p in 0..partitions {
                insert
                    .execute(params![worker, p, initial])
                    .map_err(backend_error)?;
            }
            Ok(())
        }))
    }

    fn reset<'a>(
        &'a self,
        worker: &'a str,
        partitions: u32,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let worker = worker.to_owned();
        Box::pin(self.run(move |c, _| {
            let tx = c.unchecked_transaction().map_err(backend_error)?;
            let next: i64 = tx
                .query_row(
                    "SELECT COALESCE(MAX(token), 0) + 1 FROM orkestra_leases WHERE worker = ?1",
                    [&worker],
                    |r| r.get(0),
                )
                .map_err(backend_error)?;
            tx.execute("DELETE FROM orkestra_leases WHERE worker = ?1", [&worker])
                .map_err(backend_error)?;
            tx.execute(
                "INSERT INTO orkestra_workers (worker, partitions) VALUES (?1, ?2) \
                 ON CONFLICT (worker) DO UPDATE SET partitions = excluded.partitions",
                params![worker, partitions],
            )
            .map_err(backend_error)?;
            for p in 0..partitions {
                tx.execute(
                    "INSERT INTO orkestra_leases (worker, partition, token) VALUES (?1, ?2, ?3)",
                    params![worker, p, next],
                )
                .map_err(backend_error)?;
            }
            tx.commit().map_err(backend_error)
        }))
    }

    fn acquire<'a>(
        &'a self,
        worker: &'a str,
        partition: u32,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>, StoreError>> {
        let (worker, owner) = (worker.to_owned(), owner.to_owned());
        Box::pin(self.run(move |c, now| {
            let until = ms(expiry(now, ttl));
            let token: Option<i64> = c
                .prepare_cached(
                    "INSERT INTO orkestra_leases AS l (worker, partition, owner, token, expires_at) \
                     VALUES (?1, ?2, ?3, 1, ?4) \
                     ON CONFLICT (worker, partition) DO UPDATE SET \
                       token = CASE WHEN l.owner = excluded.owner AND l.expires_at > ?5 \
                                    THEN l.token ELSE l.token + 1 END, \
                       owner = excluded.owner, expires_at = excluded.expires_at \
                     WHERE l.owner IS NULL OR l.expires_at IS NULL OR l.expires_at <= ?5 \
                        OR l.owner = excluded.owner \
                     RETURNING token",
                )
                .and_then(|mut s| {
                    s.query_row(params![worker, partition, owner, until, ms(now)], |r| {
                        r.get(0)
                    })
                    .optional()
                })
                .map_err(backend_error)?;
            Ok(token.map(|token| Lease {
                worker,
                partition,
                owner,
                token: token as u64,
                expires_at: time(until),
            }))
        }))
    }

    fn renew<'a>(
        &'a self,
        lease: &'a Lease,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>, StoreError>> {
        let lease = lease.clone();
        Box::pin(self.run(move |c, now| {
            let until = ms(expiry(now, ttl));
            let n = c
                .execute(
                    "UPDATE orkestra_leases SET expires_at = ?5 \
                     WHERE worker = ?1 AND partition = ?2 AND token = ?3 AND owner = ?4 \
                       AND expires_at > ?6",
                    params![
                        lease.worker,
                        lease.partition,
                        sql_int(lease.token),
                        lease.owner,
                        until,
                        ms(now)
                    ],
                )
                .map_err(backend_error)?;
            Ok((n == 1).then(|| Lease {
                expires_at: time(until),
                ..lease
            }))
        }))
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<bool, StoreError>> {
        let lease = lease.clone();
        Box::pin(self.run(move |c, now| {
            let n = c
                .execute(
                    "UPDATE orkestra_leases SET owner = NULL, expires_at = NULL \
                     WHERE worker = ?1 AND partition = ?2 AND token = ?3 AND owner = ?4 \
                       AND expires_at > ?5",
                    params![
                        lease.worker,
                        lease.partition,
                        sql_int(lease.token),
                        lease.owner,
                        ms(now)
                    ],
                )
                .map_err(backend_error)?;
            Ok(n == 1)
        }))
    }

    fn save_checkpoint<'a>(
        &'a self,
        lease: &'a Lease,
        position: Option<u64>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let lease = lease.clone();
        Box::pin(self.run(move |c, _| {
            let n = c
                .execute(
                    "UPDATE orkestra_leases SET checkpoint = ?5 \
                     WHERE worker = ?1 AND partition = ?2 AND token = ?3 AND owner = ?4",
                    params![
                        lease.worker,
                        lease.partition,
                        sql_int(lease.token),
                        lease.owner,
                        position.map(sql_int)
                    ],
                )
                .map_err(backend_error)?;
            Ok(n == 1)
        }))
    }

    fn checkpoint<'a>(
        &'a self,
        worker: &'a str,
        partition: u32,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        let worker = worker.to_owned();
        Box::pin(self.run(move |c, _| {
            let at: Option<Option<i64>> = c
                .query_row(
                    "SELECT checkpoint FROM orkestra_leases WHERE worker = ?1 AND partition = ?2",
                    params![worker, partition],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend_error)?;
            Ok(at.flatten().map(|p| p as u64))
        }))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<LeaseRecord>, StoreError>> {
        Box::pin(self.run(move |c, now| {
            let mut statement = c
                .prepare_cached(
                    "SELECT l.worker, l.partition, w.partitions, \
                       CASE WHEN l.expires_at > ?1 THEN l.owner END, l.token, \
                       CASE WHEN l.expires_at > ?1 THEN l.expires_at END, l.checkpoint \
                     FROM orkestra_leases l LEFT JOIN orkestra_workers w ON w.worker = l.worker \
                     ORDER BY l.worker, l.partition",
                )
                .map_err(backend_error)?;
            let rows = statement
                .query_map([ms(now)], |r| {
                    Ok(LeaseRecord {
                        worker: r.get(0)?,
                        partition: r.get(1)?,
                        partitions: r.get(2)?,
                        owner: r.get(3)?,
                        token: r.get::<_, i64>(4)? as u64,
                        expires_at: r.get::<_, Option<i64>>(5)?.map(time),
                        checkpoint: r.get::<_, Option<i64>>(6)?.map(|p| p as u64),
                    })
                })
                .map_err(backend_error)?;
            rows.collect::<Result<_, _>>().map_err(backend_error)
        }))
    }

    fn heartbeat<'a>(
        &'a self,
        worker: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        let (worker, owner) = (worker.to_owned(), owner.to_owned());
        Box::pin(self.run(move |c, now| {
            c.execute(
                "INSERT INTO orkestra_runner_members (worker, owner, expires_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (worker, owner) DO UPDATE SET expires_at = excluded.expires_at",
                params![worker, owner, ms(expiry(now, ttl))],
            )
            .map_err(backend_error)?;
            let mut statement = c
                .prepare_cached(
                    "SELECT owner FROM orkestra_runner_members \
                     WHERE worker = ?1 AND expires_at > ?2 ORDER BY owner",
                )
                .map_err(backend_error)?;
            let rows = statement
                .query_map(params![worker, ms(now)], |r| r.get(0))
                .map_err(backend_error)?;
            rows.collect::<Result<_, _>>().map_err(backend_error)
        }))
    }

    fn members<'a>(&'a self, worker: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        let worker = worker.to_owned();
        Box::pin(self.run(move |c, now| {
            let mut statement = c
                .prepare_cached(
                    "SELECT owner FROM orkestra_runner_members \
                     WHERE worker = ?1 AND expires_at > ?2 ORDER BY owner",
                )
                .map_err(backend_error)?;
            let rows = statement
                .query_map(params![worker, ms(now)], |r| r.get(0))
                .map_err(backend_error)?;
            rows.collect::<Result<_, _>>().map_err(backend_error)
        }))
    }

    fn leave<'a>(
        &'a self,
        worker: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let (worker, owner) = (worker.to_owned(), owner.to_owned());
        Box::pin(self.run(move |c, _| {
            c.execute(
                "DELETE FROM orkestra_runner_members WHERE worker = ?1 AND owner = ?2",
                params![worker, owner],
            )
            .map(drop)
            .map_err(backend_error)
        }))
    }
}
