//! The embedded store: one SQLite file (WAL, `synchronous=FULL`).
//!
//! One writer thread owns the write connection and commits whatever appends are waiting
//! in a single transaction (group commit), each append inside its own savepoint so one
//! refused append does not undo its neighbours. An append is acknowledged only after its
//! transaction is durable. Readers use their own connections on the blocking pool.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use rusqlite::{Connection, params};
use tokio::sync::{oneshot, watch};

use super::Encoded;
use super::tag_index::{self, DeclaredTag, ReindexBatch, SkippedEvent};
use super::{
    AppendCondition, AppendResult, Backend, Conflict, Direction, ExpectedVersion, Query,
    RecordedEvent, Snapshot, StoreError, StoredId, Tag, check_append, matching_positions,
    next_version, sql_int,
};

const ADAPTER: &str = "sqlite";
/// Most appends one group commit takes.
const MAX_GROUP: usize = 256;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orkestra_events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    stream         TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    id             TEXT    NOT NULL UNIQUE,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    data           TEXT    NOT NULL,
    metadata       TEXT    NOT NULL,
    recorded_at    INTEGER NOT NULL, -- microseconds since the Unix epoch, UTC
    topic          TEXT,             -- the topic it is published on (NULL: not recorded)
    tags           TEXT,             -- its tags as a JSON array of key:value texts (NULL: none)
    UNIQUE (stream, version)
);
-- The tag index, written with the events (dcb.events: read_query, append_if).
CREATE TABLE IF NOT EXISTS orkestra_event_tags (
    position INTEGER NOT NULL,
    tag      TEXT    NOT NULL,
    PRIMARY KEY (tag, position)
) WITHOUT ROWID;
-- The registry of indexed tags (see `tag_index`): the (event type, tag key) pairs
-- decisions read, and whether every stored event of the type carries the key.
CREATE TABLE IF NOT EXISTS orkestra_tag_index (
    event_type   TEXT    NOT NULL,
    tag_key      TEXT    NOT NULL,
    indexed      INTEGER NOT NULL, -- 1: indexed; 0: reindex-tags has events to go through
    reindexed_to INTEGER,          -- the last position a reindex handled (NULL: none)
    declared_at  INTEGER NOT NULL, -- microseconds since the Unix epoch, UTC
    PRIMARY KEY (event_type, tag_key)
) WITHOUT ROWID;
-- The events whose data the running Store::encrypt_personal transaction may rewrite:
-- filled and emptied inside that one transaction, so never seen filled by another.
CREATE TABLE IF NOT EXISTS orkestra_data_rewrites (
    position INTEGER PRIMARY KEY
);
CREATE TRIGGER IF NOT EXISTS orkestra_events_no_delete BEFORE DELETE ON orkestra_events
BEGIN SELECT RAISE(ABORT, 'orkestra_events is append-only'); END;
CREATE TABLE IF NOT EXISTS orkestra_inbox (
    handler    TEXT    NOT NULL,
    message_id TEXT    NOT NULL,
    handled_at INTEGER NOT NULL, -- microseconds since the Unix epoch, UTC
    PRIMARY KEY (handler, message_id)
);
CREATE TABLE IF NOT EXISTS orkestra_snapshots (
    stream   TEXT    PRIMARY KEY,
    version  INTEGER NOT NULL,
    shape    TEXT    NOT NULL,
    state    TEXT    NOT NULL,
    taken_at INTEGER NOT NULL -- microseconds since the Unix epoch, UTC
);
CREATE TABLE IF NOT EXISTS orkestra_checkpoints (
    name       TEXT    PRIMARY KEY,
    position   INTEGER,          -- the last position handled; NULL: none yet
    updated_at INTEGER NOT NULL  -- microseconds since the Unix epoch, UTC
);
";

/// Files written before topics were recorded get the column (an ALTER, not an UPDATE:
/// the append-only triggers do not fire; old rows read as NULL).
fn add_topic_column(conn: &Connection) -> rusqlite::Result<()> {
    let has_topic: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('orkestra_events') WHERE name = 'topic')",
        [],
        |r| r.get(0),
    )?;
    if !has_topic {
        conn.execute_batch("ALTER TABLE orkestra_events ADD COLUMN topic TEXT")?;
    }
    // Tags are recorded from this release on; older rows have none.
    let has_tags: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('orkestra_events') WHERE name = 'tags')",
        [],
        |r| r.get(0),
    )?;
    if !has_tags {
        conn.execute_batch("ALTER TABLE orkestra_events ADD COLUMN tags TEXT")?;
    }
    // A rebuild's target (the head when it began), so a restart mid-rebuild still replays.
    let has_replay: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('orkestra_checkpoints') WHERE name = 'replay_until')",
        [],
        |r| r.get(0),
    )?;
    if !has_replay {
        conn.execute_batch("ALTER TABLE orkestra_checkpoints ADD COLUMN replay_until INTEGER")?;
    }
    // Events are append-only except for the tags a reindex adds and the data
    // `encrypt_personal` seals: the first trigger names every other column, the second
    // lets the data of an event change only while that run's transaction lists it
    // (files of older releases refused every UPDATE, or every UPDATE of data; replaced
    // once).
    let trigger: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'orkestra_events_no_update'",
            [],
            |r| r.get(0),
        )
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    if trigger.is_none_or(|sql| !sql.contains("UPDATE OF") || sql.contains(" data,")) {
        conn.execute_batch(
            "BEGIN IMMEDIATE; DROP TRIGGER IF EXISTS orkestra_events_no_update; \
             CREATE TRIGGER orkestra_events_no_update BEFORE UPDATE OF position, stream, version, \
             id, event_type, schema_version, metadata, recorded_at, topic ON orkestra_events \
             BEGIN SELECT RAISE(ABORT, 'orkestra_events is append-only'); END; \
             DROP TRIGGER IF EXISTS orkestra_events_no_data_update; \
             CREATE TRIGGER orkestra_events_no_data_update BEFORE UPDATE OF data ON orkestra_events \
             WHEN NOT EXISTS (SELECT 1 FROM orkestra_data_rewrites WHERE position = OLD.position) \
             BEGIN SELECT RAISE(ABORT, 'orkestra_events is append-only'); END; COMMIT;",
        )?;
    }
    Ok(())
}

