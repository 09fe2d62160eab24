//! RFC 6902 JSON Patch plus `incr`, applied atomically in place.
//!
//! We apply patches ourselves rather than through the `json-patch` crate
//! because the engine needs three things that crate does not give: the `incr`
//! op, the list of written locations under Concord's array rule (for the
//! version index), and limits checked *before* memory is spent (a chain of
//! `copy` ops doubling a value must fail, not allocate). Cost is proportional
//! to the patch and the values it touches, never to the document: each op
//! records how to undo itself, and a failure replays that log backwards.
//!
//! ## Written locations (the array rule)
//! Each op reports the locations it wrote, which the version index stamps:
//! - `add`/`replace`/`copy`/`incr` of an object member write that member;
//! - appending to an array (index = length, or `-`) writes the new index only,
//!   and removing its last element writes that index only: no other index moves;
//! - inserting or removing anywhere else shifts later elements, so it counts
//!   as a write to the *whole array*;
//! - `move` is a `remove` then an `add`; `test` writes nothing.

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};
use smallvec::SmallVec;

use crate::doc::{JsonTree, Members, Node, NodeMut};
use crate::error::{PatchError, PatchOpError};
use crate::limits::Limits;
use crate::pointer::{parse_array_index, Pointer};

/// One patch operation: the six of RFC 6902 and Concord's `incr`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum PatchOp {
    Add {
        path: Pointer,
        value: Value,
    },
    Remove {
        path: Pointer,
    },
    Replace {
        path: Pointer,
        value: Value,
    },
    Move {
        from: Pointer,
        path: Pointer,
    },
    Copy {
        from: Pointer,
        path: Pointer,
    },
    Test {
        path: Pointer,
        value: Value,
    },
    /// Adds `value` to the number at `path` (creating it when absent). It
    /// reads nothing, so concurrent increments commute and never conflict.
    Incr {
        path: Pointer,
        value: Number,
    },
}

impl PatchOp {
    /// The op's target path.
    pub fn path(&self) -> &Pointer {
        match self {
            PatchOp::Add { path, .. }
            | PatchOp::Remove { path }
            | PatchOp::Replace { path, .. }
            | PatchOp::Move { path, .. }
            | PatchOp::Copy { path, .. }
            | PatchOp::Test { path, .. }
            | PatchOp::Incr { path, .. } => path,
        }
    }

    /// The locations the op writes, as a client's rights see them: its
    /// `path`, and for `move` also its `from` (which it removes); `test`
    /// writes nothing.
    pub fn written(&self) -> impl Iterator<Item = &Pointer> {
        let (first, second) = match self {
            PatchOp::Test { .. } => (None, None),
            PatchOp::Move { from, path } => (Some(from), Some(path)),
            other => (Some(other.path()), None),
        };
        first.into_iter().chain(second)
    }
}

/// A write set: ops applied in order, all or none.
pub type Patch = Vec<PatchOp>;

/// Locations a patch wrote. Most patches write one or two, which then need
/// no allocation.
pub type Writes = SmallVec<[Pointer; 2]>;

/// What a successful application leaves behind: how to undo it, where it
/// wrote, and how much it changed the document's size estimate.
#[derive(Debug)]
pub struct Applied<T = Value> {
    /// Inline for a one-op patch, the commonest: no allocation.
    undo: SmallVec<[Undo<T>; 1]>,
    /// Locations written, under the array rule in the module docs.
    pub writes: Writes,
    /// Change in `encoded_size_estimate` of the document.
    pub size_delta_bytes: i64,
}

impl<T: JsonTree> Applied<T> {
    /// Room for `ops` ops, most of which write one location and log one
    /// undo step: sized once rather than grown.
    fn with_capacity(ops: usize) -> Self {
        let (undo, writes) = (SmallVec::with_capacity(ops), SmallVec::with_capacity(ops));
        Self { undo, writes, size_delta_bytes: 0 }
    }

    /// Reverts the patch this came from. `doc` must be exactly as the patch
    /// left it.
    pub fn undo(self, doc: &mut T) {
        undo_all(doc, self.undo);
    }
}

#[derive(Debug)]
enum Undo<T> {
    /// Put the old value back at an existing location.
    Restore(Pointer, T),
    /// Remove what an `add` inserted.
    Remove(Pointer),
    /// Re-insert what a `remove` took out.
    Insert(Pointer, T),
}

