//! The client session's behaviour, scenario by scenario, asserted here and
//! recorded as trace vectors in `engine/tests/vectors/session/`: each step's
//! input and everything the machine did in answer. The TypeScript client
//! replays the same files through its port of the machine, so the two
//! clients cannot drift.
//!
//! The recorded files are checked, not rewritten: a change in behaviour
//! fails here until it is reviewed and the files regenerated with
//! `CONCORD_BLESS=1 cargo test -p concord-engine --test session_vectors`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;

use concord_engine::time::Time;
use serde_json::{json, Value};
use support::program::Op;
use support::trace::{Driver, Input};

const SECOND_US: u64 = 1_000_000;

struct Scenario {
    name: &'static str,
    description: &'static str,
    client_id: &'static str,
    seed: u32,
    driver: Driver,
    steps: Vec<Value>,
    /// The time of the last step, in microseconds.
    now: u64,
}

impl Scenario {
    fn new(name: &'static str, description: &'static str) -> Self {
        let (client_id, seed) = ("c", 1);
        Self {
            name,
            description,
            client_id,
            seed,
            driver: Driver::new(client_id, seed),
            steps: Vec::new(),
            now: 0,
        }
    }

    /// Feeds `input` at `at_ms` milliseconds; returns the step's record.
    fn at(&mut self, at_ms: u64, input: Input) -> Value {
        self.at_us(at_ms * 1_000, input)
    }

    fn at_us(&mut self, at_us: u64, input: Input) -> Value {
        assert!(at_us >= self.now, "{}: steps go forward in time", self.name);
        self.now = at_us;
        let mut record = self.driver.step(Time::from_micros(at_us), &input);
        let mut step = json!({ "at_us": at_us, "input": input });
        if let (Value::Object(step), Value::Object(record)) = (&mut step, &mut record) {
            step.append(record);
        }
        if std::env::var_os("CONCORD_TRACE").is_some() {
            eprintln!("{step}");
        }
        self.steps.push(step.clone());
        step
    }

    /// The time of the last step in whole milliseconds, rounded up.
    fn now_ms(&self) -> u64 {
        self.now.div_ceil(1_000)
    }

    /// Feeds a timeout at the time the machine asked for.
    fn timeout(&mut self) -> Value {
        let at = self.driver.session.poll_timeout().expect("the machine waits on time");
        self.at_us(at.as_micros().max(self.now), Input::Timeout)
    }

    /// Connects and takes the welcome of session `session`.
    fn connect(&mut self, at_ms: u64, session: &str) -> Value {
        self.at(at_ms, Input::Connected);
        self.at(at_ms, server(json!({"type": "welcome", "protocol": 1, "session": session})))
    }

    /// Opens `doc` and takes its snapshot at `version` and `opened`.
    fn open(&mut self, at_ms: u64, doc: &str, version: u64, value: Value) -> Value {
        self.at(at_ms, Input::Open { doc: doc.into() });
        self.at(at_ms, snapshot(doc, version, value));
        self.at(at_ms, opened(doc, version))
    }

    /// Checks the recording against its file (or rewrites the file).
    fn finish(self) {
        let vector = json!({
            "name": self.name,
            "description": self.description,
            "client_id": self.client_id,
            "seed": self.seed,
            "steps": self.steps,
        });
        let text = serde_json::to_string_pretty(&vector).expect("a vector encodes") + "\n";
        let path = vectors_dir().join(format!("{}.json", self.name));
        if std::env::var_os("CONCORD_BLESS").is_some() {
            std::fs::write(&path, text).expect("the vector is written");
            return;
        }
        let recorded = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            recorded == text,
            "{} does not hold what the machine does now; review the change, then regenerate \
             with CONCORD_BLESS=1 cargo test -p concord-engine --test session_vectors\n\
             now:\n{text}",
            path.display()
        );
    }
}

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/session")
}

fn server(message: Value) -> Input {
    Input::Message { message }
}

fn snapshot(doc: &str, version: u64, value: Value) -> Input {
    server(json!({"type": "snapshot", "doc": doc, "version": version, "value": value}))
}

