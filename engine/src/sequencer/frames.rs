//! Server messages encoded once, for every recipient.

use serde::Serialize;

use crate::doc::Doc;
use crate::ids::{DocId, TxId, Version};
use crate::patch::Patch;
use crate::transaction::Change;

/// What a frame says if a message ever fails to serialise.
const ENCODING_FAILED: &str =
    r#"{"type":"error","code":"bad_message","message":"internal serialisation failure"}"#;

/// Serialises a server message once, into the shell's frame type.
pub(super) fn encode<F: From<String>, T: Serialize>(message: &T) -> F {
    match serde_json::to_string(message) {
        Ok(text) => F::from(text),
        // Our messages are plain data with string keys; serialisation cannot
        // fail short of a bug, and a broken frame must not reach a client.
        Err(error) => {
            debug_assert!(false, "server message failed to serialise: {error}");
            F::from(ENCODING_FAILED.to_owned())
        }
    }
}

/// A snapshot message serialised straight from the store's value, without
/// cloning the document.
#[derive(Serialize)]
#[serde(tag = "type", rename = "snapshot")]
pub(super) struct SnapshotRef<'a> {
    pub(super) doc: &'a DocId,
    pub(super) version: Version,
    pub(super) value: &'a Doc,
}

/// A change message serialised from a borrowed change, so the change itself
/// can move on into the log without a copy.
#[derive(Serialize)]
#[serde(tag = "type", rename = "change")]
pub(super) struct ChangeRef<'a> {
    doc: &'a DocId,
    version: Version,
    tx_id: &'a TxId,
    patch: &'a Patch,
}

impl<'a> ChangeRef<'a> {
    pub(super) fn new(change: &'a Change) -> Self {
        ChangeRef {
            doc: &change.doc,
            version: change.version,
            tx_id: &change.tx_id,
            patch: &change.patch,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::protocol::ServerMessage;

    #[test]
    fn the_borrowed_snapshot_encodes_like_the_protocol_type() {
        let doc = DocId::parse("d").unwrap();
        let value = json!({"a": [1, 2]});
        let frame: Arc<str> =
            encode(&SnapshotRef { doc: &doc, version: Version(3), value: &Doc::from(&value) });
        let decoded: ServerMessage = serde_json::from_str(&frame).unwrap();
        assert_eq!(decoded, ServerMessage::Snapshot { doc, version: Version(3), value });
    }

    #[test]
    fn the_borrowed_change_encodes_like_the_protocol_type() {
        let change = Change {
            doc: DocId::parse("d").unwrap(),
            version: Version(4),
            tx_id: TxId::parse("t-1").unwrap(),
            patch: serde_json::from_value(json!([{"op": "incr", "path": "/n", "value": 1}]))
                .unwrap(),
        };
        let frame: Arc<str> = encode(&ChangeRef::new(&change));
        let decoded: ServerMessage = serde_json::from_str(&frame).unwrap();
        assert_eq!(decoded, ServerMessage::Change(change));
    }
}
