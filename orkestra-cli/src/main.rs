//! `orkestra-gen`: the command-line front end of the generator. Argument parsing and
//! printing only; every decision is the `orkestra_gen` library's.
//!
//! Exit codes: 0 success (warnings allowed), 1 schema errors, 2 usage or I/O errors
//! (a `new` refused: a name that is not a crate's, a directory that is not empty), 3 an
//! internal generator bug.
//!
//! ```text
//! orkestra-gen check       --schemas schemas --app-prefix Shop [--against DIR|git:REF[:PATH]] [--allow RULE]...
//! orkestra-gen generate    --schemas schemas --app-prefix Shop [--out FILE]
//! orkestra-gen topics      --schemas schemas --app-prefix Shop
//! orkestra-gen asyncapi    --schemas schemas --app-prefix Shop --out asyncapi.yaml
//! orkestra-gen jsonschema  --schemas schemas --app-prefix Shop --out DIR
//! orkestra-gen docs        --schemas schemas --app-prefix Shop --out DIR
//! orkestra-gen new         NAME [--bus in_process|rabbitmq] [--store sqlite|postgres|memory] [--path DIR]
//! orkestra-gen schema-json [--out FILE]
//! orkestra-gen completions SHELL
//! orkestra-gen man         [--out DIR]
//! ```
//! Install it with `cargo install orkestra-cli`; the crate has no library and no cargo
//! features (its README is its crates.io page).

mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use orkestra_gen::compat::{Rule, UnknownRule};
use orkestra_gen::model::{HandlerTarget, Model, Payload};
use orkestra_gen::project::{BusAdapter, NewProject, StoreAdapter};
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
    /// Create a service crate that builds and passes its tests at once: Cargo.toml,
    /// build.rs, a schema, handlers, a given/when/then test, orkestra.toml, a README.
    New {
        /// The crate's name, like `my-shop`.
        name: String,
        /// The bus its orkestra.toml names.
        #[arg(long, value_enum, default_value_t = BusArg::InProcess)]
        bus: BusArg,
        /// The event store its orkestra.toml names.
        #[arg(long, value_enum, default_value_t = StoreArg::Sqlite)]
        store: StoreArg,
        /// The directory to create it in (default: ./NAME); it must be new or empty.
        #[arg(long, value_name = "DIR")]
        path: Option<PathBuf>,
        /// Depend on an Orkestra checkout by path instead of on crates.io (for CI and
        /// unreleased changes).
        #[arg(long, value_name = "DIR", hide = true)]
        orkestra_path: Option<PathBuf>,
    },
    /// Write the JSON Schema of the schema language itself (draft-07), for editors: the
    /// YAML language server completes and checks schema files with it.
    SchemaJson {
        /// Output file; standard output when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the completion script of a shell (`orkestra-gen completions bash >
    /// ~/.local/share/bash-completion/completions/orkestra-gen`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff: `orkestra-gen man | man -l -`), or write one page per
    /// command into a directory.
    Man {
        /// Write `orkestra-gen.1`, `orkestra-gen-check.1`, ... into this directory.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// `new --bus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BusArg {
    /// The in-process bus: nothing to install.
    #[value(name = "in_process")]
    InProcess,
    /// RabbitMQ.
    #[value(name = "rabbitmq")]
    RabbitMq,
}

/// `new --store`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StoreArg {
    /// The embedded single-file store: nothing to install.
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// In memory: nothing kept across runs.
    Memory,
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
        Cmd::New {
            name,
            bus,
            store,
            path,
            orkestra_path,
        } => new_project(&name, bus, store, path, orkestra_path)?,
        Cmd::SchemaJson { out: None } => print!("{}", orkestra_gen::language::schema_json()),
        Cmd::SchemaJson { out: Some(path) } => {
            std::fs::write(&path, orkestra_gen::language::schema_json()).map_err(|source| {
                Error::Io {
                    path: path.clone(),
                    source,
                }
            })?;
            eprintln!("wrote {}", path.display());
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Args::command(),
                "orkestra-gen",
                &mut std::io::stdout(),
            );
        }
        Cmd::Man { out: None } => {
            clap_mangen::Man::new(Args::command())
                .render(&mut std::io::stdout())
                .map_err(|source| Error::Io {
                    path: "standard output".into(),
                    source,
                })?;
        }
        Cmd::Man { out: Some(dir) } => {
            std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(Args::command(), &dir))
                .map_err(|source| Error::Io {
                    path: dir.clone(),
                    source,
                })?;
            eprintln!("wrote the man pages into {}", dir.display());
        }
    }
    Ok(())
}

/// `new`: creates the project, then lists what it wrote and what to run next.
fn new_project(
    name: &str,
    bus: BusArg,
    store: StoreArg,
    path: Option<PathBuf>,
    orkestra_path: Option<PathBuf>,
) -> Result<(), Error> {
    let (bus, store) = (BusAdapter::from(bus), StoreAdapter::from(store));
    let mut project = NewProject::new(name).bus(bus).store(store);
    if let Some(dir) = path {
        project = project.dir(dir);
    }
    if let Some(checkout) = orkestra_path {
        project = project.orkestra_path(checkout);
    }
    let created = project.create()?;
    println!(
        "created {name} in {} ({} bus, {} store):",
        created.dir.display(),
        bus.name(),
        store.name()
    );
    for file in &created.files {
        println!("  {}", file.display());
    }
    println!("next: cd {} && cargo run", created.dir.display());
    Ok(())
}

impl From<BusArg> for BusAdapter {
    fn from(bus: BusArg) -> Self {
        match bus {
            BusArg::InProcess => Self::InProcess,
            BusArg::RabbitMq => Self::RabbitMq,
        }
    }
}

impl From<StoreArg> for StoreAdapter {
    fn from(store: StoreArg) -> Self {
        match store {
            StoreArg::Sqlite => Self::Sqlite,
            StoreArg::Postgres => Self::Postgres,
            StoreArg::Memory => Self::Memory,
        }
    }
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

/// One row per command and event: type name, topic, the bindings that receive it.
fn print_topics(model: &Model) {
    let mut rows = Vec::new();
    for module in &model.modules {
        for p in module.commands.iter().chain(&module.events) {
            let handlers: Vec<&str> = model
                .modules
                .iter()
                .flat_map(|m| &m.handlers)
                .filter(|h| receives(&h.target, &module.ident, p))
                .map(|h| h.name.as_str())
                .collect();
            rows.push([
                p.type_name.clone(),
                p.topic.clone(),
                if handlers.is_empty() {
                    "-".to_owned()
                } else {
                    handlers.join(", ")
                },
            ]);
        }
    }
    for line in report::table(&["TYPE", "TOPIC", "HANDLERS"], rows) {
        println!("{line}");
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
