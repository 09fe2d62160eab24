//! The transaction programs of the trace vectors and the simulation: a few
//! ops, interpreted against a transaction the same way by every client's
//! tests (the TypeScript driver has the same interpreter).

use concord_engine::replica::{Abort, Tx};
use concord_engine::Pointer;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// One step of a transaction program, the interpreter both clients share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Read a location.
    Get { path: String },
    /// Write a value.
    Set { path: String, value: Value },
    /// Read a number (missing counts as 0) and write it plus one.
    AddOne { path: String },
    /// The commutative `incr` op.
    Incr { path: String, by: i64 },
    /// STM `retry` unless the location holds a value.
    RetryUnless { path: String },
    /// Remove a location.
    Remove { path: String },
    /// Fail with the function's own error.
    Fail,
    /// STM `orElse`: run `first`; if it retries, undo it and run `second`
    /// (a retry of both waits for a change to what either read).
    OrElse { first: Vec<Op>, second: Vec<Op> },
}

fn pointer(path: &str) -> Pointer {
    Pointer::parse(path).unwrap_or_else(|error| panic!("bad pointer {path} in a program: {error}"))
}

/// Runs `program` against a transaction.
pub fn interpret(program: &[Op], tx: &mut Tx<'_>) -> Result<(), Abort<String>> {
    for op in program {
        match op {
            Op::Get { path } => {
                tx.get(&pointer(path));
            }
            Op::Set { path, value } => tx.set(&pointer(path), value.clone())?,
            Op::AddOne { path } => {
                let at = pointer(path);
                let n = tx.get_i64(&at).unwrap_or(0);
                tx.set(&at, json!(n + 1))?;
            }
            Op::Incr { path, by } => tx.increment(&pointer(path), serde_json::Number::from(*by))?,
            Op::RetryUnless { path } => {
                if tx.get(&pointer(path)).is_none_or(Value::is_null) {
                    return tx.retry();
                }
            }
            Op::Remove { path } => tx.remove(&pointer(path))?,
            Op::Fail => return Err(Abort::User("the program failed".to_owned())),
            Op::OrElse { first, second } => {
                tx.or_else(|tx| interpret(first, tx), |tx| interpret(second, tx))?
            }
        }
    }
    Ok(())
}
