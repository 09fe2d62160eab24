//! The sequencer: one shard of the server's documents as a state machine
//! with no IO, in the manner of quinn-proto.
//!
//! A [`Sequencer`] owns a [`Store`] and everything the server keeps beside
//! it per document: the subscribed sessions and their presence, a bounded
//! history of recent changes (so a reconnecting client gets just what it
//! missed), the last snapshot frame while it is current, and the log
//! entries waiting to be written. The shell (the server's shard task) feeds
//! it:
//! - [`Sequencer::handle`]: a command (open, close, presence, commit, a
//!   server mutation, get), with the time;
//! - [`Sequencer::poll_batch`]: the log entries sequenced since the last
//!   call, to hand to storage with their [`Ticket`];
//! - [`Sequencer::on_durable`] / [`Sequencer::on_storage_failed`]: what
//!   storage reports;
//! - [`Sequencer::poll_effect`]: the next [`Effect`] to carry out (a frame
//!   to queue for a session, an acknowledgement, a reply, a close), and
//!   [`Sequencer::on_undeliverable`] when a session's queue refused one.
//!
//! It works in two steps. *Sequencing* (in `handle`) decides each command
//! at once: `Store::commit`, the log entry, the frames (each change is
//! encoded once, and the same frame is shared by every recipient and the
//! history). *Release* (in `poll_effect`) then carries out the visible
//! effects — frames, subscriber and presence changes, replies — strictly in
//! sequencing order, and each only once every log entry sequenced before it
//! is durable. So nothing a client sees — an acknowledgement, a change, a
//! snapshot, a rejection caused by a change — can be lost in a crash. In
//! memory there is nothing to wait for and every effect is released at the
//! next `poll_effect`.
//!
//! Ordering (docs/protocol.md, section 6) falls out of releasing in
//! sequencing order: each session sees a document's changes in version
//! order, `committed(v)` after every change below `v`, and `rejected` after
//! the changes that caused it.
//!
//! Time is a parameter ([`UnixMillis`]): it stamps log entries and times the
//! "contended" window. The sequencer reads no clock.

mod frames;
mod log;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;

use crate::doc::Doc;
use crate::ids::{DocId, Version};
use crate::pointer::Pointer;
use crate::protocol::{close_code, ErrorCode, PresenceEvent, ServerMessage};
use crate::store::{Commit, CommitCheck, Store};
use crate::transaction::{Change, Outcome, Rejection, Transaction};
use frames::{encode, ChangeRef, SnapshotRef};
use log::LogState;
pub use log::{DocumentState, Durability, LogBatch, LogEntry, Ticket};

/// How long after a retryable rejection a session gets the document's
/// changes marked urgent (`Effect::Send::urgent`: its writer skips the
/// coalescing wait). Under contention a re-run on state one window old
/// collides again: with 32 clients on one counter, a transaction of the Rust
/// client lost 64 runs in a row. Long enough to span a contended client's
/// backoff (at most 32 round trips). Milliseconds.
pub const CONTENDED_URGENT_FOR_MS: u64 = 250;

/// Why sessions are closed when storage fails.
pub const STORAGE_FAILED_REASON: &str = "storage failure: unacknowledged commits were not applied";

/// Wall-clock time as the shell read it: milliseconds since the Unix epoch.
/// It stamps log entries and times the contended window; a clock step only
/// lengthens or shortens that window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    fn plus_ms(self, ms: u64) -> Self {
        Self(self.0.saturating_add(ms))
    }
}

/// The types the embedding shell names things by; the sequencer only
/// stores, compares and hands them back.
pub trait Shell {
    /// A session's id as other clients see it (presence, the log's author).
    type SessionKey: Clone + Eq + Hash + fmt::Display + fmt::Debug;
    /// How the shell reaches a session (its outbound queue); cloned into
    /// every [`Effect::Send`], so cloning should be cheap.
    type Session: Clone + fmt::Debug;
    /// What the shell needs to carry out a reply (a channel, a start time).
    type Request: fmt::Debug;
    /// An encoded frame. Each is made once and cloned for every recipient
    /// and the history, so cloning must be cheap (shared bytes).
    type Frame: Clone + From<String> + Deref<Target = str> + fmt::Debug;

