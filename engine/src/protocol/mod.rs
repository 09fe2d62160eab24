//! Protocol v1: the messages that cross a Concord WebSocket session, and the
//! stable error codes. One definition shared by the server and the Rust
//! client (the TypeScript client mirrors it; docs/protocol.md is the prose).
//!
//! Every message is a JSON object whose `type` field names the variant, sent
//! as one text frame; a session that asks for batched frames (`/ws?batch=1`)
//! may get several server messages in one frame, as a JSON array
//! ([`ServerFrame`]). Unknown types and malformed messages are answered with an
//! `error` message carrying an [`ErrorCode`]; they never close the session.
//! The server closes a session only for the reasons in [`close_code`].
//!
//! Besides the messages: [`rpc`] holds JSON-RPC 2.0 as carried in `rpc`
//! messages (classification, builders, error codes, method names) and
//! [`topic`] the topic and pattern syntax and matching, each used by the
//! server and the Rust client alike. `engine/tests/protocol_vectors.rs`
//! writes an example of every message, code and default limit to
//! `engine/tests/vectors/protocol.json`, which the TypeScript client's tests
//! check its types and constants against.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{DocId, TxId, Version};
use crate::store::{Change, Rejection, Transaction};

pub mod rpc;
pub mod topic;

pub use rpc::{
    check_method, error_response, notification, request, response, response_outcome, rpc_code,
    BadMethod, InvalidRpc, InvalidRpcReason, RpcError, RpcMessage,
};
pub use topic::{check_pattern, check_topic, topic_matches, BadTopic};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest topic, subscription pattern or method name, in bytes: the
/// server's default (`--name-bytes-max`) and the Rust client's check before
/// sending.
pub const NAME_BYTES_MAX: usize = 256;

/// Messages from a client to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Authenticates the session with a bearer token. Only as the first
    /// message, on a server that requires authentication and when the
    /// upgrade request carried no `Authorization` header.
    Auth { token: String },
    /// Starts receiving a document. With `version`, the client holds that
    /// version and wants only what came after it (or a snapshot when those
    /// changes are gone); without, it wants a snapshot.
    Open {
        doc: DocId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<Version>,
    },
    /// Stops receiving a document.
    Close { doc: DocId },
    /// Submits a transaction.
    Commit { tx: Transaction },
    /// Subscribes to a topic pattern (`*` one segment, `>` the rest).
    Subscribe { topic: String },
    /// Ends a subscription made with the same pattern.
    Unsubscribe { topic: String },
    /// Publishes to a topic. With `ack`, the server answers `published`.
    Publish {
        topic: String,
        data: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ack: Option<u64>,
        /// When false, the publisher's own matching subscriptions do not get it.
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        echo: bool,
    },
    /// Sets (or with `null`, clears) this session's presence on a document.
    Presence { doc: DocId, state: Value },
    /// A JSON-RPC 2.0 message (request, notification or response).
    Rpc { message: Value },
    /// Offers a procedure other clients may call through the server.
    Register { method: String },
    /// Withdraws a procedure.
    Unregister { method: String },
    /// Asks for a `pong`: the heartbeat of clients that cannot send
    /// WebSocket pings (browsers). Any message from the server proves it
    /// alive; this one asks for nothing else.
    Ping,
}

