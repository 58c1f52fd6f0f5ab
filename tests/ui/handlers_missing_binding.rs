// Wiring a namespace all at once needs every binding: leaving one out does not compile.
use orkestra_tests::wiring::billing::handlers::{self, Handlers};
use orkestra_runtime::{Command, Event, HandlerContext, HandlerError};
use orkestra_tests::wiring::billing::{commands::ChargeCard, events::CardCharged};

struct Charger;
impl handlers::ChargeCardHandler for Charger {
    async fn execute(&self, _: Command<ChargeCard>, _: HandlerContext) -> Result<serde_json::Value, HandlerError> {
        Ok(serde_json::Value::Null)
    }
}

struct Printer;
impl handlers::ReceiptPrinter for Printer {
    async fn handle_event(&self, _: Event<CardCharged>, _: HandlerContext) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {
    let _ = Handlers {
        charge_card_handler: Charger,
        receipt_printer: Printer,
    }
    .subscriptions();
}
