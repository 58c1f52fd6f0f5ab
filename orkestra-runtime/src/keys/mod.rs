//! Personal data: one key per data subject, the encryption of personal fields with it,
//! and forgetting a subject by deleting its key (crypto-shredding).
//!
//! A [`KeyStore`] keeps one 256-bit key per subject (a customer id, a user id), made on
//! first use and made once however many writers ask at the same moment. Forgetting a
//! subject deletes its key and records the erasure: the subject never gets a key again,
//! so what was encrypted with the old one stays unreadable for good, in every copy of
//! the database that does not also hold the key.
//!
//! | key store | where the keys are | forgetting |
//! | --- | --- | --- |
//! | [`MemoryKeyStore`] | a map, gone with the process | the entry is removed |
//! | [`SqliteKeyStore`] | `orkestra_keys` / `orkestra_erasures` in the store's file | `secure_delete` zeroes the row's bytes; the WAL is checkpointed and truncated |
//! | [`PostgresKeyStore`] | `orkestra_keys` / `orkestra_erasures` in the store's database | the row is deleted, then `VACUUM orkestra_keys` removes the dead tuple |
//!
//! A store with [personal data](PersonalData) declared encrypts each personal field
//! on append with AES-256-GCM ([`cipher`](self#the-stored-form)) and decrypts it on
//! every read; `Store::with_keys` keeps the keys elsewhere (a KMS behind your own
//! [`KeyStore`]).
//!
//! ## The stored form
//!
//! A personal field's JSON value is replaced in the stored event by an object with one
//! reserved key, [`ENCRYPTED_KEY`], whose value is a versioned text:
//!
//! ```json
//! { "email": { "$orkestra:personal": "v1.<base64url: 12-byte nonce | ciphertext | 16-byte tag>" } }
//! ```
//!
//! The plaintext is the field's value as JSON text (any type: a string, a number, a
//! nested object, a list), the associated data binds it to the subject and the field's
//! path (`contacts[1].phone`): a value copied to another subject's event or to another
//! field fails to decrypt. Readers recognise the form by its shape, whatever the schema
//! says later; `null` and absent fields are stored as they are (there is nothing to hide).
//!
//! Keys never appear in `Debug`, `Display`, logs or errors, and are wiped from memory
//! when dropped ([`zeroize`]).

mod cache;
mod cipher;
mod memory;
mod personal;
#[cfg(feature = "postgres")]
mod postgres;
mod scan;
// Sealing and opening on the wire: only the RabbitMQ bus carries events out of the process.
#[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
mod sealing;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::fmt;

use futures_util::future::BoxFuture;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::DriverError;

pub(crate) use cache::Keys;
pub use cache::{DEFAULT_KEY_CACHE, KEY_CACHE_MAX_AGE};
pub use cipher::{ENCRYPTED_KEY, FORMAT_VERSION};
pub use memory::MemoryKeyStore;
pub(crate) use personal::{Compiled, Fields, find_encrypted, subject_of};
pub use personal::{PersonalData, PersonalEvent, PersonalField, PersonalState};
#[cfg(feature = "postgres")]
pub use postgres::PostgresKeyStore;
pub(crate) use scan::scan;
pub(crate) use sealing::Sealer;
#[cfg(feature = "rabbitmq")]
pub(crate) use sealing::{SealError, Sealing};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteKeyStore;

/// A subject's 256-bit key. Wiped from memory when dropped; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectKey([u8; 32]);

impl Drop for SubjectKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for SubjectKey {}

impl SubjectKey {
    /// The number of bytes of a key.
    pub const LEN: usize = 32;

    /// A new random key from the operating system's generator.
    pub fn generate() -> Self {
        use aes_gcm::aead::{KeyInit, OsRng};
        let mut key = aes_gcm::Aes256Gcm::generate_key(OsRng);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&key);
        key.as_mut_slice().zeroize();
        Self(bytes)
    }

    /// A key from its bytes (a key store reading what it stored).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A key from a slice read back from storage; anything but 32 bytes is an error
    /// naming the subject (never the bytes).
    pub fn from_slice(subject: &str, bytes: &[u8]) -> Result<Self, KeyError> {
        let array: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Invalid {
            subject: subject.to_owned(),
            message: format!(
                "the stored key has {} bytes, not {}",
                bytes.len(),
                Self::LEN
            ),
        })?;
        Ok(Self(array))
    }

    /// The key's bytes, for a key store that writes them.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubjectKey(..)")
    }
}

