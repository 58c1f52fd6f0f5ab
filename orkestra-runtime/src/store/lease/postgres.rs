//! Leases on PostgreSQL: `orkestra_leases` and friends, the database's clock deciding
//! expiry (copies on several machines agree on it), every change one statement.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use futures_util::future::BoxFuture;
use tokio::sync::OnceCell;
use tokio_postgres::Row;

use super::{Lease, LeaseBackend, LeaseRecord};
use crate::store::{StoreError, sql_int};

const ADAPTER: &str = "postgres";

const SCHEMA: &str = r#"
SELECT pg_advisory_xact_lock(7385214414);
CREATE TABLE IF NOT EXISTS orkestra_workers (
    worker     TEXT    PRIMARY KEY,
    partitions INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS orkestra_leases (
    worker     TEXT        NOT NULL,
    partition  INTEGER     NOT NULL,
    owner      TEXT,
    token      BIGINT      NOT NULL DEFAULT 0,
    expires_at TIMESTAMPTZ,
    checkpoint BIGINT,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (worker, partition)
);
CREATE TABLE IF NOT EXISTS orkestra_runner_members (
    worker     TEXT        NOT NULL,
    owner      TEXT        NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (worker, owner)
);
"#;

/// Milliseconds since the epoch of a `timestamptz` expression, for the client.
macro_rules! millis {
    ($e:literal) => {
        concat!("(extract(epoch FROM ", $e, ") * 1000)::bigint")
    };
}

/// Takes a free, released or expired partition (a new token), or extends the caller's own
/// live holding (the same token). A row another transaction holds locked (a copy paused
/// while committing a batch through the partition) is skipped, not waited for: it is not
/// free now, and waiting would hold up the caller's renewals of what it has. A missing
/// row is inserted.
const ACQUIRE: &str = concat!(
    "WITH free AS ( \
       SELECT worker, partition FROM orkestra_leases \
       WHERE worker = $1 AND partition = $2 FOR UPDATE SKIP LOCKED \
     ), taken AS ( \
       UPDATE orkestra_leases l SET \
         token = CASE WHEN l.owner = $3 AND l.expires_at > clock_timestamp() \
                      THEN l.token ELSE l.token + 1 END, \
         owner = $3, expires_at = clock_timestamp() + $4 * interval '1 millisecond', \
         updated_at = clock_timestamp() \
       FROM free f WHERE l.worker = f.worker AND l.partition = f.partition \
         AND (l.owner IS NULL OR l.expires_at IS NULL OR l.expires_at <= clock_timestamp() \
              OR l.owner = $3) \
       RETURNING l.token, l.expires_at \
     ), added AS ( \
       INSERT INTO orkestra_leases (worker, partition, owner, token, expires_at) \
       SELECT $1, $2, $3, 1, clock_timestamp() + $4 * interval '1 millisecond' \
       WHERE NOT EXISTS (SELECT 1 FROM orkestra_leases WHERE worker = $1 AND partition = $2) \
       ON CONFLICT DO NOTHING \
       RETURNING token, expires_at \
     ) \
     SELECT token, ",
    millis!("expires_at"),
    " FROM taken UNION ALL SELECT token, ",
    millis!("expires_at"),
    " FROM added"
);

const RENEW: &str = concat!(
    "UPDATE orkestra_leases SET expires_at = clock_timestamp() + $5 * interval '1 millisecond', \
       updated_at = clock_timestamp() \
     WHERE worker = $1 AND partition = $2 AND token = $3 AND owner = $4 \
       AND expires_at > clock_timestamp() \
     RETURNING ",
    millis!("expires_at")
);

const RELEASE: &str = "UPDATE orkestra_leases SET owner = NULL, expires_at = NULL, \
       updated_at = clock_timestamp() \
     WHERE worker = $1 AND partition = $2 AND token = $3 AND owner = $4 \
       AND expires_at > clock_timestamp()";

/// Fenced by the token alone: a holder whose lease ran out but was not taken may still
/// record what it finished (nobody else has written since); a new holding has a new token.
const SAVE_CHECKPOINT: &str = "UPDATE orkestra_leases SET checkpoint = $5, \
       updated_at = clock_timestamp() \
     WHERE worker = $1 AND partition = $2 AND token = $3 AND owner = $4";

const LIST: &str = concat!(
    "SELECT l.worker, l.partition, w.partitions, \
       CASE WHEN l.expires_at > clock_timestamp() THEN l.owner END, l.token, \
       CASE WHEN l.expires_at > clock_timestamp() THEN ",
    millis!("l.expires_at"),
    " END, l.checkpoint \
     FROM orkestra_leases l LEFT JOIN orkestra_workers w ON w.worker = l.worker \
     ORDER BY l.worker, l.partition"
);

#[derive(Debug)]
pub(crate) struct PostgresLeases {
    pool: Pool,
    schema: OnceCell<()>,
}

fn backend_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::backend(ADAPTER, e)
}

