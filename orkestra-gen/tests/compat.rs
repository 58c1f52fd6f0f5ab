//! The compatibility gate: one folder per case under `tests/compat/` with the older
//! schema set in `old/` and the newer in `new/`, one snapshot of the findings each. A
//! folder named after a rule must report that rule; a `pass_*` folder must report no
//! error.

use std::path::Path;

use orkestra_gen::compat::Rule;
use orkestra_gen::{Error, Generator, Severity, Source};

fn sources(dir: &Path, label: &str) -> Vec<Source> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| Source {
            text: std::fs::read_to_string(&p).unwrap(),
            path: Path::new(label).join(p.file_name().unwrap()),
        })
        .collect()
}

#[test]
fn one_case_per_rule_and_the_changes_that_must_pass() {
    insta::glob!("compat/*/new/orders.yaml", |path| {
        let case = path.parent().unwrap().parent().unwrap();
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let changes = orkestra_gen::check_compatibility(
            &sources(&case.join("old"), "old"),
            &sources(&case.join("new"), "new"),
            "Shop",
            &[],
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let text: Vec<String> = changes
            .iter()
            .map(|c| c.to_diagnostic().to_string())
            .collect();
        if let Some(rest) = name.strip_prefix("pass_") {
            assert!(
                changes.iter().all(|c| c.severity() != Severity::Error),
                "{rest} must pass: {text:#?}"
            );
        } else if let Ok(rule) = name.parse::<Rule>() {
            assert!(
                changes.iter().any(|c| c.rule == rule),
                "{name} must be reported: {text:#?}"
            );
            let tag = format!("[{}]: ", rule.id());
            assert!(text.iter().any(|t| t.contains(&tag)), "{text:#?}");
        }
        insta::assert_snapshot!(text.join("\n"));
    });
}

#[test]
fn every_rule_has_a_case() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat");
    for rule in Rule::ALL {
        assert!(
            dir.join(rule.id().to_lowercase()).is_dir(),
            "no case for {rule}"
        );
    }
}

#[test]
fn allowed_rules_are_not_reported() {
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat/command_rule_tightened");
    let check = |allowed: &[Rule]| {
        orkestra_gen::check_compatibility(
            &sources(&case.join("old"), "old"),
            &sources(&case.join("new"), "new"),
            "Shop",
            allowed,
        )
        .unwrap()
    };
    assert!(!check(&[]).is_empty());
    assert!(check(&[Rule::CommandRuleTightened]).is_empty());
}

#[test]
fn the_json_form_names_rule_location_and_subject() {
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat/event_field_type_changed");
    let changes = orkestra_gen::check_compatibility(
        &sources(&case.join("old"), "old"),
        &sources(&case.join("new"), "new"),
        "Shop",
        &[],
    )
    .unwrap();
    let json = serde_json::to_value(&changes).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{
            "rule": "EVENT_FIELD_TYPE_CHANGED",
            "severity": "error",
            "message": changes[0].message,
            "file": "new/orders.yaml",
            "line": 21,
            "column": 7,
            "kind": "event",
            "name": "Shop.Orders.OrderPlaced",
            "field": "note",
        }])
    );
}

/// The same gate from build.rs: a breaking change fails `generate()`, warnings do not.
#[test]
fn build_rs_fails_on_a_breaking_change() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat");
    let out = std::env::temp_dir().join(format!("orkestra-compat-{}.rs", std::process::id()));
    let generate = |case: &str| {
        Generator::new()
            .cargo_directives(false)
            .schemas(root.join(case).join("new"))
            .app_prefix("Shop")
            .check_against(root.join(case).join("old").display().to_string())
            .out_file(&out)
            .generate()
    };
    match generate("event_removed") {
        Err(Error::Incompatible(changes)) => {
            assert_eq!(changes[0].rule, Rule::EventRemoved);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        generate("handler_removed").is_ok(),
        "a warning does not fail the build"
    );
    assert!(generate("pass_loosened_rule").is_ok());
    let missing = Generator::new()
        .cargo_directives(false)
        .schemas(root.join("event_removed/new"))
        .check_against("no/such/dir")
        .compatibility();
    assert!(
        matches!(&missing, Err(Error::Usage(m)) if m.contains("no/such/dir")),
        "{missing:?}"
    );
    let _ = std::fs::remove_file(&out);
}

/// A renamed (or removed) required field names the safe path in its diagnostic, and the
/// two releases of that path each pass the gate.
#[test]
fn a_required_field_rename_names_the_safe_path_and_that_path_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat");
    let case = root.join("event_required_field_removed");
    let changes = orkestra_gen::check_compatibility(
        &sources(&case.join("old"), "old"),
        &sources(&case.join("new"), "new"),
        "Shop",
        &[],
    )
    .unwrap();
    let text = changes[0].to_diagnostic().to_string();
    assert!(
        text.contains("add `count` as an optional field")
            && text.contains("--allow EVENT_REQUIRED_FIELD_REMOVED"),
        "{text}"
    );
    let json = serde_json::to_value(&changes).unwrap();
    assert!(
        json[0]["help"]
            .as_str()
            .is_some_and(|h| h.contains("deploy")),
        "{json}"
    );
    // Release 1 → 2 (both names, both optional) → 3 (the old name gone, a `renamed` step).
    let step = |from: &str, to: &str| {
        orkestra_gen::check_compatibility(
            &sources(&root.join(from), "old"),
            &sources(&root.join(to), "new"),
            "Shop",
            &[],
        )
        .unwrap()
    };
    let first = step(
        "event_required_field_removed/old",
        "pass_rename_in_two_releases/old",
    );
    assert!(first.is_empty(), "{first:#?}");
    let second = step(
        "pass_rename_in_two_releases/old",
        "pass_rename_in_two_releases/new",
    );
    assert!(second.is_empty(), "{second:#?}");
}

/// A changed partition count is reported at the projection or process manager, whose
/// kind and full name the JSON form carries, with both counts and the safe path; with
/// the rule allowed, the change passes.
#[test]
fn a_changed_partition_count_names_the_worker_and_both_counts() {
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat/partitions_changed");
    let check = |allowed: &[Rule]| {
        orkestra_gen::check_compatibility(
            &sources(&case.join("old"), "old"),
            &sources(&case.join("new"), "new"),
            "Shop",
            allowed,
        )
        .unwrap()
    };
    let changes = check(&[]);
    let json = serde_json::to_value(&changes).unwrap();
    let subjects: Vec<(&str, &str, &str)> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["rule"].as_str().unwrap(),
                c["kind"].as_str().unwrap(),
                c["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        subjects,
        [
            ("PARTITIONS_CHANGED", "projection", "Shop.Orders.Tally"),
            ("PARTITIONS_CHANGED", "projection", "Shop.Orders.Totals"),
            (
                "PARTITIONS_CHANGED",
                "process_manager",
                "Shop.Orders.Delivery"
            ),
        ],
        "`Unchanged` keeps its 2 partitions: {json}"
    );
    let tally = &changes[0];
    assert_eq!(tally.severity(), Severity::Error);
    assert!(
        tally.message.contains("from 1 to 8")
            && tally.message.contains("refuse to start")
            && tally.message.contains("rebuilt"),
        "{}",
        tally.message
    );
    assert!(
        tally
            .help
            .as_deref()
            .is_some_and(|h| h.contains("keep `partitions: 1`")),
        "{:?}",
        tally.help
    );
    assert!(check(&[Rule::PartitionsChanged]).is_empty());
}
