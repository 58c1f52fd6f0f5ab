//! The aggregate given / when / then (no store, no bus), then the service as `main`
//! starts it, on the in-process bus and the memory store.

use orkestra_runtime::{Bus, Command, CommandEnvelope, CommandStatus, Metadata, Store};
use serde_json::json;

use my_shop::orders::aggregates::{OrderEvent, OrderTest};
use my_shop::orders::commands::PlaceOrder;
use my_shop::orders::events::OrderPlaced;
use my_shop::{Orders, Sales};

fn place(order_id: &str, quantity: i64) -> Command<PlaceOrder> {
    PlaceOrder::new(
        json!({ "order_id": order_id, "product_id": "sku_42", "quantity": quantity }),
        Metadata::new(),
    )
    .expect("a valid PlaceOrder")
}

#[tokio::test]
async fn a_new_order_is_placed() {
    // Given no events, when PlaceOrder, then OrderPlaced.
    let events = OrderTest::given(Orders, vec![])
        .when(place("ord_1", 3))
        .await
        .unwrap();
    match events.as_slice() {
        [OrderEvent::OrderPlaced(placed)] => assert_eq!(placed.quantity, 3),
        other => panic!("expected one OrderPlaced, got {other:?}"),
    }
}

#[tokio::test]
async fn an_order_is_placed_only_once() {
    // Given it was placed, when PlaceOrder again, then a rejection.
    let given = vec![OrderEvent::OrderPlaced(OrderPlaced {
        order_id: "ord_1".into(),
        product_id: "sku_42".into(),
        quantity: 3,
    })];
    let refused = OrderTest::given(Orders, given)
        .when(place("ord_1", 1))
        .await;
    assert!(refused.is_err(), "{refused:?}");
}

#[test]
fn a_quantity_of_zero_is_refused_before_anything_runs() {
    let zero = PlaceOrder::new(
        json!({ "order_id": "ord_1", "product_id": "sku_42", "quantity": 0 }),
        Metadata::new(),
    );
    assert!(zero.is_err());
}

#[tokio::test]
async fn a_placed_order_reaches_the_projection() {
    let bus = Bus::in_process();
    let store = Store::memory();
    let sales = Sales::default();
    let started = my_shop::start(&bus, &store, sales.clone()).await.unwrap();
    let receipt = bus
        .dispatch(CommandEnvelope::wrap(place("ord_1", 3)))
        .await
        .unwrap();
    assert_eq!(receipt.status(), CommandStatus::Succeeded);
    // The aggregate replies with where it appended: wait until the projection is there.
    let position = receipt.reply().unwrap()["position"].as_u64().unwrap();
    started
        .projections()
        .unwrap()
        .wait_for("ProductSales", position)
        .await
        .unwrap();
    assert_eq!(sales.units("sku_42"), 3);
    started.stop().await.unwrap();
}