fn opened(doc: &str, version: u64) -> Input {
    server(json!({"type": "opened", "doc": doc, "version": version}))
}

fn change(doc: &str, version: u64, tx_id: &str, patch: Value) -> Input {
    server(
        json!({"type": "change", "doc": doc, "version": version, "tx_id": tx_id, "patch": patch}),
    )
}

fn committed(doc: &str, tx_id: &str, version: u64) -> Input {
    server(json!({"type": "committed", "doc": doc, "tx_id": tx_id, "version": version}))
}

fn rejected(doc: &str, tx_id: &str, rejection: Value) -> Input {
    server(json!({"type": "rejected", "doc": doc, "tx_id": tx_id, "rejection": rejection}))
}

fn conflict(path: &str, version: u64) -> Value {
    json!({"reason": "conflict", "conflicts": [{"pointer": path, "version": version}], "conflicts_total": 1})
}

fn transact(doc: &str, program: Vec<Op>) -> Input {
    Input::Transact { doc: doc.into(), program, attempts_max: 64 }
}

fn add_one(path: &str) -> Vec<Op> {
    vec![Op::AddOne { path: path.into() }]
}

/// The messages a step sent, in order.
fn sent(step: &Value) -> Vec<Value> {
    step["sends"].as_array().into_iter().flatten().filter_map(|s| s.get("text").cloned()).collect()
}

fn sent_types(step: &Value) -> Vec<String> {
    sent(step).iter().map(|m| m["type"].as_str().unwrap_or_default().to_owned()).collect()
}

