// A decide method returns the aggregate's own events only: an event of the schema that
// the aggregate does not list has no variant.
use orkestra_runtime::{Command, HandlerError};
use orkestra_tests::aggregates::bank::aggregates::{Counter, CounterEvent, CounterState};
use orkestra_tests::aggregates::bank::commands::Tick;

struct Ticks;

impl Counter for Ticks {
    fn apply(_: &mut CounterState, _: &CounterEvent) {}

    async fn tick(
        &self,
        _: &CounterState,
        _: &Command<Tick>,
    ) -> Result<Vec<CounterEvent>, HandlerError> {
        Ok(vec![CounterEvent::MoneyDeposited])
    }
}

fn main() {}
