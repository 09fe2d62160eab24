//! The connection task: the one owner of the socket and of every replica.
//!
//! Handles ([`Client`](crate::Client), [`Document`](crate::Document), running
//! transactions) talk to it by [`Command`] over a bounded channel; it talks to
//! the server, feeds server messages to the replicas, and answers the handles
//! through oneshot channels and broadcast event channels. Nothing else
//! touches a replica, so a transaction function always runs on a consistent
//! replica and no lock is held across an await.
//!
//! ## Resume (docs/protocol.md, section 8)
//! The task reconnects by itself with jittered backoff. On every new session
//! it re-opens each document with the version its replica holds (or asks for
//! a snapshot when the replica cannot be trusted), re-subscribes its topics
//! and re-registers its procedures. When a document's `opened` arrives, every
//! transaction still pending in the replica is (re)submitted under its
//! original id: the server's deduplication answers a resubmission with the
//! original outcome, and a commit that already reached the replica through
//! the change stream is recognised there, so every transaction resolves
//! exactly once. The same rule covers a session the server closed for falling
//! behind (close code 4001) and a server-side resync (`error resynced`, then
//! a snapshot and `opened`), whose dropped backlog may have held outcomes.
//!
//! Handlers are synchronous and queue outgoing frames in `outbox`; the loop
//! writes the outbox after each event, so one event's replies go out in one
//! flush. Frames queued while disconnected are dropped: everything a new
//! session needs is re-sent from the task's state on connect.

//!
//! # Layout
//! - this file: the commands, the loop, the link (connect, heartbeat,
//!   reconnect), and the dispatch of server messages;
//! - `documents`: the replicas: open, run, commit outcomes, resume;
//! - `channels`: pub/sub subscriptions and RPC calls and procedures.

mod channels;
mod documents;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use concord_engine::protocol::{
    close_code, ClientMessage, ErrorCode, ServerFrame, ServerMessage, PROTOCOL_VERSION,
};
use concord_engine::replica::Replica;
use concord_engine::{patch, DocId, Pointer, Rejection, Transaction, TxId, Version};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Semaphore};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{tungstenite, Connector, MaybeTlsStream, WebSocketStream};
use tracing::{debug, warn};

use self::channels::{Procedure, TopicState};
use self::documents::{DocState, DocStatus};
use crate::backoff::Backoff;
use crate::client::{ConnectionState, Identity, TokenProvider};
use crate::config::{ClientConfig, RPC_HANDLERS_IN_FLIGHT_MAX};
use crate::contention::Contention;
use crate::document::{DocumentEvent, PresenceUpdate};
use crate::error::{CallError, Error};
use crate::rpc::Handler;
use crate::stats::Counters;

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Most commands handled before the outbox is written, so a burst of
/// commands shares one flush without starving the socket.
const COMMANDS_PER_FLUSH_MAX: usize = 64;

/// One run of a transaction function, type-erased: it runs on the replica
/// with the tx id it is given, hands its typed result to the waiting
/// transaction through a channel it captured, and tells the task what to do.
pub(crate) type Job = Box<dyn FnOnce(&mut Replica, TxId) -> RunKind + Send>;

/// What a job's run needs from the connection task.
#[derive(Debug)]
pub(crate) enum RunKind {
    /// Nothing pending (read-only, or failed): no outcome to wait for.
    Done,
    /// Pending in the replica: send it, and resolve when its outcome arrives.
    Submit(Transaction),
    /// STM retry: wake when a change overlaps one of these reads.
    Retry(Vec<Pointer>),
    /// Read another pending transaction's writes: wake when one resolves.
    Blocked,
}

/// What a waiting transaction learns.
#[derive(Debug)]
pub(crate) enum Resolution {
    Committed(Version),
    Rejected(Rejection),
    /// Resubmitted after a lost acknowledgement, and the server no longer
    /// knows whether the first submission committed.
    OutcomeUnknown,
    /// Run the function again (a read changed, or a pending one resolved).
    Wake,
    /// The function panicked inside the task.
    Panicked,
    /// The server dropped the commit unread (rate limit): run it again later.
    Dropped,
    /// The server refused the commit message itself; it never reached the
    /// store.
    Refused {
        code: ErrorCode,
        message: String,
    },
}

