//! What a generated namespace's `Wiring` struct starts with one call: its handlers' and
//! aggregates' subscriptions on the bus, then its projections and process managers over
//! the store. The struct has one field per binding the schema declares, so leaving one
//! out does not compile; this module is the runtime half it calls.

use std::fmt;

use crate::bus::{Bus, BusError, Subscription};
use crate::keys::PersonalData;
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
    /// The schema declares personal data the store was not told of: its events would be
    /// stored in plain text.
    #[error("{0}")]
    PersonalData(String),
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

/// Checks that `store` encrypts every event and state of `personal` as described (what a
/// namespace's generated `Wiring::start` calls before subscribing anything): an error
/// naming the first one it does not, and the call that fixes it.
pub fn require_personal_data(store: &Store, personal: &PersonalData) -> Result<(), StartError> {
    let known = store.personal_data();
    for event in personal.events() {
        if !store.encrypts(event) {
            return Err(StartError::PersonalData(format!(
                "event {:?} has personal fields, but the {} store {}: give it the \
                 namespace's description at construction \
                 (`store.with_personal_data(&<namespace>::personal::data())`)",
                event.event_type(),
                store.adapter(),
                if known.and_then(|k| k.event(event.event_type())).is_some() {
                    "describes them differently"
                } else {
                    "does not encrypt them"
                },
            )));
        }
    }
    for state in personal.states() {
        if known.and_then(|k| k.state(state.shape())) != Some(state) {
            return Err(StartError::PersonalData(format!(
                "state {:?} has personal fields, but the {} store does not encrypt its \
                 snapshots as described: give it the namespace's description at construction \
                 (`store.with_personal_data(&<namespace>::personal::data())`)",
                state.shape(),
                store.adapter(),
            )));
        }
    }
    Ok(())
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
