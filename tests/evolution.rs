//! Schema evolution with generated code (`book/src/evolution.md`): events read tolerantly
//! and upcast wherever they are decoded (every store that runs here, store
//! subscriptions, both buses), commands strict, rules checked when built and not when
//! read, and every failure a decode error that loses nothing.

#[path = "../orkestra-runtime/tests/support/services.rs"]
#[allow(dead_code)]
mod services;

use std::time::Duration;

use futures_util::StreamExt;
use orkestra_runtime::{
    Bus, EventData, EventEnvelope, ExpectedVersion, HandlerContext, HandlerError, Message,
    Metadata, PayloadError, RawEvent, Store, StoreError, new_id,
};
use orkestra_tests::evolution::inventory::commands::Restock;
use orkestra_tests::evolution::inventory::events::{ItemReserved, PriceChanged, StockCounted};
use orkestra_tests::evolution::inventory::handlers::{self, InventoryLogEvent};
use serde_json::{Value, json};
use tokio::sync::mpsc;

fn raw(event_type: &str, version: u32, data: Value) -> RawEvent {
    RawEvent {
        id: new_id(),
        event_type: event_type.into(),
        version,
        topic: "inventory.events.any".into(),
        data,
        metadata: Metadata::new(),
    }
}

/// Version 1 of `ItemReserved`: `product_id` (renamed `sku` in 2), `legacy_ref` (removed
/// in 3), no `quantity` (added with 1 in 3) and no `channel`.
fn v1_reserved() -> Value {
    json!({"order_id": "o-1", "product_id": "sku-1", "legacy_ref": "L-9"})
}

/// What a release after this one writes: an extra field, also inside a nested type.
fn newer_reserved() -> Value {
    json!({
        "order_id": "o-2", "sku": "sku-2", "quantity": 4, "channel": "app",
        "gift_wrap": true,
        "line": {"sku": "sku-2", "quantity": 4, "warehouse": "north"}
    })
}

fn assert_v1_upcast(e: &ItemReserved) {
    assert_eq!(e.order_id, "o-1");
    assert_eq!(e.sku, "sku-1", "renamed by step 1");
    assert_eq!(e.quantity, 1, "added by step 2");
    assert_eq!(e.channel, "web", "added by step 2");
    assert_eq!(e.line, None);
}

#[test]
fn events_ignore_fields_they_do_not_declare_nested_too() {
    let event = ItemReserved::new(newer_reserved(), Metadata::new()).unwrap();
    assert_eq!(event.sku, "sku-2");
    assert_eq!(event.line.as_ref().unwrap().quantity, 4);
    let decoded = raw(ItemReserved::TYPE_NAME, 3, newer_reserved())
        .decode::<ItemReserved>()
        .unwrap();
    assert_eq!(decoded.data, event.data);
    // A newer version is read as it is: nothing to upcast, extras ignored.
    let newer = raw(ItemReserved::TYPE_NAME, 4, newer_reserved());
    assert_eq!(newer.decode::<ItemReserved>().unwrap().data, event.data);
    // The raw event still carries everything.
    assert_eq!(
        Message::from_raw_event(newer).raw_event().unwrap().data["gift_wrap"],
        true
    );
}

#[test]
fn commands_refuse_unknown_params_nested_too() {
    let e = Restock::new(
        json!({
            "lines": [{"sku": "a", "quantity": 1}, {"sku": "b", "quantity": 2, "colour": "red"}],
            "first": {"sku": "a", "quantity": 1, "tags": {"t": {"label": "x", "extra": 1}}}
        }),
        Metadata::new(),
    )
    .unwrap_err();
    assert_eq!(
        e,
        PayloadError::UnknownParams(vec!["lines[1].colour".into(), "first.tags.t.extra".into()])
    );
    let ok = Restock::new(
        json!({"lines": [{"sku": "a", "quantity": 1}]}),
        Metadata::new(),
    );
    assert!(ok.is_ok(), "{ok:?}");
    let e = Restock::new(json!({"lines": [], "zone": 1}), Metadata::new()).unwrap_err();
    assert_eq!(e, PayloadError::UnknownParams(vec!["zone".into()]));
}

