//! The time the time-driven controllers (job, cronjob, ttl-after-finished) read: the system
//! clock, or a fake one that tests set and advance.

use std::sync::{Arc, Mutex};

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> jiff::Timestamp;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
    }
}

/// A clock that stands still until it is set or advanced (tests).
#[derive(Debug, Clone)]
pub struct FakeClock(Arc<Mutex<jiff::Timestamp>>);

impl FakeClock {
    /// A clock at `t`.
    pub fn new(t: jiff::Timestamp) -> Self {
        FakeClock(Arc::new(Mutex::new(t)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, jiff::Timestamp> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the time.
    pub fn set(&self, t: jiff::Timestamp) {
        *self.lock() = t;
    }

    /// Moves the time forward by `d`.
    pub fn advance(&self, d: std::time::Duration) {
        let mut t = self.lock();
        let step = jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX);
        *t = t.saturating_add(step).unwrap_or(*t);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> jiff::Timestamp {
        *self.lock()
    }
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The system clock, shared.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_moves_only_when_told() {
        let t: jiff::Timestamp = "2024-03-01T10:00:00Z".parse().expect("ts");
        let c = FakeClock::new(t);
        assert_eq!(c.now(), t);
        c.advance(std::time::Duration::from_secs(90));
        assert_eq!(c.now().to_string(), "2024-03-01T10:01:30Z");
        c.set(t);
        assert_eq!(c.now(), t);
    }
}
