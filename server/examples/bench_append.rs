//! What one group commit costs the storage layer alone, without the server.
//!
//! ```sh
//! cargo run --release -p concord-server --example bench_append -- \
//!     [--group 12] [--groups 3000] [--sync full|off]
//! ```
//!
//! Appends `--groups` groups of `--group` log entries (blind `incr`s spread
//! over 8 documents, as in `bench_throughput`) to a fresh database with
//! `--sync full` (the default; `off` leaves the fsync out, which shows what
//! the rest costs), checkpointing every 100 groups as the storage thread
//! does, and prints the median and 90th percentile time of one append
//! (insert the rows, commit, fsync the WAL).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use concord_engine::store::Commit;
use concord_engine::{DocId, Limits, Store, Transaction, TxId};
use concord_server::storage::{LogEntry, SqliteOptions, SqliteStorage, Storage, SyncMode};
use serde_json::json;

fn main() {
    let (mut group_size, mut groups, mut sync) = (12, 3000, SyncMode::Full);
    let raw: Vec<String> = std::env::args().skip(1).collect();
    for pair in raw.chunks(2) {
        let value = pair.get(1).expect("every flag takes a value");
        match pair[0].as_str() {
            "--group" => group_size = value.parse().unwrap(),
            "--groups" => groups = value.parse().unwrap(),
            "--sync" => {
                sync = match value.as_str() {
                    "full" => SyncMode::Full,
                    "off" => SyncMode::Off,
                    other => panic!("--sync full or off, not {other}"),
                }
            }
            other => panic!("unknown flag {other}"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        sync,
        history_retained_commits: concord_server::config::HISTORY_RETAINED_COMMITS,
        snapshot_spacing_commits: concord_server::config::SNAPSHOT_EVERY_COMMITS,
        limits: Limits::default(),
    };
    let mut storage = SqliteStorage::open(dir.path(), options).unwrap();
    let mut store = Store::new(Limits::default());
    let docs: Vec<DocId> = (0..8).map(|d| DocId::parse(&format!("bench-{d}")).unwrap()).collect();
    let mut times = Vec::with_capacity(groups);
    let mut seq = 0u64;
    for round in 0..groups {
        let mut group = Vec::with_capacity(group_size);
        for k in 0..group_size {
            seq += 1;
            let doc = &docs[(round * group_size + k) % docs.len()];
            let base = store.version(doc);
            let tx = Transaction {
                doc: doc.clone(),
                tx_id: TxId::parse(&format!("b{k}-{seq}")).unwrap(),
                base,
                reads: vec![],
                writes: serde_json::from_value(
                    json!([{"op": "incr", "path": format!("/c{k}"), "value": 1}]),
                )
                .unwrap(),
            };
            let Commit::Applied { change: Some(change), .. } = store.commit(tx) else {
                panic!("a blind incr applies")
            };
            let author = "0123456789abcdef".into();
            group.push(LogEntry { change, base, reads: vec![], time_ms: seq, author });
        }
        let started = Instant::now();
        storage.append(&group).unwrap();
        times.push(started.elapsed());
        if round % 100 == 99 {
            storage.checkpoint().unwrap();
        }
    }
    times.sort();
    println!(
        "append of {group_size} entries ({sync:?}), {groups} groups: median {:?}, p90 {:?}",
        times[times.len() / 2],
        times[times.len() * 9 / 10]
    );
}
