//! Reading events written by another release: older data is upcast to the reader's
//! version through the schema's `upcast` steps, newer data is read tolerantly. The
//! contract is `design/evolution.md`.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde_json::Value;

use super::payload::{EventPayload, PayloadError};

/// Why an event's data could not be brought to the reader's schema version.
///
/// A custom upcast step returns it to refuse data it cannot convert; the runtime also
/// builds it when no step covers the stored version or a step panics. Decoding reports it
/// as [`PayloadError::Upcast`] (on a bus, the message becomes a dead letter with this
/// reason; in a store, nothing is lost: the stored data is untouched).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpcastError {
    message: String,
}

impl UpcastError {
    /// A step's refusal, in words.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// No step starts at `version`: the data is older than the oldest step the reader
    /// knows (or the payload has no steps at all).
    #[cold]
    pub fn no_step(version: u32, current: u32) -> Self {
        Self::new(format!(
            "no upcast step from version {version} (this release reads version {current} and \
             declares no step from {version})"
        ))
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for UpcastError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UpcastError {}

/// Decodes event data written at schema version `version` into `D`: older data is upcast
/// through `D`'s steps first, data of this or a newer version is read as it is (unknown
/// fields ignored). The shape is checked, the rules are not (history stays readable when
/// a rule is tightened). A step that fails or panics is [`PayloadError::Upcast`].
pub(crate) fn read_event<D: EventPayload>(data: Value, version: u32) -> Result<D, PayloadError> {
    let data = upcast_to_current::<D>(data, version)?;
    D::decode_json(data)
}

/// Runs `D`'s steps from `version` to `D::VERSION` (nothing when `version` is current or
/// newer).
fn upcast_to_current<D: EventPayload>(data: Value, version: u32) -> Result<Value, PayloadError> {
    if version >= D::VERSION {
        return Ok(data);
    }
    let failed = |reason: String| PayloadError::Upcast {
        event_type: D::TYPE_NAME,
        from: version,
        to: D::VERSION,
        reason,
    };
    match catch_unwind(AssertUnwindSafe(|| D::upcast(data, version))) {
        Ok(Ok(data)) => Ok(data),
        Ok(Err(e)) => Err(failed(e.message)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string panic payload".to_owned());
            Err(failed(format!("an upcast step panicked: {what}")))
        }
    }
}
