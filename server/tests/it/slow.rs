//! A subscriber that stops reading (issue 3, test 4), and a peer that stops
//! answering pings.

use std::time::Duration;

use concord_engine::protocol::close_code;
use concord_server::Config;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::support::{start, start_default, wait_until, Client, End};

const QUEUE_BYTES_MAX: usize = 256 * 1024;
const CHANGE_BYTES: usize = 16 * 1024;
/// Enough data to fill the loopback socket buffers many times over; the test
/// fails if the slow session has not overflowed by then.
const COMMITS_MAX: u64 = 4_000;

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_closed_within_its_bound_while_others_flow() {
    let config = Config {
        outbound_queue_messages_max: 64,
        outbound_queue_bytes_max: QUEUE_BYTES_MAX,
        close_timeout: Duration::from_millis(200),
        rate_messages_per_second: 1_000_000,
        rate_burst_messages_max: 1_000_000,
        ..Config::default()
    };
    let server = start(config).await;
    let mut slow = Client::connect(&server).await;
    let (_, slow_version) = slow.open("d", None).await;
    let mut reader = Client::connect(&server).await;
    reader.open("d", None).await;
    let mut writer = Client::connect(&server).await;
    writer.open("d", None).await;

    // `slow` reads nothing from here on.
    let blob = "b".repeat(CHANGE_BYTES);
    let mut version = 0;
    let overflowed = || server.metrics().outbound_overflows.get() >= 1;
    while !overflowed() {
        assert!(version < COMMITS_MAX, "the slow session never overflowed");
        let write = json!([{"op": "add", "path": "/blob", "value": format!("{blob}{version}")}]);
        writer.commit("d", &format!("w-{version}"), version, json!([]), write).await;
        version = writer.expect("committed").await["version"].as_u64().unwrap();
        let change = reader.expect("change").await;
        assert_eq!(change["version"], version, "the reader sees every change in order");
    }
    // Memory stayed bounded: no session's queue ever held more than the bound.
    let high_water = server.metrics().outbound_queue_high_water_bytes.get();
    assert!(high_water as usize <= QUEUE_BYTES_MAX, "high water {high_water}");
    assert_eq!(server.metrics().outbound_overflows.get(), 1);

    // Other clients' changes keep flowing.
    for _ in 0..20 {
        let write = json!([{"op": "incr", "path": "/n", "value": 1}]);
        writer.commit("d", &format!("w-{version}"), version, json!([]), write).await;
        version = writer.expect("committed").await["version"].as_u64().unwrap();
        assert_eq!(reader.expect("change").await["version"], version);
    }

    // The slow session was closed as documented: 4001 if the close frame
    // could be written, otherwise the connection was dropped.
    let end = slow.until_end().await;
    assert!(
        matches!(end, End::Close(Some(close_code::SLOW_CONSUMER)) | End::Eof | End::Error),
        "{end:?}"
    );
    let closed =
        || server.metrics().sessions_closed.with_label_values(&["slow_consumer"]).get() == 1;
    wait_until("the slow session to be counted as closed", closed).await;

    // It resumes by reopening at the version it held; the history (4 MiB)
    // no longer reaches back that far, so it gets a snapshot.
    let mut resumed = Client::connect(&server).await;
    let (before, opened) = resumed.open("d", Some(slow_version)).await;
    assert_eq!(opened, version);
    let last = before.last().unwrap();
    assert!(last["type"] == "snapshot" || last["version"] == version, "{last}");
    server.shutdown().await;
}

/// A resume that missed more changes than the outbound queue takes in one
/// burst gets a snapshot, not a catch-up that would close it as a slow
/// consumer before it could read; a short gap still gets the changes.
#[tokio::test]
async fn a_resume_too_far_behind_for_the_queue_gets_a_snapshot_instead_of_a_4001() {
    let config = Config { outbound_queue_messages_max: 8, ..Config::default() };
    let server = start(config).await;
    let mut writer = Client::connect(&server).await;
    writer.open("d", None).await;
    let mut version = 0;
    for i in 0..20 {
        let write = json!([{"op": "add", "path": "/n", "value": i}]);
        writer.commit("d", &format!("w-{i}"), version, json!([]), write).await;
        version = writer.expect("committed").await["version"].as_u64().unwrap();
    }
    let mut far = Client::connect(&server).await;
    let (before, opened) = far.open("d", Some(1)).await;
    assert_eq!(opened, version);
    let kinds: Vec<&Value> = before.iter().map(|m| &m["type"]).collect();
    assert_eq!(kinds, ["snapshot"], "19 missed changes do not fit a queue of 8");
    assert_eq!(before[0]["value"], json!({"n": 19}));
    let mut near = Client::connect(&server).await;
    let (before, _) = near.open("d", Some(version - 3)).await;
    let versions: Vec<u64> = before.iter().map(|m| m["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, [version - 2, version - 1, version], "{before:?}");
    assert!(before.iter().all(|m| m["type"] == "change"));
    // Both sessions are alive and get the next change.
    writer
        .commit(
            "d",
            "w-last",
            version,
            json!([]),
            json!([{"op": "incr", "path": "/n", "value": 1}]),
        )
        .await;
    writer.expect("committed").await;
    assert_eq!(far.expect("change").await["version"], version + 1);
    assert_eq!(near.expect("change").await["version"], version + 1);
    server.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_never_answers_pings_is_closed_with_4002() {
    let config = Config {
        ping_interval: Duration::from_millis(50),
        // Long enough that the live client, answering from a task on a
        // loaded CI machine, is never late by it.
        dead_peer_timeout: Duration::from_millis(1_000),
        ..Config::default()
    };
    let server = start(config).await;
    let silent = Client::connect(&server).await;
    let mut live = Client::connect(&server).await;
    // The live client keeps reading (and so answers pings) in a task while
    // the silent one never polls its socket.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let reading = tokio::spawn(async move {
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => return live,
                frame = live.ws.next() => assert!(matches!(frame, Some(Ok(_))), "{frame:?}"),
            }
        }
    });
    let closed =
        || server.metrics().sessions_closed.with_label_values(&["peer_timeout"]).get() == 1;
    wait_until("the silent peer to be closed", closed).await;
    stop.send(()).unwrap();
    let mut live = reading.await.unwrap();
    let mut silent = silent;
    assert_eq!(silent.until_end().await, End::Close(Some(close_code::PEER_TIMEOUT)));
    // The live one is still there.
    live.send(json!({"type": "subscribe", "topic": "still.here"})).await;
    live.expect("subscribed").await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_ping_message_is_answered_with_pong() {
    let server = start_default().await;
    let mut client = Client::connect(&server).await;
    client.send(json!({"type": "ping"})).await;
    assert_eq!(client.recv().await, json!({"type": "pong"}));
    // Again: a ping asks for nothing else and changes nothing.
    client.send(json!({"type": "ping"})).await;
    assert_eq!(client.recv().await, json!({"type": "pong"}));
    server.shutdown().await;
}
