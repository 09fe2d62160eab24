//! The store's document representation, and the one interface the patch code
//! needs from a JSON tree.
//!
//! `serde_json::Value` keeps an object's members in a `BTreeMap<String, _>`:
//! finding one member among 10,000 compares the key with about 25 others,
//! each a separate heap string, so nearly every comparison is a cache miss.
//! That descent was half the misses of a commit (docs/benchmarks.md, "Second
//! round"). [`Doc`] keeps a small object's members (up to eight) in the
//! object's own allocation, after its stamps, and finds one through a byte of
//! each key kept in the object's header: one pointer from the parent to the
//! header, then the member. A larger object keeps them in a hash map whose keys
//! are stored inline when short (up to 24 bytes) next to their values, so a
//! lookup is one hash, one probe of the control bytes and one bucket, at any
//! object size. (An `IndexMap` adds an index array between the two: one more
//! dependent cache miss per level, docs/benchmarks.md "Fifth round"; a small
//! object in a hash map pays the table's two, "Seventh round".)
//!
//! Only the server's store holds a `Doc`; replicas and everything on the wire
//! stay `serde_json::Value`. Both implement [`JsonTree`], so `patch::apply`,
//! the size estimate and `test`'s equality are one code path for both.
//!
//! An object's members are in no particular order (the hash map's), and may
//! serialize in a different order on another server or after a restart. JSON
//! objects are unordered, so nothing may depend on member order.

use std::fmt;

use compact_str::CompactString;
use foldhash::fast::RandomState;
use hashbrown::HashMap;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Number, Value};

use crate::ids::Version;
use crate::pointer::{parse_array_index, Pointer};

/// A borrowed view of one JSON node.
#[derive(Debug)]
pub enum Node<'a, T: JsonTree> {
    Null,
    Bool(bool),
    Number(&'a Number),
    String(&'a str),
    Array(&'a [T]),
    Object(&'a T::Members),
}

/// A mutable view of one JSON node: the patch code only ever changes
/// containers in place (scalars are replaced whole).
#[derive(Debug)]
pub enum NodeMut<'a, T: JsonTree> {
    Array(&'a mut Vec<T>),
    Object(&'a mut T::Members),
    Scalar,
}

/// A JSON object's members.
pub trait Members<T: 'static>: fmt::Debug {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn get(&self, key: &str) -> Option<&T>;
    fn get_mut(&mut self, key: &str) -> Option<&mut T>;
    /// Sets `key` to `value`; returns the value it replaced.
    fn insert(&mut self, key: &str, value: T) -> Option<T>;
    fn remove(&mut self, key: &str) -> Option<T>;
    fn iter(&self) -> impl Iterator<Item = (&str, &T)>;
}

/// A JSON tree the patch code can read and change in place.
pub trait JsonTree: Clone + fmt::Debug + Sized + 'static {
    type Members: Members<Self>;
    fn node(&self) -> Node<'_, Self>;
    fn node_mut(&mut self) -> NodeMut<'_, Self>;
    /// This tree's copy of a value from the wire.
    fn from_json(value: &Value) -> Self;
    fn from_number(number: Number) -> Self;
}

impl Members<Value> for Map<String, Value> {
    fn len(&self) -> usize {
        Map::len(self)
    }
    fn get(&self, key: &str) -> Option<&Value> {
        Map::get(self, key)
    }
    fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        Map::get_mut(self, key)
    }
    fn insert(&mut self, key: &str, value: Value) -> Option<Value> {
        Map::insert(self, key.to_owned(), value)
    }
    fn remove(&mut self, key: &str) -> Option<Value> {
        Map::remove(self, key)
    }
    fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        Map::iter(self).map(|(key, value)| (key.as_str(), value))
    }
}

impl JsonTree for Value {
    type Members = Map<String, Value>;

