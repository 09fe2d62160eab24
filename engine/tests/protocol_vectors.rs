//! The protocol, written down once: `tests/vectors/protocol.json` holds one
//! example of every client and server message (every rejection reason,
//! patch failure and presence event among them, and a batched frame), every
//! error code, close code and JSON-RPC code, and the default limits. The
//! TypeScript client's tests (`web/client/test/unit/protocol-vectors.test.ts`)
//! check its types and constants against the same file.
//!
//! This test builds the file from the Rust types and fails when it differs
//! from the committed one, so a change to the protocol is seen and reviewed
//! before it ships: run it with `CONCORD_BLESS=1` to rewrite the file, then
//! commit it with the change (the TypeScript tests then say what the
//! TypeScript client lacks).
//!
//! Coverage is by construction: each enum's examples are named through a
//! `match` with no wildcard (a new variant does not compile until it is
//! named), and the names are compared with serde's own list of the enum's
//! variants (a named variant without an example fails).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use concord_engine::error::{PatchError, PatchOpError};
use concord_engine::ids::{DOC_ID_LEN_MAX, TX_ID_LEN_MAX};
use concord_engine::limits::JSON_DEPTH_MAX;
use concord_engine::pointer::POINTER_LEN_MAX;
use concord_engine::protocol::{
    close_code, rpc::JSONRPC_VERSION, rpc_code, ClientMessage, ErrorCode, PresenceEvent,
    ServerFrame, ServerMessage, NAME_BYTES_MAX, PROTOCOL_VERSION,
};
use concord_engine::store::{TooLargePart, CONFLICTS_REPORTED_MAX};
use concord_engine::{
    Change, Conflict, DocId, Limits, PatchOp, Pointer, Rejection, Transaction, TxId, Version,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

/// The document every example is about.
const DOC: &str = "board-1";
/// The session id `welcome` names.
const SESSION: &str = "5f0c2a9e81d4b3c7";
/// The first transaction id of a client whose id is `c` (as the TypeScript
/// client with `clientId: "c"` numbers them), so the TypeScript test can
/// compare the `commit` it builds with the one here.
const TX: &str = "c-1";

fn doc() -> DocId {
    DocId::parse(DOC).unwrap()
}

fn tx_id(raw: &str) -> TxId {
    TxId::parse(raw).unwrap()
}

fn ptr(raw: &str) -> Pointer {
    Pointer::parse(raw).unwrap()
}

/// The document value the `snapshot` example carries, which the `commit`
/// example's writes apply to (the TypeScript test runs them on it).
fn board() -> Value {
    json!({"shapes": {"a": {"x": 1, "y": 2}}, "count": 1, "tags": ["red", "blue"]})
}

/// One op of every kind, in an order that applies to [`board`].
fn every_op() -> Vec<PatchOp> {
    let ops = vec![
        PatchOp::Test { path: ptr("/count"), value: json!(1) },
        PatchOp::Add { path: ptr("/shapes/b"), value: json!({"x": 0, "y": 0}) },
        PatchOp::Replace { path: ptr("/shapes/a/x"), value: json!(10) },
        PatchOp::Copy { from: ptr("/shapes/a"), path: ptr("/shapes/c") },
        PatchOp::Move { from: ptr("/shapes/c"), path: ptr("/shapes/d") },
        PatchOp::Remove { path: ptr("/tags/0") },
        PatchOp::Incr { path: ptr("/count"), value: 2.into() },
    ];
    for op in &ops {
        // A new op kind does not compile here until it is given an example.
        match op {
            PatchOp::Add { .. }
            | PatchOp::Remove { .. }
            | PatchOp::Replace { .. }
            | PatchOp::Move { .. }
            | PatchOp::Copy { .. }
            | PatchOp::Test { .. }
            | PatchOp::Incr { .. } => {}
        }
    }
    ops
}

fn transaction() -> Transaction {
    Transaction {
        doc: doc(),
        tx_id: tx_id(TX),
        base: Version(3),
        reads: vec![ptr("/shapes/a/x"), ptr("/count")],
        writes: every_op(),
    }
}

fn client_messages() -> Vec<ClientMessage> {
    vec![
        ClientMessage::Auth { token: "eyJhbGciOi.e30.sig".into() },
        ClientMessage::Open { doc: doc(), version: None },
        ClientMessage::Open { doc: doc(), version: Some(Version(3)) },
        ClientMessage::Close { doc: doc() },
        ClientMessage::Commit { tx: transaction() },
        ClientMessage::Subscribe { topic: "board.*.cursor".into() },
        ClientMessage::Unsubscribe { topic: "board.*.cursor".into() },
        ClientMessage::Publish {
            topic: "board.1.cursor".into(),
            data: json!({"x": 1}),
            ack: None,
            echo: true,
        },
        ClientMessage::Publish {
            topic: "chat.room".into(),
            data: json!("hi"),
            ack: Some(1),
            echo: false,
        },
        ClientMessage::Presence { doc: doc(), state: json!({"cursor": [3, 4]}) },
        ClientMessage::Presence { doc: doc(), state: Value::Null },
        ClientMessage::Rpc {
            message: json!({"jsonrpc": JSONRPC_VERSION, "id": 1, "method": "math.add", "params": [2, 3]}),
        },
        ClientMessage::Register { method: "bot.move".into() },
        ClientMessage::Unregister { method: "bot.move".into() },
        ClientMessage::Ping,
    ]
}

/// The wire `type` of a client message.
fn client_type(message: &ClientMessage) -> &'static str {
    match message {
        ClientMessage::Auth { .. } => "auth",
        ClientMessage::Open { .. } => "open",
        ClientMessage::Close { .. } => "close",
        ClientMessage::Commit { .. } => "commit",
        ClientMessage::Subscribe { .. } => "subscribe",
        ClientMessage::Unsubscribe { .. } => "unsubscribe",
        ClientMessage::Publish { .. } => "publish",
        ClientMessage::Presence { .. } => "presence",
        ClientMessage::Rpc { .. } => "rpc",
        ClientMessage::Register { .. } => "register",
        ClientMessage::Unregister { .. } => "unregister",
        ClientMessage::Ping => "ping",
    }
}