/// Applies `patch` to `doc`, whose size estimate is `doc_size_bytes`.
///
/// On success the document holds the result; on failure it is unchanged and
/// the error names the failing op. `doc` is a replica's `Value` or the
/// store's [`Doc`](crate::Doc): one code path for both.
pub fn apply<T: JsonTree>(
    doc: &mut T,
    doc_size_bytes: usize,
    patch: &[PatchOp],
    limits: &Limits,
) -> Result<Applied<T>, PatchError> {
    let budget = Budget { size_bytes: doc_size_bytes, limits };
    let mut run = Run { doc, applied: Applied::with_capacity(patch.len()), budget };
    for (op_index, op) in patch.iter().enumerate() {
        if let Err(error) = run.op(op) {
            let Run { doc, applied, .. } = run;
            undo_all(doc, applied.undo);
            return Err(PatchError { op_index, error });
        }
    }
    let size_delta_bytes = run.budget.size_bytes as i64 - doc_size_bytes as i64;
    run.applied.size_delta_bytes = size_delta_bytes;
    Ok(run.applied)
}

struct Run<'a, T> {
    doc: &'a mut T,
    applied: Applied<T>,
    budget: Budget<'a>,
}

/// The document's size estimate and the limits it is checked against, kept
/// apart from the document so both can be borrowed at once.
struct Budget<'a> {
    size_bytes: usize,
    limits: &'a Limits,
}

/// What kind of container a slot is in. `encoded_size_estimate` charges an
/// object member its key plus 4 bytes and an array element 1 byte, whatever
/// its index (indices shift, so the charge must not depend on them).
#[derive(Clone, Copy)]
enum Slot<'k> {
    Root,
    Member(&'k str),
    Element,
}

impl Slot<'_> {
    fn bytes(self) -> usize {
        match self {
            Slot::Root => 0,
            Slot::Member(key) => key.len() + 4,
            Slot::Element => 1,
        }
    }
}

impl Budget<'_> {
    fn size_error(&self, added_bytes: usize) -> PatchOpError {
        PatchOpError::SizeExceeded {
            size_bytes: self.size_bytes.saturating_add(added_bytes),
            max_bytes: self.limits.doc_size_bytes_max,
        }
    }

    /// Checks depth and size of a value about to be placed at `path`, and
    /// books its size.
    fn admit<T: JsonTree>(
        &mut self,
        path: &Pointer,
        slot: Slot<'_>,
        value: &T,
    ) -> Result<(), PatchOpError> {
        let depth = path.depth() + value_depth(value);
        if depth > self.limits.json_depth_max {
            let max = self.limits.json_depth_max;
            return Err(PatchOpError::DepthExceeded { path: path.clone(), depth, max });
        }
        let budget = self.limits.doc_size_bytes_max.saturating_sub(self.size_bytes);
        let bytes = encoded_size_estimate(value, budget) + slot.bytes();
        if bytes > budget {
            return Err(self.size_error(bytes));
        }
        self.size_bytes += bytes;
        Ok(())
    }

    fn release<T: JsonTree>(&mut self, slot: Slot<'_>, value: &T) {
        let bytes = encoded_size_estimate(value, usize::MAX) + slot.bytes();
        self.size_bytes = self.size_bytes.saturating_sub(bytes);
    }
}

