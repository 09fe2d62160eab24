//! Runs the shared conflict vectors (`tests/vectors/conflicts.json`) through
//! the store. The TypeScript client runs the same file, so the two replica
//! implementations cannot drift apart on what conflicts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use concord_engine::store::Commit;
use concord_engine::{DocId, Limits, Patch, Pointer, Rejection, Store, Transaction, TxId, Version};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct Vectors {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    doc: Value,
    earlier: Patch,
    tx: TxPart,
    expect: String,
    #[serde(default)]
    conflicts: Vec<Pointer>,
    #[serde(default)]
    patch_reason: Option<String>,
    #[serde(default)]
    op_index: Option<usize>,
    after: Value,
}

#[derive(Deserialize)]
struct TxPart {
    reads: Vec<Pointer>,
    writes: Patch,
}

fn check(case: Case) {
    let name = &case.name;
    let doc = DocId::parse("vectors").unwrap();
    let mut store = Store::new(Limits::default());
    store.restore(doc.clone(), case.doc, Version::ZERO);
    let earlier = Transaction {
        doc: doc.clone(),
        tx_id: TxId::parse("earlier").unwrap(),
        base: Version::ZERO,
        reads: vec![],
        writes: case.earlier,
    };
    assert!(matches!(store.commit(earlier), Commit::Applied { .. }), "{name}: earlier commit");
    let tx = Transaction {
        doc: doc.clone(),
        tx_id: TxId::parse("tx").unwrap(),
        base: Version::ZERO,
        reads: case.tx.reads,
        writes: case.tx.writes,
    };
    match (case.expect.as_str(), store.commit(tx)) {
        ("commit", Commit::Applied { .. }) => {}
        ("conflict", Commit::Rejected(Rejection::Conflict { conflicts, conflicts_total })) => {
            let pointers: Vec<Pointer> = conflicts.iter().map(|c| c.pointer.clone()).collect();
            assert_eq!(pointers, case.conflicts, "{name}: conflicting pointers");
            assert_eq!(conflicts_total, case.conflicts.len(), "{name}");
            assert!(
                conflicts.iter().all(|c| c.version == Version(1)),
                "{name}: overwriting version"
            );
            let writer = conflicts[0].tx_id.as_ref().map(TxId::as_str);
            assert_eq!(writer, Some("earlier"), "{name}: the rejection names the writer");
        }
        ("patch", Commit::Rejected(Rejection::Patch(error))) => {
            let reason = serde_json::to_value(&error.error).unwrap()["reason"].clone();
            assert_eq!(
                reason.as_str(),
                case.patch_reason.as_deref(),
                "{name}: patch failure reason"
            );
            assert_eq!(Some(error.op_index), case.op_index, "{name}: failing op");
        }
        (expected, got) => panic!("{name}: expected {expected}, got {got:?}"),
    }
    assert_eq!(store.get(&doc).0, case.after, "{name}: document after");
}

#[test]
fn shared_conflict_vectors_hold() {
    let raw = include_str!("vectors/conflicts.json");
    let vectors: Vectors = serde_json::from_str(raw).unwrap();
    let count = vectors.cases.len();
    assert!(count >= 20, "the vector file lost cases: {count}");
    for case in vectors.cases {
        check(case);
    }
}
