//! `concord-engine`: the sans-IO core of Concord.
//!
//! Everything that decides whether a transaction commits lives here, with no
//! tokio, sockets, files or clocks: time, where needed, is a parameter. The
//! server and the clients are thin shells around these types.
//!
//! # Layout
//! - `access`: identities, permissions (document, pointer-scope, topic and
//!   method grants) and the pure checks made with them.
//! - `ids`: `DocId`, `TxId`, `Version` newtypes, validated once.
//! - `pointer`: RFC 6901 JSON Pointers, parsed once into tokens.
//! - `patch`: RFC 6902 ops plus `incr`, applied atomically in place with an
//!   undo log; reports the locations written (the array rule).
//! - `index`: the per-document version index that makes read validation cost
//!   proportional to pointer depth.
//! - `transaction`: the wire types: `Transaction`, `Change`, `Rejection`,
//!   `Outcome`.
//! - `store`: the authoritative documents; `Store::commit` validates, applies
//!   and sequences a transaction and yields the `Change` to log and broadcast.
//! - `dedup`: the window of recent tx ids and each document's dedup floor,
//!   which keep a transaction from committing twice.
//! - `sequencer`: one shard of the server as a state machine: the store plus
//!   subscribers, presence, catch-up history, the snapshot cache, log
//!   batches and durability tickets; effects are released only once the
//!   log entries before them are durable. The server's shard task is its
//!   shell.
//! - `replica`: one document's client state: a document copy, pending
//!   transactions in an optimistic view, and the transaction runner.
//! - `session`: `ClientSession`, the client side of the protocol as a state
//!   machine (replicas, transactions and their pacing, resume, channels,
//!   heartbeats) that every client shell drives.
//! - `time`: `Time`, the engine's notion of now, always a parameter.
//! - `certificate`: a serializability checker over a commit log.
//! - `protocol`: the wire messages, stable error codes and close codes;
//!   JSON-RPC classification and builders, topic syntax and matching, and
//!   name limits, shared by the server and the Rust client.
//! - `limits`: every bound input can push against.
//! - `error`: typed errors.

pub mod access;
pub mod certificate;
mod dedup;
pub mod doc;
pub mod error;
pub mod ids;
pub mod index;
pub mod limits;
pub mod patch;
pub mod pointer;
pub mod protocol;
pub mod replica;
pub mod sequencer;
pub mod session;
pub mod store;
pub mod time;
pub mod transaction;

pub use doc::{Doc, JsonTree};
pub use error::{InvalidId, InvalidPointer, PatchError, PatchOpError};
pub use ids::{DocId, TxId, Version};
pub use limits::Limits;
pub use patch::{Patch, PatchOp};
pub use pointer::Pointer;
pub use store::{AllowAll, Commit, CommitCheck, CommitView, Store};
pub use transaction::{Change, Conflict, Outcome, Rejection, TooLargePart, Transaction};
