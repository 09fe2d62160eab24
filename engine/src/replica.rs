//! The client-side replica: a copy of one document, the transactions this
//! client has in flight, and the transaction runner. Sans-IO: the Rust and
//! TypeScript clients feed it server messages and send what it hands back.
//!
//! ## The optimistic view
//! The replica keeps one value, the *view*: the confirmed document at
//! `version` with every pending transaction's patch applied on top, in
//! submission order. Each pending transaction keeps the undo log of its local
//! application, so the confirmed state is recovered by undoing the pending
//! patches (newest first) — no second copy of the document is kept. A remote
//! change is applied by undoing the pending patches, applying the change and
//! re-applying the pending patches ("rebase"); a pending patch that no longer
//! applies stays pending but invisible (the server will reject it).
//!
//! ## Running a transaction
//! `Replica::run` executes a function against the view, recording the
//! pointers it reads (except those it overwrote itself first) and the ops it
//! writes; reads see the transaction's own earlier writes. Its base is the
//! confirmed version. A transaction that read a location some pending
//! transaction wrote would be validated against state the server has not
//! committed, so it is not submitted: the run is undone and reported as
//! `Blocked`, to be re-run once the pending transactions resolve.

use std::collections::VecDeque;

use serde_json::{Number, Value};

use crate::ids::{DocId, TxId, Version};
use crate::limits::Limits;
use crate::patch::{self, Applied, Patch, PatchOp};
use crate::pointer::Pointer;
use crate::store::{Change, Rejection, Transaction};
use crate::PatchError;

/// Why the replica cannot take a server message; the client then reopens the
/// document for a snapshot.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplicaError {
    /// A change skipped a version.
    #[error("change {got} does not follow {held}: a change is missing")]
    Gap { held: Version, got: Version },
    /// A change for another document.
    #[error("change for {got} delivered to the replica of {held}")]
    WrongDocument { held: DocId, got: DocId },
    /// A committed change did not apply to the confirmed state: the replica
    /// and the server disagree.
    #[error("change {version} does not apply to the replica: {error}")]
    Diverged { version: Version, error: PatchError },
    /// `committed` for a transaction this replica does not hold.
    #[error("committed {version} for unknown transaction {tx_id}")]
    UnknownCommit { tx_id: TxId, version: Version },
}

/// How a transaction function stops early.
#[derive(Debug, Clone, PartialEq)]
pub enum Abort<E> {
    /// STM `retry`: abandon this run; run again once something read changes.
    Retry,
    /// A write could not apply to the view (the transaction is abandoned).
    Patch(PatchError),
    /// The function's own error; the transaction is abandoned.
    User(E),
}

impl<E> From<PatchError> for Abort<E> {
    fn from(error: PatchError) -> Self {
        Abort::Patch(error)
    }
}

/// What became of one run of a transaction function.
#[derive(Debug)]
pub enum RunOutcome<T, E> {
    /// Nothing was written: the result stands locally, nothing to send.
    ReadOnly(T),
    /// Writes were made and are now pending in the view: send `tx`.
    Submit { value: T, tx: Transaction },
    /// `retry()` was called: run again after a change overlapping `reads`.
    Retry { reads: Vec<Pointer> },
    /// The run read what a pending transaction wrote: run again once the
    /// pending transactions before it have resolved.
    Blocked,
    /// A write failed to apply to the view; nothing is pending.
    Patch(PatchError),
    /// The function failed; nothing is pending.
    Failed(E),
}

/// What a server message did to the replica.
#[derive(Debug, Default, PartialEq)]
pub struct ChangeEffect {
    /// Locations the confirmed state changed at (for STM retry wake-ups).
    pub writes: Vec<Pointer>,
    /// One of this replica's pending transactions that the change committed
    /// (a change for it can arrive in the stream after a reconnect, instead of
    /// `committed`).
    pub committed: Option<TxId>,
}

#[derive(Debug)]
struct Pending {
    tx: Transaction,
    /// Undo logs of the local application, oldest first; empty when the
    /// patch no longer applies to the view.
    undo: Vec<Applied>,
    /// Locations the patch wrote locally.
    writes: Vec<Pointer>,
    /// Whether the patch is in the view right now.
    visible: bool,
}

/// A client's copy of one document.
#[derive(Debug)]
pub struct Replica {
    doc: DocId,
    version: Version,
    view: Value,
    size_bytes: usize,
    pending: VecDeque<Pending>,
    limits: Limits,
}

