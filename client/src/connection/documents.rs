//! The replicas inside the connection task: opening documents, running
//! transaction jobs, applying the server's changes and outcomes, and
//! bringing a replica back in step after a reconnect, a resync or an error.
//!
//! Every transaction still pending in a replica is (re)sent after each
//! `opened`; the outcome arrives as `committed`, `rejected`, a change in the
//! stream carrying its id, or an `error` naming it, and each resolves the
//! waiting transaction at most once (the waiter is removed when it is
//! answered).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use concord_engine::protocol::{ClientMessage, ErrorCode};
use concord_engine::replica::Replica;
use concord_engine::{Change, DocId, Patch, PatchOp, Pointer, Rejection, TxId, Version};
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};
use tokio_tungstenite::tungstenite::Message as Frame;
use tracing::warn;

use super::{encode, DocChannels, Driver, Job, Resolution, RunKind};
use crate::config::{DOC_EVENTS_QUEUED_MAX, PRESENCE_EVENTS_QUEUED_MAX};
use crate::contention::Contention;
use crate::document::{DocumentEvent, PresenceUpdate};
use crate::error::Error;
use crate::stats::Counters;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DocStatus {
    /// No session; `open` goes out on connect.
    Disconnected,
    /// `open` sent; taking the snapshot or missing changes until `opened`.
    Opening,
    /// Live: changes stream in, commits go out.
    Open,
    /// The replica was found inconsistent and `close` + `open` for a snapshot
    /// were sent: whatever arrives before the snapshot is stale.
    Reopening,
}

struct RetryWaiter {
    reads: Vec<Pointer>,
    resolve: oneshot::Sender<Resolution>,
}

/// A transaction whose pending run awaits the server's outcome.
struct WaitingCommit {
    resolve: oneshot::Sender<Resolution>,
    /// How many times it has been sent. Past one, an earlier send may have
    /// committed with its acknowledgement lost, so the server's
    /// `outcome_unknown` means exactly that and must not be re-run.
    sends: u32,
}

pub(super) struct DocState {
    /// `None` until the first snapshot.
    pub(super) replica: Option<Replica>,
    pub(super) status: DocStatus,
    /// The replica cannot be trusted (a gap, a divergence, a panicking
    /// transaction function): the next `open` asks for a snapshot.
    pub(super) needs_snapshot: bool,
    /// The server dropped an `open` (rate limit): send it again at the next
    /// heartbeat unless `opened` came meanwhile.
    pub(super) open_dropped: bool,
    open_waiters: Vec<oneshot::Sender<Result<DocChannels, Error>>>,
    /// Waiting transactions by the id of their pending run.
    commits: HashMap<TxId, WaitingCommit>,
    retry_waiters: Vec<RetryWaiter>,
    blocked: Vec<oneshot::Sender<Resolution>>,
    events: broadcast::Sender<DocumentEvent>,
    pub(super) presence_events: broadcast::Sender<PresenceUpdate>,
    contention: Arc<Contention>,
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
            open_waiters: Vec::new(),
            commits: HashMap::new(),
            retry_waiters: Vec::new(),
            blocked: Vec::new(),
            events: broadcast::channel(DOC_EVENTS_QUEUED_MAX).0,
            presence_events: broadcast::channel(PRESENCE_EVENTS_QUEUED_MAX).0,
            contention: Arc::default(),
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

    fn channels(&self) -> DocChannels {
        DocChannels {
            events: self.events.downgrade(),
            presence: self.presence_events.downgrade(),
            contention: self.contention.clone(),
        }
    }

    fn emit(&self, event: DocumentEvent) {
        // No receiver is not an error: nobody is watching this document.
        let _ = self.events.send(event);
    }

    /// Wakes the STM waiters that read something overlapping `written`.
    fn wake_overlapping(&mut self, written: &[Pointer], counters: &Counters) {
        if written.is_empty() || self.retry_waiters.is_empty() {
            return;
        }
        let (wake, keep) =
            std::mem::take(&mut self.retry_waiters).into_iter().partition::<Vec<_>, _>(|waiter| {
                waiter.reads.iter().any(|read| written.iter().any(|write| write.overlaps(read)))
            });
        self.retry_waiters = keep;
        for waiter in wake {
            Counters::bump(&counters.stm_wakeups);
            let _ = waiter.resolve.send(Resolution::Wake);
        }
    }

