//! Prometheus metrics, served as text at `/metrics`.
//!
//! Each server owns its own registry (not the process-global one) so that
//! several servers in one test process do not mix their numbers. Metrics are
//! cheap atomic counters updated by whichever task sees the event; labels are
//! bounded sets (error codes, rejection reasons, close reasons), never
//! session or document ids.

use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// All of a server's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket sessions.
    pub sessions: IntGauge,
    /// Sessions ever opened.
    pub sessions_opened: IntCounter,
    /// Sessions closed, by reason (`client`, `slow_consumer`, `peer_timeout`,
    /// `shutdown`, `transport`, `message_too_big`, `storage_failed`).
    pub sessions_closed: IntCounterVec,
    /// Transactions committed (new versions and write-less commits).
    pub commits: IntCounter,
    /// Transactions rejected, by reason (`conflict`, `stale`, `base_ahead`,
    /// `patch`, `too_large`, `outcome_unknown`, `forbidden`, `invalid`,
    /// `vetoed`).
    pub rejections: IntCounterVec,
    /// Commit guards that panicked or overran their time budget, by kind
    /// (`panicked`, `overran`); each vetoed its commit.
    pub guard_failures: IntCounterVec,
    /// Resubmitted transaction ids answered with their original outcome.
    pub duplicates: IntCounter,
    /// From reading a `commit` to queueing its acknowledgement (with
    /// storage, this includes waiting for the commit to be durable).
    pub commit_latency: Histogram,
    /// Errors sent to clients, by code.
    pub client_errors: IntCounterVec,
    /// Refused authentications, by reason (`invalid`, `expired`, `rate_limited`).
    pub auth_failures: IntCounterVec,
    /// Bytes currently waiting in all sessions' outbound queues.
    pub outbound_queued_bytes: IntGauge,
    /// The most bytes any one session's outbound queue has held.
    pub outbound_queue_high_water_bytes: IntGauge,
    high_water: std::sync::Arc<AtomicUsize>,
    /// Outbound queue overflows (each closes its session with 4001).
    pub outbound_overflows: IntCounter,
    /// Messages delivered to topic subscribers.
    pub pubsub_deliveries: IntCounter,
    /// RPC calls received (server procedures and routed calls).
    pub rpc_calls: IntCounter,
    /// TLS handshakes that failed or timed out (each ends only its own
    /// connection).
    pub tls_handshake_failures: IntCounter,
    /// Group commits: SQLite transactions appended to the log.
    pub storage_group_commits: IntCounter,
    /// Group commits that were fsynced (all of them with `--sync full`).
    pub storage_fsyncs: IntCounter,
    /// Commits per group commit.
    pub storage_batch_commits: Histogram,
    /// Time to write and sync one group commit.
    pub storage_append_latency: Histogram,
    /// Snapshots saved, and snapshot rounds that failed (not fatal: the log
    /// still has everything).
    pub storage_snapshots: IntCounter,
    pub storage_snapshot_failures: IntCounter,
    /// 1 once an append failed and acknowledgements stopped.
    pub storage_failed: IntGauge,
    /// How long the last start spent recovering (read + replay), and how many
    /// logged changes it replayed.
    pub recovery_seconds: Gauge,
    pub recovery_replayed_commits: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric. Fails only if a metric definition
    /// above is malformed (a programming error the first test catches).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let sessions = IntGauge::new("concord_sessions", "Open WebSocket sessions.")?;
        let sessions_opened =
            IntCounter::new("concord_sessions_opened_total", "Sessions ever opened.")?;
        let sessions_closed = IntCounterVec::new(
            Opts::new("concord_sessions_closed_total", "Sessions closed, by reason."),
            &["reason"],
        )?;
        let commits = IntCounter::new("concord_commits_total", "Transactions committed.")?;
        let rejections = IntCounterVec::new(
            Opts::new("concord_rejections_total", "Transactions rejected, by reason."),
            &["reason"],
        )?;
        let guard_failures = IntCounterVec::new(
            Opts::new(
                "concord_guard_failures_total",
                "Commit guards that panicked or overran their time budget, by kind.",
            ),
            &["kind"],
        )?;
        let duplicates = IntCounter::new(
            "concord_duplicate_commits_total",
            "Resubmitted transactions answered with their original outcome.",
        )?;
        let commit_latency = Histogram::with_opts(
            HistogramOpts::new(
                "concord_commit_latency_seconds",
                "From reading a commit to queueing its acknowledgement.",
            )
            .buckets(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 1.0,
            ]),
        )?;
        let client_errors = IntCounterVec::new(
            Opts::new("concord_client_errors_total", "Errors sent to clients, by code."),
            &["code"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "concord_auth_failures_total",
                "Refused authentications (sessions and HTTP), by reason.",
            ),
            &["reason"],
        )?;
        let outbound_queued_bytes = IntGauge::new(
            "concord_outbound_queued_bytes",
            "Bytes waiting in all sessions' outbound queues.",
        )?;
        let outbound_queue_high_water_bytes = IntGauge::new(
            "concord_outbound_queue_high_water_bytes",
            "The most bytes any one session's outbound queue has held.",
        )?;
        let outbound_overflows = IntCounter::new(
            "concord_outbound_overflows_total",
            "Outbound queue overflows; each closes its session (4001).",
        )?;
        let pubsub_deliveries = IntCounter::new(
            "concord_pubsub_deliveries_total",
            "Messages delivered to subscribers.",
        )?;
        let rpc_calls = IntCounter::new("concord_rpc_calls_total", "RPC calls received.")?;
        let tls_handshake_failures = IntCounter::new(
            "concord_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out.",
        )?;
        let storage_group_commits = IntCounter::new(
            "concord_storage_group_commits_total",
            "Group commits: transactions appended to the commit log.",
        )?;
        let storage_fsyncs = IntCounter::new(
            "concord_storage_fsyncs_total",
            "Group commits made durable with an fsync (--sync full).",
        )?;
        let storage_batch_commits = Histogram::with_opts(
            HistogramOpts::new("concord_storage_batch_commits", "Commits per group commit.")
                .buckets(vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
                ]),
        )?;
        let storage_append_latency = Histogram::with_opts(
            HistogramOpts::new(
                "concord_storage_append_latency_seconds",
                "Time to write and sync one group commit.",
            )
            .buckets(vec![
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                1.0,
            ]),
        )?;
        let storage_snapshots =
            IntCounter::new("concord_storage_snapshots_total", "Document snapshots saved.")?;
        let storage_snapshot_failures = IntCounter::new(
            "concord_storage_snapshot_failures_total",
            "Snapshot rounds that failed (the log still holds everything).",
        )?;
        let storage_failed = IntGauge::new(
            "concord_storage_failed",
            "1 once a log append failed and acknowledgements stopped.",
        )?;
        let recovery_seconds = Gauge::new(
            "concord_recovery_seconds",
            "Time the last start spent reading and replaying storage.",
        )?;
        let recovery_replayed_commits = IntGauge::new(
            "concord_recovery_replayed_commits",
            "Logged changes the last start replayed on top of snapshots.",
        )?;

        let metrics = Self {
            sessions,
            sessions_opened,
            sessions_closed,
            commits,
            rejections,
            guard_failures,
            duplicates,
            commit_latency,
            client_errors,
            auth_failures,
            outbound_queued_bytes,
            outbound_queue_high_water_bytes,
            high_water: Default::default(),
            outbound_overflows,
            pubsub_deliveries,
            rpc_calls,
            tls_handshake_failures,
            storage_group_commits,
            storage_fsyncs,
            storage_batch_commits,
            storage_append_latency,
            storage_snapshots,
            storage_snapshot_failures,
            storage_failed,
            recovery_seconds,
            recovery_replayed_commits,
            registry,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(metrics.sessions.clone()),
            Box::new(metrics.sessions_opened.clone()),
            Box::new(metrics.sessions_closed.clone()),
            Box::new(metrics.commits.clone()),
            Box::new(metrics.rejections.clone()),
            Box::new(metrics.guard_failures.clone()),
            Box::new(metrics.duplicates.clone()),
            Box::new(metrics.commit_latency.clone()),
            Box::new(metrics.client_errors.clone()),
            Box::new(metrics.auth_failures.clone()),
            Box::new(metrics.outbound_queued_bytes.clone()),
            Box::new(metrics.outbound_queue_high_water_bytes.clone()),
            Box::new(metrics.outbound_overflows.clone()),
            Box::new(metrics.pubsub_deliveries.clone()),
            Box::new(metrics.rpc_calls.clone()),
            Box::new(metrics.tls_handshake_failures.clone()),
            Box::new(metrics.storage_group_commits.clone()),
            Box::new(metrics.storage_fsyncs.clone()),
            Box::new(metrics.storage_batch_commits.clone()),
            Box::new(metrics.storage_append_latency.clone()),
            Box::new(metrics.storage_snapshots.clone()),
            Box::new(metrics.storage_snapshot_failures.clone()),
            Box::new(metrics.storage_failed.clone()),
            Box::new(metrics.recovery_seconds.clone()),
            Box::new(metrics.recovery_replayed_commits.clone()),
        ];
        for collector in collectors {
            metrics.registry.register(collector)?;
        }
        Ok(metrics)
    }

    /// Records that one session's queue holds `bytes`, raising the
    /// high-water mark if needed.
    pub fn observe_queue_bytes(&self, bytes: usize) {
        // A plain load first: the mark rarely moves, and an unconditional
        // read-modify-write would pull the line away from every other core
        // on every push.
        if bytes <= self.high_water.load(Ordering::Relaxed) {
            return;
        }
        let previous = self.high_water.fetch_max(bytes, Ordering::Relaxed);
        if bytes > previous {
            self.outbound_queue_high_water_bytes.set(saturating_i64(bytes));
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "metrics encoding failed");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

pub(crate) fn saturating_i64(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
