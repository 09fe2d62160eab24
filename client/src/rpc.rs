//! JSON-RPC 2.0 over the session (docs/protocol.md, section 5): procedure
//! handlers other clients call through the server, and what the connection
//! needs of the engine's JSON-RPC (`concord_engine::protocol::rpc`: the
//! error object, classification and builders, shared with the server) in
//! the shape it uses.
//!
//! Requests this client sends carry numeric ids from a per-client counter;
//! requests forwarded to this client carry ids the server chose, which are
//! echoed back untouched.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use concord_engine::protocol::{self, InvalidRpc, RpcMessage};
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

/// Classifies a message from the server with the engine's JSON-RPC 2.0
/// classification. Responses to this client's calls carry the numeric ids
/// it chose; any other response, and anything invalid, is unexpected.
pub(crate) fn classify(message: Value) -> Incoming {
    match RpcMessage::classify(message) {
        Ok(RpcMessage::Request { id, method, params }) => {
            Incoming::Request { id: Some(id), method, params }
        }
        Ok(RpcMessage::Notification { method, params }) => {
            Incoming::Request { id: None, method, params }
        }
        Ok(RpcMessage::Response { id, message: body }) => match id.as_u64() {
            Some(id) => Incoming::Response { id, result: protocol::response_outcome(&body) },
            None => Incoming::Unexpected(Value::Object(body)),
        },
        Err(InvalidRpc { id, reason }) => {
            Incoming::Unexpected(json!({"id": id, "invalid": reason.to_string()}))
        }
    }
}

pub(crate) fn response(id: Value, result: Result<Value, RpcError>) -> Value {
    protocol::response(id, result)
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
        let not_ours = json!({"jsonrpc": "2.0", "id": "s-1", "result": 3});
        assert!(matches!(classify(not_ours), Incoming::Unexpected(_)));
        let not_2_0 = json!({"id": 7, "result": 3});
        assert!(matches!(classify(not_2_0), Incoming::Unexpected(_)));
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
