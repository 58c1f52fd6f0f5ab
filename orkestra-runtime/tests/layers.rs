//! The runtime's modules form layers, and no module imports from a layer above its own
//! (ARCHITECTURE.md draws them). Checked on the source text: every `crate::<module>` and
//! `super::` path that leaves a folder.

use std::path::{Path, PathBuf};

/// The rank of a top-level module of `src/`: its ARCHITECTURE.md layer times ten, plus
/// its order inside the layer (`error` uses `config`; `codegen` sits on `message`).
fn layer(module: &str) -> Option<u8> {
    Some(match module {
        "config" | "sync" => 0,
        "error" => 1,
        "message" => 10,
        "codegen" => 11,
        "trace" => 20,
        // Instruments only: nothing of the layers above is needed to count.
        "metrics" => 21,
        "handler" => 30,
        // Personal data: subjects' keys and the encryption the store applies.
        "keys" => 35,
        "bus" | "store" => 40,
        // Leases kept, partitions shared: on the store, under the workers.
        "runner" => 45,
        "publish" | "aggregate" | "projection" | "relay" => 50,
        // Decisions share the aggregates' event ids, backoff and publishing.
        "decision" => 51,
        // Process managers feed on projections.
        "process" => 55,
        // A namespace's bindings started at once: handlers, projections, process managers.
        "wiring" => 56,
        "telemetry" => 60,
        "lib" => 70,
        _ => return None,
    })
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module names a file refers to through `crate::`, including the
/// re-exports at the crate root (`crate::Bus` is `bus`'s).
fn referenced(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        // `$crate::` in macros refers to the user's crate of the macro, not ours.
        if text[..i].ends_with('$') {
            continue;
        }
        let rest = &text[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            // `crate::{a, b}`: each name in the group.
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for item in group.split(',') {
                    let item = item.trim();
                    let name = item.split("::").next().unwrap_or("").trim();
                    if !name.is_empty() {
                        found.push(name.to_owned());
                    }
                }
            }
            continue;
        }
        found.push(name);
    }
    found
}

/// Root re-exports (`crate::Bus`, `crate::DriverError`) mapped to their modules.
fn module_of(name: &str) -> Option<&str> {
    if layer(name).is_some() {
        return Some(name);
    }
    Some(match name {
        "DriverError" => "error",
        "Bus" | "BusError" | "DeadLetters" | "HandlerContext" | "Subscription" | "Target" => "bus",
        "Config" | "ConfigError" | "SecretUrl" => "config",
        "DeadLetter" | "EventSet" | "HandlerError" => "handler",
        "Store" | "StoreError" | "EventData" | "ExpectedVersion" | "RecordedEvent"
        | "AppendResult" | "AllSubscription" => "store",
        "KeyStore" | "KeyError" => "keys",
        "topic" => "message",
        "ProcessManagers" => "process",
        _ if name.chars().next().is_some_and(char::is_uppercase) || name == "new_id" => "message",
        _ => return None,
    })
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut violations = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        let own = layer(&top)
            .unwrap_or_else(|| panic!("{top}: no layer; add it to this test and ARCHITECTURE.md"));
        let text = std::fs::read_to_string(file).unwrap();
        for name in referenced(&text) {
            let Some(module) = module_of(&name) else {
                violations.push(format!(
                    "{}: crate::{name} is not a known module",
                    relative.display()
                ));
                continue;
            };
            let theirs = layer(module).unwrap();
            // The one documented sibling edge: `StoreError::Publish` holds a `BusError`.
            let allowed = theirs < own
                || module == top
                || (top == "store" && module == "bus" && relative.ends_with("error.rs"));
            if !allowed {
                violations.push(format!(
                    "{} (layer {own}) uses crate::{name} (`{module}`, layer {theirs})",
                    relative.display()
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layer violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_a_violation() {
    // A layer-1 file naming the bus would be reported.
    let names = referenced("use crate::bus::Bus;\nfn f() -> crate::Store { todo() }");
    assert_eq!(names, ["bus", "Store"]);
    assert_eq!(module_of("Store"), Some("store"));
    assert!(layer("bus").unwrap() > layer("message").unwrap());
}
