//! Hostile and broken input (issue 3, test 5): each gets its documented
//! code, the session and the server carry on, and no document changes.

use concord_engine::protocol::close_code;
use concord_engine::{DocId, Limits};
use concord_server::Config;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{start, Client, End};

fn nested(depth: usize) -> Value {
    let mut value = json!(1);
    for _ in 0..depth {
        value = json!({"a": value});
    }
    value
}

fn small_limits() -> Config {
    Config {
        message_bytes_max: 64 * 1024,
        ws_message_bytes_max: 128 * 1024,
        ws_frame_bytes_max: 128 * 1024,
        limits: Limits { patch_ops_max: 100, ..Limits::default() },
        ..Config::default()
    }
}

#[tokio::test]
async fn every_kind_of_bad_input_gets_its_code_and_changes_nothing() {
    let server = start(small_limits()).await;
    let mut bad = Client::connect(&server).await;
    let mut other = Client::connect(&server).await;
    bad.open("d", None).await;
    other.open("d", None).await;

    bad.send_text("this is not json".into()).await;
    bad.expect_error("malformed_json").await;
    bad.send_text(r#"{"type": "commit", "tx": {"doc": "d""#.into()).await;
    bad.expect_error("malformed_json").await;
    bad.send(json!({"type": "nuke", "doc": "d"})).await;
    bad.expect_error("bad_message").await;
    bad.send(json!({"type": "open"})).await;
    bad.expect_error("bad_message").await;
    bad.send(json!({"type": "close", "doc": "d", "extra": true})).await;
    bad.expect_error("bad_message").await;
    bad.send(json!(["open", "d"])).await;
    bad.expect_error("bad_message").await;
    within_binary(&mut bad).await;
    bad.expect_error("bad_message").await;

    // Ids and pointers are validated before anything reaches the store.
    bad.send(json!({"type": "open", "doc": "no spaces allowed"})).await;
    bad.expect_error("bad_id").await;
    bad.commit("d", "bad tx id", 0, json!([]), json!([])).await;
    bad.expect_error("bad_id").await;
    bad.commit("d", "t-1", 0, json!(["no-leading-slash"]), json!([])).await;
    bad.expect_error("bad_id").await;
    bad.commit("d", "t-2", 0, json!([]), json!([{"op": "add", "path": "x", "value": 1}])).await;
    bad.expect_error("bad_id").await;
    bad.commit("d", "t-3", 0, json!(["/a~2b"]), json!([])).await;
    bad.expect_error("bad_id").await;

    // Size: over the protocol limit gets an error and the session goes on.
    let big = "x".repeat(70 * 1024);
    bad.commit("d", "t-4", 0, json!([]), json!([{"op": "add", "path": "/big", "value": big}]))
        .await;
    let error = bad.expect_error("message_too_large").await;
    assert!(error["message"].as_str().unwrap().contains("65536"));

    // Depth: the message nests past the message limit.
    let deep = nested(100);
    bad.commit("d", "t-5", 0, json!([]), json!([{"op": "add", "path": "/deep", "value": deep}]))
        .await;
    bad.expect_error("too_deep").await;
    bad.send(json!({"type": "rpc", "message": nested(120)})).await;
    bad.expect_error("too_deep").await;
    // Past serde_json's own limit of 128 the answer is still ours.
    bad.send_text(format!("{}{}", "[".repeat(5000), "]".repeat(5000))).await;
    bad.expect_error("too_deep").await;

    // A value the message limit allows but the document limit does not is a
    // rejected transaction (so the client's transaction is resolved).
    bad.commit(
        "d",
        "t-6",
        0,
        json!([]),
        json!([{"op": "add", "path": "/deep", "value": nested(70)}]),
    )
    .await;
    let rejected = bad.expect("rejected").await;
    assert_eq!(rejected["rejection"]["reason"], "patch");
    assert_eq!(rejected["rejection"]["error"]["reason"], "depth_exceeded");

    // A patch with more ops than allowed is rejected as too large.
    let ops: Vec<Value> =
        (0..101).map(|i| json!({"op": "add", "path": format!("/k{i}"), "value": i})).collect();
    bad.commit("d", "t-7", 0, json!([]), Value::Array(ops)).await;
    let rejected = bad.expect("rejected").await;
    assert_eq!(rejected["tx_id"], "t-7");
    assert_eq!(
        rejected["rejection"],
        json!({"reason": "too_large", "what": "patch", "len": 101, "max": 100})
    );

    // A patch that does not apply is rejected and undone whole.
    let half = json!([
        {"op": "add", "path": "/ok", "value": 1},
        {"op": "remove", "path": "/missing"}
    ]);
    bad.commit("d", "t-8", 0, json!([]), half).await;
    let rejected = bad.expect("rejected").await;
    assert_eq!(rejected["rejection"]["reason"], "patch");
    assert_eq!(rejected["rejection"]["op_index"], 1);

    // Not one of those touched the document; the other session saw nothing,
    // and both carry on.
    let doc = DocId::parse("d").unwrap();
    assert_eq!(server.document(&doc).await.unwrap(), (json!({}), concord_engine::Version(0)));
    bad.commit("d", "t-9", 0, json!([]), json!([{"op": "add", "path": "/fine", "value": true}]))
        .await;
    assert_eq!(bad.expect("committed").await["version"], 1);
    let change = other.expect("change").await;
    assert_eq!(change["tx_id"], "t-9");
    assert_eq!(change["version"], 1);
    server.shutdown().await;
}

async fn within_binary(client: &mut Client) {
    crate::support::within("send", client.ws.send(Message::binary(vec![1u8, 2, 3]))).await.unwrap();
}

#[tokio::test]
async fn a_message_over_the_transport_limit_closes_only_that_session_with_1009() {
    let server = start(small_limits()).await;
    let mut huge = Client::connect(&server).await;
    let mut other = Client::connect(&server).await;
    other.open("d", None).await;

    huge.send_text("x".repeat(200 * 1024)).await;
    assert_eq!(huge.until_end().await, End::Close(Some(close_code::MESSAGE_TOO_BIG)));

    other.commit("d", "o-1", 0, json!([]), json!([{"op": "add", "path": "/x", "value": 1}])).await;
    assert_eq!(other.expect("committed").await["version"], 1);
    server.shutdown().await;
}

#[tokio::test]
async fn a_session_over_its_rate_gets_rate_limited_for_the_dropped_messages() {
    let config =
        Config { rate_messages_per_second: 5, rate_burst_messages_max: 5, ..Config::default() };
    let server = start(config).await;
    let mut a = Client::connect(&server).await;
    a.send(json!({"type": "open", "doc": "d"})).await;
    for i in 0..10 {
        a.commit(
            "d",
            &format!("t-{i}"),
            0,
            json!([]),
            json!([{"op": "incr", "path": "/n", "value": 1}]),
        )
        .await;
    }
    let mut committed = 0;
    let mut limited = Vec::new();
    // 1 open + 10 commits were sent; the burst of 5 lets the first 5 through.
    let mut answers = 0;
    while answers < 10 {
        let message = a.recv().await;
        match message["type"].as_str().unwrap() {
            "snapshot" | "opened" => continue,
            "committed" => committed += 1,
            "error" => {
                assert_eq!(message["code"], "rate_limited");
                limited.push(message["tx_id"].as_str().unwrap().to_owned());
            }
            other => panic!("unexpected {other}: {message}"),
        }
        answers += 1;
    }
    assert!(committed >= 4, "the burst lets the first messages through");
    assert!(!limited.is_empty(), "messages past the burst are refused");
    let (value, _) = server.document(&DocId::parse("d").unwrap()).await.unwrap();
    assert_eq!(value["n"], committed);
    server.shutdown().await;
}

#[tokio::test]
async fn per_session_counts_are_bounded() {
    let config = Config { open_docs_max: 2, subscriptions_max: 1, ..Config::default() };
    let server = start(config).await;
    let mut a = Client::connect(&server).await;
    a.open("d1", None).await;
    a.open("d2", None).await;
    a.send(json!({"type": "open", "doc": "d3"})).await;
    assert_eq!(a.expect_error("limit_reached").await["doc"], "d3");
    a.send(json!({"type": "subscribe", "topic": "a.b"})).await;
    a.expect("subscribed").await;
    a.send(json!({"type": "subscribe", "topic": "a.c"})).await;
    a.expect_error("limit_reached").await;
    a.send(json!({"type": "subscribe", "topic": "a..c"})).await;
    a.expect_error("bad_id").await;
    server.shutdown().await;
}

#[tokio::test]
async fn the_number_of_documents_is_bounded_and_existing_ones_stay_writable() {
    let limits = Limits { patch_ops_max: 2, ..Limits::default() };
    let config = Config { docs_max: 2, shards: 2, limits, ..Config::default() };
    let server = start(config).await;
    let mut a = Client::connect(&server).await;
    for doc in ["d1", "d2", "d3"] {
        a.open(doc, None).await;
    }
    let write = json!([{"op": "add", "path": "/n", "value": 1}]);
    // Refused before it reaches a document: creates none, takes no slot.
    let too_large = json!([{"op": "add", "path": "/a", "value": 1},
        {"op": "add", "path": "/b", "value": 1}, {"op": "add", "path": "/c", "value": 1}]);
    a.commit("d3", "t0", 0, json!([]), too_large).await;
    assert_eq!(a.expect("rejected").await["rejection"]["reason"], "too_large");
    a.commit("d1", "t1", 0, json!([]), write.clone()).await;
    a.expect("committed").await;
    a.commit("d2", "t2", 0, json!([]), write.clone()).await;
    a.expect("committed").await;

    a.commit("d3", "t3", 0, json!([]), write.clone()).await;
    let refused = a.expect_error("limit_reached").await;
    assert_eq!((&refused["doc"], &refused["tx_id"]), (&json!("d3"), &json!("t3")));
    let d3 = server.document(&DocId::parse("d3").unwrap()).await.unwrap();
    assert_eq!(d3, (json!({}), concord_engine::Version(0)), "nothing was created");

    a.commit("d1", "t4", 1, json!([]), json!([{"op": "incr", "path": "/n", "value": 1}])).await;
    a.expect("committed").await;
    let (d1, _) = server.document(&DocId::parse("d1").unwrap()).await.unwrap();
    assert_eq!(d1["n"], 2);
    server.shutdown().await;
}
