//! The version index: per document, which locations were written when.
//!
//! It answers "was pointer `p`, an ancestor of `p` or a descendant of `p`
//! written after version `b`?" by walking one trie path, so the cost is
//! proportional to the depth of `p`, independent of document size and of
//! history length.
//!
//! Each trie node is a location (a sequence of reference tokens) and keeps two
//! versions: `written`, the last commit that wrote the location itself
//! (replacing everything below it), and `subtree`, the last commit that wrote
//! it or anything below it. A read of `p` at base `b` conflicts iff some node
//! on the path to `p` has `written > b` (an ancestor or `p` itself was
//! overwritten) or the node of `p` has `subtree > b` (something inside `p`
//! changed). Absent locations need nothing special: creating a location is a
//! write to it, so a read of an absent key conflicts with its creation.
//!
//! ## Bounded memory
//! A write to `p` drops the nodes below `p`: `p`'s own `written` now covers
//! every read of them. Beyond that, when a document's trie passes
//! `Limits::index_nodes_max` nodes, the index raises its *horizon* (halving
//! the span of history it remembers) and prunes every node whose `subtree` is
//! at or below the horizon. A transaction whose base is below the horizon can
//! no longer be validated precisely, so it gets `Stale` — the client resyncs
//! and re-runs — never a wrong answer.

use compact_str::CompactString;
use foldhash::fast::RandomState;
use hashbrown::HashMap;

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

#[derive(Debug, Default)]
struct Node {
    written: Version,
    subtree: Version,
    /// Keyed inline (up to 24 bytes): a lookup compares keys without
    /// following a pointer, and making an owned key allocates nothing.
    children: HashMap<CompactString, Node, RandomState>,
}

impl Node {
    fn count(&self) -> usize {
        1 + self.children.values().map(Node::count).sum::<usize>()
    }

    /// Removes children whose whole subtree is at or below `horizon`;
    /// returns how many nodes went.
    fn prune(&mut self, horizon: Version) -> usize {
        let mut removed = 0;
        self.children.retain(|_, child| {
            if child.subtree <= horizon {
                removed += child.count();
                false
            } else {
                removed += child.prune(horizon);
                true
            }
        });
        removed
    }
}

/// One document's write history, at path precision.
#[derive(Debug)]
pub struct VersionIndex {
    root: Node,
    /// Bases below this can no longer be checked precisely.
    horizon: Version,
    /// Nodes in the trie, the root included.
    node_count: usize,
    /// Compaction threshold, from `Limits::index_nodes_max`.
    node_count_max: usize,
}

impl VersionIndex {
    /// An index for a document whose history before `horizon` is unknown
    /// (`Version::ZERO` for a new document; the snapshot version on restore).
    pub fn new(horizon: Version, node_count_max: usize) -> Self {
        let root = Node { written: horizon, subtree: horizon, children: HashMap::default() };
        Self { root, horizon, node_count: 1, node_count_max: node_count_max.max(1) }
    }

    pub fn horizon(&self) -> Version {
        self.horizon
    }

    pub fn node_count(&self) -> usize {
        self.node_count
    }

    /// Was `pointer`, an ancestor or a descendant written after `base`?
    pub fn check_read(&self, pointer: &Pointer, base: Version) -> ReadCheck {
        if base < self.horizon {
            return ReadCheck::Stale { horizon: self.horizon };
        }
        let mut node = &self.root;
        let mut newest = Version::ZERO;
        for token in pointer.tokens() {
            newest = newest.max(node.written);
            match node.children.get(token.as_str()) {
                Some(child) => node = child,
                None => return verdict(newest, base),
            }
        }
        verdict(newest.max(node.subtree), base)
    }

