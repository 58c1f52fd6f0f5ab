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
//! A logical move (`pg_dump` and restore, a logical-replication switch-over) lands the
//! rows in a cluster whose transaction ids may be far below the stored ones: readers
//! would see no history and new events would get smaller positions. So the ids are the
//! cluster's plus an offset kept in `orkestra_position_offset` (0 until a move), used by
//! the append function and the readers' horizon alike, and every new connection runs
//! `orkestra_move_positions`: a stored position whose id lies above its snapshot's
//! `xmax` cannot come from this cluster, and the offset is raised past it (a warning in
//! the server log says so). Rows keep their ids; only new ones start higher.
//!
//! Events are append-only: a trigger refuses UPDATE, DELETE and TRUNCATE. Appends notify
//! `orkestra_events` so live subscribers wake at once; they also poll, since a horizon
//! can move without a notice.
//!
//! ## Plans made for the table as it is
//!
//! PostgreSQL caches the plan of a named statement and of every statement inside a
//! PL/pgSQL function per connection, and after five runs may keep a generic plan costed
//! for the table as it was then: made while `orkestra_events` held a page, that plan reads
//! the whole table at every call, so appends slow down linearly (quadratic in all) for as
//! long as the pooled connection lives (without autovacuum, nothing replans it). The
//! append function runs with `plan_cache_mode = force_custom_plan`, and lookups by stream
//! or id from here are unnamed statements, planned at each call; `tests/postgres_scale.rs`
//! holds both to a fresh database growing to 500,000 events. Checkpoints keep a cached
//! plan: their table holds one row per projection or relay and never grows with traffic.
//!
//! ## Decisions across streams
//!
//! `append_if` must refuse when an event matching its condition's query was committed
//! after the position the decision read, even when that event is being written at the
//! same moment. At READ COMMITTED a plain `SELECT EXISTS` followed by the insert lets
//! racers through (each checks before the other commits), so writers whose events could
//! match serialize on transaction-level advisory locks, with no table lock:
//!
//! - a key is the hash of `tag <key:value>` or `type <event type>`;
//! - every append (the ten-argument `orkestra_append`) first takes *shared* locks on the
//!   types and tags it writes: plain appends never wait for each other;
//! - `append_if` takes, in one call and in the order of the hashes, an *exclusive* lock
//!   per item of its condition (the item's first tag: any event matching the item carries
//!   it; an item without tags locks each of its types) and shared locks on what it writes,
//!   then checks the condition in a new statement (a new snapshot, which sees every
//!   writer that held a lock before it), then appends and commits, releasing the locks.
//!
//! - `read_query` takes the same exclusive locks as a condition on its query, in a
//!   transaction of its own, and reads in the next statement: every writer of a matching
//!   event that held its shared lock has committed and is seen, and a writer that takes
//!   one after gets its transaction id (assigned at its insert, after its locks) later,
//!   hence positions after every one read. So any matching event it did not return lies
//!   after the last position it returned, and the condition catches it.
//!
//! Everyone takes keys in the one hash order, so the locks cannot deadlock. Two decisions
//! on disjoint boundaries take disjoint keys and never wait for each other; a hash
//! collision only makes two unrelated writers wait. A per-tag version row updated with
//! a compare-and-set (Marten 9.4) would also hold, but it writes a row per tag on every
//! tagged append (dead tuples, a hot row per busy tag) where an advisory lock writes
//! nothing.
//!
//! `read_query` does not use the readers' horizon of `read_all`: that horizon is the
//! oldest transaction of the whole cluster, so with other writers in flight a decision
//! would often not see its own last event, and its next condition would fail on it
//! (16 writers on 16 disjoint boundaries spent half their time on such retries). The
//! locks give the same guarantee for its boundary alone.
//!
//! ## The tag index's registry
//!
//! `orkestra_tag_index` holds the (event type, tag key) pairs decisions read (see
//! `tag_index`). A declaration takes the exclusive lock of each type (`type <name>`, the
//! key every append of the type takes shared), then records the pair, indexed when no
//! stored event of the type lacks the key: an append of the type under way is committed
//! and seen by that check, and a later one reads the registry and derives the tag from
//! its field. `orkestra_append` reads the registry before its locks (so the derived tags
//! are locked in the one order) and again after them; a declaration committed in
//! between makes it fail with a serialization failure, which the client retries. A
//! declaration's check reads the whole table once per pair (no index on the type).
//! Reindexing adds tags to older rows: the append-only trigger lets an UPDATE through
//! only when every other column is kept and no tag is taken away.

use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::future::BoxFuture;
use std::sync::Arc;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, NoTls, Row};

use super::Encoded;
use super::tag_index::{DeclaredTag, ReindexBatch, SkippedEvent};
use super::{
    AppendCondition, AppendResult, Backend, Conflict, Direction, ExpectedVersion, Query,
    RecordedEvent, Snapshot, StoreError, StoredId, Tag, check_append, matching_positions, sql_int,
};
use crate::config::{SecretUrl, StoreConfig};

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
CREATE TABLE IF NOT EXISTS orkestra_inbox (
    handler    TEXT        NOT NULL,
    message_id TEXT        NOT NULL,
    handled_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (handler, message_id)
);
CREATE INDEX IF NOT EXISTS orkestra_inbox_handled_at ON orkestra_inbox (handled_at);
CREATE TABLE IF NOT EXISTS orkestra_snapshots (
    stream   TEXT        PRIMARY KEY,
    version  BIGINT      NOT NULL,
    shape    TEXT        NOT NULL,
    state    TEXT        NOT NULL,
    taken_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Topics are recorded from this release on (for the relay); older rows keep NULL.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_name = 'orkestra_events' AND column_name = 'topic'
                     AND table_schema = current_schema()) THEN
        ALTER TABLE orkestra_events ADD COLUMN topic TEXT;
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS orkestra_checkpoints (
    name       TEXT        PRIMARY KEY,
    position   BIGINT,     -- the last position handled; NULL: none yet
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- A rebuild's target (the head when it began), so a restart mid-rebuild still replays.
-- Looked up first: an ALTER would wait for every open transaction on the table.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_name = 'orkestra_checkpoints' AND column_name = 'replay_until'
                     AND table_schema = current_schema()) THEN
        ALTER TABLE orkestra_checkpoints ADD COLUMN replay_until BIGINT;
    END IF;
END $$;
-- Positions come from transaction ids plus this offset. After a logical move (pg_dump
-- and restore, logical replication) the new cluster's ids may be far below the stored
-- ones; orkestra_move_positions raises the offset so positions keep growing.
CREATE TABLE IF NOT EXISTS orkestra_position_offset (
    one        BOOLEAN     PRIMARY KEY DEFAULT true CHECK (one),
    xid_offset BIGINT      NOT NULL DEFAULT 0,
    moved_at   TIMESTAMPTZ
);
INSERT INTO orkestra_position_offset (one) VALUES (true) ON CONFLICT DO NOTHING;
-- Every row a snapshot sees was written below the snapshot's xmax (plus the offset): a
-- newer one came from another cluster. Then the offset moves the ids past the newest
-- stored one. Run on every new connection, before it appends; returns the offset.
CREATE OR REPLACE FUNCTION orkestra_move_positions() RETURNS bigint
LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    newest bigint;
    next_id bigint;
    off bigint;
BEGIN
    SELECT e.position >> 20 INTO newest FROM orkestra_events e ORDER BY e.position DESC LIMIT 1;
    SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint + o.xid_offset, o.xid_offset
      INTO next_id, off FROM orkestra_position_offset o;
    IF newest IS NULL OR newest < next_id THEN
        RETURN off;
    END IF;
    PERFORM pg_advisory_xact_lock(7385214413);
    SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint + o.xid_offset, o.xid_offset
      INTO next_id, off FROM orkestra_position_offset o;
    IF newest >= next_id THEN
        off := off + (newest - next_id) + 1;
        UPDATE orkestra_position_offset SET xid_offset = off, moved_at = now();
        RAISE WARNING 'orkestra: the events were written in another cluster (a logical restore or replication switch-over); positions now continue after %', (newest << 20);
    END IF;
    RETURN off;
END $$;
-- The fast path of an append, in one round trip: when no id is already stored and the
-- expectation holds, insert and notify; otherwise report the stream's version and let
-- the client decide (a stale expectation, an idempotent repeat or a duplicate id).
-- p_expected: -1 any, -2 no stream, -3 stream exists, n >= 0 exactly n.
DROP FUNCTION IF EXISTS orkestra_append(text, bigint, text[], text[], int4[], jsonb[], jsonb[]);
CREATE OR REPLACE FUNCTION orkestra_append(
    p_stream text, p_expected bigint, p_ids text[], p_types text[], p_schema int4[],
    p_data text[], p_metadata text[]
) RETURNS TABLE (written boolean, current_version bigint, last_position bigint)
LANGUAGE plpgsql
-- Plan every statement for the table as it is now: PL/pgSQL caches its plans per
-- connection, and a generic plan made while the table was small reads it whole.
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    cur bigint;
    me bigint;
    n int := coalesce(array_length(p_ids, 1), 0);
BEGIN
    SELECT max(e.version) INTO cur FROM orkestra_events e WHERE e.stream = p_stream;
    IF EXISTS (SELECT 1 FROM orkestra_events e WHERE e.id = ANY(p_ids))
       OR (p_expected = -2 AND cur IS NOT NULL)
       OR (p_expected = -3 AND cur IS NULL)
       OR (p_expected >= 0 AND cur IS DISTINCT FROM p_expected) THEN
        RETURN QUERY SELECT false, cur, NULL::bigint;
        RETURN;
    END IF;
    me := pg_current_xact_id()::text::bigint
          + coalesce((SELECT o.xid_offset FROM orkestra_position_offset o), 0);
    INSERT INTO orkestra_events (position, tx_id, stream, version, id, event_type, schema_version, data, metadata)
    SELECT (me << 20) + t.ord - 1, me::text::xid8, p_stream, coalesce(cur + 1, 0) + t.ord - 1,
           t.id, t.event_type, t.schema_version, t.data::jsonb, t.metadata::jsonb
    FROM unnest(p_ids, p_types, p_schema, p_data, p_metadata)
         WITH ORDINALITY AS t(id, event_type, schema_version, data, metadata, ord);
    RETURN QUERY SELECT true, coalesce(cur + 1, 0) + n - 1, (me << 20) + n - 1;
