//! The seed semantics end to end: generated code from `schemas/` on the in-process bus.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use orkestra_runtime::{
    Bus, Command, CommandEnvelope, CommandError, CommandStatus, Event, HandlerContext,
    HandlerError, Metadata,
};
use orkestra_tests::accounts::commands::CreateAccount;
use orkestra_tests::accounts::types::Plan;
use orkestra_tests::orders::commands::PlaceOrder;
use orkestra_tests::orders::events::{OrderCancelled, OrderPlaced};
use orkestra_tests::orders::handlers::{self, OrderAuditEvent, OrderProjectorEvent};
use orkestra_tests::orders::types::Priority;
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[test]
fn generated_constructors_check_in_the_documented_order() {
    let e = CreateAccount::new(json!({"name": "Eve"}), Metadata::new()).unwrap_err();
    assert_eq!(e, CommandError::MissingParams(vec!["email"]));
    let e =
        CreateAccount::new(json!({"email": "nope", "name": "Eve"}), Metadata::new()).unwrap_err();
    assert_eq!(e.code(), "invalid_email");
    let e = CreateAccount::new(
        json!({"email": "a@b.c", "name": "Eve", "plan": "gold"}),
        Metadata::new(),
    )
    .unwrap_err();
    assert_eq!(e.code(), "invalid_params", "{e}");
    let e = PlaceOrder::new(
        json!({"product_id": "p", "quantity": 1, "colour": "red"}),
        Metadata::new(),
    )
    .unwrap_err();
    assert_eq!(e, CommandError::UnknownParams(vec!["colour".into()]));
    let e = PlaceOrder::new(
        json!({"product_id": "p", "quantity": 1, "ship_to": {"street": "", "zip": "x"}}),
        Metadata::new(),
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("ship_to.street: must have a length of at least 1"),
        "{text}"
    );
    assert!(
        text.contains("ship_to.zip: must match the pattern"),
        "{text}"
    );
}

#[test]
fn defaults_keyword_fields_and_topics() {
    let cmd =
        CreateAccount::new(json!({"email": "a@b.c", "name": "Eve"}), Metadata::new()).unwrap();
    assert_eq!(cmd.plan, Plan::Free);
    assert_eq!(
        cmd.r#type, "personal",
        "a field named `type` is a raw identifier"
    );
    let wire = serde_json::to_value(&cmd.params).unwrap();
    assert_eq!(wire["type"], "personal", "and keeps its name on the wire");
    let order =
        PlaceOrder::new(json!({"product_id": "p", "quantity": 2}), Metadata::new()).unwrap();
    assert_eq!(order.notes, "");
    assert_eq!(order.priority, Priority::Standard);
    assert!(order.tags.is_empty());
    assert_eq!(order.ship_to, None);
    assert_eq!(PlaceOrder::TOPIC, "orders.commands.place_order");
    assert_eq!(
        orkestra_tests::orders::topics::ORDER_PLACED,
        "orders.events.order_placed"
    );
    assert_eq!(OrderPlaced::TYPE_NAME, "Shop.Orders.OrderPlaced");
}

#[test]
fn typed_construction_validates() {
    let bad = CreateAccount {
        email: "x".into(),
        name: "n".into(),
        plan: Plan::Pro,
        r#type: "business".into(),
    };
    assert_eq!(
        Command::new(bad, Metadata::new()).unwrap_err().code(),
        "invalid_email"
    );
}

struct Orders;
impl handlers::PlaceOrderHandler for Orders {
    async fn execute(
        &self,
        cmd: Command<PlaceOrder>,
        ctx: HandlerContext,
    ) -> Result<Value, HandlerError> {
        let ev = OrderPlaced::from_command(
            &cmd,
            json!({"order_id": "o1", "product_id": cmd.product_id, "quantity": cmd.quantity, "placed_at": "2026-11-27T10:00:00Z"}),
        )?;
        ctx.publish(ev).await?;
        Ok(json!({"order_id": "o1"}))
    }
}

