//! Every bound that client input can push against, in one documented place.
//!
//! The defaults are deliberately tight; the server exposes each as a flag.
//! Related limits are checked against each other at compile time.

use serde::{Deserialize, Serialize};

/// Most ops in one transaction's write set.
pub const PATCH_OPS_MAX: usize = 1_000;
/// Most pointers in one transaction's read set.
pub const READ_SET_POINTERS_MAX: usize = 1_000;
/// Deepest nesting a document may reach (root members are depth 1).
pub const JSON_DEPTH_MAX: usize = 64;
/// Largest a document may grow to after a patch, as approximate encoded bytes.
pub const DOC_SIZE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Transaction ids the store always remembers for duplicate detection (it
/// keeps two generations of this many, so it may remember up to twice as many).
pub const TX_DEDUP_ENTRIES_MAX: usize = 100_000;
/// Most memory the rejections remembered in one generation of the dedup
/// window may take, explanations included (a conflict lists up to 16
/// pointers of up to 4 KiB). A generation that reaches it turns over early:
/// ids are then forgotten sooner, which the dedup floor makes safe (a
/// forgotten id resubmitted gets `outcome_unknown`, never a second commit).
pub const TX_DEDUP_REJECTION_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most memory one document's remembered removals may take (so that reads
/// of removed locations still conflict with their removal), counted as each
/// removed path's encoded length plus `REMOVED_PATH_OVERHEAD_BYTES`; past it
/// the oldest are forgotten and bases before them become `stale`. As much as
/// the document itself may take, so a document's history never outweighs it.
pub const REMOVED_PATHS_BYTES_MAX: usize = DOC_SIZE_BYTES_MAX;

// serde_json refuses input nested deeper than 128 levels; our own depth limit
// must sit below that so the limit, not the parser, gives the answer.
const _: () = assert!(JSON_DEPTH_MAX < 128);
const _: () = assert!(PATCH_OPS_MAX >= 100 && READ_SET_POINTERS_MAX >= 100);

/// The limits a store enforces. `Limits::default()` gives the constants above.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub patch_ops_max: usize,
    pub read_set_pointers_max: usize,
    pub json_depth_max: usize,
    pub doc_size_bytes_max: usize,
    pub tx_dedup_entries_max: usize,
    pub tx_dedup_rejection_bytes_max: usize,
    pub removed_paths_bytes_max: usize,
}

impl Limits {
    /// The constants above; also `Limits::default()`, usable in constants.
    pub const DEFAULT: Limits = Limits {
        patch_ops_max: PATCH_OPS_MAX,
        read_set_pointers_max: READ_SET_POINTERS_MAX,
        json_depth_max: JSON_DEPTH_MAX,
        doc_size_bytes_max: DOC_SIZE_BYTES_MAX,
        tx_dedup_entries_max: TX_DEDUP_ENTRIES_MAX,
        tx_dedup_rejection_bytes_max: TX_DEDUP_REJECTION_BYTES_MAX,
        removed_paths_bytes_max: REMOVED_PATHS_BYTES_MAX,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}
