//! Model-based test of `Store::commit` against a naive reference model.
//!
//! Proptest generates short runs of transactions over two documents and a
//! small key space (nested members, array indices, `-`, absent paths and the
//! root), with stale, current and future bases, read sets of every size and
//! resubmitted transaction ids. Each run goes to a real `Store` and to the
//! model below, which keeps every committed version of every document, works
//! out the locations each op writes from the op and the document in front of
//! it (the array rule, restated here rather than taken from the engine), and
//! decides conflicts by comparing every read with every write committed since
//! the base. The two must agree on every outcome and every document after
//! every step, and the committed log must pass the serializability
//! certificate.
//!
//! A second property runs the same with tiny limits, so that the version index
//! compacts (bases below its horizon get `Stale`), the dedup window evicts
//! (a resubmitted id is decided afresh, or gets `outcome_unknown` when its
//! base is below a commit whose id was forgotten) and read sets and patches hit their
//! length limits. The model cannot know exactly when the index compacts, so
//! there it accepts `Stale` for any validated transaction with reads and a
//! base below the current version, checks the reported horizon, and from
//! then on demands `Stale` for every base below the highest horizon seen.
//!
//! A third property adds what the server checks around a commit (issue 16):
//! random permissions (write access to a random subset of top-level keys, to
//! everything, or read-only; checked with `DocRights::check_writes` before
//! the store sees the transaction) and a random commit check ("`/b`, when a
//! number, stays below N", through `Store::commit_checked`). The model
//! restates both by brute force: a transaction commits iff concurrency
//! allows, every location it writes is under an allowed key, and the value
//! after it keeps `/b` below N; a refused one never reaches the log and
//! leaves the store as the model has it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt;

use concord_engine::access::{DocRights, Permissions};
use concord_engine::certificate::{Checker, CommittedTx};
use concord_engine::error::PatchError;
use concord_engine::patch;
use concord_engine::store::{
    AllowAll, Commit, CommitCheck, CommitView, Outcome, Rejection, TooLargePart,
    CONFLICTS_REPORTED_MAX,
};
use concord_engine::{Doc, DocId, Limits, PatchOp, Pointer, Store, Transaction, TxId, Version};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::TestCaseError;
use serde_json::{json, Number, Value};

const DOCS: [&str; 2] = ["d0", "d1"];

/// Small enough that the version index forgets a removal at the second
/// one, so the horizon moves within one case.
fn tiny_limits() -> Limits {
    Limits {
        removed_paths_bytes_max: 1,
        tx_dedup_entries_max: 4,
        read_set_pointers_max: 18,
        patch_ops_max: 3,
        ..Limits::default()
    }
}

// ---------------------------------------------------------------------------
// What a case is made of.

/// Where a transaction's base lies relative to the document's current version.
#[derive(Debug, Clone)]
enum BaseSpec {
    Current,
    Behind(u64),
    Ahead(u64),
    /// Any version from 0 to the current one.
    Anywhere(Index),
}

/// A pointer in a generated op or read set.
#[derive(Clone)]
enum Target {
    Fixed(Pointer),
    /// One of the locations present in the document when the transaction is
    /// built (see `locations`), so that ops find something to work on however
    /// the document has evolved.
    Existing(Index),
}

// Shrunk cases print pointers and values as JSON. An existing location prints
// as its position in the document's list of locations, as a fraction; the
// failure message shows the transaction it resolved to.
impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Fixed(pointer) => write!(f, "{:?}", pointer.to_string()),
            Target::Existing(index) => {
                write!(f, "existing@{:.2}", index.index(1000) as f64 / 1000.0)
            }
        }
    }
}

/// A patch op whose pointers are resolved when the transaction is built.
#[derive(Clone)]
enum OpSpec {
    Add(Target, Value),
    Remove(Target),
    Replace(Target, Value),
    Move {
        from: Target,
        path: Target,
    },
    Copy {
        from: Target,
        path: Target,
    },
    /// `None` tests for the value the location holds when the transaction
    /// is built, so the test passes unless something changes it first.
    Test(Target, Option<Value>),
    Incr(Target, Number),
}

