//! Layer 5, built on a bus and a store: appending events and then publishing them, and a
//! bus given the store it works with (its inbox, when `bus.inbox = "store"`; its keys,
//! with `Bus::with_keys` or when `bus.keys = "store"`).

use crate::bus::Bus;
use crate::config::{InboxMode, KeysMode, PublishMode};
use crate::message::EventEnvelope;
use crate::store::{AppendResult, EventData, ExpectedVersion, Store, StoreError};

impl Bus {
    /// The store this bus works with. With `bus.inbox = "store"` (env
    /// `ORKESTRA_BUS_INBOX`), `once: true` handlers record what they handled in its inbox
    /// ([`with_inbox`](Self::with_inbox)); with the default `memory`, the store is not
    /// used for it. So the inbox is switched by configuration alone:
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use orkestra_runtime::{Bus, Config, Store};
    /// let config = Config::load()?;
    /// let store = Store::from_config(&config).await?;
    /// let bus = Bus::from_config(&config).await?.with_store(&store);
    /// # Ok(()) }
    /// ```
    ///
    /// With `bus.keys = "store"` (env `ORKESTRA_BUS_KEYS`) it also gives the bus the
    /// store's keys ([`with_keys`](Self::with_keys)).
    #[must_use]
    pub fn with_store(self, store: &Store) -> Self {
        let bus = match self.inbox_mode() {
            InboxMode::Store => self.with_inbox(store),
            _ => self,
        };
        match bus.keys_mode() {
            KeysMode::Store => bus.with_keys(store),
            _ => bus,
        }
    }

    /// Seals personal data on the wire with `store`'s keys: the RabbitMQ bus encrypts
    /// the personal fields of every event it publishes whose type the store's personal
    /// data describes ([`Store::with_personal_data`]; give the store its description
    /// first), in the store's own form, so the work, wait and dead-letter queues hold
    /// ciphertext; its consumers decrypt them before decoding. A forgotten subject's
    /// fields reach handlers as their replacements, listed by
    /// [`Event::redacted`](crate::Event::redacted); a value that does not decrypt is
    /// dead-lettered with an error naming the event type and field.
    ///
    /// The keys are the store's, with its cache: a subject `store.forget` forgets is
    /// forgotten by this bus at once (another process's forget within
    /// [`KEY_CACHE_MAX_AGE`](crate::keys::KEY_CACHE_MAX_AGE)). Clones of the bus share
    /// them. The in-process bus passes events in memory and never stores them, so it
    /// keeps them plain and ignores the keys.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use orkestra_runtime::keys::PersonalData;
    /// use orkestra_runtime::{Bus, Config, Store};
    /// # let personal = PersonalData::new();
    /// let config = Config::load()?;
    /// let store = Store::from_config(&config).await?.with_personal_data(&personal)?;
    /// let bus = Bus::from_config(&config).await?.with_keys(&store);
    /// # Ok(()) }
    /// ```
    ///
    /// A store that keeps no keys (EventStoreDB without `Store::with_keys`) gives none:
    /// a warning is logged, and handlers of personal events are refused at subscribe.
    #[must_use]
    pub fn with_keys(self, store: &Store) -> Self {
        match store.sealer() {
            Some(sealer) => self.set_sealer(Some(std::sync::Arc::new(sealer))),
            None => tracing::warn!(
                adapter = store.adapter(),
                "this store keeps no keys; the bus cannot seal personal data"
            ),
        }
        self
    }
}

impl Store {
    /// Refuses, before anything is appended, to hand a RabbitMQ bus without keys an
    /// event this store encrypts: the broker's queues would hold it in plain text.
    fn check_bus_keys(&self, bus: &Bus, events: &[EventData]) -> Result<(), StoreError> {
        if self.publish_mode() == PublishMode::Relay || !bus.lacks_keys_for_the_wire() {
            return Ok(());
        }
        let Some(personal) = self.personal_data() else {
            return Ok(());
        };
        match events
            .iter()
            .find(|e| personal.event(&e.event_type).is_some())
        {
            Some(event) => Err(StoreError::Invalid(format!(
                "event {} ({}) has personal fields, and the RabbitMQ bus it would be published \
                 on has no keys to encrypt them: give it the store's with `bus.with_keys(&store)`",
                event.id, event.event_type
            ))),
            None => Ok(()),
        }
    }

    /// Appends `events` to `stream`, then publishes them on `bus`, in that order: an event
    /// is published only once stored. If publishing fails the events stay stored and the
    /// error is [`StoreError::Publish`]; publish them again (delivery is at-least-once, so
    /// handlers must tolerate a repeat). A command handler calls this with `ctx.bus()`.
    ///
    /// With `store.publish = "relay"` ([`PublishMode::Relay`]) it only appends: the
    /// relay publishes every stored event, even when this process dies right after the
    /// append.
    ///
    /// An event this store encrypts ([`Store::with_personal_data`]) with a RabbitMQ bus
    /// that has no keys ([`Bus::with_keys`]) is refused before anything is appended
    /// ([`StoreError::Invalid`]): the broker would hold it in plain text.
    pub async fn append_and_publish(
        &self,
        bus: &Bus,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EventEnvelope>,
    ) -> Result<AppendResult, StoreError> {
        let data = events
            .iter()
            .map(|e| EventData::from_message(e.message()))
            .collect::<Result<Vec<_>, _>>()?;
        self.check_bus_keys(bus, &data)?;
        let result = self.append(stream, expected, data).await?;
        if self.publish_mode() == PublishMode::Relay {
            return Ok(result);
        }
        for envelope in events {
            bus.publish(envelope).await?;
        }
        Ok(result)
    }
}