    /// The key of `session`.
    fn session_key(session: &Self::Session) -> &Self::SessionKey;
}

/// Bounds and settings of one sequencer.
#[derive(Debug, Clone)]
pub struct SequencerConfig {
    /// Most changes one document's catch-up history keeps.
    pub history_changes_max: usize,
    /// Most bytes of frames one document's catch-up history keeps.
    pub history_bytes_max: usize,
    /// Most bytes of cached snapshot frames, over all documents.
    pub snapshot_cache_bytes_max: usize,
    /// Most documents held by all sequencers sharing one count.
    pub docs_max: usize,
    /// Most sequenced effects waiting for durability; past it
    /// [`Sequencer::is_full`] asks the shell to stop taking commands.
    pub pending_effects_max: usize,
    /// Most bytes of frames held in effects waiting for durability (an
    /// `open` of a large document holds a whole snapshot); like
    /// `pending_effects_max`.
    pub pending_effect_bytes_max: usize,
}

/// How many catch-up frames a session can take at once: missed changes past
/// this would overflow its queue, so it gets a snapshot instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Burst {
    pub frames_max: usize,
    pub bytes_max: usize,
}

/// What a sequencer can be asked to do.
pub enum Command<'c, H: Shell> {
    /// Subscribe `session` to `doc`: the changes after `held` if the
    /// history has them all and they fit `burst`, else a snapshot; then
    /// `opened`, the others' presence, and live changes.
    Open { session: H::Session, doc: DocId, held: Option<Version>, burst: Burst },
    /// Unsubscribe (announcing a presence leave).
    Close { session: H::SessionKey, doc: DocId },
    /// Set (`null`: clear) the session's presence on a document it opened.
    Presence { session: H::SessionKey, doc: DocId, state: Value },
    /// A session's transaction, with `check` asked whether the patched
    /// document may stand; answered by [`Effect::Acknowledge`].
    Commit {
        session: H::Session,
        tx: Transaction,
        check: &'c mut dyn CommitCheck,
        request: H::Request,
    },
    /// A transaction made by the server (a mutator), logged as `author`;
    /// answered by [`Reply::Mutated`].
    Mutate { tx: Transaction, author: String, check: &'c mut dyn CommitCheck, request: H::Request },
    /// The document's value and version; answered by [`Reply::Document`]
    /// once that version is durable.
    Get { doc: DocId, request: H::Request },
    /// Nothing to do, but answered ([`Reply::Ready`]) in order: for a reply
    /// the shell decided itself from what it read (a mutator's error).
    Defer { request: H::Request },
}

impl<H: Shell> fmt::Debug for Command<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, doc) = match self {
            Command::Open { doc, .. } => ("open", Some(doc)),
            Command::Close { doc, .. } => ("close", Some(doc)),
            Command::Presence { doc, .. } => ("presence", Some(doc)),
            Command::Commit { tx, .. } => ("commit", Some(&tx.doc)),
            Command::Mutate { tx, .. } => ("mutate", Some(&tx.doc)),
            Command::Get { doc, .. } => ("get", Some(doc)),
            Command::Defer { .. } => ("defer", None),
        };
        match doc {
            Some(doc) => write!(f, "Command::{name}({doc})"),
            None => write!(f, "Command::{name}"),
        }
    }
}

/// What a command decided, as the shell counts it (metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    /// Committed now (possibly at the current version, writing nothing).
    Committed,
    /// Rejected now, or a duplicate of a rejected mutation; `reason` is
    /// [`Rejection::reason`].
    Rejected { reason: &'static str },
    /// A tx id decided before, answered with its outcome.
    Duplicate,
    /// Refused before the store: the document would pass `docs_max`.
    Refused,
}

/// Why a server mutation did not commit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MutationRefused {
    #[error("{0}")]
    Rejected(Rejection),
    #[error("the server holds its limit of {docs_max} documents")]
    DocsMax { docs_max: usize },
}

/// The answer to a request that is not a session's commit.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// To [`Command::Mutate`]: the version committed at, or why not.
    Mutated(Result<Version, MutationRefused>),
    /// To [`Command::Get`].
    Document { value: Value, version: Version },
    /// To [`Command::Defer`].
    Ready,
}

