//! [`Keys`]: a key store behind a bounded cache of ready ciphers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aes_gcm::{Aes256Gcm, KeyInit};

use super::{KeyError, KeyStore, SubjectKey};

/// How many subjects' ciphers a store keeps ready by default.
pub const DEFAULT_KEY_CACHE: usize = 10_000;

/// How long a cached key (or a subject's absence of one) is trusted before the key store
/// is asked again: the bound on how long another process that forgot a subject can go
/// unnoticed by this one.
pub const KEY_CACHE_MAX_AGE: Duration = Duration::from_secs(60);

/// A cached answer: the subject's cipher (its AES key schedule, wiped on drop), or that
/// it has no key; and when the key store said so.
#[derive(Clone)]
struct Entry {
    cipher: Option<Arc<Aes256Gcm>>,
    at: Instant,
}

impl Entry {
    fn fresh(&self) -> bool {
        self.at.elapsed() < KEY_CACHE_MAX_AGE
    }
}

/// A store's key store with its cache. Concurrent first uses of one subject in this
/// process wait for one load (quick_cache's placeholder guard); the key store makes a
/// key once across processes.
pub(crate) struct Keys {
    store: Arc<dyn KeyStore>,
    cache: quick_cache::sync::Cache<String, Entry>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("store", &self.store)
            .field("cached", &self.cache.len())
            .finish()
    }
}

fn cipher_of(key: &SubjectKey) -> Arc<Aes256Gcm> {
    Arc::new(Aes256Gcm::new(key.expose().into()))
}

impl Keys {
    /// `store` behind a cache of up to `capacity` subjects.
    pub(crate) fn new(store: Arc<dyn KeyStore>, capacity: usize) -> Self {
        Self {
            store,
            cache: quick_cache::sync::Cache::new(capacity.max(1)),
        }
    }

    /// The key store, shared.
    pub(crate) fn store_arc(&self) -> Arc<dyn KeyStore> {
        self.store.clone()
    }

    /// The key store.
    pub(crate) fn store(&self) -> &dyn KeyStore {
        &*self.store
    }

    /// The cached answer for reading, without waiting: `Some(cipher or None)` when the
    /// cache holds a fresh one, `None` when only [`for_reading`](Self::for_reading) can
    /// tell.
    pub(crate) fn cached(&self, subject: &str) -> Option<Option<Arc<Aes256Gcm>>> {
        self.cache
            .get(subject)
            .filter(Entry::fresh)
            .map(|entry| entry.cipher)
    }

    /// The subject's cipher for reading; `None` when it has no key (forgotten).
    pub(crate) async fn for_reading(
        &self,
        subject: &str,
    ) -> Result<Option<Arc<Aes256Gcm>>, KeyError> {
        loop {
            match self.cache.get_value_or_guard_async(subject).await {
                Ok(entry) if entry.fresh() => return Ok(entry.cipher),
                Ok(_) => {
                    self.cache.remove(subject);
                }
                Err(guard) => {
                    let key = self.store.key(subject).await?;
                    let entry = Entry {
                        cipher: key.as_ref().map(cipher_of),
                        at: Instant::now(),
                    };
                    let _ = guard.insert(entry.clone());
                    return Ok(entry.cipher);
                }
            }
        }
    }

    /// The subject's cipher for writing, its key made now if it has none;
    /// [`KeyError::Forgotten`] for a forgotten subject.
    pub(crate) async fn for_writing(&self, subject: &str) -> Result<Arc<Aes256Gcm>, KeyError> {
        loop {
            match self.cache.get_value_or_guard_async(subject).await {
                Ok(Entry {
                    cipher: Some(cipher),
                    at,
                }) if at.elapsed() < KEY_CACHE_MAX_AGE => return Ok(cipher),
                // Stale, or no key when last asked (a reader's answer): ask the store.
                Ok(_) => {
                    self.cache.remove(subject);
                }
                Err(guard) => {
                    let key = self.store.key_or_create(subject).await?;
                    let cipher = cipher_of(&key);
                    let _ = guard.insert(Entry {
                        cipher: Some(cipher.clone()),
                        at: Instant::now(),
                    });
                    return Ok(cipher);
                }
            }
        }
    }

    /// Forgets the subject in the key store and in this cache.
    pub(crate) async fn forget(&self, subject: &str) -> Result<bool, KeyError> {
        let deleted = self.store.forget(subject).await?;
        self.cache.insert(
            subject.to_owned(),
            Entry {
                cipher: None,
                at: Instant::now(),
            },
        );
        Ok(deleted)
    }
}
