//! # orkestra-gen
//!
//! The code generator of [Orkestra](https://github.com/orkestra-rs/orkestra), a CQRS and
//! event-sourcing toolkit for Rust. You describe commands, events, handler bindings,
//! aggregates, projections, process managers and decisions in YAML; this crate, called from your
//! build.rs, turns them into typed Rust that compiles against `orkestra-runtime`: payload
//! structs with their checks, topic constants, one handler trait per binding, and the
//! wiring that subscribes them. A missing or outdated handler implementation is a compile
//! error; a mistake in a schema is a located diagnostic (`file:line:col`, a plain sentence,
//! a did-you-mean), every one of them reported at once, never a panic.
//!
//! ## A build.rs
//!
//! `Cargo.toml` (the runtime is the only dependency generated code needs):
//!
//! ```toml
//! [dependencies]
//! orkestra-runtime = "0.1"
//! serde_json = "1"
//! tokio = { version = "1", features = ["rt-multi-thread", "macros"] }
//!
//! [build-dependencies]
//! orkestra-gen = "0.1"
//! ```
//!
//! `schemas/orders.yaml`:
//!
//! ```yaml
//! namespace: Shop.Orders
//! commands:
//!   PlaceOrder:
//!     params:
//!       product_id: { type: string, required: true, min_length: 1 }
//!       quantity:   { type: integer, required: true, min: 1 }
//! events:
//!   OrderPlaced:
//!     fields:
//!       order_id: { type: string, required: true }
//! handlers:
//!   PlaceOrderHandler: { command: PlaceOrder, emits: [OrderPlaced] }
//! ```
//!
//! `build.rs`:
//!
//! ```no_run
//! fn main() {
//!     // Reads schemas/*.yaml, writes $OUT_DIR/orkestra_generated.rs and tells cargo to
//!     // run again when a schema is added, changed or removed.
//!     let generated = orkestra_gen::Generator::new()
//!         .schemas("schemas")
//!         .app_prefix("Shop")
//!         .generate();
//!     if let Err(error) = generated {
//!         // Every schema mistake, one `file:line:col: error: ...` line each.
//!         eprintln!("{error}");
//!         std::process::exit(1);
//!     }
//! }
//! ```
//!
//! Then in `src/main.rs`, `orkestra_runtime::include_generated!();` brings in one module per
//! namespace (`orders::commands::PlaceOrder`, `orders::events::OrderPlaced`,
//! `orders::handlers::PlaceOrderHandler`, `orders::topics::PLACE_ORDER`, ...), and you
//! implement the handler traits. The app prefix (`Shop`) is stripped to name modules and
//! topics: `orders.commands.place_order`.
//!
//! The same pipeline runs on schema texts held in memory, which is how tools and tests
//! check a schema without touching the disk:
//!
//! ```
//! use orkestra_gen::{Source, generate_from_sources};
//!
//! let schema = Source {
//!     path: "orders.yaml".into(),
//!     text: "namespace: Shop.Orders\ncommands:\n  PlaceOrder:\n    params:\n      quantity: { type: integr }\n".into(),
//! };
//! let error = generate_from_sources(&[schema], "Shop").unwrap_err().to_string();
//! assert!(error.starts_with("orders.yaml:5:25: error: unknown type `integr`; expected one of: string, integer,"));
//! assert!(error.ends_with("(did you mean `integer`?)"));
//!
//! let schema = Source {
//!     path: "orders.yaml".into(),
//!     text: "namespace: Shop.Orders\ncommands:\n  PlaceOrder:\n    params:\n      quantity: { type: integer, required: true }\n".into(),
//! };
//! let output = generate_from_sources(&[schema], "Shop")?;
//! assert!(output.code.contains("pub struct PlaceOrder"));
//! # Ok::<(), orkestra_gen::Error>(())
//! ```
//!
//! ## What else it does
//!
//! - **The compatibility gate**: [`Generator::check_against`] (or the [`compat`] module)
//!   compares the schemas with an older set, a directory or a git revision, and reports
//!   every change that breaks a release deployed beside the other, under a stable rule id.
//! - **Exports** ([`export`]): an AsyncAPI 3.0 document, JSON Schemas and a static
//!   documentation site with the message flow graph, from the same resolved model
//!   ([`Generator::asyncapi`], [`Generator::jsonschema`], [`Generator::docs`]).
//! - **A new service crate** ([`project`], `orkestra-gen new`) and **the schema language
//!   as a JSON Schema** for editors ([`language`], `orkestra-gen schema-json`).
//! - **The command line** is the `orkestra-cli` crate (binary `orkestra-gen`:
//!   `generate`, `check`, `topics`, `asyncapi`, `jsonschema`, `docs`, `new`,
//!   `schema-json`, `completions`, `man`), so a build script compiles neither an argument
//!   parser nor a report renderer.
//!
//! The pipeline, one module per step: `yaml` (parse with positions) → `validate`
//! (diagnostics, resolved [`model`]) → `render` (the minijinja templates in
//! `templates/`, one per schema section, embedded in the crate) → `syn::parse_file` →
//! prettyplease → a `DO NOT EDIT` header → written only when the content changed.
//!
//! ## Cargo features
//!
//! None: everything above is always built. The schema language itself (every key, its
//! default, and the Rust type each field type becomes) is the guide's reference chapter,
//! `book/src/schema-reference.md` in the repository.

