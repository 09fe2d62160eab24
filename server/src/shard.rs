//! Shards: the single owners of the authoritative documents.
//!
//! Each shard task owns a `concord_engine::Store` holding the documents whose
//! id hashes to it, and takes commands over a bounded channel; sessions and
//! procedures talk to it only by message, so commit order is the order the
//! shard receives commands and no lock is ever held across an await. Per
//! document the shard also keeps its subscribers (sessions that opened it),
//! their presence, and a bounded history of recent changes
//! (`change_history_max` changes and `change_history_bytes_max` bytes) so a
//! reconnecting client gets just what it missed, and the last snapshot it
//! encoded while that is still the current version, so sessions opening an
//! unchanged document share one encoding (`snapshot_cache_bytes_max` bytes
//! per shard).
//!
//! A shard works in two steps. *Sequencing* decides each command at once:
//! `Store::commit`, the log entry, the frames to send (each change is
//! serialised once and the same bytes are shared by every recipient and the
//! history). *Release* then carries out its visible effects — pushes to
//! outboxes, subscriber and presence changes, replies — strictly in
//! sequencing order. With durable storage an effect is released only once
//! every log entry sequenced before it is durable: the shard sends its
//! entries to the storage thread (`durable`) in batches and keeps
//! sequencing while they are written (pipelining), and releases effects as
//! the thread reports batches durable. So nothing a client sees — an
//! acknowledgement, a change, a snapshot, a rejection caused by a change —
//! can be lost in a crash. In memory there is nothing to wait for and every
//! effect is released as soon as it is sequenced.
//!
//! Ordering (docs/protocol.md, section 6) falls out of releasing in sequencing order: each
//! session sees a document's changes in version order, `committed(v)` after
//! every change below `v`, and `rejected` after the changes that caused it.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::ws::Utf8Bytes;
use concord_engine::access::Identity;
use concord_engine::certificate::CommittedTx;
use concord_engine::protocol::{close_code, ErrorCode, PresenceEvent, ServerMessage};
use concord_engine::store::{CommitCheck, Outcome};
use concord_engine::{
    Change, Commit, Doc, DocId, Patch, Pointer, Rejection, Store, Transaction, TxId, Version,
};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::durable::{Batch, Durable, ShardLink};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::recovery::Recovery;
use crate::rpc::{code, Mutation, MutatorCall, MutatorFn, RpcError};
use crate::rules::Enforcement;
use crate::storage::{DocumentState, LogEntry};

/// Most commands a shard sequences before it hands their log entries to the
/// storage thread, so a long queue still reaches the disk steadily.
const SHARD_BATCH_COMMANDS_MAX: usize = 256;
/// Most bytes of frames one shard holds in effects waiting for the disk
/// (an `open` of a large document holds a whole snapshot); past it the shard
/// stops taking commands, like `shard_pending_effects_max`.
const SHARD_PENDING_EFFECT_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How long after a retryable rejection a session gets the document's
/// changes without its writer's coalescing wait. Under contention a re-run
/// on state one window old collides again: with 32 clients on one counter,
/// a transaction of the Rust client lost 64 runs in a row. Long enough to
/// span a contended client's backoff (at most 32 round trips).
const CONTENDED_UNCOALESCED_FOR: Duration = Duration::from_millis(250);

/// A session's id as other clients see it.
pub(crate) type SessionId = Arc<str>;

/// What a shard can be asked to do.
pub(crate) enum ShardCommand {
    Open {
        session: SessionId,
        outbox: Outbox,
        doc: DocId,
        version: Option<Version>,
    },
    Close {
        session: SessionId,
        doc: DocId,
    },
    Commit {
        session: SessionId,
        /// Who commits: what the guards are shown.
        identity: Arc<Identity>,
        outbox: Outbox,
        tx: Transaction,
        received: Instant,
    },
    Presence {
        session: SessionId,
        doc: DocId,
        state: Value,
    },
    Mutate {
        doc: DocId,
        session: String,
        params: Value,
        mutator: MutatorFn,
        reply: MutateReply,
    },
    Get {
        doc: DocId,
        reply: oneshot::Sender<(Value, Version)>,
    },
}

type MutateReply = oneshot::Sender<Result<(Version, Value), RpcError>>;

impl std::fmt::Debug for ShardCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, doc) = match self {
            ShardCommand::Open { doc, .. } => ("open", doc),
            ShardCommand::Close { doc, .. } => ("close", doc),
            ShardCommand::Commit { tx, .. } => ("commit", &tx.doc),
            ShardCommand::Presence { doc, .. } => ("presence", doc),
            ShardCommand::Mutate { doc, .. } => ("mutate", doc),
            ShardCommand::Get { doc, .. } => ("get", doc),
        };
        write!(f, "ShardCommand::{name}({doc})")
    }
}

/// The shard that owns `doc` among `shards`. The hash is fixed (SipHash with
/// zero keys), so a document always lives on the same shard, also across a
/// restart with the same shard count.
pub(crate) fn shard_index(doc: &DocId, shards: usize) -> usize {
    let mut hasher = std::hash::DefaultHasher::new();
    doc.hash(&mut hasher);
    usize::try_from(hasher.finish() % shards.max(1) as u64).unwrap_or(0)
}

/// The senders of every shard; routes a document to its owner.
#[derive(Debug, Clone)]
pub(crate) struct ShardSet {
    senders: Arc<[mpsc::Sender<ShardCommand>]>,
}

impl ShardSet {
    /// The shard that owns `doc`.
    pub(crate) fn for_doc(&self, doc: &DocId) -> &mpsc::Sender<ShardCommand> {
        &self.senders[shard_index(doc, self.senders.len())]
    }

    /// Sends to the owner of `doc`; false when the shard has stopped.
    pub(crate) async fn send(&self, doc: &DocId, command: ShardCommand) -> bool {
        self.for_doc(doc).send(command).await.is_ok()
    }
}

