//! Resume after a lost connection (docs/protocol.md, section 8): a socket cut while changes
//! stream, an acknowledgement lost after the commit, and a server that goes
//! silent. Each must end with no lost change, no duplicate, and every
//! transaction committed exactly once.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use concord_client::{
    Changes, Client, ClientConfig, Document, DocumentEvent, Pointer, TransactError, TxResult,
};
use concord_engine::Limits;
use concord_server::Config;
use serde_json::json;

use crate::support::{
    certify, connect, doc_id, fast_config, start_server, start_server_with, Proxy,
};

fn ptr(raw: &str) -> Pointer {
    Pointer::parse(raw).unwrap()
}

/// A read-modify-write increment of `/{field}`, returning the new value.
async fn bump(doc: &Document, field: &str) -> i64 {
    let pointer = ptr(&format!("/{field}"));
    doc.transact(move |tx| -> TxResult<i64> {
        let next = tx.get_i64(&pointer).unwrap_or(0) + 1;
        tx.set(&pointer, next.into())?;
        Ok(next)
    })
    .await
    .unwrap()
}

/// Follows `changes` until `version`, appending each change's version to
/// `seen`; a reset or a lag would mean changes were not delivered one by one.
async fn follow(changes: &mut Changes, seen: &mut Vec<u64>, version: u64) {
    while seen.last().copied().unwrap_or(0) < version {
        match changes.next().await.unwrap() {
            DocumentEvent::Changed(change) => seen.push(change.version.0),
            other => panic!("expected only changes, got {other:?}"),
        }
    }
}

