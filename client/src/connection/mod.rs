//! The connection task: a thin tokio shell around the engine's
//! `ClientSession`, the client side of protocol v1 as a state machine.
//!
//! The machine decides everything that has state and timers: resume and
//! resubmission, the `outcome_unknown` rule, contention pacing, the
//! heartbeat and dead-server detection, reconnect backoff, re-establishing
//! subscriptions and registrations. This task only does the IO: it owns the
//! socket and the machine, feeds the machine what arrives (frames, the
//! handles' commands, the time when its timer fires), performs what the
//! machine asks of the network (`Transmit`), and hands the machine's events
//! to the handles through oneshot and broadcast channels. Transaction
//! functions stay closures here: when the machine says `Run`, the task runs
//! one on the machine's replica and reports what it did.
//!
//! Nothing else touches a replica, so a transaction function always runs on
//! a consistent replica and no lock is held across an await.
//!
//! # Layout
//! - this file: the commands, the loop, the link (connect, transmits);
//! - `documents`: documents' channels and waiters, transaction jobs;
//! - `channels`: subscriptions, publishes, calls and procedures.

mod channels;
mod documents;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use concord_engine::protocol::{
    close_code, ErrorCode, ServerFrame, ServerMessage, PROTOCOL_VERSION,
};
use concord_engine::replica::Replica;
use concord_engine::session::{
    ClientSession, ConnectFailure, Event as SessionEvent, LinkState, RunReport, SessionConfig,
    Transmit,
};
use concord_engine::time::Time;
use concord_engine::{DocId, Pointer, TxId, Version};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{tungstenite, Connector, MaybeTlsStream, WebSocketStream};
use tracing::{debug, warn};

use self::channels::Channels;
use self::documents::Documents;
use crate::client::{ConnectionState, Identity, TokenProvider};
use crate::config::{ClientConfig, RPC_HANDLERS_IN_FLIGHT_MAX};
use crate::document::{DocumentEvent, PresenceUpdate};
use crate::error::{CallError, Error};
use crate::rpc::Handler;
use crate::stats::Counters;

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Most commands handled before the outbox is written, so a burst of
/// commands shares one flush without starving the socket.
const COMMANDS_PER_FLUSH_MAX: usize = 64;

/// One run of a transaction function, type-erased: it runs on the replica
/// with the tx id it is given, keeps its typed result where the waiting
/// transaction finds it, and reports what the run did.
pub(crate) type Job = Box<dyn FnMut(&mut Replica, TxId) -> RunReport + Send>;

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
}

