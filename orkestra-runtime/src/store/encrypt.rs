//! [`Store::encrypt_personal`]: sealing the personal fields of events stored before they
//! were declared personal. The one operation that changes stored events.
//!
//! A field made `personal: true` after events were stored leaves those events holding
//! it in plain text: appends seal from then on, readers open what is sealed and pass
//! plain values through. `encrypt_personal` reads the whole global order in batches,
//! and for each event whose type has personal data and which holds a declared value in
//! plain form:
//!
//! - its subject has a key (or none yet): the plain values are sealed with it, exactly
//!   as an append seals them now (same stored form, same associated data: subject and
//!   path); values already sealed are left as they are;
//! - its subject is forgotten: no key may be made for it, and its values must not stay
//!   readable. They are sealed under a key made for this one event and never stored,
//!   so the event reads as every other event of that subject does: each field as its
//!   replacement, listed by [`RecordedEvent::redacted`](super::RecordedEvent::redacted).
//!   (Writing the replacement itself in plain would read the same, but a reader could
//!   no longer tell an erased value from one that was the replacement all along.)
//! - it has no usable subject (missing, not a string: an event of an older shape): it
//!   is left as it is and reported, never failed on, so one odd event does not stop the
//!   run.
//!
//! Each batch's rewrites are written in one transaction, each as a compare-and-set on
//! the event's data (memory: under the store's lock; SQLite: an IMMEDIATE transaction;
//! PostgreSQL: `UPDATE … WHERE data = before` under READ COMMITTED, which re-checks the
//! condition on a row changed meanwhile). Only the `data` column is written: tags a
//! reindex adds meanwhile, positions, versions, metadata and topics stay. An event
//! whose data changed between the read and the write (another run) is read again.
//! Events appended meanwhile are in the global order after the cursor and are seen by
//! the same run; appends of a process that already declares the field are sealed
//! already. The cursor is a checkpoint named after the description (a changed
//! description starts over), saved after each batch: a stopped run resumes there, and
//! a finished one, run again, reads only what was appended since
//! ([`EncryptOptions::from_start`] reads everything again; either way nothing sealed is
//! sealed twice).
//!
//! Snapshots are a cache: those of a state shape with personal data declared that hold
//! no sealed value are deleted (the next load folds the events, now sealed, and saves
//! a sealed snapshot). The relay publishes from the events table itself (no copy);
//! messages it already published, read models and anything else outside the store keep
//! what they copied.

use std::fmt::Write as _;

use serde_json::Value;

use super::{Store, StoreError};
use crate::keys::{Fields, KeyError, subject_of, throwaway_cipher};

/// The command that runs [`Store::encrypt_personal`] (named by the compatibility gate's
/// `PERSONAL_ADDED`).
pub const ENCRYPT_PERSONAL_COMMAND: &str = "orkestra store encrypt-personal";

/// How many events one batch reads (and rewrites, in one transaction) by default.
pub const DEFAULT_ENCRYPT_BATCH: usize = 500;

/// How many events a report lists by name (every one is counted).
pub const REPORTED_UNSEALED: usize = 100;

/// How many times an event whose data changed under a batch is read again.
const CHANGED_RETRIES: usize = 8;

/// How [`Store::encrypt_personal`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncryptOptions {
    /// Events per batch (each batch is one read and one write transaction).
    pub batch: usize,
    /// Read from the first event, not from where the last run with the same
    /// description stopped.
    pub from_start: bool,
}

impl Default for EncryptOptions {
    fn default() -> Self {
        Self {
            batch: DEFAULT_ENCRYPT_BATCH,
            from_start: false,
        }
    }
}

/// Where a run of [`Store::encrypt_personal`] is, after each batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncryptProgress {
    /// Events read so far.
    pub scanned: u64,
    /// Events to read: those after the cursor up to the head when the run began, raised
    /// when appends made meanwhile take it past that.
    pub total: u64,
    /// Events rewritten so far.
    pub rewritten: u64,
    /// The position of the last event read.
    pub position: Option<u64>,
}

/// An event holding a plain personal value that [`Store::encrypt_personal`] could not
/// seal: it has no usable subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsealedEvent {
    /// Its stream.
    pub stream: String,
    /// Its global position.
    pub position: u64,
    /// Its type.
    pub event_type: String,
    /// Why (`the subject field "customer_id" is missing`).
    pub reason: String,
}

