//! Personal data in the store: encrypting declared fields on append, decrypting them on
//! every read, and forgetting a subject (see [`keys`](crate::keys)).

use std::sync::Arc;

use serde_json::Value;

use super::{EventData, ExpectedVersion, RecordedEvent, Snapshot, Store, StoreError};
use crate::keys::{
    Compiled, DEFAULT_KEY_CACHE, Fields, KeyError, KeyStore, Keys, PersonalData, PersonalEvent,
    find_encrypted, scan, subject_of,
};
use crate::message::Metadata;

/// The stream [`Store::forget`] records each erasure in, as an
/// [`SUBJECT_FORGOTTEN`] event (data `{"subject": "..."}`): what a projection reads to
/// clean its read model.
pub const FORGOTTEN_STREAM: &str = "orkestra.forgotten-subjects";

/// The type of the event [`Store::forget`] appends to [`FORGOTTEN_STREAM`]. Like every
/// type under [`INTERNAL_TYPE_PREFIX`](super::INTERNAL_TYPE_PREFIX), the relay does not
/// publish it.
pub const SUBJECT_FORGOTTEN: &str = "orkestra.SubjectForgotten";

/// What [`Store::forget`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forgotten {
    /// The subject.
    pub subject: String,
    /// Whether a key was deleted now (`false`: the subject had none, or was forgotten
    /// before).
    pub key_deleted: bool,
    /// The global position of its `orkestra.SubjectForgotten` event.
    pub position: u64,
}

/// The personal data a store encrypts, and the keys it encrypts with.
#[derive(Debug, Default, Clone)]
pub(crate) struct Personal {
    pub(crate) keys: Option<Arc<Keys>>,
    pub(crate) fields: Option<Arc<Compiled>>,
}

impl Personal {
    pub(crate) fn with_key_store(store: Arc<dyn KeyStore>) -> Self {
        Self {
            keys: Some(Arc::new(Keys::new(store, DEFAULT_KEY_CACHE))),
            fields: None,
        }
    }
}

impl Store {
    /// Keeps subjects' keys in `keys` (a KMS behind your own [`KeyStore`]) instead of the
    /// store's own (`orkestra_keys` in SQLite and PostgreSQL, a map for memory). Call
    /// it before [`with_personal_data`](Self::with_personal_data) on EventStoreDB, which
    /// keeps no keys of its own.
    #[must_use]
    pub fn with_keys(mut self, keys: impl KeyStore) -> Self {
        self.personal.keys = Some(Arc::new(Keys::new(Arc::new(keys), DEFAULT_KEY_CACHE)));
        self
    }

    /// Keeps up to `subjects` subjects' ciphers ready (default
    /// [`DEFAULT_KEY_CACHE`]); each is trusted for
    /// [`KEY_CACHE_MAX_AGE`](crate::keys::KEY_CACHE_MAX_AGE), then asked again.
    #[must_use]
    pub fn with_key_cache(mut self, subjects: usize) -> Self {
        if let Some(keys) = &self.personal.keys {
            self.personal.keys = Some(Arc::new(Keys::new(keys.store_arc(), subjects)));
        }
        self
    }

    /// Encrypts the personal fields `data` declares on every append and decrypts them on
    /// every read (see [`keys`](crate::keys)); called again, adds to what was declared
    /// (one call per namespace). A description that does not parse (a bad
    /// path, a replacement that is not JSON, a personal subject) is
    /// [`StoreError::Invalid`] naming the event and field, and so is a store without a
    /// key store (EventStoreDB without [`with_keys`](Self::with_keys)).
    pub fn with_personal_data(mut self, data: &PersonalData) -> Result<Self, StoreError> {
        if self.personal.keys.is_none() {
            return Err(StoreError::Invalid(format!(
                "personal data is declared, but the {} store keeps no keys: give it a key \
                 store first (Store::with_keys)",
                self.adapter()
            )));
        }
        let all = match &self.personal.fields {
            Some(compiled) => compiled.source.merged(data),
            None => data.clone(),
        };
        let compiled = all.compile().map_err(StoreError::Invalid)?;
        self.personal.fields = Some(Arc::new(compiled));
        Ok(self)
    }

