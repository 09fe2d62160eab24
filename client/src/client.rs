//! The `Client` handle: connects, spawns the connection task, and offers the
//! session's channels — documents, RPC, pub/sub — as async methods that send
//! commands to that task.
//!
//! A client picks a random id once; its transaction ids are that id plus a
//! sequence number, and both survive reconnects, which is what lets the
//! server recognise a resubmitted transaction.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use concord_engine::protocol::ErrorCode;
use concord_engine::DocId;
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{ClientConfig, COMMANDS_QUEUED_MAX};
use crate::connection::{self, Command, Delivery, Driver, Endpoint};
use crate::document::Document;
use crate::error::{CallError, Error};
use crate::rpc::{HandlerFuture, RpcError};
use crate::stats::{Counters, Stats};
use crate::tls::{self, Certificate};
use crate::topic::{self, Subscription};

/// What a token provider returns: a fresh token, or why there is none.
pub(crate) type TokenFuture =
    Pin<Box<dyn Future<Output = Result<String, Box<dyn std::error::Error + Send + Sync>>> + Send>>;
/// Called before every connection attempt.
pub(crate) type TokenProvider = Arc<dyn Fn() -> TokenFuture + Send + Sync>;

/// Who the server says the session is (`welcome`'s `sub` and `name`), on a
/// server that authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's subject.
    pub sub: String,
    /// A display name, if the token carries one.
    pub name: Option<String>,
}

/// The connection as the client sees it; see [`Client::state`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// A live session.
    Connected {
        session: String,
        /// `None` on a server without authentication.
        identity: Option<Identity>,
    },
    /// No session; the client is reconnecting by itself.
    Disconnected { reason: String },
    /// The server refused the credentials (HTTP 401, or close 4003). The
    /// client keeps retrying with backoff, asking the token provider for a
    /// token before each attempt.
    Unauthorized { message: String },
    /// The client was closed.
    Closed,
}

/// Configures a [`Client`]: `Client::builder(url)`, then `.connect()`.
///
/// ```no_run
/// # async fn demo(ca_pem: &[u8]) -> Result<(), concord_client::Error> {
/// use concord_client::{Certificate, Client};
/// let client = Client::builder("wss://concord.example.com/ws")
///     .add_root_certificate(Certificate::from_pem(ca_pem)?)
///     .token_provider(|| async { Ok::<_, std::io::Error>("a fresh token".to_owned()) })
///     .connect()
///     .await?;
/// # drop(client); Ok(()) }
/// ```
#[must_use]
pub struct ClientBuilder {
    url: String,
    config: ClientConfig,
    roots: Vec<Certificate>,
    platform_roots: bool,
    token: Option<TokenProvider>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("config", &self.config)
            .field("roots", &self.roots.len())
            .field("platform_roots", &self.platform_roots)
            .field("token_provider", &self.token.is_some())
            .finish()
    }
}

impl ClientBuilder {
    /// Replaces the whole configuration (timeouts, backoff, limits).
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Trusts `certificate` as a root for `wss://`, besides the platform's
    /// roots: a private CA, or a self-signed server certificate.
    pub fn add_root_certificate(mut self, certificate: Certificate) -> Self {
        self.roots.push(certificate);
        self
    }

    /// Whether to trust the platform's root certificates (the operating
    /// system's store, read with rustls-native-certs) for `wss://`; on by
    /// default. Off, only the added roots are trusted.
    pub fn platform_roots(mut self, trust: bool) -> Self {
        self.platform_roots = trust;
        self
    }

    /// Asks `provider` for a token before every connection attempt (the
    /// first and each reconnect) and sends it as `Authorization: Bearer
    /// <token>` on the WebSocket upgrade. A provider error fails that
    /// attempt (the first: [`Error::Token`]; later ones are retried with
    /// backoff). When the server says the token expired (close 4004) the
    /// client reconnects at once with a fresh one; when it refuses the
    /// credentials (401, close 4003) it retries with backoff and shows
    /// [`ConnectionState::Unauthorized`] meanwhile.
    pub fn token_provider<F, Fut, E>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let provider = Arc::new(provider);
        self.token = Some(Arc::new(move || -> TokenFuture {
            let token = provider();
            Box::pin(async move { token.await.map_err(Into::into) })
        }));
        self
    }

    /// Connects. Fails if the first connection cannot be made (an
    /// unreachable server, a refused token, an untrusted certificate);
    /// later drops are repaired by reconnecting.
    pub async fn connect(self) -> Result<Client, Error> {
        let tls = if self.url.starts_with("wss://") || self.url.starts_with("WSS://") {
            Some(tls::client_config(&self.roots, self.platform_roots)?)
        } else {
            None
        };
        let config = Arc::new(self.config);
        let endpoint = Arc::new(Endpoint::new(self.url, config.clone(), tls, self.token));
        let (socket, welcome) = connection::connect(endpoint.clone()).await?;
        let state = watch::channel(ConnectionState::Disconnected { reason: String::new() }).0;
        let client_id: String = rand::thread_rng()
            .sample_iter(Alphanumeric)
            .take(CLIENT_ID_LEN)
            .map(char::from)
            .collect();
        let (commands, receiver) = mpsc::channel(COMMANDS_QUEUED_MAX);
        let counters = Arc::new(Counters::default());
        let driver = Driver::new(
            endpoint,
            state.clone(),
            &client_id,
            rand::random(),
            counters.clone(),
            receiver,
            commands.downgrade(),
            socket,
            welcome,
        );
        tokio::spawn(driver.run());
        Ok(Client {
            inner: Arc::new(Inner {
                commands,
                counters,
                config,
                client_id,
                next_call_id: AtomicU64::new(0),
                state: state.subscribe(),
            }),
        })
    }
}

