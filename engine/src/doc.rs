//! The store's document representation, and the one interface the patch code
//! needs from a JSON tree.
//!
//! `serde_json::Value` keeps an object's members in a `BTreeMap<String, _>`:
//! finding one member among 10,000 compares the key with about 25 others,
//! each a separate heap string, so nearly every comparison is a cache miss.
//! That descent was half the misses of a commit (docs/benchmarks.md, "Second
//! round"). [`Doc`] keeps members in a hash-indexed map whose keys are stored
//! inline when short (up to 24 bytes), so a lookup is one hash, one probe and
//! one entry, at any object size.
//!
//! Only the server's store holds a `Doc`; replicas and everything on the wire
//! stay `serde_json::Value`. Both implement [`JsonTree`], so `patch::apply`,
//! the size estimate and `test`'s equality are one code path for both.
//!
//! An object's members keep their insertion order, except that removing a
//! member moves the last one into its place (O(1) at any size). JSON objects
//! are unordered, so nothing may depend on member order.

use std::fmt;

use compact_str::CompactString;
use foldhash::fast::RandomState;
use indexmap::IndexMap;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Number, Value};

use crate::pointer::Pointer;

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

/// An object's members in a `Doc`: hash-indexed, keys inline up to 24 bytes.
pub type DocMembers = IndexMap<CompactString, Doc, RandomState>;

/// A JSON document as the store holds it. See the module docs for why it is
/// not a `serde_json::Value`; convert with `Doc::from(&value)` and
/// [`Doc::to_value`].
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Doc {
    #[default]
    Null,
    Bool(bool),
    Number(Number),
    String(CompactString),
    Array(Vec<Doc>),
    /// Boxed so that a `Doc` stays 32 bytes: an object entry (hash, key,
    /// value) is then 64 bytes, the size of one cache line, so a lookup
    /// touches at most two.
    Object(Box<DocMembers>),
}

impl Doc {
    /// `{}`.
    pub fn empty_object() -> Self {
        Doc::Object(Box::default())
    }

    /// The same document as a `serde_json::Value`; costs a copy of it.
    pub fn to_value(&self) -> Value {
        match self {
            Doc::Null => Value::Null,
            Doc::Bool(b) => Value::Bool(*b),
            Doc::Number(n) => Value::Number(n.clone()),
            Doc::String(s) => Value::String(s.as_str().to_owned()),
            Doc::Array(items) => Value::Array(items.iter().map(Doc::to_value).collect()),
            Doc::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(key, value)| (key.as_str().to_owned(), value.to_value()))
                    .collect(),
            ),
        }
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Doc> {
        match self {
            Doc::Object(members) => members.get(key),
            _ => None,
        }
    }

    /// The node at `pointer`.
    pub fn pointer(&self, pointer: &Pointer) -> Option<&Doc> {
        crate::patch::resolve(self, pointer)
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Doc::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Doc::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Doc::String(s) => Some(s),
            _ => None,
        }
    }
}

impl From<&Value> for Doc {
    fn from(value: &Value) -> Self {
        match value {
            Value::Null => Doc::Null,
            Value::Bool(b) => Doc::Bool(*b),
            Value::Number(n) => Doc::Number(n.clone()),
            Value::String(s) => Doc::String(CompactString::from(s.as_str())),
            Value::Array(items) => Doc::Array(items.iter().map(Doc::from).collect()),
            Value::Object(members) => {
                let mut map =
                    DocMembers::with_capacity_and_hasher(members.len(), RandomState::default());
                map.extend(
                    members
                        .iter()
                        .map(|(key, value)| (CompactString::from(key.as_str()), Doc::from(value))),
                );
                Doc::Object(Box::new(map))
            }
        }
    }
}

impl From<Value> for Doc {
    fn from(value: Value) -> Self {
        Doc::from(&value)
    }
}

impl Members<Doc> for DocMembers {
    fn len(&self) -> usize {
        IndexMap::len(self)
    }
    fn get(&self, key: &str) -> Option<&Doc> {
        IndexMap::get(self, key)
    }
    fn get_mut(&mut self, key: &str) -> Option<&mut Doc> {
        IndexMap::get_mut(self, key)
    }
    fn insert(&mut self, key: &str, value: Doc) -> Option<Doc> {
        IndexMap::insert(self, CompactString::from(key), value)
    }
    fn remove(&mut self, key: &str) -> Option<Doc> {
        // O(1): the last member takes the removed one's place.
        IndexMap::swap_remove(self, key)
    }
    fn iter(&self) -> impl Iterator<Item = (&str, &Doc)> {
        IndexMap::iter(self).map(|(key, value)| (key.as_str(), value))
    }
}

impl JsonTree for Doc {
    type Members = DocMembers;

    fn node(&self) -> Node<'_, Self> {
        match self {
            Doc::Null => Node::Null,
            Doc::Bool(b) => Node::Bool(*b),
            Doc::Number(n) => Node::Number(n),
            Doc::String(s) => Node::String(s),
            Doc::Array(items) => Node::Array(items),
            Doc::Object(members) => Node::Object(members.as_ref()),
        }
    }

    fn node_mut(&mut self) -> NodeMut<'_, Self> {
        match self {
            Doc::Array(items) => NodeMut::Array(items),
            Doc::Object(members) => NodeMut::Object(members.as_mut()),
            _ => NodeMut::Scalar,
        }
    }

    fn from_json(value: &Value) -> Self {
        Doc::from(value)
    }

    fn from_number(number: Number) -> Self {
        Doc::Number(number)
    }
}

impl Serialize for Doc {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Doc::Null => serializer.serialize_unit(),
            Doc::Bool(b) => serializer.serialize_bool(*b),
            Doc::Number(n) => n.serialize(serializer),
            Doc::String(s) => serializer.serialize_str(s),
            Doc::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Doc::Object(members) => {
                let mut map = serializer.serialize_map(Some(members.len()))?;
                for (key, value) in members.iter() {
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
    fn a_doc_is_32_bytes_so_an_object_entry_is_64() {
        assert_eq!(std::mem::size_of::<Doc>(), 32);
        assert_eq!(std::mem::size_of::<(u64, CompactString, Doc)>(), 64);
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
        let Doc::Object(members) = &mut doc else { panic!("an object") };
        assert_eq!(Members::remove(members.as_mut(), "a"), Some(Doc::Number(1.into())));
        assert_eq!(doc.to_value(), json!({"b": 2, "c": 3}));
    }
}
