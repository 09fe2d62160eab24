//! The replicas inside a `ClientSession`: opening documents, running
//! transactions, applying the server's changes and outcomes, and bringing a
//! replica back in step after a reconnect, a resync or an error.
//!
//! Every transaction still pending in a replica is (re)sent after each
//! `opened`; its outcome arrives as `committed`, `rejected`, a change in the
//! stream carrying its id, or an `error` naming it, and each settles the
//! waiting transaction at most once (it leaves `waiting` when answered).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::pacing::Contention;
use super::{ClientSession, Event, RunReport, SendRefusal, Settlement, TransactionKey};
use crate::ids::{DocId, TxId, Version};
use crate::patch::{Patch, PatchOp};
use crate::pointer::Pointer;
use crate::protocol::{ClientMessage, ErrorCode};
use crate::replica::Replica;
use crate::store::{Change, Rejection};
use crate::time::Time;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DocStatus {
    /// No session; `open` goes out on connect.
    Disconnected,
    /// `open` sent; taking the snapshot or missing changes until `opened`.
    Opening,
    /// Live: changes stream in, commits go out.
    Open,
    /// The replica was found inconsistent and `close` + `open` for a
    /// snapshot were sent: whatever arrives before the snapshot is stale.
    Reopening,
}

#[derive(Debug)]
pub(super) struct DocState {
    /// `None` until the first snapshot.
    replica: Option<Replica>,
    pub(super) status: DocStatus,
    /// The replica cannot be trusted (a gap, a divergence, a panicking
    /// transaction function): the next `open` asks for a snapshot.
    needs_snapshot: bool,
    /// The server dropped an `open` (rate limit): send it again at the next
    /// heartbeat unless `opened` came meanwhile.
    open_dropped: bool,
    /// Shared by this client's transactions on the document.
    contention: Contention,
    /// This session's presence, re-sent after every reopen; `None` when
    /// cleared.
    presence: Option<Value>,
}

impl DocState {
    fn new() -> Self {
        Self {
            replica: None,
            status: DocStatus::Disconnected,
            needs_snapshot: false,
            open_dropped: false,
            contention: Contention::default(),
            presence: None,
        }
    }

    /// The `open` that resumes this replica: from the version it holds, or
    /// from a snapshot when it holds none it can trust.
    fn open_message(&self, doc: &DocId) -> ClientMessage {
        let version = match &self.replica {
            Some(replica) if !self.needs_snapshot => Some(replica.version()),
            _ => None,
        };
        ClientMessage::Open { doc: doc.clone(), version }
    }
}

/// One `transact` call, from its first run to its settlement.
#[derive(Debug)]
pub(super) struct Transact {
    doc: DocId,
    attempts_max: u32,
    /// Rejections (and rate-limit drops) so far.
    refusals: u32,
    runs: u32,
    phase: Phase,
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// The document has no replica yet: runs once the first snapshot is in.
    AwaitingReplica,
    /// Contention pause: runs at this time.
    Paused(Time),
    /// `Event::Run` was emitted; the shell runs it next.
    Runnable,
    /// Its run is pending in the replica, awaiting the server's outcome.
    Submitted { tx_id: TxId, started: Time, sends: u32 },
    /// STM `retry`: runs again after a change overlapping one of these.
    Retrying(Vec<Pointer>),
    /// Read another pending transaction's writes: runs again when one
    /// resolves.
    Blocked,
}

impl Transact {
    pub(super) fn paused_until(&self) -> Option<Time> {
        match self.phase {
            Phase::Paused(at) => Some(at),
            _ => None,
        }
    }
}

/// What a waiting transaction learns of its submission.
enum Resolution {
    Committed(Version),
    Rejected(Rejection),
    /// The server dropped the commit unread (rate limit).
    Dropped,
    Refused {
        code: ErrorCode,
        message: String,
    },
}

impl ClientSession {
    // ----- the application's commands -----

