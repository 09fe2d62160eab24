//! The shell's side of pub/sub and RPC: the handles' subscription channels
//! and waiters, publish and call replies, and the procedures' handlers
//! (run as tasks, answering through the connection task).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use concord_engine::protocol::ErrorCode;
use concord_engine::session::{
    CallKey, ClientSession, Event as SessionEvent, PublishAck, SendRefusal,
};
use futures_util::FutureExt;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};
use tracing::debug;

use super::{Command, Delivery, Waiters};
use crate::config::TOPIC_MESSAGES_QUEUED_MAX;
use crate::error::{CallError, Error};
use crate::rpc::{self, Handler, Incoming, RpcError};
use crate::topic::{topic_matches, Message};

pub(super) type SubscribeAnswer = Result<broadcast::Receiver<Message>, Error>;

/// The error a handle sees for a request the machine would not send.
pub(super) fn refusal_error(refusal: SendRefusal) -> Error {
    match refusal {
        SendRefusal::NotConnected => Error::NotConnected,
        SendRefusal::TooManyCalls => Error::Refused {
            code: ErrorCode::RateLimited,
            message: "too many calls in flight".to_owned(),
        },
        SendRefusal::Refused { code, message } => Error::Refused { code, message },
    }
}

#[derive(Default)]
pub(super) struct Channels {
    topics: HashMap<String, broadcast::Sender<Message>>,
    subscribe_waiters: Waiters<String, SubscribeAnswer>,
    acks: HashMap<PublishAck, oneshot::Sender<Result<(), Error>>>,
    calls: HashMap<CallKey, oneshot::Sender<Result<Value, CallError>>>,
    procedures: HashMap<String, Handler>,
    register_waiters: Waiters<String, Result<(), Error>>,
}

impl Channels {
    pub(super) fn subscribe(
        &mut self,
        session: &mut ClientSession,
        pattern: String,
        reply: oneshot::Sender<SubscribeAnswer>,
    ) {
        self.topics
            .entry(pattern.clone())
            .or_insert_with(|| broadcast::channel(TOPIC_MESSAGES_QUEUED_MAX).0);
        self.subscribe_waiters.entry(pattern.clone()).or_default().push(reply);
        session.subscribe(&pattern);
    }

    /// Forgets a subscription nobody listens to any more; true if the
    /// machine should unsubscribe.
    pub(super) fn unsubscribe(&mut self, pattern: &str) -> bool {
        let abandoned = self.topics.get(pattern).is_some_and(|sender| sender.receiver_count() == 0)
            && !self.subscribe_waiters.contains_key(pattern);
        if abandoned {
            self.topics.remove(pattern);
        }
        abandoned
    }

    pub(super) fn publish(
        &mut self,
        session: &mut ClientSession,
        topic: &str,
        data: Value,
        echo: bool,
        delivery: Delivery,
        reply: oneshot::Sender<Result<(), Error>>,
    ) {
        let confirm = delivery == Delivery::Confirmed;
        match session.publish(topic, data, echo, confirm) {
            Ok(Some(ack)) => {
                self.acks.insert(ack, reply);
            }
            Ok(None) => {
                let _ = reply.send(Ok(()));
            }
            Err(refusal) => {
                let _ = reply.send(Err(refusal_error(refusal)));
            }
        }
    }

    pub(super) fn call(
        &mut self,
        session: &mut ClientSession,
        id: u64,
        method: &str,
        params: Value,
        reply: oneshot::Sender<Result<Value, CallError>>,
    ) {
        match session.call(CallKey(id), method, params) {
            Ok(()) => {
                self.calls.insert(CallKey(id), reply);
            }
            Err(SendRefusal::NotConnected) => {
                let _ = reply.send(Err(CallError::NotConnected));
            }
            Err(SendRefusal::TooManyCalls) => {
                let _ = reply.send(Err(CallError::TooManyCalls));
            }
            Err(refusal) => {
                let _ = reply.send(Err(CallError::Unsendable(Box::new(refusal_error(refusal)))));
            }
        }
    }

    pub(super) fn cancel_call(&mut self, session: &mut ClientSession, id: u64) {
        self.calls.remove(&CallKey(id));
        session.cancel_call(CallKey(id));
    }

    pub(super) fn register(
        &mut self,
        session: &mut ClientSession,
        method: String,
        handler: Handler,
        reply: oneshot::Sender<Result<(), Error>>,
    ) {
        self.procedures.insert(method.clone(), handler);
        self.register_waiters.entry(method.clone()).or_default().push(reply);
        session.register(&method);
    }

