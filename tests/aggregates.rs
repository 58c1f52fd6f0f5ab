//! Aggregates generated from `orkestra-gen/tests/golden/aggregates/bank.yaml`
//! (`book/src/aggregates.md`), driven through the in-process bus on every store that runs
//! here: racing writers, snapshots, redelivery, rejections, panics and unreadable streams.

#[path = "../orkestra-runtime/tests/support/services.rs"]
#[allow(dead_code)]
mod services;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orkestra_runtime::aggregate::{Aggregate, Repository};
use orkestra_runtime::{
    ActorType, Bus, Command, CommandEnvelope, CommandPayload, CommandStatus, EventData,
    ExpectedVersion, HandlerContext, HandlerError, Metadata, Snapshot, Store, StoreError, new_id,
};
use orkestra_tests::aggregates::bank::aggregates::{
    self, Account, AccountEvent, AccountRepository, AccountState, AccountTest, Counter,
    CounterEvent, CounterState,
};
use orkestra_tests::aggregates::bank::commands::{Deposit, OpenAccount, Tick, Withdraw};
use orkestra_tests::aggregates::bank::events::{
    AccountOpened, MoneyDeposited, MoneyWithdrawn, Ticked,
};
use orkestra_tests::aggregates::bank::types::Currency;
use serde_json::json;

/// The account as a user writes it. An owner named "panic" makes `open_account` panic.
struct Bank;

impl Account for Bank {
    fn apply(state: &mut AccountState, event: &AccountEvent) {
        match event {
            AccountEvent::AccountOpened(e) => {
                state.open = true;
                state.owner = Some(e.owner.clone());
                state.currency = e.currency;
            }
            AccountEvent::MoneyDeposited(e) => state.balance += e.amount,
            AccountEvent::MoneyWithdrawn(e) => state.balance -= e.amount,
        }
    }

    async fn open_account(
        &self,
        state: &AccountState,
        command: &Command<OpenAccount>,
    ) -> Result<Vec<AccountEvent>, HandlerError> {
        if command.owner == "panic" {
            panic!("decide blew up");
        }
        if state.open {
            return Err(HandlerError::reject("the account is already open"));
        }
        Ok(vec![AccountEvent::AccountOpened(AccountOpened {
            account_id: command.account_id.clone(),
            owner: command.owner.clone(),
            currency: command.currency,
        })])
    }

    async fn deposit(
        &self,
        state: &AccountState,
        command: &Command<Deposit>,
    ) -> Result<Vec<AccountEvent>, HandlerError> {
        if !state.open {
            return Err(HandlerError::reject("the account is not open"));
        }
        Ok(vec![AccountEvent::MoneyDeposited(MoneyDeposited {
            account_id: command.account_id.clone(),
            amount: command.amount,
        })])
    }

    async fn withdraw(
        &self,
        state: &AccountState,
        command: &Command<Withdraw>,
    ) -> Result<Vec<AccountEvent>, HandlerError> {
        if state.balance < command.amount {
            return Err(HandlerError::reject(format!(
                "balance {} is below {}",
                state.balance, command.amount
            )));
        }
        Ok(vec![AccountEvent::MoneyWithdrawn(MoneyWithdrawn {
            account_id: command.account_id.clone(),
            amount: command.amount,
        })])
    }
}

/// A counter that appends nothing for even ticks.
struct Ticks;

impl Counter for Ticks {
    fn apply(_: &mut CounterState, _: &CounterEvent) {}

    async fn tick(
        &self,
        _: &CounterState,
        command: &Command<Tick>,
    ) -> Result<Vec<CounterEvent>, HandlerError> {
        Ok(if command.counter % 2 == 0 {
            Vec::new()
        } else {
            vec![CounterEvent::Ticked(Ticked {
                counter: command.counter,
            })]
        })
    }
}

fn command<P: CommandPayload>(params: P) -> Command<P> {
    Command::new(params, Metadata::new()).unwrap()
}

fn open(account: &str) -> Command<OpenAccount> {
    command(OpenAccount {
        account_id: account.into(),
        owner: "ada".into(),
        currency: Currency::Usd,
    })
}

fn deposit(account: &str, amount: i64) -> Command<Deposit> {
    command(Deposit {
        account_id: account.into(),
        amount,
    })
}

/// Counts every event published on the bus by id.
#[derive(Clone, Default)]
struct Published(Arc<Mutex<HashMap<String, u32>>>);

