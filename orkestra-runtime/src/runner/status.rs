//! Every worker of every copy of a service, read from the store: what `orkestra status`
//! prints. Public as `orkestra_runtime::runners`.
//!
//! One pass reads the leases, then the head, then the backlogs. Positions are not counts
//! (PostgreSQL's are far apart), so the lag in events is counted by the store. Partitions
//! often share a checkpoint (a worker caught up, or never started), and those behind sit
//! at a few distinct positions: the backlog is counted once per distinct checkpoint, each
//! count covering only the stretch up to the next checkpoint, so the whole pass reads the
//! events from the oldest checkpoint to the head once, however many partitions there are.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::store::{Backlog, LeaseRecord, Store, StoreError};

/// One partition of one worker, as the store keeps it: who holds it, how far it got, and
/// how far behind the head it is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunnerStatus {
    /// The worker: a projection's name, `orkestra.relay`, a process manager's feed.
    pub name: String,
    /// The partition, from 0.
    pub partition: u32,
    /// How many partitions the worker has (as registered; for a worker never
    /// registered, one more than the highest partition the store holds).
    pub partitions: u32,
    /// Who holds the partition's lease while it is live; `None` when it is free,
    /// released or expired.
    pub owner: Option<String>,
    /// The last global position the partition handled; `None`: none yet.
    pub checkpoint: Option<u64>,
    /// The store's head when the status was read (the same for every row); `None` for
    /// an empty store.
    pub head: Option<u64>,
    /// How many events lie after the checkpoint up to the head: events, never positions.
    /// Every event counts, whichever partition it belongs to (a partition's share is not
    /// known without reading each event's stream).
    pub lag_events: u64,
    /// How long the oldest of those events has waited (its age); zero at the head.
    pub lag: Duration,
    /// When the live lease ends unless renewed (the store's clock); `None` when no copy
    /// holds it.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Every partition of every worker the store knows (by worker, then partition), with its
/// owner, checkpoint and lag.
///
/// Errors: the store's, and [`StoreError::Invalid`] from a store that keeps no leases
/// (EventStoreDB).
///
/// ```
/// # async fn demo() -> Result<(), orkestra_runtime::StoreError> {
/// use std::time::Duration;
/// use orkestra_runtime::{EventData, ExpectedVersion, Metadata, Store, new_id};
///
/// let store = Store::memory();
/// let leases = store.leases().await?;
/// leases.register("Tally", 2).await?;
/// let lease = leases
///     .acquire("Tally", 0, "copy-a", Duration::from_secs(10))
///     .await?
///     .expect("free");
/// let counted = || EventData {
///     id: new_id(),
///     event_type: "Counted".into(),
///     schema_version: 1,
///     data: serde_json::json!({"n": 1}),
///     metadata: Metadata::new(),
///     topic: None,
///     tags: Vec::new(),
/// };
/// let first = store.append("count-1", ExpectedVersion::Any, vec![counted()]).await?;
/// store.append("count-2", ExpectedVersion::Any, vec![counted()]).await?;
/// leases.save_checkpoint(&lease, Some(first.last_position)).await?;
///
/// let statuses = orkestra_runtime::runners::status(&store).await?;
/// assert_eq!(statuses.len(), 2);
/// assert_eq!(statuses[0].owner.as_deref(), Some("copy-a"));
/// assert_eq!(statuses[0].lag_events, 1); // handled the first event of two
/// assert_eq!(statuses[1].owner, None); // partition 1 is free
/// assert_eq!(statuses[1].lag_events, 2); // and has handled nothing
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
pub async fn status(store: &Store) -> Result<Vec<RunnerStatus>, StoreError> {
    let records = store.leases().await?.list().await?;
    // Read after the leases: every checkpoint listed is at or before it.
    let head = store.head().await?;
    let backlogs = match head {
        Some(head) => backlogs(store, records.iter().map(|r| r.checkpoint), head).await?,
        None => BTreeMap::new(),
    };
    let now = Utc::now();
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for r in &records {
        let count = counts.entry(&r.worker).or_default();
        *count = (*count).max(r.partition.saturating_add(1));
    }
    Ok(records
        .iter()
        .map(|r| {
            let backlog = backlogs.get(&r.checkpoint).copied().unwrap_or_default();
            RunnerStatus {
                name: r.worker.clone(),
                partition: r.partition,
                partitions: partitions(r, &counts),
                owner: r.owner.clone(),
                checkpoint: r.checkpoint,
                head,
                lag_events: backlog.events,
                lag: backlog
                    .oldest
                    .and_then(|t| (now - t).to_std().ok())
                    .unwrap_or_default(),
                expires_at: r.expires_at,
            }
        })
        .collect())
}

fn partitions(record: &LeaseRecord, counts: &BTreeMap<&str, u32>) -> u32 {
    record
        .partitions
        .unwrap_or_else(|| counts.get(record.worker.as_str()).copied().unwrap_or(1))
}

/// The backlog behind `head` of each distinct checkpoint that is behind it (those at or
/// past it have none and are left out).
///
/// The checkpoints, sorted, cut `(oldest, head]` into stretches `(c_i, c_i+1]`; each
/// stretch is counted once and a checkpoint's backlog is the sum of the stretches after
/// it (the oldest event: the earliest among them), so the store reads each event once.
async fn backlogs(
    store: &Store,
    checkpoints: impl Iterator<Item = Option<u64>>,
    head: u64,
) -> Result<BTreeMap<Option<u64>, Backlog>, StoreError> {
    let behind: Vec<Option<u64>> = checkpoints
        .filter(|c| c.is_none_or(|c| c < head))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut found = BTreeMap::new();
    let mut after_this = Backlog::default();
    let mut until = head;
    // From the newest checkpoint back to the oldest, adding each stretch.
    for &checkpoint in behind.iter().rev() {
        let stretch = store.backlog(checkpoint, until).await?;
        after_this = Backlog {
            events: after_this.events + stretch.events,
            oldest: match (after_this.oldest, stretch.oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        };
        found.insert(checkpoint, after_this);
        // `None` sorts first, so it is the last one: `until` is not used after it.
        until = checkpoint.unwrap_or(0);
    }
    Ok(found)
}
