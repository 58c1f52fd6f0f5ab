// A namespace's `Wiring` needs every binding, aggregates included: leaving one out does
// not compile (with `handlers::Handlers` alone it failed at run time: "no handler is
// subscribed").
use orkestra_runtime::{Command, Event, HandlerContext, HandlerError};
use orkestra_tests::aggregates::bank::{self, aggregates::*, commands::*, events::*};

struct Alert;
impl bank::handlers::WithdrawalAlert for Alert {
    async fn handle_event(&self, _: Event<MoneyWithdrawn>, _: HandlerContext) -> Result<(), HandlerError> {
        Ok(())
    }
}

struct Ticker;
impl Counter for Ticker {
    fn apply(_: &mut CounterState, _: &CounterEvent) {}
    async fn tick(&self, _: &CounterState, _: &Command<Tick>) -> Result<Vec<CounterEvent>, HandlerError> {
        Ok(Vec::new())
    }
}

fn main() {
    let _ = bank::Wiring {
        withdrawal_alert: Alert,
        counter: Ticker,
    };
}