END $$;
-- The same with each event's topic. The seven-argument form above stays for processes of
-- an older release sharing the database (PostgreSQL overloads by arity).
CREATE OR REPLACE FUNCTION orkestra_append(
    p_stream text, p_expected bigint, p_ids text[], p_types text[], p_schema int4[],
    p_data text[], p_metadata text[], p_topics text[]
) RETURNS TABLE (written boolean, current_version bigint, last_position bigint)
LANGUAGE plpgsql
-- Plan every statement for the table as it is now: PL/pgSQL caches its plans per
-- connection, and a generic plan made while the table was small reads it whole.
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    cur bigint;
    me bigint;
    n int := coalesce(array_length(p_ids, 1), 0);
BEGIN
    SELECT max(e.version) INTO cur FROM orkestra_events e WHERE e.stream = p_stream;
    IF EXISTS (SELECT 1 FROM orkestra_events e WHERE e.id = ANY(p_ids))
       OR (p_expected = -2 AND cur IS NOT NULL)
       OR (p_expected = -3 AND cur IS NULL)
       OR (p_expected >= 0 AND cur IS DISTINCT FROM p_expected) THEN
        RETURN QUERY SELECT false, cur, NULL::bigint;
        RETURN;
    END IF;
    me := pg_current_xact_id()::text::bigint
          + coalesce((SELECT o.xid_offset FROM orkestra_position_offset o), 0);
    INSERT INTO orkestra_events (position, tx_id, stream, version, id, event_type, schema_version, data, metadata, topic)
    SELECT (me << 20) + t.ord - 1, me::text::xid8, p_stream, coalesce(cur + 1, 0) + t.ord - 1,
           t.id, t.event_type, t.schema_version, t.data::jsonb, t.metadata::jsonb, t.topic
    FROM unnest(p_ids, p_types, p_schema, p_data, p_metadata, p_topics)
         WITH ORDINALITY AS t(id, event_type, schema_version, data, metadata, topic, ord);
    RETURN QUERY SELECT true, coalesce(cur + 1, 0) + n - 1, (me << 20) + n - 1;
END $$;
-- Tags (dcb.events) are recorded from this release on; older rows have none. The
-- column gives readers an event's tags; orkestra_event_tags is the index queries use.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_name = 'orkestra_events' AND column_name = 'tags'
                     AND table_schema = current_schema()) THEN
        ALTER TABLE orkestra_events ADD COLUMN tags TEXT[];
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS orkestra_event_tags (
    position BIGINT NOT NULL,
    tag      TEXT   NOT NULL,
    PRIMARY KEY (tag, position)
);
-- The registry of indexed tags (see "The tag index's registry" in the module docs).
CREATE TABLE IF NOT EXISTS orkestra_tag_index (
    event_type   TEXT        NOT NULL,
    tag_key      TEXT        NOT NULL,
    indexed      BOOLEAN     NOT NULL, -- false: reindex-tags has events to go through
    reindexed_to BIGINT,               -- the last position a reindex handled (NULL: none)
    declared_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (event_type, tag_key)
);
-- Events are append-only except for tags a reindex adds: every other column is kept and
-- no tag is taken away. The trigger of older releases refused every UPDATE; it is moved
-- to this function once (older processes replace only the function they name).
CREATE OR REPLACE FUNCTION orkestra_events_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND (NEW.position, NEW.tx_id, NEW.stream, NEW.version, NEW.id, NEW.event_type,
            NEW.schema_version, NEW.data, NEW.metadata, NEW.recorded_at, NEW.topic)
           IS NOT DISTINCT FROM
           (OLD.position, OLD.tx_id, OLD.stream, OLD.version, OLD.id, OLD.event_type,
            OLD.schema_version, OLD.data, OLD.metadata, OLD.recorded_at, OLD.topic)
       AND coalesce(NEW.tags, '{}') @> coalesce(OLD.tags, '{}') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'orkestra_events is append-only';
END $$;
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger t
               WHERE t.tgname = 'orkestra_events_no_change'
                 AND t.tgrelid = 'orkestra_events'::regclass
                 AND t.tgfoid = 'orkestra_events_append_only'::regproc) THEN
        DROP TRIGGER orkestra_events_no_change ON orkestra_events;
        CREATE TRIGGER orkestra_events_no_change BEFORE UPDATE OR DELETE ON orkestra_events
            FOR EACH ROW EXECUTE FUNCTION orkestra_events_guard();
    END IF;
END $$;
-- From this release on the guard also lets Store::encrypt_personal rewrite the data of
-- an event (its personal fields sealed; nothing else changes) in a transaction that says
-- so (`orkestra.rewrite` set to 'personal data' for the transaction). A function of its
-- own name, so processes of older releases, which replace orkestra_events_guard at
-- start, leave it be; the trigger is moved to it once.
CREATE OR REPLACE FUNCTION orkestra_events_guard_v2() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND (NEW.position, NEW.tx_id, NEW.stream, NEW.version, NEW.id, NEW.event_type,
            NEW.schema_version, NEW.metadata, NEW.recorded_at, NEW.topic)
           IS NOT DISTINCT FROM
           (OLD.position, OLD.tx_id, OLD.stream, OLD.version, OLD.id, OLD.event_type,
            OLD.schema_version, OLD.metadata, OLD.recorded_at, OLD.topic)
       AND (NEW.data = OLD.data
            OR current_setting('orkestra.rewrite', true) IS NOT DISTINCT FROM 'personal data')
       AND coalesce(NEW.tags, '{}') @> coalesce(OLD.tags, '{}') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'orkestra_events is append-only';
END $$;
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger t
               WHERE t.tgname = 'orkestra_events_no_change'
                 AND t.tgrelid = 'orkestra_events'::regclass
                 AND t.tgfoid <> 'orkestra_events_guard_v2'::regproc) THEN
        DROP TRIGGER orkestra_events_no_change ON orkestra_events;
        CREATE TRIGGER orkestra_events_no_change BEFORE UPDATE OR DELETE ON orkestra_events
            FOR EACH ROW EXECUTE FUNCTION orkestra_events_guard_v2();
    END IF;
END $$;
-- The locks of a consistency boundary: transaction-level advisory locks on the hashes of
-- `p_keys` ('type <event type>' or 'tag <key:value>'), exclusive where `p_exclusive`
-- says so (a key named twice is taken once, exclusive if either asks), in the order of
-- the hashes: every transaction takes its keys in that one order, so none can deadlock
-- on them. See "Decisions across streams" in the module documentation.
CREATE OR REPLACE FUNCTION orkestra_lock_boundary(p_keys text[], p_exclusive boolean[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    k bigint;
    x boolean;
BEGIN
    FOR k, x IN SELECT hashtextextended(u.k, 0), bool_or(u.x)
                FROM unnest(p_keys, p_exclusive) AS u(k, x) GROUP BY 1 ORDER BY 1 LOOP
        IF x THEN
            PERFORM pg_advisory_xact_lock(k);
        ELSE
            PERFORM pg_advisory_xact_lock_shared(k);
        END IF;
    END LOOP;
END $$;
-- The append of this release: with each event's tags (p_tag_events[i] is the 1-based
-- index of the event carrying p_tags[i]). It first takes shared locks on the types and
-- tags it writes, so a conditional append whose boundary they fall in waits for it to
-- end (and sees its events), and it waits for one under way. The eight-argument form
-- above stays for processes of an older release, which take no such locks.
CREATE OR REPLACE FUNCTION orkestra_append(
    p_stream text, p_expected bigint, p_ids text[], p_types text[], p_schema int4[],
    p_data text[], p_metadata text[], p_topics text[], p_tag_events int4[], p_tags text[]
) RETURNS TABLE (written boolean, current_version bigint, last_position bigint)
LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    cur bigint;
    me bigint;
    n int := coalesce(array_length(p_ids, 1), 0);
    tagged boolean;
    declared bigint;
BEGIN
    -- Tags declared for these types (orkestra_tag_index) that an event lacks come from
    -- its field of that name, when it is a non-empty text.
    SELECT count(*) INTO declared FROM orkestra_tag_index r WHERE r.event_type = ANY(p_types);
    IF declared > 0 THEN
        SELECT p_tag_events || coalesce(array_agg(d.ev), '{}'), p_tags || coalesce(array_agg(d.tag), '{}')
          INTO p_tag_events, p_tags
        FROM (SELECT t.ord::int4 AS ev, r.tag_key || ':' || (t.data::jsonb ->> r.tag_key) AS tag
              FROM unnest(p_types, p_data) WITH ORDINALITY AS t(event_type, data, ord)
              JOIN orkestra_tag_index r ON r.event_type = t.event_type
              WHERE jsonb_typeof(t.data::jsonb -> r.tag_key) = 'string'
                AND (t.data::jsonb ->> r.tag_key) <> ''
                AND NOT EXISTS (SELECT 1 FROM unnest(p_tag_events, p_tags) AS g(ev, tag)
                                WHERE g.ev = t.ord AND starts_with(g.tag, r.tag_key || ':'))
              ORDER BY t.ord, r.tag_key) AS d;
    END IF;
    tagged := coalesce(array_length(p_tags, 1), 0) > 0;
    PERFORM orkestra_lock_boundary(array_agg(k.key), array_agg(false))
    FROM (SELECT DISTINCT 'type ' || t AS key FROM unnest(p_types) AS t
          UNION SELECT 'tag ' || g FROM unnest(p_tags) AS g) AS k;
    -- A declaration of one of these types committed before the locks were ours: the
    -- tags above may lack its key. The client tries again (nothing is written yet).
    IF (SELECT count(*) FROM orkestra_tag_index r WHERE r.event_type = ANY(p_types)) <> declared THEN
        RAISE EXCEPTION 'orkestra: a tag of these event types was declared during the append'
            USING ERRCODE = 'serialization_failure';
    END IF;
    SELECT max(e.version) INTO cur FROM orkestra_events e WHERE e.stream = p_stream;
    IF EXISTS (SELECT 1 FROM orkestra_events e WHERE e.id = ANY(p_ids))
       OR (p_expected = -2 AND cur IS NOT NULL)
       OR (p_expected = -3 AND cur IS NULL)
       OR (p_expected >= 0 AND cur IS DISTINCT FROM p_expected) THEN
        RETURN QUERY SELECT false, cur, NULL::bigint;
        RETURN;
    END IF;
    me := pg_current_xact_id()::text::bigint
          + coalesce((SELECT o.xid_offset FROM orkestra_position_offset o), 0);
    INSERT INTO orkestra_events (position, tx_id, stream, version, id, event_type, schema_version, data, metadata, topic, tags)
    SELECT (me << 20) + t.ord - 1, me::text::xid8, p_stream, coalesce(cur + 1, 0) + t.ord - 1,
           t.id, t.event_type, t.schema_version, t.data::jsonb, t.metadata::jsonb, t.topic,
           CASE WHEN tagged THEN (SELECT array_agg(g.tag ORDER BY g.i)
                                  FROM unnest(p_tag_events, p_tags) WITH ORDINALITY AS g(ev, tag, i)
                                  WHERE g.ev = t.ord) END
    FROM unnest(p_ids, p_types, p_schema, p_data, p_metadata, p_topics)
         WITH ORDINALITY AS t(id, event_type, schema_version, data, metadata, topic, ord);
    IF tagged THEN
        INSERT INTO orkestra_event_tags (position, tag)
        SELECT (me << 20) + g.ev - 1, g.tag FROM unnest(p_tag_events, p_tags) AS g(ev, tag);
    END IF;
    RETURN QUERY SELECT true, coalesce(cur + 1, 0) + n - 1, (me << 20) + n - 1;
END $$;
"#;

const COLUMNS: &str = "position, stream, version, id, event_type, schema_version, \
                       data::text, metadata::text, recorded_at, topic, tags";

pub(crate) struct PostgresStore {
    pool: Pool,
    /// `store.pool_size` and `store.pool_timeout_ms`, for the error of a wait that gave up.
    pool_size: u32,
    pool_timeout: Duration,
    /// Projection batches hold a connection each for a whole transaction: they take a
    /// slot first, and there are fewer slots than connections, so appends and reads
    /// (a projection handler's own among them) always find one.
    projection_slots: Arc<Semaphore>,
    url: SecretUrl,
    changes: watch::Sender<u64>,
    listener: tokio::task::JoinHandle<()>,
    /// Wakes the notifier after a commit; it sends one NOTIFY for however many commits
    /// happened meanwhile. NOTIFY is kept out of the append's own transaction because
    /// PostgreSQL serializes the commits of notifying transactions.
    wake: Arc<Notify>,
    notifier: tokio::task::JoinHandle<()>,
    inbox: Arc<PostgresInbox>,
    /// Warns when readers are held back behind an open transaction.
    horizon: tokio::task::JoinHandle<()>,
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
        self.notifier.abort();
        self.horizon.abort();
    }
}