    fn wake_all_retries(&mut self, counters: &Counters) {
        for waiter in self.retry_waiters.drain(..) {
            Counters::bump(&counters.stm_wakeups);
            let _ = waiter.resolve.send(Resolution::Wake);
        }
    }

    /// Resolves the transaction waiting on `tx_id` (if any), and wakes the
    /// runs blocked behind pending transactions.
    fn resolve(&mut self, tx_id: &TxId, resolution: Resolution, counters: &Counters) {
        if let Some(waiter) = self.commits.remove(tx_id) {
            if matches!(resolution, Resolution::Committed(_)) {
                Counters::bump(&counters.committed);
            }
            let _ = waiter.resolve.send(resolution);
        }
        for waiter in self.blocked.drain(..) {
            let _ = waiter.send(Resolution::Wake);
        }
    }
}

impl Driver {
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

    pub(super) fn next_tx_id(&mut self) -> TxId {
        self.tx_seq += 1;
        let raw = format!("{}-{}", self.client_id, self.tx_seq);
        // The client id is alphanumeric and short, so this always parses.
        TxId::parse(&raw).unwrap_or_else(|_| unreachable!("tx id {raw} is well formed"))
    }

    /// Throws the replica's state away at the server's next snapshot: after a
    /// gap, a divergence or a panicking function. Pending transactions stay
    /// pending and are resubmitted after the snapshot.
    pub(super) fn reopen(&mut self, doc: &DocId) {
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

    pub(super) fn open(&mut self, doc: DocId, reply: oneshot::Sender<Result<DocChannels, Error>>) {
        let up = self.is_up();
        match self.docs.entry(doc.clone()) {
            Entry::Occupied(entry) => {
                let state = entry.into_mut();
                if state.status == DocStatus::Open {
                    let _ = reply.send(Ok(state.channels()));
                } else {
                    state.open_waiters.push(reply);
                }
            }
            Entry::Vacant(entry) => {
                let state = entry.insert(DocState::new());
                state.open_waiters.push(reply);
                if up {
                    state.status = DocStatus::Opening;
                    self.send(&ClientMessage::Open { doc, version: None });
                }
            }
        }
    }

    pub(super) fn run_job(&mut self, doc: DocId, job: Job, resolve: oneshot::Sender<Resolution>) {
        let tx_id = self.next_tx_id();
        let Some(state) = self.docs.get_mut(&doc) else {
            // Its open was refused (e.g. `forbidden`) after the handle was
            // made: say so rather than leave the transaction to report Closed.
            let message = format!("{doc} is not open (the server refused opening it)");
            let _ = resolve.send(Resolution::Refused { code: ErrorCode::NotOpen, message });
            return;
        };
        let Some(replica) = state.replica.as_mut() else {
            return;
        };
        // A panicking function must not take the connection task down with
        // it; its half-done writes are discarded by reloading the replica.
        let kind = match std::panic::catch_unwind(AssertUnwindSafe(|| job(replica, tx_id))) {
            Ok(kind) => kind,
            Err(_) => {
                let _ = resolve.send(Resolution::Panicked);
                self.reopen(&doc);
                return;
            }
        };
        match kind {
            RunKind::Done => {}
            RunKind::Submit(tx) => {
                let tx_id = tx.tx_id.clone();
                let written = touched(&tx.writes);
                let commit = ClientMessage::Commit { tx };
                // Checked now, connected or not: resubmissions after a
                // reconnect must not meet a refusal nobody waits for.
                match encode(&commit, self.config.outgoing_message_bytes_max) {
                    Ok(text) => {
                        state.wake_overlapping(&written, &self.counters);
                        let open = state.status == DocStatus::Open;
                        state
                            .commits
                            .insert(tx_id, WaitingCommit { resolve, sends: u32::from(open) });
                        if open {
                            self.outbox.push(Frame::text(text));
                        }
                    }
                    Err((code, message)) => {
                        replica.withdraw(&tx_id);
                        let _ = resolve.send(Resolution::Refused { code, message });
                    }
                }
            }
            RunKind::Retry(reads) => {
                Counters::bump(&self.counters.stm_waits);
                state.retry_waiters.push(RetryWaiter { reads, resolve });
            }
            RunKind::Blocked => {
                Counters::bump(&self.counters.blocked_waits);
                if replica.has_pending() {
                    state.blocked.push(resolve);
                } else {
                    let _ = resolve.send(Resolution::Wake);
                }
            }
        }
    }

    pub(super) fn set_presence(&mut self, doc: DocId, state: Value) {
        let Some(doc_state) = self.docs.get_mut(&doc) else {
            return;
        };
        doc_state.presence = (!state.is_null()).then(|| state.clone());
        if doc_state.status == DocStatus::Open {
            self.send(&ClientMessage::Presence { doc, state });
        }
    }

    pub(super) fn on_snapshot(&mut self, doc: DocId, version: Version, value: Value) {
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
                state.replica = Some(Replica::new(doc, value, version, self.config.limits));
            }
            Some(replica) => {
                replica.reset(value, version);
                Counters::bump(&self.counters.resyncs);
                state.emit(DocumentEvent::Reset { version });
                // Anything may have changed: every STM waiter re-runs.
                state.wake_all_retries(&self.counters);
            }
        }
    }

    pub(super) fn on_opened(&mut self, doc: DocId, version: Version) {
        let Some(state) = self.docs.get_mut(&doc) else {
            return;
        };
        if state.status != DocStatus::Opening {
            return;
        }
        let Some(replica) = &state.replica else {
            warn!(%doc, "opened without a snapshot");
            return self.reopen(&doc);
        };
        if replica.version() != version {
            warn!(%doc, held = %replica.version(), %version, "opened at a version the replica does not hold");
            return self.reopen(&doc);
        }
        state.status = DocStatus::Open;
        state.open_dropped = false;
        let mut messages = Vec::new();
        for tx in replica.pending() {
            if let Some(waiting) = state.commits.get_mut(&tx.tx_id) {
                waiting.sends = waiting.sends.saturating_add(1);
            }
            messages.push(ClientMessage::Commit { tx: tx.clone() });
        }
        if let Some(presence) = &state.presence {
            messages.push(ClientMessage::Presence { doc: doc.clone(), state: presence.clone() });
        }
        let channels = state.channels();
        for waiter in state.open_waiters.drain(..) {
            let _ = waiter.send(Ok(channels.clone()));
        }
        for message in &messages {
            self.send(message);
        }
    }

    pub(super) fn on_change(&mut self, change: Change) {
        let Some(state) = self.docs.get_mut(&change.doc) else {
            return;
        };
        let Some(replica) = state.replica.as_mut() else {
            return;
        };
        if matches!(state.status, DocStatus::Reopening | DocStatus::Disconnected) {
            return;
        }
        let held = replica.version();
        match replica.apply_change(&change) {
            Ok(effect) => {
                if replica.version() == held {
                    return;
                }
                let version = change.version;
                state.wake_overlapping(&effect.writes, &self.counters);
                state.emit(DocumentEvent::Changed(Arc::new(change)));
                if let Some(tx_id) = effect.committed {
                    state.resolve(&tx_id, Resolution::Committed(version), &self.counters);
                }
            }
            Err(error) => {
                warn!(doc = %change.doc, %error, "replica cannot take a change; reloading");
                let doc = change.doc;
                self.reopen(&doc);
            }
        }
    }

    pub(super) fn on_committed(&mut self, doc: DocId, tx_id: TxId, version: Version) {
        let Some(state) = self.docs.get_mut(&doc) else {
            return;
        };
        let Some(replica) = state.replica.as_mut() else {
            return;
        };
        if matches!(state.status, DocStatus::Reopening | DocStatus::Disconnected) {
            return;
        }
        let held = replica.version();
        let pending = replica.pending().find(|tx| tx.tx_id == tx_id).cloned();
        if let Some(tx) = pending.as_ref().filter(|_| version <= held) {
            // The confirmed state already includes this commit (it came in a
            // snapshot taken after it), so its patch must leave the view
            // without being applied again.
            replica.withdraw(&tx_id);
            state.wake_overlapping(&touched(&tx.writes), &self.counters);
            state.resolve(&tx_id, Resolution::Committed(version), &self.counters);
            return;
        }
        match replica.on_committed(&tx_id, version) {
            Ok(effect) => {
                if replica.version() > held {
                    if let Some(tx) = pending {
                        state.emit(DocumentEvent::Changed(Arc::new(Change {
                            doc,
                            version,
                            tx_id: tx_id.clone(),
                            patch: tx.writes,
                        })));
                    }
                }
                state.wake_overlapping(&effect.writes, &self.counters);
                state.resolve(&tx_id, Resolution::Committed(version), &self.counters);
            }
            Err(error) => {
                warn!(%doc, %error, "replica cannot take a commit; reloading");
                self.reopen(&doc);
            }
        }
    }

    pub(super) fn on_rejected(&mut self, doc: DocId, tx_id: TxId, rejection: Rejection) {
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
            state.wake_overlapping(&touched(&tx.writes), &self.counters);
        }
        let sent_before = state.commits.get(&tx_id).is_some_and(|waiting| waiting.sends > 1);
        let resolution = match rejection {
            Rejection::OutcomeUnknown { .. } if sent_before => Resolution::OutcomeUnknown,
            rejection => Resolution::Rejected(rejection),
        };
        state.resolve(&tx_id, resolution, &self.counters);
    }

    /// An error about a document that is not about a commit.
    pub(super) fn on_doc_error(&mut self, doc: &DocId, code: ErrorCode, message: String) {
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
            // The identity may not read it (first open, or a reopen after a
            // reconnect with a token that lost the grant): the document is
            // dropped, its waiters told, its pending transactions refused.
            ErrorCode::Forbidden
                if matches!(state.status, DocStatus::Opening | DocStatus::Reopening) =>
            {
                let Some(state) = self.docs.remove(doc) else {
                    return;
                };
                for waiter in state.open_waiters {
                    let _ = waiter.send(Err(Error::Forbidden { message: message.clone() }));
                }
                for (_, waiting) in state.commits {
                    let refused = Resolution::Refused { code, message: message.clone() };
                    let _ = waiting.resolve.send(refused);
                }
                for waiter in state.retry_waiters {
                    let _ = waiter.resolve.send(Resolution::Wake);
                }
                for waiter in state.blocked {
                    let _ = waiter.send(Resolution::Wake);
                }
            }
            _ if state.replica.is_none() => {
                // The open itself was refused.
                let state = self.docs.remove(doc);
                for waiter in state.into_iter().flat_map(|s| s.open_waiters) {
                    let _ = waiter.send(Err(Error::Refused { code, message: message.clone() }));
                }
            }
            _ => warn!(%doc, ?code, message, "the server reported an error"),
        }
    }

    /// A `commit` the server refused before it reached the store.
    pub(super) fn on_commit_refused(
        &mut self,
        doc: &DocId,
        tx_id: &TxId,
        code: ErrorCode,
        message: String,
    ) {
        if code == ErrorCode::NotOpen {
            // The transaction stays pending and goes out again after `opened`.
            return self.reopen(doc);
        }
        let Some(state) = self.docs.get_mut(doc) else {
            return;
        };
        let dropped = state.replica.as_mut().and_then(|replica| replica.withdraw(tx_id));
        if let Some(tx) = dropped {
            state.wake_overlapping(&touched(&tx.writes), &self.counters);
        }
        let resolution = match code {
            ErrorCode::RateLimited => Resolution::Dropped,
            _ => Resolution::Refused { code, message },
        };
        state.resolve(tx_id, resolution, &self.counters);
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
