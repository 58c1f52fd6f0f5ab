//! "Every schema set that validates compiles", checked rather than assumed: proptest
//! builds schema sets from the whole language (every type, rules, defaults, named and
//! cross-namespace types, keyword names, every kind of binding), the ones that validate
//! are generated into one probe crate, and that crate must pass `cargo clippy` with
//! `deny(warnings, missing_docs)`.
//!
//! The sets come from a deterministic runner, so a failure reproduces; the probe builds
//! offline in its own target directory (`schema-probe` under `$CARGO_TARGET_DIR`, or under
//! the workspace's `target/`), so the first run compiles the runtime's dependencies once
//! and later runs, CI's clean clones included, only the probe.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use orkestra_gen::Source;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

/// How many valid sets the probe crate holds.
const SETS: usize = 40;

const FIELD_NAMES: &[&str] = &[
    "id", "name", "type", "match", "self", "count", "ratio", "when", "tags", "extra", "nested",
    "async",
];
const TYPE_NAMES: &[&str] = &["Address", "Money", "Point"];
const ENUM_NAMES: &[&str] = &["Plan", "Colour"];
const COMMANDS: &[&str] = &["Create", "Update", "Remove"];
const EVENTS: &[&str] = &["Created", "Updated", "Removed"];
const NAMESPACES: &[&str] = &["Alpha", "Beta"];

/// YAML 1.1 reads these keys and values as booleans; in a schema they are names and text.
const BOOLEAN_WORDS: &str = "namespace: Shop.Words
commands:
  Say:
    params:
      y: { type: string, default: Yes }
      n: { type: string, default: no }
      on: { type: boolean, default: true }
      off: { type: string, default: OFF }
