//! Rules the server enforces on every commit (issue 16): schemas, server-only
//! paths and guards. Each refusal is checked to change nothing: the value and
//! version stay, the commit log does not have it, and an observer's next
//! change is the next commit that did pass (changes arrive in version order,
//! so a broadcast of the refused one would come first).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use concord_engine::{DocId, PatchOp, Pointer};
use concord_server::rules::{GUARD_TIME_BUDGET_MAX, SERVER_SUBJECT};
use concord_server::{Config, Mutation, Rules, RunningServer, ServerBuilder, Veto};
use serde_json::{json, Value};

use crate::support::{within, Binary, Client};

fn recording() -> Config {
    Config { record_commit_log: true, ..Config::default() }
}

fn board_rules() -> Rules {
    Rules::from_value(&json!({
        "schemas": [
            {
                "docs": "board:*",
                "pointer": "/shapes/*",
                "schema": {
                    "type": "object",
                    "required": ["kind", "x"],
                    "properties": {
                        "kind": {"enum": ["rect", "ellipse"]},
                        "x": {"type": "number"}
                    }
                }
            },
            {"docs": "auction:*", "pointer": "/settled", "schema": {"type": "boolean"}}
        ],
        "server_only": [{"docs": "auction:*", "pointer": "/settled"}]
    }))
    .unwrap()
}

fn doc(raw: &str) -> DocId {
    DocId::parse(raw).unwrap()
}

fn committed_ids(server: &RunningServer) -> Vec<String> {
    server.commit_log().iter().map(|entry| entry.tx.tx_id.as_str().to_owned()).collect()
}

/// Two clients with `doc` open: the writer and an observer.
async fn writer_and_observer(server: &RunningServer, doc: &str) -> (Client, Client) {
    let mut writer = Client::connect(server).await;
    let mut observer = Client::connect(server).await;
    writer.open(doc, None).await;
    observer.open(doc, None).await;
    (writer, observer)
}

/// The writer's commit answered with `rejected`; its rejection.
async fn rejected(writer: &mut Client, doc: &str, tx_id: &str, base: u64, writes: Value) -> Value {
    writer.commit(doc, tx_id, base, json!([]), writes).await;
    let reply = writer.expect("rejected").await;
    assert_eq!(reply["tx_id"], tx_id, "{reply}");
    reply["rejection"].clone()
}

/// The writer's commit committed at `version`, and the observer's next
/// message is that change (so nothing refused before it was broadcast).
async fn committed(
    writer: &mut Client,
    observer: &mut Client,
    doc: &str,
    tx_id: &str,
    version: u64,
    writes: Value,
) {
    writer.commit(doc, tx_id, version - 1, json!([]), writes).await;
    let reply = writer.expect("committed").await;
    assert_eq!((&reply["tx_id"], &reply["version"]), (&json!(tx_id), &json!(version)), "{reply}");
    let change = observer.expect("change").await;
    assert_eq!((&change["tx_id"], &change["version"]), (&json!(tx_id), &json!(version)));
}

