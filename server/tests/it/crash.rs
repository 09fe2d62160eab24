//! Crash safety of the real `concord` binary (docs/protocol.md, section 9): many clients commit
//! while the server is killed with SIGKILL at seeded random moments, then it
//! is restarted on the same data directory and checked:
//! - every acknowledged commit is in the log read back from storage, at the
//!   version its acknowledgement named, and no transaction is there twice;
//! - nothing is half-applied: each transaction writes four places (`incr
//!   /n`, `incr /c_<client>`, `/a_<client>`, `/b_<client>`), so a partial
//!   application would break `n == sum of c_*`, `version == 1 + n`,
//!   `a == b`, or `c_<client>` == that client's commits in the log;
//! - nothing appears that was rejected or never sent;
//! - the state equals the replay of that log, which the certificate checker
//!   also checks for serializability;
//! - resubmitting an acknowledged transaction id gets its original outcome.
//!
//! Kills land under load, during group commits and snapshots, and during
//! startup (recovery). Odd cycles run with `--sync off` (a process crash
//! loses nothing there either). `CONCORD_CRASH_SEED=<seed>` replays a seed's
//! choices (kill timing itself depends on the machine),
//! `CONCORD_CRASH_CYCLES=<n>` runs more cycles than the default 20, and
//! `CONCORD_CRASH_LOG=1` shows the servers' logs.
//!
//! A second test damages the tail of the database after a crash (a WAL cut at
//! a random offset, garbage after the WAL or the database file) and checks
//! that the server still starts on a consistent, replayable state.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use concord_engine::certificate::{Checker, CommittedTx};
use concord_engine::{DocId, Limits, Version};
use concord_server::storage::{SqliteOptions, SqliteStorage, Storage, SyncMode, DB_FILE_NAME};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Child;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::within;

const SEED_DEFAULT: u64 = 0x00c0_ffee;
const CYCLES_DEFAULT: usize = 20;
const CLIENTS: usize = 6;
const DOCS: usize = 3;
/// Small, so snapshots (and their compaction) happen during the test.
const SNAPSHOT_EVERY: &str = "40";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn doc_name(doc: usize) -> String {
    format!("crash-{doc}")
}

fn doc_of(client: usize) -> usize {
    client % DOCS
}

/// A running `concord serve`.
struct Binary {
    child: Child,
    addr: SocketAddr,
}

impl Binary {
    /// Starts the binary on `dir` and waits for its address line.
    async fn start(dir: &Path, sync: &str) -> Binary {
        let mut child = spawn(dir, sync);
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = within("the address line", lines.next_line()).await.unwrap();
        let line = line.unwrap_or_else(|| panic!("concord exited before listening on {dir:?}"));
        let addr = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("http://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Binary { child, addr: addr.parse().unwrap() }
    }

    async fn kill9(mut self) {
        self.child.start_kill().unwrap();
        within("the killed server to exit", self.child.wait()).await.unwrap();
    }

    async fn terminate(mut self) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        let exit = within("the server to exit", self.child.wait()).await.unwrap();
        assert!(exit.success(), "graceful shutdown failed: {exit}");
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

fn spawn(dir: &Path, sync: &str) -> Child {
    let stderr = if std::env::var_os("CONCORD_CRASH_LOG").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    tokio::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "2", "--sync", sync])
        .args(["--snapshot-every-commits", SNAPSHOT_EVERY])
        .args(["--rate-messages-per-second", "100000", "--rate-burst-messages-max", "100000"])
        .arg("--data")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Next text message as JSON; `None` once the connection is gone.
async fn next_message(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return Some(serde_json::from_str(&text).unwrap()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(_) => return None,
            Err(_) => panic!("no message within 10 s from a live connection"),
        }
    }
}

async fn connect(url: &str) -> Option<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.ok()?;
    let welcome = next_message(&mut ws).await?;
    assert_eq!(welcome["type"], "welcome");
    Some(ws)
}

async fn send(ws: &mut Ws, message: &Value) -> bool {
    ws.send(Message::text(message.to_string())).await.is_ok()
}

