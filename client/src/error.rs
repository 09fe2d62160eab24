//! Error types, one per kind of operation: connecting and session requests
//! ([`Error`]), transactions ([`TransactError`]) and RPC calls
//! ([`CallError`]). Each variant is a distinct, documented situation a caller
//! can act on.

use std::time::Duration;

use concord_engine::protocol::ErrorCode;
use concord_engine::{InvalidId, PatchError, Pointer, Rejection};
use tokio_tungstenite::tungstenite;

use crate::rpc::RpcError;

/// Why a connection or a session request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL could not be reached or the WebSocket handshake failed.
    #[error("cannot connect to the server: {0}")]
    Connect(#[source] Box<tungstenite::Error>),
    /// The server did not complete the handshake (TCP, WebSocket, `welcome`)
    /// within the configured `connect_timeout`.
    #[error("the server did not answer within {0:?}")]
    ConnectTimeout(Duration),
    /// The server's first message was not a valid `welcome`.
    #[error("the server did not start the session with welcome: {0}")]
    Handshake(String),
    /// The server refused the session's credentials: HTTP 401 on the
    /// upgrade, or `error` `unauthorized` (then close 4003). The client keeps
    /// retrying with backoff, asking the token provider for a token each
    /// time; [`Client::state`](crate::Client::state) shows it meanwhile.
    #[error("the server refused the credentials: {message}")]
    Unauthorized { message: String },
    /// The token provider failed, so no connection was attempted.
    #[error("the token provider failed: {0}")]
    Token(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A root certificate given to the builder is not usable, or `wss://`
    /// was asked for with no trusted root at all.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The server refused opening a document the session's identity may not
    /// read (`error` `forbidden` answering `open`).
    #[error("forbidden: {message}")]
    Forbidden { message: String },
    /// The server speaks another protocol version.
    #[error("the server speaks protocol {server}, this client speaks {client}")]
    ProtocolMismatch { server: u32, client: u32 },
    /// A document id that is not 1-128 characters of `[A-Za-z0-9._:/-]`.
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    /// The server refused the request with a stable error code.
    #[error("the server refused: {code:?}: {message}")]
    Refused { code: ErrorCode, message: String },
    /// The request needs a live connection and there is none right now (the
    /// client is reconnecting by itself).
    #[error("not connected to the server right now")]
    NotConnected,
    /// No acknowledgement arrived in time.
    #[error("no acknowledgement within {0:?}")]
    Timeout(Duration),
    /// The client was closed (or its connection task ended).
    #[error("the client is closed")]
    Closed,
}

/// Why a transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub enum TransactError<E> {
    /// The transaction function returned `Abort::User`.
    #[error("the transaction function aborted: {0:?}")]
    Aborted(E),
    /// A write of the transaction function does not apply to the replica
    /// (e.g. setting a member of a value that is not an object).
    #[error("a write does not apply to the replica: {0}")]
    Patch(PatchError),
    /// The server rejected the transaction for a reason re-running cannot
    /// fix, or kept rejecting it for `attempts` rejections.
    #[error("rejected after {attempts} attempt(s): {rejection}")]
    Rejected { rejection: Rejection, attempts: u32 },
    /// The server refused the commit because the session's identity may not
    /// make write `op_index` (at `pointer`). Not re-run: nothing changed,
    /// and running it again would be refused the same way.
    #[error("forbidden: write {op_index} at {pointer}: {message}")]
    Forbidden { op_index: usize, pointer: Pointer, message: String },
    /// The document after the transaction would break the server's schema
    /// at `pointer`. Not re-run.
    #[error("invalid: {pointer}: {message}")]
    Invalid { pointer: Pointer, message: String },
    /// A guard of the server's application refused the commit. Not re-run.
    #[error("vetoed: {message}")]
    Vetoed { message: String },
    /// The transaction was sent, its acknowledgement was lost with the
    /// connection (or the document's reload), and by the time it was
    /// resubmitted the server had forgotten its id (over
    /// `Limits::tx_dedup_entries_max` transactions later). It may or may not
    /// have committed, once; it is not re-run, since that could apply it
    /// twice. The replica holds the server's current state: look there
    /// before deciding whether to run it again.
    #[error("the outcome of a transaction sent before a disconnect is unknown")]
    OutcomeUnknown,
    /// The server refused the commit message before it reached the store
    /// (e.g. a transaction too large for the message size limit).
    #[error("the server refused the commit: {code:?}: {message}")]
    Refused { code: ErrorCode, message: String },
    /// The server kept dropping the commit for exceeding the session's rate
    /// limit, `attempts` times.
    #[error("rate limited {attempts} time(s)")]
    RateLimited { attempts: u32 },
    /// The transaction function panicked; the replica is reloaded from the
    /// server to undo whatever it half-wrote.
    #[error("the transaction function panicked")]
    Panicked,
    /// The client was closed before the outcome was known.
    #[error("the client closed before the transaction resolved")]
    Closed,
}

/// Why an RPC call did not return a result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The callee (or the server) answered with a JSON-RPC error.
    #[error("{0}")]
    Rpc(RpcError),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection dropped before the answer came; the call may or may
    /// not have run.
    #[error("the connection dropped before the answer came")]
    Disconnected,
    /// Not connected when the call was made; it was not sent.
    #[error("not connected to the server right now")]
    NotConnected,
    /// The request cannot be sent (e.g. over the server's message size
    /// limit); it was not sent.
    #[error("the call cannot be sent: {0}")]
    Unsendable(#[source] Box<Error>),
    /// More than `CALLS_IN_FLIGHT_MAX` calls are awaiting answers.
    #[error("too many calls awaiting answers")]
    TooManyCalls,
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
}
