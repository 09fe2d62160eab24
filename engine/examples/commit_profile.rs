//! Benchmark (a)'s commit loop in steady state, for profilers and for
//! timing outside criterion (docs/benchmarks.md, "Fourth round").
//!
//! Builds the 10,000-shape board, commits twice the dedup window of the
//! workload itself (so the window has turned over and every shape has been
//! written), then times `COMMITS` more, built in batches of 64 just before
//! they are committed, as a server commits what it has just decoded. Only
//! `measured_commit` runs inside the timer, so callgrind can count just it:
//!
//! ```sh
//! cargo build --release -p concord-engine --example commit_profile
//! target/release/examples/commit_profile 300000
//! valgrind --tool=callgrind --cache-sim=yes --D1=32768,8,64 --LL=33554432,16,64 \
//!     --toggle-collect='commit_profile::measured_commit' \
//!     target/release/examples/commit_profile 100000
//! ```
//!
//! `SHAPES` (default 10,000) and `DEDUP` (the dedup window, default
//! `TX_DEDUP_ENTRIES_MAX`) shrink the working set, to see what the commit
//! costs when everything is in cache.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use concord_engine::limits::TX_DEDUP_ENTRIES_MAX;
use concord_engine::{Commit, DocId, Limits, PatchOp, Pointer, Store, Transaction, TxId, Version};
use serde_json::{json, Map, Value};

/// A prime, as in the criterion benchmark: successive commits land all over
/// the document.
const STRIDE: usize = 7_919;
const BATCH: usize = 64;

/// The allocator the `concord` binary runs on.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).map_or(default, |raw| raw.parse().expect("a number"))
}

struct Workload {
    doc: DocId,
    shapes: usize,
    k: usize,
    serial: u64,
    base: Version,
}

impl Workload {
    fn next(&mut self) -> Transaction {
        self.k = (self.k + STRIDE) % self.shapes;
        self.serial += 1;
        let path =
            Pointer::from_tokens(["shapes".to_owned(), format!("s{}", self.k), "x".to_owned()]);
        let write = PatchOp::Replace { path: path.clone(), value: json!(self.k) };
        let tx_id = TxId::parse(&format!("bench-{}", self.serial)).unwrap();
        let tx = Transaction {
            doc: self.doc.clone(),
            tx_id,
            base: self.base,
            reads: vec![path],
            writes: vec![write],
        };
        self.base = self.base.next();
        tx
    }
}

fn main() {
    let commits: usize = std::env::args().nth(1).map_or(1_000_000, |n| n.parse().expect("a count"));
    let shapes = env_or("SHAPES", 10_000);
    let dedup = env_or("DEDUP", TX_DEDUP_ENTRIES_MAX);

    let board: Map<String, Value> = (0..shapes)
        .map(|k| {
            let shape =
                json!({"x": k % 1_000, "y": k / 1_000, "w": 40, "h": 30, "color": "#3366cc"});
            (format!("s{k}"), shape)
        })
        .collect();
    let doc = DocId::parse("board").unwrap();
    let mut store = Store::new(Limits { tx_dedup_entries_max: dedup, ..Limits::default() });
    store.restore(doc.clone(), json!({ "shapes": board }), Version::ZERO);
    let mut workload = Workload { doc, shapes, k: 0, serial: 0, base: Version::ZERO };
    for _ in 0..2 * dedup.max(shapes) {
        assert!(matches!(store.commit(workload.next()), Commit::Applied { change: Some(_), .. }));
    }

    let mut outcomes = Vec::with_capacity(commits);
    let mut elapsed = Duration::ZERO;
    while outcomes.len() < commits {
        let batch: Vec<Transaction> =
            (0..BATCH.min(commits - outcomes.len())).map(|_| workload.next()).collect();
        let started = Instant::now();
        for tx in batch {
            outcomes.push(measured_commit(&mut store, tx));
        }
        elapsed += started.elapsed();
    }
    assert!(outcomes.iter().all(|c| matches!(c, Commit::Applied { change: Some(_), .. })));
    let each = elapsed.as_secs_f64() / commits as f64;
    println!(
        "{commits} commits ({shapes} shapes, dedup window {dedup}): {:.2} µs each, {:.0} commits/s",
        each * 1e6,
        1.0 / each
    );
}

#[inline(never)]
fn measured_commit(store: &mut Store, tx: Transaction) -> Commit {
    store.commit(tx)
}
