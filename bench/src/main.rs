//! `concord-bench`: a load generator for Concord (issue 6).
//!
//! Each run starts a fresh server as a child process — the real `concord`
//! binary (`concord serve --listen 127.0.0.1:0 --memory`, or `--durable`), or
//! the no-logic `broadcast-baseline` — drives one workload against it over
//! real sockets, reads the server's CPU time and memory from `/proc`, and
//! kills it. Workloads (C clients, K ops per client):
//! - `w1` whiteboard: each client moves its own shape K times, closed loop;
//!   `--target both` runs the baseline side by side (alternating order).
//! - `w2` hot counter: C × K increments of one counter, with `incr` and with
//!   read-modify-write `transact`; the final value must be C × K.
//! - `w3` late joiner: join time and bytes for a 10,000-shape board.
//! - `w4` fan-out: one writer, N readers.
//! - `w5` idle connections: server memory per idle session.
//!
//! Results go to stdout as a table (per run, and medians with `--runs`), or
//! as one JSON document with `--json`. A broken promise (a wrong final
//! counter, an op that did not reach every client, a partial board) fails
//! the run with a non-zero exit. A progress bar is drawn on stderr when it
//! is a terminal.

// A command-line tool reports on stdout.
#![allow(clippy::print_stdout)]

mod broadcast;
mod counter;
mod idle;
mod join;
mod report;
mod server;
mod start;
mod wire;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::broadcast::Shape;
use crate::counter::Form;
use crate::report::Report;
use crate::server::{ServerKind, ServerProcess, ServerSetup};

/// Sessions the server may hold beyond a workload's own (warm-up and
/// setup connections).
const SESSIONS_SPARE: usize = 16;
/// File descriptors asked for (up to the hard limit): W5's 10,000 sessions
/// need one each here and one each in the server, which inherits the limit.
const OPEN_FILES_WANTED: u64 = 65_536;

