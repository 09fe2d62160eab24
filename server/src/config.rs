//! Server configuration: every limit that client input can push against,
//! with its default, in one place.
//!
//! Each `*_MAX` constant is the default of the `Config` field of the same
//! name; `concord serve` exposes each field as a flag and an environment
//! variable (see `main.rs`). Defaults are deliberately tight, and the library
//! defaults of tungstenite and hyper are never trusted as limits: every one
//! that matters is set explicitly from here.

use std::path::PathBuf;
use std::time::Duration;

use concord_engine::Limits;

use crate::error::ConfigError;
use crate::storage::SyncMode;

/// Largest protocol message a client may send, in bytes. Larger messages
/// (up to `WS_MESSAGE_BYTES_MAX`) are answered with `message_too_large`.
pub const MESSAGE_BYTES_MAX: usize = 1024 * 1024;
/// Largest WebSocket message the transport reads at all, in bytes; past it
/// the session is closed with 1009. Must be at least `MESSAGE_BYTES_MAX`.
pub const WS_MESSAGE_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Largest single WebSocket frame, in bytes.
pub const WS_FRAME_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Bytes tungstenite may buffer before writing to the socket.
pub const WS_WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// Initial capacity of each session's WebSocket read buffer, and the most
/// read from the socket at once, in bytes. tungstenite zero-fills the free
/// capacity before every read, so its default (128 KiB) made every idle
/// session resident for 128 KiB and every read cost a 128 KiB memset. A
/// larger message still grows the buffer to its length.
pub const WS_READ_BUFFER_BYTES: usize = 8 * 1024;
/// Deepest JSON nesting of a whole client message (the envelope adds up to
/// 5 levels to a document value, so this sits above the document limit).
pub const MESSAGE_JSON_DEPTH_MAX: usize = 80;
/// Most messages waiting in one session's outbound queue.
pub const OUTBOUND_QUEUE_MESSAGES_MAX: usize = 4096;
/// Most bytes waiting in one session's outbound queue. A single message
/// larger than this (a big snapshot) is still admitted into an empty queue.
pub const OUTBOUND_QUEUE_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Most commands waiting for one shard task.
pub const SHARD_QUEUE_COMMANDS_MAX: usize = 1024;
/// Most commands waiting for the hub task (pub/sub and RPC routing).
pub const HUB_QUEUE_COMMANDS_MAX: usize = 4096;
/// Most recent changes kept per document for catch-up after a reconnect.
pub const CHANGE_HISTORY_MAX: usize = 1024;
/// Most bytes of serialised changes kept per document for catch-up.
pub const CHANGE_HISTORY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most documents a server holds. A commit (or mutation) that would create
/// one more is refused with `limit_reached`; documents recovered at start
/// count, and existing documents stay writable.
pub const DOCS_MAX: usize = 100_000;
/// Most bytes of encoded snapshots each shard keeps, so that sessions
/// opening a document at an unchanged version share one encoding (a class
/// joining one board) instead of each paying for its own.
pub const SNAPSHOT_CACHE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Sustained messages per second one session may send.
pub const RATE_MESSAGES_PER_SECOND: u32 = 500;
/// Messages one session may send in a burst above the sustained rate.
pub const RATE_BURST_MESSAGES_MAX: u32 = 1000;
/// After a flush that emptied a session's queue, its writer holds the next
/// message until this long after that flush, so messages that queue
/// meanwhile go out in one write (and, in a session that asked for batched
/// frames, in one frame). An idle session's next message goes at once, and
/// so does a reply to the session's own request (with what queued before
/// it): only traffic it did not just ask for (changes, presence, topic
/// messages) waits. Zero writes every message as soon as it is queued
/// (docs/benchmarks.md, "Coalescing writes"). 4 ms, not 1: a tenth more W1
/// moves/s on a fifth less server CPU per move, for at most 4 ms more on a
/// change to a busy session, well within a 60 Hz frame ("A 4 ms window").
pub const WRITER_COALESCE_WINDOW: Duration = Duration::from_millis(4);
/// Longest `writer_coalesce_window` may be. Replies never wait for it, but
/// changes and topic messages to a busy session may wait this long.
pub const WRITER_COALESCE_WINDOW_MAX: Duration = Duration::from_secs(10);
/// Interval between server pings.
pub const PING_INTERVAL: Duration = Duration::from_secs(15);
/// A session from which nothing (not even a pong) arrives for this long is
/// closed with 4002.
pub const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(45);
/// Longest a client may take to send its HTTP request (the WebSocket
/// handshake) after connecting.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a session's token expires it is told (`token_expired`) and closed
/// (4004) this much later, so its client can reconnect with a fresh token
/// while this session still delivers.
pub const TOKEN_EXPIRY_GRACE: Duration = Duration::from_secs(10);
/// Longest the server waits to write a close frame before dropping the
/// connection.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest a graceful shutdown waits for sessions to drain.
pub const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest an RPC call (to a server procedure or a client callee) may take.
pub const RPC_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Most RPC calls one session may have in flight.
pub const RPC_PENDING_CALLS_MAX: usize = 256;
/// Most documents one session may have open.
pub const OPEN_DOCS_MAX: usize = 1024;
/// Most topic subscriptions one session may hold.
pub const SUBSCRIPTIONS_MAX: usize = 1024;
/// Most methods one session may register.
pub const REGISTERED_METHODS_MAX: usize = 256;
/// Longest topic pattern or method name, in bytes (the protocol's default,
/// which the Rust client checks against too).
pub const NAME_BYTES_MAX: usize = concord_engine::protocol::NAME_BYTES_MAX;
/// Most concurrent WebSocket sessions.
pub const SESSIONS_MAX: usize = 10_000;
/// Most concurrent TCP connections still in their HTTP phase.
pub const CONNECTIONS_MAX: usize = 1024;
/// Longest any configured duration may be, so deadlines computed from it
/// cannot overflow the clock.
pub const DURATION_MAX: Duration = Duration::from_secs(365 * 86_400);
/// Most entries the test-only commit log records.
pub const COMMIT_LOG_ENTRIES_MAX: usize = 1_000_000;
/// The data directory `concord serve` uses when given no `--data`.
pub const DATA_DIR_DEFAULT: &str = "concord-data";
/// A document is snapshotted after this many commits since its last
/// snapshot: restart replays at most this many changes per document.
pub const SNAPSHOT_EVERY_COMMITS: u64 = 1_000;
/// Most logged changes the server leaves for a restart to replay, over all
/// documents (each shard gets an equal share): past its share, a shard
/// snapshots every document with unsnapshotted commits. With
/// `SNAPSHOT_EVERY_COMMITS` this bounds restart work however many documents
/// there are.
pub const REPLAY_COMMITS_MAX: u64 = 50_000;
/// Versions of each document kept in the log (readable as history) before
/// compaction may delete them. At least the dedup window, so that every
/// transaction id the window would hold is still in the log after a restart.
pub const HISTORY_RETAINED_COMMITS: u64 = 100_000;
/// Most batches waiting for the storage thread (all shards together); a
/// shard that finds the queue full waits, and so do its sessions.
pub const STORAGE_QUEUE_BATCHES_MAX: usize = 1024;
/// Most acknowledgements, broadcasts and replies one shard holds while their
/// commits are not yet durable; past it the shard stops taking commands
/// until the storage thread catches up.
pub const SHARD_PENDING_EFFECTS_MAX: usize = 65_536;
/// Longest a graceful shutdown waits for the log to be flushed.
pub const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

