//! What a generated namespace's `Wiring` struct starts with one call: its handlers' and
//! aggregates' subscriptions on the bus, then its projections and process managers over
//! the store. The struct has one field per binding the schema declares, so leaving one
//! out does not compile; this module is the runtime half it calls.

use std::fmt;

use crate::bus::{Bus, BusError, Subscription};
use crate::process::{ProcessError, ProcessManager, ProcessManagers, RunningProcessManagers};
use crate::projection::{Projection, ProjectionError, Projections, RunningProjections};
use crate::store::Store;

/// Why starting a namespace's bindings failed; what had started is stopped again.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A subscription was refused (a second handler for a command, a duplicate name).
    #[error("cannot subscribe the namespace's handlers: {0}")]
    Subscribe(#[source] BusError),
    /// A projection could not start.
    #[error("cannot start the namespace's projections: {0}")]
    Projections(#[source] ProjectionError),
    /// A process manager could not start.
    #[error("cannot start the namespace's process managers: {0}")]
    ProcessManagers(#[source] ProcessError),
}

impl fmt::Debug for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::error::write_human(self, f)
    }
}

/// A namespace's projections and process managers, running. Its handlers and
/// aggregates live on the bus (they stop with it).
#[derive(Debug)]
pub struct Started {
    projections: Option<RunningProjections>,
    process_managers: Option<RunningProcessManagers>,
}

impl Started {
    /// The running projections, when the namespace has any.
    pub fn projections(&self) -> Option<&RunningProjections> {
        self.projections.as_ref()
    }

    /// The running process managers, when the namespace has any.
    pub fn process_managers(&self) -> Option<&RunningProcessManagers> {
        self.process_managers.as_ref()
    }

    /// Stops the process managers, then the projections (each saves its checkpoint).
    pub async fn stop(mut self) -> Result<(), StartError> {
        if let Some(running) = self.process_managers.take() {
            running.stop().await.map_err(StartError::ProcessManagers)?;
        }
        if let Some(running) = self.projections.take() {
            running.stop().await.map_err(StartError::Projections)?;
        }
        Ok(())
    }
}

/// Subscribes `subscriptions` to `bus`, then starts `projections` and `process_managers`
/// over `store` (a kind with none is not started). Handlers come first, so a process
/// manager's first dispatch finds them.
#[doc(hidden)]
pub async fn start(
    bus: &Bus,
    store: &Store,
    subscriptions: Vec<Subscription>,
    projections: Vec<Projection>,
    process_managers: Vec<ProcessManager>,
) -> Result<Started, StartError> {
    bus.subscribe_all(subscriptions)
        .await
        .map_err(StartError::Subscribe)?;
    let projections = if projections.is_empty() {
        None
    } else {
        let all = projections
            .into_iter()
            .fold(Projections::new(store.clone()), Projections::add);
        Some(all.start().await.map_err(StartError::Projections)?)
    };
    let process_managers = if process_managers.is_empty() {
        None
    } else {
        let all = process_managers.into_iter().fold(
            ProcessManagers::new(store.clone(), bus.clone()),
            ProcessManagers::add,
        );
        match all.start().await {
            Ok(running) => Some(running),
            Err(e) => {
                if let Some(running) = projections {
                    let _ = running.stop().await;
                }
                return Err(StartError::ProcessManagers(e));
            }
        }
    };
    Ok(Started {
        projections,
        process_managers,
    })
}
