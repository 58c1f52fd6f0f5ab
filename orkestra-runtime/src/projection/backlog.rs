//! How far behind the head each partition is, counted for `status()`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{CountedBacklog, Entry};
use crate::store::Store;

/// How often a projection's backlog is counted again at most while it changes (and at
/// most a tenth of the time: a count that took 100 ms waits a second).
const BACKLOG_RECOUNT: Duration = Duration::from_millis(250);

/// Counts the backlog of each projection behind `head` (positions are not counts: on
/// PostgreSQL one event is over a million positions past the one before).
pub(super) async fn count_backlogs(store: &Store, entries: &[Arc<Entry>], head: Option<u64>) {
    let Some(head) = head else {
        return;
    };
    for entry in entries.iter().flat_map(|e| e.parts()) {
        let checkpoint = *entry.handled.borrow();
        if checkpoint.is_some_and(|c| c >= head) {
            continue;
        }
        let due = crate::sync::lock(&entry.backlog).as_ref().is_none_or(|b| {
            (b.checkpoint, b.head) != (checkpoint, head)
                && b.at.elapsed() >= BACKLOG_RECOUNT.max(b.took.saturating_mul(10))
        });
        if !due {
            continue;
        }
        let started = Instant::now();
        match store.backlog(checkpoint, head).await {
            Ok(backlog) => {
                *crate::sync::lock(&entry.backlog) = Some(CountedBacklog {
                    checkpoint,
                    head,
                    backlog,
                    at: Instant::now(),
                    took: started.elapsed(),
                });
            }
            Err(e) => {
                tracing::debug!(orkestra = "projection", projection = %entry.projection.name, error = %e, "cannot count the backlog");
            }
        }
    }
}

/// Keeps the head and the backlogs current for `status()`: re-read after change
/// notices, at most every 50 ms, and on the store's poll interval.
pub(super) async fn watch_head(
    store: Store,
    head: watch::Sender<Option<u64>>,
    entries: Vec<Arc<Entry>>,
) {
    let mut changes = store.changes();
    let poll = store.poll_interval().unwrap_or(Duration::from_secs(1));
    loop {
        if let Ok(Some(h)) = store.head().await {
            head.send_if_modified(|old| {
                let newer = old.is_none_or(|o| h > o);
                if newer {
                    *old = Some(h);
                }
                newer
            });
        }
        let current = *head.borrow();
        count_backlogs(&store, &entries, current).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = tokio::time::timeout(poll, changes.changed()).await;
    }
}