// serde_json refuses input nested past 128 levels with a syntax error; our
// depth check must answer first so the client gets `too_deep`.
const _: () = assert!(MESSAGE_JSON_DEPTH_MAX < 128);
const _: () = assert!(MESSAGE_JSON_DEPTH_MAX > concord_engine::limits::JSON_DEPTH_MAX);
const _: () = assert!(WS_MESSAGE_BYTES_MAX >= MESSAGE_BYTES_MAX);
const _: () = assert!(RATE_BURST_MESSAGES_MAX >= RATE_MESSAGES_PER_SECOND);
const _: () =
    assert!(HISTORY_RETAINED_COMMITS >= concord_engine::limits::TX_DEDUP_ENTRIES_MAX as u64);

/// Where and how the server keeps its commit log and snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// The data directory; created if missing, locked while the server runs.
    pub data_dir: PathBuf,
    pub sync: SyncMode,
    pub snapshot_every_commits: u64,
    pub replay_commits_max: u64,
    pub history_retained_commits: u64,
    /// Most batches queued for the storage thread.
    pub queue_batches_max: usize,
}

impl StorageConfig {
    /// The defaults, in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            sync: SyncMode::Full,
            snapshot_every_commits: SNAPSHOT_EVERY_COMMITS,
            replay_commits_max: REPLAY_COMMITS_MAX,
            history_retained_commits: HISTORY_RETAINED_COMMITS,
            queue_batches_max: STORAGE_QUEUE_BATCHES_MAX,
        }
    }
}