fn events(step: &Value, name: &str) -> Vec<Value> {
    step["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|event| event["event"] == name)
        .cloned()
        .collect()
}

fn settlement(step: &Value) -> Value {
    let settled = events(step, "settled");
    assert_eq!(settled.len(), 1, "one settlement in {step:#}");
    settled[0]["settlement"].clone()
}

#[test]
fn a_transaction_commits_and_its_change_reaches_the_view() {
    let mut s = Scenario::new("commit", "open a document, run a transaction, take `committed`");
    s.connect(0, "s1");
    let step = s.open(1, "d", 3, json!({"n": 1}));
    assert_eq!(events(&step, "opened").len(), 1);
    let step = s.at(2, transact("d", add_one("/n")));
    let commit = &sent(&step)[0];
    assert_eq!(commit["type"], "commit");
    assert_eq!(commit["tx"]["tx_id"], "c-1");
    assert_eq!(commit["tx"]["base"], 3);
    assert_eq!(step["docs"]["d"]["view"], json!({"n": 2}), "the write shows at once");
    let step = s.at(5, committed("d", "c-1", 4));
    assert_eq!(
        settlement(&step),
        json!({"kind": "committed", "tx_id": "c-1", "version": 4, "runs": 1})
    );
    assert_eq!(step["docs"]["d"]["version"], 4);
    assert_eq!(step["docs"]["d"]["pending"], json!([]));
    s.finish();
}

#[test]
fn a_change_delivered_twice_settles_our_transaction_once() {
    let mut s = Scenario::new(
        "duplicate-change",
        "our own commit arrives as a change, then again (a resume replays it): one settlement, one version",
    );
    s.connect(0, "s1");
    s.open(1, "d", 1, json!({"n": 0}));
    s.at(2, transact("d", add_one("/n")));
    let step = s.at(3, change("d", 2, "c-1", json!([{"op": "replace", "path": "/n", "value": 1}])));
    assert_eq!(settlement(&step)["kind"], "committed");
    let step = s.at(4, change("d", 2, "c-1", json!([{"op": "replace", "path": "/n", "value": 1}])));
    assert!(step["events"].as_array().unwrap().is_empty(), "a duplicate does nothing: {step:#}");
    let step = s.at(5, committed("d", "c-1", 2));
    assert!(events(&step, "settled").is_empty());
    assert_eq!(
        step["docs"]["d"],
        json!({"open": true, "version": 2, "view": {"n": 1}, "pending": []})
    );
    s.finish();
}

#[test]
fn our_change_arriving_below_the_held_version_settles_our_transaction() {
    let mut s = Scenario::new(
        "duplicate-own-change-after-snapshot",
        "a snapshot already holds our pending transaction's commit; its change then arrives again (at or below the held version): the transaction settles as committed, once, and a later `committed` changes nothing",
    );
    s.connect(0, "s1");
    s.open(1, "d", 1, json!({"n": 0}));
    s.at(2, transact("d", add_one("/n")));
    s.at(
        3,
        server(json!({"type": "error", "code": "resynced", "message": "fell behind", "doc": "d"})),
    );
    s.at(3, snapshot("d", 3, json!({"n": 1, "m": 1})));
    let step = s.at(4, change("d", 2, "c-1", json!([{"op": "replace", "path": "/n", "value": 1}])));
    assert_eq!(
        settlement(&step),
        json!({"kind": "committed", "tx_id": "c-1", "version": 2, "runs": 1})
    );
    assert_eq!(step["docs"]["d"]["pending"], json!([]));
    assert_eq!(step["docs"]["d"]["view"], json!({"n": 1, "m": 1}));
    s.at(5, opened("d", 3));
    let step = s.at(6, committed("d", "c-1", 2));
    assert!(step["events"].as_array().unwrap().is_empty(), "{step:#}");
    assert_eq!(step["docs"]["d"]["version"], 3);
    s.finish();
}

#[test]
fn a_conflict_re_runs_on_the_current_replica_after_the_pause() {
    let mut s = Scenario::new(
        "conflict-rerun",
        "rejected for a conflict after the change that caused it: the re-run waits out the contention pause, then commits",
    );
    s.connect(0, "s1");
    s.open(1, "d", 1, json!({"n": 0}));
    s.at(2, transact("d", add_one("/n")));
    s.at(4, change("d", 2, "x-9", json!([{"op": "replace", "path": "/n", "value": 5}])));
    let step = s.at(5, rejected("d", "c-1", conflict("/n", 2)));
    assert!(events(&step, "run").is_empty(), "a contended document pauses the re-run");
    let pause_ends = step["timeout_us"].as_u64().unwrap();
    // Level 1: a window of max(round trip 3 ms, 10 ms) · 2.
    assert!(pause_ends > 5_000 && pause_ends <= 5_000 + 20_000, "{pause_ends}");
    let step = s.timeout();
    let commit = &sent(&step)[0];
    assert_eq!(commit["tx"]["tx_id"], "c-2", "a re-run is a new transaction id");
    assert_eq!(commit["tx"]["base"], 2);
    assert_eq!(step["docs"]["d"]["view"], json!({"n": 6}));
    let at = s.now_ms() + 3;
    let step = s.at(at, committed("d", "c-2", 3));
    assert_eq!(
        settlement(&step),
        json!({"kind": "committed", "tx_id": "c-2", "version": 3, "runs": 2})
    );
    s.finish();
}

#[test]
fn a_storm_of_conflicts_widens_the_pause_and_ends_at_the_attempt_limit() {
    let mut s = Scenario::new(
        "conflict-storm",
        "every run is rejected: the pause window widens with the contention level, and the transaction gives up after attempts_max rejections; a new transaction's first run still goes at once",
    );
    s.connect(0, "s1");
    s.open(1, "d", 1, json!({"n": 0}));
    s.at(2, Input::Transact { doc: "d".into(), program: add_one("/n"), attempts_max: 4 });
    let mut version = 1;
    let mut pauses = Vec::new();
    for attempt in 1..=4u64 {
        let tx = format!("c-{attempt}");
        version += 1;
        let at = s.now_ms() + 2;
        s.at(
            at,
            change("d", version, "x", json!([{"op": "replace", "path": "/n", "value": version}])),
        );
        let step = s.at(at + 1, rejected("d", &tx, conflict("/n", version)));
        if attempt == 4 {
            let settled = settlement(&step);
            assert_eq!(settled["kind"], "rejected");
            assert_eq!(settled["attempts"], 4);
            // The document is contended, but a first run goes at once: only
            // re-runs after a rejection wait.
            let step = s.at(at + 2, transact("d", add_one("/n")));
            assert_eq!(events(&step, "run").len(), 1, "{step:#}");
            assert_eq!(sent_types(&step), vec!["commit"]);
            break;
        }
        let until = step["timeout_us"].as_u64().unwrap();
        pauses.push(until - s.now);
        let step = s.timeout();
        assert_eq!(sent(&step)[0]["tx"]["tx_id"], format!("c-{}", attempt + 1));
    }
    // Round trips of 3 ms, under the 10 ms floor: windows of 20, 40, 80 ms.
    for (level, pause) in pauses.iter().enumerate() {
        assert!(*pause <= 10_000 << (level + 1), "pause {level} is {pause} µs");
    }
    s.finish();
}

#[test]
fn retry_waits_for_a_change_to_what_it_read() {
    let mut s = Scenario::new(
        "retry-wakeup",
        "an STM retry sleeps until a change overlaps what it read; a change elsewhere does not wake it",
    );
    s.connect(0, "s1");
    s.open(1, "d", 1, json!({"ready": null, "other": 0}));
    let step = s.at(
        2,
        transact(
            "d",
            vec![
                Op::RetryUnless { path: "/ready".into() },
                Op::Set { path: "/seen".into(), value: json!(true) },
            ],
        ),
    );
    assert_eq!(events(&step, "run")[0]["report"], "retry");
    let step =
        s.at(3, change("d", 2, "x-1", json!([{"op": "replace", "path": "/other", "value": 1}])));
    assert!(events(&step, "run").is_empty(), "an unrelated change does not wake it");
    let step =
        s.at(4, change("d", 3, "x-2", json!([{"op": "replace", "path": "/ready", "value": 1}])));
    let runs = events(&step, "run");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["report"], "submit");
    let step = s.at(6, committed("d", "c-2", 4));
    assert_eq!(settlement(&step)["runs"], 2);
    s.finish();
}

