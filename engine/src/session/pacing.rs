//! Pacing: when a transaction may run, and when the client reconnects.
//!
//! ## Contention pacing
//! Per-transaction exponential backoff alone is unfair under contention: a
//! client whose transaction just committed starts its next one at once, on
//! a replica that is current, while the clients it beat sit in ever longer
//! pauses; the winner keeps winning and the others starve. So the pause is
//! driven by a *contention level* per document, shared by all of one
//! client's transactions on it: each rejection raises it, each commit
//! lowers it, and idle time lets it decay. While it is above zero every
//! re-run after a rejection waits a uniformly random pause within a window
//! of `max(round trip, initial) · 2^level`. Under steady contention all
//! contenders thus draw from the same window, and a quiet document costs no
//! pause at all.
//!
//! A first run is not paused. Pausing it too (as this module once did)
//! left clients idle that had nothing to retry: 32 clients incrementing one
//! counter through read-modify-write managed about 1,000 commits/s at 2.2–2.5
//! runs per commit; with first runs at once and a window of at least 10 ms,
//! 2,100–2,950 commits/s at 1.1 runs per commit, and the longest any one
//! increment took (18–20 runs) stays far inside the attempts a transaction
//! is given (docs/benchmarks.md, "One core").
//!
//! The window is measured in round trips (a moving average of how long this
//! client's transactions on the document took to be answered) because a
//! collision is two commits landing within one round trip of each other:
//! fixed windows that suit a fast server are far too narrow for a loaded
//! one. Its floor (`transact_backoff_initial`, 10 ms) keeps a fast local
//! server's sub-millisecond round trips from shrinking it below the time a
//! change takes to reach every contender.

use std::time::Duration;

use super::rng::SessionRng;
use crate::time::Time;

/// Highest contention level: a window of at most 32 round trips, room for
/// about as many contenders. More contenders cost more rejections rather
/// than ever longer pauses.
pub const CONTENTION_LEVEL_MAX: u32 = 5;
/// Idle round trips that lower the contention level by one.
const DECAY_ROUND_TRIPS: u32 = 64;
/// Idle time that lowers the contention level by one, at least.
const DECAY_MIN: Duration = Duration::from_millis(250);
/// Weight of a new round-trip sample in the moving average, as 1/N.
const ROUND_TRIP_SMOOTHING: u32 = 4;

/// One document's contention, as this client has seen it.
#[derive(Debug, Clone, Default)]
pub struct Contention {
    level: u32,
    updated: Time,
    round_trip: Duration,
}

impl Contention {
    /// The pause before a run at `now`, if the document is contended: random
    /// within `max(round trip, initial) · 2^level`, at most `max`.
    pub fn pause(
        &mut self,
        now: Time,
        initial: Duration,
        max: Duration,
        rng: &mut SessionRng,
    ) -> Option<Duration> {
        self.decay(now);
        if self.level == 0 {
            return None;
        }
        let window = self.round_trip.max(initial).saturating_mul(1 << self.level).min(max);
        let micros = u32::try_from(window.as_micros()).unwrap_or(u32::MAX);
        Some(Duration::from_micros(u64::from(rng.up_to(micros))))
    }

    /// A submitted run was rejected at `now`, `round_trip` after it started.
    pub fn on_rejected(&mut self, now: Time, round_trip: Duration) {
        self.sample(now, round_trip);
        self.level = (self.level + 1).min(CONTENTION_LEVEL_MAX);
    }

    /// A submitted run committed at `now`, `round_trip` after it started.
    pub fn on_committed(&mut self, now: Time, round_trip: Duration) {
        self.sample(now, round_trip);
        self.level = self.level.saturating_sub(1);
    }

    /// The current level (for tests and statistics).
    pub fn level(&self) -> u32 {
        self.level
    }

    fn sample(&mut self, now: Time, sample: Duration) {
        self.decay(now);
        self.round_trip = if self.round_trip.is_zero() {
            sample
        } else {
            (self.round_trip * (ROUND_TRIP_SMOOTHING - 1) + sample) / ROUND_TRIP_SMOOTHING
        };
        self.updated = now;
    }

    /// Lowers the level by one per decay period idle since the last update.
    fn decay(&mut self, now: Time) {
        let period = self.round_trip.saturating_mul(DECAY_ROUND_TRIPS).max(DECAY_MIN);
        let idle = now.saturating_since(self.updated);
        let periods = (idle.as_micros() / period.as_micros()).min(u128::from(CONTENTION_LEVEL_MAX));
        if periods > 0 {
            // At most CONTENTION_LEVEL_MAX, so the cast is exact.
            self.level = self.level.saturating_sub(periods as u32);
            self.updated = now;
        }
    }
}

/// Most doublings of a backoff's ceiling, so it cannot overflow.
const DOUBLINGS_MAX: u32 = 20;

/// Jittered exponential backoff for reconnecting: each delay is drawn from
/// the upper half of a ceiling that doubles per failure up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max: max.max(initial), failures: 0 }
    }

    pub fn next_delay(&mut self, rng: &mut SessionRng) -> Duration {
        let ceiling =
            self.initial.saturating_mul(1 << self.failures.min(DOUBLINGS_MAX)).min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        let micros = u32::try_from(half.as_micros()).unwrap_or(u32::MAX);
        half + Duration::from_micros(u64::from(rng.up_to(micros)))
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_quiet_document_costs_no_pause_and_rejections_widen_the_window() {
        let mut rng = SessionRng::new(3);
        let mut contention = Contention::default();
        let now = Time::from_millis(1);
        assert_eq!(contention.pause(now, MS, 8 * MS, &mut rng), None);
        for _ in 0..10 {
            contention.on_rejected(now, 2 * MS);
        }
        assert_eq!(contention.level(), CONTENTION_LEVEL_MAX);
        let pauses: Vec<Duration> =
            (0..100).map(|_| contention.pause(now, MS, 8 * MS, &mut rng).unwrap()).collect();
        assert!(pauses.iter().all(|pause| *pause <= 8 * MS));
        assert!(pauses.iter().any(|pause| *pause > 4 * MS), "draws span the window");
        for _ in 0..10 {
            contention.on_committed(now, 2 * MS);
        }
        assert_eq!(contention.pause(now, MS, 8 * MS, &mut rng), None);
    }

    #[test]
    fn the_level_decays_while_idle() {
        let mut rng = SessionRng::new(3);
        let mut contention = Contention::default();
        contention.on_rejected(Time::ZERO, MS);
        contention.on_rejected(Time::ZERO, MS);
        assert!(contention.pause(Time::ZERO, MS, 1000 * MS, &mut rng).is_some());
        let later = Time::ZERO + DECAY_MIN * 2;
        assert_eq!(contention.pause(later, MS, 1000 * MS, &mut rng), None);
    }

    #[test]
    fn backoff_delays_grow_to_the_ceiling_and_stay_within_it() {
        let mut rng = SessionRng::new(5);
        let mut backoff = Backoff::new(10 * MS, 100 * MS);
        let first = backoff.next_delay(&mut rng);
        assert!(first >= 5 * MS && first <= 10 * MS, "{first:?}");
        for _ in 0..50 {
            assert!(backoff.next_delay(&mut rng) <= 100 * MS);
        }
        assert!(backoff.next_delay(&mut rng) >= 50 * MS);
        backoff.reset();
        assert!(backoff.next_delay(&mut rng) <= 10 * MS);
    }
}