/// Something the shell must carry out, in the order polled.
#[derive(Debug)]
pub enum Effect<H: Shell> {
    /// Queue `frame` for `to`. `urgent` frames answer the session's own
    /// request (the reply to `open`) or go to a session just rejected on the
    /// document: they should not wait out a coalescing window. If the
    /// session's queue refuses it, call [`Sequencer::on_undeliverable`]
    /// before polling again.
    Send { to: H::Session, frame: H::Frame, urgent: bool },
    /// Queue the answer to a session's commit (`committed`, `rejected` or
    /// an `error`), urgent.
    Acknowledge { to: H::Session, frame: H::Frame, request: H::Request },
    /// Answer a request.
    Reply { request: H::Request, reply: Reply },
    /// Close the session after what is queued: storage failed
    /// ([`close_code::INTERNAL_ERROR`]).
    Close { session: H::Session, code: u16, reason: &'static str },
}

/// Told of every commit, when installed (tests and the certificate
/// checker); never consulted when not.
pub trait CommitObserver: Send {
    fn committed(&mut self, tx: Transaction, version: Version);
}

/// A sequenced effect waiting for its release.
#[derive(Debug)]
enum Sequenced<H: Shell> {
    /// A change to every subscriber of `doc` but `skip` (the submitter).
    Broadcast {
        doc: DocId,
        frame: H::Frame,
        skip: Option<H::SessionKey>,
    },
    Acknowledge {
        to: H::Session,
        frame: H::Frame,
        request: H::Request,
    },
    /// The reply to `open` (prepared when sequenced), then the subscription.
    Open {
        session: H::Session,
        doc: DocId,
        frames: Vec<H::Frame>,
    },
    Close {
        session: H::SessionKey,
        doc: DocId,
    },
    Presence {
        session: H::SessionKey,
        doc: DocId,
        state: Value,
    },
    Reply {
        request: H::Request,
        reply: Reply,
    },
}

impl<H: Shell> Sequenced<H> {
    /// Frame bytes the effect holds (what a big `open` can make large).
    fn bytes(&self) -> usize {
        match self {
            Sequenced::Broadcast { frame, .. } | Sequenced::Acknowledge { frame, .. } => {
                frame.len()
            }
            Sequenced::Open { frames, .. } => frames.iter().map(|frame| frame.len()).sum(),
            _ => 0,
        }
    }
}

/// One document's live state beyond the store.
#[derive(Debug)]
struct DocState<H: Shell> {
    subscribers: HashMap<H::SessionKey, H::Session>,
    /// Subscribers whose transactions here were recently rejected (conflict
    /// or stale), and until when: they get this document's changes urgent,
    /// so a re-run starts from current state instead of colliding again on
    /// state a window old. At most one entry per subscriber.
    contended: HashMap<H::SessionKey, UnixMillis>,
    presence: HashMap<H::SessionKey, Value>,
    /// Recent changes, encoded, oldest first; versions are dense. Updated
    /// when a change is sequenced; only ever sent through a released effect.
    history: VecDeque<(Version, H::Frame)>,
    history_bytes: usize,
    /// The snapshot frame last encoded, and its version; dropped when a
    /// change is sequenced, and only ever sent at its own version.
    snapshot: Option<(Version, H::Frame)>,
}

impl<H: Shell> Default for DocState<H> {
    fn default() -> Self {
        Self {
            subscribers: HashMap::new(),
            contended: HashMap::new(),
            presence: HashMap::new(),
            history: VecDeque::new(),
            history_bytes: 0,
            snapshot: None,
        }
    }
}

impl<H: Shell> DocState<H> {
    /// Forgets the cached snapshot frame; returns the bytes it held.
    fn drop_snapshot(&mut self) -> usize {
        self.snapshot.take().map_or(0, |(_, frame)| frame.len())
    }
}

/// The state machine of one shard; see the module docs.
pub struct Sequencer<H: Shell> {
    store: Store,
    config: SequencerConfig,
    docs: HashMap<DocId, DocState<H>>,
    /// Bytes of the snapshot frames held in `docs`.
    snapshot_bytes: usize,
    /// Documents held by every sequencer sharing this count. Shards run on
    /// different threads and `docs_max` bounds them together exactly, so
    /// the count is one shared atomic rather than a share per shard (a
    /// split bound would refuse documents while another shard has room).
    /// An atomic is memory, not IO: the sequencer stays deterministic for
    /// a given sequence of counts.
    docs_held: Arc<AtomicUsize>,
    /// `None` in memory: nothing is logged, nothing waits.
    log: Option<LogState>,
    /// Sequenced effects not yet released, oldest first, each with the
    /// ticket that must be durable first. Bounded by the config's
    /// `pending_effects_max` and `pending_effect_bytes_max` through
    /// `is_full`.
    pending: VecDeque<(Ticket, Sequenced<H>)>,
    /// Bytes of frames held in `pending`.
    pending_bytes: usize,
    /// Released effects not yet polled: those of one released effect at a
    /// time (and presence leaves that follow from an undeliverable frame),
    /// so at most a few per subscriber of one document, and it is refilled
    /// only once empty; after a storage failure, one close per waiting
    /// session and subscription.
    ready: VecDeque<Effect<H>>,
    /// The document of the effect released last, whose subscriber an
    /// undeliverable frame drops.
    releasing: Option<DocId>,
    /// Storage failed: nothing more is sequenced, nor released past what
    /// was durable.
    failed: bool,
    /// After a failure, the closes have been issued.
    abandoned: bool,
    observer: Option<Box<dyn CommitObserver>>,
}

impl<H: Shell> fmt::Debug for Sequencer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sequencer")
            .field("docs", &self.docs.len())
            .field("pending", &self.pending.len())
            .field("durable", &self.log.is_some())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<H: Shell> Sequencer<H> {
    /// A sequencer over `store` (empty, or as recovery rebuilt it), counting
    /// its documents into `docs_held`, with `durability` when it logs.
    pub fn new(
        store: Store,
        config: SequencerConfig,
        docs_held: Arc<AtomicUsize>,
        durability: Option<Durability>,
    ) -> Self {
        docs_held.fetch_add(store.doc_ids().count(), Ordering::Relaxed);
        Self {
            store,
            config,
            docs: HashMap::new(),
            snapshot_bytes: 0,
            docs_held,
            log: durability.map(LogState::new),
            pending: VecDeque::new(),
            pending_bytes: 0,
            ready: VecDeque::new(),
            releasing: None,
            failed: false,
            abandoned: false,
            observer: None,
        }
    }

    /// Tells `observer` of every commit from now on.
    pub fn observe_commits(&mut self, observer: Box<dyn CommitObserver>) {
        self.observer = Some(observer);
    }

    /// The documents, to read (a mutator runs on them).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Puts a change recovery read back from the log into its document's
    /// catch-up history (the store has replayed it already).
    pub fn recover_history(&mut self, change: &Change) {
        let frame = encode(&ChangeRef::new(change));
        self.record_history(&change.doc, change.version, frame);
    }

    /// True when as many effects wait for durability as may: take no more
    /// commands until storage reports progress.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.config.pending_effects_max
            || self.pending_bytes >= self.config.pending_effect_bytes_max
    }

