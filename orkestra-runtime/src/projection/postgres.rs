//! A PostgreSQL store's batches: the read model's writes and the partition's fenced
//! checkpoint in one transaction.

use std::time::Duration;

use tokio::sync::watch;

use super::ProjectionContext;
use super::runner::{Outcome, Runner, retry_wait, run_caught};
use crate::handler::HandlerError;
use crate::store::{RecordedEvent, StoreError};

/// The least idle time a batch's transaction is allowed, however close the lease's end.
const MIN_IDLE_IN_TRANSACTION: Duration = Duration::from_millis(100);

impl Runner {
    #[cfg(feature = "postgres")]
    pub(super) async fn handle_batch_postgres(
        &mut self,
        batch: &[RecordedEvent],
        stop: &watch::Receiver<bool>,
    ) -> Outcome {
        // The whole batch in one transaction; a failure rolls it back and the batch is
        // handled again one event per transaction, so the failing event is isolated.
        let failed_at = match self.postgres_transaction(batch, stop, false).await {
            Ok(Ok(last)) => return Outcome::Done(last),
            Ok(Err((position, _))) => position,
            Err(e) => return Outcome::Store(e),
        };
        let mut last_done = None;
        for event in batch {
            if *stop.borrow() && last_done.is_some() {
                break;
            }
            if !self.owns(event) {
                last_done = Some(event.position());
                continue;
            }
            // The batch's try counts as the failing event's first attempt.
            let mut attempt = u32::from(event.position() == failed_at);
            if attempt > 0 {
                tokio::time::sleep(self.shared.projection.retry_delay).await;
            }
            loop {
                match self
                    .postgres_transaction(std::slice::from_ref(event), stop, true)
                    .await
                {
                    Ok(Ok(last)) => {
                        last_done = Some(last);
                        break;
                    }
                    Ok(Err((_, e))) => {
                        if let Some(error) = self.give_up(event, &e, attempt) {
                            return Outcome::Failed(error);
                        }
                    }
                    Err(e) => return Outcome::Store(e),
                }
                attempt += 1;
                tokio::time::sleep(retry_wait(self.shared.projection.retry_delay, attempt)).await;
            }
        }
        Outcome::Done(last_done.unwrap_or_else(|| batch.last().map_or(0, RecordedEvent::position)))
    }

    /// Handles `events` in one transaction with the checkpoint: `Ok(Ok(last position))`
    /// once committed, `Ok(Err((position, handler error)))` rolled back, `Err` when the
    /// store failed.
    /// Stops early (committing what is done) when asked to stop, unless `whole`.
    #[cfg(feature = "postgres")]
    async fn postgres_transaction(
        &mut self,
        events: &[RecordedEvent],
        stop: &watch::Receiver<bool>,
        whole: bool,
    ) -> Result<Result<u64, (u64, HandlerError)>, StoreError> {
        let Some(pg) = self.store.as_postgres() else {
            return Err(StoreError::Invalid("not a PostgreSQL store".into()));
        };
        let pg_error = |e: tokio_postgres::Error| StoreError::backend("postgres", e);
        let mut client = pg.connection().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        // A copy paused inside this transaction (SIGSTOP, a long GC, a frozen VM) holds
        // the partition's lease row once the checkpoint is written, and from its first
        // write the store's horizon: every reader of the global order, in every copy,
        // would wait for it. The server ends the transaction once it has been idle for as
        // long as the lease may still last here; by then another copy may hold the
        // partition and this transaction could commit nothing anyway.
        if let Some(until) = &self.until {
            let left = until
                .borrow()
                .saturating_duration_since(tokio::time::Instant::now())
                .max(MIN_IDLE_IN_TRANSACTION);
            tx.batch_execute(&format!(
                "SET LOCAL idle_in_transaction_session_timeout = {}",
                left.as_millis()
            ))
            .await
            .map_err(pg_error)?;
        }
        let mut last = None;
        let mut done = 0u64;
        for event in events {
            if !whole && *stop.borrow() && last.is_some() {
                break;
            }
            if !self.owns(event) {
                last = Some(event.position());
                continue;
            }
            let ctx = ProjectionContext {
                event,
                replay: self.is_replay(event.position()),
                transaction: Some(&tx),
            };
            let result = match self.handler.handle(event, ctx) {
                None => Ok(()),
                Some(run) => run_caught(run).await,
            };
            if let Err(e) = result {
                // Dropping the transaction rolls it back; say so explicitly.
                let _ = tx.rollback().await;
                return Ok(Err((event.position(), e)));
            }
            last = Some(event.position());
            done += 1;
        }
        let Some(last) = last else {
            return Ok(Ok(0));
        };
        // The checkpoint through the partition's lease, in the read model's transaction:
        // a copy whose lease was taken meanwhile commits none of the batch. Solo, the
        // checkpoint of its name, in the same transaction.
        if let Some((_, lease)) = &self.lease {
            if !crate::store::lease::save_checkpoint_in(&tx, lease, Some(last)).await? {
                let _ = tx.rollback().await;
                return Err(StoreError::Fenced {
                    worker: lease.worker.clone(),
                    partition: lease.partition,
                    token: lease.token,
                });
            }
        } else if self.shared.projection.stored {
            crate::store::postgres::save_checkpoint_in(
                &tx,
                &self.shared.projection.name,
                Some(last),
            )
            .await?;
        }
        tx.commit().await.map_err(pg_error)?;
        self.progress.done += done;
        self.shared.handled.send_replace(Some(last));
        Ok(Ok(last))
    }
}
