//! Restart time with a long commit log behind it.
//!
//! ```sh
//! cargo run --release -p concord-server --example bench_recovery -- \
//!     [--commits 1000000] [--docs 100] [--snapshot-every 1000] \
//!     [--replay-max 50000] [--restarts 5]
//! ```
//!
//! Fills a fresh data directory through the storage layer exactly as the
//! server writes it: `--commits` transactions made by `Store::commit` over
//! `--docs` documents (each a read of one of 64 cells, an `incr` and
//! an `add` of that cell), appended in group commits of 1,000, with the
//! server's snapshot policy for one shard: a snapshot of a document every
//! `--snapshot-every` of its commits, and of every document with
//! unsnapshotted commits once they total `--replay-max` (`--snapshot-every
//! 0`: no snapshots at all). Then it restarts a real server on the directory
//! `--restarts` times and reports the median of:
//! - `read`: `SqliteStorage::open` + `Storage::recover` (snapshots, log
//!   tails, recent transaction ids);
//! - `restart`: `ServerBuilder::bind` end to end (lock, open, recover,
//!   replay into the stores, remember tx ids, start shards and listen), with
//!   the replay count from the server's own metrics.
//!
//! The files were just written, so they are in the OS page cache: this is a
//! warm restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use concord_engine::store::Commit;
use concord_engine::{DocId, Limits, Pointer, Store, Transaction, TxId};
use concord_server::storage::{
    DocumentState, LogEntry, SqliteOptions, SqliteStorage, Storage, SyncMode,
};
use concord_server::{Config, ServerBuilder, StorageConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

struct Args {
    commits: u64,
    docs: usize,
    snapshot_every: u64,
    replay_max: u64,
    restarts: usize,
}

fn args() -> Args {
    let mut args = Args {
        commits: 1_000_000,
        docs: 100,
        snapshot_every: 1_000,
        replay_max: 50_000,
        restarts: 5,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    for pair in raw.chunks(2) {
        let value = pair.get(1).expect("every flag takes a value");
        match pair[0].as_str() {
            "--commits" => args.commits = value.parse().unwrap(),
            "--docs" => args.docs = value.parse().unwrap(),
            "--snapshot-every" => args.snapshot_every = value.parse().unwrap(),
            "--replay-max" => args.replay_max = value.parse().unwrap(),
            "--restarts" => args.restarts = value.parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

const GROUP_COMMIT: usize = 1_000;

fn fill(dir: &std::path::Path, args: &Args) {
    let options = SqliteOptions {
        // Filling is not what is measured; the files are the same either way.
        sync: SyncMode::Off,
        history_retained_commits: concord_server::config::HISTORY_RETAINED_COMMITS,
        snapshot_spacing_commits: concord_server::config::SNAPSHOT_EVERY_COMMITS,
        limits: Limits::default(),
    };
    let mut storage = SqliteStorage::open(dir, options).unwrap();
    let mut store = Store::new(Limits::default());
    let mut rng = SmallRng::seed_from_u64(7);
    let docs: Vec<DocId> =
        (0..args.docs).map(|d| DocId::parse(&format!("doc-{d}")).unwrap()).collect();
    let mut since: HashMap<usize, u64> = HashMap::new();
    let mut replay_total = 0;
    let mut group = Vec::with_capacity(GROUP_COMMIT);
    let mut snapshots = Vec::new();
    let started = Instant::now();
    for i in 0..args.commits {
        let d = rng.gen_range(0..docs.len());
        let cell = rng.gen_range(0..64);
        let base = store.version(&docs[d]);
        let reads = vec![Pointer::parse(&format!("/c{cell}")).unwrap()];
        let writes = serde_json::from_value(json!([
            {"op": "incr", "path": "/n", "value": 1},
            {"op": "add", "path": format!("/c{cell}"), "value": {"by": i % 977, "at": i}},
        ]))
        .unwrap();
        let tx = Transaction {
            doc: docs[d].clone(),
            tx_id: TxId::parse(&format!("fill-{i}")).unwrap(),
            base,
            reads: reads.clone(),
            writes,
        };
        let Commit::Applied { change: Some(change), .. } = store.commit(tx) else {
            panic!("blind commits on the current base apply")
        };
        let version = change.version;
        group.push(LogEntry { change, base, reads, time_ms: i, author: "bench".into() });
        let count = since.entry(d).or_insert(0);
        *count += 1;
        replay_total += 1;
        if args.snapshot_every > 0 && *count >= args.snapshot_every {
            replay_total -= *count;
            since.remove(&d);
            let value = store.value(&docs[d]).unwrap().to_value();
            snapshots.push(DocumentState { doc: docs[d].clone(), version, value });
        }
        if args.snapshot_every > 0 && replay_total >= args.replay_max {
            for (d, _) in since.drain() {
                let (value, version) = store.get(&docs[d]);
                snapshots.push(DocumentState { doc: docs[d].clone(), version, value });
            }
            replay_total = 0;
        }
        if group.len() == GROUP_COMMIT {
            storage.append(&group).unwrap();
            group.clear();
            if !snapshots.is_empty() {
                storage.save_snapshots(&snapshots).unwrap();
                snapshots.clear();
            }
        }
    }
    storage.append(&group).unwrap();
    storage.save_snapshots(&snapshots).unwrap();
    println!(
        "filled {} commits over {} documents in {:.1} s",
        args.commits,
        args.docs,
        started.elapsed().as_secs_f64()
    );
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let args = args();
    let dir = tempfile::tempdir().unwrap();
    // The files go in a directory the fill does not lock; the server locks it.
    fill(dir.path(), &args);
    let db_bytes: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum();
    println!("data directory: {:.0} MiB", db_bytes as f64 / (1024.0 * 1024.0));

    let (mut reads, mut restarts) = (Vec::new(), Vec::new());
    let mut replayed = 0;
    for _ in 0..args.restarts {
        let options = SqliteOptions {
            sync: SyncMode::Full,
            history_retained_commits: concord_server::config::HISTORY_RETAINED_COMMITS,
            snapshot_spacing_commits: concord_server::config::SNAPSHOT_EVERY_COMMITS,
            limits: Limits::default(),
        };
        let started = Instant::now();
        let mut storage = SqliteStorage::open(dir.path(), options).unwrap();
        let recovered = storage.recover(Limits::default().tx_dedup_entries_max * 2).unwrap();
        reads.push(started.elapsed());
        drop((recovered, storage));

        let config = Config {
            storage: Some(StorageConfig::new(dir.path())),
            shards: 2,
            ..Config::default()
        };
        let started = Instant::now();
        let server = ServerBuilder::new().config(config).bind("127.0.0.1:0").await.unwrap();
        restarts.push(started.elapsed());
        replayed = server.metrics().recovery_replayed_commits.get();
        server.shutdown().await;
    }
    println!(
        "snapshot every {} commits per document, all at {} unsnapshotted: {} logged changes \
         replayed on restart",
        args.snapshot_every, args.replay_max, replayed
    );
    println!("read (open + recover), median of {}: {:?}", args.restarts, median(&mut reads));
    println!(
        "restart (ServerBuilder::bind), median of {}: {:?}",
        args.restarts,
        median(&mut restarts)
    );
}