#[test]
fn or_else_waits_for_a_change_to_what_either_branch_read() {
    let mut s = Scenario::new(
        "or-else-wakeup",
        "orElse: both branches retry, so the run waits for a change to what either read; a change to the second branch's read wakes it, and the second branch commits",
    );
    s.connect(0, "s1");
    s.open(1, "d", 1, json!({"a": null, "b": null, "other": 0}));
    let take = |path: &str| {
        vec![
            Op::RetryUnless { path: path.into() },
            Op::Set { path: "/took".into(), value: json!(path) },
        ]
    };
    let program = vec![Op::OrElse { first: take("/a"), second: take("/b") }];
    let step = s.at(2, transact("d", program));
    assert_eq!(events(&step, "run")[0]["report"], "retry");
    let step =
        s.at(3, change("d", 2, "x-1", json!([{"op": "replace", "path": "/other", "value": 1}])));
    assert!(events(&step, "run").is_empty(), "an unrelated change does not wake it");
    let step = s.at(4, change("d", 3, "x-2", json!([{"op": "replace", "path": "/b", "value": 1}])));
    assert_eq!(events(&step, "run")[0]["report"], "submit");
    assert_eq!(step["docs"]["d"]["view"]["took"], "/b", "the second branch ran");
    let step = s.at(6, committed("d", "c-2", 4));
    assert_eq!(settlement(&step)["kind"], "committed");
    s.finish();
}

#[test]
fn a_cut_resumes_from_the_held_version_and_resubmits_pending_transactions() {
    let mut s = Scenario::new(
        "resume-connection-lost",
        "the connection breaks with a transaction in flight; after the backoff the machine reconnects, resumes from its version and resubmits under the same id, and the server's deduplicated answer settles it",
    );
    s.connect(0, "s1");
    s.open(1, "d", 5, json!({"n": 0}));
    s.at(2, transact("d", add_one("/n")));
    let step = s.at(3, Input::Disconnected { code: None, reason: String::new() });
    let link = &events(&step, "link")[0];
    assert_eq!(link["state"], "disconnected");
    assert_eq!(step["docs"]["d"]["pending"], json!(["c-1"]), "still pending");
    let step = s.timeout();
    assert_eq!(step["sends"], json!(["connect"]));
    let at = s.now_ms();
    let step = s.connect(at, "s2");
    assert_eq!(sent(&step), vec![json!({"type": "open", "doc": "d", "version": 5})]);
    s.at(at + 1, change("d", 6, "x-1", json!([{"op": "add", "path": "/m", "value": 1}])));
    let step = s.at(at + 1, opened("d", 6));
    let resent = &sent(&step).first().cloned().unwrap_or_else(|| panic!("{step:#}"));
    assert_eq!(resent["tx"]["tx_id"], "c-1", "resubmitted under its id");
    // The server's dedup window remembered the first submission.
    let step = s.at(at + 2, committed("d", "c-1", 7));
    assert_eq!(settlement(&step)["kind"], "committed");
    assert_eq!(step["docs"]["d"]["view"], json!({"n": 1, "m": 1}));
    s.finish();
}