impl<T: JsonTree> Run<'_, T> {
    fn op(&mut self, op: &PatchOp) -> Result<(), PatchOpError> {
        match op {
            PatchOp::Add { path, value } => self.add(path, T::from_json(value)),
            PatchOp::Remove { path } => self.remove(path).map(drop),
            PatchOp::Replace { path, value } => self.replace(path, T::from_json(value)),
            PatchOp::Move { from, path } => {
                if from == path {
                    return resolve(self.doc, from)
                        .map(drop)
                        .ok_or_else(|| PatchOpError::PathNotFound { path: from.clone() });
                }
                if from.is_prefix_of(path) {
                    let (from, path) = (from.clone(), path.clone());
                    return Err(PatchOpError::MoveIntoChild { from, path });
                }
                let value = self.remove(from)?;
                self.add(path, value)
            }
            PatchOp::Copy { from, path } => {
                let source = resolve(self.doc, from)
                    .ok_or_else(|| PatchOpError::PathNotFound { path: from.clone() })?;
                // Measure before cloning: the size check must come before the memory.
                let budget =
                    self.budget.limits.doc_size_bytes_max.saturating_sub(self.budget.size_bytes);
                let source_bytes = encoded_size_estimate(source, budget);
                if source_bytes > budget {
                    return Err(self.budget.size_error(source_bytes));
                }
                let value = source.clone();
                self.add(path, value)
            }
            PatchOp::Test { path, value } => match resolve(self.doc, path) {
                Some(current) if json_equal(current, value) => Ok(()),
                Some(_) => Err(PatchOpError::TestFailed { path: path.clone() }),
                None => Err(PatchOpError::PathNotFound { path: path.clone() }),
            },
            PatchOp::Incr { path, value } => self.incr(path, value),
        }
    }

    fn add(&mut self, path: &Pointer, value: T) -> Result<(), PatchOpError> {
        let Some((last, parent_tokens)) = path.tokens().split_last() else {
            self.budget.admit(path, Slot::Root, &value)?;
            let old = std::mem::replace(self.doc, value);
            self.budget.release(Slot::Root, &old);
            self.applied.undo.push(Undo::Restore(path.clone(), old));
            self.applied.writes.push(path.clone());
            return Ok(());
        };
        let parent = resolve_tokens_mut(self.doc, parent_tokens)
            .ok_or_else(|| PatchOpError::PathNotFound { path: parent_of(path) })?;
        match parent.node_mut() {
            NodeMut::Object(map) => {
                let slot = Slot::Member(last);
                self.budget.admit(path, slot, &value)?;
                match map.get_mut(last) {
                    Some(existing) => {
                        let old = std::mem::replace(existing, value);
                        self.budget.release(slot, &old);
                        self.applied.undo.push(Undo::Restore(path.clone(), old));
                    }
                    None => {
                        map.insert(last, value);
                        self.applied.undo.push(Undo::Remove(path.clone()));
                    }
                }
                self.applied.writes.push(path.clone());
                Ok(())
            }
            NodeMut::Array(items) => {
                let len = items.len();
                let index = if last == "-" { Some(len) } else { parse_array_index(last) };
                let index = index
                    .filter(|i| *i <= len)
                    .ok_or_else(|| PatchOpError::BadArrayIndex { path: path.clone() })?;
                let at = sibling(path, index);
                self.budget.admit(&at, Slot::Element, &value)?;
                items.insert(index, value);
                self.applied.writes.push(if index == len { at.clone() } else { parent_of(path) });
                self.applied.undo.push(Undo::Remove(at));
                Ok(())
            }
            NodeMut::Scalar => Err(PatchOpError::ParentNotContainer { path: path.clone() }),
        }
    }

    fn remove(&mut self, path: &Pointer) -> Result<T, PatchOpError> {
        let Some((last, parent_tokens)) = path.tokens().split_last() else {
            return Err(PatchOpError::RemoveRoot);
        };
        let not_found = || PatchOpError::PathNotFound { path: path.clone() };
        let parent = resolve_tokens_mut(self.doc, parent_tokens).ok_or_else(not_found)?;
        let (removed, slot, at, write) = match parent.node_mut() {
            NodeMut::Object(map) => {
                let removed = map.remove(last).ok_or_else(not_found)?;
                (removed, Slot::Member(last), path.clone(), path.clone())
            }
            NodeMut::Array(items) => {
                let len = items.len();
                let index = parse_array_index(last)
                    .filter(|i| *i < len)
                    .ok_or_else(|| PatchOpError::BadArrayIndex { path: path.clone() })?;
                let removed = items.remove(index);
                let at = sibling(path, index);
                let write = if index + 1 == len { at.clone() } else { parent_of(path) };
                (removed, Slot::Element, at, write)
            }
            NodeMut::Scalar => return Err(not_found()),
        };
        self.budget.release(slot, &removed);
        self.applied.undo.push(Undo::Insert(at, removed.clone()));
        self.applied.writes.push(write);
        Ok(removed)
    }

    fn replace(&mut self, path: &Pointer, value: T) -> Result<(), PatchOpError> {
        let not_found = || PatchOpError::PathNotFound { path: path.clone() };
        let (target, slot) = match path.tokens().split_last() {
            None => (&mut *self.doc, Slot::Root),
            Some((last, parent_tokens)) => {
                let parent = resolve_tokens_mut(self.doc, parent_tokens).ok_or_else(not_found)?;
                match parent.node_mut() {
                    NodeMut::Object(map) => {
                        (map.get_mut(last).ok_or_else(not_found)?, Slot::Member(last))
                    }
                    NodeMut::Array(items) => {
                        let index = parse_array_index(last).ok_or_else(not_found)?;
                        (items.get_mut(index).ok_or_else(not_found)?, Slot::Element)
                    }
                    NodeMut::Scalar => return Err(not_found()),
                }
            }
        };
        self.budget.admit(path, slot, &value)?;
        let old = std::mem::replace(target, value);
        self.budget.release(slot, &old);
        self.applied.undo.push(Undo::Restore(path.clone(), old));
        self.applied.writes.push(path.clone());
        Ok(())
    }

    fn incr(&mut self, path: &Pointer, delta: &Number) -> Result<(), PatchOpError> {
        let current = match resolve(self.doc, path).map(JsonTree::node) {
            None => return self.add(path, T::from_number(delta.clone())),
            Some(Node::Number(current)) => current,
            Some(_) => return Err(PatchOpError::NotANumber { path: path.clone() }),
        };
        let sum = add_numbers(current, delta)
            .ok_or_else(|| PatchOpError::NumberOverflow { path: path.clone() })?;
        self.replace(path, T::from_number(sum))
    }
}