/// Opens `doc`; its value and version, or `None` if the connection died.
async fn open(ws: &mut Ws, doc: &str) -> Option<(Value, u64)> {
    if !send(ws, &json!({"type": "open", "doc": doc})).await {
        return None;
    }
    let mut value = Value::Null;
    loop {
        let message = next_message(ws).await?;
        match message["type"].as_str() {
            Some("snapshot") => value = message["value"].clone(),
            Some("opened") => return Some((value, message["version"].as_u64().unwrap())),
            other => panic!("unexpected {other:?} in an open reply: {message}"),
        }
    }
}

/// One transaction of client `client`: four writes that must land together.
fn transaction(client: usize, tx_id: &str, base: u64) -> Value {
    let reads = if client % 2 == 1 { json!(["/n"]) } else { json!([format!("/a_{client}")]) };
    json!({
        "doc": doc_name(doc_of(client)),
        "tx_id": tx_id,
        "base": base,
        "reads": reads,
        "writes": [
            {"op": "incr", "path": "/n", "value": 1},
            {"op": "add", "path": format!("/a_{client}"), "value": tx_id},
            {"op": "incr", "path": format!("/c_{client}"), "value": 1},
            {"op": "add", "path": format!("/b_{client}"), "value": tx_id},
        ],
    })
}

/// What the clients know, over all cycles.
#[derive(Default)]
struct Ledger {
    /// tx id → (doc index, acknowledged version, the transaction).
    acked: HashMap<String, (usize, u64, Value)>,
    /// Sent, never answered (the server died first).
    pending: HashMap<String, (usize, Value)>,
    rejected: HashSet<String>,
    submitted: HashSet<String>,
}

/// What one load client saw before its server died.
#[derive(Default)]
struct ClientRun {
    acked: Vec<(String, u64, Value)>,
    pending: Vec<(String, Value)>,
    rejected: Vec<String>,
    submitted: Vec<String>,
}

/// Commits in lockstep until the connection dies.
async fn load_client(url: String, client: usize, cycle: usize) -> ClientRun {
    let mut run = ClientRun::default();
    let Some(mut ws) = connect(&url).await else { return run };
    let Some((_, mut version)) = open(&mut ws, &doc_name(doc_of(client))).await else {
        return run;
    };
    for seq in 0.. {
        let tx_id = format!("k{cycle}-c{client}-{seq}");
        let tx = transaction(client, &tx_id, version);
        run.submitted.push(tx_id.clone());
        // Counted as pending before it is sent: a send that fails may still
        // have reached the server.
        let sent = send(&mut ws, &json!({"type": "commit", "tx": tx})).await;
        if !sent {
            run.pending.push((tx_id, tx));
            return run;
        }
        loop {
            let Some(message) = next_message(&mut ws).await else {
                run.pending.push((tx_id, tx));
                return run;
            };
            match message["type"].as_str() {
                Some("change") => version = version.max(message["version"].as_u64().unwrap()),
                Some("committed") => {
                    assert_eq!(message["tx_id"], tx_id.as_str(), "{message}");
                    let at = message["version"].as_u64().unwrap();
                    version = version.max(at);
                    run.acked.push((tx_id, at, tx));
                    break;
                }
                Some("rejected") => {
                    assert_eq!(message["tx_id"], tx_id.as_str(), "{message}");
                    run.rejected.push(tx_id);
                    break;
                }
                other => panic!("client {client}: unexpected {other:?}: {message}"),
            }
        }
    }
    run
}