#[test]
fn a_resubmission_answered_outcome_unknown_is_not_re_run() {
    let mut s = Scenario::new(
        "resubmission-outcome-unknown",
        "a resubmitted transaction is answered outcome_unknown: its first send may have committed, so it settles as unknown instead of running again; a first submission answered so is re-run",
    );
    s.connect(0, "s1");
    s.open(1, "d", 1, json!({"n": 0}));
    s.at(2, transact("d", add_one("/n")));
    s.at(3, transact("e", add_one("/n")));
    s.at(4, Input::Disconnected { code: Some(1001), reason: "going away".into() });
    s.timeout();
    let at = s.now_ms();
    s.connect(at, "s2");
    s.at(at, opened("d", 1));
    let unknown = json!({"reason": "outcome_unknown", "base": 1, "floor": 2});
    let step = s.at(at + 1, rejected("d", "c-1", unknown.clone()));
    assert_eq!(settlement(&step), json!({"kind": "outcome_unknown", "tx_id": "c-1"}));
    assert_eq!(step["docs"]["d"]["pending"], json!([]));
    // A first submission answered outcome_unknown cannot have committed.
    let step = s.at(at + 2, transact("d", add_one("/n")));
    let tx = sent(&step)[0]["tx"]["tx_id"].as_str().unwrap().to_owned();
    let step = s.at(at + 3, rejected("d", &tx, unknown));
    assert!(events(&step, "settled").is_empty(), "re-run, not settled: {step:#}");
    s.finish();
}

#[test]
fn a_resubmission_answered_rejected_re_runs() {
    let mut s = Scenario::new(
        "resubmission-rejected",
        "after a 4001 close (the session fell behind) the resubmission is answered with a conflict: the transaction re-runs on the current replica",
    );
    s.connect(0, "s1");
    s.open(1, "d", 1, json!({"n": 0}));
    s.at(2, transact("d", add_one("/n")));
    s.at(3, Input::Disconnected { code: Some(4001), reason: "too slow".into() });
    s.timeout();
    let at = s.now_ms();
    s.connect(at, "s2");
    s.at(at, change("d", 2, "x-1", json!([{"op": "replace", "path": "/n", "value": 10}])));
    s.at(at, opened("d", 2));
    let step = s.at(at + 1, rejected("d", "c-1", conflict("/n", 2)));
    assert!(events(&step, "settled").is_empty());
    let step = s.timeout();
    assert_eq!(step["docs"]["d"]["view"], json!({"n": 11}));
    s.finish();
}

#[test]
fn a_snapshot_on_resume_keeps_pending_transactions_and_recognises_their_commit() {
    let mut s = Scenario::new(
        "snapshot-resume-pending",
        "the server resumes with a snapshot (the history no longer reaches back): pending transactions are rebased onto it and resubmitted; one the snapshot already includes settles as committed without being applied twice",
    );
    s.connect(0, "s1");
    s.open(1, "d", 1, json!({"n": 0, "list": []}));
    s.at(2, transact("d", add_one("/n")));
    s.at(3, transact("d", vec![Op::Set { path: "/flag".into(), value: json!(true) }]));
    s.at(4, Input::Disconnected { code: None, reason: String::new() });
    s.timeout();
    let at = s.now_ms();
    s.connect(at, "s2");
    // c-1 committed as version 2 before the cut; the snapshot includes it.
    let step = s.at(at, snapshot("d", 9, json!({"n": 1, "list": [1]})));
    assert_eq!(events(&step, "reset").len(), 1);
    let step = s.at(at, opened("d", 9));
    let resent: Vec<Value> = sent(&step).iter().map(|m| m["tx"]["tx_id"].clone()).collect();
    assert_eq!(resent, vec![json!("c-1"), json!("c-2")]);
    let step = s.at(at + 1, committed("d", "c-1", 2));
    assert_eq!(settlement(&step)["kind"], "committed");
    assert_eq!(
        step["docs"]["d"]["view"],
        json!({"n": 1, "list": [1], "flag": true}),
        "n applied once"
    );
    let step = s.at(at + 2, committed("d", "c-2", 10));
    assert_eq!(step["docs"]["d"]["view"], json!({"n": 1, "list": [1], "flag": true}));
    s.finish();
}

