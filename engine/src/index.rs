//! The version index: which locations of a document were written when.
//!
//! It answers "was pointer `p`, an ancestor of `p` or a descendant of `p`
//! written after version `b`?" by walking the path to `p` once, so the cost is
//! proportional to the depth of `p`, independent of document size and of
//! history length.
//!
//! The versions live in the document itself (the store's [`Doc`]), so a
//! commit validates and applies against one tree: the nodes validation
//! touches are the nodes the patch then changes, already in cache. Every
//! location keeps `written`, the last commit that wrote the location itself
//! (replacing everything below it), and every container keeps `subtree`, the
//! last commit that wrote it or anything inside it. A read of `p` at base `b`
//! conflicts iff some location on the path to `p` has `written > b` (an
//! ancestor or `p` itself was overwritten) or `p`'s `subtree > b` (something
//! inside `p` changed).
//!
//! Absent locations: creating a location is a write to it, so a read of an
//! absent key conflicts with its creation once it exists. A removed location
//! leaves its removal version in its container (by reference token, so an
//! array element removed from the end is remembered by its index), so a read
//! of it still conflicts with the removal. A read that descends below a
//! scalar or an absent location is covered by the stamps above it.
//!
//! ## Bounded memory
//! Stamps cost 8 bytes per location and 8 per container, bounded by the
//! document size limit. Removals are the only history kept beyond the
//! document, and they are bounded by memory, not by count, since a removed
//! path may be up to 4 KiB long: each costs its encoded length plus
//! [`REMOVED_PATH_OVERHEAD_BYTES`], and when a document's removals cost more
//! than `Limits::removed_paths_bytes_max`, the oldest are forgotten until a
//! quarter of that is free, and the index's *horizon* rises to the newest
//! forgotten removal. A transaction whose base is below the horizon can no
//! longer be validated precisely, so it gets `Stale` (the client resyncs and
//! re-runs), never a wrong answer.

use std::collections::VecDeque;

use crate::doc::{Doc, Stamps};
use crate::ids::Version;
use crate::pointer::Pointer;

/// A conflict found by [`VersionIndex::check_read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadCheck {
    /// Nothing at, above or below the pointer was written after the base.
    Clean,
    /// Something overlapping the pointer was written at this version.
    Overwritten(Version),
    /// The base is older than the history the index keeps.
    Stale { horizon: Version },
}

/// What one remembered removal costs besides its path's encoded length: its
/// queue slot and the path's allocation, and the entry its container keeps.
/// Measured with `engine/examples/removal_memory.rs` (resident memory per
/// removal, paths 1 to 32 tokens deep): 89 to 145 bytes beyond the path.
pub const REMOVED_PATH_OVERHEAD_BYTES: usize = 128;

/// One document's write history at path precision, beyond the stamps kept
/// in the document: its horizon and the removals it remembers.
#[derive(Debug)]
pub struct VersionIndex {
    /// Bases below this can no longer be checked precisely.
    horizon: Version,
    /// Remembered removals, oldest first (versions never decrease), each
    /// path encoded as one string: a `Pointer` keeps every token in its own
    /// allocation, which costs several times as much for a deep path.
    removed: VecDeque<(Version, Box<str>)>,
    /// What `removed` costs, as counted against `removed_bytes_max`.
    removed_bytes: usize,
    /// Compaction threshold, from `Limits::removed_paths_bytes_max`.
    removed_bytes_max: usize,
}

impl VersionIndex {
    /// An index for a document whose history before `horizon` is unknown
    /// (`Version::ZERO` for a new document; the snapshot version on restore).
    /// The document's stamps must be at or below `horizon`.
    pub fn new(horizon: Version, removed_bytes_max: usize) -> Self {
        Self { horizon, removed: VecDeque::new(), removed_bytes: 0, removed_bytes_max }
    }

    pub fn horizon(&self) -> Version {
        self.horizon
    }

    /// Removals remembered.
    pub fn removed_count(&self) -> usize {
        self.removed.len()
    }

    /// What the remembered removals cost, as counted against the limit.
    pub fn removed_bytes(&self) -> usize {
        self.removed_bytes
    }

    /// Was `pointer`, an ancestor or a descendant written after `base`?
    pub fn check_read(&self, doc: &Doc, pointer: &Pointer, base: Version) -> ReadCheck {
        if base < self.horizon {
            return ReadCheck::Stale { horizon: self.horizon };
        }
        let mut node = doc;
        let mut newest = doc.written;
        for token in pointer.tokens() {
            match node.child(token) {
                Ok(child) => {
                    newest = newest.max(child.written);
                    node = child;
                }
                Err(removed) => return verdict(newest.max(removed), base),
            }
        }
        verdict(newest.max(node.subtree()), base)
    }

