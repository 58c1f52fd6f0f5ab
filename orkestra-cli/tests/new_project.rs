//! `orkestra-gen new` as a user runs it: what it prints and writes, what it refuses
//! (writing nothing), and a real project built and tested with `cargo`, depending on this
//! checkout by path.
//!
//! The built project shares the workspace's target directory (the one this test binary
//! runs from), so its dependencies are compiled once and reused by every later run: the
//! first run in a fresh target directory compiles the runtime with the project's
//! features; later ones compile only the project. It resolves the workspace's
//! `Cargo.lock` offline.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh directory for one test, removed when it ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("orkestra-new-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn new(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orkestra-gen"))
        .arg("new")
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

/// Every file below `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn new_prints_every_file_it_writes_and_the_next_step() {
    let scratch = Scratch::new("files");
    let out = new(&["my-shop"], &scratch.0);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    insta::assert_snapshot!(text(&out.stdout));
    let written = files(&scratch.0.join("my-shop"));
    for file in &written {
        assert!(
            text(&out.stdout).contains(&format!("  {file}\n")),
            "{file} written but not listed"
        );
    }
    assert_eq!(written.len(), 10, "{written:?}");
    let schema = std::fs::read_to_string(scratch.0.join("my-shop/schemas/my-shop.yaml")).unwrap();
    assert!(
        schema.starts_with("# yaml-language-server: $schema=orkestra.schema.json\n"),
        "{schema}"
    );
    // The modeline names the file beside it, which is the schema-json output.
    let beside =
        std::fs::read_to_string(scratch.0.join("my-shop/schemas/orkestra.schema.json")).unwrap();
    let printed = Command::new(env!("CARGO_BIN_EXE_orkestra-gen"))
        .arg("schema-json")
        .output()
        .unwrap();
    assert_eq!(beside, text(&printed.stdout));
    // The new schema passes `check` as it is.
    let check = Command::new(env!("CARGO_BIN_EXE_orkestra-gen"))
        .args(["check", "--schemas", "schemas", "--app-prefix", "MyShop"])
        .current_dir(scratch.0.join("my-shop"))
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
}

#[test]
fn an_invalid_name_is_one_line_and_writes_nothing() {
    let scratch = Scratch::new("names");
    for (name, says) in [
        (
            "1shop",
            "`1shop` is not a valid crate name: it must start with a letter",
        ),
        (
            "my shop",
            "`my shop` is not a valid crate name: use ASCII letters",
        ),
        ("fn", "`fn` is not a valid crate name: it is a Rust keyword"),
        (
            "tokio",
            "`tokio` is not a valid crate name: the new crate depends",
        ),
        ("", "the crate name is empty"),
    ] {
        let out = new(&[name], &scratch.0);
        assert_eq!(out.status.code(), Some(2), "{name:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.starts_with(&format!("error: {says}")),
            "{name:?}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{name:?}: {stderr}");
        assert_eq!(text(&out.stdout), "");
        assert!(
            files(&scratch.0).is_empty(),
            "{name:?} wrote {:?}",
            files(&scratch.0)
        );
    }
}

#[test]
fn a_directory_that_is_not_empty_is_refused_and_left_alone() {
    let scratch = Scratch::new("taken");
    let taken = scratch.0.join("taken");
    std::fs::create_dir_all(&taken).unwrap();
    std::fs::write(taken.join("notes.txt"), "mine").unwrap();
    let out = new(&["my-shop", "--path", "taken"], &scratch.0);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: taken already exists and is not empty; choose another name or --path\n"
    );
    assert_eq!(files(&taken), ["notes.txt"]);
    assert_eq!(
        std::fs::read_to_string(taken.join("notes.txt")).unwrap(),
        "mine"
    );
    // An empty directory is fine.
    std::fs::create_dir_all(scratch.0.join("empty")).unwrap();
    let out = new(&["my-shop", "--path", "empty"], &scratch.0);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(scratch.0.join("empty/Cargo.toml").is_file());
}

#[test]
fn a_path_that_is_no_checkout_is_refused() {
    let scratch = Scratch::new("checkout");
    let out = new(
        &["my-shop", "--orkestra-path", scratch.0.to_str().unwrap()],
        &scratch.0,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("give the directory of an Orkestra checkout"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(files(&scratch.0), Vec::<String>::new());
}

/// The workspace's target directory: this test binary is `<target>/debug/deps/<name>`.
fn workspace_target() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .map(Path::to_owned)
        .unwrap_or_else(|| checkout().join("target"))
}

fn cargo(project: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO"))
        .args(args)
        .current_dir(project)
        .env("CARGO_TARGET_DIR", workspace_target())
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .output()
        .unwrap()
}

/// The promise: `orkestra-gen new`, then `cargo build`, then its tests pass,
/// and the binary runs as a service until interrupted.
#[test]
fn a_new_project_builds_passes_its_tests_and_runs() {
    let scratch = Scratch::new("build");
    let project = scratch.0.join("my-shop");
    let started = Instant::now();
    let out = new(
        &["my-shop", "--orkestra-path", checkout().to_str().unwrap()],
        &scratch.0,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The workspace's versions of every dependency, resolved offline.
    std::fs::copy(checkout().join("Cargo.lock"), project.join("Cargo.lock")).unwrap();
    let build = cargo(&project, &["build", "--offline"]);
    assert!(
        build.status.success(),
        "cargo build:\n{}",
        text(&build.stderr)
    );
    eprintln!(
        "orkestra-gen new + cargo build: {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let test = cargo(&project, &["test", "--offline"]);
    let stdout = text(&test.stdout);
    assert!(
        test.status.success(),
        "cargo test:\n{stdout}\n{}",
        text(&test.stderr)
    );
    assert!(stdout.contains("test result: ok. 4 passed"), "{stdout}");

    // As written: rustfmt leaves it alone.
    let fmt = Command::new(env!("CARGO"))
        .args(["fmt", "--check"])
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(
        fmt.status.success(),
        "cargo fmt --check:\n{}",
        text(&fmt.stdout)
    );

    // The service: starts, places its order, runs until SIGINT, then stops cleanly.
    let binary = workspace_target().join("debug/my-shop");
    let mut service = Command::new(&binary)
        .current_dir(&project)
        .env("ORKESTRA_STORE_ADAPTER", "memory")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = service.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        let mut buf = [0u8; 256];
        while !seen.contains("running;") {
            match std::io::Read::read(&mut stdout, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        seen
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let kill = Command::new("kill")
        .args(["-INT", &service.id().to_string()])
        .status()
        .unwrap();
    let seen = reader.join().unwrap();
    assert!(kill.success(), "the service had already stopped: {seen}");
    let status = service.wait().unwrap();
    let mut stderr = String::new();
    let _ = std::io::Read::read_to_string(&mut service.stderr.take().unwrap(), &mut stderr);
    assert!(
        seen.starts_with("my-shop: bus in_process, store memory\n"),
        "{seen}\n{stderr}"
    );
    assert!(seen.contains(": Succeeded\n"), "{seen}\n{stderr}");
    assert!(seen.contains("confirmed order ord_"), "{seen}\n{stderr}");
    assert!(status.success(), "{status}: {stderr}");
}