#![deny(missing_docs)]
#![allow(
    clippy::needless_doctest_main,
    reason = "the front page's build.rs is shown whole, `fn main` included, as the file has it"
)]

pub mod compat;
mod diagnostic;
pub mod export;
pub mod language;
pub mod model;
mod names;
pub mod personal;
pub mod project;
mod render;
mod validate;
mod write;
mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};

pub use diagnostic::{Diagnostic, Diagnostics, Severity, Span};
pub use export::{Export, Exported};
pub use validate::Source;
#[doc(hidden)]
pub use validate::{BASE_TYPES, SCHEMA_KEYS};

/// The file name build.rs output gets in `$OUT_DIR`.
pub const GENERATED_FILE: &str = "orkestra_generated.rs";

/// Why generation failed.
///
/// Its `Debug` is the same sentence as its `Display` (every diagnostic, located, one per
/// line), then the causes it does not already spell out: a build.rs whose `main` returns
/// `Result` prints that, not a struct dump, when `generate()?` fails.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The schemas have errors; Display lists every diagnostic, one per line.
    #[error("{0}")]
    Schema(Diagnostics),
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The generator produced invalid Rust: a bug in orkestra-gen.
    #[error("orkestra-gen bug: {0}")]
    Internal(String),
    /// A required setting is missing.
    #[error("{0}")]
    Usage(String),
    /// The compatibility gate found breaking changes (`check_against`).
    #[error("{}", .0.iter().map(|c| c.to_diagnostic().to_string()).collect::<Vec<_>>().join("\n"))]
    Incompatible(Vec<compat::Change>),
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")?;
        let mut shown = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            let text = c.to_string();
            if !shown.contains(&text) {
                write!(f, "\n  caused by: {text}")?;
                shown.push('\n');
                shown.push_str(&text);
            }
            cause = c.source();
        }
        Ok(())
    }
}

/// The result of [`Generator::generate`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Generated {
    /// The file written.
    pub path: PathBuf,
    /// Whether its content changed (an unchanged file is not rewritten, so its mtime stays).
    pub changed: bool,
    /// Warnings found along the way.
    pub warnings: Diagnostics,
}

/// What a successful run produced.
#[derive(Debug)]
pub struct Output {
    /// The formatted Rust source, header included.
    pub code: String,
    /// Warnings found along the way.
    pub warnings: Diagnostics,
    /// The resolved model.
    pub model: model::Model,
}

/// The generator's builder: the whole public face for build.rs.
#[derive(Clone, Debug, Default)]
pub struct Generator {
    schemas: Vec<PathBuf>,
    app_prefix: String,
    out: Option<PathBuf>,
    cargo: bool,
    exports: Vec<Export>,
    against: Option<compat::Against>,
    allow: Vec<compat::Rule>,
}

impl Generator {
    /// A generator with no schemas, no app prefix and output to `$OUT_DIR`.
    pub fn new() -> Self {
        Self {
            cargo: true,
            ..Self::default()
        }
    }

    /// Adds a schema directory (every `*.yaml` / `*.yml` below it) or a single file.
    #[must_use]
    pub fn schemas(mut self, path: impl Into<PathBuf>) -> Self {
        self.schemas.push(path.into());
        self
    }

