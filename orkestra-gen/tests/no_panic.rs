//! The front end never panics, whatever the input; every diagnostic it reports is
//! located (file, line, column); and any schema set that validates renders to Rust that
//! parses (an `Internal` error would be a generator bug).

use orkestra_gen::{Error, Source};
use proptest::prelude::*;

const REFERENCE: &[&str] = &[
    include_str!("../../schemas/orders.yaml"),
    include_str!("../../schemas/accounts.yaml"),
];

const TOKENS: &[&str] = &[
    "",
    " ",
    ":",
    "- ",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "'",
    "#",
    "&a",
    "*a",
    "!!str",
    "\n",
    "\n  ",
    "type",
    "list<",
    ">",
    "map<string>",
    "required: true",
    "default: 1",
    "min: -1",
    "max_retries: -5",
    "pattern: \"(\"",
    "topic: \"#.*\"",
    "events: []",
    "command: PlaceOrder",
    "event: OrderPlaced",
    "Orders.",
    "r#type",
    "match",
    "self",
    "\u{202e}",
    "*/",
    "`",
    "\\",
    "999999999999999999999999",
    "1.5",
    "~",
    "null",
    "true",
    "enum: [a, A]",
    "fields:",
    "params:",
];

fn mutated() -> impl Strategy<Value = String> {
    (
        0..REFERENCE.len(),
        proptest::collection::vec(
            (any::<prop::sample::Index>(), 0..TOKENS.len(), 0..4usize),
            1..6,
        ),
    )
        .prop_map(|(which, edits)| {
            let mut text = REFERENCE[which].to_owned();
            for (at, token, cut) in edits {
                let mut pos = at.index(text.len() + 1);
                while !text.is_char_boundary(pos) {
                    pos -= 1;
                }
                let mut end = (pos + cut).min(text.len());
                while !text.is_char_boundary(end) {
                    end += 1;
                }
                text.replace_range(pos..end, TOKENS[token]);
            }
            text
        })
}

fn check(texts: Vec<String>) -> Result<(), TestCaseError> {
    let sources: Vec<Source> = texts
        .into_iter()
        .enumerate()
        .map(|(i, text)| Source {
            path: format!("s{i}.yaml").into(),
            text,
        })
        .collect();
    let diags = orkestra_gen::check_sources(&sources, "Shop");
    for d in &diags {
        prop_assert!(
            !d.span.file.as_os_str().is_empty() && d.span.line >= 1 && d.span.column >= 1,
            "every diagnostic has a file, line and column: {d}"
        );
        prop_assert!(!d.message.is_empty());
    }
    match orkestra_gen::generate_from_sources(&sources, "Shop") {
        Ok(out) => {
            prop_assert!(syn::parse_file(&out.code).is_ok());
            exports_parse(&out.model)?;
        }
        Err(Error::Schema(d)) => prop_assert!(d.has_errors()),
        Err(other) => prop_assert!(false, "generator bug on a valid schema: {other}"),
    }
    Ok(())
}

/// Every export of a valid model renders without panicking and parses back.
fn exports_parse(model: &orkestra_gen::model::Model) -> Result<(), TestCaseError> {
    use orkestra_gen::export;
    let json: serde_json::Value = serde_json::from_str(&export::asyncapi_json(model))
        .map_err(|e| TestCaseError::fail(format!("AsyncAPI JSON: {e}")))?;
    let yaml: serde_json::Value = serde_saphyr::from_str(&export::asyncapi_yaml(model))
        .map_err(|e| TestCaseError::fail(format!("AsyncAPI YAML: {e}")))?;
    prop_assert_eq!(json, yaml);
    for (name, text) in export::jsonschema_files(model) {
        prop_assert!(
            serde_json::from_str::<serde_json::Value>(&text).is_ok(),
            "{}",
            name
        );
    }
    let site = export::docs_files(model).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(site.iter().any(|(p, _)| p == "index.html"));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn mutated_reference_schemas(a in mutated(), b in mutated()) {
        check(vec![a, b])?;
    }

    #[test]
    fn arbitrary_text(text in "[ -~\n\t\u{202e}é]{0,200}") {
        check(vec![text])?;
    }

    #[test]
    fn token_soup(tokens in proptest::collection::vec(0..TOKENS.len(), 0..40)) {
        let text: String = tokens.into_iter().map(|t| TOKENS[t]).collect();
        check(vec![text])?;
    }
}
