//! Durable storage through the library and the binary: restart with
//! snapshots, dedup across a restart, history reads over HTTP, the data
//! directory lock, export and import. Crashes are in `crash`.

use std::path::Path;

use concord_engine::Limits;
use concord_server::storage::StorageError;
use concord_server::{Config, ServerError, StorageConfig};
use serde_json::{json, Value};

use crate::support::{http_get, start, Client};

fn durable(dir: &Path, snapshot_every_commits: u64) -> Config {
    let storage = StorageConfig { snapshot_every_commits, ..StorageConfig::new(dir) };
    Config { storage: Some(storage), shards: 2, ..Config::default() }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Commits `count` transactions to `doc`, each `incr /n` plus `/k<i>`.
async fn commit_many(client: &mut Client, doc: &str, prefix: &str, count: u64) {
    for i in 0..count {
        let writes = json!([{"op": "incr", "path": "/n", "value": 1},
                            {"op": "add", "path": format!("/k{i}"), "value": i}]);
        client.commit(doc, &format!("{prefix}-{i}"), i, json!(["/n"]), writes).await;
        let committed = client.expect("committed").await;
        assert_eq!(committed["version"], i + 1, "{committed}");
    }
}

fn json_body(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn a_restart_recovers_documents_dedup_history_and_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(durable(dir.path(), 5)).await;
    let mut a = Client::connect(&server).await;
    a.open("d", None).await;
    commit_many(&mut a, "d", "t", 12).await;
    let (_, metrics) = http_get(server.local_addr(), "/metrics").await;
    assert!(metric(&metrics, "concord_storage_fsyncs_total") >= 1.0, "{metrics}");
    assert_eq!(metric(&metrics, "concord_storage_batch_commits_sum"), 12.0);
    server.shutdown().await;

    let server = start(durable(dir.path(), 5)).await;
    let (_, metrics) = http_get(server.local_addr(), "/metrics").await;
    // Snapshots at 5 and 10 (saved at the latest on shutdown): 2 to replay.
    assert_eq!(metric(&metrics, "concord_recovery_replayed_commits"), 2.0, "{metrics}");
    let mut b = Client::connect(&server).await;
    let (before, version) = b.open("d", None).await;
    assert_eq!(version, 12);
    assert_eq!(before[0]["value"]["n"], 12);
    // An acknowledged id from before the snapshot, and one after it, are
    // answered with their original versions.
    for (tx_id, original) in [("t-2", 3), ("t-11", 12)] {
        b.commit("d", tx_id, 0, json!([]), json!([{"op": "incr", "path": "/n", "value": 1}])).await;
        let answer = b.expect("committed").await;
        assert_eq!(answer["version"], original, "{answer}");
    }
    // Catch-up from the replayed tail: only the missing changes.
    let mut c = Client::connect(&server).await;
    let (changes, _) = c.open("d", Some(10)).await;
    let versions: Vec<&Value> = changes.iter().map(|change| &change["version"]).collect();
    assert_eq!(versions, [11, 12], "{changes:?}");

    let addr = server.local_addr();
    let (status, body) = http_get(addr, "/docs/d").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_body(&body)["version"], 12);
    let (status, body) = http_get(addr, "/docs/d?version=4").await;
    assert_eq!(status, 200, "{body}");
    let old = json_body(&body);
    assert_eq!(
        (&old["doc"], &old["version"], &old["value"]["n"]),
        (&json!("d"), &json!(4), &json!(4))
    );
    assert_eq!(old["value"].get("k4"), None, "version 4 is before the fifth commit");
    let (status, body) = http_get(addr, "/docs/d?version=13").await;
    assert_eq!((status, json_body(&body)["code"].as_str()), (404, Some("version_unavailable")));
    let (status, body) = http_get(addr, "/docs/d?version=x").await;
    assert_eq!((status, json_body(&body)["code"].as_str()), (400, Some("bad_message")));
    let (status, body) = http_get(addr, "/docs/bad%20id").await;
    assert_eq!((status, json_body(&body)["code"].as_str()), (400, Some("bad_id")));
    // Ids may contain slashes.
    let (status, body) = http_get(addr, "/docs/a/b?version=0").await;
    assert_eq!((status, json_body(&body)["value"].clone()), (200, json!({})));
    server.shutdown().await;
}

#[tokio::test]
async fn after_a_restart_an_id_older_than_the_log_holds_gets_outcome_unknown_not_a_second_commit() {
    let dir = tempfile::tempdir().unwrap();
    // The restart brings back the last 4 committed ids: those of versions
    // 9 to 12.
    let config = || Config {
        limits: Limits { tx_dedup_entries_max: 4, ..Limits::default() },
        ..durable(dir.path(), 5)
    };
    let server = start(config()).await;
    let mut a = Client::connect(&server).await;
    a.open("d", None).await;
    commit_many(&mut a, "d", "t", 12).await;
    server.shutdown().await;

    let server = start(config()).await;
    let mut b = Client::connect(&server).await;
    b.open("d", None).await;
    let incr = json!([{"op": "incr", "path": "/n", "value": 1}]);
    b.commit("d", "t-8", 8, json!([]), incr.clone()).await;
    assert_eq!(b.expect("committed").await["version"], 9);
    // t-2 committed version 3, but its id is no longer known: a blind
    // increment resubmitted would count twice.
    b.commit("d", "t-2", 2, json!([]), incr.clone()).await;
    let rejected = b.expect("rejected").await;
    assert_eq!(
        rejected["rejection"],
        json!({"reason": "outcome_unknown", "base": 2, "floor": 8}),
        "{rejected}"
    );
    // Every id above version 8 is known, so a new transaction based there is
    // decided.
    b.commit("d", "new", 8, json!([]), incr).await;
    assert_eq!(b.expect("committed").await["version"], 13);
    let (value, version) =
        server.document(&concord_engine::DocId::parse("d").unwrap()).await.unwrap();
    assert_eq!((value["n"].clone(), version.0), (json!(13), 13));
    server.shutdown().await;
}