/// One rejection of every reason.
fn rejections() -> Vec<Rejection> {
    let mut all = vec![
        Rejection::Conflict {
            conflicts: vec![
                Conflict {
                    pointer: ptr("/shapes/a/x"),
                    version: Version(4),
                    tx_id: Some(tx_id("c7-2")),
                },
                Conflict { pointer: ptr("/count"), version: Version(5), tx_id: None },
            ],
            conflicts_total: 2,
        },
        Rejection::Stale { base: Version(3), horizon: Version(40) },
        Rejection::BaseAhead { base: Version(9), current: Version(3) },
        Rejection::TooLarge { what: TooLargePart::ReadSet, len: 1001, max: 1000 },
        Rejection::TooLarge { what: TooLargePart::Patch, len: 1001, max: 1000 },
        Rejection::OutcomeUnknown { base: Version(3), floor: Version(12) },
        Rejection::Forbidden {
            op_index: 1,
            pointer: ptr("/settings"),
            message: "the document is read-only for this session".into(),
        },
        Rejection::Invalid {
            pointer: ptr("/shapes/a"),
            message: "\"x\" is a required property".into(),
        },
        Rejection::Vetoed { message: "the board is archived".into() },
    ];
    all.extend(
        patch_errors()
            .into_iter()
            .enumerate()
            .map(|(op_index, error)| Rejection::Patch(PatchError { op_index, error })),
    );
    all
}

/// One patch failure of every reason (each a `rejected` with reason `patch`).
fn patch_errors() -> Vec<PatchOpError> {
    vec![
        PatchOpError::PathNotFound { path: ptr("/shapes/z/x") },
        PatchOpError::ParentNotContainer { path: ptr("/count/x") },
        PatchOpError::BadArrayIndex { path: ptr("/tags/9") },
        PatchOpError::TestFailed { path: ptr("/count") },
        PatchOpError::MoveIntoChild { from: ptr("/shapes"), path: ptr("/shapes/a/s") },
        PatchOpError::RemoveRoot,
        PatchOpError::NotANumber { path: ptr("/tags") },
        PatchOpError::NumberOverflow { path: ptr("/count") },
        PatchOpError::DepthExceeded {
            path: ptr("/deep"),
            depth: JSON_DEPTH_MAX + 1,
            max: JSON_DEPTH_MAX,
        },
        PatchOpError::SizeExceeded { size_bytes: 16_777_300, max_bytes: 16_777_216 },
    ]
}

