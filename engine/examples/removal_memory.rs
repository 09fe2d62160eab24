//! What remembered removals cost in memory: commits N add-then-remove pairs
//! of distinct members at a given depth, and prints the growth of resident
//! memory per removal. It measures `REMOVED_PATH_OVERHEAD_BYTES` (index.rs)
//! and shows that the removals a document remembers stay within
//! `Limits::removed_paths_bytes_max` however deep or long their paths.
//!
//! ```sh
//! cargo run --release -p concord-engine --example removal_memory -- 50000 8
//! ```
//!
//! Arguments: removals (default 200,000), depth of the removed members
//! (default 1). Linux only (reads `/proc/self/statm`).
#![allow(clippy::print_stdout)]

use concord_engine::{Commit, DocId, Limits, PatchOp, Pointer, Store, Transaction, TxId, Version};
use serde_json::{json, Value};

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn arg(index: usize, default: usize) -> usize {
    std::env::args().nth(index).and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn main() {
    let removals = arg(1, 200_000);
    let depth = arg(2, 1).max(1);
    // A window of one id: the dedup window must not be what grows.
    let limits = Limits { tx_dedup_entries_max: 1, ..Limits::default() };
    let mut store = Store::new(limits);
    let doc = DocId::parse("d").unwrap_or_else(|e| panic!("{e}"));
    let prefix: Vec<String> = (0..depth - 1).map(|i| format!("level{i}")).collect();
    let value = prefix.iter().rev().fold(json!({}), |inner, key| json!({ key.clone(): inner }));
    store.restore(doc.clone(), value, Version::ZERO);

    let mut version = Version::ZERO;
    let before = resident_bytes();
    for i in 0..removals {
        let mut tokens = prefix.clone();
        tokens.push(format!("member-{i:08}"));
        let path = Pointer::from_tokens(tokens);
        let ops =
            [PatchOp::Add { path: path.clone(), value: Value::from(1) }, PatchOp::Remove { path }];
        for (j, op) in ops.into_iter().enumerate() {
            let tx_id = TxId::parse(&format!("t{i}-{j}")).unwrap_or_else(|e| panic!("{e}"));
            let tx = Transaction {
                doc: doc.clone(),
                tx_id,
                base: version,
                reads: vec![],
                writes: vec![op],
            };
            match store.commit(tx) {
                Commit::Applied { version: committed, .. } => version = committed,
                other => panic!("commit {i}-{j}: {other:?}"),
            }
        }
    }
    let grown = resident_bytes().saturating_sub(before);
    println!(
        "{removals} removals at depth {depth}: resident memory grew {:.1} MB, {:.0} bytes per \
         removal (budget {:.1} MB)",
        grown as f64 / 1e6,
        grown as f64 / removals as f64,
        limits.removed_paths_bytes_max as f64 / 1e6,
    );
}