    /// Effects sequenced and not yet polled (released or not).
    pub fn pending_effects(&self) -> usize {
        self.pending.len() + self.ready.len()
    }

    /// True once storage has failed.
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// True when durability reports are worth waiting for: the sequencer
    /// logs and storage has not failed.
    pub fn awaits_storage(&self) -> bool {
        self.log.is_some() && !self.failed
    }

    /// Sequences one command at `now`; what it decided, for a commit.
    /// After a storage failure commands are dropped (their requests with
    /// them).
    pub fn handle(&mut self, command: Command<'_, H>, now: UnixMillis) -> Option<Decided> {
        if self.failed {
            return None;
        }
        match command {
            Command::Open { session, doc, held, burst } => self.open(session, doc, held, burst),
            Command::Close { session, doc } => self.sequence(Sequenced::Close { session, doc }),
            Command::Presence { session, doc, state } => {
                self.sequence(Sequenced::Presence { session, doc, state });
            }
            Command::Commit { session, tx, check, request } => {
                return Some(self.commit(session, tx, check, request, now));
            }
            Command::Mutate { tx, author, check, request } => {
                return Some(self.mutate(tx, author, check, request, now));
            }
            Command::Get { doc, request } => {
                let (value, version) = self.store.get(&doc);
                self.sequence(Sequenced::Reply {
                    request,
                    reply: Reply::Document { value, version },
                });
            }
            Command::Defer { request } => {
                self.sequence(Sequenced::Reply { request, reply: Reply::Ready });
            }
        }
        None
    }