impl fmt::Debug for OpSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpSpec::Add(path, value) => write!(f, "add {path:?} {value}"),
            OpSpec::Remove(path) => write!(f, "remove {path:?}"),
            OpSpec::Replace(path, value) => write!(f, "replace {path:?} {value}"),
            OpSpec::Move { from, path } => write!(f, "move {from:?} to {path:?}"),
            OpSpec::Copy { from, path } => write!(f, "copy {from:?} to {path:?}"),
            OpSpec::Test(path, Some(value)) => write!(f, "test {path:?} {value}"),
            OpSpec::Test(path, None) => write!(f, "test {path:?} (its current value)"),
            OpSpec::Incr(path, delta) => write!(f, "incr {path:?} {delta}"),
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    Submit {
        doc: usize,
        base: BaseSpec,
        reads: Vec<Target>,
        writes: Vec<OpSpec>,
    },
    /// Submits an earlier transaction again, same id and content, as a client
    /// does after losing an acknowledgement.
    Resubmit(Index),
}

fn pointer() -> impl Strategy<Value = Pointer> {
    // Curated pointers hit the seeded structure often; random token paths
    // reach the odd corners (through scalars, into root arrays, `-` mid-path).
    const CURATED: &[&str] = &[
        "",
        "/a",
        "/a/x",
        "/a/y",
        "/a/y/0",
        "/a/y/1",
        "/a/y/-",
        "/b",
        "/b/x",
        "/c",
        "/l",
        "/l/0",
        "/l/1",
        "/l/2",
        "/l/3",
        "/l/-",
        "/l/1/x",
        "/missing/x",
    ];
    let token = select(vec!["a", "b", "l", "x", "y", "0", "1", "2", "-"]);
    prop_oneof![
        3 => select(CURATED).prop_map(|raw| Pointer::parse(raw).unwrap()),
        1 => prop::collection::vec(token, 0..=3).prop_map(Pointer::from_tokens),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        1 => pointer().prop_map(Target::Fixed),
        2 => any::<Index>().prop_map(Target::Existing),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0i64..4).prop_map(Value::from),
        Just(json!("s")),
        Just(Value::Null),
        Just(json!(true)),
        Just(json!({})),
        Just(json!({"x": 1})),
        Just(json!([])),
        Just(json!([1, 2])),
        Just(json!([1, {"x": 2}, 3])),
        Just(json!({"x": {"y": [0]}})),
    ]
}

fn seed() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => Just(json!({"a": {"x": 1, "y": [1, 2]}, "b": 2, "l": [1, {"x": 2}, 3]})),
        2 => Just(json!({"l": [], "b": {"x": 0}})),
        1 => Just(json!([0, 1, {"l": [2]}])),
    ]
}

fn op() -> impl Strategy<Value = OpSpec> {
    let delta =
        prop_oneof![(-2i64..=3).prop_map(Number::from), Just(Number::from_f64(0.5).unwrap()),];
    let expected = prop_oneof![Just(None), value().prop_map(Some)];
    prop_oneof![
        4 => (target(), value()).prop_map(|(path, value)| OpSpec::Add(path, value)),
        3 => target().prop_map(OpSpec::Remove),
        2 => (target(), value()).prop_map(|(path, value)| OpSpec::Replace(path, value)),
        1 => (target(), target()).prop_map(|(from, path)| OpSpec::Move { from, path }),
        1 => (target(), target()).prop_map(|(from, path)| OpSpec::Copy { from, path }),
        1 => (target(), expected).prop_map(|(path, value)| OpSpec::Test(path, value)),
        2 => (target(), delta).prop_map(|(path, delta)| OpSpec::Incr(path, delta)),
    ]
}