/// The declared tag keys of each event type, read in the writer's transaction: appends
/// of a declared type get the tags they lack from their fields (see `tag_index`).
fn declared_keys(conn: &Connection) -> rusqlite::Result<HashMap<String, Vec<String>>> {
    let mut stmt = conn.prepare_cached("SELECT event_type, tag_key FROM orkestra_tag_index")?;
    let mut declared: HashMap<String, Vec<String>> = HashMap::new();
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        declared.entry(row.get(0)?).or_default().push(row.get(1)?);
    }
    Ok(declared)
}

struct AppendRequest {
    stream: String,
    expected: ExpectedVersion,
    events: Vec<Encoded>,
    condition: Option<AppendCondition>,
    reply: oneshot::Sender<Result<AppendResult, StoreError>>,
}

pub(crate) struct SqliteStore {
    path: PathBuf,
    writer: Mutex<std_mpsc::Sender<AppendRequest>>,
    readers: Mutex<Vec<Connection>>,
    changes: watch::Sender<u64>,
    inbox: Arc<SqliteInbox>,
    leases: Arc<super::lease::SqliteLeases>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

#[cold]
fn backend_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::backend(ADAPTER, e)
}

pub(crate) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| {
        StoreError::unavailable(
            ADAPTER,
            format_args!("cannot open {}", path.display()),
            Some(e.into()),
        )
    })?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=10000; PRAGMA temp_store=MEMORY;",
    )
    .map_err(|e| {
        StoreError::unavailable(ADAPTER, format_args!("{} is not a usable SQLite database", path.display()), Some(e.into()))
    })?;
    Ok(conn)
}

impl SqliteStore {
    pub(crate) async fn open(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_owned();
        let (conn, path) = tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::unavailable(
                        ADAPTER,
                        format_args!("cannot create {}", dir.display()),
                        Some(e.into()),
                    )
                })?;
            }
            let conn = open_connection(&path)?;
            conn.execute_batch(SCHEMA)
                .and_then(|()| add_topic_column(&conn))
                .map_err(|e| {
                    StoreError::unavailable(
                        ADAPTER,
                        format_args!("cannot create the schema in {}", path.display()),
                        Some(e.into()),
                    )
                })?;
            Ok::<_, StoreError>((conn, path))
        })
        .await
        .map_err(backend_error)??;
        let changes = watch::Sender::new(0);
        let (tx, rx) = std_mpsc::channel();
        let notify = changes.clone();
        std::thread::Builder::new()
            .name("orkestra-sqlite-writer".into())
            .spawn(move || writer(conn, rx, notify))
            .map_err(backend_error)?;
        Ok(Self {
            leases: Arc::new(super::lease::SqliteLeases::new(path.clone())),
            inbox: Arc::new(SqliteInbox {
                path: path.clone(),
                conn: Arc::new(Mutex::new(None)),
                claims: std::sync::atomic::AtomicU64::new(0),
            }),
            path,
            writer: Mutex::new(tx),
            readers: Mutex::new(Vec::new()),
            changes,
        })
    }

    /// Runs `f` with a reader connection on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = crate::sync::lock(&self.readers).pop();
        let path = self.path.clone();
        let (result, conn) = tokio::task::spawn_blocking(move || {
            let conn = match conn {
                Some(c) => c,
                None => open_connection(&path)?,
            };
            let result = f(&conn);
            Ok::<_, StoreError>((result, conn))
        })
        .await
        .map_err(backend_error)??;
        crate::sync::lock(&self.readers).push(conn);
        result
    }
}

fn writer(
    mut conn: Connection,
    requests: std_mpsc::Receiver<AppendRequest>,
    changes: watch::Sender<u64>,
) {
    while let Ok(first) = requests.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match requests.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let results = commit_group(&mut conn, &group);
        let any_written = results.iter().any(|r| matches!(r, Ok(a) if a.written));
        for (request, result) in group.into_iter().zip(results) {
            let _ = request.reply.send(result);
        }
        if any_written {
            changes.send_modify(|c| *c += 1);
        }
    }
}

