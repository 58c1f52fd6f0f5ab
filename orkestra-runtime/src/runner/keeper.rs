//! The keeper: holds a fair share of a worker's partitions for one copy, runs the work of
//! each partition it holds, and hands partitions over when copies come and go.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::store::{Lease, Leases, StoreError};

/// How often a copy looks for partitions to take or give back: a graceful stop's
/// partitions are taken within about this.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// What runs one partition while this copy holds it. The future ends when `stop` turns
/// `true` (after finishing what it has in hand) or on its own (its lease was fenced, or
/// it failed): the keeper then gives the partition back.
///
/// `until` is when the lease may end by this process's clock, moved on at each renewal
/// (a margin before the store's expiry). Work that finds it past (the process was
/// paused: SIGSTOP, a long GC, a frozen VM) must start nothing more: another copy may
/// hold the partition by now, and on a store whose writes are not fenced in one
/// transaction with the checkpoint, a side effect would land twice.
pub(crate) trait PartitionWork: Send + Sync + 'static {
    fn run(
        &self,
        lease: Lease,
        stop: watch::Receiver<bool>,
        until: watch::Receiver<Instant>,
    ) -> BoxFuture<'static, ()>;
}

/// Whether a partition's lease may have ended by this process's clock.
pub(crate) fn expired(until: &watch::Receiver<Instant>) -> bool {
    Instant::now() >= *until.borrow()
}

/// A worker's settings for the keeper.
#[derive(Clone, Debug)]
pub(crate) struct KeeperConfig {
    pub(crate) worker: String,
    pub(crate) partitions: u32,
    pub(crate) owner: String,
    pub(crate) lease: Duration,
}

/// One held partition and its work.
struct Held {
    lease: Lease,
    /// When the last renewal succeeded (this process's clock).
    renewed: Instant,
    /// When the lease may end by this process's clock, for the work.
    until: watch::Sender<Instant>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A running keeper; [`stop`](Self::stop) finishes the work in hand and gives every
/// partition back at once.
pub(crate) struct RunningKeeper {
    stop: watch::Sender<bool>,
    #[cfg_attr(not(test), allow(dead_code))]
    held: watch::Receiver<Vec<u32>>,
    rounds: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl RunningKeeper {
    /// The partitions this copy holds now.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn held(&self) -> watch::Receiver<Vec<u32>> {
        self.held.clone()
    }

    /// Waits until the keeper has looked once for partitions to take: a copy alone then
    /// holds them all (or the store could not be reached).
    pub(crate) async fn first_round(&self) {
        let mut rounds = self.rounds.clone();
        let _ = rounds.wait_for(|r| *r >= 1).await;
    }

