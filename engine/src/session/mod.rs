//! `ClientSession`: the client side of protocol v1 as a sans-IO state
//! machine, shared by every client shell (the Rust client's connection task,
//! the simulation; the TypeScript client follows it module for module and is
//! held to it by the trace vectors in `engine/tests/vectors/session/`).
//!
//! It owns everything a client remembers across connections: the replicas,
//! the transactions in flight and their pacing, presence, subscriptions,
//! registrations and calls. It reads no clock and draws no entropy: time
//! comes with every input as a [`Time`], and jitter from a generator seeded
//! by the shell, so one seed and one sequence of inputs replay bit for bit.
//!
//! Modelled on quinn-proto:
//! - inputs: [`handle_connected`](ClientSession::handle_connected),
//!   [`handle_message`](ClientSession::handle_message),
//!   [`handle_disconnected`](ClientSession::handle_disconnected),
//!   [`handle_connect_failed`](ClientSession::handle_connect_failed),
//!   [`handle_timeout`](ClientSession::handle_timeout), and the
//!   application's commands (`open`, `transact`, `subscribe`, ...);
//! - outputs: [`poll_send`](ClientSession::poll_send) (frames, pings, and
//!   the instructions to connect or drop the socket),
//!   [`poll_event`](ClientSession::poll_event) (what the application
//!   learns), [`poll_timeout`](ClientSession::poll_timeout) (when to call
//!   `handle_timeout` next).
//!
//! ## Transactions
//! The application's transaction functions stay in the shell (they are
//! closures in Rust, functions in TypeScript). The machine decides *when*
//! one runs: it emits [`Event::Run`]; the shell then calls
//! [`begin_run`](ClientSession::begin_run) for the replica and the tx id,
//! runs the function on it, and reports what the run did with
//! [`end_run`](ClientSession::end_run). The machine submits, waits for the
//! outcome, re-runs after a retryable rejection (after the contention pause
//! of `pacing`), wakes `retry()` waiters when something they read changes,
//! and finally emits [`Event::Settled`].
//!
//! ## Resume (docs/protocol.md, section 8)
//! On every new session the machine re-opens each document from the version
//! its replica holds (or asks for a snapshot when the replica cannot be
//! trusted), re-subscribes its topics and re-registers its procedures. When
//! a document's `opened` arrives, every transaction still pending in the
//! replica is (re)submitted under its original id: the server's
//! deduplication answers a resubmission with the original outcome, and a
//! commit that already reached the replica through the change stream is
//! recognised there, so every transaction resolves exactly once. A
//! resubmission answered `outcome_unknown` settles as
//! [`Settlement::OutcomeUnknown`] (an earlier send may have committed); a
//! first submission answered so cannot have committed and is re-run.
//!
//! ## Layout
//! - this file: configuration, inputs and outputs, the link (handshake,
//!   heartbeat, dead-server detection, reconnect), dispatch;
//! - `documents`: replicas, opening and resuming, transactions and their
//!   outcomes;
//! - `channels`: subscriptions, publishes, calls and registrations;
//! - `pacing`: the contention pause and the reconnect backoff;
//! - `rng`: the seeded generator.

mod channels;
mod documents;
pub mod pacing;
pub mod rng;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use self::channels::{Registration, TopicState};
use self::documents::{DocState, DocStatus, Transact};
use self::pacing::Backoff;
use self::rng::SessionRng;
use crate::ids::{DocId, TxId, Version};
use crate::limits::Limits;
use crate::protocol::PROTOCOL_VERSION;
use crate::protocol::{close_code, ClientMessage, ErrorCode, PresenceEvent, ServerMessage};
use crate::store::{Change, Rejection};
use crate::time::Time;

/// Most bytes of one message the client sends, unless configured: what the
/// server accepts by default. A larger message is refused here, naming it,
/// rather than sent to be refused without a name.
pub const OUTGOING_MESSAGE_BYTES_MAX: usize = 1024 * 1024;
/// Most calls awaiting their answers at once.
pub const CALLS_IN_FLIGHT_MAX: usize = 1_024;
/// Most re-runs of one transaction after rejections, unless the application
/// says otherwise.
pub const TRANSACT_ATTEMPTS_MAX: u32 = 64;