#[test]
fn rules_are_checked_when_built_not_when_read() {
    let short = json!({"order_id": "o", "sku": "ab", "quantity": 0});
    let e = ItemReserved::new(short.clone(), Metadata::new()).unwrap_err();
    assert_eq!(e.code(), "invalid_params", "{e}");
    let read = raw(ItemReserved::TYPE_NAME, 3, short)
        .decode::<ItemReserved>()
        .unwrap();
    assert_eq!((read.sku.as_str(), read.quantity), ("ab", 0));

    let negative = json!({"sku": "s", "count": -1});
    let e = StockCounted::new(negative.clone(), Metadata::new()).unwrap_err();
    assert_eq!(e.code(), "negative_count");
    let read = raw(StockCounted::TYPE_NAME, 2, negative)
        .decode::<StockCounted>()
        .unwrap();
    assert_eq!(read.count, -1);

    // The shape is still checked on read.
    let e = raw(
        ItemReserved::TYPE_NAME,
        3,
        json!({"order_id": "o", "quantity": "many"}),
    )
    .decode::<ItemReserved>()
    .unwrap_err();
    assert_eq!(e, PayloadError::MissingParams(vec!["sku"]));
}

#[test]
fn older_versions_run_their_chain() {
    let e = raw(ItemReserved::TYPE_NAME, 1, v1_reserved())
        .decode::<ItemReserved>()
        .unwrap();
    assert_v1_upcast(&e);
    // Version 2 already has `sku` and a quantity: `added` does not overwrite it.
    let v2 = json!({"order_id": "o", "sku": "s-2", "quantity": 7, "legacy_ref": "x"});
    let e = raw(ItemReserved::TYPE_NAME, 2, v2)
        .decode::<ItemReserved>()
        .unwrap();
    assert_eq!(
        (e.sku.as_str(), e.quantity, e.channel.as_str()),
        ("s-2", 7, "web")
    );
    // A custom step.
    let v1 = json!({"sku": "s", "counts": [3, 4, 5]});
    let e = raw(StockCounted::TYPE_NAME, 1, v1)
        .decode::<StockCounted>()
        .unwrap();
    assert_eq!(e.count, 12);
    // Version 2 of `PriceChanged` through its one step.
    let v2 = json!({"sku": "s", "cents": 250});
    let e = raw(PriceChanged::TYPE_NAME, 2, v2)
        .decode::<PriceChanged>()
        .unwrap();
    assert_eq!(e.price_cents, 250);
}

/// (event type, version, data, what the error must say) for data no chain can read.
fn unreadable() -> Vec<(&'static str, u32, Value, &'static str)> {
    vec![
        (
            PriceChanged::TYPE_NAME,
            1,
            json!({"sku": "s", "amount": 1}),
            "no upcast step from version 1",
        ),
        (
            StockCounted::TYPE_NAME,
            1,
            json!({"sku": "s"}),
            "version 1 data has no `counts` list",
        ),
        (
            StockCounted::TYPE_NAME,
            1,
            json!({"sku": "panic", "counts": []}),
            "an upcast step panicked: a step that panics",
        ),
        // A release newer than this one renamed a required field: read as it is, the
        // field is missing.
        (
            ItemReserved::TYPE_NAME,
            4,
            json!({"order_id": "o", "item": "s", "quantity": 1}),
            "missing required params: sku",
        ),
    ]
}

fn decode_any(raw: &RawEvent) -> Result<(), PayloadError> {
    match raw.event_type.as_str() {
        t if t == PriceChanged::TYPE_NAME => raw.decode::<PriceChanged>().map(drop),
        t if t == StockCounted::TYPE_NAME => raw.decode::<StockCounted>().map(drop),
        _ => raw.decode::<ItemReserved>().map(drop),
    }
}

#[test]
fn unreadable_data_is_a_clear_error_not_a_panic() {
    for (event_type, version, data, says) in unreadable() {
        let e = decode_any(&raw(event_type, version, data)).unwrap_err();
        assert!(e.to_string().contains(says), "{e} should say {says}");
        if version < 4 {
            assert_eq!(e.code(), "upcast");
            assert!(
                e.to_string().starts_with(&format!(
                    "cannot upcast {event_type} from version {version}"
                )),
                "{e}"
            );
        }
    }
}

