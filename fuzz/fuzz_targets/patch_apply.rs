//! `patch::apply` against a naive model, over a small key space.
//!
//! The fuzzer builds a small document and a short sequence of ops whose paths
//! use only a handful of tokens, so that ops often meet each other (the same
//! key, an index just inserted, a child of something just moved). The model
//! applies the ops one by one to a fresh clone of the document, the simplest
//! correct way to get all-or-nothing, with RFC 6902 semantics plus `incr`.
//!
//! Checked: the engine succeeds exactly when every op succeeds in the model,
//! and on failure names the op the model failed at; on success both documents
//! are equal and undoing the result restores the original; on failure the
//! document is exactly the original.

#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use arbitrary::Arbitrary;
use concord_engine::patch::{self, PatchOp};
use concord_engine::pointer::parse_array_index;
use concord_engine::{Limits, Pointer};
use libfuzzer_sys::fuzz_target;
use serde_json::{Number, Value};

/// Longest patch tried. With at most 3 tokens per path and values at most 2
/// deep, 10 ops keep documents far below the default depth limit (64) and,
/// even if every op doubles the document with `copy`, far below the size
/// limit, so the model does not need to know the limits.
const OPS_MAX: usize = 10;

/// The token space: object keys, array indices (valid, past the end, and a
/// malformed one with a leading zero), the append token and the empty key.
const TOKENS: [&str; 9] = ["a", "b", "c", "0", "1", "2", "-", "01", ""];

#[derive(Debug, Arbitrary)]
struct Token(u8);

impl Token {
    fn as_str(&self) -> &'static str {
        TOKENS[usize::from(self.0) % TOKENS.len()]
    }
}

/// A path of at most 3 tokens.
#[derive(Debug, Arbitrary)]
struct Path(Vec<Token>);

impl Path {
    fn pointer(&self) -> Pointer {
        Pointer::from_tokens(self.0.iter().take(3).map(Token::as_str))
    }
}

#[derive(Debug, Arbitrary)]
enum Scalar {
    Null,
    Bool(bool),
    Int(i8),
    /// Never a whole number, so that `1` and `1.0` only meet through `incr`.
    Half(i8),
    Str(Token),
}

impl Scalar {
    fn json(&self) -> Value {
        match self {
            Scalar::Null => Value::Null,
            Scalar::Bool(b) => Value::Bool(*b),
            Scalar::Int(i) => Value::from(*i),
            Scalar::Half(i) => Value::from(f64::from(*i) + 0.5),
            Scalar::Str(t) => Value::from(t.as_str()),
        }
    }
}

/// A value at most 2 deep. Built without recursion, so that long inputs
/// cannot nest the generator deeply.
#[derive(Debug, Arbitrary)]
enum FuzzValue {
    Scalar(Scalar),
    Array(Vec<Scalar>),
    Object(Vec<(Token, Scalar)>),
    ObjectOfArrays(Vec<(Token, Vec<Scalar>)>),
}

impl FuzzValue {
    fn json(&self) -> Value {
        let array = |items: &[Scalar]| Value::Array(items.iter().map(Scalar::json).collect());
        match self {
            FuzzValue::Scalar(s) => s.json(),
            FuzzValue::Array(items) => array(items),
            FuzzValue::Object(members) => Value::Object(
                members.iter().map(|(k, v)| (k.as_str().to_owned(), v.json())).collect(),
            ),
            FuzzValue::ObjectOfArrays(members) => Value::Object(
                members.iter().map(|(k, v)| (k.as_str().to_owned(), array(v))).collect(),
            ),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum FuzzDoc {
    Object(Vec<(Token, FuzzValue)>),
    Array(Vec<FuzzValue>),
    Scalar(Scalar),
}

impl FuzzDoc {
    fn json(&self) -> Value {
        match self {
            FuzzDoc::Object(members) => Value::Object(
                members.iter().map(|(k, v)| (k.as_str().to_owned(), v.json())).collect(),
            ),
            FuzzDoc::Array(items) => Value::Array(items.iter().map(FuzzValue::json).collect()),
            FuzzDoc::Scalar(s) => s.json(),
        }
    }
}

/// An `incr` amount: a whole number or a half.
#[derive(Debug, Arbitrary)]
enum Delta {
    Int(i8),
    Half(i8),
}

impl Delta {
    fn number(&self) -> Number {
        match self {
            Delta::Int(i) => Number::from(*i),
            Delta::Half(i) => Number::from_f64(f64::from(*i) + 0.5).expect("finite"),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum FuzzOp {
    Add(Path, FuzzValue),
    Remove(Path),
    Replace(Path, FuzzValue),
    Move(Path, Path),
    Copy(Path, Path),
    Test(Path, FuzzValue),
    Incr(Path, Delta),
}

impl FuzzOp {
    fn op(&self) -> PatchOp {
        match self {
            FuzzOp::Add(path, value) => PatchOp::Add { path: path.pointer(), value: value.json() },
            FuzzOp::Remove(path) => PatchOp::Remove { path: path.pointer() },
            FuzzOp::Replace(path, value) => {
                PatchOp::Replace { path: path.pointer(), value: value.json() }
            }
            FuzzOp::Move(from, path) => {
                PatchOp::Move { from: from.pointer(), path: path.pointer() }
            }
            FuzzOp::Copy(from, path) => {
                PatchOp::Copy { from: from.pointer(), path: path.pointer() }
            }
            FuzzOp::Test(path, value) => {
                PatchOp::Test { path: path.pointer(), value: value.json() }
            }
            FuzzOp::Incr(path, delta) => {
                PatchOp::Incr { path: path.pointer(), value: delta.number() }
            }
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    doc: FuzzDoc,
    ops: Vec<FuzzOp>,
}

// The model. It works on token slices and plain `serde_json` calls, sharing
// nothing with the engine but the array-index grammar of RFC 6901.

fn get<'v>(doc: &'v Value, tokens: &[String]) -> Option<&'v Value> {
    let mut node = doc;
    for token in tokens {
        node = match node {
            Value::Object(map) => map.get(token)?,
            Value::Array(items) => items.get(parse_array_index(token)?)?,
            _ => return None,
        };
    }
    Some(node)
}

fn get_mut<'v>(doc: &'v mut Value, tokens: &[String]) -> Option<&'v mut Value> {
    let mut node = doc;
    for token in tokens {
        node = match node {
            Value::Object(map) => map.get_mut(token)?,
            Value::Array(items) => items.get_mut(parse_array_index(token)?)?,
            _ => return None,
        };
    }
    Some(node)
}

/// RFC 6902 `add`: the root is replaced; an object member is set; an array
/// element is inserted at an index up to the length, or appended with `-`.
fn model_add(doc: &mut Value, tokens: &[String], value: Value) -> Option<()> {
    let Some((last, parent)) = tokens.split_last() else {
        *doc = value;
        return Some(());
    };
    match get_mut(doc, parent)? {
        Value::Object(map) => {
            map.insert(last.clone(), value);
        }
        Value::Array(items) => {
            let index = if last == "-" { items.len() } else { parse_array_index(last)? };
            if index > items.len() {
                return None;
            }
            items.insert(index, value);
        }
        _ => return None,
    }
    Some(())
}

/// RFC 6902 `remove`; removing the root is refused, as the engine documents.
fn model_remove(doc: &mut Value, tokens: &[String]) -> Option<Value> {
    let (last, parent) = tokens.split_last()?;
    match get_mut(doc, parent)? {
        Value::Object(map) => map.remove(last),
        Value::Array(items) => {
            let index = parse_array_index(last)?;
            (index < items.len()).then(|| items.remove(index))
        }
        _ => None,
    }
}

/// Number equality by value, as `test` requires; exact for the small
/// integers and halves the fuzzer makes.
fn model_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| model_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| model_equal(v, w)))
        }
        _ => a == b,
    }
}

