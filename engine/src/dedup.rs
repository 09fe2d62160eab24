//! The dedup window: what keeps a transaction id from committing twice.
//!
//! Two parts, both owned by the `Store`: the [`OutcomeWindow`], the recent
//! tx ids and their outcomes in two generations (so a resubmission is
//! answered with its original outcome), and, per document, the
//! [`DedupFloor`], how far back that document's ids are all still in the
//! window (below it an unknown id gets `outcome_unknown`, never a second
//! commit). Neither does any work per commit beyond one insert.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use crate::ids::{TxId, Version};
use crate::limits::Limits;
use crate::transaction::{Outcome, Rejection};

/// How far back a document's commit ids are all still in the dedup window.
///
/// The ids of every commit above `floor` are remembered. An unknown id with
/// a base below `floor` may be a forgotten commit resubmitted, so it gets
/// [`Rejection::OutcomeUnknown`] instead of being decided (a base at or
/// above the floor cannot be: that commit would be above the floor too).
///
/// Kept without any per-commit work: the window counts its generation
/// turnovers, and a document catches up when it is next used. At a
/// turnover the generation before the previous one is forgotten, so the
/// floor rises to the document's version when the previous one began.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DedupFloor {
    pub(crate) floor: Version,
    /// The window generation this record is up to date with.
    pub(crate) generation: u64,
    /// At least the highest version among this document's ids that entered
    /// the window before `generation` began: its version then, or 0 for a
    /// document created or restored since (higher only makes the floor more
    /// cautious).
    pub(crate) generation_start: Version,
}

impl DedupFloor {
    /// This record in window generation `generation`, for a document now at
    /// `version` that has had no commit since `self.generation`'s last one.
    pub(crate) fn caught_up(self, generation: u64, version: Version) -> Self {
        if self.generation == generation {
            return self;
        }
        let floor = if self.generation + 1 == generation {
            // One turnover: the generation before `self.generation` was
            // forgotten, and all of its ids are at or below the version at
            // which `self.generation` began.
            self.floor.max(self.generation_start)
        } else {
            // Two or more: every id this document had is forgotten (a later
            // commit would have caught the record up).
            version
        };
        // And no commit since the last turnover, so the current generation
        // began at `version`.
        Self { floor, generation, generation_start: version }
    }
}

/// The dedup window: decided tx ids and their outcomes, in two generations
/// of at most `Limits::tx_dedup_entries_max` each. New ids go into the
/// current generation; when it is full, the previous one is forgotten whole
/// and the current one takes its place. So the last `tx_dedup_entries_max`
/// ids are always remembered (and up to twice as many may be), and a commit
/// never evicts one id at a time: a per-commit removal from a 100,000-entry
/// map cost a cache miss and, through tombstones, periodic in-place rehashes
/// of the whole table (docs/benchmarks.md).
#[derive(Debug, Default)]
pub(crate) struct OutcomeWindow {
    pub(crate) current: Generation,
    pub(crate) previous: Generation,
    /// Turnovers so far: the number of the current generation.
    pub(crate) generation: u64,
}

/// One generation of the window. Its entries need no drop, so forgetting
/// it is a `memset` of the table's control bytes, not a sweep over 100,000
/// entries (which had cost 0.7 cache misses per commit, and a pause at
/// every turnover): ids of up to 23 bytes (clients'
/// are about 15) are kept inline, longer ones in a map of their own, and a
/// rejection (rare) in a vector the entry indexes.
#[derive(Debug, Default)]
pub(crate) struct Generation {
    short_ids: HashMap<InlineTxId, Remembered, RandomState>,
    long_ids: HashMap<Box<str>, Remembered, RandomState>,
    rejections: Vec<Rejection>,
    /// What `rejections` take, as counted against
    /// `Limits::tx_dedup_rejection_bytes_max`.
    pub(crate) rejection_bytes: usize,
}

/// A tx id of at most 23 bytes, inline and `Copy`: its length, then its
/// bytes, then zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InlineTxId([u8; 24]);