#[test]
fn a_server_resync_reloads_and_resubmits() {
    let mut s = Scenario::new(
        "resync",
        "the server drops the session's backlog (error resynced), then sends a snapshot and opened: pending transactions are resubmitted",
    );
    s.connect(0, "s1");
    s.open(1, "d", 1, json!({"n": 0}));
    s.at(2, transact("d", add_one("/n")));
    s.at(
        3,
        server(json!({"type": "error", "code": "resynced", "message": "fell behind", "doc": "d"})),
    );
    s.at(3, snapshot("d", 4, json!({"n": 3})));
    let step = s.at(3, opened("d", 4));
    assert_eq!(sent_types(&step), vec!["commit"]);
    // add_one wrote `replace /n 1`, which stays pending over the snapshot.
    assert_eq!(
        step["docs"]["d"]["view"],
        json!({"n": 1}),
        "the pending write is rebased onto the snapshot"
    );
    assert_eq!(step["docs"]["d"]["version"], 4);
    s.finish();
}

#[test]
fn a_silent_server_is_detected_and_left() {
    let mut s = Scenario::new(
        "dead-server",
        "pings go out every ping interval; when nothing is heard for longer than the silence timeout, the session is dropped and the machine reconnects",
    );
    s.connect(0, "s1");
    let mut pings = 0;
    loop {
        let step = s.timeout();
        if events(&step, "link").first().is_some_and(|link| link["state"] == "disconnected") {
            assert_eq!(events(&step, "link")[0]["reason"], "the server went silent");
            assert!(step["sends"].as_array().unwrap().contains(&json!("disconnect")));
            assert!(s.now > 20 * SECOND_US);
            break;
        }
        assert_eq!(step["sends"], json!(["ping"]));
        pings += 1;
        assert!(pings < 10, "the silent server is detected");
        if pings == 2 {
            // A pong: heard at 10 s, so silence counts from there.
            let at = s.now;
            s.at_us(at, Input::Heard);
        }
    }
    assert!(s.now > 30 * SECOND_US, "the pong at 10 s postponed the verdict");
    let step = s.timeout();
    assert_eq!(step["sends"], json!(["connect"]));
    s.finish();
}

#[test]
fn an_expired_token_reconnects_at_once_and_a_refused_one_backs_off() {
    let mut s = Scenario::new(
        "token-expiry",
        "token_expired after a long session reconnects at once; a 4003 close shows unauthorized (with the error's message) and waits out the backoff",
    );
    s.connect(0, "s1");
    s.open(1, "d", 1, json!({}));
    let step = s.at(
        60_000,
        server(json!({"type": "error", "code": "token_expired", "message": "expired"})),
    );
    assert_eq!(step["sends"], json!(["disconnect"]));
    assert_eq!(step["timeout_us"], 60_000_000, "reconnect now");
    let step = s.timeout();
    assert_eq!(step["sends"], json!(["connect"]));
    s.connect(60_000, "s2");
    s.at(60_001, server(json!({"type": "error", "code": "unauthorized", "message": "revoked"})));
    let step = s.at(60_002, Input::Disconnected { code: Some(4003), reason: String::new() });
    let link = &events(&step, "link")[0];
    assert_eq!(link["state"], "unauthorized");
    assert_eq!(link["message"], "revoked");
    assert!(step["timeout_us"].as_u64().unwrap() > 60_002_000);
    s.finish();
}

