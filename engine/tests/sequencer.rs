//! The sequencer against a fake storage: the tests hand it the tickets it
//! gave out (or a failure) and look at the effects it releases. Time is a
//! parameter; nothing sleeps.
// Test helpers fail the test on bad fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use concord_engine::protocol::close_code;
use concord_engine::sequencer::{
    Burst, Command, Decided, Durability, Effect, Reply, Sequencer, SequencerConfig, Shell, Ticket,
    UnixMillis,
};
use concord_engine::{AllowAll, DocId, Limits, Store, Transaction, Version};
use serde_json::{json, Value};

/// Sessions and requests are numbers; frames are shared strings.
#[derive(Debug)]
struct Test;

impl Shell for Test {
    type SessionKey = u32;
    type Session = u32;
    type Request = u32;
    type Frame = Arc<str>;

    fn session_key(session: &u32) -> &u32 {
        session
    }
}

const NOW: UnixMillis = UnixMillis(1_000);
const ROOMY: Burst = Burst { frames_max: 1_000, bytes_max: 1 << 20 };

fn config() -> SequencerConfig {
    SequencerConfig {
        history_changes_max: 100,
        history_bytes_max: 1 << 20,
        snapshot_cache_bytes_max: 1 << 20,
        docs_max: 100,
        pending_effects_max: 1_000,
        pending_effect_bytes_max: 1 << 20,
    }
}

fn sequencer(durable: bool) -> Sequencer<Test> {
    sequencer_with(config(), durable, Arc::new(AtomicUsize::new(0)))
}

fn sequencer_with(
    config: SequencerConfig,
    durable: bool,
    held: Arc<AtomicUsize>,
) -> Sequencer<Test> {
    let durability = durable.then(|| Durability {
        snapshot_every_commits: 1_000,
        replay_commits_max: 1_000,
        since_snapshot: Default::default(),
    });
    Sequencer::new(Store::new(Limits::default()), config, held, durability)
}

fn doc(name: &str) -> DocId {
    DocId::parse(name).unwrap()
}

fn tx(doc: &str, id: &str, base: u64, reads: &[&str], path: &str) -> Transaction {
    serde_json::from_value(json!({"doc": doc, "tx_id": id, "base": base, "reads": reads,
        "writes": [{"op": "add", "path": path, "value": id}]}))
    .unwrap()
}

/// What one effect shows, in a form easy to compare.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Send { to: u32, message: Value, urgent: bool },
    Ack { to: u32, request: u32, message: Value },
    Reply { request: u32, reply: Reply },
    Close { session: u32, code: u16 },
}

fn decode(frame: &str) -> Value {
    serde_json::from_str(frame).unwrap()
}

fn drain(sequencer: &mut Sequencer<Test>) -> Vec<Seen> {
    let mut seen = Vec::new();
    while let Some(effect) = sequencer.poll_effect(NOW) {
        seen.push(match effect {
            Effect::Send { to, frame, urgent } => {
                Seen::Send { to, message: decode(&frame), urgent }
            }
            Effect::Acknowledge { to, frame, request } => {
                Seen::Ack { to, request, message: decode(&frame) }
            }
            Effect::Reply { request, reply } => Seen::Reply { request, reply },
            Effect::Close { session, code, .. } => Seen::Close { session, code },
        });
    }
    seen
}

fn open(sequencer: &mut Sequencer<Test>, session: u32, name: &str, held: Option<u64>) {
    let command = Command::Open { session, doc: doc(name), held: held.map(Version), burst: ROOMY };
    assert_eq!(sequencer.handle(command, NOW), None);
}

fn commit(sequencer: &mut Sequencer<Test>, session: u32, request: u32, tx: Transaction) -> Decided {
    let command = Command::Commit { session, tx, check: &mut AllowAll, request };
    sequencer.handle(command, NOW).unwrap()
}

/// Lets storage write everything sequenced so far.
fn make_durable(sequencer: &mut Sequencer<Test>) {
    let mut newest = None;
    while let Some(batch) = sequencer.poll_batch() {
        newest = Some(batch.ticket);
    }
    if let Some(ticket) = newest {
        sequencer.on_durable(ticket);
    }
}

fn types(seen: &[Seen]) -> Vec<(u32, String)> {
    seen.iter()
        .map(|seen| match seen {
            Seen::Send { to, message, .. } | Seen::Ack { to, message, .. } => {
                (*to, message["type"].as_str().unwrap().to_owned())
            }
            Seen::Reply { request, .. } => (*request, "reply".into()),
            Seen::Close { session, .. } => (*session, "close".into()),
        })
        .collect()
}

