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

#[test]
fn retry_delays_are_set_on_the_subscription() {
    let text = "namespace: Shop.Mail\n\
        events:\n  Sent:\n    fields:\n      to: { type: string, required: true }\n\
        handlers:\n\
        \x20 Mailer: { event: Sent, retry_delay: 1s, retry_backoff: 2, retry_delay_max: 4s }\n\
        \x20 Pager: { event: Sent, retry_delay: 250ms }\n";
    let out = orkestra_gen::generate_from_sources(
        &[Source {
            path: "mail.yaml".into(),
            text: text.into(),
        }],
        "Shop",
    )
    .unwrap();
    let code = out.code.replace(char::is_whitespace, "");
    assert!(
        code.contains(".with_retry_delay(::core::time::Duration::from_millis(1000)).with_retry_backoff(2.0_f64).with_retry_delay_max(::core::time::Duration::from_millis(4000))"),
        "{code}"
    );
    assert!(
        code.contains(".with_retry_delay(::core::time::Duration::from_millis(250))"),
        "{code}"
    );
}