    /// The log entries and snapshots sequenced since the last call, for
    /// storage; report them with [`Sequencer::on_durable`] once written.
    pub fn poll_batch(&mut self) -> Option<LogBatch> {
        if self.failed {
            return None;
        }
        self.log.as_mut()?.take()
    }

    /// Storage reports every batch up to `ticket` durable.
    pub fn on_durable(&mut self, ticket: Ticket) {
        if let Some(log) = &mut self.log {
            log.durable = log.durable.max(ticket);
        }
    }

    /// Storage failed: what is not yet durable is never released. The
    /// effects already durable are still polled, then every session waiting
    /// on this sequencer is closed (1011), so its client reconnects to a
    /// restarted server and resubmits; requests waiting are dropped.
    pub fn on_storage_failed(&mut self) {
        self.failed = true;
        if let Some(log) = &mut self.log {
            log.discard();
        }
    }

    /// The next effect to carry out, releasing sequenced effects whose log
    /// entries are durable; `now` times the contended window.
    pub fn poll_effect(&mut self, now: UnixMillis) -> Option<Effect<H>> {
        loop {
            if let Some(effect) = self.ready.pop_front() {
                return Some(effect);
            }
            let durable = self.log.as_ref().map_or(Ticket(0), |log| log.durable);
            match self.pending.front() {
                Some((needed, _)) if *needed <= durable => {
                    if let Some((_, effect)) = self.pending.pop_front() {
                        self.pending_bytes -= effect.bytes();
                        self.release(effect, now);
                    }
                }
                _ if self.failed && !self.abandoned => self.abandon(),
                _ => return None,
            }
        }
    }

    /// The queue of `session` refused the frame of the last polled
    /// [`Effect::Send`] (it overflowed and is closing): it is no longer a
    /// subscriber of that document, and if it had presence the others are
    /// told it left.
    pub fn on_undeliverable(&mut self, session: &H::SessionKey) {
        let Some(doc) = &self.releasing else { return };
        let Some(state) = self.docs.get_mut(doc) else { return };
        if state.subscribers.contains_key(session) {
            drop_subscriber(state, doc, session, &mut self.ready);
        }
    }

    fn sequence(&mut self, effect: Sequenced<H>) {
        let needed = self.log.as_ref().map_or(Ticket(0), |log| log.last);
        self.pending_bytes += effect.bytes();
        self.pending.push_back((needed, effect));
    }

    /// Closes everything after a storage failure (see `on_storage_failed`).
    fn abandon(&mut self) {
        self.abandoned = true;
        self.pending_bytes = 0;
        let close = |session| Effect::Close {
            session,
            code: close_code::INTERNAL_ERROR,
            reason: STORAGE_FAILED_REASON,
        };
        for (_, effect) in self.pending.drain(..) {
            match effect {
                Sequenced::Acknowledge { to, .. } | Sequenced::Open { session: to, .. } => {
                    self.ready.push_back(close(to));
                }
                _ => {}
            }
        }
        for state in self.docs.values() {
            for session in state.subscribers.values() {
                self.ready.push_back(close(session.clone()));
            }
        }
    }

