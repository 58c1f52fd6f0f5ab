//! The connection to the broker, kept up by one task.
//!
//! lapin's own recovery is not used: after some outages it left publishes waiting for a
//! confirm that never came and consumers detached. Instead one supervisor task watches
//! the connection (its events, and its status every [`WATCH_EVERY`]); when it is lost,
//! the state becomes [`State::Down`] and the task reconnects, trying every URL in order
//! with a growing pause (at most [`BACKOFF_MAX`]) for as long as it takes, saying so in
//! the logs every [`LOG_EVERY`]. Each new connection is a new [`Live`] with a higher
//! generation: publishers open a channel on it, and consumers, who watch the state,
//! leave the old one and consume again on the new one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::types::LongString;
use lapin::{Channel, Connection, ConnectionProperties, Event};
use tokio::sync::{Notify, watch};

use super::broker_error;
use super::reply::Replies;
use super::topology::Topology;
use crate::DriverError;
use crate::bus::BusError;
use crate::config::SecretUrl;

/// How long one connection attempt may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the supervisor looks at the connection's status.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// The longest pause between two rounds of reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often a retired publishing channel looks whether it can close.
const RETIRE_POLL: Duration = Duration::from_millis(100);
/// How often a reconnecting bus, or a consumer waiting for it, logs that it still waits.
pub(super) const LOG_EVERY: Duration = Duration::from_secs(5);

/// What the bus's connection is now.
#[derive(Clone, Debug)]
pub(super) enum State {
    /// Connected.
    Up(Arc<Live>),
    /// Lost and being re-established, since then, with the last error.
    Down { since: Instant, error: String },
    /// Closed for good (shutdown or drop).
    Closed,
}

/// One connection, and the confirm-mode channel publishes share on it.
#[derive(Debug)]
pub(super) struct Live {
    pub(super) generation: u64,
    pub(super) connection: Connection,
    /// Which URL of the list it is connected to.
    pub(super) url: usize,
    publisher: std::sync::RwLock<Option<Publishing>>,
    opening: tokio::sync::Mutex<()>,
    replies: Arc<Replies>,
}

/// The publishing channel, and how many publishes use it right now.
#[derive(Clone, Debug)]
struct Publishing {
    channel: Channel,
    in_flight: Arc<AtomicUsize>,
}

/// The publishing channel, held by one publish: while any is held, a retired channel
/// stays open (its confirm is still to come).
pub(super) struct InUse {
    pub(super) channel: Channel,
    in_flight: Arc<AtomicUsize>,
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Publishing {
    fn use_it(&self) -> InUse {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InUse {
            channel: self.channel.clone(),
            in_flight: self.in_flight.clone(),
        }
    }
}

impl Live {
    /// The publishing channel (in confirm mode), opened again if it was closed (a
    /// channel-level error closes a channel, not the connection). The open channel is
    /// read without waiting; only opening one is serialized.
    pub(super) async fn publish_channel(&self) -> Result<InUse, BusError> {
        if let Some(channel) = self.open_channel() {
            return Ok(channel);
        }
        let _opening = self.opening.lock().await;
        if let Some(channel) = self.open_channel() {
            return Ok(channel);
        }
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(broker_error)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker_error)?;
        self.replies.listen(&channel).await?;
        let publishing = Publishing {
            channel,
            in_flight: Arc::default(),
        };
        let in_use = publishing.use_it();
        *crate::sync::write(&self.publisher) = Some(publishing);
        Ok(in_use)
    }

    /// Stops publishing on `channel` (it refused a message): the next publish opens a
    /// new one. A channel whose queue clients went bad after a cluster node was lost
    /// keeps nacking; a new channel does not. The old channel, and the reply consumer
    /// on it, is closed once the publishes still waiting on it have finished and no
    /// call published through it still waits for its reply (replies come back on the
    /// channel that sent the request), so a long incident does not leak channels.
    pub(super) fn forget_channel(&self, channel: &Channel) {
        let retired = {
            let mut slot = crate::sync::write(&self.publisher);
            if slot
                .as_ref()
                .is_some_and(|p| p.channel.id() == channel.id())
            {
                slot.take()
            } else {
                None
            }
        };
        // Calls registered up to now may have published on the retired channel; later
        // ones cannot (the slot is empty or holds a new channel).
        let Some(retired) = retired else { return };
        let calls_before = self.replies.last_call();
        let replies = self.replies.clone();
        tokio::spawn(async move {
            while retired.channel.status().connected()
                && (retired.in_flight.load(Ordering::SeqCst) > 0
                    || replies.waits_from(calls_before))
            {
                tokio::time::sleep(RETIRE_POLL).await;
            }
            if retired.channel.status().connected() {
                let closed = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    retired.channel.close(200, "retired".into()),
                )
                .await;
                if !matches!(closed, Ok(Ok(()))) {
                    tracing::debug!(
                        orkestra = "rabbitmq",
                        channel = retired.channel.id(),
                        "retired publishing channel did not close cleanly"
                    );
                }
            }
        });
    }

    fn open_channel(&self) -> Option<InUse> {
        // Taken under the read lock, so a channel being retired is never taken after
        // its retirement started counting the publishes on it.
        crate::sync::read(&self.publisher)
            .as_ref()
            .filter(|p| p.channel.status().connected())
            .map(Publishing::use_it)
    }

    pub(super) fn connected(&self) -> bool {
        self.connection.status().connected()
    }
}