/// Appends version 1, current and newer data, then reads them back through
/// `read_stream` and a store subscription; the unreadable ones fail with a decode error
/// and stay in the store, untouched.
async fn store_reads_every_version(store: Store) {
    let stream = format!("inventory-{}", new_id());
    let events = [
        (ItemReserved::TYPE_NAME, 1, v1_reserved()),
        (ItemReserved::TYPE_NAME, 4, newer_reserved()),
        (
            StockCounted::TYPE_NAME,
            1,
            json!({"sku": "s", "counts": [1, 2]}),
        ),
    ];
    let data = events
        .iter()
        .chain(
            unreadable()
                .iter()
                .map(|(t, v, d, _)| (*t, *v, d.clone()))
                .collect::<Vec<_>>()
                .iter(),
        )
        .map(|(t, v, d)| EventData {
            id: new_id(),
            event_type: (*t).into(),
            schema_version: *v,
            data: d.clone(),
            metadata: Metadata::new(),
            topic: None,
            tags: Vec::new(),
        })
        .collect::<Vec<_>>();
    let appended = store
        .append(&stream, ExpectedVersion::NoStream, data.clone())
        .await
        .unwrap();
    let read = store.read_stream(&stream, 0, 100).await.unwrap();
    assert_eq!(read.len(), 7);
    assert_eq!(
        read[0].schema_version(),
        1,
        "the stored version is reported"
    );
    assert_v1_upcast(&read[0].decode::<ItemReserved>().unwrap().data);
    assert_eq!(read[1].schema_version(), 4);
    assert_eq!(read[1].decode::<ItemReserved>().unwrap().data.sku, "sku-2");
    assert_eq!(read[2].decode::<StockCounted>().unwrap().data.count, 3);
    for (recorded, (_, _, _, says)) in read[3..].iter().zip(unreadable()) {
        let e = match recorded.event_type() {
            t if t == PriceChanged::TYPE_NAME => recorded.decode::<PriceChanged>().map(drop),
            t if t == StockCounted::TYPE_NAME => recorded.decode::<StockCounted>().map(drop),
            _ => recorded.decode::<ItemReserved>().map(drop),
        }
        .unwrap_err();
        assert!(matches!(e, StoreError::Decode { .. }), "{e:?}");
        assert!(e.to_string().contains(says), "{e}");
    }
    // Nothing was lost: the stored data is exactly what was appended.
    for (recorded, appended) in read.iter().zip(&data) {
        assert_eq!(recorded.data().unwrap(), appended.data);
    }
    // A subscription decodes the same way.
    let first = appended.last_position - 6;
    let mut sub = store.subscribe_all(first).await.unwrap();
    let recorded = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(recorded.stream(), stream);
    assert_v1_upcast(&recorded.decode::<ItemReserved>().unwrap().data);
}

#[tokio::test]
async fn memory_store_reads_every_version() {
    store_reads_every_version(Store::memory()).await;
}