fn millis(ttl: Duration) -> f64 {
    ttl.as_millis() as f64
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl PostgresLeases {
    pub(crate) fn new(pool: Pool) -> Self {
        Self {
            pool,
            schema: OnceCell::new(),
        }
    }

    /// A pooled connection, the tables created on first use.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        let client = self.pool.get().await.map_err(backend_error)?;
        self.schema
            .get_or_try_init(|| async {
                client
                    .batch_execute(&format!("BEGIN; {SCHEMA} COMMIT;"))
                    .await
                    .map_err(backend_error)
            })
            .await?;
        Ok(client)
    }

    async fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(backend_error)?;
        client
            .query(&statement, params)
            .await
            .map_err(backend_error)
    }
}

fn partition_param(partition: u32) -> i32 {
    i32::try_from(partition).unwrap_or(i32::MAX)
}

type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);

/// A holding's partition and token as SQL values, kept while its parameters are borrowed.
struct HeldKey(i32, i64);

impl HeldKey {
    fn of(lease: &Lease) -> Self {
        Self(partition_param(lease.partition), sql_int(lease.token))
    }

    /// `$1..$4` of every statement on a holding (worker, partition, token, owner), then
    /// `more` from `$5`.
    fn params<'a>(&'a self, lease: &'a Lease, more: &[Param<'a>]) -> Vec<Param<'a>> {
        let mut params: Vec<Param<'a>> = vec![&lease.worker, &self.0, &self.1, &lease.owner];
        params.extend_from_slice(more);
        params
    }
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, StoreError> {
    row.try_get(i).map_err(backend_error)
}

