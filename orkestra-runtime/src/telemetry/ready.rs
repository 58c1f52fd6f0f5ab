//! What `/readyz` asks: each registered [`ReadyCheck`] (the bus is connected, the
//! store answers, no worker this copy runs failed).

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::bus::Bus;
use crate::metrics::{Observations, Observed};
use crate::process::RunningProcessManagers;
use crate::projection::RunningProjections;
use crate::relay::RunningRelay;
use crate::store::Store;
use crate::wiring::Started;

/// How long one check may take before it counts as failed.
pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One readiness check, registered with
/// [`TelemetryGuard::ready_when`](super::TelemetryGuard::ready_when). Made from a
/// [`Bus`] (connected to its broker, not shutting down), a [`Store`] (reads its head
/// within 2 s), running workers ([`RunningProjections`], [`RunningRelay`],
/// [`RunningProcessManagers`], a namespace's [`Started`]: none of the partitions this
/// copy works is `Failed`), or any async function ([`ReadyCheck::new`]).
///
/// Workers are held weakly: once stopped and dropped they are no longer checked. A bus
/// or store is held (clones are handles).
#[derive(Clone)]
pub struct ReadyCheck {
    name: String,
    probe: Probe,
}

type CheckFn = dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync;

#[derive(Clone)]
enum Probe {
    Bus(Bus),
    Store(Store),
    Workers(Vec<Weak<dyn Observed>>),
    Custom(Arc<CheckFn>),
}

impl fmt::Debug for ReadyCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadyCheck")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ReadyCheck {
    /// A check named `name`: ready while `check` returns `Ok` within 2 s; the `Err`
    /// text is what `/readyz` reports.
    pub fn new<F, Fut>(name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self {
            name: name.into(),
            probe: Probe::Custom(Arc::new(move || Box::pin(check()))),
        }
    }

    /// Its name in `/readyz`'s answer.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renames it (two stores, say: `store.orders`, `store.ledger`).
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Runs the check once.
    pub(crate) async fn run(&self) -> Result<(), String> {
        match &self.probe {
            Probe::Bus(bus) => bus.readiness(),
            Probe::Store(store) => store.readiness(CHECK_TIMEOUT).await,
            Probe::Workers(workers) => {
                let mut seen = Observations::default();
                for worker in workers.iter().filter_map(Weak::upgrade) {
                    worker.observe(&mut seen);
                }
                if seen.failed.is_empty() {
                    Ok(())
                } else {
                    Err(seen.failed.join("; "))
                }
            }
            Probe::Custom(check) => check().await,
        }
    }

    fn workers(name: &str, workers: Vec<Arc<dyn Observed>>) -> Self {
        Self {
            name: name.to_owned(),
            probe: Probe::Workers(workers.iter().map(Arc::downgrade).collect()),
        }
    }
}

impl From<Bus> for ReadyCheck {
    fn from(bus: Bus) -> Self {
        Self {
            name: "bus".into(),
            probe: Probe::Bus(bus),
        }
    }
}

impl From<&Bus> for ReadyCheck {
    fn from(bus: &Bus) -> Self {
        bus.clone().into()
    }
}

impl From<Store> for ReadyCheck {
    fn from(store: Store) -> Self {
        Self {
            name: "store".into(),
            probe: Probe::Store(store),
        }
    }
}

impl From<&Store> for ReadyCheck {
    fn from(store: &Store) -> Self {
        store.clone().into()
    }
}

impl From<&RunningProjections> for ReadyCheck {
    fn from(running: &RunningProjections) -> Self {
        Self::workers("projections", vec![running.observed()])
    }
}

impl From<&RunningRelay> for ReadyCheck {
    fn from(running: &RunningRelay) -> Self {
        Self::workers("relay", vec![running.observed()])
    }
}

impl From<&RunningProcessManagers> for ReadyCheck {
    fn from(running: &RunningProcessManagers) -> Self {
        Self::workers("process managers", running.observed())
    }
}

impl From<&Started> for ReadyCheck {
    fn from(started: &Started) -> Self {
        let mut workers = Vec::new();
        if let Some(p) = started.projections() {
            workers.push(p.observed());
        }
        if let Some(pm) = started.process_managers() {
            workers.extend(pm.observed());
        }
        Self::workers("workers", workers)
    }
}
