//! Consuming: one [`Worker`] per subscription (and per `Bus::dead_letters` receiver).
//!
//! A worker consumes its queue on its own channel and hands deliveries to handler tasks,
//! at most `concurrency` at once; deliveries with the same partition key run one at a
//! time, in delivery order ([`Lanes`]). Each task settles its own delivery (ack, reject
//! into the retry path, or dead-letter) after its handler finished, so nothing is
//! acknowledged before it was handled. When the connection is lost the worker waits for
//! the running handlers, then consumes again on the next connection, saying in the
//! logs every few seconds that it still waits; what was not acked is redelivered.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use opentelemetry::trace::TraceContextExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, Span};

use super::headers::{self, TraceExtractor};
use super::link::{CONNECT_TIMEOUT, LOG_EVERY, Live, State};
use super::publisher::Outgoing;
use super::reply::Reply;
use super::topology::Source;
use super::{SYSTEM, Shared, broker_error, spans, wire};
use crate::bus::run::{Outcome, Runner, log_dead_letter, log_retry};
use crate::bus::{Bus, BusError, WeakBus};
use crate::bus::{Input, Subscription};
use crate::handler::DeadLetter;
use crate::message::Message;
use crate::message::new_id;
use crate::metrics::DeadLetterKind;
use crate::trace;

/// How this bus runs handlers: a delivered message's trace context always comes from
/// its producer. Dead-letter handlers are not traced.
fn runner(bus: &Bus) -> Runner<'_> {
    Runner {
        bus,
        system: SYSTEM,
        component: SYSTEM,
        traced: false,
        foreign_origin: true,
        started: None,
        sends: false,
    }
}

/// What a worker feeds.
pub(super) enum Feed {
    /// A message handler's work queue.
    Work(Arc<Subscription>),
    /// A dead-letter handler's queue.
    DeadLetterHandler(Arc<Subscription>),
    /// A `Bus::dead_letters` receiver (its exclusive queue).
    Receiver(mpsc::Sender<DeadLetter>),
}

/// One consumer of one queue, for the life of the bus.
pub(super) struct Worker {
    pub(super) shared: Arc<Shared>,
    pub(super) bus: WeakBus,
    pub(super) feed: Feed,
    pub(super) source: Source,
    /// How many deliveries run at once (1 for dead letters).
    pub(super) concurrency: usize,
    /// What the logs call it: the handler's name, or `dead-letter receiver`.
    pub(super) label: String,
}

/// A worker's consumer on one connection.
pub(super) struct Opened {
    live: Arc<Live>,
    channel: Channel,
    consumer: lapin::Consumer,
    queue: String,
}

/// Why a worker left a consumer.
enum Left {
    /// The connection or channel is gone: consume again on the next connection.
    Reconnect,
    /// The bus is closing or gone, or the receiver was dropped.
    Stop,
}

/// A delivery with its decoded message (or why it has none).
struct Prepared {
    delivery: Delivery,
    decoded: Result<Message, String>,
}

impl Opened {
    pub(super) fn queue(&self) -> &str {
        &self.queue
    }
}

impl Worker {
    /// Opens a channel on the current connection with the prefetch (at least the
    /// concurrency), declares the source and starts consuming, within
    /// [`CONNECT_TIMEOUT`].
    pub(super) async fn open(&self) -> Result<Opened, BusError> {
        let live = tokio::time::timeout(CONNECT_TIMEOUT, self.shared.link.live())
            .await
            .map_err(|_| self.shared.link.unavailable(CONNECT_TIMEOUT))??;
        tokio::time::timeout(CONNECT_TIMEOUT, self.open_on(live))
            .await
            .unwrap_or(Err(BusError::Timeout("consumer to start")))
    }