/// `incr`'s sum: exact for integers (ours cannot overflow `i64`), `f64`
/// otherwise.
fn model_sum(a: &Number, b: &Number) -> Option<Number> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return Some(Number::from(x.checked_add(y)?));
    }
    Number::from_f64(a.as_f64()? + b.as_f64()?)
}

fn model_op(doc: &mut Value, op: &PatchOp) -> Option<()> {
    match op {
        PatchOp::Add { path, value } => model_add(doc, path.tokens(), value.clone()),
        PatchOp::Remove { path } => model_remove(doc, path.tokens()).map(drop),
        PatchOp::Replace { path, value } => {
            *get_mut(doc, path.tokens())? = value.clone();
            Some(())
        }
        PatchOp::Move { from, path } => {
            let (from, path) = (from.tokens(), path.tokens());
            if from == path {
                return get(doc, from).map(drop);
            }
            if path.starts_with(from) {
                // A location cannot move into its own child.
                return None;
            }
            let value = model_remove(doc, from)?;
            model_add(doc, path, value)
        }
        PatchOp::Copy { from, path } => {
            let value = get(doc, from.tokens())?.clone();
            model_add(doc, path.tokens(), value)
        }
        PatchOp::Test { path, value } => model_equal(get(doc, path.tokens())?, value).then_some(()),
        PatchOp::Incr { path, value } => match get_mut(doc, path.tokens()) {
            None => model_add(doc, path.tokens(), Value::Number(value.clone())),
            Some(Value::Number(current)) => {
                *current = model_sum(current, value)?;
                Some(())
            }
            Some(_) => None,
        },
    }
}

/// Applies `ops` one at a time, each to a clone of the previous result: the
/// final document, or the index of the first op that failed.
fn model_apply(doc: &Value, ops: &[PatchOp]) -> Result<Value, usize> {
    let mut current = doc.clone();
    for (index, op) in ops.iter().enumerate() {
        let mut next = current.clone();
        model_op(&mut next, op).ok_or(index)?;
        current = next;
    }
    Ok(current)
}

fuzz_target!(|input: Input| {
    let original = input.doc.json();
    let ops: Vec<PatchOp> = input.ops.iter().take(OPS_MAX).map(FuzzOp::op).collect();

    let expected = model_apply(&original, &ops);
    let mut doc = original.clone();
    let size = patch::encoded_size_estimate(&doc, usize::MAX);
    match (patch::apply(&mut doc, size, &ops, &Limits::default()), expected) {
        (Ok(applied), Ok(expected)) => {
            assert_eq!(doc, expected, "engine and model disagree on the result");
            applied.undo(&mut doc);
            assert_eq!(doc, original, "undo does not restore the original");
        }
        (Ok(_), Err(index)) => {
            panic!("the engine applied a patch whose op {index} fails in the model: {doc}")
        }
        (Err(error), Ok(expected)) => {
            panic!("the engine refused a patch the model applies ({expected}): {error}")
        }
        (Err(error), Err(index)) => {
            assert_eq!(error.op_index, index, "engine and model fail at different ops");
            assert_eq!(doc, original, "a failed patch changed the document");
        }
    }
});
