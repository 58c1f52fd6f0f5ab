//! One process manager's work: load an instance, run the handler, record the step at
//! the instance's expected version, dispatch its commands, fire its timers.

use super::*;

impl<D: ProcessDefinition> Runner<D> {
    pub(super) fn new(definition: D, store: Store, settings: Settings) -> Self {
        let claims = settings.shared.then(|| Inbox::from(&store));
        let name = settings.name;
        Self {
            handler: Arc::from(format!("pm:{name}")),
            step_claims: Arc::from(format!("pm:{name}:step")),
            timer_claims: Arc::from(format!("pm:{name}:timer")),
            // A renamed run: `pm-fulfilment.blue-<key>` (a `.` no schema name makes, so
            // no key of the schema's run can name the same stream).
            stream: match &*name {
                n if n == D::NAME => D::STREAM.to_owned(),
                n => format!("{}.{}", D::STREAM, n.to_lowercase()),
            },
            name,
            definition,
            store,
            bus: settings.bus,
            claims,
            retries: settings.retries,
            retry_delay: settings.retry_delay,
            lanes: settings.lanes,
            cache: Mutex::new(HashMap::new()),
            timers: Mutex::new(TimerIndex::default()),
            wake: Notify::new(),
            known: Mutex::new(HashSet::new()),
            known_complete: AtomicBool::new(false),
            indexed: AtomicU64::new(0),
            dispatched: Mutex::new(HashSet::new()),
            offered: (0..settings.partitions.max(1))
                .map(|_| AtomicU64::new(0))
                .collect(),
            partitions: settings.partitions.max(1),
        }
    }

    /// The partition of the instance `key`.
    pub(super) fn partition(&self, key: &str) -> u32 {
        crate::runner::partition::partition_of(key, self.partitions)
    }

    /// What partition `p` of the feed was last offered.
    pub(super) fn offered(&self, partition: u32) -> u64 {
        self.offered
            .get(partition as usize)
            .map_or(0, |o| o.load(Ordering::Acquire))
    }

