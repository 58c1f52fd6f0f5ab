//! [`MemoryKeyStore`]: keys in a map, for the memory store and tests.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use futures_util::future::BoxFuture;

use super::{KeyError, KeyStore, SubjectKey, check_subject};

/// Keys in memory, gone with the process: the memory store's, and a stand-in for tests.
/// One lock holds keys and erasures, so creating and forgetting are atomic.
#[derive(Default)]
pub struct MemoryKeyStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, SubjectKey>,
    forgotten: HashSet<String>,
}

impl std::fmt::Debug for MemoryKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = crate::sync::lock(&self.state);
        f.debug_struct("MemoryKeyStore")
            .field("keys", &state.keys.len())
            .field("forgotten", &state.forgotten.len())
            .finish()
    }
}

impl MemoryKeyStore {
    /// An empty key store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl KeyStore for MemoryKeyStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn key<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<Option<SubjectKey>, KeyError>> {
        let found = crate::sync::lock(&self.state).keys.get(subject).cloned();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn key_or_create<'a>(
        &'a self,
        subject: &'a str,
    ) -> BoxFuture<'a, Result<SubjectKey, KeyError>> {
        let result = check_subject(subject).and_then(|()| {
            let mut state = crate::sync::lock(&self.state);
            if state.forgotten.contains(subject) {
                return Err(KeyError::Forgotten {
                    subject: subject.to_owned(),
                });
            }
            Ok(state
                .keys
                .entry(subject.to_owned())
                .or_insert_with(SubjectKey::generate)
                .clone())
        });
        Box::pin(std::future::ready(result))
    }

    fn forget<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<bool, KeyError>> {
        let result = check_subject(subject).map(|()| {
            let mut state = crate::sync::lock(&self.state);
            state.forgotten.insert(subject.to_owned());
            // Dropping the key wipes its bytes.
            state.keys.remove(subject).is_some()
        });
        Box::pin(std::future::ready(result))
    }

    fn is_forgotten<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<bool, KeyError>> {
        let forgotten = crate::sync::lock(&self.state).forgotten.contains(subject);
        Box::pin(std::future::ready(Ok(forgotten)))
    }
}
