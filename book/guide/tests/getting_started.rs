//! The getting-started project (`book/getting-started`, shown by the first chapter) is
//! what `orkestra-gen new my-shop` writes: each of its files, and the Cargo.toml the
//! chapter shows (the crate itself depends on the workspace's crates instead).

use std::path::Path;

const CHAPTER: &str = include_str!("../../src/getting-started.md");

#[test]
fn the_getting_started_project_is_what_new_writes() {
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("../getting-started");
    let files = orkestra_gen::project::NewProject::new("my-shop")
        .files()
        .unwrap();
    let mut compared = 0;
    for file in &files {
        let path = file.path.to_string_lossy();
        match path.as_ref() {
            // The workspace's form of the dependencies, a README and a .gitignore the
            // chapter replaces.
            "Cargo.toml" | "README.md" | ".gitignore" => continue,
            _ => {}
        }
        let ours = std::fs::read_to_string(project.join(&file.path))
            .unwrap_or_else(|e| panic!("book/getting-started/{path}: {e}"));
        assert!(
            ours == file.content,
            "book/getting-started/{path} differs from what `orkestra-gen new my-shop` writes: write it again (orkestra-gen new my-shop --path /tmp/my-shop, then copy)"
        );
        compared += 1;
    }
    assert_eq!(compared, 7);
    let cargo = files
        .iter()
        .find(|f| f.path == Path::new("Cargo.toml"))
        .unwrap();
    assert!(
        CHAPTER.contains(&format!("```toml\n{}```", cargo.content)),
        "getting-started.md does not show the Cargo.toml `new` writes:\n{}",
        cargo.content
    );
}
