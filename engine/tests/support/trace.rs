//! Drives a `ClientSession` the way a client shell does, one input at a
//! time, and records what each input made it do, in the JSON form of the
//! trace vectors (`engine/tests/vectors/session/README.md`). The TypeScript
//! client's tests replay the same vectors through its own port of the
//! machine with the same interpreter of transaction programs.

use std::collections::BTreeMap;

use concord_engine::protocol::ServerMessage;
use concord_engine::session::{
    CallKey, ClientSession, ConnectFailure, Event, LinkState, RunReport, SendRefusal,
    SessionConfig, Settlement, TransactionKey, Transmit,
};
use concord_engine::time::Time;
use concord_engine::DocId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::program::{interpret, Op};

/// One input of a trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Input {
    Connected,
    ConnectFailed {
        #[serde(default)]
        unauthorized: bool,
        message: String,
    },
    Disconnected {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<u16>,
        #[serde(default)]
        reason: String,
    },
    Timeout,
    Heard,
    Message {
        message: Value,
    },
    Open {
        doc: String,
    },
    Close {
        doc: String,
    },
    Transact {
        doc: String,
        program: Vec<Op>,
        #[serde(default = "attempts_max_default")]
        attempts_max: u32,
    },
    SetPresence {
        doc: String,
        state: Value,
    },
    Subscribe {
        pattern: String,
    },
    Unsubscribe {
        pattern: String,
    },
    Publish {
        topic: String,
        data: Value,
        #[serde(default)]
        echo: bool,
        #[serde(default)]
        confirm: bool,
    },
    Call {
        call: u64,
        method: String,
        params: Value,
    },
    CancelCall {
        call: u64,
    },
    Notify {
        method: String,
        params: Value,
    },
    Reply {
        epoch: u64,
        message: Value,
    },
    Register {
        method: String,
    },
    Unregister {
        method: String,
    },
}

fn attempts_max_default() -> u32 {
    concord_engine::session::TRANSACT_ATTEMPTS_MAX
}

/// A `ClientSession` and the programs of its transactions.
pub struct Driver {
    pub session: ClientSession,
    programs: BTreeMap<TransactionKey, Vec<Op>>,
}

impl Driver {
    pub fn new(client_id: &str, seed: u32) -> Self {
        Self::with_config(SessionConfig::default(), client_id, seed)
    }

    pub fn with_config(config: SessionConfig, client_id: &str, seed: u32) -> Self {
        Self { session: ClientSession::new(config, client_id, seed), programs: BTreeMap::new() }
    }

    /// Feeds one input at `now` and returns what it made the machine do, as
    /// the trace vectors record it (without `at_us` and `input`).
    pub fn step(&mut self, now: Time, input: &Input) -> Value {
        let returned = self.apply(now, input);
        let mut sends = Vec::new();
        let mut events = Vec::new();
        loop {
            let mut progressed = false;
            while let Some(transmit) = self.session.poll_send() {
                progressed = true;
                sends.push(transmit_json(&transmit));
            }
            while let Some(event) = self.session.poll_event() {
                progressed = true;
                let mut record = event_json(&event);
                if let Event::Run { transaction } = event {
                    self.run(transaction, now, &mut record);
                }
                events.push(record);
            }
            if !progressed {
                break;
            }
        }
        let mut record = json!({
            "sends": sends,
            "events": events,
            "timeout_us": self.session.poll_timeout().map(Time::as_micros),
            "docs": self.docs_json(),
        });
        if let Some(returned) = returned {
            record["returned"] = returned;
        }
        record
    }

    /// Runs a transaction's program as the shell does when asked to.
    fn run(&mut self, key: TransactionKey, now: Time, record: &mut Value) {
        let program = self.programs.get(&key).cloned().unwrap_or_default();
        let Some((replica, tx_id)) = self.session.begin_run(key) else {
            return;
        };
        record["tx_id"] = json!(tx_id.as_str());
        let outcome = replica.run(tx_id, |tx| interpret(&program, tx));
        let report = RunReport::of(&outcome);
        record["report"] = json!(report_name(&report));
        self.session.end_run(key, report, now);
    }