    /// Everything this store was told is personal (each
    /// [`with_personal_data`](Self::with_personal_data) adds to it), if anything.
    pub fn personal_data(&self) -> Option<&PersonalData> {
        self.personal.fields.as_deref().map(|c| &c.source)
    }

    /// Whether this store encrypts `event` exactly as described (same subject, same
    /// fields and replacements): what a generated `Wiring::start` checks.
    pub fn encrypts(&self, event: &PersonalEvent) -> bool {
        self.personal_data()
            .and_then(|d| d.event(event.event_type()))
            .is_some_and(|known| known == event)
    }

    /// The key store, if this store has one.
    pub fn key_store(&self) -> Option<&dyn KeyStore> {
        self.personal.keys.as_deref().map(Keys::store)
    }

    pub(super) fn keys(&self) -> Result<&Keys, StoreError> {
        self.personal.keys.as_deref().ok_or_else(|| {
            StoreError::Invalid(format!(
                "the {} store keeps no keys: give it one with Store::with_keys",
                self.adapter()
            ))
        })
    }

    /// Forgets a data subject: deletes its key (what was encrypted with it can never be
    /// read again; readers get each field's replacement), records the erasure (the
    /// subject never gets a key again: appending personal data for it fails), and
    /// appends an [`SUBJECT_FORGOTTEN`] event to [`FORGOTTEN_STREAM`] for projections
    /// to clean their read models. Forgetting twice is harmless: the event is appended
    /// once.
    pub async fn forget(&self, subject: &str) -> Result<Forgotten, StoreError> {
        let keys = self.keys()?;
        let key_deleted = keys.forget(subject).await?;
        let id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("{SUBJECT_FORGOTTEN}:{subject}").as_bytes(),
        )
        .to_string();
        let event = EventData {
            id,
            event_type: SUBJECT_FORGOTTEN.to_owned(),
            schema_version: 1,
            data: serde_json::json!({ "subject": subject }),
            metadata: Metadata::new(),
            topic: None,
            tags: Vec::new(),
        };
        let appended = self
            .append(FORGOTTEN_STREAM, ExpectedVersion::Any, vec![event])
            .await?;
        tracing::info!(
            subject = %subject,
            key_deleted,
            position = appended.last_position,
            "personal data subject forgotten"
        );
        Ok(Forgotten {
            subject: subject.to_owned(),
            key_deleted,
            position: appended.last_position,
        })
    }

    /// Whether `subject` was forgotten.
    pub async fn is_forgotten(&self, subject: &str) -> Result<bool, StoreError> {
        Ok(self.keys()?.store().is_forgotten(subject).await?)
    }

    /// Encrypts the declared personal fields of `events` in place.
    pub(crate) async fn protect(&self, events: &mut [EventData]) -> Result<(), StoreError> {
        let Some(compiled) = &self.personal.fields else {
            return Ok(());
        };
        for event in events {
            let Some(fields) = compiled.events.get(&event.event_type) else {
                continue;
            };
            let what = || format!("event {} ({})", event.id, event.event_type);
            seal(self.keys()?, fields, &mut event.data, what).await?;
        }
        Ok(())
    }

    /// Decrypts the personal fields of `events` in place (replacements where a key is
    /// gone, listed by [`RecordedEvent::redacted`]).
    ///
    /// Events whose subject's key is cached open without waiting, in one pass (a large
    /// page in two halves, one on a scoped thread of its own); the others (a key to fetch, a record the fast scanner leaves) then one by one.
    pub(crate) async fn reveal(&self, events: &mut [RecordedEvent]) -> Result<(), StoreError> {
        let Some(compiled) = &self.personal.fields else {
            return Ok(());
        };
        let keys = self.keys()?;
        // The pass is CPU work that holds this task's thread either way (as decoding a
        // page does); split in two it holds it for half as long.
        let deferred = if events.len() >= PARALLEL_PAGE
            && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1)
        {
            let (first, second) = events.split_at_mut(events.len() / 2);
            std::thread::scope(|scope| {
                let other = scope.spawn(|| open_cached(keys, compiled, second));
                let mut deferred = open_cached(keys, compiled, first)?;
                let theirs = other.join().map_err(|_| {
                    StoreError::Encode("decrypting a page of events panicked".into())
                })??;
                let offset = first.len();
                deferred.extend(theirs.into_iter().map(|i| i + offset));
                Ok::<_, StoreError>(deferred)
            })?
        } else {
            open_cached(keys, compiled, events)?
        };
        for i in deferred {
            let event = &mut events[i];
            let Some(fields) = compiled.events.get(&*event.event_type) else {
                continue;
            };
            let place = place_of(event);
            let (data, redacted) = open(keys, fields, &event.data, place).await?;
            event.data = data;
            event.redacted = redacted;
        }
        Ok(())
    }

    /// Encrypts the declared personal fields of a snapshot's state.
    pub(crate) async fn protect_snapshot(&self, snapshot: &mut Snapshot) -> Result<(), StoreError> {
        let Some(fields) = self
            .personal
            .fields
            .as_ref()
            .and_then(|c| c.states.get(&snapshot.shape))
        else {
            return Ok(());
        };
        let mut state: Value = serde_json::from_str(&snapshot.state).map_err(|e| {
            StoreError::Encode(format!(
                "the snapshot of stream {:?} is not JSON: {e}",
                snapshot.stream
            ))
        })?;
        let stream = snapshot.stream.clone();
        seal(self.keys()?, fields, &mut state, || {
            format!("the snapshot of stream {stream:?}")
        })
        .await?;
        snapshot.state = state.to_string();
        Ok(())
    }

    /// Decrypts a snapshot's state. Once its subject is forgotten the snapshot is not
    /// used (`None`): the reader folds the stream's events, whose personal fields it gets
    /// as their replacements like any reader.
    pub(crate) async fn reveal_snapshot(
        &self,
        mut snapshot: Snapshot,
    ) -> Result<Option<Snapshot>, StoreError> {
        let Some(fields) = self
            .personal
            .fields
            .as_ref()
            .and_then(|c| c.states.get(&snapshot.shape))
        else {
            return Ok(Some(snapshot));
        };
        if !find_encrypted(&snapshot.state) {
            return Ok(Some(snapshot));
        }
        let stream = snapshot.stream.clone();
        let place = move |field: String, message: String| StoreError::PersonalData {
            stream: stream.clone(),
            position: None,
            field,
            message,
        };
        let (state, redacted) = open(self.keys()?, fields, &snapshot.state, place).await?;
        if !redacted.is_empty() {
            return Ok(None);
        }
        snapshot.state = state;
        Ok(Some(snapshot))
    }
}

