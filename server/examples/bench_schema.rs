//! What a commit's schema check costs, on a small and a large board.
//!
//! ```sh
//! cargo run --release -p concord-server --example bench_schema -- \
//!     [--commits 20000] [--rounds 15]
//! ```
//!
//! Two boards, `board:small` with 10 shapes and `board:large` with 100,000,
//! each shape `{"kind": "rect", "x": .., "y": .., "w": .., "h": .., "fill":
//! ..}`, under the rules `{"docs": "board:*", "pointer": "/shapes/*",
//! "schema": <a shape schema>}`. Each commit replaces one shape's `x` (the
//! shape chosen round-robin), straight on a `Store` (no sockets): once with
//! `Store::commit` (no check) and once with `Store::commit_checked` running
//! `Rules::check_schemas`, which validates the one shape the commit wrote.
//! Reports, per board, the median over `--rounds` rounds of the time per
//! commit with and without the check, and their difference: what the schema
//! check costs. It should not depend on the board's size.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use concord_engine::store::{AllowAll, Commit, CommitCheck, CommitView};
use concord_engine::{DocId, Limits, PatchOp, Pointer, Rejection, Store, Transaction, TxId};
use concord_server::Rules;
use serde_json::{json, Value};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The server's schema check, alone (no guards).
struct Schemas<'a>(&'a Rules);

impl CommitCheck for Schemas<'_> {
    fn check(&mut self, view: &CommitView<'_>) -> Result<(), Rejection> {
        self.0.check_schemas(view.doc, view.value, view.written)
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

fn board(shapes: usize) -> Value {
    let shapes: serde_json::Map<String, Value> = (0..shapes)
        .map(|i| {
            let shape =
                json!({"kind": "rect", "x": i, "y": i % 100, "w": 10, "h": 20, "fill": "#336699"});
            (format!("s{i}"), shape)
        })
        .collect();
    json!({"title": "bench", "shapes": shapes})
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs `commits` commits moving shapes of `doc` (which has `shapes`
/// shapes); nanoseconds per commit.
fn round(
    store: &mut Store,
    doc: &DocId,
    shapes: usize,
    commits: usize,
    serial: &mut u64,
    check: &mut dyn CommitCheck,
) -> f64 {
    let mut txs = Vec::with_capacity(commits);
    let mut base = store.version(doc);
    for i in 0..commits {
        *serial += 1;
        let shape = (*serial as usize) % shapes;
        let path = Pointer::parse(&format!("/shapes/s{shape}/x")).unwrap();
        txs.push(Transaction {
            doc: doc.clone(),
            tx_id: TxId::parse(&format!("t{serial}")).unwrap(),
            base,
            reads: Vec::new(),
            writes: vec![PatchOp::Replace { path, value: json!(i) }],
        });
        base = base.next();
    }
    let started = Instant::now();
    for tx in txs {
        match store.commit_checked(tx, check) {
            Commit::Applied { .. } => {}
            other => panic!("expected a commit, got {other:?}"),
        }
    }
    started.elapsed().as_nanos() as f64 / commits as f64
}

fn main() {
    let commits = arg("--commits", 20_000);
    let rounds = arg("--rounds", 15);
    let rules = Rules::from_value(&json!({"schemas": [{
        "docs": "board:*",
        "pointer": "/shapes/*",
        "schema": {
            "type": "object",
            "required": ["kind", "x", "y"],
            "additionalProperties": false,
            "properties": {
                "kind": {"enum": ["rect", "ellipse", "line", "text"]},
                "x": {"type": "number"}, "y": {"type": "number"},
                "w": {"type": "number", "minimum": 0}, "h": {"type": "number", "minimum": 0},
                "fill": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}
            }
        }
    }]}))
    .unwrap();
    let limits = Limits { doc_size_bytes_max: 1 << 30, ..Limits::default() };
    println!("commits per round: {commits}, rounds: {rounds} (median of rounds, ns per commit)");
    println!("{:>8} {:>12} {:>12} {:>14}", "shapes", "no check", "schema", "check costs");
    let mut results = Vec::new();
    for shapes in [10, 100_000] {
        let doc = DocId::parse(&format!("board:{shapes}")).unwrap();
        let mut store = Store::new(limits);
        store.restore(doc.clone(), board(shapes), concord_engine::Version(1));
        let mut serial = 0;
        // Warm up both paths.
        round(&mut store, &doc, shapes, commits, &mut serial, &mut AllowAll);
        round(&mut store, &doc, shapes, commits, &mut serial, &mut Schemas(&rules));
        let (mut plain, mut checked) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            plain.push(round(&mut store, &doc, shapes, commits, &mut serial, &mut AllowAll));
            checked.push(round(
                &mut store,
                &doc,
                shapes,
                commits,
                &mut serial,
                &mut Schemas(&rules),
            ));
        }
        let (plain, checked) = (median(plain), median(checked));
        println!("{shapes:>8} {plain:>12.0} {checked:>12.0} {:>14.0}", checked - plain);
        results.push(checked - plain);
    }
    println!("check cost ratio, 100,000 shapes / 10 shapes: {:.2}", results[1] / results[0]);
}
