//! The golden output of `orkestra-gen` for `schemas/` (and the fixtures below), compiled
//! as a library with `missing_docs` denied (and, in CI, clippy `-D warnings`): the golden
//! must compile. build.rs takes the code out of the insta snapshots in
//! `orkestra-gen/tests/snapshots/golden__*.snap`.
#![deny(missing_docs)]

include!(concat!(env!("OUT_DIR"), "/shop.rs"));

impl orkestra_runtime::Validate for accounts::commands::CreateAccount {
    fn validate(&self) -> Result<(), orkestra_runtime::ValidationError> {
        if self.email.contains('@') {
            Ok(())
        } else {
            Err(orkestra_runtime::ValidationError::new("invalid_email").with_field("email"))
        }
    }
}

/// Generated from `orkestra-gen/tests/golden/nasty/nasty.yaml`: hostile descriptions,
/// defaults and patterns, and keyword field names, which must all compile.
pub mod hostile {
    include!(concat!(env!("OUT_DIR"), "/nasty.rs"));
}

/// Generated from `orkestra-gen/tests/golden/wiring/wiring.yaml`: a namespace wired all
/// at once through `Handlers`, with a dead-letter binding.
pub mod wiring {
    include!(concat!(env!("OUT_DIR"), "/wiring.rs"));
}

/// Generated from `orkestra-gen/tests/golden/formats/formats.yaml`: every type, format and
/// rule, for the JSON Schema agreement test.
pub mod every_rule {
    include!(concat!(env!("OUT_DIR"), "/formats.rs"));
}

/// Generated from `orkestra-gen/tests/golden/aggregates/bank.yaml`: an `Account`
/// aggregate with state, snapshots and three commands, and a stateless `Counter`.
pub mod aggregates {
    include!(concat!(env!("OUT_DIR"), "/aggregates.rs"));
}

/// Generated from `orkestra-gen/tests/golden/projections/ledger.yaml`: projections bound
/// to one event, a list of events and a topic pattern, with `batch` and `max_retries`.
pub mod projections {
    include!(concat!(env!("OUT_DIR"), "/projections.rs"));
}

/// Generated from `orkestra-gen/tests/golden/process_managers/fulfilment.yaml`: the
/// `Fulfilment` flow (state, three roles, commands, two timers) and a bare `Audit`.
pub mod process_managers {
    include!(concat!(env!("OUT_DIR"), "/process_managers.rs"));
}

/// Generated from `orkestra-gen/tests/golden/decisions/`: the `Subscription` decision
/// (a course's capacity and a student's limit across streams, beside a `Course`
/// aggregate whose event is tagged) and `UniqueUsername`.
pub mod decisions {
    include!(concat!(env!("OUT_DIR"), "/decisions.rs"));
}

/// Generated from `orkestra-gen/tests/golden/personal/customers.yaml`: personal fields
/// (direct, with a replacement, through a named type, in a list, a whole named-type
/// field), a `Customer` aggregate with personal state, and bindings with and without
/// personal events.
pub mod personal {
    include!(concat!(env!("OUT_DIR"), "/personal.rs"));
}

/// Generated from `orkestra-gen/tests/golden/evolution/inventory.yaml`: events at
/// version 2 and 3 with declarative and custom upcast steps, and a command whose nested
/// struct types are checked for unknown keys.
pub mod evolution {
    include!(concat!(env!("OUT_DIR"), "/evolution.rs"));
}

/// Version 1 of `StockCounted` kept one count per shelf (`counts`); version 2 keeps their
/// sum. A `sku` of `"panic"` makes the step panic, to test that a panicking step is a
/// decode error.
impl evolution::inventory::events::StockCountedUpcast
    for evolution::inventory::events::StockCounted
{
    fn upcast_v1(
        mut data: serde_json::Value,
    ) -> Result<serde_json::Value, orkestra_runtime::UpcastError> {
        if data["sku"] == "panic" {
            panic!("a step that panics");
        }
        let counts = data
            .get("counts")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| {
                orkestra_runtime::UpcastError::new("version 1 data has no `counts` list")
            })?;
        let count: i64 = counts.iter().filter_map(serde_json::Value::as_i64).sum();
        let map = data
            .as_object_mut()
            .ok_or_else(|| orkestra_runtime::UpcastError::new("not an object"))?;
        map.remove("counts");
        map.insert("count".into(), count.into());
        Ok(data)
    }
}

/// `StockCounted` says `validate: custom`: a count is never negative.
impl orkestra_runtime::Validate for evolution::inventory::events::StockCounted {
    fn validate(&self) -> Result<(), orkestra_runtime::ValidationError> {
        if self.count < 0 {
            Err(orkestra_runtime::ValidationError::new("negative_count").with_field("count"))
        } else {
            Ok(())
        }
    }
}
