//! Documents over the wire: open, catch-up, snapshot, commit acknowledgement
//! and the ordering guarantees of docs/protocol.md, section 6.

use concord_engine::certificate::Checker;
use concord_engine::DocId;
use concord_server::Config;
use serde_json::json;

use crate::support::{start, start_default, Client};

#[tokio::test]
async fn opening_a_new_document_gives_an_empty_snapshot_at_version_zero() {
    let server = start_default().await;
    let mut a = Client::connect(&server).await;
    let (before, version) = a.open("fresh", None).await;
    assert_eq!(
        before,
        vec![json!({"type": "snapshot", "doc": "fresh", "version": 0, "value": {}})]
    );
    assert_eq!(version, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn the_submitter_gets_committed_instead_of_the_change_and_others_get_the_change() {
    let server = start_default().await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.open("d", None).await;
    b.open("d", None).await;

    let set_x = json!([{"op": "add", "path": "/x", "value": 1}]);
    a.commit("d", "a-1", 0, json!([]), set_x.clone()).await;
    let committed = a.expect("committed").await;
    assert_eq!(committed, json!({"type": "committed", "doc": "d", "tx_id": "a-1", "version": 1}));
    let change = b.expect("change").await;
    assert_eq!(
        change,
        json!({"type": "change", "doc": "d", "version": 1, "tx_id": "a-1", "patch": set_x})
    );

    // A never sees its own change: the next thing it gets is B's change.
    b.commit("d", "b-1", 1, json!([]), json!([{"op": "add", "path": "/y", "value": 2}])).await;
    b.expect("committed").await;
    let next = a.expect("change").await;
    assert_eq!(next["tx_id"], "b-1");
    assert_eq!(next["version"], 2);
    server.shutdown().await;
}

#[tokio::test]
async fn a_conflict_is_rejected_after_the_change_that_caused_it() {
    let server = start(Config { record_commit_log: true, ..Config::default() }).await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.open("d", None).await;
    b.open("d", None).await;

    // Both read /x at version 0; B commits first.
    let write = |v| json!([{"op": "add", "path": "/x", "value": v}]);
    b.commit("d", "b-1", 0, json!(["/x"]), write(1)).await;
    b.expect("committed").await;
    a.commit("d", "a-1", 0, json!(["/x"]), write(2)).await;

    let change = a.expect("change").await;
    assert_eq!(change["tx_id"], "b-1");
    let rejected = a.expect("rejected").await;
    assert_eq!(rejected["tx_id"], "a-1");
    assert_eq!(rejected["rejection"]["reason"], "conflict");
    assert_eq!(rejected["rejection"]["conflicts"][0]["pointer"], "/x");
    assert_eq!(rejected["rejection"]["conflicts"][0]["version"], 1);
    assert_eq!(rejected["rejection"]["conflicts"][0]["tx_id"], "b-1");

    // The re-run on the now-current replica commits.
    a.commit("d", "a-2", 1, json!(["/x"]), write(2)).await;
    assert_eq!(a.expect("committed").await["version"], 2);
    let log = server.commit_log();
    assert_eq!(log.len(), 2);
    Checker::new().replay(&log).unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_resubmitted_tx_id_gets_its_original_outcome_and_never_commits_twice() {
    let server = start_default().await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.open("d", None).await;
    b.open("d", None).await;

    let incr = json!([{"op": "incr", "path": "/n", "value": 1}]);
    a.commit("d", "t-1", 0, json!([]), incr.clone()).await;
    assert_eq!(a.expect("committed").await["version"], 1);
    a.commit("d", "t-1", 0, json!([]), incr.clone()).await;
    let again = a.expect("committed").await;
    assert_eq!(again, json!({"type": "committed", "doc": "d", "tx_id": "t-1", "version": 1}));

    // B saw the change once; the resubmission made none.
    assert_eq!(b.expect("change").await["tx_id"], "t-1");

    // A rejection is remembered too.
    b.commit("d", "b-1", 1, json!([]), json!([{"op": "add", "path": "/x", "value": 1}])).await;
    b.expect("committed").await;
    a.expect("change").await;
    let stale_read = json!([{"op": "add", "path": "/x", "value": 2}]);
    a.commit("d", "t-2", 1, json!(["/x"]), stale_read.clone()).await;
    let first = a.expect("rejected").await;
    a.commit("d", "t-2", 1, json!(["/x"]), stale_read).await;
    let second = a.expect("rejected").await;
    assert_eq!(first, second);

    let (value, version) = server.document(&DocId::parse("d").unwrap()).await.unwrap();
    assert_eq!(value, json!({"n": 1, "x": 1}));
    assert_eq!(version.0, 2);
    server.shutdown().await;
}

#[tokio::test]
async fn reopening_with_a_version_sends_only_the_missing_changes_including_own_ones() {
    let server = start_default().await;
    let mut a = Client::connect(&server).await;
    a.open("d", None).await;
    for i in 1..=3 {
        let write = json!([{"op": "add", "path": format!("/k{i}"), "value": i}]);
        a.commit("d", &format!("a-{i}"), i - 1, json!([]), write).await;
    }
    for _ in 1..=3 {
        a.expect("committed").await;
    }
    drop(a);

    let mut again = Client::connect(&server).await;
    let (before, version) = again.open("d", Some(1)).await;
    assert_eq!(version, 3);
    let versions: Vec<_> =
        before.iter().map(|m| (m["type"].clone(), m["version"].clone())).collect();
    assert_eq!(versions, vec![(json!("change"), json!(2)), (json!("change"), json!(3))]);
    // Its own transactions come back as plain changes, with their tx ids.
    assert_eq!(before[0]["tx_id"], "a-2");

    // Holding the current version: nothing but `opened`.
    let mut current = Client::connect(&server).await;
    let (before, version) = current.open("d", Some(3)).await;
    assert!(before.is_empty());
    assert_eq!(version, 3);
    server.shutdown().await;
}

#[tokio::test]
async fn a_version_older_than_the_history_gets_a_snapshot() {
    let server = start(Config { change_history_max: 4, ..Config::default() }).await;
    let mut a = Client::connect(&server).await;
    a.open("d", None).await;
    for i in 1..=10u64 {
        a.commit(
            "d",
            &format!("a-{i}"),
            i - 1,
            json!([]),
            json!([{"op": "incr", "path": "/n", "value": 1}]),
        )
        .await;
        a.expect("committed").await;
    }
    let mut late = Client::connect(&server).await;
    let (before, version) = late.open("d", Some(2)).await;
    assert_eq!(version, 10);
    assert_eq!(
        before,
        vec![json!({"type": "snapshot", "doc": "d", "version": 10, "value": {"n": 10}})]
    );

    // The history holds versions 7..=10, so a client at 6 can catch up.
    let (before, _) = late.open("d", Some(6)).await;
    assert_eq!(before.len(), 4);
    assert!(before.iter().all(|m| m["type"] == "change"));
    server.shutdown().await;
}

#[tokio::test]
async fn commit_and_presence_need_the_document_open() {
    let server = start_default().await;
    let mut a = Client::connect(&server).await;
    a.commit("d", "a-1", 0, json!([]), json!([{"op": "add", "path": "/x", "value": 1}])).await;
    let error = a.expect_error("not_open").await;
    assert_eq!(error["doc"], "d");
    assert_eq!(error["tx_id"], "a-1");
    a.send(json!({"type": "presence", "doc": "d", "state": {"cursor": 1}})).await;
    a.expect_error("not_open").await;
    a.send(json!({"type": "close", "doc": "d"})).await;
    a.expect_error("not_open").await;

    // After close, commits are refused again.
    a.open("d", None).await;
    a.send(json!({"type": "close", "doc": "d"})).await;
    a.commit("d", "a-2", 0, json!([]), json!([])).await;
    a.expect_error("not_open").await;
    let (_, version) = server.document(&DocId::parse("d").unwrap()).await.unwrap();
    assert_eq!(version.0, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn many_clients_incrementing_one_counter_commit_every_increment_exactly_once() {
    let server = start(Config { record_commit_log: true, ..Config::default() }).await;
    let clients = 8;
    let each = 25;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let url = server.ws_url();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect_url(&url).await;
            let (_, mut version) = client.open("counter", None).await;
            let mut rejections = 0;
            let mut done = 0;
            let mut attempt = 0;
            // A read-modify-write of /n: conflicts are expected and retried
            // on the replica's new version.
            let mut n = 0;
            while done < each {
                attempt += 1;
                let tx_id = format!("c{c}-{attempt}");
                let write = json!([{"op": "add", "path": "/n", "value": n + 1}]);
                client.commit("counter", &tx_id, version, json!(["/n"]), write).await;
                loop {
                    let message = client.recv().await;
                    match message["type"].as_str().unwrap() {
                        "change" => {
                            version = message["version"].as_u64().unwrap();
                            n = message["patch"][0]["value"].as_u64().unwrap();
                        }
                        "committed" => {
                            version = message["version"].as_u64().unwrap();
                            n += 1;
                            done += 1;
                            break;
                        }
                        "rejected" => {
                            rejections += 1;
                            break;
                        }
                        other => panic!("unexpected {other}: {message}"),
                    }
                }
            }
            rejections
        }));
    }
    let mut rejections = 0;
    for task in tasks {
        rejections += task.await.unwrap();
    }
    let (value, version) = server.document(&DocId::parse("counter").unwrap()).await.unwrap();
    assert_eq!(value, json!({"n": clients * each}));
    assert_eq!(version.0, clients * each);
    let log = server.commit_log();
    assert_eq!(log.len() as u64, clients * each);
    Checker::new().replay(&log).unwrap();
    // Contention makes rejections likely but not certain; each one the
    // clients saw was a conflict, counted as such, and retried.
    let conflicts = server.metrics().rejections.with_label_values(&["conflict"]).get();
    assert_eq!(conflicts, rejections);
    server.shutdown().await;
}
