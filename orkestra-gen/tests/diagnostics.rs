//! One snapshot of the diagnostics for each broken schema in `tests/broken/`.

use orkestra_gen::Source;

#[test]
fn broken_schemas() {
    insta::glob!("broken/*.yaml", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let diags = orkestra_gen::check_sources(
            &[Source {
                path: name.into(),
                text,
            }],
            "Shop",
        );
        assert!(
            !diags.is_empty(),
            "a broken schema must produce a diagnostic"
        );
        insta::assert_snapshot!(diags.to_string());
    });
}

#[test]
fn errors_across_files_are_reported_together() {
    let a = Source {
        path: "a.yaml".into(),
        text: "namespace: Shop.A\ncommands:\n  Go: {}\n".into(),
    };
    let b = Source {
        path: "b.yaml".into(),
        text: "namespace: Shop.A\ncommands:\n  Go: {}\nhandlers:\n  H: { command: Stop }\n".into(),
    };
    let diags = orkestra_gen::check_sources(&[a, b], "Shop");
    insta::assert_snapshot!(diags.to_string());
}

#[test]
fn namespaces_that_map_to_one_module_are_reported_at_the_namespace() {
    let a = Source {
        path: "a.yaml".into(),
        text: "namespace: Shop.OrderS\ncommands:\n  Go: {}\n".into(),
    };
    let b = Source {
        path: "b.yaml".into(),
        text: "namespace: Shop.Order_S\ncommands:\n  Stop: {}\n".into(),
    };
    let diags = orkestra_gen::check_sources(&[a, b], "Shop");
    insta::assert_snapshot!(diags.to_string());
}

#[test]
fn projection_names_are_unique_across_namespaces() {
    let a = Source {
        path: "a.yaml".into(),
        text: "namespace: Shop.A\nevents:\n  Went: {}\nprojections:\n  Totals: { event: Went }\n"
            .into(),
    };
    let b = Source {
        path: "b.yaml".into(),
        text: "namespace: Shop.B\nevents:\n  Came: {}\nprojections:\n  Totals: { event: Came }\n"
            .into(),
    };
    let diags = orkestra_gen::check_sources(&[a, b], "Shop");
    insta::assert_snapshot!(diags.to_string());
}

#[test]
fn an_app_prefix_that_strips_nothing_from_a_namespace_is_a_warning_at_the_namespace() {
    let lending = Source {
        path: "lending.yaml".into(),
        text: "namespace: Lib.Lending\ncommands:\n  LendBook: {}\n".into(),
    };
    let members = Source {
        path: "members.yaml".into(),
        text: "namespace: Library.Members\ncommands:\n  Join: {}\n".into(),
    };
    let diags = orkestra_gen::check_sources(&[lending, members], "Library");
    assert!(!diags.has_errors(), "{diags}");
    assert_eq!(diags.warnings().count(), 1, "{diags}");
    insta::assert_snapshot!(diags.to_string());
    // Without a prefix there is nothing to strip, so nothing to warn about.
    let plain = Source {
        path: "lending.yaml".into(),
        text: "namespace: Lib.Lending\ncommands:\n  LendBook: {}\n".into(),
    };
    assert!(orkestra_gen::check_sources(&[plain], "").is_empty());
}