/// How a session behaves; every duration has a default fit for the public
/// internet.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// How often an idle session pings the server.
    pub ping_interval: Duration,
    /// How long without a word from the server before it counts as dead and
    /// the session is dropped.
    pub silence_timeout: Duration,
    /// The reconnect backoff's first and largest delay.
    pub reconnect_backoff_initial: Duration,
    pub reconnect_backoff_max: Duration,
    /// The contention pause's smallest window and its largest.
    pub transact_backoff_initial: Duration,
    pub transact_backoff_max: Duration,
    pub outgoing_message_bytes_max: usize,
    pub calls_in_flight_max: usize,
    /// Bounds of the replicas (the server's, by default).
    pub limits: Limits,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(5),
            silence_timeout: Duration::from_secs(20),
            reconnect_backoff_initial: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(5),
            transact_backoff_initial: Duration::from_millis(10),
            transact_backoff_max: Duration::from_secs(1),
            outgoing_message_bytes_max: OUTGOING_MESSAGE_BYTES_MAX,
            calls_in_flight_max: CALLS_IN_FLIGHT_MAX,
            limits: Limits::default(),
        }
    }
}

/// The link as the application sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// A live session. `sub` and `name` are the identity the server
    /// authenticated (`None` on a server without authentication).
    Connected { session: String, sub: Option<String>, name: Option<String> },
    /// No session; the machine reconnects by itself.
    Disconnected { reason: String },
    /// The server refused the credentials (HTTP 401, `unauthorized`, or
    /// close 4003); the machine keeps retrying with backoff.
    Unauthorized { message: String },
}

/// What the shell must do on the network, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// Send this text frame.
    Text(String),
    /// Send a WebSocket ping.
    Ping,
    /// Open a new connection now (with a fresh token), then report
    /// `handle_connected` or `handle_connect_failed`.
    Connect,
    /// Drop the connection now; do not report `handle_disconnected` for it.
    Disconnect,
}

/// Why a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The credentials were refused (HTTP 401 or close 4003 before welcome).
    Unauthorized { message: String },
    /// Anything else: unreachable, timed out, a bad handshake.
    Failed { reason: String },
}

/// The application's handle on one `transact` call, from `transact` until
/// its [`Event::Settled`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TransactionKey(pub u64);

/// The application's handle on one call, chosen by the application (unique
/// among its calls in flight); it is the JSON-RPC request id on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallKey(pub u64);

/// The `ack` number of a publish awaiting the server's `published`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublishAck(pub u64);

/// How a transaction ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// The function wrote nothing; its result stands locally.
    ReadOnly { version: Version, runs: u32 },
    /// The writes committed as `version`.
    Committed { tx_id: TxId, version: Version, runs: u32 },
    /// The function returned its own error, or a write did not apply to
    /// the replica (the shell knows which).
    Aborted { runs: u32 },
    /// Rejected for good: not retryable (the server's rules among them), or
    /// `attempts` rejections reached the transaction's limit.
    Rejected { rejection: Rejection, attempts: u32 },
    /// The server's rate limit dropped it `attempts` times.
    RateLimited { attempts: u32 },
    /// A resubmission after a lost acknowledgement found the server no
    /// longer knows whether the first submission (`tx_id`) committed: the
    /// application must look (at the document) to decide.
    OutcomeUnknown { tx_id: TxId },
    /// Refused before it reached the store (e.g. too large, or the document
    /// was refused to this client).
    Refused { code: ErrorCode, message: String },
    /// The function panicked; the replica is being reloaded.
    Panicked,
    /// The document was closed first.
    Closed,
}