    /// The instance key of a step record of this process manager (its stream's suffix).
    pub(super) fn step_key<'a>(&self, recorded: &'a RecordedEvent) -> Option<&'a str> {
        recorded
            .stream()
            .strip_prefix(self.stream.as_str())?
            .strip_prefix('-')
    }

    pub(super) fn stream(&self, key: &str) -> String {
        format!("{}-{key}", self.stream)
    }

    /// The instance's last step, from memory or the store.
    pub(super) async fn load(
        &self,
        key: &str,
        fresh: bool,
    ) -> Result<Option<Instance<D::State>>, StoreError> {
        if !fresh && let Some(found) = crate::sync::lock(&self.cache).get(key) {
            return Ok(Some(found.clone()));
        }
        if !fresh
            && self.claims.is_none()
            && self.known_complete.load(Ordering::Acquire)
            && !crate::sync::lock(&self.known).contains(key)
        {
            return Ok(None);
        }
        let last = self
            .store
            .read_stream_backwards(&self.stream(key), u64::MAX, 1)
            .await?;
        let Some(recorded) = last.into_iter().next() else {
            return Ok(None);
        };
        let mut step: Step<D::State> = serde_json::from_str(recorded.data_json()).map_err(|e| {
            StoreError::Invalid(format!(
                "step {} of process manager {} (stream {}) cannot be read: {e}",
                recorded.id(),
                self.name,
                recorded.stream()
            ))
        })?;
        if *step.process != *self.name || step.key != key {
            return Err(StoreError::Invalid(format!(
                "stream {} holds a step of {} (instance {}), not of {} (instance {key})",
                recorded.stream(),
                step.process,
                step.key,
                self.name
            )));
        }
        // Its commands were dispatched (or are, by the feed): the next step needs none.
        step.commands.clear();
        let instance = Instance {
            version: recorded.version(),
            step,
        };
        self.remember(key, &instance);
        Ok(Some(instance))
    }

    pub(super) fn remember(&self, key: &str, instance: &Instance<D::State>) {
        let mut cache = crate::sync::lock(&self.cache);
        if cache.len() >= CACHE_LIMIT && !cache.contains_key(key) {
            cache.clear();
        }
        cache.insert(key.to_owned(), instance.clone());
    }

    /// Notes that `key` has a stream; past [`KNOWN_LIMIT`] keys the set is dropped and
    /// a new instance costs a read again.
    pub(super) fn know(&self, key: &str) {
        let mut known = crate::sync::lock(&self.known);
        if known.len() >= KNOWN_LIMIT {
            known.clear();
            known.shrink_to_fit();
            self.known_complete.store(false, Ordering::Release);
        } else if self.known_complete.load(Ordering::Acquire) {
            known.insert(key.to_owned());
        }
    }

    pub(super) fn forget(&self, key: &str) {
        crate::sync::lock(&self.cache).remove(key);
    }

    /// Runs the handler on a copy of the state, retried; `Err` with the last error.
    pub(super) async fn run_handler(
        &self,
        state: &D::State,
        key: &str,
        timers: &BTreeMap<String, i64>,
        cause: &Cause<'_, D::Event, D::Timer>,
    ) -> Result<(D::State, ProcessContext<D::Command, D::Timer>), (HandlerError, u32)> {
        let mut attempt = 0u32;
        loop {
            let mut state = state.clone();
            let mut ctx = match cause {
                Cause::Event { role, .. } => {
                    ProcessContext::for_event(key.to_owned(), timers.clone(), *role)
                }
                Cause::Timer { timer, .. } => {
                    ProcessContext::for_timer(key.to_owned(), timers.clone(), *timer)
                }
            };
            let run = match cause {
                Cause::Event { event, .. } => self.definition.handle(&mut state, event, &mut ctx),
                Cause::Timer { timer, .. } => {
                    self.definition.on_timeout(&mut state, *timer, &mut ctx)
                }
            };
            match crate::projection::run_caught(run).await {
                Ok(()) => {
                    ctx.settle();
                    return Ok((state, ctx));
                }
                Err(e) => {
                    attempt += 1;
                    if !e.is_retryable() || attempt > self.retries {
                        return Err((e, attempt));
                    }
                    tracing::warn!(orkestra = "process", process = &*self.name, key, attempt, error = %e, "process manager handler failed; retrying");
                    tokio::time::sleep(self.retry_delay.saturating_mul(attempt)).await;
                }
            }
        }
    }

    /// The instance an event belongs to (its `correlate_by` value), or why it has none.
    pub(super) fn event_key(&self, recorded: &RecordedEvent) -> Result<String, String> {
        let data = recorded.data().map_err(|e| e.to_string())?;
        key_of(&data, D::CORRELATE_BY).ok_or_else(|| {
            format!(
                "event {} ({}) has no `{}`: process manager {} correlates its instances by it",
                recorded.id(),
                recorded.event_type(),
                D::CORRELATE_BY,
                self.name
            )
        })
    }

    /// Handles one event of this process manager (`key`: [`event_key`](Self::event_key)).
    pub(super) async fn on_event(
        &self,
        recorded: &RecordedEvent,
        role: Role,
        key: Result<String, String>,
    ) -> Result<(), HandlerError> {
        let key = match key {
            Ok(key) => key,
            Err(reason) => return self.dead_letter(recorded, &reason, 0).await,
        };
        let event = match D::decode(recorded) {
            Ok(event) => event,
            Err(e) => return self.dead_letter(recorded, &e.to_string(), 0).await,
        };
        let cause = Cause::Event {
            event: &event,
            recorded,
            role,
        };
        self.exclusively(&self.handler, recorded.id(), async || {
            self.step(&key, &cause).await
        })
        .await
    }

    /// Waits until the feed has handled every event recorded until now, so a timer never
    /// fires on a state that misses an event that came before its due time (after a
    /// restart, while the feed is behind, or while an older PostgreSQL transaction keeps
    /// a commit out of the global order). `false` when asked to stop first.
    pub(super) async fn caught_up(&self, partition: u32, stop: &mut watch::Receiver<bool>) -> bool {
        let head = loop {
            match self.store.recorded_head().await {
                Ok(head) => break head,
                Err(e) => {
                    tracing::warn!(orkestra = "process", process = &*self.name, error = %e, "cannot read the head; timers wait");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stop.changed() => return false,
                    }
                }
            }
        };
        let Some(head) = head else {
            return true;
        };
        let (since, mut warned) = (tokio::time::Instant::now(), false);
        while self.offered(partition) <= head {
            if *stop.borrow() {
                return false;
            }
            if !warned && since.elapsed() >= TIMERS_WAIT_WARNING {
                warned = true;
                tracing::warn!(
                    orkestra = "process",
                    process = &*self.name,
                    position = head,
                    "due timers wait for the feed to reach this position (a failing feed, or on PostgreSQL a long-running transaction, holds it back)"
                );
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
                _ = stop.changed() => {}
            }
        }
        true
    }

    /// The id a timer's firing goes by (the cause of its step).
    pub(super) fn timer_cause_id(&self, key: &str, timer: D::Timer, due: i64) -> String {
        uuid_v5(&format!("{}/{key}/timer/{}/{due}", self.name, timer.name()))
    }

    /// The snapshot key of the timer index.
    pub(super) fn timers_key(&self) -> String {
        timers_key(&self.name)
    }

    /// Saves the timer index as of the feed's position, so the next start reads only
    /// the steps after it (a lost or stale snapshot only costs a longer read).
    pub(super) async fn save_timers(&self) {
        let offered = (0..self.partitions)
            .map(|p| self.offered(p))
            .min()
            .unwrap_or(0);
        // Every step before `offered` is in the index.
        let Some(position) = offered.checked_sub(1) else {
            return;
        };
        let pending: Vec<SavedTimers> = crate::sync::lock(&self.timers)
            .instances
            .iter()
            .map(|(key, (version, timers))| (key.clone(), *version, timers.clone()))
            .collect();
        let Ok(state) = serde_json::to_string(&pending) else {
            return;
        };
        let snapshot = Snapshot {
            stream: self.timers_key(),
            version: position,
            shape: TIMERS_SHAPE.to_owned(),
            state,
        };
        if let Err(e) = self.store.save_snapshot(snapshot).await {
            tracing::warn!(orkestra = "process", process = &*self.name, error = %e, "cannot save the timer snapshot");
        }
    }

    /// An event or timer that changes nothing, said at debug level.
    pub(super) fn ignored(&self, key: &str, subject: &str, why: &str) {
        tracing::debug!(
            orkestra = "process",
            process = &*self.name,
            key,
            subject,
            why,
            "ignored"
        );
    }

    /// Runs `work` as the one runner acting on `(kind, id)`: with runners in other
    /// processes, after claiming the pair in the store's inbox (`Ok` without running
    /// when another runner did it already), the claim committed when `work` succeeded.
    pub(super) async fn exclusively(
        &self,
        kind: &Arc<str>,
        id: &str,
        work: impl AsyncFnOnce() -> Result<(), HandlerError>,
    ) -> Result<(), HandlerError> {
        let Some(inbox) = &self.claims else {
            return work().await;
        };
        let claim = match inbox.claim(kind, id).await {
            Ok(Some(claim)) => claim,
            Ok(None) => return Ok(()),
            Err(e) => return Err(HandlerError::fail(e.to_string())),
        };
        work().await?;
        claim
            .commit()
            .await
            .map_err(|e| HandlerError::fail(e.to_string()))
    }

    /// Loads, handles and records one step, again on a conflict.
    pub(super) async fn step(
        &self,
        key: &str,
        cause: &Cause<'_, D::Event, D::Timer>,
    ) -> Result<(), HandlerError> {
        let mut fresh = false;
        for _ in 0..CONFLICT_RETRIES {
            match self.try_step(key, cause, fresh).await {
                Ok(()) => return Ok(()),
                Err(StepError::Conflict) => {
                    self.forget(key);
                    fresh = true;
                }
                Err(StepError::Retry(e)) => {
                    self.forget(key);
                    return Err(e);
                }
                Err(StepError::Fatal(reason)) => {
                    self.forget(key);
                    let reason =
                        format!("instance {key} of process manager {}: {reason}", self.name);
                    return match cause {
                        Cause::Event { recorded, .. } => {
                            self.dead_letter(recorded, &reason, 1).await
                        }
                        Cause::Timer { timer, due } => {
                            let id = self.timer_cause_id(key, *timer, *due);
                            self.dead_letter_timer(key, *timer, &id, &new_id(), &reason, 1)
                                .await
                        }
                    };
                }
            }
        }
        Err(HandlerError::fail(format!(
            "instance {key} of process manager {} kept changing under {CONFLICT_RETRIES} tries",
            self.name
        )))
    }

    pub(super) async fn try_step(
        &self,
        key: &str,
        cause: &Cause<'_, D::Event, D::Timer>,
        fresh: bool,
    ) -> Result<(), StepError> {
        // With runners in other processes the cached step may be stale: read it.
        let instance = self.load(key, fresh || self.claims.is_some()).await?;
        // What this cause means for the instance as it is.
        let (state, timers, last, correlation) = match (&instance, cause) {
            (None, Cause::Event { role, recorded, .. }) => {
                if *role != Role::Start {
                    self.ignored(
                        key,
                        recorded.event_type(),
                        "event for an instance that was never started; ignored",
                    );
                    return Ok(());
                }
                (
                    D::State::default(),
                    BTreeMap::new(),
                    None,
                    recorded.metadata().correlation_id.clone(),
                )
            }
            (Some(i), Cause::Event { role, recorded, .. }) => {
                if i.step.last.is_some_and(|l| l >= recorded.position()) {
                    // Handled already (a redelivery after a crash): its step's commands are
                    // dispatched when the feed reads the step.
                    return Ok(());
                }
                if i.step.finished {
                    self.ignored(
                        key,
                        recorded.event_type(),
                        "event for a finished instance; ignored",
                    );
                    return Ok(());
                }
                if *role == Role::Start {
                    self.ignored(
                        key,
                        recorded.event_type(),
                        "start event for an instance that exists; ignored",
                    );
                    return Ok(());
                }
                i.parts()
            }
            (None, Cause::Timer { timer, .. }) => {
                self.ignored(key, timer.name(), "timer of an unknown instance; dropped");
                return Ok(());
            }
            (Some(i), Cause::Timer { timer, due }) => {
                if i.step.finished {
                    self.ignored(key, timer.name(), "timer of a finished instance; dropped");
                    return Ok(());
                }
                if i.step.timers.get(timer.name()) != Some(due) {
                    self.ignored(key, timer.name(), "timer cleared or set again; dropped");
                    return Ok(());
                }
                i.parts()
            }
        };
        let (cause_id, parent) = match cause {
            Cause::Event { recorded, .. } => (
                recorded.id().to_owned(),
                Some((recorded.metadata(), recorded.id())),
            ),
            Cause::Timer { timer, due } => (self.timer_cause_id(key, *timer, *due), None),
        };
        let step_id = uuid_v5(&format!("{}/{cause_id}", self.name));
        let metadata = match parent {
            Some((meta, id)) => Metadata::derive(meta, id),
            None => {
                let mut m = Metadata::new().with_correlation_id(correlation.clone());
                m.causation_id = Some(step_id.clone());
                m
            }
        };
        // The handler's outcome, its commands checked: an invalid command fails the step
        // as the handler failing would (it would be invalid again on a retry).
        let outcome = match self.run_handler(&state, key, &timers, cause).await {
            Ok((s, ctx)) => {
                let mut raw = Vec::with_capacity(ctx.commands.len());
                let mut invalid = None;
                for (index, command) in ctx.commands.into_iter().enumerate() {
                    let id = uuid_v5(&format!("{}/{cause_id}/command/{index}", self.name));
                    match command.into_raw(id, metadata.clone()) {
                        Ok(c) => raw.push(c),
                        Err(e) => {
                            invalid = Some(HandlerError::reject(format!(
                                "process manager {} dispatched an invalid command: {e}",
                                self.name
                            )));
                            break;
                        }
                    }
                }
                match invalid {
                    None => Ok((s, ctx.timers, ctx.finished, raw)),
                    Some(e) => Err((e, 1)),
                }
            }
            Err(failure) => Err(failure),
        };
        let (new_state, ctx_timers, finished, raw) = match outcome {
            Ok(done) => done,
            Err((error, attempts)) => {
                let reason = error.to_string();
                match cause {
                    // The instance keeps its state; the event goes to the dead letters.
                    Cause::Event { recorded, .. } => {
                        self.dead_letter(recorded, &reason, attempts)
                            .await
                            .map_err(StepError::Retry)?;
                        return Ok(());
                    }
                    // A failed timer is recorded as fired (it would fail again), reported.
                    Cause::Timer { timer, .. } => {
                        self.dead_letter_timer(
                            key,
                            *timer,
                            &cause_id,
                            &correlation,
                            &reason,
                            attempts,
                        )
                        .await
                        .map_err(StepError::Retry)?;
                        let mut left = timers;
                        left.remove(timer.name());
                        (state, left, false, Vec::new())
                    }
                }
            }
        };
        let last = match cause {
            Cause::Event { recorded, .. } => Some(recorded.position()),
            Cause::Timer { .. } => last,
        };
        let step = Step {
            process: self.name.to_string(),
            key: key.to_owned(),
            state: new_state,
            timers: ctx_timers,
            finished,
            last,
            correlation,
            commands: raw,
        };
        let data = serde_json::to_value(&step)
            .map_err(|e| StepError::Retry(HandlerError::fail(format!("step: {e}"))))?;
        let expected = match &instance {
            None => ExpectedVersion::NoStream,
            Some(i) => ExpectedVersion::Exact(i.version),
        };
        let mut step_metadata = metadata;
        step_metadata.causation_id = Some(cause_id);
        let appended = self
            .store
            .append(
                &self.stream(key),
                expected,
                vec![EventData {
                    id: step_id.clone(),
                    event_type: STEP_TYPE.to_owned(),
                    schema_version: 1,
                    data,
                    metadata: step_metadata,
                    topic: None,
                    tags: Vec::new(),
                }],
            )
            .await?;
        let version = appended.last_version;
        crate::sync::lock(&self.timers).record(key, version, &step.timers, step.finished);
        self.wake.notify_one();
        let mut step = step;
        // The cache keeps what the next step starts from; the commands leave here.
        let commands = std::mem::take(&mut step.commands);
        self.remember(key, &Instance { version, step });
        if self.claims.is_some() {
            return Ok(());
        }
        self.know(key);
        // Alone on the store, a step of the feed's own (an event's) is dispatched now,
        // before the feed reads it back: should the process die first, the feed dispatches
        // it after the restart (the same ids). A timer's step is left to the feed, which
        // may read it before a dispatch from here would end.
        if matches!(cause, Cause::Event { .. }) {
            match self.dispatch_all(key, commands).await {
                Ok(()) => {
                    crate::sync::lock(&self.dispatched).insert(step_id);
                }
                Err(e) => {
                    tracing::warn!(orkestra = "process", process = &*self.name, key, error = %e, "cannot dispatch a step's commands yet; the feed will");
                }
            }
        }
        Ok(())
    }

    /// Dispatches a step's commands, in order.
    pub(super) async fn dispatch_all(
        &self,
        key: &str,
        commands: Vec<RawCommand>,
    ) -> Result<(), HandlerError> {
        for command in commands {
            let topic = command.topic.clone();
            let envelope = CommandEnvelope::from_message(Message::from_raw_command(command));
            match self.bus.dispatch(envelope).await {
                Ok(_) => {}
                // Nothing is dropped: the feed waits here (retrying, with a warning each
                // time) until a handler of the command is subscribed.
                Err(e @ BusError::NoHandler { .. }) => {
                    return Err(HandlerError::fail(format!(
                        "process manager {} cannot dispatch {topic} for instance {key}: {e}",
                        self.name
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Dead-letters a timer whose firing failed, as an `orkestra.ProcessTimer` message
    /// naming the instance and the timer.
    pub(super) async fn dead_letter_timer(
        &self,
        key: &str,
        timer: D::Timer,
        id: &str,
        correlation: &str,
        reason: &str,
        attempts: u32,
    ) -> Result<(), HandlerError> {
        let message = Message::from_raw_event(crate::message::RawEvent {
            id: id.to_owned(),
            event_type: "orkestra.ProcessTimer".to_owned(),
            topic: format!("orkestra.process.{}.timer", self.name),
            version: 1,
            data: serde_json::json!({ "process": &*self.name, "key": key, "timer": timer.name() }),
            metadata: Metadata::new().with_correlation_id(correlation),
        });
        self.bus
            .dead_letter_from(&message, &self.handler, reason, attempts)
            .await
            .map_err(HandlerError::from)
    }

    pub(super) async fn dead_letter(
        &self,
        recorded: &RecordedEvent,
        reason: &str,
        attempts: u32,
    ) -> Result<(), HandlerError> {
        self.bus
            .dead_letter_from(&message_of(recorded), &self.handler, reason, attempts)
            .await
            .map_err(HandlerError::from)
    }

    /// Takes a step of this process manager read from the log into the timer index and
    /// `known` (anything else is left alone).
    pub(super) fn index_step(&self, recorded: &RecordedEvent) {
        if recorded.event_type() != STEP_TYPE || !recorded.stream().starts_with(&self.stream) {
            return;
        }
        let Ok(step) = serde_json::from_str::<Step<serde::de::IgnoredAny>>(recorded.data_json())
        else {
            return;
        };
        if *step.process == *self.name {
            crate::sync::lock(&self.timers).record(
                &step.key,
                recorded.version(),
                &step.timers,
                step.finished,
            );
            self.know(&step.key);
        }
    }

    /// Reads the steps from where the index ends up to `checkpoint` (a partition this copy
    /// just took: its earlier holders recorded them while this copy worked none of it,
    /// and its feed goes on after the checkpoint), so their timers fire here and their
    /// instances are known.
    pub(super) async fn index_until(&self, checkpoint: Option<u64>) -> Result<(), StoreError> {
        let Some(until) = checkpoint else {
            return Ok(());
        };
        let mut next = self.indexed.load(Ordering::Acquire);
        while next <= until {
            let batch = self.store.read_all(next, 1_000).await?;
            let Some(last) = batch.last() else {
                break;
            };
            next = last.position().saturating_add(1);
            for recorded in batch.iter().take_while(|e| e.position() <= until) {
                self.index_step(recorded);
            }
        }
        self.indexed
            .fetch_max(until.saturating_add(1), Ordering::AcqRel);
        self.wake.notify_one();
        Ok(())
    }

    /// A step read from the log: its timers go to the index, its commands to the bus.
    pub(super) async fn on_step(&self, recorded: &RecordedEvent) -> Result<(), HandlerError> {
        if self.claims.is_none() && crate::sync::lock(&self.dispatched).remove(recorded.id()) {
            // Recorded and dispatched by this process: its timers are indexed already.
            return Ok(());
        }
        let step: Step<serde::de::IgnoredAny> = match serde_json::from_str(recorded.data_json()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(orkestra = "process", process = &*self.name, step = recorded.id(), error = %e, "a step cannot be read; skipped");
                return Ok(());
            }
        };
        if *step.process != *self.name {
            return Ok(());
        }
        crate::sync::lock(&self.timers).record(
            &step.key,
            recorded.version(),
            &step.timers,
            step.finished,
        );
        // A step another copy recorded: its instance exists.
        self.know(&step.key);
        self.wake.notify_one();
        if step.commands.is_empty() {
            return Ok(());
        }
        let key = step.key;
        let commands = step.commands;
        self.exclusively(&self.step_claims, recorded.id(), async || {
            self.dispatch_all(&key, commands).await
        })
        .await
    }

    /// Fires one due timer.
    pub(super) async fn fire(
        &self,
        due: i64,
        key: String,
        name: String,
        stop: &watch::Receiver<bool>,
    ) {
        let Some(timer) = D::Timer::from_name(&name) else {
            tracing::debug!(
                orkestra = "process",
                process = &*self.name,
                key,
                timer = name,
                "timer no longer in the schema; dropped"
            );
            return;
        };
        let claim_id = format!("{key}/{name}/{due}");
        let mut attempt = 0u32;
        loop {
            let result = self
                .exclusively(&self.timer_claims, &claim_id, async || {
                    self.step(&key, &Cause::Timer { timer, due }).await
                })
                .await;
            match result {
                Ok(()) => return,
                // Left set in the store: it fires after the next start.
                Err(_) if *stop.borrow() => return,
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(orkestra = "process", process = &*self.name, key, timer = name, attempt, error = %e, "cannot fire a timer; retrying");
                    tokio::time::sleep(Duration::from_millis(250).saturating_mul(attempt.min(40)))
                        .await;
                }
            }
        }
    }
}
