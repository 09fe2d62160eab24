//! `concord-client`: the Rust client for Concord.
//!
//! A [`Client`] holds one WebSocket session to a Concord server and keeps it
//! alive by itself: it pings, notices a silent server, reconnects with
//! jittered backoff, and resumes where it left off (docs/protocol.md, section 8) — documents are
//! re-opened at the version their replica holds, unacknowledged transactions
//! are resubmitted under their original ids, topics and procedures are
//! renewed. Over that session it offers:
//! - documents ([`Client::open`] → [`Document`]): a replica with an
//!   optimistic view, a stream of changes, and [`Document::transact`], which
//!   runs a transaction function against the replica and re-runs it on
//!   rejection, on STM `retry()`, or behind pending writes (docs/semantics.md);
//! - RPC ([`Client::call`], [`Client::notify`], [`Client::register`]);
//! - publish/subscribe ([`Client::subscribe`], [`Client::publish`]) and
//!   presence ([`Document::set_presence`], [`Document::presence`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use concord_client::{Client, Pointer, TxResult};
//! let client = Client::connect("ws://127.0.0.1:7700/ws").await?;
//! let doc = client.open("counter").await?;
//! let count = Pointer::parse("/count")?;
//! doc.transact(move |tx| -> TxResult<()> { Ok(tx.increment(&count, 1)?) })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `client`: the [`Client`] handle and [`ClientBuilder`]; connect,
//!   documents, RPC, pub/sub, connection state and identity.
//! - `tls`: `wss://` roots (the platform's and added [`Certificate`]s).
//! - `connection`: the connection task, sole owner of the socket and the
//!   replicas; reconnect and resume.
//! - `document`: the [`Document`] handle, its event streams, and the
//!   transaction loop.
//! - `rpc`: procedure handlers, and the engine's JSON-RPC 2.0
//!   classification and builders (`concord_engine::protocol::rpc`) in the
//!   shape the connection uses.
//! - `topic`: [`Subscription`], and the engine's topic, pattern and method
//!   checks (`concord_engine::protocol`) at this client's name limit.
//! - `config`: [`ClientConfig`] and every `*_MAX` bound.
//! - `contention`: the per-document pause that keeps contending
//!   transactions fair.
//! - `backoff`: jittered exponential backoff for reconnecting.
//! - `stats`: counters behind [`Client::stats`].
//! - `error`: one error type per kind of operation.
//!
//! The replica itself (`Replica`, `Tx`) is `concord_engine::replica`; this
//! crate only drives it.

mod client;
mod config;
mod connection;
mod document;
mod error;
mod rpc;
mod stats;
mod tls;
mod topic;

pub use client::{Client, ClientBuilder, ConnectionState, Identity, Publish};
pub use config::*;
pub use document::{
    Changes, Document, DocumentEvent, PresenceEvents, PresenceUpdate, Receipt, Transact,
    TransactFuture, TxResult,
};
pub use error::{CallError, Error, TransactError};
pub use rpc::{HandlerFuture, RpcError};
pub use stats::Stats;
pub use tls::Certificate;
pub use topic::{topic_matches, Message, Subscription};

pub use concord_engine::protocol::{ErrorCode, PresenceEvent};
pub use concord_engine::replica::{Abort, Tx};
pub use concord_engine::{Change, DocId, PatchError, PatchOp, Pointer, Rejection, TxId, Version};