/// The bus's link to the broker: the URLs, the current [`State`], and a way to ask the
/// supervisor to look at the connection now.
#[derive(Debug)]
pub(super) struct Link {
    /// Calls waiting for a direct reply, across connections.
    pub(super) replies: Arc<Replies>,
    urls: Vec<SecretUrl>,
    name: String,
    state: watch::Sender<State>,
    suspect: Notify,
}

impl Link {
    /// Connects to the first URL that answers (in order) and declares the exchanges; an
    /// error names every URL tried, passwords hidden. Start [`Link::maintain`] next.
    pub(super) async fn connect(
        urls: Vec<SecretUrl>,
        name: String,
        topology: &Topology,
    ) -> Result<Arc<Self>, BusError> {
        let (connection, url) = open_any(&urls, &name).await.map_err(|e| e.error())?;
        let replies = Arc::new(Replies::default());
        let live = Live {
            generation: 1,
            connection,
            url,
            publisher: std::sync::RwLock::default(),
            opening: tokio::sync::Mutex::default(),
            replies: replies.clone(),
        };
        let channel = live.publish_channel().await?;
        topology.declare_exchanges(&channel.channel).await?;
        drop(channel);
        let (state, _) = watch::channel(State::Up(Arc::new(live)));
        Ok(Arc::new(Self {
            replies,
            urls,
            name,
            state,
            suspect: Notify::new(),
        }))
    }

    /// The current state, and how to wait for it to change.
    pub(super) fn watch(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }

    /// `Ok` while connected; why not otherwise (secrets hidden, as every link error).
    pub(super) fn readiness(&self) -> Result<(), String> {
        match &*self.state.borrow() {
            State::Up(live) if live.connected() => Ok(()),
            State::Up(_) => Err("the broker connection is closed; reconnecting".into()),
            State::Down { since, error } => Err(format!(
                "the broker connection was lost {:.0} s ago and is not back yet: {error}",
                since.elapsed().as_secs_f64()
            )),
            State::Closed => Err("the bus is closed".into()),
        }
    }

    /// The connection, if the link is up now.
    pub(super) fn current(&self) -> Option<Arc<Live>> {
        match &*self.state.borrow() {
            State::Up(live) => Some(live.clone()),
            State::Down { .. } | State::Closed => None,
        }
    }

    /// The connection, waiting for one while the link is down; [`BusError::Closed`] once
    /// the bus is closed. Callers bound the wait.
    pub(super) async fn live(&self) -> Result<Arc<Live>, BusError> {
        let mut rx = self.watch();
        loop {
            match &*rx.borrow_and_update() {
                State::Up(live) => return Ok(live.clone()),
                State::Closed => return Err(BusError::Closed),
                State::Down { .. } => {}
            }
            if rx.changed().await.is_err() {
                return Err(BusError::Closed);
            }
        }
    }

    /// Why there is no connection now (for an error after waiting in vain).
    pub(super) fn unavailable(&self, waited: Duration) -> BusError {
        let message = match &*self.state.borrow() {
            State::Down { since, error } => format!(
                "no connection for {:.1} s ({error}); tried {}",
                since.elapsed().as_secs_f64(),
                self.url_list()
            ),
            State::Up(_) | State::Closed => {
                format!("no connection within {:.1} s", waited.as_secs_f64())
            }
        };
        BusError::Unavailable {
            setting: "bus.urls",
            message,
            source: None,
        }
    }

    fn url_list(&self) -> String {
        let urls: Vec<String> = self.urls.iter().map(SecretUrl::redacted).collect();
        urls.join(", ")
    }

    /// Something failed on the connection: the supervisor looks at it now.
    pub(super) fn suspect(&self) {
        self.suspect.notify_one();
    }

