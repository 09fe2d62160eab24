//! A transaction and what becomes of it: the types that cross the wire and
//! the log. A client submits a [`Transaction`]; the store answers with a
//! [`Change`] to log and broadcast, or a [`Rejection`] that explains itself;
//! the dedup window remembers either as the tx id's [`Outcome`].
//!
//! They are plain data (serde, no behaviour beyond describing themselves),
//! so the replica, the server, the bench and the fuzz targets share them
//! without depending on the store.

use serde::{Deserialize, Serialize};

use crate::error::PatchError;
use crate::ids::{DocId, TxId, Version};
use crate::patch::Patch;
use crate::pointer::Pointer;

/// A transaction as submitted: reads taken at `base`, writes as a patch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub doc: DocId,
    pub tx_id: TxId,
    pub base: Version,
    #[serde(default)]
    pub reads: Vec<Pointer>,
    #[serde(default)]
    pub writes: Patch,
}

/// A committed change: what is logged and broadcast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub doc: DocId,
    pub version: Version,
    pub tx_id: TxId,
    pub patch: Patch,
}

/// One read that a later commit invalidated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The read pointer.
    pub pointer: Pointer,
    /// The commit that overwrote it (or an ancestor or descendant of it).
    pub version: Version,
    /// That commit's transaction id, when still remembered.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tx_id: Option<TxId>,
}

/// Why a transaction did not commit. Every variant explains itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Rejection {
    /// Reads were overwritten after the base: resync and re-run.
    #[error("read conflict on {conflicts_total} pointer(s)")]
    Conflict { conflicts: Vec<Conflict>, conflicts_total: usize },
    /// The base is older than the history kept for validation: resync and
    /// re-run.
    #[error("base {base} is older than the validation horizon {horizon}")]
    Stale { base: Version, horizon: Version },
    /// The base is newer than the document: the client is confused.
    #[error("base {base} is ahead of the document at {current}")]
    BaseAhead { base: Version, current: Version },
    /// The patch did not apply cleanly; the document is unchanged.
    #[error("{0}")]
    Patch(PatchError),
    /// The transaction is larger than the limits allow.
    #[error("{what} is {len}, over the limit of {max}")]
    TooLarge { what: TooLargePart, len: usize, max: usize },
    /// The tx id is not in the dedup window, and its base is older than
    /// `floor`: commits up to `floor` have had their ids forgotten, so this
    /// may be a resubmission of one of them, and committing it could commit
    /// it twice. Nothing changed. A first submission resyncs and re-runs (as
    /// `Stale`); a resubmission's outcome is unknown and is the
    /// application's to decide.
    #[error("tx id not remembered and base {base} is older than the dedup floor {floor}")]
    OutcomeUnknown { base: Version, floor: Version },
    /// The session may not write what op `op_index` writes (`pointer`):
    /// the document is read-only for it, the location is outside its write
    /// scopes, or it is a server-only path. Nothing changed; re-running
    /// will not help.
    #[error("forbidden: op {op_index} writes {pointer}: {message}")]
    Forbidden { op_index: usize, pointer: Pointer, message: String },
    /// The document after the patch breaks the schema for `pointer`.
    /// Nothing changed.
    #[error("invalid: {pointer}: {message}")]
    Invalid { pointer: Pointer, message: String },
    /// A guard of the server's application refused the commit. Nothing
    /// changed.
    #[error("vetoed: {message}")]
    Vetoed { message: String },
}

impl Rejection {
    /// About how much memory this rejection takes, explanation included.
    pub fn memory_estimate_bytes(&self) -> usize {
        let heap = match self {
            Rejection::Conflict { conflicts, .. } => conflicts
                .iter()
                .map(|conflict| {
                    let author = conflict.tx_id.as_ref().map_or(0, |id| 16 + id.as_str().len());
                    size_of::<Conflict>() + conflict.pointer.heap_bytes_estimate() + author
                })
                .sum(),
            Rejection::Patch(error) => {
                error.error.pointers().map(Pointer::heap_bytes_estimate).sum()
            }
            Rejection::Forbidden { pointer, message, .. }
            | Rejection::Invalid { pointer, message } => {
                pointer.heap_bytes_estimate() + message.len()
            }
            Rejection::Vetoed { message } => message.len(),
            Rejection::Stale { .. }
            | Rejection::BaseAhead { .. }
            | Rejection::TooLarge { .. }
            | Rejection::OutcomeUnknown { .. } => 0,
        };
        size_of::<Rejection>() + heap
    }

    /// The rejection's `reason` as it is serialised: a short stable label
    /// (metrics).
    pub fn reason(&self) -> &'static str {
        match self {
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

    /// True when re-running the transaction on a fresh replica may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Rejection::Conflict { .. } | Rejection::Stale { .. } | Rejection::Patch(_))
    }
}

/// Which part of a transaction broke a size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TooLargePart {
    ReadSet,
    Patch,
}

impl std::fmt::Display for TooLargePart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TooLargePart::ReadSet => "read set",
            TooLargePart::Patch => "patch",
        })
    }
}

/// The final word on a transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Committed { version: Version },
    Rejected { rejection: Rejection },
}
