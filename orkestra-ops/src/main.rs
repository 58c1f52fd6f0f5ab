//! `orkestra`: operate the RabbitMQ bus and the store a configuration names
//! (`orkestra.toml` in the working directory, or `--config FILE`, then the `ORKESTRA_*`
//! environment, exactly as `orkestra_runtime::Config::load` reads them). Argument parsing
//! and printing only; the work is `orkestra_runtime::bus::rabbitmq::DeadLetterAdmin`'s,
//! the relay's and `orkestra_runtime::runners::status`'s.
//!
//! ```text
//! orkestra dlq list   [--handler H] [--limit N]
//! orkestra dlq show   ID
//! orkestra dlq replay ID... | --all [--handler H]
//! orkestra dlq purge  ID... | --all [--handler H]
//! orkestra topology   [--handler H]... [--command TOPIC]...
//! orkestra relay skip POSITION [--checkpoint NAME]
//! orkestra projection rebuild NAME [--partitions N]
//! orkestra status
//! orkestra store reindex-tags
//! orkestra store tags
//! orkestra store encrypt-personal --schemas DIR [--yes]
//! orkestra forget     SUBJECT --yes
//! orkestra completions SHELL
//! orkestra man        [--out DIR]
//! ```
//! Install it with `cargo install orkestra-ops`; the crate has no library and no cargo
//! features.
//! Every command takes `--format human|json` (`table` is another name for `human`). Exit
//! codes: 0 success, 1 failure (an id not found, a replay not confirmed, the broker, the
//! store or the configuration), 2 usage errors.

mod encrypt;
mod forget;
mod print;
mod progress;
mod schema;
mod status;
mod tags;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use orkestra_runtime::Config;
use orkestra_runtime::bus::rabbitmq::{AdminError, DeadLetterAdmin, Known, Selection};
use orkestra_runtime::config::BusAdapter;

