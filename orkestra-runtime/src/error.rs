//! [`DriverError`]: the cause of a bus or store error that came from a client library
//! (lapin, tokio-postgres, rusqlite, the EventStoreDB client), kept as `source()` with
//! its text cleaned of secrets.

use std::error::Error;
use std::fmt;

use crate::config::redact;

type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// An error from a database driver or broker client.
///
/// Its `Display` is the client's message, led by the root cause of the client's chain
/// (`FATAL: database "x" does not exist (Error occurred while creating a new object: db
/// error)`), with any password in a URL replaced by `***`, so it can be logged, and so is
/// every error of its `source()` chain (a copy of the
/// client's chain, each text cleaned the same way). The original error is kept:
/// [`DriverError::get_ref`] and [`DriverError::downcast_ref`] reach it (for example a
/// `tokio_postgres::Error` to read its SQLSTATE).
pub struct DriverError {
    text: String,
    inner: Option<BoxError>,
    /// The client's own causes, cleaned.
    next: Option<Box<DriverError>>,
}

impl DriverError {
    /// Wraps a client error.
    #[cold]
    pub fn new(error: impl Into<BoxError>) -> Self {
        let inner = error.into();
        Self {
            text: redact(&inner.to_string()),
            next: Self::causes(inner.source()),
            inner: Some(inner),
        }
    }

    /// A cleaned copy of a chain of causes.
    fn causes(cause: Option<&(dyn Error + 'static)>) -> Option<Box<Self>> {
        let cause = cause?;
        Some(Box::new(Self {
            text: redact(&cause.to_string()),
            inner: None,
            next: Self::causes(cause.source()),
        }))
    }

    /// A failure the client reported without an error value (a nacked publish).
    #[cold]
    pub fn msg(text: impl fmt::Display) -> Self {
        Self {
            text: redact(&text.to_string()),
            inner: None,
            next: None,
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

/// The root cause first, then what the client said around it when that adds anything:
/// `FATAL: database "x" does not exist (Error occurred while creating a new object: db
/// error)`, not the wrapper's words alone.
impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut root = None;
        let mut next = self.next.as_deref();
        while let Some(cause) = next {
            root = Some(cause);
            next = cause.next.as_deref();
        }
        match root {
            // Only the head of the chain leads with the root: each cause (a `source()`)
            // reads as the client wrote it, so a printer walking the chain repeats nothing.
            Some(root) if self.inner.is_some() && !self.text.contains(&root.text) => {
                write!(f, "{} ({})", root.text, self.text)
            }
            _ => f.write_str(&self.text),
        }
    }
}

impl fmt::Debug for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DriverError").field(&self.text).finish()
    }
}

impl Error for DriverError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.next
            .as_deref()
            .map(|next| next as &(dyn Error + 'static))
    }
}

/// Writes `error` as a user reads it, the form `anyhow` prints: its sentence, then each
/// cause it does not already spell out, one per line.
pub(crate) fn write_human(
    error: &(dyn Error + 'static),
    f: &mut fmt::Formatter<'_>,
) -> fmt::Result {
    let mut shown = error.to_string();
    f.write_str(&shown)?;
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !shown.contains(&text) {
            write!(f, "\n  caused by: {text}")?;
            shown.push('\n');
            shown.push_str(&text);
        }
        cause = c.source();
    }
    Ok(())
}

/// `Debug` as the human form for the errors a service's `main` returns with `?`: a
/// `main` returning `Result` prints `Error: {:?}`, which must read as a sentence. Used
/// at the crate root, which sits above every layer.
macro_rules! human_debug {
    ($($ty:ty),* $(,)?) => {
        $(
            impl ::std::fmt::Debug for $ty {
                fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                    $crate::error::write_human(self, f)
                }
            }
        )*
    };
}
pub(crate) use human_debug;

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

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("connect failed")
        }
    }

    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn every_cause_in_the_chain_is_cleaned() {
        let e = DriverError::new(Outer(std::io::Error::other(
            "dial postgres://app:hunter2@db/x: refused",
        )));
        let mut texts = vec![e.to_string()];
        let mut cause = e.source();
        while let Some(c) = cause {
            texts.push(format!("{c} {c:?}"));
            cause = c.source();
        }
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(texts[1].contains("postgres://app:***@db/x"), "{texts:?}");
        assert!(texts.iter().all(|t| !t.contains("hunter2")), "{texts:?}");
        assert!(e.downcast_ref::<Outer>().is_some());
        assert!(
            e.to_string()
                .starts_with("dial postgres://app:***@db/x: refused (connect failed)"),
            "the root cause first: {e}"
        );
    }

    #[test]
    fn debug_of_a_public_error_is_its_sentence_with_causes() {
        let e = crate::config::ConfigError::Io {
            path: "orkestra.toml".into(),
            message: "denied".into(),
        };
        assert_eq!(format!("{e:?}"), "cannot read orkestra.toml: denied");
        let driver = DriverError::new(Outer(std::io::Error::other(
            "database \"x\" does not exist",
        )));
        assert_eq!(
            driver.to_string(),
            "database \"x\" does not exist (connect failed)"
        );
    }
}
