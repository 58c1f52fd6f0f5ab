//! YAML 1.1's boolean words are names and text in schemas: a field or param called `n`,
//! `on` or `yes` keeps its name, and a string field's `default: no` is the string "no".

use orkestra_gen::Source;
use orkestra_gen::model::Literal;

/// Every spelling YAML 1.1 reads as a boolean.
const WORDS: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
    "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
];

fn schema(word: &str) -> String {
    format!(
        "namespace: Shop.Words\n\
         commands:\n  Say:\n    params:\n      {word}: string\n      \
         other: {{ type: string, default: {word} }}\n\
         events:\n  Said:\n    fields:\n      {word}: {{ type: string, required: true }}\n      \
         label: {{ type: string, default: {word} }}\n      list: {{ type: \"list<string>\", default: [{word}] }}\n"
    )
}

#[test]
fn boolean_words_are_names_as_keys_and_text_as_string_defaults() {
    for word in WORDS {
        let sources = [Source {
            path: format!("{word}.yaml").into(),
            text: schema(word),
        }];
        let out = orkestra_gen::generate_from_sources(&sources, "Shop")
            .unwrap_or_else(|e| panic!("`{word}` as a key and a default: {e}"));
        assert!(out.warnings.is_empty(), "{word}: {}", out.warnings);
        let module = &out.model.modules[0];
        let say = &module.commands[0];
        assert_eq!(say.fields[0].name, *word, "param name");
        assert_eq!(
            say.fields[1].default,
            Some(Literal::Str((*word).to_owned())),
            "string default of `{word}`"
        );
        let said = &module.events[0];
        assert_eq!(said.fields[0].name, *word, "field name");
        assert_eq!(
            said.fields[1].default,
            Some(Literal::Str((*word).to_owned()))
        );
        assert_eq!(
            said.fields[2].default,
            Some(Literal::List(vec![Literal::Str((*word).to_owned())]))
        );
    }
}

#[test]
fn two_boolean_words_for_the_same_value_are_two_fields() {
    let sources = [Source {
        path: "pair.yaml".into(),
        text: "namespace: Shop.Words\nevents:\n  Said:\n    fields:\n      n: string\n      no: string\n      off: string\n      y: integer\n      on: boolean\n"
            .into(),
    }];
    let out =
        orkestra_gen::generate_from_sources(&sources, "Shop").unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<_> = out.model.modules[0].events[0]
        .fields
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(names, ["n", "no", "off", "y", "on"]);
}

#[test]
fn a_boolean_field_still_takes_true_and_false() {
    let sources = [Source {
        path: "bool.yaml".into(),
        text: "namespace: Shop.Words\nevents:\n  Said:\n    fields:\n      flag: { type: boolean, default: true }\n      other: { type: boolean, default: False }\n"
            .into(),
    }];
    let out =
        orkestra_gen::generate_from_sources(&sources, "Shop").unwrap_or_else(|e| panic!("{e}"));
    let fields = &out.model.modules[0].events[0].fields;
    assert_eq!(fields[0].default, Some(Literal::Bool(true)));
    assert_eq!(fields[1].default, Some(Literal::Bool(false)));
}
