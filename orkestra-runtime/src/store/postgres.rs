//! The PostgreSQL store (tokio-postgres with a deadpool pool).
//!
//! ## Global order without a global lock
//!
//! A sequence-ordered table lets a reader skip an event: transaction A takes position 5,
//! transaction B takes 6 and commits first, a subscriber reads 6 and moves on, then A
//! commits 5 behind it. Here a row's position is derived from the id of the transaction
//! that wrote it, `(xid8 << 20) + index`, and readers of the global order only see rows
//! whose transaction id is below `pg_snapshot_xmin(pg_current_snapshot())`: every
//! transaction below that horizon has finished, and every transaction that can still
//! commit has a larger id, hence larger positions. Writers on different streams never
//! wait for each other; a subscriber sees a commit once every older transaction has
//! ended (a long-running transaction delays it, never reorders it). At most 2^20 events
//! per append; positions stay below 2^63 until the cluster has used 2^43 transaction ids.
//!
//! Events are append-only: a trigger refuses UPDATE, DELETE and TRUNCATE. Appends notify
//! `orkestra_events` so live subscribers wake at once; they also poll, since a horizon
//! can move without a notice.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, NoTls, Row};

use super::{
    AppendResult, Backend, Direction, EventData, ExpectedVersion, RecordedEvent, StoreError,
    check_append,
};
use crate::config::{SecretUrl, redact};

const ADAPTER: &str = "postgres";
const CHANNEL: &str = "orkestra_events";
/// Most events one append may hold (the low bits of a position).
const MAX_APPEND: usize = 1 << 20;
/// How many times an `Any` append retries when a concurrent writer takes its version.
const ANY_RETRIES: usize = 16;

const SCHEMA: &str = r#"
SELECT pg_advisory_xact_lock(7385214412);
CREATE TABLE IF NOT EXISTS orkestra_events (
    position       BIGINT      PRIMARY KEY,
    tx_id          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    stream         TEXT        NOT NULL,
    version        BIGINT      NOT NULL,
    id             TEXT        NOT NULL UNIQUE,
    event_type     TEXT        NOT NULL,
    schema_version INTEGER     NOT NULL,
    data           JSONB       NOT NULL,
    metadata       JSONB       NOT NULL,
    recorded_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (stream, version)
);
CREATE OR REPLACE FUNCTION orkestra_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'orkestra_events is append-only'; END $$;
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'orkestra_events_no_change') THEN
        CREATE TRIGGER orkestra_events_no_change BEFORE UPDATE OR DELETE ON orkestra_events
            FOR EACH ROW EXECUTE FUNCTION orkestra_events_append_only();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'orkestra_events_no_truncate') THEN
        CREATE TRIGGER orkestra_events_no_truncate BEFORE TRUNCATE ON orkestra_events
            FOR EACH STATEMENT EXECUTE FUNCTION orkestra_events_append_only();
    END IF;
END $$;
"#;

const COLUMNS: &str =
    "position, stream, version, id, event_type, schema_version, data, metadata, recorded_at";

pub(crate) struct PostgresStore {
    pool: Pool,
    url: SecretUrl,
    changes: watch::Sender<u64>,
    listener: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

fn backend_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        adapter: ADAPTER,
        message: redact(&e.to_string()),
    }
}

fn unavailable(url: &SecretUrl, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        adapter: ADAPTER,
        setting: "store.url",
        message: format!("{url}: {}", redact(&e.to_string())),
    }
}

impl PostgresStore {
    pub(crate) async fn connect(url: &SecretUrl) -> Result<Self, StoreError> {
        let config: tokio_postgres::Config =
            url.expose()
                .parse()
                .map_err(|e: tokio_postgres::Error| StoreError::Unavailable {
                    adapter: ADAPTER,
                    setting: "store.url",
                    message: format!("{url} is not a PostgreSQL URL: {}", redact(&e.to_string())),
                })?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .build()
            .map_err(|e| unavailable(url, e))?;
        let client = pool.get().await.map_err(|e| unavailable(url, e))?;
        client
            .batch_execute(&format!("BEGIN; {SCHEMA} COMMIT;"))
            .await
            .map_err(|e| unavailable(url, e))?;
        drop(client);
        let changes = watch::Sender::new(0);
        let listener = tokio::spawn(listen(config, changes.clone()));
        Ok(Self {
            pool,
            url: url.clone(),
            changes,
            listener,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| unavailable(&self.url, e))
    }

    /// One attempt: the outer error is the driver's, the inner one a refusal.
    async fn try_append(
        client: &mut deadpool_postgres::Object,
        stream: &str,
        expected: ExpectedVersion,
        events: &[EventData],
    ) -> Result<Result<AppendResult, StoreError>, tokio_postgres::Error> {
        let tx = client.transaction().await?;
        let current: Option<i64> = tx
            .query_one(
                "SELECT max(version) FROM orkestra_events WHERE stream = $1",
                &[&stream],
            )
            .await?
            .get(0);
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let stored: Vec<(String, String, u64, u64)> = tx
            .query(
                "SELECT id, stream, version, position FROM orkestra_events WHERE id = ANY($1)",
                &[&ids],
            )
            .await?
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, i64>(2) as u64,
                    r.get::<_, i64>(3) as u64,
                )
            })
            .collect();
        match check_append(stream, expected, current.map(|v| v as u64), events, &stored) {
            Ok(Some(done)) => return Ok(Ok(done)),
            Ok(None) => {}
            Err(refused) => return Ok(Err(refused)),
        }
        let first_version = current.map_or(0, |v| v + 1);
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let schema_versions: Vec<i32> = events
            .iter()
            .map(|e| i32::try_from(e.schema_version).unwrap_or(i32::MAX))
            .collect();
        let data: Vec<&serde_json::Value> = events.iter().map(|e| &e.data).collect();
        let metadata: Vec<serde_json::Value> = events
            .iter()
            .map(|e| serde_json::to_value(&e.metadata).unwrap_or(serde_json::Value::Null))
            .collect();
        let rows = tx
            .query(
                "INSERT INTO orkestra_events (position, stream, version, id, event_type, schema_version, data, metadata) \
                 SELECT (pg_current_xact_id()::text::bigint << 20) + t.ord - 1, $1, $2 + t.ord - 1, \
                        t.id, t.event_type, t.schema_version, t.data, t.metadata \
                 FROM unnest($3::text[], $4::text[], $5::int4[], $6::jsonb[], $7::jsonb[]) \
                      WITH ORDINALITY AS t(id, event_type, schema_version, data, metadata, ord) \
                 RETURNING position, version",
                &[&stream, &first_version, &ids, &types, &schema_versions, &data, &metadata],
            )
            .await?;
        tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL]).await?;
        tx.commit().await?;
        let (position, version) = rows
            .iter()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
            .max()
            .unwrap_or((0, first_version));
        Ok(Ok(AppendResult {
            last_version: version as u64,
            last_position: position as u64,
            written: true,
        }))
    }
}