    /// Closes the link for good: the state becomes [`State::Closed`] (waiters get
    /// [`BusError::Closed`]) and the connection is closed.
    pub(super) async fn close(&self) {
        let previous = self.state.send_replace(State::Closed);
        if let State::Up(live) = previous {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                live.connection.close(200, "bus closed".into()),
            )
            .await;
        }
    }

    /// The supervisor: waits for the connection to fail, then reconnects, forever (until
    /// the link is closed, or the task aborted when the bus is dropped).
    pub(super) async fn maintain(self: Arc<Self>, topology: Arc<Topology>) {
        let mut live = match &*self.state.borrow() {
            State::Up(live) => live.clone(),
            State::Closed | State::Down { .. } => return,
        };
        loop {
            let error = self.until_lost(&live).await;
            let since = Instant::now();
            tracing::warn!(
                orkestra = "rabbitmq",
                connection = %self.name,
                url = %self.urls[live.url],
                error,
                "RabbitMQ connection lost; reconnecting"
            );
            let generation = live.generation;
            let replaced = self.state.send_if_modified(|state| match state {
                State::Closed => false,
                _ => {
                    *state = State::Down {
                        since,
                        error: error.clone(),
                    };
                    true
                }
            });
            if !replaced {
                return;
            }
            let Some(next) = self.reconnect(generation + 1, since, &topology).await else {
                return;
            };
            live = next;
            crate::metrics::reconnected();
            tracing::info!(
                orkestra = "rabbitmq",
                connection = %self.name,
                url = %self.urls[live.url],
                after_ms = since.elapsed().as_millis() as u64,
                "RabbitMQ connection re-established"
            );
            let up = self.state.send_if_modified(|state| match state {
                State::Closed => false,
                _ => {
                    *state = State::Up(live.clone());
                    true
                }
            });
            if !up {
                let _ = live.connection.close(200, "bus closed".into()).await;
                return;
            }
        }
    }

    /// Waits until `live` is no longer connected; returns why.
    async fn until_lost(&self, live: &Live) -> String {
        let mut events = live.connection.events_listener();
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Event::Error(e)) => return DriverError::new(e).to_string(),
                    Some(_) => {}
                    None => return "the connection ended".into(),
                },
                () = tokio::time::sleep(WATCH_EVERY) => {}
                () = self.suspect.notified() => {}
            }
            if !live.connected() {
                return "the connection is closed".into();
            }
        }
    }

    /// Tries every URL in order, round after round, until one connects and its
    /// exchanges are declared; `None` if the link was closed meanwhile.
    async fn reconnect(
        &self,
        generation: u64,
        since: Instant,
        topology: &Topology,
    ) -> Option<Arc<Live>> {
        let mut pause = Duration::from_millis(100);
        let mut logged = Instant::now();
        loop {
            if matches!(&*self.state.borrow(), State::Closed) {
                return None;
            }
            let error = match open_any(&self.urls, &self.name).await {
                Ok((connection, url)) => {
                    let live = Live {
                        generation,
                        connection,
                        url,
                        publisher: std::sync::RwLock::default(),
                        opening: tokio::sync::Mutex::default(),
                        replies: self.replies.clone(),
                    };
                    let declared = tokio::time::timeout(CONNECT_TIMEOUT, async {
                        let channel = live.publish_channel().await?;
                        topology.declare_exchanges(&channel.channel).await
                    })
                    .await;
                    match declared {
                        Ok(Ok(())) => return Some(Arc::new(live)),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "declaring the exchanges timed out".to_owned(),
                    }
                }
                Err(e) => e.summary(),
            };
            self.state.send_if_modified(|state| match state {
                State::Down { error: last, .. } => {
                    last.clone_from(&error);
                    false
                }
                _ => false,
            });
            if logged.elapsed() >= LOG_EVERY {
                logged = Instant::now();
                tracing::warn!(
                    orkestra = "rabbitmq",
                    connection = %self.name,
                    down_for_s = since.elapsed().as_secs(),
                    error,
                    "RabbitMQ still unreachable; retrying"
                );
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(BACKOFF_MAX);
        }
    }
}

/// Every URL tried, with why each failed.
pub(super) struct Attempts(Vec<(String, String)>);

impl Attempts {
    fn summary(&self) -> String {
        let parts: Vec<String> = self.0.iter().map(|(u, e)| format!("{u}: {e}")).collect();
        parts.join("; ")
    }

    pub(super) fn error(self) -> BusError {
        let setting = if self.0.len() > 1 {
            "bus.urls"
        } else {
            "bus.url"
        };
        BusError::Unavailable {
            setting,
            message: self.summary(),
            source: None,
        }
    }
}

/// Opens a connection to the first URL that answers, in order.
pub(super) async fn open_any(
    urls: &[SecretUrl],
    name: &str,
) -> Result<(Connection, usize), Attempts> {
    let mut failures = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let properties =
            ConnectionProperties::default().with_connection_name(LongString::from(name.to_owned()));
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect(url.expose(), properties),
        )
        .await
        {
            Ok(Ok(connection)) => return Ok((connection, i)),
            Ok(Err(e)) => failures.push((url.redacted(), DriverError::new(e).to_string())),
            Err(_) => failures.push((
                url.redacted(),
                format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            )),
        }
    }
    Err(Attempts(failures))
}