#[derive(Debug, Parser)]
#[command(name = "concord-bench", version, about = "Load generator for Concord (W1-W5)")]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
    /// Repeat the workload this many times (a fresh server each time) and
    /// report the medians.
    #[arg(long, global = true, default_value_t = 1)]
    runs: usize,
    /// Print one JSON document (every run, the medians) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// The `concord` binary [default: next to this one].
    #[arg(long, global = true, env = "CONCORD_BIN")]
    concord_bin: Option<PathBuf>,
    /// The `broadcast-baseline` binary [default: next to this one].
    #[arg(long, global = true)]
    baseline_bin: Option<PathBuf>,
    /// Run `concord` durably (a fresh data directory, `--sync full`)
    /// instead of `--memory`.
    #[arg(long, global = true)]
    durable: bool,
    /// An extra argument for `concord serve` (repeat for several).
    #[arg(long = "server-arg", global = true, allow_hyphen_values = true)]
    server_args: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Workload {
    /// Whiteboard: each client moves its own shape K times, closed loop.
    W1 {
        /// Clients (C), each with its own session.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Ops per client (K).
        #[arg(long, default_value_t = 1000)]
        ops: usize,
        /// The server: `concord`, the broadcast `baseline`, or both.
        #[arg(long, value_enum, default_value = "concord")]
        target: Target,
    },
    /// Hot counter: every client increments one counter K times.
    W2 {
        /// Clients (C), each with its own session.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Ops per client (K).
        #[arg(long, default_value_t = 1000)]
        ops: usize,
        /// `incr` (commutative op), `transact` (read-modify-write), or both.
        #[arg(long, value_enum, default_value = "both")]
        form: FormChoice,
    },
    /// Late joiner: load a board of `--shapes` shapes, `--joins` times.
    W3 {
        /// Shapes on the board.
        #[arg(long, default_value_t = 10_000)]
        shapes: usize,
        /// Late joiners, one after another.
        #[arg(long, default_value_t = 5)]
        joins: usize,
    },
    /// Fan-out: one writer commits K ops, N readers receive each.
    W4 {
        /// Sessions that only receive (N).
        #[arg(long, default_value_t = 1000)]
        readers: usize,
        /// Ops the writer commits.
        #[arg(long, default_value_t = 200)]
        ops: usize,
    },
    /// Idle connections: server memory per idle session.
    W5 {
        /// Idle sessions (N).
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Target {
    /// The real `concord serve`.
    Concord,
    /// `broadcast-baseline`: no logic, rebroadcast only.
    Baseline,
    /// Both, alternating which goes first, each run.
    Both,
    /// `concord` open and `concord` with a token (HS256, writes scoped to
    /// `/shapes`) and a JSON Schema on `/shapes/*`, alternating which goes
    /// first, each run: what authority costs.
    Auth,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormChoice {
    /// The commutative `incr` op: never conflicts.
    Incr,
    /// Read-modify-write through `concord-client`'s `transact`.
    Transact,
    /// `incr`, then `transact`, each on a fresh server.
    Both,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // Best effort: without it W5 stops at the soft limit with a clear error.
    let _ = rlimit::increase_nofile_limit(OPEN_FILES_WANTED);
    let setup = ServerSetup {
        concord_bin: match &cli.concord_bin {
            Some(path) => path.clone(),
            None => server::sibling_binary("concord")?,
        },
        baseline_bin: match &cli.baseline_bin {
            Some(path) => path.clone(),
            None => server::sibling_binary("broadcast-baseline")?,
        },
        durable: cli.durable,
        extra_args: cli.server_args.clone(),
    };
    let mut reports = Vec::new();
    for run in 0..cli.runs.max(1) {
        reports.extend(run_once(&cli, &setup, run).await?);
    }
    let medians = report::medians(&reports);
    let ratios = ratios(&reports);
    if cli.json {
        let document = json!({
            "runs": reports.iter().map(Report::to_json).collect::<Vec<_>>(),
            "medians": medians.iter().map(Report::to_json).collect::<Vec<_>>(),
            "ratios": ratios,
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        print!("{}", report::human_table(&reports, &medians));
        let ratio = ratios.get("w1_server_cpu_per_op_concord_over_baseline");
        if let Some(ratio) = ratio.and_then(serde_json::Value::as_f64) {
            println!(
                "\nW1 server CPU per op, concord ÷ baseline (median of per-run ratios): {ratio:.2}"
            );
        }
        let ratio = ratios.get("w1_server_cpu_per_op_auth_over_open");
        if let Some(ratio) = ratio.and_then(serde_json::Value::as_f64) {
            println!(
                "\nW1 server CPU per op, with token and schema ÷ open (median of per-run ratios): \
                 {ratio:.2}"
            );
        }
    }
    Ok(())
}

/// One run of the chosen workload (two reports where two variants run).
async fn run_once(cli: &Cli, setup: &ServerSetup, run: usize) -> Result<Vec<Report>> {
    let mut reports = Vec::new();
    match cli.workload {
        Workload::W1 { clients, ops, target } => {
            let kinds: &[ServerKind] = match (target, run % 2) {
                (Target::Concord, _) => &[ServerKind::Concord],
                (Target::Baseline, _) => &[ServerKind::Baseline],
                (Target::Both, 0) => &[ServerKind::Concord, ServerKind::Baseline],
                (Target::Both, _) => &[ServerKind::Baseline, ServerKind::Concord],
                (Target::Auth, 0) => &[ServerKind::Concord, ServerKind::ConcordAuth],
                (Target::Auth, _) => &[ServerKind::ConcordAuth, ServerKind::Concord],
            };
            for &kind in kinds {
                let shape = Shape { writers: clients, readers: 0, ops_per_writer: ops };
                let server = ServerProcess::start(setup, kind, clients + SESSIONS_SPARE).await?;
                let progress =
                    progress_bar(cli, (clients * ops) as u64, &format!("w1 {}", kind.name()));
                let report = broadcast::run("w1", &server, kind, shape, &progress).await;
                progress.finish_and_clear();
                server.stop().await?;
                reports.push(report.with_context(|| format!("w1 against {}", kind.name()))?);
            }
        }
        Workload::W2 { clients, ops, form } => {
            let forms: &[Form] = match form {
                FormChoice::Incr => &[Form::Incr],
                FormChoice::Transact => &[Form::Transact],
                FormChoice::Both => &[Form::Incr, Form::Transact],
            };
            for &form in forms {
                let server =
                    ServerProcess::start(setup, ServerKind::Concord, clients + SESSIONS_SPARE)
                        .await?;
                let progress =
                    progress_bar(cli, (clients * ops) as u64, &format!("w2 {}", form.name()));
                let report = counter::run(&server, form, clients, ops, &progress).await;
                progress.finish_and_clear();
                server.stop().await?;
                reports.push(report.with_context(|| format!("w2 {}", form.name()))?);
            }
        }
        Workload::W3 { shapes, joins } => {
            let server = ServerProcess::start(setup, ServerKind::Concord, SESSIONS_SPARE).await?;
            let progress = progress_bar(cli, joins as u64, "w3 joins");
            let report = join::run(&server, shapes, joins, &progress).await;
            progress.finish_and_clear();
            server.stop().await?;
            reports.push(report.context("w3")?);
        }
        Workload::W4 { readers, ops } => {
            let sessions = readers + 1;
            let server =
                ServerProcess::start(setup, ServerKind::Concord, sessions + SESSIONS_SPARE).await?;
            let shape = Shape { writers: 1, readers, ops_per_writer: ops };
            let progress = progress_bar(cli, ops as u64, "w4 ops");
            let report = broadcast::run("w4", &server, ServerKind::Concord, shape, &progress).await;
            progress.finish_and_clear();
            server.stop().await?;
            reports.push(report.context("w4")?);
        }
        Workload::W5 { sessions } => {
            let server =
                ServerProcess::start(setup, ServerKind::Concord, sessions + SESSIONS_SPARE).await?;
            let progress = progress_bar(cli, sessions as u64, "w5 sessions");
            let report = idle::run(&server, sessions, &progress).await;
            progress.finish_and_clear();
            server.stop().await?;
            reports.push(report.context("w5")?);
        }
    }
    Ok(reports)
}

/// Concord ÷ baseline W1 server CPU per op: per run (both measured in the
/// same run), then the median over runs.
fn ratios(reports: &[Report]) -> serde_json::Map<String, serde_json::Value> {
    let mut per_run = Vec::new();
    let w1: Vec<&Report> = reports.iter().filter(|r| r.workload == "w1").collect();
    for pair in w1.chunks(2) {
        let of = |variant: &str| {
            pair.iter().find(|r| r.variant == variant).and_then(|r| r.get("server_cpu_us_per_op"))
        };
        if let (Some(concord), Some(baseline)) = (of("concord"), of("baseline")) {
            per_run.push(concord / baseline);
        }
    }
    let mut auth_per_run = Vec::new();
    for pair in w1.chunks(2) {
        let of = |variant: &str| {
            pair.iter().find(|r| r.variant == variant).and_then(|r| r.get("server_cpu_us_per_op"))
        };
        if let (Some(auth), Some(open)) = (of("concord-auth"), of("concord")) {
            auth_per_run.push(auth / open);
        }
    }
    let mut ratios = serde_json::Map::new();
    if !auth_per_run.is_empty() {
        ratios.insert("w1_server_cpu_per_op_auth_over_open_runs".into(), json!(auth_per_run));
        ratios.insert(
            "w1_server_cpu_per_op_auth_over_open".into(),
            json!(report::median(auth_per_run)),
        );
    }
    if !per_run.is_empty() {
        ratios.insert("w1_server_cpu_per_op_concord_over_baseline_runs".into(), json!(per_run));
        ratios.insert(
            "w1_server_cpu_per_op_concord_over_baseline".into(),
            json!(report::median(per_run)),
        );
    }
    ratios
}

fn progress_bar(cli: &Cli, total: u64, label: &str) -> ProgressBar {
    let target = if cli.json { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>14} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_owned());
    bar
}
