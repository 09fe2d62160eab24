//! The authoritative store: many documents, each with its value, version and
//! version index. `Store::commit` is the single place where a transaction is
//! validated, applied and sequenced. What goes in and comes out (the
//! `Transaction`, its `Change` or `Rejection`) is in `transaction`; the
//! memory of recent tx ids that keeps a transaction from committing twice
//! is in `dedup`.
//!
//! The store is a plain value with no locks; the server gives each shard of
//! documents to one task that owns it (ARCHITECTURE.md, "one owner").

use std::collections::VecDeque;

use foldhash::fast::RandomState;

use serde_json::Value;

use crate::dedup::{DedupFloor, InlineTxId, OutcomeWindow};
use crate::doc::Doc;
use crate::error::PatchError;
use crate::ids::{DocId, TxId, Version};
use crate::index::{ReadCheck, VersionIndex};
use crate::limits::Limits;
use crate::patch::{self, Patch, PatchOp};
use crate::pointer::Pointer;
// The wire types, at their old paths too (`concord_engine::store::Outcome`).
pub use crate::transaction::{Change, Conflict, Outcome, Rejection, TooLargePart, Transaction};

/// Most conflicts one rejection lists; `conflicts_total` counts them all.
pub const CONFLICTS_REPORTED_MAX: usize = 16;
/// How many recent commit tx ids each document keeps to name the writer in a
/// conflict explanation.
pub const COMMIT_AUTHORS_KEPT_MAX: usize = 4_096;

/// A transaction's patch as applied, shown to a [`CommitCheck`] before it
/// is stamped: the document after the patch, and the locations it wrote
/// (under the array rule: an array insert or removal writes the array).
#[derive(Debug)]
pub struct CommitView<'a> {
    pub doc: &'a DocId,
    pub tx_id: &'a TxId,
    pub writes: &'a [PatchOp],
    pub value: &'a Doc,
    pub written: &'a [Pointer],
}

/// Decides whether an applied patch may stand (the server's schemas and
/// guards). Runs inside the commit, so it must be deterministic in what it
/// is shown for replay to hold, and quick.
pub trait CommitCheck {
    fn check(&mut self, view: &CommitView<'_>) -> Result<(), Rejection>;
}

/// The check that allows everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl CommitCheck for AllowAll {
    fn check(&mut self, _view: &CommitView<'_>) -> Result<(), Rejection> {
        Ok(())
    }
}

/// What `Store::commit` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Commit {
    /// Committed now; the change is to be logged and broadcast. A transaction
    /// that writes nothing (only `test` ops) commits at the current version
    /// without creating a new one, and has no change.
    Applied { version: Version, change: Option<Change> },
    /// Rejected now; nothing changed.
    Rejected(Rejection),
    /// This tx id was seen before: here is its original outcome, and nothing
    /// changed this time.
    Duplicate(Outcome),
}

impl Commit {
    /// The outcome to report to the submitter.
    pub fn outcome(&self) -> Outcome {
        match self {
            Commit::Applied { version, .. } => Outcome::Committed { version: *version },
            Commit::Rejected(rejection) => Outcome::Rejected { rejection: rejection.clone() },
            Commit::Duplicate(outcome) => outcome.clone(),
        }
    }
}

/// Why a logged change could not be replayed: the log is not the one this
/// store wrote (or was damaged in a way storage did not catch).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplayError {
    /// The change does not follow the document's version.
    #[error("log entry {got} of {doc} does not follow {held}")]
    OutOfSequence { doc: DocId, held: Version, got: Version },
    /// The change's patch no longer applies.
    #[error("log entry {version} of {doc} does not apply: {error}")]
    Patch { doc: DocId, version: Version, error: PatchError },
    /// The change wrote nothing, so it could not have made a version.
    #[error("log entry {version} of {doc} writes nothing")]
    WritesNothing { doc: DocId, version: Version },
}

/// One document's authoritative state.
#[derive(Debug)]
struct Document {
    value: Doc,
    version: Version,
    size_bytes: usize,
    index: VersionIndex,
    dedup: DedupFloor,
    /// Tx ids of the most recent commits; `authors[i]` committed version
    /// `authors_first + i`.
    authors: VecDeque<Author>,
    authors_first: Version,
    /// The tx id of the commit that made `version`, when this store made
    /// it: also in `authors`, but shared here, so that the most common
    /// conflict, with the latest commit, names it without an allocation.
    latest_author: Option<TxId>,
}

