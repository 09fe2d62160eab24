//! Seeded network simulation of server and clients (issue 3): several
//! clients, each behind its own fault-injecting proxy, run a mixed workload
//! while a seeded schedule partitions them (frozen links hold the server's
//! bytes), delays them, and cuts their sockets. Afterwards every transaction
//! must have committed exactly once (exact counters, no lost or doubled
//! append), every replica must equal the server, and the commit log must pass
//! the serializability certificate.
//!
//! The fault schedule and the workload are drawn from the seed, which a
//! failure prints; `CONCORD_NETSIM_SEED=<seed>` replays that schedule and
//! `CONCORD_NETSIM_SEEDS=<n>` runs more seeds. Real sockets and tokio's real
//! scheduler decide the exact interleaving, so a replay repeats the faults,
//! not every byte's timing (unlike the engine's fully deterministic
//! simulation in engine/tests/simulation.rs).

use std::time::Duration;

use concord_client::{Document, Pointer, TxResult};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::support::{certify, connect, doc_id, start_server, Proxy};

const SEEDS_DEFAULT: u64 = 3;
const CLIENTS: usize = 5;
const JOBS_PER_CLIENT: usize = 40;
const DOC: &str = "netsim";
/// Bounds the whole run: a stuck transaction is a liveness bug.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    CounterRmw,
    CounterIncr,
    MoveOwnShape,
    Append,
}

fn ptr(raw: &str) -> Pointer {
    Pointer::parse(raw).unwrap()
}

async fn run_job(doc: &Document, client: usize, job: Job, nonce: usize) {
    let result = match job {
        Job::CounterRmw => {
            doc.transact(|tx| -> TxResult<()> {
                let n = tx.get_i64(&ptr("/counter")).unwrap_or(0);
                Ok(tx.set(&ptr("/counter"), json!(n + 1))?)
            })
            .await
        }
        Job::CounterIncr => {
            doc.transact(|tx| -> TxResult<()> { Ok(tx.increment(&ptr("/hits"), 1)?) }).await
        }
        Job::MoveOwnShape => {
            let x = ptr(&format!("/shapes/c{client}/x"));
            doc.transact(move |tx| -> TxResult<()> {
                let at = tx.get_i64(&x).unwrap_or(0);
                Ok(tx.set(&x, json!(at + 1))?)
            })
            .await
        }
        Job::Append => {
            let item = json!(format!("c{client}-{nonce}"));
            doc.transact(move |tx| -> TxResult<()> { Ok(tx.push(&ptr("/items"), item.clone())?) })
                .await
        }
    };
    result.unwrap_or_else(|e| panic!("client {client} job {job:?}: {e}"));
}

fn draw_job(rng: &mut SmallRng) -> Job {
    match rng.gen_range(0..4) {
        0 => Job::CounterRmw,
        1 => Job::CounterIncr,
        2 => Job::MoveOwnShape,
        _ => Job::Append,
    }
}