/// Length of the random client id, in characters of `[A-Za-z0-9]`: 62^12 is
/// about 3·10^21, so two clients sharing an id is not a practical concern.
const CLIENT_ID_LEN: usize = 12;

/// A connection to a Concord server. Cheap to clone; all clones share one
/// WebSocket session, re-established by itself when it drops. The session
/// ends when the last clone (and every `Document` from it) is dropped, or at
/// [`Client::close`].
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    commands: mpsc::Sender<Command>,
    counters: Arc<Counters>,
    config: Arc<ClientConfig>,
    client_id: String,
    next_call_id: AtomicU64,
    state: watch::Receiver<ConnectionState>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("client_id", &self.inner.client_id).finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `url` (e.g. `ws://127.0.0.1:7700/ws`) with the default
    /// configuration. Fails if the first connection cannot be made; later
    /// drops are repaired by reconnecting.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, ClientConfig::default()).await
    }

    /// Connects with an explicit configuration.
    pub async fn connect_with(url: &str, config: ClientConfig) -> Result<Self, Error> {
        Self::builder(url).config(config).connect().await
    }

    /// A builder, for `wss://` roots, a token provider and the
    /// configuration.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            config: ClientConfig::default(),
            roots: Vec::new(),
            platform_roots: true,
            token: None,
        }
    }

    /// The connection's state now.
    pub fn state(&self) -> ConnectionState {
        self.inner.state.borrow().clone()
    }

    /// A receiver of the connection's state, to watch it change
    /// (`changed().await`, then `borrow()`).
    pub fn state_changes(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.clone()
    }

    /// Who the current session is, as the server's `welcome` said; `None`
    /// while not connected, or on a server without authentication.
    pub fn identity(&self) -> Option<Identity> {
        match &*self.inner.state.borrow() {
            ConnectionState::Connected { identity, .. } => identity.clone(),
            _ => None,
        }
    }

    /// This client's random id, the prefix of its transaction ids.
    pub fn id(&self) -> &str {
        &self.inner.client_id
    }

    /// The current session id (as other clients see it in presence events);
    /// `None` while reconnecting.
    pub async fn session(&self) -> Result<Option<String>, Error> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Session { reply }).await?;
        answer.await.map_err(|_| Error::Closed)
    }

    /// What this client has done so far.
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    /// Opens `doc`: loads it and keeps its replica current until the client
    /// closes. Waits through reconnects; opening an open document again
    /// returns another handle to the same replica.
    pub async fn open(&self, doc: &str) -> Result<Document, Error> {
        let id = DocId::parse(doc)?;
        let (reply, answer) = oneshot::channel();
        self.command(Command::Open { doc: id.clone(), reply }).await?;
        let channels = answer.await.map_err(|_| Error::Closed)??;
        Ok(Document::new(self.clone(), id, channels))
    }

    /// Calls `method` (a server procedure, or one another client registered)
    /// and waits up to `ClientConfig::call_timeout` for the answer.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, CallError> {
        self.call_with_timeout(method, params, self.inner.config.call_timeout).await
    }

    /// Calls `method`, waiting up to `timeout` for the answer.
    pub async fn call_with_timeout(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let id = self.inner.next_call_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (reply, answer) = oneshot::channel();
        let command = Command::Call { id, method: method.to_owned(), params, reply };
        self.command(command).await.map_err(|_| CallError::Closed)?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(CallError::Closed),
            Err(_) => {
                // Forget the call so a late answer is dropped; a full queue
                // only delays that, so waiting for room is not worth it.
                let _ = self.inner.commands.try_send(Command::CancelCall { id });
                Err(CallError::Timeout(timeout))
            }
        }
    }

    /// Sends a JSON-RPC notification: no answer, no delivery guarantee.
    pub async fn notify(&self, method: &str, params: Value) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Notify { method: method.to_owned(), params, reply }).await?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Offers `method` to other clients, which call it through the server.
    /// Waits for the server's acknowledgement: calls made after this returns
    /// reach `handler`. It gets the request's params (`null` when absent)
    /// and runs in its own task, at most `RPC_HANDLERS_IN_FLIGHT_MAX` at
    /// once. The registration is renewed after every reconnect. Fails with
    /// `Refused` (`already_registered`) when another session provides
    /// `method`, or (`forbidden`) when the token's grants do not allow
    /// registering it.
    pub async fn register<F, Fut>(&self, method: &str, handler: F) -> Result<(), Error>
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, RpcError>> + Send + 'static,
    {
        topic::check_method(method).map_err(bad_name)?;
        let handler = Arc::new(move |params| -> HandlerFuture { Box::pin(handler(params)) });
        let (reply, answer) = oneshot::channel();
        self.command(Command::Register { method: method.to_owned(), handler, reply }).await?;
        let timeout = self.inner.config.ack_timeout;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    /// Withdraws a procedure registered with [`Client::register`].
    pub async fn unregister(&self, method: &str) -> Result<(), Error> {
        self.command(Command::Unregister { method: method.to_owned() }).await
    }

    /// Subscribes to `pattern` (dot-separated; `*` one segment, `>` the
    /// rest) and waits for the server's acknowledgement, so every message
    /// published after this returns is delivered. The subscription is
    /// renewed after every reconnect. Fails with `Refused` when the server
    /// refuses it (`forbidden`: the token's grants do not cover `pattern`;
    /// `limit_reached`).
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, Error> {
        topic::check_pattern(pattern).map_err(bad_name)?;
        let (reply, answer) = oneshot::channel();
        self.command(Command::Subscribe { pattern: pattern.to_owned(), reply }).await?;
        let timeout = self.inner.config.ack_timeout;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(Ok(receiver))) => Ok(Subscription::new(pattern.to_owned(), receiver)),
            Ok(Ok(Err(refusal))) => Err(refusal),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    /// Ends the server-side subscription to `pattern` once no `Subscription`
    /// for it is left (drop them first); until then this does nothing.
    pub async fn unsubscribe(&self, pattern: &str) -> Result<(), Error> {
        self.command(Command::Unsubscribe { pattern: pattern.to_owned() }).await
    }

    /// Publishes `data` on `topic`; `.await` the returned builder to send.
    /// By default it echoes to this client's own matching subscriptions and
    /// completes once handed to the connection.
    pub fn publish(&self, topic: &str, data: Value) -> Publish {
        Publish {
            client: self.clone(),
            topic: topic.to_owned(),
            data,
            echo: true,
            delivery: Delivery::Sent,
        }
    }

    /// Closes the session: sends a close frame and ends the connection task.
    /// Every waiting operation then fails with a `Closed` error.
    pub async fn close(&self) {
        let (reply, answer) = oneshot::channel();
        if self.command(Command::Close { reply }).await.is_ok() {
            let _ = answer.await;
        }
    }

    pub(crate) async fn command(&self, command: Command) -> Result<(), Error> {
        self.inner.commands.send(command).await.map_err(|_| Error::Closed)
    }

    pub(crate) fn config(&self) -> &ClientConfig {
        &self.inner.config
    }
}