    async fn open_on(&self, live: Arc<Live>) -> Result<Opened, BusError> {
        let channel = live
            .connection
            .create_channel()
            .await
            .map_err(broker_error)?;
        let prefetch = u16::try_from(self.concurrency)
            .unwrap_or(u16::MAX)
            .max(self.shared.settings.prefetch);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(broker_error)?;
        let queue = self
            .shared
            .topology
            .declare_source(&channel, &self.source)
            .await?;
        let tag = match &self.feed {
            Feed::Work(s) | Feed::DeadLetterHandler(s) => {
                format!("orkestra-{}-{}", s.handler, new_id())
            }
            Feed::Receiver(_) => String::new(),
        };
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker_error)?;
        Ok(Opened {
            live,
            channel,
            consumer,
            queue,
        })
    }

    /// The worker's task: consumes, and after each lost connection consumes again.
    pub(super) async fn run(self: Arc<Self>, first: Opened) {
        let mut opened = Some(first);
        loop {
            let current = match opened.take() {
                Some(o) => o,
                None => match self.reopen().await {
                    Some(o) => o,
                    None => return,
                },
            };
            match self.consume(current).await {
                Left::Reconnect => {}
                Left::Stop => return,
            }
        }
    }

    fn stopping(&self) -> bool {
        self.shared.lifecycle.is_stopping() || self.bus.upgrade().is_none()
    }

    /// Consumes again once there is a connection, logging every [`LOG_EVERY`] while it
    /// cannot; `None` when the bus is closing.
    async fn reopen(&self) -> Option<Opened> {
        let since = Instant::now();
        let mut logged = Instant::now();
        loop {
            if self.stopping() {
                return None;
            }
            let error = match self.open().await {
                Ok(opened) => {
                    tracing::info!(
                        handler = %self.label,
                        queue = %opened.queue,
                        after_ms = since.elapsed().as_millis() as u64,
                        orkestra = "rabbitmq",
                        "Consumer resumed"
                    );
                    return Some(opened);
                }
                Err(BusError::Closed) => return None,
                Err(e) => e.to_string(),
            };
            if logged.elapsed() >= LOG_EVERY {
                logged = Instant::now();
                tracing::warn!(
                    handler = %self.label,
                    down_for_s = since.elapsed().as_secs(),
                    error,
                    orkestra = "rabbitmq",
                    "Consumer cannot reconnect yet; retrying"
                );
            }
            self.shared.link.suspect();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Feeds deliveries to handler tasks until the connection is lost or the bus closes;
    /// then waits for the running handlers (on shutdown, until its deadline) and closes
    /// the channel, so whatever was not acked goes back to the queue.
    async fn consume(self: &Arc<Self>, opened: Opened) -> Left {
        let Opened {
            live,
            channel,
            mut consumer,
            queue,
        } = opened;
        let queue: Arc<str> = Arc::from(queue);
        let mut state = self.shared.link.watch();
        let mut stop = self.shared.lifecycle.signal();
        if stop.borrow_and_update().is_some() {
            return Left::Stop;
        }
        let mut handles: Vec<tokio::task::AbortHandle> = Vec::new();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut lanes = Lanes::new(self.concurrency);
        let prefetch = u16::try_from(self.concurrency)
            .unwrap_or(u16::MAX)
            .max(self.shared.settings.prefetch);
        let mut acks = Acks {
            batch: usize::from(prefetch / 2).clamp(1, ACK_BATCH),
            ..Acks::default()
        };
        let mut deadline = None;
        let left = loop {
            tokio::select! {
                biased;
                Some(done) = done_rx.recv() => {
                    acks.finished(done.tag, done.settled);
                    if done.settled == Settled::Stop {
                        lanes.running -= 1;
                        break Left::Stop;
                    }
                    if acks.due() {
                        acks.flush(&channel, false).await;
                    }
                    for (key, next) in lanes.finished(&done.key) {
                        self.start(key, next, &queue, &done_tx, &mut handles);
                    }
                }
                () = tokio::time::sleep_until(acks.since + ACK_IDLE), if !acks.waiting.is_empty() => {
                    acks.flush(&channel, false).await;
                }
                changed = stop.changed() => {
                    let at = *stop.borrow();
                    if changed.is_err() || at.is_some() {
                        deadline = at;
                        break Left::Stop;
                    }
                }
                changed = state.changed() => {
                    let same = matches!(&*state.borrow(), State::Up(l) if l.generation == live.generation);
                    if changed.is_err() || matches!(&*state.borrow(), State::Closed) {
                        break Left::Stop;
                    }
                    if !same {
                        break Left::Reconnect;
                    }
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        acks.outstanding.insert(delivery.delivery_tag);
                        let prepared = self.prepare(delivery);
                        let key = self.key_of(&prepared);
                        for (key, next) in lanes.arrive(key, prepared) {
                            self.start(key, next, &queue, &done_tx, &mut handles);
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(handler = %self.label, %error, orkestra = "rabbitmq", "Consumer interrupted; consuming again");
                        break Left::Reconnect;
                    }
                    None => break Left::Reconnect,
                },
            }
        };
        // No new deliveries: cancel the consumer (on shutdown) and let the running
        // handlers finish; those still waiting in a lane are never started.
        if matches!(left, Left::Stop) {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
            )
            .await;
        }
        lanes.drop_waiting();
        let wait_until = deadline.unwrap_or_else(|| Instant::now() + DRAIN_ON_RECONNECT);
        while lanes.running > 0 {
            match tokio::time::timeout_at(wait_until, done_rx.recv()).await {
                Ok(Some(done)) => {
                    acks.finished(done.tag, done.settled);
                    lanes.running -= 1;
                }
                Ok(None) | Err(_) => break,
            }
        }
        // Every finished success is acknowledged before the channel closes (only those
        // are: a cut-off delivery stays unacked).
        acks.flush(&channel, true).await;
        if lanes.running > 0 {
            // Cut off by the deadline: stopped before they settle, so the broker
            // redelivers their deliveries once the channel closes.
            for handle in &handles {
                handle.abort();
            }
            if deadline.is_some() {
                self.shared.lifecycle.record_cut_off();
            }
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(2), channel.close(200, "done".into())).await;
        left
    }

    fn prepare(&self, delivery: Delivery) -> Prepared {
        let decoded = decode(&delivery.data, self.shared.settings.max_message_bytes);
        Prepared { delivery, decoded }
    }

    /// The partition key: one lane for a worker of concurrency 1; otherwise the
    /// binding's `partition_by` field, or the correlation id (also when the field is
    /// missing, with a warning).
    fn key_of(&self, prepared: &Prepared) -> Arc<str> {
        let Feed::Work(subscription) = &self.feed else {
            return Arc::from("");
        };
        if self.concurrency <= 1 {
            return Arc::from("");
        }
        let Ok(message) = &prepared.decoded else {
            return Arc::from(
                prepared
                    .delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map_or("", |id| id.as_str()),
            );
        };
        let correlation = || Arc::from(message.metadata().correlation_id.as_str());
        let Some(field) = subscription.partition_by.as_deref() else {
            return correlation();
        };
        if field == "correlation_id" {
            return correlation();
        }
        match message
            .payload_json()
            .ok()
            .as_ref()
            .and_then(|p| p.get(field))
        {
            Some(serde_json::Value::String(s)) => Arc::from(s.as_str()),
            Some(serde_json::Value::Null) | None => {
                tracing::warn!(
                    handler = %subscription.handler,
                    partition_by = field,
                    message_id = message.id(),
                    orkestra = "rabbitmq",
                    "partition_by field missing from the message; using its correlation id"
                );
                correlation()
            }
            Some(other) => Arc::from(other.to_string()),
        }
    }

    /// Starts a handler task for one delivery. Each start sends one message on `done`
    /// when it ends: `false` right away if the bus is gone (the delivery is not
    /// handled; the broker redelivers it).
    fn start(
        self: &Arc<Self>,
        key: Arc<str>,
        prepared: Prepared,
        queue: &Arc<str>,
        done: &mpsc::UnboundedSender<Done>,
        handles: &mut Vec<tokio::task::AbortHandle>,
    ) {
        let tag = prepared.delivery.delivery_tag;
        let Some(bus) = self.bus.upgrade() else {
            let _ = done.send(Done {
                key,
                tag,
                settled: Settled::Stop,
            });
            return;
        };
        let this = self.clone();
        let queue = queue.clone();
        let done = done.clone();
        let task = tokio::spawn(async move {
            let settled = this.handle(&bus, &queue, prepared).await;
            drop(bus);
            let _ = done.send(Done { key, tag, settled });
        });
        handles.retain(|h| !h.is_finished());
        handles.push(task.abort_handle());
    }

    /// Handles one delivery and settles it, or leaves a success to the worker's next
    /// batch ack.
    async fn handle(&self, bus: &Bus, queue: &str, prepared: Prepared) -> Settled {
        match &self.feed {
            Feed::Work(subscription) => {
                handle_delivery(&self.shared, bus, subscription, queue, prepared).await
            }
            Feed::DeadLetterHandler(subscription) => {
                let delivery = prepared.delivery;
                let letter = opened(letter_from_delivery(&delivery), bus).await;
                runner(bus).dead_letter_handler(subscription, &letter).await;
                if let Err(error) = ack(&delivery).await {
                    tracing::warn!(%error, handler = %subscription.handler, orkestra = "rabbitmq", "dead letter not acked");
                }
                Settled::Done
            }
            Feed::Receiver(tx) => {
                let delivery = prepared.delivery;
                let letter = opened(letter_from_delivery(&delivery), bus).await;
                if tx.send(letter).await.is_err() {
                    return Settled::Stop;
                }
                let _ = ack(&delivery).await;
                Settled::Done
            }
        }
    }
}