    /// Opens `doc` (again): [`Event::Opened`] follows once it is live, at
    /// once if it already is.
    pub fn open(&mut self, doc: DocId) {
        let up = self.is_connected();
        if let Some(state) = self.docs.get(&doc) {
            if state.status == DocStatus::Open {
                self.events.push_back(Event::Opened { doc });
            }
            return;
        }
        let mut state = DocState::new();
        if up {
            state.status = DocStatus::Opening;
        }
        self.docs.insert(doc.clone(), state);
        if up {
            self.send(&ClientMessage::Open { doc, version: None });
        }
    }

    /// Forgets `doc`: its transactions settle as `Closed`.
    pub fn close(&mut self, doc: &DocId) {
        if self.docs.remove(doc).is_none() {
            return;
        }
        self.send(&ClientMessage::Close { doc: doc.clone() });
        self.settle_all(doc, &|| Settlement::Closed);
    }

    /// The replica of `doc`, once its first snapshot is in.
    pub fn replica(&self, doc: &DocId) -> Option<&Replica> {
        self.docs.get(doc).and_then(|state| state.replica.as_ref())
    }

    /// The documents the session holds, in id order.
    pub fn documents(&self) -> impl Iterator<Item = &DocId> {
        self.docs.keys()
    }

    /// Whether `doc` is live (see [`Event::Opened`]).
    pub fn is_open(&self, doc: &DocId) -> bool {
        self.docs.get(doc).is_some_and(|state| state.status == DocStatus::Open)
    }

    /// Sets (or, with `null`, clears) this session's presence on `doc`; it
    /// is re-sent after every reopen.
    pub fn set_presence(&mut self, doc: &DocId, state: Value) {
        let Some(doc_state) = self.docs.get_mut(doc) else {
            return;
        };
        doc_state.presence = (!state.is_null()).then(|| state.clone());
        if doc_state.status == DocStatus::Open {
            self.send(&ClientMessage::Presence { doc: doc.clone(), state });
        }
    }

    /// Starts a transaction on `doc`, re-run after up to `attempts_max`
    /// rejections: [`Event::Run`] asks for its runs, [`Event::Settled`]
    /// ends it.
    pub fn transact(&mut self, doc: &DocId, attempts_max: u32, now: Time) -> TransactionKey {
        self.next_transaction += 1;
        let key = TransactionKey(self.next_transaction);
        if !self.docs.contains_key(doc) {
            let message = format!("{doc} is not open");
            let settlement = Settlement::Refused { code: ErrorCode::NotOpen, message };
            self.events.push_back(Event::Settled { transaction: key, settlement });
            return key;
        }
        let transact = Transact {
            doc: doc.clone(),
            attempts_max: attempts_max.max(1),
            refusals: 0,
            runs: 0,
            phase: Phase::AwaitingReplica,
        };
        self.transactions.insert(key, transact);
        self.schedule_run(key, false, now);
        key
    }

    /// The replica and tx id for the run [`Event::Run`] asked for; `None`
    /// if the transaction is not waiting to run (the shell then does
    /// nothing).
    pub fn begin_run(&mut self, key: TransactionKey) -> Option<(&mut Replica, TxId)> {
        let transact = self.transactions.get(&key)?;
        if transact.phase != Phase::Runnable {
            return None;
        }
        self.tx_seq += 1;
        let raw = format!("{}-{}", self.client_id, self.tx_seq);
        let tx_id = TxId::parse(&raw).ok()?;
        let replica = self.docs.get_mut(&transact.doc)?.replica.as_mut()?;
        Some((replica, tx_id))
    }