impl Published {
    async fn subscribe(&self, bus: &Bus) {
        let seen = self.0.clone();
        bus.subscribe(orkestra_runtime::Subscription::events::<
            orkestra_runtime::Event<MoneyDeposited>,
            _,
            _,
        >(
            "CountDeposits",
            move |event, _ctx: HandlerContext| {
                let seen = seen.clone();
                async move {
                    *seen.lock().unwrap().entry(event.id.clone()).or_default() += 1;
                    Ok(())
                }
            },
        ))
        .await
        .unwrap();
        let seen = self.0.clone();
        bus.subscribe(orkestra_runtime::Subscription::events::<
            orkestra_runtime::Event<AccountOpened>,
            _,
            _,
        >(
            "CountOpenings",
            move |event, _ctx: HandlerContext| {
                let seen = seen.clone();
                async move {
                    *seen.lock().unwrap().entry(event.id.clone()).or_default() += 1;
                    Ok(())
                }
            },
        ))
        .await
        .unwrap();
    }

    fn counts(&self) -> HashMap<String, u32> {
        self.0.lock().unwrap().clone()
    }
}

async fn stores() -> Vec<(&'static str, Store)> {
    let mut stores = vec![("memory", Store::memory())];
    let path = std::env::temp_dir().join(format!("orkestra-aggregates-{}.db", new_id()));
    stores.push(("sqlite", Store::sqlite(&path).await.unwrap()));
    if let Some(store) = services::postgres_store().await {
        stores.push(("postgres", store));
    }
    stores
}

async fn bank_bus(store: &Store) -> Bus {
    let bus = Bus::in_process();
    bus.subscribe_all(aggregates::account(Bank, store.clone()))
        .await
        .unwrap();
    bus
}