    fn node(&self) -> Node<'_, Self> {
        match self {
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Bool(*b),
            Value::Number(n) => Node::Number(n),
            Value::String(s) => Node::String(s),
            Value::Array(items) => Node::Array(items),
            Value::Object(members) => Node::Object(members),
        }
    }

    fn node_mut(&mut self) -> NodeMut<'_, Self> {
        match self {
            Value::Array(items) => NodeMut::Array(items),
            Value::Object(members) => NodeMut::Object(members),
            _ => NodeMut::Scalar,
        }
    }

    fn from_json(value: &Value) -> Self {
        value.clone()
    }

    fn from_number(number: Number) -> Self {
        Value::Number(number)
    }
}

/// A JSON document as the store holds it. See the module docs for why it is
/// not a `serde_json::Value`; convert with `Doc::from(&value)` and
/// [`Doc::to_value`].
///
/// Each node also carries its version stamps (see [`crate::index`]): the
/// store validates reads against the very tree it applies patches to, so a
/// commit descends one tree, not a document and a separate index. Stamps
/// are bookkeeping, not content: equality, serialisation and `to_value`
/// ignore them.
#[derive(Debug, Clone, Default)]
pub struct Doc {
    node: DocNode,
    /// The last commit that wrote this location itself (replacing everything
    /// below it); `Version::ZERO` when that was at or before the index's
    /// horizon.
    pub(crate) written: Version,
}

#[derive(Debug, Clone, Default, PartialEq)]
enum DocNode {
    #[default]
    Null,
    Bool(bool),
    Number(Number),
    String(CompactString),
    /// Containers are boxed so that a node is 24 bytes (the tag sits in a
    /// niche of `CompactString`) and a `Doc`, with its stamp, 32: an object
    /// member's bucket (key, value) is then 56 bytes, within a cache line.
    Array(Box<DocArray>),
    Object(DocObject),
}

/// An array's elements and its stamps.
#[derive(Debug, Clone, Default)]
struct DocArray {
    items: Vec<Doc>,
    stamps: Stamps,
}

/// Most members an object keeps in its own allocation; one more moves them
/// all to a hash map.
const INLINE_MEMBERS_MAX: usize = 8;

/// A hashed object that shrinks to this many members moves them back inline.
const INLINE_MEMBERS_BACK_MAX: usize = INLINE_MEMBERS_MAX / 2;

/// An object member: its key (inline up to 24 bytes) and its value.
type Member = (CompactString, Doc);

type HashedMembers = HashMap<CompactString, Doc, RandomState>;

/// An object's stamps and members, in one allocation. A small object keeps
/// its members in `inline`, right after the header (found as below): the
/// parent's pointer leads straight to them, where a hash map's members are
/// two dependent loads further on (its table's control bytes, then the
/// bucket), each a cache miss on a large document (docs/benchmarks.md,
/// "Seventh round"). Past `INLINE_MEMBERS_MAX` members, they move to
/// `hashed`, and come back when they are down to half that. At most one of
/// the two holds members.
///
/// A search of the inline members reads `fingerprints` first, one byte
/// per member in the header, and compares only the keys whose fingerprint
/// matches: it touches the header and the member found, not every member
/// before it (a shape's `x` is its fourth, after `color`, `h` and `w`),
/// and calls `memcmp` about once (docs/benchmarks.md, "Eighth round").
#[derive(Debug)]
struct ObjectOf<M: ?Sized> {
    stamps: Stamps,
    hashed: HashedMembers,
    /// `fingerprint` of each inline member's key, in order; the rest 0.
    fingerprints: [u8; INLINE_MEMBERS_MAX],
    inline: M,
}

/// A byte that two different keys are unlikely to share: their length,
/// first and last bytes mixed. Equal keys always share it.
fn fingerprint(key: &str) -> u8 {
    match key.as_bytes() {
        [] => 0,
        [first, .., last] | [first @ last] => {
            (key.len() as u8) ^ first.wrapping_mul(3) ^ last.rotate_left(3)
        }
    }
}

