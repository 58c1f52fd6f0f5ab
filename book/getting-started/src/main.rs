//! my-shop: takes orders, stores what happened, and confirms each order.

// The code orkestra-gen wrote from schemas/ in build.rs: one module per namespace.
orkestra_runtime::include_generated!();

use std::time::Duration;

use orders::commands::PlaceOrder;
use orders::events::OrderPlaced;
use orkestra_runtime::{
    Bus, Command, CommandEnvelope, Config, Event, EventEnvelope, ExpectedVersion, HandlerContext,
    HandlerError, Metadata, Store,
};
use serde_json::{Value, json};

/// Handles `PlaceOrder`: stores `OrderPlaced` in the event store, then publishes it.
struct Orders {
    store: Store,
}

impl orders::handlers::PlaceOrderHandler for Orders {
    async fn execute(
        &self,
        cmd: Command<PlaceOrder>,
        ctx: HandlerContext,
    ) -> Result<Value, HandlerError> {
        let order_id = format!("ord_{}", &cmd.id[..8]);
        // The event carries the command's correlation id; its causation id is the command's id.
        let placed = Event::from_command(
            &cmd,
            OrderPlaced {
                order_id: order_id.clone(),
                product_id: cmd.product_id.clone(),
                quantity: cmd.quantity,
            },
        )?;
        self.store
            .append_and_publish(
                ctx.bus(),
                &format!("order-{order_id}"),
                ExpectedVersion::NoStream,
                vec![EventEnvelope::wrap(placed)],
            )
            .await
            .map_err(HandlerError::fail)?;
        Ok(json!({ "order_id": order_id }))
    }
}

/// Reacts to every `OrderPlaced`.
struct Mailer;

impl orders::handlers::SendConfirmation for Mailer {
    async fn handle_event(
        &self,
        event: Event<OrderPlaced>,
        _ctx: HandlerContext,
    ) -> Result<(), HandlerError> {
        println!(
            "confirmation: order {} ({} x {})",
            event.order_id, event.quantity, event.product_id
        );
        Ok(())
    }
}

/// Subscribes every handler of the `orders` namespace on `bus`.
async fn subscribe(bus: &Bus, store: &Store) -> Result<(), orkestra_runtime::BusError> {
    // Leaving a binding out of `Handlers` is a compile error.
    let handlers = orders::handlers::Handlers {
        place_order_handler: Orders {
            store: store.clone(),
        },
        send_confirmation: Mailer,
    };
    bus.subscribe_all(handlers.subscriptions()).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // ./orkestra.toml, then the ORKESTRA_* environment variables.
    let config = Config::load()?;
    let bus = Bus::from_config(&config).await?;
    let store = Store::from_config(&config).await?;
    subscribe(&bus, &store).await?;
    println!(
        "my-shop: bus {}, store {}",
        config.bus.adapter.name(),
        store.adapter()
    );

    let cmd = PlaceOrder::new(
        json!({ "product_id": "sku_42", "quantity": 3 }),
        Metadata::new(),
    )?;
    let receipt = bus.dispatch(CommandEnvelope::wrap(cmd)).await?;
    println!(
        "PlaceOrder: {:?}, reply {}",
        receipt.status(),
        receipt.reply().cloned().unwrap_or_default()
    );

    println!("running; press Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    bus.shutdown(Duration::from_secs(10)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn placing_an_order_stores_order_placed() {
        let bus = Bus::in_process();
        let store = Store::memory();
        subscribe(&bus, &store).await.unwrap();
        let cmd = PlaceOrder::new(
            json!({ "product_id": "sku_42", "quantity": 3 }),
            Metadata::new(),
        )
        .unwrap();
        let receipt = bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
        let order_id = receipt.reply().unwrap()["order_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let stored = store
            .read_stream(&format!("order-{order_id}"), 0, 10)
            .await
            .unwrap();
        let placed: Event<OrderPlaced> = stored[0].decode().unwrap();
        assert_eq!(placed.quantity, 3);
    }
}
