//! `transact` against a real server: contention, disjoint writers, STM
//! retry, `or_else`, nesting, the after-commit continuation, read-only runs,
//! the optimistic view and runs blocked behind pending writes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use concord_client::{
    Abort, Client, DocumentEvent, ErrorCode, Pointer, Stats, TransactError, Tx, TxResult,
    DEFAULT_OUTGOING_MESSAGE_BYTES_MAX,
};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::support::{certify, connect, doc_id, start_server, Proxy};

const CLIENTS: usize = 32;
const OPS_PER_CLIENT: usize = 200;

fn ptr(raw: &str) -> Pointer {
    Pointer::parse(raw).unwrap()
}

fn total(clients: &[Client], field: impl Fn(Stats) -> u64) -> u64 {
    clients.iter().map(|client| field(client.stats())).sum()
}

async fn connect_many(url: &str, count: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        clients.push(connect(url).await);
    }
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contended_read_modify_write_counter_is_exact() {
    let server = start_server().await;
    let clients = connect_many(&server.ws_url(), CLIENTS).await;
    let most_runs = Arc::new(AtomicU32::new(0));
    let mut tasks = JoinSet::new();
    for client in &clients {
        let (client, most_runs) = (client.clone(), most_runs.clone());
        tasks.spawn(async move {
            let doc = client.open("counter").await.unwrap();
            let count = ptr("/count");
            for _ in 0..OPS_PER_CLIENT {
                let (count, most_runs) = (count.clone(), most_runs.clone());
                doc.transact(move |tx| -> TxResult<i64> {
                    let next = tx.get_i64(&count).unwrap_or(0) + 1;
                    tx.set(&count, next.into())?;
                    Ok(next)
                })
                .after_commit(move |_, receipt| {
                    most_runs.fetch_max(receipt.runs, Ordering::Relaxed);
                })
                .await
                .unwrap();
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }

    let expected = (CLIENTS * OPS_PER_CLIENT) as u64;
    let (value, _) = server.document(&doc_id("counter")).await.unwrap();
    assert_eq!(value, json!({"count": expected}));
    assert_eq!(total(&clients, |s| s.committed), expected);
    let rejections = total(&clients, |s| s.rejections);
    assert!(rejections > 0, "32 writers of one counter must conflict");
    assert_eq!(total(&clients, |s| s.reruns), rejections, "every rejection was re-run");
    let certificate = certify(&server, &["counter"]).await;
    assert_eq!(certificate.commits() as u64, expected);
    let most_runs = most_runs.load(Ordering::Relaxed);
    eprintln!(
        "counter: {expected} commits, {rejections} rejections re-run, at most {most_runs} runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_of_disjoint_shapes_never_conflict() {
    let server = start_server().await;
    let clients = connect_many(&server.ws_url(), CLIENTS).await;
    let board = clients[0].open("board").await.unwrap();
    let shapes = ptr("/shapes");
    board.transact(move |tx| -> TxResult<()> { Ok(tx.set(&shapes, json!({}))?) }).await.unwrap();

    let mut tasks = JoinSet::new();
    for (index, client) in clients.iter().enumerate() {
        let client = client.clone();
        tasks.spawn(async move {
            let doc = client.open("board").await.unwrap();
            let shape = ptr(&format!("/shapes/s{index}"));
            let created = shape.clone();
            doc.transact(move |tx| -> TxResult<()> {
                Ok(tx.set(&created, json!({"x": 0, "y": 0}))?)
            })
            .await
            .unwrap();
            let (x, y) = (shape.child("x"), shape.child("y"));
            for _ in 0..OPS_PER_CLIENT {
                let (x, y) = (x.clone(), y.clone());
                doc.transact(move |tx| -> TxResult<()> {
                    let next = tx.get_i64(&x).unwrap() + 1;
                    tx.set(&x, next.into())?;
                    tx.set(&y, (2 * next).into())?;
                    Ok(())
                })
                .await
                .unwrap();
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }

    assert_eq!(total(&clients, |s| s.rejections), 0);
    let (value, _) = server.document(&doc_id("board")).await.unwrap();
    for index in 0..CLIENTS {
        assert_eq!(value["shapes"][format!("s{index}")], json!({"x": 200, "y": 400}));
    }
    certify(&server, &["board"]).await;
}

/// Waits for `doc`'s change stream to deliver `version`.
async fn wait_for_version(changes: &mut concord_client::Changes, version: u64) {
    loop {
        match changes.next().await.unwrap() {
            DocumentEvent::Changed(change) if change.version.0 >= version => return,
            DocumentEvent::Changed(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stm_retry_sleeps_until_something_it_read_changes() {
    let server = start_server().await;
    let waiter = connect(&server.ws_url()).await;
    let writer = connect(&server.ws_url()).await;
    let waiting_doc = waiter.open("stm").await.unwrap();
    let writing_doc = writer.open("stm").await.unwrap();
    let mut changes = waiting_doc.changes();

    let runs = Arc::new(AtomicU32::new(0));
    let ran = Arc::new(Notify::new());
    let (ready, taken) = (ptr("/ready"), ptr("/taken"));
    let task = {
        let (runs, ran) = (runs.clone(), ran.clone());
        waiting_doc
            .transact(move |tx| -> TxResult<&'static str> {
                runs.fetch_add(1, Ordering::SeqCst);
                ran.notify_one();
                if tx.get(&ready) != Some(&json!(true)) {
                    return tx.retry();
                }
                tx.set(&taken, json!(true))?;
                Ok("taken")
            })
            .spawn()
    };
    ran.notified().await;

    // A change to something the run did not read must not wake it.
    let other = ptr("/other");
    writing_doc
        .transact(move |tx| -> TxResult<()> { Ok(tx.set(&other, json!(1))?) })
        .await
        .unwrap();
    wait_for_version(&mut changes, 1).await;
    assert_eq!(waiter.stats().stm_waits, 1);
    assert_eq!(waiter.stats().stm_wakeups, 0);
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    let ready = ptr("/ready");
    writing_doc
        .transact(move |tx| -> TxResult<()> { Ok(tx.set(&ready, json!(true))?) })
        .await
        .unwrap();
    assert_eq!(task.await.unwrap(), "taken");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(waiter.stats().stm_wakeups, 1);
    let (value, _) = server.document(&doc_id("stm")).await.unwrap();
    assert_eq!(value, json!({"other": 1, "ready": true, "taken": true}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stm_retry_wakes_on_a_local_write_too() {
    let server = start_server().await;
    let client = connect(&server.ws_url()).await;
    let doc = client.open("stm-local").await.unwrap();
    let ran = Arc::new(Notify::new());
    let flag = ptr("/flag");
    let task = {
        let (ran, flag) = (ran.clone(), flag.clone());
        doc.transact(move |tx| -> TxResult<Value> {
            ran.notify_one();
            match tx.get(&flag).cloned() {
                Some(value) => Ok(value),
                None => tx.retry(),
            }
        })
        .spawn()
    };
    ran.notified().await;
    doc.transact(move |tx| -> TxResult<()> { Ok(tx.set(&flag, json!("up"))?) }).await.unwrap();
    assert_eq!(task.await.unwrap(), json!("up"));
}

/// Pops the last element of the array at `queue`, or retries when it is
/// empty.
fn pop(tx: &mut Tx<'_>, queue: &Pointer) -> TxResult<Value> {
    let len = tx.get(queue).and_then(Value::as_array).map_or(0, Vec::len);
    if len == 0 {
        return tx.retry();
    }
    let last = queue.child((len - 1).to_string());
    let value = tx.get(&last).cloned().unwrap_or(Value::Null);
    tx.remove(&last)?;
    Ok(value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn or_else_takes_the_first_alternative_that_does_not_retry() {
    let server = start_server().await;
    let client = connect(&server.ws_url()).await;
    let other = connect(&server.ws_url()).await;
    let doc = client.open("queues").await.unwrap();
    let (a, b) = (ptr("/a"), ptr("/b"));
    let (init_a, init_b) = (a.clone(), b.clone());
    doc.transact(move |tx| -> TxResult<()> {
        tx.set(&init_a, json!([]))?;
        tx.set(&init_b, json!(["from-b"]))?;
        Ok(())
    })
    .await
    .unwrap();

    let take_either = {
        let (a, b) = (a.clone(), b.clone());
        move |tx: &mut Tx<'_>| tx.or_else(|tx| pop(tx, &a), |tx| pop(tx, &b))
    };
    // `a` is empty and retries, so the `b` alternative runs.
    assert_eq!(doc.transact(take_either.clone()).await.unwrap(), json!("from-b"));

    // Both empty: the whole transaction waits for either queue to change.
    let ran = Arc::new(Notify::new());
    let waiting = {
        let (ran, take_either) = (ran.clone(), take_either.clone());
        doc.transact(move |tx| {
            ran.notify_one();
            take_either(tx)
        })
        .spawn()
    };
    ran.notified().await;
    let other_doc = other.open("queues").await.unwrap();
    other_doc
        .transact(move |tx| -> TxResult<()> { Ok(tx.push(&a, json!("from-a"))?) })
        .await
        .unwrap();
    assert_eq!(waiting.await.unwrap(), json!("from-a"));
    let (value, _) = server.document(&doc_id("queues")).await.unwrap();
    assert_eq!(value, json!({"a": [], "b": []}));
    certify(&server, &["queues"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_transactions_merge_on_success_and_roll_back_on_abort() {
    let server = start_server().await;
    let client = connect(&server.ws_url()).await;
    let doc = client.open("nested").await.unwrap();
    let (kept, dropped, outer) = (ptr("/kept"), ptr("/dropped"), ptr("/outer"));
    let result = doc
        .transact(move |tx| -> TxResult<bool, &'static str> {
            tx.nested(|tx| -> TxResult<(), &'static str> { Ok(tx.set(&kept, json!(1))?) })?;
            let inner = tx.nested(|tx| -> TxResult<(), &'static str> {
                tx.set(&dropped, json!(2))?;
                Err(Abort::User("changed my mind"))
            });
            tx.set(&outer, json!(3))?;
            Ok(inner.is_err())
        })
        .await
        .unwrap();
    assert!(result);
    let (value, _) = server.document(&doc_id("nested")).await.unwrap();
    assert_eq!(value, json!({"kept": 1, "outer": 3}));
    assert_eq!(doc.value().await.unwrap(), value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_after_commit_continuation_runs_once_after_a_rejected_run() {
    let server = start_server().await;
    let proxy = Proxy::start(server.local_addr()).await;
    let slow = connect(&proxy.url()).await;
    let rival = connect(&server.ws_url()).await;
    let rival_doc = rival.open("once").await.unwrap();
    let x = ptr("/x");
    let init = x.clone();
    rival_doc.transact(move |tx| -> TxResult<()> { Ok(tx.set(&init, json!(0))?) }).await.unwrap();
    let slow_doc = slow.open("once").await.unwrap();

    // The slow client stops hearing from the server, the rival commits, and
    // the slow client's transaction is then built on a stale replica.
    proxy.freeze();
    let rival_write = x.clone();
    rival_doc
        .transact(move |tx| -> TxResult<()> { Ok(tx.set(&rival_write, json!(1))?) })
        .await
        .unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let continuations = Arc::new(AtomicU32::new(0));
    let ran = Arc::new(Notify::new());
    let task = {
        let (runs, ran, continuations) = (runs.clone(), ran.clone(), continuations.clone());
        slow_doc
            .transact(move |tx| -> TxResult<i64> {
                runs.fetch_add(1, Ordering::SeqCst);
                ran.notify_one();
                let next = tx.get_i64(&x).unwrap() + 10;
                tx.set(&x, next.into())?;
                Ok(next)
            })
            .after_commit(move |value, receipt| {
                assert_eq!(*value, 11);
                assert_eq!(receipt.runs, 2);
                assert!(receipt.tx_id.is_some());
                continuations.fetch_add(1, Ordering::SeqCst);
            })
            .spawn()
    };
    ran.notified().await;
    proxy.thaw();

    assert_eq!(task.await.unwrap(), 11);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(continuations.load(Ordering::SeqCst), 1);
    assert_eq!(slow.stats().rejections, 1);
    let (value, _) = server.document(&doc_id("once")).await.unwrap();
    assert_eq!(value, json!({"x": 11}));
    certify(&server, &["once"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_transactions_answer_locally() {
    let server = start_server().await;
    let client = connect(&server.ws_url()).await;
    let doc = client.open("reads").await.unwrap();
    let (a, b) = (ptr("/a"), ptr("/b"));
    let write = a.clone();
    doc.transact(move |tx| -> TxResult<()> { Ok(tx.set(&write, json!(5))?) }).await.unwrap();
    let continuations = Arc::new(AtomicU32::new(0));
    let counted = continuations.clone();
    let sum = doc
        .transact(move |tx| -> TxResult<i64> {
            Ok(tx.get_i64(&a).unwrap_or(0) + tx.get_i64(&b).unwrap_or(0))
        })
        .after_commit(move |_, receipt| {
            assert_eq!(receipt.tx_id, None);
            counted.fetch_add(1, Ordering::SeqCst);
        })
        .await
        .unwrap();
    assert_eq!(sum, 5);
    assert_eq!(continuations.load(Ordering::SeqCst), 1);
    assert_eq!(client.stats().read_only, 1);
    assert_eq!(server.commit_log().len(), 1, "the read-only run never reached the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_writes_show_at_once_and_later_runs_wait_behind_them() {
    let server = start_server().await;
    let proxy = Proxy::start(server.local_addr()).await;
    let client = connect(&proxy.url()).await;
    let doc = client.open("optimistic").await.unwrap();
    proxy.freeze();

    let (x, y) = (ptr("/x"), ptr("/y"));
    let ran = Arc::new(Notify::new());
    let first = {
        let (x, ran) = (x.clone(), ran.clone());
        doc.transact(move |tx| -> TxResult<()> {
            ran.notify_one();
            Ok(tx.set(&x, json!(1))?)
        })
        .spawn()
    };
    ran.notified().await;
    // The optimistic view holds the write before the server's answer.
    assert_eq!(doc.get(&x).await.unwrap(), Some(json!(1)));
    let second_runs = Arc::new(AtomicU32::new(0));
    let second = {
        let (x, y, ran, runs) = (x.clone(), y.clone(), ran.clone(), second_runs.clone());
        doc.transact(move |tx| -> TxResult<i64> {
            runs.fetch_add(1, Ordering::SeqCst);
            ran.notify_one();
            let next = tx.get_i64(&x).unwrap_or(0) + 1;
            tx.set(&y, next.into())?;
            Ok(next)
        })
        .spawn()
    };
    ran.notified().await;
    assert_eq!(doc.version().await.unwrap().0, 0, "nothing confirmed yet");
    proxy.thaw();

    first.await.unwrap();
    assert_eq!(second.await.unwrap(), 2);
    // The second run read the first one's pending write, so it waited for
    // that to commit and ran again.
    assert_eq!(second_runs.load(Ordering::SeqCst), 2);
    assert_eq!(client.stats().blocked_waits, 1);
    let (value, _) = server.document(&doc_id("optimistic")).await.unwrap();
    assert_eq!(value, json!({"x": 1, "y": 2}));
    assert_eq!(doc.value().await.unwrap(), value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_transactions_leave_nothing_behind() {
    let server = start_server().await;
    let client = connect(&server.ws_url()).await;
    let doc = client.open("failures").await.unwrap();
    let (kept, scratch) = (ptr("/kept"), ptr("/scratch"));
    let write = kept.clone();
    doc.transact(move |tx| -> TxResult<()> { Ok(tx.set(&write, json!(1))?) }).await.unwrap();

    // The function's own error: its writes are undone, nothing is sent.
    let written = scratch.clone();
    let aborted = doc
        .transact(move |tx| -> TxResult<(), &'static str> {
            tx.set(&written, json!("half done"))?;
            Err(Abort::User("no"))
        })
        .await;
    assert!(matches!(aborted, Err(TransactError::Aborted("no"))), "{aborted:?}");

    // A panicking function: reported, and the replica is reloaded.
    let written = scratch.clone();
    let panicked = doc
        .transact(move |tx| -> TxResult<()> {
            tx.set(&written, json!("half done"))?;
            panic!("a bug in the transaction function");
        })
        .await;
    assert!(matches!(panicked, Err(TransactError::Panicked)), "{panicked:?}");

    // A commit over the server's message size limit is refused here.
    let written = scratch.clone();
    let huge = "x".repeat(DEFAULT_OUTGOING_MESSAGE_BYTES_MAX);
    let refused =
        doc.transact(move |tx| -> TxResult<()> { Ok(tx.set(&written, json!(huge))?) }).await;
    assert!(
        matches!(refused, Err(TransactError::Refused { code: ErrorCode::MessageTooLarge, .. })),
        "{refused:?}"
    );

    // The client carries on, and none of the failed writes is anywhere.
    let bump = kept.clone();
    let next = doc
        .transact(move |tx| -> TxResult<i64> {
            let next = tx.get_i64(&bump).unwrap() + 1;
            tx.set(&bump, next.into())?;
            Ok(next)
        })
        .await
        .unwrap();
    assert_eq!(next, 2);
    let (value, _) = server.document(&doc_id("failures")).await.unwrap();
    assert_eq!(value, json!({"kept": 2}));
    assert_eq!(doc.value().await.unwrap(), value);
}