struct Recorder(mpsc::UnboundedSender<String>);
impl handlers::OrderProjector for Recorder {
    async fn handle_event(
        &self,
        ev: OrderProjectorEvent,
        _: HandlerContext,
    ) -> Result<(), HandlerError> {
        let s = match ev {
            OrderProjectorEvent::OrderPlaced(e) => format!("projector:placed:{}", e.order_id),
            OrderProjectorEvent::OrderCancelled(e) => format!("projector:cancelled:{}", e.order_id),
        };
        self.0.send(s).unwrap();
        Ok(())
    }
}
impl handlers::OrderAudit for Recorder {
    async fn handle_event(
        &self,
        ev: OrderAuditEvent,
        _: HandlerContext,
    ) -> Result<(), HandlerError> {
        let s = match ev {
            OrderAuditEvent::OrderPlaced(e) => format!(
                "audit:placed:{}:{}",
                e.metadata.correlation_id,
                e.metadata.causation_id.unwrap_or_default()
            ),
            OrderAuditEvent::OrderCancelled(_) => "audit:cancelled".into(),
            OrderAuditEvent::Other(raw) => format!("audit:other:{}", raw.event_type),
        };
        self.0.send(s).unwrap();
        Ok(())
    }
}

struct Flaky(Arc<AtomicU32>);
impl handlers::UpdateSearchIndex for Flaky {
    async fn handle_event(
        &self,
        _: Event<OrderPlaced>,
        _: HandlerContext,
    ) -> Result<(), HandlerError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(HandlerError::fail("index down"))
    }
}

#[tokio::test]
async fn seed_flow_through_the_in_process_bus() {
    let bus = Bus::in_process();
    let mut dead = bus.dead_letters().await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let runs = Arc::new(AtomicU32::new(0));
    bus.subscribe(handlers::place_order_handler(Orders))
        .await
        .unwrap();
    bus.subscribe(handlers::order_projector(Recorder(tx.clone())))
        .await
        .unwrap();
    bus.subscribe(handlers::order_audit(Recorder(tx)))
        .await
        .unwrap();
    bus.subscribe(handlers::update_search_index(Flaky(runs.clone())))
        .await
        .unwrap();

    let cmd =
        PlaceOrder::new(json!({"product_id": "sku", "quantity": 1}), Metadata::new()).unwrap();
    let (id, correlation) = (cmd.id.clone(), cmd.metadata.correlation_id.clone());
    let receipt = bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    assert_eq!(receipt.status(), CommandStatus::Succeeded);
    assert_eq!(receipt.reply(), Some(&json!({"order_id": "o1"})));

    let mut seen = Vec::new();
    while let Ok(s) = rx.try_recv() {
        seen.push(s);
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            format!("audit:placed:{correlation}:{id}"),
            "projector:placed:o1".to_owned()
        ]
    );

    // UpdateSearchIndex has max_retries: 2 in the schema: 3 runs, then a dead letter.
    let letter = dead.recv().await.unwrap();
    assert_eq!(letter.handler(), "UpdateSearchIndex");
    assert_eq!(letter.attempts(), 3);
    assert_eq!(runs.load(Ordering::SeqCst), 3);

    // The multi-event binding receives the other event type too.
    let cancelled = OrderCancelled::new(json!({"order_id": "o1"}), Metadata::new()).unwrap();
    bus.publish(orkestra_runtime::EventEnvelope::wrap(cancelled))
        .await
        .unwrap();
    let mut seen = vec![rx.recv().await.unwrap(), rx.recv().await.unwrap()];
    seen.sort();
    assert_eq!(
        seen,
        vec![
            "audit:cancelled".to_owned(),
            "projector:cancelled:o1".to_owned()
        ]
    );
}

#[test]
fn hostile_schema_strings_round_trip_unchanged() {
    use orkestra_tests::hostile::nasty::commands::Tricky;
    use orkestra_tests::hostile::nasty::types::Status;
    let cmd = Tricky::new(json!({"type": "t"}), Metadata::new()).unwrap();
    assert_eq!(cmd.r#async, "quote \" backslash \\ and \u{202e} bidi");
    assert_eq!(cmd.r#match, 3);
    assert!(!cmd.self_);
    assert_eq!(cmd.status, Status::OutOfStock);
    assert_eq!(cmd.nested.get("b\"").map(Vec::len), Some(0));
    let wire = serde_json::to_value(&cmd.params).unwrap();
    assert_eq!(
        wire["self"], false,
        "sanitised identifiers keep their wire names"
    );
    assert_eq!(wire["status"], "out of stock");
    let e = Tricky::new(
        json!({"type": "t", "pattern_field": "ABC", "price": "1.2.3"}),
        Metadata::new(),
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("pattern_field: must match the pattern"),
        "{text}"
    );
    assert!(text.contains("price: invalid decimal"), "{text}");
}
