//! `concord-server`: the Concord WebSocket server.
//!
//! A thin tokio/axum shell around `concord-engine`: documents live in shard
//! tasks that each own a `Store`, sessions talk to them by message, and every
//! queue that client input can grow is bounded (see `config`). The wire
//! protocol is `concord_engine::protocol`, described for client authors in
//! docs/protocol.md.
//!
//! ```no_run
//! # async fn start() -> Result<(), concord_server::ServerError> {
//! let server = concord_server::ServerBuilder::new().bind("127.0.0.1:0").await?;
//! let url = server.ws_url(); // ws://127.0.0.1:PORT/ws
//! # drop(url);
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `auth`: authentication: the `Authenticator` trait, JWT verification
//!   (HS256, RS256/EdDSA from a JWKS file), failed-attempt limits, minting.
//! - `config`: `Config` and every limit's default (`*_MAX`).
//! - `server`: `ServerBuilder`, `RunningServer`, the HTTP routes and the
//!   accept loop (handshake timeout, connection bound, graceful shutdown).
//! - `session`: one WebSocket session: reader loop (limits, decoding,
//!   dispatch, heartbeats) and writer task.
//! - `outbox`: a session's bounded outbound queue and the slow-consumer
//!   policy (overflow closes the session with 4001).
//! - `shard`: the single owners of the documents: sequencing (commit, log
//!   entry, frames) and release in order once durable (broadcast, acks,
//!   catch-up history, presence); `Documents` for server-side access.
//! - `storage`: the `Storage` trait (commit log, snapshots, history) and its
//!   embedded SQLite backend; the data directory lock.
//! - `durable`: the storage thread: group commit for all shards, durability
//!   notifications, background snapshots.
//! - `recovery`: restart: snapshots plus log tail back into per-shard stores.
//! - `archive`: `concord export` / `concord import` of documents as JSON.
//! - `hub`: the single owner of topic subscriptions and client-registered RPC
//!   methods with their pending calls.
//! - `topic`: topic validation and the wildcard subscription trie.
//! - `rpc`: JSON-RPC 2.0 classification and codes; procedure and mutator types.
//! - `tls`: TLS on the listener: certificate and key loading, the acceptor.
//! - `rules`: what every commit is checked against: schemas by pointer
//!   pattern, server-only paths, the embedder's commit guards.
//! - `metrics`: the Prometheus registry behind `/metrics`.
//! - `error`: startup errors.

pub mod archive;
pub mod auth;
pub mod config;
mod durable;
mod error;
mod hub;
pub mod metrics;
mod outbox;
mod recovery;
pub mod rpc;
pub mod rules;
mod server;
mod session;
mod shard;
pub mod storage;
mod tls;
mod topic;

pub use config::{Config, StorageConfig};
pub use error::{ConfigError, ServerError};
pub use metrics::Metrics;
pub use recovery::RecoveryError;
pub use rpc::{CallContext, Mutation, MutatorCall, RpcError};
pub use rules::{GuardCall, Rules, RulesError, Veto};
pub use server::{RunningServer, ServerBuilder};
pub use shard::Documents;
pub use tls::{TlsConfig, TlsError};
