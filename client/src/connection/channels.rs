//! Pub/sub and RPC inside the connection task: subscriptions renewed on
//! every session, publishes, outgoing calls matched to their answers, and
//! the procedures this client offers, with their registrations.

use std::collections::hash_map::Entry;
use std::panic::AssertUnwindSafe;

use concord_engine::protocol::{ClientMessage, ErrorCode};
use futures_util::FutureExt;
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};
use tracing::debug;

use super::{Command, Delivery, Driver};
use crate::config::{CALLS_IN_FLIGHT_MAX, TOPIC_MESSAGES_QUEUED_MAX};
use crate::error::{CallError, Error};
use crate::rpc::{self, Handler, Incoming, RpcError};
use crate::topic::{topic_matches, Message};

pub(super) struct Procedure {
    handler: Handler,
    registration: Registration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Registration {
    /// Not registered in this session; sent on connect or on the next
    /// heartbeat (after another session still held the method, e.g. our own
    /// previous one before the server noticed it died).
    Unsent,
    /// `register` sent in this session, no answer yet.
    Sent,
    /// The server routes calls to this session.
    Registered,
}

pub(super) struct TopicState {
    sender: broadcast::Sender<Message>,
    acked: bool,
    waiters: Vec<oneshot::Sender<SubscribeAnswer>>,
}

/// What a `subscribe` waits for: the stream, or the server's refusal.
pub(super) type SubscribeAnswer = Result<broadcast::Receiver<Message>, Error>;

impl TopicState {
    pub(super) fn abandoned(&self) -> bool {
        self.sender.receiver_count() == 0 && self.waiters.is_empty()
    }
}

impl Driver {
    /// Renews subscriptions and registrations at the start of a session.
    pub(super) fn renew_channels(&mut self) {
        self.topics.retain(|_, topic| !topic.abandoned());
        let patterns: Vec<String> = self.topics.keys().cloned().collect();
        for topic in patterns {
            self.send(&ClientMessage::Subscribe { topic });
        }
        self.registers_in_flight.clear();
        for procedure in self.procedures.values_mut() {
            procedure.registration = Registration::Unsent;
        }
        self.send_registrations();
    }

    /// Sends again subscriptions and registrations the server has not
    /// acknowledged (its rate limit may have dropped them).
    pub(super) fn resend_unanswered_channels(&mut self) {
        let unanswered: Vec<String> = self
            .topics
            .iter()
            .filter(|(_, topic)| !topic.acked && !topic.abandoned())
            .map(|(pattern, _)| pattern.clone())
            .collect();
        for topic in unanswered {
            self.send(&ClientMessage::Subscribe { topic });
        }
        self.send_registrations();
    }

    /// Forgets what only the lost session could answer: acknowledgements
    /// and call results. Subscriptions and procedures stay, to be renewed.
    pub(super) fn end_session_channels(&mut self) {
        for topic in self.topics.values_mut() {
            topic.acked = false;
        }
        self.registers_in_flight.clear();
        for (_, reply) in self.calls.drain() {
            let _ = reply.send(Err(CallError::Disconnected));
        }
        for (_, (_, reply)) in self.acks.drain() {
            let _ = reply.send(Err(Error::NotConnected));
        }
    }

    pub(super) fn subscribe(&mut self, pattern: String, reply: oneshot::Sender<SubscribeAnswer>) {
        let up = self.is_up();
        let topic = match self.topics.entry(pattern.clone()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                if up {
                    let message = ClientMessage::Subscribe { topic: pattern };
                    if let Ok(text) = serde_json::to_string(&message) {
                        self.outbox.push(tokio_tungstenite::tungstenite::Message::text(text));
                    }
                }
                entry.insert(TopicState {
                    sender: broadcast::channel(TOPIC_MESSAGES_QUEUED_MAX).0,
                    acked: false,
                    waiters: Vec::new(),
                })
            }
        };
        if topic.acked {
            let _ = reply.send(Ok(topic.sender.subscribe()));
        } else {
            topic.waiters.push(reply);
        }
    }

    pub(super) fn unsubscribe(&mut self, pattern: String) {
        if self.topics.get(&pattern).is_some_and(TopicState::abandoned) {
            self.topics.remove(&pattern);
            self.send(&ClientMessage::Unsubscribe { topic: pattern });
        }
    }