#[test]
fn effects_wait_until_their_log_entries_are_durable_and_are_released_in_order() {
    let mut s = sequencer(true);
    open(&mut s, 1, "d", None);
    // Nothing logged yet: the reply to open needs nothing durable.
    assert_eq!(types(&drain(&mut s)), [(1, "snapshot".into()), (1, "opened".into())]);

    assert_eq!(commit(&mut s, 2, 20, tx("d", "a", 0, &[], "/a")), Decided::Committed);
    s.handle(Command::Get { doc: doc("d"), request: 21 }, NOW);
    assert_eq!(commit(&mut s, 2, 22, tx("d", "b", 1, &[], "/b")), Decided::Committed);
    assert!(drain(&mut s).is_empty(), "nothing is released before the disk has it");

    let first = s.poll_batch().unwrap();
    assert_eq!(first.ticket, Ticket(1));
    assert_eq!(first.entries.len(), 2);
    assert!(s.poll_batch().is_none());
    assert!(drain(&mut s).is_empty(), "handed to storage is not durable");

    s.on_durable(Ticket(1));
    let seen = drain(&mut s);
    assert_eq!(
        types(&seen),
        [
            (1, "change".into()),
            (2, "committed".into()),
            (21, "reply".into()),
            (1, "change".into()),
            (2, "committed".into()),
        ]
    );
    assert_eq!(
        seen[2],
        Seen::Reply {
            request: 21,
            reply: Reply::Document { value: json!({"a": "a"}), version: Version(1) },
        }
    );
    let Seen::Ack { request, message, .. } = &seen[4] else { panic!("{seen:?}") };
    assert_eq!((*request, &message["version"]), (22, &json!(2)));

    // A get logs nothing, but waits for the commit sequenced before it
    // (ticket 2).
    commit(&mut s, 2, 23, tx("d", "c", 2, &[], "/c"));
    s.handle(Command::Get { doc: doc("d"), request: 24 }, NOW);
    assert_eq!(s.poll_batch().unwrap().ticket, Ticket(2));
    s.on_durable(Ticket(1));
    assert!(drain(&mut s).is_empty());
    s.on_durable(Ticket(2));
    assert_eq!(
        types(&drain(&mut s)),
        [(1, "change".into()), (2, "committed".into()), (24, "reply".into())]
    );
}

#[test]
fn a_rejection_is_released_after_the_change_that_caused_it() {
    let mut s = sequencer(true);
    open(&mut s, 1, "d", None);
    open(&mut s, 2, "d", None);
    drain(&mut s);
    assert_eq!(commit(&mut s, 1, 10, tx("d", "w", 0, &[], "/a")), Decided::Committed);
    // Session 2 read /a at version 0: a conflict with the commit above.
    let decided = commit(&mut s, 2, 20, tx("d", "r", 0, &["/a"], "/b"));
    assert_eq!(decided, Decided::Rejected { reason: "conflict" });
    assert!(drain(&mut s).is_empty());
    make_durable(&mut s);
    let seen = drain(&mut s);
    assert_eq!(
        types(&seen),
        [(2, "change".into()), (1, "committed".into()), (2, "rejected".into())]
    );
    let Seen::Ack { message, .. } = &seen[2] else { panic!("{seen:?}") };
    assert_eq!(message["rejection"]["conflicts"][0]["tx_id"], "w");

    // The rejected session now gets the document's changes urgent (for
    // CONTENDED_URGENT_FOR_MS), the other one does not.
    commit(&mut s, 3, 30, tx("d", "x", 1, &[], "/c"));
    make_durable(&mut s);
    let urgent: Vec<(u32, bool)> = drain(&mut s)
        .into_iter()
        .filter_map(|seen| match seen {
            Seen::Send { to, urgent, .. } => Some((to, urgent)),
            _ => None,
        })
        .collect();
    let mut urgent = urgent;
    urgent.sort();
    assert_eq!(urgent, [(1, false), (2, true)]);
}

