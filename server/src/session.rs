//! One WebSocket session: a reader loop (this task) and a writer task.
//!
//! The reader checks each frame against the limits (size, rate, JSON depth),
//! decodes it into a `ClientMessage` and hands it to its owner: the shard of
//! the document, the hub, or a procedure task. Every refusal is an `error`
//! message with a stable code; nothing a client sends can end the session
//! except the reasons in `close_code`. The writer drains the session's
//! `Outbox` into the socket. The reader also sends pings and closes a peer
//! that stays silent past `dead_peer_timeout`.
//!
//! The session remembers which documents it opened, so it can refuse a
//! commit or presence for an unopened one (`not_open`) and close them all
//! (announcing presence `leave`) when it ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use concord_engine::access::{DocRights, Identity, MethodAction, TopicAction};
use concord_engine::protocol::{
    check_method, check_pattern, check_topic, close_code, error_response, response, ClientMessage,
    ErrorCode, InvalidRpc, RpcMessage, ServerMessage, PROTOCOL_VERSION,
};
use concord_engine::{DocId, Rejection, TxId};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;

use crate::hub::{HubCommand, Named};
use crate::outbox::{Outbox, Outgoing};
use crate::rpc::{code, CallContext, RpcError};
use crate::server::{AuthFailure, ServerState};
use crate::shard::{encode, SessionHandle, SessionId, ShardCommand, ShardSession};

/// Most messages the writer hands to the socket before flushing, so a burst
/// costs few syscalls but a long queue still reaches the wire steadily.
const WRITER_BATCH_MESSAGES_MAX: usize = 64;
/// Most bytes of messages one batched frame joins; a message larger than
/// this goes in a frame of its own.
const WRITER_BATCH_FRAME_BYTES_MAX: usize = 64 * 1024;

/// How a session's messages are framed, as its client asked in the `/ws`
/// query (docs/protocol.md, section 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frames {
    /// One message per text frame (the default).
    Single,
    /// Messages written out together share a frame, as a JSON array (`batch=1`).
    Batched,
}

/// Why a session ended (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Client,
    SlowConsumer,
    PeerTimeout,
    Shutdown,
    Transport,
    /// The writer task ended (a write failed); its handle is consumed.
    WriterGone,
    MessageTooBig,
    /// The commit log failed; the server stops acknowledging (1011).
    StorageFailed,
    /// Authentication failed or never came (4003).
    Unauthorized,
    /// The token expired and the grace period is over (4004).
    TokenExpired,
}

/// How a session proves who it is, as the upgrade request decided.
#[derive(Debug)]
pub(crate) enum SessionAuth {
    /// The server has no authenticator: everyone may do everything.
    Open,
    /// The upgrade request's `Authorization` header was verified.
    Header(Identity),
    /// The first message must be `auth`, within the handshake timeout.
    FirstMessage { remote_addr: SocketAddr, origin: Option<String> },
}

impl Ended {
    fn label(self) -> &'static str {
        match self {
            Ended::Client => "client",
            Ended::SlowConsumer => "slow_consumer",
            Ended::PeerTimeout => "peer_timeout",
            Ended::Shutdown => "shutdown",
            Ended::Transport | Ended::WriterGone => "transport",
            Ended::MessageTooBig => "message_too_big",
            Ended::StorageFailed => "storage_failed",
            Ended::Unauthorized => "unauthorized",
            Ended::TokenExpired => "token_expired",
        }
    }
}

struct Session {
    id: SessionId,
    outbox: Outbox,
    /// The two together, as shards keep it (one shared handle, cloned into
    /// each frame a shard sends this session).
    handle: ShardSession,
    state: Arc<ServerState>,
    /// Who the session is and what it may do.
    identity: Arc<Identity>,
    /// Documents this session opened, with what it may do with each;
    /// bounded by `open_docs_max`.
    open: HashMap<DocId, DocRights>,
    limiter: DefaultDirectRateLimiter,
    /// Calls to server procedures in flight; bounded by
    /// `rpc_pending_calls_max`, aborted when the session ends.
    calls: JoinSet<()>,
    last_heard: Instant,
}

