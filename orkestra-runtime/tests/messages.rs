//! Message types and payload checks: the documented check order, metadata chains,
//! typed and JSON construction, and erased messages.

mod support;

use orkestra_runtime::{
    ActorType, Command, CommandError, Event, Message, Metadata, Payload, PayloadError, RawEvent,
};
use serde_json::json;
use support::payloads::*;

fn meta() -> Metadata {
    Metadata::new()
        .with_actor("user_123", ActorType::User)
        .with_source("web")
}

#[test]
fn metadata_new_and_derive() {
    let a = Metadata::new();
    let b = Metadata::new();
    assert_ne!(a.correlation_id, b.correlation_id);
    assert!(uuid::Uuid::parse_str(&a.correlation_id).is_ok());
    assert_eq!(a.causation_id, None);
    assert_eq!(a.actor_type, ActorType::System);

    let parent = meta();
    let child = Metadata::derive(&parent, "parent_id");
    assert_eq!(child.correlation_id, parent.correlation_id);
    assert_eq!(child.causation_id.as_deref(), Some("parent_id"));
    assert_eq!(child.actor_id.as_deref(), Some("user_123"));
    assert_eq!(child.actor_type, ActorType::User);
    assert_eq!(child.source.as_deref(), Some("web"));
    assert!(child.issued_at >= parent.issued_at);
}

#[test]
fn metadata_wire_form() {
    let m = meta().with_correlation_id("c1");
    let v = serde_json::to_value(&m).unwrap();
    assert_eq!(v["correlation_id"], "c1");
    assert_eq!(v["actor_type"], "user");
    assert!(
        v.get("causation_id").is_none(),
        "absent options are omitted: {v}"
    );
    let back: Metadata = serde_json::from_value(v).unwrap();
    assert_eq!(back, m);
}

#[test]
fn a_valid_command_from_json() {
    let cmd =
        Command::<PlaceOrder>::from_json(json!({"product_id": "sku_42", "quantity": 3}), meta())
            .unwrap();
    assert!(uuid::Uuid::parse_str(&cmd.id).is_ok());
    assert_eq!(cmd.product_id, "sku_42", "Deref to the params");
    assert_eq!(cmd.quantity, 3);
    assert_eq!(cmd.notes, "", "default applied");
    assert_eq!(cmd.coupon, None);
    assert_eq!(cmd.topic(), "orders.commands.place_order");
}

#[test]
fn check_order_shape_first() {
    for (value, kind) in [
        (json!([1]), "array"),
        (json!("x"), "string"),
        (json!(null), "null"),
        (json!(3), "number"),
    ] {
        let e = Command::<PlaceOrder>::from_json(value, meta()).unwrap_err();
        assert_eq!(e, PayloadError::NotAnObject { found: kind });
    }
}

#[test]
fn check_order_unknown_before_missing() {
    let e = Command::<PlaceOrder>::from_json(
        json!({"quantity": "x", "colour": "red", "size": 1}),
        meta(),
    )
    .unwrap_err();
    assert_eq!(
        e,
        PayloadError::UnknownParams(vec!["colour".into(), "size".into()])
    );
    assert_eq!(e.to_string(), "unknown params: colour, size");
}

#[test]
fn check_order_missing_all_in_declaration_order() {
    let e = Command::<PlaceOrder>::from_json(json!({"notes": 5}), meta()).unwrap_err();
    assert_eq!(
        e,
        CommandError::MissingParams(vec!["product_id", "quantity"])
    );
    let e = Command::<PlaceOrder>::from_json(json!({"quantity": 3}), meta()).unwrap_err();
    assert_eq!(e, CommandError::MissingParams(vec!["product_id"]));
    // null counts as absent
    let e = Command::<PlaceOrder>::from_json(json!({"product_id": null, "quantity": 3}), meta())
        .unwrap_err();
    assert_eq!(e, CommandError::MissingParams(vec!["product_id"]));
}

#[test]
fn types_and_rules_are_reported_together() {
    let e = Command::<PlaceOrder>::from_json(
        json!({"product_id": 42, "quantity": 0, "coupon": "TOOLONGCOUPON"}),
        meta(),
    )
    .unwrap_err();
    let PayloadError::InvalidParams(errors) = &e else {
        panic!("{e:?}")
    };
    let summary: Vec<(&str, &str)> = errors.iter().map(|e| (e.param(), e.code())).collect();
    assert_eq!(
        summary,
        vec![
            ("product_id", "invalid_type"),
            ("quantity", "min"),
            ("coupon", "max_length")
        ]
    );
    assert!(
        e.to_string()
            .contains("quantity: must be at least 1, got 0"),
        "{e}"
    );

    let e = Command::<PlaceOrder>::from_json(json!({"product_id": "a", "quantity": 2.5}), meta())
        .unwrap_err();
    assert_eq!(e.code(), "invalid_params", "a float is not an integer: {e}");
}

