//! One partition of one projection, run from its checkpoint through the global order:
//! batches, retries, the checkpoint written through the partition's lease.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};

use super::{Control, Erased, ProjectionContext, ProjectionError, ProjectionState, Shared};
use crate::handler::HandlerError;
use crate::runner::partition::partition_of;
use crate::store::{Lease, Leases, RecordedEvent, Store, StoreError};

/// The wait before retry `attempt` (1: the first): one more `delay` each time, at most
/// 30 seconds.
pub(super) fn retry_wait(delay: Duration, attempt: u32) -> Duration {
    delay.saturating_mul(attempt).min(Duration::from_secs(30))
}

pub(super) fn remaining(next: u64, until: u64) -> usize {
    usize::try_from(until.saturating_sub(next).saturating_add(1)).unwrap_or(usize::MAX)
}

pub(super) fn check_not_ahead(
    name: &str,
    checkpoint: Option<u64>,
    head: Option<u64>,
) -> Result<(), ProjectionError> {
    match (checkpoint, head) {
        (Some(c), h) if h.is_none_or(|h| c > h) => Err(ProjectionError::AheadOfStore {
            name: name.to_owned(),
            checkpoint: c,
            head: h,
        }),
        _ => Ok(()),
    }
}

/// Rebuild progress, logged at most once a second.
pub(super) struct Progress {
    started: Instant,
    last_log: Instant,
    pub(super) done: u64,
}

impl Progress {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last_log: now,
            done: 0,
        }
    }
}

pub(super) enum Outcome {
    /// Every event of the batch handled (or not this projection's); the last position.
    Done(u64),
    /// Stopped at an event after its retries; handled ones are saved.
    Failed(String),
    /// The store failed (saving a checkpoint, opening a transaction).
    Store(StoreError),
    /// A batch handled whole stopped at an event that may pass later (its handler says
    /// the store or the bus failed): read again from the checkpoint after a pause.
    Retry(String),
    /// The lease may have ended while this process was paused: nothing more is handled.
    Expired,
}

pub(super) struct Runner {
    pub(super) store: Store,
    pub(super) shared: Arc<Shared>,
    pub(super) head: watch::Sender<Option<u64>>,
    /// During a rebuild: the head when it began (handled events up to it are replays).
    pub(super) replay_until: Option<u64>,
    pub(super) progress: Progress,
    /// The partition's lease, which every checkpoint write goes through (`None`: a
    /// projection without a stored checkpoint).
    pub(super) lease: Option<(Leases, Lease)>,
    /// The handler, this partition's own when it keeps state per partition.
    pub(super) handler: Arc<dyn Erased>,
    /// When the partition's lease may end by this process's clock: past it (the process
    /// was paused) nothing more is handled.
    pub(super) until: Option<watch::Receiver<tokio::time::Instant>>,
}

/// How a partition's run ended.
pub(super) enum End {
    /// Asked to stop.
    Stopped,
    /// At an event that kept failing (the state says which).
    Failed,
    /// Its lease was taken (a write was fenced) or ended by a rebuild: another holding
    /// goes on from the stored checkpoint.
    Lost,
}

impl Runner {
    pub(super) fn new(
        store: Store,
        shared: Arc<Shared>,
        head: watch::Sender<Option<u64>>,
        lease: Option<(Leases, Lease)>,
    ) -> Self {
        let all = &shared.projection.handler;
        let handler = all
            .for_partition(shared.partition)
            .unwrap_or_else(|| Arc::clone(all));
        Self {
            handler,
            until: None,
            store,
            shared,
            head,
            replay_until: None,
            progress: Progress::new(),
            lease,
        }
    }

    fn name(&self) -> &str {
        &self.shared.projection.name
    }

    /// Whether `event` is this partition's: its key (the stream, or what the handler
    /// partitions by) hashes to it.
    pub(super) fn owns(&self, event: &RecordedEvent) -> bool {
        let partitions = self.shared.projection.partitions;
        if self.lease.is_none() || partitions <= 1 {
            return true;
        }
        let key = self.handler.partition_key(event);
        if partition_of(&key, partitions) == self.shared.partition {
            return true;
        }
        self.handler.observe(event);
        false
    }

