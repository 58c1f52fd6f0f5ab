//! `status`: every worker and partition of the configured store, across every copy of
//! the service, read from its leases (`orkestra_runtime::runners::status`).

use std::process::ExitCode;

use orkestra_runtime::config::{DEFAULT_SQLITE_PATH, StoreAdapter};
use orkestra_runtime::{Config, Store};

use crate::{Format, print};

/// Reads the store `[store]` names and prints its workers; every failure names the
/// store (its adapter, and its URL with the password hidden).
pub(crate) async fn run(config: &Config, format: Format) -> Result<ExitCode, String> {
    let store = open(config).await?;
    let statuses = orkestra_runtime::runners::status(&store)
        .await
        .map_err(|e| format!("{}: cannot read its workers: {e}", location(config)))?;
    print::status(format, &statuses);
    Ok(ExitCode::SUCCESS)
}

/// `projection rebuild`: resets the projection's partitions in the store (every lease
/// ended, every checkpoint cleared, the head as the rebuild's target).
pub(crate) async fn rebuild(
    config: &Config,
    name: &str,
    partitions: u32,
) -> Result<ExitCode, String> {
    let store = open(config).await?;
    let target =
        orkestra_runtime::projection::Projections::prepare_rebuild(&store, name, partitions)
            .await
            .map_err(|e| {
                format!(
                    "{}: cannot set projection {name:?} up for a rebuild: {e}",
                    location(config)
                )
            })?;
    match target {
        Some(head) => println!(
            "projection {name:?}: {partitions} partition(s), every checkpoint cleared; the copies running it, or the next to start it, replay every event up to position {head}"
        ),
        None => println!(
            "projection {name:?}: {partitions} partition(s), every checkpoint cleared; the store holds no events yet"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// The store, opened only when it can hold something to report: a memory store lives
/// and dies with its process, and a SQLite file that does not exist would be created
/// empty (a mistyped path would then read as "nothing has run").
pub(crate) async fn open(config: &Config) -> Result<Store, String> {
    match config.store.adapter {
        StoreAdapter::Memory => {
            return Err(
                "store.adapter is \"memory\": a memory store lives and dies with its process, so there is nothing to read; point [store] (or ORKESTRA_STORE_ADAPTER and ORKESTRA_STORE_URL) at the service's SQLite file or PostgreSQL database".to_owned(),
            );
        }
        StoreAdapter::Sqlite => {
            let path = sqlite_path(config);
            if !std::path::Path::new(path).exists() {
                return Err(format!(
                    "{}: no such file (store.url, or ORKESTRA_STORE_URL, names the service's SQLite file)",
                    location(config)
                ));
            }
        }
        _ => {}
    }
    // The store's own error names the setting and the URL (password hidden).
    Store::from_config(config)
        .await
        .map_err(|e| format!("cannot open the configured store: {e}"))
}

fn sqlite_path(config: &Config) -> &str {
    config
        .store
        .url
        .as_ref()
        .map_or(DEFAULT_SQLITE_PATH, |u| u.expose())
}

/// `store sqlite "./orkestra.db"`, `store postgres postgres://app:***@db/app`: what an
/// error is about. The URL goes through `SecretUrl`'s display, which hides a password.
pub(crate) fn location(config: &Config) -> String {
    let adapter = config.store.adapter.name();
    match (config.store.adapter, &config.store.url) {
        (StoreAdapter::Sqlite, _) => format!("store {adapter} {:?}", sqlite_path(config)),
        (_, Some(url)) => format!("store {adapter} {url}"),
        (_, None) => format!("store {adapter} (no store.url)"),
    }
}
