//! [`PostgresKeyStore`]: keys in the PostgreSQL store's database, on a small pool of
//! their own.
//!
//! A deleted row is a dead tuple until `VACUUM` reclaims it: after each forget the key
//! store runs `VACUUM orkestra_keys` (outside any transaction), which removes the dead
//! row version from the table's pages so later keys overwrite its space. What it cannot
//! reach is documented in the guide (`book/src/personal-data.md`): WAL segments not yet
//! recycled, WAL archives and base backups taken while the key existed.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::future::BoxFuture;
use tokio_postgres::NoTls;

use super::{KeyError, KeyStore, SubjectKey, check_subject};
use crate::config::SecretUrl;

const NAME: &str = "postgres";

/// In one transaction under an advisory lock: two processes (or two handles of one)
/// creating the tables at once would otherwise race in `CREATE TABLE IF NOT EXISTS`,
/// which PostgreSQL does not make atomic (a duplicate key in `pg_type`).
const SCHEMA: &str = "
BEGIN;
SELECT pg_advisory_xact_lock(7385214419);
CREATE TABLE IF NOT EXISTS orkestra_keys (
    subject    text        PRIMARY KEY,
    key        bytea       NOT NULL,  -- 32 bytes, AES-256
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Forgotten subjects: never given a key again.
CREATE TABLE IF NOT EXISTS orkestra_erasures (
    subject      text        PRIMARY KEY,
    forgotten_at timestamptz NOT NULL DEFAULT now()
);
COMMIT;
";

/// The first key of the two-key advisory lock that makes a subject's key and forgets
/// it, one at a time ("OKEY"; the two-key space is apart from the one-key locks of
/// `append_if`).
const LOCK_CLASS: i32 = 0x4f4b_4559;

/// Keys in PostgreSQL (`orkestra_keys`, erasures in `orkestra_erasures`): the PostgreSQL
/// store's own, in its database. Making a key and forgetting a subject take the same
/// advisory lock on the subject, so a key is made once and never after its subject's
/// erasure, across every process; after a forget, `VACUUM orkestra_keys` removes the
/// deleted row's dead tuple.
pub struct PostgresKeyStore {
    pool: Pool,
    url: SecretUrl,
    /// The key tables, created by the first use (or by [`PostgresKeyStore::connect`]).
    schema: tokio::sync::OnceCell<()>,
}

impl std::fmt::Debug for PostgresKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresKeyStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

fn backend_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> KeyError {
    KeyError::backend(NAME, e)
}

impl PostgresKeyStore {
    /// Connects to the database at `url` and creates the key tables if missing.
    pub async fn connect(url: &SecretUrl) -> Result<Self, KeyError> {
        let store = Self::lazy(url)?;
        // Connects and creates the tables now, so a bad URL fails here.
        drop(store.client().await?);
        Ok(store)
    }

    /// The key store of the database at `url`, connecting (and creating the key tables)
    /// on its first use, for `Store::with_keys` when keys
    /// may never be needed (a bad URL then fails at the first key, not here).
    pub fn lazy(url: &SecretUrl) -> Result<Self, KeyError> {
        let config: tokio_postgres::Config =
            url.expose().parse().map_err(|e: tokio_postgres::Error| {
                KeyError::backend(NAME, format!("{url} is not a PostgreSQL URL: {e}"))
            })?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(4)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(std::time::Duration::from_secs(30)))
            .build()
            .map_err(backend_error)?;
        Ok(Self {
            pool,
            url: url.clone(),
            schema: tokio::sync::OnceCell::new(),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, KeyError> {
        let client = self.pool.get().await.map_err(backend_error)?;
        self.schema
            .get_or_try_init(|| async { client.batch_execute(SCHEMA).await.map_err(backend_error) })
            .await?;
        Ok(client)
    }
}

async fn read_key(
    client: &impl tokio_postgres::GenericClient,
    subject: &str,
) -> Result<Option<SubjectKey>, KeyError> {
    let row = client
        .query_opt(
            "SELECT key FROM orkestra_keys WHERE subject = $1",
            &[&subject],
        )
        .await
        .map_err(backend_error)?;
    match row {
        None => Ok(None),
        Some(row) => {
            let bytes =
                zeroize::Zeroizing::new(row.try_get::<_, Vec<u8>>(0).map_err(backend_error)?);
            SubjectKey::from_slice(subject, &bytes).map(Some)
        }
    }
}

impl KeyStore for PostgresKeyStore {
    fn name(&self) -> &'static str {
        NAME
    }

    fn key<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<Option<SubjectKey>, KeyError>> {
        Box::pin(async move { read_key(&**self.client().await?, subject).await })
    }

    fn key_or_create<'a>(
        &'a self,
        subject: &'a str,
    ) -> BoxFuture<'a, Result<SubjectKey, KeyError>> {
        Box::pin(async move {
            check_subject(subject)?;
            let mut client = self.client().await?;
            if let Some(key) = read_key(&**client, subject).await? {
                return Ok(key);
            }
            let tx = client.transaction().await.map_err(backend_error)?;
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&LOCK_CLASS, &subject],
            )
            .await
            .map_err(backend_error)?;
            // Read committed: this statement sees what a writer that held the lock
            // before committed.
            if let Some(key) = read_key(&*tx, subject).await? {
                return Ok(key);
            }
            let forgotten: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM orkestra_erasures WHERE subject = $1)",
                    &[&subject],
                )
                .await
                .and_then(|r| r.try_get(0))
                .map_err(backend_error)?;
            if forgotten {
                return Err(KeyError::Forgotten {
                    subject: subject.to_owned(),
                });
            }
            let key = SubjectKey::generate();
            tx.execute(
                "INSERT INTO orkestra_keys (subject, key) VALUES ($1, $2)",
                &[&subject, &&key.expose()[..]],
            )
            .await
            .map_err(backend_error)?;
            tx.commit().await.map_err(backend_error)?;
            Ok(key)
        })
    }

    fn forget<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<bool, KeyError>> {
        Box::pin(async move {
            check_subject(subject)?;
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(backend_error)?;
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&LOCK_CLASS, &subject],
            )
            .await
            .map_err(backend_error)?;
            tx.execute(
                "INSERT INTO orkestra_erasures (subject) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&subject],
            )
            .await
            .map_err(backend_error)?;
            let deleted = tx
                .execute("DELETE FROM orkestra_keys WHERE subject = $1", &[&subject])
                .await
                .map_err(backend_error)?;
            tx.commit().await.map_err(backend_error)?;
            // The deleted row stays in the table's pages as a dead tuple until VACUUM
            // removes it; VACUUM cannot run inside a transaction block.
            client
                .batch_execute("VACUUM orkestra_keys")
                .await
                .map_err(backend_error)?;
            Ok(deleted > 0)
        })
    }

    fn is_forgotten<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<bool, KeyError>> {
        Box::pin(async move {
            self.client()
                .await?
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM orkestra_erasures WHERE subject = $1)",
                    &[&subject],
                )
                .await
                .and_then(|r| r.try_get(0))
                .map_err(backend_error)
        })
    }
}