    /// What the run `begin_run` started did.
    pub fn end_run(&mut self, key: TransactionKey, report: RunReport, now: Time) {
        let Some(transact) = self.transactions.get_mut(&key) else {
            return;
        };
        if transact.phase != Phase::Runnable {
            return;
        }
        transact.runs += 1;
        let runs = transact.runs;
        let doc = transact.doc.clone();
        match report {
            RunReport::ReadOnly => {
                self.stats.read_only += 1;
                let version = self.replica(&doc).map(Replica::version).unwrap_or_default();
                self.settle(key, Settlement::ReadOnly { version, runs });
            }
            RunReport::Failed => self.settle(key, Settlement::Aborted { runs }),
            RunReport::Panicked => {
                self.settle(key, Settlement::Panicked);
                self.reopen(&doc);
            }
            RunReport::Retry(reads) => {
                self.stats.stm_waits += 1;
                transact.phase = Phase::Retrying(reads);
            }
            RunReport::Blocked => {
                self.stats.blocked_waits += 1;
                let has_pending = self.replica(&doc).is_some_and(Replica::has_pending);
                if has_pending {
                    self.set_phase(key, Phase::Blocked);
                } else {
                    self.make_runnable(key);
                }
            }
            RunReport::Submit(tx) => self.submit(key, &doc, tx, now),
        }
    }

    fn submit(
        &mut self,
        key: TransactionKey,
        doc: &DocId,
        tx: crate::store::Transaction,
        now: Time,
    ) {
        let tx_id = tx.tx_id.clone();
        let written = touched(&tx.writes);
        let commit = ClientMessage::Commit { tx };
        // Checked now, connected or not: resubmissions after a reconnect
        // must not meet a refusal nobody waits for.
        let text = match self.encode(&commit) {
            Ok(text) => text,
            Err(refusal) => {
                if let Some(replica) = self.docs.get_mut(doc).and_then(|s| s.replica.as_mut()) {
                    replica.withdraw(&tx_id);
                }
                let settlement = match refusal {
                    SendRefusal::Refused { code, message } => Settlement::Refused { code, message },
                    other => Settlement::Refused {
                        code: ErrorCode::BadMessage,
                        message: format!("{other:?}"),
                    },
                };
                return self.settle(key, settlement);
            }
        };
        let open = self.is_open(doc);
        self.set_phase(
            key,
            Phase::Submitted { tx_id: tx_id.clone(), started: now, sends: u32::from(open) },
        );
        self.waiting.insert(tx_id, key);
        if open && self.is_connected() {
            self.transmits.push_back(super::Transmit::Text(text));
        }
        // Its writes are in the view now: waiters that read them re-run.
        self.wake_overlapping(doc, &written);
    }

    // ----- scheduling runs -----

    /// Moves a transaction towards its next run: after the contention pause
    /// if `pause` (a re-run after a rejection), at once otherwise.
    fn schedule_run(&mut self, key: TransactionKey, pause: bool, now: Time) {
        let Some(transact) = self.transactions.get(&key) else {
            return;
        };
        let doc = transact.doc.clone();
        let Some(state) = self.docs.get_mut(&doc) else {
            return;
        };
        if state.replica.is_none() {
            return self.set_phase(key, Phase::AwaitingReplica);
        }
        let delay = if pause {
            let (initial, max) =
                (self.config.transact_backoff_initial, self.config.transact_backoff_max);
            state.contention.pause(now, initial, max, &mut self.rng)
        } else {
            None
        };
        match delay {
            Some(delay) if !delay.is_zero() => self.set_phase(key, Phase::Paused(now + delay)),
            _ => self.make_runnable(key),
        }
    }

    /// The transactions that `predicate` picks, in the order they began.
    fn transactions_where(&self, predicate: impl Fn(&Transact) -> bool) -> Vec<TransactionKey> {
        self.transactions.iter().filter(|(_, t)| predicate(t)).map(|(key, _)| *key).collect()
    }

    fn make_runnable(&mut self, key: TransactionKey) {
        self.set_phase(key, Phase::Runnable);
        self.events.push_back(Event::Run { transaction: key });
    }

    fn set_phase(&mut self, key: TransactionKey, phase: Phase) {
        if let Some(transact) = self.transactions.get_mut(&key) {
            transact.phase = phase;
        }
    }

    /// Paused transactions whose pause is over run now.
    pub(super) fn release_paused(&mut self, now: Time) {
        let due = self.transactions_where(|t| t.paused_until().is_some_and(|at| at <= now));
        for key in due {
            self.make_runnable(key);
        }
    }

