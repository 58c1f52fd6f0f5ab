//! The feed: every recorded event of the process manager's partitions, handled in lanes
//! (one per instance) side by side within a batch.

use super::*;

impl<D: ProcessDefinition> Feed<D> {
    /// What the feed does with a recorded event: the instance stream it concerns (events
    /// and steps of one instance are handled in order) and the work, or `None` when it
    /// is not this process manager's.
    pub(super) fn work<'a>(&'a self, event: &'a RecordedEvent) -> Option<(String, Work<'a>)> {
        let runner = &self.runner;
        if event.event_type() == STEP_TYPE {
            if !event.stream().starts_with(&runner.stream) {
                return None;
            }
            return Some((event.stream().to_owned(), Box::pin(runner.on_step(event))));
        }
        let role = D::role(event.event_type())?;
        let key = runner.event_key(event);
        let lane = match &key {
            Ok(key) => runner.stream(key),
            // Dead-lettered on its own.
            Err(_) => format!("\u{0}{}", event.id()),
        };
        Some((lane, Box::pin(runner.on_event(event, role, key))))
    }
}

impl<D: ProcessDefinition> Erased for Feed<D> {
    fn handle<'a>(
        &'a self,
        event: &'a RecordedEvent,
        _ctx: ProjectionContext<'a>,
    ) -> Option<BoxFuture<'a, Result<(), HandlerError>>> {
        if crate::sync::lock(&self.done_ahead).remove(&event.position()) {
            return None;
        }
        let (_, work) = self.work(event)?;
        let offered = self.runner.offered.get(self.partition as usize);
        Some(Box::pin(async move {
            work.await?;
            if let Some(offered) = offered {
                offered.store(event.position().saturating_add(1), Ordering::Release);
            }
            Ok(())
        }))
    }

    /// The partition's feed read up to `next` (events of other partitions included):
    /// every step of this partition before it is in the timer index.
    fn advanced(&self, next: u64) {
        if let Some(offered) = self.runner.offered.get(self.partition as usize) {
            offered.fetch_max(next, Ordering::AcqRel);
        }
    }

    /// A partition this copy just took: the steps its earlier holders recorded up to its
    /// checkpoint, which this copy's feed will not read, go to the timer index.
    fn prepare(&self, checkpoint: Option<u64>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.runner.index_until(checkpoint))
    }

    fn for_partition(&self, partition: u32) -> Option<Arc<dyn Erased>> {
        Some(Arc::new(Feed {
            runner: self.runner.clone(),
            partition,
            done_ahead: Mutex::default(),
        }))
    }

    /// An instance's events and steps go to the partition of its key.
    fn partition_key<'a>(&self, event: &'a RecordedEvent) -> std::borrow::Cow<'a, str> {
        let runner = &self.runner;
        if event.event_type() == STEP_TYPE
            && let Some(key) = runner.step_key(event)
        {
            return std::borrow::Cow::Borrowed(key);
        }
        if D::role(event.event_type()).is_some()
            && let Ok(key) = runner.event_key(event)
        {
            return std::borrow::Cow::Owned(key);
        }
        std::borrow::Cow::Borrowed(event.stream())
    }

    /// Another partition's step: its timers go to the index all the same, so a timer
    /// is known here when this copy takes its partition over.
    fn observe(&self, event: &RecordedEvent) {
        let runner = &self.runner;
        if event.event_type() != STEP_TYPE || runner.step_key(event).is_none() {
            return;
        }
        let Ok(step) = serde_json::from_str::<Step<serde::de::IgnoredAny>>(event.data_json())
        else {
            return;
        };
        if *step.process == *runner.name {
            crate::sync::lock(&runner.timers).record(
                &step.key,
                event.version(),
                &step.timers,
                step.finished,
            );
            runner.know(&step.key);
        }
    }

    /// The batch in lanes, one per instance: each lane in order, up to `lanes` side by
    /// side (their appends share the store's group commits and connections).
    fn handle_batch<'a>(
        &'a self,
        events: &'a [RecordedEvent],
    ) -> Option<BoxFuture<'a, Result<(), (u64, HandlerError)>>> {
        Some(Box::pin(async move {
            let mut lanes: Vec<Vec<(u64, Work<'a>)>> = Vec::new();
            let mut lane_of: HashMap<String, usize> = HashMap::new();
            let mut ahead = std::mem::take(&mut *crate::sync::lock(&self.done_ahead));
            for event in events {
                if ahead.contains(&event.position()) {
                    continue;
                }
                let Some((lane, work)) = self.work(event) else {
                    continue;
                };
                let i = *lane_of.entry(lane).or_insert_with(|| {
                    lanes.push(Vec::new());
                    lanes.len() - 1
                });
                lanes[i].push((event.position(), work));
            }
            let failed: Mutex<Option<(u64, HandlerError)>> = Mutex::new(None);
            let finished: Mutex<Vec<u64>> = Mutex::default();
            use futures_util::StreamExt as _;
            futures_util::stream::iter(lanes)
                .for_each_concurrent(self.runner.lanes, |lane| {
                    let (failed, finished) = (&failed, &finished);
                    async move {
                        for (position, work) in lane {
                            if let Err(e) = work.await {
                                let mut first = crate::sync::lock(failed);
                                if first.as_ref().is_none_or(|(p, _)| position < *p) {
                                    *first = Some((position, e));
                                }
                                return;
                            }
                            crate::sync::lock(finished).push(position);
                        }
                    }
                })
                .await;
            let failed = failed.into_inner().unwrap_or_else(|p| p.into_inner());
            let done = match &failed {
                Some((position, _)) => *position,
                None => events.last().map_or(0, |e| e.position().saturating_add(1)),
            };
            // The next read starts at `done`: what is finished from there on (this time, or
            // skipped this time as finished before) is not done again.
            if failed.is_some() {
                ahead.extend(finished.into_inner().unwrap_or_else(|p| p.into_inner()));
            }
            ahead.retain(|&p| p >= done);
            *crate::sync::lock(&self.done_ahead) = ahead;
            if let Some(offered) = self.runner.offered.get(self.partition as usize) {
                offered.fetch_max(done, Ordering::AcqRel);
            }
            match failed {
                Some(failure) => Err(failure),
                None => Ok(()),
            }
        }))
    }
}
