//! JSON-RPC 2.0 over the session (docs/protocol.md, section 5): the error object with its
//! standard codes, procedure handlers other clients call through the server,
//! and the small amount of message shaping both directions need.
//!
//! Requests this client sends carry numeric ids from a per-client counter;
//! requests forwarded to this client carry ids the server chose, which are
//! echoed back untouched.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{json, Value};

pub use concord_engine::protocol::RpcError;

/// What a procedure handler returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Value, RpcError>> + Send>>;

/// A registered procedure: called with the request's params (`null` when
/// absent), once per request, possibly concurrently.
pub(crate) type Handler = Arc<dyn Fn(Value) -> HandlerFuture + Send + Sync>;

/// An RPC message from the server, classified.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A request for one of our procedures; `id` is `None` for a
    /// notification, which gets no answer.
    Request { id: Option<Value>, method: String, params: Value },
    /// The answer to one of our calls.
    Response { id: u64, result: Result<Value, RpcError> },
    /// Anything else (an answer to a call we forgot after a timeout, or a
    /// malformed message); logged and dropped.
    Unexpected(Value),
}

pub(crate) fn classify(message: Value) -> Incoming {
    if let Some(method) = message.get("method").and_then(Value::as_str) {
        return Incoming::Request {
            id: message.get("id").cloned(),
            method: method.to_owned(),
            params: message.get("params").cloned().unwrap_or(Value::Null),
        };
    }
    let Some(id) = message.get("id").and_then(Value::as_u64) else {
        return Incoming::Unexpected(message);
    };
    let result = match (message.get("result"), message.get("error")) {
        (_, Some(error)) => Err(RpcError::from_json(error)),
        (Some(result), None) => Ok(result.clone()),
        (None, None) => return Incoming::Unexpected(message),
    };
    Incoming::Response { id, result }
}

pub(crate) fn response(id: Value, result: Result<Value, RpcError>) -> Value {
    match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(error) => json!({"jsonrpc": "2.0", "id": id, "error": error.to_json()}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_classified_by_shape() {
        let call = classify(json!({"jsonrpc": "2.0", "id": "s-1", "method": "m", "params": [1]}));
        assert!(matches!(call, Incoming::Request { id: Some(_), ref method, .. } if method == "m"));
        let note = classify(json!({"jsonrpc": "2.0", "method": "m"}));
        assert!(matches!(note, Incoming::Request { id: None, params: Value::Null, .. }));
        let ok = classify(json!({"jsonrpc": "2.0", "id": 7, "result": 3}));
        assert!(matches!(ok, Incoming::Response { id: 7, result: Ok(_) }));
        let err = classify(json!({"jsonrpc": "2.0", "id": 8,
            "error": {"code": -32601, "message": "nope"}}));
        assert!(matches!(
            err,
            Incoming::Response {
                id: 8,
                result: Err(RpcError { code: RpcError::METHOD_NOT_FOUND, .. })
            }
        ));
        assert!(matches!(classify(json!({"id": 9})), Incoming::Unexpected(_)));
    }

    #[test]
    fn responses_round_trip_through_classify() {
        let error = RpcError::invalid_params("x").with_data(json!({"field": "a"}));
        let message = response(json!(4), Err(error.clone()));
        assert!(
            matches!(classify(message), Incoming::Response { id: 4, result: Err(e) } if e == error)
        );
    }
}