events:
  Said:
    fields:
      yes: { type: string, required: true }
      no: { type: string, default: N }
      true: { type: string, default: False }
      false: { type: \"list<string>\", default: [on, Off, y] }
handlers:
  WordsSayHandler: { command: Say, emits: [Said] }
  WordsOnSaid: { event: Said }
";

/// A field type: a base type, a container of one, or a named type.
fn field_type(named: Vec<String>) -> impl Strategy<Value = String> {
    let base = prop::sample::select(vec![
        "string", "integer", "float", "boolean", "datetime", "date", "uuid", "decimal", "json",
    ])
    .prop_map(str::to_owned);
    let mut choices: Vec<BoxedStrategy<String>> = vec![
        base.clone().boxed(),
        base.clone().prop_map(|t| format!("list<{t}>")).boxed(),
        base.prop_map(|t| format!("map<{t}>")).boxed(),
    ];
    if !named.is_empty() {
        let named = prop::sample::select(named);
        choices.push(named.clone().boxed());
        choices.push(named.clone().prop_map(|t| format!("list<{t}>")).boxed());
        choices.push(named.prop_map(|t| format!("map<{t}>")).boxed());
    }
    prop::strategy::Union::new(choices)
}

/// Rules and a default that fit `ty` (mostly: a set that breaks a rule is simply dropped).
fn field_spec(ty: String, enums: Vec<(String, String)>) -> impl Strategy<Value = String> {
    (any::<bool>(), 0..4u8, any::<bool>()).prop_map(move |(required, rules, with_default)| {
        let mut spec = format!("{{ type: \"{ty}\"");
        let extra = match (ty.as_str(), rules) {
            ("string", 1) => ", min_length: 1, max_length: 20, pattern: \"^[a-z]+$\"",
            ("string", 2) => ", format: email",
            ("string", 3) => ", one_of: [a, b]",
            ("integer", 1) => ", min: -5, max: 5",
            ("integer", 2) => ", one_of: [1, 2, 3]",
            ("float", 1) => ", min: 0.5, max: 2.5",
            ("float", 2) => ", one_of: [1.5, 2]",
            (t, 1 | 2) if t.starts_with("list<") || t.starts_with("map<") => {
                ", min_length: 0, max_length: 3"
            }
            _ => "",
        };
        spec.push_str(extra);
        if required {
            spec.push_str(", required: true");
        } else if with_default {
            let enum_default = enums.iter().find(|(name, _)| *name == ty);
            let default = match ty.as_str() {
                "string" => Some("\"a\"".to_owned()),
                "integer" => Some("1".to_owned()),
                "float" => Some("1.5".to_owned()),
                "boolean" => Some("true".to_owned()),
                t if t.starts_with("list<") => Some("[]".to_owned()),
                t if t.starts_with("map<") => Some("{}".to_owned()),
                _ => enum_default.map(|(_, first)| first.clone()),
            };
            if let Some(d) = default {
                spec.push_str(&format!(", default: {d}"));
            }
        }
        spec.push_str(", description: \"A `field` with */ odd \\\"text\\\".\" }");
        spec
    })
}

/// `fields:` lines for up to four distinct field names.
fn fields(named: Vec<String>, enums: Vec<(String, String)>) -> impl Strategy<Value = String> {
    prop::sample::subsequence(FIELD_NAMES.to_vec(), 0..=4).prop_flat_map(move |names| {
        let specs: Vec<_> = names
            .iter()
            .map(|_| {
                let enums = enums.clone();
                field_type(named.clone()).prop_flat_map(move |ty| field_spec(ty, enums.clone()))
            })
            .collect();
        specs.prop_map(move |specs| {
            names
                .iter()
                .zip(specs)
                .fold(String::new(), |mut out, (name, spec)| {
                    let _ = writeln!(out, "      \"{name}\": {spec}");
                    out
                })
        })
    })
}

/// The declarations of one namespace, chosen before their bodies.
#[derive(Clone, Debug)]
struct Names {
    structs: Vec<&'static str>,
    enums: Vec<&'static str>,
    commands: Vec<&'static str>,
    events: Vec<&'static str>,
}

/// One namespace's schema file. `other` names the types of a namespace declared before it.
fn namespace(ns: &'static str, other: Vec<String>) -> impl Strategy<Value = String> {
    (
        prop::sample::subsequence(TYPE_NAMES.to_vec(), 0..=2),
        prop::sample::subsequence(ENUM_NAMES.to_vec(), 0..=2),
        prop::sample::subsequence(COMMANDS.to_vec(), 0..=2),
        prop::sample::subsequence(EVENTS.to_vec(), 1..=3),
    )
        .prop_map(|(structs, enums, commands, events)| Names {
            structs,
            enums,
            commands,
            events,
        })
        .prop_flat_map(move |names| {
            let enum_defaults: Vec<(String, String)> = names
                .enums
                .iter()
                .map(|e| ((*e).to_owned(), "first".to_owned()))
                .collect();
            let mut named: Vec<String> = names
                .structs
                .iter()
                .chain(&names.enums)
                .map(|s| (*s).to_owned())
                .collect();
            named.extend(other.iter().cloned());
            let bodies = |n: usize| {
                proptest::collection::vec(fields(named.clone(), enum_defaults.clone()), n)
            };
            (
                bodies(names.structs.len()),
                bodies(names.commands.len()),
                bodies(names.events.len()),
                bindings(ns, names.commands.clone(), names.events.clone()),
                Just(names),
            )
        })
        .prop_map(
            move |(type_bodies, command_bodies, event_bodies, handlers, names)| {
                let mut y =
                    format!("namespace: Shop.{ns}\ndescription: \"Generated `{ns}`.\"\ntypes:\n");
                for (name, body) in names.structs.iter().zip(&type_bodies) {
                    let _ = write!(y, "  {name}:\n    fields:\n{body}");
                }
                for name in &names.enums {
                    let _ = writeln!(y, "  {name}:\n    enum: [first, second_value, type]");
                }
                y.push_str("commands:\n");
                for (name, body) in names.commands.iter().zip(&command_bodies) {
                    let _ = write!(y, "  {name}:\n    params:\n{body}");
                }
                y.push_str("events:\n");
                for (name, body) in names.events.iter().zip(&event_bodies) {
                    let _ = write!(y, "  {name}:\n    version: 2\n    fields:\n{body}");
                }
                y.push_str("handlers:\n");
                y.push_str(&handlers);
                y
            },
        )
}

/// Handler bindings of every kind over the namespace's commands and events (named after
/// the namespace: binding names identify queues and are unique across namespaces).
fn bindings(
    ns: &'static str,
    commands: Vec<&'static str>,
    events: Vec<&'static str>,
) -> impl Strategy<Value = String> {
    (any::<bool>(), any::<bool>(), any::<bool>(), 0..3u32).prop_map(
        move |(single, several, wildcard, retries)| {
            let mut y = String::new();
            for c in &commands {
                let _ = writeln!(
                    y,
                    "  {ns}{c}Handler: {{ command: {c}, emits: [{}], concurrency: {}, partition_by: correlation_id }}",
                    events[0],
                    retries + 1
                );
            }
            if single {
                let _ = writeln!(
                    y,
                    "  {ns}On{0}: {{ event: {0}, max_retries: {retries}, retry_delay: 250ms, retry_backoff: 2.5, retry_delay_max: 2s }}",
                    events[0]
                );
            }
            if several {
                let _ = writeln!(
                    y,
                    "  {ns}Projector: {{ events: [{}], concurrency: 8 }}",
                    events.join(", ")
                );
            }
            if wildcard {
                let _ = writeln!(
                    y,
                    "  {ns}Audit: {{ topic: \"{}.events.#\" }}",
                    ns.to_lowercase()
                );
            }
            let _ = writeln!(
                y,
                "  {ns}Alarm: {{ dead_letters: true, max_retries: {retries} }}"
            );
            y
        },
    )
}

/// One or two namespaces; the second may use the first's types (`Alpha.Address`).
fn schema_set() -> impl Strategy<Value = Vec<String>> {
    (1..=2usize).prop_flat_map(|count| {
        let first = namespace(NAMESPACES[0], Vec::new());
        let cross: Vec<String> = TYPE_NAMES
            .iter()
            .chain(ENUM_NAMES)
            .map(|t| format!("{}.{t}", NAMESPACES[0]))
            .collect();
        let second = namespace(NAMESPACES[1], cross);
        (first, second).prop_map(move |(a, b)| if count == 1 { vec![a] } else { vec![a, b] })
    })
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

#[test]
fn every_valid_schema_set_compiles() {
    let mut runner = TestRunner::deterministic();
    let strategy = schema_set();
    let mut valid = Vec::new();
    let mut attempts = 0;
    while valid.len() < SETS && attempts < 2_000 {
        attempts += 1;
        let texts = strategy.new_tree(&mut runner).unwrap().current();
        let sources: Vec<Source> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| Source {
                path: format!("{}.yaml", NAMESPACES[i].to_lowercase()).into(),
                text: text.clone(),
            })
            .collect();
        if let Ok(output) = orkestra_gen::generate_from_sources(&sources, "Shop") {
            exports_render(&output.model);
            valid.push((texts, output.code));
        }
    }
    assert_eq!(
        valid.len(),
        SETS,
        "only {} of {attempts} generated sets validated: the strategy drifted from the language",
        valid.len()
    );

    // YAML 1.1's boolean words as names and string defaults (see `yaml_booleans.rs`).
    let words = [BOOLEAN_WORDS.to_owned()];
    let output = orkestra_gen::generate_from_sources(
        &[Source {
            path: "words.yaml".into(),
            text: words[0].clone(),
        }],
        "Shop",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    exports_render(&output.model);
    valid.push((words.to_vec(), output.code));

    eprintln!("{SETS} valid schema sets from {attempts} generated");
    let dir = std::env::temp_dir().join(format!("orkestra-schema-probe-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let root = workspace();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"schema-probe\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n\
             [workspace]\n\n[dependencies]\norkestra-runtime = {{ path = {:?} }}\n",
            root.join("orkestra-runtime"),
        ),
    )
    .unwrap();
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let mut lib = String::from(
        "//! Generated code of proptest-built schema sets.\n#![deny(warnings, missing_docs)]\n",
    );
    for (i, (texts, code)) in valid.iter().enumerate() {
        std::fs::write(dir.join(format!("src/set_{i}.rs")), code).unwrap();
        let yaml = texts.join("\n---\n");
        std::fs::write(dir.join(format!("src/set_{i}.yaml")), &yaml).unwrap();
        let _ = writeln!(
            lib,
            "/// Set {i} (schemas in `set_{i}.yaml`).\npub mod set_{i} {{\n    include!(\"set_{i}.rs\");\n}}"
        );
    }
    std::fs::write(dir.join("src/lib.rs"), lib).unwrap();

    let out = Command::new(env!("CARGO"))
        .args(["clippy", "--quiet", "--offline", "--", "-D", "warnings"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", probe_target(&root))
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the generated code of a valid schema set does not compile (probe kept in {}):\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    if std::env::var_os("KEEP_SCHEMA_PROBE").is_none() {
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// Where the probe builds: beside the workspace's own build, so a cache that CI keeps
/// outside the clone serves the probe too.
fn probe_target(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("schema-probe")
}

/// Every export of a valid schema set renders and parses back (the sets exercise every
/// type, rule and binding kind).
fn exports_render(model: &orkestra_gen::model::Model) {
    use orkestra_gen::export;
    let json: serde_json::Value = serde_json::from_str(&export::asyncapi_json(model)).unwrap();
    let yaml: serde_json::Value = serde_saphyr::from_str(&export::asyncapi_yaml(model)).unwrap();
    assert_eq!(json, yaml);
    for (name, text) in export::jsonschema_files(model) {
        assert!(
            serde_json::from_str::<serde_json::Value>(&text).is_ok(),
            "{name}"
        );
    }
    export::docs_files(model).unwrap();
}
