//! Derived metadata across the broker: an event a command handler publishes through
//! `ctx.publish` keeps the command's correlation id, actor (id and type) and source, and
//! its causation id is the command's id, whatever metadata the event was built with.

mod support;

use std::time::Duration;

use orkestra_runtime::{ActorType, Command, CommandEnvelope, Event, Metadata, Subscription};
use serde_json::json;
use support::payloads::{OrderPlaced, PlaceOrder};
use support::services::rabbit_bus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_by_a_command_handler_derives_its_metadata() {
    let Some(bus) = rabbit_bus().await else {
        return;
    };
    bus.subscribe(Subscription::command(
        "Placer",
        |cmd: Command<PlaceOrder>, ctx| async move {
            // Fresh metadata on purpose: ctx.publish must derive it from the command.
            let event = Event::new(
                OrderPlaced {
                    order_id: "o-derived".into(),
                    quantity: cmd.quantity,
                },
                Metadata::new(),
            )?;
            ctx.publish(event).await?;
            Ok(json!(null))
        },
    ))
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    bus.subscribe(Subscription::events(
        "Auditor",
        move |ev: Event<OrderPlaced>, ctx| {
            let tx = tx.clone();
            async move {
                tx.send((ev.order_id.clone(), ctx.metadata().clone()))
                    .unwrap();
                Ok(())
            }
        },
    ))
    .await
    .unwrap();
    let cmd = Command::<PlaceOrder>::from_json(
        json!({"product_id": "sku", "quantity": 2}),
        Metadata::new()
            .with_actor("user_5", ActorType::User)
            .with_source("web-shop"),
    )
    .unwrap();
    let (cmd_id, cmd_meta) = (cmd.id.clone(), cmd.metadata.clone());
    bus.dispatch(CommandEnvelope::wrap(cmd)).await.unwrap();
    let (order_id, meta) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("the event handler ran")
        .unwrap();
    assert_eq!(order_id, "o-derived");
    assert_eq!(meta.correlation_id, cmd_meta.correlation_id, "correlation");
    assert_eq!(
        meta.causation_id.as_deref(),
        Some(cmd_id.as_str()),
        "causation"
    );
    assert_eq!(meta.actor_id.as_deref(), Some("user_5"), "actor id");
    assert_eq!(meta.actor_type, ActorType::User, "actor type");
    assert_eq!(meta.source.as_deref(), Some("web-shop"), "source");
}