/// What [`Store::encrypt_personal`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncryptReport {
    /// Where the run began (the position after which it read; `None`: the first event).
    pub resumed_after: Option<u64>,
    /// The position of the last event read (`None`: there was none to read).
    pub last_position: Option<u64>,
    /// Events read.
    pub scanned: u64,
    /// Events rewritten (each had at least one plain personal value).
    pub rewritten: u64,
    /// Values sealed with their subject's key.
    pub fields_sealed: u64,
    /// Events of forgotten subjects that held plain values: rewritten too, those values
    /// sealed under a key that was never stored, so they read as replacements.
    pub forgotten: u64,
    /// Values of forgotten subjects erased so.
    pub fields_erased: u64,
    /// Events with plain personal values left as they are (no usable subject): the
    /// count.
    pub unsealed: u64,
    /// The first [`REPORTED_UNSEALED`] of them.
    pub unsealed_events: Vec<UnsealedEvent>,
    /// Snapshots of personal state shapes that held no sealed value, deleted.
    pub snapshots_deleted: u64,
}

/// One event's new data, written only if its data is still `before`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DataRewrite {
    pub(crate) position: u64,
    pub(crate) before: String,
    pub(crate) after: String,
}

/// What sealing one event's data gave.
enum Resealed {
    /// Nothing plain.
    Nothing,
    /// New data, with the number of values sealed, and whether the subject was forgotten.
    Data {
        after: String,
        fields: u64,
        forgotten: bool,
    },
    /// Plain values, but no subject to seal them for.
    NoSubject(String),
}