    pub(super) fn on_subscribed(&mut self, pattern: &str) {
        if let Some(state) = self.topics.get_mut(pattern) {
            state.acked = true;
            for waiter in state.waiters.drain(..) {
                let _ = waiter.send(Ok(state.sender.subscribe()));
            }
        }
    }

    pub(super) fn publish(
        &mut self,
        topic: String,
        data: Value,
        echo: bool,
        delivery: Delivery,
        reply: oneshot::Sender<Result<(), Error>>,
    ) {
        if !self.is_up() {
            let _ = reply.send(Err(Error::NotConnected));
            return;
        }
        let ack = (delivery == Delivery::Confirmed).then_some(self.next_ack + 1);
        let message = ClientMessage::Publish { topic: topic.clone(), data, ack, echo };
        if let Err(error) = self.try_send(&message) {
            let _ = reply.send(Err(error));
            return;
        }
        match ack {
            Some(ack) => {
                self.next_ack = ack;
                self.acks.insert(ack, (topic, reply));
            }
            None => {
                let _ = reply.send(Ok(()));
            }
        }
    }

    pub(super) fn call(
        &mut self,
        id: u64,
        method: String,
        params: Value,
        reply: oneshot::Sender<Result<Value, CallError>>,
    ) {
        if !self.is_up() {
            let _ = reply.send(Err(CallError::NotConnected));
        } else if self.calls.len() >= CALLS_IN_FLIGHT_MAX {
            let _ = reply.send(Err(CallError::TooManyCalls));
        } else {
            let message = rpc::request(id, &method, params);
            match self.try_send(&ClientMessage::Rpc { message }) {
                Ok(()) => {
                    self.calls.insert(id, reply);
                }
                Err(error) => {
                    let _ = reply.send(Err(CallError::Unsendable(Box::new(error))));
                }
            }
        }
    }

    pub(super) fn notify(
        &mut self,
        method: String,
        params: Value,
        reply: oneshot::Sender<Result<(), Error>>,
    ) {
        if !self.is_up() {
            let _ = reply.send(Err(Error::NotConnected));
            return;
        }
        let message = rpc::notification(&method, params);
        let _ = reply.send(self.try_send(&ClientMessage::Rpc { message }));
    }

    pub(super) fn register(
        &mut self,
        method: String,
        handler: Handler,
        reply: oneshot::Sender<Result<(), Error>>,
    ) {
        let procedure = Procedure { handler, registration: Registration::Unsent };
        if let Some(previous) = self.procedures.insert(method.clone(), procedure) {
            if previous.registration == Registration::Registered {
                // Already ours on the server: only the handler changes.
                let _ = reply.send(Ok(()));
                if let Some(procedure) = self.procedures.get_mut(&method) {
                    procedure.registration = Registration::Registered;
                }
                return;
            }
        }
        self.register_waiters.entry(method).or_default().push(reply);
        self.send_registrations();
    }

    pub(super) fn on_topic_message(&mut self, topic: String, data: Value) {
        let message = Message { topic, data };
        let mut abandoned = Vec::new();
        for (pattern, state) in &self.topics {
            if !topic_matches(pattern, &message.topic) {
                continue;
            }
            if state.abandoned() {
                abandoned.push(pattern.clone());
            } else {
                let _ = state.sender.send(message.clone());
            }
        }
        for pattern in abandoned {
            self.topics.remove(&pattern);
            self.send(&ClientMessage::Unsubscribe { topic: pattern });
        }
    }

