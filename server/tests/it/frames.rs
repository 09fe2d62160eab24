//! Framing (docs/protocol.md, section 1): one message per frame by default;
//! with `/ws?batch=1`, messages the writer sends out together share one
//! frame as a JSON array, in order.

use std::time::Duration;

use concord_server::Config;
use serde_json::{json, Value};

use crate::support::{start, Client};

/// Long enough that the whole reply to an `open` sent right after `welcome`
/// queues within the window that follows the welcome's flush.
const WIDE_WINDOW: Duration = Duration::from_secs(1);

/// A document with five commits, on a server whose writers coalesce over
/// `WIDE_WINDOW`.
async fn five_commits() -> concord_server::RunningServer {
    let server = start(Config { writer_coalesce_window: WIDE_WINDOW, ..Config::default() }).await;
    let mut writer = Client::connect(&server).await;
    writer.open("d", None).await;
    // Sent back to back, so the writer's window is waited out once or twice,
    // not once per commit.
    for k in 0..5u64 {
        let write = json!([{"op": "add", "path": format!("/k{k}"), "value": k}]);
        writer.commit("d", &format!("t{k}"), 0, json!([]), write).await;
    }
    for _ in 0..5 {
        writer.expect("committed").await;
    }
    server
}

fn types(messages: &[Value]) -> Vec<&str> {
    messages.iter().map(|message| message["type"].as_str().unwrap_or("?")).collect()
}

#[tokio::test]
async fn a_batching_session_gets_what_is_written_together_as_one_array_frame_in_order() {
    let server = five_commits().await;
    // `connect_url` asserts that the first frame is `welcome` on its own.
    let mut reader = Client::connect_url(&format!("{}?batch=1", server.ws_url())).await;
    reader.send(json!({"type": "open", "doc": "d", "version": 0})).await;
    let frame = reader.recv().await;
    let messages = frame.as_array().unwrap_or_else(|| panic!("an array frame, got {frame}"));
    assert_eq!(types(messages), ["change", "change", "change", "change", "change", "opened"]);
    let versions: Vec<_> = messages.iter().map(|message| message["version"].as_u64()).collect();
    let expected: Vec<_> = [1, 2, 3, 4, 5, 5].into_iter().map(Some).collect();
    assert_eq!(versions, expected);
}

#[tokio::test]
async fn a_session_that_did_not_ask_gets_one_message_per_frame() {
    let server = five_commits().await;
    for url in [server.ws_url(), format!("{}?batch=0", server.ws_url())] {
        let mut reader = Client::connect_url(&url).await;
        reader.send(json!({"type": "open", "doc": "d", "version": 0})).await;
        let mut frames = Vec::new();
        while frames.last().is_none_or(|frame: &Value| frame["type"] != "opened") {
            let frame = reader.recv().await;
            assert!(frame.is_object(), "one message per frame at {url}, got {frame}");
            frames.push(frame);
        }
        assert_eq!(types(&frames), ["change", "change", "change", "change", "change", "opened"]);
    }
}

#[tokio::test]
async fn a_batch_parameter_other_than_0_or_1_is_refused_before_the_upgrade() {
    let server = start(Config::default()).await;
    let url = format!("{}?batch=yes", server.ws_url());
    let error = tokio_tungstenite::connect_async(url.as_str()).await.unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = error else {
        panic!("expected an HTTP refusal, got {error}");
    };
    assert_eq!(response.status(), 400);
}
