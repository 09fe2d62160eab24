//! Durable vs in-memory commit throughput, side by side in one run.
//!
//! ```sh
//! cargo run --release -p concord-server --example bench_throughput -- \
//!     [--clients 32] [--runs 5] [--seconds 3] [--docs 8]
//! ```
//!
//! Starts the real server in-process on port 0, once in memory and once on
//! a fresh data directory (`--sync full`, the default), alternating which
//! goes first in each run. Each of `--clients` WebSocket clients opens one of
//! `--docs` documents and commits in lockstep — send a commit, wait for its
//! `committed`, send the next — so the number of commits in flight is the
//! number of clients, as with real users. Commits are blind `incr`s to the
//! client's own counter (no conflicts: this measures the commit path, not
//! contention). Only acknowledgements inside the measured window count,
//! after a warm-up. Prints every run, then the medians and their ratio.
//! The session rate limit is raised so it does not cap the clients.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Duration;

use concord_server::{Config, ServerBuilder, StorageConfig};
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const WARM_UP: Duration = Duration::from_millis(500);

struct Args {
    clients: usize,
    runs: usize,
    seconds: f64,
    docs: usize,
}

fn args() -> Args {
    let mut args = Args { clients: 32, runs: 5, seconds: 3.0, docs: 8 };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    for pair in raw.chunks(2) {
        let value = pair.get(1).expect("every flag takes a value");
        match pair[0].as_str() {
            "--clients" => args.clients = value.parse().unwrap(),
            "--runs" => args.runs = value.parse().unwrap(),
            "--seconds" => args.seconds = value.parse().unwrap(),
            "--docs" => args.docs = value.parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// Commits in lockstep until `end`; returns acknowledgements in the window.
async fn client(url: String, id: usize, doc: String, start: Instant, end: Instant) -> u64 {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.next().await.unwrap().unwrap(); // welcome
    let open = format!(r#"{{"type":"open","doc":"{doc}"}}"#);
    ws.send(Message::text(open)).await.unwrap();
    loop {
        let Message::Text(text) = ws.next().await.unwrap().unwrap() else { continue };
        if text.contains(r#""type":"opened""#) {
            break;
        }
    }
    let mut counted = 0;
    for seq in 0u64.. {
        if Instant::now() >= end {
            break;
        }
        let commit = format!(
            r#"{{"type":"commit","tx":{{"doc":"{doc}","tx_id":"b{id}-{seq}","base":0,"writes":[{{"op":"incr","path":"/c{id}","value":1}}]}}}}"#
        );
        ws.send(Message::text(commit)).await.unwrap();
        loop {
            let Message::Text(text) = ws.next().await.unwrap().unwrap() else { continue };
            if text.contains(r#""type":"committed""#) {
                break;
            }
            assert!(text.contains(r#""type":"change""#), "unexpected {text}");
        }
        let now = Instant::now();
        if now >= start && now < end {
            counted += 1;
        }
    }
    let _ = ws.close(None).await;
    counted
}

struct Measured {
    commits_per_second: f64,
    batch_mean: f64,
    fsyncs: f64,
    append_ms_mean: f64,
}

async fn measure(args: &Args, durable: bool) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let storage = durable.then(|| StorageConfig::new(dir.path()));
    let config = Config {
        storage,
        rate_messages_per_second: 1_000_000,
        rate_burst_messages_max: 1_000_000,
        ..Config::default()
    };
    let server = ServerBuilder::new().config(config).bind("127.0.0.1:0").await.unwrap();
    let start = Instant::now() + WARM_UP;
    let end = start + Duration::from_secs_f64(args.seconds);
    let tasks: Vec<_> = (0..args.clients)
        .map(|id| {
            let doc = format!("bench-{}", id % args.docs);
            tokio::spawn(client(server.ws_url(), id, doc, start, end))
        })
        .collect();
    let mut commits = 0;
    for task in tasks {
        commits += task.await.unwrap();
    }
    let metrics = server.metrics();
    let batches = metrics.storage_batch_commits.get_sample_count() as f64;
    let batch_mean =
        if batches > 0.0 { metrics.storage_batch_commits.get_sample_sum() / batches } else { 0.0 };
    let fsyncs = metrics.storage_fsyncs.get() as f64;
    let appends = metrics.storage_append_latency.get_sample_count() as f64;
    let append_ms_mean = if appends > 0.0 {
        1000.0 * metrics.storage_append_latency.get_sample_sum() / appends
    } else {
        0.0
    };
    server.shutdown().await;
    Measured {
        commits_per_second: commits as f64 / args.seconds,
        batch_mean,
        fsyncs,
        append_ms_mean,
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let args = args();
    println!(
        "{} clients in lockstep on {} documents, {} runs of {} s (after {} ms warm-up)",
        args.clients,
        args.docs,
        args.runs,
        args.seconds,
        WARM_UP.as_millis()
    );
    let (mut memory, mut durable) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        let order = if run % 2 == 0 { [false, true] } else { [true, false] };
        for is_durable in order {
            let measured = measure(&args, is_durable).await;
            let label = if is_durable { "durable" } else { "memory " };
            if is_durable {
                println!(
                    "run {run} {label}: {:>8.0} commits/s  ({:.1} commits per group commit, \
                     {:.0} fsyncs/s, {:.2} ms per append)",
                    measured.commits_per_second,
                    measured.batch_mean,
                    measured.fsyncs / (args.seconds + WARM_UP.as_secs_f64()),
                    measured.append_ms_mean,
                );
                durable.push(measured.commits_per_second);
            } else {
                println!("run {run} {label}: {:>8.0} commits/s", measured.commits_per_second);
                memory.push(measured.commits_per_second);
            }
        }
    }
    let (memory, durable) = (median(&mut memory), median(&mut durable));
    println!("median in memory: {memory:.0} commits/s");
    println!("median durable:   {durable:.0} commits/s");
    println!("durable / memory: {:.2}", durable / memory);
}
