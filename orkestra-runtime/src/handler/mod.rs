//! Layer 3, what a handler is and returns, whatever bus runs it: [`HandlerError`],
//! [`EventSet`] (the events a binding receives), [`DeadLetter`] and the [`Inbox`] of
//! `once: true` handlers.

mod dead_letter;
mod error;
mod event_set;
mod inbox;

pub use dead_letter::DeadLetter;
pub use error::HandlerError;
pub use event_set::EventSet;
pub(crate) use inbox::InboxBackend;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) use inbox::OpenClaim;
#[cfg(feature = "postgres")]
pub(crate) use inbox::PostgresClaimConnection;
pub use inbox::{DEFAULT_MEMORY_INBOX, Inbox, InboxError};
