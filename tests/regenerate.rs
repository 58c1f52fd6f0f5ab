//! Editing, adding or deleting a schema regenerates on the next `cargo build`: a probe
//! crate with a build.rs is built for real (offline, its own target directory) and its
//! binary prints the header and topics of its generated code.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn run_probe(dir: &Path, target: &Path) -> String {
    let out = Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--offline"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "probe build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn schema_changes_regenerate() {
    let root = workspace();
    // Beside the workspace's own build, so CI's cache outside the clone serves it too.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("regen-probe");
    let dir = std::env::temp_dir().join(format!("orkestra-regen-{}", std::process::id()));
    let schemas = dir.join("schemas");
    std::fs::create_dir_all(schemas.join("nested")).unwrap();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"regen-probe\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n\
             [workspace]\n\n[dependencies]\norkestra-runtime = {{ path = {:?} }}\n\n\
             [build-dependencies]\norkestra-gen = {{ path = {:?} }}\n",
            root.join("orkestra-runtime"),
            root.join("orkestra-gen"),
        ),
    )
    .unwrap();
    // Share the workspace's lock file so the probe resolves the same versions offline.
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    std::fs::write(
        dir.join("build.rs"),
        "fn main() { orkestra_gen::Generator::new().schemas(\"schemas\").app_prefix(\"P\").generate().unwrap(); }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("src/main.rs"),
        "const CODE: &str = include_str!(concat!(env!(\"OUT_DIR\"), \"/orkestra_generated.rs\"));\n\
         fn main() {\n    for line in CODE.lines().filter(|l| l.starts_with(\"// @generated\") || l.contains(\"pub const TOPIC\")) {\n        println!(\"{}\", line.trim());\n    }\n}\n",
    )
    .unwrap();
    let schema = schemas.join("a.yaml");
    std::fs::write(&schema, "namespace: P.Alpha\ncommands:\n  Go: {}\n").unwrap();

    let first = run_probe(&dir, &target);
    assert!(first.contains("from a.yaml."), "{first}");
    assert!(first.contains("\"alpha.commands.go\""), "{first}");

    // Edit: a topic override appears.
    std::fs::write(
        &schema,
        "namespace: P.Alpha\ncommands:\n  Go: { topic: alpha.start }\n",
    )
    .unwrap();
    let edited = run_probe(&dir, &target);
    assert!(
        edited.contains("\"alpha.start\""),
        "edit not picked up: {edited}"
    );

    // Add a file in a nested directory.
    let added = schemas.join("nested/b.yaml");
    std::fs::write(&added, "namespace: P.Beta\nevents:\n  Done: {}\n").unwrap();
    let with_b = run_probe(&dir, &target);
    assert!(
        with_b.contains("from a.yaml, b.yaml."),
        "addition not picked up: {with_b}"
    );
    assert!(with_b.contains("\"beta.events.done\""), "{with_b}");

    // Delete it again.
    std::fs::remove_file(&added).unwrap();
    let without_b = run_probe(&dir, &target);
    assert!(
        without_b.contains("from a.yaml."),
        "deletion not picked up: {without_b}"
    );
    assert!(!without_b.contains("beta"), "{without_b}");

    std::fs::remove_dir_all(&dir).ok();
}
