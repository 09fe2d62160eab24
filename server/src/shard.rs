//! Shards: the tokio shells around the sequencers that own the
//! authoritative documents.
//!
//! Each shard task owns a `concord_engine::sequencer::Sequencer` over the
//! documents whose id hashes to it, and takes commands over a bounded
//! channel; sessions and procedures talk to it only by message, so commit
//! order is the order the shard receives commands and no lock is ever held
//! across an await. All the deciding — commits, subscribers, presence, the
//! catch-up history, the snapshot cache, which log entries an effect waits
//! for — is the sequencer's (see its module docs); the shard is the IO
//! around it:
//! - it translates `ShardCommand`s into sequencer commands (a session comes
//!   as its shared `SessionHandle`, its id and outbox; reply channels and
//!   the receive time ride along as a `Request`), running server mutators
//!   and the rules' checks (`Enforcement`) here, in the shell;
//! - it hands the sequencer's log batches to the storage thread (`durable`)
//!   and feeds its durability reports back, and keeps sequencing while they
//!   are written (pipelining);
//! - it carries out the effects the sequencer releases: pushes to outboxes,
//!   replies on oneshot channels, 1011 closes when storage fails.
//!
//! So nothing a client sees — an acknowledgement, a change, a snapshot, a
//! rejection caused by a change — is released before the log entries
//! sequenced before it are durable, and each session sees a document's
//! changes in version order (docs/protocol.md, section 6).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use axum::extract::ws::Utf8Bytes;
use concord_engine::access::Identity;
use concord_engine::certificate::CommittedTx;
use concord_engine::sequencer::{
    Command, CommitObserver, Decided, Durability, Effect, MutationRefused, Reply, Sequencer,
    SequencerConfig, Shell, Ticket, UnixMillis,
};
use concord_engine::{Doc, DocId, Store, Transaction, TxId, Version};
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

/// Most commands a shard sequences before it hands their log entries to the
/// storage thread, so a long queue still reaches the disk steadily.
const SHARD_BATCH_COMMANDS_MAX: usize = 256;
/// Most bytes of frames one shard holds in effects waiting for the disk
/// (an `open` of a large document holds a whole snapshot); past it the shard
/// stops taking commands, like `shard_pending_effects_max`.
const SHARD_PENDING_EFFECT_BYTES_MAX: usize = 64 * 1024 * 1024;

/// A session's id as other clients see it.
pub(crate) type SessionId = Arc<str>;

/// What a shard can be asked to do.
pub(crate) enum ShardCommand {
    Open {
        session: ShardSession,
        doc: DocId,
        version: Option<Version>,
    },
    Close {
        session: SessionId,
        doc: DocId,
    },
    Commit {
        session: ShardSession,
        /// Who commits: what the guards are shown.
        identity: Arc<Identity>,
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
    let sequencer_config = SequencerConfig {
        history_changes_max: config.change_history_max,
        history_bytes_max: config.change_history_bytes_max,
        snapshot_cache_bytes_max: config.snapshot_cache_bytes_max,
        docs_max: config.docs_max,
        pending_effects_max: config.shard_pending_effects_max,
        pending_effect_bytes_max: SHARD_PENDING_EFFECT_BYTES_MAX,
    };
    for index in 0..config.shards {
        let (sender, receiver) = mpsc::channel(config.shard_queue_commands_max);
        let since_snapshot: HashMap<DocId, u64> = since.pop().unwrap_or_default();
        let link = links.pop();
        let durability = link.as_ref().map(|_| Durability {
            snapshot_every_commits: snapshot_every,
            replay_commits_max: replay_max,
            since_snapshot,
        });
        let store = stores.pop().unwrap_or_else(|| Store::new(config.limits));
        let mut sequencer =
            Sequencer::new(store, sequencer_config.clone(), docs_held.clone(), durability);
        if let Some(log) = &commit_log {
            sequencer.observe_commits(Box::new(log.clone()));
        }
        for (_, changes) in tails.pop().unwrap_or_default() {
            for change in changes {
                sequencer.recover_history(&change);
            }
        }
        let shard = Shard {
            index,
            sequencer,
            link,
            metrics: metrics.clone(),
            enforcement: enforcement.clone(),
            tx_prefix: format!("~srv{nonce:016x}.{index}."),
            tx_counter: 0,
        };
        senders.push(sender);
        tasks.push(tokio::spawn(shard.run(receiver, stop.clone())));
    }
    (ShardSet { senders: senders.into() }, tasks)
}

/// The test-only record of every commit, in commit order per document: a
/// [`CommitObserver`] each shard's sequencer is given only when
/// `Config::record_commit_log` is set.
#[derive(Debug, Clone)]
pub(crate) struct CommitLog {
    pub(crate) entries: Arc<Mutex<Vec<CommittedTx>>>,
    pub(crate) entries_max: usize,
}

impl CommitObserver for CommitLog {
    fn committed(&mut self, tx: Transaction, version: Version) {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.len() < self.entries_max {
            entries.push(CommittedTx { tx, version });
        } else if entries.len() == self.entries_max {
            tracing::warn!(entries_max = self.entries_max, "commit log full; no longer recording");
        }
    }
}

/// The server's types as the sequencer names them.
#[derive(Debug)]
struct ShardShell;

/// A session as a shard reaches it: its id (what other clients see) and
/// its outbound queue. Made once per session and shared
/// ([`ShardSession`]): the sequencer clones it into every frame it sends
/// the session, one reference count.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    pub(crate) id: SessionId,
    pub(crate) outbox: Outbox,
}

