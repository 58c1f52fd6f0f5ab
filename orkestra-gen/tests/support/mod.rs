//! Node.js tools for the export tests: the official AsyncAPI parser and playwright-core
//! (driving Debian's Chromium). `.ci/run` installs both into a cache directory and sets
//! `ORKESTRA_NODE_MODULES` to its `node_modules`; without it the default cache
//! (`$HOME/.cache/orkestra/npm/node_modules`) is tried. When they are missing a test
//! skips with a message, unless `ORKESTRA_REQUIRE_SERVICES=1` (as CI sets): then it fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn required() -> bool {
    std::env::var("ORKESTRA_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Reports a missing tool: a panic when services are required, else a skip notice.
pub fn unavailable(what: &str, detail: &str) {
    if required() {
        panic!("{what} is required (ORKESTRA_REQUIRE_SERVICES=1) but unavailable: {detail}");
    }
    eprintln!(
        "SKIPPED: {what} is unavailable ({detail}); run .ci/run once or set ORKESTRA_NODE_MODULES, \
         or set ORKESTRA_REQUIRE_SERVICES=1 to fail instead"
    );
}

/// The `node_modules` holding `@asyncapi/parser` and `playwright-core`, with `node` on
/// the PATH; `None` (after a skip notice) when either is missing.
pub fn node_modules() -> Option<PathBuf> {
    let dir = std::env::var_os("ORKESTRA_NODE_MODULES")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/orkestra/npm/node_modules"))
        });
    let Some(dir) = dir else {
        unavailable("node_modules", "ORKESTRA_NODE_MODULES and HOME are unset");
        return None;
    };
    for package in ["@asyncapi/parser", "playwright-core"] {
        if !dir.join(package).join("package.json").is_file() {
            unavailable(package, &format!("not in {}", dir.display()));
            return None;
        }
    }
    if Command::new("node").arg("--version").output().is_err() {
        unavailable("Node.js", "`node` is not on the PATH");
        return None;
    }
    Some(dir)
}

/// Debian's Chromium (`ORKESTRA_CHROMIUM` or `/usr/bin/chromium`).
pub fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("ORKESTRA_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if path.is_file() {
        Some(path)
    } else {
        unavailable("Chromium", &format!("{} not found", path.display()));
        None
    }
}

/// A script of `tests/node/`, run by `node` with `NODE_PATH` set.
pub struct Node {
    command: Command,
}

/// What a script printed and how it ended.
pub struct Run {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Node {
    pub fn new(modules: &Path) -> Self {
        let mut command = Command::new("node");
        command.env("NODE_PATH", modules);
        Self { command }
    }

    pub fn script(mut self, name: &str) -> Self {
        self.command.arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/node")
                .join(name),
        );
        self
    }

    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Self {
        self.command.arg(arg);
        self
    }

    pub fn run(mut self) -> Run {
        let out = self.command.output().expect("node runs");
        Run {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}
