//! The documentation site in a real browser: headless Chromium (Debian's `chromium`,
//! driven by playwright-core from Node) opens every page of the site generated from
//! `schemas/` and of the hostile set (the `nasty` golden and `tests/exports/hostile`).
//! Screenshots go under `target/` (`CARGO_TARGET_TMPDIR`) and their paths are printed.

mod support;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::{Node, chromium, node_modules};

fn dir(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Writes the site of `sets` and opens it; returns the browser's report and the model.
fn open_site(
    name: &str,
    sets: &[&str],
    query: &str,
) -> Option<(Value, orkestra_gen::model::Model)> {
    let modules = node_modules()?;
    let chromium = chromium()?;
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("site-{name}"));
    std::fs::remove_dir_all(&root).ok();
    let site = root.join("site");
    let generator = sets
        .iter()
        .fold(
            orkestra_gen::Generator::new().cargo_directives(false),
            |g, s| g.schemas(dir(s)),
        )
        .app_prefix("Shop")
        .docs(&site);
    let exported = generator.export().unwrap();
    let model = generator.render().unwrap().model;
    let pages: Vec<String> = exported
        .files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "html"))
        .map(|f| {
            f.strip_prefix(&site)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let message_page = pages
        .iter()
        .find(|p| p.starts_with("messages/"))
        .cloned()
        .unwrap_or_default();
    let config = json!({
        "chromium": chromium,
        "site": site,
        "pages": pages,
        "query": query,
        "shotDir": root.join("screenshots"),
        "screenshots": {"index": "index.html", "flow": "flow.html", "message": message_page},
    });
    let config_file = root.join("config.json");
    std::fs::write(&config_file, config.to_string()).unwrap();
    let run = Node::new(&modules)
        .script("site_check.cjs")
        .arg(&config_file)
        .run();
    assert!(
        run.status.success(),
        "the browser run failed:\n{}{}",
        run.stdout,
        run.stderr
    );
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| {
        panic!("{e}: {}\n{}", run.stdout, run.stderr);
    });
    // Straight to stderr, past the test harness's capture, so CI logs show the paths.
    let mut stderr = std::io::stderr();
    for (shot, path) in report["screenshots"].as_object().unwrap() {
        let _ = writeln!(
            stderr,
            "screenshot ({name} {shot}): {}",
            path.as_str().unwrap()
        );
    }
    Some((report, model))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn keys(report: &Value, kind: &str) -> BTreeSet<String> {
    report["nodes"][kind]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| n["key"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_reference_site_works_in_chromium() {
    let Some((report, model)) = open_site("shop", &["../schemas"], "order") else {
        return;
    };
    for list in [
        "consoleErrors",
        "pageErrors",
        "requests",
        "dialogs",
        "pwned",
    ] {
        assert_eq!(strings(&report[list]), Vec::<String>::new(), "{list}");
    }
    // Every command and event has its page, titled with its name.
    let pages = report["pages"].as_array().unwrap();
    let mut commands = BTreeSet::new();
    let mut events = BTreeSet::new();
    let mut handlers = BTreeSet::new();
    for m in &model.modules {
        for (set, payloads) in [(&mut commands, &m.commands), (&mut events, &m.events)] {
            for p in payloads {
                let key = format!("{}.{}", m.qualifier, p.name);
                let page = format!("messages/{key}.html");
                let found = pages.iter().find(|x| x["path"] == page.as_str());
                let h1 = found.unwrap_or_else(|| panic!("no page {page}"))["h1"]
                    .as_str()
                    .unwrap();
                assert!(h1.ends_with(&p.name), "{page}: {h1}");
                set.insert(key);
            }
        }
        handlers.extend(m.handlers.iter().map(|h| h.name.clone()));
    }
    // The graph: one node per command, event and handler, each linked to its page.
    assert_eq!(keys(&report, "command"), commands);
    assert_eq!(keys(&report, "event"), events);
    assert_eq!(keys(&report, "handler"), handlers);
    for kind in ["command", "event", "handler"] {
        for n in report["nodes"][kind].as_array().unwrap() {
            let href = n["href"].as_str().unwrap();
            assert!(
                pages.iter().any(|p| p["path"] == href),
                "{href} is linked but not a page"
            );
        }
    }
    // The filter narrows the list to what matches, and clearing it shows everything.
    let f = &report["filter"];
    let total = f["total"].as_u64().unwrap();
    let matched = f["matched"].as_u64().unwrap();
    assert_eq!(
        total,
        6 + 10 + 3,
        "messages, handlers and types are listed: {f}"
    );
    assert_eq!(f["countText"], format!("{total} of {total}"));
    assert!(matched > 0 && matched < total, "{f}");
    assert_eq!(f["allMatch"], true, "{f}");
    assert_eq!(f["none"], 0, "{f}");
    assert_eq!(f["sectionsShownForNone"], 0, "{f}");
    assert_eq!(f["cleared"], total, "{f}");
}

#[test]
fn hostile_descriptions_run_no_script_in_chromium() {
    let sets = ["tests/golden/nasty", "tests/exports/hostile"];
    let Some((report, _)) = open_site("hostile", &sets, "inject") else {
        return;
    };
    assert_eq!(
        strings(&report["pwned"]),
        Vec::<String>::new(),
        "a hostile script ran"
    );
    assert_eq!(strings(&report["dialogs"]), Vec::<String>::new());
    assert_eq!(strings(&report["pageErrors"]), Vec::<String>::new());
    assert_eq!(strings(&report["requests"]), Vec::<String>::new());
    assert_eq!(strings(&report["consoleErrors"]), Vec::<String>::new());
    // Scripts do run on these pages (the index's filter counted), so "no hostile script
    // ran" is a real observation, not a disabled JavaScript.
    assert!(
        report["filter"]["countText"]
            .as_str()
            .is_some_and(|t| t.ends_with(" of 10")),
        "{}",
        report["filter"]
    );
    // Every page of the hostile set was visited.
    let pages = report["pages"].as_array().unwrap().len();
    assert_eq!(
        pages,
        2 + 4 + 4,
        "index, flow, four messages, four handlers"
    );
}

#[test]
fn the_decisions_site_works_in_chromium() {
    let sets = ["tests/golden/decisions"];
    let Some((report, model)) = open_site("decisions", &sets, "subscri") else {
        return;
    };
    for list in [
        "consoleErrors",
        "pageErrors",
        "requests",
        "dialogs",
        "pwned",
    ] {
        assert_eq!(strings(&report[list]), Vec::<String>::new(), "{list}");
    }
    // One node per decision, each linked to its page, which the browser opened.
    let decisions: BTreeSet<String> = model
        .modules
        .iter()
        .flat_map(|m| {
            m.decisions
                .iter()
                .map(move |d| format!("{}.{}", m.qualifier, d.name))
        })
        .collect();
    assert_eq!(decisions.len(), 2);
    assert_eq!(keys(&report, "decision"), decisions);
    let pages = report["pages"].as_array().unwrap();
    for n in report["nodes"]["decision"].as_array().unwrap() {
        let href = n["href"].as_str().unwrap();
        let page = pages.iter().find(|p| p["path"] == href);
        let h1 = page.unwrap_or_else(|| panic!("{href} is linked but not a page"))["h1"]
            .as_str()
            .unwrap();
        assert!(h1.starts_with("decision "), "{href}: {h1}");
    }
    // The index lists the decisions with everything else, and filters them too.
    let f = &report["filter"];
    assert_eq!(
        f["total"],
        3 + 4 + 1 + 2,
        "commands, events, the type, decisions: {f}"
    );
    assert_eq!(f["allMatch"], true, "{f}");
}

/// Personal fields as a reader of the site sees them: a visible mark on each personal
/// field (in the event's table and its named types' tables), the subject named on the
/// event's page, and neither on pages without personal data.
#[test]
fn the_personal_data_site_shows_personal_fields_in_chromium() {
    let Some((report, _)) = open_site("personal", &["tests/exports/personal"], "customer") else {
        return;
    };
    for list in [
        "consoleErrors",
        "pageErrors",
        "requests",
        "dialogs",
        "pwned",
    ] {
        assert_eq!(strings(&report[list]), Vec::<String>::new(), "{list}");
    }
    let pages = report["pages"].as_array().unwrap();
    let page = |path: &str| {
        pages
            .iter()
            .find(|p| p["path"] == path)
            .unwrap_or_else(|| panic!("no page {path}"))
    };
    let registered = page("messages/Customers.CustomerRegistered.html");
    let marked: Vec<(String, String)> = registered["personal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["field"].as_str().unwrap().to_owned(),
                m["row"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let fields: Vec<&str> = marked.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        ["email", "name", "card", "street", "phone"],
        "{marked:#?}"
    );
    // The mark sits in the field's own row, beside its name.
    for (field, row) in &marked {
        assert!(row.starts_with(&format!("{field} personal")), "{row}");
    }
    let name_title = registered["personal"][1]["title"].as_str().unwrap();
    assert!(name_title.contains("\"(erased)\""), "{name_title}");
    let subject = registered["subject"].as_str().unwrap_or_default();
    assert!(
        subject.contains("subject named by customer_id"),
        "{subject:?}"
    );
    for plain in [
        "messages/Customers.PlanChanged.html",
        "messages/Customers.RegisterCustomer.html",
    ] {
        assert_eq!(page(plain)["personal"], json!([]), "{plain}");
        assert_eq!(page(plain)["subject"], Value::Null, "{plain}");
    }
}