    /// Runs the transactions that waited for `doc`'s first replica.
    fn release_awaiting_replica(&mut self, doc: &DocId, now: Time) {
        let awaiting =
            self.transactions_where(|t| &t.doc == doc && t.phase == Phase::AwaitingReplica);
        for key in awaiting {
            self.schedule_run(key, false, now);
        }
    }

    fn settle(&mut self, key: TransactionKey, settlement: Settlement) {
        let Some(transact) = self.transactions.remove(&key) else {
            return;
        };
        if let Phase::Submitted { tx_id, .. } = &transact.phase {
            self.waiting.remove(tx_id);
        }
        if matches!(settlement, Settlement::Committed { .. }) {
            self.stats.committed += 1;
        }
        self.events.push_back(Event::Settled { transaction: key, settlement });
    }

    /// Settles every transaction on `doc` (it was closed or refused).
    fn settle_all(&mut self, doc: &DocId, settlement: &dyn Fn() -> Settlement) {
        let keys = self.transactions_where(|t| &t.doc == doc);
        for key in keys {
            self.settle(key, settlement());
        }
    }

    /// Wakes the STM waiters on `doc` that read something overlapping
    /// `written`.
    fn wake_overlapping(&mut self, doc: &DocId, written: &[Pointer]) {
        if written.is_empty() {
            return;
        }
        let wake = self.transactions_where(|t| {
            &t.doc == doc
                && matches!(&t.phase, Phase::Retrying(reads)
                    if reads.iter().any(|read| written.iter().any(|write| write.overlaps(read))))
        });
        for key in wake {
            self.stats.stm_wakeups += 1;
            self.make_runnable(key);
        }
    }

    /// Every STM waiter on `doc` re-runs (its replica was replaced).
    fn wake_all_retries(&mut self, doc: &DocId) {
        let wake =
            self.transactions_where(|t| &t.doc == doc && matches!(t.phase, Phase::Retrying(_)));
        for key in wake {
            self.stats.stm_wakeups += 1;
            self.make_runnable(key);
        }
    }

    /// Runs blocked behind `doc`'s pending transactions re-run.
    fn wake_blocked(&mut self, doc: &DocId) {
        let wake = self.transactions_where(|t| &t.doc == doc && t.phase == Phase::Blocked);
        for key in wake {
            self.make_runnable(key);
        }
    }

    /// What the transaction waiting on `tx_id` learns; it settles, or runs
    /// again.
    fn resolve(&mut self, doc: &DocId, tx_id: &TxId, resolution: Resolution, now: Time) {
        if let Some(key) = self.waiting.remove(tx_id) {
            self.resolve_transaction(key, resolution, now);
        }
        self.wake_blocked(doc);
    }

    fn resolve_transaction(&mut self, key: TransactionKey, resolution: Resolution, now: Time) {
        let Some(transact) = self.transactions.get_mut(&key) else {
            return;
        };
        let Phase::Submitted { tx_id, started, sends } = transact.phase.clone() else {
            return;
        };
        let round_trip = now.saturating_since(started);
        let runs = transact.runs;
        let doc = transact.doc.clone();
        match resolution {
            Resolution::Committed(version) => {
                if let Some(contention) = self.contention(&doc) {
                    contention.on_committed(now, round_trip);
                }
                self.settle(key, Settlement::Committed { tx_id, version, runs });
            }
            Resolution::Rejected(rejection) => {
                // A resubmission after a lost acknowledgement: the first
                // send may have committed.
                if matches!(rejection, Rejection::OutcomeUnknown { .. }) && sends > 1 {
                    return self.settle(key, Settlement::OutcomeUnknown { tx_id });
                }
                self.stats.rejections += 1;
                let Some((attempts, exhausted)) = self.count_refusal(key, &doc, now, round_trip)
                else {
                    return;
                };
                // A first submission's `outcome_unknown` cannot have
                // committed: it is stale, and re-runs.
                let retryable = rejection.is_retryable()
                    || matches!(rejection, Rejection::OutcomeUnknown { .. });
                if !retryable || exhausted {
                    return self.settle(key, Settlement::Rejected { rejection, attempts });
                }
                self.rerun(key, now);
            }
            Resolution::Dropped => {
                let Some((attempts, exhausted)) = self.count_refusal(key, &doc, now, round_trip)
                else {
                    return;
                };
                if exhausted {
                    return self.settle(key, Settlement::RateLimited { attempts });
                }
                self.rerun(key, now);
            }
            Resolution::Refused { code, message } => {
                self.settle(key, Settlement::Refused { code, message })
            }
        }
    }

