//! A one-line progress report on standard error for long replays and purges: only when
//! standard error is a terminal, at most five times a second, and only once the
//! operation has run for a moment (a small queue prints nothing).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use orkestra_runtime::bus::rabbitmq::Progress;

/// How often the line is redrawn, at most.
const EVERY: Duration = Duration::from_millis(200);
/// How long an operation runs before the line appears.
const AFTER: Duration = Duration::from_millis(500);

pub(crate) struct Bar {
    verb: &'static str,
    on: bool,
    started: Instant,
    drawn: Option<Instant>,
}

impl Bar {
    pub(crate) fn new(verb: &'static str) -> Self {
        Self {
            verb,
            on: std::io::stderr().is_terminal(),
            started: Instant::now(),
            drawn: None,
        }
    }

    pub(crate) fn update(&mut self, p: Progress) {
        if !self.on || self.started.elapsed() < AFTER {
            return;
        }
        if self.drawn.is_some_and(|at| at.elapsed() < EVERY) {
            return;
        }
        self.drawn = Some(Instant::now());
        let total = p.total.max(1);
        let width = 30;
        let filled = usize::try_from(p.seen.min(total) * width / total).unwrap_or(0);
        let bar: String = (0..width)
            .map(|i| if (i as usize) < filled { '#' } else { '-' })
            .collect();
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{} [{bar}] {}/{} taken, {} done",
            self.verb, p.seen, p.total, p.done
        );
        let _ = err.flush();
    }

    pub(crate) fn finish(&mut self) {
        if self.drawn.is_some() {
            let _ = writeln!(std::io::stderr());
        }
    }
}