/// Most finished successes waiting for one batch ack (fewer with a small prefetch: a
/// half of it, so the broker never waits for acks to send more).
const ACK_BATCH: usize = 64;
/// The longest a finished success waits for its ack.
const ACK_IDLE: Duration = Duration::from_micros(500);

/// How a handler task left its delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settled {
    /// Settled by the task (acked, retried or dead-lettered).
    Done,
    /// Finished (succeeded, or rejected by its handler); the worker acks it in a batch.
    Succeeded,
    /// Not handled: the worker stops (the bus or the receiver is gone).
    Stop,
}

/// A handler task's report to its worker.
struct Done {
    key: Arc<str>,
    tag: u64,
    settled: Settled,
}

/// Batched acks: a `multiple` ack only ever covers deliveries that all finished (every
/// tag at or below it is settled or succeeded), so nothing is acked before its handler
/// finished.
struct Acks {
    /// Delivered and not finished.
    outstanding: std::collections::BTreeSet<u64>,
    /// Succeeded, not acked yet.
    waiting: std::collections::BTreeSet<u64>,
    /// Since when the oldest of `waiting` waits (about).
    since: Instant,
    /// How many waiting successes make a batch.
    batch: usize,
}

impl Default for Acks {
    fn default() -> Self {
        Self {
            outstanding: std::collections::BTreeSet::new(),
            waiting: std::collections::BTreeSet::new(),
            since: Instant::now(),
            batch: ACK_BATCH,
        }
    }
}

