//! A serializability certificate: an independent, brute-force check of a
//! commit log against the guarantees docs/semantics.md states.
//!
//! The checker replays the log from the initial documents with
//! [`patch::apply`] and nothing else of the engine: it never consults the
//! version index, so a bug there cannot hide itself. For every committed
//! transaction it verifies that
//! 1. its version is the document's next one (versions are dense here), or the
//!    current one for a commit that wrote nothing;
//! 2. its base is no newer than the state it was applied to;
//! 3. no commit between its base and its commit point wrote a location that
//!    overlaps one of its read pointers (ancestor, self or descendant);
//! 4. every read pointer resolves to the same value (or to nothing, both
//!    times) at its base and just before it committed, that is, it saw exactly
//!    what it would have seen had it run alone at its commit point;
//! 5. its patch applies cleanly to the state before it.
//!
//! Check 4 follows from check 3 when the array rule of [`patch`] is sound; it
//! is there to catch the case where it is not.
//!
//! ## Cost
//! The checker keeps every version of every document it replays, so memory is
//! O(commits × document size) and checking a read costs O(commits since its
//! base × writes per commit). That is fine for tests, fuzzing and
//! simulations, which is what it is for; it is not meant for production logs.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::error::PatchError;
use crate::ids::{DocId, TxId, Version};
use crate::limits::Limits;
use crate::patch;
use crate::pointer::Pointer;
use crate::store::{Store, Transaction};

/// One entry of a commit log: a transaction exactly as submitted, and the
/// version the store reported it committed at.
#[derive(Debug, Clone, PartialEq)]
pub struct CommittedTx {
    pub tx: Transaction,
    pub version: Version,
}

/// Why a commit log is not a serializable history (or does not end where it
/// should). Each variant names the offending transaction.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Violation {
    /// The commit's version is not the one the document was due: the next
    /// version for a commit that wrote something, the current one for a
    /// commit that wrote nothing.
    #[error("{tx_id} on {doc}: committed at {found}, expected {expected}")]
    VersionOutOfSequence { doc: DocId, tx_id: TxId, expected: Version, found: Version },
    /// The commit's base is newer than the state it was applied to.
    #[error("{tx_id} on {doc}: base {base} is ahead of the document at {current}")]
    BaseAhead { doc: DocId, tx_id: TxId, base: Version, current: Version },
    /// The commit has reads, but its base predates the first state the
    /// checker was given for the document, so they cannot be checked (the
    /// engine answers such a transaction with `Stale`).
    #[error("{tx_id} on {doc}: base {base} predates the known history, which starts at {first}")]
    BaseBeforeHistory { doc: DocId, tx_id: TxId, base: Version, first: Version },
    /// The commit's patch does not apply to the state before it.
    #[error("{tx_id} on {doc} at {version}: {error}")]
    PatchFailed { doc: DocId, tx_id: TxId, version: Version, error: PatchError },
    /// A read pointer overlaps a location that a commit between the base and
    /// the commit point wrote: the transaction committed on stale reads.
    #[error(
        "{tx_id} on {doc}: read {pointer} at base {base}, but {by} overwrote it at {overwritten_at}"
    )]
    ReadOverwritten {
        doc: DocId,
        tx_id: TxId,
        pointer: Pointer,
        base: Version,
        overwritten_at: Version,
        by: TxId,
    },
    /// A read pointer resolves differently at the base than just before the
    /// commit, although no recorded write overlaps it: the written-locations
    /// rule missed a change.
    #[error("{tx_id} on {doc}: {pointer} changed between base {base} and {before_commit}")]
    ReadChanged { doc: DocId, tx_id: TxId, pointer: Pointer, base: Version, before_commit: Version },
    /// The same transaction id committed twice (commits that wrote nothing
    /// do not count: deciding one again changes nothing).
    #[error(
        "{tx_id} committed twice: on {first_doc} at {first_version}, then on {doc} at {version}"
    )]
    DuplicateCommit {
        tx_id: TxId,
        first_doc: DocId,
        first_version: Version,
        doc: DocId,
        version: Version,
    },
    /// The replayed final state differs from the one it is compared with.
    /// `actual_version` is `None` when only values were compared.
    #[error("{doc}: replay ends at {replayed_version} with a different state than expected")]
    FinalStateDiffers {
        doc: DocId,
        replayed_version: Version,
        replayed: Box<Value>,
        actual_version: Option<Version>,
        actual: Box<Value>,
    },
    /// The log wrote a document that the final states compared with do not
    /// include, so the comparison would be incomplete.
    #[error("{doc} was written by the log but has no final state to compare with")]
    FinalStateMissing { doc: DocId },
}