impl ObjectOf<[Member]> {
    /// Where the inline member `key` is.
    fn inline_position(&self, key: &str) -> Option<usize> {
        let wanted = fingerprint(key);
        // The key's load is skipped unless its fingerprint matches.
        (self.fingerprints.iter().zip(&self.inline))
            .position(|(&found, (k, _))| found == wanted && k.as_str() == key)
    }
}

/// An object node: a box sized to its inline members (a fat pointer, whose
/// length is their count). Adding or removing an inline member builds a new
/// box, moving the members over: at most `INLINE_MEMBERS_MAX` of them.
#[derive(Debug)]
pub struct DocObject(Box<ObjectOf<[Member]>>);

impl Default for DocObject {
    fn default() -> Self {
        DocObject::build(Stamps::default(), HashedMembers::default(), Vec::new())
    }
}

impl Clone for DocObject {
    fn clone(&self) -> Self {
        let object = &self.0;
        DocObject::build(object.stamps.clone(), object.hashed.clone(), object.inline.to_vec())
    }
}

impl DocObject {
    /// An object of these parts; more than `INLINE_MEMBERS_MAX` inline
    /// members go to the hash map.
    fn build(stamps: Stamps, hashed: HashedMembers, inline: Vec<Member>) -> Self {
        DocObject(match inline.len() {
            0 => Self::boxed::<0>(stamps, hashed, inline),
            1 => Self::boxed::<1>(stamps, hashed, inline),
            2 => Self::boxed::<2>(stamps, hashed, inline),
            3 => Self::boxed::<3>(stamps, hashed, inline),
            4 => Self::boxed::<4>(stamps, hashed, inline),
            5 => Self::boxed::<5>(stamps, hashed, inline),
            6 => Self::boxed::<6>(stamps, hashed, inline),
            7 => Self::boxed::<7>(stamps, hashed, inline),
            8 => Self::boxed::<8>(stamps, hashed, inline),
            _ => Self::all_hashed(stamps, hashed, inline),
        })
    }

    fn boxed<const N: usize>(
        stamps: Stamps,
        hashed: HashedMembers,
        inline: Vec<Member>,
    ) -> Box<ObjectOf<[Member]>> {
        match <[Member; N]>::try_from(inline) {
            Ok(inline) => {
                let mut fingerprints = [0; INLINE_MEMBERS_MAX];
                for (fingerprint_of, (key, _)) in fingerprints.iter_mut().zip(&inline) {
                    *fingerprint_of = fingerprint(key);
                }
                Box::new(ObjectOf { stamps, hashed, fingerprints, inline })
            }
            // `build` matched the length; a mismatch still loses nothing.
            Err(inline) => Self::all_hashed(stamps, hashed, inline),
        }
    }

    fn all_hashed(
        stamps: Stamps,
        mut hashed: HashedMembers,
        inline: Vec<Member>,
    ) -> Box<ObjectOf<[Member]>> {
        hashed.extend(inline);
        Box::new(ObjectOf { stamps, hashed, fingerprints: [0; INLINE_MEMBERS_MAX], inline: [] })
    }

    /// Moves the parts out, leaving an empty object behind.
    fn take_parts(&mut self) -> (Stamps, HashedMembers, Vec<Member>) {
        let object = &mut *self.0;
        let mut inline = Vec::with_capacity(object.inline.len() + 1);
        inline.extend(object.inline.iter_mut().map(std::mem::take));
        (std::mem::take(&mut object.stamps), std::mem::take(&mut object.hashed), inline)
    }

    fn stamps(&self) -> &Stamps {
        &self.0.stamps
    }

    fn stamps_mut(&mut self) -> &mut Stamps {
        &mut self.0.stamps
    }

    fn member(&self, key: &str) -> Option<&Doc> {
        let object = &*self.0;
        if object.hashed.is_empty() {
            let index = object.inline_position(key)?;
            object.inline.get(index).map(|(_, value)| value)
        } else {
            object.hashed.get(key)
        }
    }

