//! What `ProcessManagers` runs of a process manager, its types erased: the feed, the
//! timer index read back at start, and the timer task (this copy's partitions only).

use super::*;

impl<D: ProcessDefinition> Runnable for Runner<D> {
    fn name(&self) -> &str {
        &self.name
    }

    fn feed(self: Arc<Self>) -> Arc<dyn Erased> {
        Arc::new(Feed {
            runner: self,
            partition: 0,
            done_ahead: Mutex::default(),
        })
    }

    fn pending_timers(&self) -> usize {
        crate::sync::lock(&self.timers).live
    }

    fn resume_after(&self, checkpoint: Option<u64>) {
        let next = checkpoint.map_or(0, |c| c.saturating_add(1));
        for offered in &self.offered {
            offered.store(next, Ordering::Release);
        }
    }

    fn load_timers(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut next = 0u64;
            // The index as a snapshot saved it, then the steps after it.
            let snapshot = self.store.load_snapshot(&self.timers_key()).await?;
            if let Some(snapshot) = snapshot.filter(|s| s.shape == TIMERS_SHAPE)
                && let Ok(saved) = serde_json::from_str::<Vec<SavedTimers>>(&snapshot.state)
            {
                let mut index = crate::sync::lock(&self.timers);
                for (key, version, timers) in saved {
                    index.record(&key, version, &timers, false);
                }
                next = snapshot.version.saturating_add(1);
            } else {
                // From the start: every instance key is seen on the way.
                self.known_complete.store(true, Ordering::Release);
            }
            loop {
                let batch = self.store.read_all(next, 1_000).await?;
                let Some(last) = batch.last() else {
                    break;
                };
                next = last.position().saturating_add(1);
                for recorded in &batch {
                    self.index_step(recorded);
                }
            }
            self.indexed.fetch_max(next, Ordering::AcqRel);
            Ok(())
        })
    }

    fn run_timers(
        self: Arc<Self>,
        mut stop: watch::Receiver<bool>,
        holding: Holding,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut saved_at = tokio::time::Instant::now();
            loop {
                if *stop.borrow() {
                    self.save_timers().await;
                    return;
                }
                if saved_at.elapsed() >= TIMERS_SNAPSHOT_EVERY {
                    saved_at = tokio::time::Instant::now();
                    self.save_timers().await;
                }
                let now = now_ms();
                let (due, next) = {
                    let mut index = crate::sync::lock(&self.timers);
                    let due = index.take_due(now);
                    (due, index.next_due())
                };
                // A timer fires in the copy that holds its instance's partition, once the
                // partition's feed has caught up; the others are put back for later (the
                // holder's step clears them, or this copy takes the partition over).
                let (mut ours, mut later) = (Vec::new(), Vec::new());
                for timer in due {
                    let partition = self.partition(&timer.1);
                    if holding.holds(partition) {
                        ours.push((partition, timer));
                    } else {
                        later.push(timer);
                    }
                }
                let mut fire = Vec::with_capacity(ours.len());
                let mut ready: HashMap<u32, bool> = HashMap::new();
                for (partition, timer) in ours {
                    let caught_up = match ready.get(&partition) {
                        Some(&r) => r,
                        None => {
                            let r = self.caught_up(partition, &mut stop).await;
                            ready.insert(partition, r);
                            r
                        }
                    };
                    if caught_up {
                        fire.push(timer);
                    } else {
                        later.push(timer);
                    }
                }
                let waiting = !later.is_empty();
                if waiting {
                    crate::sync::lock(&self.timers).put_back(later);
                }
                let due = fire;
                if !due.is_empty() {
                    // Fired side by side (up to 32 at once): one slow handler does not
                    // hold the others back, and a backlog after downtime does not take
                    // every connection of the store.
                    use futures_util::StreamExt as _;
                    let stopping = stop.clone();
                    futures_util::stream::iter(due)
                        .for_each_concurrent(TIMER_CONCURRENCY, |(at, key, name)| {
                            let late = u64::try_from(now_ms().saturating_sub(at)).unwrap_or(0);
                            crate::metrics::timer_fired(&self.name, Duration::from_millis(late));
                            self.fire(at, key, name, &stopping)
                        })
                        .await;
                    continue;
                }
                let wait = match next {
                    // Due timers of partitions held elsewhere: look again shortly.
                    _ if waiting => TIMERS_ELSEWHERE_LOOK,
                    None => Duration::from_secs(1),
                    Some(at) => {
                        Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0))
                            .min(Duration::from_secs(1))
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.wake.notified() => {}
                    _ = stop.changed() => {}
                }
            }
        })
    }
}