async fn notifier(pool: Pool, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        if let Ok(client) = pool.get().await {
            let _ = client
                .execute("SELECT pg_notify($1, '')", &[&CHANNEL])
                .await;
        }
    }
}

#[cold]
fn backend_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::backend(ADAPTER, e)
}

#[cold]
fn unavailable(
    url: &SecretUrl,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> StoreError {
    StoreError::unavailable(ADAPTER, url, Some(e.into()))
}

impl PostgresStore {
    pub(crate) async fn connect(
        url: &SecretUrl,
        settings: &StoreConfig,
    ) -> Result<Self, StoreError> {
        let config: tokio_postgres::Config =
            url.expose().parse().map_err(|e: tokio_postgres::Error| {
                StoreError::unavailable(
                    ADAPTER,
                    format_args!("{url} is not a PostgreSQL URL"),
                    Some(e.into()),
                )
            })?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // The schema first, on a connection of its own: every pooled connection checks
        // for a move of the store (`orkestra_move_positions`) when it is made.
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| unavailable(url, e))?;
        let driver = tokio::spawn(connection);
        let created = client
            .batch_execute(&format!(
                "BEGIN; {SCHEMA} SELECT orkestra_move_positions(); COMMIT;"
            ))
            .await;
        drop(client);
        let _ = driver.await;
        created.map_err(|e| unavailable(url, e))?;
        let pool_size = settings.pool_size.max(2);
        let pool_timeout = Duration::from_millis(u64::from(settings.pool_timeout_ms.max(1)));
        // Projection batches may hold three quarters of the connections, never all.
        let projection_slots = pool_size - (pool_size / 4).max(1);
        let pool = Pool::builder(manager)
            .max_size(pool_size as usize)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(pool_timeout))
            .post_create(Hook::async_fn(|client, _| {
                Box::pin(async move {
                    // A database moved under a running process (a restore behind the same
                    // URL) is adjusted before this connection appends.
                    client
                        .batch_execute("SELECT orkestra_move_positions()")
                        .await
                        .map_err(HookError::Backend)
                })
            }))
            .build()
            .map_err(|e| unavailable(url, e))?;
        let changes = watch::Sender::new(0);
        let listener = tokio::spawn(listen(config.clone(), changes.clone()));
        let wake = Arc::new(Notify::new());
        let notifier = tokio::spawn(notifier(pool.clone(), wake.clone()));
        // Its own pool: a claim holds a connection while its handler runs, and a handler
        // that appends must never wait for a connection a claim holds.
        let inbox_manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let inbox = Arc::new(PostgresInbox {
            pool: Pool::builder(inbox_manager)
                .max_size(32)
                .build()
                .map_err(|e| unavailable(url, e))?,
            claims: std::sync::atomic::AtomicU64::new(0),
        });
        let horizon = tokio::spawn(watch_horizon(
            pool.clone(),
            changes.clone(),
            HorizonTiming::default(),
        ));
        Ok(Self {
            inbox,
            horizon,
            pool,
            pool_size,
            pool_timeout,
            projection_slots: Arc::new(Semaphore::new(projection_slots as usize)),
            url: url.clone(),
            changes,
            listener,
            wake,
            notifier,
        })
    }

    /// Runs one append `attempt` on a pooled connection, and again after a serialization
    /// failure (a concurrent writer took the version or an id first: the next round
    /// reports a stale expectation, a repeat or a duplicate, or, for `Any`, writes after
    /// it), at most `ANY_RETRIES` times; wakes the store's subscribers once something
    /// was written.
    async fn appending<'a, F>(&self, mut attempt: F) -> Result<AppendResult, StoreError>
    where
        F: FnMut(
            deadpool_postgres::Object,
        )
            -> BoxFuture<'a, Result<Result<AppendResult, StoreError>, tokio_postgres::Error>>,
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match attempt(self.client().await?).await {
                Ok(Ok(result)) => {
                    if result.written {
                        self.changes.send_modify(|c| *c += 1);
                        self.wake.notify_one();
                    }
                    return Ok(result);
                }
                Ok(Err(refused)) => return Err(refused),
                Err(e) if retryable(&e) && attempts <= ANY_RETRIES => {}
                Err(e) => return Err(backend_error(e)),
            }
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
                StoreError::Unavailable {
                    adapter: ADAPTER,
                    setting: "store.pool_timeout_ms",
                    message: format!(
                        "no connection was free within {} ms: all {} of the pool (store.pool_size) \
                         were in use; raise store.pool_size (the server's max_connections \
                         permitting) or store.pool_timeout_ms",
                        self.pool_timeout.as_millis(),
                        self.pool_size
                    ),
                    source: None,
                }
            }
            e => unavailable(&self.url, e),
        })
    }

    /// The one position `sql` selects (`HEAD` or `RECORDED_HEAD`).
    async fn max_position(&self, sql: &str) -> Result<Option<u64>, StoreError> {
        let client = self.client().await?;
        // Unnamed, so planned for the table as it is now (see `version_of`).
        let row = client
            .query_typed_one(sql, &[])
            .await
            .map_err(backend_error)?;
        Ok(row
            .try_get::<_, Option<i64>>(0)
            .map_err(backend_error)?
            .map(|p| p as u64))
    }

    /// One attempt: the outer error is the driver's, the inner one a refusal. The fast
    /// path is one call of `orkestra_append` (one round trip, its own transaction); only
    /// when it declines does the client look at the stored ids to explain why.
    async fn try_append(
        client: &impl deadpool_postgres::GenericClient,
        stream: &str,
        expected: ExpectedVersion,
        events: &[Encoded],
    ) -> Result<Result<AppendResult, StoreError>, tokio_postgres::Error> {
        let code: i64 = match expected {
            ExpectedVersion::Any => -1,
            ExpectedVersion::NoStream => -2,
            ExpectedVersion::StreamExists => -3,
            ExpectedVersion::Exact(v) => sql_int(v),
        };
        let ids: Vec<&str> = events.iter().map(|e| e.event.id.as_str()).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event.event_type.as_str()).collect();
        let schema_versions: Vec<i32> = events
            .iter()
            .map(|e| i32::try_from(e.event.schema_version).unwrap_or(i32::MAX))
            .collect();
        let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
        let metadata: Vec<&str> = events.iter().map(|e| e.metadata.as_str()).collect();
        let topics: Vec<Option<&str>> = events.iter().map(|e| e.event.topic.as_deref()).collect();
        let (tag_events, tags) = tag_arrays(events);
        let statement = client
            .prepare_cached("SELECT written, current_version, last_position FROM orkestra_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
            .await?;
        let row = client
            .query_one(
                &statement,
                &[
                    &stream,
                    &code,
                    &ids,
                    &types,
                    &schema_versions,
                    &data,
                    &metadata,
                    &topics,
                    &tag_events,
                    &tags,
                ],
            )
            .await?;
        let written: bool = row.get(0);
        let current: Option<i64> = row.get(1);
        if written {
            let last_position: Option<i64> = row.get(2);
            return Ok(Ok(AppendResult {
                last_version: current.unwrap_or(0) as u64,
                last_position: last_position.unwrap_or(0) as u64,
                written: true,
            }));
        }
        let stored = stored_ids(client, &ids).await?;
        Ok(
            match check_append(stream, expected, current.map(|v| v as u64), events, &stored) {
                Ok(Some(done)) => Ok(done),
                Err(refused) => Err(refused),
                // The ids vanished or the version moved between the two reads: say so plainly
                // rather than guess; the caller may retry.
                Ok(None) => Err(StoreError::WrongExpectedVersion {
                    stream: stream.to_owned(),
                    expected,
                    actual: current.map(|v| v as u64),
                }),
            },
        )
    }
}

