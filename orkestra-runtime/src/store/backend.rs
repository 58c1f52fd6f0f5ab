//! What each adapter implements ([`Backend`]), and the append check adapters that hold
//! a stream's state in hand share.

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::{AppendResult, Encoded, ExpectedVersion, RecordedEvent, StoreError};

/// Direction of a stream read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Forwards,
    Backwards,
}

/// What each adapter implements. Futures are boxed: store calls do I/O, and a box is
/// noise next to it.
pub(crate) trait Backend: Send + Sync + fmt::Debug + 'static {
    fn name(&self) -> &'static str;
    fn append<'a>(
        &'a self,
        stream: &'a str,
        expected: ExpectedVersion,
        events: Vec<Encoded>,
    ) -> BoxFuture<'a, Result<AppendResult, StoreError>>;
    fn read_stream<'a>(
        &'a self,
        stream: &'a str,
        from_version: u64,
        max: usize,
        direction: Direction,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>>;
    fn read_all(
        &self,
        from_position: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<RecordedEvent>, StoreError>>;
    /// A counter bumped after every commit, for live subscriptions.
    fn changes(&self) -> watch::Receiver<u64>;
    /// How often a live subscription re-reads even without a change notice (adapters
    /// whose notices can be missed or delayed).
    fn poll_interval(&self) -> Option<Duration> {
        None
    }
}

/// Checks an append against the stream's current last version and the ids already
/// stored, for adapters that hold both in hand. Returns `Some(result)` when the append
/// is an idempotent repeat (every id already stored, in order, right after the expected
/// version), `None` when it should be written.
pub(crate) fn check_append(
    stream: &str,
    expected: ExpectedVersion,
    current: Option<u64>,
    events: &[Encoded],
    stored: &[(String, String, u64, u64)], // (id, stream, version, position) of ids already stored
) -> Result<Option<AppendResult>, StoreError> {
    if !stored.is_empty() {
        let first_version = match expected {
            ExpectedVersion::NoStream => Some(0),
            ExpectedVersion::Exact(v) => Some(v + 1),
            _ => None,
        };
        let find = |id: &str| stored.iter().find(|(i, ..)| i == id);
        let all_here = events
            .iter()
            .enumerate()
            .all(|(i, e)| match find(&e.event.id) {
                Some((_, s, version, _)) => {
                    s == stream
                        && match first_version {
                            Some(first) => *version == first + i as u64,
                            None => find(&events[0].event.id)
                                .is_some_and(|(_, _, v0, _)| *version == v0 + i as u64),
                        }
                }
                None => false,
            });
        if all_here {
            let (_, _, version, position) = find(&events[events.len() - 1].event.id)
                .cloned()
                .unwrap_or_default();
            return Ok(Some(AppendResult {
                last_version: version,
                last_position: position,
                written: false,
            }));
        }
        if let Some((id, s, version, _)) = stored.first() {
            return Err(StoreError::DuplicateEvent {
                id: id.clone(),
                stream: s.clone(),
                version: *version,
            });
        }
    }
    if !expected.accepts(current) {
        return Err(StoreError::WrongExpectedVersion {
            stream: stream.to_owned(),
            expected,
            actual: current,
        });
    }
    Ok(None)
}