impl Replica {
    /// A replica holding `value` at `version` (from a snapshot).
    pub fn new(doc: DocId, value: Value, version: Version, limits: Limits) -> Self {
        let size_bytes = patch::encoded_size_estimate(&value, usize::MAX);
        Self { doc, version, view: value, size_bytes, pending: VecDeque::new(), limits }
    }

    pub fn doc(&self) -> &DocId {
        &self.doc
    }

    /// The confirmed version: every change up to it has been applied.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The optimistic view: confirmed state plus pending writes.
    pub fn view(&self) -> &Value {
        &self.view
    }

    /// The confirmed state, without pending writes. Costs a copy of the
    /// document; for tests and diagnostics.
    pub fn confirmed(&mut self) -> Value {
        self.hide_pending();
        let confirmed = self.view.clone();
        self.show_pending();
        confirmed
    }

    /// Transactions sent and not yet resolved, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &Transaction> {
        self.pending.iter().map(|p| &p.tx)
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Runs `f` as transaction `tx_id` against the view.
    pub fn run<T, E, F>(&mut self, tx_id: TxId, f: F) -> RunOutcome<T, E>
    where
        F: FnOnce(&mut Tx<'_>) -> Result<T, Abort<E>>,
    {
        let pending_writes: Vec<Pointer> =
            self.pending.iter().flat_map(|p| p.writes.iter().cloned()).collect();
        let mut tx = Tx {
            view: &mut self.view,
            size_bytes: &mut self.size_bytes,
            limits: &self.limits,
            reads: Vec::new(),
            writes: Vec::new(),
            undo: Vec::new(),
            covered: Vec::new(),
        };
        let result = f(&mut tx);
        let Tx { reads, writes, undo, .. } = tx;
        let blocked = || reads.iter().any(|r| pending_writes.iter().any(|w| w.overlaps(r)));
        let outcome = match result {
            Err(Abort::Retry) => RunOutcome::Retry { reads },
            Err(Abort::Patch(error)) => RunOutcome::Patch(error),
            Err(Abort::User(error)) => RunOutcome::Failed(error),
            // A read-only run may read pending writes: that is the optimistic view.
            Ok(value) if writes.is_empty() => return RunOutcome::ReadOnly(value),
            Ok(_) if blocked() => RunOutcome::Blocked,
            Ok(value) => {
                let local_writes = undo.iter().flat_map(|a| a.writes.iter().cloned()).collect();
                let tx =
                    Transaction { doc: self.doc.clone(), tx_id, base: self.version, reads, writes };
                self.pending.push_back(Pending {
                    tx: tx.clone(),
                    undo,
                    writes: local_writes,
                    visible: true,
                });
                return RunOutcome::Submit { value, tx };
            }
        };
        self.undo_run(undo);
        outcome
    }

    fn undo_run(&mut self, undo: Vec<Applied>) {
        for applied in undo.into_iter().rev() {
            self.size_bytes =
                self.size_bytes.saturating_add_signed(-(applied.size_delta_bytes as isize));
            applied.undo(&mut self.view);
        }
    }

    /// Applies a change from the server's stream. Changes at or below the
    /// held version are duplicates and ignored.
    pub fn apply_change(&mut self, change: &Change) -> Result<ChangeEffect, ReplicaError> {
        if change.doc != self.doc {
            return Err(ReplicaError::WrongDocument {
                held: self.doc.clone(),
                got: change.doc.clone(),
            });
        }
        if change.version <= self.version {
            // A duplicate; but if it is one of ours still pending, the state we
            // hold already contains it, so it is settled.
            return Ok(match self.pending.iter().position(|p| p.tx.tx_id == change.tx_id) {
                Some(index) => self.drop_settled(index),
                None => ChangeEffect::default(),
            });
        }
        if change.version != self.version.next() {
            return Err(ReplicaError::Gap { held: self.version, got: change.version });
        }
        let own = self.pending.iter().position(|p| p.tx.tx_id == change.tx_id);
        if own == Some(0) && self.pending[0].visible {
            // Our own oldest transaction: the server applied the same patch to
            // the same state, so the view already holds it in the right place.
            let done = self.pending.pop_front().map(|p| p.writes).unwrap_or_default();
            self.version = change.version;
            let committed = Some(change.tx_id.clone());
            return Ok(ChangeEffect { writes: done, committed });
        }
        self.hide_pending();
        if let Some(index) = own {
            self.pending.remove(index);
        }
        let result = patch::apply(&mut self.view, self.size_bytes, &change.patch, &self.limits);
        let outcome = match result {
            Ok(applied) => {
                self.size_bytes =
                    self.size_bytes.saturating_add_signed(applied.size_delta_bytes as isize);
                self.version = change.version;
                let committed = own.map(|_| change.tx_id.clone());
                Ok(ChangeEffect { writes: applied.writes.into_vec(), committed })
            }
            Err(error) => Err(ReplicaError::Diverged { version: change.version, error }),
        };
        self.show_pending();
        outcome
    }

    /// The server committed our transaction `tx_id` at `version`, sent
    /// instead of the change itself.
    pub fn on_committed(
        &mut self,
        tx_id: &TxId,
        version: Version,
    ) -> Result<ChangeEffect, ReplicaError> {
        let Some(index) = self.pending.iter().position(|p| &p.tx.tx_id == tx_id) else {
            // Already applied through the change stream (a resubmission after
            // a reconnect), or a write-less commit we no longer hold.
            if version <= self.version {
                return Ok(ChangeEffect::default());
            }
            return Err(ReplicaError::UnknownCommit { tx_id: tx_id.clone(), version });
        };
        if version <= self.version {
            // The confirmed state already holds it: a write-less commit (only
            // `test` ops) made no version, or a snapshot taken after the
            // commit arrived first (reconnect, resync).
            return Ok(self.drop_settled(index));
        }
        let tx = &self.pending[index].tx;
        let change =
            Change { doc: tx.doc.clone(), version, tx_id: tx_id.clone(), patch: tx.writes.clone() };
        self.apply_change(&change)
    }

    /// The server rejected `tx_id`: drop it from the view and hand it back so
    /// the caller can re-run its function (for a conflict, the changes that
    /// caused it have already been applied).
    pub fn on_rejected(&mut self, tx_id: &TxId, _rejection: &Rejection) -> Option<Transaction> {
        self.withdraw(tx_id)
    }

    /// Takes a pending transaction out of the view without applying it: one
    /// the server never accepted (refused before validation, or never sent).
    pub fn withdraw(&mut self, tx_id: &TxId) -> Option<Transaction> {
        let index = self.pending.iter().position(|p| &p.tx.tx_id == tx_id)?;
        self.hide_pending();
        let dropped = self.pending.remove(index).map(|p| p.tx);
        self.show_pending();
        dropped
    }

    /// Replaces the confirmed state with a snapshot; pending transactions stay
    /// pending and are re-applied on top.
    pub fn reset(&mut self, value: Value, version: Version) {
        self.hide_pending();
        self.size_bytes = patch::encoded_size_estimate(&value, usize::MAX);
        self.view = value;
        self.version = version;
        self.show_pending();
    }

    /// Removes pending transaction `index`, whose effect the confirmed state
    /// already holds, and reports it committed.
    fn drop_settled(&mut self, index: usize) -> ChangeEffect {
        self.hide_pending();
        let settled = self.pending.remove(index).map(|p| p.tx.tx_id);
        self.show_pending();
        ChangeEffect { writes: Vec::new(), committed: settled }
    }

    /// Undoes every visible pending patch, newest first: the view becomes the
    /// confirmed state.
    fn hide_pending(&mut self) {
        for pending in self.pending.iter_mut().rev() {
            for applied in pending.undo.drain(..).rev() {
                self.size_bytes =
                    self.size_bytes.saturating_add_signed(-(applied.size_delta_bytes as isize));
                applied.undo(&mut self.view);
            }
            pending.visible = false;
        }
    }

    /// Re-applies every pending patch, oldest first, on the confirmed state.
    fn show_pending(&mut self) {
        for pending in &mut self.pending {
            debug_assert!(!pending.visible && pending.undo.is_empty());
            match patch::apply(&mut self.view, self.size_bytes, &pending.tx.writes, &self.limits) {
                Ok(applied) => {
                    self.size_bytes =
                        self.size_bytes.saturating_add_signed(applied.size_delta_bytes as isize);
                    pending.writes = applied.writes.to_vec();
                    pending.undo.push(applied);
                    pending.visible = true;
                }
                Err(_) => pending.visible = false,
            }
        }
    }
}

/// A running transaction: reads and writes go through it.
#[derive(Debug)]
pub struct Tx<'r> {
    view: &'r mut Value,
    size_bytes: &'r mut usize,
    limits: &'r Limits,
    reads: Vec<Pointer>,
    writes: Patch,
    undo: Vec<Applied>,
    /// Locations this transaction overwrote whole: reads inside them see only
    /// its own writes and are not recorded.
    covered: Vec<Pointer>,
}

