//! `orkestra-gen`: the command-line front end of the generator. Argument parsing and
//! printing only; every decision is the `orkestra_gen` library's.
//!
//! Exit codes: 0 success (warnings allowed), 1 schema errors, 2 usage or I/O errors,
//! 3 an internal generator bug.
//!
//! ```text
//! orkestra-gen check      --schemas schemas --app-prefix Shop [--against DIR|git:REF[:PATH]] [--allow RULE]...
//! orkestra-gen generate   --schemas schemas --app-prefix Shop [--out FILE]
//! orkestra-gen topics     --schemas schemas --app-prefix Shop
//! orkestra-gen asyncapi   --schemas schemas --app-prefix Shop --out asyncapi.yaml
//! orkestra-gen jsonschema --schemas schemas --app-prefix Shop --out DIR
//! orkestra-gen docs       --schemas schemas --app-prefix Shop --out DIR
//! ```
//! Install it with `cargo install orkestra-cli`; the crate has no library and no cargo
//! features (its README is its crates.io page).

mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use orkestra_gen::compat::{Rule, UnknownRule};
use orkestra_gen::model::{HandlerTarget, Model, Payload};
use orkestra_gen::{Diagnostics, Error, Generator, Severity};

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
    /// The sentence in a box with the source snippet, its location and any hint.
    Human,
    /// One `file:line:col: error: ...` line per diagnostic.
    Short,
    /// One JSON array on standard output: `{rule, severity, message, file, line, column,
    /// kind, name, field}` per diagnostic.
    Json,
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
    /// Validate only: print diagnostics, write nothing; exit 1 on any error. With
    /// `--against`, also the compatibility gate: every change that breaks a release
    /// deployed beside the older schema set, under its rule id.
    Check {
        #[command(flatten)]
        common: Common,
        /// The older schema set: a directory, `git:REF` (the same paths at a revision) or
        /// `git:REF:PATH` (PATH relative to the repository root).
        #[arg(long, value_name = "DIR|git:REF[:PATH]")]
        against: Option<String>,
        /// A compatibility rule to turn off (repeatable), e.g. COMMAND_RULE_TIGHTENED.
        #[arg(long, value_name = "RULE", requires = "against")]
        allow: Vec<String>,
    },
    /// List every command and event with its topic and handlers.
    Topics {
        #[command(flatten)]
        common: Common,
    },
    /// Write an AsyncAPI 3.0 document (YAML, or JSON when the file ends in .json).
    Asyncapi {
        #[command(flatten)]
        common: Common,
        /// Output file (`asyncapi.yaml` or `asyncapi.json`).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write one JSON Schema (2020-12) per command and event into a directory.
    Jsonschema {
        #[command(flatten)]
        common: Common,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write the documentation site (open `<out>/index.html`) into a directory.
    Docs {
        #[command(flatten)]
        common: Common,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
}

impl Common {
    fn generator(&self) -> Generator {
        self.schemas
            .iter()
            .fold(Generator::new().cargo_directives(false), |g, s| {
                g.schemas(s.clone())
            })
            .app_prefix(self.app_prefix.clone())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let format = args.format;
    match run(args.command, format) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Schema(diags)) => {
            let diags: Vec<_> = diags.iter().cloned().collect();
            print_all(&diags, format);
            report::count(&diags, format);
            ExitCode::from(1)
        }
        Err(Error::Incompatible(changes)) => {
            report::print_changes(&changes, format);
            let diags: Vec<_> = changes.iter().map(|c| c.to_diagnostic()).collect();
            report::count(&diags, format);
            ExitCode::from(1)
        }
        Err(e @ Error::Internal(_)) => {
            eprintln!("error: {e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn print_all<'a>(diags: impl IntoIterator<Item = &'a orkestra_gen::Diagnostic>, format: Format) {
    let diags: Vec<&orkestra_gen::Diagnostic> = diags.into_iter().collect();
    match format {
        Format::Json => report::print_json(&diags),
        _ => {
            for d in diags {
                report::print(d, format == Format::Human);
            }
        }
    }
}

fn run(command: Cmd, format: Format) -> Result<(), Error> {
    match command {
        Cmd::Generate {
            common,
            out: Some(path),
        } => {
            let generated = common.generator().out_file(path).generate()?;
            print_all(generated.warnings.warnings(), format);
            eprintln!(
                "{} {}",
                if generated.changed {
                    "wrote"
                } else {
                    "unchanged"
                },
                generated.path.display()
            );
        }
        Cmd::Generate { common, out: None } => {
            let output = common.generator().render()?;
            print_all(output.warnings.warnings(), format);
            print!("{}", output.code);
        }
        Cmd::Check {
            common,
            against: None,
            ..
        } => {
            let generator = common.generator();
            let diags: Diagnostics = generator.check()?;
            if diags.has_errors() {
                return Err(Error::Schema(diags));
            }
            print_all(diags.warnings(), format);
            if format != Format::Json {
                println!("{} schema file(s) OK", generator.files()?.len());
            }
        }
        Cmd::Check {
            common,
            against: Some(against),
            allow,
        } => {
            let mut generator = common.generator().check_against(&against);
            for rule in &allow {
                let rule: Rule = rule
                    .parse()
                    .map_err(|e: UnknownRule| Error::Usage(format!("--allow: {e}")))?;
                generator = generator.allow(rule);
            }
            let changes = generator.compatibility()?;
            if changes.iter().any(|c| c.severity() == Severity::Error) {
                return Err(Error::Incompatible(changes));
            }
            report::print_changes(&changes, format);
            if format != Format::Json {
                println!(
                    "{} schema file(s) compatible with {against}",
                    generator.files()?.len()
                );
            }
        }
        Cmd::Topics { common } => {
            let output = common.generator().render()?;
            print_topics(&output.model);
        }
        Cmd::Asyncapi { common, out } => export(common.generator().asyncapi(&out), &out, format)?,
        Cmd::Jsonschema { common, out } => {
            export(common.generator().jsonschema(&out), &out, format)?;
        }
        Cmd::Docs { common, out } => export(common.generator().docs(&out), &out, format)?,
    }
    Ok(())
}

/// Writes one export, then says what it wrote on standard error.
fn export(generator: Generator, out: &std::path::Path, format: Format) -> Result<(), Error> {
    let exported = generator.export()?;
    print_all(exported.warnings.warnings(), format);
    eprintln!(
        "wrote {} ({} file(s), {} changed)",
        out.display(),
        exported.files.len(),
        exported.changed
    );
    Ok(())
}

/// One line per command and event: type name, topic, the bindings that receive it.
fn print_topics(model: &Model) {
    for module in &model.modules {
        for p in module.commands.iter().chain(&module.events) {
            let handlers: Vec<&str> = model
                .modules
                .iter()
                .flat_map(|m| &m.handlers)
                .filter(|h| receives(&h.target, &module.ident, p))
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
}

fn receives(target: &HandlerTarget, module: &str, p: &Payload) -> bool {
    match target {
        HandlerTarget::Command(r) | HandlerTarget::Event(r) => {
            r.module == module && r.name == p.name
        }
        HandlerTarget::Events(rs) | HandlerTarget::Topic { matched: rs, .. } => {
            rs.iter().any(|r| r.module == module && r.name == p.name)
        }
        HandlerTarget::DeadLetters => false,
    }
}