/// 8 tasks × 10 deposits race on one account, through two buses over the same store
/// (two processes: their commands race for real, and lose to each other): every command
/// succeeds, the stream holds versions 0..=80 exactly, the balance is exact and every
/// event is published once.
async fn racing_deposits(name: &str, store: Store) {
    let buses = [bank_bus(&store).await, bank_bus(&store).await];
    let published = Published::default();
    for bus in &buses {
        published.subscribe(bus).await;
    }
    let account = format!("race-{}", new_id());
    let receipt = buses[0]
        .dispatch(CommandEnvelope::wrap(open(&account)))
        .await
        .unwrap();
    assert_eq!(
        receipt.status(),
        CommandStatus::Succeeded,
        "{name}: {:?}",
        receipt.error()
    );
    let mut tasks = Vec::new();
    for task in 0..8 {
        let bus = buses[task as usize % 2].clone();
        let account = account.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let receipt = bus
                    .dispatch(CommandEnvelope::wrap(deposit(&account, task * 10 + i + 1)))
                    .await
                    .unwrap();
                assert_eq!(
                    receipt.status(),
                    CommandStatus::Succeeded,
                    "deposit {task}/{i}, attempt {}: {:?}",
                    receipt.attempts(),
                    receipt.error()
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stream = format!("account-{account}");
    let events = store.read_stream(&stream, 0, 1000).await.unwrap();
    let versions: Vec<u64> = events.iter().map(|e| e.version()).collect();
    assert_eq!(versions, (0..=80).collect::<Vec<u64>>(), "{name}");
    let (state, version) = AccountRepository::<Bank>::new(store.clone())
        .load(&stream)
        .await
        .unwrap();
    assert_eq!(version, Some(80), "{name}");
    assert_eq!(state.balance, (1..=80).sum::<i64>(), "{name}");
    assert!(state.open);
    assert_eq!(state.owner.as_deref(), Some("ada"));
    let counts = published.counts();
    for e in &events {
        assert_eq!(
            counts.get(e.id()),
            Some(&1),
            "{name}: event {} published once",
            e.version()
        );
    }
    assert_eq!(counts.len(), 81, "{name}: nothing else was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_on_memory() {
    racing_deposits("memory", Store::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_on_sqlite() {
    let path = std::env::temp_dir().join(format!("orkestra-aggregates-{}.db", new_id()));
    racing_deposits("sqlite", Store::sqlite(&path).await.unwrap()).await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_on_postgres() {
    if let Some(store) = services::postgres_store().await {
        racing_deposits("postgres", store).await;
    }
}

/// A stream of 10,000 events with `snapshot_every: 100`: the load from the snapshot
/// equals the full replay, and reads only the tail.
async fn snapshot_equals_replay(name: &str, store: Store) {
    let account = format!("long-{}", new_id());
    let stream = format!("account-{account}");
    let repo = AccountRepository::<Bank>::new(store.clone());
    repo.execute(&stream, &open(&account), None, &Bank, |a, s, c| {
        Box::pin(a.open_account(s, c))
    })
    .await
    .unwrap();
    // 9,989 deposits in bulk, then 20 through the aggregate (crossing 10,000).
    let mut version = 0;
    for chunk in (1..=9_989i64).collect::<Vec<_>>().chunks(1000) {
        let batch = chunk
            .iter()
            .map(|&amount| EventData {
                id: new_id(),
                event_type: MoneyDeposited::TYPE_NAME.into(),
                schema_version: 1,
                data: json!({ "account_id": account, "amount": amount }),
                metadata: Metadata::new(),
                topic: None,
                tags: Vec::new(),
            })
            .collect();
        let appended = store
            .append(&stream, ExpectedVersion::Exact(version), batch)
            .await
            .unwrap();
        version = appended.last_version;
    }
    assert_eq!(store.load_snapshot(&stream).await.unwrap(), None, "{name}");
    for amount in 1..=20 {
        let done = repo
            .execute(
                &stream,
                &deposit(&account, amount),
                None,
                &Bank,
                |a, s, c| Box::pin(a.deposit(s, c)),
            )
            .await
            .unwrap();
        assert_eq!(done.version, Some(9_989 + amount as u64), "{name}");
    }
    let snapshot = store
        .load_snapshot(&stream)
        .await
        .unwrap()
        .expect("a snapshot");
    assert_eq!(
        snapshot.version, 9_999,
        "{name}: taken when the length crossed 10,000"
    );
    let loaded = repo.load(&stream).await.unwrap();
    let replayed = repo.replay(&stream).await.unwrap();
    assert_eq!(loaded, replayed, "{name}");
    assert_eq!(loaded.1, Some(10_009));
    assert_eq!(
        loaded.0.balance,
        (1..=9_989i64).sum::<i64>() + (1..=20i64).sum::<i64>()
    );

    // Another state shape, then an unreadable state: both ignored, both replayed.
    for (shape, state) in [
        (
            "fnv1a64:0000000000000000",
            serde_json::to_string(&loaded.0).unwrap(),
        ),
        (
            snapshot.shape.as_str(),
            "{\"balance\": \"lots\"}".to_owned(),
        ),
    ] {
        store
            .save_snapshot(Snapshot {
                stream: stream.clone(),
                version: 10_009,
                shape: shape.to_owned(),
                state,
            })
            .await
            .unwrap();
        assert_eq!(
            repo.load(&stream).await.unwrap(),
            replayed,
            "{name}: {shape}"
        );
    }
}

#[tokio::test]
async fn snapshots_load_what_a_replay_loads_on_every_store() {
    for (name, store) in stores().await {
        snapshot_equals_replay(name, store).await;
    }
}

#[tokio::test]
async fn events_are_caused_by_the_command_and_replied() {
    let store = Store::memory();
    let bus = bank_bus(&store).await;
    let account = new_id();
    let metadata = Metadata::new()
        .with_actor("clerk-7", ActorType::User)
        .with_source("teller")
        .with_correlation_id("corr-42");
    let cmd = Command::new(
        OpenAccount {
            account_id: account.clone(),
            owner: "ada".into(),
            currency: Currency::Eur,
        },
        metadata,
    )
    .unwrap();
    let cmd_id = cmd.id.clone();
    let receipt = bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    assert_eq!(receipt.status(), CommandStatus::Succeeded);
    let stream = format!("account-{account}");
    let events = store.read_stream(&stream, 0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    let m = events[0].metadata();
    assert_eq!(m.correlation_id, "corr-42");
    assert_eq!(m.causation_id.as_deref(), Some(cmd_id.as_str()));
    assert_eq!(m.actor_id.as_deref(), Some("clerk-7"));
    assert_eq!(m.actor_type, ActorType::User);
    assert_eq!(m.source.as_deref(), Some("teller"));
    assert_eq!(
        receipt.reply(),
        Some(&json!({ "stream": stream, "version": 0, "position": events[0].position() }))
    );

    // A rejection appends nothing; the reply of a decision without events is null.
    let receipt = bus
        .dispatch(CommandEnvelope::wrap(open(&account)))
        .await
        .unwrap();
    assert_eq!(receipt.status(), CommandStatus::Rejected);
    assert_eq!(receipt.error(), Some("the account is already open"));
    let withdraw = command(Withdraw {
        account_id: account.clone(),
        amount: 5,
    });
    let receipt = bus.dispatch(CommandEnvelope::wrap(withdraw)).await.unwrap();
    assert_eq!(receipt.status(), CommandStatus::Rejected);
    assert_eq!(store.read_stream(&stream, 0, 10).await.unwrap().len(), 1);

    let ticks = Bus::in_process();
    ticks
        .subscribe_all(aggregates::counter(Ticks, store.clone()))
        .await
        .unwrap();
    let receipt = ticks
        .dispatch(CommandEnvelope::wrap(command(Tick { counter: 2 })))
        .await
        .unwrap();
    assert_eq!(
        receipt.reply(),
        Some(&json!({ "stream": "counter-2", "version": null, "position": null }))
    );
}

#[tokio::test]
async fn a_redelivered_command_is_not_decided_twice() {
    for (name, store) in stores().await {
        let account = new_id();
        let stream = format!("account-{account}");
        let repo = AccountRepository::<Bank>::new(store.clone());
        repo.execute(&stream, &open(&account), None, &Bank, |a, s, c| {
            Box::pin(a.open_account(s, c))
        })
        .await
        .unwrap();
        let cmd = deposit(&account, 7);
        let first = repo
            .execute(&stream, &cmd, None, &Bank, |a, s, c| {
                Box::pin(a.deposit(s, c))
            })
            .await
            .unwrap();
        // Another writer appends; then the same command arrives again.
        repo.execute(&stream, &deposit(&account, 1), None, &Bank, |a, s, c| {
            Box::pin(a.deposit(s, c))
        })
        .await
        .unwrap();
        let again = repo
            .execute(&stream, &cmd, None, &Bank, |a, s, c| {
                Box::pin(a.deposit(s, c))
            })
            .await
            .unwrap();
        assert_eq!(
            first, again,
            "{name}: the first outcome, not a second deposit"
        );
        let (state, version) = repo.load(&stream).await.unwrap();
        assert_eq!((state.balance, version), (8, Some(2)), "{name}");
    }
}

#[tokio::test]
async fn a_redelivery_hidden_by_a_snapshot_is_refused_by_the_event_ids() {
    let store = Store::memory();
    let account = new_id();
    let stream = format!("account-{account}");
    let repo = AccountRepository::<Bank>::new(store.clone());
    repo.execute(&stream, &open(&account), None, &Bank, |a, s, c| {
        Box::pin(a.open_account(s, c))
    })
    .await
    .unwrap();
    let cmd = deposit(&account, 7);
    let first = repo
        .execute(&stream, &cmd, None, &Bank, |a, s, c| {
            Box::pin(a.deposit(s, c))
        })
        .await
        .unwrap();
    // A snapshot that covers the deposit: the tail no longer shows it.
    let (state, _) = repo.load(&stream).await.unwrap();
    store
        .save_snapshot(Snapshot {
            stream: stream.clone(),
            version: 1,
            shape: <aggregates::AccountAggregate<Bank> as Aggregate>::SHAPE.to_owned(),
            state: serde_json::to_string(&state).unwrap(),
        })
        .await
        .unwrap();
    let again = repo
        .execute(&stream, &cmd, None, &Bank, |a, s, c| {
            Box::pin(a.deposit(s, c))
        })
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(repo.replay(&stream).await.unwrap().0.balance, 7);
}

/// The bank's account with a snapshot after every event: each command's own events are
/// behind the snapshot it leaves.
struct SnapshotEveryEvent;

impl Aggregate for SnapshotEveryEvent {
    const NAME: &'static str = "Account";
    const SHAPE: &'static str = <aggregates::AccountAggregate<Bank> as Aggregate>::SHAPE;
    const SNAPSHOT_EVERY: Option<u64> = Some(1);
    const CONFLICT_RETRIES: u32 = 5;
    type State = AccountState;
    type Event = AccountEvent;
    fn apply(state: &mut AccountState, event: &AccountEvent) {
        <aggregates::AccountAggregate<Bank> as Aggregate>::apply(state, event)
    }
}

/// A command whose events were stored and snapshotted, then delivered again (its process
/// died before publishing and acknowledging, or publishing failed), is recognised, not
/// decided on the state that already holds its effect (where `open_account` refuses
/// "already open"), and its stored events are published: on every store.
#[tokio::test]
async fn a_redelivery_behind_its_own_snapshot_is_recognised_and_published() {
    for (name, store) in stores().await {
        let bus = Bus::in_process();
        let published = Published::default();
        published.subscribe(&bus).await;
        let account = new_id();
        let stream = format!("account-{account}");
        let repo = Repository::<SnapshotEveryEvent>::new(store.clone());
        let cmd = open(&account);
        // The first delivery stores the event and its snapshot, then "dies": no publish.
        let first = repo
            .execute(&stream, &cmd, None, &Bank, |a, s, c| {
                Box::pin(a.open_account(s, c))
            })
            .await
            .unwrap();
        assert_eq!(
            store
                .load_snapshot(&stream)
                .await
                .unwrap()
                .map(|s| s.version),
            Some(0),
            "{name}: the snapshot covers the command's event"
        );
        assert!(published.counts().is_empty(), "{name}");
        let again = repo
            .execute(&stream, &cmd, Some(&bus), &Bank, |a, s, c| {
                Box::pin(a.open_account(s, c))
            })
            .await;
        assert_eq!(again.as_ref().ok(), Some(&first), "{name}: {again:?}");
        let opened = store.read_stream(&stream, 0, 10).await.unwrap();
        assert_eq!(opened.len(), 1, "{name}");
        assert_eq!(
            published.counts(),
            HashMap::from([(opened[0].id().to_owned(), 1)]),
            "{name}: the stored event is published by the redelivery"
        );
        // Through a bus as well: the same command id dispatched again.
        let bus_with_account = Bus::in_process();
        bus_with_account
            .subscribe_all(vec![orkestra_runtime::aggregate::command_subscription(
                "OpenAccount",
                Arc::new(Bank),
                repo.clone(),
                |c: &Command<OpenAccount>| Ok(format!("account-{}", c.account_id)),
                |a, s, c| Box::pin(a.open_account(s, c)),
            )])
            .await
            .unwrap();
        let receipt = bus_with_account
            .dispatch(CommandEnvelope::wrap(cmd.clone()))
            .await
            .unwrap();
        assert_eq!(
            receipt.status(),
            CommandStatus::Succeeded,
            "{name}: {:?}",
            receipt.error()
        );
        assert_eq!(receipt.reply(), Some(&first.reply()), "{name}");
    }
}

/// A command delivered again after a later command ran (and snapshotted): deciding again
/// refuses (the balance is spent), yet the command had succeeded, so its first outcome
/// stands and nothing is appended.
#[tokio::test]
async fn a_redelivery_behind_a_later_snapshot_keeps_its_first_outcome() {
    for (name, store) in stores().await {
        let account = new_id();
        let stream = format!("account-{account}");
        let repo = Repository::<SnapshotEveryEvent>::new(store.clone());
        repo.execute(&stream, &open(&account), None, &Bank, |a, s, c| {
            Box::pin(a.open_account(s, c))
        })
        .await
        .unwrap();
        repo.execute(&stream, &deposit(&account, 10), None, &Bank, |a, s, c| {
            Box::pin(a.deposit(s, c))
        })
        .await
        .unwrap();
        let withdraw = command(Withdraw {
            account_id: account.clone(),
            amount: 10,
        });
        let first = repo
            .execute(&stream, &withdraw, None, &Bank, |a, s, c| {
                Box::pin(a.withdraw(s, c))
            })
            .await
            .unwrap();
        repo.execute(&stream, &deposit(&account, 1), None, &Bank, |a, s, c| {
            Box::pin(a.deposit(s, c))
        })
        .await
        .unwrap();
        let again = repo
            .execute(&stream, &withdraw, None, &Bank, |a, s, c| {
                Box::pin(a.withdraw(s, c))
            })
            .await;
        assert_eq!(again.as_ref().ok(), Some(&first), "{name}: {again:?}");
        let (state, version) = repo.load(&stream).await.unwrap();
        assert_eq!((state.balance, version), (1, Some(3)), "{name}");
        // A command that never ran is still refused on that state.
        let fresh = command(Withdraw {
            account_id: account.clone(),
            amount: 10,
        });
        let refused = repo
            .execute(&stream, &fresh, None, &Bank, |a, s, c| {
                Box::pin(a.withdraw(s, c))
            })
            .await;
        assert!(
            matches!(refused, Err(HandlerError::Reject(_))),
            "{name}: {refused:?}"
        );
    }
}

#[tokio::test]
async fn an_empty_stream_param_is_rejected_not_written() {
    let store = Store::memory();
    let bus = bank_bus(&store).await;
    let receipt = bus
        .dispatch(CommandEnvelope::wrap(deposit("", 5)))
        .await
        .unwrap();
    assert_eq!(receipt.status(), CommandStatus::Rejected);
    assert!(
        receipt.error().unwrap().contains("`account_id` is empty"),
        "{:?}",
        receipt.error()
    );
    assert!(store.read_all(0, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_panicking_decision_is_retried_then_dead_lettered() {
    let store = Store::memory();
    let bus = bank_bus(&store).await;
    let mut dead = bus.dead_letters().await.unwrap();
    let cmd = command(OpenAccount {
        account_id: new_id(),
        owner: "panic".into(),
        currency: Currency::Eur,
    });
    let receipt = bus
        .dispatch(CommandEnvelope::wrap(cmd).with_max_retries(2))
        .await
        .unwrap();
    assert_eq!(receipt.status(), CommandStatus::Failed);
    assert_eq!(receipt.attempts(), 3);
    assert!(receipt.error().unwrap().contains("decide blew up"));
    let letter = tokio::time::timeout(Duration::from_secs(5), dead.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(letter.handler(), "Account.OpenAccount");
    assert!(store.read_all(0, 10).await.unwrap().is_empty());
    // The bus still works.
    let receipt = bus
        .dispatch(CommandEnvelope::wrap(open(&new_id())))
        .await
        .unwrap();
    assert_eq!(receipt.status(), CommandStatus::Succeeded);
}

#[tokio::test]
async fn an_unreadable_stream_names_the_stream_and_position() {
    for (name, store) in stores().await {
        let account = new_id();
        let stream = format!("account-{account}");
        let repo = AccountRepository::<Bank>::new(store.clone());
        repo.execute(&stream, &open(&account), None, &Bank, |a, s, c| {
            Box::pin(a.open_account(s, c))
        })
        .await
        .unwrap();
        let bogus = store
            .append(
                &stream,
                ExpectedVersion::Exact(0),
                vec![EventData {
                    id: new_id(),
                    event_type: "Shop.Bank.Bogus".into(),
                    schema_version: 1,
                    data: json!({}),
                    metadata: Metadata::new(),
                    topic: None,
                    tags: Vec::new(),
                }],
            )
            .await
            .unwrap();
        let err = repo.load(&stream).await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, StoreError::Unreadable { version: 1, .. }),
            "{name}: {err:?}"
        );
        assert!(text.contains(&stream), "{name}: {text}");
        assert!(
            text.contains(&format!("position {}", bogus.last_position)),
            "{name}: {text}"
        );
        assert!(text.contains("Shop.Bank.Bogus"), "{name}: {text}");

        // Through the bus: the command fails (retried, dead-lettered), nothing appended.
        let bus = bank_bus(&store).await;
        let receipt = bus
            .dispatch(CommandEnvelope::wrap(deposit(&account, 1)).with_max_retries(0))
            .await
            .unwrap();
        assert_eq!(receipt.status(), CommandStatus::Failed, "{name}");
        assert!(receipt.error().unwrap().contains(&stream), "{name}");
        assert_eq!(store.read_stream(&stream, 0, 10).await.unwrap().len(), 2);
    }
}

#[tokio::test]
async fn given_when_then() {
    let opened = AccountEvent::AccountOpened(AccountOpened {
        account_id: "a1".into(),
        owner: "ada".into(),
        currency: Currency::Eur,
    });
    let deposited = |amount| {
        AccountEvent::MoneyDeposited(MoneyDeposited {
            account_id: "a1".into(),
            amount,
        })
    };
    let test = AccountTest::given(Bank, vec![opened.clone(), deposited(30), deposited(12)]);
    assert_eq!(test.state().balance, 42);
    assert_eq!(
        test.when(command(Withdraw {
            account_id: "a1".into(),
            amount: 40,
        }))
        .await
        .unwrap(),
        vec![AccountEvent::MoneyWithdrawn(MoneyWithdrawn {
            account_id: "a1".into(),
            amount: 40,
        })]
    );
    let refused = test
        .when(command(Withdraw {
            account_id: "a1".into(),
            amount: 43,
        }))
        .await
        .unwrap_err();
    assert_eq!(refused, HandlerError::reject("balance 42 is below 43"));
    assert_eq!(
        AccountTest::given(Bank, vec![])
            .when(deposit("a1", 1))
            .await,
        Err(HandlerError::reject("the account is not open"))
    );
    assert_eq!(
        AccountTest::given(Bank, vec![opened])
            .when(open("a1"))
            .await,
        Err(HandlerError::reject("the account is already open"))
    );
    // The default state is the schema's defaults.
    assert_eq!(
        *AccountTest::given(Bank, vec![]).state(),
        AccountState {
            balance: 0,
            open: false,
            owner: None,
            currency: Currency::Eur,
        }
    );
}

#[tokio::test]
async fn a_handwritten_repository_runs_without_a_bus() {
    // The same machinery, named through the runtime's generic type.
    let store = Store::memory();
    let repo: Repository<aggregates::AccountAggregate<Bank>> = Repository::new(store);
    let account = new_id();
    let done = repo
        .execute(
            &format!("account-{account}"),
            &open(&account),
            None,
            &Bank,
            |a, s, c| Box::pin(a.open_account(s, c)),
        )
        .await
        .unwrap();
    assert_eq!(done.version, Some(0));
}

/// Appends a deposit of 100 behind the decision's back, `remaining` times: each time the
/// decision's append loses, and the command is decided again on the new state.
struct Interloper {
    store: Store,
    remaining: std::sync::atomic::AtomicU32,
    seen: Mutex<Vec<i64>>,
}

fn interloping_deposit<'a>(
    me: &'a Interloper,
    state: &'a AccountState,
    command: &'a Command<Deposit>,
) -> orkestra_runtime::aggregate::Decision<'a, AccountEvent> {
    Box::pin(async move {
        me.seen.lock().unwrap().push(state.balance);
        let interlope = me
            .remaining
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok();
        if interlope {
            me.store
                .append(
                    &format!("account-{}", command.account_id),
                    ExpectedVersion::Any,
                    vec![EventData {
                        id: new_id(),
                        event_type: MoneyDeposited::TYPE_NAME.into(),
                        schema_version: 1,
                        data: json!({ "account_id": command.account_id, "amount": 100 }),
                        metadata: Metadata::new(),
                        topic: None,
                        tags: Vec::new(),
                    }],
                )
                .await
                .unwrap();
        }
        Ok(vec![AccountEvent::MoneyDeposited(MoneyDeposited {
            account_id: command.account_id.clone(),
            amount: command.amount,
        })])
    })
}

/// `orkestra.aggregate.conflicts{orkestra.aggregate="Account"}` as the SDK's in-memory
/// exporter has it now (one meter provider for this binary, installed on first use).
fn account_conflicts() -> u64 {
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};
    static METERS: std::sync::OnceLock<(SdkMeterProvider, InMemoryMetricExporter)> =
        std::sync::OnceLock::new();
    let (provider, exporter) = METERS.get_or_init(|| {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_periodic_exporter(exporter.clone())
            .build();
        orkestra_runtime::metrics::set_meter_provider(provider.clone());
        (provider, exporter)
    });
    provider.force_flush().unwrap();
    let exported = exporter.get_finished_metrics().unwrap();
    let Some(last) = exported.last() else {
        return 0;
    };
    let mut total = 0;
    for metric in last.scope_metrics().flat_map(|s| s.metrics()) {
        if metric.name() != "orkestra.aggregate.conflicts" {
            continue;
        }
        assert_eq!(metric.unit(), "{conflict}");
        let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() else {
            panic!("conflicts is a u64 counter: {:?}", metric.data());
        };
        for point in sum.data_points() {
            let attributes: Vec<_> = point.attributes().collect();
            assert_eq!(attributes.len(), 1, "only the aggregate: {attributes:?}");
            if attributes[0].key.as_str() == "orkestra.aggregate"
                && attributes[0].value.as_str() == "Account"
            {
                total += point.value();
            }
        }
    }
    total
}

#[tokio::test]
async fn a_lost_race_is_decided_again_on_the_new_state_up_to_conflict_retries() {
    for (name, store) in stores().await {
        // Racing tests of this binary may add to it meanwhile: at least ours.
        let conflicts_before = account_conflicts();
        let repo = AccountRepository::<Bank>::new(store.clone());
        // 5 lost races (the schema's `conflict_retries`): the 6th decision wins.
        let account = new_id();
        let stream = format!("account-{account}");
        repo.execute(&stream, &open(&account), None, &Bank, |a, s, c| {
            Box::pin(a.open_account(s, c))
        })
        .await
        .unwrap();
        let me = Interloper {
            store: store.clone(),
            remaining: 5.into(),
            seen: Mutex::default(),
        };
        let done = repo
            .execute(
                &stream,
                &deposit(&account, 1),
                None,
                &me,
                interloping_deposit,
            )
            .await
            .unwrap();
        assert_eq!(done.version, Some(6), "{name}");
        assert_eq!(
            *me.seen.lock().unwrap(),
            vec![0, 100, 200, 300, 400, 500],
            "{name}: each decision saw every earlier append"
        );
        assert_eq!(repo.load(&stream).await.unwrap().0.balance, 501, "{name}");

        // 6 lost races: the command fails, and its event is not appended.
        let me = Interloper {
            store: store.clone(),
            remaining: 6.into(),
            seen: Mutex::default(),
        };
        let err = repo
            .execute(
                &stream,
                &deposit(&account, 1),
                None,
                &me,
                interloping_deposit,
            )
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{name}: a failure the bus retries");
        assert!(
            err.reason().contains("gave up after 5 retries"),
            "{name}: {err}"
        );
        let (state, version) = repo.load(&stream).await.unwrap();
        assert_eq!((state.balance, version), (1101, Some(12)), "{name}");
        // 5 races lost and won again, then 6 lost: 11 conflicts counted.
        let counted = account_conflicts() - conflicts_before;
        assert!(counted >= 11, "{name}: {counted} conflicts counted");
    }
}

/// With `store.publish = "relay"` the aggregate handlers only append; the relay
/// publishes each stored event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_relay_mode_the_aggregate_appends_and_the_relay_publishes() {
    let store = Store::memory().with_publish(orkestra_runtime::PublishMode::Relay);
    let bus = bank_bus(&store).await;
    let published = Published::default();
    published.subscribe(&bus).await;
    let account = new_id();
    for receipt in [
        bus.dispatch(CommandEnvelope::wrap(open(&account))).await,
        bus.dispatch(CommandEnvelope::wrap(deposit(&account, 5)))
            .await,
    ] {
        assert_eq!(receipt.unwrap().status(), CommandStatus::Succeeded);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(published.counts().is_empty(), "{:?}", published.counts());
    let mut relay = orkestra_runtime::relay::Relay::new(store.clone(), bus.clone())
        .start()
        .await
        .unwrap();
    relay
        .wait_for(store.head().await.unwrap().unwrap())
        .await
        .unwrap();
    relay.stop().await.unwrap();
    let counts = published.counts();
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
}

/// The `const SHAPE` tags in the code generated from `schema`.
fn generated_shapes(schema: &str) -> Vec<String> {
    let output = orkestra_gen::generate_from_sources(
        &[orkestra_gen::Source {
            path: "bank.yaml".into(),
            text: schema.to_owned(),
        }],
        "Shop",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    output
        .code
        .lines()
        .filter_map(|l| l.trim().strip_prefix("const SHAPE: &'static str = \""))
        .map(|l| l.trim_end_matches("\";").to_owned())
        .collect()
}

/// `snapshot_version: 2` on `Account` (bumped because `apply` changed) is part of the
/// snapshot tag: a snapshot the same state shape got from the previous `apply` (the
/// schema without the bump) is ignored and the stream replayed, on every store; one under
/// the current tag is used.
#[tokio::test]
async fn a_bumped_snapshot_version_ignores_snapshots_of_the_previous_apply() {
    let schema = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../orkestra-gen/tests/golden/aggregates/bank.yaml"
    ))
    .unwrap();
    assert!(schema.contains("    snapshot_version: 2\n"));
    let current = <aggregates::AccountAggregate<Bank> as Aggregate>::SHAPE;
    let now = generated_shapes(&schema);
    assert!(now.iter().any(|s| s == current), "{now:?} / {current}");
    let before: Vec<String> = generated_shapes(&schema.replace("    snapshot_version: 2\n", ""))
        .into_iter()
        .filter(|s| !now.contains(s))
        .collect();
    assert_eq!(before.len(), 1, "only Account's tag changes: {before:?}");
    let previous = &before[0];
    assert_ne!(previous, current);

    for (name, store) in stores().await {
        let account = new_id();
        let stream = format!("account-{account}");
        let repo = AccountRepository::<Bank>::new(store.clone());
        repo.execute(&stream, &open(&account), None, &Bank, |a, s, c| {
            Box::pin(a.open_account(s, c))
        })
        .await
        .unwrap();
        repo.execute(&stream, &deposit(&account, 5), None, &Bank, |a, s, c| {
            Box::pin(a.deposit(s, c))
        })
        .await
        .unwrap();
        let replayed = repo.replay(&stream).await.unwrap();
        assert_eq!(replayed.0.balance, 5, "{name}");
        // What the previous `apply` folded the stream to, under its tag.
        let mut stale = replayed.0.clone();
        stale.balance = 1_000_000;
        for (tag, expected) in [(previous.as_str(), 5), (current, 1_000_000)] {
            store
                .save_snapshot(Snapshot {
                    stream: stream.clone(),
                    version: 1,
                    shape: tag.to_owned(),
                    state: serde_json::to_string(&stale).unwrap(),
                })
                .await
                .unwrap();
            let (state, version) = repo.load(&stream).await.unwrap();
            assert_eq!(version, Some(1), "{name}");
            assert_eq!(state.balance, expected, "{name}: snapshot tagged {tag}");
        }
    }
}