#[test]
fn channels_are_renewed_and_calls_lost_on_a_cut() {
    let mut s = Scenario::new(
        "channels-resume",
        "subscriptions and registrations go out again on every session; calls and confirmed publishes in flight fail when the session ends",
    );
    s.connect(0, "s1");
    s.at(1, Input::Subscribe { pattern: "room.*".into() });
    let step = s.at(2, server(json!({"type": "subscribed", "topic": "room.*"})));
    assert_eq!(events(&step, "subscribed").len(), 1);
    s.at(3, Input::Register { method: "echo".into() });
    s.at(4, server(json!({"type": "registered", "method": "echo"})));
    let step = s.at(5, Input::Call { call: 1, method: "sum".into(), params: json!([1, 2]) });
    assert_eq!(sent(&step)[0]["message"]["id"], 1);
    let step = s.at(
        6,
        Input::Publish { topic: "room.a".into(), data: json!(1), echo: false, confirm: true },
    );
    assert_eq!(step["returned"], json!({"ack": 1}));
    let step = s.at(7, server(json!({"type": "rpc", "message": {"jsonrpc": "2.0", "id": 9, "method": "echo", "params": ["x"]}})));
    assert_eq!(events(&step, "rpc")[0]["epoch"], 1);
    let step = s.at(8, Input::Disconnected { code: None, reason: String::new() });
    assert_eq!(events(&step, "call_lost").len(), 1);
    assert_eq!(events(&step, "publish_refused").len(), 1);
    let step = s.at(
        8,
        Input::Reply { epoch: 1, message: json!({"jsonrpc": "2.0", "id": 9, "result": "x"}) },
    );
    assert!(
        step["sends"].as_array().unwrap().is_empty(),
        "an answer for an ended session is dropped"
    );
    s.timeout();
    let at = s.now_ms();
    let step = s.connect(at, "s2");
    assert_eq!(sent_types(&step), vec!["subscribe", "register"]);
    let step = s.at(at + 1, Input::Call { call: 2, method: "sum".into(), params: json!([]) });
    assert_eq!(step["returned"], json!({"ok": true}));
    let step = s.at(
        at + 2,
        server(json!({"type": "rpc", "message": {"jsonrpc": "2.0", "id": 2, "result": 3}})),
    );
    assert_eq!(events(&step, "call_answered")[0]["result"], 3);
    s.finish();
}

#[test]
fn a_rate_limited_open_is_sent_again_at_the_next_heartbeat() {
    let mut s = Scenario::new(
        "open-rate-limited",
        "the server drops an open under its rate limit: it goes out again with the next ping",
    );
    s.connect(0, "s1");
    s.at(1, Input::Open { doc: "d".into() });
    s.at(
        2,
        server(
            json!({"type": "error", "code": "rate_limited", "message": "slow down", "doc": "d"}),
        ),
    );
    let step = s.timeout();
    assert_eq!(sent_types(&step), vec!["open"]);
    s.finish();
}

#[test]
fn a_gap_in_the_changes_reloads_the_replica() {
    let mut s = Scenario::new(
        "gap-reload",
        "a change that skips a version means one is missing: the replica is reloaded from a snapshot, and what arrives meanwhile is ignored",
    );
    s.connect(0, "s1");
    s.open(1, "d", 1, json!({"n": 0}));
    let step = s.at(2, change("d", 3, "x-1", json!([{"op": "replace", "path": "/n", "value": 3}])));
    assert_eq!(events(&step, "reloading").len(), 1);
    assert_eq!(
        sent(&step),
        vec![json!({"type": "close", "doc": "d"}), json!({"type": "open", "doc": "d"})]
    );
    let step = s.at(3, change("d", 2, "x-0", json!([{"op": "replace", "path": "/n", "value": 2}])));
    assert!(step["events"].as_array().unwrap().is_empty());
    s.at(4, snapshot("d", 3, json!({"n": 3})));
    let step = s.at(4, opened("d", 3));
    assert_eq!(events(&step, "opened").len(), 1);
    assert_eq!(step["docs"]["d"]["view"], json!({"n": 3}));
    s.finish();
}
