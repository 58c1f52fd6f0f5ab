//! The CLI as a user runs it: output snapshots and documented exit codes
//! (0 ok, 1 schema errors, 2 usage or I/O errors). It runs from the generator's
//! directory, so the broken schemas of its diagnostics suite are at `tests/broken`.

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orkestra-gen"))
        .args(args)
        .current_dir(generator_dir())
        .output()
        .unwrap()
}

fn generator_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../orkestra-gen")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_passes_on_the_reference_schemas() {
    let out = run(&["check", "--schemas", "../schemas", "--app-prefix", "Shop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "2 schema file(s) OK\n");
}

#[test]
fn check_reports_located_errors_with_a_snippet() {
    let out = run(&[
        "check",
        "--schemas",
        "tests/broken/03_unknown_param_key.yaml",
        "--app-prefix",
        "Shop",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout),
        "",
        "check writes nothing to stdout on errors"
    );
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.matches("unknown key `requird`").count(),
        1,
        "each diagnostic is printed once"
    );
    insta::assert_snapshot!(stderr);
}

#[test]
fn check_reports_every_error_of_a_directory_in_short_form() {
    let out = run(&[
        "--format",
        "short",
        "check",
        "--schemas",
        "tests/broken",
        "--app-prefix",
        "Shop",
    ]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!(text(&out.stderr));
}

#[test]
fn topics_lists_commands_and_events_with_their_handlers() {
    let out = run(&["topics", "--schemas", "../schemas", "--app-prefix", "Shop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    insta::assert_snapshot!(text(&out.stdout));
}

#[test]
fn generate_writes_the_golden_output() {
    let dir = std::env::temp_dir().join(format!("orkestra-gen-cli-{}", std::process::id()));
    let out_file = dir.join("generated.rs");
    let args = [
        "generate",
        "--schemas",
        "../schemas",
        "--app-prefix",
        "Shop",
        "--out",
        out_file.to_str().unwrap(),
    ];
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The golden is the generator's insta snapshot: its content follows the header.
    let snapshot =
        std::fs::read_to_string(generator_dir().join("tests/snapshots/golden__shop.snap")).unwrap();
    let golden = snapshot.splitn(3, "---\n").nth(2).unwrap();
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), golden);
    let again = run(&args);
    assert!(
        text(&again.stderr).starts_with("unchanged "),
        "{}",
        text(&again.stderr)
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn an_app_prefix_that_matches_no_namespace_warns_and_check_still_passes() {
    let out = run(&[
        "check",
        "--schemas",
        "../orkestra-cli/tests/fixtures/lending.yaml",
        "--app-prefix",
        "Library",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1 schema file(s) OK\n");
    insta::assert_snapshot!(text(&out.stderr));
}

#[test]
fn a_missing_directory_is_a_usage_error() {
    let out = run(&["check", "--schemas", "no/such/dir"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with("error: no/such/dir: "),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["frobnicate"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap's own usage errors exit 2 too"
    );
}

const CASE: &str = "tests/compat/command_rule_tightened";

#[test]
fn check_against_reports_each_change_with_its_rule_and_exit_1() {
    let new = format!("{CASE}/new");
    let old = format!("{CASE}/old");
    let out = run(&[
        "--format",
        "short",
        "check",
        "--schemas",
        &new,
        "--app-prefix",
        "Shop",
        "--against",
        &old,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr
            .lines()
            .take(6)
            .all(|l| l.contains(": error[COMMAND_RULE_TIGHTENED]: ")),
        "{stderr}"
    );
    insta::assert_snapshot!(stderr);
}

#[test]
fn check_against_human_form_shows_the_rule_and_the_snippet() {
    let out = run(&[
        "check",
        "--schemas",
        "tests/compat/event_field_type_changed/new",
        "--app-prefix",
        "Shop",
        "--against",
        "tests/compat/event_field_type_changed/old",
    ]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!(text(&out.stderr));
}

#[test]
fn check_against_json_allow_and_passing_sets() {
    let new = format!("{CASE}/new");
    let old = format!("{CASE}/old");
    let out = run(&[
        "--format",
        "json",
        "check",
        "--schemas",
        &new,
        "--app-prefix",
        "Shop",
        "--against",
        &old,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = json.as_array().unwrap();
    assert_eq!(items.len(), 6, "{json:#}");
    assert!(items.iter().all(|i| i["rule"] == "COMMAND_RULE_TIGHTENED"
        && i["kind"] == "command"
        && i["name"] == "Shop.Orders.PlaceOrder"
        && i["file"].as_str().unwrap().ends_with("orders.yaml")
        && i["line"].as_u64().is_some()));
    assert_eq!(text(&out.stderr), "", "JSON output is the array alone");

    let allowed = run(&[
        "check",
        "--schemas",
        &new,
        "--app-prefix",
        "Shop",
        "--against",
        &old,
        "--allow",
        "COMMAND_RULE_TIGHTENED",
    ]);
    assert_eq!(allowed.status.code(), Some(0), "{}", text(&allowed.stderr));
    assert!(text(&allowed.stdout).contains("compatible with"));

    let warning = run(&[
        "--format",
        "short",
        "check",
        "--schemas",
        "tests/compat/handler_removed/new",
        "--app-prefix",
        "Shop",
        "--against",
        "tests/compat/handler_removed/old",
    ]);
    assert_eq!(warning.status.code(), Some(0), "a warning passes");
    assert!(text(&warning.stderr).contains("warning[HANDLER_REMOVED]"));
}

#[test]
fn check_against_usage_errors_name_what_is_wrong() {
    let new = format!("{CASE}/new");
    for (against, says) in [
        ("no/such/dir", "--against no/such/dir: no such directory"),
        ("git:no-such-ref-xyz", "`no-such-ref-xyz` is not a revision"),
    ] {
        let out = run(&["check", "--schemas", &new, "--against", against]);
        assert_eq!(out.status.code(), Some(2), "{against}");
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
    }
    let out = run(&[
        "check",
        "--schemas",
        &new,
        "--against",
        &format!("{CASE}/old"),
        "--allow",
        "NO_SUCH_RULE",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown rule `NO_SUCH_RULE`; the rules are: EVENT_REMOVED")
    );
}

/// `git:REF` reads the same schema paths at a revision; `git:REF:PATH` a path from the
/// repository root. A throwaway repository with two commits.
#[test]
fn check_against_a_git_revision() {
    let repo = std::env::temp_dir().join(format!("orkestra-gate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&repo);
    std::fs::create_dir_all(repo.join("schemas")).unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .current_dir(&repo)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    };
    let case = generator_dir().join("tests/compat/event_removed");
    git(&["init", "-q"]);
    std::fs::copy(
        case.join("old/orders.yaml"),
        repo.join("schemas/orders.yaml"),
    )
    .unwrap();
    git(&["add", "."]);
    git(&["commit", "-qm", "v1"]);
    git(&["tag", "v1"]);
    std::fs::copy(
        case.join("new/orders.yaml"),
        repo.join("schemas/orders.yaml"),
    )
    .unwrap();
    for against in ["git:v1", "git:v1:schemas"] {
        let out = Command::new(env!("CARGO_BIN_EXE_orkestra-gen"))
            .args([
                "--format",
                "short",
                "check",
                "--app-prefix",
                "Shop",
                "--against",
                against,
            ])
            .current_dir(&repo)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{against}: {}",
            text(&out.stderr)
        );
        let stderr = text(&out.stderr);
        assert!(
            stderr.starts_with("v1:schemas/orders.yaml:17:3: error[EVENT_REMOVED]: "),
            "{against}: {stderr}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_orkestra-gen"))
        .args(["check", "--against", "git:v1:elsewhere"])
        .current_dir(&repo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no *.yaml schema under `elsewhere` at `v1`"),
        "{}",
        text(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&repo);
}

/// A fresh temporary directory for one test.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("orkestra-cli-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    dir
}

/// Every file below `dir`, relative and sorted, one per line.
fn listing(dir: &Path) -> String {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out.join("\n")
}

#[test]
fn asyncapi_writes_yaml_or_json_by_extension() {
    let dir = scratch("asyncapi");
    for name in ["asyncapi.yaml", "asyncapi.json"] {
        let out_file = dir.join(name);
        let path = out_file.to_str().unwrap();
        let out = run(&[
            "asyncapi",
            "--schemas",
            "../schemas",
            "--app-prefix",
            "Shop",
            "--out",
            path,
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stderr).replace(path, "<out>"),
            "wrote <out> (1 file(s), 1 changed)\n"
        );
        let written = std::fs::read_to_string(&out_file).unwrap();
        if name.ends_with(".json") {
            let doc: serde_json::Value = serde_json::from_str(&written).unwrap();
            assert_eq!(doc["asyncapi"], "3.0.0");
        } else {
            assert!(written.starts_with("asyncapi: \"3.0.0\"\n"), "{written}");
        }
    }
    let out = run(&[
        "asyncapi",
        "--schemas",
        "../schemas",
        "--app-prefix",
        "Shop",
        "--out",
        dir.join("asyncapi.txt").to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown extension is a usage error"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn jsonschema_and_docs_write_their_directories() {
    let dir = scratch("dirs");
    let mut report = String::new();
    for command in ["jsonschema", "docs"] {
        let out_dir = dir.join(command);
        let path = out_dir.to_str().unwrap();
        let out = run(&[
            command,
            "--schemas",
            "../schemas",
            "--app-prefix",
            "Shop",
            "--out",
            path,
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        report.push_str(&format!(
            "$ orkestra-gen {command} --out <out>\n{}{}\n\n",
            text(&out.stderr).replace(path, "<out>"),
            listing(&out_dir)
        ));
    }
    insta::assert_snapshot!(report);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn exports_of_broken_schemas_write_nothing_and_report_what_check_reports() {
    let dir = scratch("broken");
    let check = run(&[
        "--format",
        "short",
        "check",
        "--schemas",
        "tests/broken",
        "--app-prefix",
        "Shop",
    ]);
    for (command, out) in [
        ("asyncapi", dir.join("a.yaml")),
        ("jsonschema", dir.join("schemas")),
        ("docs", dir.join("site")),
    ] {
        let out = run(&[
            "--format",
            "short",
            command,
            "--schemas",
            "tests/broken",
            "--app-prefix",
            "Shop",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1), "{command}");
        assert_eq!(text(&out.stderr), text(&check.stderr), "{command}");
    }
    assert!(!dir.exists(), "nothing was written");
}

#[test]
fn an_unwritable_export_path_exits_2_naming_it() {
    let dir = scratch("unwritable");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("a-file");
    std::fs::write(&file, "").unwrap();
    let site = file.join("site");
    let out = run(&[
        "docs",
        "--schemas",
        "../schemas",
        "--app-prefix",
        "Shop",
        "--out",
        site.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!("error: {}: ", site.display())),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// Shell completions and man pages are generated from the same clap definitions as the
/// parser: every subcommand and flag is in them (the man pages leave the hidden ones out).
#[test]
fn completions_and_man_pages_come_from_the_command_definitions() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for word in [
            "generate",
            "check",
            "new",
            "schema-json",
            "app-prefix",
            "store",
        ] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    let out = run(&["completions", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );

    let out = run(&["man"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(page.contains(".TH orkestra-gen 1"), "{page}");
    assert!(page.contains("schema\\-json"), "{page}");

    let dir = std::env::temp_dir().join(format!("orkestra-gen-man-{}", std::process::id()));
    let out = run(&["man", "--out", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    let new_page = std::fs::read_to_string(dir.join("orkestra-gen-new.1")).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    insta::assert_snapshot!(pages.join("\n"));
    assert!(new_page.contains("in_process"), "{new_page}");
    assert!(
        !new_page.contains("orkestra\\-path"),
        "a hidden flag is documented"
    );
}

#[test]
fn schema_json_prints_or_writes_the_language_schema() {
    let printed = run(&["schema-json"]);
    assert_eq!(printed.status.code(), Some(0), "{}", text(&printed.stderr));
    let schema: serde_json::Value = serde_json::from_slice(&printed.stdout).unwrap();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(schema["required"], serde_json::json!(["namespace"]));
    let committed =
        std::fs::read_to_string(generator_dir().join("schema/orkestra.schema.json")).unwrap();
    assert_eq!(text(&printed.stdout), committed);
    let file = std::env::temp_dir().join(format!("orkestra-schema-{}.json", std::process::id()));
    let written = run(&["schema-json", "--out", file.to_str().unwrap()]);
    assert_eq!(written.status.code(), Some(0), "{}", text(&written.stderr));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), committed);
    std::fs::remove_file(&file).ok();
}
