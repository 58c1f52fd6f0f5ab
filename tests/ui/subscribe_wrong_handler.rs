// Binding a type to a handler trait it does not implement does not compile.
use orkestra_runtime::{Event, HandlerContext, HandlerError};
use orkestra_tests::orders::events::OrderPlaced;
use orkestra_tests::orders::handlers;

struct Mailer;

impl handlers::SendOrderConfirmation for Mailer {
    async fn handle_event(&self, _event: Event<OrderPlaced>, _ctx: HandlerContext) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {
    let _ = handlers::place_order_handler(Mailer);
}