/// Checks every document against the ledger and the log in `dir`; returns
/// their values and versions.
async fn verify(
    seed: u64,
    cycle: usize,
    ws: &mut Ws,
    ledger: &Ledger,
    dir: &Path,
) -> Vec<(Value, u64)> {
    let mut docs = Vec::new();
    let mut logs = Vec::new();
    for doc in 0..DOCS {
        let name = doc_name(doc);
        let (value, version) = open(ws, &name).await.expect("the checker's connection");
        let at = format!("seed {seed} cycle {cycle} {name}");
        let log = read_log(dir, doc);
        let by_version: HashMap<u64, &str> =
            log.iter().map(|e| (e.version.0, e.tx.tx_id.as_str())).collect();
        for (id, (acked_doc, acked_version, _)) in &ledger.acked {
            if *acked_doc == doc {
                assert_eq!(
                    by_version.get(acked_version).copied(),
                    Some(id.as_str()),
                    "{at}: acknowledged {id} at {acked_version} is lost or moved"
                );
            }
        }
        let mut seen = HashSet::new();
        for entry in &log {
            let id = entry.tx.tx_id.as_str();
            assert!(seen.insert(id), "{at}: {id} applied twice");
            assert!(
                id.starts_with("setup-") || ledger.submitted.contains(id),
                "{at}: {id} was never sent"
            );
            assert!(!ledger.rejected.contains(id), "{at}: {id} was rejected yet applied");
        }
        if version == 0 {
            // Lost with a damaged WAL before its first commit: never written.
            assert_eq!((&value, log.len()), (&json!({}), 0), "{at}");
            docs.push((value, version));
            continue;
        }
        let n = value["n"].as_u64().unwrap_or_else(|| panic!("{at}: no n in {value}"));
        assert_eq!(version, 1 + n, "{at}: every commit adds one version and one to n");
        let mut sum = 0;
        for client in (0..CLIENTS).filter(|c| doc_of(*c) == doc) {
            let (a, b) = (&value[format!("a_{client}")], &value[format!("b_{client}")]);
            assert_eq!(a, b, "{at}: client {client}'s pair is half-applied");
            let count = value[format!("c_{client}")].as_u64().unwrap_or(0);
            let logged = log
                .iter()
                .filter(|e| e.tx.tx_id.as_str().contains(&format!("-c{client}-")))
                .count();
            assert_eq!(count, logged as u64, "{at}: client {client}'s count vs its log entries");
            sum += count;
        }
        assert_eq!(n, sum, "{at}: n vs the clients' counts (half-applied)");
        docs.push((value, version));
        logs.extend(log);
    }
    certify(seed, &logs, &docs);
    docs
}

/// Resubmits transactions after a restart: acknowledged ones must get their
/// original version; unanswered ones are resolved once and for all.
async fn resubmit(seed: u64, ws: &mut Ws, ledger: &mut Ledger, rng: &mut SmallRng) {
    let mut acked: Vec<&String> = ledger.acked.keys().collect();
    acked.sort();
    let sample: Vec<String> =
        (0..8.min(acked.len())).map(|_| acked[rng.gen_range(0..acked.len())].clone()).collect();
    for id in sample {
        let (_, version, tx) = ledger.acked[&id].clone();
        assert!(send(ws, &json!({"type": "commit", "tx": tx})).await);
        let answer = next_message(ws).await.expect("an answer");
        assert_eq!(answer["type"], "committed", "seed {seed}: resubmitted {id}: {answer}");
        assert_eq!(answer["version"], version, "seed {seed}: resubmitted {id}: {answer}");
    }
    let mut pending: Vec<(String, (usize, Value))> = ledger.pending.drain().collect();
    pending.sort_by(|a, b| a.0.cmp(&b.0));
    for (id, (doc, tx)) in pending {
        assert!(send(ws, &json!({"type": "commit", "tx": tx.clone()})).await);
        let answer = next_message(ws).await.expect("an answer");
        match answer["type"].as_str() {
            Some("committed") => {
                let version = answer["version"].as_u64().unwrap();
                ledger.acked.insert(id, (doc, version, tx));
            }
            Some("rejected") => {
                ledger.rejected.insert(id);
            }
            _ => panic!("seed {seed}: resubmitted {id}: {answer}"),
        }
    }
}

fn seed_and_cycles() -> (u64, usize) {
    let seed = std::env::var("CONCORD_CRASH_SEED").map_or(SEED_DEFAULT, |s| s.parse().unwrap());
    let cycles =
        std::env::var("CONCORD_CRASH_CYCLES").map_or(CYCLES_DEFAULT, |s| s.parse().unwrap());
    (seed, cycles)
}