/// The target of the access log: one line when a session begins, one when
/// it ends (`RUST_LOG=concord::access=info` keeps just these).
const ACCESS_LOG: &str = "concord::access";

/// Runs a session to its end. `_permit` holds one of `sessions_max` slots;
/// `peer` is the client's address (as a trusted proxy names it).
pub(crate) async fn run(
    socket: WebSocket,
    state: Arc<ServerState>,
    _permit: OwnedSemaphorePermit,
    frames: Frames,
    auth: SessionAuth,
    peer: SocketAddr,
) {
    let began = Instant::now();
    let config = &state.config;
    let id: SessionId = format!("{:016x}", rand::random::<u64>()).into();
    let outbox = Outbox::new(
        config.outbound_queue_messages_max,
        config.outbound_queue_bytes_max,
        state.metrics.clone(),
    );
    let (sink, mut stream) = socket.split();
    let writer_policy = WriterPolicy { frames, coalesce_window: config.writer_coalesce_window };
    let mut writer = tokio::spawn(write_loop(sink, outbox.clone(), writer_policy));
    state.metrics.sessions.inc();
    state.metrics.sessions_opened.inc();

    let identity = match auth {
        SessionAuth::Open => Identity::anonymous(),
        SessionAuth::Header(identity) => identity,
        SessionAuth::FirstMessage { remote_addr, origin } => {
            match first_message_auth(&mut stream, &state, remote_addr, origin).await {
                Ok(identity) => identity,
                Err(refusal) => {
                    if let Some((code, message, close)) = refusal {
                        state.metrics.client_errors.with_label_values(&[code.as_str()]).inc();
                        let error = ServerMessage::error(code, message);
                        let _ = outbox.push(encode(&error));
                        outbox.close_after_drain(close, "authentication failed");
                    }
                    let ended = Ended::Unauthorized;
                    tracing::info!(target: ACCESS_LOG, session = %id, %peer, reason = ended.label(), "session refused");
                    state.metrics.sessions_closed.with_label_values(&[ended.label()]).inc();
                    finish(stream, writer, &outbox, ended, &state).await;
                    state.metrics.sessions.dec();
                    return;
                }
            }
        }
    };
    // An open server's sessions are all the same anonymous identity.
    let (sub, name) = match &state.authenticator {
        None => (None, None),
        Some(_) => (Some(identity.sub.clone()), identity.name.clone()),
    };
    tracing::info!(target: ACCESS_LOG, session = %id, %peer, sub = sub.as_deref().unwrap_or("-"), "session opened");
    let welcome =
        ServerMessage::Welcome { protocol: PROTOCOL_VERSION, session: id.to_string(), sub, name };
    let _ = outbox.push(encode(&welcome));
    let join = HubCommand::Join { session: id.clone(), outbox: outbox.clone() };
    let _ = state.hub.send(join).await;

    let rate = NonZeroU32::new(config.rate_messages_per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(config.rate_burst_messages_max).unwrap_or(rate);
    let mut session = Session {
        id: id.clone(),
        outbox: outbox.clone(),
        handle: Arc::new(SessionHandle { id: id.clone(), outbox: outbox.clone() }),
        state: state.clone(),
        identity: Arc::new(identity),
        open: HashMap::new(),
        limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
        calls: JoinSet::new(),
        last_heard: Instant::now(),
    };
    let ended = session.read_loop(&mut stream, &mut writer).await;
    // Counted when decided, not after the lingering below.
    state.metrics.sessions_closed.with_label_values(&[ended.label()]).inc();
    session.cleanup().await;
    finish(stream, writer, &outbox, ended, &state).await;
    state.metrics.sessions.dec();
    let duration_ms = began.elapsed().as_millis();
    tracing::info!(target: ACCESS_LOG, session = %id, %peer, duration_ms, reason = ended.label(), "session closed");
}

/// What a session refused at authentication: the error to send and the
/// close code, or `None` when the peer went away first.
type AuthRefused = Option<(ErrorCode, String, u16)>;

/// Waits (within the handshake timeout) for the session's first message,
/// which must be `auth`, and authenticates its token.
async fn first_message_auth(
    stream: &mut SplitStream<WebSocket>,
    state: &ServerState,
    remote_addr: SocketAddr,
    origin: Option<String>,
) -> Result<Identity, AuthRefused> {
    let config = &state.config;
    let first_text = async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Text(text))) => return Some(text),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                // Not text, so not `auth`: refused as any other first message.
                Some(Ok(Message::Binary(_))) => return Some(Utf8Bytes::from_static("")),
                Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
            }
        }
    };
    let unauthorized =
        |message: String| Some((ErrorCode::Unauthorized, message, close_code::UNAUTHORIZED));
    let text = match tokio::time::timeout(config.handshake_timeout, first_text).await {
        Err(_elapsed) => {
            let waited = config.handshake_timeout.as_secs_f64();
            return Err(unauthorized(format!(
                "this server requires authentication: no auth message within {waited} s"
            )));
        }
        Ok(None) => return Err(None),
        Ok(Some(text)) => text,
    };
    // Over the size limit it is not even decoded.
    let decoded = (text.len() <= config.message_bytes_max)
        .then(|| ClientMessage::decode(&text, config.message_json_depth_max));
    let token = match decoded {
        Some(Ok(ClientMessage::Auth { token })) => Some(token),
        _ => None,
    };
    let Some(token) = token else {
        return Err(unauthorized(
            "this server requires authentication: the first message must be \
             {\"type\":\"auth\",\"token\":...} (or send Authorization: Bearer on the upgrade)"
                .to_owned(),
        ));
    };
    state.authenticate(token, remote_addr, origin).await.map_err(|failure| match failure {
        AuthFailure::RateLimited => {
            Some((ErrorCode::RateLimited, failure.message(), close_code::UNAUTHORIZED))
        }
        AuthFailure::Refused(crate::auth::AuthRefusal::Expired) => {
            Some((ErrorCode::TokenExpired, failure.message(), close_code::TOKEN_EXPIRED))
        }
        AuthFailure::Refused(_) => unauthorized(failure.message()),
    })
}