#[test]
fn catching_up_sends_just_the_missing_changes_and_beyond_history_a_snapshot() {
    let config = SequencerConfig { history_changes_max: 2, ..config() };
    let mut s = sequencer_with(config, false, Arc::new(AtomicUsize::new(0)));
    for (i, path) in ["/a", "/b", "/c"].iter().enumerate() {
        commit(&mut s, 9, 0, tx("d", &format!("t{i}"), i as u64, &[], path));
    }
    drain(&mut s);

    open(&mut s, 1, "d", Some(1));
    let seen = drain(&mut s);
    assert_eq!(types(&seen), [(1, "change".into()), (1, "change".into()), (1, "opened".into())]);
    let versions: Vec<&Value> = seen
        .iter()
        .map(|seen| match seen {
            Seen::Send { message, urgent: true, .. } => &message["version"],
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(versions, [&json!(2), &json!(3), &json!(3)]);

    // Up to date: just `opened`.
    open(&mut s, 2, "d", Some(3));
    assert_eq!(types(&drain(&mut s)), [(2, "opened".into())]);
    // Version 1 is no longer in a history of two changes: a snapshot.
    open(&mut s, 3, "d", Some(0));
    let seen = drain(&mut s);
    assert_eq!(types(&seen), [(3, "snapshot".into()), (3, "opened".into())]);
    let Seen::Send { message, .. } = &seen[0] else { panic!() };
    assert_eq!(message["value"], json!({"a": "t0", "b": "t1", "c": "t2"}));
    // Missed changes that would not fit the session's queue: a snapshot.
    let tight = Burst { frames_max: 1, bytes_max: 1 << 20 };
    let command = Command::Open { session: 4, doc: doc("d"), held: Some(Version(1)), burst: tight };
    s.handle(command, NOW);
    assert_eq!(types(&drain(&mut s)), [(4, "snapshot".into()), (4, "opened".into())]);
}

#[test]
fn presence_joins_updates_and_leaves_reach_the_other_subscribers() {
    let mut s = sequencer(false);
    open(&mut s, 1, "d", None);
    open(&mut s, 2, "d", None);
    drain(&mut s);
    let presence = |session, state| Command::Presence { session, doc: doc("d"), state };
    s.handle(presence(1, json!({"x": 1})), NOW);
    let seen = drain(&mut s);
    assert_eq!(seen.len(), 1);
    let Seen::Send { to: 2, message, urgent: false } = &seen[0] else { panic!("{seen:?}") };
    assert_eq!((&message["event"], &message["session"]), (&json!("join"), &json!("1")));

    // A newcomer gets the others' presence after `opened`.
    open(&mut s, 3, "d", None);
    let seen = drain(&mut s);
    assert_eq!(
        types(&seen),
        [(3, "snapshot".into()), (3, "opened".into()), (3, "presence".into())]
    );

    s.handle(presence(1, json!({"x": 2})), NOW);
    let mut events: Vec<(u32, String)> = drain(&mut s)
        .into_iter()
        .map(|seen| match seen {
            Seen::Send { to, message, .. } => (to, message["event"].as_str().unwrap().to_owned()),
            other => panic!("{other:?}"),
        })
        .collect();
    events.sort();
    assert_eq!(events, [(2, "update".into()), (3, "update".into())]);

    s.handle(Command::Close { session: 1, doc: doc("d") }, NOW);
    let mut leaves = types(&drain(&mut s));
    leaves.sort();
    assert_eq!(leaves, [(2, "presence".into()), (3, "presence".into())]);
    // Presence of a session that has not opened the document goes nowhere.
    s.handle(presence(1, json!({"x": 3})), NOW);
    assert!(drain(&mut s).is_empty());
}

#[test]
fn a_subscriber_whose_queue_refused_a_frame_is_dropped_and_its_presence_left() {
    let mut s = sequencer(false);
    open(&mut s, 1, "d", None);
    open(&mut s, 2, "d", None);
    s.handle(Command::Presence { session: 2, doc: doc("d"), state: json!(true) }, NOW);
    drain(&mut s);
    commit(&mut s, 3, 30, tx("d", "a", 0, &[], "/a"));
    let mut seen = Vec::new();
    while let Some(effect) = s.poll_effect(NOW) {
        if let Effect::Send { to: 2, .. } = effect {
            s.on_undeliverable(&2);
            continue;
        }
        seen.push(effect);
    }
    let told: Vec<(u32, String)> = seen
        .iter()
        .filter_map(|effect| match effect {
            Effect::Send { to, frame, .. } => {
                Some((*to, decode(frame)["type"].as_str().unwrap().to_owned()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(told, [(1, "change".into()), (1, "presence".into())]);
    commit(&mut s, 3, 31, tx("d", "b", 1, &[], "/b"));
    assert_eq!(types(&drain(&mut s)), [(1, "change".into()), (3, "committed".into())]);
}

#[test]
fn a_new_document_past_docs_max_is_refused_across_sequencers_sharing_the_count() {
    let held = Arc::new(AtomicUsize::new(0));
    let config = SequencerConfig { docs_max: 2, ..config() };
    let mut one = sequencer_with(config.clone(), false, held.clone());
    let mut two = sequencer_with(config, false, held);
    assert_eq!(commit(&mut one, 1, 10, tx("a", "t1", 0, &[], "/x")), Decided::Committed);
    assert_eq!(commit(&mut two, 1, 11, tx("b", "t2", 0, &[], "/x")), Decided::Committed);
    assert_eq!(commit(&mut one, 1, 12, tx("c", "t3", 0, &[], "/x")), Decided::Refused);
    // Documents already held still take commits.
    assert_eq!(commit(&mut one, 1, 13, tx("a", "t4", 1, &[], "/y")), Decided::Committed);
    let seen = drain(&mut one);
    let Seen::Ack { request: 12, message, .. } = &seen[1] else { panic!("{seen:?}") };
    assert_eq!((&message["type"], &message["code"]), (&json!("error"), &json!("limit_reached")));
    assert_eq!(message["tx_id"], "t3");
    let mutate = Command::Mutate {
        tx: tx("e", "t5", 0, &[], "/x"),
        author: "~server".into(),
        check: &mut AllowAll,
        request: 14,
    };
    assert_eq!(two.handle(mutate, NOW), Some(Decided::Refused));
    let seen = drain(&mut two);
    assert!(matches!(&seen[1], Seen::Reply { request: 14, reply: Reply::Mutated(Err(_)) }));
}

#[test]
fn a_storage_failure_closes_every_session_with_1011_and_acknowledges_nothing_more() {
    let mut s = sequencer(true);
    open(&mut s, 1, "d", None);
    drain(&mut s);
    commit(&mut s, 2, 20, tx("d", "a", 0, &[], "/a"));
    make_durable(&mut s);
    assert_eq!(types(&drain(&mut s)), [(1, "change".into()), (2, "committed".into())]);

    commit(&mut s, 3, 30, tx("d", "b", 1, &[], "/b"));
    s.handle(Command::Get { doc: doc("d"), request: 31 }, NOW);
    open(&mut s, 4, "d", None);
    assert_eq!(s.poll_batch().unwrap().ticket, Ticket(2));
    // The batch with "b" never became durable.
    s.on_storage_failed();
    let mut seen = drain(&mut s);
    seen.sort_by_key(|seen| format!("{seen:?}"));
    assert_eq!(
        seen,
        [
            Seen::Close { session: 1, code: close_code::INTERNAL_ERROR },
            Seen::Close { session: 3, code: close_code::INTERNAL_ERROR },
            Seen::Close { session: 4, code: close_code::INTERNAL_ERROR },
        ]
    );
    // Nothing further is taken, logged or acknowledged.
    assert_eq!(s.handle(Command::Get { doc: doc("d"), request: 32 }, NOW), None);
    assert!(commit_refused_silently(&mut s));
    assert!(s.poll_batch().is_none());
    s.on_durable(Ticket(2));
    assert!(drain(&mut s).is_empty());
    assert!(s.has_failed() && !s.awaits_storage());
}

fn commit_refused_silently(s: &mut Sequencer<Test>) -> bool {
    let command = Command::Commit {
        session: 5,
        tx: tx("d", "c", 1, &[], "/c"),
        check: &mut AllowAll,
        request: 50,
    };
    s.handle(command, NOW).is_none()
}

#[test]
fn effects_already_durable_are_still_released_after_a_failure() {
    let mut s = sequencer(true);
    open(&mut s, 1, "d", None);
    drain(&mut s);
    commit(&mut s, 2, 20, tx("d", "a", 0, &[], "/a"));
    s.poll_batch();
    commit(&mut s, 2, 21, tx("d", "b", 1, &[], "/b"));
    s.poll_batch();
    s.on_durable(Ticket(1));
    s.on_storage_failed();
    assert_eq!(
        types(&drain(&mut s)),
        [(1, "change".into()), (2, "committed".into()), (2, "close".into()), (1, "close".into()),]
    );
}

#[test]
fn a_commit_observer_sees_every_commit_and_nothing_else() {
    use std::sync::Mutex;
    struct Record(Arc<Mutex<Vec<(String, Version)>>>);
    impl concord_engine::sequencer::CommitObserver for Record {
        fn committed(&mut self, tx: Transaction, version: Version) {
            self.0.lock().unwrap().push((tx.tx_id.as_str().to_owned(), version));
        }
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut s = sequencer(false);
    s.observe_commits(Box::new(Record(seen.clone())));
    commit(&mut s, 1, 1, tx("d", "a", 0, &[], "/a"));
    commit(&mut s, 1, 2, tx("d", "r", 0, &["/a"], "/b"));
    commit(&mut s, 1, 3, tx("d", "a", 0, &[], "/a"));
    assert_eq!(*seen.lock().unwrap(), [("a".to_owned(), Version(1))]);
}