impl Document {
    /// A document at `version` whose commits up to `version` have no
    /// remembered ids (yet), in window generation `generation`.
    fn new(value: Doc, version: Version, limits: &Limits, generation: u64) -> Self {
        let size_bytes = patch::encoded_size_estimate(&value, usize::MAX);
        Self {
            value,
            version,
            size_bytes,
            index: VersionIndex::new(version, limits.removed_paths_bytes_max),
            // None of its ids entered the window before this generation.
            dedup: DedupFloor { floor: version, generation, generation_start: Version::ZERO },
            authors: VecDeque::new(),
            authors_first: version.next(),
            latest_author: None,
        }
    }

    /// Applies an already validated patch; returns the new version, or `None`
    /// when the patch wrote nothing (and so made no version).
    fn apply(
        &mut self,
        doc_id: &DocId,
        writes: &[PatchOp],
        tx_id: &TxId,
        limits: &Limits,
        check: &mut dyn CommitCheck,
    ) -> Result<Option<Version>, Rejection> {
        let applied = patch::apply(&mut self.value, self.size_bytes, writes, limits)
            .map_err(Rejection::Patch)?;
        if applied.writes.is_empty() {
            return Ok(None);
        }
        let view =
            CommitView { doc: doc_id, tx_id, writes, value: &self.value, written: &applied.writes };
        if let Err(rejection) = check.check(&view) {
            applied.undo(&mut self.value);
            return Err(rejection);
        }
        let version = self.version.next();
        self.version = version;
        self.size_bytes = self.size_bytes.saturating_add_signed(applied.size_delta_bytes as isize);
        for pointer in &applied.writes {
            self.index.record_write(&mut self.value, pointer, version);
        }
        // Oldest out first: the ring then never holds more than the limit,
        // so it keeps that capacity, and the newest id takes the slot the
        // oldest left, one cache line for both.
        if self.authors.len() >= COMMIT_AUTHORS_KEPT_MAX {
            self.authors.pop_front();
            self.authors_first = self.authors_first.next();
        }
        self.authors.push_back(Author::new(tx_id));
        self.latest_author = Some(tx_id.clone());
        Ok(Some(version))
    }

    fn author_of(&self, version: Version) -> Option<TxId> {
        if version == self.version {
            if let Some(latest) = &self.latest_author {
                return Some(latest.clone());
            }
        }
        let offset = version.0.checked_sub(self.authors_first.0)?;
        self.authors.get(usize::try_from(offset).ok()?)?.tx_id()
    }

    /// Brings the dedup floor up to the window's generation `generation`.
    /// Called before every use of the floor and before every id of this
    /// document enters the window, so nothing committed to the document
    /// since `dedup.generation` began can be missed.
    fn catch_up_dedup(&mut self, generation: u64) {
        self.dedup = self.dedup.caught_up(generation, self.version);
    }
}

/// A commit's tx id as a document's author list keeps it: inline when it
/// is short, as clients' ids are. A shared `TxId` would be dropped
/// `COMMIT_AUTHORS_KEPT_MAX` commits later, long after it left the cache:
/// an atomic decrement and a `free` on a cold line, about one cache miss
/// per commit (docs/benchmarks.md, "Eighth round").
#[derive(Debug, Clone)]
enum Author {
    Inline(InlineTxId),
    Shared(TxId),
}

impl Author {
    fn new(tx_id: &TxId) -> Self {
        InlineTxId::new(tx_id.as_str())
            .map_or_else(|| Author::Shared(tx_id.clone()), Author::Inline)
    }

    fn tx_id(&self) -> Option<TxId> {
        match self {
            // Made from a valid id, so it parses.
            Author::Inline(id) => TxId::parse(id.as_str()).ok(),
            Author::Shared(id) => Some(id.clone()),
        }
    }
}

/// Many documents and the recent transaction ids.
#[derive(Debug, Default)]
pub struct Store {
    limits: Limits,
    docs: hashbrown::HashMap<DocId, Document, RandomState>,
    outcomes: OutcomeWindow,
}