    fn contention(&mut self, doc: &DocId) -> Option<&mut Contention> {
        self.docs.get_mut(doc).map(|state| &mut state.contention)
    }

    /// Counts a refused run of `key` (rejected, or dropped by the rate
    /// limit), raising its document's contention: the attempts used so far,
    /// and whether they are all used.
    fn count_refusal(
        &mut self,
        key: TransactionKey,
        doc: &DocId,
        now: Time,
        round_trip: Duration,
    ) -> Option<(u32, bool)> {
        if let Some(contention) = self.contention(doc) {
            contention.on_rejected(now, round_trip);
        }
        let transact = self.transactions.get_mut(&key)?;
        transact.refusals += 1;
        Some((transact.refusals, transact.refusals >= transact.attempts_max))
    }

    /// Runs `key` again after a refusal, once the contention pause is over.
    fn rerun(&mut self, key: TransactionKey, now: Time) {
        self.stats.reruns += 1;
        self.schedule_run(key, true, now);
    }

    // ----- the session's documents -----

    /// Sends `open` for every document at the start of a session.
    pub(super) fn reopen_documents(&mut self) {
        let mut opens = Vec::new();
        for (doc, state) in &mut self.docs {
            state.status = DocStatus::Opening;
            opens.push(state.open_message(doc));
        }
        for message in &opens {
            self.send(message);
        }
    }

    /// Sends `open` again for documents whose `open` the server dropped.
    pub(super) fn resend_dropped_opens(&mut self) {
        let mut opens = Vec::new();
        for (doc, state) in &mut self.docs {
            if state.open_dropped && state.status != DocStatus::Open {
                state.open_dropped = false;
                opens.push(state.open_message(doc));
            }
        }
        for message in &opens {
            self.send(message);
        }
    }

    /// Throws the replica's state away at the server's next snapshot: after
    /// a gap, a divergence or a panicking function. Pending transactions
    /// stay pending and are resubmitted after the snapshot.
    fn reopen(&mut self, doc: &DocId) {
        let Some(state) = self.docs.get_mut(doc) else {
            return;
        };
        state.needs_snapshot = true;
        if state.status == DocStatus::Disconnected {
            return;
        }
        state.status = DocStatus::Reopening;
        self.send(&ClientMessage::Close { doc: doc.clone() });
        self.send(&ClientMessage::Open { doc: doc.clone(), version: None });
    }

    fn reload(&mut self, doc: &DocId, reason: String) {
        self.events.push_back(Event::Reloading { doc: doc.clone(), reason });
        self.reopen(doc);
    }

    pub(super) fn on_snapshot(&mut self, doc: DocId, version: Version, value: Value, now: Time) {
        let limits = self.config.limits;
        let Some(state) = self.docs.get_mut(&doc) else {
            return;
        };
        if state.status == DocStatus::Disconnected {
            return;
        }
        state.status = DocStatus::Opening;
        state.needs_snapshot = false;
        match &mut state.replica {
            None => {
                state.replica = Some(Replica::new(doc.clone(), value, version, limits));
                self.release_awaiting_replica(&doc, now);
            }
            Some(replica) => {
                replica.reset(value, version);
                self.stats.resyncs += 1;
                self.events.push_back(Event::Reset { doc: doc.clone(), version });
                // Anything may have changed: every STM waiter re-runs.
                self.wake_all_retries(&doc);
            }
        }
    }