impl Acks {
    fn finished(&mut self, tag: u64, settled: Settled) {
        self.outstanding.remove(&tag);
        if settled == Settled::Succeeded {
            if self.waiting.is_empty() {
                self.since = Instant::now();
            }
            self.waiting.insert(tag);
        }
    }

    /// Whether the waiting successes should be acked now.
    fn due(&self) -> bool {
        !self.waiting.is_empty()
            && (self.waiting.len() >= self.batch || self.since.elapsed() >= ACK_IDLE)
    }

    /// Acks the successes below the oldest unfinished delivery with one `multiple` ack;
    /// at the end (`last`), the rest one by one.
    async fn flush(&mut self, channel: &Channel, last: bool) {
        if !channel.status().connected() {
            // The channel is gone, and with it every unacked delivery: the broker
            // redelivers them; acking would only wait for nothing.
            self.waiting.clear();
            return;
        }
        let floor = self.outstanding.first().copied().unwrap_or(u64::MAX);
        let below: Option<u64> = self.waiting.range(..floor).next_back().copied();
        // Those still waiting (above an unfinished delivery) wait anew.
        self.since = Instant::now();
        if let Some(tag) = below {
            self.waiting = self.waiting.split_off(&(tag + 1));
            let _ = settle_result(
                tokio::time::timeout(
                    SETTLE_TIMEOUT,
                    channel.basic_ack(tag, BasicAckOptions { multiple: true }),
                )
                .await,
            );
        }
        if last {
            for tag in std::mem::take(&mut self.waiting) {
                let acked = settle_result(
                    tokio::time::timeout(
                        SETTLE_TIMEOUT,
                        channel.basic_ack(tag, BasicAckOptions { multiple: false }),
                    )
                    .await,
                );
                if !acked {
                    break; // the rest would fail the same way; they are redelivered
                }
            }
        }
    }
}