impl Store {
    pub fn new(limits: Limits) -> Self {
        Self { limits, ..Self::default() }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The current value and version of `doc` (`{}` at version 0 if never
    /// written).
    pub fn get(&self, doc: &DocId) -> (Value, Version) {
        match self.docs.get(doc) {
            Some(d) => (d.value.to_value(), d.version),
            None => (Value::Object(Default::default()), Version::ZERO),
        }
    }

    /// A borrowed view of `doc`'s value, if it was ever written.
    pub fn value(&self, doc: &DocId) -> Option<&Doc> {
        self.docs.get(doc).map(|d| &d.value)
    }

    pub fn version(&self, doc: &DocId) -> Version {
        self.docs.get(doc).map_or(Version::ZERO, |d| d.version)
    }

    /// Ids of every document ever written.
    pub fn doc_ids(&self) -> impl Iterator<Item = &DocId> {
        self.docs.keys()
    }

    /// Installs a document at a version (restoring from a snapshot). History
    /// before `version` is unknown, so older bases get `Stale`, and, until
    /// [`Store::remember_committed`] gives the ids of the commits before it,
    /// unknown ids with older bases get `OutcomeUnknown`.
    pub fn restore(&mut self, doc: DocId, value: Value, version: Version) {
        let generation = self.outcomes.generation;
        let mut document = Document::new(Doc::from(&value), version, &self.limits, generation);
        if let Some(replaced) = self.docs.get(&doc) {
            // The ids of what it replaces may still be in the window.
            document.dedup.generation_start = replaced.version.max(version);
        }
        self.docs.insert(doc, document);
    }

    /// Remembers that `tx_id` committed `doc` at `version` (recovery: tx ids
    /// from the log up to `doc`'s snapshot), so a resubmission after a
    /// restart is still answered with its original outcome.
    ///
    /// Give each document's ids newest first, after [`Store::restore`]: an
    /// id for the version at the document's dedup floor lowers the floor
    /// past it, so an unbroken run down from the snapshot makes all of them
    /// count. Any other id is still remembered but moves no floor.
    pub fn remember_committed(&mut self, doc: &DocId, tx_id: TxId, version: Version) {
        if self.outcomes.contains(&tx_id) {
            return;
        }
        self.make_room();
        let generation = self.outcomes.generation;
        if let Some(document) = self.docs.get_mut(doc) {
            document.catch_up_dedup(generation);
            let dedup = &mut document.dedup;
            if version == dedup.floor && version > Version::ZERO {
                dedup.floor = Version(version.0 - 1);
            }
        }
        self.remember(&tx_id, Outcome::Committed { version });
    }

    /// The version at or below which `doc`'s commit ids may be forgotten
    /// (see [`Rejection::OutcomeUnknown`]).
    pub fn dedup_floor(&self, doc: &DocId) -> Version {
        self.docs.get(doc).map_or(Version::ZERO, |document| {
            document.dedup.caught_up(self.outcomes.generation, document.version).floor
        })
    }

    /// The outcome remembered for `tx_id`, if still in the window.
    pub fn outcome_of(&self, tx_id: &TxId) -> Option<Outcome> {
        self.outcomes.get(tx_id)
    }

    /// Validates, applies and sequences one transaction.
    pub fn commit(&mut self, tx: Transaction) -> Commit {
        self.commit_checked(tx, &mut AllowAll)
    }

    /// [`Store::commit`], with `check` asked, after the patch applied and
    /// before anything is stamped or sequenced, whether the result may
    /// stand. A refusal undoes the patch: the document, its version and its
    /// index are exactly as before, and the refusal is not remembered as the
    /// tx id's outcome (it is not retryable, so a resubmission is checked
    /// again). A patch that writes nothing is not checked.
    pub fn commit_checked(&mut self, tx: Transaction, check: &mut dyn CommitCheck) -> Commit {
        if let Some(outcome) = self.outcomes.get(&tx.tx_id) {
            return Commit::Duplicate(outcome);
        }
        self.make_room();
        let result = self.decide(tx.doc, tx.base, &tx.reads, tx.writes, &tx.tx_id, check);
        let outcome = match &result {
            Commit::Applied { version, .. } => Outcome::Committed { version: *version },
            Commit::Rejected(rejection) if !rejection.is_retryable() => {
                // Too-large and confused transactions are not remembered: they
                // cost nothing to reject again and must not fill the window.
                return result;
            }
            Commit::Rejected(rejection) => Outcome::Rejected { rejection: rejection.clone() },
            Commit::Duplicate(_) => unreachable!("decide never reports duplicates"),
        };
        self.remember(&tx.tx_id, outcome);
        result
    }

    fn decide(
        &mut self,
        doc_id: DocId,
        base: Version,
        reads: &[Pointer],
        writes: Patch,
        tx_id: &TxId,
        check: &mut dyn CommitCheck,
    ) -> Commit {
        let limits = self.limits;
        if reads.len() > limits.read_set_pointers_max {
            return Commit::Rejected(Rejection::TooLarge {
                what: TooLargePart::ReadSet,
                len: reads.len(),
                max: limits.read_set_pointers_max,
            });
        }
        if writes.len() > limits.patch_ops_max {
            return Commit::Rejected(Rejection::TooLarge {
                what: TooLargePart::Patch,
                len: writes.len(),
                max: limits.patch_ops_max,
            });
        }
        let doc = self.document_mut(&doc_id);
        if base > doc.version {
            return Commit::Rejected(Rejection::BaseAhead { base, current: doc.version });
        }
        // The caller found no outcome for this id.
        if base < doc.dedup.floor {
            return Commit::Rejected(Rejection::OutcomeUnknown { base, floor: doc.dedup.floor });
        }
        if let Some(rejection) = validate_reads(doc, reads, base) {
            return Commit::Rejected(rejection);
        }
        match doc.apply(&doc_id, &writes, tx_id, &limits, check) {
            Err(rejection) => Commit::Rejected(rejection),
            Ok(None) => Commit::Applied { version: doc.version, change: None },
            Ok(Some(version)) => {
                let change = Change { doc: doc_id, version, tx_id: tx_id.clone(), patch: writes };
                Commit::Applied { version, change: Some(change) }
            }
        }
    }

    /// Re-applies a change read back from the commit log (recovery): no
    /// validation, since it was validated when it committed, but the version
    /// index and the tx-id window are rebuilt as if it had just committed.
    pub fn replay(&mut self, change: &Change) -> Result<(), ReplayError> {
        let limits = self.limits;
        self.make_room();
        let doc = self.document_mut(&change.doc);
        let at = |version| (change.doc.clone(), version);
        if change.version != doc.version.next() {
            let (doc_id, got) = at(change.version);
            return Err(ReplayError::OutOfSequence { doc: doc_id, held: doc.version, got });
        }
        let doc_id = change.doc.clone();
        match doc.apply(&doc_id, &change.patch, &change.tx_id, &limits, &mut AllowAll) {
            Ok(Some(_)) => {}
            Ok(None) => {
                let (doc, version) = at(change.version);
                return Err(ReplayError::WritesNothing { doc, version });
            }
            Err(Rejection::Patch(error)) => {
                let (doc, version) = at(change.version);
                return Err(ReplayError::Patch { doc, version, error });
            }
            Err(other) => unreachable!("AllowAll refuses nothing, yet {other}"),
        }
        self.remember(&change.tx_id, Outcome::Committed { version: change.version });
        Ok(())
    }

    /// The document, created empty at version 0 on first use, with its
    /// dedup floor caught up with the window.
    fn document_mut(&mut self, doc: &DocId) -> &mut Document {
        let limits = &self.limits;
        let generation = self.outcomes.generation;
        // One lookup; the id is cloned only for a new document.
        let document = self.docs.entry_ref(doc).or_insert_with(|| {
            Document::new(Doc::empty_object(), Version::ZERO, limits, generation)
        });
        document.catch_up_dedup(generation);
        document
    }

    /// Makes room in the dedup window for one more id. Call before the
    /// document is looked up, then [`Store::remember`].
    fn make_room(&mut self) {
        self.outcomes.make_room(&self.limits);
    }

    fn remember(&mut self, tx_id: &TxId, outcome: Outcome) {
        self.outcomes.insert(tx_id, outcome);
    }
}

fn validate_reads(doc: &Document, reads: &[Pointer], base: Version) -> Option<Rejection> {
    let mut conflicts = Vec::new();
    let mut conflicts_total = 0;
    for pointer in reads {
        match doc.index.check_read(&doc.value, pointer, base) {
            ReadCheck::Clean => {}
            ReadCheck::Stale { horizon } => return Some(Rejection::Stale { base, horizon }),
            ReadCheck::Overwritten(version) => {
                conflicts_total += 1;
                if conflicts.len() < CONFLICTS_REPORTED_MAX {
                    let tx_id = doc.author_of(version);
                    conflicts.push(Conflict { pointer: pointer.clone(), version, tx_id });
                }
            }
        }
    }
    (conflicts_total > 0).then_some(Rejection::Conflict { conflicts, conflicts_total })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ids::TX_ID_LEN_MAX;

    fn tx(id: &str, base: u64, reads: &[&str], writes: Value) -> Transaction {
        Transaction {
            doc: DocId::parse("d").unwrap(),
            tx_id: TxId::parse(id).unwrap(),
            base: Version(base),
            reads: reads.iter().map(|r| Pointer::parse(r).unwrap()).collect(),
            writes: serde_json::from_value(writes).unwrap(),
        }
    }

    #[test]
    fn a_conflict_names_its_author_whether_the_id_is_kept_inline_or_shared() {
        // 23 bytes is the longest id kept inline; 24 is shared.
        for author in ["a", &"i".repeat(23), &"s".repeat(24), &"l".repeat(TX_ID_LEN_MAX)] {
            let mut store = Store::new(Limits::default());
            let write = json!([{"op": "add", "path": "/a", "value": 1}]);
            assert!(matches!(store.commit(tx(author, 0, &[], write)), Commit::Applied { .. }));
            let write = json!([{"op": "add", "path": "/b", "value": 1}]);
            let Commit::Rejected(Rejection::Conflict { conflicts, .. }) =
                store.commit(tx("reader", 0, &["/a"], write))
            else {
                panic!("a read of /a at 0 conflicts with {author}'s write")
            };
            assert_eq!(conflicts[0].tx_id.as_ref().map(TxId::as_str), Some(author));
        }
    }

    #[test]
    fn a_conflict_names_the_last_commit_authors_kept_max_authors() {
        let mut store = Store::new(Limits::default());
        let add = |path: &str| json!([{"op": "add", "path": path, "value": 1}]);
        store.commit(tx("wrote-a", 0, &[], add("/a")));
        store.commit(tx("wrote-c", 1, &[], add("/c")));
        for i in 2..=COMMIT_AUTHORS_KEPT_MAX {
            store.commit(tx(&format!("wrote-b-{i}"), i as u64, &[], add("/b")));
        }
        // Versions 1 to COMMIT_AUTHORS_KEPT_MAX + 1 are committed: the
        // authors of all but the first are kept.
        let writer_of = |store: &mut Store, read: &str, id: &str| {
            let commit = store.commit(tx(id, 0, &[read], add("/d")));
            let Commit::Rejected(Rejection::Conflict { conflicts, .. }) = commit else {
                panic!("a read of {read} at 0 conflicts, got {commit:?}")
            };
            conflicts[0].tx_id.clone()
        };
        assert_eq!(writer_of(&mut store, "/c", "r1").as_ref().map(TxId::as_str), Some("wrote-c"));
        assert_eq!(writer_of(&mut store, "/a", "r2"), None);
        let last = format!("wrote-b-{COMMIT_AUTHORS_KEPT_MAX}");
        assert_eq!(writer_of(&mut store, "/b", "r3").as_ref().map(TxId::as_str), Some(&*last));
    }

    #[test]
    fn replaying_the_log_rebuilds_documents_index_and_tx_ids() {
        let mut store = Store::new(Limits::default());
        let mut log = Vec::new();
        for (i, path) in ["/a", "/b", "/a"].iter().enumerate() {
            let writes = json!([{"op": "add", "path": path, "value": i}]);
            let Commit::Applied { change: Some(change), .. } =
                store.commit(tx(&format!("t{i}"), i as u64, &[], writes))
            else {
                panic!("commit {i}")
            };
            log.push(change);
        }
        let mut recovered = Store::new(Limits::default());
        for change in &log {
            recovered.replay(change).unwrap();
        }
        let doc = DocId::parse("d").unwrap();
        assert_eq!(recovered.get(&doc), store.get(&doc));
        // The tx-id window survived: a resubmission is a duplicate.
        let again =
            recovered.commit(tx("t1", 1, &[], json!([{"op": "add", "path": "/b", "value": 9}])));
        assert_eq!(again, Commit::Duplicate(Outcome::Committed { version: Version(2) }));
        // The index survived: a read of /a at version 1 conflicts with commit 3.
        let stale_read = recovered.commit(tx(
            "t9",
            1,
            &["/a"],
            json!([{"op": "add", "path": "/c", "value": 0}]),
        ));
        assert!(matches!(stale_read, Commit::Rejected(Rejection::Conflict { .. })));
        // A log entry out of sequence is refused.
        assert!(matches!(recovered.replay(&log[0]), Err(ReplayError::OutOfSequence { .. })));
    }

    #[test]
    fn ids_of_every_length_keep_their_outcome_across_one_turnover_and_are_then_forgotten() {
        let mut store = Store::new(Limits { tx_dedup_entries_max: 4, ..Limits::default() });
        let write = |k: usize| json!([{"op": "add", "path": format!("/k{k}"), "value": k}]);
        // 1 to 64 bytes: inline up to 23, in the long map above.
        let ids: Vec<String> = [1, 22, 23, 24, 64].iter().map(|len| "i".repeat(*len)).collect();
        let mut outcomes = Vec::new();
        for (k, id) in ids.iter().enumerate() {
            // Every other one is a conflict (remembered with its explanation).
            let reads: &[&str] = if k % 2 == 1 { &["/k0"] } else { &[] };
            let outcome = store.commit(tx(id, 0, reads, write(k))).outcome();
            assert_eq!(
                matches!(outcome, Outcome::Rejected { .. }),
                k % 2 == 1,
                "{id}: {outcome:?}"
            );
            outcomes.push(outcome);
        }
        // Five ids in generations of four: one turnover, none forgotten.
        for (id, outcome) in ids.iter().zip(&outcomes) {
            let again = store.commit(tx(id, 0, &[], write(99)));
            assert_eq!(again, Commit::Duplicate(outcome.clone()), "{id}");
        }
        // Two more turnovers forget them all.
        let doc = DocId::parse("d").unwrap();
        for k in 0..8 {
            let base = store.version(&doc).0;
            let later = store.commit(tx(&format!("later-{k}"), base, &[], write(100 + k)));
            assert!(matches!(later, Commit::Applied { .. }), "{later:?}");
        }
        for id in &ids {
            assert!(store.outcome_of(&TxId::parse(id).unwrap()).is_none(), "{id}");
        }
    }

    fn incr(id: &str, doc: &str, base: u64) -> Transaction {
        Transaction {
            doc: DocId::parse(doc).unwrap(),
            ..tx(id, base, &[], json!([{"op": "incr", "path": "/n", "value": 1}]))
        }
    }

    fn committed(commit: &Commit) -> Version {
        match commit {
            Commit::Applied { version, .. } => *version,
            other => panic!("expected a commit, got {other:?}"),
        }
    }

    /// A store whose window keeps two generations of two ids.
    fn small_window() -> Store {
        Store::new(Limits { tx_dedup_entries_max: 2, ..Limits::default() })
    }

    #[test]
    fn a_forgotten_commit_resubmitted_gets_outcome_unknown_never_a_second_commit() {
        let mut store = small_window();
        let d = DocId::parse("d").unwrap();
        assert_eq!(committed(&store.commit(incr("a", "d", 0))), Version(1));
        assert_eq!(committed(&store.commit(incr("b", "d", 1))), Version(2));
        // Generation 2 of the window: `a` and `b` are still remembered.
        store.commit(incr("c", "e", 0));
        store.commit(incr("x", "e", 1));
        assert_eq!(
            store.outcome_of(&TxId::parse("a").unwrap()),
            Some(Outcome::Committed { version: Version(1) })
        );
        assert_eq!(store.dedup_floor(&d), Version::ZERO);
        // Generation 3: `a` and `b` are forgotten, so d's floor is 2.
        store.commit(incr("y", "e", 2));
        assert_eq!(store.outcome_of(&TxId::parse("a").unwrap()), None);
        assert_eq!(store.dedup_floor(&d), Version(2));
        for (id, base) in [("a", 0), ("b", 1)] {
            assert_eq!(
                store.commit(incr(id, "d", base)),
                Commit::Rejected(Rejection::OutcomeUnknown {
                    base: Version(base),
                    floor: Version(2)
                })
            );
        }
        // Nothing changed, and the answer is not remembered.
        assert_eq!(store.get(&d).0, json!({"n": 2}));
        assert_eq!(store.outcome_of(&TxId::parse("a").unwrap()), None);
        // A base at the floor cannot belong to a forgotten commit.
        assert_eq!(committed(&store.commit(incr("new", "d", 2))), Version(3));
    }

    #[test]
    fn a_document_untouched_for_two_turnovers_has_every_id_forgotten() {
        let mut store = small_window();
        let d = DocId::parse("d").unwrap();
        store.commit(incr("a", "d", 0));
        store.commit(incr("b", "d", 1));
        // Two full generations of another document: d's ids are gone, and
        // d caught up only at generation 1, when its version was 0.
        for (i, id) in ["c", "x", "y", "z", "w"].iter().enumerate() {
            store.commit(incr(id, "e", i as u64));
        }
        assert_eq!(store.outcome_of(&TxId::parse("b").unwrap()), None);
        assert_eq!(store.dedup_floor(&d), Version(2));
        assert!(matches!(
            store.commit(incr("b", "d", 1)),
            Commit::Rejected(Rejection::OutcomeUnknown { floor: Version(2), .. })
        ));
    }

    #[test]
    fn a_restored_document_knows_the_ids_remembered_newest_first_down_from_its_snapshot() {
        let mut store = Store::new(Limits { tx_dedup_entries_max: 3, ..Limits::default() });
        let d = DocId::parse("d").unwrap();
        store.restore(d.clone(), json!({"n": 5}), Version(5));
        assert_eq!(store.dedup_floor(&d), Version(5));
        store.remember_committed(&d, TxId::parse("t5").unwrap(), Version(5));
        store.remember_committed(&d, TxId::parse("t4").unwrap(), Version(4));
        // A gap: t2 is remembered, but 3's id is unknown, so the floor stays.
        store.remember_committed(&d, TxId::parse("t2").unwrap(), Version(2));
        assert_eq!(store.dedup_floor(&d), Version(3));
        assert_eq!(
            store.commit(incr("t4", "d", 3)),
            Commit::Duplicate(Outcome::Committed { version: Version(4) })
        );
        // The window is full: deciding t3 turns it over, which forgets
        // nothing, so the floor stays where recovery put it.
        assert!(matches!(
            store.commit(incr("t3", "d", 2)),
            Commit::Rejected(Rejection::OutcomeUnknown { floor: Version(3), .. })
        ));
        assert_eq!(committed(&store.commit(incr("t9", "d", 3))), Version(6));
        assert_eq!(
            store.commit(incr("t5", "d", 4)),
            Commit::Duplicate(Outcome::Committed { version: Version(5) })
        );
    }

    #[test]
    fn remembered_rejections_are_bounded_in_bytes_and_turn_the_window_over_early() {
        let limits = Limits { tx_dedup_rejection_bytes_max: 40_000, ..Limits::default() };
        let mut store = Store::new(limits);
        assert_eq!(committed(&store.commit(incr("a", "d", 0))), Version(1));
        // Each rejection lists 16 conflicts on pointers over 1,000 bytes long,
        // about 18 KB of explanation.
        let long = "x".repeat(1_000);
        let reads: Vec<String> = (0..16).map(|j| format!("/n/{long}{j}")).collect();
        let reads: Vec<&str> = reads.iter().map(String::as_str).collect();
        let mut rejected = 0;
        for i in 0..8 {
            // A write to /n, then a transaction based just before it that
            // read below /n.
            let version = committed(&store.commit(incr(&format!("w{i}"), "e", i)));
            let mut reader = tx(&format!("r{i}"), version.0 - 1, &reads, json!([]));
            reader.doc = DocId::parse("e").unwrap();
            let commit = store.commit(reader);
            let Commit::Rejected(rejection @ Rejection::Conflict { .. }) = commit else {
                panic!("{commit:?}")
            };
            let explanation = rejection.memory_estimate_bytes();
            assert!(explanation > 16_000, "{explanation}");
            rejected += 1;
            let bytes = store.outcomes.current.rejection_bytes;
            assert!(bytes < 40_000 + explanation, "{bytes} bytes in one generation");
        }
        // 17 decided ids, far from 100,000, and the window turned over often
        // enough to forget `a`: resubmitted, it cannot commit twice.
        assert_eq!(rejected, 8);
        assert!(store.outcomes.generation >= 2);
        assert_eq!(store.outcome_of(&TxId::parse("a").unwrap()), None);
        assert!(matches!(
            store.commit(incr("a", "d", 0)),
            Commit::Rejected(Rejection::OutcomeUnknown { floor: Version(1), .. })
        ));
        assert_eq!(store.get(&DocId::parse("d").unwrap()).0, json!({"n": 1}));
    }
}