    pub(super) fn on_opened(&mut self, doc: DocId, version: Version, _now: Time) {
        let Some(state) = self.docs.get_mut(&doc) else {
            return;
        };
        if state.status != DocStatus::Opening {
            return;
        }
        let Some(replica) = &state.replica else {
            return self.reload(&doc, "opened without a snapshot".to_owned());
        };
        if replica.version() != version {
            let reason = format!(
                "opened at {version}, a version the replica (at {}) does not hold",
                replica.version()
            );
            return self.reload(&doc, reason);
        }
        state.status = DocStatus::Open;
        state.open_dropped = false;
        let mut messages = Vec::new();
        for tx in replica.pending() {
            if let Some(key) = self.waiting.get(&tx.tx_id) {
                if let Some(Transact { phase: Phase::Submitted { sends, .. }, .. }) =
                    self.transactions.get_mut(key)
                {
                    *sends = sends.saturating_add(1);
                }
            }
            messages.push(ClientMessage::Commit { tx: tx.clone() });
        }
        if let Some(presence) = &state.presence {
            messages.push(ClientMessage::Presence { doc: doc.clone(), state: presence.clone() });
        }
        for message in &messages {
            self.send(message);
        }
        self.events.push_back(Event::Opened { doc });
    }

    /// The replica of `doc` if it takes the stream now: not while it waits
    /// for a snapshot to replace it, nor between sessions.
    fn streaming_replica(&mut self, doc: &DocId) -> Option<&mut Replica> {
        let state = self.docs.get_mut(doc)?;
        if matches!(state.status, DocStatus::Reopening | DocStatus::Disconnected) {
            return None;
        }
        state.replica.as_mut()
    }

    pub(super) fn on_change(&mut self, change: Change, now: Time) {
        let Some(replica) = self.streaming_replica(&change.doc) else {
            return;
        };
        let held = replica.version();
        match replica.apply_change(&change) {
            Ok(effect) => {
                if replica.version() == held {
                    // A duplicate of a change the replica holds; if it is
                    // one of our pending transactions (the replica held it
                    // through a snapshot), the replica just dropped it as
                    // settled, and so is its transaction.
                    if let Some(tx_id) = effect.committed {
                        let (doc, version) = (change.doc.clone(), change.version);
                        self.wake_overlapping(&doc, &effect.writes);
                        self.resolve(&doc, &tx_id, Resolution::Committed(version), now);
                    }
                    return;
                }
                let doc = change.doc.clone();
                let version = change.version;
                self.wake_overlapping(&doc, &effect.writes);
                self.events
                    .push_back(Event::Changed { doc: doc.clone(), change: Arc::new(change) });
                if let Some(tx_id) = effect.committed {
                    self.resolve(&doc, &tx_id, Resolution::Committed(version), now);
                }
            }
            Err(error) => {
                let doc = change.doc;
                self.reload(&doc, format!("the replica cannot take a change: {error}"));
            }
        }
    }

    pub(super) fn on_committed(&mut self, doc: DocId, tx_id: TxId, version: Version, now: Time) {
        let Some(replica) = self.streaming_replica(&doc) else {
            return;
        };
        let held = replica.version();
        let pending = replica.pending().find(|tx| tx.tx_id == tx_id).cloned();
        if let Some(tx) = pending.as_ref().filter(|_| version <= held) {
            // The confirmed state already includes this commit (it came in a
            // snapshot taken after it), so its patch must leave the view
            // without being applied again.
            replica.withdraw(&tx_id);
            let written = touched(&tx.writes);
            self.wake_overlapping(&doc, &written);
            return self.resolve(&doc, &tx_id, Resolution::Committed(version), now);
        }
        match replica.on_committed(&tx_id, version) {
            Ok(effect) => {
                if replica.version() > held {
                    if let Some(tx) = pending {
                        let change = Change {
                            doc: doc.clone(),
                            version,
                            tx_id: tx_id.clone(),
                            patch: tx.writes,
                        };
                        self.events.push_back(Event::Changed {
                            doc: doc.clone(),
                            change: Arc::new(change),
                        });
                    }
                }
                self.wake_overlapping(&doc, &effect.writes);
                self.resolve(&doc, &tx_id, Resolution::Committed(version), now);
            }
            Err(error) => {
                self.reload(&doc, format!("the replica cannot take a commit: {error}"));
            }
        }
    }