/// Logs a failed ack; `true` when it went through.
fn settle_result(result: Result<Result<(), lapin::Error>, tokio::time::error::Elapsed>) -> bool {
    match result {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::warn!(%error, orkestra = "rabbitmq", "batch ack failed; the broker will redeliver those messages");
            false
        }
        Err(_) => {
            tracing::warn!(
                orkestra = "rabbitmq",
                "batch ack timed out; the broker will redeliver those messages"
            );
            false
        }
    }
}

/// How long settling one delivery may take: on a lost connection an ack can wait
/// forever, and the delivery is redelivered anyway.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a worker whose connection was lost waits for its running handlers before
/// it consumes again.
const DRAIN_ON_RECONNECT: Duration = Duration::from_secs(30);

async fn ack(delivery: &Delivery) -> Result<(), BusError> {
    match tokio::time::timeout(SETTLE_TIMEOUT, delivery.ack(BasicAckOptions::default())).await {
        Ok(r) => r.map(drop).map_err(broker_error),
        Err(_) => Err(BusError::Timeout("ack")),
    }
}

async fn reject(delivery: &Delivery, requeue: bool) -> Result<(), BusError> {
    let options = BasicRejectOptions { requeue };
    match tokio::time::timeout(SETTLE_TIMEOUT, delivery.reject(options)).await {
        Ok(r) => r.map(drop).map_err(broker_error),
        Err(_) => Err(BusError::Timeout("reject")),
    }
}

/// Which deliveries run now: at most `limit` at once, one at a time per key, each key's
/// deliveries in arrival order, keys served in the order they became ready.
struct Lanes {
    limit: usize,
    running: usize,
    /// Per key with work: whether one of its deliveries runs, and those waiting.
    lanes: HashMap<Arc<str>, Lane>,
    /// Keys not running whose lane has a delivery waiting, oldest first.
    ready: VecDeque<Arc<str>>,
}

#[derive(Default)]
struct Lane {
    running: bool,
    waiting: VecDeque<Prepared>,
}

impl Lanes {
    fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            running: 0,
            lanes: HashMap::new(),
            ready: VecDeque::new(),
        }
    }

    /// A delivery arrived; returns the deliveries to start now.
    fn arrive(&mut self, key: Arc<str>, prepared: Prepared) -> Vec<(Arc<str>, Prepared)> {
        let lane = self.lanes.entry(key.clone()).or_default();
        lane.waiting.push_back(prepared);
        if !lane.running && lane.waiting.len() == 1 {
            self.ready.push_back(key);
        }
        self.fill()
    }

    /// A delivery of `key` finished; returns the deliveries to start now.
    fn finished(&mut self, key: &Arc<str>) -> Vec<(Arc<str>, Prepared)> {
        self.running -= 1;
        if let Some(lane) = self.lanes.get_mut(key) {
            lane.running = false;
            if lane.waiting.is_empty() {
                self.lanes.remove(key);
            } else {
                self.ready.push_back(key.clone());
            }
        }
        self.fill()
    }

    fn fill(&mut self) -> Vec<(Arc<str>, Prepared)> {
        let mut start = Vec::new();
        while self.running < self.limit {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            let Some(lane) = self.lanes.get_mut(&key) else {
                continue;
            };
            let Some(next) = lane.waiting.pop_front() else {
                continue;
            };
            lane.running = true;
            self.running += 1;
            start.push((key, next));
        }
        start
    }

    /// Forgets the deliveries not started (unacked: the broker redelivers them).
    fn drop_waiting(&mut self) {
        self.ready.clear();
        self.lanes.clear();
    }
}