    fn open(&mut self, session: H::Session, doc: DocId, held: Option<Version>, burst: Burst) {
        let current = self.store.version(&doc);
        let state = self.docs.entry(doc.clone()).or_default();
        let catch_up = held.filter(|held| *held <= current).and_then(|held| {
            if held == current {
                return Some(Vec::new());
            }
            let first = state.history.front()?.0;
            if first > held.next() {
                return None;
            }
            let missed: Vec<H::Frame> =
                state.history.iter().filter(|(v, _)| *v > held).map(|(_, f)| f.clone()).collect();
            // Missed changes that would fill the session's outbound queue
            // would close it as a slow consumer before it could read them
            // (a resume after a 4001 would loop): one snapshot instead.
            let bytes: usize = missed.iter().map(|frame| frame.len()).sum();
            (missed.len() <= burst.frames_max && bytes <= burst.bytes_max).then_some(missed)
        });
        let mut frames = match catch_up {
            Some(changes) => changes,
            None => vec![self.snapshot_frame(&doc, current)],
        };
        frames.push(encode(&ServerMessage::Opened { doc: doc.clone(), version: current }));
        self.sequence(Sequenced::Open { session, doc, frames });
    }

    /// The snapshot of `doc` at `current`: the cached frame when it is of
    /// this version, else a new encoding, cached while the bytes allow.
    fn snapshot_frame(&mut self, doc: &DocId, current: Version) -> H::Frame {
        let state = self.docs.entry(doc.clone()).or_default();
        if let Some((version, frame)) = &state.snapshot {
            if *version == current {
                return frame.clone();
            }
        }
        let empty = Doc::empty_object();
        let value = self.store.value(doc).unwrap_or(&empty);
        let frame: H::Frame = encode(&SnapshotRef { doc, version: current, value });
        self.snapshot_bytes -= state.drop_snapshot();
        if self.snapshot_bytes + frame.len() <= self.config.snapshot_cache_bytes_max {
            self.snapshot_bytes += frame.len();
            state.snapshot = Some((current, frame.clone()));
        }
        frame
    }

    fn record_history(&mut self, doc: &DocId, version: Version, frame: H::Frame) {
        let state = self.docs.entry(doc.clone()).or_default();
        self.snapshot_bytes -= state.drop_snapshot();
        state.history_bytes += frame.len();
        state.history.push_back((version, frame));
        while state.history.len() > self.config.history_changes_max
            || state.history_bytes > self.config.history_bytes_max
        {
            match state.history.pop_front() {
                Some((_, old)) => state.history_bytes -= old.len(),
                None => break,
            }
        }
    }