/// Every version of one document seen during the replay.
#[derive(Debug)]
struct History {
    /// The version of `states[0]`.
    first: Version,
    states: Vec<Value>,
    /// `commits[i]` turned `states[i]` into `states[i + 1]`.
    commits: Vec<Replayed>,
}

/// A commit that wrote something: who, and which locations.
#[derive(Debug)]
struct Replayed {
    tx_id: TxId,
    writes: Vec<Pointer>,
}

impl History {
    fn new(value: Value, version: Version) -> Self {
        Self { first: version, states: vec![value], commits: Vec::new() }
    }

    fn current(&self) -> Version {
        Version(self.first.0 + self.states.len() as u64 - 1)
    }

    /// Position of `version` in the vectors; callers keep it within
    /// `first..=current()`.
    fn slot(&self, version: Version) -> usize {
        (version.0 - self.first.0) as usize
    }

    fn state(&self, version: Version) -> &Value {
        &self.states[self.slot(version)]
    }

    fn latest(&self) -> &Value {
        &self.states[self.states.len() - 1]
    }
}

/// Replays a commit log and checks it. Configure the starting point, then call
/// [`Checker::replay`].
#[derive(Debug, Clone, Default)]
pub struct Checker {
    initial: HashMap<DocId, (Value, Version)>,
}

impl Checker {
    /// A checker where every document starts as `{}` at version 0 and no
    /// transaction id may commit twice.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts `doc` at `value` and `version` instead (a restored snapshot).
    #[must_use]
    pub fn with_document(mut self, doc: DocId, value: Value, version: Version) -> Self {
        self.initial.insert(doc, (value, version));
        self
    }

    /// Replays `log` in order, checking every commit, and returns the
    /// certificate with the final state of every document the log touched.
    pub fn replay(&self, log: &[CommittedTx]) -> Result<Certificate, Violation> {
        // The checker replays what the store accepted under its own limits;
        // enforcing limits again here would only make it disagree with a store
        // configured differently.
        let limits = Limits {
            json_depth_max: usize::MAX,
            doc_size_bytes_max: usize::MAX,
            ..Limits::default()
        };
        let mut histories: BTreeMap<DocId, History> = BTreeMap::new();
        let mut committed: HashMap<TxId, (DocId, Version)> = HashMap::new();
        let mut reads_checked = 0;
        for entry in log {
            let tx = &entry.tx;
            let history = histories.entry(tx.doc.clone()).or_insert_with(|| {
                let (value, version) = self
                    .initial
                    .get(&tx.doc)
                    .cloned()
                    .unwrap_or_else(|| (Value::Object(Default::default()), Version::ZERO));
                History::new(value, version)
            });
            let before = history.current();
            reads_checked += check_commit(history, entry, &limits)?;
            // A commit that wrote nothing (only `test` ops) made no version and
            // changed nothing, so deciding it again cannot apply it twice.
            let wrote = entry.version > before;
            if !wrote {
                continue;
            }
            if let Some((first_doc, first_version)) =
                committed.insert(tx.tx_id.clone(), (tx.doc.clone(), entry.version))
            {
                return Err(Violation::DuplicateCommit {
                    tx_id: tx.tx_id.clone(),
                    first_doc,
                    first_version,
                    doc: tx.doc.clone(),
                    version: entry.version,
                });
            }
        }
        let documents = histories
            .into_iter()
            .map(|(doc, history)| {
                let version = history.current();
                let value = history.states.into_iter().next_back().unwrap_or_default();
                (doc, (value, version))
            })
            .collect();
        Ok(Certificate { commits: log.len(), reads_checked, documents })
    }
}

