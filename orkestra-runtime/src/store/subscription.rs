//! [`AllSubscription`]: catch-up then live, over any adapter.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::watch;

use super::{Backend, RecordedEvent, Store, StoreError};

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
        let cursor = Cursor {
            changes: backend.changes(),
            poll: backend.poll_interval(),
            backend,
            store: self.clone(),
            next: from_position,
            buffer: VecDeque::new(),
            exhausted: false,
        };
        let stream = futures_util::stream::unfold(Some(cursor), |cursor| async move {
            let mut cursor = cursor?;
            match cursor.next_event().await {
                Some(Ok(event)) => Some((Ok(event), Some(cursor))),
                // An error ends the subscription after it is delivered.
                Some(Err(e)) => Some((Err(e), None)),
                None => None,
            }
        });
        Ok(AllSubscription {
            inner: Box::pin(stream),
        })
    }
}

/// Where a subscription is: the next position to read, what it read ahead, and how it
/// learns of new commits.
struct Cursor {
    backend: Arc<dyn Backend>,
    /// The store, which decrypts personal data.
    store: Store,
    changes: watch::Receiver<u64>,
    poll: Option<Duration>,
    next: u64,
    buffer: VecDeque<RecordedEvent>,
    exhausted: bool,
}

impl Cursor {
    /// The next event in position order, waiting for one to commit if need be; `None`
    /// once the store is gone.
    async fn next_event(&mut self) -> Option<Result<RecordedEvent, StoreError>> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Some(Ok(event));
            }
            if self.exhausted {
                return None;
            }
            // Mark the current change as seen before reading, so a commit that lands
            // after the read still wakes us.
            self.changes.borrow_and_update();
            match self.backend.read_all(self.next, SUBSCRIPTION_BATCH).await {
                Ok(mut batch) if !batch.is_empty() => {
                    if let Err(e) = self.store.reveal(&mut batch).await {
                        return Some(Err(e));
                    }
                    let last = batch.last().map_or(self.next, |e| e.position);
                    self.buffer.extend(batch);
                    match last.checked_add(1) {
                        Some(next) => self.next = next,
                        // Nothing can follow position u64::MAX: end after the buffer.
                        None => self.exhausted = true,
                    }
                }
                Ok(_) => {
                    let changed = self.changes.changed();
                    match self.poll {
                        Some(interval) => {
                            let _ = tokio::time::timeout(interval, changed).await;
                        }
                        None => changed.await.ok()?,
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