/// Handles one delivery and settles it: reject into the retry path, dead letter, or,
/// for a success or a rejection (an answer), ack (at once when a caller waits for the
/// reply, else in the worker's next batch: [`Settled::Succeeded`]).
async fn handle_delivery(
    shared: &Shared,
    bus: &Bus,
    subscription: &Subscription,
    queue: &str,
    prepared: Prepared,
) -> Settled {
    let Prepared { delivery, decoded } = prepared;
    // Personal fields opened before anything decodes the data: a value that does not
    // open is dead-lettered (the body as it came, sealed), a key store down is retried.
    let mut keys_down = None;
    let decoded = match decoded {
        Ok(message) => match wire::open(message.clone(), bus.sealer().as_deref()).await {
            wire::Opened::Ready(opened) => Ok(opened),
            wire::Opened::Refused(reason) => Err(reason),
            wire::Opened::KeysDown(reason) => {
                keys_down = Some(reason);
                Ok(message)
            }
        },
        Err(reason) => Err(reason),
    };
    let headers = delivery.properties.headers().as_ref();
    let attempt = headers::rejections(headers, queue).saturating_add(1);
    let max_retries =
        headers::uint(headers, headers::MAX_RETRIES).unwrap_or(subscription.max_retries);
    // The producer's trace context decides, as a parent would; without one, the flow's
    // own sampling decision (its correlation id), as on the in-process bus.
    let parent = headers.map(|h| trace::extract(&TraceExtractor(h)));
    let producer = parent.as_ref().map(|cx| cx.span().span_context().clone());
    let traced = match (&producer, &decoded) {
        (Some(sc), _) if sc.is_valid() => sc.is_sampled(),
        (_, Ok(message)) => trace::should_trace(message),
        (_, Err(_)) => trace::samples(
            delivery
                .properties
                .message_id()
                .as_ref()
                .map_or("", |id| id.as_str()),
            trace::sampling_ratio(),
        ),
    };
    let span = if traced {
        let span = spans::consume(queue, &delivery, &subscription.handler);
        if let (Some(parent), Some(link)) = (parent, producer) {
            let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, parent);
            tracing_opentelemetry::OpenTelemetrySpanExt::add_link(&span, link);
        }
        if let Some(original) = replay_of(headers) {
            tracing_opentelemetry::OpenTelemetrySpanExt::add_link(&span, original);
        }
        match &decoded {
            Ok(message) => spans::record_message(&span, message),
            Err(_) => spans::record_undecodable(&span, &delivery.properties),
        }
        span
    } else {
        Span::none()
    };
    let outcome = match (&decoded, keys_down) {
        (Ok(_), Some(reason)) => Outcome::Failed(reason),
        (Ok(message), None) => {
            let runner = Runner {
                traced,
                ..runner(bus)
            };
            runner
                .attempt(subscription, Input::Message(message), attempt, max_retries)
                .instrument(span.clone())
                .await
        }
        (Err(reason), _) => Outcome::Undecodable(reason.clone()),
    };
    let outcome_kind = match &outcome {
        Outcome::Failed(_) => OutcomeKind::Failed,
        _ => OutcomeKind::Other,
    };
    let reply = reply_for(&outcome, attempt, max_retries)
        .filter(|_| delivery.properties.reply_to().is_some());
    let settled = match outcome {
        // A refusal is the handler's answer: settled like a success, never retried
        // nor dead-lettered.
        Outcome::Succeeded(_) | Outcome::Rejected(_) if reply.is_none() => {
            return Settled::Succeeded;
        }
        Outcome::Succeeded(_) | Outcome::Rejected(_) => ack(&delivery).await,
        Outcome::Failed(reason) if attempt <= max_retries => {
            log_retry(subscription, attempt, max_retries, &reason, SYSTEM);
            reject(&delivery, false).await
        }
        Outcome::Failed(reason) | Outcome::Undecodable(reason) => {
            let kind = if matches!(outcome_kind, OutcomeKind::Failed) {
                DeadLetterKind::Exhausted
            } else {
                DeadLetterKind::of_undecodable(&reason)
            };
            let letter = Letter {
                message: decoded.as_ref().ok(),
                handler: &subscription.handler,
                reason: &reason,
                attempts: attempt,
                traced,
                kind,
            };
            dead_letter(shared, &delivery, letter)
                .instrument(span)
                .await
        }
    };
    if let Err(error) = settled {
        tracing::error!(handler = %subscription.handler, %error, "could not settle a delivery; the broker will redeliver it");
        return Settled::Done;
    }
    if let (Some(reply), Some(to), Some(id)) = (
        reply,
        delivery.properties.reply_to().as_ref(),
        delivery.properties.correlation_id().as_ref(),
    ) {
        let body = serde_json::to_vec(&reply).unwrap_or_default();
        if let Err(error) = shared
            .publisher
            .publish_reply(to.as_str(), id.as_str(), &body)
            .await
        {
            tracing::warn!(handler = %subscription.handler, %error, orkestra = "rabbitmq", "reply not sent; the caller will time out");
        }
    }
    Settled::Done
}