/// One transaction for the whole group; each append in a savepoint.
fn commit_group(
    conn: &mut Connection,
    group: &[AppendRequest],
) -> Vec<Result<AppendResult, StoreError>> {
    let mut tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            return group
                .iter()
                .map(|_| Err(backend_error(e.to_string())))
                .collect();
        }
    };
    let declared = match declared_keys(&tx) {
        Ok(declared) => declared,
        Err(e) => {
            let _ = tx.rollback();
            return group
                .iter()
                .map(|_| Err(backend_error(e.to_string())))
                .collect();
        }
    };
    if let [request] = group {
        // Alone in its transaction: no savepoint needed (a refusal rolls back everything,
        // which is only this append), and SQLite skips the sub-journal it would keep.
        let result = append_one(&tx, request, &declared);
        let committed = if result.is_ok() {
            tx.commit()
        } else {
            tx.rollback()
        };
        return vec![committed.map_err(backend_error).and(result)];
    }
    let mut results = Vec::with_capacity(group.len());
    for request in group {
        let result = match tx.savepoint() {
            Ok(sp) => append_one(&sp, request, &declared)
                .and_then(|result| sp.commit().map(|()| result).map_err(backend_error)),
            Err(e) => Err(backend_error(e)),
        };
        results.push(result);
    }
    match tx.commit() {
        Ok(()) => results,
        Err(e) => group
            .iter()
            .map(|_| Err(backend_error(e.to_string())))
            .collect(),
    }
}

fn append_one(
    conn: &Connection,
    request: &AppendRequest,
    declared: &HashMap<String, Vec<String>>,
) -> Result<AppendResult, StoreError> {
    let (stream, expected, events) = (
        request.stream.as_str(),
        request.expected,
        request.events.as_slice(),
    );
    let current: Option<i64> = conn
        .query_row(
            "SELECT MAX(version) FROM orkestra_events WHERE stream = ?1",
            [stream],
            |r| r.get(0),
        )
        .map_err(backend_error)?;
    let current = current.map(|v| v as u64);
    // One statement for every id of the append (an index probe each, inside SQLite).
    let ids = serde_json::to_string(
        &events
            .iter()
            .map(|e| e.event.id.as_str())
            .collect::<Vec<_>>(),
    )
    .map_err(|e| StoreError::Encode(e.to_string()))?;
    let mut find = conn
        .prepare_cached(
            "SELECT id, stream, version, position FROM orkestra_events \
             WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .map_err(backend_error)?;
    let stored = find
        .query_map([&ids], |r| {
            Ok(StoredId {
                id: r.get(0)?,
                stream: r.get(1)?,
                version: r.get::<_, i64>(2)? as u64,
                position: r.get::<_, i64>(3)? as u64,
            })
        })
        .map_err(backend_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend_error)?;
    if let Some(done) = check_append(stream, expected, current, events, &stored)? {
        return Ok(done);
    }
    // The writer thread is the only writer: nothing can be appended between this check
    // and the inserts below.
    if let Some(condition) = &request.condition
        && let Some(conflict) = first_match(conn, &condition.fail_if_events_match, condition.after)?
    {
        return Err(conflict.into_error(stream, condition.after));
    }
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO orkestra_events (stream, version, id, event_type, schema_version, data, metadata, recorded_at, topic, tags) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .map_err(backend_error)?;
    let now = chrono::Utc::now().timestamp_micros();
    let mut last = AppendResult {
        last_version: 0,
        last_position: 0,
        written: true,
    };
    for (version, e) in (next_version(stream, current)?..).zip(events) {
        let tags = with_declared_tags(&e.event, declared);
        let tags_json = tags_json(&tags)?;
        insert
            .execute(params![
                stream,
                version as i64,
                e.event.id,
                e.event.event_type,
                e.event.schema_version,
                e.data,
                e.metadata,
                now,
                e.event.topic,
                tags_json,
            ])
            .map_err(backend_error)?;
        let position = conn.last_insert_rowid();
        if !tags.is_empty() {
            // One statement per entry: a multi-row insert from the column's JSON measured
            // the same (the cost is the index's leaf pages each commit writes, not the
            // statements; BENCHMARKS.md).
            let mut index = conn
                .prepare_cached("INSERT INTO orkestra_event_tags (position, tag) VALUES (?1, ?2)")
                .map_err(backend_error)?;
            for tag in tags.iter() {
                index
                    .execute(params![position, tag.as_str()])
                    .map_err(backend_error)?;
            }
        }
        last = AppendResult {
            last_version: version,
            last_position: position as u64,
            written: true,
        };
    }
    Ok(last)
}

/// An event's tags with those declared for its type that it lacks, from its fields.
fn with_declared_tags<'e>(
    event: &'e super::EventData,
    declared: &HashMap<String, Vec<String>>,
) -> Cow<'e, [Tag]> {
    let Some(keys) = declared.get(&event.event_type) else {
        return Cow::Borrowed(&event.tags);
    };
    let mut tags = Cow::Borrowed(&event.tags[..]);
    for key in keys {
        if !tag_index::has_key(&tags, key)
            && let Ok(tag) = tag_index::tag_from_data(&event.data, key)
        {
            tags.to_mut().push(tag);
        }
    }
    tags
}

const COLUMNS: &str = "position, stream, version, id, event_type, schema_version, data, metadata, recorded_at, topic, tags";

/// The `tags` column of an event: a JSON array, NULL when it has none.
fn tags_json(tags: &[Tag]) -> Result<Option<String>, StoreError> {
    if tags.is_empty() {
        return Ok(None);
    }
    let texts: Vec<&str> = tags.iter().map(Tag::as_str).collect();
    serde_json::to_string(&texts)
        .map(Some)
        .map_err(|e| StoreError::Encode(e.to_string()))
}

