//! `store encrypt-personal --schemas DIR [--yes]`: seals, in place, the personal fields
//! that events stored before the schemas made them personal hold in plain text
//! (`orkestra_runtime::Store::encrypt_personal`, the one operation that changes stored
//! events). What is personal comes from the schemas through the generator's
//! `orkestra_gen::personal`, the same description the generated code registers.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use orkestra_gen::Generator;
use orkestra_runtime::Config;
use orkestra_runtime::keys::{PersonalData, PersonalEvent, PersonalField, PersonalState};
use orkestra_runtime::store::EncryptOptions;

use crate::{Format, print, progress, status};

/// What `store encrypt-personal` was asked.
pub(crate) struct Request<'a> {
    pub(crate) schemas: &'a [PathBuf],
    pub(crate) app_prefix: &'a str,
    pub(crate) yes: bool,
    pub(crate) from_start: bool,
    pub(crate) batch: usize,
}

/// Reads the description from the schemas, asks for confirmation (unless `--yes`; off
/// a terminal, exits 2 with nothing done), then runs the rewrite with a progress bar
/// and prints its report.
pub(crate) async fn run(
    config: &Config,
    request: Request<'_>,
    format: Format,
) -> Result<ExitCode, String> {
    let data = description(request.schemas, request.app_prefix)?;
    let described: Vec<String> = data
        .events()
        .map(|e| {
            let paths: Vec<&str> = e.fields().iter().map(PersonalField::path).collect();
            format!(
                "{} (subject {}): {}",
                e.event_type(),
                e.subject(),
                paths.join(", ")
            )
        })
        .collect();
    if !request.yes {
        eprintln!(
            "this rewrites stored events of {}: the personal fields they hold in plain text \
             are sealed with their subject's key (a forgotten subject's are erased), in place. \
             It is the one operation that changes stored events; take a backup first.\n  {}",
            status::location(config),
            described.join("\n  ")
        );
        if !std::io::stdin().is_terminal() {
            eprintln!("Nothing was done; run again with --yes to encrypt them.");
            return Ok(ExitCode::from(2));
        }
        eprint!("Encrypt them now? [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            eprintln!("Nothing was done.");
            return Ok(ExitCode::from(2));
        }
    }
    let store = status::open(config)
        .await?
        .with_personal_data(&data)
        .map_err(|e| format!("{}: {e}", status::location(config)))?;
    let options = EncryptOptions {
        batch: request.batch,
        from_start: request.from_start,
    };
    let mut bar = progress::Bar::events("encrypting");
    let report = store
        .encrypt_personal(options, |p| bar.count(p.scanned, p.total))
        .await;
    bar.finish();
    let report = report.map_err(|e| {
        format!(
            "{}: cannot encrypt its personal data: {e}",
            status::location(config)
        )
    })?;
    print::encrypted(format, store.adapter(), &report);
    Ok(ExitCode::SUCCESS)
}

/// The runtime's description of the personal data the schemas at `paths` declare.
fn description(paths: &[PathBuf], app_prefix: &str) -> Result<PersonalData, String> {
    let generator = paths.iter().fold(
        Generator::new()
            .app_prefix(app_prefix)
            .cargo_directives(false),
        |g, p| g.schemas(p.clone()),
    );
    let output = generator.render().map_err(|e| format!("--schemas: {e}"))?;
    let events = orkestra_gen::personal::events(&output.model);
    let states = orkestra_gen::personal::states(&output.model);
    if events.is_empty() {
        return Err(format!(
            "--schemas: no event of {} declares personal data (`personal_data: {{ subject }}` \
             with `personal: true` fields): nothing to encrypt",
            paths
                .iter()
                .map(|p| format!("{}", p.display()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // The runtime's tables are static (generated code writes them as such); this
    // process runs one command, so what it reads from the schemas is leaked for it.
    let events: Vec<PersonalEvent> = events
        .into_iter()
        .map(|e| PersonalEvent::new(leak(e.event_type), leak(e.subject), fields(e.fields)))
        .collect();
    let states: Vec<PersonalState> = states
        .into_iter()
        .map(|s| PersonalState::new(leak(s.shape), leak(s.subject), fields(s.fields)))
        .collect();
    Ok(PersonalData::new().with_events(events).with_states(states))
}

fn fields(fields: Vec<orkestra_gen::personal::PersonalField>) -> &'static [PersonalField] {
    let fields: Vec<PersonalField> = fields
        .into_iter()
        .map(|f| PersonalField::new(leak(f.path), leak(f.replacement_json)))
        .collect();
    Box::leak(fields.into_boxed_slice())
}

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}
