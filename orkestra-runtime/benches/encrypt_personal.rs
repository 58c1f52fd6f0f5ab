//! `Store::encrypt_personal` at growing sizes: a store holding N events stored before
//! their fields were personal (half of them a personal type with 2 plain values, half
//! another type), sealed in one run; the time per event read must stay flat as N grows
//! (the run reads the global order by position and writes each batch by primary key,
//! so nothing in it grows with the table).
//!
//! `cargo bench -p orkestra-runtime --bench encrypt_personal [-- SIZES]`, sizes in
//! thousands (default `50 100 200 500`); `ORKESTRA_BENCH_STORES=memory,sqlite,postgres`
//! (default `memory,sqlite`; PostgreSQL on the server of `ORKESTRA_PG_URL`, a database
//! of its own per size, dropped after). Prints one line per store and size. The events
//! belong to 10,000 subjects, whose keys the run makes: a fixed cost, so compare the
//! marginal cost between sizes.

use std::path::PathBuf;
use std::time::Instant;

use orkestra_runtime::keys::{PersonalData, PersonalEvent, PersonalField};
use orkestra_runtime::store::EncryptOptions;
use orkestra_runtime::{EventData, ExpectedVersion, Metadata, RawEvent, SecretUrl, Store};
use serde_json::json;

const REGISTERED: &str = "Bench.Customers.CustomerRegistered";
const CHANGED: &str = "Bench.Customers.PlanChanged";
/// Events per append while filling.
const CHUNK: u64 = 1000;

static EVENTS: &[PersonalEvent] = &[PersonalEvent::new(
    REGISTERED,
    "customer_id",
    &[
        PersonalField::new("email", "\"\""),
        PersonalField::new("name", "\"(erased)\""),
    ],
)];

fn event(i: u64) -> EventData {
    let subject = format!("customer-{}", i % 10_000);
    let (event_type, data) = if i.is_multiple_of(2) {
        (
            REGISTERED,
            json!({
                "customer_id": subject,
                "email": format!("person{i}@mail.example"),
                "name": format!("Person Number {i}"),
                "plan": "gold",
            }),
        )
    } else {
        (CHANGED, json!({"customer_id": subject, "plan": "silver"}))
    };
    EventData::from_raw(RawEvent {
        id: orkestra_runtime::new_id(),
        event_type: event_type.into(),
        version: 1,
        topic: "bench.customers".into(),
        data,
        metadata: Metadata::new(),
    })
}

async fn fill(store: &Store, n: u64) {
    let mut i = 0;
    while i < n {
        let events: Vec<EventData> = (i..(i + CHUNK).min(n)).map(event).collect();
        store
            .append(
                &format!("customers-{}", i / CHUNK),
                ExpectedVersion::NoStream,
                events,
            )
            .await
            .unwrap();
        i += CHUNK;
    }
}

async fn measure(label: &str, plain: Store, n: u64) {
    fill(&plain, n).await;
    let store = plain
        .with_personal_data(&PersonalData::new().with_events(EVENTS))
        .unwrap();
    let started = Instant::now();
    let report = store
        .encrypt_personal(EncryptOptions::default(), |_| {})
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(report.scanned, n);
    assert_eq!(report.rewritten, n / 2);
    println!(
        "{label:<10} {:>7} events: {:>8.2} s, {:>6.2} µs/event read, {} rewritten ({} values sealed)",
        n,
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / n as f64,
        report.rewritten,
        report.fields_sealed
    );
}

fn sqlite_path(n: u64) -> PathBuf {
    std::env::temp_dir().join(format!(
        "orkestra-bench-encrypt-{n}-{}.db",
        uuid::Uuid::new_v4().simple()
    ))
}

/// A database of its own on the PostgreSQL server of `ORKESTRA_PG_URL`.
async fn postgres_database(n: u64) -> (SecretUrl, String, tokio_postgres::Client) {
    let base = std::env::var("ORKESTRA_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let (server, _) = base.rsplit_once('/').unwrap();
    let (admin, connection) =
        tokio_postgres::connect(&format!("{server}/postgres"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    let name = format!(
        "orkestra_bench_encrypt_{n}_{}",
        uuid::Uuid::new_v4().simple()
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    (SecretUrl::new(format!("{server}/{name}")), name, admin)
}

fn main() {
    let sizes: Vec<u64> = {
        let given: Vec<u64> = std::env::args()
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        if given.is_empty() {
            vec![50, 100, 200, 500]
        } else {
            given
        }
    };
    let stores = std::env::var("ORKESTRA_BENCH_STORES").unwrap_or_else(|_| "memory,sqlite".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for store in stores.split(',') {
            for &k in &sizes {
                let n = k * 1000;
                match store {
                    "memory" => measure("memory", Store::memory(), n).await,
                    "sqlite" => {
                        let path = sqlite_path(n);
                        measure("sqlite", Store::sqlite(&path).await.unwrap(), n).await;
                        for suffix in ["", "-wal", "-shm"] {
                            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                        }
                    }
                    "postgres" => {
                        let (url, name, admin) = postgres_database(n).await;
                        measure("postgres", Store::postgres(&url).await.unwrap(), n).await;
                        let _ = admin
                            .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
                            .await;
                    }
                    other => panic!("unknown store {other:?}: memory, sqlite or postgres"),
                }
            }
        }
    });
}