/// Messages from the server to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// First message of a session; on a server that requires
    /// authentication, sent once the session is authenticated. `sub` and
    /// `name` are who the session is (absent on an open server).
    Welcome {
        protocol: u32,
        session: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sub: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// The whole document at a version; replaces whatever the client held.
    Snapshot { doc: DocId, version: Version, value: Value },
    /// Ends the reply to `open`: the client now holds `version` (through the
    /// snapshot or changes sent before this) and receives changes live.
    Opened { doc: DocId, version: Version },
    /// One committed change, in version order, no gap, no duplicate.
    Change(Change),
    /// The client's transaction committed at `version`; every change up to
    /// `version` was sent before this.
    Committed { doc: DocId, tx_id: TxId, version: Version },
    /// The client's transaction did not commit; for conflicts, the changes
    /// that caused it were sent before this.
    Rejected { doc: DocId, tx_id: TxId, rejection: Rejection },
    /// A message on a subscribed topic.
    Message { topic: String, data: Value },
    /// Acknowledges a subscription.
    Subscribed { topic: String },
    /// Acknowledges a publish that asked for it.
    Published { ack: u64 },
    /// Presence on an open document.
    Presence { doc: DocId, session: String, event: PresenceEvent, state: Value },
    /// A JSON-RPC 2.0 message.
    Rpc { message: Value },
    /// Acknowledges `register`: calls to `method` from other sessions are
    /// now routed to this one.
    Registered { method: String },
    /// Answers `ping`.
    Pong,
    /// Something the client sent was refused.
    Error {
        code: ErrorCode,
        message: String,
        /// The document the refused message named, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        doc: Option<DocId>,
        /// The transaction the refused message carried, if any, so a client
        /// can resolve it (e.g. a `commit` refused as `not_open` or
        /// `rate_limited` never reached the store).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tx_id: Option<TxId>,
        /// The topic or pattern the refused `subscribe`, `unsubscribe` or
        /// `publish` named, so a client can tell which request failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        /// The method the refused `register`, `unregister` or RPC
        /// notification named.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        method: Option<String>,
    },
}

impl ServerMessage {
    /// An `error` that names nothing but its code and message.
    pub fn error(code: ErrorCode, message: String) -> Self {
        ServerMessage::Error { code, message, doc: None, tx_id: None, topic: None, method: None }
    }
}

/// The server messages one text frame carries: a single message, or, in a
/// session that asked for batched frames, several as a JSON array, in the
/// order they were sent.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    One(ServerMessage),
    Batch(Vec<ServerMessage>),
}

impl ServerFrame {
    /// Decodes a text frame of either form.
    pub fn decode(text: &str) -> Result<Self, serde_json::Error> {
        if text.trim_start().starts_with('[') {
            serde_json::from_str(text).map(ServerFrame::Batch)
        } else {
            serde_json::from_str(text).map(ServerFrame::One)
        }
    }
}

impl IntoIterator for ServerFrame {
    type Item = ServerMessage;
    type IntoIter =
        std::iter::Chain<std::option::IntoIter<ServerMessage>, std::vec::IntoIter<ServerMessage>>;

    fn into_iter(self) -> Self::IntoIter {
        match self {
            ServerFrame::One(message) => Some(message).into_iter().chain(Vec::new()),
            ServerFrame::Batch(messages) => None.into_iter().chain(messages),
        }
    }
}

/// What happened to a session's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceEvent {
    Join,
    Update,
    Leave,
}

/// Stable, short error codes for everything a client can cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON.
    MalformedJson,
    /// Valid JSON that is not a known message, or has bad fields.
    BadMessage,
    /// A document id, tx id, pointer, topic or method name failed validation.
    BadId,
    /// A message over the size limit.
    MessageTooLarge,
    /// JSON nested past the depth limit.
    TooDeep,
    /// A transaction over the read-set or patch-op limit. Reserved: a v1
    /// server answers such a transaction with `rejected` (reason
    /// `too_large`), so the transaction is resolved like any other.
    TooLarge,
    /// The session sends faster than its rate limit; the message was dropped.
    RateLimited,
    /// The session fell behind; its backlog was replaced by a snapshot.
    /// Reserved: a v1 server closes a session that falls behind instead
    /// ([`close_code::SLOW_CONSUMER`]).
    Resynced,
    /// The operation needs rights the session's identity does not give.
    /// The message names what was refused and why; nothing changed.
    Forbidden,
    /// Authentication failed: no token where one is required, a token that
    /// does not verify, or an `auth` message out of place. The session is
    /// then closed with [`close_code::UNAUTHORIZED`].
    Unauthorized,
    /// The session's token expired; the session is closed with
    /// [`close_code::TOKEN_EXPIRED`] after a grace period. Reconnect with a
    /// fresh token.
    TokenExpired,
    /// A transaction or presence for a document the session has not opened
    /// (or a `close` of one).
    NotOpen,
    /// The server is shutting down.
    ShuttingDown,
    /// A per-session count limit is reached: open documents, subscriptions
    /// or registered methods.
    LimitReached,
    /// `register` of a method that a server procedure or another session
    /// already provides.
    AlreadyRegistered,
}