    /// The member `key` and, either way, the object's stamps.
    fn member_mut(&mut self, key: &str) -> (Option<&mut Doc>, &mut Stamps) {
        let object = &mut *self.0;
        let member = if object.hashed.is_empty() {
            let index = object.inline_position(key);
            index.and_then(|index| object.inline.get_mut(index)).map(|(_, value)| value)
        } else {
            object.hashed.get_mut(key)
        };
        (member, &mut object.stamps)
    }

    fn members(&self) -> impl Iterator<Item = (&CompactString, &Doc)> {
        let object = &*self.0;
        object.inline.iter().map(|(key, value)| (key, value)).chain(object.hashed.iter())
    }
}

impl PartialEq for Doc {
    fn eq(&self, other: &Self) -> bool {
        self.node == other.node
    }
}

impl PartialEq for DocArray {
    fn eq(&self, other: &Self) -> bool {
        self.items == other.items
    }
}

impl PartialEq for DocObject {
    fn eq(&self, other: &Self) -> bool {
        Members::len(self) == Members::len(other)
            && self.members().all(|(key, value)| other.member(key) == Some(value))
    }
}

/// A container's stamps.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stamps {
    /// The last commit that wrote this container or anything inside it.
    pub(crate) subtree: Version,
    /// Members (or elements, by index token) that are gone, with the commit
    /// that removed them, so that a read of an absent location conflicts
    /// with its removal. Forgotten as the index's horizon passes them.
    removed: Option<Box<HashMap<CompactString, Version, RandomState>>>,
}

impl Stamps {
    /// When the member or element `token` was last removed, if the index
    /// still remembers it.
    pub(crate) fn removed_at(&self, token: &str) -> Version {
        self.removed.as_ref().and_then(|removed| removed.get(token)).copied().unwrap_or_default()
    }

    pub(crate) fn remember_removed(&mut self, token: &str, version: Version) {
        // One lookup; the key is built only for a new entry.
        self.removed.get_or_insert_with(Box::default).entry_ref(token).insert(version);
    }

    /// Forgets the removal of `token` if it was at or before `horizon`.
    pub(crate) fn forget_removed(&mut self, token: &str, horizon: Version) {
        let Some(removed) = &mut self.removed else { return };
        if removed.get(token).is_some_and(|at| *at <= horizon) {
            removed.remove(token);
        }
        if removed.is_empty() {
            self.removed = None;
        }
    }
}

impl Doc {
    fn new(node: DocNode) -> Self {
        Self { node, written: Version::ZERO }
    }

    /// `{}`.
    pub fn empty_object() -> Self {
        Doc::new(DocNode::Object(DocObject::default()))
    }