/// Runs one seed; returns the socket cuts the clients saw and the rejections
/// they re-ran, so the caller can check the schedule bit.
async fn simulate(seed: u64) -> (u64, u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let server = start_server().await;
    // Set the shared structures up before the clients start.
    let setup = connect(&server.ws_url()).await;
    let doc = setup.open(DOC).await.unwrap();
    doc.transact(|tx| -> TxResult<()> {
        tx.set(&ptr("/items"), json!([]))?;
        let shapes: serde_json::Map<String, Value> =
            (0..CLIENTS).map(|c| (format!("c{c}"), json!({"x": 0}))).collect();
        Ok(tx.set(&ptr("/shapes"), Value::Object(shapes.clone()))?)
    })
    .await
    .unwrap();

    let mut proxies = Vec::new();
    let mut workers = Vec::new();
    let mut jobs = Vec::new();
    for client in 0..CLIENTS {
        let proxy = Proxy::start(server.local_addr()).await;
        let handle = connect(&proxy.url()).await;
        let doc = handle.open(DOC).await.unwrap();
        let list: Vec<Job> = (0..JOBS_PER_CLIENT).map(|_| draw_job(&mut rng)).collect();
        jobs.push(list.clone());
        workers.push(tokio::spawn(async move {
            for (nonce, job) in list.into_iter().enumerate() {
                run_job(&doc, client, job, nonce).await;
            }
            (handle, doc)
        }));
        proxies.push(proxy);
    }

    // The fault schedule: until the workers finish, pick a link and freeze,
    // thaw or cut it, then wait a drawn delay. Every frozen link is thawed
    // at the end, so the run can always finish.
    let (done_tx, mut done_rx) = watch::channel(false);
    let schedule_seed = rng.gen::<u64>();
    let chaos = tokio::spawn(async move {
        let mut rng = SmallRng::seed_from_u64(schedule_seed);
        let mut faults = 0u32;
        while !*done_rx.borrow() {
            let link = &proxies[rng.gen_range(0..proxies.len())];
            match rng.gen_range(0..10) {
                0..=3 => link.freeze(),
                4..=7 => link.thaw(),
                _ => link.sever(),
            }
            faults += 1;
            let delay = Duration::from_millis(rng.gen_range(1..25));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = done_rx.changed() => {}
            }
        }
        for link in &proxies {
            link.thaw();
        }
        faults
    });

    let mut finished = Vec::new();
    for worker in workers {
        finished.push(worker.await.unwrap());
    }
    done_tx.send_replace(true);
    let faults = chaos.await.unwrap();
    assert!(faults > 0, "seed {seed}: the schedule injected no fault");

    // Every replica catches up with the server.
    let (value, version) = server.document(&doc_id(DOC)).await.unwrap();
    for (client, (_, doc)) in finished.iter().enumerate() {
        let mut changes = doc.changes();
        while doc.version().await.unwrap() < version {
            changes.next().await.unwrap();
        }
        assert_eq!(doc.value().await.unwrap(), value, "seed {seed}: client {client} diverged");
    }
    let count = |kind: Job| jobs.iter().flatten().filter(|j| **j == kind).count() as i64;
    assert_eq!(
        value["counter"].as_i64().unwrap_or(0),
        count(Job::CounterRmw),
        "seed {seed}: lost update"
    );
    assert_eq!(
        value["hits"].as_i64().unwrap_or(0),
        count(Job::CounterIncr),
        "seed {seed}: lost incr"
    );
    let items = value["items"].as_array().unwrap();
    assert_eq!(items.len() as i64, count(Job::Append), "seed {seed}: lost or doubled append");
    let mut unique: Vec<&Value> = items.iter().collect();
    unique.sort_by_key(|v| v.to_string());
    unique.dedup();
    assert_eq!(unique.len(), items.len(), "seed {seed}: an append committed twice");
    for (client, list) in jobs.iter().enumerate() {
        let moves = list.iter().filter(|j| **j == Job::MoveOwnShape).count() as i64;
        let x = value.pointer(&format!("/shapes/c{client}/x")).and_then(Value::as_i64).unwrap_or(0);
        assert_eq!(x, moves, "seed {seed}: client {client}'s moves");
    }
    certify(&server, &[DOC]).await;
    let stats: Vec<_> = finished.iter().map(|(client, _)| client.stats()).collect();
    server.shutdown().await;
    (stats.iter().map(|s| s.disconnects).sum(), stats.iter().map(|s| s.rejections).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_survive_partitions_delays_and_cuts() {
    let seeds: Vec<u64> = match std::env::var("CONCORD_NETSIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("CONCORD_NETSIM_SEED is a u64")],
        Err(_) => {
            let n = std::env::var("CONCORD_NETSIM_SEEDS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(SEEDS_DEFAULT);
            (0..n).collect()
        }
    };
    let (mut cuts, mut rejections) = (0, 0);
    for seed in seeds {
        eprintln!("netsim seed {seed} (replay with CONCORD_NETSIM_SEED={seed})");
        let (seed_cuts, seed_rejections) = tokio::time::timeout(RUN_TIMEOUT, simulate(seed))
            .await
            .unwrap_or_else(|_| panic!("seed {seed}: no progress within {RUN_TIMEOUT:?}"));
        eprintln!(
            "netsim seed {seed}: {seed_cuts} socket cuts, {seed_rejections} rejections re-run"
        );
        cuts += seed_cuts;
        rejections += seed_rejections;
    }
    // A schedule family that never cut a socket or caused a conflict would
    // test nothing about resuming or re-running.
    assert!(cuts > 0 && rejections > 0, "cuts {cuts}, rejections {rejections}");
}