/// Keeps a LISTEN connection open and bumps `changes` on every notice, reconnecting
/// with backoff; subscriptions also poll, so a gap here only slows them down.
async fn listen(config: tokio_postgres::Config, changes: watch::Sender<u64>) {
    use futures_util::StreamExt;
    let mut backoff = Duration::from_millis(100);
    loop {
        if let Ok((client, mut connection)) = config.connect(NoTls).await {
            let notices = changes.clone();
            let driver = tokio::spawn(async move {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(AsyncMessage::Notification(_)) => notices.send_modify(|c| *c += 1),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            });
            if client
                .batch_execute(&format!("LISTEN {CHANNEL}"))
                .await
                .is_ok()
            {
                backoff = Duration::from_millis(100);
                // Anything committed while we were not listening: look again.
                changes.send_modify(|c| *c += 1);
            }
            let _ = driver.await;
            drop(client);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn row_to_event(row: &Row) -> Result<RecordedEvent, StoreError> {
    let position: i64 = row.try_get(0).map_err(backend_error)?;
    let corrupt = |message: String| StoreError::Corrupt {
        location: format!("position {position}"),
        message,
    };
    let metadata: serde_json::Value = row.try_get(7).map_err(|e| corrupt(e.to_string()))?;
    Ok(RecordedEvent {
        position: position as u64,
        stream: row.try_get(1).map_err(|e| corrupt(e.to_string()))?,
        version: row
            .try_get::<_, i64>(2)
            .map_err(|e| corrupt(e.to_string()))? as u64,
        id: row.try_get(3).map_err(|e| corrupt(e.to_string()))?,
        event_type: row.try_get(4).map_err(|e| corrupt(e.to_string()))?,
        schema_version: row
            .try_get::<_, i32>(5)
            .map_err(|e| corrupt(e.to_string()))? as u32,
        data: row.try_get(6).map_err(|e| corrupt(e.to_string()))?,
        metadata: serde_json::from_value(metadata)
            .map_err(|e| corrupt(format!("metadata is not Orkestra metadata: {e}")))?,
        recorded_at: row
            .try_get::<_, std::time::SystemTime>(8)
            .map(chrono::DateTime::<chrono::Utc>::from)
            .map_err(|e| corrupt(e.to_string()))?,
    })
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Backend for PostgresStore {
    fn name(&self) -> &'static str {
        ADAPTER
    }

    fn append<'a>(
        &'a self,
        stream: &'a str,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        Box::pin(async move {
            if events.len() > MAX_APPEND {
                return Err(StoreError::Invalid(format!(
                    "at most {MAX_APPEND} events per append"
                )));
            }
            let mut attempts = 0;
            loop {
                attempts += 1;
                let mut client = self.client().await?;
                match Self::try_append(&mut client, stream, expected, &events).await {
                    Ok(outcome) => return outcome,
                    // A concurrent writer took the version (or an id) first: look again;
                    // the next round reports a stale expectation, a repeat or a duplicate,
                    // or (for `Any`) writes after it.
                    Err(e)
                        if e.code() == Some(&SqlState::UNIQUE_VIOLATION)
                            && attempts <= ANY_RETRIES => {}
                    Err(e) => return Err(backend_error(e)),
                }
            }
        })
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a str,
        from_version: u64,
        max: usize,
        direction: Direction,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let sql = match direction {
                Direction::Forwards => format!(
                    "SELECT {COLUMNS} FROM orkestra_events WHERE stream = $1 AND version >= $2 ORDER BY version ASC LIMIT $3"
                ),
                Direction::Backwards => format!(
                    "SELECT {COLUMNS} FROM orkestra_events WHERE stream = $1 AND version <= $2 ORDER BY version DESC LIMIT $3"
                ),
            };
            let limit = clamp(max as u64);
            let rows = client
                .query(&sql, &[&stream, &clamp(from_version), &limit])
                .await
                .map_err(backend_error)?;
            rows.iter().map(row_to_event).collect()
        })
    }

    fn read_all(
        &self,
        from_position: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<RecordedEvent>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM orkestra_events \
                         WHERE position >= $1 AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
                         ORDER BY position ASC LIMIT $2"
                    ),
                    &[&clamp(from_position), &clamp(max as u64)],
                )
                .await
                .map_err(backend_error)?;
            rows.iter().map(row_to_event).collect()
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn poll_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(250))
    }
}
