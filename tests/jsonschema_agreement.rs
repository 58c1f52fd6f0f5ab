//! The exported JSON Schemas agree with the generated Rust: the same payloads go through
//! a maintained JSON Schema validator (`jsonschema`, 2020-12, formats asserted) and
//! through the generated `from_json` of the compiled goldens, and every verdict matches.
//!
//! The corpus: for every command and event, each field's value drawn from a pool of edge
//! cases for its type (absent, null, wrong JSON types, bounds ± 1, lengths, patterns,
//! formats, enum values, nested types with unknown keys), one field at a time from a valid
//! base (hand-picked cases), then every field at once (proptest), plus shapes (not an
//! object, unknown keys: refused in commands at every depth, ignored in events).
//!
//! Left out, on purpose, where the two cannot agree today:
//! - integral floats for an `integer` (`1.0`): JSON Schema counts them as integers,
//!   serde's `i64` does not, and no keyword tells them apart;
//! - the lenient spellings the Rust parsers also accept: UUIDs without hyphens, braced or
//!   as URNs (`uuid`), date-times with a space or without an offset colon (`chrono`);
//!   the schemas state the RFC forms other languages should send;
//! - email addresses whose local part RFC 5322 forbids (`mailto:ada@example.com`): the
//!   generated check (one `@`, a dotted domain) takes them, `format: email` does not
//!   (the schema's `pattern` states the generated check exactly, for validators that
//!   treat `format` as an annotation).
//! - a custom `validate` (CreateAccount): a payload it refuses counts as schema-valid.

use std::collections::BTreeMap;
use std::path::Path;

use orkestra_gen::model::{Field, Model, Ty, TypeKind};
use orkestra_runtime::{Payload, PayloadError};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};

type Verdict = fn(Value) -> Result<(), PayloadError>;

fn check<P: Payload>(v: Value) -> Result<(), PayloadError> {
    P::from_json(v).map(|_| ())
}

/// Every generated payload of the goldens, by its export key.
fn rust_side() -> BTreeMap<&'static str, Verdict> {
    use orkestra_tests::{accounts, every_rule, evolution, hostile, orders, wiring};
    BTreeMap::from([
        (
            "Accounts.CreateAccount",
            check::<accounts::commands::CreateAccount> as Verdict,
        ),
        (
            "Accounts.AccountCreated",
            check::<accounts::events::AccountCreated>,
        ),
        ("Orders.PlaceOrder", check::<orders::commands::PlaceOrder>),
        ("Orders.CancelOrder", check::<orders::commands::CancelOrder>),
        ("Orders.OrderPlaced", check::<orders::events::OrderPlaced>),
        (
            "Orders.OrderCancelled",
            check::<orders::events::OrderCancelled>,
        ),
        ("Nasty.Tricky", check::<hostile::nasty::commands::Tricky>),
        ("Nasty.Happened", check::<hostile::nasty::events::Happened>),
        (
            "Billing.ChargeCard",
            check::<wiring::billing::commands::ChargeCard>,
        ),
        (
            "Billing.CardCharged",
            check::<wiring::billing::events::CardCharged>,
        ),
        (
            "Formats.Everything",
            check::<every_rule::formats::commands::Everything>,
        ),
        (
            "Formats.Happened",
            check::<every_rule::formats::events::Happened>,
        ),
        (
            "Inventory.Restock",
            check::<evolution::inventory::commands::Restock>,
        ),
        (
            "Inventory.ItemReserved",
            check::<evolution::inventory::events::ItemReserved>,
        ),
        (
            "Inventory.StockCounted",
            check::<evolution::inventory::events::StockCounted>,
        ),
        (
            "Inventory.PriceChanged",
            check::<evolution::inventory::events::PriceChanged>,
        ),
        (
            "Inventory.OrderPlaced",
            check::<evolution::inventory::events::OrderPlaced>,
        ),
    ])
}

