//! What the sequencer hands to durable storage, and how it keeps track of
//! what is durable.
//!
//! Entries are gathered into batches, each with a [`Ticket`]; storage
//! reports back the newest ticket that is durable (every batch up to it
//! is), and an effect is released once the ticket of the newest batch that
//! held an entry when it was sequenced is durable. Snapshots ride along in
//! the batches so that a restart replays a bounded tail.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::certificate::CommittedTx;
use crate::ids::{DocId, Version};
use crate::pointer::Pointer;
use crate::store::Store;
use crate::transaction::{Change, Transaction};

/// A batch's place in one sequencer's order of batches; strictly
/// increasing from 1. `Ticket(0)` is "nothing": durable from the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// One committed change as the log keeps it: the change itself plus what the
/// transaction read, so the log can be checked for serializability later
/// (`certificate`), and who committed it when.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub change: Change,
    /// The version the transaction's reads were taken at.
    pub base: Version,
    pub reads: Vec<Pointer>,
    /// Server time of the commit, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Who committed it: the session id, or `~mutator:` and the calling
    /// session for a server mutator.
    pub author: String,
}

impl LogEntry {
    /// The entry as the serializability checker takes it.
    pub fn committed_tx(&self) -> CommittedTx {
        CommittedTx {
            tx: Transaction {
                doc: self.change.doc.clone(),
                tx_id: self.change.tx_id.clone(),
                base: self.base,
                reads: self.reads.clone(),
                writes: self.change.patch.clone(),
            },
            version: self.change.version,
        }
    }
}

/// A document's value at a version: a snapshot to save, or one document of
/// an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentState {
    pub doc: DocId,
    pub version: Version,
    pub value: Value,
}

/// What the sequencer hands storage in one go: append `entries` (in order,
/// all or nothing), keep `snapshots`, then report `ticket` durable.
#[derive(Debug)]
pub struct LogBatch {
    pub ticket: Ticket,
    pub entries: Vec<LogEntry>,
    pub snapshots: Vec<DocumentState>,
}

/// How the sequencer uses durable storage; without it (in memory) nothing
/// is logged and every effect is released as soon as it is sequenced.
#[derive(Debug, Clone, Default)]
pub struct Durability {
    /// A document is snapshotted after this many of its commits.
    pub snapshot_every_commits: u64,
    /// Most unsnapshotted commits the sequencer leaves, over its documents:
    /// what a restart would replay. Reaching it snapshots them all.
    pub replay_commits_max: u64,
    /// Commits per document since its last snapshot, as recovery found
    /// them (documents with none left out).
    pub since_snapshot: HashMap<DocId, u64>,
}

/// The sequencer's side of durable storage.
#[derive(Debug)]
pub(super) struct LogState {
    /// Entries sequenced since the last batch was taken.
    batch: Vec<LogEntry>,
    snapshots: Vec<DocumentState>,
    /// The ticket the batch being filled will be taken with.
    filling: Ticket,
    /// The ticket of the newest batch holding an entry (taken or being
    /// filled): an effect sequenced now must wait for it to be durable.
    pub(super) last: Ticket,
    /// Every batch up to this ticket is durable.
    pub(super) durable: Ticket,
    snapshot_every: u64,
    /// Commits per document since its last snapshot (documents with none
    /// are left out, so the map does not grow with every document ever
    /// written).
    since_snapshot: HashMap<DocId, u64>,
    /// The sum of `since_snapshot`: what a restart would replay.
    replay_total: u64,
    replay_max: u64,
}

impl LogState {
    pub(super) fn new(durability: Durability) -> Self {
        Self {
            batch: Vec::new(),
            snapshots: Vec::new(),
            filling: Ticket(1),
            last: Ticket(0),
            durable: Ticket(0),
            snapshot_every: durability.snapshot_every_commits,
            replay_total: durability.since_snapshot.values().sum(),
            since_snapshot: durability.since_snapshot,
            replay_max: durability.replay_commits_max,
        }
    }

    /// Logs a committed change and snapshots its document when due: after
    /// `snapshot_every` of its commits, or all documents with unsnapshotted
    /// commits once the replay work reaches `replay_max`.
    pub(super) fn append(&mut self, store: &Store, entry: LogEntry) {
        let doc = &entry.change.doc;
        let version = entry.change.version;
        self.replay_total += 1;
        // Looked up before inserting, so the common case clones no id.
        let since = match self.since_snapshot.get_mut(doc) {
            Some(since) => {
                *since += 1;
                *since
            }
            None => {
                self.since_snapshot.insert(doc.clone(), 1);
                1
            }
        };
        if since >= self.snapshot_every {
            self.replay_total -= since;
            self.since_snapshot.remove(doc);
            // Cloned here, serialised by storage: the sequencer pays a copy,
            // not the encoding.
            if let Some(value) = store.value(doc) {
                let state = DocumentState { doc: doc.clone(), version, value: value.to_value() };
                self.snapshots.push(state);
            }
        }
        self.batch.push(entry);
        self.last = self.filling;
        if self.replay_total >= self.replay_max {
            for (doc, _) in self.since_snapshot.drain() {
                if let Some(value) = store.value(&doc) {
                    let version = store.version(&doc);
                    self.snapshots.push(DocumentState { doc, version, value: value.to_value() });
                }
            }
            self.replay_total = 0;
        }
    }

    /// The entries and snapshots gathered since the last call, if any.
    pub(super) fn take(&mut self) -> Option<LogBatch> {
        if self.batch.is_empty() && self.snapshots.is_empty() {
            return None;
        }
        let batch = LogBatch {
            ticket: self.filling,
            entries: std::mem::take(&mut self.batch),
            snapshots: std::mem::take(&mut self.snapshots),
        };
        self.filling = Ticket(self.filling.0 + 1);
        Some(batch)
    }

    /// Storage failed: nothing gathered will be written.
    pub(super) fn discard(&mut self) {
        self.batch.clear();
        self.snapshots.clear();
    }
}
