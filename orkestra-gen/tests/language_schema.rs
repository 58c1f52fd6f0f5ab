//! The JSON Schema of the schema language (`orkestra-gen schema-json`) against the
//! schemas of the repository: every valid schema passes it, and every case of the
//! diagnostics suite whose mistake is one of shape (an unknown key, a value of the wrong
//! kind, a missing key) fails it, as an editor running the YAML language server would
//! show. The committed copy, `schema/orkestra.schema.json`, is kept current.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn validator() -> jsonschema::Validator {
    let schema = orkestra_gen::language::schema();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    jsonschema::draft7::new(&schema).expect("the language schema compiles")
}

/// A YAML file as the JSON tree the language server checks.
fn json_of(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `*.yaml` below `dir`.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// The errors of `instance`, one line each (empty when it passes).
fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn every_valid_schema_of_the_repository_passes() {
    let root = repository();
    let mut files = Vec::new();
    for dir in [
        "schemas",
        "examples",
        "book",
        "tests/evolution",
        "orkestra-gen/tests/golden",
        "orkestra-gen/tests/compat",
        "orkestra-gen/tests/exports",
        "orkestra-cli/tests/fixtures",
    ] {
        yaml_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 60, "only {} schema files found", files.len());
    let validator = validator();
    let failures: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let found = errors(&validator, &json_of(path));
            (!found.is_empty()).then(|| format!("{}:\n  {}", path.display(), found.join("\n  ")))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // And the one `orkestra-gen new` writes.
    let files = orkestra_gen::project::NewProject::new("my-shop")
        .files()
        .unwrap();
    let schema = files
        .iter()
        .find(|f| f.path == Path::new("schemas/my-shop.yaml"))
        .unwrap();
    let tree: Value = serde_saphyr::from_str(&schema.content).unwrap();
    assert_eq!(errors(&validator, &tree), Vec::<String>::new());
}

/// The diagnostics suite's cases with a mistake of shape (among others, for some): each
/// fails the schema.
const SHAPE_ERRORS: &[&str] = &[
    "02_unknown_top_key.yaml",
    "03_unknown_param_key.yaml",
    "04_unknown_handler_key.yaml",
    "05_missing_namespace.yaml",
    "11_handler_no_target.yaml",
    "12_handler_several_targets.yaml",
    "19_min_not_number.yaml",
    "20_negative_max_retries.yaml",
    "21_invalid_identifiers.yaml",
    "24_bad_format_and_enum_default.yaml",
    "25_not_a_mapping.yaml",
    "28_dead_letters_with_targets.yaml",
    "29_dead_letters_not_true.yaml",
    "34_upcast_malformed_steps.yaml",
    "36_bad_concurrency.yaml",
    "37_bad_retry_delays.yaml",
    "38_aggregate_unknown_references.yaml",
    "39_aggregate_stream_placeholders.yaml",
    "41_aggregate_bad_state_and_settings.yaml",
    "42_once_on_a_command.yaml",
    "43_projection_targets.yaml",
    "44_projection_settings_and_names.yaml",
    "45_process_manager_references.yaml",
    "46_process_manager_correlation.yaml",
    "47_process_manager_timeouts.yaml",
    "70_projection_checkpoint.yaml",
    "71_projection_partitions.yaml",
    "72_process_manager_partitions.yaml",
    "74_event_tags.yaml",
    "77_decision_shape.yaml",
    "78_personal_fields.yaml",
    "79_personal_subject.yaml",
    "81_personal_state.yaml",
];

/// The cases whose mistakes all need more than the shape of one file (a reference, a
/// collision of names, a regular expression that does not compile, a default that breaks
/// its own rule, ...): the validator finds them, a JSON Schema cannot, so they pass it
/// (which also keeps the schema from refusing what the validator accepts).
const OTHER_ERRORS: &[&str] = &[
    "06_unknown_type.yaml",
    "07_unknown_type_in_list.yaml",
    "08_duplicate_names.yaml",
    "09_case_collision.yaml",
    "13_unknown_command.yaml",
    "14_unknown_event.yaml",
    "15_two_command_handlers.yaml",
    "16_default_wrong_type.yaml",
    "17_default_breaks_rule.yaml",
    "18_invalid_regex.yaml",
    "22_wildcard_matches_nothing.yaml",
    "23_required_with_default.yaml",
    "26_recursive_types.yaml",
    "27_float_min_above_max.yaml",
    "30_upcast_step_not_older.yaml",
    "31_upcast_gap.yaml",
    "32_upcast_unknown_fields.yaml",
    "33_upcast_added_wrong_type.yaml",
    "35_partition_by_missing_field.yaml",
    "40_aggregate_command_also_bound.yaml",
    "48_process_manager_stream_names.yaml",
    "49_bad_text_defaults.yaml",
    "73_unknown_type_lists_valid_ones.yaml",
    "75_decision_references.yaml",
    "76_decision_command_also_bound.yaml",
    "80_personal_paths.yaml",
];

/// The cases that are no YAML tree a schema could check.
const NOT_A_TREE: &[&str] = &["01_yaml_syntax.yaml", "10_duplicate_keys.yaml"];

#[test]
fn every_shape_error_of_the_diagnostics_suite_fails() {
    let broken = repository().join("orkestra-gen/tests/broken");
    let mut cases: Vec<String> = std::fs::read_dir(&broken)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    cases.sort();
    // No JSON tree at all (a syntax error, a key twice): the language server reports
    // these itself, before any schema.
    for name in NOT_A_TREE {
        let text = std::fs::read_to_string(broken.join(name)).unwrap();
        assert!(
            serde_saphyr::from_str::<Value>(&text).is_err(),
            "{name} parses"
        );
    }
    cases.retain(|name| !NOT_A_TREE.contains(&name.as_str()));
    let mut classified: Vec<String> = SHAPE_ERRORS
        .iter()
        .chain(OTHER_ERRORS)
        .map(|s| (*s).to_owned())
        .collect();
    classified.sort();
    assert_eq!(
        cases, classified,
        "classify each case of tests/broken as a shape error or not"
    );
    let validator = validator();
    for name in SHAPE_ERRORS {
        let tree = json_of(&broken.join(name));
        assert!(
            !errors(&validator, &tree).is_empty(),
            "{name} is a shape error, but passes the language schema"
        );
    }
    for name in OTHER_ERRORS {
        let found = errors(&validator, &json_of(&broken.join(name)));
        assert!(
            found.is_empty(),
            "{name} has no shape error, but fails the language schema:\n  {}",
            found.join("\n  ")
        );
    }
}

#[test]
fn the_committed_schema_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/orkestra.schema.json");
    let current = orkestra_gen::language::schema_json();
    if std::env::var_os("ORKESTRA_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &current).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == current,
        "{} is out of date: run `orkestra-gen schema-json --out orkestra-gen/schema/orkestra.schema.json` (or this test with ORKESTRA_BLESS=1)",
        path.display()
    );
}

#[test]
fn an_editor_sees_each_key_described_and_the_field_types_offered() {
    let schema = orkestra_gen::language::schema();
    let definitions = &schema["definitions"];
    assert_eq!(
        definitions["typeExpression"]["anyOf"][0]["enum"],
        serde_json::json!(orkestra_gen::BASE_TYPES)
    );
    for (name, definition) in definitions.as_object().unwrap() {
        let Some(properties) = definition["properties"].as_object() else {
            continue;
        };
        for (key, property) in properties {
            assert!(
                property["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{name}.{key} has no description"
            );
        }
    }
    let validator = validator();
    let unknown: Value = serde_json::json!({ "namespace": "Shop.Orders", "comands": {} });
    let found = errors(&validator, &unknown).join("\n");
    assert!(found.contains("comands"), "{found}");
}