impl LeaseBackend for PostgresLeases {
    fn register<'a>(
        &'a self,
        worker: &'a str,
        partitions: u32,
        initial: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let count = partition_param(partitions);
            let initial = initial.map(sql_int);
            let rows = self
                .query(
                    "WITH ins AS (INSERT INTO orkestra_workers (worker, partitions) VALUES ($1, $2) \
                     ON CONFLICT (worker) DO NOTHING RETURNING partitions) \
                     SELECT partitions FROM ins UNION ALL \
                     SELECT partitions FROM orkestra_workers WHERE worker = $1",
                    &[&worker, &count],
                )
                .await?;
            let stored = match rows.first() {
                Some(row) => get::<i32>(row, 0)?,
                None => count,
            };
            if stored != count {
                return Err(StoreError::PartitionsChanged {
                    worker: worker.to_owned(),
                    stored: u32::try_from(stored).unwrap_or(0),
                    configured: partitions,
                });
            }
            // Only the rows missing: inserting over an existing row would wait for any
            // transaction holding it (a copy paused while committing a batch).
            self.query(
                "INSERT INTO orkestra_leases (worker, partition, checkpoint) \
                 SELECT $1, p, $3 FROM generate_series(0, $2 - 1) AS p \
                 WHERE NOT EXISTS (SELECT 1 FROM orkestra_leases e \
                                   WHERE e.worker = $1 AND e.partition = p) \
                 ON CONFLICT DO NOTHING",
                &[&worker, &count, &initial],
            )
            .await?;
            Ok(())
        })
    }

    fn reset<'a>(
        &'a self,
        worker: &'a str,
        partitions: u32,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let count = partition_param(partitions);
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(backend_error)?;
            // The worker's row is locked first: a concurrent register waits for the reset.
            tx.execute(
                "INSERT INTO orkestra_workers (worker, partitions) VALUES ($1, $2) \
                 ON CONFLICT (worker) DO UPDATE SET partitions = excluded.partitions",
                &[&worker, &count],
            )
            .await
            .map_err(backend_error)?;
            let next: i64 = tx
                .query_one(
                    "SELECT COALESCE(MAX(token), 0) + 1 FROM orkestra_leases WHERE worker = $1",
                    &[&worker],
                )
                .await
                .and_then(|row| row.try_get(0))
                .map_err(backend_error)?;
            tx.execute("DELETE FROM orkestra_leases WHERE worker = $1", &[&worker])
                .await
                .map_err(backend_error)?;
            tx.execute(
                "INSERT INTO orkestra_leases (worker, partition, token) \
                 SELECT $1, p, $3 FROM generate_series(0, $2 - 1) AS p",
                &[&worker, &count, &next],
            )
            .await
            .map_err(backend_error)?;
            tx.commit().await.map_err(backend_error)
        })
    }

    fn acquire<'a>(
        &'a self,
        worker: &'a str,
        partition: u32,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>, StoreError>> {
        Box::pin(async move {
            let rows = self
                .query(
                    ACQUIRE,
                    &[&worker, &partition_param(partition), &owner, &millis(ttl)],
                )
                .await?;
            rows.first()
                .map(|row| {
                    Ok(Lease {
                        worker: worker.to_owned(),
                        partition,
                        owner: owner.to_owned(),
                        token: get::<i64>(row, 0)? as u64,
                        expires_at: time(get(row, 1)?),
                    })
                })
                .transpose()
        })
    }

    fn renew<'a>(
        &'a self,
        lease: &'a Lease,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>, StoreError>> {
        Box::pin(async move {
            let (key, ttl) = (HeldKey::of(lease), millis(ttl));
            let rows = self.query(RENEW, &key.params(lease, &[&ttl])).await?;
            rows.first()
                .map(|row| {
                    Ok(Lease {
                        expires_at: time(get(row, 0)?),
                        ..lease.clone()
                    })
                })
                .transpose()
        })
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(RELEASE)
                .await
                .map_err(backend_error)?;
            let key = HeldKey::of(lease);
            let n = client
                .execute(&statement, &key.params(lease, &[]))
                .await
                .map_err(backend_error)?;
            Ok(n == 1)
        })
    }

    fn save_checkpoint<'a>(
        &'a self,
        lease: &'a Lease,
        position: Option<u64>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            save_checkpoint_in(&client, lease, position).await
        })
    }

    fn checkpoint<'a>(
        &'a self,
        worker: &'a str,
        partition: u32,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            let rows = self
                .query(
                    "SELECT checkpoint FROM orkestra_leases WHERE worker = $1 AND partition = $2",
                    &[&worker, &partition_param(partition)],
                )
                .await?;
            match rows.first() {
                Some(row) => Ok(get::<Option<i64>>(row, 0)?.map(|p| p as u64)),
                None => Ok(None),
            }
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<LeaseRecord>, StoreError>> {
        Box::pin(async move {
            self.query(LIST, &[])
                .await?
                .iter()
                .map(|row| {
                    Ok(LeaseRecord {
                        worker: get(row, 0)?,
                        partition: get::<i32>(row, 1)? as u32,
                        partitions: get::<Option<i32>>(row, 2)?.map(|p| p as u32),
                        owner: get(row, 3)?,
                        token: get::<i64>(row, 4)? as u64,
                        expires_at: get::<Option<i64>>(row, 5)?.map(time),
                        checkpoint: get::<Option<i64>>(row, 6)?.map(|p| p as u64),
                    })
                })
                .collect()
        })
    }

    fn heartbeat<'a>(
        &'a self,
        worker: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let rows = self
                .query(
                    "WITH beat AS (INSERT INTO orkestra_runner_members (worker, owner, expires_at) \
                       VALUES ($1, $2, clock_timestamp() + $3 * interval '1 millisecond') \
                       ON CONFLICT (worker, owner) DO UPDATE SET expires_at = excluded.expires_at \
                       RETURNING owner) \
                     SELECT owner FROM beat UNION \
                     SELECT owner FROM orkestra_runner_members \
                     WHERE worker = $1 AND expires_at > clock_timestamp() ORDER BY 1",
                    &[&worker, &owner, &millis(ttl)],
                )
                .await?;
            rows.iter().map(|row| get(row, 0)).collect()
        })
    }

    fn members<'a>(&'a self, worker: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let rows = self
                .query(
                    "SELECT owner FROM orkestra_runner_members \
                     WHERE worker = $1 AND expires_at > clock_timestamp() ORDER BY owner",
                    &[&worker],
                )
                .await?;
            rows.iter().map(|row| get(row, 0)).collect()
        })
    }

    fn leave<'a>(
        &'a self,
        worker: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.query(
                "DELETE FROM orkestra_runner_members WHERE worker = $1 AND owner = $2 \
                 RETURNING owner",
                &[&worker, &owner],
            )
            .await
            .map(drop)
        })
    }
}

/// Saves a partition's checkpoint through `client` if `lease`'s token is still the
/// partition's: inside a transaction (a read model's writes) the row lock it takes
/// orders it with a takeover, and a stale token commits nothing.
pub(crate) async fn save_checkpoint_in(
    client: &impl deadpool_postgres::GenericClient,
    lease: &Lease,
    position: Option<u64>,
) -> Result<bool, StoreError> {
    let statement = client
        .prepare_cached(SAVE_CHECKPOINT)
        .await
        .map_err(backend_error)?;
    let (key, position) = (HeldKey::of(lease), position.map(sql_int));
    let n = client
        .execute(&statement, &key.params(lease, &[&position]))
        .await
        .map_err(backend_error)?;
    Ok(n == 1)
}