#[tokio::test]
async fn restart_work_is_bounded_however_many_documents() {
    let dir = tempfile::tempdir().unwrap();
    // Per document, a snapshot only every 1,000 commits; in all, at most 10
    // commits left to replay.
    let storage = StorageConfig {
        snapshot_every_commits: 1000,
        replay_commits_max: 10,
        ..StorageConfig::new(dir.path())
    };
    let config = Config { storage: Some(storage), shards: 1, ..Config::default() };
    let server = start(config.clone()).await;
    let mut a = Client::connect(&server).await;
    for doc in 0..8 {
        let doc = format!("d{doc}");
        a.open(&doc, None).await;
        commit_many(&mut a, &doc, &format!("t{doc}"), 3).await;
    }
    server.shutdown().await;
    let server = start(config).await;
    let (_, metrics) = http_get(server.local_addr(), "/metrics").await;
    let replayed = metric(&metrics, "concord_recovery_replayed_commits");
    // 24 commits: a sweep at the 10th and the 20th, then 4 left.
    assert_eq!(replayed, 4.0, "{metrics}");
    let mut b = Client::connect(&server).await;
    for doc in 0..8 {
        let (before, version) = b.open(&format!("d{doc}"), None).await;
        assert_eq!((version, &before[0]["value"]["n"]), (3, &json!(3)));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn an_in_memory_server_serves_only_the_current_version() {
    let server = start(Config::default()).await;
    let mut a = Client::connect(&server).await;
    a.open("d", None).await;
    commit_many(&mut a, "d", "m", 2).await;
    let (status, body) = http_get(server.local_addr(), "/docs/d?version=2").await;
    assert_eq!((status, json_body(&body)["value"]["n"].clone()), (200, json!(2)));
    let (status, body) = http_get(server.local_addr(), "/docs/d?version=1").await;
    assert_eq!((status, json_body(&body)["code"].as_str()), (404, Some("version_unavailable")));
    server.shutdown().await;
}

#[tokio::test]
async fn a_second_server_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(durable(dir.path(), 100)).await;
    let second = concord_server::ServerBuilder::new()
        .config(durable(dir.path(), 100))
        .bind("127.0.0.1:0")
        .await;
    assert!(matches!(second, Err(ServerError::Storage(StorageError::Locked(_)))), "{second:?}");
    server.shutdown().await;
    // Released on shutdown.
    start(durable(dir.path(), 100)).await.shutdown().await;
}

fn concord(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_concord")).args(args).output().unwrap()
}

#[tokio::test]
async fn export_and_import_move_documents_with_their_versions() {
    let from = tempfile::tempdir().unwrap();
    let server = start(durable(from.path(), 3)).await;
    let mut a = Client::connect(&server).await;
    a.open("d", None).await;
    a.open("e/1", None).await;
    commit_many(&mut a, "d", "x", 7).await;
    a.commit("e/1", "y-1", 0, json!([]), json!([{"op": "add", "path": "/s", "value": "hi"}])).await;
    a.expect("committed").await;
    // Export reads a live directory.
    let file = from.path().join("export.json");
    let out = concord(&[
        "export".as_ref(),
        "--data".as_ref(),
        from.path().as_os_str(),
        "--out".as_ref(),
        file.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    server.shutdown().await;
    let export = json_body(&std::fs::read_to_string(&file).unwrap());
    assert_eq!(export["format"], "concord-export");
    let docs = export["documents"].as_array().unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(
        (&docs[0]["doc"], &docs[0]["version"], &docs[0]["value"]["n"]),
        (&json!("d"), &json!(7), &json!(7))
    );
    assert_eq!(docs[1], json!({"doc": "e/1", "version": 1, "value": {"s": "hi"}}));

    let to = tempfile::tempdir().unwrap();
    let import = |dir: &Path| {
        concord(&["import".as_ref(), "--data".as_ref(), dir.as_os_str(), file.as_os_str()])
    };
    let out = import(to.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server = start(durable(to.path(), 3)).await;
    // Importing while a server holds the directory is refused.
    let refused = import(to.path());
    assert!(!refused.status.success());
    let mut b = Client::connect(&server).await;
    let (before, version) = b.open("d", None).await;
    assert_eq!((version, &before[0]["value"]), (7, &docs[0]["value"]));
    // Commits continue from the imported version.
    b.commit("d", "z-1", 7, json!(["/n"]), json!([{"op": "incr", "path": "/n", "value": 1}])).await;
    assert_eq!(b.expect("committed").await["version"], 8);
    server.shutdown().await;
    // A second import of the same documents is refused, changing nothing.
    let again = import(to.path());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}
