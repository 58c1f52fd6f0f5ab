//! Exports for everything that is not Rust: AsyncAPI 3.0, JSON Schema 2020-12 and a
//! static documentation site with the message flow. Each reads the resolved model (so a
//! schema set with errors exports nothing) and writes through `write.rs`.
//!
//! | file | what |
//! | --- | --- |
//! | `flow.rs` | who sends and who receives each message |
//! | `tree.rs` | an ordered JSON tree, printed as JSON or YAML |
//! | `jsonschema.rs` | one schema per command and event; shared by AsyncAPI and the site |
//! | `asyncapi.rs` | the AsyncAPI document, with the RabbitMQ topology as bindings |
//! | `graph.rs` | the flow graph, laid out by `layout-rs`, drawn as linked SVG |
//! | `docs.rs` | the site's pages |

mod asyncapi;
mod docs;
mod flow;
mod graph;
mod jsonschema;
mod tree;

use std::path::{Path, PathBuf};

use crate::Error;
use crate::model::Model;
use crate::write;

/// One export to write.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Export {
    /// An AsyncAPI 3.0 document; JSON when the file name ends in `.json`, else YAML.
    AsyncApi(PathBuf),
    /// A directory with one JSON Schema per command and event.
    JsonSchema(PathBuf),
    /// A directory with the documentation site.
    Docs(PathBuf),
}

impl Export {
    /// Where it is written.
    pub fn path(&self) -> &Path {
        match self {
            Export::AsyncApi(p) | Export::JsonSchema(p) | Export::Docs(p) => p,
        }
    }
}

/// What an export wrote.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Exported {
    /// Every file of the exports, written or already up to date.
    pub files: Vec<PathBuf>,
    /// How many of them were (re)written.
    pub changed: usize,
    /// Warnings found along the way.
    pub warnings: crate::Diagnostics,
}

/// The AsyncAPI document as YAML.
pub fn asyncapi_yaml(model: &Model) -> String {
    asyncapi::document(&flow::Flow::new(model)).to_yaml()
}

/// The AsyncAPI document as JSON.
pub fn asyncapi_json(model: &Model) -> String {
    asyncapi::document(&flow::Flow::new(model)).to_json()
}

/// The JSON Schema files: (file name, content), one per command and event, named
/// `<Namespace without prefix>.<Name>.json`.
pub fn jsonschema_files(model: &Model) -> Vec<(String, String)> {
    jsonschema::files(&flow::Flow::new(model))
}

/// The documentation site: (path relative to its directory, content).
pub fn docs_files(model: &Model) -> Result<Vec<(String, String)>, Error> {
    docs::files(&flow::Flow::new(model)).map_err(Error::Internal)
}

/// The flow graph alone, as a standalone SVG (links relative to the site root).
pub fn flow_svg(model: &Model) -> Result<String, Error> {
    graph::Graph::of(&flow::Flow::new(model))
        .svg("")
        .map_err(Error::Internal)
}

/// Renders every export first, then writes them (so a rendering failure writes nothing).
pub(crate) fn write_all(model: &Model, exports: &[Export]) -> Result<Exported, Error> {
    let mut planned: Vec<(PathBuf, String)> = Vec::new();
    for export in exports {
        match export {
            Export::AsyncApi(path) => {
                let text = match path.extension().and_then(|e| e.to_str()) {
                    Some("json") => asyncapi_json(model),
                    Some("yaml" | "yml") => asyncapi_yaml(model),
                    _ => {
                        return Err(Error::Usage(format!(
                            "{}: the AsyncAPI file name must end in .yaml, .yml or .json",
                            path.display()
                        )));
                    }
                };
                planned.push((path.clone(), text));
            }
            Export::JsonSchema(dir) => {
                for (name, text) in jsonschema_files(model) {
                    planned.push((dir.join(name), text));
                }
            }
            Export::Docs(dir) => {
                for (name, text) in docs_files(model)? {
                    planned.push((dir.join(name), text));
                }
            }
        }
    }
    for export in exports {
        if let Export::JsonSchema(dir) | Export::Docs(dir) = export {
            // Created first so an unusable output directory is named as given.
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?;
        }
    }
    let mut exported = Exported::default();
    for (path, text) in planned {
        if write::write_if_changed(&path, &text)? {
            exported.changed += 1;
        }
        exported.files.push(path);
    }
    for export in exports {
        if let Export::Docs(dir) = export {
            remove_stale_pages(dir, &exported.files)?;
        }
    }
    Ok(exported)
}

/// Removes the pages of messages, handlers and decisions that no longer exist. Only
/// `*.html` in the site's own `messages/`, `handlers/` and `decisions/` folders are
/// touched.
fn remove_stale_pages(dir: &Path, current: &[PathBuf]) -> Result<(), Error> {
    for folder in ["messages", "handlers", "decisions"] {
        let folder = dir.join(folder);
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let page = path.extension().is_some_and(|e| e == "html");
            if page && !current.contains(&path) {
                std::fs::remove_file(&path).map_err(|source| Error::Io { path, source })?;
            }
        }
    }
    Ok(())
}
