//! The authoritative store: many documents, each with its value, version and
//! version index. `Store::commit` is the single place where a transaction is
//! validated, applied and sequenced.
//!
//! The store is a plain value with no locks; the server gives each shard of
//! documents to one task that owns it (ARCHITECTURE.md, "one owner").

use std::collections::{HashMap, VecDeque};

use foldhash::fast::RandomState;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::doc::Doc;
use crate::error::PatchError;
use crate::ids::{DocId, TxId, Version};
use crate::index::{ReadCheck, VersionIndex};
use crate::limits::Limits;
use crate::patch::{self, Patch, PatchOp};
use crate::pointer::Pointer;

/// Most conflicts one rejection lists; `conflicts_total` counts them all.
pub const CONFLICTS_REPORTED_MAX: usize = 16;
/// How many recent commit tx ids each document keeps to name the writer in a
/// conflict explanation.
pub const COMMIT_AUTHORS_KEPT_MAX: usize = 4_096;

/// A transaction as submitted: reads taken at `base`, writes as a patch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub doc: DocId,
    pub tx_id: TxId,
    pub base: Version,
    #[serde(default)]
    pub reads: Vec<Pointer>,
    #[serde(default)]
    pub writes: Patch,
}

/// A committed change: what is logged and broadcast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub doc: DocId,
    pub version: Version,
    pub tx_id: TxId,
    pub patch: Patch,
}

/// One read that a later commit invalidated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The read pointer.
    pub pointer: Pointer,
    /// The commit that overwrote it (or an ancestor or descendant of it).
    pub version: Version,
    /// That commit's transaction id, when still remembered.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tx_id: Option<TxId>,
}

/// Why a transaction did not commit. Every variant explains itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Rejection {
    /// Reads were overwritten after the base: resync and re-run.
    #[error("read conflict on {conflicts_total} pointer(s)")]
    Conflict { conflicts: Vec<Conflict>, conflicts_total: usize },
    /// The base is older than the history kept for validation: resync and
    /// re-run.
    #[error("base {base} is older than the validation horizon {horizon}")]
    Stale { base: Version, horizon: Version },
    /// The base is newer than the document: the client is confused.
    #[error("base {base} is ahead of the document at {current}")]
    BaseAhead { base: Version, current: Version },
    /// The patch did not apply cleanly; the document is unchanged.
    #[error("{0}")]
    Patch(PatchError),
    /// The transaction is larger than the limits allow.
    #[error("{what} is {len}, over the limit of {max}")]
    TooLarge { what: TooLargePart, len: usize, max: usize },
    /// The tx id is not in the dedup window, and its base is older than
    /// `floor`: commits up to `floor` have had their ids forgotten, so this
    /// may be a resubmission of one of them, and committing it could commit
    /// it twice. Nothing changed. A first submission resyncs and re-runs (as
    /// `Stale`); a resubmission's outcome is unknown and is the
    /// application's to decide.
    #[error("tx id not remembered and base {base} is older than the dedup floor {floor}")]
    OutcomeUnknown { base: Version, floor: Version },
    /// The session may not write what op `op_index` writes (`pointer`):
    /// the document is read-only for it, the location is outside its write
    /// scopes, or it is a server-only path. Nothing changed; re-running
    /// will not help.
    #[error("forbidden: op {op_index} writes {pointer}: {message}")]
    Forbidden { op_index: usize, pointer: Pointer, message: String },
    /// The document after the patch breaks the schema for `pointer`.
    /// Nothing changed.
    #[error("invalid: {pointer}: {message}")]
    Invalid { pointer: Pointer, message: String },
    /// A guard of the server's application refused the commit. Nothing
    /// changed.
    #[error("vetoed: {message}")]
    Vetoed { message: String },
}

