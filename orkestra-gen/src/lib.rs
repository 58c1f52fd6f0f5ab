//! # orkestra-gen
//!
//! Turns Orkestra YAML schemas into typed Rust that compiles against `orkestra-runtime`.
//!
//! ```no_run
//! // build.rs
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     orkestra_gen::Generator::new().schemas("schemas").app_prefix("MyApp").generate()?;
//!     Ok(())
//! }
//! ```
//!
//! The pipeline, one module per step: [`yaml`] (parse with positions) → `validate`
//! (diagnostics, resolved [`model`]) → `render` (minijinja templates from `templates/`)
//! → `syn::parse_file` → prettyplease → a `DO NOT EDIT` header → written only when the
//! content changed.

#![deny(missing_docs)]

pub mod diagnostic;
pub mod model;
mod names;
mod render;
#[path = "../../orkestra-runtime/src/message/topic.rs"]
#[allow(dead_code, missing_docs)]
mod topic;
mod validate;
pub mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};

pub use diagnostic::{Diagnostic, Diagnostics, Severity};
pub use validate::Source;

/// The file name build.rs output gets in `$OUT_DIR`.
pub const GENERATED_FILE: &str = "orkestra_generated.rs";

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
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
            collect(root, &mut files)?;
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

    /// Validates and renders, without writing.
    pub fn render(&self) -> Result<Output, Error> {
        if self.schemas.is_empty() {
            return Err(Error::Usage(
                "no schemas given: call .schemas(\"schemas\")".into(),
            ));
        }
        let files = self.files()?;
        let mut sources = Vec::new();
        for path in &files {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            sources.push(Source {
                path: path.clone(),
                text,
            });
        }
        generate_from_sources(&sources, &self.app_prefix)
    }

    /// Validates, renders and writes the output file if its content changed. Returns the
    /// path written.
    pub fn generate(&self) -> Result<PathBuf, Error> {
        let output = self.render()?;
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
        write_if_changed(&path, &output.code)?;
        Ok(path)
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
                "template module.rs.j2 produced invalid Rust for module `{}`: {e}",
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

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    if meta.is_file() {
        out.push(path.to_owned());
        return Ok(());
    }
    let entries = std::fs::read_dir(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let p = entry.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
    Ok(())
}

/// Writes `content` unless the file already holds exactly it (keeps mtimes stable, so
/// cargo does not rebuild for nothing).
pub fn write_if_changed(path: &Path, content: &str) -> Result<bool, Error> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
    }
    std::fs::write(path, content).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(true)
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.code)
    }
}
