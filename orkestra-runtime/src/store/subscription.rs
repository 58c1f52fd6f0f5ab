//! [`AllSubscription`]: catch-up then live, over any adapter.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;

use futures_util::Stream;

use super::{RecordedEvent, Store, StoreError};

/// A live subscription to every event: catch-up from a position, then new events as
/// they commit, in position order, with no gap and no repeat.
pub struct AllSubscription {
    inner: Pin<Box<dyn Stream<Item = Result<RecordedEvent, StoreError>> + Send>>,
}

impl fmt::Debug for AllSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllSubscription").finish_non_exhaustive()
    }
}

impl Stream for AllSubscription {
    type Item = Result<RecordedEvent, StoreError>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// How many events a subscription reads per query.
const SUBSCRIPTION_BATCH: usize = 512;

impl Store {
    /// Every event from `from_position` (inclusive): those stored, then new ones live.
    /// Resume after a restart from the last position handled plus one.
    pub async fn subscribe_all(&self, from_position: u64) -> Result<AllSubscription, StoreError> {
        let backend = self.backend.clone();
        let changes = backend.changes();
        let poll = backend.poll_interval();
        let state = (
            backend,
            changes,
            poll,
            from_position,
            VecDeque::new(),
            false,
        );
        let stream = futures_util::stream::unfold(
            state,
            |(backend, mut changes, poll, mut next, mut buffer, failed)| async move {
                if failed {
                    return None;
                }
                loop {
                    if let Some(event) = buffer.pop_front() {
                        return Some((Ok(event), (backend, changes, poll, next, buffer, false)));
                    }
                    // Mark the current change as seen before reading, so a commit that lands
                    // after the read still wakes us.
                    changes.borrow_and_update();
                    match backend.read_all(next, SUBSCRIPTION_BATCH).await {
                        Ok(batch) if !batch.is_empty() => {
                            next = batch.last().map_or(next, |e| e.position + 1);
                            buffer.extend(batch);
                        }
                        Ok(_) => {
                            let changed = changes.changed();
                            match poll {
                                Some(interval) => {
                                    let _ = tokio::time::timeout(interval, changed).await;
                                }
                                None => {
                                    if changed.await.is_err() {
                                        return None;
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            return Some((Err(e), (backend, changes, poll, next, buffer, true)));
                        }
                    }
                }
            },
        );
        Ok(AllSubscription {
            inner: Box::pin(stream),
        })
    }
}