/// Adds two JSON numbers: exactly when both are integers that fit, as `f64`
/// otherwise; `None` when the result is not a finite number.
pub fn add_numbers(a: &Number, b: &Number) -> Option<Number> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        if let Some(sum) = x.checked_add(y) {
            return Some(sum.into());
        }
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        if let Some(sum) = x.checked_add(y) {
            return Some(sum.into());
        }
    }
    Number::from_f64(a.as_f64()? + b.as_f64()?)
}

/// JSON equality for `test`: numbers compare by value (`1` equals `1.0`).
pub fn json_equal<A: JsonTree, B: JsonTree>(a: &A, b: &B) -> bool {
    match (a.node(), b.node()) {
        (Node::Number(x), Node::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            },
        },
        (Node::Array(x), Node::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Node::Object(x), Node::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        (Node::Null, Node::Null) => true,
        (Node::Bool(x), Node::Bool(y)) => x == y,
        (Node::String(x), Node::String(y)) => x == y,
        _ => false,
    }
}

/// The value at `pointer`, if any.
pub fn resolve<'v, T: JsonTree>(doc: &'v T, pointer: &Pointer) -> Option<&'v T> {
    pointer.tokens().iter().try_fold(doc, |node, token| match node.node() {
        Node::Object(map) => map.get(token),
        Node::Array(items) => items.get(parse_array_index(token)?),
        _ => None,
    })
}

fn resolve_tokens_mut<'v, T: JsonTree>(doc: &'v mut T, tokens: &[String]) -> Option<&'v mut T> {
    tokens.iter().try_fold(doc, |node, token| match node.node_mut() {
        NodeMut::Object(map) => map.get_mut(token),
        NodeMut::Array(items) => items.get_mut(parse_array_index(token)?),
        NodeMut::Scalar => None,
    })
}

fn resolve_mut<'v, T: JsonTree>(doc: &'v mut T, pointer: &Pointer) -> Option<&'v mut T> {
    resolve_tokens_mut(doc, pointer.tokens())
}

fn parent_of(path: &Pointer) -> Pointer {
    path.parent().unwrap_or_default()
}

/// The pointer to index `index` in the same array as `path`.
fn sibling(path: &Pointer, index: usize) -> Pointer {
    parent_of(path).child(index.to_string())
}

