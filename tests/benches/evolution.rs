//! Decoding cost of schema evolution (`book/src/evolution.md`): the same `ItemReserved`
//! stored at version 1 (two declarative steps to run) and at version 3 (current),
//! decoded through a store read (`RecordedEvent::decode`) and through a bus delivery
//! (`RawEvent::decode`). Target: 2-step chain ÷ current ≤ 1.5×.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use orkestra_runtime::{EventData, ExpectedVersion, Metadata, RawEvent, Store};
use orkestra_tests::evolution::inventory::events::ItemReserved;
use serde_json::{Value, json};

fn v1() -> Value {
    json!({"order_id": "o-1234567", "product_id": "sku-000123", "legacy_ref": "L-9",
           "line": {"sku": "sku-000123", "quantity": 2}})
}

fn v3() -> Value {
    json!({"order_id": "o-1234567", "sku": "sku-000123", "quantity": 1, "channel": "web",
           "line": {"sku": "sku-000123", "quantity": 2}})
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let store = Store::memory();
    let data = |version, data| EventData {
        id: orkestra_runtime::new_id(),
        event_type: ItemReserved::TYPE_NAME.into(),
        schema_version: version,
        data,
        metadata: Metadata::new(),
        topic: None,
        tags: Vec::new(),
    };
    let events = rt.block_on(async {
        store
            .append(
                "bench",
                ExpectedVersion::Any,
                vec![data(1, v1()), data(3, v3())],
            )
            .await
            .unwrap();
        store.read_stream("bench", 0, 2).await.unwrap()
    });
    let (old, current) = (&events[0], &events[1]);
    assert_eq!(
        old.decode::<ItemReserved>().unwrap().data,
        current.decode::<ItemReserved>().unwrap().data,
        "both decode to the same value"
    );
    let mut g = c.benchmark_group("evolution");
    g.bench_function("store_decode_current", |b| {
        b.iter(|| black_box(current).decode::<ItemReserved>().unwrap())
    });
    g.bench_function("store_decode_v1_two_steps", |b| {
        b.iter(|| black_box(old).decode::<ItemReserved>().unwrap())
    });
    let raw = |version, data| RawEvent {
        id: "e".into(),
        event_type: ItemReserved::TYPE_NAME.into(),
        version,
        topic: ItemReserved::TOPIC.into(),
        data,
        metadata: Metadata::new(),
    };
    let (old, current) = (raw(1, v1()), raw(3, v3()));
    g.bench_function("raw_decode_current", |b| {
        b.iter(|| black_box(&current).decode::<ItemReserved>().unwrap())
    });
    g.bench_function("raw_decode_v1_two_steps", |b| {
        b.iter(|| black_box(&old).decode::<ItemReserved>().unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