struct Case {
    key: String,
    /// The example payload the AsyncAPI document and the site show.
    example: Value,
    command: bool,
    fields: Vec<Field>,
    validator: jsonschema::Validator,
    rust: Verdict,
}

fn cases() -> (Vec<Case>, Vec<Model>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rust = rust_side();
    let mut cases = Vec::new();
    let mut models = Vec::new();
    for dir in [
        "schemas",
        "orkestra-gen/tests/golden/nasty",
        "orkestra-gen/tests/golden/wiring",
        "orkestra-gen/tests/golden/formats",
        "orkestra-gen/tests/golden/evolution",
    ] {
        let model = orkestra_gen::Generator::new()
            .cargo_directives(false)
            .schemas(root.join(dir))
            .app_prefix("Shop")
            .render()
            .unwrap()
            .model;
        let asyncapi: Value =
            serde_json::from_str(&orkestra_gen::export::asyncapi_json(&model)).unwrap();
        let files: BTreeMap<String, String> = orkestra_gen::export::jsonschema_files(&model)
            .into_iter()
            .collect();
        for module in &model.modules {
            for p in module.commands.iter().chain(&module.events) {
                let key = format!("{}.{}", module.qualifier, p.name);
                let schema: Value = serde_json::from_str(&files[&format!("{key}.json")]).unwrap();
                assert_eq!(
                    schema["$schema"],
                    "https://json-schema.org/draft/2020-12/schema"
                );
                let validator = jsonschema::options()
                    .should_validate_formats(true)
                    .build(&schema)
                    .unwrap_or_else(|e| panic!("{key}: the schema does not compile: {e}"));
                let rust = *rust
                    .get(key.as_str())
                    .unwrap_or_else(|| panic!("{key}: no generated type in the table"));
                let example =
                    asyncapi["components"]["messages"][&key]["examples"][0]["payload"].clone();
                cases.push(Case {
                    key,
                    example,
                    command: p.kind == orkestra_gen::model::PayloadKind::Command,
                    fields: p.fields.clone(),
                    validator,
                    rust,
                });
            }
        }
        models.push(model);
    }
    assert_eq!(cases.len(), rust.len(), "every golden payload is covered");
    (cases, models)
}