    /// Whether the lease may have ended (this process was paused past it): handle
    /// nothing more, another copy may hold the partition.
    fn expired(&self) -> bool {
        self.until
            .as_ref()
            .is_some_and(crate::runner::keeper::expired)
    }

    /// Saves the checkpoint through the partition's lease: [`StoreError::Fenced`] when
    /// another holding has begun since. Nothing to save without a stored checkpoint.
    async fn save_checkpoint(&self, last: u64) -> Result<(), StoreError> {
        match &self.lease {
            Some((leases, lease)) => leases.save_checkpoint(lease, Some(last)).await,
            // A store without leases keeps the checkpoint by name.
            None if self.shared.projection.stored => {
                self.store
                    .save_checkpoint(&self.shared.projection.name, Some(last))
                    .await
            }
            None => Ok(()),
        }
    }

    /// Says once, at warn, that the partition was lost, and who holds it now.
    async fn lost(&self, error: &StoreError) {
        let Some((leases, lease)) = &self.lease else {
            return;
        };
        let new_owner = leases
            .holder(&lease.worker, lease.partition)
            .await
            .ok()
            .flatten();
        tracing::warn!(
            orkestra = "projection",
            projection = self.name(),
            partition = lease.partition,
            new_owner = new_owner.as_deref().unwrap_or("none yet"),
            error = %error,
            "this copy lost the partition: its writes are refused; it goes on with the partitions it still holds"
        );
    }