/// What one run of a transaction function did, as the shell reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum RunReport {
    /// Nothing written.
    ReadOnly,
    /// Writes are pending in the replica: submit this.
    Submit(crate::store::Transaction),
    /// STM `retry`: run again after a change overlapping these reads.
    Retry(Vec<crate::pointer::Pointer>),
    /// Read another pending transaction's writes: run again when one
    /// resolves.
    Blocked,
    /// The function's own error or a write that did not apply.
    Failed,
    /// The function panicked (its half-done writes are in the replica,
    /// which is reloaded).
    Panicked,
}

impl RunReport {
    /// What the machine needs to know of a run's outcome.
    pub fn of<T, E>(outcome: &crate::replica::RunOutcome<T, E>) -> Self {
        use crate::replica::RunOutcome;
        match outcome {
            RunOutcome::ReadOnly(_) => RunReport::ReadOnly,
            RunOutcome::Submit { tx, .. } => RunReport::Submit(tx.clone()),
            RunOutcome::Retry { reads } => RunReport::Retry(reads.clone()),
            RunOutcome::Blocked => RunReport::Blocked,
            RunOutcome::Patch(_) | RunOutcome::Failed(_) => RunReport::Failed,
        }
    }
}

/// Why a request could not go out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendRefusal {
    /// No session: the request would be lost.
    NotConnected,
    /// Too many calls await answers (`calls_in_flight_max`).
    TooManyCalls,
    /// Refused here as the server would refuse it (e.g. too large).
    Refused { code: ErrorCode, message: String },
}

/// What the application learns, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The link changed.
    Link(LinkState),
    /// The document is live: its replica is current and commits go out.
    /// Emitted on every (re)open, and at once when `open` finds it live.
    Opened {
        doc: DocId,
    },
    /// The server refused opening the document (e.g. `forbidden`); the
    /// machine forgot it and settled its transactions.
    OpenRefused {
        doc: DocId,
        code: ErrorCode,
        message: String,
    },
    /// A committed change entered the replica (the application's own
    /// commits included).
    Changed {
        doc: DocId,
        change: Arc<Change>,
    },
    /// The replica was replaced by a snapshot.
    Reset {
        doc: DocId,
        version: Version,
    },
    /// The replica could not take a server message and is being reloaded.
    Reloading {
        doc: DocId,
        reason: String,
    },
    Presence {
        doc: DocId,
        session: String,
        event: PresenceEvent,
        state: Value,
    },
    /// Run this transaction's function now (`begin_run`, then `end_run`).
    Run {
        transaction: TransactionKey,
    },
    Settled {
        transaction: TransactionKey,
        settlement: Settlement,
    },
    /// A message on a topic this client subscribed to (any of its
    /// patterns matching it).
    Message {
        topic: String,
        data: Value,
    },
    /// The server confirmed a subscription; emitted on every (re)subscribe.
    Subscribed {
        pattern: String,
    },
    SubscribeRefused {
        pattern: String,
        code: ErrorCode,
        message: String,
    },
    Published {
        ack: PublishAck,
    },
    PublishRefused {
        ack: PublishAck,
        refusal: SendRefusal,
    },
    /// A call's answer: the JSON-RPC `result`, or its error.
    CallAnswered {
        call: CallKey,
        result: Result<Value, crate::protocol::RpcError>,
    },
    /// The session ended before the call was answered.
    CallLost {
        call: CallKey,
    },
    /// A JSON-RPC message that answers no call of ours (a request for one
    /// of our procedures, or a notification): the shell dispatches it and
    /// answers through [`reply`](ClientSession::reply) with this `epoch`.
    Rpc {
        epoch: u64,
        message: Value,
    },
    Registered {
        method: String,
    },
    RegisterRefused {
        method: String,
        code: ErrorCode,
        message: String,
    },
    /// An error the server reported that concerns nothing the machine
    /// tracks (for logs).
    ServerError {
        code: ErrorCode,
        message: String,
    },
}

