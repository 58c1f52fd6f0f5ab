//! Layer 3, what a handler is and returns, whatever bus runs it: [`HandlerError`],
//! [`EventSet`] (the events a binding receives) and [`DeadLetter`].

mod dead_letter;
mod error;
mod event_set;

pub use dead_letter::DeadLetter;
pub use error::HandlerError;
pub use event_set::EventSet;
