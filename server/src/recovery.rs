//! Restart: turns what storage holds back into one `Store` per shard.
//!
//! Each document is restored from its newest snapshot, then the log tail
//! after it is re-applied with `Store::replay`, which rebuilds the version
//! index and remembers the tail's transaction ids exactly as the original
//! commits did. Transaction ids committed before the snapshot are
//! remembered with `Store::remember_committed`, so a client resubmitting an
//! acknowledged transaction after the restart still gets its original
//! outcome instead of a second commit; a document's dedup floor falls to
//! the oldest of its ids the log still holds, and a resubmission based
//! below that gets `outcome_unknown`. Rejections are not logged, so they
//! are not remembered across a restart: a resubmitted rejected transaction
//! is decided afresh (it never committed, so it cannot commit twice).
//!
//! A tail that does not replay means the log is not the one this server
//! wrote: the start fails rather than serve a state that never existed.

use std::collections::HashMap;

use concord_engine::store::ReplayError;
use concord_engine::{Change, DocId, Limits, Store, Version};

use crate::storage::{Storage, StorageError};

/// What a restart rebuilt, per shard.
#[derive(Debug)]
pub(crate) struct Recovery {
    pub(crate) stores: Vec<Store>,
    /// Per shard: the replayed tail of each document (the newest at most
    /// `tail_kept_max`), to seed catch-up history for reconnecting clients.
    pub(crate) tails: Vec<HashMap<DocId, Vec<Change>>>,
    /// Commits since the newest snapshot, per document.
    pub(crate) since_snapshot: Vec<HashMap<DocId, u64>>,
    pub(crate) docs: usize,
    pub(crate) replayed: usize,
}

/// Why a restart could not rebuild the documents.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The log does not replay on top of its snapshot.
    #[error("the commit log does not replay: {0}")]
    Replay(#[from] ReplayError),
}

/// Reads `storage` back into `shards` stores; `shard_of` routes a document.
pub(crate) fn recover(
    storage: &mut dyn Storage,
    shards: usize,
    limits: Limits,
    tail_kept_max: usize,
    shard_of: impl Fn(&DocId) -> usize,
) -> Result<Recovery, RecoveryError> {
    // The dedup window the protocol promises is the last
    // `tx_dedup_entries_max` decided transactions, whichever shard.
    let mut recovered = storage.recover(limits.tx_dedup_entries_max)?;
    let mut recovery = Recovery {
        stores: (0..shards).map(|_| Store::new(limits)).collect(),
        tails: vec![HashMap::new(); shards],
        since_snapshot: vec![HashMap::new(); shards],
        docs: recovered.docs.len(),
        replayed: 0,
    };
    // Every snapshot first, so that the ids below can lower each document's
    // dedup floor before any tail's replay turns the window over.
    let mut snapshot_versions: HashMap<DocId, Version> = HashMap::new();
    for doc in &mut recovered.docs {
        let snapshot = std::mem::take(&mut doc.snapshot);
        recovery.stores[shard_of(&doc.doc)].restore(
            doc.doc.clone(),
            snapshot,
            doc.snapshot_version,
        );
        snapshot_versions.insert(doc.doc.clone(), doc.snapshot_version);
    }
    // Newest first: each document's ids then run down from its snapshot
    // without a gap (the log holds every commit after the oldest id read),
    // and each one lowers the document's dedup floor past it. Ids in a
    // tail are remembered by its replay below.
    for (tx_id, doc, version) in recovered.recent_tx_ids.into_iter().rev() {
        let before_snapshot = snapshot_versions.get(&doc).is_some_and(|snap| version <= *snap);
        if before_snapshot {
            recovery.stores[shard_of(&doc)].remember_committed(&doc, tx_id, version);
        }
    }
    for doc in recovered.docs {
        let shard = shard_of(&doc.doc);
        let store = &mut recovery.stores[shard];
        for change in &doc.tail {
            store.replay(change)?;
        }
        recovery.replayed += doc.tail.len();
        if !doc.tail.is_empty() {
            recovery.since_snapshot[shard].insert(doc.doc.clone(), doc.tail.len() as u64);
        }
        let mut tail = doc.tail;
        let keep_from = tail.len().saturating_sub(tail_kept_max);
        tail.drain(..keep_from);
        if !tail.is_empty() {
            recovery.tails[shard].insert(doc.doc, tail);
        }
    }
    Ok(recovery)
}
