// A handler whose future is not Send (it holds an Rc across an await) does not compile:
// handler futures must be able to move between runtime threads.
use std::rc::Rc;

use orkestra_runtime::{Event, HandlerContext, HandlerError};
use orkestra_tests::orders::events::OrderPlaced;
use orkestra_tests::orders::handlers;

struct Mailer;

impl handlers::SendOrderConfirmation for Mailer {
    async fn handle_event(&self, _event: Event<OrderPlaced>, ctx: HandlerContext) -> Result<(), HandlerError> {
        let local = Rc::new(1);
        ctx.bus().dead_letters().await?;
        drop(local);
        Ok(())
    }
}

fn main() {}