fn undo_all<T: JsonTree>(doc: &mut T, undo: SmallVec<[Undo<T>; 1]>) {
    for step in undo.into_iter().rev() {
        let done = match step {
            Undo::Restore(path, old) => resolve_mut(doc, &path).map(|slot| *slot = old).is_some(),
            Undo::Remove(path) => {
                let last = path.last().unwrap_or_default();
                match resolve_mut(doc, &parent_of(&path)).map(JsonTree::node_mut) {
                    Some(NodeMut::Object(map)) => map.remove(last).is_some(),
                    Some(NodeMut::Array(items)) => match parse_array_index(last) {
                        Some(i) if i < items.len() => {
                            items.remove(i);
                            true
                        }
                        _ => false,
                    },
                    _ => false,
                }
            }
            Undo::Insert(path, value) => {
                let last = path.last().unwrap_or_default();
                match resolve_mut(doc, &parent_of(&path)).map(JsonTree::node_mut) {
                    Some(NodeMut::Object(map)) => map.insert(last, value).is_none(),
                    Some(NodeMut::Array(items)) => match parse_array_index(last) {
                        Some(i) if i <= items.len() => {
                            items.insert(i, value);
                            true
                        }
                        _ => false,
                    },
                    _ => false,
                }
            }
        };
        // The undo log is ours: a step that cannot be replayed is a bug.
        debug_assert!(done, "undo log out of step with the document");
    }
}

/// Nesting depth of a value: 0 for a scalar, 1 for a flat array or object.
pub fn value_depth<T: JsonTree>(value: &T) -> usize {
    match value.node() {
        Node::Array(items) => 1 + items.iter().map(value_depth).max().unwrap_or(0),
        Node::Object(map) => 1 + map.iter().map(|(_, v)| value_depth(v)).max().unwrap_or(0),
        _ => 0,
    }
}

/// Approximate encoded size of `value` in bytes, walking at most until the
/// count passes `budget_bytes` (then any number over the budget is returned),
/// so that measuring a huge value costs no more than the budget allows.
pub fn encoded_size_estimate<T: JsonTree>(value: &T, budget_bytes: usize) -> usize {
    // Most writes replace a scalar: size it without allocating a stack.
    if let Some(bytes) = scalar_size_estimate(value) {
        return bytes;
    }
    let mut total = 0usize;
    let mut stack = vec![value];
    while let Some(node) = stack.pop() {
        total += match node.node() {
            Node::Array(items) => {
                stack.extend(items.iter());
                2 + items.len()
            }
            Node::Object(map) => {
                for (key, child) in map.iter() {
                    total += key.len() + 4;
                    stack.push(child);
                }
                2
            }
            _ => scalar_size_estimate(node).unwrap_or(0),
        };
        if total > budget_bytes {
            return total;
        }
    }
    total
}