impl Tx<'_> {
    /// Reads the value at `pointer` (`None` when absent), recording the read.
    pub fn get(&mut self, pointer: &Pointer) -> Option<&Value> {
        self.record_read(pointer);
        patch::resolve(self.view, pointer)
    }

    /// Reads the number at `pointer`, if it is one.
    pub fn get_f64(&mut self, pointer: &Pointer) -> Option<f64> {
        self.get(pointer).and_then(Value::as_f64)
    }

    /// Reads the integer at `pointer`, if it is one.
    pub fn get_i64(&mut self, pointer: &Pointer) -> Option<i64> {
        self.get(pointer).and_then(Value::as_i64)
    }

    fn record_read(&mut self, pointer: &Pointer) {
        let own = self.covered.iter().any(|c| c.is_prefix_of(pointer));
        if !own && !self.reads.contains(pointer) {
            self.reads.push(pointer.clone());
        }
    }

    /// Sets the value at `pointer`: an object member is added or replaced, an
    /// existing array element replaced. Reads nothing.
    pub fn set(&mut self, pointer: &Pointer, value: Value) -> Result<(), PatchError> {
        let in_array = self.parent_is_array(pointer);
        let op = if in_array {
            PatchOp::Replace { path: pointer.clone(), value }
        } else {
            PatchOp::Add { path: pointer.clone(), value }
        };
        self.write(op)
    }

    /// Removes the value at `pointer`.
    pub fn remove(&mut self, pointer: &Pointer) -> Result<(), PatchError> {
        self.write(PatchOp::Remove { path: pointer.clone() })
    }

    /// Inserts into an array at `pointer` (shifting later elements).
    pub fn insert(&mut self, pointer: &Pointer, value: Value) -> Result<(), PatchError> {
        self.write(PatchOp::Add { path: pointer.clone(), value })
    }

    /// Appends to the array at `array`. Reads nothing, so concurrent appends
    /// never conflict.
    pub fn push(&mut self, array: &Pointer, value: Value) -> Result<(), PatchError> {
        self.write(PatchOp::Add { path: array.child("-"), value })
    }

    /// Adds `delta` to the number at `pointer` (0 when absent). Reads
    /// nothing, so concurrent increments never conflict.
    pub fn increment(
        &mut self,
        pointer: &Pointer,
        delta: impl Into<Number>,
    ) -> Result<(), PatchError> {
        self.write(PatchOp::Incr { path: pointer.clone(), value: delta.into() })
    }

    /// STM retry: abandon this run until something it read changes.
    pub fn retry<T, E>(&self) -> Result<T, Abort<E>> {
        Err(Abort::Retry)
    }

    /// Runs `first`; if it calls `retry`, undoes its writes and runs `second`
    /// instead. Reads of both stay recorded, so a retry of the whole waits
    /// for a change to either.
    pub fn or_else<T, E>(
        &mut self,
        first: impl FnOnce(&mut Self) -> Result<T, Abort<E>>,
        second: impl FnOnce(&mut Self) -> Result<T, Abort<E>>,
    ) -> Result<T, Abort<E>> {
        match self.nested(first) {
            Err(Abort::Retry) => self.nested(second),
            other => other,
        }
    }

    /// Runs `f` as a nested transaction: on success its reads and writes merge
    /// into this one; on failure its writes are undone (its reads stay) and
    /// the error comes back to the parent.
    pub fn nested<T, E>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, Abort<E>>,
    ) -> Result<T, Abort<E>> {
        let mark = (self.writes.len(), self.undo.len(), self.covered.len());
        let result = f(self);
        if result.is_err() {
            for applied in self.undo.drain(mark.1..).rev() {
                *self.size_bytes =
                    self.size_bytes.saturating_add_signed(-(applied.size_delta_bytes as isize));
                applied.undo(self.view);
            }
            self.writes.truncate(mark.0);
            self.covered.truncate(mark.2);
        }
        result
    }

    /// Applies any patch op as part of this transaction. A `test` op is not
    /// recorded as a read: the server checks it against the value current at
    /// commit time, which is what it asserts.
    pub fn write(&mut self, op: PatchOp) -> Result<(), PatchError> {
        let covers = match &op {
            PatchOp::Replace { path, .. } => Some(path.clone()),
            PatchOp::Add { path, .. } | PatchOp::Remove { path } if !self.parent_is_array(path) => {
                Some(path.clone())
            }
            _ => None,
        };
        let applied =
            patch::apply(self.view, *self.size_bytes, std::slice::from_ref(&op), self.limits)
                .map_err(|error| PatchError { op_index: self.writes.len(), error: error.error })?;
        *self.size_bytes = self.size_bytes.saturating_add_signed(applied.size_delta_bytes as isize);
        self.undo.push(applied);
        self.writes.push(op);
        self.covered.extend(covers);
        Ok(())
    }

    fn parent_is_array(&self, pointer: &Pointer) -> bool {
        pointer
            .parent()
            .and_then(|parent| patch::resolve(self.view, &parent))
            .is_some_and(Value::is_array)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::{Commit, Store};

    fn p(raw: &str) -> Pointer {
        Pointer::parse(raw).unwrap()
    }

    fn tx_id(raw: &str) -> TxId {
        TxId::parse(raw).unwrap()
    }

    fn doc() -> DocId {
        DocId::parse("d").unwrap()
    }

    fn replica(value: Value) -> Replica {
        Replica::new(doc(), value, Version::ZERO, Limits::default())
    }

    fn submit(
        replica: &mut Replica,
        id: &str,
        f: impl FnOnce(&mut Tx<'_>) -> Result<(), Abort<()>>,
    ) -> Transaction {
        match replica.run(tx_id(id), f) {
            RunOutcome::Submit { tx, .. } => tx,
            other => panic!("expected a submission, got {other:?}"),
        }
    }

    #[test]
    fn reads_are_recorded_unless_the_transaction_wrote_them_first() {
        let mut r = replica(json!({"a": 1, "b": {"c": 2}}));
        let tx = submit(&mut r, "t1", |tx| {
            let a = tx.get_i64(&p("/a")).unwrap();
            tx.set(&p("/b"), json!({"c": a}))?;
            assert_eq!(tx.get_i64(&p("/b/c")), Some(1), "reads see own writes");
            tx.increment(&p("/n"), 5)?;
            assert_eq!(tx.get_i64(&p("/n")), Some(5));
            Ok(())
        });
        assert_eq!(
            tx.reads,
            vec![p("/a"), p("/n")],
            "/b/c was covered by the write to /b; /n was only incremented"
        );
        assert_eq!(tx.base, Version::ZERO);
        assert_eq!(r.view(), &json!({"a": 1, "b": {"c": 1}, "n": 5}), "optimistic view");
        assert_eq!(r.confirmed(), json!({"a": 1, "b": {"c": 2}}));
    }

    #[test]
    fn read_only_runs_return_locally_and_retry_reports_its_reads() {
        let mut r = replica(json!({"a": 1}));
        let outcome = r.run(tx_id("t"), |tx| Ok::<_, Abort<()>>(tx.get_i64(&p("/a"))));
        assert!(matches!(outcome, RunOutcome::ReadOnly(Some(1))));
        let outcome = r.run(tx_id("t"), |tx| {
            tx.set(&p("/x"), json!(1))?;
            if tx.get_i64(&p("/a")) < Some(5) {
                return tx.retry::<(), ()>();
            }
            Ok(())
        });
        assert!(matches!(outcome, RunOutcome::Retry { reads } if reads == vec![p("/a")]));
        assert_eq!(r.view(), &json!({"a": 1}), "a retried run leaves no trace");
    }

    #[test]
    fn or_else_undoes_the_first_branch() {
        let mut r = replica(json!({"stock": 0, "backorders": 0}));
        let tx = submit(&mut r, "t", |tx| {
            tx.or_else(
                |tx| {
                    tx.set(&p("/touched"), json!(true))?;
                    match tx.get_i64(&p("/stock")) {
                        Some(n) if n > 0 => tx.set(&p("/stock"), json!(n - 1)).map_err(Abort::from),
                        _ => tx.retry(),
                    }
                },
                |tx| tx.increment(&p("/backorders"), 1).map_err(Abort::from),
            )
        });
        assert_eq!(r.view(), &json!({"stock": 0, "backorders": 1}));
        assert_eq!(tx.reads, vec![p("/stock")]);
        assert_eq!(tx.writes.len(), 1);
    }

    #[test]
    fn a_run_that_reads_pending_writes_is_blocked() {
        let mut r = replica(json!({"a": 1, "b": 1}));
        submit(&mut r, "t1", |tx| tx.set(&p("/a"), json!(2)).map_err(Abort::from));
        let blocked = r.run(tx_id("t2"), |tx| {
            let a = tx.get_i64(&p("/a")).unwrap();
            tx.set(&p("/c"), json!(a)).map_err(Abort::<()>::from)
        });
        assert!(matches!(blocked, RunOutcome::Blocked));
        assert_eq!(r.view(), &json!({"a": 2, "b": 1}), "the blocked run left no trace");
        // Reading something independent is fine while t1 is pending.
        submit(&mut r, "t3", |tx| {
            let b = tx.get_i64(&p("/b")).unwrap();
            tx.set(&p("/b"), json!(b + 1)).map_err(Abort::from)
        });
        assert_eq!(r.pending().count(), 2);
    }

    #[test]
    fn remote_changes_rebase_pending_writes_and_own_commits_confirm_them() {
        let mut store = Store::new(Limits::default());
        store.restore(doc(), json!({"list": []}), Version::ZERO);
        let mut mine = replica(json!({"list": []}));
        let mut theirs = replica(json!({"list": []}));
        let own_tx =
            submit(&mut mine, "mine-1", |tx| tx.push(&p("/list"), json!("m")).map_err(Abort::from));
        let their_tx = submit(&mut theirs, "theirs-1", |tx| {
            tx.push(&p("/list"), json!("t")).map_err(Abort::from)
        });
        let Commit::Applied { change: Some(theirs_change), .. } = store.commit(their_tx) else {
            panic!()
        };
        theirs.on_committed(&theirs_change.tx_id, theirs_change.version).unwrap();
        // A blind append commits on top of the other append.
        let Commit::Applied { version, change: Some(own_change) } = store.commit(own_tx) else {
            panic!()
        };
        assert_eq!(mine.view(), &json!({"list": ["m"]}));
        mine.apply_change(&theirs_change).unwrap();
        assert_eq!(
            mine.view(),
            &json!({"list": ["t", "m"]}),
            "rebased: the pending append stays on top"
        );
        assert_eq!(mine.confirmed(), json!({"list": ["t"]}));
        let effect = mine.on_committed(&own_change.tx_id, version).unwrap();
        assert_eq!(effect.committed, Some(own_change.tx_id.clone()));
        assert!(!mine.has_pending());
        assert_eq!(mine.version(), Version(2));
        theirs.apply_change(&own_change).unwrap();
        assert_eq!(theirs.view(), mine.view());
        assert_eq!(store.get(&doc()), (mine.view().clone(), Version(2)));
    }

    #[test]
    fn rejection_drops_the_pending_write_and_a_gap_is_an_error() {
        let mut r = replica(json!({"x": 1}));
        submit(&mut r, "t1", |tx| tx.set(&p("/x"), json!(9)).map_err(Abort::from));
        let rejection = Rejection::Stale { base: Version::ZERO, horizon: Version(1) };
        assert!(r.on_rejected(&tx_id("t1"), &rejection).is_some());
        assert_eq!(r.view(), &json!({"x": 1}));
        assert!(r.on_rejected(&tx_id("t1"), &rejection).is_none(), "a second answer is ignored");
        let gap = Change { doc: doc(), version: Version(2), tx_id: tx_id("z"), patch: vec![] };
        assert_eq!(
            r.apply_change(&gap),
            Err(ReplicaError::Gap { held: Version::ZERO, got: Version(2) })
        );
    }

    #[test]
    fn a_commit_already_inside_a_newer_snapshot_settles_the_pending_transaction() {
        let mut r = replica(json!({"n": 0}));
        submit(&mut r, "t1", |tx| tx.increment(&p("/n"), 1).map_err(Abort::from));
        // The connection dropped; on reopen the server sent a snapshot that
        // already contains t1 (committed at 1) and more.
        r.reset(json!({"n": 3}), Version(3));
        assert_eq!(r.view(), &json!({"n": 4}), "until settled, t1 shows on top");
        let effect = r.on_committed(&tx_id("t1"), Version(1)).unwrap();
        assert_eq!(effect.committed, Some(tx_id("t1")));
        assert!(!r.has_pending());
        assert_eq!(r.view(), &json!({"n": 3}), "t1's write is not counted twice");
    }

    #[test]
    fn reset_keeps_pending_writes_on_top_of_the_snapshot() {
        let mut r = replica(json!({"a": 1}));
        submit(&mut r, "t1", |tx| tx.set(&p("/b"), json!(2)).map_err(Abort::from));
        r.reset(json!({"a": 5}), Version(7));
        assert_eq!(r.view(), &json!({"a": 5, "b": 2}));
        assert_eq!(r.version(), Version(7));
    }
}