#[tokio::test]
async fn schema_violations_are_refused_and_change_nothing() {
    let server = ServerBuilder::new().config(recording()).rules(board_rules());
    let server = server.bind("127.0.0.1:0").await.unwrap();
    let (mut a, mut b) = writer_and_observer(&server, "board:1").await;
    let shape = json!({"kind": "rect", "x": 1});
    let add_shapes = json!([{"op": "add", "path": "/shapes", "value": {"a": shape}}]);
    committed(&mut a, &mut b, "board:1", "ok-1", 1, add_shapes).await;

    // A shape without `x`: invalid, named by the shape's location.
    let rejection = rejected(
        &mut a,
        "board:1",
        "bad-1",
        1,
        json!([{"op": "add", "path": "/shapes/b", "value": {"kind": "rect"}}]),
    )
    .await;
    assert_eq!(
        (&rejection["reason"], &rejection["pointer"]),
        (&json!("invalid"), &json!("/shapes/b"))
    );
    assert!(rejection["message"].as_str().unwrap().contains("\"x\""), "{rejection}");
    // A write inside a shape validates the shape it is in.
    let rejection = rejected(
        &mut a,
        "board:1",
        "bad-2",
        1,
        json!([{"op": "replace", "path": "/shapes/a/kind", "value": "blob"}]),
    )
    .await;
    assert_eq!(rejection["pointer"], "/shapes/a", "{rejection}");
    assert!(rejection["message"].as_str().unwrap().starts_with("/shapes/a/kind: "), "{rejection}");
    // Replacing the container validates every shape under it.
    let rejection = rejected(
        &mut a,
        "board:1",
        "bad-3",
        1,
        json!([{"op": "replace", "path": "/shapes", "value": {"ok": shape, "c": {"x": 2}}}]),
    )
    .await;
    assert_eq!(
        (&rejection["reason"], &rejection["pointer"]),
        (&json!("invalid"), &json!("/shapes/c"))
    );

    let (value, version) = server.document(&doc("board:1")).await.unwrap();
    assert_eq!((value, version.0), (json!({"shapes": {"a": shape}}), 1));
    // A valid write passes, and is the observer's next change.
    let add = json!([{"op": "add", "path": "/shapes/b", "value": {"kind": "ellipse", "x": 2.5}}]);
    committed(&mut a, &mut b, "board:1", "ok-2", 2, add).await;
    // Removing a shape leaves nothing to validate.
    committed(&mut a, &mut b, "board:1", "ok-3", 3, json!([{"op": "remove", "path": "/shapes/a"}]))
        .await;

    // A document the pattern does not match is unaffected.
    let (mut c, mut d) = writer_and_observer(&server, "notes:1").await;
    let anything = json!([{"op": "add", "path": "/shapes", "value": {"z": {"kind": 7}}}]);
    committed(&mut c, &mut d, "notes:1", "free-1", 1, anything).await;

    assert_eq!(committed_ids(&server), ["ok-1", "ok-2", "ok-3", "free-1"]);
    assert_eq!(
        server.metrics().rejections.with_label_values(&["invalid"]).get(),
        3,
        "every refusal counted"
    );
    server.shutdown().await;
}

fn settle_mutators(builder: ServerBuilder) -> ServerBuilder {
    let settled = || Pointer::parse("/settled").unwrap();
    builder
        .mutator("auction.settle", move |_call| {
            Ok(Mutation {
                writes: vec![PatchOp::Add { path: settled(), value: json!(true) }],
                result: json!("settled"),
            })
        })
        .mutator("auction.garble", move |_call| {
            Ok(Mutation {
                writes: vec![PatchOp::Add { path: settled(), value: json!("maybe") }],
                result: Value::Null,
            })
        })
}

#[tokio::test]
async fn server_only_paths_are_refused_to_clients_and_written_by_mutators() {
    let builder = ServerBuilder::new().config(recording()).rules(board_rules());
    let server = settle_mutators(builder).bind("127.0.0.1:0").await.unwrap();
    let (mut a, mut b) = writer_and_observer(&server, "auction:1").await;
    committed(
        &mut a,
        &mut b,
        "auction:1",
        "bid-1",
        1,
        json!([{"op": "add", "path": "/bid", "value": 5}]),
    )
    .await;

    // The whole commit is refused, naming the op that writes there.
    let writes = json!([
        {"op": "replace", "path": "/bid", "value": 6},
        {"op": "add", "path": "/settled", "value": true}
    ]);
    let rejection = rejected(&mut a, "auction:1", "cheat-1", 1, writes).await;
    assert_eq!(rejection["reason"], "forbidden", "{rejection}");
    assert_eq!((&rejection["op_index"], &rejection["pointer"]), (&json!(1), &json!("/settled")));
    assert!(rejection["message"].as_str().unwrap().contains("server-only path /settled"));
    // Replacing the whole document would replace the server-only path too.
    let writes = json!([{"op": "replace", "path": "", "value": {"settled": true}}]);
    assert_eq!(rejected(&mut a, "auction:1", "cheat-2", 1, writes).await["reason"], "forbidden");
    // Reading (test) it is fine.
    let writes = json!([
        {"op": "test", "path": "/bid", "value": 5},
        {"op": "replace", "path": "/bid", "value": 7}
    ]);
    committed(&mut a, &mut b, "auction:1", "bid-2", 2, writes).await;
    assert_eq!(server.document(&doc("auction:1")).await.unwrap().0, json!({"bid": 7}));

    // A mutator may write it, and still answers to the schema.
    let call = |id: u64, method: &str| json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {"doc": "auction:1"}});
    a.rpc(call(1, "auction.garble")).await;
    let answer = a.expect_rpc().await;
    assert_eq!(answer["error"]["data"]["reason"], "invalid", "{answer}");
    a.rpc(call(2, "auction.settle")).await;
    let mut answer = None;
    let mut change = None;
    // The change may reach the writer's session before or after the answer.
    while answer.is_none() || change.is_none() {
        let message = a.recv().await;
        match message["type"].as_str() {
            Some("rpc") => answer = Some(message["message"].clone()),
            Some("change") => change = Some(message),
            _ => panic!("unexpected {message}"),
        }
    }
    assert_eq!(answer.unwrap()["result"], json!({"version": 3, "result": "settled"}));
    let seen = b.expect("change").await;
    assert_eq!(seen["version"], 3);
    assert_eq!(
        server.document(&doc("auction:1")).await.unwrap().0,
        json!({"bid": 7, "settled": true})
    );
    let ids = committed_ids(&server);
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(&ids[..2], ["bid-1", "bid-2"]);
    server.shutdown().await;
}