/// `encoded_size_estimate` of a scalar; `None` for an array or object.
fn scalar_size_estimate<T: JsonTree>(value: &T) -> Option<usize> {
    match value.node() {
        Node::Null | Node::Bool(_) => Some(5),
        Node::Number(_) => Some(8),
        Node::String(s) => Some(s.len() + 2),
        Node::Array(_) | Node::Object(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn patch(ops: Value) -> Patch {
        serde_json::from_value(ops).unwrap()
    }

    fn writes(doc: Value, ops: Value) -> Vec<String> {
        let mut doc = doc;
        let applied = apply(&mut doc, 0, &patch(ops), &Limits::default()).unwrap();
        applied.writes.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn array_rule_appends_and_last_removals_write_one_index() {
        assert_eq!(
            writes(json!({"a": [1, 2]}), json!([{"op": "add", "path": "/a/-", "value": 3}])),
            ["/a/2"]
        );
        assert_eq!(
            writes(json!({"a": [1, 2]}), json!([{"op": "add", "path": "/a/2", "value": 3}])),
            ["/a/2"]
        );
        assert_eq!(
            writes(json!({"a": [1, 2]}), json!([{"op": "remove", "path": "/a/1"}])),
            ["/a/1"]
        );
    }

    #[test]
    fn array_rule_shifts_write_the_whole_array() {
        assert_eq!(
            writes(json!({"a": [1, 2]}), json!([{"op": "add", "path": "/a/0", "value": 0}])),
            ["/a"]
        );
        assert_eq!(writes(json!({"a": [1, 2]}), json!([{"op": "remove", "path": "/a/0"}])), ["/a"]);
    }

    #[test]
    fn incr_creates_adds_and_refuses_non_numbers() {
        let mut doc = json!({"n": 1, "s": "x"});
        let ops = patch(
            json!([{"op": "incr", "path": "/n", "value": 2}, {"op": "incr", "path": "/m", "value": 1.5}]),
        );
        apply(&mut doc, 0, &ops, &Limits::default()).unwrap();
        assert_eq!(doc, json!({"n": 3, "m": 1.5, "s": "x"}));
        let bad = patch(json!([{"op": "incr", "path": "/s", "value": 1}]));
        let error = apply(&mut doc, 0, &bad, &Limits::default()).unwrap_err();
        assert!(matches!(error.error, PatchOpError::NotANumber { .. }));
        let overflow = patch(
            json!([{"op": "incr", "path": "/n", "value": i64::MAX}, {"op": "incr", "path": "/n", "value": u64::MAX}]),
        );
        assert!(apply(&mut doc, 0, &overflow, &Limits::default()).is_ok(), "falls back to f64");
    }

    #[test]
    fn a_failing_op_undoes_everything_before_it() {
        let original = json!({"a": {"b": [1, 2, 3]}, "c": "d"});
        let mut doc = original.clone();
        let ops = patch(json!([
            {"op": "remove", "path": "/a/b/0"},
            {"op": "move", "from": "/c", "path": "/a/e"},
            {"op": "add", "path": "/a/b/-", "value": {"x": 1}},
            {"op": "replace", "path": "", "value": 7},
            {"op": "test", "path": "", "value": 8},
        ]));
        let error = apply(&mut doc, 0, &ops, &Limits::default()).unwrap_err();
        assert_eq!(error.op_index, 4);
        assert_eq!(doc, original);
    }

    #[test]
    fn copy_chains_hit_the_size_limit_before_allocating() {
        let limits = Limits { doc_size_bytes_max: 10_000, ..Limits::default() };
        let mut doc = json!({"a": "x".repeat(1000)});
        let size = encoded_size_estimate(&doc, usize::MAX);
        let mut ops = vec![];
        for i in 0..20 {
            ops.push(PatchOp::Copy {
                from: Pointer::root(),
                path: Pointer::from_tokens([format!("k{i}")]),
            });
        }
        let error = apply(&mut doc, size, &ops, &limits).unwrap_err();
        assert!(matches!(error.error, PatchOpError::SizeExceeded { .. }));
        assert_eq!(doc, json!({"a": "x".repeat(1000)}));
    }

    #[test]
    fn depth_limit_counts_path_and_value() {
        let limits = Limits { json_depth_max: 3, ..Limits::default() };
        let mut doc = json!({"a": {}});
        let deep = patch(json!([{"op": "add", "path": "/a/b", "value": {"c": {"d": 1}}}]));
        assert!(matches!(
            apply(&mut doc, 0, &deep, &limits).unwrap_err().error,
            PatchOpError::DepthExceeded { depth: 4, .. }
        ));
        let ok = patch(json!([{"op": "add", "path": "/a/b", "value": {"c": 1}}]));
        assert!(apply(&mut doc, 0, &ok, &limits).is_ok());
    }

    #[test]
    fn size_accounting_does_not_drift_when_array_elements_shift() {
        let mut doc = json!({"q": vec![0; 100], "o": {}});
        let mut size = encoded_size_estimate(&doc, usize::MAX);
        let cycle = patch(json!([
            {"op": "add", "path": "/q/-", "value": 0},
            {"op": "remove", "path": "/q/0"},
            {"op": "add", "path": "/q/0", "value": [1, 2]},
            {"op": "remove", "path": "/q/100"},
            {"op": "add", "path": "/o/key", "value": "v"},
            {"op": "replace", "path": "/q/3", "value": {"a": 1}},
            {"op": "remove", "path": "/o/key"},
        ]));
        for _ in 0..10 {
            let applied = apply(&mut doc, size, &cycle, &Limits::default()).unwrap();
            size = (size as i64 + applied.size_delta_bytes) as usize;
            assert_eq!(size, encoded_size_estimate(&doc, usize::MAX));
        }
    }

    #[test]
    fn test_compares_numbers_by_value() {
        assert!(json_equal(&json!({"a": [1]}), &json!({"a": [1.0]})));
        assert!(!json_equal(&json!(1), &json!("1")));
    }
}