    fn apply(&mut self, now: Time, input: &Input) -> Option<Value> {
        let doc =
            |id: &str| DocId::parse(id).unwrap_or_else(|error| panic!("bad doc {id}: {error}"));
        let session = &mut self.session;
        match input {
            Input::Connected => session.handle_connected(now),
            Input::ConnectFailed { unauthorized, message } => {
                let failure = if *unauthorized {
                    ConnectFailure::Unauthorized { message: message.clone() }
                } else {
                    ConnectFailure::Failed { reason: message.clone() }
                };
                session.handle_connect_failed(failure, now)
            }
            Input::Disconnected { code, reason } => {
                session.handle_disconnected(code.map(|code| (code, reason.clone())), now)
            }
            Input::Timeout => session.handle_timeout(now),
            Input::Heard => session.handle_heard(now),
            Input::Message { message } => {
                let message: ServerMessage = serde_json::from_value(message.clone())
                    .unwrap_or_else(|error| panic!("bad server message {message}: {error}"));
                session.handle_message(message, now)
            }
            Input::Open { doc: id } => session.open(doc(id)),
            Input::Close { doc: id } => session.close(&doc(id)),
            Input::Transact { doc: id, program, attempts_max } => {
                let key = session.transact(&doc(id), *attempts_max, now);
                self.programs.insert(key, program.clone());
                return Some(json!({ "transaction": key.0 }));
            }
            Input::SetPresence { doc: id, state } => session.set_presence(&doc(id), state.clone()),
            Input::Subscribe { pattern } => session.subscribe(pattern),
            Input::Unsubscribe { pattern } => session.unsubscribe(pattern),
            Input::Publish { topic, data, echo, confirm } => {
                let result = session.publish(topic, data.clone(), *echo, *confirm);
                return Some(match result {
                    Ok(ack) => json!({ "ack": ack.map(|ack| ack.0) }),
                    Err(refusal) => json!({ "refused": refusal_json(&refusal) }),
                });
            }
            Input::Call { call, method, params } => {
                let result = session.call(CallKey(*call), method, params.clone());
                return Some(match result {
                    Ok(()) => json!({ "ok": true }),
                    Err(refusal) => json!({ "refused": refusal_json(&refusal) }),
                });
            }
            Input::CancelCall { call } => session.cancel_call(CallKey(*call)),
            Input::Notify { method, params } => {
                return Some(match session.notify(method, params.clone()) {
                    Ok(()) => json!({ "ok": true }),
                    Err(refusal) => json!({ "refused": refusal_json(&refusal) }),
                });
            }
            Input::Reply { epoch, message } => session.reply(*epoch, message.clone()),
            Input::Register { method } => session.register(method),
            Input::Unregister { method } => session.unregister(method),
        }
        None
    }

    fn docs_json(&self) -> Value {
        let mut docs = serde_json::Map::new();
        for doc in self.session.documents() {
            let state = match self.session.replica(doc) {
                Some(replica) => json!({
                    "open": self.session.is_open(doc),
                    "version": replica.version(),
                    "view": replica.view(),
                    "pending": replica.pending().map(|tx| tx.tx_id.as_str().to_owned()).collect::<Vec<_>>(),
                }),
                None => json!({ "open": false }),
            };
            docs.insert(doc.as_str().to_owned(), state);
        }
        Value::Object(docs)
    }
}

fn report_name(report: &RunReport) -> &'static str {
    match report {
        RunReport::ReadOnly => "read_only",
        RunReport::Submit(_) => "submit",
        RunReport::Retry(_) => "retry",
        RunReport::Blocked => "blocked",
        RunReport::Failed => "failed",
        RunReport::Panicked => "panicked",
    }
}

pub fn transmit_json(transmit: &Transmit) -> Value {
    match transmit {
        Transmit::Text(text) => {
            let message: Value = serde_json::from_str(text)
                .unwrap_or_else(|error| panic!("the session sent invalid JSON {text}: {error}"));
            json!({ "text": message })
        }
        Transmit::Ping => json!("ping"),
        Transmit::Connect => json!("connect"),
        Transmit::Disconnect => json!("disconnect"),
    }
}

fn refusal_json(refusal: &SendRefusal) -> Value {
    match refusal {
        SendRefusal::NotConnected => json!({ "kind": "not_connected" }),
        SendRefusal::TooManyCalls => json!({ "kind": "too_many_calls" }),
        // The message names sizes, which encoders may count differently.
        SendRefusal::Refused { code, .. } => json!({ "kind": "refused", "code": code }),
    }
}

