//! JSON-RPC 2.0 inside `rpc` messages (docs/protocol.md, section 5): the
//! error object and codes, the one classification of an incoming message
//! (the server's and the Rust client's), the message builders, and method
//! names. One implementation, so a message one side accepts is one the other
//! side would have accepted too.

use serde_json::{json, Map, Value};

/// The `jsonrpc` member every JSON-RPC 2.0 message carries.
pub const JSONRPC_VERSION: &str = "2.0";

/// A JSON-RPC 2.0 error object: what a procedure fails with and what a
/// caller gets back. One type for the server and the Rust client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("JSON-RPC error {code}: {message}")]
pub struct RpcError {
    /// One of `rpc_code`, or an application's own code.
    pub code: i64,
    pub message: String,
    /// Structured detail, when there is some.
    pub data: Option<Value>,
}

impl RpcError {
    pub const PARSE_ERROR: i64 = rpc_code::PARSE_ERROR;
    pub const INVALID_REQUEST: i64 = rpc_code::INVALID_REQUEST;
    pub const METHOD_NOT_FOUND: i64 = rpc_code::METHOD_NOT_FOUND;
    pub const INVALID_PARAMS: i64 = rpc_code::INVALID_PARAMS;
    pub const INTERNAL_ERROR: i64 = rpc_code::INTERNAL_ERROR;
    pub const TIMEOUT: i64 = rpc_code::TIMEOUT;
    pub const CALLEE_GONE: i64 = rpc_code::CALLEE_GONE;
    pub const TOO_MANY_CALLS: i64 = rpc_code::TOO_MANY_CALLS;
    pub const MUTATION_REJECTED: i64 = rpc_code::MUTATION_REJECTED;
    pub const SHUTTING_DOWN: i64 = rpc_code::SHUTTING_DOWN;

    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), data: None }
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(rpc_code::INVALID_PARAMS, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(rpc_code::INTERNAL_ERROR, message)
    }

    pub fn method_not_found(method: &str) -> Self {
        Self::new(rpc_code::METHOD_NOT_FOUND, format!("method not found: {method}"))
    }

    /// Attaches structured detail (the `data` member).
    #[must_use]
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// The `error` member of a JSON-RPC response.
    pub fn to_json(&self) -> Value {
        let mut object = serde_json::Map::new();
        object.insert("code".into(), self.code.into());
        object.insert("message".into(), self.message.clone().into());
        if let Some(data) = &self.data {
            object.insert("data".into(), data.clone());
        }
        Value::Object(object)
    }

    /// Reads an `error` member; a malformed one becomes an internal error
    /// rather than a failure, since the caller still needs an answer.
    pub fn from_json(value: &Value) -> Self {
        Self {
            code: value.get("code").and_then(Value::as_i64).unwrap_or(rpc_code::INTERNAL_ERROR),
            message: value
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("malformed error object")
                .to_owned(),
            data: value.get("data").cloned(),
        }
    }
}

/// JSON-RPC 2.0 error codes as Concord uses them: the standard ones and
/// Concord's server errors (−32000…−32099). One list for server and clients.
pub mod rpc_code {
    /// Not used by Concord: a frame that is not JSON gets `malformed_json`.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a valid JSON-RPC 2.0 request, notification or response.
    pub const INVALID_REQUEST: i64 = -32600;
    /// No server procedure or registered client provides the method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// The procedure refused its parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The procedure failed (or panicked).
    pub const INTERNAL_ERROR: i64 = -32603;
    /// No answer within the server's call timeout.
    pub const TIMEOUT: i64 = -32000;
    /// The client that registered the method disconnected before answering.
    pub const CALLEE_GONE: i64 = -32001;
    /// Too many calls in flight (at the server for the caller, or at a
    /// client for the procedures it handles).
    pub const TOO_MANY_CALLS: i64 = -32002;
    /// A mutator's patch was rejected by the store (`data` holds the
    /// rejection); the document is unchanged.
    pub const MUTATION_REJECTED: i64 = -32003;
    /// The server is shutting down.
    pub const SHUTTING_DOWN: i64 = -32004;
    /// The session's identity may not call this method (`data.code` is
    /// `"forbidden"`).
    pub const FORBIDDEN: i64 = -32005;

    /// Every code above with its name, for the protocol vectors.
    pub const ALL: [(&str, i64); 11] = [
        ("PARSE_ERROR", PARSE_ERROR),
        ("INVALID_REQUEST", INVALID_REQUEST),
        ("METHOD_NOT_FOUND", METHOD_NOT_FOUND),
        ("INVALID_PARAMS", INVALID_PARAMS),
        ("INTERNAL_ERROR", INTERNAL_ERROR),
        ("TIMEOUT", TIMEOUT),
        ("CALLEE_GONE", CALLEE_GONE),
        ("TOO_MANY_CALLS", TOO_MANY_CALLS),
        ("MUTATION_REJECTED", MUTATION_REJECTED),
        ("SHUTTING_DOWN", SHUTTING_DOWN),
        ("FORBIDDEN", FORBIDDEN),
    ];
}