/// Writes `/n = 0` to every document (version 1).
async fn set_up(url: &str) {
    let mut ws = connect(url).await.unwrap();
    for doc in 0..DOCS {
        let name = doc_name(doc);
        open(&mut ws, &name).await.unwrap();
        let writes = json!([{"op": "add", "path": "/n", "value": 0}]);
        let tx = json!({"doc": name, "tx_id": format!("setup-{doc}"), "base": 0, "writes": writes});
        assert!(send(&mut ws, &json!({"type": "commit", "tx": tx})).await);
        let answer = next_message(&mut ws).await.unwrap();
        assert_eq!(answer["version"], 1, "{answer}");
    }
}

/// The whole log of `doc` read back from storage (the full history is
/// retained, so it starts at version 1). Read while the server runs: WAL
/// readers see the last committed state.
fn read_log(dir: &Path, doc: usize) -> Vec<CommittedTx> {
    let options = SqliteOptions {
        sync: SyncMode::Full,
        history_retained_commits: u64::MAX,
        snapshot_spacing_commits: concord_server::config::SNAPSHOT_EVERY_COMMITS,
        limits: Limits::default(),
    };
    let mut storage = SqliteStorage::open(dir, options).unwrap();
    let id = DocId::parse(&doc_name(doc)).unwrap();
    let entries = storage.log(&id, Version(0), Version(u64::MAX >> 1)).unwrap();
    if let Some(first) = entries.first() {
        assert_eq!(first.change.version, Version(1), "{id}'s log must start at 1");
    }
    entries.iter().map(|entry| entry.committed_tx()).collect()
}

/// Replays `log` with the certificate checker; it must end exactly at
/// `docs`.
fn certify(seed: u64, log: &[CommittedTx], docs: &[(Value, u64)]) {
    let certificate =
        Checker::new().replay(log).unwrap_or_else(|v| panic!("seed {seed}: not serializable: {v}"));
    for (doc, (value, version)) in docs.iter().enumerate() {
        let id = DocId::parse(&doc_name(doc)).unwrap();
        let empty = json!({});
        let (replayed, replayed_version) =
            certificate.document(&id).unwrap_or((&empty, Version::ZERO));
        assert_eq!(replayed_version, Version(*version), "seed {seed}: {id}'s version");
        assert_eq!(replayed, value, "seed {seed}: {id} differs from the replay of its log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_commits_survive_kill_9_at_random_moments() {
    let (seed, cycles) = seed_and_cycles();
    let mut rng = SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::default();
    let server = Binary::start(dir.path(), "full").await;
    set_up(&server.url()).await;
    server.kill9().await;

    let mut kills_in_startup = 0;
    for cycle in 0..cycles {
        let sync = if cycle % 2 == 1 { "off" } else { "full" };
        // Now and then the kill lands while the server recovers.
        if rng.gen_ratio(1, 5) {
            let mut child = spawn(dir.path(), sync);
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..30))).await;
            child.start_kill().unwrap();
            within("the killed server to exit", child.wait()).await.unwrap();
            kills_in_startup += 1;
        }
        let server = Binary::start(dir.path(), sync).await;
        let mut checker = connect(&server.url()).await.unwrap();
        verify(seed, cycle, &mut checker, &ledger, dir.path()).await;
        resubmit(seed, &mut checker, &mut ledger, &mut rng).await;
        drop(checker);

        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| tokio::spawn(load_client(server.url(), client, cycle)))
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..300))).await;
        server.kill9().await;
        for client in clients {
            let run = within("a client to notice", client).await.unwrap();
            ledger.submitted.extend(run.submitted);
            ledger.rejected.extend(run.rejected);
            for (id, tx) in run.pending {
                let doc = (0..DOCS).find(|d| tx["doc"] == doc_name(*d).as_str()).unwrap();
                ledger.pending.insert(id, (doc, tx));
            }
            for (id, version, tx) in run.acked {
                let doc = (0..DOCS).find(|d| tx["doc"] == doc_name(*d).as_str()).unwrap();
                ledger.acked.insert(id, (doc, version, tx));
            }
        }
    }

    let server = Binary::start(dir.path(), "full").await;
    let mut checker = connect(&server.url()).await.unwrap();
    verify(seed, cycles, &mut checker, &ledger, dir.path()).await;
    resubmit(seed, &mut checker, &mut ledger, &mut rng).await;
    drop(checker);
    // A graceful stop flushes; what it flushed is there after a restart.
    server.terminate().await;
    let server = Binary::start(dir.path(), "full").await;
    let mut checker = connect(&server.url()).await.unwrap();
    verify(seed, cycles + 1, &mut checker, &ledger, dir.path()).await;
    drop(checker);
    server.kill9().await;
    let acked = ledger.acked.len();
    assert!(acked > cycles * 10, "seed {seed}: only {acked} commits acknowledged; no load?");
    eprintln!(
        "crash test: seed {seed}, {cycles} cycles ({kills_in_startup} kills during startup), \
         {acked} acknowledged, {} rejected",
        ledger.rejected.len()
    );
}