fn base() -> impl Strategy<Value = BaseSpec> {
    prop_oneof![
        6 => Just(BaseSpec::Current),
        3 => (1u64..=3).prop_map(BaseSpec::Behind),
        1 => (1u64..=2).prop_map(BaseSpec::Ahead),
        2 => any::<Index>().prop_map(BaseSpec::Anywhere),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    // Now and then a read set longer than the conflicts one rejection lists.
    let reads = prop_oneof![
        12 => prop::collection::vec(target(), 0..=4),
        1 => prop::collection::vec(target(), CONFLICTS_REPORTED_MAX + 1..=CONFLICTS_REPORTED_MAX + 4),
    ];
    // Mostly short patches: one failing op rejects the whole transaction.
    // An empty patch is a pure validation: it commits at the current version.
    let writes = prop_oneof![
        1 => Just(vec![]),
        6 => prop::collection::vec(op(), 1..=2),
        1 => prop::collection::vec(op(), 3..=4),
    ];
    prop_oneof![
        6 => (0..DOCS.len(), base(), reads, writes).prop_map(
            |(doc, base, reads, writes)| Step::Submit { doc, base, reads, writes }
        ),
        1 => any::<Index>().prop_map(Step::Resubmit),
    ]
}

/// Optional seed documents (written blind first), then the steps.
fn case() -> impl Strategy<Value = Vec<Step>> {
    (
        prop::option::weighted(0.8, seed()),
        prop::option::weighted(0.8, seed()),
        prop::collection::vec(step(), 1..=12),
    )
        .prop_map(|(seed0, seed1, steps)| {
            let seeds = [seed0, seed1].into_iter().enumerate();
            let seeds = seeds.filter_map(|(doc, seed)| {
                Some(Step::Submit {
                    doc,
                    base: BaseSpec::Current,
                    reads: vec![],
                    writes: vec![OpSpec::Add(Target::Fixed(Pointer::root()), seed?)],
                })
            });
            seeds.chain(steps).collect()
        })
}

/// Every location in `doc` below the root, plus `-` past the end of every
/// array. (The root is left to `Target::Fixed`: ops on it mostly fail or
/// replace everything.) The root itself when `doc` is a scalar or empty.
fn locations(doc: &Value) -> Vec<Pointer> {
    fn walk(value: &Value, at: Pointer, out: &mut Vec<Pointer>) {
        out.push(at.clone());
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    walk(child, at.child(key.as_str()), out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, at.child(i.to_string()), out);
                }
                out.push(at.child("-"));
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(doc, Pointer::root(), &mut out);
    if out.len() > 1 {
        out.remove(0);
    }
    out
}

/// Builds the patch `specs` describe against the document `doc`.
fn resolve_ops(specs: &[OpSpec], doc: &Value) -> Vec<PatchOp> {
    let locations = locations(doc);
    let at = |target: &Target| match target {
        Target::Fixed(pointer) => pointer.clone(),
        Target::Existing(index) => locations[index.index(locations.len())].clone(),
    };
    specs
        .iter()
        .map(|spec| match spec {
            OpSpec::Add(path, value) => PatchOp::Add { path: at(path), value: value.clone() },
            OpSpec::Remove(path) => PatchOp::Remove { path: at(path) },
            OpSpec::Replace(path, value) => {
                PatchOp::Replace { path: at(path), value: value.clone() }
            }
            OpSpec::Move { from, path } => PatchOp::Move { from: at(from), path: at(path) },
            OpSpec::Copy { from, path } => PatchOp::Copy { from: at(from), path: at(path) },
            OpSpec::Test(path, value) => {
                let path = at(path);
                let value = value
                    .clone()
                    .unwrap_or_else(|| lookup(doc, &path).cloned().unwrap_or(Value::Null));
                PatchOp::Test { path, value }
            }
            OpSpec::Incr(path, value) => PatchOp::Incr { path: at(path), value: value.clone() },
        })
        .collect()
}

fn resolve_reads(targets: &[Target], doc: &Value) -> Vec<Pointer> {
    let locations = locations(doc);
    targets
        .iter()
        .map(|target| match target {
            Target::Fixed(pointer) => pointer.clone(),
            Target::Existing(index) => locations[index.index(locations.len())].clone(),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The reference model.

/// One commit that wrote something: who, and where (by the model's reckoning).
#[derive(Debug)]
struct ModelCommit {
    tx_id: TxId,
    writes: Vec<Pointer>,
}

/// A document's whole history: `states[v]` is its value at version `v`, and
/// `commits[v - 1]` produced it.
#[derive(Debug)]
struct ModelDoc {
    states: Vec<Value>,
    commits: Vec<ModelCommit>,
}

impl ModelDoc {
    fn new() -> Self {
        Self { states: vec![json!({})], commits: Vec::new() }
    }

    fn version(&self) -> Version {
        Version(self.states.len() as u64 - 1)
    }

    fn value(&self) -> &Value {
        &self.states[self.states.len() - 1]
    }

    fn author(&self, version: Version) -> &TxId {
        &self.commits[version.0 as usize - 1].tx_id
    }

    /// Every version after `base` whose commit wrote a location overlapping
    /// `read`, by brute force.
    fn overwrites(&self, read: &Pointer, base: Version) -> Vec<Version> {
        (base.0 + 1..=self.version().0)
            .filter(|v| {
                let commit = &self.commits[*v as usize - 1];
                commit.writes.iter().any(|w| overlaps(w, read))
            })
            .map(Version)
            .collect()
    }
}

/// Prefix relation either way, on reference tokens.
fn overlaps(a: &Pointer, b: &Pointer) -> bool {
    let (a, b) = (a.tokens(), b.tokens());
    let shared = a.len().min(b.len());
    a[..shared] == b[..shared]
}

fn lookup<'v>(doc: &'v Value, pointer: &Pointer) -> Option<&'v Value> {
    // serde_json's own RFC 6901 lookup, not the engine's.
    doc.pointer(&pointer.to_string())
}

/// Where an `add` (or the add half of `copy`, `move`, `incr`) of `path` writes,
/// for an op that succeeds on `doc`: appending at the end of an array writes
/// the new index; inserting anywhere else in an array shifts the elements
/// after it, so writes the array; anything else writes `path`.
fn add_writes(doc: &Value, path: &Pointer) -> Vec<Pointer> {
    let Some(parent) = path.parent() else {
        return vec![Pointer::root()];
    };
    match lookup(doc, &parent) {
        Some(Value::Array(items)) => {
            let last = path.last().unwrap_or_default();
            let index = if last == "-" {
                items.len()
            } else {
                last.parse().expect("a successful add has a valid index")
            };
            if index == items.len() {
                vec![parent.child(index.to_string())]
            } else {
                vec![parent]
            }
        }
        _ => vec![path.clone()],
    }
}

/// Where a successful `remove` of `path` writes: removing an array's last
/// element writes that index; removing any other element shifts the rest, so
/// writes the array.
fn remove_writes(doc: &Value, path: &Pointer) -> Vec<Pointer> {
    let parent = path.parent().unwrap_or_default();
    match lookup(doc, &parent) {
        Some(Value::Array(items)) => {
            let last = path.last().unwrap_or_default();
            let index: usize = last.parse().expect("a successful remove has a valid index");
            if index + 1 == items.len() {
                vec![path.clone()]
            } else {
                vec![parent]
            }
        }
        _ => vec![path.clone()],
    }
}

/// The locations `op` writes, given that it succeeded on `doc`.
fn op_writes(doc: &Value, op: &PatchOp) -> Vec<Pointer> {
    match op {
        PatchOp::Add { path, .. } | PatchOp::Copy { path, .. } => add_writes(doc, path),
        PatchOp::Remove { path } => remove_writes(doc, path),
        PatchOp::Replace { path, .. } => vec![path.clone()],
        PatchOp::Test { .. } => vec![],
        PatchOp::Move { from, path } if from == path => vec![],
        PatchOp::Move { from, path } => {
            // A remove, then an add into the document the remove left.
            let mut after_remove = doc.clone();
            let remove = [PatchOp::Remove { path: from.clone() }];
            patch::apply(&mut after_remove, 0, &remove, &Limits::default())
                .expect("a successful move's removal succeeds on its own");
            let mut writes = remove_writes(doc, from);
            writes.extend(add_writes(&after_remove, path));
            writes
        }
        PatchOp::Incr { path, .. } => match lookup(doc, path) {
            Some(_) => vec![path.clone()],
            None => add_writes(doc, path),
        },
    }
}

/// Applies `ops` one at a time to a copy of `doc`, collecting what each
/// writes as worked out from the document in front of it.
fn apply_naively(
    doc: &Value,
    ops: &[PatchOp],
    limits: &Limits,
) -> Result<(Value, Vec<Pointer>), PatchError> {
    let mut value = doc.clone();
    let mut writes = Vec::new();
    for (op_index, op) in ops.iter().enumerate() {
        let before = value.clone();
        let size = patch::encoded_size_estimate(&value, usize::MAX);
        patch::apply(&mut value, size, std::slice::from_ref(op), limits)
            .map_err(|error| PatchError { op_index, error: error.error })?;
        writes.extend(op_writes(&before, op));
    }
    Ok((value, writes))
}

/// What the model says `Store::commit` must do.
#[derive(Debug)]
enum Expected {
    Duplicate(Outcome),
    /// Commits; `next` is the new value and written locations, or `None` for
    /// a transaction that writes nothing (it commits at the current version).
    Commit {
        version: Version,
        next: Option<(Value, Vec<Pointer>)>,
    },
    /// Each conflicting read with every version that overwrote it.
    Conflict(Vec<(Pointer, Vec<Version>)>),
    /// Any other rejection, exactly.
    Reject(Rejection),
}

#[derive(Debug)]
struct Model {
    limits: Limits,
    docs: Vec<ModelDoc>,
    /// The store's dedup window, spelled out: every decided id in order,
    /// and where the current generation starts. An id is remembered while
    /// it is in the current generation or the one before it; a generation
    /// holds at most `tx_dedup_entries_max` ids.
    decided: Vec<(TxId, usize, Outcome)>,
    generation_start: usize,
    /// Per document, the highest validation horizon the store has reported;
    /// it never goes back down.
    horizons: Vec<Version>,
    /// The commit check's bound: `/b`, when a number, must stay below it.
    bound: Option<i64>,
}

impl Model {
    fn new(limits: Limits, bound: Option<i64>) -> Self {
        Self {
            bound,
            limits,
            docs: DOCS.iter().map(|_| ModelDoc::new()).collect(),
            decided: Vec::new(),
            generation_start: 0,
            horizons: vec![Version::ZERO; DOCS.len()],
        }
    }

    fn decide(&self, doc: usize, tx: &Transaction) -> Expected {
        if let Some(outcome) = self.remembered(&tx.tx_id) {
            return Expected::Duplicate(outcome.clone());
        }
        let too_large = |what, len, max| Expected::Reject(Rejection::TooLarge { what, len, max });
        if tx.reads.len() > self.limits.read_set_pointers_max {
            let max = self.limits.read_set_pointers_max;
            return too_large(TooLargePart::ReadSet, tx.reads.len(), max);
        }
        if tx.writes.len() > self.limits.patch_ops_max {
            return too_large(TooLargePart::Patch, tx.writes.len(), self.limits.patch_ops_max);
        }
        let model = &self.docs[doc];
        let current = model.version();
        if tx.base > current {
            return Expected::Reject(Rejection::BaseAhead { base: tx.base, current });
        }
        let floor = self.dedup_floor(doc);
        if tx.base < floor {
            return Expected::Reject(Rejection::OutcomeUnknown { base: tx.base, floor });
        }
        let conflicts: Vec<_> = tx
            .reads
            .iter()
            .map(|read| (read.clone(), model.overwrites(read, tx.base)))
            .filter(|(_, versions)| !versions.is_empty())
            .collect();
        if !conflicts.is_empty() {
            return Expected::Conflict(conflicts);
        }
        match apply_naively(model.value(), &tx.writes, &self.limits) {
            Err(error) => Expected::Reject(Rejection::Patch(error)),
            Ok((_, writes)) if writes.is_empty() => {
                Expected::Commit { version: current, next: None }
            }
            Ok((value, _)) if self.breaks_bound(&value) => {
                Expected::Reject(bound_rejection(self.bound.unwrap_or_default()))
            }
            Ok((value, writes)) => {
                Expected::Commit { version: current.next(), next: Some((value, writes)) }
            }
        }
    }

    /// Whether `value` breaks the commit check, restated on the wire value.
    fn breaks_bound(&self, value: &Value) -> bool {
        let b = lookup(value, &Pointer::parse("/b").unwrap()).and_then(Value::as_f64);
        matches!((self.bound, b), (Some(bound), Some(b)) if b >= bound as f64)
    }

    /// Before an id is decided (whether or not it will be remembered), a
    /// full generation makes way for a new one.
    fn make_room(&mut self) {
        if self.decided.len() - self.generation_start >= self.limits.tx_dedup_entries_max {
            self.generation_start = self.decided.len();
        }
    }

    fn remember(&mut self, tx_id: TxId, doc: usize, outcome: Outcome) {
        self.decided.push((tx_id, doc, outcome));
    }

    /// Where the two remembered generations start in `decided`.
    fn previous_start(&self) -> usize {
        self.generation_start.saturating_sub(self.limits.tx_dedup_entries_max)
    }

    /// The newest outcome of `tx_id` among the two remembered generations.
    fn remembered(&self, tx_id: &TxId) -> Option<&Outcome> {
        self.decided[self.previous_start()..]
            .iter()
            .rev()
            .find_map(|(id, _, outcome)| (id == tx_id).then_some(outcome))
    }

    /// The highest version of `doc` whose committing id is forgotten: a
    /// base below it might belong to that commit, resubmitted.
    fn dedup_floor(&self, doc: usize) -> Version {
        self.decided[..self.previous_start()]
            .iter()
            .filter_map(|(_, d, outcome)| match outcome {
                Outcome::Committed { version } if *d == doc => Some(*version),
                _ => None,
            })
            .max()
            .unwrap_or(Version::ZERO)
    }
}

// ---------------------------------------------------------------------------
// Running a case.

fn tx_base(spec: &BaseSpec, current: Version) -> Version {
    match spec {
        BaseSpec::Current => current,
        BaseSpec::Behind(n) => Version(current.0.saturating_sub(*n)),
        BaseSpec::Ahead(n) => Version(current.0 + n),
        BaseSpec::Anywhere(index) => Version(index.index(current.0 as usize + 1) as u64),
    }
}

/// Checks the store's answer against the model's and brings the model up to
/// date; returns the log entry when the transaction committed.
fn check_step(
    model: &mut Model,
    doc: usize,
    tx: &Transaction,
    expected: Expected,
    actual: &Commit,
) -> Result<Option<CommittedTx>, TestCaseError> {
    let current = model.docs[doc].version();
    let validated = matches!(
        expected,
        Expected::Commit { .. }
            | Expected::Conflict(_)
            | Expected::Reject(Rejection::Patch(_) | Rejection::Invalid { .. })
    );
    // The horizon only moves when the index outgrows its limit, and a base at
    // the current version is never behind it.
    let may_be_stale = validated
        && !tx.reads.is_empty()
        && tx.base < current
        && model.limits.removed_paths_bytes_max < Limits::default().removed_paths_bytes_max;
    let must_be_stale = validated && !tx.reads.is_empty() && tx.base < model.horizons[doc];
    if let Commit::Rejected(Rejection::Stale { base, horizon }) = actual {
        prop_assert!(may_be_stale, "unexpected {actual:?}; model: {expected:?}");
        prop_assert_eq!(*base, tx.base);
        prop_assert!(tx.base < *horizon && *horizon <= current, "{actual:?} at {current}");
        prop_assert!(*horizon >= model.horizons[doc], "the horizon went back");
        model.horizons[doc] = *horizon;
        model.remember(tx.tx_id.clone(), doc, actual.outcome());
        return Ok(None);
    }
    prop_assert!(
        !must_be_stale,
        "base {} is below the reported horizon {}, got {actual:?}",
        tx.base,
        model.horizons[doc]
    );
    let mut entry = None;
    match (expected, actual) {
        (Expected::Duplicate(outcome), Commit::Duplicate(got)) => {
            prop_assert_eq!(got, &outcome);
            return Ok(None);
        }
        (Expected::Commit { version, next }, Commit::Applied { version: got, change }) => {
            prop_assert_eq!(*got, version);
            let model_doc = &mut model.docs[doc];
            match (next, change) {
                (None, None) => {}
                (Some((value, writes)), Some(change)) => {
                    prop_assert_eq!(&change.doc, &tx.doc);
                    prop_assert_eq!(change.version, version);
                    prop_assert_eq!(&change.tx_id, &tx.tx_id);
                    prop_assert_eq!(&change.patch, &tx.writes);
                    // The engine's own account of the written locations must be
                    // the model's, op for op.
                    let mut scratch = model_doc.value().clone();
                    let applied =
                        patch::apply(&mut scratch, 0, &tx.writes, &Limits::default()).unwrap();
                    prop_assert_eq!(
                        applied.writes.as_slice(),
                        writes.as_slice(),
                        "written locations"
                    );
                    model_doc.states.push(value);
                    model_doc.commits.push(ModelCommit { tx_id: tx.tx_id.clone(), writes });
                }
                (next, change) => {
                    return Err(TestCaseError::fail(format!(
                        "model writes {next:?}, store change {change:?}"
                    )));
                }
            }
            entry = Some(CommittedTx { tx: tx.clone(), version });
        }
        (
            Expected::Conflict(expected),
            Commit::Rejected(Rejection::Conflict { conflicts, conflicts_total }),
        ) => {
            prop_assert_eq!(*conflicts_total, expected.len(), "{:?}", conflicts);
            let listed = expected.len().min(CONFLICTS_REPORTED_MAX);
            prop_assert_eq!(conflicts.len(), listed);
            // Each listed conflict must be a distinct conflicting read, at a
            // version that really overwrote it, naming that version's author.
            let mut unlisted: Vec<_> = expected.iter().collect();
            for conflict in conflicts {
                let found = unlisted.iter().position(|(pointer, versions)| {
                    *pointer == conflict.pointer && versions.contains(&conflict.version)
                });
                let Some(found) = found else {
                    return Err(TestCaseError::fail(format!(
                        "{conflict:?} is not among the conflicts {expected:?}"
                    )));
                };
                unlisted.swap_remove(found);
                let author = model.docs[doc].author(conflict.version);
                prop_assert_eq!(conflict.tx_id.as_ref(), Some(author));
            }
        }
        (Expected::Reject(rejection), Commit::Rejected(got)) => {
            prop_assert_eq!(got, &rejection);
            if !rejection.is_retryable() {
                return Ok(None);
            }
        }
        (expected, actual) => {
            return Err(TestCaseError::fail(format!(
                "model says {expected:?}, store says {actual:?}"
            )));
        }
    }
    model.remember(tx.tx_id.clone(), doc, actual.outcome());
    Ok(entry)
}

// ---------------------------------------------------------------------------
// Permissions and a commit check (issue 16).

/// What a case's session may write, and the bound of its commit check.
#[derive(Debug, Clone)]
struct Gate {
    /// Read-only when false.
    write: bool,
    /// The top-level keys it may write under; `None` anywhere.
    keys: Option<Vec<String>>,
    bound: i64,
}

impl Gate {
    /// The same rights as the engine resolves them from a claim.
    fn rights(&self) -> DocRights {
        let mut grant =
            json!({"pattern": "*", "access": if self.write { "write" } else { "read" }});
        if let Some(keys) = &self.keys {
            grant["scopes"] = keys.iter().map(|key| format!("/{key}")).collect();
        }
        let permissions = Permissions::from_claim(&json!({"docs": [grant]}), "u").unwrap();
        permissions.doc(&DocId::parse(DOCS[0]).unwrap()).unwrap()
    }

    /// Brute force: the first op (and location) outside the rights.
    fn refusal(&self, ops: &[PatchOp]) -> Option<(usize, Pointer)> {
        for (index, op) in ops.iter().enumerate() {
            if !self.write {
                return Some((index, op.path().clone()));
            }
            let Some(keys) = &self.keys else { continue };
            let written = match op {
                PatchOp::Test { .. } => vec![],
                PatchOp::Move { from, path } => vec![from, path],
                other => vec![other.path()],
            };
            for pointer in written {
                if !pointer.tokens().first().is_some_and(|key| keys.contains(key)) {
                    return Some((index, pointer.clone()));
                }
            }
        }
        None
    }
}

fn gate() -> impl Strategy<Value = Gate> {
    let keys = prop::sample::subsequence(vec!["a", "b", "l", "c"], 0..=4)
        .prop_map(|keys| keys.into_iter().map(str::to_owned).collect::<Vec<_>>());
    let rights = prop_oneof![
        4 => keys.prop_map(|keys| (true, Some(keys))),
        1 => Just((true, None)),
        1 => Just((false, None)),
    ];
    (rights, 1i64..=5).prop_map(|((write, keys), bound)| Gate { write, keys, bound })
}

fn bound_rejection(bound: i64) -> Rejection {
    Rejection::Invalid {
        pointer: Pointer::parse("/b").unwrap(),
        message: format!("/b must stay below {bound}"),
    }
}

/// The commit check under test: `/b`, when a number, stays below `bound`.
struct BelowBound {
    bound: i64,
    b: Pointer,
}

impl CommitCheck for BelowBound {
    fn check(&mut self, view: &CommitView<'_>) -> Result<(), Rejection> {
        match view.value.pointer(&self.b).and_then(Doc::as_f64) {
            Some(b) if b >= self.bound as f64 => Err(bound_rejection(self.bound)),
            _ => Ok(()),
        }
    }
}

fn run(steps: &[Step], limits: Limits) -> Result<(), TestCaseError> {
    run_gated(steps, limits, None)
}

fn run_gated(steps: &[Step], limits: Limits, gate: Option<&Gate>) -> Result<(), TestCaseError> {
    let doc_ids: Vec<DocId> = DOCS.iter().map(|d| DocId::parse(d).unwrap()).collect();
    let mut store = Store::new(limits);
    let mut model = Model::new(limits, gate.map(|gate| gate.bound));
    let rights = gate.map(Gate::rights);
    let mut check: Box<dyn CommitCheck> = match gate {
        Some(gate) => Box::new(BelowBound { bound: gate.bound, b: Pointer::parse("/b").unwrap() }),
        None => Box::new(AllowAll),
    };
    let mut submitted: Vec<(usize, Transaction)> = Vec::new();
    let mut log = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let (doc, tx) = match step {
            Step::Submit { doc, base, reads, writes } => {
                let current = &model.docs[*doc];
                let tx = Transaction {
                    doc: doc_ids[*doc].clone(),
                    tx_id: TxId::parse(&format!("t{i}")).unwrap(),
                    base: tx_base(base, current.version()),
                    reads: resolve_reads(reads, current.value()),
                    writes: resolve_ops(writes, current.value()),
                };
                submitted.push((*doc, tx.clone()));
                (*doc, tx)
            }
            Step::Resubmit(index) if !submitted.is_empty() => {
                submitted[index.index(submitted.len())].clone()
            }
            Step::Resubmit(_) => continue,
        };
        // Formatted only on failure: this loop is the hot path of the test.
        let context = || format!("step {i}: {tx:?}");
        // The scope check comes first: a refused transaction never reaches
        // the store (nor its dedup window).
        let refused = gate.and_then(|gate| gate.refusal(&tx.writes));
        let checked = rights.as_ref().map_or(Ok(()), |rights| rights.check_writes(&tx.writes));
        match (refused, checked) {
            (None, Ok(())) => {
                if model.remembered(&tx.tx_id).is_none() {
                    model.make_room();
                }
                let expected = model.decide(doc, &tx);
                let actual = store.commit_checked(tx.clone(), check.as_mut());
                if matches!(actual, Commit::Rejected(Rejection::Invalid { .. })) {
                    prop_assert!(
                        !log.iter().any(|entry: &CommittedTx| entry.tx.tx_id == tx.tx_id),
                        "a refused transaction is in the log after {}",
                        context()
                    );
                }
                let entry = check_step(&mut model, doc, &tx, expected, &actual)
                    .map_err(|e| TestCaseError::fail(format!("{}\n{e}", context())))?;
                log.extend(entry);
            }
            (Some(expected), Err(out_of_scope)) => {
                prop_assert_eq!(
                    (out_of_scope.op_index, &out_of_scope.pointer),
                    (expected.0, &expected.1),
                    "{}",
                    context()
                );
            }
            (expected, actual) => {
                return Err(TestCaseError::fail(format!(
                    "{}\nmodel refuses {expected:?}, rights say {actual:?}",
                    context()
                )));
            }
        }
        for (id, model_doc) in doc_ids.iter().zip(&model.docs) {
            let (value, version) = store.get(id);
            prop_assert_eq!(&value, model_doc.value(), "{} after {}", id, context());
            prop_assert_eq!(version, model_doc.version(), "{} after {}", id, context());
        }
        let remembered = store.outcome_of(&tx.tx_id);
        prop_assert_eq!(
            remembered.as_ref(),
            model.remembered(&tx.tx_id),
            "remembered outcome after {}",
            context()
        );
    }
    // No id commits twice, however short the dedup window: a forgotten one
    // resubmitted gets `outcome_unknown`.
    let certificate = Checker::new()
        .replay(&log)
        .map_err(|v| TestCaseError::fail(format!("certificate: {v}")))?;
    certificate
        .verify_store(&store)
        .map_err(|v| TestCaseError::fail(format!("certificate: {v:?}")))?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        max_shrink_iters: 10_000,
        // ChaCha, the default, costs more than the test itself in debug builds.
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_agrees_with_the_naive_model(steps in case()) {
        run(&steps, Limits::default())?;
    }

    #[test]
    fn store_agrees_with_the_naive_model_under_tiny_limits(steps in case()) {
        run(&steps, tiny_limits())?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 4_000,
        max_shrink_iters: 10_000,
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_agrees_with_the_naive_model_under_permissions_and_a_commit_check(
        gate in gate(),
        steps in case(),
    ) {
        run_gated(&steps, Limits::default(), Some(&gate))?;
    }
}
