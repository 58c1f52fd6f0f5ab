// A handler written for the wrong event type does not compile.
use orkestra_runtime::{Event, HandlerContext, HandlerError};
use orkestra_tests::orders::events::OrderCancelled;
use orkestra_tests::orders::handlers;

struct Mailer;

impl handlers::SendOrderConfirmation for Mailer {
    async fn handle_event(&self, _event: Event<OrderCancelled>, _ctx: HandlerContext) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