/// Ways to damage the tail of a crashed data directory.
#[derive(Debug, Clone, Copy)]
enum Damage {
    TruncateWal,
    GarbageAfterWal,
    GarbageAfterDb,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_tail_never_prevents_a_start() {
    let (seed, _) = seed_and_cycles();
    let mut rng = SmallRng::seed_from_u64(seed);
    let original = tempfile::tempdir().unwrap();
    let server = Binary::start(original.path(), "full").await;
    set_up(&server.url()).await;
    let run = tokio::time::timeout(Duration::from_secs(20), async {
        let mut ledger = Ledger::default();
        // Lockstep commits from one client: 150 acknowledged, then kill.
        let mut ws = connect(&server.url()).await.unwrap();
        let (_, mut version) = open(&mut ws, &doc_name(0)).await.unwrap();
        for seq in 0..150 {
            let tx_id = format!("w-c0-{seq}");
            let tx = transaction(0, &tx_id, version);
            ledger.submitted.insert(tx_id.clone());
            assert!(send(&mut ws, &json!({"type": "commit", "tx": tx.clone()})).await);
            let answer = next_message(&mut ws).await.unwrap();
            assert_eq!(answer["type"], "committed", "{answer}");
            version = answer["version"].as_u64().unwrap();
            ledger.acked.insert(tx_id, (0, version, tx));
        }
        ledger
    })
    .await
    .unwrap();
    server.kill9().await;
    let wal = original.path().join(format!("{DB_FILE_NAME}-wal"));
    let wal_len = std::fs::metadata(&wal).unwrap().len();
    assert!(wal_len > 32, "the crash left no WAL to damage");

    let mut damages = vec![Damage::GarbageAfterWal, Damage::GarbageAfterDb];
    damages.extend((0..4).map(|_| Damage::TruncateWal));
    for damage in damages {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(original.path()).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        let garbage: Vec<u8> = (0..3000).map(|_| rng.gen()).collect();
        let what = match damage {
            Damage::TruncateWal => {
                let at = rng.gen_range(0..wal_len);
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.path().join(format!("{DB_FILE_NAME}-wal")))
                    .unwrap();
                file.set_len(at).unwrap();
                format!("WAL cut at {at} of {wal_len}")
            }
            Damage::GarbageAfterWal | Damage::GarbageAfterDb => {
                let name = match damage {
                    Damage::GarbageAfterWal => format!("{DB_FILE_NAME}-wal"),
                    _ => DB_FILE_NAME.to_owned(),
                };
                use std::io::Write;
                let mut file =
                    std::fs::OpenOptions::new().append(true).open(dir.path().join(name)).unwrap();
                file.write_all(&garbage).unwrap();
                format!("{damage:?}")
            }
        };
        let server = Binary::start(dir.path(), "full").await;
        let mut checker = connect(&server.url()).await.unwrap();
        let mut ledger_now = Ledger { submitted: run.submitted.clone(), ..Ledger::default() };
        if !matches!(damage, Damage::TruncateWal) {
            // Garbage after valid data loses nothing.
            ledger_now.acked = run.acked.clone();
        }
        let docs = verify(seed, 0, &mut checker, &ledger_now, dir.path()).await;
        drop(checker);
        server.terminate().await;
        eprintln!("damaged tail ({what}): started at version {}", docs[0].1);
    }
}
