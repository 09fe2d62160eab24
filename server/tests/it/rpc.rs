//! JSON-RPC over the session (issue 3, test 6): server procedures,
//! notifications, error codes, mutators under contention, client callees
//! that vanish, and timeouts.

use std::time::Duration;

use concord_engine::certificate::Checker;
use concord_engine::{Doc, DocId, PatchOp, Pointer};
use concord_server::{Config, Mutation, RpcError, RunningServer, ServerBuilder};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::support::{start, Client};

async fn rpc_server(config: Config, notes: mpsc::Sender<Value>) -> RunningServer {
    ServerBuilder::new()
        .config(config)
        .procedure("math.add", |_ctx, params| async move {
            let pair = params.as_array().filter(|p| p.len() == 2);
            let sum = pair.and_then(|p| Some(p[0].as_i64()? + p[1].as_i64()?));
            sum.map(Value::from).ok_or_else(|| RpcError::invalid_params("expected [a, b] integers"))
        })
        .procedure("note", move |_ctx, params| {
            let notes = notes.clone();
            async move {
                notes.send(params).await.map_err(|e| RpcError::internal(e.to_string()))?;
                Ok(Value::Null)
            }
        })
        .procedure("whoami", |ctx, _params| async move { Ok(Value::from(ctx.session)) })
        .procedure("hang", |_ctx, _params| async move {
            std::future::pending::<()>().await;
            Ok(Value::Null)
        })
        // Read-modify-write of /n: as a client transaction it would conflict
        // under contention; as a mutator it runs on the owning shard.
        .mutator("counter.bump", |call| {
            let n = call.value.get("n").and_then(Doc::as_i64).unwrap_or(0);
            let by = call
                .params
                .get("by")
                .and_then(Value::as_i64)
                .ok_or_else(|| RpcError::invalid_params("by"))?;
            let path = Pointer::parse("/n").map_err(|e| RpcError::internal(e.to_string()))?;
            Ok(Mutation {
                writes: vec![PatchOp::Add { path, value: json!(n + by) }],
                result: json!(n + by),
            })
        })
        .mutator("doc.remove_missing", |_call| {
            let path = Pointer::parse("/missing").map_err(|e| RpcError::internal(e.to_string()))?;
            Ok(Mutation { writes: vec![PatchOp::Remove { path }], result: Value::Null })
        })
        .bind("127.0.0.1:0")
        .await
        .unwrap()
}

