//! Counters of what a client did, for tests, dashboards and tuning: how often
//! transactions were rejected and re-run, how often STM `retry` waited, how
//! often the connection was re-established.
//!
//! The connection task's session machine counts; the task publishes a copy
//! after every step, and a [`Stats`] is the copy taken at one moment.

use std::sync::Mutex;

use concord_engine::session::SessionStats;

/// What a client has done since it was created: the counts of the
/// connection task's session machine (`concord_engine::session`).
pub use concord_engine::session::SessionStats as Stats;

/// The machine's counts as the handles see them: the connection task
/// publishes them after every step.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    latest: Mutex<SessionStats>,
}

impl Counters {
    /// Shows the connection task's session machine's counts to the
    /// handles.
    pub(crate) fn publish(&self, stats: &SessionStats) {
        // Plain data: a poisoned lock still holds valid counts.
        *self.latest.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = *stats;
    }

    pub(crate) fn snapshot(&self) -> Stats {
        *self.latest.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
