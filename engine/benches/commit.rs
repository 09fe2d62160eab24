//! The commit path: `Store::commit` end to end, validation and application
//! included. Results and how to read them: docs/benchmarks.md.
//!
//! Each measured call commits one transaction that was built beforehand
//! (`iter_batched`; for (c), batches timed by hand), so formatting tx ids and
//! building pointers, which the server does while decoding, is not measured. Everything `commit` itself
//! does is measured: the duplicate check and remembering the tx id (the store keeps
//! the last 100,000, and every store here is filled to that window before
//! measuring, so each commit also evicts one), read validation against the
//! version index, applying the patch with its undo log, recording the writes
//! and building the `Change`.
//!
//! Run: `cargo bench -p concord-engine --bench commit`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use concord_engine::limits::TX_DEDUP_ENTRIES_MAX;
use concord_engine::{
    Commit, DocId, Limits, PatchOp, Pointer, Rejection, Store, Transaction, TxId, Version,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use serde_json::{json, Map, Value};

/// The allocator the `concord` binary runs on (docs/benchmarks.md, "Ninth
/// round").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Shapes in the ordinary document of (a) and (d).
const SHAPES: usize = 10_000;
/// Shapes in the large document of (b): 5 members each, 1,000,000 keys.
const SHAPES_LARGE: usize = 200_000;
/// Ops in the patch of (d).
const PATCH_OPS: usize = 100;
/// A prime, so stepping by it modulo the shape count (10,000 or 200,000)
/// visits every shape, in an order that jumps around the document the way
/// independent users' edits do.
const STRIDE: usize = 7_919;

/// The server's defaults. The large document of (b) estimates at 16.5 MB
/// (`patch::encoded_size_estimate`), just under the 16 MiB document limit,
/// and no benchmark grows its document.
fn limits() -> Limits {
    Limits::default()
}

fn shape_key(k: usize) -> String {
    format!("s{k}")
}

/// `{"shapes": {"s0": {"x", "y", "w", "h", "color"}, ...}}`.
fn shapes_doc(shapes: usize) -> Value {
    let shapes: Map<String, Value> = (0..shapes)
        .map(|k| {
            let shape =
                json!({"x": k % 1_000, "y": k / 1_000, "w": 40, "h": 30, "color": "#3366cc"});
            (shape_key(k), shape)
        })
        .collect();
    json!({ "shapes": shapes })
}

fn x_of(k: usize) -> Pointer {
    Pointer::from_tokens(["shapes".to_owned(), shape_key(k), "x".to_owned()])
}

/// Hands out transactions in commit order: unique tx ids, and, for benchmarks
/// where every commit succeeds, the base the store will be at when the
/// transaction is committed (versions are dense, so that is a count). The
/// base must be predicted because `iter_batched` builds a whole batch before
/// committing any of it.
struct TxSource {
    doc: DocId,
    serial: u64,
    base: Version,
}

impl TxSource {
    /// Tx ids only need to be unique per store, and each benchmark has its
    /// own store, so every source counts from 1.
    fn new(doc: &DocId, base: Version) -> Self {
        Self { doc: doc.clone(), serial: 0, base }
    }

    /// The next transaction, predicting that every earlier one committed.
    fn next(&mut self, reads: Vec<Pointer>, writes: Vec<PatchOp>) -> Transaction {
        let tx = self.at(self.base, reads, writes);
        self.base = self.base.next();
        tx
    }

    /// The next transaction, at a fixed base.
    fn at(&mut self, base: Version, reads: Vec<Pointer>, writes: Vec<PatchOp>) -> Transaction {
        self.serial += 1;
        let tx_id = TxId::parse(&format!("bench-{}", self.serial)).unwrap();
        Transaction { doc: self.doc.clone(), tx_id, base, reads, writes }
    }
}

/// A store holding `value` as `doc`, with its duplicate-detection window
/// already full, as on a server that has been up for a while. The window is
/// filled with commits to `/warmup`, a member no benchmark reads.
fn warmed_store(doc: &DocId, value: Value) -> (Store, TxSource) {
    let mut store = Store::new(limits());
    store.restore(doc.clone(), value, Version::ZERO);
    let mut source = TxSource::new(doc, Version::ZERO);
    let warmup = Pointer::from_tokens(["warmup"]);
    for i in 0..TX_DEDUP_ENTRIES_MAX {
        let write = PatchOp::Add { path: warmup.clone(), value: json!(i) };
        let tx = source.next(vec![], vec![write]);
        assert!(matches!(store.commit(tx), Commit::Applied { change: Some(_), .. }));
    }
    (store, source)
}

/// `{"counter": …}` after 100,000 commits that each read and replace it,
/// which also fills the tx-id window.
fn counter_store(doc: &DocId, counter: &Pointer) -> (Store, TxSource) {
    let mut store = Store::new(limits());
    store.restore(doc.clone(), json!({"counter": 0}), Version::ZERO);
    let mut source = TxSource::new(doc, Version::ZERO);
    for i in 0..TX_DEDUP_ENTRIES_MAX {
        let write = PatchOp::Replace { path: counter.clone(), value: json!(i) };
        let tx = source.next(vec![counter.clone()], vec![write]);
        assert!(matches!(store.commit(tx), Commit::Applied { change: Some(_), .. }));
    }
    (store, source)
}

/// (a) and (b): read one shape's `x` at the current version and replace it.
fn read_replace(c: &mut Criterion, name: &str, shapes: usize) {
    let doc = DocId::parse("board").unwrap();
    // Built on first use (here and below), so that a filtered run such as
    // `cargo bench ... -- stale` does not build the documents it skips.
    let mut fixture = None;
    let mut k = 0;
    c.bench_function(name, |b| {
        let (store, source) = fixture.get_or_insert_with(|| warmed_store(&doc, shapes_doc(shapes)));
        b.iter_batched(
            || {
                k = (k + STRIDE) % shapes;
                let path = x_of(k);
                let write = PatchOp::Replace { path: path.clone(), value: json!(k) };
                source.next(vec![path], vec![write])
            },
            |tx| {
                let commit = store.commit(tx);
                assert!(matches!(commit, Commit::Applied { change: Some(_), .. }));
                commit
            },
            BatchSize::SmallInput,
        );
    });
}

/// Stale transactions (c) commits between two writes to the counter.
const STALE_PER_WRITE: u64 = 100;

/// (c): a hot counter, 100,000 commits old, read one version before its
/// latest write; every such commit is rejected with a conflict (and
/// remembered, as rejections that a retry may fix are). Between batches of
/// `STALE_PER_WRITE` rejections the counter is written once, outside the
/// measurement, as on a live server: otherwise a stream of nothing but
/// rejections would turn the dedup window over until every commit id of the
/// counter is forgotten, and a stale base would then get `outcome_unknown`
/// instead of a conflict.
fn stale_counter(c: &mut Criterion) {
    let doc = DocId::parse("counter").unwrap();
    let counter = Pointer::from_tokens(["counter"]);
    let mut fixture = None;
    c.bench_function("commit/stale_counter_conflict", |b| {
        let (store, source) = fixture.get_or_insert_with(|| counter_store(&doc, &counter));
        b.iter_custom(|iters| {
            let mut measured = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let batch = left.min(STALE_PER_WRITE);
                left -= batch;
                let current = store.version(&doc);
                let stale = Version(current.0 - 1);
                let txs: Vec<Transaction> = (0..batch)
                    .map(|_| {
                        let write = PatchOp::Replace { path: counter.clone(), value: json!(-1) };
                        source.at(stale, vec![counter.clone()], vec![write])
                    })
                    .collect();
                let mut outcomes = Vec::with_capacity(txs.len());
                let started = Instant::now();
                for tx in txs {
                    outcomes.push(store.commit(tx));
                }
                measured += started.elapsed();
                for commit in outcomes {
                    assert!(
                        matches!(commit, Commit::Rejected(Rejection::Conflict { .. })),
                        "{commit:?}"
                    );
                }
                let write = PatchOp::Replace { path: counter.clone(), value: json!(current.0) };
                let tx = source.at(current, vec![counter.clone()], vec![write]);
                assert!(matches!(store.commit(tx), Commit::Applied { change: Some(_), .. }));
            }
            measured
        });
    });
}