/// Why a conditional append was refused.
enum Refusal {
    /// A stale expectation or a duplicate id.
    Store(StoreError),
    /// An event matching the condition.
    Condition(Conflict),
}

impl PostgresStore {
    /// One attempt of a conditional append, in its own READ COMMITTED transaction: the
    /// boundary's locks, the condition checked in a statement of its own (a snapshot
    /// taken once the locks are held), then the append. Rolled back on refusal.
    async fn try_append_if(
        client: &mut deadpool_postgres::Object,
        stream: &str,
        expected: ExpectedVersion,
        events: &[Encoded],
        (keys, exclusive): (&[String], &[bool]),
        (check, from, texts): (&str, i64, &[String]),
    ) -> Result<Result<AppendResult, Refusal>, tokio_postgres::Error> {
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
            .start()
            .await?;
        let lock = tx
            .prepare_cached("SELECT orkestra_lock_boundary($1, $2)")
            .await?;
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&from];
        params.extend(
            texts
                .iter()
                .map(|t| t as &(dyn tokio_postgres::types::ToSql + Sync)),
        );
        // The locks and the check are sent together (one round trip); the server runs
        // them in order, and at READ COMMITTED the check's snapshot is taken when it
        // starts, so after every lock is held. The check is unnamed: planned with these
        // values (see "Plans made for the table as it is").
        let lock_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&keys, &exclusive];
        let (_, found) = tokio::try_join!(
            tx.execute(&lock, &lock_params),
            tx.query_opt(check, &params),
        )?;
        if let Some(row) = found {
            let conflict = Conflict {
                position: row.try_get::<_, i64>(0)? as u64,
                event_type: row.try_get(1)?,
            };
            // Unless the events are this very append, already stored (a repeat): then
            // they are what matches, and the repeat is a no-op as for `append`.
            let ids: Vec<&str> = events.iter().map(|e| e.event.id.as_str()).collect();
            let stored = stored_ids(&tx, &ids).await?;
            let current: Option<i64> = tx
                .query_one(
                    "SELECT max(version) FROM orkestra_events WHERE stream = $1",
                    &[&stream],
                )
                .await?
                .try_get(0)?;
            tx.rollback().await?;
            return Ok(
                match check_append(stream, expected, current.map(|v| v as u64), events, &stored) {
                    Ok(Some(done)) => Ok(done),
                    Err(refused) => Err(Refusal::Store(refused)),
                    Ok(None) => Err(Refusal::Condition(conflict)),
                },
            );
        }
        let result = Self::try_append(&tx, stream, expected, events).await?;
        match result {
            Ok(done) => {
                tx.commit().await?;
                Ok(Ok(done))
            }
            Err(refused) => {
                tx.rollback().await?;
                Ok(Err(Refusal::Store(refused)))
            }
        }
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

/// Whether an append that failed with `e` (rolled back, nothing written) is tried again:
/// a concurrent writer took the version or an id first (the next round reports a stale
/// expectation, a repeat or a duplicate, or for `Any` writes after it), or a tag of the
/// appended types was declared meanwhile (`orkestra_append` derives its tags again).
fn retryable(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
        || e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
}

/// Where the events of these ids are stored, if they are: what an append compares a
/// repeat with.
async fn stored_ids(
    client: &impl deadpool_postgres::GenericClient,
    ids: &[&str],
) -> Result<Vec<StoredId>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT id, stream, version, position FROM orkestra_events WHERE id = ANY($1)",
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| StoredId {
            id: r.get(0),
            stream: r.get(1),
            version: r.get::<_, i64>(2) as u64,
            position: r.get::<_, i64>(3) as u64,
        })
        .collect())
}

/// Each event's tags as two parallel arrays for `orkestra_append`: the 1-based index of
/// the event, and the tag.
fn tag_arrays(events: &[Encoded]) -> (Vec<i32>, Vec<&str>) {
    let mut at = Vec::new();
    let mut tags = Vec::new();
    for (i, e) in events.iter().enumerate() {
        for tag in &e.event.tags {
            at.push(i32::try_from(i + 1).unwrap_or(i32::MAX));
            tags.push(tag.as_str());
        }
    }
    (at, tags)
}

/// The lock keys of a conditional append (see the module documentation): exclusive for
/// each item of the condition, shared for the types and tags the append writes.
fn boundary_keys(condition: &AppendCondition, events: &[Encoded]) -> (Vec<String>, Vec<bool>) {
    let (mut keys, mut exclusive) = query_keys(&condition.fail_if_events_match);
    for e in events {
        keys.push(format!("type {}", e.event.event_type));
        exclusive.push(false);
        for tag in &e.event.tags {
            keys.push(format!("tag {tag}"));
            exclusive.push(false);
        }
    }
    (keys, exclusive)
}

/// The exclusive lock keys of a query's items: the item's first tag (every event
/// matching the item carries it, and its writer holds it shared), or each of its types.
fn query_keys(query: &Query) -> (Vec<String>, Vec<bool>) {
    let mut keys = Vec::new();
    let mut exclusive = Vec::new();
    for item in query.items() {
        match item.required_tags().first() {
            Some(tag) => {
                keys.push(format!("tag {tag}"));
                exclusive.push(true);
            }
            None => {
                for t in item.event_types() {
                    keys.push(format!("type {t}"));
                    exclusive.push(true);
                }
            }
        }
    }
    (keys, exclusive)
}

/// Records the pairs not declared yet (see "The tag index's registry"): the exclusive
/// locks on their types first, so no append of those types is under way while each is
/// checked, and every later one reads the registry and derives the tag.
async fn declare_tags(
    client: &mut deadpool_postgres::Object,
    pairs: &[(&str, &str)],
) -> Result<Vec<bool>, tokio_postgres::Error> {
    const KNOWN: &str =
        "SELECT indexed FROM orkestra_tag_index WHERE event_type = $1 AND tag_key = $2";
    let mut answers = Vec::with_capacity(pairs.len());
    for &(event_type, key) in pairs {
        let row = client
            .query_typed_opt(KNOWN, &[(&event_type, Type::TEXT), (&key, Type::TEXT)])
            .await?;
        match row {
            Some(row) => answers.push(row.try_get::<_, bool>(0)?),
            None => break,
        }
    }
    if answers.len() == pairs.len() {
        return Ok(answers);
    }
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
        .start()
        .await?;
    let keys: Vec<String> = pairs.iter().map(|(t, _)| format!("type {t}")).collect();
    let exclusive = vec![true; keys.len()];
    tx.execute(
        "SELECT orkestra_lock_boundary($1, $2)",
        &[&keys, &exclusive],
    )
    .await?;
    let mut answers = Vec::with_capacity(pairs.len());
    for &(event_type, key) in pairs {
        // Indexed unless a stored event of the type lacks the key (a statement after the
        // locks: it sees every append that held one).
        tx.execute(
            "INSERT INTO orkestra_tag_index (event_type, tag_key, indexed) \
             SELECT $1::text, $2::text, NOT EXISTS (SELECT 1 FROM orkestra_events e \
             WHERE e.event_type = $1::text AND NOT EXISTS (SELECT 1 FROM unnest(coalesce(e.tags, '{}')) AS g(tag) \
             WHERE starts_with(g.tag, $2::text || ':'))) \
             ON CONFLICT (event_type, tag_key) DO NOTHING",
            &[&event_type, &key],
        )
        .await?;
        let row = tx
            .query_typed_one(KNOWN, &[(&event_type, Type::TEXT), (&key, Type::TEXT)])
            .await?;
        answers.push(row.try_get::<_, bool>(0)?);
    }
    tx.commit().await?;
    Ok(answers)
}

