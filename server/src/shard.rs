//! Shards: the single owners of the authoritative documents.
//!
//! Each shard task owns a `concord_engine::Store` holding the documents whose
//! id hashes to it, and takes commands over a bounded channel; sessions and
//! procedures talk to it only by message, so commit order is the order the
//! shard receives commands and no lock is ever held across an await. Per
//! document the shard also keeps its subscribers (sessions that opened it),
//! their presence, and a bounded history of recent changes
//! (`change_history_max` changes and `change_history_bytes_max` bytes) so a
//! reconnecting client gets just what it missed.
//!
//! Ordering (spec §3) falls out of one rule: at commit time the shard pushes
//! the change to every subscriber's outbox, and the acknowledgement to the
//! submitter's, before it takes the next command. So each session sees a
//! document's changes in version order, `committed(v)` after every change
//! below `v`, and `rejected` after the changes that caused it. Each change is
//! serialised once and the same bytes are shared by every recipient and the
//! history.
//!
//! Durability is a later issue. The commit path is shaped for it: a durable
//! log append belongs in `Shard::commit` between `Store::commit` and the
//! first push, and group commit would batch the commands already waiting.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use concord_engine::certificate::CommittedTx;
use concord_engine::protocol::{PresenceEvent, ServerMessage};
use concord_engine::store::Outcome;
use concord_engine::{Change, Commit, DocId, Rejection, Store, Transaction, TxId, Version};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::rpc::{code, Mutation, MutatorCall, MutatorFn, RpcError};

/// A session's id as other clients see it.
pub(crate) type SessionId = Arc<str>;