/// Edge-case values for a type; `None` means "absent". The first `Some` is valid for
/// the type (and, unless a rule narrows it, for the field).
fn pool(ty: &Ty, models: &[Model], depth: usize) -> Vec<Option<Value>> {
    let s = |v: Value| Some(v);
    let mut out: Vec<Option<Value>> = match ty {
        Ty::String => vec![
            s(json!("a")),
            s(json!("")),
            s(json!("x".repeat(101))),
            s(json!("ä\u{202e}\"'*/")),
            s(json!("12345")),
            s(json!("1234")),
            s(json!("ab")),
            s(json!("customer")),
            s(json!("personal")),
            s(json!("business")),
            s(json!("ada@example.com")),
            s(json!("ada@example")),
            s(json!("@example.com")),
            s(json!("a b@example.com")),
            s(json!("ABC-12")),
            s(json!("abc-12")),
            s(json!("https://example.com/x?y#z")),
            s(json!("ftp://h")),
            s(json!("http://")),
            s(json!("mailto:x")),
            s(json!("https://exa mple.com")),
            s(json!("1http://x")),
            s(json!("67e55044-10b1-426f-9247-bb680e5fe0c8")),
            s(json!("67e55044-10b1-426f-9247-bb680e5fe0c")),
            s(json!(1)),
            s(json!(true)),
        ],
        Ty::Integer => vec![
            s(json!(3)),
            s(json!(0)),
            s(json!(1)),
            s(json!(-1)),
            s(json!(1000)),
            s(json!(1001)),
            s(json!(-3)),
            s(json!(3)),
            s(json!(-4)),
            s(json!(4)),
            s(json!(i64::MAX)),
            s(json!(i64::MIN)),
            s(json!(u64::MAX)),
            s(json!(1.5)),
            s(json!("1")),
        ],
        Ty::Float => vec![
            s(json!(1.5)),
            s(json!(0.5)),
            s(json!(2.5)),
            s(json!(0.49)),
            s(json!(2.51)),
            s(json!(2)),
            s(json!(-1e10)),
            s(json!("0.5")),
        ],
        Ty::Boolean => vec![
            s(json!(true)),
            s(json!(false)),
            s(json!(0)),
            s(json!("true")),
        ],
        Ty::DateTime => vec![
            s(json!("2026-01-31T09:30:00Z")),
            s(json!("2026-01-31T09:30:00.123+02:00")),
            s(json!("2026-01-31")),
            s(json!("2026-13-01T00:00:00Z")),
            s(json!("2026-02-30T00:00:00Z")),
            s(json!("yesterday")),
            s(json!(1_700_000_000)),
        ],
        Ty::Date => vec![
            s(json!("2026-01-31")),
            s(json!("2024-02-29")),
            s(json!("2026-02-30")),
            s(json!("31/01/2026")),
            s(json!("2026-01-31T00:00:00Z")),
            s(json!(20260131)),
        ],
        Ty::Uuid => vec![
            s(json!("67e55044-10b1-426f-9247-bb680e5fe0c8")),
            s(json!("67E55044-10B1-426F-9247-BB680E5FE0C8")),
            s(json!("not-a-uuid")),
            s(json!("")),
            s(json!(5)),
        ],
        Ty::Decimal => vec![
            s(json!("12.50")),
            s(json!("-1")),
            s(json!(".5")),
            s(json!("1.")),
            s(json!("+1e3")),
            s(json!(" 7 ")),
            s(json!("1e")),
            s(json!("abc")),
            s(json!("")),
            s(json!(".")),
            s(json!(12.5)),
            s(json!(3)),
            s(json!(true)),
        ],
        Ty::Json => vec![
            s(json!({"any": [1]})),
            s(json!([])),
            s(json!("x")),
            s(json!(0)),
        ],
        Ty::List(inner) => {
            let item = first_valid(inner, models);
            vec![
                s(json!([])),
                s(json!([item.clone()])),
                s(json!([item.clone(), item])),
                s(json!([null])),
                s(json!({})),
                s(json!("x")),
            ]
        }
        Ty::Map(inner) => {
            let item = first_valid(inner, models);
            vec![
                s(json!({})),
                s(json!({ "a": item.clone() })),
                s(json!({ "a": null })),
                s(json!([item])),
                s(json!("x")),
            ]
        }
        Ty::Named(r) => {
            let def = models
                .iter()
                .flat_map(|m| &m.modules)
                .filter(|m| m.ident == r.module)
                .flat_map(|m| &m.types)
                .find(|t| t.name == r.name)
                .expect("a resolved type exists");
            match &def.kind {
                TypeKind::Enum(values) => {
                    let mut v: Vec<Option<Value>> = values.iter().map(|x| s(json!(x))).collect();
                    v.extend([s(json!("nope")), s(json!(1))]);
                    v
                }
                TypeKind::Struct(fields) => {
                    let base = valid_object(fields, models);
                    let mut v = vec![s(Value::Object(base.clone())), s(json!({})), s(json!("x"))];
                    let mut extra = base.clone();
                    extra.insert("unknown".into(), json!(1));
                    v.push(s(Value::Object(extra)));
                    if depth < 2 {
                        for f in fields {
                            for value in pool(&f.ty, models, depth + 1).into_iter().take(6) {
                                let mut o = base.clone();
                                match value {
                                    Some(x) => o.insert(f.name.clone(), x),
                                    None => o.remove(&f.name),
                                };
                                v.push(s(Value::Object(o)));
                            }
                        }
                    }
                    v
                }
            }
        }
    };
    out.push(Some(Value::Null));
    out.push(None);
    out
}

fn first_valid(ty: &Ty, models: &[Model]) -> Value {
    pool(ty, models, 2)
        .into_iter()
        .flatten()
        .next()
        .unwrap_or(Value::Null)
}

