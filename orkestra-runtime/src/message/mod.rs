//! Layer 1, what travels: payloads and their checks, metadata, typed and type-erased
//! commands and events, envelopes with their delivery state, and topics.
//!
//! Nothing here knows about buses, stores or spans.

mod command;
mod decimal;
mod envelope;
mod erased;
mod event;
mod metadata;
mod payload;
mod renaming;
pub mod topic;
mod upcast;

pub use command::Command;
pub use decimal::Decimal;
pub use envelope::{
    CommandEnvelope, CommandStatus, DEFAULT_MAX_RETRIES, EventEnvelope, EventStatus,
    HandlerOutcome, TransitionError,
};
pub use erased::{Message, MessageKind, RawCommand, RawEvent};
pub use event::Event;
pub use metadata::{ActorType, Metadata, TraceContext, new_id};
pub(crate) use payload::json_kind;
pub use payload::{
    CommandError, CommandPayload, EventError, EventPayload, ParamError, Payload, PayloadError,
    Validate, ValidationError,
};
pub use upcast::{UpcastError, UpcastStep, UpcastSteps};
pub(crate) use upcast::{read_event, read_event_ref, read_stored};