    /// Records that the commit at `version`, already applied to `doc`, wrote
    /// `pointer`. Versions must be recorded in increasing order.
    pub fn record_write(&mut self, doc: &mut Doc, pointer: &Pointer, version: Version) {
        if stamp_path(doc, pointer, version) {
            let path: Box<str> = pointer.to_string().into();
            self.removed_bytes += removal_cost(&path);
            self.removed.push_back((version, path));
            if self.removed_bytes > self.removed_bytes_max {
                self.compact(doc);
            }
        }
    }

    /// Forgets the oldest removals until a quarter of the limit is free,
    /// keeping at least the newest, and raises the horizon past them.
    fn compact(&mut self, doc: &mut Doc) {
        let keep_bytes = self.removed_bytes_max - self.removed_bytes_max / 4;
        while self.removed_bytes > keep_bytes && self.removed.len() > 1 {
            let Some((version, path)) = self.removed.pop_front() else { break };
            self.removed_bytes -= removal_cost(&path);
            self.horizon = self.horizon.max(version);
            // The path was encoded from a valid pointer, so it parses back.
            if let Ok(pointer) = Pointer::parse(&path) {
                forget_removal(doc, &pointer, self.horizon);
            }
        }
    }
}

/// Stamps `pointer` and its ancestors as written at `version`; true when
/// the location is gone and its container now remembers the removal.
fn stamp_path(doc: &mut Doc, pointer: &Pointer, version: Version) -> bool {
    let Some((last, parents)) = pointer.tokens().split_last() else {
        stamp(doc, version);
        return false;
    };
    // A parent that is gone (or no longer a container) was removed or
    // replaced by a later op of the same commit, whose own write, at this
    // same version, covers everything below it.
    let Some(parent) = descend_mut(doc, parents, |stamps| stamps.subtree = version) else {
        return false;
    };
    let Some((child, stamps)) = parent.child_mut(last) else { return false };
    stamps.subtree = version;
    match child {
        Some(child) => {
            stamp(child, version);
            false
        }
        None => {
            stamps.remember_removed(last, version);
            true
        }
    }
}

/// The node at `tokens`, if it exists, handing `on_the_way` the stamps of
/// each container passed through.
fn descend_mut<'d>(
    doc: &'d mut Doc,
    tokens: &[String],
    mut on_the_way: impl FnMut(&mut Stamps),
) -> Option<&'d mut Doc> {
    let mut node = doc;
    for token in tokens {
        let (child, stamps) = node.child_mut(token)?;
        on_the_way(stamps);
        node = child?;
    }
    Some(node)
}

/// Marks `node` itself written at `version`.
fn stamp(node: &mut Doc, version: Version) {
    node.written = version;
    if let Some(stamps) = node.stamps_mut() {
        stamps.subtree = version;
    }
}

/// Drops the removal of `pointer` from its container, unless a removal
/// after `horizon` replaced it.
fn forget_removal(doc: &mut Doc, pointer: &Pointer, horizon: Version) {
    let Some((last, parents)) = pointer.tokens().split_last() else { return };
    let stamps = descend_mut(doc, parents, |_| {}).and_then(Doc::stamps_mut);
    if let Some(stamps) = stamps {
        stamps.forget_removed(last, horizon);
    }
}

fn removal_cost(path: &str) -> usize {
    path.len() + REMOVED_PATH_OVERHEAD_BYTES
}