/// The shared handle of a session.
pub(crate) type ShardSession = Arc<SessionHandle>;

/// What the shell needs to carry out a reply.
#[derive(Debug)]
enum Request {
    /// A session's commit, received at this instant (commit latency).
    Commit {
        received: Instant,
    },
    /// A mutator's writes, with the result it returned to answer with.
    Mutate {
        reply: MutateReply,
        result: Value,
    },
    /// A mutator that failed: its error, answered in order.
    MutatorFailed {
        reply: MutateReply,
        error: RpcError,
    },
    Get {
        reply: oneshot::Sender<(Value, Version)>,
    },
}

impl Shell for ShardShell {
    type SessionKey = SessionId;
    type Session = ShardSession;
    type Request = Request;
    /// The WebSocket frame type itself: the sequencer encodes each change
    /// once into it, and recipients share its bytes with no conversion.
    type Frame = Utf8Bytes;

    fn session_key(session: &ShardSession) -> &SessionId {
        &session.id
    }
}

/// A shard task: the tokio shell around one `Sequencer`.
struct Shard {
    index: usize,
    sequencer: Sequencer<ShardShell>,
    /// `None` in memory.
    link: Option<ShardLink>,
    metrics: Metrics,
    /// Schemas, server-only paths and guards, checked on every commit.
    enforcement: Arc<Enforcement>,
    tx_prefix: String,
    tx_counter: u64,
}

/// Serialises a server message once, for every recipient (the hub's and
/// sessions' own messages; the sequencer encodes the shards').
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

/// The time the sequencer is given: the wall clock, read once per command
/// or per round of effects.
fn now() -> UnixMillis {
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
    UnixMillis(since.map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX)))
}

/// Resolves with the next durability report; never in memory or once failed.
async fn next_durable(link: Option<&mut ShardLink>) -> Durable {
    let Some(link) = link else { return std::future::pending().await };
    match link.durable.changed().await {
        Ok(()) => *link.durable.borrow_and_update(),
        // The storage thread is gone without a word: treat it as failed.
        Err(_) => Durable { ticket: link.durable.borrow().ticket, failed: true },
    }
}

