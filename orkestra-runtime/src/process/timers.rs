//! The timer index: every pending timer of a process manager as its steps left them,
//! in due order.

use super::*;

impl TimerIndex {
    /// Takes in a step (newer than the one known for its key).
    pub(super) fn record(
        &mut self,
        key: &str,
        version: u64,
        timers: &BTreeMap<String, i64>,
        finished: bool,
    ) {
        if let Some((known, _)) = self.instances.get(key)
            && *known >= version
        {
            return;
        }
        // Only instances with timers are kept, so the index is as large as what is
        // pending. An older step read again later (the feed behind the start-up scan)
        // may bring a timer back: firing reads the instance first and drops it.
        let before = if finished || timers.is_empty() {
            self.instances.remove(key)
        } else {
            for (name, due) in timers {
                self.heap
                    .push(Reverse((*due, key.to_owned(), name.clone())));
            }
            self.live += timers.len();
            self.instances
                .insert(key.to_owned(), (version, timers.clone()))
        };
        if let Some((_, old)) = before {
            self.live -= old.len();
        }
        // Cleared timers stay in the heap until they come due: rebuild it when they
        // outnumber the live ones.
        if self.heap.len() > 2 * self.live + 1024 {
            self.heap = self
                .instances
                .iter()
                .flat_map(|(key, (_, timers))| {
                    timers
                        .iter()
                        .map(|(name, due)| Reverse((*due, key.clone(), name.clone())))
                })
                .collect();
        }
    }

    /// Whether `(key, name)` is still set to fire at `due`.
    pub(super) fn is_current(&self, key: &str, name: &str, due: i64) -> bool {
        self.instances
            .get(key)
            .is_some_and(|(_, timers)| timers.get(name) == Some(&due))
    }

    /// The next due time of a current timer (stale heap entries are dropped on the way).
    pub(super) fn next_due(&mut self) -> Option<i64> {
        while let Some(Reverse((due, key, name))) = self.heap.peek() {
            if self.is_current(key, name, *due) {
                return Some(*due);
            }
            self.heap.pop();
        }
        None
    }

    /// Puts back timers taken due but not fired here (another copy holds them).
    pub(super) fn put_back(&mut self, timers: Vec<(i64, String, String)>) {
        for timer in timers {
            self.heap.push(Reverse(timer));
        }
    }

    /// The current timers due at `now`, removed from the heap.
    pub(super) fn take_due(&mut self, now: i64) -> Vec<(i64, String, String)> {
        let mut due = Vec::new();
        while self
            .heap
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= now)
        {
            let Some(Reverse(entry)) = self.heap.pop() else {
                break;
            };
            if self.is_current(&entry.1, &entry.2, entry.0) {
                due.push(entry);
            } else {
                tracing::debug!(
                    orkestra = "process",
                    key = entry.1,
                    timer = entry.2,
                    "timer cleared, set again, or its instance finished; dropped"
                );
            }
        }
        due
    }
}
