//! Aggregates (`book/src/aggregates.md`), with the generated `Account` of
//! `orkestra-gen/tests/golden/aggregates/bank.yaml`:
//!
//! - `aggregate_pg`: one `Deposit` through the generated command handler on the
//!   in-process bus over PostgreSQL (load snapshot + tail, decide, append one event,
//!   publish, reply) ÷ the same by hand with tokio-postgres (BEGIN, SELECT the stream,
//!   fold, INSERT with the version check of a unique key, COMMIT). Both work on 200
//!   accounts of 50 events each, round robin, so their streams stay alike. Target ≥ 0.8×
//!   throughput.
//! - `aggregate_load`: loading a 10,000-event stream whose newest snapshot is 99 events
//!   behind (the most `snapshot_every: 100` leaves) ÷ loading a 100-event stream without a
//!   snapshot, on the embedded store and on PostgreSQL. Target ≤ 2×.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use orkestra_runtime::aggregate::Aggregate;
use orkestra_runtime::{
    Bus, Command, CommandEnvelope, CommandStatus, EventData, ExpectedVersion, Metadata, SecretUrl,
    Snapshot, Store,
};
use orkestra_tests::aggregates::bank::aggregates::{self, AccountRepository, AccountState};
use orkestra_tests::aggregates::bank::commands::Deposit;
use orkestra_tests::aggregates::bank::events::{AccountOpened, MoneyDeposited};
use serde_json::json;

mod bank_handlers;
use bank_handlers::{Bank, runtime};

const ACCOUNTS: usize = 200;
const HISTORY: i64 = 50;