fn patch_error_reason(error: &PatchOpError) -> &'static str {
    match error {
        PatchOpError::PathNotFound { .. } => "path_not_found",
        PatchOpError::ParentNotContainer { .. } => "parent_not_container",
        PatchOpError::BadArrayIndex { .. } => "bad_array_index",
        PatchOpError::TestFailed { .. } => "test_failed",
        PatchOpError::MoveIntoChild { .. } => "move_into_child",
        PatchOpError::RemoveRoot => "remove_root",
        PatchOpError::NotANumber { .. } => "not_a_number",
        PatchOpError::NumberOverflow { .. } => "number_overflow",
        PatchOpError::DepthExceeded { .. } => "depth_exceeded",
        PatchOpError::SizeExceeded { .. } => "size_exceeded",
    }
}

fn presence_event(event: PresenceEvent) -> &'static str {
    match event {
        PresenceEvent::Join => "join",
        PresenceEvent::Update => "update",
        PresenceEvent::Leave => "leave",
    }
}

fn server_messages() -> Vec<ServerMessage> {
    let mut all = vec![
        ServerMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            session: SESSION.into(),
            sub: None,
            name: None,
        },
        ServerMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            session: SESSION.into(),
            sub: Some("alice".into()),
            name: Some("Alice".into()),
        },
        ServerMessage::Snapshot { doc: doc(), version: Version(3), value: board() },
        ServerMessage::Opened { doc: doc(), version: Version(3) },
        ServerMessage::Change(Change {
            doc: doc(),
            version: Version(4),
            tx_id: tx_id("c7-2"),
            patch: vec![PatchOp::Replace { path: ptr("/shapes/a/y"), value: json!(5) }],
        }),
        ServerMessage::Committed { doc: doc(), tx_id: tx_id(TX), version: Version(5) },
    ];
    all.extend(rejections().into_iter().map(|rejection| ServerMessage::Rejected {
        doc: doc(),
        tx_id: tx_id(TX),
        rejection,
    }));
    all.extend([
        ServerMessage::Message { topic: "board.1.cursor".into(), data: json!({"x": 1}) },
        ServerMessage::Subscribed { topic: "board.*.cursor".into() },
        ServerMessage::Published { ack: 1 },
    ]);
    all.extend([PresenceEvent::Join, PresenceEvent::Update, PresenceEvent::Leave].map(|event| {
        let state =
            if event == PresenceEvent::Leave { Value::Null } else { json!({"cursor": [3, 4]}) };
        ServerMessage::Presence { doc: doc(), session: "9a1b".into(), event, state }
    }));
    all.extend([
        ServerMessage::Rpc { message: json!({"jsonrpc": JSONRPC_VERSION, "id": 1, "result": 5}) },
        ServerMessage::Rpc {
            message: json!({"jsonrpc": JSONRPC_VERSION, "id": 2, "error":
                {"code": rpc_code::METHOD_NOT_FOUND, "message": "method not found: math.sub"}}),
        },
        ServerMessage::Rpc {
            message: json!({"jsonrpc": JSONRPC_VERSION, "id": 42, "method": "bot.move",
                "params": {"to": [1, 2]}}),
        },
        ServerMessage::Registered { method: "bot.move".into() },
        ServerMessage::Pong,
        ServerMessage::error(ErrorCode::BadMessage, "unknown message type \"nuke\"".into()),
        ServerMessage::Error {
            code: ErrorCode::NotOpen,
            message: "open board-1 before committing to it".into(),
            doc: Some(doc()),
            tx_id: Some(tx_id(TX)),
            topic: None,
            method: None,
        },
        ServerMessage::Error {
            code: ErrorCode::Forbidden,
            message: "no grant of this session allows subscribing to admin.>".into(),
            doc: None,
            tx_id: None,
            topic: Some("admin.>".into()),
            method: None,
        },
        ServerMessage::Error {
            code: ErrorCode::AlreadyRegistered,
            message: "bot.move is already provided".into(),
            doc: None,
            tx_id: None,
            topic: None,
            method: Some("bot.move".into()),
        },
    ]);
    all
}