/// Counters of what the session did since it was created, for tests,
/// dashboards and tuning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Transactions that committed on the server.
    pub committed: u64,
    /// Transactions that wrote nothing and returned locally.
    pub read_only: u64,
    /// Rejections received for this client's transactions.
    pub rejections: u64,
    /// Re-runs of a transaction function after a retryable rejection.
    pub reruns: u64,
    /// Runs that called STM `retry()` and waited for a change.
    pub stm_waits: u64,
    /// Waits ended by a change to something the run had read.
    pub stm_wakeups: u64,
    /// Runs that read another pending transaction's writes and waited for
    /// it to resolve.
    pub blocked_waits: u64,
    /// Sessions established, the first one included.
    pub connects: u64,
    /// Sessions lost (not counting the application closing the client).
    pub disconnects: u64,
    /// Documents whose replica was replaced by a snapshot after it had been
    /// loaded (a server resync, missing history, or a replica error).
    pub resyncs: u64,
    /// `error` messages received from the server.
    pub server_errors: u64,
}

#[derive(Debug)]
enum Link {
    /// The shell is connecting (it was told to, or is on its first attempt).
    Connecting,
    /// The socket is open; `welcome` has not arrived.
    Handshaking {
        since: Time,
    },
    Up(Up),
    /// Waiting to reconnect at this time.
    Down {
        reconnect_at: Time,
    },
}

#[derive(Debug)]
struct Up {
    session: String,
    since: Time,
    /// Anything from the server proves it alive.
    last_heard: Time,
    next_ping: Time,
}

/// The client side of protocol v1; see the module documentation.
#[derive(Debug)]
pub struct ClientSession {
    config: SessionConfig,
    client_id: String,
    rng: SessionRng,
    link: Link,
    reconnect_backoff: Backoff,
    /// Paces reconnects after sessions whose token expired right away.
    expiry_backoff: Backoff,
    /// Counts sessions, so answers meant for an earlier one are dropped.
    epoch: u64,
    tx_seq: u64,
    next_transaction: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: SessionStats,
    docs: BTreeMap<DocId, DocState>,
    transactions: BTreeMap<TransactionKey, Transact>,
    /// The transaction waiting on each pending tx id.
    waiting: HashMap<TxId, TransactionKey>,
    topics: BTreeMap<String, TopicState>,
    procedures: BTreeMap<String, Registration>,
    /// Methods whose `register` went out in this session and awaits its
    /// answer, in order: the server answers in order, and its
    /// `already_registered` error does not name the method.
    registers_in_flight: VecDeque<String>,
    calls: BTreeMap<CallKey, ()>,
    /// Publishes awaiting `published`, with their topic.
    acks: BTreeMap<PublishAck, String>,
    next_ack: u64,
    /// The message of an `unauthorized` error, shown when the close (4003)
    /// that follows it arrives.
    refusal_message: Option<String>,
}

impl ClientSession {
    /// A session whose shell is connecting now (it reports the outcome with
    /// `handle_connected` or `handle_connect_failed`). `client_id` prefixes
    /// every tx id (alphanumeric, short); `seed` seeds every jitter.
    pub fn new(config: SessionConfig, client_id: &str, seed: u32) -> Self {
        let reconnect_backoff =
            Backoff::new(config.reconnect_backoff_initial, config.reconnect_backoff_max);
        Self {
            config,
            client_id: client_id.to_owned(),
            rng: SessionRng::new(seed),
            link: Link::Connecting,
            expiry_backoff: reconnect_backoff.clone(),
            reconnect_backoff,
            epoch: 0,
            tx_seq: 0,
            next_transaction: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: SessionStats::default(),
            docs: BTreeMap::new(),
            transactions: BTreeMap::new(),
            waiting: HashMap::new(),
            topics: BTreeMap::new(),
            procedures: BTreeMap::new(),
            registers_in_flight: VecDeque::new(),
            calls: BTreeMap::new(),
            acks: BTreeMap::new(),
            next_ack: 0,
            refusal_message: None,
        }
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// The current session's id, when connected.
    pub fn session_id(&self) -> Option<&str> {
        match &self.link {
            Link::Up(up) => Some(&up.session),
            _ => None,
        }
    }

    /// The current session's number (see [`Event::Rpc`]).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.link, Link::Up(_))
    }

    // ----- outputs -----