/// Why a key store failed. Never holds a key's bytes.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The subject was forgotten: it never gets a key again.
    #[error("subject {subject:?} is forgotten: no personal data can be encrypted for it again")]
    Forgotten {
        /// The subject.
        subject: String,
    },
    /// A subject or a stored key is not usable.
    #[error("key of subject {subject:?}: {message}")]
    Invalid {
        /// The subject.
        subject: String,
        /// What is wrong.
        message: String,
    },
    /// The key store's database failed.
    #[error("{key_store} key store: {source}")]
    Backend {
        /// The key store (`memory`, `sqlite`, `postgres`, or yours).
        key_store: &'static str,
        /// The driver's error (its text with secrets hidden).
        source: DriverError,
    },
}

impl KeyError {
    /// A driver error of the key store `key_store`.
    #[cold]
    pub fn backend(
        key_store: &'static str,
        error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self::Backend {
            key_store,
            source: DriverError::new(error),
        }
    }
}

/// Where subjects' keys are kept. Every method is atomic on its own: concurrent
/// [`key_or_create`](Self::key_or_create) calls for one new subject (in one process or
/// several) return one and the same key, and a subject [`forget`](Self::forget) has
/// removed never gets a key again, even while a `key_or_create` runs beside it.
///
/// Implement it to keep keys in a KMS and give it to `Store::with_keys`; the store
/// caches what it returns (bounded), so calls are rare once a subject is known.
pub trait KeyStore: Send + Sync + fmt::Debug + 'static {
    /// A short name for errors and logs (`memory`, `sqlite`, `postgres`).
    fn name(&self) -> &'static str;

    /// The subject's key; `None` when it has none (forgotten, or never used).
    fn key<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<Option<SubjectKey>, KeyError>>;

    /// The subject's key, made now if it has none; [`KeyError::Forgotten`] for a
    /// forgotten subject.
    fn key_or_create<'a>(&'a self, subject: &'a str)
    -> BoxFuture<'a, Result<SubjectKey, KeyError>>;

    /// Deletes the subject's key and records the erasure, both at once. `true` when a
    /// key was deleted (`false`: the subject had none, or was forgotten already; the
    /// erasure is recorded either way).
    fn forget<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<bool, KeyError>>;

    /// Whether the subject was forgotten.
    fn is_forgotten<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<bool, KeyError>>;
}

/// A cipher under a fresh random key that is never stored: what the personal values of
/// a forgotten subject are sealed with when `Store::encrypt_personal` finds them plain
/// (no key may be made for that subject, and the values must not stay readable). Its key
/// is wiped when the cipher is dropped.
pub(crate) fn throwaway_cipher() -> aes_gcm::Aes256Gcm {
    use aes_gcm::KeyInit;
    let key = SubjectKey::generate();
    aes_gcm::Aes256Gcm::new(key.expose().into())
}

/// The refusal of an empty subject, shared by the built-in key stores.
pub(crate) fn check_subject(subject: &str) -> Result<(), KeyError> {
    if subject.is_empty() {
        return Err(KeyError::Invalid {
            subject: String::new(),
            message: "the subject is empty".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_never_shows_its_bytes() {
        let key = SubjectKey::from_bytes([0xAB; 32]);
        assert_eq!(format!("{key:?}"), "SubjectKey(..)");
        let error = SubjectKey::from_slice("alice", &[0xAB; 7]).unwrap_err();
        let text = format!("{error} {error:?}");
        assert!(text.contains("alice") && text.contains("7 bytes"), "{text}");
        assert!(!text.contains("171") && !text.to_lowercase().contains("ab, "));
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(SubjectKey::generate(), SubjectKey::generate());
    }
}