    /// Commits `tx`, with `check` asked whether the patched document may
    /// stand, unless its document is new and the sequencers sharing
    /// `docs_held` already hold `docs_max` documents (then `Err`). A slot
    /// is reserved before the commit and given back if the document still
    /// does not exist after it (a transaction refused as too large never
    /// creates it), so the bound holds exactly across sequencers.
    fn commit_within_docs_max(
        &mut self,
        tx: Transaction,
        check: &mut dyn CommitCheck,
    ) -> Result<Commit, MutationRefused> {
        if self.store.value(&tx.doc).is_some() {
            return Ok(self.store.commit_checked(tx, check));
        }
        let max = self.config.docs_max;
        self.docs_held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < max).then_some(held + 1)
            })
            .map_err(|_| MutationRefused::DocsMax { docs_max: max })?;
        let doc = tx.doc.clone();
        let result = self.store.commit_checked(tx, check);
        if self.store.value(&doc).is_none() {
            self.docs_held.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(result)
    }

    fn commit(
        &mut self,
        session: H::Session,
        tx: Transaction,
        check: &mut dyn CommitCheck,
        request: H::Request,
        now: UnixMillis,
    ) -> Decided {
        let doc = tx.doc.clone();
        let tx_id = tx.tx_id.clone();
        let observed = self.observer.is_some().then(|| tx.clone());
        let base = tx.base;
        let reads = if self.log.is_some() { tx.reads.clone() } else { Vec::new() };
        let result = match self.commit_within_docs_max(tx, check) {
            Ok(result) => result,
            Err(refusal) => {
                let refusal = ServerMessage::Error {
                    code: ErrorCode::LimitReached,
                    message: refusal.to_string(),
                    topic: None,
                    method: None,
                    doc: Some(doc),
                    tx_id: Some(tx_id),
                };
                let frame = encode(&refusal);
                self.sequence(Sequenced::Acknowledge { to: session, frame, request });
                return Decided::Refused;
            }
        };
        let key = H::session_key(&session);
        let (decided, ack) = match result {
            Commit::Applied { version, change } => {
                if let (Some(observer), Some(tx)) = (&mut self.observer, observed) {
                    observer.committed(tx, version);
                }
                if let Some(change) = change {
                    let author = if self.log.is_some() { key.to_string() } else { String::new() };
                    let skip = Some(key.clone());
                    self.sequence_change(change, base, reads, author, skip, now);
                }
                (Decided::Committed, ServerMessage::Committed { doc, tx_id, version })
            }
            Commit::Rejected(rejection) => {
                if rejection.is_retryable() {
                    self.mark_contended(&doc, H::session_key(&session), now);
                }
                let decided = Decided::Rejected { reason: rejection.reason() };
                (decided, ServerMessage::Rejected { doc, tx_id, rejection })
            }
            Commit::Duplicate(Outcome::Committed { version }) => {
                (Decided::Duplicate, ServerMessage::Committed { doc, tx_id, version })
            }
            Commit::Duplicate(Outcome::Rejected { rejection }) => {
                (Decided::Duplicate, ServerMessage::Rejected { doc, tx_id, rejection })
            }
        };
        let frame = encode(&ack);
        self.sequence(Sequenced::Acknowledge { to: session, frame, request });
        decided
    }

    fn mutate(
        &mut self,
        tx: Transaction,
        author: String,
        check: &mut dyn CommitCheck,
        request: H::Request,
        now: UnixMillis,
    ) -> Decided {
        let observed = self.observer.is_some().then(|| tx.clone());
        let base = tx.base;
        let (decided, result) = match self.commit_within_docs_max(tx, check) {
            Err(refusal) => (Decided::Refused, Err(refusal)),
            Ok(Commit::Applied { version, change }) => {
                if let (Some(observer), Some(tx)) = (&mut self.observer, observed) {
                    observer.committed(tx, version);
                }
                if let Some(change) = change {
                    self.sequence_change(change, base, Vec::new(), author, None, now);
                }
                (Decided::Committed, Ok(version))
            }
            Ok(
                Commit::Rejected(rejection) | Commit::Duplicate(Outcome::Rejected { rejection }),
            ) => {
                let decided = Decided::Rejected { reason: rejection.reason() };
                (decided, Err(MutationRefused::Rejected(rejection)))
            }
            Ok(Commit::Duplicate(Outcome::Committed { version })) => {
                (Decided::Duplicate, Ok(version))
            }
        };
        self.sequence(Sequenced::Reply { request, reply: Reply::Mutated(result) });
        decided
    }

    /// Sequences a committed change: history, log, broadcast.
    fn sequence_change(
        &mut self,
        change: Change,
        base: Version,
        reads: Vec<Pointer>,
        author: String,
        skip: Option<H::SessionKey>,
        now: UnixMillis,
    ) {
        let frame: H::Frame = encode(&ChangeRef::new(&change));
        let doc = change.doc.clone();
        self.record_history(&doc, change.version, frame.clone());
        if let Some(log) = &mut self.log {
            let entry = LogEntry { change, base, reads, time_ms: now.0, author };
            log.append(&self.store, entry);
        }
        self.sequence(Sequenced::Broadcast { doc, frame, skip });
    }

    /// `session`, rejected on `doc` at `now`, gets `doc`'s changes urgent
    /// for `CONTENDED_URGENT_FOR_MS`.
    fn mark_contended(&mut self, doc: &DocId, session: &H::SessionKey, now: UnixMillis) {
        if let Some(state) = self.docs.get_mut(doc) {
            if state.subscribers.contains_key(session) {
                state.contended.insert(session.clone(), now.plus_ms(CONTENDED_URGENT_FOR_MS));
            }
        }
    }

    /// Carries out one sequenced effect, into `ready`. Runs in sequencing
    /// order, after everything the effect depends on is durable.
    fn release(&mut self, effect: Sequenced<H>, now: UnixMillis) {
        match effect {
            Sequenced::Broadcast { doc, frame, skip } => {
                let Some(state) = self.docs.get_mut(&doc) else { return };
                if !state.contended.is_empty() {
                    state.contended.retain(|_, until| *until > now);
                }
                for (subscriber, session) in &state.subscribers {
                    if Some(subscriber) == skip.as_ref() {
                        continue;
                    }
                    let urgent = state.contended.contains_key(subscriber);
                    let (to, frame) = (session.clone(), frame.clone());
                    self.ready.push_back(Effect::Send { to, frame, urgent });
                }
                self.releasing = Some(doc);
            }
            Sequenced::Acknowledge { to, frame, request } => {
                self.ready.push_back(Effect::Acknowledge { to, frame, request });
            }
            Sequenced::Open { session, doc, frames } => self.subscribe(session, doc, frames),
            Sequenced::Close { session, doc } => self.close(&session, doc),
            Sequenced::Presence { session, doc, state } => self.presence(&session, doc, state),
            Sequenced::Reply { request, reply } => {
                self.ready.push_back(Effect::Reply { request, reply });
            }
        }
    }

    /// The reply to `open` (and the others' presence), then the
    /// subscription; an undeliverable frame undoes it.
    fn subscribe(&mut self, session: H::Session, doc: DocId, frames: Vec<H::Frame>) {
        let state = self.docs.entry(doc.clone()).or_default();
        let key = H::session_key(&session).clone();
        for frame in frames {
            self.ready.push_back(Effect::Send { to: session.clone(), frame, urgent: true });
        }
        for (other, presence) in &state.presence {
            if *other != key {
                let frame = encode(&ServerMessage::Presence {
                    doc: doc.clone(),
                    session: other.to_string(),
                    event: PresenceEvent::Join,
                    state: presence.clone(),
                });
                self.ready.push_back(Effect::Send { to: session.clone(), frame, urgent: true });
            }
        }
        state.subscribers.insert(key, session);
        self.releasing = Some(doc);
    }

    fn close(&mut self, session: &H::SessionKey, doc: DocId) {
        if let Some(state) = self.docs.get_mut(&doc) {
            drop_subscriber(state, &doc, session, &mut self.ready);
            // Opening never-written documents must not grow memory: forget
            // the state of a document nobody watches and that has no history.
            if state.subscribers.is_empty() && state.history.is_empty() {
                if let Some(mut removed) = self.docs.remove(&doc) {
                    self.snapshot_bytes -= removed.drop_snapshot();
                }
            }
        }
        self.releasing = Some(doc);
    }

    fn presence(&mut self, session: &H::SessionKey, doc: DocId, state_value: Value) {
        let Some(state) = self.docs.get_mut(&doc) else { return };
        if !state.subscribers.contains_key(session) {
            return;
        }
        let event = if state_value.is_null() {
            if state.presence.remove(session).is_none() {
                return;
            }
            PresenceEvent::Leave
        } else if state.presence.insert(session.clone(), state_value.clone()).is_some() {
            PresenceEvent::Update
        } else {
            PresenceEvent::Join
        };
        broadcast_presence(state, &doc, session, event, state_value, &mut self.ready);
        self.releasing = Some(doc);
    }
}

/// Removes a subscriber and, if it had presence, tells the others it left.
fn drop_subscriber<H: Shell>(
    state: &mut DocState<H>,
    doc: &DocId,
    session: &H::SessionKey,
    ready: &mut VecDeque<Effect<H>>,
) {
    state.subscribers.remove(session);
    state.contended.remove(session);
    if state.presence.remove(session).is_some() {
        broadcast_presence(state, doc, session, PresenceEvent::Leave, Value::Null, ready);
    }
}

/// A presence event of `session` to every other subscriber.
fn broadcast_presence<H: Shell>(
    state: &DocState<H>,
    doc: &DocId,
    session: &H::SessionKey,
    event: PresenceEvent,
    presence: Value,
    ready: &mut VecDeque<Effect<H>>,
) {
    let frame: H::Frame = encode(&ServerMessage::Presence {
        doc: doc.clone(),
        session: session.to_string(),
        event,
        state: presence,
    });
    for (subscriber, to) in &state.subscribers {
        if subscriber != session {
            ready.push_back(Effect::Send { to: to.clone(), frame: frame.clone(), urgent: false });
        }
    }
}