/// Everything a server can be configured with. `Config::default()` gives the
/// constants above; build variations with struct update syntax:
/// `Config { record_commit_log: true, ..Config::default() }`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Number of shard tasks; each owns the documents hashed to it.
    /// Default: the number of cores.
    pub shards: usize,
    /// The store's limits (patch ops, read set, document depth and size,
    /// dedup window).
    pub limits: Limits,
    pub message_bytes_max: usize,
    pub ws_message_bytes_max: usize,
    pub ws_frame_bytes_max: usize,
    pub ws_write_buffer_bytes: usize,
    pub ws_read_buffer_bytes: usize,
    pub message_json_depth_max: usize,
    pub outbound_queue_messages_max: usize,
    pub outbound_queue_bytes_max: usize,
    pub shard_queue_commands_max: usize,
    pub hub_queue_commands_max: usize,
    pub change_history_max: usize,
    pub change_history_bytes_max: usize,
    pub snapshot_cache_bytes_max: usize,
    pub docs_max: usize,
    pub rate_messages_per_second: u32,
    pub rate_burst_messages_max: u32,
    pub writer_coalesce_window: Duration,
    pub ping_interval: Duration,
    pub dead_peer_timeout: Duration,
    pub handshake_timeout: Duration,
    pub close_timeout: Duration,
    pub shutdown_drain_timeout: Duration,
    pub rpc_call_timeout: Duration,
    pub rpc_pending_calls_max: usize,
    pub open_docs_max: usize,
    pub subscriptions_max: usize,
    pub registered_methods_max: usize,
    pub name_bytes_max: usize,
    pub sessions_max: usize,
    pub connections_max: usize,
    /// Browser origins allowed to open a session. Empty allows every origin;
    /// requests without an `Origin` header (non-browser clients) are always
    /// allowed.
    pub allowed_origins: Vec<String>,
    /// Serve this directory at `/`; without it a placeholder page is served.
    pub static_dir: Option<PathBuf>,
    /// Record every committed transaction in commit order, for
    /// `RunningServer::commit_log` (tests and the certificate checker).
    pub record_commit_log: bool,
    pub commit_log_entries_max: usize,
    /// Durable storage. `None` keeps documents in memory only (lost on
    /// exit); the library default, for tests and embedding. `concord serve`
    /// is durable unless given `--memory`.
    pub storage: Option<StorageConfig>,
    pub shard_pending_effects_max: usize,
    pub shutdown_flush_timeout: Duration,
    pub token_expiry_grace: Duration,
    /// Proxies whose `X-Forwarded-For` names the client (for the limit on
    /// failed authentications and the log); empty: none, the peer is the
    /// client.
    pub trusted_proxies: Vec<crate::auth::TrustedProxy>,
    /// Serve without authentication on a non-loopback address. Without
    /// this, a server with no authenticator refuses to start anywhere but
    /// on a loopback address.
    pub insecure_open: bool,
    /// Serve TLS (`wss://`, `https://`) with this certificate and key;
    /// `None` serves plain TCP (e.g. behind a TLS-terminating proxy).
    pub tls: Option<crate::tls::TlsConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            shards: std::thread::available_parallelism().map_or(2, usize::from),
            limits: Limits::default(),
            message_bytes_max: MESSAGE_BYTES_MAX,
            ws_message_bytes_max: WS_MESSAGE_BYTES_MAX,
            ws_frame_bytes_max: WS_FRAME_BYTES_MAX,
            ws_write_buffer_bytes: WS_WRITE_BUFFER_BYTES,
            ws_read_buffer_bytes: WS_READ_BUFFER_BYTES,
            message_json_depth_max: MESSAGE_JSON_DEPTH_MAX,
            outbound_queue_messages_max: OUTBOUND_QUEUE_MESSAGES_MAX,
            outbound_queue_bytes_max: OUTBOUND_QUEUE_BYTES_MAX,
            shard_queue_commands_max: SHARD_QUEUE_COMMANDS_MAX,
            hub_queue_commands_max: HUB_QUEUE_COMMANDS_MAX,
            change_history_max: CHANGE_HISTORY_MAX,
            change_history_bytes_max: CHANGE_HISTORY_BYTES_MAX,
            snapshot_cache_bytes_max: SNAPSHOT_CACHE_BYTES_MAX,
            docs_max: DOCS_MAX,
            rate_messages_per_second: RATE_MESSAGES_PER_SECOND,
            rate_burst_messages_max: RATE_BURST_MESSAGES_MAX,
            writer_coalesce_window: WRITER_COALESCE_WINDOW,
            ping_interval: PING_INTERVAL,
            dead_peer_timeout: DEAD_PEER_TIMEOUT,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            close_timeout: CLOSE_TIMEOUT,
            shutdown_drain_timeout: SHUTDOWN_DRAIN_TIMEOUT,
            rpc_call_timeout: RPC_CALL_TIMEOUT,
            rpc_pending_calls_max: RPC_PENDING_CALLS_MAX,
            open_docs_max: OPEN_DOCS_MAX,
            subscriptions_max: SUBSCRIPTIONS_MAX,
            registered_methods_max: REGISTERED_METHODS_MAX,
            name_bytes_max: NAME_BYTES_MAX,
            sessions_max: SESSIONS_MAX,
            connections_max: CONNECTIONS_MAX,
            allowed_origins: Vec::new(),
            static_dir: None,
            record_commit_log: false,
            commit_log_entries_max: COMMIT_LOG_ENTRIES_MAX,
            storage: None,
            shard_pending_effects_max: SHARD_PENDING_EFFECTS_MAX,
            shutdown_flush_timeout: SHUTDOWN_FLUSH_TIMEOUT,
            token_expiry_grace: TOKEN_EXPIRY_GRACE,
            trusted_proxies: Vec::new(),
            insecure_open: false,
            tls: None,
        }
    }
}