/// Read and mutate documents on the authoritative store from server code
/// (procedures, tests). Every operation goes through the owning shard, so it
/// is ordered with client commits.
#[derive(Debug, Clone)]
pub struct Documents {
    pub(crate) shards: ShardSet,
}

impl Documents {
    /// The document's current value and version (`{}` at version 0 if never
    /// written); `None` when the server is shutting down. With storage, the
    /// answer waits until the version it reports is durable.
    pub async fn get(&self, doc: &DocId) -> Option<(Value, Version)> {
        let (reply, answer) = oneshot::channel();
        let command = ShardCommand::Get { doc: doc.clone(), reply };
        if !self.shards.send(doc, command).await {
            return None;
        }
        answer.await.ok()
    }

    /// Runs `mutator` on the shard that owns `doc`, commits the writes it
    /// returns and broadcasts them; answers the new version and its result
    /// (with storage, once that version is durable).
    pub async fn mutate<F>(
        &self,
        doc: &DocId,
        params: Value,
        mutator: F,
    ) -> Result<(Version, Value), RpcError>
    where
        F: Fn(MutatorCall<'_>) -> Result<Mutation, RpcError> + Send + Sync + 'static,
    {
        self.mutate_with(doc, String::new(), params, Arc::new(mutator)).await
    }

    pub(crate) async fn mutate_with(
        &self,
        doc: &DocId,
        session: String,
        params: Value,
        mutator: MutatorFn,
    ) -> Result<(Version, Value), RpcError> {
        let (reply, answer) = oneshot::channel();
        let command = ShardCommand::Mutate { doc: doc.clone(), session, params, mutator, reply };
        let gone = || RpcError::new(code::SHUTTING_DOWN, "the server is shutting down");
        if !self.shards.send(doc, command).await {
            return Err(gone());
        }
        answer.await.unwrap_or_else(|_| Err(gone()))
    }
}

/// How shards reach durable storage: one link per shard, and how often to
/// snapshot a document.
#[derive(Debug)]
pub(crate) struct ShardStorage {
    pub(crate) links: Vec<ShardLink>,
    pub(crate) snapshot_every_commits: u64,
    /// Most unsnapshotted commits one shard leaves, over its documents.
    pub(crate) replay_commits_max: u64,
}

/// Starts `config.shards` shard tasks, with the stores and histories a
/// recovery rebuilt (or empty ones) and, when durable, their storage links.
/// They run until `stop` is cancelled and everything they sequenced is
/// released.
pub(crate) fn spawn_shards(
    config: &Config,
    metrics: &Metrics,
    commit_log: Option<CommitLog>,
    enforcement: Arc<Enforcement>,
    recovery: Option<Recovery>,
    storage: Option<ShardStorage>,
    stop: &CancellationToken,
) -> (ShardSet, Vec<tokio::task::JoinHandle<()>>) {
    // Server-made transaction ids must not collide with clients' ids in the
    // dedup window; clients use their own random prefix, we use ours.
    let nonce: u64 = rand::random();
    let (mut stores, mut tails, mut since) = match recovery {
        Some(recovery) => (recovery.stores, recovery.tails, recovery.since_snapshot),
        None => (Vec::new(), Vec::new(), Vec::new()),
    };
    let (mut links, snapshot_every, replay_max) = match storage {
        Some(storage) => {
            (storage.links, storage.snapshot_every_commits, storage.replay_commits_max)
        }
        None => (Vec::new(), u64::MAX, u64::MAX),
    };
    // Taken from the back, so reverse to hand shard `index` its own parts.
    stores.reverse();
    tails.reverse();
    since.reverse();
    links.reverse();
    let mut senders = Vec::with_capacity(config.shards);
    let mut tasks = Vec::with_capacity(config.shards);
    let docs_held = Arc::new(AtomicUsize::new(0));
    for index in 0..config.shards {
        let (sender, receiver) = mpsc::channel(config.shard_queue_commands_max);
        let since_snapshot: HashMap<DocId, u64> = since.pop().unwrap_or_default();
        let log = links.pop().map(|link| ShardLog {
            link,
            batch: Vec::new(),
            snapshots: Vec::new(),
            filling: 1,
            last: 0,
            durable: 0,
            snapshot_every,
            replay_max,
            replay_total: since_snapshot.values().sum(),
            since_snapshot,
        });
        let store = stores.pop().unwrap_or_else(|| Store::new(config.limits));
        docs_held.fetch_add(store.doc_ids().count(), Ordering::Relaxed);
        let mut shard = Shard {
            index,
            store,
            docs: HashMap::new(),
            history_max: config.change_history_max,
            history_bytes_max: config.change_history_bytes_max,
            snapshot_bytes: 0,
            snapshot_bytes_max: config.snapshot_cache_bytes_max,
            docs_held: docs_held.clone(),
            docs_max: config.docs_max,
            metrics: metrics.clone(),
            commit_log: commit_log.clone(),
            enforcement: enforcement.clone(),
            tx_prefix: format!("~srv{nonce:016x}.{index}."),
            tx_counter: 0,
            log,
            effects: VecDeque::new(),
            effects_max: config.shard_pending_effects_max,
            effects_bytes: 0,
            failed: false,
        };
        for (_, changes) in tails.pop().unwrap_or_default() {
            for change in changes {
                shard.record_history(&change.doc, change.version, encode(&change_message(&change)));
            }
        }
        senders.push(sender);
        tasks.push(tokio::spawn(shard.run(receiver, stop.clone())));
    }
    (ShardSet { senders: senders.into() }, tasks)
}

/// The test-only record of every commit, in commit order per document.
#[derive(Debug, Clone)]
pub(crate) struct CommitLog {
    pub(crate) entries: Arc<Mutex<Vec<CommittedTx>>>,
    pub(crate) entries_max: usize,
}

impl CommitLog {
    fn record(&self, tx: Transaction, version: Version) {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.len() < self.entries_max {
            entries.push(CommittedTx { tx, version });
        } else if entries.len() == self.entries_max {
            tracing::warn!(entries_max = self.entries_max, "commit log full; no longer recording");
        }
    }
}

/// One document's live state beyond the store.
#[derive(Debug, Default)]
struct DocState {
    subscribers: HashMap<SessionId, Outbox>,
    /// Subscribers whose transactions here were recently rejected (conflict
    /// or stale), and until when: they get this document's changes without
    /// their writer's coalescing wait (`Outbox::push_reply`), so a re-run
    /// starts from current state instead of colliding again on state a
    /// window old. At most one entry per subscriber.
    contended: HashMap<SessionId, Instant>,
    presence: HashMap<SessionId, Value>,
    /// Recent changes, serialised, oldest first; versions are dense. Updated
    /// when a change is sequenced; only ever sent through a released effect.
    history: VecDeque<(Version, Utf8Bytes)>,
    history_bytes: usize,
    /// The snapshot frame last encoded, and its version; dropped when a
    /// change is sequenced, and only ever sent at its own version.
    snapshot: Option<(Version, Utf8Bytes)>,
}

impl DocState {
    /// Forgets the cached snapshot frame; returns the bytes it held.
    fn drop_snapshot(&mut self) -> usize {
        self.snapshot.take().map_or(0, |(_, frame)| frame.len())
    }
}

/// A visible consequence of a command, carried out at release.
enum Effect {
    /// A change to every subscriber of `doc` but `skip` (the submitter).
    Broadcast {
        doc: DocId,
        frame: Utf8Bytes,
        skip: Option<SessionId>,
    },
    /// An acknowledgement or rejection to the submitter.
    Reply {
        outbox: Outbox,
        frame: Utf8Bytes,
        received: Instant,
    },
    /// An `open` reply (prepared when sequenced), then the subscription.
    Open {
        session: SessionId,
        outbox: Outbox,
        doc: DocId,
        frames: Vec<Utf8Bytes>,
    },
    Close {
        session: SessionId,
        doc: DocId,
    },
    Presence {
        session: SessionId,
        doc: DocId,
        state: Value,
    },
    Mutated {
        reply: MutateReply,
        result: Result<(Version, Value), RpcError>,
    },
    Got {
        reply: oneshot::Sender<(Value, Version)>,
        value: (Value, Version),
    },
}

impl Effect {
    /// Frame bytes the effect holds (what a big `open` can make large).
    fn bytes(&self) -> usize {
        match self {
            Effect::Broadcast { frame, .. } | Effect::Reply { frame, .. } => frame.len(),
            Effect::Open { frames, .. } => frames.iter().map(|frame| frame.len()).sum(),
            _ => 0,
        }
    }
}

/// A shard's side of durable storage.
struct ShardLog {
    link: ShardLink,
    /// Entries sequenced since the last batch was sent.
    batch: Vec<LogEntry>,
    snapshots: Vec<DocumentState>,
    /// The ticket the batch being filled will be sent with.
    filling: u64,
    /// The ticket of the newest batch holding an entry (sent or being
    /// filled): an effect sequenced now must wait for it to be durable.
    last: u64,
    /// Every batch up to this ticket is durable.
    durable: u64,
    snapshot_every: u64,
    /// Commits per document since its last snapshot (documents with none
    /// are left out, so the map does not grow with every document ever
    /// written).
    since_snapshot: HashMap<DocId, u64>,
    /// The sum of `since_snapshot`: what a restart would replay.
    replay_total: u64,
    replay_max: u64,
}

struct Shard {
    index: usize,
    store: Store,
    docs: HashMap<DocId, DocState>,
    history_max: usize,
    history_bytes_max: usize,
    /// Bytes of the snapshot frames held in `docs`, and their bound.
    snapshot_bytes: usize,
    snapshot_bytes_max: usize,
    /// Documents held by all shards together, and their bound.
    docs_held: Arc<AtomicUsize>,
    docs_max: usize,
    metrics: Metrics,
    commit_log: Option<CommitLog>,
    /// Schemas, server-only paths and guards, checked on every commit.
    enforcement: Arc<Enforcement>,
    tx_prefix: String,
    tx_counter: u64,
    /// `None` in memory: effects are released as soon as they are sequenced.
    log: Option<ShardLog>,
    /// Sequenced effects not yet released, oldest first, each with the
    /// ticket that must be durable first. Bounded by `effects_max`: past it
    /// the shard stops taking commands.
    effects: VecDeque<(u64, Effect)>,
    effects_max: usize,
    /// Bytes of frames held in `effects`.
    effects_bytes: usize,
    /// Storage failed: nothing more is released, commands are dropped.
    failed: bool,
}

/// A snapshot message serialised straight from the store's value, without
/// cloning the document.
#[derive(Serialize)]
#[serde(tag = "type", rename = "snapshot")]
struct SnapshotRef<'a> {
    doc: &'a DocId,
    version: Version,
    value: &'a Doc,
}