    /// The next thing to do on the network.
    pub fn poll_send(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next thing the application learns.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` is due next, if anything waits on time.
    pub fn poll_timeout(&self) -> Option<Time> {
        let link = match &self.link {
            Link::Up(up) => Some(up.next_ping),
            Link::Down { reconnect_at } => Some(*reconnect_at),
            Link::Connecting | Link::Handshaking { .. } => None,
        };
        let paused = self.transactions.values().filter_map(Transact::paused_until).min();
        link.into_iter().chain(paused).min()
    }

    // ----- the link -----

    /// The shell's connection is open; `welcome` comes next.
    pub fn handle_connected(&mut self, now: Time) {
        if matches!(self.link, Link::Connecting | Link::Down { .. }) {
            self.link = Link::Handshaking { since: now };
        }
    }

    /// The shell's connection attempt failed.
    pub fn handle_connect_failed(&mut self, failure: ConnectFailure, now: Time) {
        if matches!(self.link, Link::Up(_)) {
            return;
        }
        let delay = self.reconnect_backoff.next_delay(&mut self.rng);
        self.link = Link::Down { reconnect_at: now + delay };
        self.events.push_back(Event::Link(match failure {
            ConnectFailure::Unauthorized { message } => LinkState::Unauthorized { message },
            ConnectFailure::Failed { reason } => LinkState::Disconnected { reason },
        }));
    }

    /// The connection ended (the server closed it, with `close` = code and
    /// reason when it sent a close frame, or it broke). Ignored when the
    /// machine itself asked for the disconnect.
    pub fn handle_disconnected(&mut self, close: Option<(u16, String)>, now: Time) {
        if !matches!(self.link, Link::Up(_) | Link::Handshaking { .. }) {
            return;
        }
        let reason = match &close {
            Some((code, reason)) => format!("the server closed the session ({code}: {reason})"),
            None => "the connection was lost".to_owned(),
        };
        match close.as_ref().map(|(code, _)| *code) {
            // A fresh token, at once: resume loses nothing.
            Some(close_code::TOKEN_EXPIRED) => self.reconnect_now(&reason, now),
            Some(close_code::UNAUTHORIZED) => {
                let message = match (self.refusal_message.take(), close) {
                    (Some(message), _) => message,
                    (None, Some((_, message))) if !message.is_empty() => message,
                    _ => reason,
                };
                let delay = self.reconnect_backoff.next_delay(&mut self.rng);
                self.drop_session(LinkState::Unauthorized { message }, now + delay, false);
            }
            _ => self.disconnect(&reason, now),
        }
    }

    /// Heartbeats, dead-server detection, reconnects and paused
    /// transactions whose time has come.
    pub fn handle_timeout(&mut self, now: Time) {
        match &mut self.link {
            Link::Down { reconnect_at } if *reconnect_at <= now => {
                self.link = Link::Connecting;
                self.transmits.push_back(Transmit::Connect);
            }
            Link::Up(up) if up.next_ping <= now => {
                if now.saturating_since(up.last_heard) > self.config.silence_timeout {
                    self.disconnect("the server went silent", now);
                } else {
                    up.next_ping = now + self.config.ping_interval;
                    self.transmits.push_back(Transmit::Ping);
                    self.resend_dropped();
                }
            }
            _ => {}
        }
        self.release_paused(now);
    }

    /// A frame that carries no message (a pong) still proves the server
    /// alive.
    pub fn handle_heard(&mut self, now: Time) {
        if let Link::Up(up) = &mut self.link {
            up.last_heard = now;
        }
    }

    /// One message from the server.
    pub fn handle_message(&mut self, message: ServerMessage, now: Time) {
        match &mut self.link {
            Link::Up(up) => up.last_heard = now,
            Link::Handshaking { .. } => return self.on_handshake(message, now),
            Link::Connecting | Link::Down { .. } => return,
        }
        match message {
            ServerMessage::Welcome { .. } => {}
            ServerMessage::Snapshot { doc, version, value } => {
                self.on_snapshot(doc, version, value, now)
            }
            ServerMessage::Opened { doc, version } => self.on_opened(doc, version, now),
            ServerMessage::Change(change) => self.on_change(change, now),
            ServerMessage::Committed { doc, tx_id, version } => {
                self.on_committed(doc, tx_id, version, now)
            }
            ServerMessage::Rejected { doc, tx_id, rejection } => {
                self.on_rejected(doc, tx_id, rejection, now)
            }
            ServerMessage::Message { topic, data } => {
                self.events.push_back(Event::Message { topic, data })
            }
            ServerMessage::Subscribed { topic } => self.on_subscribed(topic),
            ServerMessage::Published { ack } => {
                if self.acks.remove(&PublishAck(ack)).is_some() {
                    self.events.push_back(Event::Published { ack: PublishAck(ack) });
                }
            }
            ServerMessage::Presence { doc, session, event, state } => {
                if self.docs.contains_key(&doc) {
                    self.events.push_back(Event::Presence { doc, session, event, state });
                }
            }
            ServerMessage::Rpc { message } => self.on_rpc(message),
            ServerMessage::Registered { method } => self.on_registered(method),
            // Heard above; that is all a pong says.
            ServerMessage::Pong => {}
            ServerMessage::Error { code, message, doc, tx_id, topic, method } => {
                self.on_error(code, message, doc, tx_id, topic, method, now)
            }
        }
    }

    fn on_handshake(&mut self, message: ServerMessage, now: Time) {
        match message {
            ServerMessage::Welcome { protocol, session, sub, name }
                if protocol == PROTOCOL_VERSION =>
            {
                self.link = Link::Up(Up {
                    session: session.clone(),
                    since: now,
                    last_heard: now,
                    next_ping: now + self.config.ping_interval,
                });
                self.epoch += 1;
                self.stats.connects += 1;
                self.reconnect_backoff.reset();
                self.events.push_back(Event::Link(LinkState::Connected { session, sub, name }));
                self.reopen_documents();
                self.renew_channels();
            }
            ServerMessage::Welcome { protocol, .. } => {
                let reason = format!(
                    "the server speaks protocol {protocol}, this client {PROTOCOL_VERSION}"
                );
                self.transmits.push_back(Transmit::Disconnect);
                self.handle_connect_failed(ConnectFailure::Failed { reason }, now);
            }
            ServerMessage::Error {
                code: ErrorCode::Unauthorized | ErrorCode::TokenExpired,
                message,
                ..
            } => {
                self.transmits.push_back(Transmit::Disconnect);
                self.handle_connect_failed(ConnectFailure::Unauthorized { message }, now);
            }
            _ => {
                let reason = "the first message was not welcome".to_owned();
                self.transmits.push_back(Transmit::Disconnect);
                self.handle_connect_failed(ConnectFailure::Failed { reason }, now);
            }
        }
    }

    /// Drops the session (the shell is told to) and reconnects after the
    /// backoff.
    fn disconnect(&mut self, reason: &str, now: Time) {
        let delay = self.reconnect_backoff.next_delay(&mut self.rng);
        self.drop_session(LinkState::Disconnected { reason: reason.to_owned() }, now + delay, true);
    }

    /// Drops the session and reconnects at once (with a fresh token). A
    /// session that lasted less than `reconnect_backoff_max` (a token
    /// provider handing out tokens about to expire) waits out a backoff of
    /// its own instead, so it cannot make the client spin.
    fn reconnect_now(&mut self, reason: &str, now: Time) {
        let since = match &self.link {
            Link::Up(up) => up.since,
            Link::Handshaking { since } => *since,
            _ => return,
        };
        let delay = if now.saturating_since(since) < self.config.reconnect_backoff_max {
            self.expiry_backoff.next_delay(&mut self.rng)
        } else {
            self.expiry_backoff.reset();
            Duration::ZERO
        };
        let state = LinkState::Disconnected { reason: reason.to_owned() };
        self.drop_session(state, now + delay, true);
    }

    /// Ends the session: the link waits to reconnect at `reconnect_at`,
    /// showing `state`; `tell_shell` asks the shell to drop the socket.
    fn drop_session(&mut self, state: LinkState, reconnect_at: Time, tell_shell: bool) {
        if !matches!(self.link, Link::Up(_) | Link::Handshaking { .. }) {
            return;
        }
        if matches!(self.link, Link::Up(_)) {
            self.stats.disconnects += 1;
        }
        self.link = Link::Down { reconnect_at };
        // Frames not yet taken would go to a dead socket.
        self.transmits.retain(|transmit| !matches!(transmit, Transmit::Text(_) | Transmit::Ping));
        if tell_shell {
            self.transmits.push_back(Transmit::Disconnect);
        }
        self.events.push_back(Event::Link(state));
        for state in self.docs.values_mut() {
            state.status = DocStatus::Disconnected;
        }
        self.end_session_channels();
    }

    /// Queues a small control message for the current session.
    fn send(&mut self, message: &ClientMessage) {
        // Control messages are far below any limit; a refusal here would be
        // a bug of ours, and dropping it is what a dead link does anyway.
        let _ = self.try_send(message);
    }

    /// Queues a message that carries user data, refusing it when it is over
    /// the size limit: the server would refuse it without naming it, and
    /// whoever waits for its answer would wait forever. Not connected, it
    /// is checked and dropped: everything a new session needs is re-sent
    /// from the machine's state on connect.
    fn try_send(&mut self, message: &ClientMessage) -> Result<(), SendRefusal> {
        let text = self.encode(message)?;
        if self.is_connected() {
            self.transmits.push_back(Transmit::Text(text));
        }
        Ok(())
    }

    /// The frame text of `message`, or the refusal the server would give.
    fn encode(&self, message: &ClientMessage) -> Result<String, SendRefusal> {
        let text = serde_json::to_string(message).map_err(|error| SendRefusal::Refused {
            code: ErrorCode::BadMessage,
            message: error.to_string(),
        })?;
        let bytes_max = self.config.outgoing_message_bytes_max;
        if text.len() > bytes_max {
            let message = format!("message is {} bytes, over the limit of {bytes_max}", text.len());
            return Err(SendRefusal::Refused { code: ErrorCode::MessageTooLarge, message });
        }
        Ok(text)
    }

    /// Sends again what may have been dropped by the server's rate limit
    /// and still awaits an answer: opens, subscriptions, registrations. A
    /// duplicate of one that was merely slow is harmless: the server answers
    /// it again.
    fn resend_dropped(&mut self) {
        self.resend_dropped_opens();
        self.resend_unanswered_channels();
    }

    #[allow(clippy::too_many_arguments)]
    fn on_error(
        &mut self,
        code: ErrorCode,
        message: String,
        doc: Option<DocId>,
        tx_id: Option<TxId>,
        topic: Option<String>,
        method: Option<String>,
        now: Time,
    ) {
        self.stats.server_errors += 1;
        if let Some(topic) = topic {
            return self.on_topic_refused(&topic, code, message);
        }
        if let Some(method) = method {
            return self.on_method_refused(&method, code, message);
        }
        match (doc, tx_id) {
            (Some(doc), Some(tx_id)) => self.on_commit_refused(&doc, &tx_id, code, message, now),
            (Some(doc), None) => self.on_doc_error(&doc, code, message, now),
            (None, _) if code == ErrorCode::AlreadyRegistered => self.on_register_refused(message),
            // The session's token expired: the server closes it (4004) after
            // a grace period; reconnecting now with a fresh token loses
            // nothing (every document resumes) and skips the wait.
            (None, _) if code == ErrorCode::TokenExpired => {
                self.reconnect_now(&format!("the token expired: {message}"), now)
            }
            // A close with 4003 follows.
            (None, _) if code == ErrorCode::Unauthorized => {
                self.refusal_message = Some(message.clone());
                self.events.push_back(Event::Link(LinkState::Unauthorized { message }))
            }
            (None, _) => self.events.push_back(Event::ServerError { code, message }),
        }
    }
}