impl Config {
    /// Checks the relations between limits that the server relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |what: &str| Err(ConfigError(what.to_owned()));
        let positive = [
            ("shards", self.shards),
            ("message_bytes_max", self.message_bytes_max),
            ("outbound_queue_messages_max", self.outbound_queue_messages_max),
            ("outbound_queue_bytes_max", self.outbound_queue_bytes_max),
            ("shard_queue_commands_max", self.shard_queue_commands_max),
            ("hub_queue_commands_max", self.hub_queue_commands_max),
            ("sessions_max", self.sessions_max),
            ("connections_max", self.connections_max),
            ("name_bytes_max", self.name_bytes_max),
            ("shard_pending_effects_max", self.shard_pending_effects_max),
            ("limits.tx_dedup_entries_max", self.limits.tx_dedup_entries_max),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return fail(&format!("{name} must be at least 1"));
        }
        if self.ws_message_bytes_max < self.message_bytes_max {
            return fail("ws_message_bytes_max must be at least message_bytes_max");
        }
        if self.message_json_depth_max >= 128 {
            return fail("message_json_depth_max must be below 128 (serde_json's own limit)");
        }
        if self.message_json_depth_max <= self.limits.json_depth_max {
            return fail("message_json_depth_max must exceed the document depth limit");
        }
        if self.rate_messages_per_second == 0 || self.rate_burst_messages_max == 0 {
            return fail("the rate limit must allow at least one message per second");
        }
        if self.dead_peer_timeout <= self.ping_interval {
            return fail("dead_peer_timeout must exceed ping_interval");
        }
        if self.ping_interval.is_zero() {
            return fail("ping_interval must be positive");
        }
        if self.writer_coalesce_window > WRITER_COALESCE_WINDOW_MAX {
            return fail("writer_coalesce_window must be at most 10 s");
        }
        let durations = [
            ("ping_interval", self.ping_interval),
            ("dead_peer_timeout", self.dead_peer_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("close_timeout", self.close_timeout),
            ("shutdown_drain_timeout", self.shutdown_drain_timeout),
            ("rpc_call_timeout", self.rpc_call_timeout),
            ("shutdown_flush_timeout", self.shutdown_flush_timeout),
            ("token_expiry_grace", self.token_expiry_grace),
        ];
        if let Some((name, _)) = durations.iter().find(|(_, d)| *d > DURATION_MAX) {
            return fail(&format!(
                "{name} must be at most {} days",
                DURATION_MAX.as_secs() / 86_400
            ));
        }
        let semaphore_max = tokio::sync::Semaphore::MAX_PERMITS;
        if self.sessions_max > semaphore_max || self.connections_max > semaphore_max {
            return fail("sessions_max and connections_max must fit a semaphore");
        }
        if let Some(storage) = &self.storage {
            if storage.snapshot_every_commits == 0
                || storage.replay_commits_max == 0
                || storage.history_retained_commits == 0
                || storage.queue_batches_max == 0
            {
                return fail(
                    "snapshot_every_commits, replay_commits_max, \
                     history_retained_commits and queue_batches_max must be at least 1",
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_relations_are_refused() {
        assert!(Config::default().validate().is_ok());
        let deep = Config { message_json_depth_max: 200, ..Config::default() };
        assert!(deep.validate().is_err());
        let small = Config { ws_message_bytes_max: 10, ..Config::default() };
        assert!(small.validate().is_err());
        let deaf = Config { dead_peer_timeout: Duration::from_secs(1), ..Config::default() };
        assert!(deaf.validate().is_err());
    }
}
