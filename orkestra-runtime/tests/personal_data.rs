//! Personal data on the real stores (memory, SQLite, PostgreSQL): encrypted in the rows,
//! plain for readers, unreadable for good after `forget` (a byte search of the SQLite
//! file and its WAL, of `pg_dump` output and of the debug logs), tampering reported with
//! stream, position and field, one key however many writers race.

mod support;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use futures_util::StreamExt;
use orkestra_runtime::keys::{
    ENCRYPTED_KEY, PersonalData, PersonalEvent, PersonalField, PersonalState,
};
use orkestra_runtime::store::{
    EncryptOptions, EncryptProgress, FORGOTTEN_STREAM, SUBJECT_FORGOTTEN,
};
use orkestra_runtime::{
    EventData, ExpectedVersion, Metadata, Query, QueryItem, RawEvent, Snapshot, Store, StoreError,
    Tag,
};
use serde_json::{Value, json};
use support::databases::FreshDatabase;
use support::logs::LogBuffer;
use support::services::unavailable;

const REGISTERED: &str = "Test.Customers.CustomerRegistered";
const PLAN_CHANGED: &str = "Test.Customers.PlanChanged";
const SHAPE: &str = "customer-state-v1";

static EVENTS: &[PersonalEvent] = &[PersonalEvent::new(
    REGISTERED,
    "customer_id",
    &[
        PersonalField::new("email", "\"\""),
        PersonalField::new("name", "\"(erased)\""),
        PersonalField::new("contacts[].phone", "null"),
    ],
)];

static STATES: &[PersonalState] = &[PersonalState::new(
    SHAPE,
    "customer_id",
    &[PersonalField::new("email", "\"\"")],
)];

fn personal() -> PersonalData {
    PersonalData::new().with_events(EVENTS).with_states(STATES)
}

/// Every log line of this test binary at debug level, from the first test on.
fn logs() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = LogBuffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        buffer
    })
}

/// A person's values, unique to the test so a byte search finds only them.
struct Person {
    subject: String,
    email: String,
    name: String,
    phone: String,
}

impl Person {
    fn new(who: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            subject: format!("{who}-{id}"),
            email: format!("{who}.{id}@mail.example"),
            name: format!("{who} Lovelace {id}"),
            phone: format!("555-{id}"),
        }
    }

    fn stream(&self) -> String {
        format!("customer-{}", self.subject)
    }

    fn data(&self) -> Value {
        json!({
            "customer_id": self.subject,
            "email": self.email,
            "name": self.name,
            "contacts": [{"phone": self.phone, "kind": "home"}, {"kind": "none"}],
            "plan": "gold",
        })
    }

    fn registered(&self) -> EventData {
        event(REGISTERED, self.data()).with_tags([Tag::new("customer", &self.subject).unwrap()])
    }

    fn plaintexts(&self) -> [&str; 3] {
        [&self.email, &self.name, &self.phone]
    }
}

fn event(event_type: &str, data: Value) -> EventData {
    EventData::from_raw(RawEvent {
        id: orkestra_runtime::new_id(),
        event_type: event_type.into(),
        version: 1,
        topic: "test.customers".into(),
        data,
        metadata: Metadata::new(),
    })
}

/// Direct access to what a store keeps, to look past the API.
enum Raw {
    Memory,
    Sqlite(PathBuf),
    Postgres(Box<FreshDatabase>),
}

