//! my-shop, the service: reads ./orkestra.toml (then the ORKESTRA_* environment),
//! starts everything `my_shop::start` wires, places one order to show it working, and
//! runs until Ctrl-C.

use std::time::Duration;

use orkestra_runtime::{Bus, CommandEnvelope, Config, Metadata, Store};
use serde_json::json;

use my_shop::Sales;
use my_shop::orders::commands::PlaceOrder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load()?;
    let bus = Bus::from_config(&config).await?;
    let store = Store::from_config(&config).await?;
    let started = my_shop::start(&bus, &store, Sales::default()).await?;
    println!(
        "my-shop: bus {}, store {}",
        config.bus.adapter.name(),
        store.adapter()
    );

    // One order, so there is something to see; remove it once real commands come in.
    let order_id = format!("ord_{}", &orkestra_runtime::new_id()[..8]);
    let place = PlaceOrder::new(
        json!({ "order_id": order_id, "product_id": "sku_42", "quantity": 3 }),
        Metadata::new(),
    )?;
    let receipt = bus.dispatch(CommandEnvelope::wrap(place)).await?;
    println!("PlaceOrder {order_id}: {:?}", receipt.status());

    println!("running; press Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    started.stop().await?;
    bus.shutdown(Duration::from_secs(10)).await?;
    Ok(())
}