pub(crate) enum Command {
    Open {
        doc: DocId,
        reply: oneshot::Sender<Result<DocChannels, Error>>,
    },
    Transact {
        doc: DocId,
        attempts_max: u32,
        job: Job,
        settle: oneshot::Sender<concord_engine::session::Settlement>,
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
    pub(crate) sub: Option<String>,
    pub(crate) name: Option<String>,
}

impl Welcome {
    fn message(self) -> ServerMessage {
        let Welcome { session, sub, name } = self;
        ServerMessage::Welcome { protocol: PROTOCOL_VERSION, session, sub, name }
    }
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
                    Ok((socket, Welcome { session, sub, name }))
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

/// The machine's configuration from the client's.
fn session_config(config: &ClientConfig) -> SessionConfig {
    SessionConfig {
        ping_interval: config.ping_interval,
        silence_timeout: config.silence_timeout,
        reconnect_backoff_initial: config.reconnect_backoff_initial,
        reconnect_backoff_max: config.reconnect_backoff_max,
        transact_backoff_initial: config.transact_backoff_initial,
        transact_backoff_max: config.transact_backoff_max,
        outgoing_message_bytes_max: config.outgoing_message_bytes_max,
        calls_in_flight_max: crate::config::CALLS_IN_FLIGHT_MAX,
        limits: config.limits,
    }
}

type ConnectAttempt = Pin<Box<dyn Future<Output = Result<(Socket, Welcome), Error>> + Send>>;

enum Link {
    Up(Box<Socket>),
    Connecting(ConnectAttempt),
    /// No socket; the machine's timer says when to try again.
    Down,
}

enum Input {
    Command(Option<Command>),
    Frame(Option<Result<Frame, tungstenite::Error>>),
    Timer,
    Connected(Box<Result<(Socket, Welcome), Error>>),
}

pub(crate) struct Driver {
    endpoint: Arc<Endpoint>,
    config: Arc<ClientConfig>,
    session: ClientSession,
    /// The origin of the machine's time.
    origin: Instant,
    /// What handles see of the connection ([`Client::state`](crate::Client::state)).
    state: watch::Sender<ConnectionState>,
    counters: Arc<Counters>,
    commands: mpsc::Receiver<Command>,
    /// Lets RPC handler tasks queue their answers without keeping the task
    /// alive after every handle is gone.
    commands_weak: mpsc::WeakSender<Command>,
    link: Link,
    outbox: Vec<Frame>,
    documents: Documents,
    channels: Channels,
    handler_permits: Arc<Semaphore>,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        endpoint: Arc<Endpoint>,
        state: watch::Sender<ConnectionState>,
        client_id: &str,
        seed: u32,
        counters: Arc<Counters>,
        commands: mpsc::Receiver<Command>,
        commands_weak: mpsc::WeakSender<Command>,
        socket: Socket,
        welcome: Welcome,
    ) -> Self {
        let config = endpoint.config.clone();
        let session = ClientSession::new(session_config(&config), client_id, seed);
        let mut driver = Self {
            endpoint,
            config,
            session,
            origin: Instant::now(),
            state,
            counters,
            commands,
            commands_weak,
            link: Link::Up(Box::new(socket)),
            outbox: Vec::new(),
            documents: Documents::default(),
            channels: Channels::default(),
            handler_permits: Arc::new(Semaphore::new(RPC_HANDLERS_IN_FLIGHT_MAX)),
        };
        let now = driver.now();
        driver.session.handle_connected(now);
        driver.session.handle_message(welcome.message(), now);
        driver.drain();
        driver
    }

