//! W1 (whiteboard) and W4 (fan-out): writers commit in a closed loop (the
//! next op after the ack) on one document; every other session that has it
//! open must receive each op. Measured: ops/s, ack latency (commit sent →
//! `committed`), and fan-out latency (commit sent → the change received by
//! the last of the other sessions). Each op's send time and latest delivery
//! are kept in shared atomics, so all sessions (in this process, one clock)
//! contribute to one per-op figure, and every delivery is counted: a run in
//! which some op did not reach every other session fails.
//!
//! Against the broadcast baseline the same code runs with no `open` (the
//! baseline has no documents): its `committed` is its ack, and the commit it
//! rebroadcasts is the change.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::report::{Latencies, Report};
use crate::server::{ProcessUsage, ServerKind, ServerProcess};
use crate::start::start_together;
use crate::wire::{run_tag, Conn, Incoming};

/// Most connection attempts in flight while the sessions are set up.
pub const CONNECTS_IN_FLIGHT_MAX: usize = 128;

const DOC: &str = "bench-board";

/// Who writes and who only listens.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Sessions that commit (and also receive the others' ops).
    pub writers: usize,
    /// Sessions that only receive.
    pub readers: usize,
    pub ops_per_writer: usize,
}

/// Per op: when it was sent and when its last delivery arrived (nanoseconds
/// since `epoch`), and how many sessions received it.
struct OpLog {
    epoch: Instant,
    sent_at_ns: Vec<AtomicU64>,
    last_delivery_ns: Vec<AtomicU64>,
    deliveries: Vec<AtomicU32>,
}