impl Raw {
    /// `(position, data)` of every stored event, as the table holds it.
    async fn rows(&self) -> Option<Vec<(u64, String)>> {
        match self {
            Raw::Memory => None,
            Raw::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).unwrap();
                let mut s = conn
                    .prepare("SELECT position, data FROM orkestra_events ORDER BY position")
                    .unwrap();
                Some(
                    s.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
                        .unwrap()
                        .collect::<Result<_, _>>()
                        .unwrap(),
                )
            }
            Raw::Postgres(db) => {
                let client = db.client().await;
                let rows = client
                    .query(
                        "SELECT position, data::text FROM orkestra_events ORDER BY position",
                        &[],
                    )
                    .await
                    .unwrap();
                Some(
                    rows.iter()
                        .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
                        .collect(),
                )
            }
        }
    }

    /// The stored state of a snapshot, as the table holds it.
    async fn snapshot_state(&self, stream: &str) -> Option<String> {
        match self {
            Raw::Memory => None,
            Raw::Sqlite(path) => rusqlite::Connection::open(path)
                .unwrap()
                .query_row(
                    "SELECT state FROM orkestra_snapshots WHERE stream = ?1",
                    [stream],
                    |r| r.get(0),
                )
                .ok(),
            Raw::Postgres(db) => db
                .client()
                .await
                .query_opt(
                    "SELECT state::text FROM orkestra_snapshots WHERE stream = $1",
                    &[&stream],
                )
                .await
                .unwrap()
                .map(|r| r.get(0)),
        }
    }

    /// Overwrites a stored event's data (past the append-only triggers): tampering.
    async fn set_data(&self, position: u64, data: &str) {
        match self {
            Raw::Memory => unreachable!("memory has no rows to tamper with"),
            Raw::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.execute_batch(
                    "DROP TRIGGER IF EXISTS orkestra_events_no_update; \
                     DROP TRIGGER IF EXISTS orkestra_events_no_data_update",
                )
                .unwrap();
                conn.execute(
                    "UPDATE orkestra_events SET data = ?1 WHERE position = ?2",
                    rusqlite::params![data, position as i64],
                )
                .unwrap();
            }
            Raw::Postgres(db) => {
                let client = db.client().await;
                client
                    .batch_execute(
                        "ALTER TABLE orkestra_events DISABLE TRIGGER orkestra_events_no_change",
                    )
                    .await
                    .unwrap();
                client
                    .execute(
                        "UPDATE orkestra_events SET data = $1::text::jsonb WHERE position = $2",
                        &[&data, &(position as i64)],
                    )
                    .await
                    .unwrap();
                client
                    .batch_execute(
                        "ALTER TABLE orkestra_events ENABLE TRIGGER orkestra_events_no_change",
                    )
                    .await
                    .unwrap();
            }
        }
    }

    /// Every byte the store has at rest: the SQLite file and its WAL, or `pg_dump`
    /// output of the database.
    async fn bytes(&self) -> Option<Vec<u8>> {
        match self {
            Raw::Memory => None,
            Raw::Sqlite(path) => {
                let mut bytes = std::fs::read(path).unwrap();
                let wal = PathBuf::from(format!("{}-wal", path.display()));
                if let Ok(more) = std::fs::read(wal) {
                    bytes.extend(more);
                }
                Some(bytes)
            }
            Raw::Postgres(db) => {
                let url = db.url();
                let out = std::process::Command::new("pg_dump")
                    .arg(url.expose())
                    .output()
                    .expect("pg_dump runs");
                assert!(
                    out.status.success(),
                    "pg_dump failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                Some(out.stdout)
            }
        }
    }

    /// How many key rows the subject has.
    async fn key_rows(&self, subject: &str) -> Option<i64> {
        match self {
            Raw::Memory => None,
            Raw::Sqlite(path) => Some(
                rusqlite::Connection::open(path)
                    .unwrap()
                    .query_row(
                        "SELECT count(*) FROM orkestra_keys WHERE subject = ?1",
                        [subject],
                        |r| r.get(0),
                    )
                    .unwrap(),
            ),
            Raw::Postgres(db) => Some(
                db.client()
                    .await
                    .query_one(
                        "SELECT count(*) FROM orkestra_keys WHERE subject = $1",
                        &[&subject],
                    )
                    .await
                    .unwrap()
                    .get(0),
            ),
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sqlite_path() -> PathBuf {
    std::env::temp_dir().join(format!(
        "orkestra-personal-{}.db",
        uuid::Uuid::new_v4().simple()
    ))
}

async fn postgres_database() -> Option<FreshDatabase> {
    match FreshDatabase::create("personal").await {
        Ok(db) => Some(db),
        Err(e) => {
            unavailable("PostgreSQL", &e);
            None
        }
    }
}

/// The stores a test runs on.
#[derive(Clone, Copy)]
enum Kind {
    Memory,
    Sqlite,
    Postgres,
}

/// Two handles on one new store of `kind` (as two processes see it) and its raw side;
/// `None` when PostgreSQL is unavailable (the test skips, or fails under
/// `ORKESTRA_REQUIRE_SERVICES=1`). A SQLite file goes with its `Raw`.
async fn twins(kind: Kind) -> Option<(Store, Store, Raw)> {
    Some(match kind {
        Kind::Memory => {
            let store = Store::memory();
            (store.clone(), store, Raw::Memory)
        }
        Kind::Sqlite => {
            let path = sqlite_path();
            let one = Store::sqlite(&path).await.unwrap();
            let two = Store::sqlite(&path).await.unwrap();
            (one, two, Raw::Sqlite(path))
        }
        Kind::Postgres => {
            let db = postgres_database().await?;
            let one = Store::postgres(&db.url()).await.unwrap();
            let two = Store::postgres(&db.url()).await.unwrap();
            (one, two, Raw::Postgres(Box::new(db)))
        }
    })
}

impl Drop for Raw {
    fn drop(&mut self) {
        if let Raw::Sqlite(path) = self {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
    }
}

fn data_of(event: &orkestra_runtime::RecordedEvent) -> Value {
    event.data().unwrap()
}

/// The whole story on one store: round trip on every read path, ciphertext at rest,
/// tampering, forgetting, and the byte searches.
async fn personal_data_end_to_end(store: Store, raw: Raw) {
    let logs = logs();
    let store = store.with_personal_data(&personal()).unwrap();
    let (alice, bob) = (Person::new("alice"), Person::new("bob"));

    // Appended: alice and bob registered, then a plan change (no personal data).
    store
        .append(
            &alice.stream(),
            ExpectedVersion::NoStream,
            vec![alice.registered()],
        )
        .await
        .unwrap();
    let conditional = orkestra_runtime::AppendCondition {
        fail_if_events_match: Query::of(
            QueryItem::types([REGISTERED]).with_tags([Tag::new("customer", &bob.subject).unwrap()]),
        ),
        after: None,
    };
    store
        .append_if(
            &bob.stream(),
            ExpectedVersion::NoStream,
            vec![bob.registered()],
            conditional,
        )
        .await
        .unwrap();
    store
        .append(
            &alice.stream(),
            ExpectedVersion::Exact(0),
            vec![event(
                PLAN_CHANGED,
                json!({"customer_id": alice.subject, "plan": "silver"}),
            )],
        )
        .await
        .unwrap();

    // Every read path gives the plain values back.
    let read = store.read_stream(&alice.stream(), 0, 10).await.unwrap();
    assert_eq!(data_of(&read[0]), alice.data());
    assert!(read[0].redacted().is_empty());
    assert_eq!(data_of(&read[1])["plan"], "silver");
    let back = store
        .read_stream_backwards(&alice.stream(), u64::MAX, 10)
        .await
        .unwrap();
    assert_eq!(data_of(&back[1]), alice.data());
    let of = |who: &Person, events: &[orkestra_runtime::RecordedEvent]| {
        events
            .iter()
            .find(|e| e.event_type() == REGISTERED && e.stream() == who.stream())
            .map(data_of)
    };
    // PostgreSQL's global order shows an event once every transaction older than it has
    // ended; the other tests append to the same database meanwhile, so read until both
    // are there (a few seconds at most).
    let mut all = store.read_all(0, 10_000).await.unwrap();
    for _ in 0..100 {
        if of(&alice, &all).is_some() && of(&bob, &all).is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        all = store.read_all(0, 10_000).await.unwrap();
    }
    assert_eq!(of(&alice, &all), Some(alice.data()));
    assert_eq!(of(&bob, &all), Some(bob.data()));
    let queried = store
        .read_query(
            &Query::of(QueryItem::tags([
                Tag::new("customer", &bob.subject).unwrap()
            ])),
            0,
            10,
        )
        .await
        .unwrap();
    assert_eq!(of(&bob, &queried), Some(bob.data()));
    let mut subscription = store.subscribe_all(0).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < all.len() {
        seen.push(subscription.next().await.unwrap().unwrap());
    }
    assert_eq!(of(&alice, &seen), Some(alice.data()));

    // At rest: ciphertext in the rows, the subject and other fields in clear.
    if let Some(rows) = raw.rows().await {
        let registered: Vec<&(u64, String)> = rows
            .iter()
            .filter(|(_, d)| d.contains(&alice.subject) || d.contains(&bob.subject))
            .filter(|(_, d)| d.contains(ENCRYPTED_KEY))
            .collect();
        assert_eq!(registered.len(), 2, "{rows:#?}");
        for (_, data) in &rows {
            for plain in alice.plaintexts().iter().chain(&bob.plaintexts()) {
                assert!(!data.contains(plain), "{plain} stored in clear: {data}");
            }
        }
        let stored: Value = serde_json::from_str(&registered[0].1).unwrap();
        assert_eq!(stored["plan"], "gold");
        assert_eq!(stored["contacts"][0]["kind"], "home");
        assert!(
            stored["email"][ENCRYPTED_KEY]
                .as_str()
                .unwrap()
                .starts_with("v1.")
        );
    }

    // A snapshot with a personal state field: encrypted at rest, plain when loaded.
    let state = json!({"customer_id": alice.subject, "email": alice.email, "orders": 2});
    store
        .save_snapshot(Snapshot {
            stream: alice.stream(),
            version: 1,
            shape: SHAPE.into(),
            state: state.to_string(),
        })
        .await
        .unwrap();
    let loaded = store.load_snapshot(&alice.stream()).await.unwrap().unwrap();
    assert_eq!(serde_json::from_str::<Value>(&loaded.state).unwrap(), state);
    if let Some(stored) = raw.snapshot_state(&alice.stream()).await {
        assert!(
            !stored.contains(&alice.email) && stored.contains(ENCRYPTED_KEY),
            "{stored}"
        );
    }

    // Tampering: a changed byte, a value from another subject, a value moved to another
    // field. Each is reported with stream, position and field; the original reads again.
    if let Some(rows) = raw.rows().await {
        let find = |who: &Person| {
            rows.iter()
                .find(|(_, d)| d.contains(&who.subject) && d.contains(ENCRYPTED_KEY))
                .cloned()
                .unwrap()
        };
        let (position, original) = find(&alice);
        let (_, bobs) = find(&bob);
        let original_value: Value = serde_json::from_str(&original).unwrap();
        let bob_value: Value = serde_json::from_str(&bobs).unwrap();

        let mut flipped = original_value.clone();
        let text = flipped["email"][ENCRYPTED_KEY].as_str().unwrap().to_owned();
        let mut chars: Vec<char> = text.chars().collect();
        let at = chars.len() / 2;
        chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
        flipped["email"][ENCRYPTED_KEY] = Value::String(chars.into_iter().collect());

        let mut foreign = original_value.clone();
        foreign["email"] = bob_value["email"].clone();

        let mut moved = original_value.clone();
        moved["name"] = original_value["email"].clone();

        for (tampered, field) in [(flipped, "email"), (foreign, "email"), (moved, "name")] {
            raw.set_data(position, &tampered.to_string()).await;
            let error = store.read_stream(&alice.stream(), 0, 10).await.unwrap_err();
            match &error {
                StoreError::PersonalData {
                    stream,
                    position: at,
                    field: f,
                    ..
                } => {
                    assert_eq!(stream, &alice.stream());
                    assert_eq!(*at, Some(position));
                    assert_eq!(f, field);
                }
                other => panic!("expected PersonalData, got {other:?}"),
            }
            let text = error.to_string();
            assert!(
                text.contains(&alice.stream())
                    && text.contains(&format!("position {position}"))
                    && text.contains(&format!("field {field}"))
                    && text.contains("does not authenticate"),
                "{text}"
            );
            assert!(
                store.read_all(0, 1000).await.is_err(),
                "read_all reports it too"
            );
        }
        raw.set_data(position, &original).await;
        let read = store.read_stream(&alice.stream(), 0, 10).await.unwrap();
        assert_eq!(data_of(&read[0]), alice.data());
    }

    // Alice's key, to look for its bytes at rest: there now, gone after forget.
    let key = store
        .key_store()
        .unwrap()
        .key(&alice.subject)
        .await
        .unwrap()
        .expect("alice has a key");
    let key_bytes = key.expose().to_vec();
    if let (Raw::Sqlite(_), Some(bytes)) = (&raw, raw.bytes().await) {
        assert!(
            contains(&bytes, &key_bytes),
            "the search finds the key while it exists"
        );
    }
    if let (Raw::Postgres(_), Some(bytes)) = (&raw, raw.bytes().await) {
        assert!(
            contains(&bytes, hex(&key_bytes).as_bytes()),
            "pg_dump holds the key"
        );
    }

    // Forget alice.
    let forgotten = store.forget(&alice.subject).await.unwrap();
    assert!(forgotten.key_deleted);
    assert!(store.is_forgotten(&alice.subject).await.unwrap());
    assert!(!store.is_forgotten(&bob.subject).await.unwrap());
    let again = store.forget(&alice.subject).await.unwrap();
    assert!(!again.key_deleted);
    assert_eq!(again.position, forgotten.position, "one erasure event");
    let record = store.read_stream(FORGOTTEN_STREAM, 0, 1000).await.unwrap();
    let record: Vec<_> = record
        .iter()
        .filter(|e| data_of(e)["subject"] == alice.subject.as_str())
        .collect();
    assert_eq!(record.len(), 1);
    assert_eq!(record[0].event_type(), SUBJECT_FORGOTTEN);
    assert_eq!(record[0].position(), forgotten.position);

    // Reads never fail: replacements, and the paths redacted.
    let read = store.read_stream(&alice.stream(), 0, 10).await.unwrap();
    let data = data_of(&read[0]);
    assert_eq!(data["email"], "");
    assert_eq!(data["name"], "(erased)");
    assert_eq!(data["contacts"][0], json!({"phone": null, "kind": "home"}));
    assert_eq!(data["plan"], "gold");
    assert_eq!(data["customer_id"], alice.subject.as_str());
    let mut redacted = read[0].redacted().to_vec();
    redacted.sort();
    assert_eq!(redacted, ["contacts[0].phone", "email", "name"]);
    assert!(read[1].redacted().is_empty());
    let all = store.read_all(0, 1000).await.unwrap();
    assert_eq!(of(&bob, &all), Some(bob.data()), "other subjects intact");
    assert_eq!(of(&alice, &all).unwrap()["email"], "");
    assert!(
        store
            .load_snapshot(&alice.stream())
            .await
            .unwrap()
            .is_none(),
        "a snapshot with a forgotten subject is not used"
    );

    // A forgotten subject gets no new personal data.
    let error = store
        .append(
            &alice.stream(),
            ExpectedVersion::Any,
            vec![alice.registered()],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::SubjectForgotten { subject, .. } if *subject == alice.subject),
        "{error:?}"
    );
    assert!(error.to_string().contains(&alice.subject), "{error}");
    assert_eq!(
        store
            .read_stream(&alice.stream(), 0, 10)
            .await
            .unwrap()
            .len(),
        2
    );

    // Nothing of alice's at rest: not her values, not her key.
    if let Some(bytes) = raw.bytes().await {
        assert!(
            contains(&bytes, alice.subject.as_bytes()),
            "the search sees the data"
        );
        for plain in alice.plaintexts() {
            assert!(!contains(&bytes, plain.as_bytes()), "{plain} found at rest");
        }
        assert!(
            !contains(&bytes, &key_bytes),
            "the key's bytes found at rest"
        );
        assert!(
            !contains(&bytes, hex(&key_bytes).as_bytes()),
            "the key in hex at rest"
        );
    }

    // Nor in the logs at debug level, which did see this test.
    let text = logs.text();
    assert!(
        text.contains(&alice.subject),
        "the logs were captured: {text}"
    );
    for plain in alice.plaintexts().iter().chain(&bob.plaintexts()) {
        assert!(!text.contains(plain), "{plain} in the logs");
    }
    assert!(!text.contains(&hex(&key_bytes)));
}

/// 16 writers of one new subject's first events, over two handles with caches of their
/// own (and so over the key store's own atomicity), make one key.
async fn sixteen_writers_make_one_key(one: Store, two: Store, raw: Raw) {
    let one = one.with_personal_data(&personal()).unwrap();
    let two = two.with_personal_data(&personal()).unwrap();
    let carol = Arc::new(Person::new("carol"));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = if i % 2 == 0 { one.clone() } else { two.clone() };
        let carol = carol.clone();
        tasks.push(tokio::spawn(async move {
            let stream = format!("{}-{i}", carol.stream());
            store
                .append(&stream, ExpectedVersion::NoStream, vec![carol.registered()])
                .await
                .unwrap();
            stream
        }));
    }
    for task in tasks {
        let stream = task.await.unwrap();
        for store in [&one, &two] {
            let read = store.read_stream(&stream, 0, 1).await.unwrap();
            assert_eq!(data_of(&read[0]), carol.data(), "{stream}");
        }
    }
    if let Some(rows) = raw.key_rows(&carol.subject).await {
        assert_eq!(rows, 1);
    }

    // The key stores themselves, raced directly.
    let dave = Person::new("dave").subject;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = if i % 2 == 0 { one.clone() } else { two.clone() };
        let dave = dave.clone();
        tasks.push(tokio::spawn(async move {
            store
                .key_store()
                .unwrap()
                .key_or_create(&dave)
                .await
                .unwrap()
                .expose()
                .to_vec()
        }));
    }
    let mut keys = Vec::new();
    for task in tasks {
        keys.push(task.await.unwrap());
    }
    keys.dedup();
    assert_eq!(keys.len(), 1, "one key for 16 racing creators");
    if let Some(rows) = raw.key_rows(&dave).await {
        assert_eq!(rows, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_keeps_personal_data_and_forgets_it() {
    let Some((one, two, raw)) = twins(Kind::Memory).await else {
        return;
    };
    drop(two);
    personal_data_end_to_end(one, raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_personal_data_encrypted_and_forgets_it_for_good() {
    let Some((one, two, raw)) = twins(Kind::Sqlite).await else {
        return;
    };
    drop(two);
    personal_data_end_to_end(one, raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_personal_data_encrypted_and_forgets_it_for_good() {
    let Some((one, two, raw)) = twins(Kind::Postgres).await else {
        return;
    };
    drop(two);
    personal_data_end_to_end(one, raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_makes_one_key_for_sixteen_writers() {
    let Some((one, two, raw)) = twins(Kind::Memory).await else {
        return;
    };
    sixteen_writers_make_one_key(one, two, raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_makes_one_key_for_sixteen_writers() {
    let Some((one, two, raw)) = twins(Kind::Sqlite).await else {
        return;
    };
    sixteen_writers_make_one_key(one, two, raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_makes_one_key_for_sixteen_writers() {
    let Some((one, two, raw)) = twins(Kind::Postgres).await else {
        return;
    };
    sixteen_writers_make_one_key(one, two, raw).await;
}

#[tokio::test]
async fn a_bad_description_is_refused_with_its_event_and_field() {
    let bad = PersonalData::new().with_events([PersonalEvent::new(
        REGISTERED,
        "customer_id",
        const { &[PersonalField::new("contacts[.phone", "null")] },
    )]);
    let error = Store::memory().with_personal_data(&bad).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(REGISTERED) && text.contains("contacts[.phone"),
        "{text}"
    );
}

#[tokio::test]
async fn an_event_without_its_subject_is_refused() {
    let store = Store::memory().with_personal_data(&personal()).unwrap();
    let e = event(REGISTERED, json!({"email": "x@mail.example"}));
    let id = e.id.clone();
    let error = store
        .append("customer-none", ExpectedVersion::Any, vec![e])
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(&id) && text.contains("\"customer_id\" is missing"),
        "{text}"
    );
    assert!(!text.contains("x@mail.example"), "{text}");
}

// ---------------------------------------------------------------------------------------
// `Store::encrypt_personal`: events stored before their fields were declared personal.

/// What a reader of the raw store sees of an event besides its data: none of it may
/// change when its personal fields are sealed in place.
type Identity = (
    u64,
    String,
    u64,
    String,
    String,
    u32,
    String,
    Vec<String>,
    chrono::DateTime<chrono::Utc>,
);

fn identity(e: &orkestra_runtime::RecordedEvent) -> Identity {
    (
        e.position(),
        e.stream().to_owned(),
        e.version(),
        e.id().to_owned(),
        e.event_type().to_owned(),
        e.schema_version(),
        serde_json::to_string(e.metadata()).unwrap(),
        e.tags().iter().map(|t| t.as_str().to_owned()).collect(),
        e.recorded_at(),
    )
}

/// Every event of the store in global order, as stored (a handle without personal
/// data reads the data as it lies).
async fn everything(store: &Store) -> Vec<orkestra_runtime::RecordedEvent> {
    let mut all = Vec::new();
    loop {
        let from = all
            .last()
            .map_or(0, |e: &orkestra_runtime::RecordedEvent| e.position() + 1);
        let page = store.read_all(from, 1000).await.unwrap();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// Every event, once the global order shows at least `count` (PostgreSQL shows a commit
/// once every older transaction on the server has ended).
async fn settled(store: &Store, count: usize) -> Vec<orkestra_runtime::RecordedEvent> {
    for _ in 0..200 {
        let all = everything(store).await;
        if all.len() >= count {
            return all;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("fewer than {count} events in the global order after 10 s");
}

fn find<'a>(
    events: &'a [orkestra_runtime::RecordedEvent],
    who: &Person,
) -> &'a orkestra_runtime::RecordedEvent {
    events
        .iter()
        .find(|e| e.event_type() == REGISTERED && e.stream() == who.stream())
        .unwrap()
}

/// `old` is the store as a process of the older schema sees it (no personal data),
/// `store` as the new one does: the same database.
async fn encrypt_personal_in_place(old: Store, store: Store, raw: Raw) {
    let store = store.with_personal_data(&personal()).unwrap();
    // An intermediate schema that had made only the email personal.
    static EMAIL_ONLY: &[PersonalEvent] = &[PersonalEvent::new(
        REGISTERED,
        "customer_id",
        &[PersonalField::new("email", "\"\"")],
    )];
    let email_only = old
        .clone()
        .with_personal_data(&PersonalData::new().with_events(EMAIL_ONLY))
        .unwrap();
    let (alice, bob, carol, dave, erin) = (
        Person::new("alice"),
        Person::new("bob"),
        Person::new("carol"),
        Person::new("dave"),
        Person::new("erin"),
    );
    let mut metadata = Metadata::new();
    metadata.actor_id = Some("clerk-7".into());
    let mut registered = alice.registered();
    registered.metadata = metadata;
    // Before the fields were personal: alice, bob and carol in plain text, one event
    // without its subject; dave appended by the new schema, erin by the intermediate.
    old.append(&alice.stream(), ExpectedVersion::NoStream, vec![registered])
        .await
        .unwrap();
    old.append(
        &bob.stream(),
        ExpectedVersion::NoStream,
        vec![bob.registered()],
    )
    .await
    .unwrap();
    old.append(
        &alice.stream(),
        ExpectedVersion::Exact(0),
        vec![event(
            PLAN_CHANGED,
            json!({"customer_id": alice.subject, "plan": "silver"}),
        )],
    )
    .await
    .unwrap();
    old.append(
        &carol.stream(),
        ExpectedVersion::NoStream,
        vec![carol.registered()],
    )
    .await
    .unwrap();
    old.append(
        "customer-nobody",
        ExpectedVersion::NoStream,
        vec![event(REGISTERED, json!({"email": "nobody@mail.example"}))],
    )
    .await
    .unwrap();
    email_only
        .append(
            &erin.stream(),
            ExpectedVersion::NoStream,
            vec![erin.registered()],
        )
        .await
        .unwrap();
    store
        .append(
            &dave.stream(),
            ExpectedVersion::NoStream,
            vec![dave.registered()],
        )
        .await
        .unwrap();
    // Snapshots: alice's taken by the old schema (plain), dave's by the new one.
    let snapshot = |who: &Person| Snapshot {
        stream: who.stream(),
        version: 0,
        shape: SHAPE.into(),
        state: json!({"customer_id": who.subject, "email": who.email}).to_string(),
    };
    old.save_snapshot(snapshot(&alice)).await.unwrap();
    store.save_snapshot(snapshot(&dave)).await.unwrap();
    // Carol is forgotten before her events were sealed: she has no key, and never
    // gets one.
    store.forget(&carol.subject).await.unwrap();

    // alice ×2, bob, carol, nobody, erin, dave, and carol's erasure.
    let before = settled(&old, 8).await;
    assert_eq!(before.len(), 8);
    let dave_stored = find(&before, &dave).data_json().to_owned();
    let erin_email = find(&before, &erin).data().unwrap()["email"].clone();
    assert!(erin_email[ENCRYPTED_KEY].is_string());

    let mut seen: Vec<EncryptProgress> = Vec::new();
    let options = EncryptOptions {
        batch: 2,
        ..EncryptOptions::default()
    };
    let report = store
        .encrypt_personal(options, |p| seen.push(*p))
        .await
        .unwrap();
    assert_eq!(report.resumed_after, None);
    assert_eq!(report.scanned, before.len() as u64, "{report:?}");
    assert_eq!(report.last_position, before.last().map(|e| e.position()));
    assert_eq!(report.rewritten, 4, "alice, bob, carol, erin: {report:?}");
    assert_eq!(report.fields_sealed, 3 + 3 + 2, "{report:?}");
    assert_eq!(
        (report.forgotten, report.fields_erased),
        (1, 3),
        "{report:?}"
    );
    assert_eq!(report.unsealed, 1, "{report:?}");
    assert_eq!(report.unsealed_events[0].stream, "customer-nobody");
    assert!(
        report.unsealed_events[0]
            .reason
            .contains("\"customer_id\" is missing"),
        "{report:?}"
    );
    assert_eq!(report.snapshots_deleted, 1, "alice's plain one");
    // Progress: from nothing, in batches, up to everything.
    assert_eq!(
        seen.first().map(|p| (p.scanned, p.total)),
        Some((0, before.len() as u64))
    );
    assert_eq!(seen.last().map(|p| p.scanned), Some(report.scanned));
    assert!(seen.len() >= before.len() / 2, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].scanned <= w[1].scanned));

    // Nothing else changed: positions, streams, versions, ids, metadata, tags, times.
    let after = everything(&old).await;
    assert_eq!(
        after.iter().map(identity).collect::<Vec<_>>(),
        before.iter().map(identity).collect::<Vec<_>>()
    );
    // Already sealed values are untouched, byte for byte.
    assert_eq!(find(&after, &dave).data_json(), dave_stored);
    assert_eq!(find(&after, &erin).data().unwrap()["email"], erin_email);
    // No plaintext left at rest.
    for e in &after {
        for who in [&alice, &bob, &carol, &dave, &erin] {
            for plain in who.plaintexts() {
                assert!(
                    !e.data_json().contains(plain),
                    "{plain} in {}",
                    e.data_json()
                );
            }
        }
    }
    if let Some(rows) = raw.rows().await {
        for (_, data) in &rows {
            for who in [&alice, &bob, &carol, &erin] {
                for plain in who.plaintexts() {
                    assert!(!data.contains(plain), "{plain} stored in clear: {data}");
                }
            }
        }
    }
    if let Some(state) = raw.snapshot_state(&alice.stream()).await {
        panic!("alice's plain snapshot is still there: {state}");
    }
    // Readers get the values back, as if they had been sealed on append ...
    let read = everything(&store).await;
    for who in [&alice, &bob, &dave, &erin] {
        let e = find(&read, who);
        assert_eq!(data_of(e), who.data(), "{}", who.subject);
        assert!(e.redacted().is_empty());
    }
    assert_eq!(store.load_snapshot(&alice.stream()).await.unwrap(), None);
    assert!(store.load_snapshot(&dave.stream()).await.unwrap().is_some());
    // ... and carol's as replacements, listed as redacted, with no key made for her.
    let e = find(&read, &carol);
    let data = data_of(e);
    assert_eq!(
        (data["email"].clone(), data["name"].clone()),
        (json!(""), json!("(erased)"))
    );
    assert_eq!(data["contacts"][0], json!({"phone": null, "kind": "home"}));
    assert_eq!(data["plan"], "gold");
    let mut redacted = e.redacted().to_vec();
    redacted.sort();
    assert_eq!(redacted, ["contacts[0].phone", "email", "name"]);
    assert!(store.is_forgotten(&carol.subject).await.unwrap());
    if let Some(rows) = raw.key_rows(&carol.subject).await {
        assert_eq!(rows, 0, "no key for a forgotten subject");
    }
    // The event without a subject is left as it was (and reported).
    let nobody = read
        .iter()
        .find(|e| e.stream() == "customer-nobody")
        .unwrap();
    assert_eq!(data_of(nobody)["email"], "nobody@mail.example");

    // A second run resumes after the last event: nothing to read, nothing written.
    let again = store
        .encrypt_personal(EncryptOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(again.resumed_after, report.last_position);
    assert_eq!((again.scanned, again.rewritten), (0, 0), "{again:?}");
    // From the start: everything read, nothing sealed twice, not a byte changed.
    let from_start = EncryptOptions {
        from_start: true,
        ..EncryptOptions::default()
    };
    let again = store.encrypt_personal(from_start, |_| {}).await.unwrap();
    assert_eq!(again.scanned, after.len() as u64);
    assert_eq!(
        (again.rewritten, again.fields_sealed, again.forgotten),
        (0, 0, 0),
        "{again:?}"
    );
    let unchanged = everything(&old).await;
    assert_eq!(
        unchanged.iter().map(|e| e.data_json()).collect::<Vec<_>>(),
        after.iter().map(|e| e.data_json()).collect::<Vec<_>>()
    );
    // Appended plain later by a process still on the old schema: the next run seals it.
    let frank = Person::new("frank");
    old.append(
        &frank.stream(),
        ExpectedVersion::NoStream,
        vec![frank.registered()],
    )
    .await
    .unwrap();
    settled(&old, 9).await;
    let later = store
        .encrypt_personal(EncryptOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(
        (later.scanned, later.rewritten, later.fields_sealed),
        (1, 1, 3),
        "{later:?}"
    );
    assert_eq!(
        data_of(find(&everything(&store).await, &frank)),
        frank.data()
    );
    assert!(
        !find(&everything(&old).await, &frank)
            .data_json()
            .contains(&frank.email)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_encrypts_stored_personal_data_in_place() {
    let Some((one, two, raw)) = twins(Kind::Memory).await else {
        return;
    };
    encrypt_personal_in_place(one, two, raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_encrypts_stored_personal_data_in_place() {
    let Some((one, two, raw)) = twins(Kind::Sqlite).await else {
        return;
    };
    encrypt_personal_in_place(one, two, raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_encrypts_stored_personal_data_in_place() {
    let Some((one, two, raw)) = twins(Kind::Postgres).await else {
        return;
    };
    encrypt_personal_in_place(one, two, raw).await;
}

/// While it runs, an old process appends plain events and a new one sealed events, and
/// a reindex writes tags to the same rows: nothing is lost, and the run after the
/// writers stop leaves nothing in plain text.
async fn encrypt_personal_beside_writers(old: Store, store: Store) {
    let store = store.with_personal_data(&personal()).unwrap();
    let people: Vec<Person> = (0..300).map(|i| Person::new(&format!("p{i}"))).collect();
    for who in &people[..200] {
        let mut e = event(REGISTERED, who.data());
        e.tags.clear();
        old.append(&who.stream(), ExpectedVersion::NoStream, vec![e])
            .await
            .unwrap();
    }
    // A tag declared after those events: their index entries (the `tags` column) are
    // written by the reindex, beside the rewrite of their data.
    let pending = store
        .ensure_tags_indexed(&[(REGISTERED, "customer_id")])
        .await;
    assert!(
        matches!(pending, Err(StoreError::TagsNotIndexed { .. })),
        "{pending:?}"
    );
    let writer = {
        let (old, store) = (old.clone(), store.clone());
        let later: Vec<(String, Value, bool)> = people[200..]
            .iter()
            .enumerate()
            .map(|(i, who)| (who.stream(), who.data(), i % 2 == 0))
            .collect();
        tokio::spawn(async move {
            for (stream, data, plain) in later {
                let by = if plain { &old } else { &store };
                by.append(
                    &stream,
                    ExpectedVersion::NoStream,
                    vec![event(REGISTERED, data)],
                )
                .await
                .unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let options = EncryptOptions {
        batch: 16,
        ..EncryptOptions::default()
    };
    let (report, reindexed) = tokio::join!(
        store.encrypt_personal(options, |_| {}),
        store.reindex_tags(|_, _| {})
    );
    let report = report.unwrap();
    reindexed.unwrap();
    writer.await.unwrap();
    assert!(report.rewritten >= 200, "{report:?}");
    // The writers are done: one more run seals what they appended after the cursor.
    settled(&old, 300).await;
    store.encrypt_personal(options, |_| {}).await.unwrap();
    store
        .ensure_tags_indexed(&[(REGISTERED, "customer_id")])
        .await
        .unwrap();
    let stored = everything(&old).await;
    let read = everything(&store).await;
    assert_eq!(stored.len(), 300);
    for who in &people {
        let raw = find(&stored, who);
        for plain in who.plaintexts() {
            assert!(
                !raw.data_json().contains(plain),
                "{plain}: {}",
                raw.data_json()
            );
        }
        assert_eq!(data_of(find(&read, who)), who.data(), "{}", who.subject);
    }
    // The reindex's tags survived the rewrite of the same rows.
    for who in &people[..200] {
        let tag = Tag::new("customer_id", &who.subject).unwrap();
        assert!(find(&stored, who).tags().contains(&tag), "{}", who.subject);
        let found = store
            .read_query(&Query::of(QueryItem::tags([tag])), 0, 10)
            .await
            .unwrap();
        assert_eq!(found.len(), 1, "{}", who.subject);
        assert_eq!(data_of(&found[0]), who.data());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_encrypts_beside_writers() {
    let Some((one, two, raw)) = twins(Kind::Memory).await else {
        return;
    };
    encrypt_personal_beside_writers(one, two).await;
    drop(raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_encrypts_beside_writers() {
    let Some((one, two, raw)) = twins(Kind::Sqlite).await else {
        return;
    };
    encrypt_personal_beside_writers(one, two).await;
    drop(raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_encrypts_beside_writers() {
    let Some((one, two, raw)) = twins(Kind::Postgres).await else {
        return;
    };
    encrypt_personal_beside_writers(one, two).await;
    drop(raw);
}

#[tokio::test]
async fn encrypting_needs_a_description() {
    let error = Store::memory()
        .encrypt_personal(EncryptOptions::default(), |_| {})
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("Store::with_personal_data"),
        "{error}"
    );
}
