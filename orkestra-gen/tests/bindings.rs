//! A binding's `concurrency` and `partition_by` reach the generated subscription.

use orkestra_gen::Source;

#[test]
fn concurrency_and_partition_by_are_set_on_the_subscription() {
    let text = "namespace: Shop.Orders\n\
        events:\n  OrderPlaced:\n    fields:\n      order_id: { type: string, required: true }\n\
        \x20 OrderCancelled:\n    fields:\n      order_id: { type: string, required: true }\n\
        handlers:\n\
        \x20 OrderProjector: { events: [OrderPlaced, OrderCancelled], concurrency: 32, partition_by: order_id }\n\
        \x20 Ledger: { event: OrderPlaced, concurrency: 1 }\n\
        \x20 Mailer: { event: OrderPlaced, partition_by: correlation_id }\n\
        \x20 Audit: { event: OrderCancelled }\n";
    let out = orkestra_gen::generate_from_sources(
        &[Source {
            path: "orders.yaml".into(),
            text: text.into(),
        }],
        "Shop",
    )
    .unwrap();
    let code = out.code;
    assert!(
        code.contains(".with_concurrency(32)") && code.contains(".with_partition_by(\"order_id\")"),
        "{code}"
    );
    assert!(code.contains(".with_concurrency(1)"), "{code}");
    assert!(
        code.contains(".with_partition_by(\"correlation_id\")"),
        "{code}"
    );
    assert_eq!(
        code.matches(".with_concurrency(").count(),
        2,
        "Audit sets none"
    );
    assert_eq!(code.matches(".with_partition_by(").count(), 2, "{code}");
}
