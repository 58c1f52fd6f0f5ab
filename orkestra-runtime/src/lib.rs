//! # orkestra-runtime
//!
//! The runtime of [Orkestra](https://github.com/orkestra-rs/orkestra), a CQRS and
//! event-sourcing toolkit whose centre is a code generator: you describe commands, events
//! and handler bindings in YAML, `orkestra-gen` turns them into typed Rust in your
//! build.rs, and that code runs on this crate. It provides the message types
//! ([`Command`], [`Event`], [`Metadata`]), envelopes that track delivery
//! ([`CommandEnvelope`], [`EventEnvelope`]), topic matching ([`topic`]), the handler
//! plumbing ([`HandlerContext`], [`HandlerError`], [`Subscription`]), the [`Bus`] that runs
//! handlers (in-process or RabbitMQ) and the event [`Store`] (memory, embedded SQLite,
//! PostgreSQL, EventStoreDB), both chosen by [`Config`]; on top of them [`aggregate`]s,
//! [`projection`]s, the [`relay`] (transactional outbox) and [`process`] managers.
//! Moving from one bus or store to another is a configuration change; handler code stays
//! as it is.
//!
//! The guide (`book/` in the repository) walks through a service of your own, from
//! `cargo new` to RabbitMQ and several copies.
//!
//! ## A command handler, end to end
//!
//! From this schema, `orkestra-gen` generates the payload types `PlaceOrder` and
//! `OrderPlaced` (with their checks and topics) and, for the binding, a handler trait and
//! its [`Subscription`]; a crate takes them in with [`include_generated!`]. Written out
//! with the runtime alone, the binding is a [`Subscription::command`] on the in-process
//! bus, and the handler stores its event in the in-memory store before publishing it:
//!
//! ```yaml
//! namespace: Shop.Orders
//! commands:
//!   PlaceOrder:
//!     params:
//!       product_id: { type: string, required: true, min_length: 1 }
//!       quantity:   { type: integer, required: true, min: 1 }
//! events:
//!   OrderPlaced:
//!     fields:
//!       order_id: { type: string, required: true }
//!       quantity: { type: integer, required: true }
//! handlers:
//!   PlaceOrderHandler: { command: PlaceOrder, emits: [OrderPlaced] }
//! ```
//!
//! ```
//! use orkestra_runtime::{
//!     Bus, Command, CommandEnvelope, CommandStatus, Event, EventEnvelope, ExpectedVersion,
//!     HandlerError, Metadata, Store, Subscription,
//! };
//! use serde_json::json;
//! # // What orkestra-gen writes for the schema above, reduced to what this example uses
//! # // (generated code checks every rule and rejects unknown params).
//! # mod orders {
//! #     use orkestra_runtime::{CommandPayload, EventPayload, Payload, PayloadError};
//! #     #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
//! #     pub struct PlaceOrder { pub product_id: String, pub quantity: i64 }
//! #     impl Payload for PlaceOrder {
//! #         const TYPE_NAME: &'static str = "Shop.Orders.PlaceOrder";
//! #         const TOPIC: &'static str = "orders.commands.place_order";
//! #         fn from_json(v: serde_json::Value) -> Result<Self, PayloadError> { Ok(serde_json::from_value(v)?) }
//! #         fn check(&self) -> Result<(), PayloadError> { Ok(()) }
//! #     }
//! #     impl CommandPayload for PlaceOrder {}
//! #     #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
//! #     pub struct OrderPlaced { pub order_id: String, pub quantity: i64 }
//! #     impl Payload for OrderPlaced {
//! #         const TYPE_NAME: &'static str = "Shop.Orders.OrderPlaced";
//! #         const TOPIC: &'static str = "orders.events.order_placed";
//! #         fn from_json(v: serde_json::Value) -> Result<Self, PayloadError> { Ok(serde_json::from_value(v)?) }
//! #         fn check(&self) -> Result<(), PayloadError> { Ok(()) }
//! #     }
//! #     impl EventPayload for OrderPlaced {}
//! # }
//! use orders::{OrderPlaced, PlaceOrder};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let bus = Bus::in_process();
//!     let store = Store::memory();
//!
//!     let events = store.clone();
//!     bus.subscribe(Subscription::command(
//!         "PlaceOrderHandler",
//!         move |cmd: Command<PlaceOrder>, ctx| {
//!             let store = events.clone();
//!             async move {
//!                 let order_id = format!("ord_{}", &cmd.id[..8]);
//!                 // Same correlation id as the command; caused by it.
//!                 let placed = Event::from_command(
//!                     &cmd,
//!                     OrderPlaced { order_id: order_id.clone(), quantity: cmd.quantity },
//!                 )?;
//!                 // Stored first, then published to the event's subscribers.
//!                 store
//!                     .append_and_publish(
//!                         ctx.bus(),
//!                         &format!("order-{order_id}"),
//!                         ExpectedVersion::NoStream,
//!                         vec![EventEnvelope::wrap(placed)],
//!                     )
//!                     .await
//!                     .map_err(HandlerError::fail)?;
//!                 Ok(json!({ "order_id": order_id }))
//!             }
//!         },
//!     ))
//!     .await?;
//!
//!     let cmd = Command::<PlaceOrder>::from_json(
//!         json!({ "product_id": "sku_42", "quantity": 3 }),
//!         Metadata::new(),
//!     )?;
//!     // In-process, dispatch returns once the handler (and its events' handlers) are done.
//!     let receipt = bus.dispatch(CommandEnvelope::wrap(cmd).max_retries(2)).await?;
//!     assert_eq!(receipt.status(), CommandStatus::Succeeded);
//!     let order_id = receipt.reply().and_then(|r| r["order_id"].as_str()).ok_or("no reply")?;
//!
//!     let stored = store.read_stream(&format!("order-{order_id}"), 0, 10).await?;
//!     let placed: Event<OrderPlaced> = stored[0].decode()?;
//!     assert_eq!(placed.quantity, 3);
//!     Ok(())
//! }
//! ```
//!
//! With generated code the closure is your `impl orders::handlers::PlaceOrderHandler`,
//! subscribed with `orders::handlers::place_order_handler(MyHandler)` or, every binding
//! of the namespace at once, `orders::Wiring { .. }.start(&bus, &store)`. A service reads
//! its adapters from `orkestra.toml` and the `ORKESTRA_*` environment:
//!
//! ```
//! use orkestra_runtime::{Bus, Config, Store};
//! # tokio_test_block(async {
//! let config = Config::from_toml_str("[bus]\nadapter = \"in_process\"\n[store]\nadapter = \"memory\"\n")?;
//! let bus = Bus::from_config(&config).await?;
//! let store = Store::from_config(&config).await?;
//! # let _ = (bus, store);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # });
//! # fn tokio_test_block<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```
//!
//! ## Layers
//!
//! Each module uses only the ones above it in this list (see `ARCHITECTURE.md`):
//! [`config`] and [`DriverError`] → messages and payloads (the root re-exports,
//! [`topic`]) → [`trace`] (context, sampling, spans) → handler types ([`HandlerError`],
//! [`EventSet`], [`DeadLetter`]) → [`bus`] and [`store`] → the workers' leases and their
//! [`runners::status`] → appending and publishing
//! together ([`Store::append_and_publish`], [`aggregate`], [`decision`], [`projection`], [`relay`]) → [`telemetry`](crate#cargo-features).
//!
//! ## Cargo features
//!
//! The in-process bus, the in-memory store, the configuration and the spans (through
//! `tracing`) need no feature.
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `sqlite` | **on** | the embedded single-file event store (SQLite, bundled: nothing to install), the default `store.adapter` |
//! | `postgres` | off | the PostgreSQL event store (tokio-postgres, deadpool) |
//! | `eventstoredb` | off | the EventStoreDB / KurrentDB event store (the `kurrentdb` client) |
//! | `rabbitmq` | off | the RabbitMQ bus (lapin; `amqps://` with the system roots), and `bus::rabbitmq::DeadLetterAdmin` to list, show, replay and purge its dead letters |
//! | `telemetry` | off | `telemetry::Telemetry`: one-call OpenTelemetry export (stdout), log formatting, a printable trace tree, and `Telemetry::serve`: `/metrics` (Prometheus text), `/healthz`, `/readyz` |
//! | `otlp` | off | OTLP (HTTP/protobuf) span and metric export for `telemetry` (implies it) |
//!
//! The [`metrics`] instruments need no feature: they record into whatever meter
//! provider [`metrics::set_meter_provider`] installed, and cost nothing without one.
//!
//! A configuration that names an adapter whose feature is off is refused with an error
//! that names the setting and the missing feature.