fn pg_url() -> String {
    std::env::var("ORKESTRA_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn deposit_data(account: &str, amount: i64) -> EventData {
    EventData {
        id: orkestra_runtime::new_id(),
        event_type: MoneyDeposited::TYPE_NAME.into(),
        schema_version: 1,
        topic: Some(MoneyDeposited::TOPIC.into()),
        tags: Vec::new(),
        data: json!({ "account_id": account, "amount": amount }),
        metadata: Metadata::new(),
    }
}

fn opened_data(account: &str) -> EventData {
    EventData {
        id: orkestra_runtime::new_id(),
        event_type: AccountOpened::TYPE_NAME.into(),
        schema_version: 1,
        topic: Some(AccountOpened::TOPIC.into()),
        tags: Vec::new(),
        data: json!({ "account_id": account, "owner": "ada", "currency": "eur" }),
        metadata: Metadata::new(),
    }
}

/// A stream of `len` events: an opening, then deposits.
async fn fill(store: &Store, stream: &str, account: &str, len: i64) {
    let mut expected = ExpectedVersion::NoStream;
    let mut events = vec![opened_data(account)];
    events.extend((1..len).map(|i| deposit_data(account, i)));
    for chunk in events.chunks(1000) {
        let done = store
            .append(stream, expected, chunk.to_vec())
            .await
            .unwrap();
        expected = ExpectedVersion::Exact(done.last_version);
    }
}

const RAW_TABLE: &str = "
DROP TABLE IF EXISTS orkestra_bench_accounts;
CREATE TABLE orkestra_bench_accounts (
    stream TEXT NOT NULL, version BIGINT NOT NULL, id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL, data JSONB NOT NULL, metadata JSONB NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (stream, version))";

/// One deposit by hand: BEGIN, SELECT the stream, fold, INSERT at the next version (the
/// primary key refuses a concurrent writer), COMMIT.
async fn raw_deposit(
    client: &mut tokio_postgres::Client,
    select: &tokio_postgres::Statement,
    insert: &tokio_postgres::Statement,
    stream: &str,
    account: &str,
) {
    let tx = client.transaction().await.unwrap();
    let rows = tx.query(select, &[&stream]).await.unwrap();
    let mut state = AccountState::default();
    let mut version: i64 = -1;
    for row in &rows {
        version = row.get(0);
        let event_type: &str = row.get(1);
        let data: serde_json::Value = row.get(2);
        match event_type {
            t if t == AccountOpened::TYPE_NAME => state.open = true,
            t if t == MoneyDeposited::TYPE_NAME => {
                let e: MoneyDeposited = serde_json::from_value(data).unwrap();
                state.balance += e.amount;
            }
            _ => {}
        }
    }
    assert!(state.open);
    let event = serde_json::to_value(MoneyDeposited {
        account_id: account.to_owned(),
        amount: 5,
    })
    .unwrap();
    let metadata = serde_json::to_value(Metadata::new()).unwrap();
    tx.execute(
        insert,
        &[
            &stream,
            &(version + 1),
            &orkestra_runtime::new_id(),
            &MoneyDeposited::TYPE_NAME,
            &event,
            &metadata,
        ],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

async fn raw_client() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

fn command_through_the_handler(c: &mut Criterion) {
    let rt = runtime();
    let store = match rt.block_on(Store::postgres(&SecretUrl::new(pg_url()))) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("SKIPPED aggregate benches on PostgreSQL: {e}");
            return;
        }
    };
    let run = uuid::Uuid::new_v4().simple().to_string();
    let accounts: Vec<String> = (0..ACCOUNTS).map(|i| format!("{run}-{i}")).collect();
    let bus = rt.block_on(async {
        let bus = Bus::in_process();
        bus.subscribe_all(aggregates::account(Bank, store.clone()))
            .await
            .unwrap();
        for account in &accounts {
            fill(&store, &format!("account-{account}"), account, HISTORY).await;
        }
        let mut client = raw_client().await;
        client.batch_execute(RAW_TABLE).await.unwrap();
        let tx = client.transaction().await.unwrap();
        for account in &accounts {
            for (version, e) in std::iter::once(opened_data(account))
                .chain((1..HISTORY).map(|i| deposit_data(account, i)))
                .enumerate()
            {
                tx.execute(
                    "INSERT INTO orkestra_bench_accounts (stream, version, id, event_type, data, metadata) VALUES ($1, $2, $3, $4, $5, $6)",
                    &[&format!("account-{account}"), &(version as i64), &e.id, &e.event_type, &e.data, &serde_json::to_value(&e.metadata).unwrap()],
                )
                .await
                .unwrap();
            }
        }
        tx.commit().await.unwrap();
        bus
    });

    let mut group = c.benchmark_group("aggregate_pg");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("orkestra", |b| {
        let mut next = 0usize;
        b.iter_custom(|iters| {
            let bus = bus.clone();
            let accounts = accounts.clone();
            let first = next;
            next += iters as usize;
            rt.block_on(rt.spawn(async move {
                let start = Instant::now();
                for i in 0..iters as usize {
                    let account = &accounts[(first + i) % ACCOUNTS];
                    let command = Command::new(
                        Deposit {
                            account_id: account.clone(),
                            amount: 5,
                        },
                        Metadata::new(),
                    )
                    .unwrap();
                    let receipt = bus.dispatch(CommandEnvelope::wrap(command)).await.unwrap();
                    assert_eq!(
                        receipt.status(),
                        CommandStatus::Succeeded,
                        "{:?}",
                        receipt.error()
                    );
                    black_box(receipt);
                }
                start.elapsed()
            }))
            .unwrap()
        })
    });
    group.bench_function("raw_tokio_postgres", |b| {
        let mut next = 0usize;
        b.iter_custom(|iters| {
            let accounts = accounts.clone();
            let first = next;
            next += iters as usize;
            rt.block_on(rt.spawn(async move {
                let mut client = raw_client().await;
                let select = client
                    .prepare("SELECT version, event_type, data FROM orkestra_bench_accounts WHERE stream = $1 ORDER BY version")
                    .await
                    .unwrap();
                let insert = client
                    .prepare("INSERT INTO orkestra_bench_accounts (stream, version, id, event_type, data, metadata) VALUES ($1, $2, $3, $4, $5, $6)")
                    .await
                    .unwrap();
                let start = Instant::now();
                for i in 0..iters as usize {
                    let account = &accounts[(first + i) % ACCOUNTS];
                    raw_deposit(&mut client, &select, &insert, &format!("account-{account}"), account)
                        .await;
                }
                start.elapsed()
            }))
            .unwrap()
        })
    });
    group.finish();
}

fn load_with_snapshots(c: &mut Criterion) {
    let rt = runtime();
    let sqlite =
        std::env::temp_dir().join(format!("orkestra-bench-load-{}.db", uuid::Uuid::new_v4()));
    let mut stores = vec![("sqlite", rt.block_on(Store::sqlite(&sqlite)).unwrap())];
    match rt.block_on(Store::postgres(&SecretUrl::new(pg_url()))) {
        Ok(store) => stores.push(("postgres", store)),
        Err(e) => eprintln!("SKIPPED the PostgreSQL load bench: {e}"),
    }
    for (name, store) in stores {
        let run = uuid::Uuid::new_v4().simple().to_string();
        let short = format!("account-short-{run}");
        let long = format!("account-long-{run}");
        let repo = AccountRepository::<Bank>::new(store.clone());
        rt.block_on(async {
            fill(&store, &short, &run, 100).await;
            fill(&store, &long, &run, 10_000).await;
            // The snapshot `snapshot_every: 100` would have left 99 events behind the head.
            let (state, _) = repo.replay(&long).await.unwrap();
            let mut at_9900 = state.clone();
            at_9900.balance -= (9_901..10_000).sum::<i64>();
            store
                .save_snapshot(Snapshot {
                    stream: long.clone(),
                    version: 9_900,
                    shape: <aggregates::AccountAggregate<Bank> as Aggregate>::SHAPE.to_owned(),
                    state: serde_json::to_string(&at_9900).unwrap(),
                })
                .await
                .unwrap();
            assert_eq!(repo.load(&long).await.unwrap(), (state, Some(9_999)));
        });
        let mut group = c.benchmark_group(format!("aggregate_load_{name}"));
        group
            .sample_size(30)
            .measurement_time(Duration::from_secs(5));
        for (label, stream) in [("events_100", &short), ("events_10000_snapshot", &long)] {
            group.bench_function(label, |b| {
                b.iter(|| rt.block_on(repo.load(stream)).unwrap())
            });
        }
        group.finish();
    }
    let _ = std::fs::remove_file(&sqlite);
}

criterion_group!(benches, command_through_the_handler, load_with_snapshots);
criterion_main!(benches);
