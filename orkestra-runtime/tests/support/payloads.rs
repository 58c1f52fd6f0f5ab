//! Hand-written payloads shaped exactly like the ones orkestra-gen emits, so the runtime
//! can be tested on its own.

// The same support module generated code uses.
use orkestra_runtime::codegen::{ObjectReader, finish, required, rules};
use orkestra_runtime::{
    CommandPayload, Event, EventPayload, EventSet, Message, ParamError, Payload, PayloadError,
    RawEvent, Validate, ValidationError,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlaceOrder {
    pub product_id: String,
    pub quantity: i64,
    #[serde(default)]
    pub notes: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupon: Option<String>,
}

impl PlaceOrder {
    fn rules(
        errors: &mut Vec<ParamError>,
        product_id: Option<&String>,
        quantity: Option<&i64>,
        coupon: Option<&String>,
    ) {
        if let Some(v) = product_id {
            rules::min_length(errors, "product_id", v.chars().count(), 1);
        }
        if let Some(v) = quantity {
            rules::min(errors, "quantity", *v, 1);
            rules::max(errors, "quantity", *v, 100);
        }
        if let Some(v) = coupon {
            rules::max_length(errors, "coupon", v.chars().count(), 8);
        }
    }
}

impl Payload for PlaceOrder {
    const TYPE_NAME: &'static str = "Test.Orders.PlaceOrder";
    const TOPIC: &'static str = "orders.commands.place_order";

    fn from_json(value: Value) -> Result<Self, PayloadError> {
        let mut r = ObjectReader::new(
            value,
            &["product_id", "quantity", "notes", "coupon"],
            &["product_id", "quantity"],
        )?;
        let product_id = r.take::<String>("product_id");
        let quantity = r.take::<i64>("quantity");
        let notes = r.take::<String>("notes");
        let coupon = r.take::<String>("coupon");
        Self::rules(
            r.errors(),
            product_id.as_ref(),
            quantity.as_ref(),
            coupon.as_ref(),
        );
        r.finish()?;
        Ok(Self {
            product_id: required(product_id, "product_id")?,
            quantity: required(quantity, "quantity")?,
            notes: notes.unwrap_or_default(),
            coupon,
        })
    }

    fn check(&self) -> Result<(), PayloadError> {
        let mut errors = Vec::new();
        Self::rules(
            &mut errors,
            Some(&self.product_id),
            Some(&self.quantity),
            self.coupon.as_ref(),
        );
        finish(errors)
    }
}
impl CommandPayload for PlaceOrder {}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreateAccount {
    pub email: String,
    pub name: String,
}

impl Payload for CreateAccount {
    const TYPE_NAME: &'static str = "Test.Accounts.CreateAccount";
    const TOPIC: &'static str = "accounts.commands.create_account";

    fn from_json(value: Value) -> Result<Self, PayloadError> {
        let mut r = ObjectReader::new(value, &["email", "name"], &["email", "name"])?;
        let email = r.take::<String>("email");
        let name = r.take::<String>("name");
        r.finish()?;
        let this = Self {
            email: required(email, "email")?,
            name: required(name, "name")?,
        };
        Validate::validate(&this)?;
        Ok(this)
    }

    fn check(&self) -> Result<(), PayloadError> {
        Validate::validate(self)?;
        Ok(())
    }
}
impl CommandPayload for CreateAccount {}

impl Validate for CreateAccount {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.email.contains('@') {
            Ok(())
        } else {
            Err(ValidationError::new("invalid_email").with_field("email"))
        }
    }
}

macro_rules! simple_event {
    ($name:ident, $type_name:literal, $topic:literal, { $($field:ident: $ty:ty),* }) => {
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        pub struct $name { $(pub $field: $ty),* }

        impl Payload for $name {
            const TYPE_NAME: &'static str = $type_name;
            const TOPIC: &'static str = $topic;

            fn from_json(value: Value) -> Result<Self, PayloadError> {
                let mut r = ObjectReader::new(value, &[$(stringify!($field)),*], &[$(stringify!($field)),*])?;
                $(let $field = r.take::<$ty>(stringify!($field));)*
                r.finish()?;
                Ok(Self { $($field: required($field, stringify!($field))?),* })
            }

            fn check(&self) -> Result<(), PayloadError> {
                Ok(())
            }
        }
        impl EventPayload for $name {}
    };
}

simple_event!(OrderPlaced, "Test.Orders.OrderPlaced", "orders.events.order_placed", { order_id: String, quantity: i64 });
simple_event!(OrderCancelled, "Test.Orders.OrderCancelled", "orders.events.order_cancelled", { order_id: String });
simple_event!(OrderShipped, "Test.Orders.OrderShipped", "orders.events.order_shipped", { order_id: String });
simple_event!(AccountCreated, "Test.Accounts.AccountCreated", "accounts.events.account_created", { account_id: String });
simple_event!(Ping, "Test.Misc.Ping", "misc.events.ping", { n: i64 });

/// What a multi-event binding (`events: [OrderPlaced, OrderCancelled]`) receives.
#[derive(Debug)]
pub enum OrderProjectorEvent {
    OrderPlaced(Event<OrderPlaced>),
    OrderCancelled(Event<OrderCancelled>),
}

impl EventSet for OrderProjectorEvent {
    const PATTERNS: &'static [&'static str] = &[OrderPlaced::TOPIC, OrderCancelled::TOPIC];

    fn from_message(message: &Message) -> Result<Self, PayloadError> {
        match message.type_name() {
            OrderPlaced::TYPE_NAME => message.event().map(Self::OrderPlaced),
            OrderCancelled::TYPE_NAME => message.event().map(Self::OrderCancelled),
            other => Err(PayloadError::WrongType {
                expected: "OrderProjectorEvent",
                found: other.to_owned(),
            }),
        }
    }
}

/// What a wildcard binding (`topic: "orders.events.#"`) receives.
#[derive(Debug)]
pub enum OrderAuditEvent {
    OrderPlaced(Event<OrderPlaced>),
    OrderCancelled(Event<OrderCancelled>),
    Other(RawEvent),
}

impl EventSet for OrderAuditEvent {
    const PATTERNS: &'static [&'static str] = &["orders.events.#"];

    fn from_message(message: &Message) -> Result<Self, PayloadError> {
        match message.type_name() {
            OrderPlaced::TYPE_NAME => message.event().map(Self::OrderPlaced),
            OrderCancelled::TYPE_NAME => message.event().map(Self::OrderCancelled),
            _ => message.raw_event().map(Self::Other),
        }
    }
}

/// A command whose serialization panics: proves the in-process path never serializes.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct NoSerialize {
    pub n: i64,
}

impl Serialize for NoSerialize {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("the in-process bus serialized a payload")
    }
}

impl Payload for NoSerialize {
    const TYPE_NAME: &'static str = "Test.Misc.NoSerialize";
    const TOPIC: &'static str = "misc.commands.no_serialize";

    fn from_json(value: Value) -> Result<Self, PayloadError> {
        let mut r = ObjectReader::new(value, &["n"], &["n"])?;
        let n = r.take::<i64>("n");
        r.finish()?;
        Ok(Self {
            n: required(n, "n")?,
        })
    }

    fn check(&self) -> Result<(), PayloadError> {
        Ok(())
    }
}
impl CommandPayload for NoSerialize {}