/// The trace a replayed message came from (`x-orkestra-replay-of-traceparent`), if valid.
fn replay_of(found: Option<&FieldTable>) -> Option<opentelemetry::trace::SpanContext> {
    let traceparent = headers::string(found, headers::REPLAY_OF_TRACEPARENT)?;
    let tracestate = headers::string(found, headers::REPLAY_OF_TRACESTATE).unwrap_or_default();
    let context = crate::message::TraceContext {
        traceparent,
        tracestate,
    }
    .span_context();
    context.is_valid().then_some(context)
}

/// The reply to send when the outcome is final (`None` while a retry is coming).
fn reply_for(outcome: &Outcome, attempt: u32, max_retries: u32) -> Option<Reply> {
    let (status, reply, error) = match outcome {
        Outcome::Succeeded(value) => ("succeeded", value.clone(), None),
        Outcome::Failed(_) if attempt <= max_retries => return None,
        Outcome::Failed(reason) => ("failed", serde_json::Value::Null, Some(reason.clone())),
        Outcome::Rejected(reason) | Outcome::Undecodable(reason) => {
            ("rejected", serde_json::Value::Null, Some(reason.clone()))
        }
    };
    Some(Reply {
        status: status.to_owned(),
        reply,
        error,
        attempts: attempt,
        max_retries,
    })
}

/// The message in a delivery's body, or why there is none (too large, undecodable:
/// neither is retried).
fn decode(body: &[u8], limit: usize) -> Result<Message, String> {
    if body.len() > limit {
        return Err(format!(
            "message of {} bytes exceeds the limit of {limit}",
            body.len(),
        ));
    }
    wire::decode(body)
        .map(wire::Wire::into_message)
        .map_err(|e| format!("undecodable message: {e}"))
}

/// Why a delivery is dead-lettered, and what is known of it.
struct Letter<'a> {
    /// The decoded message; `None` for a body that is not an Orkestra message.
    message: Option<&'a Message>,
    handler: &'a str,
    reason: &'a str,
    attempts: u32,
    /// Whether the flow is traced (the republish gets a producer span).
    traced: bool,
    /// Why, as the dead-letter counter says it.
    kind: DeadLetterKind,
}

/// Whether a run failed (its dead letter is `exhausted`) or never reached the handler.
enum OutcomeKind {
    Failed,
    Other,
}

