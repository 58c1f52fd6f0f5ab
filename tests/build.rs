//! The goldens are insta snapshots of the generator's output
//! (`orkestra-gen/tests/snapshots/golden__*.snap`); this writes the code inside them to
//! `$OUT_DIR` so the library compiles it: a golden that does not compile fails the build.

use std::path::{Path, PathBuf};

const GOLDENS: &[&str] = &[
    "shop",
    "nasty",
    "wiring",
    "evolution",
    "formats",
    "aggregates",
    "projections",
    "process_managers",
    "decisions",
    "personal",
];

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let snapshots = Path::new("../orkestra-gen/tests/snapshots");
    for name in GOLDENS {
        let snap = snapshots.join(format!("golden__{name}.snap"));
        println!("cargo:rerun-if-changed={}", snap.display());
        let text =
            std::fs::read_to_string(&snap).unwrap_or_else(|e| panic!("{}: {e}", snap.display()));
        std::fs::write(out.join(format!("{name}.rs")), snapshot_body(&text))
            .expect("OUT_DIR is writable");
    }
}

/// The snapshot's content: what follows its `---` delimited header.
fn snapshot_body(text: &str) -> &str {
    text.strip_prefix("---\n")
        .and_then(|rest| rest.split_once("\n---\n"))
        .map_or(text, |(_, body)| body)
}