impl OpLog {
    fn new(ops: usize) -> Self {
        let zeros64 = || (0..ops).map(|_| AtomicU64::new(0)).collect();
        Self {
            epoch: Instant::now(),
            sent_at_ns: zeros64(),
            last_delivery_ns: zeros64(),
            deliveries: (0..ops).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn delivered(&self, op: usize) {
        let now = self.now_ns();
        self.last_delivery_ns[op].fetch_max(now, Ordering::Relaxed);
        self.deliveries[op].fetch_add(1, Ordering::Relaxed);
    }
}

/// What one session measured.
struct SessionResult {
    acks: Latencies,
    finished_writing: Option<Instant>,
}

/// Runs one W1/W4 measurement against a started server.
pub async fn run(
    workload: &'static str,
    server: &ServerProcess,
    kind: ServerKind,
    shape: Shape,
    progress: &ProgressBar,
) -> Result<Report> {
    let Shape { writers, readers, ops_per_writer } = shape;
    let sessions = writers + readers;
    let ops = writers * ops_per_writer;
    let tag = run_tag();
    let url = server.ws_url().to_owned();
    let token = server.token().map(str::to_owned);

    // The board: one shape per writer, created before anyone opens it.
    if kind.is_concord() {
        let mut setup = Conn::connect_with(&url, token.as_deref()).await?;
        setup.open(DOC).await?;
        let shapes: serde_json::Map<String, serde_json::Value> = (0..writers)
            .map(|writer| {
                let shape =
                    serde_json::json!({"x": 0, "y": 0, "w": 40, "h": 30, "color": "#3366ff"});
                (format!("s{writer}"), shape)
            })
            .collect();
        let writes = serde_json::json!([{"op": "add", "path": "/shapes", "value": shapes}]);
        setup.commit_and_wait(DOC, &format!("{tag}-setup"), &writes.to_string()).await?;
        setup.close().await;
    }

    let log = Arc::new(OpLog::new(ops));
    // Everyone (and this task) starts together, after all sessions are open.
    let start = Arc::new(Barrier::new(sessions + 1));
    let connect_permits = Arc::new(tokio::sync::Semaphore::new(CONNECTS_IN_FLIGHT_MAX));
    let mut tasks = JoinSet::new();
    for session in 0..sessions {
        let writer = (session < writers).then_some(session);
        // Everyone receives every op but its own.
        let expected = ops - writer.map_or(0, |_| ops_per_writer);
        let context = SessionContext {
            url: url.clone(),
            token: token.clone(),
            kind,
            tag: tag.clone(),
            writer,
            ops_per_writer,
            expected_deliveries: expected,
            log: log.clone(),
            start: start.clone(),
            connect_permits: connect_permits.clone(),
            progress: progress.clone(),
        };
        tasks.spawn(session_task(context));
    }
    let generator_before = ProcessUsage::read_self()?;
    start_together(&start, &mut tasks).await?;
    let server_before = server.usage()?;
    let started = Instant::now();
    let mut acks = Latencies::new()?;
    let mut writing_done = started;
    while let Some(result) = tasks.join_next().await {
        let result = result??;
        acks.merge(&result.acks)?;
        if let Some(finished) = result.finished_writing {
            writing_done = writing_done.max(finished);
        }
    }
    let all_delivered = Instant::now();
    let server_after = server.usage()?;
    let generator_after = ProcessUsage::read_self()?;

    let receivers_per_op = (sessions - 1) as u32;
    let mut fanout = Latencies::new()?;
    let mut deliveries = 0u64;
    for op in 0..ops {
        let delivered = log.deliveries[op].load(Ordering::Relaxed);
        deliveries += u64::from(delivered);
        if delivered != receivers_per_op {
            bail!("op {op} reached {delivered} of {receivers_per_op} other sessions");
        }
        if receivers_per_op > 0 {
            let sent = log.sent_at_ns[op].load(Ordering::Relaxed);
            let last = log.last_delivery_ns[op].load(Ordering::Relaxed);
            fanout.record(Duration::from_nanos(last.saturating_sub(sent)));
        }
    }

    let mut report = Report::new(workload, kind.name());
    report.set("writers", writers as f64);
    report.set("readers", readers as f64);
    report.set("ops_per_writer", ops_per_writer as f64);
    report.set("committed_ops", acks.count() as f64);
    let writing = writing_done.duration_since(started).as_secs_f64();
    report.set("elapsed_s", writing);
    report.set("ops_per_s", ops as f64 / writing);
    report.set_latencies("ack", &acks);
    let fanout_name = if workload == "w4" { "delivery" } else { "fanout" };
    report.set_latencies(fanout_name, &fanout);
    report.set("deliveries", deliveries as f64);
    report.set("deliveries_expected", f64::from(receivers_per_op) * ops as f64);
    report.set("all_delivered_s", all_delivered.duration_since(started).as_secs_f64());
    report.set_cpu((server_before, server_after), (generator_before, generator_after), ops as u64);
    Ok(report)
}

struct SessionContext {
    url: String,
    token: Option<String>,
    kind: ServerKind,
    tag: String,
    writer: Option<usize>,
    ops_per_writer: usize,
    expected_deliveries: usize,
    log: Arc<OpLog>,
    start: Arc<Barrier>,
    connect_permits: Arc<tokio::sync::Semaphore>,
    progress: ProgressBar,
}

async fn session_task(context: SessionContext) -> Result<SessionResult> {
    let SessionContext {
        url,
        token,
        kind,
        tag,
        writer,
        ops_per_writer,
        expected_deliveries,
        log,
        start,
        connect_permits,
        progress,
    } = context;
    let (mut conn, base) = {
        let _permit = connect_permits.acquire().await?;
        let mut conn = Conn::connect_with(&url, token.as_deref()).await?;
        let mut base = 0;
        if kind.is_concord() {
            (_, base) = conn.open(DOC).await?;
        }
        (conn, base)
    };
    start.wait().await;

    let mut session = ReceivingSession { log: &log, tag: &tag, received: 0, base };
    let mut acks = Latencies::new()?;
    let mut finished_writing = None;
    if let Some(writer) = writer {
        for seq in 0..ops_per_writer {
            let op = writer * ops_per_writer + seq;
            let commit = format!(
                r#"{{"type":"commit","tx":{{"doc":"{DOC}","tx_id":"{tag}-{op}","base":{base},"reads":["/shapes/s{writer}/x"],"writes":[{{"op":"replace","path":"/shapes/s{writer}/x","value":{x}}},{{"op":"replace","path":"/shapes/s{writer}/y","value":{y}}}]}}}}"#,
                base = session.base,
                x = seq % 1000,
                y = (seq * 7) % 1000,
            );
            let sent = Instant::now();
            log.sent_at_ns[op].store(log.now_ns(), Ordering::Relaxed);
            conn.send(commit).await?;
            loop {
                let text = conn.next_text().await?;
                let message = Incoming::parse(text.as_str())?;
                match message.kind.as_ref() {
                    "committed" => {
                        acks.record(sent.elapsed());
                        if let Some(version) = message.version {
                            session.base = version;
                        }
                        break;
                    }
                    "rejected" => {
                        bail!("W1 move {tag}-{op} rejected: {:.300}", text.as_str());
                    }
                    _ => session.receive(&message, text.as_str())?,
                }
            }
            progress.inc(1);
        }
        finished_writing = Some(Instant::now());
    }
    while session.received < expected_deliveries {
        let text = conn.next_text().await.with_context(|| {
            format!("waiting for op {} of {expected_deliveries}", session.received + 1)
        })?;
        let message = Incoming::parse(text.as_str())?;
        session.receive(&message, text.as_str())?;
    }
    conn.close().await;
    Ok(SessionResult { acks, finished_writing })
}

struct ReceivingSession<'a> {
    log: &'a OpLog,
    tag: &'a str,
    received: usize,
    /// The newest version seen: the base of the next commit.
    base: u64,
}

impl ReceivingSession<'_> {
    fn receive(&mut self, message: &Incoming<'_>, text: &str) -> Result<()> {
        let Some(tx_id) = message.change_tx_id() else {
            bail!("unexpected message {text:.300}");
        };
        if let Some(version) = message.version {
            self.base = version;
        }
        let op = tx_id
            .strip_prefix(self.tag)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|op| op.parse::<usize>().ok())
            .with_context(|| format!("foreign transaction id {tx_id}"))?;
        if op >= self.log.deliveries.len() {
            bail!("transaction id {tx_id} out of range");
        }
        self.log.delivered(op);
        self.received += 1;
        Ok(())
    }
}
