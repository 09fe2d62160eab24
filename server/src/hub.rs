//! The hub: the single owner of everything that routes between sessions
//! rather than through a document — topic subscriptions and client-registered
//! RPC methods with their pending calls.
//!
//! Like a shard it is one task fed by a bounded channel, and it never waits
//! on a session: it pushes into outboxes. Per-publisher order holds because
//! one session's reader sends its publishes down that one channel in order,
//! and the hub pushes each to every subscriber before taking the next.
//!
//! Routed calls: the hub gives each forwarded request a fresh numeric id,
//! remembers (caller, caller's id, callee, deadline), and maps the callee's
//! response back. A call gets `TIMEOUT` at its deadline, `CALLEE_GONE` when
//! the callee's session ends first; a caller's pending calls are forgotten
//! when its session ends (a late response is then dropped).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use concord_engine::protocol::rpc::JSONRPC_VERSION;
use concord_engine::protocol::{error_response, notification, request, ErrorCode, ServerMessage};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::rpc::{code, RpcError};
use crate::shard::{encode, SessionId};
use crate::topic::Trie;

/// Stale deadline entries tolerated before the heap is rebuilt.
const DEADLINES_SLACK_MAX: usize = 1024;

/// What the hub can be asked to do.
#[derive(Debug)]
pub(crate) enum HubCommand {
    Join {
        session: SessionId,
        outbox: Outbox,
    },
    Leave {
        session: SessionId,
    },
    Subscribe {
        session: SessionId,
        pattern: String,
    },
    Unsubscribe {
        session: SessionId,
        pattern: String,
    },
    Publish {
        session: SessionId,
        topic: String,
        data: Value,
        ack: Option<u64>,
        echo: bool,
    },
    Register {
        session: SessionId,
        method: String,
    },
    Unregister {
        session: SessionId,
        method: String,
    },
    /// A request (with `id`) or notification (without) for a method that is
    /// not a server procedure.
    Call {
        session: SessionId,
        id: Option<Value>,
        method: String,
        params: Value,
    },
    /// A response from a callee to a call the hub forwarded to it.
    Response {
        session: SessionId,
        id: Value,
        message: Map<String, Value>,
    },
}

/// Limits the hub enforces per session.
#[derive(Debug, Clone)]
pub(crate) struct HubLimits {
    pub(crate) subscriptions_max: usize,
    pub(crate) registered_methods_max: usize,
    pub(crate) rpc_pending_calls_max: usize,
    pub(crate) rpc_call_timeout: Duration,
}

#[derive(Debug)]
struct Member {
    outbox: Outbox,
    patterns: HashSet<String>,
    methods: HashSet<String>,
    calls_pending: usize,
}

#[derive(Debug)]
struct PendingCall {
    caller: SessionId,
    caller_id: Value,
    callee: SessionId,
    deadline: Instant,
}

struct Hub {
    members: HashMap<SessionId, Member>,
    trie: Trie,
    methods: HashMap<String, SessionId>,
    /// Names of server procedures, which clients may not register.
    reserved: Arc<HashSet<String>>,
    pending: HashMap<u64, PendingCall>,
    /// Deadlines of pending calls, earliest first; entries of calls already
    /// answered are skipped when they come up.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    next_route_id: u64,
    limits: HubLimits,
    metrics: Metrics,
}

/// Starts the hub task.
pub(crate) fn spawn_hub(
    queue_max: usize,
    limits: HubLimits,
    reserved: Arc<HashSet<String>>,
    metrics: Metrics,
) -> (mpsc::Sender<HubCommand>, tokio::task::JoinHandle<()>) {
    let (sender, receiver) = mpsc::channel(queue_max);
    let hub = Hub {
        members: HashMap::new(),
        trie: Trie::default(),
        methods: HashMap::new(),
        reserved,
        pending: HashMap::new(),
        deadlines: BinaryHeap::new(),
        next_route_id: 1,
        limits,
        metrics,
    };
    (sender, tokio::spawn(hub.run(receiver)))
}

