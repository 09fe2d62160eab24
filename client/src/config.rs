//! Every bound and timeout of the client, in one documented place.
//!
//! Constants named `*_MAX` bound what the client holds in memory; they are
//! not configurable because they protect the client from its own users as
//! much as from the server. Timeouts and backoff, which depend on the
//! deployment, live in [`ClientConfig`], whose `Default` uses the `DEFAULT_*`
//! constants below.

use std::time::Duration;

use concord_engine::limits::DOC_SIZE_BYTES_MAX;
use concord_engine::Limits;

/// Most commands queued from handles to the connection task before a sender
/// waits: handles feel backpressure instead of growing a queue.
pub const COMMANDS_QUEUED_MAX: usize = 1_024;
/// Most document events (changes, resets) buffered per `Changes` receiver;
/// a receiver that falls further behind gets `DocumentEvent::Lagged`.
pub const DOC_EVENTS_QUEUED_MAX: usize = 1_024;
/// Most presence events buffered per receiver before the oldest are dropped.
pub const PRESENCE_EVENTS_QUEUED_MAX: usize = 256;
/// Most pub/sub messages buffered per subscription before the oldest are
/// dropped (pub/sub is at-most-once; `Subscription::missed` counts them).
pub const TOPIC_MESSAGES_QUEUED_MAX: usize = 1_024;
/// Most RPC requests from other clients handled at once; more are answered
/// with a JSON-RPC server error instead of piling up tasks.
pub const RPC_HANDLERS_IN_FLIGHT_MAX: usize = 64;
/// Most outgoing RPC calls awaiting an answer at once.
pub const CALLS_IN_FLIGHT_MAX: usize = 1_024;
/// Longest topic, pattern or method name, in bytes (the server's default
/// name limit).
pub const NAME_BYTES_MAX: usize = 256;
/// Most retryable rejections one `transact` absorbs by re-running, unless
/// overridden in [`ClientConfig`] or per transaction.
pub const TRANSACT_ATTEMPTS_MAX: u32 = 64;
/// Largest message accepted from the server, in bytes. A snapshot carries a
/// whole document, so this must exceed the document size limit.
pub const INCOMING_MESSAGE_BYTES_MAX: usize = 2 * DOC_SIZE_BYTES_MAX;
/// Default for [`ClientConfig::outgoing_message_bytes_max`]: the server's
/// default message size limit.
pub const DEFAULT_OUTGOING_MESSAGE_BYTES_MAX: usize = 1024 * 1024;
/// Largest outgoing data the socket may buffer while the peer is slow, in
/// bytes; past it a send fails and the connection is re-established.
pub const WRITE_BUFFER_BYTES_MAX: usize = 2 * INCOMING_MESSAGE_BYTES_MAX;

const _: () = assert!(INCOMING_MESSAGE_BYTES_MAX > DOC_SIZE_BYTES_MAX);
const _: () = assert!(WRITE_BUFFER_BYTES_MAX > INCOMING_MESSAGE_BYTES_MAX);
const _: () = assert!(WRITE_BUFFER_BYTES_MAX > DEFAULT_OUTGOING_MESSAGE_BYTES_MAX);

/// Longer than a server's default handshake timeout (10 s), so that a
/// server that wants a token the client did not send says so
/// (`unauthorized`) before the client gives up on the attempt.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_SILENCE_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_RECONNECT_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
pub const DEFAULT_RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);
pub const DEFAULT_TRANSACT_BACKOFF_INITIAL: Duration = Duration::from_millis(10);
pub const DEFAULT_TRANSACT_BACKOFF_MAX: Duration = Duration::from_secs(1);
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// How a client connects, keeps its connection alive and retries.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Longest a connection attempt (the token provider, TCP, TLS for
    /// `wss://`, the WebSocket handshake and `welcome`) may take before it
    /// counts as failed.
    pub connect_timeout: Duration,
    /// How often the client pings the server. The pongs (and any other
    /// traffic) prove the server alive.
    pub ping_interval: Duration,
    /// How long the server may stay silent before the connection is treated
    /// as dead and re-established. Must exceed `ping_interval`.
    pub silence_timeout: Duration,
    /// First delay before reconnecting; it doubles on each failure (with
    /// jitter) up to `reconnect_backoff_max`.
    pub reconnect_backoff_initial: Duration,
    pub reconnect_backoff_max: Duration,
    /// Most retryable rejections one `transact` absorbs by re-running.
    pub transact_attempts_max: u32,
    /// The contention pause (see `Document::transact`): while this client's
    /// transactions on a document are being rejected, each re-run after a
    /// rejection first waits a random pause within
    /// `max(round trip, transact_backoff_initial) · 2^level`, at most
    /// `transact_backoff_max`; the level rises with each rejection and falls
    /// with each commit.
    pub transact_backoff_initial: Duration,
    pub transact_backoff_max: Duration,
    /// How long `call` waits for an answer.
    pub call_timeout: Duration,
    /// How long `subscribe` and a confirmed `publish` wait for the server's
    /// acknowledgement.
    pub ack_timeout: Duration,
    /// Largest message sent to the server, in bytes; keep it equal to the
    /// server's `message_bytes_max`. A larger commit, publish or call fails
    /// here at once, since the server could only refuse it without saying
    /// which message it was.
    pub outgoing_message_bytes_max: usize,
    /// The limits the replicas apply to local writes; keep them equal to the
    /// server's so a write refused there is refused here first.
    pub limits: Limits,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            ping_interval: DEFAULT_PING_INTERVAL,
            silence_timeout: DEFAULT_SILENCE_TIMEOUT,
            reconnect_backoff_initial: DEFAULT_RECONNECT_BACKOFF_INITIAL,
            reconnect_backoff_max: DEFAULT_RECONNECT_BACKOFF_MAX,
            transact_attempts_max: TRANSACT_ATTEMPTS_MAX,
            transact_backoff_initial: DEFAULT_TRANSACT_BACKOFF_INITIAL,
            transact_backoff_max: DEFAULT_TRANSACT_BACKOFF_MAX,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            outgoing_message_bytes_max: DEFAULT_OUTGOING_MESSAGE_BYTES_MAX,
            limits: Limits::default(),
        }
    }
}

impl ClientConfig {
    /// The WebSocket limits, set explicitly rather than trusting the
    /// library's defaults (unbounded write buffer).
    pub(crate) fn websocket(&self) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(INCOMING_MESSAGE_BYTES_MAX))
            .max_frame_size(Some(INCOMING_MESSAGE_BYTES_MAX))
            .max_write_buffer_size(WRITE_BUFFER_BYTES_MAX)
    }
}
