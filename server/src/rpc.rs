//! JSON-RPC 2.0 over the session (docs/protocol.md, section 5): message classification, error
//! codes, and the server-side procedure and mutator types registered on the
//! `ServerBuilder`.
//!
//! Calls to server procedures run in tasks owned by the calling session (so
//! they are dropped when it disconnects) under `rpc_call_timeout`. Mutators
//! run *inside* the shard that owns their document: they see the current
//! value, and the patch they return is committed through `Store::commit` and
//! broadcast exactly like a client commit, so they serialise with every
//! other transaction and cannot conflict.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use concord_engine::{Doc, DocId, Patch, Version};
use serde_json::{json, Map, Value};

use crate::shard::Documents;

/// Standard JSON-RPC 2.0 codes and Concord's server errors (−32000…−32099),
/// defined once in the protocol module shared with the clients.
pub use concord_engine::protocol::rpc_code as code;

pub use concord_engine::protocol::RpcError;

/// What a procedure knows about its call.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The calling session's id (as other clients see it in presence).
    pub session: String,
    /// Read and mutate documents on the authoritative store.
    pub documents: Documents,
    /// Who is calling (on an open server, an anonymous identity allowed
    /// everything): a procedure decides what the caller may do with it.
    pub identity: Arc<concord_engine::access::Identity>,
}

/// The future a procedure returns.
pub type ProcedureFuture = Pin<Box<dyn Future<Output = Result<Value, RpcError>> + Send>>;

/// A server procedure: takes the call context and the params (`null` when
/// omitted) and answers with a result or an error.
pub(crate) type Procedure = Arc<dyn Fn(CallContext, Value) -> ProcedureFuture + Send + Sync>;

/// What a mutator sees: runs on the shard that owns `doc`, with its current
/// value (the store's own representation: read it with `get`, `pointer`,
/// `as_i64`…, or copy it out with `to_value`) and version.
#[derive(Debug)]
pub struct MutatorCall<'a> {
    /// The call's params; always an object with a string member `doc`.
    pub params: &'a Value,
    pub doc: &'a DocId,
    pub value: &'a Doc,
    pub version: Version,
    pub session: &'a str,
}

/// What a mutator decides: the writes to commit and the call's result.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mutation {
    pub writes: Patch,
    pub result: Value,
}

/// A mutator as stored by the builder.
pub(crate) type MutatorFn =
    Arc<dyn Fn(MutatorCall<'_>) -> Result<Mutation, RpcError> + Send + Sync>;

/// One classified incoming JSON-RPC message.
#[derive(Debug, PartialEq)]
pub(crate) enum Incoming {
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    Notification {
        method: String,
        params: Value,
    },
    /// A response (to a call routed to this session); `message` is whole.
    Response {
        id: Value,
        message: Map<String, Value>,
    },
    /// Not JSON-RPC 2.0; answer `INVALID_REQUEST` with `id` (or null).
    Invalid {
        id: Value,
        reason: &'static str,
    },
}

/// Classifies a `rpc.message` value per JSON-RPC 2.0.
pub(crate) fn classify(message: Value) -> Incoming {
    let Value::Object(mut map) = message else {
        let reason = "a JSON-RPC message must be an object (batches are not supported)";
        return Incoming::Invalid { id: Value::Null, reason };
    };
    let id = map.get("id").cloned();
    let id_ok = matches!(&id, None | Some(Value::Null | Value::String(_) | Value::Number(_)));
    let invalid = |reason| Incoming::Invalid {
        id: if id_ok { id.clone().unwrap_or(Value::Null) } else { Value::Null },
        reason,
    };
    if map.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return invalid("\"jsonrpc\" must be \"2.0\"");
    }
    if !id_ok {
        return invalid("\"id\" must be a string, a number or null");
    }
    match map.remove("method") {
        Some(Value::String(method)) => {
            let params = map.remove("params").unwrap_or(Value::Null);
            if !matches!(params, Value::Null | Value::Array(_) | Value::Object(_)) {
                return invalid("\"params\" must be an array or an object");
            }
            match id {
                Some(id) => Incoming::Request { id, method, params },
                None => Incoming::Notification { method, params },
            }
        }
        Some(_) => invalid("\"method\" must be a string"),
        None => {
            let has_result = map.contains_key("result");
            let has_error = map.contains_key("error");
            match id {
                Some(id) if has_result != has_error => Incoming::Response { id, message: map },
                _ => {
                    invalid("a response needs an \"id\" and exactly one of \"result\" or \"error\"")
                }
            }
        }
    }
}

/// A success response.
pub(crate) fn result_response(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// An error response.
pub(crate) fn error_response(id: Value, error: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": error.to_json()})
}

/// True when `method` is acceptable as a method name: 1..=`bytes_max` bytes
/// of printable ASCII, not starting with the reserved `rpc.` prefix.
pub(crate) fn valid_method(method: &str, bytes_max: usize) -> bool {
    !method.is_empty()
        && method.len() <= bytes_max
        && method.bytes().all(|b| b.is_ascii_graphic())
        && !method.starts_with("rpc.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_classified_per_json_rpc_2() {
        let request = classify(json!({"jsonrpc": "2.0", "id": 1, "method": "m", "params": [1]}));
        assert_eq!(
            request,
            Incoming::Request { id: json!(1), method: "m".into(), params: json!([1]) }
        );
        let note = classify(json!({"jsonrpc": "2.0", "method": "m"}));
        assert_eq!(note, Incoming::Notification { method: "m".into(), params: Value::Null });
        assert!(matches!(
            classify(json!({"jsonrpc": "2.0", "id": "x", "result": 3})),
            Incoming::Response { .. }
        ));
        for bad in [
            json!([1, 2]),
            json!({"id": 1, "method": "m"}),
            json!({"jsonrpc": "2.0", "id": 1, "method": 5}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "m", "params": 3}),
            json!({"jsonrpc": "2.0", "id": 1, "result": 1, "error": {}}),
            json!({"jsonrpc": "2.0", "id": [1], "method": "m"}),
        ] {
            assert!(matches!(classify(bad.clone()), Incoming::Invalid { .. }), "{bad}");
        }
    }

    #[test]
    fn method_names_are_bounded_and_rpc_prefix_is_reserved() {
        assert!(valid_method("board.clear", 64));
        assert!(!valid_method("", 64));
        assert!(!valid_method("rpc.discover", 64));
        assert!(!valid_method("a b", 64));
        assert!(!valid_method(&"m".repeat(65), 64));
    }
}
