//! `store reindex-tags` and `store tags`: the tag index's registry of the configured
//! store (`Store::reindex_tags`, `Store::declared_tags`).

use std::process::ExitCode;

use orkestra_runtime::Config;

use crate::{Format, print, progress, status};

/// Builds the index entries of every declared tag that is not indexed yet, with a
/// progress bar on a terminal, and prints what it did.
pub(crate) async fn reindex(config: &Config, format: Format) -> Result<ExitCode, String> {
    let store = status::open(config).await?;
    let mut bar = progress::Bar::events("reindexing");
    let report = store
        .reindex_tags(|done, total| bar.count(done, total))
        .await;
    bar.finish();
    let report = report
        .map_err(|e| format!("{}: cannot reindex its tags: {e}", status::location(config)))?;
    print::reindexed(format, &report);
    Ok(ExitCode::SUCCESS)
}

/// Lists every declared (event type, tag) pair and whether it is indexed.
pub(crate) async fn list(config: &Config, format: Format) -> Result<ExitCode, String> {
    let store = status::open(config).await?;
    let declared = store.declared_tags().await.map_err(|e| {
        format!(
            "{}: cannot read its declared tags: {e}",
            status::location(config)
        )
    })?;
    print::declared_tags(format, &declared);
    Ok(ExitCode::SUCCESS)
}
