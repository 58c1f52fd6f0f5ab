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