/// One batch of a pending pair's reindexing in one transaction: the registry row locked
/// (two reindexing runs take turns), up to `max` events of the type after its cursor,
/// the entries and tags of those that lack the key, the cursor moved and, once the last
/// event was read, the pair marked indexed.
async fn reindex_batch(
    client: &mut deadpool_postgres::Object,
    event_type: &str,
    key: &str,
    max: usize,
) -> Result<ReindexBatch, StoreError> {
    let tx = client.transaction().await.map_err(backend_error)?;
    let row = tx
        .query_opt(
            "SELECT indexed, reindexed_to FROM orkestra_tag_index \
             WHERE event_type = $1 AND tag_key = $2 FOR UPDATE",
            &[&event_type, &key],
        )
        .await
        .map_err(backend_error)?;
    let Some(row) = row else {
        return Err(super::tag_index::undeclared(event_type, key));
    };
    let indexed: bool = row.try_get(0).map_err(backend_error)?;
    let cursor: Option<i64> = row.try_get(1).map_err(backend_error)?;
    let mut batch = ReindexBatch::default();
    if indexed {
        batch.done = true;
        return Ok(batch);
    }
    let prefix = format!("{key}:");
    // Unnamed and typed: planned for the table as it is (see above).
    let rows = tx
        .query_typed(
            "SELECT position, stream, jsonb_typeof(data -> $2), data ->> $2, \
             EXISTS (SELECT 1 FROM unnest(coalesce(tags, '{}')) AS g(tag) WHERE starts_with(g.tag, $3)) \
             FROM orkestra_events WHERE event_type = $1 AND position > $4 \
             ORDER BY position LIMIT $5",
            &[
                (&event_type, Type::TEXT),
                (&key, Type::TEXT),
                (&prefix, Type::TEXT),
                (&cursor.unwrap_or(-1), Type::INT8),
                (&sql_int(max), Type::INT8),
            ],
        )
        .await
        .map_err(backend_error)?;
    let mut positions: Vec<i64> = Vec::new();
    let mut tags: Vec<String> = Vec::new();
    let mut last = cursor;
    for row in &rows {
        let position: i64 = row.try_get(0).map_err(backend_error)?;
        last = Some(position);
        batch.events += 1;
        if row.try_get::<_, bool>(4).map_err(backend_error)? {
            continue;
        }
        let kind: Option<&str> = row.try_get(2).map_err(backend_error)?;
        let value: Option<&str> = row.try_get(3).map_err(backend_error)?;
        let reason = match (kind, value) {
            (Some("string"), Some(value)) if !value.is_empty() => {
                match super::Tag::new(key, value) {
                    Ok(tag) => {
                        positions.push(position);
                        tags.push(tag.as_str().to_owned());
                        continue;
                    }
                    Err(_) => super::SkipReason::NotText,
                }
            }
            (None | Some("null"), _) => super::SkipReason::Missing,
            _ => super::SkipReason::NotText,
        };
        batch.skipped.push(SkippedEvent {
            event_type: event_type.to_owned(),
            tag: key.to_owned(),
            stream: row.try_get(1).map_err(backend_error)?,
            position: position as u64,
            reason,
        });
    }
    if !positions.is_empty() {
        tx.execute(
            "INSERT INTO orkestra_event_tags (position, tag) \
             SELECT * FROM unnest($1::bigint[], $2::text[]) ON CONFLICT DO NOTHING",
            &[&positions, &tags],
        )
        .await
        .map_err(backend_error)?;
        // Rows locked in position order, as encrypt_personal's rewrite locks them: the
        // two never wait on each other in a cycle.
        tx.execute(
            "SELECT 1 FROM orkestra_events WHERE position = ANY($1) \
             ORDER BY position FOR NO KEY UPDATE",
            &[&positions],
        )
        .await
        .map_err(backend_error)?;
        tx.execute(
            "UPDATE orkestra_events e SET tags = array_append(coalesce(e.tags, '{}'), u.tag) \
             FROM unnest($1::bigint[], $2::text[]) AS u(position, tag) \
             WHERE e.position = u.position AND NOT (coalesce(e.tags, '{}') @> ARRAY[u.tag])",
            &[&positions, &tags],
        )
        .await
        .map_err(backend_error)?;
        batch.written = positions.len() as u64;
    }
    batch.done = rows.len() < max;
    tx.execute(
        "UPDATE orkestra_tag_index SET reindexed_to = $3, indexed = $4 \
         WHERE event_type = $1 AND tag_key = $2",
        &[&event_type, &key, &last, &batch.done],
    )
    .await
    .map_err(backend_error)?;
    tx.commit().await.map_err(backend_error)?;
    Ok(batch)
}