/// Checks one commit against its document's history and appends it; returns
/// how many reads it checked.
fn check_commit(
    history: &mut History,
    entry: &CommittedTx,
    limits: &Limits,
) -> Result<usize, Violation> {
    let tx = &entry.tx;
    let current = history.current();
    if tx.base > current {
        return Err(Violation::BaseAhead {
            doc: tx.doc.clone(),
            tx_id: tx.tx_id.clone(),
            base: tx.base,
            current,
        });
    }
    if tx.base < history.first && !tx.reads.is_empty() {
        return Err(Violation::BaseBeforeHistory {
            doc: tx.doc.clone(),
            tx_id: tx.tx_id.clone(),
            base: tx.base,
            first: history.first,
        });
    }
    let mut next = history.latest().clone();
    let applied =
        patch::apply(&mut next, 0, &tx.writes, limits).map_err(|error| Violation::PatchFailed {
            doc: tx.doc.clone(),
            tx_id: tx.tx_id.clone(),
            version: entry.version,
            error,
        })?;
    let wrote = !applied.writes.is_empty();
    let expected = if wrote { current.next() } else { current };
    if entry.version != expected {
        return Err(Violation::VersionOutOfSequence {
            doc: tx.doc.clone(),
            tx_id: tx.tx_id.clone(),
            expected,
            found: entry.version,
        });
    }
    // Every commit after the base, up to and including `current`, was
    // sequenced before this transaction: none may have written what it read.
    // (A blind write's base may predate the history; it has no reads.)
    let since_base =
        if tx.reads.is_empty() { &[][..] } else { &history.commits[history.slot(tx.base)..] };
    for pointer in &tx.reads {
        for (offset, commit) in since_base.iter().enumerate() {
            if commit.writes.iter().any(|w| w.overlaps(pointer)) {
                return Err(Violation::ReadOverwritten {
                    doc: tx.doc.clone(),
                    tx_id: tx.tx_id.clone(),
                    pointer: pointer.clone(),
                    base: tx.base,
                    overwritten_at: Version(tx.base.0 + 1 + offset as u64),
                    by: commit.tx_id.clone(),
                });
            }
        }
        let seen = patch::resolve(history.state(tx.base), pointer);
        let now = patch::resolve(history.latest(), pointer);
        if seen != now {
            return Err(Violation::ReadChanged {
                doc: tx.doc.clone(),
                tx_id: tx.tx_id.clone(),
                pointer: pointer.clone(),
                base: tx.base,
                before_commit: current,
            });
        }
    }
    if wrote {
        history.states.push(next);
        history
            .commits
            .push(Replayed { tx_id: tx.tx_id.clone(), writes: applied.writes.into_vec() });
    }
    Ok(tx.reads.len())
}

/// What a successful replay proves, and where it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Certificate {
    commits: usize,
    reads_checked: usize,
    documents: BTreeMap<DocId, (Value, Version)>,
}

impl Certificate {
    /// How many commits the log held.
    pub fn commits(&self) -> usize {
        self.commits
    }

    /// How many read pointers were checked, over all commits.
    pub fn reads_checked(&self) -> usize {
        self.reads_checked
    }

    /// The replayed final value and version of `doc`, if the log touched it.
    pub fn document(&self, doc: &DocId) -> Option<(&Value, Version)> {
        self.documents.get(doc).map(|(value, version)| (value, *version))
    }

    /// Checks that every document in `final_docs` has the replayed value
    /// (`{}` if the log never touched it) and that every document the log
    /// touched is in `final_docs`.
    pub fn verify_values(&self, final_docs: &HashMap<DocId, Value>) -> Result<(), Violation> {
        for doc in self.documents.keys() {
            if !final_docs.contains_key(doc) {
                return Err(Violation::FinalStateMissing { doc: doc.clone() });
            }
        }
        for (doc, actual) in final_docs {
            let (replayed, replayed_version) = self.replayed_or_empty(doc);
            if replayed != *actual {
                return Err(Violation::FinalStateDiffers {
                    doc: doc.clone(),
                    replayed_version,
                    replayed: Box::new(replayed),
                    actual_version: None,
                    actual: Box::new(actual.clone()),
                });
            }
        }
        Ok(())
    }

    /// Checks that the store holds exactly the replayed documents, values and
    /// versions, and nothing the log did not write (a document the store only
    /// knows as `{}` at version 0 counts as untouched).
    pub fn verify_store(&self, store: &Store) -> Result<(), Violation> {
        let store_docs = store.doc_ids().cloned();
        let docs: std::collections::BTreeSet<DocId> =
            self.documents.keys().cloned().chain(store_docs).collect();
        for doc in docs {
            let (replayed, replayed_version) = self.replayed_or_empty(&doc);
            let (actual, actual_version) = store.get(&doc);
            if replayed != actual || replayed_version != actual_version {
                return Err(Violation::FinalStateDiffers {
                    doc,
                    replayed_version,
                    replayed: Box::new(replayed),
                    actual_version: Some(actual_version),
                    actual: Box::new(actual),
                });
            }
        }
        Ok(())
    }

    fn replayed_or_empty(&self, doc: &DocId) -> (Value, Version) {
        self.documents
            .get(doc)
            .cloned()
            .unwrap_or_else(|| (Value::Object(Default::default()), Version::ZERO))
    }
}

/// Replays `log` from empty documents and checks every commit; see the module
/// docs for what is checked.
pub fn replay(log: &[CommittedTx]) -> Result<Certificate, Violation> {
    Checker::new().replay(log)
}