/// Closes the session: sends the close frame (1000 unless one is queued)
/// and lingers for the closing handshake.
async fn finish(
    mut stream: SplitStream<WebSocket>,
    mut writer: tokio::task::JoinHandle<()>,
    outbox: &Outbox,
    ended: Ended,
    state: &ServerState,
) {
    if outbox.close_code().is_none() {
        outbox.close_now(close_code::NORMAL, "");
    }
    // Linger for the closing handshake: keep reading (and discarding) until
    // the peer answers our close frame, so it reliably sees the close code,
    // while the writer finishes. A writer stuck on a full socket (the
    // slow-consumer case) is abandoned after `close_timeout`; dropping both
    // halves then closes the connection.
    let linger = async {
        let drain = async {
            if ended != Ended::Client {
                while let Some(Ok(_)) = stream.next().await {}
            }
        };
        let write = async {
            if ended != Ended::WriterGone {
                let _ = (&mut writer).await;
            }
        };
        tokio::join!(drain, write);
    };
    if tokio::time::timeout(state.config.close_timeout, linger).await.is_err() {
        writer.abort();
    }
}

impl Session {
    async fn read_loop(
        &mut self,
        stream: &mut SplitStream<WebSocket>,
        writer: &mut tokio::task::JoinHandle<()>,
    ) -> Ended {
        let state = self.state.clone();
        let config = &state.config;
        let start = tokio::time::Instant::now() + config.ping_interval;
        let mut ping = tokio::time::interval_at(start, config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.state.shutdown.clone();
        let storage_failed = self.state.storage_failed.clone();
        let outbox = self.outbox.clone();
        // The token's expiry: first the session is told, then, a grace
        // period later, closed.
        let mut expiry_told = false;
        let expires_in = self
            .identity
            .expires_at
            .map(|exp| Duration::from_secs(exp.saturating_sub(crate::auth::unix_now())));
        let expiry = tokio::time::sleep(expires_in.unwrap_or(config.token_expiry_grace));
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    self.error(ErrorCode::ShuttingDown, "the server is shutting down".into(), None, None);
                    self.outbox.close_after_drain(close_code::GOING_AWAY, "server shutting down");
                    return Ended::Shutdown;
                }
                () = storage_failed.cancelled() => {
                    // What is queued was durable before it was queued; what
                    // was not is never sent. The client reconnects (to a
                    // restarted server) and resubmits.
                    self.outbox.close_after_drain(close_code::INTERNAL_ERROR, "storage failure");
                    return Ended::StorageFailed;
                }
                () = outbox.closing() => {
                    return match outbox.close_code() {
                        Some(close_code::PEER_TIMEOUT) => Ended::PeerTimeout,
                        Some(close_code::MESSAGE_TOO_BIG) => Ended::MessageTooBig,
                        _ => Ended::SlowConsumer,
                    };
                }
                _ = &mut *writer => return Ended::WriterGone,
                frame = stream.next() => match frame {
                    None => return Ended::Client,
                    Some(Err(error)) => return self.transport_error(error),
                    Some(Ok(message)) => {
                        self.last_heard = Instant::now();
                        match message {
                            Message::Text(text) => self.handle_text(text).await,
                            Message::Binary(_) => {
                                let message = "protocol v1 uses text frames only".into();
                                self.error(ErrorCode::BadMessage, message, None, None);
                            }
                            // Pings are answered by tungstenite; a close frame
                            // is answered too, and the stream then ends.
                            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => {}
                        }
                    }
                },
                _ = ping.tick() => {
                    if self.last_heard.elapsed() > config.dead_peer_timeout {
                        self.outbox.close_now(close_code::PEER_TIMEOUT, "no pong within the dead-peer timeout");
                        return Ended::PeerTimeout;
                    }
                    self.outbox.ping();
                }
                Some(_) = self.calls.join_next(), if !self.calls.is_empty() => {}
                () = &mut expiry, if expires_in.is_some() => {
                    if expiry_told {
                        self.outbox.close_after_drain(close_code::TOKEN_EXPIRED, "token expired");
                        return Ended::TokenExpired;
                    }
                    expiry_told = true;
                    let grace = config.token_expiry_grace;
                    let message = format!(
                        "the session's token expired; it closes in {} s: reconnect with a fresh token",
                        grace.as_secs_f64()
                    );
                    self.error(ErrorCode::TokenExpired, message, None, None);
                    expiry.as_mut().reset(tokio::time::Instant::now() + grace);
                }
            }
        }
    }

    fn transport_error(&self, error: axum::Error) -> Ended {
        let too_big = error
            .into_inner()
            .downcast::<tungstenite::Error>()
            .is_ok_and(|error| matches!(*error, tungstenite::Error::Capacity(_)));
        if too_big {
            self.outbox.close_now(close_code::MESSAGE_TOO_BIG, "message over the transport limit");
            return Ended::MessageTooBig;
        }
        Ended::Transport
    }

    fn error(&self, code: ErrorCode, message: String, doc: Option<DocId>, tx_id: Option<TxId>) {
        self.refuse(ServerMessage::Error { code, message, doc, tx_id, topic: None, method: None });
    }

    /// Refuses a request that named a topic or a method.
    fn named_error(&self, code: ErrorCode, message: String, named: Named) {
        self.refuse(named.error(code, message));
    }

    fn refuse(&self, error: ServerMessage) {
        if let ServerMessage::Error { code, .. } = &error {
            self.state.metrics.client_errors.with_label_values(&[code.as_str()]).inc();
        }
        let _ = self.outbox.push_reply(encode(&error));
    }

    async fn handle_text(&mut self, text: Utf8Bytes) {
        let config = &self.state.config;
        // Every text frame counts against the rate, even a refused one.
        let allowed = self.limiter.check().is_ok();
        if text.len() > config.message_bytes_max {
            let max = config.message_bytes_max;
            let message = format!("message is {} bytes, over the limit of {max}", text.len());
            self.error(ErrorCode::MessageTooLarge, message, None, None);
            return;
        }
        let message = match ClientMessage::decode(&text, config.message_json_depth_max) {
            Ok(message) => message,
            Err(error) => {
                self.error(error.code, error.message, None, None);
                return;
            }
        };
        if !allowed {
            let (doc, tx_id) = ids_of(&message);
            let rate = config.rate_messages_per_second;
            let message = format!("over {rate} messages per second; the message was dropped");
            self.error(ErrorCode::RateLimited, message, doc, tx_id);
            return;
        }
        self.dispatch(message).await;
    }

    async fn dispatch(&mut self, message: ClientMessage) {
        let state = self.state.clone();
        let config = &state.config;
        let session = self.id.clone();
        match message {
            ClientMessage::Open { doc, version } => {
                // The same answer whether or not the document exists.
                let Some(rights) = self.identity.permissions.doc(&doc) else {
                    let message = format!("no grant of this session allows reading {doc}");
                    self.error(ErrorCode::Forbidden, message, Some(doc), None);
                    return;
                };
                if !self.open.contains_key(&doc) && self.open.len() >= config.open_docs_max {
                    let message =
                        format!("a session may open at most {} documents", config.open_docs_max);
                    self.error(ErrorCode::LimitReached, message, Some(doc), None);
                    return;
                }
                self.open.insert(doc.clone(), rights);
                let session = self.handle.clone();
                let command = ShardCommand::Open { session, doc: doc.clone(), version };
                state.shards.send(&doc, command).await;
            }
            ClientMessage::Close { doc } => {
                if self.open.remove(&doc).is_none() {
                    self.error(ErrorCode::NotOpen, format!("{doc} is not open"), Some(doc), None);
                    return;
                }
                state.shards.send(&doc, ShardCommand::Close { session, doc: doc.clone() }).await;
            }
            ClientMessage::Commit { tx } => {
                let Some(rights) = self.open.get(&tx.doc) else {
                    let message = format!("open {} before committing to it", tx.doc);
                    self.error(ErrorCode::NotOpen, message, Some(tx.doc), Some(tx.tx_id));
                    return;
                };
                // The session's write scopes and the server-only paths:
                // decided from the patch's pointers alone, here rather than
                // on the shard, and revealing nothing about the document.
                let refused = rights
                    .check_writes(&tx.writes)
                    .map_err(|out| Rejection::Forbidden {
                        op_index: out.op_index,
                        pointer: out.pointer,
                        message: out.why,
                    })
                    .and_then(|()| state.enforcement.rules.check_server_only(&tx.doc, &tx.writes));
                if let Err(rejection) = refused {
                    state.metrics.rejections.with_label_values(&["forbidden"]).inc();
                    let rejected =
                        ServerMessage::Rejected { doc: tx.doc, tx_id: tx.tx_id, rejection };
                    let _ = self.outbox.push_reply(encode(&rejected));
                    return;
                }
                let doc = tx.doc.clone();
                let identity = self.identity.clone();
                let command = ShardCommand::Commit {
                    session: self.handle.clone(),
                    identity,
                    tx,
                    received: Instant::now(),
                };
                state.shards.send(&doc, command).await;
            }
            ClientMessage::Presence { doc, state: presence } => {
                if !self.open.contains_key(&doc) {
                    let message = format!("open {doc} before setting presence on it");
                    self.error(ErrorCode::NotOpen, message, Some(doc), None);
                    return;
                }
                let command = ShardCommand::Presence { session, doc: doc.clone(), state: presence };
                state.shards.send(&doc, command).await;
            }
            ClientMessage::Subscribe { topic } => {
                if let Err(error) = check_pattern(&topic, config.name_bytes_max) {
                    let named = bounded(topic, config.name_bytes_max);
                    self.named_error(ErrorCode::BadId, error.to_string(), Named::Topic(named));
                    return;
                }
                if !self.identity.permissions.topic(&topic, TopicAction::Subscribe) {
                    let message = format!("no grant of this session allows subscribing to {topic}");
                    self.named_error(ErrorCode::Forbidden, message, Named::Topic(topic));
                    return;
                }
                let _ = state.hub.send(HubCommand::Subscribe { session, pattern: topic }).await;
            }
            ClientMessage::Unsubscribe { topic } => {
                let _ = state.hub.send(HubCommand::Unsubscribe { session, pattern: topic }).await;
            }
            ClientMessage::Publish { topic, data, ack, echo } => {
                if let Err(error) = check_topic(&topic, config.name_bytes_max) {
                    let named = bounded(topic, config.name_bytes_max);
                    self.named_error(ErrorCode::BadId, error.to_string(), Named::Topic(named));
                    return;
                }
                if !self.identity.permissions.topic(&topic, TopicAction::Publish) {
                    let message = format!("no grant of this session allows publishing to {topic}");
                    self.named_error(ErrorCode::Forbidden, message, Named::Topic(topic));
                    return;
                }
                let command = HubCommand::Publish { session, topic, data, ack, echo };
                let _ = state.hub.send(command).await;
            }
            ClientMessage::Register { method } => {
                if let Err(error) = check_method(&method, config.name_bytes_max) {
                    let named = bounded(method, config.name_bytes_max);
                    self.named_error(ErrorCode::BadId, error.to_string(), Named::Method(named));
                    return;
                }
                if !self.identity.permissions.method(&method, MethodAction::Register) {
                    let message = format!("no grant of this session allows registering {method}");
                    self.named_error(ErrorCode::Forbidden, message, Named::Method(method));
                    return;
                }
                let _ = state.hub.send(HubCommand::Register { session, method }).await;
            }
            ClientMessage::Unregister { method } => {
                let _ = state.hub.send(HubCommand::Unregister { session, method }).await;
            }
            ClientMessage::Rpc { message } => self.rpc(message).await,
            ClientMessage::Ping => {
                let _ = self.outbox.push_reply(encode(&ServerMessage::Pong));
            }
            // An open server takes no tokens: there is nothing to check.
            ClientMessage::Auth { .. } if state.authenticator.is_none() => {}
            ClientMessage::Auth { .. } => {
                let message = "this session is already authenticated (by its Authorization \
                               header or its first message); reconnect to change identity"
                    .into();
                self.error(ErrorCode::BadMessage, message, None, None);
            }
        }
    }

    async fn rpc(&mut self, message: Value) {
        let state = self.state.clone();
        let session = self.id.clone();
        match RpcMessage::classify(message) {
            Err(InvalidRpc { id, reason }) => {
                let error = RpcError::new(code::INVALID_REQUEST, reason.to_string());
                self.reply(error_response(id, &error));
            }
            Ok(RpcMessage::Request { id, method, params }) => {
                if !self.identity.permissions.method(&method, MethodAction::Call) {
                    let error = forbidden_call(&method);
                    self.reply(error_response(id, &error));
                    return;
                }
                if state.procedures.contains_key(&method) {
                    self.call_procedure(Some(id), &method, params);
                } else {
                    let command = HubCommand::Call { session, id: Some(id), method, params };
                    let _ = state.hub.send(command).await;
                }
            }
            Ok(RpcMessage::Notification { method, params }) => {
                if !self.identity.permissions.method(&method, MethodAction::Call) {
                    let message = forbidden_call(&method).message;
                    self.named_error(ErrorCode::Forbidden, message, Named::Method(method));
                    return;
                }
                if state.procedures.contains_key(&method) {
                    self.call_procedure(None, &method, params);
                } else {
                    let command = HubCommand::Call { session, id: None, method, params };
                    let _ = state.hub.send(command).await;
                }
            }
            Ok(RpcMessage::Response { id, message }) => {
                let _ = state.hub.send(HubCommand::Response { session, id, message }).await;
            }
        }
    }

    fn reply(&self, message: Value) {
        let _ = self.outbox.push_reply(encode(&ServerMessage::Rpc { message }));
    }

    /// Runs a server procedure in a task of this session, answering `id`
    /// (nothing for a notification) with its result, an error, or a timeout.
    fn call_procedure(&mut self, id: Option<Value>, method: &str, params: Value) {
        let state = &self.state;
        state.metrics.rpc_calls.inc();
        let Some(procedure) = state.procedures.get(method) else { return };
        let max = state.config.rpc_pending_calls_max;
        if self.calls.len() >= max {
            if let Some(id) = id {
                let error =
                    RpcError::new(code::TOO_MANY_CALLS, format!("at most {max} calls in flight"));
                self.reply(error_response(id, &error));
            }
            return;
        }
        let context = CallContext {
            session: self.id.to_string(),
            documents: state.documents.clone(),
            identity: self.identity.clone(),
        };
        let call = AssertUnwindSafe(procedure(context, params)).catch_unwind();
        let timeout = state.config.rpc_call_timeout;
        let outbox = self.outbox.clone();
        self.calls.spawn(async move {
            let result = match tokio::time::timeout(timeout, call).await {
                Ok(Ok(result)) => result,
                Ok(Err(_panic)) => Err(RpcError::internal("the procedure panicked")),
                Err(_elapsed) => {
                    Err(RpcError::new(code::TIMEOUT, "the procedure did not finish in time"))
                }
            };
            let Some(id) = id else { return };
            let message = response(id, result);
            let _ = outbox.push_reply(encode(&ServerMessage::Rpc { message }));
        });
    }

    async fn cleanup(&mut self) {
        self.calls.abort_all();
        for doc in std::mem::take(&mut self.open).into_keys() {
            let command = ShardCommand::Close { session: self.id.clone(), doc: doc.clone() };
            self.state.shards.send(&doc, command).await;
        }
        let _ = self.state.hub.send(HubCommand::Leave { session: self.id.clone() }).await;
    }
}