    /// The machine's time: microseconds since the task started.
    fn now(&self) -> Time {
        Time::from_micros(u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn instant(&self, time: Time) -> Instant {
        self.origin + Duration::from_micros(time.as_micros())
    }

    pub(crate) async fn run(mut self) {
        loop {
            let deadline = self.session.poll_timeout().map(|time| self.instant(time));
            let timer = async move {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            let input = match &mut self.link {
                Link::Up(socket) => tokio::select! {
                    command = self.commands.recv() => Input::Command(command),
                    frame = socket.next() => Input::Frame(frame),
                    () = timer => Input::Timer,
                },
                Link::Connecting(attempt) => tokio::select! {
                    command = self.commands.recv() => Input::Command(command),
                    result = attempt => Input::Connected(Box::new(result)),
                    () = timer => Input::Timer,
                },
                Link::Down => tokio::select! {
                    command = self.commands.recv() => Input::Command(command),
                    () = timer => Input::Timer,
                },
            };
            match input {
                Input::Command(None) => return self.shut_down(None).await,
                Input::Command(Some(Command::Close { reply })) => {
                    return self.shut_down(Some(reply)).await
                }
                Input::Command(Some(command)) => {
                    self.on_command(command);
                    // Take what else is already queued, then flush once.
                    for _ in 1..COMMANDS_PER_FLUSH_MAX {
                        match self.commands.try_recv() {
                            Ok(Command::Close { reply }) => {
                                self.drain();
                                self.flush().await;
                                return self.shut_down(Some(reply)).await;
                            }
                            Ok(command) => self.on_command(command),
                            Err(_) => break,
                        }
                    }
                }
                Input::Frame(frame) => self.on_frame(frame),
                Input::Timer => {
                    let now = self.now();
                    self.session.handle_timeout(now);
                }
                Input::Connected(result) => {
                    let now = self.now();
                    match *result {
                        Ok((socket, welcome)) => {
                            self.link = Link::Up(Box::new(socket));
                            self.session.handle_connected(now);
                            self.session.handle_message(welcome.message(), now);
                        }
                        Err(error) => {
                            warn!(%error, "reconnect attempt failed");
                            self.link = Link::Down;
                            let failure = match error {
                                Error::Unauthorized { message } => {
                                    ConnectFailure::Unauthorized { message }
                                }
                                error => ConnectFailure::Failed { reason: error.to_string() },
                            };
                            self.session.handle_connect_failed(failure, now);
                        }
                    }
                }
            }
            self.drain();
            self.flush().await;
        }
    }

    /// Performs what the machine asked of the network and hands its events
    /// to the handles, until it has nothing more to say (running a
    /// transaction can make it say more).
    fn drain(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(transmit) = self.session.poll_send() {
                progressed = true;
                self.on_transmit(transmit);
            }
            while let Some(event) = self.session.poll_event() {
                progressed = true;
                self.on_event(event);
            }
            if !progressed {
                break;
            }
        }
        self.counters.publish(&self.session.stats());
    }

    fn on_transmit(&mut self, transmit: Transmit) {
        match transmit {
            Transmit::Text(text) => {
                if matches!(self.link, Link::Up(_)) {
                    self.outbox.push(Frame::text(text));
                }
            }
            Transmit::Ping => {
                if matches!(self.link, Link::Up(_)) {
                    self.outbox.push(Frame::Ping(Default::default()));
                }
            }
            Transmit::Connect => {
                let attempt = connect(self.endpoint.clone());
                self.link = Link::Connecting(Box::pin(attempt));
            }
            Transmit::Disconnect => {
                // Dropping the socket closes the TCP stream.
                self.link = Link::Down;
                self.outbox.clear();
            }
        }
    }

    fn on_event(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Link(state) => self.on_link(state),
            SessionEvent::Run { transaction } => {
                let now = self.now();
                self.documents.run(&mut self.session, transaction, now);
            }
            SessionEvent::Settled { transaction, settlement } => {
                self.documents.settled(transaction, settlement)
            }
            SessionEvent::Opened { doc } => self.documents.opened(&doc),
            SessionEvent::OpenRefused { doc, code, message } => {
                self.documents.open_refused(&doc, code, message)
            }
            SessionEvent::Changed { doc, change } => {
                self.documents.emit(&doc, DocumentEvent::Changed(change))
            }
            SessionEvent::Reset { doc, version } => {
                self.documents.emit(&doc, DocumentEvent::Reset { version })
            }
            SessionEvent::Reloading { doc, reason } => {
                warn!(%doc, reason, "reloading the replica");
            }
            SessionEvent::Presence { doc, session, event, state } => {
                self.documents.presence(&doc, PresenceUpdate { session, event, state })
            }
            SessionEvent::ServerError { code, message } => {
                warn!(?code, message, "the server reported an error");
            }
            event => {
                let epoch = self.session.epoch();
                let commands = self.commands_weak.clone();
                let permits = self.handler_permits.clone();
                if let Some(unsubscribe) =
                    self.channels.on_event(event, epoch, commands, permits, &mut self.session)
                {
                    self.session.unsubscribe(&unsubscribe);
                }
            }
        }
    }

    fn on_link(&mut self, state: LinkState) {
        let state = match state {
            LinkState::Connected { session, sub, name } => {
                debug!(%session, "connected");
                let identity = sub.map(|sub| Identity { sub, name });
                ConnectionState::Connected { session, identity }
            }
            LinkState::Disconnected { reason } => {
                warn!(reason, "connection lost; reconnecting");
                ConnectionState::Disconnected { reason }
            }
            LinkState::Unauthorized { message } => {
                warn!(message, "the server refused the credentials");
                ConnectionState::Unauthorized { message }
            }
        };
        self.state.send_replace(state);
    }

    async fn shut_down(mut self, reply: Option<oneshot::Sender<()>>) {
        if let Link::Up(socket) = &mut self.link {
            let close = WebSocketStream::close(socket.as_mut(), None);
            // A server that does not take the close frame is not waited for.
            let _ = tokio::time::timeout(self.config.connect_timeout, close).await;
        }
        self.state.send_replace(ConnectionState::Closed);
        // Dropping the waiters' senders tells them: they report Closed.
        drop(self.documents);
        drop(self.channels);
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
    }

    async fn flush(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let Link::Up(socket) = &mut self.link else {
            self.outbox.clear();
            return;
        };
        let frames = self.outbox.drain(..);
        let write = async {
            for frame in frames {
                socket.feed(frame).await?;
            }
            socket.flush().await
        };
        // A server that stops reading is as dead as a silent one.
        let failure = match tokio::time::timeout(self.config.silence_timeout, write).await {
            Ok(Ok(())) => return,
            Ok(Err(error)) => format!("write failed: {error}"),
            Err(_) => "write timed out".to_owned(),
        };
        debug!(failure, "dropping the connection");
        self.link = Link::Down;
        let now = self.now();
        self.session.handle_disconnected(None, now);
        self.drain();
    }

    fn on_frame(&mut self, frame: Option<Result<Frame, tungstenite::Error>>) {
        let now = self.now();
        match frame {
            Some(Ok(Frame::Text(text))) => match ServerFrame::decode(text.as_str()) {
                Ok(frame) => {
                    for message in frame {
                        self.session.handle_message(message, now);
                    }
                }
                Err(error) => {
                    self.session.handle_heard(now);
                    warn!(%error, "undecodable server frame");
                }
            },
            Some(Ok(Frame::Close(frame))) => {
                self.link = Link::Down;
                let close = frame.map(|frame| (u16::from(frame.code), frame.reason.to_string()));
                self.session.handle_disconnected(close, now);
            }
            // Pings are answered by tungstenite itself.
            Some(Ok(_)) => self.session.handle_heard(now),
            Some(Err(error)) => {
                debug!(%error, "read failed");
                self.link = Link::Down;
                self.session.handle_disconnected(None, now);
            }
            None => {
                self.link = Link::Down;
                self.session.handle_disconnected(None, now);
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Open { doc, reply } => self.documents.open(&mut self.session, doc, reply),
            Command::Transact { doc, attempts_max, job, settle } => {
                self.documents.transact(&mut self.session, &doc, attempts_max, job, settle, now)
            }
            Command::Read { doc, pointer, reply } => {
                if let Some(replica) = self.session.replica(&doc) {
                    let value = concord_engine::patch::resolve(replica.view(), &pointer).cloned();
                    let _ = reply.send((value, replica.version()));
                }
            }
            Command::SetPresence { doc, state } => self.session.set_presence(&doc, state),
            Command::Subscribe { pattern, reply } => {
                self.channels.subscribe(&mut self.session, pattern, reply)
            }
            Command::Unsubscribe { pattern } => {
                if self.channels.unsubscribe(&pattern) {
                    self.session.unsubscribe(&pattern);
                }
            }
            Command::Publish { topic, data, echo, delivery, reply } => {
                self.channels.publish(&mut self.session, &topic, data, echo, delivery, reply)
            }
            Command::Call { id, method, params, reply } => {
                self.channels.call(&mut self.session, id, &method, params, reply)
            }
            Command::CancelCall { id } => self.channels.cancel_call(&mut self.session, id),
            Command::Notify { method, params, reply } => {
                let result = self.session.notify(&method, params).map_err(channels::refusal_error);
                let _ = reply.send(result);
            }
            Command::Register { method, handler, reply } => {
                self.channels.register(&mut self.session, method, handler, reply)
            }
            Command::Unregister { method } => {
                self.channels.unregister(&method);
                self.session.unregister(&method);
            }
            Command::RpcReply { epoch, message } => self.session.reply(epoch, message),
            Command::Session { reply } => {
                let _ = reply.send(self.session.session_id().map(str::to_owned));
            }
            Command::Close { reply } => {
                // Handled by the loop, which owns the shutdown; unreachable
                // here, but answering is harmless.
                let _ = reply.send(());
            }
        }
    }
}

/// The handles' waiters keyed by what the machine names them with.
type Waiters<K, T> = HashMap<K, Vec<oneshot::Sender<T>>>;

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
