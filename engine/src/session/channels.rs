//! Pub/sub subscriptions, publishes, calls and registrations inside a
//! `ClientSession`: what each session must re-establish, and the
//! bookkeeping of requests awaiting answers.
//!
//! Subscriptions and registrations outlive sessions: each new session
//! sends them again. Calls and confirmed publishes do not: an answer can
//! only come on the session that carried the request, so when it ends they
//! fail (`CallLost`, `PublishRefused` with `NotConnected`) rather than wait
//! forever.

use serde_json::Value;

use super::{CallKey, ClientSession, Event, PublishAck, SendRefusal};
use crate::protocol::rpc::{notification, request, response_outcome, RpcMessage};
use crate::protocol::{ClientMessage, ErrorCode};

/// Where a procedure's registration stands in the current session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Registration {
    /// To be sent (at connect, or the next heartbeat after a refusal).
    Unsent {
        first: bool,
    },
    /// Sent; `first` if the server never confirmed it before (a refusal
    /// then fails the application's `register`).
    Sent {
        first: bool,
    },
    Registered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TopicState {
    /// The server confirmed it in this session.
    acked: bool,
}

impl ClientSession {
    // ----- the application's commands -----

    /// Subscribes to `pattern`: [`Event::Subscribed`] follows (at once if
    /// it already is), or [`Event::SubscribeRefused`].
    pub fn subscribe(&mut self, pattern: &str) {
        match self.topics.get(pattern) {
            Some(topic) if topic.acked => {
                self.events.push_back(Event::Subscribed { pattern: pattern.to_owned() })
            }
            Some(_) => {}
            None => {
                self.topics.insert(pattern.to_owned(), TopicState { acked: false });
                self.send(&ClientMessage::Subscribe { topic: pattern.to_owned() });
            }
        }
    }

    pub fn unsubscribe(&mut self, pattern: &str) {
        if self.topics.remove(pattern).is_some() {
            self.send(&ClientMessage::Unsubscribe { topic: pattern.to_owned() });
        }
    }

    /// Publishes `data` on `topic`. With `confirm`, the returned ack is
    /// answered by [`Event::Published`] or [`Event::PublishRefused`];
    /// without, the publish is done once handed to the connection.
    pub fn publish(
        &mut self,
        topic: &str,
        data: Value,
        echo: bool,
        confirm: bool,
    ) -> Result<Option<PublishAck>, SendRefusal> {
        if !self.is_connected() {
            return Err(SendRefusal::NotConnected);
        }
        let ack = confirm.then_some(self.next_ack + 1);
        let message = ClientMessage::Publish { topic: topic.to_owned(), data, ack, echo };
        self.try_send(&message)?;
        Ok(ack.map(|ack| {
            self.next_ack = ack;
            self.acks.insert(PublishAck(ack), topic.to_owned());
            PublishAck(ack)
        }))
    }

    /// Calls `method`: [`Event::CallAnswered`] or [`Event::CallLost`]
    /// follows, unless the call is cancelled first.
    pub fn call(&mut self, call: CallKey, method: &str, params: Value) -> Result<(), SendRefusal> {
        if !self.is_connected() {
            return Err(SendRefusal::NotConnected);
        }
        if self.calls.len() >= self.config.calls_in_flight_max || self.calls.contains_key(&call) {
            return Err(SendRefusal::TooManyCalls);
        }
        let message = request(call.0, method, params);
        self.try_send(&ClientMessage::Rpc { message })?;
        self.calls.insert(call, ());
        Ok(())
    }

    /// Stops waiting for a call's answer (it timed out, or nobody waits).
    pub fn cancel_call(&mut self, call: CallKey) {
        self.calls.remove(&call);
    }

    /// Sends a JSON-RPC notification: no answer comes.
    pub fn notify(&mut self, method: &str, params: Value) -> Result<(), SendRefusal> {
        if !self.is_connected() {
            return Err(SendRefusal::NotConnected);
        }
        let message = notification(method, params);
        self.try_send(&ClientMessage::Rpc { message })
    }

    /// Answers an [`Event::Rpc`] request of session `epoch`; dropped if that
    /// session has ended (its caller got an error from the server).
    pub fn reply(&mut self, epoch: u64, message: Value) {
        if epoch == self.epoch && self.is_connected() {
            self.send(&ClientMessage::Rpc { message });
        }
    }

    /// Registers `method` for calls from other clients:
    /// [`Event::Registered`] or [`Event::RegisterRefused`] follows (at once
    /// if it already is registered).
    pub fn register(&mut self, method: &str) {
        match self.procedures.get(method) {
            Some(Registration::Registered) => {
                self.events.push_back(Event::Registered { method: method.to_owned() });
                return;
            }
            Some(_) => return,
            None => {}
        }
        self.procedures.insert(method.to_owned(), Registration::Unsent { first: true });
        self.send_registrations();
    }

    pub fn unregister(&mut self, method: &str) {
        if self.procedures.remove(method).is_some() {
            self.send(&ClientMessage::Unregister { method: method.to_owned() });
        }
    }

    // ----- sessions -----

    /// At the start of a session: every subscription and registration goes
    /// out again.
    pub(super) fn renew_channels(&mut self) {
        let patterns: Vec<String> = self.topics.keys().cloned().collect();
        for topic in patterns {
            self.send(&ClientMessage::Subscribe { topic });
        }
        self.registers_in_flight.clear();
        for registration in self.procedures.values_mut() {
            *registration = match *registration {
                Registration::Registered => Registration::Unsent { first: false },
                Registration::Unsent { first } | Registration::Sent { first } => {
                    Registration::Unsent { first }
                }
            };
        }
        self.send_registrations();
    }