/// A change message serialised from a borrowed change, so the change itself
/// can move on into the log without a copy.
#[derive(Serialize)]
#[serde(tag = "type", rename = "change")]
struct ChangeRef<'a> {
    doc: &'a DocId,
    version: Version,
    tx_id: &'a TxId,
    patch: &'a Patch,
}

fn change_message(change: &Change) -> ChangeRef<'_> {
    ChangeRef {
        doc: &change.doc,
        version: change.version,
        tx_id: &change.tx_id,
        patch: &change.patch,
    }
}

/// Serialises a server message once, for every recipient.
pub(crate) fn encode<T: Serialize>(message: &T) -> Utf8Bytes {
    match serde_json::to_string(message) {
        Ok(text) => Utf8Bytes::from(text),
        // Our messages are plain data with string keys; serialisation cannot
        // fail short of a bug, and a broken frame must not reach a client.
        Err(error) => {
            debug_assert!(false, "server message failed to serialise: {error}");
            tracing::error!(%error, "server message failed to serialise");
            Utf8Bytes::from_static(
                r#"{"type":"error","code":"bad_message","message":"internal serialisation failure"}"#,
            )
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// Resolves with the next durability report; never in memory or once failed.
async fn next_durable(log: Option<&mut ShardLog>) -> Durable {
    let Some(log) = log else { return std::future::pending().await };
    match log.link.durable.changed().await {
        Ok(()) => *log.link.durable.borrow_and_update(),
        // The storage thread is gone without a word: treat it as failed.
        Err(_) => Durable { ticket: log.durable, failed: true },
    }
}

impl Shard {
    async fn run(mut self, mut commands: mpsc::Receiver<ShardCommand>, stop: CancellationToken) {
        let mut stopping = false;
        loop {
            let accepting = !self.effects_full();
            let log = if self.failed { None } else { self.log.as_mut() };
            tokio::select! {
                biased;
                durable = next_durable(log) => self.on_durable(durable),
                () = stop.cancelled(), if !stopping => {
                    // Finish what is queued, then stop.
                    stopping = true;
                    commands.close();
                }
                command = commands.recv(), if accepting => {
                    let Some(command) = command else { break };
                    self.handle(command);
                    // Take what is already waiting, so one batch carries it.
                    for _ in 1..SHARD_BATCH_COMMANDS_MAX {
                        if self.effects_full() {
                            break;
                        }
                        match commands.try_recv() {
                            Ok(command) => self.handle(command),
                            Err(_) => break,
                        }
                    }
                    self.flush().await;
                }
            }
        }
        // Graceful stop: wait until everything sequenced is durable and
        // released (the server bounds this wait).
        self.flush().await;
        while !self.effects.is_empty() && !self.failed {
            let durable = next_durable(self.log.as_mut()).await;
            self.on_durable(durable);
        }
    }

    fn handle(&mut self, command: ShardCommand) {
        if self.failed {
            // Storage failed: the session is being closed (1011); dropping a
            // reply answers a waiting procedure with "shutting down".
            return;
        }
        match command {
            ShardCommand::Open { session, outbox, doc, version } => {
                self.open(session, outbox, doc, version);
            }
            ShardCommand::Close { session, doc } => self.emit(Effect::Close { session, doc }),
            ShardCommand::Commit { session, identity, outbox, tx, received } => {
                self.commit(session, &identity, outbox, tx, received);
            }
            ShardCommand::Presence { session, doc, state } => {
                self.emit(Effect::Presence { session, doc, state });
            }
            ShardCommand::Mutate { doc, session, params, mutator, reply } => {
                let result = self.mutate(&doc, &session, &params, &mutator);
                self.emit(Effect::Mutated { reply, result });
            }
            ShardCommand::Get { doc, reply } => {
                self.emit(Effect::Got { reply, value: self.store.get(&doc) });
            }
        }
    }

    /// True when the shard holds as many unreleased effects as it may.
    fn effects_full(&self) -> bool {
        self.effects.len() >= self.effects_max
            || self.effects_bytes >= SHARD_PENDING_EFFECT_BYTES_MAX
    }

    /// Queues `effect` behind everything sequenced so far, or carries it out
    /// at once when nothing it depends on is still waiting for the disk.
    fn emit(&mut self, effect: Effect) {
        let needed = self.log.as_ref().map_or(0, |log| log.last);
        let durable = self.log.as_ref().map_or(0, |log| log.durable);
        if self.effects.is_empty() && needed <= durable {
            self.release(effect);
        } else {
            self.effects_bytes += effect.bytes();
            self.effects.push_back((needed, effect));
        }
    }

    fn on_durable(&mut self, durable: Durable) {
        let Some(log) = &mut self.log else { return };
        log.durable = log.durable.max(durable.ticket);
        let ready = log.durable;
        while self.effects.front().is_some_and(|(needed, _)| *needed <= ready) {
            if let Some((_, effect)) = self.effects.pop_front() {
                self.effects_bytes -= effect.bytes();
                self.release(effect);
            }
        }
        if durable.failed {
            self.fail();
        }
    }

    /// Storage failed: what is not yet durable is never released. Every
    /// session waiting on this shard is closed (1011), so its client
    /// reconnects to a restarted server and resubmits; the server as a whole
    /// stops (see `durable`).
    fn fail(&mut self) {
        if self.failed {
            return;
        }
        self.failed = true;
        tracing::error!(shard = self.index, pending = self.effects.len(), "storage failed");
        let reason = "storage failure: unacknowledged commits were not applied";
        self.effects_bytes = 0;
        for (_, effect) in self.effects.drain(..) {
            match effect {
                Effect::Reply { outbox, .. } | Effect::Open { outbox, .. } => {
                    outbox.close_after_drain(close_code::INTERNAL_ERROR, reason);
                }
                _ => {}
            }
        }
        for state in self.docs.values() {
            for outbox in state.subscribers.values() {
                outbox.close_after_drain(close_code::INTERNAL_ERROR, reason);
            }
        }
        if let Some(log) = &mut self.log {
            log.batch.clear();
            log.snapshots.clear();
        }
    }

    /// Hands the entries sequenced since the last call to the storage thread.
    async fn flush(&mut self) {
        let Some(log) = &mut self.log else { return };
        if self.failed || (log.batch.is_empty() && log.snapshots.is_empty()) {
            return;
        }
        let batch = Batch {
            shard: self.index,
            ticket: log.filling,
            entries: std::mem::take(&mut log.batch),
            snapshots: std::mem::take(&mut log.snapshots),
        };
        log.filling += 1;
        if log.link.batches.send(batch).await.is_err() {
            self.fail();
        }
    }

    /// Logs a committed change (with storage) and snapshots its document
    /// when due: after `snapshot_every` of its commits, or all documents
    /// with unsnapshotted commits once the shard's replay work reaches
    /// `replay_max`.
    fn log_change(&mut self, change: Change, base: Version, reads: Vec<Pointer>, author: String) {
        let Some(log) = &mut self.log else { return };
        let version = change.version;
        log.replay_total += 1;
        // Looked up before inserting, so the common case clones no id.
        let since = match log.since_snapshot.get_mut(&change.doc) {
            Some(since) => {
                *since += 1;
                *since
            }
            None => {
                log.since_snapshot.insert(change.doc.clone(), 1);
                1
            }
        };
        if since >= log.snapshot_every {
            log.replay_total -= since;
            log.since_snapshot.remove(&change.doc);
            // Cloned here, serialised by the storage thread: the shard pays
            // a copy, not the encoding.
            if let Some(value) = self.store.value(&change.doc) {
                let doc = change.doc.clone();
                log.snapshots.push(DocumentState { doc, version, value: value.to_value() });
            }
        }
        log.batch.push(LogEntry { change, base, reads, time_ms: now_ms(), author });
        log.last = log.filling;
        if log.replay_total >= log.replay_max {
            for (doc, _) in log.since_snapshot.drain() {
                if let Some(value) = self.store.value(&doc) {
                    let version = self.store.version(&doc);
                    log.snapshots.push(DocumentState { doc, version, value: value.to_value() });
                }
            }
            log.replay_total = 0;
        }
    }

    /// Sequences a committed change: history, log, broadcast.
    fn sequence_change(
        &mut self,
        change: Change,
        base: Version,
        reads: Vec<Pointer>,
        author: String,
        skip: Option<SessionId>,
    ) {
        let frame = encode(&change_message(&change));
        let doc = change.doc.clone();
        self.record_history(&doc, change.version, frame.clone());
        self.log_change(change, base, reads, author);
        self.emit(Effect::Broadcast { doc, frame, skip });
    }

    /// Commits `tx`, with `check` asked whether the patched document may
    /// stand, unless its document is new and the server already holds
    /// `docs_max` documents (then the refusal's message). A slot is
    /// reserved before the commit and given back if the document still does
    /// not exist after it (a transaction refused as too large never creates
    /// it), so the bound holds exactly across shards.
    fn commit_within_docs_max(
        &mut self,
        tx: Transaction,
        check: &mut dyn CommitCheck,
    ) -> Result<Commit, String> {
        if self.store.value(&tx.doc).is_some() {
            return Ok(self.store.commit_checked(tx, check));
        }
        let max = self.docs_max;
        self.docs_held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < max).then_some(held + 1)
            })
            .map_err(|_| format!("the server holds its limit of {max} documents"))?;
        let doc = tx.doc.clone();
        let result = self.store.commit_checked(tx, check);
        if self.store.value(&doc).is_none() {
            self.docs_held.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(result)
    }

    fn record_history(&mut self, doc: &DocId, version: Version, frame: Utf8Bytes) {
        let state = self.docs.entry(doc.clone()).or_default();
        self.snapshot_bytes -= state.drop_snapshot();
        state.history_bytes += frame.len();
        state.history.push_back((version, frame));
        while state.history.len() > self.history_max || state.history_bytes > self.history_bytes_max
        {
            match state.history.pop_front() {
                Some((_, old)) => state.history_bytes -= old.len(),
                None => break,
            }
        }
    }

    fn open(&mut self, session: SessionId, outbox: Outbox, doc: DocId, version: Option<Version>) {
        let current = self.store.version(&doc);
        let state = self.docs.entry(doc.clone()).or_default();
        let catch_up = version.filter(|held| *held <= current).and_then(|held| {
            if held == current {
                return Some(Vec::new());
            }
            let first = state.history.front()?.0;
            if first > held.next() {
                return None;
            }
            let missed: Vec<Utf8Bytes> =
                state.history.iter().filter(|(v, _)| *v > held).map(|(_, f)| f.clone()).collect();
            // Missed changes that would fill the session's outbound queue
            // would close it as a slow consumer before it could read them
            // (a resume after a 4001 would loop): one snapshot instead.
            let bytes = missed.iter().map(|frame| frame.len()).sum();
            outbox.takes_burst(missed.len(), bytes).then_some(missed)
        });
        let mut frames = match catch_up {
            Some(changes) => changes,
            None => vec![self.snapshot_frame(&doc, current)],
        };
        frames.push(encode(&ServerMessage::Opened { doc: doc.clone(), version: current }));
        self.emit(Effect::Open { session, outbox, doc, frames });
    }

    /// The snapshot of `doc` at `current`: the cached frame when it is of
    /// this version, else a new encoding, cached while the bytes allow.
    fn snapshot_frame(&mut self, doc: &DocId, current: Version) -> Utf8Bytes {
        let state = self.docs.entry(doc.clone()).or_default();
        if let Some((version, frame)) = &state.snapshot {
            if *version == current {
                return frame.clone();
            }
        }
        let empty = Doc::empty_object();
        let value = self.store.value(doc).unwrap_or(&empty);
        let frame = encode(&SnapshotRef { doc, version: current, value });
        self.snapshot_bytes -= state.drop_snapshot();
        if self.snapshot_bytes + frame.len() <= self.snapshot_bytes_max {
            self.snapshot_bytes += frame.len();
            state.snapshot = Some((current, frame.clone()));
        }
        frame
    }

    fn commit(
        &mut self,
        session: SessionId,
        identity: &Identity,
        outbox: Outbox,
        tx: Transaction,
        received: Instant,
    ) {
        let doc = tx.doc.clone();
        let tx_id = tx.tx_id.clone();
        let logged = self.commit_log.as_ref().map(|_| tx.clone());
        let base = tx.base;
        let reads = if self.log.is_some() { tx.reads.clone() } else { Vec::new() };
        let enforcement = self.enforcement.clone();
        let mut check = enforcement.for_client(identity);
        let result = match self.commit_within_docs_max(tx, &mut check) {
            Ok(result) => result,
            Err(message) => {
                let refusal = ServerMessage::Error {
                    code: ErrorCode::LimitReached,
                    message,
                    topic: None,
                    method: None,
                    doc: Some(doc),
                    tx_id: Some(tx_id),
                };
                self.emit(Effect::Reply { outbox, frame: encode(&refusal), received });
                return;
            }
        };
        let ack = match result {
            Commit::Applied { version, change } => {
                if let (Some(log), Some(tx)) = (&self.commit_log, logged) {
                    log.record(tx, version);
                }
                self.metrics.commits.inc();
                if let Some(change) = change {
                    let author = session.to_string();
                    self.sequence_change(change, base, reads, author, Some(session));
                }
                ServerMessage::Committed { doc, tx_id, version }
            }
            Commit::Rejected(rejection) => {
                self.metrics.rejections.with_label_values(&[reason(&rejection)]).inc();
                if rejection.is_retryable() {
                    self.mark_contended(&doc, &session, received);
                }
                ServerMessage::Rejected { doc, tx_id, rejection }
            }
            Commit::Duplicate(Outcome::Committed { version }) => {
                self.metrics.duplicates.inc();
                ServerMessage::Committed { doc, tx_id, version }
            }
            Commit::Duplicate(Outcome::Rejected { rejection }) => {
                self.metrics.duplicates.inc();
                ServerMessage::Rejected { doc, tx_id, rejection }
            }
        };
        self.emit(Effect::Reply { outbox, frame: encode(&ack), received });
    }

    /// `session`, rejected on `doc` at `now`, gets `doc`'s changes without
    /// coalescing for `CONTENDED_UNCOALESCED_FOR`.
    fn mark_contended(&mut self, doc: &DocId, session: &SessionId, now: Instant) {
        if let Some(state) = self.docs.get_mut(doc) {
            if state.subscribers.contains_key(session) {
                state.contended.insert(session.clone(), now + CONTENDED_UNCOALESCED_FOR);
            }
        }
    }

    /// Carries out one effect. Runs in sequencing order, after everything
    /// the effect depends on is durable.
    fn release(&mut self, effect: Effect) {
        match effect {
            Effect::Broadcast { doc, frame, skip } => {
                let Some(state) = self.docs.get_mut(&doc) else { return };
                if !state.contended.is_empty() {
                    let now = Instant::now();
                    state.contended.retain(|_, until| *until > now);
                }
                let mut overflowed = Vec::new();
                for (subscriber, outbox) in &state.subscribers {
                    if Some(subscriber) == skip.as_ref() {
                        continue;
                    }
                    let pushed = if state.contended.contains_key(subscriber) {
                        outbox.push_reply(frame.clone())
                    } else {
                        outbox.push(frame.clone())
                    };
                    if pushed.is_err() {
                        overflowed.push(subscriber.clone());
                    }
                }
                for subscriber in overflowed {
                    drop_subscriber(state, &doc, &subscriber);
                }
            }
            Effect::Reply { outbox, frame, received } => {
                // If the ack does not fit, the outbox has closed the session
                // (4001); the client resubmits and the dedup window answers.
                let _ = outbox.push_reply(frame);
                self.metrics.commit_latency.observe(received.elapsed().as_secs_f64());
            }
            Effect::Open { session, outbox, doc, frames } => {
                self.subscribe(session, outbox, doc, frames);
            }
            Effect::Close { session, doc } => self.close(&session, &doc),
            Effect::Presence { session, doc, state } => self.presence(&session, &doc, state),
            Effect::Mutated { reply, result } => {
                // The caller may have gone (disconnect, timeout); the commit stands.
                let _ = reply.send(result);
            }
            Effect::Got { reply, value } => {
                let _ = reply.send(value);
            }
        }
    }

    fn subscribe(
        &mut self,
        session: SessionId,
        outbox: Outbox,
        doc: DocId,
        mut frames: Vec<Utf8Bytes>,
    ) {
        let state = self.docs.entry(doc.clone()).or_default();
        for (other, presence) in &state.presence {
            if **other != *session {
                frames.push(encode(&ServerMessage::Presence {
                    doc: doc.clone(),
                    session: other.to_string(),
                    event: PresenceEvent::Join,
                    state: presence.clone(),
                }));
            }
        }
        // The reply to `open`.
        for frame in frames {
            if outbox.push_reply(frame).is_err() {
                return;
            }
        }
        state.subscribers.insert(session, outbox);
    }

    fn close(&mut self, session: &SessionId, doc: &DocId) {
        if let Some(state) = self.docs.get_mut(doc) {
            drop_subscriber(state, doc, session);
            // Opening never-written documents must not grow memory: forget
            // the state of a document nobody watches and that has no history.
            if state.subscribers.is_empty() && state.history.is_empty() {
                if let Some(mut removed) = self.docs.remove(doc) {
                    self.snapshot_bytes -= removed.drop_snapshot();
                }
            }
        }
    }

    fn presence(&mut self, session: &SessionId, doc: &DocId, state_value: Value) {
        let Some(state) = self.docs.get_mut(doc) else { return };
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
        broadcast_presence(state, doc, session, event, state_value);
    }

    fn mutate(
        &mut self,
        doc: &DocId,
        session: &str,
        params: &Value,
        mutator: &MutatorFn,
    ) -> Result<(Version, Value), RpcError> {
        let empty = Doc::empty_object();
        let value = self.store.value(doc).unwrap_or(&empty);
        let version = self.store.version(doc);
        let call = MutatorCall { params, doc, value, version, session };
        // The mutator is the embedding application's code and only reads the
        // document; a panic in it must not take the whole shard down.
        let mutation = std::panic::catch_unwind(AssertUnwindSafe(|| mutator(call)))
            .map_err(|_| RpcError::internal("the mutator panicked"))??;
        self.tx_counter += 1;
        let tx_id = TxId::parse(&format!("{}{}", self.tx_prefix, self.tx_counter))
            .map_err(|error| RpcError::internal(error.to_string()))?;
        let tx = Transaction {
            doc: doc.clone(),
            tx_id,
            base: version,
            reads: Vec::new(),
            writes: mutation.writes,
        };
        let logged = self.commit_log.as_ref().map(|_| tx.clone());
        let enforcement = self.enforcement.clone();
        let result = self
            .commit_within_docs_max(tx, &mut enforcement.for_server())
            .map_err(|message| RpcError::new(code::MUTATION_REJECTED, message))?;
        match result {
            Commit::Applied { version: committed, change } => {
                if let (Some(log), Some(tx)) = (&self.commit_log, logged) {
                    log.record(tx, committed);
                }
                self.metrics.commits.inc();
                if let Some(change) = change {
                    let author = if session.is_empty() {
                        "~server".into()
                    } else {
                        format!("~mutator:{session}")
                    };
                    self.sequence_change(change, version, Vec::new(), author, None);
                }
                Ok((committed, mutation.result))
            }
            Commit::Rejected(rejection) | Commit::Duplicate(Outcome::Rejected { rejection }) => {
                self.metrics.rejections.with_label_values(&[reason(&rejection)]).inc();
                let data = serde_json::to_value(&rejection).unwrap_or(Value::Null);
                Err(RpcError::new(code::MUTATION_REJECTED, rejection.to_string()).with_data(data))
            }
            Commit::Duplicate(Outcome::Committed { version }) => Ok((version, mutation.result)),
        }
    }
}

/// Removes a subscriber and, if it had presence, tells the others it left.
fn drop_subscriber(state: &mut DocState, doc: &DocId, session: &SessionId) {
    state.subscribers.remove(session);
    state.contended.remove(session);
    if state.presence.remove(session).is_some() {
        broadcast_presence(state, doc, session, PresenceEvent::Leave, Value::Null);
    }
}

fn broadcast_presence(
    state: &mut DocState,
    doc: &DocId,
    session: &SessionId,
    event: PresenceEvent,
    presence: Value,
) {
    let frame = encode(&ServerMessage::Presence {
        doc: doc.clone(),
        session: session.to_string(),
        event,
        state: presence,
    });
    let mut overflowed = Vec::new();
    for (subscriber, outbox) in &state.subscribers {
        if subscriber != session && outbox.push(frame.clone()).is_err() {
            overflowed.push(subscriber.clone());
        }
    }
    for subscriber in overflowed {
        state.subscribers.remove(&subscriber);
        // Its own presence leave is announced when its session closes the doc.
        if state.presence.remove(&subscriber).is_some() {
            let leave = encode(&ServerMessage::Presence {
                doc: doc.clone(),
                session: subscriber.to_string(),
                event: PresenceEvent::Leave,
                state: Value::Null,
            });
            for outbox in state.subscribers.values() {
                let _ = outbox.push(leave.clone());
            }
        }
    }
}

/// The metrics label of a rejection.
fn reason(rejection: &Rejection) -> &'static str {
    match rejection {
        Rejection::Conflict { .. } => "conflict",
        Rejection::Stale { .. } => "stale",
        Rejection::BaseAhead { .. } => "base_ahead",
        Rejection::Patch(_) => "patch",
        Rejection::TooLarge { .. } => "too_large",
        Rejection::OutcomeUnknown { .. } => "outcome_unknown",
        Rejection::Forbidden { .. } => "forbidden",
        Rejection::Invalid { .. } => "invalid",
        Rejection::Vetoed { .. } => "vetoed",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::SNAPSHOT_CACHE_BYTES_MAX;
    use crate::durable;
    use crate::outbox::Outgoing;
    use crate::storage::{
        DataDir, Recovered, SqliteOptions, SqliteStorage, Storage, StorageError, SyncMode,
    };

    /// SQLite, except that every append after the first `appends_ok` fails
    /// (an injected disk error).
    struct Faulty {
        inner: SqliteStorage,
        appends_ok: usize,
    }

    impl Storage for Faulty {
        fn append(&mut self, entries: &[LogEntry]) -> Result<(), StorageError> {
            if self.appends_ok == 0 {
                let source = std::io::Error::other("injected write failure");
                return Err(StorageError::Io { path: "injected".into(), source });
            }
            self.appends_ok -= 1;
            self.inner.append(entries)
        }
        fn save_snapshots(&mut self, snapshots: &[DocumentState]) -> Result<(), StorageError> {
            self.inner.save_snapshots(snapshots)
        }
        fn recover(&mut self, recent: usize) -> Result<Recovered, StorageError> {
            self.inner.recover(recent)
        }
        fn document_at(&mut self, d: &DocId, v: Version) -> Result<Option<Value>, StorageError> {
            self.inner.document_at(d, v)
        }
        fn log(
            &mut self,
            d: &DocId,
            a: Version,
            b: Version,
        ) -> Result<Vec<LogEntry>, StorageError> {
            self.inner.log(d, a, b)
        }
        fn import(&mut self, docs: &[DocumentState]) -> Result<(), StorageError> {
            self.inner.import(docs)
        }
    }

    async fn next_text(outbox: &Outbox) -> Value {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), outbox.next()).await;
        match next.unwrap() {
            Some(Outgoing::Text(text)) => serde_json::from_str(&text).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_failed_append_is_never_acknowledged_and_closes_the_session_with_1011() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteOptions {
            sync: SyncMode::Full,
            history_retained_commits: 1000,
            snapshot_spacing_commits: 1000,
            limits: Default::default(),
        };
        let data_dir = DataDir::lock(dir.path()).unwrap();
        let inner = SqliteStorage::open(dir.path(), options).unwrap();
        let metrics = Metrics::new().unwrap();
        let failed = CancellationToken::new();
        let (links, thread) = durable::spawn(
            Box::new(Faulty { inner, appends_ok: 1 }),
            data_dir,
            SyncMode::Full,
            1,
            16,
            metrics.clone(),
            failed.clone(),
        )
        .unwrap();
        let config = Config { shards: 1, ..Config::default() };
        let stop = CancellationToken::new();
        let storage =
            ShardStorage { links, snapshot_every_commits: 1000, replay_commits_max: 1000 };
        let (shards, tasks) =
            spawn_shards(&config, &metrics, None, Default::default(), None, Some(storage), &stop);
        let outbox = Outbox::new(100, 1 << 20, metrics.clone());
        let session: SessionId = "s".into();
        let doc = DocId::parse("d").unwrap();
        let open = ShardCommand::Open {
            session: session.clone(),
            outbox: outbox.clone(),
            doc: doc.clone(),
            version: None,
        };
        assert!(shards.send(&doc, open).await);
        assert_eq!(next_text(&outbox).await["type"], "snapshot");
        assert_eq!(next_text(&outbox).await["type"], "opened");
        let commit = |id: &str| ShardCommand::Commit {
            session: session.clone(),
            identity: Arc::new(Identity::anonymous()),
            outbox: outbox.clone(),
            tx: serde_json::from_value(json!({"doc": "d", "tx_id": id, "base": 0,
                "writes": [{"op": "incr", "path": "/n", "value": 1}]}))
            .unwrap(),
            received: Instant::now(),
        };
        assert!(shards.send(&doc, commit("t-1")).await);
        let ack = next_text(&outbox).await;
        assert_eq!((&ack["type"], &ack["version"]), (&json!("committed"), &json!(1)));

        assert!(shards.send(&doc, commit("t-2")).await);
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), outbox.next()).await;
        assert!(
            matches!(next.unwrap(), Some(Outgoing::Close { code: close_code::INTERNAL_ERROR, .. })),
            "the unlogged commit must not be acknowledged"
        );
        assert!(failed.is_cancelled());
        assert_eq!(metrics.storage_failed.get(), 1);
        // The storage thread has stopped (releasing the directory); only the
        // first commit is on disk.
        tokio::task::spawn_blocking(move || thread.join().unwrap()).await.unwrap();
        let mut storage = SqliteStorage::open(dir.path(), options).unwrap();
        let recovered = storage.recover(10).unwrap();
        let tail: Vec<&str> = recovered.docs[0].tail.iter().map(|c| c.tx_id.as_str()).collect();
        assert_eq!(tail, ["t-1"]);
        stop.cancel();
        for task in tasks {
            task.await.unwrap();
        }
    }

    fn outbox_serial() -> u64 {
        static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Opens `doc` for a new session; returns its snapshot frame.
    async fn open_snapshot(shards: &ShardSet, doc: &DocId, metrics: &Metrics) -> Utf8Bytes {
        let outbox = Outbox::new(100, 1 << 20, metrics.clone());
        let session: SessionId = format!("s{}", outbox_serial()).into();
        let open =
            ShardCommand::Open { session, outbox: outbox.clone(), doc: doc.clone(), version: None };
        assert!(shards.send(doc, open).await);
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), outbox.next()).await;
        match next.unwrap() {
            Some(Outgoing::Text(frame)) => frame,
            other => panic!("expected the snapshot, got {other:?}"),
        }
    }

    async fn snapshots_of_unchanged_documents(cache_bytes_max: usize) -> (bool, Value) {
        let config =
            Config { shards: 1, snapshot_cache_bytes_max: cache_bytes_max, ..Config::default() };
        let (metrics, stop) = (Metrics::new().unwrap(), CancellationToken::new());
        let (shards, tasks) =
            spawn_shards(&config, &metrics, None, Default::default(), None, None, &stop);
        let doc = DocId::parse("board").unwrap();
        let first = open_snapshot(&shards, &doc, &metrics).await;
        let second = open_snapshot(&shards, &doc, &metrics).await;
        assert_eq!(first, second);
        let shared = first.as_str().as_ptr() == second.as_str().as_ptr();

        let outbox = Outbox::new(100, 1 << 20, metrics.clone());
        let commit = ShardCommand::Commit {
            session: "writer".into(),
            identity: Arc::new(Identity::anonymous()),
            outbox: outbox.clone(),
            tx: serde_json::from_value(json!({"doc": "board", "tx_id": "w-1", "base": 0,
                "writes": [{"op": "add", "path": "/n", "value": 1}]}))
            .unwrap(),
            received: Instant::now(),
        };
        assert!(shards.send(&doc, commit).await);
        assert_eq!(next_text(&outbox).await["type"], "committed");
        let after: Value =
            serde_json::from_str(open_snapshot(&shards, &doc, &metrics).await.as_str()).unwrap();
        stop.cancel();
        for task in tasks {
            task.await.unwrap();
        }
        (shared, after)
    }

    #[tokio::test]
    async fn sessions_opening_an_unchanged_document_share_one_snapshot_encoding() {
        let (shared, after) = snapshots_of_unchanged_documents(SNAPSHOT_CACHE_BYTES_MAX).await;
        assert!(shared, "the second open reuses the first one's frame");
        assert_eq!((&after["version"], &after["value"]), (&json!(1), &json!({"n": 1})));
    }

    #[tokio::test]
    async fn the_snapshot_cache_holds_no_more_than_its_limit() {
        let (shared, after) = snapshots_of_unchanged_documents(0).await;
        assert!(!shared, "with no room, every open encodes its own snapshot");
        assert_eq!((&after["version"], &after["value"]), (&json!(1), &json!({"n": 1})));
    }

    #[test]
    fn the_borrowed_snapshot_encodes_like_the_protocol_type() {
        let doc = DocId::parse("d").unwrap();
        let value = json!({"a": [1, 2]});
        let frame =
            encode(&SnapshotRef { doc: &doc, version: Version(3), value: &Doc::from(&value) });
        let decoded: ServerMessage = serde_json::from_str(&frame).unwrap();
        assert_eq!(decoded, ServerMessage::Snapshot { doc, version: Version(3), value });
    }

    #[test]
    fn the_borrowed_change_encodes_like_the_protocol_type() {
        let change = Change {
            doc: DocId::parse("d").unwrap(),
            version: Version(4),
            tx_id: TxId::parse("t-1").unwrap(),
            patch: serde_json::from_value(json!([{"op": "incr", "path": "/n", "value": 1}]))
                .unwrap(),
        };
        let frame = encode(&change_message(&change));
        let decoded: ServerMessage = serde_json::from_str(&frame).unwrap();
        assert_eq!(decoded, ServerMessage::Change(change));
    }
}