impl Hub {
    async fn run(mut self, mut commands: mpsc::Receiver<HubCommand>) {
        loop {
            let next_deadline = self.deadlines.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                () = sleep_until(next_deadline) => self.expire(Instant::now()),
            }
        }
    }

    fn handle(&mut self, command: HubCommand) {
        match command {
            HubCommand::Join { session, outbox } => {
                let member = Member {
                    outbox,
                    patterns: HashSet::new(),
                    methods: HashSet::new(),
                    calls_pending: 0,
                };
                self.members.insert(session, member);
            }
            HubCommand::Leave { session } => self.leave(&session),
            HubCommand::Subscribe { session, pattern } => self.subscribe(session, pattern),
            HubCommand::Unsubscribe { session, pattern } => {
                if let Some(member) = self.members.get_mut(&session) {
                    if member.patterns.remove(&pattern) {
                        self.trie.remove(&pattern, &session);
                    }
                }
            }
            HubCommand::Publish { session, topic, data, ack, echo } => {
                self.publish(&session, topic, data, ack, echo);
            }
            HubCommand::Register { session, method } => self.register(session, method),
            HubCommand::Unregister { session, method } => {
                if self.methods.get(&method) == Some(&session) {
                    self.methods.remove(&method);
                }
                if let Some(member) = self.members.get_mut(&session) {
                    member.methods.remove(&method);
                }
            }
            HubCommand::Call { session, id, method, params } => {
                self.call(session, id, method, params);
            }
            HubCommand::Response { session, id, message } => self.respond(&session, id, message),
        }
    }

    /// Refuses a request of `session` that named a topic or a method.
    fn error(&self, session: &SessionId, code: ErrorCode, message: String, named: Named) {
        if let Some(member) = self.members.get(session) {
            self.metrics.client_errors.with_label_values(&[code.as_str()]).inc();
            let _ = member.outbox.push_reply(encode(&named.error(code, message)));
        }
    }

    fn subscribe(&mut self, session: SessionId, pattern: String) {
        let Some(member) = self.members.get_mut(&session) else { return };
        if !member.patterns.contains(&pattern) {
            if member.patterns.len() >= self.limits.subscriptions_max {
                let max = self.limits.subscriptions_max;
                let message = format!("a session may hold at most {max} subscriptions");
                self.error(&session, ErrorCode::LimitReached, message, Named::Topic(pattern));
                return;
            }
            member.patterns.insert(pattern.clone());
            self.trie.insert(&pattern, session.clone());
        }
        let _ = member.outbox.push_reply(encode(&ServerMessage::Subscribed { topic: pattern }));
    }

    fn publish(
        &mut self,
        publisher: &SessionId,
        topic: String,
        data: Value,
        ack: Option<u64>,
        echo: bool,
    ) {
        let recipients = self.trie.matches(&topic);
        let frame = encode(&ServerMessage::Message { topic, data });
        for recipient in &recipients {
            if !echo && recipient == publisher {
                continue;
            }
            if let Some(member) = self.members.get(recipient) {
                if member.outbox.push(frame.clone()).is_ok() {
                    self.metrics.pubsub_deliveries.inc();
                }
            }
        }
        if let (Some(ack), Some(member)) = (ack, self.members.get(publisher)) {
            let _ = member.outbox.push_reply(encode(&ServerMessage::Published { ack }));
        }
    }

    fn register(&mut self, session: SessionId, method: String) {
        let Some(member) = self.members.get(&session) else { return };
        let owner = self.methods.get(&method);
        if self.reserved.contains(&method) || owner.is_some_and(|owner| *owner != session) {
            let message = format!("method {method:?} is already provided");
            self.error(&session, ErrorCode::AlreadyRegistered, message, Named::Method(method));
            return;
        }
        if owner.is_none() && member.methods.len() >= self.limits.registered_methods_max {
            let max = self.limits.registered_methods_max;
            let message = format!("a session may register at most {max} methods");
            self.error(&session, ErrorCode::LimitReached, message, Named::Method(method));
            return;
        }
        let _ =
            member.outbox.push_reply(encode(&ServerMessage::Registered { method: method.clone() }));
        self.methods.insert(method.clone(), session.clone());
        if let Some(member) = self.members.get_mut(&session) {
            member.methods.insert(method);
        }
    }

    fn reply_error(&self, session: &SessionId, id: Value, error: &RpcError) {
        if let Some(member) = self.members.get(session) {
            let message = error_response(id, error);
            let _ = member.outbox.push_reply(encode(&ServerMessage::Rpc { message }));
        }
    }

    fn call(&mut self, caller: SessionId, id: Option<Value>, method: String, params: Value) {
        self.metrics.rpc_calls.inc();
        let callee = self.methods.get(&method).cloned();
        let (Some(callee), Some(id)) = (callee, id.clone()) else {
            if let Some(id) = id {
                self.reply_error(&caller, id, &RpcError::method_not_found(&method));
            } else if let Some(callee) = self.methods.get(&method).and_then(|c| self.members.get(c))
            {
                // A notification: forwarded as is, never answered.
                let message = notification(&method, params);
                let _ = callee.outbox.push_reply(encode(&ServerMessage::Rpc { message }));
            }
            return;
        };
        let Some(member) = self.members.get_mut(&caller) else { return };
        if member.calls_pending >= self.limits.rpc_pending_calls_max {
            let max = self.limits.rpc_pending_calls_max;
            let error =
                RpcError::new(code::TOO_MANY_CALLS, format!("at most {max} calls in flight"));
            self.reply_error(&caller, id, &error);
            return;
        }
        member.calls_pending += 1;
        let route_id = self.next_route_id;
        self.next_route_id += 1;
        let deadline = Instant::now() + self.limits.rpc_call_timeout;
        self.deadlines.push(Reverse((deadline, route_id)));
        let call = PendingCall { caller, caller_id: id, callee: callee.clone(), deadline };
        self.pending.insert(route_id, call);
        // Answered calls leave their deadline behind; rebuild the heap from
        // the pending calls before those outnumber them, so its size stays
        // within twice the pending calls (themselves bounded per caller).
        if self.deadlines.len() > 2 * self.pending.len() + DEADLINES_SLACK_MAX {
            self.deadlines =
                self.pending.iter().map(|(id, call)| Reverse((call.deadline, *id))).collect();
        }
        if let Some(callee) = self.members.get(&callee) {
            let message = request(route_id, &method, params);
            // If the callee overflows, its session ends and `leave` answers
            // this call with CALLEE_GONE.
            let _ = callee.outbox.push_reply(encode(&ServerMessage::Rpc { message }));
        }
    }

    fn finish(&mut self, route_id: u64) -> Option<PendingCall> {
        let call = self.pending.remove(&route_id)?;
        if let Some(member) = self.members.get_mut(&call.caller) {
            member.calls_pending = member.calls_pending.saturating_sub(1);
        }
        Some(call)
    }

    fn respond(&mut self, callee: &SessionId, id: Value, mut message: Map<String, Value>) {
        let Some(route_id) = id.as_u64() else { return };
        if self.pending.get(&route_id).is_none_or(|call| call.callee != *callee) {
            // Late (after a timeout) or not ours to answer: dropped.
            return;
        }
        let Some(call) = self.finish(route_id) else { return };
        message.insert("id".into(), call.caller_id);
        message.insert("jsonrpc".into(), Value::String(JSONRPC_VERSION.into()));
        if let Some(caller) = self.members.get(&call.caller) {
            let rpc = ServerMessage::Rpc { message: Value::Object(message) };
            let _ = caller.outbox.push_reply(encode(&rpc));
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(Reverse((at, route_id))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            if let Some(call) = self.finish(route_id) {
                let error = RpcError::new(code::TIMEOUT, "the callee did not answer in time");
                self.reply_error(&call.caller, call.caller_id, &error);
            }
        }
    }

    fn leave(&mut self, session: &SessionId) {
        let Some(member) = self.members.remove(session) else { return };
        for pattern in &member.patterns {
            self.trie.remove(pattern, session);
        }
        for method in &member.methods {
            if self.methods.get(method) == Some(session) {
                self.methods.remove(method);
            }
        }
        let affected: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, call)| call.callee == *session || call.caller == *session)
            .map(|(route_id, _)| *route_id)
            .collect();
        for route_id in affected {
            if let Some(call) = self.finish(route_id) {
                if call.callee == *session && call.caller != *session {
                    let error = RpcError::new(code::CALLEE_GONE, "the callee disconnected");
                    self.reply_error(&call.caller, call.caller_id, &error);
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a refused request named, for its `error` (the hub's and the
/// session's refusals of subscriptions, publishes and registrations).
#[derive(Debug)]
pub(crate) enum Named {
    Topic(String),
    Method(String),
}

impl Named {
    /// The `error` refusing the request, naming its topic or method.
    pub(crate) fn error(self, code: ErrorCode, message: String) -> ServerMessage {
        let (topic, method) = match self {
            Named::Topic(topic) => (Some(topic), None),
            Named::Method(method) => (None, Some(method)),
        };
        ServerMessage::Error { code, message, doc: None, tx_id: None, topic, method }
    }
}