fn verdict(newest: Version, base: Version) -> ReadCheck {
    if newest > base {
        ReadCheck::Overwritten(newest)
    } else {
        ReadCheck::Clean
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::limits::Limits;
    use crate::patch::{self, PatchOp};

    fn p(raw: &str) -> Pointer {
        Pointer::parse(raw).unwrap()
    }

    /// A document built from `start`, then one commit per patch (versions
    /// 1, 2, ...), each applied and recorded as the store does.
    struct Indexed {
        doc: Doc,
        index: VersionIndex,
        version: Version,
    }

    impl Indexed {
        fn new(start: Value, removed_bytes_max: usize) -> Self {
            Self {
                doc: Doc::from(&start),
                index: VersionIndex::new(Version::ZERO, removed_bytes_max),
                version: Version::ZERO,
            }
        }

        fn commit(&mut self, ops: Value) -> &mut Self {
            let ops: Vec<PatchOp> = serde_json::from_value(ops).unwrap();
            let applied = patch::apply(&mut self.doc, 0, &ops, &Limits::default()).unwrap();
            self.version = self.version.next();
            for pointer in &applied.writes {
                self.index.record_write(&mut self.doc, pointer, self.version);
            }
            self
        }

        fn check(&self, read: &str, base: u64) -> ReadCheck {
            self.index.check_read(&self.doc, &p(read), Version(base))
        }
    }

    fn shapes() -> Value {
        json!({"shapes": {"a": {"x": 1, "y": 1}, "b": {"x": 5, "y": 5}}, "order": ["a", "b"]})
    }

    #[test]
    fn siblings_never_conflict() {
        let mut board = Indexed::new(shapes(), 10_000);
        board.commit(json!([{"op": "replace", "path": "/shapes/b/x", "value": 6}]));
        assert_eq!(board.check("/shapes/a/x", 0), ReadCheck::Clean);
        assert_eq!(board.check("/shapes/b/y", 0), ReadCheck::Clean);
        assert_eq!(board.check("/order", 0), ReadCheck::Clean);
    }

    #[test]
    fn ancestors_self_and_descendants_conflict() {
        let mut board = Indexed::new(shapes(), 10_000);
        board.commit(json!([{"op": "replace", "path": "/shapes/a", "value": {"x": 2}}]));
        let overwritten = ReadCheck::Overwritten(Version(1));
        assert_eq!(board.check("/shapes/a/x", 0), overwritten);
        assert_eq!(board.check("/shapes/a/y", 0), overwritten, "gone with its parent");
        assert_eq!(board.check("/shapes/a/y/deeper", 0), overwritten);
        assert_eq!(board.check("/shapes/a", 0), overwritten);
        assert_eq!(board.check("/shapes", 0), overwritten);
        assert_eq!(board.check("", 0), overwritten);
        assert_eq!(board.check("/shapes/a/x", 1), ReadCheck::Clean, "base at the write");
        assert_eq!(board.check("/shapes/b", 0), ReadCheck::Clean);
    }

    #[test]
    fn absent_paths_conflict_with_their_creation_and_their_removal() {
        let mut board = Indexed::new(shapes(), 10_000);
        board.commit(json!([{"op": "add", "path": "/shapes/c", "value": {"x": 0}}]));
        assert_eq!(board.check("/shapes/c", 0), ReadCheck::Overwritten(Version(1)));
        assert_eq!(board.check("/shapes/c/x", 0), ReadCheck::Overwritten(Version(1)));
        assert_eq!(board.check("/shapes/d", 0), ReadCheck::Clean);
        board.commit(json!([{"op": "remove", "path": "/shapes/c"}]));
        assert_eq!(board.check("/shapes/c", 1), ReadCheck::Overwritten(Version(2)));
        assert_eq!(board.check("/shapes/c/x", 1), ReadCheck::Overwritten(Version(2)));
        assert_eq!(board.check("/shapes/c", 2), ReadCheck::Clean);
        assert_eq!(board.check("/shapes/a", 1), ReadCheck::Clean, "a sibling of the removed");
        assert_eq!(board.index.removed_count(), 1);
    }

    #[test]
    fn a_scalar_read_through_conflicts_only_with_writes_above() {
        let mut board = Indexed::new(json!({"n": 1, "m": 1}), 10_000);
        board.commit(json!([{"op": "replace", "path": "/m", "value": 2}]));
        assert_eq!(board.check("/n/inside", 0), ReadCheck::Clean);
        assert_eq!(board.check("/m/inside", 0), ReadCheck::Overwritten(Version(1)));
    }

    #[test]
    fn arrays_follow_the_array_rule() {
        let mut board = Indexed::new(shapes(), 10_000);
        board.commit(json!([{"op": "add", "path": "/order/-", "value": "c"}]));
        assert_eq!(board.check("/order/0", 0), ReadCheck::Clean, "an append shifts nothing");
        assert_eq!(board.check("/order/2", 0), ReadCheck::Overwritten(Version(1)));
        board.commit(json!([{"op": "remove", "path": "/order/2"}]));
        assert_eq!(board.check("/order/1", 1), ReadCheck::Clean, "the last removed shifts nothing");
        assert_eq!(board.check("/order/2", 1), ReadCheck::Overwritten(Version(2)));
        board.commit(json!([{"op": "add", "path": "/order/0", "value": "z"}]));
        assert_eq!(board.check("/order/1", 2), ReadCheck::Overwritten(Version(3)), "an insert");
        assert_eq!(board.check("/shapes", 2), ReadCheck::Clean);
    }

    #[test]
    fn a_move_writes_both_ends() {
        let mut board = Indexed::new(shapes(), 10_000);
        board.commit(json!([{"op": "move", "from": "/shapes/a", "path": "/shapes/c"}]));
        assert_eq!(board.check("/shapes/a/x", 0), ReadCheck::Overwritten(Version(1)));
        assert_eq!(board.check("/shapes/c/x", 0), ReadCheck::Overwritten(Version(1)));
        assert_eq!(board.check("/shapes/b/x", 0), ReadCheck::Clean);
    }

    #[test]
    fn a_write_under_a_parent_removed_later_in_the_same_commit_is_covered_by_the_removal() {
        let mut board = Indexed::new(shapes(), 10_000);
        board.commit(json!([
            {"op": "replace", "path": "/shapes/a/x", "value": 9},
            {"op": "remove", "path": "/shapes/a"}
        ]));
        assert_eq!(board.check("/shapes/a/x", 0), ReadCheck::Overwritten(Version(1)));
        assert_eq!(board.check("/shapes/b/x", 0), ReadCheck::Clean);
    }

    #[test]
    fn compaction_bounds_removals_and_makes_old_bases_stale() {
        // A path "/k1" to "/k5000" costs 3 to 6 + 128 bytes: 74 to 76 fit.
        let mut board = Indexed::new(json!({}), 10_000);
        for v in 1..=5_000u64 {
            let key = format!("/k{v}");
            board.commit(json!([{"op": "add", "path": key, "value": v}]));
            board.commit(json!([{"op": "remove", "path": key}]));
            assert!(board.index.removed_bytes() <= 10_000);
            assert!(board.index.removed_count() <= 76);
        }
        assert!(board.index.removed_count() >= 55, "compaction keeps three quarters");
        assert!(board.index.horizon() > Version(9_000));
        assert!(matches!(board.check("/k1", 1), ReadCheck::Stale { .. }));
        assert_eq!(board.check("/k5000", 9_999), ReadCheck::Overwritten(Version(10_000)));
        assert_eq!(board.check("/k1", 9_999), ReadCheck::Clean);
        // Forgotten removals leave their containers too.
        let forgotten = (1..=5_000)
            .filter(|k| board.doc.stamps().unwrap().removed_at(&format!("k{k}")) > Version::ZERO);
        assert!(forgotten.count() <= 76);
    }

    #[test]
    fn long_removed_paths_are_forgotten_sooner_so_memory_stays_bounded() {
        // Each removed path here is over 1,000 bytes long: the same budget
        // remembers at most eight of them, not 74.
        let mut board = Indexed::new(json!({}), 10_000);
        let long = "x".repeat(1_000);
        for v in 1..=200u64 {
            let key = format!("/{long}{v}");
            board.commit(json!([{"op": "add", "path": key, "value": v}]));
            board.commit(json!([{"op": "remove", "path": key}]));
            assert!(board.index.removed_bytes() <= 10_000);
        }
        assert!((6..=8).contains(&board.index.removed_count()), "{}", board.index.removed_count());
        let newest = format!("/{long}200");
        assert_eq!(board.check(&newest, 399), ReadCheck::Overwritten(Version(400)));
        assert!(matches!(board.check(&newest, 300), ReadCheck::Stale { .. }));
    }

    #[test]
    fn forgetting_a_removal_keeps_a_later_removal_of_the_same_location() {
        let mut board = Indexed::new(json!({}), 1);
        board.commit(json!([{"op": "add", "path": "/k", "value": 1}]));
        board.commit(json!([{"op": "remove", "path": "/k"}]));
        board.commit(json!([{"op": "add", "path": "/k", "value": 2}]));
        // The second removal pushes the first out: the horizon rises to 2.
        board.commit(json!([{"op": "remove", "path": "/k"}]));
        assert_eq!(board.index.horizon(), Version(2));
        assert_eq!(board.index.removed_count(), 1);
        assert_eq!(board.check("/k", 1), ReadCheck::Stale { horizon: Version(2) });
        assert_eq!(board.check("/k", 3), ReadCheck::Overwritten(Version(4)));
    }
}
