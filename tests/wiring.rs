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
