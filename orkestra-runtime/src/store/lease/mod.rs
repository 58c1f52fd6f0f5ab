//! Leases with fencing tokens: what the workers of several copies of a service (the
//! projections, the relay, the process managers) hold their partitions by.
//!
//! A worker has a name and a number of partitions. Each partition is held through a
//! [`Lease`] kept in the store: an owner, an expiry, and a **fencing token** that grows by
//! one at every new holding. A partition's checkpoint is written through its lease
//! ([`Leases::save_checkpoint`]) and only with the token its writer holds, so a copy that
//! was paused past its lease (a long GC, SIGSTOP, a network partition) and resumes commits
//! nothing: its token is stale. Leases live in `orkestra_leases` on SQLite and PostgreSQL
//! (where the database's clock decides expiry) and in memory for the memory store. Copies
//! also announce themselves per worker ([`Leases::heartbeat`]), so each can work out its
//! fair share of the partitions.

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

pub(crate) use memory::MemoryLeases;
#[cfg(feature = "postgres")]
pub(crate) use postgres::{PostgresLeases, save_checkpoint_in};
#[cfg(feature = "sqlite")]
pub(crate) use sqlite::SqliteLeases;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;

use super::StoreError;

/// A partition of a worker held by one owner until `expires_at`, unless renewed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The worker (a projection's name, `orkestra.relay`, a process manager's name).
    pub worker: String,
    /// The partition, from 0.
    pub partition: u32,
    /// Who holds it (`<hostname>:<pid>` unless named otherwise).
    pub owner: String,
    /// The fencing token: one more than the token of the previous holding. Every write
    /// through the lease carries it, and a write with an older token is refused.
    pub token: u64,
    /// When it ends unless renewed (the store's clock on PostgreSQL).
    pub expires_at: DateTime<Utc>,
}

/// What the store keeps of one partition of a worker, for status and balance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The worker.
    pub worker: String,
    /// The partition.
    pub partition: u32,
    /// How many partitions the worker has (`None`: never registered).
    pub partitions: Option<u32>,
    /// Its holder, while the lease is live; `None` when free, released or expired.
    pub owner: Option<String>,
    /// The current fencing token.
    pub token: u64,
    /// When the live lease ends.
    pub expires_at: Option<DateTime<Utc>>,
    /// The last global position the partition handled.
    pub checkpoint: Option<u64>,
}

/// What each store keeps of leases. Futures are boxed, as in the store's own backend.
pub(crate) trait LeaseBackend: Send + Sync + fmt::Debug + 'static {
    /// Records that `worker` has `partitions` partitions (with a free lease each, whose
    /// checkpoint starts at `initial`), or refuses with [`StoreError::PartitionsChanged`]
    /// when the store holds another count.
    fn register<'a>(
        &'a self,
        worker: &'a str,
        partitions: u32,
        initial: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Starts `worker` over with `partitions` partitions: every checkpoint cleared, every
    /// lease ended with a token past every earlier one (so their holders are fenced).
    fn reset<'a>(
        &'a self,
        worker: &'a str,
        partitions: u32,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Takes the partition when it is free, released or expired (a new token), or
    /// extends it when `owner` holds it live (the same token); `None` when another owner
    /// holds it live.
    fn acquire<'a>(
        &'a self,
        worker: &'a str,
        partition: u32,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>, StoreError>>;
    /// Extends a live lease still held with its token; `None` when it was lost (expired
    /// or taken).
    fn renew<'a>(
        &'a self,
        lease: &'a Lease,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>, StoreError>>;
    /// Gives the lease back at once; `false` when it was no longer held with its token.
    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Saves the partition's checkpoint if `lease`'s token is still the partition's.
    fn save_checkpoint<'a>(
        &'a self,
        lease: &'a Lease,
        position: Option<u64>,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// The partition's checkpoint.
    fn checkpoint<'a>(
        &'a self,
        worker: &'a str,
        partition: u32,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>>;
    /// Every partition of every worker, by worker then partition.
    fn list(&self) -> BoxFuture<'_, Result<Vec<LeaseRecord>, StoreError>>;
    /// Announces `owner` as a live copy running `worker` until `ttl` from now, and
    /// returns every live copy of it (sorted).
    fn heartbeat<'a>(
        &'a self,
        worker: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;
    /// The live copies of `worker` (sorted), announcing none.
    fn members<'a>(&'a self, worker: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;
    /// Withdraws `owner` from `worker`'s live copies.
    fn leave<'a>(
        &'a self,
        worker: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// The leases of a store: `store.leases().await?`.
///
/// ```
/// # async fn demo() -> Result<(), orkestra_runtime::StoreError> {
/// use std::time::Duration;
/// let store = orkestra_runtime::Store::memory();
/// let leases = store.leases().await?;
/// leases.register("Tally", 1).await?;
/// let lease = leases
///     .acquire("Tally", 0, "a", Duration::from_secs(10))
///     .await?
///     .expect("free");
/// leases.save_checkpoint(&lease, Some(41)).await?; // refused once another copy took over
/// assert_eq!(leases.checkpoint("Tally", 0).await?, Some(41));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Leases {
    backend: Arc<dyn LeaseBackend>,
}

impl fmt::Debug for Leases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leases").finish_non_exhaustive()
    }
}

/// Most partitions a worker may have.
pub const MAX_PARTITIONS: u32 = 1024;

fn check_worker(worker: &str) -> Result<(), StoreError> {
    if worker.is_empty() {
        return Err(StoreError::Invalid("the worker name is empty".into()));
    }
    Ok(())
}

