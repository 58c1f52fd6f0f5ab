//! my-shop: takes orders (the aggregate `Order` decides them), confirms each one and
//! counts the units ordered per product. `src/main.rs` runs it; `tests/` drives it.

// The code orkestra-gen wrote from schemas/ in build.rs: one module per namespace,
// `orders` for `MyShop.Orders`.
orkestra_runtime::include_generated!();

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use orders::aggregates::{OrderEvent, OrderState};
use orders::commands::PlaceOrder;
use orders::events::OrderPlaced;
use orkestra_runtime::projection::ProjectionContext;
use orkestra_runtime::wiring::{StartError, Started};
use orkestra_runtime::{Bus, Command, Event, HandlerContext, HandlerError, Store};

/// Decides orders: the aggregate `Order`. Its state is the fold of the order's stream.
#[derive(Debug)]
pub struct Orders;

impl orders::aggregates::Order for Orders {
    fn apply(state: &mut OrderState, event: &OrderEvent) {
        match event {
            OrderEvent::OrderPlaced(_) => state.placed = true,
        }
    }

    async fn place_order(
        &self,
        state: &OrderState,
        cmd: &Command<PlaceOrder>,
    ) -> Result<Vec<OrderEvent>, HandlerError> {
        if state.placed {
            // A rejection is an answer: nothing is appended and nothing is retried.
            return Err(HandlerError::reject(format!(
                "order {} is already placed",
                cmd.order_id
            )));
        }
        Ok(vec![OrderEvent::OrderPlaced(OrderPlaced {
            order_id: cmd.order_id.clone(),
            product_id: cmd.product_id.clone(),
            quantity: cmd.quantity,
        })])
    }
}

/// Confirms every placed order: the handler binding `SendConfirmation`.
#[derive(Debug)]
pub struct Confirmations;

impl orders::handlers::SendConfirmation for Confirmations {
    async fn handle_event(
        &self,
        event: Event<OrderPlaced>,
        _ctx: HandlerContext,
    ) -> Result<(), HandlerError> {
        println!(
            "confirmed order {} ({} x {})",
            event.order_id, event.quantity, event.product_id
        );
        Ok(())
    }
}

/// Units ordered per product, in memory: the projection `ProductSales`, fed from the
/// store in global order (`checkpoint: none`: replayed from the start at each launch).
#[derive(Clone, Debug, Default)]
pub struct Sales(Arc<Mutex<HashMap<String, i64>>>);

impl Sales {
    /// The units ordered of `product_id` so far.
    pub fn units(&self, product_id: &str) -> i64 {
        let units = self.0.lock().unwrap_or_else(|p| p.into_inner());
        units.get(product_id).copied().unwrap_or(0)
    }
}

impl orders::projections::ProductSales for Sales {
    async fn handle_event(
        &self,
        event: Event<OrderPlaced>,
        _ctx: ProjectionContext<'_>,
    ) -> Result<(), HandlerError> {
        let mut units = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *units.entry(event.product_id.clone()).or_default() += event.quantity;
        Ok(())
    }
}

/// Subscribes the aggregate and the handler on `bus`, then starts the projection over
/// `store`. Leaving a binding of the schema out of `Wiring` does not compile.
pub async fn start(bus: &Bus, store: &Store, sales: Sales) -> Result<Started, StartError> {
    orders::Wiring {
        order: Orders,
        send_confirmation: Confirmations,
        product_sales: sales,
    }
    .start(bus, store)
    .await
}
