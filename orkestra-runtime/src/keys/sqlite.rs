//! [`SqliteKeyStore`]: keys in the embedded store's file, on a connection of their own
//! with `secure_delete` on, so a forgotten key's bytes are overwritten with zeros rather
//! than left in a free page.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{KeyError, KeyStore, SubjectKey, check_subject};

const NAME: &str = "sqlite";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orkestra_keys (
    subject    TEXT    PRIMARY KEY,
    key        BLOB    NOT NULL,  -- 32 bytes, AES-256
    created_at INTEGER NOT NULL   -- microseconds since the Unix epoch, UTC
);
-- Forgotten subjects: never given a key again.
CREATE TABLE IF NOT EXISTS orkestra_erasures (
    subject      TEXT    PRIMARY KEY,
    forgotten_at INTEGER NOT NULL -- microseconds since the Unix epoch, UTC
);
";

/// How often [`forget`](KeyStore::forget) tries to truncate the WAL while readers hold
/// it, and how long it waits between tries.
const TRUNCATE_TRIES: u32 = 50;
const TRUNCATE_WAIT: Duration = Duration::from_millis(20);

/// Keys in a SQLite file (`orkestra_keys`, erasures in `orkestra_erasures`): the
/// SQLite store's own, opened beside it. Its connection runs with
/// `PRAGMA secure_delete = ON`, so deleting a key overwrites its bytes; after a forget
/// the WAL, which still holds the page as it was, is checkpointed into the file and
/// truncated (`wal_checkpoint(TRUNCATE)`, retried while other connections read).
pub struct SqliteKeyStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteKeyStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn backend_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> KeyError {
    KeyError::backend(NAME, e)
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl SqliteKeyStore {
    /// Opens the key tables of the SQLite file at `path` (created if missing).
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref().to_owned();
        let opened = path.clone();
        let conn = tokio::task::spawn_blocking(move || {
            let conn = Connection::open(&opened).map_err(|e| {
                KeyError::backend(NAME, format!("cannot open {}: {e}", opened.display()))
            })?;
            conn.execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=10000; \
                 PRAGMA secure_delete=ON;",
            )
            .and_then(|()| conn.execute_batch(SCHEMA))
            .map_err(|e| {
                KeyError::backend(
                    NAME,
                    format!("cannot create the key tables in {}: {e}", opened.display()),
                )
            })?;
            Ok::<_, KeyError>(conn)
        })
        .await
        .map_err(backend_error)??;
        Ok(Self {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection, on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, KeyError> + Send + 'static,
    ) -> Result<T, KeyError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut crate::sync::lock(&conn)))
            .await
            .map_err(backend_error)?
    }
}

fn read_key(conn: &Connection, subject: &str) -> Result<Option<SubjectKey>, KeyError> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached("SELECT key FROM orkestra_keys WHERE subject = ?1")
        .and_then(|mut s| s.query_row([subject], |r| r.get(0)).optional())
        .map_err(backend_error)?;
    let bytes = bytes.map(zeroize::Zeroizing::new);
    bytes
        .map(|b| SubjectKey::from_slice(subject, &b))
        .transpose()
}

impl KeyStore for SqliteKeyStore {
    fn name(&self) -> &'static str {
        NAME
    }

    fn key<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<Option<SubjectKey>, KeyError>> {
        let subject = subject.to_owned();
        Box::pin(self.run(move |conn| read_key(conn, &subject)))
    }

    fn key_or_create<'a>(
        &'a self,
        subject: &'a str,
    ) -> BoxFuture<'a, Result<SubjectKey, KeyError>> {
        let subject = subject.to_owned();
        Box::pin(async move {
            check_subject(&subject)?;
            self.run(move |conn| {
                if let Some(key) = read_key(conn, &subject)? {
                    return Ok(key);
                }
                // The write lock from the start: another process making the same key
                // waits here and then finds it.
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(backend_error)?;
                if let Some(key) = read_key(&tx, &subject)? {
                    return Ok(key);
                }
                let forgotten: bool = tx
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM orkestra_erasures WHERE subject = ?1)",
                        [&subject],
                        |r| r.get(0),
                    )
                    .map_err(backend_error)?;
                if forgotten {
                    return Err(KeyError::Forgotten { subject });
                }
                let key = SubjectKey::generate();
                tx.execute(
                    "INSERT INTO orkestra_keys (subject, key, created_at) VALUES (?1, ?2, ?3)",
                    params![subject, &key.expose()[..], now_micros()],
                )
                .map_err(backend_error)?;
                tx.commit().map_err(backend_error)?;
                Ok(key)
            })
            .await
        })
    }

    fn forget<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<bool, KeyError>> {
        let subject = subject.to_owned();
        Box::pin(async move {
            check_subject(&subject)?;
            self.run(move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(backend_error)?;
                tx.execute(
                    "INSERT OR IGNORE INTO orkestra_erasures (subject, forgotten_at) VALUES (?1, ?2)",
                    params![subject, now_micros()],
                )
                .map_err(backend_error)?;
                let deleted = tx
                    .execute("DELETE FROM orkestra_keys WHERE subject = ?1", [&subject])
                    .map_err(backend_error)?;
                tx.commit().map_err(backend_error)?;
                // The WAL still holds the page with the key as it was before: copy the
                // zeroed page into the file and empty the WAL. Readers of other
                // connections can hold it back for a moment; try again then.
                for attempt in 1..=TRUNCATE_TRIES {
                    let busy: i64 = conn
                        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                        .map_err(backend_error)?;
                    if busy == 0 {
                        break;
                    }
                    if attempt == TRUNCATE_TRIES {
                        tracing::warn!(
                            subject = %subject,
                            "the key is deleted, but the SQLite WAL could not be truncated \
                             while other connections read; it is overwritten as the store writes on"
                        );
                    }
                    std::thread::sleep(TRUNCATE_WAIT);
                }
                Ok(deleted > 0)
            })
            .await
        })
    }

    fn is_forgotten<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<bool, KeyError>> {
        let subject = subject.to_owned();
        Box::pin(self.run(move |conn| {
            conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM orkestra_erasures WHERE subject = ?1)",
                [&subject],
                |r| r.get(0),
            )
            .map_err(backend_error)
        }))
    }
}
