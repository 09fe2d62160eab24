//! Jittered exponential backoff between reconnection attempts.
//!
//! Each delay is drawn uniformly from the upper half of the current ceiling
//! ("equal jitter"): never zero, so a failing server is not hammered, and
//! random enough that clients which lost the server together do not come
//! back together. (Re-running rejected transactions paces itself
//! differently; see `contention`.)

use std::time::Duration;

use rand::Rng;

/// Most doublings of the ceiling; past this the ceiling stays at `max` anyway
/// and the shift would overflow.
const DOUBLINGS_MAX: u32 = 20;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max: max.max(initial), failures: 0 }
    }

    /// The delay before the next attempt; each call doubles the ceiling.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling =
            self.initial.saturating_mul(1 << self.failures.min(DOUBLINGS_MAX)).min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        let jitter_ns =
            rand::thread_rng().gen_range(0..=half.as_nanos().min(u64::MAX as u128) as u64);
        half + Duration::from_nanos(jitter_ns)
    }

    /// Starts over after a success.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_ceiling_and_stay_within_it() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        let first = backoff.next_delay();
        assert!(first >= Duration::from_millis(5) && first <= Duration::from_millis(10));
        for _ in 0..50 {
            let delay = backoff.next_delay();
            assert!(delay <= Duration::from_millis(100));
        }
        let late = backoff.next_delay();
        assert!(late >= Duration::from_millis(50), "{late:?}");
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(10));
    }
}