/// Replays `log` from empty documents, checks every commit, and checks that
/// the replay ends at `final_docs` (which must cover every document the log
/// wrote).
pub fn check(
    log: &[CommittedTx],
    final_docs: &HashMap<DocId, Value>,
) -> Result<Certificate, Violation> {
    let certificate = replay(log)?;
    certificate.verify_values(final_docs)?;
    Ok(certificate)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::Commit;

    fn doc(raw: &str) -> DocId {
        DocId::parse(raw).unwrap()
    }

    fn tx(doc_id: &str, id: &str, base: u64, reads: &[&str], writes: Value) -> Transaction {
        Transaction {
            doc: doc(doc_id),
            tx_id: TxId::parse(id).unwrap(),
            base: Version(base),
            reads: reads.iter().map(|r| Pointer::parse(r).unwrap()).collect(),
            writes: serde_json::from_value(writes).unwrap(),
        }
    }

    fn at(version: u64, tx: Transaction) -> CommittedTx {
        CommittedTx { tx, version: Version(version) }
    }

    fn set_counter(n: i64) -> Value {
        json!([{"op": "replace", "path": "/n", "value": n}])
    }

    /// A history over two documents with disjoint concurrent writers, an
    /// append, a test-only commit and a read of an absent path.
    fn valid_log() -> Vec<CommittedTx> {
        vec![
            at(
                1,
                tx(
                    "d",
                    "init",
                    0,
                    &[],
                    json!([{"op": "add", "path": "", "value": {"n": 0, "s": {"a": 1, "b": 1}, "l": [1]}}]),
                ),
            ),
            at(2, tx("d", "rmw", 1, &["/n"], set_counter(1))),
            // Based before `rmw`, but reads only `/s/a`, which `rmw` left alone.
            at(
                3,
                tx("d", "sa", 1, &["/s/a"], json!([{"op": "replace", "path": "/s/a", "value": 2}])),
            ),
            at(
                4,
                tx(
                    "d",
                    "sb",
                    2,
                    &["/s/b", "/absent"],
                    json!([{"op": "incr", "path": "/s/b", "value": 5}]),
                ),
            ),
            at(5, tx("d", "push", 0, &[], json!([{"op": "add", "path": "/l/-", "value": 2}]))),
            // Reads `/l/0` from before the append: appends write their index only.
            at(
                5,
                tx("d", "check", 3, &["/l/0"], json!([{"op": "test", "path": "/l/0", "value": 1}])),
            ),
            at(1, tx("e", "other", 0, &[""], json!([{"op": "add", "path": "/x", "value": true}]))),
        ]
    }

    #[test]
    fn a_valid_log_passes_and_ends_at_the_replayed_state() {
        let log = valid_log();
        let finals = HashMap::from([
            (doc("d"), json!({"n": 1, "s": {"a": 2, "b": 6}, "l": [1, 2]})),
            (doc("e"), json!({"x": true})),
            (doc("untouched"), json!({})),
        ]);
        let certificate = check(&log, &finals).unwrap();
        assert_eq!(certificate.commits(), 7);
        assert_eq!(certificate.reads_checked(), 6);
        assert_eq!(certificate.document(&doc("d")).unwrap().1, Version(5));
        assert_eq!(certificate.document(&doc("untouched")), None);
    }

    #[test]
    fn a_lost_update_is_rejected() {
        let mut log = valid_log();
        // A second read-modify-write of `/n` from the same base as `rmw`
        // committed after it: one of the two increments is lost.
        log.truncate(2);
        log.push(at(3, tx("d", "rmw2", 1, &["/n"], set_counter(1))));
        let violation = replay(&log).unwrap_err();
        assert_eq!(
            violation,
            Violation::ReadOverwritten {
                doc: doc("d"),
                tx_id: TxId::parse("rmw2").unwrap(),
                pointer: Pointer::parse("/n").unwrap(),
                base: Version(1),
                overwritten_at: Version(2),
                by: TxId::parse("rmw").unwrap(),
            }
        );
    }

    #[test]
    fn a_read_of_an_absent_path_conflicts_with_its_creation() {
        let log = vec![
            at(
                1,
                tx(
                    "d",
                    "create",
                    0,
                    &[],
                    json!([{"op": "add", "path": "/k", "value": {"deep": 1}}]),
                ),
            ),
            at(
                2,
                tx(
                    "d",
                    "blind",
                    0,
                    &["/k/deep"],
                    json!([{"op": "add", "path": "/k2", "value": 1}]),
                ),
            ),
        ];
        assert!(matches!(
            replay(&log),
            Err(Violation::ReadOverwritten { overwritten_at: Version(1), .. })
        ));
    }

    #[test]
    fn a_version_gap_is_rejected() {
        let mut log = valid_log();
        log[2].version = Version(4);
        assert_eq!(
            replay(&log).unwrap_err(),
            Violation::VersionOutOfSequence {
                doc: doc("d"),
                tx_id: TxId::parse("sa").unwrap(),
                expected: Version(3),
                found: Version(4),
            }
        );
        // A commit that wrote nothing must not claim a new version either.
        let mut log = valid_log();
        log[5].version = Version(6);
        assert!(matches!(
            replay(&log),
            Err(Violation::VersionOutOfSequence { expected: Version(5), .. })
        ));
    }

    #[test]
    fn a_base_ahead_of_the_document_is_rejected() {
        let mut log = valid_log();
        log[1].tx.base = Version(2);
        assert!(matches!(
            replay(&log),
            Err(Violation::BaseAhead { base: Version(2), current: Version(1), .. })
        ));
    }

    #[test]
    fn a_patch_that_does_not_apply_is_rejected() {
        let mut log = valid_log();
        log[5].tx.writes =
            serde_json::from_value(json!([{"op": "test", "path": "/l/0", "value": 9}])).unwrap();
        assert!(matches!(replay(&log), Err(Violation::PatchFailed { version: Version(5), .. })));
    }

    #[test]
    fn a_tx_id_committing_twice_is_rejected_unless_it_wrote_nothing() {
        let mut log = valid_log();
        log.push(at(
            6,
            tx("d", "push", 0, &[], json!([{"op": "add", "path": "/l/-", "value": 2}])),
        ));
        assert!(matches!(
            replay(&log),
            Err(Violation::DuplicateCommit { first_version: Version(5), version: Version(6), .. })
        ));
        // A test-only commit, decided twice, changed nothing either time.
        let mut log = valid_log();
        let check = json!([{"op": "test", "path": "/l/0", "value": 1}]);
        log.push(at(5, tx("d", "check", 5, &[], check.clone())));
        log.push(at(5, tx("d", "check", 5, &[], check)));
        assert!(replay(&log).is_ok());
    }

    #[test]
    fn restored_documents_start_where_given_and_older_reads_are_unverifiable() {
        let restored = Checker::new().with_document(doc("d"), json!({"n": 7}), Version(10));
        let ok = vec![at(11, tx("d", "a", 10, &["/n"], set_counter(8)))];
        assert_eq!(
            restored.replay(&ok).unwrap().document(&doc("d")),
            Some((&json!({"n": 8}), Version(11)))
        );
        let blind = vec![at(11, tx("d", "b", 3, &[], set_counter(8)))];
        assert!(restored.replay(&blind).is_ok(), "blind writes are never validated");
        let old = vec![at(11, tx("d", "c", 3, &["/n"], set_counter(8)))];
        assert!(matches!(
            restored.replay(&old),
            Err(Violation::BaseBeforeHistory { first: Version(10), .. })
        ));
    }

    #[test]
    fn final_states_must_match_and_be_complete() {
        let log = valid_log();
        let certificate = replay(&log).unwrap();
        let mut finals = HashMap::from([(doc("d"), json!({"n": 1}))]);
        assert!(matches!(
            certificate.verify_values(&finals),
            Err(Violation::FinalStateMissing { .. })
        ));
        finals.insert(doc("e"), json!({"x": true}));
        assert!(matches!(
            certificate.verify_values(&finals),
            Err(Violation::FinalStateDiffers { actual_version: None, .. })
        ));
    }

    #[test]
    fn a_log_recorded_from_the_store_matches_the_store() {
        let mut store = Store::new(Limits::default());
        let mut log = Vec::new();
        for entry in valid_log() {
            match store.commit(entry.tx.clone()) {
                Commit::Applied { version, .. } => log.push(CommittedTx { tx: entry.tx, version }),
                other => panic!("{other:?}"),
            }
        }
        // A rejected lost update leaves no entry in the log.
        let lost = tx("d", "rmw2", 1, &["/n"], set_counter(1));
        assert!(matches!(store.commit(lost), Commit::Rejected(_)));
        let certificate = replay(&log).unwrap();
        certificate.verify_store(&store).unwrap();
        // A store that moved on without the log does not match.
        store.commit(tx("d", "unlogged", 5, &[], set_counter(9)));
        assert!(matches!(
            certificate.verify_store(&store),
            Err(Violation::FinalStateDiffers { actual_version: Some(Version(6)), .. })
        ));
    }
}
