//! The repository stands on its own: no README, guide page, ARCHITECTURE.md, rustdoc or
//! code comment cites the team's design contracts (the `NEEDLES` below), which live
//! outside it and which users do not have. Each citation says the same thing as a
//! guide page or a section of ARCHITECTURE.md; link that instead.

use std::path::{Path, PathBuf};

/// Written in two halves so this file does not match itself.
const NEEDLES: [&str; 2] = [concat!("design", "/"), concat!("DESIGN", ".md")];

/// Folders that are not the repository's own text: builds, installed tools, git.
fn skipped(dir: &Path) -> bool {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    matches!(name, ".git" | "target" | "node_modules")
        // a cargo target folder anywhere (CARGO_TARGET_DIR inside the checkout)
        || dir.join("CACHEDIR.TAG").exists()
        // mdbook's output (book.toml: build-dir = "build")
        || (name == "build" && dir.parent().is_some_and(|p| p.join("book.toml").exists()))
}

fn texts(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if !skipped(&path) {
                texts(&path, out);
            }
        } else if path
            .extension()
            .is_some_and(|e| e == "rs" || e == "md" || e == "toml" || e == "j2")
        {
            out.push(path);
        }
    }
}

#[test]
fn nothing_in_the_repository_cites_documents_outside_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.canonicalize().unwrap();
    assert!(root.join("ARCHITECTURE.md").exists(), "{}", root.display());
    let mut files = Vec::new();
    texts(&root, &mut files);
    // The walk reaches what it must: the README, the guide, the runtime's sources.
    for expected in [
        "README.md",
        "book/src/introduction.md",
        "orkestra-runtime/src/lib.rs",
    ] {
        assert!(
            files.contains(&root.join(expected)),
            "{expected} not walked"
        );
    }
    let mut found = Vec::new();
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for (number, line) in text.lines().enumerate() {
            if NEEDLES.iter().any(|needle| line.contains(needle)) {
                found.push(format!(
                    "{}:{}: {}",
                    file.strip_prefix(&root).unwrap_or(file).display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "cite the guide (book/src) or ARCHITECTURE.md instead:\n{}",
        found.join("\n")
    );
}