fn call(id: Value, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

#[tokio::test]
async fn server_procedures_answer_calls_notifications_and_errors() {
    let (notes, mut noted) = mpsc::channel(8);
    let server = rpc_server(Config::default(), notes).await;
    let mut a = Client::connect(&server).await;

    a.rpc(call(json!(1), "math.add", json!([2, 3]))).await;
    assert_eq!(a.expect_rpc().await, json!({"jsonrpc": "2.0", "id": 1, "result": 5}));

    a.rpc(call(json!("s"), "whoami", Value::Null)).await;
    assert_eq!(a.expect_rpc().await["result"], a.session.as_str());

    // A notification runs and is never answered.
    a.rpc(json!({"jsonrpc": "2.0", "method": "note", "params": {"hello": 1}})).await;
    assert_eq!(
        crate::support::within("the note", noted.recv()).await.unwrap(),
        json!({"hello": 1})
    );

    a.rpc(call(json!(2), "no.such.method", json!([]))).await;
    let reply = a.expect_rpc().await;
    assert_eq!(reply["id"], 2);
    assert_eq!(reply["error"]["code"], -32601);

    a.rpc(call(json!(3), "math.add", json!(["x"]))).await;
    let reply = a.expect_rpc().await;
    assert_eq!(reply["id"], 3);
    assert_eq!(reply["error"]["code"], -32602);

    a.rpc(json!({"id": 4, "method": "math.add"})).await;
    let reply = a.expect_rpc().await;
    assert_eq!(reply["id"], 4);
    assert_eq!(reply["error"]["code"], -32600);

    a.rpc(json!([call(json!(5), "math.add", json!([1, 1]))])).await;
    let reply = a.expect_rpc().await;
    assert_eq!(reply["id"], Value::Null);
    assert_eq!(reply["error"]["code"], -32600);

    // The notification produced no reply: the next message answers id 6.
    a.rpc(call(json!(6), "math.add", json!([1, 1]))).await;
    assert_eq!(a.expect_rpc().await["id"], 6);
    server.shutdown().await;
}

#[tokio::test]
async fn a_procedure_that_overruns_its_timeout_gets_32000() {
    let (notes, _noted) = mpsc::channel(1);
    let config = Config { rpc_call_timeout: Duration::from_millis(100), ..Config::default() };
    let server = rpc_server(config, notes).await;
    let mut a = Client::connect(&server).await;
    a.rpc(call(json!(1), "hang", Value::Null)).await;
    let reply = a.expect_rpc().await;
    assert_eq!(reply["id"], 1);
    assert_eq!(reply["error"]["code"], -32000);
    server.shutdown().await;
}

#[tokio::test]
async fn mutators_under_contention_serialise_with_each_other_and_with_clients() {
    let (notes, _noted) = mpsc::channel(1);
    let config = Config { record_commit_log: true, ..Config::default() };
    let server = rpc_server(config, notes).await;
    let mut watcher = Client::connect(&server).await;
    watcher.open("c", None).await;

    let clients = 8;
    let calls = 25;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let url = server.ws_url();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect_url(&url).await;
            // Pipeline every call, then collect the answers.
            for i in 0..calls {
                client.rpc(call(json!(i), "counter.bump", json!({"doc": "c", "by": 1}))).await;
            }
            let mut versions = Vec::new();
            for _ in 0..calls {
                let reply = client.expect_rpc().await;
                assert!(reply["error"].is_null(), "client {c}: {reply}");
                versions.push(reply["result"]["version"].as_u64().unwrap());
            }
            versions
        }));
    }
    let mut versions = Vec::new();
    for task in tasks {
        versions.extend(task.await.unwrap());
    }
    versions.sort_unstable();
    let total = clients * calls;
    assert_eq!(versions, (1..=total).collect::<Vec<_>>(), "one version per call, none shared");
    let (value, version) = server.document(&DocId::parse("c").unwrap()).await.unwrap();
    assert_eq!(value, json!({"n": total}));
    assert_eq!(version.0, total);
    // The watcher saw every mutation as an ordinary change, in order.
    for expected in 1..=total {
        assert_eq!(watcher.expect("change").await["version"], expected);
    }
    Checker::new().replay(&server.commit_log()).unwrap();

    // A mutator whose patch does not apply gets -32003 and changes nothing;
    // one without a doc gets -32602.
    watcher.rpc(call(json!("m"), "doc.remove_missing", json!({"doc": "c"}))).await;
    let reply = watcher.expect_rpc().await;
    assert_eq!(reply["error"]["code"], -32003);
    assert_eq!(reply["error"]["data"]["reason"], "patch");
    watcher.rpc(call(json!("n"), "counter.bump", json!({"by": 1}))).await;
    assert_eq!(watcher.expect_rpc().await["error"]["code"], -32602);
    assert_eq!(server.document(&DocId::parse("c").unwrap()).await.unwrap().1 .0, total);
    server.shutdown().await;
}

#[tokio::test]
async fn clients_call_each_other_through_the_server() {
    let server = start(Config::default()).await;
    let mut callee = Client::connect(&server).await;
    let mut caller = Client::connect(&server).await;
    callee.send(json!({"type": "register", "method": "echo"})).await;
    assert_eq!(callee.expect("registered").await["method"], "echo");

    // Another session cannot take the name; nor can anyone take a bad one.
    caller.send(json!({"type": "register", "method": "echo"})).await;
    caller.expect_error("already_registered").await;
    caller.send(json!({"type": "register", "method": "rpc.system"})).await;
    caller.expect_error("bad_id").await;

    caller.rpc(call(json!("c-1"), "echo", json!({"text": "hi"}))).await;
    let request = callee.expect_rpc().await;
    assert_eq!(request["method"], "echo");
    assert_eq!(request["params"], json!({"text": "hi"}));
    let routed_id = request["id"].clone();
    assert!(routed_id.is_u64(), "the server assigns its own ids: {request}");
    callee.rpc(json!({"jsonrpc": "2.0", "id": routed_id, "result": {"text": "hi"}})).await;
    let reply = caller.expect_rpc().await;
    assert_eq!(reply, json!({"jsonrpc": "2.0", "id": "c-1", "result": {"text": "hi"}}));

    // Errors from the callee come back as they are.
    caller.rpc(call(json!(7), "echo", json!([]))).await;
    let request = callee.expect_rpc().await;
    let error = json!({"code": -32602, "message": "no"});
    callee.rpc(json!({"jsonrpc": "2.0", "id": request["id"], "error": error})).await;
    assert_eq!(caller.expect_rpc().await, json!({"jsonrpc": "2.0", "id": 7, "error": error}));

    // Notifications are forwarded without an id.
    caller.rpc(json!({"jsonrpc": "2.0", "method": "echo", "params": [1]})).await;
    let note = callee.expect_rpc().await;
    assert_eq!(note, json!({"jsonrpc": "2.0", "method": "echo", "params": [1]}));

    // After unregister the method is unknown.
    callee.send(json!({"type": "unregister", "method": "echo"})).await;
    callee.send(json!({"type": "register", "method": "echo2"})).await;
    callee.expect("registered").await;
    caller.rpc(call(json!(8), "echo", Value::Null)).await;
    assert_eq!(caller.expect_rpc().await["error"]["code"], -32601);
    server.shutdown().await;
}