fn check_partitions(worker: &str, partitions: u32) -> Result<(), StoreError> {
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err(StoreError::Invalid(format!(
            "worker {worker:?}: {partitions} partitions is out of range (1 to {MAX_PARTITIONS})"
        )));
    }
    Ok(())
}

fn check_ttl(ttl: Duration) -> Result<(), StoreError> {
    if ttl.is_zero() || ttl > Duration::from_secs(24 * 3600) {
        return Err(StoreError::Invalid(format!(
            "a lease of {ttl:?} is out of range (more than zero, at most a day)"
        )));
    }
    Ok(())
}

impl Leases {
    pub(crate) fn new(backend: Arc<dyn LeaseBackend>) -> Self {
        Self { backend }
    }

    /// Records that `worker` has `partitions` partitions. A store that holds another
    /// count for it refuses with [`StoreError::PartitionsChanged`] (both counts named):
    /// events were assigned to the old partitions, so a new count needs a rebuild.
    pub async fn register(&self, worker: &str, partitions: u32) -> Result<(), StoreError> {
        self.register_from(worker, partitions, None).await
    }

    /// [`register`](Self::register), the checkpoints of a worker new to the leases
    /// starting at `initial` (a worker that kept one checkpoint before it had
    /// partitions: every event up to it was handled, whatever its partition).
    pub async fn register_from(
        &self,
        worker: &str,
        partitions: u32,
        initial: Option<u64>,
    ) -> Result<(), StoreError> {
        check_worker(worker)?;
        check_partitions(worker, partitions)?;
        self.backend.register(worker, partitions, initial).await
    }

    /// Starts `worker` over with `partitions` partitions (a rebuild, or a new partition
    /// count): every checkpoint cleared and every lease ended, with a fencing token past
    /// every earlier one, so whichever copy held a partition writes nothing more to it.
    pub async fn reset(&self, worker: &str, partitions: u32) -> Result<(), StoreError> {
        check_worker(worker)?;
        check_partitions(worker, partitions)?;
        self.backend.reset(worker, partitions).await
    }

    /// Takes `partition` of `worker` for `owner` when it is free, released or expired
    /// (with a new fencing token), or extends it when `owner` holds it; `None` when
    /// another owner holds it.
    pub async fn acquire(
        &self,
        worker: &str,
        partition: u32,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        check_worker(worker)?;
        check_ttl(ttl)?;
        if owner.is_empty() {
            return Err(StoreError::Invalid(
                "the lease owner's name is empty".into(),
            ));
        }
        self.backend.acquire(worker, partition, owner, ttl).await
    }

    /// Extends `lease` by `ttl` from now while it is live and still held with its token;
    /// `None` when it was lost: the holder must stop working on the partition.
    pub async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        check_ttl(ttl)?;
        self.backend.renew(lease, ttl).await
    }

    /// Gives `lease` back at once (another copy may take it without waiting for it to
    /// expire); `false` when it was no longer held with its token.
    pub async fn release(&self, lease: &Lease) -> Result<bool, StoreError> {
        self.backend.release(lease).await
    }

    /// Saves the partition's checkpoint through `lease`: refused with
    /// [`StoreError::Fenced`], nothing written, when another holding has begun since.
    pub async fn save_checkpoint(
        &self,
        lease: &Lease,
        position: Option<u64>,
    ) -> Result<(), StoreError> {
        if self.backend.save_checkpoint(lease, position).await? {
            Ok(())
        } else {
            Err(StoreError::Fenced {
                worker: lease.worker.clone(),
                partition: lease.partition,
                token: lease.token,
            })
        }
    }

    /// The partition's checkpoint: the last global position it handled.
    pub async fn checkpoint(
        &self,
        worker: &str,
        partition: u32,
    ) -> Result<Option<u64>, StoreError> {
        self.backend.checkpoint(worker, partition).await
    }

    /// Every partition of every worker the store knows, by worker then partition.
    pub async fn list(&self) -> Result<Vec<LeaseRecord>, StoreError> {
        self.backend.list().await
    }

    /// Who holds `partition` of `worker` now (`None`: free, released or expired).
    pub async fn holder(&self, worker: &str, partition: u32) -> Result<Option<String>, StoreError> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .find(|r| r.worker == worker && r.partition == partition)
            .and_then(|r| r.owner))
    }

    /// Announces `owner` as a live copy running `worker` for `ttl`, and returns the live
    /// copies of it, sorted (each copy's fair share follows from it).
    pub async fn heartbeat(
        &self,
        worker: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Vec<String>, StoreError> {
        check_worker(worker)?;
        check_ttl(ttl)?;
        self.backend.heartbeat(worker, owner, ttl).await
    }

    /// The live copies of `worker`, sorted, without announcing this one.
    pub async fn members(&self, worker: &str) -> Result<Vec<String>, StoreError> {
        self.backend.members(worker).await
    }

    /// Withdraws `owner` from the live copies of `worker` (a graceful stop).
    pub async fn leave(&self, worker: &str, owner: &str) -> Result<(), StoreError> {
        self.backend.leave(worker, owner).await
    }
}

/// The default owner name of this process: `<hostname>:<pid>`.
pub fn default_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .or_else(|| std::env::var("COMPUTERNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}

/// `ttl` from `now`, saturating far in the future.
pub(crate) fn expiry(now: DateTime<Utc>, ttl: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(ttl)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}
