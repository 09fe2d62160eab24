//! Protocol v1: the messages that cross a Concord WebSocket session, and the
//! stable error codes. One definition shared by the server and the Rust
//! client (the TypeScript client mirrors it; docs/protocol.md is the prose).
//!
//! Every message is one JSON text frame, an object whose `type` field names
//! the variant. Unknown types and malformed messages are answered with an
//! `error` message carrying an [`ErrorCode`]; they never close the session
//! unless the code says so.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{DocId, TxId, Version};
use crate::store::{Change, Rejection, Transaction};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Messages from a client to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
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
}

/// Messages from the server to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// First message of a session.
    Welcome { protocol: u32, session: String },
    /// The whole document at a version; replaces whatever the client held.
    Snapshot {
        doc: DocId,
        version: Version,
        value: Value,
    },
    /// Ends the reply to `open`: the client now holds `version` (through the
    /// snapshot or changes sent before this) and receives changes live.
    Opened { doc: DocId, version: Version },
    /// One committed change, in version order, no gap, no duplicate.
    Change(Change),
    /// The client's transaction committed at `version`; every change up to
    /// `version` was sent before this.
    Committed {
        doc: DocId,
        tx_id: TxId,
        version: Version,
    },
    /// The client's transaction did not commit; for conflicts, the changes
    /// that caused it were sent before this.
    Rejected {
        doc: DocId,
        tx_id: TxId,
        rejection: Rejection,
    },
    /// A message on a subscribed topic.
    Message { topic: String, data: Value },
    /// Acknowledges a subscription.
    Subscribed { topic: String },
    /// Acknowledges a publish that asked for it.
    Published { ack: u64 },
    /// Presence on an open document.
    Presence {
        doc: DocId,
        session: String,
        event: PresenceEvent,
        state: Value,
    },
    /// A JSON-RPC 2.0 message.
    Rpc { message: Value },
    /// Something the client sent was refused.
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        doc: Option<DocId>,
    },
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
    /// A document id, tx id or pointer failed validation.
    BadId,
    /// A message over the size limit.
    MessageTooLarge,
    /// JSON nested past the depth limit.
    TooDeep,
    /// A transaction over the read-set or patch-op limit.
    TooLarge,
    /// The session sends faster than its rate limit.
    RateLimited,
    /// The session fell behind; its backlog was replaced by a snapshot.
    Resynced,
    /// The operation needs rights the session's token does not give.
    Forbidden,
    /// A transaction for a document the session has not opened.
    NotOpen,
    /// The server is shutting down.
    ShuttingDown,
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

    #[test]
    fn unknown_types_and_fields_are_refused() {
        assert!(serde_json::from_value::<ClientMessage>(json!({"type": "nuke"})).is_err());
        assert!(serde_json::from_value::<ClientMessage>(
            json!({"type": "close", "doc": "a", "x": 1})
        )
        .is_err());
        assert!(
            serde_json::from_value::<ClientMessage>(json!({"type": "close", "doc": "a b"}))
                .is_err()
        );
    }

    #[test]
    fn error_codes_are_snake_case_strings() {
        assert_eq!(
            serde_json::to_value(ErrorCode::MalformedJson).unwrap(),
            json!("malformed_json")
        );
    }
}