/// A publish to send, from [`Client::publish`].
#[must_use = "a publish does nothing until awaited"]
#[derive(Debug)]
pub struct Publish {
    client: Client,
    topic: String,
    data: Value,
    echo: bool,
    delivery: Delivery,
}

impl Publish {
    /// Keeps the message from this client's own subscriptions.
    pub fn without_echo(mut self) -> Self {
        self.echo = false;
        self
    }

    /// Completes only when the server acknowledges the publish (it has been
    /// handed to every matching subscriber's session).
    pub fn confirmed(mut self) -> Self {
        self.delivery = Delivery::Confirmed;
        self
    }

    async fn send(self) -> Result<(), Error> {
        topic::check_topic(&self.topic).map_err(bad_name)?;
        let (reply, answer) = oneshot::channel();
        let delivery = self.delivery;
        self.client
            .command(Command::Publish {
                topic: self.topic,
                data: self.data,
                echo: self.echo,
                delivery,
                reply,
            })
            .await?;
        let timeout = self.client.config().ack_timeout;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }
}

impl IntoFuture for Publish {
    type Output = Result<(), Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// A name the server would refuse with `bad_id`, refused here first: the
/// server's refusal would not say which request it answers.
fn bad_name(message: String) -> Error {
    Error::Refused { code: ErrorCode::BadId, message }
}
