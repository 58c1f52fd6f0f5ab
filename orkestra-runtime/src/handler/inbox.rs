//! [`Inbox`]: the record of messages a `once: true` handler has handled, so a message
//! delivered again (brokers deliver at least once; the relay publishes again after a
//! crash) is skipped instead of handled twice.
//!
//! A run *claims* a (handler, message id) pair before the handler starts: `None` means
//! the pair is already recorded and the run is skipped. The claim is committed when the
//! handler succeeds and released when it fails (so the retry can claim it again). While
//! one run holds a claim, another run of the same pair waits for it: two copies of a
//! message delivered side by side still run once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use tokio::sync::Notify;

/// How many handled messages the in-memory inbox remembers per bus by default.
pub const DEFAULT_MEMORY_INBOX: usize = 100_000;

/// Where `once: true` handlers record what they handled: bounded memory (the default of
/// every bus), or the event store (`bus.with_inbox(&store)`: a table on SQLite and
/// PostgreSQL, kept 7 days). Cheap to clone.
#[derive(Clone)]
pub struct Inbox {
    backend: Arc<dyn InboxBackend>,
    /// Claims held in this process: a second run of the same pair waits for the first.
    held: Arc<Held>,
}

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Default for Inbox {
    fn default() -> Self {
        Self::memory(DEFAULT_MEMORY_INBOX)
    }
}

/// Why the inbox could not be consulted (the run fails and is retried).
#[derive(Debug, thiserror::Error)]
#[error("inbox: {0}")]
pub struct InboxError(pub(crate) String);

/// What a store implements to keep an inbox.
pub(crate) trait InboxBackend: Send + Sync + fmt::Debug + 'static {
    /// `None` when the pair is recorded; else an open claim (for PostgreSQL, an open
    /// transaction holding an advisory lock on the pair; the row is inserted at commit).
    fn claim<'a>(
        &'a self,
        handler: &'a str,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn OpenClaim>>, InboxError>>;
}

/// The connection whose open transaction holds a PostgreSQL claim, as a handler sees it
/// (the store keeps the rest: whether it may go back to the pool).
#[cfg(feature = "postgres")]
pub(crate) trait PostgresClaimConnection: Send + Sync + fmt::Debug {
    /// The connection, while it is open.
    fn client(&self) -> Option<&tokio_postgres::Client>;
}

/// A claim in a store: committed when the handler succeeded, dropped otherwise.
pub(crate) trait OpenClaim: Send + Sync {
    /// Records the pair for good.
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), InboxError>>;
    /// Gives the pair up (the handler failed): a retry may claim it again.
    fn release(self: Box<Self>) -> BoxFuture<'static, ()>;
    /// The connection whose open transaction holds the claim (PostgreSQL).
    #[cfg(feature = "postgres")]
    fn postgres(&self) -> Option<Arc<dyn PostgresClaimConnection>> {
        None
    }
}

/// A held claim: the store's, and this process's turn for the pair.
pub(crate) struct Claim {
    open: Option<Box<dyn OpenClaim>>,
    key: Key,
    held: Arc<Held>,
}

impl fmt::Debug for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claim")
            .field("handler", &self.key.0)
            .field("message_id", &self.key.1)
            .finish_non_exhaustive()
    }
}

impl Claim {
    /// The connection of the claim's PostgreSQL transaction, for the handler's writes.
    #[cfg(feature = "postgres")]
    pub(crate) fn postgres(&self) -> Option<Arc<dyn PostgresClaimConnection>> {
        self.open.as_ref().and_then(|o| o.postgres())
    }

    /// The handler succeeded: record the pair.
    pub(crate) async fn commit(mut self) -> Result<(), InboxError> {
        let result = match self.open.take() {
            Some(open) => open.commit().await,
            None => Ok(()),
        };
        self.held.leave(&self.key);
        result
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            // Not committed: the handler failed, was cancelled or panicked.
            tokio::spawn(open.release());
        }
        self.held.leave(&self.key);
    }
}

/// A (handler, message id) pair.
type Key = (Arc<str>, String);

/// The pairs claimed in this process, with a wake-up for whoever waits on one.
#[derive(Default)]
struct Held(Mutex<HashMap<Key, Arc<Notify>>>);

impl Held {
    /// Waits until no run of this process holds the pair, then holds it.
    async fn enter(&self, key: &Key) {
        loop {
            let notify = {
                let mut held = crate::sync::lock(&self.0);
                match held.get(key) {
                    Some(n) => Arc::clone(n),
                    None => {
                        held.insert(key.clone(), Arc::new(Notify::new()));
                        return;
                    }
                }
            };
            let woken = notify.notified();
            // Left between the lookup and now: look again rather than wait forever.
            if !crate::sync::lock(&self.0).contains_key(key) {
                continue;
            }
            woken.await;
        }
    }

    fn leave(&self, key: &Key) {
        if let Some(n) = crate::sync::lock(&self.0).remove(key) {
            n.notify_waiters();
        }
    }
}

impl Inbox {
    /// An inbox in memory remembering the last `capacity` handled messages (older ones
    /// are forgotten, so a message delivered again after that many others runs again).
    pub fn memory(capacity: usize) -> Self {
        Self::new(Arc::new(MemoryInbox::new(capacity)))
    }

    pub(crate) fn new(backend: Arc<dyn InboxBackend>) -> Self {
        Self {
            backend,
            held: Arc::default(),
        }
    }

    /// Claims `message_id` for `handler`: `None` when it is already handled.
    pub(crate) async fn claim(
        &self,
        handler: &Arc<str>,
        message_id: &str,
    ) -> Result<Option<Claim>, InboxError> {
        let key = (Arc::clone(handler), message_id.to_owned());
        self.held.enter(&key).await;
        let mut claim = Claim {
            open: None,
            key,
            held: Arc::clone(&self.held),
        };
        match self.backend.claim(handler, message_id).await {
            Ok(Some(open)) => {
                claim.open = Some(open);
                Ok(Some(claim))
            }
            // Dropping `claim` (no open part) lets the next run of the pair go.
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The default inbox: the last `capacity` handled pairs, in memory.
#[derive(Debug)]
struct MemoryInbox {
    state: Arc<Mutex<MemoryState>>,
}

#[derive(Debug)]
struct MemoryState {
    capacity: usize,
    done: HashSet<(String, String)>,
    order: VecDeque<(String, String)>,
}

impl MemoryInbox {
    fn new(capacity: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(MemoryState {
                capacity: capacity.max(1),
                done: HashSet::new(),
                order: VecDeque::new(),
            })),
        }
    }
}

struct MemoryClaim {
    state: Arc<Mutex<MemoryState>>,
    key: (String, String),
}

impl OpenClaim for MemoryClaim {
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), InboxError>> {
        let mut state = crate::sync::lock(&self.state);
        if state.done.insert(self.key.clone()) {
            state.order.push_back(self.key.clone());
            while state.order.len() > state.capacity {
                if let Some(old) = state.order.pop_front() {
                    state.done.remove(&old);
                }
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn release(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

impl InboxBackend for MemoryInbox {
    fn claim<'a>(
        &'a self,
        handler: &'a str,
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn OpenClaim>>, InboxError>> {
        let key = (handler.to_owned(), message_id.to_owned());
        let done = crate::sync::lock(&self.state).done.contains(&key);
        let claim: Option<Box<dyn OpenClaim>> = (!done).then(|| {
            Box::new(MemoryClaim {
                state: Arc::clone(&self.state),
                key,
            }) as Box<dyn OpenClaim>
        });
        Box::pin(std::future::ready(Ok(claim)))
    }
}