/// Pages of at least this many events are opened on two threads.
const PARALLEL_PAGE: usize = 512;

/// The error maker of an event's field that does not open.
fn place_of(event: &RecordedEvent) -> impl Fn(String, String) -> StoreError + use<> {
    let (stream, position) = (event.stream.clone(), event.position);
    move |field: String, message: String| StoreError::PersonalData {
        stream: stream.to_string(),
        position: Some(position),
        field,
        message,
    }
}

/// Opens, without waiting, the events whose subject's answer is cached and whose text
/// the fast scanner reads; the indexes of the others, for the path that may wait.
fn open_cached(
    keys: &Keys,
    compiled: &Compiled,
    events: &mut [RecordedEvent],
) -> Result<Vec<usize>, StoreError> {
    let mut deferred = Vec::new();
    // The description of the previous event's type: a page of events often holds few
    // types, and a comparison costs less than a hash.
    let mut last: Option<(std::sync::Arc<str>, Option<&Fields>)> = None;
    for (i, event) in events.iter_mut().enumerate() {
        let fields = match &last {
            Some((event_type, fields))
                if std::sync::Arc::ptr_eq(event_type, &event.event_type)
                    || **event_type == *event.event_type =>
            {
                *fields
            }
            _ => {
                let fields = compiled.events.get(&*event.event_type);
                last = Some((event.event_type.clone(), fields));
                fields
            }
        };
        let Some(fields) = fields else {
            continue;
        };
        let Some(found) = scan(&event.data, fields.subject_field()) else {
            deferred.push(i);
            continue;
        };
        if found.sealed.is_empty() {
            continue;
        }
        let Some(subject) = found
            .subject
            .clone()
            .and_then(|r| event.data.get(r))
            .filter(|s| !s.is_empty())
        else {
            deferred.push(i);
            continue;
        };
        let Some(cipher) = keys.cached(subject) else {
            deferred.push(i);
            continue;
        };
        let (data, redacted) = fields
            .splice(&event.data, &found, subject, cipher.as_deref())
            .map_err(|(field, message)| place_of(event)(field, message))?;
        event.data = data;
        event.redacted = redacted;
    }
    Ok(deferred)
}