impl ErrorCode {
    /// Every code, in declaration order, for the protocol vectors (which
    /// check this list against serde's list of variants, so a new code left
    /// out of it fails the test).
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::MalformedJson,
        ErrorCode::BadMessage,
        ErrorCode::BadId,
        ErrorCode::MessageTooLarge,
        ErrorCode::TooDeep,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Resynced,
        ErrorCode::Forbidden,
        ErrorCode::Unauthorized,
        ErrorCode::TokenExpired,
        ErrorCode::NotOpen,
        ErrorCode::ShuttingDown,
        ErrorCode::LimitReached,
        ErrorCode::AlreadyRegistered,
    ];

    /// The wire form, e.g. `"malformed_json"` (also a metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::BadId => "bad_id",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::TooDeep => "too_deep",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Resynced => "resynced",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::NotOpen => "not_open",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::LimitReached => "limit_reached",
            ErrorCode::AlreadyRegistered => "already_registered",
        }
    }
}

/// WebSocket close codes a server sends, and why. Codes 4000–4999 are ours;
/// the others are RFC 6455's. A client reconnects after any of them except
/// when it closed the session itself.
pub mod close_code {
    /// The client asked to close, or the server is done with the session.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down (an `error` with `shutting_down` comes
    /// first). Reconnect with backoff.
    pub const GOING_AWAY: u16 = 1001;
    /// A message larger than the transport limit; the server does not read it.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// A server bug; reconnect.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The session's outbound queue overflowed because the client did not
    /// read fast enough. Nothing was skipped silently: reconnect, re-open
    /// with the versions held and resubmit unacknowledged transactions.
    pub const SLOW_CONSUMER: u16 = 4001;
    /// Nothing, not even a pong, arrived within the dead-peer timeout.
    pub const PEER_TIMEOUT: u16 = 4002;
    /// Authentication failed (an `error` with `unauthorized` comes first).
    /// Reconnect only with a different token.
    pub const UNAUTHORIZED: u16 = 4003;
    /// The session's token expired (an `error` with `token_expired` came
    /// first). Reconnect with a fresh token.
    pub const TOKEN_EXPIRED: u16 = 4004;

    /// Every code above with its name, for the protocol vectors.
    pub const ALL: [(&str, u16); 8] = [
        ("NORMAL", NORMAL),
        ("GOING_AWAY", GOING_AWAY),
        ("MESSAGE_TOO_BIG", MESSAGE_TOO_BIG),
        ("INTERNAL_ERROR", INTERNAL_ERROR),
        ("SLOW_CONSUMER", SLOW_CONSUMER),
        ("PEER_TIMEOUT", PEER_TIMEOUT),
        ("UNAUTHORIZED", UNAUTHORIZED),
        ("TOKEN_EXPIRED", TOKEN_EXPIRED),
    ];
}

/// Why a text frame is not a [`ClientMessage`]; `code` is what the server
/// answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    pub code: ErrorCode,
    pub message: String,
}

