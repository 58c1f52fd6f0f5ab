//! [`DriverError`]: the cause of a bus or store error that came from a client library
//! (lapin, tokio-postgres, rusqlite, the EventStoreDB client), kept as `source()` with
//! its text cleaned of secrets.

use std::error::Error;
use std::fmt;

use crate::config::redact;

type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// An error from a database driver or broker client.
///
/// Its `Display` is the client's message with any password in a URL replaced by `***`,
/// so it can be logged. The original error is kept: [`DriverError::get_ref`] and
/// [`DriverError::downcast_ref`] reach it (for example a `tokio_postgres::Error` to read
/// its SQLSTATE), and `source()` continues the chain below it.
pub struct DriverError {
    text: String,
    inner: Option<BoxError>,
}

impl DriverError {
    /// Wraps a client error.
    #[cold]
    pub fn new(error: impl Into<BoxError>) -> Self {
        let inner = error.into();
        Self {
            text: redact(&inner.to_string()),
            inner: Some(inner),
        }
    }

    /// A failure the client reported without an error value (a nacked publish).
    #[cold]
    pub fn msg(text: impl fmt::Display) -> Self {
        Self {
            text: redact(&text.to_string()),
            inner: None,
        }
    }

    /// The client's error, if there was one.
    pub fn get_ref(&self) -> Option<&(dyn Error + Send + Sync + 'static)> {
        self.inner.as_deref()
    }

    /// The client's error as `E`, if it is one.
    pub fn downcast_ref<E: Error + 'static>(&self) -> Option<&E> {
        self.inner.as_deref()?.downcast_ref()
    }
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DriverError").field(&self.text).finish()
    }
}

impl Error for DriverError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.inner.as_deref()?.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_passwords_and_keeps_the_error() {
        let io = std::io::Error::other("cannot reach amqp://guest:s3cret@host:5672/%2f");
        let e = DriverError::new(io);
        assert_eq!(e.to_string(), "cannot reach amqp://guest:***@host:5672/%2f");
        assert!(!format!("{e:?}").contains("s3cret"));
        assert!(e.downcast_ref::<std::io::Error>().is_some());
        assert!(DriverError::msg("nacked").get_ref().is_none());
    }
}