/// How a publish is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Done once handed to the connection.
    Sent,
    /// Done when the server answers `published`.
    Confirmed,
}

/// The event channels of one document, as the handles hold them: weak, so
/// receivers end when the connection task does.
#[derive(Debug, Clone)]
pub(crate) struct DocChannels {
    pub(crate) events: broadcast::WeakSender<DocumentEvent>,
    pub(crate) presence: broadcast::WeakSender<PresenceUpdate>,
    /// Shared by this client's transactions on the document.
    pub(crate) contention: Arc<Contention>,
}

pub(crate) enum Command {
    Open {
        doc: DocId,
        reply: oneshot::Sender<Result<DocChannels, Error>>,
    },
    Run {
        doc: DocId,
        job: Job,
        resolve: oneshot::Sender<Resolution>,
    },
    Read {
        doc: DocId,
        pointer: Pointer,
        reply: oneshot::Sender<(Option<Value>, Version)>,
    },
    SetPresence {
        doc: DocId,
        state: Value,
    },
    Subscribe {
        pattern: String,
        reply: oneshot::Sender<channels::SubscribeAnswer>,
    },
    Unsubscribe {
        pattern: String,
    },
    Publish {
        topic: String,
        data: Value,
        echo: bool,
        delivery: Delivery,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Call {
        id: u64,
        method: String,
        params: Value,
        reply: oneshot::Sender<Result<Value, CallError>>,
    },
    CancelCall {
        id: u64,
    },
    Notify {
        method: String,
        params: Value,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Register {
        method: String,
        handler: Handler,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Unregister {
        method: String,
    },
    /// A procedure's answer, from its handler task. `epoch` names the session
    /// the request came on: an answer for an earlier session is dropped.
    RpcReply {
        epoch: u64,
        message: Value,
    },
    Session {
        reply: oneshot::Sender<Option<String>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// Where and how the client connects; the same for every reconnect.
pub(crate) struct Endpoint {
    /// The session URL, asking for batched frames.
    pub(crate) url: String,
    pub(crate) config: Arc<ClientConfig>,
    /// For `wss://`: the roots to trust. `None` for `ws://`.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    /// Asked for a fresh token before every connection attempt.
    pub(crate) token: Option<TokenProvider>,
}

impl Endpoint {
    pub(crate) fn new(
        url: String,
        config: Arc<ClientConfig>,
        tls: Option<Arc<rustls::ClientConfig>>,
        token: Option<TokenProvider>,
    ) -> Self {
        Self { url: with_batched_frames(url), config, tls, token }
    }
}

/// What the server's `welcome` said.
#[derive(Debug)]
pub(crate) struct Welcome {
    pub(crate) session: String,
    pub(crate) identity: Option<Identity>,
}

/// Opens a WebSocket to the endpoint (with a fresh token, if it has a
/// provider) and waits for `welcome`.
pub(crate) async fn connect(endpoint: Arc<Endpoint>) -> Result<(Socket, Welcome), Error> {
    let config = &endpoint.config;
    let attempt = async {
        let mut request = endpoint
            .url
            .as_str()
            .into_client_request()
            .map_err(|error| Error::Connect(Box::new(error)))?;
        if let Some(provider) = &endpoint.token {
            let token = provider().await.map_err(Error::Token)?;
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| Error::Token("the token is not a valid HTTP header value".into()))?;
            request.headers_mut().insert(header::AUTHORIZATION, value);
        }
        let connector = match &endpoint.tls {
            Some(tls) => Connector::Rustls(tls.clone()),
            None => Connector::Plain,
        };
        // Nagle off: messages are small and latency is what transactions wait on.
        let (mut socket, _) = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config.websocket()),
            true,
            Some(connector),
        )
        .await
        .map_err(connect_error)?;
        loop {
            let text = match socket.next().await {
                Some(Ok(Frame::Text(text))) => text,
                Some(Ok(Frame::Close(frame))) => {
                    if frame.as_ref().is_some_and(|f| u16::from(f.code) == close_code::UNAUTHORIZED)
                    {
                        let message = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                        return Err(Error::Unauthorized { message });
                    }
                    return Err(Error::Handshake(format!("closed before welcome: {frame:?}")));
                }
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(Error::Connect(Box::new(error))),
                None => return Err(Error::Handshake("closed before welcome".into())),
            };
            let decoded = ServerFrame::decode(text.as_str())
                .map(|frame| frame.into_iter().next())
                .map_err(|error| Error::Handshake(error.to_string()))?;
            return match decoded {
                Some(ServerMessage::Welcome { protocol, session, sub, name })
                    if protocol == PROTOCOL_VERSION =>
                {
                    let identity = sub.map(|sub| Identity { sub, name });
                    Ok((socket, Welcome { session, identity }))
                }
                Some(ServerMessage::Welcome { protocol, .. }) => {
                    Err(Error::ProtocolMismatch { server: protocol, client: PROTOCOL_VERSION })
                }
                Some(ServerMessage::Error {
                    code: ErrorCode::Unauthorized | ErrorCode::TokenExpired,
                    message,
                    ..
                }) => Err(Error::Unauthorized { message }),
                Some(_) | None => Err(Error::Handshake("the first message was not welcome".into())),
            };
        }
    };
    tokio::time::timeout(config.connect_timeout, attempt)
        .await
        .map_err(|_| Error::ConnectTimeout(config.connect_timeout))?
}

/// A failed upgrade: HTTP 401 is a refusal of the credentials.
fn connect_error(error: tungstenite::Error) -> Error {
    match error {
        tungstenite::Error::Http(response) if response.status() == StatusCode::UNAUTHORIZED => {
            let body = response.body().as_deref().unwrap_or_default();
            let message = String::from_utf8_lossy(body).trim().to_owned();
            Error::Unauthorized { message }
        }
        error => Error::Connect(Box::new(error)),
    }
}

/// `url` asking for batched frames (docs/protocol.md, section 1): the
/// server then writes messages that are ready together in one frame, which
/// costs both ends less per message. Left alone if it already says.
fn with_batched_frames(mut url: String) -> String {
    let query = url.split_once('?').map(|(_, query)| query);
    let says = query
        .is_some_and(|query| query.split('&').any(|pair| pair.split('=').next() == Some("batch")));
    if !says {
        url.push(if query.is_some() { '&' } else { '?' });
        url.push_str("batch=1");
    }
    url
}

type ConnectAttempt = Pin<Box<dyn Future<Output = Result<(Socket, Welcome), Error>> + Send>>;

enum Link {
    Up(Box<Session>),
    Connecting(ConnectAttempt),
    /// Waiting for the backoff delay before the next attempt.
    Waiting(Instant),
}

struct Session {
    socket: Socket,
    /// When it started.
    since: Instant,
    /// Anything from the server (pongs included) proves it alive.
    last_heard: Instant,
    heartbeat: Interval,
}

enum Event {
    Command(Option<Command>),
    Frame(Option<Result<Frame, tokio_tungstenite::tungstenite::Error>>),
    Heartbeat,
    Connected(Box<Result<(Socket, Welcome), Error>>),
    Reconnect,
}

pub(crate) struct Driver {
    endpoint: Arc<Endpoint>,
    config: Arc<ClientConfig>,
    /// What handles see of the connection ([`Client::state`](crate::Client::state)).
    state: watch::Sender<ConnectionState>,
    client_id: String,
    tx_seq: u64,
    counters: Arc<Counters>,
    commands: mpsc::Receiver<Command>,
    /// Lets RPC handler tasks queue their answers without keeping the task
    /// alive after every handle is gone.
    commands_weak: mpsc::WeakSender<Command>,
    link: Link,
    reconnect_backoff: Backoff,
    /// Paces reconnects after sessions whose token expired right away.
    expiry_backoff: Backoff,
    session: Option<String>,
    /// Counts sessions, so answers meant for an earlier one are dropped.
    epoch: u64,
    outbox: Vec<Frame>,
    docs: HashMap<DocId, DocState>,
    topics: HashMap<String, TopicState>,
    procedures: HashMap<String, Procedure>,
    /// Methods whose `register` went out in this session and awaits its
    /// answer, in order: the server answers in order, and its
    /// `already_registered` error does not name the method.
    registers_in_flight: VecDeque<String>,
    register_waiters: HashMap<String, Vec<oneshot::Sender<Result<(), Error>>>>,
    handler_permits: Arc<Semaphore>,
    calls: HashMap<u64, oneshot::Sender<Result<Value, CallError>>>,
    /// Publishes waiting for `published`, with their topic.
    acks: HashMap<u64, (String, oneshot::Sender<Result<(), Error>>)>,
    next_ack: u64,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        endpoint: Arc<Endpoint>,
        state: watch::Sender<ConnectionState>,
        client_id: String,
        counters: Arc<Counters>,
        commands: mpsc::Receiver<Command>,
        commands_weak: mpsc::WeakSender<Command>,
        socket: Socket,
        welcome: Welcome,
    ) -> Self {
        let config = endpoint.config.clone();
        let reconnect_backoff =
            Backoff::new(config.reconnect_backoff_initial, config.reconnect_backoff_max);
        let mut driver = Self {
            endpoint,
            config,
            state,
            client_id,
            tx_seq: 0,
            counters,
            commands,
            commands_weak,
            link: Link::Waiting(Instant::now()),
            expiry_backoff: reconnect_backoff.clone(),
            reconnect_backoff,
            session: None,
            epoch: 0,
            outbox: Vec::new(),
            docs: HashMap::new(),
            topics: HashMap::new(),
            procedures: HashMap::new(),
            registers_in_flight: VecDeque::new(),
            register_waiters: HashMap::new(),
            handler_permits: Arc::new(Semaphore::new(RPC_HANDLERS_IN_FLIGHT_MAX)),
            calls: HashMap::new(),
            acks: HashMap::new(),
            next_ack: 0,
        };
        driver.on_connected(socket, welcome);
        driver
    }

    pub(crate) async fn run(mut self) {
        loop {
            let event = match &mut self.link {
                Link::Up(session) => tokio::select! {
                    command = self.commands.recv() => Event::Command(command),
                    frame = session.socket.next() => Event::Frame(frame),
                    _ = session.heartbeat.tick() => Event::Heartbeat,
                },
                Link::Connecting(attempt) => tokio::select! {
                    command = self.commands.recv() => Event::Command(command),
                    result = attempt => Event::Connected(Box::new(result)),
                },
                Link::Waiting(at) => {
                    let at = *at;
                    tokio::select! {
                        command = self.commands.recv() => Event::Command(command),
                        () = tokio::time::sleep_until(at) => Event::Reconnect,
                    }
                }
            };
            match event {
                Event::Command(None) => return self.shut_down(None).await,
                Event::Command(Some(Command::Close { reply })) => {
                    return self.shut_down(Some(reply)).await
                }
                Event::Command(Some(command)) => {
                    self.on_command(command);
                    // Take what else is already queued, then flush once.
                    for _ in 1..COMMANDS_PER_FLUSH_MAX {
                        match self.commands.try_recv() {
                            Ok(Command::Close { reply }) => {
                                self.flush().await;
                                return self.shut_down(Some(reply)).await;
                            }
                            Ok(command) => self.on_command(command),
                            Err(_) => break,
                        }
                    }
                }
                Event::Frame(frame) => self.on_frame(frame),
                Event::Heartbeat => self.on_heartbeat(),
                Event::Connected(result) => match *result {
                    Ok((socket, welcome)) => self.on_connected(socket, welcome),
                    Err(error) => {
                        warn!(%error, "reconnect attempt failed");
                        self.state.send_replace(match error {
                            Error::Unauthorized { message } => {
                                ConnectionState::Unauthorized { message }
                            }
                            error => ConnectionState::Disconnected { reason: error.to_string() },
                        });
                        let delay = self.reconnect_backoff.next_delay();
                        self.link = Link::Waiting(Instant::now() + delay);
                    }
                },
                Event::Reconnect => {
                    let attempt = connect(self.endpoint.clone());
                    self.link = Link::Connecting(Box::pin(attempt));
                }
            }
            self.flush().await;
        }
    }

    async fn shut_down(mut self, reply: Option<oneshot::Sender<()>>) {
        if let Link::Up(session) = &mut self.link {
            let close = session.socket.close(None);
            // A server that does not take the close frame is not waited for.
            let _ = tokio::time::timeout(self.config.connect_timeout, close).await;
        }
        self.state.send_replace(ConnectionState::Closed);
        // Dropping the state drops every waiter's sender: they report Closed.
        drop(self.docs);
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
    }

    /// Queues a small control message for the current session.
    fn send(&mut self, message: &ClientMessage) {
        if let Err(refusal) = self.try_send(message) {
            warn!(%refusal, "cannot send a client message");
        }
    }

    /// Queues a message that carries user data, refusing it when it is over
    /// the server's size limit: the server would refuse it without naming
    /// it, and whoever waits for its answer would wait forever.
    fn try_send(&mut self, message: &ClientMessage) -> Result<(), Error> {
        let text = encode(message, self.config.outgoing_message_bytes_max)
            .map_err(|(code, message)| Error::Refused { code, message })?;
        if matches!(self.link, Link::Up(_)) {
            self.outbox.push(Frame::text(text));
        }
        Ok(())
    }

    async fn flush(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let Link::Up(session) = &mut self.link else {
            self.outbox.clear();
            return;
        };
        let frames = self.outbox.drain(..);
        let write = async {
            for frame in frames {
                session.socket.feed(frame).await?;
            }
            session.socket.flush().await
        };
        // A server that stops reading is as dead as a silent one.
        match tokio::time::timeout(self.config.silence_timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => self.disconnect(&format!("write failed: {error}")),
            Err(_) => self.disconnect("write timed out"),
        }
    }

    fn on_connected(&mut self, socket: Socket, welcome: Welcome) {
        let Welcome { session: session_id, identity } = welcome;
        let now = Instant::now();
        let mut heartbeat =
            tokio::time::interval_at(now + self.config.ping_interval, self.config.ping_interval);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.link = Link::Up(Box::new(Session { socket, since: now, last_heard: now, heartbeat }));
        debug!(session = %session_id, "connected");
        self.state
            .send_replace(ConnectionState::Connected { session: session_id.clone(), identity });
        self.session = Some(session_id);
        self.epoch += 1;
        self.reconnect_backoff.reset();
        Counters::bump(&self.counters.connects);
        self.reopen_documents();
        self.renew_channels();
    }

    fn disconnect(&mut self, reason: &str) {
        let delay = self.reconnect_backoff.next_delay();
        let state = ConnectionState::Disconnected { reason: reason.to_owned() };
        self.disconnect_for(reason, state, delay);
    }

    /// Drops the session and reconnects after `delay`, showing `state`
    /// meanwhile.
    fn disconnect_for(&mut self, reason: &str, state: ConnectionState, delay: Duration) {
        if !matches!(self.link, Link::Up(_)) {
            return;
        }
        warn!(reason, "connection lost; reconnecting");
        Counters::bump(&self.counters.disconnects);
        self.state.send_replace(state);
        // Dropping the session drops the socket, which closes the TCP stream.
        self.link = Link::Waiting(Instant::now() + delay);
        self.outbox.clear();
        self.session = None;
        for state in self.docs.values_mut() {
            state.status = DocStatus::Disconnected;
        }
        self.end_session_channels();
    }

    /// Drops the session and reconnects at once, calling the token provider
    /// again. A session that lasted less than `reconnect_backoff_max` (the
    /// provider handing out tokens about to expire) waits out a backoff of
    /// its own instead, so such a provider cannot make the client spin.
    fn reconnect_now(&mut self, reason: &str) {
        let Link::Up(session) = &self.link else {
            return;
        };
        let delay = if session.since.elapsed() < self.config.reconnect_backoff_max {
            self.expiry_backoff.next_delay()
        } else {
            self.expiry_backoff.reset();
            Duration::ZERO
        };
        let state = ConnectionState::Disconnected { reason: reason.to_owned() };
        self.disconnect_for(reason, state, delay);
    }

    fn on_heartbeat(&mut self) {
        let Link::Up(session) = &mut self.link else {
            return;
        };
        if session.last_heard.elapsed() > self.config.silence_timeout {
            self.disconnect("the server went silent");
        } else {
            self.outbox.push(Frame::Ping(Default::default()));
            self.resend_dropped();
        }
    }

    /// Sends again what may have been dropped by the server's rate limit
    /// and still awaits an answer: opens, subscriptions, registrations. A
    /// duplicate of one that was merely slow is harmless: the server answers
    /// it again.
    fn resend_dropped(&mut self) {
        self.resend_dropped_opens();
        self.resend_unanswered_channels();
    }

    fn on_frame(&mut self, frame: Option<Result<Frame, tokio_tungstenite::tungstenite::Error>>) {
        let Link::Up(session) = &mut self.link else {
            return;
        };
        match frame {
            Some(Ok(Frame::Text(text))) => {
                session.last_heard = Instant::now();
                match ServerFrame::decode(text.as_str()) {
                    Ok(frame) => {
                        for message in frame {
                            // A message that ends the session leaves the
                            // rest of its frame unread.
                            if !matches!(self.link, Link::Up(_)) {
                                break;
                            }
                            self.on_message(message);
                        }
                    }
                    Err(error) => warn!(%error, "undecodable server frame"),
                }
            }
            Some(Ok(Frame::Close(frame))) => {
                let reason = format!("the server closed the session: {frame:?}");
                match frame.map(|frame| u16::from(frame.code)) {
                    // A fresh token, at once: resume loses nothing.
                    Some(close_code::TOKEN_EXPIRED) => self.reconnect_now(&reason),
                    Some(close_code::UNAUTHORIZED) => {
                        let delay = self.reconnect_backoff.next_delay();
                        // Keep the `unauthorized` error's message, if it came.
                        let state = match &*self.state.borrow() {
                            ConnectionState::Unauthorized { message } => message.clone(),
                            _ => reason.clone(),
                        };
                        let state = ConnectionState::Unauthorized { message: state };
                        self.disconnect_for(&reason, state, delay);
                    }
                    _ => self.disconnect(&reason),
                }
            }
            // Pings are answered by tungstenite itself.
            Some(Ok(_)) => session.last_heard = Instant::now(),
            Some(Err(error)) => self.disconnect(&format!("read failed: {error}")),
            None => self.disconnect("the server closed the connection"),
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Open { doc, reply } => self.open(doc, reply),
            Command::Run { doc, job, resolve } => self.run_job(doc, job, resolve),
            Command::Read { doc, pointer, reply } => {
                if let Some(replica) = self.docs.get(&doc).and_then(|s| s.replica.as_ref()) {
                    let value = patch::resolve(replica.view(), &pointer).cloned();
                    let _ = reply.send((value, replica.version()));
                }
            }
            Command::SetPresence { doc, state } => self.set_presence(doc, state),
            Command::Subscribe { pattern, reply } => self.subscribe(pattern, reply),
            Command::Unsubscribe { pattern } => self.unsubscribe(pattern),
            Command::Publish { topic, data, echo, delivery, reply } => {
                self.publish(topic, data, echo, delivery, reply)
            }
            Command::Call { id, method, params, reply } => self.call(id, method, params, reply),
            Command::CancelCall { id } => {
                self.calls.remove(&id);
            }
            Command::Notify { method, params, reply } => self.notify(method, params, reply),
            Command::Register { method, handler, reply } => self.register(method, handler, reply),
            Command::Unregister { method } => {
                if self.procedures.remove(&method).is_some() {
                    self.send(&ClientMessage::Unregister { method });
                }
            }
            Command::RpcReply { epoch, message } => {
                if epoch == self.epoch {
                    self.send(&ClientMessage::Rpc { message });
                }
            }
            Command::Session { reply } => {
                let _ = reply.send(self.session.clone());
            }
            Command::Close { reply } => {
                // Handled by the loop, which owns the shutdown; unreachable
                // here, but answering is harmless.
                let _ = reply.send(());
            }
        }
    }

    fn is_up(&self) -> bool {
        matches!(self.link, Link::Up(_))
    }

    fn on_message(&mut self, message: ServerMessage) {
        match message {
            ServerMessage::Welcome { .. } => debug!("ignoring a second welcome"),
            ServerMessage::Snapshot { doc, version, value } => {
                self.on_snapshot(doc, version, value)
            }
            ServerMessage::Opened { doc, version } => self.on_opened(doc, version),
            ServerMessage::Change(change) => self.on_change(change),
            ServerMessage::Committed { doc, tx_id, version } => {
                self.on_committed(doc, tx_id, version)
            }
            ServerMessage::Rejected { doc, tx_id, rejection } => {
                self.on_rejected(doc, tx_id, rejection)
            }
            ServerMessage::Message { topic, data } => self.on_topic_message(topic, data),
            ServerMessage::Subscribed { topic } => self.on_subscribed(&topic),
            ServerMessage::Published { ack } => {
                if let Some((_, reply)) = self.acks.remove(&ack) {
                    let _ = reply.send(Ok(()));
                }
            }
            ServerMessage::Presence { doc, session, event, state } => {
                if let Some(doc_state) = self.docs.get(&doc) {
                    let _ =
                        doc_state.presence_events.send(PresenceUpdate { session, event, state });
                }
            }
            ServerMessage::Rpc { message } => self.on_rpc(message),
            ServerMessage::Registered { method } => self.on_registered(&method),
            ServerMessage::Error { code, message, doc, tx_id, topic, method } => {
                self.on_error(code, message, doc, tx_id, topic, method)
            }
        }
    }

    fn on_error(
        &mut self,
        code: ErrorCode,
        message: String,
        doc: Option<DocId>,
        tx_id: Option<TxId>,
        topic: Option<String>,
        method: Option<String>,
    ) {
        Counters::bump(&self.counters.server_errors);
        if let Some(topic) = topic {
            return self.on_topic_refused(&topic, code, message);
        }
        if let Some(method) = method {
            return self.on_method_refused(&method, code, message);
        }
        match (doc, tx_id) {
            (Some(doc), Some(tx_id)) => self.on_commit_refused(&doc, &tx_id, code, message),
            (Some(doc), None) => self.on_doc_error(&doc, code, message),
            (None, _) if code == ErrorCode::AlreadyRegistered => self.on_register_refused(message),
            // The session's token expired: the server closes it (4004) after
            // a grace period; reconnecting now with a fresh token loses
            // nothing (every document resumes) and skips the wait.
            (None, _) if code == ErrorCode::TokenExpired => {
                self.reconnect_now(&format!("the token expired: {message}"))
            }
            // A close with 4003 follows.
            (None, _) if code == ErrorCode::Unauthorized => {
                warn!(message, "the server refused the credentials");
                self.state.send_replace(ConnectionState::Unauthorized { message });
            }
            (None, _) => warn!(?code, message, "the server reported an error"),
        }
    }
}

/// The frame text of `message`, or the code the server would refuse it with.
fn encode(message: &ClientMessage, bytes_max: usize) -> Result<String, (ErrorCode, String)> {
    let text = serde_json::to_string(message)
        .map_err(|error| (ErrorCode::BadMessage, error.to_string()))?;
    if text.len() > bytes_max {
        let message = format!("message is {} bytes, over the limit of {bytes_max}", text.len());
        return Err((ErrorCode::MessageTooLarge, message));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::with_batched_frames;

    #[test]
    fn the_session_url_asks_for_batched_frames_unless_it_already_says() {
        let batched = |url: &str| with_batched_frames(url.to_owned());
        assert_eq!(batched("ws://h:1/ws"), "ws://h:1/ws?batch=1");
        assert_eq!(batched("ws://h:1/ws?token=a"), "ws://h:1/ws?token=a&batch=1");
        assert_eq!(batched("ws://h:1/ws?batch=0"), "ws://h:1/ws?batch=0");
        assert_eq!(batched("ws://h:1/ws?x=1&batch=1"), "ws://h:1/ws?x=1&batch=1");
        assert_eq!(batched("ws://h:1/ws?batches=2"), "ws://h:1/ws?batches=2&batch=1");
    }
}