    /// The same document as a `serde_json::Value`; costs a copy of it.
    pub fn to_value(&self) -> Value {
        match &self.node {
            DocNode::Null => Value::Null,
            DocNode::Bool(b) => Value::Bool(*b),
            DocNode::Number(n) => Value::Number(n.clone()),
            DocNode::String(s) => Value::String(s.as_str().to_owned()),
            DocNode::Array(array) => Value::Array(array.items.iter().map(Doc::to_value).collect()),
            DocNode::Object(object) => Value::Object(
                object
                    .members()
                    .map(|(key, value)| (key.as_str().to_owned(), value.to_value()))
                    .collect(),
            ),
        }
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Doc> {
        match &self.node {
            DocNode::Object(object) => object.member(key),
            _ => None,
        }
    }

    /// The node at `pointer`.
    pub fn pointer(&self, pointer: &Pointer) -> Option<&Doc> {
        crate::patch::resolve(self, pointer)
    }

    pub fn as_i64(&self) -> Option<i64> {
        match &self.node {
            DocNode::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match &self.node {
            DocNode::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.node {
            DocNode::String(s) => Some(s),
            _ => None,
        }
    }

    /// The stamps of a container; `None` for a scalar.
    pub(crate) fn stamps(&self) -> Option<&Stamps> {
        match &self.node {
            DocNode::Array(array) => Some(&array.stamps),
            DocNode::Object(object) => Some(object.stamps()),
            _ => None,
        }
    }

    pub(crate) fn stamps_mut(&mut self) -> Option<&mut Stamps> {
        match &mut self.node {
            DocNode::Array(array) => Some(&mut array.stamps),
            DocNode::Object(object) => Some(object.stamps_mut()),
            _ => None,
        }
    }

    /// The last commit that wrote this location or anything inside it, as
    /// far as its stamps tell (its ancestors' stamps may be newer).
    pub(crate) fn subtree(&self) -> Version {
        self.stamps().map_or(self.written, |stamps| stamps.subtree.max(self.written))
    }

    /// The child at reference token `token`, or, when there is none, when
    /// it was removed (`Version::ZERO` if never, or not remembered).
    pub(crate) fn child(&self, token: &str) -> Result<&Doc, Version> {
        match &self.node {
            DocNode::Object(object) => {
                object.member(token).ok_or_else(|| object.stamps().removed_at(token))
            }
            DocNode::Array(array) => parse_array_index(token)
                .and_then(|index| array.items.get(index))
                .ok_or_else(|| array.stamps.removed_at(token)),
            _ => Err(Version::ZERO),
        }
    }

    /// The child at reference token `token` and, either way, the stamps of
    /// this container; `None` for a scalar.
    pub(crate) fn child_mut(&mut self, token: &str) -> Option<(Option<&mut Doc>, &mut Stamps)> {
        match &mut self.node {
            DocNode::Object(object) => Some(object.member_mut(token)),
            DocNode::Array(array) => {
                let child = parse_array_index(token).and_then(|index| array.items.get_mut(index));
                Some((child, &mut array.stamps))
            }
            _ => None,
        }
    }
}

impl From<&Value> for Doc {
    fn from(value: &Value) -> Self {
        Doc::new(match value {
            Value::Null => DocNode::Null,
            Value::Bool(b) => DocNode::Bool(*b),
            Value::Number(n) => DocNode::Number(n.clone()),
            Value::String(s) => DocNode::String(CompactString::from(s.as_str())),
            Value::Array(items) => DocNode::Array(Box::new(DocArray {
                items: items.iter().map(Doc::from).collect(),
                stamps: Stamps::default(),
            })),
            Value::Object(members) => {
                let members = members
                    .iter()
                    .map(|(key, value)| (CompactString::from(key.as_str()), Doc::from(value)));
                // `build` puts more than `INLINE_MEMBERS_MAX` in the hash map.
                DocNode::Object(DocObject::build(
                    Stamps::default(),
                    HashedMembers::default(),
                    members.collect(),
                ))
            }
        })
    }
}

impl From<Value> for Doc {
    fn from(value: Value) -> Self {
        Doc::from(&value)
    }
}

impl Members<Doc> for DocObject {
    fn len(&self) -> usize {
        self.0.inline.len() + self.0.hashed.len()
    }
    fn get(&self, key: &str) -> Option<&Doc> {
        self.member(key)
    }
    fn get_mut(&mut self, key: &str) -> Option<&mut Doc> {
        self.member_mut(key).0
    }
    fn insert(&mut self, key: &str, value: Doc) -> Option<Doc> {
        if !self.0.hashed.is_empty() {
            return self.0.hashed.insert(CompactString::from(key), value);
        }
        if let Some(slot) = self.member_mut(key).0 {
            return Some(std::mem::replace(slot, value));
        }
        let (stamps, hashed, mut inline) = self.take_parts();
        inline.push((CompactString::from(key), value));
        *self = DocObject::build(stamps, hashed, inline);
        None
    }
    fn remove(&mut self, key: &str) -> Option<Doc> {
        if !self.0.hashed.is_empty() {
            let removed = self.0.hashed.remove(key);
            if self.0.hashed.len() <= INLINE_MEMBERS_BACK_MAX {
                // Back inline, with the table's memory; at half the limit,
                // so that an object at the limit does not move at every
                // insert and removal.
                let (stamps, hashed, mut inline) = self.take_parts();
                inline.extend(hashed);
                *self = DocObject::build(stamps, HashedMembers::default(), inline);
            }
            return removed;
        }
        let index = self.0.inline_position(key)?;
        let (stamps, hashed, mut inline) = self.take_parts();
        let (_, removed) = inline.swap_remove(index);
        *self = DocObject::build(stamps, hashed, inline);
        Some(removed)
    }
    fn iter(&self) -> impl Iterator<Item = (&str, &Doc)> {
        self.members().map(|(key, value)| (key.as_str(), value))
    }
}

impl JsonTree for Doc {
    type Members = DocObject;

    fn node(&self) -> Node<'_, Self> {
        match &self.node {
            DocNode::Null => Node::Null,
            DocNode::Bool(b) => Node::Bool(*b),
            DocNode::Number(n) => Node::Number(n),
            DocNode::String(s) => Node::String(s),
            DocNode::Array(array) => Node::Array(&array.items),
            DocNode::Object(object) => Node::Object(object),
        }
    }

    fn node_mut(&mut self) -> NodeMut<'_, Self> {
        match &mut self.node {
            DocNode::Array(array) => NodeMut::Array(&mut array.items),
            DocNode::Object(object) => NodeMut::Object(object),
            _ => NodeMut::Scalar,
        }
    }

    fn from_json(value: &Value) -> Self {
        Doc::from(value)
    }

    fn from_number(number: Number) -> Self {
        Doc::new(DocNode::Number(number))
    }
}

impl Serialize for Doc {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.node {
            DocNode::Null => serializer.serialize_unit(),
            DocNode::Bool(b) => serializer.serialize_bool(*b),
            DocNode::Number(n) => n.serialize(serializer),
            DocNode::String(s) => serializer.serialize_str(s),
            DocNode::Array(array) => {
                let mut seq = serializer.serialize_seq(Some(array.items.len()))?;
                for item in &array.items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            DocNode::Object(object) => {
                let mut map = serializer.serialize_map(Some(Members::len(object)))?;
                for (key, value) in object.members() {
                    map.serialize_entry(key.as_str(), value)?;
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_doc_is_32_bytes_with_its_stamp_so_a_member_fits_a_cache_line() {
        assert_eq!(std::mem::size_of::<Doc>(), 32);
        assert_eq!(std::mem::size_of::<(u64, CompactString, Doc)>(), 64);
        // A member (inline, or a bucket in a large object's hash map): key and value.
        assert_eq!(std::mem::size_of::<(CompactString, Doc)>(), 56);
        // An object's header; its inline members follow in the same allocation.
        assert_eq!(std::mem::size_of::<ObjectOf<[Member; 0]>>(), 64);
        assert_eq!(std::mem::size_of::<ObjectOf<[Member; 5]>>(), 64 + 5 * 56);
    }

    #[test]
    fn converts_both_ways_and_serialises_like_the_value() {
        let value = json!({"a": [1, -2, 2.5, "s", null, true], "b": {"c": {}}, "long key over twenty-four bytes": "x"});
        let doc = Doc::from(&value);
        assert_eq!(doc.to_value(), value);
        let reparsed: Value = serde_json::from_str(&serde_json::to_string(&doc).unwrap()).unwrap();
        assert_eq!(reparsed, value);
    }

    #[test]
    fn removing_a_member_keeps_the_others() {
        let mut doc = Doc::from(&json!({"a": 1, "b": 2, "c": 3}));
        let NodeMut::Object(members) = doc.node_mut() else { panic!("an object") };
        assert_eq!(Members::remove(members, "a"), Some(Doc::from_number(1.into())));
        assert_eq!(doc.to_value(), json!({"b": 2, "c": 3}));
    }

    /// One step of `an_object_behaves_as_a_map_inline_and_hashed`.
    #[derive(Debug, Clone)]
    enum Step {
        Insert(u8, i64),
        Remove(u8),
        Rebuild,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        // Twelve keys: enough to cross INLINE_MEMBERS_MAX both ways.
        prop_oneof![
            4 => (0..12u8, any::<i64>()).prop_map(|(key, value)| Step::Insert(key, value)),
            3 => (0..12u8).prop_map(Step::Remove),
            1 => Just(Step::Rebuild),
        ]
    }

    /// The proptest's keys: the odd ones below ten share a fingerprint
    /// (same length, first and last byte), the even ones do not, so that
    /// searches must compare keys past a matching fingerprint.
    fn key_name(key: u8) -> String {
        if key.is_multiple_of(2) {
            format!("k{key}")
        } else {
            format!("k{key}z")
        }
    }

    #[test]
    fn the_proptests_odd_keys_share_a_fingerprint() {
        assert_eq!(fingerprint(&key_name(1)), fingerprint(&key_name(9)));
        assert_ne!(fingerprint(&key_name(0)), fingerprint(&key_name(2)));
    }

    proptest::proptest! {
        /// Inserts and removals across the inline limit, both ways, against
        /// a `serde_json::Map`: every lookup, the count, the conversion and
        /// equality agree, whichever representation the object is in.
        #[test]
        fn an_object_behaves_as_a_map_inline_and_hashed(
            steps in proptest::collection::vec(step(), 1..80),
        ) {
            let mut doc = Doc::empty_object();
            let mut model = Map::new();
            for step in steps {
                let NodeMut::Object(members) = doc.node_mut() else { panic!("an object") };
                match step {
                    Step::Insert(key, value) => {
                        let key = key_name(key);
                        let old = Members::insert(members, &key, Doc::from_number(value.into()));
                        let model_old = model.insert(key, Value::from(value));
                        proptest::prop_assert_eq!(old.map(|d| d.to_value()), model_old);
                    }
                    Step::Remove(key) => {
                        let key = key_name(key);
                        let removed = Members::remove(members, &key);
                        proptest::prop_assert_eq!(removed.map(|d| d.to_value()), model.remove(&key));
                    }
                    // The same members built afresh (inline when few): equal to
                    // the object however it got them.
                    Step::Rebuild => {
                        let rebuilt = Doc::from(&Value::Object(model.clone()));
                        proptest::prop_assert!(rebuilt == doc);
                        proptest::prop_assert!(doc.clone() == doc);
                    }
                }
                proptest::prop_assert_eq!(doc.to_value(), Value::Object(model.clone()));
                let NodeMut::Object(members) = doc.node_mut() else { panic!("an object") };
                proptest::prop_assert_eq!(Members::len(members), model.len());
                for key in 0..12u8 {
                    let key = key_name(key);
                    let found = Members::get(members, &key).map(Doc::to_value);
                    proptest::prop_assert_eq!(found.as_ref(), model.get(&key));
                    let found_mut = Members::get_mut(members, &key).map(|d| d.to_value());
                    proptest::prop_assert_eq!(found_mut.as_ref(), model.get(&key));
                }
            }
        }
    }

    #[test]
    fn the_stamps_stay_with_an_object_as_it_changes_representation() {
        let mut doc = Doc::empty_object();
        doc.stamps_mut().map(|stamps| stamps.remember_removed("gone", Version(7))).unwrap();
        for i in 0..=INLINE_MEMBERS_MAX {
            let NodeMut::Object(members) = doc.node_mut() else { panic!("an object") };
            Members::insert(members, &format!("k{i}"), Doc::from_number(i.into()));
            assert_eq!(doc.child("gone").err(), Some(Version(7)), "after {} members", i + 1);
        }
        // Down to half the limit: back inline.
        for i in 0..=INLINE_MEMBERS_MAX - INLINE_MEMBERS_BACK_MAX {
            let NodeMut::Object(members) = doc.node_mut() else { panic!("an object") };
            Members::remove(members, &format!("k{i}"));
            assert_eq!(doc.child("gone").err(), Some(Version(7)), "after removing {}", i + 1);
        }
        let DocNode::Object(object) = &doc.node else { panic!("an object") };
        assert!(object.0.hashed.is_empty(), "back inline");
        assert_eq!(object.0.inline.len(), INLINE_MEMBERS_BACK_MAX);
    }
}