impl Rejection {
    /// About how much memory this rejection takes, explanation included.
    pub fn memory_estimate_bytes(&self) -> usize {
        let heap = match self {
            Rejection::Conflict { conflicts, .. } => conflicts
                .iter()
                .map(|conflict| {
                    let author = conflict.tx_id.as_ref().map_or(0, |id| 16 + id.as_str().len());
                    size_of::<Conflict>() + conflict.pointer.heap_bytes_estimate() + author
                })
                .sum(),
            Rejection::Patch(error) => {
                error.error.pointers().map(Pointer::heap_bytes_estimate).sum()
            }
            Rejection::Forbidden { pointer, message, .. }
            | Rejection::Invalid { pointer, message } => {
                pointer.heap_bytes_estimate() + message.len()
            }
            Rejection::Vetoed { message } => message.len(),
            Rejection::Stale { .. }
            | Rejection::BaseAhead { .. }
            | Rejection::TooLarge { .. }
            | Rejection::OutcomeUnknown { .. } => 0,
        };
        size_of::<Rejection>() + heap
    }

    /// True when re-running the transaction on a fresh replica may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Rejection::Conflict { .. } | Rejection::Stale { .. } | Rejection::Patch(_))
    }
}

/// Which part of a transaction broke a size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TooLargePart {
    ReadSet,
    Patch,
}

impl std::fmt::Display for TooLargePart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TooLargePart::ReadSet => "read set",
            TooLargePart::Patch => "patch",
        })
    }
}

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

/// The final word on a transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Committed { version: Version },
    Rejected { rejection: Rejection },
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

/// How far back a document's commit ids are all still in the dedup window.
///
/// The ids of every commit above `floor` are remembered. An unknown id with
/// a base below `floor` may be a forgotten commit resubmitted, so it gets
/// [`Rejection::OutcomeUnknown`] instead of being decided (a base at or
/// above the floor cannot be: that commit would be above the floor too).
///
/// Kept without any per-commit work: the window counts its generation
/// turnovers, and a document catches up when it is next used. At a
/// turnover the generation before the previous one is forgotten, so the
/// floor rises to the document's version when the previous one began.
#[derive(Debug, Clone, Copy)]
struct DedupFloor {
    floor: Version,
    /// The window generation this record is up to date with.
    generation: u64,
    /// At least the highest version among this document's ids that entered
    /// the window before `generation` began: its version then, or 0 for a
    /// document created or restored since (higher only makes the floor more
    /// cautious).
    generation_start: Version,
}

impl DedupFloor {
    /// This record in window generation `generation`, for a document now at
    /// `version` that has had no commit since `self.generation`'s last one.
    fn caught_up(self, generation: u64, version: Version) -> Self {
        if self.generation == generation {
            return self;
        }
        let floor = if self.generation + 1 == generation {
            // One turnover: the generation before `self.generation` was
            // forgotten, and all of its ids are at or below the version at
            // which `self.generation` began.
            self.floor.max(self.generation_start)
        } else {
            // Two or more: every id this document had is forgotten (a later
            // commit would have caught the record up).
            version
        };
        // And no commit since the last turnover, so the current generation
        // began at `version`.
        Self { floor, generation, generation_start: version }
    }
}

/// Many documents and the recent transaction ids.
#[derive(Debug, Default)]
pub struct Store {
    limits: Limits,
    docs: hashbrown::HashMap<DocId, Document, RandomState>,
    outcomes: OutcomeWindow,
}

/// The dedup window: decided tx ids and their outcomes, in two generations
/// of at most `Limits::tx_dedup_entries_max` each. New ids go into the
/// current generation; when it is full, the previous one is forgotten whole
/// and the current one takes its place. So the last `tx_dedup_entries_max`
/// ids are always remembered (and up to twice as many may be), and a commit
/// never evicts one id at a time: a per-commit removal from a 100,000-entry
/// map cost a cache miss and, through tombstones, periodic in-place rehashes
/// of the whole table (docs/benchmarks.md).
#[derive(Debug, Default)]
struct OutcomeWindow {
    current: Generation,
    previous: Generation,
    /// Turnovers so far: the number of the current generation.
    generation: u64,
}

/// One generation of the window. Its entries need no drop, so forgetting
/// it is a `memset` of the table's control bytes, not a sweep over 100,000
/// entries (which had cost 0.7 cache misses per commit, and a pause at
/// every turnover): ids of up to 23 bytes (clients'
/// are about 15) are kept inline, longer ones in a map of their own, and a
/// rejection (rare) in a vector the entry indexes.
#[derive(Debug, Default)]
struct Generation {
    short_ids: HashMap<InlineTxId, Remembered, RandomState>,
    long_ids: HashMap<Box<str>, Remembered, RandomState>,
    rejections: Vec<Rejection>,
    /// What `rejections` take, as counted against
    /// `Limits::tx_dedup_rejection_bytes_max`.
    rejection_bytes: usize,
}

