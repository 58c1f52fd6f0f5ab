//! Given / when / then for a process manager, without a store or a bus.

use super::*;

impl<D: ProcessDefinition> ProcessTest<D> {
    /// The instance after `events` (handled as the runtime would, from a fresh state).
    pub fn given(definition: D, events: Vec<D::Event>) -> Self {
        Self {
            definition,
            given: events,
        }
    }

    /// The instance after the given events, handled by the runtime's rules: an event
    /// before a start, a second start and anything after the end change nothing.
    pub(super) async fn replay(&self) -> Result<Replayed<D>, HandlerError> {
        let mut done = Replayed::<D> {
            state: D::State::default(),
            timers: BTreeMap::new(),
            finished: false,
            key: None,
        };
        for event in &self.given {
            if !done.takes(D::event_role(event)) {
                continue;
            }
            let key = D::key(event);
            let (state, ctx) = self
                .run(&done.state, done.timers.clone(), event, &key)
                .await?;
            done.state = state;
            done.timers = ctx.timers;
            done.finished = ctx.finished;
            done.key = Some(key);
        }
        Ok(done)
    }

    pub(super) async fn run(
        &self,
        state: &D::State,
        timers: BTreeMap<String, i64>,
        event: &D::Event,
        key: &str,
    ) -> Result<(D::State, ProcessContext<D::Command, D::Timer>), HandlerError> {
        let mut state = state.clone();
        let mut ctx = ProcessContext::for_event(key.to_owned(), timers, D::event_role(event));
        self.definition.handle(&mut state, event, &mut ctx).await?;
        ctx.settle();
        Ok((state, ctx))
    }

    /// Handles `event` after the given ones, as the runtime would: an `ends_on` event
    /// finishes the instance (no timers left); an event before a start, a `starts_on`
    /// event for an instance that exists and any event after the end change nothing.
    pub async fn when(&self, event: D::Event) -> Result<Then<D>, HandlerError> {
        let done = self.replay().await?;
        if !done.takes(D::event_role(&event)) {
            let timers = timer_list::<D::Timer>(&done.timers);
            return Ok((done.state, Vec::new(), timers));
        }
        let key = D::key(&event);
        let (state, ctx) = self.run(&done.state, done.timers, &event, &key).await?;
        let set = ctx.timers_set();
        Ok((state, ctx.commands, set))
    }

    /// Fires `timer` after the given events (nothing happens to an instance that never
    /// started or has finished).
    pub async fn when_timeout(&self, timer: D::Timer) -> Result<Then<D>, HandlerError> {
        let done = self.replay().await?;
        let key = match done.key {
            Some(key) if !done.finished => key,
            _ => {
                let timers = timer_list::<D::Timer>(&done.timers);
                return Ok((done.state, Vec::new(), timers));
            }
        };
        let mut state = done.state;
        let mut ctx = ProcessContext::for_timer(key, done.timers, timer);
        self.definition
            .on_timeout(&mut state, timer, &mut ctx)
            .await?;
        ctx.settle();
        let set = ctx.timers_set();
        Ok((state, ctx.commands, set))
    }

    /// The state after the given events.
    pub async fn state(&self) -> Result<D::State, HandlerError> {
        Ok(self.replay().await?.state)
    }
}

impl<D: ProcessDefinition> Replayed<D> {
    /// Whether an event of `role` is handled, as the runtime decides.
    pub(super) fn takes(&self, role: Role) -> bool {
        !self.finished && (self.key.is_some() != (role == Role::Start))
    }
}

pub(super) fn timer_list<T: ProcessTimer>(timers: &BTreeMap<String, i64>) -> Vec<T> {
    timers
        .keys()
        .filter_map(|name| T::from_name(name))
        .collect()
}
