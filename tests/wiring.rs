//! A namespace wired all at once (`handlers::Handlers { .. }.subscriptions()` and
//! `Bus::subscribe_all`) on the in-process bus, with a dead-letter binding that receives
//! the dead letter of a failing handler and, failing itself, produces no other.

use std::time::Duration;

use orkestra_runtime::{
    Bus, Command, CommandEnvelope, CommandStatus, DeadLetter, Event, HandlerContext, HandlerError,
    Metadata,
};
use orkestra_tests::wiring::billing::commands::ChargeCard;
use orkestra_tests::wiring::billing::events::CardCharged;
use orkestra_tests::wiring::billing::handlers::{self, Handlers};
use serde_json::{Value, json};
use tokio::sync::mpsc;

struct Charger;
impl handlers::ChargeCardHandler for Charger {
    async fn execute(
        &self,
        cmd: Command<ChargeCard>,
        ctx: HandlerContext,
    ) -> Result<Value, HandlerError> {
        let ev = CardCharged::from_command(&cmd, json!({"amount": cmd.amount}))?;
        ctx.publish(ev).await?;
        Ok(json!({"charged": cmd.amount}))
    }
}

/// Fails every receipt (`max_retries: 0`): dead-lettered at once.
struct JammedPrinter;
impl handlers::ReceiptPrinter for JammedPrinter {
    async fn handle_event(
        &self,
        _: Event<CardCharged>,
        _: HandlerContext,
    ) -> Result<(), HandlerError> {
        Err(HandlerError::fail("printer jammed"))
    }
}

/// Records every dead letter it is given, then fails (its pager is down).
struct Alarm(mpsc::UnboundedSender<DeadLetter>);
impl handlers::DeadLetterAlarm for Alarm {
    async fn handle_dead_letter(
        &self,
        letter: DeadLetter,
        _: HandlerContext,
    ) -> Result<(), HandlerError> {
        self.0.send(letter).ok();
        Err(HandlerError::fail("pager down"))
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = Option<T>>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("{what}: channel closed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_struct_subscribes_every_binding_and_dead_letters_reach_their_binding() {
    let bus = Bus::in_process();
    let mut dead = bus.dead_letters().await.unwrap();
    let (tx, mut alarms) = mpsc::unbounded_channel();
    let subscriptions = Handlers {
        charge_card_handler: Charger,
        receipt_printer: JammedPrinter,
        dead_letter_alarm: Alarm(tx),
    }
    .subscriptions();
    let names: Vec<&str> = subscriptions.iter().map(|s| s.handler()).collect();
    assert_eq!(
        names,
        ["ChargeCardHandler", "ReceiptPrinter", "DeadLetterAlarm"],
        "one subscription per binding, in declaration order"
    );
    assert_eq!(subscriptions[1].max_retries(), 0);
    assert_eq!(subscriptions[2].max_retries(), 1);
    bus.subscribe_all(subscriptions).await.unwrap();

    let cmd = ChargeCard::new(json!({"amount": 5}), Metadata::new()).unwrap();
    let receipt = bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    assert_eq!(receipt.status(), CommandStatus::Succeeded);

    // The failed receipt is the bus's one dead letter...
    let recorded = tokio::time::timeout(Duration::from_secs(5), dead.recv())
        .await
        .expect("a dead letter")
        .unwrap();
    assert_eq!(recorded.handler(), "ReceiptPrinter");
    // ...and the dead-letter binding receives it.
    let letter = within("the alarm", alarms.recv()).await;
    assert_eq!(letter.handler(), "ReceiptPrinter");
    assert_eq!(letter.topic(), CardCharged::TOPIC);
    assert_eq!(letter.reason(), "printer jammed");
    assert_eq!(letter.attempts(), 1, "max_retries: 0 is one run");

    // The alarm fails: it is retried up to its limit (1), then only logged. No dead
    // letter names it, so nothing loops.
    let retried = within("the alarm's retry", alarms.recv()).await;
    assert_eq!(retried.message_id(), letter.message_id());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        alarms.try_recv().is_err(),
        "no third run: the limit is one retry"
    );
    assert!(
        dead.try_recv().is_none(),
        "a failing dead-letter handler produces no dead letter"
    );
}

/// A namespace with a handler binding and two aggregates: `bank::Wiring` has one field
/// for each (leaving the `counter` aggregate out does not compile,
/// `ui/wiring_missing_aggregate.rs`), and `start` subscribes them all, so every command
/// finds its aggregate (left out of `Handlers`, it failed at run time with "no handler
/// is subscribed").
mod bank_wiring {
    use std::time::Duration;

