//! [`Sealer`]: a store's keys and personal data, lent to a carrier of events that is
//! not the store (the RabbitMQ bus) to seal an event's personal fields before it leaves
//! the process and open them when it comes back, by event type, with the same walks and
//! the same stored form as the store.

use std::sync::Arc;

use serde_json::Value;

use super::{Compiled, Fields, KeyError, Keys, PersonalData, subject_of};

/// A store's key cache and compiled personal data, shared with it: a subject the store
/// forgets is forgotten here at once (same cache).
#[derive(Debug)]
pub(crate) struct Sealer {
    keys: Arc<Keys>,
    compiled: Arc<Compiled>,
}

/// What [`Sealer::seal`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sealing {
    /// The event type has no personal data: the data is as it was.
    NotPersonal,
    /// Every personal value is in the stored form.
    Sealed,
    /// The subject is forgotten: every personal value was replaced by its replacement
    /// (these paths), as a reader of the store gets it.
    Redacted(Vec<String>),
}

/// Why [`Sealer::seal`] or [`Sealer::open`] failed. Never holds a personal value.
#[derive(Debug)]
pub(crate) enum SealError {
    /// The record is not what its description says (no subject), or a field does not
    /// open: the field's path (empty for the record as a whole) and why.
    Field { field: String, message: String },
    /// The key store failed: worth another try.
    Keys(KeyError),
}

impl Sealer {
    pub(crate) fn new(keys: Arc<Keys>, compiled: Arc<Compiled>) -> Self {
        Self { keys, compiled }
    }

    /// Everything described as personal.
    pub(crate) fn personal_data(&self) -> &PersonalData {
        &self.compiled.source
    }

    /// The checked description of an event type, if it has personal data.
    pub(crate) fn fields(&self, event_type: &str) -> Option<&Fields> {
        self.compiled.events.get(event_type)
    }

    /// Seals the personal fields of `data`, an event of `event_type`, with its subject's
    /// key (made now if it has none). A forgotten subject's values are replaced instead
    /// (never an error: an event stored before the forget and published after it, by
    /// the relay, must still go out).
    pub(crate) async fn seal(
        &self,
        event_type: &str,
        data: &mut Value,
    ) -> Result<Sealing, SealError> {
        let Some(fields) = self.fields(event_type) else {
            return Ok(Sealing::NotPersonal);
        };
        let subject = subject_of(data, fields.subject_field())
            .map_err(|message| SealError::Field {
                field: fields.subject_field().to_owned(),
                message,
            })?
            .to_owned();
        let cipher = match self.keys.for_writing(&subject).await {
            Ok(cipher) => cipher,
            Err(KeyError::Forgotten { .. }) => return Ok(Sealing::Redacted(fields.redact(data))),
            Err(e) => return Err(SealError::Keys(e)),
        };
        fields
            .seal(data, &subject, &cipher)
            .map_err(|message| SealError::Field {
                field: String::new(),
                message,
            })?;
        Ok(Sealing::Sealed)
    }

    /// Opens every value of `data` (an event of `event_type`) in the stored form: the
    /// plain value, or without a key (a forgotten subject) its field's replacement;
    /// returns the paths replaced. A value that does not authenticate (changed, or
    /// copied from another subject or field) is an error naming its path.
    pub(crate) async fn open(
        &self,
        event_type: &str,
        data: &mut Value,
    ) -> Result<Vec<String>, SealError> {
        let Some(fields) = self.fields(event_type) else {
            return Ok(Vec::new());
        };
        let subject = subject_of(data, fields.subject_field())
            .map_err(|message| SealError::Field {
                field: fields.subject_field().to_owned(),
                message,
            })?
            .to_owned();
        let cipher = self
            .keys
            .for_reading(&subject)
            .await
            .map_err(SealError::Keys)?;
        fields
            .open(data, &subject, cipher.as_deref())
            .map_err(|(field, message)| SealError::Field { field, message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{MemoryKeyStore, PersonalEvent, PersonalField};
    use serde_json::json;

    static EVENTS: &[PersonalEvent] = &[PersonalEvent::new(
        "T.Registered",
        "id",
        &[
            PersonalField::new("email", "\"\""),
            PersonalField::new("phones[]", "null"),
        ],
    )];

    fn sealer() -> Sealer {
        let keys = Arc::new(Keys::new(Arc::new(MemoryKeyStore::new()), 16));
        let compiled = PersonalData::new().with_events(EVENTS).compile().unwrap();
        Sealer::new(keys, Arc::new(compiled))
    }

    #[tokio::test]
    async fn sealed_then_opened_then_forgotten() {
        let sealer = sealer();
        let plain = json!({"id": "s-1", "email": "ada@mail.example", "phones": ["555-1"], "n": 1});
        let mut data = plain.clone();
        assert_eq!(
            sealer.seal("T.Registered", &mut data).await.unwrap(),
            Sealing::Sealed
        );
        let text = data.to_string();
        assert!(!text.contains("ada@") && !text.contains("555-1"), "{text}");
        let mut opened = data.clone();
        assert!(
            sealer
                .open("T.Registered", &mut opened)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(opened, plain);

        let mut other = json!({"email": "x"});
        assert_eq!(
            sealer.seal("T.Other", &mut other).await.unwrap(),
            Sealing::NotPersonal
        );

        sealer.keys.forget("s-1").await.unwrap();
        let mut after = data.clone();
        let redacted = sealer.open("T.Registered", &mut after).await.unwrap();
        assert_eq!(redacted, ["email", "phones[0]"]);
        assert_eq!(after["email"], json!(""));
        let mut late = plain.clone();
        let Sealing::Redacted(paths) = sealer.seal("T.Registered", &mut late).await.unwrap() else {
            panic!("a forgotten subject's event is redacted")
        };
        assert_eq!(paths, ["email", "phones[0]"]);
        assert!(!late.to_string().contains("ada@"));
    }

    #[tokio::test]
    async fn errors_name_the_field_never_the_value() {
        let sealer = sealer();
        let mut missing = json!({"email": "ada@mail.example"});
        let Err(SealError::Field { field, message }) =
            sealer.seal("T.Registered", &mut missing).await
        else {
            panic!("no subject")
        };
        assert_eq!(field, "id");
        assert!(message.contains("missing"), "{message}");

        let mut data = json!({"id": "s-2", "email": "ada@mail.example"});
        sealer.seal("T.Registered", &mut data).await.unwrap();
        // Moved to another subject that has a key of its own.
        let mut theirs = json!({"id": "s-3", "email": "bob@mail.example"});
        sealer.seal("T.Registered", &mut theirs).await.unwrap();
        data["id"] = json!("s-3");
        let Err(SealError::Field { field, message }) = sealer.open("T.Registered", &mut data).await
        else {
            panic!("moved to another subject")
        };
        assert_eq!(field, "email");
        assert!(message.contains("does not authenticate"), "{message}");
        assert!(!message.contains("ada@"));
    }
}