/// A stable name for a description, so a changed one starts over (FNV-1a over the
/// sorted event types, subjects and paths).
fn fingerprint(fields: &std::collections::HashMap<String, Fields>) -> String {
    let mut types: Vec<(&String, &Fields)> = fields.iter().collect();
    types.sort_by(|a, b| a.0.cmp(b.0));
    let mut text = String::new();
    for (event_type, f) in types {
        let _ = write!(text, "{event_type}\u{0}{}\u{0}", f.subject_field());
        for path in f.paths() {
            let _ = write!(text, "{path}\u{0}");
        }
        text.push('\u{1}');
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("orkestra.encrypt-personal.{hash:016x}")
}

impl Store {
    /// Seals, in place, the personal fields of stored events that hold them in plain
    /// text (events appended before the fields were declared personal): **the one
    /// operation that changes stored events**. See the [module](self) for what it does
    /// with a forgotten subject, with snapshots and with a concurrent writer; run it
    /// once every process appends with the new description (a process still running the
    /// old schema keeps appending plain values, which a later run seals).
    ///
    /// Reads the global order in batches of `options.batch`, resumable (the cursor is a
    /// checkpoint named after the description), idempotent (sealed values are left as
    /// they are). `progress` is called before the first batch and after each one.
    /// Memory, SQLite and PostgreSQL; EventStoreDB, whose events cannot change, returns
    /// [`StoreError::Unsupported`]; a store without personal data declared,
    /// [`StoreError::Invalid`].
    pub async fn encrypt_personal(
        &self,
        options: EncryptOptions,
        mut progress: impl FnMut(&EncryptProgress),
    ) -> Result<EncryptReport, StoreError> {
        let Some(compiled) = self.personal.fields.clone() else {
            return Err(StoreError::Invalid(
                "no personal data is declared for this store: give it the schema's \
                 description first (Store::with_personal_data)"
                    .into(),
            ));
        };
        let keys = self.keys()?;
        let checkpoint = fingerprint(&compiled.events);
        let batch = options.batch.max(1);
        let mut cursor = if options.from_start {
            None
        } else {
            self.backend.load_checkpoint(&checkpoint).await?
        };
        let mut report = EncryptReport {
            resumed_after: cursor,
            ..EncryptReport::default()
        };
        let mut state = EncryptProgress {
            position: cursor,
            ..EncryptProgress::default()
        };
        if let Some(head) = self.backend.head().await? {
            state.total = self.backend.backlog(cursor, head).await?.events;
        }
        progress(&state);
        loop {
            let from = cursor.map_or(0, |c| c.saturating_add(1));
            let page = self.backend.read_all(from, batch).await?;
            let Some(last) = page.last().map(|e| e.position) else {
                break;
            };
            let mut rewrites: Vec<DataRewrite> = Vec::new();
            let mut counts: Vec<(u64, bool)> = Vec::new();
            for event in &page {
                let Some(fields) = compiled.events.get(&*event.event_type) else {
                    continue;
                };
                match reseal(keys, fields, &event.data).await? {
                    Resealed::Nothing => {}
                    Resealed::Data {
                        after,
                        fields,
                        forgotten,
                    } => {
                        rewrites.push(DataRewrite {
                            position: event.position,
                            before: event.data.clone(),
                            after,
                        });
                        counts.push((fields, forgotten));
                    }
                    Resealed::NoSubject(reason) => {
                        report.unsealed += 1;
                        if report.unsealed_events.len() < REPORTED_UNSEALED {
                            report.unsealed_events.push(UnsealedEvent {
                                stream: event.stream.to_string(),
                                position: event.position,
                                event_type: event.event_type.to_string(),
                                reason,
                            });
                        }
                    }
                }
            }
            self.write_rewrites(keys, &compiled.events, rewrites, counts, &mut report)
                .await?;
            report.scanned += page.len() as u64;
            report.last_position = Some(last);
            cursor = Some(last);
            self.backend.save_checkpoint(&checkpoint, cursor).await?;
            state.scanned = report.scanned;
            state.total = state.total.max(state.scanned);
            state.rewritten = report.rewritten;
            state.position = cursor;
            progress(&state);
            if page.len() < batch {
                break;
            }
        }
        let shapes: Vec<String> = compiled.states.keys().cloned().collect();
        if !shapes.is_empty() {
            report.snapshots_deleted = self.backend.delete_plain_snapshots(&shapes).await?;
        }
        tracing::info!(
            scanned = report.scanned,
            rewritten = report.rewritten,
            fields_sealed = report.fields_sealed,
            forgotten = report.forgotten,
            unsealed = report.unsealed,
            snapshots_deleted = report.snapshots_deleted,
            "personal data of stored events encrypted"
        );
        Ok(report)
    }

    /// Writes a batch's rewrites; an event whose data changed since it was read is read
    /// and sealed again (a bounded number of times).
    async fn write_rewrites(
        &self,
        keys: &crate::keys::Keys,
        described: &std::collections::HashMap<String, Fields>,
        mut rewrites: Vec<DataRewrite>,
        mut counts: Vec<(u64, bool)>,
        report: &mut EncryptReport,
    ) -> Result<(), StoreError> {
        for _ in 0..CHANGED_RETRIES {
            if rewrites.is_empty() {
                return Ok(());
            }
            let written = self.backend.rewrite_data(&rewrites).await?;
            let mut again = Vec::new();
            let mut again_counts = Vec::new();
            for (rewrite, (fields, forgotten)) in rewrites.into_iter().zip(counts) {
                if written.binary_search(&rewrite.position).is_ok() {
                    report.rewritten += 1;
                    if forgotten {
                        report.forgotten += 1;
                        report.fields_erased += fields;
                    } else {
                        report.fields_sealed += fields;
                    }
                    continue;
                }
                // Changed meanwhile (another run sealed it): read it as it is now.
                let now = self.backend.read_all(rewrite.position, 1).await?;
                let Some(event) = now.into_iter().find(|e| e.position == rewrite.position) else {
                    continue;
                };
                let Some(fields) = described.get(&*event.event_type) else {
                    continue;
                };
                if let Resealed::Data {
                    after,
                    fields,
                    forgotten,
                } = reseal(keys, fields, &event.data).await?
                {
                    again.push(DataRewrite {
                        position: event.position,
                        before: event.data,
                        after,
                    });
                    again_counts.push((fields, forgotten));
                }
            }
            rewrites = again;
            counts = again_counts;
        }
        match rewrites.first() {
            None => Ok(()),
            Some(r) => Err(StoreError::Invalid(format!(
                "the event at position {} changed {CHANGED_RETRIES} times while its personal \
                 data was being encrypted; run again",
                r.position
            ))),
        }
    }
}

/// `data` with its plain personal values sealed, if it holds any.
async fn reseal(
    keys: &crate::keys::Keys,
    fields: &Fields,
    data: &str,
) -> Result<Resealed, StoreError> {
    // Most events of a described type, once appends seal, hold nothing plain.
    let mut value: Value = match serde_json::from_str(data) {
        Ok(value) => value,
        Err(e) => return Ok(Resealed::NoSubject(format!("the data is not JSON: {e}"))),
    };
    let plain = fields.count_plain(&mut value).map_err(StoreError::Encode)?;
    if plain == 0 {
        return Ok(Resealed::Nothing);
    }
    let subject = match subject_of(&value, fields.subject_field()) {
        Ok(subject) => subject.to_owned(),
        Err(reason) => return Ok(Resealed::NoSubject(reason)),
    };
    let (sealed, forgotten) = match keys.for_writing(&subject).await {
        Ok(cipher) => (fields.seal_plain(&mut value, &subject, &cipher), false),
        Err(KeyError::Forgotten { .. }) => (
            fields.seal_plain(&mut value, &subject, &throwaway_cipher()),
            true,
        ),
        Err(e) => return Err(e.into()),
    };
    let sealed = sealed.map_err(StoreError::Encode)?;
    let after = serde_json::to_string(&value).map_err(|e| StoreError::Encode(e.to_string()))?;
    Ok(Resealed::Data {
        after,
        fields: sealed as u64,
        forgotten,
    })
}