    /// Records that the commit at `version` wrote `pointer`. Versions must be
    /// recorded in increasing order.
    pub fn record_write(&mut self, pointer: &Pointer, version: Version) {
        debug_assert!(version >= self.root.subtree, "writes recorded out of order");
        let mut node = &mut self.root;
        let mut created = 0;
        for token in pointer.tokens() {
            node.subtree = version;
            // The key is built only for a new node.
            node = node.children.entry_ref(token.as_str()).or_insert_with(|| {
                created += 1;
                Node::default()
            });
        }
        node.written = version;
        node.subtree = version;
        let mut dropped = 0;
        if !node.children.is_empty() {
            dropped = node.children.values().map(Node::count).sum();
            node.children = HashMap::default();
        }
        self.node_count = self.node_count + created - dropped;
        if self.node_count > self.node_count_max {
            self.compact(version);
        }
    }

    /// Raises the horizon, halving the remembered span each round, until the
    /// trie is back under three quarters of its limit.
    fn compact(&mut self, current: Version) {
        let target = self.node_count_max / 4 * 3;
        while self.node_count > target && self.horizon < current {
            let span = current.0 - self.horizon.0;
            self.horizon = Version(current.0 - span / 2);
            self.node_count -= self.root.prune(self.horizon);
        }
    }
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
    use super::*;

    fn p(raw: &str) -> Pointer {
        Pointer::parse(raw).unwrap()
    }

    fn index_with(writes: &[(&str, u64)]) -> VersionIndex {
        let mut index = VersionIndex::new(Version::ZERO, 1_000);
        for (pointer, version) in writes {
            index.record_write(&p(pointer), Version(*version));
        }
        index
    }

    fn check(writes: &[(&str, u64)], read: &str, base: u64) -> ReadCheck {
        index_with(writes).check_read(&p(read), Version(base))
    }

    #[test]
    fn siblings_never_conflict() {
        assert_eq!(check(&[("/shapes/b/x", 5)], "/shapes/a/x", 1), ReadCheck::Clean);
        assert_eq!(check(&[("/shapes/a/y", 5)], "/shapes/a/x", 1), ReadCheck::Clean);
    }

    #[test]
    fn ancestors_self_and_descendants_conflict() {
        let writes = [("/shapes/a", 5)];
        assert_eq!(check(&writes, "/shapes/a/x", 1), ReadCheck::Overwritten(Version(5)));
        assert_eq!(check(&writes, "/shapes/a", 1), ReadCheck::Overwritten(Version(5)));
        assert_eq!(check(&writes, "/shapes", 1), ReadCheck::Overwritten(Version(5)));
        assert_eq!(check(&writes, "", 1), ReadCheck::Overwritten(Version(5)));
        assert_eq!(check(&writes, "/shapes/a/x", 5), ReadCheck::Clean, "base at the write");
    }

    #[test]
    fn absent_paths_conflict_with_their_creation() {
        assert_eq!(check(&[("/new", 2)], "/new", 1), ReadCheck::Overwritten(Version(2)));
        assert_eq!(check(&[("/new", 2)], "/new/deeper", 1), ReadCheck::Overwritten(Version(2)));
        assert_eq!(check(&[("/new", 2)], "/other", 1), ReadCheck::Clean);
    }

    #[test]
    fn a_write_supersedes_what_lies_below_it() {
        let index = index_with(&[("/a/b/c", 1), ("/a/b/d", 2), ("/a", 3)]);
        assert_eq!(index.node_count(), 2, "root and /a");
        assert_eq!(index.check_read(&p("/a/b/c"), Version(2)), ReadCheck::Overwritten(Version(3)));
    }

    #[test]
    fn compaction_bounds_nodes_and_makes_old_bases_stale() {
        let mut index = VersionIndex::new(Version::ZERO, 100);
        for v in 1..=10_000u64 {
            index.record_write(&p(&format!("/k{v}")), Version(v));
            assert!(index.node_count() <= 100);
        }
        assert!(index.horizon() > Version(9_000));
        assert!(matches!(index.check_read(&p("/k1"), Version(1)), ReadCheck::Stale { .. }));
        assert_eq!(
            index.check_read(&p("/k10000"), Version(9_999)),
            ReadCheck::Overwritten(Version(10_000))
        );
        assert_eq!(index.check_read(&p("/k1"), Version(9_999)), ReadCheck::Clean);
    }
}