/// Seals `data`'s declared fields with its subject's key; `what` names the record in
/// errors.
async fn seal(
    keys: &Keys,
    fields: &Fields,
    data: &mut Value,
    what: impl Fn() -> String,
) -> Result<(), StoreError> {
    let subject = subject_of(data, fields.subject_field())
        .map_err(|m| StoreError::Invalid(format!("{}: {m}", what())))?
        .to_owned();
    let cipher = match keys.for_writing(&subject).await {
        Ok(cipher) => cipher,
        Err(KeyError::Forgotten { subject }) => {
            return Err(StoreError::SubjectForgotten {
                subject,
                record: what(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    fields
        .seal(data, &subject, &cipher)
        .map_err(|m| StoreError::Encode(format!("{}: {m}", what())))
}

/// Opens the sealed values of the JSON text `json`: the new text and the paths
/// redacted. `place` makes the error of a field that does not open.
async fn open(
    keys: &Keys,
    fields: &Fields,
    json: &str,
    place: impl Fn(String, String) -> StoreError,
) -> Result<(String, Vec<String>), StoreError> {
    // The fast path: one pass over the text, the plain values spliced in.
    if let Some(found) = scan(json, fields.subject_field()) {
        if found.sealed.is_empty() {
            return Ok((json.to_owned(), Vec::new()));
        }
        if let Some(subject) = found.subject.clone().and_then(|r| json.get(r))
            && !subject.is_empty()
        {
            let cipher = keys.for_reading(subject).await?;
            return fields
                .splice(json, &found, subject, cipher.as_deref())
                .map_err(|(field, message)| place(field, message));
        }
    }
    // The slow path over a parsed value: what the scanner leaves (and the errors).
    let mut data: Value = serde_json::from_str(json)
        .map_err(|e| place(String::new(), format!("the data is not JSON: {e}")))?;
    let subject = subject_of(&data, fields.subject_field())
        .map_err(|m| place(fields.subject_field().to_owned(), m))?
        .to_owned();
    let cipher = keys.for_reading(&subject).await?;
    let redacted = fields
        .open(&mut data, &subject, cipher.as_deref())
        .map_err(|(field, message)| place(field, message))?;
    let text = serde_json::to_string(&data)
        .map_err(|e| place(String::new(), format!("cannot encode the data: {e}")))?;
    Ok((text, redacted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{PersonalEvent, PersonalField};

    static EVENTS: &[PersonalEvent] = &[PersonalEvent::new(
        "T.Registered",
        "id",
        &[PersonalField::new("email", "\"\"")],
    )];

    #[test]
    fn personal_data_without_a_key_store_is_refused_at_construction() {
        // A store whose adapter keeps no keys (as EventStoreDB).
        let store = Store::new(Arc::new(super::super::memory::MemoryStore::new()));
        let data = PersonalData::new().with_events(EVENTS);
        let error = store.clone().with_personal_data(&data).unwrap_err();
        assert!(
            error.to_string().contains("keeps no keys")
                && error.to_string().contains("Store::with_keys"),
            "{error}"
        );
        let store = store
            .with_keys(crate::keys::MemoryKeyStore::new())
            .with_personal_data(&data);
        assert!(store.is_ok());
    }
}
