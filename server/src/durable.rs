//! The storage thread: group commit for every shard.
//!
//! One `std::thread` owns the `Storage` (so the SQLite connection never
//! moves between threads and never blocks the async runtime). Shards send it
//! `Batch`es over one bounded channel; it takes everything already waiting
//! (up to `GROUP_COMMIT_ENTRIES_MAX` commits), appends it as one transaction
//! — one fsync for all of them — and then tells each shard, through its own
//! `watch` channel, the newest of its batches that is now durable. A shard
//! keeps sequencing while its batches are in flight and releases the
//! acknowledgements and broadcasts of a batch only once told (see `shard`).
//!
//! Snapshots ride along in the batches; the thread keeps the newest per
//! document and saves them when no commits are waiting, so a snapshot never
//! delays an acknowledgement unless too many pile up.
//!
//! A failed append is fatal: the thread marks every shard failed, cancels
//! the server's `storage_failed` token and stops. The commits of that group
//! (and everything sequenced after them) are never acknowledged; the server
//! closes its sessions (1011) and `concord serve` exits, so a supervisor
//! restarts it and recovery rebuilds the state from what is durable.

use std::collections::HashMap;
use std::time::Instant;

use concord_engine::DocId;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::storage::{DataDir, DocumentState, LogEntry, Storage, SyncMode};

/// Most commits written in one group commit; more wait for the next one, so
/// a huge backlog does not make one transaction (and its latency) huge.
pub(crate) const GROUP_COMMIT_ENTRIES_MAX: usize = 16_384;
/// Most snapshots kept waiting for an idle moment; past it they are saved
/// at once, so their cloned values cannot pile up in memory.
pub(crate) const SNAPSHOTS_PENDING_MAX: usize = 64;
/// Group commits between two checkpoints (copying the WAL back into the
/// database, which bounds the WAL's size and the next open's work). At ten
/// or so pages per group commit this is about SQLite's own default of 1,000
/// pages.
pub(crate) const CHECKPOINT_EVERY_GROUP_COMMITS: u32 = 100;

/// What one shard hands the storage thread in one go.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) shard: usize,
    /// The shard's sequence number for this batch; strictly increasing.
    pub(crate) ticket: u64,
    pub(crate) entries: Vec<LogEntry>,
    pub(crate) snapshots: Vec<DocumentState>,
}

/// What a shard learns from the storage thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Durable {
    /// Every batch of this shard with a ticket up to this one is durable.
    pub(crate) ticket: u64,
    /// An append failed: nothing after `ticket` will ever be durable.
    pub(crate) failed: bool,
}

/// A shard's two ends of the storage thread.
#[derive(Debug)]
pub(crate) struct ShardLink {
    pub(crate) batches: mpsc::Sender<Batch>,
    pub(crate) durable: watch::Receiver<Durable>,
}

/// Starts the storage thread for `shards` shards. It runs until every
/// `ShardLink` is dropped (the shards stopped), then saves pending snapshots
/// and ends, releasing `data_dir`.
pub(crate) fn spawn(
    storage: Box<dyn Storage>,
    data_dir: DataDir,
    sync: SyncMode,
    shards: usize,
    queue_batches_max: usize,
    metrics: Metrics,
    failed: CancellationToken,
) -> std::io::Result<(Vec<ShardLink>, std::thread::JoinHandle<()>)> {
    let (sender, receiver) = mpsc::channel(queue_batches_max);
    let (notify, links): (Vec<_>, Vec<_>) = (0..shards)
        .map(|_| {
            let (notify, durable) = watch::channel(Durable::default());
            (notify, ShardLink { batches: sender.clone(), durable })
        })
        .unzip();
    drop(sender);
    let on_panic = (failed.clone(), metrics.clone());
    let writer = Writer {
        storage,
        sync,
        notify,
        metrics,
        failed,
        snapshots: HashMap::new(),
        since_checkpoint: 0,
        _data_dir: data_dir,
    };
    let handle = std::thread::Builder::new().name("concord-storage".into()).spawn(move || {
        // A bug here must stop acknowledgements like a disk error does,
        // not leave the shards waiting forever. (Unwinding drops the
        // `watch` senders, which the shards read as a failure too.)
        let run = std::panic::AssertUnwindSafe(|| writer.run(receiver));
        if std::panic::catch_unwind(run).is_err() {
            let (failed, metrics) = on_panic;
            tracing::error!("the storage thread panicked; acknowledgements stop");
            metrics.storage_failed.set(1);
            failed.cancel();
        }
    })?;
    Ok((links, handle))
}

