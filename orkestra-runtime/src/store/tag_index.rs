//! The registry of indexed tags: which (event type, tag key) pairs decisions read, and
//! whether the tag index holds every stored event of that type under that key.
//!
//! A decision reads events by tag through the index `orkestra_event_tags`, which the
//! store writes when it appends. Events appended before their type had a tag have no
//! entry, so a query by tag would not find them and the decision would decide on a
//! partial history. Hence the registry (`orkestra_tag_index` on SQLite and PostgreSQL, a
//! map in memory):
//!
//! - [`Store::ensure_tags_indexed`] records each pair a decision reads. A pair declared
//!   while no stored event of its type lacks the key (none stored yet, or every one
//!   appended with that tag) is *indexed* at once; otherwise it is pending and the call
//!   fails with [`StoreError::TagsNotIndexed`], naming the command that builds it.
//! - From its declaration on, every append of that type gets the tag from the event's
//!   field of the same name when the event does not carry it (a process running an
//!   older schema, without the tag, still writes complete index entries): an indexed
//!   pair stays indexed, which is why answers are cached per [`Store`] handle.
//! - [`Store::reindex_tags`] builds the entries of pending pairs from the events stored
//!   before (in batches, resumable, idempotent, while the service appends), then marks
//!   them indexed. An event whose field is missing or not text gets no entry; it is
//!   reported (a query by that tag could never match it anyway).
//!
//! The declaration and the appends of its type are serialized (memory: the store's
//! lock; SQLite: the write lock; PostgreSQL: an exclusive advisory lock on the type,
//! which every append takes shared), so an append racing a declaration is either seen by
//! its check or gets the derived tag.
//!
//! [`Store::ensure_tags_indexed`]: super::Store::ensure_tags_indexed
//! [`Store::reindex_tags`]: super::Store::reindex_tags
//! [`Store`]: super::Store

use serde_json::Value;

use super::{StoreError, Tag};

/// The command that builds pending index entries (named by
/// [`StoreError::TagsNotIndexed`]).
pub const REINDEX_COMMAND: &str = "orkestra store reindex-tags";

/// How many events one reindexing batch reads (and writes, in one transaction).
pub(crate) const REINDEX_BATCH: usize = 1000;

/// How many skipped events a [`ReindexReport`] lists (every one is counted).
pub const REPORTED_SKIPS: usize = 100;

/// A declared (event type, tag key) pair, as the registry holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredTag {
    /// The event type.
    pub event_type: String,
    /// The tag key (the event's field of that name gives the value).
    pub tag: String,
    /// Whether every stored event of the type carries the key in the index.
    pub indexed: bool,
    /// How far a reindex of a pending pair got (the last position it handled), so a
    /// stopped one resumes there.
    pub reindexed_to: Option<u64>,
}

/// Why reindexing left an event without an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The event's data has no field of the tag's name (or it is `null`).
    Missing,
    /// The field is not a non-empty JSON string.
    NotText,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Missing => "the field is missing",
            Self::NotText => "the field is not a non-empty text",
        })
    }
}

/// An event reindexing could not give an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedEvent {
    /// Its type.
    pub event_type: String,
    /// The tag key.
    pub tag: String,
    /// Its stream.
    pub stream: String,
    /// Its global position.
    pub position: u64,
    /// Why.
    pub reason: SkipReason,
}

/// What one pair's reindexing did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReindexedPair {
    /// The event type.
    pub event_type: String,
    /// The tag key.
    pub tag: String,
    /// Events of the type read.
    pub events: u64,
    /// Index entries written (an event already carrying the tag counts as none).
    pub written: u64,
    /// Events skipped (missing or non-text field).
    pub skipped: u64,
}

/// What [`Store::reindex_tags`](super::Store::reindex_tags) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReindexReport {
    /// Each pair that was pending, now indexed, in registry order.
    pub pairs: Vec<ReindexedPair>,
    /// The first [`REPORTED_SKIPS`] skipped events (every one is counted in `pairs`).
    pub skipped: Vec<SkippedEvent>,
}

impl ReindexReport {
    /// Events read over every pair.
    pub fn events(&self) -> u64 {
        self.pairs.iter().map(|p| p.events).sum()
    }

    /// Entries written over every pair.
    pub fn written(&self) -> u64 {
        self.pairs.iter().map(|p| p.written).sum()
    }

    /// Events skipped over every pair.
    pub fn skipped_count(&self) -> u64 {
        self.pairs.iter().map(|p| p.skipped).sum()
    }
}

/// One batch of a pair's reindexing, as an adapter ran it (in one transaction: the
/// entries, the tags column, the registry's cursor, and the mark when it was the last).
#[derive(Clone, Debug, Default)]
pub(crate) struct ReindexBatch {
    /// Events read.
    pub(crate) events: u64,
    /// Entries written.
    pub(crate) written: u64,
    /// Events skipped, each.
    pub(crate) skipped: Vec<SkippedEvent>,
    /// The pair is marked indexed (this batch read the last event).
    pub(crate) done: bool,
}

/// The tag of key `key` from an event's data: its field of that name, which must be a
/// non-empty JSON string.
pub(crate) fn tag_from_data(data: &Value, key: &str) -> Result<Tag, SkipReason> {
    match data.get(key) {
        None | Some(Value::Null) => Err(SkipReason::Missing),
        Some(Value::String(s)) if !s.is_empty() => {
            Tag::new(key, s).map_err(|_| SkipReason::NotText)
        }
        Some(_) => Err(SkipReason::NotText),
    }
}

/// The error of reindexing a pair nobody declared (the registry has no row for it).
pub(crate) fn undeclared(event_type: &str, key: &str) -> StoreError {
    StoreError::Invalid(format!(
        "tag {key:?} of event type {event_type:?} is not declared"
    ))
}

/// Whether `tags` holds one with key `key`.
pub(crate) fn has_key(tags: &[Tag], key: &str) -> bool {
    tags.iter().any(|t| t.key() == key)
}

/// Checks the pairs of [`Store::ensure_tags_indexed`](super::Store::ensure_tags_indexed):
/// neither part empty, a key without `:`.
pub(crate) fn check_pairs(pairs: &[(&str, &str)]) -> Result<(), StoreError> {
    for (event_type, key) in pairs {
        if event_type.is_empty() {
            return Err(StoreError::Invalid(format!(
                "tag {key:?}: the event type of a declared tag is empty"
            )));
        }
        if key.is_empty() || key.contains(':') {
            return Err(StoreError::Invalid(format!(
                "event type {event_type:?}: the tag key {key:?} is empty or holds a ':'"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_comes_from_a_text_field_only() {
        let data = serde_json::json!({"course_id": "c1", "n": 3, "e": "", "z": null});
        assert_eq!(
            tag_from_data(&data, "course_id").unwrap().as_str(),
            "course_id:c1"
        );
        assert_eq!(tag_from_data(&data, "n"), Err(SkipReason::NotText));
        assert_eq!(tag_from_data(&data, "e"), Err(SkipReason::NotText));
        assert_eq!(tag_from_data(&data, "z"), Err(SkipReason::Missing));
        assert_eq!(tag_from_data(&data, "absent"), Err(SkipReason::Missing));
        assert_eq!(
            tag_from_data(&serde_json::json!([1]), "x"),
            Err(SkipReason::Missing)
        );
    }

    #[test]
    fn pairs_need_a_type_and_a_plain_key() {
        assert!(check_pairs(&[("A", "k")]).is_ok());
        for bad in [("", "k"), ("A", ""), ("A", "a:b")] {
            assert!(check_pairs(&[bad]).is_err(), "{bad:?}");
        }
    }
}
