//! `forget SUBJECT --yes`: forgets a data subject in the configured store
//! (`orkestra_runtime::Store::forget`): its key deleted, the erasure recorded, an
//! `orkestra.SubjectForgotten` event appended.

use std::process::ExitCode;

use orkestra_runtime::Config;
use orkestra_runtime::store::FORGOTTEN_STREAM;

use crate::{Format, status};

/// Forgets `subject` once `yes` confirms it; without it, says what would happen and
/// exits 2 with nothing done.
pub(crate) async fn run(
    config: &Config,
    subject: &str,
    yes: bool,
    format: Format,
) -> Result<ExitCode, String> {
    if subject.is_empty() {
        return Err("the subject is empty".to_owned());
    }
    if !yes {
        eprintln!(
            "forgetting subject {subject:?} deletes its key for good: the personal fields of its \
             events become unreadable in every copy of the store that does not hold the key. \
             Nothing was done; run again with --yes to forget it."
        );
        return Ok(ExitCode::from(2));
    }
    let store = status::open(config).await?;
    let forgotten = store.forget(subject).await.map_err(|e| {
        format!(
            "{}: cannot forget {subject:?}: {e}",
            status::location(config)
        )
    })?;
    match format {
        Format::Json => println!(
            "{}",
            serde_json::json!({
                "subject": forgotten.subject,
                "key_deleted": forgotten.key_deleted,
                "stream": FORGOTTEN_STREAM,
                "position": forgotten.position,
                "store": store.adapter(),
            })
        ),
        Format::Human => {
            let key = if forgotten.key_deleted {
                "its key is deleted"
            } else {
                "it had no key (never used, or forgotten before)"
            };
            println!(
                "subject {subject:?} forgotten in the {} store: {key}, the erasure is recorded \
                 (it never gets a key again), and orkestra.SubjectForgotten is at position {} \
                 of stream {FORGOTTEN_STREAM:?}.\n\
                 Its personal fields now read as their replacements. Copies outside the store \
                 (read models, exports, backups that hold the key) are not touched: projections \
                 clean theirs on orkestra.SubjectForgotten.",
                store.adapter(),
                forgotten.position
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