    /// Runs from `checkpoint` until asked to stop, a failure, or the lease's loss.
    pub(super) async fn run(
        mut self,
        checkpoint: Option<u64>,
        mut stop: watch::Receiver<bool>,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) -> End {
        let mut next = checkpoint.map_or(0, |c| c.saturating_add(1));
        let mut changes = self.store.changes();
        let poll = self.store.poll_interval();
        let mut rebuilds: Vec<oneshot::Sender<Result<(), ProjectionError>>> = Vec::new();
        let (end, end_state) = loop {
            if *stop.borrow() {
                break (End::Stopped, ProjectionState::Stopped);
            }
            let mut lost = false;
            while let Ok(Control::Rebuild(reply)) = control.try_recv() {
                lost |= self
                    .rebuild_requested(reply, &mut next, &mut rebuilds)
                    .await;
            }
            if lost {
                break (End::Lost, ProjectionState::Stopped);
            }
            if self.replay_until.is_none() {
                for reply in rebuilds.drain(..) {
                    let _ = reply.send(Ok(()));
                }
            }
            // Whatever committed before this read is in it: wait only for later notices.
            let _ = changes.borrow_and_update();
            let batch = match self
                .store
                .read_all(next, self.shared.projection.batch)
                .await
            {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(orkestra = "projection", projection = self.name(), error = %e, "cannot read events; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if batch.is_empty() {
                self.replay_done();
                // Caught up: is the head where we are? (A restored backup puts it behind.)
                match self.store.head().await {
                    Ok(head) => {
                        let checkpoint = *self.shared.handled.borrow();
                        if let Err(e) = check_not_ahead(self.name(), checkpoint, head) {
                            tracing::error!(orkestra = "projection", projection = self.name(), error = %e, "projection stopped");
                            break (End::Failed, ProjectionState::Failed(e.to_string()));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(orkestra = "projection", projection = self.name(), error = %e, "cannot read the head");
                    }
                }
                self.shared.set_state(ProjectionState::Live);
                let wait = async {
                    match poll {
                        Some(p) => {
                            let _ = tokio::time::timeout(p, changes.changed()).await;
                        }
                        None => {
                            let _ = changes.changed().await;
                        }
                    }
                };
                tokio::select! {
                    () = wait => {}
                    _ = stop.changed() => {}
                    request = control.recv() => {
                        if let Some(Control::Rebuild(reply)) = request
                            && self.rebuild_requested(reply, &mut next, &mut rebuilds).await
                        {
                            break (End::Lost, ProjectionState::Stopped);
                        }
                    }
                }
                continue;
            }
            if self.replay_until.is_none() {
                self.shared.set_state(ProjectionState::CatchingUp);
            }
            match self.handle_batch(&batch, &stop).await {
                Outcome::Done(last) => {
                    next = last.saturating_add(1);
                    self.after_batch(next);
                }
                Outcome::Expired => {
                    tracing::debug!(
                        orkestra = "projection",
                        projection = self.name(),
                        partition = self.shared.partition,
                        "this copy was paused past the partition's lease; it handles nothing more of it"
                    );
                    break (End::Lost, ProjectionState::Stopped);
                }
                Outcome::Failed(error) => {
                    tracing::error!(orkestra = "projection", projection = self.name(), error = %error, "projection stopped at a failing event");
                    break (End::Failed, ProjectionState::Failed(error));
                }
                Outcome::Retry(error) => {
                    next = self.rewind("batch stopped", &error, &stop).await;
                }
                Outcome::Store(e @ StoreError::Fenced { .. }) => {
                    self.lost(&e).await;
                    break (End::Lost, ProjectionState::Stopped);
                }
                Outcome::Store(e) => {
                    next = self.rewind("store error", &e, &stop).await;
                }
            }
        };
        let error = match &end_state {
            ProjectionState::Failed(e) => e.clone(),
            _ => "stopped".to_owned(),
        };
        for reply in rebuilds {
            let _ = reply.send(Err(ProjectionError::Failed {
                name: self.name().to_owned(),
                error: error.clone(),
            }));
        }
        *crate::sync::lock(&self.shared.control) = None;
        self.shared.set_state(end_state);
        end
    }

    /// A rebuild asked of this runner: a partition's lease was just ended by it (`true`:
    /// stop, the keeper takes the partition afresh); a projection without a stored
    /// checkpoint replays here from the start.
    async fn rebuild_requested(
        &mut self,
        reply: oneshot::Sender<Result<(), ProjectionError>>,
        next: &mut u64,
        rebuilds: &mut Vec<oneshot::Sender<Result<(), ProjectionError>>>,
    ) -> bool {
        if self.lease.is_some() {
            let _ = reply.send(Ok(()));
            return true;
        }
        let started = match self.store.head().await {
            Ok(head) => self.start_replay(head).await,
            Err(e) => Err(e.into()),
        };
        match started {
            Ok(()) => {
                *next = 0;
                rebuilds.push(reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
        false
    }

    /// After a batch that could not finish: a pause, then the position after the last
    /// event handled, where the next read starts.
    ///
    /// The store's checkpoint decides, not the one in memory: a COMMIT whose answer was
    /// lost (the connection dropped after the server committed) moved the stored
    /// checkpoint with the read model's writes, and reading from the one in memory would
    /// apply that batch twice. Stores without transactions save the checkpoint after the
    /// batch, so theirs may trail the one in memory: the later of the two is kept.
    async fn rewind(
        &self,
        what: &str,
        error: &(dyn fmt::Display + Sync),
        stop: &watch::Receiver<bool>,
    ) -> u64 {
        tracing::warn!(orkestra = "projection", projection = self.name(), what, error = %error, "retrying from the checkpoint");
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if *stop.borrow() || !self.shared.projection.stored {
                break;
            }
            let stored = match &self.lease {
                Some((leases, lease)) => leases.checkpoint(&lease.worker, lease.partition).await,
                None => self.store.load_checkpoint(self.name()).await,
            };
            match stored {
                Ok(stored) => {
                    self.shared.handled.send_if_modified(|handled| {
                        let later = stored > *handled;
                        if later {
                            tracing::info!(orkestra = "projection", projection = self.name(), checkpoint = stored, "the store's checkpoint is past the last commit seen here (a commit whose answer was lost); going on from it");
                            *handled = stored;
                        }
                        later
                    });
                    break;
                }
                Err(e) => {
                    tracing::warn!(orkestra = "projection", projection = self.name(), error = %e, "cannot read the checkpoint; retrying");
                }
            }
        }
        self.shared
            .handled
            .borrow()
            .map_or(0, |c| c.saturating_add(1))
    }

    /// Clears the checkpoint and replays up to `head`. The target is saved with the
    /// checkpoint: a restart before the replay reaches it goes on replaying.
    /// Replays from the start up to `head`, in this copy (a projection without leases;
    /// one with them is rebuilt through its leases). A checkpoint kept by name (a store
    /// without leases) saves the target with it: a restart goes on replaying.
    pub(super) async fn start_replay(&mut self, head: Option<u64>) -> Result<(), ProjectionError> {
        if self.shared.projection.stored {
            self.store
                .save_replay(&self.shared.projection.name, None, head)
                .await?;
        }
        self.shared.handled.send_replace(None);
        self.replay_until = head;
        self.progress = Progress::new();
        self.shared.set_state(ProjectionState::CatchingUp);
        tracing::info!(
            orkestra = "projection",
            projection = self.name(),
            head,
            "rebuild started"
        );
        Ok(())
    }

    /// The replay reached its target. A stored target is left in place: other
    /// partitions may still be replaying, and a partition whose checkpoint is past it
    /// ignores it.
    pub(super) fn replay_done(&mut self) {
        if self.replay_until.take().is_some() {
            let elapsed = self.progress.started.elapsed();
            tracing::info!(
                orkestra = "projection",
                projection = self.name(),
                events = self.progress.done,
                seconds = elapsed.as_secs_f64(),
                "rebuild finished"
            );
        }
    }

    pub(super) fn after_batch(&mut self, next: u64) {
        let Some(until) = self.replay_until else {
            return;
        };
        if next > until {
            self.replay_done();
            return;
        }
        if self.progress.last_log.elapsed() >= Duration::from_secs(1) {
            self.progress.last_log = Instant::now();
            let elapsed = self.progress.started.elapsed().as_secs_f64();
            tracing::info!(
                orkestra = "projection",
                projection = self.name(),
                done = self.progress.done,
                position = next.saturating_sub(1),
                total = until,
                rate = self.progress.done as f64 / elapsed.max(1e-9),
                "rebuilding"
            );
        }
    }

    pub(super) fn is_replay(&self, position: u64) -> bool {
        self.replay_until.is_some_and(|until| position <= until)
    }

    /// Handles a batch: on PostgreSQL in one transaction with the checkpoint, elsewhere
    /// event by event with the checkpoint saved after.
    pub(super) async fn handle_batch(
        &mut self,
        batch: &[RecordedEvent],
        stop: &watch::Receiver<bool>,
    ) -> Outcome {
        if let Some(last) = batch.last() {
            self.head.send_if_modified(|h| {
                let newer = h.is_none_or(|h| last.position() > h);
                if newer {
                    *h = Some(last.position());
                }
                newer
            });
        }
        if self.expired() {
            return Outcome::Expired;
        }
        let handler = Arc::clone(&self.handler);
        // A handler that takes batches whole takes this partition's events of it.
        let mine: std::borrow::Cow<'_, [RecordedEvent]> =
            if self.lease.is_some() && self.shared.projection.partitions > 1 {
                batch.iter().filter(|e| self.owns(e)).cloned().collect()
            } else {
                batch.into()
            };
        if let Some(run) = handler.handle_batch(&mine) {
            let outcome = self.handled_whole(batch, run).await;
            if let (Outcome::Done(_), Some(last)) = (&outcome, batch.last()) {
                handler.advanced(last.position().saturating_add(1));
            }
            return outcome;
        }
        drop(mine);
        #[cfg(feature = "postgres")]
        if self.store.as_postgres().is_some() {
            return self.handle_batch_postgres(batch, stop).await;
        }
        let mut last_done = None;
        let mut outcome = None;
        for event in batch {
            if *stop.borrow() && last_done.is_some() {
                break;
            }
            if !self.owns(event) {
                last_done = Some(event.position());
                continue;
            }
            if self.expired() {
                outcome = Some(Outcome::Expired);
                break;
            }
            match self.handle_with_retries(event).await {
                Ok(()) => {
                    last_done = Some(event.position());
                    self.progress.done += 1;
                    self.shared.handled.send_replace(Some(event.position()));
                }
                Err(error) => {
                    outcome = Some(Outcome::Failed(error));
                    break;
                }
            }
        }
        if let Some(last) = last_done {
            self.shared.handled.send_replace(Some(last));
            if let Err(e) = self.save_checkpoint(last).await {
                return Outcome::Store(e);
            }
        }
        match (outcome, last_done) {
            (Some(failed), _) => failed,
            (None, Some(last)) => Outcome::Done(last),
            (None, None) => Outcome::Done(batch.last().map_or(0, RecordedEvent::position)),
        }
    }

    /// A batch the handler took whole: the checkpoint moves to the last event done.
    async fn handled_whole(
        &mut self,
        batch: &[RecordedEvent],
        run: BoxFuture<'_, Result<(), (u64, HandlerError)>>,
    ) -> Outcome {
        // Positions only go up within a batch: the events done are a prefix of it.
        let (done, failure) = match run.await {
            Ok(()) => (batch.len(), None),
            Err((failed_at, error)) => (
                batch.partition_point(|e| e.position() < failed_at),
                Some(format!("event at position {failed_at}: {error}")),
            ),
        };
        let last_done = batch[..done].last().map(RecordedEvent::position);
        if let Some(last) = last_done {
            self.progress.done += done as u64;
            self.shared.handled.send_replace(Some(last));
            if let Err(e) = self.save_checkpoint(last).await {
                return Outcome::Store(e);
            }
        }
        match failure {
            Some(error) => Outcome::Retry(error),
            None => Outcome::Done(last_done.unwrap_or_default()),
        }
    }

    /// One event, retried; the error text after the last attempt.
    pub(super) async fn handle_with_retries(&self, event: &RecordedEvent) -> Result<(), String> {
        let projection = &self.shared.projection;
        let mut attempt = 0u32;
        loop {
            let ctx = ProjectionContext {
                event,
                replay: self.is_replay(event.position()),
                #[cfg(feature = "postgres")]
                transaction: None,
            };
            let result = match self.handler.handle(event, ctx) {
                None => return Ok(()),
                Some(run) => run_caught(run).await,
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) => {
                    if let Some(error) = self.give_up(event, &e, attempt) {
                        return Err(error);
                    }
                }
            }
            attempt += 1;
            tokio::time::sleep(retry_wait(projection.retry_delay, attempt)).await;
        }
    }

    /// `Some(final error)` when `error` at `attempt` (0: the first try) ends the tries.
    pub(super) fn give_up(
        &self,
        event: &RecordedEvent,
        error: &HandlerError,
        attempt: u32,
    ) -> Option<String> {
        let projection = &self.shared.projection;
        let text = format!(
            "event {} ({}) at position {}: {error}",
            event.id(),
            event.event_type(),
            event.position()
        );
        if !error.is_retryable() || attempt >= projection.max_retries {
            return Some(if attempt > 0 {
                format!("{text} (after {} retries)", attempt)
            } else {
                text
            });
        }
        tracing::warn!(orkestra = "projection", projection = self.name(), position = event.position(), attempt = attempt + 1, error = %error, "projection handler failed; retrying");
        None
    }
}

/// Runs a handler's future; a panic becomes a failure with its message.
pub(crate) async fn run_caught(
    run: BoxFuture<'_, Result<(), HandlerError>>,
) -> Result<(), HandlerError> {
    match AssertUnwindSafe(run).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            Err(HandlerError::fail(format!(
                "the handler panicked: {message}"
            )))
        }
    }
}