#[tokio::test]
async fn a_guard_veto_reaches_the_client_and_changes_nothing() {
    let seen: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let record = seen.clone();
    let limit = Pointer::parse("/n").unwrap();
    let server = ServerBuilder::new()
        .config(recording())
        .guard("counter:*", move |call| {
            record.lock().unwrap().push((call.identity().sub.clone(), call.by_server()));
            let n = call.get(&limit).and_then(|n| n.as_i64()).unwrap_or(0);
            if n > 10 {
                return Err(Veto::new(format!("n may not pass 10 (would be {n})")));
            }
            Ok(())
        })
        .mutator("counter.jump", |_call| {
            Ok(Mutation {
                writes: vec![PatchOp::Add {
                    path: Pointer::parse("/n").unwrap(),
                    value: json!(50),
                }],
                result: Value::Null,
            })
        })
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let (mut a, mut b) = writer_and_observer(&server, "counter:1").await;
    committed(
        &mut a,
        &mut b,
        "counter:1",
        "c-1",
        1,
        json!([{"op": "add", "path": "/n", "value": 9}]),
    )
    .await;
    let rejection =
        rejected(&mut a, "counter:1", "c-2", 1, json!([{"op": "incr", "path": "/n", "value": 5}]))
            .await;
    assert_eq!(
        rejection,
        json!({"reason": "vetoed", "message": "n may not pass 10 (would be 14)"})
    );
    // Mutators are guarded too, as the server.
    a.rpc(json!({"jsonrpc": "2.0", "id": 1, "method": "counter.jump", "params": {"doc": "counter:1"}}))
        .await;
    let answer = a.expect_rpc().await;
    assert_eq!(answer["error"]["data"]["reason"], "vetoed", "{answer}");
    assert_eq!(
        server.document(&doc("counter:1")).await.unwrap(),
        (json!({"n": 9}), concord_engine::Version(1))
    );
    committed(
        &mut a,
        &mut b,
        "counter:1",
        "c-3",
        2,
        json!([{"op": "incr", "path": "/n", "value": 1}]),
    )
    .await;
    assert_eq!(committed_ids(&server), ["c-1", "c-3"]);
    let seen = seen.lock().unwrap().clone();
    assert!(seen.contains(&("anonymous".to_owned(), false)), "{seen:?}");
    assert!(seen.contains(&(SERVER_SUBJECT.to_owned(), true)), "{seen:?}");
    // Other documents are not guarded.
    let (mut c, mut d) = writer_and_observer(&server, "other").await;
    committed(&mut c, &mut d, "other", "o-1", 1, json!([{"op": "add", "path": "/n", "value": 99}]))
        .await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_panicking_or_overrunning_guard_vetoes_and_the_server_keeps_serving() {
    let boom = Pointer::parse("/boom").unwrap();
    let slow = Pointer::parse("/slow").unwrap();
    let slept = Arc::new(AtomicBool::new(false));
    let slept_in_guard = slept.clone();
    let server = ServerBuilder::new()
        .config(recording())
        .guard("**", move |call| {
            if call.node(&boom).is_some() {
                panic!("a guard bug");
            }
            if call.node(&slow).is_some() {
                // The behaviour under test: a guard that takes too long.
                std::thread::sleep(GUARD_TIME_BUDGET_MAX * 2);
                slept_in_guard.store(true, Ordering::Relaxed);
            }
            Ok(())
        })
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let (mut a, mut b) = writer_and_observer(&server, "d").await;
    let rejection =
        rejected(&mut a, "d", "p-1", 0, json!([{"op": "add", "path": "/boom", "value": 1}])).await;
    assert_eq!(rejection, json!({"reason": "vetoed", "message": "the guard panicked"}));
    let rejection =
        rejected(&mut a, "d", "s-1", 0, json!([{"op": "add", "path": "/slow", "value": 1}])).await;
    assert_eq!(rejection["reason"], "vetoed");
    assert!(rejection["message"].as_str().unwrap().contains("overran its time budget"));
    assert!(slept.load(Ordering::Relaxed));
    let failures = &server.metrics().guard_failures;
    assert_eq!(failures.with_label_values(&["panicked"]).get(), 1);
    assert_eq!(failures.with_label_values(&["overran"]).get(), 1);

    // The shard and the server go on: the same session, and a new one.
    committed(&mut a, &mut b, "d", "ok-1", 1, json!([{"op": "add", "path": "/fine", "value": 1}]))
        .await;
    let mut c = Client::connect(&server).await;
    c.open("d", None).await;
    c.commit("d", "ok-2", 1, json!([]), json!([{"op": "add", "path": "/more", "value": 2}])).await;
    assert_eq!(c.expect("committed").await["version"], 2);
    assert_eq!(committed_ids(&server), ["ok-1", "ok-2"]);
    assert_eq!(server.document(&doc("d")).await.unwrap().0, json!({"fine": 1, "more": 2}));
    server.shutdown().await;
}

#[tokio::test]
async fn the_binary_enforces_a_rules_file_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.json");
    let text = json!({
        "schemas": [{"docs": "board:*", "pointer": "/shapes/*",
                     "schema": {"type": "object", "required": ["kind"]}}],
        "server_only": [{"docs": "board:*", "pointer": "/owner"}]
    });
    std::fs::File::create(&rules).unwrap().write_all(text.to_string().as_bytes()).unwrap();
    let mut server = Binary::start(&["--memory", "--rules", rules.to_str().unwrap()]).await;
    let mut a = Client::connect_url(&server.ws_url).await;
    a.open("board:1", None).await;
    let writes = json!([{"op": "add", "path": "/shapes", "value": {"s": {"x": 1}}}]);
    let rejection = rejected(&mut a, "board:1", "t-1", 0, writes).await;
    assert_eq!(
        (&rejection["reason"], &rejection["pointer"]),
        (&json!("invalid"), &json!("/shapes/s"))
    );
    let writes = json!([{"op": "add", "path": "/owner", "value": "me"}]);
    assert_eq!(rejected(&mut a, "board:1", "t-2", 0, writes).await["reason"], "forbidden");
    let writes = json!([{"op": "add", "path": "/shapes", "value": {"s": {"kind": "rect"}}}]);
    a.commit("board:1", "t-3", 0, json!([]), writes).await;
    assert_eq!(a.expect("committed").await["version"], 1);
    server.child.start_kill().unwrap();
    within("the server to exit", server.child.wait()).await.unwrap();

    // A bad rules file stops the start, naming the entry.
    let bad = json!({"schemas": [
        {"docs": "a", "pointer": "/x", "schema": {}},
        {"docs": "b", "pointer": "/y", "schema": {"minimum": "zero"}}
    ]});
    std::fs::write(&rules, bad.to_string()).unwrap();
    let output = within(
        "the refused start",
        tokio::process::Command::new(env!("CARGO_BIN_EXE_concord"))
            .args(["serve", "--memory", "--listen", "127.0.0.1:0", "--rules"])
            .arg(&rules)
            .output(),
    )
    .await
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("schemas[1]"), "{stderr}");
}