#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// Layer 0: settings and error causes.
pub mod config;
mod error;
mod sync;
// Layer 1: what travels.
mod message;
// Layer 2: trace context, sampling, spans; the metrics' instruments.
pub mod metrics;
pub mod trace;
// Layer 3: what a handler is and returns.
mod handler;
// Layer 3½: personal data: subjects' keys, the encryption of personal fields.
pub mod keys;
// Layer 4: buses and stores.
pub mod bus;
pub mod store;
// Layer 4.5: what workers share across copies of a service.
mod runner;
/// The workers of every copy of a service (projections, the relay, process managers), as
/// the store's leases and checkpoints show them: [`runners::status`] is what
/// `orkestra status` prints.
pub mod runners {
    pub use crate::runner::status::{RunnerStatus, status};
}
// Layer 5: built on a bus and a store.
pub mod aggregate;
pub mod decision;
pub mod process;
pub mod projection;
mod publish;
pub mod relay;
pub mod wiring;
// Layer 6: process-wide telemetry setup.
#[cfg(feature = "telemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "telemetry")))]
pub mod telemetry;

#[doc(hidden)]
pub mod codegen;

error::human_debug!(
    config::ConfigError,
    bus::BusError,
    store::StoreError,
    projection::ProjectionError,
    process::ProcessError,
    relay::RelayError,
    keys::KeyError,
);
#[cfg(feature = "telemetry")]
error::human_debug!(telemetry::TelemetryError);
#[cfg(feature = "rabbitmq")]
error::human_debug!(bus::rabbitmq::AdminError);