    /// The namespace prefix stripped from module names and topics (`MyApp`).
    #[must_use]
    pub fn app_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.app_prefix = prefix.into();
        self
    }

    /// Writes to this file instead of `$OUT_DIR/orkestra_generated.rs`.
    #[must_use]
    pub fn out_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.out = Some(path.into());
        self
    }

    /// Whether to print `cargo:rerun-if-changed` lines (on by default; the CLI turns it off).
    #[must_use]
    pub fn cargo_directives(mut self, on: bool) -> Self {
        self.cargo = on;
        self
    }

    /// Also writes an AsyncAPI 3.0 document (`.yaml`/`.yml` or `.json`) on
    /// [`generate`](Self::generate) and [`export`](Self::export).
    #[must_use]
    pub fn asyncapi(mut self, path: impl Into<PathBuf>) -> Self {
        self.exports.push(Export::AsyncApi(path.into()));
        self
    }

    /// Also writes one JSON Schema (2020-12) per command and event into this directory.
    #[must_use]
    pub fn jsonschema(mut self, dir: impl Into<PathBuf>) -> Self {
        self.exports.push(Export::JsonSchema(dir.into()));
        self
    }

    /// Also writes the documentation site (index, a page per message and handler, the
    /// flow graph) into this directory.
    #[must_use]
    pub fn docs(mut self, dir: impl Into<PathBuf>) -> Self {
        self.exports.push(Export::Docs(dir.into()));
        self
    }

    /// Validates and writes only the exports (`asyncapi`, `jsonschema`, `docs`), not
    /// the Rust; a schema set with errors writes nothing.
    pub fn export(&self) -> Result<Exported, Error> {
        if self.exports.is_empty() {
            return Err(Error::Usage(
                "no exports: call .asyncapi(..), .jsonschema(..) or .docs(..)".into(),
            ));
        }
        let (model, diags) = validate::build(&self.sources()?, &self.app_prefix);
        let model = model.ok_or_else(|| Error::Schema(diags.clone()))?;
        let mut exported = export::write_all(&model, &self.exports)?;
        exported.warnings = diags;
        Ok(exported)
    }

    /// Runs the compatibility gate against an older schema set before generating: a
    /// directory, `git:REF` (the same schema paths at a revision) or `git:REF:PATH`. A
    /// breaking change fails the build ([`Error::Incompatible`]); `HANDLER_REMOVED`,
    /// `TAG_ADDED` and `PERSONAL_ADDED` warn.
    #[must_use]
    pub fn check_against(mut self, against: impl AsRef<str>) -> Self {
        self.against = Some(compat::Against::parse(against.as_ref()));
        self
    }

    /// Turns a compatibility rule off (repeatable).
    #[must_use]
    pub fn allow(mut self, rule: compat::Rule) -> Self {
        self.allow.push(rule);
        self
    }

    /// The compatibility gate on its own: every breaking change (and warning) from the
    /// `check_against` set to these schemas. The new schemas' own errors are
    /// [`Error::Schema`]; an unreadable older set is [`Error::Usage`].
    pub fn compatibility(&self) -> Result<Vec<compat::Change>, Error> {
        let Some(against) = &self.against else {
            return Err(Error::Usage(
                "no older schema set: call .check_against(\"old-schemas/\")".into(),
            ));
        };
        let old = against.sources(&self.schemas)?;
        check_compatibility(&old, &self.sources()?, &self.app_prefix, &self.allow)
    }

    /// The schema files, sorted (printing the rerun directives when enabled).
    pub fn files(&self) -> Result<Vec<PathBuf>, Error> {
        let (files, directives) = self.scan()?;
        if self.cargo {
            for d in directives {
                println!("{d}");
            }
        }
        Ok(files)
    }

    /// The `cargo:rerun-if-changed` lines build.rs prints: every schema directory (so an
    /// added or deleted file reruns the build script) and every schema file.
    pub fn rerun_directives(&self) -> Result<Vec<String>, Error> {
        Ok(self.scan()?.1)
    }

    fn scan(&self) -> Result<(Vec<PathBuf>, Vec<String>), Error> {
        let mut files = Vec::new();
        let mut directives = Vec::new();
        for root in &self.schemas {
            directives.push(format!("cargo:rerun-if-changed={}", root.display()));
            write::collect(root, &mut files)?;
        }
        files.sort();
        files.dedup();
        directives.extend(
            files
                .iter()
                .map(|f| format!("cargo:rerun-if-changed={}", f.display())),
        );
        Ok((files, directives))
    }

    /// Reads every schema file.
    pub fn sources(&self) -> Result<Vec<Source>, Error> {
        if self.schemas.is_empty() {
            return Err(Error::Usage(
                "no schemas given: call .schemas(\"schemas\")".into(),
            ));
        }
        self.files()?
            .into_iter()
            .map(|path| {
                let text = write::read(&path)?;
                Ok(Source { path, text })
            })
            .collect()
    }

    /// Validates only: every diagnostic of the schemas (`Err` only when they cannot be read).
    pub fn check(&self) -> Result<Diagnostics, Error> {
        Ok(check_sources(&self.sources()?, &self.app_prefix))
    }

    /// Validates and renders, without writing.
    pub fn render(&self) -> Result<Output, Error> {
        generate_from_sources(&self.sources()?, &self.app_prefix)
    }

    /// Validates, renders and writes the output file if its content changed.
    pub fn generate(&self) -> Result<Generated, Error> {
        let output = self.render()?;
        if self.against.is_some() {
            let changes = self.compatibility()?;
            if changes.iter().any(|c| c.severity() == Severity::Error) {
                return Err(Error::Incompatible(changes));
            }
            if self.cargo {
                for c in &changes {
                    println!("cargo:warning={}", c.to_diagnostic());
                }
            }
        }
        if self.cargo {
            for w in output.warnings.warnings() {
                println!("cargo:warning={w}");
            }
        }
        let path = match &self.out {
            Some(p) => p.clone(),
            None => {
                let dir = std::env::var_os("OUT_DIR").ok_or_else(|| {
                    Error::Usage("OUT_DIR is not set: call .out_file(..) outside build.rs".into())
                })?;
                Path::new(&dir).join(GENERATED_FILE)
            }
        };
        let changed = write::write_if_changed(&path, &output.code)?;
        if !self.exports.is_empty() {
            export::write_all(&output.model, &self.exports)?;
        }
        Ok(Generated {
            path,
            changed,
            warnings: output.warnings,
        })
    }
}