/// A tx id of at most 23 bytes, inline and `Copy`: its length, then its
/// bytes, then zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InlineTxId([u8; 24]);

impl InlineTxId {
    /// `None` for an id longer than 23 bytes.
    fn new(id: &str) -> Option<Self> {
        let mut bytes = [0; 24];
        bytes[0] = u8::try_from(id.len()).ok()?;
        bytes.get_mut(1..=id.len())?.copy_from_slice(id.as_bytes());
        Some(Self(bytes))
    }

    fn as_str(&self) -> &str {
        let (len, rest) = self.0.split_first().unwrap_or((&0, &[]));
        // `new` copied a whole `str` of `len` bytes.
        rest.get(..usize::from(*len))
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .unwrap_or("")
    }
}

impl std::hash::Hash for InlineTxId {
    /// Three words rather than 24 bytes one by one.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for word in self.0.chunks_exact(8) {
            let mut le = [0; 8];
            le.copy_from_slice(word);
            state.write_u64(u64::from_le_bytes(le));
        }
    }
}

/// An outcome as the window keeps it: a commit's version, or the index of
/// its generation's rejection. 16 bytes, so an entry with its inline id is
/// 40, as when ids were `CompactString`s.
#[derive(Debug, Clone, Copy)]
enum Remembered {
    Committed(Version),
    Rejected(usize),
}

impl Generation {
    fn len(&self) -> usize {
        self.short_ids.len() + self.long_ids.len()
    }

    fn get(&self, tx_id: &str, short: Option<&InlineTxId>) -> Option<Outcome> {
        let remembered = match short {
            Some(short) => self.short_ids.get(short),
            None => self.long_ids.get(tx_id),
        }?;
        Some(match *remembered {
            Remembered::Committed(version) => Outcome::Committed { version },
            Remembered::Rejected(index) => {
                // Indices come from `insert`, into the same generation.
                let rejection = self.rejections.get(index)?.clone();
                Outcome::Rejected { rejection }
            }
        })
    }

    fn insert(&mut self, tx_id: &str, outcome: Outcome) {
        let remembered = match outcome {
            Outcome::Committed { version } => Remembered::Committed(version),
            Outcome::Rejected { rejection } => {
                self.rejection_bytes += rejection.memory_estimate_bytes();
                self.rejections.push(rejection);
                Remembered::Rejected(self.rejections.len() - 1)
            }
        };
        match InlineTxId::new(tx_id) {
            Some(short) => self.short_ids.insert(short, remembered),
            None => self.long_ids.insert(tx_id.into(), remembered),
        };
    }

    /// Forgets everything; keeps the allocations, so the generations stop
    /// growing once both have been filled.
    fn clear(&mut self) {
        self.short_ids.clear();
        self.long_ids.clear();
        self.rejections.clear();
        self.rejection_bytes = 0;
    }
}

impl OutcomeWindow {
    fn get(&self, tx_id: &TxId) -> Option<Outcome> {
        let (id, short) = (tx_id.as_str(), InlineTxId::new(tx_id.as_str()));
        self.current.get(id, short.as_ref()).or_else(|| self.previous.get(id, short.as_ref()))
    }

    fn contains(&self, tx_id: &TxId) -> bool {
        self.get(tx_id).is_some()
    }

    /// Turns the generations over if the current one is full. Done before
    /// a transaction is decided, so that its document's dedup floor catches
    /// up with the generation its id will be remembered in.
    fn make_room(&mut self, limits: &Limits) {
        let full = self.current.len() >= limits.tx_dedup_entries_max
            || self.current.rejection_bytes >= limits.tx_dedup_rejection_bytes_max;
        if full {
            self.previous.clear();
            std::mem::swap(&mut self.previous, &mut self.current);
            self.generation += 1;
        }
    }

    /// Remembers a decided id; `make_room` must have been called since the
    /// last insert.
    fn insert(&mut self, tx_id: &TxId, outcome: Outcome) {
        self.current.insert(tx_id.as_str(), outcome);
    }
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