#[derive(Parser, Debug)]
#[command(
    name = "orkestra",
    version,
    about = "Operate an Orkestra service: dead letters, topology, the relay, the status of its workers and the tag index of its store"
)]
struct Args {
    /// Output style.
    #[arg(long, value_enum, global = true, default_value_t = Format::Human)]
    format: Format,
    /// The configuration file (default: ./orkestra.toml when it exists); the
    /// ORKESTRA_* environment variables apply on top.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

/// Output styles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Tables and text for a terminal.
    #[value(alias = "table")]
    Human,
    /// One JSON document on standard output.
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The dead letters of the catch-all queue `<prefix>.deadletter.all`.
    #[command(subcommand)]
    Dlq(Dlq),
    /// The projections of the configured store (`[store]`).
    #[command(subcommand)]
    Projection(ProjectionCmd),
    /// The relay of the configured store (`[store]`).
    #[command(subcommand)]
    Relay(RelayCmd),
    /// Every worker (projections, the relay, process managers) and partition of the
    /// configured store (`[store]`), across every copy of the service: its owner,
    /// checkpoint, lag in events and in seconds, and when its lease expires.
    Status,
    /// The configured store's tag index and personal data (`[store]`).
    #[command(subcommand)]
    Store(StoreCmd),
    /// Forget a data subject (a person) in the configured store (`[store]`): delete
    /// its key, so the personal fields of its events read as their replacements for
    /// good, record the erasure (it never gets a key again), and append
    /// `orkestra.SubjectForgotten` for projections to clean their read models.
    Forget {
        /// The subject (the value of its events' subject field, a customer id).
        subject: String,
        /// Confirms it: without it nothing is done (exit 2).
        #[arg(long)]
        yes: bool,
    },
    /// The exchanges and queues Orkestra declares under the configured prefix, with
    /// their bindings and depths.
    Topology {
        /// A handler whose queues to look for (besides those the dead letters name);
        /// repeatable.
        #[arg(long, value_name = "H")]
        handler: Vec<String>,
        /// A command topic whose queue to look for; repeatable.
        #[arg(long, value_name = "TOPIC")]
        command: Vec<String>,
        /// Schema directory or file (repeatable): every binding it declares is
        /// reported, with its binding keys and wait queues.
        #[arg(long, value_name = "PATH")]
        schemas: Vec<PathBuf>,
        /// The schemas' namespace prefix (as given to the generator).
        #[arg(long, default_value = "", requires = "schemas")]
        app_prefix: String,
    },
    /// Print the completion script of a shell (`orkestra completions bash >
    /// ~/.local/share/bash-completion/completions/orkestra`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff: `orkestra man | man -l -`), or write one page per
    /// command into a directory.
    Man {
        /// Write `orkestra.1`, `orkestra-dlq.1`, ... into this directory.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum ProjectionCmd {
    /// Set projection NAME up to be rebuilt: every partition's checkpoint goes back to
    /// none and every lease ends (a copy working it is fenced and lets go), with
    /// PARTITIONS partitions from now on; the copies running it, or the next one to
    /// start it, replay every event up to the store's current head as a replay. How a
    /// projection changes its partition count.
    Rebuild {
        /// The projection's name (its checkpoint's).
        name: String,
        /// Its partition count from now on (the schema's `partitions`).
        #[arg(long, value_name = "N", default_value_t = 1)]
        partitions: u32,
    },
}

#[derive(Subcommand, Debug)]
enum StoreCmd {
    /// Build the tag index's entries of events stored before their tag was declared: for
    /// every declared (event type, tag) that is not indexed, read the events of that type
    /// and index each by its field of the tag's name (an event whose field is missing or
    /// not a text is reported), then mark it indexed, so the decisions reading it run.
    /// In batches, each committed with its progress: safe while the service appends, and
    /// a stopped run resumes where it was.
    ReindexTags,
    /// Every (event type, tag) a decision has declared, and whether it is indexed.
    Tags,
    /// Seal, in place, the personal fields that events stored before the schemas made
    /// them personal hold in plain text: each with its subject's key, as an append seals
    /// it now (a forgotten subject's are erased; values already sealed are left). The
    /// one operation that changes stored events: it asks first (unless --yes). In
    /// batches, each committed with its progress: safe while the service appends, and a
    /// stopped run resumes where it was.
    EncryptPersonal {
        /// Schema directory or file (repeatable): what is personal, as the generated
        /// code declares it.
        #[arg(long, value_name = "PATH", required = true)]
        schemas: Vec<PathBuf>,
        /// The schemas' namespace prefix (as given to the generator).
        #[arg(long, default_value = "")]
        app_prefix: String,
        /// Confirms it: without it the command asks on a terminal, and elsewhere does
        /// nothing (exit 2).
        #[arg(long)]
        yes: bool,
        /// Read every event again, not from where the last run with these schemas
        /// stopped.
        #[arg(long)]
        from_start: bool,
        /// Events per batch (one read and one write transaction each).
        #[arg(long, value_name = "N", default_value_t = orkestra_runtime::store::encrypt::DEFAULT_ENCRYPT_BATCH)]
        batch: usize,
    },
}

#[derive(Subcommand, Debug)]
enum RelayCmd {
    /// Move the relay's checkpoint past the event at POSITION without publishing it:
    /// for an event the bus refuses for good (the relay stopped on it, naming its
    /// position). POSITION must be the next event to publish. Logged. It takes the
    /// relay's lease for the move, so it is refused while a copy of the service holds
    /// the relay (every copy stops on such an event and gives the lease back).
    Skip {
        /// The event's global position (as the relay's error names it).
        position: u64,
        /// The relay's checkpoint name.
        #[arg(long, value_name = "NAME", default_value = orkestra_runtime::relay::RELAY_CHECKPOINT)]
        checkpoint: String,
    },
}

#[derive(Subcommand, Debug)]
enum Dlq {
    /// List dead letters in queue order: id, topic, handler, attempts, reason, age.
    List {
        /// Only this handler's.
        #[arg(long, value_name = "H")]
        handler: Option<String>,
        /// At most this many.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Show every dead letter with this id: headers, metadata and the body.
    Show {
        /// The message id (as `dlq list` shows it).
        id: String,
    },
    /// Publish dead letters back where they came from (with publisher confirms) and
    /// remove each once its replay is confirmed; attempts start again.
    Replay(Chosen),
    /// Remove dead letters for good.
    Purge(Chosen),
}

#[derive(clap::Args, Debug)]
struct Chosen {
    /// Message ids; every one must be in the queue, or nothing is touched.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    ids: Vec<String>,
    /// Every dead letter (of `--handler`, when given).
    #[arg(long)]
    all: bool,
    /// Only this handler's.
    #[arg(long, value_name = "H")]
    handler: Option<String>,
}

impl Chosen {
    fn selection(&self) -> Selection {
        let selection = if self.all {
            Selection::all()
        } else {
            Selection::ids(self.ids.iter().cloned())
        };
        match &self.handler {
            Some(h) => selection.with_handler(h.clone()),
            None => selection,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match &args.command {
        Cmd::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Args::command(),
                "orkestra",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Cmd::Man { out } => {
            let written = match out {
                None => clap_mangen::Man::new(Args::command()).render(&mut std::io::stdout()),
                Some(dir) => std::fs::create_dir_all(dir)
                    .and_then(|()| clap_mangen::generate_to(Args::command(), dir)),
            };
            return match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&format!("cannot write the man page: {e}")),
            };
        }
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(run(&args)) {
        Ok(code) => code,
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(1)
}

fn load_config(path: Option<&PathBuf>) -> Result<Config, String> {
    match path {
        Some(path) => Config::from_file(path)
            .and_then(|c| c.with_env_overrides(|name| std::env::var(name).ok())),
        None => Config::load(),
    }
    .map_err(|e| e.to_string())
}

/// The configuration, refused unless it names a RabbitMQ bus.
fn load_bus_config(path: Option<&PathBuf>) -> Result<Config, String> {
    let config = load_config(path)?;
    if config.bus.adapter != BusAdapter::RabbitMq {
        return Err(format!(
            "bus.adapter is {:?}: `orkestra` works on a RabbitMQ bus (set bus.adapter = \"rabbitmq\" in orkestra.toml or ORKESTRA_BUS_ADAPTER=rabbitmq)",
            config.bus.adapter.name()
        ));
    }
    Ok(config)
}

async fn run(args: &Args) -> Result<ExitCode, String> {
    if let Cmd::Status = &args.command {
        // The store alone: any bus, no broker needed.
        let config = load_config(args.config.as_ref())?;
        return status::run(&config, args.format).await;
    }
    if let Cmd::Store(store) = &args.command {
        // The store alone, as `status`.
        let config = load_config(args.config.as_ref())?;
        return match store {
            StoreCmd::ReindexTags => tags::reindex(&config, args.format).await,
            StoreCmd::Tags => tags::list(&config, args.format).await,
            StoreCmd::EncryptPersonal {
                schemas,
                app_prefix,
                yes,
                from_start,
                batch,
            } => {
                let request = encrypt::Request {
                    schemas,
                    app_prefix,
                    yes: *yes,
                    from_start: *from_start,
                    batch: *batch,
                };
                encrypt::run(&config, request, args.format).await
            }
        };
    }
    if let Cmd::Forget { subject, yes } = &args.command {
        let config = load_config(args.config.as_ref())?;
        return forget::run(&config, subject, *yes, args.format).await;
    }
    if let Cmd::Projection(ProjectionCmd::Rebuild { name, partitions }) = &args.command {
        let config = load_config(args.config.as_ref())?;
        return status::rebuild(&config, name, *partitions).await;
    }
    let config = load_bus_config(args.config.as_ref())?;
    if let Cmd::Relay(RelayCmd::Skip {
        position,
        checkpoint,
    }) = &args.command
    {
        return relay_skip(&config, *position, checkpoint).await;
    }
    let admin = DeadLetterAdmin::connect(&config.bus)
        .await
        .map_err(|e| e.to_string())?;
    let result = command(&admin, args).await;
    admin.close().await;
    result.map_err(|e| match e {
        Failure::Admin(e) => e.to_string(),
        Failure::Schemas(message) => message,
    })
}

/// `relay skip`: works on the store alone (no broker needed).
async fn relay_skip(config: &Config, position: u64, checkpoint: &str) -> Result<ExitCode, String> {
    // The skip is logged like the relay's own lines, on standard error.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    let store = orkestra_runtime::Store::from_config(config)
        .await
        .map_err(|e| e.to_string())?;
    orkestra_runtime::relay::Relay::new(store, orkestra_runtime::Bus::in_process())
        .with_checkpoint(checkpoint)
        .skip(position)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "relay checkpoint {checkpoint:?} moved past position {position}; that event will not be published"
    );
    Ok(ExitCode::SUCCESS)
}

/// Why a command failed.
enum Failure {
    Admin(AdminError),
    Schemas(String),
}

impl From<AdminError> for Failure {
    fn from(e: AdminError) -> Self {
        Self::Admin(e)
    }
}

async fn command(admin: &DeadLetterAdmin, args: &Args) -> Result<ExitCode, Failure> {
    let format = args.format;
    match &args.command {
        Cmd::Dlq(Dlq::List { handler, limit }) => {
            // One letter in memory at a time; a row keeps no body and no headers.
            let mut letters = Vec::new();
            admin
                .browse(handler.as_deref(), &mut |mut letter| {
                    if limit.is_none_or(|l| letters.len() < l) {
                        letter.body = Vec::new();
                        letter.headers.clear();
                        letters.push(letter);
                    }
                })
                .await?;
            print::list(format, admin.queue(), &letters);
        }
        Cmd::Dlq(Dlq::Show { id }) => {
            let letters = admin.show(id).await?;
            print::show(format, &letters);
        }
        Cmd::Dlq(Dlq::Replay(chosen)) => {
            let mut bar = progress::Bar::new("replaying");
            let done = admin
                .replay(&chosen.selection(), &mut |p| bar.update(p))
                .await;
            bar.finish();
            let done = done?;
            print::settled(format, "replayed", admin.queue(), &done);
            if !done.failed.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Dlq(Dlq::Purge(chosen)) => {
            let mut bar = progress::Bar::new("purging");
            let done = admin
                .purge(&chosen.selection(), &mut |p| bar.update(p))
                .await;
            bar.finish();
            let done = done?;
            print::settled(format, "purged", admin.queue(), &done);
        }
        // Handled by `run` before it connects to the broker, or by `main`.
        Cmd::Relay(_)
        | Cmd::Status
        | Cmd::Store(_)
        | Cmd::Forget { .. }
        | Cmd::Projection(_)
        | Cmd::Completions { .. }
        | Cmd::Man { .. } => {}
        Cmd::Topology {
            handler,
            command,
            schemas,
            app_prefix,
        } => {
            let known = Known {
                handlers: handler.clone(),
                command_topics: command.clone(),
                bindings: schema::bindings(schemas, app_prefix)?,
            };
            let report = admin.topology(&known).await?;
            print::topology(format, &report);
        }
    }
    Ok(ExitCode::SUCCESS)
}