/// What a shard can be asked to do.
pub(crate) enum ShardCommand {
    Open { session: SessionId, outbox: Outbox, doc: DocId, version: Option<Version> },
    Close { session: SessionId, doc: DocId },
    Commit { session: SessionId, outbox: Outbox, tx: Transaction, received: Instant },
    Presence { session: SessionId, doc: DocId, state: Value },
    Mutate { doc: DocId, session: String, params: Value, mutator: MutatorFn, reply: MutateReply },
    Get { doc: DocId, reply: oneshot::Sender<(Value, Version)> },
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

/// The senders of every shard; routes a document to its owner.
#[derive(Debug, Clone)]
pub(crate) struct ShardSet {
    senders: Arc<[mpsc::Sender<ShardCommand>]>,
}

impl ShardSet {
    /// The shard that owns `doc`. The hash is fixed (SipHash with zero keys),
    /// so a document always lives on the same shard.
    pub(crate) fn for_doc(&self, doc: &DocId) -> &mpsc::Sender<ShardCommand> {
        let mut hasher = std::hash::DefaultHasher::new();
        doc.hash(&mut hasher);
        let index = usize::try_from(hasher.finish() % self.senders.len() as u64).unwrap_or(0);
        &self.senders[index]
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
    /// written); `None` when the server is shutting down.
    pub async fn get(&self, doc: &DocId) -> Option<(Value, Version)> {
        let (reply, answer) = oneshot::channel();
        let command = ShardCommand::Get { doc: doc.clone(), reply };
        if !self.shards.send(doc, command).await {
            return None;
        }
        answer.await.ok()
    }

    /// Runs `mutator` on the shard that owns `doc`, commits the writes it
    /// returns and broadcasts them; answers the new version and its result.
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

/// Starts `config.shards` shard tasks.
pub(crate) fn spawn_shards(
    config: &Config,
    metrics: &Metrics,
    commit_log: Option<CommitLog>,
) -> (ShardSet, Vec<tokio::task::JoinHandle<()>>) {
    // Server-made transaction ids must not collide with clients' ids in the
    // dedup window; clients use their own random prefix, we use ours.
    let nonce: u64 = rand::random();
    let mut senders = Vec::with_capacity(config.shards);
    let mut tasks = Vec::with_capacity(config.shards);
    for index in 0..config.shards {
        let (sender, receiver) = mpsc::channel(config.shard_queue_commands_max);
        let shard = Shard {
            store: Store::new(config.limits),
            docs: HashMap::new(),
            history_max: config.change_history_max,
            history_bytes_max: config.change_history_bytes_max,
            metrics: metrics.clone(),
            commit_log: commit_log.clone(),
            tx_prefix: format!("~srv{nonce:016x}.{index}."),
            tx_counter: 0,
        };
        senders.push(sender);
        tasks.push(tokio::spawn(shard.run(receiver)));
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
    presence: HashMap<SessionId, Value>,
    /// Recent changes, serialised, oldest first; versions are dense.
    history: VecDeque<(Version, Utf8Bytes)>,
    history_bytes: usize,
}

struct Shard {
    store: Store,
    docs: HashMap<DocId, DocState>,
    history_max: usize,
    history_bytes_max: usize,
    metrics: Metrics,
    commit_log: Option<CommitLog>,
    tx_prefix: String,
    tx_counter: u64,
}

/// A snapshot message serialised straight from the store's value, without
/// cloning the document.
#[derive(Serialize)]
#[serde(tag = "type", rename = "snapshot")]
struct SnapshotRef<'a> {
    doc: &'a DocId,
    version: Version,
    value: &'a Value,
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

impl Shard {
    async fn run(mut self, mut commands: mpsc::Receiver<ShardCommand>) {
        while let Some(command) = commands.recv().await {
            self.handle(command);
        }
    }

    fn handle(&mut self, command: ShardCommand) {
        match command {
            ShardCommand::Open { session, outbox, doc, version } => {
                self.open(session, outbox, doc, version);
            }
            ShardCommand::Close { session, doc } => self.close(&session, &doc),
            ShardCommand::Commit { session, outbox, tx, received } => {
                self.commit(&session, &outbox, tx, received);
            }
            ShardCommand::Presence { session, doc, state } => self.presence(&session, &doc, state),
            ShardCommand::Mutate { doc, session, params, mutator, reply } => {
                let result = self.mutate(&doc, &session, &params, &mutator);
                // The caller may have gone (disconnect, timeout); the commit stands.
                let _ = reply.send(result);
            }
            ShardCommand::Get { doc, reply } => {
                let _ = reply.send(self.store.get(&doc));
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
            (first <= held.next()).then(|| {
                state
                    .history
                    .iter()
                    .filter(|(v, _)| *v > held)
                    .map(|(_, frame)| frame.clone())
                    .collect::<Vec<_>>()
            })
        });
        let mut frames = match catch_up {
            Some(changes) => changes,
            None => {
                let empty = Value::Object(Default::default());
                let value = self.store.value(&doc).unwrap_or(&empty);
                vec![encode(&SnapshotRef { doc: &doc, version: current, value })]
            }
        };
        frames.push(encode(&ServerMessage::Opened { doc: doc.clone(), version: current }));
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
        for frame in frames {
            if outbox.push(frame).is_err() {
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
                self.docs.remove(doc);
            }
        }
    }

    fn commit(&mut self, session: &SessionId, outbox: &Outbox, tx: Transaction, received: Instant) {
        let doc = tx.doc.clone();
        let tx_id = tx.tx_id.clone();
        let logged = self.commit_log.as_ref().map(|_| tx.clone());
        let result = self.store.commit(tx);
        // A durable log append goes here: after the store decided, before
        // anything is broadcast or acknowledged.
        let ack = match result {
            Commit::Applied { version, change } => {
                if let (Some(log), Some(tx)) = (&self.commit_log, logged) {
                    log.record(tx, version);
                }
                self.metrics.commits.inc();
                if let Some(change) = change {
                    self.broadcast_change(change, Some(session));
                }
                ServerMessage::Committed { doc, tx_id, version }
            }
            Commit::Rejected(rejection) => {
                self.metrics.rejections.with_label_values(&[reason(&rejection)]).inc();
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
        // If the ack does not fit, the outbox has closed the session (4001);
        // the client resubmits and the dedup window answers.
        let _ = outbox.push(encode(&ack));
        self.metrics.commit_latency.observe(received.elapsed().as_secs_f64());
    }

    /// Records `change` in the history and pushes it to every subscriber but
    /// `skip` (the submitter, who gets `committed` instead).
    fn broadcast_change(&mut self, change: Change, skip: Option<&SessionId>) {
        let doc = change.doc.clone();
        let version = change.version;
        let frame = encode(&ServerMessage::Change(change));
        let state = self.docs.entry(doc.clone()).or_default();
        state.history_bytes += frame.len();
        state.history.push_back((version, frame.clone()));
        while state.history.len() > self.history_max || state.history_bytes > self.history_bytes_max
        {
            match state.history.pop_front() {
                Some((_, old)) => state.history_bytes -= old.len(),
                None => break,
            }
        }
        let mut overflowed = Vec::new();
        for (subscriber, outbox) in &state.subscribers {
            if Some(subscriber) != skip && outbox.push(frame.clone()).is_err() {
                overflowed.push(subscriber.clone());
            }
        }
        for subscriber in overflowed {
            drop_subscriber(state, &doc, &subscriber);
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
        let empty = Value::Object(Default::default());
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
        match self.store.commit(tx) {
            Commit::Applied { version, change } => {
                if let (Some(log), Some(tx)) = (&self.commit_log, logged) {
                    log.record(tx, version);
                }
                self.metrics.commits.inc();
                if let Some(change) = change {
                    self.broadcast_change(change, None);
                }
                Ok((version, mutation.result))
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
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_borrowed_snapshot_encodes_like_the_protocol_type() {
        let doc = DocId::parse("d").unwrap();
        let value = json!({"a": [1, 2]});
        let frame = encode(&SnapshotRef { doc: &doc, version: Version(3), value: &value });
        let decoded: ServerMessage = serde_json::from_str(&frame).unwrap();
        assert_eq!(decoded, ServerMessage::Snapshot { doc, version: Version(3), value });
    }
}
