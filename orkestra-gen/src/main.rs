//! `orkestra-gen`: the command-line front end of the generator.
//!
//! Exit codes: 0 success (warnings allowed), 1 schema errors, 2 usage or I/O errors,
//! 3 an internal generator bug.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use orkestra_gen::{Diagnostic, Error, Generator, Severity, Source, model::HandlerTarget};

#[derive(Parser, Debug)]
#[command(
    name = "orkestra-gen",
    version,
    about = "Generate typed Rust from Orkestra YAML schemas"
)]
struct Args {
    /// How diagnostics are printed.
    #[arg(long, value_enum, global = true, default_value_t = Format::Human)]
    format: Format,
    #[command(subcommand)]
    command: Cmd,
}

/// Diagnostic output styles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// `file:line:col: error: ...` followed by the source snippet.
    Human,
    /// One `file:line:col: error: ...` line per diagnostic.
    Short,
}

/// Prints one diagnostic: the located line, then (human format) a miette snippet.
fn print_diagnostic(d: &Diagnostic, format: Format) {
    eprintln!("{d}");
    if format == Format::Short {
        return;
    }
    let Ok(text) = std::fs::read_to_string(&d.span.file) else {
        return;
    };
    let offset = d
        .span
        .offset
        .unwrap_or_else(|| offset_of(&text, d.span.line, d.span.column))
        .min(text.len());
    let len = text[offset..]
        .chars()
        .take_while(|c| !c.is_whitespace() && !matches!(c, ':' | ',' | '}' | ']'))
        .map(char::len_utf8)
        .sum::<usize>()
        .max(1);
    let mut md = miette::MietteDiagnostic::new(d.message.clone())
        .with_severity(match d.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
        .with_label(miette::LabeledSpan::at(offset..offset + len, "here"));
    if let Some(help) = &d.help {
        md = md.with_help(help.clone());
    }
    let source = miette::NamedSource::new(d.span.file.display().to_string(), text);
    let report = miette::Report::new(md).with_source_code(source);
    let mut out = String::new();
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor());
    if handler.render_report(&mut out, report.as_ref()).is_ok() {
        eprintln!("{out}");
    }
}

/// Byte offset of a 1-based line and column.
fn offset_of(text: &str, line: u64, column: u64) -> usize {
    let lines = usize::try_from(line.saturating_sub(1)).unwrap_or(usize::MAX);
    let start: usize = text.split_inclusive('\n').take(lines).map(str::len).sum();
    let cols = usize::try_from(column.saturating_sub(1)).unwrap_or(usize::MAX);
    let col: usize = text[start..].chars().take(cols).map(char::len_utf8).sum();
    (start + col).min(text.len())
}

#[derive(clap::Args, Debug)]
struct Common {
    /// Schema directory (every *.yaml below it) or file; repeatable.
    #[arg(long, default_value = "schemas")]
    schemas: Vec<PathBuf>,
    /// Namespace prefix stripped from module names and topics.
    #[arg(long, default_value = "")]
    app_prefix: String,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Validate the schemas and write the generated Rust.
    Generate {
        #[command(flatten)]
        common: Common,
        /// Output file; standard output when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Validate only: print diagnostics, write nothing; exit 1 on any error.
    Check {
        #[command(flatten)]
        common: Common,
    },
    /// List every command and event with its topic and handlers.
    Topics {
        #[command(flatten)]
        common: Common,
    },
}

fn generator(common: &Common) -> Generator {
    common
        .schemas
        .iter()
        .fold(Generator::new().cargo_directives(false), |g, s| {
            g.schemas(s.clone())
        })
        .app_prefix(common.app_prefix.clone())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let format = args.format;
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = match &e {
                Error::Schema(d) => {
                    for diag in &d.0 {
                        print_diagnostic(diag, format);
                    }
                    let errors = d.errors().count();
                    eprintln!("{errors} error{} found", if errors == 1 { "" } else { "s" });
                    1
                }
                Error::Internal(_) => {
                    eprintln!("error: {e}");
                    3
                }
                _ => {
                    eprintln!("error: {e}");
                    2
                }
            };
            ExitCode::from(code)
        }
    }
}

fn run(args: Args) -> Result<(), Error> {
    let format = args.format;
    match args.command {
        Cmd::Generate { common, out } => {
            let output = generator(&common).render()?;
            for w in output.warnings.warnings() {
                print_diagnostic(w, format);
            }
            match out {
                Some(path) => {
                    let written = orkestra_gen::write_if_changed(&path, &output.code)?;
                    eprintln!(
                        "{} {}",
                        if written { "wrote" } else { "unchanged" },
                        path.display()
                    );
                }
                None => print!("{}", output.code),
            }
            Ok(())
        }
        Cmd::Check { common } => {
            let g = generator(&common);
            let mut sources = Vec::new();
            for path in g.files()? {
                let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
                sources.push(Source { path, text });
            }
            let diags = orkestra_gen::check_sources(&sources, &common.app_prefix);
            if diags.has_errors() {
                return Err(Error::Schema(diags));
            }
            for w in diags.warnings() {
                print_diagnostic(w, format);
            }
            println!("{} schema file(s) OK", sources.len());
            Ok(())
        }
        Cmd::Topics { common } => {
            let output = generator(&common).render()?;
            let model = &output.model;
            for module in &model.modules {
                for p in module.commands.iter().chain(&module.events) {
                    let handlers: Vec<&str> = model
                        .modules
                        .iter()
                        .flat_map(|m| &m.handlers)
                        .filter(|h| match &h.target {
                            HandlerTarget::Command(r) | HandlerTarget::Event(r) => {
                                r.module == module.ident && r.name == p.name
                            }
                            HandlerTarget::Events(rs)
                            | HandlerTarget::Topic { matched: rs, .. } => rs
                                .iter()
                                .any(|r| r.module == module.ident && r.name == p.name),
                        })
                        .map(|h| h.name.as_str())
                        .collect();
                    println!(
                        "{:<32} {:<40} {}",
                        p.type_name,
                        p.topic,
                        if handlers.is_empty() {
                            "-".to_owned()
                        } else {
                            handlers.join(", ")
                        }
                    );
                }
            }
            Ok(())
        }
    }
}