struct Writer {
    storage: Box<dyn Storage>,
    sync: SyncMode,
    /// One per shard, indexed by `Batch::shard`.
    notify: Vec<watch::Sender<Durable>>,
    metrics: Metrics,
    failed: CancellationToken,
    /// The newest snapshot of each document not yet saved.
    snapshots: HashMap<DocId, DocumentState>,
    /// Group commits since the last checkpoint.
    since_checkpoint: u32,
    /// Keeps the data directory locked until the last write is done.
    _data_dir: DataDir,
}

impl Writer {
    fn run(mut self, mut batches: mpsc::Receiver<Batch>) {
        loop {
            let first = if self.snapshots.is_empty() {
                match batches.blocking_recv() {
                    Some(batch) => batch,
                    None => break,
                }
            } else {
                match batches.try_recv() {
                    Ok(batch) => batch,
                    // Idle: the moment to save snapshots.
                    Err(mpsc::error::TryRecvError::Empty) => {
                        self.save_snapshots();
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            };
            let mut group = vec![first];
            let mut commits = group[0].entries.len();
            while commits < GROUP_COMMIT_ENTRIES_MAX {
                match batches.try_recv() {
                    Ok(batch) => {
                        commits += batch.entries.len();
                        group.push(batch);
                    }
                    Err(_) => break,
                }
            }
            if !self.commit(group, commits) {
                return;
            }
            if self.snapshots.len() >= SNAPSHOTS_PENDING_MAX {
                self.save_snapshots();
            }
            if self.since_checkpoint >= CHECKPOINT_EVERY_GROUP_COMMITS {
                self.checkpoint();
            }
        }
        // Every shard has stopped (graceful shutdown): save what is pending
        // so the next start replays little.
        self.save_snapshots();
        self.checkpoint();
        tracing::info!("storage flushed and closed");
    }

    /// Appends one group and notifies its shards; false after a failure.
    fn commit(&mut self, group: Vec<Batch>, commits: usize) -> bool {
        let mut entries = Vec::with_capacity(commits);
        let mut done = Vec::with_capacity(group.len());
        for batch in group {
            entries.extend(batch.entries);
            for snapshot in batch.snapshots {
                let newer = self
                    .snapshots
                    .get(&snapshot.doc)
                    .is_none_or(|pending| pending.version < snapshot.version);
                if newer {
                    self.snapshots.insert(snapshot.doc.clone(), snapshot);
                }
            }
            done.push((batch.shard, batch.ticket));
        }
        if !entries.is_empty() {
            let started = Instant::now();
            if let Err(error) = self.storage.append(&entries) {
                tracing::error!(%error, commits, "commit log append failed; acknowledgements stop");
                // The server-wide signal first: by the time a shard closes a
                // session, the server already refuses new ones.
                self.metrics.storage_failed.set(1);
                self.failed.cancel();
                for notify in &self.notify {
                    notify.send_modify(|durable| durable.failed = true);
                }
                return false;
            }
            self.metrics.storage_append_latency.observe(started.elapsed().as_secs_f64());
            self.metrics.storage_batch_commits.observe(entries.len() as f64);
            self.metrics.storage_group_commits.inc();
            self.since_checkpoint += 1;
            if self.sync == SyncMode::Full {
                self.metrics.storage_fsyncs.inc();
            }
        }
        for (shard, ticket) in done {
            if let Some(notify) = self.notify.get(shard) {
                notify.send_modify(|durable| durable.ticket = durable.ticket.max(ticket));
            }
        }
        true
    }

    fn checkpoint(&mut self) {
        self.since_checkpoint = 0;
        if let Err(error) = self.storage.checkpoint() {
            // Not fatal either: the WAL keeps the data; it only grows.
            tracing::warn!(%error, "checkpoint failed");
        }
    }

    fn save_snapshots(&mut self) {
        if self.snapshots.is_empty() {
            return;
        }
        let snapshots: Vec<DocumentState> = self.snapshots.drain().map(|(_, s)| s).collect();
        match self.storage.save_snapshots(&snapshots) {
            Ok(()) => self.metrics.storage_snapshots.inc_by(snapshots.len() as u64),
            Err(error) => {
                // Not fatal: the log still holds every change, so the next
                // start only replays more.
                tracing::warn!(%error, "saving snapshots failed");
                self.metrics.storage_snapshot_failures.inc();
            }
        }
    }
}
