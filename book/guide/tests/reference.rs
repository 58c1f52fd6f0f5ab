//! The guide's schema reference (`book/src/schema-reference.md`) names every key the
//! generator's validator accepts, and every base type; and every chapter is compiled.
//! (`self_contained.rs` keeps every page free of references to documents outside the
//! repository.)

const REFERENCE: &str = include_str!("../../src/schema-reference.md");
const SUMMARY: &str = include_str!("../../src/SUMMARY.md");

#[test]
fn the_reference_names_every_key_of_the_validator() {
    let mut missing = Vec::new();
    for (section, keys) in orkestra_gen::SCHEMA_KEYS {
        for key in *keys {
            // Each key is written as code in a table row: | `key` | ...
            if !REFERENCE.contains(&format!("| `{key}` |")) {
                missing.push(format!("{section}: {key}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys missing from schema-reference.md: {missing:?}"
    );
}

#[test]
fn the_reference_maps_every_base_type_to_rust() {
    let missing: Vec<_> = orkestra_gen::BASE_TYPES
        .iter()
        .filter(|ty| !REFERENCE.contains(&format!("| `{ty}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "types missing from schema-reference.md: {missing:?}"
    );
    for generic in ["list<T>", "map<T>"] {
        assert!(REFERENCE.contains(&format!("| `{generic}` |")), "{generic}");
    }
}

#[test]
fn every_chapter_in_the_summary_is_compiled_and_every_compiled_chapter_is_listed() {
    let listed: Vec<&str> = SUMMARY
        .lines()
        .filter_map(|l| {
            l.split_once("](")
                .and_then(|(_, rest)| rest.strip_suffix(')'))
        })
        .collect();
    let mut compiled: Vec<&str> = orkestra_guide::CHAPTERS.to_vec();
    let mut listed_sorted = listed.clone();
    compiled.sort_unstable();
    listed_sorted.sort_unstable();
    assert_eq!(
        compiled, listed_sorted,
        "SUMMARY.md and orkestra_guide::CHAPTERS differ"
    );
}
