//! The payload types of the orders domain, written the way orkestra-gen emits them.

use orkestra_runtime::{
    CommandPayload, EventPayload, ObjectReader, ParamError, Payload, PayloadError, finish,
    required, rules,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Place an order for a product.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlaceOrder {
    /// The product.
    pub product_id: String,
    /// How many.
    pub quantity: i64,
}

impl PlaceOrder {
    fn rules(errors: &mut Vec<ParamError>, product_id: Option<&String>, quantity: Option<&i64>) {
        if let Some(v) = product_id {
            rules::min_length(errors, "product_id", v.chars().count(), 1);
        }
        if let Some(v) = quantity {
            rules::min(errors, "quantity", *v, 1);
        }
    }
}

impl Payload for PlaceOrder {
    const TYPE_NAME: &'static str = "Shop.Orders.PlaceOrder";
    const TOPIC: &'static str = "orders.commands.place_order";

    fn from_json(value: Value) -> Result<Self, PayloadError> {
        let mut r = ObjectReader::new(
            value,
            &["product_id", "quantity"],
            &["product_id", "quantity"],
        )?;
        let product_id = r.take::<String>("product_id");
        let quantity = r.take::<i64>("quantity");
        Self::rules(r.errors(), product_id.as_ref(), quantity.as_ref());
        r.finish()?;
        Ok(Self {
            product_id: required(product_id, "product_id")?,
            quantity: required(quantity, "quantity")?,
        })
    }

    fn check(&self) -> Result<(), PayloadError> {
        let mut errors = Vec::new();
        Self::rules(&mut errors, Some(&self.product_id), Some(&self.quantity));
        finish(errors)
    }
}

impl CommandPayload for PlaceOrder {}

/// An order was placed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The new order.
    pub order_id: String,
    /// How many.
    pub quantity: i64,
}

impl Payload for OrderPlaced {
    const TYPE_NAME: &'static str = "Shop.Orders.OrderPlaced";
    const TOPIC: &'static str = "orders.events.order_placed";

    fn from_json(value: Value) -> Result<Self, PayloadError> {
        let mut r = ObjectReader::new(value, &["order_id", "quantity"], &["order_id", "quantity"])?;
        let order_id = r.take::<String>("order_id");
        let quantity = r.take::<i64>("quantity");
        r.finish()?;
        Ok(Self {
            order_id: required(order_id, "order_id")?,
            quantity: required(quantity, "quantity")?,
        })
    }

    fn check(&self) -> Result<(), PayloadError> {
        Ok(())
    }
}

impl EventPayload for OrderPlaced {}
