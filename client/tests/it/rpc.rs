//! RPC between clients through the server, server procedures, and
//! JSON-RPC errors as the caller sees them.

use concord_client::{CallError, RpcError};
use concord_server::ServerBuilder;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::support::connect;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_calls_a_procedure_another_client_registered() {
    let server = ServerBuilder::new().bind("127.0.0.1:0").await.unwrap();
    let callee = connect(&server.ws_url()).await;
    let caller = connect(&server.ws_url()).await;
    callee
        .register("math.add", |params: Value| async move {
            match (params[0].as_i64(), params[1].as_i64()) {
                (Some(a), Some(b)) => Ok(json!(a + b)),
                _ => Err(RpcError::invalid_params("expected two integers")),
            }
        })
        .await
        .unwrap();

    assert_eq!(caller.call("math.add", json!([2, 3])).await.unwrap(), json!(5));
    let invalid = caller.call("math.add", json!(["x"])).await.unwrap_err();
    assert!(
        matches!(&invalid, CallError::Rpc(e) if e.code == RpcError::INVALID_PARAMS),
        "{invalid:?}"
    );
    let unknown = caller.call("math.nothing", json!(null)).await.unwrap_err();
    assert!(
        matches!(&unknown, CallError::Rpc(e) if e.code == RpcError::METHOD_NOT_FOUND),
        "{unknown:?}"
    );

    // A second client cannot take a method someone else provides.
    let refused = caller.register("math.add", |_| async { Ok(Value::Null) }).await;
    assert!(refused.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_the_callee_without_an_answer() {
    let server = ServerBuilder::new().bind("127.0.0.1:0").await.unwrap();
    let callee = connect(&server.ws_url()).await;
    let caller = connect(&server.ws_url()).await;
    let (sender, mut received) = mpsc::channel(4);
    callee
        .register("log.line", move |params| {
            let sender = sender.clone();
            async move {
                let _ = sender.send(params).await;
                Ok(Value::Null)
            }
        })
        .await
        .unwrap();
    caller.notify("log.line", json!({"text": "hello"})).await.unwrap();
    assert_eq!(received.recv().await.unwrap(), json!({"text": "hello"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_procedures_and_a_departed_callee() {
    let server = ServerBuilder::new()
        .procedure("echo", |_, params| async move { Ok(params) })
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let caller = connect(&server.ws_url()).await;
    assert_eq!(caller.call("echo", json!({"a": 1})).await.unwrap(), json!({"a": 1}));

    // A callee that leaves mid-call: the caller gets an error, not silence.
    let callee = connect(&server.ws_url()).await;
    let (started, mut running) = mpsc::channel(1);
    callee
        .register("slow", move |_| {
            let started = started.clone();
            async move {
                let _ = started.send(()).await;
                std::future::pending::<()>().await;
                Ok(Value::Null)
            }
        })
        .await
        .unwrap();
    let call = {
        let caller = caller.clone();
        tokio::spawn(async move { caller.call("slow", Value::Null).await })
    };
    running.recv().await.unwrap();
    callee.close().await;
    let error = call.await.unwrap().unwrap_err();
    assert!(matches!(&error, CallError::Rpc(e) if e.code == RpcError::CALLEE_GONE), "{error:?}");
}