/// Publishes the delivery to the dead-letter exchange (with confirm), then acks it. If
/// the dead letter cannot be confirmed the delivery is rejected with requeue: never lost.
/// Its routing key is the topic it was published with: after a retry the delivery's own
/// routing key is the work queue's name (the wait queue sends it back through the
/// default exchange).
async fn dead_letter(
    shared: &Shared,
    delivery: &Delivery,
    letter: Letter<'_>,
) -> Result<(), BusError> {
    let topic = letter
        .message
        .map_or(delivery.routing_key.as_str(), Message::topic);
    log_dead_letter(
        letter.handler,
        topic,
        letter.reason,
        letter.attempts,
        SYSTEM,
        letter.kind,
    );
    let original = delivery.properties.headers().as_ref();
    // A replayed message names its original exchange (it may have come through the
    // default exchange, straight to this queue); otherwise the broker's record of the
    // first dead-lettering does, or the delivery itself.
    let exchange = headers::string(original, headers::ORIGINAL_EXCHANGE)
        .or_else(|| headers::string(original, headers::X_FIRST_DEATH_EXCHANGE))
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| delivery.exchange.as_str().to_owned());
    let mut table = headers::dead_letter(
        &exchange,
        topic,
        letter.handler,
        letter.attempts,
        letter.reason,
    );
    // Kept so a replay carries them again: the trace, the producer's own retry limit
    // (never the binding's), and that it was replayed before.
    for key in [
        headers::TRACEPARENT,
        headers::TRACESTATE,
        headers::REPLAYED_FROM,
        headers::REPLAY_OF_TRACEPARENT,
        headers::REPLAY_OF_TRACESTATE,
    ] {
        if let Some(value) = headers::string(original, key) {
            headers::put_text(&mut table, key, &value);
        }
    }
    if let Some(max) = headers::int(original, headers::MAX_RETRIES) {
        headers::put_int(&mut table, headers::MAX_RETRIES, max);
    }
    let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_timestamp(now)
        .with_headers(table);
    if let Some(id) = delivery.properties.message_id() {
        properties = properties.with_message_id(id.clone());
    }
    let sent = shared
        .publisher
        .publish_dead_letter(
            Outgoing {
                exchange: &shared.topology.names.dead_letters,
                routing_key: topic,
                body: &delivery.data,
                properties,
            },
            letter.message,
            letter.traced,
        )
        .await;
    match sent {
        Ok(()) => ack(delivery).await,
        Err(e) => {
            let _ = reject(delivery, true).await;
            Err(e)
        }
    }
}

/// A dead letter with the personal fields of its message opened, as a handler of the
/// message would have seen them (the queue keeps them sealed). A message that does not
/// open (the reason it was dead-lettered, often) or a key store that fails leaves the
/// letter as it came: sealed, never garbage.
async fn opened(mut letter: DeadLetter, bus: &Bus) -> DeadLetter {
    if let wire::Opened::Ready(message) =
        wire::open(letter.message.clone(), bus.sealer().as_deref()).await
    {
        letter.message = message;
    }
    letter
}

/// A dead letter as the dead-letter exchange delivers it (headers set by [`dead_letter`]).
fn letter_from_delivery(delivery: &Delivery) -> DeadLetter {
    let headers = delivery.properties.headers().as_ref();
    DeadLetter {
        message: wire::decode_or_placeholder(
            &delivery.data,
            delivery.routing_key.as_str(),
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str()),
        ),
        topic: headers::string(headers, headers::ORIGINAL_ROUTING_KEY)
            .unwrap_or_else(|| delivery.routing_key.as_str().to_owned()),
        handler: headers::string(headers, headers::HANDLER).unwrap_or_default(),
        reason: headers::string(headers, headers::ERROR).unwrap_or_default(),
        attempts: headers::uint(headers, headers::ATTEMPTS).unwrap_or(0),
        dead_at: delivery
            .properties
            .timestamp()
            .and_then(|s| i64::try_from(s).ok())
            .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
            .unwrap_or_else(chrono::Utc::now),
    }
}