fn server_type(message: &ServerMessage) -> &'static str {
    match message {
        ServerMessage::Welcome { .. } => "welcome",
        ServerMessage::Snapshot { .. } => "snapshot",
        ServerMessage::Opened { .. } => "opened",
        ServerMessage::Change(_) => "change",
        ServerMessage::Committed { .. } => "committed",
        ServerMessage::Rejected { .. } => "rejected",
        ServerMessage::Message { .. } => "message",
        ServerMessage::Subscribed { .. } => "subscribed",
        ServerMessage::Published { .. } => "published",
        ServerMessage::Presence { .. } => "presence",
        ServerMessage::Rpc { .. } => "rpc",
        ServerMessage::Registered { .. } => "registered",
        ServerMessage::Pong => "pong",
        ServerMessage::Error { .. } => "error",
    }
}

/// One batched frame (`/ws?batch=1`): a change and the commit it confirms.
fn batched_frame() -> Vec<ServerMessage> {
    vec![
        ServerMessage::Change(Change {
            doc: doc(),
            version: Version(5),
            tx_id: tx_id(TX),
            patch: vec![PatchOp::Incr { path: ptr("/count"), value: 2.into() }],
        }),
        ServerMessage::Committed { doc: doc(), tx_id: tx_id(TX), version: Version(5) },
    ]
}

/// Serde's list of `T`'s variant names, read from the error it gives for a
/// name that is not one ("unknown variant `…`, expected one of `a`, `b`",
/// or "expected `a` or `b`").
fn serde_variants<T: DeserializeOwned + std::fmt::Debug>(probe: Value) -> BTreeSet<String> {
    let error = serde_json::from_value::<T>(probe).unwrap_err().to_string();
    let (_, list) = error.split_once(", expected").unwrap_or_else(|| panic!("{error}"));
    let names: BTreeSet<String> = list.split('`').skip(1).step_by(2).map(str::to_owned).collect();
    assert!(names.len() >= 2, "no variant list in {error:?}");
    names
}

fn names<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    names.into_iter().map(str::to_owned).collect()
}

/// Every enum on the wire has an example of each of its variants.
#[test]
fn the_examples_cover_every_variant() {
    let unknown = "\u{1}not a variant";
    let check = |what: &str, serde: BTreeSet<String>, examples: BTreeSet<String>| {
        assert_eq!(examples, serde, "{what}: the examples (left) and the variants (right) differ");
    };
    check(
        "ClientMessage",
        serde_variants::<ClientMessage>(json!({"type": unknown})),
        names(client_messages().iter().map(client_type)),
    );
    check(
        "ServerMessage",
        serde_variants::<ServerMessage>(json!({"type": unknown})),
        names(server_messages().iter().map(server_type)),
    );
    check(
        "Rejection",
        serde_variants::<Rejection>(json!({"reason": unknown})),
        names(rejections().iter().map(Rejection::reason)),
    );
    check(
        "PatchOpError",
        serde_variants::<PatchOpError>(json!({"reason": unknown})),
        names(patch_errors().iter().map(patch_error_reason)),
    );
    check(
        "PatchOp",
        serde_variants::<PatchOp>(json!({"op": unknown})),
        every_op()
            .iter()
            .map(|op| serde_json::to_value(op).unwrap()["op"].to_string().replace('"', ""))
            .collect(),
    );
    check(
        "PresenceEvent",
        serde_variants::<PresenceEvent>(json!(unknown)),
        names(server_messages().iter().filter_map(|message| match message {
            ServerMessage::Presence { event, .. } => Some(presence_event(*event)),
            _ => None,
        })),
    );
    check(
        "TooLargePart",
        serde_variants::<TooLargePart>(json!(unknown)),
        names(rejections().iter().filter_map(|rejection| match rejection {
            Rejection::TooLarge { what: TooLargePart::ReadSet, .. } => Some("read_set"),
            Rejection::TooLarge { what: TooLargePart::Patch, .. } => Some("patch"),
            _ => None,
        })),
    );
    check(
        "ErrorCode",
        serde_variants::<ErrorCode>(json!(unknown)),
        names(ErrorCode::ALL.iter().map(|code| code.as_str())),
    );
}