impl Shard {
    async fn run(mut self, mut commands: mpsc::Receiver<ShardCommand>, stop: CancellationToken) {
        let mut stopping = false;
        loop {
            let accepting = !self.sequencer.is_full();
            let link = if self.sequencer.awaits_storage() { self.link.as_mut() } else { None };
            tokio::select! {
                biased;
                durable = next_durable(link) => self.on_durable(durable),
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
                        if self.sequencer.is_full() {
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
        while self.sequencer.pending_effects() > 0 && self.sequencer.awaits_storage() {
            let durable = next_durable(self.link.as_mut()).await;
            self.on_durable(durable);
        }
        self.release();
    }

    /// Sequences one command and carries out what it released (in memory,
    /// everything: so each command sees the subscriptions the ones before
    /// it made, as when effects were carried out inline).
    fn handle(&mut self, command: ShardCommand) {
        if self.sequencer.has_failed() {
            // Storage failed: the session is being closed (1011); dropping a
            // reply answers a waiting procedure with "shutting down".
            return;
        }
        let now = now();
        let command = match command {
            ShardCommand::Open { session, doc, version } => {
                let burst = session.outbox.burst();
                Command::Open { session, doc, held: version, burst }
            }
            ShardCommand::Close { session, doc } => Command::Close { session, doc },
            ShardCommand::Presence { session, doc, state } => {
                Command::Presence { session, doc, state }
            }
            ShardCommand::Commit { session, identity, tx, received } => {
                let enforcement = self.enforcement.clone();
                let mut check = enforcement.for_client(&identity);
                let request = Request::Commit { received };
                let command = Command::Commit { session, tx, check: &mut check, request };
                let decided = self.sequencer.handle(command, now);
                self.count(decided, true);
                self.release();
                return;
            }
            ShardCommand::Mutate { doc, session, params, mutator, reply } => {
                self.mutate(doc, &session, &params, &mutator, reply, now);
                self.release();
                return;
            }
            ShardCommand::Get { doc, reply } => {
                Command::Get { doc, request: Request::Get { reply } }
            }
        };
        self.sequencer.handle(command, now);
        self.release();
    }

    /// Counts what a commit decided.
    fn count(&self, decided: Option<Decided>, from_session: bool) {
        match decided {
            Some(Decided::Committed) => self.metrics.commits.inc(),
            Some(Decided::Rejected { reason }) => {
                self.metrics.rejections.with_label_values(&[reason]).inc();
            }
            Some(Decided::Duplicate) if from_session => self.metrics.duplicates.inc(),
            Some(Decided::Duplicate | Decided::Refused) | None => {}
        }
    }

    /// Runs `mutator` on the document as the shard holds it and sequences
    /// its writes as a server transaction (its error, if it fails, is
    /// answered in order all the same: it may depend on what it read).
    fn mutate(
        &mut self,
        doc: DocId,
        session: &str,
        params: &Value,
        mutator: &MutatorFn,
        reply: MutateReply,
        now: UnixMillis,
    ) {
        match self.run_mutator(&doc, session, params, mutator) {
            Err(error) => {
                let request = Request::MutatorFailed { reply, error };
                self.sequencer.handle(Command::Defer { request }, now);
            }
            Ok((tx, result)) => {
                let author = if session.is_empty() {
                    "~server".into()
                } else {
                    format!("~mutator:{session}")
                };
                let enforcement = self.enforcement.clone();
                let mut check = enforcement.for_server();
                let request = Request::Mutate { reply, result };
                let command = Command::Mutate { tx, author, check: &mut check, request };
                let decided = self.sequencer.handle(command, now);
                self.count(decided, false);
            }
        }
    }

    /// The mutator's transaction and result, or its error.
    fn run_mutator(
        &mut self,
        doc: &DocId,
        session: &str,
        params: &Value,
        mutator: &MutatorFn,
    ) -> Result<(Transaction, Value), RpcError> {
        let store = self.sequencer.store();
        let empty = Doc::empty_object();
        let value = store.value(doc).unwrap_or(&empty);
        let version = store.version(doc);
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
        Ok((tx, mutation.result))
    }

    fn on_durable(&mut self, durable: Durable) {
        self.sequencer.on_durable(Ticket(durable.ticket));
        if durable.failed {
            self.fail();
        }
        self.release();
    }

    /// Storage failed: the sequencer releases what is durable, then closes
    /// every session waiting on this shard (1011); the server as a whole
    /// stops (see `durable`).
    fn fail(&mut self) {
        if self.sequencer.has_failed() {
            return;
        }
        let pending = self.sequencer.pending_effects();
        tracing::error!(shard = self.index, pending, "storage failed");
        self.sequencer.on_storage_failed();
    }

    /// Hands the entries sequenced since the last call to the storage thread.
    async fn flush(&mut self) {
        let Some(link) = &self.link else { return };
        let Some(batch) = self.sequencer.poll_batch() else { return };
        let batch = Batch {
            shard: self.index,
            ticket: batch.ticket.0,
            entries: batch.entries,
            snapshots: batch.snapshots,
        };
        if link.batches.send(batch).await.is_err() {
            self.fail();
            self.release();
        }
    }

    /// Carries out every effect the sequencer has released.
    fn release(&mut self) {
        let now = now();
        while let Some(effect) = self.sequencer.poll_effect(now) {
            match effect {
                Effect::Send { to, frame, urgent } => {
                    let pushed =
                        if urgent { to.outbox.push_reply(frame) } else { to.outbox.push(frame) };
                    if pushed.is_err() {
                        self.sequencer.on_undeliverable(&to.id);
                    }
                }
                Effect::Acknowledge { to, frame, request } => {
                    // If the ack does not fit, the outbox has closed the
                    // session (4001); the client resubmits and the dedup
                    // window answers.
                    let _ = to.outbox.push_reply(frame);
                    if let Request::Commit { received } = request {
                        self.metrics.commit_latency.observe(received.elapsed().as_secs_f64());
                    }
                }
                Effect::Reply { request, reply } => answer(request, reply),
                Effect::Close { session, code, reason } => {
                    session.outbox.close_after_drain(code, reason);
                }
            }
        }
    }
}

/// Answers a server request. The caller may have gone (disconnect,
/// timeout); a commit stands regardless.
fn answer(request: Request, reply: Reply) {
    match (request, reply) {
        (Request::Mutate { reply, result }, Reply::Mutated(outcome)) => {
            let _ = reply.send(outcome.map(|version| (version, result)).map_err(mutation_error));
        }
        (Request::MutatorFailed { reply, error }, _) => {
            let _ = reply.send(Err(error));
        }
        (Request::Get { reply }, Reply::Document { value, version }) => {
            let _ = reply.send((value, version));
        }
        (request, reply) => {
            debug_assert!(false, "{request:?} answered with {reply:?}");
        }
    }
}

/// A refused mutation as the procedure's caller sees it.
fn mutation_error(refused: MutationRefused) -> RpcError {
    match refused {
        MutationRefused::Rejected(rejection) => {
            let data = serde_json::to_value(&rejection).unwrap_or(Value::Null);
            RpcError::new(code::MUTATION_REJECTED, rejection.to_string()).with_data(data)
        }
        refused @ MutationRefused::DocsMax { .. } => {
            RpcError::new(code::MUTATION_REJECTED, refused.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::SNAPSHOT_CACHE_BYTES_MAX;
    use crate::durable;
    use crate::outbox::Outgoing;
    use concord_engine::protocol::close_code;

    use crate::storage::{
        DataDir, DocumentState, LogEntry, Recovered, SqliteOptions, SqliteStorage, Storage,
        StorageError, SyncMode,
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
        let session = Arc::new(SessionHandle { id: "s".into(), outbox: outbox.clone() });
        let doc = DocId::parse("d").unwrap();
        let open = ShardCommand::Open { session: session.clone(), doc: doc.clone(), version: None };
        assert!(shards.send(&doc, open).await);
        assert_eq!(next_text(&outbox).await["type"], "snapshot");
        assert_eq!(next_text(&outbox).await["type"], "opened");
        let commit = |id: &str| ShardCommand::Commit {
            session: session.clone(),
            identity: Arc::new(Identity::anonymous()),
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
        let id: SessionId = format!("s{}", outbox_serial()).into();
        let session = Arc::new(SessionHandle { id, outbox: outbox.clone() });
        let open = ShardCommand::Open { session, doc: doc.clone(), version: None };
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
            session: Arc::new(SessionHandle { id: "writer".into(), outbox: outbox.clone() }),
            identity: Arc::new(Identity::anonymous()),
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
}