/// `Store::encrypt_personal`'s rewrites of one batch in one transaction: the rows
/// locked in position order, then each one's data written where it is still `before`
/// (under READ COMMITTED a row changed meanwhile is checked again as it is now), in a
/// transaction the guard trigger lets rewrite data. Returns the positions written, in
/// order.
async fn rewrite_data(
    client: &mut deadpool_postgres::Object,
    rewrites: &[super::encrypt::DataRewrite],
) -> Result<Vec<u64>, tokio_postgres::Error> {
    let positions: Vec<i64> = rewrites.iter().map(|r| sql_int(r.position)).collect();
    let before: Vec<&str> = rewrites.iter().map(|r| r.before.as_str()).collect();
    let after: Vec<&str> = rewrites.iter().map(|r| r.after.as_str()).collect();
    let tx = client.transaction().await?;
    tx.batch_execute("SELECT set_config('orkestra.rewrite', 'personal data', true)")
        .await?;
    tx.query_typed(
        "SELECT 1 FROM orkestra_events WHERE position = ANY($1) \
         ORDER BY position FOR NO KEY UPDATE",
        &[(&positions, Type::INT8_ARRAY)],
    )
    .await?;
    let rows = tx
        .query_typed(
            "UPDATE orkestra_events e SET data = u.after::jsonb \
             FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u(position, before, after) \
             WHERE e.position = u.position AND e.data = u.before::jsonb \
             RETURNING e.position",
            &[
                (&positions, Type::INT8_ARRAY),
                (&before, Type::TEXT_ARRAY),
                (&after, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    tx.commit().await?;
    let mut written: Vec<u64> = rows
        .iter()
        .map(|r| r.try_get::<_, i64>(0).map(|p| p.max(0) as u64))
        .collect::<Result<_, _>>()?;
    written.sort_unstable();
    Ok(written)
}

fn row_to_event(row: &Row) -> Result<RecordedEvent, StoreError> {
    let position: i64 = row.try_get(0).map_err(backend_error)?;
    let corrupt = |message: String| StoreError::Corrupt {
        location: format!("position {position}"),
        message,
    };
    let metadata: &str = row.try_get(7).map_err(|e| corrupt(e.to_string()))?;
    Ok(RecordedEvent {
        position: position as u64,
        stream: row
            .try_get::<_, &str>(1)
            .map_err(|e| corrupt(e.to_string()))?
            .into(),
        version: row
            .try_get::<_, i64>(2)
            .map_err(|e| corrupt(e.to_string()))? as u64,
        id: row.try_get(3).map_err(|e| corrupt(e.to_string()))?,
        event_type: row
            .try_get::<_, &str>(4)
            .map_err(|e| corrupt(e.to_string()))?
            .into(),
        schema_version: row
            .try_get::<_, i32>(5)
            .map_err(|e| corrupt(e.to_string()))? as u32,
        data: row
            .try_get::<_, String>(6)
            .map_err(|e| corrupt(e.to_string()))?,
        metadata: serde_json::from_str(metadata)
            .map_err(|e| corrupt(format!("metadata is not Orkestra metadata: {e}")))?,
        recorded_at: row
            .try_get::<_, std::time::SystemTime>(8)
            .map(chrono::DateTime::<chrono::Utc>::from)
            .map_err(|e| corrupt(e.to_string()))?,
        topic: row
            .try_get::<_, Option<&str>>(9)
            .map_err(|e| corrupt(e.to_string()))?
            .map(Into::into),
        tags: row
            .try_get::<_, Option<Vec<&str>>>(10)
            .map_err(|e| corrupt(e.to_string()))?
            .unwrap_or_default()
            .into_iter()
            .map(|t| Tag::parse(t).map_err(|e| corrupt(format!("tags: {e}"))))
            .collect::<Result<_, _>>()?,
        redacted: Vec::new(),
    })
}

/// Rows below it are committed or rolled back: the oldest transaction still running, as
/// an id of `tx_id` (the cluster's id plus the store's offset). Evaluated once per query.
macro_rules! horizon {
    () => {
        "(SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::bigint + o.xid_offset)::text::xid8 \
          FROM orkestra_position_offset o)"
    };
}

/// The last position a reader of the global order can see (the same horizon as
/// `read_all`: a checkpoint can always reach it).
const HEAD: &str = concat!(
    "SELECT max(position) FROM orkestra_events WHERE tx_id < ",
    horizon!()
);

/// The last position committed, seen or not yet seen by readers of the global order.
const RECORDED_HEAD: &str = "SELECT max(position) FROM orkestra_events";

/// The checkpoint `name`, read through `client` (a pooled connection or a transaction).
pub(crate) async fn load_checkpoint_in(
    client: &impl deadpool_postgres::GenericClient,
    name: &str,
) -> Result<Option<u64>, StoreError> {
    checkpoint_position_in(
        client,
        "SELECT position FROM orkestra_checkpoints WHERE name = $1",
        name,
    )
    .await
}

/// The position `sql` selects from checkpoint `name`'s row (`None`: no row, or none).
async fn checkpoint_position_in(
    client: &impl deadpool_postgres::GenericClient,
    sql: &str,
    name: &str,
) -> Result<Option<u64>, StoreError> {
    let statement = client.prepare_cached(sql).await.map_err(backend_error)?;
    let row = client
        .query_opt(&statement, &[&name])
        .await
        .map_err(backend_error)?;
    match row {
        Some(row) => Ok(row
            .try_get::<_, Option<i64>>(0)
            .map_err(backend_error)?
            .map(|p| p as u64)),
        None => Ok(None),
    }
}

/// Saves the checkpoint `name` through `client`: inside a transaction it commits with
/// the transaction's other writes or not at all.
pub(crate) async fn save_checkpoint_in(
    client: &impl deadpool_postgres::GenericClient,
    name: &str,
    position: Option<u64>,
) -> Result<(), StoreError> {
    let statement = client
        .prepare_cached(
            "INSERT INTO orkestra_checkpoints (name, position) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = now()",
        )
        .await
        .map_err(backend_error)?;
    client
        .execute(&statement, &[&name, &position.map(sql_int)])
        .await
        .map(drop)
        .map_err(backend_error)
}

/// The rebuild target kept with checkpoint `name`.
async fn load_replay_until_in(
    client: &impl deadpool_postgres::GenericClient,
    name: &str,
) -> Result<Option<u64>, StoreError> {
    checkpoint_position_in(
        client,
        "SELECT replay_until FROM orkestra_checkpoints WHERE name = $1",
        name,
    )
    .await
}

/// Saves checkpoint `name` with its rebuild target, in one statement.
async fn save_replay_in(
    client: &impl deadpool_postgres::GenericClient,
    name: &str,
    position: Option<u64>,
    until: Option<u64>,
) -> Result<(), StoreError> {
    let statement = client
        .prepare_cached(
            "INSERT INTO orkestra_checkpoints (name, position, replay_until) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position, \
             replay_until = excluded.replay_until, updated_at = now()",
        )
        .await
        .map_err(backend_error)?;
    client
        .execute(
            &statement,
            &[&name, &position.map(sql_int), &until.map(sql_int)],
        )
        .await
        .map(drop)
        .map_err(backend_error)
}

/// A pooled connection held for a projection's batch, with its projection slot.
pub(crate) struct ProjectionConnection {
    // Dropped first: the connection goes back to the pool before the slot is freed.
    client: deadpool_postgres::Object,
    _slot: OwnedSemaphorePermit,
}

impl std::ops::Deref for ProjectionConnection {
    type Target = deadpool_postgres::Object;
    fn deref(&self) -> &Self::Target {
        &self.client
    }
}

impl std::ops::DerefMut for ProjectionConnection {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.client
    }
}

impl PostgresStore {
    /// A pooled connection for a projection batch's transaction: it waits for a
    /// projection slot first (without a timeout: projections take turns), then for a
    /// connection (with `store.pool_timeout_ms`).
    pub(crate) async fn connection(&self) -> Result<ProjectionConnection, StoreError> {
        let slot = Arc::clone(&self.projection_slots)
            .acquire_owned()
            .await
            .map_err(backend_error)?;
        Ok(ProjectionConnection {
            client: self.client().await?,
            _slot: slot,
        })
    }
}

impl Backend for PostgresStore {
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
            if events.len() > MAX_APPEND {
                return Err(StoreError::Invalid(format!(
                    "at most {MAX_APPEND} events per append"
                )));
            }
            let events = &events;
            self.appending(move |client| {
                Box::pin(async move { Self::try_append(&client, stream, expected, events).await })
            })
            .await
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
            if events.len() > MAX_APPEND {
                return Err(StoreError::Invalid(format!(
                    "at most {MAX_APPEND} events per append"
                )));
            }
            let (keys, exclusive) = boundary_keys(condition, &events);
            let (positions, texts) =
                matching_positions(&condition.fail_if_events_match, |n| format!("${n}"));
            let check = format!(
                "SELECT position, event_type FROM orkestra_events WHERE position IN ({positions}) \
                 ORDER BY position LIMIT 1"
            );
            let from = condition.after.map_or(0, |a| sql_int(a).saturating_add(1));
            let (events, keys, exclusive, check, texts) =
                (&events, &keys, &exclusive, &check, &texts);
            self.appending(move |mut client| {
                Box::pin(async move {
                    let result = Self::try_append_if(
                        &mut client,
                        stream,
                        expected,
                        events,
                        (keys, exclusive),
                        (check, from, texts),
                    )
                    .await?;
                    Ok(result.map_err(|refusal| match refusal {
                        Refusal::Store(refused) => refused,
                        Refusal::Condition(conflict) => {
                            conflict.into_error(stream, condition.after)
                        }
                    }))
                })
            })
            .await
        })
    }

    fn read_query<'a>(
        &'a self,
        query: &'a Query,
        from: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        Box::pin(async move {
            let (positions, texts) = matching_positions(query, |n| format!("${n}"));
            let sql = format!(
                "SELECT {COLUMNS} FROM orkestra_events WHERE position IN ({positions}) \
                 ORDER BY position ASC LIMIT ${}",
                texts.len() + 2
            );
            let from = sql_int(from);
            let limit = sql_int(max as u64);
            let mut params: Vec<(&(dyn tokio_postgres::types::ToSql + Sync), Type)> =
                vec![(&from, Type::INT8)];
            params.extend(
                texts
                    .iter()
                    .map(|t| (t as &(dyn tokio_postgres::types::ToSql + Sync), Type::TEXT)),
            );
            params.push((&limit, Type::INT8));
            let (keys, exclusive) = query_keys(query);
            let client = self.client().await?;
            let rows = async {
                // The boundary's locks, then the read in a statement of their own: every
                // writer of a matching event that held its lock has committed, and none
                // can write one until this transaction ends ("Decisions across streams").
                let lock = client
                    .prepare_cached("SELECT orkestra_lock_boundary($1, $2)")
                    .await?;
                // The whole transaction in one round trip: each request is queued on the
                // connection when its future is first polled, and `try_join!` polls them
                // in this order, so the server gets BEGIN, the locks, the read and COMMIT
                // in that order even if this future is dropped or one of them fails (a
                // failed one aborts the transaction, and its COMMIT rolls back). The read
                // is unnamed and typed: planned for the table and these values each time.
                let lock_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
                    [&keys, &exclusive];
                let (_, _, rows, _) = futures_util::try_join!(
                    client.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED"),
                    client.execute(&lock, &lock_params),
                    client.query_typed(&sql, &params),
                    client.batch_execute("COMMIT"),
                )?;
                Ok::<_, tokio_postgres::Error>(rows)
            }
            .await
            .map_err(backend_error)?;
            rows.iter().map(row_to_event).collect()
        })
    }

    fn declare_tags<'a>(
        &'a self,
        pairs: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<Vec<bool>, StoreError>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            declare_tags(&mut client, pairs)
                .await
                .map_err(backend_error)
        })
    }

    fn declared_tags(&self) -> BoxFuture<'_, Result<Vec<DeclaredTag>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT event_type, tag_key, indexed, reindexed_to FROM orkestra_tag_index \
                     ORDER BY event_type, tag_key",
                    &[],
                )
                .await
                .map_err(backend_error)?;
            rows.iter()
                .map(|r| {
                    Ok(DeclaredTag {
                        event_type: r.try_get(0)?,
                        tag: r.try_get(1)?,
                        indexed: r.try_get(2)?,
                        reindexed_to: r.try_get::<_, Option<i64>>(3)?.map(|p| p as u64),
                    })
                })
                .collect::<Result<_, tokio_postgres::Error>>()
                .map_err(backend_error)
        })
    }

    fn count_of_type<'a>(
        &'a self,
        event_type: &'a str,
        after: Option<u64>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_typed_one(
                    "SELECT count(*) FROM orkestra_events WHERE event_type = $1 AND position > $2",
                    &[
                        (&event_type, Type::TEXT),
                        (&after.map_or(-1, sql_int), Type::INT8),
                    ],
                )
                .await
                .map_err(backend_error)?;
            Ok(row.try_get::<_, i64>(0).map_err(backend_error)?.max(0) as u64)
        })
    }

    fn reindex_batch<'a>(
        &'a self,
        event_type: &'a str,
        tag: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<ReindexBatch, StoreError>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            reindex_batch(&mut client, event_type, tag, max).await
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
            let limit = sql_int(max as u64);
            let rows = client
                .query(&sql, &[&stream, &sql_int(from_version), &limit])
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
                         WHERE position >= $1 AND tx_id < {} \
                         ORDER BY position ASC LIMIT $2",
                        horizon!()
                    ),
                    &[&sql_int(from_position), &sql_int(max as u64)],
                )
                .await
                .map_err(backend_error)?;
            rows.iter().map(row_to_event).collect()
        })
    }

    fn inbox(&self) -> Option<Arc<dyn crate::handler::InboxBackend>> {
        Some(self.inbox.clone())
    }

    fn rewrite_data<'a>(
        &'a self,
        rewrites: &'a [super::encrypt::DataRewrite],
    ) -> BoxFuture<'a, Result<Vec<u64>, StoreError>> {
        Box::pin(async move {
            let mut attempt = 0;
            loop {
                match rewrite_data(&mut self.client().await?, rewrites).await {
                    // A reindex writing tags to the same rows in another order.
                    Err(e)
                        if attempt < ANY_RETRIES
                            && (e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
                                || e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE)) =>
                    {
                        attempt += 1;
                    }
                    result => return result.map_err(backend_error),
                }
            }
        })
    }

    fn delete_plain_snapshots<'a>(
        &'a self,
        shapes: &'a [String],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            client
                .execute(
                    "DELETE FROM orkestra_snapshots WHERE shape = ANY($1) AND strpos(state, $2) = 0",
                    &[&shapes, &crate::keys::ENCRYPTED_KEY],
                )
                .await
                .map_err(backend_error)
        })
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "INSERT INTO orkestra_snapshots (stream, version, shape, state) \
                     VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (stream) DO UPDATE SET version = excluded.version, \
                     shape = excluded.shape, state = excluded.state, taken_at = now() \
                     WHERE excluded.version > orkestra_snapshots.version \
                     OR excluded.shape <> orkestra_snapshots.shape",
                )
                .await
                .map_err(backend_error)?;
            client
                .execute(
                    &statement,
                    &[
                        &snapshot.stream,
                        &sql_int(snapshot.version),
                        &snapshot.shape,
                        &snapshot.state,
                    ],
                )
                .await
                .map(drop)
                .map_err(backend_error)
        })
    }

    fn version_of<'a>(
        &'a self,
        stream: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            // An unnamed statement, planned at each call: a named one switches to a
            // generic plan after five runs, and one made while the table was small reads
            // it whole for as long as the connection lives (the same holds for the
            // snapshot and head lookups).
            let row = client
                .query_typed_opt(
                    "SELECT version FROM orkestra_events WHERE id = $1 AND stream = $2",
                    &[(&id, Type::TEXT), (&stream, Type::TEXT)],
                )
                .await
                .map_err(backend_error)?;
            row.map(|row| Ok(row.try_get::<_, i64>(0).map_err(backend_error)? as u64))
                .transpose()
        })
    }

    fn load_snapshot<'a>(
        &'a self,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_typed_opt(
                    "SELECT version, shape, state FROM orkestra_snapshots WHERE stream = $1",
                    &[(&stream, Type::TEXT)],
                )
                .await
                .map_err(backend_error)?;
            row.map(|row| {
                Ok(Snapshot {
                    stream: stream.to_owned(),
                    version: row.try_get::<_, i64>(0).map_err(backend_error)? as u64,
                    shape: row.try_get(1).map_err(backend_error)?,
                    state: row.try_get(2).map_err(backend_error)?,
                })
            })
            .transpose()
        })
    }

    fn head(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        Box::pin(self.max_position(HEAD))
    }

    fn recorded_head(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        Box::pin(self.max_position(RECORDED_HEAD))
    }

    fn leases(&self) -> Option<Arc<dyn super::lease::LeaseBackend>> {
        Some(Arc::new(super::lease::PostgresLeases::new(
            self.pool.clone(),
        )))
    }

    fn load_checkpoint<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            load_checkpoint_in(&client, name).await
        })
    }

    fn save_checkpoint<'a>(
        &'a self,
        name: &'a str,
        position: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            save_checkpoint_in(&client, name, position).await
        })
    }

    fn backlog(
        &self,
        after: Option<u64>,
        until: u64,
    ) -> BoxFuture<'_, Result<super::Backlog, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            // A range of the primary key: an index scan whatever the table's size.
            let statement = client
                .prepare_cached(
                    "SELECT count(*), min(recorded_at) FROM orkestra_events \
                     WHERE position > $1 AND position <= $2",
                )
                .await
                .map_err(backend_error)?;
            let row = client
                .query_one(&statement, &[&after.map_or(-1, sql_int), &sql_int(until)])
                .await
                .map_err(backend_error)?;
            let events: i64 = row.try_get(0).map_err(backend_error)?;
            let oldest: Option<std::time::SystemTime> = row.try_get(1).map_err(backend_error)?;
            Ok(super::Backlog {
                events: events.max(0) as u64,
                oldest: oldest.map(chrono::DateTime::<chrono::Utc>::from),
            })
        })
    }

    fn load_replay_until<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            load_replay_until_in(&client, name).await
        })
    }

    fn save_replay<'a>(
        &'a self,
        name: &'a str,
        position: Option<u64>,
        until: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            save_replay_in(&client, name, position, until).await
        })
    }

    fn as_postgres(&self) -> Option<&PostgresStore> {
        Some(self)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn poll_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(250))
    }
}