/// Waits until `changes` reports `version` (by a change or a reset).
async fn reach(changes: &mut Changes, version: u64) {
    loop {
        let reached = match changes.next().await.unwrap() {
            DocumentEvent::Changed(change) => change.version.0,
            DocumentEvent::Reset { version } => version.0,
            DocumentEvent::Lagged { .. } => 0,
        };
        if reached >= version {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_cut_mid_stream_loses_and_duplicates_nothing() {
    const ROUNDS: u64 = 3;
    const LIVE_WRITES: u64 = 40;
    const MISSED_WRITES: u64 = 20;
    let server = start_server().await;
    let proxy = Proxy::start(server.local_addr()).await;
    let watcher = connect(&proxy.url()).await;
    let writer = connect(&server.ws_url()).await;
    let writer_doc = writer.open("stream").await.unwrap();
    let watcher_doc = watcher.open("stream").await.unwrap();
    let mut writer_changes = writer_doc.changes();
    let mut watcher_changes = watcher_doc.changes();
    let mut seen = Vec::new();
    let mut expected = 0;

    for round in 1..=ROUNDS {
        for _ in 0..LIVE_WRITES {
            bump(&writer_doc, "w").await;
        }
        expected += LIVE_WRITES;
        // Everything the server sends from here on is lost with the socket:
        // changes the watcher must catch up on, and the acknowledgement of
        // its own transaction.
        proxy.freeze();
        for _ in 0..MISSED_WRITES {
            bump(&writer_doc, "w").await;
        }
        let own = {
            let doc = watcher_doc.clone();
            tokio::spawn(async move { bump(&doc, "s").await })
        };
        expected += MISSED_WRITES + 1;
        let mut writer_seen = Vec::new();
        follow(&mut writer_changes, &mut writer_seen, expected).await;
        proxy.sever();

        assert_eq!(own.await.unwrap(), round as i64);
        follow(&mut watcher_changes, &mut seen, expected).await;
    }

    assert_eq!(seen, (1..=expected).collect::<Vec<_>>(), "every version once, in order");
    assert_eq!(watcher.stats().disconnects, ROUNDS);
    let (value, version) = server.document(&doc_id("stream")).await.unwrap();
    assert_eq!(value, json!({"w": ROUNDS * (LIVE_WRITES + MISSED_WRITES), "s": ROUNDS}));
    assert_eq!(version.0, expected);
    assert_eq!(watcher_doc.value().await.unwrap(), value);
    let certificate = certify(&server, &["stream"]).await;
    assert_eq!(certificate.commits() as u64, expected);
}

/// The client's commit reaches the server, which commits it, but the
/// acknowledgement dies with the connection. With a short change history the
/// client must reload from a snapshot that already holds its commit.
async fn a_lost_acknowledgement_resolves_once(history_max: usize) -> Client {
    let server =
        start_server_with(Config { change_history_max: history_max, ..Config::default() }).await;
    let proxy = Proxy::start(server.local_addr()).await;
    let client = connect(&proxy.url()).await;
    let observer = connect(&server.ws_url()).await;
    let doc = client.open("acks").await.unwrap();
    let observer_doc = observer.open("acks").await.unwrap();
    let mut observed = observer_doc.changes();
    let mut changes = doc.changes();

    proxy.freeze();
    let continuations = Arc::new(AtomicU32::new(0));
    let hits = ptr("/hits");
    let task = {
        let continuations = continuations.clone();
        doc.transact(move |tx| -> TxResult<()> { Ok(tx.increment(&hits, 1)?) })
            .after_commit(move |_, receipt| {
                assert_eq!(receipt.version.0, 1);
                continuations.fetch_add(1, Ordering::SeqCst);
            })
            .spawn()
    };
    reach(&mut observed, 1).await;
    for _ in 0..3 {
        bump(&observer_doc, "other").await;
    }
    proxy.sever();

    task.await.unwrap();
    assert_eq!(continuations.load(Ordering::SeqCst), 1);
    reach(&mut changes, 4).await;
    let (value, _) = server.document(&doc_id("acks")).await.unwrap();
    assert_eq!(value, json!({"hits": 1, "other": 3}));
    assert_eq!(doc.value().await.unwrap(), value, "the increment is in the replica once");
    assert_eq!(client.stats().disconnects, 1);
    assert_eq!(client.stats().committed, 1);
    // The checker refuses a log where one tx id committed twice.
    let certificate = certify(&server, &["acks"]).await;
    assert_eq!(certificate.commits(), 4);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_acknowledgement_is_recovered_from_the_missed_changes() {
    let client = a_lost_acknowledgement_resolves_once(Config::default().change_history_max).await;
    assert_eq!(client.stats().resyncs, 0, "caught up change by change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_acknowledgement_is_recovered_by_resubmission_after_a_snapshot() {
    let client = a_lost_acknowledgement_resolves_once(1).await;
    assert_eq!(client.stats().resyncs, 1, "reloaded from a snapshot");
}

/// A server that forgets fast: its dedup window keeps two generations of two
/// tx ids, and it keeps one change of history (so a resume gets a snapshot).
async fn start_forgetful_server() -> concord_server::RunningServer {
    start_server_with(Config {
        change_history_max: 1,
        limits: Limits { tx_dedup_entries_max: 2, ..Limits::default() },
        ..Config::default()
    })
    .await
}

/// Five acknowledged commits after version `after`: the window turns over
/// twice, so every id from before them is forgotten.
async fn outlast_the_dedup_window(doc: &Document) {
    for _ in 0..5 {
        bump(doc, "other").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_acknowledgement_whose_id_was_forgotten_is_reported_unknown_not_committed_twice() {
    let server = start_forgetful_server().await;
    let proxy = Proxy::start(server.local_addr()).await;
    let client = connect(&proxy.url()).await;
    let observer = connect(&server.ws_url()).await;
    let doc = client.open("forgotten").await.unwrap();
    let observer_doc = observer.open("forgotten").await.unwrap();
    let mut observed = observer_doc.changes();

    // The increment commits; its acknowledgement is held, then lost.
    proxy.freeze();
    let hits = ptr("/hits");
    let task = doc.transact(move |tx| -> TxResult<()> { Ok(tx.increment(&hits, 1)?) }).spawn();
    reach(&mut observed, 1).await;
    outlast_the_dedup_window(&observer_doc).await;
    proxy.sever();

    // Resubmitted from a snapshot, the increment's id is unknown to the
    // server: committing it again would count it twice.
    let error = task.await.unwrap_err();
    assert!(matches!(error, TransactError::OutcomeUnknown), "{error:?}");
    let (value, version) = server.document(&doc_id("forgotten")).await.unwrap();
    assert_eq!(value, json!({"hits": 1, "other": 5}), "the increment counted once");
    assert_eq!(client.stats().committed, 0);
    assert_eq!(client.stats().reruns, 0, "not re-run");
    let mut changes = doc.changes();
    if doc.value().await.unwrap() != value {
        reach(&mut changes, version.0).await;
    }
    assert_eq!(doc.value().await.unwrap(), value, "the replica shows what happened");
    certify(&server, &["forgotten"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_submission_based_before_forgotten_ids_is_re_run_and_commits_once() {
    let server = start_forgetful_server().await;
    let proxy = Proxy::start(server.local_addr()).await;
    let client = connect(&proxy.url()).await;
    let observer = connect(&server.ws_url()).await;
    let doc = client.open("behind").await.unwrap();
    let observer_doc = observer.open("behind").await.unwrap();

    // The client's replica stays at version 0 while the window forgets the
    // ids of versions 1 and 2, so its increment goes out based at 0.
    proxy.freeze();
    outlast_the_dedup_window(&observer_doc).await;
    let hits = ptr("/hits");
    let (first_run_tx, first_run) = tokio::sync::mpsc::unbounded_channel();
    let task = doc
        .transact(move |tx| -> TxResult<()> {
            let _ = first_run_tx.send(());
            Ok(tx.increment(&hits, 1)?)
        })
        .spawn();
    // Its first run is over, so its base is fixed at 0 (no change can
    // arrive while frozen), before the thaw lets the changes in.
    let mut first_run = first_run;
    first_run.recv().await.unwrap();
    proxy.thaw();

    // Never sent before, it cannot have committed: `outcome_unknown` is
    // only stale for it, and the re-run on the current replica commits.
    task.await.unwrap();
    assert_eq!(client.stats().rejections, 1, "outcome_unknown once");
    assert_eq!(client.stats().reruns, 1);
    assert_eq!(client.stats().committed, 1);
    let (value, version) = server.document(&doc_id("behind")).await.unwrap();
    assert_eq!(value, json!({"hits": 1, "other": 5}));
    assert_eq!(version.0, 6);
    certify(&server, &["behind"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_is_detected_and_the_session_resumed() {
    let server = start_server().await;
    let proxy = Proxy::start(server.local_addr()).await;
    let config = ClientConfig {
        ping_interval: Duration::from_millis(50),
        silence_timeout: Duration::from_millis(300),
        ..fast_config()
    };
    let client = Client::connect_with(&proxy.url(), config).await.unwrap();
    let doc = client.open("silence").await.unwrap();
    proxy.freeze();
    // The commit reaches the server; its acknowledgement and the pongs do
    // not come back until the client gives up on the connection.
    assert_eq!(bump(&doc, "n").await, 1);
    assert_eq!(client.stats().disconnects, 1);
    let (value, _) = server.document(&doc_id("silence")).await.unwrap();
    assert_eq!(value, json!({"n": 1}));
    certify(&server, &["silence"]).await;
}