/// One JSON-RPC 2.0 message, classified.
#[derive(Debug, Clone, PartialEq)]
pub enum RpcMessage {
    /// A call that wants an answer carrying the same `id`.
    Request { id: Value, method: String, params: Value },
    /// A call without `id`: never answered, not even with an error.
    Notification { method: String, params: Value },
    /// An answer; `message` is the whole object (with `id` and exactly one of
    /// `result` or `error`), so it can be routed on unchanged but for its id.
    Response { id: Value, message: Map<String, Value> },
}

/// Why a value is not a JSON-RPC 2.0 message. The answer to it is an
/// `INVALID_REQUEST` error response carrying `id`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct InvalidRpc {
    /// The message's `id` when it had a usable one, else `null`.
    pub id: Value,
    pub reason: InvalidRpcReason,
}

/// What made a JSON-RPC message invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRpcReason {
    #[error("a JSON-RPC message must be an object (batches are not supported)")]
    NotAnObject,
    #[error("\"jsonrpc\" must be \"2.0\"")]
    Version,
    #[error("\"id\" must be a string, a number or null")]
    Id,
    #[error("\"method\" must be a string")]
    Method,
    #[error("\"params\" must be an array or an object")]
    Params,
    #[error("a response needs an \"id\" and exactly one of \"result\" or \"error\"")]
    Response,
}

impl RpcMessage {
    /// Classifies a `rpc.message` value per JSON-RPC 2.0.
    pub fn classify(message: Value) -> Result<Self, InvalidRpc> {
        let Value::Object(mut map) = message else {
            return Err(InvalidRpc { id: Value::Null, reason: InvalidRpcReason::NotAnObject });
        };
        let id = map.get("id").cloned();
        let id_ok = matches!(&id, None | Some(Value::Null | Value::String(_) | Value::Number(_)));
        let invalid = |reason| {
            let id = if id_ok { id.clone().unwrap_or(Value::Null) } else { Value::Null };
            Err(InvalidRpc { id, reason })
        };
        if map.get("jsonrpc").and_then(Value::as_str) != Some(JSONRPC_VERSION) {
            return invalid(InvalidRpcReason::Version);
        }
        if !id_ok {
            return invalid(InvalidRpcReason::Id);
        }
        match map.remove("method") {
            Some(Value::String(method)) => {
                let params = map.remove("params").unwrap_or(Value::Null);
                if !matches!(params, Value::Null | Value::Array(_) | Value::Object(_)) {
                    return invalid(InvalidRpcReason::Params);
                }
                Ok(match id {
                    Some(id) => RpcMessage::Request { id, method, params },
                    None => RpcMessage::Notification { method, params },
                })
            }
            Some(_) => invalid(InvalidRpcReason::Method),
            None => match id {
                Some(id) if map.contains_key("result") != map.contains_key("error") => {
                    Ok(RpcMessage::Response { id, message: map })
                }
                _ => invalid(InvalidRpcReason::Response),
            },
        }
    }
}

/// What a response answers: its `result`, or its `error` (a malformed error
/// object reads as an internal error, as [`RpcError::from_json`] says).
pub fn response_outcome(message: &Map<String, Value>) -> Result<Value, RpcError> {
    match message.get("error") {
        Some(error) => Err(RpcError::from_json(error)),
        None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
    }
}

/// A request; `params` is sent as given (`null` included).
pub fn request(id: impl Into<Value>, method: &str, params: Value) -> Value {
    json!({"jsonrpc": JSONRPC_VERSION, "id": id.into(), "method": method, "params": params})
}

/// A notification: a request without `id`, never answered.
pub fn notification(method: &str, params: Value) -> Value {
    json!({"jsonrpc": JSONRPC_VERSION, "method": method, "params": params})
}

/// A response with the result or the error.
pub fn response(id: Value, outcome: Result<Value, RpcError>) -> Value {
    match outcome {
        Ok(result) => json!({"jsonrpc": JSONRPC_VERSION, "id": id, "result": result}),
        Err(error) => error_response(id, &error),
    }
}

/// An error response.
pub fn error_response(id: Value, error: &RpcError) -> Value {
    json!({"jsonrpc": JSONRPC_VERSION, "id": id, "error": error.to_json()})
}

/// Why a method name is refused (for `register`, `unregister`, and on
/// the client before a call). Carries the refused name, cut to the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadMethod {
    #[error("a method name is 1-{max} bytes, not {len}")]
    Length { len: usize, max: usize },
    #[error("{method:?}: a method name is printable ASCII, without spaces")]
    Chars { method: String },
    #[error("{method:?}: method names starting with \"rpc.\" are reserved by JSON-RPC")]
    Reserved { method: String },
}

