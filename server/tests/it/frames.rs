//! Framing and coalescing (docs/protocol.md, section 1): one message per
//! frame by default; with `/ws?batch=1`, messages the writer sends out
//! together share one frame as a JSON array, in order. Changes to a busy
//! session wait out the writer's coalescing window; replies do not, nor do
//! changes to a session just rejected on the document.

use std::time::Duration;

use concord_server::{Config, RunningServer};
use serde_json::{json, Value};

use crate::support::{start, within, Client};

/// The messages of one frame, in order, and whether it was an array.
async fn recv_frame(client: &mut Client) -> (Vec<Value>, bool) {
    match client.recv().await {
        Value::Array(messages) => (messages, true),
        message => (vec![message], false),
    }
}

/// Reads frames until at least `count` messages have arrived; all of them.
async fn recv_messages(client: &mut Client, count: usize) -> Vec<Value> {
    let mut messages = Vec::new();
    while messages.len() < count {
        messages.extend(recv_frame(client).await.0);
    }
    messages
}

/// Reads frames until `count` changes have arrived; returns their versions
/// in arrival order and the frames' sizes (in messages).
async fn changes(client: &mut Client, count: usize) -> (Vec<u64>, Vec<usize>, bool) {
    let (mut versions, mut sizes, mut any_array) = (Vec::new(), Vec::new(), false);
    while versions.len() < count {
        let (messages, array) = recv_frame(client).await;
        any_array |= array;
        sizes.push(messages.len());
        for message in messages {
            assert_eq!(message["type"], "change", "{message}");
            versions.extend(message["version"].as_u64());
        }
    }
    (versions, sizes, any_array)
}

/// Opens `doc`, reading frames up to `opened`.
async fn open(client: &mut Client, doc: &str) {
    client.send(json!({"type": "open", "doc": doc})).await;
    loop {
        let (messages, _) = recv_frame(client).await;
        if messages.iter().any(|message| message["type"] == "opened") {
            return;
        }
    }
}

/// Five commits to `d` by a client of its own, sent back to back.
async fn commit_five(server: &RunningServer) {
    let mut writer = Client::connect(server).await;
    open(&mut writer, "d").await;
    for k in 0..5u64 {
        let write = json!([{"op": "add", "path": format!("/k{k}"), "value": k}]);
        writer.commit("d", &format!("t{k}"), 0, json!([]), write).await;
    }
    for _ in 0..5 {
        writer.expect("committed").await;
    }
}

fn coalescing_over(window: Duration) -> Config {
    Config { writer_coalesce_window: window, ..Config::default() }
}

/// A session connected with `/ws?batch=<batch>`; `connect_url` asserts that
/// its first frame is `welcome`, alone.
async fn connect_with_batch(server: &RunningServer, batch: &str) -> Client {
    Client::connect_url(&format!("{}?batch={batch}", server.ws_url())).await
}

/// A server coalescing over `window`, with a batching session and a plain
/// one both on document `d`.
async fn batching_and_plain_on_d(window: Duration) -> (RunningServer, Client, Client) {
    let server = start(coalescing_over(window)).await;
    let mut batching = connect_with_batch(&server, "1").await;
    open(&mut batching, "d").await;
    let mut plain = Client::connect(&server).await;
    open(&mut plain, "d").await;
    (server, batching, plain)
}

#[tokio::test]
async fn a_batching_session_gets_changes_that_queue_together_as_one_array_frame_in_order() {
    let server = start(coalescing_over(Duration::from_secs(1))).await;
    let mut reader = connect_with_batch(&server, "1").await;
    open(&mut reader, "d").await;
    commit_five(&server).await;
    let (versions, sizes, any_array) = changes(&mut reader, 5).await;
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    // All five queue within one window of the reply to `open`, unless the
    // machine stalls for a second: at worst they split, still as arrays.
    assert!(any_array && sizes.len() < 5, "frames of {sizes:?} messages");
}

#[tokio::test]
async fn a_session_that_did_not_ask_gets_one_message_per_frame() {
    let server = start(coalescing_over(Duration::from_secs(1))).await;
    let mut plain = Client::connect(&server).await;
    let mut batch_0 = connect_with_batch(&server, "0").await;
    open(&mut plain, "d").await;
    open(&mut batch_0, "d").await;
    commit_five(&server).await;
    for reader in [&mut plain, &mut batch_0] {
        let (versions, sizes, any_array) = changes(reader, 5).await;
        assert_eq!(versions, [1, 2, 3, 4, 5]);
        assert!(!any_array && sizes == [1, 1, 1, 1, 1], "frames of {sizes:?} messages");
    }
}

#[tokio::test]
async fn a_reply_ends_the_coalescing_wait_and_takes_what_queued_before_it() {
    // A window far longer than the wait below: a held change can only come
    // early if the reply that follows it ends the wait.
    let window = Duration::from_secs(10);
    let (_server, mut reader, mut writer) = batching_and_plain_on_d(window).await;
    let write = json!([{"op": "add", "path": "/by_writer", "value": 1}]);
    writer.commit("d", "w1", 0, json!([]), write).await;
    writer.expect("committed").await;
    // The writer's change now waits in the reader's queue; the reader's own
    // commit is answered at once, with the change before it.
    let write = json!([{"op": "add", "path": "/by_reader", "value": 2}]);
    reader.commit("d", "r1", 1, json!([]), write).await;
    let messages = tokio::time::timeout(window / 2, recv_messages(&mut reader, 2))
        .await
        .expect("the reply and the change before it, well within the window");
    let types: Vec<_> = messages.iter().map(|message| message["type"].clone()).collect();
    assert_eq!(types, ["change", "committed"]);
    assert_eq!(messages[1]["version"], 2);
}

#[tokio::test]
async fn a_session_just_rejected_on_a_document_gets_its_changes_without_the_wait() {
    let window = Duration::from_secs(10);
    let (_server, mut contender, mut winner) = batching_and_plain_on_d(window).await;
    let bump = |value: u64| json!([{"op": "add", "path": "/n", "value": value}]);
    winner.commit("d", "w1", 0, json!(["/n"]), bump(1)).await;
    winner.expect("committed").await;
    // The contender read /n at version 0: rejected, with the change before
    // the rejection (a reply, so at once).
    contender.commit("d", "c1", 0, json!(["/n"]), bump(1)).await;
    let messages = recv_messages(&mut contender, 2).await;
    assert_eq!(messages[1]["type"], "rejected", "{messages:?}");
    // The winner commits again: the contender's re-run needs that change
    // now, not a window later.
    winner.commit("d", "w2", 1, json!(["/n"]), bump(2)).await;
    winner.expect("committed").await;
    let (versions, _, _) = tokio::time::timeout(window / 2, changes(&mut contender, 1))
        .await
        .expect("the change well within the window");
    assert_eq!(versions, [2]);
}

#[tokio::test]
async fn a_batch_parameter_other_than_0_or_1_is_refused_before_the_upgrade() {
    let server = start(Config::default()).await;
    let url = format!("{}?batch=yes", server.ws_url());
    let refused = within("the refusal", tokio_tungstenite::connect_async(url.as_str())).await;
    let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
        panic!("expected an HTTP refusal, got {refused:?}");
    };
    assert_eq!(response.status(), 400);
}