impl InlineTxId {
    /// `None` for an id longer than 23 bytes.
    pub(crate) fn new(id: &str) -> Option<Self> {
        let mut bytes = [0; 24];
        bytes[0] = u8::try_from(id.len()).ok()?;
        bytes.get_mut(1..=id.len())?.copy_from_slice(id.as_bytes());
        Some(Self(bytes))
    }

    pub(crate) fn as_str(&self) -> &str {
        let (len, rest) = self.0.split_first().unwrap_or((&0, &[]));
        // `new` copied a whole `str` of `len` bytes.
        rest.get(..usize::from(*len))
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .unwrap_or("")
    }
}

impl std::hash::Hash for InlineTxId {
    /// Three words rather than 24 bytes one by one.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for word in self.0.chunks_exact(8) {
            let mut le = [0; 8];
            le.copy_from_slice(word);
            state.write_u64(u64::from_le_bytes(le));
        }
    }
}

/// An outcome as the window keeps it: a commit's version, or the index of
/// its generation's rejection. 16 bytes, so an entry with its inline id is
/// 40, as when ids were `CompactString`s.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Remembered {
    Committed(Version),
    Rejected(usize),
}

impl Generation {
    pub(crate) fn len(&self) -> usize {
        self.short_ids.len() + self.long_ids.len()
    }

    pub(crate) fn get(&self, tx_id: &str, short: Option<&InlineTxId>) -> Option<Outcome> {
        let remembered = match short {
            Some(short) => self.short_ids.get(short),
            None => self.long_ids.get(tx_id),
        }?;
        Some(match *remembered {
            Remembered::Committed(version) => Outcome::Committed { version },
            Remembered::Rejected(index) => {
                // Indices come from `insert`, into the same generation.
                let rejection = self.rejections.get(index)?.clone();
                Outcome::Rejected { rejection }
            }
        })
    }

    pub(crate) fn insert(&mut self, tx_id: &str, outcome: Outcome) {
        let remembered = match outcome {
            Outcome::Committed { version } => Remembered::Committed(version),
            Outcome::Rejected { rejection } => {
                self.rejection_bytes += rejection.memory_estimate_bytes();
                self.rejections.push(rejection);
                Remembered::Rejected(self.rejections.len() - 1)
            }
        };
        match InlineTxId::new(tx_id) {
            Some(short) => self.short_ids.insert(short, remembered),
            None => self.long_ids.insert(tx_id.into(), remembered),
        };
    }

    /// Forgets everything; keeps the allocations, so the generations stop
    /// growing once both have been filled.
    pub(crate) fn clear(&mut self) {
        self.short_ids.clear();
        self.long_ids.clear();
        self.rejections.clear();
        self.rejection_bytes = 0;
    }
}

impl OutcomeWindow {
    pub(crate) fn get(&self, tx_id: &TxId) -> Option<Outcome> {
        let (id, short) = (tx_id.as_str(), InlineTxId::new(tx_id.as_str()));
        self.current.get(id, short.as_ref()).or_else(|| self.previous.get(id, short.as_ref()))
    }

    pub(crate) fn contains(&self, tx_id: &TxId) -> bool {
        self.get(tx_id).is_some()
    }

    /// Turns the generations over if the current one is full. Done before
    /// a transaction is decided, so that its document's dedup floor catches
    /// up with the generation its id will be remembered in.
    pub(crate) fn make_room(&mut self, limits: &Limits) {
        let full = self.current.len() >= limits.tx_dedup_entries_max
            || self.current.rejection_bytes >= limits.tx_dedup_rejection_bytes_max;
        if full {
            self.previous.clear();
            std::mem::swap(&mut self.previous, &mut self.current);
            self.generation += 1;
        }
    }

    /// Remembers a decided id; `make_room` must have been called since the
    /// last insert.
    pub(crate) fn insert(&mut self, tx_id: &TxId, outcome: Outcome) {
        self.current.insert(tx_id.as_str(), outcome);
    }
}
