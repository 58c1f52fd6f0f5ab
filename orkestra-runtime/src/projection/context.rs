//! What a projection handler receives beside the event.

use std::fmt;

#[cfg(feature = "postgres")]
use crate::handler::HandlerError;
use crate::store::RecordedEvent;

/// What a projection handler receives beside the event.
pub struct ProjectionContext<'a> {
    pub(super) event: &'a RecordedEvent,
    pub(super) replay: bool,
    #[cfg(feature = "postgres")]
    pub(super) transaction: Option<&'a deadpool_postgres::Transaction<'a>>,
}

impl fmt::Debug for ProjectionContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionContext")
            .field("position", &self.event.position())
            .field("replay", &self.replay)
            .finish_non_exhaustive()
    }
}

impl<'a> ProjectionContext<'a> {
    /// The event as stored (stream, version, position, metadata).
    pub fn recorded(&self) -> &'a RecordedEvent {
        self.event
    }

    /// The event's global position.
    pub fn position(&self) -> u64 {
        self.event.position()
    }

    /// Whether this run replays history for a [`Projections::rebuild`](super::Projections::rebuild).
    pub fn is_replay(&self) -> bool {
        self.replay
    }

    /// The transaction that also advances this projection's checkpoint, when the store
    /// is PostgreSQL (`None` on every other store). Write the read model through it and
    /// the write commits exactly when the checkpoint does. Keep it busy: the server ends
    /// it once it has been idle for as long as this copy's lease may still last (a copy
    /// paused inside it would otherwise hold back every reader of the global order).
    #[cfg(feature = "postgres")]
    pub fn postgres(&self) -> Option<&'a tokio_postgres::Transaction<'a>> {
        self.transaction.map(|t| &**t)
    }

    /// A statement prepared once per pooled connection (the store's statement cache), for
    /// [`postgres`](Self::postgres)'s transaction: what a hot read model should execute.
    /// A rejection off PostgreSQL, a retryable failure when PostgreSQL refuses it.
    #[cfg(feature = "postgres")]
    pub async fn prepare_cached(
        &self,
        query: &str,
    ) -> Result<tokio_postgres::Statement, HandlerError> {
        match self.transaction {
            Some(t) => t.prepare_cached(query).await.map_err(HandlerError::fail),
            None => Err(HandlerError::reject(
                "prepare_cached needs the PostgreSQL store",
            )),
        }
    }
}