/// The first event matching `query` after position `after` (`None`: from the start).
fn first_match(
    conn: &Connection,
    query: &Query,
    after: Option<u64>,
) -> Result<Option<Conflict>, StoreError> {
    let (positions, texts) = matching_positions(query, |n| format!("?{n}"));
    let sql = format!(
        "SELECT position, event_type FROM orkestra_events WHERE position IN ({positions}) \
         ORDER BY position LIMIT 1"
    );
    let from = after.map_or(0, |a| sql_int(a).saturating_add(1));
    let mut params: Vec<&dyn rusqlite::ToSql> = vec![&from];
    params.extend(texts.iter().map(|t| t as &dyn rusqlite::ToSql));
    let mut stmt = conn.prepare_cached(&sql).map_err(backend_error)?;
    let mut rows = stmt.query(params.as_slice()).map_err(backend_error)?;
    match rows.next().map_err(backend_error)? {
        Some(row) => Ok(Some(Conflict {
            position: row.get::<_, i64>(0).map_err(backend_error)? as u64,
            event_type: row.get(1).map_err(backend_error)?,
        })),
        None => Ok(None),
    }
}

/// The previous row's stream and type, shared with the next row when equal (rows of one
/// query mostly repeat them): one allocation per distinct value, not per row.
#[derive(Default)]
struct Interned {
    stream: Option<Arc<str>>,
    event_type: Option<Arc<str>>,
    topic: Option<Arc<str>>,
}

fn intern(slot: &mut Option<Arc<str>>, text: &str) -> Arc<str> {
    match slot {
        Some(s) if &**s == text => s.clone(),
        _ => {
            let s: Arc<str> = text.into();
            *slot = Some(s.clone());
            s
        }
    }
}

fn row_to_event(
    row: &rusqlite::Row<'_>,
    interned: &mut Interned,
) -> Result<RecordedEvent, StoreError> {
    let position: i64 = row.get(0).map_err(backend_error)?;
    let corrupt = |message: String| StoreError::Corrupt {
        location: format!("position {position}"),
        message,
    };
    let get_text = |i: usize| row.get::<_, String>(i).map_err(|e| corrupt(e.to_string()));
    let data = get_text(6)?;
    let metadata = get_text(7)?;
    let recorded_at: i64 = row
        .get(8)
        .map_err(|e| corrupt(format!("recorded_at: {e}")))?;
    Ok(RecordedEvent {
        position: position as u64,
        stream: intern(
            &mut interned.stream,
            row.get_ref(1)
                .and_then(|v| Ok(v.as_str()?))
                .map_err(|e| corrupt(e.to_string()))?,
        ),
        version: row.get::<_, i64>(2).map_err(|e| corrupt(e.to_string()))? as u64,
        id: get_text(3)?,
        event_type: intern(
            &mut interned.event_type,
            row.get_ref(4)
                .and_then(|v| Ok(v.as_str()?))
                .map_err(|e| corrupt(e.to_string()))?,
        ),
        schema_version: row.get::<_, u32>(5).map_err(|e| corrupt(e.to_string()))?,
        // Checked lazily: `data()` reports text that is not JSON as corrupt, `decode`
        // as a decode error; one bad row does not make a whole stream unreadable.
        data,
        metadata: serde_json::from_str(&metadata)
            .map_err(|e| corrupt(format!("metadata is not Orkestra metadata: {e}")))?,
        recorded_at: chrono::DateTime::from_timestamp_micros(recorded_at)
            .ok_or_else(|| corrupt(format!("recorded_at {recorded_at} is out of range")))?,
        topic: match row.get_ref(9).map_err(|e| corrupt(e.to_string()))? {
            rusqlite::types::ValueRef::Null => None,
            value => Some(intern(
                &mut interned.topic,
                value.as_str().map_err(|e| corrupt(format!("topic: {e}")))?,
            )),
        },
        tags: match row.get_ref(10).map_err(|e| corrupt(e.to_string()))? {
            rusqlite::types::ValueRef::Null => Vec::new(),
            value => {
                let texts: Vec<&str> = serde_json::from_str(
                    value.as_str().map_err(|e| corrupt(format!("tags: {e}")))?,
                )
                .map_err(|e| corrupt(format!("tags are not a JSON array of text: {e}")))?;
                texts
                    .into_iter()
                    .map(|t| Tag::parse(t).map_err(|e| corrupt(format!("tags: {e}"))))
                    .collect::<Result<_, _>>()?
            }
        },
        redacted: Vec::new(),
    })
}

/// Runs a read; `max` (the LIMIT) sizes the result up front, up to a bound.
fn query(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    max: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend_error)?;
    let mut rows = stmt.query(params).map_err(backend_error)?;
    let mut out = Vec::with_capacity(max.min(16_384));
    let mut interned = Interned::default();
    while let Some(row) = rows.next().map_err(backend_error)? {
        out.push(row_to_event(row, &mut interned)?);
    }
    Ok(out)
}