    /// Asks the keeper to stop without waiting for it (a drop): it stops the work and
    /// releases the leases on its own.
    pub(crate) fn request_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops every partition's work (each finishes what it has in hand), releases the
    /// leases and withdraws this copy.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// This copy's fair share of `partitions` among `members` (sorted): counts differ by at
/// most one, the first copies in order taking the remainder. `0` when this copy is not
/// among them (its heartbeat did not land: it takes nothing new).
pub(crate) fn fair_share(partitions: u32, members: &[String], owner: &str) -> u32 {
    let Some(i) = members.iter().position(|m| m == owner) else {
        return 0;
    };
    let n = members.len() as u32;
    partitions / n + u32::from((i as u32) < partitions % n)
}

/// Registers the worker (a changed partition count is refused) and starts keeping it.
pub(crate) async fn start(
    leases: Leases,
    config: KeeperConfig,
    work: Arc<dyn PartitionWork>,
) -> Result<RunningKeeper, StoreError> {
    leases.register(&config.worker, config.partitions).await?;
    let (stop, stop_rx) = watch::channel(false);
    let (held_tx, held) = watch::channel(Vec::new());
    let (rounds_tx, rounds) = watch::channel(0);
    let task = tokio::spawn(keep(leases, config, work, stop_rx, held_tx, rounds_tx));
    Ok(RunningKeeper {
        stop,
        held,
        rounds,
        task,
    })
}

async fn keep(
    leases: Leases,
    config: KeeperConfig,
    work: Arc<dyn PartitionWork>,
    mut stop: watch::Receiver<bool>,
    held_tx: watch::Sender<Vec<u32>>,
    rounds: watch::Sender<u64>,
) {
    let renew_every = config.lease / 3;
    let mut held: BTreeMap<u32, Held> = BTreeMap::new();
    let mut last_beat: Option<Instant> = None;
    let mut members: Vec<String> = Vec::new();
    let mut store_failing = false;
    loop {
        // Announce this copy and renew what it holds every third of a lease.
        if last_beat.is_none_or(|at| at.elapsed() >= renew_every) {
            match leases
                .heartbeat(&config.worker, &config.owner, config.lease)
                .await
            {
                Ok(live) => {
                    members = live;
                    last_beat = Some(Instant::now());
                    store_failing = false;
                }
                Err(e) => {
                    if !store_failing {
                        tracing::warn!(worker = %config.worker, error = %e, "cannot reach the store to keep this copy's partitions; retrying");
                    }
                    store_failing = true;
                }
            }
            renew(&leases, &config, &mut held).await;
        } else if let Ok(live) = leases.members(&config.worker).await {
            members = live;
        }
        drop_finished(&leases, &mut held).await;
        if !store_failing {
            balance(&leases, &config, &work, &members, &mut held).await;
        }
        held_tx.send_if_modified(|now| {
            let keys: Vec<u32> = held.keys().copied().collect();
            if *now == keys {
                return false;
            }
            *now = keys;
            true
        });
        rounds.send_modify(|r| *r += 1);
        tokio::select! {
            _ = tokio::time::sleep(LOOK_EVERY) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    for (_, h) in std::mem::take(&mut held) {
        give_back(&leases, h).await;
    }
    held_tx.send_replace(Vec::new());
    if let Err(e) = leases.leave(&config.worker, &config.owner).await {
        tracing::warn!(worker = %config.worker, error = %e, "could not withdraw this copy; its partitions were released, others see it gone when its heartbeat expires");
    }
}

/// How long after asking for a lease (or its renewal) this copy counts on it: a sixth
/// short of its length, for clocks that drift and the store's answer's way back.
fn safe_for(lease: Duration) -> Duration {
    lease.saturating_sub(lease / 6)
}

/// Renews every held lease. A lease lost (taken after it expired) stops its work at
/// once; one that cannot be renewed stops before it can expire, so a copy never works a
/// partition past its lease.
async fn renew(leases: &Leases, config: &KeeperConfig, held: &mut BTreeMap<u32, Held>) {
    let deadline = safe_for(config.lease);
    let mut lost = Vec::new();
    for (partition, h) in held.iter_mut() {
        if h.task.is_finished() {
            // Its work ended on its own (and said why): it is given back next.
            continue;
        }
        let asked = Instant::now();
        match leases.renew(&h.lease, config.lease).await {
            Ok(Some(lease)) => {
                h.lease = lease;
                h.renewed = asked;
                h.until.send_replace(asked + deadline);
            }
            Ok(None) => lost.push((*partition, true)),
            Err(e) => {
                if h.renewed.elapsed() >= deadline {
                    tracing::warn!(worker = %config.worker, partition, error = %e, "cannot renew this partition's lease before it ends; stopping its work");
                    lost.push((*partition, false));
                }
            }
        }
    }
    for (partition, taken) in lost {
        if let Some(h) = held.remove(&partition) {
            let _ = h.stop.send(true);
            if taken {
                let new_owner = leases
                    .holder(&config.worker, partition)
                    .await
                    .ok()
                    .flatten();
                tracing::warn!(
                    worker = %config.worker,
                    partition,
                    new_owner = new_owner.as_deref().unwrap_or("none"),
                    "this copy lost a partition's lease; its work stops and writes nothing more"
                );
            }
            // Its writes are fenced now: nothing it finishes can commit.
            let _ = h.task.await;
        }
    }
}

/// Gives back the partitions whose work ended on its own (fenced or failed).
async fn drop_finished(leases: &Leases, held: &mut BTreeMap<u32, Held>) {
    let finished: Vec<u32> = held
        .iter()
        .filter(|(_, h)| h.task.is_finished())
        .map(|(p, _)| *p)
        .collect();
    for partition in finished {
        if let Some(h) = held.remove(&partition) {
            give_back(leases, h).await;
        }
    }
}

/// Takes free partitions up to this copy's share, or gives back what is above it.
async fn balance(
    leases: &Leases,
    config: &KeeperConfig,
    work: &Arc<dyn PartitionWork>,
    members: &[String],
    held: &mut BTreeMap<u32, Held>,
) {
    let share = fair_share(config.partitions, members, &config.owner) as usize;
    while held.len() > share {
        let Some((_, h)) = held.pop_last() else { break };
        give_back(leases, h).await;
    }
    if held.len() >= share {
        return;
    }
    let Ok(records) = leases.list().await else {
        return;
    };
    let free: Vec<u32> = records
        .into_iter()
        .filter(|r| r.worker == config.worker && r.partition < config.partitions)
        .filter(|r| r.owner.is_none() && !held.contains_key(&r.partition))
        .map(|r| r.partition)
        .collect();
    for partition in free {
        if held.len() >= share {
            break;
        }
        let asked = Instant::now();
        match leases
            .acquire(&config.worker, partition, &config.owner, config.lease)
            .await
        {
            Ok(Some(lease)) => {
                let (stop, stop_rx) = watch::channel(false);
                let (until, until_rx) = watch::channel(asked + safe_for(config.lease));
                let task = tokio::spawn(work.run(lease.clone(), stop_rx, until_rx));
                tracing::debug!(worker = %config.worker, partition = lease.partition, token = lease.token, "took a partition");
                held.insert(
                    lease.partition,
                    Held {
                        lease,
                        renewed: asked,
                        until,
                        stop,
                        task,
                    },
                );
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(worker = %config.worker, error = %e, "could not take a partition");
                break;
            }
        }
    }
}

/// Stops a partition's work (it finishes what it has in hand) and releases its lease.
async fn give_back(leases: &Leases, h: Held) {
    let _ = h.stop.send(true);
    let _ = h.task.await;
    if let Err(e) = leases.release(&h.lease).await {
        tracing::debug!(worker = %h.lease.worker, partition = h.lease.partition, error = %e, "could not release a lease; it expires on its own");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use std::sync::Mutex;

    #[test]
    fn shares_differ_by_at_most_one_and_cover_every_partition() {
        for partitions in 1..=12u32 {
            for copies in 1..=5usize {
                let members: Vec<String> = (0..copies).map(|i| format!("c{i}")).collect();
                let shares: Vec<u32> = members
                    .iter()
                    .map(|m| fair_share(partitions, &members, m))
                    .collect();
                assert_eq!(shares.iter().sum::<u32>(), partitions);
                let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
                assert!(max - min <= 1, "{partitions} over {copies}: {shares:?}");
            }
        }
        assert_eq!(
            fair_share(6, &["a".into()], "b"),
            0,
            "not a member: nothing"
        );
    }

    /// Which copy ran which partition, with which token.
    type Log = Arc<Mutex<Vec<(&'static str, u32, u64)>>>;

    /// Records which copy ran which partition, and stops when told.
    struct Recorder {
        copy: &'static str,
        log: Log,
    }

    impl PartitionWork for Recorder {
        fn run(
            &self,
            lease: Lease,
            mut stop: watch::Receiver<bool>,
            _until: watch::Receiver<Instant>,
        ) -> BoxFuture<'static, ()> {
            crate::sync::lock(&self.log).push((self.copy, lease.partition, lease.token));
            Box::pin(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
        }
    }

    fn config(owner: &str, lease: Duration) -> KeeperConfig {
        KeeperConfig {
            worker: "Tally".into(),
            partitions: 6,
            owner: owner.into(),
            lease,
        }
    }

    async fn settle(keepers: &[&RunningKeeper], want: &[usize]) -> Vec<Vec<u32>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now: Vec<Vec<u32>> = keepers.iter().map(|k| k.held().borrow().clone()).collect();
            if now.iter().map(Vec::len).collect::<Vec<_>>() == want {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "never settled at {want:?}: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn copies_share_partitions_and_take_over_a_stopped_copys_at_once() {
        let store = Store::memory();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lease = Duration::from_secs(10);
        let mut keepers = Vec::new();
        for copy in ["a", "b", "c"] {
            let work = Arc::new(Recorder {
                copy,
                log: log.clone(),
            });
            keepers.push(
                start(store.leases().await.unwrap(), config(copy, lease), work)
                    .await
                    .unwrap(),
            );
        }
        let held = settle(&[&keepers[0], &keepers[1], &keepers[2]], &[2, 2, 2]).await;
        let mut all: Vec<u32> = held.concat();
        all.sort();
        assert_eq!(all, [0, 1, 2, 3, 4, 5], "each partition held once");

        // A graceful stop hands over well under a lease.
        let c = keepers.pop().unwrap();
        let stopped_at = Instant::now();
        c.stop().await;
        let held = settle(&[&keepers[0], &keepers[1]], &[3, 3]).await;
        assert!(
            stopped_at.elapsed() < Duration::from_secs(1),
            "{:?}",
            stopped_at.elapsed()
        );
        let mut all: Vec<u32> = held.concat();
        all.sort();
        assert_eq!(all, [0, 1, 2, 3, 4, 5]);
        for k in keepers {
            k.stop().await;
        }
        let records = store.leases().await.unwrap().list().await.unwrap();
        assert!(
            records.iter().all(|r| r.owner.is_none()),
            "all released: {records:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_copy_that_goes_silent_loses_its_partitions_when_their_leases_end() {
        let store = Store::memory();
        let leases = store.leases().await.unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lease = Duration::from_millis(600);
        // A "copy" that took every partition and then went silent (no keeper renews).
        leases.register("Tally", 6).await.unwrap();
        leases.heartbeat("Tally", "dead", lease).await.unwrap();
        let mut dead = Vec::new();
        for p in 0..6 {
            dead.push(
                leases
                    .acquire("Tally", p, "dead", lease)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        let work = Arc::new(Recorder {
            copy: "live",
            log: log.clone(),
        });
        let live = start(leases.clone(), config("live", lease), work)
            .await
            .unwrap();
        let started = Instant::now();
        settle(&[&live], &[6]).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(500) && took < lease + lease / 3 + LOOK_EVERY * 2,
            "taken over after the lease, within a renewal period: {took:?}"
        );
        for lease in &dead {
            assert!(matches!(
                leases.save_checkpoint(lease, Some(1)).await,
                Err(StoreError::Fenced { .. })
            ));
        }
        assert!(
            crate::sync::lock(&log)
                .iter()
                .all(|(_, _, token)| *token == 2)
        );
        live.stop().await;
    }
}