/// Validates and renders schema texts (what the CLI and tests call).
pub fn generate_from_sources(sources: &[Source], app_prefix: &str) -> Result<Output, Error> {
    let (model, diags) = validate::build(sources, app_prefix);
    let Some(model) = model else {
        return Err(Error::Schema(diags));
    };
    let code = emit(&model)?;
    Ok(Output {
        code,
        warnings: diags,
        model,
    })
}

/// The compatibility gate as a library call: every change from the `old` schema set to
/// the `new` one that breaks a rule not in `allowed`. Errors in either set are
/// [`Error::Schema`] (located in that set's files).
pub fn check_compatibility(
    old: &[Source],
    new: &[Source],
    app_prefix: &str,
    allowed: &[compat::Rule],
) -> Result<Vec<compat::Change>, Error> {
    let (new_model, diags) = validate::build(new, app_prefix);
    let new_model = new_model.ok_or(Error::Schema(diags))?;
    let (old_model, diags) = validate::build(old, app_prefix);
    let old_model = old_model.ok_or(Error::Schema(diags))?;
    Ok(compat::compare(&old_model, &new_model, allowed))
}

/// Only validates.
pub fn check_sources(sources: &[Source], app_prefix: &str) -> Diagnostics {
    validate::build(sources, app_prefix).1
}

/// Renders, checks and formats each module; modules are independent, so they are
/// spread over the available cores and joined in model order (deterministic output).
fn emit(model: &model::Model) -> Result<String, Error> {
    let renderer = render::Renderer::new().map_err(Error::Internal)?;
    let one = |module: &model::Module| -> Result<String, Error> {
        let raw = renderer.module(model, module).map_err(Error::Internal)?;
        let file = syn::parse_file(&raw).map_err(|e| {
            Error::Internal(format!(
                "the templates (module.rs.j2 and the sections it includes) produced invalid Rust for module `{}`: {e}",
                module.ident
            ))
        })?;
        Ok(prettyplease::unparse(&file))
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = model.modules.len().div_ceil(threads).max(1);
    let parts: Vec<Result<String, Error>> = std::thread::scope(|scope| {
        let handles: Vec<_> = model
            .modules
            .chunks(chunk)
            .map(|modules| scope.spawn(move || modules.iter().map(one).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join().unwrap_or_else(|_| {
                    vec![Err(Error::Internal("a rendering thread panicked".into()))]
                })
            })
            .collect()
    });
    let body = parts.into_iter().collect::<Result<Vec<_>, _>>()?.concat();
    let files = model
        .files
        .iter()
        .map(|f| {
            f.file_name().map_or_else(
                || f.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    Ok(format!(
        "// @generated by orkestra-gen {} from {files}. DO NOT EDIT.\n\n{body}",
        env!("CARGO_PKG_VERSION")
    ))
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.code)
    }
}