/// Each example decodes, through the decoder its receiver uses, to itself.
#[test]
fn every_example_round_trips() {
    for message in client_messages() {
        let text = serde_json::to_string(&message).unwrap();
        let decoded = ClientMessage::decode(&text, JSON_DEPTH_MAX).unwrap();
        assert_eq!(decoded, message, "{text}");
    }
    for message in server_messages() {
        let text = serde_json::to_string(&message).unwrap();
        assert_eq!(ServerFrame::decode(&text).unwrap(), ServerFrame::One(message), "{text}");
    }
    let batch = batched_frame();
    let text = serde_json::to_string(&batch).unwrap();
    assert_eq!(ServerFrame::decode(&text).unwrap(), ServerFrame::Batch(batch), "{text}");
    for code in ErrorCode::ALL {
        let wire = serde_json::to_value(code).unwrap();
        assert_eq!(wire, json!(code.as_str()));
        assert_eq!(serde_json::from_value::<ErrorCode>(wire).unwrap(), code);
    }
    let limits = serde_json::to_value(Limits::default()).unwrap();
    assert_eq!(serde_json::from_value::<Limits>(limits).unwrap(), Limits::default());
}

fn to_values<T: serde::Serialize>(items: &[T]) -> Vec<Value> {
    items.iter().map(|item| serde_json::to_value(item).unwrap()).collect()
}

fn named<T: Into<Value> + Copy>(pairs: &[(&str, T)]) -> Map<String, Value> {
    pairs.iter().map(|(name, value)| ((*name).to_owned(), (*value).into())).collect()
}

/// The whole file, as built from the Rust definitions.
fn vectors() -> Value {
    json!({
        "about": "Protocol v1, one example of everything on the wire. Generated by \
                  engine/tests/protocol_vectors.rs (CONCORD_BLESS=1 cargo test -p concord-engine \
                  --test protocol_vectors rewrites it); checked by the TypeScript client's \
                  test/unit/protocol-vectors.test.ts. Do not edit by hand.",
        "protocol_version": PROTOCOL_VERSION,
        "client_messages": to_values(&client_messages()),
        "server_messages": to_values(&server_messages()),
        "batched_frame": to_values(&batched_frame()),
        "error_codes": ErrorCode::ALL.map(ErrorCode::as_str),
        "close_codes": named(&close_code::ALL),
        "rpc_codes": named(&rpc_code::ALL),
        "limits": Limits::default(),
        "name_limits": {
            "name_bytes_max": NAME_BYTES_MAX,
            "doc_id_len_max": DOC_ID_LEN_MAX,
            "tx_id_len_max": TX_ID_LEN_MAX,
            "pointer_len_max": POINTER_LEN_MAX,
            "conflicts_reported_max": CONFLICTS_REPORTED_MAX,
        },
    })
}

/// The committed file is exactly what the Rust definitions give; with
/// `CONCORD_BLESS=1` it is rewritten instead.
#[test]
fn the_committed_vectors_are_current() {
    let path: PathBuf =
        [env!("CARGO_MANIFEST_DIR"), "tests", "vectors", "protocol.json"].iter().collect();
    let mut generated = serde_json::to_string_pretty(&vectors()).unwrap();
    generated.push('\n');
    if std::env::var_os("CONCORD_BLESS").is_some_and(|value| value == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        panic!(
            "{} differs from what the protocol definitions give; review the change and rerun \
             with CONCORD_BLESS=1 to rewrite it\n{}",
            path.display(),
            line_diff(&committed, &generated)
        );
    }
}

/// The lines that differ, as `-committed` / `+generated` around the first
/// difference (enough to see what changed without a diff tool).
fn line_diff(committed: &str, generated: &str) -> String {
    let old: Vec<&str> = committed.lines().collect();
    let new: Vec<&str> = generated.lines().collect();
    let first = old.iter().zip(&new).take_while(|(a, b)| a == b).count();
    let common_tail = old[first..]
        .iter()
        .rev()
        .zip(new[first..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = format!("first difference at line {}:\n", first + 1);
    let shown = 20;
    for line in old[first..old.len() - common_tail].iter().take(shown) {
        out.push_str(&format!("-{line}\n"));
    }
    for line in new[first..new.len() - common_tail].iter().take(shown) {
        out.push_str(&format!("+{line}\n"));
    }
    out
}