#[test]
fn custom_validation_runs_last() {
    let e = Command::<CreateAccount>::from_json(json!({"email": "nope", "name": "Eve"}), meta())
        .unwrap_err();
    assert_eq!(e.code(), "invalid_email");
    assert_eq!(e.validation().unwrap().field(), Some("email"));
    assert!(matches!(e, CommandError::Invalid(_)));
    // A missing param is reported before the custom validation is consulted.
    let e = Command::<CreateAccount>::from_json(json!({"name": "Eve"}), meta()).unwrap_err();
    assert_eq!(e, CommandError::MissingParams(vec!["email"]));
}

#[test]
fn typed_construction_validates_too() {
    let bad = PlaceOrder {
        product_id: String::new(),
        quantity: 500,
        notes: String::new(),
        coupon: None,
    };
    let e = Command::new(bad, meta()).unwrap_err();
    assert_eq!(e.code(), "invalid_params");
    let e = Command::new(
        CreateAccount {
            email: "x".into(),
            name: "y".into(),
        },
        meta(),
    )
    .unwrap_err();
    assert_eq!(e.code(), "invalid_email");
    assert!(
        Command::new(
            CreateAccount {
                email: "x@y.z".into(),
                name: "y".into()
            },
            meta()
        )
        .is_ok()
    );
}

#[test]
fn events_keep_the_correlation_chain() {
    let cmd = Command::<PlaceOrder>::from_json(json!({"product_id": "p", "quantity": 1}), meta())
        .unwrap();
    let ev = Event::from_command(
        &cmd,
        OrderPlaced {
            order_id: "o1".into(),
            quantity: 1,
        },
    )
    .unwrap();
    assert_eq!(ev.metadata.correlation_id, cmd.metadata.correlation_id);
    assert_eq!(ev.metadata.causation_id.as_deref(), Some(cmd.id.as_str()));
    assert_ne!(ev.id, cmd.id);

    let next = Event::<OrderCancelled>::from_event_json(&ev, json!({"order_id": "o1"})).unwrap();
    assert_eq!(next.metadata.correlation_id, cmd.metadata.correlation_id);
    assert_eq!(next.metadata.causation_id.as_deref(), Some(ev.id.as_str()));

    let e = Event::<OrderPlaced>::from_command_json(&cmd, json!({"order_id": "o1"})).unwrap_err();
    assert_eq!(e, PayloadError::MissingParams(vec!["quantity"]));
}

#[test]
fn raw_events_decode_to_their_own_type_only() {
    let ev = Event::new(
        OrderPlaced {
            order_id: "o1".into(),
            quantity: 2,
        },
        meta(),
    )
    .unwrap();
    let raw: RawEvent = ev.to_raw().unwrap();
    assert_eq!(raw.event_type, OrderPlaced::TYPE_NAME);
    assert_eq!(raw.topic, "orders.events.order_placed");
    let back: Event<OrderPlaced> = raw.decode().unwrap();
    assert_eq!(back, ev);
    let e = raw.decode::<OrderCancelled>().unwrap_err();
    assert!(
        matches!(
            e,
            PayloadError::WrongType {
                expected: "Test.Orders.OrderCancelled",
                ..
            }
        ),
        "{e:?}"
    );

    // A raw event with data that breaks the schema is refused on decode.
    let mut broken = raw.clone();
    broken.data = json!({"order_id": "o1", "quantity": "two"});
    assert_eq!(
        broken.decode::<OrderPlaced>().unwrap_err().code(),
        "invalid_params"
    );
}

#[test]
fn erased_messages_hand_back_typed_values() {
    let cmd = Command::<PlaceOrder>::from_json(json!({"product_id": "p", "quantity": 1}), meta())
        .unwrap();
    let msg = Message::from_command(cmd.clone());
    assert_eq!(msg.id(), cmd.id);
    assert_eq!(msg.topic(), "orders.commands.place_order");
    assert_eq!(msg.type_name(), "Test.Orders.PlaceOrder");
    assert_eq!(msg.command::<PlaceOrder>().unwrap(), cmd);
    assert!(matches!(
        msg.command::<CreateAccount>(),
        Err(PayloadError::WrongType { .. })
    ));
    assert!(matches!(
        msg.event::<OrderPlaced>(),
        Err(PayloadError::WrongType { .. })
    ));
    assert_eq!(msg.payload_json().unwrap()["product_id"], "p");

    let raw = orkestra_runtime::RawCommand {
        id: "c1".into(),
        command_type: PlaceOrder::TYPE_NAME.into(),
        topic: PlaceOrder::TOPIC.into(),
        params: json!({"product_id": "p", "quantity": 0}),
        metadata: meta(),
    };
    let e = Message::from_raw_command(raw)
        .command::<PlaceOrder>()
        .unwrap_err();
    assert_eq!(
        e.code(),
        "invalid_params",
        "JSON from the wire is checked like any input"
    );
}

#[test]
fn command_wire_form_round_trips() {
    let cmd = Command::<PlaceOrder>::from_json(json!({"product_id": "p", "quantity": 1}), meta())
        .unwrap();
    let text = serde_json::to_string(&cmd).unwrap();
    let back: Command<PlaceOrder> = serde_json::from_str(&text).unwrap();
    assert_eq!(back, cmd);
}