/// When readers of the global order count as held back, and how often that is told.
#[derive(Clone, Copy, Debug)]
struct HorizonTiming {
    /// How long the horizon may stay put with committed events waiting behind it before
    /// a warning names the oldest open transaction.
    after: Duration,
    /// At most one warning per this long.
    every: Duration,
    /// How often the horizon is looked at (only while this process has live readers).
    check: Duration,
}

impl Default for HorizonTiming {
    fn default() -> Self {
        Self {
            after: Duration::from_secs(30),
            every: Duration::from_secs(60),
            check: Duration::from_secs(5),
        }
    }
}

/// What readers can see and what is committed, in one snapshot.
const HORIZON: &str = concat!(
    "SELECT (SELECT max(position) FROM orkestra_events WHERE tx_id < ",
    horizon!(),
    "), (SELECT max(position) FROM orkestra_events)"
);

/// The open transaction with the oldest transaction id in the whole cluster (the
/// horizon is cluster-wide): a session's, or a prepared transaction.
const OLDEST_TRANSACTION: &str = "SELECT database, pid, \
       EXTRACT(EPOCH FROM now() - since)::float8, state, application FROM ( \
     SELECT datname::text AS database, pid, xact_start AS since, state, \
            application_name AS application, age(backend_xid) AS xid_age \
     FROM pg_stat_activity WHERE backend_xid IS NOT NULL \
     UNION ALL \
     SELECT database::text, NULL::int4, prepared, 'prepared transaction ' || quote_literal(gid), \
            NULL::text, age(transaction) \
     FROM pg_prepared_xacts \
   ) t ORDER BY xid_age DESC LIMIT 1";

/// Whether the horizon has held readers back long enough to say so.
#[derive(Debug, Default)]
struct HorizonState {
    /// The visible head while events wait behind it, and since when it has not moved.
    held: Option<(Option<u64>, std::time::Instant)>,
    warned: Option<std::time::Instant>,
}

impl HorizonState {
    /// How long readers have been held back, when a warning is due now.
    fn observe(
        &mut self,
        head: Option<u64>,
        recorded: Option<u64>,
        now: std::time::Instant,
        timing: HorizonTiming,
    ) -> Option<Duration> {
        if recorded <= head {
            self.held = None;
            return None;
        }
        let since = match self.held {
            Some((held_head, since)) if held_head == head => since,
            _ => {
                self.held = Some((head, now));
                now
            }
        };
        let held_for = now.duration_since(since);
        if held_for < timing.after
            || self
                .warned
                .is_some_and(|warned| now.duration_since(warned) < timing.every)
        {
            return None;
        }
        self.warned = Some(now);
        Some(held_for)
    }
}

/// The transaction readers wait for, as `pg_stat_activity` shows it.
#[derive(Debug)]
struct OldestTransaction {
    database: Option<String>,
    pid: Option<i32>,
    age: Option<f64>,
    state: Option<String>,
    application: Option<String>,
}

impl OldestTransaction {
    async fn find(client: &tokio_postgres::Client) -> Result<Option<Self>, tokio_postgres::Error> {
        Ok(client
            .query_opt(OLDEST_TRANSACTION, &[])
            .await?
            .map(|row| Self {
                database: row.try_get(0).ok().flatten(),
                pid: row.try_get(1).ok().flatten(),
                age: row.try_get(2).ok().flatten(),
                state: row.try_get(3).ok().flatten(),
                application: row
                    .try_get::<_, Option<String>>(4)
                    .ok()
                    .flatten()
                    .filter(|a| !a.is_empty()),
            }))
    }
}

impl std::fmt::Display for OldestTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid}")?,
            None => f.write_str("a transaction")?,
        }
        if let Some(database) = &self.database {
            write!(f, " in database \"{database}\"")?;
        }
        if let Some(age) = self.age {
            write!(f, ", open for {age:.1} s")?;
        }
        if let Some(state) = &self.state {
            write!(f, ", {state}")?;
        }
        if let Some(application) = &self.application {
            write!(f, ", application \"{application}\"")?;
        }
        Ok(())
    }
}

/// Logs a warning, at most once per `timing.every`, when readers of the global order
/// (projections, the relay, process timers) have waited more than `timing.after` behind
/// one open transaction: the horizon has not moved while committed events wait behind
/// it. It names the oldest open transaction of the cluster. Only looks while this
/// process has live readers (receivers of `changes`).
async fn watch_horizon(pool: Pool, changes: watch::Sender<u64>, timing: HorizonTiming) {
    let mut state = HorizonState::default();
    let mut tick = tokio::time::interval(timing.check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if changes.receiver_count() == 0 {
            state.held = None;
            continue;
        }
        let Ok(client) = pool.get().await else {
            continue;
        };
        let Ok(row) = client.query_one(HORIZON, &[]).await else {
            continue;
        };
        let position = |i| {
            row.try_get::<_, Option<i64>>(i)
                .ok()
                .flatten()
                .map(|p| p as u64)
        };
        let (head, recorded) = (position(0), position(1));
        let Some(held_for) = state.observe(head, recorded, std::time::Instant::now(), timing)
        else {
            continue;
        };
        let found = OldestTransaction::find(&client).await;
        let oldest = match &found {
            Ok(Some(oldest)) => oldest.to_string(),
            Ok(None) => "none is visible to this role (seeing other roles' sessions in \
                         pg_stat_activity needs pg_read_all_stats)"
                .to_owned(),
            Err(e) => format!("it could not be looked up: {}", pg_text(e)),
        };
        let found = found.ok().flatten();
        let pid = found.as_ref().and_then(|o| o.pid);
        let end_it = match pid {
            Some(pid) => format!(" (`SELECT pg_terminate_backend({pid})` ends it)"),
            None => String::new(),
        };
        tracing::warn!(
            orkestra = "store",
            held_seconds = held_for.as_secs_f64(),
            oldest_pid = pid,
            oldest_database = found.as_ref().and_then(|o| o.database.as_deref()),
            oldest_age_seconds = found.as_ref().and_then(|o| o.age),
            "PostgreSQL readers held back for {:.1} s: events committed since wait behind the \
             oldest open transaction of the cluster, {oldest}; projections, the relay and \
             process timers see nothing newer until it ends{end_it}",
            held_for.as_secs_f64()
        );
    }
}

/// The inbox of `once: true` handlers. A claim is an open transaction that holds a
/// transaction-level advisory lock keyed on `(handler, message_id)` and found no row for
/// the pair; the `orkestra_inbox` row is inserted when the handler succeeded, in the same
/// transaction as the handler's own writes through `HandlerContext::postgres` (the bus
/// layer), then committed. A copy of the message claimed meanwhile (another process)
/// waits on the lock, then finds the row (or takes over when the first run rolled back).
///
/// Neither the lock nor the lookup assigns a transaction id, so a handler that runs for
/// long without writing does not hold back readers of the global order (they wait for the
/// oldest open transaction id, see the module's documentation): only its own writes do,
/// from the first write to the commit. Rows older than 7 days are deleted now and then.
#[derive(Debug)]
struct PostgresInbox {
    pool: Pool,
    claims: std::sync::atomic::AtomicU64,
}

/// How long handled message ids are kept.
const INBOX_KEEP: &str = "7 days";

/// The connection of an inbox claim. It goes back to the pool only when its transaction
/// ended (a `COMMIT` or `ROLLBACK` that succeeded); dropped in any other state (a failed
/// rollback, a claim dropped mid-way), it is closed instead, so the server rolls back
/// and no later claim gets a connection inside an open or aborted transaction.
pub(crate) struct ClaimConnection {
    object: Option<deadpool_postgres::Object>,
    /// No transaction is open (or it ended): the connection may be pooled again.
    clean: std::sync::atomic::AtomicBool,
}

impl ClaimConnection {
    fn new(object: deadpool_postgres::Object) -> Self {
        Self {
            object: Some(object),
            clean: std::sync::atomic::AtomicBool::new(true),
        }
    }

    fn checked(&self) -> Result<&tokio_postgres::Client, crate::handler::InboxError> {
        crate::handler::PostgresClaimConnection::client(self)
            .ok_or_else(|| inbox_error("the claim's connection is already closed"))
    }

    /// Opens the claim's transaction: until it ends, the connection is closed rather than
    /// pooled when dropped.
    async fn begin(&self) -> Result<(), crate::handler::InboxError> {
        self.clean.store(false, std::sync::atomic::Ordering::SeqCst);
        self.checked()?
            .batch_execute("BEGIN")
            .await
            .map_err(|e| inbox_pg_error(&e))
    }

    /// `COMMIT` or `ROLLBACK`: once it succeeded the connection may be pooled again.
    async fn end(&self, sql: &str) -> Result<(), crate::handler::InboxError> {
        self.checked()?
            .batch_execute(sql)
            .await
            .map_err(|e| inbox_pg_error(&e))?;
        self.clean.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Rolls back, on every failed path. When even that fails the connection is closed
    /// when dropped.
    async fn rollback(&self) {
        if let Err(e) = self.end("ROLLBACK").await {
            tracing::warn!(
                orkestra = "inbox",
                error = %e,
                "Inbox claim could not roll back; its connection is closed instead of pooled"
            );
        }
    }
}

impl crate::handler::PostgresClaimConnection for ClaimConnection {
    /// The connection, for the handler's statements (`HandlerContext::postgres`).
    fn client(&self) -> Option<&tokio_postgres::Client> {
        self.object.as_deref().map(|wrapper| &**wrapper)
    }
}

impl std::fmt::Debug for ClaimConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimConnection")
            .field("clean", &self.clean)
            .finish_non_exhaustive()
    }
}

