//! Orders on the in-process bus: a command, the event its handler publishes, the
//! handlers that react, one that keeps failing until it is dead-lettered, and the
//! correlation and causation ids that tie it all together.

mod domain;

use domain::{OrderPlaced, PlaceOrder};
use orkestra_runtime::{
    ActorType, Bus, Command, CommandEnvelope, Config, Event, HandlerError, Metadata, Subscription,
};
use serde_json::json;

fn short(id: &str) -> &str {
    &id[..8.min(id.len())]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load()?;
    let bus = Bus::from_config(&config).await?;
    let mut dead_letters = bus.dead_letters().await?;

    bus.subscribe(Subscription::command(
        "PlaceOrderHandler",
        |cmd: Command<PlaceOrder>, ctx| async move {
            println!(
                "  PlaceOrderHandler   ran for command {} ({} x {})",
                short(&cmd.id),
                cmd.quantity,
                cmd.product_id
            );
            let placed = Event::from_command(
                &cmd,
                OrderPlaced {
                    order_id: "ord_1".into(),
                    quantity: cmd.quantity,
                },
            )?;
            ctx.publish(placed).await?;
            Ok(json!({"order_id": "ord_1"}))
        },
    ))
    .await?;

    bus.subscribe(Subscription::events(
        "SendOrderConfirmation",
        |ev: Event<OrderPlaced>, _| async move {
            println!(
                "  SendOrderConfirmation ran for event {}: correlation {}, caused by {}",
                short(&ev.id),
                short(&ev.metadata.correlation_id),
                short(ev.metadata.causation_id.as_deref().unwrap_or("-")),
            );
            Ok(())
        },
    ))
    .await?;

    bus.subscribe(
        Subscription::events(
            "UpdateSearchIndex",
            |_: Event<OrderPlaced>, ctx| async move {
                println!(
                    "  UpdateSearchIndex   attempt {}: index unreachable",
                    ctx.attempt()
                );
                Err(HandlerError::fail("search index unreachable"))
            },
        )
        .with_max_retries(2),
    )
    .await?;

    let metadata = Metadata::new()
        .with_actor("user_123", ActorType::User)
        .with_source("web");
    println!(
        "dispatching PlaceOrder (correlation {})",
        short(&metadata.correlation_id)
    );
    let command =
        Command::<PlaceOrder>::from_json(json!({"product_id": "sku_42", "quantity": 3}), metadata)?;
    let receipt = bus.dispatch(CommandEnvelope::wrap(command)).await?;
    println!(
        "command {}: {:?} after {} attempt(s), reply {}",
        short(receipt.id()),
        receipt.status(),
        receipt.attempts(),
        receipt.reply().cloned().unwrap_or_default()
    );

    let letter = dead_letters.recv().await?;
    println!(
        "dead letter: {} gave up on {} after {} runs: {}",
        letter.handler(),
        letter.topic(),
        letter.attempts(),
        letter.reason()
    );

    println!("rejected input:");
    let bad = Command::<PlaceOrder>::from_json(json!({"quantity": 0}), Metadata::new());
    println!("  {}", bad.unwrap_err());
    let bad =
        Command::<PlaceOrder>::from_json(json!({"product_id": "", "quantity": 0}), Metadata::new());
    println!("  {}", bad.unwrap_err());
    Ok(())
}