/// (d): one transaction replacing `x` of 100 different shapes, no reads.
fn patch_100(c: &mut Criterion) {
    let doc = DocId::parse("board").unwrap();
    let mut fixture = None;
    let mut k = 0;
    c.bench_function("commit/patch_100_replaces", |b| {
        let (store, source) = fixture.get_or_insert_with(|| warmed_store(&doc, shapes_doc(SHAPES)));
        b.iter_batched(
            || {
                let writes = (0..PATCH_OPS)
                    .map(|_| {
                        k = (k + STRIDE) % SHAPES;
                        PatchOp::Replace { path: x_of(k), value: json!(k) }
                    })
                    .collect();
                source.next(vec![], writes)
            },
            |tx| {
                let commit = store.commit(tx);
                assert!(matches!(commit, Commit::Applied { change: Some(_), .. }));
                commit
            },
            BatchSize::SmallInput,
        );
    });
}

fn benches(c: &mut Criterion) {
    read_replace(c, "commit/read_replace/10k_shapes", SHAPES);
    read_replace(c, "commit/read_replace/1M_keys", SHAPES_LARGE);
    stale_counter(c);
    patch_100(c);
}

criterion_group! {
    name = commit;
    // Shorter than criterion's defaults so that the whole run, including
    // building the documents and filling the tx-id windows, stays near a
    // minute on a small machine; the medians are stable at this length.
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = benches
}
criterion_main!(commit);