fn settlement_json(settlement: &Settlement) -> Value {
    match settlement {
        Settlement::ReadOnly { version, runs } => {
            json!({ "kind": "read_only", "version": version, "runs": runs })
        }
        Settlement::Committed { tx_id, version, runs } => {
            json!({ "kind": "committed", "tx_id": tx_id, "version": version, "runs": runs })
        }
        Settlement::Aborted { runs } => json!({ "kind": "aborted", "runs": runs }),
        Settlement::Rejected { rejection, attempts } => {
            json!({ "kind": "rejected", "rejection": rejection, "attempts": attempts })
        }
        Settlement::RateLimited { attempts } => {
            json!({ "kind": "rate_limited", "attempts": attempts })
        }
        Settlement::OutcomeUnknown { tx_id } => {
            json!({ "kind": "outcome_unknown", "tx_id": tx_id })
        }
        Settlement::Refused { code, .. } => json!({ "kind": "refused", "code": code }),
        Settlement::Panicked => json!({ "kind": "panicked" }),
        Settlement::Closed => json!({ "kind": "closed" }),
    }
}

/// An event as the vectors record it: an object tagged by `event`.
pub fn event_json(event: &Event) -> Value {
    match event {
        Event::Link(LinkState::Connected { session, sub, name }) => {
            json!({ "event": "link", "state": "connected", "session": session, "sub": sub, "name": name })
        }
        Event::Link(LinkState::Disconnected { reason }) => {
            json!({ "event": "link", "state": "disconnected", "reason": reason })
        }
        Event::Link(LinkState::Unauthorized { message }) => {
            json!({ "event": "link", "state": "unauthorized", "message": message })
        }
        Event::Opened { doc } => json!({ "event": "opened", "doc": doc }),
        Event::OpenRefused { doc, code, message } => {
            json!({ "event": "open_refused", "doc": doc, "code": code, "message": message })
        }
        Event::Changed { doc, change } => {
            json!({ "event": "changed", "doc": doc, "change": &**change })
        }
        Event::Reset { doc, version } => {
            json!({ "event": "reset", "doc": doc, "version": version })
        }
        // The reason quotes the replica's error, worded by each client.
        Event::Reloading { doc, .. } => json!({ "event": "reloading", "doc": doc }),
        Event::Presence { doc, session, event, state } => json!({
            "event": "presence", "doc": doc, "session": session, "presence": event, "state": state
        }),
        Event::Run { transaction } => json!({ "event": "run", "transaction": transaction.0 }),
        Event::Settled { transaction, settlement } => json!({
            "event": "settled", "transaction": transaction.0, "settlement": settlement_json(settlement)
        }),
        Event::Message { topic, data } => {
            json!({ "event": "message", "topic": topic, "data": data })
        }
        Event::Subscribed { pattern } => json!({ "event": "subscribed", "pattern": pattern }),
        Event::SubscribeRefused { pattern, code, message } => json!({
            "event": "subscribe_refused", "pattern": pattern, "code": code, "message": message
        }),
        Event::Published { ack } => json!({ "event": "published", "ack": ack.0 }),
        Event::PublishRefused { ack, refusal } => {
            json!({ "event": "publish_refused", "ack": ack.0, "refusal": refusal_json(refusal) })
        }
        Event::CallAnswered { call, result } => match result {
            Ok(result) => json!({ "event": "call_answered", "call": call.0, "result": result }),
            Err(error) => {
                json!({ "event": "call_answered", "call": call.0, "error": error.to_json() })
            }
        },
        Event::CallLost { call } => json!({ "event": "call_lost", "call": call.0 }),
        Event::Rpc { epoch, message } => {
            json!({ "event": "rpc", "epoch": epoch, "message": message })
        }
        Event::Registered { method } => json!({ "event": "registered", "method": method }),
        Event::RegisterRefused { method, code, message } => json!({
            "event": "register_refused", "method": method, "code": code, "message": message
        }),
        Event::ServerError { code, message } => {
            json!({ "event": "server_error", "code": code, "message": message })
        }
    }
}
