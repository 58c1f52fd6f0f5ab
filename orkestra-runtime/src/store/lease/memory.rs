//! Leases of the memory store: one process, the process's clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;

use super::{Lease, LeaseBackend, LeaseRecord, expiry};
use crate::store::StoreError;

#[derive(Debug, Default)]
struct Row {
    owner: Option<String>,
    token: u64,
    expires_at: Option<DateTime<Utc>>,
    checkpoint: Option<u64>,
}

impl Row {
    fn live_owner(&self, now: DateTime<Utc>) -> Option<&str> {
        match (&self.owner, self.expires_at) {
            (Some(owner), Some(at)) if at > now => Some(owner),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    workers: HashMap<String, u32>,
    rows: BTreeMap<(String, u32), Row>,
    members: HashMap<String, HashMap<String, DateTime<Utc>>>,
}

#[derive(Debug, Default)]
pub(crate) struct MemoryLeases {
    state: Mutex<State>,
}

/// Takes or extends `row` for `owner`: the token grows unless `owner` holds it live.
fn take(row: &mut Row, owner: &str, now: DateTime<Utc>, ttl: Duration) -> Option<u64> {
    match row.live_owner(now) {
        Some(holder) if holder != owner => None,
        Some(_) => {
            row.expires_at = Some(expiry(now, ttl));
            Some(row.token)
        }
        None => {
            row.token += 1;
            row.owner = Some(owner.to_owned());
            row.expires_at = Some(expiry(now, ttl));
            Some(row.token)
        }
    }
}

impl MemoryLeases {
    fn with<T>(&self, f: impl FnOnce(&mut State, DateTime<Utc>) -> T) -> T {
        f(&mut crate::sync::lock(&self.state), Utc::now())
    }
}

fn held<'a>(state: &'a mut State, lease: &Lease, now: DateTime<Utc>) -> Option<&'a mut Row> {
    state
        .rows
        .get_mut(&(lease.worker.clone(), lease.partition))
        .filter(|r| r.token == lease.token && r.owner.as_deref() == Some(&lease.owner))
        .filter(|r| r.expires_at.is_some_and(|at| at > now))
}

impl LeaseBackend for MemoryLeases {
    fn register<'a>(
        &'a self,
        worker: &'a str,
        partitions: u32,
        initial: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let result = self.with(|state, _| {
            let stored = *state.workers.entry(worker.to_owned()).or_insert(partitions);
            if stored != partitions {
                return Err(StoreError::PartitionsChanged {
                    worker: worker.to_owned(),
                    stored,
                    configured: partitions,
                });
            }
            for p in 0..partitions {
                state
                    .rows
                    .entry((worker.to_owned(), p))
                    .or_insert_with(|| Row {
                        checkpoint: initial,
                        ..Row::default()
                    });
            }
            Ok(())
        });
        Box::pin(async move { result })
    }

    fn reset<'a>(
        &'a self,
        worker: &'a str,
        partitions: u32,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.with(|state, _| {
            let next = state
                .rows
                .range((worker.to_owned(), 0)..=(worker.to_owned(), u32::MAX))
                .map(|(_, r)| r.token)
                .max()
                .unwrap_or(0)
                + 1;
            state.rows.retain(|(w, _), _| w != worker);
            state.workers.insert(worker.to_owned(), partitions);
            for p in 0..partitions {
                state.rows.insert(
                    (worker.to_owned(), p),
                    Row {
                        token: next,
                        ..Row::default()
                    },
                );
            }
        });
        Box::pin(std::future::ready(Ok(())))
    }

    fn acquire<'a>(
        &'a self,
        worker: &'a str,
        partition: u32,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>, StoreError>> {
        let lease = self.with(|state, now| {
            let row = state
                .rows
                .entry((worker.to_owned(), partition))
                .or_default();
            take(row, owner, now, ttl).map(|token| Lease {
                worker: worker.to_owned(),
                partition,
                owner: owner.to_owned(),
                token,
                expires_at: row.expires_at.unwrap_or(now),
            })
        });
        Box::pin(async move { Ok(lease) })
    }

    fn renew<'a>(
        &'a self,
        lease: &'a Lease,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>, StoreError>> {
        let renewed = self.with(|state, now| {
            let row = held(state, lease, now)?;
            let at = expiry(now, ttl);
            row.expires_at = Some(at);
            Some(Lease {
                expires_at: at,
                ..lease.clone()
            })
        });
        Box::pin(async move { Ok(renewed) })
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<bool, StoreError>> {
        let released = self.with(|state, now| match held(state, lease, now) {
            Some(row) => {
                row.owner = None;
                row.expires_at = None;
                true
            }
            None => false,
        });
        Box::pin(async move { Ok(released) })
    }

    fn save_checkpoint<'a>(
        &'a self,
        lease: &'a Lease,
        position: Option<u64>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let saved = self.with(|state, _| {
            match state
                .rows
                .get_mut(&(lease.worker.clone(), lease.partition))
                .filter(|r| r.token == lease.token && r.owner.as_deref() == Some(&lease.owner))
            {
                Some(row) => {
                    row.checkpoint = position;
                    true
                }
                None => false,
            }
        });
        Box::pin(async move { Ok(saved) })
    }

    fn checkpoint<'a>(
        &'a self,
        worker: &'a str,
        partition: u32,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        let at = self.with(|state, _| {
            state
                .rows
                .get(&(worker.to_owned(), partition))
                .and_then(|r| r.checkpoint)
        });
        Box::pin(async move { Ok(at) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<LeaseRecord>, StoreError>> {
        let records = self.with(|state, now| {
            state
                .rows
                .iter()
                .map(|((worker, partition), row)| {
                    let owner = row.live_owner(now).map(str::to_owned);
                    LeaseRecord {
                        worker: worker.clone(),
                        partition: *partition,
                        partitions: state.workers.get(worker).copied(),
                        expires_at: owner.as_ref().and(row.expires_at),
                        owner,
                        token: row.token,
                        checkpoint: row.checkpoint,
                    }
                })
                .collect()
        });
        Box::pin(async move { Ok(records) })
    }

    fn heartbeat<'a>(
        &'a self,
        worker: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        let live = self.with(|state, now| {
            let members = state.members.entry(worker.to_owned()).or_default();
            members.insert(owner.to_owned(), expiry(now, ttl));
            members.retain(|_, at| *at > now);
            let mut live: Vec<String> = members.keys().cloned().collect();
            live.sort();
            live
        });
        Box::pin(async move { Ok(live) })
    }

    fn members<'a>(&'a self, worker: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        let live = self.with(|state, now| {
            let mut live: Vec<String> = state
                .members
                .get(worker)
                .into_iter()
                .flatten()
                .filter(|(_, at)| **at > now)
                .map(|(owner, _)| owner.clone())
                .collect();
            live.sort();
            live
        });
        Box::pin(async move { Ok(live) })
    }

    fn leave<'a>(
        &'a self,
        worker: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.with(|state, _| {
            if let Some(members) = state.members.get_mut(worker) {
                members.remove(owner);
            }
        });
        Box::pin(async { Ok(()) })
    }
}
