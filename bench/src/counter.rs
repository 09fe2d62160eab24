//! W2, the hot counter: every client adds 1 to the same `/n`, K times each,
//! closed loop.
//! - `incr`: the commutative op over raw protocol, no reads: increments never
//!   conflict, so rejections should be zero.
//! - `transact`: read-modify-write through `concord-client`'s
//!   `Document::transact` (read `/n`, write `/n + 1`): every concurrent
//!   increment conflicts, and the client's reject → resync → re-run loop
//!   (with its contention pacing) must still land each one exactly once.
//!
//! Either way the final value, read afterwards by a fresh session, must be
//! exactly C × K; otherwise the run fails.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use concord_client::{Client, Pointer, TxResult};
use indicatif::ProgressBar;
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::report::{Latencies, Report};
use crate::server::{ProcessUsage, ServerProcess};
use crate::start::start_together;
use crate::wire::{run_tag, Conn, Incoming};

const DOC_INCR: &str = "bench-counter-incr";
const DOC_TRANSACT: &str = "bench-counter-transact";
/// Most times one `incr` is resubmitted after a rejection before the run
/// fails (an `incr` without reads should never be rejected at all).
const INCR_RESUBMITS_MAX: u32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Incr,
    Transact,
}

impl Form {
    pub fn name(self) -> &'static str {
        match self {
            Form::Incr => "incr",
            Form::Transact => "transact",
        }
    }
}

struct ClientResult {
    latencies: Latencies,
    rejections: u64,
    reruns: u64,
}

pub async fn run(
    server: &ServerProcess,
    form: Form,
    clients: usize,
    ops_per_client: usize,
    progress: &ProgressBar,
) -> Result<Report> {
    let url = server.ws_url().to_owned();
    let tag = run_tag();
    let doc = match form {
        Form::Incr => DOC_INCR,
        Form::Transact => DOC_TRANSACT,
    };
    let start = Arc::new(Barrier::new(clients + 1));
    let mut tasks = JoinSet::new();
    for client in 0..clients {
        let (url, tag, start, progress) =
            (url.clone(), tag.clone(), start.clone(), progress.clone());
        match form {
            Form::Incr => tasks.spawn(async move {
                incr_client(&url, &format!("{tag}-{client}"), ops_per_client, &start, &progress)
                    .await
            }),
            Form::Transact => tasks.spawn(async move {
                transact_client(&url, ops_per_client, &start, &progress).await
            }),
        };
    }
    let generator_before = ProcessUsage::read_self()?;
    start_together(&start, &mut tasks).await?;
    let server_before = server.usage()?;
    let started = Instant::now();
    let mut latencies = Latencies::new()?;
    let (mut rejections, mut reruns) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        let result = result??;
        latencies.merge(&result.latencies)?;
        rejections += result.rejections;
        reruns += result.reruns;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let server_after = server.usage()?;
    let generator_after = ProcessUsage::read_self()?;

    let mut reader = Conn::connect(&url).await?;
    let value = reader.read_document(doc).await?;
    reader.close().await;
    let expected = (clients * ops_per_client) as i64;
    let final_value = value["n"].as_i64().with_context(|| format!("no /n in {value}"))?;
    if final_value != expected {
        bail!("W2 {}: final counter {final_value}, expected {expected} (C × K)", form.name());
    }

    let ops = clients * ops_per_client;
    let mut report = Report::new("w2", form.name());
    report.set("clients", clients as f64);
    report.set("ops_per_client", ops_per_client as f64);
    report.set("committed_ops", ops as f64);
    report.set("elapsed_s", elapsed);
    report.set("ops_per_s", ops as f64 / elapsed);
    report.set_latencies(if form == Form::Incr { "ack" } else { "transact" }, &latencies);
    report.set("rejections", rejections as f64);
    report.set("rejection_rate", rejections as f64 / (ops as u64 + rejections) as f64);
    report.set("retries_per_op", reruns as f64 / ops as f64);
    report.set("final_value", final_value as f64);
    report.set("expected_value", expected as f64);
    report.set_cpu((server_before, server_after), (generator_before, generator_after), ops as u64);
    Ok(report)
}

async fn incr_client(
    url: &str,
    tx_prefix: &str,
    ops: usize,
    start: &Barrier,
    progress: &ProgressBar,
) -> Result<ClientResult> {
    let mut conn = Conn::connect(url).await?;
    let (_, mut base) = conn.open(DOC_INCR).await?;
    start.wait().await;
    let mut latencies = Latencies::new()?;
    let (mut rejections, mut reruns) = (0, 0);
    let mut submission = 0u64;
    for _ in 0..ops {
        let began = Instant::now();
        let mut resubmits = 0;
        loop {
            submission += 1;
            conn.send(format!(
                r#"{{"type":"commit","tx":{{"doc":"{DOC_INCR}","tx_id":"{tx_prefix}-{submission}","base":{base},"writes":[{{"op":"incr","path":"/n","value":1}}]}}}}"#
            ))
            .await?;
            let committed = loop {
                let text = conn.next_text().await?;
                let message = Incoming::parse(text.as_str())?;
                if let Some(version) = message.version {
                    base = base.max(version);
                }
                match message.kind.as_ref() {
                    "committed" => break true,
                    "rejected" => break false,
                    "change" => {}
                    _ => bail!("unexpected {:.300}", text.as_str()),
                }
            };
            if committed {
                break;
            }
            rejections += 1;
            reruns += 1;
            resubmits += 1;
            if resubmits > INCR_RESUBMITS_MAX {
                bail!("an incr was rejected {resubmits} times");
            }
        }
        latencies.record(began.elapsed());
        progress.inc(1);
    }
    conn.close().await;
    Ok(ClientResult { latencies, rejections, reruns })
}

async fn transact_client(
    url: &str,
    ops: usize,
    start: &Barrier,
    progress: &ProgressBar,
) -> Result<ClientResult> {
    let client = Client::connect(url).await?;
    let doc = client.open(DOC_TRANSACT).await?;
    let counter = Pointer::parse("/n")?;
    start.wait().await;
    let mut latencies = Latencies::new()?;
    for _ in 0..ops {
        let counter = counter.clone();
        let began = Instant::now();
        doc.transact(move |tx| -> TxResult<()> {
            let next = tx.get_i64(&counter).unwrap_or(0) + 1;
            tx.set(&counter, next.into())?;
            Ok(())
        })
        .await
        .context("a read-modify-write increment failed")?;
        latencies.record(began.elapsed());
        progress.inc(1);
    }
    let stats = client.stats();
    client.close().await;
    Ok(ClientResult { latencies, rejections: stats.rejections, reruns: stats.reruns })
}
