//! The daemon's only source of time. Production reads the system clock; tests and demos use a
//! manual clock that moves only when told, so months of billing pass in seconds. SQL never reads a clock of its own.

use std::sync::RwLock;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use tokio::sync::watch;

pub trait Clock: Send + Sync + 'static {
    /// The current instant, truncated to whole milliseconds (the precision instants are stored at).
    fn now(&self) -> DateTime<Utc>;
}

/// Truncates to milliseconds so an instant survives a round trip through the database unchanged.
pub fn to_millis_precision(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::milliseconds(1)).unwrap_or(t)
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        to_millis_precision(Utc::now())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClockError {
    #[error("the clock cannot go back: {to} is before the current time {now}")]
    Backwards {
        now: DateTime<Utc>,
        to: DateTime<Utc>,
    },
}

/// A clock that stands still until advanced. Subscribers learn of every advance at once.
#[derive(Debug)]
pub struct ManualClock {
    now: RwLock<DateTime<Utc>>,
    changed: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        let start = to_millis_precision(start);
        let (changed, _) = watch::channel(start);
        ManualClock {
            now: RwLock::new(start),
            changed,
        }
    }

    /// Moves the clock forward to `to`; moving backwards is refused and changes nothing.
    pub fn advance_to(&self, to: DateTime<Utc>) -> Result<DateTime<Utc>, ClockError> {
        let to = to_millis_precision(to);
        let mut guard = self.now.write().unwrap_or_else(|e| e.into_inner());
        if to < *guard {
            return Err(ClockError::Backwards { now: *guard, to });
        }
        *guard = to;
        drop(guard);
        self.changed.send_replace(to);
        Ok(to)
    }

    /// Every advance is published here, so the scheduler can look for due work at once.
    pub fn subscribe(&self) -> watch::Receiver<DateTime<Utc>> {
        self.changed.subscribe()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_forward() {
        let start = "2027-01-01T00:00:00Z".parse().unwrap();
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        let later = "2027-02-01T00:00:00Z".parse().unwrap();
        clock.advance_to(later).unwrap();
        assert_eq!(clock.now(), later);
        assert!(clock.advance_to(start).is_err());
        assert_eq!(clock.now(), later);
    }

    #[test]
    fn system_clock_has_millisecond_precision() {
        let now = SystemClock.now();
        assert_eq!(now.timestamp_subsec_nanos() % 1_000_000, 0);
    }
}