#[tokio::test]
async fn a_callee_that_disconnects_mid_call_fails_the_call_with_32001() {
    let server = start(Config::default()).await;
    let mut callee = Client::connect(&server).await;
    let mut caller = Client::connect(&server).await;
    callee.send(json!({"type": "register", "method": "slow"})).await;
    callee.expect("registered").await;
    caller.rpc(call(json!(1), "slow", Value::Null)).await;
    callee.expect_rpc().await;
    drop(callee);
    let reply = caller.expect_rpc().await;
    assert_eq!(reply["id"], 1);
    assert_eq!(reply["error"]["code"], -32001);
    // Its registration went with it.
    caller.rpc(call(json!(2), "slow", Value::Null)).await;
    assert_eq!(caller.expect_rpc().await["error"]["code"], -32601);
    server.shutdown().await;
}

#[tokio::test]
async fn a_callee_that_never_answers_times_out_with_32000_and_a_late_answer_is_dropped() {
    // Call 2 must be answered within the timeout, so it is long enough that
    // a loaded CI machine never makes that answer late.
    let config = Config { rpc_call_timeout: Duration::from_millis(1_000), ..Config::default() };
    let server = start(config).await;
    let mut callee = Client::connect(&server).await;
    let mut caller = Client::connect(&server).await;
    callee.send(json!({"type": "register", "method": "never"})).await;
    callee.expect("registered").await;
    caller.rpc(call(json!(1), "never", Value::Null)).await;
    let request = callee.expect_rpc().await;
    let reply = caller.expect_rpc().await;
    assert_eq!(reply["id"], 1);
    assert_eq!(reply["error"]["code"], -32000);

    callee.rpc(json!({"jsonrpc": "2.0", "id": request["id"], "result": "late"})).await;
    caller.rpc(call(json!(2), "never", Value::Null)).await;
    let request = callee.expect_rpc().await;
    callee.rpc(json!({"jsonrpc": "2.0", "id": request["id"], "result": "on time"})).await;
    // The caller's next message answers call 2, not the late answer to 1.
    assert_eq!(caller.expect_rpc().await, json!({"jsonrpc": "2.0", "id": 2, "result": "on time"}));
    server.shutdown().await;
}

#[tokio::test]
async fn a_caller_that_disconnects_leaves_nothing_behind() {
    let server = start(Config::default()).await;
    let mut callee = Client::connect(&server).await;
    callee.send(json!({"type": "register", "method": "m"})).await;
    callee.expect("registered").await;
    let mut caller = Client::connect(&server).await;
    caller.rpc(call(json!(1), "m", Value::Null)).await;
    let request = callee.expect_rpc().await;
    drop(caller);
    let closed = &server.metrics().sessions_closed;
    let gone = || {
        closed.with_label_values(&["client"]).get() + closed.with_label_values(&["transport"]).get()
            == 1
    };
    crate::support::wait_until("the caller's session to end", gone).await;
    // The answer to a departed caller is dropped; the callee carries on.
    callee.rpc(json!({"jsonrpc": "2.0", "id": request["id"], "result": 1})).await;
    let mut other = Client::connect(&server).await;
    other.rpc(call(json!(9), "m", Value::Null)).await;
    let request = callee.expect_rpc().await;
    callee.rpc(json!({"jsonrpc": "2.0", "id": request["id"], "result": 2})).await;
    assert_eq!(other.expect_rpc().await["result"], 2);
    server.shutdown().await;
}

#[tokio::test]
async fn a_mutation_that_would_create_a_document_past_the_limit_is_refused() {
    let (notes, _noted) = mpsc::channel(8);
    let server = rpc_server(Config { docs_max: 1, ..Config::default() }, notes).await;
    let mut a = Client::connect(&server).await;
    a.rpc(call(json!(1), "counter.bump", json!({"doc": "c1", "by": 1}))).await;
    assert_eq!(a.expect_rpc().await["result"]["result"], 1);
    a.rpc(call(json!(2), "counter.bump", json!({"doc": "c2", "by": 1}))).await;
    let reply = a.expect_rpc().await;
    assert_eq!(reply["error"]["code"], -32003, "{reply}");
    assert_eq!(server.document(&DocId::parse("c2").unwrap()).await.unwrap().1 .0, 0);
    a.rpc(call(json!(3), "counter.bump", json!({"doc": "c1", "by": 1}))).await;
    let reply = a.expect_rpc().await;
    assert_eq!(reply["result"]["result"], 2, "existing documents stay writable");
    server.shutdown().await;
}