impl Backend for SqliteStore {
    fn name(&self) -> &'static str {
        ADAPTER
    }

    fn append<'a>(
        &'a self,
        stream: &'a str,
        expected: ExpectedVersion,
        events: Vec<Encoded>,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            let request = AppendRequest {
                stream: stream.to_owned(),
                expected,
                events,
                condition: None,
                reply,
            };
            crate::sync::lock(&self.writer)
                .send(request)
                .map_err(|_| backend_error("the writer thread has stopped"))?;
            rx.await
                .map_err(|_| backend_error("the writer thread has stopped"))?
        })
    }

    fn append_if<'a>(
        &'a self,
        stream: &'a str,
        expected: ExpectedVersion,
        events: Vec<Encoded>,
        condition: &'a AppendCondition,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            let request = AppendRequest {
                stream: stream.to_owned(),
                expected,
                events,
                condition: Some(condition.clone()),
                reply,
            };
            crate::sync::lock(&self.writer)
                .send(request)
                .map_err(|_| backend_error("the writer thread has stopped"))?;
            rx.await
                .map_err(|_| backend_error("the writer thread has stopped"))?
        })
    }

    fn read_query<'a>(
        &'a self,
        query: &'a Query,
        from: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        let (positions, texts) = matching_positions(query, |n| format!("?{n}"));
        let limit = texts.len() + 2;
        let sql = format!(
            "SELECT {COLUMNS} FROM orkestra_events WHERE position IN ({positions}) \
             ORDER BY position ASC LIMIT ?{limit}"
        );
        Box::pin(self.read(move |conn| {
            let from = sql_int(from);
            let max_param = sql_int(max);
            let mut params: Vec<&dyn rusqlite::ToSql> = vec![&from];
            params.extend(texts.iter().map(|t| t as &dyn rusqlite::ToSql));
            params.push(&max_param);
            self::query(conn, &sql, &params, max)
        }))
    }

    fn declare_tags<'a>(
        &'a self,
        pairs: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<Vec<bool>, StoreError>> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|&(t, k)| (t.to_owned(), k.to_owned()))
            .collect();
        // In an IMMEDIATE transaction: SQLite's one write lock orders it with the writer
        // thread's appends (which read the registry in theirs).
        Box::pin(self.read(move |conn| {
            let tx = rusqlite::Transaction::new_unchecked(
                conn,
                rusqlite::TransactionBehavior::Immediate,
            )
            .map_err(backend_error)?;
            let mut answers = Vec::with_capacity(pairs.len());
            for (event_type, key) in &pairs {
                let known: Option<bool> = tx
                    .prepare_cached(
                        "SELECT indexed FROM orkestra_tag_index WHERE event_type = ?1 AND tag_key = ?2",
                    )
                    .and_then(|mut stmt| {
                        let mut rows = stmt.query([event_type, key])?;
                        rows.next()?.map(|r| r.get(0)).transpose()
                    })
                    .map_err(backend_error)?;
                let indexed = match known {
                    Some(indexed) => indexed,
                    None => {
                        // Indexed unless a stored event of the type lacks the key.
                        let prefix = format!("{key}:");
                        let indexed: bool = tx
                            .query_row(
                                "SELECT NOT EXISTS (SELECT 1 FROM orkestra_events e \
                                 WHERE e.event_type = ?1 AND NOT EXISTS (SELECT 1 FROM json_each(e.tags) j \
                                 WHERE substr(j.value, 1, length(?2)) = ?2))",
                                params![event_type, prefix],
                                |r| r.get(0),
                            )
                            .map_err(backend_error)?;
                        tx.execute(
                            "INSERT INTO orkestra_tag_index (event_type, tag_key, indexed, declared_at) \
                             VALUES (?1, ?2, ?3, ?4)",
                            params![event_type, key, indexed, chrono::Utc::now().timestamp_micros()],
                        )
                        .map_err(backend_error)?;
                        indexed
                    }
                };
                answers.push(indexed);
            }
            tx.commit().map_err(backend_error)?;
            Ok(answers)
        }))
    }

    fn declared_tags(&self) -> BoxFuture<'_, Result<Vec<DeclaredTag>, StoreError>> {
        Box::pin(self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT event_type, tag_key, indexed, reindexed_to FROM orkestra_tag_index \
                     ORDER BY event_type, tag_key",
                )
                .map_err(backend_error)?;
            stmt.query_map([], |r| {
                Ok(DeclaredTag {
                    event_type: r.get(0)?,
                    tag: r.get(1)?,
                    indexed: r.get(2)?,
                    reindexed_to: r.get::<_, Option<i64>>(3)?.map(|p| p as u64),
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(backend_error)
        }))
    }

    fn count_of_type<'a>(
        &'a self,
        event_type: &'a str,
        after: Option<u64>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let event_type = event_type.to_owned();
        Box::pin(self.read(move |conn| {
            conn.query_row(
                "SELECT count(*) FROM orkestra_events WHERE event_type = ?1 AND position > ?2",
                params![event_type, after.map_or(-1, sql_int)],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(backend_error)
        }))
    }

    fn reindex_batch<'a>(
        &'a self,
        event_type: &'a str,
        tag: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<ReindexBatch, StoreError>> {
        let (event_type, key) = (event_type.to_owned(), tag.to_owned());
        Box::pin(self.read(move |conn| reindex_batch(conn, &event_type, &key, max)))
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a str,
        from_version: u64,
        max: usize,
        direction: Direction,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        let stream = stream.to_owned();
        Box::pin(self.read(move |conn| match direction {
            Direction::Forwards => query(
                conn,
                &format!("SELECT {COLUMNS} FROM orkestra_events WHERE stream = ?1 AND version >= ?2 ORDER BY version ASC LIMIT ?3"),
                &[&stream, &sql_int(from_version), &sql_int(max)],
                max,
            ),
            Direction::Backwards => query(
                conn,
                &format!("SELECT {COLUMNS} FROM orkestra_events WHERE stream = ?1 AND version <= ?2 ORDER BY version DESC LIMIT ?3"),
                &[&stream, &sql_int(from_version), &sql_int(max)],
                max,
            ),
        }))
    }

    fn read_all(
        &self,
        from_position: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<RecordedEvent>, StoreError>> {
        Box::pin(self.read(move |conn| {
            query(
                conn,
                &format!("SELECT {COLUMNS} FROM orkestra_events WHERE position >= ?1 ORDER BY position ASC LIMIT ?2"),
                &[&sql_int(from_position), &sql_int(max)],
                max,
            )
        }))
    }

    fn inbox(&self) -> Option<Arc<dyn crate::handler::InboxBackend>> {
        Some(self.inbox.clone())
    }

    fn rewrite_data<'a>(
        &'a self,
        rewrites: &'a [super::encrypt::DataRewrite],
    ) -> BoxFuture<'a, Result<Vec<u64>, StoreError>> {
        let rewrites = rewrites.to_vec();
        Box::pin(self.read(move |conn| rewrite_data(conn, &rewrites)))
    }

    fn delete_plain_snapshots<'a>(
        &'a self,
        shapes: &'a [String],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let shapes = shapes.to_vec();
        Box::pin(self.read(move |conn| {
            let mut deleted = 0u64;
            let mut stmt = conn
                .prepare_cached(
                    "DELETE FROM orkestra_snapshots WHERE shape = ?1 AND instr(state, ?2) = 0",
                )
                .map_err(backend_error)?;
            for shape in &shapes {
                deleted += stmt
                    .execute(params![shape, crate::keys::ENCRYPTED_KEY])
                    .map_err(backend_error)? as u64;
            }
            Ok(deleted)
        }))
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<(), StoreError>> {
        // On a reader connection: a snapshot is not an append, so it neither waits in the
        // writer's group commit nor holds it up (SQLite serializes the two writes; the
        // busy timeout covers the wait).
        Box::pin(self.read(move |conn| {
            conn.prepare_cached(
                "INSERT INTO orkestra_snapshots (stream, version, shape, state, taken_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (stream) DO UPDATE SET version = excluded.version, \
                 shape = excluded.shape, state = excluded.state, taken_at = excluded.taken_at \
                 WHERE excluded.version > orkestra_snapshots.version \
                 OR excluded.shape <> orkestra_snapshots.shape",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    snapshot.stream,
                    sql_int(snapshot.version),
                    snapshot.shape,
                    snapshot.state,
                    chrono::Utc::now().timestamp_micros(),
                ])
            })
            .map(drop)
            .map_err(backend_error)
        }))
    }

    fn version_of<'a>(
        &'a self,
        stream: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        let (stream, id) = (stream.to_owned(), id.to_owned());
        Box::pin(self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT version FROM orkestra_events WHERE id = ?1 AND stream = ?2")
                .map_err(backend_error)?;
            let mut rows = stmt.query([&id, &stream]).map_err(backend_error)?;
            match rows.next().map_err(backend_error)? {
                Some(row) => Ok(Some(row.get::<_, i64>(0).map_err(backend_error)? as u64)),
                None => Ok(None),
            }
        }))
    }

    fn load_snapshot<'a>(
        &'a self,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        let stream = stream.to_owned();
        Box::pin(self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT version, shape, state FROM orkestra_snapshots WHERE stream = ?1",
                )
                .map_err(backend_error)?;
            let mut rows = stmt.query([&stream]).map_err(backend_error)?;
            let Some(row) = rows.next().map_err(backend_error)? else {
                return Ok(None);
            };
            let version: i64 = row.get(0).map_err(backend_error)?;
            Ok(Some(Snapshot {
                version: version as u64,
                shape: row.get(1).map_err(backend_error)?,
                state: row.get(2).map_err(backend_error)?,
                stream,
            }))
        }))
    }

    fn head(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        Box::pin(self.read(|conn| {
            conn.query_row("SELECT MAX(position) FROM orkestra_events", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .map(|p| p.map(|p| p as u64))
            .map_err(backend_error)
        }))
    }

    fn leases(&self) -> Option<Arc<dyn super::lease::LeaseBackend>> {
        Some(self.leases.clone())
    }

    fn load_checkpoint<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(self.read(checkpoint_column(
            "SELECT position FROM orkestra_checkpoints WHERE name = ?1",
            name.to_owned(),
        )))
    }

    fn save_checkpoint<'a>(
        &'a self,
        name: &'a str,
        position: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let name = name.to_owned();
        // On a reader connection, as snapshots: not an append.
        Box::pin(self.read(move |conn| {
            conn.prepare_cached(
                "INSERT INTO orkestra_checkpoints (name, position, updated_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position, \
                 updated_at = excluded.updated_at",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    name,
                    position.map(sql_int),
                    chrono::Utc::now().timestamp_micros(),
                ])
            })
            .map(drop)
            .map_err(backend_error)
        }))
    }

    fn backlog(
        &self,
        after: Option<u64>,
        until: u64,
    ) -> BoxFuture<'_, Result<super::Backlog, StoreError>> {
        Box::pin(self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT count(*), min(recorded_at) FROM orkestra_events \
                     WHERE position > ?1 AND position <= ?2",
                )
                .map_err(backend_error)?;
            let (events, oldest) = stmt
                .query_row(params![after.map_or(-1, sql_int), sql_int(until)], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?))
                })
                .map_err(backend_error)?;
            Ok(super::Backlog {
                events: events.max(0) as u64,
                oldest: oldest.and_then(chrono::DateTime::from_timestamp_micros),
            })
        }))
    }

    fn load_replay_until<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(self.read(checkpoint_column(
            "SELECT replay_until FROM orkestra_checkpoints WHERE name = ?1",
            name.to_owned(),
        )))
    }

    fn save_replay<'a>(
        &'a self,
        name: &'a str,
        position: Option<u64>,
        until: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let name = name.to_owned();
        Box::pin(self.read(move |conn| {
            conn.prepare_cached(
                "INSERT INTO orkestra_checkpoints (name, position, replay_until, updated_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (name) DO UPDATE SET \
                 position = excluded.position, replay_until = excluded.replay_until, \
                 updated_at = excluded.updated_at",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    name,
                    position.map(sql_int),
                    until.map(sql_int),
                    chrono::Utc::now().timestamp_micros(),
                ])
            })
            .map(drop)
            .map_err(backend_error)
        }))
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn poll_interval(&self) -> Option<std::time::Duration> {
        // Another process may write the same file; its commits send no notice here.
        Some(std::time::Duration::from_millis(500))
    }
}

