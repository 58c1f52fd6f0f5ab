//! [`Metadata`]: the context every command and event carries, and message ids.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A fresh message id: a random (v4) UUID in its hyphenated lowercase form.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Who caused a message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorType {
    /// A human user.
    User,
    /// The system itself (the default).
    #[default]
    System,
    /// A domain expert or back-office operator.
    Expert,
    /// A scheduled job.
    Scheduler,
}

impl fmt::Display for ActorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::User => "user",
            Self::System => "system",
            Self::Expert => "expert",
            Self::Scheduler => "scheduler",
        })
    }
}

/// Context that travels with every command and event.
///
/// The correlation id ties together everything caused by one original request; the
/// causation id names the message that directly caused this one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Metadata {
    /// Shared by every message caused, directly or not, by the same original message.
    pub correlation_id: String,
    /// The id of the message that caused this one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// Who acted, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    /// What kind of actor acted.
    #[serde(default)]
    pub actor_type: ActorType,
    /// Where the message came from (a service or channel name), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// When the message was issued (UTC).
    pub issued_at: DateTime<Utc>,
    /// The W3C trace context it was produced in, when tracing is on: lets work done later
    /// (a stored event replayed, a message from a broker) link back to its origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_context: Option<TraceContext>,
    /// The paths of the personal fields this message's reader got as their replacement
    /// (the subject was forgotten): see [`redacted`](Self::redacted). Written only when
    /// there are some, so a message without does not grow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    redacted: Vec<String>,
}

impl Metadata {
    /// Fresh metadata: a new correlation id, no causation, a system actor, issued now.
    pub fn new() -> Self {
        Self {
            correlation_id: new_id(),
            causation_id: None,
            actor_id: None,
            actor_type: ActorType::System,
            source: None,
            issued_at: Utc::now(),
            trace_context: None,
            redacted: Vec::new(),
        }
    }

    /// The paths of the personal fields (`email`, `contacts[1].phone`) that were read as
    /// their replacement because their subject was forgotten; empty otherwise. Set by
    /// the store's reads (`RecordedEvent::decode`) and by the RabbitMQ consumer;
    /// [`Event::redacted`](super::Event::redacted) reads it.
    /// A message caused by this one ([`derive`](Self::derive)) does not inherit it.
    pub fn redacted(&self) -> &[String] {
        &self.redacted
    }

    /// Adds `paths` to [`redacted`](Self::redacted) (each once).
    pub(crate) fn add_redacted<S: AsRef<str>>(&mut self, paths: impl IntoIterator<Item = S>) {
        for path in paths {
            let path = path.as_ref();
            if !self.redacted.iter().any(|p| p == path) {
                self.redacted.push(path.to_owned());
            }
        }
    }

    /// Sets the actor.
    #[must_use]
    pub fn with_actor(mut self, actor_id: impl Into<String>, actor_type: ActorType) -> Self {
        self.actor_id = Some(actor_id.into());
        self.actor_type = actor_type;
        self
    }

    /// Sets the source.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Sets the correlation id (for example one received from an HTTP header).
    #[must_use]
    pub fn with_correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = correlation_id.into();
        self
    }

    /// Metadata for a message caused by `parent_id`, whose metadata is `parent`: the same
    /// correlation id, actor and source; the causation id is `parent_id`; issued now.
    pub fn derive(parent: &Metadata, parent_id: impl Into<String>) -> Self {
        Self {
            correlation_id: parent.correlation_id.clone(),
            causation_id: Some(parent_id.into()),
            actor_id: parent.actor_id.clone(),
            actor_type: parent.actor_type,
            source: parent.source.clone(),
            issued_at: Utc::now(),
            trace_context: None,
            redacted: Vec::new(),
        }
    }
}

impl Default for Metadata {
    fn default() -> Self {
        Self::new()
    }
}

/// A W3C trace context (`traceparent` and `tracestate`), as it travels in message
/// metadata so work done later (a stored event handled by a subscriber) can link back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    /// `00-<trace id>-<span id>-<flags>`.
    pub traceparent: String,
    /// Vendor trace state, possibly empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tracestate: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list of redacted fields is written only when there are some: a message
    /// without any serializes as before, and one written before it existed still reads.
    #[test]
    fn redacted_fields_are_written_only_when_there_are_some() {
        let mut metadata = Metadata::new();
        let plain = serde_json::to_string(&metadata).unwrap();
        assert!(!plain.contains("redacted"), "{plain}");
        let old: Metadata = serde_json::from_str(&plain).unwrap();
        assert!(old.redacted().is_empty());

        metadata.add_redacted(["email", "contacts[0].phone", "email"]);
        assert_eq!(metadata.redacted(), ["email", "contacts[0].phone"]);
        let text = serde_json::to_string(&metadata).unwrap();
        let back: Metadata = serde_json::from_str(&text).unwrap();
        assert_eq!(back.redacted(), ["email", "contacts[0].phone"]);
        assert!(
            Metadata::derive(&back, "parent").redacted().is_empty(),
            "a message it causes is new data"
        );
    }
}
