//! What a user sees when an error reaches `main`: a build.rs written as the README shows
//! (`generate()?` in a `main` returning `Result`) and a service's `main` returning a
//! runtime error both print sentences with their causes, root cause first, never a
//! struct dump. A probe crate is built by cargo for real (offline, beside the
//! workspace's build) and its build script's and binary's stderr are read.

#[path = "../orkestra-runtime/tests/support/services.rs"]
#[allow(dead_code)]
mod services;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn cargo(dir: &Path, target: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO"));
    command
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .env_remove("RUSTFLAGS")
        .env_remove("ORKESTRA_BUS_ADAPTER")
        .env_remove("ORKESTRA_STORE_ADAPTER")
        .env_remove("ORKESTRA_STORE_URL");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// No `Name { field: .. }` or `Variant(..)` dump of the error types.
fn assert_no_dump(stderr: &str) {
    for dump in [
        "Schema(",
        "Diagnostics(",
        "Diagnostic {",
        "Span {",
        "Invalid {",
        "Unavailable {",
        "DriverError(",
    ] {
        assert!(!stderr.contains(dump), "a struct dump ({dump}):\n{stderr}");
    }
}

#[test]
fn build_scripts_and_binaries_print_sentences_not_struct_dumps() {
    let root = workspace();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("errors-probe");
    let dir = std::env::temp_dir().join(format!("orkestra-errors-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("schemas")).unwrap();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"errors-probe\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n\
             [workspace]\n\n[dependencies]\norkestra-runtime = {{ path = {:?}, features = [\"postgres\"] }}\n\
             tokio = {{ version = \"1\", features = [\"macros\", \"rt-multi-thread\"] }}\n\n\
             [build-dependencies]\norkestra-gen = {{ path = {:?} }}\n",
            root.join("orkestra-runtime"),
            root.join("orkestra-gen"),
        ),
    )
    .unwrap();
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    // build.rs exactly as the README writes it.
    std::fs::write(
        dir.join("build.rs"),
        "fn main() -> Result<(), Box<dyn std::error::Error>> {\n    \
         orkestra_gen::Generator::new().schemas(\"schemas\").app_prefix(\"P\").generate()?;\n    \
         Ok(())\n}\n",
    )
    .unwrap();
    // A service's main as the README's snippets lead to: `?` on the runtime's errors.
    std::fs::write(
        dir.join("src/main.rs"),
        "orkestra_runtime::include_generated!();\n\n\
         #[tokio::main]\nasync fn main() -> Result<(), Box<dyn std::error::Error>> {\n    \
         let config = orkestra_runtime::Config::load()?;\n    \
         let _store = orkestra_runtime::Store::from_config(&config).await?;\n    \
         Ok(())\n}\n",
    )
    .unwrap();
    let schema = dir.join("schemas/a.yaml");
    std::fs::write(
        &schema,
        "namespace: P.Alpha\ncommands:\n  Go:\n    params:\n      n: { type: string, requird: true }\n",
    )
    .unwrap();

    // 1. A schema mistake: the build script's error is the located diagnostic.
    let build = cargo(&dir, &target, &["build", "--quiet", "--offline"], &[]);
    assert!(!build.status.success());
    let stderr = text(&build.stderr);
    assert!(
        stderr.contains(
            "schemas/a.yaml:5:26: error: unknown key `requird` in field `n` (did you mean `required`?)"
        ),
        "{stderr}"
    );
    assert_no_dump(&stderr);
    eprintln!("build.rs:\n{stderr}");

    // 2. A runtime error from a `main` returning `Result`: the setting, where its value
    // came from and why.
    std::fs::write(
        &schema,
        "namespace: P.Alpha\ncommands:\n  Go:\n    params:\n      n: { type: string, required: true }\n",
    )
    .unwrap();
    let run = cargo(
        &dir,
        &target,
        &["run", "--quiet", "--offline"],
        &[("ORKESTRA_BUS_ADAPTER", "carrier-pigeon")],
    );
    let stderr = text(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(
        stderr.starts_with("Error: bus.adapter (env ORKESTRA_BUS_ADAPTER): "),
        "{stderr}"
    );
    assert_no_dump(&stderr);
    eprintln!("main, bad setting:\n{stderr}");

    // 3. A database that does not exist: the root cause first.
    let url = services::postgres_url();
    let missing = format!(
        "{}/orkestra_no_such_db_{}",
        url.expose().rsplit_once('/').unwrap().0,
        std::process::id()
    );
    let run = cargo(
        &dir,
        &target,
        &["run", "--quiet", "--offline"],
        &[
            ("ORKESTRA_STORE_ADAPTER", "postgres"),
            ("ORKESTRA_STORE_URL", &missing),
        ],
    );
    let stderr = text(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    if stderr.contains("Connection refused") || stderr.contains("connecting to server") {
        services::unavailable("PostgreSQL", &stderr);
    } else {
        let expected = format!(
            "database \"orkestra_no_such_db_{}\" does not exist",
            std::process::id()
        );
        let first_line = stderr.lines().next().unwrap_or_default();
        assert!(
            first_line.starts_with("Error: postgres store unavailable (store.url): ")
                && first_line.contains(&format!(": {expected}")),
            "the root cause first:\n{stderr}"
        );
        if let Some(wrapper) = first_line.find("Error occurred") {
            assert!(first_line.find(&expected) < Some(wrapper), "{stderr}");
        }
        assert_no_dump(&stderr);
        eprintln!("main, missing database:\n{stderr}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
