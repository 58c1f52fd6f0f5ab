//! Projections generated from `orkestra-gen/tests/golden/projections/ledger.yaml`
//! (`book/src/projections.md`), run from the store: the generated traits, enums and binding
//! fns with their `batch` and `max_retries`, on memory and with a PostgreSQL read model
//! written in the checkpoint's transaction.

#[path = "../orkestra-runtime/tests/support/services.rs"]
#[allow(dead_code)]
mod services;

#[path = "../orkestra-runtime/tests/support/databases.rs"]
#[allow(dead_code)]
mod databases;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orkestra_runtime::projection::{ProjectionContext, ProjectionState, Projections};
use orkestra_runtime::{Event, EventData, ExpectedVersion, HandlerError, Metadata, Store};
use orkestra_tests::projections::ledger::events::{Closed, Credited, Debited};
use orkestra_tests::projections::ledger::projections::{
    self, Balances, BalancesEvent, CreditCount, LedgerAudit, LedgerAuditEvent,
};

fn data<D: orkestra_runtime::EventPayload>(payload: D) -> EventData {
    EventData::from_event(&Event::new(payload, Metadata::new()).unwrap()).unwrap()
}

fn credited(account: &str, amount: i64) -> EventData {
    data(Credited {
        account_id: account.into(),
        amount,
    })
}

fn debited(account: &str, amount: i64) -> EventData {
    data(Debited {
        account_id: account.into(),
        amount,
    })
}

fn closed(account: &str) -> EventData {
    data(Closed {
        account_id: account.into(),
    })
}

#[derive(Clone, Default)]
struct Memory {
    balances: Arc<Mutex<BTreeMap<String, i64>>>,
    credits: Arc<Mutex<u32>>,
    audit: Arc<Mutex<Vec<String>>>,
}

impl Balances for Memory {
    async fn handle_event(
        &self,
        event: BalancesEvent,
        _ctx: ProjectionContext<'_>,
    ) -> Result<(), HandlerError> {
        let mut balances = self.balances.lock().unwrap();
        match event {
            BalancesEvent::Credited(e) => {
                *balances.entry(e.data.account_id).or_default() += e.data.amount
            }
            BalancesEvent::Debited(e) => {
                *balances.entry(e.data.account_id).or_default() -= e.data.amount
            }
            BalancesEvent::Closed(e) => {
                balances.remove(&e.data.account_id);
            }
        }
        Ok(())
    }
}

impl CreditCount for Memory {
    async fn handle_event(
        &self,
        _event: Event<Credited>,
        _ctx: ProjectionContext<'_>,
    ) -> Result<(), HandlerError> {
        *self.credits.lock().unwrap() += 1;
        Ok(())
    }
}

impl LedgerAudit for Memory {
    async fn handle_event(
        &self,
        event: LedgerAuditEvent,
        _ctx: ProjectionContext<'_>,
    ) -> Result<(), HandlerError> {
        let line = match event {
            LedgerAuditEvent::Credited(e) => format!("credited {}", e.data.amount),
            LedgerAuditEvent::Debited(e) => format!("debited {}", e.data.amount),
            LedgerAuditEvent::Other(e) => format!("other {}", e.event_type),
        };
        self.audit.lock().unwrap().push(line);
        Ok(())
    }
}