impl ClientMessage {
    /// Decodes one text frame. Nesting is checked against `depth_max` before
    /// any parsing, so a deep message costs one linear scan and no allocation.
    pub fn decode(text: &str, depth_max: usize) -> Result<Self, DecodeError> {
        if json_depth_exceeds(text.as_bytes(), depth_max) {
            return Err(DecodeError {
                code: ErrorCode::TooDeep,
                message: format!("message nests deeper than {depth_max} levels"),
            });
        }
        // serde would accept a sequence for a tagged enum (`["open", "d"]`);
        // protocol v1 messages are objects only.
        if !text.trim_start().starts_with('{') {
            let code = match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => ErrorCode::BadMessage,
                Err(_) => ErrorCode::MalformedJson,
            };
            let message = "a message must be a JSON object with a \"type\"".to_owned();
            return Err(DecodeError { code, message });
        }
        serde_json::from_str(text).map_err(|error| {
            let message = error.to_string();
            let code = match error.classify() {
                serde_json::error::Category::Data if names_bad_id(&message) => ErrorCode::BadId,
                serde_json::error::Category::Data => ErrorCode::BadMessage,
                _ => ErrorCode::MalformedJson,
            };
            DecodeError { code, message }
        })
    }
}

/// True when `message` is serde's report of an id or pointer that failed
/// validation (the `Display` of `InvalidId` or `InvalidPointer`). Tests below
/// keep this in step with those messages.
fn names_bad_id(message: &str) -> bool {
    ["invalid document id", "invalid transaction id", "JSON Pointer"]
        .iter()
        .any(|needle| message.contains(needle))
}