    use orkestra_runtime::{
        Bus, Command, CommandEnvelope, CommandStatus, Event, HandlerContext, HandlerError,
        Metadata, Store,
    };
    use orkestra_tests::aggregates::bank;
    use orkestra_tests::aggregates::bank::aggregates::{
        AccountEvent, AccountState, CounterEvent, CounterState,
    };
    use orkestra_tests::aggregates::bank::commands::{Deposit, OpenAccount, Tick, Withdraw};
    use orkestra_tests::aggregates::bank::events::{
        AccountOpened, MoneyDeposited, MoneyWithdrawn, Ticked,
    };
    use orkestra_tests::aggregates::bank::types::Currency;
    use tokio::sync::mpsc;

    struct Teller;
    impl bank::aggregates::Account for Teller {
        fn apply(state: &mut AccountState, event: &AccountEvent) {
            match event {
                AccountEvent::AccountOpened(_) => state.open = true,
                AccountEvent::MoneyDeposited(e) => state.balance += e.amount,
                AccountEvent::MoneyWithdrawn(e) => state.balance -= e.amount,
            }
        }
        async fn open_account(
            &self,
            _: &AccountState,
            c: &Command<OpenAccount>,
        ) -> Result<Vec<AccountEvent>, HandlerError> {
            Ok(vec![AccountEvent::AccountOpened(AccountOpened {
                account_id: c.account_id.clone(),
                owner: c.owner.clone(),
                currency: c.currency,
            })])
        }
        async fn deposit(
            &self,
            _: &AccountState,
            c: &Command<Deposit>,
        ) -> Result<Vec<AccountEvent>, HandlerError> {
            Ok(vec![AccountEvent::MoneyDeposited(MoneyDeposited {
                account_id: c.account_id.clone(),
                amount: c.amount,
            })])
        }
        async fn withdraw(
            &self,
            _: &AccountState,
            c: &Command<Withdraw>,
        ) -> Result<Vec<AccountEvent>, HandlerError> {
            Ok(vec![AccountEvent::MoneyWithdrawn(MoneyWithdrawn {
                account_id: c.account_id.clone(),
                amount: c.amount,
            })])
        }
    }

    struct Ticker;
    impl bank::aggregates::Counter for Ticker {
        fn apply(_: &mut CounterState, _: &CounterEvent) {}
        async fn tick(
            &self,
            _: &CounterState,
            c: &Command<Tick>,
        ) -> Result<Vec<CounterEvent>, HandlerError> {
            Ok(vec![CounterEvent::Ticked(Ticked { counter: c.counter })])
        }
    }

    struct Alert(mpsc::UnboundedSender<i64>);
    impl bank::handlers::WithdrawalAlert for Alert {
        async fn handle_event(
            &self,
            event: Event<MoneyWithdrawn>,
            _: HandlerContext,
        ) -> Result<(), HandlerError> {
            self.0.send(event.amount).ok();
            Ok(())
        }
    }