#[test]
fn the_bindings_carry_the_schema_settings() {
    let m = Memory::default();
    let balances = projections::balances(m.clone());
    assert_eq!(balances.name(), "Balances");
    assert_eq!(balances.partitions(), 4, "`partitions: 4` in the schema");
    assert_eq!(
        projections::credit_count(m.clone()).partitions(),
        1,
        "1 when the schema says nothing"
    );
    let text = format!("{:?}", projections::credit_count(m.clone()));
    assert!(
        text.contains("max_retries: 5") && text.contains("checkpoint: \"none\""),
        "{text}"
    );
    let text = format!("{:?}", projections::ledger_audit(m));
    assert!(
        text.contains("batch: 100") && text.contains("max_retries: 0"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_projections_fold_the_store_on_memory() {
    let store = Store::memory();
    let m = Memory::default();
    store
        .append(
            "account-a",
            ExpectedVersion::NoStream,
            vec![credited("a", 10), debited("a", 3)],
        )
        .await
        .unwrap();
    let running = Projections::new(store.clone())
        .add(projections::balances(m.clone()))
        .add(projections::credit_count(m.clone()))
        .add(projections::ledger_audit(m.clone()))
        .start()
        .await
        .unwrap();
    let last = store
        .append(
            "account-b",
            ExpectedVersion::NoStream,
            vec![credited("b", 7), closed("a")],
        )
        .await
        .unwrap()
        .last_position;
    for name in ["Balances", "CreditCount", "LedgerAudit"] {
        running.wait_for(name, last).await.unwrap();
    }
    assert_eq!(
        *m.balances.lock().unwrap(),
        BTreeMap::from([("b".to_owned(), 7)])
    );
    assert_eq!(*m.credits.lock().unwrap(), 2);
    // The topic pattern `ledger.events.#` leaves out `Closed` (its own topic).
    assert_eq!(
        *m.audit.lock().unwrap(),
        vec!["credited 10", "debited 3", "credited 7"]
    );
    assert!(
        running
            .status()
            .iter()
            .all(|s| s.checkpoint == Some(last) && s.lag == 0),
        "{:?}",
        running.status()
    );
    running.stop().await.unwrap();
}

/// An event a newer release wrote (a type this build does not know) on a topic the
/// `ledger.events.#` projection is bound to reaches it as `Other(RawEvent)`, as it would
/// reach a handler bound to the same pattern on the bus; one off the pattern does not.
async fn unknown_types_on_a_bound_topic_arrive_as_other(store: Store, shared: bool) {
    let m = Memory::default();
    let account = format!("other-{}", uuid::Uuid::new_v4().simple());
    let name = "LedgerAudit";
    if let Some(h) = store.head().await.unwrap() {
        store.save_checkpoint(name, Some(h)).await.unwrap();
    }
    let newer = |event_type: &str, topic: &str| EventData {
        id: uuid::Uuid::new_v4().to_string(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        data: serde_json::json!({ "account_id": account, "amount": 5 }),
        metadata: Metadata::new(),
        topic: Some(topic.to_owned()),
        tags: Vec::new(),
    };
    let running = Projections::new(store.clone())
        .add(projections::ledger_audit(m.clone()))
        .start()
        .await
        .unwrap();
    let last = store
        .append(
            &format!("account-{}", uuid::Uuid::new_v4().simple()),
            ExpectedVersion::NoStream,
            if shared {
                // Another test folds every credit of the shared database: none here.
                vec![
                    newer("Ledger.Events.Refunded", "ledger.events.refunded"),
                    newer("Ledger.Lifecycle.Frozen", "ledger.lifecycle.frozen"),
                ]
            } else {
                vec![
                    credited(&account, 1),
                    newer("Ledger.Events.Refunded", "ledger.events.refunded"),
                    newer("Ledger.Lifecycle.Frozen", "ledger.lifecycle.frozen"),
                    debited(&account, 1),
                ]
            },
        )
        .await
        .unwrap()
        .last_position;
    running.wait_for(name, last).await.unwrap();
    running.stop().await.unwrap();
    let audit = m.audit.lock().unwrap().clone();
    let want = ["credited 1", "other Ledger.Events.Refunded", "debited 1"];
    if shared {
        // Other tests append to the shared database meanwhile: ours is in there, and
        // the event off the pattern is not.
        assert!(audit.iter().any(|l| l == want[1]), "{audit:?}");
        assert!(!audit.iter().any(|l| l.contains("Frozen")), "{audit:?}");
    } else {
        assert_eq!(audit, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_types_on_a_bound_topic_arrive_as_other_on_memory() {
    unknown_types_on_a_bound_topic_arrive_as_other(Store::memory(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_types_on_a_bound_topic_arrive_as_other_on_postgres() {
    let Some(store) = services::postgres_store().await else {
        return;
    };
    unknown_types_on_a_bound_topic_arrive_as_other(store, true).await;
}

/// Balances as a PostgreSQL table, written in the transaction that advances the
/// checkpoint.
#[derive(Clone)]
struct Postgres {
    table: String,
}

impl Balances for Postgres {
    async fn handle_event(
        &self,
        event: BalancesEvent,
        ctx: ProjectionContext<'_>,
    ) -> Result<(), HandlerError> {
        let tx = ctx
            .postgres()
            .ok_or_else(|| HandlerError::reject("a PostgreSQL read model"))?;
        let (account, delta) = match &event {
            BalancesEvent::Credited(e) => (&e.data.account_id, e.data.amount),
            BalancesEvent::Debited(e) => (&e.data.account_id, -e.data.amount),
            BalancesEvent::Closed(e) => {
                tx.execute(
                    &format!("DELETE FROM {} WHERE account_id = $1", self.table),
                    &[&e.data.account_id],
                )
                .await
                .map_err(HandlerError::fail)?;
                return Ok(());
            }
        };
        tx.execute(
            &format!(
                "INSERT INTO {0} (account_id, balance) VALUES ($1, $2) \
                 ON CONFLICT (account_id) DO UPDATE SET balance = {0}.balance + excluded.balance",
                self.table
            ),
            &[account, &delta],
        )
        .await
        .map_err(HandlerError::fail)?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_projection_writes_a_postgres_read_model_exactly_once() {
    // A database of its own: a projection's checkpoint and partition count are stored
    // under its name, and `Balances` is also the name of the example's projection (one
    // partition; this one has four).
    let database = match databases::FreshDatabase::create("projections").await {
        Ok(database) => database,
        Err(e) => return services::unavailable("PostgreSQL", &e),
    };
    let store = Store::postgres(&database.url()).await.unwrap();
    let pg = database.client().await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let table = format!("balances_{suffix}");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (account_id TEXT PRIMARY KEY, balance BIGINT NOT NULL)"
    ))
    .await
    .unwrap();
    let (a, b) = (format!("a-{suffix}"), format!("b-{suffix}"));
    let mut last = 0;
    for i in 0..50 {
        last = store
            .append(
                &format!("account-{a}"),
                if i == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Any
                },
                vec![credited(&a, 2), debited(&a, 1), credited(&b, 1)],
            )
            .await
            .unwrap()
            .last_position;
    }
    let running = Projections::new(store.clone())
        .add(projections::balances(Postgres {
            table: table.clone(),
        }))
        .start()
        .await
        .unwrap();
    running.wait_for("Balances", last).await.unwrap();
    Projections::wait_until(&store, "Balances", last, Duration::from_secs(10))
        .await
        .unwrap();
    let status = running.status();
    assert!(
        matches!(
            status[0].state,
            ProjectionState::Live | ProjectionState::CatchingUp
        ),
        "{status:?}"
    );
    running.stop().await.unwrap();
    let rows = pg
        .query(
            &format!("SELECT account_id, balance FROM {table} ORDER BY account_id"),
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![(a, 50), (b, 50)]);
    pg.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}