    pub(super) fn unregister(&mut self, method: &str) {
        self.procedures.remove(method);
    }

    /// The machine's pub/sub and RPC events. Returns a pattern to
    /// unsubscribe from when a message finds nobody listening to it.
    pub(super) fn on_event(
        &mut self,
        event: SessionEvent,
        epoch: u64,
        commands: mpsc::WeakSender<Command>,
        permits: Arc<Semaphore>,
        session: &mut ClientSession,
    ) -> Option<String> {
        match event {
            SessionEvent::Message { topic, data } => return self.on_message(topic, data),
            SessionEvent::Subscribed { pattern } => {
                let sender = self.topics.get(&pattern)?;
                for waiter in self.subscribe_waiters.remove(&pattern).into_iter().flatten() {
                    let _ = waiter.send(Ok(sender.subscribe()));
                }
            }
            SessionEvent::SubscribeRefused { pattern, code, message } => {
                self.topics.remove(&pattern);
                for waiter in self.subscribe_waiters.remove(&pattern).into_iter().flatten() {
                    let _ = waiter.send(Err(Error::Refused { code, message: message.clone() }));
                }
            }
            SessionEvent::Published { ack } => {
                if let Some(reply) = self.acks.remove(&ack) {
                    let _ = reply.send(Ok(()));
                }
            }
            SessionEvent::PublishRefused { ack, refusal } => {
                if let Some(reply) = self.acks.remove(&ack) {
                    let _ = reply.send(Err(refusal_error(refusal)));
                }
            }
            SessionEvent::CallAnswered { call, result } => {
                if let Some(reply) = self.calls.remove(&call) {
                    let result = result.map_err(CallError::Rpc);
                    let _ = reply.send(result);
                }
            }
            SessionEvent::CallLost { call } => {
                if let Some(reply) = self.calls.remove(&call) {
                    let _ = reply.send(Err(CallError::Disconnected));
                }
            }
            SessionEvent::Registered { method } => {
                for waiter in self.register_waiters.remove(&method).into_iter().flatten() {
                    let _ = waiter.send(Ok(()));
                }
            }
            SessionEvent::RegisterRefused { method, code, message } => {
                self.procedures.remove(&method);
                for waiter in self.register_waiters.remove(&method).into_iter().flatten() {
                    let _ = waiter.send(Err(Error::Refused { code, message: message.clone() }));
                }
            }
            SessionEvent::Rpc { epoch: request_epoch, message } => {
                self.on_request(message, request_epoch.min(epoch), commands, permits, session)
            }
            _ => {}
        }
        None
    }

    fn on_message(&mut self, topic: String, data: Value) -> Option<String> {
        let message = Message { topic, data };
        let mut abandoned = None;
        for (pattern, sender) in &self.topics {
            if !topic_matches(pattern, &message.topic) {
                continue;
            }
            if sender.receiver_count() == 0 && !self.subscribe_waiters.contains_key(pattern) {
                abandoned = Some(pattern.clone());
            } else {
                let _ = sender.send(message.clone());
            }
        }
        if let Some(pattern) = &abandoned {
            self.topics.remove(pattern);
        }
        abandoned
    }

    /// A request (or notification) for one of this client's procedures.
    fn on_request(
        &mut self,
        message: Value,
        epoch: u64,
        commands: mpsc::WeakSender<Command>,
        permits: Arc<Semaphore>,
        session: &mut ClientSession,
    ) {
        let (id, method, params) = match rpc::classify(message) {
            Incoming::Request { id, method, params } => (id, method, params),
            // The machine passes on answers to calls it no longer waits for.
            Incoming::Response { id, result } => {
                return debug!(id, ok = result.is_ok(), "an answer to a forgotten call")
            }
            Incoming::Unexpected(message) => return debug!(%message, "unexpected rpc message"),
        };
        let Some(handler) = self.procedures.get(&method).cloned() else {
            if let Some(id) = id {
                let message = rpc::response(id, Err(RpcError::method_not_found(&method)));
                session.reply(epoch, message);
            }
            return;
        };
        let Ok(permit) = permits.try_acquire_owned() else {
            if let Some(id) = id {
                let busy = RpcError::new(RpcError::TOO_MANY_CALLS, "the callee is busy");
                session.reply(epoch, rpc::response(id, Err(busy)));
            }
            return;
        };
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
}
