//! [`Lifecycle`]: whether a bus is running or shutting down, and what is still in flight,
//! for [`Bus::shutdown`](super::Bus::shutdown) and `HandlerContext::cancelled`.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::BusError;

/// The shutdown signal (`Some(deadline)` once shutdown started) and the count of
/// operations in flight.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    stop: watch::Sender<Option<Instant>>,
    in_flight: AtomicUsize,
    idle: Notify,
    /// Whether a handler was stopped by the deadline (RabbitMQ).
    #[cfg(feature = "rabbitmq")]
    cut_off: std::sync::atomic::AtomicBool,
}

/// One operation in flight; dropping it ends it.
pub(crate) struct InFlight<'a>(&'a Lifecycle);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            stop: watch::channel(None).0,
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            #[cfg(feature = "rabbitmq")]
            cut_off: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Lifecycle {
    /// Starts an operation; [`BusError::Closed`] once shutdown started.
    pub(crate) fn enter(&self) -> Result<InFlight<'_>, BusError> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self);
        if self.stop.borrow().is_some() {
            return Err(BusError::Closed);
        }
        Ok(guard)
    }

    /// Starts an operation whatever the state (one a running handler asked for).
    pub(crate) fn enter_always(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self)
    }

    /// Records that the deadline stopped a handler.
    #[cfg(feature = "rabbitmq")]
    pub(crate) fn record_cut_off(&self) {
        self.cut_off.store(true, Ordering::SeqCst);
    }

    /// Whether the deadline stopped a handler.
    #[cfg(feature = "rabbitmq")]
    pub(crate) fn cut_off(&self) -> bool {
        self.cut_off.load(Ordering::SeqCst)
    }

    /// Whether shutdown started.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stop.borrow().is_some()
    }

    /// The shutdown signal.
    pub(crate) fn signal(&self) -> watch::Receiver<Option<Instant>> {
        self.stop.subscribe()
    }

    /// Starts shutdown with this deadline (the first call's deadline stays).
    pub(crate) fn begin(&self, deadline: Instant) {
        self.stop.send_if_modified(|stop| {
            if stop.is_none() {
                *stop = Some(deadline);
                true
            } else {
                false
            }
        });
    }

    /// Waits until nothing is in flight or the deadline passed; `true` if drained.
    pub(crate) async fn drained(&self, deadline: Instant) -> bool {
        loop {
            let idle = self.idle.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.in_flight.load(Ordering::SeqCst) == 0;
            }
        }
    }
}
