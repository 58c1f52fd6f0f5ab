//! The progress bar of long replays, purges and reindexing runs, on standard error (indicatif): only when
//! standard error is a terminal (in a pipe, a log or CI nothing is drawn, so no escape
//! codes and no carriage returns land there), at most five times a second, and only once
//! the operation has run for a moment (a small queue shows nothing).

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use orkestra_runtime::bus::rabbitmq::Progress;

/// How long an operation runs before the bar appears.
const AFTER: Duration = Duration::from_millis(500);
/// Redraws per second, at most.
const HZ: u8 = 5;
/// `replaying [##########--------------------] 40/120 taken, 38 done`
const TEMPLATE: &str = "{prefix} [{bar:30}] {pos}/{len} taken, {msg} done";
/// `reindexing [##########--------------------] 4000/12000 events`
const COUNT_TEMPLATE: &str = "{prefix} [{bar:30}] {pos}/{len} events";

pub(crate) struct Bar {
    verb: &'static str,
    template: &'static str,
    /// Where the bar draws once it appears: standard error, hidden when it is no
    /// terminal.
    target: Option<ProgressDrawTarget>,
    started: Instant,
    bar: Option<ProgressBar>,
}

impl Bar {
    /// A bar on standard error.
    pub(crate) fn new(verb: &'static str) -> Self {
        Self::to(verb, ProgressDrawTarget::stderr_with_hz(HZ))
    }

    /// A bar of events done out of a total, on standard error.
    pub(crate) fn events(verb: &'static str) -> Self {
        Self {
            template: COUNT_TEMPLATE,
            ..Self::new(verb)
        }
    }

    fn to(verb: &'static str, target: ProgressDrawTarget) -> Self {
        Self {
            verb,
            template: TEMPLATE,
            target: Some(target),
            started: Instant::now(),
            bar: None,
        }
    }

    pub(crate) fn update(&mut self, p: Progress) {
        self.show(p.seen, p.total, p.done);
    }

    /// `done` of `total` (a bar made by [`events`](Self::events)).
    pub(crate) fn count(&mut self, done: u64, total: u64) {
        self.show(done, total, done);
    }

    /// `seen` letters taken of `total`, `done` settled.
    fn show(&mut self, seen: u64, total: u64, done: u64) {
        if self.bar.is_none() {
            if self.started.elapsed() < AFTER {
                return;
            }
            let Some(target) = self.target.take() else {
                return;
            };
            let style = ProgressStyle::with_template(self.template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("#-");
            let bar = ProgressBar::with_draw_target(Some(total), target)
                .with_style(style)
                .with_prefix(self.verb);
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            bar.set_length(total.max(seen));
            bar.set_message(done.to_string());
            bar.set_position(seen);
        }
    }

    /// Leaves the last state drawn, on a line of its own.
    pub(crate) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use indicatif::TermLike;

    use super::*;

    /// A terminal that records what is drawn on it.
    #[derive(Clone, Debug, Default)]
    struct Screen(Arc<Mutex<Vec<String>>>);

    impl Screen {
        fn lines(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            120
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, line: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push(line.to_owned());
            Ok(())
        }
        fn write_str(&self, text: &str) -> std::io::Result<()> {
            if !text.is_empty() {
                self.0.lock().unwrap().push(text.to_owned());
            }
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn nothing_is_drawn_before_the_operation_ran_for_a_moment() {
        let screen = Screen::default();
        let mut bar = Bar::to(
            "purging",
            ProgressDrawTarget::term_like(Box::new(screen.clone())),
        );
        bar.show(1, 10, 1);
        bar.finish();
        assert!(screen.lines().is_empty(), "{:?}", screen.lines());
    }

    #[test]
    fn a_count_bar_draws_events_done_of_the_total() {
        let screen = Screen::default();
        let mut bar = Bar {
            template: COUNT_TEMPLATE,
            ..Bar::to(
                "reindexing",
                ProgressDrawTarget::term_like(Box::new(screen.clone())),
            )
        };
        bar.started -= AFTER;
        bar.count(4000, 12000);
        bar.finish();
        let drawn = screen.lines().join("\n");
        assert!(
            drawn.contains("reindexing [##########--------------------] 4000/12000 events"),
            "{drawn}"
        );
    }

    #[test]
    fn a_long_operation_draws_the_bar_with_its_counts() {
        let screen = Screen::default();
        let mut bar = Bar::to(
            "replaying",
            ProgressDrawTarget::term_like(Box::new(screen.clone())),
        );
        bar.started -= AFTER;
        bar.show(40, 120, 38);
        bar.finish();
        let drawn = screen.lines().join("\n");
        assert!(
            drawn.contains("replaying [##########--------------------] 40/120 taken, 38 done"),
            "{drawn}"
        );
    }
}