/// The PostgreSQL client the store uses, for projections that write their read model in
/// [`projection::ProjectionContext::postgres`]'s transaction.
#[cfg(feature = "postgres")]
pub use tokio_postgres;

pub use bus::{Bus, BusError, DeadLetters, HandlerContext, Subscription, Target};
pub use config::{Config, ConfigError, InboxMode, KeysMode, PublishMode, SecretUrl};
pub use error::DriverError;
pub use handler::{DEFAULT_MEMORY_INBOX, DeadLetter, EventSet, HandlerError, Inbox, InboxError};
pub use keys::{KeyError, KeyStore};
pub use message::topic;
pub use message::{
    ActorType, Command, CommandEnvelope, CommandError, CommandPayload, CommandStatus,
    DEFAULT_MAX_RETRIES, Decimal, Event, EventEnvelope, EventError, EventPayload, EventStatus,
    HandlerOutcome, Message, MessageKind, Metadata, ParamError, Payload, PayloadError, RawCommand,
    RawEvent, TransitionError, UpcastError, UpcastStep, UpcastSteps, Validate, ValidationError,
    new_id,
};
pub use process::ProcessManagers;
pub use store::{
    AllSubscription, AppendCondition, AppendResult, EventData, ExpectedVersion, Query, QueryItem,
    RecordedEvent, Snapshot, Store, StoreError, Tag,
};

/// Includes the code `orkestra-gen` wrote to `$OUT_DIR/orkestra_generated.rs` from build.rs.
#[macro_export]
macro_rules! include_generated {
    () => {
        include!(concat!(env!("OUT_DIR"), "/orkestra_generated.rs"));
    };
}