    fn command<P: orkestra_runtime::CommandPayload>(params: P) -> CommandEnvelope {
        CommandEnvelope::wrap(Command::new(params, Metadata::new()).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_struct_starts_every_binding_of_the_namespace() {
        let store = Store::memory();
        let bus = Bus::in_process();
        let (tx, mut alerts) = mpsc::unbounded_channel();
        let started = bank::Wiring {
            withdrawal_alert: Alert(tx),
            account: Teller,
            counter: Ticker,
        }
        .start(&bus, &store)
        .await
        .unwrap();
        let open = command(OpenAccount {
            account_id: "a-1".into(),
            owner: "ada".into(),
            currency: Currency::Eur,
        });
        assert_eq!(
            bus.dispatch(open).await.unwrap().status(),
            CommandStatus::Succeeded
        );
        let withdraw = command(Withdraw {
            account_id: "a-1".into(),
            amount: 7,
        });
        assert_eq!(
            bus.dispatch(withdraw).await.unwrap().status(),
            CommandStatus::Succeeded
        );
        let tick = command(Tick { counter: 3 });
        assert_eq!(
            bus.dispatch(tick).await.unwrap().status(),
            CommandStatus::Succeeded
        );
        let alerted = tokio::time::timeout(Duration::from_secs(5), alerts.recv())
            .await
            .expect("the handler binding received the withdrawal");
        assert_eq!(alerted, Some(7));
        assert!(started.projections().is_none() && started.process_managers().is_none());
        started.stop().await.unwrap();
        // What `handlers::Handlers` alone wires: the aggregates' commands find no handler.
        let partial = Bus::in_process();
        let (tx, _alerts) = mpsc::unbounded_channel();
        partial
            .subscribe_all(
                bank::handlers::Handlers {
                    withdrawal_alert: Alert(tx),
                }
                .subscriptions(),
            )
            .await
            .unwrap();
        let tick = command(Tick { counter: 4 });
        assert!(partial.dispatch(tick).await.is_err());
    }
}

/// Projections start with the rest: `ledger::Wiring { .. }.start(..)` runs them over
/// the store.
mod ledger_wiring {
    use orkestra_runtime::projection::ProjectionContext;
    use orkestra_runtime::{
        Bus, Event, EventEnvelope, ExpectedVersion, HandlerError, Metadata, Store,
    };
    use orkestra_tests::projections::ledger;
    use orkestra_tests::projections::ledger::events::Credited;
    use tokio::sync::mpsc;

    struct Counted(mpsc::UnboundedSender<i64>);
    impl ledger::projections::CreditCount for Counted {
        async fn handle_event(
            &self,
            event: Event<Credited>,
            _: ProjectionContext<'_>,
        ) -> Result<(), HandlerError> {
            self.0.send(event.amount).ok();
            Ok(())
        }
    }
    struct Quiet;
    impl ledger::projections::Balances for Quiet {
        async fn handle_event(
            &self,
            _: ledger::projections::BalancesEvent,
            _: ProjectionContext<'_>,
        ) -> Result<(), HandlerError> {
            Ok(())
        }
    }
    impl ledger::projections::LedgerAudit for Quiet {
        async fn handle_event(
            &self,
            _: ledger::projections::LedgerAuditEvent,
            _: ProjectionContext<'_>,
        ) -> Result<(), HandlerError> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn projections_start_with_the_namespace() {
        let store = Store::memory();
        let bus = Bus::in_process();
        let (tx, mut credits) = mpsc::unbounded_channel();
        let started = ledger::Wiring {
            balances: Quiet,
            credit_count: Counted(tx),
            ledger_audit: Quiet,
        }
        .start(&bus, &store)
        .await
        .unwrap();
        let credited = Event::new(
            Credited {
                account_id: "a".into(),
                amount: 12,
            },
            Metadata::new(),
        )
        .unwrap();
        store
            .append_and_publish(
                &bus,
                "ledger-a",
                ExpectedVersion::NoStream,
                vec![EventEnvelope::wrap(credited)],
            )
            .await
            .unwrap();
        let seen = tokio::time::timeout(std::time::Duration::from_secs(5), credits.recv())
            .await
            .expect("the projection ran");
        assert_eq!(seen, Some(12));
        // One line per partition this copy works: `Balances` has 4 (`partitions: 4`),
        // the two others 1 each; a copy alone holds them all.
        let status = started.projections().unwrap().status();
        assert_eq!(status.len(), 6, "{status:?}");
        let balances: Vec<u32> = status
            .iter()
            .filter(|s| s.partitions == 4)
            .map(|s| s.partition)
            .collect();
        assert_eq!(balances, [0, 1, 2, 3], "{status:?}");
        started.stop().await.unwrap();
    }
}
