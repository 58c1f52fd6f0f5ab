//! What a process manager's handler receives: the instance's key, the commands it
//! dispatches, the timers it sets and clears, whether it finished.

use super::*;

impl<C, T: ProcessTimer> fmt::Debug for ProcessContext<C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessContext")
            .field("key", &self.key)
            .field("commands", &self.commands.len())
            .field("timers", &self.timers)
            .field("finished", &self.finished)
            .finish()
    }
}

impl<C, T: ProcessTimer> ProcessContext<C, T> {
    pub(super) fn new(key: String, timers: BTreeMap<String, i64>, now: DateTime<Utc>) -> Self {
        Self {
            key,
            commands: Vec::new(),
            timers,
            now,
            finished: false,
            _timer: PhantomData,
        }
    }

    /// The context an event of `role` is handled in: an `ends_on` event finishes.
    pub(super) fn for_event(key: String, timers: BTreeMap<String, i64>, role: Role) -> Self {
        let mut ctx = Self::new(key, timers, Utc::now());
        ctx.finished = role == Role::End;
        ctx
    }

    /// The context `timer` fires in: it is no longer set.
    pub(super) fn for_timer(key: String, mut timers: BTreeMap<String, i64>, timer: T) -> Self {
        timers.remove(timer.name());
        Self::new(key, timers, Utc::now())
    }

    /// After the handler: a finished instance keeps no timers.
    pub(super) fn settle(&mut self) {
        if self.finished {
            self.timers.clear();
        }
    }

    /// This instance's `correlate_by` value.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Dispatches a command once this step is recorded.
    pub fn dispatch(&mut self, command: C) {
        self.commands.push(command);
    }

    /// Sets `timer` to fire its duration from now (replacing it if it was set).
    pub fn set_timer(&mut self, timer: T) {
        let after = chrono::Duration::from_std(timer.after()).unwrap_or(chrono::Duration::MAX);
        let due = self
            .now
            .checked_add_signed(after)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.timers
            .insert(timer.name().to_owned(), due.timestamp_millis());
    }

    /// Clears `timer` (nothing happens if it is not set).
    pub fn clear_timer(&mut self, timer: T) {
        self.timers.remove(timer.name());
    }

    /// Whether `timer` is set.
    pub fn is_set(&self, timer: T) -> bool {
        self.timers.contains_key(timer.name())
    }

    /// When `timer` fires, if it is set.
    pub fn due(&self, timer: T) -> Option<DateTime<Utc>> {
        self.timers
            .get(timer.name())
            .and_then(|ms| DateTime::from_timestamp_millis(*ms))
    }

    /// Finishes the instance once this step is recorded: later events are ignored and
    /// its timers are dropped.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Whether [`finish`](Self::finish) was called (or the event is in `ends_on`).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The commands dispatched so far in this step.
    pub fn commands(&self) -> &[C] {
        &self.commands
    }

    pub(super) fn timers_set(&self) -> Vec<T> {
        timer_list(&self.timers)
    }
}
