//! Topic names: how they are derived from schema names, and how patterns match them.
//!
//! Matching follows RabbitMQ's topic exchange exactly, so a binding means the same thing
//! on the in-process bus and on the broker. The implementation is the `orkestra-topic`
//! crate's, shared with the generator, so what `orkestra-gen` accepts and warns about is
//! what the bus routes.
//!
//! ```
//! use orkestra_runtime::topic::{derive, matches};
//! assert_eq!(derive("MyApp.Orders.Commands.PlaceOrder", "MyApp"), "orders.commands.place_order");
//! assert_eq!(derive("MyApp.Orders.Events.OrderPlaced", "MyApp"), "orders.events.order_placed");
//! assert!(matches("orders.events.#", "orders.events.order_placed"));
//! assert!(!matches("orders.*", "orders.events.order_placed"));
//! ```

pub use orkestra_topic::{DEAD_LETTER, derive, is_pattern, matches, strip_prefix};