/// Checks a method name: 1..=`bytes_max` bytes of printable ASCII, not
/// starting with `rpc.` (JSON-RPC 2.0 reserves it for the protocol itself).
pub fn check_method(method: &str, bytes_max: usize) -> Result<(), BadMethod> {
    if method.is_empty() || method.len() > bytes_max {
        return Err(BadMethod::Length { len: method.len(), max: bytes_max });
    }
    if !method.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(BadMethod::Chars { method: method.to_owned() });
    }
    if method.starts_with("rpc.") {
        return Err(BadMethod::Reserved { method: method.to_owned() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(message: Value) -> Result<RpcMessage, InvalidRpc> {
        RpcMessage::classify(message)
    }

    #[test]
    fn messages_are_classified_per_json_rpc_2() {
        let request = classify(json!({"jsonrpc": "2.0", "id": 1, "method": "m", "params": [1]}));
        assert_eq!(
            request,
            Ok(RpcMessage::Request { id: json!(1), method: "m".into(), params: json!([1]) })
        );
        let note = classify(json!({"jsonrpc": "2.0", "method": "m"}));
        assert_eq!(note, Ok(RpcMessage::Notification { method: "m".into(), params: Value::Null }));
        assert!(matches!(
            classify(json!({"jsonrpc": "2.0", "id": "x", "result": 3})),
            Ok(RpcMessage::Response { .. })
        ));
        let bad = [
            (json!([1, 2]), InvalidRpcReason::NotAnObject, Value::Null),
            (json!({"id": 1, "method": "m"}), InvalidRpcReason::Version, json!(1)),
            (json!({"jsonrpc": "2.0", "id": 1, "method": 5}), InvalidRpcReason::Method, json!(1)),
            (
                json!({"jsonrpc": "2.0", "id": 1, "method": "m", "params": 3}),
                InvalidRpcReason::Params,
                json!(1),
            ),
            (
                json!({"jsonrpc": "2.0", "id": 1, "result": 1, "error": {}}),
                InvalidRpcReason::Response,
                json!(1),
            ),
            (json!({"jsonrpc": "2.0", "result": 1}), InvalidRpcReason::Response, Value::Null),
            (
                json!({"jsonrpc": "2.0", "id": [1], "method": "m"}),
                InvalidRpcReason::Id,
                Value::Null,
            ),
        ];
        for (message, reason, id) in bad {
            assert_eq!(classify(message.clone()), Err(InvalidRpc { id, reason }), "{message}");
        }
    }

    #[test]
    fn built_messages_classify_as_what_they_are() {
        let call = request(7, "m", json!({"a": 1}));
        assert_eq!(
            classify(call),
            Ok(RpcMessage::Request { id: json!(7), method: "m".into(), params: json!({"a": 1}) })
        );
        let note = notification("m", Value::Null);
        assert_eq!(
            classify(note),
            Ok(RpcMessage::Notification { method: "m".into(), params: Value::Null })
        );
        let ok = response(json!("s-1"), Ok(json!(3)));
        let Ok(RpcMessage::Response { id, message }) = classify(ok) else { panic!("a response") };
        assert_eq!((id, response_outcome(&message)), (json!("s-1"), Ok(json!(3))));
        let error = RpcError::invalid_params("x").with_data(json!({"field": "a"}));
        let failed = response(json!(4), Err(error.clone()));
        let Ok(RpcMessage::Response { message, .. }) = classify(failed) else {
            panic!("a response")
        };
        assert_eq!(response_outcome(&message), Err(error));
    }

    #[test]
    fn a_malformed_error_object_reads_as_an_internal_error() {
        let Ok(RpcMessage::Response { message, .. }) =
            classify(json!({"jsonrpc": "2.0", "id": 1, "error": "boom"}))
        else {
            panic!("a response")
        };
        let error = response_outcome(&message).unwrap_err();
        assert_eq!(error.code, rpc_code::INTERNAL_ERROR);
    }

    #[test]
    fn method_names_are_bounded_and_rpc_prefix_is_reserved() {
        assert_eq!(check_method("board.clear", 64), Ok(()));
        assert_eq!(check_method("", 64), Err(BadMethod::Length { len: 0, max: 64 }));
        assert_eq!(check_method(&"m".repeat(65), 64), Err(BadMethod::Length { len: 65, max: 64 }));
        assert_eq!(check_method("a b", 64), Err(BadMethod::Chars { method: "a b".into() }));
        assert_eq!(
            check_method("rpc.discover", 64),
            Err(BadMethod::Reserved { method: "rpc.discover".into() })
        );
        assert_eq!(check_method(&"m".repeat(64), 64), Ok(()));
    }
}
