//! Counters of what a client did, for tests, dashboards and tuning: how often
//! transactions were rejected and re-run, how often STM `retry` waited, how
//! often the connection was re-established.
//!
//! The counters are relaxed atomics shared by the handles and the connection
//! task; a [`Stats`] is a copy taken at one moment.

use std::sync::atomic::{AtomicU64, Ordering};

use concord_engine::session::SessionStats;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) committed: AtomicU64,
    pub(crate) read_only: AtomicU64,
    pub(crate) rejections: AtomicU64,
    pub(crate) reruns: AtomicU64,
    pub(crate) stm_waits: AtomicU64,
    pub(crate) stm_wakeups: AtomicU64,
    pub(crate) blocked_waits: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) disconnects: AtomicU64,
    pub(crate) resyncs: AtomicU64,
    pub(crate) server_errors: AtomicU64,
}

impl Counters {
    /// Shows the connection task's session machine's counts to the
    /// handles.
    pub(crate) fn publish(&self, stats: &SessionStats) {
        let set = |counter: &AtomicU64, value: u64| counter.store(value, Ordering::Relaxed);
        set(&self.committed, stats.committed);
        set(&self.read_only, stats.read_only);
        set(&self.rejections, stats.rejections);
        set(&self.reruns, stats.reruns);
        set(&self.stm_waits, stats.stm_waits);
        set(&self.stm_wakeups, stats.stm_wakeups);
        set(&self.blocked_waits, stats.blocked_waits);
        set(&self.connects, stats.connects);
        set(&self.disconnects, stats.disconnects);
        set(&self.resyncs, stats.resyncs);
        set(&self.server_errors, stats.server_errors);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            committed: get(&self.committed),
            read_only: get(&self.read_only),
            rejections: get(&self.rejections),
            reruns: get(&self.reruns),
            stm_waits: get(&self.stm_waits),
            stm_wakeups: get(&self.stm_wakeups),
            blocked_waits: get(&self.blocked_waits),
            connects: get(&self.connects),
            disconnects: get(&self.disconnects),
            resyncs: get(&self.resyncs),
            server_errors: get(&self.server_errors),
        }
    }
}

/// What a client has done since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Transactions that committed on the server.
    pub committed: u64,
    /// Transactions that wrote nothing and returned locally.
    pub read_only: u64,
    /// Rejections received for this client's transactions.
    pub rejections: u64,
    /// Re-runs of a transaction function after a retryable rejection.
    pub reruns: u64,
    /// Runs that called STM `retry()` and waited for a change.
    pub stm_waits: u64,
    /// Waits ended by a change to something the run had read.
    pub stm_wakeups: u64,
    /// Runs that read another pending transaction's writes and waited for
    /// it to resolve.
    pub blocked_waits: u64,
    /// Sessions established, the first one included.
    pub connects: u64,
    /// Sessions lost (not counting `Client::close`).
    pub disconnects: u64,
    /// Documents whose replica was replaced by a snapshot after it had been
    /// loaded (a server resync, missing history, or a replica error).
    pub resyncs: u64,
    /// `error` messages received from the server.
    pub server_errors: u64,
}