    /// Subscriptions and registrations still unanswered (the server may have
    /// dropped them under its rate limit) go out again.
    pub(super) fn resend_unanswered_channels(&mut self) {
        let unanswered: Vec<String> = self
            .topics
            .iter()
            .filter(|(_, topic)| !topic.acked)
            .map(|(pattern, _)| pattern.clone())
            .collect();
        for topic in unanswered {
            self.send(&ClientMessage::Subscribe { topic });
        }
        self.send_registrations();
    }

    /// The session ended: nothing is confirmed any more, and answers to its
    /// requests can never come.
    pub(super) fn end_session_channels(&mut self) {
        for topic in self.topics.values_mut() {
            topic.acked = false;
        }
        self.registers_in_flight.clear();
        for registration in self.procedures.values_mut() {
            if let Registration::Sent { first } = *registration {
                *registration = Registration::Unsent { first };
            }
        }
        for (call, ()) in std::mem::take(&mut self.calls) {
            self.events.push_back(Event::CallLost { call });
        }
        for (ack, _) in std::mem::take(&mut self.acks) {
            let refusal = SendRefusal::NotConnected;
            self.events.push_back(Event::PublishRefused { ack, refusal });
        }
    }

    fn send_registrations(&mut self) {
        if !self.is_connected() {
            return;
        }
        let mut unsent = Vec::new();
        for (method, registration) in &mut self.procedures {
            if let Registration::Unsent { first } = *registration {
                *registration = Registration::Sent { first };
                unsent.push(method.clone());
            }
        }
        for method in unsent {
            self.registers_in_flight.push_back(method.clone());
            self.send(&ClientMessage::Register { method });
        }
    }

    // ----- server messages -----

    pub(super) fn on_subscribed(&mut self, pattern: String) {
        if let Some(state) = self.topics.get_mut(&pattern) {
            state.acked = true;
            self.events.push_back(Event::Subscribed { pattern });
        }
    }

    pub(super) fn on_rpc(&mut self, message: Value) {
        let answer = match RpcMessage::classify(message.clone()) {
            Ok(RpcMessage::Response { id, message }) => Some((id, message)),
            // Requests and notifications for our procedures; the shell also
            // answers an invalid one that carries an id.
            Ok(RpcMessage::Request { .. } | RpcMessage::Notification { .. }) | Err(_) => None,
        };
        let Some((id, body)) = answer else {
            return self.events.push_back(Event::Rpc { epoch: self.epoch, message });
        };
        let call = id.as_u64().map(CallKey).filter(|call| self.calls.contains_key(call));
        if let Some(call) = call {
            self.calls.remove(&call);
            let result = response_outcome(&body);
            self.events.push_back(Event::CallAnswered { call, result });
        }
        // An answer to a call nobody waits for any more is dropped.
    }

    pub(super) fn on_registered(&mut self, method: String) {
        while let Some(front) = self.registers_in_flight.pop_front() {
            if front == method {
                break;
            }
        }
        if let Some(registration) = self.procedures.get_mut(&method) {
            *registration = Registration::Registered;
            self.events.push_back(Event::Registered { method });
        }
    }

    /// An error naming a topic: a refused subscription, or publishes to it.
    pub(super) fn on_topic_refused(&mut self, topic: &str, code: ErrorCode, message: String) {
        if self.topics.get(topic).is_some_and(|state| !state.acked) {
            self.topics.remove(topic);
            let event = Event::SubscribeRefused {
                pattern: topic.to_owned(),
                code,
                message: message.clone(),
            };
            self.events.push_back(event);
        }
        let refused: Vec<PublishAck> =
            self.acks.iter().filter(|(_, to)| *to == topic).map(|(ack, _)| *ack).collect();
        for ack in refused {
            self.acks.remove(&ack);
            let refusal = SendRefusal::Refused { code, message: message.clone() };
            self.events.push_back(Event::PublishRefused { ack, refusal });
        }
    }

    /// An error naming a method: a refused registration.
    pub(super) fn on_method_refused(&mut self, method: &str, code: ErrorCode, message: String) {
        if let Some(at) = self.registers_in_flight.iter().position(|m| m == method) {
            self.registers_in_flight.remove(at);
        }
        self.refuse_registration(method, code, message);
    }

    /// `already_registered` without a method (an older server): it answers
    /// the oldest registration in flight.
    pub(super) fn on_register_refused(&mut self, message: String) {
        if let Some(method) = self.registers_in_flight.pop_front() {
            self.refuse_registration(&method, ErrorCode::AlreadyRegistered, message);
        }
    }

    fn refuse_registration(&mut self, method: &str, code: ErrorCode, message: String) {
        let Some(registration) = self.procedures.get_mut(method) else {
            return;
        };
        match *registration {
            // A re-registration after a reconnect meeting the previous
            // session's registration not yet gone: try again at the next
            // heartbeat.
            Registration::Sent { first: false } if code == ErrorCode::AlreadyRegistered => {
                *registration = Registration::Unsent { first: false };
            }
            _ => {
                self.procedures.remove(method);
                let event = Event::RegisterRefused { method: method.to_owned(), code, message };
                self.events.push_back(event);
            }
        }
    }
}