/// `Store::encrypt_personal`'s rewrites of one batch, in one IMMEDIATE transaction: the
/// events listed in `orkestra_data_rewrites` (what lets the trigger pass), each one's
/// data written where it is still `before`, the list emptied again.
fn rewrite_data(
    conn: &Connection,
    rewrites: &[super::encrypt::DataRewrite],
) -> Result<Vec<u64>, StoreError> {
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)
        .map_err(backend_error)?;
    let mut written = Vec::with_capacity(rewrites.len());
    {
        let mut permit = tx
            .prepare_cached("INSERT OR IGNORE INTO orkestra_data_rewrites (position) VALUES (?1)")
            .map_err(backend_error)?;
        let mut update = tx
            .prepare_cached(
                "UPDATE orkestra_events SET data = ?2 WHERE position = ?1 AND data = ?3",
            )
            .map_err(backend_error)?;
        for r in rewrites {
            let position = sql_int(r.position);
            permit.execute([position]).map_err(backend_error)?;
            if update
                .execute(params![position, r.after, r.before])
                .map_err(backend_error)?
                == 1
            {
                written.push(r.position);
            }
        }
    }
    tx.execute("DELETE FROM orkestra_data_rewrites", [])
        .map_err(backend_error)?;
    tx.commit().map_err(backend_error)?;
    written.sort_unstable();
    Ok(written)
}