    pub(super) fn on_rejected(&mut self, doc: DocId, tx_id: TxId, rejection: Rejection, now: Time) {
        let Some(state) = self.docs.get_mut(&doc) else {
            return;
        };
        if state.status == DocStatus::Reopening {
            return;
        }
        let dropped =
            state.replica.as_mut().and_then(|replica| replica.on_rejected(&tx_id, &rejection));
        if let Some(tx) = dropped {
            // Its writes just left the optimistic view.
            self.wake_overlapping(&doc, &touched(&tx.writes));
        }
        self.resolve(&doc, &tx_id, Resolution::Rejected(rejection), now);
    }

    /// An error about a document that is not about a commit.
    pub(super) fn on_doc_error(
        &mut self,
        doc: &DocId,
        code: ErrorCode,
        message: String,
        _now: Time,
    ) {
        let Some(state) = self.docs.get_mut(doc) else {
            return;
        };
        match code {
            // A fresh snapshot and `opened` follow; the dropped backlog may
            // have held outcomes, which resubmission after `opened` recovers.
            ErrorCode::Resynced => {
                if state.status != DocStatus::Reopening {
                    state.status = DocStatus::Opening;
                }
            }
            ErrorCode::NotOpen => self.reopen(doc),
            ErrorCode::RateLimited => {
                // Only an `open` leaves us waiting; presence is ephemeral.
                if matches!(state.status, DocStatus::Opening | DocStatus::Reopening) {
                    state.open_dropped = true;
                }
            }
            // The open itself was refused: the first open, or a reopen after
            // a reconnect with a token that lost the grant. The document is
            // forgotten and its transactions refused.
            _ if matches!(state.status, DocStatus::Opening | DocStatus::Reopening)
                && (code == ErrorCode::Forbidden || state.replica.is_none()) =>
            {
                self.docs.remove(doc);
                let refused = || Settlement::Refused { code, message: message.clone() };
                self.settle_all(doc, &refused);
                self.events.push_back(Event::OpenRefused { doc: doc.clone(), code, message });
            }
            _ => self.events.push_back(Event::ServerError { code, message }),
        }
    }

    /// A `commit` the server refused before it reached the store.
    pub(super) fn on_commit_refused(
        &mut self,
        doc: &DocId,
        tx_id: &TxId,
        code: ErrorCode,
        message: String,
        now: Time,
    ) {
        if code == ErrorCode::NotOpen {
            // The transaction stays pending and goes out again after
            // `opened`.
            return self.reopen(doc);
        }
        let Some(state) = self.docs.get_mut(doc) else {
            return;
        };
        let dropped = state.replica.as_mut().and_then(|replica| replica.withdraw(tx_id));
        if let Some(tx) = dropped {
            self.wake_overlapping(doc, &touched(&tx.writes));
        }
        let resolution = match code {
            ErrorCode::RateLimited => Resolution::Dropped,
            _ => Resolution::Refused { code, message },
        };
        self.resolve(doc, tx_id, resolution, now);
    }
}

/// Locations a patch may change, for waking STM waiters on local writes. An
/// insertion or removal in an array shifts its later elements, so for ops
/// whose last token looks like an array index the parent counts too (a
/// spurious wake only costs a re-run).
fn touched(writes: &Patch) -> Vec<Pointer> {
    let mut touched = Vec::new();
    for op in writes {
        let path = op.path();
        touched.push(path.clone());
        if let PatchOp::Move { from, .. } = op {
            touched.push(from.clone());
            touched.extend(from.parent());
        }
        let indexed = path
            .last()
            .is_some_and(|token| token == "-" || token.bytes().all(|b| b.is_ascii_digit()));
        if indexed
            && matches!(op, PatchOp::Add { .. } | PatchOp::Remove { .. } | PatchOp::Move { .. })
        {
            touched.extend(path.parent());
        }
    }
    touched
}