impl Drop for ClaimConnection {
    fn drop(&mut self) {
        if let Some(object) = self.object.take()
            && !*self.clean.get_mut()
        {
            // Out of the pool; dropping the client closes the connection.
            drop(deadpool_postgres::Object::take(object));
        }
    }
}

struct PostgresClaim {
    connection: Arc<ClaimConnection>,
    handler: String,
    message_id: String,
}

/// Waits for the pair's claim: a transaction-level advisory lock (released at COMMIT or
/// ROLLBACK), keyed on a 64-bit hash of the pair (two pairs sharing a key only take
/// turns). No transaction id is assigned.
const CLAIM_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended($2, hashtext($1)))";
/// Whether the pair is recorded: run after the lock is granted, so (read committed) it
/// sees the row a run that held the lock before committed.
const CLAIM_DONE: &str = "SELECT 1 FROM orkestra_inbox WHERE handler = $1 AND message_id = $2";
/// Records the pair, in the handler's transaction, when the handler succeeded.
const CLAIM_RECORD: &str = "INSERT INTO orkestra_inbox (handler, message_id) VALUES ($1, $2) \
                            ON CONFLICT DO NOTHING";

/// `postgres: ` and the error with its causes (the driver's `db error` alone says
/// nothing; its cause names the statement's failure).
fn inbox_error(e: impl std::fmt::Display) -> crate::handler::InboxError {
    crate::handler::InboxError(format!("{ADAPTER}: {e}"))
}

fn inbox_pg_error(e: &tokio_postgres::Error) -> crate::handler::InboxError {
    inbox_error(pg_text(e))
}

/// A driver error with its causes, one sentence.
fn pg_text(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

impl crate::handler::InboxBackend for PostgresInbox {
    fn claim<'a>(
        &'a self,
        handler: &'a str,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn crate::handler::OpenClaim>>, crate::handler::InboxError>>
    {
        Box::pin(async move {
            let connection = Arc::new(ClaimConnection::new(
                self.pool.get().await.map_err(inbox_error)?,
            ));
            let client = connection.checked()?;
            if self
                .claims
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .is_multiple_of(10_000)
            {
                client
                    .execute(
                        &format!("DELETE FROM orkestra_inbox WHERE handled_at < now() - interval '{INBOX_KEEP}'"),
                        &[],
                    )
                    .await
                    .map_err(|e| inbox_pg_error(&e))?;
            }
            if let Err(e) = connection.begin().await {
                connection.rollback().await;
                return Err(e);
            }
            // The lock, then the lookup, sent together (one round trip, run in order);
            // unnamed statements, planned with their values each time.
            let pair: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2] =
                [(&handler, Type::TEXT), (&message_id, Type::TEXT)];
            let (locked, done) = tokio::join!(
                client.query_typed(CLAIM_LOCK, &pair),
                client.query_typed(CLAIM_DONE, &pair)
            );
            match locked.and(done) {
                Ok(rows) if rows.is_empty() => Ok(Some(Box::new(PostgresClaim {
                    connection: connection.clone(),
                    handler: handler.to_owned(),
                    message_id: message_id.to_owned(),
                })
                    as Box<dyn crate::handler::OpenClaim>)),
                Ok(_) => {
                    connection.end("ROLLBACK").await?;
                    Ok(None)
                }
                Err(e) => {
                    connection.rollback().await;
                    Err(inbox_pg_error(&e))
                }
            }
        })
    }
}

impl crate::handler::OpenClaim for PostgresClaim {
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), crate::handler::InboxError>> {
        Box::pin(async move {
            let connection = &self.connection;
            // The row goes in with the handler's writes. When a statement of the handler
            // failed, the transaction is aborted and this insert fails: COMMIT would roll
            // back without an error, so the handler's lost writes are a failure (run
            // again), never a silent success. Every failed path rolls back.
            let recorded = connection
                .checked()?
                .execute_typed(
                    CLAIM_RECORD,
                    &[(&self.handler, Type::TEXT), (&self.message_id, Type::TEXT)],
                )
                .await;
            match recorded {
                Ok(1) => {}
                Ok(_) => {
                    // Only a run that did not take the lock (a process of an older release,
                    // which inserted the row when it claimed) can have recorded it.
                    connection.rollback().await;
                    return Err(inbox_error(format_args!(
                        "message {} was recorded for {} by another process meanwhile; this \
                         run's writes are rolled back",
                        self.message_id, self.handler
                    )));
                }
                Err(e) if e.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) => {
                    connection.rollback().await;
                    return Err(inbox_error(format_args!(
                        "the handler's transaction is aborted (a statement on ctx.postgres() failed \
                         and the handler still returned Ok), so its writes are lost: {}",
                        pg_text(&e)
                    )));
                }
                Err(e) => {
                    connection.rollback().await;
                    return Err(inbox_pg_error(&e));
                }
            }
            if let Err(e) = connection.end("COMMIT").await {
                connection.rollback().await;
                return Err(e);
            }
            Ok(())
        })
    }

    fn release(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move { self.connection.rollback().await })
    }

    fn postgres(&self) -> Option<Arc<dyn crate::handler::PostgresClaimConnection>> {
        Some(self.connection.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;

    const TIMING: HorizonTiming = HorizonTiming {
        after: Duration::from_millis(300),
        every: Duration::from_secs(60),
        check: Duration::from_millis(50),
    };

    #[test]
    fn readers_count_as_held_back_once_the_horizon_stays_put_behind_committed_events() {
        let mut state = HorizonState::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        // Nothing waits: never held.
        assert_eq!(state.observe(Some(5), Some(5), at(0), TIMING), None);
        assert_eq!(state.observe(None, None, at(1000), TIMING), None);
        // Events wait behind the horizon: a warning after `after`, then not again
        // within `every`.
        assert_eq!(state.observe(Some(5), Some(9), at(1000), TIMING), None);
        assert_eq!(state.observe(Some(5), Some(9), at(1200), TIMING), None);
        assert_eq!(
            state.observe(Some(5), Some(12), at(1300), TIMING),
            Some(Duration::from_millis(300))
        );
        assert_eq!(state.observe(Some(5), Some(12), at(30_000), TIMING), None);
        assert_eq!(
            state.observe(Some(5), Some(12), at(61_300), TIMING),
            Some(Duration::from_millis(60_300))
        );
        // The horizon moved (another transaction holds it now): the wait starts again.
        assert_eq!(state.observe(Some(9), Some(12), at(200_000), TIMING), None);
        assert_eq!(state.observe(Some(9), Some(12), at(200_200), TIMING), None);
        assert!(
            state
                .observe(Some(9), Some(12), at(200_400), TIMING)
                .is_some()
        );
        // Caught up: not held.
        assert_eq!(state.observe(Some(12), Some(12), at(300_000), TIMING), None);
        assert_eq!(state.held, None);
    }

    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            crate::sync::lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn url() -> SecretUrl {
        SecretUrl::new(
            std::env::var("ORKESTRA_PG_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        )
    }

    /// A transaction left open in another session (with a transaction id) holds back an
    /// event committed after it: the watcher names that session (database, pid, age,
    /// state) in one warning. The current-thread runtime keeps the spawned watcher under
    /// the test's log subscriber.
    #[tokio::test]
    async fn a_transaction_left_open_is_named_when_it_holds_readers_back() {
        let url = url();
        let store = match crate::Store::postgres(&url).await {
            Ok(store) => store,
            Err(e) if std::env::var("ORKESTRA_REQUIRE_SERVICES").is_ok_and(|v| v == "1") => {
                panic!("PostgreSQL is required (ORKESTRA_REQUIRE_SERVICES=1): {e}")
            }
            Err(e) => {
                eprintln!("SKIPPED: PostgreSQL is unavailable ({e})");
                return;
            }
        };
        let Some(pg) = store.backend.as_postgres() else {
            panic!("a PostgreSQL store");
        };
        let (holder, connection) = tokio_postgres::connect(url.expose(), NoTls).await.unwrap();
        tokio::spawn(connection);
        holder
            .batch_execute(
                "SET application_name = 'forgotten-session'; BEGIN; SELECT pg_current_xact_id()",
            )
            .await
            .unwrap();
        let row = holder
            .query_one("SELECT pg_backend_pid(), current_database()", &[])
            .await
            .unwrap();
        let (pid, database): (i32, String) = (row.get(0), row.get(1));
        let appended = store
            .append(
                &format!("horizon-{}", crate::new_id()),
                crate::ExpectedVersion::NoStream,
                vec![crate::EventData::from_raw(crate::RawEvent {
                    id: crate::new_id(),
                    event_type: "Test.Held".into(),
                    version: 1,
                    topic: "test.held".into(),
                    data: serde_json::json!({}),
                    metadata: crate::Metadata::new(),
                })],
            )
            .await
            .unwrap();
        assert!(
            store.head().await.unwrap() < Some(appended.last_position),
            "the open transaction keeps the event from readers"
        );

        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer({
                let logs = logs.clone();
                move || logs.clone()
            })
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let reader = pg.changes.subscribe();
        let watcher = tokio::spawn(watch_horizon(pg.pool.clone(), pg.changes.clone(), TIMING));
        tokio::time::sleep(Duration::from_millis(1200)).await;
        watcher.abort();
        drop(reader);
        holder.batch_execute("COMMIT").await.unwrap();

        let text = String::from_utf8(crate::sync::lock(&logs.0).clone()).unwrap();
        let warnings: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("readers held back"))
            .collect();
        eprintln!("{warnings:#?}");
        assert_eq!(warnings.len(), 1, "one warning per minute: {text}");
        let warning = warnings[0];
        for part in [
            "WARN",
            "PostgreSQL readers held back for 0.",
            &format!("pid {pid} in database \"{database}\", open for "),
            "idle in transaction",
            "application \"forgotten-session\"",
            &format!("(`SELECT pg_terminate_backend({pid})` ends it)"),
        ] {
            assert!(warning.contains(part), "{part:?} in {warning}");
        }
    }
}
