//! Generates the code the guide's snippets compile against, and copies the guide's
//! chapters into `$OUT_DIR/book/` with mdBook's `{{#include FILE}}` lines replaced by the
//! file, so the doctests see what a reader sees.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("cargo sets OUT_DIR")?);

    // The schemas the chapters use, included by src/lib.rs. (The getting-started
    // chapter shows the crate `book/getting-started`, which the workspace builds and
    // tests itself.)
    orkestra_gen::Generator::new()
        .schemas("schemas")
        .app_prefix("Shop")
        .out_file(out.join("guide.rs"))
        .generate()?;

    let chapters = Path::new("../src");
    println!("cargo:rerun-if-changed={}", chapters.display());
    std::fs::create_dir_all(out.join("book"))?;
    for entry in std::fs::read_dir(chapters)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            println!("cargo:rerun-if-changed={}", path.display());
            let text = std::fs::read_to_string(&path)?;
            let mut expanded = String::new();
            for line in text.lines() {
                match line
                    .trim()
                    .strip_prefix("{{#include ")
                    .and_then(|rest| rest.strip_suffix("}}"))
                {
                    Some(file) => {
                        let file = chapters.join(file.trim());
                        println!("cargo:rerun-if-changed={}", file.display());
                        let included = std::fs::read_to_string(&file)
                            .map_err(|e| format!("{}: {}: {e}", path.display(), file.display()))?;
                        expanded.push_str(&included);
                        if !included.ends_with('\n') {
                            expanded.push('\n');
                        }
                    }
                    None => {
                        expanded.push_str(line);
                        expanded.push('\n');
                    }
                }
            }
            std::fs::write(
                out.join("book").join(path.file_name().ok_or("a file")?),
                expanded,
            )?;
        }
    }
    Ok(())
}
