//! Contention management for `transact`: how long a transaction pauses
//! before it runs, shared by all of one client's transactions on one
//! document.
//!
//! Per-transaction exponential backoff alone is unfair under contention: a
//! client whose transaction just committed starts its next one at once, on
//! a replica that is current, while the clients it beat sit in ever longer
//! pauses; the winner keeps winning and the others starve. So the pause is
//! driven by a *contention level* per document instead: each rejection
//! raises it, each commit lowers it, and idle time lets it decay. While it is
//! above zero every run that could be submitted — a first run as much as a
//! re-run after a rejection — waits a uniformly random pause within a window
//! of `round trip · 2^level`. Under steady contention all contenders thus
//! draw from the same window, and a quiet document costs no pause at all.
//!
//! The window is measured in round trips (a moving average of how long this
//! client's transactions on the document took to be answered) because a
//! collision is two commits landing within one round trip of each other:
//! fixed windows that suit a fast server are far too narrow for a loaded
//! one.

use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// Highest contention level: a window of at most 32 round trips, room for
/// about as many contenders. More contenders cost more rejections rather
/// than ever longer pauses.
const LEVEL_MAX: u32 = 5;
/// Idle round trips that lower the contention level by one.
const DECAY_ROUND_TRIPS: u32 = 64;
/// Idle time that lowers the contention level by one, at least.
const DECAY_MIN: Duration = Duration::from_millis(250);
/// Weight of a new round-trip sample in the moving average, as 1/N.
const ROUND_TRIP_SMOOTHING: u32 = 4;

#[derive(Debug, Default)]
pub(crate) struct Contention {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    level: u32,
    updated: Instant,
    round_trip: Duration,
}

impl Default for State {
    fn default() -> Self {
        Self { level: 0, updated: Instant::now(), round_trip: Duration::ZERO }
    }
}

impl Contention {
    /// The pause before a run, if the document is contended: random within
    /// `max(round trip, initial) · 2^level`, at most `max`.
    pub(crate) fn pause(&self, initial: Duration, max: Duration) -> Option<Duration> {
        let (level, round_trip) = self.update(None, |level| level);
        if level == 0 {
            return None;
        }
        let window = round_trip.max(initial).saturating_mul(1 << level).min(max);
        let nanos = window.as_nanos().min(u128::from(u64::MAX)) as u64;
        Some(Duration::from_nanos(rand::thread_rng().gen_range(0..=nanos)))
    }

    /// A submitted run was rejected `round_trip` after it started.
    pub(crate) fn on_rejected(&self, round_trip: Duration) {
        self.update(Some(round_trip), |level| (level + 1).min(LEVEL_MAX));
    }

    /// A submitted run committed `round_trip` after it started.
    pub(crate) fn on_committed(&self, round_trip: Duration) {
        self.update(Some(round_trip), |level| level.saturating_sub(1));
    }

    /// Applies the idle decay, folds in a round-trip sample, then `change`;
    /// returns the new level and round trip.
    fn update(&self, sample: Option<Duration>, change: impl FnOnce(u32) -> u32) -> (u32, Duration) {
        // The lock is held for a few instructions and never across an await;
        // a poisoned lock only means another thread panicked in between,
        // which leaves this plain state valid.
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let decay = state.round_trip.saturating_mul(DECAY_ROUND_TRIPS).max(DECAY_MIN);
        let idle = now.saturating_duration_since(state.updated);
        let decayed = (idle.as_nanos() / decay.as_nanos()).min(u128::from(LEVEL_MAX)) as u32;
        if decayed > 0 {
            state.level = state.level.saturating_sub(decayed);
        }
        if let Some(sample) = sample {
            state.round_trip = if state.round_trip.is_zero() {
                sample
            } else {
                (state.round_trip * (ROUND_TRIP_SMOOTHING - 1) + sample) / ROUND_TRIP_SMOOTHING
            };
            state.updated = now;
        } else if decayed > 0 {
            state.updated = now;
        }
        state.level = change(state.level);
        (state.level, state.round_trip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_document_costs_no_pause_and_rejections_widen_the_window() {
        let contention = Contention::default();
        let (initial, max) = (Duration::from_millis(1), Duration::from_millis(8));
        assert_eq!(contention.pause(initial, max), None);
        for _ in 0..10 {
            contention.on_rejected(Duration::from_millis(2));
        }
        for _ in 0..100 {
            let pause = contention.pause(initial, max).unwrap();
            assert!(pause <= max);
        }
        for _ in 0..10 {
            contention.on_committed(Duration::from_millis(2));
        }
        assert_eq!(contention.pause(initial, max), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_level_decays_while_idle() {
        let contention = Contention::default();
        contention.on_rejected(Duration::from_millis(1));
        contention.on_rejected(Duration::from_millis(1));
        assert!(contention.pause(Duration::from_millis(1), Duration::from_secs(1)).is_some());
        tokio::time::advance(DECAY_MIN * 2).await;
        assert_eq!(contention.pause(Duration::from_millis(1), Duration::from_secs(1)), None);
    }
}