/// One batch of a pending pair's reindexing, in one IMMEDIATE transaction (the entries,
/// the events' `tags` column, the registry's cursor and, at the end, its mark).
fn reindex_batch(
    conn: &Connection,
    event_type: &str,
    key: &str,
    max: usize,
) -> Result<ReindexBatch, StoreError> {
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)
        .map_err(backend_error)?;
    let row: Option<(bool, Option<i64>)> = tx
        .query_row(
            "SELECT indexed, reindexed_to FROM orkestra_tag_index WHERE event_type = ?1 AND tag_key = ?2",
            [event_type, key],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(backend_error)?;
    let Some((indexed, cursor)) = row else {
        return Err(super::tag_index::undeclared(event_type, key));
    };
    let mut batch = ReindexBatch::default();
    if indexed {
        batch.done = true;
        return Ok(batch);
    }
    let mut last = cursor;
    {
        let mut read = tx
            .prepare_cached(
                "SELECT position, stream, data, tags FROM orkestra_events \
                 WHERE event_type = ?1 AND position > ?2 ORDER BY position LIMIT ?3",
            )
            .map_err(backend_error)?;
        let mut rows = read
            .query(params![event_type, cursor.unwrap_or(-1), sql_int(max)])
            .map_err(backend_error)?;
        while let Some(row) = rows.next().map_err(backend_error)? {
            let position: i64 = row.get(0).map_err(backend_error)?;
            last = Some(position);
            batch.events += 1;
            let corrupt = |message: String| StoreError::Corrupt {
                location: format!("position {position}"),
                message,
            };
            let mut tags: Vec<String> =
                match row.get::<_, Option<String>>(3).map_err(backend_error)? {
                    Some(json) => serde_json::from_str(&json)
                        .map_err(|e| corrupt(format!("tags are not a JSON array of text: {e}")))?,
                    None => Vec::new(),
                };
            let prefix = format!("{key}:");
            if tags.iter().any(|t| t.starts_with(&prefix)) {
                continue;
            }
            let data: serde_json::Value = row
                .get::<_, String>(2)
                .ok()
                .and_then(|d| serde_json::from_str(&d).ok())
                .unwrap_or(serde_json::Value::Null);
            match tag_index::tag_from_data(&data, key) {
                Ok(tag) => {
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO orkestra_event_tags (position, tag) VALUES (?1, ?2)",
                    )
                    .and_then(|mut s| s.execute(params![position, tag.as_str()]))
                    .map_err(backend_error)?;
                    tags.push(tag.as_str().to_owned());
                    let json = serde_json::to_string(&tags)
                        .map_err(|e| StoreError::Encode(e.to_string()))?;
                    tx.prepare_cached("UPDATE orkestra_events SET tags = ?2 WHERE position = ?1")
                        .and_then(|mut s| s.execute(params![position, json]))
                        .map_err(backend_error)?;
                    batch.written += 1;
                }
                Err(reason) => batch.skipped.push(SkippedEvent {
                    event_type: event_type.to_owned(),
                    tag: key.to_owned(),
                    stream: row.get(1).map_err(backend_error)?,
                    position: position as u64,
                    reason,
                }),
            }
        }
    }
    batch.done = (batch.events as usize) < max;
    tx.execute(
        "UPDATE orkestra_tag_index SET reindexed_to = ?3, indexed = ?4 \
         WHERE event_type = ?1 AND tag_key = ?2",
        params![event_type, key, last, batch.done],
    )
    .map_err(backend_error)?;
    tx.commit().map_err(backend_error)?;
    Ok(batch)
}