/// Every required field with its type's first (valid) value.
fn valid_object(fields: &[Field], models: &[Model]) -> serde_json::Map<String, Value> {
    fields
        .iter()
        .filter(|f| f.required)
        .map(|f| (f.name.clone(), first_valid(&f.ty, models)))
        .collect()
}

fn agree(case: &Case, payload: &Value) -> Result<(), String> {
    let schema_ok = case.validator.is_valid(payload);
    let rust = (case.rust)(payload.clone());
    // A custom `validate` is outside the schema: what it refuses passed every rule.
    let rust_ok = matches!(rust, Ok(()) | Err(PayloadError::Invalid(_)));
    if schema_ok == rust_ok {
        Ok(())
    } else {
        Err(format!(
            "{}: schema says {}, from_json says {:?} for {payload}",
            case.key,
            if schema_ok { "valid" } else { "invalid" },
            rust
        ))
    }
}

#[test]
fn the_example_payloads_are_valid_on_both_sides() {
    let (cases, _) = cases();
    for case in &cases {
        assert!(case.example.is_object(), "{}: {}", case.key, case.example);
        assert!(
            case.validator.is_valid(&case.example),
            "{}: {}",
            case.key,
            case.example
        );
        assert!(
            matches!(
                (case.rust)(case.example.clone()),
                Ok(()) | Err(PayloadError::Invalid(_))
            ),
            "{}: {}",
            case.key,
            case.example
        );
    }
}

#[test]
fn hand_picked_edge_cases_get_the_same_verdict() {
    let (cases, models) = cases();
    let mut mismatches = Vec::new();
    let mut checked = 0;
    let (mut valid, mut invalid) = (0, 0);
    for case in &cases {
        let base = valid_object(&case.fields, &models);
        let mut corpus = vec![
            Value::Object(base.clone()),
            json!([]),
            json!("x"),
            json!(null),
            json!(1),
        ];
        // On the example (valid on both sides) an unknown key is all that differs.
        let mut extra = case.example.as_object().cloned().unwrap_or_default();
        extra.insert("unknown_key".into(), json!(1));
        let extra = Value::Object(extra);
        assert_eq!(
            case.validator.is_valid(&extra),
            !case.command,
            "{}: commands refuse unknown keys, events ignore them",
            case.key
        );
        corpus.push(extra);
        for f in &case.fields {
            for value in pool(&f.ty, &models, 0) {
                let mut o = base.clone();
                match value {
                    Some(v) => o.insert(f.name.clone(), v),
                    None => o.remove(&f.name),
                };
                corpus.push(Value::Object(o));
            }
        }
        for payload in &corpus {
            checked += 1;
            if case.validator.is_valid(payload) {
                valid += 1;
            } else {
                invalid += 1;
            }
            if let Err(e) = agree(case, payload) {
                mismatches.push(e);
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {checked} disagree:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    // The corpus is worth something only if it has both verdicts in number.
    assert!(
        valid > 50 && invalid > 200,
        "valid {valid}, invalid {invalid}"
    );
}

#[test]
fn generated_payloads_get_the_same_verdict() {
    let (cases, models) = cases();
    for case in &cases {
        let pools: Vec<Vec<Option<Value>>> = case
            .fields
            .iter()
            .map(|f| pool(&f.ty, &models, 0))
            .collect();
        let sizes: Vec<usize> = pools.iter().map(Vec::len).collect();
        let strategy = sizes
            .iter()
            .map(|&n| 0..n)
            .collect::<Vec<_>>()
            .prop_map(|picks| picks);
        let mut runner = TestRunner::new(Config {
            cases: 200,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&strategy, |picks| {
            let mut o = serde_json::Map::new();
            for ((f, pool), pick) in case.fields.iter().zip(&pools).zip(picks) {
                if let Some(v) = &pool[pick] {
                    o.insert(f.name.clone(), v.clone());
                }
            }
            agree(case, &Value::Object(o)).map_err(TestCaseError::fail)
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }
}