    pub(super) fn on_rpc(&mut self, message: Value) {
        match rpc::classify(message) {
            Incoming::Response { id, result } => {
                if let Some(reply) = self.calls.remove(&id) {
                    let _ = reply.send(result.map_err(CallError::Rpc));
                }
            }
            Incoming::Request { id, method, params } => {
                let Some(handler) = self.procedures.get(&method).map(|p| p.handler.clone()) else {
                    if let Some(id) = id {
                        let message = rpc::response(id, Err(RpcError::method_not_found(&method)));
                        self.send(&ClientMessage::Rpc { message });
                    }
                    return;
                };
                let Ok(permit) = self.handler_permits.clone().try_acquire_owned() else {
                    if let Some(id) = id {
                        let busy = RpcError::new(RpcError::TOO_MANY_CALLS, "the callee is busy");
                        self.send(&ClientMessage::Rpc { message: rpc::response(id, Err(busy)) });
                    }
                    return;
                };
                let commands = self.commands_weak.clone();
                let epoch = self.epoch;
                tokio::spawn(async move {
                    let result = AssertUnwindSafe(handler(params))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| Err(RpcError::internal("the procedure panicked")));
                    drop(permit);
                    let (Some(id), Some(commands)) = (id, commands.upgrade()) else {
                        return;
                    };
                    let message = rpc::response(id, result);
                    let _ = commands.send(Command::RpcReply { epoch, message }).await;
                });
            }
            Incoming::Unexpected(message) => debug!(%message, "unexpected rpc message"),
        }
    }

    /// Sends `register` for every procedure not registered in this session.
    pub(super) fn send_registrations(&mut self) {
        if !self.is_up() {
            return;
        }
        let mut unsent = Vec::new();
        for (method, procedure) in &mut self.procedures {
            if procedure.registration == Registration::Unsent {
                procedure.registration = Registration::Sent;
                unsent.push(method.clone());
            }
        }
        for method in unsent {
            self.registers_in_flight.push_back(method.clone());
            self.send(&ClientMessage::Register { method });
        }
    }

    pub(super) fn on_registered(&mut self, method: &str) {
        while let Some(front) = self.registers_in_flight.pop_front() {
            if front == method {
                break;
            }
        }
        if let Some(procedure) = self.procedures.get_mut(method) {
            procedure.registration = Registration::Registered;
        }
        for waiter in self.register_waiters.remove(method).into_iter().flatten() {
            let _ = waiter.send(Ok(()));
        }
    }

    /// A refusal naming `topic`: a subscription not yet acknowledged fails
    /// (and is forgotten, so it is not renewed), as do acknowledged
    /// publishes to it still waiting for their `published`.
    pub(super) fn on_topic_refused(&mut self, topic: &str, code: ErrorCode, message: String) {
        let refusal = || Error::Refused { code, message: message.clone() };
        if self.topics.get(topic).is_some_and(|state| !state.acked) {
            if let Some(state) = self.topics.remove(topic) {
                for waiter in state.waiters {
                    let _ = waiter.send(Err(refusal()));
                }
            }
        }
        let refused: Vec<u64> =
            self.acks.iter().filter(|(_, (to, _))| to == topic).map(|(ack, _)| *ack).collect();
        for ack in refused {
            if let Some((_, reply)) = self.acks.remove(&ack) {
                let _ = reply.send(Err(refusal()));
            }
        }
    }

    /// A refusal naming `method`: its registration fails (a new one) or,
    /// for a renewal refused as already registered, is tried again later.
    pub(super) fn on_method_refused(&mut self, method: &str, code: ErrorCode, message: String) {
        if let Some(at) = self.registers_in_flight.iter().position(|m| m == method) {
            self.registers_in_flight.remove(at);
        }
        match self.register_waiters.remove(method) {
            Some(waiters) => {
                self.procedures.remove(method);
                for waiter in waiters {
                    let _ = waiter.send(Err(Error::Refused { code, message: message.clone() }));
                }
            }
            None if code == ErrorCode::AlreadyRegistered => {
                if let Some(procedure) = self.procedures.get_mut(method) {
                    procedure.registration = Registration::Unsent;
                }
            }
            // A renewal the server will not take (the token no longer
            // allows it): stop offering the method.
            None => {
                self.procedures.remove(method);
            }
        }
    }

    pub(super) fn on_register_refused(&mut self, message: String) {
        let Some(method) = self.registers_in_flight.pop_front() else {
            return;
        };
        match self.register_waiters.remove(&method) {
            // A new registration: someone else provides the method.
            Some(waiters) => {
                self.procedures.remove(&method);
                for waiter in waiters {
                    let _ = waiter.send(Err(Error::Refused {
                        code: ErrorCode::AlreadyRegistered,
                        message: message.clone(),
                    }));
                }
            }
            // A renewal after reconnecting: most likely our previous session
            // still holds it until the server notices it is gone; try again
            // at the next heartbeat.
            None => {
                if let Some(procedure) = self.procedures.get_mut(&method) {
                    procedure.registration = Registration::Unsent;
                }
            }
        }
    }
}