/// A name to echo in an error: itself when within `bytes_max`, else its
/// first `bytes_max` bytes (on a character boundary), so a refusal never
/// sends back more than the limit allows.
fn bounded(mut name: String, bytes_max: usize) -> String {
    if name.len() > bytes_max {
        let mut end = bytes_max;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

/// The answer to a call the session's identity may not make.
fn forbidden_call(method: &str) -> RpcError {
    let message = format!("no grant of this session allows calling {method}");
    RpcError::new(code::FORBIDDEN, message).with_data(serde_json::json!({"code": "forbidden"}))
}

/// The document and transaction a message names, for error replies.
fn ids_of(message: &ClientMessage) -> (Option<DocId>, Option<TxId>) {
    match message {
        ClientMessage::Open { doc, .. }
        | ClientMessage::Close { doc }
        | ClientMessage::Presence { doc, .. } => (Some(doc.clone()), None),
        ClientMessage::Commit { tx } => (Some(tx.doc.clone()), Some(tx.tx_id.clone())),
        _ => (None, None),
    }
}

/// How a session's writer turns its queue into frames and writes.
#[derive(Debug, Clone, Copy)]
struct WriterPolicy {
    frames: Frames,
    coalesce_window: Duration,
}

/// Writes the outbox to the socket until the close frame or a write error.
///
/// The first message (`welcome`) always goes alone in the first frame. After
/// a flush that emptied the queue, the next message waits until
/// `coalesce_window` after that flush, and whatever queued meanwhile goes
/// out with it in one write; a flush that left a backlog is followed at once,
/// and a reply to one of the session's own requests (or a close) ends the
/// wait.
async fn write_loop(mut sink: SplitSink<WebSocket, Message>, outbox: Outbox, policy: WriterPolicy) {
    let mut caught_up_at: Option<tokio::time::Instant> = None;
    let mut batch = FrameBatch::new(policy.frames);
    let mut frames = Vec::new();
    let mut taken = Vec::new();
    let mut batch_max = 1;
    while let Some(first) = outbox.next().await {
        // A session that was idle for the window (most, under fan-out to
        // many readers) writes at once, without arming a timer.
        let due = caught_up_at.map(|flushed| flushed + policy.coalesce_window);
        if let Some(due) = due.filter(|due| *due > tokio::time::Instant::now()) {
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = outbox.urgent() => {}
            }
        }
        outbox.begin_write();
        taken.push(first);
        let count = 1 + outbox.take_into(&mut taken, batch_max - 1);
        let mut closing = false;
        for outgoing in taken.drain(..) {
            match outgoing {
                Outgoing::Text(text) => batch.push(text, &mut frames),
                Outgoing::Ping => {
                    batch.finish(&mut frames);
                    frames.push(Message::Ping(Bytes::new()));
                }
                Outgoing::Close { code, reason } => {
                    batch.finish(&mut frames);
                    let reason = reason.into();
                    frames.push(Message::Close(Some(CloseFrame { code, reason })));
                    closing = true;
                }
            }
        }
        batch.finish(&mut frames);
        for frame in frames.drain(..) {
            if sink.feed(frame).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() || closing {
            return;
        }
        // Caught up unless the batch stopped at its cap with more waiting
        // (the first message is always alone, so it leaves no backlog).
        let backlog = count == batch_max && batch_max > 1;
        caught_up_at =
            (!backlog && !policy.coalesce_window.is_zero()).then(tokio::time::Instant::now);
        batch_max = WRITER_BATCH_MESSAGES_MAX;
    }
}

/// Text messages on their way into frames: each its own frame, or, for a
/// batched session, runs of them joined into JSON arrays of at most
/// `WRITER_BATCH_FRAME_BYTES_MAX`.
struct FrameBatch {
    frames: Frames,
    texts: Vec<Utf8Bytes>,
    bytes: usize,
}

impl FrameBatch {
    fn new(frames: Frames) -> Self {
        Self { frames, texts: Vec::new(), bytes: 0 }
    }

    /// Adds a message; pushes onto `out` any frame that is now complete.
    fn push(&mut self, text: Utf8Bytes, out: &mut Vec<Message>) {
        if self.frames == Frames::Single {
            out.push(Message::Text(text));
            return;
        }
        // `[`, `]` and a comma per message.
        if !self.texts.is_empty() && self.bytes + text.len() + 1 > WRITER_BATCH_FRAME_BYTES_MAX {
            self.finish(out);
        }
        self.bytes += text.len() + 1;
        self.texts.push(text);
    }

    /// Pushes onto `out` the frame of whatever is gathered.
    fn finish(&mut self, out: &mut Vec<Message>) {
        let bytes = std::mem::take(&mut self.bytes);
        match self.texts.len() {
            0 => {}
            1 => out.extend(self.texts.pop().map(Message::Text)),
            _ => {
                // `bytes` counts a separator per message: the commas and `[`; one more for `]`.
                let mut joined = String::with_capacity(bytes + 1);
                for text in self.texts.drain(..) {
                    joined.push(if joined.is_empty() { '[' } else { ',' });
                    joined.push_str(text.as_str());
                }
                joined.push(']');
                out.push(Message::Text(joined.into()));
            }
        }
    }
}