/// Reads the position `sql` selects from checkpoint `name`'s row (`None`: no row, or none).
fn checkpoint_column(
    sql: &'static str,
    name: String,
) -> impl FnOnce(&Connection) -> Result<Option<u64>, StoreError> + Send + 'static {
    move |conn| {
        let mut stmt = conn.prepare_cached(sql).map_err(backend_error)?;
        let mut rows = stmt.query([&name]).map_err(backend_error)?;
        match rows.next().map_err(backend_error)? {
            Some(row) => Ok(row
                .get::<_, Option<i64>>(0)
                .map_err(backend_error)?
                .map(|p| p as u64)),
            None => Ok(None),
        }
    }
}

/// The inbox of `once: true` handlers in the store's file: a claim looks the pair up, a
/// commit inserts it (after the handler succeeded; SQLite holds no transaction open
/// across a handler). Runs of one pair in this process take turns (see `Inbox`); two
/// processes sharing a file could both run a copy delivered to each at the same moment.
/// Rows older than 7 days are deleted now and then.
#[derive(Debug)]
struct SqliteInbox {
    path: PathBuf,
    /// One connection, opened on first use.
    conn: Arc<Mutex<Option<Connection>>>,
    claims: std::sync::atomic::AtomicU64,
}

/// How long handled message ids are kept, in microseconds.
const INBOX_KEEP_MICROS: i64 = 7 * 24 * 3600 * 1_000_000;

fn inbox_error(e: impl std::fmt::Display) -> crate::handler::InboxError {
    crate::handler::InboxError(format!("{ADAPTER}: {e}"))
}

impl SqliteInbox {
    async fn run<T: Send + 'static>(
        conn: Arc<Mutex<Option<Connection>>>,
        path: PathBuf,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, crate::handler::InboxError> {
        tokio::task::spawn_blocking(move || {
            let mut slot = crate::sync::lock(&conn);
            if slot.is_none() {
                *slot = Some(open_connection(&path).map_err(inbox_error)?);
            }
            let conn = slot.as_ref().ok_or_else(|| inbox_error("no connection"))?;
            f(conn).map_err(inbox_error)
        })
        .await
        .map_err(inbox_error)?
    }
}

struct SqliteClaim {
    conn: Arc<Mutex<Option<Connection>>>,
    path: PathBuf,
    handler: String,
    message_id: String,
}

impl crate::handler::InboxBackend for SqliteInbox {
    fn claim<'a>(
        &'a self,
        handler: &'a str,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn crate::handler::OpenClaim>>, crate::handler::InboxError>>
    {
        let purge = self
            .claims
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(10_000);
        let (h, m) = (handler.to_owned(), message_id.to_owned());
        let (conn, path) = (self.conn.clone(), self.path.clone());
        Box::pin(async move {
            let done = Self::run(conn.clone(), path.clone(), move |c| {
                if purge {
                    c.execute(
                        "DELETE FROM orkestra_inbox WHERE handled_at < ?1",
                        [chrono::Utc::now().timestamp_micros() - INBOX_KEEP_MICROS],
                    )?;
                }
                c.prepare_cached(
                    "SELECT 1 FROM orkestra_inbox WHERE handler = ?1 AND message_id = ?2",
                )?
                .exists([&h, &m])
            })
            .await?;
            Ok((!done).then(|| {
                Box::new(SqliteClaim {
                    conn,
                    path,
                    handler: handler.to_owned(),
                    message_id: message_id.to_owned(),
                }) as Box<dyn crate::handler::OpenClaim>
            }))
        })
    }
}

impl crate::handler::OpenClaim for SqliteClaim {
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), crate::handler::InboxError>> {
        Box::pin(async move {
            let Self {
                conn,
                path,
                handler,
                message_id,
            } = *self;
            SqliteInbox::run(conn, path, move |c| {
                c.prepare_cached(
                    "INSERT OR IGNORE INTO orkestra_inbox (handler, message_id, handled_at) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![handler, message_id, chrono::Utc::now().timestamp_micros()])
                .map(drop)
            })
            .await
        })
    }

    fn release(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}