#[tokio::test]
async fn sqlite_store_reads_every_version() {
    let path = std::env::temp_dir().join(format!("orkestra-evolution-{}.db", new_id()));
    store_reads_every_version(Store::sqlite(&path).await.unwrap()).await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn postgres_store_reads_every_version() {
    if let Some(store) = services::postgres_store().await {
        store_reads_every_version(store).await;
    }
}

struct Log(mpsc::UnboundedSender<InventoryLogEvent>);

impl handlers::InventoryLog for Log {
    async fn handle_event(
        &self,
        event: InventoryLogEvent,
        _: HandlerContext,
    ) -> Result<(), HandlerError> {
        let _ = self.0.send(event);
        Ok(())
    }
}

/// A version 1 event and a newer one reach the generated handler current; one no chain
/// can read becomes a dead letter with the reason, and the consumer keeps running.
async fn bus_reads_every_version(bus: Bus) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut dead = bus.dead_letters().await.unwrap();
    bus.subscribe(handlers::inventory_log(Log(tx)).with_max_retries(0))
        .await
        .unwrap();
    let publish = |event_type: &str, version: u32, data: Value| {
        let mut event = raw(event_type, version, data);
        event.topic = match event_type {
            t if t == StockCounted::TYPE_NAME => StockCounted::TOPIC,
            t if t == PriceChanged::TYPE_NAME => PriceChanged::TOPIC,
            _ => ItemReserved::TOPIC,
        }
        .into();
        EventEnvelope::from_message(Message::from_raw_event(event))
    };

    bus.publish(publish(ItemReserved::TYPE_NAME, 1, v1_reserved()))
        .await
        .unwrap();
    match next(&mut rx).await {
        InventoryLogEvent::ItemReserved(e) => assert_v1_upcast(&e.data),
        other => panic!("{other:?}"),
    }
    let (event_type, version, data, says) = unreadable().swap_remove(2);
    bus.publish(publish(event_type, version, data))
        .await
        .unwrap();
    let letter = tokio::time::timeout(Duration::from_secs(20), dead.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(letter.reason().contains(says), "{}", letter.reason());
    assert!(
        letter.reason().contains("cannot upcast"),
        "{}",
        letter.reason()
    );

    bus.publish(publish(ItemReserved::TYPE_NAME, 4, newer_reserved()))
        .await
        .unwrap();
    match next(&mut rx).await {
        InventoryLogEvent::ItemReserved(e) => assert_eq!(e.data.line.unwrap().sku, "sku-2"),
        other => panic!("{other:?}"),
    }
    bus.publish(publish(
        StockCounted::TYPE_NAME,
        1,
        json!({"sku": "s", "counts": [2, 2]}),
    ))
    .await
    .unwrap();
    match next(&mut rx).await {
        InventoryLogEvent::StockCounted(e) => assert_eq!(e.data.count, 4),
        other => panic!("{other:?}"),
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<InventoryLogEvent>) -> InventoryLogEvent {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("the handler receives the event")
        .unwrap()
}

#[tokio::test]
async fn in_process_bus_reads_every_version() {
    bus_reads_every_version(Bus::in_process()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_bus_reads_every_version() {
    if let Some(bus) = services::rabbit_bus().await {
        bus_reads_every_version(bus).await;
    }
}

/// The fast paths (renaming while serde streams, a view of borrowed values) decode
/// exactly what running the steps on a tree does, for any object a release could have
/// stored: keys of every version, unknown ones, nulls, wrong types.
mod fast_paths_agree_with_the_tree {
    use orkestra_runtime::Payload;
    use proptest::prelude::*;

    use super::*;

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            "[a-z]{0,6}".prop_map(Value::from),
            Just(json!({"sku": "s", "quantity": 2})),
        ]
    }

    fn object() -> impl Strategy<Value = Value> {
        let keys = [
            "order_id",
            "product_id",
            "sku",
            "quantity",
            "legacy_ref",
            "channel",
            "line",
            "x",
        ];
        proptest::collection::vec((proptest::sample::select(keys.to_vec()), value()), 0..8)
            .prop_map(|pairs| {
                Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            })
    }

    fn tree(data: &Value, version: u32) -> Result<ItemReserved, String> {
        let data = ItemReserved::upcast(data.clone(), version).map_err(|e| e.to_string())?;
        ItemReserved::decode_json(data).map_err(|e| e.to_string())
    }

    proptest! {
        #[test]
        fn on_every_path(data in object(), version in 1u32..=3) {
            let expected = tree(&data, version).ok();
            let delivered = raw(ItemReserved::TYPE_NAME, version, data.clone())
                .decode::<ItemReserved>()
                .ok()
                .map(|e| e.data);
            prop_assert_eq!(&delivered, &expected, "bus path");
            let stored = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(async {
                    let store = Store::memory();
                    store
                        .append(
                            "s",
                            ExpectedVersion::Any,
                            vec![EventData {
                                id: new_id(),
                                event_type: ItemReserved::TYPE_NAME.into(),
                                schema_version: version,
                                data: data.clone(),
                                metadata: Metadata::new(),
                                topic: None,
                                tags: Vec::new(),
                            }],
                        )
                        .await
                        .unwrap();
                    store.read_stream("s", 0, 1).await.unwrap()
                });
            let stored = stored[0].decode::<ItemReserved>().ok().map(|e| e.data);
            prop_assert_eq!(&stored, &expected, "store path");
        }
    }
}

/// A required `placed_at` added in version 2, with a step that gives version-1 events
/// one: written as RFC 3339 text in the schema, a typed datetime in Rust. Defaults of
/// `date`, `uuid` and `decimal` are text too, built as typed values.
#[test]
fn a_required_datetime_is_added_by_an_upcast_step_and_text_defaults_are_typed() {
    use orkestra_tests::evolution::inventory::events::OrderPlaced;
    let e = raw(OrderPlaced::TYPE_NAME, 1, json!({"order_id": "o-1"}))
        .decode::<OrderPlaced>()
        .unwrap();
    assert_eq!(e.order_id, "o-1");
    assert_eq!(e.placed_at.to_rfc3339(), "2024-01-01T08:30:00+00:00");
    assert_eq!(e.placed_on.to_string(), "2024-02-29");
    assert_eq!(e.r#ref.to_string(), "6f9619ff-8b86-d011-b42d-00c04fc964ff");
    assert_eq!(e.fee.as_str(), "12.50");
    assert_eq!(e.units.as_str(), "3");
    // Version 2 must carry its own.
    let missing = raw(OrderPlaced::TYPE_NAME, 2, json!({"order_id": "o-2"}))
        .decode::<OrderPlaced>()
        .unwrap_err();
    assert_eq!(missing, PayloadError::MissingParams(vec!["placed_at"]));
    let own = raw(
        OrderPlaced::TYPE_NAME,
        2,
        json!({"order_id": "o-3", "placed_at": "2025-06-01T12:00:00Z", "fee": "0.10"}),
    )
    .decode::<OrderPlaced>()
    .unwrap();
    assert_eq!(own.placed_at.to_rfc3339(), "2025-06-01T12:00:00+00:00");
    assert_eq!(own.fee.as_str(), "0.10");
}