/// True when `text` nests arrays and objects deeper than `depth_max`.
///
/// A byte scan that tracks strings and escapes, and stops at the first level
/// past the limit; it does not validate the JSON (the parser does that).
pub fn json_depth_exceeds(text: &[u8], depth_max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > depth_max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_frame_holds_one_message_or_an_array_of_them_in_order() {
        let committed = r#"{"type":"committed","doc":"d","tx_id":"t1","version":2}"#;
        let opened = r#"{"type":"opened","doc":"d","version":2}"#;
        let one = ServerFrame::decode(committed).unwrap();
        assert!(matches!(one, ServerFrame::One(ServerMessage::Committed { .. })));
        assert_eq!(one.into_iter().count(), 1);
        let batch = ServerFrame::decode(&format!(" [{committed},{opened}]")).unwrap();
        let types: Vec<_> = batch
            .into_iter()
            .map(|message| match message {
                ServerMessage::Committed { .. } => "committed",
                ServerMessage::Opened { .. } => "opened",
                _ => "other",
            })
            .collect();
        assert_eq!(types, ["committed", "opened"]);
        assert!(ServerFrame::decode(r#"[{"type":"committed"}]"#).is_err(), "fields are checked");
        assert!(ServerFrame::decode("[[]]").is_err(), "arrays do not nest");
    }

    #[test]
    fn client_messages_round_trip_with_their_documented_shape() {
        let raw = json!({"type": "commit", "tx": {
            "doc": "board-1", "tx_id": "c1-7", "base": 3,
            "reads": ["/shapes/a/x"],
            "writes": [{"op": "replace", "path": "/shapes/a/x", "value": 10}]
        }});
        let message: ClientMessage = serde_json::from_value(raw.clone()).unwrap();
        assert!(matches!(&message, ClientMessage::Commit { tx } if tx.base == Version(3)));
        assert_eq!(serde_json::to_value(&message).unwrap(), raw);
    }

    /// Numbers travel as text between JavaScript and Rust; a value must come
    /// back as the same f64 JavaScript sent, or replicas diverge from the
    /// server by one ulp (serde_json needs `float_roundtrip` for this).
    #[test]
    fn numbers_decode_to_the_nearest_double_and_print_back_unchanged() {
        for text in ["1795899803623.8887", "0.1", "5e-324", "1.7976931348623157e308"] {
            let frame = format!(
                r#"{{"type":"commit","tx":{{"doc":"d","tx_id":"t","base":0,"reads":[],
                "writes":[{{"op":"add","path":"/z","value":{text}}}]}}}}"#
            );
            let message = ClientMessage::decode(&frame, 8).unwrap();
            let ClientMessage::Commit { tx } = &message else { panic!("not a commit") };
            let value = serde_json::to_value(&tx.writes).unwrap();
            let number = &value[0]["value"];
            let exact: f64 = text.parse().unwrap();
            assert_eq!(number.as_f64(), Some(exact), "{text} decoded");
            assert_eq!(number.to_string().parse::<f64>().unwrap(), exact, "{text} printed");
        }
    }

    #[test]
    fn unknown_types_and_fields_are_refused() {
        assert!(serde_json::from_value::<ClientMessage>(json!({"type": "nuke"})).is_err());
        assert!(serde_json::from_value::<ClientMessage>(
            json!({"type": "close", "doc": "a", "x": 1})
        )
        .is_err());
        assert!(serde_json::from_value::<ClientMessage>(json!({"type": "close", "doc": "a b"}))
            .is_err());
    }

    #[test]
    fn error_codes_are_snake_case_strings() {
        assert_eq!(
            serde_json::to_value(ErrorCode::MalformedJson).unwrap(),
            json!("malformed_json")
        );
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        }
    }

    #[test]
    fn decode_classifies_each_kind_of_bad_frame() {
        let check = |text: &str, code: ErrorCode| {
            let error = ClientMessage::decode(text, 8).unwrap_err();
            assert_eq!(error.code, code, "{text}: {}", error.message);
        };
        check("{\"type\": ", ErrorCode::MalformedJson);
        check("not json", ErrorCode::MalformedJson);
        check(r#"{"type": "nuke"}"#, ErrorCode::BadMessage);
        check(r#"{"type": "open"}"#, ErrorCode::BadMessage);
        check(r#"["open", "d"]"#, ErrorCode::BadMessage);
        check("[1, 2", ErrorCode::MalformedJson);
        check(r#"{"type": "open", "doc": "a b"}"#, ErrorCode::BadId);
        check(
            r#"{"type": "commit", "tx": {"doc": "d", "tx_id": "t t", "base": 0}}"#,
            ErrorCode::BadId,
        );
        check(
            r#"{"type": "commit", "tx": {"doc": "d", "tx_id": "t", "base": 0, "reads": ["x"]}}"#,
            ErrorCode::BadId,
        );
        check(r#"{"type": "rpc", "message": [[[[[[[[[1]]]]]]]]]}"#, ErrorCode::TooDeep);
        assert!(ClientMessage::decode(r#"{"type": "close", "doc": "d"}"#, 8).is_ok());
    }

    #[test]
    fn depth_scan_ignores_brackets_inside_strings() {
        assert!(!json_depth_exceeds(br#"{"a": "[[[[[[\"{{{{"}"#, 1));
        assert!(json_depth_exceeds(br#"{"a": {"b": 1}}"#, 1));
        assert!(!json_depth_exceeds(br#"{"a": {"b": 1}}"#, 2));
        assert!(!json_depth_exceeds(br#"[1, [2], [3]]"#, 2));
    }

    #[test]
    fn server_messages_have_their_documented_shape() {
        let error = ServerMessage::Error {
            code: ErrorCode::NotOpen,
            message: "open it first".into(),
            doc: Some(DocId::parse("d").unwrap()),
            tx_id: Some(TxId::parse("t1").unwrap()),
            topic: None,
            method: None,
        };
        assert_eq!(
            serde_json::to_value(&error).unwrap(),
            json!({"type": "error", "code": "not_open", "message": "open it first",
                   "doc": "d", "tx_id": "t1"})
        );
        let refused = ServerMessage::Error {
            code: ErrorCode::Forbidden,
            message: "no".into(),
            doc: None,
            tx_id: None,
            topic: Some("chat.x".into()),
            method: None,
        };
        assert_eq!(
            serde_json::to_value(&refused).unwrap(),
            json!({"type": "error", "code": "forbidden", "message": "no", "topic": "chat.x"})
        );
        let registered = ServerMessage::Registered { method: "m".into() };
        assert_eq!(
            serde_json::to_value(&registered).unwrap(),
            json!({"type": "registered", "method": "m"})
        );
    }
}
